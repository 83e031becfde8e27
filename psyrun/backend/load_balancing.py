"""psyrun 0.8's module name for :mod:`psyrun.backend.loadbalancing`.

``from psyrun.backend.load_balancing import LoadBalancingBackend`` keeps
working; new code imports it from :mod:`psyrun.backend`.
"""

from __future__ import annotations

from psyrun.backend.loadbalancing import LoadBalancingBackend

__all__ = ["LoadBalancingBackend"]
