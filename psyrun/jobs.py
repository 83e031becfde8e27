"""Job graphs: what a backend asks a scheduler to run, and when it is current.

A backend describes a task run as a :class:`JobGraph`, a list of
:class:`Job` (one command) and :class:`JobArray` (``n`` commands that differ
only in their index) in submission order, with dependencies by job name.
:func:`submit_graph` hands it to a scheduler, using native job arrays where
the scheduler has them.

Up-to-date decisions follow doit's convention: a job's targets are current
when they all exist and none of its dependencies (the task file, ``file_dep``,
``psy-conf.py``) is newer than the oldest target.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psyrun.atomic import atomic_write

__all__ = [
    "Job",
    "JobArray",
    "JobDescriptionError",
    "JobGraph",
    "is_current",
    "load_run",
    "load_submitted",
    "newest_mtime",
    "read_job_description",
    "save_submitted",
    "submit_graph",
    "write_job_description",
]

#: Format of the job description files.
DESCRIPTION_FORMAT = 1


@dataclass
class Job:
    """One job: a command, its log file and the jobs it waits for.

    Attributes
    ----------
    name : str
        ``<task>:<kind>`` or ``<task>:<kind>:<index>``.
    args : list of str
        The command (argv list).
    log : str
        File receiving the job's output.
    depends_on : list of str
        Names of jobs (or job arrays) that must complete first.
    """

    name: str
    args: list[str]
    log: str
    depends_on: list[str] = field(default_factory=list)
    #: Start when the jobs of `depends_on` have ended, however they ended (else
    #: only after they succeeded); used where the scheduler supports it.
    after_any: bool = False

    @property
    def names(self) -> list[str]:
        """The name of every job this entry submits."""
        return [self.name]


@dataclass
class JobArray:
    """``n`` jobs that differ only in their index; ``%a`` in args and log stands for it.

    The jobs are named ``<name>:<index>``.
    """

    name: str
    n: int
    args: list[str]
    log: str
    depends_on: list[str] = field(default_factory=list)

    def log_of(self, index: int) -> str:
        """Return the log file of one index."""
        return self.log.replace("%a", str(index))

    @property
    def names(self) -> list[str]:
        """The name of every job of the array, in index order."""
        return [f"{self.name}:{i}" for i in range(self.n)]


@dataclass
class JobGraph:
    """The jobs of one task run, in submission order (dependencies come first)."""

    task: str
    jobs: list[Job | JobArray] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Names of all jobs, in order."""
        return [n for job in self.jobs for n in job.names]

    def __len__(self) -> int:
        return sum(len(job.names) for job in self.jobs)

    def logs(self) -> dict[str, str]:
        """Job name -> log file."""
        out = {}
        for job in self.jobs:
            if isinstance(job, JobArray):
                for i, name in enumerate(job.names):
                    out[name] = job.log_of(i)
            else:
                out[job.name] = job.log
        return out


def newest_mtime(paths: Iterable[str]) -> int | None:
    """Return the newest modification time (ns) among existing `paths`, None when none exist."""
    newest = None
    for p in paths:
        try:
            t = os.stat(p).st_mtime_ns
        except FileNotFoundError:
            continue
        newest = t if newest is None else max(newest, t)
    return newest


def is_current(targets: Sequence[str], dependencies: Iterable[str]) -> bool:
    """Whether all `targets` exist and no dependency is newer than the oldest target.

    A dependency that does not exist counts as changed (the job must run to
    find out), as in doit.
    """
    if not targets:
        return False
    try:
        oldest = min(os.stat(t).st_mtime_ns for t in targets)
    except FileNotFoundError:
        return False
    for dep in dependencies:
        try:
            if os.stat(dep).st_mtime_ns > oldest:
                return False
        except FileNotFoundError:
            return False
    return True


