"""Task files: ``task_<name>.py`` modules whose top-level names configure a task.

A task directory holds one ``task_<name>.py`` per task and optionally a
``psy-conf.py`` whose top-level settings become the defaults of every task in
that directory. :func:`load_tasks` executes them and returns :class:`TaskDef`
objects; a task file that fails to load is reported (path and error) and the
others still load.
"""

from __future__ import annotations

import difflib
import os
import sys
import traceback
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from psyrun.exceptions import TaskConfigWarning, TaskDirError

__all__ = [
    "Config",
    "TaskConfigWarning",
    "TaskDef",
    "TaskDirError",
    "TaskLoadError",
    "TaskSet",
    "load_tasks",
]

#: File in a task directory with default settings for every task there.
CONF_FILENAME = "psy-conf.py"
TASK_PREFIX = "task_"
TASK_SUFFIX = ".py"


@dataclass(frozen=True)
class TaskLoadError:
    """A task file that could not be loaded: its ``path`` and a one-line ``message``.

    ``details`` holds the full traceback text for verbose output.
    """

    path: str
    message: str
    details: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _default_store():
    from psyrun.store import PickleStore

    return PickleStore()


def _default_pspace():
    from psyrun.pspace import Param

    return Param()


@dataclass(init=False, repr=False)
class Config:
    """Every setting a task file (or ``psy-conf.py``) may define, with its default.

    A task file sets these as module-level names; anything else it defines is
    ignored (a name that looks like a misspelt setting is warned about).

    Attributes
    ----------
    pspace : psyrun.pspace.ParameterSpace
        The parameter space to evaluate. Default: an empty ``Param()``.
    execute : callable
        Called with one parameter assignment as keyword arguments (plus what
        `setup` returned); returns a dict of outputs. Required.
    setup : callable or None
        ``setup(proc_id)`` is called once per worker process before any
        `execute` call and returns a dict of extra keyword arguments for
        `execute` (for example a GPU context); its values are stored with
        every row like parameters unless `exclude_from_result` names them.
        Default: None.
    store : psyrun.store.Store
        Store writing the result file. Default: ``PickleStore()``.
    backend : type or None
        Backend class that turns the task into jobs. Default (None):
        :class:`psyrun.backend.DistributeBackend`.
    scheduler : psyrun.scheduler.Scheduler or None
        Scheduler submitting the jobs. Default (None): ``ImmediateRun()``
        (run every job at once on this machine). The runner resolves the
        defaults (:func:`psyrun.run.runner.scheduler_for`).
    scheduler_args : dict
        Extra arguments for the scheduler (values may be callables taking the
        job name). Default: ``{}``.
    max_jobs : int
        Maximum number of processing jobs. Default: 100.
    min_items : int
        Minimum number of assignments per processing job. Default: 1.
    pool_size : int
        Worker processes per job (LoadBalancingBackend). Default: 1.
    workdir : str
        Directory for intermediate files and logs; each task uses
        ``<workdir>/<task name>``. Relative to the directory ``psy`` is
        started from. Default: ``psy-work``.
    resultfile : str or None
        The result file. Default (None): ``<workdir>/<task>/result<ext>``
        with the store's extension.
    exclude_from_result : list of str
        Keys (parameters, outputs or `setup` keys) left out of the result.
        Default: ``[]``.
    file_dep : list of str
        Further files the task depends on: when one is newer than the
        result, ``psy run`` runs the task again. Default: ``[]``.
    overwrite_dirty : bool
        Whether ``psy run`` may overwrite results that are out of date. When
        False it refuses (use ``psy run -c`` or ``psy clean``). Default: True.
    python : str
        Python interpreter the jobs run with. Default: ``sys.executable``.
    vectorized : bool
        When True, `execute` receives a whole block of rows as keyword NumPy
        arrays and returns a dict of arrays of the block's length. Default:
        False.
    block_size : int or None
        Rows per call of a vectorized `execute` (None: a default of the
        mapper). Default: None.
    record : list of str
        Facts recorded with every row, as extra columns: any of
        ``'duration'`` (``psy_duration``, seconds the `execute` call took, a
        float; for a vectorized `execute` the block's time divided by its
        rows), ``'host'`` (``psy_host``, the machine's host name), ``'job'``
        (``psy_job``, the name of the job that evaluated the row) and
        ``'finished'`` (``psy_finished``, when the row was done, UTC ISO 8601
        text), ``'error'`` (``psy_error``: ``''``, or for a row whose
        `execute` raised, ``"ExceptionType: message"``; such rows are then
        kept on record, see :mod:`psyrun.results.failed_rows`) and ``'attempt'``
        (``psy_attempt``, the attempt that evaluated the row, 1 for the
        first). A parameter, output or `setup` key of the same name is an
        error. Default: ``[]`` (results as in psyrun 0.8).
    rng_seed : int or None
        The seed of the rows' random generators. When `execute` names an
        ``rng`` argument, each row gets ``psyrun.row_rng(rng_seed, **row)``,
        a generator fixed by the seed and the row's values alone (a
        vectorized `execute` gets the block's ``psyrun.rng.row_seeds``, one
        row of seeds per row); see :mod:`psyrun.rng`. Required by such an
        `execute`. Default: None.
    dims : dict
        Names for the axes of outputs whose values are arrays, one list per
        output with a name per axis, e.g. ``{'hist': ['bin']}``; stored in
        the result's metadata and used by :func:`psyrun.results.load_xarray`
        and the zarr and HDF5 layouts (:mod:`psyrun.dims`). Default: ``{}``
        (``<output>_dim_0``, ...).
    max_attempts : int
        Rounds a run may take: after a round, the rows still missing (jobs
        killed at their time limit, out of memory, on a failed node, ...) are
        submitted again automatically, up to this many rounds in all
        (:mod:`psyrun.run.attempts`). Default: 1 (no automatic rounds).
    escalate : dict
        Factors applied to ``scheduler_args['timelimit']`` after a round with
        a job killed at its time limit and to ``'memory'`` (or
        ``'memory_per_cpu'``) after one killed for its memory. Default:
        ``{'timelimit': 2, 'memory': 2}``.
    escalate_cap : float
        The most the factors of `escalate` may grow a resource over the
        rounds, relative to the first round's value. Default: 8.
    retry_errors : bool
        Whether a round whose jobs failed only because ``execute`` raised
        starts another round. Default: False (an exception is taken as
        deterministic).
    row_timeout : float or None
        Seconds an `execute` call may take; a call that takes longer is
        stopped and its row fails with cause ``timeout`` (a vectorized
        `execute`: the whole block). See :mod:`psyrun.run.row_timeout`.
        Default: None (no limit).
    fail_fast : int
        When the first this many rows of a job all raise the same exception
        with the same message, the job and the run stop (see
        :mod:`psyrun.run.fail_fast`); 0 evaluates every row anyway. Default: 20.
    walltime_margin : float
        Seconds a process job keeps free before its time limit at least;
        the job stops taking rows when the next would end later and ends as
        partial (see :mod:`psyrun.run.walltime`). Default: 10.
    """

    pspace: Any = field(default_factory=_default_pspace)
    execute: Callable | None = None
    setup: Callable | None = None
    store: Any = field(default_factory=_default_store)
    backend: Any = None
    scheduler: Any = None
    scheduler_args: dict = field(default_factory=dict)
    max_jobs: int = 100
    min_items: int = 1
    pool_size: int = 1
    workdir: str = "psy-work"
    resultfile: str | None = None
    exclude_from_result: list = field(default_factory=list)
    file_dep: list = field(default_factory=list)
    overwrite_dirty: bool = True
    python: str = field(default_factory=lambda: sys.executable)
    vectorized: bool = False
    block_size: int | None = None
    record: list = field(default_factory=list)
    rng_seed: int | None = None
    dims: dict = field(default_factory=dict)
    max_attempts: int = 1
    escalate: dict = field(default_factory=lambda: {"timelimit": 2, "memory": 2})
    escalate_cap: float = 8
    retry_errors: bool = False
    row_timeout: float | None = None
    fail_fast: int = 20
    walltime_margin: float = 10.0

    def __init__(self, **settings: Any) -> None:
        # Which settings were given (not left at their defaults) matters when
        # psy-conf.py and a task file are combined.
        object.__setattr__(self, "_explicit", set())
        for f in fields(self):
            default = f.default if f.default_factory is MISSING else f.default_factory()
            object.__setattr__(self, f.name, default)
        for name, value in settings.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        if name not in SETTINGS:
            raise AttributeError(f"{name!r} is not a task setting{_suggestion(name)}")
        object.__setattr__(self, name, value)
        self._explicit.add(name)

    def is_set(self, name: str) -> bool:
        """Whether `name` was set explicitly (rather than left at its default)."""
        return name in self._explicit

    def update(self, namespace: Mapping[str, Any]) -> None:
        """Take every setting found in `namespace` (a task file's globals)."""
        for name in SETTINGS:
            if name in namespace:
                setattr(self, name, namespace[name])

    def copy(self) -> Config:
        """Return a shallow copy (values shared, explicit-ness kept)."""
        new = Config()
        for name in SETTINGS:
            object.__setattr__(new, name, getattr(self, name))
        object.__setattr__(new, "_explicit", set(self._explicit))
        object.__setattr__(new, "_source", getattr(self, "_source", None))
        return new

    @classmethod
    def load_from_file(cls, filename: str | os.PathLike) -> Config:
        """Execute a settings file (``psy-conf.py`` or a task file) and read its settings."""
        conf = cls()
        conf.update(_exec_file(os.fspath(filename)))
        return conf

    def apply_as_default(self, filename: str | os.PathLike) -> None:
        """Take the settings of another file as defaults for those not set here."""
        other = Config.load_from_file(filename)
        for name in other._explicit - self._explicit:
            object.__setattr__(self, name, getattr(other, name))

    def __repr__(self) -> str:
        items = ", ".join(f"{n}={getattr(self, n)!r}" for n in sorted(self._explicit))
        return f"Config({items})"


