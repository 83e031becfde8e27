"""Automatic rounds (``max_attempts``) and the causes of failed jobs (psyrun.run.attempts).

The parsers read recorded outputs of ``sacct``, ``scontrol show job -o`` and
``qacct -j``: the time-limit records were taken from the local Slurm and
Grid Engine this project tests on (see ``test_rounds_live.py`` for the live
runs); out of memory, node failure and preemption cannot be caused there, so
their records are written as the batch systems document them. The local
sweeps run through ``psy`` in a subprocess, on ImmediateRun, LocalPool
(``-j 2``) and an embedded Dask cluster on 127.0.0.1, with a job that kills
itself in round 1 (a crash as on a dying node): the later round evaluates
only the rows still missing, and every row ends up in the result once.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
from e2e_helpers import calls, counting_task, load_result, ok, psy, result_path, write

from psyrun.run.attempts import (
    Cause,
    JobCause,
    cause_from_marker,
    decide,
    escalated_args,
    next_factors,
    parse_qacct,
    parse_sacct,
    parse_scontrol_jobs,
)
from psyrun.tasks import Config, TaskDef

# -- recorded outputs ---------------------------------------------------------------

# sacct -j 1234,1235,1236,1237,1238,1239,1240 -n -P -o JobID,State,ExitCode,MaxRSS
SACCT = """\
1234|TIMEOUT|0:0|
1234.batch|CANCELLED|0:15|10240K
1234.extern|COMPLETED|0:0|0
1235_3|FAILED|0:125|
1235_3.batch|OUT_OF_MEMORY|0:125|2097152K
1235_4|COMPLETED|0:0|
1236|NODE_FAIL|1:0|
1237|PREEMPTED|0:15|
1238|FAILED|1:0|
1238.batch|FAILED|1:0|30000K
1239|COMPLETED|0:0|
1240|CANCELLED by 0|0:15|
"""

# scontrol show job -o 1689 on the local Slurm after a 1-minute time limit (abridged:
# the real line has ~60 fields).
SCONTROL_TIMEOUT = (
    "JobId=1689 ArrayJobId=1689 ArrayTaskId=0 JobName=slow:process.fc72e3a8 UserId=root(0) "
    "JobState=TIMEOUT Reason=TimeLimit Dependency=(null) Requeue=1 Restarts=0 "
    "ExitCode=143:0 RunTime=00:01:16 TimeLimit=00:01:00\n"
    "JobId=1690 JobName=slow:merge.fc72e3a8 JobState=RUNNING Reason=None ExitCode=0:0\n"
)

# qacct -j 274 on the local Grid Engine: sleep 60 with -l h_rt=0:0:5.
QACCT_TIMEOUT = """\
==============================================================
qname        all.q
hostname     vm
jobname      hrexp
jobnumber    274
taskid       undefined
failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit
exit_status  137                  (Killed)
ru_wallclock 6s
maxvmem      3.414MB
category     -l h_rt=5
"""

# Two tasks of array job 301 (documented forms): task 1 killed near its h_vmem,
# task 2 lost with its host (failed 25: rescheduling), task 3 completed.
QACCT_ARRAY = """\
==============================================================
jobnumber    301
taskid       1
failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit
exit_status  137                  (Killed)
maxvmem      1.950GB
category     -l h_rt=3600,h_vmem=2G
==============================================================
jobnumber    301
taskid       2
failed       25  : rescheduling
exit_status  0
maxvmem      120.000MB
category     -l h_rt=3600,h_vmem=2G
==============================================================
jobnumber    301
taskid       3
failed       0
exit_status  0
maxvmem      130.000MB
category     -l h_rt=3600,h_vmem=2G
"""


def test_sacct_causes_per_job_with_the_most_specific_step():
    causes = {k: v[0] for k, v in parse_sacct(SACCT).items()}
    assert causes == {
        "1234": Cause.TIMELIMIT,
        "1235_3": Cause.MEMORY,  # the step's OUT_OF_MEMORY beats the job's FAILED
        "1235_4": None,
        "1236": Cause.NODE,
        "1237": Cause.NODE,
        "1238": Cause.OTHER,
        "1239": None,
        "1240": Cause.CANCELLED,
    }
    assert "MaxRSS 2097152K" in parse_sacct(SACCT)["1235_3"][1]


def test_scontrol_record_of_a_time_limit_names_the_array_task():
    records = parse_scontrol_jobs(SCONTROL_TIMEOUT)
    assert records["1689_0"][0] is Cause.TIMELIMIT
    assert "Reason=TimeLimit" in records["1689_0"][1]
    assert records["1690"][0] is None


def test_qacct_time_limit_memory_node_and_success():
    assert parse_qacct(QACCT_TIMEOUT)["274"][0] is Cause.TIMELIMIT
    causes = {k: v[0] for k, v in parse_qacct(QACCT_ARRAY).items()}
    assert causes == {"301.1": Cause.MEMORY, "301.2": Cause.NODE, "301.3": None}


def test_qacct_exit_status_of_the_job_itself():
    text = "jobnumber 9\ntaskid undefined\nfailed 100 : assumedly after job\nexit_status 100\n"
    assert parse_qacct(text)["9"][0] is Cause.OTHER


@pytest.mark.parametrize(
    ("marker", "cause"),
    [
        (None, Cause.OTHER),
        ("MemoryError: ", Cause.MEMORY),
        ("3 row(s) raised an exception (first: MemoryError: ); ...", Cause.MEMORY),
        ("2 row(s) raised an exception (first: ValueError: bad); ...", Cause.ERROR),
        ("stopped by a signal (SIGTERM)", Cause.OTHER),
        ("stopped by psy kill before it started", Cause.CANCELLED),
    ],
)
def test_cause_from_the_jobs_own_marker(marker, cause):
    assert cause_from_marker(marker) is cause


# -- decisions and escalation ------------------------------------------------------


def task_like(**settings):
    config = Config(**settings)
    return SimpleNamespace(
        name="t",
        max_attempts=config.max_attempts,
        escalate=config.escalate,
        escalate_cap=config.escalate_cap,
        retry_errors=config.retry_errors,
    )


def jobs(*causes):
    return [JobCause(f"t:process:{i}", str(i), c) for i, c in enumerate(causes)]


def test_time_limit_doubles_time_memory_doubles_memory_node_keeps_both():
    task = task_like(max_attempts=5)
    assert next_factors(task, {}, jobs(Cause.TIMELIMIT)) == {"timelimit": 2.0}
    assert next_factors(task, {"timelimit": 2.0}, jobs(Cause.MEMORY, Cause.TIMELIMIT)) == {
        "timelimit": 4.0,
        "memory": 2.0,
    }
    assert next_factors(task, {"timelimit": 2.0}, jobs(Cause.NODE)) == {"timelimit": 2.0}


def test_escalation_stops_at_the_cap():
    task = task_like(max_attempts=9, escalate={"timelimit": 3}, escalate_cap=5)
    factors = {}
    for _ in range(4):
        factors = next_factors(task, factors, jobs(Cause.TIMELIMIT))
    assert factors == {"timelimit": 5.0}


def test_escalated_args_scale_every_form_and_keep_callables():
    args = {"timelimit": "1:30:00", "memory": "1G", "n_cpus": 2, "sbatch_args": {"a": 1}}
    out = escalated_args(args, {"timelimit": 2.0, "memory": 1.5})
    assert out == {
        "timelimit": "3:00:00",
        "memory": "1536M",
        "n_cpus": 2,
        "sbatch_args": {"a": 1},
    }
    assert escalated_args({"timelimit": "90"}, {"timelimit": 2})["timelimit"] == "3:00:00"
    assert escalated_args({"timelimit": "15s"}, {"timelimit": 2})["timelimit"] == "0:00:30"
    per_job = escalated_args(
        {"memory_per_cpu": lambda name: "2G" if "merge" in name else None}, {"memory": 2}
    )["memory_per_cpu"]
    assert per_job("t:merge") == "4G"
    assert per_job("t:process") is None
    # Nothing to scale: the arguments are the task's own.
    assert escalated_args(args, {}) == args


def test_decisions_bound_and_errors():
    task = task_like(max_attempts=3)
    assert decide(task, 1, 0, [], {}).go is False
    go = decide(task, 1, 5, jobs(Cause.TIMELIMIT), {})
    assert go.go
    assert go.factors == {"timelimit": 2.0}
    last = decide(task, 3, 5, jobs(Cause.TIMELIMIT), {})
    assert not last.go
    assert "after 3 rounds" in last.why
    errors = decide(task, 1, 5, jobs(Cause.ERROR, Cause.ERROR), {})
    assert not errors.go
    assert "retry_errors" in errors.why
    assert decide(task_like(max_attempts=3, retry_errors=True), 1, 5, jobs(Cause.ERROR), {}).go
    # An error beside a time limit: the round goes on (the time limit calls for it).
    assert decide(task, 1, 5, jobs(Cause.ERROR, Cause.TIMELIMIT), {}).go


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("max_attempts", 0, "max_attempts must be a positive integer"),
        ("max_attempts", True, "max_attempts must be a positive integer"),
        ("escalate", {"time": 2}, "unknown key 'time'"),
        ("escalate", {"memory": 0.5}, "escalate['memory'] must be a number >= 1"),
        ("escalate", 2, "escalate must be a dict"),
        ("escalate_cap", 0, "escalate_cap must be a number >= 1"),
        ("retry_errors", "yes", "retry_errors must be True or False"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, setting, value, message):
    path = write(
        tmp_path / "task_bad.py",
        f"from psyrun import Param\npspace = Param(x=[1])\n{setting} = {value!r}\n"
        "def execute(x):\n    return {'y': x}\n",
    )
    with pytest.raises((ValueError, TypeError), match=message.replace("[", r"\[")):
        TaskDef.load(str(path))


# -- sweeps through psy -----------------------------------------------------------------

# Round 1 crashes the job holding x == 3 (SIGKILL: as on a node that died);
# the job's earlier rows are lost with it unless flushed.
CRASH_ONCE = """
if x == 3 and os.environ.get("PSYRUN_ATTEMPT") == "1":
    os.kill(os.getpid(), signal.SIGKILL)
