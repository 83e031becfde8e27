"""H5Store specifics: named columns any HDF5 reader finds, old layouts, real appends."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from psy_helpers import psy, write_task
from store_helpers import write_h5_08_file as write_08_file
from store_helpers import write_h5_c_file as write_c_file

from psyrun.store import H5Store
from psyrun.store.h5 import column_name, node_name

tables = pytest.importorskip("tables")


# -- the layout: named columns, native attributes ------------------------------------------


def test_appends_extend_arrays_in_place(tmp_path):
    filename = str(tmp_path / "r.h5")
    store = H5Store()
    store.append(filename, {"a": np.arange(3.0)})
    store.append(filename, {"a": np.arange(2.0)})
    with tables.open_file(filename) as h5file:
        assert list(h5file.root.psyrun._v_children) == ["a"]
        assert h5file.root.psyrun.a.nrows == 5
    assert store.load(filename, row=3)["a"].tolist() == [0.0]
    assert store.layout_of(filename) == "named"


def test_h5py_reads_every_column_by_name(tmp_path):
    h5py = pytest.importorskip("h5py")
    filename = str(tmp_path / "r.h5")
    data = {
        "x": np.array([0.5, 1.5, 2.5]),
        "n": np.array([1, 2, 3]),
        "flag": np.array([True, False, True]),
        "text": np.array(["a", "bé", "日本"]),
        "v": np.arange(6.0).reshape(3, 2),
    }
    store = H5Store()
    store.append(filename, {k: v[:2] for k, v in data.items()})
    store.append(filename, {k: v[2:] for k, v in data.items()})
    store.write_metadata(filename, {"task": "square", "n": 3})
    with h5py.File(filename, "r") as f:
        group = f["psyrun"]
        assert sorted(group) == sorted(data)
        np.testing.assert_array_equal(f["psyrun/x"][:], data["x"])
        np.testing.assert_array_equal(f["psyrun/n"][:], data["n"])
        np.testing.assert_array_equal(f["psyrun/v"][:], data["v"])
        assert f["psyrun/flag"][:].dtype == np.bool_
        assert f["psyrun/flag"][:].tolist() == [True, False, True]
        assert h5py.check_string_dtype(f["psyrun/text"].dtype).encoding == "utf-8"
        assert f["psyrun/text"].asstr()[:].tolist() == ["a", "bé", "日本"]
        assert json.loads(group.attrs["psyrun_columns"]) == list(data)
        assert json.loads(group.attrs["psyrun_metadata"]) == {"task": "square", "n": 3}
        assert int(group.attrs["psyrun_rows"]) == 3
        assert json.loads(group["x"].attrs["psyrun_name"]) == "x"


def test_no_attribute_is_a_pickle(tmp_path):
    h5py = pytest.importorskip("h5py")
    filename = str(tmp_path / "r.h5")
    store = H5Store()
    store.append(filename, {"x": [1.0], "s": ["a"], "b": [True]})
    store.append(filename, {"x": [2.0], "s": ["bc"], "b": [False]})  # a rewrite: wider str
    store.write_metadata(filename, {"keys": ["x"]})
    found = []

    def check(name, obj):
        for key, value in obj.attrs.items():
            found.append(key)
            assert not isinstance(value, np.ndarray) or value.dtype.kind != "O", (name, key)
            raw = value.tobytes() if isinstance(value, np.ndarray | np.generic) else b""
            with pytest.raises((pickle.UnpicklingError, EOFError, ValueError, KeyError)):
                pickle.loads(raw)

    with h5py.File(filename, "r") as f:
        check("/", f)
        f.visititems(check)
    assert "psyrun_commit" in found
    assert "psyrun_metadata" in found


def test_pandas_and_xarray_one_liners_of_the_docs(tmp_path):
    h5py = pytest.importorskip("h5py")
    pd = pytest.importorskip("pandas")
    xr = pytest.importorskip("xarray")
    filename = str(tmp_path / "r.h5")
    H5Store().save(filename, {"x": [1.0, 2.0], "n": [3, 4], "s": ["a", "b"]})
    # The one-liners of docs/guide/stores.rst.
    f = h5py.File(filename, "r")
    df = pd.DataFrame(
        {k: v.asstr()[:] if v.dtype.kind == "S" else v[:] for k, v in f["psyrun"].items()}
    )
    ds = xr.Dataset(
        {k: ("row", v.asstr()[:] if v.dtype.kind == "S" else v[:]) for k, v in f["psyrun"].items()}
    )
    f.close()
    assert df["x"].tolist() == [1.0, 2.0]
    assert df["s"].tolist() == ["a", "b"]
    assert ds["n"].values.tolist() == [3, 4]


# -- names that are not node names ------------------------------------------------------


HOSTILE = [
    "a/b",
    ".",
    "..",
    "",
    "x.y",
    "%",
    "%2F",
    "_v_name",
    "_i_x",
    "__members__",
    "ü 🎲",
    "a\x00b",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_escape_round_trips(name):
    escaped = node_name(name)
    assert column_name(escaped) == name
    assert "/" not in escaped
    assert "\x00" not in escaped
    assert escaped not in ("", ".", "..")


def test_escaped_names_are_distinct():
    assert len({node_name(n) for n in HOSTILE}) == len(HOSTILE)


def test_plain_names_are_kept():
    for name in ("x", "y_2", "trace", "a b", "x-1", "Ünïcode"):
        assert node_name(name) == name


def test_surrogate_column_names_are_refused(tmp_path):
    from psyrun.store import UnsupportedValueError

    with pytest.raises(UnsupportedValueError, match="surrogate"):
        H5Store().save(str(tmp_path / "r.h5"), {"\udcff": [1.0]})
    assert not (tmp_path / "r.h5").exists()


# -- the node argument (psyrun 0.8's) ---------------------------------------------------


def test_node_argument_places_the_group(tmp_path):
    h5py = pytest.importorskip("h5py")
    filename = str(tmp_path / "r.h5")
    store = H5Store(node="/runs/first")
    store.append(filename, {"x": [1.0, 2.0]})
    store.append(filename, {"x": [3.0]})
    assert store.load(filename)["x"].tolist() == [1.0, 2.0, 3.0]
    assert "node='/runs/first'" in repr(store)
    with h5py.File(filename, "r") as f:
        assert f["runs/first/x"][:].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(OSError, match=r"no psyrun result at /psyrun.*H5Store\(node=\.\.\.\)"):
        H5Store().load(filename)


@pytest.mark.parametrize("node", ["/", "psyrun", "", "/a//b", "/_v_x", 3])
def test_bad_node_is_refused(node):
    with pytest.raises(ValueError, match="node"):
        H5Store(node=node)


# -- psyrun 0.8's files and the c0, c1, ... files ------------------------------------------


@pytest.mark.parametrize("chunks", [1, 2])
def test_08_file_loads(tmp_path, chunks):
    filename = str(tmp_path / "r.h5")
    parts = [{"x": [1, 2], "y": [0.5, 1.0]}, {"x": [3], "y": [1.5]}][:chunks]
    write_08_file(filename, parts)
    store = H5Store()
    expected_x = [v for p in parts for v in p["x"]]
    assert store.layout_of(filename) == "0.8"
    assert store.count_rows(filename) == len(expected_x)
    assert store.load(filename)["x"].tolist() == expected_x
    assert store.load(filename, row=-1)["y"].tolist() == [parts[-1]["y"][-1]]
    assert store.read_metadata(filename) == {}
    assert store.verify(filename) == len(expected_x)


def test_08_file_append_converts_and_keeps_the_old_rows(tmp_path):
    h5py = pytest.importorskip("h5py")
    filename = str(tmp_path / "r.h5")
    write_08_file(filename, [{"x": [1, 2], "y": [0.5, 1.0]}])
    store = H5Store()
    store.append(filename, {"x": [3], "y": [1.5]})
    assert store.layout_of(filename) == "named"
    assert store.load(filename)["x"].tolist() == [1, 2, 3]
    store.append(filename, {"x": [4], "y": [2.0]})  # now in place
    assert store.load(filename)["y"].tolist() == [0.5, 1.0, 1.5, 2.0]
    with h5py.File(filename, "r") as f:
        assert f["psyrun/x"][:].tolist() == [1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]


def test_08_file_with_another_node(tmp_path):
    filename = str(tmp_path / "r.h5")
    write_08_file(filename, [{"x": [1.0]}, {"x": [2.0]}], node="/results")
    store = H5Store(node="/results")
    assert store.load(filename)["x"].tolist() == [1.0, 2.0]
    store.append(filename, {"x": [3.0]})
    assert store.load(filename)["x"].tolist() == [1.0, 2.0, 3.0]


def test_08_file_with_columns_of_different_lengths_is_refused(tmp_path):
    from psyrun.exceptions import DamagedFileError

    filename = str(tmp_path / "r.h5")
    write_08_file(filename, [{"x": [1.0], "y": [1.0]}, {"x": [2.0]}])
    with pytest.raises(DamagedFileError, match="different numbers of rows"):
        H5Store().count_rows(filename)


def test_c_layout_file_loads_and_converts_on_append(tmp_path):
    filename = str(tmp_path / "r.h5")
    write_c_file(filename, {"x": [1.0, 2.0], "s": ["a", "é"], "n": [1, 2]})
    store = H5Store()
    assert store.layout_of(filename) == "c"
    assert store.load(filename)["s"].tolist() == ["a", "é"]
    assert store.read_metadata(filename) == {"run": 3}
    store.append(filename, {"x": [3.0], "s": ["b"], "n": [3]})
    assert store.layout_of(filename) == "named"
    loaded = store.load(filename)
    assert loaded["s"].tolist() == ["a", "é", "b"]
    assert loaded["n"].tolist() == [1, 2, 3]
    assert store.read_metadata(filename) == {"run": 3}


def test_psy_status_counts_the_rows_of_an_08_result(project):
    write_task(
        project,
        "old",
        """
        from psyrun import Param
        from psyrun.store.h5 import H5Store
        store = H5Store()
        pspace = Param(x=[1, 2, 3, 4])
        def execute(x):
            return {"y": x * x}
        """,
    )
    work = project / "psy-work" / "old"
    work.mkdir(parents=True)
    # Marked values: rows that -c evaluated again would read 1 and 4.
    write_08_file(str(work / "result.h5"), [{"x": [1, 2], "y": [-1, -4]}])
    status = psy("status", "old")
    assert status.exit_code == 0, status.output
    assert "old: 2 out of 4 rows completed" in status.output
    assert "damaged" not in status.output
    result = psy("run", "-c", "old")
    assert result.exit_code == 0, result.output
    loaded = H5Store().load(str(work / "result.h5"))
    assert sorted(zip(loaded["x"].tolist(), loaded["y"].tolist())) == [
        (1, -1),
        (2, -4),
        (3, 9),
        (4, 16),
    ]


def test_psy_merge_converts_old_files_to_the_named_layout(project):
    h5py = pytest.importorskip("h5py")
    parts = project / "parts"
    parts.mkdir()
    write_08_file(str(parts / "0.h5"), [{"x": [1, 2]}])
    write_c_file(str(parts / "1.h5"), {"x": [3]})
    result = psy("merge", "parts", "merged.h5")
    assert result.exit_code == 0, result.output
    assert H5Store().layout_of("merged.h5") == "named"
    with h5py.File("merged.h5", "r") as f:
        assert sorted(f["psyrun/x"][:].tolist()) == [1, 2, 3]


def test_row_out_of_range_names_the_file(tmp_path):
    filename = str(tmp_path / "r.h5")
    H5Store().save(filename, {"a": [1.0]})
    with pytest.raises(IndexError, match="out of range"):
        H5Store().load(filename, row=5)


def test_psy_merge_into_an_08_file_keeps_its_rows(project):
    parts = project / "parts"
    parts.mkdir()
    H5Store().save(str(parts / "0.h5"), {"x": [5]})
    write_08_file(str(project / "merged.h5"), [{"x": [1, 2]}])
    result = psy("merge", "parts", "merged.h5")
    assert result.exit_code == 0, result.output
    assert "after the 2 rows it held" in result.output
    assert H5Store().layout_of("merged.h5") == "named"
    assert sorted(H5Store().load("merged.h5")["x"].tolist()) == [1, 2, 5]


def test_rewrites_keep_what_else_the_file_holds(tmp_path):
    # Two results of 0.8 in one file (node=...), and data of the user's own.
    filename = str(tmp_path / "r.h5")
    write_08_file(filename, [{"x": [1.0, 2.0]}], node="/a")
    with tables.open_file(filename, "a") as h5file:
        h5file.create_group("/", "b")
        h5file.create_earray("/b", "y", obj=np.array([7, 8]))
        h5file.create_array("/", "notes", np.arange(3))
    H5Store(node="/a").append(filename, {"x": [3.0]})  # converts /a
    H5Store(node="/a").append(filename, {"x": [4.0], "z": [1.0]})  # a rewrite: new key
    assert H5Store(node="/a").load(filename)["x"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert H5Store(node="/b").load(filename)["y"].tolist() == [7, 8]
    with tables.open_file(filename) as h5file:
        assert h5file.root.notes.read().tolist() == [0, 1, 2]


def test_without_h5py_pytables_writes_the_same_columns(tmp_path, monkeypatch):
    # psyrun 0.8's environments have PyTables only: str and bool are then typed
    # by PyTables (ASCII-typed UTF-8 bytes, a bit field) and read back the same.
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    filename = str(tmp_path / "r.h5")
    store = H5Store()
    store.append(filename, {"s": ["a", "é"], "b": [True, False], "x": [1.0, 2.0]})
    store.append(filename, {"s": ["c"], "b": [True], "x": [3.0]})
    loaded = store.load(filename)
    assert loaded["s"].tolist() == ["a", "é", "c"]
    assert loaded["b"].dtype == np.bool_
    assert loaded["b"].tolist() == [True, False, True]
    with tables.open_file(filename) as h5file:
        assert h5file.root.psyrun.b.atom.kind == "bool"
