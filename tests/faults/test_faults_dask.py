"""Faults of a live cluster: a rerun of a running job, a dead Dask worker, a dead Dask scheduler.

Real components only: a ``dask scheduler`` with ``dask worker`` processes on
127.0.0.1 started here (or the embedded ``Dask()``), and the local Slurm of
the test suite (``bash scripts/local-slurm.sh start``; those cases are skipped
without it). Every case ends with the invariants of the fault suite: every row
once in the result, nothing outside the task's work directory touched, and
``psy status`` never more than the result holds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from e2e_helpers import (
    calls,
    counting_task,
    finish,
    load_result,
    psy,
    result_path,
    rows_reported,
    sorted_rows,
    square_rows,
    start_psy,
    status_counts,
    wait_until,
    write,
)
from fault_helpers import assert_untouched, tree_state
from psy_helpers import describe, ok

import psyrun

pytest.importorskip("distributed", reason="needs dask.distributed (pip install 'psyrun[dask]')")

ROOT = str(Path(psyrun.__file__).resolve().parent.parent)
# The jobs (subprocesses of the Dask workers) must import the psyrun under test.
ENV = {"PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
TASK = "sweep"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskCluster:
    """A ``dask scheduler`` and `n_workers` ``dask worker`` processes on 127.0.0.1."""

    def __init__(self, logs: Path, n_workers: int = 2) -> None:
        self.logs = logs
        self.n_workers = n_workers
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._n = 0

    def _start(self, *args: str) -> subprocess.Popen:
        env = dict(os.environ, **ENV)
        env.pop("PYTHONWARNINGS", None)
        self._n += 1
        with open(self.logs / f"dask{self._n}.log", "wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "dask", *args, "--no-dashboard"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def start_scheduler(self) -> None:
        port = self.address.rsplit(":", 1)[1]
        self.scheduler = self._start("scheduler", "--host", "127.0.0.1", "--port", port)

    def start_workers(self, wait: bool = True) -> None:
        for i in range(self.n_workers):
            self.workers.append(
                self._start(
                    "worker",
                    self.address,
                    "--nworkers",
                    "1",
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--name",
                    f"w{self._n}-{i}",
                )
            )
        if wait:
            self.wait_for_workers()

    def client(self):
        import distributed

        return distributed.Client(self.address, timeout=60, set_as_default=False)

    def wait_for_workers(self) -> None:
        with self.client() as client:
            client.wait_for_workers(self.n_workers, timeout=90)

    def kill_scheduler(self) -> None:
        os.kill(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait()

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def cluster(tmp_path):
    """A fresh scheduler with two workers; everything killed at the end."""
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    made = DaskCluster(logs)
    made.start_scheduler()
    made.start_workers()
    yield made
    made.stop()


def project(tmp_path: Path, scheduler: str, backend: str, n: int, settings: str, body: str = ""):
    """Write the counting task ``sweep`` into `tmp_path`/project; return (project, side file)."""
    where = tmp_path / "project"
    side = tmp_path / "calls.txt"  # outside the project: the project stays as it was
    write(
        where / "psy-tasks" / f"task_{TASK}.py",
        counting_task(
            side,
            range(n),
            backend=backend,
            preamble=f"import time\nfrom psyrun.scheduler import Dask\nscheduler = {scheduler}\n",
            settings=settings,
            before_record=body,
        ),
    )
    return where, side


def assert_exact(where: Path, n: int) -> None:
    """Every row once in the result, and ``psy status`` says so (and no more)."""
    data = load_result(result_path(where, TASK), "pickle")
    assert sorted_rows(data) == square_rows(range(n))
    status = ok(psy("status", TASK, cwd=where, env=ENV))
    assert status_counts(status.stdout) == [(n, n)], describe(status)


def process_log(where: Path, i: int) -> Path:
    return where / "psy-work" / TASK / f"{TASK}:process:{i}.log"


def read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def worker_of(log: Path) -> str:
    """The Dask worker address in the first line a Dask task writes to the job's log."""
    return log.read_text().split("\n", 1)[0].split(" on worker ")[1].split()[0]


