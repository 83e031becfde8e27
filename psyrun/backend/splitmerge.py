"""What both built-in backends share: split, merge, continue, status.

Both run ``split -> process jobs -> merge``:

* **split** stores a :mod:`psyrun.run.snapshot` of the rows to evaluate (the
  lazy space, plus the row numbers still missing when continuing) and clears
  old parts. With ``psy run -c`` it first folds every part left by an earlier
  run (finished or partial) into the result file, so nothing computed is lost
  and the only state between runs is the result.
* **process** jobs write results to part files in ``out/`` (the backends
  differ here). Part files are :class:`psyrun.store.PickleStore` files, or
  (DistributeBackend) files of the task's own store when its appends
  survive a kill (:func:`store_for_parts`): a kill tears at most the append
  being written, and reading drops it.
* **merge** streams the parts (and, when continuing, the old result) into the
  result with :func:`psyrun.results.merge.write_merged`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from psyrun.atomic import remove_path, replace_path
from psyrun.backend.base import Backend, Plan, TaskProgress
from psyrun.jobs import Job, JobArray, JobGraph
from psyrun.results.merge import (
    DiskFullError,
    MergeOutcome,
    RowMatch,
    concat_columns,
    describe_error,
    match_rows,
    merge_files,
    params_and_failures,
    replaced_failures,
)
from psyrun.results.records import add_records, timed
from psyrun.run.fail_fast import FailFast
from psyrun.run.failures import RowFailures
from psyrun.run.snapshot import snapshot_version, write_snapshot

if TYPE_CHECKING:
    from psyrun.store.base import Store

__all__ = ["SplitMergeBackend", "UnholdableRows", "part_store", "store_for_parts"]


def _count(columns: Mapping) -> int:
    """Rows of a mapping of equal-length columns (0 for none)."""
    return len(next(iter(columns.values()))) if columns else 0


@dataclass
class _Stored:
    """The parameter columns of a task's stored rows: the result's first, then the parts'.

    Failed rows on record (:mod:`psyrun.results.failed_rows`) are not among them: they
    are in `failed` (latest first) with their errors.
    """

    params: dict[str, np.ndarray]
    in_result: int
    result: str  # "ok", "missing" or "damaged"
    error: str = ""
    match: RowMatch | None = None
    failed: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)


class UnholdableRows(TypeError):
    """Rows the task's store cannot hold were left out of the result (they count as missing)."""


def part_store() -> Store:
    """Return the store of the part files that any result can come from (crash-safe appends).

    Rows a task's store cannot hold are set aside in it, and it writes the
    parts of tasks whose store is not fit for parts (see :func:`store_for_parts`).
    """
    from psyrun.store.pickle import PickleStore

    return PickleStore()


def store_for_parts(store: Store) -> Store:
    """Return the store a process job writes its part file with, for a task's `store`.

    The task's own store when its appends survive a kill and it reads files
    chunk by chunk (H5Store, ZarrStore): the merge then copies chunks of the
    parts without converting them, and never holds a whole part in memory.
    Otherwise :func:`part_store` (PickleStore).
    """
    if getattr(store, "appends_survive_kill", False) and getattr(store, "supports_chunks", False):
        return store
    return part_store()


