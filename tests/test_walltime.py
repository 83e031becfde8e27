"""Walltime-aware process jobs (psyrun.run.walltime): stop before the limit, end as partial."""

from __future__ import annotations

import json
import os
import time

import pytest
from psy_helpers import describe, ok, psy, task_paths, task_result, write_task

from psyrun.run.walltime import (
    LIMIT_ENV,
    JobPartial,
    Walltime,
    job_deadline,
    limit_seconds,
    read_partial,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1:00", 60),  # squeue %L: M:SS
        ("59", 59 * 60),  # a plain number is minutes, as sbatch reads it
        ("1:02:03", 3723),
        ("2-01:00:00", 2 * 86400 + 3600),
        ("1-2", 86400 + 7200),
        ("15m", 900),
        ("1h30m", 5400),
        (90, 5400),
    ],
)
def test_limit_seconds_reads_slurm_and_setting_forms(text, seconds):
    assert limit_seconds(text) == seconds


@pytest.mark.parametrize("text", ["UNLIMITED", "INVALID", "NOT_SET", "", None, True, "soon"])
def test_limit_seconds_is_none_for_no_limit(text):
    assert limit_seconds(text) is None


class _Task:
    def __init__(self, **scheduler_args):
        self.scheduler_args = scheduler_args
        self.walltime_margin = 3.0


def test_deadline_sources_in_order():
    started = 1000.0
    # The environment variable wins over everything else.
    env = {LIMIT_ENV: "30", "SLURM_JOB_ID": "1", "SLURM_JOB_END_TIME": "5000"}
    assert job_deadline(_Task(timelimit="1:00:00"), started, env) == (1030.0, f"{LIMIT_ENV}=30")
    # Slurm's own end time next.
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_END_TIME": "5000"}
    assert job_deadline(_Task(timelimit="1:00:00"), started, env)[0] == 5000.0
    # Then the task's timelimit, from the job's start.
    assert job_deadline(_Task(timelimit="15m"), started, {})[0] == started + 900
    # A timelimit that depends on the job's name, or none: no limit known.
    assert job_deadline(_Task(timelimit=lambda name: "1:00"), started, {}) is None
    assert job_deadline(_Task(), started, {}) is None


def test_rows_fit_before_the_deadline_with_the_margin():
    w = Walltime(deadline=100.0, source="test", min_margin=5.0)
    # Nothing known: the margin alone must be left.
    assert w.rows_that_fit(8, now=90.0) == 8
    assert w.rows_that_fit(8, now=95.0) == 0
    w.rows_done(4, 4.0)  # 1 s a row; the slowest row so far: 1 s
    assert w.margin() == 5.0
    assert w.rows_that_fit(100, now=80.0) == 15  # 100 - 5 - 80 = 15 s
    w.rows_done(1, 4.0)  # one slow row: the margin grows to twice the slowest row
    assert w.margin() == 8.0
    assert w.rows_that_fit(100, now=80.0) == 7  # 12 s left, 8 s / 5 rows = 1.6 s a row
    w.flushed(6.0)  # a slow flush: the margin covers two of them
    assert w.margin() == 12.0
    assert w.rows_that_fit(100, now=89.0) == 0


def test_partial_marker_says_what_was_done():
    w = Walltime(deadline=100.0, source="PSYRUN_TIME_LIMIT=100", min_margin=5.0)
    info = json.loads(JobPartial(7, 13, w, failed=2).marker_text())
    assert info["state"] == "partial"
    assert (info["evaluated"], info["left"], info["failed"]) == (7, 13, 2)
    assert "13 left" in info["message"]


SLOW_TASK = """
import time
from psyrun import Param
{imports}
pspace = Param(x=list(range({n})))
max_jobs = 2
walltime_margin = 0.3
{settings}

def execute(x):
    time.sleep({row})
    return {{"y": x * x}}
"""


@pytest.mark.parametrize("backend", ["distribute", "loadbalancing"])
def test_job_stops_before_its_limit_then_continues_every_row_once(tmp_path, monkeypatch, backend):
    imports, settings = "", ""
    if backend == "loadbalancing":
        imports = "from psyrun import LoadBalancingBackend"
        settings = "backend = LoadBalancingBackend\npool_size = 2"
    n, row, limit = 40, 0.05, 0.8
    write_task(
        tmp_path, "slow", SLOW_TASK.format(imports=imports, settings=settings, n=n, row=row)
    )
    monkeypatch.setenv(LIMIT_ENV, str(limit))
    started = time.time()
    first = ok(psy("run", "slow", cwd=tmp_path))
    # Every process job stopped on its own before its limit (the whole run took less
    # than the limit plus the split and merge jobs), as partial, not failed.
    assert "stopped before their time limit" in first.stderr, describe(first)
    assert time.time() - started < 3 * limit + 2
    paths = task_paths(tmp_path, "slow")
    markers = sorted(e for e in os.listdir(paths.status_dir) if e.endswith(".partial"))
    assert markers
    assert not [e for e in os.listdir(paths.status_dir) if e.endswith(".failed")]
    infos = [read_partial(os.path.join(paths.status_dir, m)) for m in markers]
    done = len(task_result(tmp_path, "slow")["x"])
    assert 0 < done < n
    assert sum(i["evaluated"] for i in infos) == done
    status = ok(psy("status", "slow", cwd=tmp_path))
    assert f"{done} out of {n} rows completed" in status.stdout
    assert "partial, not failed" in status.stdout
    # The next rounds evaluate the rest; no row twice.
    for _ in range(20):
        if "stopped before" not in ok(psy("run", "-c", "slow", cwd=tmp_path)).stderr:
            break
    result = task_result(tmp_path, "slow")
    assert sorted(int(x) for x in result["x"]) == list(range(n))


def test_without_a_limit_nothing_changes(tmp_path, monkeypatch):
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    for name in ("SLURM_JOB_ID", "JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    write_task(tmp_path, "slow", SLOW_TASK.format(imports="", settings="", n=6, row=0.0))
    out = ok(psy("run", "slow", cwd=tmp_path))
    assert "stopped before" not in out.output
    assert sorted(int(x) for x in task_result(tmp_path, "slow")["x"]) == list(range(6))
