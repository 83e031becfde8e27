"""DistributeBackend: split the rows evenly over process jobs, then merge.

``split -> process 0..n-1 -> merge`` with ``n = min(max_jobs, ceil(rows /
min_items))``. Process job ``i`` evaluates rows ``[len*i//n, len*(i+1)//n)``
of the split's snapshot in blocks, appending to ``out/<i>.partial.pkl`` at
least every :data:`FLUSH_SECONDS`, and renames the file to ``out/<i>.pkl``
when the range is done. A job started again (requeued) after a crash resumes
after the rows its partial file already holds. A job that knows its time
limit stops taking rows before it (:mod:`psyrun.run.walltime`), keeps its
``.partial`` part and ends as partial. Parts are files of the task's own
store when its appends survive a kill and it reads chunks (H5Store,
ZarrStore: ``out/<i>.h5``, ``out/<i>.zarr``), else PickleStore files; either
way a kill loses only the rows not yet appended. A block the task's store
refuses goes to a PickleStore part beside it (``out/<i>.partial.pkl``), which
the merge sets aside like any row the store cannot hold. The ranges are
disjoint, so the merge of a run without an earlier result copies the parts
chunk by chunk without matching rows.
"""

from __future__ import annotations

import os
import time

from psyrun.atomic import replace_path
from psyrun.backend.splitmerge import SplitMergeBackend, store_for_parts
from psyrun.paths import PART_EXT
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

    parts_are_disjoint = True

    def __init__(self, task) -> None:
        super().__init__(task)
        #: The store of this backend's part files (:func:`store_for_parts`).
        self.parts_format = store_for_parts(self.store)

    def _part_names(self, index: int) -> tuple[str, str]:
        """``(finished, partial)`` names of process job `index`'s part, in the parts' format."""
        p = self.paths
        ext = self.parts_format.ext
        if ext == PART_EXT:
            return p.part(index), p.partial(index)
        return (
            os.path.join(p.out_dir, f"{index}{ext}"),
            os.path.join(p.out_dir, f"{index}.partial{ext}"),
        )

    def _resume_rows(self, snapshot: Snapshot, start: int, stop: int, partial: str):
        """Rows of ``start:stop`` the partial files of a requeued job lack (None: all)."""
        found = [
            path for path in (partial, self.paths.partial(self._index)) if os.path.exists(path)
        ]
        done_parts = []
        for path in dict.fromkeys(found):
            try:
                done_parts.append(
                    load_params(self.store_for(path), [path], snapshot.keys, strict=True)
                )
            except Exception as exc:
                self._log(f"discarding unreadable {path}: {type(exc).__name__}: {exc}")
                self.store_for(path).remove(path)
        done_parts = [d for d in done_parts if d]
        if not done_parts:
            return None
        from psyrun.results.merge import concat_columns

        done = concat_columns(done_parts, snapshot.keys)
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
        self._index = index
        final, partial = self._part_names(index)
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
            self.parts_format.replace(partial, final)
        aside = p.partial(index)
        if aside != partial and os.path.exists(aside):
            # Rows the task's store refused (see _append); the merge sets them aside.
            replace_path(aside, p.part(index))
        self._log(f"evaluated rows {start}:{stop} ({stop - start - failures.count} results)")
        if failures.count:
            raise RowsFailed(failures)
        return 0

    def _append(self, filename: str, blocks: list[dict]) -> None:
        if not blocks:
            return
        from psyrun.mapper import concatenate_results
        from psyrun.store.base import UnsupportedValueError

        data = blocks[0] if len(blocks) == 1 else concatenate_results(blocks)
        try:
            self.parts_format.append(filename, data)
        except UnsupportedValueError:
            if self.parts_format.ext == PART_EXT:
                raise  # the parts are PickleStore files already: nothing else holds the rows
            # Rows the task's store cannot hold: kept in a PickleStore part
            # (nothing computed is lost); the merge sets them aside.
            self.part_store.append(self.paths.partial(self._index), data)
