"""Lazy parameter spaces: ``Param`` leaves combined with ``*``, ``+`` and ``-``.

A parameter space is a tree. Its leaves (:class:`Param`) hold one NumPy column
per key; its inner nodes (:class:`Product`, :class:`Sum`, :class:`Difference`
and the row views made by slicing and sampling) hold only their operands. No
node expands its rows when it is built. Every node answers three questions
cheaply: its keys, its number of rows, and the columns for an array of row
numbers (:meth:`ParameterSpace._take`). Everything else (``p[i]``,
``p[a:b]``, :meth:`~ParameterSpace.iterate`, :meth:`~ParameterSpace.build`,
:meth:`~ParameterSpace.to_arrays`, pickling) is built on that.

>>> from psyrun.pspace import Param
>>> space = Param(a=[1, 2]) * Param(b=[3, 4])
>>> len(space), space.keys()
(4, ['a', 'b'])
>>> space[1]
{'a': 1, 'b': 4}
>>> space.build()
{'a': [1, 1, 2, 2], 'b': [3, 4, 3, 4]}
"""

from __future__ import annotations

import bisect
import keyword
import math
import operator
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain, product, repeat, starmap
from typing import Any

import numpy as np

__all__ = [
    "AmbiguousOperationError",
    "Difference",
    "Param",
    "ParameterSpace",
    "Product",
    "RowView",
    "Sum",
    "dict_concat",
    "missing",
]

#: Rows decoded at once by :meth:`ParameterSpace.iterate`.
DEFAULT_BLOCK_SIZE = 16384

#: Rows of a minuend hashed at once when a difference is computed.
_DIFF_BLOCK = 1 << 20

_NAN = math.nan

#: Columns with more values than this are summarised by ``repr`` (as numpy
#: summarises arrays of more than 1000 values), so that printing a space never
#: prints millions of values.
REPR_MAX_VALUES = 1000
#: Runs of rows a sample's ``repr`` writes as slices at most.
_REPR_MAX_SLICES = 100


class AmbiguousOperationError(RuntimeError):
    """An operation on parameter spaces whose result is not well defined.

    Raised by ``*`` when both factors share a key and by ``-`` when the
    subtrahend has a key the minuend lacks; the message names the key.
    """


# --------------------------------------------------------------------------
# Columns: turning user values into NumPy arrays and back into Python values


def _type_category(cls: type) -> str:
    """Coarse type of a value's class, deciding which array kind can hold it."""
    if issubclass(cls, (bool, np.bool_)):
        return "bool"
    if issubclass(cls, (int, np.integer)):
        return "int"
    if issubclass(cls, (float, np.floating)):
        return "float"
    if issubclass(cls, str):
        return "str"
    if issubclass(cls, np.ndarray):
        return "array"
    return "other"


def _object_array(values: Sequence[Any]) -> np.ndarray:
    # fromiter never tries to broadcast nested values into extra dimensions.
    return np.fromiter(values, dtype=object, count=len(values))


def _plain_scalar(value: Any) -> Any:
    """NumPy scalars become the matching Python scalars; other values stay."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_sequence(value: Any) -> bool:
    """Whether a keyword argument of ``Param`` is a column (not a scalar)."""
    if isinstance(value, (str, bytes, bytearray, Mapping)):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim > 0
    return isinstance(value, Iterable)


def _column(values: Any) -> np.ndarray:
    """Turn a sequence of values into one column array.

    Values of one kind (bools, ints, floats, strings, equal-shape arrays) give
    a typed array; mixtures give an object array, so every value keeps its
    Python type (``[1, 2.5]`` stays ``[1, 2.5]``, not ``[1.0, 2.5]``).
    """
    if isinstance(values, np.ndarray) and values.dtype.kind != "O":
        # Copy so later changes to the caller's array do not change the space.
        return np.array(values, copy=True)
    if isinstance(values, np.ndarray) and values.ndim > 1:
        return np.array(values, copy=True)
    items = list(values)
    if not items:
        return np.empty(0, dtype=float)
    # Classes, not values, are classified: few classes, however many values.
    classes = set(map(type, items))
    categories = {_type_category(cls) for cls in classes}
    if len(categories) == 1:
        (category,) = categories
        if category == "bool":
            return np.array(items, dtype=bool)
        if category == "int":
            try:
                return np.array(items, dtype=np.int64)
            except OverflowError:
                return _object_array(items)
        if category == "float":
            return np.array(items, dtype=np.float64)
        if category == "str":
            # np.str_ values become plain str.
            return _object_array(items if classes == {str} else [str(v) for v in items])
        if category == "array":
            first = items[0]
            if first.dtype.kind in "biufcUS" and all(
                v.shape == first.shape and v.dtype.kind == first.dtype.kind for v in items
            ):
                return np.stack(items)
    return _object_array(items)


def _to_list(column: np.ndarray) -> list:
    """Plain Python values of a column: scalars for 1-d, row arrays for n-d."""
    if column.ndim == 1:
        return column.tolist()
    return list(column)


def _fill(value: Any, n: int) -> np.ndarray:
    """Return a column of `n` copies of a scalar."""
    if isinstance(value, (bool, int, float)) and not isinstance(value, type):
        try:
            return np.full(n, value)
        except OverflowError:
            pass
    out = np.empty(n, dtype=object)
    out.fill(value)
    return out


def _scalar_dtype(value: Any) -> np.dtype:
    """Return the dtype :func:`_fill` gives a scalar (without making the column)."""
    return _fill(value, 0).dtype


def _as_object(column: np.ndarray) -> np.ndarray:
    """Return the column as a 1-d object array of plain values (rows for n-d)."""
    if column.dtype.kind == "O" and column.ndim == 1:
        return column
    return _object_array(_to_list(column))


def _kind_family(dtype: np.dtype) -> str:
    kind = dtype.kind
    if kind in "iu":
        return "int"
    return kind


class _ColumnSpec:
    """What a node's column for one key looks like: dtype and per-row shape."""

    __slots__ = ("dtype", "tail")

    def __init__(self, dtype: np.dtype, tail: tuple[int, ...] = ()):
        self.dtype = np.dtype(dtype)
        self.tail = tuple(tail)

    def empty(self, n: int) -> np.ndarray:
        return np.empty((n, *self.tail), dtype=self.dtype)

    def __repr__(self) -> str:
        return f"_ColumnSpec({self.dtype}, {self.tail})"


