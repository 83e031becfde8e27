"""The ``psy`` command: run, inspect and manage the tasks of a task directory.

Every subcommand takes ``--taskdir`` (default ``psy-tasks``). Mistakes a user
can make (a missing task directory, an unknown task name, a bad argument)
end with a one-line error and a non-zero exit status, never a traceback.
This module prints; the layers below (:mod:`psyrun.tasks`,
:mod:`psyrun.backend`) return values.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import traceback
import warnings
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


def _task_name(path: str) -> str | None:
    base = os.path.basename(path)
    if base.startswith("task_") and base.endswith(".py"):
        return base[5:-3]
    return None


def _load(taskdir: str, names: Sequence[str] = (), report_errors: bool = True):
    """Load the task directory (only the named tasks, if any); report problems; check `names`."""
    from psyrun.tasks import TaskConfigWarning, TaskDirError, load_tasks, task_files

    try:
        available = [_task_name(p) for p in task_files(taskdir)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TaskConfigWarning)
            # Named tasks: the other task files are not executed (nor their errors shown).
            tasks = load_tasks(taskdir, names=list(names) if names else None)
    except TaskDirError as exc:
        raise click.ClickException(str(exc)) from None
    if not available:
        raise click.ClickException(
            f"no task found in {taskdir!r}: task files are named task_<name>.py "
            "(the task_ prefix is required)"
        )
    for w in caught:
        if issubclass(w.category, TaskConfigWarning):
            _err(f"warning: {w.message}")
    failed = {_task_name(e.path) for e in tasks.errors}
    if report_errors:
        for error in tasks.errors:
            _err(f"error: cannot load {error}")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise click.ClickException(
            f"no task named {', '.join(map(repr, unknown))} in {taskdir!r} "
            f"(task files are task_<name>.py; tasks there: {', '.join(available)})"
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


class _Printer:
    """Prints what a run does: ``. <job>`` lines, or a bar counting rows on a terminal."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.bar = None
        self.use_bar = sys.stdout.isatty()
        self.shown = 0

    # RunEvents
    def info(self, text: str) -> None:
        self.close()
        click.echo(f"{self.task}: {text}")

    def warning(self, text: str) -> None:
        self.close()
        _err(f"warning: {self.task}: {text}")

    def skipped(self, job: str) -> None:
        click.echo(f"- {job}")

    def planned(self, n_rows: int, n_jobs: int) -> None:
        # On a terminal, a run evaluated here shows one bar counting rows (all jobs).
        if self.use_bar and n_rows > 0:
            self.bar = click.progressbar(length=n_rows, label=f"{self.task} rows", show_pos=True)
            self.bar.__enter__()

    def started(self, job: str) -> None:
        if self.bar is None:
            click.echo(f". {job}")

    def submitted(self, job: str, jobid: str) -> None:
        pass

    def progress(self, rows_done: int, rows_total: int) -> None:
        if not self.use_bar or rows_total <= 0:
            return
        if self.bar is None:
            self.bar = click.progressbar(
                length=rows_total, label=f"{self.task} rows", show_pos=True
            )
            self.bar.__enter__()
        done = min(rows_done, rows_total)
        if done > self.shown:
            self.bar.update(done - self.shown)
            self.shown = done

    def finished(self) -> None:
        self.close()

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
    Options such as --taskdir go after the command: `psy list --taskdir DIR`.
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
@click.option(
    "-j",
    "--jobs",
    "n_workers",
    type=click.IntRange(min=1),
    default=None,
    help="Run up to N jobs at once on this machine (LocalPool), whatever local "
    "scheduler the task names.",
)
@click.argument("task", nargs=-1)
@_file_errors
def run(taskdir: str, cont: bool, n_workers: int | None, task: tuple[str, ...]) -> None:
    """Run all tasks that are not up to date (or the named ones).

    Each job is printed prefixed with '.' when it runs and '-' when it is
    skipped because its results are up to date.
    """
    # Jobs run in forked children of this process: import what they need once, here.
    import psyrun.mapper
    import psyrun.worker  # noqa: F401
    from psyrun.runner import run_task

    tasks, selected = _load(taskdir, task)
    problems = tasks.selection_failed
    for t in selected:
        printer = _Printer(t.name)
        report = run_task(t, continue_=cont, events=printer, n_workers=n_workers)
        if report.outcome == "interrupted":
            _err(f"\n{t.name}: {report.message}")
            sys.exit(128 + (report.signum or 2))
        problems |= not report.ok
        _print_run_report(t.name, report)
    if problems:
        sys.exit(1)


