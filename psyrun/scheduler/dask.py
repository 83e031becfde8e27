"""Dask: run psyrun's jobs on a dask.distributed cluster.

Every job becomes one Dask task that runs the job's command as a subprocess on
a Dask worker and returns its exit status. Dependencies are Dask dependencies:
a job's task takes its parents' results as arguments, so Dask starts it only
after they have finished, and the task itself declines to run (BLOCKED) when
one of them failed.

The jobs live as long as the :class:`distributed.Client` of the submitting
process: this scheduler is *attached*. ``psy run`` waits for the jobs (see
:meth:`Dask.wait`); when it stops, is interrupted or dies, the scheduler
releases the tasks and the tasks stop their subprocesses.

Neither dask nor distributed is imported before the first job is submitted.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from psyrun.scheduler.base import (
    JobState,
    JobStatus,
    Scheduler,
    SchedulerError,
    check_args,
    normalize_dependencies,
    resolve_arg,
)

__all__ = ["Dask", "SchedulerLost"]

_INSTALL_HINT = "pip install 'psyrun[dask]'"

# Scheduler arguments that are handed to Client.submit (all others are ignored,
# so that a task file written for a batch system still runs here).
_SUBMIT_ARGS = ("resources", "priority", "workers", "allow_other_workers")

# What a task returns: ("ran", exit status), ("blocked", None) when a parent
# did not complete, ("stopped", exit status) when it was cancelled while running.
_RAN, _BLOCKED, _STOPPED = "ran", "blocked", "stopped"

# The last line a task writes into the job's log; a task that finds it (Dask
# recomputes a finished task whose result was lost with its worker) reports the
# recorded exit status instead of running the job a second time.
_TRAILER = "psyrun-dask: task {key} ended with exit status "
_HEADER = "psyrun-dask: task {key} "

# Started in front of every job on Linux: ask the kernel to SIGKILL the job
# when the Dask worker that started it dies (a killed worker would otherwise
# leave an orphan that runs on while Dask retries the job elsewhere), then
# exec the job's own command.
_BOOT = """\
import os, signal, sys
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit(137)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as e:
    print(f"psyrun: cannot run {sys.argv[2:]!r}: {e}", file=sys.stderr, flush=True)
    os._exit(127)
