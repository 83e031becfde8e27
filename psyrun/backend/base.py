"""The backend interface (no implementation lives here).

A backend turns a task into a :class:`psyrun.jobs.JobGraph` that a scheduler
runs, executes its own jobs when :mod:`psyrun.worker` calls back into it, and
answers what is done, missing, queued and failed. This class is exactly what
:mod:`psyrun.run.runner` (``psy run``), ``psy status``, ``psy kill``, ``psy clean``
and the worker use: a backend that implements it works with every ``psy``
command.

Implement :meth:`Backend.plan`, :meth:`Backend.run_job` and
:meth:`Backend.get_missing`. Everything else has a working default built on
:attr:`Backend.paths` (the task's files, :class:`psyrun.paths.TaskPaths`):
the worker writes ``status/<job>.done`` or ``.failed`` markers there, and
:meth:`Backend.submit` records the job ids there.
"""

from __future__ import annotations

import abc
import contextlib
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from psyrun.atomic import remove_path
from psyrun.jobs import (
    JobArray,
    JobGraph,
    is_current,
    load_run,
    load_submitted,
    save_submitted,
    submit_graph,
)
from psyrun.paths import TaskPaths

__all__ = ["Backend", "FailedJob", "Plan", "TaskProgress"]


@dataclass
class Plan:
    """What ``psy run`` should submit for a task.

    Attributes
    ----------
    graph : psyrun.jobs.JobGraph
        The jobs (their names are listed as ``- <job>`` when up to date).
    up_to_date : bool
        True when the results are current and nothing needs to run.
    reason : str
        Why the task runs (or does not), for messages.
    n_rows : int
        Rows the run evaluates (for the progress bar).
    """

    graph: JobGraph
    up_to_date: bool = False
    reason: str = ""
    n_rows: int = 0


@dataclass
class FailedJob:
    """A job that failed or did not finish: its ``name``, ``log`` file and a ``message``."""

    name: str
    log: str
    message: str


