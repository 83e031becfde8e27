"""FileLock: mutual exclusion between processes, timeouts, and concurrent appends."""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest
from psy_helpers import psy, task_paths, task_result, write_task

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


# -- the task lock: two psy commands on one task at once ---------------------------------


SQUARE = """
from psyrun import Param
pspace = Param(x=range(12))
max_jobs = 3
def execute(x):
    return {'y': x * x}
"""


def test_run_refuses_while_another_psy_holds_the_task(project):
    """A second `psy run` must not clear the parts of a run in progress."""
    write_task(project, "square", SQUARE)
    assert psy("run", "square").exit_code == 0
    before = task_result(project, "square")
    paths = task_paths(project, "square")
    with FileLock(paths.run_lock):  # as a `psy run` still working would hold it
        for args in (["run", "square"], ["run", "-c", "square"], ["clean", "square"]):
            result = psy(*args)
            assert result.exit_code == 1, result.output
            assert "is working on this task" in result.output
            assert "Traceback" not in result.output
    # Nothing was touched: same rows, and clean did not remove them.
    after = task_result(project, "square")
    np.testing.assert_array_equal(after["x"], before["x"])
    np.testing.assert_array_equal(after["y"], before["y"])
    # Once the other command is gone, both work again.
    assert psy("run", "square").exit_code == 0
    assert psy("clean", "square").exit_code == 0
    assert not os.path.exists(paths.result)


def test_run_holds_the_task_lock_while_its_jobs_run(project):
    """The lock is taken by `psy run` itself, for the whole local run."""
    write_task(
        project,
        "probe",
        """
        from psyrun import Param
        from psyrun.store.locking import FileLock
        pspace = Param(x=[1, 2])
        LOCK = None
        def execute(x):
            try:
                with FileLock(LOCK, timeout=0):
                    held = False
            except TimeoutError:
                held = True
            return {'held': held}
        """,
    )
    lock = task_paths(project, "probe").run_lock
    text = (project / "psy-tasks" / "task_probe.py").read_text()
    (project / "psy-tasks" / "task_probe.py").write_text(
        text.replace("LOCK = None", f"LOCK = {lock!r}")
    )
    assert psy("run", "probe").exit_code == 0
    assert task_result(project, "probe")["held"].tolist() == [True, True]
    # Released afterwards.
    with FileLock(lock, timeout=0):
        pass
