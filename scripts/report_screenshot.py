"""Regenerate docs/_static/report-circle_area.png, the screenshot on docs/report.rst.

Runs the Monte Carlo example (``examples/monte-carlo``) in a temporary
directory with ``psy run``, writes its page with ``psy report circle_area``
and takes a screenshot of the page's top in headless Chromium (Debian's
``chromium`` package)::

    python scripts/report_screenshot.py [OUTPUT.png]

Run it from the repository root with this checkout's psyrun importable
(``pip install -e .`` or ``PYTHONPATH=$PWD``) and matplotlib installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "monte-carlo" / "psy-tasks"
OUTPUT = ROOT / "docs" / "_static" / "report-circle_area.png"
#: The browser window: wide enough for two panels side by side, tall enough for the first plots.
WINDOW = "1100,2300"


def psy(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "psyrun.cli", *args], cwd=cwd, check=True)


def main(output: str | None = None) -> int:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("needs chromium: apt-get install -y chromium", file=sys.stderr)
        return 1
    target = Path(output) if output else OUTPUT
    with tempfile.TemporaryDirectory(prefix="psy-report-shot-") as tmp:
        work = Path(tmp)
        shutil.copytree(EXAMPLE, work / "psy-tasks")
        psy("run", "circle_area", cwd=work)
        psy("report", "circle_area", "-o", "report.html", cwd=work)
        subprocess.run(
            [
                browser,
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={work / 'profile'}",
                f"--window-size={WINDOW}",
                f"--screenshot={target.resolve()}",
                (work / "report.html").as_uri(),
            ],
            check=True,
            capture_output=True,
        )
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
