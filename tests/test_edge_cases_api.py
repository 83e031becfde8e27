"""Edge cases of the Python API found by trying to break it (one test per bug).

Each test names the behaviour a user relies on; all of them failed before the
fix they guard.
"""

from __future__ import annotations

import os
import pickle
import threading

import numpy as np
import pytest

from psyrun import _kernels
from psyrun.mapper import map_pspace, map_pspace_hdd_backed
from psyrun.pspace import MAX_ROWS, Param, missing
from psyrun.store import get_store
from psyrun.store.columns import merge_chunks, normalize

STORES = [".pkl", ".npz", ".h5", ".zarr"]


def _store_or_skip(ext):
    try:
        return get_store(ext)
    except ImportError as exc:  # pragma: no cover - depends on the installation
        pytest.skip(str(exc))


# -- parameters given as lists or tuples match the arrays a store returns ------


@pytest.mark.parametrize("ext", STORES)
def test_resume_with_list_valued_parameter_evaluates_nothing_twice(tmp_path, ext):
    _store_or_skip(ext)
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


def test_kernels_hash_and_equality_of_array_like_lists_agree():
    lists = np.empty(3, dtype=object)
    lists[:] = [[1, 2], (1.0, 2.0), [np.nan, 3]]
    arrays = np.array([[1, 2], [1, 2], [np.nan, 3]])
    assert np.array_equal(_kernels.hash_column(lists), _kernels.hash_column(arrays))
    assert _kernels.values_equal(lists, arrays).all()


# -- spaces too large to number ----------------------------------------------


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


# -- stores: a column given as one string --------------------------------------


@pytest.mark.parametrize("ext", STORES)
def test_store_refuses_a_string_as_a_column(tmp_path, ext):
    store = _store_or_skip(ext)
    with pytest.raises(TypeError, match="'a' must be a list or array"):
        store.save(tmp_path / f"x{ext}", {"a": "abc"})
    with pytest.raises(TypeError, match="'a' must be a list or array"):
        normalize({"a": {"k": 1}})


# -- stores: chunks without rows -----------------------------------------------


@pytest.mark.parametrize("ext", STORES)
@pytest.mark.parametrize("empty", [{}, {"a": []}], ids=["no-columns", "zero-rows"])
def test_appending_zero_rows_leaves_the_file_as_it_was(tmp_path, ext, empty):
    store = _store_or_skip(ext)
    filename = os.fspath(tmp_path / f"x{ext}")
    store.save(filename, {"a": [1, 2], "s": ["x", "yy"]})
    store.append(filename, empty)
    data = store.load(filename)
    assert data["a"].dtype.kind == "i"
    assert data["a"].tolist() == [1, 2]
    assert data["s"].tolist() == ["x", "yy"]
    assert store.count_rows(filename) == 2


@pytest.mark.parametrize("ext", STORES)
@pytest.mark.parametrize("first", [{}, {"a": []}], ids=["no-columns", "zero-rows"])
def test_first_rows_after_an_empty_file_keep_their_type(tmp_path, ext, first):
    store = _store_or_skip(ext)
    filename = os.fspath(tmp_path / f"x{ext}")
    store.append(filename, first)
    store.append(filename, {"a": [1, 2]})
    store.append(filename, {"a": [3]})
    data = store.load(filename)
    assert data["a"].dtype.kind == "i"
    assert data["a"].tolist() == [1, 2, 3]
    assert type(store.count_rows(filename)) is int


def test_merge_chunks_ignores_the_dtype_and_shape_of_chunks_without_rows():
    merged = merge_chunks(
        [
            {"a": np.array([1, 2]), "x": np.zeros((2, 2), dtype=int)},
            {"a": np.empty(0), "x": np.empty((0, 5)), "new": np.empty(0, dtype="U1")},
        ]
    )
    assert merged["a"].dtype.kind == "i"
    assert merged["x"].shape == (2, 2)
    assert merged["x"].dtype.kind == "i"
    assert merged["new"].tolist() == ["", ""]


# -- stores: a failed append must not damage the file ---------------------------


def test_npz_append_of_unpicklable_value_leaves_file_readable(tmp_path):
    store = get_store(".npz")
    filename = os.fspath(tmp_path / "x.npz")
    store.save(filename, {"a": [1, 2, 3]})
    lock = threading.Lock()
    with pytest.raises(TypeError, match="pickle"):
        store.append(filename, {"a": [lock]})
    with pytest.raises(TypeError, match="pickle"):
        store.save(filename, {"a": [lock]})
    assert store.load(filename)["a"].tolist() == [1, 2, 3]
    assert sorted(os.listdir(tmp_path)) == ["x.npz"]  # no temporary file left
    store.append(filename, {"a": [4]})
    assert store.load(filename)["a"].tolist() == [1, 2, 3, 4]


# -- mapper: exclude given as one string ---------------------------------------


def test_exclude_given_as_one_string_names_one_key():
    space = Param(ab=[1, 2], a=[3, 4])
    result = map_pspace(lambda ab, a: {"b": ab + a}, space, exclude="ab")
    assert result == {"a": [3, 4], "b": [4, 6]}
    with pytest.warns(UserWarning, match="neither parameters nor outputs"):
        map_pspace(lambda ab, a: {"b": 1}, space, exclude="xy")


# -- missing(): a subtrahend column that is not a sequence ----------------------


@pytest.mark.parametrize("column", [1, "ab"], ids=["int", "str"])
def test_missing_refuses_a_subtrahend_column_that_is_not_a_sequence(column):
    # A str used to be split into characters; an int failed inside len().
    with pytest.raises(TypeError, match="column 'a' must be a sequence of row values"):
        missing(Param(a=["a", "b"]), {"a": column})


def test_npz_refuses_an_empty_column_name_before_writing(tmp_path):
    # Saving used to work, and every later append failed inside NumPy.
    store = get_store(".npz")
    filename = os.fspath(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="column named '': the empty name"):
        store.save(filename, {"": [1], "a": [2]})
    assert os.listdir(tmp_path) == []
    store.save(filename, {"a b": [1], "__x": ["ü"]})
    store.append(filename, {"a b": [2], "__x": ["üü"]})
    assert store.load(filename)["__x"].tolist() == ["ü", "üü"]


@pytest.mark.parametrize("content", [b"garbage", pickle.dumps({"a": [1, 2]})])
def test_npz_store_refuses_a_file_that_is_not_an_npz(tmp_path, content):
    from psyrun.store import NpzStore

    path = tmp_path / "results.npz"
    path.write_bytes(content)
    store = NpzStore()
    with pytest.raises(ValueError, match=r"is not an \.npz file"):
        store.load(str(path))
    with pytest.raises(ValueError, match=r"is not an \.npz file"):
        store.count_rows(str(path))
    with pytest.raises(ValueError, match=r"is not an \.npz file"):
        store.append(str(path), {"a": [3]})
    # Nothing was changed: the misnamed file keeps its bytes.
    assert path.read_bytes() == content
