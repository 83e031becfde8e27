"""Slurm: submit jobs with sbatch, job arrays, afterok dependencies, batched squeue."""

from __future__ import annotations

import contextlib
import getpass
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

from psyrun.scheduler._command import command_error, run_command
from psyrun.scheduler.base import (
    ARRAY_INDEX_TOKEN,
    JobState,
    JobStatus,
    Scheduler,
    SchedulerError,
    check_args,
    check_count,
    normalize_dependencies,
    resolve_arg,
)

#: scheduler_args names of the user guide and the sbatch option each becomes.
SBATCH_OPTIONS = {
    "timelimit": "--time",
    "memory": "--mem",
    "memory_per_cpu": "--mem-per-cpu",
    "n_cpus": "--cpus-per-task",
    "n_nodes": "--nodes",
    "cores-per-socket": "--cores-per-socket",
    "sockets-per-node": "--sockets-per-node",
}
#: scheduler_args names that are not plain sbatch options.
EXTRA_ARGS = {
    "max_running": "job arrays only: at most this many tasks of one array run at once (%N)",
    "sbatch_args": "any other sbatch options: a list of arguments or a dict of option -> value",
}
VALID_ARGS = (*SBATCH_OPTIONS, *EXTRA_ARGS)

#: Slurm's default MaxArraySize: array indices run from 0 to 1000.
DEFAULT_MAX_ARRAY_SIZE = 1001

# Compact squeue states (%t) and what they mean to us; pending is handled by
# its reason, anything else unknown counts as running (it is in the queue).
_STATES = {
    "PD": JobState.QUEUED,
    "CF": JobState.QUEUED,
    "RQ": JobState.QUEUED,
    "RH": JobState.QUEUED,
    "RF": JobState.QUEUED,
    "RD": JobState.QUEUED,
    "R": JobState.RUNNING,
    "CG": JobState.RUNNING,
    "S": JobState.RUNNING,
    "ST": JobState.RUNNING,
    "SI": JobState.RUNNING,
    "SO": JobState.RUNNING,
    "RS": JobState.RUNNING,
    "CD": JobState.COMPLETED,
    "F": JobState.FAILED,
    "TO": JobState.FAILED,
    "NF": JobState.FAILED,
    "OOM": JobState.FAILED,
    "BF": JobState.FAILED,
    "DL": JobState.FAILED,
    "PR": JobState.FAILED,
    "SE": JobState.FAILED,
    "CA": JobState.CANCELLED,
    "RV": JobState.CANCELLED,
}
# Pending reasons that mean the job can never start by itself.
_BLOCKED_REASONS = {"DependencyNeverSatisfied"}

# The squeue output format: id, compact state, reason, name (last: it may hold anything).
_SQUEUE_FORMAT = "%i|%t|%r|%j"

# Ids per scancel call when they cannot be compacted (keeps argv well below ARG_MAX).
_SCANCEL_BATCH = 2000

_ID_RE = re.compile(r"^(\d+)(?:_(\d+|\[[^\]]*\]))?$")


def launcher_path() -> str:
    """Return the path of the fixed batch script that every Slurm job runs."""
    return str(resources.files("psyrun.scheduler").joinpath("slurm_launcher.sh"))


def expand_array_ids(text: str) -> list[str]:
    """Expand one job id as squeue prints it into single ids.

    ``"123"`` -> ``["123"]``, ``"123_4"`` -> ``["123_4"]``,
    ``"123_[4-6]"`` -> ``["123_4", "123_5", "123_6"]``, and
    ``"123_[1,3-5%2]"`` -> ``["123_1", "123_3", "123_4", "123_5"]`` (``%2`` is
    the cap on running tasks). Steps (``0-8:4``) are understood too.

    Raises
    ------
    ValueError
        When `text` is not a job id of that form.
    """
    text = text.strip()
    m = _ID_RE.match(text)
    if m is None:
        raise ValueError(f"not a Slurm job id: {text!r}")
    base, task = m.groups()
    if task is None or not task.startswith("["):
        return [text]
    spec = task[1:-1].split("%", 1)[0]
    ids = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            step = 1
            if ":" in part:
                part, step_text = part.split(":", 1)
                step = int(step_text)
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
            else:
                lo = hi = int(part)
            if step < 1 or hi < lo:
                raise ValueError(part)
            ids.extend(f"{base}_{i}" for i in range(lo, hi + 1, step))
    except ValueError:
        raise ValueError(f"bad array range in Slurm job id {text!r}") from None
    return ids


