"""LocalPool: parallel jobs, dependencies, the fork fast path, interrupts, real psyrun jobs."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from collections import Counter

import numpy as np
import pytest
from e2e_helpers import reaped

from psyrun.jobs import submit_graph
from psyrun.run.defaults import make_backend
from psyrun.run.runner import Interrupted
from psyrun.scheduler import JobState, JobStatus, _fork
from psyrun.scheduler.localpool import LocalPool, default_workers
from psyrun.tasks import load_tasks

PY = sys.executable

# One program for every job of these tests; run as ``-m <module>`` (forked,
# importable only in this process) or as a script (a subprocess).
JOB = """
import os, signal, sys, time

def wait_for(paths, timeout):
    end = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True

def main(argv):
    what = argv[0]
    print("job", what, f"pid={os.getpid()}", f"main={__name__ == '__main__'}", flush=True)
    if what == "meet":
        # meet MINE OTHER TIMEOUT: leave my marker, wait for the other's.
        open(argv[1], "w").close()
        return 0 if wait_for([argv[2]], float(argv[3])) else 1
    if what == "touch":
        open(argv[1], "w").close()
        return 0
    if what == "fail":
        return int(argv[1])
    if what == "nap":
        time.sleep(float(argv[1]))
        return 0
    if what == "hold":
        # hold PIDFILE FINAL [SIGNAL ALL_PIDFILES...]: run until stopped; the
        # finally block shows whether a SIGTERM unwinds the job.
        if len(argv) > 3 and argv[3] == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(argv[1] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(argv[1] + ".tmp", argv[1])
        try:
            if len(argv) > 3 and argv[3] not in ("stubborn", "-"):
                # Interrupt the scheduler once every job of the test runs.
                wait_for(argv[4:], 30)
                os.kill(os.getppid(), getattr(signal, argv[3]))
            time.sleep(60)
        finally:
            with open(argv[2], "w") as f:
                f.write("finally ran")
        return 0
    raise SystemExit(f"unknown job {what!r}")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def job(tmp_path_factory, monkeypatch, request):
    """Return ``argv(*args, fork=True)`` building a command of the test job program."""
    where = tmp_path_factory.mktemp("jobmod")
    module = f"psyrun_localpool_job_{abs(hash(request.node.nodeid))}"
    (where / f"{module}.py").write_text(JOB)
    monkeypatch.syspath_prepend(str(where))
    # Idle threads left by other tests (zarr's event loop) would rule out forking.
    monkeypatch.setattr(_fork, "other_threads_running", lambda: False)

    def argv(*args, fork=True):
        if fork:
            return [PY, "-m", module, *map(str, args)]
        return [PY, str(where / f"{module}.py"), *map(str, args)]

    return argv




def _pids(paths) -> list[int]:
    return [int(p.read_text()) for p in paths]


@pytest.mark.parametrize("bad", [0, -1])
def test_n_workers_below_one_is_refused(bad):
    with pytest.raises(ValueError, match=f"n_workers must be at least 1.*got {bad}"):
        LocalPool(bad)


@pytest.mark.parametrize("bad", [1.5, "2", True])
def test_n_workers_must_be_an_integer(bad):
    with pytest.raises(TypeError, match=f"n_workers must be a whole number.*got {bad!r}"):
        LocalPool(bad)


def test_n_workers_default_is_the_usable_cpus():
    assert LocalPool().n_workers == default_workers() == len(os.sched_getaffinity(0))
    assert LocalPool(np.int64(3)).n_workers == 3
    pool = LocalPool(2)
    assert pool.attached
    assert pool.local
    assert not pool.supports_arrays


@pytest.mark.parametrize("fork", [True, False])
def test_two_jobs_that_need_each_other_run_at_once(tmp_path, job, fork):
    a, b = tmp_path / "a", tmp_path / "b"
    pool = LocalPool(2)
    ids = [
        pool.submit(job("meet", a, b, 30, fork=fork), str(tmp_path / "a.log"), name="a"),
        pool.submit(job("meet", b, a, 30, fork=fork), str(tmp_path / "b.log"), name="b"),
    ]
    pool.wait(ids)
    assert [pool.result(j) for j in ids] == [
        JobStatus(ids[0], JobState.COMPLETED, "a"),
        JobStatus(ids[1], JobState.COMPLETED, "b"),
    ]


def test_one_worker_runs_one_job_at_a_time(tmp_path, job):
    a, b = tmp_path / "a", tmp_path / "b"
    pool = LocalPool(1)
    first = pool.submit(job("meet", a, b, 0.3), str(tmp_path / "a.log"))
    second = pool.submit(job("meet", b, a, 0.3), str(tmp_path / "b.log"))
    pool.wait()
    # The first waited alone for a partner that could not start before it ended.
    assert pool.result(first).status is JobState.FAILED
    assert pool.returncode(first) == 1
    assert pool.result(second).status is JobState.COMPLETED


def test_at_most_n_run_at_once_and_monitor_sees_them(tmp_path, job):
    pool = LocalPool(2)
    ids = [pool.submit(job("nap", 0.3), str(tmp_path / f"{i}.log")) for i in range(5)]
    seen = []
    pool.monitor = lambda: seen.append(Counter(s.status for s in pool.get_statuses(ids).values()))
    pool.monitor_interval = 0.05
    pool.wait(ids)
    assert len(seen) >= 5
    assert max(c[JobState.RUNNING] for c in seen) == 2
    assert all(c[JobState.RUNNING] + c[JobState.QUEUED] <= 5 for c in seen)
    assert {pool.result(j).status for j in ids} == {JobState.COMPLETED}
    assert pool.get_jobs() == []


def test_a_monitor_error_stops_the_jobs_and_propagates(tmp_path, job):
    pool = LocalPool(2, grace=2)
    pidfiles = [tmp_path / "p0", tmp_path / "p1"]
    ids = [
        pool.submit(job("hold", p, tmp_path / f"final{i}"), str(tmp_path / f"{i}.log"))
        for i, p in enumerate(pidfiles)
    ]

    def monitor():
        if all(p.exists() for p in pidfiles):
            raise RuntimeError("the progress bar broke")

    pool.monitor = monitor
    pool.monitor_interval = 0.02
    with pytest.raises(RuntimeError, match="progress bar broke"):
        pool.wait(ids)
    assert all(reaped(pid) for pid in _pids(pidfiles))
    assert {pool.result(j).status for j in ids} == {JobState.CANCELLED}


def test_submit_only_queues_and_kill_cancels(tmp_path, job):
    pool = LocalPool(2)
    marker = tmp_path / "ran"
    start = time.perf_counter()
    held = pool.submit(job("touch", marker), str(tmp_path / "x.log"), name="x")
    after = pool.submit(job("touch", marker), str(tmp_path / "y.log"), name="y", depends_on=held)
    assert time.perf_counter() - start < 0.5
    assert pool.get_status(held) == JobStatus(held, JobState.QUEUED, "x")
    assert pool.result(held) is None
    assert sorted(pool.get_jobs()) == sorted([held, after])
    pool.kill(held)
    assert pool.result(held).status is JobState.CANCELLED
    assert pool.get_status(after) == JobStatus(after, JobState.BLOCKED, "y")
    pool.wait()
    assert not marker.exists()
    assert pool.returncode(held) is None
    pool.kill(after)
    assert pool.result(after).status is JobState.CANCELLED
    assert pool.get_jobs() == []


def test_missing_log_directory_is_refused_at_submit(tmp_path, job):
    with pytest.raises(FileNotFoundError, match=r"directory .*nope.* does not exist"):
        LocalPool(1).submit(job("touch", tmp_path / "m"), str(tmp_path / "nope" / "x.log"))


def test_dependencies_are_honoured_and_failures_block(tmp_path, job):
    pool = LocalPool(2)
    first_done = tmp_path / "first"
    # "meet" with a partner that exists only if `first` already completed.
    first = pool.submit(job("nap", 0.2), str(tmp_path / "first.log"))
    mark = pool.submit(job("touch", first_done), str(tmp_path / "mark.log"), depends_on=first)
    check = pool.submit(
        job("meet", tmp_path / "c", first_done, 0), str(tmp_path / "c.log"), depends_on=[mark]
    )
    bad = pool.submit(job("fail", 3), str(tmp_path / "bad.log"), name="bad")
    blocked = pool.submit(job("touch", tmp_path / "b1"), str(tmp_path / "b1.log"), depends_on=bad)
    blocked2 = pool.submit(
        job("touch", tmp_path / "b2"), str(tmp_path / "b2.log"), depends_on=[check, blocked]
    )
    free = pool.submit(
        job("touch", tmp_path / "free"), str(tmp_path / "f.log"), depends_on=["earlier-run-id"]
    )
    unrelated = pool.submit(job("touch", tmp_path / "u"), str(tmp_path / "u.log"))
    pool.wait([blocked2, free])
    assert pool.result(check).status is JobState.COMPLETED
    assert pool.returncode(bad) == 3
    assert pool.result(bad).status is JobState.FAILED
    assert pool.get_statuses([blocked, blocked2]) == {
        blocked: JobStatus(blocked, JobState.BLOCKED, None),
        blocked2: JobStatus(blocked2, JobState.BLOCKED, None),
    }
    assert pool.result(blocked2).status is JobState.BLOCKED
    assert not (tmp_path / "b1").exists()
    assert not (tmp_path / "b2").exists()
    assert pool.result(free).status is JobState.COMPLETED
    # wait() ran only what was asked for and its dependencies.
    assert pool.get_status(unrelated).status is JobState.QUEUED
    late = pool.submit(job("touch", tmp_path / "late"), str(tmp_path / "l.log"), depends_on=bad)
    assert pool.get_status(late).status is JobState.BLOCKED
    pool.shutdown(cancel=True)
    assert pool.result(unrelated).status is JobState.CANCELLED
    assert pool.get_jobs() == []


def test_python_m_jobs_are_forked_and_cheap(tmp_path, job):
    pool = LocalPool(2)
    start = time.perf_counter()
    # What a job started afresh costs at least: an interpreter that imports NumPy.
    fresh = [PY, "-c", "import numpy"]
    pool.wait([pool.submit(fresh, str(tmp_path / f"s{i}.log")) for i in range(4)])
    per_interpreter = (time.perf_counter() - start) / 4
    start = time.perf_counter()
    ids = [pool.submit(job("fail", 0), str(tmp_path / f"{i}.log")) for i in range(40)]
    pool.wait(ids)
    per_fork = (time.perf_counter() - start) / 40
    assert {pool.result(j).status for j in ids} == {JobState.COMPLETED}
    # The module is importable only in this process: it ran in forks of it,
    # as __main__ (python -m's way).
    assert "main=True" in (tmp_path / "0.log").read_text()
    # Against interpreter start-ups on this machine now (its load slows both).
    assert per_fork < per_interpreter / 2, (per_fork, per_interpreter)


def test_other_commands_run_as_subprocesses(tmp_path, job, monkeypatch):
    where = tmp_path / "elsewhere"
    where.mkdir()
    (where / "psyrun_only_in_subprocess.py").write_text("import sys; print('sub', sys.argv[1:])")
    # Importable by a fresh interpreter (its PYTHONPATH) but not by this process.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(where), os.environ.get("PYTHONPATH", "")])
    )
    pool = LocalPool(2, fork=True)
    pool.submit([PY, "-m", "psyrun_only_in_subprocess", "a b"], str(tmp_path / "s.log"))
    nofork = LocalPool(1, fork=False)
    plain = nofork.submit(job("fail", 0), str(tmp_path / "p.log"))
    missing = pool.submit(["/nonexistent/program"], str(tmp_path / "m.log"))
    pool.wait()
    nofork.wait()
    assert (tmp_path / "s.log").read_text().strip() == "sub ['a b']"
    # The job module is not on a fresh interpreter's path: the subprocess failed.
    assert "No module named" in (tmp_path / "p.log").read_text()
    assert nofork.result(plain).status is JobState.FAILED
    assert pool.returncode(missing) == 127
    assert "/nonexistent/program" in (tmp_path / "m.log").read_text()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_while_waiting_stops_every_job_and_propagates(
    tmp_path, job, sigterm_raises, signame
):
    pool = LocalPool(3, grace=5)
    pidfiles = [tmp_path / f"pid{i}" for i in range(3)]
    finals = [tmp_path / f"final{i}" for i in range(3)]
    ids = [
        # The first job signals this process once all three run; the third
        # is a subprocess (a plain script), the others forked.
        pool.submit(
            job("hold", pidfiles[0], finals[0], signame, *pidfiles), str(tmp_path / "0.log")
        ),
        pool.submit(job("hold", pidfiles[1], finals[1]), str(tmp_path / "1.log")),
        pool.submit(job("hold", pidfiles[2], finals[2], fork=False), str(tmp_path / "2.log")),
    ]
    queued = pool.submit(job("touch", tmp_path / "never"), str(tmp_path / "q.log"))
    expected = Interrupted if signame == "SIGTERM" else KeyboardInterrupt
    start = time.monotonic()
    with pytest.raises(expected):
        pool.wait()
    assert time.monotonic() - start < 30
    pids = _pids(pidfiles)
    assert all(reaped(pid) for pid in pids)
    assert {pool.result(j).status for j in ids} == {JobState.CANCELLED}
    # The forked jobs got a SIGTERM that unwinds them: their finally blocks ran.
    assert finals[0].read_text() == finals[1].read_text() == "finally ran"
    assert pool.returncode(ids[0]) == pool.returncode(ids[1]) == 143
    # A plain Python script dies of SIGTERM without unwinding.
    assert pool.returncode(ids[2]) == -signal.SIGTERM
    assert pool.get_status(queued).status is JobState.QUEUED
    assert not (tmp_path / "never").exists()


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path, job):
    pool = LocalPool(1, grace=0.3)
    pidfile = tmp_path / "pid"
    jobid = pool.submit(job("hold", pidfile, tmp_path / "final", "stubborn"), str(tmp_path / "l"))

    def monitor():
        if pidfile.exists():
            raise KeyboardInterrupt

    pool.monitor = monitor
    pool.monitor_interval = 0.02
    with pytest.raises(KeyboardInterrupt):
        pool.wait()
    assert reaped(int(pidfile.read_text()))
    assert pool.returncode(jobid) == -signal.SIGKILL
    assert pool.result(jobid).status is JobState.CANCELLED


