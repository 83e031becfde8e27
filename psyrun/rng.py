"""Random generators that belong to a row of a parameter space.

A sweep that draws random numbers should give every assignment its own
stream, fixed by the assignment alone: then a row computes the same thing
whether it runs in the first job or the tenth, in the first run or after
``psy run -c``, and whether the space around it grew, shrank or was
regrouped. :func:`row_rng` does this: it hashes a seed and the row's values
(by name, in a canonical encoding) into 128 bits of entropy for a
:class:`numpy.random.SeedSequence`.

A task asks for it by naming an ``rng`` argument in ``execute`` and setting
``rng_seed`` in the task file (see :func:`check_task_rng`); the mapper then
passes each row's generator (:func:`bind_rng`). A vectorized ``execute``
receives the rows' seeds instead, one row of :func:`row_seeds` per row of the
block, so that its results do not depend on how rows are grouped into blocks
or jobs either.

The canonical encoding
----------------------
Two rows get the same generator exactly when psyrun's row matching
(``missing()``, ``psy run -c``) treats them as the same assignment:

* Real numbers are encoded by their exact value, whatever their type:
  ``1``, ``1.0``, ``True``, ``np.int8(1)``, ``np.float32(1.0)`` and ``1+0j``
  are the same value. This is on purpose: a column's type changes when the
  space grows (``Param(x=[1, 2]) + Param(x=[0.5])`` turns ``1`` into
  ``1.0``) and a store promotes integers to floats where a column has gaps;
  the row is still the same row. ``0.0`` and ``-0.0`` are equal, every NaN
  is the same value. A float is its exact binary value: ``np.float32(0.1)``
  is 0.100000001490116..., another number than the float64 ``0.1``.
* Strings (UTF-8) and bytes are values of their own: ``'1'``, ``b'1'`` and
  ``1`` all differ. ``None`` differs from NaN.
* Arrays (and lists or tuples that NumPy turns into arrays of numbers or of
  strings) are encoded by shape and by their elements, each as above.
* Anything else (dicts, arbitrary objects, dates) is refused with a
  :class:`TypeError` naming the parameter.

The row's parameters are sorted by name, so the order of keyword arguments
(or of factors of a product) does not matter; the names count, so ``x=1``
and ``y=1`` differ. The seed is mixed in first. The encoding carries a
version tag: it will only change with a new tag, never silently.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "RNG_ARGUMENT",
    "bind_rng",
    "check_task_rng",
    "encode_value",
    "row_rng",
    "row_seeds",
    "wants_rng",
]

#: The name of the argument through which ``execute`` receives its generator.
RNG_ARGUMENT = "rng"

# Bumped only with a new, documented encoding (it is part of every hash).
_VERSION = b"psyrun.row_rng/1\x00"

# Tags of the value kinds. A tag says how many bytes follow (fixed, or a
# length prefix), so encodings concatenate without ambiguity; nearly every
# real number is one fixed-size record (tag + 16 bytes).
_INT = b"i"  # an integer in [-2**127, 2**127), 16 bytes two's complement
_BIGINT = b"I"  # any other integer, length-prefixed two's complement bytes
_FLOAT = b"f"  # a non-integral or infinite float: 8 bytes float64, 8 zero bytes
_NAN = b"n"  # every NaN, 16 zero bytes
_COMPLEX = b"c"  # a complex number with imag != 0: two real records
_STR = b"s"
_BYTES = b"b"
_NONE = b"N"
_ARRAY = b"a"  # ndim, shape, then one record per element
_LIST = b"L"  # a list or tuple that is not an array: its items
_TUPLE = b"T"

_RECORD = 17  # bytes of one real number's record
_ZERO8 = bytes(8)
_NAN_RECORD = _NAN + bytes(16)
_INT128 = 1 << 127
# Floats of larger magnitude than this are integral and leave the int64 range.
_INT64_LIMIT = float(1 << 63)


def _length(n: int) -> bytes:
    return struct.pack("<Q", n)


def _encode_int(value: int) -> bytes:
    if -_INT128 <= value < _INT128:
        return _INT + (value % (1 << 128)).to_bytes(16, "little")
    data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return _BIGINT + _length(len(data)) + data


def _encode_float(x: float) -> bytes:
    if x != x:
        return _NAN_RECORD
    if x.is_integer():  # finite and integral: the same value as an int (-0.0 is 0)
        return _encode_int(int(x))
    return _FLOAT + struct.pack("<d", x) + _ZERO8


def _encode_real(value: Any) -> bytes:
    if isinstance(value, (bool, np.bool_)):
        return _encode_int(int(value))
    if isinstance(value, (int, np.integer)):
        return _encode_int(int(value))
    if isinstance(value, np.floating) and value.dtype.itemsize > 8:
        x = float(value)
        if x != value and not (x != x):
            raise ValueError(f"{value!r} ({value.dtype}) is not exact as a float64")
        return _encode_float(x)
    return _encode_float(float(value))


def _encode_str(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return _STR + _length(len(data)) + data


def _as_array(value: Any) -> np.ndarray | None:
    """Return the array a list or tuple stands for, as psyrun's row matching sees it."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        return None
    if array.ndim == 0 or array.dtype.kind not in "biufcU":
        return None
    if array.dtype.kind == "U":
        # NumPy turns [1, 'x'] into text; only all-str sequences are string arrays.
        leaves = np.asarray(value, dtype=object).reshape(-1)
        if not all(isinstance(v, str) for v in leaves):
            return None
    return array