def _print_run_report(name: str, report) -> None:
    if report.outcome == "queued":
        _err(f"{name}: {report.message}")
    elif report.outcome == "submitted":
        click.echo(f"{name}: submitted {len(report.jobs)} jobs (`psy status {name}` follows them)")
    elif report.outcome == "failed":
        failed = report.failed
        _err(f"error: {name}: {len(failed)} of {report.n_jobs} jobs failed or did not run:")
        for job in failed[:MAX_JOBS_LISTED]:
            _err(f"  {job.name}: {job.message}")
            _err(f"    log: {job.log}")
        if len(failed) > MAX_JOBS_LISTED:
            _err(f"  ... and {len(failed) - MAX_JOBS_LISTED} more (`psy status -v {name}`)")
        _err(
            f"Fix the cause, then `psy run -c {name}` evaluates what is missing "
            "and keeps what was computed."
        )
    elif report.message:
        _err(f"error: {name}: {report.message}")


@psy.command()
@taskdir_option
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="List missing assignments and jobs (-v -v: every job, not only the first ones).",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Redraw the status until the task is complete (exit 0) or jobs failed (exit 1).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Seconds between two redraws of --watch.",
)
@click.argument("task", nargs=-1)
@_file_errors
def status(
    taskdir: str, verbose: int, watch: bool, interval: float, task: tuple[str, ...]
) -> None:
    """Print how many assignments of each task (or the named ones) are done."""
    from psyrun.runner import task_status

    tasks, selected = _load(taskdir, task)
    if watch:
        _watch(selected, interval)
    for t in selected:
        report = task_status(t, missing=bool(verbose))
        progress = report.progress
        click.echo(f"{t.name}: {progress.completed} out of {progress.total} rows completed")
        _print_result_state(t.name, report)
        if report.running_pid is not None:
            pid = f" (pid {report.running_pid})" if report.running_pid else ""
            click.echo(
                f"  a `psy run`{pid} is working on this task now: {report.rows_this_run} rows "
                "evaluated so far in this run"
            )
        for note in progress.notes:
            _err(f"warning: {t.name}: {note}")
        if not os.path.isdir(report.workdir) and progress.total:
            click.echo(
                f"  nothing found in {report.workdir} (the workdir setting is relative to the "
                "directory psy is started from)"
            )
        if verbose:
            _print_provenance(t)
        if report.missing is not None:
            _print_missing(report.missing)
        _print_jobs(t.name, report.queued, report.failed, verbose)
    if tasks.selection_failed:
        sys.exit(1)


def _print_result_state(name: str, report) -> None:
    """Say where the completed rows are when the result file does not hold them all."""
    progress = report.progress
    if progress.unmerged:
        why = {"missing": "the result file does not exist", "damaged": "the result is damaged"}
        line = f"  {progress.unmerged} of them are only in part files"
        line += f" ({why[progress.result]})" if progress.result in why else ""
        if report.running_pid is None and not report.queued and progress.result != "damaged":
            line += f"; `psy run -c {name}` merges them"
        click.echo(line)


def _watch(selected: list, interval: float) -> None:
    """``psy status --watch``: follow one task until it has ended, then exit."""
    from psyrun.watch import watch

    if len(selected) != 1:
        raise click.UsageError("--watch follows one task: name it, e.g. `psy status --watch sq`")
    try:
        code = watch(selected[0], interval)
    except KeyboardInterrupt:
        click.echo()
        code = 130
    sys.exit(code)


