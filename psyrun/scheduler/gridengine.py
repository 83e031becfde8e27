"""Grid Engine (SGE, Son of Grid Engine, Altair/Univa Grid Engine): qsub, qstat, qdel."""

from __future__ import annotations

import math
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from importlib import resources
from typing import Any

from psyrun.scheduler.base import JobState, JobStatus, SchedulerError
from psyrun.scheduler.command import (
    ArrayChunk,
    CommandScheduler,
    JobId,
    current_user,
    more_active,
)

#: scheduler_args names of the user guide (and a few more) and what each becomes.
GRIDENGINE_ARGS = {
    "timelimit": "-l h_rt=H:MM:SS (sbatch's formats, or '15m', '1h30m'; a number is minutes)",
    "memory": "-l <memory_resource>=... per job: divided by n_cpus (per slot)",
    "memory_per_cpu": "-l <memory_resource>=... per slot (CPU)",
    "n_cpus": "-pe <parallel_environment> N (left out for 1)",
    "n_nodes": "only 1 is possible (use a parallel environment through qsub_args otherwise)",
    "queue": "-q QUEUE",
    "resources": "other -l requests, a dict such as {'gpu': 1}",
    "max_running": "task arrays only: at most this many tasks of one array run at once (-tc)",
    "qsub_args": "any other qsub options: a list of arguments or a dict of option -> value",
}

#: Son of Grid Engine's default max_aj_tasks (used when ``qconf`` cannot tell).
DEFAULT_MAX_ARRAY_TASKS = 75000

# Ids per qdel call (keeps argv well below ARG_MAX; tasks of one array are
# compacted into ranges first).
_QDEL_BATCH = 1000

# Characters Grid Engine refuses in job names (whitespace too); a name must not start with a digit.
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.+=,-]")


def launcher_path() -> str:
    """Return the path of the fixed job script that every Grid Engine job runs."""
    return str(resources.files("psyrun.scheduler").joinpath("gridengine_launcher.sh"))


def job_name(name: str) -> str:
    """Return `name` as Grid Engine accepts it for ``qsub -N``.

    Grid Engine refuses whitespace, ``:``, ``/``, ``@``, ``*``, ``?`` and more
    in names, and names that start with a digit: every character other than
    letters, digits and ``_.+=,-`` becomes ``_``, and a leading digit gets a
    ``j`` in front. ``'task:process'`` -> ``'task_process'``.
    """
    text = _BAD_NAME_CHARS.sub("_", name) or "_"
    return "j" + text if text[0].isdigit() else text


_TIME_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def format_time(value: Any) -> str:
    """Turn a ``timelimit`` into Grid Engine's ``H:MM:SS``.

    Accepts what ``sbatch --time`` accepts (``'30'`` and ``30`` are minutes,
    ``'MM:SS'``, ``'H:MM:SS'``, ``'D-H'``, ``'D-H:MM'``, ``'D-H:MM:SS'``) and
    unit forms such as ``'15m'``, ``'1h30m'``, ``'2d'``, ``'90s'``.

    Raises
    ------
    ValueError
        When `value` is none of these.
    """
    seconds = _seconds(value)
    if seconds is None or seconds <= 0:
        raise ValueError(
            f"timelimit {value!r} is not a time limit; give e.g. '1:00:00', '90' (minutes), "
            "'15m' or '1h30m'"
        )
    h, rest = divmod(math.ceil(seconds), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) * 60
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 60
    if re.fullmatch(r"(\d+(\.\d+)?[dhms])+", text):
        return sum(
            float(n) * _TIME_UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([dhms])", text)
        )
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if m is None:
        return None
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-H[:MM[:SS]]
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:  # H:MM:SS
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)  # MM:SS (b set) or minutes


_MEMORY_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def memory_bytes(value: Any) -> int:
    """Read a memory size (``'1G'``, ``'512M'``, ``'2048K'``; a number is megabytes) in bytes.

    K, M, G, T count in powers of 1024 whatever their case (as sbatch reads them).

    Raises
    ------
    ValueError
        When `value` is not a size of that form.
    """
    if isinstance(value, bool):
        raise ValueError(f"memory {value!r} is not a size; give e.g. '1G' or '512M'")
    text = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KkMmGgTt]?)[Bb]?", text)
    if m is None:
        raise ValueError(f"memory {value!r} is not a size; give e.g. '1G' or '512M'")
    return math.ceil(float(m.group(1)) * _MEMORY_UNITS[m.group(2).lower()])