def test_kill_stops_a_running_job(tmp_path, job):
    pool = LocalPool(2)
    pidfile = tmp_path / "pid"
    held = pool.submit(job("hold", pidfile, tmp_path / "final"), str(tmp_path / "h.log"))
    other = pool.submit(job("nap", 0.05), str(tmp_path / "o.log"))

    def monitor():
        if pidfile.exists() and pool.get_status(held) is not None:
            pool.kill(held)

    pool.monitor = monitor
    pool.monitor_interval = 0.02
    pool.wait()
    assert reaped(int(pidfile.read_text()))
    assert (tmp_path / "final").read_text() == "finally ran"
    assert pool.result(held).status is JobState.CANCELLED
    assert pool.result(other).status is JobState.COMPLETED


# --- real psyrun jobs ---------------------------------------------------------


def _task(tmp_path, backend, body):
    taskdir = tmp_path / "tasks"
    taskdir.mkdir()
    text = (
        "import numpy as np\nfrom psyrun import Param\n"
        f"from psyrun.backend import {backend}\nfrom psyrun.store import PickleStore\n"
        f"backend = {backend}\nstore = PickleStore()\nworkdir = {str(tmp_path / 'work')!r}\n"
        + textwrap.dedent(body)
    )
    (taskdir / "task_t.py").write_text(text)
    return load_tasks(taskdir)["t"]


