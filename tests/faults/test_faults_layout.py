"""Fault injection into the HDF5 layouts: converting old files, truncation, hostile names.

An append to a result of an older layout (psyrun 0.8's, or the ``/c0``,
``/c1``, ... files) rewrites it in the current one. A full disk or a kill
during that conversion must leave the old file exactly as it was (its rows
are the user's only copy), a truncated file of the current layout is
reported as damaged, and a column name that cannot be a node name survives
every write and read through its escape. Offsets, margins and kill times come
from ``fault_rng`` (seeded by ``PSYRUN_FAULT_SEED``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from fault_helpers import assert_untouched, tree_state
from store_helpers import write_h5_08_file, write_h5_c_file

from psyrun.exceptions import DamagedFileError
from psyrun.store.testing import assert_columns_equal, assert_exact_or_damaged

tables = pytest.importorskip("tables")

from psyrun.store.h5 import H5Store, node_name  # noqa: E402 - needs tables

OLD_LAYOUTS = ["0.8", "c"]


def _old_file(layout: str, filename: str, rows: int, rng) -> dict:
    """Write an old-layout file of `rows` rows; return its columns."""
    data = {"x": rng.random(rows), "n": np.arange(rows, dtype=np.int64)}
    if layout == "0.8":
        write_h5_08_file(filename, [data])
    else:
        write_h5_c_file(filename, data)
    return data


def _read_bytes(filename: str) -> bytes:
    with open(filename, "rb") as f:
        return f.read()


# -- a full disk during the conversion ---------------------------------------------------------


@pytest.mark.parametrize("layout", OLD_LAYOUTS)
def test_full_disk_during_conversion_keeps_the_old_file(layout, small_disk, fault_rng, tmp_path):
    disk = small_disk("12m")  # room for the converted copy once the filler is gone
    (tmp_path / "project.txt").write_text("not psyrun's")
    before = tree_state(tmp_path, skip=disk.path)
    filename = str(disk.path / "r.h5")
    old = _old_file(layout, filename, 200_000, fault_rng)  # 3.2 MB
    raw = _read_bytes(filename)
    store = H5Store()
    new = {"x": fault_rng.random(1000), "n": np.arange(1000, dtype=np.int64)}
    for leave in sorted(int(v) for v in fault_rng.integers(0, 2_000_000, size=3)):
        disk.fill(leave)
        with pytest.raises(OSError, match="disk full") as info:
            store.append(filename, new)
        assert info.value.errno == errno.ENOSPC
        assert "r.h5" in str(info.value)
        disk.free()
        assert _read_bytes(filename) == raw, f"the old file changed (leave={leave})"
        assert store.layout_of(filename) == layout
        assert_columns_equal(store.load(filename), old)
        assert sorted(os.listdir(disk.path)) == ["r.h5"]
    # With room, the same append converts the file and keeps every old row.
    store.append(filename, new)
    assert store.layout_of(filename) == "named"
    want = {k: np.concatenate([old[k], new[k]]) for k in old}
    assert_columns_equal(store.load(filename), want)
    assert store.verify(filename) == 201_000
    assert_untouched(before, tree_state(tmp_path, skip=disk.path), "a full disk at a conversion")


# -- a kill during the conversion ----------------------------------------------------------------

_APPEND = """
import sys
import numpy as np
from psyrun.store.h5 import H5Store
H5Store().append(sys.argv[1], {"x": np.full(10, 0.5), "n": np.arange(10)})
"""


@pytest.mark.slow  # about 5 s: three processes, each converting a million rows
@pytest.mark.parametrize("layout", OLD_LAYOUTS)
def test_kill_during_conversion_keeps_the_old_file(layout, fault_rng, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    filename = str(work / "r.h5")
    old = _old_file(layout, filename, 1_000_000, fault_rng)  # writing the copy: ~0.2 s
    raw = _read_bytes(filename)
    store = H5Store()
    killed_during = 0
    for delay in fault_rng.uniform(0.0, 0.05, size=3):
        proc = subprocess.Popen([sys.executable, "-c", _APPEND, filename])
        # Wait for the temporary file of the conversion, then kill at a seeded moment.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if any(name.startswith(".r.tmp") for name in os.listdir(work)):
                break
            time.sleep(0.005)
        time.sleep(float(delay))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.returncode == 0 or _read_bytes(filename) != raw:
            # The kill came after the converted file was put in place: the
            # conversion is complete (checked below); anything else is the old file.
            break
        killed_during += 1
        assert store.layout_of(filename) == layout
        assert_columns_equal(store.load(filename), old)
        # The killed process's temporary file is not a result and is never read.
        for name in os.listdir(work):
            if name != "r.h5":
                os.remove(work / name)
    assert killed_during, "no kill met the conversion; the case tested nothing"
    if store.layout_of(filename) == layout:
        store.append(filename, {"x": np.full(10, 0.5), "n": np.arange(10)})
    assert store.layout_of(filename) == "named"
    loaded = store.load(filename)
    assert_columns_equal({k: v[: len(old["x"])] for k, v in loaded.items()}, old)
    assert store.verify(filename) == len(old["x"]) + 10


# -- a truncated file of the current layout ---------------------------------------------------


def test_truncated_named_layout_is_damaged(fault_rng, tmp_path):
    filename = str(tmp_path / "r.h5")
    store = H5Store()
    chunks = [
        {"x": fault_rng.random(n), "s": [f"é{i}" for i in range(n)], "flag": np.arange(n) % 2 == 0}
        for n in (40_000, 30_000)
    ]
    for chunk in chunks:
        store.append(filename, chunk)
    store.write_metadata(filename, {"run": 1})
    expected = {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
    raw = _read_bytes(filename)
    for cut in sorted(int(v) for v in fault_rng.integers(1, len(raw), size=8)):
        with open(filename, "wb") as f:
            f.write(raw[:cut])
        assert_exact_or_damaged(store, filename, expected, ("load", "iter_chunks", "verify"))
        with pytest.raises(DamagedFileError):
            store.read_metadata(filename) if cut < len(raw) // 2 else store.verify(filename)
    with open(filename, "wb") as f:
        f.write(raw)
    assert store.verify(filename) == 70_000


# -- hostile column names ----------------------------------------------------------------------

HOSTILE = ["a/b", "/", "//x", ".", "..", "x.", "", "%", "%2F", "a\x00b", "_v_x", "_i_y"]
HOSTILE += ["__members__", "ü 🎲", "日本", "c0", "psyrun_checksums", "with space", "tab\tx"]


def test_hostile_names_round_trip(fault_rng, tmp_path):
    h5py = pytest.importorskip("h5py")
    filename = str(tmp_path / "r.h5")
    store = H5Store()
    chunks = [{name: fault_rng.random(n) for name in HOSTILE} for n in (5, 3)]
    for chunk in chunks:
        store.append(filename, chunk)  # the second append is in place
    store.append(filename, {**{k: [1.0] for k in HOSTILE}, "late": [2.0]})  # a rewrite
    expected = {k: np.concatenate([*(c[k] for c in chunks), [1.0]]) for k in HOSTILE} | {
        "late": np.array([np.nan] * 8 + [2.0])
    }
    assert list(store.load(filename)) == [*HOSTILE, "late"]
    assert assert_exact_or_damaged(store, filename, expected) == []
    with h5py.File(filename, "r") as f:
        group = f["psyrun"]
        assert len(group) == len(HOSTILE) + 1  # every column a node, nothing else
        for name in HOSTILE:
            dataset = group[node_name(name)]
            assert json.loads(dataset.attrs["psyrun_name"]) == name
            np.testing.assert_array_equal(dataset[:], expected[name])
        assert "psyrun_checksums" in f  # the checksums beside the group, not in it
    assert sorted(os.listdir(tmp_path)) == ["r.h5"]


def test_hostile_names_in_a_08_file_are_read_as_stored(tmp_path):
    # psyrun 0.8 wrote names PyTables accepts as they are; none of them looks escaped.
    filename = str(tmp_path / "r.h5")
    with pytest.warns(tables.NaturalNameWarning):
        write_h5_08_file(filename, [{"a b": [1.0], "é": [2.0], "x-1": [3.0]}])
    loaded = H5Store().load(filename)
    assert {k: v.tolist() for k, v in loaded.items()} == {"a b": [1.0], "é": [2.0], "x-1": [3.0]}
