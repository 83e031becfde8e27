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
from hypothesis import given
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
