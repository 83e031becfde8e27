"""Per-row records: the ``psy_*`` columns the task setting ``record`` adds.

``record = ['duration', 'host', 'job', 'finished', 'error', 'attempt']`` (any
subset) adds to every row the seconds its ``execute`` took, the host and the
job that evaluated it, when it finished (UTC, ISO 8601 text), its error
(``''`` when it succeeded) and the attempt that evaluated it. A vectorized
block gives each of its rows the block's time divided by its rows. With
``'error'``, rows that failed are kept on record (:mod:`psyrun.results.failed_rows`).

The attempt number is the job description's ``attempt`` field, else the
environment variable ``PSYRUN_ATTEMPT``, else 1 (:func:`attempt_number`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "RECORD_COLUMNS",
    "add_records",
    "attempt_number",
    "check_record",
    "failure_records",
    "timed",
]


#: What ``record`` may name, and the column each adds to the result.
RECORD_COLUMNS = {
    "duration": "psy_duration",
    "host": "psy_host",
    "job": "psy_job",
    "finished": "psy_finished",
    "error": "psy_error",
    "attempt": "psy_attempt",
}

#: Environment variable naming the attempt a job belongs to (after the description).
ATTEMPT_ENV = "PSYRUN_ATTEMPT"


def attempt_number(description=None) -> int:
    """Return the attempt a job is part of: description ``attempt``, ``PSYRUN_ATTEMPT``, or 1."""
    import os

    for value in ((description or {}).get("attempt"), os.environ.get(ATTEMPT_ENV)):
        try:
            n = int(value)
        except (TypeError, ValueError):
            continue
        if n >= 1:
            return n
    return 1


def check_record(record: Any, params: list[str]) -> list[str]:
    """Return the ``record`` setting as a list of known names, in the order given."""
    if isinstance(record, str):
        record = [record]
    if not isinstance(record, (list, tuple)):
        raise TypeError(f"record must be a list such as ['duration', 'host'], got {record!r}")
    out: list[str] = []
    for name in record:
        if name not in RECORD_COLUMNS:
            raise ValueError(
                f"record names {name!r}, which psyrun does not record; choose from "
                f"{', '.join(map(repr, RECORD_COLUMNS))}"
            )
        if name not in out:
            out.append(name)
    clash = [RECORD_COLUMNS[n] for n in out if RECORD_COLUMNS[n] in params]
    if clash:
        raise ValueError(
            f"record adds the column(s) {', '.join(map(repr, clash))}, but the parameter "
            "space already has a parameter of that name; rename the parameter or drop "
            "it from record"
        )
    return out


def timed(fn, calls: list):
    """Wrap `fn` to append ``(seconds, end time)`` of every call that returns a mapping."""

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if isinstance(out, Mapping):  # other results are failed rows, left out
            calls.append((time.perf_counter() - t0, time.time()))
        return out

    return timed


@functools.lru_cache(maxsize=1)
def _host() -> str:
    import socket

    return socket.gethostname()


def add_records(
    result: dict,
    record,
    n: int,
    calls,
    per_row: float,
    job: str | None,
    vectorized: bool,
    attempt: int = 1,
) -> None:
    """Add the ``psy_*`` columns of the task's ``record`` setting to `result` (`n` rows).

    Row by row, `calls` holds each kept row's time and end; when it does not
    match the kept rows (a row returned an odd value), or for a vectorized
    block, every row gets the block's time divided by its rows (`per_row`).
    """
    import datetime

    from psyrun.mapper import OutputKeyError

    columns = {RECORD_COLUMNS[name]: name for name in record}
    clash = [c for c in columns if c in result]
    if clash:
        raise OutputKeyError(
            f"execute (or setup) returned {clash[0]!r}, which the task's record setting "
            f"adds as a column; rename that output or remove {columns[clash[0]]!r} "
            "from record"
        )
    if calls is None or len(calls) != n:
        now = time.time()
        calls = [(per_row, now)] * n

    def utc(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()

    values = {
        "duration": lambda: [c[0] for c in calls],
        "host": lambda: [_host()] * n,
        "job": lambda: [job or ""] * n,
        "finished": lambda: [utc(c[1]) for c in calls],
        "error": lambda: [""] * n,
        "attempt": lambda: [attempt] * n,
    }
    for column, name in columns.items():
        data = values[name]()
        result[column] = np.asarray(data) if vectorized else data


def failure_records(record, job: str | None, attempt: int, vectorized: bool) -> dict:
    """Return the ``record`` columns of failed rows: name -> function of their exceptions.

    A failed row has no duration (NaN); it finished when it was recorded.
    """
    import datetime

    from psyrun.results.failed_rows import error_text

    def column(values: list):
        return np.asarray(values) if vectorized else values

    def finished(errors):
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        return column([now] * len(errors))

    makers = {
        "duration": lambda errors: column([float("nan")] * len(errors)),
        "host": lambda errors: column([_host()] * len(errors)),
        "job": lambda errors: column([job or ""] * len(errors)),
        "finished": finished,
        "error": lambda errors: column([error_text(e) for e in errors]),
        "attempt": lambda errors: column([attempt] * len(errors)),
    }
    return {RECORD_COLUMNS[name]: makers[name] for name in record}
