"""LoadBalancingBackend: workers pull chunks of rows from a shared claims log.

``split -> process 0..max_jobs-1 -> merge``. Each process job starts
``pool_size`` worker processes. A worker calls ``setup(proc_id)`` once, then
repeatedly claims the next chunk of row numbers, evaluates it and appends the
results to a part file of its own, ``out/<k>.partial.pkl``. Chunks shrink as
the work runs out, so workers finish at about the same time.

Claims are durable and attributable (:class:`ClaimLog`): every claim is a
line in ``in/counter`` naming the worker (host, pid, job) that took it, and a
second line records that its results are in the worker's part. A worker that
starts (a job run again after a requeue or a lost Dask worker), and every
worker once all rows are handed out, takes over the unfinished claims of
workers that are dead, so no row is lost with a worker; the part of the dead
worker tells whether its last chunk reached the file, so no row is evaluated
twice either.

Part files are PickleStore files whatever the task's store, so a worker killed
while appending loses only that chunk; the merge writes the result with the
task's store.

A job that knows its time limit (:mod:`psyrun.run.walltime`): each worker claims
only rows that finish before it (with the margin) and stops claiming when none
would; the job then ends as partial. Rows not handed out stay in the claims
log for ``psy run -c`` (or the next round).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field

from psyrun.atomic import atomic_write
from psyrun.backend.splitmerge import SplitMergeBackend
from psyrun.run import fail_fast
from psyrun.run.fail_fast import FailFast
from psyrun.run.failures import RowFailures, RowsFailed
from psyrun.run.lease import host_id, process_alive, start_ticks
from psyrun.run.snapshot import Snapshot
from psyrun.run.walltime import JobPartial, Walltime
from psyrun.store.locking import FileLock

__all__ = ["ClaimLog", "LoadBalancingBackend", "Owner"]

#: Largest chunk of rows a worker takes at once.
MAX_CHUNK = 1024
#: Exit status of a pool worker that stopped claiming before the job's time limit.
EXIT_PARTIAL = 4
#: Exit status of a pool worker that failed fast (psyrun.run.fail_fast).
EXIT_FAIL_FAST = 5
#: Bytes read from the end of the claims log to find the next row to hand out.
_TAIL = 4096


@dataclass(frozen=True)
class Owner:
    """Who holds claims: one worker process of one attempt of one process job.

    Attributes
    ----------
    host : str
        Host name and boot id.
    pid : int
        The worker process.
    start : int or None
        When that process started (tells a reused pid apart).
    job : str
        The process job's name (``<task>:process:<i>``).
    attempt : str
        The job's main process (``host/pid/start``): one run of the job.
    """

    host: str
    pid: int
    start: int | None
    job: str
    attempt: str

    @classmethod
    def this_process(cls, job: str, attempt: str | None = None) -> Owner:
        """Return the owner for the calling process (`attempt`: its job's main process)."""
        host, pid = host_id(), os.getpid()
        start = start_ticks(pid)
        return cls(host, pid, start, job, attempt or f"{host}/{pid}/{start}")

    def is_dead(self, viewer: Owner) -> bool:
        """Whether this owner has surely stopped, as far as `viewer` can tell.

        On the viewer's host the process table answers. Elsewhere only one
        thing is certain: the owner belongs to an earlier attempt of the
        viewer's own job (a batch system or Dask runs one attempt of a job at
        a time, and a job's pool workers die with it).
        """
        if self.host == viewer.host:
            if self.pid == viewer.pid:
                return False
            return not process_alive(self.pid, self.start)
        return self.job == viewer.job and self.attempt != viewer.attempt


@dataclass
class Claim:
    """Rows ``[start, stop)`` held by worker number `owner`; `done` once they are in its part."""

    start: int
    stop: int
    owner: int
    done: bool = False


@dataclass
class LogState:
    """What the claims log says (see :meth:`ClaimLog.scan`)."""

    owners: dict[int, Owner] = field(default_factory=dict)
    claims: dict[int, Claim] = field(default_factory=dict)
    #: Rows of each worker's part file after its last recorded append.
    part_rows: dict[int, int] = field(default_factory=dict)
    next_row: int = 0


class ClaimLog:
    """The durable record of which worker holds which rows of a LoadBalancing run.

    One line of JSON per event, appended under a file lock; every line also
    carries the next row to hand out, so a fresh claim reads only the end of
    the file. Events:

    * ``{"w": k, ...}`` worker `k` starts (its :class:`Owner`);
    * ``{"c": [start, stop], "k": k}`` worker `k` takes rows ``start:stop``
      (a fresh chunk, or one taken over from a dead worker);
    * ``{"d": start, "k": k, "rows": n}`` the results of the claim at `start`
      are in worker `k`'s part, which holds `n` rows from then on.

    A worker appends the results of one claim at a time and records them
    afterwards, so a dead worker has at most one claim that reached its part
    without the record: its part then holds more rows than recorded.

    Parameters
    ----------
    path : str
        The log file (``in/counter``).
    n_rows : int
        Rows of the run's snapshot.
    part_of : callable
        Worker number -> its part file.
    count_rows : callable
        Part file -> rows it holds (0 when it does not exist).
    """

    def __init__(self, path: str, n_rows: int, part_of, count_rows) -> None:
        self.path = path
        self.n_rows = n_rows
        self.part_of = part_of
        self.count_rows = count_rows
        self.lock = FileLock(path)
        self.me: Owner | None = None
        self.k: int | None = None
        self._look_for_dead = True

    # -- reading -------------------------------------------------------------

    @staticmethod
    def _events(text: str):
        for line in text.split("\n"):
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill: its writer never went on
            if isinstance(event, dict):
                yield event

    def _tail_next(self) -> tuple[int, bool]:
        """Return (next row to hand out, whether the file ends with a complete line)."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - _TAIL))
                tail = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return 0, True
        complete = not tail or tail.endswith("\n")
        for event in reversed(list(self._events(tail))):
            if "n" in event:
                return int(event["n"]), complete
        if len(tail) < _TAIL:
            return 0, complete
        return self.scan().next_row, complete

    def scan(self) -> LogState:
        """Read the whole log."""
        state = LogState()
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return state
        for event in self._events(text):
            try:
                if "w" in event:
                    o = event["o"]
                    state.owners[int(event["w"])] = Owner(
                        o["host"], int(o["pid"]), o.get("start"), o["job"], o["attempt"]
                    )
                elif "c" in event:
                    start, stop = (int(v) for v in event["c"])
                    state.claims[start] = Claim(start, stop, int(event["k"]))
                elif "d" in event:
                    claim = state.claims.get(int(event["d"]))
                    if claim is not None:
                        claim.done = True
                    state.part_rows[int(event["k"])] = int(event["rows"])
                state.next_row = max(state.next_row, int(event.get("n", 0)))
            except (KeyError, TypeError, ValueError):
                continue
        return state

    # -- writing (with the lock held) -------------------------------------------

    def _write(self, event: dict, next_row: int, complete: bool = True) -> None:
        event = dict(event, n=next_row)
        line = json.dumps(event, separators=(",", ":")) + "\n"
        if not complete:
            line = "\n" + line  # end a line a killed writer left unfinished
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def register(self, owner: Owner) -> int:
        """Enter the calling worker in the log; return its number (its part is ``part_of(k)``)."""
        with self.lock:
            state = self.scan()
            k = max(state.owners, default=-1) + 1
            _, complete = self._tail_next()
            o = {"host": owner.host, "pid": owner.pid, "start": owner.start,
                 "job": owner.job, "attempt": owner.attempt}  # fmt: skip
            self._write({"w": k, "o": o}, state.next_row, complete)
        self.me, self.k = owner, k
        return k

    def next(self, n_workers: int, max_chunk: int | None = None) -> tuple[int, int] | None:
        """Claim rows ``(start, stop)`` for the calling worker; None when nothing is left.

        The unfinished claims of dead workers come first when this worker has
        just started, and after the fresh rows are all handed out. A fresh
        chunk is a share of what is left (about an eighth per worker), at
        least one row and at most `max_chunk` (default :data:`MAX_CHUNK`).
        """
        if self.k is None:
            raise RuntimeError("register() before claiming rows")
        max_chunk = MAX_CHUNK if max_chunk is None else max_chunk
        with self.lock:
            if self._look_for_dead:
                taken = self._take_over()
                if taken is not None:
                    return taken
                self._look_for_dead = False
            start, complete = self._tail_next()
            remaining = self.n_rows - start
            if remaining > 0:
                size = max(1, min(max_chunk, remaining // (8 * max(1, n_workers))))
                self._write({"c": [start, start + size], "k": self.k}, start + size, complete)
                return start, start + size
            return self._take_over()

    def _take_over(self) -> tuple[int, int] | None:
        """Take the first unfinished claim of a dead worker (lock held); None if there is none."""
        state = self.scan()
        for claim in sorted(state.claims.values(), key=lambda c: c.start):
            if claim.done or claim.owner == self.k:
                continue
            owner = state.owners.get(claim.owner)
            if owner is None or not owner.is_dead(self.me):
                continue
            _, complete = self._tail_next()
            in_part = self.count_rows(self.part_of(claim.owner))
            if in_part > state.part_rows.get(claim.owner, 0):
                # Its results reached its part; only the record was missing.
                event = {"d": claim.start, "k": claim.owner, "rows": in_part}
                self._write(event, state.next_row, complete)
                continue
            self._write({"c": [claim.start, claim.stop], "k": self.k}, state.next_row, complete)
            return claim.start, claim.stop
        return None

    def work_left(self, viewer: Owner) -> str | None:
        """Say what a worker starting now as `viewer` would find to do.

        ``"fresh"``: rows not handed out yet; ``"takeover"``: only unfinished
        claims of workers that are dead (as far as `viewer` can tell); None:
        nothing (the rows left are held by live workers, or all are done).
        Reads the log under its lock and writes nothing.
        """
        with self.lock:
            if self._tail_next()[0] < self.n_rows:
                return "fresh"
            state = self.scan()
        for claim in state.claims.values():
            owner = state.owners.get(claim.owner)
            if not claim.done and owner is not None and owner.is_dead(viewer):
                return "takeover"
        return None

    def done(self, start: int, part_rows: int) -> None:
        """Record that the results of the claim at `start` are in this worker's part."""
        with self.lock:
            next_row, complete = self._tail_next()
            self._write({"d": start, "k": self.k, "rows": part_rows}, next_row, complete)

    def unfinished(self) -> list[Claim]:
        """Claims whose results are not recorded in a part (of live or dead workers)."""
        return [c for c in self.scan().claims.values() if not c.done]


def reset_log(path: str) -> None:
    """Start an empty claims log (a new run: every row is to be handed out)."""
    with atomic_write(path) as f:
        f.write("")


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this forked worker when its job's main process dies.

    A job killed without warning (a lost Dask worker, a node's OOM killer) must
    not leave pool workers running beside the job's next attempt.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(137)


class LoadBalancingBackend(SplitMergeBackend):
    """Jobs that pull work from a shared queue of rows, for rows of uneven cost.

    ``max_jobs`` process jobs run ``pool_size`` worker processes each;
    ``setup(proc_id)`` runs once per worker (``proc_id`` from 0 to
    ``max_jobs * pool_size - 1``) and its dict is passed to every ``execute``
    call of that worker; list such keys in ``exclude_from_result`` when
    ``execute`` returns them. Each worker appends its results to a part file
    of its own; rows claimed by a worker that died are handed out again (see
    the module docstring).

    Parameters
    ----------
    task : psyrun.tasks.TaskDef
        The task to run.
    """

    uses_pool = True

    def after_split(self) -> None:
        """Start an empty claims log for the new snapshot."""
        reset_log(self.paths.counter)

    def claim_log(self, n_rows: int) -> ClaimLog:
        """Return the claims log of the current run (`n_rows`: rows of its snapshot)."""

        def count(path: str) -> int:
            return self.part_store.count_rows(path) if os.path.exists(path) else 0

        return ClaimLog(self.paths.counter, n_rows, self.paths.partial, count)

    def run_process(self, index: int, n_jobs: int) -> int:
        """Run ``pool_size`` workers until every row has been handed out and evaluated."""
        pool_size = self.task.pool_size
        n_workers = n_jobs * pool_size
        if self.job_slots is not None:
            # Chunks are shares of the workers that run at once (a local
            # scheduler runs only so many jobs together), not of all planned.
            n_workers = min(n_jobs, max(1, self.job_slots // pool_size)) * pool_size
        viewer = Owner.this_process(self.paths.job_name("process", index))
        attempt = viewer.attempt
        # A job that starts after the others took every row ends at once: no
        # setup, no pool; one that finds only the claims of dead workers takes
        # them over alone.
        work = self.claim_log(len(Snapshot.read(self.paths.pspace))).work_left(viewer)
        if work is None:
            self._log("no rows left to claim: every row is evaluated or held by a live worker")
            return 0
        # Pool workers only for fresh rows (the claims of dead workers are few).
        n_pool = pool_size if work == "fresh" else 1
        parent = os.getpid()
        # Looked up once (it may ask the batch system); every worker keeps its own tally.
        walltime = Walltime.for_job(self.task, getattr(self, "started", None))
        children = []
        for w in range(1, n_pool):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child leaves with os._exit
                code = 1
                try:
                    _die_with_parent(parent)
                    _Worker(self, index * pool_size + w, n_workers, attempt, walltime).run()
                    code = 0
                except RowsFailed as exc:
                    print(f"psyrun: {exc}", file=sys.stderr, flush=True)
                    code = 3
                except JobPartial as exc:
                    print(f"psyrun: worker {index * pool_size + w}: {exc}", flush=True)
                    code = EXIT_PARTIAL
                except FailFast as exc:
                    print(f"psyrun: {exc}", file=sys.stderr, flush=True)
                    code = EXIT_FAIL_FAST
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children.append(pid)
        failure = partial = None
        try:
            main = _Worker(self, index * pool_size, n_workers, attempt, walltime)
            main.run()
        except RowsFailed as exc:
            failure = exc
        except JobPartial as exc:
            partial = exc
        except BaseException as exc:
            # Stopped (SIGTERM, Ctrl-C), failed fast or crashed: stop the pool too,
            # leave no orphans.
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            for pid in children:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            if isinstance(exc, FailFast):
                # Whichever worker of this job failed fast, its line says why.
                raise FailFast(self._fail_fast_line(index) or str(exc)) from None
            raise
        codes = []
        for pid in children:
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
        if any(c not in (0, 3, EXIT_PARTIAL, EXIT_FAIL_FAST) for c in codes):
            # A pool worker died: its unfinished rows are evaluated here, and
            # the job still fails, so that the user learns of the crash.
            self._log(f"pool workers exited with status {codes}; taking over their rows")
            with contextlib.suppress(RowsFailed):
                main.run()
            raise RuntimeError(f"worker processes exited with status {codes}")
        if EXIT_FAIL_FAST in codes:
            raise FailFast(
                self._fail_fast_line(index)
                or f"a worker of this job stopped: fail fast (see {fail_fast.MARKER} in "
                f"{self.paths.status_dir} and the log)"
            )
        if partial is not None or EXIT_PARTIAL in codes:
            # Some worker stopped claiming before the time limit: the job is partial.
            job = self.paths.job_name("process", index)
            procs = range(index * pool_size, index * pool_size + n_pool)
            evaluated = sum(self._rows_reported(f"{job}.{w}") for w in procs)
            left = max(0, main.log.n_rows - main.log.scan().next_row)
            limit = partial.limit if partial is not None else main.walltime
            failed = failure.failures.count if failure is not None else 0
            raise JobPartial(evaluated, left, limit, failed + codes.count(3))
        if failure is not None:
            raise failure
        if 3 in codes:
            failures = RowFailures()
            failures.first = "see the tracebacks above"
            failures.count = codes.count(3)
            raise RowsFailed(failures)
        return 0

    def _fail_fast_line(self, index: int) -> str:
        """Return the fail-fast line a worker of process job `index` wrote ('' if none did)."""
        job = self.paths.job_name("process", index)
        try:
            with open(
                os.path.join(self.paths.status_dir, fail_fast.MARKER),
                encoding="utf-8",
                errors="replace",
            ) as f:
                who, line = f.readline().strip(), f.readline().strip()
        except OSError:
            return ""
        return line if who == job else ""

    def _rows_reported(self, name: str) -> int:
        """Rows a worker reported evaluated (:meth:`report_rows`); 0 when unknown."""
        try:
            with open(self.paths.status_file(name, "rows"), encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0


class _Worker:
    """One worker process of a process job: claims rows, evaluates them, appends to its part."""

    def __init__(
        self,
        backend: LoadBalancingBackend,
        proc_id: int,
        n_workers: int,
        attempt: str,
        walltime: Walltime | None = None,
    ):
        p = backend.paths
        self.backend = backend
        self.proc_id = proc_id
        self.n_workers = n_workers
        self.job_name = p.job_name("process", proc_id // backend.task.pool_size)
        self.snapshot = Snapshot.read(p.pspace)
        self.log = backend.claim_log(len(self.snapshot))
        self.log.register(Owner.this_process(self.job_name, attempt))
        self.part = p.partial(self.log.k)
        self.rows = 0  # rows in this worker's part (a new file: its number is new)
        self.extra = backend.task.run_setup(proc_id)
        self.failures = RowFailures()
        self.evaluated = 0
        self.checked = False
        # The job's time limit (psyrun.run.walltime); each worker stops claiming on its own.
        self.walltime = walltime

    def run(self) -> None:
        """Claim, evaluate and append until the log has nothing left for this worker.

        Raises :class:`RowsFailed` when rows raised (the others are kept).
        """
        b = self.backend
        max_chunk = b.vector_block if b.task.vectorized else MAX_CHUNK
        guard = b.row_guard(self.job_name)
        walltime, stopped = self.walltime, False
        while True:
            guard.check_stopped()  # another job failed fast
            wanted = max_chunk
            if walltime is not None:
                # Claim only rows that finish before the time limit (with the margin).
                wanted = walltime.rows_that_fit(max_chunk)
                if wanted < 1:
                    stopped = True
                    break
            claim = self.log.next(self.n_workers, wanted)
            if claim is None:
                break
            start, stop = claim
            t0 = time.monotonic()
            result = b.evaluate(
                self.snapshot.arrays(start, stop), self.extra, self.failures, self.job_name
            )
            t1 = time.monotonic()
            if walltime is not None:
                walltime.rows_done(stop - start, t1 - t0)
            if result:
                if not self.checked:
                    b.check_block(result)
                    self.checked = True
                b.part_store.append(self.part, result)
                self.rows += len(next(iter(result.values())))
                if walltime is not None:
                    walltime.flushed(time.monotonic() - t1)
            # Only now: a kill before this line leaves the claim to be taken over.
            self.log.done(start, self.rows)
            self.evaluated += stop - start
            b.report_rows(f"{self.job_name}.{self.proc_id}", self.evaluated)
        b._log(f"worker {self.proc_id} evaluated {self.evaluated} rows into {self.part}")
        if stopped:
            left = max(0, self.log.n_rows - self.log.scan().next_row)
            raise JobPartial(self.evaluated, left, walltime, self.failures.count)
        if self.failures.count:
            raise RowsFailed(self.failures)
