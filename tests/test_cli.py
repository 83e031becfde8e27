"""The psy command: every subcommand through CliRunner, plus a few real `psy` processes."""

from __future__ import annotations

import os
import pickle
import textwrap
from pathlib import Path

import pytest
from psy_helpers import psy, write_task

from psyrun.store import get_store
from psyrun.tasks import load_tasks

SQUARE = """
from psyrun import Param
pspace = Param(x=range(20))
max_jobs = 4
def execute(x):
    return {'y': x * x}
"""

COMMANDS = ["run", "clean", "kill", "list", "merge", "new-task", "status", "test"]


def bump_mtime(path: Path, seconds: int = 5) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def load_result(project, name="square"):
    with open(project / "psy-work" / name / "result.pkl", "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    result = psy(*([command] if command else []), "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output
    if command is None:
        for c in COMMANDS:
            assert c in result.output
    elif command not in ("merge",):
        assert "--taskdir" in result.output


def test_run_status_and_up_to_date(project):
    write_task(project, "square", SQUARE)
    result = psy("run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines == [". square:split"] + [f". square:process:{i}" for i in range(4)] + [
        ". square:merge"
    ]
    data = load_result(project)
    assert sorted(zip(data["x"], data["y"])) == [(x, x * x) for x in range(20)]
    assert (project / "psy-work" / "square" / "square:process:3.log").exists()

    status = psy("status")
    assert status.exit_code == 0
    assert "square: 20 out of 20 rows completed" in status.output

    again = psy("run")
    assert again.output.splitlines() == [line.replace(". ", "- ", 1) for line in lines]

    bump_mtime(project / "psy-tasks" / "task_square.py")
    rerun = psy("run", "square")
    assert rerun.output.splitlines()[0] == ". square:split"


def test_file_dep_change_reruns(project):
    dep = project / "data.txt"
    dep.write_text("1")
    write_task(project, "square", SQUARE + "file_dep = ['data.txt']\n")
    assert psy("run").exit_code == 0
    assert psy("run").output.startswith("- square:split")
    bump_mtime(dep)
    assert psy("run").output.startswith(". square:split")


def test_psy_conf_defaults(project):
    (project / "psy-tasks" / "psy-conf.py").write_text("max_jobs = 2\n")
    write_task(project, "square", SQUARE.replace("max_jobs = 4", ""))
    out = psy("run").output
    assert ". square:process:1" in out
    assert "square:process:2" not in out


def test_overwrite_dirty_false_refuses(project):
    path = write_task(project, "square", SQUARE + "overwrite_dirty = False\n")
    assert psy("run").exit_code == 0
    bump_mtime(path)
    result = psy("run")
    # Issue 14.10: a refusal is a failure, naming the changed file and the ways out.
    assert result.exit_code == 1, result.output
    assert "overwrite_dirty is False" in result.output
    assert str(path) in result.output
    assert "psy run -c square" in result.output
    assert "psy clean square" in result.output
    assert "overwrite_dirty = True" in result.output
    assert ". square:split" not in result.output
    # Continuing is still allowed (it keeps the results).
    assert psy("run", "-c").exit_code == 0


def test_status_verbose_lists_missing_and_failed(project):
    write_task(
        project,
        "bad",
        """
        from psyrun import Param
        pspace = Param(x=range(6))
        max_jobs = 2
        def execute(x):
            if x == 4:
                raise ZeroDivisionError('no four')
            return {'y': x}
        """,
    )
    result = psy("run")
    assert result.exit_code == 1
    assert "bad:process:1" in result.output
    assert "log:" in result.output
    status = psy("status", "bad")
    assert "bad: 5 out of 6 rows completed" in status.output
    assert "1 job(s) failed" in status.output
    verbose = psy("status", "-v", "bad")
    assert "missing assignments (1):" in verbose.output
    assert "{'x': 4}" in verbose.output
    assert "failed jobs (1):" in verbose.output
    log = str(project / "psy-work" / "bad" / "bad:process:1.log")
    assert log in verbose.output
    with open(log) as f:
        assert "ZeroDivisionError: no four" in f.read()


def test_user_errors_are_one_line(project, tmp_path):
    write_task(project, "square", SQUARE)
    for args in (["run", "nope"], ["status", "nope"], ["run", "--taskdir", "missing-dir"]):
        result = psy(*args)
        assert result.exit_code != 0
        assert "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1, result.output
    assert "square" in psy("run", "nope").output  # names the tasks that exist
    assert psy("run", "--bogus").exit_code == 2


def test_list_and_broken_task(project):
    write_task(project, "square", SQUARE)
    write_task(project, "broken", "raise RuntimeError('oops')\n")
    result = psy("list")
    assert result.exit_code == 0, result.output  # listing works; the broken one is marked
    assert "square" in result.output.split()
    assert "broken (broken: " in result.output
    assert "task_broken.py" in result.output
    assert "oops" in result.output
    assert psy("run", "square").exit_code == 0
    assert psy("run", "broken").exit_code != 0


def test_clean_removes_generated_files(project):
    write_task(project, "square", SQUARE + "resultfile = 'out/square.pkl'\n")
    assert psy("run").exit_code == 0
    assert (project / "out" / "square.pkl").exists()
    assert psy("clean").exit_code == 2  # names needed
    result = psy("clean", "square")
    assert result.exit_code == 0
    assert not (project / "psy-work" / "square").exists()
    assert not (project / "out" / "square.pkl").exists()


def test_merge_command(project):
    from psyrun.store import get_store

    store = get_store(".pkl")
    (project / "parts").mkdir()
    for i in (0, 1, 10, 2):
        store.save(str(project / "parts" / f"{i}.pkl"), {"a": [i], "b": [i * 2.0]})
    (project / "parts" / "notes.txt").write_text("ignored")
    result = psy("merge", "parts", "merged.pkl")
    assert result.exit_code == 0, result.output
    with open(project / "merged.pkl", "rb") as f:
        assert pickle.load(f) == {"a": [0, 1, 2, 10], "b": [0.0, 2.0, 4.0, 20.0]}
    bad = psy("merge", "parts", "merged.unknownext")
    assert bad.exit_code != 0
    assert "Traceback" not in bad.output


def test_merge_converts_psys_own_pickle_parts(project):
    """Part files in a task's out/ folder are pickle files whatever the task's store."""
    import numpy as np

    from psyrun.store import get_store

    (project / "out").mkdir()
    for i in (0, 1):
        get_store(".pkl").save(str(project / "out" / f"{i}.pkl"), {"a": [i, i + 2]})
    result = psy("merge", "out", "merged.h5")
    assert result.exit_code == 0, result.output
    merged = get_store(".h5").load(str(project / "merged.h5"))
    np.testing.assert_array_equal(np.sort(merged["a"]), [0, 1, 2, 3])


@pytest.mark.parametrize(
    "scheduler",
    [None, "ImmediateRun", "LocalPool", "slurm", "GridEngine", "pbs", "LSF", "Sqsub", "dask"],
)
def test_new_task_template_loads_and_runs(project, scheduler):
    args = ["new-task", "fresh"] + (["--scheduler", scheduler] if scheduler else [])
    result = psy(*args)
    assert result.exit_code == 0, result.output
    text = (project / "psy-tasks" / "task_fresh.py").read_text()
    if scheduler and scheduler.lower() == "slurm":
        from psyrun.scheduler import Slurm

        assert "scheduler = Slurm()" in text
        for key in Slurm.USER_DEFAULT_ARGS:
            assert repr(key) in text
    tasks = load_tasks("psy-tasks")
    assert "fresh" in tasks
    test = psy("test", "fresh")
    assert test.exit_code == 0, test.output
    assert "fresh: ok" in test.output
    assert psy("new-task", "fresh").exit_code != 0  # exists already
    unknown = psy("new-task", "--scheduler", "condor", "other")
    assert unknown.exit_code == 2
    assert "GridEngine" in unknown.output  # the choices are listed


def test_test_command_reports_failure(project):
    write_task(project, "square", SQUARE)
    write_task(
        project,
        "fails",
        "from psyrun import Param\npspace = Param(x=[1])\ndef execute(x):\n    return 1 / 0\n",
    )
    result = psy("test")
    assert result.exit_code == 1
    assert "square: ok, {'x': 0} -> {'y': 0}" in result.output
    assert "fails: FAILED" in result.output
    assert "ZeroDivisionError" in result.output
    assert not (project / "psy-work").exists()  # nothing is submitted


QUEUEING = """
import json, os
from psyrun import Param
from psyrun.scheduler import JobState, JobStatus, Scheduler

STATE = os.path.join(os.path.dirname(__file__), 'queue.json')

class Queue(Scheduler):
    '''Holds every job in a file-backed queue: nothing ever runs.'''
    def _load(self):
        if not os.path.exists(STATE):
            return {}
        with open(STATE) as f:
            return json.load(f)
    def _save(self, jobs):
        with open(STATE, 'w') as f:
            json.dump(jobs, f)
    def submit(self, args, output_filename, name=None, depends_on=None, scheduler_args=None):
        jobs = self._load()
        jobid = str(len(jobs) + 1)
        jobs[jobid] = [name, 'queued']
        self._save(jobs)
        return jobid
    def kill(self, jobid):
        jobs = self._load()
        jobs.pop(jobid, None)
        self._save(jobs)
    def get_status(self, jobid):
        jobs = self._load()
        if jobid not in jobs:
            return None
        name, state = jobs[jobid]
        return JobStatus(jobid, JobState(state), name)
    def get_jobs(self):
        return list(self._load())

scheduler = Queue()
pspace = Param(x=range(4))
max_jobs = 2
def execute(x):
    return {'y': x}
"""


def test_user_scheduler_queued_jobs_not_resubmitted_and_kill(project):
    write_task(project, "queued", QUEUEING)
    first = psy("run")
    assert first.exit_code == 0
    assert "submitted 4 jobs" in first.output
    second = psy("run")
    assert "still in the queue (4 queued)" in second.output
    assert ". queued:split" not in second.output
    status = psy("status", "-v")
    assert "queued: 0 out of 4 rows completed" in status.output
    assert "queued:process:1 (id 3, queued)" in status.output
    killed = psy("kill", "queued")
    assert "killed 4 jobs" in killed.output
    assert ". queued:split" in psy("run").output


def test_blocked_jobs_are_replaced_by_a_new_run(project):
    import json

    write_task(project, "queued", QUEUEING)
    assert psy("run").exit_code == 0
    state = project / "psy-tasks" / "queue.json"
    jobs = json.loads(state.read_text())
    jobs["4"][1] = "blocked"  # the merge waits for a job that failed
    state.write_text(json.dumps(jobs))
    refused = psy("run")
    assert "still in the queue (3 queued)" in refused.output
    for jobid in ("1", "2", "3"):
        jobs.pop(jobid)
    state.write_text(json.dumps(jobs))
    result = psy("run", "-c")
    assert "cancelled 1 blocked jobs" in result.output
    assert ". queued:split" in result.output
    # The blocked job was cancelled and a complete new set of jobs submitted.
    assert [state for _, state in json.loads(state.read_text()).values()] == ["queued"] * 4


def test_continue_flag(project):
    path = write_task(project, "square", SQUARE)
    assert psy("run").exit_code == 0
    path.write_text(textwrap.dedent(SQUARE).replace("range(20)", "range(25)"))
    result = psy("run", "--continue")
    assert result.exit_code == 0
    data = load_result(project)
    assert sorted(data["x"]) == list(range(25))
    assert psy("run", "-c").output.startswith("- square:split")


# -- real processes ------------------------------------------------------------


def test_psy_process_runs_example_and_reports(tmp_path):
    example = Path(__file__).resolve().parents[1] / "examples" / "psy-tasks"
    run = psy("run", "--taskdir", str(example), cwd=tmp_path, subprocess=True)
    assert run.returncode == 0, run.stderr
    assert ". square:merge" in run.stdout
    status = psy("status", "--taskdir", str(example), cwd=tmp_path, subprocess=True)
    assert "square: 1000 out of 1000 rows completed" in status.stdout
    assert (tmp_path / "psy-work" / "square" / "result.pkl").exists()


def test_psy_process_user_error_has_no_traceback(tmp_path):
    result = psy("status", "--taskdir", "nowhere", cwd=tmp_path, subprocess=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "nowhere" in result.stderr


def test_psy_version(tmp_path):
    result = psy("--version", cwd=tmp_path, subprocess=True)
    assert result.returncode == 0
    assert "psy" in result.stdout


# -- psy merge into existing files, psy test, unusable workdir ---------------------------


def _save(path, data):
    get_store(str(path)).save(str(path), data)


@pytest.mark.parametrize("ext", [".pkl", ".npz"])
def test_merge_into_existing_file_keeps_its_rows(project, ext):
    parts = project / "parts"
    parts.mkdir()
    _save(parts / f"0{ext}", {"a": [1, 2], "y": [1.0, 4.0]})
    _save(parts / f"1{ext}", {"a": [3], "y": [9.0]})
    merged = project / f"merged{ext}"
    _save(merged, {"a": [7], "y": [49.0]})
    result = psy("merge", "parts", str(merged))
    assert result.exit_code == 0, result.output
    assert "after the 1 rows it held" in result.output
    data = get_store(ext).load(str(merged))
    assert sorted(data["a"].tolist()) == [1, 2, 3, 7]
    # --overwrite replaces the file instead.
    assert psy("merge", "--overwrite", "parts", str(merged)).exit_code == 0
    assert sorted(get_store(ext).load(str(merged))["a"].tolist()) == [1, 2, 3]


def test_merge_into_a_file_of_the_directory_does_not_lose_it(project):
    """`psy merge parts parts/0.pkl` used to overwrite 0.pkl with the other files only."""
    parts = project / "parts"
    parts.mkdir()
    _save(parts / "0.pkl", {"a": [1, 2]})
    _save(parts / "1.pkl", {"a": [3]})
    assert psy("merge", "parts", str(parts / "0.pkl")).exit_code == 0
    assert sorted(get_store(".pkl").load(str(parts / "0.pkl"))["a"].tolist()) == [1, 2, 3]


def test_merge_into_unreadable_existing_file_is_refused(project):
    parts = project / "parts"
    parts.mkdir()
    _save(parts / "0.pkl", {"a": [1]})
    (project / "merged.pkl").write_bytes(b"not a pickle store file")
    result = psy("merge", "parts", "merged.pkl")
    assert result.exit_code == 1
    assert "cannot be read" in result.output
    assert "--overwrite" in result.output
    assert (project / "merged.pkl").read_bytes() == b"not a pickle store file"


def test_psy_test_names_a_setup_that_returns_no_dict(project):
    write_task(
        project,
        "setup",
        """
        from psyrun import Param
        pspace = Param(a=[1])
        def setup(proc_id):
            return [proc_id]
        def execute(a):
            return {'y': a}
        """,
    )
    result = psy("test", "setup")
    assert result.exit_code == 1
    assert "setup(0) returned list; it must return a dict" in result.output


def test_workdir_below_a_file_gives_one_line_errors(project):
    (project / "afile").write_text("")
    write_task(project, "w", SQUARE + "workdir = 'afile/sub'\n")
    run = psy("run", "w")
    assert run.exit_code == 1
    assert "Not a directory" in run.output
    assert "workdir" in run.output
    for command in ("status", "clean", "kill"):
        result = psy(command, "w")
        assert "Traceback" not in result.output, (command, result.output)
        assert result.exit_code == 0, (command, result.output)


# -- psy new-task with a scheduler class, psy test as a job, sys.exit in execute --------


def test_new_task_accepts_any_scheduler_class_and_fills_in_its_arguments(project):
    (project / "psy-tasks" / "mysched.py").write_text(
        textwrap.dedent(
            """
            from psyrun.scheduler import ImmediateRun

            class Mine(ImmediateRun):
                USER_DEFAULT_ARGS = {"queue": "short", "gpus": 2}
            """
        )
    )
    for spec, cls, args in [
        ("psyrun.scheduler.Sqsub", "Sqsub", ("timelimit", "memory", "n_cpus")),
        ("mysched.Mine", "Mine", ("queue", "gpus")),
    ]:
        name = f"with_{cls.lower()}"
        result = psy("new-task", "-s", spec, name)
        assert result.exit_code == 0, result.output
        text = (project / "psy-tasks" / f"task_{name}.py").read_text()
        assert f"scheduler = {cls}()" in text
        for key in args:
            assert repr(key) in text
        task = load_tasks("psy-tasks", names=[name])[name]
        assert type(task.scheduler).__name__ == cls
        assert set(args) <= set(task.scheduler_args)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nosuchmodule.Sched", "cannot import module 'nosuchmodule'"),
        ("psyrun.scheduler.NoSuch", "has no class 'NoSuch'"),
        ("os.path", "is not a scheduler"),
        ("condor", "unknown scheduler 'condor'"),
    ],
)
def test_new_task_with_a_scheduler_that_does_not_exist_is_a_usage_error(project, spec, needle):
    result = psy("new-task", "-s", spec, "x")
    assert result.exit_code == 2
    assert needle in result.output
    assert not (project / "psy-tasks" / "task_x.py").exists()


