"""Faults on a live batch system: psy killed between submission and reply, clean and hold.

Every case runs on the local Slurm (marker ``slurm``) and on the local Grid
Engine (marker ``sge``); each is skipped, with the reason, where that cluster
does not answer (start them with ``bash scripts/local-slurm.sh start`` and
``bash scripts/local-sge.sh start``). Both run two jobs at once here, so the
jobs of a task overlap.

The rows of a task wait at a gate file (``execute`` polls it) so that its jobs
stay queued or running as long as a case needs; execute records every call in
a side file, so that a row evaluated twice is seen. Every case checks the
invariants of the fault suite: after the last ``psy run -c`` every row is in the
result exactly once (and was evaluated once), nothing outside the task's work
directory was touched, and ``psy status`` never calls a missing result complete.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from e2e_helpers import (
    calls,
    counting_task,
    describe,
    load_result,
    ok,
    psy,
    result_path,
    sorted_rows,
    square_rows,
    status_counts,
    write,
)
from fault_helpers import assert_untouched, tree_state
from sge_helpers import sge_unavailable_reason
from slurm_helpers import one_line, slurm_unavailable_reason

#: Seconds any one wait on the cluster may take (trivial jobs start about 2 per second).
TIMEOUT = 120.0


class Cluster:
    """One live batch system as these cases use it: its task settings and its commands."""

    name = ""
    submit_program = ""
    hold_command: tuple[str, ...] = ()
    release_command: tuple[str, ...] = ()
    settings = ""

    def jobs(self, task: str) -> list[tuple[str, str]]:
        """``(id, state)`` of every job in the queue whose name belongs to `task`."""
        raise NotImplementedError

    def cancel(self, task: str) -> None:
        """Cancel every job of `task` still in the queue (test clean-up)."""
        ids = sorted({j.split("_")[0].split(".")[0] for j, _ in self.jobs(task)})
        if ids:
            subprocess.run(
                [self.cancel_program, *ids], capture_output=True, timeout=60, check=False
            )

    def array_of(self, jobid: str) -> str:
        return re.split(r"[_.]", jobid)[0]


class SlurmCluster(Cluster):
    name = "slurm"
    submit_program = "sbatch"
    cancel_program = "scancel"
    hold_command = ("scontrol", "hold")
    release_command = ("scontrol", "release")
    settings = """
import sys
from psyrun import Slurm

scheduler = Slurm()
scheduler_args = {"timelimit": "5", "memory_per_cpu": "200M"}
max_jobs = 4
python = sys.executable
"""

    def jobs(self, task):
        out = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i|%t|%j"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        found = []
        for line in out.splitlines():
            jobid, state, name = line.strip().split("|", 2)
            if name.startswith(f"{task}:"):
                found.append((jobid, state))
        return found


class GridEngineCluster(Cluster):
    name = "sge"
    submit_program = "qsub"
    cancel_program = "qdel"
    hold_command = ("qhold",)
    release_command = ("qrls",)
    settings = """
import sys
from psyrun.scheduler import GridEngine

