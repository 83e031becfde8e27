"""The ``psy`` command: run, inspect and manage the tasks of a task directory.

Every subcommand takes ``--taskdir`` (default ``psy-tasks``). Mistakes a user
can make (a missing task directory, an unknown task name, a bad argument)
end with a one-line error and a non-zero exit status, never a traceback.
This module prints; the layers below (:mod:`psyrun.tasks`,
:mod:`psyrun.backend`) return values.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Sequence

import click

from psyrun import __version__

__all__ = ["main", "psy"]

#: Jobs listed one by one in ``psy status``; above, a summary per state (unless -v).
MAX_JOBS_LISTED = 20
#: Missing assignments ``psy status -v`` prints before summarising.
MAX_MISSING_LISTED = 100

_TASKDIR_HELP = "Directory holding the task_<name>.py files."


def taskdir_option(f):
    """Add the ``--taskdir`` option shared by the subcommands."""
    return click.option(
        "--taskdir",
        default="psy-tasks",
        show_default=True,
        type=click.Path(file_okay=False),
        help=_TASKDIR_HELP,
    )(f)


def _err(message: str) -> None:
    click.echo(message, err=True)


def _load(taskdir: str, names: Sequence[str] = ()):
    """Load the task directory; report load errors and warnings; check `names`."""
    from psyrun.tasks import TaskConfigWarning, TaskDirError, load_tasks

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TaskConfigWarning)
            tasks = load_tasks(taskdir)
    except TaskDirError as exc:
        raise click.ClickException(str(exc)) from None
    for w in caught:
        if issubclass(w.category, TaskConfigWarning):
            _err(f"warning: {w.message}")
    failed = {os.path.basename(e.path)[5:-3] for e in tasks.errors}
    for error in tasks.errors:
        _err(f"error: cannot load {error}")
    unknown = [n for n in names if n not in tasks and n not in failed]
    if unknown:
        known = ", ".join(tasks) or "none"
        raise click.ClickException(
            f"no task named {', '.join(map(repr, unknown))} in {taskdir!r} "
            f"(task files are task_<name>.py; tasks there: {known})"
        )
    broken = [n for n in names if n in failed]
    if broken:
        raise click.ClickException(
            f"task {', '.join(map(repr, broken))} failed to load (see the error above)"
        )
    selected = [tasks[n] for n in (names or list(tasks))]
    # Load errors count as a failure only when they hit the selection (all tasks).
    tasks.selection_failed = bool(tasks.errors) and not names
    return tasks, selected


def _file_errors(f):
    """Turn an OSError about a file (bad workdir, full disk, no permission) into one line."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except OSError as exc:
            if exc.filename is None:
                raise
            raise click.ClickException(
                f"{exc.strerror or type(exc).__name__}: {exc.filename!s}. Check that the "
                "task's workdir and resultfile settings name directories you can write to."
            ) from None

    return wrapper


class _Reporter:
    """Prints ``. <job>`` lines, or a progress bar for process jobs on a terminal."""

    def __init__(self, n_process: int, runs_now: bool) -> None:
        self.bar = None
        self.use_bar = runs_now and n_process > 1 and sys.stdout.isatty()
        self.n_process = n_process

    def start(self, name: str) -> None:
        if self.use_bar and ":process:" in name:
            if self.bar is None:
                self.bar = click.progressbar(
                    length=self.n_process, label=name.rsplit(":", 1)[0], show_pos=True
                )
                self.bar.__enter__()
            return
        self.close()
        click.echo(f". {name}")

    def done(self, name: str, jobid: str) -> None:
        if self.bar is not None and ":process:" in name:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="psy")
def psy() -> None:
    """Run parameter-space explorations defined in task files.

    Tasks are task_<name>.py files in the task directory (psy-tasks unless
    --taskdir says otherwise); `psy <command> --help` describes a command.
    """


#: The console entry point (``psy = "psyrun.cli:main"``).
main = psy


