import math
import pickle

import pytest

from psyrun import Param, map_pspace, map_pspace_hdd_backed, map_pspace_parallel
from psyrun.mapper import concatenate_results, iter_results
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
