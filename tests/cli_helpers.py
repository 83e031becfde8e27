"""Old names for tests that drive ``psy`` in-process; see :mod:`psy_helpers`.

``psy(*args)`` here is :func:`psy_helpers.psy` in its default, in-process
mode; new tests import from ``psy_helpers`` directly.
"""

from __future__ import annotations

from psy_helpers import PsyResult, psy, write_task

__all__ = ["PsyResult", "psy", "write_task"]
