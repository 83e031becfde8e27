"""Faults in the merge, the ``-c`` fold and what ``psy status`` says about them.

Two kinds of fault, each followed by the same checks:

* **kill -9** of a job at a seeded random file operation of one phase (split,
  process, merge, the fold of ``psy run -c``), and of ``psy`` with all its
  jobs at a seeded random moment. The kill comes from inside the job: the
  task file wraps the file operations of psyrun's jobs (``os.replace``,
  ``os.remove``, ``os.fsync``, ``Store.append``, ...) and sends SIGKILL to
  its own process before the n-th one of the chosen phase, n drawn from the
  seeded generator.
* **a full disk** (a real tmpfs, ENOSPC inside pickle, NumPy, HDF5 and
  zarr) while the merge writes the result and again while the fold of
  ``psy run -c`` does, for every store; then the disk is freed.

Checks: after ``psy run -c`` the result holds every row of the space exactly
once with the right values; nothing outside the task's work directory
changed; ``psy status`` and ``psy status --watch`` never call a missing or
damaged result complete.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import (
    STORES,
    counting_task,
    describe,
    finish,
    load_result,
    psy,
    sorted_rows,
    square_rows,
    start_psy,
    status_counts,
    write,
)
from fault_helpers import assert_untouched, tree_state
from psy_helpers import psy as psy_here

# Wraps the file operations of psyrun's jobs; kills the job before the n-th one
# of the phase named by PSY_FAULT_KILL="<phase>:<n>" (phase: split, process,
# merge, fold). Guarded so that loading the task file twice hooks once.
KILL_HOOK = """
import os as _os, shutil as _shutil, signal as _signal
_spec = _os.environ.get("PSY_FAULT_KILL", "")
if _spec and not getattr(_os, "_psy_fault_hooked", False):
    _os._psy_fault_hooked = True
    _phase, _n = _spec.split(":")
    _state = {"phase": None, "count": 0}
    from psyrun.backend.splitmerge import SplitMergeBackend as _Backend
    from psyrun.store.base import Store as _Store
    _run_job = _Backend.run_job

    def _job(self, kind, index, description):
        _state["phase"] = "fold" if kind == "split" and description.get("cont") else kind
        return _run_job(self, kind, index, description)

    def _hook(fn):
        def wrapper(*args, **kwargs):
            if _state["phase"] == _phase:
                _state["count"] += 1
                if _state["count"] == int(_n):
                    _os.kill(_os.getpid(), _signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapper

    _Backend.run_job = _job
    for _name in ("replace", "rename", "remove", "unlink", "fsync"):
        setattr(_os, _name, _hook(getattr(_os, _name)))
    _shutil.rmtree = _hook(_shutil.rmtree)
    _Store.append = _hook(_Store.append)
"""

N_ROWS = 24
SETTINGS = "max_jobs = 3\nmin_items = 1\n"


def check_status_honest(cwd, task: str, store: str, expected: list[tuple], workdir=None) -> None:
    """``psy status`` / ``--watch`` call the task complete only if the result holds `expected`."""
    root = Path(workdir or Path(cwd) / "psy-work") / task
    try:
        exact = sorted_rows(load_result(root / f"result{STORES[store][2]}", store)) == expected
    except Exception:
        exact = False
    status = psy_here("status", task, cwd=cwd)
    counts = status_counts(status.output)
    assert counts, describe(status)
    done, total = counts[0]
    if not exact and done == total:
        # Every row computed, yet not (all) in a readable result: status must say so.
        assert "only in part files" in status.output or "damaged" in status.output, describe(
            status
        )
    watch = psy_here("status", "--watch", "--interval", "0.05", task, cwd=cwd)
    if not exact:
        assert watch.exit_code != 0, describe(watch)
        assert ", complete;" not in watch.output, describe(watch)


def check_exact(cwd, task: str, store: str, expected: list[tuple], workdir=None) -> None:
    root = Path(workdir or Path(cwd) / "psy-work") / task
    data = load_result(root / f"result{STORES[store][2]}", store)
    assert sorted_rows(data) == expected


def run_killed(cwd, args: list[str], kill: str) -> tuple[int, str]:
    """Run psy with the kill hook armed; return its exit status and output."""
    proc = start_psy(*args, cwd=cwd, env={"PSY_FAULT_KILL": kill})
    out = finish(proc)
    return proc.returncode, out


PHASES = ["split", "process", "merge", "fold"]


@pytest.mark.parametrize(
    ("backend", "phase"),
    [("distribute", phase) for phase in PHASES]
    + [("loadbalancing", "process"), ("loadbalancing", "fold")],
)
def test_kill9_in_a_phase_then_continue_is_exact(tmp_path, fault_rng, backend, phase):
    project = tmp_path / "project"
    values = range(N_ROWS)
    write(
        project / "psy-tasks" / "task_sq.py",
        counting_task(
            tmp_path / "calls", values, backend=backend, settings=SETTINGS, preamble=KILL_HOOK
        ),
    )
    before = tree_state(project, skip=project / "psy-work")
    expected = square_rows(values)
    if phase == "fold":
        # Parts for the fold to merge: the merge job killed before it wrote anything.
        run_killed(project, ["run", "sq"], "merge:1")
        assert list((project / "psy-work" / "sq" / "out").iterdir())
        args = ["run", "-c", "sq"]
    else:
        args = ["run", "sq"]
    # One draw per phase, so that each phase is killed at its own moment.
    n = int(fault_rng.integers(1, 6, size=len(PHASES))[PHASES.index(phase)])
    code, out = run_killed(project, args, f"{phase}:{n}")
    # The kill happened (a job killed after writing its marker leaves only its
    # dependents "not run").
    assert code == 1, f"no job was killed at {phase}:{n}\n{out}"
    check_status_honest(project, "sq", "pickle", expected)
    cont = psy("run", "-c", "sq", cwd=project)
    assert cont.returncode == 0, f"killed at {phase}:{n}\n{out}\n{describe(cont)}"
    check_exact(project, "sq", "pickle", expected)
    check_status_honest(project, "sq", "pickle", expected)
    assert_untouched(before, tree_state(project, skip=project / "psy-work"))


def test_kill9_of_psy_and_its_jobs_at_a_random_moment(tmp_path, fault_rng):
    project = tmp_path / "project"
    values = range(60)
    write(
        project / "psy-tasks" / "task_sq.py",
        counting_task(
            tmp_path / "calls",
            values,
            settings=SETTINGS,
            before_record="time.sleep(0.01)",
            preamble="import time",
        ),
    )
    before = tree_state(project, skip=project / "psy-work")
    expected = square_rows(values)
    proc = start_psy("run", "sq", cwd=project)
    time.sleep(float(fault_rng.uniform(0.3, 2.0)))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    check_status_honest(project, "sq", "pickle", expected)
    cont = psy("run", "-c", "sq", cwd=project)
    assert cont.returncode == 0, describe(cont)
    check_exact(project, "sq", "pickle", expected)
    assert_untouched(before, tree_state(project, skip=project / "psy-work"))


# Rows of 2000 random floats (incompressible): the parts of 40 rows take about
# 640 kB, and the result as much again.
BIG_ROWS = 40
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


def big_expected(n: int) -> dict[int, np.ndarray]:
    return {x: np.random.default_rng(x).random(2000) for x in range(n)}


@pytest.mark.parametrize("store", ["pickle", "npz", "h5", "zarr"])
def test_full_disk_in_merge_and_fold_then_continue_is_exact(tmp_path, small_disk, store):
    pytest.importorskip({"h5": "tables", "zarr": "zarr"}.get(store, "numpy"))
    disk = small_disk("3m")
    project = tmp_path / "project"
    workdir = disk.path / "w"
    imp, expr, ext = STORES[store]
    write(
        project / "psy-tasks" / "task_big.py",
        BIG_TASK.format(imp=imp, expr=expr, n=BIG_ROWS, workdir=os.fspath(workdir)),
    )
    before = tree_state(project)
    # Room for the parts but not for the result beside them. H5 and zarr parts
    # are files of the store itself, whose appends ask for room with a margin.
    disk.fill(leave={"h5": 1_900_000, "zarr": 1_900_000}.get(store, 1_000_000))
    result = workdir / "big" / f"result{ext}"

    first = psy_here("run", "big", cwd=project)
    assert first.exit_code == 1, describe(first)
    assert "is full" in first.output, describe(first)
    assert not os.path.exists(result)
    parts = sorted(os.listdir(workdir / "big" / "out"))
    assert len(parts) == 2
    check_status_honest(project, "big", store, [], workdir)

    # The disk is still full: the fold of -c fails the same way and keeps the parts.
    fold = psy_here("run", "-c", "big", cwd=project)
    assert fold.exit_code == 1, describe(fold)
    assert "is full" in fold.output, describe(fold)
    assert sorted(os.listdir(workdir / "big" / "out")) == parts
    check_status_honest(project, "big", store, [], workdir)

    disk.free()
    cont = psy_here("run", "-c", "big", cwd=project)
    assert cont.exit_code == 0, describe(cont)
    data = load_result(result, store)
    assert sorted(data["x"].tolist()) == list(range(BIG_ROWS))
    expected = big_expected(BIG_ROWS)
    for x, y in zip(data["x"].tolist(), data["y"]):
        np.testing.assert_array_equal(y, expected[x])
    status = psy_here("status", "big", cwd=project)
    assert status_counts(status.output) == [(BIG_ROWS, BIG_ROWS)], describe(status)
    assert psy_here("status", "--watch", "--interval", "0.05", "big", cwd=project).exit_code == 0
    assert_untouched(before, tree_state(project))
