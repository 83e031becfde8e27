"""Local runs: how many process jobs the defaults give, LoadBalancing jobs with no rows
left, and process jobs that leave their syncs to the local scheduler (issue 25)."""

from __future__ import annotations

import os
import re

import pytest
from e2e_helpers import calls, counting_task, load_result, result_path, write
from psy_helpers import describe, psy

from psyrun.durability import VARIABLE, SyncBatch, deferred, deferred_syncs, fsync
from psyrun.run.defaults import local_job_cap
from psyrun.scheduler import ImmediateRun, LocalPool
from psyrun.scheduler.slurm import Slurm
from psyrun.tasks import load_tasks


def _jobs(output: str) -> list[str]:
    return re.findall(r"^\. (\S+)$", output, flags=re.M)


def _project(tmp_path, settings: str = "", backend: str | None = None, rows: int = 30):
    side = tmp_path / "calls.txt"
    write(
        tmp_path / "p" / "psy-tasks" / "task_t.py",
        counting_task(side, range(rows), settings=settings, backend=backend),
    )
    return tmp_path / "p", side


@pytest.mark.parametrize(
    ("settings", "args", "expected"),
    [
        ("", [], 1),  # max_jobs left at 100: ImmediateRun runs one job at a time
        ("", ["-j", "2"], 2),  # LocalPool(2): two at once
        ("max_jobs = 3", [], 3),  # set by the task: psyrun 0.8's meaning
        ("max_jobs = 100", ["-j", "2"], 30),  # set explicitly, even to the default value
    ],
)
def test_local_process_jobs_follow_the_slots_unless_max_jobs_is_set(
    tmp_path, settings, args, expected
):
    project, side = _project(tmp_path, settings)
    out = psy("run", *args, cwd=project, subprocess=True)
    assert out.returncode == 0, describe(out)
    processes = [j for j in _jobs(out.output) if ":process:" in j]
    assert len(processes) == expected
    assert calls(side) == dict.fromkeys(range(30), 1)
    data = load_result(result_path(project, "t"), "pickle")
    assert sorted(data["x"].tolist()) == list(range(30))


def test_psy_conf_max_jobs_counts_as_set(tmp_path):
    project, _ = _project(tmp_path)
    write(project / "psy-tasks" / "psy-conf.py", "max_jobs = 4\n")
    out = psy("run", cwd=project, subprocess=True)
    assert out.returncode == 0, describe(out)
    assert len([j for j in _jobs(out.output) if ":process:" in j]) == 4


def test_clusters_keep_max_jobs(tmp_path):
    project, _ = _project(tmp_path)
    task = load_tasks(project / "psy-tasks")["t"]
    assert local_job_cap(task, Slurm()) is None
    assert local_job_cap(task, ImmediateRun()) == 1
    assert local_job_cap(task, LocalPool(3)) == 3
    task.config.max_jobs = 100  # now set explicitly
    assert local_job_cap(task, ImmediateRun()) is None


def test_load_balancing_default_counts_pool_workers_as_slots(tmp_path):
    project, side = _project(tmp_path, "pool_size = 2", backend="loadbalancing")
    out = psy("run", "-j", "2", cwd=project, subprocess=True)
    assert out.returncode == 0, describe(out)
    # Two job slots hold one job of two pool workers.
    assert [j for j in _jobs(out.output) if ":process:" in j] == ["t:process:0"]
    assert calls(side) == dict.fromkeys(range(30), 1)


def test_load_balancing_job_with_nothing_to_claim_starts_no_pool(tmp_path):
    setups = tmp_path / "setups.txt"
    settings = f"""
max_jobs = 3
pool_size = 2


def setup(proc_id):
    with open({str(setups)!r}, "a") as f:
        f.write(f"{{proc_id}} {{os.getpid()}}\\n")
    return {{}}
"""
    project, side = _project(tmp_path, settings, backend="loadbalancing")
    out = psy("run", cwd=project, subprocess=True)
    assert out.returncode == 0, describe(out)
    # ImmediateRun runs job 0 (two workers) to the end first: jobs 1 and 2 find nothing.
    assert sorted(int(line.split()[0]) for line in setups.read_text().splitlines()) == [0, 1]
    root = project / "psy-work" / "t"
    for i in (1, 2):
        log = (root / f"t:process:{i}.log").read_text()
        assert "no rows left to claim" in log
        assert " rows into " not in log  # no worker ran ("worker k evaluated n rows into ...")
    assert calls(side) == dict.fromkeys(range(30), 1)


