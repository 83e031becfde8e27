"""Walltime-aware jobs on a real Slurm: a job with a 1-minute limit stops before it.

Start a one-node cluster with ``bash scripts/local-slurm.sh start``; without
one every test here is skipped with the reason. The sweep needs more than one
job's time limit, so it takes a few minutes (marked ``slow``).
"""

from __future__ import annotations

import datetime
import re
import subprocess
import time
import uuid
from collections import Counter

import pytest
from e2e_helpers import calls, counting_task, load_result, result_path, status_counts, write
from psy_helpers import describe, ok, psy
from slurm_helpers import slurm_marks

from psyrun.run.walltime import read_partial

pytestmark = [*slurm_marks(), pytest.mark.slow]

SETTINGS = """
import sys
from psyrun import Slurm

scheduler = Slurm()
scheduler_args = {"timelimit": "1", "memory_per_cpu": "200M"}
max_jobs = 1
walltime_margin = 8
record = ["finished"]
python = sys.executable
"""


def _cancel(task: str) -> None:
    out = subprocess.run(
        ["squeue", "--noheader", "--format=%i|%j"], capture_output=True, text=True, check=False
    ).stdout
    ids = [line.split("|")[0] for line in out.splitlines() if f"|{task}:" in line]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, check=False)


def _wait_idle(cwd, task: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while True:
        out = ok(psy("status", task, cwd=cwd, subprocess=True))
        if "queued or running" not in out.stdout and "in the queue" not in out.stdout:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs of {task} still queued after {timeout} s:\n{out.stdout}")
        time.sleep(2)


def _job_state(jobid: str) -> str:
    """``JobState`` of a finished job as ``scontrol`` remembers it (for MinJobAge)."""
    out = subprocess.run(
        ["scontrol", "show", "job", jobid], capture_output=True, text=True, check=False
    ).stdout
    m = re.search(r"JobState=(\w+)", out)
    return m.group(1) if m else ""


def test_slurm_job_stops_before_its_time_limit_and_loses_no_row(tmp_path):
    task = "w" + uuid.uuid4().hex[:8]
    side = tmp_path / "calls.txt"
    values = list(range(90))  # 90 s of rows: more than one job's minute
    source = counting_task(
        side, values, settings=SETTINGS, preamble="import time", before_record="time.sleep(1)"
    )
    write(tmp_path / "psy-tasks" / f"task_{task}.py", source)
    try:
        ok(psy("run", task, cwd=tmp_path, subprocess=True))
        status = _wait_idle(tmp_path, task)
        # The process job stopped by itself (partial), so the merge ran.
        assert "stopped before their time limit" in status.stdout, describe(status)
        status_dir = tmp_path / "psy-work" / task / "status"
        info = read_partial(str(status_dir / f"{task}_process_0.partial"))
        assert info is not None
        assert info["source"] == "Slurm's time left (squeue %L)"
        assert info["left"] > 0
        result = load_result(result_path(tmp_path, task), "pickle")
        # No row lost to the time limit: every row evaluated is in the result.
        done = Counter(int(x) for x in result["x"])
        assert done == calls(side)
        assert info["evaluated"] == len(result["x"])
        last = max(
            datetime.datetime.fromisoformat(str(t)).timestamp() for t in result["psy_finished"]
        )
        spare = info["deadline"] - last
        print(f"\nrows in round 1: {len(result['x'])}, seconds left at the last row: {spare:.1f}")
        assert 0 < spare <= 8 + 2 * 1.5 + 5
        # Slurm saw a job that ended on its own, not one it killed at the limit.
        submitted = (tmp_path / "psy-work" / task / "jobs" / "submitted.json").read_text()
        process = re.search(r'"(\d+_0)"', submitted).group(1)
        assert _job_state(process) == "COMPLETED"
        # The next round evaluates the rest; every row exactly once.
        ok(psy("run", "-c", task, cwd=tmp_path, subprocess=True))
        status = _wait_idle(tmp_path, task)
        for _ in range(3):
            if status_counts(status.stdout) == [(90, 90)]:
                break
            ok(psy("run", "-c", task, cwd=tmp_path, subprocess=True))
            status = _wait_idle(tmp_path, task)
        assert status_counts(status.stdout) == [(90, 90)], describe(status)
        assert calls(side) == Counter(values)
        final = load_result(result_path(tmp_path, task), "pickle")
        assert sorted(int(x) for x in final["x"]) == values
    finally:
        _cancel(task)
