"""Every file name belonging to a task, in one place.

Layout of ``<workdir>/<task>/``::

    <task>:split.log, <task>:process:<i>.log, <task>:merge.log   job logs
    jobs/<job kind>.json          job descriptions read by psyrun.worker
    jobs/submitted.json           ids of the jobs submitted last (and the run's tag)
    jobs/source/                  the task's source as the run evaluates it (psyrun.run.versions)
    jobs/run.lock                 held by the `psy run` or `psy clean` working on the task
    status/<job name>.done|.failed|.partial  how each job ended (written by the job)
    status/<job name>.watchdog    the stack of a call the row_timeout watchdog ended
    status/<job name>.lease       a running job says it lives (psyrun.run.lease)
    status/fail-fast              a job failed fast: the others stop (psyrun.run.fail_fast)
    in/pspace.pkl                 compact snapshot of the space to evaluate
    in/counter                    claims log: rows handed out (load balancing)
    out/<i>.pkl                   a finished part of the results
    out/<i>.partial.pkl           a part still being written
    unreadable/                   parts a merge could not read, set aside
    rejected.pkl                  rows the task's store cannot hold, set aside by a merge
    result<ext>                   the result file (unless ``resultfile`` is set)
    .psyrun-task                  says which task file the directory belongs to

Files are written under a temporary name and renamed when complete, so a
crash never leaves a half-written file that looks finished.

Part files are always written with :class:`psyrun.store.PickleStore`
(:data:`PART_EXT`), whatever the task's store: its append is crash-safe (a
record torn by a kill is dropped on read), so killing a job loses only the
rows it was writing. The task's store is used for the result file only.
Parts with the task's extension (left by an older psyrun) are still listed.

psyrun removes or replaces only what it made. The rules that keep it so live
here: :func:`check_task_name` (the one rule for task names),
:func:`check_task_paths` (work directory and result file, checked when a task
loads), :func:`check_result_target` (an existing result file may be replaced
only when it is a result, checked before a run) and :func:`clean_task_files`
(``psy clean`` removes the names psyrun gives files, nothing else).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import unicodedata

from psyrun.atomic import remove_path, tmp_name

__all__ = [
    "PART_EXT",
    "TaskPaths",
    "UnsafePathError",
    "check_result_target",
    "check_task_name",
    "check_task_paths",
    "clean_task_files",
    "remove_path",
    "task_root_of",
    "tmp_name",
]

PARTIAL = ".partial"
#: Extension of every part file (the store that writes them: PickleStore).
PART_EXT = ".pkl"
_PART_RE = re.compile(r"^(\d+)(\.partial)?(\..+)$")
#: What ``out/`` holds: parts, their temporary names and lock files.
_OUT_ENTRY_RE = re.compile(r"^\.?\d+(\.partial)?(\.tmp\d+)?(\..+)?$")
#: A temporary name made by :func:`psyrun.atomic.tmp_name` (``.<stem>.tmp<pid>[<ext>]``).
_TMP_RE = re.compile(r"^\.(?P<stem>.+?)\.tmp\d+(\..*)?$")
#: The file in ``<workdir>/<task>`` naming the task file the directory belongs to.
OWNER_FILE = ".psyrun-task"
#: Subdirectories psyrun makes in ``<workdir>/<task>`` (``psy clean`` removes them whole);
#: ``unreadable/`` holds part files a merge could not read (set aside, never deleted).
TASK_SUBDIRS = ("jobs", "status", "in", "out", "unreadable")
#: Rows a merge set aside because the task's store cannot hold them (a part-store file).
REJECTED_FILE = "rejected" + PART_EXT
#: Digits of the largest process id (Linux: at most 4194304), part of temporary names.
_PID_DIGITS = 7
# Bidirectional-text controls: they make a name print as another one.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class UnsafePathError(ValueError):
    """A task name, work directory or result file that could reach what psyrun did not make.

    The message is one line saying what is wrong and what to do.
    """


def _name_problem(name: str) -> str | None:
    """Why `name` cannot be a task name (None when it can)."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return "names a directory that exists already ('.' or '..')"
    if "\0" in name:
        return "contains a NUL character"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return "contains a path separator"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (the file name holds bytes of another encoding)"
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI_CONTROLS:
            return f"contains the control character U+{ord(ch):04X}"
    if name.startswith("-"):
        return "starts with '-', which command lines read as an option"
    if name != name.strip():
        return "starts or ends with white space"
    if "%" in name:
        return "contains '%', which batch systems and psyrun's job arrays read as a placeholder"
    return None


