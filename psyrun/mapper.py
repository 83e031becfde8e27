"""Evaluate a function on every assignment of a parameter space.

Rows are decoded from the (lazy) parameter space a block at a time and the
function is evaluated block by block, in one of two modes:

* **row by row** (the default): the function is called once per row with the
  row's values as keyword arguments and returns a dict of outputs;
* **vectorized**: the function is called once per block with every parameter
  as a NumPy array (one entry per row) and returns a dict of arrays whose first
  dimension is the block's length.

:func:`evaluate_block` is the entry point for both; the ``map_pspace*``
functions and :func:`iter_results` go through it. Callers that write results
to disk append block by block, so a crash loses at most the block in flight.
"""

from __future__ import annotations

import functools
import itertools
import keyword
import math
import os
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_VECTORIZED_BLOCK_SIZE",
    "OutputKeyError",
    "VectorizedOutputError",
    "block_rows",
    "concatenate_results",
    "evaluate_block",
    "evaluate_rows",
    "get_result",
    "iter_results",
    "iter_rows",
    "map_pspace",
    "map_pspace_hdd_backed",
    "map_pspace_parallel",
]

#: Rows evaluated between two appends to a result file (row-by-row mode).
DEFAULT_BLOCK_SIZE = 1024
#: Rows per call of a vectorized function: large enough that the per-call
#: overhead vanishes, small enough that a block of float columns stays in cache.
DEFAULT_VECTORIZED_BLOCK_SIZE = 65536

# The value an output key takes in rows (or blocks) that did not return it.
_FILL = math.nan
# Returned by the generated row loops when every row was consumed.
_END = object()


class OutputKeyError(ValueError):
    """The evaluated function returned an output named like a parameter.

    The output would overwrite the parameter's column, so this is an error in
    the function (rename the output), never a per-row failure: it propagates
    even where failing rows are otherwise recorded and skipped.
    """


class VectorizedOutputError(ValueError):
    """A vectorized function returned a value that is not one entry per row."""


def return_type_error(message: str) -> TypeError:
    """Make the TypeError for a function that returned something other than a dict.

    Its message says everything (what came back, for which parameters): the
    traceback would only point into psyrun, so :func:`is_return_type_error`
    lets ``psy test`` show the message alone. A plain TypeError, as psyrun
    0.8 raised.
    """
    exc = TypeError(message)
    exc.psyrun_return_type = True
    return exc


def is_return_type_error(exc: BaseException) -> bool:
    """Whether `exc` came from :func:`return_type_error`."""
    return getattr(exc, "psyrun_return_type", False) is True


def _name(fn) -> str:
    return getattr(fn, "__name__", repr(fn))


def _check_output_keys(fn, output_keys: Iterable, param_keys) -> None:
    """Raise :class:`OutputKeyError` if an output key is also a parameter key."""
    clash = [k for k in output_keys if k in param_keys]
    if clash:
        key = clash[0]
        raise OutputKeyError(
            f"the function {_name(fn)!r} returned {key!r}, which is also a parameter; "
            "rename the output (an output may not overwrite a parameter column)"
        )


def _non_dict_error(fn, result, row) -> TypeError:
    return return_type_error(
        f"the function {_name(fn)!r} returned {type(result).__name__} for the parameters "
        f"{row!r}; it must return a dict mapping output names to values"
    )


def _column_values(column) -> list:
    """Plain Python values of one column: scalars for 1-d, arrays for n-d."""
    if type(column) is list:  # already plain values (ParameterSpace.build)
        return column
    if column.ndim == 1:
        return column.tolist()
    return list(column)


def _exclude_keys(exclude: Iterable[str] | str | None) -> tuple[str, ...]:
    """Return the keys to exclude; one str names one key (not its characters)."""
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    return tuple(exclude)


# -- the row-by-row loop ---------------------------------------------------------
#
# The loops below are generated from the parameter and output key names (as
# dataclasses and namedtuple generate their methods): a call with literal
# keyword names, ``fn(x=v)``, costs about half of ``fn(**row)`` with a dict
# built per row, and picking the outputs by literal key into per-key lists
# avoids keeping a dict per row alive. Where the function's signature allows
# it, the values are passed by position, ``fn(v)``, which CPython calls faster
# still. Only ``repr`` of str keys goes into the source, so it is always valid
# Python whatever the names are.

#: The call passes the row's values by position (see :func:`_positional_order`).
_Order = tuple[int, ...] | None


