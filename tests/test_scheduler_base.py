"""Defaults of the Scheduler base class, including schedulers written for psyrun 0.8."""

from __future__ import annotations

import pytest

from psyrun.scheduler import JobState, JobStatus, Scheduler


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
