"""Provenance in every result file: written by the merge, read by load_metadata."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from e2e_helpers import BACKENDS, STORES, ok, psy, result_path, write

from psyrun.results import load_metadata, provenance
from psyrun.results.merge import write_merged
from psyrun.store import NpzStore, PickleStore, get_store
from psyrun.store.testing import assert_columns_equal

TASK = """
import numpy as np
from psyrun import Param
{backend_import}
{store_import}

pspace = Param(x=np.arange({n}))
backend = {backend}
store = {store}
max_jobs = 2


def execute(x):
    return {{"y": x * x}}
"""


def task_source(store="pickle", backend="distribute", n=6):
    b_import, b_value = BACKENDS[backend]
    s_import, s_value, _ = STORES[store]
    return TASK.format(
        backend_import=b_import, backend=b_value, store_import=s_import, store=s_value, n=n
    )


def has_git() -> bool:
    return shutil.which("git") is not None


def git(cwd, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t")
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env
    ).stdout


@pytest.mark.parametrize("store", list(STORES))
def test_result_records_the_run_and_loads_as_before(tmp_path, store):
    task_file = write(tmp_path / "psy-tasks" / "task_sq.py", task_source(store))
    before = time.time()
    ok(psy("run", "sq", cwd=tmp_path))
    path = result_path(tmp_path, "sq", store)
    meta = load_metadata(str(path))
    assert meta["task"] == "sq"
    assert meta["task_file"] == str(task_file.resolve())
    assert meta["task_sha256"] == hashlib.sha256(task_file.read_bytes()).hexdigest()
    assert meta["pspace_length"] == 6
    assert meta["pspace_keys"] == ["x"]
    assert meta["merge_host"] == socket.gethostname()
    assert meta["python_version"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    import psyrun

    assert meta["psyrun_version"] == psyrun.__version__
    started = np.datetime64(meta["started"][:26])
    finished = np.datetime64(meta["finished"][:26])
    assert np.datetime64(int(before) - 1, "s") <= started <= finished
    # The metadata is no column: the rows load exactly as before.
    data = get_store(str(path)).load(str(path))
    assert sorted(data) == ["x", "y"]
    assert sorted(data["y"].tolist()) == [x * x for x in range(6)]
    # A task name works as well as a path.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert load_metadata("sq") == meta
    finally:
        os.chdir(cwd)


@pytest.mark.skipif(not has_git(), reason="git is not installed")
def test_git_commit_and_dirty_flag(tmp_path):
    write(tmp_path / "psy-tasks" / "task_sq.py", task_source())
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "psy-tasks")
    git(tmp_path, "commit", "-qm", "task")
    head = git(tmp_path, "rev-parse", "HEAD").strip()
    ok(psy("run", "sq", cwd=tmp_path))
    meta = load_metadata(str(result_path(tmp_path, "sq")))
    # Results in psy-work are untracked: they do not make the checkout dirty.
    assert meta["git_commit"] == head
    assert meta["git_dirty"] is False
    with open(tmp_path / "psy-tasks" / "task_sq.py", "a") as f:
        f.write("\n# changed\n")
    ok(psy("run", "sq", cwd=tmp_path))
    meta = load_metadata(str(result_path(tmp_path, "sq")))
    assert meta["git_commit"] == head
    assert meta["git_dirty"] is True


def test_no_git_repository_means_no_git_keys(tmp_path, monkeypatch):
    # GIT_CEILING_DIRECTORIES stops git from finding a repository above tmp_path.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    task_file = write(tmp_path / "task_sq.py", "x = 1\n")
    assert provenance.git_state(task_file) == {}


@pytest.mark.skipif(not has_git(), reason="git is not installed")
def test_git_missing_is_no_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert provenance.git_state(__file__) == {}


@pytest.mark.parametrize("store", list(STORES))
def test_continued_run_keeps_the_earlier_run(tmp_path, store):
    task = tmp_path / "psy-tasks" / "task_sq.py"
    write(task, task_source(store, n=4))
    ok(psy("run", "sq", cwd=tmp_path))
    path = str(result_path(tmp_path, "sq", store))
    first = load_metadata(path)
    write(task, task_source(store, n=7))
    ok(psy("run", "-c", "sq", cwd=tmp_path))
    second = load_metadata(path)
    assert second["pspace_length"] == 7
    # The rows' versions are recorded once, for the whole file.
    assert second["earlier_runs"] == [{k: v for k, v in first.items() if k != "row_versions"}]
    assert second["row_versions"] == [[first["task_version"], 7]]
    assert sorted(get_store(path).load(path)["x"].tolist()) == list(range(7))


def test_load_xarray_puts_the_metadata_in_attrs(tmp_path, monkeypatch):
    pytest.importorskip("xarray")
    from psyrun.results import load_xarray

    write(tmp_path / "psy-tasks" / "task_sq.py", task_source())
    ok(psy("run", "sq", cwd=tmp_path))
    monkeypatch.chdir(tmp_path)
    ds = load_xarray("sq")
    assert ds.attrs == load_metadata("sq")
    assert ds.attrs["task"] == "sq"


def test_result_of_psyrun_08_has_empty_metadata(tmp_path):
    # psyrun 0.8 wrote a plain pickle of a dict of lists, and np.savez files.
    old = tmp_path / "result.pkl"
    old.write_bytes(pickle.dumps({"x": [1, 2], "y": [1, 4]}))
    assert load_metadata(str(old)) == {}
    npz = tmp_path / "result.npz"
    np.savez(npz, x=np.array([1, 2]))
    assert load_metadata(str(npz)) == {}


def test_metadata_added_to_a_psyrun_08_pickle_loads_the_same(tmp_path):
    old = str(tmp_path / "result.pkl")
    with open(old, "wb") as f:
        pickle.dump({"x": [1, 2], "s": ["a", "bc"]}, f)
    store = PickleStore()
    before = store.load(old)
    store.write_metadata(old, {"task": "t"})
    assert store.read_metadata(old) == {"task": "t"}
    assert_columns_equal(store.load(old), before)
    with open(old, "rb") as f:
        assert pickle.load(f) == {"x": [1, 2], "s": ["a", "bc"]}


def test_npz_with_metadata_still_opens_with_numpy(tmp_path):
    path = str(tmp_path / "r.npz")
    store = NpzStore()
    store.save(path, {"a": [1.0, 2.0]})
    store.write_metadata(path, {"task": "t"})
    with np.load(path) as npz:
        assert npz["a"].tolist() == [1.0, 2.0]


def test_load_metadata_of_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no result file"):
        load_metadata(str(tmp_path / "nothing.pkl"))


@pytest.mark.parametrize("store", list(STORES))
def test_psy_merge_keeps_the_metadata_of_its_inputs(tmp_path, store):
    ext = STORES[store][2]
    s = get_store(ext)
    src = tmp_path / "parts"
    src.mkdir()
    s.save(str(src / f"0{ext}"), {"x": [0, 1]})
    s.write_metadata(str(src / f"0{ext}"), {"task": "a"})
    s.save(str(src / f"1{ext}"), {"x": [2]})
    s.write_metadata(str(src / f"1{ext}"), {"task": "a"})
    merged = str(tmp_path / f"merged{ext}")
    ok(psy("merge", str(src), merged, cwd=tmp_path))
    assert load_metadata(merged) == {"task": "a"}
    # Inputs that disagree are all kept.
    s.write_metadata(str(src / f"1{ext}"), {"task": "b"})
    ok(psy("merge", "--overwrite", str(src), merged, cwd=tmp_path))
    assert load_metadata(merged) == {"task": "a", "merged_from": [{"task": "b"}]}


def test_write_merged_writes_given_metadata(tmp_path):
    store = PickleStore()
    part = str(tmp_path / "0.pkl")
    store.save(part, {"x": [1]})
    dest = str(tmp_path / "r.pkl")
    write_merged(store, dest, [part], ["x"], metadata={"task": "z"})
    assert store.read_metadata(dest) == {"task": "z"}
    # Without inputs that carry metadata and none given: none.
    write_merged(store, dest, [part], ["x"])
    assert store.read_metadata(dest) == {}


def test_collect_costs_little(tmp_path):
    class Task:
        name = "t"
        path = __file__
        pspace = __import__("psyrun").Param(x=list(range(10)))

    provenance.collect(Task())  # warm: the first subprocess start pays for imports
    t0 = time.perf_counter()
    for _ in range(5):
        provenance.collect(Task())
    per_call = (time.perf_counter() - t0) / 5
    print(f"provenance.collect: {per_call * 1e3:.1f} ms")
    assert per_call < 2.0


def test_importing_psyrun_does_not_import_provenance():
    code = "import sys, psyrun; print('psyrun.results.provenance' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
