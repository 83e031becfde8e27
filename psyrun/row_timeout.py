"""Row timeout: end an ``execute`` call that runs longer than ``row_timeout`` seconds.

Without it, one row that hangs (a solver that never converges, a network
call that never returns) holds its job, and ``psy run``, forever.

How (in process jobs, which psyrun always runs as the main thread of their
process):

* **The soft limit.** :class:`RowTimer` arms ``setitimer(ITIMER_REAL)``
  around every call of ``execute``; when it fires, the ``SIGALRM`` handler
  raises :class:`RowTimeout` inside the call. The row then fails like any row
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
  grace / 2``). It writes the stack of the stuck call to the job's log and
  exits with status 1; rows written to the part before are kept and the job
  counts as failed ("did not finish"). ``psy run -c`` evaluates the rest.
* **Vectorized execute**: the timeout applies to each call, that is to a
  whole block of rows; a block that times out fails as a whole (every row of
  it with cause ``timeout``), it is not evaluated again row by row.

The timer costs about a microsecond per row. A task that uses ``SIGALRM`` or
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
    """Arms the row timeout around each call of a function (see the module docstring).

    Use :meth:`armed` around a block of calls (it installs the ``SIGALRM``
    handler and the watchdog) and :meth:`wrap` for the function.

    Parameters
    ----------
    seconds : float
        The task's ``row_timeout``.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.grace = max(MIN_GRACE, self.seconds)
        self._active = False
        self._watchdog_at = -1.0
        self.usable = threading.current_thread() is threading.main_thread()

    def _on_alarm(self, signum, frame):
        if self._active:
            self._active = False
            raise RowTimeout(
                f"execute ran longer than row_timeout = {self.seconds:g} s and was stopped"
            )

    def _arm_watchdog(self) -> None:
        now = time.monotonic()
        if now - self._watchdog_at >= self.grace / 2:
            faulthandler.dump_traceback_later(
                self.seconds + self.grace, exit=True, file=sys.stderr
            )
            self._watchdog_at = now

    @contextlib.contextmanager
    def armed(self):
        """Install the ``SIGALRM`` handler for a block of calls; remove it after."""
        if not self.usable:
            yield
            return
        previous = signal.signal(signal.SIGALRM, self._on_alarm)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._active = False
            faulthandler.cancel_dump_traceback_later()
            self._watchdog_at = -1.0
            signal.signal(signal.SIGALRM, previous)

    def wrap(self, fn):
        """Return `fn` with every call limited to :attr:`seconds` (inside :meth:`armed`)."""
        if not self.usable:
            return fn
        seconds = self.seconds
        setitimer, real = signal.setitimer, signal.ITIMER_REAL

        @functools.wraps(fn)
        def limited(*args, **kwargs):
            self._arm_watchdog()
            self._active = True
            setitimer(real, seconds)
            try:
                return fn(*args, **kwargs)
            finally:
                setitimer(real, 0)
                self._active = False

        return limited
