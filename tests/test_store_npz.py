"""NpzStore specifics: plain .npz compatibility and appends that add members."""

from __future__ import annotations

import zipfile

import numpy as np

from psyrun.store import NpzStore
from psyrun.store.testing import assert_columns_equal


def test_saved_file_is_a_plain_npz(tmp_path):
    filename = str(tmp_path / "r.npz")
    NpzStore().save(filename, {"a": [1.0, 2.0], "b": [1, 2]})
    with np.load(filename) as npz:
        assert sorted(npz.files) == ["a", "b"]
        assert npz["a"].tolist() == [1.0, 2.0]


def test_np_savez_files_load_and_append(tmp_path):
    filename = str(tmp_path / "r.npz")
    np.savez(filename, a=np.array([1.0, 2.0]), b=np.array([3, 4]))
    store = NpzStore()
    store.append(filename, {"a": [5.0], "b": [6]})
    assert_columns_equal(store.load(filename), {"a": [1.0, 2.0, 5.0], "b": [3, 4, 6]})


def test_append_adds_members_without_rewriting_old_ones(tmp_path):
    filename = str(tmp_path / "r.npz")
    store = NpzStore()
    store.append(filename, {"a": np.arange(1000.0)})
    with zipfile.ZipFile(filename) as zf:
        first = zf.getinfo("a.npy")
        offset, crc = first.header_offset, first.CRC
    store.append(filename, {"a": [1.5]})
    with zipfile.ZipFile(filename) as zf:
        assert zf.getinfo("a.npy").header_offset == offset
        assert crc == zf.getinfo("a.npy").CRC
        assert len(zf.namelist()) == 2
    assert store.count_rows(filename) == 1001


def test_column_names_that_look_like_chunks_survive(tmp_path):
    filename = str(tmp_path / "r.npz")
    store = NpzStore()
    store.append(filename, {"chunky": [1.0], "chunk1": [2.0]})
    store.append(filename, {"chunky": [3.0], "chunk1": [4.0]})
    assert_columns_equal(store.load(filename), {"chunky": [1.0, 3.0], "chunk1": [2.0, 4.0]})


def test_reserved_column_names_rejected(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="reserved"):
        NpzStore().save(str(tmp_path / "r.npz"), {"chunk000001": [1.0]})