def _print_provenance(t) -> None:
    """Print the main lines the result file records about its run (`psy status -v`)."""
    try:
        meta = t.store.read_metadata(t.resultfile) if t.store.exists(t.resultfile) else {}
    except Exception:
        return  # the unreadable result is reported among the notes
    if not meta:
        return
    where = f" on {meta['merge_host']}" if "merge_host" in meta else ""
    click.echo(
        f"  result written {meta.get('finished', '?')}{where} by psyrun "
        f"{meta.get('psyrun_version', '?')}, Python {meta.get('python_version', '?')}"
    )
    if "git_commit" in meta:
        dirty = " (uncommitted changes)" if meta.get("git_dirty") else ""
        click.echo(f"  git commit {meta['git_commit'][:12]}{dirty}")
    if "task_sha256" in meta:
        click.echo(f"  task file sha256 {meta['task_sha256'][:16]}...")


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


def _print_limited(lines_of, items: list, limit: int | None, name: str) -> None:
    """Print `lines_of(item)` for the first `limit` items, then how many more there are."""
    for item in items[:limit]:
        for line in lines_of(item):
            click.echo(line)
    if limit is not None and len(items) > limit:
        click.echo(f"    ... and {len(items) - limit} more (`psy status -v -v {name}`)")


def _print_jobs(name: str, queued: list, failed: list, verbose: int) -> None:
    from psyrun.runner import summarize_states

    limit = None if verbose >= 2 else MAX_JOBS_LISTED
    if queued and (verbose or len(queued) <= MAX_JOBS_LISTED):
        click.echo(f"  queued or running jobs ({len(queued)}):")
        _print_limited(lambda s: [f"    {s.name} (id {s.id}, {s.status})"], queued, limit, name)
    elif queued:
        click.echo(
            f"  jobs in the queue: {summarize_states(queued)} (`psy status -v {name}` lists them)"
        )
    if failed and verbose:
        click.echo(f"  failed jobs ({len(failed)}):")
        _print_limited(
            lambda job: [f"    {job.name}: {job.message}", f"      log: {job.log}"],
            failed,
            limit,
            name,
        )
    elif failed:
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
    from psyrun.runner import clean_task

    if not task and not all_tasks:
        raise click.UsageError("name the tasks to clean (`psy list` shows them), or pass --all")
    tasks, selected = _load(taskdir, task)
    problems = tasks.selection_failed
    for t in selected:
        if not clean_task(t):
            _err(
                f"error: {t.name}: a `psy run` is working on this task; not cleaning "
                "(wait for it to finish, then clean)"
            )
            problems = True
            continue
        click.echo(f"cleaned {t.name}")
    if problems:
        sys.exit(1)


@psy.command()
@taskdir_option
@click.argument("task", nargs=-1, required=True)
@_file_errors
def prune(taskdir: str, task: tuple[str, ...]) -> None:
    """Remove rows outside the parameter space from the named tasks' result files.

    `psy run -c` keeps rows whose assignment left the space (their data is
    not thrown away unasked); `psy status` counts them. This writes a new
    result file without them, reads it back, and only then replaces the old.
    """
    from psyrun.runner import prune_task

    tasks, selected = _load(taskdir, task)
    problems = tasks.selection_failed
    for t in selected:
        try:
            done = prune_task(t)
        except (ValueError, OSError) as exc:
            _err(f"error: {t.name}: {str(exc).splitlines()[0]}")
            problems = True
            continue
        if done is None:
            _err(f"error: {t.name}: a `psy run` is working on this task; not pruning")
            problems = True
            continue
        kept, removed = done
        click.echo(f"{t.name}: removed {removed} rows outside the space; {kept} rows kept")
    if problems:
        sys.exit(1)


@psy.command()
@taskdir_option
@click.argument("task", nargs=-1)
@_file_errors
def kill(taskdir: str, task: tuple[str, ...]) -> None:
    """Cancel the queued and running jobs of all tasks (or the named ones)."""
    from psyrun.runner import kill_task

    tasks, selected = _load(taskdir, task)
    for t in selected:
        n, note = kill_task(t)
        click.echo(f"{t.name}: killed {n} jobs" + (f" ({note})" if note else ""))
    if tasks.selection_failed:
        sys.exit(1)


