"""When the files of a process job reach the disk: at once, or in batches on this machine.

Every file psyrun relies on is synced (file and directory) before it counts
(:mod:`psyrun.atomic`, the stores). A sync costs milliseconds, several per
process job, which is more than the rest of a short local job. Jobs that run
on this machine under ``psy run`` (:class:`~psyrun.scheduler.ImmediateRun`,
:class:`~psyrun.scheduler.LocalPool`) therefore leave the syncs of their
*process* jobs to the scheduler, which syncs the work directory's file system
once every :data:`SYNC_INTERVAL` seconds, before a job that depends on others
(the merge) starts and when the run ends.

What this changes, and what it does not:

* A ``kill -9`` of a job, of ``psy`` or of the merge is not affected: written
  data is in the operating system's cache whether or not it was synced, so
  the job loses at most its rows in flight, as before.
* A crash of the whole machine loses at most the rows the process jobs wrote
  in the last :data:`SYNC_INTERVAL` seconds (their parts can then be short,
  empty or damaged: damage is detected, and ``psy run -c`` evaluates the rows
  again, each once).
* Split and merge jobs, and every job on a cluster or on Dask, sync as before:
  a result replaces its predecessor, and parts are removed, only after the
  new result is on disk.

Job side: :func:`deferred_syncs` (entered by :mod:`psyrun.worker` for a process
job whose scheduler batches, :data:`VARIABLE`) and :func:`fsync` (what the
writers call instead of :func:`os.fsync`). Scheduler side: :class:`SyncBatch`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable, Iterator

__all__ = ["SYNC_INTERVAL", "VARIABLE", "SyncBatch", "deferred", "deferred_syncs", "fsync"]

#: Environment variable a local scheduler sets for its jobs: ``"1"`` when it
#: syncs their files itself (:class:`SyncBatch`).
VARIABLE = "PSYRUN_BATCHED_SYNC"
#: Seconds between two batch syncs at most while jobs end (also how much work a
#: machine crash can take with it, like a process job's own flush interval).
SYNC_INTERVAL = 2.0

_deferred = False


@contextlib.contextmanager
def deferred_syncs(defer: bool = True) -> Iterator[None]:
    """Leave the syncs of this process to its scheduler (:class:`SyncBatch`) in the block.

    Processes forked inside the block (a job's pool workers) defer too.
    """
    global _deferred
    before, _deferred = _deferred, bool(defer)
    try:
        yield
    finally:
        _deferred = before


def deferred() -> bool:
    """Whether this process leaves its syncs to its scheduler."""
    return _deferred


def fsync(fd: int) -> None:
    """Sync the open file `fd`, unless this process leaves syncing to its scheduler."""
    if not _deferred:
        os.fsync(fd)


def _syncfs(directory: str) -> None:
    """Flush the file system holding `directory` (Linux ``syncfs``; elsewhere ``sync``)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syncfs(fd) == 0:
                return
        except (AttributeError, OSError):
            pass
        os.sync()
    finally:
        os.close(fd)


class SyncBatch:
    """The syncs a local scheduler owes the jobs it ran (their work directories).

    Parameters
    ----------
    interval
        Seconds between two syncs at most while jobs keep ending.
    """

    def __init__(self, interval: float = SYNC_INTERVAL) -> None:
        try:
            seconds = float(interval)
        except (TypeError, ValueError):
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(
                f"sync_interval must be a number of seconds >= 0 (or None: every job "
                f"syncs its own files), not {interval!r}"
            )
        self.interval = seconds
        self._owed: set[str] = set()
        self._unsynced: set[str] = set()
        self._last = time.monotonic()

    @staticmethod
    def environment() -> dict[str, str]:
        """Return the variables that tell a job to leave its syncs to this batch."""
        return {VARIABLE: "1"}

    def ended(self, jobid: str, log: str) -> None:
        """Note that job `jobid`, whose log is `log`, ended (its work directory holds the log)."""
        self._owed.add(os.path.dirname(os.path.abspath(log)))
        self._unsynced.add(jobid)
        if time.monotonic() - self._last >= self.interval:
            self.flush()

    def before(self, dependencies: Iterable[str]) -> None:
        """Sync now if a job in `dependencies` ended since the last sync (a job builds on it)."""
        if not self._unsynced.isdisjoint(dependencies):
            self.flush()

    def flush(self) -> None:
        """Sync every file system owed a sync now."""
        owed, self._owed = self._owed, set()
        self._unsynced.clear()
        for directory in sorted(owed):
            with contextlib.suppress(OSError):
                _syncfs(directory)
        self._last = time.monotonic()

    @property
    def owed(self) -> bool:
        """Whether jobs ended since the last sync."""
        return bool(self._owed)
