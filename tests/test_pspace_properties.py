"""Property tests: the parameter-space algebra against a plain-Python oracle.

The oracle keeps a space as a list of row dicts and implements each operator
with itertools and list scans, exactly as the user guide describes them. The
random spaces mix ints, floats (with NaN and -0.0), bools, strings and other
objects (None, tuples, bytes), in typed and mixed columns.
"""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psyrun.pspace import AmbiguousOperationError, Param, missing

NAN = float("nan")
KEYS = ["a", "b", "c", "d", "e", "f"]

ints = st.integers(-2, 3)
floats = st.sampled_from([0.0, -0.0, 1.0, 2.5, NAN, -1.0])
strings = st.sampled_from(["", "a", "b", "1"])
objects = st.sampled_from([None, (1, 2), b"x", True, False])
values = st.one_of(ints, floats, strings, objects)


def same_param(x, y):
    """Equality as psyrun matches parameters: 1 == 1.0 == True, NaN == NaN."""
    if isinstance(x, str) or isinstance(y, str):
        return isinstance(x, str) and isinstance(y, str) and x == y
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return x == y


def identical(x, y):
    """Same value and same type (what build() must reproduce)."""
    if type(x) is not type(y):
        return False
    if isinstance(x, float) and math.isnan(x):
        return math.isnan(y)
    return x == y


def rows_identical(got, expected):
    if len(got) != len(expected):
        return False
    for g, e in zip(got, expected):
        if list(g) != list(e):
            return False
        if not all(identical(g[k], e[k]) for k in g):
            return False
    return True


@st.composite
def columns(draw, n):
    """A column of n values: one kind of value, or a mixture."""
    kind = draw(st.sampled_from([ints, floats, strings, objects, values]))
    return draw(st.lists(kind, min_size=n, max_size=n))


@st.composite
def params(draw, keys=None, max_rows=4):
    """A Param and its oracle rows; `keys` fixes the key set."""
    if keys is None:
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
    n = draw(st.integers(0, max_rows))
    kwargs, plain = {}, {}
    for key in keys:
        if draw(st.integers(0, 4)) == 0 and n > 0:
            scalar = draw(st.one_of(ints, floats, strings))
            kwargs[key] = scalar
            plain[key] = [scalar] * n
        else:
            column = draw(columns(n))
            kwargs[key] = column
            plain[key] = column
    if all(not isinstance(v, list) for v in kwargs.values()):
        n = 1  # only scalars: one row
        plain = {k: [v] for k, v in kwargs.items()}
    rows = [{k: plain[k][i] for k in keys} for i in range(n)]
    return Param(**kwargs), rows


def oracle_product(left, right):
    return [{**x, **y} for x, y in itertools.product(left, right)]


def oracle_sum(left, right, left_keys, right_keys):
    keys = list(dict.fromkeys([*left_keys, *right_keys]))
    return [{k: row.get(k, NAN) for k in keys} for row in [*left, *right]]


def oracle_difference(minuend, subtrahend, sub_keys):
    shared = [k for k in sub_keys if minuend and k in minuend[0]]
    kept = []
    for row in minuend:
        matched = any(all(same_param(row[k], other[k]) for k in shared) for other in subtrahend)
        if not matched:
            kept.append(row)
    return kept


@st.composite
def disjoint_params(draw, count):
    """`count` Params whose key sets do not overlap."""
    keys = draw(st.permutations(KEYS))
    sizes = [draw(st.integers(1, 2)) for _ in range(count)]
    out, used = [], 0
    for size in sizes:
        out.append(draw(params(keys=keys[used : used + size], max_rows=3)))
        used += size
    return out


@st.composite
def spaces(draw):
    """A composite space (product, sum, difference of Params) and its oracle rows."""
    (p1, r1), (p2, r2), (p3, r3) = draw(disjoint_params(3))
    shape = draw(st.sampled_from(["product", "sum", "difference", "nested"]))
    if shape == "product":
        return p1 * p2, oracle_product(r1, r2)
    if shape == "sum":
        q, rq = draw(params())
        return p1 + q, oracle_sum(r1, rq, p1.keys(), q.keys())
    prod = p1 * p2
    rprod = oracle_product(r1, r2)
    if shape == "difference":
        sub_keys = draw(st.lists(st.sampled_from(prod.keys()), min_size=1, unique=True))
        chosen = draw(st.lists(st.sampled_from(rprod), max_size=3)) if rprod else []
        sub_rows = [{k: row[k] for k in sub_keys} for row in chosen]
        extra = draw(params(keys=sub_keys))
        sub = Param(**{k: [row[k] for row in sub_rows] for k in sub_keys}) + extra[0]
        return prod - sub, oracle_difference(rprod, sub_rows + extra[1], sub_keys)
    space = prod * p3 + prod * p3
    rows = oracle_product(rprod, r3)
    return space, rows + rows