def _encode_array(array: np.ndarray) -> bytes:
    head = _ARRAY + _length(array.ndim) + b"".join(_length(d) for d in array.shape)
    return head + b"".join(_encode_column(array.reshape(-1)))


_PLAIN: dict[type, Callable[[Any], bytes]] = {
    float: _encode_float,
    int: _encode_int,
    bool: lambda v: _encode_int(int(v)),
    str: _encode_str,
}


def encode_value(value: Any) -> bytes:
    """Return the canonical bytes of one parameter value (see the module docs).

    Raises
    ------
    TypeError
        For a value of a kind that has no canonical encoding.
    """
    plain = _PLAIN.get(type(value))
    if plain is not None:  # the common Python types, without the isinstance chain
        return plain(value)
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return _encode_real(value)
    if isinstance(value, (complex, np.complexfloating)):
        if value.imag == 0:
            return _encode_float(float(value.real))
        return _COMPLEX + _encode_float(float(value.real)) + _encode_float(float(value.imag))
    if isinstance(value, str):
        return _encode_str(value)
    if isinstance(value, bytes):
        return _BYTES + _length(len(value)) + value
    if value is None:
        return _NONE
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return encode_value(value.item())
        if value.dtype.kind not in "biufcUSO":
            raise TypeError(f"arrays of dtype {value.dtype} have no canonical encoding")
        return _encode_array(value)
    if isinstance(value, (list, tuple)):
        array = _as_array(value)
        if array is not None:
            return _encode_array(array)
        tag = _LIST if isinstance(value, list) else _TUPLE
        return tag + _length(len(value)) + b"".join(encode_value(v) for v in value)
    raise TypeError(
        f"a value of type {type(value).__name__} has no canonical encoding (use numbers, "
        "strings, bytes, bools, None or arrays of them)"
    )


def _split_records(buffer: bytes, n: int) -> list[bytes]:
    return [buffer[i * _RECORD : (i + 1) * _RECORD] for i in range(n)]


def _int_records(lo: np.ndarray, hi: np.ndarray) -> bytes:
    records = np.empty(len(lo), dtype=[("tag", "u1"), ("lo", "<u8"), ("hi", "<u8")])
    records["tag"] = _INT[0]
    records["lo"] = lo
    records["hi"] = hi
    return records.tobytes()


def _encode_ints(column: np.ndarray) -> list[bytes]:
    if column.dtype.kind == "u":
        values = column.astype(np.uint64)
        hi = np.zeros(len(values), dtype=np.uint64)
    else:
        signed = column.astype(np.int64)
        values = signed.view(np.uint64)
        # Two's complement over 128 bits: the high word repeats the sign.
        hi = np.where(signed < 0, np.uint64(0xFFFFFFFFFFFFFFFF), np.uint64(0))
    return _split_records(_int_records(values, hi), len(column))


def _encode_floats(column: np.ndarray) -> list[bytes]:
    x = column.astype(np.float64)
    n = len(x)
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(x) & (np.floor(x) == x)
    small = integral & (np.abs(x) < _INT64_LIMIT)
    signed = np.where(small, x, 0).astype(np.int64)
    records = np.empty(n, dtype=[("tag", "u1"), ("lo", "<u8"), ("hi", "<u8")])
    records["tag"] = np.where(np.isnan(x), _NAN[0], np.where(small, _INT[0], _FLOAT[0]))
    bits = x.view(np.uint64)
    records["lo"] = np.where(small, signed.view(np.uint64), np.where(np.isnan(x), 0, bits))
    records["hi"] = np.where(small & (signed < 0), np.uint64(0xFFFFFFFFFFFFFFFF), np.uint64(0))
    out = _split_records(records.tobytes(), n)
    # Integral floats beyond the int64 range: exact Python integers (rare).
    for i in np.flatnonzero(integral & ~small):
        out[i] = _encode_int(int(x[i]))
    return out


