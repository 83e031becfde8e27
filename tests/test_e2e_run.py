"""End to end: ``psy run`` on task files, for both backends and all four stores.

Every test writes task files into a temporary directory and runs the ``psy``
console script there, as a user would; see ``e2e_helpers``. Results are
compared with :func:`psyrun.map_pspace` of the same function, row order
ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

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
    write,
)
from psy_helpers import describe, ok, psy

ALL_STORES = list(STORES)
ALL_BACKENDS = list(BACKENDS)

# Jobs per backend in the matrix: distribute shares 12 rows evenly over 4 process
# jobs; load balancing starts 2 jobs that pull rows.
MAX_JOBS = {"distribute": 4, "loadbalancing": 2}


def product_task(side_file, store: str, backend: str) -> str:
    """A 4 x 3 product space with two outputs; each call appends `a` to side_file."""
    store_import, store_expr, _ = STORES[store]
    backend_import, backend_expr = BACKENDS[backend]
    return f"""
        from psyrun import Param
        {store_import}
        {backend_import}

        CALLS = {str(side_file)!r}
        pspace = Param(a=[0, 1, 2, 3]) * Param(b=[0.5, 1.5, 2.5])
        store = {store_expr}
        backend = {backend_expr}
        max_jobs = {MAX_JOBS[backend]}


        def execute(a, b):
            with open(CALLS, "a") as f:
                f.write(f"{{a}}\\n")
            return {{"s": a + b, "p": a * b}}
        """


def expected_product_rows():
    from psyrun import Param, map_pspace

    space = Param(a=[0, 1, 2, 3]) * Param(b=[0.5, 1.5, 2.5])
    return sorted_rows(map_pspace(lambda a, b: {"s": a + b, "p": a * b}, space))


def log_names(workdir: Path, task: str) -> set[str]:
    return {p.name for p in (workdir / task).glob("*.log")}


@pytest.mark.parametrize("store", ALL_STORES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_run_matches_map_pspace_then_is_up_to_date(tmp_path, backend, store):
    side = tmp_path / "calls.txt"
    write(tmp_path / "psy-tasks" / "task_prod.py", product_task(side, store, backend))

    first = ok(psy("run", cwd=tmp_path, subprocess=True))
    marks = job_marks(first.stdout)
    assert marks, f"psy run printed no '. <job>' lines\n{describe(first)}"
    assert {m for m, _ in marks} == {"."}, describe(first)
    assert all("prod" in name for _, name in marks), describe(first)

    result = result_path(tmp_path, "prod", store)
    assert result.exists(), f"no result file at {result}\n{describe(first)}"
    assert sorted_rows(load_result(result, store)) == expected_product_rows()
    assert sum(calls(side).values()) == 12, calls(side)

    logs = log_names(tmp_path / "psy-work", "prod")
    if backend == "distribute":
        expected = {"prod:split.log", "prod:merge.log"} | {
            f"prod:process:{i}.log" for i in range(4)
        }
        assert logs == expected
        names = " ".join(name for _, name in marks)
        for word in ("split", "process", "merge"):
            assert word in names, describe(first)
    else:
        assert logs, "load balancing wrote no log files"
        assert all(name.startswith("prod:") for name in logs), logs

    status = ok(psy("status", "prod", cwd=tmp_path, subprocess=True))
    assert status_counts(status.stdout) == [(12, 12)], describe(status)

    # Nothing changed: every job is skipped and nothing is evaluated again.
    second = ok(psy("run", cwd=tmp_path, subprocess=True))
    marks = job_marks(second.stdout)
    assert marks, describe(second)
    assert {m for m, _ in marks} == {"-"}, describe(second)
    assert sum(calls(side).values()) == 12, "an up-to-date run evaluated rows again"
    assert sorted_rows(load_result(result, store)) == expected_product_rows()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_changed_task_file_reruns_and_replaces_results(tmp_path, backend):
    side = tmp_path / "calls.txt"
    task = tmp_path / "psy-tasks" / "task_sq.py"
    source = counting_task(side, range(8), backend=backend, settings="max_jobs = 2")
    write(task, source)
    ok(psy("run", cwd=tmp_path, subprocess=True))
    assert calls(side) == dict.fromkeys(range(8), 1)

    age_files(tmp_path)
    write(task, source + "\n# an edit\n")
    rerun = ok(psy("run", cwd=tmp_path, subprocess=True))
    marks = job_marks(rerun.stdout)
    assert marks, describe(rerun)
    assert {m for m, _ in marks} == {"."}, describe(rerun)
    assert calls(side) == dict.fromkeys(range(8), 2), "a changed task must rerun every row"
    # A run without -c replaces the old results instead of adding to them.
    assert sorted_rows(load_result(result_path(tmp_path, "sq"), "pickle")) == square_rows(range(8))


@pytest.mark.parametrize("store", ["pickle", "h5"])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_failing_execute_logs_traceback_and_keeps_other_rows(tmp_path, backend, store):
    side = tmp_path / "calls.txt"
    flag = tmp_path / "fail-now"
    flag.touch()
    settings = "max_jobs = 4" if backend == "distribute" else "max_jobs = 2"
    before = f"""
        if x == 3 and os.path.exists({str(flag)!r}):
            raise ValueError("deliberate failure at x=3")
        """
    write(
        tmp_path / "psy-tasks" / "task_failing.py",
        counting_task(
            side, range(12), store=store, backend=backend, settings=settings, before_record=before
        ),
    )
    first = psy("run", cwd=tmp_path, subprocess=True)

    taskdir = tmp_path / "psy-work" / "failing"
    logs = {p.name: p.read_text() for p in taskdir.glob("*.log")}
    with_traceback = [n for n, text in logs.items() if "deliberate failure at x=3" in text]
    assert len(with_traceback) == 1, f"logs: {sorted(logs)}\n{describe(first)}"
    failed_log = with_traceback[0]
    assert "Traceback" in logs[failed_log]
    assert "ValueError" in logs[failed_log]
    if backend == "distribute":
        # Rows are shared out evenly: 12 rows over 4 jobs, x=3 is job 1's first row.
        assert failed_log == "failing:process:1.log"
        for i in (0, 2, 3):
            assert "Traceback" not in logs[f"failing:process:{i}.log"]

    status = ok(psy("status", "-v", "failing", cwd=tmp_path, subprocess=True))
    counts = status_counts(status.stdout)
    assert len(counts) == 1, describe(status)
    assert counts[0][1] == 12, describe(status)
    assert counts[0][0] < 12, describe(status)
    assert failed_log in status.stdout, f"status -v must name {failed_log}\n{describe(status)}"
    if backend == "distribute":
        assert "process:1" in status.stdout

    # Fix the cause and continue: the failed row runs, finished rows are kept.
    flag.unlink()
    before_continue = calls(side)
    ok(psy("run", "-c", cwd=tmp_path, subprocess=True))
    rerun = calls(side) - before_continue
    assert rerun[3] == 1, rerun
    if backend == "distribute":
        assert set(rerun) <= {3, 4, 5}, f"rows of jobs that succeeded were rerun: {rerun}"
    else:
        assert sum(rerun.values()) < 12, f"nothing of the first run was kept: {rerun}"
    result = load_result(result_path(tmp_path, "failing", store), store)
    assert sorted_rows(result) == square_rows(range(12))
    status = ok(psy("status", "failing", cwd=tmp_path, subprocess=True))
    assert status_counts(status.stdout) == [(12, 12)], describe(status)


def test_load_balancing_setup_runs_per_worker_and_is_excluded(tmp_path):
    side = tmp_path / "calls.txt"
    setups = tmp_path / "setups.txt"
    write(
        tmp_path / "psy-tasks" / "task_lb.py",
        f"""
        import threading

        from psyrun import Param
        from psyrun.backend import LoadBalancingBackend

        pspace = Param(x=list(range(20)))
        backend = LoadBalancingBackend
        max_jobs = 1
        pool_size = 2
        exclude_from_result = ["handle"]


        def setup(proc_id):
            with open({str(setups)!r}, "a") as f:
                f.write(f"{{proc_id}}\\n")
            # Not picklable: it must never reach the result file.
            return {{"handle": threading.Lock(), "offset": 1000}}


        def execute(x, handle, offset):
            assert hasattr(handle, "acquire")
            with open({str(side)!r}, "a") as f:
                f.write(f"{{x}}\\n")
            return {{"y": x * x + offset}}
        """,
    )
    ok(psy("run", cwd=tmp_path, subprocess=True))
    proc_ids = setups.read_text().split()
    assert 1 <= len(proc_ids) <= 2, proc_ids
    assert len(set(proc_ids)) == len(proc_ids), f"setup ran twice for a worker: {proc_ids}"
    assert calls(side) == dict.fromkeys(range(20), 1)
    data = load_result(result_path(tmp_path, "lb"), "pickle")
    assert "handle" not in data
    # What setup returned is stored like a parameter (as in psyrun 0.8), unless excluded.
    assert sorted(data) == ["offset", "x", "y"]
    expected = {"offset": [1000] * 20, "x": range(20), "y": [x * x + 1000 for x in range(20)]}
    assert sorted_rows(data) == sorted_rows(expected)


def test_workdir_and_resultfile_settings(tmp_path):
    side = tmp_path / "calls.txt"
    resultfile = tmp_path / "elsewhere" / "answers.h5"
    resultfile.parent.mkdir()
    write(
        tmp_path / "psy-tasks" / "task_placed.py",
        counting_task(
            side,
            range(6),
            store="h5",
            settings=f"""
                max_jobs = 2
                workdir = {str(tmp_path / "scratch")!r}
                resultfile = {str(resultfile)!r}
                """,
        ),
    )
    ok(psy("run", cwd=tmp_path, subprocess=True))
    assert resultfile.exists()
    assert sorted_rows(load_result(resultfile, "h5")) == square_rows(range(6))
    assert not (tmp_path / "psy-work").exists(), "files were written to the default workdir"
    assert log_names(tmp_path / "scratch", "placed") == {
        "placed:split.log",
        "placed:process:0.log",
        "placed:process:1.log",
        "placed:merge.log",
    }
    status = ok(psy("status", cwd=tmp_path, subprocess=True))
    assert status_counts(status.stdout) == [(6, 6)], describe(status)


def test_psy_conf_supplies_defaults_that_task_files_override(tmp_path):
    side = tmp_path / "calls.txt"
    write(
        tmp_path / "psy-tasks" / "psy-conf.py",
        """
        from psyrun.store.npz import NpzStore

        store = NpzStore()
        max_jobs = 2
        """,
    )
    write(tmp_path / "psy-tasks" / "task_plain.py", counting_task(side, range(10)))
    write(
        tmp_path / "psy-tasks" / "task_own.py",
        counting_task(tmp_path / "calls-own.txt", range(10), settings="max_jobs = 3"),
    )
    listing = ok(psy("list", cwd=tmp_path, subprocess=True))
    assert sorted(listing.stdout.split()) == ["own", "plain"], describe(listing)

    ok(psy("run", cwd=tmp_path, subprocess=True))
    work = tmp_path / "psy-work"
    for task, n_jobs in [("plain", 2), ("own", 3)]:
        result = result_path(tmp_path, task, "npz")
        assert result.exists(), f"psy-conf.py's store was not used for {task}"
        assert sorted_rows(load_result(result, "npz")) == square_rows(range(10))
        processes = {n for n in log_names(work, task) if ":process:" in n}
        assert processes == {f"{task}:process:{i}.log" for i in range(n_jobs)}


def test_process_jobs_respect_min_items(tmp_path):
    side = tmp_path / "calls.txt"
    write(
        tmp_path / "psy-tasks" / "task_few.py",
        counting_task(side, range(10), settings="max_jobs = 100\nmin_items = 4"),
    )
    ok(psy("run", cwd=tmp_path, subprocess=True))
    # ceil(10 / 4) = 3 process jobs.
    processes = {n for n in log_names(tmp_path / "psy-work", "few") if ":process:" in n}
    assert processes == {f"few:process:{i}.log" for i in range(3)}
    assert calls(side) == dict.fromkeys(range(10), 1)


def test_file_dep_change_reruns(tmp_path):
    side = tmp_path / "calls.txt"
    dep = tmp_path / "input.txt"
    dep.write_text("version 1\n")
    write(
        tmp_path / "psy-tasks" / "task_dep.py",
        counting_task(side, range(5), settings=f"max_jobs = 2\nfile_dep = [{str(dep)!r}]"),
    )
    ok(psy("run", cwd=tmp_path, subprocess=True))
    skipped = ok(psy("run", cwd=tmp_path, subprocess=True))
    assert {m for m, _ in job_marks(skipped.stdout)} == {"-"}, describe(skipped)
    assert calls(side) == dict.fromkeys(range(5), 1)

    age_files(tmp_path)
    dep.write_text("version 2\n")
    rerun = ok(psy("run", cwd=tmp_path, subprocess=True))
    assert "." in {m for m, _ in job_marks(rerun.stdout)}, describe(rerun)
    assert calls(side) == dict.fromkeys(range(5), 2)
    assert sorted_rows(load_result(result_path(tmp_path, "dep"), "pickle")) == square_rows(
        range(5)
    )


def test_overwrite_dirty_false_refuses_with_a_warning(tmp_path):
    side = tmp_path / "calls.txt"
    task = tmp_path / "psy-tasks" / "task_keep.py"
    settings = "max_jobs = 2\noverwrite_dirty = False"
    write(task, counting_task(side, range(6), settings=settings))
    ok(psy("run", cwd=tmp_path, subprocess=True))
    result = result_path(tmp_path, "keep")
    before = result.read_bytes()

    age_files(tmp_path)
    write(task, counting_task(side, [*range(6), 40, 41], settings=settings))
    refused = psy("run", cwd=tmp_path, subprocess=True)
    assert refused.returncode == 1, describe(refused)
    assert "Traceback" not in refused.stderr, describe(refused)
    text = refused.stdout + refused.stderr
    assert re.search(r"dirty|overwrit", text, re.IGNORECASE), describe(refused)
    assert "keep" in text, describe(refused)
    assert str(task) in text, describe(refused)
    assert calls(side) == dict.fromkeys(range(6), 1), "rows were evaluated despite the refusal"
    assert result.read_bytes() == before, "the result file was overwritten"

    # Continuing keeps the results, so it is allowed and adds only the new rows.
    ok(psy("run", "-c", cwd=tmp_path, subprocess=True))
    assert calls(side) == {**dict.fromkeys(range(6), 1), 40: 1, 41: 1}
    assert sorted_rows(load_result(result, "pickle")) == square_rows([*range(6), 40, 41])


@pytest.mark.parametrize(
    ("backend", "store"),
    [
        ("distribute", "pickle"),
        ("distribute", "npz"),
        ("loadbalancing", "pickle"),
        ("distribute", "h5"),
        ("distribute", "zarr"),
    ],
)
def test_mixed_value_types_match_map_pspace(tmp_path, backend, store):
    # A str parameter that one part of the sum lacks (issue 21, item 8): every
    # store holds the rows, with the documented fill '' for the missing names.
    if store in ("h5", "zarr"):
        pytest.importorskip({"h5": "tables", "zarr": "zarr"}[store])
    store_import, store_expr, _ = STORES[store]
    backend_import, backend_expr = BACKENDS[backend]
    write(
        tmp_path / "psy-tasks" / "task_mixed.py",
        f"""
        from psyrun import Param
        {store_import}
        {backend_import}

        pspace = (Param(name=["alpha", "beta"]) * Param(k=[1, 2, 3])) + Param(k=[7, 8])
        store = {store_expr}
        backend = {backend_expr}
        max_jobs = 3


        def execute(k, name=None):
            return {{"label": f"{{name}}-{{k}}", "twice": 2.0 * k}}
        """,
    )
    ok(psy("run", cwd=tmp_path, subprocess=True))
    from psyrun import Param, map_pspace

    space = (Param(name=["alpha", "beta"]) * Param(k=[1, 2, 3])) + Param(k=[7, 8])

    def execute(k, name=None):
        return {"label": f"{name}-{k}", "twice": 2.0 * k}

    expected = map_pspace(execute, space)
    got = load_result(result_path(tmp_path, "mixed", store), store)
    assert sorted(got) == sorted(expected)

    def normal(rows):
        # map_pspace marks the missing names with NaN; the stores fill str with ''.
        return sorted(
            (tuple("" if isinstance(v, float) and v != v else v for v in row) for row in rows),
            key=repr,
        )

    assert normal(sorted_rows(got)) == normal(sorted_rows(expected))


def test_run_named_tasks_only(tmp_path):
    write(tmp_path / "psy-tasks" / "task_one.py", counting_task(tmp_path / "c1", range(3)))
    write(tmp_path / "psy-tasks" / "task_two.py", counting_task(tmp_path / "c2", range(3)))
    out = ok(psy("run", "two", cwd=tmp_path, subprocess=True))
    assert all("two" in name for _, name in job_marks(out.stdout)), describe(out)
    assert result_path(tmp_path, "two").exists()
    assert not result_path(tmp_path, "one").exists()
    assert not calls(tmp_path / "c1")


def test_taskdir_option(tmp_path):
    write(tmp_path / "elsewhere" / "task_here.py", counting_task(tmp_path / "c", range(4)))
    ok(psy("run", "--taskdir", "elsewhere", cwd=tmp_path, subprocess=True))
    assert sorted_rows(load_result(result_path(tmp_path, "here"), "pickle")) == square_rows(
        range(4)
    )
    status = ok(
        psy("status", "--taskdir", str(tmp_path / "elsewhere"), cwd=tmp_path, subprocess=True)
    )
    assert status_counts(status.stdout) == [(4, 4)], describe(status)
