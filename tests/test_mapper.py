import collections
import math
import pickle
import types

import numpy as np
import pytest
from store_helpers import STORE_EXTS, store_or_skip

from psyrun import Param, map_pspace, map_pspace_hdd_backed, map_pspace_parallel
from psyrun.mapper import (
    OutputKeyError,
    block_rows,
    concatenate_results,
    evaluate_block,
    evaluate_rows,
    get_result,
    is_return_type_error,
    iter_results,
)
from psyrun.store import NpzStore, PickleStore
from psyrun.utils.example import square


def basic_math(a, b):
    return {"sum": a + b, "product": a * b}


def test_map_pspace_guide_example():
    result = map_pspace(basic_math, Param(a=[1, 2]) * Param(b=[3, 4]))
    assert result == {
        "a": [1, 1, 2, 2],
        "b": [3, 4, 3, 4],
        "sum": [4, 5, 5, 6],
        "product": [3, 4, 6, 8],
    }
    assert all(type(v) is int for v in result["a"] + result["sum"])


def test_map_pspace_parallel_guide_example():
    assert map_pspace_parallel(square, Param(x=[1, 2, 3])) == {"x": [1, 2, 3], "y": [1, 4, 9]}


def test_map_pspace_parallel_keeps_row_order_over_many_blocks():
    space = Param(x=list(range(1000)))
    result = map_pspace_parallel(square, space, n_jobs=2)
    assert result == map_pspace(square, space)


def test_exclude_drops_keys_and_warns_about_unknown_ones():
    result = map_pspace(basic_math, Param(a=[1], b=[2]), exclude=["product"])
    assert result == {"a": [1], "b": [2], "sum": [3]}
    with pytest.warns(UserWarning, match="prodcut"):
        map_pspace(basic_math, Param(a=[1], b=[2]), exclude=["prodcut"])


def test_non_dict_result_names_the_parameters():
    with pytest.raises(TypeError, match=r"'a': 2"):
        map_pspace(lambda a: {"y": a} if a < 2 else [a], Param(a=[1, 2]))


def test_outputs_missing_in_some_rows_are_nan():
    result = map_pspace(lambda a: {"y": a} if a > 1 else {}, Param(a=[1, 2, 3]))
    assert result["a"] == [1, 2, 3]
    assert math.isnan(result["y"][0])
    assert result["y"][1:] == [2, 3]


def test_iter_results_yields_blocks_covering_the_range():
    blocks = list(iter_results(square, Param(x=list(range(10))), block_size=3, start=2, stop=9))
    assert [len(b["x"]) for b in blocks] == [3, 3, 1]
    assert concatenate_results(blocks) == {
        "x": list(range(2, 9)),
        "y": [x * x for x in range(2, 9)],
    }


def test_concatenate_fills_keys_absent_from_some_blocks():
    merged = concatenate_results([{"a": [1]}, {"a": [2], "b": ["x"]}])
    assert merged["a"] == [1, 2]
    assert math.isnan(merged["b"][0])
    assert merged["b"][1] == "x"


def test_empty_space_maps_to_empty_columns():
    assert map_pspace(square, Param(x=[])) == {"x": []}


@pytest.mark.parametrize("store", [PickleStore(), NpzStore()], ids=["pickle", "npz"])
def test_hdd_backed_resumes_only_missing_rows(tmp_path, store):
    calls = []

    def fn(x):
        calls.append(x)
        return {"y": x * x}

    filename = tmp_path / f"out{store.ext}"
    map_pspace_hdd_backed(fn, Param(x=[1, 2, 3]), filename, store)
    assert sorted(calls) == [1, 2, 3]
    calls.clear()
    data = map_pspace_hdd_backed(fn, Param(x=[1, 2, 3, 4, 5]), filename, store)
    assert sorted(calls) == [4, 5]
    assert sorted(zip(list(data["x"]), list(data["y"]))) == [(x, x * x) for x in range(1, 6)]


def test_hdd_backed_with_a_pool(tmp_path):
    filename = tmp_path / "out.pkl"
    data = map_pspace_hdd_backed(square, Param(x=list(range(50))), filename, pool_size=2)
    assert sorted(data["x"]) == list(range(50))
    with open(filename, "rb") as f:
        assert sorted(pickle.load(f)["y"]) == sorted(x * x for x in range(50))


# -- the row loop: fast path, general path, failures ---------------------------


