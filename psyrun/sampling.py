"""Sampling spaces: quasi-random and random points as lazy parameter spaces.

:class:`Sobol`, :class:`Halton`, :class:`LatinHypercube` and :class:`Random`
are leaves of the parameter-space algebra like :class:`~psyrun.pspace.Param`:
they combine with grids by ``*``, ``+`` and ``-``, and like every node they
answer one question, *the columns for these row numbers*, without drawing the
points they are not asked for. Each keyword argument is one dimension:

* ``(low, high)``: uniform on ``[low, high)``;
* ``(low, high, 'log')``: log-uniform on ``[low, high]`` (both bounds positive);
* any distribution object with a ``ppf`` method, such as a frozen
  ``scipy.stats`` distribution (``scipy.stats.norm(0, 1)``,
  ``scipy.stats.poisson(3)``); distributions with a ``pmf`` and no ``pdf``
  (the discrete ones) give integer columns.

Points of the unit cube are mapped to each dimension by its inverse CDF.
Row ``i`` depends only on the node's arguments and ``i``: not on how a run is
split into jobs, on ``psy run -c``, or on the process that draws it. Pickling
stores the arguments, not the points.

The quasi-random point sets come from :mod:`scipy.stats.qmc` (the ``qmc``
extra: ``pip install psyrun[qmc]``), imported on first use, so that
``import psyrun`` stays cheap; :class:`Random` needs only NumPy.

>>> from psyrun import Param, Sobol
>>> space = Sobol(8, seed=1, x=(0, 1), lr=(1e-4, 1e-1, 'log')) * Param(method=['a', 'b'])
>>> len(space), space.keys()
(16, ['x', 'lr', 'method'])
"""

from __future__ import annotations

import hashlib
import math
import numbers
import operator
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from psyrun.exceptions import TaskConfigWarning
from psyrun.pspace import (
    MAX_ROWS,
    ParameterSpace,
    _ColumnSpec,
    _is_keyword_name,
    _value_code,
)

__all__ = [
    "Halton",
    "LatinHypercube",
    "Random",
    "SamplingSpace",
    "SamplingWarning",
    "Sobol",
    "check_seeded",
    "unseeded_nodes",
]

#: Smallest positive normal float: the unit value 0 is read as this by a
#: distribution's ``ppf``, which would give its lower bound (-inf, or one
#: below the support of a discrete distribution) at exactly 0.
_TINY = np.finfo(np.float64).tiny

_QMC_MISSING = (
    "{what} needs scipy (scipy.stats.qmc); install it with `pip install psyrun[qmc]` "
    "(or `pip install scipy`)"
)


def _qmc(what: str):
    """Import scipy.stats.qmc, or raise ImportError naming the extra."""
    try:
        from scipy.stats import qmc
    except ImportError as exc:
        raise ImportError(_QMC_MISSING.format(what=what)) from exc
    return qmc


class SamplingWarning(TaskConfigWarning):
    """A sampling space loses a property of its design.

    Issued for a Sobol' size that is not a power of two. It is a
    :class:`~psyrun.exceptions.TaskConfigWarning`, so ``psy`` shows it when it
    loads a task file that makes such a space.
    """


# --------------------------------------------------------------------------
# Dimensions


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


