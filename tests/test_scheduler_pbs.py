"""PBS against fake qsub/qstat/qdel (tests/fakebin/pbs): no PBS server can run here.

The golden command lines follow the forms of the PBS Pro / OpenPBS reference
guide (``qsub -J 0-9``, ``-W depend=afterok:ID``, ``afterokarray:ID[]``,
``-l select=1:ncpus=4:mem=2gb``, ``-l walltime=HH:MM:SS``) and of Torque's
qsub manual (``-t 0-9%2``, ``-l nodes=1:ppn=4``).
"""

from __future__ import annotations

import json
import socket
import sys

import pytest

from psyrun.scheduler import PBS, JobState, JobStatus, SchedulerError
from psyrun.scheduler.command import batch_launcher_path
from psyrun.scheduler.pbs import parse_qstat, pbs_size

PY = sys.executable
FIXED = ["-V", "-S", "/bin/bash"]


def test_submit_exact_command_line_and_script(fake_pbs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobid = PBS().submit(
        [PY, "-m", "psyrun.worker", "job.json"],
        "/w/t/split.log",
        name="t:split",
        scheduler_args={"timelimit": "1:00:00", "memory": "2G", "n_cpus": 4},
    )
    assert jobid == "100.fakesrv"
    assert fake_pbs.calls() == [
        [
            *FIXED, "-N", "t_split",
            "-l", "walltime=1:00:00", "-l", "select=1:ncpus=4:mem=2gb",
            "-j", "oe", "-o", "/w/t/",
        ]
    ]  # fmt: skip
    (script,) = fake_pbs.stdins("qsub")
    assert script == (
        "#!/bin/bash\n"
        "# Written by psyrun: runs one command through psyrun's batch_launcher.sh.\n"
        f"cd {tmp_path} || exit 1\n"
        f"exec /bin/bash {batch_launcher_path()} '' 0 0 /w/t/split.log -- "
        f"{PY} -m psyrun.worker job.json\n"
    )


def test_array_dependencies_and_throttle_pro(fake_pbs):
    sched = PBS()
    single = sched.submit(["prog"], "/w/a.log", name="a")
    ids = sched.submit_array(
        3, ["prog", "%a"], "/w/p%a.log", name="p", scheduler_args={"max_running": 2}
    )
    assert ids == ["101[0].fakesrv", "101[1].fakesrv", "101[2].fakesrv"]
    sched.submit(["merge"], "/w/m.log", name="m", depends_on=[single, *ids])
    sched.submit(["x"], "/w/x.log", depends_on=ids[:2])
    _, array, merge, partial = fake_pbs.calls("qsub")
    assert array[:7] == [*FIXED, "-N", "p", "-J", "0-2%2"]
    i = merge.index("-W")
    assert merge[i : i + 2] == ["-W", "depend=afterok:100.fakesrv,afterokarray:101[].fakesrv"]
    i = partial.index("-W")
    assert partial[i + 1] == "depend=afterok:101[0].fakesrv:101[1].fakesrv"


def test_torque_flavor(fake_pbs):
    sched = PBS(flavor="torque")
    ids = sched.submit_array(
        1,
        ["prog"],
        "/w/p%a.log",
        name="p",
        scheduler_args={"n_cpus": 4, "n_nodes": 2, "memory": "1gb", "max_running": 3},
    )
    assert ids == ["100[0].fakesrv"]  # Torque takes a one-task array
    (argv,) = fake_pbs.calls("qsub")
    assert argv[:7] == [*FIXED, "-N", "p", "-t", "0-0%3"]
    assert argv[7:11] == ["-l", "nodes=2:ppn=4", "-l", "mem=1gb"]
    assert "PBS_ARRAYID" in fake_pbs.stdins("qsub")[0]
    with pytest.raises(ValueError, match="unknown PBS flavor 'slurm'"):
        PBS(flavor="slurm")


def test_one_task_array_on_pbs_pro_is_a_single_job(fake_pbs):
    ids = PBS().submit_array(1, ["prog", "%a"], "/w/p%a.log", name="p")
    assert ids == ["100.fakesrv"]
    (argv,) = fake_pbs.calls("qsub")
    assert "-J" not in argv
    assert "/w/p0.log -- prog 0" in fake_pbs.stdins("qsub")[0]


def test_unknown_arguments_and_passthrough(fake_pbs):
    sched = PBS()
    with pytest.raises(ValueError, match=r"unknown PBS scheduler argument\(s\) 'queue'.*qsub_ar"):
        sched.submit(["prog"], "/w/a.log", scheduler_args={"queue": "gpu"})
    sched.submit(
        ["prog"], "/w/a.log", scheduler_args={"qsub_args": {"q": "workq", "A": "proj", "r": "n"}}
    )
    sched.submit(["prog"], "/w/a.log", scheduler_args={"qsub_args": ["-q", "long"]})
    first, second = fake_pbs.calls("qsub")
    assert first[3:9] == ["-q", "workq", "-A", "proj", "-r", "n"]
    assert second[3:5] == ["-q", "long"]
    with pytest.raises(ValueError, match="not a PBS job id to depend on"):
        sched.submit(["prog"], "/w/a.log", depends_on=["12_3"])


def test_time_and_memory_forms():
    assert PBS().resource_options({"timelimit": "90m"}) == ["-l", "walltime=1:30:00"]
    assert pbs_size("4G") == "4gb"
    assert pbs_size("512MB") == "512mb"
    assert pbs_size("1gb") == "1gb"
    assert PBS.USER_DEFAULT_ARGS == {"timelimit": "1:00:00", "memory": "1gb", "n_cpus": 1}
    assert PBS().scheduler_options(None, PBS.USER_DEFAULT_ARGS) == [
        "-l", "walltime=1:00:00", "-l", "select=1:ncpus=1:mem=1gb",
    ]  # fmt: skip


def test_tricky_arguments_reach_the_job_unchanged(fake_pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("PSYRUN_FAKE_RUN", "1")
    monkeypatch.chdir(tmp_path)
    tricky = ["a b", "it's", 'say "hi"', "x; echo INJECTED", "$(id)", "", "`id`", "%a"]
    record = "import sys, json; print(json.dumps(sys.argv[1:]))"
    out = tmp_path / "dir with space" / "it's; $(x).log"
    out.parent.mkdir()
    sched = PBS()
    sched.submit([PY, "-c", record, *tricky], str(out), name="n; echo")
    assert fake_pbs.calls("qsub")[0][4] == "n__echo"

    assert json.loads(out.read_text()) == tricky
    # In an array every %a becomes the index, in the argv and in the log's name.
    sched.submit_array(3, [PY, "-c", record, "%a", "x%a y"], str(tmp_path / "p%a.log"))
    for i in range(3):
        assert json.loads((tmp_path / f"p{i}.log").read_text()) == [str(i), f"x{i} y"]


QSTAT = """\
Job Id: 100.fakesrv
    Job_Name = a
    Job_Owner = {user}@login1
    job_state = Q
    queue = workq

Job Id: 101[].fakesrv
    Job_Name = p
    Job_Owner = {user}@login1
    job_state = B
    array = True

Job Id: 101[0].fakesrv
    Job_Name = p
    Job_Owner = {user}@login1
    job_state = R

Job Id: 101[1].fakesrv
    Job_Name = p
    Job_Owner = {user}@login1
    job_state = X

Job Id: 102.fakesrv
    Job_Name = someone-elses
    Job_Owner = other@login1
    job_state = R

Job Id: 103.fakesrv
    Job_Name = done
    Job_Owner = {user}@login1
    job_state = C
    comment = a long comment that qstat
\twraps onto a second line
"""


def test_parse_qstat():
    statuses = parse_qstat(QSTAT.format(user="me"), "me")
    assert statuses == {
        "100.fakesrv": JobStatus("100.fakesrv", JobState.QUEUED, "a"),
        "101[].fakesrv": JobStatus("101[].fakesrv", JobState.RUNNING, "p"),
        "101[0].fakesrv": JobStatus("101[0].fakesrv", JobState.RUNNING, "p"),
        "101[1].fakesrv": JobStatus("101[1].fakesrv", JobState.COMPLETED, "p"),
        "103.fakesrv": JobStatus("103.fakesrv", JobState.COMPLETED, "done"),
    }


def test_status_from_one_qstat_call_and_kill(fake_pbs):
    user = "me"
    fake_pbs.script("qstat", out=QSTAT.format(user=user))
    sched = PBS(user=user)
    statuses = sched.get_statuses(["100.fakesrv", "101[0].fakesrv", "101[1].fakesrv", "9.x"])
    assert set(statuses) == {"100.fakesrv", "101[0].fakesrv"}
    assert sched.get_status("103.fakesrv") is None
    assert sorted(sched.get_jobs()) == ["100.fakesrv", "101[0].fakesrv"]
    assert fake_pbs.calls("qstat") == [["-f", "-t"]]
    # Every held subjob of array 101: qdel gets the array's own id.
    sched.kill_jobs(["101[0].fakesrv", "100.fakesrv"])
    assert fake_pbs.calls("qdel") == [["101[].fakesrv", "100.fakesrv"]]
    assert sched.get_jobs() == []
    with pytest.raises(ValueError, match="not a PBS job id"):
        sched.kill("1; rm")
    fake_pbs.script("qdel", err="qdel: Unknown Job Id 100.fakesrv\n", rc=1)
    sched.kill("100.fakesrv")  # gone already: not an error
    fake_pbs.script("qdel", err="qdel: Unauthorized Request 100.fakesrv\n", rc=1)
    with pytest.raises(SchedulerError, match=r"Unauthorized Request.*\ncommand: qdel 100"):
        sched.kill("100.fakesrv")
    sched.refresh()
    sched.get_jobs()
    assert len(fake_pbs.calls("qstat")) == 2


def test_failed_submission_quotes_qsub(fake_pbs):
    fake_pbs.script("qsub", err="qsub: Illegal attribute or resource value mem\n", rc=1)
    with pytest.raises(SchedulerError, match=r"qsub for job 'x' failed.*Illegal attribute"):
        PBS().submit(["prog"], "/w/a.log", name="x")
    fake_pbs.script("qsub", out="no id here\n")
    with pytest.raises(SchedulerError, match="printed no job id"):
        PBS().submit(["prog"], "/w/a.log", name="x")


def test_output_directory_with_colon_names_the_host(fake_pbs):
    PBS().submit(["prog"], "/w/t:x/a.log")
    argv = fake_pbs.calls("qsub")[0]
    target = argv[argv.index("-o") + 1]
    host, path = target.split(":", 1)
    assert host == socket.gethostname()
    assert path == "/w/t:x/"
