"""End to end on a real Slurm: ``psy run``, ``status -v``, ``kill`` and ``run -c``.

Start a one-node cluster with ``bash scripts/local-slurm.sh start``; without
one (no ``sbatch``, or ``scontrol ping`` does not answer) every test here is
skipped with the reason. Task files live in pytest's temporary directories
(the jobs run on this machine, so they can read them) and use
``scheduler = Slurm()`` with a short time limit. Every test cancels what it
submitted, whatever happens.

Two tools keep the tests deterministic on a node that runs only two jobs at a
time: jobs can be submitted held (``sbatch --hold``, switched on by an
environment variable the task file reads at submission), and ``execute`` can
wait for a gate file, so that a job stays running until the test removes it.
Calls of the Slurm commands are counted with wrappers put first on ``PATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from e2e_helpers import (
    calls,
    counting_task,
    load_result,
    result_path,
    sorted_rows,
    square_rows,
    status_counts,
    write,
)
from psy_helpers import describe, ok, psy
from slurm_helpers import slurm_marks

pytestmark = slurm_marks()

#: Seconds a whole sweep may take to go through the cluster (the node is shared
#: with other tests; trivial jobs start at about 2 per second).
TIMEOUT = 150.0
HOLD_ENV = "PSYRUN_TEST_SLURM_HOLD"

# Task-file source: a Slurm scheduler whose jobs are held when HOLD_ENV is set
# in the environment of `psy run` (the callable runs at submission).
SLURM_SETTINGS = """
import sys
import time
from psyrun import Slurm

scheduler = Slurm()
EXTRA_SBATCH = {extra!r}


def _sbatch_args(job_name):
    args = dict(EXTRA_SBATCH)
    if os.environ.get({hold!r}):
        args["hold"] = True
    return args or None


scheduler_args = {{"timelimit": "5", "memory_per_cpu": "200M", "sbatch_args": _sbatch_args}}
max_jobs = {max_jobs}
python = sys.executable
"""


def slurm_task(
    directory: Path,
    values,
    *,
    max_jobs: int,
    backend: str | None = None,
    extra_sbatch: dict | None = None,
    before_record: str = "",
    preamble: str = "",
) -> tuple[str, Path]:
    """Write a counting task using Slurm into `directory`/psy-tasks; return (name, side file).

    The name is unique, so the test's jobs can be told apart from others in the queue.
    """
    name = "s" + uuid.uuid4().hex[:8]
    side = directory / f"{name}-calls.txt"
    settings = SLURM_SETTINGS.format(extra=extra_sbatch or {}, hold=HOLD_ENV, max_jobs=max_jobs)
    source = counting_task(
        side,
        values,
        backend=backend,
        settings=settings,
        preamble="import time\n" + textwrap.dedent(preamble),
        before_record=before_record,
    )
    write(directory / "psy-tasks" / f"task_{name}.py", source)
    return name, side


def our_jobs(task: str) -> list[tuple[str, str, str]]:
    """``(id, compact state, reason)`` of the queued jobs whose name belongs to `task`."""
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--format=%i|%t|%r|%j"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    jobs = []
    for line in out.splitlines():
        jobid, state, reason, name = line.strip().split("|", 3)
        if name.startswith(f"{task}:"):
            jobs.append((jobid, state, reason))
    return jobs


def cancel_all(task: str) -> None:
    """Cancel every job of `task` still in the queue."""
    ids = sorted({j.split("_", 1)[0] for j, _, _ in our_jobs(task)})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)


@pytest.fixture
def tasks_made():
    """Names of the tasks a test creates; their jobs are cancelled at the end."""
    names: list[str] = []
    yield names
    for name in names:
        cancel_all(name)


def wait_for(predicate, what: str, timeout: float = TIMEOUT, interval: float = 0.5):
    """Poll `predicate` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(interval)


def wait_complete(cwd: Path, task: str, n_rows: int, timeout: float = TIMEOUT):
    """Poll ``psy status`` until every row is done and no job of the task is queued."""
    last = {}

    def done():
        result = ok(psy("status", task, cwd=cwd, subprocess=True))
        last["out"] = result
        queued = "queued or running jobs" in result.stdout or "in the queue" in result.stdout
        return not queued and status_counts(result.stdout) == [(n_rows, n_rows)] and result

    try:
        return wait_for(done, f"{task} to complete", timeout)
    except AssertionError as e:
        raise AssertionError(
            f"{e}; last status:\n{describe(last['out'])}\nqueue: {our_jobs(task)}"
        ) from None


