"""What both built-in backends share: split, merge, continue, status.

Both run ``split -> process jobs -> merge``:

* **split** stores a compact snapshot of the rows to evaluate
  (``in/pspace.pkl``: the lazy space, plus the row numbers still missing when
  continuing) and clears old parts. With ``psy run -c`` it first folds every
  part left by an earlier run (finished or partial) into the result file, so
  nothing computed is lost and the only state between runs is the result.
* **process** jobs write results to part files in ``out/`` (the backends
  differ here). Part files are always :class:`psyrun.store.PickleStore`
  files, whatever the task's store: its appends are crash-safe (a kill tears
  at most the record being written, and reading drops it), whereas an
  interrupted append can spoil a whole file of other stores.
* **merge** streams the parts (and, when continuing, the old result) into a
  temporary file with the task's store and renames it over the result.

Folding and merging drop rows the result already holds (whole-row match on
the parameters), so a crash between renaming the result and removing the
parts never duplicates a row.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from psyrun.backend.base import Backend, FailedJob, Plan, TaskProgress
from psyrun.jobs import (
    Job,
    JobArray,
    JobGraph,
    is_current,
    load_submitted,
    save_submitted,
    submit_graph,
)
from psyrun.paths import TaskPaths, remove_path, tmp_name

if TYPE_CHECKING:
    from psyrun.store.base import Store

__all__ = ["RowsFailed", "SplitMergeBackend"]

#: Rows a process job evaluates between two appends (bounds on the block size).
MIN_BLOCK = 1024
MAX_BLOCK = 16384
#: Rows gathered before one append to the merged file.
MERGE_ROWS = 65536

_SNAPSHOT_VERSION = 1


def part_store() -> Store:
    """Return the store every part file is written with (crash-safe appends)."""
    from psyrun.store.pickle import PickleStore

    return PickleStore()


def _store_of(store: Store | Callable[[str], Store], path: str) -> Store:
    """`store` itself, or the store `store(path)` picks for `path`."""
    return store if hasattr(store, "iter_chunks") else store(path)


# -- small helpers -------------------------------------------------------------


def missing_rows(space, done: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """Row numbers of `space` whose parameters are not among the rows of `done`."""
    from psyrun.pspace import missing

    if not done or not len(next(iter(done.values()))):
        return np.arange(len(space), dtype=np.int64)
    return np.asarray(missing(space, done).surviving_rows(), dtype=np.int64)


def _concat_columns(parts: list[dict[str, np.ndarray]], keys: list[str]) -> dict:
    out = {}
    for k in keys:
        cols = [p[k] for p in parts if k in p]
        if not cols:
            continue
        if len({c.dtype.kind for c in cols}) > 1 or len({c.shape[1:] for c in cols}) > 1:
            merged = np.empty(sum(len(c) for c in cols), dtype=object)
            i = 0
            for c in cols:
                for v in c:
                    merged[i] = v
                    i += 1
            out[k] = merged
        else:
            out[k] = np.concatenate(cols)
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        # A key absent from some file: match on the keys every file has.
        n = max(lengths)
        out = {k: v for k, v in out.items() if len(v) == n}
    return out


def load_params(
    store: Store | Callable[[str], Store], files: list[str], keys: list[str], log=None
) -> dict[str, np.ndarray]:
    """Return the parameter columns (`keys`) of every row in `files`, concatenated.

    `store` is the store that reads the files, or a function of a file name
    returning it. Files that cannot be read (a partial file cut short by a
    crash) are reported to `log` and skipped.
    """
    parts = []
    for path in files:
        try:
            params = _file_params(_store_of(store, path), path, keys)
        except Exception as exc:
            if log is not None:
                log(f"skipping unreadable file {path}: {type(exc).__name__}: {exc}")
            continue
        if params:
            parts.append(params)
    return _concat_columns(parts, keys) if parts else {}


def replace_result(tmp: str, dest: str) -> None:
    """Rename `tmp` over `dest` (also when both are directories, as zarr stores are)."""
    if os.path.isdir(dest) and not os.path.islink(dest):
        old = tmp_name(dest + ".old")
        os.replace(dest, old)
        os.replace(tmp, dest)
        remove_path(old)
    else:
        os.replace(tmp, dest)


def _file_params(store, path: str, keys: list[str]) -> dict[str, np.ndarray]:
    parts = [
        {k: np.asarray(chunk[k]) for k in keys if k in chunk} for chunk in store.iter_chunks(path)
    ]
    return _concat_columns(parts, keys) if parts else {}


def write_merged(
    store,
    dest: str,
    sources: list[str],
    keys: list[str],
    base: str | None = None,
    log=None,
    source_store: Store | Callable[[str], Store] | None = None,
) -> int:
    """Stream `base` (kept whole) and `sources` into `dest`; return rows written.

    `store` writes `dest` and reads `base`; `source_store` (default: `store`)
    reads `sources`: a store, or a function of a file name returning one, so
    that parts written with another store are converted while streaming.
    Rows of `sources` whose parameters `base` already holds are dropped. The
    data goes to a temporary file renamed over `dest` at the end, so `dest`
    is never left half-written; on error it is untouched. Sources that
    cannot be read (cut short by a crash) are reported to `log` and skipped.
    """
    if source_store is None:
        source_store = store
    from psyrun.pspace import Param

    # Parameters of every readable source, to drop rows `base` already holds.
    has_base = base is not None and os.path.exists(base)
    good, source_params = [], []
    for path in sources:
        source = _store_of(source_store, path)
        try:
            if has_base:
                source_params.append(_file_params(source, path, keys))
            else:
                # Nothing to drop: only make sure the file reads (cheap for parts).
                source.count_rows(path)
        except Exception as exc:
            if log is not None:
                log(f"skipping unreadable part {path}: {type(exc).__name__}: {exc}")
            continue
        good.append(path)
    keep = None
    if has_base and good:
        seen = load_params(store, [base], keys)
        combined = _concat_columns([sp for sp in source_params if sp], keys)
        if seen and combined:
            n_total = len(next(iter(combined.values())))
            keep = np.zeros(n_total, dtype=bool)
            keep[missing_rows(Param(**combined), seen)] = True

    tmp = tmp_name(dest)
    remove_path(tmp)
    written = 0
    offset = 0
    # Small parts are gathered into bigger appends: each append may cost a sync.
    pending: list[dict] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if pending:
            from psyrun.store.columns import merge_chunks

            store.append(tmp, pending[0] if len(pending) == 1 else merge_chunks(pending))
        pending, pending_rows = [], 0

    try:
        if has_base:
            try:
                chunks = store.iter_chunks(base)
                for chunk in chunks:
                    store.append(tmp, chunk)
                    written += _count(chunk)
            except Exception as exc:
                raise OSError(
                    f"cannot read the existing results {base} ({type(exc).__name__}: {exc}); "
                    "it was left unchanged. Move it away (its rows are then evaluated "
                    "again) or restore it, then run again."
                ) from exc
        for path in good:
            for chunk in _store_of(source_store, path).iter_chunks(path):
                n = _count(chunk)
                if keep is not None:
                    mask = keep[offset : offset + n]
                    offset += n
                    if not mask.all():
                        chunk = {k: np.asarray(v)[mask] for k, v in chunk.items()}
                        n = int(mask.sum())
                if n:
                    pending.append({k: np.asarray(v) for k, v in chunk.items()})
                    pending_rows += n
                    written += n
                    if pending_rows >= MERGE_ROWS:
                        flush()
        flush()
        if not os.path.exists(tmp):
            store.save(tmp, {k: [] for k in keys})
        replace_result(tmp, dest)
    except BaseException:
        remove_path(tmp)
        raise
    return written


def _count(chunk: Mapping) -> int:
    for v in chunk.values():
        return len(v)
    return 0


# -- snapshot ------------------------------------------------------------------


def write_snapshot(path: str, pspace, rows: np.ndarray | None) -> None:
    """Store the lazy space (and the row numbers to evaluate, when not all)."""
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        pickle.dump(
            {"version": _SNAPSHOT_VERSION, "pspace": pspace, "rows": rows},
            f,
            protocol=pickle.HIGHEST_PROTOCOL,
        )
    os.replace(tmp, path)


class Snapshot:
    """The rows a run evaluates: a lazy space and optionally a subset of its rows."""

    def __init__(self, pspace, rows: np.ndarray | None) -> None:
        self.pspace = pspace
        self.rows = rows
        self.keys = list(pspace.keys())

    @classmethod
    def read(cls, path: str) -> Snapshot:
        """Read a snapshot written by :func:`write_snapshot`."""
        with open(path, "rb") as f:
            data = pickle.load(f)
        return cls(data["pspace"], data["rows"])

    def __len__(self) -> int:
        return len(self.pspace) if self.rows is None else len(self.rows)

    def take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """Parameter columns of the snapshot rows `index`."""
        if self.rows is None:
            return self.pspace.take(index)
        return self.pspace.take(self.rows[index])

    def arrays(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Parameter columns of snapshot rows ``start:stop``."""
        if self.rows is None:
            return self.pspace.to_arrays(start, stop)
        return self.pspace.take(self.rows[start:stop])


