"""Turn a task's results into tables and labelled grids for analysis and plots.

A result file is a dict of equal-length columns, one entry per evaluated
assignment. Two views make it easy to analyse:

* :func:`to_dataframe` -- a :class:`pandas.DataFrame`, one row per assignment;
* :func:`to_xarray` -- an :class:`xarray.Dataset` with one dimension per
  parameter, for spaces that are Cartesian products; assignments without a
  result are NaN, so a sweep plots in one line.

:func:`load_results`, :func:`load_dataframe` and :func:`load_xarray` do the
same starting from a task name, reading the task's result file with its store;
:func:`load_metadata` returns what the result file records about the run that
produced it (see :mod:`psyrun.results.provenance`).

pandas and xarray are optional (``pip install "psyrun[analysis]"``) and are
imported only by the functions that need them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from psyrun.dims import value_dims

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas
    import xarray

__all__ = [
    "current_rows",
    "load_dataframe",
    "load_metadata",
    "load_results",
    "load_xarray",
    "to_dataframe",
    "to_xarray",
]

_INSTALL_HINT = 'install it with `pip install "psyrun[analysis]"`'


def _import_optional(name: str, caller: str):
    """Import pandas or xarray, or explain which extra provides it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"{caller}() needs {name}; {_INSTALL_HINT}") from None


def _ragged_to_object(values: Any) -> np.ndarray:
    # A list whose entries are arrays of different shapes: keep one entry per row.
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _as_column(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values
    try:
        return np.asarray(values)
    except ValueError:  # ragged nested sequences
        return _ragged_to_object(values)


def to_dataframe(data: Mapping[str, Any]) -> pandas.DataFrame:
    """Return results as a :class:`pandas.DataFrame`, one row per assignment.

    Parameters
    ----------
    data : mapping of str to sequence
        Equal-length columns, for example what :func:`load_results`, a store's
        ``load()`` or :func:`psyrun.map_pspace` returns.

    Returns
    -------
    pandas.DataFrame
        One column per key. A column whose rows are arrays (an n-d column)
        becomes an object column holding one array per row.

    Raises
    ------
    ImportError
        If pandas is not installed; the message names the extra to install.
    ValueError
        If the columns differ in length.

    Examples
    --------
    >>> from psyrun import Param, map_pspace
    >>> from psyrun.results import to_dataframe
    >>> data = map_pspace(lambda a, b: {'s': a + b}, Param(a=[1, 2]) * Param(b=[10, 20]))
    >>> to_dataframe(data)
       a   b   s
    0  1  10  11
    1  1  20  21
    2  2  10  12
    3  2  20  22
    """
    pd = _import_optional("pandas", "to_dataframe")
    columns = {}
    for key, values in data.items():
        array = _as_column(values)
        if array.ndim > 1:
            array = _ragged_to_object(list(array))
        columns[key] = array
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"result columns have different lengths: {lengths}")
    return pd.DataFrame(columns)


def _plain(value: Any) -> Any:
    # NumPy scalars print as np.int64(1); users expect 1.
    return value.item() if isinstance(value, np.generic) else value


def _unique_with_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values (first-seen order if unsortable) and each entry's code."""
    if values.dtype != object:
        uniques, codes = np.unique(values, return_inverse=True)
        return uniques, codes.reshape(-1)
    try:
        uniques, codes = np.unique(values, return_inverse=True)
        return uniques, codes.reshape(-1)
    except TypeError:  # values of mixed types do not sort: keep first-seen order
        seen: dict[Any, int] = {}
        codes = np.empty(len(values), dtype=np.intp)
        for i, v in enumerate(values):
            key = ("nan",) if isinstance(v, float) and math.isnan(v) else v
            codes[i] = seen.setdefault(key, len(seen))
        uniques = np.empty(len(seen), dtype=object)
        for key, code in seen.items():
            uniques[code] = math.nan if key == ("nan",) else key
        return uniques, codes


# Integers up to this magnitude are exact as float64.
_EXACT_INT = 2**53


