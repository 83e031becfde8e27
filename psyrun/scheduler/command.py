"""The common layer of schedulers that drive command-line tools (sbatch, qsub, bsub, ...).

:class:`CommandScheduler` is a template: a subclass names its programs and
supplies small hooks (the options for a job's name, output file, dependencies,
array range and resources; parsers for the submit and status output), and
inherits submission of single jobs and (split) arrays, one cached status query
per command, batched kills and id checks. :class:`JobId` reads and writes the
job ids of the batch systems (``'14'``, ``'14_3'``, ``'4.2'``, ``'123[4]'``,
``'123[4].server'``) so that no scheduler does string surgery on ids; ids
handed to and returned by the scheduler methods stay plain strings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from psyrun.scheduler.base import (
    JobState,
    JobStatus,
    Scheduler,
    SchedulerError,
    check_args,
    check_count,
    normalize_dependencies,
    resolve_arg,
)

#: Seconds before a scheduler command counts as hanging (a dead munged makes
#: Slurm's clients retry for about 49 s before failing).
COMMAND_TIMEOUT = 120.0


def run_command(
    argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `argv` (no shell) and return the completed process with text output.

    Parameters
    ----------
    argv
        The program and its arguments.
    timeout
        Seconds to wait for the program.
    input
        Text for the program's standard input (default: none, stdin is empty).

    Raises
    ------
    SchedulerError
        When the program is missing or does not finish within `timeout`.
    """
    argv = list(argv)
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise SchedulerError(
            f"cannot run {argv[0]!r}: not found on PATH. Is this a machine of the cluster, "
            f"with the scheduler's client commands installed?"
        ) from None
    except subprocess.TimeoutExpired as exc:
        # What it printed before it was stopped often says why (sbatch prints
        # "Slurm temporarily unable to accept job" while it retries).
        said = "\n".join(
            _text(s).strip() for s in (exc.stdout, exc.stderr) if s and _text(s).strip()
        )
        raise SchedulerError(
            f"{shlex.join(argv)} did not answer within {timeout:.0f} s; "
            "is the cluster's controller (and munge) running?"
            + (f"\nits output so far: {said}" if said else "")
        ) from None


def _text(data: str | bytes) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def command_error(what: str, argv: Sequence[str], proc: subprocess.CompletedProcess[str]) -> str:
    """Describe a failed command: what failed, its exit status, its output, the command line."""
    output = "\n".join(s.strip() for s in (proc.stdout, proc.stderr) if s and s.strip())
    return (
        f"{what} failed (exit status {proc.returncode}): {output or '(no output)'}\n"
        f"command: {shlex.join(list(argv))}"
    )


