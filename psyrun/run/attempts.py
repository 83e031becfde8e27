"""Automatic rounds of a run, and why the jobs of a round did not finish.

With the task setting ``max_attempts = N`` (N > 1) a run does not stop at the
first round of jobs. When a round's jobs are gone, the rows still missing
(counted from the result and the parts, as ``psy run -c`` counts them) are
the next round's work, whatever happened to the jobs: a time limit, too
little memory, a node that died, a cancel, a job that ended "partial". At
most N rounds run in all.

Where the next round is started:

* Batch systems (Slurm, Grid Engine, LSF): the round's merge job waits for
  the process jobs however they end (``afterany``), merges what they wrote
  and then, in :mod:`psyrun.worker`, calls :func:`continue_after_merge`,
  which submits the next round from inside the cluster. No ``psy`` process
  needs to stay alive.
* Attached schedulers (ImmediateRun, LocalPool, Dask): the waiting
  ``psy run`` calls :func:`run_more_rounds` in a loop.

Each failed job of a round is classified (:class:`Cause`) from the batch
system's own record where it has one (:func:`parse_sacct`,
:func:`parse_scontrol_jobs`, :func:`parse_qacct`) and from the job's own
marker otherwise (:func:`cause_from_marker`). The next round asks for what
the cause calls for (:func:`next_factors`, :func:`escalated_args`): more
time after a time limit, more memory after running out of it, the same
after a node failure; a round whose jobs failed only because ``execute``
raised ends the chain unless ``retry_errors = True``.

``psy kill`` stops the chain in two ways that together leave no gap: it
writes the stop marker ``jobs/stop`` (:func:`request_stop`) before it
cancels the jobs it finds. The merge job checks the marker before it
submits each job of the next round (after recording that round's run tag,
so that ``psy kill`` finds what it submitted), and every job of a round
checks it when it starts (a job that slipped through does nothing).

The round of each job is in its job description (``attempt``) and in the
environment variable :data:`ATTEMPT_VARIABLE` while it runs; the chain's
state is ``jobs/rounds.json`` (:class:`RoundState`), which ``psy status``
shows.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from psyrun.results.records import ATTEMPT_ENV

__all__ = [
    "ATTEMPT_VARIABLE",
    "Cause",
    "JobCause",
    "RoundDecision",
    "RoundState",
    "begin_chain",
    "cause_from_marker",
    "chain_warning",
    "check_attempt_settings",
    "continue_after_merge",
    "decide",
    "escalated_args",
    "job_causes",
    "next_factors",
    "parse_qacct",
    "parse_sacct",
    "parse_scontrol_jobs",
    "record_chain_start",
    "request_stop",
    "round_notes",
    "run_more_rounds",
    "stop_requested",
]

#: The environment variable holding a job's round (1, 2, ...) while it runs; the
#: records (``psy_attempt``) read the same one.
ATTEMPT_VARIABLE = ATTEMPT_ENV

#: Pauses (seconds) between asks for an accounting record not written yet.
RECORD_WAITS = (0.5, 1.0, 2.0, 4.0, 0.0)

#: Escalation factors when the task gives none.
DEFAULT_ESCALATE = {"timelimit": 2, "memory": 2}


class Cause(str, enum.Enum):
    """Why a job did not finish its rows."""

    #: Killed at its time limit.
    TIMELIMIT = "timelimit"
    #: Killed for its memory, or ``MemoryError``.
    MEMORY = "memory"
    #: The node failed, or the job was preempted.
    NODE = "node"
    #: ``execute`` (or the job's own code) raised an exception.
    ERROR = "error"
    #: Cancelled (``scancel``, ``qdel``) by someone other than ``psy kill``.
    CANCELLED = "cancelled"
    #: Anything else: a crash, a signal, no record.
    OTHER = "other"

    def __str__(self) -> str:
        return self.value

    @property
    def words(self) -> str:
        """The cause for messages."""
        return _WORDS[self]


_WORDS = {
    Cause.TIMELIMIT: "hit the time limit",
    Cause.MEMORY: "ran out of memory",
    Cause.NODE: "lost its node (node failure or preemption)",
    Cause.ERROR: "raised an exception",
    Cause.CANCELLED: "was cancelled",
    Cause.OTHER: "ended otherwise (crash, signal, no record)",
}


@dataclass
class JobCause:
    """One job of a round that did not finish: its name, id, cause and what said so."""

    name: str
    jobid: str
    cause: Cause
    detail: str = ""


# -- settings -------------------------------------------------------------------


def check_attempt_settings(config) -> None:
    """Check ``max_attempts``, ``escalate``, ``escalate_cap`` and ``retry_errors`` of a task.

    Raises
    ------
    ValueError, TypeError
        With a message naming the setting and what it takes.
    """
    n = config.max_attempts
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"max_attempts must be a positive integer, got {n!r}")
    esc = config.escalate
    if not isinstance(esc, Mapping):
        raise TypeError(f"escalate must be a dict such as {DEFAULT_ESCALATE!r}, got {esc!r}")
    for key, value in esc.items():
        if key not in DEFAULT_ESCALATE:
            raise ValueError(
                f"escalate has the unknown key {key!r}; it takes 'timelimit' and 'memory'"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
            raise ValueError(f"escalate[{key!r}] must be a number >= 1, got {value!r}")
    cap = config.escalate_cap
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap < 1:
        raise ValueError(f"escalate_cap must be a number >= 1, got {cap!r}")
    if not isinstance(config.retry_errors, bool):
        raise TypeError(f"retry_errors must be True or False, got {config.retry_errors!r}")


# -- the chain's files ----------------------------------------------------------


def rounds_file(paths) -> str:
    """Return the file holding the chain's :class:`RoundState`."""
    return os.path.join(paths.jobs_dir, "rounds.json")


