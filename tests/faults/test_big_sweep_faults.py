"""Faults around part files written in the task's own store (H5Store, ZarrStore).

DistributeBackend's process jobs write their parts with the task's store when
its appends survive a kill, and the merge of a fresh run copies those parts
chunk by chunk without matching rows. Each case injects a fault into that
path and checks the promise: after ``psy run -c`` the result holds every row
of the space exactly once with the right value, nothing outside the work
directory changed, and ``psy status`` never called the task complete while
the result did not hold every row.

* **kill -9** of a job before the n-th file operation of the process or the
  merge phase (n drawn from the fault seed), while the parts are H5 or zarr;
* **a truncated or cut part**: a part of the store's format damaged before
  the merge is set aside (``unreadable/``), never merged, and its rows are
  evaluated again by ``psy run -c``;
* **a full disk** while the process jobs write their parts and while the
  merge copies them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from e2e_helpers import STORES, counting_task, describe, psy, square_rows, write
from fault_helpers import assert_untouched, tree_state
from test_faults_merge import KILL_HOOK, check_exact, check_status_honest, run_killed

N_ROWS = 30
SETTINGS = "max_jobs = 3\nmin_items = 1\n"
FORMAT_STORES = ["h5", "zarr"]


def _need(store: str) -> None:
    pytest.importorskip({"h5": "tables", "zarr": "zarr"}[store])


def _project(tmp_path: Path, store: str, preamble: str = "", values=range(N_ROWS)) -> Path:
    project = tmp_path / "project"
    write(
        project / "psy-tasks" / "task_sq.py",
        counting_task(
            tmp_path / "calls",
            values,
            store=store,
            backend="distribute",
            settings=SETTINGS,
            preamble=preamble,
        ),
    )
    return project


def _parts(project: Path) -> list[Path]:
    out = project / "psy-work" / "sq" / "out"
    return sorted(p for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []


@pytest.mark.parametrize("store", FORMAT_STORES)
@pytest.mark.parametrize("phase", ["process", "merge"])
def test_kill9_with_parts_in_the_stores_format_then_continue_is_exact(
    tmp_path, fault_rng, store, phase
):
    _need(store)
    project = _project(tmp_path, store, preamble=KILL_HOOK)
    before = tree_state(project, skip=project / "psy-work")
    expected = square_rows(range(N_ROWS))
    n = int(fault_rng.integers(1, 5))
    code, out = run_killed(project, ["run", "sq"], f"{phase}:{n}")
    assert code == 1, f"no job was killed at {phase}:{n}\n{out}"
    # Whatever the kill left in out/ is in the task's format, never a pickle.
    assert all(p.suffix == STORES[store][2] for p in _parts(project)), _parts(project)
    check_status_honest(project, "sq", store, expected)
    cont = psy("run", "-c", "sq", cwd=project)
    assert cont.returncode == 0, f"killed at {phase}:{n}\n{out}\n{describe(cont)}"
    check_exact(project, "sq", store, expected)
    check_status_honest(project, "sq", store, expected)
    assert_untouched(before, tree_state(project, skip=project / "psy-work"))


def _damage(part: Path, store: str) -> None:
    """Cut the part short: half of an HDF5 file, or a zarr column's chunk files."""
    if store == "h5":
        size = part.stat().st_size
        with open(part, "r+b") as f:
            f.truncate(size // 2)
    else:
        chunks = part / "y" / "c"
        shutil.rmtree(chunks)


@pytest.mark.parametrize("store", FORMAT_STORES)
def test_damaged_part_is_set_aside_and_its_rows_evaluated_again(tmp_path, store):
    _need(store)
    # The merge job is killed before its first file operation: the parts stay.
    project = _project(tmp_path, store, preamble=KILL_HOOK)
    expected = square_rows(range(N_ROWS))
    code, out = run_killed(project, ["run", "sq"], "merge:1")
    assert code == 1, out
    parts = _parts(project)
    assert len(parts) == 3, parts
    assert all(p.suffix == STORES[store][2] for p in parts), parts
    _damage(parts[1], store)
    status = psy("status", "sq", cwd=project)
    assert status.returncode == 0, describe(status)
    # The damaged part's rows are not counted.
    assert f"20 out of {N_ROWS} rows" in status.stdout or "cannot be read" in status.stdout, (
        describe(status)
    )
    check_status_honest(project, "sq", store, expected)
    cont = psy("run", "-c", "sq", cwd=project)
    assert cont.returncode == 0, describe(cont)
    check_exact(project, "sq", store, expected)
    # Damage is kept for the user to look at, not merged and not deleted.
    aside = project / "psy-work" / "sq" / "unreadable"
    assert [p.name for p in aside.iterdir()] == [parts[1].name]


BIG_TASK = """
import numpy as np
from psyrun import Param
{imp}
pspace = Param(x=list(range({n})))
store = {expr}
workdir = {workdir!r}
max_jobs = 2
min_items = 1


def execute(x):
    return {{'y': np.random.default_rng(x).random(2000)}}
"""


@pytest.mark.parametrize("store", FORMAT_STORES)
def test_full_disk_while_parts_are_written_then_continue_is_exact(tmp_path, small_disk, store):
    import numpy as np
    from e2e_helpers import load_result

    _need(store)
    n = 60  # rows of 16 kB of random floats: about 1 MB of parts
    disk = small_disk("4m")
    project = tmp_path / "project"
    workdir = disk.path / "w"
    imp, expr, ext = STORES[store]
    write(
        project / "psy-tasks" / "task_big.py",
        BIG_TASK.format(imp=imp, expr=expr, n=n, workdir=os.fspath(workdir)),
    )
    before = tree_state(project)
    # Room for some of the parts only: a process job's append meets the full disk.
    disk.fill(leave=400_000)
    first = psy("run", "big", cwd=project)
    assert first.returncode == 1, describe(first)
    assert "full" in first.stdout + first.stderr, describe(first)
    result = workdir / "big" / f"result{ext}"
    assert not os.path.exists(result)
    check_status_honest(project, "big", store, [], workdir)
    disk.free()
    cont = psy("run", "-c", "big", cwd=project)
    assert cont.returncode == 0, describe(cont)
    data = load_result(result, store)
    assert sorted(int(x) for x in data["x"]) == list(range(n))
    for x, y in zip(data["x"], data["y"]):
        np.testing.assert_array_equal(y, np.random.default_rng(int(x)).random(2000))
    assert_untouched(before, tree_state(project))


def _flip_a_value(part: Path, store: str) -> None:
    """Change one stored value of the part's ``y`` column (the structure stays intact)."""
    if store == "h5":
        raw = bytearray(part.read_bytes())
        # Part 1 holds x = 10..19; y = x*x as int64: 12*12 = 144.
        at = raw.find((144).to_bytes(8, "little", signed=True))
        assert at >= 0
        raw[at] ^= 0x01
        part.write_bytes(bytes(raw))
    else:
        chunk = next(p for p in (part / "y" / "c").rglob("*") if p.is_file())
        raw = bytearray(chunk.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        chunk.write_bytes(bytes(raw))


@pytest.mark.parametrize("store", FORMAT_STORES)
def test_part_damaged_inside_is_left_out_of_the_merge(tmp_path, store):
    import subprocess
    import sys

    _need(store)
    project = _project(tmp_path, store, preamble=KILL_HOOK)
    expected = square_rows(range(N_ROWS))
    code, out = run_killed(project, ["run", "sq"], "merge:1")
    assert code == 1, out
    parts = _parts(project)
    assert len(parts) == 3, parts
    _flip_a_value(parts[1], store)
    # The merge job runs again (as a cluster reruns it): the damage is found
    # while the part is copied; the part is set aside, the others merged.
    root = project / "psy-work" / "sq"
    merge = subprocess.run(
        [sys.executable, "-m", "psyrun.worker", str(root / "jobs" / "merge.json")],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert merge.returncode == 0, merge.stdout + merge.stderr
    assert "skipping unreadable part" in merge.stdout, merge.stdout
    assert [p.name for p in (root / "unreadable").iterdir()] == [parts[1].name]
    check_status_honest(project, "sq", store, expected)
    cont = psy("run", "-c", "sq", cwd=project)
    assert cont.returncode == 0, describe(cont)
    check_exact(project, "sq", store, expected)
