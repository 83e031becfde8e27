"""Hot loops of psyrun, in one place: row hashing, hash tables, value checks.

Every kernel exists twice: a plain NumPy *reference* (used for small inputs,
when numba is unavailable, and by the tests as the oracle) and a loop written
for numba. Both give identical results. A kernel is compiled only once a
process has done enough work with it for compiling to pay (see
:data:`COMPILE_THRESHOLD`), so a difference or ``missing()`` of up to a few
million rows never waits for numba. Importing this module imports only NumPy;
numba is imported by the first compile.

The public entry point for parameter spaces is :class:`RowTable`: it hashes
the rows of some columns into 64-bit keys, indexes them, and answers which
query rows occur in it. Hash hits are confirmed by comparing the values, so
there are no false positives: values compare as Python compares them
(``1 == 1.0 == True``), NaN matches NaN, strings match only strings and
array values match by content.

Set the environment variable ``PSYRUN_DISABLE_NUMBA=1`` to always use the
NumPy references.

The compiled kernels are not cached on disk unless ``PSYRUN_NUMBA_CACHE`` asks
for it (see :func:`numba_cache_dir`): numba's cache files are not safe when
many jobs start together on a shared filesystem (numba issue 4807), so by
default every process compiles what it needs (a second or two, once).
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "HashIndex",
    "RowTable",
    "affine",
    "combine_hashes",
    "counter_uniforms",
    "hash_column",
    "hash_float_rows",
    "hash_floats",
    "hash_rows",
    "mix64",
    "numba_cache_dir",
    "values_equal",
]

# Constants of the splitmix64 finaliser and of the row combination.
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_PRIME = np.uint64(0x100000001B3)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
#: Start value of a row hash (before the first column is folded in).
ROW_SEED = np.uint64(0x9E3779B97F4A7C15)
#: Bits every NaN is hashed as, whatever its payload and sign.
_NAN_BITS = np.uint64(0x7FF8000000000000)
# Tags keeping hashes of different kinds of values apart.
_STR_TAG = 0x5EED000000000001
_OTHER_TAG = 0x5EED000000000002
_ARRAY_TAG = 0x5EED000000000003
_UNHASHABLE = np.uint64(0x5EED000000000004)

#: Inputs shorter than this always use the NumPy reference (even once compiled,
#: numba's call overhead does not pay below it).
NUMBA_THRESHOLD = 20_000
#: Rows a kernel works through with its NumPy reference before it is compiled
#: (the default; each kernel sets its own). Importing numba (~0.5 s) and
#: compiling a kernel (0.3-1.5 s) cost what the reference loses on several
#: million rows, so a process compiles a kernel only once it has done that
#: much work with it: the ski-rental rule, never more than twice the cost of
#: knowing the future. Each kernel's figure is its compile time divided by
#: what numba saves per row, measured with ``benchmarks/report_firstuse.py``.
COMPILE_THRESHOLD = 10_000_000


# --------------------------------------------------------------------------
# Lazy compilation


def _numba_disabled() -> bool:
    return os.environ.get("PSYRUN_DISABLE_NUMBA", "") not in ("", "0")


_CACHE_OFF = ("", "0", "false", "no", "off")
_CACHE_ON = ("1", "true", "yes", "on")


def numba_cache_dir() -> str | None:
    """Return the directory numba caches psyrun's kernels in (None: no cache).

    Read from the environment variable ``PSYRUN_NUMBA_CACHE`` on every call:

    * unset, empty or ``0``: no cache (the default);
    * ``1``: ``$XDG_CACHE_HOME/psyrun/numba/<host>`` (``~/.cache`` without
      ``XDG_CACHE_HOME``);
    * any other value: a directory, used as ``<directory>/<host>``.

    Each host gets its own subdirectory, so processes writing one cache
    directory share its filesystem client (numba's cache is not safe for
    writers on several hosts at once). numba's own ``NUMBA_CACHE_DIR`` does not
    apply to psyrun's kernels.

    Returns
    -------
    str or None
        The directory, or None when caching is off.
    """
    value = os.environ.get("PSYRUN_NUMBA_CACHE", "").strip()
    if value.lower() in _CACHE_OFF:
        return None
    if value.lower() in _CACHE_ON:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(base, "psyrun", "numba")
    else:
        base = os.path.expanduser(value)
    return os.path.join(base, socket.gethostname() or "localhost")


def _jit(loop: Callable) -> Callable:
    """Compile `loop` with numba, cached in :func:`numba_cache_dir` if one is set."""
    import numba

    _compile_steps(numba)
    cache_dir = numba_cache_dir()
    if cache_dir is not None:
        try:
            os.makedirs(cache_dir, exist_ok=True)
        except OSError:
            cache_dir = None  # an unusable cache only costs compile time
    if cache_dir is None:
        return numba.njit(cache=False, nogil=True)(loop)
    # numba picks a function's cache directory when it is decorated, from its
    # global setting: set it for our kernels only, then put it back.
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = cache_dir
    try:
        return _CacheGuard(numba.njit(cache=True, nogil=True)(loop), loop)
    finally:
        numba.config.CACHE_DIR = saved


class _CacheGuard:
    """A loop compiled with numba's on-disk cache, compiled afresh if the cache fails.

    numba reads its cache when a loop is first called; a damaged or half
    written cache file (a full disk, writers racing, numba issue 4807) then
    raises from deep inside numba. The cache only saves compile time, so the
    loop is compiled again without it, for this process.
    """

    def __init__(self, cached: Callable, loop: Callable):
        self.cached = cached
        self.loop = loop
        self._plain: Callable | None = None

    def __call__(self, *args):
        if self._plain is None:
            try:
                return self.cached(*args)
            except Exception:  # any failure of the cache: compile without it
                import numba

                self._plain = numba.njit(cache=False, nogil=True)(self.loop)
        return self._plain(*args)

    def __getattr__(self, name: str) -> Any:
        # numba's dispatcher attributes (stats, signatures) for callers and tests.
        return getattr(self.cached if self._plain is None else self._plain, name)


# Scalar steps the loops share (defined with the kernels below). The loops find
# them as globals of this module when numba compiles them, so they are replaced
# here by their compiled versions first; numba inlines them into the loops.
_SCALAR_STEPS = ("_splitmix", "_float_key")


def _compile_steps(numba: Any) -> None:
    module = globals()
    for name in _SCALAR_STEPS:
        step = module[name]
        if not isinstance(step, numba.core.dispatcher.Dispatcher):
            module[name] = numba.njit(inline="always", nogil=True)(step)


class _Kernel:
    """A numba loop compiled on first use, with a NumPy reference beside it."""

    def __init__(
        self,
        loop: Callable,
        reference: Callable,
        threshold: int = NUMBA_THRESHOLD,
        compile_after: int = COMPILE_THRESHOLD,
    ):
        self.loop = loop
        self.reference = reference
        self.threshold = threshold
        self.compile_after = compile_after
        self._compiled: Callable | None = None
        self._unavailable = False
        #: Rows done with the reference so far (see compile_after).
        self.reference_rows = 0
        self.__name__ = reference.__name__
        self.__doc__ = reference.__doc__

    def compiled(self) -> Callable | None:
        """Return the numba-compiled loop (None if numba cannot be imported)."""
        if self._compiled is None and not self._unavailable:
            try:
                self._compiled = _jit(self.loop)
            except ImportError:  # pragma: no cover - numba is a dependency
                self._unavailable = True
                return None
        return self._compiled

    def wants_compiled(self, n: int) -> bool:
        """Whether work of `n` rows should run compiled, and count it if not.

        Yes when `n` reaches the call threshold and the loop is compiled
        already, or this work brings the rows done with the reference to
        ``compile_after`` (then compiling has paid); never when numba is
        disabled.
        """
        if n < self.threshold or _numba_disabled():
            return False
        if self._compiled is not None:
            return True
        self.reference_rows += n
        return self.reference_rows >= self.compile_after

    def __call__(self, *args):
        if not self.wants_compiled(len(args[0])):
            return self.reference(*args)
        compiled = self.compiled()
        if compiled is None:  # pragma: no cover - numba is a dependency
            return self.reference(*args)
        return compiled(*args)


# --------------------------------------------------------------------------
# Kernels: NumPy references and numba loops


def _mix64_reference(x: np.ndarray) -> np.ndarray:
    """Scramble 64-bit keys (splitmix64 finaliser), element-wise."""
    return _mix64_inplace(np.array(x, dtype=np.uint64))


def _mix64_inplace(z: np.ndarray) -> np.ndarray:
    # In place, with one scratch array: temporaries would double the time.
    t = np.right_shift(z, _S30)
    z ^= t
    z *= _M1
    np.right_shift(z, _S27, out=t)
    z ^= t
    z *= _M2
    np.right_shift(z, _S31, out=t)
    z ^= t
    return z


def _splitmix(z):  # pragma: no cover - compiled by numba
    # The splitmix64 finaliser of one uint64 (the scalar form of _mix64_reference).
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _float_key(x, canonical, bits):  # pragma: no cover - compiled by numba
    # The bits of float x, with both zeros alike and every NaN as _NAN_BITS;
    # `bits` is a uint64 view of the 1-element scratch array `canonical`.
    if x != x:
        return np.uint64(0x7FF8000000000000)
    canonical[0] = x + 0.0
    return bits[0]


def _mix64_loop(x):  # pragma: no cover - compiled by numba
    out = np.empty(x.shape[0], dtype=np.uint64)
    for i in range(x.shape[0]):
        out[i] = _splitmix(x[i])
    return out


mix64 = _Kernel(_mix64_loop, _mix64_reference, compile_after=20_000_000)


def _hash_floats_reference(values: np.ndarray) -> np.ndarray:
    """Hash float64 values so that equal numbers (and all NaNs) hash equal."""
    values = np.asarray(values, dtype=np.float64)
    # -0.0 + 0.0 is +0.0, so both zeros share their bits.
    bits = np.add(values, 0.0).view(np.uint64)
    nan = np.isnan(values)
    if nan.any():
        bits[nan] = _NAN_BITS
    return _mix64_inplace(bits)


def _hash_floats_loop(values):  # pragma: no cover - compiled by numba
    n = values.shape[0]
    out = np.empty(n, dtype=np.uint64)
    canonical = np.empty(1, dtype=np.float64)
    bits = canonical.view(np.uint64)
    for i in range(n):
        out[i] = _splitmix(_float_key(values[i], canonical, bits))
    return out


hash_floats = _Kernel(_hash_floats_loop, _hash_floats_reference, compile_after=20_000_000)


def _combine_hashes_reference(acc: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Fold one column's hashes `h` into row hashes `acc` (order matters)."""
    out = np.multiply(acc, _PRIME, dtype=np.uint64)
    out += h
    return _mix64_inplace(out)


