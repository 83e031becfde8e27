"""The backend interface (no implementation lives here).

A backend turns a task into a :class:`psyrun.jobs.JobGraph` that a scheduler
runs, executes its own jobs when :mod:`psyrun.worker` calls back into it, and
answers what is done, missing, queued and failed.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Backend", "FailedJob", "Plan", "TaskProgress"]


@dataclass
class Plan:
    """What ``psy run`` should submit for a task.

    Attributes
    ----------
    graph : psyrun.jobs.JobGraph
        The jobs (empty when there is nothing to do).
    up_to_date : bool
        True when the results are current and nothing needs to run.
    reason : str
        Why the task runs (or does not), for messages.
    """

    graph: Any
    up_to_date: bool = False
    reason: str = ""


@dataclass
class FailedJob:
    """A job that failed or did not finish: its ``name``, ``log`` file and a ``message``."""

    name: str
    log: str
    message: str


@dataclass
class TaskProgress:
    """Rows of a task: ``completed`` out of ``total``."""

    completed: int
    total: int


class Backend(abc.ABC):
    """Base class of the backends a task's ``backend`` setting names.

    Implement :meth:`plan`, :meth:`run_job`, :meth:`get_missing`,
    :meth:`get_queued` and :meth:`get_failed`. A task file selects a backend
    by class (``backend = LoadBalancingBackend``); psyrun creates one instance
    per task with ``backend(task)``.

    Parameters
    ----------
    task : psyrun.tasks.TaskDef
        The loaded task.
    """

    #: Whether the backend runs ``pool_size`` worker processes per job (else
    #: a task setting ``pool_size`` > 1 is warned about as having no effect).
    uses_pool: bool = False

    def __init__(self, task) -> None:
        self.task = task

    @abc.abstractmethod
    def plan(self, cont: bool = False) -> Plan:
        """Decide what to run: the job graph, or that the results are up to date.

        With `cont` (``psy run -c``) the results already computed are kept
        and only missing assignments are evaluated.
        """

    @abc.abstractmethod
    def run_job(self, kind: str, index: int | None, description: Mapping[str, Any]) -> int:
        """Run one of this backend's jobs inside the job process; return its exit status."""

    @abc.abstractmethod
    def get_missing(self):
        """Return the parameter space of assignments without a result yet."""

    @abc.abstractmethod
    def get_queued(self) -> list:
        """:class:`psyrun.scheduler.JobStatus` of this task's jobs the scheduler still holds."""

    @abc.abstractmethod
    def get_failed(self) -> list[FailedJob]:
        """Return the jobs of the last run that failed or did not finish."""

    def progress(self) -> TaskProgress:
        """Rows completed out of the rows of the task's parameter space.

        Note for implementers: the default computes the missing space.
        """
        total = len(self.task.pspace)
        return TaskProgress(total - len(self.get_missing()), total)

    def job_names(self) -> list[str]:
        """Names of the jobs a full run consists of (for ``- <job>`` lines)."""
        return self.plan(cont=False).graph.names

    def clean(self) -> None:  # noqa: B027 - optional hook
        """Remove every file generated for the task."""
