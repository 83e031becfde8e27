"""Slurm scheduler against fake sbatch/squeue/scancel/scontrol (tests/fakebin)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from slurm_helpers import slurm_unavailable_reason

from psyrun.scheduler import JobState, JobStatus, SchedulerError, Slurm
from psyrun.scheduler.slurm import (
    escape_output_pattern,
    expand_array_ids,
    launcher_path,
    parse_max_array_size,
    parse_squeue,
)

PY = sys.executable


LAUNCHER = launcher_path()


def test_submit_exact_command_line(fake):
    sched = Slurm()
    jobid = sched.submit([PY, "-m", "psyrun.worker", "job.json"], "/w/t:split.log", name="t:split")
    assert jobid == "100"
    assert fake.calls() == [
        [
            "--parsable",
            "--job-name=t:split",
            "--output=/w/t:split.log",
            LAUNCHER,
            "single",
            "",
            "--",
            PY,
            "-m",
            "psyrun.worker",
            "job.json",
        ]
    ]


def test_guide_arguments_fixed_or_per_job_name(fake):
    sched = Slurm()
    args = {
        "timelimit": lambda name: "2:00:00" if name.endswith("merge") else "10:00",
        "memory": "4G",
        "memory_per_cpu": None,  # None leaves an option out
        "n_cpus": lambda name: 4 if "process" in name else 1,
        "n_nodes": 1,
        "cores-per-socket": 2,
        "sockets-per-node": 1,
    }
    sched.submit(["prog"], "a.log", name="t:process", scheduler_args=args)
    sched.submit(["prog"], "b.log", name="t:merge", scheduler_args=args)
    first, second = fake.calls("sbatch")
    expected = [
        "--time=10:00",
        "--mem=4G",
        "--cpus-per-task=4",
        "--nodes=1",
        "--cores-per-socket=2",
        "--sockets-per-node=1",
    ]
    assert first[2:8] == expected
    assert second[2:8] == ["--time=2:00:00", "--mem=4G", "--cpus-per-task=1", *expected[3:]]
    assert not any(a.startswith("--mem-per-cpu") for a in first)


def test_other_sbatch_options_as_dict_or_list(fake):
    sched = Slurm()
    sched.submit(
        ["prog"],
        "a.log",
        name="n",
        scheduler_args={
            "sbatch_args": {
                "partition": "gpu",
                "--account": "def-me",
                "gres": "gpu:1",
                "exclusive": True,
                "qos": None,
                "requeue": False,
                "C": "haswell",
            }
        },
    )
    sched.submit(
        ["prog"],
        "b.log",
        name="job b",
        scheduler_args={"sbatch_args": lambda name: ["-p", "short", f"--comment={name}"]},
    )
    first, second = fake.calls("sbatch")
    assert first[2:8] == [
        "--partition=gpu",
        "--account=def-me",
        "--gres=gpu:1",
        "--exclusive",
        "-C",
        "haswell",
    ]
    assert second[2:5] == ["-p", "short", "--comment=job b"]


def test_unknown_argument_names_list_the_valid_ones(fake):
    sched = Slurm()
    with pytest.raises(ValueError, match="'partition'") as info:
        sched.submit(["prog"], "a.log", scheduler_args={"partition": "gpu", "timelimit": "1h"})
    for valid in ("timelimit", "memory_per_cpu", "cores-per-socket", "sbatch_args"):
        assert valid in str(info.value)
    with pytest.raises(TypeError, match="not a string"):
        sched.submit(["prog"], "a.log", scheduler_args={"sbatch_args": "--partition=gpu"})
    assert fake.calls() == []


def test_failed_submission_quotes_sbatch_output(fake):
    fake.script(
        "sbatch",
        err="sbatch: error: Batch job submission failed: Invalid account or account/partition\n",
        rc=1,
    )
    with pytest.raises(SchedulerError) as info:
        Slurm().submit(["prog", "x y"], "a.log", name="t:split")
    message = str(info.value)
    assert "Invalid account or account/partition" in message
    assert "exit status 1" in message
    assert "'t:split'" in message
    assert "'x y'" in message  # the command line, quoted for a shell


def test_sbatch_output_without_id_is_an_error(fake):
    fake.script("sbatch", out="sbatch: warning: something odd\n")
    with pytest.raises(SchedulerError, match=r"no job id.*something odd"):
        Slurm().submit(["prog"], "a.log")


def test_parsable_id_with_cluster_name(fake):
    fake.script("sbatch", out="4242;cluster-a\n")
    assert Slurm().submit(["prog"], "a.log") == "4242"


def test_missing_sbatch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SchedulerError, match="'sbatch': not found on PATH"):
        Slurm().submit(["prog"], "a.log")


def test_arguments_and_paths_reach_sbatch_literally(fake):
    tricky = ["a b", "it's", 'say "hi"', "x; rm -rf ~", "$(id)", "`id`", "", "%j"]
    out = '/dir with space/it\'s; "log" 100%.log'
    Slurm().submit(
        [PY, *tricky],
        out,
        name="n; echo pwned",
        scheduler_args={"sbatch_args": ["--comment=a b; c"], "timelimit": "1:00 ; x"},
    )
    (argv,) = fake.calls("sbatch")
    assert argv[-len(tricky) :] == tricky
    assert "--job-name=n; echo pwned" in argv
    assert "--comment=a b; c" in argv
    assert "--time=1:00 ; x" in argv
    # Slurm expands % in --output: every % is doubled so the name means itself.
    assert f"--output={out.replace('%', '%%')}" in argv


def test_shell_strings_are_refused(fake):
    with pytest.raises(TypeError, match="argv list"):
        Slurm().submit("python -m psyrun.worker job.json", "a.log")


def test_dependencies_use_afterok(fake):
    sched = Slurm()
    a = sched.submit(["prog"], "a.log")
    b = sched.submit(["prog"], "b.log", depends_on=a)
    sched.submit(["prog"], "c.log", depends_on=[a, b, "77_3"])
    _, second, third = fake.calls("sbatch")
    assert f"--dependency=afterok:{a}" in second
    assert f"--dependency=afterok:{a}:{b}:77_3" in third
    with pytest.raises(ValueError, match="not a Slurm job id"):
        sched.submit(["prog"], "d.log", depends_on=["12; rm"])


def test_array_command_and_ids(fake):
    sched = Slurm()
    ids = sched.submit_array(
        4,
        [PY, "-m", "psyrun.worker", "job.json", "%a"],
        "/w/t:process:%a.log",
        name="t:process",
        scheduler_args={"max_running": 2, "timelimit": "5"},
    )
    assert ids == ["100_0", "100_1", "100_2", "100_3"]
    assert fake.calls("sbatch") == [
        [
            "--parsable",
            "--array=0-3%2",
            "--job-name=t:process",
            "--time=5",
            "--output=/w/t:process:%a.log",
            LAUNCHER,
            "0",
            "",
            "--",
            PY,
            "-m",
            "psyrun.worker",
            "job.json",
            "%a",
        ]
    ]
    # scontrol was asked for MaxArraySize once.
    assert fake.calls("scontrol") == [["show", "config"]]
    assert sched.submit_array(0, ["prog"], "x%a.log") == []
    assert len(fake.calls("sbatch")) == 1


def test_array_split_at_max_array_size(fake, monkeypatch):
    monkeypatch.setenv("PSYRUN_FAKE_MAX_ARRAY_SIZE", "3")
    sched = Slurm()
    ids = sched.submit_array(7, ["prog", "%a"], "/w/p:%a.log", name="p")
    assert ids == ["100_0", "100_1", "100_2", "101_0", "101_1", "101_2", "102_0"]
    calls = fake.calls("sbatch")
    assert [c[1] for c in calls] == ["--array=0-2", "--array=0-2", "--array=0-0"]
    # The first array lets Slurm write the logs; later ones pass an offset and
    # the log pattern to the launcher, which adds the offset to the index.
    launcher_args = [c[c.index(LAUNCHER) + 1 : c.index(LAUNCHER) + 3] for c in calls]
    assert launcher_args == [["0", ""], ["3", "/w/p:%a.log"], ["6", "/w/p:%a.log"]]
    assert [c for c in calls[1] if c.startswith("--output=")] == ["--output=/dev/null"]
    # MaxArraySize is read once per scheduler instance.
    sched.submit_array(2, ["prog"], "/w/q:%a.log")
    assert len(fake.calls("scontrol")) == 1


def test_max_array_size_default_when_scontrol_fails(fake):
    fake.script("scontrol", err="slurm_load_ctl_conf error\n", rc=1)
    assert Slurm().max_array_size() == 1001
    assert Slurm(max_array_size=10).max_array_size() == 10


def test_a_whole_array_dependency_is_compact(fake):
    sched = Slurm(max_array_size=3)
    ids = sched.submit_array(5, ["prog"], "p%a.log")
    sched.submit(["merge"], "m.log", depends_on=ids)
    sched.submit(["part"], "m.log", depends_on=ids[:2])
    merge, part = fake.calls("sbatch")[2:]
    assert "--dependency=afterok:100:101" in merge
    assert "--dependency=afterok:100_0:100_1" in part


def test_array_dependency_and_validation(fake):
    sched = Slurm()
    with pytest.raises(ValueError, match="at least 1"):
        sched.submit_array(2, ["prog"], "p%a.log", scheduler_args={"max_running": 0})
    with pytest.raises(TypeError, match="integer"):
        sched.submit_array(2, ["prog"], "p%a.log", scheduler_args={"max_running": "2"})
    with pytest.raises(TypeError, match="integer"):
        sched.submit_array(2.5, ["prog"], "p%a.log")
    sched.submit_array(2, ["prog"], "p%a.log", depends_on=["55"])
    (argv,) = fake.calls("sbatch")
    assert "--dependency=afterok:55" in argv


def test_array_output_pattern_escaping():
    assert escape_output_pattern("/a/100%/x:%a.log", array=True) == "/a/100%%/x:%a.log"
    assert escape_output_pattern("/a/%a%j.log", array=False) == "/a/%%a%%j.log"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123", ["123"]),
        ("123_4", ["123_4"]),
        ("123_[4-7]", ["123_4", "123_5", "123_6", "123_7"]),
        ("123_[1,3-5%2]", ["123_1", "123_3", "123_4", "123_5"]),
        ("9_[0-8:4]", ["9_0", "9_4", "9_8"]),
        ("9_[7]", ["9_7"]),
    ],
)
def test_expand_array_ids(text, expected):
    assert expand_array_ids(text) == expected


@pytest.mark.parametrize("bad", ["abc", "12_", "12_[3-1]", "1_[a-b]"])
def test_expand_array_ids_rejects_garbage(bad):
    with pytest.raises(ValueError, match="Slurm job id"):
        expand_array_ids(bad)


SQUEUE = """\
123_[4-7]|PD|Resources|t:process
123_1|R|None|t:process
124_[1,3-5%2]|PD|JobArrayTaskLimit|other
130|PD|Dependency|t:merge
131|PD|DependencyNeverSatisfied|t:merge|with|bars
132|CG|None|done soon
133|S|None|suspended
134|CD|None|finished
135_[0-2]|PD|JobHeldUser|t:process.0a1b2c3d
136|PD|PartitionConfig|t:merge
CLUSTER: foo
"""


def test_parse_squeue():
    statuses = parse_squeue(SQUEUE)
    assert statuses["123_5"] == JobStatus("123_5", JobState.QUEUED, "t:process")
    assert statuses["123_1"].status is JobState.RUNNING
    # A range with a cap on running tasks expands.
    assert [j for j in statuses if j.startswith("124_")] == ["124_1", "124_3", "124_4", "124_5"]
    assert statuses["124_3"] == JobStatus("124_3", JobState.QUEUED, "other")
    assert statuses["130"].status is JobState.QUEUED
    assert statuses["131"][:3] == ("131", JobState.BLOCKED, "t:merge|with|bars")
    assert "DependencyNeverSatisfied" in statuses["131"].reason
    # Ordinary waits carry no reason; a hold and unusual reasons are said.
    assert statuses["130"].reason is None
    assert not statuses["130"].held
    assert statuses["135_1"] == JobStatus(
        "135_1", JobState.QUEUED, "t:process.0a1b2c3d", "held (JobHeldUser)", True
    )
    assert statuses["135"].held
    assert statuses["136"].reason == "pending (PartitionConfig)"
    assert not statuses["136"].held
    assert statuses["132"].status is JobState.RUNNING
    assert statuses["133"].status is JobState.RUNNING
    assert statuses["134"].status is JobState.COMPLETED
    # The array id itself summarises its tasks (running beats queued).
    assert statuses["123"].status is JobState.RUNNING
    assert "CLUSTER: foo" not in statuses


def test_statuses_from_one_cached_squeue_call(fake):
    fake.script("squeue", out=SQUEUE)
    sched = Slurm(user="alice")
    ids = ["123_4", "123_1", "131", "134", "999", "123"]
    statuses = sched.get_statuses(ids)
    assert set(statuses) == {"123_4", "123_1", "131", "123"}  # 134 finished, 999 unknown
    assert statuses["131"].status is JobState.BLOCKED
    assert sched.get_status("130").status is JobState.QUEUED
    assert sched.get_status("999") is None
    assert sched.get_status("134") is None
    jobs = sched.get_jobs()
    assert "123" not in jobs  # tasks are listed, not the summary entry
    assert {"123_1", "123_4", "123_7", "130", "131", "132", "133"} <= set(jobs)
    assert "134" not in jobs
    assert fake.calls("squeue") == [["--noheader", "--user=alice", "--format=%i|%t|%r|%j"]]
    sched.refresh()
    sched.get_status("130")
    assert len(fake.calls("squeue")) == 2


def test_submitted_jobs_count_as_queued_without_asking_again(fake):
    sched = Slurm()
    sched.get_statuses([])  # fills the cache (empty queue)
    jobid = sched.submit(["prog"], "a.log", name="n")
    ids = sched.submit_array(2, ["prog"], "p%a.log", name="arr")
    assert sched.get_status(jobid) == JobStatus(jobid, JobState.QUEUED, "n")
    assert set(sched.get_statuses(ids)) == set(ids)
    assert len(fake.calls("squeue")) == 1


def test_squeue_failure_is_an_error(fake):
    fake.script("squeue", err="slurm_load_jobs error: Unable to contact slurm controller\n", rc=1)
    with pytest.raises(SchedulerError, match="Unable to contact slurm controller"):
        Slurm().get_statuses(["1"])


def test_kill_job_task_and_array(fake):
    fake.script("squeue", out="5_[0-3]|PD|None|arr\n6|R|None|one\n")
    sched = Slurm()
    assert sched.get_status("5_2") is not None
    sched.kill("6")
    sched.kill("5_1")
    sched.kill_jobs(["5", "7_0"])
    assert fake.calls("scancel") == [["6"], ["5_1"], ["5", "7_0"]]
    # Killed jobs are gone from the cached answer.
    assert sched.get_statuses(["5_0", "5_2", "6"]) == {}
    sched.kill_jobs([])
    assert len(fake.calls("scancel")) == 3
    with pytest.raises(ValueError, match="not a Slurm job id"):
        sched.kill("5; rm -rf /")


def test_kill_of_finished_job_is_ignored_other_errors_raise(fake):
    fake.script(
        "scancel",
        err="scancel: error: Kill job error on job id 5: Invalid job id specified\n",
        rc=1,
    )
    Slurm().kill("5")
    fake.script("scancel", err="scancel: error: Access/permission denied\n", rc=1)
    with pytest.raises(SchedulerError, match="permission denied"):
        Slurm().kill("5")


def test_parse_max_array_size():
    assert parse_max_array_size("Foo = 1\nMaxArraySize            = 5001\n") == 5001
    assert parse_max_array_size("Foo = 1\n") is None


def _run_launcher(tmp_path, env_extra, mode, output, argv):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(env_extra)
    return subprocess.run(
        ["bash", LAUNCHER, mode, output, "--", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )


def test_launcher_single_job_runs_argv_literally(tmp_path):
    tricky = ["a b", "it's", "%a", "$(id)", ""]
    proc = _run_launcher(
        tmp_path,
        {"SLURM_ARRAY_TASK_ID": "3"},
        "single",
        "",
        [PY, "-c", "import sys; print(sys.argv[1:])", *tricky],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tricky)  # no substitution outside arrays


def test_launcher_array_task_substitutes_offset_index(tmp_path):
    log = tmp_path / "log %a.txt"
    proc = _run_launcher(
        tmp_path,
        {"SLURM_ARRAY_TASK_ID": "2"},
        "1000",
        str(log),
        [PY, "-c", "import sys; print(sys.argv[1:]); sys.exit(3)", "i=%a", "%a%a", "a b"],
    )
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert (tmp_path / "log 1002.txt").read_text().strip() == str(["i=1002", "10021002", "a b"])
    proc = _run_launcher(
        tmp_path,
        {"SLURM_ARRAY_TASK_ID": "4"},
        "0",
        "",
        [PY, "-c", "import sys; print(sys.argv[1])", "%a"],
    )
    assert proc.stdout.strip() == "4"


def test_launcher_is_a_file_in_the_package():
    path = Path(LAUNCHER)
    assert path.is_file()
    assert path.read_text().startswith("#!/bin/bash")
    assert path.parent == Path(__import__("psyrun.scheduler").scheduler.__file__).parent


# -- time limits with units, and the template of psy new-task ------------------


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("1h", "1:00:00"),
        ("90m", "1:30:00"),
        ("1h30m", "1:30:00"),
        ("2d", "48:00:00"),
        ("45s", "0:00:45"),
        ("30", "30"),  # sbatch's own forms pass unchanged
        ("1-12:00:00", "1-12:00:00"),
        ("UNLIMITED", "UNLIMITED"),
    ],
)
def test_time_limits_with_units_become_sbatch_forms(given, sent):
    assert Slurm().sbatch_options(None, {"timelimit": given}) == [f"--time={sent}"]


def test_template_arguments_are_sbatch_forms():
    options = Slurm().sbatch_options("t:split", Slurm.USER_DEFAULT_ARGS)
    assert "--time=1:00:00" in options
    assert "--mem-per-cpu=1G" in options


@pytest.mark.slurm
def test_new_task_template_runs_on_the_live_cluster_as_written(tmp_path):
    """`psy new-task --scheduler Slurm` writes a task that sbatch accepts and that completes."""
    reason = slurm_unavailable_reason()  # asked here: the other tests need no cluster
    if reason is not None:
        pytest.skip(reason)
    from e2e_helpers import load_result, ok, psy

    name = "tmpl" + uuid.uuid4().hex[:8]
    taskdir = tmp_path / "psy-tasks"
    ok(psy("new-task", "--taskdir", str(taskdir), "--scheduler", "Slurm", name, cwd=tmp_path))
    source = (taskdir / f"task_{name}.py").read_text()
    assert "'timelimit': '1:00:00'" in source
    try:
        ok(psy("run", "--taskdir", str(taskdir), name, cwd=tmp_path))
        deadline = time.monotonic() + 180
        result = tmp_path / "psy-work" / name / "result.pkl"
        while not result.exists() or _queued(name):
            assert time.monotonic() < deadline, f"{name} did not complete: {_queued(name)}"
            time.sleep(1)
        status = ok(psy("status", "--taskdir", str(taskdir), name, cwd=tmp_path))
        assert "33 out of 33 rows completed" in status.stdout, status.stdout
        data = load_result(result, "pickle")
        assert sorted(zip(data["x"].round(3), data["trial"])) == sorted(
            (round(x, 3), t) for x in np.linspace(0.0, 1.0, 11) for t in range(3)
        )
    finally:
        ids = [j for j, _ in _queued(name)]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)


def _queued(task: str) -> list[tuple[str, str]]:
    out = subprocess.run(
        ["squeue", "--noheader", "--format=%i|%j"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [
        (jobid, jname)
        for jobid, jname in (line.strip().split("|", 1) for line in out.splitlines() if line)
        if jname.startswith(f"{task}:")
    ]