@pytest.mark.parametrize(
    ("backend", "settings"),
    [
        ("DistributeBackend", "max_jobs = 4"),
        ("LoadBalancingBackend", "max_jobs = 2; pool_size = 2"),
    ],
)
def test_psyrun_jobs_run_in_the_pool(tmp_path, monkeypatch, backend, settings):
    # The worker runs in forks of this process (or subprocesses that must see this checkout).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    task = _task(
        tmp_path,
        backend,
        f"""
        pspace = Param(x=np.arange(300))
        {settings}
        def execute(x):
            return {{'y': x * x}}
        """,
    )
    plan = make_backend(task).plan()
    pool = LocalPool(2)
    calls = []
    pool.monitor = lambda: calls.append(1)
    pool.monitor_interval = 0.01
    ids = submit_graph(plan.graph, pool)
    assert {s.status for s in pool.get_statuses(ids.values()).values()} == {JobState.QUEUED}
    pool.wait(list(ids.values()))
    assert {n: pool.result(j).status for n, j in ids.items()} == dict.fromkeys(
        ids, JobState.COMPLETED
    )
    data = task.store.load(task.resultfile)
    assert sorted(data["x"].tolist()) == list(range(300))
    np.testing.assert_array_equal(data["y"], data["x"] ** 2)
    assert calls