def _missing_value_dtype(column: np.ndarray) -> tuple[np.dtype, Any]:
    """Return the dtype and fill value of a column with missing grid cells.

    The missing mark is NaN (NaT for dates), as pandas and xarray use it:
    floats keep their dtype; integers and booleans become float64 when every
    value is exact as a float64 (``|x| <= 2**53``), and an object array of
    the exact values otherwise (a float would round them); strings and
    other objects become object arrays (a NaN in a string array would turn
    into the text ``'nan'``).
    """
    dtype = column.dtype
    if dtype.kind == "f":
        return dtype, np.nan
    if dtype.kind == "c":
        return dtype, complex(np.nan, 0)
    if dtype.kind in "iub":
        exact = dtype.kind == "b" or not column.size
        if not exact:
            exact = bool(
                column.max() <= _EXACT_INT and (dtype.kind == "u" or column.min() >= -_EXACT_INT)
            )
        return (np.dtype(float) if exact else np.dtype(object)), np.nan
    if dtype.kind in "mM":
        return dtype, np.datetime64("NaT") if dtype.kind == "M" else np.timedelta64("NaT")
    return np.dtype(object), np.nan


def _dim_codes(arrays: Mapping[str, Any], dims: Sequence[str]):
    """Each dim's distinct values as codes per row, and how many distinct values it has."""
    codes, sizes = [], []
    for dim in dims:
        column = np.asarray(arrays[dim])
        if column.ndim != 1:
            raise ValueError(f"parameter {dim!r} holds arrays and cannot be a dimension")
        uniques, dim_codes = _unique_with_codes(column)
        codes.append(dim_codes)
        sizes.append(len(uniques))
    return codes, sizes


def _determined_pair(codes, sizes, dims) -> tuple[str, str] | None:
    """Return ``(by, dim)`` if every value of dim `by` occurs with one value of `dim` only.

    Such a `dim` is a function of `by` (a zipped parameter, or the points of a
    random or quasi-random design): on a grid of both it would fill one cell
    per row of `by`, which is no grid at all.
    """
    for i, by in enumerate(dims):
        for j, dim in enumerate(dims):
            if i == j or sizes[j] < 2:
                continue
            pairs = np.unique(codes[i].astype(np.int64) * sizes[j] + codes[j])
            if len(pairs) == sizes[i]:
                return by, dim
    return None


# A grid with holes larger than this many cells, and emptier than one cell in
# this many, is refused: its NaN would cost far more memory than its values.
_SPARSE_CELLS = 10**6
_SPARSE_RATIO = 100


def _grid_shape_check(pspace, dims: Sequence[str], holes: bool = False) -> None:
    """Raise unless `pspace` fits a grid of `dims`.

    The space has no grid structure in `dims` when one of them is determined
    by another, or when a grid of them would be nearly empty (above a million
    cells, fewer than one in a hundred in the space); that is always an
    error. Otherwise it must hold every combination of its values of `dims`,
    unless `holes` allows the missing ones (they become NaN cells).
    """
    if len(pspace) == 0 or not dims:
        return
    codes, sizes = _dim_codes(pspace.to_arrays(), dims)
    grid_size = math.prod(sizes)
    distinct = len(np.unique(np.ravel_multi_index(codes, sizes)))
    pair = _determined_pair(codes, sizes, dims)
    if pair is not None:
        by, dim = pair
        rest = [d for d in dims if d != dim]
        raise ValueError(
            f"the parameter space has no grid structure in {list(dims)}: each value of "
            f"{by!r} occurs with one value of {dim!r} only, so a grid of them would hold "
            f"{distinct} of its {grid_size} cells. Use load_dataframe() (or to_dataframe()) "
            f"for such a space, or pass dims={rest} to keep {dim!r} as a data variable."
        )
    if holes and grid_size > max(_SPARSE_CELLS, _SPARSE_RATIO * distinct):
        raise ValueError(
            f"the parameter space has no grid structure in {list(dims)}: a grid of them "
            f"would hold {distinct} of its {grid_size} cells. Use load_dataframe() (or "
            "to_dataframe()) for such a space, or pass fewer dims."
        )
    if distinct != grid_size and not holes:
        raise ValueError(
            f"the parameter space is not a Cartesian product of {list(dims)}: it holds "
            f"{distinct} of the {grid_size} combinations of their values. Pass "
            f"dims={list(dims)} to get the grid with NaN in the {grid_size - distinct} "
            "cells the space lacks, or use load_dataframe() (or to_dataframe())."
        )


