"""Slurm: submit jobs with sbatch, job arrays, afterok dependencies, batched squeue."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from importlib import resources
from typing import Any

from psyrun.scheduler.base import ARRAY_INDEX_TOKEN, JobState, JobStatus
from psyrun.scheduler.command import (
    ArrayChunk,
    CommandScheduler,
    JobId,
    current_user,
    duration_seconds,
    hms,
    more_active,
    run_command,
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
# Pending reasons of a job someone put on hold (it starts once released).
_HELD_REASONS = {"JobHeldUser", "JobHeldAdmin"}
# Reasons of every ordinary wait: not worth a word.
_ROUTINE_REASONS = {
    "", "None", "(null)", "Resources", "Priority", "Dependency", "JobArrayTaskLimit",
}  # fmt: skip


def reason_of(code: str, reason: str) -> tuple[str | None, bool]:
    """Return what holds a job up in words (``None``: nothing unusual) and whether it is held.

    `code` and `reason` are squeue's ``%t`` and ``%r``. Held jobs
    (``JobHeldUser``, ``JobHeldAdmin``) and jobs waiting for a failed parent
    (``DependencyNeverSatisfied``) are explained; other unusual reasons (such
    as ``PartitionConfig``: the job asks for more than the partition has) are
    given as Slurm writes them.
    """
    if code != "PD" or reason in _ROUTINE_REASONS:
        return None, False
    if reason in _HELD_REASONS:
        return f"held ({reason})", True
    if reason in _BLOCKED_REASONS:
        return (
            f"a job it waits for failed, timed out or was cancelled in Slurm's view ({reason})",
            False,
        )
    return f"pending ({reason})", False


# The squeue output format: id, compact state, reason, name (last: it may hold anything).
_SQUEUE_FORMAT = "%i|%t|%r|%j"

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
        why, held = reason_of(code, reason)
        for jobid in expand_array_ids(raw_id):
            statuses[jobid] = JobStatus(jobid, state, name, why, held)
            if "_" in jobid:
                base = jobid.split("_", 1)[0]
                prev = by_array.get(base)
                if more_active(state, prev):
                    by_array[base] = JobStatus(base, state, name, why, held)
    for base, status in by_array.items():
        statuses.setdefault(base, status)
    return statuses


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


class Slurm(CommandScheduler):
    """Submit jobs to a Slurm cluster with ``sbatch``.

    Every job runs a fixed batch script shipped with psyrun
    (``slurm_launcher.sh``) that executes the job's argv unchanged (arguments
    with spaces, quotes or ``;`` arrive literally). Jobs start in the directory
    of submission with the submitting environment (sbatch's defaults), so
    the interpreter given as the first element of the command is the one used.

    Scheduler arguments (``scheduler_args`` of a task), each a fixed value or
    a function called with the job name:

    ``timelimit`` (``--time``: sbatch's forms such as ``'1:00:00'``, or with
    units: ``'1h'``, ``'90m'``, ``'1h30m'``, ``'2d'``), ``memory`` (``--mem``),
    ``memory_per_cpu`` (``--mem-per-cpu``), ``n_cpus`` (``--cpus-per-task``), ``n_nodes``
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

    The parameters are :class:`~psyrun.scheduler.command.CommandScheduler`'s:
    `workdir` (accepted for psyrun 0.8 task files, not needed), `user` (whose
    jobs ``squeue`` lists; default: the current user) and `max_array_size` (to
    override the cluster's MaxArraySize, mainly for tests).
    """

    supports_arrays = True
    USER_DEFAULT_ARGS = {"timelimit": "1:00:00", "n_cpus": 1, "memory_per_cpu": "1G"}
    tags_in_names = True
    release_command = ("scontrol", "release")

    submit_program = "sbatch"
    id_style = "slurm"
    id_label = "a Slurm job id"
    OPTIONS = SBATCH_OPTIONS
    EXTRA_ARGS = EXTRA_ARGS
    passthrough_arg = "sbatch_args"
    passthrough_example = {"partition": "gpu"}
    default_max_array_size = DEFAULT_MAX_ARRAY_SIZE

    # -- the sbatch command ---------------------------------------------------

    #: Translate `scheduler_args` for the job `name` into sbatch arguments (name included).
    sbatch_options = CommandScheduler.named_options

    def fixed_options(self) -> list[str]:
        """``--parsable``: sbatch prints only the id."""
        return ["--parsable"]

    def name_options(self, name: str | None, chunk: ArrayChunk | None = None) -> list[str]:
        """``--job-name=NAME``."""
        return [] if name is None else [f"--job-name={name}"]

    def resource_options(self, values: Mapping[str, Any]) -> list[str]:
        """``--option=value`` for each sbatch option in :data:`SBATCH_OPTIONS`.

        A time limit with units (``'1h'``, ``'90m'``, ``'1h30m'``, ``'2d'``),
        which sbatch refuses, becomes ``H:MM:SS``; other values are sbatch's own.
        """
        values = dict(values)
        seconds = duration_seconds(values.get("timelimit"))
        if seconds is not None:
            values["timelimit"] = hms(seconds)
        return [f"{opt}={values[key]}" for key, opt in SBATCH_OPTIONS.items() if key in values]

    def passthrough_option(self, key: str, value: Any) -> list[str]:
        """``--key=value`` (``-k value`` for one-letter keys), a bare flag for True."""
        flag = f"-{key}" if len(key) == 1 else f"--{key}"
        if value is True:
            return [flag]
        return [flag, str(value)] if len(key) == 1 else [f"{flag}={value}"]

    def array_options(self, chunk: ArrayChunk) -> list[str]:
        """``--array=0-(count-1)[%throttle]``."""
        throttle = "" if chunk.throttle is None else f"%{chunk.throttle}"
        return [f"--array=0-{chunk.count - 1}{throttle}"]

    def dependency_options(self, deps: list[JobId]) -> list[str]:
        """``--dependency=afterok:ID:ID...``."""
        return [f"--dependency=afterok:{':'.join(map(str, deps))}"] if deps else []

    supports_after_any = True

    def after_any_options(self, deps: list[JobId]) -> list[str]:
        """``--dependency=afterany:ID:ID...`` (also after a time limit, a failure, a cancel)."""
        return [f"--dependency=afterany:{':'.join(map(str, deps))}"] if deps else []

    def output_options(self, output: str, chunk: ArrayChunk | None) -> list[str]:
        """``--output``: the log itself, except for the later arrays of a split one."""
        if chunk is None:
            return [f"--output={escape_output_pattern(output, array=False)}"]
        if chunk.offset == 0:
            # Slurm's own %a is the index: let sbatch open the log itself
            # (it also receives Slurm's messages, e.g. a time-limit kill).
            return [f"--output={escape_output_pattern(output, array=True)}"]
        return ["--output=/dev/null"]

    def job_command(self, argv: list[str], output: str, chunk: ArrayChunk | None) -> list[str]:
        """Run the launcher with the mode (``single`` or the array offset) and the argv."""
        if chunk is None:
            return [launcher_path(), "single", "", "--", *argv]
        launcher_output = "" if chunk.offset == 0 else output
        return [launcher_path(), str(chunk.offset), launcher_output, "--", *argv]

    def parse_submit_output(self, stdout: str) -> str | None:
        """Read ``<id>`` or ``<id>;<cluster>`` (``--parsable``)."""
        first = stdout.strip().splitlines()[0] if stdout.strip() else ""
        jobid = first.split(";", 1)[0].strip()
        return jobid if jobid.isdigit() else None

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command (through this module's ``run_command``, which tests count)."""
        return run_command(argv) if input is None else run_command(argv, input=input)

    def _run_submit(self, cmd: list[str], name: str | None, script: str | None) -> str:
        # Every sbatch call goes through _sbatch (tests wrap it to record ids).
        return self._sbatch(cmd, name)

    def _sbatch(self, cmd: list[str], name: str | None) -> str:
        return super()._run_submit(cmd, name, None)

    def array_limit_command(self) -> list[str]:
        """``scontrol show config`` (read once by :meth:`max_array_size`)."""
        return ["scontrol", "show", "config"]

    def parse_array_limit(self, stdout: str) -> int | None:
        """See :func:`parse_max_array_size`."""
        return parse_max_array_size(stdout)

    # -- status and kill ------------------------------------------------------

    def status_command(self) -> list[str]:
        """``squeue`` for our user's jobs, in a format :func:`parse_squeue` reads."""
        user = self.user or current_user()
        return ["squeue", "--noheader", f"--user={user}", f"--format={_SQUEUE_FORMAT}"]

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """See :func:`parse_squeue`."""
        return parse_squeue(stdout)

    def kill_command(self, jobids: list[str]) -> list[str]:
        """``scancel ID...``."""
        return ["scancel", *jobids]

    def kill_error_ignorable(self, proc: subprocess.CompletedProcess[str]) -> bool:
        """Tell whether scancel complained only about jobs that no longer exist."""
        return _only_invalid_ids(proc.stderr)


def _only_invalid_ids(stderr: str) -> bool:
    """Tell whether scancel complained only about jobs that no longer exist."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return bool(lines) and all(
        "Invalid job id" in line
        or "already completing or completed" in line
        or "Job/step already completing" in line
        for line in lines
    )


__all__ = [
    "DEFAULT_MAX_ARRAY_SIZE",
    "SBATCH_OPTIONS",
    "Slurm",
    "expand_array_ids",
    "parse_squeue",
    "reason_of",
]
