"""Faults in the zarr layout of issue 22: named arrays, dimension names, consolidated metadata.

What the layout adds to a ZarrStore write: arrays named by (escaped) column
names, the dimension names rewritten from the metadata's ``dims``, the
consolidated metadata written after every commit, and the one rewrite that
turns a file of the ``c0, c1, ...`` layout into the named one. Each is hit
by the real faults: a full disk, SIGKILL at seeded moments, an error at each
step, and column names chosen to escape the store's directory. The invariant
checked every time: psyrun reads exactly the committed rows, so does xarray
(never a stale or torn view), and nothing outside the store changes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from fault_helpers import assert_untouched, tree_state

from psyrun.store import ZarrStore
from psyrun.store.testing import assert_columns_equal

zarr = pytest.importorskip("zarr")
xr = pytest.importorskip("xarray")

OLD_LAYOUT = os.path.join(os.path.dirname(__file__), "..", "data", "zarr-c-layout.zarr")
CHUNK = 300

# Appends chunk after chunk (with a 2-d column) and names its axes now and then,
# until it is killed. A fresh interpreter, as in tests/test_store_crash.py.
CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from psyrun.store import ZarrStore

    filename, chunk = sys.argv[1], int(sys.argv[2])
    store = ZarrStore()
    start = 0
    while True:
        x = np.arange(start, start + chunk, dtype=float)
        store.append(filename, {"x": x, "h": np.outer(x, [1.0, 2.0]), "a/b": x + 1})
        start += chunk
        store.write_metadata(filename, {"dims": {"h": ["bin" if start % 2 else "edge"]}})
    """
)


def rows(start: int, stop: int) -> dict[str, np.ndarray]:
    x = np.arange(start, stop, dtype=float)
    return {"x": x, "h": np.outer(x, [1.0, 2.0]), "a/b": x + 1}


def xarray_rows(filename: str) -> int:
    """The rows xarray sees, checked against the rows psyrun wrote."""
    with warnings.catch_warnings():
        # Killed between a commit and the consolidated metadata that follows it,
        # the store has none: xarray reads each array's metadata, with a warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = xr.open_zarr(filename)
    n = ds.sizes["row"]
    expected = rows(0, n)
    assert ds["x"].values.tolist() == expected["x"].tolist()
    assert ds["h"].values.tolist() == expected["h"].tolist()
    assert ds["a%2Fb"].values.tolist() == expected["a/b"].tolist()
    return n


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_at_seeded_moments_leaves_the_same_rows_for_psyrun_and_xarray(tmp_path, fault_rng):
    store = ZarrStore()
    counts = []
    for trial in range(4):
        filename = str(tmp_path / f"t{trial}.zarr")
        child = subprocess.Popen([sys.executable, "-c", CHILD, filename, str(CHUNK)])
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(filename):
                assert child.poll() is None, f"the child exited with {child.returncode}"
                assert time.monotonic() < deadline, "the child never created the store"
                time.sleep(0.002)
            time.sleep(float(fault_rng.uniform(0.0, 0.4)))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        loaded = store.load(filename)
        n = len(loaded["x"])
        assert n % CHUNK == 0, f"{n} rows is not a whole number of appends"
        assert_columns_equal(loaded, rows(0, n))
        assert store.verify(filename) == n
        assert xarray_rows(filename) == n, "xarray sees other rows than the commit"
        store.append(filename, rows(n, n + CHUNK))
        assert_columns_equal(store.load(filename), rows(0, n + CHUNK))
        assert xr.open_zarr(filename).sizes["row"] == n + CHUNK  # consolidated again
        counts.append(n)
    assert max(counts) > 0, f"no trial got past the first append: {counts}"


