"""Unit tests of the lazy parameter-space algebra (psyrun.pspace)."""

from __future__ import annotations

import io
import math
import pickle
import subprocess
import sys
from pprint import pprint

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import psyrun
from psyrun import _kernels
from psyrun.pspace import (
    MAX_ROWS,
    AmbiguousOperationError,
    Difference,
    Param,
    ParameterSpace,
    Product,
    RowView,
    Sum,
    missing,
)


def pprinted(value) -> str:
    out = io.StringIO()
    pprint(value, stream=out)
    return out.getvalue()


def big_product():
    """Six 100-value factors: 10**12 rows."""
    space = Param(a=np.arange(100))
    for key in "bcdef":
        space = space * Param(**{key: np.arange(100) * 10})
    return space


# ---------------------------------------------------------------------------
# The examples of "Constructing parameter spaces" in the user guide


def test_guide_param_build():
    pspace = Param(a=[1, 2, 3], b=[4, 5, 6], c=7)
    assert pprinted(pspace.build()) == "{'a': [1, 2, 3], 'b': [4, 5, 6], 'c': [7, 7, 7]}\n"


def test_guide_product():
    pspace = Param(a=[1, 2, 3], b=[4, 5, 6]) * Param(c=[7, 8])
    assert pprinted(pspace.build()) == (
        "{'a': [1, 1, 2, 2, 3, 3], 'b': [4, 4, 5, 5, 6, 6], 'c': [7, 8, 7, 8, 7, 8]}\n"
    )


def test_guide_sum_fills_nan_and_keeps_ints():
    pspace = Param(a=[1, 2]) + Param(a=[2, 3], b=[4, 4])
    built = pspace.build()
    assert pprinted(built) == "{'a': [1, 2, 2, 3], 'b': [nan, nan, 4, 4]}\n"
    assert [type(v) for v in built["b"]] == [float, float, int, int]


def test_guide_difference():
    pspace = Param(a=[1, 2, 3], b=[1, 2, 3]) - Param(a=[2])
    assert pprinted(pspace.build()) == "{'a': [1, 3], 'b': [1, 3]}\n"


def test_guide_difference_with_extra_key_raises():
    with pytest.raises(AmbiguousOperationError) as info:
        Param(a=[1, 2, 3]) - Param(a=[2], c=[4])
    assert str(info.value) == "Key `c` not existent in minuend."
    assert type(info.value).__module__ + "." + type(info.value).__name__ == (
        "psyrun.pspace.AmbiguousOperationError"
    )


def test_guide_missing():
    pspace = missing(Param(a=[1, 2, 3]), Param(a=[2], c=[4]))
    assert pprinted(pspace.build()) == "{'a': [1, 3]}\n"


def test_guide_iterate():
    pspace = Param(a=[1, 2]) * Param(b=[3, 4])
    out = io.StringIO()
    for p in pspace.iterate():
        pprint(p, stream=out)
    assert out.getvalue() == (
        "{'a': 1, 'b': 3}\n{'a': 1, 'b': 4}\n{'a': 2, 'b': 3}\n{'a': 2, 'b': 4}\n"
    )


def test_public_names_import_from_package():
    assert psyrun.Param is Param
    assert psyrun.missing is missing
    assert psyrun.AmbiguousOperationError is AmbiguousOperationError


# ---------------------------------------------------------------------------
# Param


def test_scalars_broadcast_including_strings_and_bytes():
    p = Param(a=[1, 2], s="xy", b=b"z", f=0.5)
    assert p.build() == {"a": [1, 2], "s": ["xy", "xy"], "b": [b"z", b"z"], "f": [0.5, 0.5]}
    assert len(p) == 2


def test_only_scalars_give_one_row():
    p = Param(a=1, s="text")
    assert len(p) == 1
    assert p.build() == {"a": [1], "s": ["text"]}


def test_empty_param_has_no_keys_and_no_rows():
    p = Param()
    assert p.keys() == []
    assert len(p) == 0
    assert p.build() == {}
    assert list(p.iterate()) == []


def test_empty_sequence_gives_zero_rows_with_key():
    p = Param(x=[])
    assert len(p) == 0
    assert p.build() == {"x": []}


def test_unequal_lengths_name_keys_and_lengths():
    with pytest.raises(ValueError, match="unequal lengths") as info:
        Param(a=[1, 2, 3], b=[1, 2])
    message = str(info.value)
    assert "'a' has 3" in message
    assert "'b' has 2" in message