#: The names of every task setting.
SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(Config))


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, list(SETTINGS), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _read_source(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _exec_file(
    path: str,
    module_name: str | None = None,
    source: str | None = None,
    code_path: str | None = None,
) -> dict[str, Any]:
    """Execute a Python file as a module and return its globals.

    `source` is the text to execute (default: the file's); `code_path` is the
    file named in tracebacks (default `path`: a copy made for a run names the
    copy, whose lines are the ones that ran). ``__file__`` is always `path`.
    """
    if source is None:
        source = _read_source(path)
    code = compile(source, code_path or path, "exec")
    name = module_name or os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    module = types.ModuleType(name)
    module.__file__ = path
    # Registered so that pickling functions defined in the task file by reference
    # works inside this process (and in forked children).
    sys.modules[name] = module
    exec(code, module.__dict__)
    return module.__dict__


def _typo_warnings(namespace: Mapping[str, Any], path: str) -> list[str]:
    """Messages for top-level names that look like misspelt settings."""
    messages = []
    for name, value in namespace.items():
        if name.startswith("_") or name in SETTINGS or isinstance(value, types.ModuleType):
            continue
        if isinstance(value, type) or (
            callable(value) and getattr(value, "__module__", None) != namespace.get("__name__")
        ):
            # Classes and imported functions (``from psyrun import Scheduler``) are
            # not settings that were misspelt.
            continue
        close = difflib.get_close_matches(name, list(SETTINGS), n=1, cutoff=0.8)
        if close:
            messages.append(
                f"{path}: {name!r} is not a task setting and is ignored; did you mean "
                f"{close[0]!r}?"
            )
    return messages


def _check_guards(c: Config) -> None:
    """Check ``row_timeout``, ``fail_fast`` and ``walltime_margin``."""

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value

    if c.row_timeout is not None and not (number(c.row_timeout) and c.row_timeout > 0):
        raise ValueError(
            f"row_timeout must be a number of seconds above 0, or None, got {c.row_timeout!r}"
        )
    if isinstance(c.fail_fast, bool) or not isinstance(c.fail_fast, int) or c.fail_fast < 0:
        raise ValueError(
            f"fail_fast must be a number of rows (0 turns it off), got {c.fail_fast!r}"
        )
    if not (number(c.walltime_margin) and c.walltime_margin >= 0):
        raise ValueError(
            f"walltime_margin must be a number of seconds, 0 or more, got {c.walltime_margin!r}"
        )


class TaskDef:
    """One loaded task: its name, file and settings.

    Settings are attributes (``task.pspace``, ``task.max_jobs``, ...);
    ``task.resultfile`` and ``task.workdir`` are absolute paths, the store
    and scheduler are instances (or None: the defaults, resolved by
    :mod:`psyrun.run.defaults`) and ``task.backend`` is a backend class or None.

    :meth:`TaskDef.load` executes a task file and returns its task; the
    constructor only checks and completes settings already read.

    Parameters
    ----------
    path : str or path
        The ``task_<name>.py`` file.
    config : Config
        Its settings.
    warnings : list of str, optional
        Warnings found while reading the settings (kept in ``.warnings``).
    """

    def __init__(
        self, path: str | os.PathLike, config: Config, warnings: list[str] | None = None
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        base = os.path.basename(self.path)
        if not (base.startswith(TASK_PREFIX) and base.endswith(TASK_SUFFIX)):
            raise ValueError(f"task files are named task_<name>.py, got {base!r}")
        self.name = base[len(TASK_PREFIX) : -len(TASK_SUFFIX)]
        self.taskdir = os.path.dirname(self.path)
        self.conf_path = os.path.join(self.taskdir, CONF_FILENAME)
        self.warnings = list(warnings or [])
        self.config = config
        #: The source text executed for this task and for ``psy-conf.py`` (None:
        #: not loaded from a file, or no ``psy-conf.py``); see :attr:`version`.
        self.source: str | None = None
        self.conf_source: str | None = getattr(config, "_source", None)
        self._version: str | None = None
        self._normalize()

    @classmethod
    def load(cls, path: str | os.PathLike, conf: Config | None = None) -> TaskDef:
        """Execute a task file and return the task it defines.

        Parameters
        ----------
        path : str or path
            The ``task_<name>.py`` file.
        conf : Config, optional
            Defaults (for example from ``psy-conf.py``) for settings the file
            does not set.
        """
        path = os.path.abspath(os.fspath(path))
        base = os.path.basename(path)
        if not (base.startswith(TASK_PREFIX) and base.endswith(TASK_SUFFIX)):
            raise ValueError(f"task files are named task_<name>.py, got {base!r}")
        name = base[len(TASK_PREFIX) : -len(TASK_SUFFIX)]
        from psyrun.paths import check_task_name

        # Before the file runs: a name like '..' is refused whatever the file says.
        check_task_name(name)
        source = _read_source(path)
        namespace = _exec_file(path, module_name=f"psyrun_task_{name}", source=source)
        config = conf.copy() if conf is not None else Config()
        config.update(namespace)
        task = cls(path, config, _typo_warnings(namespace, path))
        task.source = source
        return task

    @property
    def version(self) -> str:
        """The version of the task's code (:func:`psyrun.run.versions.task_version`).

        Computed from the source this task was loaded from, so it names what
        the task object evaluates even when the file changed since.
        """
        if self._version is None:
            from psyrun.run.versions import task_version

            source = self.source
            if source is None:
                source = _read_source(self.path)
            conf = self.conf_source
            if conf is None and self.source is None and os.path.exists(self.conf_path):
                conf = _read_source(self.conf_path)
            self._version = task_version(source, conf)
        return self._version

    def _normalize(self) -> None:
        c = self.config
        if not callable(c.execute):
            raise ValueError(
                "defines no execute function; add `def execute(**params): return {...}`"
            )
        from psyrun.pspace import ParameterSpace

        if not isinstance(c.pspace, ParameterSpace):
            raise TypeError(
                f"pspace must be a parameter space such as Param(x=[1, 2]), got "
                f"{type(c.pspace).__name__}"
            )
        from psyrun.sampling import check_seeded

        check_seeded(c.pspace)
        for name in ("max_jobs", "min_items", "pool_size"):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(c.store, type):
            c.store = c.store()
        if isinstance(c.scheduler, type):
            c.scheduler = c.scheduler()
        from psyrun.backend.base import Backend

        if isinstance(c.backend, Backend):
            c.backend = type(c.backend)
        if c.backend is not None and not (
            isinstance(c.backend, type) and issubclass(c.backend, Backend)
        ):
            raise TypeError(
                "backend must be a backend class such as DistributeBackend or "
                f"LoadBalancingBackend, got {c.backend!r}"
            )
        if not isinstance(c.vectorized, bool):
            raise TypeError(f"vectorized must be True or False, got {c.vectorized!r}")
        if c.block_size is not None and (
            isinstance(c.block_size, bool) or not isinstance(c.block_size, int) or c.block_size < 1
        ):
            raise ValueError(
                f"block_size must be a positive integer or None, got {c.block_size!r}"
            )
        from psyrun.results.records import check_record

        c.record = check_record(c.record, list(c.pspace.keys()))
        from psyrun.rng import check_task_rng

        # The seed execute's `rng` argument is bound with (None: it takes none).
        self.execute_rng_seed = check_task_rng(c.execute, c.rng_seed, c.pspace.keys())
        from psyrun.dims import check_dims_setting

        c.dims = check_dims_setting(c.dims, list(c.pspace.keys()))
        from psyrun.run.attempts import check_attempt_settings

        check_attempt_settings(c)
        _check_guards(c)
        if c.setup is not None and not callable(c.setup):
            raise TypeError(f"setup must be a function setup(proc_id) or None, got {c.setup!r}")
        if isinstance(c.exclude_from_result, str):
            c.exclude_from_result = [c.exclude_from_result]
        if self.excluded_params:
            self.warnings.append(
                f"{self.path}: exclude_from_result leaves out the parameter(s) "
                f"{', '.join(map(repr, self.excluded_params))}; without them psy cannot "
                "tell which assignments are done, so `psy status` counts none and "
                "`psy run -c` refuses to continue. Remove them from exclude_from_result "
                "to keep both working."
            )
        if c.pool_size > 1 and not getattr(c.backend, "uses_pool", False):
            self.warnings.append(
                f"{self.path}: pool_size = {c.pool_size} is used only by "
                f"LoadBalancingBackend; {getattr(c.backend, '__name__', 'DistributeBackend')} "
                "runs one process per job "
                "(raise max_jobs for more parallel jobs)"
            )
        if isinstance(c.file_dep, (str, os.PathLike)):
            c.file_dep = [c.file_dep]
        c.file_dep = [os.path.abspath(os.fspath(f)) for f in c.file_dep]
        object.__setattr__(c, "workdir", os.path.abspath(os.fspath(c.workdir)))
        if c.resultfile is not None:
            object.__setattr__(c, "resultfile", os.path.abspath(os.fspath(c.resultfile)))
            ext = getattr(c.store, "ext", "") or ""
            given = os.path.splitext(c.resultfile)[1]
            if ext and given.lower() != ext.lower():
                self.warnings.append(
                    f"{self.path}: resultfile {os.path.basename(c.resultfile)!r} does not end "
                    f"in {ext!r}, but the store is {type(c.store).__name__}, which writes "
                    f"{ext!r} files whatever the name; set the store that matches the name "
                    "(for example store = NpzStore() for '.npz') or rename the file"
                )
        from psyrun.paths import check_task_paths

        # A name, workdir or resultfile that could reach files psyrun did not make.
        check_task_paths(self)

    def __getattr__(self, name: str) -> Any:
        if name in SETTINGS:
            value = getattr(self.__dict__["config"], name)
            if name == "resultfile" and value is None:
                ext = getattr(self.config.store, "ext", "") or ".pkl"
                value = os.path.join(self.config.workdir, self.name, "result" + ext)
            return value
        raise AttributeError(f"task {self.__dict__.get('name')!r} has no setting {name!r}")

    @property
    def excluded_params(self) -> list[str]:
        """Parameters of `pspace` that ``exclude_from_result`` leaves out of the result."""
        keys = set(self.config.pspace.keys())
        return [k for k in self.config.exclude_from_result if k in keys]

    @property
    def dependencies(self) -> list[str]:
        """Files whose change makes the results out of date."""
        deps = [self.path, *self.file_dep]
        if os.path.exists(self.conf_path):
            deps.append(self.conf_path)
        return deps

    def run_setup(self, proc_id: int) -> dict | None:
        """Run the task's ``setup(proc_id)``; return its dict of extra arguments (or None)."""
        if self.config.setup is None:
            return None
        extra = self.config.setup(proc_id)
        if extra is None:
            return None
        if not isinstance(extra, Mapping):
            raise TypeError(
                f"setup({proc_id}) returned {type(extra).__name__}; it must return a dict of "
                "keyword arguments for execute"
            )
        return dict(extra)

    def __repr__(self) -> str:
        return f"TaskDef({self.name!r}, {self.path!r})"


class TaskSet(dict):
    """The tasks of a task directory by name, plus the files that failed to load.

    Attributes
    ----------
    errors : list of TaskLoadError
        One entry per task file (or ``psy-conf.py``) that failed to load.
    warnings : list of str
        Warnings about settings (for example misspelt names).
    """

    def __init__(self, taskdir: str) -> None:
        super().__init__()
        self.taskdir = taskdir
        self.errors: list[TaskLoadError] = []
        self.warnings: list[str] = []

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(super().keys()))


def _load_error(path: str, exc: BaseException) -> TaskLoadError:
    tb = exc.__traceback__
    line = ""
    for frame, lineno in traceback.walk_tb(tb):
        if frame.f_code.co_filename == path:
            line = f" (line {lineno})"
    if isinstance(exc, SyntaxError) and exc.filename == path:
        line = f" (line {exc.lineno})"
    message = f"{type(exc).__name__}{line}: {exc}"
    details = "".join(traceback.format_exception(type(exc), exc, tb))
    return TaskLoadError(path, message, details)


# task file path -> (modification stamp, TaskDef); jobs forked from psy reuse it.
_CACHE: dict[str, tuple[tuple, TaskDef]] = {}


def _stamp(task: TaskDef) -> tuple:
    stamps = []
    for path in (task.path, task.conf_path):
        try:
            stamps.append(os.stat(path).st_mtime_ns)
        except FileNotFoundError:
            stamps.append(None)
    return tuple(stamps)


def get_task(path: str | os.PathLike, frozen: Mapping[str, Any] | None = None) -> TaskDef:
    """Return the task defined in `path`, reusing a definition loaded earlier in this process.

    A task loaded by :func:`load_tasks` whose file (and ``psy-conf.py``) did
    not change since is returned as is; otherwise the task directory's
    ``psy-conf.py`` and the file are loaded.

    Parameters
    ----------
    path : str or path
        The task file.
    frozen : mapping, optional
        The fields :func:`psyrun.run.versions.freeze` wrote into a job description
        (``task_version``, ``task_source``, ``conf_source``): the task is then
        loaded from the copies made when the run was planned, not from the
        file as it is now (see :func:`load_frozen`).

    Raises
    ------
    RuntimeError
        If the task file fails to load (the message holds the error).
    """
    path = os.path.abspath(os.fspath(path))
    if frozen and frozen.get("task_source"):
        return load_frozen(path, frozen)
    cached = _CACHE.get(path)
    if cached is not None and cached[0] == _stamp(cached[1]):
        return cached[1]
    base = os.path.basename(path)
    name = base[len(TASK_PREFIX) : -len(TASK_SUFFIX)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TaskConfigWarning)
        tasks = load_tasks(os.path.dirname(path), names=[name])
    for error in tasks.errors:
        raise RuntimeError(f"cannot load task {name!r}: {error}\n{error.details}")
    if name not in tasks:
        raise RuntimeError(f"no task file {path!r}")
    return tasks[name]


def load_frozen(path: str, frozen: Mapping[str, Any]) -> TaskDef:
    """Load the task of `path` from the copies of its source a run was planned with.

    The task keeps its own path, directory and ``__file__`` (relative imports,
    data files next to it and the default settings work as for the file);
    only the code executed is the copy's. A task already loaded in this
    process with the same version (a job forked from ``psy``) is reused.

    Raises
    ------
    RuntimeError
        If a copy is missing, does not match the version recorded, or fails
        to load.
    """
    from psyrun.run.versions import task_version

    version = frozen.get("task_version")
    cached = _CACHE.get(path)
    if (
        cached is not None
        and version
        and cached[1].source is not None
        and cached[1].version == version
    ):
        return cached[1]
    name = os.path.basename(path)[len(TASK_PREFIX) : -len(TASK_SUFFIX)]
    copies = {}
    for key in ("task_source", "conf_source"):
        copy = frozen.get(key)
        try:
            copies[key] = _read_source(copy) if copy else None
        except OSError as exc:
            raise RuntimeError(
                f"cannot read {copy!r}, the copy of the task's source this run was planned "
                f"with ({exc}); run `psy run -c {name}` to plan the run again"
            ) from None
    source, conf_source = copies["task_source"], copies["conf_source"]
    if version and task_version(source, conf_source) != version:
        raise RuntimeError(
            f"the copy of task {name!r} in {os.path.dirname(frozen['task_source'])} is not "
            f"the version {version} this job was submitted with (a later run replaced it); "
            f"not running it. Run `psy run -c {name}` to submit the task again."
        )
    taskdir = os.path.dirname(path)
    if taskdir not in sys.path:
        sys.path.append(taskdir)
    conf = Config()
    conf_path = os.path.join(taskdir, CONF_FILENAME)
    try:
        if conf_source is not None:
            object.__setattr__(conf, "_source", conf_source)
            conf.update(
                _exec_file(
                    conf_path,
                    module_name="psyrun_conf",
                    source=conf_source,
                    code_path=frozen["conf_source"],
                )
            )
        namespace = _exec_file(
            path,
            module_name=f"psyrun_task_{name}",
            source=source,
            code_path=frozen["task_source"],
        )
        config = conf.copy()
        config.update(namespace)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TaskConfigWarning)
            task = TaskDef(path, config)
    except Exception as exc:
        error = _load_error(frozen["task_source"], exc)
        raise RuntimeError(f"cannot load task {name!r}: {error}\n{error.details}") from None
    task.source = source
    task._version = version or None
    return task