def assert_every_row_once(cwd: Path, task: str, side: Path, values) -> None:
    """The result equals map_pspace's, and execute ran exactly once per row."""
    rows = sorted_rows(load_result(result_path(cwd, task), "pickle"))
    assert rows == square_rows(values)
    assert calls(side) == Counter(values)


def status_jobs(text: str) -> dict[str, tuple[str, str]]:
    """Jobs listed by ``psy status -v``: name -> (id, state); a reason may follow the state."""
    return {
        name: (jobid, state)
        for name, jobid, state in re.findall(
            r"^\s+(\S+) \(id (\S+), (\w+)(?:: .*)?\)$", text, re.M
        )
    }


@pytest.fixture
def command_log(tmp_path):
    """Wrappers for sbatch, squeue, scancel and scontrol that record every call.

    Returns ``(env, argv_of)``: `env` puts the wrappers first on PATH for ``psy``;
    ``argv_of(command)`` lists the argv lists of the calls so far (and
    ``argv_of.clear()`` forgets them).
    """
    bindir = tmp_path / "wrappers"
    logdir = tmp_path / "calls"
    bindir.mkdir()
    logdir.mkdir()
    for command in ("sbatch", "squeue", "scancel", "scontrol"):
        real = shutil.which(command)
        assert real is not None
        wrapper = bindir / command
        # One file per call, arguments separated by NUL: nothing is lost or re-split.
        wrapper.write_text(
            "#!/bin/sh\n"
            f'f=$(mktemp "{logdir}/{command}.XXXXXXXX")\n'
            'printf \'%s\\0\' "$@" >"$f"\n'
            f'exec "{real}" "$@"\n'
        )
        wrapper.chmod(0o755)

    def argv_of(command: str) -> list[list[str]]:
        files = sorted(logdir.glob(f"{command}.*"), key=lambda p: p.stat().st_mtime_ns)
        return [p.read_bytes().decode().split("\0")[:-1] for p in files]

    def clear() -> None:
        for p in logdir.iterdir():
            p.unlink()

    argv_of.clear = clear
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return env, argv_of


# -- a sweep through the cluster ------------------------------------------------


@pytest.mark.parametrize("backend", ["distribute", "loadbalancing"])
def test_run_through_slurm_equals_map_pspace(tmp_path, tasks_made, backend):
    values = list(range(40))
    task, side = slurm_task(tmp_path, values, max_jobs=4, backend=backend)
    tasks_made.append(task)
    run = ok(psy("run", cwd=tmp_path, subprocess=True))
    assert f". {task}:split" in run.stdout, describe(run)
    assert f". {task}:merge" in run.stdout, describe(run)
    assert "submitted 6 jobs" in run.stdout, describe(run)
    wait_complete(tmp_path, task, len(values))
    assert_every_row_once(tmp_path, task, side, values)
    # Logs are where the guide says, one per job, written by the jobs on the node.
    work = tmp_path / "psy-work" / task
    for job in ["split", *(f"process:{i}" for i in range(4)), "merge"]:
        assert "finished with status 0" in (work / f"{task}:{job}.log").read_text()
    again = ok(psy("run", task, cwd=tmp_path, subprocess=True))
    assert f"- {task}:merge" in again.stdout, describe(again)
    assert not our_jobs(task)


def test_queued_jobs_status_second_run_kill_and_continue(tmp_path, tasks_made, command_log):
    env, argv_of = command_log
    values = list(range(12))
    task, side = slurm_task(tmp_path, values, max_jobs=3)
    tasks_made.append(task)
    ok(psy("run", cwd=tmp_path, env={HOLD_ENV: "1", **env}, subprocess=True))
    queue = our_jobs(task)
    assert len(queue) == 5, queue
    assert {s for _, s, _ in queue} == {"PD"}, queue

    status = ok(psy("status", "-v", task, cwd=tmp_path, subprocess=True))
    listed = status_jobs(status.stdout)
    assert set(listed) == {
        f"{task}:{j}" for j in ["split", "process:0", "process:1", "process:2", "merge"]
    }, describe(status)
    assert {jobid for jobid, _ in listed.values()} == {j for j, _, _ in queue}
    assert {state for _, state in listed.values()} == {"queued"}
    assert status_counts(status.stdout) == [(0, 12)]

    # A second run while they wait submits nothing and says why.
    argv_of.clear()
    second = psy("run", task, cwd=tmp_path, env=env, subprocess=True)
    assert "still in the queue" in second.stderr, describe(second)
    assert f"psy kill {task}" in second.stderr, describe(second)
    assert argv_of("sbatch") == []
    assert len(our_jobs(task)) == 5

    killed = ok(psy("kill", task, cwd=tmp_path, subprocess=True))
    assert "killed 5 jobs" in killed.stdout, describe(killed)
    assert our_jobs(task) == []
    after = ok(psy("status", "-v", task, cwd=tmp_path, subprocess=True))
    assert "queued or running" not in after.stdout, describe(after)

    ok(psy("run", "-c", task, cwd=tmp_path, subprocess=True))
    wait_complete(tmp_path, task, len(values))
    assert_every_row_once(tmp_path, task, side, values)