def test_column_types():
    p = Param(i=[1, 2], f=[1.5, 2.0], b=[True, False], s=["x", "y"], o=[None, (1, 2)])
    arrays = p.to_arrays()
    assert arrays["i"].dtype == np.int64
    assert arrays["f"].dtype == np.float64
    assert arrays["b"].dtype == bool
    assert arrays["s"].dtype == object
    assert all(type(v) is str for v in arrays["s"])
    assert arrays["o"].dtype == object
    assert p.build()["o"] == [None, (1, 2)]


def test_mixed_numbers_keep_their_types():
    built = Param(a=[1, 2.5, True]).build()
    assert built == {"a": [1, 2.5, True]}
    assert [type(v) for v in built["a"]] == [int, float, bool]


def test_huge_ints_go_to_an_object_column():
    assert Param(a=[2**70, 1]).build() == {"a": [2**70, 1]}


def test_array_entries_give_nd_column_and_ragged_ones_an_object_column():
    p = Param(w=[np.zeros(3), np.ones(3)])
    assert p.to_arrays()["w"].shape == (2, 3)
    np.testing.assert_array_equal(p[1]["w"], np.ones(3))
    ragged = Param(w=[np.zeros(2), np.ones(3)])
    column = ragged.to_arrays()["w"]
    assert column.dtype == object
    assert column.shape == (2,)


def test_numpy_inputs_become_plain_python_values():
    p = Param(a=np.arange(3), c=np.float64(0.5), s=np.array(["u", "v", "w"]))
    row = p[1]
    assert row == {"a": 1, "c": 0.5, "s": "v"}
    assert [type(v) for v in row.values()] == [int, float, str]
    assert all(type(v) is int for v in p.build()["a"])
    assert all(type(r["a"]) is int for r in p.iterate())


def test_param_copies_caller_arrays():
    values = np.arange(3)
    p = Param(a=values)
    values[0] = 99
    assert p.build() == {"a": [0, 1, 2]}


def test_iterables_become_columns():
    assert Param(a=range(3), b=(x * 2 for x in range(3))).build() == {
        "a": [0, 1, 2],
        "b": [0, 2, 4],
    }


# ---------------------------------------------------------------------------
# Product


def test_product_shared_key_raises_naming_the_key():
    with pytest.raises(AmbiguousOperationError, match="`a`"):
        Param(a=[1], b=[2]) * Param(a=[3])


def test_empty_param_is_identity_of_product():
    p = Param(a=[1, 2])
    assert (Param() * p).build() == p.build()
    assert (p * Param()).build() == p.build()
    assert len(Param() * p * Param()) == 2
    assert (Param() * Param()).keys() == []


def test_product_is_flat_and_left_varies_slowest():
    p = Param(a=[1, 2]) * (Param(b=[3, 4]) * Param(c=[5, 6]))
    assert isinstance(p, Product)
    assert len(p._factors) == 3
    assert [tuple(r.values()) for r in p.iterate()] == [
        (a, b, c) for a in (1, 2) for b in (3, 4) for c in (5, 6)
    ]


def test_product_with_empty_factor_has_no_rows():
    p = Param(a=[1, 2]) * Param(b=[])
    assert len(p) == 0
    assert p.build() == {"a": [], "b": []}


def test_product_range_matches_take_everywhere():
    p = Param(a=[1, 2, 3]) * Param(b=["x", "y"], c=[0.5, 1.5]) * Param(d=[7, 8, 9, 10])
    everything = p.take(np.arange(len(p)))
    for start in range(len(p)):
        for stop in (start, start + 1, start + 5, len(p)):
            got = p.to_arrays(start, stop)
            for key in p.keys():
                assert got[key].tolist() == everything[key][start:stop].tolist()


def test_large_product_to_arrays_equals_repeat_tile():
    a, b, c = np.arange(50), np.arange(40) * 2.5, np.arange(30) - 7
    p = Param(a=a) * Param(b=b) * Param(c=c)
    got = p.to_arrays()
    np.testing.assert_array_equal(got["a"], np.repeat(a, 1200))
    np.testing.assert_array_equal(got["b"], np.tile(np.repeat(b, 30), 50))
    np.testing.assert_array_equal(got["c"], np.tile(c, 2000))


# ---------------------------------------------------------------------------
# Sum