def _positional_order(fn, keys: tuple[str, ...]) -> _Order:
    """Return the order in which to pass `keys` by position to `fn`, or None.

    The positional call must bind exactly as the keyword call ``fn(k=v, ...)``
    would: `fn` is a plain Python function whose first ``len(keys)``
    parameters are the keys (in any order), none of them positional-only.
    Anything else (builtins, methods, ``functools.partial``, ``**kwargs``)
    is called by keyword.
    """
    if type(fn) is not types.FunctionType or not keys:
        return None
    code = fn.__code__
    names = code.co_varnames[: len(keys)]
    if code.co_posonlyargcount or len(keys) > code.co_argcount or set(names) != set(keys):
        return None
    index = {k: i for i, k in enumerate(keys)}
    return tuple(index[name] for name in names)


def _call_source(
    param_keys: tuple[str, ...] | None, with_extra: bool, order: _Order = None
) -> tuple[str, str]:
    """Return the loop target and the call arguments for one row.

    ``param_keys=None`` means the rows are dicts (called as ``fn(**row)``);
    `order` passes the values by position in that order instead of by name.
    """
    if param_keys is None:
        target, args = "_v0", ["**_v0"]
    else:
        names = [f"_v{i}" for i in range(len(param_keys))]
        target = names[0] if len(names) == 1 else ", ".join(names) + ","
        if order is not None:
            args = [names[i] for i in order]
        else:
            plain = [f"{k}={v}" for k, v in zip(param_keys, names) if _is_name(k)]
            other = [f"{k!r}: {v}" for k, v in zip(param_keys, names) if not _is_name(k)]
            args = plain + ([f"**{{{', '.join(other)}}}"] if other else [])
    if with_extra:
        args.append("**_extra")
    return target, ", ".join(args)


def _is_name(key: str) -> bool:
    return key.isidentifier() and not keyword.iskeyword(key)


def _compile(source: str, name: str):
    namespace: dict[str, Any] = {"_END": _END, "_dict": dict}
    exec(compile(source, f"<psyrun.mapper {name}>", "exec"), namespace)
    return namespace[name]


@functools.lru_cache(maxsize=256)
def _plain_loop(param_keys: tuple[str, ...] | None, with_extra: bool, order: _Order):
    """Compile a loop appending every row's raw result (any keys, any type)."""
    target, args = _call_source(param_keys, with_extra, order)
    return _compile(
        f"def _plain_loop(_fn, _rows, _extra, _append):\n"
        f"    for {target} in _rows:\n"
        f"        _append(_fn({args}))\n"
        f"    return _END\n",
        "_plain_loop",
    )


@functools.lru_cache(maxsize=256)
def _keyed_loop(
    param_keys: tuple[str, ...] | None, with_extra: bool, order: _Order, output_keys: tuple
):
    """Compile a loop for rows that all return a dict with exactly `output_keys`.

    It appends each output to its own list and returns the first result that
    does not fit (another type or other keys), or ``_END``.
    """
    target, args = _call_source(param_keys, with_extra, order)
    n = len(output_keys)
    appenders = [f"_a{i}" for i in range(max(n, 1))]
    lines = [
        f"def _keyed_loop(_fn, _rows, _extra, {', '.join(appenders)}):",
        f"    for {target} in _rows:",
        f"        _r = _fn({args})",
        # ``__class__`` is a cheaper lookup than a call of ``type``.
        f"        if _r.__class__ is not _dict or len(_r) != {n}:",
        "            return _r",
    ]
    if n:
        # Fetch every output before appending any, so a row never half-lands.
        lines.append("        try:")
        lines += [f"            _o{i} = _r[{k!r}]" for i, k in enumerate(output_keys)]
        lines += ["        except KeyError:", "            return _r"]
        lines += [f"        _a{i}(_o{i})" for i in range(n)]
    else:
        lines.append("        _a0(None)")  # counts the rows
    lines.append("    return _END")
    return _compile("\n".join(lines) + "\n", "_keyed_loop")


