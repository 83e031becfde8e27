"""What produced a result: the provenance psyrun stores in every result file.

The merge job collects it (:func:`collect`) and writes it with the result
(:meth:`psyrun.store.Store.write_metadata`); :func:`psyrun.results.load_metadata`
reads it back. Nothing here runs when psyrun is imported or a job evaluates
rows: the git queries and the platform look-ups cost a few milliseconds, once
per merge.

The metadata is a flat dict of JSON values (so it also fits
``xarray.Dataset.attrs``):

``psyrun_version``, ``python_version``
    Of the merge job (the jobs of one run use the same interpreter).
``task``, ``task_file``, ``task_sha256``
    The task's name, the absolute path of its task file and the SHA-256 of
    the file's bytes at the merge.
``git_commit``, ``git_dirty``
    The commit checked out in the git repository holding the task file, and
    whether tracked files differ from it (untracked files are not counted:
    result directories are usually untracked). Absent when the task file is
    not in a git repository or git is not installed.
``pspace_length``, ``pspace_keys``
    The number of assignments of the parameter space and its keys.
``merge_host``
    The host name of the machine that ran the merge.
``started``, ``finished``
    When the run was submitted and when its merge wrote the result, as UTC
    ISO 8601 text.
``earlier_runs``
    Only in a result continued with ``psy run -c``: the provenance of the
    runs whose rows it kept, oldest first (without their own
    ``earlier_runs`` and ``row_versions``).
``task_version``
    The version of the task's code the run evaluated
    (:func:`psyrun.run.versions.task_version`).
``row_versions``
    ``[[version, rows], ...]``: the version of the task's code that computed
    each row, as segments in file order (:mod:`psyrun.run.versions`).
``dims``
    Only when the task sets ``dims``: ``{output: [axis names]}``, the names
    of the axes of array outputs (:mod:`psyrun.dims`).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
from collections.abc import Mapping
from typing import Any

__all__ = ["PROVENANCE_KEYS", "collect", "continued", "git_state", "utc_now"]

#: The keys :func:`collect` may set, in the order ``psy status -v`` shows them.
PROVENANCE_KEYS = (
    "task",
    "task_file",
    "task_sha256",
    "git_commit",
    "git_dirty",
    "psyrun_version",
    "python_version",
    "pspace_length",
    "pspace_keys",
    "merge_host",
    "started",
    "finished",
)

#: Seconds a git query may take before it is given up (a hung network filesystem).
GIT_TIMEOUT = 10.0


def utc_now() -> str:
    """Return the current time as UTC ISO 8601 text (microseconds, ``+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat()


def file_sha256(path: str | os.PathLike) -> str | None:
    """Return the hex SHA-256 of a file's bytes, None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _git(directory: str, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", directory, *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(path: str | os.PathLike) -> dict[str, Any]:
    """Return ``{'git_commit': ..., 'git_dirty': ...}`` of the repository holding `path`.

    Empty when `path` is in no git repository (or git is missing or fails).
    """
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    commit = _git(directory, "rev-parse", "--verify", "HEAD")
    if not commit:
        return {}
    status = _git(directory, "status", "--porcelain", "--untracked-files=no")
    state: dict[str, Any] = {"git_commit": commit.strip()}
    if status is not None:
        state["git_dirty"] = bool(status.strip())
    return state


def run_started(paths) -> str | None:
    """When the current run was submitted: the oldest of its submission files."""
    times = []
    for path in (paths.submitted, paths.pspace):
        try:
            times.append(os.stat(path).st_mtime)
        except OSError:
            continue
    return _utc(min(times)) if times else None


def collect(task, started: str | None = None) -> dict[str, Any]:
    """Return the provenance of a run of `task` whose result is being written now.

    Parameters
    ----------
    task : psyrun.tasks.TaskDef
        The task (its ``path``, ``name`` and ``pspace`` are read).
    started : str, optional
        When the run started (UTC ISO 8601); left out when None.
    """
    import psyrun

    meta: dict[str, Any] = {"task": task.name}
    path = getattr(task, "path", None)
    if path:
        meta["task_file"] = os.path.abspath(path)
        sha = file_sha256(path)
        if sha is not None:
            meta["task_sha256"] = sha
        meta.update(git_state(path))
    meta["psyrun_version"] = psyrun.__version__
    meta["python_version"] = platform.python_version()
    meta["pspace_length"] = len(task.pspace)
    meta["pspace_keys"] = list(task.pspace.keys())
    # platform.node() is the host name gethostname() gives, without importing socket.
    meta["merge_host"] = platform.node()
    if started is not None:
        meta["started"] = started
    meta["finished"] = utc_now()
    dims = getattr(task, "dims", None)
    if dims:
        # The names of the array outputs' axes (the task's dims setting).
        meta["dims"] = {k: list(v) for k, v in dims.items()}
    return meta


def continued(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """Return `new` with the provenance `old` of the result it continues as an earlier run."""
    out = dict(new)
    if old:
        earlier = list(old.get("earlier_runs", []))
        # The rows' versions are kept once, for the whole file (psyrun.run.versions).
        earlier.append({k: v for k, v in old.items() if k not in ("earlier_runs", "row_versions")})
        out["earlier_runs"] = earlier
    return out


def combine(metadata: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Return the metadata of a file merged from inputs with `metadata` (in merge order).

    The first non-empty one is kept; other, different ones are listed under
    ``merged_from`` so that nothing about the inputs is lost. The inputs'
    ``row_versions`` describe their own rows only and are left out: the
    versions of the merged rows are unknown.
    """
    found = [{k: v for k, v in m.items() if k != "row_versions"} for m in metadata if m]
    if not found:
        return {}
    first, others = found[0], []
    for m in found[1:]:
        if m != first and m not in others:
            others.append(m)
    if others:
        first = dict(first, merged_from=list(first.get("merged_from", [])) + others)
    return first