class SplitMergeBackend(Backend):
    """Shared machinery of :class:`DistributeBackend` and :class:`LoadBalancingBackend`.

    Subclasses implement :meth:`run_process` (and may override
    :meth:`n_process_jobs` and :meth:`after_split`).

    Attributes
    ----------
    parts_are_disjoint : bool
        Each part of a run holds rows of its own share of the snapshot, each
        row once (DistributeBackend's row ranges). The merge of a run
        without an earlier result then keeps every row without matching
        them (:func:`psyrun.results.merge.merge_files` with ``exact``).
    """

    parts_are_disjoint: bool = False

    def __init__(self, task) -> None:
        super().__init__(task)
        self.store = task.store
        self.part_store = part_store()
        #: Messages about result or part files that could not be read (for psy status).
        self.unreadable: list[str] = []
        self._done: tuple[list, dict[str, np.ndarray]] | None = None

    def store_for(self, path: str) -> Store:
        """Return the store that reads `path`: the part store for parts, else the task's."""
        if path != self.paths.result and self.paths.is_part_file(path):
            return self.part_store
        return self.store

    @property
    def keys(self) -> list[str]:
        """The parameter keys of the task's space."""
        return list(self.task.pspace.keys())

    # -- planning (in psy) -----------------------------------------------------

    #: The most process jobs the next plan may have (None: only ``max_jobs``
    #: counts); ``psy run`` sets it for a local scheduler when the task leaves
    #: ``max_jobs`` at its default (:func:`psyrun.run.defaults.local_job_cap`).
    job_cap: int | None = None
    #: Jobs the scheduler runs at once (None: all of them, as a cluster may);
    #: ``psy run`` sets it for a local scheduler, and the process jobs learn it
    #: from their description (``slots``).
    job_slots: int | None = None

    def n_process_jobs(self, n_rows: int) -> int:
        """Return the number of process jobs for `n_rows` rows.

        ``min(max_jobs, ceil(n_rows / min_items))``, and no more than
        :attr:`job_cap` (counted in worker processes: ``pool_size`` per job
        for a backend that runs a pool).
        """
        if not n_rows:
            return 0
        n = min(self.task.max_jobs, max(1, math.ceil(n_rows / self.task.min_items)))
        if self.job_cap is not None:
            pool = self.task.pool_size if self.uses_pool else 1
            n = min(n, max(1, self.job_cap // pool))
        return n

    def _existing_files(self) -> list[str]:
        files = [self.paths.result] if self.store.exists(self.paths.result) else []
        files.extend(p for _, p, _ in self.paths.list_parts())
        return files

    def _stored(self) -> _Stored:
        # One command asks several questions of the same files: read them once
        # (again only when they changed).
        stamp = []
        for path in self._existing_files():
            with contextlib.suppress(OSError):
                st = os.stat(path)
                stamp.append((path, st.st_mtime_ns, st.st_size))
        if self._done is None or self._done[0] != stamp:
            self._done = (stamp, self._read_stored())
        return self._done[1]

    def _done_params(self) -> dict[str, np.ndarray]:
        return self._stored().params

    def _note(self, message: str) -> None:
        # Kept for `psy status`: an unreadable file must not look like "no rows".
        if message not in self.unreadable:
            self.unreadable.append(message)

    def _read_stored(self) -> _Stored:
        """Read the parameter columns of the result (checked whole) and of the parts."""
        p = self.paths
        stored = _Stored({}, 0, "missing")
        params = []
        failed: list[tuple[dict, list]] = []  # failed rows on record, per file

        def read(store, path: str) -> dict:
            errors: list = []
            found, mask = params_and_failures(store, path, self.keys, errors)
            if found and mask.any():
                failed.append(({k: v[mask] for k, v in found.items()}, errors))
                found = {k: v[~mask] for k, v in found.items()}
            return found

        if self.store.exists(p.result):
            try:
                # Read back whole: a result counts only if every row of it reads.
                self.store.verify(p.result)
                params.append(read(self.store, p.result))
                stored.result = "ok"
            except Exception as exc:
                stored.result = "damaged"
                stored.error = describe_error(exc)
                self._note(
                    f"the result file {p.result} is damaged ({stored.error}); its rows are "
                    f"not counted and `psy run -c {self.task.name}` refuses to continue it. "
                    "Move it away (its rows are then evaluated again) or restore it from a "
                    "copy."
                )
        stored.in_result = _count(params[0]) if params else 0
        for _, path, _ in p.list_parts():
            try:
                params.append(read(self.store_for(path), path))
            except Exception as exc:
                self._note(f"part file {path} cannot be read ({describe_error(exc)}); not counted")
        stored.params = concat_columns([x for x in params if x], self.keys) if params else {}
        if failed:
            failed.reverse()  # the latest first: parts, then the result
            stored.failed = concat_columns([f for f, _ in failed], self.keys)
            stored.errors = [e for _, errors in failed for e in errors]
        return stored

    def result_state(self) -> tuple[str, str]:
        """``("ok" | "missing" | "damaged", why)`` of the result file, read back whole."""
        stored = self._stored()
        return stored.result, stored.error

    def _match(self) -> RowMatch:
        """Match the stored rows (result first, then parts) to the space, repeats counted."""
        stored = self._stored()
        if stored.match is None:
            stored.match = match_rows(self.task.pspace, stored.params)
        return stored.match

    def new_keys(self, done: Mapping[str, np.ndarray]) -> list[str]:
        """Parameter keys of the space that the stored rows lack (the space grew a key)."""
        return [k for k in self.keys if k not in done] if done else []

    def get_missing(self):
        """Return the assignments that no result file or part holds yet.

        Rows are matched with multiplicity: an assignment the space holds k
        times needs k stored rows. Stored rows that lack a key of the space
        (a parameter added since) match nothing: every assignment counts as
        missing.
        """
        from psyrun.pspace import RowView

        done = self._done_params() if self._existing_files() else {}
        if not done or self.new_keys(done):
            return self.task.pspace
        return RowView(self.task.pspace, self._match().missing)

    def progress(self, missing=None) -> TaskProgress:
        """Rows completed (in a readable result or in parts) out of the space's rows.

        Also says whether the result file reads back (``result``), how many
        completed rows only parts hold (``unmerged``) and how many stored
        rows are outside the space (``outside``).
        """
        total = len(self.task.pspace)
        notes = []
        if not self.store.exists(self.paths.result) and self.paths.list_parts() == []:
            merged = self.paths.status_file(self.paths.job_name("merge"), "done")
            if os.path.exists(merged):
                # The last run finished, so its result was there: it was deleted.
                notes.append(
                    f"the result file {self.paths.result} does not exist (deleted?); "
                    f"`psy run -c {self.task.name}` evaluates all {total} rows again"
                )
            notes.extend(self._run_changed_notes())
            return TaskProgress(0, total, notes, result="missing")
        stored = self._stored()
        done = stored.params
        added = self.new_keys(done)
        if added:
            notes.append(
                f"the results lack the parameter(s) {', '.join(map(repr, added))} of the "
                "space (added since they were computed), so no stored row matches an "
                f"assignment. `psy run {self.task.name}` recomputes everything; "
                f"`psy run -c {self.task.name}` refuses."
            )
            return TaskProgress(0, total, notes, result=stored.result)
        if not done:
            progress = TaskProgress(0, total, notes, result=stored.result)
            self._count_failed(progress, None)
            return progress
        match = self._match()
        used_in_parts = int(match.used[stored.in_result :].sum())
        outside = int((match.outside & match.first).sum())
        if outside:
            notes.append(
                f"the results hold {outside} rows outside the current parameter space (not "
                f"counted): `load_results({self.task.name!r}, only_current=True)` leaves "
                f"them out, `psy prune {self.task.name}` removes them from the result file"
            )
        progress = TaskProgress(
            total - len(match.missing),
            total,
            notes,
            result=stored.result,
            unmerged=used_in_parts,
            outside=outside,
        )
        self._count_failed(progress, match.missing)
        self._version_notes(progress)
        return progress

    def _count_failed(self, progress: TaskProgress, missing) -> None:
        """Count the failed rows on record whose assignment is still missing.

        Of several failures of one assignment the latest counts (the result
        and the parts may both hold one until they are merged).
        """
        stored = self._stored()
        if not stored.failed:
            return
        from psyrun.pspace import RowView

        space = self.task.pspace if missing is None else RowView(self.task.pspace, missing)
        used = match_rows(space, stored.failed).used
        progress.failed_rows = int(used.sum())
        progress.failed_errors = [e for e, u in zip(stored.errors, used) if u]

    def prune(self) -> tuple[int, int]:
        """Rewrite the result without rows outside the space; return ``(kept, removed)``."""
        p, name = self.paths, self.task.name
        if not self.store.exists(p.result):
            raise ValueError(f"task {name!r} has no result file {p.result} to prune")
        if p.list_parts():
            raise ValueError(
                f"task {name!r} has part files not yet merged into its result; "
                f"`psy run -c {name}` merges them, then prune"
            )
        state, why = self.result_state()
        if state != "ok":
            raise ValueError(
                f"the result file {p.result} is damaged ({why}); move it away or restore it"
            )
        before = self._stored().in_result
        outcome = merge_files(
            self.store,
            p.result,
            [],
            self.keys,
            base=p.result,
            log=self._log,
            space=self.task.pspace,
            keep_outside=False,
        )
        return outcome.rows, before - outcome.rows

    def notes(self) -> list[str]:
        """Messages about result or part files that could not be read."""
        return list(self.unreadable)

    def build_graph(
        self, n_jobs: int, cont: bool, write: bool = True, stale: bool = False
    ) -> JobGraph:
        """Build the job graph for `n_jobs` process jobs (writing descriptions if `write`).

        `stale`: the split also evaluates again the rows of other versions.
        """
        p = self.paths

        def command(kind: str, array: bool = False) -> list[str]:
            if write:
                fields = {"stale": True} if stale else {}
                if self.job_slots is not None:
                    fields["slots"] = int(self.job_slots)
                return self.job_command(kind, array=array, cont=cont, n_jobs=n_jobs, **fields)
            return []

        split, process = p.job_name("split"), p.job_name("process")
        graph = JobGraph(self.task.name)
        graph.jobs.append(Job(split, command("split"), p.log("split")))
        graph.jobs.append(
            JobArray(
                process,
                n_jobs,
                command("process", array=True),
                p.log("process", "%a"),
                depends_on=[split],
            )
        )
        graph.jobs.append(
            Job(
                p.job_name("merge"),
                command("merge"),
                p.log("merge"),
                depends_on=[process] if n_jobs else [split],
                # Automatic rounds: the merge also runs after process jobs that
                # failed or were killed, and starts the next round.
                after_any=self.job_fields.get("max_attempts", 1) > 1,
            )
        )
        return graph

    def plan(self, cont: bool = False, stale: bool = False) -> Plan:
        """Decide the jobs to submit (see :meth:`Backend.plan`).

        With `cont` and `stale` (``psy run -c --stale``) the rows computed by
        another version of the task's code are evaluated again too.
        """
        n_all = len(self.task.pspace)
        if not cont:
            if self.is_current() and self.result_state()[0] == "ok":
                return Plan(
                    self.build_graph(self.n_process_jobs(n_all), cont, write=False),
                    up_to_date=True,
                    reason="results are up to date",
                )
            n_rows = n_all
        else:
            self.check_can_continue()
            parts = self.paths.list_parts()
            n_rows = len(self.get_missing())
            if stale:
                n_rows += self.stale_rows()
            if n_rows == 0 and not parts and self.store.exists(self.paths.result):
                return Plan(
                    self.build_graph(0, cont, write=False),
                    up_to_date=True,
                    reason="no assignments are missing",
                )
        self.paths.make_dirs()
        self.clear_markers()
        n_jobs = self.n_process_jobs(n_rows)
        return Plan(
            self.build_graph(n_jobs, cont, stale=cont and stale),
            reason=f"{n_rows} rows to evaluate",
            n_rows=n_rows,
        )

    def check_can_continue(self) -> None:
        """Raise ValueError when results cannot be matched to assignments (``-c`` refused)."""
        excluded = self.task.excluded_params
        if excluded:
            raise ValueError(
                f"cannot continue task {self.task.name!r}: exclude_from_result leaves out "
                f"the parameter(s) {', '.join(map(repr, excluded))}, so the stored results "
                "cannot be matched to assignments. Remove them from exclude_from_result, "
                "or run the whole task again without -c."
            )
        state, why = self.result_state()
        if state == "damaged":
            raise ValueError(
                f"cannot continue task {self.task.name!r}: the result file "
                f"{self.paths.result} is damaged ({why}). Move it away (its rows are then "
                "evaluated again) or restore it from a copy, then run "
                f"`psy run -c {self.task.name}` again."
            )
        if self._existing_files():
            added = self.new_keys(self._done_params())
            if added:
                raise ValueError(
                    f"cannot continue task {self.task.name!r}: the parameter space has the "
                    f"key(s) {', '.join(map(repr, added))} that the stored results lack, so "
                    "no stored row can be matched to an assignment. Either run "
                    f"`psy run {self.task.name}` (without -c) to recompute every row, or "
                    "move the result file away to keep it, or give the new key one value "
                    "and drop it from the space to continue the old results."
                )

    # -- jobs (in the job process) -----------------------------------------------

    def run_job(self, kind: str, index: int | None, description: Mapping[str, Any]) -> int:
        """Run a split, process or merge job."""
        from psyrun.results.records import attempt_number

        cont = bool(description.get("cont"))
        self.attempt = attempt_number(description)
        #: When the job started (epoch seconds): its time limit counts from here.
        self.started = description.get("started")
        slots = description.get("slots")
        self.job_slots = int(slots) if isinstance(slots, int) and slots > 0 else None
        if kind == "split":
            self.run_split(cont, stale=bool(description.get("stale")))
            return 0
        if kind == "merge":
            self.run_merge(cont)
            return 0
        if kind == "process":
            if index is None:
                raise ValueError("a process job needs its index: psyrun.worker <file> <index>")
            self._check_snapshot_version()
            return self.run_process(int(index), int(description["n_jobs"]))
        raise ValueError(f"unknown job kind {kind!r} for {type(self).__name__}")

    def _log(self, message: str) -> None:
        print(f"psyrun: {message}", flush=True)

    def run_split(self, cont: bool, stale: bool = False) -> None:
        """Fold old parts (when continuing), snapshot the rows to evaluate, clear parts.

        With `stale`, rows of the result computed by another version of the
        task's code count as missing (the merge replaces them).
        """
        p = self.paths
        p.make_dirs()
        keys = self.keys
        if cont:
            self.check_can_continue()
            parts = [path for _, path, _ in p.list_parts()]
            if parts:
                # The parts are the last run's: rows of its version replace older ones.
                outcome = self._merge_parts(parts, base=p.result)
                self._log(f"kept {outcome.rows} rows from the result file and earlier parts")
                if outcome.rejected is not None:
                    self._log(
                        f"{_count(outcome.rejected)} rows of earlier parts are evaluated again: "
                        f"{outcome.reject_error}"
                    )
            self._remove_temporaries()
            done, failed = (
                params_and_failures(self.store, p.result, keys)
                if self.store.exists(p.result)
                else ({}, None)
            )
            if done:
                # Failed rows on record are evaluated again; with `stale` old versions too.
                keep = ~failed
                if stale:
                    keep &= self._current_mask(len(failed))
                done = {k: v[keep] for k, v in done.items()}
            rows = match_rows(self.task.pspace, done).missing if done else None
        else:
            p.clear_parts()
            rows = None
        write_snapshot(p.pspace, self.task.pspace, rows, task_version=self.task.version)
        self.after_split()
        n = len(self.task.pspace) if rows is None else len(rows)
        self._log(f"{n} of {len(self.task.pspace)} rows to evaluate")

    def _merge_parts(
        self,
        parts: list[str],
        base: str | None,
        consume: bool = False,
        metadata=None,
        exact: bool = False,
    ) -> MergeOutcome:
        """Merge `parts` (after `base`) into the result; then, and only then, remove them.

        Rows the task's store cannot hold are set aside in :attr:`rejected_file`
        (they count as missing and are evaluated again); unreadable parts are
        moved to ``unreadable/`` in the work directory. Nothing is removed
        when the merge fails.
        """
        p = self.paths
        # The parts are the last run's: rows of its version replace older ones.
        # Failed rows of the result that the parts evaluated again go (psyrun.results.failed_rows).
        failures = (
            replaced_failures(self.store, base, parts, self.keys, self.store_for)
            if base is not None
            else None
        )
        drop_base, metadata = self._merge_versions(
            base, parts, snapshot_version(p.pspace), metadata, failures
        )
        try:
            outcome = merge_files(
                self.store,
                p.result,
                parts,
                self.keys,
                base=base,
                log=self._log,
                source_store=self.store_for,
                drop=self.task.exclude_from_result,
                consume=consume,
                metadata=metadata,
                drop_base=drop_base,
                space=self.task.pspace,
                reject=True,
                exact=exact and base is None,
            )
        except DiskFullError as exc:
            raise DiskFullError(f"{exc}; free space, then `psy run -c {self.task.name}`") from exc
        # The result is on disk and reads back: what went into it can go.
        if outcome.rejected is not None:
            self.part_store.append(self.rejected_file, outcome.rejected)
        for path in outcome.unreadable:
            aside = p.unreadable_dir
            os.makedirs(aside, exist_ok=True)
            replace_path(path, os.path.join(aside, os.path.basename(path)))
        for path in outcome.merged:
            remove_path(path)
        return outcome

    @property
    def rejected_file(self) -> str:
        """Where rows the task's store cannot hold are kept (a part-store file)."""
        return self.paths.rejected

    def _remove_temporaries(self) -> None:
        """Remove what killed writes left in ``out/`` (hidden temporary names)."""
        out = self.paths.out_dir
        if os.path.isdir(out):
            for entry in os.listdir(out):
                if entry.startswith("."):
                    remove_path(os.path.join(out, entry))

    def after_split(self) -> None:
        """Do extra work at the end of the split job (a hook for subclasses)."""

    def run_process(self, index: int, n_jobs: int) -> int:
        """Evaluate this job's share of the rows."""
        raise NotImplementedError

    def evaluate(
        self, arrays, extra, failures: RowFailures, job: str | None = None
    ) -> dict | None:
        """Evaluate one block of parameter columns; rows that raise are left out and recorded.

        Each row is evaluated exactly once (a failing row must not make the
        others run again: they may be expensive or have side effects); a
        vectorized block that raises is evaluated again row by row to find the
        rows that fail. What ``setup`` returned (`extra`) is stored with every
        row, like a parameter, unless ``exclude_from_result`` names it. The
        task's ``record`` setting adds its ``psy_*`` columns (`job` is the
        name ``psy_job`` holds).
        """
        from psyrun.mapper import concatenate_results, evaluate_block

        n_in = len(next(iter(arrays.values()), ()))
        if not n_in:
            return None
        record = self.task.record
        execute, calls = self.task.execute, None
        if record and not self.task.vectorized and {"duration", "finished"} & set(record):
            calls = []
            execute = timed(execute, calls)
        # Row timeout, fail fast, failed rows on record (psyrun.run.row_guard).
        guard = self.row_guard(job)
        started = time.perf_counter()
        try:
            with guard.armed():
                result = evaluate_block(
                    guard.wrap(execute),
                    arrays,
                    self.keys,
                    exclude=tuple(self.task.exclude_from_result),
                    extra=extra,
                    on_error=guard.on_error(failures),
                    vectorized=self.task.vectorized,
                    rng_seed=self.task.execute_rng_seed,
                )
        except FailFast as exc:
            # The block's failed rows are still written (the caller appends them).
            exc.block = self._with_records(guard.failed_block(self.keys), extra)
            raise
        elapsed = time.perf_counter() - started
        n = len(next(iter(result.values()))) if result else 0
        if n:
            result = self._with_setup_values(result, extra, n)
            if record:
                add_records(
                    result,
                    record,
                    n,
                    calls,
                    elapsed / n_in,
                    job,
                    self.task.vectorized,
                    getattr(self, "attempt", 1),
                )
        failed = self._with_records(guard.failed_block(self.keys), extra)
        if failed is not None:
            result = concatenate_results([result, failed]) if n else failed
        elif not n:
            return None
        return result

    def _with_records(self, block: dict | None, extra) -> dict | None:
        """`block` (failed rows on record) with the values ``setup`` returned."""
        if block is None:
            return None
        n = len(next(iter(block.values())))
        return self._with_setup_values(block, extra, n) if n else None

    def row_guard(self, job: str | None):
        """Return this job process's :class:`psyrun.run.row_guard.RowGuard` (made on first use)."""
        from psyrun.run.row_guard import RowGuard

        guard = getattr(self, "_row_guard", None)
        if guard is None or guard.pid != os.getpid() or guard.job != (job or ""):
            guard = RowGuard(
                self.task, self.paths.status_dir, job or "", getattr(self, "attempt", 1)
            )
            self._row_guard = guard
        return guard

    @property
    def vector_block(self) -> int:
        """Rows per call of a vectorized ``execute`` (the task's ``block_size``)."""
        from psyrun.mapper import DEFAULT_VECTORIZED_BLOCK_SIZE

        return self.task.block_size or DEFAULT_VECTORIZED_BLOCK_SIZE

    def _with_setup_values(self, result: dict, extra, n: int) -> dict:
        if extra:
            excluded = set(self.task.exclude_from_result)
            for key, value in extra.items():
                if key not in excluded and key not in result:
                    column = np.empty(n, dtype=object)
                    column[:] = [value] * n
                    result[key] = column if self.task.vectorized else [value] * n
        return result

    def check_block(self, block: Mapping) -> None:
        """Check a block of results against the task's store before parts are written.

        A value the store cannot hold would otherwise fail only at the merge.
        The parameter keys are named, so that a refused parameter is not
        advised to be left out with ``exclude_from_result``.
        """
        self.store.check(block, self.paths.result, params=self.keys)

    def _provenance(self, base: str | None) -> dict:
        """Return this run's provenance (:mod:`psyrun.results.provenance`) for the result file."""
        from psyrun.results.provenance import collect, continued, run_started

        meta = collect(self.task, run_started(self.paths))
        meta["task_version"] = self.task.version
        if base is not None:
            try:
                old = self.store.read_metadata(base)
            except Exception:
                old = {}  # write_merged reports an unreadable result itself
            meta = continued(meta, old)
        return meta

    def run_merge(self, cont: bool) -> None:
        """Stream the parts (and the old result when continuing) into the result file."""
        p = self.paths
        parts = [path for _, path, _ in p.list_parts()]
        base = p.result if cont and self.store.exists(p.result) else None
        # Without an earlier result, disjoint parts hold every row of the run once.
        outcome = self._merge_parts(
            parts,
            base=base,
            consume=True,
            metadata=self._provenance(base),
            exact=self.parts_are_disjoint and base is None,
        )
        self._remove_temporaries()
        self._log(f"merged {len(outcome.merged)} parts; {outcome.rows} rows in {p.result}")
        if outcome.rejected is not None:
            n = _count(outcome.rejected)
            raise UnholdableRows(
                f"{outcome.reject_error} The {n} rows holding such values are not in the "
                f"result and count as missing (kept in {self.rejected_file}); fix the task, "
                f"then `psy run -c {self.task.name}` evaluates them again."
            )

    # -- versions of the task's code (psyrun.run.versions) ---------------------------

    def _merge_versions(self, base, parts: list[str], parts_version, metadata=None, drop=None):
        """``(drop_base, metadata)`` for a merge of `parts` (computed by `parts_version`).

        `drop`: further rows of `base` the parts replace (failed rows on record).
        """
        from psyrun.run.versions import merge_versions

        return merge_versions(
            self.store, base, parts, self.keys, parts_version, self.store_for, metadata, drop
        )

    def _check_snapshot_version(self) -> None:
        """Refuse to evaluate a snapshot written for another version of the task's code."""
        written = snapshot_version(self.paths.pspace)
        if written is not None and written != self.task.version:
            raise RuntimeError(
                f"the snapshot {self.paths.pspace} was written by a run of another version "
                f"of task {self.task.name!r} ({written}, this job has {self.task.version}); "
                f"not evaluating it. Run `psy run -c {self.task.name}` to submit the task again."
            )

    def version_counts(self) -> dict:
        """Return ``{version: rows}`` of the stored rows (result and parts, as merged)."""
        from psyrun.run.versions import version_counts

        parts = [path for _, path, _ in self.paths.list_parts()]
        version = snapshot_version(self.paths.pspace) if parts else None
        try:
            return version_counts(
                self.store, self.paths.result, parts, self.keys, version, self.store_for
            )
        except Exception:
            return {}  # unreadable files are reported by progress()

    def stale_rows(self) -> int:
        """Rows stored that another (known) version of the task's code computed."""
        current = self.task.version
        return sum(n for v, n in self.version_counts().items() if v is not None and v != current)

    def stale_note(self) -> str | None:
        """Return what to tell the user about rows of older versions (None: there are none)."""
        from psyrun.run.versions import stale_note

        return stale_note(self.task, self.version_counts())

    def _current_mask(self, n: int) -> np.ndarray:
        """Which of the result's `n` rows the current version of the task's code computed."""
        from psyrun.run.versions import expand_segments, read_row_versions

        segments = read_row_versions(self.store, self.paths.result, n)
        if segments is None:
            return np.ones(n, dtype=bool)
        names: list = []
        codes = expand_segments(segments, names)
        other = [i for i, v in enumerate(names) if v is not None and v != self.task.version]
        return ~np.isin(codes, other)

    def _version_notes(self, progress: TaskProgress) -> None:
        """Add to `progress` the rows of older versions and a task file changed during a run."""
        from psyrun.run.versions import stale_note

        counts = self.version_counts()
        current = self.task.version
        progress.stale = sum(n for v, n in counts.items() if v is not None and v != current)
        note = stale_note(self.task, counts)
        if note:
            progress.notes.append(note)
        progress.notes.extend(self._run_changed_notes())

    def _run_changed_notes(self) -> list[str]:
        """Return a note when the task's code changed since the run in progress started."""
        from psyrun.jobs import read_job_description

        current = self.task.version
        merged = self.paths.status_file(self.paths.job_name("merge"), "done")
        try:
            started = read_job_description(self.paths.job_file("split")).get("task_version")
        except Exception:
            started = None
        if started and started != current and self.submitted() and not os.path.exists(merged):
            return [
                f"{os.path.basename(self.task.path)} changed since the last run started; "
                "that run evaluates the task as it was when it started (its rows will "
                "count as computed by an older version)"
            ]
        return []

    def is_current(self) -> bool:
        """As :meth:`Backend.is_current`; every row computed by the current code, none failed."""
        if not super().is_current() or self.stale_rows():
            return False
        # Failed rows on record are missing rows (psyrun.results.failed_rows).
        return self.result_state()[0] != "ok" or not self._stored().failed

    def changed_dependencies(self) -> list[str]:
        """As :meth:`Backend.changed_dependencies`; the task file when rows are stale."""
        changed = super().changed_dependencies()
        if self.task.path not in changed and self.stale_rows():
            changed.insert(0, self.task.path)
        return changed
