"""End to end: ``psy run -c`` after the space grew and after a job crashed.

Every execution is counted through a side file (see
``e2e_helpers.counting_task``), so the tests see which rows a continued run
evaluated, not only what ended up in the result file.
"""

from __future__ import annotations

import os

import pytest
from e2e_helpers import (
    BACKENDS,
    STORES,
    age_files,
    calls,
    counting_task,
    describe,
    job_marks,
    load_result,
    ok,
    psy,
    result_path,
    sorted_rows,
    square_rows,
    status_counts,
    write,
)

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
    ok(psy("run", cwd=tmp_path))
    assert calls(side) == dict.fromkeys(range(10), 1)

    age_files(tmp_path)
    values = [*range(10), *NEW_VALUES]
    write(task, counting_task(side, values, store=store, backend=backend, settings=settings))

    status = ok(psy("status", "-v", "grow", cwd=tmp_path))
    assert status_counts(status.stdout) == [(10, 13)], describe(status)
    for value in NEW_VALUES:
        assert str(value) in status.stdout, f"status -v must list x={value}\n{describe(status)}"

    cont = ok(psy("run", "-c", cwd=tmp_path))
    assert "." in {m for m, _ in job_marks(cont.stdout)}, describe(cont)
    assert calls(side) == {**dict.fromkeys(range(10), 1), **dict.fromkeys(NEW_VALUES, 1)}
    result = load_result(result_path(tmp_path, "grow", store), store)
    assert sorted_rows(result) == square_rows(values)
    status = ok(psy("status", "grow", cwd=tmp_path))
    assert status_counts(status.stdout) == [(13, 13)], describe(status)

    # Continuing a complete task evaluates nothing.
    ok(psy("run", "-c", cwd=tmp_path))
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
    first = psy("run", cwd=tmp_path)  # may fail: a job died
    assert marker.exists(), f"the crash row was never reached\n{describe(first)}"
    first_calls = calls(side)
    assert crash_row not in first_calls

    cont = ok(psy("run", "-c", cwd=tmp_path))
    rerun = calls(side) - first_calls
    assert rerun[crash_row] == 1, f"{rerun}\n{describe(cont)}"
    assert sum(rerun.values()) < n, f"nothing of the first run was kept: {rerun}"
    if backend == "distribute":
        # 12 rows over 4 jobs: only job 3 (rows 9-11) died; the others' parts are kept.
        assert set(rerun) <= {9, 10, 11}, f"finished jobs were rerun: {rerun}"

    result = load_result(result_path(tmp_path, "crashy", store), store)
    assert sorted_rows(result) == square_rows(range(n)), "rows missing or duplicated"
    status = ok(psy("status", "crashy", cwd=tmp_path))
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
    psy("run", cwd=tmp_path)
    assert marker.exists()
    ok(psy("run", "-c", cwd=tmp_path))
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
    psy("run", cwd=tmp_path)
    for _ in crash_rows:
        psy("run", "-c", cwd=tmp_path)
    final = ok(psy("run", "-c", cwd=tmp_path))
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
    ok(psy("run", cwd=tmp_path))
    assert calls(side) == {110: 1, 220: 1}
    age_files(tmp_path)
    write(task, source("Param(a=[1, 2]) * Param(b=[10, 20])"))
    status = ok(psy("status", "pairs", cwd=tmp_path))
    assert status_counts(status.stdout) == [(2, 4)], describe(status)
    ok(psy("run", "-c", cwd=tmp_path))
    assert calls(side) == {110: 1, 220: 1, 120: 1, 210: 1}
    result = load_result(result_path(tmp_path, "pairs", store), store)
    expected = {"a": [1, 1, 2, 2], "b": [10, 20, 10, 20], "y": [10, 20, 20, 40]}
    assert sorted_rows(result) == sorted_rows(expected)
