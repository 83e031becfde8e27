"""LSF against fake bsub/bjobs/bkill (tests/fakebin/lsf): no LSF cluster can run here.

The golden command lines follow IBM Spectrum LSF's bsub reference
(``-J "name[1-10]%2"``, ``-w "done(123) && done(124[3])"``, ``-W [hour:]minute``,
``-M``, ``-n``, ``-o``) and bjobs' ``-o "... delimiter='|'"`` output format.
"""

from __future__ import annotations

import json
import sys

import pytest

from psyrun.scheduler import LSF, JobState, JobStatus, SchedulerError
from psyrun.scheduler.command import batch_launcher_path
from psyrun.scheduler.lsf import parse_bjobs

PY = sys.executable


def test_submit_exact_command_line_and_script(fake_lsf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobid = LSF().submit(
        [PY, "-m", "psyrun.worker", "job.json"],
        "/w/t/split.log",
        name="t:split",
        scheduler_args={"timelimit": "1:30", "memory": "2GB", "n_cpus": 4},
    )
    assert jobid == "100"
    assert fake_lsf.calls() == [
        ["-J", "t:split", "-W", "1:30", "-M", "2GB", "-n", "4", "-o", "/w/t/"]
    ]
    (script,) = fake_lsf.stdins("bsub")
    assert script.splitlines()[2:] == [
        f"cd {tmp_path} || exit 1",
        f"exec /bin/bash {batch_launcher_path()} '' 0 0 /w/t/split.log -- "
        f"{PY} -m psyrun.worker job.json",
    ]


def test_array_is_one_based_with_throttle_and_dependencies(fake_lsf):
    sched = LSF()
    single = sched.submit(["prog"], "/w/a.log", name="a")
    ids = sched.submit_array(
        3, ["prog", "%a"], "/w/p%a.log", name="t:process", scheduler_args={"max_running": 2}
    )
    # psyrun's indices 0..2 are LSF's elements 1..3.
    assert ids == ["101[1]", "101[2]", "101[3]"]
    sched.submit(["merge"], "/w/m.log", name="m", depends_on=[single, *ids])
    sched.submit(["x"], "/w/x.log", depends_on=ids[1:])
    _, array, merge, partial = fake_lsf.calls("bsub")
    assert array[:2] == ["-J", "t_process[1-3]%2"]
    assert merge[merge.index("-w") + 1] == "done(100) && done(101)"
    assert partial[partial.index("-w") + 1] == "done(101[2]) && done(101[3])"
    script = fake_lsf.stdins("bsub")[1]
    assert f"{batch_launcher_path()} LSB_JOBINDEX 1 0 /w/p%a.log -- prog %a" in script


def test_large_arrays_are_split_with_offsets(fake_lsf):
    ids = LSF(max_array_size=4).submit_array(10, ["prog", "%a"], "/w/p%a.log", name="p")
    assert ids == [*(f"100[{i}]" for i in range(1, 5)), *(f"101[{i}]" for i in range(1, 5)),
                   "102[1]", "102[2]"]  # fmt: skip
    names = [argv[argv.index("-J") + 1] for argv in fake_lsf.calls("bsub")]
    assert names == ["p[1-4]", "p[1-4]", "p[1-2]"]
    offsets = [s.split("LSB_JOBINDEX 1 ")[1].split()[0] for s in fake_lsf.stdins("bsub")]
    assert offsets == ["0", "4", "8"]


def test_time_limits_with_units_and_defaults():
    assert LSF().resource_options({"timelimit": "2h"}) == ["-W", "2:00"]
    assert LSF().resource_options({"timelimit": "90s"}) == ["-W", "0:02"]  # whole minutes
    assert LSF().resource_options({"timelimit": "45"}) == ["-W", "45"]
    assert LSF().scheduler_options(None, LSF.USER_DEFAULT_ARGS) == [
        "-W", "1:00", "-M", "1GB", "-n", "1",
    ]  # fmt: skip


def test_unknown_arguments_and_passthrough(fake_lsf):
    sched = LSF()
    with pytest.raises(ValueError, match=r"'queue'; valid ones are: timelimit, memory, n_cpus"):
        sched.submit(["prog"], "/w/a.log", scheduler_args={"queue": "gpu"})
    sched.submit(["prog"], "/w/a.log", scheduler_args={"bsub_args": {"q": "short", "x": True}})
    (argv,) = fake_lsf.calls("bsub")
    assert argv[:3] == ["-q", "short", "-x"]
    with pytest.raises(ValueError, match="not an LSF job id to depend on"):
        sched.submit(["prog"], "/w/a.log", depends_on=["done(1)"])


def test_tricky_arguments_reach_the_job_unchanged(fake_lsf, tmp_path, monkeypatch):
    monkeypatch.setenv("PSYRUN_FAKE_RUN", "1")
    monkeypatch.chdir(tmp_path)
    tricky = ["a b", "it's", 'say "hi"', "x; echo INJECTED", "$(id)", "", "`id`", "\\n"]
    record = "import sys, json; print(json.dumps(sys.argv[1:]))"
    out = tmp_path / "dir with space" / "it's; $(x).log"
    out.parent.mkdir()
    LSF().submit([PY, "-c", record, *tricky], str(out), name="n; echo")
    assert fake_lsf.calls("bsub")[0][:2] == ["-J", "n; echo"]  # literally, no shell
    assert json.loads(out.read_text()) == tricky
    # The 1-based element runs as psyrun's 0-based index.
    LSF().submit_array(3, [PY, "-c", record, "%a", "x%a y"], str(tmp_path / "p%a.log"))
    for i in range(3):
        assert json.loads((tmp_path / f"p{i}.log").read_text()) == [str(i), f"x{i} y"]
    assert not (tmp_path / "p3.log").exists()


BJOBS = """\
100|PEND|0|Job dependency condition not satisfied|a
101|RUN|1|-|t_process[1]
101|PEND|2|Job dependency condition not satisfied|t_process[2]
101|PEND|3|Dependency condition invalid or never satisfied|t_process[3]
102|DONE|0|-|finished
103|EXIT|0|-|failed
"""


def test_parse_bjobs():
    assert parse_bjobs(BJOBS + "No unfinished job found\n") == {
        "100": JobStatus("100", JobState.QUEUED, "a"),
        "101[1]": JobStatus("101[1]", JobState.RUNNING, "t_process"),
        "101[2]": JobStatus("101[2]", JobState.QUEUED, "t_process"),
        "101[3]": JobStatus("101[3]", JobState.BLOCKED, "t_process"),
        "102": JobStatus("102", JobState.COMPLETED, "finished"),
        "103": JobStatus("103", JobState.FAILED, "failed"),
    }


def test_status_from_one_bjobs_call_and_kill(fake_lsf):
    fake_lsf.script("bjobs", out=BJOBS)
    sched = LSF(user="me")
    statuses = sched.get_statuses(["100", "101[1]", "101[3]", "102", "101"])
    assert {k: s.status for k, s in statuses.items()} == {
        "100": JobState.QUEUED,
        "101[1]": JobState.RUNNING,
        "101[3]": JobState.BLOCKED,
        "101": JobState.RUNNING,  # the whole array: its most active element
    }
    assert sorted(sched.get_jobs()) == ["100", "101[1]", "101[2]", "101[3]"]
    assert fake_lsf.calls("bjobs") == [
        ["-noheader", "-u", "me", "-o", "jobid stat jobindex pend_reason job_name delimiter='|'"]
    ]
    sched.kill_jobs(["101[1]", "101[2]", "101[3]", "100"])
    assert fake_lsf.calls("bkill") == [["101", "100"]]
    assert sched.get_jobs() == []
    fake_lsf.script("bkill", err="Job <100>: Job has already finished\n", rc=255)
    sched.kill("100")
    fake_lsf.script("bkill", err="Job <100>: User permission denied\n", rc=255)
    with pytest.raises(SchedulerError, match="permission denied"):
        sched.kill("100")


def test_failed_submission_quotes_bsub(fake_lsf):
    fake_lsf.script("bsub", err="Bad resource requirement syntax. Job not submitted.\n", rc=255)
    with pytest.raises(SchedulerError, match=r"bsub for job 'x' failed.*Bad resource"):
        LSF().submit(["prog"], "/w/a.log", name="x")
