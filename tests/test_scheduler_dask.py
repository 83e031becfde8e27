"""psyrun.scheduler.Dask against real dask.distributed clusters on 127.0.0.1.

Two clusters serve the tests: the embedded LocalCluster of ``Dask()`` and a
``dask scheduler`` with two ``dask worker`` processes started by a fixture
(the way a user runs a long-lived cluster), addressed as
``Dask('tcp://127.0.0.1:<port>')``. The external scheduler runs with
``allowed-failures = 0`` so that a job whose worker dies fails at once; the
embedded one keeps Dask's default and runs such a job again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="needs dask.distributed (pip install 'psyrun[dask]')")

from e2e_helpers import (
    calls,
    counting_task,
    load_result,
    ok,
    psy,
    psy_command,
    result_path,
    sorted_rows,
    square_rows,
    write,
)

import psyrun
from psyrun.jobs import submit_graph
from psyrun.run.defaults import make_backend
from psyrun.scheduler import Dask, JobState
from psyrun.tasks import load_tasks

PY = sys.executable
ROOT = str(Path(psyrun.__file__).resolve().parent.parent)
# Jobs (subprocesses of the workers) must import the psyrun under test.
ENV_PATH = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)


def py(source: str) -> list[str]:
    """Argv running `source` with this interpreter."""
    return [PY, "-c", textwrap.dedent(source)]


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pid_of(path: Path, timeout: float = 30.0) -> int:
    """The pid a job wrote into `path` (first line), once it has."""
    wait_for(lambda: path.exists() and path.read_text().strip(), timeout, f"{path.name}")
    return int(path.read_text().split()[0])


def sleeper(pidfile: Path, seconds: float = 60.0, on_term: str = "exit") -> list[str]:
    """A job that writes its pid, then sleeps; on SIGTERM it records it and exits (or not)."""
    handler = {
        "exit": "open(PIDFILE + '.term', 'w').write('x'); sys.exit(143)",
        "ignore": "open(PIDFILE + '.term', 'w').write('x')",
    }[on_term]
    return py(
        f"""
        import os, signal, sys, time
        PIDFILE = {str(pidfile)!r}
        def term(signum, frame):
            {handler}
        signal.signal(signal.SIGTERM, term)
        with open(PIDFILE + '.tmp', 'w') as f:
            f.write(str(os.getpid()))
        os.replace(PIDFILE + '.tmp', PIDFILE)
        end = time.time() + {seconds}
        while time.time() < end:
            time.sleep(0.05)
        """
    )


@pytest.fixture(scope="module")
def local():
    """``Dask(n_workers=2)``: the embedded LocalCluster, started by the first submit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", ENV_PATH)
        sched = Dask(n_workers=2)
        yield sched
        sched.shutdown(cancel=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """A ``dask scheduler`` plus two ``dask worker`` processes; yields the scheduler address."""
    import distributed

    logs = tmp_path_factory.mktemp("dask-cluster")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=ENV_PATH, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
    env.pop("PYTHONWARNINGS", None)
    dask = [PY, "-m", "dask"]
    commands = [
        [*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        *(
            [*dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
             "--host", "127.0.0.1", "--name", f"w{i}"]
            for i in range(2)
        ),
    ]  # fmt: skip
    procs = []
    try:
        for i, cmd in enumerate(commands):
            with open(logs / f"{i}.log", "wb") as out:
                procs.append(
                    subprocess.Popen(
                        cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
                    )
                )
        with distributed.Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture(scope="module")
def remote(external):
    """``Dask(<address of the external scheduler>)``."""
    sched = Dask(external)
    yield sched
    sched.shutdown(cancel=True)


def worker_pid(sched: Dask, log: Path) -> int:
    """The pid of the Dask worker process that runs the job logging to `log`."""
    header = wait_for(lambda: log.exists() and log.read_text().split("\n", 1)[0], what="header")
    address = header.split(" on worker ")[1].split()[0]
    return sched.client.run(os.getpid, workers=[address])[address]


# -- no cluster needed -----------------------------------------------------------------


def test_import_and_construction_load_no_dask():
    code = (
        "import sys, psyrun, psyrun.scheduler\n"
        "from psyrun.scheduler import Dask\n"
        "Dask(); Dask('tcp://127.0.0.1:1'); Dask(n_workers=3, memory_limit='1GB')\n"
        "print([m for m in ('dask', 'distributed') if m in sys.modules])\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_dask_names_the_extra():
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "from psyrun.scheduler import Dask\n"
        "try:\n    Dask()\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'psyrun[dask]'" in out.stdout


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(TypeError, match="n_workers only apply to the embedded cluster"):
        Dask("tcp://127.0.0.1:8786", n_workers=2)
    with pytest.raises(TypeError, match="scheduler address such as"):
        Dask(8786)
    with pytest.raises(ValueError, match="at least 1"):
        Dask(n_workers=0)
    sched = Dask("tcp://127.0.0.1:8786")
    assert sched.attached
    assert not sched.local
    # Status queries of a fresh instance neither connect nor start anything.
    assert sched.get_statuses(["x"]) == {}
    assert sched.get_jobs() == []
    assert sched.result("x") is None
    sched.wait(["x"])
    assert sched._client is None


def test_unreachable_scheduler_is_a_clear_error():
    from psyrun.scheduler import SchedulerError

    sched = Dask(f"tcp://127.0.0.1:{_free_port()}", connect_timeout=1)
    with pytest.raises(SchedulerError, match="cannot connect to the Dask scheduler"):
        sched.submit([PY, "-c", "pass"], "/dev/null")


# -- embedded LocalCluster ---------------------------------------------------------------


def test_jobs_run_and_report_exit_status(local, tmp_path):
    ok = local.submit(
        py("import sys; print('to out'); print('to err', file=sys.stderr)"),
        str(tmp_path / "ok.log"),
        name="ok",
    )
    bad = local.submit(py("import sys; sys.exit(3)"), str(tmp_path / "bad.log"), name="bad")
    assert isinstance(ok, str)
    assert ok != bad
    local.wait([ok, bad])
    assert local.result(ok)[:3] == (ok, JobState.COMPLETED, "ok")
    assert local.result(bad).status is JobState.FAILED
    text = (tmp_path / "ok.log").read_text()
    assert "to out" in text
    assert "to err" in text
    assert "exit status 3" in (tmp_path / "bad.log").read_text()
    # Ended jobs are no longer held.
    assert local.get_statuses([ok, bad]) == {}


def test_dependent_runs_after_parent_and_is_blocked_after_failure(local, tmp_path):
    stamp = "import time; open({!r}, 'w').write(repr(time.time()))"
    parent = local.submit(
        py(f"import time; time.sleep(0.5); {stamp.format(str(tmp_path / 'p'))}"),
        str(tmp_path / "p.log"),
    )
    child = local.submit(
        py(stamp.format(str(tmp_path / "c"))), str(tmp_path / "c.log"), depends_on=[parent]
    )
    failing = local.submit(py("raise SystemExit(1)"), str(tmp_path / "f.log"))
    blocked = local.submit(
        py(f"open({str(tmp_path / 'never')!r}, 'w')"),
        str(tmp_path / "b.log"),
        name="b",
        depends_on=[child, failing],
    )
    local.wait([parent, child, failing, blocked])
    assert float((tmp_path / "c").read_text()) >= float((tmp_path / "p").read_text())
    assert local.result(child).status is JobState.COMPLETED
    assert local.result(blocked).status is JobState.BLOCKED
    assert not (tmp_path / "never").exists()
    # Held like a Slurm job whose dependency can never be satisfied, until killed.
    assert local.get_status(blocked).status is JobState.BLOCKED
    assert blocked in local.get_jobs()
    local.kill(blocked)
    assert local.get_status(blocked) is None
    assert local.result(blocked).status is JobState.CANCELLED


def test_array_substitutes_the_index(local, tmp_path):
    ids = local.submit_array(
        3, [*py("import sys; print('index', sys.argv[1])"), "%a"], str(tmp_path / "a%a.log")
    )
    assert len(set(ids)) == 3
    local.wait(ids)
    for i in range(3):
        assert f"index {i}" in (tmp_path / f"a{i}.log").read_text()
        assert local.result(ids[i]).status is JobState.COMPLETED


def test_kill_running_job_stops_its_process(local, tmp_path):
    pidfile = tmp_path / "pid"
    running = local.submit(sleeper(pidfile), str(tmp_path / "r.log"), name="r")
    dependent = local.submit(py("pass"), str(tmp_path / "d.log"), depends_on=[running])
    pid = pid_of(pidfile)
    statuses = local.get_statuses([running, dependent])
    assert statuses[running].status is JobState.RUNNING
    assert statuses[dependent].status is JobState.QUEUED
    local.kill_jobs([running])
    wait_for(lambda: not alive(pid), 15, "the killed job to stop")
    assert Path(f"{pidfile}.term").exists()  # SIGTERM first: the job could clean up
    local.wait([running, dependent])
    assert local.result(running).status is JobState.CANCELLED
    assert local.result(dependent).status is JobState.BLOCKED


def test_interrupt_while_waiting_cancels_and_stops_jobs(local, tmp_path, monkeypatch):
    monkeypatch.setattr(local, "grace", 1.0)
    stubborn = local.submit(sleeper(tmp_path / "s", on_term="ignore"), str(tmp_path / "s.log"))
    polite = local.submit(sleeper(tmp_path / "p"), str(tmp_path / "p.log"))
    queued = local.submit(py("pass"), str(tmp_path / "q.log"), depends_on=[polite])
    pids = [pid_of(tmp_path / "s"), pid_of(tmp_path / "p")]
    calls_made = []

    def monitor():
        calls_made.append(time.monotonic())
        if len(calls_made) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(local, "monitor", monitor)
    monkeypatch.setattr(local, "monitor_interval", 0.1)
    with pytest.raises(KeyboardInterrupt):
        local.wait([stubborn, polite, queued])
    # wait() returns only once the workers stopped the jobs (SIGKILL after the grace).
    assert not any(alive(p) for p in pids)
    assert Path(tmp_path / "s.term").exists()
    assert Path(tmp_path / "p.term").exists()
    for jobid in (stubborn, polite, queued):
        assert local.result(jobid).status is JobState.CANCELLED
    assert not (tmp_path / "q.log").exists()


def test_job_of_a_killed_worker_runs_again_without_its_orphan(local, tmp_path):
    pidfile = tmp_path / "pid"
    log = tmp_path / "j.log"
    # The first attempt sleeps; the second (after the worker died) finishes.
    job = local.submit(
        py(
            f"""
            import os, time
            first = not os.path.exists({str(pidfile)!r})
            with open({str(pidfile)!r}, 'a') as f:
                f.write(f'{{os.getpid()}}\\n')
            time.sleep(60 if first else 0)
            """
        ),
        str(log),
    )
    pid = pid_of(pidfile)
    os.kill(worker_pid(local, log), signal.SIGKILL)
    local.wait([job])
    assert local.result(job).status is JobState.COMPLETED
    assert not alive(pid)  # killed with its worker, not left running beside the rerun
    assert len(pidfile.read_text().split()) == 2
    assert "started again" in log.read_text()


def test_psyrun_task_runs_every_row_once(local, tmp_path):
    _run_sweep(local, tmp_path, n_rows=200, max_jobs=3)


# -- external dask scheduler + workers ---------------------------------------------------


def test_external_cluster_dependencies(remote, tmp_path):
    stamp = "import time; open({!r}, 'w').write(repr(time.time()))"
    parent = remote.submit(
        py(f"import time; time.sleep(0.3); {stamp.format(str(tmp_path / 'p'))}"),
        str(tmp_path / "p.log"),
    )
    children = remote.submit_array(
        2, py(stamp.format(str(tmp_path / "c%a"))), str(tmp_path / "c%a.log"),
        depends_on=[parent],
    )  # fmt: skip
    failing = remote.submit(py("raise SystemExit(2)"), str(tmp_path / "f.log"))
    blocked = remote.submit(py("pass"), str(tmp_path / "b.log"), depends_on=[failing, parent])
    remote.wait([parent, *children, failing, blocked])
    assert [remote.result(j).status for j in (parent, *children, failing, blocked)] == [
        JobState.COMPLETED,
        JobState.COMPLETED,
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.BLOCKED,
    ]
    for i in range(2):
        assert float((tmp_path / f"c{i}").read_text()) >= float((tmp_path / "p").read_text())


def test_external_sweep_of_20000_rows(remote, tmp_path):
    wall, busy = _run_sweep(remote, tmp_path, n_rows=20_000, max_jobs=6)
    # The best two workers can do with these job times (split, then the process
    # jobs longest first on the less loaded worker, then merge); the rest of
    # the wall time is Dask's scheduling and dispatch.
    loads = [0.0, 0.0]
    for t in sorted((t for n, t in busy.items() if ":process:" in n), reverse=True):
        loads[loads.index(min(loads))] += t
    ideal = busy["sweep:split"] + max(loads) + busy["sweep:merge"]
    print(
        f"\n2e4-row sweep, max_jobs=6, dask scheduler + 2 workers: wall {wall:.2f} s, "
        f"sum of job run times {sum(busy.values()):.2f} s, best 2-worker schedule "
        f"{ideal:.2f} s, Dask's share {wall - ideal:.2f} s ({(wall - ideal) / wall:.0%})"
    )


def test_external_killed_worker_fails_the_job(remote, external, tmp_path):
    import distributed

    pidfile = tmp_path / "pid"
    log = tmp_path / "k.log"
    job = remote.submit(sleeper(pidfile), str(log), name="k")
    after = remote.submit(py("pass"), str(tmp_path / "a.log"), depends_on=[job])
    pid = pid_of(pidfile)
    os.kill(worker_pid(remote, log), signal.SIGKILL)
    remote.wait([job, after])
    assert remote.result(job).status is JobState.FAILED  # KilledWorker: allowed-failures = 0
    assert remote.result(after).status is JobState.BLOCKED
    wait_for(lambda: not alive(pid), 10, "the orphaned job to die")
    # The nanny restarts the worker: the cluster is whole again for later tests.
    with distributed.Client(external, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)


# -- real psyrun jobs --------------------------------------------------------------------


def _run_sweep(sched: Dask, tmp_path: Path, n_rows: int, max_jobs: int):
    """Run a counting task's split/process/merge jobs on `sched`; check every row once."""
    side = tmp_path / "calls.txt"
    taskdir = tmp_path / "tasks"
    taskdir.mkdir()
    (taskdir / "task_sweep.py").write_text(
        counting_task(
            side,
            range(n_rows),
            settings=f"max_jobs = {max_jobs}\nworkdir = {str(tmp_path / 'work')!r}\n",
        )
    )
    task = load_tasks(str(taskdir))["sweep"]
    backend = make_backend(task)
    plan = backend.plan()
    start = time.monotonic()
    ids = submit_graph(plan.graph, sched, {})
    sched.wait(list(ids.values()))
    wall = time.monotonic() - start
    ended = {name: sched.result(jobid).status for name, jobid in ids.items()}
    assert set(ended.values()) == {JobState.COMPLETED}, ended
    assert len(ids) == max_jobs + 2
    data = task.store.load(task.resultfile)
    assert sorted(data["x"].tolist()) == list(range(n_rows))
    assert (data["y"] == data["x"] ** 2).all()
    assert calls(side) == dict.fromkeys(range(n_rows), 1)
    busy = {}
    for name, log in plan.graph.logs().items():
        last = Path(log).read_text().rstrip().rsplit("\n", 1)[-1]
        busy[name] = float(last.split(" after ")[1].split()[0])
    return wall, busy


# -- through psy ---------------------------------------------------------------------


def _psy_task(tmp_path: Path, scheduler: str, n_rows: int, max_jobs: int, extra: str = "") -> Path:
    side = tmp_path / "calls.txt"
    write(
        tmp_path / "psy-tasks" / "task_sweep.py",
        counting_task(
            side,
            range(n_rows),
            preamble=f"from psyrun.scheduler import Dask\nscheduler = {scheduler}\n",
            settings=f"max_jobs = {max_jobs}\n{extra}",
        ),
    )
    return side


def test_psy_run_waits_for_the_embedded_cluster(tmp_path):
    side = _psy_task(tmp_path, "Dask(n_workers=2)", 2000, 6)
    run = ok(psy("run", cwd=tmp_path, env={"PYTHONPATH": ENV_PATH}, timeout=300))
    assert "sweep:merge" in run.stdout
    assert calls(side) == dict.fromkeys(range(2000), 1)
    data = load_result(result_path(tmp_path, "sweep"), "pickle")
    assert sorted_rows(data) == square_rows(range(2000))
    assert "2000 out of 2000 rows completed" in ok(psy("status", cwd=tmp_path)).stdout


def test_psy_run_on_an_external_cluster_every_row_once(external, tmp_path):
    n = 20_000
    side = _psy_task(tmp_path, f"Dask({external!r})", n, 6)
    started = time.monotonic()
    ok(psy("run", cwd=tmp_path, env={"PYTHONPATH": ENV_PATH}, timeout=600))
    print(f"psy run of {n} rows, max_jobs=6, external dask: {time.monotonic() - started:.2f} s")
    assert calls(side) == dict.fromkeys(range(n), 1)
    status = ok(psy("status", cwd=tmp_path)).stdout
    assert f"{n} out of {n} rows completed" in status


def test_killed_dask_worker_then_continue_finishes_exactly(external, tmp_path):
    # One slow process job; its worker is killed while it runs (allowed-failures=0:
    # the job fails), then psy run -c evaluates exactly the rows that are missing.
    import distributed

    started = tmp_path / "started"
    side = _psy_task(tmp_path, f"Dask({external!r})", 40, 1)
    text = (tmp_path / "psy-tasks" / "task_sweep.py").read_text()
    text = text.replace(
        "def execute(x):\n",
        "def execute(x):\n"
        "    import time\n"
        f"    if x == 10:\n        open({str(started)!r}, 'w').close()\n"
        "    time.sleep(0.1)\n",
    )
    write(tmp_path / "psy-tasks" / "task_sweep.py", text)
    proc = subprocess.Popen(
        [*psy_command(), "run"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ENV_PATH),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(started.exists, 120, "the process job to reach row 10")
        log = tmp_path / "psy-work" / "sweep" / "sweep:process:0.log"
        address = log.read_text().split("\n", 1)[0].split(" on worker ")[1].split()[0]
        with distributed.Client(external, timeout=30, set_as_default=False) as client:
            pid = client.run(os.getpid, workers=[address])[address]
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert "sweep:process:0" in err, err  # psy names the failed job
    status = psy("status", "-v", cwd=tmp_path).stdout
    assert "sweep:process:0" in status, status
    with distributed.Client(external, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
    ok(psy("run", "-c", cwd=tmp_path, env={"PYTHONPATH": ENV_PATH}, timeout=300))
    data = load_result(result_path(tmp_path, "sweep"), "pickle")
    assert sorted_rows(data) == square_rows(range(40))
    assert sum(calls(side).values()) < 80  # rows kept from the first run were not redone