def _encode_column(column: np.ndarray) -> list[bytes]:
    """Return the canonical bytes of every entry of a column (rows of an n-d column)."""
    kind = column.dtype.kind
    if column.ndim > 1:
        if kind in "biuf":
            rows = column.reshape(len(column), -1)
            flat = _encode_column(rows.reshape(-1))
            size = rows.shape[1]
            head = (
                _ARRAY + _length(column.ndim - 1) + b"".join(_length(d) for d in column.shape[1:])
            )
            return [head + b"".join(flat[i * size : (i + 1) * size]) for i in range(len(rows))]
        return [encode_value(row) for row in column]
    if kind == "b":
        return _encode_ints(column.astype(np.uint8))
    if kind in "iu":
        return _encode_ints(column)
    if kind == "f" and column.dtype.itemsize <= 8:
        return _encode_floats(column)
    if kind == "U":
        return [_encode_str(v) for v in column.tolist()]
    if kind in "cSO":
        return [encode_value(v) for v in column.tolist()]
    if kind == "f":
        return [encode_value(v) for v in column]
    raise TypeError(f"values of dtype {column.dtype} have no canonical encoding")


def _as_column(values: Any) -> np.ndarray:
    """Return an array of `values`, keeping mixed numbers and strings as they are."""
    if isinstance(values, np.ndarray):
        return values
    values = list(values)
    try:
        column = np.asarray(values)
    except (ValueError, TypeError):  # ragged rows
        column = None
    if column is None or (
        column.dtype.kind in "US" and not all(isinstance(v, (str, bytes)) for v in values)
    ):
        column = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            column[i] = v
    return column


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"the seed must be a non-negative integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, got {seed}")
    return int(seed)


def _encode_column_named(name: str, column: np.ndarray) -> list[bytes]:
    try:
        return _encode_column(column)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"row_rng cannot use parameter {name!r}: {exc}") from None


def row_seeds(seed: int, columns: Mapping[str, Any]) -> np.ndarray:
    """Return the entropy of every row's generator, one row per row of `columns`.

    Parameters
    ----------
    seed : int
        A non-negative integer (a task's ``rng_seed``).
    columns : mapping of str to array_like
        Equal-length parameter columns, for example a block of a space's
        ``to_arrays()``; each row is one assignment.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, 4)``, dtype uint32: row ``i`` holds 128 bits of entropy,
        and ``np.random.default_rng(seeds[i])`` is the generator
        :func:`row_rng` returns for row ``i``.

    Raises
    ------
    TypeError
        If a column holds values without a canonical encoding (the message
        names the parameter), or the seed is not an integer.
    ValueError
        If the seed is negative or the columns differ in length.
    """
    seed_bytes = _encode_int(_check_seed(seed))
    names = sorted(columns)
    arrays = [_as_column(columns[k]) for k in names]
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"the columns differ in length: {sorted(lengths)}")
    n = lengths.pop() if lengths else 1
    head = _VERSION + seed_bytes + _length(len(names))
    if not names:
        return _entropy([_digest(head)] * n, n)
    pieces: list = []
    for name, array in zip(names, arrays):
        pieces.append(itertools.repeat(_label(name)))
        pieces.append(_encode_column_named(name, array))
    digests = [_digest(head + b"".join(parts)) for parts in zip(*pieces)]
    return _entropy(digests, n)


@functools.lru_cache(maxsize=1024)
def _label(name: str) -> bytes:
    data = name.encode("utf-8", "surrogatepass")
    return _length(len(data)) + data


def _digest(message: bytes) -> bytes:
    return hashlib.blake2b(message, digest_size=16).digest()


def _entropy(digests: list[bytes], n: int) -> np.ndarray:
    """Return the digests as an ``(n, 4)`` uint32 array (little-endian words)."""
    words = np.frombuffer(b"".join(digests), dtype="<u4").reshape(n, 4)
    return words.astype(np.uint32)  # a writable copy in native byte order


def _row_entropy(seed: int, values: Mapping[str, Any]) -> np.ndarray:
    """Return the entropy of one row as :func:`row_seeds` computes it, without columns."""
    parts = [_seed_head(_check_seed(seed)), _length(len(values))]
    for name in sorted(values):
        parts.append(_label(name))
        try:
            parts.append(encode_value(values[name]))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"row_rng cannot use parameter {name!r}: {exc}") from None
    # SeedSequence copies the words: a read-only view of the digest will do.
    return np.frombuffer(_digest(b"".join(parts)), dtype="<u4")


@functools.lru_cache(maxsize=64)
def _seed_head(seed: int) -> bytes:
    return _VERSION + _encode_int(seed)