def parse_squeue(output: str) -> dict[str, JobStatus]:
    """Parse ``squeue -h -o '%i|%t|%r|%j'`` output into statuses by single job id.

    Array ranges are expanded; every array also gets an entry under its base
    id (the most active state among its tasks) so that a whole array can be
    asked about. Lines of another shape (cluster headers, ...) are skipped.
    """
    statuses: dict[str, JobStatus] = {}
    by_array: dict[str, JobStatus] = {}
    for line in output.splitlines():
        fields = line.strip().split("|", 3)
        if len(fields) != 4 or not _ID_RE.match(fields[0].strip()):
            continue
        raw_id, code, reason, name = (f.strip() for f in fields)
        if code == "PD" and reason in _BLOCKED_REASONS:
            state = JobState.BLOCKED
        else:
            state = _STATES.get(code, JobState.RUNNING)
        for jobid in expand_array_ids(raw_id):
            statuses[jobid] = JobStatus(jobid, state, name)
            if "_" in jobid:
                base = jobid.split("_", 1)[0]
                prev = by_array.get(base)
                if prev is None or _RANK[state] < _RANK[prev.status]:
                    by_array[base] = JobStatus(base, state, name)
    for base, status in by_array.items():
        statuses.setdefault(base, status)
    return statuses


_RANK = {
    JobState.RUNNING: 0,
    JobState.QUEUED: 1,
    JobState.BLOCKED: 2,
    JobState.FAILED: 3,
    JobState.CANCELLED: 4,
    JobState.COMPLETED: 5,
}


def parse_max_array_size(output: str) -> int | None:
    """Read MaxArraySize from ``scontrol show config`` output (``None`` if absent)."""
    m = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", output, re.MULTILINE)
    return int(m.group(1)) if m else None


def escape_output_pattern(filename: str, array: bool) -> str:
    """Turn a file name into an sbatch ``--output`` pattern that means exactly it.

    Slurm expands ``%`` sequences in ``--output``; every ``%`` is doubled,
    except that for arrays our ``%a`` token becomes Slurm's ``%a``.
    """
    if not array:
        return filename.replace("%", "%%")
    return "%a".join(part.replace("%", "%%") for part in filename.split(ARRAY_INDEX_TOKEN))


