"""Warnings and errors of psyrun, in one place.

The warning classes of psyrun 0.8 keep their names, so code written for it
can still silence them::

    warnings.filterwarnings("ignore", category=psyrun.exceptions.TaskWarning)

=============================  ====================================================
0.8 class                      What psyrun issues it for now
=============================  ====================================================
``TaskWarning``                Base of the warnings about tasks (below).
``TaskConfigWarning`` (new)    A ``TaskWarning``: a suspicious task setting, for
                               example a misspelt setting name (issued by
                               :func:`psyrun.tasks.load_tasks`).
``IneffectiveExcludeWarning``  ``exclude_from_result`` / ``exclude`` names a key
                               that is neither a parameter nor an output.
``JobsRunningWarning``         Jobs of the last run are still queued; ``psy run``
                               reports this in its output and does not submit.
``TaskWorkdirDirtyWarning``    Results are out of date and ``overwrite_dirty`` is
                               False; ``psy run`` reports this in its output.
=============================  ====================================================

Unlike psyrun 0.8, importing this module does not change the warning filters.
:class:`TaskDirError` is defined here (and raised by :mod:`psyrun.tasks`); the
errors raised elsewhere (:class:`~psyrun.pspace.AmbiguousOperationError`,
:class:`~psyrun.scheduler.SchedulerError`) can be imported from here as well.
"""

from __future__ import annotations

import importlib

# Errors defined next to the code raising them; re-exported lazily so that
# importing this module (which psyrun.tasks does) imports nothing else.
_ELSEWHERE = {
    "AmbiguousOperationError": "psyrun.pspace",
    "SchedulerError": "psyrun.scheduler.base",
}

__all__ = sorted(
    [
        "IneffectiveExcludeWarning",
        "JobsRunningWarning",
        "TaskConfigWarning",
        "TaskWarning",
        "TaskWorkdirDirtyWarning",
        "TaskDirError",
        "DamagedFileError",
        *_ELSEWHERE,
    ]
)


class TaskDirError(FileNotFoundError):
    """The task directory does not exist or is not a directory."""


class DamagedFileError(OSError):
    """A result or part file exists but cannot be read completely and correctly.

    Raised by the stores when a file is truncated, has a flipped byte, lacks a
    chunk or column, or disagrees with its own row counts or checksums. Such a
    file is never reported as complete; the message names the file and what is
    wrong with it.
    """


class TaskWarning(UserWarning):
    """A warning about one task; ``task_name`` names it when known.

    Parameters
    ----------
    *args
        The message (as for any warning).
    task_name : str, optional
        The task the warning is about.
    """

    def __init__(self, *args: object, task_name: str | None = None) -> None:
        super().__init__(*args)
        self.task_name = task_name


class TaskConfigWarning(TaskWarning):
    """A task setting looks wrong (for example a misspelt setting name)."""


class _TaskStateWarning(TaskWarning):
    """A warning about the state of a task's jobs or results, with a default text.

    Parameters
    ----------
    task_name : str
        The task.
    message : str, optional
        The text; by default :attr:`default_message` with the task's name.
    """

    #: The text when none is given; ``{task_name}`` stands for the task's name.
    default_message = "{task_name}"

    def __init__(self, task_name: str, message: str | None = None) -> None:
        if message is None:
            message = self.default_message.format(task_name=task_name)
        super().__init__(message, task_name=task_name)


class JobsRunningWarning(_TaskStateWarning):
    """Jobs of a task's last run are still queued, so no new ones are submitted.

    Takes the task's name and optionally the text (by default one naming the
    task and ``psy kill``).
    """

    default_message = (
        "{task_name}: jobs of the last run are still in the queue; not submitting "
        "again until they finish (`psy kill {task_name}` cancels them)"
    )


class TaskWorkdirDirtyWarning(_TaskStateWarning):
    """A task's results are out of date and ``overwrite_dirty`` forbids replacing them.

    Takes the task's name and optionally the text (by default one naming
    ``psy run -c`` and ``psy clean``).
    """

    default_message = (
        "{task_name}: the results are out of date and overwrite_dirty is False; "
        "use `psy run -c {task_name}` to add to them or `psy clean {task_name}`"
    )


class IneffectiveExcludeWarning(UserWarning):
    """A key to exclude from the results is neither a parameter nor an output."""


def __getattr__(name: str):
    module = _ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'psyrun.exceptions' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
