"""Fail fast (psyrun.run.fail_fast): a run whose first rows all fail alike stops, says so once."""

from __future__ import annotations

import os

import pytest
from e2e_helpers import calls
from psy_helpers import describe, psy, task_paths, task_result, write_task

TASK = """
from psyrun import Param
{imports}
pspace = Param(x=list(range(300)))
max_jobs = 3
record = ['error']
CALLS = {calls!r}
{settings}

def execute(x):
    with open(CALLS, 'a') as f:
        f.write(f'{{x}}\\n')
    {body}
    return {{'y': x}}
"""


def make(tmp_path, body, settings="", backend=None):
    imports = ""
    if backend == "loadbalancing":
        imports = "from psyrun import LoadBalancingBackend"
        settings += "\nbackend = LoadBalancingBackend\npool_size = 2"
    side = tmp_path / "calls.txt"
    write_task(
        tmp_path,
        "t",
        TASK.format(imports=imports, calls=str(side), settings=settings, body=body),
    )
    return side


@pytest.mark.parametrize("backend", ["distribute", "loadbalancing"])
def test_first_rows_failing_alike_stop_the_run(tmp_path, backend):
    side = make(tmp_path, "return {'y': missing_name}", backend=backend)
    out = psy("run", "t", cwd=tmp_path)
    assert out.returncode == 1, describe(out)
    line = "fail fast: the first 20 rows all raised NameError: name 'missing_name' is not defined"
    # Said once, as one line; the other jobs say they stopped because of it.
    assert out.stderr.count(line) == 1, describe(out)
    assert "stopped because t:process:" in out.stderr
    assert "Traceback" not in out.stderr
    # Far fewer than the 300 rows ran: 20 in the job that failed fast, and at most a
    # block (or a claim) in each other job or worker before it saw the marker.
    assert sum(calls(side).values()) < 150
    assert os.path.exists(os.path.join(task_paths(tmp_path, "t").status_dir, "fail-fast"))
    # What was evaluated is on record (the merge ran): with DistributeBackend the
    # failed rows up to the stop; a LoadBalancing worker keeps the chunks it
    # finished (the chunk it stopped in stays claimed, for the next run).
    assert os.path.exists(task_paths(tmp_path, "t").result)
    if backend == "distribute":
        assert len(task_result(tmp_path, "t")["x"]) >= 20
    # A new run starts without the marker.
    write_task(
        tmp_path,
        "t",
        (tmp_path / "psy-tasks" / "task_t.py")
        .read_text()
        .replace("return {'y': missing_name}", "pass"),
    )
    again = psy("run", "-c", "t", cwd=tmp_path)
    assert again.returncode == 0, describe(again)
    assert sorted(int(x) for x in task_result(tmp_path, "t")["x"]) == list(range(300))


def test_fail_fast_zero_evaluates_every_row(tmp_path):
    side = make(tmp_path, "return {'y': missing_name}", settings="fail_fast = 0")
    out = psy("run", "t", cwd=tmp_path)
    assert out.returncode == 1
    assert "fail fast" not in out.output
    assert sum(calls(side).values()) == 300


@pytest.mark.parametrize(
    "body",
    [
        # A row that succeeds among the first ones.
        "if x % 50: raise ValueError('same')",
        # Rows that fail, each with its own message.
        "raise ValueError(f'row {x}')",
    ],
)
def test_mixed_first_rows_do_not_stop_the_run(tmp_path, body):
    side = make(tmp_path, body)
    out = psy("run", "t", cwd=tmp_path)
    assert "fail fast" not in out.output, describe(out)
    assert sum(calls(side).values()) == 300


def test_fail_fast_must_be_a_row_count(tmp_path):
    make(tmp_path, "", settings="fail_fast = -1")
    out = psy("status", "t", cwd=tmp_path)
    assert out.returncode != 0
    assert "fail_fast must be a number of rows" in out.output
    assert "Traceback" not in out.output


def test_vectorized_block_retried_row_by_row_stops_at_the_limit(tmp_path):
    side = tmp_path / "calls.txt"
    write_task(
        tmp_path,
        "v",
        f"""
        from psyrun import Param
        pspace = Param(x=list(range(5000)))
        max_jobs = 1
        vectorized = True
        CALLS = {str(side)!r}

        def execute(x):
            with open(CALLS, 'a') as f:
                f.write(f'{{len(x)}}\\n')
            raise KeyError('k')
        """,
    )
    out = psy("run", "v", cwd=tmp_path)
    assert "fail fast: the first 20 rows all raised KeyError: 'k'" in out.stderr, describe(out)
    sizes = [int(v) for v in side.read_text().split()]
    # One call with the whole block, then row by row until the 20th failure.
    assert sizes == [5000] + [1] * 20