# -- evaluation ------------------------------------------------------------------


class RowsFailed(Exception):
    """Some rows of a job raised; the job kept the others and finished its range.

    :mod:`psyrun.worker` marks the job failed (``psy status -v`` names it) but
    exits with status 0 so that the merge still collects the other rows.
    """

    def __init__(self, failures: RowFailures) -> None:
        super().__init__(
            f"{failures.count} row(s) raised an exception (first: {failures.first}); "
            "the other rows were kept"
        )
        self.failures = failures


class RowFailures:
    """Rows whose evaluation raised: counted, the first few tracebacks printed."""

    def __init__(self, max_printed: int = 3) -> None:
        self.count = 0
        self.first: str = ""
        self.max_printed = max_printed

    def add(self, row: dict, exc: BaseException) -> None:
        """Record one failed row and print its traceback (the first few only)."""
        self.count += 1
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if not self.first:
            self.first = f"{type(exc).__name__}: {exc}"
        if self.count <= self.max_printed:
            print(f"psyrun: evaluating {row!r} raised:\n{text}", file=sys.stderr, flush=True)
        elif self.count == self.max_printed + 1:
            print("psyrun: further failing rows are counted, not printed", file=sys.stderr)


def evaluate_block(task, arrays, keys, extra, failures: RowFailures) -> dict[str, list] | None:
    """Evaluate one block of rows; rows that raise are left out and recorded."""
    from psyrun.mapper import block_rows, evaluate_rows

    columns, rows = block_rows(arrays, keys)
    if not rows:
        return None
    # Each row is evaluated exactly once: a failing row must not make the
    # others run again (they may be expensive or have side effects).
    result = evaluate_rows(
        task.execute,
        columns,
        rows,
        tuple(task.exclude_from_result),
        extra,
        on_error=failures.add,
    )
    return result if any(len(v) for v in result.values()) else None