class _Dim:
    """One dimension: how a unit value in [0, 1) becomes a parameter value."""

    __slots__ = ("dist", "high", "integer", "kind", "low", "spec")

    def __init__(self, key: str, spec: Any, node: str):
        self.spec = spec
        self.dist = None
        self.low = self.high = math.nan
        if hasattr(spec, "ppf") and not isinstance(spec, (tuple, list)):
            if isinstance(spec, type):
                raise TypeError(
                    f"{node}: dimension {key!r} is the class {spec.__name__}, not a "
                    "distribution; freeze it with its parameters, e.g. scipy.stats.norm(0, 1)"
                )
            try:
                probe = np.asarray(spec.ppf(np.array([0.5])), dtype=np.float64)
            except Exception as exc:
                raise TypeError(
                    f"{node}: the distribution of dimension {key!r} cannot be evaluated "
                    f"({type(exc).__name__}: {exc}); give every parameter, e.g. "
                    "scipy.stats.poisson(3) rather than scipy.stats.poisson"
                ) from None
            if probe.shape != (1,) or not np.isfinite(probe).all():
                raise ValueError(
                    f"{node}: the distribution of dimension {key!r} gives {probe.tolist()} "
                    "for ppf([0.5]); it must give one finite number per probability"
                )
            self.kind = "dist"
            self.dist = spec
            # Discrete scipy distributions have a pmf and no pdf.
            self.integer = hasattr(spec, "pmf") and not hasattr(spec, "pdf")
            return
        self.integer = False
        if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
            raise TypeError(
                f"{node}: dimension {key!r} must be (low, high), (low, high, 'log') or a "
                f"distribution with a ppf method (e.g. scipy.stats.norm(0, 1)), got {spec!r}"
            )
        low, high = spec[0], spec[1]
        if not (_is_real(low) and _is_real(high)):
            raise TypeError(
                f"{node}: the bounds of dimension {key!r} must be numbers, got {spec!r}"
            )
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(
                f"{node}: the bounds of dimension {key!r} must be finite, got {spec!r}"
            )
        if not low < high:
            raise ValueError(
                f"{node}: dimension {key!r} needs low < high, got ({spec[0]!r}, {spec[1]!r})"
            )
        self.low, self.high = low, high
        if len(spec) == 2:
            self.kind = "uniform"
            return
        if spec[2] != "log":
            raise ValueError(
                f"{node}: the third item of dimension {key!r} must be 'log' (log-uniform), "
                f"got {spec[2]!r}"
            )
        if low <= 0:
            raise ValueError(
                f"{node}: the log-uniform dimension {key!r} needs positive bounds, got "
                f"({spec[0]!r}, {spec[1]!r}); use (low, high) for a uniform range"
            )
        self.kind = "log"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int64 if self.integer else np.float64)

    def values(self, unit: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Map unit values in [0, 1) to this dimension's values.

        Returns a new array, or `out` (which may be `unit` itself) filled
        with them: large draws then need no extra pass.
        """
        if self.kind in ("uniform", "log"):
            from psyrun._kernels import affine

            low, high = self.low, self.high
            if self.kind == "log":
                low, high = math.log(low), math.log(high)
            if out is None:
                out = np.empty(unit.shape, dtype=np.float64)
            # One pass, even from a strided column of a draw.
            affine(unit, high - low, low, out)
            if self.kind == "log":
                np.exp(out, out=out)
                # exp may round a hair beyond a bound.
                np.clip(out, self.low, self.high, out=out)
            return out
        values = np.asarray(self.dist.ppf(np.maximum(unit, _TINY)))
        values = values.astype(np.int64) if self.integer else values.astype(np.float64, copy=False)
        if out is None:
            return values
        out[...] = values
        return out

    def code(self) -> str:
        """Python code that builds this dimension again."""
        if self.kind != "dist":
            return _value_code(tuple(self.spec))
        dist = self.dist
        family = getattr(dist, "dist", None)
        name = getattr(family, "name", None)
        if family is None and isinstance(getattr(dist, "name", None), str):
            family, name = dist, dist.name  # an unfrozen scipy distribution
        if type(dist).__module__.startswith("scipy.stats") and isinstance(name, str):
            args = [_value_code(a) for a in getattr(dist, "args", ())]
            args += [f"{k}={_value_code(v)}" for k, v in getattr(dist, "kwds", {}).items()]
            return f"scipy.stats.{name}({', '.join(args)})"
        return repr(dist)


# --------------------------------------------------------------------------
# The base class

#: Held while a node makes its scipy engine (each node then has its own lock).
_ENGINE_LOCK = threading.Lock()


def _check_count(n: Any, node: str) -> int:
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(
            f"{node}: the number of points must be an integer, got {type(n).__name__}"
        ) from None
    if not 1 <= n <= MAX_ROWS:
        raise ValueError(
            f"{node}: the number of points must be at least 1 and at most {MAX_ROWS}, got {n}"
        )
    return n


def _check_seed(seed: Any, node: str) -> tuple[int, bool]:
    """Return (seed, whether the caller gave it); no seed draws a fresh one."""
    if seed is None:
        # Drawn once and kept, so that pickles and repr give these points again.
        return int(np.random.SeedSequence().entropy), False
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"{node}: seed must be a non-negative integer, got {type(seed).__name__}; "
            "a Generator or RandomState cannot be stored as a recipe"
        )
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"{node}: seed must be a non-negative integer, got {seed}")
    return seed, True


class SamplingSpace(ParameterSpace):
    """Base class of the sampling spaces: `n` points of a `d`-dimensional design.

    Subclasses draw points of the unit cube: :meth:`_unit_rows` for any row
    numbers and :meth:`_unit_range` for a contiguous range (both return a
    ``(len(rows), len(dims))`` float64 array with values in [0, 1)). This
    class turns them into one column per dimension and implements the rest
    of the node interface.

    Parameters
    ----------
    n : int
        Number of points (rows).
    seed : int or None
        Seed of the design; None draws one (kept in the node, shown by
        ``repr``), which a task file refuses (see :func:`check_seeded`).
    **dims
        Dimension name -> ``(low, high)``, ``(low, high, 'log')`` or a
        distribution with ``ppf``. Names of the node's own arguments (``n``,
        ``seed``, ``scramble``, ``bits``) cannot be dimensions; such a
        parameter can come from another factor (``* Param(seed=range(5))``).
    """

    def __init__(self, n: int, seed: int | None = None, **dims: Any):
        name = type(self).__name__
        self._n = _check_count(n, name)
        self._seed, self._seed_given = _check_seed(seed, name)
        if not dims:
            raise ValueError(
                f"{name}: give at least one dimension, e.g. {name}({n}, seed=0, x=(0, 1))"
            )
        self._dims = {key: _Dim(key, spec, name) for key, spec in dims.items()}
        self._keys = list(self._dims)

    # -- what subclasses supply -------------------------------------------

    def _unit_rows(self, rows: np.ndarray, dims: list[int]) -> np.ndarray:
        """Unit-cube points of rows (any order, repeats allowed), columns `dims`."""
        raise NotImplementedError

    def _unit_range(self, start: int, stop: int, dims: list[int]) -> np.ndarray:
        """Unit-cube points of rows ``start:stop``, columns `dims`."""
        return self._unit_rows(np.arange(start, stop, dtype=np.int64), dims)

    def _options(self) -> list[str]:
        """Keyword arguments other than n, seed and the dims, as code (for repr)."""
        return []

    # -- the node interface -------------------------------------------------

    @property
    def seed(self) -> int:
        """The seed of the design (drawn at construction when none was given)."""
        return self._seed

    @property
    def seed_given(self) -> bool:
        """Whether the seed was given (False: drawn when the node was made)."""
        return self._seed_given

    def keys(self) -> list[str]:
        """Return the dimension names in the order given."""
        return list(self._keys)

    def __len__(self) -> int:
        return self._n

    def _spec(self, key: str) -> _ColumnSpec:
        return _ColumnSpec(self._dims[key].dtype)

    def _dim_indices(self, keys: Sequence[str] | None) -> list[int]:
        keys = self._keys if keys is None else keys
        return [self._keys.index(k) for k in keys]

    def _columns(self, unit: np.ndarray, dims: list[int]) -> dict[str, np.ndarray]:
        out = {}
        for j, d in enumerate(dims):
            key = self._keys[d]
            out[key] = self._dims[key].values(unit[:, j])
        return out

    def _take(self, rows, keys=None):
        dims = self._dim_indices(keys)
        if len(rows) == 0:
            return {self._keys[d]: np.empty(0, self._dims[self._keys[d]].dtype) for d in dims}
        return self._columns(self._unit_rows(np.asarray(rows, dtype=np.int64), dims), dims)

    def _range_take(self, start, stop, keys=None):
        dims = self._dim_indices(keys)
        if stop <= start:
            return {self._keys[d]: np.empty(0, self._dims[self._keys[d]].dtype) for d in dims}
        return self._columns(self._unit_range(start, stop, dims), dims)

    def _row(self, i):
        return {k: v.item(0) for k, v in self._take(np.array([i], dtype=np.int64)).items()}

    def _describe(self, evaluable: bool = False) -> str:
        args = [str(self._n), f"seed={self._seed}", *self._options()]
        dims = {k: d.code() for k, d in self._dims.items()}
        if all(_is_keyword_name(k) for k in dims):
            args += [f"{k}={v}" for k, v in dims.items()]
        else:
            args.append("**{" + ", ".join(f"{k!r}: {v}" for k, v in dims.items()) + "}")
        return f"{type(self).__name__}({', '.join(args)})"

    # -- the scipy engine, made once per process ----------------------------

    def _make_engine(self):
        raise NotImplementedError

    def _engine(self):
        """Return the scipy engine, made on first use (with a lock around its state)."""
        engine = self.__dict__.get("_cache_engine")
        if engine is None:
            with _ENGINE_LOCK:
                engine = self.__dict__.get("_cache_engine")
                if engine is None:
                    # The lock first: a thread that sees the engine finds its lock.
                    self._cache_lock = threading.Lock()
                    engine = self._cache_engine = self._make_engine()
        return engine


# --------------------------------------------------------------------------
# Sobol'


class Sobol(SamplingSpace):
    """A (scrambled) Sobol' sequence of `n` points as a lazy parameter space.

    Row ``i`` is point ``i`` of ``scipy.stats.qmc.Sobol(d, scramble=scramble,
    bits=bits, rng=seed)``, mapped to each dimension. Any point is computed
    directly from the sequence's direction numbers (the Gray-code form of the
    sequence) in ``O(log n)``; a contiguous row range skips ahead to its
    first point that way (what ``fast_forward`` does, without stepping through
    the skipped points) and lets scipy draw the rest.

    Parameters
    ----------
    n : int
        Number of points. Sobol' points are balanced only in blocks of a
        power of two: other sizes warn, as scipy does.
    seed : int
        Seed of the scrambling (required in a task file).
    scramble : bool, optional
        Scramble the sequence (default); unscrambled, the first point is the
        origin, mapped to each distribution at the smallest positive float.
    bits : int, optional
        Bits of the sequence (scipy's default, 30); at most ``2**bits`` points.
    **dims
        Dimension name -> ``(low, high)``, ``(low, high, 'log')`` or a
        distribution with ``ppf`` (e.g. ``scipy.stats.norm(0, 1)``).

    Warns
    -----
    SamplingWarning
        If `n` is not a power of two (a ``UserWarning``).

    Examples
    --------
    >>> space = Sobol(4, seed=0, x=(0, 10))
    >>> len(space), space.keys()
    (4, ['x'])
    """

    def __init__(
        self,
        n: int,
        seed: int | None = None,
        scramble: bool = True,
        bits: int | None = None,
        **dims: Any,
    ):
        super().__init__(n, seed, **dims)
        self._scramble = bool(scramble)
        self._bits = 30 if bits is None else operator.index(bits)
        if not 1 <= self._bits <= 64:
            raise ValueError(f"Sobol: bits must be between 1 and 64, got {bits}")
        if self._n > 2**self._bits:
            raise ValueError(
                f"Sobol: {self._n} points need more than bits={self._bits} bits; "
                f"pass bits={max(self._n - 1, 1).bit_length()} (at most 64)"
            )
        if len(self._dims) > 21201:
            raise ValueError(f"Sobol: at most 21201 dimensions, got {len(self._dims)}")
        if self._n & (self._n - 1):
            lower = 1 << (self._n.bit_length() - 1)
            warnings.warn(
                f"Sobol({self._n}, ...): Sobol' points are balanced only for a power of two; "
                f"{self._n} points lose that balance and with it the faster convergence of "
                f"estimates from the sample; use {lower} or {lower * 2} points",
                SamplingWarning,
                stacklevel=2,
            )

    def _options(self):
        options = [] if self._scramble else ["scramble=False"]
        if self._bits != 30:
            options.append(f"bits={self._bits}")
        return options

    def _make_engine(self):
        qmc = _qmc("Sobol")
        return qmc.Sobol(len(self._dims), scramble=self._scramble, bits=self._bits, rng=self._seed)

    def _unit_range(self, start, stop, dims):
        engine = self._engine()
        with self._cache_lock, warnings.catch_warnings():
            # scipy warns about draws whose size is not a power of two; the
            # node warned once about its size, ranges of it are not news.
            warnings.simplefilter("ignore", UserWarning)
            engine.reset()
            if start:
                engine.fast_forward(start)
            points = engine.random(stop - start)
        return points[:, dims] if len(dims) != points.shape[1] else points

    def _range_take(self, start, stop, keys=None):
        dims = self._dim_indices(keys)
        if stop - start < 2:
            return super()._range_take(start, stop, keys)
        engine = self._engine()
        with self._cache_lock:
            # Point 0 is the shift; skipping it spares scipy's copy of the
            # whole draw to prepend it (and its power-of-two warning).
            first = max(start, 1)
            self._skip_to(engine, first)
            body = engine.random(stop - first)
        head = first - start  # 1 if row 0 is asked for, else 0
        out = {}
        for d in dims:
            key = self._keys[d]
            dim = self._dims[key]
            column = np.empty(stop - start, dtype=dim.dtype)
            if head:
                column[:1] = dim.values(self._unit_rows(np.zeros(1, np.int64), [d])[:, 0])
            dim.values(body[:, d], out=column[head:])
            out[key] = column
        return out

    @staticmethod
    def _skip_to(engine, first: int) -> None:
        """Make `engine` draw point `first` (>= 1) next, in O(log first).

        scipy's ``fast_forward`` steps through every skipped point; the state
        after point ``first - 1`` is that point itself, computed directly.
        """
        engine.reset()
        if first > 1 and hasattr(engine, "_quasi"):
            engine._quasi = Sobol._integer_points(
                engine, np.array([first - 1], dtype=np.int64), slice(None)
            )[0]
            engine.num_generated = first
        else:
            engine.fast_forward(first)

    def _unit_rows(self, rows, dims):
        engine = self._engine()
        return self._integer_points(engine, rows, dims) * engine._scale

    @staticmethod
    def _integer_points(engine, rows: np.ndarray, dims) -> np.ndarray:
        """Sobol' points `rows` as the integers scipy scales by ``2**-bits``."""
        directions = engine._sv[dims]
        x = np.empty((len(rows), directions.shape[0]), dtype=directions.dtype)
        x[:] = engine._shift[dims]
        # Point k is the shift XOR the direction numbers of the set bits of
        # k's Gray code, which is what scipy's incremental draw accumulates.
        gray = rows ^ (rows >> 1)
        for bit in range(int(gray.max()).bit_length()):
            chosen = ((gray >> bit) & 1).astype(bool)
            x[chosen] ^= directions[:, bit]
        return x


# --------------------------------------------------------------------------
# Halton


class _Scrambled(SamplingSpace):
    """A point set with a ``scramble`` switch, on by default (Halton, Latin hypercube)."""

    def __init__(self, n: int, seed: int | None = None, scramble: bool = True, **dims: Any):
        super().__init__(n, seed, **dims)
        self._scramble = bool(scramble)

    def _options(self):
        return [] if self._scramble else ["scramble=False"]


class Halton(_Scrambled):
    """A (scrambled) Halton sequence of `n` points as a lazy parameter space.

    Row ``i`` is point ``i`` of ``scipy.stats.qmc.Halton(d,
    scramble=scramble, rng=seed)``, mapped to each dimension. A contiguous
    row range starts at its first point (the radical inverse of any index is
    computed directly, nothing before it is drawn); other rows likewise.

    Parameters
    ----------
    n : int
        Number of points.
    seed : int
        Seed of the scrambling permutations (required in a task file).
    scramble : bool, optional
        Scramble the sequence (default).
    **dims
        Dimension name -> ``(low, high)``, ``(low, high, 'log')`` or a
        distribution with ``ppf``.
    """

    def _make_engine(self):
        qmc = _qmc("Halton")
        return qmc.Halton(len(self._dims), scramble=self._scramble, rng=self._seed)

    def _unit_range(self, start, stop, dims):
        engine = self._engine()
        with self._cache_lock:
            # scipy's Halton draws from num_generated on: set it to skip ahead.
            engine.num_generated = start
            points = engine.random(stop - start)
        return points[:, dims] if len(dims) != points.shape[1] else points

    def _unit_rows(self, rows, dims):
        engine = self._engine()
        out = np.empty((len(rows), len(dims)), dtype=np.float64)
        for j, d in enumerate(dims):
            base = engine.base[d]
            column = np.zeros(len(rows), dtype=np.float64)
            quotient = rows.copy()
            scale = 1.0 / base
            if self._scramble:
                # One digit permutation per position, as scipy applies them.
                for permutation in engine._permutations[d]:
                    quotient, digit = np.divmod(quotient, base)
                    column += permutation[digit] * scale
                    scale /= base
            else:
                while quotient.any():
                    quotient, digit = np.divmod(quotient, base)
                    column += digit * scale
                    scale /= base
            out[:, j] = column
        return out


# --------------------------------------------------------------------------
# Latin hypercube


class LatinHypercube(_Scrambled):
    """A Latin hypercube design of `n` points as a lazy parameter space.

    The points are ``scipy.stats.qmc.LatinHypercube(d, scramble=scramble,
    rng=seed).random(n)``, mapped to each dimension: every dimension's range
    is cut into `n` strata of equal probability and each stratum holds
    exactly one point. A Latin hypercube is a joint permutation of all `n`
    strata, so it cannot be drawn row by row: the first access in a process
    draws the whole design once and keeps it, **O(n d) memory** (8 bytes
    per point and dimension); later rows cost nothing. Pickles store the
    arguments, not the points.

    Parameters
    ----------
    n : int
        Number of points (strata per dimension).
    seed : int
        Seed of the design (required in a task file).
    scramble : bool, optional
        Place each point at random within its stratum (default); False puts
        it at the stratum's centre.
    **dims
        Dimension name -> ``(low, high)``, ``(low, high, 'log')`` or a
        distribution with ``ppf``.
    """

    def _points(self) -> np.ndarray:
        points = self.__dict__.get("_cache_points")
        if points is None:
            qmc = _qmc("LatinHypercube")
            engine = qmc.LatinHypercube(len(self._dims), scramble=self._scramble, rng=self._seed)
            points = engine.random(self._n)
            self._cache_points = points
        return points

    def _unit_rows(self, rows, dims):
        return self._points()[rows][:, dims]

    def _unit_range(self, start, stop, dims):
        return self._points()[start:stop, dims]


# --------------------------------------------------------------------------
# Random


def _stream_key(seed: int, key: str) -> np.uint64:
    """Return the 64-bit key of dimension `key`'s stream (from the seed and the name)."""
    name = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass")).digest()[:8])
    state = np.random.SeedSequence(seed, spawn_key=(name,)).generate_state(1, np.uint64)
    return state[0]


class Random(SamplingSpace):
    """`n` independent uniform random points as a lazy parameter space.

    Each dimension has its own stream of a counter-based generator (the
    splitmix64 mix of the row number, keyed by the seed and the dimension's
    name), so row ``i`` is computed directly, whatever rows are drawn before
    it or in which process; renaming, adding or removing another dimension
    leaves a dimension's values unchanged. Unit values lie in the open
    interval (0, 1) on a grid of ``2**-52``. Needs only NumPy.

    Parameters
    ----------
    n : int
        Number of points.
    seed : int
        Seed of the streams (required in a task file).
    **dims
        Dimension name -> ``(low, high)``, ``(low, high, 'log')`` or a
        distribution with ``ppf``.

    Examples
    --------
    >>> space = Random(1000, seed=3, x=(0, 1))
    >>> space[10]['x'] == space.to_arrays(10, 11)['x'].item(0)
    True
    """

    def _stream_keys(self) -> list[np.uint64]:
        keys = self.__dict__.get("_cache_keys")
        if keys is None:
            keys = [_stream_key(self._seed, k) for k in self._keys]
            self._cache_keys = keys
        return keys

    def _unit_rows(self, rows, dims):
        return np.column_stack(self._unit_columns(rows, dims))

    def _unit_columns(self, rows: np.ndarray, dims: list[int]) -> list[np.ndarray]:
        from psyrun._kernels import counter_uniforms

        keys = self._stream_keys()
        return [counter_uniforms(rows, keys[d]) for d in dims]

    def _columns_of(self, rows: np.ndarray, keys) -> dict[str, np.ndarray]:
        # One contiguous draw per dimension, transformed in place: no (n, d)
        # array and no strided copies.
        dims = self._dim_indices(keys)
        units = self._unit_columns(rows, dims)
        out = {}
        for d, unit in zip(dims, units):
            dim = self._dims[self._keys[d]]
            out[self._keys[d]] = dim.values(unit, out=None if dim.integer else unit)
        return out

    def _take(self, rows, keys=None):
        return self._columns_of(np.asarray(rows, dtype=np.int64), keys)

    def _range_take(self, start, stop, keys=None):
        return self._columns_of(np.arange(start, max(start, stop), dtype=np.int64), keys)


# --------------------------------------------------------------------------
# Task files: every sampling node needs a seed


def _nodes(space: ParameterSpace) -> Iterator[ParameterSpace]:
    stack = [space]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node._operands()))