scheduler = GridEngine()
scheduler_args = {"timelimit": "5m", "memory_per_cpu": "1G"}
max_jobs = 4
python = sys.executable
"""

    def jobs(self, task):
        out = subprocess.run(
            ["qstat", "-xml"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        found = []
        for block in re.findall(r"<job_list.*?</job_list>", out, re.S):
            name = re.search(r"<JB_name>(.*?)</JB_name>", block).group(1)
            if name.startswith(f"{task}_"):
                number = re.search(r"<JB_job_number>(\d+)<", block).group(1)
                tasks = re.search(r"<tasks>(.*?)</tasks>", block)
                jobid = f"{number}.{tasks.group(1)}" if tasks else number
                found.append((jobid, re.search(r"<state>(.*?)</state>", block).group(1)))
        return found


CLUSTERS = {
    "slurm": (SlurmCluster, slurm_unavailable_reason, pytest.mark.slurm),
    "sge": (GridEngineCluster, sge_unavailable_reason, pytest.mark.sge),
}


def _params():
    params = []
    for key, (_, unavailable, mark) in CLUSTERS.items():
        reason = unavailable()
        marks = [mark]
        if reason is not None:
            marks.append(pytest.mark.skip(reason=one_line(reason)))
        params.append(pytest.param(key, marks=marks, id=key))
    return params


@pytest.fixture(params=_params())
def cluster(request):
    return CLUSTERS[request.param][0]()


class Project:
    """A project directory with one gated counting task on `cluster`; cleans up its jobs."""

    def __init__(self, root: Path, cluster: Cluster, values) -> None:
        self.cluster = cluster
        self.values = list(values)
        self.cwd = root / "project"
        aux = root / "aux"  # outside the project: the tests' own files
        aux.mkdir()
        self.aux = aux
        self.gate = aux / "gate"
        self.gate.touch()
        self.task = ("s" if cluster.name == "slurm" else "g") + uuid.uuid4().hex[:8]
        self.side = aux / "calls.txt"
        source = counting_task(
            self.side, self.values, settings=cluster.settings,
            preamble=f"import time\nGATE = {str(self.gate)!r}\n",
            before_record="""
                while os.path.exists(GATE):
                    time.sleep(0.05)
            """,
        )  # fmt: skip
        write(self.cwd / "psy-tasks" / f"task_{self.task}.py", source)
        self.workdir = self.cwd / "psy-work"

    def psy(self, *args, env=None):
        return psy(*args, cwd=self.cwd, env=env)

    def status(self):
        return ok(self.psy("status", "-v", self.task))

    def queue(self):
        return self.cluster.jobs(self.task)

    def wait(self, predicate, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:.0f} s for {what}; queue: {self.queue()}")
            time.sleep(0.3)

    def wait_queue_empty(self):
        self.wait(lambda: not self.queue(), "the task's jobs to leave the queue")

    def wait_complete(self):
        """Poll ``psy status`` until no job is queued and the result holds every row."""
        n = len(self.values)

        def done():
            if self.queue():
                return False
            status = self.status()
            return (
                status_counts(status.stdout) == [(n, n)]
                and result_path(self.cwd, self.task).exists()
            )

        self.wait(done, "the task to complete")

    def assert_every_row_once(self):
        rows = sorted_rows(load_result(result_path(self.cwd, self.task), "pickle"))
        assert rows == square_rows(self.values)
        assert calls(self.side) == Counter(self.values)

    def outside(self):
        """The project's files outside the work directory (which holds only this task)."""
        return tree_state(self.cwd, skip=self.workdir)


@pytest.fixture
def project(tmp_path, cluster):
    made = []

    def make(values):
        p = Project(tmp_path, cluster, values)
        made.append(p)
        return p

    yield make
    for p in made:
        p.gate.unlink(missing_ok=True)
        cluster.cancel(p.task)


def killing_wrapper(project: Project, job: str) -> tuple[dict, Path]:
    """A submit command first on PATH that kills psy -9 once the job `job` is accepted.

    It runs the real command, so the batch system holds the job, then kills its
    parent (the ``psy run``) before the id is handed back: the case of a psy
    killed, or a submit command timing out, between submission and reply. Every
    call is recorded. Returns the environment for ``psy`` and the call log.
    """
    real = shutil.which(project.cluster.submit_program)
    bindir = project.aux / "bin"
    bindir.mkdir()
    log = project.aux / "submitted.log"
    flag = project.aux / "killed"
    # The job's name as the batch system gets it: `task:merge.<tag>` or `task_merge.<tag>`.
    pattern = f"{project.task}[:_]{job}[.]"
    wrapper = bindir / project.cluster.submit_program
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >>"{log}"\n'
        f'out=$("{real}" "$@")\n'
        "rc=$?\n"
        f'if [ ! -e "{flag}" ] && printf "%s\\n" "$@" | grep -Eq "{pattern}"; then\n'
        f'    touch "{flag}"\n'
        "    kill -9 $PPID\n"
        "    exit 1\n"
        "fi\n"
        'printf "%s\\n" "$out"\n'
        "exit $rc\n"
    )
    wrapper.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}, log


