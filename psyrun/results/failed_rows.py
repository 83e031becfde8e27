"""Failed rows on record: rows whose ``execute`` raised, kept in the result.

With ``'error'`` in the task's ``record`` setting, every assignment whose
``execute`` raised (or timed out, :mod:`psyrun.run.row_timeout`) gets a row in
the result: its parameters, ``psy_error`` (``"ExceptionType: message"``,
the first line), ``psy_attempt`` when recorded, the other ``record``
columns, and no outputs (NaN, ``''`` for text). Rows that succeeded have
``psy_error == ''``.

Such a row is on record, not done:

* ``psy status``, ``psy run -c`` and the rounds count it as missing (it is
  evaluated again) and as failed, never as completed;
* when a later attempt evaluates the assignment, its row (a result or a new
  failure) replaces the failed one: the merge drops the failed row of the
  old result (:func:`psyrun.results.merge.replaced_failures`), and wherever a result
  and a failed row of one assignment meet, the result wins
  (:func:`failed_last`), so no
  assignment is ever in the file twice;
* ``psy status -v`` groups the failures by cause (``exception`` or
  ``timeout``) and by error message (:func:`summarize`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

__all__ = [
    "ERROR_COLUMN",
    "cause_of",
    "error_text",
    "failed_last",
    "failed_mask",
    "failure_block",
    "summarize",
]

#: The column holding a failed row's error ('' for rows that succeeded).
ERROR_COLUMN = "psy_error"
#: Characters of an error message kept on record.
MAX_ERROR = 500


def error_text(exc: BaseException) -> str:
    """``"ExceptionType: first line of the message"``, at most :data:`MAX_ERROR` characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text[:MAX_ERROR]


def cause_of(error: str) -> str:
    """Return the cause of a recorded failure: ``'timeout'`` or ``'exception'``."""
    return "timeout" if error.startswith("RowTimeout:") else "exception"


def failed_mask(column, n: int | None = None) -> np.ndarray:
    """Which rows of a ``psy_error`` column hold an error (None column: no row)."""
    if column is None:
        return np.zeros(n or 0, dtype=bool)
    a = np.asarray(column)
    if a.dtype.kind in "US":
        return np.char.str_len(a) > 0 if a.size else np.zeros(len(a), dtype=bool)
    return np.fromiter((isinstance(v, str) and v != "" for v in a), dtype=bool, count=len(a))


def failure_block(
    failed: list, keys: list[str], exclude, columns: dict, vectorized: bool = False
) -> dict | None:
    """Return the rows of `failed` (``(row, exception)`` pairs) as result columns.

    `columns` maps record column names to a function of the exceptions giving
    that column's values (see :func:`psyrun.results.records.failure_records`); with
    `vectorized` the parameter columns are arrays, like a vectorized block's.
    """
    if not failed:
        return None
    exclude = set(exclude)
    block: dict = {k: [row.get(k) for row, _ in failed] for k in keys if k not in exclude}
    if vectorized:
        from psyrun.store.columns import to_column

        block = {k: to_column(v) for k, v in block.items()}
    errors = [exc for _, exc in failed]
    for name, values in columns.items():
        block[name] = values(errors)
    return block


def failed_last(failed: np.ndarray) -> np.ndarray:
    """Priority order for matching rows: every result first, then failures, latest first.

    Where a result and failed rows hold one assignment, the result stands for
    it; of several failures, the latest (a later attempt).
    """
    idx = np.arange(len(failed))
    return np.concatenate([idx[~failed], idx[failed][::-1]])


def summarize(errors) -> tuple[Counter, Counter]:
    """``(count by cause, count by error message)`` of recorded failures."""
    by_error = Counter(str(e) for e in errors)
    by_cause: Counter = Counter()
    for text, n in by_error.items():
        by_cause[cause_of(text)] += n
    return by_cause, by_error