def to_xarray(
    data: Mapping[str, Any],
    dims: Sequence[str] | None = None,
    pspace=None,
    array_dims: Mapping[str, Sequence[str]] | None = None,
) -> xarray.Dataset:
    """Return results as an :class:`xarray.Dataset` with one dimension per parameter.

    Each parameter named in `dims` becomes a dimension whose coordinates are
    its distinct values (sorted where they sort); every other column becomes
    a data variable on that grid. Grid cells without a result row are
    missing: NaN in float columns, and where a cell is missing, integer and
    boolean columns become float64 with NaN (an object array of the exact
    values if some integer exceeds 2**53 in magnitude), string and object
    columns object arrays holding NaN, dates NaT.

    A cell is missing when its assignment was not evaluated (yet), or failed,
    or when it is not in the space at all: with `dims` given, a space that is
    not a full product (``(Param(a=...) * Param(b=...) - corner) *
    Param(seed=...)``) gives its grid with NaN in the cells it lacks.

    Parameters
    ----------
    data : mapping of str to sequence
        Equal-length columns, for example what :func:`load_results` returns.
    dims : sequence of str, optional
        The columns to use as dimensions. Together they must identify each
        row. Given, `pspace` may be a grid with holes; by default (the keys
        of `pspace`) it must be a full Cartesian product of them.
    pspace : psyrun.pspace.ParameterSpace, optional
        The space the results came from. Its values join the coordinates, so
        assignments not yet evaluated show up as missing cells, and it is
        checked to have grid structure in `dims`: no dim may be determined
        by another (each value of one occurring with a single value of the
        other, as in a zipped parameter or the points of a random design),
        and a grid with holes may not be nearly empty (over a million cells,
        fewer than one in a hundred in the space).
    array_dims : mapping of str to list of str, optional
        Names for the axes of columns whose rows are arrays, one per axis,
        e.g. ``{'hist': ['bin']}`` (the task's ``dims`` setting).

    Returns
    -------
    xarray.Dataset
        Output columns whose rows are arrays get extra dimensions named as
        `array_dims` says, else ``<key>_dim_0``, ``<key>_dim_1``, ...

    Raises
    ------
    ImportError
        If xarray is not installed; the message names the extra to install.
    ValueError
        If `dims` is not given and there is no `pspace`, names a missing or
        array-valued column, if two rows share an assignment of `dims`, if
        `pspace` has no grid structure in `dims` (use :func:`to_dataframe`),
        if `dims` is not given and `pspace` is not a Cartesian product, or
        if `array_dims` gives a column a number of names other than its axes.

    Examples
    --------
    >>> from psyrun import Param, map_pspace
    >>> from psyrun.results import to_xarray
    >>> space = Param(a=[1, 2]) * Param(b=[10, 20, 30])
    >>> data = map_pspace(lambda a, b: {'s': a + b}, space[:5])
    >>> ds = to_xarray(data, pspace=space)
    >>> ds.s.values
    array([[11., 21., 31.],
           [12., 22., nan]])
    """
    xr = _import_optional("xarray", "to_xarray")
    # Dims the caller chose may leave holes in the grid; the default must not.
    holes = dims is not None
    if dims is None:
        if pspace is None:
            raise ValueError(
                "to_xarray() needs to know which columns are parameters: pass dims=[...] "
                "or the parameter space as pspace="
            )
        dims = list(pspace.keys())
    dims = list(dims)
    columns = {k: _as_column(v) for k, v in data.items()}
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"result columns have different lengths: {lengths}")
    n_rows = next(iter(lengths.values())) if lengths else 0
    absent = [d for d in dims if d not in columns]
    if absent:
        raise ValueError(
            f"dimension(s) {absent} are not columns of the results; "
            f"the columns are {sorted(columns)}"
        )
    if len(set(dims)) != len(dims):
        raise ValueError(f"dims names a column twice: {dims}")

    extra = None
    if pspace is not None:
        missing_keys = [d for d in dims if d not in pspace.keys()]
        if missing_keys:
            raise ValueError(f"dimension(s) {missing_keys} are not keys of the parameter space")
        _grid_shape_check(pspace, dims, holes)
        extra = pspace.to_arrays()

    coords = {}
    codes = []
    for dim in dims:
        column = columns[dim]
        if column.ndim != 1:
            raise ValueError(f"column {dim!r} holds arrays and cannot be a dimension")
        if extra is not None:
            column = np.concatenate([column, np.asarray(extra[dim])])
        uniques, dim_codes = _unique_with_codes(column)
        coords[dim] = uniques
        codes.append(dim_codes[:n_rows])
    shape = tuple(len(coords[d]) for d in dims)

    flat = np.ravel_multi_index(codes, shape) if dims else np.zeros(n_rows, dtype=np.intp)
    order = np.argsort(flat, kind="stable")
    repeats = np.flatnonzero(np.diff(flat[order]) == 0)
    if len(repeats):
        first, second = order[repeats[0]], order[repeats[0] + 1]
        assignment = {d: _plain(columns[d][first]) for d in dims}
        raise ValueError(
            f"rows {first} and {second} share the assignment {assignment}; the dims "
            f"{dims} must identify each row (pass more parameters as dims, or use "
            "to_dataframe())"
        )
    complete = n_rows == math.prod(shape)

    variables = {}
    for key, column in columns.items():
        if key in dims:
            continue
        dtype = column.dtype
        fill = None
        if not complete:
            dtype, fill = _missing_value_dtype(column)
        grid = np.empty((math.prod(shape), *column.shape[1:]), dtype=dtype)
        if not complete:
            grid[...] = fill
        grid[flat] = column
        grid = grid.reshape(shape + column.shape[1:])
        extra_dims = value_dims(key, column.ndim, array_dims)
        variables[key] = ([*dims, *extra_dims], grid)
    return xr.Dataset(variables, coords=coords)