def test_finished_running_and_pending_jobs_status_kill_continue(tmp_path, tasks_made):
    # 10 jobs of 3 rows; rows from 6 on wait for the gate: jobs 0 and 1 finish,
    # the next ones run (two CPUs) and stay running, the rest wait in the queue.
    values = list(range(30))
    gate = tmp_path / "gate"
    gate.touch()
    task, side = slurm_task(
        tmp_path,
        values,
        max_jobs=10,
        preamble=f"GATE = {str(gate)!r}\n",
        before_record="""
            if x >= 6:
                while os.path.exists(GATE):
                    time.sleep(0.05)
        """,
    )
    tasks_made.append(task)
    ok(psy("run", cwd=tmp_path, subprocess=True))

    def mixed():
        queue = our_jobs(task)
        states = Counter(s for _, s, _ in queue)
        counts = status_counts(ok(psy("status", task, cwd=tmp_path, subprocess=True)).stdout)
        # Jobs 0 and 1 (and the split) gone from the queue, gated ones running.
        gated = all("_" in j and int(j.split("_")[1]) >= 2 for j, s, _ in queue if s != "PD")
        return counts == [(6, 30)] and gated and states["R"] >= 1 and states["PD"] >= 1 and queue

    queue = wait_for(mixed, "jobs 0-1 finished, others running and pending")
    status = ok(psy("status", "-v", task, cwd=tmp_path, subprocess=True))
    listed = status_jobs(status.stdout)
    assert status_counts(status.stdout) == [(6, 30)], describe(status)
    assert f"{task}:process:0" not in listed
    assert f"{task}:split" not in listed
    assert f"{task}:merge" in listed, describe(status)
    states = Counter(state for _, state in listed.values())
    assert states["running"] >= 1, describe(status)
    assert states["queued"] >= 1, describe(status)
    running_ids = {j for j, s, _ in queue if s == "R"}
    assert running_ids <= {jobid for jobid, state in listed.values() if state == "running"}
    for row in ("{'x': 6}", "{'x': 29}"):
        assert row in status.stdout  # missing assignments are listed
    assert "{'x': 5}" not in status.stdout

    killed = ok(psy("kill", task, cwd=tmp_path, subprocess=True))
    assert f"killed {len(listed)} jobs" in killed.stdout, describe(killed)
    wait_for(lambda: not our_jobs(task), "the killed jobs to leave the queue", timeout=60)
    gate.unlink()

    after = ok(psy("status", "-v", task, cwd=tmp_path, subprocess=True))
    assert status_counts(after.stdout) == [(6, 30)], describe(after)
    assert "did not finish" in after.stdout, describe(after)  # killed jobs are reported

    ok(psy("run", "-c", task, cwd=tmp_path, subprocess=True))
    wait_complete(tmp_path, task, len(values))
    assert_every_row_once(tmp_path, task, side, values)


def test_failed_process_job_blocks_merge_and_continue_replaces_it(tmp_path, tasks_made):
    values = list(range(20))
    flag = tmp_path / "fail"
    flag.touch()
    task, side = slurm_task(
        tmp_path,
        values,
        max_jobs=4,
        preamble=f"""
            FLAG = {str(flag)!r}


            def setup(proc_id):
                if proc_id == 1 and os.path.exists(FLAG):
                    raise RuntimeError("process job 1 fails on purpose")
                return {{}}
        """,
    )
    tasks_made.append(task)
    ok(psy("run", cwd=tmp_path, subprocess=True))

    def merge_blocked():
        queue = our_jobs(task)
        return [q for q in queue if q[2] == "DependencyNeverSatisfied"] if len(queue) == 1 else []

    ((merge_id, _, _),) = wait_for(merge_blocked, "the merge to be blocked by the failed job")
    status = ok(psy("status", "-v", task, cwd=tmp_path, subprocess=True))
    listed = status_jobs(status.stdout)
    assert listed == {f"{task}:merge": (merge_id, "blocked")}, describe(status)
    assert f"{task}:process:1: RuntimeError: process job 1 fails on purpose" in status.stdout
    assert f"{task}:process:1.log" in status.stdout
    assert status_counts(status.stdout) == [(15, 20)]

    flag.unlink()
    cont = ok(psy("run", "-c", task, cwd=tmp_path, subprocess=True))
    assert f". {task}:merge" in cont.stdout, describe(cont)
    wait_complete(tmp_path, task, len(values))
    assert merge_id not in {j for j, _, _ in our_jobs(task)}
    assert_every_row_once(tmp_path, task, side, values)


