"""LoadBalancingBackend: workers pull chunks of rows from a shared counter.

``split -> process 0..max_jobs-1 -> merge``. Each process job starts
``pool_size`` worker processes. A worker calls ``setup(proc_id)`` once, then
repeatedly takes the next chunk of row numbers from a counter file (under a
:class:`psyrun.store.locking.FileLock`), evaluates it and appends the results
to one shared file, ``out/0.partial.pkl`` (under a second lock). Chunks
shrink as the work runs out, so workers finish at about the same time; rows
are written in the order they finish. The shared file is a PickleStore file
whatever the task's store, so a worker killed while appending loses only its
chunk; the merge writes the result with the task's store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback

from psyrun.atomic import atomic_write
from psyrun.backend.splitmerge import SplitMergeBackend
from psyrun.failures import RowFailures, RowsFailed
from psyrun.snapshot import Snapshot
from psyrun.store.locking import FileLock

__all__ = ["LoadBalancingBackend"]

#: Largest chunk of rows a worker takes at once.
MAX_CHUNK = 1024


def read_counter(path: str) -> int:
    """Return the next row to hand out (0 when the counter file is missing or empty)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text else 0


def write_counter(path: str, value: int) -> None:
    """Set the counter (atomically: temporary file, then rename)."""
    with atomic_write(path) as f:
        f.write(str(value))


def claim(path: str, n_rows: int, n_workers: int, max_chunk: int | None = None) -> tuple[int, int]:
    """Take the next chunk ``[start, stop)`` of rows; empty when all are handed out.

    The chunk is a share of what is left (about an eighth per worker), at
    least one row and at most `max_chunk` (default :data:`MAX_CHUNK`).
    """
    max_chunk = MAX_CHUNK if max_chunk is None else max_chunk
    with FileLock(path):
        start = read_counter(path)
        remaining = n_rows - start
        if remaining <= 0:
            return n_rows, n_rows
        size = max(1, min(max_chunk, remaining // (8 * max(1, n_workers))))
        write_counter(path, start + size)
    return start, start + size


class LoadBalancingBackend(SplitMergeBackend):
    """Jobs that pull work from a shared queue of rows, for rows of uneven cost.

    ``max_jobs`` process jobs run ``pool_size`` worker processes each;
    ``setup(proc_id)`` runs once per worker (``proc_id`` from 0 to
    ``max_jobs * pool_size - 1``) and its dict is passed to every ``execute``
    call of that worker; list such keys in ``exclude_from_result`` when
    ``execute`` returns them. Results are appended to one shared file in the
    order they finish.

    Parameters
    ----------
    task : psyrun.tasks.TaskDef
        The task to run.
    """

    uses_pool = True

    def after_split(self) -> None:
        """Reset the row counter for the new snapshot."""
        write_counter(self.paths.counter, 0)

    def run_process(self, index: int, n_jobs: int) -> int:
        """Run ``pool_size`` workers until every row has been handed out."""
        pool_size = self.task.pool_size
        n_workers = n_jobs * pool_size
        children = []
        for w in range(1, pool_size):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child leaves with os._exit
                code = 1
                try:
                    code = self._worker(index * pool_size + w, n_workers)
                except RowsFailed as exc:
                    print(f"psyrun: {exc}", file=sys.stderr, flush=True)
                    code = 3
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children.append(pid)
        failure = None
        try:
            self._worker(index * pool_size, n_workers)
        except RowsFailed as exc:
            failure = exc
        except BaseException:
            # Stopped (SIGTERM, Ctrl-C) or crashed: stop the pool too, leave no orphans.
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            for pid in children:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            raise
        codes = []
        for pid in children:
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
        if any(c not in (0, 3) for c in codes):
            raise RuntimeError(f"worker processes exited with status {codes}")
        if failure is not None:
            raise failure
        if 3 in codes:
            failures = RowFailures()
            failures.first = "see the tracebacks above"
            failures.count = codes.count(3)
            raise RowsFailed(failures)
        return 0

    def _worker(self, proc_id: int, n_workers: int) -> int:
        p = self.paths
        snapshot = Snapshot.read(p.pspace)
        n = len(snapshot)
        extra = self.task.run_setup(proc_id)
        failures = RowFailures()
        out = p.shared_out()
        out_lock = FileLock(out)
        evaluated = 0
        checked = False
        max_chunk = self.vector_block if self.task.vectorized else None
        job_name = p.job_name("process", proc_id // self.task.pool_size)
        while True:
            start, stop = claim(p.counter, n, n_workers, max_chunk)
            if start >= stop:
                break
            result = self.evaluate(snapshot.arrays(start, stop), extra, failures)
            if result:
                if not checked:
                    self.check_block(result)
                    checked = True
                with out_lock:
                    self.part_store.append(out, result)
            evaluated += stop - start
            self.report_rows(f"{job_name}.{proc_id}", evaluated)
        self._log(f"worker {proc_id} evaluated {evaluated} rows")
        if failures.count:
            raise RowsFailed(failures)
        return 0