@psy.command(name="list")
@taskdir_option
def list_tasks(taskdir: str) -> None:
    """List the names of all tasks (broken task files too, marked as such)."""
    tasks, selected = _load(taskdir, report_errors=False)
    rows = {t.name: t.name for t in selected}
    for error in tasks.errors:
        name = _task_name(error.path)
        if name is not None:
            rows[name] = f"{name} (broken: {error})"
        else:
            _err(f"error: cannot load {error}")
    for name in sorted(rows):
        click.echo(rows[name])


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
    A task's own part files (WORKDIR/TASK/out) are always pickle files; when
    DIRECTORY holds no file of MERGED's format, its .pkl files are merged and
    converted. When MERGED exists already, its rows are kept and the merged
    rows appended (as psyrun 0.8 did), unless --overwrite is given; merging
    the same files twice appends them twice.
    """
    from psyrun.merge import find_sources, write_merged
    from psyrun.store import PickleStore, get_store

    try:
        store = get_store(merged)
    except (ValueError, KeyError, ImportError) as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None
    ext = os.path.splitext(merged)[1].lower()
    sources, source_store = find_sources(directory, ext, exclude=merged), store
    if not sources and ext != PickleStore.ext:
        # psy's own part files are pickle files whatever the task's store.
        sources, source_store = find_sources(directory, PickleStore.ext), PickleStore()
    if not sources:
        raise click.ClickException(f"no {ext} files in {directory!r} to merge")
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
    try:
        rows = write_merged(
            store, merged, sources, keys=[], base=base, log=_err, source_store=source_store
        )
    except (TypeError, ValueError) as exc:
        # A value the output's format cannot hold (an object column into HDF5, ...).
        # The store names the temporary file it was writing: name the user's file.
        from psyrun.atomic import tmp_name

        text = str(exc).replace(tmp_name(os.path.abspath(merged)), merged)
        text = text.replace(tmp_name(merged), merged)
        raise click.ClickException(
            f"cannot merge into {merged}: {text}".splitlines()[0]
            + f"; {merged} was not written (choose a format that holds these values, "
            "such as .pkl)"
        ) from None
    except OSError as exc:
        # A full disk, or a file that did not read back: nothing was replaced.
        raise click.ClickException(
            f"cannot merge into {merged}: {str(exc).splitlines()[0]}; {merged} was left as it was"
        ) from None
    if base is None:
        click.echo(f"merged {len(sources)} files ({rows} rows) into {merged}")
    else:
        click.echo(
            f"merged {len(sources)} files ({rows - before} rows) into {merged}, after the "
            f"{before} rows it held ({rows} rows now; --overwrite replaces instead)"
        )


#: Schedulers `psy new-task --scheduler` writes templates for (by lower-case name).
_SCHEDULERS = {
    name.lower(): name
    for name in ("ImmediateRun", "LocalPool", "Slurm", "GridEngine", "PBS", "LSF", "Sqsub", "Dask")
}


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
        lines += ["from psyrun import Param", f"from psyrun.scheduler import {scheduler}", ""]
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
    help="Scheduler to pre-fill with its default arguments: "
    + ", ".join(_SCHEDULERS.values())
    + ".",
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
    tasks, selected = _load(taskdir, task)
    failures = 0
    for t in selected:
        if len(t.pspace) == 0:
            click.echo(f"{t.name}: the parameter space is empty; nothing to test")
            continue
        row = t.pspace[0]
        try:
            extra = t.run_setup(0)
            result = t.execute(**row, **(extra or {}))
        except Exception:
            failures += 1
            _err(f"{t.name}: FAILED for {row}")
            _err(traceback.format_exc().rstrip())
            continue
        if not isinstance(result, dict):
            failures += 1
            _err(
                f"{t.name}: FAILED for {row}: execute returned {type(result).__name__} "
                f"({result!r:.60}); it must return a dict of outputs"
            )
            continue
        shown = {k: v for k, v in result.items() if k not in t.exclude_from_result}
        click.echo(f"{t.name}: ok, {row} -> {shown}")
    if failures or tasks.selection_failed:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
