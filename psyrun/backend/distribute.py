"""DistributeBackend: split the rows evenly over process jobs, then merge.

``split -> process 0..n-1 -> merge`` with ``n = min(max_jobs, ceil(rows /
min_items))``. Process job ``i`` evaluates rows ``[len*i//n, len*(i+1)//n)``
of the split's snapshot in blocks, appending to ``out/<i>.partial.pkl`` at
least every :data:`FLUSH_SECONDS`, and renames the file to ``out/<i>.pkl``
when the range is done. A job started again (requeued) after a crash resumes
after the rows its partial file already holds. A job that knows its time
limit stops taking rows before it (:mod:`psyrun.run.walltime`), keeps its
``.partial`` part and ends as partial. Parts are PickleStore files
whatever the task's store (a kill loses only the rows not yet appended); the
merge writes the result with the task's store.
"""

from __future__ import annotations

import os
import time

from psyrun.atomic import remove_path, replace_path
from psyrun.backend.splitmerge import SplitMergeBackend
from psyrun.results.merge import load_params, missing_rows
from psyrun.run.fail_fast import FailFast
from psyrun.run.failures import RowFailures, RowsFailed
from psyrun.run.snapshot import Snapshot
from psyrun.run.walltime import JobPartial, Walltime

__all__ = ["DistributeBackend"]

#: Seconds of evaluated results gathered in memory at most before one append:
#: a kill or a cluster time limit loses at most about this much work.
FLUSH_SECONDS = 2.0
#: Rows gathered in memory at most before one append.
MAX_PENDING = 2**18
#: Bounds on the rows evaluated at once; the size adapts to the time a row takes.
MIN_BLOCK = 1
MAX_BLOCK = 16384


class DistributeBackend(SplitMergeBackend):
    """Split the parameter space into equal row ranges, one per process job.

    Jobs: ``<task>:split``, ``<task>:process:<i>`` and ``<task>:merge``, with
    logs ``<workdir>/<task>/<task>:<job>.log``. See the module docstring for
    the files they write.

    Parameters
    ----------
    task : psyrun.tasks.TaskDef
        The task to run.
    """

    def _resume_rows(self, snapshot: Snapshot, start: int, stop: int, partial: str):
        """Rows of ``start:stop`` the partial file of a requeued job lacks (None: all)."""
        if not os.path.exists(partial):
            return None
        try:
            done = load_params(self.part_store, [partial], snapshot.keys)
        except Exception as exc:
            self._log(f"discarding unreadable {partial}: {type(exc).__name__}: {exc}")
            remove_path(partial)
            return None
        if not done:
            return None
        from psyrun.pspace import Param

        todo = start + missing_rows(Param(**snapshot.arrays(start, stop)), done)
        self._log(f"resuming: {stop - start - len(todo)} rows already in {partial}")
        return todo

    def run_process(self, index: int, n_jobs: int) -> int:
        """Evaluate row range `index` of `n_jobs` of the snapshot."""
        p = self.paths
        snapshot = Snapshot.read(p.pspace)
        n = len(snapshot)
        start, stop = n * index // n_jobs, n * (index + 1) // n_jobs
        final, partial = p.part(index), p.partial(index)
        if os.path.exists(final):
            self._log(f"rows {start}:{stop} are already done ({final})")
            return 0
        todo = self._resume_rows(snapshot, start, stop, partial)
        extra = self.task.run_setup(index)
        failures = RowFailures()
        job_name = p.job_name("process", index)
        # The job's time limit, when it has one (psyrun.run.walltime); None: no limit known.
        walltime = Walltime.for_job(self.task, getattr(self, "started", None))
        guard = self.row_guard(job_name)
        stopped = False
        n_todo = stop - start if todo is None else len(todo)
        pending: list[dict] = []
        pending_rows = evaluated = 0
        checked = False
        last_flush = time.monotonic()
        # Blocks start small and grow while rows are cheap, so that results
        # reach the part file about every FLUSH_SECONDS even for slow rows.
        vectorized = self.task.vectorized
        block = self.vector_block if vectorized else MIN_BLOCK
        lo = 0
        try:
            while lo < n_todo:
                guard.check_stopped()  # another job failed fast
                hi = min(lo + block, n_todo)
                if walltime is not None:
                    fit = walltime.rows_that_fit(hi - lo)
                    if fit < 1:
                        stopped = True
                        break
                    hi = lo + fit
                t0 = time.monotonic()
                if todo is None:
                    arrays = snapshot.arrays(start + lo, start + hi)
                else:
                    arrays = snapshot.take(todo[lo:hi])
                try:
                    result = self.evaluate(arrays, extra, failures, job_name)
                except FailFast as exc:
                    if getattr(exc, "block", None):
                        pending.append(exc.block)
                    raise
                now = time.monotonic()
                per_row = (now - t0) / (hi - lo)
                if walltime is not None:
                    walltime.rows_done(hi - lo, now - t0)
                evaluated += hi - lo
                lo = hi
                if result:
                    if not checked:
                        self.check_block(result)
                        checked = True
                    pending.append(result)
                    pending_rows += len(next(iter(result.values())))
                if pending and (now - last_flush >= FLUSH_SECONDS or pending_rows >= MAX_PENDING):
                    # Emptied first: a stop during the append must not append it twice.
                    flushed, pending, pending_rows, last_flush = pending, [], 0, now
                    self._append(partial, flushed)
                    self.report_rows(job_name, evaluated)
                    if walltime is not None:
                        walltime.flushed(time.monotonic() - now)
                if not vectorized:
                    target = FLUSH_SECONDS / 4 / per_row if per_row > 0 else MAX_BLOCK
                    block = int(max(MIN_BLOCK, min(MAX_BLOCK, 2 * block, target)))
            if not stopped and pending and not os.path.exists(partial):
                # The whole range in one write: straight to the finished part
                # (written to a temporary name and renamed by the store).
                flushed, pending = pending, []
                self._append(final, flushed)
        finally:
            # Also on SIGTERM (SystemExit) or Ctrl-C: keep what was evaluated.
            self._append(partial, pending)
            self.report_rows(job_name, evaluated)
        if stopped:
            # The part stays partial: a requeued job resumes it, -c evaluates the rest.
            raise JobPartial(evaluated, n_todo - lo, walltime, failures.count)
        if os.path.exists(partial):
            # Not synced: a partial part that a crash leaves under its old name
            # is folded into the result by `psy run -c` just the same.
            replace_path(partial, final, sync=False)
        self._log(f"evaluated rows {start}:{stop} ({stop - start - failures.count} results)")
        if failures.count:
            raise RowsFailed(failures)
        return 0

    def _append(self, filename: str, blocks: list[dict]) -> None:
        if blocks:
            from psyrun.mapper import concatenate_results

            self.part_store.append(
                filename, blocks[0] if len(blocks) == 1 else concatenate_results(blocks)
            )
