"""Fail fast: stop a run whose first rows all fail the same way.

A bug in ``execute`` (a misspelt name, a missing file) makes every row raise
the same exception. Without this, a process job would evaluate its whole range
(10^6 rows, each failing) before anyone learns of it.

The rule (task setting ``fail_fast = N``, default 20, 0 turns it off): when
the first ``N`` rows a job evaluates all raise the same exception type with
the same message, the job stops at once. It says so in one line
(``fail fast: the first 20 rows all raised NameError: ...``), which is its
``.failed`` marker and what ``psy run`` and ``psy status`` show, and writes
``status/fail-fast`` in the task's work directory. Every other job of the
run looks for that file between blocks of rows (a LoadBalancing worker
before each claim) and stops too, with a line naming the job that failed
fast. The rows evaluated before are kept (failed ones on record when
``record`` has ``'error'``), and the jobs exit with status 0, so the merge
still runs. A new ``psy run`` removes the file with the other markers.

A row that succeeds, or one that raises another exception or message,
within the first ``N`` disarms the check for that job.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

__all__ = ["FailFast", "FailFastWatch", "check_stopped"]

#: Name of the file, in the task's ``status/`` directory, that stops the other jobs.
MARKER = "fail-fast"


class FailFast(Exception):
    """The job stopped: its first rows all failed the same way (or another job's did).

    :mod:`psyrun.worker` marks the job failed with this one line (no
    traceback) and exits with status 0, so that the merge keeps what was
    evaluated.
    """


class FailFastWatch:
    """Watches a job's first rows; raises :class:`FailFast` when they all fail alike.

    Parameters
    ----------
    n : int
        The task's ``fail_fast`` (0: never).
    marker : str
        The ``status/fail-fast`` file of the task.
    job : str
        The job's name (written into the marker).
    """

    def __init__(self, n: int, marker: str, job: str) -> None:
        self.n = int(n)
        self.marker = marker
        self.job = job
        self.failures = 0
        self.message: str | None = None
        self.decided = self.n <= 0

    def wrap(self, fn):
        """Return `fn` noting whether a call returned a result (while undecided)."""
        if self.decided:
            return fn

        @functools.wraps(fn)
        def watched(*args, **kwargs):
            out = fn(*args, **kwargs)
            if isinstance(out, Mapping):
                self.decided = True  # a row succeeded
            return out

        return watched

    def failed(self, exc: BaseException) -> None:
        """Note one failed row; raise :class:`FailFast` on the n-th alike failure."""
        if self.decided:
            return
        text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        if self.message is None:
            self.message = text
        elif text != self.message:
            self.decided = True
            return
        self.failures += 1
        if self.failures >= self.n:
            self.decided = True
            line = (
                f"fail fast: the first {self.failures} rows all raised {self.message}; "
                "job stopped (fix execute, then `psy run -c`; set fail_fast = 0 to "
                "evaluate every row anyway)"
            )
            from psyrun.atomic import atomic_write

            try:
                os.makedirs(os.path.dirname(self.marker), exist_ok=True)
                with atomic_write(self.marker) as f:
                    f.write(f"{self.job}\n{line}\n")
            except OSError:
                pass  # the other jobs then run on; this one still stops
            raise FailFast(line)


def check_stopped(marker: str, job: str) -> None:
    """Raise :class:`FailFast` when a job (or another worker of this one) has failed fast.

    The process that failed fast raised already and never looks again; every
    other one stops, pool workers of the same job too.
    """
    if not os.path.exists(marker):
        return
    try:
        with open(marker, encoding="utf-8", errors="replace") as f:
            who = f.readline().strip()
    except OSError:
        who = ""
    if who == job:
        raise FailFast(f"stopped because another worker of {job} failed fast (see the log)")
    raise FailFast(f"stopped because {who or 'another job'} failed fast (see its log)")