def submissions(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


# -- psy killed between submission and reply -------------------------------------


def test_psy_killed_after_the_last_submission_jobs_found_and_never_doubled(project, cluster):
    p = project(range(24))
    env, log = killing_wrapper(p, "merge")
    before = p.outside()
    killed = p.psy("run", p.task, env=env)
    assert killed.returncode == -9, describe(killed)
    assert submissions(log) == 3  # split, process array, merge: all accepted
    assert (p.workdir / p.task / "jobs" / "submitted.json").exists()

    # The jobs run although psy never saw an id: status shows every one of them.
    arrays = cluster.array_of
    queued_before = {arrays(j) for j, _ in p.queue()}
    status = p.status()
    queued_after = {arrays(j) for j, _ in p.queue()}
    listed = re.findall(rf"^\s+({p.task}:\S+) \(id (\S+), (\w+)", status.stdout, re.M)
    names = {name for name, _, _ in listed}
    assert f"{p.task}:merge" in names, describe(status)
    assert {f"{p.task}:process:{i}" for i in range(4)} <= names, describe(status)
    # Jobs only leave the queue meanwhile (the split may end between two looks).
    shown = {arrays(jobid) for _, jobid, _ in listed}
    assert queued_after <= shown <= queued_before, (queued_before, shown, queued_after)
    assert "did not finish" not in status.stdout, describe(status)
    counts = status_counts(status.stdout)
    assert counts, describe(status)
    assert counts[0][0] < 24, describe(status)

    # -c does not submit a second set beside them, and says why.
    second = p.psy("run", "-c", p.task, env=env)
    assert "still in the queue" in second.stderr, describe(second)
    assert submissions(log) == 3

    # They finish on their own: the merge nobody knew the id of writes the result.
    p.gate.unlink()
    p.wait_complete()
    p.assert_every_row_once()
    again = ok(p.psy("run", "-c", p.task, env=env))
    assert submissions(log) == 3, describe(again)
    p.assert_every_row_once()
    assert_untouched(before, p.outside())


def test_psy_killed_mid_submission_kill_finds_the_jobs_then_continue(project, cluster):
    p = project(range(20))
    # Killed as the process array is accepted: split and process run, no merge.
    env, log = killing_wrapper(p, "process")
    before = p.outside()
    killed = p.psy("run", p.task, env=env)
    assert killed.returncode == -9, describe(killed)
    assert submissions(log) == 2
    # Every row waits at the gate: the jobs stay queued or running until killed.
    p.wait(lambda: p.queue(), "the jobs to be queued")

    killed_jobs = ok(p.psy("kill", p.task))
    n = int(re.search(r"killed (\d+) jobs", killed_jobs.stdout).group(1))
    assert n >= 4, describe(killed_jobs)  # the process jobs (the split may have ended)
    p.wait_queue_empty()
    p.gate.unlink()

    status = p.status()
    assert status_counts(status.stdout) == [(0, 20)], describe(status)
    ok(p.psy("run", "-c", p.task))
    p.wait_complete()
    p.assert_every_row_once()
    assert_untouched(before, p.outside())


# -- psy clean with jobs queued ----------------------------------------------------


def test_clean_refuses_while_jobs_are_queued_and_nothing_writes_after_it(project, cluster):
    p = project(range(12))
    before = p.outside()
    ok(p.psy("run", p.task))
    p.wait(lambda: len(p.queue()) >= 2, "the jobs to be queued")
    taskdir = p.workdir / p.task

    refused = p.psy("clean", p.task)
    assert refused.returncode == 1, describe(refused)
    assert "still in the queue" in refused.stderr, describe(refused)
    assert f"psy kill {p.task}" in refused.stderr, describe(refused)
    assert (taskdir / "jobs" / "submitted.json").exists()
    assert p.queue()

    ok(p.psy("kill", p.task))
    p.wait_queue_empty()
    p.gate.unlink()  # a job still alive would now evaluate its rows and write them
    ok(p.psy("clean", p.task))
    assert not taskdir.exists()
    time.sleep(3)
    assert not taskdir.exists()
    assert not result_path(p.cwd, p.task).exists()

    # The task runs again from nothing, every row once.
    p.side.unlink(missing_ok=True)
    ok(p.psy("run", p.task))
    p.wait_complete()
    p.assert_every_row_once()
    assert_untouched(before, p.outside())


# -- a held job ------------------------------------------------------------------------


def test_held_merge_is_reported_with_how_to_release_it(project, cluster):
    p = project(range(8))
    before = p.outside()
    ok(p.psy("run", p.task))
    merge = p.wait(lambda: merge_id(p), "the merge to be queued")
    subprocess.run([*cluster.hold_command, merge], check=True, capture_output=True, timeout=60)
    p.gate.unlink()  # the process jobs finish; the merge stays held

    def held():
        status = p.status()
        return len(p.queue()) == 1 and "held" in status.stdout and status

    status = p.wait(held, "the process jobs to end with the merge held")
    line = next(x for x in status.stdout.splitlines() if f"{p.task}:merge" in x)
    assert "held" in line, describe(status)
    assert f"{' '.join(cluster.release_command)} {merge}" in status.stdout, describe(status)
    assert not result_path(p.cwd, p.task).exists()  # the held merge has not run

    refused = p.psy("run", "-c", p.task)
    assert "held" in refused.stderr, describe(refused)
    assert f"{' '.join(cluster.release_command)} {merge}" in refused.stderr, describe(refused)

    subprocess.run([*cluster.release_command, merge], check=True, capture_output=True, timeout=60)
    p.wait_complete()
    p.assert_every_row_once()
    assert_untouched(before, p.outside())


def merge_id(p: Project) -> str | None:
    """The id of the task's merge job while it is in the queue."""
    names = _names_in_queue(p)
    return next((j for j, name in names if re.match(rf"{p.task}[:_]merge\b", name)), None)


def _names_in_queue(p: Project) -> list[tuple[str, str]]:
    if p.cluster.name == "slurm":
        out = subprocess.run(
            ["squeue", "--noheader", "--format=%i|%j"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        return [tuple(line.strip().split("|", 1)) for line in out.splitlines() if "|" in line]
    out = subprocess.run(
        ["qstat", "-xml"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [
        (
            re.search(r"<JB_job_number>(\d+)<", b).group(1),
            re.search(r"<JB_name>(.*?)</JB_name>", b).group(1),
        )
        for b in re.findall(r"<job_list.*?</job_list>", out, re.S)
    ]


# -- a failed job Grid Engine keeps ----------------------------------------------------


@pytest.mark.parametrize("cluster", [p for p in _params() if p.id == "sge"], indirect=True)
def test_failed_job_kept_in_eqw_is_deleted_before_continue(project, cluster):
    # The job script keeps a failed job in Grid Engine's error state Eqw (so its
    # dependents wait); cleared by someone, it would run again beside `-c`'s jobs.
    p = project(range(8))
    flag = p.aux / "fail"
    flag.touch()
    source = (p.cwd / "psy-tasks" / f"task_{p.task}.py").read_text()
    source += f"""

def setup(proc_id):
    if proc_id == 1 and os.path.exists({str(flag)!r}):
        raise RuntimeError("process job 1 fails on purpose")
    return {{}}
"""
    (p.cwd / "psy-tasks" / f"task_{p.task}.py").write_text(source)
    p.gate.unlink()
    before = p.outside()
    ok(p.psy("run", p.task))
    p.wait(lambda: {s for _, s in p.queue()} == {"Eqw", "hqw"}, "process job 1 to fail")
    flag.unlink()
    cont = ok(p.psy("run", "-c", p.task))
    assert "deleted 1 failed jobs the batch system still listed" in cont.stdout, describe(cont)
    assert "Eqw" not in {s for _, s in p.queue()}
    p.wait_complete()
    p.assert_every_row_once()
    assert_untouched(before, p.outside())