def call_setup(task, proc_id: int) -> dict | None:
    """Run the task's ``setup(proc_id)``; return its dict of extra arguments."""
    if task.setup is None:
        return None
    extra = task.setup(proc_id)
    if extra is None:
        return None
    if not isinstance(extra, Mapping):
        raise TypeError(
            f"setup({proc_id}) returned {type(extra).__name__}; it must return a dict of "
            "keyword arguments for execute"
        )
    return dict(extra)


# -- the backend ---------------------------------------------------------------


class SplitMergeBackend(Backend):
    """Shared machinery of :class:`DistributeBackend` and :class:`LoadBalancingBackend`.

    Subclasses set :attr:`kind` and implement :meth:`n_process_jobs` and
    :meth:`run_process`.
    """

    kind = "splitmerge"

    def __init__(self, task) -> None:
        super().__init__(task)
        self.paths = TaskPaths.for_task(task)
        self.store = task.store
        self.part_store = part_store()
        #: Messages about result or part files that could not be read (for psy status).
        self.unreadable: list[str] = []

    def store_for(self, path: str) -> Store:
        """Return the store that reads `path`: the part store for parts, else the task's."""
        if path != self.paths.result and self.paths.is_part_file(path):
            return self.part_store
        return self.store

    # -- planning (in psy) -----------------------------------------------------

    def n_process_jobs(self, n_rows: int) -> int:
        """Return the number of process jobs for `n_rows` rows."""
        return min(self.task.max_jobs, max(1, math.ceil(n_rows / self.task.min_items)))

    def _existing_files(self, include_result: bool = True) -> list[str]:
        files = []
        if include_result and os.path.exists(self.paths.result):
            files.append(self.paths.result)
        files.extend(p for _, p, _ in self.paths.list_parts())
        return files

    def _done_params(self, log=None) -> dict[str, np.ndarray]:
        def record(message: str) -> None:
            # Kept for `psy status`: an unreadable result must not look like "no rows".
            if message not in self.unreadable:
                self.unreadable.append(message)
            if log is not None:
                log(message)

        return load_params(
            self.store_for, self._existing_files(), list(self.task.pspace.keys()), log=record
        )

    def get_missing(self):
        """Return the assignments that no result file or part holds yet."""
        from psyrun.pspace import missing

        files = self._existing_files()
        if not files:
            return self.task.pspace
        done = self._done_params()
        if not done:
            return self.task.pspace
        return missing(self.task.pspace, done)

    def progress(self) -> TaskProgress:
        """Rows completed (in the result or in parts) out of the space's rows."""
        total = len(self.task.pspace)
        if not self._existing_files():
            return TaskProgress(0, total)
        return TaskProgress(total - len(self.get_missing()), total)

    def is_current(self) -> bool:
        """Results exist, are newer than the task's files, and no run is unfinished."""
        if not is_current([self.paths.result], self.task.dependencies):
            return False
        if self.paths.list_parts():
            return False
        return not self._failed_markers()

    def _job_description(self, kind: str, cont: bool, n_jobs: int) -> str:
        path = self.paths.job_file(kind)
        description = {
            "version": 1,
            "backend": self.kind,
            "kind": kind,
            "task": self.task.name,
            "task_file": self.task.path,
            "taskdir": self.task.taskdir,
            "cwd": os.getcwd(),
            "continue": cont,
            "n_jobs": n_jobs,
        }
        tmp = tmp_name(path)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(description, f, indent=1)
        os.replace(tmp, path)
        return path

    def _worker_args(self, job_file: str, array: bool = False) -> list[str]:
        args = [self.task.python, "-m", "psyrun.worker", job_file]
        return [*args, "%a"] if array else args

    def build_graph(self, n_jobs: int, cont: bool, write: bool = True) -> JobGraph:
        """Build the job graph for `n_jobs` process jobs (writing descriptions if `write`)."""
        p = self.paths
        files = {}
        for kind in ("split", "process", "merge"):
            files[kind] = self._job_description(kind, cont, n_jobs) if write else p.job_file(kind)
        split = p.job_name("split")
        process = p.job_name("process")
        graph = JobGraph(self.task.name)
        graph.jobs.append(Job(split, self._worker_args(files["split"]), p.log("split")))
        graph.jobs.append(
            JobArray(
                process,
                n_jobs,
                self._worker_args(files["process"], array=True),
                p.log("process", "%a"),
                depends_on=[split],
            )
        )
        graph.jobs.append(
            Job(
                p.job_name("merge"),
                self._worker_args(files["merge"]),
                p.log("merge"),
                depends_on=[process] if n_jobs else [split],
            )
        )
        return graph

    def job_names(self) -> list[str]:
        """Names of the jobs of a full run."""
        n_rows = len(self.task.pspace)
        n = self.n_process_jobs(n_rows) if n_rows else 0
        return self.build_graph(n, cont=False, write=False).names

    def plan(self, cont: bool = False) -> Plan:
        """Decide the jobs to submit (see :meth:`Backend.plan`)."""
        if not cont:
            if self.is_current():
                n_rows = len(self.task.pspace)
                return Plan(
                    self.build_graph(
                        self.n_process_jobs(n_rows) if n_rows else 0, cont, write=False
                    ),
                    up_to_date=True,
                    reason="results are up to date",
                )
            n_rows = len(self.task.pspace)
        else:
            self.check_can_continue()
            parts = self.paths.list_parts()
            n_rows = len(self.get_missing())
            if n_rows == 0 and not parts and os.path.exists(self.paths.result):
                return Plan(
                    self.build_graph(0, cont, write=False),
                    up_to_date=True,
                    reason="no assignments are missing",
                )
        self.paths.make_dirs()
        self._clear_markers()
        n_jobs = self.n_process_jobs(n_rows) if n_rows else 0
        return Plan(self.build_graph(n_jobs, cont), reason=f"{n_rows} rows to evaluate")

    def check_can_continue(self) -> None:
        """Raise ValueError when results cannot be matched to assignments (``-c`` refused).

        With a parameter in ``exclude_from_result`` the stored rows lack it:
        continuing would evaluate (and append) every row again, or with some
        parameters left skip rows that only match on the others.
        """
        excluded = getattr(self.task, "excluded_params", [])
        if excluded:
            raise ValueError(
                f"cannot continue task {self.task.name!r}: exclude_from_result leaves out "
                f"the parameter(s) {', '.join(map(repr, excluded))}, so the stored results "
                "cannot be matched to assignments. Remove them from exclude_from_result, "
                "or run the whole task again without -c."
            )

    def submit(self, graph: JobGraph, on_start=None, on_submitted=None) -> dict[str, str]:
        """Submit `graph` to the task's scheduler and record the job ids.

        The ids (also of a partial submission that failed half-way) are saved
        so that ``psy status`` and ``psy kill`` find the jobs later.
        """
        ids: dict[str, str] = {}

        def submitted(name: str, jobid: str) -> None:
            ids[name] = jobid
            if on_submitted is not None:
                on_submitted(name, jobid)

        try:
            submit_graph(
                graph,
                self.task.scheduler,
                self.task.scheduler_args,
                on_start=on_start,
                on_submitted=submitted,
            )
        finally:
            save_submitted(self.paths.submitted, ids, graph.logs())
        return ids

    # -- status (in psy) -------------------------------------------------------

    def _clear_markers(self) -> None:
        d = self.paths.status_dir
        if os.path.isdir(d):
            for entry in os.listdir(d):
                remove_path(os.path.join(d, entry))

    def _failed_markers(self) -> list[str]:
        d = self.paths.status_dir
        if not os.path.isdir(d):
            return []
        return sorted(e[: -len(".failed")] for e in os.listdir(d) if e.endswith(".failed"))

    def submitted(self) -> list[tuple[str, str, str]]:
        """``(name, id, log)`` of the jobs of the last submission."""
        return load_submitted(self.paths.submitted)

    def get_queued(self) -> list:
        """Statuses of the last submission's jobs the scheduler still holds."""
        jobs = self.submitted()
        if not jobs:
            return []
        names = {jobid: name for name, jobid, _ in jobs}
        statuses = self.task.scheduler.get_statuses(list(names))
        out = []
        for jobid, status in statuses.items():
            if status is None:
                continue
            if status.name is None or status.name != names.get(jobid):
                status = status._replace(name=names.get(jobid, status.name))
            out.append(status)
        return out

    def get_failed(self, queued: list | None = None) -> list[FailedJob]:
        """Jobs of the last submission that failed, or ended without finishing."""
        jobs = self.submitted()
        if queued is None:
            queued = self.get_queued() if jobs else []
        held = {s.id for s in queued}
        d = self.paths.status_dir
        markers = set(os.listdir(d)) if os.path.isdir(d) else set()
        failed = []
        for name, jobid, log in jobs:
            if jobid in held:
                continue
            marker = self.paths.status_file(name, "failed")
            if os.path.basename(marker) in markers:
                with open(marker, encoding="utf-8") as f:
                    message = f.read().strip() or "failed"
                failed.append(FailedJob(name, log, message))
            elif os.path.basename(self.paths.status_file(name, "done")) not in markers:
                failed.append(
                    FailedJob(name, log, "did not finish (killed, crashed, or never started)")
                )
        return failed

    def clean(self) -> None:
        """Remove the task's work directory and result file."""
        remove_path(self.paths.root)
        remove_path(self.paths.result)

    # -- jobs (in the job process) -----------------------------------------------

    def run_job(self, kind: str, index: int | None, description: Mapping[str, Any]) -> int:
        """Run a split, process or merge job."""
        cont = bool(description.get("continue"))
        if kind == "split":
            self.run_split(cont)
            return 0
        if kind == "merge":
            self.run_merge(cont)
            return 0
        if kind == "process":
            if index is None:
                raise ValueError("a process job needs its index: psyrun.worker <file> <index>")
            return self.run_process(int(index), int(description["n_jobs"]))
        raise ValueError(f"unknown job kind {kind!r} for {type(self).__name__}")

    def _log(self, message: str) -> None:
        print(f"psyrun: {message}", flush=True)

    def run_split(self, cont: bool) -> None:
        """Fold old parts (when continuing), snapshot the rows to evaluate, clear parts."""
        p = self.paths
        p.make_dirs()
        keys = list(self.task.pspace.keys())
        if cont:
            self.check_can_continue()
            parts = [path for _, path, _ in p.list_parts()]
            if parts:
                rows = write_merged(
                    self.store,
                    p.result,
                    parts,
                    keys,
                    base=p.result,
                    log=self._log,
                    source_store=self.store_for,
                )
                self._log(f"kept {rows} rows from the result file and earlier parts")
            p.clear_parts()
            done = (
                load_params(self.store, [p.result], keys, log=self._log)
                if os.path.exists(p.result)
                else {}
            )
            rows = missing_rows(self.task.pspace, done) if done else None
        else:
            p.clear_parts()
            rows = None
        write_snapshot(p.pspace, self.task.pspace, rows)
        self.after_split()
        n = len(self.task.pspace) if rows is None else len(rows)
        self._log(f"{n} of {len(self.task.pspace)} rows to evaluate")

    def after_split(self) -> None:
        """Do extra work at the end of the split job (a hook for subclasses)."""

    def run_process(self, index: int, n_jobs: int) -> int:
        """Evaluate this job's share of the rows."""
        raise NotImplementedError

    def run_merge(self, cont: bool) -> None:
        """Stream the parts (and the old result when continuing) into the result file."""
        p = self.paths
        parts = [path for _, path, _ in p.list_parts()]
        keys = list(self.task.pspace.keys())
        base = p.result if cont and os.path.exists(p.result) else None
        rows = write_merged(
            self.store,
            p.result,
            parts,
            keys,
            base=base,
            log=self._log,
            source_store=self.store_for,
        )
        p.clear_parts()
        self._log(f"merged {len(parts)} parts; {rows} rows in {p.result}")
