"""GridEngine: the qsub/qstat/qdel command lines it builds and the output it reads.

These run without a cluster (the hooks are pure functions of their
arguments); tests/test_sge_live.py runs the same code against a real one.
The qstat XML below is what Son of Grid Engine 8.1.9 printed for a 5-task
array with ``-tc 2`` whose task 2 failed, and a job held on it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from psyrun.scheduler import JobState, SchedulerError
from psyrun.scheduler.command import ArrayChunk
from psyrun.scheduler.gridengine import (
    GridEngine,
    compact_task_ids,
    expand_tasks,
    format_time,
    job_name,
    launcher_path,
    memory_bytes,
    parse_max_aj_tasks,
    parse_qstat_xml,
    state_of,
)

PY = sys.executable
LAUNCHER = launcher_path()
FIXED = ["qsub", "-terse", "-cwd", "-V", "-S", "/bin/sh"]


def test_single_job_command_line():
    sched = GridEngine()
    cmd = sched.submit_command(
        [PY, "-m", "psyrun.worker", "job.json"], "/w/t.log", "t:split", ["12", "13.2"], None
    )
    assert cmd == [
        *FIXED, "-N", "t_split", "-hold_jid", "12,13", "-j", "y", "-o", "/w/t.log",
        LAUNCHER, "single", "", "--", PY, "-m", "psyrun.worker", "job.json",
    ]  # fmt: skip


def test_array_command_line_offsets_and_throttle():
    sched = GridEngine()
    argv = [PY, "-m", "psyrun.worker", "job.json", "%a"]
    cmd = sched.submit_command(
        argv, "/w/p-%a.log", "t:process", [], None, ArrayChunk(offset=3000, count=7, throttle=2)
    )
    # The job script opens the log itself: qsub's $TASK_ID counts from 1.
    assert cmd == [
        *FIXED, "-t", "1-7", "-tc", "2", "-N", "t_process", "-j", "y", "-o", "/dev/null",
        LAUNCHER, "3000", "/w/p-%a.log", "--", *argv,
    ]  # fmt: skip


def test_output_names_qsub_would_expand_go_through_the_job_script():
    sched = GridEngine()
    for output in ("/w/$JOB_ID.log", "host:/w/t.log"):
        cmd = sched.submit_command(["prog"], output, None, [], None)
        assert cmd[-6:] == ["/dev/null", LAUNCHER, "single", output, "--", "prog"]


def test_guide_arguments_fixed_or_per_job_name():
    sched = GridEngine()
    args = {
        "timelimit": lambda name: "2:00:00" if name.endswith("merge") else "10",
        "memory": "4G",
        "n_cpus": lambda name: 4 if "process" in name else 1,
        "n_nodes": 1,
        "queue": "short.q",
        "resources": {"gpu": 1},
        "qsub_args": {"P": "proj", "R": "y", "notify": True, "m": None},
    }
    process = sched.qsub_options("t:process", args)
    merge = sched.qsub_options("t:merge", args)
    assert process == [
        "-N", "t_process", "-l", "h_rt=0:10:00", "-l", "h_vmem=1G", "-pe", "smp", "4",
        "-q", "short.q", "-l", "gpu=1", "-P", "proj", "-R", "y", "-notify",
    ]  # fmt: skip
    assert merge[:6] == ["-N", "t_merge", "-l", "h_rt=2:00:00", "-l", "h_vmem=4G"]
    assert "-pe" not in merge


def test_memory_resource_and_parallel_environment_are_settings():
    sched = GridEngine(memory_resource="mem_free", parallel_environment="threads")
    opts = sched.qsub_options(None, {"memory_per_cpu": 512, "n_cpus": 2, "qsub_args": ["-b", "n"]})
    assert opts == ["-l", "mem_free=512M", "-pe", "threads", "2", "-b", "n"]


def test_unknown_or_impossible_arguments_say_what_to_do():
    sched = GridEngine()
    with pytest.raises(ValueError, match=r"'partition'.*valid ones are: timelimit.*qsub_args"):
        sched.qsub_options("t", {"partition": "gpu"})
    with pytest.raises(ValueError, match=r"n_nodes=2.*qsub_args"):
        sched.qsub_options("t", {"n_nodes": 2})
    with pytest.raises(ValueError, match="not both"):
        sched.qsub_options("t", {"memory": "1G", "memory_per_cpu": "1G"})
    with pytest.raises(ValueError, match="timelimit 'soon'"):
        sched.qsub_options("t", {"timelimit": "soon"})
    with pytest.raises(TypeError, match="qsub_args must be a list"):
        sched.qsub_options("t", {"qsub_args": "-P proj"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (90, "1:30:00"),
        ("30", "0:30:00"),
        ("10:30", "0:10:30"),
        ("1:00:00", "1:00:00"),
        ("36:00:00", "36:00:00"),
        ("2-3", "51:00:00"),
        ("1-0:30", "24:30:00"),
        ("1-0:00:05", "24:00:05"),
        ("15m", "0:15:00"),
        ("1h30m", "1:30:00"),
        ("2d", "48:00:00"),
        ("90s", "0:01:30"),
    ],
)
def test_format_time(value, expected):
    assert format_time(value) == expected


@pytest.mark.parametrize("value", ["", "1x", "0", True, "1:2:3:4", "-5"])
def test_format_time_refuses(value):
    with pytest.raises(ValueError, match="not a time limit"):
        format_time(value)


def test_memory_sizes():
    assert memory_bytes("1G") == 1 << 30
    assert memory_bytes("512m") == 512 << 20
    assert memory_bytes(100) == 100 << 20
    assert memory_bytes("1.5K") == 1536
    for bad in ("lots", "1Q", True):
        with pytest.raises(ValueError, match="is not a size"):
            memory_bytes(bad)
    # 1G over 3 slots is no whole number of K: bytes, rounded up.
    assert GridEngine().qsub_options(None, {"memory": "1G", "n_cpus": 3})[:2] == [
        "-l",
        "h_vmem=357913942",
    ]


def test_job_names_are_made_acceptable():
    assert job_name("task:process") == "task_process"
    assert job_name("a b/c@d*e?f") == "a_b_c_d_e_f"
    assert job_name("1abc") == "j1abc"
    assert job_name("ok.name-1_x+y=z,w") == "ok.name-1_x+y=z,w"


def test_submit_output():
    sched = GridEngine()
    assert sched.parse_submit_output("123\n") == "123"
    assert sched.parse_submit_output("4.1-4:1\n") == "4"
    assert sched.parse_submit_output("Your job 5 has been submitted") is None
    assert sched.parse_submit_output("") is None


def test_max_aj_tasks_from_qconf():
    text = "max_aj_instances             2000\nmax_aj_tasks                 75000\nmax_u_jobs 0\n"
    assert parse_max_aj_tasks(text) == 75000
    assert parse_max_aj_tasks("max_u_jobs 0\n") is None
    assert GridEngine(max_array_size=10).max_array_size() == 10


def test_max_array_size_falls_back_without_qconf(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no qconf
    assert GridEngine().max_array_size() == 75000


def test_task_lists_and_kill_ranges():
    assert expand_tasks("3") == [3]
    assert expand_tasks("3-5:1") == [3, 4, 5]
    assert expand_tasks("1,4,7-11:2") == [1, 4, 7, 9, 11]
    with pytest.raises(ValueError, match="bad task list"):
        expand_tasks("5-3")
    ids = ["4.1", "4.2", "4.3", "5", "4.7", "6.2", "4.8"]
    assert compact_task_ids(ids) == ["4.1-3", "4.7-8", "5", "6.2"]
    assert GridEngine().kill_command(ids) == ["qdel", "4.1-3", "4.7-8", "5", "6.2"]


@pytest.mark.parametrize(
    ("code", "state"),
    [
        ("qw", JobState.QUEUED),
        ("hqw", JobState.QUEUED),
        ("hRwq", JobState.QUEUED),
        ("r", JobState.RUNNING),
        ("t", JobState.RUNNING),
        ("Rr", JobState.RUNNING),
        ("s", JobState.RUNNING),
        ("dr", JobState.RUNNING),
        ("Eqw", JobState.FAILED),
        ("z", JobState.COMPLETED),
    ],
)
def test_state_codes(code, state):
    assert state_of(code) is state


QSTAT_XML = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>9</JB_job_number><JB_name>failarr</JB_name><state>r</state>
      <queue_name>all.q@vm</queue_name><slots>1</slots><tasks>1</tasks>
      <full_job_name>failarr</full_job_name>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>9</JB_job_number><JB_name>failarr</JB_name><state>Eqw</state>
      <tasks>2</tasks><full_job_name>failarr</full_job_name>
    </job_list>
    <job_list state="pending">
      <JB_job_number>9</JB_job_number><JB_name>failarr</JB_name><state>qw</state>
      <tasks>3-5:1</tasks><full_job_name>failarr</full_job_name>
    </job_list>
    <job_list state="pending">
      <JB_job_number>10</JB_job_number><JB_name>dep</JB_name><state>hqw</state>
      <full_job_name>dep</full_job_name>
      <predecessor_jobs_req>9</predecessor_jobs_req><predecessor_jobs>9</predecessor_jobs>
    </job_list>
    <job_list state="pending">
      <JB_job_number>11</JB_job_number><JB_name>dep2</JB_name><state>hqw</state>
      <predecessor_jobs>10</predecessor_jobs>
    </job_list>
    <job_list state="pending">
      <JB_job_number>12</JB_job_number><JB_name>userheld</JB_name><state>hqw</state>
    </job_list>
  </job_info>
</job_info>"""