def reference(fn, space):
    """The columns a naive loop builds: parameters, then outputs, NaN where absent."""
    rows = space.build()
    n = len(next(iter(rows.values()))) if rows else 0
    results = [fn(**{k: rows[k][i] for k in rows}) for i in range(n)]
    out_keys = dict.fromkeys(k for r in results for k in r)
    columns = {k: list(v) for k, v in rows.items()}
    for key in out_keys:
        columns[key] = [r.get(key, math.nan) for r in results]
    return columns


def same(a, b):
    assert list(a) == list(b)
    for key in a:
        assert len(a[key]) == len(b[key]), key
        for x, y in zip(a[key], b[key]):
            assert (x == y) or (isinstance(x, float) and math.isnan(x) and math.isnan(y)), key


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, s: {"y": x * 2, "z": s},
        lambda x, s: {"y": x} if x % 7 else {"y": x, "extra": s},  # keys change mid-block
        lambda x, s: {} if x < 5 else {"y": x},  # starts without outputs
        lambda x, s: {"z": s, "y": x} if x % 2 else {"y": x, "z": s},  # same keys, other order
        lambda x, s: collections.OrderedDict(y=x),  # a dict subclass: the general path
        lambda x, s: types.MappingProxyType({"y": x}),  # a Mapping that is not a dict
        lambda x, s: {1: x, "y": s},  # a non-str key
    ],
    ids=["same-keys", "keys-change", "empty-first", "order", "subclass", "mapping", "int-key"],
)
@pytest.mark.parametrize("block_size", [3, 1024])
def test_row_path_equals_a_naive_loop(fn, block_size):
    space = Param(x=list(range(20))) * Param(s=["a", "b"])
    result = concatenate_results(iter_results(fn, space, block_size=block_size))
    same(result, reference(fn, space))
    assert all(type(v) is int for v in result["x"])


def test_defaultdict_results_are_not_read_through_their_default():
    def fn(x):
        d = collections.defaultdict(lambda: -1)
        d["y" if x else "z"] = x
        return d

    result = map_pspace(fn, Param(x=[1, 0, 2]))
    same(result, {"x": [1, 0, 2], "y": [1, math.nan, 2], "z": [math.nan, 0, math.nan]})


def test_parameter_names_that_are_not_identifiers():
    space = Param(**{"a-b": [1, 2], "class": [3, 4], "fn": [5, 6]})
    result = map_pspace(lambda **kw: {"s": sum(kw.values())}, space)
    assert result == {"a-b": [1, 2], "class": [3, 4], "fn": [5, 6], "s": [9, 12]}


def _reversed_order(b, a, c=5):
    return {"y": (a, b, c)}


def _keyword_only(*, a, b):
    return {"y": (a, b)}


def _first_positional_only(a, /, b):
    return {"y": (a, b)}


def _extra_positional(a, z, b):
    return {"y": (a, b, z)}


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (_reversed_order, [(1, 3, 5), (1, 4, 5), (2, 3, 5), (2, 4, 5)]),
        (lambda a, b: {"y": (a, b)}, [(1, 3), (1, 4), (2, 3), (2, 4)]),
        (_keyword_only, [(1, 3), (1, 4), (2, 3), (2, 4)]),
        (lambda **kw: {"y": (kw["a"], kw["b"])}, [(1, 3), (1, 4), (2, 3), (2, 4)]),
    ],
    ids=["reversed", "same-order", "keyword-only", "var-keyword"],
)
def test_values_reach_the_parameters_of_their_name(fn, expected):
    # Values may be passed by position for speed; they must bind by name.
    result = map_pspace(fn, Param(a=[1, 2]) * Param(b=[3, 4]))
    assert result["y"] == expected


@pytest.mark.parametrize("fn", [_first_positional_only, _extra_positional])
def test_a_call_by_keyword_that_cannot_bind_fails_as_it_would_by_hand(fn):
    # Passing these by position would silently succeed (or bind z to b).
    with pytest.raises(TypeError) as info:
        fn(a=1, b=3)
    with pytest.raises(TypeError) as mapped:
        map_pspace(fn, Param(a=[1, 2]) * Param(b=[3, 4]))
    assert str(mapped.value) == str(info.value)


def test_extra_keyword_arguments_combine_with_positional_values():
    arrays = (Param(b=[1, 2]) * Param(a=[3])).to_arrays()
    result = evaluate_block(_reversed_order, arrays, ["b", "a"], extra={"c": 7})
    assert result["y"] == [(3, 1, 7), (3, 2, 7)]


def test_extra_keyword_arguments_reach_every_call():
    arrays = Param(x=[1, 2, 3]).to_arrays()
    result = evaluate_block(lambda x, k: {"y": x * k}, arrays, ["x"], extra={"k": 10})
    assert result == {"x": [1, 2, 3], "y": [10, 20, 30]}