"""


# The same crash, once in all (a file remembers it), for runs without rounds.
CRASH_FIRST_TIME = """
if x == 3 and not os.path.exists(CALLS + '.crashed'):
    open(CALLS + '.crashed', 'w').close()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def crash_task(tmp_path, settings: str, values=range(8), crash=CRASH_ONCE) -> None:
    write(
        tmp_path / "psy-tasks" / "task_sweep.py",
        counting_task(
            tmp_path / "calls.txt",
            values,
            settings=f"max_jobs = 4\n{settings}",
            before_record=crash,
        ),
    )


def rounds_state(tmp_path) -> dict:
    return json.loads((tmp_path / "psy-work" / "sweep" / "jobs" / "rounds.json").read_text())


def assert_every_row_once(tmp_path, values=range(8)) -> None:
    data = load_result(result_path(tmp_path, "sweep"), "pickle")
    assert sorted(int(x) for x in data["x"]) == list(values)
    assert sorted(zip(data["x"].tolist(), data["y"].tolist())) == [(x, x * x) for x in values]
    # Row 3 ran once to its end (the crash happens before it records).
    assert calls(tmp_path / "calls.txt")[3] == 1


@pytest.mark.parametrize("jobs_option", [[], ["-j", "2"]], ids=["ImmediateRun", "LocalPool"])
def test_local_sweep_finishes_in_a_second_round(tmp_path, jobs_option):
    crash_task(tmp_path, "max_attempts = 3")
    result = ok(psy("run", *jobs_option, "sweep", cwd=tmp_path))
    assert "round 2 of at most 3 evaluates them" in result.output
    assert_every_row_once(tmp_path)
    state = rounds_state(tmp_path)
    assert state["attempt"] == 2
    assert state["history"][0]["causes"] == {"other": 1}
    status = ok(psy("status", "sweep", cwd=tmp_path))
    assert "8 out of 8 rows completed" in status.output
    assert "round 2 of at most 3" in status.output


