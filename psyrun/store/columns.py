"""Helpers shared by the stores: normalising, padding and merging chunks.

Also the checks that several stores make alike: finding values a format
cannot hold, whether a chunk fits a file's column layout, and resolving a
row number or a row range.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ARRAY_KINDS",
    "EXACT_FLOAT_INT",
    "common_dtype",
    "count",
    "find_unpicklable",
    "find_unsupported",
    "fits_layout",
    "merge_chunks",
    "missing_value",
    "normalize",
    "padded_dtype",
    "resolve_row",
    "row_slice",
    "select_row",
    "to_column",
]

#: dtype kinds of the columns the array stores (HDF5, zarr) can hold:
#: boolean, integer, float, complex and str.
ARRAY_KINDS = "biufcU"

#: Integers up to this magnitude are exact in float64; a column of larger
#: ones that needs a missing value becomes an object column (None) instead.
EXACT_FLOAT_INT = 2**53


def _ints_exact_in_float(arrays: Sequence[np.ndarray]) -> bool:
    """Whether every integer of ``arrays`` is exact as a float64."""
    return not any(
        a.dtype.kind in "iu"
        and a.size
        and (int(a.max()) > EXACT_FLOAT_INT or int(a.min()) < -EXACT_FLOAT_INT)
        for a in arrays
    )


def _nan_only(a: np.ndarray) -> bool:
    """Tell whether ``a`` is a float column of NaN only: rows without a value (psyrun's mark).

    Rows of empty float arrays count too: a row lacking an array output is
    padded that way (:func:`to_column`).
    """
    return a.dtype.kind == "f" and len(a) > 0 and bool(np.isnan(a).all())


def _object_column(values: Sequence[Any]) -> np.ndarray:
    # Fill element by element: np.array would try to broadcast nested values.
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _is_nan_scalar(value: Any) -> bool:
    return isinstance(value, (float, np.floating)) and np.isnan(value)


def _all_text(value: Any) -> bool:
    """Whether ``value`` is a str array, or a (nested) list or tuple of str only."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "U"
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, str) or _all_text(v) for v in value)
    return False


def to_column(values: Any) -> np.ndarray:
    """Turn one column (list, tuple or array) into a NumPy array.

    Strings give a ``U`` array, and rows that are str arrays (or lists of str)
    a ``U`` array of one more dimension; rows that are arrays of different
    shapes are padded to the enclosing shape (``''`` for str); anything NumPy cannot represent as a
    regular array (mixed strings and numbers, ``None``, dicts) gives an object
    array whose elements are the values themselves.
    """
    if isinstance(values, np.ndarray):
        if values.ndim == 0:
            raise ValueError("a column must be a sequence of row values, got a 0-d array")
        return values
    if isinstance(values, (str, bytes, bytearray, Mapping)):
        # list('abc') would silently turn one string into three rows.
        raise TypeError(f"a column must be a sequence of row values, not {type(values).__name__}")
    values = list(values)
    if not values:
        return np.empty(0, dtype=float)
    n_str = sum(isinstance(v, str) for v in values)
    if 0 < n_str < len(values):
        if all(isinstance(v, str) or _is_nan_scalar(v) for v in values):
            # Strings on some rows, NaN (no value) on the others: '' marks them.
            return np.array(["" if _is_nan_scalar(v) else v for v in values], dtype=str)
        return _object_column(values)
    if any(v is None or isinstance(v, Mapping) for v in values):
        return _object_column(values)
    if n_str and any(v.endswith("\x00") for v in values):
        # NumPy's str arrays drop trailing NULs: keep such strings as they are.
        return _object_column(values)
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged rows of arrays: pad them to the enclosing shape
        ndim = max((np.ndim(v) for v in values), default=0)
        rows = []
        for v in values:
            if ndim and _is_nan_scalar(v):
                # A row without this output (NaN-filled by the mapper) among array rows:
                # a missing row, padded like any short one, not a 0-d object.
                a = np.full((1,) + (0,) * ndim, np.nan)
            else:
                a = to_column([v]) if not isinstance(v, np.ndarray) else v[None]
            rows.append({"c": a})
        return merge_chunks(rows)["c"]
    if arr.dtype.kind == "U" and arr.ndim > 1 and all(map(_all_text, values)):
        # Rows that are str arrays (or lists of str) of one shape: a 2-d str column.
        return arr
    if (arr.dtype.kind == "O" and arr.ndim > 1) or (arr.dtype.kind in "US" and n_str == 0):
        # Nested objects, or NumPy turning non-str rows (e.g. (1, 'x')) into text.
        return _object_column(values)
    if arr.dtype.kind == "f" and arr.ndim == 1 and np.isnan(arr).any():
        big = [
            v
            for v in values
            if isinstance(v, (int, np.integer))
            and not isinstance(v, (bool, np.bool_))
            and abs(int(v)) > EXACT_FLOAT_INT
        ]
        if big:
            # Integers float64 would round, NaN (no value) on other rows: keep
            # the integers exact, None marks the missing ones.
            return _object_column([None if _is_nan_scalar(v) else v for v in values])
    return arr


