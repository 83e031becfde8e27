"""LSF: IBM Spectrum LSF with bsub, bjobs and bkill (tested with fake commands only)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from typing import Any

from psyrun.scheduler import command
from psyrun.scheduler.base import JobState, JobStatus
from psyrun.scheduler.command import ArrayChunk, CommandScheduler, JobId

#: scheduler_args names of the user guide and the bsub option each becomes.
BSUB_OPTIONS = {
    "timelimit": "-W",
    "memory": "-M",
    "n_cpus": "-n",
}
#: scheduler_args names that are not plain bsub options.
EXTRA_ARGS = {
    "max_running": "job arrays only: at most this many elements of one array run at once (%N)",
    "bsub_args": "any other bsub options: a list of arguments or a dict of option -> value",
}

#: LSF's default MAX_JOB_ARRAY_SIZE (lsb.params): indices 1 to 1000.
DEFAULT_MAX_ARRAY_SIZE = 1000

# bjobs' STAT column; DONE and EXIT mean the job is no longer held (bjobs
# lists finished jobs for a while), anything unknown counts as running.
_STATES = {
    **dict.fromkeys(("PEND", "PSUSP", "WAIT"), JobState.QUEUED),
    **dict.fromkeys(("RUN", "USUSP", "SSUSP", "PROV", "UNKWN", "ZOMBI"), JobState.RUNNING),
    "DONE": JobState.COMPLETED,
    "EXIT": JobState.FAILED,
}

# Pending reasons of a job whose dependency can never be satisfied.
_BLOCKED_RE = re.compile(r"dependency condition invalid or never satisfied", re.IGNORECASE)

#: The bjobs output columns, with a delimiter (the name last: it may hold anything).
BJOBS_FORMAT = "jobid stat jobindex pend_reason job_name delimiter='|'"

_SUBMITTED_RE = re.compile(r"Job <(\d+)> is submitted")


def parse_bjobs(output: str) -> dict[str, JobStatus]:
    """Parse ``bjobs -noheader -o "jobid stat jobindex pend_reason job_name delimiter='|'"``.

    Array elements get ids ``<job>[<index>]`` (LSF's 1-based index) and names
    without their ``[index]`` suffix; lines of another shape ("No unfinished
    job found") are skipped.
    """
    statuses = {}
    for line in output.splitlines():
        fields = line.strip().split("|", 4)
        if len(fields) != 5 or not fields[0].strip().isdigit():
            continue
        job, stat, index, reason, name = (f.strip() for f in fields)
        state = _STATES.get(stat.upper(), JobState.RUNNING)
        if state is JobState.QUEUED and _BLOCKED_RE.search(reason):
            state = JobState.BLOCKED
        jobid = job if index in ("", "0", "-") else f"{job}[{index}]"
        name = re.sub(r"\[\d+\]$", "", name) or None
        statuses[jobid] = JobStatus(jobid, state, name)
    return statuses


class LSF(CommandScheduler):
    """Submit jobs to IBM Spectrum LSF with ``bsub``.

    Each job is a small script given to ``bsub`` on its standard input: it
    changes to the directory of submission and runs psyrun's fixed
    ``batch_launcher.sh`` with the job's argv, every word quoted, so arguments
    with spaces, quotes, ``;`` or ``$()`` arrive unchanged. LSF's job report
    (``-o``) goes to the directory of the job's log file.

    **Array indices.** LSF numbers array elements from 1; psyrun's jobs from 0.
    An array of n jobs is submitted as ``-J "name[1-n]"``, and the launcher
    runs element ``$LSB_JOBINDEX`` as psyrun's index ``$LSB_JOBINDEX - 1`` (plus
    the offset of the submission when an array larger than
    ``max_array_size`` is split): the ids returned for indices 0..n-1 are
    ``<job>[1]`` .. ``<job>[n]``.

    Scheduler arguments, each a fixed value or a function called with the job
    name: ``timelimit`` (``-W``: ``[hours:]minutes``, or with units such as
    ``'1h'``), ``memory`` (``-M``, e.g. ``'1GB'``), ``n_cpus`` (``-n``),
    ``max_running`` (``%K``: at most this many elements of an array at once),
    ``bsub_args`` (other options: a list, or a dict such as ``{'q':
    'normal', 'P': 'proj'}`` giving ``-q normal -P proj``).

    Dependencies are ``-w "done(ID) && ..."`` (``done(ARRAY)`` for a whole
    array); status comes from one ``bjobs`` call, kills from ``bkill`` in
    batches. Job names of arrays are reduced to letters, digits, ``.``, ``-``
    and ``_``, as LSF requires.

    Parameters
    ----------
    workdir
        Accepted for symmetry with the other schedulers; not needed.
    user
        Whose jobs ``bjobs`` lists (default: the current user).
    max_array_size
        The cluster's ``MAX_JOB_ARRAY_SIZE`` (default 1000).
    """

    supports_arrays = True
    USER_DEFAULT_ARGS = {"timelimit": "1:00", "memory": "1GB", "n_cpus": 1}

    submit_program = "bsub"
    id_style = "lsf"
    id_label = "an LSF job id"
    submit_layout = ("name", "resources", "dependencies", "output")
    OPTIONS = BSUB_OPTIONS
    EXTRA_ARGS = EXTRA_ARGS
    passthrough_arg = "bsub_args"
    passthrough_example = {"q": "normal"}
    first_task_index = 1

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        user: str | None = None,
        max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
    ) -> None:
        super().__init__(workdir, user=user, max_array_size=int(max_array_size))

    # -- the bsub command -----------------------------------------------------

    def name_options(self, name: str | None, chunk: ArrayChunk | None = None) -> list[str]:
        """``-J NAME``, or ``-J NAME[1-N]%K`` for an array."""
        if chunk is None:
            return [] if name is None else ["-J", name]
        throttle = "" if chunk.throttle is None else f"%{chunk.throttle}"
        return ["-J", f"{command.safe_job_name(name)}[1-{chunk.count}]{throttle}"]

    def resource_options(self, values: Mapping[str, Any]) -> list[str]:
        """``-W`` (minutes or ``H:MM``), ``-M`` and ``-n``."""
        values = dict(values)
        seconds = command.duration_seconds(values.get("timelimit"))
        if seconds is not None:
            minutes = -(-seconds // 60)  # LSF counts whole minutes: round up
            values["timelimit"] = f"{minutes // 60}:{minutes % 60:02d}"
        return super().resource_options(values)

    def dependency_options(self, deps: list[JobId]) -> list[str]:
        """``-w "done(ID) && done(ID[K])"``."""
        return ["-w", " && ".join(f"done({d})" for d in deps)] if deps else []

    supports_after_any = True

    def after_any_options(self, deps: list[JobId]) -> list[str]:
        """``-w "ended(ID) && ended(ID[K])"``."""
        return ["-w", " && ".join(f"ended({d})" for d in deps)] if deps else []

    def output_options(self, output: str, chunk: ArrayChunk | None) -> list[str]:
        """``-o DIR/``: LSF's job report beside the job's log (the launcher writes the log)."""
        return ["-o", os.path.dirname(os.path.abspath(output)) + os.sep]

    def job_script(self, argv: list[str], output: str, chunk: ArrayChunk | None) -> str:
        """Return the script bsub reads on stdin (see :func:`.batch_script`)."""
        return command.batch_script(argv, output, chunk, "LSB_JOBINDEX", first_index=1)

    def parse_submit_output(self, stdout: str) -> str | None:
        """Read ``Job <123> is submitted to queue <normal>.``."""
        m = _SUBMITTED_RE.search(stdout)
        return None if m is None else m.group(1)

    # -- status and kill ------------------------------------------------------

    def status_command(self) -> list[str]:
        """``bjobs`` for our user's unfinished jobs, array elements one per line."""
        user = self.user or command.current_user()
        return ["bjobs", "-noheader", "-u", user, "-o", BJOBS_FORMAT]

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """See :func:`parse_bjobs`; every array also gets an entry under its job id."""
        statuses = parse_bjobs(stdout)
        for jobid, status in list(statuses.items()):
            array = str(JobId.parse(jobid, "lsf").array)
            if array != jobid and (array not in statuses or status.status is JobState.RUNNING):
                statuses[array] = JobStatus(array, status.status, status.name)
        return statuses

    def kill_command(self, jobids: list[str]) -> list[str]:
        """``bkill ID...``."""
        return ["bkill", *jobids]

    def kill_error_ignorable(self, proc: subprocess.CompletedProcess[str]) -> bool:
        """Tell whether bkill complained only about jobs that are gone already."""
        lines = [line for line in (proc.stderr or "").splitlines() if line.strip()]
        return bool(lines) and all(
            "No matching job found" in line or "already finished" in line for line in lines
        )


__all__ = ["BSUB_OPTIONS", "LSF", "parse_bjobs"]
