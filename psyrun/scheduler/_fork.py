"""Starting, polling and stopping the jobs of the local schedulers.

Shared by :class:`~psyrun.scheduler.immediate.ImmediateRun` and
:class:`~psyrun.scheduler.localpool.LocalPool`. A job is either a forked child
of this process that runs a module as ``__main__`` (the fast path for
``[sys.executable, '-m', MODULE, *args]``: the interpreter, psyrun and numpy
are already loaded, so a job costs milliseconds) or a subprocess.

The fork path is taken only when it is safe: :func:`os.fork` exists, no other
Python thread runs (a fork copies the locks other threads hold, not the
threads, so the child could deadlock) and the module can be imported in this
process. The child sees this process's ``sys.path`` and imported modules.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

#: Seconds that stopped jobs get to run their ``finally`` blocks after SIGTERM.
DEFAULT_GRACE = 5.0

# The sleeps between polls of running children grow from the first to the last
# value: short jobs are noticed at once, long ones cost few wake-ups.
_POLL_MIN = 0.0005
_POLL_MAX = 0.02


def other_threads_running() -> bool:
    """Tell whether another Python thread runs in this process (then forking is unsafe)."""
    return threading.active_count() > 1


def module_command(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """Return ``(module, args)`` for ``[sys.executable, '-m', module, *args]``, else None."""
    if len(argv) < 3 or argv[1] != "-m" or not argv[2] or argv[2].startswith("-"):
        return None
    if argv[0] != sys.executable:
        return None
    return argv[2], list(argv[3:])


def _importable(module: str) -> bool:
    """Tell whether this process can run `module` as ``python -m`` would."""
    try:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations is not None:
            # ``python -m package`` runs ``package.__main__``.
            spec = importlib.util.find_spec(module + ".__main__")
    except Exception:
        # A module in sys.modules without __spec__ (ValueError), a parent
        # package that fails to import, ...: a subprocess will tell in its log.
        return False
    return spec is not None and spec.loader is not None


def fork_target(argv: Sequence[str], allow_fork: bool) -> tuple[str, list[str]] | None:
    """Return ``(module, args)`` when `argv` may run in a forked child, else None."""
    if not allow_fork or not hasattr(os, "fork"):
        return None
    target = module_command(argv)
    if target is None or other_threads_running() or not _importable(target[0]):
        return None
    return target


class Child:
    """A started job: a forked child or a subprocess, until it is reaped.

    Parameters
    ----------
    pid
        Process id (None for a job that could not be started).
    popen
        The :class:`subprocess.Popen` of a subprocess (it reaps its own child).
    code
        Exit status of a job that ended before it started (a missing program).
    """

    def __init__(
        self, pid: int | None, popen: subprocess.Popen | None = None, code: int | None = None
    ) -> None:
        self.pid = pid
        self.popen = popen
        self.code = code
        self._pidfd: int | None = None

    def pidfd(self) -> int | None:
        """Return a descriptor that becomes readable when the job ends (Linux), else None.

        Waiting on it wakes up the moment a job ends, instead of polling.
        """
        if self._pidfd is None and self.code is None and self.pid is not None:
            with contextlib.suppress(AttributeError, OSError):
                self._pidfd = os.pidfd_open(self.pid)
        return self._pidfd

    def _ended(self, code: int | None) -> None:
        self.code = code
        if code is not None and self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def poll(self) -> int | None:
        """Reap the job if it has ended and return its exit status (-N: signal N), else None."""
        if self.code is None:
            if self.popen is not None:
                self._ended(self.popen.poll())
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid != 0:
                    self._ended(os.waitstatus_to_exitcode(status))
        return self.code

    def wait(self) -> int:
        """Block until the job ends (interruptible by signals); return its exit status."""
        if self.code is None:
            if self.popen is not None:
                self._ended(self.popen.wait())
            else:
                _, status = os.waitpid(self.pid, 0)
                self._ended(os.waitstatus_to_exitcode(status))
        return self.code

    def send_signal(self, sig: int) -> None:
        """Send `sig` unless the job has been reaped (its pid may belong to another process)."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def start(
    argv: list[str],
    output_filename: str,
    allow_fork: bool,
    register: Callable[[Child], None] | None = None,
    environment: Mapping[str, str] | None = None,
) -> Child:
    """Start `argv` with stdout and stderr in `output_filename`.

    `environment`: variables set for the job on top of this process's.
    `register` is called with the new child before this returns; on the fork
    path SIGINT and SIGTERM are held back until it has returned, so an
    interrupt cannot leave a child that nobody knows of.

    Raises
    ------
    OSError
        When `output_filename` cannot be written (the caller's error; a
        missing program is the job's failure, exit status 127, told in its log).
    """
    target = fork_target(argv, allow_fork)
    if target is not None:
        _prepare(target[0])
        return _start_forked(target[0], target[1], output_filename, register, environment)
    with open(output_filename, "wb") as out:
        try:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **environment} if environment else None,
            )
        except OSError as e:
            out.write(f"psyrun: cannot run {argv!r}: {e}\n".encode())
            child = Child(None, code=127)
        else:
            # (Blocking signals here would leave them blocked in the new program.)
            child = Child(popen.pid, popen=popen)
    if register is not None:
        register(child)
    return child


