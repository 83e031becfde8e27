"""Sqsub: Sharcnet's ``sqsub`` scheduler (``sqjobs`` for status, ``sqkill`` to cancel)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from psyrun.scheduler._command import command_error, run_command
from psyrun.scheduler.base import (
    JobState,
    JobStatus,
    Scheduler,
    SchedulerError,
    check_args,
    normalize_dependencies,
    resolve_arg,
)

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


class Sqsub(Scheduler):
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

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        self.workdir = None if workdir is None else os.fspath(workdir)
        self._names: dict[str, str | None] | None = None
        self._statuses: dict[str, tuple[JobState, str]] | None = None

    def sqsub_options(
        self, name: str | None, scheduler_args: Mapping[str, Any] | None
    ) -> list[str]:
        """Translate `scheduler_args` for job `name` into sqsub arguments.

        Raises
        ------
        ValueError
            For an unknown argument name or a missing required one.
        """
        scheduler_args = dict(scheduler_args or {})
        unknown = sorted(set(scheduler_args) - set(SQSUB_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown Sqsub scheduler argument(s) {', '.join(map(repr, unknown))}; "
                f"valid ones are: {', '.join(SQSUB_OPTIONS)}"
            )
        missing = [k for k in REQUIRED_ARGS if scheduler_args.get(k) is None]
        if missing:
            raise ValueError(
                f"Sqsub needs the scheduler argument(s) {', '.join(map(repr, missing))} "
                f"(for example scheduler_args = {{'timelimit': '1h', 'memory': '1G'}})"
            )
        scheduler_args.setdefault("n_cpus", 1)
        options = []
        for key, option in SQSUB_OPTIONS.items():
            if key in scheduler_args:
                value = resolve_arg(scheduler_args[key], name)
                if value is not None:
                    options.extend([option, str(value)])
        return options

    def submit(
        self,
        args: Sequence[str],
        output_filename: str,
        name: str | None = None,
        depends_on: Iterable[str] | None = None,
        scheduler_args: Mapping[str, Any] | None = None,
    ) -> str:
        """Submit one job with sqsub and return its id (see :meth:`Scheduler.submit`)."""
        argv = check_args(args)
        cmd = ["sqsub", *self.sqsub_options(name, scheduler_args)]
        cmd.extend(["-o", os.fspath(output_filename)])
        if name is not None:
            cmd.extend(["-j", name])
        deps = normalize_dependencies(depends_on)
        for d in deps:
            if not d.isdigit():
                raise ValueError(f"not an sqsub job id to depend on: {d!r}")
        if deps:
            cmd.extend(["-w", ",".join(deps)])
        cmd.extend(argv)
        proc = run_command(cmd)
        m = _SUBMITTED_RE.search(proc.stdout or "")
        if proc.returncode != 0 or m is None:
            raise SchedulerError(command_error(f"sqsub for job {name!r}", cmd, proc))
        jobid = m.group(1)
        self._save_name(jobid, name)
        if self._statuses is not None:
            self._statuses[jobid] = (JobState.QUEUED, "Q")
        return jobid

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
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(names, f)
        os.replace(tmp, path)

    # -- status and kill ----------------------------------------------------

    def refresh(self) -> None:
        """Forget the cached ``sqjobs`` answer; the next status query asks again."""
        self._statuses = None

    def _query(self) -> dict[str, tuple[JobState, str]]:
        if self._statuses is None:
            cmd = ["sqjobs"]
            proc = run_command(cmd)
            if proc.returncode != 0:
                raise SchedulerError(command_error("sqjobs", cmd, proc))
            self._statuses = parse_sqjobs(proc.stdout)
        return self._statuses

    def get_statuses(self, jobids: Iterable[str]) -> dict[str, JobStatus]:
        """Return the statuses of the held jobs among `jobids`, from one ``sqjobs`` call."""
        statuses = self._query()
        names = self._load_names()
        result = {}
        for jobid in map(str, jobids):
            entry = statuses.get(jobid)
            if entry is not None and entry[0].in_queue:
                result[jobid] = JobStatus(jobid, entry[0], names.get(jobid))
        return result

    def get_status(self, jobid: str) -> JobStatus | None:
        """Return the status of a held job, ``None`` when finished or unknown."""
        return self.get_statuses([jobid]).get(str(jobid))

    def get_jobs(self) -> list[str]:
        """Return the ids of this user's queued and running jobs."""
        return [j for j, (state, _) in self._query().items() if state.in_queue]

    def kill(self, jobid: str) -> None:
        """Cancel a job with ``sqkill``."""
        self.kill_jobs([jobid])

    def kill_jobs(self, jobids: Iterable[str]) -> None:
        """Cancel several jobs with one ``sqkill`` call."""
        ids = [str(j) for j in jobids]
        if not ids:
            return
        for j in ids:
            if not j.isdigit():
                raise ValueError(f"not an sqsub job id: {j!r}")
        cmd = ["sqkill", *ids]
        proc = run_command(cmd)
        if proc.returncode != 0:
            raise SchedulerError(command_error("sqkill", cmd, proc))
        if self._statuses is not None:
            for j in ids:
                self._statuses.pop(j, None)
