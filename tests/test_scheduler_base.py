"""Defaults of the Scheduler base class, including schedulers written for psyrun 0.8."""

from __future__ import annotations

import pytest

from psyrun.scheduler import JobState, JobStatus, Scheduler
from psyrun.scheduler.command import JobId


class OldStyleQueue(Scheduler):
    """A scheduler as psyrun 0.8 users wrote them: int ids and status letters."""

    def __init__(self, letters):
        self.letters = dict(letters)  # int id -> letter
        self.killed = []

    def submit(self, args, output_filename, name=None, depends_on=None, scheduler_args=None):
        jobid = len(self.letters) + 1
        self.letters[jobid] = "Q"
        return jobid

    def kill(self, jobid):
        self.killed.append(jobid)
        self.letters.pop(jobid, None)

    def get_status(self, jobid):
        letter = self.letters.get(jobid)
        return None if letter is None else JobStatus(jobid, letter, f"job{jobid}")

    def get_jobs(self):
        return list(self.letters)


@pytest.mark.parametrize(
    ("value", "state"),
    [
        (JobState.BLOCKED, JobState.BLOCKED),
        ("queued", JobState.QUEUED),
        ("Q", JobState.QUEUED),
        ("*Q", JobState.QUEUED),
        ("R", JobState.RUNNING),
        ("D", JobState.COMPLETED),
        ("E", JobState.FAILED),
        ("something new", JobState.RUNNING),
    ],
)
def test_coerce_understands_members_values_and_old_letters(value, state):
    assert JobState.coerce(value) is state


def test_get_statuses_finds_int_ids_and_converts_letters():
    sched = OldStyleQueue({1: "Q", 2: "R", 3: "D", 4: "*Q"})
    statuses = sched.get_statuses(["1", "2", "3", "4", "5"])
    # Finished (D) and unknown (5) jobs are not held; the others keep our string ids.
    assert statuses == {
        "1": JobStatus("1", JobState.QUEUED, "job1"),
        "2": JobStatus("2", JobState.RUNNING, "job2"),
        "4": JobStatus("4", JobState.QUEUED, "job4"),
    }


def test_kill_jobs_hands_back_ids_in_the_schedulers_own_type():
    sched = OldStyleQueue({1: "Q", 2: "R"})
    sched.kill_jobs(["1", "2"])
    assert sched.killed == [1, 2]
    assert sched.get_jobs() == []


# -- the contract defaults of a detached scheduler ------------------------------


def test_contract_defaults_of_a_detached_scheduler():
    sched = OldStyleQueue({})
    assert sched.attached is False
    assert sched.local is False
    assert sched.monitor is None
    assert sched.monitor_interval == 0.5
    jobid = sched.submit(["prog"], "a.log")
    assert sched.wait([jobid]) is None  # returns at once
    assert sched.result(jobid) is None
    sched.shutdown()
    sched.shutdown(cancel=True)
    assert sched.get_jobs() == [jobid]  # shutdown of a detached scheduler stops nothing


# -- job ids as values -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "style", "job", "task"),
    [
        ("14", "plain", "14", None),
        ("14", "slurm", "14", None),
        ("14_3", "slurm", "14", 3),
        ("4.2", "sge", "4", 2),
        ("123[4]", "lsf", "123", 4),
        ("123", "lsf", "123", None),
        ("123[4]", "pbs", "123", 4),
        ("123[4].pbs-01.example.org", "pbs", "123", 4),
        ("123[].srv", "pbs", "123", None),
        ("77.srv", "pbs", "77", None),
    ],
)
def test_job_id_parse_and_str_round_trip(text, style, job, task):
    jid = JobId.parse(text, style)
    assert (jid.job, jid.task) == (job, task)
    assert str(jid) == text
    assert JobId.parse(str(jid), style) == jid


def test_job_id_array_and_tasks():
    assert str(JobId.parse("14_3").array) == "14"
    assert str(JobId.parse("14").at(5)) == "14_5"
    assert str(JobId.parse("4.2", "sge").array) == "4"
    assert str(JobId.parse("9[3]", "lsf").array) == "9"
    pbs = JobId.parse("123[4].srv", "pbs")
    assert str(pbs.array) == "123[].srv"
    assert str(pbs.array.at(0)) == "123[0].srv"
    assert pbs.array.whole_array
    assert not pbs.whole_array


@pytest.mark.parametrize(
    ("text", "style"),
    [("14_3", "plain"), ("123_[1-4]", "slurm"), ("a.b", "sge"), ("12[x]", "lsf"), ("", "pbs")],
)
def test_job_id_rejects_other_forms(text, style):
    with pytest.raises(ValueError, match=f"not a {style} job id"):
        JobId.parse(text, style)
    with pytest.raises(ValueError, match="unknown job id style 'moab'"):
        JobId.parse("1", "moab")


def test_missing_scheduler_module_gives_a_clear_error(monkeypatch):
    import psyrun.scheduler as schedulers

    monkeypatch.setitem(schedulers._LAZY, "Nowhere", "psyrun.scheduler.nowhere")
    with pytest.raises(ImportError, match=r"Nowhere is not available.*Slurm"):
        _ = schedulers.Nowhere
    with pytest.raises(AttributeError, match="no attribute 'Bogus'"):
        _ = schedulers.Bogus
