"""End to end: ``psy run -c`` after the space grew and after a job crashed.

Every execution is counted through a side file (see
``e2e_helpers.counting_task``), so the tests see which rows a continued run
evaluated, not only what ended up in the result file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from e2e_helpers import (
    BACKENDS,
    STORES,
    age_files,
    calls,
    counting_task,
    job_marks,
    load_result,
    result_path,
    sorted_rows,
    square_rows,
    status_counts,
    wait_for_rows,
    write,
)
from psy_helpers import describe, ok, psy, task_result, write_task

from psyrun.store import get_store

ALL_STORES = list(STORES)
ALL_BACKENDS = list(BACKENDS)
MAX_JOBS = {"distribute": 4, "loadbalancing": 2}

#: Values added to the space after the first run; distinctive, so that they can
#: be recognised in ``psy status -v`` output.
NEW_VALUES = [90017, 90023, 90031]


@pytest.mark.parametrize("store", ALL_STORES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_continue_after_adding_rows_evaluates_only_new_rows(tmp_path, backend, store):
    side = tmp_path / "calls.txt"
    task = tmp_path / "psy-tasks" / "task_grow.py"
    settings = f"max_jobs = {MAX_JOBS[backend]}"
    write(task, counting_task(side, range(10), store=store, backend=backend, settings=settings))
    ok(psy("run", cwd=tmp_path, subprocess=True))
    assert calls(side) == dict.fromkeys(range(10), 1)

    age_files(tmp_path)
    values = [*range(10), *NEW_VALUES]
    write(task, counting_task(side, values, store=store, backend=backend, settings=settings))

    status = ok(psy("status", "-v", "grow", cwd=tmp_path, subprocess=True))
    assert status_counts(status.stdout) == [(10, 13)], describe(status)
    for value in NEW_VALUES:
        assert str(value) in status.stdout, f"status -v must list x={value}\n{describe(status)}"

    cont = ok(psy("run", "-c", cwd=tmp_path, subprocess=True))
    assert "." in {m for m, _ in job_marks(cont.stdout)}, describe(cont)
    assert calls(side) == {**dict.fromkeys(range(10), 1), **dict.fromkeys(NEW_VALUES, 1)}
    result = load_result(result_path(tmp_path, "grow", store), store)
    assert sorted_rows(result) == square_rows(values)
    status = ok(psy("status", "grow", cwd=tmp_path, subprocess=True))
    assert status_counts(status.stdout) == [(13, 13)], describe(status)

    # Continuing a complete task evaluates nothing.
    ok(psy("run", "-c", cwd=tmp_path, subprocess=True))
    assert sum(calls(side).values()) == 13
    assert sorted_rows(load_result(result_path(tmp_path, "grow", store), store)) == square_rows(
        values
    )


def crash_source(marker, row: int, how: str) -> str:
    """Code for execute: the first time `row` comes up, die without any cleanup."""
    # kill9-parent also kills the process that started the job (psy itself with the
    # local scheduler), guarded so that it can never hit the test process.
    parent = (
        f"if os.getppid() != {os.getpid()} and b'psy' in "
        "open(f'/proc/{os.getppid()}/cmdline', 'rb').read():\n"
        "                os.kill(os.getppid(), signal.SIGKILL)\n"
        "            "
    )
    death = {
        "kill9": "os.kill(os.getpid(), signal.SIGKILL)",
        "exit": "os._exit(3)",
        "kill9-parent": parent + "os.kill(os.getpid(), signal.SIGKILL)",
    }[how]
    return f"""
        if x == {row} and not os.path.exists({str(marker)!r}):
            open({str(marker)!r}, "w").close()
            {death}
        """


CRASH_CASES = [
    *[(backend, store, "kill9") for backend in ALL_BACKENDS for store in ALL_STORES],
    *[(backend, "pickle", "exit") for backend in ALL_BACKENDS],
    *[(backend, "npz", "kill9-parent") for backend in ALL_BACKENDS],
]


@pytest.mark.parametrize(("backend", "store", "how"), CRASH_CASES)
def test_continue_after_crash_gives_every_row_once(tmp_path, backend, store, how):
    side = tmp_path / "calls.txt"
    marker = tmp_path / "crashed-once"
    n, crash_row = 12, 10
    write(
        tmp_path / "psy-tasks" / "task_crashy.py",
        counting_task(
            side,
            range(n),
            store=store,
            backend=backend,
            settings=f"max_jobs = {MAX_JOBS[backend]}",
            before_record=crash_source(marker, crash_row, how),
        ),
    )
    first = psy("run", cwd=tmp_path, subprocess=True)  # may fail: a job died
    assert marker.exists(), f"the crash row was never reached\n{describe(first)}"
    first_calls = calls(side)
    if backend == "distribute":
        assert crash_row not in first_calls

    cont = ok(psy("run", "-c", cwd=tmp_path, subprocess=True))
    rerun = calls(side) - first_calls
    # The killed evaluation is done once more: by `-c`, or (LoadBalancing) already
    # in the first run by a worker that took over the dead worker's claim.
    assert calls(side)[crash_row] == 1, f"{rerun}\n{describe(cont)}"
    assert sum(rerun.values()) < n, f"nothing of the first run was kept: {rerun}"
    if backend == "distribute":
        # 12 rows over 4 jobs: only job 3 (rows 9-11) died; the others' parts are kept.
        assert set(rerun) <= {9, 10, 11}, f"finished jobs were rerun: {rerun}"

    result = load_result(result_path(tmp_path, "crashy", store), store)
    assert sorted_rows(result) == square_rows(range(n)), "rows missing or duplicated"
    status = ok(psy("status", "crashy", cwd=tmp_path, subprocess=True))
    assert status_counts(status.stdout) == [(n, n)], describe(status)


@pytest.mark.parametrize("store", ["pickle", "h5"])
def test_continue_after_crash_in_a_load_balancing_pool(tmp_path, store):
    """One of two pool workers is killed; the other goes on, -c fills the gap."""
    side = tmp_path / "calls.txt"
    marker = tmp_path / "crashed-once"
    n = 40
    write(
        tmp_path / "psy-tasks" / "task_pool.py",
        counting_task(
            side,
            range(n),
            store=store,
            backend="loadbalancing",
            settings="max_jobs = 1\npool_size = 2",
            before_record=crash_source(marker, 17, "kill9"),
        ),
    )
    psy("run", cwd=tmp_path, subprocess=True)
    assert marker.exists()
    ok(psy("run", "-c", cwd=tmp_path, subprocess=True))
    result = load_result(result_path(tmp_path, "pool", store), store)
    assert sorted_rows(result) == square_rows(range(n))
    assert calls(side)[17] == 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_repeated_crashes_then_continue(tmp_path, backend):
    """Several rows crash on separate runs; each -c makes progress and ends exact."""
    side = tmp_path / "calls.txt"
    n = 30
    crash_rows = [4, 13, 22, 29]
    before = "\n".join(
        crash_source(tmp_path / f"crashed-{row}", row, "kill9") for row in crash_rows
    )
    write(
        tmp_path / "psy-tasks" / "task_many.py",
        counting_task(
            side,
            range(n),
            store="h5",
            backend=backend,
            settings="max_jobs = 5",
            before_record=before,
        ),
    )
    psy("run", cwd=tmp_path, subprocess=True)
    for _ in crash_rows:
        psy("run", "-c", cwd=tmp_path, subprocess=True)
    final = ok(psy("run", "-c", cwd=tmp_path, subprocess=True))
    for row in crash_rows:
        assert (tmp_path / f"crashed-{row}").exists(), describe(final)
    result = load_result(result_path(tmp_path, "many", "h5"), "h5")
    assert sorted_rows(result) == square_rows(range(n))


@pytest.mark.parametrize(("backend", "store"), [("distribute", "pickle"), ("loadbalancing", "h5")])
def test_continue_matches_whole_rows_not_single_keys(tmp_path, backend, store):
    """(1, 20) and (2, 10) are new although each of their values was seen before."""
    side = tmp_path / "calls.txt"
    task = tmp_path / "psy-tasks" / "task_pairs.py"
    store_import, store_expr, _ = STORES[store]
    backend_import, backend_expr = BACKENDS[backend]

    def source(space):
        return f"""
            from psyrun import Param
            {store_import}
            {backend_import}

            pspace = {space}
            store = {store_expr}
            backend = {backend_expr}
            max_jobs = 2


            def execute(a, b):
                with open({str(side)!r}, "a") as f:
                    f.write(f"{{a * 100 + b}}\\n")
                return {{"y": a * b}}
            """

    write(task, source("Param(a=[1, 2], b=[10, 20])"))
    ok(psy("run", cwd=tmp_path, subprocess=True))
    assert calls(side) == {110: 1, 220: 1}
    age_files(tmp_path)
    write(task, source("Param(a=[1, 2]) * Param(b=[10, 20])"))
    status = ok(psy("status", "pairs", cwd=tmp_path, subprocess=True))
    assert status_counts(status.stdout) == [(2, 4)], describe(status)
    ok(psy("run", "-c", cwd=tmp_path, subprocess=True))
    assert calls(side) == {110: 1, 220: 1, 120: 1, 210: 1}
    result = load_result(result_path(tmp_path, "pairs", store), store)
    expected = {"a": [1, 1, 2, 2], "b": [10, 20, 10, 20], "y": [10, 20, 20, 40]}
    assert sorted_rows(result) == sorted_rows(expected)


# -- Ctrl-C then -c, awkward parameter values with -c in every store ---------------------


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
    result = task_result(project, "odd", ext)
    rows = sorted(zip(result["s"].tolist(), result["n"].tolist()))
    assert rows == sorted((s, n) for s in ["x", "y y", ""] for n in (1, 2))
    assert int(np.isnan(result["f"].astype(float)).sum()) == 2
