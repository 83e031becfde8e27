"""The defaults of the task settings that name other parts of psyrun.

A task that sets no ``backend`` uses :class:`psyrun.backend.DistributeBackend`
and one that sets no ``scheduler`` uses :class:`psyrun.scheduler.ImmediateRun`.
They are resolved here, by the runner and the worker, so that
:mod:`psyrun.tasks` (which every job imports) needs neither.

``max_jobs`` keeps psyrun 0.8's meaning (at most that many process jobs)
wherever a task sets it, and on every cluster scheduler. Only a task that
leaves it at its default and runs on this machine
(:class:`~psyrun.scheduler.ImmediateRun`, :class:`~psyrun.scheduler.LocalPool`)
gets no more process jobs than the scheduler runs at once
(:func:`local_job_cap`): more jobs than cores would only add the cost of
starting, writing and merging each of them.
"""

from __future__ import annotations

__all__ = ["backend_class", "local_job_cap", "make_backend", "scheduler_for"]


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


def local_job_cap(task, scheduler) -> int | None:
    """Return the most process jobs a run of `task` on `scheduler` should plan (None: max_jobs).

    A scheduler that runs jobs on this machine says how many it runs at once
    (its ``job_slots``: 1 for :class:`~psyrun.scheduler.ImmediateRun`,
    ``n_workers`` for :class:`~psyrun.scheduler.LocalPool`). When the task
    leaves ``max_jobs`` at its default, that is the cap; a ``max_jobs`` the
    task (or ``psy-conf.py``) sets is kept as it is, and so are the jobs of
    cluster schedulers (they have no ``job_slots``).
    """
    slots = getattr(scheduler, "job_slots", None)
    if slots is None or task.config.is_set("max_jobs"):
        return None
    return max(1, int(slots))