def stop_file(paths) -> str:
    """Return the stop marker that ``psy kill`` writes."""
    return os.path.join(paths.jobs_dir, "stop")


def request_stop(paths) -> bool:
    """Write the stop marker (synced) so that no further round starts; False without a work dir.

    Called by ``psy kill`` before it cancels jobs.
    """
    from psyrun.atomic import atomic_write

    if not os.path.isdir(paths.jobs_dir):
        return False
    with atomic_write(stop_file(paths)) as f:
        f.write(f"stop requested by pid {os.getpid()}\n")
    return True


def stop_requested(paths) -> bool:
    """Whether ``psy kill`` asked the chain to stop."""
    return os.path.exists(stop_file(paths))


@dataclass
class RoundState:
    """The chain of rounds of the current run (``jobs/rounds.json``).

    Attributes
    ----------
    attempt : int
        The round running now (or the last one), from 1.
    max_attempts : int
        The most rounds the chain may take.
    factors : dict
        Escalation factors of the current round (``{'timelimit': 2.0}``).
    history : list of dict
        One entry per ended round: ``attempt``, ``missing`` (rows missing
        after it), ``causes`` (cause -> number of jobs) and ``next`` (what
        happened then, in words).
    stale : bool
        Later rounds also evaluate again rows of another version of the
        task's code (``psy run -c --stale``): the run started as ``psy run``
        (every row by the current code) or ``psy run -c --stale``.
    """

    attempt: int = 1
    max_attempts: int = 1
    factors: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    stale: bool = False

    @classmethod
    def load(cls, paths) -> RoundState | None:
        """Read the state; None when there is none (or it cannot be read)."""
        try:
            with open(rounds_file(paths), encoding="utf-8") as f:
                data = json.load(f)
            return cls(
                int(data["attempt"]),
                int(data["max_attempts"]),
                {str(k): float(v) for k, v in dict(data.get("factors", {})).items()},
                list(data.get("history", [])),
                bool(data.get("stale", False)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, paths) -> None:
        """Write the state (replacing the old file whole)."""
        from psyrun.atomic import atomic_write

        with atomic_write(rounds_file(paths)) as f:
            json.dump(asdict(self), f)


def begin_chain(backend) -> None:
    """Have the job descriptions of the plan ``psy run`` makes carry round 1.

    A task with ``max_attempts = 1`` gets ``attempt = 1`` in its descriptions
    and nothing else. Call :func:`record_chain_start` once the plan is known
    to run.
    """
    backend.job_fields = {"attempt": 1, "max_attempts": backend.task.max_attempts}


def record_chain_start(backend, stale: bool = False) -> None:
    """Record round 1 of a run about to be submitted; call under the task lock.

    Clears the stop marker of an earlier ``psy kill`` (this run is a new
    series of rounds) and writes a fresh :class:`RoundState`; `stale`: see
    :attr:`RoundState.stale`.
    """
    n = backend.task.max_attempts
    with contextlib.suppress(FileNotFoundError):
        os.remove(stop_file(backend.paths))
    if n > 1:
        backend.paths.make_root()
        RoundState(1, n, stale=stale).save(backend.paths)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(rounds_file(backend.paths))


def chain_warning(task, scheduler) -> str | None:
    """Say why `scheduler` cannot chain rounds by itself (None: it can, or no rounds asked)."""
    if task.max_attempts <= 1 or getattr(scheduler, "attached", False):
        return None
    if getattr(scheduler, "supports_after_any", False):
        return None
    return (
        f"max_attempts = {task.max_attempts}, but {type(scheduler).__name__} cannot start a job "
        "after jobs that failed, so a round whose jobs fail or are killed starts no next "
        f"round; `psy run -c {task.name}` continues after it"
    )


# -- the batch systems' records ---------------------------------------------------

# Slurm job states (sacct State, scontrol JobState) and the cause they say.
_SLURM_STATES = {
    "TIMEOUT": Cause.TIMELIMIT,
    "DEADLINE": Cause.TIMELIMIT,
    "OUT_OF_MEMORY": Cause.MEMORY,
    "NODE_FAIL": Cause.NODE,
    "PREEMPTED": Cause.NODE,
    "BOOT_FAIL": Cause.NODE,
    "CANCELLED": Cause.CANCELLED,
    "FAILED": Cause.OTHER,
}
# When a job's steps say different things, the most specific wins.
_PRIORITY = [Cause.MEMORY, Cause.TIMELIMIT, Cause.NODE, Cause.CANCELLED, Cause.ERROR, Cause.OTHER]


def _stronger(a: Cause | None, b: Cause | None) -> Cause | None:
    if a is None or b is None:
        return a or b
    return a if _PRIORITY.index(a) <= _PRIORITY.index(b) else b


def parse_sacct(output: str) -> dict[str, tuple[Cause | None, str]]:
    """Read ``sacct -n -P -o JobID,State,ExitCode,MaxRSS`` output: job id -> (cause, detail).

    The steps of a job (``123.batch``, ``123_4.extern``) count for the job;
    ``OUT_OF_MEMORY`` of a step beats ``FAILED`` of the job. A cause of
    ``None`` means the job completed.
    """
    out: dict[str, tuple[Cause | None, str]] = {}
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 3 or not fields[0]:
            continue
        jobid = fields[0].split(".", 1)[0]
        state = fields[1].split()[0] if fields[1].split() else ""
        cause = _SLURM_STATES.get(state)
        detail = f"sacct: {fields[1].strip()}, exit code {fields[2].strip()}"
        if len(fields) > 3 and fields[3].strip():
            detail += f", MaxRSS {fields[3].strip()}"
        old = out.get(jobid)
        if old is None or _stronger(cause, old[0]) is not old[0]:
            out[jobid] = (cause, detail)
    return out


def parse_scontrol_jobs(output: str) -> dict[str, tuple[Cause | None, str]]:
    """Read ``scontrol show job -o`` output (one job per line): job id -> (cause, detail).

    Slurm keeps a finished job here for ``MinJobAge`` seconds; it is the
    record there is where accounting (``sacct``) is not enabled. Array tasks
    are named ``<ArrayJobId>_<ArrayTaskId>``.
    """
    out: dict[str, tuple[Cause | None, str]] = {}
    for line in output.splitlines():
        values = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" not in values:
            continue
        jobid = values["JobId"]
        task = values.get("ArrayTaskId", "")
        if values.get("ArrayJobId") and task.isdigit():
            jobid = f"{values['ArrayJobId']}_{task}"
        state = values.get("JobState", "")
        cause = _SLURM_STATES.get(state)
        detail = (
            f"scontrol: JobState={state} Reason={values.get('Reason', '')} "
            f"ExitCode={values.get('ExitCode', '')}"
        )
        out[jobid] = (cause, detail)
    return out


def _size_bytes(text: str) -> float | None:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)B?\s*", text or "", re.IGNORECASE)
    if m is None:
        return None
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return float(m.group(1)) * scale[m.group(2).upper()]


