"""``psy status``: what it says about results, runs in progress and work directories."""

from __future__ import annotations

import os
import signal

from e2e_helpers import (
    age_files,
    calls,
    counting_task,
    describe,
    finish,
    load_result,
    ok,
    psy,
    result_path,
    start_psy,
    status_counts,
    wait_for_rows,
    write,
)

GROWN = """
from psyrun import Param
CALLS = {calls!r}
pspace = {space}

def execute(x, z=None):
    with open(CALLS, 'a') as f:
        f.write(f'{{x}}\\n')
    return {{'y': x * x}}
"""


def test_a_parameter_key_added_to_the_space_is_not_reported_done(tmp_path):
    """Issue 14.3: status warns and says 0 done, -c refuses naming the key, run recomputes."""
    task = tmp_path / "psy-tasks" / "task_grow.py"
    side = str(tmp_path / "calls.txt")
    write(task, GROWN.format(calls=side, space="Param(x=range(4))"))
    ok(psy("run", cwd=tmp_path))
    age_files(tmp_path)
    write(task, GROWN.format(calls=side, space="Param(x=range(4)) * Param(z=[0, 1])"))

    status = ok(psy("status", "grow", cwd=tmp_path))
    assert status_counts(status.stdout) == [(0, 8)], describe(status)
    warning = [line for line in status.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, describe(status)
    assert "'z'" in warning[0], describe(status)

    refused = psy("run", "-c", "grow", cwd=tmp_path)
    assert refused.returncode == 1, describe(refused)
    assert "Traceback" not in refused.stderr
    assert "'z'" in refused.stderr, describe(refused)
    assert "without -c" in refused.stderr, describe(refused)

    ok(psy("run", "grow", cwd=tmp_path))
    data = load_result(result_path(tmp_path, "grow"), "pickle")
    assert sorted(zip(data["x"].tolist(), data["z"].tolist())) == [
        (x, z) for x in range(4) for z in (0, 1)
    ]
    assert status_counts(ok(psy("status", cwd=tmp_path)).stdout) == [(8, 8)]


def slow(tmp_path, n_rows=200, settings="max_jobs = 4"):
    write(
        tmp_path / "psy-tasks" / "task_slow.py",
        counting_task(
            tmp_path / "calls.txt",
            range(n_rows),
            settings=settings,
            preamble="import time",
            before_record="time.sleep(0.05)",
        ),
    )
    return tmp_path / "psy-work" / "slow"


def test_status_while_a_run_holds_the_task(tmp_path):
    """Issue 14.5: a run in progress is named with its pid; pending jobs are not failed."""
    root = slow(tmp_path)
    proc = start_psy("run", cwd=tmp_path)
    try:
        wait_for_rows(root, 1, proc=proc)
        for args in (["status"], ["status", "-v"]):
            status = ok(psy(*args, cwd=tmp_path))
            text = status.stdout + status.stderr
            assert f"a `psy run` (pid {proc.pid}) is working on this task now" in text, text
            assert "failed" not in text, text
            assert "did not finish" not in text, text
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        finish(proc)


def test_status_from_another_shell_during_a_parallel_run(tmp_path):
    """Issue 10.1: `psy status` works while `psy run -j 2` goes."""
    root = slow(tmp_path, settings="max_jobs = 2")
    proc = start_psy("run", "-j", "2", cwd=tmp_path)
    try:
        wait_for_rows(root, 1, proc=proc)
        status = ok(psy("status", "-v", cwd=tmp_path))
        assert f"(pid {proc.pid}) is working on this task now" in status.stdout, describe(status)
        assert "did not finish" not in status.stdout, describe(status)
        assert [total for _, total in status_counts(status.stdout)] == [200]
    finally:
        out = finish(proc)
    assert proc.returncode == 0, out
    assert status_counts(ok(psy("status", cwd=tmp_path)).stdout) == [(200, 200)]


def test_status_from_another_directory_names_the_work_directory(tmp_path):
    """Issue 14.9: workdir is relative to where psy starts; say where status looked."""
    write(tmp_path / "psy-tasks" / "task_sq.py", counting_task(tmp_path / "c.txt", range(5)))
    ok(psy("run", cwd=tmp_path))
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    status = ok(psy("status", "--taskdir", "../psy-tasks", cwd=elsewhere))
    assert status_counts(status.stdout) == [(0, 5)]
    assert str(elsewhere / "psy-work" / "sq") in status.stdout, describe(status)
    assert "relative" in status.stdout, describe(status)
    # From the project directory nothing of the kind is said.
    here = ok(psy("status", cwd=tmp_path))
    assert status_counts(here.stdout) == [(5, 5)]
    assert "nothing found" not in here.stdout


def test_status_after_the_result_file_was_deleted(tmp_path):
    """Issue 15.2: status says the result is gone and what -c will recompute."""
    side = tmp_path / "c.txt"
    write(tmp_path / "psy-tasks" / "task_sq.py", counting_task(side, range(6)))
    ok(psy("run", cwd=tmp_path))
    result_path(tmp_path, "sq").unlink()
    status = ok(psy("status", cwd=tmp_path))
    assert status_counts(status.stdout) == [(0, 6)]
    text = status.stdout + status.stderr
    assert "result file" in text, describe(status)
    assert str(result_path(tmp_path, "sq")) in text, describe(status)
    assert "psy run -c sq" in text, describe(status)
    assert "6 rows" in text, describe(status)
    # And -c does what status said.
    ok(psy("run", "-c", cwd=tmp_path))
    assert calls(side) == dict.fromkeys(range(6), 2)
