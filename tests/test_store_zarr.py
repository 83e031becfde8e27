"""ZarrStore specifics: appends commit a row count last, interrupted writes recover."""

from __future__ import annotations

import os

import numpy as np
import pytest

from psyrun.store import ZarrStore
from psyrun.store.testing import assert_columns_equal

zarr = pytest.importorskip("zarr")


@pytest.fixture
def store():
    return ZarrStore()


@pytest.fixture
def filename(tmp_path):
    return str(tmp_path / "r.zarr")


def chunk(start: int, stop: int) -> dict[str, np.ndarray]:
    a = np.arange(start, stop, dtype=float)
    return {"a": a, "b": -a}


def tear_append(filename: str, new: dict[str, np.ndarray], columns: int) -> None:
    """Do what an append killed before its commit did: resize, write some columns."""
    group = zarr.open_group(filename, mode="r+", use_consolidated=False)
    for i, key in enumerate(group.attrs["psyrun_columns"]):
        array = group[f"c{i}"]
        n = array.shape[0]
        array.resize((n + len(new[key]),))
        if i < columns:
            array[n:] = new[key]


def write_old_store(filename: str, data: dict[str, np.ndarray]) -> None:
    """Write a store as psyrun did before row counts and checksums were recorded."""
    group = zarr.open_group(filename, mode="w")
    for i, column in enumerate(data.values()):
        group.create_array(f"c{i}", shape=column.shape, dtype=column.dtype, chunks=(4,))
        group[f"c{i}"][...] = column
    group.attrs["psyrun_columns"] = list(data)


def test_old_store_without_checksums_reads_and_gets_them_on_append(store, filename):
    write_old_store(filename, chunk(0, 10))
    assert_columns_equal(store.load(filename), chunk(0, 10))
    assert store.verify(filename) == 10
    store.append(filename, chunk(10, 12))  # rewritten once, now with a commit record
    assert "psyrun_commit" in zarr.open_group(filename, mode="r").attrs
    assert_columns_equal(store.load(filename), chunk(0, 12))


@pytest.mark.parametrize("columns", [0, 1, 2])
def test_append_killed_before_its_commit_is_ignored_and_overwritten(store, filename, columns):
    store.append(filename, chunk(0, 700))
    store.append(filename, chunk(700, 1000))
    tear_append(filename, {"a": np.full(400, 99.0), "b": np.full(400, 99.0)}, columns)
    assert_columns_equal(store.load(filename), chunk(0, 1000))
    assert store.count_rows(filename) == 1000
    assert_columns_equal(store.load(filename, row=-1), chunk(999, 1000))
    assert_columns_equal(store.load_rows(filename, 990, 2000), chunk(990, 1000))
    store.append(filename, chunk(1000, 1100))
    assert_columns_equal(store.load(filename), chunk(0, 1100))
    assert all(len(a) == 1100 for a in store.load(filename).values())


def test_store_without_a_row_count_loads_its_shortest_column(store, filename):
    # Stores written before the count was recorded have no psyrun_rows attribute
    # (nor a commit record, nor chunk checksums).
    write_old_store(filename, chunk(0, 10))
    tear_append(filename, chunk(10, 15), 2)
    zarr.open_group(filename, mode="r+", use_consolidated=False)["c1"].resize((12,))
    assert "psyrun_rows" not in zarr.open_group(filename, mode="r").attrs
    assert_columns_equal(store.load(filename), chunk(0, 12))
    assert store.count_rows(filename) == 12
    store.append(filename, chunk(12, 20))
    assert_columns_equal(store.load(filename), chunk(0, 20))


def test_rewrite_killed_between_its_renames_is_finished(store, filename):
    # A chunk that adds a key rewrites the store: new directory, then two renames
    # (psyrun.atomic.replace_path: the old one to tmp_name(filename + ".old"),
    # the new one, written as tmp_name(filename), into place).
    store.append(filename, chunk(0, 5))
    parent = os.path.dirname(filename)
    store.save(os.path.join(parent, ".r.tmp4242.zarr"), {**chunk(0, 6), "c": np.arange(6.0)})
    os.replace(filename, os.path.join(parent, ".r.zarr.tmp4242.old"))
    expected = {**chunk(0, 6), "c": np.arange(6.0)}
    assert_columns_equal(store.load(filename), expected)  # read from the new directory
    assert store.count_rows(filename) == 6
    assert not os.path.exists(filename)  # readers leave the repair to the writer
    store.append(filename, {**chunk(6, 7), "c": [6.0]})
    assert_columns_equal(store.load(filename), {**chunk(0, 7), "c": np.arange(7.0)})
    assert sorted(os.listdir(os.path.dirname(filename))) == ["r.zarr"]


def test_rewrite_killed_for_real_between_its_renames(store, filename, monkeypatch):
    import psyrun.atomic

    store.append(filename, chunk(0, 5))
    assert store.exists(filename)
    real_replace = os.replace
    calls = []

    def killed_after_first_rename(src, dest):
        # zarr renames its own files too (from a thread): count only the store's.
        if filename in (src, dest):
            calls.append((src, dest))
            if len(calls) == 2:
                raise KeyboardInterrupt  # the process dies between the two renames
        real_replace(src, dest)

    monkeypatch.setattr(psyrun.atomic.os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        store.append(filename, {**chunk(5, 6), "c": [5.0]})  # a new key: a rewrite
    monkeypatch.undo()
    assert not os.path.exists(filename)
    assert store.exists(filename)  # the new half of the replace holds the store
    expected = {**chunk(0, 6), "c": [np.nan] * 5 + [5.0]}
    assert_columns_equal(store.load(filename), expected)
    store.append(filename, {**chunk(6, 7), "c": [6.0]})
    assert_columns_equal(store.load(filename), {**chunk(0, 7), "c": [np.nan] * 5 + [5.0, 6.0]})
    assert sorted(os.listdir(os.path.dirname(filename))) == ["r.zarr"]
    store.remove(filename)
    assert not store.exists(filename)


def test_remove_takes_what_an_interrupted_replace_left(store, filename):
    parent = os.path.dirname(filename)
    store.save(os.path.join(parent, ".r.tmp77.zarr"), chunk(0, 3))
    store.save(os.path.join(parent, ".r.zarr.tmp77.old"), chunk(0, 2))
    store.save(os.path.join(parent, "other.zarr"), chunk(0, 1))
    assert store.exists(filename)
    store.remove(filename)
    assert not store.exists(filename)
    assert os.listdir(parent) == ["other.zarr"]


def test_missing_store_still_raises(store, filename):
    with pytest.raises(FileNotFoundError, match="no zarr store"):
        store.load(filename)