def parse_qacct(output: str) -> dict[str, tuple[Cause | None, str]]:
    """Read ``qacct -j JOB`` output (one record per task): job id -> (cause, detail).

    Grid Engine writes ``failed 37 : qmaster enforced h_rt, h_cpu, or h_vmem
    limit`` with ``exit_status 137`` for a job it killed at a limit; the
    ``category`` (``-l h_rt=5,h_vmem=1G``) and ``maxvmem`` tell which limit.
    ``failed`` codes of the execution daemon (a job that could not start, a
    lost host) say the node failed. Array tasks are ``<job>.<task>``.
    """
    out: dict[str, tuple[Cause | None, str]] = {}
    for record in re.split(r"^=+\s*$", output, flags=re.MULTILINE):
        values: dict[str, str] = {}
        for line in record.splitlines():
            key, _, value = line.partition(" ")
            if key:
                values[key] = value.strip()
        number = values.get("jobnumber", "")
        if not number.isdigit():
            continue
        task = values.get("taskid", "undefined")
        jobid = number if not task.isdigit() else f"{number}.{task}"
        failed = values.get("failed", "0").split(":", 1)
        code = failed[0].strip()
        status = values.get("exit_status", "0").split()[0]
        category = values.get("category", "")
        limits = dict(re.findall(r"(h_rt|h_vmem|s_rt|h_cpu)=([^,\s]+)", category))
        detail = f"qacct: failed {values.get('failed', '0')}, exit_status {status}"
        cause: Cause | None = None
        maxvmem = _size_bytes(values.get("maxvmem", ""))
        limit = _size_bytes(limits.get("h_vmem", ""))
        near_memory = bool(maxvmem and limit and maxvmem >= 0.9 * limit)
        if code == "37" or status in ("137", "152"):
            if near_memory or ("h_vmem" in limits and "h_rt" not in limits):
                cause = Cause.MEMORY
            elif "h_rt" in limits or "s_rt" in limits or "h_cpu" in limits:
                cause = Cause.TIMELIMIT
            else:
                cause = Cause.OTHER
        elif code not in ("0", "100"):
            # Failures of the execution daemon: the job could not run on its host.
            cause = Cause.NODE
        elif status != "0":
            cause = Cause.MEMORY if near_memory else Cause.OTHER
        out[jobid] = (cause, detail)
    return out