@dataclass
class TaskProgress:
    """Rows of a task: ``completed`` out of ``total``.

    Attributes
    ----------
    notes : list of str
        Things the user should know to read the figures right (a result file
        that is gone, keys the results lack, files that cannot be read).
    stale : int
        Of the completed rows, those computed by an older version of the
        task's code (:mod:`psyrun.run.versions`); 0 when unknown.
    result : str
        The result file: ``"ok"`` (it reads back completely), ``"missing"``
        or ``"damaged"`` (its rows are not counted).
    unmerged : int
        Completed rows held only by part files, not yet by the result file.
    outside : int
        Stored rows whose assignment is not in the space (not counted).
    failed_rows : int
        Assignments still missing whose last evaluation failed, on record
        in the result or parts (:mod:`psyrun.results.failed_rows`); never completed.
    failed_errors : list of str
        Their ``psy_error`` texts (``psy status -v`` groups them).
    """

    completed: int
    total: int
    notes: list[str] = field(default_factory=list)
    #: Of the completed rows, those computed by an older version of the task's code.
    stale: int = 0
    result: str = "ok"
    unmerged: int = 0
    outside: int = 0
    failed_rows: int = 0
    failed_errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every row is done and in a result file that reads back."""
        return self.completed >= self.total and self.result == "ok" and not self.unmerged


class Backend(abc.ABC):
    """Base class of the backends a task's ``backend`` setting names.

    A task file selects a backend by class (``backend = LoadBalancingBackend``);
    psyrun creates one instance per task with ``backend(task)``.

    Parameters
    ----------
    task : psyrun.tasks.TaskDef
        The loaded task.

    Attributes
    ----------
    task : psyrun.tasks.TaskDef
        The task.
    paths : psyrun.paths.TaskPaths
        Every file of the task (work directory, logs, markers, result).
    """

    #: Whether the backend runs ``pool_size`` worker processes per job (else
    #: a task setting ``pool_size`` > 1 is warned about as having no effect).
    uses_pool: bool = False

    def __init__(self, task) -> None:
        self.task = task
        self.paths = TaskPaths.for_task(task)
        #: Fields every job description of the next plan gets (the round of an
        #: automatic continuation, :mod:`psyrun.run.attempts`).
        self.job_fields: dict[str, Any] = {}

    # -- what every backend implements ---------------------------------------

    @abc.abstractmethod
    def plan(self, cont: bool = False) -> Plan:
        """Decide what to run: the job graph, or that the results are up to date.

        With `cont` (``psy run -c``) the results already computed are kept
        and only missing assignments are evaluated. Raise ValueError (its
        message is shown as is) when the task cannot run as asked. A plan
        that is not up to date may write job descriptions
        (:meth:`job_command`).
        """

    @abc.abstractmethod
    def run_job(self, kind: str, index: int | None, description: Mapping[str, Any]) -> int:
        """Run one of this backend's jobs inside the job process; return its exit status.

        Raise :class:`psyrun.run.failures.RowsFailed` when some rows raised but
        the others were kept (the job is marked failed, its exit status is 0).
        """

    @abc.abstractmethod
    def get_missing(self):
        """Return the parameter space of assignments without a result yet."""

    # -- defaults built on the task's files ----------------------------------

    def job_command(self, kind: str, *, array: bool = False, **fields: Any) -> list[str]:
        """Write the description of a kind of job and return the command that runs it.

        The command is ``[python, -m, psyrun.worker, <description>]`` (plus
        ``%a``, the array index, when `array`); `fields` are stored in the
        description for :meth:`run_job`.
        """
        from psyrun.jobs import write_job_description

        path = self.paths.job_file(kind)
        write_job_description(path, self.task, type(self), kind, **self.job_fields, **fields)
        args = [self.task.python, "-m", "psyrun.worker", path]
        return [*args, "%a"] if array else args

    def has_results(self) -> bool:
        """Whether any result (the result file or part files) exists."""
        return self.task.store.exists(self.paths.result) or bool(self.paths.list_parts())

    def is_current(self) -> bool:
        """Results exist, are newer than the task's files, and the last run finished."""
        if not is_current([self.paths.result], self.task.dependencies):
            return False
        if self.paths.list_parts() or self.failed_markers():
            return False
        # A job that stopped before its time limit left rows to evaluate.
        d = self.paths.status_dir
        return not (os.path.isdir(d) and any(e.endswith(".partial") for e in os.listdir(d)))

    def changed_dependencies(self) -> list[str]:
        """Return the task files (task file, file_dep, psy-conf.py) newer than the result."""
        try:
            stamp = os.stat(self.paths.result).st_mtime_ns
        except FileNotFoundError:
            return []
        changed = []
        for dep in self.task.dependencies:
            try:
                if os.stat(dep).st_mtime_ns > stamp:
                    changed.append(dep)
            except FileNotFoundError:
                changed.append(dep)
        return changed

    def progress(self, missing=None) -> TaskProgress:
        """Rows completed out of the rows of the task's parameter space.

        `missing` is what :meth:`get_missing` returned, when the caller has it
        already. Note for implementers: the default computes the missing space.
        """
        total = len(self.task.pspace)
        if missing is None:
            missing = self.get_missing()
        return TaskProgress(total - len(missing), total)

    def rows_evaluated(self) -> int:
        """Rows the jobs of the current run have evaluated so far (for progress bars).

        The default reads the counters process jobs write with
        :meth:`report_rows`; 0 when they write none.
        """
        d = self.paths.status_dir
        if not os.path.isdir(d):
            return 0
        total = 0
        for entry in os.listdir(d):
            if entry.endswith(".rows"):
                try:
                    with open(os.path.join(d, entry), encoding="ascii") as f:
                        total += int(f.read().strip() or 0)
                except (OSError, ValueError):
                    continue
        return total

    def report_rows(self, job_name: str, rows: int) -> None:
        """Record in a job that it has evaluated `rows` rows (read by :meth:`rows_evaluated`)."""
        from psyrun.atomic import atomic_write

        # Only a progress figure: not worth a sync.
        with atomic_write(self.paths.status_file(job_name, "rows"), sync=False) as f:
            f.write(str(rows))

    def submit(
        self,
        graph: JobGraph,
        scheduler,
        on_start: Callable[[str], None] | None = None,
        on_submitted: Callable[[str, str], None] | None = None,
    ) -> dict[str, str]:
        """Submit `graph` to `scheduler` and record the job ids.

        Before the first job is submitted, the jobs (without ids) and a new
        run tag are saved in the work directory; the scheduler puts the tag
        into every job's name on the batch system (:attr:`Scheduler.run_tag
        <psyrun.scheduler.Scheduler.run_tag>`), so that a job the batch system
        accepted but whose id never reached psyrun (psy killed, a submit
        command timing out) is still found by ``psy status``, ``psy kill`` and
        ``psy run``. The ids received (also of a partial submission that failed
        half-way) are saved afterwards.
        """
        ids: dict[str, str] = {}
        # A new run: the markers of the last one no longer say anything.
        self.clear_markers()
        tag = secrets.token_hex(4)
        groups = {job.name: job.n if isinstance(job, JobArray) else None for job in graph.jobs}
        logs = graph.logs()
        # The intent, on disk before anything is submitted: `psy status` from
        # another shell (or after psy was killed) looks for this run's jobs.
        save_submitted(self.paths.submitted, dict.fromkeys(graph.names, ""), logs, tag, groups)

        def submitted(name: str, jobid: str) -> None:
            ids[name] = jobid
            if on_submitted is not None:
                on_submitted(name, jobid)

        previous = getattr(scheduler, "run_tag", None)
        try:
            with contextlib.suppress(AttributeError):
                scheduler.run_tag = tag
            submit_graph(
                graph,
                scheduler,
                self.task.scheduler_args,
                on_start=on_start,
                on_submitted=submitted,
            )
        finally:
            with contextlib.suppress(AttributeError):
                scheduler.run_tag = previous
            # Jobs not (or not known to be) submitted keep an empty id.
            save_submitted(
                self.paths.submitted, {n: ids.get(n, "") for n in graph.names}, logs, tag, groups
            )
        return ids

    def submitted(self) -> list[tuple[str, str, str]]:
        """``(name, id, log)`` of the jobs of the last submission (empty id: not known)."""
        return load_submitted(self.paths.submitted)

    def get_queued(self, scheduler) -> list:
        """:class:`psyrun.scheduler.JobStatus` of the last submission's jobs `scheduler` holds.

        Jobs are looked up by the ids recorded; when some id is missing (the
        submission was interrupted, or a submit command failed after the
        batch system took the job) the scheduler is also asked for the jobs
        carrying the submission's run tag (:meth:`Scheduler.find_run
        <psyrun.scheduler.Scheduler.find_run>`). Each status is named as
        psyrun names the job.
        """
        return [s for s in self._listed(scheduler) if s.status.in_queue]

    def get_lingering(self, scheduler) -> list[str]:
        """Ids of the last submission's jobs that failed but the batch system still lists.

        Grid Engine keeps a failed job (state ``Eqw``) until it is deleted and
        runs it again if its error is cleared: ``psy kill``, ``psy clean`` and
        ``psy run`` delete such jobs (see
        :meth:`Scheduler.get_lingering <psyrun.scheduler.Scheduler.get_lingering>`).
        """
        from psyrun.scheduler.base import JobState

        jobs = self.submitted()
        ids = [jobid for _, jobid, _ in jobs if jobid]
        lingering = getattr(scheduler, "get_lingering", None)
        out = list(lingering(ids)) if lingering is not None and ids else []
        out.extend(
            s.id
            for s in self._found_by_tag(scheduler, jobs)
            if s.status is JobState.FAILED and s.id not in out
        )
        return out

    def _listed(self, scheduler) -> list:
        jobs = self.submitted()
        if not jobs:
            return []
        names = {jobid: name for name, jobid, _ in jobs if jobid}
        out = []
        if names:
            for jobid, status in scheduler.get_statuses(list(names)).items():
                if status is None:
                    continue
                if status.name != names.get(jobid):
                    status = status._replace(name=names.get(jobid, status.name))
                out.append(status)
        known = {s.id for s in out} | set(names)
        out.extend(s for s in self._found_by_tag(scheduler, jobs) if s.id not in known)
        return out

    def _found_by_tag(self, scheduler, jobs) -> list:
        """Jobs listed under the last submission's run tag, when some id never arrived."""
        if all(jobid for _, jobid, _ in jobs):
            return []
        tag, groups = load_run(self.paths.submitted)
        find = getattr(scheduler, "find_run", None)
        found = find(tag, groups) if tag and find is not None else None
        return list(found or [])

    def failed_markers(self) -> list[str]:
        """Names of the ``status/*.failed`` markers of the last run."""
        d = self.paths.status_dir
        if not os.path.isdir(d):
            return []
        return sorted(e[: -len(".failed")] for e in os.listdir(d) if e.endswith(".failed"))

    def clear_markers(self) -> None:
        """Remove the job markers of the last run (a new run starts)."""
        d = self.paths.status_dir
        if os.path.isdir(d):
            for entry in os.listdir(d):
                remove_path(os.path.join(d, entry))

    def get_failed(self, queued: list, pending: bool = False) -> list[FailedJob]:
        """Jobs of the last submission that failed, or ended without finishing.

        Parameters
        ----------
        queued : list of JobStatus
            Jobs the scheduler still holds (from :meth:`get_queued`); they
            have not failed.
        pending : bool
            A run is in progress (it holds the task lock): a job without a
            marker has not started yet rather than failed.
        """
        held = {s.id for s in queued}
        held_names = {s.name for s in queued}
        d = self.paths.status_dir
        markers = set(os.listdir(d)) if os.path.isdir(d) else set()
        failed = []
        for name, jobid, log in self.submitted():
            if (jobid and jobid in held) or name in held_names:
                continue
            marker = self.paths.status_file(name, "failed")
            if os.path.basename(self.paths.status_file(name, "partial")) in markers:
                continue  # stopped before its time limit: partial, not failed (get_partial)
            if os.path.basename(marker) in markers:
                with open(marker, encoding="utf-8") as f:
                    message = f.read().strip() or "failed"
                failed.append(FailedJob(name, log, message))
            elif not pending and (
                os.path.basename(self.paths.status_file(name, "done")) not in markers
            ):
                failed.append(FailedJob(name, log, self._unfinished(name, markers)))
        return failed

    def _unfinished(self, name: str, markers: set) -> str:
        """Why job `name` ended without a marker, as far as its files tell."""
        watchdog = self.paths.status_file(name, "watchdog")
        if os.path.basename(watchdog) in markers:
            with contextlib.suppress(OSError):
                if os.path.getsize(watchdog):
                    return (
                        "killed by the row_timeout watchdog: an execute call did not return "
                        "(C code the timeout cannot interrupt); the stack of the stuck call "
                        f"is in {watchdog}"
                    )
        return "did not finish (killed, crashed, or never started)"

    def get_partial(self) -> list[FailedJob]:
        """Jobs of the last submission that stopped before their time limit with rows left.

        Their ``.partial`` markers (:mod:`psyrun.run.walltime`) say how many rows
        they evaluated and left; the message says it in words.
        """
        from psyrun.run.walltime import read_partial

        d = self.paths.status_dir
        if not os.path.isdir(d):
            return []
        out = []
        for name, _, log in self.submitted():
            path = self.paths.status_file(name, "partial")
            if os.path.exists(path):
                info = read_partial(path) or {}
                out.append(FailedJob(name, log, str(info.get("message", "partial"))))
        return out

    def notes(self) -> list[str]:
        """Messages for ``psy status`` about files that could not be read (default: none)."""
        return []

    def stale_note(self) -> str | None:
        """Say how many stored rows an older version of the task's code computed (or None).

        The default knows no versions (:mod:`psyrun.run.versions`): None.
        """
        return None

    def clean(self) -> list[str]:
        """Remove the files psyrun made for the task; return notes on what was kept.

        See :func:`psyrun.paths.clean_task_files`: psyrun's own files in the
        work directory, and the result file when it is this task's.
        """
        from psyrun.paths import clean_task_files

        return clean_task_files(self.task, self.paths)
