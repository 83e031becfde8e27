"""``psy run`` and friends as a user meets them: parallel runs, refusals, one-line errors."""

from __future__ import annotations

import pytest
from e2e_helpers import (
    BACKENDS,
    STORES,
    age_files,
    calls,
    counting_task,
    describe,
    load_result,
    ok,
    psy,
    result_path,
    sorted_rows,
    status_counts,
    write,
)
from test_e2e_run import expected_product_rows, product_task

ALL_STORES = sorted(STORES)
ALL_BACKENDS = sorted(BACKENDS)


# -- psy run -j N (LocalPool) -------------------------------------------------------


@pytest.mark.parametrize("store", ALL_STORES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_parallel_run_matches_map_pspace(tmp_path, backend, store):
    """Issue 10.1: `psy run -j 2` gives map_pspace's rows for every backend and store."""
    side = tmp_path / "calls.txt"
    write(tmp_path / "psy-tasks" / "task_prod.py", product_task(side, store, backend))
    ok(psy("run", "-j", "2", cwd=tmp_path))
    result = load_result(result_path(tmp_path, "prod", store), store)
    assert sorted_rows(result) == expected_product_rows()
    assert sum(calls(side).values()) == 12
    assert status_counts(ok(psy("status", cwd=tmp_path)).stdout) == [(12, 12)]


def test_parallel_run_of_a_cluster_task_is_refused_in_one_line(tmp_path):
    """Issue 10.1: -j with a Slurm task is refused; nothing is submitted."""
    write(
        tmp_path / "psy-tasks" / "task_cl.py",
        counting_task(
            tmp_path / "calls.txt",
            range(3),
            preamble="from psyrun.scheduler import Slurm",
            settings="scheduler = Slurm()",
        ),
    )
    refused = psy("run", "-j", "2", cwd=tmp_path)
    assert refused.returncode == 1, describe(refused)
    assert "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, describe(refused)
    assert "-j" in lines[0], describe(refused)
    assert "Slurm" in lines[0], describe(refused)
    assert not (tmp_path / "calls.txt").exists()


# -- values a store cannot hold -------------------------------------------------------

OBJECT_TASK = """
from psyrun import Param
{store_import}
CALLS = {calls!r}
pspace = Param(x=range(40))
store = {store_expr}
max_jobs = 2
{settings}

def execute(x):
    with open(CALLS, 'a') as f:
        f.write(f'{{x}}\\n')
    out = {{'y': x * x}}
    if x >= {first_object}:
        out['obj'] = {{'x': x}}
    return out
"""


def object_task(tmp_path, store, first_object=0, settings=""):
    store_import, store_expr, _ = STORES[store]
    return write(
        tmp_path / "psy-tasks" / "task_obj.py",
        OBJECT_TASK.format(
            store_import=store_import,
            store_expr=store_expr,
            calls=str(tmp_path / "calls.txt"),
            settings=settings,
            first_object=first_object,
        ),
    )


def no_temporary_names(text):
    assert ".tmp" not in text, text
    assert ".partial" not in text, text


@pytest.mark.parametrize("store", ["h5", "zarr"])
def test_an_unstorable_output_fails_the_process_job_early(tmp_path, store):
    """Issue 14.6: the first block is checked against the store inside the process job."""
    path = object_task(tmp_path, store)
    run = psy("run", cwd=tmp_path)
    assert run.returncode == 1, describe(run)
    assert "Traceback" not in run.stderr
    text = run.stdout + run.stderr
    assert "obj:process:" in run.stderr, describe(run)
    assert "'obj'" in text, describe(run)
    assert "PickleStore" in text, describe(run)
    no_temporary_names(text)
    # Early: each of the two jobs evaluated its first (one-row) block only.
    assert sum(calls(tmp_path / "calls.txt").values()) <= 2
    status = ok(psy("status", "-v", cwd=tmp_path))
    no_temporary_names(status.stdout + status.stderr)
    assert status_counts(status.stdout) == [(0, 40)], describe(status)

    # The documented fix: exclude the key, continue.
    age_files(tmp_path)
    object_task(tmp_path, store, settings="exclude_from_result = ['obj']")
    assert path.exists()
    ok(psy("run", "-c", cwd=tmp_path))
    data = load_result(result_path(tmp_path, "obj", store), store)
    assert sorted(data) == ["x", "y"]
    assert sorted(data["x"].tolist()) == list(range(40))


@pytest.mark.parametrize("store", ["h5", "zarr"])
def test_excluding_an_unstorable_key_continues_although_parts_hold_it(tmp_path, store):
    """Issue 14.6: parts written before the fix hold the column; -c drops it at the merge."""
    # The first blocks are fine, later rows carry an object: the parts hold it.
    object_task(tmp_path, store, first_object=5)
    run = psy("run", cwd=tmp_path)
    assert run.returncode == 1, describe(run)
    assert "Traceback" not in run.stderr
    text = run.stdout + run.stderr
    assert "'obj'" in text, describe(run)
    no_temporary_names(text)
    status = ok(psy("status", cwd=tmp_path))
    no_temporary_names(status.stdout + status.stderr)

    age_files(tmp_path)
    object_task(tmp_path, store, first_object=5, settings="exclude_from_result = ['obj']")
    cont = ok(psy("run", "-c", cwd=tmp_path))
    no_temporary_names(cont.stdout + cont.stderr)
    data = load_result(result_path(tmp_path, "obj", store), store)
    assert sorted(data) == ["x", "y"]
    assert sorted(data["x"].tolist()) == list(range(40))


def test_merge_of_an_object_column_into_h5_is_one_line(tmp_path):
    """Issue 14.7: psy merge DIR out.h5 refuses in one line and writes nothing."""
    from psyrun.store import PickleStore

    parts = tmp_path / "parts"
    parts.mkdir()
    PickleStore().save(str(parts / "a.pkl"), {"x": [1, 2], "obj": [{"a": 1}, {"b": 2}]})
    merged = tmp_path / "out.h5"
    refused = psy("merge", str(parts), str(merged), cwd=tmp_path)
    assert refused.returncode == 1, describe(refused)
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, describe(refused)
    assert "'obj'" in refused.stderr, describe(refused)
    assert not merged.exists()
    no_temporary_names(refused.stderr)


def test_psy_test_of_a_non_dict_return_is_one_line(tmp_path):
    """Issue 14.7: psy test says what execute returned, without a traceback."""
    write(
        tmp_path / "psy-tasks" / "task_five.py",
        """
        from psyrun import Param
        pspace = Param(x=[1, 2])
        def execute(x):
            return 5
        """,
    )
    result = psy("test", cwd=tmp_path)
    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    assert "int" in lines[0], describe(result)
    assert "dict" in lines[0], describe(result)


# -- task directories ---------------------------------------------------------------


def test_a_taskdir_without_task_files_says_so(tmp_path):
    """Issue 14.8: no task_*.py: say no task was found and that the prefix is needed."""
    write(tmp_path / "mine" / "square.py", counting_task(tmp_path / "c.txt", range(3)))
    result = psy("run", "--taskdir", "mine", cwd=tmp_path)
    assert result.returncode != 0, describe(result)
    assert "Traceback" not in result.stderr
    assert "no task found" in result.stderr, describe(result)
    assert "task_" in result.stderr, describe(result)
    assert "mine" in result.stderr, describe(result)


BROKEN = "from psyrun import Param\npspace = Param(x=[1])\nraise RuntimeError('oops')\n"


def test_naming_a_task_does_not_report_other_broken_tasks(tmp_path):
    """Issue 14.8: `psy run good` is silent about task_bad.py; `psy list` marks it broken."""
    write(tmp_path / "psy-tasks" / "task_good.py", counting_task(tmp_path / "c.txt", range(3)))
    write(tmp_path / "psy-tasks" / "task_bad.py", BROKEN)
    good = ok(psy("run", "good", cwd=tmp_path))
    assert "bad" not in good.stdout + good.stderr, describe(good)
    assert "oops" not in good.stdout + good.stderr, describe(good)
    listed = ok(psy("list", cwd=tmp_path))
    lines = listed.stdout.splitlines()
    assert lines[1] == "good", describe(listed)
    assert lines[0].startswith("bad (broken"), describe(listed)
    assert "oops" in lines[0], describe(listed)


# -- dirty results ------------------------------------------------------------------


def test_overwrite_dirty_refusal_exits_1_naming_the_change(tmp_path):
    """Issue 14.10: non-zero exit, the changed file and the ways out."""
    side = tmp_path / "calls.txt"
    dep = tmp_path / "data.txt"
    dep.write_text("1")
    settings = f"overwrite_dirty = False\nfile_dep = [{str(dep)!r}]"
    task = counting_task(side, range(4), settings=settings)
    write(tmp_path / "psy-tasks" / "task_keep.py", task)
    ok(psy("run", cwd=tmp_path))
    age_files(tmp_path)
    dep.write_text("2")
    refused = psy("run", cwd=tmp_path)
    assert refused.returncode == 1, describe(refused)
    assert "Traceback" not in refused.stderr
    assert str(dep) in refused.stderr, describe(refused)
    for way_out in ("psy run -c keep", "psy clean keep", "overwrite_dirty = True"):
        assert way_out in refused.stderr, describe(refused)
    assert calls(side) == dict.fromkeys(range(4), 1)


# -- progress and kill with ImmediateRun ----------------------------------------------


def test_kill_of_an_immediate_run_task_says_why_nothing_was_killed(tmp_path):
    """Issue 14.11: ImmediateRun queues nothing; psy kill says so."""
    write(tmp_path / "psy-tasks" / "task_sq.py", counting_task(tmp_path / "c.txt", range(3)))
    ok(psy("run", cwd=tmp_path))
    killed = ok(psy("kill", "sq", cwd=tmp_path))
    assert "killed 0 jobs" in killed.stdout
    assert "ImmediateRun" in killed.stdout, describe(killed)
    assert "queues nothing" in killed.stdout, describe(killed)
