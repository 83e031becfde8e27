"""Sqsub: Sharcnet's ``sqsub`` scheduler (``sqjobs`` for status, ``sqkill`` to cancel)."""

from __future__ import annotations

import json
import os
import re

from psyrun.atomic import atomic_write
from psyrun.scheduler.base import JobState, JobStatus
from psyrun.scheduler.command import ArrayChunk, CommandScheduler, JobId

#: scheduler_args names and the sqsub option each becomes.
SQSUB_OPTIONS = {
    "timelimit": "-r",
    "n_cpus": "-n",
    "n_nodes": "-N",
    "memory": "--mpp",
}
REQUIRED_ARGS = ("timelimit", "memory")

# sqjobs' one-letter states; D (done) and the like mean the job is no longer held.
_STATES = {
    "Q": JobState.QUEUED,
    "H": JobState.QUEUED,
    "R": JobState.RUNNING,
    "Z": JobState.RUNNING,
    "S": JobState.RUNNING,
    "D": JobState.COMPLETED,
    "E": JobState.FAILED,
    "C": JobState.CANCELLED,
}

_STATE_RE = re.compile(r"^[A-Za-z]{1,2}$")
_SUBMITTED_RE = re.compile(r"submitted as jobid\s+(\d+)", re.IGNORECASE)

#: File in `workdir` that maps job ids to names (sqjobs does not show names).
NAMES_FILE = "psyrun-sqsub-names.json"


def parse_sqjobs(output: str) -> dict[str, tuple[JobState, str]]:
    """Parse ``sqjobs`` output into ``{jobid: (state, raw state letter)}``.

    The header line names the columns (``jobid`` and ``state`` are used, in
    whatever position they are); separator lines of dashes and any line whose
    first field is not a number or whose state is not one or two letters are
    skipped (summary lines).
    """
    result: dict[str, tuple[JobState, str]] = {}
    id_col, state_col = 0, 2
    for line in output.splitlines():
        fields = line.split()
        if not fields:
            continue
        lower = [f.lower() for f in fields]
        if "jobid" in lower and "state" in lower:
            id_col, state_col = lower.index("jobid"), lower.index("state")
            continue
        if len(fields) <= max(id_col, state_col) or not fields[id_col].isdigit():
            continue
        letter = fields[state_col]
        if not _STATE_RE.match(letter):
            continue  # a summary line such as "1 running job, ..."
        result[fields[id_col]] = (_STATES.get(letter.upper(), JobState.QUEUED), letter)
    return result


class Sqsub(CommandScheduler):
    """Submit jobs with Sharcnet's ``sqsub``.

    Scheduler arguments, each a fixed value or a function called with the job
    name: ``timelimit`` (required, ``-r``), ``memory`` (required, ``--mpp``),
    ``n_cpus`` (default 1, ``-n``), ``n_nodes`` (``-N``).

    Parameters
    ----------
    workdir
        Directory where the names of submitted jobs are kept (``sqjobs`` does
        not show them), so that a later ``psy`` command can report them.
        ``None`` keeps them in memory only.
    """

    supports_arrays = False
    USER_DEFAULT_ARGS = {"timelimit": "1h", "memory": "1G", "n_cpus": 1}

    submit_program = "sqsub"
    id_style = "plain"
    id_label = "an sqsub job id"
    submit_layout = ("resources", "output", "name", "dependencies", "command")
    OPTIONS = SQSUB_OPTIONS
    REQUIRED_ARGS = REQUIRED_ARGS
    DEFAULT_ARGS = {"n_cpus": 1}

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(None if workdir is None else os.fspath(workdir))
        self._names: dict[str, str | None] | None = None

    #: Translate `scheduler_args` for job `name` into sqsub arguments (name not included).
    sqsub_options = CommandScheduler.scheduler_options

    def output_options(self, output: str, chunk: ArrayChunk | None) -> list[str]:
        """``-o FILE``."""
        return ["-o", output]

    def name_options(self, name: str | None, chunk: ArrayChunk | None = None) -> list[str]:
        """``-j NAME``."""
        return [] if name is None else ["-j", name]

    def dependency_options(self, deps: list[JobId]) -> list[str]:
        """``-w ID,ID...``."""
        return ["-w", ",".join(map(str, deps))] if deps else []

    def parse_submit_output(self, stdout: str) -> str | None:
        """Read ``submitted as jobid N``."""
        m = _SUBMITTED_RE.search(stdout)
        return None if m is None else m.group(1)

    def submitted(self, jobid: str, name: str | None) -> None:
        """Keep the name of the job (sqjobs does not show it)."""
        self._save_name(jobid, name)

    # -- names of jobs ------------------------------------------------------

    def _names_path(self) -> str | None:
        return None if self.workdir is None else os.path.join(self.workdir, NAMES_FILE)

    def _load_names(self) -> dict[str, str | None]:
        if self._names is None:
            self._names = {}
            path = self._names_path()
            if path is not None and os.path.exists(path):
                try:
                    with open(path) as f:
                        self._names = {str(k): v for k, v in json.load(f).items()}
                except (OSError, ValueError):
                    self._names = {}  # a damaged name file only costs the names
        return self._names

    def _save_name(self, jobid: str, name: str | None) -> None:
        names = self._load_names()
        names[jobid] = name
        path = self._names_path()
        if path is None:
            return
        os.makedirs(self.workdir, exist_ok=True)
        with atomic_write(path) as f:
            json.dump(names, f)

    # -- status and kill ----------------------------------------------------

    def status_command(self) -> list[str]:
        """``sqjobs``."""
        return ["sqjobs"]

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """Read ``sqjobs`` output (:func:`parse_sqjobs`), with the names kept in `workdir`."""
        names = self._load_names()
        return {
            jobid: JobStatus(jobid, state, names.get(jobid))
            for jobid, (state, _) in parse_sqjobs(stdout).items()
        }

    def kill_command(self, jobids: list[str]) -> list[str]:
        """``sqkill ID...``."""
        return ["sqkill", *jobids]
