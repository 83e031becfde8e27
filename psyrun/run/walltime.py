"""Walltime-aware process jobs: stop taking rows before the job's time limit.

A batch system kills a job at its time limit, and the row being evaluated
then is lost, and the job counts as failed. A process job that knows its limit
does better: before each block of rows it checks that the block would finish,
with a margin, before the limit. When it would not, the job stops taking rows,
writes what it evaluated to its part file and ends as **partial** (exit
status 0): ``status/<job>.partial`` holds how many rows it evaluated and how
many of its range it left, ``psy status`` lists it, and ``psy run -c`` (or an
automatic round) evaluates the rest.

Where the limit comes from (the first that answers):

1. ``PSYRUN_TIME_LIMIT`` in the job's environment: seconds from the start of
   the job (set it to test, or for a batch system psyrun cannot ask);
2. Slurm (``SLURM_JOB_ID`` set): ``SLURM_JOB_END_TIME`` (epoch seconds, set by
   newer Slurm), else the time left that ``squeue -h -j $SLURM_JOB_ID -o %L``
   reports when the job starts;
3. Grid Engine (``JOB_ID`` and ``SGE_ROOT`` set): ``h_rt`` in the hard
   resource list of ``qstat -j $JOB_ID``, counted from the job's start;
4. the task's ``scheduler_args['timelimit']`` (any format the schedulers
   accept: ``'1:00:00'``, ``'90'`` minutes, ``'15m'``), counted from the start
   of the job process.

The rule (see :class:`Walltime`): a block of ``k`` rows starts only when
``now + k * mean row time + margin <= deadline``, where ``margin = max(
walltime_margin, 2 * slowest row so far, 2 * slowest flush so far)``;
otherwise the block shrinks to the rows that fit, and with none the job stops.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass

__all__ = ["JobPartial", "Walltime", "job_deadline", "limit_seconds", "read_partial"]

#: Environment variable giving a job's time limit in seconds from its start.
LIMIT_ENV = "PSYRUN_TIME_LIMIT"
#: Seconds a query of the batch system may take.
QUERY_TIMEOUT = 20


class JobPartial(Exception):
    """The job stopped taking rows before its time limit; what it evaluated is kept.

    :mod:`psyrun.worker` writes ``status/<job>.partial`` (:meth:`marker_text`)
    and exits with status 0.

    Parameters
    ----------
    evaluated : int
        Rows this job evaluated (kept in its part, failed rows included).
    left : int
        Rows of its share it did not start.
    limit : Walltime
        The limit that stopped it.
    failed : int
        Of the evaluated rows, those whose ``execute`` raised.
    """

    def __init__(self, evaluated: int, left: int, limit: Walltime, failed: int = 0) -> None:
        self.evaluated = evaluated
        self.left = left
        self.limit = limit
        self.failed = failed
        super().__init__(
            f"stopped before the time limit ({limit.source}): {evaluated} rows evaluated, "
            f"{left} left for the next round (margin {limit.margin():.3g} s)"
            + (f"; {failed} of them raised an exception" if failed else "")
        )

    def marker_text(self) -> str:
        """Return the JSON text of the job's ``.partial`` marker."""
        return json.dumps(
            {
                "state": "partial",
                "reason": "time limit",
                "evaluated": self.evaluated,
                "left": self.left,
                "failed": self.failed,
                "source": self.limit.source,
                "margin": round(self.limit.margin(), 3),
                "deadline": self.limit.deadline,
                "stopped": time.time(),
                "message": str(self),
            }
        )


