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


def _printable(text: str) -> str:
    """Return `text` with unprintable characters (newlines, escapes, surrogates) escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


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
            _err(f"error: cannot load {_printable(str(error))}")
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
    "--stale",
    is_flag=True,
    help="With -c (implied): also recompute the rows computed by an older version "
    "of the task file's code.",
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
def run(
    taskdir: str, cont: bool, stale: bool, n_workers: int | None, task: tuple[str, ...]
) -> None:
    """Run all tasks that are not up to date (or the named ones).

    Each job is printed prefixed with '.' when it runs and '-' when it is
    skipped because its results are up to date.
    """
    # Jobs run in forked children of this process: import what they need once, here.
    import psyrun.mapper
    import psyrun.worker  # noqa: F401
    from psyrun.run.runner import run_task

    tasks, selected = _load(taskdir, task)
    problems = tasks.selection_failed
    for t in selected:
        printer = _Printer(t.name)
        report = run_task(
            t, continue_=cont or stale, events=printer, n_workers=n_workers, stale=stale
        )
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
    elif report.outcome == "partial":
        _err(f"{name}: {report.message}")
        for job in report.partial[:MAX_JOBS_LISTED]:
            _err(f"  {job.name}: {job.message}")
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
    from psyrun.run.runner import task_status

    tasks, selected = _load(taskdir, task)
    if watch:
        _watch(selected, interval)
    for t in selected:
        report = task_status(t, missing=bool(verbose))
        progress = report.progress
        stale = (
            f" ({progress.stale} by an older version of the task file)"
            if getattr(progress, "stale", 0)
            else ""
        )
        click.echo(f"{t.name}: {progress.completed} out of {progress.total} rows completed{stale}")
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
        _print_failed_rows(t.name, progress, verbose)
        if report.missing is not None:
            _print_missing(report.missing)
        _print_jobs(t.name, report.queued, report.failed, verbose, t)
        _print_partial(t.name, getattr(report, "partial", []))
    if tasks.selection_failed:
        sys.exit(1)


def _print_failed_rows(name: str, progress, verbose: int) -> None:
    """Failed rows on record (psyrun.results.failed_rows): a count; -v by cause and by error."""
    n = getattr(progress, "failed_rows", 0)
    if not n:
        return
    click.echo(
        f"  {n} of the missing rows failed (on record with their error; "
        f"`psy run -c {name}` evaluates them again)"
    )
    if not verbose:
        return
    from psyrun.results.failed_rows import summarize

    by_cause, by_error = summarize(progress.failed_errors)
    click.echo("  failed rows by cause: " + ", ".join(f"{c} {k}" for c, k in _counted(by_cause)))
    click.echo("  failed rows by error:")
    limit = None if verbose >= 2 else MAX_JOBS_LISTED
    errors = _counted(by_error)
    _print_limited(lambda e: [f"    {e[1]:>6}  {e[0]}"], errors, limit, name)


def _counted(counter) -> list[tuple[str, int]]:
    """Counter items, the most frequent first (then by name)."""
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))


def _print_partial(name: str, partial: list) -> None:
    """Jobs that stopped before their time limit with rows left (psyrun.run.walltime)."""
    if not partial:
        return
    click.echo(
        f"  {len(partial)} job(s) stopped before their time limit with rows left (partial, "
        f"not failed; `psy run -c {name}` evaluates the rest):"
    )
    _print_limited(lambda job: [f"    {job.name}: {job.message}"], partial, MAX_JOBS_LISTED, name)


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
    from psyrun.run.watch import watch

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


def _job_line(s) -> list[str]:
    reason = getattr(s, "reason", None)
    return [f"    {s.name} (id {s.id}, {s.status}" + (f": {reason})" if reason else ")")]


def _print_jobs(name: str, queued: list, failed: list, verbose: int, task=None) -> None:
    from psyrun.run.defaults import scheduler_for
    from psyrun.run.runner import describe_waits, summarize_states

    # The scheduler only names the command that releases held jobs.
    held = task is not None and any(getattr(s, "held", False) for s in queued)
    scheduler = scheduler_for(task) if held else None
    limit = None if verbose >= 2 else MAX_JOBS_LISTED
    if queued and (verbose or len(queued) <= MAX_JOBS_LISTED):
        click.echo(f"  queued or running jobs ({len(queued)}):")
        _print_limited(_job_line, queued, limit, name)
    elif queued:
        click.echo(
            f"  jobs in the queue: {summarize_states(queued)} (`psy status -v {name}` lists them)"
        )
    waits = describe_waits(queued, scheduler, name)
    if waits:
        click.echo(f"  what holds them up: {waits}")
    blocked = [s for s in queued if str(s.status) == "blocked"]
    if blocked and not failed:
        click.echo(
            "  every job they wait for ended without a failure psyrun saw, yet the batch "
            "system counts one as failed (e.g. its time limit passed as it ended); "
            f"`psy run -c {name}` cancels the blocked jobs and submits them again"
        )
    elif blocked:
        click.echo(f"  `psy run -c {name}` cancels the blocked jobs and submits them again")
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
    """Delete all files generated for the named tasks (work directory and results).

    A task with jobs queued or running is not cleaned (`psy kill` them first).
    """
    from psyrun.run.runner import JobsInQueue, clean_task

    if not task and not all_tasks:
        raise click.UsageError("name the tasks to clean (`psy list` shows them), or pass --all")
    tasks, selected = _load(taskdir, task)
    problems = tasks.selection_failed
    for t in selected:
        try:
            cleaned, notes = clean_task(t)
        except JobsInQueue as exc:
            _err(f"error: {t.name}: {exc}")
            problems = True
            continue
        if not cleaned:
            _err(
                f"error: {t.name}: a `psy run` is working on this task; not cleaning "
                "(wait for it to finish, then clean)"
            )
            problems = True
            continue
        for note in notes:
            _err(f"warning: {t.name}: {note}")
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
    from psyrun.run.runner import prune_task

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
    from psyrun.run.runner import kill_task

    tasks, selected = _load(taskdir, task)
    for t in selected:
        n, note = kill_task(t)
        click.echo(f"{t.name}: killed {n} jobs" + (f" ({note})" if note else ""))
    if tasks.selection_failed:
        sys.exit(1)


@psy.command(short_help="Write one HTML page about TASK: status, rows and plots.")
@taskdir_option
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    default=None,
    help="The HTML file to write (default: <task>-report.html here); an existing file "
    "is replaced only when it is a psyrun report.",
)
@click.argument("task")
@_file_errors
def report(taskdir: str, output: str | None, task: str) -> None:
    """Write one self-contained HTML page about TASK: status, provenance, rows and plots.

    The page needs no server and no other file (plots are inline images); it
    works for a run in progress and for a finished one.
    """
    from psyrun.report import ReportRefused, ReportWriteError, write_report

    _, selected = _load(taskdir, [task])
    try:
        path, data = write_report(selected[0], output)
    except ReportRefused as exc:
        raise click.ClickException(str(exc)) from None
    except ReportWriteError as exc:
        raise click.ClickException(
            f"cannot write {exc.filename}: {exc.strerror}; nothing was written under that name"
        ) from None
    for note in data.status.notes + data.read_notes:
        _err(f"warning: {task}: {note}")
    s = data.status
    click.echo(f"wrote {path}: {s.completed} of {s.total} rows done")


@psy.command(name="list")
@taskdir_option
def list_tasks(taskdir: str) -> None:
    """List the names of all tasks (broken task files too, marked as such)."""
    tasks, selected = _load(taskdir, report_errors=False)
    rows = {t.name: t.name for t in selected}
    for error in tasks.errors:
        name = _task_name(error.path)
        if name is not None:
            # One line per task, whatever the file name holds (a newline, escapes).
            rows[name] = f"{_printable(name)} (broken: {_printable(str(error))})"
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
@_file_errors
def merge(directory: str, merged: str, overwrite: bool) -> None:
    """Merge all result files in DIRECTORY into the single file MERGED.

    The extension of MERGED selects the format of the inputs and the output.
    A task's own part files (WORKDIR/TASK/out) are always pickle files; when
    DIRECTORY holds no file of MERGED's format, its .pkl files are merged and
    converted. When MERGED exists already, its rows are kept and the merged
    rows appended (as psyrun 0.8 did), unless --overwrite is given; merging
    the same files twice appends them twice.
    """
    from psyrun.paths import task_root_of
    from psyrun.run.runner import task_lock

    # Parts or a result of a task: not while a `psy run` or `psy clean` works on it.
    roots = {p.root: p for p in map(task_root_of, (directory, merged)) if p is not None}
    with contextlib.ExitStack() as stack:
        for paths in roots.values():
            if not stack.enter_context(task_lock(paths, create=False)):
                raise click.ClickException(
                    f"a `psy run` or `psy clean` is working on the task in {paths.root}; "
                    "wait for it to finish, then merge"
                )
        if not os.path.isdir(directory):
            # Removed since the arguments were checked (a `psy clean` just finished).
            raise click.ClickException(f"directory {directory!r} does not exist (any more)")
        _merge(directory, merged, overwrite)


def _merge(directory: str, merged: str, overwrite: bool) -> None:
    from psyrun.results.merge import find_sources, write_merged
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


def _scheduler_class(spec: str, taskdir: str) -> tuple[str, str, type] | None:
    """Return ``(module, class name, class)`` of ``-s SPEC``; None for ImmediateRun (the default).

    `SPEC` is one of psyrun's schedulers by name (any case) or ``module.Class``,
    for example a scheduler of the user's own: its module is looked for also
    in the task directory (where task files import it from) and the current
    directory.

    Raises
    ------
    click.UsageError
        When the module or the class does not exist, or is not a scheduler.
    """
    import importlib

    from psyrun.scheduler import Scheduler

    if spec.lower() in _SCHEDULERS:
        module, name = "psyrun.scheduler", _SCHEDULERS[spec.lower()]
    elif "." in spec.strip("."):
        module, _, name = spec.rpartition(".")
    else:
        raise click.UsageError(
            f"unknown scheduler {spec!r}; choose one of {', '.join(_SCHEDULERS.values())}, "
            "or name a class as module.Class"
        )
    extra = [d for d in (os.path.abspath(taskdir), os.getcwd()) if d not in sys.path]
    sys.path.extend(extra)
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import module {module!r} for --scheduler: {exc}") from None
    except AttributeError:
        raise click.UsageError(f"module {module!r} has no class {name!r} (--scheduler)") from None
    finally:
        for d in extra:
            sys.path.remove(d)
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise click.UsageError(
            f"{module}.{name} is not a scheduler (a subclass of psyrun.scheduler.Scheduler)"
        )
    if cls.__name__ == "ImmediateRun" and cls.__module__.startswith("psyrun."):
        return None
    return module, name, cls


def _task_template(name: str, scheduler: tuple[str, str, type] | None) -> str:
    import shlex

    # The name goes into a docstring: a quote in it must not end the string.
    shown = name.replace("\\", "\\\\").replace('"', '\\"')
    quoted = shlex.quote(name).replace("\\", "\\\\").replace('"', '\\"')
    lines = [
        f'"""Task {shown}: describe what it computes.',
        "",
        f"Run it with `psy run {quoted}`; `psy status {quoted}` shows progress.",
        '"""',
        "",
        "import numpy as np",
        "",
        "from psyrun import Param",
    ]
    if scheduler is not None:
        module, cls_name, _ = scheduler
        lines.append(f"from {module} import {cls_name}")
    lines += [
        "",
        "# The parameter space: * is the Cartesian product, + concatenates.",
        "pspace = Param(x=np.linspace(0.0, 1.0, 11)) * Param(trial=np.arange(3))",
        "",
        "# At most this many processing jobs, each with at least min_items assignments.",
        "max_jobs = 100",
        "min_items = 1",
        "",
    ]
    if scheduler is not None:
        module, cls_name, cls = scheduler
        lines += [f"scheduler = {cls_name}()", "scheduler_args = {"]
        for key, value in dict(getattr(cls, "USER_DEFAULT_ARGS", {}) or {}).items():
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
    + ", or any scheduler class as module.Class.",
)
@click.argument("name")
def new_task(taskdir: str, scheduler: str | None, name: str) -> None:
    """Create a template task file task_NAME.py in the task directory."""
    from psyrun.paths import UnsafePathError, check_task_name

    try:
        # The one rule that loading the task applies too.
        check_task_name(name)
    except UnsafePathError as exc:
        raise click.UsageError(
            str(exc).replace("rename the file task_<name>.py", "choose another")
        ) from None
    resolved = _scheduler_class(scheduler, taskdir) if scheduler is not None else None
    path = os.path.join(taskdir, f"task_{name}.py")
    if os.path.exists(path):
        raise click.ClickException(f"{path} exists already; choose another name or remove it")
    os.makedirs(taskdir, exist_ok=True)
    with open(path, "x", encoding="utf-8") as f:
        f.write(_task_template(name, resolved))
    click.echo(f"created {path}")