def format_memory(n_bytes: int) -> str:
    """Write a size in bytes as Grid Engine reads it: whole G, M or K (1024-based), else bytes."""
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n_bytes % size == 0:
            return f"{n_bytes // size}{unit}"
    return str(n_bytes)


def parse_max_aj_tasks(output: str) -> int | None:
    """Read ``max_aj_tasks`` from ``qconf -sconf`` output (``None`` if absent)."""
    m = re.search(r"^\s*max_aj_tasks\s+(\d+)", output, re.MULTILINE)
    return int(m.group(1)) if m else None


def expand_tasks(spec: str) -> list[int]:
    """Expand a qstat task list: ``'3'``, ``'3-5:1'``, ``'1,4,7-9:2'`` -> task numbers.

    Raises
    ------
    ValueError
        When `spec` is not of that form.
    """
    tasks: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if m is None:
            raise ValueError(f"bad task list in qstat output: {spec!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        step = int(m.group(3)) if m.group(3) else 1
        if step < 1 or hi < lo:
            raise ValueError(f"bad task list in qstat output: {spec!r}")
        tasks.extend(range(lo, hi + 1, step))
    return tasks


def state_of(code: str) -> JobState:
    """Return what a qstat state code (``qw``, ``hqw``, ``r``, ``Eqw``, ``dr``, ...) means.

    ``E`` (error: the job failed, or could not start, and stays in the queue
    until deleted) is FAILED; ``d`` (being deleted) and running, transferring,
    suspended or restarted jobs are RUNNING; waiting and held ones (``qw``,
    ``hqw``, ``hRwq``) are QUEUED (see :func:`parse_qstat_xml` for BLOCKED);
    ``z`` (a zombie: finished) is COMPLETED. Unknown codes count as RUNNING, so
    that a job in an unknown state is never submitted twice.
    """
    if "E" in code:
        return JobState.FAILED
    if "d" in code:
        return JobState.RUNNING
    if "z" in code:
        return JobState.COMPLETED
    if any(c in code for c in "rtsSTR") and "q" not in code:
        return JobState.RUNNING
    if "q" in code or "h" in code or "w" in code:
        return JobState.QUEUED
    return JobState.RUNNING


def parse_qstat_xml(output: str) -> dict[str, JobStatus]:
    """Parse ``qstat -xml -r`` output into statuses by job id.

    Array tasks are listed as ``'<job>.<task>'`` (task numbers as Grid Engine
    counts, from 1), and every job also under ``'<job>'``: its most active
    state over its tasks. A job held by ``-hold_jid`` on a job that has a task
    in the error state (it failed: see :func:`state_of`), or on a job that is
    itself blocked, is BLOCKED: Grid Engine keeps it waiting for ever. Other
    held jobs are QUEUED.

    Raises
    ------
    SchedulerError
        When `output` is not XML.
    """
    if not output.strip():
        return {}
    try:
        root = ET.fromstring(output)
    except ET.ParseError as exc:
        raise SchedulerError(
            f"cannot read the output of qstat -xml ({exc}): {output[:200]!r}"
        ) from None
    statuses: dict[str, JobStatus] = {}
    summary: dict[str, JobStatus] = {}
    waits_on: dict[str, set[str]] = {}
    for entry in root.iter("job_list"):
        number = (entry.findtext("JB_job_number") or "").strip()
        if not number.isdigit():
            continue
        code = (entry.findtext("state") or "").strip()
        name = (entry.findtext("full_job_name") or entry.findtext("JB_name") or "").strip()
        state = state_of(code)
        predecessors = set()
        for p in entry.iter("predecessor_jobs"):
            predecessors.update(x for x in re.split(r"[\s,]+", p.text or "") if x.isdigit())
        if predecessors:
            waits_on.setdefault(number, set()).update(predecessors)
        # A hold with no -hold_jid parent left is someone's hold (qhold, qsub -h):
        # the job never starts until released (qrls).
        held = state is JobState.QUEUED and "h" in code and not predecessors
        why = f"held ({code})" if held else None
        tasks_text = (entry.findtext("tasks") or "").strip()
        for task in expand_tasks(tasks_text) if tasks_text else []:
            jobid = f"{number}.{task}"
            statuses[jobid] = JobStatus(jobid, state, name or None, why, held)
        prev = summary.get(number)
        if more_active(state, prev):
            summary[number] = JobStatus(number, state, name or None, why, held)
    # Blocked: held on a failed or blocked job; repeat until nothing changes (chains).
    failed = {j for j, s in statuses.items() if s.status is JobState.FAILED}
    failed |= {j for j, s in summary.items() if s.status is JobState.FAILED}
    bad = {j.split(".", 1)[0] for j in failed}
    blocked: set[str] = set()
    changed = True
    while changed:
        changed = False
        for job, preds in waits_on.items():
            if job not in blocked and preds & (bad | blocked):
                blocked.add(job)
                changed = True
    why = "a job it waits for failed (it is in the error state Eqw) or is itself blocked"
    for jobid, status in list(statuses.items()):
        if jobid.split(".", 1)[0] in blocked and status.status is JobState.QUEUED:
            statuses[jobid] = status._replace(status=JobState.BLOCKED, reason=why)
    for number, status in summary.items():
        if number in blocked and status.status is JobState.QUEUED:
            status = status._replace(status=JobState.BLOCKED, reason=why)
        statuses.setdefault(number, status)
    return statuses


def compact_task_ids(ids: list[str]) -> list[str]:
    """Write the tasks of each array as ranges qdel reads.

    ``['4.1', '4.2', '4.3', '5']`` -> ``['4.1-3', '5']``.
    """
    tasks: dict[str, list[int]] = {}
    out: dict[str, None] = {}
    for j in ids:
        job, _, task = j.partition(".")
        if task:
            tasks.setdefault(job, []).append(int(task))
            out.setdefault(f"\0{job}", None)  # keeps the position of the array
        else:
            out[j] = None
    result = []
    for key in out:
        if not key.startswith("\0"):
            result.append(key)
            continue
        job = key[1:]
        numbers = sorted(set(tasks[job]))
        start = prev = numbers[0]
        for t in [*numbers[1:], None]:
            if t is not None and t == prev + 1:
                prev = t
                continue
            result.append(f"{job}.{start}" if start == prev else f"{job}.{start}-{prev}")
            if t is not None:
                start = prev = t
    return result


class GridEngine(CommandScheduler):
    """Submit jobs to a Grid Engine cluster (SGE, Son of Grid Engine, Altair) with ``qsub``.

    Every job runs a fixed POSIX ``sh`` job script shipped with psyrun
    (``gridengine_launcher.sh``) that executes the job's argv unchanged
    (arguments with spaces, quotes, ``;`` or ``$()`` arrive literally). Jobs
    start in the directory of submission (``-cwd``) with the submitting
    environment (``-V``), so the interpreter given as the first element of
    the command is the one used. Array jobs are ``qsub -t 1-N``: Grid Engine
    numbers tasks from 1, the job script hands task ``k`` the psyrun index
    ``k - 1`` (``%a``), and the ids returned are ``'<job>.<k>'``.

    Dependencies are ``-hold_jid``. Grid Engine starts a held job when its
    parents have *ended*, however they ended; to give psyrun's "after
    success" meaning, the job script exits with status 100 when the command
    fails, which keeps the failed job in the error state ``Eqw``, and its
    dependents wait. Such a failed job is reported FAILED (it no longer
    counts as held) and stays listed by ``qstat`` until it is deleted
    (``psy kill`` or ``qdel``); a job held on it is BLOCKED (it will never
    start by itself: ``psy run -c`` cancels and replaces it). A dependency
    on some tasks of an array waits for the whole array (``-hold_jid`` names
    jobs, not tasks). A job deleted with ``qdel`` counts as ended: Grid
    Engine then releases the jobs held on it, which find its rows missing.

    Scheduler arguments (``scheduler_args`` of a task), each a fixed value or
    a function called with the job name:

    ``timelimit`` (``-l h_rt=``; sbatch's formats, or ``'15m'``, ``'1h30m'``),
    ``memory`` (per job: ``-l h_vmem=`` of memory / n_cpus per slot),
    ``memory_per_cpu`` (``-l h_vmem=`` per slot), ``n_cpus``
    (``-pe smp N``, left out for 1), ``n_nodes`` (only 1), ``queue`` (``-q``),
    ``resources`` (other ``-l`` requests, e.g. ``{'gpu': 1}``),
    ``max_running`` (``-tc``: the most tasks of one array that run at once),
    ``qsub_args``: any other qsub options, as a list of arguments
    (``['-P', 'myproject']``) or a dict (``{'P': 'myproject', 'R': 'y'}``;
    a value of True gives a bare flag, None or False leaves it out).

    Arrays with more tasks than the cluster's ``max_aj_tasks`` (read once with
    ``qconf -sconf``) are submitted as several arrays. Statuses come from one
    ``qstat -xml -r`` call, cached until :meth:`refresh`; kills are ``qdel``
    calls with the tasks of an array compacted into ranges.

    Parameters
    ----------
    workdir
        Accepted for compatibility with psyrun 0.8 task files; not needed.
    user
        Whose jobs ``qstat`` lists (default: the current user).
    memory_resource
        The ``-l`` resource that ``memory`` and ``memory_per_cpu`` request
        (``'h_vmem'``: a hard limit on most clusters; some use ``'mem_free'``
        or ``'h_rss'``, or a consumable like ``'m_mem_free'``).
    parallel_environment
        The parallel environment of ``n_cpus`` (``qconf -spl`` lists them).
    shell
        The shell that runs the job script (``-S``); any POSIX ``sh``.
    max_array_size
        Override the cluster's ``max_aj_tasks`` (mainly for tests).
    """

    supports_arrays = True
    USER_DEFAULT_ARGS = {"timelimit": "1:00:00", "n_cpus": 1, "memory_per_cpu": "2G"}
    tags_in_names = True
    release_command = ("qrls",)

    submit_program = "qsub"
    id_style = "sge"
    id_label = "a Grid Engine job id"
    first_task_index = 1
    kill_batch = _QDEL_BATCH
    OPTIONS: Mapping[str, str] = {}
    EXTRA_ARGS = GRIDENGINE_ARGS
    passthrough_arg = "qsub_args"
    passthrough_example = {"P": "myproject"}
    default_max_array_size = DEFAULT_MAX_ARRAY_TASKS

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        user: str | None = None,
        memory_resource: str = "h_vmem",
        parallel_environment: str = "smp",
        shell: str = "/bin/sh",
        max_array_size: int | None = None,
    ) -> None:
        super().__init__(workdir, user=user, max_array_size=max_array_size)
        self.memory_resource = memory_resource
        self.parallel_environment = parallel_environment
        self.shell = shell

    # -- the qsub command -------------------------------------------------------

    #: Translate `scheduler_args` for the job `name` into qsub arguments (name included).
    qsub_options = CommandScheduler.named_options

    def fixed_options(self) -> list[str]:
        """``-terse`` (print the id only), ``-cwd``, ``-V`` and ``-S <shell>``."""
        return ["-terse", "-cwd", "-V", "-S", self.shell]

    def name_options(self, name: str | None, chunk: ArrayChunk | None = None) -> list[str]:
        """``-N NAME`` (see :func:`job_name`)."""
        return [] if name is None else ["-N", job_name(name)]

    def listed_name(self, name: str) -> str:
        """Return `name` as qstat lists it (see :func:`job_name`)."""
        return job_name(name)

    def resource_options(self, values: Mapping[str, Any]) -> list[str]:
        """``-l h_rt=``, ``-l <memory_resource>=``, ``-pe``, ``-q``, ``-l`` for `resources`."""
        options: list[str] = []
        if "timelimit" in values:
            options += ["-l", f"h_rt={format_time(values['timelimit'])}"]
        n_cpus = values.get("n_cpus", 1)
        if isinstance(n_cpus, bool) or not isinstance(n_cpus, int) or n_cpus < 1:
            raise ValueError(f"n_cpus must be a positive integer, got {n_cpus!r}")
        if "memory" in values and "memory_per_cpu" in values:
            raise ValueError("give memory (per job) or memory_per_cpu (per slot), not both")
        if "memory" in values:
            per_slot = math.ceil(memory_bytes(values["memory"]) / n_cpus)
            options += ["-l", f"{self.memory_resource}={format_memory(per_slot)}"]
        elif "memory_per_cpu" in values:
            size = format_memory(memory_bytes(values["memory_per_cpu"]))
            options += ["-l", f"{self.memory_resource}={size}"]
        if n_cpus > 1:
            options += ["-pe", self.parallel_environment, str(n_cpus)]
        n_nodes = values.get("n_nodes", 1)
        if n_nodes != 1:
            raise ValueError(
                f"GridEngine runs a job on one node (n_nodes=1), got n_nodes={n_nodes!r}; "
                "for jobs across nodes pass a parallel environment with qsub_args, "
                "e.g. {'qsub_args': ['-pe', 'mpi', '64']}"
            )
        if "queue" in values:
            options += ["-q", str(values["queue"])]
        extra = values.get("resources")
        if extra is not None:
            if not isinstance(extra, Mapping):
                raise TypeError(f"resources must be a dict such as {{'gpu': 1}}, got {extra!r}")
            for key, value in extra.items():
                options += ["-l", f"{key}={value}"]
        return options

    def array_options(self, chunk: ArrayChunk) -> list[str]:
        """``-t 1-count`` and ``-tc throttle``."""
        options = ["-t", f"1-{chunk.count}"]
        if chunk.throttle is not None:
            options += ["-tc", str(chunk.throttle)]
        return options

    def dependency_options(self, deps: list[JobId]) -> list[str]:
        """``-hold_jid JOB,JOB...`` (a task stands for its whole array)."""
        jobs = list(dict.fromkeys(d.job for d in deps))
        return ["-hold_jid", ",".join(jobs)] if jobs else []

    supports_after_any = True

    def after_any_options(self, deps: list[JobId]) -> list[str]:
        """``-hold_jid`` as for :meth:`dependency_options`.

        A held job starts when its parents end, also when Grid Engine killed
        them (``h_rt``, ``h_vmem``); jobs of automatic rounds exit with status 0
        when they fail (their marker says how), so no parent stays in ``Eqw``.
        """
        return self.dependency_options(deps)

    def output_options(self, output: str, chunk: ArrayChunk | None) -> list[str]:
        """``-j y -o FILE``; the job script opens the file itself when qsub cannot name it."""
        target = output if _qsub_can_name(output, chunk) else "/dev/null"
        return ["-j", "y", "-o", target]

    def job_command(self, argv: list[str], output: str, chunk: ArrayChunk | None) -> list[str]:
        """Run the job script with the mode (``single`` or the array offset) and the argv."""
        own_output = "" if _qsub_can_name(output, chunk) else output
        mode = "single" if chunk is None else str(chunk.offset)
        return [launcher_path(), mode, own_output, "--", *argv]

    def parse_submit_output(self, stdout: str) -> str | None:
        """Read ``<id>`` or, for arrays, ``<id>.1-N:1`` (``-terse``)."""
        first = stdout.strip().splitlines()[0].strip() if stdout.strip() else ""
        jobid = first.split(".", 1)[0]
        return jobid if jobid.isdigit() else None

    def array_limit_command(self) -> list[str]:
        """``qconf -sconf`` (read once by :meth:`max_array_size`)."""
        return ["qconf", "-sconf"]

    def parse_array_limit(self, stdout: str) -> int | None:
        """See :func:`parse_max_aj_tasks` (0, "no limit", gives the default size)."""
        return parse_max_aj_tasks(stdout)

    # -- status and kill ------------------------------------------------------

    def status_command(self) -> list[str]:
        """``qstat -xml -r -u USER``: states, full names and ``-hold_jid`` parents."""
        return ["qstat", "-xml", "-r", "-u", self.user or current_user()]

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """See :func:`parse_qstat_xml`."""
        return parse_qstat_xml(stdout)

    def kill_command(self, jobids: list[str]) -> list[str]:
        """``qdel ID...`` with the tasks of each array written as ranges (``4.1-3``)."""
        return ["qdel", *compact_task_ids(jobids)]

    def kill_error_ignorable(self, proc: subprocess.CompletedProcess[str]) -> bool:
        """Tell whether qdel complained only about jobs or tasks that no longer exist."""
        lines = [
            line
            for line in f"{proc.stdout}\n{proc.stderr}".splitlines()
            if line.strip() and "has deleted" not in line and "has registered" not in line
        ]
        return bool(lines) and all("does not exist" in line for line in lines)


def _qsub_can_name(output: str, chunk: ArrayChunk | None) -> bool:
    """Tell whether ``qsub -o`` can name `output` literally.

    Never for arrays (Grid Engine's ``$TASK_ID`` counts from 1, psyrun's
    index from 0); never when the name holds ``$`` (Grid Engine expands
    ``$JOB_ID`` and the like) or ``:`` (``host:path``).
    """
    return chunk is None and "$" not in output and ":" not in output


__all__ = [
    "DEFAULT_MAX_ARRAY_TASKS",
    "GRIDENGINE_ARGS",
    "GridEngine",
    "compact_task_ids",
    "expand_tasks",
    "format_time",
    "job_name",
    "memory_bytes",
    "parse_max_aj_tasks",
    "parse_qstat_xml",
    "state_of",
]