def _run_rows(fn, rows, n, param_keys, call_keys, extra, on_error, row_of):
    """Call `fn` on `n` rows; return ``(outputs, kept)``.

    `rows` iterates over the rows' values (tuples, single values or dicts, as
    `call_keys` says, see :func:`_call_source`). `outputs` maps output keys to
    lists, in order of first appearance; `kept` lists the row numbers whose
    result is in `outputs` (None: all of them).
    """
    with_extra = bool(extra)
    order = None if call_keys is None else _positional_order(fn, call_keys)
    plain = _plain_loop(call_keys, with_extra, order)
    it = iter(rows)
    failed: list[int] = []
    pos = 0  # rows consumed so far
    out_keys: tuple | None = None  # fast mode: every row returned these keys
    cols: list[list] = []
    results: list | None = None  # general mode: the raw results, one per kept row

    def skipped(exc: Exception, succeeded: int = 0) -> bool:
        # `succeeded` rows ran before row `pos + succeeded` raised `exc`: report
        # that row to on_error and step past it (False: no on_error, re-raise).
        nonlocal pos
        pos += succeeded
        if on_error is None:
            return False
        on_error(row_of(pos), exc)
        failed.append(pos)
        pos += 1
        return True

    while pos < n:
        if results is None and out_keys is None:
            # Look at one result to choose the fast loop's keys.
            first: list = []
            try:
                plain(fn, itertools.islice(it, 1), extra, first.append)
            except Exception as exc:
                if skipped(exc):
                    continue
                raise
            pos += 1
            result = first[0]
            if type(result) is dict and all(type(k) is str for k in result):
                _check_output_keys(fn, result, param_keys)
                out_keys = tuple(result)
                cols = [[v] for v in result.values()] if out_keys else [[None]]
            else:
                results = [result]
        elif results is None:
            loop = _keyed_loop(call_keys, with_extra, order, out_keys)
            before = len(cols[0])
            try:
                odd = loop(fn, it, extra, *(c.append for c in cols))
            except Exception as exc:
                if skipped(exc, len(cols[0]) - before):
                    continue
                raise
            pos += len(cols[0]) - before
            if odd is _END:
                break
            pos += 1
            # Keys changed: go on with the general (slower) bookkeeping.
            if out_keys:
                results = [dict(zip(out_keys, values)) for values in zip(*cols)]
            else:
                results = [{} for _ in cols[0]]
            results.append(odd)
            out_keys, cols = None, []
        else:
            before = len(results)
            try:
                plain(fn, it, extra, results.append)
            except Exception as exc:
                if skipped(exc, len(results) - before):
                    continue
                raise
            break

    kept = None
    if failed:
        dropped = set(failed)
        kept = [i for i in range(n) if i not in dropped]
    if results is None:
        return (dict(zip(out_keys, cols)) if out_keys else {}), kept
    return _general_outputs(fn, results, kept, param_keys, on_error, row_of)


def _general_outputs(fn, results, kept, param_keys, on_error, row_of):
    """Columns of results whose keys (or types) differ from row to row."""
    if not all(isinstance(r, Mapping) for r in results):
        good_results, good_rows = [], []
        for j, result in enumerate(results):
            i = j if kept is None else kept[j]
            if isinstance(result, Mapping):
                good_results.append(result)
                good_rows.append(i)
                continue
            exc = _non_dict_error(fn, result, row_of(i))
            if on_error is None:
                raise exc
            on_error(row_of(i), exc)
        results, kept = good_results, good_rows
    keys: dict = {}
    for result in results:
        keys.update(dict.fromkeys(result))
    _check_output_keys(fn, keys, param_keys)
    return {k: [r.get(k, _FILL) for r in results] for k in keys}, kept