@psy.command()
@taskdir_option
@click.option(
    "-c",
    "--continue",
    "cont",
    is_flag=True,
    help="Keep existing results and evaluate only the missing assignments.",
)
@click.argument("task", nargs=-1)
@_file_errors
def run(taskdir: str, cont: bool, task: tuple[str, ...]) -> None:
    """Run all tasks that are not up to date (or the named ones).

    Each job is printed prefixed with '.' when it runs and '-' when it is
    skipped because its results are up to date.
    """
    # Jobs run in forked children of this process: import what they need once, here.
    import psyrun.mapper
    import psyrun.worker  # noqa: F401

    tasks, selected = _load(taskdir, task)
    problems = tasks.selection_failed
    for t in selected:
        backend = t.make_backend()
        with _task_lock(backend) as locked:
            if not locked:
                _err(
                    f"error: {t.name}: another `psy run` or `psy clean` is working on this "
                    "task (it holds the lock on "
                    f"{_paths(backend).run_lock}); wait for it to finish, then run again."
                )
                problems = True
                continue
            try:
                problems |= _run_task(t, backend, cont)
            except KeyboardInterrupt:
                _err(
                    f"\n{t.name}: interrupted. The rows saved so far are kept; "
                    f"`psy run -c {t.name}` continues with the rest."
                )
                sys.exit(130)
    if problems:
        sys.exit(1)


