"""Store behaviour at the edges, found by trying to break the stores (every built-in store).

A column given as one string, chunks without rows, failed appends that must
not damage the file, and files that are not what their extension says. The
shared contract of every store is :mod:`psyrun.store.testing`; these are the
regression tests that came on top of it.
"""

from __future__ import annotations

import os
import pickle
import threading

import numpy as np
import pytest
from store_helpers import STORE_EXTS, store_or_skip

from psyrun.store import get_store
from psyrun.store.columns import merge_chunks, normalize

STORES = STORE_EXTS


@pytest.mark.parametrize("ext", STORES)
def test_store_refuses_a_string_as_a_column(tmp_path, ext):
    store = store_or_skip(ext)
    with pytest.raises(TypeError, match="'a' must be a list or array"):
        store.save(tmp_path / f"x{ext}", {"a": "abc"})
    with pytest.raises(TypeError, match="'a' must be a list or array"):
        normalize({"a": {"k": 1}})


@pytest.mark.parametrize("ext", STORES)
@pytest.mark.parametrize("empty", [{}, {"a": []}], ids=["no-columns", "zero-rows"])
def test_appending_zero_rows_leaves_the_file_as_it_was(tmp_path, ext, empty):
    store = store_or_skip(ext)
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
    store = store_or_skip(ext)
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
