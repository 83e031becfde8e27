"""Schedulers: how psyrun starts jobs.

:class:`Scheduler` is the interface (in :mod:`psyrun.scheduler.base`);
:class:`ImmediateRun` runs jobs at once on this machine, :class:`Slurm` submits
them to a Slurm cluster with ``sbatch``, :class:`Sqsub` to Sharcnet's
``sqsub`` and :class:`Dask` runs them on a dask.distributed cluster.
"""

from __future__ import annotations

import importlib

from psyrun.scheduler.base import JobState, JobStatus, Scheduler, SchedulerError
from psyrun.scheduler.immediate import ImmediateRun

# The cluster schedulers are loaded on first use; psy run with ImmediateRun
# does not need them.
_LAZY = {
    "Dask": "psyrun.scheduler.dask",
    "Slurm": "psyrun.scheduler.slurm",
    "Sqsub": "psyrun.scheduler.sqsub",
}

__all__ = [
    "Dask",
    "ImmediateRun",
    "JobState",
    "JobStatus",
    "Scheduler",
    "SchedulerError",
    "Slurm",
    "Sqsub",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'psyrun.scheduler' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