@given(disjoint_params(2))
def test_product_rows_and_length(pair):
    (a, ra), (b, rb) = pair
    space = a * b
    assert len(space) == len(a) * len(b)
    assert rows_identical(list(space.iterate()), oracle_product(ra, rb))


@given(disjoint_params(3))
def test_product_is_associative(triple):
    (a, _), (b, _), (c, _) = triple
    left, right = (a * b) * c, a * (b * c)
    assert left.keys() == right.keys()
    assert rows_identical(list(left.iterate()), list(right.iterate()))


@given(params(), params())
def test_sum_rows_and_length(x, y):
    (a, ra), (b, rb) = x, y
    space = a + b
    assert len(space) == len(a) + len(b)
    assert rows_identical(list(space.iterate()), oracle_sum(ra, rb, a.keys(), b.keys()))


@given(params(), params(), params())
def test_sum_is_associative(x, y, z):
    a, b, c = x[0], y[0], z[0]
    left, right = (a + b) + c, a + (b + c)
    assert left.keys() == right.keys()
    assert rows_identical(list(left.iterate()), list(right.iterate()))


@given(params(keys=["a", "b"], max_rows=6), st.data())
def test_difference_removes_rows_whose_projection_is_subtracted(minuend, data):
    space, rows = minuend
    sub_keys = data.draw(st.sampled_from([["a"], ["b"], ["a", "b"], ["b", "a"]]))
    chosen = data.draw(st.lists(st.sampled_from(rows), max_size=4)) if rows else []
    sub_rows = [{k: r[k] for k in sub_keys} for r in chosen]
    other, other_rows = data.draw(params(keys=sub_keys))
    subtrahend = Param(**{k: [r[k] for r in sub_rows] for k in sub_keys}) + other
    expected = oracle_difference(rows, sub_rows + other_rows, sub_keys)
    assert rows_identical(list((space - subtrahend).iterate()), expected)
    # missing() against a mapping with an extra (output) key gives the same rows,
    # and refuses one lacking a key of the minuend (it cannot match whole rows).
    mapping = {k: [r[k] for r in sub_rows + other_rows] for k in sub_keys}
    mapping["output"] = list(range(len(sub_rows) + len(other_rows)))
    if set(sub_keys) == {"a", "b"} or not mapping["output"]:
        assert rows_identical(list(missing(space, mapping).iterate()), expected)
    else:
        with pytest.raises(AmbiguousOperationError):
            missing(space, mapping)


@given(spaces(), st.data())
def test_all_access_paths_agree(case, data):
    space, rows = case
    n = len(space)
    assert n == len(rows)
    assert rows_identical([space[i] for i in range(n)], rows)
    assert rows_identical([space[i - n] for i in range(n)], rows)
    block_size = data.draw(st.integers(1, 5))
    assert rows_identical(list(space.iterate(block_size=block_size)), rows)
    built = space.build()
    assert list(built) == space.keys()
    assert rows_identical([{k: built[k][i] for k in built} for i in range(n)], rows)
    start, stop = data.draw(st.integers(-n - 2, n + 2)), data.draw(st.integers(-n - 2, n + 2))
    step = data.draw(st.sampled_from([1, 2, 3, -1, -2]))
    view = space[start:stop:step]
    assert rows_identical(list(view.iterate(block_size=block_size)), rows[start:stop:step])
    assert rows_identical([view[i] for i in range(len(view))], rows[start:stop:step])
    lo, hi = sorted((data.draw(st.integers(0, n)), data.draw(st.integers(0, n))))
    arrays = space.to_arrays(lo, hi)
    as_rows = [
        {k: (arrays[k][i].item() if arrays[k].dtype.kind != "O" else arrays[k][i]) for k in arrays}
        for i in range(hi - lo)
    ]
    assert rows_identical(as_rows, rows[lo:hi])
    picks = data.draw(st.lists(st.integers(-n, n - 1), max_size=6)) if n else []
    taken = space.take(np.array(picks, dtype=np.int64))
    for j, i in enumerate(picks):
        got = {k: taken[k][j] for k in taken}
        got = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in got.items()}
        assert rows_identical([got], [rows[i]])


@given(spaces())
def test_pickle_round_trip(case):
    space, rows = case
    again = pickle.loads(pickle.dumps(space))
    assert again.keys() == space.keys()
    assert rows_identical(list(again.iterate()), rows)


@given(spaces(), st.integers(0, 10), st.integers(0, 2**32 - 1))
def test_sample_draws_distinct_rows_of_the_space(case, k, seed):
    space, rows = case
    k = min(k, len(space))
    sample = space.sample(k, seed=seed)
    assert len(sample) == k
    picked = sample._rows
    assert len(set(picked.tolist())) == k
    assert rows_identical(list(sample.iterate()), [rows[i] for i in picked])