_INTERRUPTS = {signal.SIGINT, signal.SIGTERM}
_PREPARED: set[str] = set()


def _prepare(module: str) -> None:
    """Let a psyrun module load, once in this process, what each of its forked jobs needs.

    Only psyrun's own modules are imported here (another module's top level
    may do anything); one that defines ``prepare_fork()`` has it called.
    Every child then finds those imports done instead of repeating them.
    """
    if module in _PREPARED or module.split(".")[0] != __name__.split(".")[0]:
        return
    _PREPARED.add(module)
    try:
        hook = getattr(importlib.import_module(module), "prepare_fork", None)
        if callable(hook):
            hook()
    except Exception:
        pass  # the child imports it again and reports what fails, in its log


def _start_forked(
    module: str,
    args: list[str],
    output_filename: str,
    register: Callable[[Child], None] | None,
    environment: Mapping[str, str] | None = None,
) -> Child:
    # Open in the parent so that an unwritable log is the caller's error, at once.
    fd = os.open(output_filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    # Buffered output would otherwise be written twice (by parent and child).
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
    try:
        try:
            pid = os.fork()
        except BaseException:
            os.close(fd)
            raise
        if pid == 0:  # pragma: no cover - the child leaves with os._exit; covered by tests
            _child_main(module, args, fd, old_mask, environment)
        os.close(fd)
        child = Child(pid)
        if register is not None:
            register(child)
    finally:
        # A signal that came meanwhile is handled now, with the child known.
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return child


def _raise_terminated(signum: int, frame: object) -> None:
    # SystemExit unwinds the job's stack, so its finally blocks flush their rows.
    raise SystemExit(128 + signal.SIGTERM)


def _reset_signals() -> None:
    """Give the forked child the signal dispositions of a fresh interpreter, SIGTERM aside."""
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if sig in (signal.SIGINT, signal.SIGTERM):
            continue
        # Handlers installed by the parent (psy's, asyncio's) are not the job's.
        with contextlib.suppress(OSError, ValueError, TypeError):
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_terminated)


def _exit_code(exc: SystemExit) -> int:
    """Return the exit status ``python`` gives for `exc` (a message: to stderr, status 1)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        # Exit statuses wrap modulo 256: keep a failure a failure.
        return code if 0 <= code <= 255 else 1
    print(code, file=sys.stderr)
    return 1


def _child_main(
    module: str,
    args: list[str],
    fd: int,
    mask: Iterable[int],
    environment: Mapping[str, str] | None = None,
) -> None:
    """Body of the forked child: run `module` as ``__main__``; never returns."""
    code = 1
    try:
        os.environ.update(environment or {})
        _reset_signals()
        # Signals held back during the fork arrive now, at the job's handlers.
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # The parent's exit handlers are not the job's; the job's own run at its end.
        atexit._clear()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        # sys.stdout may be a capture object (pytest, IDEs) rather than fd 1:
        # point Python's streams at the log explicitly.
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        # Like ``python -m``: argv[0] is replaced by the module's file name.
        sys.argv = ["-m", *args]
        try:
            import warnings

            # The module may be imported here already (psy imports the worker);
            # a fresh interpreter would not have it, so runpy's warning is moot.
            warnings.filterwarnings(
                "ignore", message=r".*found in sys\.modules", category=RuntimeWarning
            )
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
                code = 0
            finally:
                atexit._run_exitfuncs()
        except SystemExit as e:
            code = _exit_code(e)
        except KeyboardInterrupt:
            import traceback

            traceback.print_exc()
            code = 128 + signal.SIGINT
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
    finally:
        os._exit(code)


def wait_any(children: Iterable[Child], deadline: float | None = None) -> list[Child]:
    """Poll `children` until one or more have ended, or `deadline` (monotonic) passes.

    Returns the children that have ended (reaped), possibly none at the deadline.
    """
    children = list(children)
    sleep = _POLL_MIN
    while True:
        ended = [c for c in children if c.poll() is not None]
        now = time.monotonic()
        if ended or not children or (deadline is not None and now >= deadline):
            return ended
        pause = None if deadline is None else deadline - now
        fds = [c.pidfd() for c in children]
        if None not in fds:
            # Sleeps until a job ends (or the deadline); signals still interrupt it.
            select.select(fds, [], [], pause)
            continue
        time.sleep(max(0.0, sleep if pause is None else min(sleep, pause)))
        sleep = min(sleep * 2, _POLL_MAX)


def stop(children: Iterable[Child], grace: float = DEFAULT_GRACE) -> None:
    """SIGTERM every child, wait up to `grace` s in total, SIGKILL the rest, reap all.

    A second interrupt during the grace period cuts it short; the children
    are reaped in any case.
    """
    alive = [c for c in children if c.poll() is None]
    for c in alive:
        c.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        while alive and time.monotonic() < deadline:
            ended = wait_any(alive, deadline=deadline)
            alive = [c for c in alive if c not in ended]
    except BaseException:
        # A second Ctrl-C: stop waiting, kill at once.
        pass
    for c in alive:
        c.send_signal(signal.SIGKILL)
    for c in alive:
        while True:
            try:
                c.wait()
                break
            except BaseException:
                continue  # reap even through repeated interrupts