def _run_task(t, backend, cont: bool) -> bool:
    """Plan and submit one task; return True when something went wrong."""
    from psyrun.scheduler import ImmediateRun

    held = backend.get_queued()
    queued = [s for s in held if s.status.will_run]
    if queued:
        counts = Counter(str(s.status) for s in queued)
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        _err(
            f"{t.name}: jobs of the last run are still in the queue ({summary}); not "
            f"submitting again. `psy status -v {t.name}` lists them, "
            f"`psy kill {t.name}` cancels them."
        )
        return False
    blocked = [s.id for s in held if s.status.in_queue and not s.status.will_run]
    if blocked:
        # They wait for a job that failed and can never run; this run replaces them.
        _kill(t.scheduler, blocked)
        click.echo(f"{t.name}: cancelled {len(blocked)} blocked jobs (a job they needed failed)")
    if not cont and not t.overwrite_dirty and _has_results(backend) and not backend.is_current():
        _err(
            f"warning: {t.name}: the results in {backend.paths.root} are out of date and "
            "overwrite_dirty is False; not running. Use `psy run -c` to add to them or "
            f"`psy clean {t.name}` to remove them."
        )
        return False
    try:
        plan = backend.plan(cont)
    except ValueError as exc:
        # A task the backend cannot run as asked (for example -c without parameters).
        _err(f"error: {exc}")
        return True
    if plan.up_to_date:
        for name in plan.graph.names:
            click.echo(f"- {name}")
        return False
    scheduler = t.scheduler
    runs_now = isinstance(scheduler, ImmediateRun)
    if runs_now:
        _preimport_store(t.store)
    graph = plan.graph
    n_process = len(graph) - 2
    reporter = _Reporter(n_process, runs_now)
    try:
        ids = backend.submit(graph, on_start=reporter.start, on_submitted=reporter.done)
    except Exception as exc:
        reporter.close()
        raise click.ClickException(
            f"{t.name}: submitting jobs failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        reporter.close()
    if runs_now:
        return _report_immediate(t, backend, scheduler, ids, len(graph))
    click.echo(f"{t.name}: submitted {len(ids)} jobs (`psy status {t.name}` follows them)")
    return False


def _paths(backend):
    """Return the task's file names (also for a backend that does not keep them)."""
    from psyrun.paths import TaskPaths

    return getattr(backend, "paths", None) or TaskPaths.for_task(backend.task)


@contextlib.contextmanager
def _task_lock(backend, create: bool = True):
    """Hold the task's run lock; yield False (without waiting) when another psy holds it.

    Two ``psy run`` (or a ``psy run`` and a ``psy clean``) of one task at once
    would delete each other's part files; the second one must refuse.
    """
    from psyrun.store.locking import FileLock

    paths = _paths(backend)
    if not os.path.isdir(paths.root) and not create:
        yield True
        return
    os.makedirs(os.path.dirname(paths.run_lock), exist_ok=True)
    lock = FileLock(paths.run_lock, timeout=0)
    try:
        lock.acquire()
    except TimeoutError:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _kill(scheduler, jobids: list[str]) -> None:
    """Cancel jobs, in one call when the scheduler can."""
    kill_jobs = getattr(scheduler, "kill_jobs", None)
    if kill_jobs is not None:
        kill_jobs(jobids)
    else:
        for jobid in jobids:
            scheduler.kill(jobid)


# Libraries a store imports on first use; jobs forked from psy inherit them.
_STORE_LIBRARIES = {".h5": "tables", ".zarr": "zarr"}


def _preimport_store(store) -> None:
    module = _STORE_LIBRARIES.get(getattr(store, "ext", ""))
    if module is not None:
        import importlib

        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def _has_results(backend) -> bool:
    return os.path.exists(backend.paths.result) or bool(backend.paths.list_parts())


def _report_immediate(t, backend, scheduler, ids: dict[str, str], n_jobs: int) -> bool:
    """After an ImmediateRun: name the failed jobs; return True when any failed."""
    failed = backend.get_failed(queued=[])
    if not failed:
        return False
    _err(f"error: {t.name}: {len(failed)} of {n_jobs} jobs failed or did not run:")
    for job in failed[:MAX_JOBS_LISTED]:
        message = job.message
        result = scheduler.result(ids[job.name]) if job.name in ids else None
        if result is not None and str(result.status) == "blocked":
            message = "not run: a job it depends on failed"
        _err(f"  {job.name}: {message}")
        _err(f"    log: {job.log}")
    if len(failed) > MAX_JOBS_LISTED:
        _err(f"  ... and {len(failed) - MAX_JOBS_LISTED} more (`psy status -v {t.name}`)")
    _err(
        f"Fix the cause, then `psy run -c {t.name}` evaluates what is missing "
        "and keeps what was computed."
    )
    return True


@psy.command()
@taskdir_option
@click.option("-v", "--verbose", is_flag=True, help="List missing assignments and jobs.")
@click.argument("task", nargs=-1)
@_file_errors
def status(taskdir: str, verbose: bool, task: tuple[str, ...]) -> None:
    """Print how many assignments of each task (or the named ones) are done."""
    from psyrun.backend.base import TaskProgress

    tasks, selected = _load(taskdir, task)
    for t in selected:
        backend = t.make_backend()
        # With -v the missing rows are listed too: compute them once for both.
        space = backend.get_missing() if verbose else None
        if space is None:
            progress = backend.progress()
        else:
            total = len(t.pspace)
            progress = TaskProgress(total - len(space), total)
        click.echo(f"{t.name}: {progress.completed} out of {progress.total} rows completed")
        for message in getattr(backend, "unreadable", []):
            _err(f"warning: {t.name}: {message}")
        queued = backend.get_queued()
        failed = backend.get_failed(queued)
        if space is not None:
            _print_missing(space)
        _print_jobs(t.name, queued, failed, verbose)
    if tasks.selection_failed:
        sys.exit(1)


def _print_missing(space) -> None:
    n_missing = len(space)
    if n_missing <= 0:
        return
    click.echo(f"  missing assignments ({n_missing}):")
    shown = space[: min(n_missing, MAX_MISSING_LISTED)]
    for row in shown.iterate():
        click.echo(f"    {row}")
    if n_missing > MAX_MISSING_LISTED:
        click.echo(f"    ... and {n_missing - MAX_MISSING_LISTED} more")


def _print_jobs(name: str, queued: list, failed: list, verbose: bool) -> None:
    if queued:
        if verbose or len(queued) <= MAX_JOBS_LISTED:
            click.echo(f"  queued or running jobs ({len(queued)}):")
            for s in queued:
                click.echo(f"    {s.name} (id {s.id}, {s.status})")
        else:
            counts = Counter(str(s.status) for s in queued)
            summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
            click.echo(f"  jobs in the queue: {summary} (`psy status -v {name}` lists them)")
    if failed:
        if verbose:
            click.echo(f"  failed jobs ({len(failed)}):")
            for job in failed:
                click.echo(f"    {job.name}: {job.message}")
                click.echo(f"      log: {job.log}")
        else:
            click.echo(
                f"  {len(failed)} job(s) failed or did not finish "
                f"(`psy status -v {name}` lists them with their logs)"
            )


@psy.command()
@taskdir_option
@click.option("--all", "all_tasks", is_flag=True, help="Clean every task.")
@click.argument("task", nargs=-1)
@_file_errors
def clean(taskdir: str, all_tasks: bool, task: tuple[str, ...]) -> None:
    """Delete all files generated for the named tasks (work directory and results)."""
    if not task and not all_tasks:
        raise click.UsageError("name the tasks to clean (`psy list` shows them), or pass --all")
    tasks, selected = _load(taskdir, task)
    problems = tasks.selection_failed
    for t in selected:
        backend = t.make_backend()
        with _task_lock(backend, create=False) as locked:
            if not locked:
                _err(
                    f"error: {t.name}: a `psy run` is working on this task; not cleaning "
                    "(wait for it to finish, then clean)"
                )
                problems = True
                continue
            backend.clean()
        click.echo(f"cleaned {t.name}")
    if problems:
        sys.exit(1)


@psy.command()
@taskdir_option
@click.argument("task", nargs=-1)
@_file_errors
def kill(taskdir: str, task: tuple[str, ...]) -> None:
    """Cancel the queued and running jobs of all tasks (or the named ones)."""
    tasks, selected = _load(taskdir, task)
    for t in selected:
        backend = t.make_backend()
        queued = backend.get_queued()
        if queued:
            _kill(t.scheduler, [s.id for s in queued])
        click.echo(f"{t.name}: killed {len(queued)} jobs")
    if tasks.selection_failed:
        sys.exit(1)


@psy.command(name="list")
@taskdir_option
def list_tasks(taskdir: str) -> None:
    """List the names of all tasks."""
    tasks, selected = _load(taskdir)
    for t in selected:
        click.echo(t.name)
    if tasks.selection_failed:
        sys.exit(1)


def _part_order(name: str):
    m = re.match(r"(\d+)", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


@psy.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.argument("merged", type=click.Path(dir_okay=True))
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace MERGED if it exists (default: keep its rows and add the new ones).",
)
def merge(directory: str, merged: str, overwrite: bool) -> None:
    """Merge all result files in DIRECTORY into the single file MERGED.

    The extension of MERGED selects the format of the inputs and the output.
    A task's own part files (``<workdir>/<task>/out``) are always pickle
    files; when DIRECTORY holds no file of MERGED's format, its ``.pkl``
    files are merged and converted. When MERGED exists already, its rows are
    kept and the merged rows appended (as psyrun 0.8 did), unless
    --overwrite is given; merging the same files twice appends them twice.
    """
    from psyrun.backend._splitmerge import write_merged
    from psyrun.store import PickleStore, get_store

    try:
        store = get_store(merged)
    except (ValueError, KeyError, ImportError) as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None
    target = os.path.abspath(merged)

    def files_with(ext: str) -> list[str]:
        return sorted(
            (
                e
                for e in os.listdir(directory)
                if os.path.splitext(e)[1].lower() == ext
                and not e.startswith(".")
                and os.path.abspath(os.path.join(directory, e)) != target
            ),
            key=_part_order,
        )

    ext = os.path.splitext(merged)[1].lower()
    sources, source_store = files_with(ext), store
    if not sources and ext != PickleStore.ext:
        # psy's own part files are pickle files whatever the task's store.
        sources, source_store = files_with(PickleStore.ext), PickleStore()
    if not sources:
        raise click.ClickException(f"no {ext} files in {directory!r} to merge")
    paths = [os.path.join(directory, e) for e in sources]
    base = merged if os.path.exists(merged) and not overwrite else None
    before = 0
    if base is not None:
        try:
            before = store.count_rows(merged)
        except Exception as exc:
            raise click.ClickException(
                f"{merged} exists but cannot be read ({type(exc).__name__}: {exc}); "
                "pass --overwrite to replace it or choose another name"
            ) from None
    rows = write_merged(
        store, merged, paths, keys=[], base=base, log=_err, source_store=source_store
    )
    if base is None:
        click.echo(f"merged {len(paths)} files ({rows} rows) into {merged}")
    else:
        click.echo(
            f"merged {len(paths)} files ({rows - before} rows) into {merged}, after the "
            f"{before} rows it held ({rows} rows now; --overwrite replaces instead)"
        )


_SCHEDULERS = {"immediaterun": "ImmediateRun", "slurm": "Slurm", "sqsub": "Sqsub"}


def _task_template(name: str, scheduler: str | None) -> str:
    from psyrun import scheduler as schedulers

    lines = [
        f'"""Task {name}: describe what it computes.',
        "",
        f"Run it with `psy run {name}`; `psy status {name}` shows progress.",
        '"""',
        "",
        "import numpy as np",
        "",
    ]
    if scheduler is None:
        lines += ["from psyrun import Param", ""]
    else:
        lines += [f"from psyrun import Param, {scheduler}", ""]
    lines += [
        "# The parameter space: * is the Cartesian product, + concatenates.",
        "pspace = Param(x=np.linspace(0.0, 1.0, 11)) * Param(trial=np.arange(3))",
        "",
        "# At most this many processing jobs, each with at least min_items assignments.",
        "max_jobs = 100",
        "min_items = 1",
        "",
    ]
    if scheduler is not None:
        cls = getattr(schedulers, scheduler)
        lines += [f"scheduler = {scheduler}()", "scheduler_args = {"]
        for key, value in dict(cls.USER_DEFAULT_ARGS).items():
            lines.append(f"    {key!r}: {value!r},")
        lines += ["}", ""]
    lines += [
        "",
        "def execute(x, trial):",
        '    """Evaluate one assignment and return a dict of outputs."""',
        "    rng = np.random.default_rng(trial)",
        "    return {'y': x**2 + 0.01 * rng.standard_normal()}",
        "",
    ]
    return "\n".join(lines)


@psy.command(name="new-task")
@taskdir_option
@click.option(
    "-s",
    "--scheduler",
    default=None,
    help="Scheduler to pre-fill (ImmediateRun, Slurm or Sqsub) with its default arguments.",
)
@click.argument("name")
def new_task(taskdir: str, scheduler: str | None, name: str) -> None:
    """Create a template task file task_NAME.py in the task directory."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise click.UsageError(
            f"task name {name!r} is not valid; use letters, digits, '_' and '-', "
            "starting with a letter"
        )
    if scheduler is not None:
        key = scheduler.lower()
        if key not in _SCHEDULERS:
            raise click.UsageError(
                f"unknown scheduler {scheduler!r}; choose one of {', '.join(_SCHEDULERS.values())}"
            )
        scheduler = _SCHEDULERS[key]
        if scheduler == "ImmediateRun":
            scheduler = None
    path = os.path.join(taskdir, f"task_{name}.py")
    if os.path.exists(path):
        raise click.ClickException(f"{path} exists already; choose another name or remove it")
    os.makedirs(taskdir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(_task_template(name, scheduler))
    click.echo(f"created {path}")


@psy.command()
@taskdir_option
@click.argument("task", nargs=-1)
def test(taskdir: str, task: tuple[str, ...]) -> None:
    """Evaluate one assignment of each task (or the named ones) directly.

    The task's scheduler is not used; the assignment runs in this process.
    """
    from psyrun.backend._splitmerge import call_setup

    tasks, selected = _load(taskdir, task)
    failures = 0
    for t in selected:
        if len(t.pspace) == 0:
            click.echo(f"{t.name}: the parameter space is empty; nothing to test")
            continue
        row = t.pspace[0]
        try:
            extra = call_setup(t, 0)
            result = t.execute(**row, **(extra or {}))
            if not isinstance(result, dict):
                raise TypeError(f"execute returned {type(result).__name__}; it must return a dict")
        except Exception:
            failures += 1
            _err(f"{t.name}: FAILED for {row}")
            _err(traceback.format_exc().rstrip())
            continue
        shown = {k: v for k, v in result.items() if k not in t.exclude_from_result}
        click.echo(f"{t.name}: ok, {row} -> {shown}")
    if failures or tasks.selection_failed:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