def _find_task(task, taskdir: str | os.PathLike):
    """Return the loaded task definition for a task name (a TaskDef passes through)."""
    if not isinstance(task, str):
        return task
    from psyrun.tasks import load_tasks

    tasks = load_tasks(taskdir, names=[task])
    if task in tasks:
        return tasks[task]
    for error in tasks.errors:
        if os.path.basename(error.path) == f"task_{task}.py":
            raise RuntimeError(f"task {task!r} failed to load: {error}")
    known = [os.path.basename(p)[5:-3] for p in _task_files(taskdir)]
    raise KeyError(f"no task {task!r} in {os.fspath(taskdir)!r}; the tasks there are {known}")


def _task_files(taskdir):
    from psyrun.tasks import task_files

    return task_files(taskdir)


def current_rows(data: Mapping[str, Any], pspace) -> dict[str, np.ndarray]:
    """Return the rows of `data` that stand for assignments of `pspace`.

    Rows whose parameters are not in the space (left from before the space
    shrank) are left out, and so are copies beyond the number of times the
    space holds an assignment. The order of the rows is kept.

    Parameters
    ----------
    data : mapping of str to sequence
        Equal-length columns holding every key of `pspace`.
    pspace : psyrun.pspace.ParameterSpace
        The assignments to keep.

    Returns
    -------
    dict of str to numpy.ndarray

    Examples
    --------
    >>> from psyrun import Param
    >>> current_rows({'a': [1, 2, 3], 'y': [10, 20, 30]}, Param(a=[1, 3]))
    {'a': array([1, 3]), 'y': array([10, 30])}
    """
    from psyrun.results.merge import match_rows

    columns = {k: _as_column(v) for k, v in data.items()}
    lacking = [k for k in pspace.keys() if k not in columns]
    if lacking:
        raise KeyError(f"the results lack the parameter(s) {lacking} of the space")
    used = match_rows(pspace, {k: columns[k] for k in pspace.keys()}).used
    return {k: v[used] for k, v in columns.items()}


def load_results(
    task, taskdir: str | os.PathLike = "psy-tasks", only_current: bool = False
) -> dict[str, np.ndarray]:
    """Load the results of a task from its result file.

    Parameters
    ----------
    task : str or psyrun.tasks.TaskDef
        The task name (``square`` for ``task_square.py``) or a loaded task.
    taskdir : str or path, optional
        The task directory, as ``psy --taskdir`` takes it. Relative paths in
        the task (``workdir``, ``resultfile``) are relative to the current
        directory, as for ``psy``.
    only_current : bool, optional
        Leave out rows whose assignment is not in the task's current
        parameter space (kept by ``psy run -c`` after the space shrank; see
        :func:`current_rows`). ``psy prune`` removes them from the file.

    Returns
    -------
    dict of str to numpy.ndarray
        One column per parameter and output, as the task's store loads them.

    Raises
    ------
    FileNotFoundError
        If the task directory or the result file does not exist (run
        ``psy run`` first).
    KeyError
        If there is no such task; the message lists the tasks there.
    RuntimeError
        If the task file fails to load; the message has the error.

    """
    taskdef = _find_task(task, taskdir)
    resultfile = os.fspath(taskdef.resultfile)
    if not os.path.exists(resultfile):
        raise FileNotFoundError(
            f"task {taskdef.name!r} has no result file {resultfile!r} yet; run "
            f"`psy run {taskdef.name}` first (`psy status {taskdef.name}` shows progress)"
        )
    data = taskdef.store.load(resultfile)
    return current_rows(data, taskdef.pspace) if only_current else data