def _assemble(param_columns: Mapping, outputs: Mapping, kept, exclude, copy=True) -> dict:
    """Parameter columns (only the kept rows) then outputs, without `exclude`.

    `copy=False` reuses the parameter lists when every row was kept.
    """
    if kept is None:
        columns = {k: list(v) if copy else v for k, v in param_columns.items() if k not in exclude}
    else:
        columns = {k: [v[i] for i in kept] for k, v in param_columns.items() if k not in exclude}
    for k, v in outputs.items():
        if k not in exclude:
            columns[k] = v
    return columns


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
    if len(keys) == 1:
        (key,) = keys
        rows = [{key: v} for v in columns[key]]
    else:
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
    OutputKeyError
        If `fn` returns a key that is also a parameter (even with `on_error`).
    """
    exclude = set(_exclude_keys(exclude))
    n = len(rows)
    keys = tuple(param_columns)
    if n and tuple(rows[0]) == keys and all(len(param_columns[k]) == n for k in keys):
        # The columns hold the rows' values: calling from them (by position or
        # literal keyword) saves unpacking a dict per row.
        values = param_columns[keys[0]] if len(keys) == 1 else zip(*param_columns.values())
        call_keys = keys
    else:
        values, call_keys = rows, None
    outputs, kept = _run_rows(
        fn, values, n, param_columns, call_keys, extra_kwargs, on_error, rows.__getitem__
    )
    return _assemble(param_columns, outputs, kept, exclude)


def evaluate_block(
    fn: Callable[..., Mapping],
    arrays: Mapping[str, np.ndarray],
    keys: list[str],
    *,
    exclude: Iterable[str] = (),
    extra: Mapping | None = None,
    on_error: Callable[[dict, Exception], None] | None = None,
    vectorized: bool = False,
    rng_seed: int | None = None,
) -> dict[str, list | np.ndarray]:
    """Evaluate `fn` on one block of parameter columns.

    Parameters
    ----------
    fn : callable
        Row by row: called as ``fn(**row, **extra)`` for every row, returns a
        dict of outputs. Vectorized: called once as ``fn(**arrays, **extra)``
        with every parameter as an array of the block's rows (array-valued
        parameters stacked into an n-d array), returns a dict of arrays or
        sequences whose first dimension is the block's length.
    arrays : mapping of str to numpy.ndarray
        The block's parameter columns, as ``ParameterSpace.to_arrays`` or
        ``ParameterSpace.take`` return them. Row by row, lists of plain
        values (as ``ParameterSpace.build`` returns them) are used as they
        are.
    keys : list of str
        The parameter names, in order.
    exclude : iterable of str, optional
        Keys (parameters or outputs) left out of the returned columns.
    extra : mapping, optional
        More keyword arguments for every call (for example what a task's
        ``setup`` returned).
    on_error : callable, optional
        Called as ``on_error(row, exception)`` once for every row whose call
        raises (or, row by row, returns something other than a dict); those
        rows are left out and the others kept. A vectorized block that raises
        is evaluated again row by row, with length-1 arrays, to find the rows
        that fail. Without `on_error` the exception propagates.
    vectorized : bool, optional
        Call `fn` once for the whole block.
    rng_seed : int, optional
        Also pass `fn` an ``rng`` argument: row by row each row's generator
        ``psyrun.row_rng(rng_seed, **row)``, vectorized the block's
        ``psyrun.rng.row_seeds`` (see :func:`psyrun.rng.bind_rng`).

    Returns
    -------
    dict of str to list or numpy.ndarray
        Parameter columns first, then outputs in order of first appearance,
        for the rows that did not fail: lists of plain values row by row,
        NumPy arrays when `vectorized`. A row that lacks an output key another
        row has gets NaN.

    Raises
    ------
    OutputKeyError
        If `fn` returns a key that is also a parameter; raised even with
        `on_error` (it is an error of the function, not of one row).
    VectorizedOutputError
        If a vectorized `fn` returns a scalar or a value whose length is not
        the block's; also raised even with `on_error`.
    TypeError
        If `fn` returns something other than a dict (row by row: unless
        `on_error` records it).

    Notes
    -----
    Row by row, every row is evaluated exactly once, also when some rows fail.
    """
    exclude = set(_exclude_keys(exclude))
    keys = list(keys)
    if rng_seed is not None:
        from psyrun.rng import bind_rng

        fn = bind_rng(fn, rng_seed, keys, vectorized, extra)
    if vectorized:
        return _evaluate_vectorized(fn, arrays, keys, exclude, extra, on_error)
    columns = {k: _column_values(arrays[k]) for k in keys}
    n = len(columns[keys[0]]) if keys else 0
    rows = columns[keys[0]] if len(keys) == 1 else zip(*(columns[k] for k in keys))

    def row_of(i: int) -> dict:
        return {k: columns[k][i] for k in keys}

    outputs, kept = _run_rows(fn, rows, n, columns, tuple(keys), extra, on_error, row_of)
    return _assemble(columns, outputs, kept, exclude, copy=False)


# -- vectorized evaluation ---------------------------------------------------------


def _as_column(values: list) -> np.ndarray:
    """One array from per-row values (n-d if they are equal-shape arrays)."""
    try:
        column = np.array(values)
    except ValueError:  # ragged rows
        column = None
    # NumPy turns mixed numbers and strings into strings: keep the values.
    if (
        column is not None
        and column.dtype.kind in "US"
        and not all(isinstance(v, (str, bytes)) for v in values)
    ):
        column = None
    if column is None or column.shape[:1] != (len(values),) or column.dtype.kind == "O":
        column = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            column[i] = v
    return column


def _vector_outputs(fn, result, n: int, keys, what: str) -> dict[str, np.ndarray]:
    """Check a vectorized result (one entry per row for every key) as arrays."""
    if not isinstance(result, Mapping):
        raise return_type_error(
            f"the vectorized function {_name(fn)!r} returned {type(result).__name__} for "
            f"{what}; it must return a dict mapping output names to arrays"
        )
    _check_output_keys(fn, result, keys)
    outputs = {}
    for key, value in result.items():
        if isinstance(value, np.ndarray):
            received = len(value) if value.ndim else None
        elif isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            received = None
        else:
            received = len(value)
        if received is None:
            raise VectorizedOutputError(
                f"the vectorized function {_name(fn)!r} returned a scalar "
                f"({type(value).__name__}) for {key!r} for {what}: expected length {n}, "
                "received no length; return one value per row (an array of first "
                f"dimension {n})"
            )
        if received != n:
            raise VectorizedOutputError(
                f"the vectorized function {_name(fn)!r} returned {key!r} with length "
                f"{received} for {what}: expected length {n} (one value per row)"
            )
        outputs[key] = value if isinstance(value, np.ndarray) else _as_column(list(value))
    return outputs


def _evaluate_vectorized(fn, arrays, keys, exclude, extra, on_error) -> dict:
    params = {k: np.asarray(arrays[k]) for k in keys}
    n = len(params[keys[0]]) if keys else 0
    columns = {k: v for k, v in params.items() if k not in exclude}
    if n == 0:
        return columns
    try:
        result = fn(**params, **extra) if extra else fn(**params)
    except Exception as exc:
        if on_error is None:
            raise
        if getattr(exc, "psyrun_whole_block", False):
            # A block that timed out fails as a whole (not again row by row).
            for i in range(n):
                on_error({k: _column_values(v[i : i + 1])[0] for k, v in params.items()}, exc)
            return {k: v[:0] for k, v in columns.items()}
        return _retry_rows(fn, params, keys, n, exclude, extra, on_error)
    outputs = _vector_outputs(fn, result, n, keys, f"a block of {n} rows")
    columns.update((k, v) for k, v in outputs.items() if k not in exclude)
    return columns


def _retry_rows(fn, params, keys, n, exclude, extra, on_error) -> dict:
    """Evaluate a failed vectorized block row by row (length-1 arrays)."""
    kept: list[int] = []
    row_outputs: list[dict] = []
    for i in range(n):
        one = {k: v[i : i + 1] for k, v in params.items()}
        try:
            result = fn(**one, **extra) if extra else fn(**one)
        except Exception as exc:
            on_error({k: _column_values(v)[0] for k, v in one.items()}, exc)
            continue
        outputs = _vector_outputs(fn, result, 1, keys, f"row {i} of a block (alone)")
        row_outputs.append({k: v[0] for k, v in outputs.items()})
        kept.append(i)
    columns = {k: v[kept] for k, v in params.items() if k not in exclude}
    out_keys: dict = {}
    for r in row_outputs:
        out_keys.update(dict.fromkeys(r))
    for key in out_keys:
        if key not in exclude:
            columns[key] = _as_column([r.get(key, _FILL) for r in row_outputs])
    return columns


# -- whole spaces ----------------------------------------------------------------


def _block_size(block_size: int | None, vectorized: bool) -> int:
    if block_size is None:
        return DEFAULT_VECTORIZED_BLOCK_SIZE if vectorized else DEFAULT_BLOCK_SIZE
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    return int(block_size)


def iter_results(
    fn: Callable[..., Mapping],
    pspace,
    block_size: int | None = None,
    exclude: Iterable[str] | None = None,
    extra_kwargs: Mapping | None = None,
    start: int = 0,
    stop: int | None = None,
    *,
    vectorized: bool = False,
) -> Iterator[dict[str, list | np.ndarray]]:
    """Evaluate `fn` on a space and yield the results one block at a time.

    Parameters
    ----------
    fn : callable
        Called with each assignment as keyword arguments (or, if `vectorized`,
        with each block's columns); returns a dict.
    pspace : psyrun.pspace.ParameterSpace
        The assignments.
    block_size : int, optional
        Rows per yielded block (default: :data:`DEFAULT_BLOCK_SIZE`, or
        :data:`DEFAULT_VECTORIZED_BLOCK_SIZE` if `vectorized`).
    exclude : iterable of str, optional
        Keys to leave out of the results.
    extra_kwargs : mapping, optional
        More keyword arguments passed to every call.
    start, stop : int, optional
        Evaluate only this row range of `pspace`.
    vectorized : bool, optional
        Call `fn` once per block with NumPy arrays (see :func:`evaluate_block`).

    Yields
    ------
    dict of str to list or numpy.ndarray
        Parameters and outputs of one block of rows (arrays if `vectorized`).
    """
    block_size = _block_size(block_size, vectorized)
    exclude = _exclude_keys(exclude)
    stop = len(pspace) if stop is None else min(stop, len(pspace))
    keys = list(pspace.keys())
    # Row by row, the function gets plain values: build() makes them without
    # converting a product's repeated values again for every row.
    columns = pspace.to_arrays if vectorized else pspace.build
    for block_start in range(start, stop, block_size):
        arrays = columns(block_start, min(block_start + block_size, stop))
        yield evaluate_block(
            fn, arrays, keys, exclude=exclude, extra=extra_kwargs, vectorized=vectorized
        )


def _join(pieces: list, reuse: bool = False) -> list | np.ndarray:
    """Concatenate one key's pieces: lists stay lists, arrays become one array.

    `reuse` extends the first list in place instead of copying it.
    """
    if all(type(p) is list for p in pieces):
        joined = pieces[0] if reuse else list(pieces[0])
        for piece in pieces[1:]:
            joined.extend(piece)
        return joined
    arrays = [p if isinstance(p, np.ndarray) else _as_column(list(p)) for p in pieces]
    kinds = {a.dtype.kind for a in arrays}
    if len({a.shape[1:] for a in arrays}) == 1 and (
        len({a.dtype for a in arrays}) == 1 or kinds <= set("biuf")
    ):
        return np.concatenate(arrays)
    joined = np.empty(sum(len(a) for a in arrays), dtype=object)
    i = 0
    for a in arrays:
        for v in a:
            joined[i] = v
            i += 1
    return joined


def _fill_piece(like, n: int):
    """`n` NaN fill values, as a list or an array like a block's other columns."""
    if isinstance(like, np.ndarray):
        return np.full(n, _FILL)
    return [_FILL] * n


def concatenate_results(blocks: Iterable[Mapping[str, Any]]) -> dict[str, list | np.ndarray]:
    """Join result blocks into one dict of columns, filling absent keys with NaN.

    Blocks of lists give lists; blocks of arrays (vectorized results) give
    arrays.
    """
    return _concatenate(blocks, reuse=False)


def _concatenate(blocks: Iterable[Mapping[str, Any]], reuse: bool) -> dict:
    blocks = [b for b in blocks if b]
    lengths = [len(next(iter(b.values()))) for b in blocks]
    keys: dict = {}
    for block in blocks:
        keys.update(dict.fromkeys(block))
    merged = {}
    for key in keys:
        pieces = []
        for block, n in zip(blocks, lengths):
            if key in block:
                pieces.append(block[key])
            else:
                pieces.append(_fill_piece(next(iter(block.values())), n))
        # One array block needs no copy; lists are always copied (callers extend them).
        single = len(pieces) == 1 and isinstance(pieces[0], np.ndarray)
        merged[key] = pieces[0] if single else _join(pieces, reuse)
    return merged


def _drop_excluded(columns: dict, exclude: Iterable[str]) -> tuple[dict, set]:
    """Remove excluded keys; also return which of them were present."""
    found = {k for k in exclude if k in columns}
    if not found:
        return columns, found
    return {k: v for k, v in columns.items() if k not in found}, found


def _warn_unknown_excludes(exclude, found: set, pspace, n_rows: int) -> None:
    # Output keys are only known from evaluated rows, so an empty run cannot judge.
    unknown = [k for k in exclude if k not in found and k not in pspace.keys()]
    if unknown and n_rows > 0:
        from psyrun.exceptions import IneffectiveExcludeWarning

        warnings.warn(
            f"exclude names keys that are neither parameters nor outputs: {unknown}; "
            "check their spelling",
            IneffectiveExcludeWarning,
            stacklevel=3,
        )


def _empty_result(pspace, exclude, vectorized: bool) -> dict:
    if vectorized:
        return {k: v for k, v in pspace.to_arrays(0, 0).items() if k not in exclude}
    return {k: [] for k in pspace.keys() if k not in exclude}


def get_result(
    fn: Callable[..., Mapping], params: Mapping[str, Any], exclude: Iterable[str] | None = None
) -> dict[str, Any]:
    """Evaluate `fn` on one assignment; return parameters and outputs together.

    Parameters
    ----------
    fn : callable
        Called as ``fn(**params)``; must return a dict of outputs.
    params : mapping of str to any
        One parameter assignment.
    exclude : iterable of str, optional
        Keys (parameters or outputs) left out of the returned dict.

    Returns
    -------
    dict
        The parameters followed by the outputs, without the excluded keys.

    Raises
    ------
    TypeError
        If `fn` does not return a dict.
    OutputKeyError
        If an output key is also a parameter key.

    Examples
    --------
    >>> get_result(lambda a: {'b': 2 * a}, {'a': 3})
    {'a': 3, 'b': 6}
    """
    result = fn(**params)
    if not isinstance(result, Mapping):
        raise _non_dict_error(fn, result, dict(params))
    _check_output_keys(fn, result, params)
    exclude = set(_exclude_keys(exclude))
    merged = {k: v for k, v in params.items() if k not in exclude}
    merged.update((k, v) for k, v in result.items() if k not in exclude)
    return merged


def map_pspace(
    fn: Callable[..., Mapping],
    pspace,
    exclude: Iterable[str] | None = None,
    *,
    vectorized: bool = False,
    block_size: int | None = None,
) -> dict:
    """Evaluate `fn` on every assignment of `pspace`, one after another.

    Parameters
    ----------
    fn : callable
        Accepts the parameters as keyword arguments and returns a dict of
        outputs. If `vectorized`, it receives a block of rows at once, every
        parameter as a NumPy array, and returns a dict of arrays (or
        sequences) with one entry per row.
    pspace : psyrun.pspace.ParameterSpace
        The assignments to evaluate.
    exclude : iterable of str, optional
        Keys (parameters or outputs) to leave out of the result. A key that is
        neither is reported with a warning.
    vectorized : bool, optional
        Call `fn` once per block of rows instead of once per row.
    block_size : int, optional
        Rows per block. Row by row, the default decodes the whole space at
        once (every result stays in memory anyway); if `vectorized`, it is
        :data:`DEFAULT_VECTORIZED_BLOCK_SIZE` rows per call of `fn`.

    Returns
    -------
    dict of str to list or numpy.ndarray
        The parameters and outputs, one entry per assignment: lists of plain
        values, NumPy arrays if `vectorized`.

    Raises
    ------
    OutputKeyError
        If `fn` returns a key that is also a parameter.
    VectorizedOutputError
        If a vectorized `fn` returns a value that is not one entry per row.

    Examples
    --------
    >>> from psyrun import Param, map_pspace
    >>> map_pspace(lambda a: {'b': 2 * a}, Param(a=[1, 2]))
    {'a': [1, 2], 'b': [2, 4]}
    """
    exclude = _exclude_keys(exclude)
    result, found = _evaluate_range(fn, pspace, 0, None, exclude, vectorized, block_size)
    _warn_unknown_excludes(exclude, found, pspace, len(pspace))
    return result


def _evaluate_range(fn, pspace, start, stop, exclude, vectorized=False, block_size=None):
    """Results for a row range, without excluded keys, and the excluded keys seen."""
    # Module-level so that joblib can pickle it; the lazy space travels, not rows.
    if vectorized:
        return _evaluate_range_vectorized(fn, pspace, start, stop, exclude, block_size)
    if block_size is None:
        # Nothing is written between blocks here, so the range is one block:
        # no per-block overhead and no lists to join at the end.
        end = len(pspace) if stop is None else min(stop, len(pspace))
        block_size = max(1, end - start)
    found: set = set()
    blocks = []
    for block in iter_results(
        fn, pspace, block_size, start=start, stop=stop, vectorized=vectorized
    ):
        block, found_here = _drop_excluded(block, exclude)
        found |= found_here
        blocks.append(block)
    # The blocks are ours: their lists can be extended in place.
    result = _concatenate(blocks, reuse=True)
    if not result:
        result = _empty_result(pspace, exclude, vectorized)
    return result, found


def _evaluate_range_vectorized(fn, pspace, start, stop, exclude, block_size):
    """:func:`_evaluate_range` for a vectorized function.

    The whole range is decoded at once (much faster than block by block, and
    every row is kept in memory anyway); `fn` then sees views of it, a block at
    a time. While every block returns the same keys, dtypes and shapes, the
    outputs are copied into columns allocated once (fresh memory for every
    block's result would cost more than the computation); otherwise the blocks
    are concatenated, NaN filling keys that some blocks lack.
    """
    size = _block_size(block_size, True)
    stop = len(pspace) if stop is None else min(stop, len(pspace))
    keys = list(pspace.keys())
    params = pspace.to_arrays(start, stop)
    n = len(params[keys[0]]) if keys else 0
    columns: dict[str, np.ndarray] | None = None  # the fast path's columns
    chunks: list[tuple[int, dict]] = []  # (rows, outputs) once the fast path is left
    for block_start in range(0, n, size):
        views = {k: v[block_start : block_start + size] for k, v in params.items()}
        block = evaluate_block(fn, views, keys, vectorized=True)
        outputs = {k: v for k, v in block.items() if k not in params}
        rows = len(views[keys[0]])
        if columns is None and not chunks:
            columns = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in outputs.items()}
        if columns is not None and _fits(outputs, columns):
            for k, v in outputs.items():
                columns[k][block_start : block_start + rows] = v
            continue
        if columns is not None:
            chunks.append((block_start, {k: c[:block_start] for k, c in columns.items()}))
            columns = None
        chunks.append((rows, outputs))
    result = {k: v for k, v in params.items() if k not in exclude}
    if columns is not None:
        found = {k for k in exclude if k in params or k in columns}
        result.update((k, v) for k, v in columns.items() if k not in exclude)
        return result, found
    out_keys: dict = {}
    for _, outputs in chunks:
        out_keys.update(dict.fromkeys(outputs))
    found = {k for k in exclude if k in params or k in out_keys}
    for key in out_keys:
        if key not in exclude:
            result[key] = _join([o[key] if key in o else np.full(m, _FILL) for m, o in chunks])
    return result, found