def read_partial(path: str) -> dict | None:
    """Return what a ``.partial`` marker says (None when it is missing or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def limit_seconds(value) -> float | None:
    """Seconds of a time limit written as sbatch or the ``timelimit`` setting accept it.

    ``'D-HH:MM:SS'``, ``'HH:MM:SS'``, ``'MM:SS'``, ``'D-HH'``, minutes as a
    number, or units such as ``'1h30m'``. None for ``UNLIMITED``, ``INVALID``,
    ``NOT_SET`` or anything else that is not a limit.
    """
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if m and (m.group(1) or m.group(3)):
        days = int(m.group(1) or 0)
        parts = [int(g) for g in m.groups()[1:] if g is not None]
        if m.group(1):  # D-H, D-H:M, D-H:M:S
            parts += [0] * (3 - len(parts))
        elif len(parts) == 2:  # M:S
            parts = [0, *parts]
        h, mi, s = parts
        return float(((days * 24 + h) * 60 + mi) * 60 + s)
    try:
        from psyrun.scheduler.gridengine import format_time

        h, mi, s = (int(x) for x in format_time(value).split(":"))
    except (ValueError, TypeError):
        return None
    return float(h * 3600 + mi * 60 + s)


def _query(argv: list[str]) -> str | None:
    import shutil
    import subprocess

    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _slurm_deadline(env) -> tuple[float, str] | None:
    end = env.get("SLURM_JOB_END_TIME")
    if end and end.strip().isdigit() and int(end) > 0:
        return float(end), "Slurm's SLURM_JOB_END_TIME"
    out = _query(["squeue", "-h", "-j", env["SLURM_JOB_ID"], "-o", "%L"])
    left = limit_seconds(out.strip().splitlines()[0]) if out and out.strip() else None
    if left is None:
        return None
    return time.time() + left, "Slurm's time left (squeue %L)"


def _gridengine_deadline(env, started: float) -> tuple[float, str] | None:
    out = _query(["qstat", "-j", env["JOB_ID"]])
    if not out:
        return None
    m = re.search(r"h_rt=([0-9:]+)", out)
    if m is None:
        return None
    # qstat gives plain seconds ("h_rt=90"), or H:MM:SS as it was asked for.
    text = m.group(1)
    seconds = float(text) if text.isdigit() else limit_seconds(text)
    if seconds is None:
        return None
    return started + seconds, "Grid Engine's h_rt (qstat -j)"


def job_deadline(task, started: float, env=None) -> tuple[float, str] | None:
    """Return ``(deadline as epoch seconds, where it came from)``, or None without a limit.

    Parameters
    ----------
    task : psyrun.tasks.TaskDef
        The task (its ``scheduler_args['timelimit']`` is the last resort).
    started : float
        When the job started (epoch seconds).
    env : mapping, optional
        The job's environment (default ``os.environ``).
    """
    env = os.environ if env is None else env
    given = env.get(LIMIT_ENV)
    if given:
        try:
            seconds = float(given)
        except ValueError:
            seconds = math.nan
        if seconds > 0:
            return started + seconds, f"{LIMIT_ENV}={given}"
    found = None
    if env.get("SLURM_JOB_ID"):
        found = _slurm_deadline(env)
    elif env.get("JOB_ID") and env.get("SGE_ROOT"):
        found = _gridengine_deadline(env, started)
    if found is not None:
        return found
    value = (task.scheduler_args or {}).get("timelimit")
    if callable(value):
        return None  # depends on the job's name: the batch system's own answer decides
    seconds = limit_seconds(value)
    if seconds:
        return started + seconds, f"scheduler_args['timelimit'] = {value!r}"
    return None


@dataclass
class Walltime:
    """The time a job has left, and whether the next rows fit into it.

    Attributes
    ----------
    deadline : float
        When the batch system ends the job (epoch seconds).
    source : str
        Where the limit came from.
    min_margin : float
        The task's ``walltime_margin``: seconds kept free at the end at least.
    """

    deadline: float
    source: str
    min_margin: float = 10.0
    rows: int = 0
    seconds: float = 0.0
    slowest_row: float = 0.0
    slowest_flush: float = 0.0

    @classmethod
    def for_job(cls, task, started: float | None = None) -> Walltime | None:
        """Return the job's :class:`Walltime`, or None when it has no known limit."""
        started = time.time() if started is None else started
        found = job_deadline(task, started)
        if found is None:
            return None
        return cls(found[0], found[1], float(getattr(task, "walltime_margin", 10.0)))

    def margin(self) -> float:
        """Seconds kept free before the deadline (see the module docstring)."""
        return max(self.min_margin, 2 * self.slowest_row, 2 * self.slowest_flush)

    def rows_done(self, n: int, seconds: float) -> None:
        """Note that `n` rows took `seconds` together (a block of them)."""
        if n <= 0:
            return
        self.rows += n
        self.seconds += seconds
        self.slowest_row = max(self.slowest_row, seconds / n)

    def flushed(self, seconds: float) -> None:
        """Note that writing results to the part took `seconds`."""
        self.slowest_flush = max(self.slowest_flush, seconds)

    def rows_that_fit(self, wanted: int, now: float | None = None) -> int:
        """How many of the `wanted` next rows may start now (0: stop taking rows)."""
        now = time.time() if now is None else now
        room = self.deadline - self.margin() - now
        if room <= 0:
            return 0
        if not self.rows:
            return wanted  # nothing known yet: the margin must cover the first row
        mean = self.seconds / self.rows
        if mean <= 0:
            return wanted
        return int(min(wanted, room // mean))

    def left(self, now: float | None = None) -> float:
        """Seconds until the deadline."""
        return self.deadline - (time.time() if now is None else now)