def check_task_name(name: str) -> None:
    """Refuse a task name that cannot safely name files, directories and jobs.

    This is the one rule for task names (``task_<name>.py``): letters of any
    script, digits, spaces inside the name and punctuation other than ``%``
    are fine; refused are the empty name, ``.`` and ``..``, path separators,
    NUL and other control characters (also line separators and
    bidirectional-text controls), names that are not UTF-8, a leading ``-``,
    leading or trailing white space and ``%``. Whether a name is short enough
    depends on the work directory (:func:`check_task_paths`).

    Raises
    ------
    UnsafePathError
        Naming the problem.
    """
    problem = _name_problem(name)
    if problem is not None:
        raise UnsafePathError(
            f"task name {name!r} {problem}; rename the file task_<name>.py (names may hold "
            "letters, digits, spaces inside the name and punctuation other than '%')"
        )


def _existing_ancestor(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _pathconf(path: str, name: str, default: int) -> int:
    try:
        value = os.pathconf(_existing_ancestor(path), name)
    except (OSError, ValueError):
        return default
    return value if value and value > 0 else default


def _is_within(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or lies under it (both absolute)."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _read_owner(root: str) -> dict | None:
    """Return the owner record of a task work directory (None when it has none)."""
    try:
        with open(os.path.join(root, OWNER_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _looks_like_task_root(directory: str) -> bool:
    """Whether `directory` is some task's work directory (owner file, or a psyrun run lock)."""
    return os.path.isfile(os.path.join(directory, OWNER_FILE)) or os.path.isfile(
        os.path.join(directory, "jobs", "run.lock")
    )


def _enclosing_task_root(path: str, own_root: str) -> str | None:
    """Return the work directory of another task that `path` lies in (None if none)."""
    directory = os.path.dirname(path)
    while True:
        if directory != own_root and _looks_like_task_root(directory):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


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
    task_file : str, optional
        The task file; recorded in ``<workdir>/<name>/.psyrun-task`` when
        psyrun makes the directory.
    """

    def __init__(
        self,
        name: str,
        workdir: str,
        ext: str,
        resultfile: str | None = None,
        task_file: str | None = None,
    ) -> None:
        self.name = name
        self.ext = ext
        self.task_file = os.path.abspath(task_file) if task_file else None
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
        self.default_result = os.path.join(self.root, "result" + ext)
        self.owner_file = os.path.join(self.root, OWNER_FILE)
        #: Part files a merge could not read are moved here (kept for the user to inspect).
        self.unreadable_dir = os.path.join(self.root, "unreadable")
        #: Rows a merge set aside because the task's store cannot hold them.
        self.rejected = os.path.join(self.root, REJECTED_FILE)

    @classmethod
    def for_task(cls, task) -> TaskPaths:
        """Return the paths of a loaded :class:`psyrun.tasks.TaskDef`."""
        ext = getattr(task.store, "ext", "") or ".pkl"
        return cls(task.name, task.workdir, ext, task.resultfile, getattr(task, "path", None))

    # -- whose directory ---------------------------------------------------------

    def is_own_entry(self, entry: str) -> bool:
        """Whether `entry` (a name in ``<workdir>/<task>``) is one psyrun gives its files there."""
        if entry in TASK_SUBDIRS or entry in (OWNER_FILE, REJECTED_FILE):
            return True
        m = _TMP_RE.match(entry)
        stem = m.group("stem") if m else entry
        return (
            stem == "result"
            or stem.startswith("result.")
            or (stem.startswith(self.name + ":") and (m is not None or stem.endswith(".log")))
        )

    def foreign_entries(self) -> list[str]:
        """Entries of ``<workdir>/<task>`` that psyrun did not make, sorted."""
        try:
            entries = os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e for e in entries if not self.is_own_entry(e))

    def ownership_problem(self) -> str | None:
        """Why ``<workdir>/<task>`` is not this task's to use (None when it is, or is absent).

        The directory is the task's when psyrun made it for this task file
        (its owner file says so), or when it holds only names psyrun gives
        its files (a work directory of an older psyrun, or an empty one).
        """
        root = self.root
        if not os.path.lexists(root):
            return None
        if not os.path.isdir(root):
            return f"the work directory {root} exists and is not a directory"
        owner = _read_owner(root)
        if owner is not None:
            other = owner.get("task_file")
            if (
                self.task_file
                and isinstance(other, str)
                and other != self.task_file
                and os.path.exists(other)
            ):
                return (
                    f"the work directory {root} belongs to the task file {other}, which has the "
                    "same task name; give one of the tasks another workdir"
                )
            return None
        foreign = self.foreign_entries()
        if foreign:
            shown = ", ".join(map(repr, foreign[:3])) + (" ..." if len(foreign) > 3 else "")
            return (
                f"the work directory {root} exists and holds files psyrun did not make "
                f"({shown}); set workdir to a directory psyrun may use, or move them away"
            )
        return None

    def make_root(self) -> None:
        """Create ``<workdir>/<task>`` and its ``jobs/``, recording the task file as owner.

        Raises
        ------
        UnsafePathError
            When the directory exists and is not this task's
            (:meth:`ownership_problem`).
        """
        problem = self.ownership_problem()
        if problem is not None:
            raise UnsafePathError(problem)
        os.makedirs(self.jobs_dir, exist_ok=True)
        if _read_owner(self.root) is None:
            from psyrun.atomic import atomic_write

            with atomic_write(self.owner_file) as f:
                json.dump({"task": self.name, "task_file": self.task_file}, f)

    def make_dirs(self) -> None:
        """Create the task's directories (see :meth:`make_root`)."""
        self.make_root()
        for d in (self.status_dir, self.in_dir, self.out_dir):
            os.makedirs(d, exist_ok=True)
        os.makedirs(os.path.dirname(self.result) or ".", exist_ok=True)

    def longest_names(self, max_jobs: int) -> list[str]:
        """Return the longest file names psyrun derives from the task name (`max_jobs` jobs).

        Logs (``<task>:process:<i>.log``) and status markers with the
        temporary names they are written under (``.<task>_process_<i>.tmp<pid>.failed``).
        """
        last = max(int(max_jobs) - 1, 0)
        jobs = [self.job_name("split"), self.job_name("merge"), self.job_name("process", last)]
        names = [
            os.path.basename(self.log("split")),
            os.path.basename(self.log("merge")),
            os.path.basename(self.log("process", last)),
        ]
        pid = str(os.getpid())
        for job in jobs:
            for state in ("done", "failed", "partial", "rows"):
                tmp = os.path.basename(tmp_name(self.status_file(job, state)))
                names.append(tmp.replace(f".tmp{pid}", ".tmp" + "9" * _PID_DIGITS))
            # Written in place (psyrun.run.row_timeout), never under a temporary name.
            names.append(os.path.basename(self.status_file(job, "watchdog")))
        return names

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
        """Remove every part file (finished, partial and temporary) and its lock file.

        Other files in ``out/`` are not psyrun's and stay.
        """
        if os.path.isdir(self.out_dir):
            for entry in os.listdir(self.out_dir):
                if _OUT_ENTRY_RE.match(entry):
                    remove_path(os.path.join(self.out_dir, entry))


def task_root_of(path: str) -> TaskPaths | None:
    """Return the paths of the task whose work directory holds `path` (None if none).

    Found by the owner file psyrun writes in every task work directory (or
    the run lock of an older psyrun's), so that commands working on files
    rather than tasks (``psy merge``) can respect the task's lock.
    """
    path = os.path.abspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    while True:
        if _looks_like_task_root(directory):
            owner = _read_owner(directory) or {}
            name = owner.get("task") if isinstance(owner.get("task"), str) else None
            return TaskPaths(name or os.path.basename(directory), os.path.dirname(directory), "")
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def check_task_paths(task) -> None:
    """Refuse a task whose name, workdir or resultfile could reach what psyrun did not make.

    Checked when a task loads (cheap: names and a few ``stat`` calls):

    * the name follows :func:`check_task_name`, and every file name psyrun
      derives from it (:meth:`TaskPaths.longest_names`) fits the work
      directory's file system (``NAME_MAX``, ``PATH_MAX``);
    * ``<workdir>/<task>`` is this task's (:meth:`TaskPaths.ownership_problem`)
      and lies in no other task's work directory; the work directory holds
      no ``%a`` (job arrays replace it by the index);
    * a ``resultfile`` is none of the files the task depends on, no task
      file, no directory holding the task's files, not among psyrun's own
      files in ``<workdir>/<task>`` and in no other task's work directory.

    Raises
    ------
    UnsafePathError
        One line: what is wrong and what to do.
    """
    check_task_name(task.name)
    paths = TaskPaths.for_task(task)
    root = paths.root
    name_max = _pathconf(root, "PC_NAME_MAX", 255)
    longest = max(paths.longest_names(task.max_jobs), key=lambda n: len(os.fsencode(n)))
    if len(os.fsencode(longest)) > name_max:
        limit = name_max - (len(os.fsencode(longest)) - len(os.fsencode(task.name)))
        raise UnsafePathError(
            f"task name {task.name[:40]!r}... is too long: psyrun names files such as "
            f"{longest[:20]!r}... after it, longer than the {name_max} bytes the file system "
            f"of {_existing_ancestor(root)} allows; use at most {max(limit, 0)} bytes"
        )
    path_max = _pathconf(root, "PC_PATH_MAX", 4096)
    if len(os.fsencode(os.path.join(paths.status_dir, longest))) >= path_max:
        raise UnsafePathError(
            f"the work directory {root} is too deep: file paths in it would be longer than "
            f"the {path_max} bytes the system allows; choose a shorter workdir or task name"
        )
    if "%a" in root:
        raise UnsafePathError(
            f"the work directory {root} contains '%a', which psyrun's job arrays replace by "
            "the job's index; choose a workdir without it"
        )
    other = _enclosing_task_root(root, root)
    if other is not None:
        raise UnsafePathError(
            f"the work directory {root} lies inside {other}, the work directory of another "
            "task, which psyrun cleans and replaces; give this task a workdir of its own"
        )
    problem = paths.ownership_problem()
    if problem is not None:
        raise UnsafePathError(problem)
    if task.config.resultfile is not None:
        _check_result_path(task, paths)


def _check_result_path(task, paths: TaskPaths) -> None:
    result, root = paths.result, paths.root

    def refuse(why: str) -> None:
        raise UnsafePathError(
            f"resultfile {result} {why}; psyrun replaces and removes the result file, so "
            "name a file of its own (the default is <workdir>/<task>/result<ext>)"
        )

    if result in task.dependencies:
        refuse("is a file the task depends on")
    base = os.path.basename(result)
    if (
        os.path.dirname(result) == task.taskdir
        and base.startswith("task_")
        and base.endswith(".py")
    ):
        refuse("is a task file")
    for directory, what in ((task.taskdir, "the task directory"), (root, "its work directory")):
        if _is_within(directory, result):
            refuse(f"is {what} or a directory holding it")
    if _is_within(result, root):
        if os.path.dirname(result) != root or base in TASK_SUBDIRS or base == OWNER_FILE:
            refuse(f"lies among the files psyrun makes in {root}")
        if base.startswith(task.name + ":") and result != paths.default_result:
            refuse(f"has the name of one of psyrun's logs in {root}")
        return
    other = _enclosing_task_root(result, root)
    if other is not None:
        refuse(f"lies inside {other}, the work directory of another task")


def _result_state(task, paths: TaskPaths) -> tuple[str, str]:
    """``(state, why)`` of the existing result: absent, own, readable or foreign.

    ``own``: the default result in the task's work directory, or a file whose
    metadata names this task. ``readable``: the store reads it as a result
    that names no task (an older psyrun's). ``foreign``: anything else.
    """
    store, result = task.store, paths.result
    try:
        exists = os.path.lexists(result) or store.exists(result)
    except Exception:  # a store chosen by extension that knows none for this name
        exists = False
    if not exists:
        return "absent", ""
    if result == paths.default_result:
        return "own", ""
    if os.path.islink(result):
        return "foreign", f"{result} is a symbolic link (name the file it points to instead)"
    store_name = type(store).__name__
    kind = "an existing directory" if os.path.isdir(result) else "an existing file"
    try:
        meta = store.read_metadata(result)
        store.count_rows(result)
    except Exception as exc:
        return "foreign", (
            f"{result} is {kind} that {store_name} cannot read as a result "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        )
    owner = meta.get("task") if isinstance(meta, dict) else None
    if owner == task.name:
        return "own", ""
    if owner is not None:
        return "foreign", f"{result} holds the results of task {owner!r} (its metadata says so)"
    return "readable", f"{result} records no task that wrote it"


def check_result_target(task, paths: TaskPaths | None = None) -> None:
    """Refuse to run when an existing result file is not a result psyrun may replace.

    Called before any job runs. An existing result is replaced (or, with
    ``psy run -c``, read and extended) only when the task's store reads it
    as a result and its metadata names no other task.

    Raises
    ------
    UnsafePathError
        For a directory or file the store cannot read as a result, a
        symbolic link, or another task's result.
    """
    paths = paths or TaskPaths.for_task(task)
    state, why = _result_state(task, paths)
    if state == "foreign":
        raise UnsafePathError(
            f"not running task {task.name!r}: {why}; psyrun replaces only its own results: "
            "move it away or set resultfile to another name"
        )


def clean_task_files(task, paths: TaskPaths | None = None, work_dir: bool = True) -> list[str]:
    """Remove the files psyrun made for `task`; return notes on what was left and why.

    In ``<workdir>/<task>`` only what psyrun names its files is removed
    (``jobs/``, ``status/``, ``in/``, ``out/``, the logs, ``result*``, the
    owner file and temporary names of these); the directory itself goes only
    when nothing else is left in it. A ``resultfile`` elsewhere is removed
    only when it is this task's result (:func:`check_result_target`'s rules;
    its metadata must name the task). Without `work_dir` only the result is
    considered (the work directory is not locked: a run may be making it).
    """
    paths = paths or TaskPaths.for_task(task)
    notes = []
    state, why = _result_state(task, paths)
    if state == "own":
        task.store.remove(paths.result)
    elif state != "absent":
        notes.append(f"did not remove {paths.result}: {why}; remove it yourself if it can go")
    if not work_dir or not os.path.isdir(paths.root):
        return notes
    problem = paths.ownership_problem()
    if problem is not None:
        notes.append(f"did not touch {paths.root}: {problem}")
        return notes
    # jobs/ holds the run lock of the `psy clean` doing this: removed last.
    for entry in sorted(os.listdir(paths.root), key=lambda e: e == "jobs"):
        if paths.is_own_entry(entry):
            remove_path(os.path.join(paths.root, entry))
    left = paths.foreign_entries()
    if left:
        shown = ", ".join(map(repr, left[:3])) + (" ..." if len(left) > 3 else "")
        notes.append(f"kept {paths.root}: it holds files psyrun did not make ({shown})")
    else:
        with contextlib.suppress(OSError):
            os.rmdir(paths.root)
    return notes
