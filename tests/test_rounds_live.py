"""Automatic rounds on the live local Slurm and Grid Engine (``max_attempts``).

A sweep whose one process job cannot finish within its time limit: the batch
system kills it (Slurm sends SIGTERM at the limit, the job keeps the rows it
evaluated; Grid Engine's ``h_rt`` kills it outright), the merge job runs
anyway (``afterany``), reads why the job ended from the batch system's own
record (``scontrol show job`` here, where Slurm keeps no accounting; ``qacct``
on Grid Engine), and submits round 2 with twice the time. Nobody runs ``psy``
again, and in the end every row is in the result exactly once. Each case
cancels what it submitted, whatever happens.

Out of memory on Grid Engine: ``h_vmem`` is a hard limit of the job's
address space, so an allocation beyond it raises ``MemoryError`` in
``execute``; the rows fail, the job's marker names the error, and round 2
asks for twice the memory and finishes.

Time limits: Slurm counts them in minutes and looks at running jobs about
every 30 s, so its case takes about 2 minutes (20 rows of 5 s, a 1-minute
limit); Grid Engine takes seconds (12 rows of 2 s, ``h_rt`` of 12 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from e2e_helpers import calls, counting_task, load_result, ok, psy, result_path, write
from sge_helpers import sge_marks
from slurm_helpers import slurm_marks

#: The task's name (unusual, so that the queue's other jobs do not match it).
NAME = "rndlive"


def marked(marks):
    """Apply the marks of a live cluster (and ``slow``) to one test."""

    def apply(test):
        for mark in [*marks, pytest.mark.slow]:
            test = mark(test)
        return test

    return apply


def sweep(
    tmp_path: Path,
    scheduler: str,
    values,
    seconds: float,
    timelimit: str,
    hang_at: int | None = None,
) -> None:
    """Write the sweep: rows of `seconds` each, one job, three rounds at most.

    With `hang_at`, that row hangs in round 1 (later rounds evaluate every
    row at once): the job cannot foresee it (psyrun.run.walltime estimates from
    the rows before), so the batch system ends it at its time limit.
    """
    settings = f"""
import sys
import time
{scheduler}
scheduler_args = {{"timelimit": {timelimit!r}, "memory_per_cpu": "1G"}}
max_jobs = 1
max_attempts = 3
python = sys.executable
"""
    sleep = f"time.sleep({seconds})\n"
    if hang_at is not None:
        settings += "walltime_margin = 0\n"
        sleep = (
            "if os.environ['PSYRUN_ATTEMPT'] == '1':\n"
            f"    time.sleep({seconds} if x != {hang_at} else 3600)\n"
        )
    write(
        tmp_path / "psy-tasks" / "task_rndlive.py",
        counting_task(
            tmp_path / "calls.txt",
            values,
            settings=settings,
            # The round of the job is recorded with each call.
            before_record=(
                sleep + "with open(CALLS + '.attempts', 'a') as f:\n"
                "    f.write(f\"{x} {os.environ['PSYRUN_ATTEMPT']}\\n\")"
            ),
        ),
    )


def rounds_state(tmp_path: Path) -> dict:
    path = tmp_path / "psy-work" / NAME / "jobs" / "rounds.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_for_the_chain(tmp_path: Path, timeout: float) -> dict:
    """Wait until the chain's last merge recorded a round that needs no other; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = rounds_state(tmp_path)
        history = state.get("history", [])
        if history and history[-1]["attempt"] == state["attempt"]:
            return state
        time.sleep(1)
    raise AssertionError(f"the rounds did not end within {timeout} s: {rounds_state(tmp_path)}")


def check_every_row_once(tmp_path: Path, values) -> None:
    data = load_result(result_path(tmp_path, NAME), "pickle")
    assert sorted(data["x"].tolist()) == list(values)
    assert sorted(zip(data["x"].tolist(), data["y"].tolist())) == [(x, x * x) for x in values]
    rounds = [line.split() for line in (tmp_path / "calls.txt.attempts").read_text().split("\n")]
    assert {r[1] for r in rounds if r} == {"1", "2"}


def kill(tmp_path: Path, env=None) -> None:
    psy("kill", NAME, cwd=tmp_path, env=env)


@marked(slurm_marks())
@pytest.mark.timeout(300)
def test_slurm_time_limit_then_automatic_round(tmp_path):
    values = range(20)
    sweep(tmp_path, "from psyrun import Slurm\nscheduler = Slurm()", values, 5, "1", hang_at=1)
    try:
        ok(psy("run", NAME, cwd=tmp_path))
        state = wait_for_the_chain(tmp_path, timeout=240)
    finally:
        kill(tmp_path)
    assert state["attempt"] == 2, state
    assert state["history"][0]["causes"] == {"timelimit": 1}
    assert state["factors"] == {"timelimit": 2.0}
    # Round 2 asked for twice the time.
    log = (tmp_path / "psy-work" / NAME / f"{NAME}:merge.log").read_text()
    check_every_row_once(tmp_path, values)
    assert "every row is done" in log
    status = ok(psy("status", NAME, cwd=tmp_path))
    assert "20 out of 20 rows completed" in status.output
    assert "round 1: 6 rows missing" in status.output or "round 1:" in status.output