@psy.command()
@taskdir_option
@click.argument("task", nargs=-1)
def test(taskdir: str, task: tuple[str, ...]) -> None:
    """Evaluate the first assignment of each task (or the named ones) as a job would.

    The row is evaluated by the task's backend as a process job evaluates it
    (``setup(0)``, a vectorized execute gets arrays, in the task file's
    directory) and checked against the task's store; it runs in this
    process, without the scheduler, and nothing is written.
    """
    tasks, selected = _load(taskdir, task)
    failures = 0
    for t in selected:
        if len(t.pspace) == 0:
            click.echo(f"{t.name}: the parameter space is empty; nothing to test")
            continue
        row = t.pspace[0]
        problem, outputs = _test_row(t)
        if problem is not None:
            failures += 1
            _err(f"{t.name}: FAILED for {row}: {problem}")
            continue
        click.echo(f"{t.name}: ok, {row} -> {outputs}")
    if failures or tasks.selection_failed:
        sys.exit(1)


def _test_row(task) -> tuple[str | None, dict]:
    """Evaluate the first row of `task` as a process job; return (problem or None, outputs)."""
    from psyrun.backend.splitmerge import SplitMergeBackend
    from psyrun.mapper import is_return_type_error
    from psyrun.run.defaults import make_backend
    from psyrun.run.failures import RowFailures

    backend = make_backend(task)
    if not isinstance(backend, SplitMergeBackend):
        # A backend of its own may evaluate rows differently; the built-in way is
        # the closest to what its jobs do.
        from psyrun.backend.distribute import DistributeBackend

        backend = DistributeBackend(task)
    arrays = task.pspace.to_arrays(0, 1)
    rows = RowFailures(max_printed=1, quiet=is_return_type_error)
    started_in = os.getcwd()
    try:
        # Jobs run in the task file's directory (psyrun.worker).
        os.chdir(task.taskdir)
        extra = task.run_setup(0)
        result = backend.evaluate(arrays, extra, rows, job=backend.paths.job_name("test"))
        if result:
            try:
                backend.check_block(result)
                from psyrun.dims import check_output_dims

                check_output_dims(task.dims, result, task.pspace.keys())
            except (TypeError, ValueError) as exc:
                # The message names the key and what to do: no traceback needed.
                return f"{type(exc).__name__}: {exc}", {}
    except Exception as exc:
        _err(traceback.format_exc().rstrip())
        return f"{type(exc).__name__}: {exc}", {}
    except SystemExit as exc:
        _err(traceback.format_exc().rstrip())
        return f"the task's code called sys.exit({exc.code!r}), which would end the job", {}
    finally:
        os.chdir(started_in)
    if rows.count or not result:
        return rows.first or "execute returned no result", {}
    import numpy as np

    keys = set(task.pspace.keys())
    # Shown as execute returned them: NumPy scalars as Python numbers.
    return None, {
        k: v[0].item() if isinstance(v[0], np.generic) else v[0]
        for k, v in result.items()
        if k not in keys
    }


if __name__ == "__main__":  # pragma: no cover
    main()