def test_sum_keys_are_union_left_first():
    p = Param(a=[1], b=[2]) + Param(c=[3], a=[4])
    assert p.keys() == ["a", "b", "c"]
    assert isinstance(p, Sum)


def test_sum_float_column_stays_float_with_nan():
    p = Param(a=[1]) + Param(a=[2], b=[0.5])
    column = p.to_arrays()["b"]
    assert column.dtype == np.float64
    assert math.isnan(column[0])
    assert column[1] == 0.5
    # The same dtype for any row range, so chunks written to a store agree.
    assert p.to_arrays(0, 1)["b"].dtype == np.float64


def test_sum_int_column_becomes_object_for_any_range():
    p = Param(a=[1]) + Param(a=[2], b=[4])
    assert p.to_arrays()["b"].dtype == object
    assert p.to_arrays(0, 1)["b"].dtype == object
    assert p.to_arrays(1, 2)["b"].tolist() == [4]
    assert type(p[1]["b"]) is int
    assert math.isnan(p[0]["b"])


def test_sum_mixed_int_and_float_keeps_types():
    built = (Param(a=[1, 2]) + Param(a=[2.5])).build()
    assert built == {"a": [1, 2, 2.5]}
    assert [type(v) for v in built["a"]] == [int, int, float]


def test_sum_nd_float_column_gets_nan_rows():
    p = Param(a=[1]) + Param(a=[2], w=[np.ones(2)])
    column = p.to_arrays()["w"]
    assert column.shape == (2, 2)
    assert np.isnan(column[0]).all()


def test_sum_is_flat_and_takes_rows_in_any_order():
    p = Param(a=[1, 2]) + Param(a=[3]) + Param(a=[4, 5], b=["x", "y"])
    assert len(p._parts) == 3
    rows = p.take([4, 0, 2, 3])
    assert rows["a"].tolist() == [5, 1, 3, 4]
    b = rows["b"].tolist()
    assert b[0] == "y"
    assert b[3] == "x"
    assert math.isnan(b[1])


def test_empty_param_in_sum_adds_nothing():
    assert (Param() + Param(a=[1])).build() == {"a": [1]}


# ---------------------------------------------------------------------------
# Difference and missing()


def test_difference_matches_whole_rows():
    # psyrun 0.8 matched each key separately and dropped (1, 4) and (2, 3).
    space = Param(a=[1, 2]) * Param(b=[3, 4])
    done = Param(a=[1, 2], b=[3, 4])
    assert missing(space, done).build() == {"a": [1, 2], "b": [4, 3]}
    assert (space - done).build() == {"a": [1, 2], "b": [4, 3]}


def test_difference_numbers_compare_as_python_does():
    space = Param(a=[1, 2, 3, 0])
    assert (space - Param(a=[1.0, True, 3.5, -0.0])).build() == {"a": [2, 3]}


def test_difference_nan_matches_nan():
    space = Param(a=[1.0, math.nan, 2.0])
    assert (space - Param(a=[float("nan")])).build() == {"a": [1.0, 2.0]}
    mixed = Param(a=[1, 2]) + Param(a=[3], b=[4])  # b is NaN in the first rows
    assert (mixed - Param(a=[1], b=[math.nan])).build()["a"] == [2, 3]


def test_difference_strings_only_match_strings():
    space = Param(a=["1", 1, "x"])
    assert (space - Param(a=[1])).build() == {"a": ["1", "x"]}
    assert (space - Param(a=["1"])).build() == {"a": [1, "x"]}
    assert (Param(a=["x", "y"]) - Param(a=np.array(["y"]))).build() == {"a": ["x"]}


def test_difference_arrays_match_by_content():
    space = Param(w=[np.array([1, 2]), np.array([3, 4]), np.array([1, 2, 3])])
    result = space - Param(w=[np.array([1.0, 2.0])])
    assert [w.tolist() for w in result.build()["w"]] == [[3, 4], [1, 2, 3]]
    nd = Param(w=[np.zeros(2), np.ones(2)])
    assert len(nd - Param(w=[np.ones(2)])) == 1
    assert len(nd - Param(w=[np.ones(3)])) == 2


def test_difference_object_values():
    space = Param(o=[None, (1, 2), "s", [1, 2]])
    assert (space - Param(o=[(1, 2), [1, 2]])).build() == {"o": [None, "s"]}


def test_difference_drops_every_duplicate():
    assert (Param(a=[1, 2, 1, 1]) - Param(a=[1, 1])).build() == {"a": [2]}