# -- the embedded cluster --------------------------------------------------------------


def test_clean_run_on_the_embedded_cluster_prints_nothing_alarming(tmp_path):
    where, _ = project(tmp_path, "Dask(n_workers=2)", "distribute", 60, "max_jobs = 3\n")
    run = ok(psy("run", cwd=where, env=ENV, timeout=300))
    # distributed warns per worker when a cluster closes under tasks a client still
    # wants, and when another cluster holds port 8787.
    for alarming in ("lost", "traceback", "warning", "error"):
        assert alarming not in run.stderr.lower(), describe(run)
    assert_exact(where, 60)


# -- a dead worker, a dead scheduler, no workers ---------------------------------------


def test_killed_dask_worker_during_loadbalancing_run_loses_no_row(tmp_path, cluster):
    # Dask runs the killed worker's job again (allowed-failures, default 3); the
    # rerun takes over the rows its dead predecessor had claimed.
    n = 400
    where, side = project(
        tmp_path,
        f"Dask({cluster.address!r})",
        "loadbalancing",
        n,
        "max_jobs = 2\npool_size = 2\n",
        "time.sleep(0.02)",
    )
    before = tree_state(where, skip=where / "psy-work")
    run = start_psy("run", cwd=where, env=ENV)
    work = where / "psy-work" / TASK
    wait_until(lambda: rows_reported(work) >= 60, "rows to be evaluated", 120, interval=0.02)
    address = worker_of(process_log(where, 0))
    with cluster.client() as client:
        pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)
    out = finish(run, 300)
    assert run.returncode == 0, out
    assert "started again" in process_log(where, 0).read_text()
    assert_exact(where, n)
    assert set(calls(side)) == set(range(n))
    assert_untouched(before, tree_state(where, skip=where / "psy-work"))


@pytest.mark.parametrize("backend", ["distribute", "loadbalancing"])
def test_dead_dask_scheduler_jobs_are_named_and_not_run_beside(tmp_path, cluster, backend):
    n = 200
    gate = tmp_path / "gate"
    gate.touch()
    # Rows from 40 on are slow while the gate exists; the jobs ignore SIGTERM, so
    # they live on after their workers lost the scheduler (until the grace ends).
    where, side = project(
        tmp_path,
        f"Dask({cluster.address!r}, grace=120)",
        backend,
        n,
        "max_jobs = 2\n" + ("pool_size = 2\n" if backend == "loadbalancing" else ""),
        f"""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(0.01)
        if x >= 40 and os.path.exists({str(gate)!r}):
            time.sleep(0.5)
        """,
    )
    before = tree_state(where, skip=where / "psy-work")
    work = where / "psy-work" / TASK
    run = start_psy("run", cwd=where, env=ENV)
    wait_until(lambda: rows_reported(work) >= 30, "rows to be evaluated", 120)
    wait_until(
        lambda: all(" on worker " in read_or_empty(process_log(where, i)) for i in range(2)),
        "both process jobs to start",
        120,
    )
    time.sleep(0.5)
    started = time.monotonic()
    cluster.kill_scheduler()
    out = finish(run, 60)
    assert run.returncode == 1, out
    assert time.monotonic() - started < 30, out
    assert "may still be running" in out, out
    for i in range(2):
        assert f"{TASK}:process:{i} on worker {worker_of(process_log(where, i))}" in out, out
    assert "Traceback" not in out, out

    # A new scheduler and new workers at the same address: `-c` would run beside
    # the old jobs. It refuses while their leases live, and status lists them.
    logs = sorted(work.glob("*.log"))
    split_log = (work / f"{TASK}:split.log").read_text()
    cluster.start_scheduler()
    cluster.start_workers()
    status = ok(psy("status", TASK, cwd=where, env=ENV))
    # A job may already have stopped (its worker lost the scheduler); the live ones are listed.
    lingering = status.stderr.count("is still running, though no scheduler lists it")
    assert 1 <= lingering <= 2, describe(status)
    assert status_counts(status.stdout)[0][0] < n
    again = psy("run", "-c", TASK, cwd=where, env=ENV)
    assert again.returncode == 1, describe(again)
    assert "may still be running" in again.stderr, describe(again)
    # Nothing was submitted: a run starts with a new split (its log) and merge.
    assert sorted(work.glob("*.log")) == logs
    assert (work / f"{TASK}:split.log").read_text() == split_log

    # The user stops them (the pids are in the message), then continues.
    pids = [int(p) for p in re.findall(r"\(pid (\d+) on ", again.stderr)]
    assert 1 <= len(pids) <= lingering, again.stderr
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    gate.unlink()
    ok(psy("run", "-c", TASK, cwd=where, env=ENV, timeout=300))
    assert_exact(where, n)
    assert_untouched(before, tree_state(where, skip=where / "psy-work"))
    assert set(calls(side)) == set(range(n))


