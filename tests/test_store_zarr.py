"""ZarrStore specifics: the named layout, appends commit a row count last, recovery."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from psyrun.store import UnsupportedValueError, ZarrStore
from psyrun.store.testing import assert_columns_equal
from psyrun.store.zarr import array_name, column_name

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
        named = group.attrs.get("psyrun_layout") == "named"
        array = group[array_name(key) if named else f"c{i}"]
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


# -- the named layout: what zarr and xarray read without psyrun -------------------------

OLD_LAYOUT = os.path.join(os.path.dirname(__file__), "data", "zarr-c-layout.zarr")


def layout_data(n: int = 6, start: int = 0) -> dict[str, np.ndarray]:
    r = np.arange(start, start + n)
    return {
        "x": r.astype(float),
        "label": np.array([f"r{i}" for i in r]),
        "hist": np.outer(r, [1.0, 2.0, 3.0]),
        "a/b": r * 10,
    }


def open_dataset(filename: str):
    xr = pytest.importorskip("xarray")
    # A plain call, as a user makes it; the pytest config turns any warning
    # (missing consolidated metadata, say) into an error.
    return xr.open_zarr(filename)


def test_plain_zarr_reads_one_array_per_column(store, filename):
    data = layout_data()
    store.save(filename, data)
    store.write_metadata(filename, {"task": "t", "pspace_keys": ["x"]})
    group = zarr.open_group(filename, mode="r")
    assert sorted(group.array_keys()) == sorted(["x", "label", "hist", "a%2Fb"])
    assert group["x"][:].tolist() == data["x"].tolist()
    assert group["label"][:].tolist() == data["label"].tolist()
    assert group["hist"][:].tolist() == data["hist"].tolist()
    assert group["a%2Fb"][:].tolist() == data["a/b"].tolist()
    assert group["hist"].metadata.dimension_names == ("row", "hist_dim_1")
    assert group.attrs["psyrun_metadata"] == {"task": "t", "pspace_keys": ["x"]}
    assert group.attrs["psyrun_columns"] == list(data)
    json.dumps(dict(group.attrs))  # attributes are plain JSON


def test_xarray_opens_every_column_as_a_variable_over_row(store, filename):
    store.append(filename, layout_data(4))
    store.append(filename, layout_data(3, start=4))
    store.write_metadata(filename, {"task": "t"})
    ds = open_dataset(filename)
    assert set(ds.data_vars) == {"x", "label", "hist", "a%2Fb"}
    assert ds["x"].dims == ("row",)
    assert ds["hist"].dims == ("row", "hist_dim_1")
    assert ds.sizes["row"] == 7
    expected = layout_data(7)
    assert ds["hist"].values.tolist() == expected["hist"].tolist()
    assert ds["label"].values.tolist() == expected["label"].tolist()
    assert ds["a%2Fb"].values.tolist() == expected["a/b"].tolist()
    assert ds.attrs["psyrun_metadata"] == {"task": "t"}
    renamed = ds.rename({name: column_name(name) for name in ds.data_vars})
    assert renamed["a/b"].values.tolist() == expected["a/b"].tolist()


def test_xarray_sees_only_committed_rows_after_a_killed_append(store, filename):
    store.append(filename, chunk(0, 700))
    tear_append(filename, {"a": np.full(400, 99.0), "b": np.full(400, 99.0)}, 1)
    ds = open_dataset(filename)
    assert ds.sizes["row"] == 700
    assert ds["a"].values.tolist() == chunk(0, 700)["a"].tolist()
    assert zarr.open_group(filename, mode="r")["b"].shape == (700,)


def test_dims_in_the_metadata_name_the_value_axes(store, filename):
    data = {**layout_data(), "img": np.zeros((6, 2, 5))}
    store.save(filename, data)
    dims = {"hist": ["bin"], "img": ["y", "x_px"]}
    store.write_metadata(filename, {"dims": dims})
    ds = open_dataset(filename)
    assert ds["hist"].dims == ("row", "bin")
    assert ds["img"].dims == ("row", "y", "x_px")
    store.append(filename, layout_data(2, start=6) | {"img": np.ones((2, 2, 5))})
    ds = open_dataset(filename)  # appends keep the names
    assert ds["hist"].dims == ("row", "bin")
    assert ds.sizes["row"] == 8
    store.append(filename, {**layout_data(1, start=8), "new": [1.0]})  # a rewrite
    assert open_dataset(filename)["img"].dims == ("row", "y", "x_px")


@pytest.mark.parametrize(
    "dims",
    [
        {"hist": ["bin", "extra"]},  # one name too many for a 2-d column
        {"hist": ["x"]},  # the name of a column
        {"hist": ["row"]},  # the rows' dimension
        {"hist": ["bin"], "img": ["bin", "y"]},  # one name for axes of two lengths
        {"hist": "bin"},  # not a list
        ["bin"],  # not a dict
    ],
)
def test_dims_that_do_not_fit_leave_the_default_names(store, filename, dims):
    store.save(filename, {**layout_data(), "img": np.zeros((6, 2, 5))})
    store.write_metadata(filename, {"dims": dims})
    ds = open_dataset(filename)  # still opens
    assert "row" in ds["hist"].dims
    assert store.read_metadata(filename) == {"dims": dims}
    assert_columns_equal(store.load(filename), {**layout_data(), "img": np.zeros((6, 2, 5))})


HOSTILE_NAMES = [
    "%",
    "%41",
    "..",
    ".",
    ".zattrs",
    "__x",
    "zarr.json",
    "ZARR.json",
    "a\\b",
    "\u03b1/\u03b2",
    "tab\there",
    "c0",
    "-",
    " ",
]


def test_array_names_are_a_reversible_escape():
    names = [array_name(name) for name in HOSTILE_NAMES]
    assert len(set(names)) == len(names)
    assert [column_name(name) for name in names] == HOSTILE_NAMES
    for name in names:
        assert "/" not in name
        assert "\\" not in name
        assert not name.startswith((".", "__"))
        assert name.lower() != "zarr.json"


def test_hostile_column_names_roundtrip(store, filename):
    data = {name: np.arange(3.0) + i for i, name in enumerate(HOSTILE_NAMES)}
    store.save(filename, data)
    store.append(filename, {name: [9.0] for name in HOSTILE_NAMES})
    expected = {k: [*v, 9.0] for k, v in data.items()}
    assert_columns_equal(store.load(filename), expected)
    assert list(store.load(filename)) == HOSTILE_NAMES
    group = zarr.open_group(filename, mode="r")
    assert {column_name(k) for k in group.array_keys()} == set(HOSTILE_NAMES)
    assert sorted(os.listdir(os.path.dirname(filename))) == ["r.zarr"]


@pytest.mark.parametrize("name", ["", "x" * 300, "é" * 200], ids=["empty", "long", "long-utf8"])
def test_names_no_array_can_have_are_refused_before_writing(store, filename, name):
    store.save(filename, chunk(0, 3))
    before = store.load(filename)
    with pytest.raises(UnsupportedValueError, match="ZarrStore cannot hold"):
        store.append(filename, {**chunk(3, 4), name: [1.0]})
    with pytest.raises(UnsupportedValueError):
        store.check({name: [1.0]})
    assert_columns_equal(store.load(filename), before)


# -- files of the layout before (arrays c0, c1, ...) -------------------------------------


def old_layout_rows(stop: int) -> dict[str, np.ndarray]:
    """The rows of tests/data/zarr-c-layout.zarr (written by the c0, c1, ... layout)."""
    r = np.arange(stop)
    return {
        "x": r,
        "y": r / 2,
        "s": np.array([f"r{i}" for i in r]),
        "h": np.outer(r, [1.0, 2.0, 3.0]),
        "a/b": r * 10,
    }


@pytest.fixture
def old_file(tmp_path):
    path = str(tmp_path / "old.zarr")
    shutil.copytree(OLD_LAYOUT, path)
    return path


def test_old_layout_loads_as_before(store, old_file):
    assert "c0" in zarr.open_group(old_file, mode="r", use_consolidated=False)
    assert_columns_equal(store.load(old_file), old_layout_rows(12))
    assert store.count_rows(old_file) == 12
    assert store.verify(old_file) == 12
    assert_columns_equal(
        store.load_rows(old_file, 3, 5), {k: v[3:5] for k, v in old_layout_rows(12).items()}
    )
    assert store.read_metadata(old_file) == {"task": "old", "pspace_keys": ["x"]}


def test_old_layout_appends_keep_every_row_and_get_the_named_layout(store, old_file):
    new = {k: v[12:14] for k, v in old_layout_rows(14).items()}
    store.append(old_file, new)
    assert_columns_equal(store.load(old_file), old_layout_rows(14))
    assert store.read_metadata(old_file) == {"task": "old", "pspace_keys": ["x"]}
    group = zarr.open_group(old_file, mode="r")
    assert group.attrs["psyrun_layout"] == "named"
    assert sorted(group.array_keys()) == sorted(["x", "y", "s", "h", "a%2Fb"])
    store.append(old_file, {k: v[14:] for k, v in old_layout_rows(20).items()})
    assert_columns_equal(store.load(old_file), old_layout_rows(20))
    assert open_dataset(old_file).sizes["row"] == 20
    assert sorted(os.listdir(os.path.dirname(old_file))) == ["old.zarr"]
