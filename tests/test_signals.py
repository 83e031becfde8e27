"""Signals reaching ``psy run``: a kill, Ctrl-C, a batch system's preemption.

Every test starts a real ``psy run`` subprocess, waits until its jobs have
written a row (never a fixed sleep), then signals it. What must hold: every
process the run started stops, the lock is released, psy says how to go on
and exits with 128+signal, and ``psy run -c`` then gives every row once.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter

import pytest
from e2e_helpers import (
    alive,
    calls,
    counting_task,
    describe,
    finish,
    load_result,
    ok,
    psy,
    result_path,
    sorted_rows,
    square_rows,
    start_psy,
    status_counts,
    wait_for_rows,
    write,
)

SLOW_ROW = """
time.sleep(DELAY)
with open(PIDS, 'a') as f:
    f.write(f'{os.getpid()}\\n')
"""


def slow_task(tmp_path, n_rows, delay=0.05, backend=None, settings=""):
    """A counting task whose rows take `delay` s and record the pid evaluating them."""
    preamble = f"import time\nDELAY = {delay}\nPIDS = {str(tmp_path / 'pids.txt')!r}\n"
    write(
        tmp_path / "psy-tasks" / "task_slow.py",
        counting_task(
            tmp_path / "calls.txt",
            range(n_rows),
            backend=backend,
            settings=settings,
            preamble=preamble,
            before_record=SLOW_ROW,
        ),
    )
    return tmp_path / "psy-work" / "slow"


def job_pids(tmp_path) -> set[int]:
    path = tmp_path / "pids.txt"
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def assert_every_row_once(tmp_path, n_rows):
    data = load_result(result_path(tmp_path, "slow"), "pickle")
    assert sorted_rows(data) == square_rows(range(n_rows))
    counted = calls(tmp_path / "calls.txt")
    assert set(counted) == set(range(n_rows))


def test_interrupted_single_job_keeps_the_rows_it_flushed(tmp_path):
    """A job of 400 rows flushes by time: SIGINT keeps what it wrote (issue 14.2)."""
    root = slow_task(tmp_path, 400, settings="max_jobs = 1")
    proc = start_psy("run", cwd=tmp_path)
    wait_for_rows(root, 1, proc=proc)
    os.kill(proc.pid, signal.SIGINT)
    out = finish(proc)
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    kept = re.search(r"(\d+) rows evaluated in this run are kept", out)
    assert kept, out
    n_kept = int(kept.group(1))
    assert 0 < n_kept < 400, out
    # What the message says was kept is what status finds.
    status = ok(psy("status", "slow", cwd=tmp_path))
    assert status_counts(status.stdout) == [(n_kept, 400)], describe(status)
    ok(psy("run", "-c", "slow", cwd=tmp_path))
    assert_every_row_once(tmp_path, 400)


BACKENDS = {
    "distribute": (None, "max_jobs = 2"),
    "loadbalancing": ("loadbalancing", "max_jobs = 1\npool_size = 2"),
}


@pytest.mark.parametrize("jobs", [None, 2], ids=["immediate", "j2"])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_to_psy_alone_stops_every_child(tmp_path, signum, backend, jobs):
    """kill PID (not its group): no child keeps running, the lock is free (issue 12.3)."""
    n_rows = 200
    key, settings = BACKENDS[backend]
    if jobs is not None and backend == "loadbalancing":
        settings = "max_jobs = 2\npool_size = 2"
    root = slow_task(tmp_path, n_rows, backend=key, settings=settings)
    args = ["run"] if jobs is None else ["run", "-j", str(jobs)]
    proc = start_psy(*args, cwd=tmp_path)
    wait_for_rows(root, 1, proc=proc)
    os.kill(proc.pid, signum)
    out = finish(proc)
    assert proc.returncode == 128 + signum, out
    assert "interrupted" in out, out
    assert "psy run -c slow" in out, out
    assert "Traceback" not in out, out
    pids = job_pids(tmp_path)
    assert pids, "execute recorded no pid"
    assert not [p for p in pids if alive(p)], f"job processes left running: {pids}\n{out}"
    # The lock is released: continuing right away works and finishes every row once.
    cont = ok(psy("run", "-c", "slow", cwd=tmp_path))
    assert "holds the lock" not in cont.stderr
    assert_every_row_once(tmp_path, n_rows)
    result = load_result(result_path(tmp_path, "slow"), "pickle")
    assert max(Counter(result["x"].tolist()).values()) == 1


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_kill_9_of_one_job_under_j2_then_continue(tmp_path, backend):
    """A job child killed outright under -j 2: the run names it, -c completes (issue 10.1)."""
    n_rows = 120
    key = BACKENDS[backend][0]
    root = slow_task(tmp_path, n_rows, backend=key, settings="max_jobs = 2")
    proc = start_psy("run", "-j", "2", cwd=tmp_path)
    wait_for_rows(root, 1, proc=proc)
    victim = sorted(job_pids(tmp_path))[0]
    os.kill(victim, signal.SIGKILL)
    out = finish(proc)
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    assert "psy run -c slow" in out, out
    ok(psy("run", "-c", "slow", cwd=tmp_path))
    assert_every_row_once(tmp_path, n_rows)


def test_a_stop_while_the_row_counter_is_written_appends_no_row_twice(tmp_path, monkeypatch):
    """Issue 12.3: SIGTERM arriving just after a flush must not duplicate rows.

    The stop is injected where a real signal lands most often (the fsync of
    the row counter right after an append), so that the race is checked
    every time rather than once in a while.
    """
    from psyrun.backend.distribute import DistributeBackend
    from psyrun.run.defaults import make_backend
    from psyrun.store import PickleStore
    from psyrun.tasks import load_tasks

    write(
        tmp_path / "psy-tasks" / "task_slow.py",
        counting_task(tmp_path / "calls.txt", range(6), settings="max_jobs = 1"),
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("psyrun.backend.distribute.FLUSH_SECONDS", 0.0)
    task = load_tasks("psy-tasks")["slow"]
    backend = make_backend(task)
    assert isinstance(backend, DistributeBackend)
    backend.plan()
    backend.run_split(cont=False)
    real = backend.report_rows
    stops = []

    def stopped_during_first_counter_write(job, rows):
        real(job, rows)
        if not stops:
            stops.append(rows)
            raise SystemExit(128 + signal.SIGTERM)

    monkeypatch.setattr(backend, "report_rows", stopped_during_first_counter_write)
    with pytest.raises(SystemExit):
        backend.run_process(0, 1)
    x = PickleStore().load(backend.paths.partial(0))["x"].tolist()
    assert len(x) == len(set(x)), f"rows appended twice: {sorted(x)}"
