"""A third-party backend written against :class:`psyrun.backend.base.Backend` alone.

:class:`OneJobBackend` implements exactly the abstract methods of the base
class (``plan``, ``run_job``, ``get_missing``): one job evaluates every
missing row and writes the result with the task's store. A task file selects
it with ``backend = OneJobBackend``; ``psy run``, ``psy status -v``, ``psy
kill`` and ``psy run -c`` must all work on it. Any attribute that psyrun asks
the backend for beyond what the base class defines is recorded by
``__getattr__`` and fails the test (even when psyrun asked with a
``getattr(..., default)`` that would have hidden it).

This file is also the model for writing a backend (docs/architecture.md).
"""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from psy_helpers import psy, write_task

import psyrun.worker
from psyrun.backend.base import Backend, Plan
from psyrun.jobs import Job, JobGraph
from psyrun.pspace import missing as missing_rows
from psyrun.tasks import get_task

#: Names psyrun asked a backend for that the base class does not define.
UNKNOWN_ATTRIBUTES: list[str] = []


class OneJobBackend(Backend):
    """One job, ``<task>:all``, evaluates every missing row and saves the result."""

    def plan(self, cont: bool = False) -> Plan:
        """Plan the single job (nothing when the results are current, or none is missing)."""
        name = self.paths.job_name("all")
        todo = len(self.get_missing()) if cont else len(self.task.pspace)
        if (not cont and self.is_current()) or todo == 0:
            graph = JobGraph(self.task.name, [Job(name, [], self.paths.log("all"))])
            return Plan(graph, up_to_date=True, reason="results are current")
        self.paths.make_dirs()
        # A new run: the markers of the last one no longer tell how its jobs ended.
        self.clear_markers()
        job = Job(name, self.job_command("all", cont=cont), self.paths.log("all"))
        return Plan(JobGraph(self.task.name, [job]), reason="results missing", n_rows=todo)

    def run_job(self, kind: str, index: int | None, description: Mapping[str, Any]) -> int:
        """Evaluate the rows (only the missing ones with ``cont``) and save every result."""
        if kind != "all" or index is not None:
            raise ValueError(f"OneJobBackend has no job {kind!r} (index {index})")
        store, result = self.task.store, self.paths.result
        done: dict[str, list] = {}
        if description.get("cont") and store.exists(result):
            done = {k: list(v) for k, v in store.load(result).items()}
            rows = self.get_missing()
        else:
            rows = self.task.pspace
        for params in rows.iterate():
            out = {**params, **self.task.execute(**params)}
            for key, value in out.items():
                done.setdefault(key, []).append(value)
        store.save(result, done)
        return 0

    def get_missing(self):
        """The assignments of the task's space without a row in the result file."""
        if not self.task.store.exists(self.paths.result):
            return self.task.pspace
        return missing_rows(self.task.pspace, self.task.store.load(self.paths.result))

    def __getattr__(self, name: str):
        # Only reached for names neither this class nor Backend defines.
        if not (name.startswith("__") and name.endswith("__")):
            UNKNOWN_ATTRIBUTES.append(name)
            log = os.environ.get("PSYRUN_TEST_UNKNOWN_ATTRIBUTES")
            if log:  # a job run in a subprocess reports here
                with open(log, "a", encoding="utf-8") as f:
                    f.write(name + "\n")
        raise AttributeError(name)


TASK = """
from psyrun import Param
{scheduler_import}
from test_backend_interface import OneJobBackend

backend = OneJobBackend
pspace = Param(x=range({n}))
{scheduler}

def execute(x):
    with open({calls!r}, "a") as f:
        f.write(f"{{x}}\\n")
    return {{"y": x * x}}
"""


@pytest.fixture(autouse=True)
def no_unknown_attributes(tmp_path, monkeypatch):
    # Jobs may run in a subprocess (when forking is unsafe): there the task file
    # imports this module through PYTHONPATH, and reports to a file.
    here = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "unknown-attributes.txt"
    monkeypatch.setenv("PSYRUN_TEST_UNKNOWN_ATTRIBUTES", str(log))
    UNKNOWN_ATTRIBUTES.clear()
    yield
    used = UNKNOWN_ATTRIBUTES + (log.read_text().split() if log.exists() else [])
    assert used == [], f"psyrun used backend attributes that Backend does not define: {used}"


def write(project, n: int, slurm: bool = False):
    calls = str(project / "calls.txt")
    text = TASK.format(
        n=n,
        calls=calls,
        scheduler_import="from psyrun.scheduler import Slurm" if slurm else "",
        scheduler="scheduler = Slurm()" if slurm else "",
    )
    path = write_task(project, "iface", text)
    # Older than any result, so that the results of a run are current; distinct
    # mtimes, so that psyrun sees every rewrite.
    past = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(past, past))
    return path


def evaluated(project) -> list[int]:
    path = project / "calls.txt"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def result(project) -> dict:
    with open(project / "psy-work" / "iface" / "result.pkl", "rb") as f:
        return pickle.load(f)


