"""Schedulers: how psyrun starts jobs.

:class:`Scheduler` is the interface (in :mod:`psyrun.scheduler.base`);
:class:`ImmediateRun` runs jobs at once on this machine, :class:`LocalPool` in
a pool of local processes and :class:`Dask` on a dask.distributed cluster.
:class:`Slurm` submits them to a Slurm cluster with ``sbatch``,
:class:`GridEngine` with Grid Engine's ``qsub``, :class:`PBS` to PBS Pro,
OpenPBS or Torque, :class:`LSF` with ``bsub`` and :class:`Sqsub` to Sharcnet's
``sqsub``; the command-line ones share :mod:`psyrun.scheduler.command`.
"""

from __future__ import annotations

import importlib
import importlib.util

from psyrun.scheduler.base import JobState, JobStatus, Scheduler, SchedulerError
from psyrun.scheduler.immediate import ImmediateRun

# The cluster schedulers are loaded on first use; psy run with ImmediateRun
# does not need them.
_LAZY = {
    "Dask": "psyrun.scheduler.dask",
    "GridEngine": "psyrun.scheduler.gridengine",
    "LSF": "psyrun.scheduler.lsf",
    "LocalPool": "psyrun.scheduler.localpool",
    "PBS": "psyrun.scheduler.pbs",
    "Slurm": "psyrun.scheduler.slurm",
    "Sqsub": "psyrun.scheduler.sqsub",
}

__all__ = [
    "LSF",
    "PBS",
    "Dask",
    "GridEngine",
    "ImmediateRun",
    "JobState",
    "JobStatus",
    "LocalPool",
    "Scheduler",
    "SchedulerError",
    "Slurm",
    "Sqsub",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'psyrun.scheduler' has no attribute {name!r}")
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise  # the module exists but something it imports is missing
        raise ImportError(
            f"psyrun.scheduler.{name} is not available in this psyrun installation "
            f"(no module {module}); the schedulers here are: "
            f"{', '.join(n for n in sorted(_LAZY) if _module_exists(_LAZY[n]))}, ImmediateRun"
        ) from None
    value = getattr(loaded, name)
    globals()[name] = value
    return value


def _module_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def __dir__():
    return sorted(set(globals()) | set(__all__))