# --------------------------------------------------------------------------
# iterate() and build() against the materialized columns, row by row
#
# iterate() and build() build their Python values without going through
# to_arrays() (a product repeats each factor's converted values), so they are
# checked here against to_arrays() converted value by value: the same values
# of the same types (Python scalars for 1-d columns, an array of its own per
# row for n-d ones), over every kind of node and long factors whose values
# repeat in long runs.


def _materialized(space) -> list[dict]:
    arrays = space.to_arrays()
    keys = space.keys()
    values = [arrays[k].tolist() if arrays[k].ndim == 1 else list(arrays[k]) for k in keys]
    return [dict(zip(keys, row)) for row in zip(*values)]


def _same_value(x, y) -> bool:
    if type(x) is not type(y):
        return False
    if isinstance(x, np.ndarray):
        return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
    if isinstance(x, float) and math.isnan(x):
        return math.isnan(y)
    return x == y


def _same_rows(got: list[dict], expected: list[dict]) -> bool:
    return len(got) == len(expected) and all(
        list(g) == list(e) and all(_same_value(g[k], e[k]) for k in g)
        for g, e in zip(got, expected)
    )


@st.composite
def _leaves(draw, name: str):
    """A leaf with one or two keys (``name``, ``name + "x"``), 1 to 40 rows."""
    from psyrun.sampling import Halton, Random

    n = draw(st.one_of(st.integers(1, 4), st.integers(15, 40)))
    kind = draw(
        st.sampled_from(["int", "float", "bool", "str", "mixed", "ndim", "scalar", "sampled"])
    )
    if kind == "sampled":
        cls = draw(st.sampled_from([Random, Halton]))
        return cls(n, seed=draw(st.integers(0, 99)), **{name: (-2, 3)})
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    columns = {
        "int": rng.integers(-5, 5, n),
        "float": np.where(rng.random(n) < 0.2, np.nan, rng.random(n)),
        "bool": rng.random(n) < 0.5,
        "str": [f"s{i % 3}" for i in range(n)],
        "mixed": [[1, 2.5, "x", None, (1, 2)][i % 5] for i in range(n)],
        "ndim": rng.random((n, 2)),
        "scalar": list(range(n)),
    }
    extra = {name + "x": 7} if kind == "scalar" else {}
    return Param(**{name: columns[kind]}, **extra)


@st.composite
def _any_spaces(draw):
    """Products of 1-4 leaves (or of a sum, view or difference), and nodes of them."""
    count = draw(st.integers(1, 4))
    factors = [draw(_leaves(f"k{i}")) for i in range(count)]
    inner = draw(st.sampled_from(["none", "sum", "view", "difference"]))
    if inner == "sum":
        factors[0] = factors[0] + factors[0][: draw(st.integers(0, 3))]
    elif inner == "view":
        factors[0] = factors[0][draw(st.integers(0, 2)) :: draw(st.integers(1, 3))]
    elif inner == "difference" and factors[0]._spec("k0").tail == ():
        factors[0] = factors[0] - Param(k0=factors[0].to_arrays(0, 1)["k0"])
    space = factors[0]
    for factor in factors[1:]:
        space = space * factor
    while len(space) > 1500:
        space = space[: len(space) // 2]
    outer = draw(st.sampled_from(["none", "slice", "sample"]))
    if outer == "slice":
        space = space[draw(st.integers(0, 5)) :: draw(st.integers(1, 4))]
    elif outer == "sample":
        space = space.sample(min(len(space), draw(st.integers(0, 50))), seed=0)
    return space


@settings(max_examples=60, deadline=None)
@given(_any_spaces(), st.integers(1, 70))
def test_iterate_and_build_give_the_materialized_columns(space, block_size):
    expected = _materialized(space)
    assert _same_rows(list(space.iterate(block_size=block_size)), expected)
    built = space.build()
    assert list(built) == space.keys()
    assert _same_rows([dict(zip(built, row)) for row in zip(*built.values())], expected)


@given(st.integers(1, 40), st.integers(1, 20))
def test_array_values_are_each_rows_own(n, block_size):
    # Rows repeating a factor's value must not share one mutable array.
    leaf = Param(a=np.arange(2 * n).reshape(n, 2))
    space = leaf * Param(b=list(range(20)))
    for iterated in (leaf, space):
        rows = list(iterated.iterate(block_size=block_size))
        for row in rows:
            row["a"][...] = -1
        assert leaf.to_arrays()["a"].min() >= 0
        assert all((row["a"] == -1).all() for row in rows)
    built = space.build()["a"]
    built[0][...] = -2
    # Row 1 repeats row 0's value of `a`.
    assert (built[1] >= 0).all()
    assert space.to_arrays()["a"].min() >= 0
