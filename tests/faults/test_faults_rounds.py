"""Faults around automatic rounds (``max_attempts``, :mod:`psyrun.run.attempts`).

Every case checks the promise of the fault suite: after the last run every row
is in the result exactly once, nothing outside the task's work directory was
touched, and nothing is lost that was written.

* a full disk while the rounds go on (the round's state cannot be written);
* ``kill -9`` of the attached ``psy run`` in round 2;
* a damaged ``jobs/rounds.json``;
* ``psy kill`` while a merge job submits the next round (a fake Slurm whose
  ``sbatch`` writes the stop marker after the first job of the round): nothing
  more is submitted, ``psy kill`` finds what was, and a job of the stopped
  chain that starts anyway does nothing;
* a job out of memory, from a recorded ``sacct`` answer (a fake on PATH): the
  next round's ``sbatch`` asks for twice the memory.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import (
    calls,
    counting_task,
    finish,
    load_result,
    ok,
    psy,
    result_path,
    start_psy,
    wait_until,
    write,
)
from fault_helpers import assert_untouched, tree_state

CRASH_ONCE = """
if x == 3 and os.environ.get("PSYRUN_ATTEMPT") == "1":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def task_root(project: Path, name: str = "sweep") -> Path:
    return project / "psy-work" / name


def rows_of(project: Path, name: str = "sweep") -> list[int]:
    return sorted(int(x) for x in load_result(result_path(project, name), "pickle")["x"])


def test_full_disk_during_the_rounds_keeps_what_was_written(tmp_path, small_disk):
    disk = small_disk("4m")
    project = tmp_path / "project"
    once = tmp_path / "filled"
    fill = (
        f"if x == 3 and not os.path.exists({str(once)!r}):\n"
        f"    open({str(once)!r}, 'w').close()\n"
        "    from psyrun.store.testing import fill_disk\n"
        f"    fill_disk({str(disk.path)!r}, 0)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)"
    )
    write(
        project / "psy-tasks" / "task_sweep.py",
        counting_task(
            tmp_path / "calls.txt",
            range(8),
            settings=f"max_jobs = 4\nmax_attempts = 3\nworkdir = {str(disk.path / 'work')!r}",
            before_record=fill,
        ),
    )
    before = tree_state(project)
    result = psy("run", "sweep", cwd=project)
    assert result.exit_code != 0
    assert "Traceback" not in result.output, result.output
    assert "No space left" in result.output or "disk" in result.output.lower(), result.output
    assert_untouched(before, tree_state(project), "the project")
    disk.free()
    ok(psy("run", "-c", "sweep", cwd=project))
    data = load_result(disk.path / "work" / "sweep" / "result.pkl", "pickle")
    assert sorted(data["x"].tolist()) == list(range(8))
    # Rows the first round had written were not evaluated again.
    assert calls(tmp_path / "calls.txt")[0] == 1


def test_kill_9_of_psy_run_in_round_two_then_continue(tmp_path):
    gate = tmp_path / "gate"
    wait_in_round_2 = (
        CRASH_ONCE
        + "while os.environ.get('PSYRUN_ATTEMPT') == '2' and not os.path.exists("
        + repr(str(gate))
        + "):\n    __import__('time').sleep(0.02)"
    )
    write(
        tmp_path / "psy-tasks" / "task_sweep.py",
        counting_task(
            tmp_path / "calls.txt",
            range(8),
            settings="max_jobs = 4\nmax_attempts = 3",
            before_record=wait_in_round_2,
        ),
    )
    proc = start_psy("run", "-j", "2", "sweep", cwd=tmp_path)
    rounds = task_root(tmp_path) / "jobs" / "rounds.json"
    wait_until(
        lambda: rounds.exists() and json.loads(rounds.read_text())["attempt"] == 2,
        "round 2",
        proc=proc,
    )
    wait_until(lambda: list((task_root(tmp_path) / "status").glob("*process*.lease")), "a lease")
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    gate.touch()
    # Jobs of round 2 that outlived psy end; then -c finishes every row once.
    wait_until(
        lambda: ok(psy("run", "-c", "sweep", cwd=tmp_path)).exit_code == 0,
        "psy run -c to succeed",
        timeout=60,
        interval=0.5,
    )
    assert rows_of(tmp_path) == list(range(8))


def test_damaged_round_state_is_ignored_and_rewritten(tmp_path):
    write(
        tmp_path / "psy-tasks" / "task_sweep.py",
        counting_task(
            tmp_path / "calls.txt",
            range(8),
            settings="max_jobs = 4\nmax_attempts = 3",
            before_record=CRASH_ONCE,
        ),
    )
    ok(psy("run", "sweep", cwd=tmp_path))
    rounds = task_root(tmp_path) / "jobs" / "rounds.json"
    for damage in (b'{"attempt": 2, "max_att', b'{"attempt": "x"}'):
        rounds.write_bytes(damage)
        status = ok(psy("status", "sweep", cwd=tmp_path))
        assert "8 out of 8 rows completed" in status.output
        assert "Traceback" not in status.output
    # The next run that submits writes a new state.
    (tmp_path / "psy-tasks" / "task_sweep.py").write_text(
        (tmp_path / "psy-tasks" / "task_sweep.py").read_text() + "\n# changed\n"
    )
    ok(psy("run", "sweep", cwd=tmp_path))
    assert rows_of(tmp_path) == list(range(8))
    assert json.loads(rounds.read_text())["max_attempts"] == 3