def test_partial_jobs_continue_in_rounds_with_more_time(tmp_path):
    # Jobs that stop before their time limit (psyrun.run.walltime) end partial; the
    # next round evaluates the rest with twice the time, each round on record once.
    write(
        tmp_path / "psy-tasks" / "task_sweep.py",
        counting_task(
            tmp_path / "calls.txt",
            range(24),
            settings=(
                "import time\nmax_jobs = 1\nmax_attempts = 4\nwalltime_margin = 0.3\n"
                "scheduler_args = {'timelimit': '0:00:02'}\nrecord = ['attempt']"
            ),
            before_record="time.sleep(0.15)",
        ),
    )
    result = ok(psy("run", "sweep", cwd=tmp_path))
    assert "1 job hit the time limit" in result.output
    assert_every_row_once(tmp_path, range(24))
    assert set(calls(tmp_path / "calls.txt").values()) == {1}
    state = rounds_state(tmp_path)
    assert state["history"][0]["causes"] == {"timelimit": 1}
    assert [entry["attempt"] for entry in state["history"]] == list(range(1, state["attempt"] + 1))
    assert state["factors"]["timelimit"] >= 2
    attempts = load_result(result_path(tmp_path, "sweep"), "pickle")["psy_attempt"]
    assert set(attempts.tolist()) == set(range(1, state["attempt"] + 1))


