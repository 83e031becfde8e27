"""FileLock: mutual exclusion between processes, timeouts, and concurrent appends."""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest

from psyrun.store import get_store
from psyrun.store.locking import FileLock


def _hold_lock(path, ready, release):
    with FileLock(path):
        ready.set()
        release.wait(30)


def _ctx():
    # fork keeps the test fast; every child only imports what the parent already has.
    return multiprocessing.get_context("fork")


def test_lock_file_is_next_to_protected_file(tmp_path):
    assert FileLock(tmp_path / "r.pkl").path == str(tmp_path / "r.pkl.lock")
    assert FileLock(tmp_path / "x.lock").path == str(tmp_path / "x.lock")


def test_lock_excludes_other_process_until_released(tmp_path):
    path = str(tmp_path / "r.pkl")
    ctx = _ctx()
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        lock = FileLock(path, timeout=0.2)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="could not lock"):
            lock.acquire()
        assert time.monotonic() - start >= 0.2
        assert not lock.locked
        release.set()
        holder.join(30)
        with FileLock(path, timeout=5) as acquired:
            assert acquired.locked
    finally:
        release.set()
        holder.join(30)


def test_two_instances_in_one_process_exclude_each_other(tmp_path):
    first = FileLock(tmp_path / "f")
    second = FileLock(tmp_path / "f", timeout=0.05)
    with first, pytest.raises(TimeoutError):
        second.acquire()
    with second:
        assert second.locked


def test_lock_is_reentrant_per_instance(tmp_path):
    lock = FileLock(tmp_path / "f")
    with lock:
        with lock:
            assert lock.locked
        assert lock.locked
    assert not lock.locked
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.release()


def _append_rows(filename, writer, n_chunks, rows_per_chunk):
    store = get_store(filename)
    for chunk in range(n_chunks):
        first = (writer * n_chunks + chunk) * rows_per_chunk
        ids = np.arange(first, first + rows_per_chunk)
        with FileLock(filename):
            store.append(filename, {"writer": np.full(rows_per_chunk, writer), "id": ids})


@pytest.mark.parametrize("ext", [".pkl", ".npz", ".h5", ".zarr"])
def test_concurrent_appends_lose_and_double_no_row(tmp_path, ext):
    filename = str(tmp_path / f"result{ext}")
    n_writers, n_chunks, rows = 4, 8, 5
    ctx = _ctx()
    workers = [
        ctx.Process(target=_append_rows, args=(filename, w, n_chunks, rows))
        for w in range(n_writers)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    loaded = get_store(filename).load(filename)
    assert sorted(loaded["id"].tolist()) == list(range(n_writers * n_chunks * rows))
    # rows of one chunk stay together and belong to the writer that made them
    expected_writer = loaded["id"] // (n_chunks * rows)
    np.testing.assert_array_equal(loaded["writer"], expected_writer)
    assert not os.path.exists(filename + ".tmp")