def _batch_records(scheduler, jobids: list[str]) -> dict[str, tuple[Cause | None, str]]:
    """Ask the batch system how the jobs `jobids` ended (empty where it keeps no record)."""
    from psyrun.scheduler.command import CommandScheduler, JobId

    if not jobids or not isinstance(scheduler, CommandScheduler):
        return {}
    style = getattr(scheduler, "id_style", "")
    jobs = []
    for j in jobids:
        with contextlib.suppress(ValueError):
            jobs.append(JobId.parse(j, style).job)
    jobs = list(dict.fromkeys(jobs))
    if not jobs:
        return {}
    try:
        if style == "slurm":
            cmd = ["sacct", "-j", ",".join(jobs), "-n", "-P", "-o", "JobID,State,ExitCode,MaxRSS"]
            proc = scheduler.run(cmd)
            if proc.returncode == 0 and proc.stdout.strip():
                return parse_sacct(proc.stdout)
            # No accounting: the controller still knows jobs ended MinJobAge ago.
            found: dict[str, tuple[Cause | None, str]] = {}
            for job in jobs:
                proc = scheduler.run(["scontrol", "show", "job", "-o", job])
                if proc.returncode == 0:
                    found.update(parse_scontrol_jobs(proc.stdout))
            return found
        if style == "sge":
            found = {}
            for job in jobs:
                # qmaster writes the record a moment after it releases the
                # jobs held on this one: ask again for a few seconds.
                for delay in RECORD_WAITS:
                    proc = scheduler.run(["qacct", "-j", job])
                    if proc.returncode == 0:
                        found.update(parse_qacct(proc.stdout))
                        break
                    time.sleep(delay)
            return found
    except Exception:
        return {}  # a record is a help, not a need: the job's own marker decides then
    return {}


def cause_from_marker(text: str | None) -> Cause:
    """Classify a job from its own marker: ``status/<job>.failed`` text, None when it left none.

    A job that left no marker was killed or crashed (OTHER, unless the
    batch system's record says more).
    """
    if text is None:
        return Cause.OTHER
    if "MemoryError" in text:
        return Cause.MEMORY
    if "stopped by a signal" in text:
        return Cause.OTHER
    if "stopped by psy kill" in text:
        return Cause.CANCELLED
    return Cause.ERROR


