"""What a process job does around every ``execute`` call: timeout, fail fast, failures on record.

:class:`RowGuard` puts together, for one job (or one LoadBalancing worker):

* :class:`psyrun.run.row_timeout.RowTimer` (the ``row_timeout`` setting),
* :class:`psyrun.run.fail_fast.FailFastWatch` (the ``fail_fast`` setting), and
* the failed rows kept on record (``'error'`` in ``record``,
  :mod:`psyrun.results.failed_rows`).

The backends call :meth:`RowGuard.wrap` on ``execute``, evaluate a block
inside :meth:`RowGuard.armed` with :meth:`RowGuard.on_error` as the
mapper's ``on_error``, then add :meth:`RowGuard.failed_block` to the block's
results.
"""

from __future__ import annotations

import contextlib
import os

from psyrun.run.fail_fast import MARKER, FailFast, FailFastWatch, check_stopped

__all__ = ["FailFast", "RowGuard"]


class RowGuard:
    """The per-row guards of one job process (see the module docstring).

    Parameters
    ----------
    task : psyrun.tasks.TaskDef
        The task (settings ``row_timeout``, ``fail_fast``, ``record``).
    status_dir : str
        The task's ``status/`` directory (the fail-fast marker lives there).
    job : str
        The job's name.
    attempt : int
        The attempt the job evaluates rows for (``psy_attempt``).
    """

    def __init__(self, task, status_dir: str, job: str, attempt: int = 1) -> None:
        from psyrun.run.row_timeout import RowTimer

        self.task = task
        self.job = job
        self.attempt = attempt
        self.pid = os.getpid()
        self.marker = os.path.join(status_dir, MARKER)
        self.timer = None
        if task.row_timeout:
            report = os.path.join(status_dir, f"{job.replace(':', '_')}.watchdog")
            self.timer = RowTimer(task.row_timeout, report if job else None)
        self.watch = FailFastWatch(task.fail_fast, self.marker, job)
        self.keep_failed = "error" in task.record
        self._failed: list = []

    def check_stopped(self) -> None:
        """Raise :class:`FailFast` when another job of the run failed fast."""
        check_stopped(self.marker, self.job)

    def wrap(self, fn):
        """`fn` watched for fail fast and limited by the row timeout."""
        fn = self.watch.wrap(fn)
        return self.timer.wrap(fn) if self.timer is not None else fn

    def armed(self):
        """Context for evaluating a block (installs the row timer)."""
        return self.timer.armed() if self.timer is not None else contextlib.nullcontext()

    def on_error(self, failures):
        """Return the mapper's ``on_error``: count in `failures`, keep on record, fail fast."""

        def on_error(row: dict, exc: Exception) -> None:
            failures.add(row, exc)
            if self.keep_failed:
                self._failed.append((row, exc))
            self.watch.failed(exc)

        return on_error

    def failed_block(self, keys: list[str]) -> dict | None:
        """Return the failed rows since the last call as result columns (None: none kept)."""
        from psyrun.results.failed_rows import failure_block
        from psyrun.results.records import failure_records

        failed, self._failed = self._failed, []
        if not failed:
            return None
        columns = failure_records(self.task.record, self.job, self.attempt, self.task.vectorized)
        return failure_block(
            failed, keys, self.task.exclude_from_result, columns, self.task.vectorized
        )