"""

#: Seconds ``wait`` waits before it checks that the Dask scheduler has workers.
NO_WORKERS_WARNING = 5.0


class SchedulerLost(SchedulerError):
    """The connection to the Dask scheduler was lost while jobs had not ended."""


# Worker process side: key -> subprocess of every job this process runs now.
_RUNNING: dict[str, subprocess.Popen] = {}
_RUNNING_LOCK = threading.Lock()


def _import_distributed():
    try:
        import distributed
    except ImportError as e:
        raise ImportError(
            f"psyrun.scheduler.Dask needs dask and distributed ({e}); install them with "
            f"{_INSTALL_HINT}"
        ) from e
    return distributed


def _default_n_workers() -> int:
    """Return the number of CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Dask(Scheduler):
    """Run jobs as tasks on a dask.distributed cluster.

    Each job runs its command as a subprocess on a Dask worker (standard
    output and error go to the job's output file; the exit status decides
    between COMPLETED and FAILED). A job starts once every job it depends on
    has completed; when one of them failed, was cancelled or blocked, the job
    does not run and ends BLOCKED.

    The scheduler is *attached* (:attr:`attached`): jobs end with the process
    that submitted them. ``psy run`` submits, then waits in :meth:`wait`
    (calling :attr:`monitor` for the progress bar); Ctrl-C cancels the jobs
    and stops their subprocesses, and ``psy run -c`` continues later.

    Nothing is started or connected before the first :meth:`submit`: a task
    file that creates ``Dask()`` is cheap to load (every job loads it).

    Parameters
    ----------
    address
        Where the jobs run:

        - ``None`` (default): a :class:`distributed.LocalCluster` started for
          this run (worker processes on 127.0.0.1, no dashboard) and closed by
          :meth:`shutdown`.
        - a scheduler address such as ``'tcp://host:8786'`` (a running
          ``dask scheduler`` with its workers);
        - a cluster object (for example a ``dask_jobqueue.SLURMCluster`` or a
          ``LocalCluster``) or a :class:`distributed.Client`: used as is and
          never closed here.
    n_workers
        Number of worker processes of the embedded cluster; default: the
        number of CPUs this process may use.
    threads_per_worker
        Jobs each embedded worker runs at once. A job is a process of its own,
        so 1 (default) runs one job per worker process.
    grace
        Seconds a cancelled job gets between SIGTERM and SIGKILL.
    connect_timeout
        Seconds to wait for the scheduler at `address` to answer.
    **cluster_kwargs
        More keyword arguments for :class:`distributed.LocalCluster` (for
        example ``memory_limit``); only with ``address=None``.

    Notes
    -----
    The workers must see the task's files (the working directory and the task
    file) at the same paths as the submitting process, as on any cluster with
    a shared file system. A job's command runs in the submitting process's
    working directory when it exists on the worker; a command that starts with
    the submitting process's Python interpreter runs with the worker's
    interpreter when that path does not exist on the worker.

    When a worker dies while it runs a job, its subprocess is killed with it
    (on Linux) and Dask runs the job again elsewhere, up to the scheduler's
    ``distributed.scheduler.allowed-failures`` times; psyrun's jobs are safe
    to run again (a process job resumes from the rows it already wrote). When
    Dask gives up (:class:`distributed.KilledWorker`), the job ends FAILED.

    Scheduler arguments ``resources``, ``priority``, ``workers`` and
    ``allow_other_workers`` are passed to :meth:`distributed.Client.submit`
    (each may be a function of the job name); all others are ignored.
    """

    #: Jobs run under this process and end with it: ``psy run`` waits for them.
    attached: bool = True
    #: Jobs may run on other machines: ``psy run -j`` does not replace this scheduler.
    local: bool = False

    def __init__(
        self,
        address: str | Any | None = None,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        *,
        grace: float = 5.0,
        connect_timeout: float = 30.0,
        **cluster_kwargs: Any,
    ) -> None:
        import importlib.util

        if importlib.util.find_spec("distributed") is None:
            raise ImportError(
                f"psyrun.scheduler.Dask needs dask and distributed, which are not installed; "
                f"install them with {_INSTALL_HINT}"
            )
        if address is not None and not isinstance(address, str) and not _is_cluster(address):
            raise TypeError(
                f"Dask(address=...) takes None, a scheduler address such as "
                f"'tcp://host:8786', a distributed cluster or a Client; got {address!r}"
            )
        if address is not None and (n_workers is not None or cluster_kwargs):
            given = sorted([*(["n_workers"] if n_workers is not None else []), *cluster_kwargs])
            raise TypeError(
                f"Dask(address={address!r}) uses an existing cluster; {', '.join(given)} "
                f"only apply to the embedded cluster of Dask(address=None)"
            )
        if n_workers is not None and n_workers < 1:
            raise ValueError(f"Dask(n_workers=...) must be at least 1, got {n_workers}")
        if threads_per_worker < 1:
            raise ValueError(
                f"Dask(threads_per_worker=...) must be at least 1, got {threads_per_worker}"
            )
        self.address = address
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.grace = float(grace)
        self.connect_timeout = float(connect_timeout)
        self.cluster_kwargs = dict(cluster_kwargs)
        self._client = None
        self._own_client = False
        self._cluster = None  # the embedded cluster, when this instance started one
        # id -> future of every job submitted through the current client
        self._futures: dict[str, Any] = {}
        self._names: dict[str, str | None] = {}
        self._deps: dict[str, list[str]] = {}
        self._ended: dict[str, JobState] = {}  # final states, once observed
        self._outputs: dict[str, str] = {}  # id -> the job's output file
        self._killed: set[str] = set()

    # -- connection -------------------------------------------------------

    @property
    def client(self):
        """The :class:`distributed.Client` (connected, or the cluster started, on first use)."""
        if self._client is None:
            self._connect()
        return self._client

    def _connect(self) -> None:
        distributed = _import_distributed()
        if self.address is None:
            kwargs = {
                "n_workers": self.n_workers or _default_n_workers(),
                "threads_per_worker": self.threads_per_worker,
                "processes": True,
                "host": "127.0.0.1",
                "dashboard_address": None,
                # No dashboard; its bare HTTP server (metrics) on a free port, so that
                # another cluster on 8787 does not make distributed warn.
                "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            }
            kwargs.update(self.cluster_kwargs)
            with _sigint_ignored():
                self._cluster = distributed.LocalCluster(**kwargs)
            target = self._cluster
        elif isinstance(self.address, distributed.Client):
            self._client, self._own_client = self.address, False
            return
        else:
            target = self.address
        try:
            self._client = distributed.Client(
                target, timeout=self.connect_timeout, set_as_default=False
            )
        except (OSError, TimeoutError) as e:
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None
            raise SchedulerError(
                f"cannot connect to the Dask scheduler at {target!r}: {e}; start it "
                f"(`dask scheduler` and `dask worker <address>`) or correct the address"
            ) from e
        self._own_client = True
        # Registered after distributed's own exit hooks, so it runs before them:
        # `psy run` ends with the client closed before the cluster.
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard's address, when connected and the scheduler serves one."""
        if self._client is None:
            return None
        try:
            return self._client.dashboard_link
        except Exception:
            return None

    # -- submission -------------------------------------------------------

    def submit(
        self, args: Sequence[str], output_filename: str, name: str | None = None,
        depends_on: Iterable[str] | None = None, scheduler_args: Mapping[str, Any] | None = None,
    ) -> str:  # fmt: skip
        """Queue one job on the cluster and return its id at once (see :meth:`Scheduler.submit`).

        Ids of jobs this instance did not submit (earlier runs) among
        `depends_on` count as completed.
        """
        argv = check_args(args)
        output_filename = os.path.abspath(os.fspath(output_filename))
        deps = [d for d in normalize_dependencies(depends_on) if d in self._futures]
        options = {}
        for key in _SUBMIT_ARGS:
            if scheduler_args and key in scheduler_args:
                options[key] = resolve_arg(scheduler_args[key], name)
        client = self.client
        jobid = _new_key(name)
        future = client.submit(
            _execute,
            jobid,
            argv,
            output_filename,
            os.getcwd(),
            sys.executable,
            self.grace,
            *(self._futures[d] for d in deps),
            key=jobid,
            pure=False,
            **options,
        )
        self._futures[jobid] = future
        self._names[jobid] = name
        self._outputs[jobid] = output_filename
        self._deps[jobid] = deps
        return jobid

    # -- waiting ----------------------------------------------------------

    def wait(self, jobids: Iterable[str]) -> None:
        """Block until every job in `jobids` has ended, calling :attr:`monitor` meanwhile.

        Any exception while waiting (Ctrl-C, or one raised by the monitor)
        cancels every job of this instance that has not ended, stops their
        subprocesses (SIGTERM, SIGKILL after :attr:`grace` seconds) and is
        raised again. When the connection to the Dask scheduler is lost,
        :class:`SchedulerLost` names the jobs that may still be running and
        where. A scheduler without workers is reported to :attr:`notify`
        after :data:`NO_WORKERS_WARNING` seconds.
        """
        not_done = [self._futures[j] for j in jobids if j in self._futures]
        started = time.monotonic()
        next_worker_check = started + NO_WORKERS_WARNING
        try:
            next_call = started
            while True:
                if self.monitor is not None and time.monotonic() >= next_call:
                    self.monitor()
                    next_call = time.monotonic() + self.monitor_interval
                if self._lost():
                    break
                # Future.done() reads the client's local state: polling is cheap.
                still = []
                for f in not_done:
                    if f.done():
                        # Recorded at once: a lost connection later cancels every future.
                        self._final_state(f.key)
                    else:
                        still.append(f)
                not_done = still
                if not not_done:
                    break
                if next_worker_check is not None and time.monotonic() >= next_worker_check:
                    next_worker_check = self._check_workers()
                time.sleep(0.05)
            if self.monitor is not None:
                self.monitor()
        except BaseException:
            self._cancel_all()
            raise
        if not_done:
            raise SchedulerLost(self._lost_message([f.key for f in not_done]))

    def _lost(self) -> bool:
        """Whether the client has lost its scheduler (its futures are then all cancelled)."""
        client = self._client
        return client is not None and client.status not in ("running", "newly-created")

    def _lost_message(self, keys: list[str]) -> str:
        running, queued = [], []
        for key in keys:
            where = _started_on(self._outputs.get(key, ""), key)
            label = self._names.get(key) or key
            if where is None:
                queued.append(label)
            else:
                running.append(f"{label} on worker {where}")
        self._ended.update(dict.fromkeys(keys, JobState.CANCELLED))
        address = getattr(self._client, "scheduler", None)
        address = getattr(address, "address", None) or self.address or "?"
        text = f"lost the connection to the Dask scheduler at {address}"
        if running:
            text += (
                f"; {len(running)} job(s) may still be running: {', '.join(running)} (each "
                "stops when its worker notices that the scheduler is gone). `psy status` "
                "lists them while they run, and `psy run -c` waits until they have ended "
                "before it continues"
            )
        if queued:
            text += f"; {len(queued)} job(s) had not started: {', '.join(queued)}"
        return text

    def _check_workers(self) -> float | None:
        """Warn through :attr:`notify` when the scheduler has no worker; return the next check."""
        try:
            workers = self.client.scheduler_info(n_workers=1).get("n_workers")
            if workers is None:
                workers = len(self.client.scheduler_info().get("workers", {}))
        except Exception:
            return time.monotonic() + NO_WORKERS_WARNING
        if workers:
            return time.monotonic() + NO_WORKERS_WARNING
        address = getattr(self.client.scheduler, "address", None) or self.address
        if self.notify is not None:
            self.notify(
                f"the Dask scheduler at {address} has no workers: the jobs wait until one "
                f"connects (start one with `dask worker {address}`)"
            )
        return None

    def result(self, jobid: str) -> JobStatus | None:
        """Return how a job submitted here ended (COMPLETED, FAILED, BLOCKED, CANCELLED).

        ``None`` when the job has not ended yet or this instance did not
        submit it. BLOCKED: the job did not run because a job it depends on
        did not complete. A job Dask gave up on (its workers kept dying) is
        FAILED.
        """
        state = self._final_state(jobid)
        if state is None:
            return None
        return JobStatus(jobid, state, self._names.get(jobid))

    def _final_state(self, jobid: str) -> JobState | None:
        if jobid in self._ended:
            return self._ended[jobid]
        future = self._futures.get(jobid)
        if future is None:
            return None
        status = future.status
        if status == "finished":
            outcome, code = future.result()
            if outcome == _RAN:
                state = JobState.COMPLETED if code == 0 else JobState.FAILED
            elif outcome == _STOPPED or jobid in self._killed:
                state = JobState.CANCELLED
            else:
                state = JobState.BLOCKED
        elif status == "error":
            # Dask hands a parent's error on to its dependents: those never ran.
            state = JobState.BLOCKED if self._parent_failed(jobid) else JobState.FAILED
        elif status == "cancelled":
            if jobid not in self._killed and self._parent_failed(jobid):
                state = JobState.BLOCKED
            else:
                state = JobState.CANCELLED
        else:  # pending, or lost and about to be recomputed
            return None
        self._ended[jobid] = state
        return state

    def _parent_failed(self, jobid: str) -> bool:
        for dep in self._deps.get(jobid, []):
            state = self._final_state(dep)
            if state is not None and state is not JobState.COMPLETED:
                return True
        return False

    # -- status and kills -------------------------------------------------

    def _pending(self) -> list[str]:
        return [j for j in self._futures if self._final_state(j) is None]

    def get_status(self, jobid: str) -> JobStatus | None:
        """Return QUEUED, RUNNING or BLOCKED for a held job, ``None`` otherwise."""
        return self.get_statuses([jobid]).get(jobid)

    def get_statuses(self, jobids: Iterable[str]) -> dict[str, JobStatus]:
        """Status of every held job among `jobids`, asking the workers once what runs.

        A job is RUNNING while its subprocess lives on a worker, QUEUED while
        it waits, and BLOCKED (until killed) when it did not run because a job
        it depends on did not complete. Jobs of other processes are unknown.
        """
        jobids = [str(j) for j in jobids]
        out: dict[str, JobStatus] = {}
        waiting = []
        for jobid in jobids:
            if jobid not in self._futures:
                continue
            state = self._final_state(jobid)
            if state is None:
                waiting.append(jobid)
            elif state is JobState.BLOCKED and jobid not in self._killed:
                out[jobid] = JobStatus(jobid, state, self._names.get(jobid))
        if waiting:
            running = self._running_keys()
            for jobid in waiting:
                busy = running is None or jobid in running
                state = JobState.RUNNING if busy else JobState.QUEUED
                out[jobid] = JobStatus(jobid, state, self._names.get(jobid))
        return {j: out[j] for j in jobids if j in out}

    def _running_keys(self) -> set[str] | None:
        """Keys whose subprocess runs on some worker; None when the workers do not answer."""
        try:
            answers = self.client.run(_running_keys)
        except Exception:
            return None
        return {k for keys in answers.values() for k in keys}

    def get_jobs(self) -> list[str]:
        """Return the ids of this instance's jobs that are queued, running or blocked."""
        held = []
        for jobid in self._futures:
            state = self._final_state(jobid)
            if state is None or (state is JobState.BLOCKED and jobid not in self._killed):
                held.append(jobid)
        return held

    def kill(self, jobid: str) -> None:
        """Cancel a job; a running job's subprocess is stopped. Unknown ids are ignored."""
        self.kill_jobs([jobid])

    def kill_jobs(self, jobids: Iterable[str]) -> None:
        """Cancel several jobs with one request (their dependents end BLOCKED)."""
        pending = []
        for jobid in (str(j) for j in jobids):
            if jobid not in self._futures:
                continue
            state = self._final_state(jobid)
            if state is None:
                pending.append(jobid)
                self._killed.add(jobid)
            elif state is JobState.BLOCKED:
                self._killed.add(jobid)
                self._ended[jobid] = JobState.CANCELLED
        if pending:
            self.client.cancel([self._futures[j] for j in pending])

    def _cancel_all(self) -> None:
        """Cancel every job not ended and wait until the workers stopped their subprocesses."""
        pending = self._pending()
        if not pending or self._client is None:
            return
        try:
            self.kill_jobs(pending)
            deadline = time.monotonic() + self.grace + 5.0
            wanted = set(pending)
            while time.monotonic() < deadline:
                running = self._running_keys()
                if running is not None and not (running & wanted):
                    break
                time.sleep(0.1)
        except Exception:
            # The client may be gone with the interrupt; the tasks then notice
            # that their futures were released and stop by themselves.
            pass
        for jobid in pending:
            self._ended[jobid] = JobState.CANCELLED

    # -- lifetime ---------------------------------------------------------

    def shutdown(self, cancel: bool = False) -> None:
        """Close the client and the embedded cluster.

        With `cancel`, first cancel the jobs that have not ended and wait for
        their subprocesses to stop. Jobs still queued or running when the
        client closes are released by Dask (cancelled) either way. The
        instance can submit again afterwards (with a new client).
        """
        if cancel:
            self._cancel_all()
        for jobid in list(self._futures):
            if self._final_state(jobid) is None:
                self._ended[jobid] = JobState.CANCELLED
        self._futures.clear()
        client, cluster = self._client, self._cluster
        self._client, self._cluster = None, None
        # Client first: it releases the tasks. The embedded cluster closes
        # once its scheduler has forgotten them, so that removing its workers
        # does not "lose already computed tasks" (a warning per worker).
        try:
            if client is not None and self._own_client:
                if client.status in ("running", "newly-created"):
                    client.close()
                else:
                    # The scheduler is gone (and reported): do not wait for it, and
                    # spare the user distributed's log of the reconnection it gives up.
                    import logging

                    logger = logging.getLogger("distributed.client")
                    level = logger.level
                    logger.setLevel(logging.CRITICAL)
                    try:
                        client.close(timeout=2)
                    finally:
                        logger.setLevel(level)
        finally:
            if cluster is not None:
                _wait_until_released(cluster, 5.0)
                cluster.close()

    def __enter__(self) -> Dask:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(cancel=exc_type is not None)

    def __getstate__(self) -> dict:
        # A task file's scheduler may be pickled with its task; connections are not.
        state = self.__dict__.copy()
        state.update(_client=None, _own_client=False, _cluster=None, _futures={}, notify=None)
        return state

    def __repr__(self) -> str:
        return f"Dask({self.address!r})"


def _wait_until_released(cluster, timeout: float) -> None:
    """Wait until the in-process scheduler of `cluster` holds no task (at most `timeout` s)."""
    scheduler = getattr(cluster, "scheduler", None)
    tasks = getattr(scheduler, "tasks", None)
    if tasks is None:
        return
    deadline = time.monotonic() + timeout
    while tasks and time.monotonic() < deadline:
        time.sleep(0.02)


def _shutdown_at_exit(ref) -> None:
    """Close a Dask instance's client and cluster when the interpreter exits (if still open)."""
    sched = ref()
    if sched is not None and sched._client is not None:
        with contextlib.suppress(Exception):
            sched.shutdown()


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT while the embedded cluster starts its worker processes.

    The workers inherit the disposition: Ctrl-C in the terminal then reaches
    only this process, which cancels the jobs and lets the workers stop them
    gracefully, instead of killing the workers (and their jobs) with it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _is_cluster(obj: Any) -> bool:
    """Whether `obj` looks like a distributed cluster or Client (without importing dask)."""
    return hasattr(obj, "scheduler_address") or type(obj).__name__ == "Client"


def _new_key(name: str | None) -> str:
    """Return a key no other job has: the job name (for the dashboard) plus a uuid."""
    label = "".join(c if c.isalnum() or c in "-_.:" else "_" for c in (name or "job"))
    return f"psyrun-{label}-{uuid.uuid4().hex[:16]}"


# -- worker side -------------------------------------------------------------


def _running_keys(dask_worker=None) -> list[str]:
    """Keys of the jobs whose subprocess this worker process runs (for Client.run)."""
    with _RUNNING_LOCK:
        return [k for k, p in _RUNNING.items() if p.poll() is None]


def _started_on(output_filename: str, key: str) -> str | None:
    """Return the worker that started task `key` (its log says so) while it has not ended."""
    if not output_filename:
        return None
    attempted, recorded = _recorded_status(output_filename, key)
    if not attempted or recorded is not None:
        return None
    try:
        with open(output_filename, "rb") as f:
            first = f.readline().decode(errors="replace")
    except OSError:
        return None
    return first.split(" on worker ", 1)[1].split()[0] if " on worker " in first else "?"


#: States of a Dask worker that is going away (for example its scheduler is gone).
_WORKER_GONE = frozenset({"closing", "closed", "failed", "stopping", "stopped"})


def _task_wanted(worker, key: str) -> bool:
    """Return False once Dask cancelled or released the task, or the worker is closing."""
    if worker is None:
        return True
    if getattr(getattr(worker, "status", None), "name", "running") in _WORKER_GONE:
        # A worker that lost its scheduler closes but would let the job run to
        # its end: nobody waits for it any more.
        return False
    ts = worker.state.tasks.get(key)
    return ts is not None and ts.state not in ("cancelled", "released", "forgotten")


def _recorded_status(output_filename: str, key: str) -> tuple[bool, int | None]:
    """Return (attempted before, exit status recorded in the log) of task `key`."""
    try:
        with open(output_filename, "rb") as f:
            first = f.readline().decode(errors="replace")
            if not first.startswith(_HEADER.format(key=key)):
                return False, None
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return False, None
    trailer = _TRAILER.format(key=key)
    if tail and tail[-1].startswith(trailer):
        with contextlib.suppress(ValueError, IndexError):
            return True, int(tail[-1][len(trailer) :].split()[0])
    return True, None


def _execute(
    key: str,
    argv: list[str],
    output_filename: str,
    cwd: str,
    client_python: str,
    grace: float,
    *parents: tuple[str, int | None],
) -> tuple[str, int | None]:
    """Run one job on a Dask worker; the Dask task of every psyrun job."""
    if any(p != (_RAN, 0) for p in parents):
        return _BLOCKED, None
    attempted, recorded = _recorded_status(output_filename, key)
    if recorded is not None:
        # Dask lost this finished task's result with its worker: do not run twice.
        return _RAN, recorded
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if not os.path.exists(argv[0]) and argv[0] == client_python:
        argv = [sys.executable, *argv[1:]]
    if sys.platform.startswith("linux"):
        argv = [sys.executable, "-I", "-S", "-c", _BOOT, str(os.getpid()), *argv]
    where = getattr(worker, "address", "?")
    note = "started again" if attempted else "started"
    with open(output_filename, "ab" if attempted else "wb") as out:
        out.write(
            f"{_HEADER.format(key=key)}{note} on worker {where} at {time.time():.3f}\n".encode()
        )
    # O_APPEND: the job's output and the trailer below never overwrite each other.
    with open(output_filename, "ab") as out:
        try:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd if os.path.isdir(cwd) else None,
                start_new_session=True,
            )
        except OSError as e:
            out.write(f"psyrun: cannot run {argv!r}: {e}\n".encode())
            out.write(f"{_TRAILER.format(key=key)}127 after 0 s\n".encode())
            return _RAN, 127
        started = time.monotonic()
        with _RUNNING_LOCK:
            _RUNNING[key] = proc
        try:
            while True:
                try:
                    code = proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if not _task_wanted(worker, key):
                    return _STOPPED, _stop(proc, grace)
        except BaseException:
            _stop(proc, grace)
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.pop(key, None)
        elapsed = time.monotonic() - started
        out.write(f"{_TRAILER.format(key=key)}{code} after {elapsed:.3f} s\n".encode())
    return _RAN, code


def _stop(proc: subprocess.Popen, grace: float) -> int:
    """SIGTERM the job's process group, SIGKILL it after `grace` seconds; reap it."""
    for sig, timeout in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()
