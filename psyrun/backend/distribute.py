"""DistributeBackend: split the rows evenly over process jobs, then merge.

``split -> process 0..n-1 -> merge`` with ``n = min(max_jobs, ceil(rows /
min_items))``. Process job ``i`` evaluates rows ``[len*i//n, len*(i+1)//n)``
of the split's snapshot in blocks, appending each block to
``out/<i>.partial.pkl``, and renames the file to ``out/<i>.pkl`` when the
range is done. A job started again (requeued) after a crash resumes after
the rows its partial file already holds. Parts are PickleStore files whatever
the task's store (a kill loses only the rows being appended); the merge
writes the result with the task's store.
"""

from __future__ import annotations

import os
import time

from psyrun.backend._splitmerge import (
    MAX_BLOCK,
    MIN_BLOCK,
    RowFailures,
    RowsFailed,
    Snapshot,
    SplitMergeBackend,
    call_setup,
    evaluate_block,
    load_params,
    missing_rows,
)
from psyrun.paths import remove_path

__all__ = ["DistributeBackend"]

#: Seconds of evaluated results gathered in memory before one append.
FLUSH_SECONDS = 1.0
#: Rows gathered in memory at most before one append.
MAX_PENDING = 65536


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

    kind = "distribute"

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
        todo = None  # None: the whole range
        if os.path.exists(partial):
            # Requeued after a crash: evaluate only rows the partial file lacks.
            try:
                done = load_params(self.part_store, [partial], snapshot.keys)
            except Exception as exc:
                self._log(f"discarding unreadable {partial}: {type(exc).__name__}: {exc}")
                remove_path(partial)
                done = {}
            if done:
                from psyrun.pspace import Param

                todo = start + missing_rows(Param(**snapshot.arrays(start, stop)), done)
                self._log(f"resuming: {stop - start - len(todo)} rows already in {partial}")
        extra = call_setup(self.task, index)
        failures = RowFailures()
        block = min(MAX_BLOCK, max(MIN_BLOCK, (stop - start) // 8))
        keys = snapshot.keys
        n_todo = stop - start if todo is None else len(todo)
        # Results are appended about every FLUSH_SECONDS (or MAX_PENDING rows): an
        # append can cost a file sync, and a crash loses at most that much work.
        pending: list[dict] = []
        pending_rows = 0
        last_flush = time.monotonic()
        for lo in range(0, n_todo, block):
            hi = min(lo + block, n_todo)
            if todo is None:
                arrays = snapshot.arrays(start + lo, start + hi)
            else:
                arrays = snapshot.take(todo[lo:hi])
            result = evaluate_block(self.task, arrays, keys, extra, failures)
            if result:
                pending.append(result)
                pending_rows += hi - lo
            now = time.monotonic()
            if pending and (now - last_flush >= FLUSH_SECONDS or pending_rows >= MAX_PENDING):
                self._append(partial, pending)
                pending, pending_rows, last_flush = [], 0, now
        self._append(partial, pending)
        if os.path.exists(partial):
            os.replace(partial, final)
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
