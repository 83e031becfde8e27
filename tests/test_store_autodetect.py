"""Store selection by extension, plugin discovery, and cheap imports."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

from psyrun.store import (
    AutodetectStore,
    H5Store,
    NpzStore,
    PickleStore,
    ZarrStore,
    available_stores,
    get_store,
)
from psyrun.store import autodetect as autodetect_module


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("r.pkl", PickleStore),
        ("dir/R.PKL", PickleStore),
        ("r.npz", NpzStore),
        ("r.H5", H5Store),
        ("r.zarr", ZarrStore),
        ("r.zarr/", ZarrStore),
        (".h5", H5Store),
        (".Zarr", ZarrStore),
    ],
)
def test_builtin_store_by_extension(name, cls):
    assert type(get_store(name)) is cls


def test_unknown_extension_lists_known_ones_and_extras():
    with pytest.raises(ValueError, match=r"no store for 'r\.csv'") as info:
        get_store("r.csv")
    message = str(info.value)
    for ext in (".pkl", ".npz", ".h5", ".zarr"):
        assert ext in message
    assert "psyrun[h5]" in message
    assert "psyrun[zarr]" in message


def test_missing_library_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "tables" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match=r"pip install psyrun\[h5\]"):
        get_store("r.h5")


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Install a fake distribution registering '.fake' in the psyrun.stores group."""
    (tmp_path / "fake_psyrun_store.py").write_text(
        textwrap.dedent(
            """
            from psyrun.store.pickle import PickleStore

            class FakeStore(PickleStore):
                ext = ".fake"
            """
        )
    )
    dist = tmp_path / "fake_psyrun_store-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-psyrun-store\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[psyrun.stores]\n.fake = fake_psyrun_store:FakeStore\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(autodetect_module, "_cache", None)
    yield
    sys.modules.pop("fake_psyrun_store", None)
    autodetect_module._cache = None


@pytest.mark.usefixtures("plugin")
def test_entry_point_store_is_discovered(tmp_path):
    assert available_stores()[".fake"] == "fake_psyrun_store:FakeStore"
    store = get_store(tmp_path / "out.FAKE")
    assert type(store).__name__ == "FakeStore"
    filename = str(tmp_path / "out.fake")
    AutodetectStore().append(filename, {"a": [1.0]})
    AutodetectStore().append(filename, {"a": [2.0]})
    assert AutodetectStore().load(filename)["a"].tolist() == [1.0, 2.0]


def test_plugins_are_read_lazily_and_cached(monkeypatch):
    calls = []

    def fake_entry_points():
        calls.append(1)
        return {}

    monkeypatch.setattr(autodetect_module, "_cache", None)
    monkeypatch.setattr(autodetect_module, "_entry_points", fake_entry_points)
    get_store("r.pkl")  # built-ins need no plugin scan
    assert calls == []
    available_stores()
    available_stores()
    assert calls == [1]


def test_plugin_that_is_not_a_store_is_rejected(tmp_path, monkeypatch):
    (tmp_path / "not_a_store_mod.py").write_text("class NotAStore:\n    pass\n")
    dist = tmp_path / "not_a_store-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: not-a-store\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[psyrun.stores]\n.bad = not_a_store_mod:NotAStore\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(autodetect_module, "_cache", None)
    with pytest.raises(TypeError, match=r"not a psyrun\.store\.Store subclass"):
        get_store("x.bad")
    sys.modules.pop("not_a_store_mod", None)


def test_importing_stores_does_not_import_heavy_libraries():
    code = (
        "import sys, psyrun.store, psyrun.store.h5, psyrun.store.zarr; "
        "print(sorted(m for m in ('tables', 'zarr', 'numba') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_store_pickle_module_does_not_shadow_stdlib_pickle():
    import pickle

    import psyrun.store.pickle as store_pickle

    assert pickle is not store_pickle
    assert hasattr(pickle, "dumps")
    assert store_pickle.pickle is pickle


def test_the_extension_table_agrees_with_the_stores():
    for ext, path in autodetect_module.BUILTINS.items():
        store = get_store(ext)
        assert store.ext == ext
        assert f"{type(store).__module__}:{type(store).__name__}" == path
    assert {get_store(ext).library for ext in (".pkl", ".npz", ".h5", ".zarr")} == {
        None,
        "tables",
        "zarr",
    }


def test_preload_of_a_missing_library_says_what_to_install(monkeypatch):
    monkeypatch.setattr(H5Store, "library", "no_such_module_for_psyrun")
    with pytest.raises(ImportError, match=r"H5Store needs .*pip install psyrun\[h5\]"):
        H5Store().preload()


def test_preload_imports_the_store_library_in_a_fresh_process():
    code = (
        "import sys, psyrun.store as s; assert 'zarr' not in sys.modules; "
        "s.ZarrStore().preload(); s.H5Store().preload(); "
        "print(sorted(m for m in ('tables', 'zarr') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['tables', 'zarr']"
