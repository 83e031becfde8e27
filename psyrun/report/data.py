"""What a report shows: the task's status, its provenance, its first rows, and plot data.

:func:`collect` asks :func:`psyrun.run.runner.task_status` for the status (the
same figures ``psy status`` prints, from what the files hold), then reads the
stored rows (the result file when it reads back, and part files of a run in
progress) chunk by chunk and keeps only what the page draws:

* for a **grid** (a product of one-key parameters, see :func:`grid_axes`):
  exact per-value statistics of every numeric output (rows, mean, standard
  deviation, minimum, maximum) for each parameter, and per-cell means for
  each pair of parameters: memory grows with the grid, not with the rows;
* for **other spaces**: a regular subsample (every k-th stored row) of the
  parameters and numeric outputs, and a subsample of the missing assignments.

Rows computed by an older version of the task's code (:mod:`psyrun.run.versions`)
are left out of the plots and counted; a damaged result is not read at all.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CHUNK_ROWS",
    "HEAD_ROWS",
    "MAX_AXIS_VALUES",
    "SAMPLE_ROWS",
    "ColumnInfo",
    "Grid",
    "ReportData",
    "Sample",
    "StatusView",
    "collect",
    "grid_axes",
]

#: Rows read from a store at once.
CHUNK_ROWS = 65536
#: Rows shown in the table of first rows.
HEAD_ROWS = 20
#: Stored rows drawn at most in a scatter plot (a regular subsample beyond).
SAMPLE_ROWS = 20000
#: Missing assignments drawn at most in a scatter plot.
MISSING_SAMPLE = 2000
#: A grid parameter has at most this many values (larger factors are sampled instead).
MAX_AXIS_VALUES = 1000


@dataclass
class StatusView:
    """The status of a task, as ``psy status`` computes it, plus jobs and rate.

    Attributes
    ----------
    completed, total : int
        Assignments with a result (in a result file that reads back, or in
        part files) out of the space's assignments.
    stale : int
        Of the completed rows, those computed by an older version of the code.
    outside : int
        Stored rows whose assignment is not in the current space.
    unmerged : int
        Completed rows held only by part files.
    result : str
        ``"ok"``, ``"missing"`` or ``"damaged"``.
    failed_rows : int
        Rows whose ``execute`` raised in the last run (from the failed jobs'
        markers; they are among the missing rows).
    jobs : dict of str to int
        Jobs of the last run per state (queued, running, done, failed).
    failed_jobs : list of psyrun.backend.FailedJob
        The failed jobs with their messages and logs.
    running_pid : int or None
        The ``psy run`` working on the task now.
    rate : str
        Rows per second of the last run, in words (``''`` when unknown).
    notes : list of str
        What ``psy status`` warns about.
    """

    completed: int
    total: int
    stale: int = 0
    outside: int = 0
    unmerged: int = 0
    result: str = "missing"
    failed_rows: int = 0
    jobs: dict[str, int] = field(default_factory=dict)
    failed_jobs: list = field(default_factory=list)
    running_pid: int | None = None
    rate: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> int:
        """Assignments without a result."""
        return max(0, self.total - self.completed)

    @property
    def in_progress(self) -> bool:
        """A run holds the task, or jobs of it are queued or running."""
        return self.running_pid is not None or bool(
            self.jobs.get("queued") or self.jobs.get("running")
        )


@dataclass
class ColumnInfo:
    """One column of the stored rows: its role, and why it is not plotted (if it is not)."""

    name: str
    parameter: bool
    kind: str = ""
    why_not: str = ""

    @property
    def plottable(self) -> bool:
        """A scalar number (or boolean) per row."""
        return not self.why_not


@dataclass
class Grid:
    """Exact statistics of the outputs over a grid of parameter values.

    Attributes
    ----------
    axes : dict of str to numpy.ndarray
        Each varying parameter's values, sorted.
    expected : dict of str to numpy.ndarray
        Rows of the space per value of each parameter.
    have : dict of str to numpy.ndarray
        Stored (current) rows per value of each parameter.
    pair_expected, pair_have : dict of (str, str) to numpy.ndarray
        The same per cell of each pair of parameters.
    lines : dict of str to dict of str to dict of str to numpy.ndarray
        ``lines[output][parameter]``: ``count``, ``sum``, ``sumsq``, ``min``,
        ``max`` of the output's finite values per value of the parameter.
    cells : dict of str to dict of (str, str) to dict of str to numpy.ndarray
        ``cells[output][(a, b)]``: ``count`` and ``sum`` per cell.
    off_grid : int
        Stored rows whose parameter values are not on the grid (outside the space).
    """

    axes: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    factor_len: dict[str, int]
    n_space: int
    have: dict[str, np.ndarray] = field(default_factory=dict)
    pair_have: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    lines: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    cells: dict[str, dict[tuple[str, str], dict[str, np.ndarray]]] = field(default_factory=dict)
    off_grid: int = 0

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Every pair of grid parameters, in the order of the space's keys."""
        keys = list(self.axes)
        return [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]

    def pair_expected(self, a: str, b: str) -> np.ndarray:
        """Rows of the space per cell of the parameters `a` and `b`."""
        per_a = self.expected[a] / (self.n_space // self.factor_len[a])
        per_b = self.expected[b] / (self.n_space // self.factor_len[b])
        rest = self.n_space // (self.factor_len[a] * self.factor_len[b])
        return np.outer(per_a, per_b) * rest


@dataclass
class Sample:
    """A regular subsample of the stored rows, and of the missing assignments.

    Attributes
    ----------
    step : int
        Every `step`-th stored row is kept.
    columns : dict of str to numpy.ndarray
        The parameters and numeric outputs of the kept rows.
    missing : dict of str to numpy.ndarray
        Parameters of a subsample of the missing assignments.
    missing_step : int
        Every `missing_step`-th missing assignment is kept.
    """

    step: int
    columns: dict[str, list] = field(default_factory=dict)
    missing: dict[str, np.ndarray] = field(default_factory=dict)
    missing_step: int = 1

    def kept(self) -> int:
        """Rows kept."""
        return len(next(iter(self.columns.values()))) if self.columns else 0


@dataclass
class ReportData:
    """Everything :mod:`psyrun.report.page` puts on the page."""

    task: str
    status: StatusView
    metadata: dict[str, Any] = field(default_factory=dict)
    metadata_error: str = ""
    params: list[str] = field(default_factory=list)
    columns: list[ColumnInfo] = field(default_factory=list)
    head: dict[str, np.ndarray] = field(default_factory=dict)
    head_stale: np.ndarray | None = None
    head_source: str = ""
    rows_stored: int = 0
    rows_read: int = 0
    rows_stale: int = 0
    grid: Grid | None = None
    sample: Sample | None = None
    read_notes: list[str] = field(default_factory=list)
    generated: float = field(default_factory=time.time)

    @property
    def outputs(self) -> list[ColumnInfo]:
        """The columns that are not parameters."""
        return [c for c in self.columns if not c.parameter]

    @property
    def plotted_outputs(self) -> list[str]:
        """Names of the outputs with a plot."""
        return [c.name for c in self.outputs if c.plottable]


# -- the status ----------------------------------------------------------------------


def failed_rows(failed_jobs) -> int:
    """Rows whose ``execute`` raised, as the failed jobs' markers say."""
    from psyrun.run.failures import failed_row_count

    return sum(failed_row_count(getattr(job, "message", "")) for job in failed_jobs)


def jobs_by_state(report) -> dict[str, int]:
    """Jobs of the last run per state, from a :class:`psyrun.run.runner.StatusReport`."""
    from psyrun.run.watch import count_jobs

    return count_jobs(report)


def _rate(backend, running: bool, metadata: Mapping[str, Any]) -> str:
    """Rows per second of the last run (averaged over it), in words; ``''`` when unknown."""
    import datetime

    from psyrun.results.provenance import run_started

    rows = backend.rows_evaluated()
    started = run_started(backend.paths)
    if not rows or not started:
        return ""
    begin = datetime.datetime.fromisoformat(started).timestamp()
    if running:
        end, what = time.time(), "so far in the run in progress"
    else:
        finished = metadata.get("finished") if isinstance(metadata, Mapping) else None
        if not isinstance(finished, str):
            return ""
        try:
            end = datetime.datetime.fromisoformat(finished).timestamp()
        except ValueError:
            return ""
        what = "over the last run, from its submission to its merge"
        if end < begin:
            return ""  # the result is older than the last submission
    seconds = max(end - begin, 1e-3)
    rate = rows / seconds
    shown = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
    return f"{shown} rows/s {what} ({rows:,} rows in {_duration(seconds)})"


def _duration(seconds: float) -> str:
    from psyrun.run.watch import format_duration

    return f"{seconds:.2g}s" if seconds < 10 else format_duration(seconds)


def status_of(task) -> tuple[StatusView, Any, Any]:
    """Return the task's :class:`StatusView`, its ``StatusReport`` and its backend."""
    from psyrun.run.defaults import make_backend
    from psyrun.run.runner import task_status

    report = task_status(task, missing=True)
    progress = report.progress
    view = StatusView(
        completed=progress.completed,
        total=progress.total,
        stale=getattr(progress, "stale", 0),
        outside=getattr(progress, "outside", 0),
        unmerged=getattr(progress, "unmerged", 0),
        result=getattr(progress, "result", "ok"),
        failed_jobs=list(report.failed),
        running_pid=report.running_pid,
        notes=list(progress.notes),
        jobs=jobs_by_state(report),
    )
    view.failed_rows = min(failed_rows(report.failed), view.missing)
    return view, report, make_backend(task)


# -- the grid of a space ----------------------------------------------------------------


def grid_axes(space) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]] | None:
    """Return the grid of `space`: sorted values, rows per value and factor length per key.

    A space is a grid when it is a product of :class:`~psyrun.pspace.Param`
    factors in which at most one key varies (``Param(a=[...]) * Param(b=[...])``,
    constants allowed), each factor has at most :data:`MAX_AXIS_VALUES` rows
    and the varying values are numbers, booleans or str. Other spaces (sums,
    differences, zipped keys, samples) return None: they are drawn as scatter
    plots. Constant keys are not axes.
    """
    from psyrun.pspace import Param, Product

    if isinstance(space, Product):
        # The factors of a product (the product keeps them; nothing public lists them).
        factors = list(getattr(space, "_factors", []))
    elif isinstance(space, Param):
        factors = [space]
    else:
        return None
    n = len(space)
    if not factors or n == 0:
        return None
    axes, expected, factor_len = {}, {}, {}
    for factor in factors:
        if not isinstance(factor, Param) or not 0 < len(factor) <= MAX_AXIS_VALUES:
            return None
        if len(factor) == 1:
            continue  # constants of any kind are no axes
        columns = factor.to_arrays()
        varying = []
        for key in factor.keys():
            column = columns[key]
            if column.dtype.kind == "O" and all(isinstance(v, str) for v in column.flat):
                column = column.astype(str)  # the space keeps str values as objects
            if column.ndim != 1 or column.dtype.kind not in "biufU":
                return None  # arrays or objects as values: no axis to bin on
            if column.dtype.kind == "f" and np.isnan(column).any():
                return None
            values, counts = np.unique(column, return_counts=True)
            if len(values) > 1:
                varying.append((key, values, counts))
        if len(varying) > 1:
            return None  # keys that vary together: not a grid
        for key, values, counts in varying:
            axes[key] = values
            expected[key] = counts * (n // len(factor))
            factor_len[key] = len(factor)
    return (axes, expected, factor_len) if axes else None


def _axis_index(axis: np.ndarray, column: np.ndarray) -> np.ndarray:
    """Index of each value of `column` in the sorted `axis`; -1 where it is not there."""
    column = np.asarray(column)
    out = np.full(len(column), -1, dtype=np.int64)
    if column.ndim != 1 or not len(column):
        return out
    if axis.dtype.kind == "U":
        if column.dtype.kind not in "UO":
            return out
        column = np.array([v if isinstance(v, str) else "\0" for v in column], dtype=str)
    elif column.dtype.kind not in "biuf":
        return out
    pos = np.clip(np.searchsorted(axis, column), 0, len(axis) - 1)
    hit = axis[pos] == column
    out[hit] = pos[hit]
    return out


# -- reading the rows -----------------------------------------------------------------


def _describe_kind(column: np.ndarray) -> tuple[str, str]:
    """``(kind, why it cannot be plotted or '')`` of a stored column."""
    if column.ndim > 1:
        shape = "x".join(map(str, column.shape[1:]))
        return f"array {shape}", f"it holds an array of shape ({shape}) per row"
    kind = column.dtype.kind
    if kind == "b":
        return "bool", ""
    if kind in "iu":
        return "integer", ""
    if kind == "f":
        return "float", ""
    if kind == "c":
        return "complex", "it holds complex numbers"
    if kind in "US":
        return "str", "it holds text"
    if kind in "mM":
        return "time", "it holds dates or times"
    if kind == "O":
        types = sorted({type(v).__name__ for v in column[:1000]})
        return "object", f"it holds Python objects ({', '.join(types[:3])})"
    return str(column.dtype), f"it holds values of type {column.dtype}"


def _sources(task, backend, status: StatusView, notes: list[str]) -> list[tuple[str, Any, str]]:
    """``(label, store, path)`` of every file with stored rows, the result first."""
    sources = []
    result = os.fspath(task.resultfile)
    if status.result == "ok" and task.store.exists(result):
        sources.append(("result file", task.store, result))
    elif status.result == "damaged":
        notes.append(f"the result file {result} is damaged: none of its rows is shown")
    store_for = getattr(backend, "store_for", None)
    if store_for is not None:
        for _, path, _ in backend.paths.list_parts():
            sources.append(("part file", store_for(path), path))
    return sources


def _stale_mask(store, path: str, n_rows: int, current: str | None) -> np.ndarray | None:
    """Per row of a result: computed by another (known) version of the code; None: none is."""
    from psyrun.run.versions import expand_segments, read_row_versions

    if current is None:
        return None
    segments = read_row_versions(store, path, n_rows)
    if segments is None:
        return None
    names: list = []
    codes = expand_segments(segments, names)
    other = [i for i, v in enumerate(names) if v is not None and v != current]
    if not other:
        return None
    return np.isin(codes, other)


def _chunks(store, path: str) -> Iterator[dict[str, np.ndarray]]:
    yield from store.iter_chunks(path, CHUNK_ROWS)


class _Reader:
    """Reads chunks of stored rows and reduces them to what the page draws."""

    def __init__(self, data: ReportData, grid: Grid | None, sample: Sample | None) -> None:
        self.data = data
        self.grid = grid
        self.sample = sample
        self.info: dict[str, ColumnInfo] = {}
        self.position = 0  # rows of every source seen so far (for the subsample)

    def column_info(self, chunk: Mapping[str, np.ndarray]) -> None:
        params = set(self.data.params)
        for name, column in chunk.items():
            kind, why = _describe_kind(np.asarray(column))
            info = self.info.get(name)
            if info is None:
                info = self.info[name] = ColumnInfo(name, name in params, kind, why)
                self.data.columns.append(info)
            elif why and not info.why_not:
                # A later chunk holds values of another kind: no plot of a part of it.
                info.kind, info.why_not = kind, why
                self._forget(name)

    def _forget(self, name: str) -> None:
        if self.grid is not None:
            self.grid.lines.pop(name, None)
            self.grid.cells.pop(name, None)
        if self.sample is not None and name not in self.data.params:
            self.sample.columns.pop(name, None)

    def outputs(self) -> list[str]:
        return [c.name for c in self.data.columns if not c.parameter and c.plottable]

    def add(self, chunk: dict[str, np.ndarray], stale: np.ndarray | None) -> None:
        n = len(next(iter(chunk.values()))) if chunk else 0
        if not n:
            return
        self.column_info(chunk)
        keep = np.ones(n, dtype=bool) if stale is None else ~stale
        self.data.rows_stale += int(n - keep.sum())
        if self.grid is not None:
            self._add_grid(chunk, keep)
        if self.sample is not None:
            self._add_sample(chunk, keep)
        self.position += n

    def _add_grid(self, chunk: dict[str, np.ndarray], keep: np.ndarray) -> None:
        grid = self.grid
        index = {}
        for key, axis in grid.axes.items():
            if key not in chunk:
                grid.off_grid += int(keep.sum())
                return
            index[key] = _axis_index(axis, chunk[key])
        on = keep.copy()
        for idx in index.values():
            on &= idx >= 0
        grid.off_grid += int(keep.sum() - on.sum())
        if not on.any():
            return
        index = {k: v[on] for k, v in index.items()}
        for key, idx in index.items():
            grid.have[key] += np.bincount(idx, minlength=len(grid.axes[key]))
        for a, b in grid.pairs:
            flat = index[a] * len(grid.axes[b]) + index[b]
            size = len(grid.axes[a]) * len(grid.axes[b])
            grid.pair_have[(a, b)] += np.bincount(flat, minlength=size).reshape(
                len(grid.axes[a]), len(grid.axes[b])
            )
        for name in self.outputs():
            values = np.asarray(chunk[name])[on].astype(np.float64)
            finite = np.isfinite(values)
            y = values[finite]
            lines = grid.lines.setdefault(
                name, {k: _line_stats(len(a)) for k, a in grid.axes.items()}
            )
            for key, idx in index.items():
                i = idx[finite]
                stats = lines[key]
                stats["count"] += np.bincount(i, minlength=len(stats["count"]))
                stats["sum"] += np.bincount(i, y, minlength=len(stats["count"]))
                stats["sumsq"] += np.bincount(i, y * y, minlength=len(stats["count"]))
                np.minimum.at(stats["min"], i, y)
                np.maximum.at(stats["max"], i, y)
            cells = grid.cells.setdefault(name, {})
            for a, b in grid.pairs:
                shape = (len(grid.axes[a]), len(grid.axes[b]))
                flat = index[a][finite] * shape[1] + index[b][finite]
                cell = cells.setdefault(
                    (a, b), {"count": np.zeros(shape, np.int64), "sum": np.zeros(shape)}
                )
                size = shape[0] * shape[1]
                cell["count"] += np.bincount(flat, minlength=size).reshape(shape)
                cell["sum"] += np.bincount(flat, y, minlength=size).reshape(shape)

    def _add_sample(self, chunk: dict[str, np.ndarray], keep: np.ndarray) -> None:
        sample = self.sample
        n = len(keep)
        first = (-self.position) % sample.step
        picked = np.arange(first, n, sample.step)
        picked = picked[keep[picked]]
        names = [*self.data.params, *self.outputs()]
        for name in names:
            info = self.info.get(name)
            if name not in chunk or info is None:
                continue
            column = np.asarray(chunk[name])
            if column.ndim != 1:
                continue
            sample.columns.setdefault(name, []).append(column[picked])

    def finish(self) -> None:
        if self.sample is not None:
            columns = {}
            for name, parts in self.sample.columns.items():
                columns[name] = np.concatenate(parts) if parts else np.zeros(0)
            lengths = {len(v) for v in columns.values()}
            if len(lengths) > 1:
                # A column missing from some chunks: keep only the complete ones.
                most = max(lengths)
                columns = {k: v for k, v in columns.items() if len(v) == most}
            self.sample.columns = columns


def _line_stats(n: int) -> dict[str, np.ndarray]:
    return {
        "count": np.zeros(n, np.int64),
        "sum": np.zeros(n),
        "sumsq": np.zeros(n),
        "min": np.full(n, np.inf),
        "max": np.full(n, -np.inf),
    }


def _missing_sample(space, sample: Sample, params: list[str]) -> None:
    """Keep a regular subsample of the missing assignments (their parameters only)."""
    if space is None:
        return
    n = len(space)
    if not n:
        return
    step = max(1, math.ceil(n / MISSING_SAMPLE))
    rows = np.arange(0, n, step)
    taken = space.take(rows)
    sample.missing = {k: np.asarray(taken[k]) for k in params if k in taken}
    sample.missing_step = step


def collect(task) -> ReportData:
    """Gather everything the report of `task` shows (see the module's description)."""
    status, report, backend = status_of(task)
    data = ReportData(task.name, status, params=list(task.pspace.keys()))
    result = os.fspath(task.resultfile)
    if status.result != "damaged" and task.store.exists(result):
        try:
            data.metadata = task.store.read_metadata(result)
        except Exception as exc:
            data.metadata_error = f"{type(exc).__name__}: {exc}"
    status.rate = _rate(backend, status.in_progress, data.metadata)
    sources = _sources(task, backend, status, data.read_notes)
    counts = []
    for label, store, path in sources:
        try:
            counts.append(int(store.count_rows(path)))
        except Exception as exc:
            data.read_notes.append(f"the {label} {path} cannot be read ({_first_line(exc)})")
            counts.append(None)
    readable = [(s, c) for s, c in zip(sources, counts) if c is not None]
    data.rows_stored = sum(c for _, c in readable)
    axes = grid_axes(task.pspace)
    grid = sample = None
    if axes is not None:
        values, expected, factor_len = axes
        grid = Grid(values, expected, factor_len, len(task.pspace))
        grid.have = {k: np.zeros(len(v), np.int64) for k, v in values.items()}
        grid.pair_have = {
            (a, b): np.zeros((len(values[a]), len(values[b])), np.int64) for a, b in grid.pairs
        }
    else:
        sample = Sample(step=max(1, math.ceil(data.rows_stored / SAMPLE_ROWS)))
    reader = _Reader(data, grid, sample)
    for (label, store, path), n_rows in readable:
        stale = _stale_mask(store, path, n_rows, getattr(task, "version", None))
        offset = 0
        try:
            for chunk in _chunks(store, path):
                n = len(next(iter(chunk.values()))) if chunk else 0
                part = None if stale is None else stale[offset : offset + n]
                _take_head(data, chunk, part, path, label)
                reader.add(chunk, part)
                data.rows_read += n
                offset += n
        except Exception as exc:
            data.read_notes.append(
                f"the {label} {path} could not be read to its end ({_first_line(exc)}); "
                f"the plots show the {offset} rows read before"
            )
    reader.finish()
    data.grid, data.sample = grid, sample
    if sample is not None:
        _missing_sample(report.missing, sample, data.params)
        _drop_outside(task, data, sample)
    return data


def _take_head(data: ReportData, chunk, stale, path: str, label: str) -> None:
    have = len(next(iter(data.head.values()))) if data.head else 0
    need = HEAD_ROWS - have
    if need <= 0 or not chunk:
        return
    new = {k: np.asarray(v)[:need] for k, v in chunk.items()}
    flags = np.zeros(len(next(iter(new.values()))), bool) if stale is None else stale[:need]
    if not data.head:
        data.head, data.head_stale, data.head_source = new, flags, f"{label} {path}"
        return
    data.head = {k: np.concatenate([data.head[k], new[k]]) for k in data.head if k in new}
    data.head_stale = np.concatenate([data.head_stale, flags])


def _drop_outside(task, data: ReportData, sample: Sample) -> None:
    """Leave out of the subsample the rows whose assignment is not in the space."""
    if not data.status.outside or not sample.kept():
        return
    from psyrun.results.merge import match_rows

    params = {k: sample.columns[k] for k in data.params if k in sample.columns}
    if len(params) != len(data.params):
        return
    outside = match_rows(task.pspace, params).outside
    sample.columns = {k: v[~outside] for k, v in sample.columns.items()}
    data.read_notes.append(
        f"{int(outside.sum())} subsampled rows are outside the current parameter space and "
        "are not drawn"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
