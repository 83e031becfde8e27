"""Edge cases of the ``psy`` command that a demanding user runs into.

Each test is a regression test for a bug found by trying to break ``psy``:
two runs of one task at once, Ctrl-C, merging into an existing file,
parameters left out of the result, unreadable results, empty spaces, and
settings that have no effect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cli_helpers import psy, write_task
from e2e_helpers import wait_for_rows

from psyrun.paths import TaskPaths
from psyrun.store import get_store
from psyrun.store.locking import FileLock


def paths_of(project, name, ext=".pkl"):
    return TaskPaths(name, str(project / "psy-work"), ext)


def load_result(project, name, ext=".pkl"):
    return get_store(ext).load(paths_of(project, name, ext).result)


SQUARE = """
from psyrun import Param
pspace = Param(x=range(12))
max_jobs = 3
def execute(x):
    return {'y': x * x}
"""


# -- two psy commands on one task at once -----------------------------------------


def test_run_refuses_while_another_psy_holds_the_task(project):
    """A second `psy run` must not clear the parts of a run in progress."""
    write_task(project, "square", SQUARE)
    assert psy("run", "square").exit_code == 0
    before = load_result(project, "square")
    paths = paths_of(project, "square")
    with FileLock(paths.run_lock):  # as a `psy run` still working would hold it
        for args in (["run", "square"], ["run", "-c", "square"], ["clean", "square"]):
            result = psy(*args)
            assert result.exit_code == 1, result.output
            assert "is working on this task" in result.output
            assert "Traceback" not in result.output
    # Nothing was touched: same rows, and clean did not remove them.
    after = load_result(project, "square")
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
    lock = paths_of(project, "probe").run_lock
    text = (project / "psy-tasks" / "task_probe.py").read_text()
    (project / "psy-tasks" / "task_probe.py").write_text(
        text.replace("LOCK = None", f"LOCK = {lock!r}")
    )
    assert psy("run", "probe").exit_code == 0
    assert load_result(project, "probe")["held"].tolist() == [True, True]
    # Released afterwards.
    with FileLock(lock, timeout=0):
        pass


SLOW = """
import time
import numpy as np
from psyrun import Param
{backend}
pspace = Param(a=np.arange(80))
max_jobs = 4
def execute(a):
    time.sleep(0.04)
    return {{'y': a * 2}}