_OBJECT_SPEC = _ColumnSpec(np.dtype(object))


def _merge_specs(specs: list[_ColumnSpec | None]) -> _ColumnSpec:
    """Return the column a ``Sum`` gives for a key; None marks a part without it."""
    present = [s for s in specs if s is not None]
    absent = len(present) < len(specs)
    first = present[0]
    same_shape = all(s.tail == first.tail for s in present)
    if not same_shape:
        return _OBJECT_SPEC
    if absent:
        # Only float columns can hold the NaN of the missing rows as they are.
        if all(s.dtype.kind == "f" for s in present):
            return _ColumnSpec(np.result_type(*(s.dtype for s in present)), first.tail)
        return _OBJECT_SPEC
    families = {_kind_family(s.dtype) for s in present}
    if len(families) != 1 or "O" in families:
        return _OBJECT_SPEC
    kinds = {s.dtype.kind for s in present}
    if kinds == {"i", "u"}:
        # int64 and uint64 together would turn into float64 and lose values.
        return _OBJECT_SPEC
    return _ColumnSpec(np.result_type(*(s.dtype for s in present)), first.tail)


def _normalize_rows(rows: Any, n: int) -> np.ndarray:
    """Row numbers as int64, negative ones counted from the end, range-checked."""
    rows = np.asarray(rows)
    if rows.dtype.kind not in "iu" and rows.size:
        raise TypeError(f"row numbers must be integers, got an array of {rows.dtype}")
    rows = rows.astype(np.int64, copy=False).reshape(-1)
    if rows.size:
        low, high = rows.min(), rows.max()
        if low < -n or high >= n:
            bad = int(low) if low < -n else int(high)
            raise IndexError(f"row {bad} is out of range for a parameter space of {n} rows")
        if low < 0:
            rows = np.where(rows < 0, rows + n, rows)
    return rows


def _common_length(columns: Mapping[str, Any], problem: str, remedy: str) -> int | None:
    """Return the length every column shares (None without columns).

    Raises ValueError ``"<problem> (<each column's length>); <remedy>"`` when
    the lengths differ.
    """
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{k!r} has {n}" for k, n in lengths.items())
        raise ValueError(f"{problem} ({described} values); {remedy}")
    return next(iter(lengths.values()), None)


#: The most rows a parameter space can have: row numbers are int64.
MAX_ROWS = int(np.iinfo(np.int64).max)


def _check_row_count(n: int, what: str) -> int:
    """Return `n`, or raise OverflowError if rows could not be numbered in int64."""
    if n > MAX_ROWS:
        raise OverflowError(
            f"{what} has {n} rows (about 10**{len(str(n)) - 1}), more than the "
            f"{MAX_ROWS} rows a parameter space can number; split it into smaller "
            "spaces (for example run one task per value of an outer parameter)"
        )
    return n


def _format_keys(keys: Sequence[str]) -> str:
    return ", ".join(keys) if keys else "no keys"


# --------------------------------------------------------------------------
# Row dicts: building dicts quickly for iterate()


def _rows1(keys, chunks):
    (k0,) = keys
    for chunk in chunks:
        for a in chunk:  # one key: chunks of values, not of 1-tuples
            yield {k0: a}


def _rows2(keys, chunks):
    k0, k1 = keys
    for chunk in chunks:
        for a, b in chunk:
            yield {k0: a, k1: b}


def _rows3(keys, chunks):
    k0, k1, k2 = keys
    for chunk in chunks:
        for a, b, c in chunk:
            yield {k0: a, k1: b, k2: c}


def _rows4(keys, chunks):
    k0, k1, k2, k3 = keys
    for chunk in chunks:
        for a, b, c, d in chunk:
            yield {k0: a, k1: b, k2: c, k3: d}


def _rows5(keys, chunks):
    k0, k1, k2, k3, k4 = keys
    for chunk in chunks:
        for a, b, c, d, e in chunk:
            yield {k0: a, k1: b, k2: c, k3: d, k4: e}


def _rows6(keys, chunks):
    k0, k1, k2, k3, k4, k5 = keys
    for chunk in chunks:
        for a, b, c, d, e, f in chunk:
            yield {k0: a, k1: b, k2: c, k3: d, k4: e, k5: f}


def _rows_any(keys, chunks):
    for chunk in chunks:
        yield from map(dict, map(zip, repeat(keys), chunk))


def _deferred(make, *args):
    """Yield ``make(*args)`` once: lets chain.from_iterable start it on first use."""
    yield make(*args)


# Dict displays with a fixed number of keys are several times faster than
# dict(zip(keys, values)), and one generator frame per row is the least
# overhead a lazy iterator can have, so small arities get their own loop. They
# read chunks of rows, each row a tuple of values in key order
# (ParameterSpace._row_chunks).
_ROWS_BY_ARITY = {1: _rows1, 2: _rows2, 3: _rows3, 4: _rows4, 5: _rows5, 6: _rows6}

# A value repeated at least this many times in a row is copied as one list
# (``[v] * k``, a memcpy); shorter runs are interleaved by zip, which costs
# less per value.
_LONG_RUN = 16


def _spread(values: list, stride: int, head: int, n: int) -> list:
    """`n` items: ``values[0]`` `head` times, then each further value `stride` times.

    The column of a product factor whose value changes every `stride` rows,
    built from the factor's own Python values, so that rows sharing a value
    share its object instead of converting it again.
    """
    if len(values) == 1:
        return values * n
    out = values[:1] * head
    middle = values[1:-1]
    if stride >= _LONG_RUN:
        for value in middle:
            out += [value] * stride
    else:
        # zip over `stride` iterators of one list yields each value `stride` times.
        out += chain.from_iterable(zip(*repeat(middle, stride)))
    out += values[-1:] * (n - len(out))
    return out


