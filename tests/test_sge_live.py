"""GridEngine against a real Grid Engine: arrays, dependencies, literal arguments, psy end to end.

Start a one-node cluster with ``bash scripts/local-sge.sh start``; without one
every test here is skipped with the reason. Task files live in pytest's
temporary directories (the jobs run on this machine and read them). Every
test deletes what it submitted, whatever happens.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from e2e_helpers import (
    calls,
    counting_task,
    describe,
    load_result,
    ok,
    psy,
    result_path,
    sorted_rows,
    square_rows,
    status_counts,
    write,
)
from sge_helpers import sge_marks

from psyrun.scheduler import JobState
from psyrun.scheduler.gridengine import GridEngine

pytestmark = sge_marks()

TIMEOUT = 150.0
PY = sys.executable


def wait_for(predicate, what: str, timeout: float = TIMEOUT, interval: float = 0.3):
    """Poll `predicate` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(interval)


def queue_of(prefix: str) -> list[tuple[str, str]]:
    """``(job number, state)`` of every queued entry whose name starts with `prefix`."""
    out = subprocess.run(
        ["qstat", "-xml"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    found = []
    for block in re.findall(r"<job_list.*?</job_list>", out, re.S):
        name = re.search(r"<JB_name>(.*?)</JB_name>", block).group(1)
        if name.startswith(prefix):
            number = re.search(r"<JB_job_number>(\d+)<", block).group(1)
            found.append((number, re.search(r"<state>(.*?)</state>", block).group(1)))
    return found


@pytest.fixture
def prefix():
    """A unique job-name prefix; every job of it is deleted at the end."""
    name = "g" + uuid.uuid4().hex[:8]
    yield name
    jobs = sorted({n for n, _ in queue_of(name)})
    if jobs:
        subprocess.run(["qdel", *jobs], capture_output=True, timeout=60, check=False)


def wait_gone(sched: GridEngine, ids: list[str], timeout: float = TIMEOUT) -> None:
    def gone():
        sched.refresh()
        return not sched.get_statuses(ids)

    wait_for(gone, f"jobs {ids[:5]}... to leave the queue", timeout)


WEIRD = ["a b", "q'uo\"te", "x;y", "$(id)", "`id`", "*", "~", "$HOME", "a\\b"]
SHOW_ARGV = "import sys; print(repr(sys.argv[1:]))"


def test_array_with_throttle_then_dependent_job(tmp_path, prefix):
    sched = GridEngine()
    stamp = "import sys, time; print(time.time()); time.sleep(1)"
    ids = sched.submit_array(
        4, [PY, "-c", stamp, "%a"], str(tmp_path / "arr-%a.log"), name=f"{prefix}:arr",
        scheduler_args={"max_running": 2, "timelimit": "5m"},
    )  # fmt: skip
    assert len(ids) == 4
    assert len({i.split(".")[0] for i in ids}) == 1
    after = sched.submit(
        [PY, "-c", "import time; print(time.time())"], str(tmp_path / "after.log"),
        name=f"{prefix}:after", depends_on=ids,
    )  # fmt: skip
    sched.refresh()
    wait_gone(sched, [*ids, after])
    starts = sorted(float((tmp_path / f"arr-{i}.log").read_text()) for i in range(4))
    # -tc 2: the third task starts only after one of the first two ended (1 s each).
    assert starts[2] - starts[0] >= 0.9
    assert float((tmp_path / "after.log").read_text()) >= starts[-1] + 0.9


def test_arguments_reach_the_job_unchanged_with_the_user_default_args(tmp_path, prefix):
    sched = GridEngine()
    one = sched.submit(
        [PY, "-c", SHOW_ARGV, *WEIRD], str(tmp_path / "single log.txt"), name=f"{prefix} one",
        scheduler_args=GridEngine.USER_DEFAULT_ARGS,
    )  # fmt: skip
    many = sched.submit_array(
        3, [PY, "-c", SHOW_ARGV, *WEIRD, "%a"], str(tmp_path / "$JOB_ID;%a.log"),
        name=f"{prefix}:many", scheduler_args=GridEngine.USER_DEFAULT_ARGS,
    )  # fmt: skip
    wait_gone(sched, [one, *many])
    assert (tmp_path / "single log.txt").read_text() == repr(WEIRD) + "\n"
    for i in range(3):
        assert (tmp_path / f"$JOB_ID;{i}.log").read_text() == repr([*WEIRD, str(i)]) + "\n"


def test_failed_task_blocks_its_dependents_and_kill_clears_them(tmp_path, prefix):
    sched = GridEngine()
    code = "import sys; sys.exit(int(sys.argv[1]) == 1)"
    ids = sched.submit_array(3, [PY, "-c", code, "%a"], str(tmp_path / "f-%a.log"),
                             name=f"{prefix}:f")  # fmt: skip
    dep = sched.submit(["true"], str(tmp_path / "dep.log"), name=f"{prefix}:dep", depends_on=ids)
    dep2 = sched.submit(["true"], str(tmp_path / "d2.log"), name=f"{prefix}:d2", depends_on=[dep])

    def settled():
        sched.refresh()
        held = sched.get_statuses([*ids, dep, dep2])
        return set(held) == {dep, dep2} and held

    held = wait_for(settled, "the failed task to end and its dependents to be blocked", 60)
    assert {s.status for s in held.values()} == {JobState.BLOCKED}
    assert "exited with status 1" in (tmp_path / "f-1.log").read_text()
    assert ("Eqw" in {s for _, s in queue_of(f"{prefix}_f")}), queue_of(prefix)
    sched.kill_jobs([*ids, dep, dep2])
    wait_for(lambda: not queue_of(prefix), "qdel to empty the queue", 60)
    assert not (tmp_path / "dep.log").exists()


# -- psy end to end ------------------------------------------------------------

SETTINGS = """
import sys
from psyrun.scheduler import GridEngine

scheduler = GridEngine()
scheduler_args = {{"timelimit": "5m", "memory_per_cpu": "2G"}}
max_jobs = {max_jobs}
python = sys.executable
"""


def sge_task(directory: Path, values, *, max_jobs: int, before_record: str = "", preamble=""):
    name = "g" + uuid.uuid4().hex[:8]
    side = directory / f"{name}-calls.txt"
    source = counting_task(
        side, values, settings=SETTINGS.format(max_jobs=max_jobs),
        preamble="import time\n" + preamble, before_record=before_record,
    )  # fmt: skip
    write(directory / "psy-tasks" / f"task_{name}.py", source)
    return name, side


def wait_complete(cwd: Path, task: str, n_rows: int, timeout: float = TIMEOUT):
    last = {}

    def done():
        result = ok(psy("status", task, cwd=cwd))
        last["out"] = result
        queued = "queued or running jobs" in result.stdout or "in the queue" in result.stdout
        return not queued and status_counts(result.stdout) == [(n_rows, n_rows)] and result

    try:
        return wait_for(done, f"{task} to complete", timeout, interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}; last status:\n{describe(last['out'])}") from None


def assert_every_row_once(cwd: Path, task: str, side: Path, values) -> None:
    assert sorted_rows(load_result(result_path(cwd, task), "pickle")) == square_rows(values)
    assert calls(side) == Counter(values)


def test_psy_run_through_grid_engine_every_row_once(tmp_path, prefix):
    values = list(range(40))
    task, side = sge_task(tmp_path, values, max_jobs=4)
    try:
        run = ok(psy("run", cwd=tmp_path))
        assert "submitted 6 jobs" in run.stdout, describe(run)
        wait_complete(tmp_path, task, len(values))
        assert_every_row_once(tmp_path, task, side, values)
        work = tmp_path / "psy-work" / task
        assert "finished with status 0" in (work / f"{task}:process:3.log").read_text()
    finally:
        jobs = sorted({n for n, _ in queue_of(task)})
        if jobs:
            subprocess.run(["qdel", *jobs], capture_output=True, timeout=60, check=False)


def test_qdel_one_array_task_then_status_names_it_and_continue_finishes(tmp_path):
    # 6 process jobs of 5 rows; the rows of job 2 wait for a gate, so that it
    # is running when the test deletes it.
    values = list(range(30))
    gate = tmp_path / "gate"
    gate.touch()
    task, side = sge_task(
        tmp_path, values, max_jobs=6, preamble=f"GATE = {str(gate)!r}\n",
        before_record="""
            if 10 <= x < 15:
                while os.path.exists(GATE):
                    time.sleep(0.05)
        """,
    )  # fmt: skip
    try:
        ok(psy("run", cwd=tmp_path))
        work = tmp_path / "psy-work" / task

        def job2_running():
            log = work / f"{task}:process:2.log"
            return log.exists() and calls(side).get(10) is None and queue_of(task) and log

        wait_for(job2_running, "process job 2 to start")
        # Its array task: SGE task 3 of the process array (psyrun index 2).
        arrays = {n for n, s in queue_of(f"{task}_process")}
        assert len(arrays) == 1, queue_of(task)
        (array,) = arrays
        subprocess.run(["qdel", f"{array}.3"], check=True, capture_output=True, timeout=60)

        def task3_gone():
            out = subprocess.run(["qstat"], capture_output=True, text=True, timeout=60).stdout
            rows = [line.split() for line in out.splitlines()[2:]]
            return not any(r and r[0] == str(array) and r[-1] in ("3", "3-3") for r in rows)

        # Open the gate only once Grid Engine has stopped the task: its rows must
        # not be evaluated in the moment between qdel and the kill.
        wait_for(task3_gone, "the deleted array task to leave the queue")
        gate.unlink()
        wait_for(lambda: not queue_of(task), "the other jobs to end", TIMEOUT)
        status = psy("status", "-v", task, cwd=tmp_path)
        assert f"{task}:process:2" in status.stdout + status.stderr, describe(status)
        assert status_counts(status.stdout) == [(25, 30)], describe(status)
        ok(psy("run", "-c", task, cwd=tmp_path))
        wait_complete(tmp_path, task, len(values))
        assert_every_row_once(tmp_path, task, side, values)
    finally:
        jobs = sorted({n for n, _ in queue_of(task)})
        if jobs:
            subprocess.run(["qdel", *jobs], capture_output=True, timeout=60, check=False)
