"""``psy report`` pages opened in a real browser: headless Chromium (issue 22, item 8).

The test starts Debian's ``chromium`` itself (no server: the page is opened
from a ``file://`` URL, as from a laptop) and checks what a person would see:
every image decodes (``naturalWidth > 0``), the page has text, and its
screenshot is not blank. Skipped, with the reason, where chromium is not
installed (``.ci/run`` installs it with ``apt-get install -y chromium``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from psy_helpers import ok, psy, write_task

pytest.importorskip("matplotlib")

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)"
)

# Appended to a copy of the page: once it has loaded, write what the browser made of it.
PROBE = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const found = {
    images: images.length,
    loaded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    widths: images.map((i) => i.naturalWidth),
    text: document.body.innerText.length,
  };
  const out = document.createElement("pre");
  out.id = "psyrun-probe";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>
"""

TASK = """
from psyrun import Param
pspace = Param(a=[1, 2, 3, 4]) * Param(b=[0.5, 1.0, 1.5])


def execute(a, b):
    if a == 4 and b == 1.5:
        raise ValueError("one row fails, so the coverage figure is drawn too")
    return {"y": a * b, "z": a - b, "s": "text"}
"""


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless chromium with a profile of its own; return what it printed."""
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def probe(tmp_path: Path, page: Path) -> dict:
    """What chromium made of `page`: images, how many decoded, their widths, text length."""
    copy = tmp_path / f"probe-{page.name}"
    copy.write_text(page.read_text(encoding="utf-8") + PROBE, encoding="utf-8")
    dom = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", copy.as_uri())
    found = re.search(r'<pre id="psyrun-probe">([^<]*)</pre>', dom)
    assert found is not None, dom[-2000:]
    return json.loads(found.group(1))


@pytest.mark.slow
def test_every_image_of_a_report_loads_in_chromium_and_the_page_is_not_blank(project):
    write_task(project, "grid", TASK)
    psy("run", "grid", cwd=project)  # one row fails: the run reports it
    page = project / "grid.html"
    ok(psy("report", "grid", "-o", str(page), cwd=project))

    found = probe(project, page)
    # Coverage, then lines and heatmaps for y and z.
    assert found["images"] == 5
    assert found["loaded"] == found["images"], found
    assert min(found["widths"]) > 100
    assert found["text"] > 500

    shot = project / "shot.png"
    chromium(
        project,
        "--hide-scrollbars",
        "--window-size=1200,2000",
        f"--screenshot={shot}",
        page.as_uri(),
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    # Not blank: many distinct colours (text, tables, plots), not one background.
    colours = {tuple(p) for p in pixels[::7, ::7].reshape(-1, pixels.shape[2]).round(3).tolist()}
    assert len(colours) > 50


def test_the_probe_sees_an_image_that_does_not_decode(project):
    # The check above can fail: a page whose image is not a PNG counts it as not loaded.
    page = project / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>text</p>"
        '<img src="data:image/png;base64,bm90IGEgcG5n" alt="broken"></body></html>'
    )
    found = probe(project, page)
    assert found["images"] == 1
    assert found["loaded"] == 0