def _cyclic_lists(
    space: ParameterSpace, first: int, count: int, keys: Sequence[str]
) -> dict[str, list]:
    """Python values of rows ``first, first + 1, ...`` (`count` of them, modulo len)."""
    length = len(space)
    a = first % length
    if a + count <= length:
        return space._list_range(a, a + count, keys)
    if count <= length:
        head = space._list_range(a, length, keys)
        tail = space._list_range(0, a + count - length, keys)
        return {k: head[k] + tail[k] for k in keys}
    # More rows than the space has: it is short (count is at most a block).
    full = space._list_range(0, length, keys)
    reps = -(-(a + count) // length)
    return {k: (full[k] * reps)[a : a + count] for k in keys}


# --------------------------------------------------------------------------
# The node base class


class ParameterSpace:
    """A lazily evaluated set of parameter assignments (rows).

    Subclasses implement :meth:`keys`, :meth:`__len__`, :meth:`_take`,
    :meth:`_spec` and :meth:`_row`; they may override :meth:`_range_take`
    when a contiguous row range can be produced faster than by indexing.
    Results are computed on demand: combining spaces copies no rows.

    Notes for implementers: ``_take(rows, keys)`` receives an int64 array of
    valid, non-negative row numbers and returns a dict with one array per
    requested key, first axis ``len(rows)``. Attributes whose names start
    with ``_cache`` are dropped when pickling and must be recomputable.
    """

    # -- the core every node implements ---------------------------------

    def keys(self) -> list[str]:
        """Return the parameter names, left operand's first."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def _take(self, rows: np.ndarray, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Columns for valid, non-negative int64 row numbers."""
        raise NotImplementedError

    def _spec(self, key: str) -> _ColumnSpec:
        """Return the dtype and per-row shape of the column of `key`."""
        raise NotImplementedError

    def _row(self, i: int) -> dict[str, Any]:
        """One row (0 <= i < len) as plain Python values."""
        return {k: _to_list(v)[0] for k, v in self._take(np.array([i]), None).items()}

    def _range_take(
        self, start: int, stop: int, keys: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Columns for rows ``start`` to ``stop`` (valid, start <= stop)."""
        return self._take(np.arange(start, stop, dtype=np.int64), keys)

    def _list_range(self, start: int, stop: int, keys: Sequence[str]) -> dict[str, list]:
        """Rows ``start`` to ``stop`` as plain Python values, one list per key.

        What :meth:`iterate` and :meth:`build` yield: the same values, of the
        same types, as ``_to_list`` of :meth:`_range_take`'s columns (which is
        the default). Nodes override it where Python lists can be built more
        cheaply than by converting NumPy columns value by value.
        """
        columns = self._range_take(start, stop, keys)
        return {k: _to_list(columns[k]) for k in keys}

    def _operands(self) -> tuple[ParameterSpace, ...]:
        """Return the spaces this node is built from (none for a leaf)."""
        return ()

    # -- public access --------------------------------------------------

    def take(self, rows: Any) -> dict[str, np.ndarray]:
        """Return the columns for an array of row numbers.

        Parameters
        ----------
        rows : array_like of int
            Row numbers; negative ones count from the end.

        Returns
        -------
        dict of str to numpy.ndarray
            One array per key, first axis ``len(rows)``.

        Raises
        ------
        IndexError
            If a row number is out of range.
        """
        return self._take(_normalize_rows(rows, len(self)))

    def to_arrays(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Return the NumPy columns of a row range.

        Parameters
        ----------
        start, stop : int, optional
            The range, interpreted like a slice (negative values count from
            the end; out-of-range values are clipped).

        Returns
        -------
        dict of str to numpy.ndarray
            One freshly allocated array per key.
        """
        r = range(len(self))[start:stop]
        return self._range_take(r.start, max(r.start, r.stop))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return RowView(self, range(len(self))[index])
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(
                f"parameter spaces are indexed by int or slice, not {type(index).__name__}"
            ) from None
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {index} is out of range for a parameter space of {n} rows")
        return self._row(i)

    def iterate(self, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[dict[str, Any]]:
        """Iterate over every row as a dict of plain Python values.

        Rows are decoded a block at a time (vectorised), so memory use is
        bounded by `block_size` rows whatever the size of the space.

        Parameters
        ----------
        block_size : int, optional
            Rows decoded at once.

        Returns
        -------
        iterator of dict
            One parameter assignment per row, in row order.
        """
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        keys = self.keys()
        rows = _ROWS_BY_ARITY.get(len(keys), _rows_any)
        return rows(keys, self._row_chunks(block_size))

    def _row_chunks(self, block_size: int) -> Iterator[Iterator[tuple]]:
        """Every row as a tuple of plain values in key order, in chunks of rows.

        With one key, the chunks hold the values themselves (no 1-tuples).
        Lazy: nothing is decoded before the first row is asked for. At most
        `block_size` values per key are held at once.
        """
        blocks = self._blocks(block_size)
        if len(self.keys()) == 1:
            return map(operator.itemgetter(0), blocks)
        return starmap(zip, blocks)

    def _blocks(self, block_size: int) -> Iterator[list[list]]:
        """Columns of consecutive blocks of rows, as lists of plain values."""
        keys = self.keys()
        n = len(self)
        if not keys:
            return
        for start in range(0, n, block_size):
            columns = self._list_range(start, min(start + block_size, n), keys)
            yield [columns[k] for k in keys]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iterate()

    def build(self, start: int = 0, stop: int | None = None) -> dict[str, list]:
        """Return the rows, as a dict mapping each key to a list of values.

        Parameters
        ----------
        start, stop : int, optional
            Only this row range, interpreted like a slice (as in
            :meth:`to_arrays`); every row by default.

        Returns
        -------
        dict of str to list
            Plain Python values (arrays for array-valued parameters), in
            row order: the values :meth:`iterate` yields.
        """
        r = range(len(self))[start:stop]
        return self._list_range(r.start, max(r.start, r.stop), self.keys())

    def sample(self, k: int, seed: Any = None) -> ParameterSpace:
        """Return `k` distinct rows drawn uniformly at random, as a lazy space.

        The space is not expanded: only `k` row numbers are drawn. The sampled
        rows keep the order they have in this space.

        Parameters
        ----------
        k : int
            Number of rows; at most ``len(self)``.
        seed : int or numpy.random.Generator, optional
            Seed for reproducible draws.

        Returns
        -------
        ParameterSpace
            A view of the drawn rows.
        """
        n = len(self)
        k = operator.index(k)
        if not 0 <= k <= n:
            raise ValueError(f"cannot sample {k} distinct rows from a space of {n} rows")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=k, replace=False).astype(np.int64))
        return RowView(self, rows, seed=seed)

    # -- algebra ----------------------------------------------------------

    def __mul__(self, other):
        if not isinstance(other, ParameterSpace):
            return NotImplemented
        return Product(self, other)

    def __add__(self, other):
        if not isinstance(other, ParameterSpace):
            return NotImplemented
        return Sum(self, other)

    def __sub__(self, other):
        if not isinstance(other, ParameterSpace):
            return NotImplemented
        return Difference(self, other)

    # -- pickling and display -------------------------------------------

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def _describe(self, evaluable: bool = False) -> str:
        """Text of the tree; `evaluable` asks for code that rebuilds it."""
        raise NotImplementedError

    def __repr__(self) -> str:
        # Evaluates back to an equal space (with Param, missing and numpy in
        # scope) unless a column has more than REPR_MAX_VALUES values.
        return self._describe(evaluable=True)

    def __str__(self) -> str:
        return self._describe()


