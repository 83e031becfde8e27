"""Faults: ``psy report`` on damaged results, refused outputs, a full disk and a kill (issue 22).

Every case checks what the report promises:

* the page never claims more than the result holds: a damaged or truncated
  result is reported as damaged, its rows are neither counted nor shown;
* ``-o`` replaces only an earlier report: an existing file of another kind,
  a directory or a path in a missing directory is refused with one line and
  left exactly as it was;
* a full disk or a kill while the page is written leaves no half page
  under the final name (an earlier report stays whole);
* nothing outside the output file and the task's work directory is touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fault_helpers import assert_untouched, tree_state
from psy_helpers import describe, ok, psy, psy_command, write_task
from report_helpers import REPORT_TAGS, Page, png_size

pytest.importorskip("matplotlib")

TASK = """
from psyrun import Param
{imports}
pspace = Param(a=[1, 2, 3, 4]) * Param(b=[0.25, 0.5, 0.75])
max_jobs = 2
{settings}


def execute(a, b):
    return {{"y": a * b}}
"""

STORES = {
    "pickle": ("", "", ".pkl"),
    "npz": ("from psyrun.store.npz import NpzStore", "store = NpzStore()", ".npz"),
    "h5": ("from psyrun.store.h5 import H5Store", "store = H5Store()", ".h5"),
    "zarr": ("from psyrun.store.zarr import ZarrStore", "store = ZarrStore()", ".zarr"),
}


def make_task(project: Path, store: str = "pickle", name: str = "grid") -> Path:
    imports, settings, ext = STORES[store]
    write_task(project, name, TASK.format(imports=imports, settings=settings))
    ok(psy("run", name, cwd=project))
    return project / "psy-work" / name / f"result{ext}"


def damage(result: Path, fault_rng) -> str:
    """Cut the result (a file, or the largest chunk file of a zarr tree) at a seeded point."""
    if result.is_dir():
        files = sorted(
            (p for p in result.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size
        )
        target = files[0]
    else:
        target = result
    size = target.stat().st_size
    cut = int(fault_rng.integers(1, max(2, size - 1)))
    with open(target, "r+b") as f:
        f.truncate(cut)
    return f"{target.name} cut to {cut} of {size} bytes"


@pytest.mark.parametrize("store", list(STORES))
def test_a_damaged_result_is_reported_as_damaged_and_no_row_is_claimed(project, store, fault_rng):
    if store in ("h5", "zarr"):
        pytest.importorskip({"h5": "tables", "zarr": "zarr"}[store])
    result = make_task(project, store)
    how = damage(result, fault_rng)
    out = project / "grid.html"
    done = ok(psy("report", "grid", "-o", str(out), cwd=project))
    page = Page(out.read_text(encoding="utf-8"))
    status = page.table("State")
    assert status["State"] == "the result file is damaged", how
    assert status["Rows done"].startswith("0 of 12"), how
    assert status["Result file"].startswith("is damaged"), how
    assert "damaged" in done.stderr, describe(done)
    assert page.images == [], how
    assert "None shown: the result file is damaged" in page.text("First rows"), how
    assert "damaged" in page.text("Status"), how


def test_an_unreadable_part_file_is_named_and_the_page_is_still_written(project):
    make_task(project)
    out_dir = project / "psy-work" / "grid" / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "0.pkl").write_bytes(b"not a pickle store file at all")
    out = project / "grid.html"
    ok(psy("report", "grid", "-o", str(out), cwd=project))
    page = Page(out.read_text(encoding="utf-8"))
    assert "cannot be read" in page.text("Status")
    # The result's own rows are still the only ones counted and drawn.
    assert page.table("State")["Rows done"].startswith("12 of 12")
    assert all(png_size(i)[0] > 0 for i in page.images)


def test_output_onto_an_existing_file_that_is_no_report_is_refused(project):
    make_task(project)
    precious = project / "notes.html"
    precious.write_text("<html>my own notes</html>")
    before = tree_state(project)
    refused = psy("report", "grid", "-o", str(precious), cwd=project)
    assert refused.exit_code == 1, describe(refused)
    assert "is not a psyrun report; not overwriting it" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert precious.read_text() == "<html>my own notes</html>"
    assert_untouched(before, tree_state(project))


def test_output_onto_a_directory_or_into_a_missing_one_is_refused(project):
    make_task(project)
    (project / "pages").mkdir()
    (project / "pages" / "keep.txt").write_text("x")
    before = tree_state(project)
    for target, why in (
        (project / "pages", "is a directory"),
        (project / "nowhere" / "r.html", "does not exist"),
    ):
        refused = psy("report", "grid", "-o", str(target), cwd=project)
        assert refused.exit_code == 1, describe(refused)
        assert why in refused.stderr, describe(refused)
        assert "Traceback" not in refused.output
    assert_untouched(before, tree_state(project))


def test_output_onto_an_earlier_report_replaces_it(project):
    make_task(project)
    out = project / "grid.html"
    ok(psy("report", "grid", "-o", str(out), cwd=project))
    first = out.stat().st_ino
    ok(psy("report", "grid", "-o", str(out), cwd=project))
    assert out.stat().st_ino != first  # a new page, renamed over the earlier one
    assert Page(out.read_text(encoding="utf-8")).table("State")["State"] == "complete"
    assert [p.name for p in project.iterdir() if p.name.endswith(".html")] == ["grid.html"]


@pytest.mark.slow
def test_a_full_disk_leaves_no_half_page_and_keeps_the_earlier_report(project, small_disk):
    make_task(project)
    disk = small_disk("1m")
    out = disk.path / "grid.html"
    ok(psy("report", "grid", "-o", str(out), cwd=project))
    earlier = out.read_bytes()
    disk.fill(leave=4096)
    before = tree_state(disk.path)
    failed = psy("report", "grid", "-o", str(out), cwd=project)
    assert failed.exit_code == 1, describe(failed)
    assert "No space left on device" in failed.stderr, describe(failed)
    assert "nothing was written under that name" in failed.stderr
    assert "Traceback" not in failed.output
    assert out.read_bytes() == earlier
    # The temporary page is gone as well: the disk holds what it held.
    disk.free()
    after = tree_state(disk.path)
    before.pop(".filler", None)
    assert_untouched(before, after, "the small disk")
    # With space again, the report is written whole.
    ok(psy("report", "grid", "-o", str(out), cwd=project))
    assert out.read_text(encoding="utf-8").rstrip().endswith("</html>")


@pytest.mark.slow
def test_a_killed_report_never_leaves_a_half_page_under_its_name(project, fault_rng):
    make_task(project)
    out = project / "killed.html"
    for _ in range(3):
        proc = subprocess.Popen(
            [*psy_command(), "report", "grid", "-o", str(out)],
            cwd=project,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(float(fault_rng.uniform(0.2, 2.5)))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():
            text = out.read_text(encoding="utf-8")
            assert text.rstrip().endswith("</html>")
            assert all(png_size(i)[0] > 0 for i in Page(text).images)


def test_a_hostile_task_name_names_a_file_here_and_is_text_on_the_page(project):
    name = "<img src=x onerror=alert(1)>"
    write_task(project, name, TASK.format(imports="", settings=""))
    ok(psy("run", name, cwd=project))
    before = tree_state(project, skip=project / "psy-work")
    ok(psy("report", name, cwd=project))
    after = tree_state(project, skip=project / "psy-work")
    assert set(after) - set(before) == {f"{name}-report.html"}
    page = Page((project / f"{name}-report.html").read_text(encoding="utf-8"))
    assert {tag for tag, _ in page.tags} <= REPORT_TAGS
    assert f"Task {name}" in page.text("top")