def submit_graph(
    graph: JobGraph,
    scheduler,
    scheduler_args: Mapping[str, Any] | None = None,
    on_submitted: Callable[[str, str], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Submit every job of `graph` to `scheduler` and return job name -> job id.

    Parameters
    ----------
    graph : JobGraph
        The jobs, dependencies first.
    scheduler : psyrun.scheduler.Scheduler
        Where to submit.
    scheduler_args : mapping, optional
        Passed to every submission.
    on_start : callable, optional
        Called as ``on_start(job_name)`` just before a job is submitted (a
        scheduler that runs jobs at once runs it during the submission).
    on_submitted : callable, optional
        Called as ``on_submitted(job_name, job_id)`` after each submission
        (for progress output; with a native array once per index, after the
        whole array).
    """
    ids: dict[str, str] = {}
    # An array is waited for as a whole: depending on it means on every index.
    group_ids: dict[str, list[str]] = {}
    scheduler_args = dict(scheduler_args or {})
    for job in graph.jobs:
        deps = [i for dep in job.depends_on for i in group_ids.get(dep, [])] or None
        for name in job.names:
            if on_start is not None:
                on_start(name)
        if isinstance(job, JobArray):
            # Native arrays where the scheduler has them; the base class's
            # default submits one job per index.
            new = (
                [
                    str(i)
                    for i in scheduler.submit_array(
                        job.n,
                        job.args,
                        job.log,
                        name=job.name,
                        depends_on=deps,
                        scheduler_args=scheduler_args,
                    )
                ]
                if job.n
                else []
            )
        else:
            any_end = bool(deps and getattr(job, "after_any", False))
            if any_end and getattr(scheduler, "supports_after_any", False):
                scheduler.dependency_kind = "any"
            try:
                new = [
                    str(
                        scheduler.submit(
                            job.args,
                            job.log,
                            name=job.name,
                            depends_on=deps,
                            scheduler_args=scheduler_args,
                        )
                    )
                ]
            finally:
                if any_end and getattr(scheduler, "supports_after_any", False):
                    scheduler.dependency_kind = "ok"
        group_ids[job.name] = new
        for name, jobid in zip(job.names, new):
            ids[name] = jobid
            if on_submitted is not None:
                on_submitted(name, jobid)
    return ids


def save_submitted(
    path: str,
    ids: Mapping[str, str],
    logs: Mapping[str, str],
    run: str | None = None,
    groups: Mapping[str, int | None] | None = None,
) -> None:
    """Record the submitted jobs (name, id, log) so that later commands can find them.

    An empty id stands for a job not submitted yet, or one whose id psyrun
    never received. `run` is the tag of the submission (every job's name on
    the batch system carries it) and `groups` its jobs as submitted (name ->
    number of array jobs, ``None`` for a single job): with them such jobs are
    found by name (:meth:`psyrun.scheduler.Scheduler.find_run`). The file is
    written (and flushed) before the first job is submitted.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data: dict[str, Any] = {"jobs": [[n, i, logs.get(n, "")] for n, i in ids.items()]}
    if run is not None:
        data["run"] = run
        data["groups"] = [[name, n] for name, n in (groups or {}).items()]
    with atomic_write(path) as f:
        json.dump(data, f)


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_submitted(path: str) -> list[tuple[str, str, str]]:
    """Return the ``(name, id, log)`` of the jobs recorded by :func:`save_submitted` (or [])."""
    return [tuple(entry) for entry in _load(path).get("jobs", [])]


def load_run(path: str) -> tuple[str | None, dict[str, int | None]]:
    """Return the tag and the job groups of the submission :func:`save_submitted` recorded.

    ``(None, {})`` for a file written before tags existed, or none.
    """
    data = _load(path)
    run = data.get("run")
    if not isinstance(run, str) or not run:
        return None, {}
    return run, {str(name): n for name, n in data.get("groups", [])}


class JobDescriptionError(RuntimeError):
    """A job description does not match the task as it is now (or cannot be read)."""


def backend_name(cls: type) -> str:
    """Return the importable name of a backend class, as job descriptions record it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def write_job_description(path: str, task, backend: type, kind: str, **fields: Any) -> None:
    """Write the description of one kind of job of `task` (read by :mod:`psyrun.worker`).

    It records the psyrun version and the backend, so that a job started
    after the task changed backend (or psyrun was upgraded) refuses to run
    on files written for another, and the copy of the task's source the job
    evaluates (:func:`psyrun.run.versions.freeze`).
    """
    from psyrun import __version__
    from psyrun.run.versions import freeze

    description = {
        # The jobs evaluate the task as psy loaded it (a copy of its source).
        **freeze(task, os.path.dirname(path)),
        "version": DESCRIPTION_FORMAT,
        "psyrun": __version__,
        "backend": backend_name(backend),
        "kind": kind,
        "task": task.name,
        "task_file": task.path,
        "taskdir": task.taskdir,
        "cwd": os.getcwd(),
        **fields,
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as f:
        json.dump(description, f, indent=1)


def read_job_description(path: str) -> dict[str, Any]:
    """Read a job description; raise JobDescriptionError when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            description = json.load(f)
    except (OSError, ValueError) as exc:
        raise JobDescriptionError(f"cannot read job description {path!r}: {exc}") from None
    if not isinstance(description, dict) or "kind" not in description:
        raise JobDescriptionError(f"{path!r} is not a psyrun job description")
    return description


def check_job_description(description: Mapping[str, Any], task, backend: type) -> None:
    """Raise JobDescriptionError when `description` was written for another psyrun or backend."""
    from psyrun import __version__

    problems = []
    if description.get("psyrun", __version__) != __version__:
        problems.append(f"psyrun {description.get('psyrun')} (this is psyrun {__version__})")
    wanted = backend_name(backend)
    if description.get("backend", wanted) != wanted:
        problems.append(f"the backend {description.get('backend')} (the task now uses {wanted})")
    if problems:
        raise JobDescriptionError(
            f"this job of task {task.name!r} was submitted by {' and '.join(problems)}; "
            f"not running it. Run `psy run -c {task.name}` to submit the task again as it "
            "is now (it keeps the rows computed so far)."
        )