def _combine_hashes_loop(acc, h):  # pragma: no cover - compiled by numba
    out = np.empty(acc.shape[0], dtype=np.uint64)
    for i in range(acc.shape[0]):
        out[i] = _splitmix(acc[i] * np.uint64(0x100000001B3) + h[i])
    return out


combine_hashes = _Kernel(_combine_hashes_loop, _combine_hashes_reference, compile_after=20_000_000)


def _hash_float_rows_reference(values: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Hash each row of a 2-d float64 array by content, starting from `seed`.

    `seed` holds one start value per row (it carries the rows' shape).
    """
    acc = np.asarray(seed, dtype=np.uint64).copy()
    for j in range(values.shape[1]):
        acc = _combine_hashes_reference(acc, _hash_floats_reference(values[:, j]))
    return acc


def _hash_float_rows_loop(values, seed):  # pragma: no cover - compiled by numba
    n, m = values.shape
    out = np.empty(n, dtype=np.uint64)
    canonical = np.empty(1, dtype=np.float64)
    bits = canonical.view(np.uint64)
    for i in range(n):
        acc = seed[i]
        for j in range(m):
            z = _splitmix(_float_key(values[i, j], canonical, bits))
            acc = _splitmix(acc * np.uint64(0x100000001B3) + z)
        out[i] = acc
    return out


hash_float_rows = _Kernel(
    _hash_float_rows_loop, _hash_float_rows_reference, compile_after=5_000_000
)


#: Weyl increment of splitmix64: counter ``c`` of a stream keyed ``k`` is ``k + (c + 1) * GAMMA``.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_S12 = np.uint64(12)
#: 2**-53: ``(2 * m + 1) * _HALF_ULP`` maps a 52-bit integer ``m`` into (0, 1) exactly.
_HALF_ULP = 2.0**-53


def _counter_uniforms_reference(rows: np.ndarray, key: np.uint64) -> np.ndarray:
    """Uniform floats in (0, 1) for counters `rows` of the stream `key`.

    The value of a counter depends on nothing else (a counter-based
    generator: splitmix64 of ``key + (row + 1) * GAMMA``), so any rows can be
    drawn in any order. The top 52 bits ``m`` give ``(2 m + 1) / 2**53``,
    exact in float64, never 0 or 1.
    """
    z = np.asarray(rows, dtype=np.int64).astype(np.uint64)
    z += np.uint64(1)
    z *= _GAMMA
    z += np.uint64(key)
    z = _mix64_reference(z) >> _S12
    out = z.astype(np.float64)
    out *= 2.0
    out += 1.0
    out *= _HALF_ULP
    return out


def _counter_uniforms_loop(rows, key):  # pragma: no cover - compiled by numba
    n = rows.shape[0]
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        z = (np.uint64(rows[i]) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) + key
        m = _splitmix(z) >> np.uint64(12)
        out[i] = (2.0 * np.float64(m) + 1.0) * 1.1102230246251565e-16
    return out


counter_uniforms = _Kernel(
    _counter_uniforms_loop, _counter_uniforms_reference, compile_after=15_000_000
)


def _affine_reference(x: np.ndarray, scale: float, shift: float, out: np.ndarray) -> np.ndarray:
    """Write ``x * scale + shift`` into `out` (two roundings, as two NumPy operations).

    `x` may be a strided view (a column of a row-major array); the compiled
    loop reads it once and rounds the same way (numba does not fuse the
    multiply and the add), so both give the same bits.
    """
    np.multiply(x, scale, out=out)
    out += shift
    return out


def _affine_loop(x, scale, shift, out):  # pragma: no cover - compiled by numba
    for i in range(x.shape[0]):
        out[i] = x[i] * scale + shift
    return out


# numba saves next to nothing here: compile only for the largest draws.
affine = _Kernel(_affine_loop, _affine_reference, compile_after=10**9)


def _build_index_reference(keys: np.ndarray):
    """Index 64-bit keys: sorted keys, their rows, bucket starts, same-key chains.

    Returns ``(sorted_keys, rows, starts, shift, chain)``. The keys are
    sorted with equal keys in ascending row order; ``starts[b]`` is the first
    sorted position whose key's top bits (``key >> shift``) are at least
    ``b``, so a lookup scans only its bucket (one entry on average) instead
    of a binary search. ``chain[i]`` is the next row (ascending) with the
    same key as row ``i``, or -1.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    n = len(keys)
    # The default sort is several times faster than a stable one; rows with
    # equal keys (rare) are put in ascending order afterwards.
    order = np.argsort(keys).astype(np.int64, copy=False)
    sorted_keys = keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    chain = np.full(n, -1, dtype=np.int64)
    if same.any():
        tied = np.zeros(n, dtype=bool)
        tied[:-1] |= same
        tied[1:] |= same
        positions = np.flatnonzero(tied)
        # Positions of ties hold runs of equal keys in key order: sort each
        # run by row, keeping the runs where they are.
        order[positions] = order[positions][np.lexsort((order[positions], sorted_keys[positions]))]
        chain[order[:-1][same]] = order[1:][same]
    bits = max(1, (n - 1).bit_length())
    shift = np.uint64(64 - bits)
    starts = np.zeros((1 << bits) + 1, dtype=np.int64)
    np.cumsum(
        np.bincount((sorted_keys >> shift).astype(np.intp), minlength=1 << bits), out=starts[1:]
    )
    return sorted_keys, order, starts, shift, chain


def _lookup_reference(index, queries: np.ndarray) -> np.ndarray:
    """Return the first (lowest) row holding each query key, or -1."""
    sorted_keys, order, starts, shift, _ = index
    queries = np.asarray(queries, dtype=np.uint64)
    out = np.full(len(queries), -1, dtype=np.int64)
    if not len(sorted_keys):
        return out
    bucket = (queries >> shift).astype(np.intp)
    pos, end = np.take(starts, bucket), np.take(starts, bucket + 1)
    # The first entry of each bucket settles most queries: check it for all.
    found = np.take(sorted_keys, pos, mode="clip")
    hit = (found == queries) & (pos < end)
    out[hit] = np.take(order, pos[hit])
    active = np.flatnonzero((found < queries) & (pos + 1 < end))
    pos, end, wanted = pos[active] + 1, end[active], queries[active]
    # Walk the rest of each bucket in key order until the key is reached or passed.
    while len(active):
        found = sorted_keys[pos]
        hit = found == wanted
        out[active[hit]] = order[pos[hit]]
        go_on = (found < wanted) & (pos + 1 < end)
        active, pos, end, wanted = active[go_on], pos[go_on] + 1, end[go_on], wanted[go_on]
    return out


def _build_index_loop(keys):  # pragma: no cover - compiled by numba
    n = keys.shape[0]
    capacity = 8
    while capacity < 2 * n:
        capacity *= 2
    mask = np.uint64(capacity - 1)
    slot_keys = np.zeros(capacity, dtype=np.uint64)
    slot_rows = np.full(capacity, -1, dtype=np.int64)
    chain = np.full(n, -1, dtype=np.int64)
    # Inserting from the last row makes each chain start at its lowest row.
    for i in range(n - 1, -1, -1):
        key = keys[i]
        s = np.int64(key & mask)
        while True:
            if slot_rows[s] < 0:
                slot_keys[s] = key
                slot_rows[s] = i
                break
            if slot_keys[s] == key:
                chain[i] = slot_rows[s]
                slot_rows[s] = i
                break
            s = (s + 1) & (capacity - 1)
    return slot_keys, slot_rows, chain


def _lookup_loop(slot_keys, slot_rows, queries):  # pragma: no cover - compiled by numba
    capacity = slot_keys.shape[0]
    mask = np.uint64(capacity - 1)
    out = np.empty(queries.shape[0], dtype=np.int64)
    for i in range(queries.shape[0]):
        key = queries[i]
        s = np.int64(key & mask)
        found = -1
        while slot_rows[s] >= 0:
            if slot_keys[s] == key:
                found = slot_rows[s]
                break
            s = (s + 1) & (capacity - 1)
        out[i] = found
    return out


# The index counts its keys and its lookups together (HashIndex).
_build_index = _Kernel(_build_index_loop, _build_index_reference, compile_after=8_000_000)
_lookup = _Kernel(_lookup_loop, _lookup_reference)


class HashIndex:
    """An index of 64-bit keys: which row holds a key, and its duplicates.

    Parameters
    ----------
    keys : numpy.ndarray of uint64
        One key per row.
    force : {None, 'reference', 'numba'}, optional
        Pick the implementation instead of choosing by size (for tests).

    Attributes
    ----------
    chain : numpy.ndarray of int64
        ``chain[i]``: the next row after ``i`` with the same key, or -1.
    """

    def __init__(self, keys: np.ndarray, force: str | None = None):
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        use_numba = _build_index.wants_compiled(len(keys)) if force is None else force == "numba"
        self._build = _build_index.compiled() if use_numba else None
        if self._build is not None:
            self._lookup_fn = _lookup.compiled()
            self._slot_keys, self._slot_rows, self.chain = self._build(keys)
        else:
            self._index = _build_index_reference(keys)
            self.chain = self._index[-1]

    def lookup(self, queries: np.ndarray) -> np.ndarray:
        """Return the lowest row holding each query key, or -1 where none does."""
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        if self._build is not None:
            return self._lookup_fn(self._slot_keys, self._slot_rows, queries)
        if len(queries) >= NUMBA_THRESHOLD and not _numba_disabled():
            # Lookups are work of the index too: later indexes compile.
            _build_index.reference_rows += len(queries)
        return _lookup_reference(self._index, queries)


# --------------------------------------------------------------------------
# Hashing columns of any kind


def _python_hash(value: Any, tag: int) -> int:
    return (hash(value) ^ tag) & 0xFFFFFFFFFFFFFFFF


def _array_seeds(shape: tuple[int, ...], n: int) -> np.ndarray:
    """Start values for hashing `n` array entries of one shape by content."""
    seed = np.array([_ARRAY_TAG ^ len(shape)], dtype=np.uint64)
    for dim in shape:
        seed = _combine_hashes_reference(seed, np.array([dim], dtype=np.uint64))
    return np.repeat(seed, n)


def _hash_numeric_rows(column: np.ndarray) -> np.ndarray:
    """Content hashes of the rows of an n-d numeric column."""
    n = column.shape[0]
    flat = np.ascontiguousarray(column.reshape(n, -1), dtype=np.float64)
    return hash_float_rows(flat, _array_seeds(column.shape[1:], n))


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating, np.bool_))


