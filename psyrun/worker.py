"""The one entry point every psyrun job runs.

``python -m psyrun.worker <job description file> [array index]``

The job description (written by the backend when ``psy run`` submits) names
the task file, the backend and the kind of job; the worker loads the task,
asks its backend to run the job and records how it ended in
``<workdir>/<task>/status/<job name>.done`` or ``.failed``. Tracebacks go to
standard output/error, which the scheduler sends to the job's log file.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

__all__ = ["main"]

USAGE = "usage: python -m psyrun.worker <job description file> [array index]"


def _write_marker(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


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
    job_file = argv[0]
    try:
        index = int(argv[1]) if len(argv) == 2 else None
    except ValueError:
        print(f"{USAGE}\nthe array index must be an integer, got {argv[1]!r}", file=sys.stderr)
        return 2
    try:
        with open(job_file, encoding="utf-8") as f:
            description = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"psyrun.worker: cannot read job description {job_file!r}: {exc}", file=sys.stderr)
        return 1

    cwd = description.get("cwd")
    if cwd and os.path.isdir(cwd) and os.path.abspath(cwd) != os.getcwd():
        # Relative settings (workdir, resultfile) mean what they meant in psy.
        os.chdir(cwd)

    from psyrun.backend._splitmerge import RowsFailed
    from psyrun.paths import TaskPaths
    from psyrun.tasks import get_task

    kind = description["kind"]
    markers = None
    try:
        task = get_task(description["task_file"])
        backend = task.make_backend()
        paths = getattr(backend, "paths", None) or TaskPaths.for_task(task)
        name = paths.job_name(kind, index)
        markers = (paths.status_file(name, "done"), paths.status_file(name, "failed"))
        for m in markers:
            if os.path.exists(m):
                os.remove(m)
        print(f"psyrun: job {name} started (pid {os.getpid()})", flush=True)
        code = backend.run_job(kind, index, description)
    except RowsFailed as exc:
        print(f"psyrun: {exc}", file=sys.stderr, flush=True)
        if markers is not None:
            _write_marker(markers[1], str(exc))
        return 0
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        if markers is not None:
            _write_marker(markers[1], f"{type(exc).__name__}: {exc}")
        return 1
    code = 0 if code is None else int(code)
    if markers is not None:
        _write_marker(markers[0 if code == 0 else 1], "" if code == 0 else f"exit status {code}")
    print(f"psyrun: job finished with status {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