"""


@pytest.mark.parametrize(
    "backend",
    ["", "from psyrun.backend import LoadBalancingBackend as backend\npool_size = 2"],
    ids=["distribute", "loadbalancing"],
)
def test_ctrl_c_then_continue_keeps_rows_once(tmp_path, backend):
    """Ctrl-C (SIGINT to the foreground group) says how to continue; -c completes."""
    (tmp_path / "psy-tasks").mkdir()
    (tmp_path / "psy-tasks" / "task_slow.py").write_text(SLOW.format(backend=backend))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONWARNINGS", None)
    cmd = [sys.executable, "-m", "psyrun.cli"]
    proc = subprocess.Popen(
        [*cmd, "run"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    # Wait until a job has written a row (not a fixed time: the machine may be
    # loaded), then press "Ctrl-C".
    log_dir = tmp_path / "psy-work" / "slow"
    wait_for_rows(log_dir, 1, proc=proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted" in out, out
    assert "psy run -c slow" in out, out
    assert "Traceback" not in out, out
    cont = subprocess.run(
        [*cmd, "run", "-c"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60
    )
    assert cont.returncode == 0, cont.stdout + cont.stderr
    result = get_store(".pkl").load(str(log_dir / "result.pkl"))
    assert sorted(result["a"].tolist()) == list(range(80))
    assert all(y == 2 * a for a, y in zip(result["a"], result["y"]))


# -- psy merge ---------------------------------------------------------------------


def _save(path, data):
    get_store(str(path)).save(str(path), data)


@pytest.mark.parametrize("ext", [".pkl", ".npz"])
def test_merge_into_existing_file_keeps_its_rows(project, ext):
    parts = project / "parts"
    parts.mkdir()
    _save(parts / f"0{ext}", {"a": [1, 2], "y": [1.0, 4.0]})
    _save(parts / f"1{ext}", {"a": [3], "y": [9.0]})
    merged = project / f"merged{ext}"
    _save(merged, {"a": [7], "y": [49.0]})
    result = psy("merge", "parts", str(merged))
    assert result.exit_code == 0, result.output
    assert "after the 1 rows it held" in result.output
    data = get_store(ext).load(str(merged))
    assert sorted(data["a"].tolist()) == [1, 2, 3, 7]
    # --overwrite replaces the file instead.
    assert psy("merge", "--overwrite", "parts", str(merged)).exit_code == 0
    assert sorted(get_store(ext).load(str(merged))["a"].tolist()) == [1, 2, 3]


def test_merge_into_a_file_of_the_directory_does_not_lose_it(project):
    """`psy merge parts parts/0.pkl` used to overwrite 0.pkl with the other files only."""
    parts = project / "parts"
    parts.mkdir()
    _save(parts / "0.pkl", {"a": [1, 2]})
    _save(parts / "1.pkl", {"a": [3]})
    assert psy("merge", "parts", str(parts / "0.pkl")).exit_code == 0
    assert sorted(get_store(".pkl").load(str(parts / "0.pkl"))["a"].tolist()) == [1, 2, 3]


def test_merge_into_unreadable_existing_file_is_refused(project):
    parts = project / "parts"
    parts.mkdir()
    _save(parts / "0.pkl", {"a": [1]})
    (project / "merged.pkl").write_bytes(b"not a pickle store file")
    result = psy("merge", "parts", "merged.pkl")
    assert result.exit_code == 1
    assert "cannot be read" in result.output
    assert "--overwrite" in result.output
    assert (project / "merged.pkl").read_bytes() == b"not a pickle store file"


# -- exclude_from_result -------------------------------------------------------------


def test_excluding_a_parameter_warns_and_continue_refuses_instead_of_duplicating(project):
    write_task(
        project,
        "excl",
        """
        from psyrun import Param
        pspace = Param(a=[1, 2, 3])
        exclude_from_result = ['a', 'not_an_output']
        def execute(a):
            return {'y': a * 10}
        """,
    )
    first = psy("run", "excl")
    assert first.exit_code == 0, first.output
    assert "exclude_from_result leaves out the parameter(s) 'a'" in first.output
    assert sorted(load_result(project, "excl")["y"].tolist()) == [10, 20, 30]
    cont = psy("run", "-c", "excl")
    assert cont.exit_code == 1
    assert "cannot continue task 'excl'" in cont.output
    assert "Traceback" not in cont.output
    # Every row once: before the fix each -c appended all rows again.
    assert sorted(load_result(project, "excl")["y"].tolist()) == [10, 20, 30]


def test_excluding_only_missing_keys_and_setup_keys_still_continues(project):
    write_task(
        project,
        "ctx",
        """
        from psyrun import Param
        pspace = Param(a=[1, 2, 3, 4])
        exclude_from_result = ['ctx', 'never_returned']
        def setup(proc_id):
            return {'ctx': object()}
        def execute(a, ctx):
            if a == 4 and not DONE:
                raise RuntimeError('not yet')
            return {'y': a, 'ctx': ctx}
        DONE = False
        """,
    )
    first = psy("run", "ctx")
    assert first.exit_code == 1
    assert "leaves out the parameter" not in first.output
    path = project / "psy-tasks" / "task_ctx.py"
    path.write_text(path.read_text().replace("DONE = False", "DONE = True"))
    assert psy("run", "-c", "ctx").exit_code == 0
    result = load_result(project, "ctx")
    assert sorted(result["a"].tolist()) == [1, 2, 3, 4]
    assert "ctx" not in result


# -- settings and psy test -------------------------------------------------------------


def test_resultfile_whose_extension_does_not_match_the_store_is_warned_about(project):
    write_task(project, "square", SQUARE + "resultfile = 'out/square.npz'\n")
    result = psy("list")
    assert result.exit_code == 0
    assert "resultfile 'square.npz' does not end in '.pkl'" in result.output
    write_task(
        project,
        "square",
        SQUARE + "from psyrun.store import NpzStore\nstore = NpzStore()\n"
        "resultfile = 'out/square.npz'\n",
    )
    assert "resultfile" not in psy("list").output


def test_pool_size_with_distribute_backend_is_warned_about(project):
    write_task(project, "pool", SQUARE + "pool_size = 4\n")
    result = psy("list")
    assert result.exit_code == 0
    assert "pool_size = 4 is used only by LoadBalancingBackend" in result.output
    write_task(
        project,
        "pool",
        SQUARE + "from psyrun.backend import LoadBalancingBackend\n"
        "backend = LoadBalancingBackend\npool_size = 2\n",
    )
    assert "pool_size" not in psy("list").output


def test_psy_test_names_a_setup_that_returns_no_dict(project):
    write_task(
        project,
        "setup",
        """
        from psyrun import Param
        pspace = Param(a=[1])
        def setup(proc_id):
            return [proc_id]
        def execute(a):
            return {'y': a}
        """,
    )
    result = psy("test", "setup")
    assert result.exit_code == 1
    assert "setup(0) returned list; it must return a dict" in result.output


# -- unreadable results ---------------------------------------------------------------


def test_unreadable_result_is_reported_and_never_replaced(project):
    write_task(project, "square", SQUARE)
    assert psy("run", "square").exit_code == 0
    result_file = paths_of(project, "square").result
    with open(result_file, "wb") as f:
        f.write(b"garbage")
    status = psy("status", "square")
    assert "skipping unreadable file" in status.output
    assert result_file in status.output
    cont = psy("run", "-c", "square")
    assert cont.exit_code == 1
    assert "cannot read the existing results" in cont.output
    with open(result_file, "rb") as f:
        assert f.read() == b"garbage"


# -- small and empty spaces ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["DistributeBackend", "LoadBalancingBackend"])
@pytest.mark.parametrize("space", ["Param()", "Param(a=[1, 2]) - Param(a=[1, 2])"])
def test_empty_space_runs_and_lists_no_process_job(project, backend, space):
    write_task(
        project,
        "empty",
        f"""
        from psyrun import Param
        from psyrun.backend import {backend}
        backend = {backend}
        pspace = {space}
        def execute(**kw):
            return {{'y': 1}}
        """,
    )
    first = psy("run", "empty")
    assert first.exit_code == 0, first.output
    assert "process" not in first.output
    again = psy("run", "empty")
    assert again.output.split() == ["-", "empty:split", "-", "empty:merge"]
    assert psy("run", "-c", "empty").exit_code == 0
    assert "empty: 0 out of 0 rows completed" in psy("status", "empty").output
    assert "nothing to test" in psy("test", "empty").output


@pytest.mark.parametrize("backend", ["DistributeBackend", "LoadBalancingBackend"])
def test_more_jobs_and_items_than_rows(project, backend):
    write_task(
        project,
        "one",
        f"""
        from psyrun import Param
        from psyrun.backend import {backend}
        backend = {backend}
        pspace = Param(a=[5])
        max_jobs = 50
        min_items = 1000
        def execute(a):
            return {{'y': a * 2}}
        """,
    )
    result = psy("run", "one")
    assert result.exit_code == 0, result.output
    assert result.output.count(":process:") == 1
    result = load_result(project, "one")
    assert result["a"].tolist() == [5]
    assert result["y"].tolist() == [10]


# -- awkward parameter values with -c, every store ---------------------------------------


@pytest.mark.parametrize("ext", [".pkl", ".npz", ".h5", ".zarr"])
def test_str_nan_bool_parameters_continue_without_duplicates(project, ext):
    pytest.importorskip({".h5": "tables", ".zarr": "zarr"}.get(ext, "numpy"))
    store = type(get_store(ext)).__name__
    write_task(
        project,
        "odd",
        f"""
        import numpy as np
        from psyrun import Param
        from psyrun.store import {store}
        store = {store}()
        max_jobs = 2
        pspace = Param(s=['x', 'y y', ''], f=[np.nan, 1.5, -0.0], b=[True, False, True]) * Param(
            n=[1, 2])
        def execute(s, f, b, n):
            if s == 'y y' and n == 2 and not FIXED:
                raise RuntimeError('boom')
            return {{'out': len(s) + n}}
        FIXED = False
        """,
    )
    assert psy("run", "odd").exit_code == 1
    assert "5 out of 6 rows completed" in psy("status", "odd").output
    path = project / "psy-tasks" / "task_odd.py"
    path.write_text(path.read_text().replace("FIXED = False", "FIXED = True"))
    for _ in range(2):  # a second -c finds nothing missing
        assert psy("run", "-c", "odd").exit_code == 0
    assert "6 out of 6 rows completed" in psy("status", "odd").output
    result = load_result(project, "odd", ext)
    rows = sorted(zip(result["s"].tolist(), result["n"].tolist()))
    assert rows == sorted((s, n) for s in ["x", "y y", ""] for n in (1, 2))
    assert int(np.isnan(result["f"].astype(float)).sum()) == 2


def test_task_names_with_dashes_dots_and_paths_with_spaces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    taskdir = tmp_path / "my tasks"
    taskdir.mkdir()
    for name in ("my-task", "my_task", "my.task"):
        (taskdir / f"task_{name}.py").write_text(
            textwrap.dedent(
                f"""
                from psyrun import Param
                pspace = Param(a=[1, 2, 3])
                workdir = 'work dir/with space'
                resultfile = 'not yet/sub dir/{name}.pkl'
                def execute(a):
                    return {{'y': a}}
                """
            )
        )
    result = psy("run", "--taskdir", str(taskdir))
    assert result.exit_code == 0, result.output
    for name in ("my-task", "my_task", "my.task"):
        data = get_store(".pkl").load(str(tmp_path / "not yet" / "sub dir" / f"{name}.pkl"))
        assert data["y"].tolist() == [1, 2, 3]
    assert psy("clean", "--taskdir", str(taskdir), "my.task").exit_code == 0
    status = psy("status", "--taskdir", str(taskdir)).output
    assert "my.task: 0 out of 3 rows completed" in status
    assert "my-task: 3 out of 3 rows completed" in status


def test_workdir_below_a_file_gives_one_line_errors(project):
    (project / "afile").write_text("")
    write_task(project, "w", SQUARE + "workdir = 'afile/sub'\n")
    run = psy("run", "w")
    assert run.exit_code == 1
    assert "Not a directory" in run.output
    assert "workdir" in run.output
    for command in ("status", "clean", "kill"):
        result = psy(command, "w")
        assert "Traceback" not in result.output, (command, result.output)
        assert result.exit_code == 0, (command, result.output)


@pytest.mark.parametrize("backend", ["DistributeBackend", "LoadBalancingBackend"])
@pytest.mark.parametrize("ext", [".h5", ".zarr"])
def test_rows_without_an_array_output_are_padded_in_every_backend(project, backend, ext):
    """A row whose execute omits an array output reads as NaN padding, not an object."""
    store = {".h5": "H5Store", ".zarr": "ZarrStore"}[ext]
    module = {".h5": "h5", ".zarr": "zarr"}[ext]
    write_task(
        project,
        "ragged",
        f"""
        import numpy as np
        from psyrun import Param
        from psyrun.backend import {backend}
        from psyrun.store.{module} import {store}

        pspace = Param(a=np.arange(6))
        backend = {backend}
        store = {store}()
        max_jobs = 3

        def execute(a):
            return {{}} if a == 0 else {{'v': np.arange(a, dtype=float)}}
        """,
    )
    result = psy("run", "ragged")
    assert result.exit_code == 0, result.output
    data = load_result(project, "ragged", ext)
    order = np.argsort(data["a"])
    v = np.asarray(data["v"])[order]
    assert v.dtype.kind == "f"
    assert v.shape == (6, 5)
    assert np.isnan(v[0]).all()
    np.testing.assert_array_equal(v[5], np.arange(5.0))
    assert np.isnan(v[2, 2:]).all()


@pytest.mark.parametrize("backend", ["DistributeBackend", "LoadBalancingBackend"])
def test_a_failing_row_does_not_make_the_others_run_twice(project, backend):
    calls = project / "calls.txt"
    write_task(
        project,
        "flaky",
        f"""
        from psyrun import Param
        from psyrun.backend import {backend}

        pspace = Param(x=range(20))
        backend = {backend}
        max_jobs = 1

        def execute(x):
            with open({str(calls)!r}, 'a') as f:
                f.write(f'{{x}}\\n')
            if x == 13:
                raise ValueError('thirteen')
            return {{'y': x * x}}
        """,
    )
    result = psy("run", "flaky")
    assert result.exit_code == 1
    evaluated = [int(line) for line in calls.read_text().split()]
    assert sorted(evaluated) == list(range(20))
    data = load_result(project, "flaky")
    assert sorted(data["x"]) == [x for x in range(20) if x != 13]
    assert all(y == x * x for x, y in zip(data["x"], data["y"]))
