"""PBS: PBS Pro / OpenPBS and Torque with qsub, qstat and qdel.

Without a PBS server on psyrun's machines, the tests drive fake commands and
compare command lines with the forms of the PBS Pro and Torque manuals.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Mapping
from typing import Any

from psyrun.scheduler.base import JobState, JobStatus
from psyrun.scheduler.command import (
    ArrayChunk,
    CommandScheduler,
    JobId,
    batch_script,
    current_user,
    duration_seconds,
    hms,
    safe_job_name,
)

#: scheduler_args names of the user guide and the PBS resource each becomes.
PBS_RESOURCES = {
    "timelimit": "walltime",
    "memory": "mem",
    "n_cpus": "ncpus",
    "n_nodes": "nodes",
}
#: scheduler_args names that are not resources.
EXTRA_ARGS = {
    "max_running": "job arrays only: at most this many subjobs of one array run at once (%N)",
    "qsub_args": "any other qsub options: a list of arguments or a dict of option -> value",
}

FLAVORS = ("pro", "torque")

# qstat's job_state letters; X (subjob done), F (finished) and C (Torque:
# completed) mean the job is no longer held; anything unknown counts as running.
_STATES = {
    **dict.fromkeys("QHWTM", JobState.QUEUED),
    **dict.fromkeys("REBSU", JobState.RUNNING),
    **dict.fromkeys("XFC", JobState.COMPLETED),
}

_SIZE_RE = re.compile(r"^(\d+)([KMGTP])B?$", re.IGNORECASE)


def pbs_size(value: Any) -> str:
    """Write a memory size for PBS: ``'2G'`` or ``'2GB'`` -> ``'2gb'``; others unchanged."""
    m = _SIZE_RE.match(str(value).strip())
    return f"{m.group(1)}{m.group(2).lower()}b" if m else str(value)


def parse_qstat_full(output: str) -> dict[str, dict[str, str]]:
    """Parse ``qstat -f`` output into ``{job id: {attribute: value}}``.

    Records start with ``Job Id: <id>``; attributes are ``name = value``
    lines, and a long value continues on lines indented with a tab.
    """
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    key = None
    for line in output.splitlines():
        if line.startswith("Job Id:"):
            current = jobs.setdefault(line.split(":", 1)[1].strip(), {})
            key = None
        elif current is not None and line.startswith("\t") and key is not None:
            current[key] += line.strip()
        elif current is not None and " = " in line:
            key, value = (part.strip() for part in line.split(" = ", 1))
            current[key] = value
    return jobs


def parse_qstat(output: str, user: str | None = None) -> dict[str, JobStatus]:
    """Return the statuses in ``qstat -f -t`` output (of `user`'s jobs, when given)."""
    statuses = {}
    for jobid, attrs in parse_qstat_full(output).items():
        owner = attrs.get("Job_Owner", "").split("@", 1)[0]
        if user is not None and owner and owner != user:
            continue
        state = _STATES.get(attrs.get("job_state", "").strip().upper(), JobState.RUNNING)
        statuses[jobid] = JobStatus(jobid, state, attrs.get("Job_Name"))
    return statuses


class PBS(CommandScheduler):
    """Submit jobs to PBS Pro / OpenPBS (``flavor='pro'``) or Torque (``'torque'``).

    Each job is a small script given to ``qsub`` on its standard input: it
    changes to the directory of submission and runs psyrun's fixed
    ``batch_launcher.sh`` with the job's argv, every word quoted, so arguments
    with spaces, quotes, ``;`` or ``$()`` arrive unchanged. ``qsub`` gets
    ``-V`` (the job sees the submitting environment, as under Slurm) and
    ``-S /bin/bash``. The job's output goes to the given file; PBS's own
    report (``-j oe``) goes to the directory of that file.

    Scheduler arguments, each a fixed value or a function called with the job
    name: ``timelimit`` (``-l walltime``; ``'1:00:00'``, or with units such as
    ``'1h'``), ``memory`` (``'1gb'``; ``'1G'`` is translated), ``n_cpus`` and
    ``n_nodes`` (PBS Pro: ``-l select=NODES:ncpus=CPUS:mem=MEM``; Torque:
    ``-l nodes=NODES:ppn=CPUS`` and ``-l mem=MEM``), ``max_running`` (at most
    this many subjobs of an array at once), ``qsub_args`` (other options: a
    list, or a dict such as ``{'q': 'workq', 'A': 'proj'}`` giving ``-q workq
    -A proj``).

    Job arrays: PBS Pro ``-J 0-N``, Torque ``-t 0-N``; dependencies ``-W
    depend=afterok:...`` and, for whole arrays, ``afterokarray:...``. Status
    comes from one ``qstat -f -t`` call, kills from ``qdel`` in batches.
    Job names are reduced to letters, digits, ``.``, ``-`` and ``_``.

    Parameters
    ----------
    workdir
        Accepted for symmetry with the other schedulers; not needed.
    flavor
        ``'pro'`` (PBS Pro, OpenPBS) or ``'torque'``.
    user
        Whose jobs the status reports (default: the current user).
    """

    supports_arrays = True
    USER_DEFAULT_ARGS = {"timelimit": "1:00:00", "memory": "1gb", "n_cpus": 1}

    submit_program = "qsub"
    id_style = "pbs"
    id_label = "a PBS job id"
    submit_layout = ("fixed", "name", "array", "resources", "dependencies", "output")
    OPTIONS = PBS_RESOURCES
    EXTRA_ARGS = EXTRA_ARGS
    passthrough_arg = "qsub_args"
    passthrough_example = {"q": "workq"}

    def __init__(
        self, workdir: str | os.PathLike[str] | None = None, *, flavor: str = "pro",
        user: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(workdir, user=user)
        if flavor not in FLAVORS:
            raise ValueError(f"unknown PBS flavor {flavor!r}; choose 'pro' or 'torque'")
        self.flavor = flavor
        # PBS Pro refuses an array of one subjob; Torque takes it.
        self.min_array_size = 2 if flavor == "pro" else 1

    @property
    def index_variable(self) -> str:
        """The variable that holds a subjob's index."""
        return "PBS_ARRAY_INDEX" if self.flavor == "pro" else "PBS_ARRAYID"

    # -- the qsub command -----------------------------------------------------

    def fixed_options(self) -> list[str]:
        """``-V`` (the submitting environment) and ``-S /bin/bash``."""
        return ["-V", "-S", "/bin/bash"]

    def name_options(self, name: str | None, chunk: ArrayChunk | None = None) -> list[str]:
        """``-N NAME`` (with characters PBS refuses replaced by ``_``)."""
        return [] if name is None else ["-N", safe_job_name(name)]

    def array_options(self, chunk: ArrayChunk) -> list[str]:
        """``-J 0-N`` (PBS Pro) or ``-t 0-N`` (Torque), ``%K`` for a throttle."""
        throttle = "" if chunk.throttle is None else f"%{chunk.throttle}"
        flag = "-J" if self.flavor == "pro" else "-t"
        return [flag, f"0-{chunk.count - 1}{throttle}"]

    def resource_options(self, values: Mapping[str, Any]) -> list[str]:
        """``-l`` options for the time limit, memory, cpus and nodes."""
        options = []
        if "timelimit" in values:
            seconds = duration_seconds(values["timelimit"])
            walltime = values["timelimit"] if seconds is None else hms(seconds)
            options += ["-l", f"walltime={walltime}"]
        mem = pbs_size(values["memory"]) if "memory" in values else None
        if self.flavor == "pro":
            if any(k in values for k in ("memory", "n_cpus", "n_nodes")):
                chunk = [str(values.get("n_nodes", 1))]
                if "n_cpus" in values:
                    chunk.append(f"ncpus={values['n_cpus']}")
                if mem is not None:
                    chunk.append(f"mem={mem}")
                options += ["-l", "select=" + ":".join(chunk)]
        else:
            if "n_nodes" in values or "n_cpus" in values:
                nodes = f"nodes={values.get('n_nodes', 1)}"
                if "n_cpus" in values:
                    nodes += f":ppn={values['n_cpus']}"
                options += ["-l", nodes]
            if mem is not None:
                options += ["-l", f"mem={mem}"]
        return options

    def dependency_options(self, deps: list[JobId]) -> list[str]:
        """``-W depend=afterok:ID:ID[,afterokarray:ARRAY[]...]``."""
        if not deps:
            return []
        jobs = [str(d) for d in deps if not d.whole_array]
        arrays = [str(d) for d in deps if d.whole_array]
        parts = []
        if jobs:
            parts.append("afterok:" + ":".join(jobs))
        if arrays:
            parts.append("afterokarray:" + ":".join(arrays))
        return ["-W", "depend=" + ",".join(parts)]

    def output_options(self, output: str, chunk: ArrayChunk | None) -> list[str]:
        """``-j oe -o DIR/``: PBS's own report beside the job's log."""
        directory = os.path.dirname(os.path.abspath(output))
        if ":" in directory:
            # PBS reads "host:path"; name the host so the path keeps its colons.
            directory = f"{socket.gethostname()}:{directory}"
        return ["-j", "oe", "-o", directory + os.sep]

    def job_script(self, argv: list[str], output: str, chunk: ArrayChunk | None) -> str:
        """Return the script qsub reads on stdin (see :func:`.batch_script`)."""
        return batch_script(argv, output, chunk, self.index_variable)

    def parse_submit_output(self, stdout: str) -> str | None:
        """Read the id qsub prints (``123.server``, ``123[].server`` for arrays)."""
        for line in stdout.splitlines():
            word = line.strip()
            try:
                return str(JobId.parse(word, "pbs"))
            except ValueError:
                continue
        return None

    # -- status and kill ------------------------------------------------------

    def status_command(self) -> list[str]:
        """``qstat -f -t``: full records, array subjobs included."""
        return ["qstat", "-f", "-t"]

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """See :func:`parse_qstat` (only our user's jobs)."""
        return parse_qstat(stdout, self.user or current_user())

    def kill_command(self, jobids: list[str]) -> list[str]:
        """``qdel ID...``."""
        return ["qdel", *jobids]

    def kill_error_ignorable(self, proc: subprocess.CompletedProcess[str]) -> bool:
        """Tell whether qdel complained only about jobs that are gone already."""
        lines = [line for line in (proc.stderr or "").splitlines() if line.strip()]
        return bool(lines) and all(
            "Unknown Job Id" in line or "Job has finished" in line or "finished" in line
            for line in lines
        )


__all__ = ["PBS", "PBS_RESOURCES", "parse_qstat", "parse_qstat_full", "pbs_size"]