def test_new_task_applies_the_task_name_rule_of_loading(project):
    assert psy("new-task", "--", "..").exit_code == 2
    assert psy("new-task", "--", "-x").exit_code == 2
    result = psy("new-task", "my task")
    assert result.exit_code == 0, result.output
    assert "psy run 'my task'" in (project / "psy-tasks" / "task_my task.py").read_text()
    test = psy("test", "my task")
    assert test.exit_code == 0, test.output


def test_psy_test_runs_the_row_as_a_job_would(project, tmp_path):
    (project / "psy-tasks" / "input.txt").write_text("beside the task file\n")
    write_task(
        project,
        "vec",
        """
        import numpy as np
        from psyrun import Param
        pspace = Param(x=[1.0, 2.0])
        vectorized = True
        def execute(x):
            # A job passes arrays, and runs in the task file's directory.
            assert isinstance(x, np.ndarray), type(x)
            with open("input.txt") as f:
                text = f.read().strip()
            return {"y": 2 * x, "text": np.array([text] * len(x))}
        """,
    )
    result = psy("test", "vec")
    assert result.exit_code == 0, result.output
    assert "vec: ok, {'x': 1.0} -> {'y': 2.0, 'text': 'beside the task file'}" in result.output


def test_psy_test_checks_the_row_against_the_store(project):
    pytest.importorskip("tables")
    write_task(
        project,
        "ctx",
        """
        from psyrun import Param
        from psyrun.store.h5 import H5Store
        store = H5Store()
        pspace = Param(x=[1])
        def setup(proc_id):
            return {"context": object()}
        def execute(x, context):
            return {"y": x}
        """,
    )
    result = psy("test", "ctx")
    assert result.exit_code == 1
    assert "ctx: FAILED" in result.output
    assert "H5Store cannot hold the value of 'context'" in result.output
    assert "Traceback" not in result.output