def _as_value_array(value: Any) -> np.ndarray | None:
    """Return the array a list or tuple value stands for (None if not array-like).

    A parameter given as nested lists (``[[1, 2], [3, 4]]``) comes back from
    a store as rows of a 2-d array, so lists and tuples of numbers (or of
    strings) must match arrays with the same content. Mixed or ragged
    sequences are not array-like and keep Python's own comparison.
    """
    if not isinstance(value, (list, tuple)):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = np.asarray(value)
    except (ValueError, TypeError):
        return None
    if array.ndim == 0:
        return None
    if array.dtype.kind in "biuf":
        return array
    if array.dtype.kind == "U":
        # NumPy turns [1, 'x'] into text; only all-str sequences count.
        leaves = np.asarray(value, dtype=object).reshape(-1)
        if all(isinstance(v, str) for v in leaves):
            return array
    return None


def _python_hash_or_unhashable(value: Any) -> int | np.uint64:
    try:
        return _python_hash(value, _OTHER_TAG)
    except TypeError:
        try:
            return _python_hash(tuple(value), _OTHER_TAG)
        except TypeError:
            return _UNHASHABLE


def _hash_objects(values: list) -> np.ndarray:
    """Hashes of arbitrary Python values, consistent with typed columns."""
    n = len(values)
    out = np.empty(n, dtype=np.uint64)
    real_positions, reals = [], []
    for i, v in enumerate(values):
        if _is_real(v) or (isinstance(v, complex) and v.imag == 0):
            try:
                x = float(v.real) if isinstance(v, complex) else float(v)
            except OverflowError:  # ints beyond float range equal no float
                out[i] = _python_hash(v, _OTHER_TAG)
                continue
            real_positions.append(i)
            reals.append(x)
        elif isinstance(v, str):
            out[i] = _python_hash(v, _STR_TAG)
        elif isinstance(v, (np.ndarray, list, tuple)):
            if not isinstance(v, np.ndarray):
                array = _as_value_array(v)
                if array is None:
                    out[i] = _python_hash_or_unhashable(v)
                    continue
                v = array
            if v.dtype.kind in "biuf":
                out[i] = _hash_numeric_rows(v.reshape((1, *v.shape)))[0]
            else:
                out[i] = _UNHASHABLE
        else:
            out[i] = _python_hash_or_unhashable(v)
    if reals:
        out[np.array(real_positions, dtype=np.int64)] = hash_floats(
            np.array(reals, dtype=np.float64)
        )
    return out


