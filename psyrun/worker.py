"""The one entry point every psyrun job runs.

``python -m psyrun.worker <job description file> [array index]``

The job description (written by the backend when ``psy run`` submits, see
:func:`psyrun.jobs.write_job_description`) names the task file, the backend
and the kind of job. The worker loads the task, checks that the description
was written by this psyrun for the backend the task names now, asks the
backend to run the job, and records how it ended in
``<workdir>/<task>/status/<job name>.done``, ``.failed`` or ``.partial``
(stopped before its time limit with rows left, :mod:`psyrun.run.walltime`;
exit status 0). Tracebacks go to
standard output/error, which the scheduler sends to the job's log file.

Every job of a run evaluates the task as it was when the run was planned:
the description names a copy of the task file's source (and of
``psy-conf.py``) made by ``psy run`` (:mod:`psyrun.run.versions`), and the worker
executes that copy, so editing the task file during a run changes nothing
the run computes. Jobs run in the directory of the task file, as in psyrun
0.8 (so ``execute`` can open files kept next to it, and the task file's
directory is on ``sys.path`` for its imports); relative ``workdir`` and
``resultfile`` settings keep meaning what they meant where ``psy`` was
started.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

__all__ = ["main", "prepare_fork"]

USAGE = "usage: python -m psyrun.worker <job description file> [array index]"


class Stopped(SystemExit):
    """A signal stopped the job (raised by the worker's SIGTERM handler)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


#: Signals that arrived while this process ran a job: a SystemExit after one is
#: the signal's (whichever handler raised it), any other is the task's sys.exit().
_signalled: list[int] = []


def _stop_on_sigterm(signum, frame):
    # A batch system's preemption or `psy` stopping its children: unwind so that
    # the job's finally blocks write the rows evaluated so far.
    raise Stopped(signum)


def _note_sigterm(previous):
    """Return a SIGTERM handler that records the signal, then does what `previous` did."""

    def handler(signum, frame):
        _signalled.append(signum)
        if callable(previous):
            previous(signum, frame)
        else:
            _stop_on_sigterm(signum, frame)

    return handler


def main(argv: list[str] | None = None) -> int:
    """Run one job; return its exit status.

    Parameters
    ----------
    argv : list of str, optional
        ``[job description file]`` or ``[job description file, index]``;
        default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success (also when only some rows failed, or the task's code
        called ``sys.exit()``: the job is then marked failed for ``psy
        status`` but the merge still runs), 1 when
        the job failed, 2 for a usage error.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) not in (1, 2):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        index = int(argv[1]) if len(argv) == 2 else None
    except ValueError:
        print(f"{USAGE}\nthe array index must be an integer, got {argv[1]!r}", file=sys.stderr)
        return 2

    from psyrun.jobs import JobDescriptionError, read_job_description

    try:
        description = read_job_description(argv[0])
    except JobDescriptionError as exc:
        print(f"psyrun.worker: {exc}", file=sys.stderr)
        return 1
    previous = signal.getsignal(signal.SIGTERM)
    try:
        if previous is not signal.SIG_IGN:
            signal.signal(signal.SIGTERM, _note_sigterm(previous))
        else:
            previous = None
    except ValueError:  # not the main thread: signals are not ours to handle
        previous = None
    _signalled.clear()

    started_in = os.getcwd()
    try:
        return _run(description, index)
    finally:
        # main() may run inside another process (a forked child, a test): leave it as it was.
        os.chdir(started_in)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(description: dict, index: int | None) -> int:
    import time

    from psyrun import durability
    from psyrun.atomic import atomic_write
    from psyrun.jobs import JobDescriptionError, check_job_description
    from psyrun.run.attempts import ATTEMPT_VARIABLE, stop_requested
    from psyrun.run.defaults import backend_class
    from psyrun.run.fail_fast import FailFast
    from psyrun.run.failures import RowsFailed
    from psyrun.run.lease import JobLease
    from psyrun.run.walltime import JobPartial
    from psyrun.tasks import get_task

    # When the job started: a time limit counts from here (psyrun.run.walltime).
    description = dict(description, started=time.time())
    cwd = description.get("cwd")
    if cwd and os.path.isdir(cwd) and os.path.abspath(cwd) != os.getcwd():
        # Relative settings (workdir, resultfile) mean what they meant in psy.
        os.chdir(cwd)

    kind = description["kind"]
    rounds = False
    markers = None

    def mark(which: int, text: str) -> None:
        if markers is not None:
            os.makedirs(os.path.dirname(markers[which]), exist_ok=True)
            # Not synced: a marker only says how a job ended, never which rows
            # are stored (the result and the parts are read for that), so one
            # lost in a machine crash costs nothing but two syncs per job.
            with atomic_write(markers[which], sync=False) as f:
                f.write(text)

    try:
        # The task as it was when the run was planned (the copy of its source).
        task = get_task(description["task_file"], frozen=description)
        cls = backend_class(task)
        backend = cls(task)
        name = backend.paths.job_name(kind, index)
        markers = (
            backend.paths.status_file(name, "done"),
            backend.paths.status_file(name, "failed"),
            backend.paths.status_file(name, "partial"),
        )
        for m in markers:
            if os.path.exists(m):
                os.remove(m)
        check_job_description(description, task, cls)
        # The round of an automatic continuation (psyrun.run.attempts), for the task's code too.
        os.environ[ATTEMPT_VARIABLE] = str(int(description.get("attempt", 1)))
        rounds = int(description.get("max_attempts", 1)) > 1
        if rounds and stop_requested(backend.paths):
            # psy kill stopped the rounds: a job that slipped through does nothing.
            print(f"psyrun: job {name}: psy kill stopped the rounds; not running", flush=True)
            mark(1, "stopped by psy kill before it started")
            return 0
        print(f"psyrun: job {name} started (pid {os.getpid()})", flush=True)
        # Paths are absolute by now; execute and setup see the task's directory.
        os.chdir(task.taskdir)
        # The lease tells `psy run` and `psy status` that this job lives, also
        # when no scheduler knows of it any more (psyrun.run.lease). A process job
        # of a local scheduler that syncs in batches leaves its syncs to it.
        batched = kind == "process" and os.environ.get(durability.VARIABLE) == "1"
        with (
            JobLease(backend.paths.status_file(name, "lease"), name),
            durability.deferred_syncs(batched),
        ):
            code = backend.run_job(kind, index, description)
    except RowsFailed as exc:
        print(f"psyrun: {exc}", file=sys.stderr, flush=True)
        mark(1, str(exc))
        return 0
    except JobPartial as exc:
        # Stopped before the time limit: not failed; the rest is for the next round.
        print(f"psyrun: job {name} is partial: {exc}", flush=True)
        mark(2, exc.marker_text())
        return 0
    except FailFast as exc:
        # One line says it all (no traceback); the merge still keeps what was evaluated.
        print(f"psyrun: {exc}", file=sys.stderr, flush=True)
        mark(1, str(exc))
        return 0
    except JobDescriptionError as exc:
        print(f"psyrun: {exc}", file=sys.stderr, flush=True)
        mark(1, str(exc))
        return 1
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        mark(1, f"{type(exc).__name__}: {exc}")
        # In automatic rounds a failed process job ends with status 0 (its marker
        # says why), so that Grid Engine does not hold it in Eqw before the merge.
        return 0 if rounds and kind == "process" else 1
    except SystemExit as exc:
        if isinstance(exc, Stopped) or _signalled:
            signum = _signalled[-1] if _signalled else exc.signum
            mark(1, f"stopped by a signal ({signal.Signals(signum).name})")
            raise
        # The task's code (execute, setup) called sys.exit(): the job ends here. Like
        # rows that raised (RowsFailed), the job is marked failed with status 0 so
        # that the merge keeps the rows evaluated before; `psy run -c` does the rest.
        traceback.print_exc()
        sys.stderr.flush()
        mark(
            1,
            f"the task's code called sys.exit({exc.code!r}), which ended the job; raise an "
            "exception in execute instead to fail only that row (traceback in the log)",
        )
        return 0
    code = 0 if code is None else int(code)
    mark(0 if code == 0 else 1, "" if code == 0 else f"exit status {code}")
    print(f"psyrun: job finished with status {code}", flush=True)
    if rounds and kind == "merge" and code == 0:
        _next_round(backend, description)
    return code


def prepare_fork() -> None:
    """Import what every job imports (called once by a local scheduler before it forks jobs)."""
    import importlib

    for name in ("psyrun.run.row_guard", "psyrun.run.row_timeout", "psyrun.mapper"):
        importlib.import_module(name)
    importlib.import_module("encodings.ascii")


def _next_round(backend, description: dict) -> None:
    """Submit the next automatic round from this merge job (:mod:`psyrun.run.attempts`)."""
    from psyrun.run.attempts import continue_after_merge
    from psyrun.run.defaults import scheduler_for
    from psyrun.run.runner import task_lock

    def log(text: str) -> None:
        print(f"psyrun: {text}", flush=True)

    cwd = description.get("cwd")
    if cwd and os.path.isdir(cwd):
        # The next round's descriptions record the directory psy ran in, as the first did.
        os.chdir(cwd)
    try:
        continue_after_merge(
            backend, scheduler_for(backend.task), description, lock=task_lock, log=log
        )
    except Exception as exc:
        # The merge itself succeeded: its result stays; `psy run -c` goes on by hand.
        traceback.print_exc()
        log(f"could not submit the next round ({type(exc).__name__}: {exc})")


if __name__ == "__main__":
    sys.exit(main())