def test_one_attempt_is_todays_behaviour(tmp_path):
    crash_task(tmp_path, "", crash=CRASH_FIRST_TIME)
    result = psy("run", "sweep", cwd=tmp_path)
    assert result.exit_code != 0
    assert "round 2" not in result.output
    assert not (tmp_path / "psy-work" / "sweep" / "jobs" / "rounds.json").exists()
    ok(psy("run", "-c", "sweep", cwd=tmp_path))
    assert_every_row_once(tmp_path)


def test_rounds_are_bounded(tmp_path):
    # Crashes in every round: two rounds, then the rows stay missing.
    write(
        tmp_path / "psy-tasks" / "task_sweep.py",
        counting_task(
            tmp_path / "calls.txt",
            range(4),
            settings="max_jobs = 2\nmax_attempts = 2",
            before_record="if x == 3:\n    os.kill(os.getpid(), signal.SIGKILL)",
        ),
    )
    result = psy("run", "sweep", cwd=tmp_path)
    assert result.exit_code != 0
    assert "still missing after 2 rounds (max_attempts = 2)" in result.output
    assert rounds_state(tmp_path)["attempt"] == 2
    # The rows of the job that did not crash ran once; the result holds them.
    assert calls(tmp_path / "calls.txt")[0] == calls(tmp_path / "calls.txt")[1] == 1
    assert sorted(load_result(result_path(tmp_path, "sweep"), "pickle")["x"].tolist()) == [0, 1]


def test_exceptions_end_the_rounds_unless_retried(tmp_path):
    raise_once = (
        "if x == 1 and not os.path.exists(CALLS + '.raised'):\n"
        "    open(CALLS + '.raised', 'w').close()\n"
        "    raise ValueError('flaky')"
    )
    for retry, rounds in ((False, 1), (True, 2)):
        project = tmp_path / str(retry)
        write(
            project / "psy-tasks" / "task_sweep.py",
            counting_task(
                project / "calls.txt",
                range(4),
                settings=f"max_jobs = 2\nmax_attempts = 3\nretry_errors = {retry}",
                before_record=raise_once,
            ),
        )
        result = psy("run", "sweep", cwd=project)
        assert rounds_state(project)["attempt"] == rounds, result.output
        if retry:
            ok(result)
            assert calls(project / "calls.txt") == {0: 1, 1: 1, 2: 1, 3: 1}
        else:
            assert result.exit_code != 0
            assert "taken as deterministic" in result.output