def task_files(taskdir: str | os.PathLike) -> list[str]:
    """Return the ``task_<name>.py`` files of a task directory, sorted by name."""
    taskdir = os.fspath(taskdir)
    if not os.path.isdir(taskdir):
        if os.path.exists(taskdir):
            raise TaskDirError(f"task directory {taskdir!r} is not a directory")
        raise TaskDirError(
            f"task directory {taskdir!r} does not exist; create it or pass --taskdir "
            "pointing at the directory holding task_<name>.py files"
        )
    return sorted(
        os.path.join(taskdir, f)
        for f in os.listdir(taskdir)
        if f.startswith(TASK_PREFIX) and f.endswith(TASK_SUFFIX) and len(f) > 8
    )


def load_tasks(
    taskdir: str | os.PathLike = "psy-tasks", names: list[str] | None = None
) -> TaskSet:
    """Load the tasks of a task directory.

    Parameters
    ----------
    taskdir : str or path
        Directory with ``task_<name>.py`` files (and optionally ``psy-conf.py``).
    names : list of str, optional
        Load only these tasks (the others are not executed).

    Returns
    -------
    TaskSet
        Mapping of task name to :class:`TaskDef`, iterating in name order;
        ``.errors`` lists files that failed to load and ``.warnings``
        suspicious settings. Warnings are also issued as
        :class:`TaskConfigWarning`.

    Raises
    ------
    TaskDirError
        If `taskdir` does not exist.
    """
    taskdir = os.path.abspath(os.fspath(taskdir))
    files = task_files(taskdir)
    tasks = TaskSet(taskdir)
    if taskdir not in sys.path:
        # Task files may import helper modules kept next to them.
        sys.path.append(taskdir)
    conf = Config()
    conf_path = os.path.join(taskdir, CONF_FILENAME)
    if os.path.exists(conf_path):
        try:
            conf_source = _read_source(conf_path)
            object.__setattr__(conf, "_source", conf_source)
            namespace = _exec_file(conf_path, module_name="psyrun_conf", source=conf_source)
            conf.update(namespace)
            tasks.warnings.extend(_typo_warnings(namespace, conf_path))
        except Exception as exc:
            tasks.errors.append(_load_error(conf_path, exc))
    for path in files:
        name = os.path.basename(path)[len(TASK_PREFIX) : -len(TASK_SUFFIX)]
        if names is not None and name not in names:
            continue
        try:
            task = TaskDef.load(path, conf)
        except Exception as exc:
            tasks.errors.append(_load_error(path, exc))
            continue
        tasks.warnings.extend(task.warnings)
        tasks[task.name] = task
        _CACHE[task.path] = (_stamp(task), task)
    for message in tasks.warnings:
        warnings.warn(message, TaskConfigWarning, stacklevel=2)
    return tasks
