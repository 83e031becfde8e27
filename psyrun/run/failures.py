"""Per-row failure accounting: a row that raises costs one row, not the job.

A process job evaluates its rows block by block; a row whose ``execute``
raises is left out of the results and counted here, the first few
tracebacks go to the job's log, and the job finishes its range. At the end
it raises :class:`RowsFailed`, which :mod:`psyrun.worker` turns into a
"failed" marker (``psy status -v`` names the job) with exit status 0, so the
merge still collects the other rows and ``psy run -c`` evaluates just the
failed ones again.
"""

from __future__ import annotations

import re
import sys
import traceback

__all__ = ["RowFailures", "RowsFailed", "failed_row_count"]

# The start of RowsFailed's message, which a job's failed marker keeps.
_COUNT = re.compile(r"^(\d+) row\(s\) raised an exception")


class RowFailures:
    """Rows whose evaluation raised: counted, the first few tracebacks printed.

    Parameters
    ----------
    max_printed : int
        Tracebacks printed to standard error; later failures are only counted.
    quiet : callable, optional
        ``quiet(exc)`` true: the failure is counted without printing, its
        message is shown elsewhere and says it all (``psy test``).
    """

    def __init__(self, max_printed: int = 3, quiet=None) -> None:
        self.count = 0
        self.first: str = ""
        self.max_printed = max_printed
        self.quiet = quiet

    def add(self, row: dict, exc: BaseException) -> None:
        """Record one failed row and print its traceback (the first few only)."""
        self.count += 1
        if not self.first:
            self.first = f"{type(exc).__name__}: {exc}"
        if self.quiet is not None and self.quiet(exc):
            return
        if self.count <= self.max_printed:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            print(f"psyrun: evaluating {row!r} raised:\n{text}", file=sys.stderr, flush=True)
        elif self.count == self.max_printed + 1:
            print("psyrun: further failing rows are counted, not printed", file=sys.stderr)

    def merge(self, other: RowFailures) -> None:
        """Add the failures counted by `other` (another worker of the same job)."""
        self.count += other.count
        self.first = self.first or other.first


class RowsFailed(Exception):
    """Some rows of a job raised; the job kept the others and finished its range.

    :mod:`psyrun.worker` marks the job failed (``psy status -v`` names it) but
    exits with status 0 so that the merge still collects the other rows.
    """

    def __init__(self, failures: RowFailures) -> None:
        super().__init__(
            f"{failures.count} row(s) raised an exception (first: {failures.first}); "
            "the other rows were kept"
        )
        self.failures = failures


def failed_row_count(message: str) -> int:
    """Return the rows that raised, read from a failed job's message (0: not a RowsFailed one).

    >>> failures = RowFailures()
    >>> failures.count, failures.first = 3, "ValueError: bad"
    >>> failed_row_count(str(RowsFailed(failures)))
    3
    >>> failed_row_count("exit status 1")
    0
    """
    match = _COUNT.match(message or "")
    return int(match.group(1)) if match else 0
