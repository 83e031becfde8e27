"""The Slurm scheduler against a real Slurm (start one with `bash scripts/local-slurm.sh start`).

Skipped, with the reason, when ``sbatch`` is missing or the controller does not answer.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from slurm_helpers import slurm_marks

from psyrun.scheduler import JobState, SchedulerError, Slurm
from psyrun.scheduler import slurm as slurm_module

PY = sys.executable
TIMEOUT = 90.0  # seconds any one wait may take; the local node runs ~2 trivial jobs/s


pytestmark = slurm_marks()


@pytest.fixture
def sched():
    """A Slurm scheduler; every job it submitted is cancelled at the end."""
    s = Slurm()
    submitted: list[str] = []
    real_sbatch = s._sbatch

    def recording_sbatch(cmd, name):
        jobid = real_sbatch(cmd, name)
        submitted.append(jobid)
        return jobid

    s._sbatch = recording_sbatch
    yield s
    s.kill_jobs(submitted)


@pytest.fixture
def shared_tmp(tmp_path):
    # Jobs run as root on this node, so any local directory works.
    return tmp_path


def wait_until_gone(sched: Slurm, ids: list[str], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        sched.refresh()
        left = sched.get_statuses(ids)
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs still in the queue after {timeout} s: {left}")
        time.sleep(0.3)


def wait_for_state(sched: Slurm, jobid: str, state: JobState, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        sched.refresh()
        status = sched.get_status(jobid)
        if status is not None and status.status is state:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {jobid} did not reach {state} within {timeout} s: {status}")
        time.sleep(0.3)


def test_submit_runs_with_the_submitting_interpreter(sched, shared_tmp):
    log = shared_tmp / "one job; it's.log"
    tricky = ["a b", "it's", 'say "hi"', "x; rm -rf ~", "$(id)", "%a", ""]
    jobid = sched.submit(
        [PY, "-c", "import sys; print(sys.executable); print(sys.argv[1:])", *tricky],
        str(log),
        name="psyrun test: one",
        scheduler_args={"timelimit": "5", "n_cpus": 1},
    )
    assert jobid.isdigit()
    wait_until_gone(sched, [jobid])
    lines = log.read_text().splitlines()
    assert lines == [PY, str(tricky)]


def test_array_with_per_index_logs_and_cap(sched, shared_tmp):
    ids = sched.submit_array(
        4,
        [PY, "-c", "import sys; print('task', sys.argv[1])", "%a"],
        str(shared_tmp / "arr:%a.log"),
        name="psyrun test: array",
        scheduler_args={"max_running": 2},
    )
    base = ids[0].split("_")[0]
    assert ids == [f"{base}_{i}" for i in range(4)]
    wait_until_gone(sched, ids)
    for i in range(4):
        assert (shared_tmp / f"arr:{i}.log").read_text().strip() == f"task {i}"


def test_array_split_at_max_array_size_keeps_indices(sched, shared_tmp):
    assert Slurm().max_array_size() >= 2  # read from the live scontrol
    sched._max_array_size = 3  # a small limit so that the split is cheap to exercise
    ids = sched.submit_array(
        7,
        [PY, "-c", "import sys; print(sys.argv[1])", "%a"],
        str(shared_tmp / "split %a.log"),
        name="psyrun test: split",
    )
    assert len({i.split("_")[0] for i in ids}) == 3
    wait_until_gone(sched, ids)
    for i in range(7):
        assert (shared_tmp / f"split {i}.log").read_text().strip() == str(i)


def test_afterok_waits_for_the_parent(sched, shared_tmp):
    marker = shared_tmp / "parent-done"
    parent = sched.submit(
        [PY, "-c", f"import time, pathlib; time.sleep(2); pathlib.Path({str(marker)!r}).touch()"],
        str(shared_tmp / "parent.log"),
        name="psyrun test: parent",
    )
    child_log = shared_tmp / "child.log"
    child = sched.submit(
        [PY, "-c", f"import os; print(os.path.exists({str(marker)!r}))"],
        str(child_log),
        name="psyrun test: child",
        depends_on=[parent],
    )
    sched.refresh()
    assert sched.get_status(child).status is JobState.QUEUED
    wait_until_gone(sched, [parent, child])
    assert child_log.read_text().strip() == "True"


def test_dependent_of_a_failed_parent_is_reported_not_pending_silently(sched, shared_tmp):
    parent = sched.submit(
        [PY, "-c", "raise SystemExit(1)"], str(shared_tmp / "bad.log"), name="psyrun test: bad"
    )
    ids = sched.submit_array(
        2, [PY, "-c", "print('ran')"], str(shared_tmp / "dep%a.log"), depends_on=parent
    )
    deadline = time.monotonic() + TIMEOUT
    while True:
        sched.refresh()
        statuses = sched.get_statuses(ids)
        states = {s.status for s in statuses.values()}
        # Either the cluster cancels invalid dependents (kill_invalid_depend) or
        # they stay pending and must be reported as BLOCKED, never as QUEUED.
        if not statuses or states == {JobState.BLOCKED}:
            break
        assert time.monotonic() < deadline, f"dependents neither blocked nor gone: {statuses}"
        time.sleep(0.3)
    assert not (shared_tmp / "dep0.log").exists()
    if statuses:
        assert set(sched.get_jobs()) >= set(ids)
        sched.kill_jobs(ids)
        wait_until_gone(sched, ids)


def test_kill_job_array_task_and_whole_array(sched, shared_tmp):
    sleeper = [PY, "-c", "import time; time.sleep(300)"]
    single = sched.submit(sleeper, str(shared_tmp / "s.log"), name="psyrun test: sleep")
    arr = sched.submit_array(3, sleeper, str(shared_tmp / "a%a.log"), name="psyrun test: sleeps")
    sched.refresh()
    assert set(sched.get_statuses([single, *arr])) == {single, *arr}
    sched.kill(arr[1])
    sched.refresh()
    statuses = sched.get_statuses(arr)
    assert arr[1] not in statuses or statuses[arr[1]].status is JobState.RUNNING  # completing
    sched.kill(arr[0].split("_")[0])  # the whole array
    sched.kill(single)
    wait_until_gone(sched, [single, *arr], timeout=60)


def test_status_of_many_jobs_is_one_squeue_call(sched, shared_tmp, monkeypatch):
    calls = []
    real = slurm_module.run_command

    def counting(argv, **kw):
        calls.append(argv[0])
        return real(argv, **kw)

    monkeypatch.setattr(slurm_module, "run_command", counting)
    ids = sched.submit_array(
        20, [PY, "-c", "import time; time.sleep(30)"], str(shared_tmp / "m%a.log"), name="many"
    )
    single = [
        sched.submit([PY, "-c", "pass"], str(shared_tmp / f"x{i}.log"), depends_on=ids)
        for i in range(3)
    ]
    sched.refresh()
    statuses = sched.get_statuses([*ids, *single, "1"])
    assert set(ids) <= set(statuses)
    assert all(statuses[j].status in (JobState.QUEUED, JobState.RUNNING) for j in ids)
    assert {statuses[j].status for j in single} == {JobState.QUEUED}
    for j in ids:
        sched.get_status(j)
    assert calls.count("squeue") == 1
    sched.kill_jobs([ids[0].split("_")[0], *single])
    assert calls.count("scancel") == 1
    wait_until_gone(sched, [*ids, *single], timeout=60)


def test_failed_submission_quotes_sbatch(sched, shared_tmp):
    with pytest.raises(SchedulerError, match="Memory specification can not be satisfied"):
        sched.submit(
            [PY, "-c", "pass"],
            str(shared_tmp / "huge.log"),
            name="psyrun test: huge",
            scheduler_args={"memory": "100000000G"},
        )


def test_launcher_path_exists_for_sbatch():
    assert Path(slurm_module.launcher_path()).is_file()
