"""Faults around cheap local jobs (issue 25): default job counts, deferred syncs.

* a kill -9 of the one process job a default local run plans (serial and
  ``-j 2``), at a seeded row, with its syncs left to the scheduler, then
  ``psy run -c``;
* a kill -9 of a LoadBalancing pool worker at a seeded row while later jobs
  of the same run find no rows left to claim, then ``psy run -c``;
* a kill -9 of ``psy`` itself while a local process job writes its rows
  unsynced, then ``psy run -c`` once that job has ended;
* a full disk while a local process job writes its part with deferred syncs,
  then the disk is freed.

Checks (``docs/guarantees.rst``): after ``psy run -c`` every assignment is in
the result exactly once with the right value; ``execute`` ran again only for
rows of the killed job that had not reached its part; nothing outside the
task's work directory changed; ``psy status`` never counts more rows than
the files hold.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from e2e_helpers import calls, counting_task, load_result, start_psy, wait_until, write
from fault_helpers import assert_untouched, tree_state
from psy_helpers import describe, psy

ROWS = 60

# On the first attempt execute kills its own process with SIGKILL at row KILL_AT
# (the file KILLED records that it did).
KILL = """
if x == {kill_at} and not os.path.exists({killed!r}):
    open({killed!r}, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _rows(path: Path) -> dict[int, int]:
    data = load_result(path, "pickle")
    out: dict[int, int] = {}
    for x, y in zip(data["x"].tolist(), data["y"].tolist()):
        assert int(x) not in out, f"x={x} is in the result twice"
        out[int(x)] = int(y)
    return out


def _status_done(project: Path, task: str) -> int:
    out = psy("status", task, cwd=project)
    assert out.returncode == 0, describe(out)
    assert "Traceback" not in out.output
    return int(re.search(r"(\d+) out of \d+ rows completed", out.stdout).group(1))


def _stored_rows(project: Path, task: str) -> int:
    """Rows that the result and the parts of `task` hold (each row once)."""
    from psyrun.store.pickle import PickleStore

    root = project / "psy-work" / task
    files = ([root / "result.pkl"] if (root / "result.pkl").exists() else []) + sorted(
        (root / "out").glob("*.pkl")
    )
    seen: set[int] = set()
    for path in files:
        try:
            seen.update(int(x) for x in PickleStore().load(str(path))["x"])
        except Exception:
            continue  # a damaged part holds nothing that counts
    return len(seen)


def _check_continue(project: Path, task: str, side: Path, kill_at: int, before: dict) -> None:
    result = project / "psy-work" / task / "result.pkl"
    done = _status_done(project, task)
    assert done <= _stored_rows(project, task), "status says more than the files hold"
    again = psy("run", "-c", task, cwd=project)
    assert again.returncode == 0, describe(again)
    assert _rows(result) == {x: x * x for x in range(ROWS)}, f"kill at row {kill_at}"
    assert _status_done(project, task) == ROWS
    extra = calls(side) - Counter(range(ROWS))
    # Evaluated again: only rows the killed job held when it died.
    assert sum(extra.values()) <= ROWS, extra
    assert_untouched(before, tree_state(project, skip=project / "psy-work"))


@pytest.mark.parametrize("args", [[], ["-j", "2"]])
def test_kill_9_of_a_default_local_process_job_then_continue(tmp_path, fault_rng, args):
    project = tmp_path / "project"
    aside = tmp_path / "aside"
    aside.mkdir()
    kill_at = int(fault_rng.integers(0, ROWS))
    side = aside / "calls.txt"
    write(
        project / "psy-tasks" / "task_k.py",
        counting_task(
            side,
            range(ROWS),
            before_record=KILL.format(kill_at=kill_at, killed=str(aside / "killed")),
        ),
    )
    before = tree_state(project, skip=project / "psy-work")
    first = psy("run", *args, "k", cwd=project)
    assert first.returncode == 1, describe(first)
    # Default settings on this machine: one process job per job slot.
    assert len(re.findall(r"^\. k:process:", first.stdout, flags=re.M)) == (2 if args else 1)
    assert (aside / "killed").exists()
    _check_continue(project, "k", side, kill_at, before)


def test_kill_9_of_a_pool_worker_while_other_jobs_find_nothing_then_continue(tmp_path, fault_rng):
    project = tmp_path / "project"
    aside = tmp_path / "aside"
    aside.mkdir()
    kill_at = int(fault_rng.integers(0, ROWS))
    side = aside / "calls.txt"
    write(
        project / "psy-tasks" / "task_lb.py",
        counting_task(
            side,
            range(ROWS),
            backend="loadbalancing",
            settings="max_jobs = 3\npool_size = 2\n",
            before_record=KILL.format(kill_at=kill_at, killed=str(aside / "killed")),
        ),
    )
    before = tree_state(project, skip=project / "psy-work")
    first = psy("run", "lb", cwd=project)
    # The killed worker's rows are taken over by its job (which then fails).
    assert first.returncode in (0, 1), describe(first)
    assert (aside / "killed").exists()
    _check_continue(project, "lb", side, kill_at, before)


SLOW_ROWS = """
import time
time.sleep(0.02)
"""


def test_kill_9_of_psy_while_local_jobs_write_unsynced_then_continue(tmp_path):
    project = tmp_path / "project"
    aside = tmp_path / "aside"
    aside.mkdir()
    side = aside / "calls.txt"
    write(
        project / "psy-tasks" / "task_s.py",
        counting_task(side, range(ROWS), before_record=SLOW_ROWS),
    )
    before = tree_state(project, skip=project / "psy-work")
    proc = start_psy("run", "s", cwd=project)
    wait_until(lambda: len(calls(side)) >= 5, "rows being evaluated", proc=proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    status = project / "psy-work" / "s" / "status"
    # The orphaned job goes on to its end (its lease says so); then -c does the rest.
    wait_until(lambda: not list(status.glob("*.lease")), "the orphaned job to end", timeout=120)
    time.sleep(0.1)
    _check_continue(project, "s", side, -1, before)


BIG = """
import numpy as np
from psyrun import Param
pspace = Param(x=list(range({n})))
workdir = {workdir!r}


def execute(x):
    return {{"y": x * x, "pad": np.full(4000, float(x))}}
"""


def test_full_disk_while_a_local_job_writes_unsynced_then_continue(tmp_path, small_disk):
    disk = small_disk("16m")
    project = tmp_path / "project"
    workdir = disk.path / "w"
    write(project / "psy-tasks" / "task_f.py", BIG.format(n=ROWS * 2, workdir=str(workdir)))
    before = tree_state(project)
    # Room for the split, not for the process job's part (about 3.8 MB).
    disk.fill(leave=1 << 20)
    first = psy("run", "f", cwd=project)
    assert first.returncode == 1, describe(first)
    assert "Traceback" not in first.stdout
    status = psy("status", "f", cwd=project)
    assert status.returncode == 0, describe(status)
    disk.free()
    again = psy("run", "-c", "f", cwd=project)
    assert again.returncode == 0, describe(again)
    data = load_result(workdir / "f" / "result.pkl", "pickle")
    assert sorted(data["x"].tolist()) == list(range(ROWS * 2))
    assert_untouched(before, tree_state(project))
