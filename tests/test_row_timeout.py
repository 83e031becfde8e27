"""Row timeout (psyrun.run.row_timeout): a hanging execute fails its row, not the whole run."""

from __future__ import annotations

import time

import pytest
from e2e_helpers import calls
from psy_helpers import describe, psy, task_result, write_task

from psyrun.run import row_timeout
from psyrun.run.row_timeout import RowTimeout, RowTimer

TASK = """
import time
from psyrun import Param
pspace = Param(x=list(range(8)))
max_jobs = 2
row_timeout = {timeout}
record = ['error']
CALLS = {calls!r}
{settings}

def execute(x):
    with open(CALLS, 'a') as f:
        f.write(f'{{int(x[0]) if hasattr(x, "__len__") else x}}\\n')
    {body}
    return {{'y': x * 2}}
"""


def make(tmp_path, body, timeout=0.3, settings=""):
    side = tmp_path / "calls.txt"
    text = TASK.format(timeout=timeout, calls=str(side), settings=settings, body=body)
    write_task(tmp_path, "t", text)
    return side


def test_a_hanging_row_fails_with_cause_timeout(tmp_path):
    make(tmp_path, "if x == 5: time.sleep(60)")
    t0 = time.monotonic()
    out = psy("run", "t", cwd=tmp_path)
    assert time.monotonic() - t0 < 20, "the hanging row held the run"
    assert out.returncode == 1, describe(out)
    result = task_result(tmp_path, "t")
    assert sorted(int(x) for x in result["x"]) == list(range(8))
    errors = {int(x): str(e) for x, e in zip(result["x"], result["psy_error"])}
    assert errors[5].startswith("RowTimeout: execute ran longer than row_timeout = 0.3 s")
    assert all(e == "" for x, e in errors.items() if x != 5)
    status = psy("status", "-v", "t", cwd=tmp_path)
    assert "by cause: timeout 1" in status.stdout, describe(status)


def test_vectorized_timeout_fails_the_block_without_retrying_rows(tmp_path):
    side = make(
        tmp_path,
        "if 5 in x: time.sleep(60)",
        settings="vectorized = True\nblock_size = 2\nmax_jobs = 1",
    )
    out = psy("run", "t", cwd=tmp_path)
    assert out.returncode == 1, describe(out)
    result = task_result(tmp_path, "t")
    failed = sorted(int(x) for x, e in zip(result["x"], result["psy_error"]) if e)
    assert failed == [4, 5]  # the whole block of 4 and 5
    # The block was called once (first row 4) and not evaluated again row by row.
    assert calls(side)[4] == 1
    assert calls(side)[5] == 0


def test_watchdog_ends_a_job_stuck_in_c_code(tmp_path, monkeypatch):
    # sum() over a huge range runs in C without returning to the interpreter: the
    # alarm cannot interrupt it, the watchdog ends the job (forked jobs inherit the
    # shorter grace set here).
    monkeypatch.setattr(row_timeout, "MIN_GRACE", 0.4)
    make(tmp_path, "if x == 5: sum(range(10**12))", timeout=0.2, settings="max_jobs = 1")
    t0 = time.monotonic()
    out = psy("run", "t", cwd=tmp_path)
    assert time.monotonic() - t0 < 30
    assert out.returncode == 1
    assert "killed by the row_timeout watchdog" in out.stderr, describe(out)
    stack = (tmp_path / "psy-work" / "t" / "status" / "t_process_0.watchdog").read_text()
    assert "Timeout" in stack  # faulthandler's dump of the stuck call
    assert "execute" in stack
    # The stuck row never counts as done (rows written to the part before it may).
    status = psy("status", "t", cwd=tmp_path)
    done = int(status.stdout.split(" out of ")[0].rsplit(" ", 1)[-1])
    assert done <= 5, describe(status)


def test_timer_restores_the_previous_alarm_handler():
    import signal

    before = signal.getsignal(signal.SIGALRM)
    timer = RowTimer(0.05)
    slow = timer.wrap(lambda: time.sleep(5))
    with timer.armed():
        with pytest.raises(RowTimeout):
            slow()
        assert timer.wrap(lambda: 3)() == 3
    assert signal.getsignal(signal.SIGALRM) == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("value", [0, -1, "5", True, float("nan")])
def test_row_timeout_must_be_positive_seconds(tmp_path, value):
    make(tmp_path, "", timeout=repr(value) if not isinstance(value, float) else "float('nan')")
    out = psy("status", "t", cwd=tmp_path)
    assert out.returncode != 0
    assert "row_timeout must be a number of seconds" in out.output
