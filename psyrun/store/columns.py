"""Helpers shared by the stores: normalising, padding and merging chunks.

Also the checks that several stores make alike: importing an optional
library lazily, refusing column types a format cannot hold, and resolving a
row number.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from psyrun.store.base import Store

__all__ = [
    "check_supported",
    "common_dtype",
    "count",
    "import_optional",
    "load_by_rows",
    "merge_chunks",
    "missing_value",
    "normalize",
    "padded_dtype",
    "prepare_array_columns",
    "resolve_row",
    "select_row",
    "to_column",
]

#: dtype kinds of the columns the array stores (HDF5, zarr) can hold:
#: boolean, integer, float, complex and str.
ARRAY_KINDS = "biufcU"


def _object_column(values: Sequence[Any]) -> np.ndarray:
    # Fill element by element: np.array would try to broadcast nested values.
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _is_nan_scalar(value: Any) -> bool:
    return isinstance(value, (float, np.floating)) and np.isnan(value)


def to_column(values: Any) -> np.ndarray:
    """Turn one column (list, tuple or array) into a NumPy array.

    Strings give a ``U`` array; rows that are arrays of different shapes are
    padded to the enclosing shape; anything NumPy cannot represent as a
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
        return _object_column(values)
    if any(v is None or isinstance(v, Mapping) for v in values):
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
    if (arr.dtype.kind == "O" and arr.ndim > 1) or (arr.dtype.kind in "US" and n_str == 0):
        # Nested objects, or NumPy turning non-str rows (e.g. (1, 'x')) into text.
        return _object_column(values)
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


def padded_dtype(dtype: np.dtype) -> np.dtype:
    """Return the dtype a column gets once padded with its missing value."""
    if dtype.kind in "iub":
        return np.dtype(float)
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
        present = [c[key] for c in chunks if key in c]
        # Chunks without rows hold no values: they must not change the type
        # or per-row shape of the rows that exist (an empty list is float).
        if total:
            present = [a for a in present if len(a)]
        if not present:
            # The key only appears in chunks without rows: all its rows are missing.
            dtype = padded_dtype(next(c[key] for c in chunks if key in c).dtype)
            out[key] = np.full(total, missing_value(dtype), dtype=dtype)
            continue
        dtype = common_dtype([a.dtype for a in present])
        ndims = {a.ndim for a in present}
        if len(ndims) > 1:
            # Scalars in some chunks, arrays in others: keep each row's value.
            pieces = []
            for chunk, n in zip(chunks, lengths):
                if key in chunk:
                    pieces.extend(list(chunk[key]))
                else:
                    pieces.extend([None] * n)
            out[key] = _object_column(pieces)
            continue
        shape = tuple(np.max([a.shape[1:] for a in present], axis=0)) if ndims != {1} else ()
        shape = tuple(int(s) for s in shape)
        rows_without_key = any(n and key not in c for c, n in zip(chunks, lengths))
        needs_padding = rows_without_key or any(a.shape[1:] != shape for a in present)
        if not needs_padding:
            if dtype.kind == "O":
                # Convert first: concatenating str with float arrays would give 'nan' strings.
                present = [a.astype(object, copy=False) for a in present]
            out[key] = np.concatenate(present).astype(dtype, copy=False) if present else None
            continue
        dtype = padded_dtype(dtype)
        column = np.full((total, *shape), missing_value(dtype), dtype=dtype)
        start = 0
        for chunk, n in zip(chunks, lengths):
            if key in chunk and n:
                a = chunk[key]
                column[(slice(start, start + n), *(slice(0, s) for s in a.shape[1:]))] = a
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


def load_by_rows(store: Store, filename: str, row: int | None) -> dict[str, np.ndarray]:
    """Implement :meth:`Store.load` with the store's ``load_rows`` and ``count_rows``.

    For stores that read row ranges and count rows without loading the file:
    all rows when `row` is None, otherwise row `row` (negative counts from the
    end) as one-element columns.
    """
    if row is None:
        return store.load_rows(filename, 0, None)
    index = resolve_row(row, store.count_rows(filename), filename)
    return store.load_rows(filename, index, index + 1)


def import_optional(module: str, store: str, requirement: str, extra: str) -> ModuleType:
    """Import the optional library ``module`` that ``store`` needs, on first use.

    Parameters
    ----------
    module
        Name of the module to import, for example ``'tables'``.
    store
        Name of the store class, used in the error message.
    requirement
        What to install, as the message names it (``'PyTables'``, ``'zarr>=3'``).
    extra
        The psyrun extra that installs it (``pip install psyrun[<extra>]``).

    Raises
    ------
    ImportError
        When the library is not installed; the message says how to install it.
    """
    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{store} needs {requirement}; install it with `pip install psyrun[{extra}]`"
        ) from None


def check_supported(data: Mapping[str, np.ndarray], filename: str, store: str) -> None:
    """Refuse columns other than numeric, boolean and str before a file is touched.

    The array stores (HDF5, zarr) hold only these kinds (:data:`ARRAY_KINDS`).

    Parameters
    ----------
    data
        Normalised columns (see :func:`normalize`).
    filename
        The file the columns were meant for, used in the error message.
    store
        Name of the store class, used in the error message.

    Raises
    ------
    TypeError
        For the first column of another kind; the message points to PickleStore.
    """
    for key, column in data.items():
        if column.dtype.kind not in ARRAY_KINDS:
            raise TypeError(
                f"{store} cannot store column {key!r} of dtype {column.dtype} in "
                f"{filename!r}: only numeric, boolean and str columns are supported. "
                "Use PickleStore ('.pkl') for arbitrary Python values."
            )


def prepare_array_columns(
    filename: str | os.PathLike[str], data: Mapping[str, Any], store: str
) -> tuple[str, dict[str, np.ndarray]]:
    """Normalise what an array store (HDF5, zarr) was given to save or append.

    Parameters
    ----------
    filename
        The file (or directory) to write.
    data
        A mapping of equal-length columns.
    store
        Name of the store class, used in error messages.

    Returns
    -------
    filename : str
        `filename` as a plain string.
    data : dict of str to numpy.ndarray
        The normalised columns (see :func:`normalize`).

    Raises
    ------
    TypeError, ValueError
        As :func:`normalize` and :func:`check_supported` do.
    """
    filename = os.fspath(filename)
    data = normalize(data)
    check_supported(data, filename, store)
    return filename, data