class Slurm(Scheduler):
    """Submit jobs to a Slurm cluster with ``sbatch``.

    Every job runs a fixed batch script shipped with psyrun
    (``slurm_launcher.sh``) that executes the job's argv unchanged (arguments
    with spaces, quotes or ``;`` arrive literally). Jobs start in the directory
    of submission with the submitting environment (sbatch's defaults), so
    the interpreter given as the first element of the command is the one used.

    Scheduler arguments (``scheduler_args`` of a task), each a fixed value or
    a function called with the job name:

    ``timelimit`` (``--time``), ``memory`` (``--mem``), ``memory_per_cpu``
    (``--mem-per-cpu``), ``n_cpus`` (``--cpus-per-task``), ``n_nodes``
    (``--nodes``), ``cores-per-socket``, ``sockets-per-node``;
    ``max_running``: the most tasks of one job array that run at once;
    ``sbatch_args``: any other sbatch options, as a list of arguments
    (``['--partition=gpu', '--gres=gpu:1']``) or a dict
    (``{'partition': 'gpu', 'account': 'def-me', 'exclusive': True}``; a value
    of True gives a bare flag, None or False leaves the option out).

    Job arrays larger than the cluster's ``MaxArraySize`` (read once from
    ``scontrol show config``) are submitted as several arrays. Statuses come
    from one ``squeue`` call, cached until :meth:`refresh`. A job waiting for a
    parent that failed is reported as :attr:`JobState.BLOCKED`.

    Parameters
    ----------
    workdir
        Accepted for compatibility with psyrun 0.8 task files; not needed.
    user
        Whose jobs ``squeue`` lists (default: the current user).
    max_array_size
        Override the cluster's MaxArraySize (mainly for tests).
    """

    supports_arrays = True
    USER_DEFAULT_ARGS = {"timelimit": "1h", "n_cpus": 1, "memory_per_cpu": "1G"}

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        user: str | None = None,
        max_array_size: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.user = user
        self._max_array_size = max_array_size
        self._statuses: dict[str, JobStatus] | None = None
        # array job id -> number of tasks, for compact dependencies.
        self._array_sizes: dict[str, int] = {}

    # -- submission ---------------------------------------------------------

    def submit(
        self,
        args: Sequence[str],
        output_filename: str,
        name: str | None = None,
        depends_on: Iterable[str] | None = None,
        scheduler_args: Mapping[str, Any] | None = None,
    ) -> str:
        """Submit one job with sbatch and return its id (see :meth:`Scheduler.submit`)."""
        argv = check_args(args)
        options = self.sbatch_options(name, scheduler_args)
        output = escape_output_pattern(os.fspath(output_filename), array=False)
        cmd = [
            "sbatch",
            "--parsable",
            *options,
            *self._dependency_options(depends_on),
            f"--output={output}",
            launcher_path(),
            "single",
            "",
            "--",
            *argv,
        ]
        jobid = self._sbatch(cmd, name)
        self._remember(JobStatus(jobid, JobState.QUEUED, name))
        return jobid

    def submit_array(
        self,
        n: int,
        args: Sequence[str],
        output_filename: str,
        name: str | None = None,
        depends_on: Iterable[str] | None = None,
        scheduler_args: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Submit `n` jobs as Slurm job arrays; return ``"<array id>_<task>"`` per index.

        ``%a`` in `args` and `output_filename` becomes the index 0..n-1. More
        than MaxArraySize jobs are split into several arrays whose tasks get
        the right indices (the batch script adds each array's offset).
        """
        n = check_count(n)
        argv = check_args(args)
        if n == 0:
            return []
        options = self.sbatch_options(name, scheduler_args)
        max_running = resolve_arg((scheduler_args or {}).get("max_running"), name)
        throttle = ""
        if max_running is not None:
            if not isinstance(max_running, int) or isinstance(max_running, bool):
                raise TypeError(f"max_running must be an integer, got {max_running!r}")
            if max_running < 1:
                raise ValueError(f"max_running must be at least 1, got {max_running}")
            throttle = f"%{max_running}"
        dependencies = self._dependency_options(depends_on)
        output_filename = os.fspath(output_filename)
        chunk = self.max_array_size()
        ids: list[str] = []
        for offset in range(0, n, chunk):
            count = min(chunk, n - offset)
            if offset == 0:
                # Slurm's own %a is the index: let sbatch open the log itself
                # (it also receives Slurm's messages, e.g. a time-limit kill).
                output = [f"--output={escape_output_pattern(output_filename, array=True)}"]
                launcher_output = ""
            else:
                output = ["--output=/dev/null"]
                launcher_output = output_filename
            cmd = [
                "sbatch",
                "--parsable",
                f"--array=0-{count - 1}{throttle}",
                *options,
                *dependencies,
                *output,
                launcher_path(),
                str(offset),
                launcher_output,
                "--",
                *argv,
            ]
            try:
                jobid = self._sbatch(cmd, name)
            except BaseException:
                # Arrays already accepted would run without their siblings, and
                # nobody would know their ids: cancel them before giving up.
                done = sorted({j.split("_", 1)[0] for j in ids})
                if done:
                    with contextlib.suppress(SchedulerError):
                        self.kill_jobs(done)
                raise
            self._array_sizes[jobid] = count
            for i in range(count):
                ids.append(f"{jobid}_{i}")
                self._remember(JobStatus(f"{jobid}_{i}", JobState.QUEUED, name))
            self._remember(JobStatus(jobid, JobState.QUEUED, name))
        return ids

    def sbatch_options(
        self,
        name: str | None,
        scheduler_args: Mapping[str, Any] | None,
    ) -> list[str]:
        """Translate `scheduler_args` for the job `name` into sbatch arguments.

        Raises
        ------
        ValueError
            For an argument name that is not known (the message lists the valid ones).
        """
        scheduler_args = dict(scheduler_args or {})
        unknown = sorted(set(scheduler_args) - set(VALID_ARGS))
        if unknown:
            valid = ", ".join(VALID_ARGS)
            raise ValueError(
                f"unknown Slurm scheduler argument(s) {', '.join(map(repr, unknown))}; "
                f"valid ones are: {valid}. Pass other sbatch options with "
                "'sbatch_args', e.g. {'sbatch_args': {'partition': 'gpu'}}."
            )
        options = []
        if name is not None:
            options.append(f"--job-name={name}")
        for key, option in SBATCH_OPTIONS.items():
            if key in scheduler_args:
                value = resolve_arg(scheduler_args[key], name)
                if value is not None:
                    options.append(f"{option}={value}")
        extra = resolve_arg(scheduler_args.get("sbatch_args"), name)
        options.extend(_extra_options(extra))
        return options

    def _dependency_options(self, depends_on: Iterable[str] | None) -> list[str]:
        deps = normalize_dependencies(depends_on)
        if not deps:
            return []
        for d in deps:
            if not _ID_RE.match(d) or "[" in d:
                raise ValueError(f"not a Slurm job id to depend on: {d!r}")
        # Whole arrays submitted here are named by their array id (a short
        # dependency string instead of one entry per task).
        tasks_by_array: dict[str, set[str]] = {}
        for d in deps:
            if "_" in d:
                base, task = d.split("_", 1)
                tasks_by_array.setdefault(base, set()).add(task)
        compact: list[str] = []
        seen: set[str] = set()
        for d in deps:
            base = d.split("_", 1)[0]
            size = self._array_sizes.get(base)
            if "_" in d and size is not None and len(tasks_by_array[base]) == size:
                d = base
            if d not in seen:
                seen.add(d)
                compact.append(d)
        return [f"--dependency=afterok:{':'.join(compact)}"]

    def _sbatch(self, cmd: list[str], name: str | None) -> str:
        proc = run_command(cmd)
        if proc.returncode != 0:
            raise SchedulerError(command_error(f"sbatch for job {name!r}", cmd, proc))
        # --parsable prints "<id>" or "<id>;<cluster>".
        first = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
        jobid = first.split(";", 1)[0].strip()
        if not jobid.isdigit():
            raise SchedulerError(
                command_error(f"sbatch for job {name!r} printed no job id", cmd, proc)
            )
        return jobid

    def max_array_size(self) -> int:
        """Return the cluster's MaxArraySize (``scontrol show config``, read once)."""
        if self._max_array_size is None:
            size = None
            try:
                proc = run_command(["scontrol", "show", "config"])
                if proc.returncode == 0:
                    size = parse_max_array_size(proc.stdout)
            except SchedulerError:
                size = None
            self._max_array_size = size if size and size > 0 else DEFAULT_MAX_ARRAY_SIZE
        return self._max_array_size

    # -- status -------------------------------------------------------------

    def refresh(self) -> None:
        """Forget the cached ``squeue`` answer; the next status query asks again."""
        self._statuses = None

    def _remember(self, status: JobStatus) -> None:
        if self._statuses is not None:
            self._statuses[status.id] = status

    def _query(self) -> dict[str, JobStatus]:
        if self._statuses is None:
            user = self.user or _current_user()
            cmd = ["squeue", "--noheader", f"--user={user}", f"--format={_SQUEUE_FORMAT}"]
            proc = run_command(cmd)
            if proc.returncode != 0:
                raise SchedulerError(command_error("squeue", cmd, proc))
            self._statuses = parse_squeue(proc.stdout)
        return self._statuses

    def get_statuses(self, jobids: Iterable[str]) -> dict[str, JobStatus]:
        """Return the statuses of the held jobs among `jobids`, from one ``squeue`` call."""
        statuses = self._query()
        result = {}
        for jobid in jobids:
            status = statuses.get(str(jobid))
            if status is not None and status.status.in_queue:
                result[str(jobid)] = status
        return result

    def get_status(self, jobid: str) -> JobStatus | None:
        """Return the status of a held job, ``None`` when finished or unknown."""
        return self.get_statuses([jobid]).get(str(jobid))

    def get_jobs(self) -> list[str]:
        """Return the ids of this user's queued, running and blocked jobs (tasks expanded)."""
        statuses = self._query()
        # Entries under an array's own id summarise its tasks: list the tasks only.
        array_ids = {j.split("_", 1)[0] for j in statuses if "_" in j}
        return [
            jobid
            for jobid, status in statuses.items()
            if status.status.in_queue and jobid not in array_ids
        ]

    # -- kill ---------------------------------------------------------------

    def kill(self, jobid: str) -> None:
        """Cancel a job, one array task (``123_4``) or a whole array (``123``)."""
        self.kill_jobs([jobid])

    def kill_jobs(self, jobids: Iterable[str]) -> None:
        """Cancel several jobs with one ``scancel`` call (ids already gone are ignored).

        When the ids cover every task of an array that the last ``squeue``
        answer holds, the array is cancelled by its own id, so that killing
        thousands of array tasks stays one short command.
        """
        ids = [str(j) for j in jobids]
        if not ids:
            return
        for j in ids:
            if not _ID_RE.match(j) or "[" in j:
                raise ValueError(f"not a Slurm job id: {j!r}")
        targets = self._compact_ids(ids)
        for start in range(0, len(targets), _SCANCEL_BATCH):
            cmd = ["scancel", *targets[start : start + _SCANCEL_BATCH]]
            proc = run_command(cmd)
            if proc.returncode != 0 and not _only_invalid_ids(proc.stderr):
                raise SchedulerError(command_error("scancel", cmd, proc))
        if self._statuses is not None:
            for j in targets:
                self._statuses.pop(j, None)
                if "_" not in j:
                    for k in [k for k in self._statuses if k.startswith(f"{j}_")]:
                        del self._statuses[k]

    def _compact_ids(self, ids: list[str]) -> list[str]:
        """Replace the tasks of an array by the array id when they are all its held tasks."""
        if self._statuses is None:
            return list(dict.fromkeys(ids))
        wanted: dict[str, set[str]] = {}
        for j in ids:
            if "_" in j:
                wanted.setdefault(j.split("_", 1)[0], set()).add(j)
        held: dict[str, set[str]] = {}
        for k, status in self._statuses.items():
            if "_" in k and status.status.in_queue:
                held.setdefault(k.split("_", 1)[0], set()).add(k)
        whole = {b for b, tasks in wanted.items() if b in held and held[b] <= tasks}
        out: dict[str, None] = {}
        for j in ids:
            base = j.split("_", 1)[0]
            out[base if "_" in j and base in whole else j] = None
        return list(out)


def _only_invalid_ids(stderr: str) -> bool:
    """Tell whether scancel complained only about jobs that no longer exist."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return bool(lines) and all(
        "Invalid job id" in line
        or "already completing or completed" in line
        or "Job/step already completing" in line
        for line in lines
    )


def _extra_options(extra: Any) -> list[str]:
    """Turn the ``sbatch_args`` scheduler argument into sbatch arguments."""
    if extra is None:
        return []
    if isinstance(extra, str):
        raise TypeError(
            "sbatch_args must be a list of arguments such as ['--partition=gpu'] or a dict "
            f"such as {{'partition': 'gpu'}}, not a string: {extra!r}"
        )
    if isinstance(extra, Mapping):
        options = []
        for key, value in extra.items():
            key = str(key).lstrip("-")
            if not key:
                raise ValueError("sbatch_args has an empty option name")
            if value is None or value is False:
                continue
            flag = f"-{key}" if len(key) == 1 else f"--{key}"
            if value is True:
                options.append(flag)
            elif len(key) == 1:
                options.extend([flag, str(value)])
            else:
                options.append(f"{flag}={value}")
        return options
    if isinstance(extra, Iterable):
        return [str(a) for a in extra]
    raise TypeError(f"sbatch_args must be a list or a dict, got {extra!r}")


def _current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return str(os.getuid())


__all__ = ["DEFAULT_MAX_ARRAY_SIZE", "SBATCH_OPTIONS", "Slurm", "expand_array_ids", "parse_squeue"]
