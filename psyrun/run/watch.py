"""``psy status --watch``: follow a task until it is complete, from any shell.

Every interval it asks :func:`psyrun.run.runner.task_status` (the files in the
work directory, plus the scheduler's one status query) and draws one line:
rows done out of the total, rows per second over the last minute, the time
left at that rate, and the task's jobs per state. Nothing needs the ``psy
run`` that started the jobs: it may have exited long ago, on another login
node. On a terminal the line is redrawn in place; otherwise one line is
printed per interval (for logs).
"""

from __future__ import annotations

import collections
import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO

__all__ = [
    "RATE_WINDOW",
    "Sample",
    "Watcher",
    "count_jobs",
    "format_duration",
    "sample",
    "watch",
]

#: Seconds of history the rows-per-second figure is computed over.
RATE_WINDOW = 60.0

# JobState values counted as waiting to start.
_WAITING = ("queued", "blocked")


@dataclass
class Sample:
    """One look at a task: rows and jobs, and whether it has ended.

    Attributes
    ----------
    rows_done, rows_total : int
        Rows in the result file and the part files, out of the space's rows.
    jobs : dict of str to int
        Jobs per state: ``queued``, ``running``, ``done``, ``failed``.
    active : bool
        A ``psy run`` holds the task's lock, or the scheduler still holds jobs.
    merged : bool
        The result file reads back and holds every completed row (no part
        file is waiting to be merged).
    stalled : str
        What holds up jobs that are still queued but cannot start by
        themselves (held, or blocked by a failed dependency); ``''`` when none.
    """

    rows_done: int
    rows_total: int
    jobs: dict[str, int] = field(default_factory=dict)
    active: bool = False
    merged: bool = True
    stalled: str = ""

    @property
    def complete(self) -> bool:
        """Every row is in a result file that reads back, and nothing is left to run."""
        return not self.active and self.merged and self.rows_done >= self.rows_total

    @property
    def failed(self) -> bool:
        """Nothing is left to run, yet jobs failed or rows are missing."""
        return not self.active and not self.complete


def _done_markers(status_dir: str) -> int:
    try:
        return sum(1 for e in os.listdir(status_dir) if e.endswith(".done"))
    except OSError:
        return 0


def sample(task) -> Sample:
    """Look at `task` once (files on disk and one scheduler query)."""
    from psyrun.run.runner import describe_waits, scheduler_for, task_status

    # The scheduler keeps its status answer until told to forget it: ask afresh.
    scheduler = scheduler_for(task)
    scheduler.refresh()
    report = task_status(task)
    jobs = count_jobs(report)
    # Held jobs and jobs blocked by a failed dependency do not start by
    # themselves: waiting for them would never end.
    stuck = [s for s in report.queued if s.status.in_queue and (s.held or not s.status.will_run)]
    moving = [s for s in report.queued if s.status.in_queue and s not in stuck]
    active = report.running_pid is not None or bool(moving)
    stalled = ""
    if stuck:
        stalled = describe_waits(stuck, scheduler, task.name) or (
            f"{len(stuck)} jobs wait for a job that failed"
        )
    progress = report.progress
    merged = progress.result == "ok" and not progress.unmerged
    return Sample(progress.completed, progress.total, jobs, active, merged, stalled)


def count_jobs(report) -> dict[str, int]:
    """Jobs of a :class:`psyrun.run.runner.StatusReport` per state (queued, running, ...)."""
    return {
        "queued": sum(1 for s in report.queued if str(s.status) in _WAITING),
        "running": sum(1 for s in report.queued if str(s.status) == "running"),
        "done": _done_markers(os.path.join(report.workdir, "status")),
        "failed": len(report.failed),
    }


def format_duration(seconds: float) -> str:
    """Return ``seconds`` as ``1h02m``, ``4m05s`` or ``12s``."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Watcher:
    """Turns successive samples into status lines with a rate and an ETA.

    Parameters
    ----------
    name : str
        The task's name, at the start of every line.
    window : float
        Seconds of history for the rate (default :data:`RATE_WINDOW`).
    """

    def __init__(self, name: str, window: float = RATE_WINDOW) -> None:
        self.name = name
        self.window = window
        self._history: collections.deque[tuple[float, int]] = collections.deque()

    def rate(self, now: float, rows_done: int) -> float | None:
        """Record a sample; return rows per second over the window (None: too early)."""
        self._history.append((now, rows_done))
        while len(self._history) > 2 and now - self._history[1][0] >= self.window:
            self._history.popleft()
        then, rows_then = self._history[0]
        if now - then <= 0:
            return None
        return max(0, rows_done - rows_then) / (now - then)

    def line(self, s: Sample, now: float) -> str:
        """Return the status line for sample `s` taken at time `now` (monotonic seconds)."""
        rate = self.rate(now, s.rows_done)
        share = f" ({100 * s.rows_done / s.rows_total:.0f}%)" if s.rows_total else ""
        parts = [f"{self.name}: {s.rows_done}/{s.rows_total} rows{share}"]
        if s.complete:
            parts.append("complete")
        elif rate is None:
            parts.append("rate: measuring")
        else:
            left = s.rows_total - s.rows_done
            eta = format_duration(left / rate) if rate > 0 else "unknown"
            parts.append(f"{rate:.3g} rows/s, ETA {eta}")
        jobs = ", ".join(
            f"{s.jobs.get(k, 0)} {k}" for k in ("queued", "running", "done", "failed")
        )
        return ", ".join(parts) + f"; jobs: {jobs}"


def watch(
    task,
    interval: float = 2.0,
    out: IO[str] | None = None,
    tty: bool | None = None,
) -> int:
    """Redraw the status of `task` every `interval` seconds until it has ended.

    Parameters
    ----------
    task : psyrun.tasks.TaskDef
        The task to follow.
    interval : float
        Seconds between two looks.
    out : file, optional
        Where to draw (default ``sys.stdout``).
    tty : bool, optional
        Redraw one line in place (default: whether `out` is a terminal);
        otherwise print one line per interval.

    Returns
    -------
    int
        0 when the task is complete, 1 when nothing runs any more but jobs
        failed or rows are missing. Ctrl-C raises KeyboardInterrupt.
    """
    if not interval > 0:
        raise ValueError(f"the interval must be a positive number of seconds, got {interval!r}")
    out = sys.stdout if out is None else out
    if tty is None:
        tty = bool(getattr(out, "isatty", lambda: False)())
    watcher = Watcher(task.name)
    while True:
        s = sample(task)
        text = watcher.line(s, time.monotonic())
        if tty:
            out.write("\r\x1b[K" + text)
        else:
            out.write(text + "\n")
        out.flush()
        if not s.active:
            if tty:
                out.write("\n")
            if s.failed:
                missing = s.rows_total - s.rows_done
                unmerged = "" if s.merged else ", the result file is not complete"
                if s.stalled:
                    out.write(f"{task.name}: jobs cannot start by themselves: {s.stalled}\n")
                out.write(
                    f"{task.name}: nothing is running any more; {s.jobs.get('failed', 0)} jobs "
                    f"failed, {missing} rows missing{unmerged} (`psy status -v {task.name}` "
                    f"shows why, `psy run -c {task.name}` finishes the task)\n"
                )
            out.flush()
            return 1 if s.failed else 0
        time.sleep(interval)
