"""Evaluate a function on every assignment of a parameter space.

The functions here share one loop, :func:`iter_results`: rows are decoded from
the (lazy) parameter space a block at a time, the function is called once per
row with the row's values as keyword arguments, and parameters and outputs are
gathered into columns, one block (a dict of equal-length lists) at a time.
Callers that write results to disk append block by block, so a crash loses at
most the block in flight.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping

#: Rows evaluated between two appends to a result file.
DEFAULT_BLOCK_SIZE = 1024


def _column_values(column) -> list:
    """Plain Python values of one column: scalars for 1-d, arrays for n-d."""
    if column.ndim == 1:
        return column.tolist()
    return list(column)


def _fill_value():
    # The value an output key takes in rows that did not return it.
    return math.nan


def block_rows(arrays: Mapping, keys: list[str]) -> tuple[dict[str, list], list[dict]]:
    """Decode a block of parameter columns into ``(param_columns, rows)``.

    Parameters
    ----------
    arrays : mapping of str to numpy.ndarray
        The block's columns, as ``ParameterSpace.to_arrays`` returns them.
    keys : list of str
        The parameter names, in order.

    Returns
    -------
    param_columns : dict of str to list
        Plain Python values, column by column.
    rows : list of dict
        The same values, one dict per row (keyword arguments for the function).
    """
    columns = {k: _column_values(arrays[k]) for k in keys}
    rows = [dict(zip(keys, values)) for values in zip(*(columns[k] for k in keys))]
    return columns, rows


def iter_rows(
    pspace, start: int = 0, stop: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE
):
    """Yield ``(param_columns, rows)`` blocks for a row range of a space.

    Parameters
    ----------
    pspace : psyrun.pspace.ParameterSpace
        The space to read.
    start, stop : int, optional
        The row range; `stop` defaults to the end of the space.
    block_size : int, optional
        Rows decoded at once.

    Yields
    ------
    param_columns : dict of str to list
        The block's parameter values, column by column.
    rows : list of dict
        The same values, one dict per row (keyword arguments for the function).
    """
    stop = len(pspace) if stop is None else stop
    keys = list(pspace.keys())
    for block_start in range(start, stop, block_size):
        yield block_rows(pspace.to_arrays(block_start, min(block_start + block_size, stop)), keys)


def evaluate_rows(
    fn: Callable[..., Mapping],
    param_columns: Mapping[str, list],
    rows: list[dict],
    exclude: Iterable[str] = (),
    extra_kwargs: Mapping | None = None,
    on_error: Callable[[dict, Exception], None] | None = None,
) -> dict[str, list]:
    """Call `fn` on every row and return parameters and outputs as columns.

    Parameters
    ----------
    fn : callable
        Called as ``fn(**row, **extra_kwargs)``; must return a dict.
    param_columns : mapping of str to list
        The rows' parameter values, column by column.
    rows : list of dict
        The same values, one dict per row.
    exclude : iterable of str, optional
        Keys left out of the returned columns.
    extra_kwargs : mapping, optional
        More keyword arguments for every call (for example what a task's
        ``setup`` returned).
    on_error : callable, optional
        Called as ``on_error(row, exception)`` for a row whose call raises (or
        returns something other than a dict); that row is left out of the
        result and the others are kept. Without it the exception propagates.

    Returns
    -------
    dict of str to list
        Parameter columns first, then output columns in order of first
        appearance. A row that lacks an output key another row has gets NaN.

    Raises
    ------
    TypeError
        If `fn` returns something other than a dict; the message names the row.
    """
    exclude = set(_exclude_keys(exclude))
    outputs = []
    kept = []  # indices of the rows whose call succeeded
    for i, row in enumerate(rows):
        try:
            result = fn(**row, **extra_kwargs) if extra_kwargs else fn(**row)
            if not isinstance(result, Mapping):
                raise TypeError(
                    f"the function {getattr(fn, '__name__', fn)!r} returned "
                    f"{type(result).__name__} for the parameters {row!r}; it must return a "
                    "dict mapping output names to values"
                )
        except Exception as exc:
            if on_error is None:
                raise
            on_error(row, exc)
            continue
        outputs.append(result)
        kept.append(i)

    if len(kept) == len(rows):
        columns = {k: list(v) for k, v in param_columns.items() if k not in exclude}
    else:
        columns = {
            k: [v[i] for i in kept] for k, v in param_columns.items() if k not in exclude
        }
    output_keys: dict[str, None] = {}
    for result in outputs:
        output_keys.update(dict.fromkeys(result))
    for key in output_keys:
        if key in exclude:
            continue
        columns[key] = [result.get(key, _fill_value()) for result in outputs]
    return columns


def iter_results(
    fn: Callable[..., Mapping],
    pspace,
    block_size: int = DEFAULT_BLOCK_SIZE,
    exclude: Iterable[str] | None = None,
    extra_kwargs: Mapping | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[dict[str, list]]:
    """Evaluate `fn` on a space and yield the results one block at a time.

    Parameters
    ----------
    fn : callable
        Called with each assignment as keyword arguments; returns a dict.
    pspace : psyrun.pspace.ParameterSpace
        The assignments.
    block_size : int, optional
        Rows per yielded block.
    exclude : iterable of str, optional
        Keys to leave out of the results.
    extra_kwargs : mapping, optional
        More keyword arguments passed to every call.
    start, stop : int, optional
        Evaluate only this row range of `pspace`.

    Yields
    ------
    dict of str to list
        Parameters and outputs of one block of rows.
    """
    exclude = _exclude_keys(exclude)
    for param_columns, rows in iter_rows(pspace, start, stop, block_size):
        yield evaluate_rows(fn, param_columns, rows, exclude, extra_kwargs)


def concatenate_results(blocks: Iterable[Mapping[str, list]]) -> dict[str, list]:
    """Join result blocks into one dict of lists, filling absent keys with NaN."""
    merged: dict[str, list] = {}
    n_rows = 0
    for block in blocks:
        block_len = len(next(iter(block.values()))) if block else 0
        for key in block:
            if key not in merged:
                merged[key] = [_fill_value()] * n_rows
        for key, values in merged.items():
            values.extend(block[key] if key in block else [_fill_value()] * block_len)
        n_rows += block_len
    return merged


def _exclude_keys(exclude: Iterable[str] | str | None) -> tuple[str, ...]:
    """Return the keys to exclude; one str names one key (not its characters)."""
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    return tuple(exclude)


def _drop_excluded(columns: dict, exclude: Iterable[str]) -> tuple[dict, set]:
    """Remove excluded keys; also return which of them were present."""
    found = {k for k in exclude if k in columns}
    return {k: v for k, v in columns.items() if k not in found}, found


def _warn_unknown_excludes(exclude, found: set, pspace, n_rows: int) -> None:
    # Output keys are only known from evaluated rows, so an empty run cannot judge.
    unknown = [k for k in exclude if k not in found and k not in pspace.keys()]
    if unknown and n_rows > 0:
        warnings.warn(
            f"exclude names keys that are neither parameters nor outputs: {unknown}; "
            "check their spelling",
            UserWarning,
            stacklevel=3,
        )


def map_pspace(fn: Callable[..., Mapping], pspace, exclude: Iterable[str] | None = None) -> dict:
    """Evaluate `fn` on every assignment of `pspace`, one after another.

    Parameters
    ----------
    fn : callable
        Accepts the parameters as keyword arguments and returns a dict of
        outputs.
    pspace : psyrun.pspace.ParameterSpace
        The assignments to evaluate.
    exclude : iterable of str, optional
        Keys (parameters or outputs) to leave out of the result. A key that is
        neither is reported with a warning.

    Returns
    -------
    dict of str to list
        The parameters and outputs, one list entry per assignment.

    Examples
    --------
    >>> from psyrun import Param, map_pspace
    >>> map_pspace(lambda a: {'b': 2 * a}, Param(a=[1, 2]))
    {'a': [1, 2], 'b': [2, 4]}
    """
    exclude = _exclude_keys(exclude)
    result, found = _evaluate_range(fn, pspace, 0, None, exclude)
    _warn_unknown_excludes(exclude, found, pspace, len(pspace))
    return result


def _evaluate_range(fn, pspace, start, stop, exclude):
    """Results for a row range, without excluded keys, and the excluded keys seen."""
    # Module-level so that joblib can pickle it; the lazy space travels, not rows.
    found: set = set()
    blocks = []
    for block in iter_results(fn, pspace, start=start, stop=stop):
        block, found_here = _drop_excluded(block, exclude)
        found |= found_here
        blocks.append(block)
    result = concatenate_results(blocks)
    if not result:
        result = {k: [] for k in pspace.keys() if k not in exclude}
    return result, found


def map_pspace_parallel(
    fn: Callable[..., Mapping],
    pspace,
    n_jobs: int = -1,
    backend: str | None = "loky",
    exclude: Iterable[str] | None = None,
) -> dict:
    """Evaluate `fn` on every assignment of `pspace` in parallel with joblib.

    Rows are sent to the workers in blocks (a few per worker), not one task
    per row, so the overhead stays small for cheap functions.

    Parameters
    ----------
    fn : callable
        As for :func:`map_pspace`; it must be picklable (importable from a
        module) for process-based backends.
    pspace : psyrun.pspace.ParameterSpace
        The assignments to evaluate.
    n_jobs : int, optional
        Number of workers, as joblib counts them (-1: one per core).
    backend : str, optional
        The joblib backend ('loky', 'multiprocessing', 'threading').
    exclude : iterable of str, optional
        Keys to leave out of the result.

    Returns
    -------
    dict of str to list
        The same as :func:`map_pspace` returns, in the same row order.
    """
    try:
        import joblib
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError(
            "map_pspace_parallel needs joblib; install it with `pip install psyrun[parallel]`"
        ) from None
    exclude = _exclude_keys(exclude)
    n_rows = len(pspace)
    workers = joblib.effective_n_jobs(n_jobs) if n_jobs else 1
    # A few blocks per worker evens out uneven row costs.
    n_blocks = max(1, min(n_rows, 4 * workers))
    bounds = [n_rows * i // n_blocks for i in range(n_blocks + 1)]
    blocks = joblib.Parallel(n_jobs=n_jobs, backend=backend)(
        joblib.delayed(_evaluate_range)(fn, pspace, start, stop, exclude)
        for start, stop in itertools.pairwise(bounds)
        if stop > start
    )
    found = set().union(*(f for _, f in blocks))
    result = concatenate_results(b for b, _ in blocks)
    if not result:
        result = {k: [] for k in pspace.keys() if k not in exclude}
    _warn_unknown_excludes(exclude, found, pspace, n_rows)
    return result


def map_pspace_hdd_backed(
    fn: Callable[..., Mapping],
    pspace,
    filename: str | os.PathLike,
    store=None,
    return_data: bool = True,
    pool_size: int = 1,
    exclude: Iterable[str] | None = None,
):
    """Evaluate `fn` on `pspace`, appending the results to a file as it goes.

    If the file already holds results, only the assignments it lacks (matched
    as whole rows, see :func:`psyrun.pspace.missing`) are evaluated, so an
    interrupted call can simply be repeated.

    Parameters
    ----------
    fn : callable
        As for :func:`map_pspace`.
    pspace : psyrun.pspace.ParameterSpace
        The assignments to evaluate.
    filename : str or path
        The result file; created if missing, appended to otherwise.
    store : psyrun.store.Store, optional
        The store writing `filename` (default: picked from its extension).
    return_data : bool, optional
        Load and return the whole file at the end.
    pool_size : int, optional
        Number of processes evaluating rows (needs joblib when above 1).
    exclude : iterable of str, optional
        Keys to leave out of the stored results.

    Returns
    -------
    dict or None
        All results in the file (as the store loads them) if `return_data`.
    """
    from psyrun.pspace import missing

    if store is None:
        from psyrun.store import AutodetectStore

        store = AutodetectStore()
    exclude = _exclude_keys(exclude)
    filename = os.fspath(filename)
    todo = pspace
    if os.path.exists(filename):
        todo = missing(pspace, store.load(filename))

    if pool_size > 1 and len(todo) > 0:
        import joblib

        n_blocks = max(1, min(len(todo), -(-len(todo) // DEFAULT_BLOCK_SIZE)))
        bounds = [len(todo) * i // n_blocks for i in range(n_blocks + 1)]
        blocks = (
            block
            for block, _ in joblib.Parallel(n_jobs=pool_size, return_as="generator")(
                joblib.delayed(_evaluate_range)(fn, todo, start, stop, exclude)
                for start, stop in itertools.pairwise(bounds)
            )
        )
    else:
        blocks = iter_results(fn, todo, exclude=exclude)
    for block in blocks:
        store.append(filename, block)

    if return_data:
        return store.load(filename) if os.path.exists(filename) else {}
    return None