def row_rng(seed: int, /, **values: Any) -> np.random.Generator:
    """Return the random generator of one row, fixed by `seed` and the row's values.

    The generator depends on nothing else: not on the row's position in the
    space, the job that evaluates it, the process, or earlier draws. Rows
    that psyrun's row matching treats as the same assignment get the same
    generator, different rows get independent streams (with the certainty
    of a 128-bit hash). The encoding rules (``1``, ``1.0`` and ``True`` are
    the same value; strings, bytes and numbers differ; names count, their
    order does not) are in the :mod:`psyrun.rng` module documentation.

    Parameters
    ----------
    seed : int
        A non-negative integer; one per sweep (a task's ``rng_seed``).
        Positional only, so that a parameter may be called ``seed``.
    **values
        The row's parameter values by name: numbers, strings, bytes, bools,
        None, NumPy scalars or arrays of them.

    Returns
    -------
    numpy.random.Generator
        A PCG64 generator seeded with ``SeedSequence`` of the row's 128-bit
        entropy (the row of :func:`row_seeds`).

    Raises
    ------
    TypeError
        If a value has no canonical encoding (the message names it) or the
        seed is not an integer.
    ValueError
        If the seed is negative.

    Examples
    --------
    >>> from psyrun import row_rng
    >>> a = row_rng(42, x=1, method='adam').random()
    >>> b = row_rng(42, method='adam', x=1.0).random()
    >>> a == b
    True
    >>> a == row_rng(42, x=2, method='adam').random()
    False
    """
    return np.random.default_rng(_row_entropy(seed, values))


# -- tasks ----------------------------------------------------------------------


def wants_rng(fn: Callable) -> bool:
    """Whether `fn` names an ``rng`` argument (by keyword; ``**kwargs`` does not count)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    param = parameters.get(RNG_ARGUMENT)
    return param is not None and param.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def check_task_rng(execute: Callable, rng_seed: Any, keys: Iterable[str]) -> int | None:
    """Check a task's ``rng_seed`` against its ``execute``; return the seed to bind.

    Parameters
    ----------
    execute : callable
        The task's ``execute``.
    rng_seed : any
        The task's ``rng_seed`` setting (None: not set).
    keys : iterable of str
        The parameter names of the task's space.

    Returns
    -------
    int or None
        The seed when ``execute`` takes a generator (each row gets
        ``row_rng(rng_seed, **row)``), None when it does not (a task may still
        set ``rng_seed`` and call :func:`row_rng` itself).

    Raises
    ------
    ValueError
        If ``execute`` takes ``rng`` but ``rng_seed`` is not set, if ``rng``
        is also a parameter while ``rng_seed`` is set, or the seed is negative.
    TypeError
        If ``rng_seed`` is not an integer.
    """
    if rng_seed is not None:
        try:
            rng_seed = _check_seed(rng_seed)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"rng_seed: {exc}; for example `rng_seed = 20240601`") from None
    if not wants_rng(execute):
        return None
    if RNG_ARGUMENT in set(keys):
        if rng_seed is None:
            return None  # a parameter named rng, as psyrun 0.8 passed it
        raise ValueError(
            "'rng' is a parameter of the space and execute's random generator at once "
            "(rng_seed is set); rename the parameter"
        )
    if rng_seed is None:
        raise ValueError(
            "execute takes an `rng` argument (a random generator per row), but the task "
            "sets no rng_seed; add for example `rng_seed = 20240601` to the task file "
            "(every row's generator is fixed by rng_seed and the row's values)"
        )
    return rng_seed


def bind_rng(
    fn: Callable, seed: int, keys: Sequence[str], vectorized: bool, extra: Mapping | None = None
) -> Callable:
    """Return `fn` called with one more keyword argument, ``rng``.

    Row by row, ``rng`` is ``row_rng(seed, **row)`` of the row's parameters
    `keys` (not what ``setup`` returned). Vectorized, ``rng`` is the block's
    :func:`row_seeds`: an ``(n, 4)`` uint32 array whose row ``i`` seeds row
    ``i``'s generator (``np.random.default_rng(rng[i])``). Either way a row's
    randomness does not depend on the block or job it is evaluated in; a
    vectorized block retried row by row sees the same seeds.

    Raises
    ------
    ValueError
        If `extra` (what ``setup`` returned) also has an ``rng`` key.
    """
    if extra and RNG_ARGUMENT in extra:
        raise ValueError(
            "setup returned an 'rng' key, but execute's `rng` argument is the row's random "
            "generator (rng_seed is set); rename the key"
        )
    keys = tuple(keys)

    if vectorized:

        def call(**columns):
            rng = row_seeds(seed, {k: columns[k] for k in keys})
            return fn(**columns, rng=rng)

    else:

        def call(**row):
            rng = np.random.default_rng(_row_entropy(seed, {k: row[k] for k in keys}))
            return fn(**row, rng=rng)

    call.__name__ = getattr(fn, "__name__", "execute")
    call.__qualname__ = getattr(fn, "__qualname__", call.__name__)
    return call