def test_difference_with_empty_or_keyless_subtrahend():
    assert (Param(a=[1, 2]) - Param()).build() == {"a": [1, 2]}
    assert (Param(a=[1, 2]) - Param(a=[])).build() == {"a": [1, 2]}


def test_missing_refuses_a_subtrahend_without_a_key_of_the_minuend():
    # psyrun 0.8: no additional keys in the minuend. Matching on the shared key
    # alone would count (1, 3) and (1, 4) as done.
    space = Param(a=[1, 2]) * Param(b=[3, 4])
    with pytest.raises(AmbiguousOperationError, match=r"lacks the key.*'b'"):
        missing(space, Param(a=[1], y=[0.5]))
    with pytest.raises(AmbiguousOperationError, match="'a'"):
        missing(Param(a=[1, 2]), {"z": [1]})


def test_missing_with_an_empty_subtrahend_keeps_every_row_whatever_its_keys():
    assert len(missing(Param(a=[1, 2]), {"z": []})) == 2
    assert len(missing(Param(a=[1, 2]) * Param(b=[3, 4]), {"a": [], "y": []})) == 4
    assert len(missing(Param(a=[1, 2]), {})) == 2


def test_missing_accepts_store_like_mappings():
    space = Param(a=[1, 2, 3]) * Param(b=["x", "y"]) + Param(a=[4])
    results = {
        "a": np.array([1, 2, 4]),
        "b": np.array(["x", "y", ""], dtype=object),
        "y": [0.1, 0.2, 0.3],
    }
    results["b"][2] = math.nan
    left = missing(space, results)
    assert left.build() == {"a": [1, 2, 3, 3], "b": ["y", "x", "x", "y"]}


def test_missing_nan_padded_float_column_from_store():
    space = Param(a=[1, 2]) + Param(a=[3], c=[0.5])
    results = {"a": [1, 3], "c": np.array([math.nan, 0.5]), "out": [1, 1]}
    assert missing(space, results).build()["a"] == [2]


def test_missing_rejects_unequal_columns_and_non_mappings():
    with pytest.raises(ValueError, match="unequal lengths"):
        missing(Param(a=[1]), {"a": [1, 2], "b": [1]})
    with pytest.raises(TypeError, match="mapping"):
        missing(Param(a=[1]), [1, 2])


def test_difference_is_lazy_and_computed_once(monkeypatch):
    calls = []
    original = _kernels.RowTable.contains

    def counting(self, columns):
        calls.append(len(columns[0]))
        return original(self, columns)

    monkeypatch.setattr(_kernels.RowTable, "contains", counting)
    d = Param(a=range(10)) - Param(a=[3])
    assert calls == []
    assert len(d) == 9
    assert d[3] == {"a": 4}
    assert d.build()["a"][:4] == [0, 1, 2, 4]
    assert calls == [10]