def job_causes(backend, scheduler) -> list[JobCause]:
    """Classify every job of the last submission that did not finish (merge jobs excepted)."""
    paths = backend.paths
    merge = paths.job_name("merge")
    unfinished = []
    out_partial: list[JobCause] = []
    for name, jobid, _ in backend.submitted():
        if name == merge or os.path.exists(paths.status_file(name, "done")):
            continue
        if os.path.exists(paths.status_file(name, "partial")):
            # It stopped before its time limit (psyrun.run.walltime): its rows did not
            # fit, so the next round gets more time as after a time limit.
            out_partial.append(
                JobCause(name, jobid, Cause.TIMELIMIT, "partial: stopped before its time limit")
            )
            continue
        try:
            with open(paths.status_file(name, "failed"), encoding="utf-8") as f:
                marker: str | None = f.read().strip() or "failed"
        except OSError:
            marker = None
        unfinished.append((name, jobid, marker))
    records = _batch_records(scheduler, [j for _, j, _ in unfinished if j])
    out = []
    for name, jobid, marker in unfinished:
        cause = cause_from_marker(marker)
        detail = marker or "no marker: the job was killed or crashed"
        record = records.get(jobid)
        if record is not None and record[0] is not None:
            # The batch system knows best why it ended a job; an exception the
            # job itself reported stays an exception.
            if cause is not Cause.ERROR or record[0] in (Cause.TIMELIMIT, Cause.MEMORY):
                cause = record[0]
            detail = f"{record[1]}; {detail}"
        out.append(JobCause(name, jobid, cause, detail))
    return out_partial + out


# -- deciding and escalating --------------------------------------------------------


@dataclass
class RoundDecision:
    """Whether another round starts (`go`), why, and its escalation factors."""

    go: bool
    why: str
    factors: dict = field(default_factory=dict)


def summarize(causes: list[JobCause]) -> str:
    """``'2 jobs hit the time limit, 1 job raised an exception'``."""
    counts: dict[Cause, int] = {}
    for c in causes:
        counts[c.cause] = counts.get(c.cause, 0) + 1
    return ", ".join(
        f"{n} {'job' if n == 1 else 'jobs'} {cause.words}" for cause, n in counts.items()
    )


def next_factors(task, factors: Mapping[str, float], causes: list[JobCause]) -> dict:
    """Return the escalation factors of the next round after a round that ended with `causes`.

    After a time limit the ``timelimit`` factor grows by ``escalate['timelimit']``,
    after running out of memory the ``memory`` factor by ``escalate['memory']``;
    neither beyond ``escalate_cap``. Other causes keep the factors.
    """
    escalate = {**DEFAULT_ESCALATE, **dict(task.escalate)}
    new = dict(factors)
    seen = {c.cause for c in causes}
    for resource, cause in (("timelimit", Cause.TIMELIMIT), ("memory", Cause.MEMORY)):
        if cause in seen:
            grown = new.get(resource, 1.0) * float(escalate[resource])
            new[resource] = min(grown, float(task.escalate_cap))
    return new


def decide(
    task,
    attempt: int,
    missing: int,
    causes: list[JobCause],
    factors: Mapping,
    unmerged: bool = False,
) -> RoundDecision:
    """Decide whether round `attempt` + 1 starts, after round `attempt` left `missing` rows.

    `unmerged`: part files wait to be merged (the round's merge did not run);
    a round with no rows to evaluate merges them.
    """
    n = task.max_attempts
    if missing == 0 and unmerged and attempt < n:
        return RoundDecision(True, "every row is done; the parts wait to be merged", dict(factors))
    if missing == 0:
        return RoundDecision(
            False,
            "every row is done"
            + (f"; `psy run -c {task.name}` merges the parts" if unmerged else ""),
        )
    if attempt >= n:
        return RoundDecision(
            False,
            f"{missing} rows are still missing after {attempt} rounds (max_attempts = {n}); "
            f"`psy run -c {task.name}` continues",
        )
    retry = [c for c in causes if c.cause is not Cause.ERROR or task.retry_errors]
    if causes and not retry:
        return RoundDecision(
            False,
            f"{missing} rows are missing because execute raised ({summarize(causes)}); an "
            "exception is taken as deterministic (retry_errors = True retries it). Fix the "
            f"task, then `psy run -c {task.name}`",
        )
    why = summarize(causes) or "rows are missing"
    return RoundDecision(True, why, next_factors(task, factors, causes))