def test_arguments_and_paths_reach_sbatch_literally(tmp_path, tasks_made, command_log):
    env, argv_of = command_log
    tricky = "a b 'c' \"d\"; touch PWNED $(touch PWNED2) `touch PWNED3`"
    where = tmp_path / "dir with space; 'quote' \"dq\" 50% & $HOME"
    values = list(range(6))
    task, side = slurm_task(where, values, max_jobs=2, extra_sbatch={"comment": tricky})
    tasks_made.append(task)
    ok(psy("run", cwd=where, env=env, subprocess=True))
    sbatch_calls = argv_of("sbatch")
    assert len(sbatch_calls) == 3
    for argv in sbatch_calls:
        assert f"--comment={tricky}" in argv
        assert (
            any(a.startswith("--output=") and str(where) in a.replace("%%", "%") for a in argv)
            or "--output=/dev/null" in argv
        )
    wait_complete(where, task, len(values))
    assert_every_row_once(where, task, side, values)
    for name in ("PWNED", "PWNED2", "PWNED3"):
        assert not list(tmp_path.rglob(name))
        assert not (Path.home() / name).exists()


# -- scale ------------------------------------------------------------------------


@pytest.mark.slow
def test_5000_jobs_few_sbatch_one_squeue_then_kill(tmp_path, tasks_made, command_log):
    env, argv_of = command_log
    values = list(range(5000))
    task, _ = slurm_task(tmp_path, values, max_jobs=5000)
    tasks_made.append(task)
    max_array = int(
        re.search(
            r"MaxArraySize\s*=\s*(\d+)",
            subprocess.run(
                ["scontrol", "show", "config"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout,
        ).group(1)
    )
    # Held: nothing runs, the test measures submission and status only.
    run = ok(psy("run", cwd=tmp_path, env={HOLD_ENV: "1", **env}, subprocess=True))
    assert "submitted 5002 jobs" in run.stdout, describe(run)
    sbatch_calls = argv_of("sbatch")
    arrays = [a for argv in sbatch_calls for a in argv if a.startswith("--array=")]
    expected_arrays = -(-5000 // max_array)
    assert len(sbatch_calls) == 2 + expected_arrays
    assert len(arrays) == expected_arrays
    sizes = []
    for a in arrays:
        lo, hi = map(int, re.fullmatch(r"--array=(\d+)-(\d+)", a).groups())
        assert lo == 0
        assert hi < max_array
        sizes.append(hi - lo + 1)
    assert sum(sizes) == 5000

    argv_of.clear()
    status = ok(psy("status", task, cwd=tmp_path, env=env, subprocess=True))
    assert status_counts(status.stdout) == [(0, 5000)], describe(status)
    assert "5002 queued" in status.stdout, describe(status)
    assert len(argv_of("squeue")) == 1
    assert argv_of("sbatch") == []

    killed = ok(psy("kill", task, cwd=tmp_path, env=env, subprocess=True))
    assert "killed 5002 jobs" in killed.stdout, describe(killed)
    wait_for(lambda: not our_jobs(task), "the killed jobs to leave the queue", timeout=60)
    assert len(argv_of("scancel")) <= 1 + expected_arrays  # not one per job


@pytest.mark.slow
def test_million_rows_in_100_jobs_every_row_once():
    # The sweep of benchmarks/report_slurm.py (~50 s here): it checks every row
    # is in the result exactly once with y == x*x, and that 102 jobs ran.
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "report_slurm.py"
    spec = importlib.util.spec_from_file_location("report_slurm", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    figures = report.sweep(n_rows=10**6, max_jobs=100)
    assert figures["rows"] == 10**6
    assert figures["exactly_once"]
    assert figures["wall"] < report.TIMEOUT