@pytest.mark.parametrize("bad_rows", [{0}, {3}, {9}, {0, 1, 5, 9}, set(range(10))])
@pytest.mark.parametrize("switch", [False, True], ids=["same-keys", "keys-change"])
def test_each_row_runs_once_and_failing_rows_are_reported(bad_rows, switch):
    calls = []

    def fn(x):
        calls.append(x)
        if x in bad_rows:
            raise RuntimeError(f"bad {x}")
        return {"y": x, "odd": 1} if switch and x == 4 else {"y": x}

    errors = []
    arrays = Param(x=list(range(10))).to_arrays()
    result = evaluate_block(fn, arrays, ["x"], on_error=lambda row, exc: errors.append((row, exc)))
    assert calls == list(range(10))
    assert [row for row, _ in errors] == [{"x": x} for x in sorted(bad_rows)]
    assert all(str(exc) == f"bad {row['x']}" for row, exc in errors)
    kept = [x for x in range(10) if x not in bad_rows]
    assert result["x"] == kept
    if kept:
        assert result["y"] == kept
    if switch and 4 in kept:
        assert [v == 1 for v in result["odd"]] == [x == 4 for x in kept]


def test_without_on_error_the_first_failure_propagates():
    with pytest.raises(ZeroDivisionError):
        evaluate_block(lambda x: {"y": 1 / x}, Param(x=[1, 0, 2]).to_arrays(), ["x"])


def test_a_non_dict_row_is_a_failure_for_on_error():
    errors = []
    result = evaluate_block(
        lambda x: {"y": x} if x != 2 else [x],
        Param(x=[1, 2, 3]).to_arrays(),
        ["x"],
        on_error=lambda row, exc: errors.append((row, exc)),
    )
    assert result == {"x": [1, 3], "y": [1, 3]}
    assert [row for row, _ in errors] == [{"x": 2}]
    # A plain TypeError (as psyrun 0.8 raised), marked as one whose message says it all.
    assert type(errors[0][1]) is TypeError
    assert is_return_type_error(errors[0][1])
    assert "returned list" in str(errors[0][1])


def test_evaluate_rows_and_evaluate_block_agree():
    def fn(x, s):
        if x == 3:
            raise ValueError
        return {"y": f"{s}{x}"} if x % 2 else {"y": "", "w": x}

    arrays = (Param(x=list(range(6))) * Param(s=["p", "q"])).to_arrays()
    errors_a, errors_b = [], []
    columns, rows = block_rows(arrays, ["x", "s"])
    a = evaluate_rows(fn, columns, rows, ("s",), on_error=lambda r, e: errors_a.append(r))
    b = evaluate_block(
        fn, arrays, ["x", "s"], exclude=("s",), on_error=lambda r, e: errors_b.append(r)
    )
    same(a, b)
    assert errors_a == errors_b == [{"x": 3, "s": "p"}, {"x": 3, "s": "q"}]
    assert "s" not in a


def test_array_valued_parameters_arrive_as_rows():
    space = Param(v=[np.zeros(2), np.ones(2)])
    result = map_pspace(lambda v: {"n": float(v.sum()), "shape": v.shape}, space)
    assert result["n"] == [0.0, 2.0]
    assert result["shape"] == [(2,), (2,)]


def test_iter_results_rejects_a_bad_block_size():
    with pytest.raises(ValueError, match="block_size must be at least 1, got 0"):
        list(iter_results(square, Param(x=[1]), block_size=0))


# -- an output named like a parameter ------------------------------------------


def clash_on_odd(x):
    return {"x": 100, "y": x} if x % 2 else {"y": x}


@pytest.mark.parametrize(
    "run",
    [
        lambda fn, sp: map_pspace(fn, sp),
        lambda fn, sp: map_pspace_parallel(fn, sp, n_jobs=2, backend="threading"),
        lambda fn, sp: list(iter_results(fn, sp)),
        lambda fn, sp: evaluate_block(fn, sp.to_arrays(), sp.keys(), on_error=print),
        lambda fn, sp: evaluate_rows(fn, *block_rows(sp.to_arrays(), sp.keys()), on_error=print),
    ],
    ids=["map_pspace", "parallel", "iter_results", "evaluate_block", "evaluate_rows"],
)
@pytest.mark.parametrize("fn", [clash_on_odd, lambda x: {"x": x}], ids=["some-rows", "every-row"])
def test_an_output_named_like_a_parameter_is_an_error(run, fn):
    with pytest.raises(OutputKeyError, match=r"returned 'x', which is also a parameter; rename"):
        run(fn, Param(x=[0, 1, 2, 3]))


