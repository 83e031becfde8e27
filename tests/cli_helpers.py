"""Helpers for tests that drive ``psy`` in-process with click's CliRunner."""

from __future__ import annotations

import textwrap

from click.testing import CliRunner

from psyrun.cli import main


def write_task(project, name, text):
    """Write ``psy-tasks/task_<name>.py`` (dedented `text`) under `project`."""
    path = project / "psy-tasks" / f"task_{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


def psy(*args):
    """Run ``psy *args`` in this process; exceptions propagate to the test."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)