def test_qstat_xml_states_tasks_and_blocked_chains():
    st = {k: v.status for k, v in parse_qstat_xml(QSTAT_XML).items()}
    assert st == {
        "9.1": JobState.RUNNING,
        "9.2": JobState.FAILED,
        "9.3": JobState.QUEUED,
        "9.4": JobState.QUEUED,
        "9.5": JobState.QUEUED,
        "9": JobState.RUNNING,
        # Held on an array with a failed task, and on that held job: never start.
        "10": JobState.BLOCKED,
        "11": JobState.BLOCKED,
        # Held by a user (no parent): it starts once released.
        "12": JobState.QUEUED,
    }
    assert parse_qstat_xml(QSTAT_XML)["9.2"].name == "failarr"
    assert parse_qstat_xml("") == {}
    with pytest.raises(SchedulerError, match="qstat -xml"):
        parse_qstat_xml("error: commlib error")


def test_failed_jobs_are_not_held_but_blocked_ones_are():
    sched = GridEngine()
    sched._statuses = parse_qstat_xml(QSTAT_XML)
    held = sched.get_statuses(["9.1", "9.2", "10", "12", "99"])
    assert {k: v.status for k, v in held.items()} == {
        "9.1": JobState.RUNNING,
        "10": JobState.BLOCKED,
        "12": JobState.QUEUED,
    }
    assert sorted(sched.get_jobs()) == ["10", "11", "12", "9.1", "9.3", "9.4", "9.5"]


