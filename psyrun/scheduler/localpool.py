"""LocalPool: run up to n jobs at once on this machine, in dependency order."""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psyrun.durability import SYNC_INTERVAL, SyncBatch
from psyrun.scheduler import _fork
from psyrun.scheduler.base import (
    JobState,
    JobStatus,
    Scheduler,
    check_args,
    normalize_dependencies,
)

# How a dependency that ended this way leaves its dependents: never run.
_BLOCKING = (JobState.FAILED, JobState.CANCELLED, JobState.BLOCKED)


def default_workers() -> int:
    """Return the number of CPUs this process may run on (``os.sched_getaffinity``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_workers(n_workers: int | None) -> int:
    """Return the number of workers `n_workers` asks for (None: :func:`default_workers`).

    Raises
    ------
    TypeError
        When `n_workers` is not an integer.
    ValueError
        When `n_workers` is smaller than 1.
    """
    if n_workers is None:
        return default_workers()
    if isinstance(n_workers, bool):
        n = None
    else:
        try:
            n = operator.index(n_workers)
        except TypeError:
            n = None
    if n is None:
        raise TypeError(
            f"n_workers must be a whole number of parallel jobs (or None for one per CPU), "
            f"got {n_workers!r}"
        )
    if n < 1:
        raise ValueError(
            f"n_workers must be at least 1 (or None for one per CPU), got {n}; "
            "give how many jobs may run at once"
        )
    return n


@dataclass
class _Job:
    argv: list[str]
    log: str
    name: str | None
    deps: list[str]
    state: JobState = JobState.QUEUED
    code: int | None = None


class LocalPool(Scheduler):
    """Run up to `n_workers` jobs at once on this machine, honouring dependencies.

    :meth:`submit` only queues a job and returns its id at once; the jobs run
    in :meth:`wait`, which starts each queued job as soon as a slot is free
    and all its dependencies have COMPLETED, and returns when the jobs asked
    for (and so their dependencies) have ended. Nothing runs outside
    :meth:`wait`, so no job outlives it. A job whose dependency failed, was
    cancelled or was blocked itself is never run: it is BLOCKED.

    Commands of the form ``[sys.executable, '-m', MODULE, *args]`` run in a
    forked child of this process when that is safe (as with
    :class:`~psyrun.scheduler.ImmediateRun`); anything else as a subprocess.

    While :meth:`wait` waits, :attr:`monitor` (when set) is called about
    every :attr:`monitor_interval` seconds. An exception that arrives
    meanwhile (Ctrl-C, a monitor's error) stops every running job (SIGTERM,
    up to `grace` seconds in total for their ``finally`` blocks, then
    SIGKILL), reaps them, marks them CANCELLED and propagates; queued jobs
    stay queued (a later :meth:`wait` runs them, ``shutdown(cancel=True)``
    cancels them).

    Parameters
    ----------
    n_workers
        How many jobs may run at once; default: one per CPU this process may
        use.
    fork
        Allow the forked fast path for ``python -m`` commands.
    grace
        Seconds interrupted jobs get between SIGTERM and SIGKILL.
    sync_interval
        Process jobs leave syncing their files to the pool, which syncs the
        work directory's file system at most every `sync_interval` seconds,
        before a job with dependencies starts and when :meth:`wait` returns
        (:mod:`psyrun.durability`). None: every job syncs its own files.
    """

    #: Jobs run under this process and end with it.
    attached: bool = True
    #: Jobs run on this machine.
    local: bool = True
    #: Arrays are queued one job per index (queueing is cheap).
    supports_arrays: bool = False

    def __init__(
        self,
        n_workers: int | None = None,
        fork: bool = True,
        *,
        grace: float = _fork.DEFAULT_GRACE,
        sync_interval: float | None = SYNC_INTERVAL,
    ) -> None:
        self.n_workers = check_workers(n_workers)
        self.fork = fork
        self.grace = float(grace)
        self.syncs = None if sync_interval is None else SyncBatch(sync_interval)
        self._next_id = 0
        self._jobs: dict[str, _Job] = {}
        self._running: dict[str, _fork.Child] = {}

    def __repr__(self) -> str:
        return f"LocalPool(n_workers={self.n_workers})"

    @property
    def job_slots(self) -> int:
        """Jobs it runs at once (:attr:`n_workers`).

        A task that leaves ``max_jobs`` at its default gets no more process
        jobs than this (:func:`psyrun.run.defaults.local_job_cap`).
        """
        return self.n_workers

    def submit(
        self, args: Sequence[str], output_filename: str, name: str | None = None,
        depends_on: Iterable[str] | None = None, scheduler_args: Mapping[str, Any] | None = None,
    ) -> str:  # fmt: skip
        """Queue a job and return its id at once (see :meth:`Scheduler.submit`).

        It runs in :meth:`wait`. Dependencies this instance did not issue
        (jobs of an earlier run) count as completed. `scheduler_args` are
        accepted and ignored.

        Raises
        ------
        FileNotFoundError
            When the directory of `output_filename` does not exist.
        """
        argv = check_args(args)
        output_filename = os.fspath(output_filename)
        folder = os.path.dirname(os.path.abspath(output_filename))
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"cannot write the log {output_filename!r} of job {name or ''}: "
                f"its directory {folder!r} does not exist"
            )
        jobid = str(self._next_id)
        self._next_id += 1
        deps = [d for d in normalize_dependencies(depends_on) if d in self._jobs]
        job = _Job(argv, output_filename, name, deps)
        if any(self._jobs[d].state in _BLOCKING for d in deps):
            job.state = JobState.BLOCKED
        self._jobs[jobid] = job
        return jobid

    def wait(self, jobids: Iterable[str] | None = None) -> None:
        """Run queued jobs until every job in `jobids` (default: all) has ended.

        At most :attr:`n_workers` jobs run at once; the dependencies of
        `jobids` run too. Unknown ids are ignored.
        """
        wanted = self._with_dependencies(self._jobs if jobids is None else jobids)
        interval = self.monitor_interval
        next_tick = time.monotonic() + interval
        try:
            while True:
                self._block_dependents()
                self._start_ready(wanted)
                if not any(self._jobs[j].state.will_run for j in wanted):
                    return
                if not self._running:  # pragma: no cover - a bug, not a user error
                    raise RuntimeError("LocalPool: queued jobs can never start")
                deadline = next_tick if self.monitor is not None else None
                ended = _fork.wait_any(self._running.values(), deadline=deadline)
                for jobid in [j for j, c in self._running.items() if c in ended]:
                    self._finish(jobid)
                if self.monitor is not None and time.monotonic() >= next_tick:
                    self.monitor()
                    next_tick = time.monotonic() + interval
        except BaseException:
            self._stop(list(self._running))
            raise
        finally:
            if self.syncs is not None:
                self.syncs.flush()

    def _with_dependencies(self, jobids: Iterable[str]) -> list[str]:
        """`jobids` known here and their dependencies, in submission order."""
        todo = [j for j in jobids if j in self._jobs]
        seen = set(todo)
        while todo:
            for dep in self._jobs[todo.pop()].deps:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return [j for j in self._jobs if j in seen]

    def _block_dependents(self) -> None:
        # Dependencies were submitted earlier, so one pass in submission order
        # carries a failure down any chain.
        for job in self._jobs.values():
            if job.state is JobState.QUEUED and any(
                self._jobs[d].state in _BLOCKING for d in job.deps
            ):
                job.state = JobState.BLOCKED

    def _start_ready(self, wanted: list[str]) -> None:
        for jobid in wanted:
            if len(self._running) >= self.n_workers:
                return
            job = self._jobs[jobid]
            if job.state is JobState.QUEUED and all(
                self._jobs[d].state is JobState.COMPLETED for d in job.deps
            ):
                env = None
                if self.syncs is not None:
                    env = self.syncs.environment()
                    # What the jobs before wrote is on disk before a job builds on it.
                    self.syncs.before(job.deps)
                # Registered by start(), so that an interrupt stops it too.
                child = _fork.start(
                    job.argv, job.log, self.fork, lambda c, j=jobid: self._started(j, c), env
                )
                if child.code is not None:  # it could not start: ended already
                    self._finish(jobid)

    def _started(self, jobid: str, child: _fork.Child) -> None:
        self._jobs[jobid].state = JobState.RUNNING
        self._running[jobid] = child

    def _finish(self, jobid: str) -> None:
        child = self._running.pop(jobid)
        job = self._jobs[jobid]
        if self.syncs is not None:
            self.syncs.ended(jobid, job.log)
        job.code = child.code
        job.state = JobState.COMPLETED if child.code == 0 else JobState.FAILED

    def _stop(self, jobids: list[str]) -> None:
        """Stop the running jobs among `jobids`, reap them and mark them CANCELLED."""
        children = {j: self._running[j] for j in jobids if j in self._running}
        try:
            _fork.stop(children.values(), self.grace)
        finally:
            for jobid, child in children.items():
                self._running.pop(jobid, None)
                job = self._jobs[jobid]
                job.state = JobState.CANCELLED
                job.code = child.code
                if self.syncs is not None:
                    self.syncs.ended(jobid, job.log)
            if children and self.syncs is not None:
                self.syncs.flush()

    def kill(self, jobid: str) -> None:
        """Cancel a queued or blocked job, or stop a running one. Others are ignored."""
        self.kill_jobs([jobid])

    def kill_jobs(self, jobids: Iterable[str]) -> None:
        """Cancel several jobs; running ones are stopped together (one grace period)."""
        jobids = [str(j) for j in jobids]
        self._stop([j for j in jobids if j in self._running])
        for jobid in jobids:
            job = self._jobs.get(jobid)
            if job is not None and job.state.in_queue:
                job.state = JobState.CANCELLED
        self._block_dependents()

    def shutdown(self, cancel: bool = False) -> None:
        """With `cancel`, cancel every queued or blocked job and stop running ones.

        Without, nothing is held: no job runs outside :meth:`wait`.
        """
        if cancel:
            self.kill_jobs(self.get_jobs())

    def get_status(self, jobid: str) -> JobStatus | None:
        """Return QUEUED, RUNNING or BLOCKED for a held job, ``None`` otherwise."""
        job = self._jobs.get(jobid)
        if job is None or not job.state.in_queue:
            return None
        return JobStatus(jobid, job.state, job.name)

    def get_jobs(self) -> list[str]:
        """Return the held jobs (queued, running, blocked)."""
        return [j for j, job in self._jobs.items() if job.state.in_queue]

    def result(self, jobid: str) -> JobStatus | None:
        """Return how a job ended (COMPLETED, FAILED, BLOCKED, CANCELLED), None if it has not."""
        job = self._jobs.get(jobid)
        if job is None or job.state.will_run:
            return None
        return JobStatus(jobid, job.state, job.name)

    def returncode(self, jobid: str) -> int | None:
        """Return the exit status of a job that ran (-N: ended by signal N), else ``None``."""
        job = self._jobs.get(jobid)
        return None if job is None else job.code
