"""Backends: how a task becomes jobs.

:class:`DistributeBackend` (the default) splits the rows evenly over process
jobs; :class:`LoadBalancingBackend` lets workers pull chunks of rows from a
shared counter. Both are ``split -> process -> merge`` job graphs (see
:mod:`psyrun.backend.base` for the interface).
"""

from __future__ import annotations

from psyrun.backend.base import Backend, FailedJob, Plan, TaskProgress
from psyrun.backend.distribute import DistributeBackend
from psyrun.backend.loadbalancing import LoadBalancingBackend

#: psyrun 0.8's name of the default backend.
DefaultBackend = DistributeBackend

__all__ = [
    "Backend",
    "DefaultBackend",
    "DistributeBackend",
    "FailedJob",
    "LoadBalancingBackend",
    "Plan",
    "TaskProgress",
]
