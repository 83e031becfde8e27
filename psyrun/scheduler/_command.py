"""Kept for imports written before :mod:`psyrun.scheduler.command` existed."""

from __future__ import annotations

from psyrun.scheduler.command import COMMAND_TIMEOUT, command_error, run_command

__all__ = ["COMMAND_TIMEOUT", "command_error", "run_command"]