def _fits(outputs: Mapping[str, np.ndarray], columns: Mapping[str, np.ndarray]) -> bool:
    """Whether a block's outputs have exactly the columns' keys, dtypes and shapes."""
    return outputs.keys() == columns.keys() and all(
        v.dtype == columns[k].dtype and v.shape[1:] == columns[k].shape[1:]
        for k, v in outputs.items()
    )


def map_pspace_parallel(
    fn: Callable[..., Mapping],
    pspace,
    n_jobs: int = -1,
    backend: str | None = "loky",
    exclude: Iterable[str] | None = None,
    *,
    vectorized: bool = False,
    block_size: int | None = None,
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
    vectorized : bool, optional
        Call `fn` once per block of rows, as for :func:`map_pspace`.
    block_size : int, optional
        Rows per call of `fn` if `vectorized` (and per decoded block
        otherwise; by default each worker decodes its share at once).

    Returns
    -------
    dict of str to list or numpy.ndarray
        The same as :func:`map_pspace` returns, in the same row order.
    """
    try:
        import joblib
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError(
            "map_pspace_parallel needs joblib; install it with `pip install psyrun[parallel]`"
        ) from None
    exclude = _exclude_keys(exclude)
    _block_size(block_size, vectorized)  # a bad value fails here, not in a worker
    n_rows = len(pspace)
    workers = joblib.effective_n_jobs(n_jobs) if n_jobs else 1
    # A few blocks per worker evens out uneven row costs.
    n_blocks = max(1, min(n_rows, 4 * workers))
    bounds = [n_rows * i // n_blocks for i in range(n_blocks + 1)]
    blocks = joblib.Parallel(n_jobs=n_jobs, backend=backend)(
        joblib.delayed(_evaluate_range)(fn, pspace, start, stop, exclude, vectorized, block_size)
        for start, stop in itertools.pairwise(bounds)
        if stop > start
    )
    found = set().union(*(f for _, f in blocks))
    result = _concatenate((b for b, _ in blocks), reuse=True)
    if not result:
        result = _empty_result(pspace, exclude, vectorized)
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
    *,
    vectorized: bool = False,
    block_size: int | None = None,
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
    vectorized : bool, optional
        Call `fn` once per block of rows, as for :func:`map_pspace`.
    block_size : int, optional
        Rows per block, that is per append to the file (default:
        :data:`DEFAULT_BLOCK_SIZE`, or :data:`DEFAULT_VECTORIZED_BLOCK_SIZE`
        if `vectorized`).

    Returns
    -------
    dict or None
        All results in the file (as the store loads them) if `return_data`.

    Notes
    -----
    Blocks are appended one by one, so an error in a block (a row that raises,
    or a :class:`VectorizedOutputError`) keeps every block appended before it.
    """
    from psyrun.pspace import missing

    if store is None:
        from psyrun.store import AutodetectStore

        store = AutodetectStore()
    exclude = _exclude_keys(exclude)
    size = _block_size(block_size, vectorized)
    filename = os.fspath(filename)
    todo = pspace
    if os.path.exists(filename):
        todo = missing(pspace, store.load(filename))

    if pool_size > 1 and len(todo) > 0:
        import joblib

        n_blocks = max(1, -(-len(todo) // size))
        bounds = [len(todo) * i // n_blocks for i in range(n_blocks + 1)]
        blocks = (
            block
            for block, _ in joblib.Parallel(n_jobs=pool_size, return_as="generator")(
                joblib.delayed(_evaluate_range)(fn, todo, start, stop, exclude, vectorized, size)
                for start, stop in itertools.pairwise(bounds)
            )
        )
    else:
        blocks = iter_results(fn, todo, size, exclude=exclude, vectorized=vectorized)
    for block in blocks:
        if block and len(next(iter(block.values()))):
            store.append(filename, block)

    if return_data:
        return store.load(filename) if os.path.exists(filename) else {}
    return None
