"""Every file name belonging to a task, in one place.

Layout of ``<workdir>/<task>/``::

    <task>:split.log, <task>:process:<i>.log, <task>:merge.log   job logs
    jobs/<job kind>.json          job descriptions read by psyrun.worker
    jobs/submitted.json           ids of the jobs submitted last
    jobs/run.lock                 held by the `psy run` or `psy clean` working on the task
    status/<job name>.done|.failed  how each job ended (written by the job)
    status/<job name>.lease       a running job says it lives (psyrun.lease)
    in/pspace.pkl                 compact snapshot of the space to evaluate
    in/counter                    claims log: rows handed out (load balancing)
    out/<i>.pkl                   a finished part of the results
    out/<i>.partial.pkl           a part still being written
    result<ext>                   the result file (unless ``resultfile`` is set)

Files are written under a temporary name and renamed when complete, so a
crash never leaves a half-written file that looks finished.

Part files are always written with :class:`psyrun.store.PickleStore`
(:data:`PART_EXT`), whatever the task's store: its append is crash-safe (a
record torn by a kill is dropped on read), so killing a job loses only the
rows it was writing. The task's store is used for the result file only.
Parts with the task's extension (left by an older psyrun) are still listed.
"""

from __future__ import annotations

import os
import re

from psyrun.atomic import remove_path, tmp_name

__all__ = ["PART_EXT", "TaskPaths", "remove_path", "tmp_name"]

PARTIAL = ".partial"
#: Extension of every part file (the store that writes them: PickleStore).
PART_EXT = ".pkl"
_PART_RE = re.compile(r"^(\d+)(\.partial)?(\..+)$")


class TaskPaths:
    """The files of one task.

    Parameters
    ----------
    name : str
        The task name.
    workdir : str
        The workdir setting; the task's files live in ``<workdir>/<name>``.
    ext : str
        The store's file extension (``'.pkl'``, ``'.h5'``, ...).
    resultfile : str, optional
        The result file; default ``<workdir>/<name>/result<ext>``.
    """

    def __init__(self, name: str, workdir: str, ext: str, resultfile: str | None = None) -> None:
        self.name = name
        self.ext = ext
        self.root = os.path.join(os.path.abspath(workdir), name)
        self.result = (
            os.path.abspath(resultfile) if resultfile else os.path.join(self.root, "result" + ext)
        )
        self.jobs_dir = os.path.join(self.root, "jobs")
        self.status_dir = os.path.join(self.root, "status")
        self.in_dir = os.path.join(self.root, "in")
        self.out_dir = os.path.join(self.root, "out")
        self.pspace = os.path.join(self.in_dir, "pspace.pkl")
        self.counter = os.path.join(self.in_dir, "counter")
        self.submitted = os.path.join(self.jobs_dir, "submitted.json")
        #: Locked (flock) by the psy command submitting or cleaning the task.
        self.run_lock = os.path.join(self.jobs_dir, "run.lock")

    @classmethod
    def for_task(cls, task) -> TaskPaths:
        """Return the paths of a loaded :class:`psyrun.tasks.TaskDef`."""
        ext = getattr(task.store, "ext", "") or ".pkl"
        return cls(task.name, task.workdir, ext, task.resultfile)

    def make_dirs(self) -> None:
        """Create the task's directories."""
        for d in (self.root, self.jobs_dir, self.status_dir, self.in_dir, self.out_dir):
            os.makedirs(d, exist_ok=True)
        os.makedirs(os.path.dirname(self.result) or ".", exist_ok=True)

    # -- jobs ----------------------------------------------------------------

    def job_name(self, kind: str, index: int | str | None = None) -> str:
        """``<task>:<kind>`` or ``<task>:<kind>:<index>``, as logs and schedulers show it."""
        return f"{self.name}:{kind}" if index is None else f"{self.name}:{kind}:{index}"

    def log(self, kind: str, index: int | str | None = None) -> str:
        """Return the log file of a job, ``<workdir>/<task>/<task>:<kind>[:<i>].log``."""
        return os.path.join(self.root, self.job_name(kind, index) + ".log")

    def job_file(self, kind: str) -> str:
        """Return the job description file of a kind of job (one for all process jobs)."""
        return os.path.join(self.jobs_dir, f"{kind}.json")

    def status_file(self, job_name: str, state: str) -> str:
        """Marker ``status/<job name>.<state>`` (state: ``done`` or ``failed``)."""
        return os.path.join(self.status_dir, f"{job_name.replace(':', '_')}.{state}")

    # -- data ----------------------------------------------------------------

    def part(self, index: int) -> str:
        """Return a finished part file of the results (a PickleStore file)."""
        return os.path.join(self.out_dir, f"{index}{PART_EXT}")

    def partial(self, index: int) -> str:
        """Return the part file's name while it is being written (a PickleStore file)."""
        return os.path.join(self.out_dir, f"{index}{PARTIAL}{PART_EXT}")

    def shared_out(self) -> str:
        """Return the file all load-balancing workers append to (a PickleStore file)."""
        return os.path.join(self.out_dir, f"0{PARTIAL}{PART_EXT}")

    @staticmethod
    def is_part_file(path: str) -> bool:
        """Whether `path` was written with the part store (else: the task's store)."""
        return path.endswith(PART_EXT)

    def result_tmp(self) -> str:
        """Temporary name of the result while it is being written."""
        return tmp_name(self.result)

    def list_parts(self) -> list[tuple[int, str, bool]]:
        """``(index, path, finished)`` of every part file, by index (finished first).

        Both part-store files and files with the task's extension (written
        by an older psyrun) are listed; :meth:`is_part_file` tells them apart.
        """
        if not os.path.isdir(self.out_dir):
            return []
        found = []
        for entry in os.listdir(self.out_dir):
            m = _PART_RE.match(entry)
            if m is None or m.group(3) not in (PART_EXT, self.ext):
                continue
            found.append((int(m.group(1)), os.path.join(self.out_dir, entry), m.group(2) is None))
        return sorted(found, key=lambda t: (t[0], not t[2]))

    def clear_parts(self) -> None:
        """Remove every part file (finished, partial and temporary)."""
        if os.path.isdir(self.out_dir):
            for entry in os.listdir(self.out_dir):
                remove_path(os.path.join(self.out_dir, entry))
