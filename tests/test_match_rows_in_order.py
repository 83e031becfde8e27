"""match_rows: the in-order path of a finished result agrees with the general one.

A finished task's result holds the space's rows in the space's order, and
``psy status`` / ``psy run -c`` match them without building an index (issue 25,
target 5). These tests compare both paths with a plain-Python oracle of the
matching rules (repeats counted, 1 == 1.0, NaN matches NaN).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from psyrun import Param
from psyrun.results.merge import match_rows


def canonical(value):
    value = float(value)
    return "nan" if math.isnan(value) else value


def oracle(space_rows, stored_rows):
    """RowMatch fields by the rules, one row at a time."""
    space_keys = [tuple(map(canonical, r)) for r in space_rows]
    stored_keys = [tuple(map(canonical, r)) for r in stored_rows]
    in_space, in_store = Counter(space_keys), Counter(stored_keys)
    seen, missing = Counter(), []
    for i, key in enumerate(space_keys):
        if seen[key] >= in_store[key]:
            missing.append(i)
        seen[key] += 1
    seen = Counter()
    used, outside, first = [], [], []
    for key in stored_keys:
        used.append(seen[key] < in_space[key])
        outside.append(in_space[key] == 0)
        first.append(seen[key] == 0)
        seen[key] += 1
    return missing, used, outside, first


values = st.lists(st.sampled_from([0, 1, 2, 2.5, -0.0, math.nan]), min_size=1, max_size=6)


@given(values, values, st.sampled_from(["in order", "as floats", "shuffled", "one changed"]))
def test_match_rows_of_stored_rows_agrees_with_the_rules(a, b, how):
    space = Param(a=a) * Param(b=b)
    cols = space.take(np.arange(len(space)))
    done = {"a": cols["a"].copy(), "b": cols["b"].copy(), "y": np.zeros(len(space))}
    if how == "as floats":
        done = {k: v.astype(float) for k, v in done.items()}
    elif how == "shuffled":
        perm = np.random.default_rng(len(space)).permutation(len(space))
        done = {k: v[perm] for k, v in done.items()}
    elif how == "one changed":
        done["b"] = done["b"].astype(float)
        done["b"][-1] = 99.0
    match = match_rows(space, done)
    space_rows = list(zip(cols["a"].tolist(), cols["b"].tolist()))
    stored_rows = list(zip(done["a"].tolist(), done["b"].tolist()))
    missing, used, outside, first = oracle(space_rows, stored_rows)
    assert match.missing.tolist() == missing
    assert match.used.tolist() == used
    assert match.outside.tolist() == outside
    assert match.first.tolist() == first


def test_a_finished_result_in_order_is_matched_without_an_index(monkeypatch):
    # The in-order path must not build the hash index (that is what it saves).
    import psyrun._kernels as kernels

    def no_index(*args, **kwargs):
        raise AssertionError("the hash index was built for a result in the space's order")

    space = Param(a=np.arange(300)) * Param(b=np.arange(200) * 0.5)
    done = space.take(np.arange(len(space)))
    monkeypatch.setattr(kernels, "HashIndex", no_index)
    match = match_rows(space, done)
    assert len(match.missing) == 0
    assert match.used.all()
    assert match.first.all()
    assert not match.outside.any()


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1, -0.0, 0.0, math.nan, -math.nan, 2**60, 2**60 + 1]),
            st.sampled_from([0.5, 1.0, True, math.nan]),
        ),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from(["float64", "object"]),
)
def test_distinct_rows_never_calls_equal_rows_distinct(rows, kind):
    from psyrun.results.merge import _distinct_rows

    columns = [np.array([r[i] for r in rows], dtype=kind) for i in range(2)]
    truly_distinct = len({tuple(map(canonical, r)) for r in rows}) == len(rows)
    if _distinct_rows(columns):
        assert truly_distinct


def test_distinct_rows_tells_zeros_and_nans_alike():
    from psyrun.results.merge import _distinct_rows

    odd_nan = np.array([0xFFF8000000000001], dtype=np.uint64).view(np.float64)[0]
    assert not _distinct_rows([np.array([0.0, -0.0]), np.array([1.0, 1.0])])
    assert not _distinct_rows([np.array([math.nan, odd_nan]), np.array([1, 1])])
    assert _distinct_rows([np.arange(1000), np.arange(1000) * 0.5])