@pytest.mark.parametrize("step", ["dims", "commit", "consolidate"])
def test_error_at_each_step_of_write_metadata_keeps_the_rows(tmp_path, monkeypatch, step):
    import psyrun.store.zarr as zarr_store

    store = ZarrStore()
    filename = str(tmp_path / "r.zarr")
    store.append(filename, rows(0, 10))
    store.append(filename, rows(10, 20))

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if step == "dims":
        monkeypatch.setattr(zarr_store, "atomic_write", fail)
    elif step == "commit":
        monkeypatch.setattr(zarr.Group, "update_attributes", fail)
    else:
        monkeypatch.setattr(zarr, "consolidate_metadata", fail)
    if step == "consolidate":
        # After the commit: the metadata is written, the consolidated copy is
        # only left out (not stale), and no error claims otherwise.
        store.write_metadata(filename, {"dims": {"h": ["bin"]}})
    else:
        with pytest.raises(OSError, match="No space left"):
            store.write_metadata(filename, {"dims": {"h": ["bin"]}})
    monkeypatch.undo()
    assert_columns_equal(store.load(filename), rows(0, 20))
    assert store.verify(filename) == 20
    assert xarray_rows(filename) == 20
    store.append(filename, rows(20, 25))
    store.write_metadata(filename, {"dims": {"h": ["bin"]}})
    assert xr.open_zarr(filename)["h"].dims == ("row", "bin")
    assert_columns_equal(store.load(filename), rows(0, 25))


def test_consolidation_failing_after_an_append_commits_it_once(tmp_path, monkeypatch):
    store = ZarrStore()
    filename = str(tmp_path / "r.zarr")
    store.append(filename, rows(0, 10))

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zarr, "consolidate_metadata", fail)
    store.append(filename, rows(10, 20))  # committed: raising would make a caller retry it
    monkeypatch.undo()
    assert_columns_equal(store.load(filename), rows(0, 20))
    assert xarray_rows(filename) == 20  # no stale consolidated metadata shows 10 rows


def test_full_disk_during_the_rewrite_of_an_old_file_keeps_it(small_disk, tmp_path):
    disk = small_disk("8m")
    filename = str(disk.path / "old.zarr")
    shutil.copytree(OLD_LAYOUT, filename)
    store = ZarrStore()
    before = store.load(filename)
    disk.fill(leave=4096)
    state = tree_state(disk.path)
    new = {k: v[:2] for k, v in before.items()}
    with pytest.raises(OSError, match="disk full"):
        store.append(filename, new)
    assert_untouched(state, tree_state(disk.path), "a refused rewrite")
    assert_columns_equal(store.load(filename), before)
    assert "c0" in zarr.open_group(filename, mode="r", use_consolidated=False)
    disk.free()
    store.append(filename, new)
    loaded = store.load(filename)
    assert_columns_equal(loaded, {k: np.concatenate([v, v[:2]]) for k, v in before.items()})
    assert store.read_metadata(filename) == {"task": "old", "pspace_keys": ["x"]}


@pytest.mark.parametrize("fail_at", [1, 3])
def test_rewrite_of_an_old_file_failing_part_way_keeps_it(tmp_path, monkeypatch, fail_at):
    filename = str(tmp_path / "old.zarr")
    shutil.copytree(OLD_LAYOUT, filename)
    store = ZarrStore()
    before = store.load(filename)
    state = tree_state(tmp_path)
    real = zarr.Group.create_array
    made = []

    def create_array(self, *args, **kwargs):
        made.append(args)
        if len(made) == fail_at:
            raise OSError(5, "Input/output error")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_array", create_array)
    with pytest.raises(OSError, match="Input/output"):
        store.append(filename, {k: v[:1] for k, v in before.items()})
    monkeypatch.undo()
    assert_untouched(state, tree_state(tmp_path), "a failed rewrite")
    assert_columns_equal(store.load(filename), before)


@pytest.mark.parametrize(
    "name", ["../escape", "/abs", "..", ".", "sub/../../x", "zarr.json", "c\x00", "%2E%2E"]
)
def test_hostile_column_names_stay_inside_the_store(tmp_path, name):
    project = tmp_path / "project"
    project.mkdir()
    (project / "keep.txt").write_text("mine")
    filename = str(project / "r.zarr")
    store = ZarrStore()
    store.append(filename, {"x": [1.0, 2.0], name: [3.0, 4.0]})
    store.append(filename, {"x": [5.0], name: [6.0]})
    assert sorted(os.listdir(project)) == ["keep.txt", "r.zarr"]
    assert sorted(os.listdir(tmp_path)) == ["project"]
    assert (project / "keep.txt").read_text() == "mine"
    assert_columns_equal(store.load(filename), {"x": [1.0, 2.0, 5.0], name: [3.0, 4.0, 6.0]})
    group = zarr.open_group(filename, mode="r")
    assert len(list(group.array_keys())) == 2
    assert xr.open_zarr(filename).sizes["row"] == 3
