"""ImmediateRun: run every job right away, in the submitting process's machine."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
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


class ImmediateRun(Scheduler):
    """Run each job when it is submitted, one after another.

    Not really a scheduler: :meth:`submit` returns once the job has finished.
    A job whose dependencies failed (or were skipped themselves) is not run;
    :meth:`get_status` reports it as :attr:`JobState.BLOCKED`, and
    :meth:`result` tells how every job ended.

    Commands of the form ``[sys.executable, '-m', MODULE, *args]`` run
    ``MODULE`` as ``__main__`` in a forked child of this process (psyrun and
    numpy are already imported there, so a job costs milliseconds instead of
    an interpreter start-up), unless `fork` is False, other threads are
    running (forking a multi-threaded process can deadlock the child) or
    ``MODULE`` cannot be imported here; anything else runs as a subprocess.

    While a job runs, :attr:`monitor` (when set) is called about every
    :attr:`monitor_interval` seconds. An exception that arrives meanwhile
    (Ctrl-C, a monitor's error) stops the job (SIGTERM, up to `grace`
    seconds for its ``finally`` blocks, then SIGKILL), marks it CANCELLED and
    propagates.

    Parameters
    ----------
    fork
        Allow the forked fast path for ``python -m`` commands.
    grace
        Seconds an interrupted job gets between SIGTERM and SIGKILL.
    sync_interval
        Process jobs leave syncing their files to the scheduler, which syncs
        the work directory's file system at most every `sync_interval`
        seconds, before a job with dependencies (the merge) and when
        :meth:`wait` returns (:mod:`psyrun.durability`). None: every job
        syncs its own files, as jobs on a cluster do.
    """

    #: Jobs run under this process and end with it.
    attached: bool = True
    #: Jobs run on this machine.
    local: bool = True
    #: Jobs it runs at once. A task that leaves ``max_jobs`` at its default
    #: gets no more process jobs than this (:func:`psyrun.run.defaults.local_job_cap`):
    #: jobs run one after another here, so more of them only cost more.
    job_slots: int = 1

    def __init__(
        self,
        fork: bool = True,
        *,
        grace: float = _fork.DEFAULT_GRACE,
        sync_interval: float | None = SYNC_INTERVAL,
    ) -> None:
        self.fork = fork
        self.grace = float(grace)
        self.syncs = None if sync_interval is None else SyncBatch(sync_interval)
        self._next_id = 0
        # id -> (state, name, exit status or None when skipped)
        self._jobs: dict[str, tuple[JobState, str | None, int | None]] = {}

    def submit(
        self, args: Sequence[str], output_filename: str, name: str | None = None,
        depends_on: Iterable[str] | None = None, scheduler_args: Mapping[str, Any] | None = None,
    ) -> str:  # fmt: skip
        """Run the job now and return its id (see :meth:`Scheduler.submit`).

        `scheduler_args` are accepted and ignored.
        """
        argv = check_args(args)
        output_filename = os.fspath(output_filename)
        jobid = str(self._next_id)
        self._next_id += 1

        # Ids this instance never issued (earlier psy runs) count as finished.
        failed_deps = [
            d
            for d in normalize_dependencies(depends_on)
            if d in self._jobs and self._jobs[d][0] is not JobState.COMPLETED
        ]
        if failed_deps:
            self._jobs[jobid] = (JobState.BLOCKED, name, None)
            return jobid
        if self.syncs is not None:
            # What the jobs before wrote is on disk before a job builds on it.
            self.syncs.before(normalize_dependencies(depends_on))

        started: list[_fork.Child] = []
        env = self.syncs.environment() if self.syncs is not None else None
        try:
            # Registered by start(), so that an interrupt right after still stops it.
            child = _fork.start(argv, output_filename, self.fork, started.append, env)
            if self.monitor is None:
                code = child.wait()
            else:
                next_tick = time.monotonic() + self.monitor_interval
                while not _fork.wait_any([child], deadline=next_tick):
                    self.monitor()
                    next_tick = time.monotonic() + self.monitor_interval
                code = child.code
        except BaseException:
            if not started:  # it never ran (the log could not be opened, ...)
                raise
            _fork.stop(started, self.grace)
            self._jobs[jobid] = (JobState.CANCELLED, name, started[0].code)
            self._ended(jobid, output_filename)
            raise
        self._ended(jobid, output_filename)
        state = JobState.COMPLETED if code == 0 else JobState.FAILED
        self._jobs[jobid] = (state, name, code)
        return jobid

    def _ended(self, jobid: str, log: str) -> None:
        if self.syncs is not None:
            self.syncs.ended(jobid, log)

    def wait(self, jobids: Iterable[str] | None = None) -> None:
        """Sync what the jobs wrote; every job has ended when :meth:`submit` returns."""
        if self.syncs is not None:
            self.syncs.flush()

    def shutdown(self, cancel: bool = False) -> None:
        """Sync what the jobs wrote; nothing else is held (no job outlives its :meth:`submit`)."""
        if self.syncs is not None:
            self.syncs.flush()

    def kill(self, jobid: str) -> None:
        """Forget a skipped job; finished jobs cannot be killed (nothing to do)."""
        entry = self._jobs.get(jobid)
        if entry is not None and entry[0] is JobState.BLOCKED:
            self._jobs[jobid] = (JobState.CANCELLED, entry[1], None)

    def get_status(self, jobid: str) -> JobStatus | None:
        """Return BLOCKED for a skipped job, ``None`` otherwise (every job has finished)."""
        entry = self._jobs.get(jobid)
        if entry is None or not entry[0].in_queue:
            return None
        return JobStatus(jobid, entry[0], entry[1])

    def get_jobs(self) -> list[str]:
        """Return the skipped jobs (nothing is ever queued or running)."""
        return [j for j, (state, _, _) in self._jobs.items() if state.in_queue]

    def result(self, jobid: str) -> JobStatus | None:
        """Return how a job submitted here ended: COMPLETED, FAILED, BLOCKED or CANCELLED."""
        entry = self._jobs.get(jobid)
        if entry is None:
            return None
        return JobStatus(jobid, entry[0], entry[1])

    def returncode(self, jobid: str) -> int | None:
        """Return the exit status of a job that ran (``None`` if it was skipped or is unknown).

        A job ended by signal N has exit status -N.
        """
        entry = self._jobs.get(jobid)
        return None if entry is None else entry[2]