def current_user() -> str:
    """Return the name of the user running psyrun (the uid when there is none)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return str(os.getuid())


# How active a state is, most active first: an array's own entry takes the
# most active state among its tasks.
_ACTIVITY = {
    JobState.RUNNING: 0,
    JobState.QUEUED: 1,
    JobState.BLOCKED: 2,
    JobState.FAILED: 3,
    JobState.CANCELLED: 4,
    JobState.COMPLETED: 5,
}


def more_active(state: JobState, than: JobStatus | None) -> bool:
    """Tell whether `state` is more active than the status `than` (``None``: nothing yet).

    Running beats queued, then blocked, failed, cancelled and completed.
    """
    return than is None or _ACTIVITY[state] < _ACTIVITY[than.status]


# -- durations ----------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m(?:in)?)?\s*(?:(\d+)s)?\s*$")


def duration_seconds(value: Any) -> int | None:
    """Read a time limit written with units (``'1h'``, ``'30m'``, ``'1h30m'``, ``'2d'``).

    Returns the number of seconds, or ``None`` when `value` is not of that
    form (then it is meant in the batch system's own syntax and passed on).
    """
    if not isinstance(value, str):
        return None
    m = _DURATION_RE.match(value.lower())
    if m is None or not any(m.groups()):
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def hms(seconds: int) -> str:
    """Write `seconds` as ``H:MM:SS`` (hours may exceed 24)."""
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# -- job scripts for systems that read them on stdin (PBS, LSF) ---------------


def batch_launcher_path() -> str:
    """Return the path of the fixed script that PBS and LSF jobs run (``batch_launcher.sh``)."""
    from importlib import resources

    return str(resources.files("psyrun.scheduler").joinpath("batch_launcher.sh"))


def batch_script(
    argv: Sequence[str],
    output: str,
    chunk: ArrayChunk | None,
    index_variable: str,
    first_index: int = 0,
    directory: str | None = None,
) -> str:
    """Return the job script that runs `argv` with its output in `output`.

    The script changes to `directory` (default: the current one, as Slurm
    does) and hands the argv to the fixed ``batch_launcher.sh``, every word
    quoted for the shell, so that spaces, quotes, ``;`` or ``$()`` arrive
    unchanged. In an array task the launcher computes psyrun's index from
    `index_variable` (minus `first_index`, plus the chunk's offset) and puts
    it for ``%a``.
    """
    if chunk is None:
        mode = ["", "0", "0"]
    else:
        mode = [index_variable, str(first_index), str(chunk.offset)]
    words = ["/bin/bash", batch_launcher_path(), *mode, output, "--", *argv]
    return (
        "#!/bin/bash\n"
        "# Written by psyrun: runs one command through psyrun's batch_launcher.sh.\n"
        f"cd {shlex.quote(directory or os.getcwd())} || exit 1\n"
        f"exec {shlex.join(words)}\n"
    )


_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_job_name(name: str | None, default: str = "psyrun") -> str:
    """Return `name` with characters batch systems refuse in names replaced by ``_``.

    PBS and LSF arrays accept letters, digits, ``.``, ``-`` and ``_`` (and PBS a
    letter first), so ``task:process`` becomes ``task_process``.
    """
    text = _NAME_RE.sub("_", name or default)
    return text if text[:1].isalpha() else f"j{text}"


# -- job ids ----------------------------------------------------------------

# One pattern per way of writing ids: job number, task index, server suffix.
_ID_PATTERNS = {
    "plain": re.compile(r"^(?P<job>\d+)$"),
    "slurm": re.compile(r"^(?P<job>\d+)(?:_(?P<task>\d+))?$"),
    "sge": re.compile(r"^(?P<job>\d+)(?:\.(?P<task>\d+))?$"),
    "pbs": re.compile(r"^(?P<job>\d+)(?:\[(?P<task>\d*)\])?(?P<server>(?:\.[\w.-]+)?)$"),
    "lsf": re.compile(r"^(?P<job>\d+)(?:\[(?P<task>\d+)\])?$"),
}


@dataclasses.dataclass(frozen=True)
class JobId:
    """A batch system's job id, read into its parts.

    ``str(JobId.parse(text, style)) == text`` for every id of that style:

    ========= ================== =================================================
    style     examples           meaning
    ========= ================== =================================================
    ``plain`` ``'14'``           a job number, no arrays (sqsub)
    ``slurm`` ``'14'``, ``'14_3'`` job, or task 3 of array 14
    ``sge``   ``'4'``, ``'4.2'``   job, or task 2 of array job 4 (Grid Engine)
    ``pbs``   ``'7.srv'``, ``'7[].srv'``, ``'7[3].srv'``  job, whole array, subjob
    ``lsf``   ``'9'``, ``'9[3]'``  job (or whole array), array element 3
    ========= ================== =================================================

    Attributes
    ----------
    job
        The job (or array) number, as a string of digits.
    task
        The index of the array task, or ``None`` for a job or a whole array.
    style
        How the id is written (the keys of the table above).
    server
        PBS only: the ``.server`` suffix, with its dot (may be empty).
    whole_array
        PBS only: the id names a whole array (written with empty brackets).
    """

    job: str
    task: int | None = None
    style: str = "slurm"
    server: str = ""
    whole_array: bool = False

    @classmethod
    def parse(cls, text: str, style: str = "slurm") -> JobId:
        """Read `text` as a job id of `style`.

        Raises
        ------
        ValueError
            When `text` is not a job id of that style (a range such as
            ``'123_[1-4]'``, a name, ...).
        """
        pattern = _ID_PATTERNS.get(style)
        if pattern is None:
            raise ValueError(f"unknown job id style {style!r}; one of {', '.join(_ID_PATTERNS)}")
        m = pattern.match(str(text).strip())
        if m is None:
            raise ValueError(f"not a {style} job id: {text!r}")
        parts = m.groupdict()
        task = parts.get("task")
        return cls(
            job=parts["job"],
            task=int(task) if task else None,
            style=style,
            server=parts.get("server") or "",
            whole_array=task == "",
        )

    def __str__(self) -> str:
        if self.style == "pbs":
            brackets = "[]" if self.whole_array else "" if self.task is None else f"[{self.task}]"
            return f"{self.job}{brackets}{self.server}"
        if self.task is None:
            return self.job
        return {"slurm": "{}_{}", "sge": "{}.{}", "lsf": "{}[{}]"}[self.style].format(
            self.job, self.task
        )

    @property
    def array(self) -> JobId:
        """The id of the whole array this task belongs to (itself for a plain job)."""
        return dataclasses.replace(self, task=None, whole_array=self.style == "pbs")

    def at(self, task: int) -> JobId:
        """Return the id of task `task` of the array this id names."""
        return dataclasses.replace(self, task=task, whole_array=False)


class ArrayChunk(NamedTuple):
    """One submission of a job array: ``count`` tasks for the indices ``offset...``.

    ``throttle`` is the most tasks that may run at once (``None``: no limit).
    """

    offset: int
    count: int
    throttle: int | None


# -- the scheduler template ---------------------------------------------------


class CommandScheduler(Scheduler):
    """Base class of schedulers that submit, query and cancel with command-line tools.

    A subclass sets the class attributes below and implements
    :meth:`parse_submit_output`, :meth:`status_command`, :meth:`parse_status`
    and :meth:`kill_command`; the other hooks have defaults. Every command is
    an argv list (no shell), and a failing one raises :class:`SchedulerError`
    quoting the command and its output.

    The submit command is ``[submit_program, *groups]`` where the groups are
    taken in the order of :attr:`submit_layout` from the hooks
    :meth:`fixed_options` (``"fixed"``), :meth:`array_options` (``"array"``,
    arrays only), :meth:`name_options` (``"name"``), :meth:`resource_options`
    plus the pass-through options (``"resources"``),
    :meth:`dependency_options` (``"dependencies"``), :meth:`output_options`
    (``"output"``) and :meth:`job_command` (``"command"``). :meth:`job_script`
    may give a script for the submit program's standard input instead.

    Scheduler arguments are checked against :attr:`OPTIONS` and
    :attr:`EXTRA_ARGS`; each value is fixed or a function called with the job
    name (see :func:`psyrun.scheduler.base.resolve_arg`), ``None`` leaves it out.

    Status comes from one call of the status tool, cached until
    :meth:`refresh`; jobs this instance submits are added to the cache as
    queued.

    Parameters
    ----------
    workdir
        Accepted for compatibility with psyrun 0.8 task files (kept as
        :attr:`workdir`).
    user
        Whose jobs the status command lists (default: the current user).
    max_array_size
        The most tasks of one array submission; by default asked of the batch
        system (see :meth:`max_array_size`).
    """

    #: The program that submits jobs.
    submit_program: str = ""
    #: The style of the ids (see :class:`JobId`).
    id_style: str = "plain"
    #: The phrase for an id in messages, e.g. ``"a Slurm job id"``.
    id_label: str = "a job id"
    #: The order of the option groups in the submit command.
    submit_layout: tuple[str, ...] = (
        "fixed", "array", "name", "resources", "dependencies", "output", "command",
    )  # fmt: skip
    #: scheduler_args names and the option (or resource) each becomes.
    OPTIONS: Mapping[str, str] = {}
    #: scheduler_args names handled otherwise, with a one-line description.
    EXTRA_ARGS: Mapping[str, str] = {}
    #: scheduler_args names that must be given.
    REQUIRED_ARGS: tuple[str, ...] = ()
    #: Values used for scheduler_args names that are not given.
    DEFAULT_ARGS: Mapping[str, Any] = {}
    #: The scheduler_args name of the pass-through options (``None``: none).
    passthrough_arg: str | None = None
    #: An example value of the pass-through options, for messages.
    passthrough_example: Any = None
    #: Index of the first task of an array as the batch system counts.
    first_task_index: int = 0
    #: Smaller arrays go out as single jobs (PBS Pro refuses a one-task array).
    min_array_size: int = 1
    #: Ids per kill command (keeps argv well below ARG_MAX).
    kill_batch: int = 2000
    #: The array size used when :meth:`array_limit_command` gives no answer.
    default_max_array_size: int = 1 << 62
    #: True when every job's name on the batch system carries :attr:`run_tag`
    #: and the status command lists full names, so that :meth:`find_run` works.
    tags_in_names: bool = False
    #: True when :meth:`after_any_options` can make a job wait for jobs that ended
    #: however they ended (the merge job of automatic rounds, :mod:`psyrun.run.attempts`).
    supports_after_any: bool = False
    #: ``"ok"`` (after success) or ``"any"`` (after the end); set by
    #: :func:`psyrun.jobs.submit_graph` for one submission.
    dependency_kind: str = "ok"

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        user: str | None = None,
        max_array_size: int | None = None,
    ) -> None:
        # workdir: accepted for psyrun 0.8 task files (Sqsub keeps job names there).
        self.workdir = workdir
        #: Whose jobs the status command lists (None: the current user).
        self.user = user
        self._statuses: dict[str, JobStatus] | None = None
        # None: ask the batch system on first use (see max_array_size).
        self._max_array_size = max_array_size
        # Arrays submitted here: array id -> number of tasks (compact dependencies).
        self._array_sizes: dict[str, int] = {}

    def run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run one scheduler command (every command goes through here; see :func:`run_command`)."""
        return run_command(argv, input=input)

    # -- scheduler arguments -------------------------------------------------

    @property
    def valid_args(self) -> tuple[str, ...]:
        """All scheduler_args names this scheduler accepts."""
        return (*self.OPTIONS, *self.EXTRA_ARGS)

    def resolve_args(
        self, name: str | None, scheduler_args: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """Check `scheduler_args` and return their values for job `name` (``None`` dropped).

        Raises
        ------
        ValueError
            For an unknown name (the message lists the valid ones) or a missing
            required one.
        """
        label = type(self).__name__
        given = dict(scheduler_args or {})
        unknown = sorted(set(given) - set(self.valid_args))
        if unknown:
            message = (
                f"unknown {label} scheduler argument(s) {', '.join(map(repr, unknown))}; "
                f"valid ones are: {', '.join(self.valid_args)}"
            )
            if self.passthrough_arg is not None:
                example = {self.passthrough_arg: self.passthrough_example}
                message += (
                    f". Pass other {self.submit_program} options with "
                    f"{self.passthrough_arg!r}, e.g. {example!r}."
                )
            raise ValueError(message)
        missing = [k for k in self.REQUIRED_ARGS if given.get(k) is None]
        if missing:
            example = {k: self.USER_DEFAULT_ARGS.get(k) for k in self.REQUIRED_ARGS}
            raise ValueError(
                f"{label} needs the scheduler argument(s) {', '.join(map(repr, missing))} "
                f"(for example scheduler_args = {example!r})"
            )
        for key, value in self.DEFAULT_ARGS.items():
            given.setdefault(key, value)
        values = {}
        for key in self.valid_args:  # in a fixed order, whatever the user's order
            if key in given:
                value = resolve_arg(given[key], name)
                if value is not None:
                    values[key] = value
        return values

    def named_options(
        self, name: str | None, scheduler_args: Mapping[str, Any] | None
    ) -> list[str]:
        """Return the name options and :meth:`scheduler_options` of job `name`.

        Raises
        ------
        ValueError
            For an unknown argument name (the message lists the valid ones), a
            missing required one, or a value the batch system cannot express.
        """
        return [*self.name_options(name), *self.scheduler_options(name, scheduler_args)]

    def scheduler_options(
        self, name: str | None, scheduler_args: Mapping[str, Any] | None
    ) -> list[str]:
        """Return the resource and pass-through options for job `name`."""
        values = self.resolve_args(name, scheduler_args)
        options = self.resource_options(values)
        if self.passthrough_arg is not None:
            options.extend(self._passthrough(values.get(self.passthrough_arg)))
        return options

    def resource_options(self, values: Mapping[str, Any]) -> list[str]:
        """Turn resolved scheduler arguments into options; default ``[option, value]`` each."""
        options = []
        for key, option in self.OPTIONS.items():
            if key in values:
                options.extend([option, str(values[key])])
        return options

    def passthrough_option(self, key: str, value: Any) -> list[str]:
        """Turn one entry of the pass-through dict into options (default ``-key value``).

        ``True`` gives a bare flag; the caller drops ``None`` and ``False``.
        """
        flag = f"-{key}"
        return [flag] if value is True else [flag, str(value)]

    def _passthrough(self, extra: Any) -> list[str]:
        if extra is None:
            return []
        what = self.passthrough_arg
        if isinstance(extra, str):
            raise TypeError(
                f"{what} must be a list of arguments or a dict such as "
                f"{self.passthrough_example!r}, not a string: {extra!r}"
            )
        if isinstance(extra, Mapping):
            options = []
            for key, value in extra.items():
                key = str(key).lstrip("-")
                if not key:
                    raise ValueError(f"{what} has an empty option name")
                if value is None or value is False:
                    continue
                options.extend(self.passthrough_option(key, value))
            return options
        if isinstance(extra, Iterable):
            return [str(a) for a in extra]
        raise TypeError(f"{what} must be a list or a dict, got {extra!r}")

    def array_throttle(
        self, name: str | None, scheduler_args: Mapping[str, Any] | None
    ) -> int | None:
        """Return the checked ``max_running`` argument for job `name` (``None``: no limit)."""
        value = resolve_arg((scheduler_args or {}).get("max_running"), name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"max_running must be an integer, got {value!r}")
        if value < 1:
            raise ValueError(f"max_running must be at least 1, got {value}")
        return value

    # -- run tags ------------------------------------------------------------

    def tagged_name(self, name: str | None, tag: str | None = None, offset: int = 0) -> str | None:
        """Return the name job `name` gets on the batch system: with the run's tag, if any.

        ``'t:process'`` -> ``'t:process.1a2b3c4d'`` while :attr:`run_tag` (or
        `tag`) is ``'1a2b3c4d'`` and the scheduler has :attr:`tags_in_names`;
        the later arrays of a split array also carry their first index
        (``'t:process.1a2b3c4d+1001'``).
        """
        tag = tag or self.run_tag
        if name is None or not tag or not self.tags_in_names:
            return name
        return f"{name}.{tag}" + (f"+{offset}" if offset else "")

    def listed_name(self, name: str) -> str:
        """Return job name `name` as the status command lists it (default: unchanged)."""
        return name

    def find_run(self, tag: str, jobs: Mapping[str, int | None]) -> list[JobStatus] | None:
        """Return the held jobs of the run tagged `tag` (see :meth:`Scheduler.find_run`).

        One status query (the cached one) lists them by name; the tasks of an
        array learn their index from the task id and the array's first index
        (carried in the name of the later arrays of a split array).
        """
        if not self.tags_in_names or not tag:
            return None
        wanted: dict[str, tuple[str, int | None]] = {}
        for name, n in jobs.items():
            wanted[self.listed_name(self.tagged_name(name, tag))] = (name, n)
            # Schedulers without native arrays submit one job per index.
            for i in range(n or 0):
                indexed = f"{name}:{i}"
                listed = self.listed_name(self.tagged_name(indexed, tag))
                wanted.setdefault(listed, (indexed, None))
        found: list[JobStatus] = []
        for jobid, status in self.query().items():
            listed_state = status.status.in_queue or status.status is JobState.FAILED
            if not listed_state or status.name is None:
                continue
            listed, _, offset = status.name.rpartition("+")
            if status.name in wanted:
                listed, offset = status.name, "0"
            if listed not in wanted or not offset.isdigit():
                continue
            name, n = wanted[listed]
            try:
                jid = JobId.parse(jobid, self.id_style)
            except ValueError:
                continue
            if n is None and jid.task is None:
                found.append(status._replace(name=name))
            elif n is not None and jid.task is not None:
                index = int(offset) + jid.task - self.first_task_index
                found.append(status._replace(name=f"{name}:{index}"))
        return found

    # -- hooks of the submit command -----------------------------------------

    def fixed_options(self) -> list[str]:
        """Options every submission starts with (e.g. ``--parsable``)."""
        return []

    def name_options(self, name: str | None, chunk: ArrayChunk | None = None) -> list[str]:
        """Options that give the job (or the array of `chunk`) its name (none by default)."""
        return []

    def array_options(self, chunk: ArrayChunk) -> list[str]:
        """Options that make one submission an array of ``chunk.count`` tasks."""
        raise NotImplementedError(f"{type(self).__name__} has no job arrays")

    def dependency_options(self, deps: list[JobId]) -> list[str]:
        """Options that make the job wait for `deps` to succeed (whole arrays compacted)."""
        return []

    def _dependency_group(self, deps: list[JobId]) -> list[str]:
        if self.dependency_kind == "any":
            return self.after_any_options(deps)
        return self.dependency_options(deps)

    def after_any_options(self, deps: list[JobId]) -> list[str]:
        """Options that make the job wait for `deps` to end, however they end.

        Only where :attr:`supports_after_any` is True.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot wait for jobs that failed")

    def output_options(self, output: str, chunk: ArrayChunk | None) -> list[str]:
        """Options that send the job's output to `output` (``%a``: the index in arrays)."""
        return []

    def job_command(self, argv: list[str], output: str, chunk: ArrayChunk | None) -> list[str]:
        """Return the command part of the submit command (default: `argv` itself)."""
        return list(argv)

    def job_script(self, argv: list[str], output: str, chunk: ArrayChunk | None) -> str | None:
        """Return a job script for the submit program's stdin (default: none)."""
        return None

    def array_limit_command(self) -> list[str] | None:
        """Return the command that prints the largest array allowed (default: none to ask)."""
        return None

    def parse_array_limit(self, stdout: str) -> int | None:
        """Read the largest array allowed from that command's output (``None``: not said)."""
        return None

    def max_array_size(self) -> int:
        """Return the most tasks of one array submission (larger arrays are split).

        The size given to the constructor, else the answer of
        :meth:`array_limit_command` read with :meth:`parse_array_limit` (asked
        once), else :attr:`default_max_array_size` (also for an answer of 0 or
        a failing command).
        """
        if self._max_array_size is None:
            size = None
            cmd = self.array_limit_command()
            if cmd is not None:
                try:
                    proc = self.run(cmd)
                    if proc.returncode == 0:
                        size = self.parse_array_limit(proc.stdout)
                except SchedulerError:
                    size = None
            self._max_array_size = size if size and size > 0 else self.default_max_array_size
        return self._max_array_size

    def submit_command(
        self,
        argv: list[str],
        output: str,
        name: str | None,
        deps: list[str],
        scheduler_args: Mapping[str, Any] | None,
        chunk: ArrayChunk | None = None,
    ) -> list[str]:
        """Build the submit command of one job (`chunk` ``None``) or array submission."""
        groups = {
            "fixed": lambda: self.fixed_options(),
            "array": lambda: [] if chunk is None else self.array_options(chunk),
            "name": lambda: self.name_options(
                self.tagged_name(name, offset=0 if chunk is None else chunk.offset), chunk
            ),
            "resources": lambda: self.scheduler_options(name, scheduler_args),
            "dependencies": lambda: self._dependency_group(self.compact_dependencies(deps)),
            "output": lambda: self.output_options(output, chunk),
            "command": lambda: self.job_command(argv, output, chunk),
        }
        cmd = [self.submit_program]
        for group in self.submit_layout:
            cmd.extend(groups[group]())
        return cmd

    # -- submission ------------------------------------------------------------

    def submit(
        self, args: Sequence[str], output_filename: str, name: str | None = None,
        depends_on: Iterable[str] | None = None, scheduler_args: Mapping[str, Any] | None = None,
    ) -> str:  # fmt: skip
        """Submit one job and return its id (see :meth:`Scheduler.submit`)."""
        argv = check_args(args)
        output = str(output_filename)
        cmd = self.submit_command(
            argv, output, name, normalize_dependencies(depends_on), scheduler_args
        )
        jobid = self._run_submit(cmd, name, self.job_script(argv, output, None))
        self._remember(JobStatus(jobid, JobState.QUEUED, name))
        return jobid

    def submit_array(
        self, n: int, args: Sequence[str], output_filename: str, name: str | None = None,
        depends_on: Iterable[str] | None = None, scheduler_args: Mapping[str, Any] | None = None,
    ) -> list[str]:  # fmt: skip
        """Submit `n` jobs as native arrays; return one task id per index 0..n-1.

        More than :meth:`max_array_size` jobs go out as several arrays (each
        task learns its index from its array's offset). When one submission
        fails, the arrays already accepted are cancelled before the error is
        raised.
        """
        n = check_count(n)
        if not self.supports_arrays or n < self.min_array_size:
            return super().submit_array(n, args, output_filename, name, depends_on, scheduler_args)
        argv = check_args(args)
        if n == 0:
            return []
        throttle = self.array_throttle(name, scheduler_args)
        deps = normalize_dependencies(depends_on)
        output = str(output_filename)
        size = self.max_array_size()
        ids: list[str] = []
        arrays: list[str] = []
        for offset in range(0, n, size):
            chunk = ArrayChunk(offset, min(size, n - offset), throttle)
            cmd = self.submit_command(argv, output, name, deps, scheduler_args, chunk)
            try:
                jobid = self._run_submit(cmd, name, self.job_script(argv, output, chunk))
            except BaseException:
                # Arrays already accepted would run without their siblings, and
                # nobody would know their ids: cancel them before giving up.
                if arrays:
                    with contextlib.suppress(SchedulerError):
                        self.kill_jobs(arrays)
                raise
            array = JobId.parse(jobid, self.id_style).array
            arrays.append(str(array))
            self._array_sizes[str(array)] = chunk.count
            for i in range(chunk.count):
                task = str(array.at(self.first_task_index + i))
                ids.append(task)
                self._remember(JobStatus(task, JobState.QUEUED, name))
            self._remember(JobStatus(str(array), JobState.QUEUED, name))
        return ids

    def parse_submit_output(self, stdout: str) -> str | None:
        """Return the job id the submit program printed, or ``None`` if there is none."""
        raise NotImplementedError

    def submitted(self, jobid: str, name: str | None) -> None:
        """Note an accepted submission (a hook: e.g. to store the job's name)."""

    def _run_submit(self, cmd: list[str], name: str | None, script: str | None) -> str:
        proc = self.run(cmd, input=script)
        what = f"{self.submit_program} for job {name!r}"
        if proc.returncode != 0:
            raise SchedulerError(command_error(what, cmd, proc))
        jobid = self.parse_submit_output(proc.stdout or "")
        if jobid is None:
            raise SchedulerError(command_error(f"{what} printed no job id", cmd, proc))
        self.submitted(jobid, name)
        return jobid

    # -- ids ---------------------------------------------------------------

    def check_id(self, jobid: str, purpose: str = "") -> JobId:
        """Read `jobid` as one of our ids; a ValueError names it otherwise."""
        try:
            return JobId.parse(jobid, self.id_style)
        except ValueError:
            raise ValueError(f"not {self.id_label}{purpose}: {jobid!r}") from None

    def compact_dependencies(self, deps: Iterable[str]) -> list[JobId]:
        """Check `deps`; name whole arrays submitted here by their array id, drop repeats."""
        parsed = [self.check_id(d, " to depend on") for d in deps]
        tasks: dict[str, set[int]] = {}
        for jid in parsed:
            if jid.task is not None:
                tasks.setdefault(str(jid.array), set()).add(jid.task)
        out: dict[str, JobId] = {}
        for jid in parsed:
            array = str(jid.array)
            if jid.task is not None and len(tasks[array]) == self._array_sizes.get(array):
                jid = jid.array
            out.setdefault(str(jid), jid)
        return list(out.values())

    # -- status --------------------------------------------------------------

    def status_command(self) -> list[str]:
        """Return the command that lists our held jobs."""
        raise NotImplementedError

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """Parse the status command's output into statuses by job id."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Forget the cached status answer; the next status query asks again."""
        self._statuses = None

    def _remember(self, status: JobStatus) -> None:
        if self._statuses is not None:
            self._statuses[status.id] = status

    def query(self) -> dict[str, JobStatus]:
        """Return every job the status tool lists, from one call cached until :meth:`refresh`."""
        if self._statuses is None:
            cmd = self.status_command()
            proc = self.run(cmd)
            if proc.returncode != 0:
                raise SchedulerError(command_error(cmd[0], cmd, proc))
            self._statuses = self.parse_status(proc.stdout or "")
        return self._statuses

    def get_statuses(self, jobids: Iterable[str]) -> dict[str, JobStatus]:
        """Return the statuses of the held jobs among `jobids`, from one status call."""
        statuses = self.query()
        result = {}
        for jobid in map(str, jobids):
            status = statuses.get(jobid)
            if status is not None and status.status.in_queue:
                result[jobid] = status
        return result

    def get_status(self, jobid: str) -> JobStatus | None:
        """Return the status of a held job, ``None`` when finished or unknown."""
        return self.get_statuses([jobid]).get(str(jobid))

    def get_lingering(self, jobids: Iterable[str]) -> list[str]:
        """Return the ids among `jobids` the status tool lists as failed (see the base class)."""
        statuses = self.query()
        return [
            j for j in map(str, jobids) if j in statuses and statuses[j].status is JobState.FAILED
        ]

    def get_jobs(self) -> list[str]:
        """Return the ids of our held jobs (an array's own entry only when no task is listed)."""
        statuses = self.query()
        held = [j for j, s in statuses.items() if s.status.in_queue]
        arrays = set()
        for j in held:
            with contextlib.suppress(ValueError):
                jid = JobId.parse(j, self.id_style)
                if jid.task is not None:
                    arrays.add(str(jid.array))
        return [j for j in held if j not in arrays]

    # -- kill ----------------------------------------------------------------

    def kill_command(self, jobids: list[str]) -> list[str]:
        """Return the command that cancels `jobids`."""
        raise NotImplementedError

    def kill_error_ignorable(self, proc: subprocess.CompletedProcess[str]) -> bool:
        """Tell whether a failed kill complained only about jobs that are gone already."""
        return False

    def kill(self, jobid: str) -> None:
        """Cancel a job, one array task or a whole array."""
        self.kill_jobs([jobid])

    def kill_jobs(self, jobids: Iterable[str]) -> None:
        """Cancel several jobs with as few kill commands as possible.

        When the ids cover every held task of an array (as the last status
        answer holds it), the array is cancelled by its own id.
        """
        ids = [str(j) for j in jobids]
        if not ids:
            return
        for j in ids:
            self.check_id(j)
        targets = self._compact_kill(ids)
        for start in range(0, len(targets), self.kill_batch):
            cmd = self.kill_command(targets[start : start + self.kill_batch])
            proc = self.run(cmd)
            if proc.returncode != 0 and not self.kill_error_ignorable(proc):
                raise SchedulerError(command_error(cmd[0], cmd, proc))
        if self._statuses is not None:
            gone = set(targets)
            for k in list(self._statuses):
                if k in gone or self._array_of(k) in gone:
                    del self._statuses[k]

    def whole_array(self, jobid: str) -> str:
        """Return the id of the whole array an array task belongs to (other ids unchanged)."""
        return self._array_of(jobid) or jobid

    def _array_of(self, jobid: str) -> str | None:
        try:
            jid = JobId.parse(jobid, self.id_style)
        except ValueError:
            return None
        return None if jid.task is None else str(jid.array)

    def _compact_kill(self, ids: list[str]) -> list[str]:
        """Replace the tasks of an array by the array id when they are all its held tasks."""
        if self._statuses is None:
            return list(dict.fromkeys(ids))
        wanted: dict[str, set[str]] = {}
        for j in ids:
            array = self._array_of(j)
            if array is not None:
                wanted.setdefault(array, set()).add(j)
        held: dict[str, set[str]] = {}
        for k, status in self._statuses.items():
            array = self._array_of(k)
            if array is not None and status.status.in_queue:
                held.setdefault(array, set()).add(k)
        whole = {a for a, tasks in wanted.items() if a in held and held[a] <= tasks}
        out: dict[str, None] = {}
        for j in ids:
            array = self._array_of(j)
            out[array if array in whole else j] = None
        return list(out)


__all__ = [
    "ArrayChunk",
    "CommandScheduler",
    "JobId",
    "batch_launcher_path",
    "batch_script",
    "command_error",
    "current_user",
    "duration_seconds",
    "hms",
    "more_active",
    "run_command",
    "safe_job_name",
]