def test_output_key_error_is_a_value_error_and_not_swallowed_by_on_error():
    assert issubclass(OutputKeyError, ValueError)
    errors = []
    with pytest.raises(OutputKeyError):
        evaluate_block(
            lambda x: {"x": 1}, Param(x=[1, 2]).to_arrays(), ["x"], on_error=errors.append
        )
    assert errors == []


def test_hdd_backed_refuses_an_output_named_like_a_parameter(tmp_path):
    filename = tmp_path / "out.pkl"
    with pytest.raises(OutputKeyError, match="'x'"):
        map_pspace_hdd_backed(lambda x: {"x": 0}, Param(x=[1, 2]), filename)
    assert not filename.exists()


# -- get_result ----------------------------------------------------------------


def test_get_result_merges_parameters_and_outputs():
    assert get_result(basic_math, {"a": 2, "b": 3}) == {"a": 2, "b": 3, "sum": 5, "product": 6}
    assert get_result(basic_math, {"a": 2, "b": 3}, exclude=["a", "product"]) == {
        "b": 3,
        "sum": 5,
    }
    assert get_result(basic_math, {"a": 2, "b": 3}, exclude="sum") == {
        "a": 2,
        "b": 3,
        "product": 6,
    }


def test_get_result_errors():
    with pytest.raises(TypeError, match=r"returned int for the parameters \{'a': 1\}"):
        get_result(lambda a: a, {"a": 1})
    with pytest.raises(OutputKeyError, match="'a'"):
        get_result(lambda a: {"a": 2}, {"a": 1})


# -- hdd-backed resume with list-valued parameters, every store ---------------------

STORES = STORE_EXTS


@pytest.mark.parametrize("ext", STORES)
def test_resume_with_list_valued_parameter_evaluates_nothing_twice(tmp_path, ext):
    store_or_skip(ext)
    calls = []

    def fn(a, b):
        calls.append((tuple(a), b))
        return {"y": sum(a) + b}

    space = Param(a=[[1, 2], [3, 4]]) * Param(b=[1, 2])
    filename = tmp_path / f"out{ext}"
    map_pspace_hdd_backed(fn, space, filename)
    assert len(calls) == 4
    data = map_pspace_hdd_backed(fn, space, filename)
    # The stored 'a' is a 2-d array; its rows must match the list values.
    assert len(calls) == 4
    assert data["a"].shape == (4, 2)


def test_exclude_given_as_one_string_names_one_key():
    space = Param(ab=[1, 2], a=[3, 4])
    result = map_pspace(lambda ab, a: {"b": ab + a}, space, exclude="ab")
    assert result == {"a": [3, 4], "b": [4, 6]}
    with pytest.warns(UserWarning, match="neither parameters nor outputs"):
        map_pspace(lambda ab, a: {"b": 1}, space, exclude="xy")


def _kinds_space():
    """A product of every kind of column (long runs, NaN, objects, arrays, scalars)."""
    return (
        Param(i=np.arange(3), s="x")
        * (Param(f=[0.5, math.nan]) + Param(f=[2.0]))
        * Param(o=[1, 2.5, "z", None, (1, 2)], v=np.arange(10.0).reshape(5, 2))
        * Param(b=[True, False] * 9)[1:]
    )


def _same(x, y):
    if type(x) is not type(y):
        return False
    if isinstance(x, np.ndarray):
        return x.dtype == y.dtype and np.array_equal(x, y)
    if isinstance(x, float) and math.isnan(x):
        return math.isnan(y)
    return x == y


@pytest.mark.parametrize("block_size", [None, 1, 7, 40, 10**4])
def test_rows_get_the_values_iterate_yields(block_size):
    # map_pspace hands the function (and the result) the very values
    # iterate() and build() give, of the same types, whatever the block size.
    space = _kinds_space()
    seen = []

    def record(**row):
        seen.append(row)
        return {"y": 1}

    result = map_pspace(record, space, block_size=block_size)
    rows = list(space.iterate())
    assert len(seen) == len(rows) == len(space)
    assert all(
        list(g) == list(e) and all(map(_same, g.values(), e.values())) for g, e in zip(seen, rows)
    )
    built = space.build()
    for key in space.keys():
        assert all(map(_same, result[key], built[key]))
    # Rows repeating one array value got arrays of their own.
    seen[0]["v"][...] = -1
    assert seen[1]["v"].min() >= 0
    assert space.to_arrays()["v"].min() >= 0