@pytest.fixture(params=["forked", "subprocess"])
def jobs_start(request):
    """How ImmediateRun starts the jobs: forked from psy, or as subprocesses.

    ImmediateRun forks only while no other thread runs; a thread held for the
    test makes it start every job as a subprocess.
    """
    if request.param == "forked":
        if threading.active_count() > 1:
            pytest.skip("another thread runs in this process, so jobs cannot be forked")
        yield request.param
        return
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    yield request.param
    stop.set()
    thread.join()


def test_the_backend_implements_only_the_abstract_methods():
    extra = {n for n in vars(OneJobBackend) if not n.startswith("__") and not hasattr(Backend, n)}
    assert extra == set()
    assert set(Backend.__abstractmethods__) == {"plan", "run_job", "get_missing"}


def test_run_status_kill_and_continue(project, fake, jobs_start):
    write(project, 6)
    run = psy("run", "iface")
    assert run.exit_code == 0, run.output
    assert "iface:all" in run.output
    data = result(project)
    assert sorted(zip(data["x"], data["y"])) == [(x, x * x) for x in range(6)]
    assert sorted(evaluated(project)) == list(range(6))

    status = psy("status", "-v", "iface")
    assert status.exit_code == 0, status.output
    assert "iface: 6 out of 6 rows completed" in status.output
    assert "failed" not in status.output

    again = psy("run", "iface")
    assert again.exit_code == 0, again.output
    assert "- iface:all" in again.output  # up to date: nothing ran
    assert len(evaluated(project)) == 6

    # More rows, submitted to a (fake) Slurm that only queues the job.
    write(project, 10, slurm=True)
    submitted = psy("run", "-c", "iface")
    assert submitted.exit_code == 0, submitted.output
    (sbatch,) = fake.calls("sbatch")
    assert any("psyrun.worker" in a for a in sbatch), sbatch
    fake.script("squeue", out="100|PD|None|iface:all\n")

    status = psy("status", "-v", "iface")
    assert status.exit_code == 0, status.output
    assert "iface: 6 out of 10 rows completed" in status.output
    assert "queued or running jobs (1):" in status.output
    assert "iface:all (id 100, queued)" in status.output
    assert "missing assignments (4):" in status.output

    kill = psy("kill", "iface")
    assert kill.exit_code == 0, kill.output
    assert "iface: killed 1 jobs" in kill.output
    assert ["100"] in fake.calls("scancel")

    fake.script("squeue", out="")
    status = psy("status", "-v", "iface")
    assert "iface:all: did not finish" in status.output, status.output

    # Back on this machine: `psy run -c` evaluates the 4 missing rows only.
    write(project, 10)
    cont = psy("run", "-c", "iface")
    assert cont.exit_code == 0, cont.output
    data = result(project)
    assert sorted(zip(data["x"], data["y"])) == [(x, x * x) for x in range(10)]
    assert sorted(evaluated(project)) == list(range(10))  # every row exactly once

    status = psy("status", "-v", "iface")
    assert "iface: 10 out of 10 rows completed" in status.output, status.output
    assert "failed" not in status.output

    clean = psy("clean", "iface")
    assert clean.exit_code == 0, clean.output
    assert not (project / "psy-work" / "iface").exists()


def test_failing_execute_is_reported_by_run_and_status(project):
    write_task(
        project,
        "iface",
        """
        from psyrun import Param
        from test_backend_interface import OneJobBackend
        backend = OneJobBackend
        pspace = Param(x=range(3))
        def execute(x):
            raise RuntimeError("no luck")
        """,
    )
    run = psy("run", "iface")
    assert run.exit_code != 0
    assert "iface:all" in run.output
    status = psy("status", "-v", "iface")
    assert "iface: 0 out of 3 rows completed" in status.output
    assert "RuntimeError: no luck" in status.output, status.output


# -- the worker checks the job description against the task ----------------


def planned_description(project) -> tuple[str, OneJobBackend]:
    backend = OneJobBackend(get_task(write(project, 3)))
    assert not backend.plan().up_to_date
    desc = backend.paths.job_file("all")
    assert os.path.exists(desc)
    return desc, backend


def rewrite(path: str, **changes) -> None:
    with open(path) as f:
        description = json.load(f)
    description.update(changes)
    with open(path, "w") as f:
        json.dump(description, f)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"psyrun": "0.0.1"}, "psyrun 0.0.1"),
        (
            {"backend": "psyrun.backend.distribute.DistributeBackend"},
            "the backend psyrun.backend.distribute.DistributeBackend",
        ),
    ],
)
def test_worker_refuses_a_description_of_another_version_or_backend(
    project, capsys, changes, named
):
    desc, backend = planned_description(project)
    rewrite(desc, **changes)
    assert psyrun.worker.main([desc]) == 1
    err = capsys.readouterr().err
    assert named in err
    assert "psy run -c iface" in err
    assert evaluated(project) == []  # nothing ran
    with open(backend.paths.status_file("iface:all", "failed")) as f:
        assert "psy run -c iface" in f.read()
    assert not (project / "psy-work" / "iface" / "result.pkl").exists()


def test_worker_runs_a_matching_description(project):
    desc, backend = planned_description(project)
    assert psyrun.worker.main([desc]) == 0
    assert sorted(evaluated(project)) == [0, 1, 2]
    assert os.path.exists(backend.paths.status_file("iface:all", "done"))
    np.testing.assert_array_equal(sorted(result(project)["y"]), [0, 1, 4])