def unseeded_nodes(space: ParameterSpace) -> list[SamplingSpace]:
    """Return the sampling nodes of `space` that were made without a seed.

    Parameters
    ----------
    space : psyrun.pspace.ParameterSpace
        Any parameter space.

    Returns
    -------
    list of SamplingSpace
        In tree order (left operand first).
    """
    return [n for n in _nodes(space) if isinstance(n, SamplingSpace) and not n.seed_given]


def check_seeded(space: ParameterSpace, where: str = "pspace") -> None:
    """Raise ValueError if a sampling node of `space` has no seed.

    A task file is loaded by ``psy run``, by every job and again by
    ``psy status`` and ``psy run -c``; a node without a seed would draw
    other points at each load, so no result could be matched to the space.

    Parameters
    ----------
    space : psyrun.pspace.ParameterSpace
        The space a task defines.
    where : str, optional
        What to call the space in the message.

    Raises
    ------
    ValueError
        Naming the first node without a seed.
    """
    bad = unseeded_nodes(space)
    if bad:
        node = bad[0]
        name = type(node).__name__
        raise ValueError(
            f"{where} uses a {name} over {', '.join(node.keys())} without a seed; "
            "a task file is loaded again by every job, by psy status and by psy run -c, and "
            "each load would draw other points, so results could not be matched to the "
            f"space; give it a fixed seed, e.g. {name}({len(node)}, seed=0, ...)"
        )
