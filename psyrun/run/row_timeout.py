"""Row timeout: end an ``execute`` call that runs longer than ``row_timeout`` seconds.

Without it, one row that hangs (a solver that never converges, a network
call that never returns) holds its job, and ``psy run``, forever.

How (in process jobs, which psyrun always runs as the main thread of their
process):

* **The soft limit.** :class:`RowTimer` runs a periodic ``SIGALRM``
  (``setitimer(ITIMER_REAL)``, every ``row_timeout / 8`` seconds, at least
  10 ms and at most 1 s) while a job evaluates rows; the handler raises
  :class:`RowTimeout` inside an ``execute`` call that has run for
  ``row_timeout`` seconds or more (so a call is stopped within one tick of
  the limit). The row then fails like any row
  that raises (its cause is ``timeout``; with ``record = [..., 'error']`` it
  is on record as ``RowTimeout: ...``) and the job goes on with the next row.
  Python code, ``time.sleep`` and waits on files, pipes and sockets are
  interrupted this way.
* **The hard limit.** A signal handler runs only between Python bytecodes:
  C code that does not return to Python (a long NumPy or compiled-extension
  call, with or without the GIL) cannot be interrupted. For those a watchdog
  (:func:`faulthandler.dump_traceback_later`, a C thread that needs no GIL)
  ends the whole job process when a call has run ``row_timeout + grace``
  seconds (``grace = max(5, row_timeout)``; the watchdog is re-armed at most
  every ``grace / 2`` seconds, so a call gets at least ``row_timeout +
  grace / 2``). It writes the stack of the stuck call to
  ``status/<job>.watchdog`` and exits with status 1; rows written to the
  part before are kept and the job counts as failed, "killed by the
  row_timeout watchdog" (:meth:`psyrun.backend.base.Backend.get_failed`
  reads that file). ``psy run -c`` evaluates the rest.
* **Vectorized execute**: the timeout applies to each call, that is to a
  whole block of rows; a block that times out fails as a whole (every row of
  it with cause ``timeout``), it is not evaluated again row by row.

The timer costs a clock read per row (``benchmarks/report_walltime.py``
measures it). Its alarm interrupts blocking system calls (that is how a
call waiting on a socket is stopped); Python retries an interrupted call by
itself (PEP 475), but a C library that does not retry on ``EINTR`` may
report an error for it. A task that uses ``SIGALRM`` or
``faulthandler.dump_traceback_later`` itself cannot use ``row_timeout``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import signal
import sys
import threading
import time

__all__ = ["RowTimeout", "RowTimer"]

#: Seconds the watchdog waits beyond ``row_timeout`` at least (see the module docstring).
MIN_GRACE = 5.0


class RowTimeout(Exception):
    """An ``execute`` call ran longer than the task's ``row_timeout``.

    A vectorized block that times out fails as a whole: the mapper does not
    evaluate it again row by row (``psyrun_whole_block``).
    """

    psyrun_whole_block = True


class RowTimer:
    """Limits each call of a function to :attr:`seconds` (see the module docstring).

    Use :meth:`armed` around a block of calls (it starts a periodic
    ``SIGALRM`` and installs its handler) and :meth:`wrap` for the function.
    A call only notes when it started: the handler, which runs every
    :attr:`tick` seconds, raises :class:`RowTimeout` in a call that has run
    for :attr:`seconds` or more. That costs a clock read per call instead of
    arming a timer for each (a call is stopped within one tick of the limit).

    Parameters
    ----------
    seconds : float
        The task's ``row_timeout``.
    report : str, optional
        File the watchdog writes the stuck call's stack to before it ends the
        process (``status/<job>.watchdog``; default: standard error, the log).
    """

    def __init__(self, seconds: float, report: str | None = None) -> None:
        self.report = report
        self._report_file = None
        self.seconds = float(seconds)
        self.grace = max(MIN_GRACE, self.seconds)
        self.tick = min(max(self.seconds / 8, 0.01), 1.0)
        self._started: float | None = None  # when the running call started
        self._watchdog_at = -1.0
        self.usable = threading.current_thread() is threading.main_thread()

    def _on_alarm(self, signum, frame):
        started = self._started
        if started is not None and time.monotonic() - started >= self.seconds:
            self._started = None
            raise RowTimeout(
                f"execute ran longer than row_timeout = {self.seconds:g} s and was stopped"
            )

    @contextlib.contextmanager
    def armed(self):
        """Start the periodic alarm for a block of calls; stop it (and the watchdog) after."""
        if not self.usable:
            yield
            return
        previous = signal.signal(signal.SIGALRM, self._on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.tick, self.tick)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._started = None
            faulthandler.cancel_dump_traceback_later()
            self._watchdog_at = -1.0
            signal.signal(signal.SIGALRM, previous)
            if self._report_file is not None:
                self._report_file.close()
                self._report_file = None

    def _watchdog_file(self):
        """Return the open file the watchdog writes to (open while armed: a C thread writes)."""
        if self.report is None:
            return sys.stderr
        if self._report_file is None:
            try:
                self._report_file = open(self.report, "a", encoding="utf-8")  # noqa: SIM115
            except OSError:
                self.report = None
                return sys.stderr
        return self._report_file

    def wrap(self, fn):
        """Return `fn` with every call limited to :attr:`seconds` (inside :meth:`armed`)."""
        if not self.usable:
            return fn
        monotonic = time.monotonic
        rearm = self.grace / 2
        watchdog_after = self.seconds + self.grace

        @functools.wraps(fn)
        def limited(*args, **kwargs):
            now = monotonic()
            if now - self._watchdog_at >= rearm:
                # For C code the alarm cannot interrupt (see the module docstring).
                faulthandler.dump_traceback_later(
                    watchdog_after, exit=True, file=self._watchdog_file()
                )
                self._watchdog_at = now
            self._started = now
            try:
                return fn(*args, **kwargs)
            finally:
                self._started = None

        return limited
