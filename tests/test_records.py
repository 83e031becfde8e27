"""Per-row records (the ``record`` task setting): psy_duration, psy_host, psy_job, psy_finished."""

from __future__ import annotations

import datetime
import re
import socket
import time

import numpy as np
import pytest
from e2e_helpers import BACKENDS, STORES, load_result, ok, psy, result_path, write

TASK = """
import time
import numpy as np
from psyrun import Param
{backend_import}
{store_import}

pspace = Param(x=np.arange(12))
backend = {backend}
store = {store}
max_jobs = 2
vectorized = {vectorized}
block_size = 4
record = {record!r}


def execute(x):
    # Row 7 is the expensive corner of this sweep.
    if {vectorized}:
        if (x == 7).any():
            time.sleep(0.4)
        return {{"y": x * 2}}
    if x == 7:
        time.sleep(0.4)
    return {{"y": x * 2}}
"""

ALL = ["duration", "host", "job", "finished"]


def task_source(store, backend, vectorized=False, record=ALL, extra=""):
    b_import, b_value = BACKENDS[backend]
    s_import, s_value, _ = STORES[store]
    source = TASK.format(
        backend_import=b_import,
        backend=b_value,
        store_import=s_import,
        store=s_value,
        vectorized=vectorized,
        record=record,
    )
    return source + extra


def utc(text: str) -> float:
    return datetime.datetime.fromisoformat(str(text)).timestamp()


@pytest.mark.parametrize("vectorized", [False, True])
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("store", list(STORES))
def test_records_for_every_store_and_backend(tmp_path, store, backend, vectorized):
    write(tmp_path / "psy-tasks" / "task_sq.py", task_source(store, backend, vectorized))
    before = time.time()
    ok(psy("run", "sq", cwd=tmp_path))
    after = time.time()
    data = load_result(result_path(tmp_path, "sq", store), store)
    assert sorted(data) == ["psy_duration", "psy_finished", "psy_host", "psy_job", "x", "y"]
    order = np.argsort(data["x"])
    duration = np.asarray(data["psy_duration"], dtype=float)[order]
    assert data["psy_duration"].dtype.kind == "f"
    assert (duration >= 0).all()
    slow = 7
    if vectorized:
        # One time per block (at most 4 rows), divided by its rows: the rows
        # that shared row 7's block share its duration, and they add up to the sleep.
        block = duration == duration[slow]
        assert 1 <= block.sum() <= 4
        assert duration[block].sum() >= 0.4
        assert duration[~block].max() < 0.1
    else:
        assert duration[slow] >= 0.4
        assert np.delete(duration, slow).max() < 0.2
    assert set(data["psy_host"].tolist()) == {socket.gethostname()}
    for job in data["psy_job"].tolist():
        assert re.fullmatch(r"sq:process:\d+", job), job
    finished = [utc(t) for t in data["psy_finished"].tolist()]
    assert all(before - 1 <= t <= after + 1 for t in finished)


def test_a_subset_adds_only_those_columns(tmp_path):
    write(
        tmp_path / "psy-tasks" / "task_sq.py",
        task_source("pickle", "distribute", record=["host"]),
    )
    ok(psy("run", "sq", cwd=tmp_path))
    data = load_result(result_path(tmp_path, "sq"), "pickle")
    assert sorted(data) == ["psy_host", "x", "y"]


def test_no_record_means_results_as_before(tmp_path):
    write(tmp_path / "psy-tasks" / "task_sq.py", task_source("pickle", "distribute", record=[]))
    ok(psy("run", "sq", cwd=tmp_path))
    assert sorted(load_result(result_path(tmp_path, "sq"), "pickle")) == ["x", "y"]


def test_a_parameter_named_like_a_record_column_is_refused_before_running(tmp_path):
    source = task_source("pickle", "distribute").replace(
        "pspace = Param(x=np.arange(12))", "pspace = Param(x=np.arange(12), psy_host=1)"
    )
    source = source.replace("def execute(x):", "def execute(x, psy_host):")
    write(tmp_path / "psy-tasks" / "task_sq.py", source)
    result = psy("run", "sq", cwd=tmp_path)
    assert result.returncode != 0
    assert "record adds the column(s) 'psy_host'" in result.stdout + result.stderr
    assert not (tmp_path / "psy-work" / "sq").exists()


def test_an_output_named_like_a_record_column_is_a_clear_error(tmp_path):
    source = task_source("pickle", "distribute").replace(
        'return {"y": x * 2}', 'return {"y": x * 2, "psy_duration": 1.0}'
    )
    write(tmp_path / "psy-tasks" / "task_sq.py", source)
    result = psy("run", "sq", cwd=tmp_path)
    assert result.returncode != 0
    logs = "".join(p.read_text() for p in (tmp_path / "psy-work" / "sq").glob("*.log"))
    assert "returned 'psy_duration', which the task's record setting adds" in (
        logs + result.stdout + result.stderr
    )
    assert not result_path(tmp_path, "sq").exists()


def test_unknown_record_name_is_refused(tmp_path):
    write(
        tmp_path / "psy-tasks" / "task_sq.py",
        task_source("pickle", "distribute", record=["duraton"]),
    )
    result = psy("run", "sq", cwd=tmp_path)
    assert result.returncode != 0
    assert "record names 'duraton'" in result.stdout + result.stderr