DEFERRED = """
import os
from psyrun import Param
from psyrun import durability

pspace = Param(x=list(range(4)))
max_jobs = 2
OUT = {out!r}


def execute(x):
    with open(OUT, "a") as f:
        f.write(f"{{durability.deferred()}}\\n")
    return {{"y": x}}
"""


@pytest.mark.parametrize("args", [[], ["-j", "2"]])
def test_local_process_jobs_defer_their_syncs(tmp_path, args):
    seen = tmp_path / "seen.txt"
    write(tmp_path / "p" / "psy-tasks" / "task_t.py", DEFERRED.format(out=str(seen)))
    out = psy("run", *args, cwd=tmp_path / "p", subprocess=True)
    assert out.returncode == 0, describe(out)
    assert seen.read_text().split() == ["True"] * 4


def test_jobs_started_elsewhere_sync_themselves(tmp_path, monkeypatch):
    seen = tmp_path / "seen.txt"
    write(tmp_path / "p" / "psy-tasks" / "task_t.py", DEFERRED.format(out=str(seen)))
    # Loaded where it runs: the task's workdir is relative to the directory it loads in.
    monkeypatch.chdir(tmp_path / "p")
    task = load_tasks("psy-tasks")["t"]
    task.config.scheduler = ImmediateRun(sync_interval=None)
    from psyrun.run.runner import run_task

    report = run_task(task)
    assert report.outcome == "completed", repr(report)
    assert seen.read_text().split() == ["False"] * 4


def test_deferred_syncs_skip_fsync_only_inside_the_block(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)
    path = tmp_path / "f"
    with open(path, "w") as f:
        fd = f.fileno()
        with deferred_syncs():
            assert deferred()
            fsync(fd)
        assert not deferred()
        fsync(fd)
    assert synced == [fd]


def test_sync_batch_syncs_before_dependents_and_on_the_interval(tmp_path):
    batch = SyncBatch(interval=3600)
    assert batch.environment() == {VARIABLE: "1"}
    batch.ended("1", str(tmp_path / "a.log"))
    assert batch.owed
    batch.before(["2"])  # does not build on job 1: nothing to sync yet
    assert batch.owed
    batch.before(["1"])
    assert not batch.owed
    batch = SyncBatch(interval=0)
    batch.ended("1", str(tmp_path / "a.log"))
    assert not batch.owed  # the interval has passed: synced at once


def test_load_balancing_chunks_are_shares_of_the_workers_that_run_at_once(tmp_path):
    import json

    project, side = _project(
        tmp_path, "max_jobs = 4\npool_size = 2", backend="loadbalancing", rows=400
    )
    out = psy("run", cwd=project, subprocess=True)
    assert out.returncode == 0, describe(out)
    claims = [
        json.loads(line)["c"]
        for line in (project / "psy-work" / "t" / "in" / "counter").read_text().splitlines()
        if '"c"' in line
    ]
    # ImmediateRun runs one job (two workers) at a time: the first chunk is an eighth
    # of the rows per worker that runs, 400 // 16, not a share of all eight planned.
    start, stop = claims[0]
    assert stop - start == 400 // 16
    assert calls(side) == dict.fromkeys(range(400), 1)


@pytest.mark.parametrize("value", [-1, "soon", float("nan")])
def test_a_bad_sync_interval_is_refused_with_its_name(value):
    for make in (
        lambda: ImmediateRun(sync_interval=value),
        lambda: LocalPool(2, sync_interval=value),
    ):
        with pytest.raises(ValueError, match="sync_interval must be a number of seconds >= 0"):
            make()