SGE_ENV = {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}


@pytest.fixture
def sge_env(monkeypatch):
    for key, value in SGE_ENV.items():
        monkeypatch.setenv(key, os.environ.get(key, value))


@marked(sge_marks())
@pytest.mark.timeout(200)
def test_gridengine_time_limit_then_automatic_round(tmp_path, sge_env):
    values = range(12)
    sweep(
        tmp_path,
        "from psyrun import GridEngine\nscheduler = GridEngine()",
        values,
        2,
        "12s",
        hang_at=1,
    )
    try:
        ok(psy("run", NAME, cwd=tmp_path))
        state = wait_for_the_chain(tmp_path, timeout=150)
    finally:
        kill(tmp_path)
    assert state["attempt"] == 2, state
    # qmaster writes accounting records every flush_time (15 s by default): when
    # round 1's record came after the merge job stopped asking, the job (killed
    # without a marker) counts as "other" and round 2 keeps its resources.
    assert state["history"][0]["causes"] in ({"timelimit": 1}, {"other": 1}), state
    log = (tmp_path / "psy-work" / NAME / f"{NAME}:merge.log").read_text()
    assert "every row is done" in log
    check_every_row_once(tmp_path, values)
    # qacct's record of round 1's job, as the chain read it.
    job = json.loads((tmp_path / "psy-work" / NAME / "jobs" / "submitted.json").read_text())
    assert job["jobs"]
    assert calls(tmp_path / "calls.txt")  # execute ran


@marked(sge_marks())
@pytest.mark.timeout(200)
def test_gridengine_kill_stops_the_chain(tmp_path, sge_env):
    values = range(12)
    # The merge job gets the same h_rt: 12 s leave it time to start the next round.
    sweep(tmp_path, "from psyrun import GridEngine\nscheduler = GridEngine()", values, 2, "12s")
    try:
        ok(psy("run", NAME, cwd=tmp_path))
        deadline = time.monotonic() + 120
        while rounds_state(tmp_path).get("attempt", 1) < 2:
            assert time.monotonic() < deadline, "round 2 never started"
            time.sleep(0.2)
        # Round 2 is being submitted or runs: stop the chain.
        ok(psy("kill", NAME, cwd=tmp_path))
        deadline = time.monotonic() + 60
        while _listed(f"{NAME}_"):
            assert time.monotonic() < deadline, "jobs of the chain stayed in the queue"
            time.sleep(1)
        time.sleep(3)
        assert not _listed(f"{NAME}_"), "a job of the chain was submitted after psy kill"
        assert rounds_state(tmp_path)["attempt"] == 2
        status = ok(psy("status", NAME, cwd=tmp_path))
        assert "psy kill stopped the rounds" in status.output
        # psy run -c finishes by hand (a new chain): every row once.
        ok(psy("run", "-c", NAME, cwd=tmp_path))
        state = wait_for_the_chain(tmp_path, timeout=120)
        assert state["history"][-1]["missing"] == 0
    finally:
        kill(tmp_path)
    data = load_result(result_path(tmp_path, NAME), "pickle")
    assert sorted(data["x"].tolist()) == list(values)


def _listed(prefix: str) -> bool:
    proc = subprocess.run(["qstat"], capture_output=True, text=True, check=False)
    return any(prefix in line for line in proc.stdout.splitlines())


MEMORY_TASK = """
import os
import sys

from psyrun import GridEngine, Param

pspace = Param(x=list(range(4)))
scheduler = GridEngine()
# h_vmem is a hard limit (setrlimit): a larger allocation raises MemoryError.
scheduler_args = {"timelimit": "60s", "memory": "1G"}
max_jobs = 2
max_attempts = 3
python = sys.executable


def execute(x):
    block = bytearray(1200 * 2**20)
    return {"y": x * x, "n": len(block), "attempt": int(os.environ["PSYRUN_ATTEMPT"])}
"""


@marked(sge_marks())
@pytest.mark.timeout(200)
def test_gridengine_out_of_memory_then_a_round_with_twice_the_memory(tmp_path, sge_env):
    write(tmp_path / "psy-tasks" / f"task_{NAME}.py", MEMORY_TASK)
    try:
        ok(psy("run", NAME, cwd=tmp_path))
        state = wait_for_the_chain(tmp_path, timeout=150)
    finally:
        kill(tmp_path)
    assert state["attempt"] == 2, state
    assert state["history"][0]["causes"] == {"memory": 2}
    assert state["factors"] == {"memory": 2.0}
    data = load_result(result_path(tmp_path, NAME), "pickle")
    assert sorted(data["x"].tolist()) == [0, 1, 2, 3]
    assert set(data["attempt"].tolist()) == {2}
