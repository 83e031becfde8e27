"""ImmediateRun: run every job right away, in the submitting process's machine."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from psyrun.scheduler.base import (
    JobState,
    JobStatus,
    Scheduler,
    check_args,
    normalize_dependencies,
)

# The entry point every psyrun job runs; jobs that start with it can run in a
# forked child of the current process instead of a fresh interpreter.
_WORKER_PREFIX = ("-m", "psyrun.worker")


class ImmediateRun(Scheduler):
    """Run each job when it is submitted, one after another.

    Not really a scheduler: :meth:`submit` returns once the job has finished.
    A job whose dependencies failed (or were skipped themselves) is not run;
    :meth:`get_status` reports it as :attr:`JobState.BLOCKED`, and
    :meth:`result` tells how every job ended.

    Commands of the form ``[sys.executable, '-m', 'psyrun.worker', ...]`` run
    in a forked child of this process (psyrun and numpy are already imported
    there, so a job costs milliseconds instead of an interpreter start-up),
    unless `fork` is False or other threads are running (forking a
    multi-threaded process can deadlock the child); anything else runs as a
    subprocess.

    Parameters
    ----------
    fork
        Allow the forked fast path for psyrun worker commands.
    """

    attached = True
    local = True
    monitor = None

    def wait(self, jobids) -> None:
        """Return at once: every job ran during its submission."""

    def shutdown(self, cancel: bool = False) -> None:
        """Nothing to release."""

    def __init__(self, fork: bool = True) -> None:
        self.fork = fork
        self._next_id = 0
        # id -> (state, name, exit status or None when skipped)
        self._jobs: dict[str, tuple[JobState, str | None, int | None]] = {}

    def submit(
        self,
        args: Sequence[str],
        output_filename: str,
        name: str | None = None,
        depends_on: Iterable[str] | None = None,
        scheduler_args: Mapping[str, Any] | None = None,
    ) -> str:
        """Run the job now and return its id (see :meth:`Scheduler.submit`).

        `scheduler_args` are accepted and ignored.
        """
        argv = check_args(args)
        output_filename = os.fspath(output_filename)
        jobid = str(self._next_id)
        self._next_id += 1

        # Ids this instance never issued (earlier psy runs) count as finished.
        failed_deps = [
            d
            for d in normalize_dependencies(depends_on)
            if d in self._jobs and self._jobs[d][0] is not JobState.COMPLETED
        ]
        if failed_deps:
            self._jobs[jobid] = (JobState.BLOCKED, name, None)
            return jobid

        if self._can_fork(argv):
            code = _run_forked(argv[3:], output_filename)
        else:
            code = _run_subprocess(argv, output_filename)
        state = JobState.COMPLETED if code == 0 else JobState.FAILED
        self._jobs[jobid] = (state, name, code)
        return jobid

    def _can_fork(self, argv: list[str]) -> bool:
        return (
            self.fork
            and hasattr(os, "fork")
            and len(argv) >= 3
            and argv[0] == sys.executable
            and tuple(argv[1:3]) == _WORKER_PREFIX
            and threading.active_count() == 1
        )

    def kill(self, jobid: str) -> None:
        """Forget a skipped job; finished jobs cannot be killed (nothing to do)."""
        entry = self._jobs.get(jobid)
        if entry is not None and entry[0] is JobState.BLOCKED:
            self._jobs[jobid] = (JobState.CANCELLED, entry[1], None)

    def get_status(self, jobid: str) -> JobStatus | None:
        """Return BLOCKED for a skipped job, ``None`` otherwise (every job has finished)."""
        entry = self._jobs.get(jobid)
        if entry is None or not entry[0].in_queue:
            return None
        return JobStatus(jobid, entry[0], entry[1])

    def get_jobs(self) -> list[str]:
        """Return the skipped jobs (nothing is ever queued or running)."""
        return [j for j, (state, _, _) in self._jobs.items() if state.in_queue]

    def result(self, jobid: str) -> JobStatus | None:
        """Return how a job submitted here ended: COMPLETED, FAILED, BLOCKED or CANCELLED."""
        entry = self._jobs.get(jobid)
        if entry is None:
            return None
        return JobStatus(jobid, entry[0], entry[1])

    def returncode(self, jobid: str) -> int | None:
        """Return the exit status of a job that ran (``None`` if it was skipped or is unknown)."""
        entry = self._jobs.get(jobid)
        return None if entry is None else entry[2]


def _run_subprocess(argv: list[str], output_filename: str) -> int:
    """Run `argv` with stdout and stderr in `output_filename`; return its exit status."""
    with open(output_filename, "wb") as out:
        try:
            proc = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
            )
        except OSError as e:
            # A missing program is the job's failure, reported in its log.
            out.write(f"psyrun: cannot run {argv!r}: {e}\n".encode())
            return 127
    return proc.returncode


def _run_forked(worker_argv: list[str], output_filename: str) -> int:
    """Run ``psyrun.worker.main(worker_argv)`` in a forked child; return its exit status."""
    # Open in the parent so that an unwritable log is the caller's error, at once.
    fd = os.open(output_filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    # Buffered output would otherwise be written twice (by parent and child).
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves with os._exit; covered by tests
        _child(worker_argv, fd)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _child(worker_argv: list[str], fd: int) -> None:
    """Body of the forked child: never returns."""
    code = 1
    try:
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
        try:
            import importlib

            worker = importlib.import_module("psyrun.worker")
            result = worker.main(list(worker_argv))
            code = 0 if result is None else int(result)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
    finally:
        # Exit statuses wrap modulo 256: keep a failure a failure.
        os._exit(code if 0 <= code <= 255 else 1)
