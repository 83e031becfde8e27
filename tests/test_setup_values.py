"""What ``setup(proc_id)`` returns is stored like a parameter (issue 12.1)."""

from __future__ import annotations

import pytest
from e2e_helpers import (
    BACKENDS,
    STORES,
    describe,
    load_result,
    ok,
    psy,
    result_path,
    sorted_rows,
    write,
)

SETUP_TASK = """
from psyrun import Param
{store_import}
{backend_import}
pspace = Param(x=range(6))
store = {store_expr}
backend = {backend}
max_jobs = 2
{settings}

def setup(proc_id):
    return {{'offset': 10, 'label': 'run-a'}}

def execute(x, offset, label):
    return {{'y': x + offset}}
"""


def setup_task(tmp_path, store, backend, settings=""):
    store_import, store_expr, _ = STORES[store]
    backend_import, backend_expr = BACKENDS[backend]
    write(
        tmp_path / "psy-tasks" / "task_su.py",
        SETUP_TASK.format(
            store_import=store_import,
            store_expr=store_expr,
            backend_import=backend_import,
            backend=backend_expr,
            settings=settings,
        ),
    )


@pytest.mark.parametrize("store", sorted(STORES))
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_setup_values_are_stored_like_parameters(tmp_path, backend, store):
    setup_task(tmp_path, store, backend)
    ok(psy("run", cwd=tmp_path))
    data = load_result(result_path(tmp_path, "su", store), store)
    assert sorted(data) == ["label", "offset", "x", "y"]
    assert sorted_rows(data) == sorted(
        (("run-a", 10, x, x + 10) for x in range(6)), key=repr
    )


@pytest.mark.parametrize("store", sorted(STORES))
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_excluded_setup_values_are_not_stored(tmp_path, backend, store):
    setup_task(tmp_path, store, backend, settings="exclude_from_result = ['label']")
    ok(psy("run", cwd=tmp_path))
    data = load_result(result_path(tmp_path, "su", store), store)
    assert sorted(data) == ["offset", "x", "y"]
    # Continuing works: a setup value is not a parameter.
    ok(psy("run", "-c", cwd=tmp_path))


UNSTORABLE = """
from psyrun import Param
{store_import}
{backend_import}
pspace = Param(x=range(4))
store = {store_expr}
backend = {backend}
{settings}

class Context:
    pass

def setup(proc_id):
    return {{'ctx': Context()}}

def execute(x, ctx):
    return {{'y': x}}
"""


@pytest.mark.parametrize("store", ["h5", "zarr"])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_an_unstorable_setup_value_names_the_key_and_the_fix(tmp_path, backend, store):
    store_import, store_expr, _ = STORES[store]
    backend_import, backend_expr = BACKENDS[backend]
    task = tmp_path / "psy-tasks" / "task_ctx.py"

    def write_task(settings=""):
        write(
            task,
            UNSTORABLE.format(
                store_import=store_import,
                store_expr=store_expr,
                backend_import=backend_import,
                backend=backend_expr,
                settings=settings,
            ),
        )

    write_task()
    run = psy("run", cwd=tmp_path)
    assert run.returncode == 1, describe(run)
    assert "Traceback" not in run.stderr
    assert "'ctx'" in run.stderr, describe(run)
    assert "exclude_from_result" in run.stderr, describe(run)
    # The suggested fix works.
    write_task("exclude_from_result = ['ctx']")
    ok(psy("run", cwd=tmp_path))
    data = load_result(result_path(tmp_path, "ctx", store), store)
    assert sorted(data) == ["x", "y"]