# -- a merge job on a fake Slurm -------------------------------------------------------

SLURM_TASK = """
import sys
from psyrun import Param, Slurm

pspace = Param(x=list(range(4)))
scheduler = Slurm()
scheduler_args = {"timelimit": "1h", "memory": "1G"}
max_jobs = 1
max_attempts = 3
python = sys.executable


def execute(x):
    return {"y": x * x}
"""


def run_worker(project: Path, kind: str, *index: str) -> subprocess.CompletedProcess:
    """Run one job of the task as the batch system would (the job's own process)."""
    description = task_root(project) / "jobs" / f"{kind}.json"
    return subprocess.run(
        [sys.executable, "-m", "psyrun.worker", str(description), *index],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fake_program(bindir: Path, name: str, body: str) -> None:
    bindir.mkdir(exist_ok=True)
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def submitted(project: Path) -> dict:
    return json.loads((task_root(project) / "jobs" / "submitted.json").read_text())


def round_sbatch_calls(fake, after: int) -> list[list[str]]:
    return fake.calls("sbatch")[after:]


@pytest.fixture
def slurm_project(tmp_path, fake, monkeypatch):
    project = tmp_path / "project"
    write(project / "psy-tasks" / "task_sweep.py", SLURM_TASK)
    bindir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    ok(psy("run", "sweep", cwd=project))
    # Round 1's split ran; its process job was killed for its memory before it wrote anything.
    array = submitted(project)["jobs"][1][1]
    fake_program(
        bindir,
        "sacct",
        f"printf '%s\\n' '{array}|FAILED|0:125|' '{array}.batch|OUT_OF_MEMORY|0:125|1048576K'\n",
    )
    assert run_worker(project, "split").returncode == 0
    return project, bindir


def test_out_of_memory_from_sacct_doubles_the_memory_of_the_next_round(slurm_project, fake):
    project, _ = slurm_project
    before = len(fake.calls("sbatch"))
    merge = run_worker(project, "merge")
    assert merge.returncode == 0, merge.stdout + merge.stderr
    assert "ran out of memory" in merge.stdout
    new = round_sbatch_calls(fake, before)
    assert len(new) == 3, new  # split, process, merge of round 2
    for argv in new:
        assert "--mem=2G" in argv
        assert "--time=1:00:00" in argv
    assert any(a.startswith("--dependency=afterany:") for a in new[2])
    state = json.loads((task_root(project) / "jobs" / "rounds.json").read_text())
    assert state["attempt"] == 2
    assert state["factors"] == {"memory": 2.0}
    assert state["history"][0]["causes"] == {"memory": 1}
    described = json.loads((task_root(project) / "jobs" / "process.json").read_text())
    assert described["attempt"] == 2


def test_kill_while_a_round_is_submitted_leaves_nothing_running(slurm_project, fake):
    project, bindir = slurm_project
    stop = task_root(project) / "jobs" / "stop"
    # psy kill's marker appears right after the round's first sbatch.
    real = Path(__file__).parents[1] / "fakebin" / "sbatch"
    fake_program(bindir, "sbatch", f': > {str(stop)!r}\nexec {str(real)!r} "$@"\n')
    before = len(fake.calls("sbatch"))
    merge = run_worker(project, "merge")
    assert merge.returncode == 0, merge.stdout + merge.stderr
    assert "not submitted" in merge.stdout
    new = round_sbatch_calls(fake, before)
    assert len(new) == 1, new  # only the split went out
    # The round's jobs and tag were recorded first: psy kill finds the split.
    record = submitted(project)
    split_id = record["jobs"][0][1]
    assert split_id
    name = f"sweep:split.{record['run']}"
    fake.script("squeue", out=f"{split_id}|PD|None|{name}\n")
    killed = ok(psy("kill", "sweep", cwd=project))
    assert "killed 1 jobs" in killed.output
    assert [split_id] in fake.calls("scancel")
    # The split had started anyway: it does nothing.
    snapshot = task_root(project) / "in" / "pspace.pkl"
    stamp = snapshot.stat().st_mtime_ns
    job = run_worker(project, "split")
    assert job.returncode == 0
    assert "psy kill stopped the rounds" in job.stdout
    assert snapshot.stat().st_mtime_ns == stamp
    failed = (task_root(project) / "status" / "sweep_split.failed").read_text()
    assert "stopped by psy kill" in failed
    fake.script("squeue", out="")
    status = ok(psy("status", "sweep", cwd=project))
    assert "psy kill stopped the rounds" in status.output