@pytest.mark.parametrize("numba", [True, False])
def test_large_difference_both_kernel_paths(monkeypatch, numba):
    if not numba:
        monkeypatch.setenv("PSYRUN_DISABLE_NUMBA", "1")
    space = Param(a=np.arange(300)) * Param(b=np.arange(200) * 0.5)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(space), 5000, replace=False)
    done = space.take(rows)
    done["c"] = np.arange(5000)
    left = missing(space, done)
    assert len(left) == len(space) - 5000
    expected = np.setdiff1d(np.arange(len(space)), rows)
    got = left.to_arrays()
    np.testing.assert_array_equal(got["a"], expected // 200)
    np.testing.assert_array_equal(got["b"], (expected % 200) * 0.5)


def test_difference_of_composite_spaces():
    a = Param(x=[1, 2]) * Param(y=["u", "v"])
    b = (Param(x=[1]) * Param(y=["v"])) + Param(x=[2], y=["u"])
    assert (a - b).build() == {"x": [1, 2], "y": ["u", "v"]}
    assert isinstance(a - b, Difference)


# ---------------------------------------------------------------------------
# Access: p[i], slices, take, to_arrays, iterate, build


def test_getitem_int_negative_and_out_of_range():
    p = Param(a=[1, 2]) * Param(b=[3, 4])
    assert p[0] == {"a": 1, "b": 3}
    assert p[-1] == {"a": 2, "b": 4}
    assert p[np.int64(2)] == {"a": 2, "b": 3}
    with pytest.raises(IndexError, match="out of range"):
        p[4]
    with pytest.raises(IndexError):
        p[-5]
    with pytest.raises(TypeError, match="int or slice"):
        p["a"]


def test_slices_are_lazy_views():
    p = big_product()
    view = p[10:20:3]
    assert isinstance(view, RowView)
    assert len(view) == 4
    assert view[1] == p[13]
    assert view.build()["f"] == [p[i]["f"] for i in range(10, 20, 3)]
    tail = p[-3:]
    assert len(tail) == 3
    assert tail[2] == p[len(p) - 1]
    nested = p[100:200][10:20:2]
    assert isinstance(nested._base, Product)
    assert nested.build() == p[110:120:2].build()
    backwards = Param(a=[1, 2, 3, 4])[::-1]
    assert backwards.build() == {"a": [4, 3, 2, 1]}


def test_take_negative_and_out_of_range():
    p = Param(a=[10, 20, 30])
    assert p.take([-1, 0])["a"].tolist() == [30, 10]
    with pytest.raises(IndexError, match="out of range"):
        p.take([3])
    with pytest.raises(TypeError, match="integers"):
        p.take([0.5])
    assert p.take([])["a"].tolist() == []


def test_to_arrays_clips_like_slices():
    p = Param(a=[1, 2, 3])
    assert p.to_arrays(1)["a"].tolist() == [2, 3]
    assert p.to_arrays(-2, 10)["a"].tolist() == [2, 3]
    assert p.to_arrays(2, 1)["a"].tolist() == []


def test_to_arrays_returns_fresh_arrays():
    p = Param(a=[1, 2, 3])
    p.to_arrays()["a"][0] = 99
    assert p[0] == {"a": 1}


def test_iterate_block_sizes_agree():
    p = Param(a=range(7)) * Param(b=["x", "y", "z"]) + Param(a=[100])
    expected = [p[i] for i in range(len(p))]
    for block_size in (1, 2, 5, 100):
        got = list(p.iterate(block_size=block_size))
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.keys() == e.keys()
            for k in g:
                assert g[k] == e[k] or (g[k] != g[k] and e[k] != e[k])
    with pytest.raises(ValueError, match="block_size"):
        p.iterate(block_size=0)


@pytest.mark.parametrize("n_keys", [1, 2, 3, 4, 5, 6, 7, 9])
def test_iterate_any_number_of_keys(n_keys):
    space = Param(**{f"k{i}": [i, i + 1] for i in range(n_keys)})
    rows = list(space.iterate())
    assert rows == [{f"k{i}": i for i in range(n_keys)}, {f"k{i}": i + 1 for i in range(n_keys)}]
    assert list(space) == rows


def test_build_gives_plain_python_values():
    built = (Param(a=np.arange(2)) * Param(f=np.array([0.5]), s=np.array(["q"]))).build()
    assert built == {"a": [0, 1], "f": [0.5, 0.5], "s": ["q", "q"]}
    assert {type(v) for values in built.values() for v in values} == {int, float, str}


# ---------------------------------------------------------------------------
# sample()


def test_sample_distinct_rows_reproducible():
    p = big_product()
    s1 = p.sample(50, seed=3)
    s2 = p.sample(50, seed=3)
    assert len(s1) == 50
    assert s1.build() == s2.build()
    rows = [tuple(r.values()) for r in s1.iterate()]
    assert len(set(rows)) == 50
    assert s1[0] == p[int(s1._rows[0])]
    assert p.sample(50, seed=4).build() != s1.build()


def test_sample_whole_space_and_errors():
    p = Param(a=range(5))
    assert sorted(p.sample(5).build()["a"]) == [0, 1, 2, 3, 4]
    assert len(p.sample(0)) == 0
    with pytest.raises(ValueError, match="cannot sample 6"):
        p.sample(6)


def test_sample_is_roughly_uniform():
    p = Param(a=range(10))
    counts = np.zeros(10)
    for seed in range(400):
        counts[p.sample(3, seed=seed).build()["a"]] += 1
    # 120 expected per value; 4 standard deviations is about +-40.
    assert counts.min() > 75
    assert counts.max() < 165


# ---------------------------------------------------------------------------
# Pickling and display


def test_huge_product_pickles_small_and_gives_same_rows():
    p = big_product()
    data = pickle.dumps(p)
    assert len(data) < 8 * 1024
    q = pickle.loads(data)
    assert len(q) == 10**12
    for i in (0, 1, 123_456_789_012, 10**12 - 1):
        assert q[i] == p[i]


def test_difference_pickles_without_its_cache():
    d = Param(a=range(1000)) - Param(a=range(500))
    assert len(d) == 500
    data = pickle.dumps(d)
    assert b"_cache_survivors" not in data
    q = pickle.loads(data)
    assert q.build() == d.build()


def test_every_node_pickles():
    spaces = [
        Param(a=[1, 2], s="x") + Param(b=[0.5]),
        (Param(a=[1, 2]) * Param(b=["u", "v"]))[1:3],
        missing(Param(a=range(10)), {"a": [1, 2], "z": [0, 0]}),
        big_product().sample(5, seed=1),
    ]
    for space in spaces:
        q = pickle.loads(pickle.dumps(space))
        assert q.keys() == space.keys()
        assert pprinted(q.build()) == pprinted(space.build())


def test_str_is_short_and_does_not_expand():
    assert str(Param(a=[1, 2], c=7)) == "Param(a=[1, 2], c=7)"
    text = str(big_product())
    assert "Param(a=<100 int64>)" in text
    assert len(text) < 300
    assert str(Param(a=[1]) + Param(b=[2])) == "(Param(a=[1]) + Param(b=[2]))"
    assert str(Param(a=[1, 2]) - Param(a=[1])) == "(Param(a=[1, 2]) - Param(a=[1]))"
    assert str(missing(Param(a=[1]), {"a": [1], "y": [2]})).startswith("missing(Param(a=[1]),")
    assert str(Param(a=range(10))[2:8:2]) == "(Param(a=<10 int64>))[2:8:2]"
    assert "sample(3, seed=1)" in str(Param(a=range(10)).sample(3, seed=1))


def test_repr_summarises_large_columns_without_expanding_rows():
    text = repr(big_product())  # 10**12 rows, six 100-value columns
    assert "Param(a=[0, 1, 2," in text
    assert len(text) < 3000
    big = Param(a=np.arange(psyrun.pspace.REPR_MAX_VALUES + 1))
    assert repr(big) == f"Param(a=<{psyrun.pspace.REPR_MAX_VALUES + 1} int64>)"


REPR_SCOPE = {"Param": Param, "missing": missing, "numpy": np}


def same_values(x, y) -> bool:
    """Equal and of the same type, NaN equal to NaN, arrays by dtype and content."""
    if type(x) is not type(y):
        return False
    if isinstance(x, np.ndarray):
        return (
            x.dtype == y.dtype
            and x.shape == y.shape
            and all(same_values(a, b) for a, b in zip(x.tolist(), y.tolist()))
        )
    if isinstance(x, float) and math.isnan(x):
        return math.isnan(y)
    if isinstance(x, complex):
        return same_values(x.real, y.real) and same_values(x.imag, y.imag)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(same_values(a, b) for a, b in zip(x, y))
    return x == y


def assert_repr_round_trips(space) -> None:
    text = repr(space)
    again = eval(text, dict(REPR_SCOPE))
    assert again.keys() == space.keys(), text
    assert len(again) == len(space), text
    got, expected = again.build(), space.build()
    for key in space.keys():
        assert len(got[key]) == len(expected[key])
        for g, e in zip(got[key], expected[key]):
            assert same_values(g, e), (text, key, g, e)
    for key in space.keys():
        # Same column types, so stores write the same files.
        assert again._spec(key).dtype == space._spec(key).dtype, (text, key)


@pytest.mark.parametrize(
    "space",
    [
        Param(**{"b.b": [3, 4]}),
        Param(a=[1, 2]) * Param(**{"b.b": [3, 4]}),
        Param(**{"class": [1, 2], "a b": "x", "1st": [0.5, 1.5], "": [None, "s"]}),
        # A ligature: ``ﬁ=`` in a call would mean ``fi`` (Python normalises names).
        Param(**{"ﬁ": [1]}),  # noqa: PIE804
        Param(self=[1, 2], x=np.arange(2, dtype=np.int32)),
        Param(a=[1.5, math.nan, math.inf, -math.inf], b=[1, "x", None, (1,)]),
        Param(w=[np.zeros(2), np.ones(2)], v=[np.zeros(2), np.ones(3)]),
        Param(s=np.array(["u", "vv"]), t=[b"x", b"y"], c=[1 + 2j, complex(math.nan, 1)]),
        Param(d=np.array(["2020-01-01", "NaT"], dtype="datetime64[D]")),
        Param(e=np.zeros((0, 3))),
        Param(o=[{"k": [1, 2]}, {1, 2}], g=[np.float32(0.5), "x"]),
        (Param(a=[1, 2]) + Param(**{"b.b": [3]})) * Param(c=["u", "v"]),
        Param(a=[1, 2, 3], b=4) - Param(a=[2]),
        (Param(a=[1, 2]) * Param(b=[3, 4]) - Param(a=[1], b=[3])) * Param(c=[0]),
        missing(Param(**{"x.y": [1, 2, 3]}), {"x.y": [2], "out": np.array([0.5])}),
        Param(a=range(10))[2:8:3],
        Param(a=range(10))[::-1],
        Param(a=range(10))[::-3],
        Param(a=range(10)).sample(4, seed=5),
        Param(a=range(10))[1:].sample(4, seed=5),
        Param(a=range(10)).sample(3, seed=np.random.default_rng(1)),
        Param(),
        Param(a=[]),
    ],
    ids=repr,
)
def test_repr_evaluates_back_to_an_equal_space(space):
    assert_repr_round_trips(space)


KEY_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
KEY_NAMES = st.one_of(
    st.sampled_from(["a", "b.b", "class", "lambda", "self", "x y", "1", "", "ﬁ", "_"]), KEY_TEXT
)
VALUES = st.one_of(
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.sampled_from([None, b"x", (1, 2), True]),
)


@st.composite
def leaves(draw, keys):
    n = draw(st.integers(0, 3))
    kind = st.sampled_from(["list", "scalar", "array"])
    columns = {}
    for key in keys:
        how = draw(kind)
        if how == "scalar" and n:
            columns[key] = draw(VALUES.filter(lambda v: not isinstance(v, tuple)))
        elif how == "array":
            dtype = draw(st.sampled_from(["int32", "float64", "bool", "U2", "S1"]))
            shape = (n, draw(st.integers(1, 2))) if draw(st.booleans()) else n
            columns[key] = np.zeros(shape, dtype)
        else:
            columns[key] = draw(st.lists(VALUES, min_size=n, max_size=n))
    return Param(**columns)


@st.composite
def trees(draw, keys, depth=2):
    """A space over exactly `keys`, from leaves joined by *, +, - and views."""
    op = draw(st.sampled_from(["leaf", "product", "sum", "difference", "view"]))
    if depth == 0 or op == "leaf" or (op == "product" and len(keys) < 2):
        return draw(leaves(keys))
    if op == "product":
        cut = draw(st.integers(1, len(keys) - 1))
        return draw(trees(keys[:cut], depth - 1)) * draw(trees(keys[cut:], depth - 1))
    if op == "sum":
        return draw(trees(keys, depth - 1)) + draw(trees(keys, depth - 1))
    base = draw(trees(keys, depth - 1))
    if op == "difference":
        if draw(st.booleans()):
            # missing() matches whole rows: its subtrahend has every key.
            return missing(base, draw(leaves(keys)))
        return base - draw(leaves(keys[: draw(st.integers(1, len(keys)))]))
    if draw(st.booleans()):
        return base.sample(draw(st.integers(0, len(base))), seed=draw(st.integers(0, 9)))
    start, stop = draw(st.integers(-3, 3)), draw(st.integers(-3, 3))
    return base[start : stop : draw(st.sampled_from([1, 2, -1]))]


@settings(max_examples=300, deadline=None)
@given(st.lists(KEY_NAMES, min_size=1, max_size=3, unique=True).flatmap(trees))
def test_repr_of_any_space_evaluates_back_to_an_equal_space(space):
    assert_repr_round_trips(space)


def test_operators_reject_other_types():
    with pytest.raises(TypeError):
        Param(a=[1]) * 2
    with pytest.raises(TypeError):
        Param(a=[1]) + {"a": [1]}
    assert isinstance(Param(a=[1]), ParameterSpace)


def test_import_does_not_load_numba():
    code = "import sys, psyrun.pspace; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_operands_lengths_are_not_computed_when_combining(monkeypatch):
    calls = []
    original = _kernels.RowTable.contains

    def counting(self, columns):
        calls.append(1)
        return original(self, columns)

    monkeypatch.setattr(_kernels.RowTable, "contains", counting)
    d = Param(a=range(5)) - Param(a=[1])
    combined = (d * Param(b=[1, 2])) + d
    assert combined.keys() == ["a", "b"]
    assert calls == []
    assert len(combined) == 12
    assert calls == [1]
    np.testing.assert_array_equal(d.surviving_rows(), [0, 2, 3, 4])


# -- missing(): list values against array rows, subtrahend columns ----------------


def test_missing_matches_list_values_against_array_rows():
    space = Param(a=[[1, 2], [3, 4], (5, 6)])
    done = {"a": np.array([[1.0, 2.0], [5, 6]]), "y": np.zeros(2)}
    assert missing(space, done).build() == {"a": [[3, 4]]}


def test_missing_matches_string_list_values_against_str_array_rows():
    space = Param(a=[["x", "y"], ["z", "w"]])
    assert missing(space, {"a": np.array([["z", "w"]])}).build() == {"a": [["x", "y"]]}


def test_list_values_do_not_match_text_made_from_numbers():
    # np.asarray([1, 'x']) is a str array; [1, 'x'] must still not equal ['1', 'x'].
    space = Param(a=[[1, "x"], ["1", "x"]])
    assert missing(space, Param(a=[["1", "x"]])).build() == {"a": [[1, "x"]]}


@pytest.mark.parametrize("column", [1, "ab"], ids=["int", "str"])
def test_missing_refuses_a_subtrahend_column_that_is_not_a_sequence(column):
    # A str used to be split into characters; an int failed inside len().
    with pytest.raises(TypeError, match="column 'a' must be a sequence of row values"):
        missing(Param(a=["a", "b"]), {"a": column})


# -- spaces too large to number ----------------------------------------------------


def test_product_beyond_int64_rows_raises_a_clear_error():
    factor = np.arange(100_000)
    space = Param(a=factor) * Param(b=factor) * Param(c=factor) * Param(d=factor)
    assert space.keys() == ["a", "b", "c", "d"]  # building it stays cheap
    with pytest.raises(OverflowError, match=r"10\*\*20.*split it"):
        len(space)
    with pytest.raises(OverflowError, match="product"):
        space[0]


def test_sum_beyond_int64_rows_raises_a_clear_error():
    factor = np.arange(1_000_000)
    big = Param(a=factor) * Param(b=factor) * Param(c=factor)  # 10**18 rows: fine
    assert len(big) == 10**18
    assert big[-1] == {"a": 999_999, "b": 999_999, "c": 999_999}
    space = big
    for _ in range(8):
        space = space + big
    assert len(space) == 9 * 10**18 <= MAX_ROWS
    assert space[-1] == big[-1]
    with pytest.raises(OverflowError, match="the sum has 10000000000000000000 rows"):
        len(space + big)


def test_build_of_a_row_range_is_that_slice_of_build():
    p = Param(a=[1, 2, 3]) * Param(b=[0.5, 1.5]) * Param(c=["x", "y", "z", "w"])
    full = p.build()
    for start, stop in [(0, None), (5, 11), (-3, None), (-100, 4), (20, 30), (7, 2), (0, 0)]:
        assert p.build(start, stop) == {k: v[start:stop] for k, v in full.items()}


@pytest.mark.parametrize("block_size", [1, 3, 100])
def test_iterate_decodes_nothing_before_the_first_row(block_size):
    # Not even a factor's length: a difference is computed on first use.
    difference = Param(a=[1, 2, 3]) - Param(a=[2])
    for space in (difference * Param(b=[4, 5]), Param(b=[4, 5]) * difference, difference):
        difference.__dict__.pop("_cache_survivors", None)
        rows = space.iterate(block_size=block_size)
        assert "_cache_survivors" not in difference.__dict__
        assert next(rows) in ({"a": 1, "b": 4}, {"b": 4, "a": 1}, {"a": 1})
        assert "_cache_survivors" in difference.__dict__


def test_iterate_of_a_grid_and_of_blocks_agree():
    # A product of one-key factors is iterated as itertools.product when every
    # factor fits in a block, block by block otherwise: the same rows.
    space = Param(a=[1, 2, 3]) * Param(b=[0.5, float("nan")]) * Param(c=["x", None, 3, 4])
    grid = list(space.iterate())
    for block_size in (1, 2, 3, 5):
        rows = list(space.iterate(block_size=block_size))
        assert [list(r) for r in rows] == [list(r) for r in grid]
        assert [[(type(v), repr(v)) for v in r.values()] for r in rows] == [
            [(type(v), repr(v)) for v in r.values()] for r in grid
        ]