def _time_seconds(value: Any) -> float:
    from psyrun.scheduler.gridengine import format_time

    h, m, s = (int(x) for x in format_time(value).split(":"))
    return h * 3600 + m * 60 + s


def _scale_time(value: Any, factor: float) -> str:
    seconds = math.ceil(_time_seconds(value) * factor)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _scale_memory(value: Any, factor: float) -> str:
    from psyrun.scheduler.gridengine import format_memory, memory_bytes

    mib = 1 << 20
    return format_memory(math.ceil(memory_bytes(value) * factor / mib) * mib)


def escalated_args(scheduler_args: Mapping[str, Any], factors: Mapping[str, float]) -> dict:
    """Return `scheduler_args` with ``timelimit`` and ``memory``/``memory_per_cpu`` scaled.

    Values that are functions of the job name stay functions (of the scaled
    value). A time limit becomes ``H:MM:SS``, a memory size whole mebibytes
    (``'2G'``, ``'1536M'``); both forms every batch system here reads.
    """
    out = dict(scheduler_args)
    scalers: dict[str, tuple[str, Callable[[Any, float], str]]] = {
        "timelimit": ("timelimit", _scale_time),
        "memory": ("memory", _scale_memory),
        "memory_per_cpu": ("memory", _scale_memory),
    }
    for key, (resource, scale) in scalers.items():
        factor = float(factors.get(resource, 1.0))
        if key not in out or out[key] is None or factor == 1.0:
            continue
        value = out[key]
        if callable(value):
            out[key] = _scaled_call(value, scale, factor)
        else:
            out[key] = scale(value, factor)
    return out


def _scaled_call(value: Callable, scale: Callable[[Any, float], str], factor: float) -> Callable:
    def per_job(name):
        given = value(name)
        return None if given is None else scale(given, factor)

    return per_job


# -- running the rounds ----------------------------------------------------------------


def _missing(backend, state: RoundState) -> tuple[int, bool]:
    """Rows the next round must evaluate, and whether part files wait to be merged."""
    missing = len(backend.get_missing())
    if state.stale and hasattr(backend, "stale_rows"):
        missing += backend.stale_rows()
    return missing, bool(backend.paths.list_parts())


class RoundStopped(RuntimeError):
    """``psy kill`` asked the chain to stop while a round was being submitted."""


def _record_round(paths, state: RoundState, missing: int, causes, decision: RoundDecision) -> None:
    counts: dict[str, int] = {}
    for c in causes:
        counts[str(c.cause)] = counts.get(str(c.cause), 0) + 1
    state.history.append(
        {"attempt": state.attempt, "missing": missing, "causes": counts, "next": decision.why}
    )


def _submit_round(backend, scheduler, state: RoundState, on_start=None, on_submitted=None):
    """Plan and submit round ``state.attempt`` (already advanced); return the ids (or None)."""
    task = backend.task
    backend.job_fields = {"attempt": state.attempt, "max_attempts": state.max_attempts}
    # Only backends that record versions (psyrun.run.versions) take `stale`.
    stale = state.stale and "stale" in inspect.signature(backend.plan).parameters
    plan = backend.plan(True, stale=True) if stale else backend.plan(True)
    if plan.up_to_date:
        return None, plan
    base = dict(task.config.scheduler_args or {})
    task.config.scheduler_args = escalated_args(base, state.factors)

    def started(name: str) -> None:
        # After the round's run tag is on disk, before each job goes out.
        if stop_requested(backend.paths):
            raise RoundStopped(f"psy kill asked to stop; round {state.attempt} not submitted")
        if on_start is not None:
            on_start(name)

    try:
        ids = backend.submit(plan.graph, scheduler, on_start=started, on_submitted=on_submitted)
    finally:
        task.config.scheduler_args = base
    return ids, plan


