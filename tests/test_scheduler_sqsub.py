"""Sqsub against fake sqsub/sqjobs/sqkill (tests/fakebin): there is no real sqsub here."""

from __future__ import annotations

import sys

import pytest

from psyrun.scheduler import JobState, JobStatus, SchedulerError, Sqsub
from psyrun.scheduler.sqsub import parse_sqjobs

PY = sys.executable
ARGS = {"timelimit": "15m", "memory": "1G"}


def test_submit_exact_command_line(fake, tmp_path):
    sched = Sqsub(tmp_path / "work")
    jobid = sched.submit(
        [PY, "-m", "psyrun.worker", "job.json"],
        "/w/t:split.log",
        name="t:split",
        scheduler_args=ARGS,
    )
    assert jobid == "100"
    assert fake.calls() == [
        [
            "-r", "15m", "-n", "1", "--mpp", "1G",
            "-o", "/w/t:split.log", "-j", "t:split",
            PY, "-m", "psyrun.worker", "job.json",
        ]
    ]  # fmt: skip


def test_arguments_per_job_name_and_dependencies(fake):
    sched = Sqsub()
    args = {
        "timelimit": lambda name: "2h" if name == "merge" else "10m",
        "memory": "2G",
        "n_cpus": lambda name: 4,
        "n_nodes": 2,
    }
    a = sched.submit(["prog"], "a.log", name="proc", scheduler_args=args)
    b = sched.submit(["prog"], "b.log", name="proc", scheduler_args=args)
    sched.submit(["merge"], "m.log", name="merge", depends_on=[a, b], scheduler_args=args)
    first, _, merge = fake.calls("sqsub")
    assert first[:8] == ["-r", "10m", "-n", "4", "-N", "2", "--mpp", "2G"]
    assert merge[:2] == ["-r", "2h"]
    assert merge[-3:] == ["-w", f"{a},{b}", "merge"]


def test_required_and_unknown_arguments(fake):
    sched = Sqsub()
    with pytest.raises(ValueError, match="'memory'") as info:
        sched.submit(["prog"], "a.log", scheduler_args={"timelimit": "1h"})
    assert "timelimit" not in str(info.value).split("argument(s)")[1].split("(")[0]
    with pytest.raises(ValueError, match="'timelimit', 'memory'"):
        sched.submit(["prog"], "a.log")
    with pytest.raises(ValueError, match="valid ones are: timelimit, n_cpus, n_nodes, memory"):
        sched.submit(["prog"], "a.log", scheduler_args={**ARGS, "queue": "gpu"})
    with pytest.raises(ValueError, match="not an sqsub job id"):
        sched.submit(["prog"], "a.log", depends_on=["1_2"], scheduler_args=ARGS)
    assert fake.calls() == []


def test_arguments_and_paths_reach_sqsub_literally(fake):
    tricky = ["a b", "it's", 'say "hi"', "x; rm -rf ~", "$(id)", ""]
    out = '/dir with space/it\'s; "log".log'
    Sqsub().submit([PY, *tricky], out, name="n; echo", scheduler_args={**ARGS, "memory": "1G; x"})
    (argv,) = fake.calls("sqsub")
    assert argv[-len(tricky) :] == tricky
    assert argv[argv.index("-o") + 1] == out
    assert argv[argv.index("-j") + 1] == "n; echo"
    assert argv[argv.index("--mpp") + 1] == "1G; x"


def test_failed_submission_quotes_output(fake):
    fake.script("sqsub", err="sqsub: error: invalid runtime '15x'\n", rc=1)
    with pytest.raises(SchedulerError, match="invalid runtime '15x'"):
        Sqsub().submit(["prog"], "a.log", scheduler_args=ARGS)
    fake.script("sqsub", out="something unexpected\n")
    with pytest.raises(SchedulerError, match="something unexpected"):
        Sqsub().submit(["prog"], "a.log", scheduler_args=ARGS)


SQJOBS = """\
  jobid  queue state ncpus   nodes time command
------- ------ ----- ----- ------- ---- -------
   100  serial     Q     1       -   5s python -m psyrun.worker
   101  serial     R     1  nar10  12s python -m psyrun.worker
   102  serial     D     1  nar10  40s python
   103  serial     Z     1  nar11  1m  python
   104  serial     E     1  nar11  1m  python

1 running job, 1 queued job, 2 done jobs
"""


def test_parse_sqjobs():
    parsed = parse_sqjobs(SQJOBS)
    assert parsed == {
        "100": (JobState.QUEUED, "Q"),
        "101": (JobState.RUNNING, "R"),
        "102": (JobState.COMPLETED, "D"),
        "103": (JobState.RUNNING, "Z"),
        "104": (JobState.FAILED, "E"),
    }
    # Columns are found by the header, wherever they are.
    assert parse_sqjobs("state jobid\nR 7\n") == {"7": (JobState.RUNNING, "R")}


def test_status_from_one_sqjobs_call_with_names_kept_in_workdir(fake, tmp_path):
    work = tmp_path / "work"
    sched = Sqsub(work)
    for name in ("a", "b", "c"):
        sched.submit(["prog"], f"{name}.log", name=name, scheduler_args=ARGS)
    fake.script("sqjobs", out=SQJOBS)
    # A new instance (a later psy command) still knows the names.
    later = Sqsub(work)
    statuses = later.get_statuses(["100", "101", "102", "999"])
    assert statuses == {
        "100": JobStatus("100", JobState.QUEUED, "a"),
        "101": JobStatus("101", JobState.RUNNING, "b"),
    }
    assert later.get_status("102") is None
    assert later.get_status("103") == JobStatus("103", JobState.RUNNING, None)
    assert sorted(later.get_jobs()) == ["100", "101", "103"]
    assert fake.calls("sqjobs") == [[]]
    later.refresh()
    later.get_jobs()
    assert len(fake.calls("sqjobs")) == 2


def test_kill(fake):
    fake.script("sqjobs", out=SQJOBS)
    sched = Sqsub()
    assert sched.get_status("100") is not None
    sched.kill("100")
    sched.kill_jobs(["101", "103"])
    assert fake.calls("sqkill") == [["100"], ["101", "103"]]
    assert sched.get_statuses(["100", "101", "103"]) == {}
    with pytest.raises(ValueError, match="not an sqsub job id"):
        sched.kill("1; rm")
    fake.script("sqkill", err="sqkill: permission denied\n", rc=2)
    with pytest.raises(SchedulerError, match="permission denied"):
        sched.kill("100")


def test_submit_array_falls_back_to_one_job_per_index(fake):
    sched = Sqsub()
    assert not sched.supports_arrays
    ids = sched.submit_array(3, ["prog", "%a"], "p:%a.log", name="p", scheduler_args=ARGS)
    assert ids == ["100", "101", "102"]
    calls = fake.calls("sqsub")
    assert [c[-1] for c in calls] == ["0", "1", "2"]
    assert [c[c.index("-o") + 1] for c in calls] == ["p:0.log", "p:1.log", "p:2.log"]
