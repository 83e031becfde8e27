"""The documentation builds without warnings, and the README's tour runs."""

from __future__ import annotations

import doctest
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("numpydoc") is None,
    reason='building the docs needs sphinx and numpydoc: pip install -e ".[docs]"',
)
def test_sphinx_build_has_no_warnings(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    html = tmp_path / "html"
    for page in ("index", "getting-started", "guide/pspace", "api", "coming-from-0.8"):
        assert (html / f"{page}.html").is_file(), page
    api = (html / "api.html").read_text(encoding="utf-8")
    # autodoc really found the docstrings (an import failure leaves the page empty).
    for name in ("map_pspace_hdd_backed", "load_xarray", "AutodetectStore", "JobState"):
        assert name in api, name
    assert (html / "_images" / "circle_area.png").is_file()


def test_readme_tour_runs(tmp_path, monkeypatch):
    """The ``>>>`` examples in README.md give the output the README shows."""
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    parser = doctest.DocTestParser()
    test = parser.get_doctest(text, {}, "README.md", str(ROOT / "README.md"), 0)
    assert test.examples, "README.md has no >>> examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