def test_scheduler_without_workers_is_reported(tmp_path):
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    lonely = DaskCluster(logs, n_workers=1)
    lonely.start_scheduler()
    try:
        where, _ = project(tmp_path, f"Dask({lonely.address!r})", "distribute", 20, "")
        run = start_psy("run", cwd=where, env=ENV)
        seen = []

        def warned():
            seen.append(run.stdout.readline())
            return "has no workers" in seen[-1]

        started = time.monotonic()
        wait_until(warned, "the warning about no workers", 60, interval=0)
        assert time.monotonic() - started < 30
        assert f"dask worker {lonely.address}" in seen[-1]
        lonely.start_workers(wait=False)
        out = "".join(seen) + finish(run, 300)
        assert run.returncode == 0, out
        assert_exact(where, 20)
    finally:
        lonely.stop()


# -- a Slurm job run again -----------------------------------------------------------


def test_slurm_requeue_of_a_running_loadbalancing_job_loses_no_row(tmp_path):
    from slurm_helpers import slurm_unavailable_reason

    reason = slurm_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    from test_slurm_psy import cancel_all, our_jobs, slurm_task, wait_complete

    values = list(range(120))
    gate = tmp_path / "gate"
    gate.touch()
    task, side = slurm_task(
        tmp_path,
        values,
        max_jobs=2,
        backend="loadbalancing",
        preamble=f"GATE = {str(gate)!r}\npool_size = 2\n",
        before_record="""
            time.sleep(0.02)
            while x >= 40 and os.path.exists(GATE):
                time.sleep(0.05)
        """,
    )
    try:
        ok(psy("run", cwd=tmp_path, env=ENV))
        work = tmp_path / "psy-work" / task
        wait_until(lambda: rows_reported(work) >= 30, "rows to be evaluated", 150, interval=0.2)

        def running_process_job():
            for jobid, state, _ in our_jobs(task):
                if state == "R" and "_" in jobid:
                    return jobid
            return None

        jobid = wait_until(running_process_job, "a running process job", 150, interval=0.2)
        # Its workers hold claims at the gate; Slurm kills the job and queues it again.
        subprocess.run(["scontrol", "requeue", jobid], check=True, timeout=60)
        # Slurm lets a requeued job start only after a delay (reason BeginTime): now.
        wait_until(
            lambda: any(j == jobid and s == "PD" for j, s, _ in our_jobs(task)), "the requeue", 60
        )
        subprocess.run(
            ["scontrol", "update", f"JobId={jobid}", "StartTime=now"], timeout=60, check=False
        )
        gate.unlink()

        def ended():
            # Gone from the queue, or left waiting for a dependency that failed.
            return all(r == "DependencyNeverSatisfied" for _, _, r in our_jobs(task))

        wait_until(ended, "the jobs to end", 240, interval=0.5)
        if our_jobs(task):
            # Slurm may count the requeued attempt as failed for the merge's
            # afterok: `psy run -c` cancels the blocked merge and finishes.
            ok(psy("run", "-c", task, cwd=tmp_path, env=ENV))
        wait_complete(tmp_path, task, len(values), timeout=120)
        data = load_result(result_path(tmp_path, task), "pickle")
        assert sorted_rows(data) == square_rows(values)
        assert set(calls(side)) == set(values)
        assert Counter(calls(side).values()).keys() <= {1, 2}
    finally:
        cancel_all(task)