# --------------------------------------------------------------------------
# Code that evaluates back to a space (repr)


def _param_code(items: dict[str, str]) -> str:
    """``Param(...)`` call for key -> value code, keyword form where possible."""
    if all(_is_keyword_name(k) for k in items):
        return "Param(" + ", ".join(f"{k}={v}" for k, v in items.items()) + ")"
    return "Param(**{" + ", ".join(f"{k!r}: {v}" for k, v in items.items()) + "})"


def _is_keyword_name(key: str) -> bool:
    """Whether ``key=`` in a call passes exactly `key` (Python normalises to NFKC)."""
    return (
        key.isidentifier()
        and not keyword.iskeyword(key)
        and unicodedata.normalize("NFKC", key) == key
    )


def _float_code(value: float) -> str:
    if math.isfinite(value):
        return repr(value)
    if math.isnan(value):
        return "float('nan')"
    return "float('inf')" if value > 0 else "-float('inf')"


def _array_code(array: np.ndarray) -> str:
    """``numpy.array(...)`` code for an array, keeping dtype and shape."""
    dtype = array.dtype
    if dtype.kind in "mM":
        # Dates and durations: their integer counts round-trip exactly.
        code = f"numpy.array({array.view(np.int64).tolist()!r}, dtype='int64').view({dtype.str!r})"
    else:
        code = f"numpy.array({_value_code(array.tolist())}, dtype={dtype.str!r})"
    if array.size == 0 and array.ndim > 1:
        code += f".reshape({array.shape!r})"
    return code


def _column_code(column: np.ndarray) -> str:
    """Code for a leaf column: a list if ``Param`` makes this column of it."""
    if column.ndim == 1 and column.dtype.kind == "O":
        return _value_code(column.tolist())
    if column.dtype.kind not in "mMV":
        values = column.tolist()
        again = _column(values)
        if again.dtype == column.dtype and again.shape == column.shape:
            return _value_code(values)
    return _array_code(column)


def _value_code(value: Any) -> str:
    """Python code for one value; repr() except where repr does not evaluate."""
    if isinstance(value, np.ndarray):
        return _array_code(value)
    if isinstance(value, np.generic):
        return f"numpy.{type(value).__name__}({_value_code(value.item())})"
    if isinstance(value, float):
        return _float_code(value)
    if isinstance(value, complex) and not math.isfinite(abs(value)):
        return f"complex({_float_code(value.real)}, {_float_code(value.imag)})"
    if type(value) is list:
        return "[" + ", ".join(map(_value_code, value)) + "]"
    if type(value) is tuple:
        inner = ", ".join(map(_value_code, value))
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if type(value) is dict:
        items = ", ".join(f"{_value_code(k)}: {_value_code(v)}" for k, v in value.items())
        return "{" + items + "}"
    if type(value) in (set, frozenset) and value:
        inner = "{" + ", ".join(map(_value_code, value)) + "}"
        return inner if type(value) is set else f"frozenset({inner})"
    return repr(value)


# --------------------------------------------------------------------------
# Leaves


class Param(ParameterSpace):
    """A leaf parameter space: columns given as keyword arguments.

    Sequences become columns; scalars (including strings and bytes) are
    repeated to the length of the sequences without being copied out. With no
    sequence at all the space has one row; ``Param()`` has no keys and no rows
    and is the identity of ``*``.

    Parameters
    ----------
    **columns
        Parameter name -> sequence of values, or a scalar.

    Raises
    ------
    ValueError
        If the sequences do not all have the same length.

    Examples
    --------
    >>> Param(a=[1, 2, 3], b=[4, 5, 6], c=7).build()
    {'a': [1, 2, 3], 'b': [4, 5, 6], 'c': [7, 7, 7]}
    """

    def __init__(self, /, **columns: Any):
        self._keys = list(columns)
        self._columns: dict[str, np.ndarray] = {}
        self._scalars: dict[str, Any] = {}
        for key, value in columns.items():
            if _is_sequence(value):
                self._columns[key] = _column(value)
            else:
                self._scalars[key] = _plain_scalar(
                    value.item() if isinstance(value, np.ndarray) else value
                )
        n = _common_length(
            self._columns,
            "Param got sequences of unequal lengths",
            "give every sequence the same length (scalars are repeated to match)",
        )
        if n is not None:
            self._n = n
        else:
            self._n = 1 if self._scalars else 0

    def keys(self) -> list[str]:
        """Return the parameter names in the order given."""
        return list(self._keys)

    def __len__(self) -> int:
        return self._n

    def _spec(self, key: str) -> _ColumnSpec:
        if key in self._columns:
            column = self._columns[key]
            return _ColumnSpec(column.dtype, column.shape[1:])
        return _ColumnSpec(_scalar_dtype(self._scalars[key]))

    def _take(self, rows, keys=None):
        out = {}
        for key in self._keys if keys is None else keys:
            column = self._columns.get(key)
            if column is None:
                out[key] = _fill(self._scalars[key], len(rows))
            else:
                out[key] = column[rows]
        return out

    def _range_take(self, start, stop, keys=None):
        out = {}
        for key in self._keys if keys is None else keys:
            column = self._columns.get(key)
            if column is None:
                out[key] = _fill(self._scalars[key], stop - start)
            else:
                out[key] = column[start:stop].copy()
        return out

    def _list_range(self, start, stop, keys):
        out = {}
        for key in keys:
            column = self._columns.get(key)
            if column is None:
                # Converted once (as _fill's column would convert it), then shared.
                out[key] = _fill(self._scalars[key], 1).tolist() * (stop - start)
            elif column.ndim == 1:
                out[key] = column[start:stop].tolist()
            else:
                # Each row an array of its own, never a view of this space's column.
                out[key] = list(column[start:stop].copy())
        return out

    def _row(self, i):
        out = {}
        for key in self._keys:
            column = self._columns.get(key)
            if column is None:
                out[key] = self._scalars[key]
            elif column.ndim == 1:
                out[key] = column.item(i)
            else:
                out[key] = column[i].copy()
        return out

    def _describe(self, evaluable: bool = False) -> str:
        if evaluable and all(c.size <= REPR_MAX_VALUES for c in self._columns.values()):
            return _param_code(
                {
                    k: _value_code(self._scalars[k])
                    if k in self._scalars
                    else _column_code(self._columns[k])
                    for k in self._keys
                }
            )
        parts = []
        for key in self._keys:
            if key in self._scalars:
                parts.append(f"{key}={self._scalars[key]!r}")
                continue
            column = self._columns[key]
            if len(column) <= 6 and column.ndim == 1:
                parts.append(f"{key}={column.tolist()!r}")
            else:
                shape = "x".join(map(str, column.shape))
                parts.append(f"{key}=<{shape} {column.dtype}>")
        return f"Param({', '.join(parts)})"


