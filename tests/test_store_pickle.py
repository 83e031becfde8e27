"""PickleStore specifics: plain-pickle compatibility, in-place appends, crash safety."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from psyrun.store import PickleStore
from psyrun.store.testing import assert_columns_equal


@pytest.fixture
def store():
    return PickleStore()


@pytest.fixture
def filename(tmp_path):
    return str(tmp_path / "result.pkl")


def test_finished_file_is_a_plain_pickled_dict(store, filename):
    store.append(filename, {"a": [1.0, 2.0], "s": ["x", "y"], "o": [None, {"k": 1}]})
    store.append(filename, {"a": [3.0], "s": ["z"], "o": [{"k": 2}]})
    with open(filename, "rb") as f:
        raw = pickle.load(f)
    assert raw == {"a": [1.0, 2.0, 3.0], "s": ["x", "y", "z"], "o": [None, {"k": 1}, {"k": 2}]}


@pytest.mark.parametrize(
    "legacy",
    [
        {"a": [1, 2], "b": [0.5, 1.5]},  # psyrun 0.8: dict of lists
        {"a": np.array([1, 2]), "b": np.array([0.5, 1.5])},  # ... or of arrays
    ],
)
def test_psyrun_08_files_load_and_append(store, filename, legacy):
    with open(filename, "wb") as f:
        pickle.dump(legacy, f)
    assert_columns_equal(store.load(filename), {"a": [1, 2], "b": [0.5, 1.5]})
    assert store.count_rows(filename) == 2
    store.append(filename, {"a": [3], "b": [2.5]})
    store.append(filename, {"a": [4], "b": [3.5]})
    assert_columns_equal(store.load(filename), {"a": [1, 2, 3, 4], "b": [0.5, 1.5, 2.5, 3.5]})
    with open(filename, "rb") as f:
        assert pickle.load(f) == {"a": [1, 2, 3, 4], "b": [0.5, 1.5, 2.5, 3.5]}


def test_append_writes_only_the_new_rows(store, filename):
    store.append(filename, {"a": np.arange(10_000.0)})
    with open(filename, "rb") as f:
        before = f.read()
    size_before = len(before)
    store.append(filename, {"a": [1.5]})
    with open(filename, "rb") as f:
        after = f.read()
    # the old opcodes are untouched up to the old STOP, and the file grew by a little
    stop = before.rindex(pickle.STOP, 0, size_before - 20)
    assert after[:stop] == before[:stop]
    assert len(after) - size_before < 200
    assert store.load(filename)["a"][-2:].tolist() == [9999.0, 1.5]


def test_crash_while_writing_an_append_keeps_old_rows(store, filename):
    store.append(filename, {"a": [1.0, 2.0]})
    with open(filename, "ab") as f:
        f.write(b"\x00garbage from an interrupted append")
    assert_columns_equal(store.load(filename), {"a": [1.0, 2.0]})
    assert store.count_rows(filename) == 2
    store.append(filename, {"a": [3.0]})
    assert_columns_equal(store.load(filename), {"a": [1.0, 2.0, 3.0]})


def test_crash_before_commit_byte_keeps_old_rows(store, filename):
    store.append(filename, {"a": [1.0, 2.0]})
    with open(filename, "rb") as f:
        old_stop = f.read().rindex(pickle.STOP, 0, os.path.getsize(filename) - 20)
    store.append(filename, {"a": [3.0]})
    # undo only the final one-byte commit: the new section and trailer are on disk
    with open(filename, "r+b") as f:
        f.seek(old_stop)
        f.write(pickle.STOP)
    assert_columns_equal(store.load(filename), {"a": [1.0, 2.0]})
    assert store.count_rows(filename) == 2
    store.append(filename, {"a": [4.0]})
    assert_columns_equal(store.load(filename), {"a": [1.0, 2.0, 4.0]})


def test_non_dict_pickle_is_rejected_clearly(store, filename):
    with open(filename, "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match="pickled dict"):
        store.load(filename)