def load_dataframe(
    task, taskdir: str | os.PathLike = "psy-tasks", only_current: bool = False
) -> pandas.DataFrame:
    """Load a task's results as a :class:`pandas.DataFrame`.

    See :func:`load_results` for the parameters and :func:`to_dataframe` for
    the conversion.
    """
    return to_dataframe(load_results(task, taskdir, only_current=only_current))


def load_xarray(
    task,
    taskdir: str | os.PathLike = "psy-tasks",
    dims: Sequence[str] | None = None,
    only_current: bool = False,
) -> xarray.Dataset:
    """Load a task's results as an :class:`xarray.Dataset`, one dimension per parameter.

    The task's parameter space provides the coordinates, so assignments
    without a result (not yet run, or failed) are missing cells (NaN). With
    `dims` given, a space that is not a full product of them (a grid minus
    some assignments, a sum of grids) gives its grid with NaN in the cells
    the space lacks; a space without grid structure in its parameters (a
    random design: one parameter determined by another; or a grid of over a
    million cells with fewer than one in a hundred in the space) is refused
    with an error that says so: use :func:`load_dataframe` for it. The
    axes of array outputs are named as the task's ``dims`` setting (or, for
    outputs it does not name, the result's metadata) says.

    Parameters
    ----------
    task : str or psyrun.tasks.TaskDef
        The task name or a loaded task.
    taskdir : str or path, optional
        The task directory.
    dims : sequence of str, optional
        Parameters to use as dimensions (default: all keys of the task's
        ``pspace``, which must then be a full product); see
        :func:`to_xarray`.
    only_current : bool, optional
        Leave out rows outside the task's current parameter space (see
        :func:`load_results`), so that the grid is exactly the space's.

    Returns
    -------
    xarray.Dataset
        The results on the parameter grid.
    """
    taskdef = _find_task(task, taskdir)
    data = load_results(taskdef, only_current=only_current)
    metadata = taskdef.store.read_metadata(os.fspath(taskdef.resultfile))
    # The axis names the result was written with; the task file's own win.
    array_dims = {**(metadata.get("dims") or {}), **(getattr(taskdef, "dims", None) or {})}
    dataset = to_xarray(data, dims=dims, pspace=taskdef.pspace, array_dims=array_dims)
    dataset.attrs.update(metadata)
    return dataset


def _is_path(target) -> bool:
    if isinstance(target, os.PathLike):
        return True
    if not isinstance(target, str):
        return False
    from psyrun.store.autodetect import available_stores

    ext = os.path.splitext(target.rstrip("/" + os.sep))[1].lower()
    return os.sep in target or "/" in target or ext in available_stores()


def load_metadata(path_or_task, taskdir: str | os.PathLike = "psy-tasks") -> dict[str, Any]:
    """Return the metadata recorded in a result file: which run produced it.

    Parameters
    ----------
    path_or_task : str, path or psyrun.tasks.TaskDef
        A result file (a path, or a name with a result extension such as
        ``result.h5``; the store is chosen by the extension), a task name or
        a loaded task (its result file is read with its store).
    taskdir : str or path, optional
        The task directory, for a task name.

    Returns
    -------
    dict
        The provenance keys described in :mod:`psyrun.results.provenance` (task file
        hash, git commit, versions, host, times, ...); an empty dict for a
        result written without it (by psyrun 0.8, or by hand).

    Raises
    ------
    FileNotFoundError
        If the result file does not exist.
    KeyError, RuntimeError
        For an unknown task name or a task file that fails to load.
    """
    if _is_path(path_or_task):
        from psyrun.store import get_store

        path = os.fspath(path_or_task)
        store = get_store(path)
    else:
        taskdef = _find_task(path_or_task, taskdir)
        path, store = os.fspath(taskdef.resultfile), taskdef.store
    if not store.exists(path):
        raise FileNotFoundError(f"no result file {path!r}")
    return store.read_metadata(path)