# --------------------------------------------------------------------------
# Inner nodes


def _check_space(value: Any, role: str) -> ParameterSpace:
    if not isinstance(value, ParameterSpace):
        raise TypeError(f"the {role} must be a parameter space, got {type(value).__name__}")
    return value


class Product(ParameterSpace):
    """Cartesian product of parameter spaces; the left factor varies slowest.

    Nested products are flattened into one node, so row ``i`` is decoded by
    mixed-radix arithmetic over all factors at once. Factors without keys
    (``Param()``) are left out: they are the identity of ``*``.

    Raises
    ------
    AmbiguousOperationError
        If two factors share a key.
    """

    def __init__(self, left: ParameterSpace, right: ParameterSpace):
        factors: list[ParameterSpace] = []
        for operand in (_check_space(left, "left factor"), _check_space(right, "right factor")):
            if isinstance(operand, Product):
                factors.extend(operand._factors)
            elif operand.keys():
                factors.append(operand)
        seen: dict[str, None] = {}
        for factor in factors:
            for key in factor.keys():
                if key in seen:
                    raise AmbiguousOperationError(
                        f"Key `{key}` exists in both factors of the product; a product "
                        "needs distinct keys (use + to join spaces with the same keys)."
                    )
                seen[key] = None
        self._factors = factors
        self._keys = list(seen)
        self._key_owner = {key: f for f in factors for key in f.keys()}

    @property
    def _layout(self) -> tuple[list[int], list[int], int]:
        """Factor lengths, strides and row count, computed on first use.

        Deferred because a factor's length may be expensive (a difference).
        """
        layout = self.__dict__.get("_cache_layout")
        if layout is None:
            lengths = [len(f) for f in self._factors]
            # strides[k]: how many consecutive rows share one value of factor k.
            strides = [1] * len(lengths)
            for k in range(len(lengths) - 2, -1, -1):
                strides[k] = strides[k + 1] * lengths[k + 1]
            total = _check_row_count(math.prod(lengths) if lengths else 0, "the product")
            layout = (lengths, strides, total)
            self._cache_layout = layout
        return layout

    def keys(self) -> list[str]:
        """Return the keys of all factors, left factor first."""
        return list(self._keys)

    def _operands(self):
        return tuple(self._factors)

    def __len__(self) -> int:
        return self._layout[2]

    def _spec(self, key):
        return self._key_owner[key]._spec(key)

    def _wanted(self, keys):
        # (factor index, keys of that factor that were asked for)
        if keys is None:
            return [(k, None) for k in range(len(self._factors))]
        wanted = []
        for k, factor in enumerate(self._factors):
            mine = [key for key in factor.keys() if key in keys]
            if mine:
                wanted.append((k, mine))
        return wanted

    def _take(self, rows, keys=None):
        out: dict[str, np.ndarray] = {}
        wanted = dict(self._wanted(keys))
        lengths = self._layout[0]
        remainder = rows
        for k in range(len(self._factors) - 1, -1, -1):
            if k == 0:
                index = remainder
            else:
                remainder, index = np.divmod(remainder, lengths[k])
            if k in wanted:
                out.update(self._factors[k]._take(index, wanted[k]))
        return {key: out[key] for key in (self._keys if keys is None else keys)}

    def _range_take(self, start, stop, keys=None):
        out: dict[str, np.ndarray] = {}
        n = stop - start
        lengths, strides, _ = self._layout
        for k, factor_keys in self._wanted(keys):
            factor = self._factors[k]
            stride, length = strides[k], lengths[k]
            if n == 0:
                out.update(factor._range_take(0, 0, factor_keys))
                continue
            first, last = start // stride, (stop - 1) // stride
            if stride == 1 and last - first + 1 > length:
                # The innermost factor cycles: tile its rows, rotated to start.
                offset = start % length
                full = factor._range_take(0, length, factor_keys)
                reps = -(-(offset + n) // length)
                for key, column in full.items():
                    tiled = np.tile(column, (reps,) + (1,) * (column.ndim - 1))
                    out[key] = tiled[offset : offset + n]
            else:
                blocks = np.arange(first, last + 1, dtype=np.int64)
                counts = np.minimum((blocks + 1) * stride, stop) - np.maximum(
                    blocks * stride, start
                )
                if last - first + 1 <= length and first // length == last // length:
                    values = factor._range_take(first % length, last % length + 1, factor_keys)
                else:
                    values = factor._take(blocks % length, factor_keys)
                for key, column in values.items():
                    out[key] = column if stride == 1 else np.repeat(column, counts, axis=0)
        return {key: out[key] for key in (self._keys if keys is None else keys)}

    def _list_range(self, start, stop, keys):
        # Each factor's values are converted once and repeated as lists, which
        # is what makes iterate() close to itertools.product. Array-valued keys
        # go through NumPy: every row must get an array of its own.
        flat = [k for k in keys if not self._spec(k).tail]
        out: dict[str, list] = {}
        if len(flat) < len(keys):
            arrays = self._range_take(start, stop, [k for k in keys if k not in flat])
            out.update((k, _to_list(v)) for k, v in arrays.items())
        n = stop - start
        strides = self._layout[1]
        for k, factor_keys in self._wanted(flat):
            if n == 0:
                out.update((key, []) for key in factor_keys)
                continue
            stride = strides[k]
            first, last = start // stride, (stop - 1) // stride
            values = _cyclic_lists(self._factors[k], first, last - first + 1, factor_keys)
            if stride == 1:
                out.update(values)
                continue
            head = min((first + 1) * stride, stop) - start
            out.update((key, _spread(v, stride, head, n)) for key, v in values.items())
        return {key: out[key] for key in keys}

    def _row_chunks(self, block_size):
        # Deferred, so that even the factors' lengths wait for the first row.
        return chain.from_iterable(_deferred(self._grid_chunks, block_size))

    def _grid_chunks(self, block_size):
        factors = self._factors
        keys = [f.keys() for f in factors]
        if all(len(k) == 1 and not f._spec(k[0]).tail for f, k in zip(factors, keys)) and all(
            0 < len(f) <= block_size for f in factors
        ):
            # A grid of short one-key factors: one chunk, itertools.product over
            # each factor's values (at most a block each), as a plain loop would.
            values = [f._list_range(0, len(f), k)[k[0]] for f, k in zip(factors, keys)]
            return values if len(values) == 1 else [product(*values)]
        return super()._row_chunks(block_size)

    def _row(self, i):
        out = {}
        factors = self._factors
        lengths = self._layout[0]
        values = []
        for k in range(len(factors) - 1, 0, -1):
            i, r = divmod(i, lengths[k])
            values.append(r)
        values.append(i)
        for factor, r in zip(factors, reversed(values)):
            out.update(factor._row(r))
        return out

    def _describe(self, evaluable: bool = False) -> str:
        if not self._factors:
            return "Param()"
        return " * ".join(
            f"({f._describe(evaluable)})"
            if isinstance(f, (Sum, Difference))
            else f._describe(evaluable)
            for f in self._factors
        )


class Sum(ParameterSpace):
    """Concatenation of parameter spaces (rows of the left one first).

    The keys are the union of the operands' keys. A key missing from an
    operand reads as NaN in that operand's rows; a float column stays float,
    any other column becomes an object column so that the present values
    keep their type. Nested sums are flattened into one node.
    """

    def __init__(self, left: ParameterSpace, right: ParameterSpace):
        parts: list[ParameterSpace] = []
        for operand in (_check_space(left, "left term"), _check_space(right, "right term")):
            if isinstance(operand, Sum):
                parts.extend(operand._parts)
            else:
                parts.append(operand)
        self._parts = parts
        self._init_sizes()

    def _init_sizes(self):
        keys: dict[str, None] = {}
        for part in self._parts:
            keys.update(dict.fromkeys(part.keys()))
        self._keys = list(keys)
        self._part_keys = [set(p.keys()) for p in self._parts]
        self._cache_specs: dict[str, _ColumnSpec] = {}

    @property
    def _offsets(self) -> list[int]:
        """First row of each term (and the total), computed on first use."""
        offsets = self.__dict__.get("_cache_offsets")
        if offsets is None:
            offsets = [0]
            for part in self._parts:
                offsets.append(offsets[-1] + len(part))
            _check_row_count(offsets[-1], "the sum")
            self._cache_offsets = offsets
        return offsets

    def __getstate__(self):
        return {"_parts": self._parts}

    def __setstate__(self, state):
        self._parts = state["_parts"]
        self._init_sizes()

    def keys(self) -> list[str]:
        """Return the union of the terms' keys, in order of first appearance."""
        return list(self._keys)

    def _operands(self):
        return tuple(self._parts)

    def __len__(self) -> int:
        return self._offsets[-1]

    def _spec(self, key):
        spec = self._cache_specs.get(key)
        if spec is None:
            spec = _merge_specs(
                [
                    p._spec(key) if key in pk else None
                    for p, pk in zip(self._parts, self._part_keys)
                ]
            )
            self._cache_specs[key] = spec
        return spec

    def _assemble(self, pieces, n, keys):
        """Join per-part columns; `pieces` holds (positions, part index, columns)."""
        out = {}
        for key in keys:
            spec = self._spec(key)
            column = spec.empty(n)
            if spec.dtype.kind == "O":
                column.fill(_NAN)
            elif spec.dtype.kind == "f":
                column.fill(np.nan)
            for positions, j, columns in pieces:
                if key not in self._part_keys[j]:
                    continue
                values = columns[key]
                if spec.dtype.kind == "O" and values.dtype.kind != "O":
                    values = _as_object(values)
                column[positions] = values
            out[key] = column
        return out

    def _take(self, rows, keys=None):
        keys = self._keys if keys is None else list(keys)
        offsets = np.array(self._offsets, dtype=np.int64)
        part_of_row = np.searchsorted(offsets, rows, side="right") - 1
        pieces = []
        for j, part in enumerate(self._parts):
            positions = np.flatnonzero(part_of_row == j)
            if positions.size == 0:
                continue
            mine = [k for k in keys if k in self._part_keys[j]]
            pieces.append((positions, j, part._take(rows[positions] - offsets[j], mine)))
        return self._assemble(pieces, len(rows), keys)

    def _range_take(self, start, stop, keys=None):
        keys = self._keys if keys is None else list(keys)
        pieces = []
        offsets = self._offsets
        for j, part in enumerate(self._parts):
            lo = max(start, offsets[j])
            hi = min(stop, offsets[j + 1])
            if lo >= hi:
                continue
            mine = [k for k in keys if k in self._part_keys[j]]
            columns = part._range_take(lo - offsets[j], hi - offsets[j], mine)
            pieces.append((slice(lo - start, hi - start), j, columns))
        return self._assemble(pieces, stop - start, keys)

    def _row(self, i):
        offsets = self._offsets
        j = bisect.bisect_right(offsets, i) - 1
        values = self._parts[j]._row(i - offsets[j])
        return {k: values.get(k, _NAN) for k in self._keys}

    def _describe(self, evaluable: bool = False) -> str:
        return "(" + " + ".join(p._describe(evaluable) for p in self._parts) + ")"


class _Columns:
    """A mapping of equal-length columns seen as a subtrahend (for missing()).

    Columns are turned into arrays only when a difference needs them, and only
    those of shared keys: result files often hold many output columns.
    """

    def __init__(self, data: Mapping[str, Any]):
        self.data = dict(data)
        for key, values in self.data.items():
            if not _is_sequence(values) or not hasattr(values, "__len__"):
                raise TypeError(
                    f"the subtrahend's column {key!r} must be a sequence of row values, "
                    f"got {type(values).__name__}; pass a mapping of equal-length columns "
                    "(for example a store's load())"
                )
        n = _common_length(
            self.data,
            "the columns to subtract have unequal lengths",
            "pass a mapping of equal-length columns (for example a store's load())",
        )
        self.n = 0 if n is None else n

    def keys(self) -> list[str]:
        return list(self.data)

    def __len__(self) -> int:
        return self.n

    def _array(self, key: str) -> np.ndarray:
        values = self.data[key]
        if isinstance(values, np.ndarray) and values.ndim and values.dtype.kind != "O":
            return values
        return _column(values)

    def _range_take(self, start, stop, keys=None):
        return {k: self._array(k)[start:stop] for k in (self.data if keys is None else keys)}

    def _describe(self, evaluable: bool = False) -> str:
        if evaluable and all(np.size(v) <= REPR_MAX_VALUES for v in self.data.values()):
            # missing() accepts the mapping itself.
            items = ", ".join(f"{k!r}: {_value_code(v)}" for k, v in self.data.items())
            return "{" + items + "}"
        return f"<{self.n} rows of {_format_keys(list(self.data))}>"


class Difference(ParameterSpace):
    """The rows of a minuend whose values on the subtrahend's keys are not in it.

    Rows are compared as whole rows on the subtrahend's keys; numbers compare
    as Python compares them (``1 == 1.0 == True``), NaN matches NaN, strings
    match only strings and array values match by content. The surviving row
    numbers are computed once, on first use.

    Parameters
    ----------
    minuend : ParameterSpace
        The rows to keep or drop.
    subtrahend : ParameterSpace or mapping of str to sequence
        The rows to drop.
    ignore_extra_keys : bool, optional
        Ignore subtrahend keys the minuend lacks (what :func:`missing` does)
        instead of raising.

    Raises
    ------
    AmbiguousOperationError
        If the subtrahend has a key the minuend lacks (unless ignored).
    """

    def __init__(
        self,
        minuend: ParameterSpace,
        subtrahend: ParameterSpace | Mapping[str, Any],
        ignore_extra_keys: bool = False,
    ):
        self._minuend = _check_space(minuend, "minuend")
        if not isinstance(subtrahend, ParameterSpace):
            if not isinstance(subtrahend, Mapping):
                raise TypeError(
                    "the subtrahend must be a parameter space or a mapping of equal-length "
                    f"columns, got {type(subtrahend).__name__}"
                )
            subtrahend = _Columns(subtrahend)
        self._subtrahend = subtrahend
        minuend_keys = set(self._minuend.keys())
        extra = [k for k in subtrahend.keys() if k not in minuend_keys]
        if extra and not ignore_extra_keys:
            raise AmbiguousOperationError(f"Key `{extra[0]}` not existent in minuend.")
        self._ignore_extra_keys = ignore_extra_keys
        self._shared = [k for k in subtrahend.keys() if k in minuend_keys]

    def keys(self) -> list[str]:
        """Return the minuend's keys."""
        return self._minuend.keys()

    def _operands(self):
        if isinstance(self._subtrahend, ParameterSpace):
            return (self._minuend, self._subtrahend)
        return (self._minuend,)

    def _survivors(self) -> np.ndarray:
        """Row numbers of the minuend that are kept (computed once)."""
        survivors = getattr(self, "_cache_survivors", None)
        if survivors is None:
            survivors = _surviving_rows(self._minuend, self._subtrahend, self._shared)
            self._cache_survivors = survivors
        return survivors

    def surviving_rows(self) -> np.ndarray:
        """Return the minuend's row numbers that this difference keeps.

        Returns
        -------
        numpy.ndarray of int64
            Ascending row numbers of the minuend (computed once, then cached;
            do not modify the array).
        """
        return self._survivors()

    def __len__(self) -> int:
        return len(self._survivors())

    def _spec(self, key):
        return self._minuend._spec(key)

    def _take(self, rows, keys=None):
        return self._minuend._take(self._survivors()[rows], keys)

    def _range_take(self, start, stop, keys=None):
        survivors = self._survivors()[start:stop]
        if len(survivors) and survivors[-1] - survivors[0] == len(survivors) - 1:
            # Nothing removed in this range: a contiguous range is cheaper.
            return self._minuend._range_take(int(survivors[0]), int(survivors[-1]) + 1, keys)
        return self._minuend._take(survivors, keys)

    def _row(self, i):
        return self._minuend._row(int(self._survivors()[i]))

    def _describe(self, evaluable: bool = False) -> str:
        minuend = self._minuend._describe(evaluable)
        subtrahend = self._subtrahend._describe(evaluable)
        if self._ignore_extra_keys:
            return f"missing({minuend}, {subtrahend})"
        return f"({minuend} - {subtrahend})"


def _surviving_rows(minuend: ParameterSpace, subtrahend, shared: list[str]) -> np.ndarray:
    """Rows of `minuend` whose projection on `shared` matches no subtrahend row."""
    from psyrun import _kernels

    n = len(minuend)
    n_sub = len(subtrahend)
    if n_sub == 0 or n == 0:
        return np.arange(n, dtype=np.int64)
    if not shared:
        # Every row projects to the empty row, which the subtrahend holds.
        return np.empty(0, dtype=np.int64)
    table_columns = subtrahend._range_take(0, n_sub, shared)
    table = _kernels.RowTable([table_columns[k] for k in shared])
    kept = []
    for start in range(0, n, _DIFF_BLOCK):
        stop = min(start + _DIFF_BLOCK, n)
        block = minuend._range_take(start, stop, shared)
        found = table.contains([block[k] for k in shared])
        kept.append(np.flatnonzero(~found) + start)
    return np.concatenate(kept).astype(np.int64, copy=False)


class RowView(ParameterSpace):
    """Some rows of another space: a slice (``p[a:b:s]``) or a sample.

    Parameters
    ----------
    base : ParameterSpace
        The space viewed.
    rows : range or numpy.ndarray
        The base rows, in view order; a ``range`` keeps slices O(1) in size.
    seed : optional
        The seed a sample was drawn with (shown by ``repr``).
    """

    def __init__(self, base: ParameterSpace, rows: range | np.ndarray, seed: Any = None):
        if isinstance(base, RowView):
            # Views of views index the base directly.
            outer = base._rows
            if isinstance(rows, range) and isinstance(outer, range):
                # Row i of the view is outer[rows[i]]: compose the progressions.
                rows = range(
                    outer.start + rows.start * outer.step,
                    outer.start + rows.stop * outer.step,
                    rows.step * outer.step,
                )
            else:
                rows = base._index(np.asarray(rows, dtype=np.int64))
            base = base._base
        self._base = base
        self._rows = rows
        self._seed = seed

    def _index(self, rows: np.ndarray) -> np.ndarray:
        if isinstance(self._rows, range):
            r = self._rows
            return r.start + np.asarray(rows, dtype=np.int64) * r.step
        return self._rows[rows]

    def keys(self) -> list[str]:
        """Return the keys of the viewed space."""
        return self._base.keys()

    def _operands(self):
        return (self._base,)

    def __len__(self) -> int:
        return len(self._rows)

    def _spec(self, key):
        return self._base._spec(key)

    def _take(self, rows, keys=None):
        return self._base._take(self._index(rows), keys)

    def _range_take(self, start, stop, keys=None):
        if isinstance(self._rows, range):
            sub = self._rows[start:stop]
            if sub.step == 1 or len(sub) <= 1:
                first = sub.start
                return self._base._range_take(first, first + len(sub), keys)
            return self._base._take(np.arange(sub.start, sub.stop, sub.step, dtype=np.int64), keys)
        return self._base._take(self._rows[start:stop], keys)

    def _row(self, i):
        return self._base._row(int(self._rows[i]))

    def _describe(self, evaluable: bool = False) -> str:
        base = self._base._describe(evaluable)
        if isinstance(self._rows, range):
            r = self._rows
            if not r:
                return f"({base})[0:0]"
            # A negative step ending before row 0 has stop -1, which a slice
            # would read as the last row: leave the stop out then.
            stop = "" if r.stop < 0 else str(r.stop)
            step = "" if r.step == 1 else f":{r.step}"
            return f"({base})[{r.start}:{stop}{step}]"
        k = len(self._rows)
        if not evaluable:
            seed = "" if self._seed is None else f", seed={self._seed!r}"
            return f"({base}).sample({k}{seed})"
        seed = self._seed
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            # The call with the same seed draws the same rows only if this view
            # was sampled from the base itself (not from a view of it).
            redrawn = np.sort(np.random.default_rng(seed).choice(len(self._base), k, False))
            if np.array_equal(redrawn, self._rows):
                return f"({base}).sample({k}, seed={int(seed)!r})"
        # No seed draws these rows again: write them as slices of the base
        # (row values and column types stay as they are).
        if not k:
            return f"({base})[0:0]"
        runs = np.split(self._rows, np.flatnonzero(np.diff(self._rows) != 1) + 1)
        if len(runs) <= _REPR_MAX_SLICES:
            parts = [f"({base})[{int(run[0])}:{int(run[-1]) + 1}]" for run in runs]
            return parts[0] if len(parts) == 1 else "(" + " + ".join(parts) + ")"
        return f"({base}).sample({k})"


def dict_concat(dicts: Iterable[Mapping[str, Any]], fill: Any = None) -> dict[str, list]:
    """Turn dicts (one per row) into one dict of lists (one per key), as psyrun 0.8 did.

    Parameters
    ----------
    dicts : iterable of mapping
        One mapping per row.
    fill : optional
        The value of a row that lacks a key (None, as in psyrun 0.8; pass
        ``math.nan`` to mark missing values as the parameter spaces do).

    Returns
    -------
    dict of str to list
        Every key of any of the dicts, in order of first appearance, mapped to
        the list of its values, one per dict.

    Examples
    --------
    >>> dict_concat([{'a': 0, 'b': 0}, {'a': 1}])
    {'a': [0, 1], 'b': [0, None]}
    >>> dict_concat([{'a': 0}, {'b': 1}], fill=math.nan)
    {'a': [0, nan], 'b': [nan, 1]}
    """
    rows = list(dicts)
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return {k: [row.get(k, fill) for row in rows] for k in keys}


def missing(
    minuend: ParameterSpace, subtrahend: ParameterSpace | Mapping[str, Any]
) -> ParameterSpace:
    """Return the rows of `minuend` not present in `subtrahend`.

    Unlike ``minuend - subtrahend``, keys of the subtrahend that the minuend
    lacks are ignored, so the subtrahend can be a set of results (parameters
    plus outputs). Rows are matched as whole rows on the minuend's keys, so
    the subtrahend must have every key of the minuend (unless it has no
    rows): otherwise a row of the subtrahend could stand for several rows of
    the minuend, and which are done would be a guess.

    Parameters
    ----------
    minuend : ParameterSpace
        All assignments.
    subtrahend : ParameterSpace or mapping of str to sequence
        The assignments done, for example what a store's ``load()`` returns.

    Returns
    -------
    ParameterSpace
        The assignments of `minuend` that remain, lazily.

    Raises
    ------
    AmbiguousOperationError
        If the minuend has a key the subtrahend (with rows) lacks.

    Examples
    --------
    >>> missing(Param(a=[1, 2, 3]), Param(a=[2], c=[4])).build()
    {'a': [1, 3]}
    """
    difference = Difference(minuend, subtrahend, ignore_extra_keys=True)
    lacking = [k for k in difference.keys() if k not in difference._shared]
    if lacking and len(difference._subtrahend):
        raise AmbiguousOperationError(
            f"missing(): the subtrahend lacks the key(s) {', '.join(map(repr, lacking))} of "
            "the minuend, so its rows cannot be matched to assignments; give it every "
            "parameter key of the minuend"
        )
    return difference