def hash_column(column: np.ndarray) -> np.ndarray:
    """Hash every entry of one column into a uint64 key.

    Values that compare equal hash equal, across column types: an int column
    and a float or object column holding the same numbers give the same keys.
    """
    kind = column.dtype.kind
    if column.ndim == 1 and kind in "biuf":
        return hash_floats(np.ascontiguousarray(column, dtype=np.float64))
    if column.ndim > 1 and kind in "biuf":
        return _hash_numeric_rows(column)
    if column.ndim > 1:
        return _hash_objects(list(column))
    if kind == "U":
        return np.fromiter(
            (_python_hash(v, _STR_TAG) for v in column.tolist()),
            dtype=np.uint64,
            count=len(column),
        )
    return _hash_objects(column.tolist())


#: Rows hashed at a time: the NumPy references' temporaries then stay in the
#: CPU cache (two to four times faster than whole columns of 10^6 rows).
HASH_BLOCK = 1 << 16


def hash_rows(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Hash whole rows of equal-length columns into uint64 keys."""
    if not columns:
        raise ValueError("hash_rows needs at least one column")
    n = len(columns[0])
    if n > HASH_BLOCK:
        out = np.empty(n, dtype=np.uint64)
        for start in range(0, n, HASH_BLOCK):
            stop = min(start + HASH_BLOCK, n)
            out[start:stop] = hash_rows([column[start:stop] for column in columns])
        return out
    acc = np.full(n, ROW_SEED, dtype=np.uint64)
    for column in columns:
        acc = combine_hashes(acc, hash_column(column))
    return acc


# --------------------------------------------------------------------------
# Confirming hash hits by value


def _values_equal_python(x: Any, y: Any) -> bool:
    """Whether two values are equal as psyrun matches parameters."""
    x_array, y_array = isinstance(x, np.ndarray), isinstance(y, np.ndarray)
    if x_array or y_array or (isinstance(x, (list, tuple)) and isinstance(y, (list, tuple))):
        # Array-like lists and tuples compare by content, like the arrays they become.
        x_as = x if x_array else _as_value_array(x)
        y_as = y if y_array else _as_value_array(y)
        if x_as is None or y_as is None:
            if x_array or y_array:
                return False
            try:
                return bool(x == y)
            except (TypeError, ValueError):
                return False
        x, y = x_as, y_as
        if x.shape != y.shape:
            return False
        if x.dtype.kind in "biuf" and y.dtype.kind in "biuf":
            return bool(np.array_equal(x, y, equal_nan=True))
        try:
            return bool(np.array_equal(x, y))
        except (TypeError, ValueError):
            return False
    if isinstance(x, str) or isinstance(y, str):
        return isinstance(x, str) and isinstance(y, str) and x == y
    if _is_real(x) and _is_real(y):
        return bool(x == y) or (x != x and y != y)
    try:
        return bool(x == y)
    except (TypeError, ValueError):
        return False


def _int_float_equal(ints: np.ndarray, floats: np.ndarray) -> np.ndarray:
    """Exact equality of an integer and a float column (no rounding)."""
    equal = ints == floats
    # Beyond 2**53 the comparison above rounds the integer; redo those exactly.
    big = equal & (np.abs(floats) >= 2.0**53)
    if big.any():
        f = floats[big]
        exact = np.zeros(len(f), dtype=bool)
        if ints.dtype.kind == "u":
            ok = (f >= 0) & (f < 2.0**64)
            exact[ok] = f[ok].astype(np.uint64) == ints[big][ok]
        else:
            ok = (f >= -(2.0**63)) & (f < 2.0**63)
            exact[ok] = f[ok].astype(np.int64) == ints[big][ok]
        equal[big] = exact
    return equal


def _numeric_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise exact equality of two 1-d numeric columns, NaN == NaN."""
    if a.dtype.kind == "b":
        a = a.astype(np.int8)
    if b.dtype.kind == "b":
        b = b.astype(np.int8)
    ka, kb = a.dtype.kind, b.dtype.kind
    if ka == "f" and kb == "f":
        return (a == b) | (np.isnan(a) & np.isnan(b))
    if ka == "f":
        return _int_float_equal(b, a)
    if kb == "f":
        return _int_float_equal(a, b)
    if ka != kb:
        signed, unsigned = (a, b) if ka == "i" else (b, a)
        return (signed >= 0) & (signed.astype(np.uint64) == unsigned)
    return a == b


def values_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise equality of two equal-length columns of any kind.

    Returns
    -------
    numpy.ndarray of bool
        ``out[i]`` is whether ``a[i]`` and ``b[i]`` match as parameters.
    """
    ka, kb = a.dtype.kind, b.dtype.kind
    if ka in "biuf" and kb in "biuf":
        if a.ndim == 1 and b.ndim == 1:
            return _numeric_equal(a, b)
        if a.shape[1:] == b.shape[1:]:
            n = len(a)
            flat = _numeric_equal(a.reshape(-1), b.reshape(-1)).reshape(n, -1)
            return flat.all(axis=1)
    if ka == "U" and kb == "U" and a.shape[1:] == b.shape[1:]:
        # Array values of unequal shapes never match: the loop below says so.
        return (a == b).reshape(len(a), -1).all(axis=1)
    xs = a.tolist() if a.ndim == 1 else list(a)
    ys = b.tolist() if b.ndim == 1 else list(b)
    return np.fromiter(
        (_values_equal_python(x, y) for x, y in zip(xs, ys)), dtype=bool, count=len(xs)
    )


class RowTable:
    """Rows of some columns, indexed for exact whole-row membership tests.

    Parameters
    ----------
    columns : sequence of numpy.ndarray
        Equal-length columns (at least one); row ``i`` is their ``i``-th entries.
    """

    def __init__(self, columns: Sequence[np.ndarray]):
        self.columns = list(columns)
        self.index = HashIndex(hash_rows(self.columns))

    def contains(self, columns: Sequence[np.ndarray]) -> np.ndarray:
        """Return, for each query row, whether an equal row is in the table.

        Parameters
        ----------
        columns : sequence of numpy.ndarray
            Query columns, in the same order as the table's.
        """
        n = len(columns[0])
        found = np.zeros(n, dtype=bool)
        candidates = self.index.lookup(hash_rows(columns))
        queries = np.flatnonzero(candidates >= 0)
        rows = candidates[queries]
        # Walk the chains of equal hashes until each query is confirmed or
        # its chain ends; chains longer than one are rare (duplicates, collisions).
        while len(queries):
            equal = np.ones(len(queries), dtype=bool)
            for query_column, table_column in zip(columns, self.columns):
                pending = np.flatnonzero(equal)
                if not len(pending):
                    break
                equal[pending] = values_equal(
                    query_column[queries[pending]], table_column[rows[pending]]
                )
            found[queries[equal]] = True
            rows = self.index.chain[rows[~equal]]
            queries = queries[~equal]
            more = rows >= 0
            queries, rows = queries[more], rows[more]
        return found