def count(data: Mapping[str, np.ndarray]) -> int:
    """Return the number of rows of normalised ``data`` (0 when it has no columns)."""
    for value in data.values():
        return len(value)
    return 0


def normalize(data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check that ``data`` is a mapping of equal-length columns; return arrays."""
    if not isinstance(data, Mapping):
        raise TypeError(
            f"data must be a mapping of column name -> column values, got {type(data).__name__}"
        )
    out = {}
    for key, values in data.items():
        if not isinstance(key, str):
            raise TypeError(f"column names must be str, got {key!r}")
        try:
            out[key] = to_column(values)
        except TypeError:
            raise TypeError(
                f"column {key!r} must be a list or array of row values, "
                f"got {type(values).__name__}"
            ) from None
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"all columns must have the same length, got lengths {lengths}")
    return out


def padded_dtype(dtype: np.dtype, values: Sequence[np.ndarray] = ()) -> np.dtype:
    """Return the dtype a column gets once padded with its missing value.

    Integers and booleans become float64 (NaN marks a missing value) when
    every integer of ``values`` is exact as a float64 (``|x| <= 2**53``),
    and an object column (``None`` marks a missing value) otherwise, so
    that no integer is ever rounded.
    """
    if dtype.kind in "iub":
        return np.dtype(float) if _ints_exact_in_float(values) else np.dtype(object)
    if dtype.kind in "fcUSOmM":
        return dtype
    return np.dtype(object)


def missing_value(dtype: np.dtype) -> Any:
    """Return the fill value for padding a column of (padded) ``dtype``."""
    kind = dtype.kind
    if kind in "fc":
        return np.nan
    if kind == "U":
        return ""
    if kind == "S":
        return b""
    if kind in "mM":
        return np.datetime64("NaT") if kind == "M" else np.timedelta64("NaT")
    return None


def common_dtype(dtypes: Sequence[np.dtype]) -> np.dtype:
    """Return a dtype that holds values of all ``dtypes``; object when they do not mix."""
    kinds = {dt.kind for dt in dtypes}
    if "O" in kinds:
        return np.dtype(object)
    numeric = set("biufc")
    if kinds <= numeric or kinds <= {"U"} or kinds <= {"S"} or len(kinds) == 1:
        try:
            return np.result_type(*dtypes)
        except TypeError:
            return np.dtype(object)
    return np.dtype(object)


def merge_chunks(chunks: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate normalised chunks row-wise, padding as the stores promise.

    Keys keep their first-seen order. A key absent from a chunk is filled
    with the missing value for that chunk's rows; per-row arrays of different
    shapes are padded to the enclosing shape; per-row values of different
    dimensionality become an object column.
    """
    lengths = [count(c) for c in chunks]
    total = sum(lengths)
    keys: dict[str, None] = {}
    for chunk in chunks:
        keys.update(dict.fromkeys(chunk))
    out = {}
    for key in keys:
        cols = [c.get(key) for c in chunks]
        kinds = {a.dtype.kind for a in cols if a is not None and len(a)}
        if "f" in kinds and kinds & set("Uiub"):
            # Chunks whose rows all lack a value (NaN, as the mapper and the
            # parameter space mark them) next to str or integer chunks are
            # missing rows: they must not turn the column into objects or
            # round its integers.
            cols = [None if a is not None and _nan_only(a) else a for a in cols]
        present = [a for a in cols if a is not None]
        # Chunks without rows hold no values: they must not change the type
        # or per-row shape of the rows that exist (an empty list is float).
        if total:
            present = [a for a in present if len(a)]
        if not present:
            # The key only appears in chunks without rows: all its rows are missing.
            first = next((c[key] for c in chunks if key in c), None)
            dtype = padded_dtype(first.dtype) if first is not None else np.dtype(float)
            out[key] = np.full(total, missing_value(dtype), dtype=dtype)
            continue
        dtype = common_dtype([a.dtype for a in present])
        ndims = {a.ndim for a in present}
        if len(ndims) > 1:
            # Scalars in some chunks, arrays in others: keep each row's value.
            pieces = []
            for col, n in zip(cols, lengths):
                if col is not None:
                    pieces.extend(list(col))
                else:
                    pieces.extend([None] * n)
            out[key] = _object_column(pieces)
            continue
        shape = tuple(np.max([a.shape[1:] for a in present], axis=0)) if ndims != {1} else ()
        shape = tuple(int(s) for s in shape)
        rows_without_key = any(n and col is None for col, n in zip(cols, lengths))
        needs_padding = rows_without_key or any(a.shape[1:] != shape for a in present)
        if not needs_padding:
            if dtype.kind == "O":
                # Convert first: concatenating str with float arrays would give 'nan' strings.
                present = [a.astype(object, copy=False) for a in present]
            out[key] = np.concatenate(present).astype(dtype, copy=False) if present else None
            continue
        dtype = padded_dtype(dtype, present)
        column = np.full((total, *shape), missing_value(dtype), dtype=dtype)
        start = 0
        for col, n in zip(cols, lengths):
            if col is not None and n:
                column[(slice(start, start + n), *(slice(0, s) for s in col.shape[1:]))] = col
            start += n
        out[key] = column
    return out


def resolve_row(row: int, n: int, filename: str) -> int:
    """Return the index of row ``row`` (negative counts from the end) among ``n`` rows.

    Raises
    ------
    IndexError
        When ``row`` is out of range for ``n`` rows.
    """
    index = row + n if row < 0 else row
    if not 0 <= index < n:
        raise IndexError(f"row {row} out of range for {filename!r} with {n} rows")
    return index


def select_row(data: Mapping[str, np.ndarray], row: int, filename: str) -> dict[str, np.ndarray]:
    """Return row ``row`` (negative counts from the end) as one-element columns."""
    index = resolve_row(row, count(data), filename)
    return {k: v[index : index + 1] for k, v in data.items()}


def row_slice(start: int, stop: int | None, n: int) -> tuple[int, int]:
    """Resolve ``start:stop`` (slice semantics) among ``n`` rows to ``(start, stop)``."""
    start, stop, _ = slice(start, stop).indices(n)
    return start, max(stop, start)


#: A column's layout in a file: its dtype (None for a str column) and per-row shape.
Layout = Mapping[str, tuple[np.dtype | None, tuple[int, ...]]]


def fits_layout(
    layout: Layout,
    data: Mapping[str, np.ndarray],
    str_fits: Callable[[str, np.ndarray], bool] | None = None,
) -> bool:
    """Whether ``data`` can be added to a file of ``layout`` without changing it.

    It fits when it has the same keys and per-row shapes, str columns stay
    str (and ``str_fits(key, column)`` holds, for formats with a fixed string
    width), and every other column's values fit the stored dtype (ints into a
    float column do, floats into an int column do not).
    """
    if set(layout) != set(data):
        return False
    for key, (dtype, shape) in layout.items():
        column = data[key]
        if tuple(shape) != column.shape[1:]:
            return False
        if dtype is None:
            if column.dtype.kind != "U" or (str_fits is not None and not str_fits(key, column)):
                return False
        elif column.dtype.kind == "U" or common_dtype([dtype, column.dtype]) != dtype:
            return False
    return True


_PLAIN = (bool, int, float, complex, str, bytes, np.number, np.bool_, np.str_, type(None))


def _describe(column: np.ndarray) -> str:
    """Name what a column holds, for an error message: 'a dict', 'numpy datetime64[s]'."""
    if column.dtype.kind != "O":
        return f"numpy {column.dtype}"
    types = []
    for value in column.flat:
        if not isinstance(value, _PLAIN):
            return f"a {type(value).__name__}"
        if value is not None and type(value).__name__ not in types:
            types.append(type(value).__name__)
    return f"values of mixed types: {', '.join(types)}" if types else "None values"


def find_unsupported(data: Mapping[str, np.ndarray], kinds: str) -> tuple[str, str] | None:
    """Find the first column whose dtype kind is not among ``kinds``.

    Parameters
    ----------
    data
        Normalised columns (see :func:`normalize`).
    kinds
        The dtype kinds the format holds, for example :data:`ARRAY_KINDS`.

    Returns
    -------
    tuple of str or None
        ``(key, what it holds)``, e.g. ``('o', 'a dict')``, or None when
        every column is supported.
    """
    for key, column in data.items():
        if column.dtype.kind not in kinds:
            return key, _describe(column)
    return None


def find_unpicklable(data: Mapping[str, np.ndarray]) -> tuple[str, str, str] | None:
    """Find the first value of an object column that cannot be pickled.

    Returns
    -------
    tuple of str or None
        ``(key, 'a <type>', first line of the pickle error)``, or None when
        every value pickles (numeric and str columns always do).
    """
    for key, column in data.items():
        if column.dtype.kind != "O":
            continue
        for value in column.flat:
            try:
                pickle.dumps(value)
            except Exception as exc:  # pickle raises whatever __reduce__ raises
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                return key, f"a {type(value).__name__}", reason
    return None