def test_sys_exit_in_execute_is_reported_as_such(project):
    write_task(
        project,
        "quits",
        """
        import sys
        from psyrun import Param
        pspace = Param(x=[1, 2, 3, 4])
        max_jobs = 2
        def execute(x):
            if x == 3:
                sys.exit(0)
            return {"y": x}
        """,
    )
    run = psy("run", "quits")
    assert run.exit_code == 1
    assert "quits:process:1: the task's code called sys.exit(0)" in run.output
    assert "signal" not in run.output
    # The rows before it are merged; status says what is missing.
    assert "quits: 2 out of 4 rows completed" in psy("status", "quits").output


def test_a_job_stopped_by_sigterm_is_still_reported_as_a_signal(project):
    import signal
    import subprocess
    import time

    from psy_helpers import psy_command

    pidfile = project / "job.pid"
    write_task(
        project,
        "slow",
        f"""
        import os, time
        from psyrun import Param
        pspace = Param(x=[1, 2])
        max_jobs = 1
        def execute(x):
            with open({str(pidfile)!r}, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(30)
            return {{"y": x}}
        """,
    )
    run = subprocess.Popen(
        [*psy_command(), "run", "slow"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline
        assert run.poll() is None
        time.sleep(0.05)
    # The job itself, not psy: its SystemExit is the signal's, not the task's sys.exit.
    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 1, out
    assert "slow:process:0: stopped by a signal (SIGTERM)" in out
    assert "sys.exit" not in out
