"""The one entry point every psyrun job runs.

``python -m psyrun.worker <job description file> [array index]``

The job description (written by the backend when ``psy run`` submits, see
:func:`psyrun.jobs.write_job_description`) names the task file, the backend
and the kind of job. The worker loads the task, checks that the description
was written by this psyrun for the backend the task names now, asks the
backend to run the job, and records how it ended in
``<workdir>/<task>/status/<job name>.done`` or ``.failed``. Tracebacks go to
standard output/error, which the scheduler sends to the job's log file.

Jobs run in the directory of the task file, as in psyrun 0.8 (so ``execute``
can open files kept next to it); relative ``workdir`` and ``resultfile``
settings keep meaning what they meant where ``psy`` was started.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

__all__ = ["main"]

USAGE = "usage: python -m psyrun.worker <job description file> [array index]"


def _stop_on_sigterm(signum, frame):
    # A batch system's preemption or `psy` stopping its children: unwind so that
    # the job's finally blocks write the rows evaluated so far.
    raise SystemExit(128 + signum)


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
        0 on success (also when only some rows failed: the job is then
        marked failed for ``psy status`` but the merge still runs), 1 when
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
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _stop_on_sigterm)

    started_in = os.getcwd()
    try:
        return _run(description, index)
    finally:
        # main() may run inside another process (a forked child, a test): leave it where it was.
        os.chdir(started_in)


def _run(description: dict, index: int | None) -> int:
    from psyrun.atomic import atomic_write
    from psyrun.defaults import backend_class
    from psyrun.failures import RowsFailed
    from psyrun.jobs import JobDescriptionError, check_job_description
    from psyrun.lease import JobLease
    from psyrun.tasks import get_task

    cwd = description.get("cwd")
    if cwd and os.path.isdir(cwd) and os.path.abspath(cwd) != os.getcwd():
        # Relative settings (workdir, resultfile) mean what they meant in psy.
        os.chdir(cwd)

    kind = description["kind"]
    markers = None

    def mark(which: int, text: str) -> None:
        if markers is not None:
            os.makedirs(os.path.dirname(markers[which]), exist_ok=True)
            with atomic_write(markers[which]) as f:
                f.write(text)

    try:
        task = get_task(description["task_file"])
        cls = backend_class(task)
        backend = cls(task)
        name = backend.paths.job_name(kind, index)
        markers = (
            backend.paths.status_file(name, "done"),
            backend.paths.status_file(name, "failed"),
        )
        for m in markers:
            if os.path.exists(m):
                os.remove(m)
        check_job_description(description, task, cls)
        print(f"psyrun: job {name} started (pid {os.getpid()})", flush=True)
        # Paths are absolute by now; execute and setup see the task's directory.
        os.chdir(task.taskdir)
        # The lease tells `psy run` and `psy status` that this job lives, also
        # when no scheduler knows of it any more (psyrun.lease).
        with JobLease(backend.paths.status_file(name, "lease"), name):
            code = backend.run_job(kind, index, description)
    except RowsFailed as exc:
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
        return 1
    except SystemExit as exc:
        mark(1, f"stopped by a signal (exit status {exc.code})")
        raise
    code = 0 if code is None else int(code)
    mark(0 if code == 0 else 1, "" if code == 0 else f"exit status {code}")
    print(f"psyrun: job finished with status {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