def test_qdel_complaints_about_gone_jobs_are_ignored():
    sched = GridEngine()

    def proc(out, err):
        return subprocess.CompletedProcess(["qdel"], 1, out, err)

    assert sched.kill_error_ignorable(proc("", 'denied: job "99999" does not exist\n'))
    assert sched.kill_error_ignorable(
        proc('root has deleted job 4\njob "16" task "3" does not exist\n', "")
    )
    assert not sched.kill_error_ignorable(proc("", "error: commlib error: got select error\n"))
    assert not sched.kill_error_ignorable(proc("", ""))


def test_job_script_gives_zero_based_indices_and_literal_arguments(tmp_path):
    out = tmp_path / "log-%a.txt"
    weird = ["a b", "q'uo\"te", "x;y", "$(id)", "`id`", "100%a%", "tail\n"]
    env = {"SGE_TASK_ID": "3", "PATH": "/usr/bin:/bin"}
    code = "import sys; print(repr(sys.argv[1:]))"
    proc = subprocess.run(
        ["sh", LAUNCHER, "10", str(out), "--", PY, "-c", code, *weird],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = ["a b", "q'uo\"te", "x;y", "$(id)", "`id`", "10012%", "tail\n"]
    assert (tmp_path / "log-12.txt").read_text() == repr(expected) + "\n"


def test_job_script_exits_100_on_failure_so_dependents_wait(tmp_path):
    proc = subprocess.run(
        ["sh", LAUNCHER, "single", str(tmp_path / "o.log"), "--", "sh", "-c", "echo hi; exit 3"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 100
    expected = "hi\npsyrun: the job's command exited with status 3\n"
    assert (tmp_path / "o.log").read_text() == expected
    proc = subprocess.run(
        ["sh", LAUNCHER, "0", "", "--", "true"], capture_output=True, text=True, check=False,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 100
    assert "not run as a Grid Engine array task" in proc.stderr
