"""The scheduler interface: how psyrun hands a job to something that runs it.

This module holds the interface only; every scheduler lives in its own module
(:mod:`psyrun.scheduler.immediate`, :mod:`psyrun.scheduler.slurm`, ...;
the common layer of command-line schedulers is :mod:`psyrun.scheduler.command`).

A job is an argv list (never a shell string) plus the file its standard output
and standard error go to. A scheduler returns an opaque string id for every job
it accepts; ids are what dependencies, status queries and kills refer to.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

#: The token that stands for the array index in :meth:`Scheduler.submit_array`.
ARRAY_INDEX_TOKEN = "%a"


class SchedulerError(RuntimeError):
    """A scheduler command failed; the message quotes the command and its output."""


class JobState(str, enum.Enum):
    """What a scheduler knows about a job.

    The members compare equal to their lower-case string values, so they print
    and serialise readably; compare against the members, not the strings.
    """

    #: Waiting to start (for resources, for a dependency, held, ...).
    QUEUED = "queued"
    #: Started and not finished yet (includes "completing").
    RUNNING = "running"
    #: Waiting for a dependency that can never be satisfied (a parent failed):
    #: it will never run on its own. Kill and resubmit it to get it done.
    BLOCKED = "blocked"
    #: Finished with exit status 0.
    COMPLETED = "completed"
    #: Finished with a non-zero exit status, a signal, a time limit, ...
    FAILED = "failed"
    #: Cancelled before or while running.
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def coerce(cls, value: JobState | str) -> JobState:
        """Return the state `value` stands for.

        Accepts members, their string values (``'queued'``) and the status
        letters schedulers written for psyrun 0.8 return: ``'Q'``, ``'*Q'``
        (waiting for a dependency), ``'PD'`` queued; ``'R'``, ``'Z'``
        (suspended), ``'CG'`` running; ``'D'``, ``'CD'`` completed; ``'E'``,
        ``'F'`` failed; ``'C'``, ``'CA'`` cancelled. Anything else is taken
        as RUNNING, so a job in an unknown state is never submitted twice.
        """
        if isinstance(value, cls):
            return value
        text = str(value).strip()
        try:
            return cls(text.lower())
        except ValueError:
            return _LETTERS.get(text.upper(), cls.RUNNING)

    @property
    def in_queue(self) -> bool:
        """True while the scheduler still holds the job (queued, running or blocked)."""
        return self in (JobState.QUEUED, JobState.RUNNING, JobState.BLOCKED)

    @property
    def will_run(self) -> bool:
        """True when the job is running or will start without intervention."""
        return self in (JobState.QUEUED, JobState.RUNNING)


_LETTERS = {
    "Q": JobState.QUEUED,
    "*Q": JobState.QUEUED,
    "PD": JobState.QUEUED,
    "R": JobState.RUNNING,
    "Z": JobState.RUNNING,
    "CG": JobState.RUNNING,
    "D": JobState.COMPLETED,
    "CD": JobState.COMPLETED,
    "E": JobState.FAILED,
    "F": JobState.FAILED,
    "C": JobState.CANCELLED,
    "CA": JobState.CANCELLED,
}


class JobStatus(NamedTuple):
    """Status of one job: its ``id``, its ``status`` (a :class:`JobState`) and its ``name``.

    ``reason`` says what holds a waiting job up, in words a user can act on
    (e.g. ``'held (JobHeldUser)'``, ``'waits for a job that failed
    (DependencyNeverSatisfied)'``); ``None`` when the batch system says
    nothing worth showing. ``held`` is True for a job someone put on hold:
    it stays QUEUED (it is not replaced) but never starts until released.
    """

    id: str
    status: JobState
    name: str | None
    reason: str | None = None
    held: bool = False


def substitute_index(text: str, index: int) -> str:
    """Replace every ``%a`` in `text` by the array index `index`."""
    return text.replace(ARRAY_INDEX_TOKEN, str(index))


def normalize_dependencies(depends_on: str | Iterable[str] | None) -> list[str]:
    """Turn ``None``, one id or an iterable of ids into a list of id strings."""
    if depends_on is None:
        return []
    if isinstance(depends_on, str):
        return [depends_on]
    return [str(d) for d in depends_on]


def check_args(args: Sequence[str]) -> list[str]:
    """Check that a command is a non-empty argv list and return it as a list of str.

    Raises
    ------
    TypeError
        When `args` is a single string (a shell command line) or holds
        something other than strings and path-like objects.
    ValueError
        When `args` is empty.
    """
    if isinstance(args, (str, bytes)):
        raise TypeError(
            f"a job's command must be an argv list such as ['python', 'script.py'], "
            f"not a string: {args!r}"
        )
    import os

    argv = []
    for a in args:
        if not isinstance(a, (str, os.PathLike)):
            raise TypeError(
                f"every element of a job's command must be a string, got {a!r} in {list(args)!r}"
            )
        argv.append(os.fspath(a))
    if not argv:
        raise ValueError("a job's command is empty; give at least the program to run")
    return argv


def resolve_arg(value: Any | Callable[[str | None], Any], name: str | None) -> Any:
    """Return `value`, or ``value(name)`` when it is callable (per-job scheduler arguments)."""
    return value(name) if callable(value) else value


class Scheduler(abc.ABC):
    """Base class of every scheduler.

    Implement :meth:`submit`, :meth:`kill`, :meth:`get_status` and
    :meth:`get_jobs`. The other methods have working defaults built on those:

    - :meth:`submit_array` submits one job per index; a scheduler with native
      job arrays overrides it and sets :attr:`supports_arrays`.
    - :meth:`get_statuses` calls :meth:`get_status` once per id, and
      :meth:`kill_jobs` calls :meth:`kill` once per id; a scheduler whose
      commands are external programs should override them with one batched
      call (note for implementers: the defaults cost one call per job).
      :class:`psyrun.scheduler.command.CommandScheduler` does that for
      schedulers that drive command-line tools.
    - :meth:`wait`, :meth:`result` and :meth:`shutdown` do nothing: right for
      a detached scheduler (:attr:`attached` False). An attached scheduler
      (its jobs run under this process) overrides all three.

    Job ids are strings. :meth:`get_status` returns ``None`` for a job the
    scheduler does not hold (any more): finished, cancelled or unknown. For a
    held job it returns a :class:`JobStatus` whose state is QUEUED, RUNNING or
    BLOCKED (see :attr:`JobState.in_queue`).
    """

    #: True when :meth:`submit_array` submits a native job array (one
    #: submission for many jobs) instead of one job per index.
    supports_arrays: bool = False

    #: Scheduler arguments (with example values) that ``psy new-task
    #: --scheduler`` writes into a new task file. They must be accepted, as
    #: written, by the real system.
    USER_DEFAULT_ARGS: Mapping[str, Any] = {}

    #: True when the jobs run under this process and end with it (ImmediateRun,
    #: a local pool, Dask): ``psy run`` then calls :meth:`wait` after submitting
    #: and reports every job through :meth:`result`. False (detached: Slurm,
    #: ...): ``psy run`` returns after submitting and ``psy status`` follows the
    #: jobs later.
    attached: bool = False

    #: True when the jobs run on this machine; ``psy run -j N`` replaces only a
    #: local scheduler by a pool of N processes.
    local: bool = False

    #: Set by the runner: an attached scheduler calls it about every
    #: :attr:`monitor_interval` seconds while it waits for its jobs (to update a
    #: progress bar). Exceptions it raises propagate.
    monitor: Callable[[], None] | None = None

    #: Seconds between two calls of :attr:`monitor`.
    monitor_interval: float = 0.5
    #: Set by ``psy run``: an attached scheduler calls it with a warning for the
    #: user while it waits (for example that no worker is there to run the jobs).
    notify: Callable[[str], None] | None = None

    #: Set by the backend while it submits one run: a short unique tag that a
    #: scheduler able to (:meth:`find_run`) puts into the name every job has
    #: on the batch system, so that jobs whose id never reached psyrun (psy
    #: killed, or the submit command timing out, after the batch system
    #: accepted the job) can still be found. ``None``: no run is submitting.
    run_tag: str | None = None

    #: The command that releases held jobs (their ids follow), for messages;
    #: ``None`` when there is no such command.
    release_command: tuple[str, ...] | None = None

    # (The signatures below are kept compact: every scheduler repeats them.)
    @abc.abstractmethod
    def submit(
        self, args: Sequence[str], output_filename: str, name: str | None = None,
        depends_on: Iterable[str] | None = None, scheduler_args: Mapping[str, Any] | None = None,
    ) -> str:  # fmt: skip
        """Submit one job and return its id.

        Parameters
        ----------
        args
            The command as an argv list (never a shell string).
        output_filename
            File that receives the job's standard output and standard error.
        name
            Name of the job (shown by status queries; scheduler arguments that
            are callables are called with it).
        depends_on
            Ids of jobs that must complete successfully before this one starts.
        scheduler_args
            Scheduler-specific arguments (see each scheduler).

        Returns
        -------
        str
            The id of the submitted job.
        """

    def submit_array(
        self, n: int, args: Sequence[str], output_filename: str, name: str | None = None,
        depends_on: Iterable[str] | None = None, scheduler_args: Mapping[str, Any] | None = None,
    ) -> list[str]:  # fmt: skip
        """Submit `n` jobs that differ only in their index 0..n-1.

        The token ``%a`` in any element of `args` and in `output_filename`
        stands for the index. The default submits one job per index with
        :meth:`submit`, named ``<name>:<index>`` (so that per-job scheduler
        arguments and status queries see each job's own name, as in psyrun
        0.8).

        Returns
        -------
        list of str
            One id per index, in index order.
        """
        n = check_count(n)
        argv = check_args(args)
        deps = normalize_dependencies(depends_on)
        return [
            self.submit(
                [substitute_index(a, i) for a in argv],
                substitute_index(output_filename, i),
                name=None if name is None else f"{name}:{i}",
                depends_on=deps,
                scheduler_args=scheduler_args,
            )
            for i in range(n)
        ]

    @abc.abstractmethod
    def kill(self, jobid: str) -> None:
        """Cancel a job (queued or running). Unknown or finished ids are ignored."""

    def kill_jobs(self, jobids: Iterable[str]) -> None:
        """Cancel several jobs. The default calls :meth:`kill` once per id.

        Ids are handed back in the type :meth:`get_jobs` reports them in, so a
        scheduler written for psyrun 0.8 (integer ids) finds its jobs.
        """
        jobids = list(jobids)
        if not jobids:
            return
        held = {str(j): j for j in self.get_jobs()}
        for jobid in jobids:
            self.kill(held.get(str(jobid), jobid))

    @abc.abstractmethod
    def get_status(self, jobid: str) -> JobStatus | None:
        """Return the status of a held job, or ``None`` when finished or unknown."""

    def get_statuses(self, jobids: Iterable[str]) -> dict[str, JobStatus]:
        """Return the status of every held job among `jobids` (absent: finished/unknown).

        The default asks :meth:`get_status` once per id. It also serves
        schedulers written for psyrun 0.8: an id the scheduler does not know
        as a string is asked again as an integer, and status letters such as
        ``'Q'`` become :class:`JobState` members (see :meth:`JobState.coerce`).
        """
        result = {}
        for jobid in jobids:
            status = self.get_status(jobid)
            if status is None and isinstance(jobid, str) and jobid.lstrip("-").isdigit():
                status = self.get_status(int(jobid))
            if status is None:
                continue
            state = JobState.coerce(status.status)
            if state.in_queue:
                result[jobid] = JobStatus(str(jobid), state, status.name)
        return result

    @abc.abstractmethod
    def get_jobs(self) -> list[str]:
        """Return the ids of all jobs the scheduler holds for us (queued, running, blocked)."""

    def get_lingering(self, jobids: Iterable[str]) -> list[str]:
        """Return the ids among `jobids` of jobs that failed but are still listed.

        Grid Engine keeps a failed psyrun job in its error state ``Eqw`` until
        it is deleted, and runs it again if someone clears the error: such
        jobs are deleted by ``psy kill``, ``psy clean`` and before ``psy run``
        submits anew. The default: none.
        """
        return []

    def find_run(self, tag: str, jobs: Mapping[str, int | None]) -> list[JobStatus] | None:
        """Return the held jobs submitted while :attr:`run_tag` was `tag`.

        Parameters
        ----------
        tag
            The run's tag.
        jobs
            The run's jobs as submitted: job name -> number of array jobs
            (``None`` for a single job). Array jobs are named
            ``<name>:<index>`` in the answer.

        Returns
        -------
        list of JobStatus or None
            The jobs the scheduler lists for that run (held ones, and failed
            ones it still lists, see :meth:`get_lingering`), named as psyrun
            names them; ``None`` when this scheduler cannot find jobs by their
            run (the default).
        """
        return None

    def refresh(self) -> None:  # noqa: B027 - an optional hook, empty on purpose
        """Forget cached status information so that the next query asks again."""

    def wait(self, jobids: Iterable[str]) -> None:  # noqa: B027 - detached: nothing to wait for
        """Block until every job in `jobids` has ended (completed, failed, blocked, cancelled).

        The default returns at once, which is right for a detached scheduler.
        An attached one waits for its jobs, calls :attr:`monitor` while it
        waits, and on any exception (KeyboardInterrupt included) stops the jobs
        it started, marks them CANCELLED and re-raises.
        """

    def result(self, jobid: str) -> JobStatus | None:
        """Return how a job submitted by this instance ended, or ``None``.

        The state of an ended job is COMPLETED, FAILED, BLOCKED (not run because
        a dependency failed) or CANCELLED. ``None`` means unknown or not ended,
        and is what the default (and every detached scheduler) returns.
        """
        return None

    def shutdown(self, cancel: bool = False) -> None:  # noqa: B027 - nothing held by default
        """Release what the scheduler holds (processes, clients, clusters).

        Parameters
        ----------
        cancel
            First stop every job this instance started that still runs.
        """


def check_count(n: int) -> int:
    """Check the number of jobs of an array and return it as an int."""
    import operator

    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"the number of array jobs must be an integer, got {n!r}") from None
    if n < 0:
        raise ValueError(f"the number of array jobs must not be negative, got {n}")
    return n
