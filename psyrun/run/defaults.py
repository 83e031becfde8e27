"""The defaults of the task settings that name other parts of psyrun.

A task that sets no ``backend`` uses :class:`psyrun.backend.DistributeBackend`
and one that sets no ``scheduler`` uses :class:`psyrun.scheduler.ImmediateRun`.
They are resolved here, by the runner and the worker, so that
:mod:`psyrun.tasks` (which every job imports) needs neither.
"""

from __future__ import annotations

__all__ = ["backend_class", "make_backend", "scheduler_for"]


def backend_class(task) -> type:
    """Return the backend class of `task` (DistributeBackend unless the task names one)."""
    if task.config.backend is not None:
        return task.config.backend
    from psyrun.backend.distribute import DistributeBackend

    return DistributeBackend


def make_backend(task):
    """Return the backend instance of `task`."""
    return backend_class(task)(task)


def scheduler_for(task):
    """Return the scheduler of `task` (one ImmediateRun per task unless it names one)."""
    if task.config.scheduler is None:
        from psyrun.scheduler.immediate import ImmediateRun

        # Kept on the task: an ImmediateRun remembers how its jobs ended.
        object.__setattr__(task.config, "scheduler", ImmediateRun())
    return task.config.scheduler