@pytest.mark.slow
def test_dask_sweep_finishes_in_a_second_round(tmp_path):
    pytest.importorskip("distributed")
    crash_task(
        tmp_path,
        "max_attempts = 3\nfrom psyrun.scheduler.dask import Dask\n"
        "scheduler = Dask(n_workers=2, host='127.0.0.1')",
    )
    result = ok(psy("run", "sweep", cwd=tmp_path, timeout=120))
    assert "round 2 of at most 3" in result.output
    assert_every_row_once(tmp_path)
    assert os.path.exists(tmp_path / "psy-work" / "sweep" / "jobs" / "rounds.json")


def test_a_full_run_does_not_keep_rows_of_the_old_code_for_rows_it_lost(tmp_path):
    # `psy run` (not -c) after a code change: round 1 crashes one job; round 2
    # must compute its rows with the new code, not keep the old result's rows.
    task = tmp_path / "psy-tasks" / "task_sweep.py"
    source = """
import os
import signal
from psyrun import Param
pspace = Param(x=list(range(8)))
max_jobs = 4
max_attempts = 3


def execute(x):
    {crash}
    return {{'y': x * x + {offset}}}
"""
    write(task, source.format(crash="pass", offset=0))
    ok(psy("run", "sweep", cwd=tmp_path))
    crash = 'if x == 3 and os.environ["PSYRUN_ATTEMPT"] == "1": os.kill(os.getpid(), 9)'
    write(task, source.format(crash=crash, offset=1))
    result = ok(psy("run", "sweep", cwd=tmp_path))
    assert "round 2 of at most 3" in result.output
    data = load_result(result_path(tmp_path, "sweep"), "pickle")
    rows = sorted(zip(data["x"].tolist(), data["y"].tolist()))
    assert rows == [(x, x * x + 1) for x in range(8)]
    status = ok(psy("status", "sweep", cwd=tmp_path))
    assert "8 out of 8 rows completed" in status.output
    assert "older version" not in status.output


def test_pbs_without_after_any_is_warned_about(tmp_path, fake_pbs):
    write(
        tmp_path / "psy-tasks" / "task_sweep.py",
        counting_task(
            tmp_path / "calls.txt",
            range(2),
            settings="from psyrun.scheduler.pbs import PBS\nscheduler = PBS()\nmax_attempts = 2",
        ),
    )
    result = ok(psy("run", "sweep", cwd=tmp_path))
    assert "PBS cannot start a job after jobs that failed" in result.output
    # The merge waits for success as before: no afterany for PBS.
    assert not any("afterany" in " ".join(argv) for argv in fake_pbs.calls("qsub"))


@pytest.mark.parametrize(("attempts", "wait"), [(1, "done("), (2, "ended(")])
def test_lsf_merge_waits_for_the_end_of_the_process_jobs_in_rounds(
    tmp_path, fake_lsf, attempts, wait
):
    write(
        tmp_path / "psy-tasks" / "task_sweep.py",
        counting_task(
            tmp_path / "calls.txt",
            range(2),
            settings=(
                "from psyrun.scheduler.lsf import LSF\n"
                f"scheduler = LSF()\nmax_attempts = {attempts}"
            ),
        ),
    )
    ok(psy("run", "sweep", cwd=tmp_path))
    merge = [argv for argv in fake_lsf.calls("bsub") if "sweep:merge" in argv]
    assert len(merge) == 1
    assert wait in " ".join(merge[0])