def continue_after_merge(backend, scheduler, description: Mapping[str, Any], lock, log) -> None:
    """Start the next round from a merge job of a batch system (see the module docstring).

    Parameters
    ----------
    backend
        The task's backend, in the merge job.
    scheduler
        The task's scheduler (the one the round was submitted with).
    description
        The merge job's description (``attempt``, ``max_attempts``).
    lock
        :func:`psyrun.run.runner.task_lock` (given, so that this module does not
        import the runner).
    log
        Prints a line to the merge job's log.
    """
    n_max = int(description.get("max_attempts", 1))
    if n_max <= 1 or getattr(scheduler, "attached", False):
        # Under an attached scheduler (local, Dask) the waiting `psy run` runs
        # the rounds (run_more_rounds); deciding here too would record each round twice.
        return
    paths = backend.paths
    attempt = int(description.get("attempt", 1))
    state = RoundState.load(paths) or RoundState(attempt, n_max)
    if stop_requested(paths):
        log("psy kill asked to stop: no further round")
        return
    log(f"round {attempt} of at most {n_max} ended; asking how its jobs ended")
    causes = job_causes(backend, scheduler)
    for c in causes:
        log(f"round {attempt}: job {c.name} {c.cause.words} ({c.detail})")
    missing, unmerged = _missing(backend, state)
    decision = decide(backend.task, attempt, missing, causes, state.factors, unmerged)
    state.attempt = attempt
    _record_round(paths, state, missing, causes, decision)
    if not decision.go:
        state.save(paths)
        log(f"no further round: {decision.why}")
        return
    with lock(backend) as locked:
        if not locked:
            state.save(paths)
            log("another psy command holds the task's lock: no further round from here")
            return
        state.attempt = attempt + 1
        state.factors = decision.factors
        state.save(paths)
        log(
            f"round {attempt}: {missing} rows missing ({decision.why}); submitting round "
            f"{state.attempt} of at most {n_max}"
            + (f" with factors {state.factors}" if state.factors else "")
        )
        try:
            ids, _ = _submit_round(backend, scheduler, state)
        except RoundStopped as exc:
            log(str(exc))
            return
        log(f"round {state.attempt}: submitted {len(ids or {})} jobs")


def run_more_rounds(backend, scheduler, events, ids: dict, wait) -> dict:
    """Run further rounds under an attached ``psy run`` until done or out of attempts.

    `wait` waits for a round's jobs (the runner's call of the scheduler);
    returns the ids of the last round's jobs.
    """
    task = backend.task
    state = RoundState.load(backend.paths) or RoundState(1, task.max_attempts)
    while True:
        causes = job_causes(backend, scheduler)
        missing, unmerged = _missing(backend, state)
        decision = decide(task, state.attempt, missing, causes, state.factors, unmerged)
        _record_round(backend.paths, state, missing, causes, decision)
        if not decision.go:
            state.save(backend.paths)
            if state.attempt > 1 or missing:
                events.info(f"round {state.attempt}: {decision.why}")
            return ids
        state.attempt += 1
        state.factors = decision.factors
        state.save(backend.paths)
        events.info(
            f"round {state.attempt - 1} left {missing} rows ({decision.why}); round "
            f"{state.attempt} of at most {state.max_attempts} evaluates them"
        )
        new, _ = _submit_round(
            backend, scheduler, state, on_start=events.started, on_submitted=events.submitted
        )
        if new is None:
            return ids
        ids = new
        wait(list(ids.values()))


def round_notes(paths) -> list[str]:
    """Lines for ``psy status``: the round running (or the last one) and what the rounds met.

    Nothing for a run that ended in its first round with every row done.
    """
    state = RoundState.load(paths)
    if state is None or state.max_attempts <= 1:
        return []
    stopped = stop_requested(paths)
    ended = bool(state.history) and state.history[-1].get("attempt") == state.attempt
    if state.attempt == 1 and not stopped and ended and not state.history[-1].get("missing"):
        return []
    where = "ended in" if ended else "in"
    notes = [f"automatic rounds: {where} round {state.attempt} of at most {state.max_attempts}"]
    if state.factors:
        shown = ", ".join(f"{k} x{v:g}" for k, v in sorted(state.factors.items()))
        notes[0] += f" (resources {shown})"
    for entry in state.history:
        causes = ", ".join(f"{n} {c}" for c, n in sorted(entry.get("causes", {}).items()))
        notes.append(
            f"round {entry.get('attempt')}: {entry.get('missing')} rows missing after it"
            + (f" (jobs: {causes})" if causes else "")
            + f"; {entry.get('next')}"
        )
    if stopped:
        notes.append("psy kill stopped the rounds; `psy run -c` starts them again")
    return notes
