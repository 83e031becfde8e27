"""Running a task, and the rules of ``psy run``, ``psy status``, ``psy kill``, ``psy clean``.

Running a task from Python is one call::

    from psyrun.run.runner import run_task
    from psyrun.tasks import load_tasks

    report = run_task(load_tasks("psy-tasks")["square"])
    print(report.outcome, report.failed)

:func:`run_task` holds every rule of ``psy run``: it takes the task's lock (a
second run of the same task refuses), does not submit again while jobs of the
last run are still queued, cancels jobs blocked by a failed dependency,
refuses to overwrite out-of-date results when ``overwrite_dirty`` is False,
asks the backend for a plan (nothing to do when the results are up to date),
submits the job graph, and for a scheduler that runs jobs under this process
(:attr:`psyrun.scheduler.Scheduler.attached`) waits for them and names the
failed ones. It returns a :class:`RunReport`; what happens along the way is
told to a :class:`RunEvents` object (the ``psy`` command prints it).

SIGTERM (and SIGINT) during a run stop every job this process started, release
the lock and end the run with outcome ``"interrupted"``; ``psy run -c`` then
finishes the rest, every row exactly once.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from psyrun.backend.base import FailedJob, TaskProgress
from psyrun.paths import check_result_target
from psyrun.run.defaults import local_job_cap, make_backend, scheduler_for

__all__ = [
    "Interrupted",
    "JobsInQueue",
    "RunEvents",
    "RunReport",
    "StatusReport",
    "clean_task",
    "kill_task",
    "prune_task",
    "run_task",
    "task_status",
]

#: Outcomes of :func:`run_task` that are not a problem.
GOOD_OUTCOMES = frozenset({"completed", "submitted", "up-to-date", "queued", "partial"})


class Interrupted(KeyboardInterrupt):
    """A signal (SIGTERM, SIGINT) asked the run to stop; ``signum`` tells which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunEvents:
    """Receives what happens during :func:`run_task`; every method does nothing here.

    Subclass it to print or log (the ``psy`` command does).
    """

    def info(self, text: str) -> None:
        """Tell the user something."""

    def warning(self, text: str) -> None:
        """Warn the user."""

    def skipped(self, job: str) -> None:
        """`job` does not run: its results are up to date."""

    def planned(self, n_rows: int, n_jobs: int) -> None:
        """Announce that the run evaluates `n_rows` rows with `n_jobs` jobs (before any starts)."""

    def started(self, job: str) -> None:
        """`job` is being submitted (an attached scheduler may run it now)."""

    def submitted(self, job: str, jobid: str) -> None:
        """`job` was submitted with id `jobid`."""

    def progress(self, rows_done: int, rows_total: int) -> None:
        """Rows evaluated so far by the jobs of this run (called while waiting)."""

    def finished(self) -> None:
        """No more events come for this run."""


@dataclass
class RunReport:
    """How :func:`run_task` ended.

    Attributes
    ----------
    task : str
        The task's name.
    outcome : str
        ``"completed"`` (an attached scheduler ran every job), ``"failed"``
        (some jobs failed: see `failed`), ``"partial"`` (no job failed, but
        some stopped before their time limit with rows left: see
        `partial`), ``"submitted"`` (handed to a batch system),
        ``"up-to-date"``, ``"queued"`` (jobs of the last run are still
        queued: nothing submitted), ``"dirty"`` (out-of-date results
        and ``overwrite_dirty = False``), ``"locked"`` (another run holds the
        task), ``"refused"`` (the task cannot run as asked) or
        ``"interrupted"``.
    message : str
        What the user should know about the outcome (empty when nothing).
    jobs : dict of str to str
        Job name -> id of the jobs submitted.
    failed : list of FailedJob
        The failed jobs (outcome ``"failed"``).
    n_jobs : int
        Jobs in the plan.
    signum : int or None
        The signal that interrupted the run.
    partial : list of FailedJob
        Jobs that stopped before their time limit with rows left
        (:mod:`psyrun.run.walltime`); not failed.
    """

    task: str
    outcome: str
    message: str = ""
    jobs: dict[str, str] = field(default_factory=dict)
    failed: list[FailedJob] = field(default_factory=list)
    n_jobs: int = 0
    signum: int | None = None
    partial: list[FailedJob] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True unless the outcome is a problem for the user to act on."""
        return self.outcome in GOOD_OUTCOMES


@contextlib.contextmanager
def task_lock(backend, create: bool = True) -> Iterator[bool]:
    """Hold the task's run lock; yield False (without waiting) when another psy holds it.

    Two ``psy run`` (or a ``psy run`` and a ``psy clean``) of one task at once
    would delete each other's part files; the second one must refuse. With
    `create` the task's work directory is made (and claimed,
    :meth:`psyrun.paths.TaskPaths.make_root`) when missing; without, a task
    with no work directory yields True without locking.
    """
    import fcntl

    # A backend, or the TaskPaths of a work directory (`psy merge` of a task's parts).
    paths = getattr(backend, "paths", backend)
    if not os.path.isdir(paths.root) and not create:
        yield True
        return
    while True:
        paths.make_root()
        fd = os.open(paths.run_lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            same = os.fstat(fd).st_ino == os.stat(paths.run_lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        # A `psy clean` removed the lock file while we waited for it: lock the new one.
        os.close(fd)
    try:
        # For `psy status`: which process runs the task (flock does not care).
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        yield True
    finally:
        os.close(fd)


def running_pid(backend) -> int | None:
    """Return the pid of the ``psy run`` holding the task's lock, or None when no run holds it."""
    import fcntl

    path = backend.paths.run_lock
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def _signals_raise_interrupted() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _local_pool(task, n_workers: int):
    """Return the LocalPool that ``psy run -j N`` uses instead of the task's scheduler."""
    scheduler = scheduler_for(task)
    if not getattr(scheduler, "local", False):
        raise ValueError(
            f"-j/--jobs runs jobs on this machine, but task {task.name!r} uses the scheduler "
            f"{type(scheduler).__name__}, which submits them to a cluster; drop -j (the "
            "cluster runs the jobs in parallel) or set scheduler = ImmediateRun()"
        )
    from psyrun.scheduler.localpool import LocalPool

    return LocalPool(n_workers)


def run_task(
    task,
    continue_: bool = False,
    events: RunEvents | None = None,
    n_workers: int | None = None,
    stale: bool = False,
) -> RunReport:
    """Run `task` as ``psy run`` does; return how it ended.

    Parameters
    ----------
    task : psyrun.tasks.TaskDef
        The task (see :func:`psyrun.tasks.load_tasks`).
    continue_ : bool
        Keep the results computed so far and evaluate only missing
        assignments (``psy run -c``).
    events : RunEvents, optional
        Receives messages and progress while the run goes.
    n_workers : int, optional
        Run up to this many jobs at once on this machine with
        :class:`psyrun.scheduler.LocalPool` (``psy run -j N``) instead of the
        task's scheduler; refused (outcome ``"refused"``) for a cluster
        scheduler.
    stale : bool
        With `continue_`, also evaluate again the rows computed by an older
        version of the task's code (``psy run -c --stale``).

    Returns
    -------
    RunReport
    """
    events = events or RunEvents()
    backend = make_backend(task)
    try:
        scheduler = scheduler_for(task) if n_workers is None else _local_pool(task, n_workers)
        # Before anything is written: an existing resultfile must be a result.
        check_result_target(task, backend.paths)
        backend.paths.make_root()
    except ValueError as exc:
        return RunReport(task.name, "refused", str(exc))
    with task_lock(backend) as locked:
        if not locked:
            return RunReport(
                task.name,
                "locked",
                f"another `psy run` or `psy clean` is working on this task (it holds the lock "
                f"on {backend.paths.run_lock}); wait for it to finish, then run again.",
            )
        try:
            with _signals_raise_interrupted():
                return _run_locked(task, backend, scheduler, continue_, events, stale)
        except KeyboardInterrupt as exc:
            return _interrupted(task, backend, scheduler, exc)
        finally:
            events.finished()


def _interrupted(task, backend, scheduler, exc: KeyboardInterrupt) -> RunReport:
    signum = getattr(exc, "signum", signal.SIGINT)
    if getattr(scheduler, "attached", False):
        with contextlib.suppress(Exception):
            scheduler.shutdown(cancel=True)
        where = "every job this run started was stopped"
    else:
        where = (
            "jobs already submitted stay in the cluster's queue "
            f"(`psy status {task.name}` follows them, `psy kill {task.name}` cancels them)"
        )
    # Counted after the jobs stopped: they write their last rows as they go.
    kept = backend.rows_evaluated()
    return RunReport(
        task.name,
        "interrupted",
        f"interrupted ({signal.Signals(signum).name}); {where}. {kept} rows evaluated in this "
        f"run are kept; `psy run -c {task.name}` continues with the rest.",
        signum=int(signum),
    )


def summarize_states(statuses) -> str:
    """Return ``'2 queued, 1 running'``-style counts of the states of `statuses`."""
    counts = Counter(str(s.status) for s in statuses)
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def describe_waits(statuses, scheduler, task: str, advice: bool = True) -> str:
    """Say what holds the jobs in `statuses` up; ``''`` when nothing unusual.

    Held jobs are counted with the command that releases them (when the
    scheduler has one) and, with `advice`, how to cancel them; other reasons
    the batch system gives are counted by reason.
    """
    held = [s for s in statuses if getattr(s, "held", False)]
    parts = []
    if held:
        kinds = sorted({_bare(s.reason) for s in held if s.reason})
        text = f"{len(held)} held" + (f" ({', '.join(kinds)})" if kinds else "")
        ids = sorted({_array_part(s.id, scheduler) for s in held}, key=_id_order)
        shown = " ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
        command = getattr(scheduler, "release_command", None)
        if command:
            text += f", which start only when released: `{' '.join(command)} {shown}`"
        else:
            text += f", which start only when released (ids {shown})"
        if advice:
            text += f"; `psy kill {task}` cancels them"
        parts.append(text)
    other = [s for s in statuses if not getattr(s, "held", False) and getattr(s, "reason", None)]
    if other:
        counts = Counter(s.reason for s in other)
        parts.extend(
            f"{n} {'job' if n == 1 else 'jobs'}: {reason}" for reason, n in counts.most_common()
        )
    return "; ".join(parts)


def _bare(reason: str) -> str:
    """``'held (JobHeldUser)'`` -> ``'JobHeldUser'`` (other texts unchanged)."""
    if reason.startswith("held (") and reason.endswith(")"):
        return reason[len("held (") : -1]
    return reason


def _array_part(jobid: str, scheduler) -> str:
    """Return the id that names the whole array of an array task (release and kill take it)."""
    whole_array = getattr(scheduler, "whole_array", None)
    return whole_array(jobid) if whole_array is not None else jobid


def _id_order(jobid: str):
    digits = "".join(c if c.isdigit() else " " for c in jobid).split()
    return [int(d) for d in digits], jobid


def _run_locked(
    task, backend, scheduler, cont: bool, events: RunEvents, stale: bool = False
) -> RunReport:
    name = task.name
    held = backend.get_queued(scheduler)
    queued = [s for s in held if s.status.will_run]
    if queued:
        waits = describe_waits(queued, scheduler, name, advice=False)
        return RunReport(
            name,
            "queued",
            f"jobs of the last run are still in the queue ({summarize_states(queued)}); not "
            f"submitting again. `psy status -v {name}` lists them, `psy kill {name}` "
            "cancels them." + (f" Of these, {waits}." if waits else ""),
        )
    live = _unaccounted_leases(backend, held)
    if live:
        return RunReport(
            name,
            "running",
            f"{len(live)} job(s) of the last run may still be running, though no scheduler "
            f"lists them: {'; '.join(lease.describe() for lease in live)}. Not submitting "
            "beside them (rows would be evaluated twice). Wait until they have ended (`psy "
            f"status {name}` lists them while they live), or stop them on their host, then "
            "run again.",
        )
    blocked = [s.id for s in held if s.status.in_queue and not s.status.will_run]
    if blocked:
        # They wait for a job that failed and can never run; this run replaces them.
        scheduler.kill_jobs(blocked)
        events.info(f"cancelled {len(blocked)} blocked jobs (a job they needed failed)")
    lingering = backend.get_lingering(scheduler)
    if lingering:
        # Failed jobs the batch system keeps (Grid Engine's Eqw) would run
        # again beside this run if someone cleared their error.
        scheduler.kill_jobs(lingering)
        events.info(f"deleted {len(lingering)} failed jobs the batch system still listed")
    if (
        not cont
        and not task.overwrite_dirty
        and backend.has_results()
        and not backend.is_current()
    ):
        changed = backend.changed_dependencies()
        why = (
            f"{', '.join(changed)} changed since they were computed"
            if changed
            else "the last run did not finish"
        )
        return RunReport(
            name,
            "dirty",
            f"the results in {backend.paths.root} are out of date ({why}) and "
            "overwrite_dirty is False, so they are not overwritten. `psy run -c "
            f"{name}` keeps them and adds the missing rows (rows already computed are not "
            f"recomputed with the changed task); `psy clean {name}` removes them; or set "
            "overwrite_dirty = True.",
        )
    if stale and "stale" not in inspect.signature(backend.plan).parameters:
        # Only backends that record versions (psyrun.run.versions) take `stale`.
        return RunReport(
            name,
            "refused",
            f"the backend {type(backend).__name__} cannot recompute only stale rows; run "
            f"`psy run {name}` to recompute every row",
        )
    from psyrun.run.attempts import begin_chain

    # Round 1 of the run (automatic rounds with max_attempts > 1: psyrun.run.attempts).
    begin_chain(backend)
    # On this machine a task that leaves max_jobs at its default gets one process
    # job per job slot (psyrun.run.defaults.local_job_cap); clusters keep max_jobs.
    backend.job_cap = local_job_cap(task, scheduler)
    backend.job_slots = getattr(scheduler, "job_slots", None)
    try:
        plan = backend.plan(cont, stale=True) if stale else backend.plan(cont)
    except ValueError as exc:
        return RunReport(name, "refused", str(exc))
    if plan.up_to_date:
        for job in plan.graph.names:
            events.skipped(job)
        _warn_stale(backend, events)
        return RunReport(name, "up-to-date", n_jobs=len(plan.graph))
    from psyrun.run.attempts import chain_warning, record_chain_start

    # A run without -c (or with --stale) computes every row with the current code.
    record_chain_start(backend, stale=stale or not cont)
    warning = chain_warning(task, scheduler)
    if warning:
        events.warning(warning)
    attached = bool(getattr(scheduler, "attached", False))
    events.planned(plan.n_rows if attached else 0, len(plan.graph))
    if attached:
        _preload_store(task.store)
        scheduler.monitor = lambda: events.progress(backend.rows_evaluated(), plan.n_rows)
        scheduler.notify = events.warning
    ids = None
    try:
        ids = backend.submit(
            plan.graph, scheduler, on_start=events.started, on_submitted=events.submitted
        )
        if attached:
            scheduler.wait(list(ids.values()))
            events.progress(backend.rows_evaluated(), plan.n_rows)
            if task.max_attempts > 1:
                from psyrun.run.attempts import run_more_rounds

                ids = run_more_rounds(backend, scheduler, events, ids, scheduler.wait)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        left = (
            ""
            if attached or ids is not None
            else f"; jobs the batch system accepted before the failure (perhaps also the one "
            f"being submitted) stay in its queue: `psy status {name}` shows them, "
            f"`psy kill {name}` cancels them"
        )
        doing = "submitting jobs" if ids is None else "waiting for the jobs"
        return RunReport(
            name,
            "refused",
            f"{doing} failed: {type(exc).__name__}: {exc}{left}",
            jobs=ids or {},
            n_jobs=len(plan.graph),
        )
    finally:
        if attached:
            scheduler.monitor = None
            scheduler.notify = None
    if not attached:
        if cont:
            _warn_stale(backend, events)
        return RunReport(name, "submitted", jobs=ids, n_jobs=len(plan.graph))
    _warn_stale(backend, events)
    failed = backend.get_failed([])
    for job in failed:
        result = scheduler.result(ids[job.name]) if job.name in ids else None
        if result is not None and result.status == "blocked":
            job.message = "not run: a job it depends on failed"
    partial = backend.get_partial() if hasattr(backend, "get_partial") else []
    outcome = "failed" if failed else "partial" if partial else "completed"
    message = (
        f"{len(partial)} job(s) stopped before their time limit with rows left; "
        f"`psy run -c {name}` evaluates the rest"
        if partial and not failed
        else ""
    )
    return RunReport(
        name, outcome, message, jobs=ids, failed=failed, n_jobs=len(plan.graph), partial=partial
    )


def _warn_stale(backend, events: RunEvents) -> None:
    """Tell how many stored rows an older version of the task's code computed (if any)."""
    with contextlib.suppress(Exception):
        text = backend.stale_note()
        if text:
            events.warning(text)


def _unaccounted_leases(backend, held) -> list:
    """Live job leases (:mod:`psyrun.run.lease`) of jobs that no scheduler lists in `held`."""
    from psyrun.run.lease import live_leases

    listed = {s.name for s in held}
    return [lease for lease in live_leases(backend.paths.status_dir) if lease.job not in listed]


def _preload_store(store) -> None:
    """Import the store's library once here, so that forked jobs inherit it."""
    with contextlib.suppress(ImportError):
        store.preload()


@dataclass
class StatusReport:
    """What ``psy status`` reports for one task.

    Attributes
    ----------
    progress : TaskProgress
        Rows done out of the space's rows, with notes.
    missing : ParameterSpace or None
        The missing assignments (when asked for).
    queued : list of JobStatus
        Jobs the scheduler still holds.
    failed : list of FailedJob
        Jobs of the last run that failed or did not finish.
    running_pid : int or None
        The pid of a ``psy run`` working on the task now (0: unknown pid).
    workdir : str
        The task's work directory looked in.
    rows_this_run : int
        Rows evaluated so far by the run in progress.
    partial : list of FailedJob
        Jobs of the last run that stopped before their time limit with rows
        left (:mod:`psyrun.run.walltime`).
    """

    progress: TaskProgress
    missing: object
    queued: list
    failed: list[FailedJob]
    running_pid: int | None
    workdir: str
    rows_this_run: int = 0
    partial: list[FailedJob] = field(default_factory=list)


def task_status(task, missing: bool = False) -> StatusReport:
    """Report on `task` as ``psy status`` does (`missing`: also the missing assignments)."""
    backend = make_backend(task)
    scheduler = scheduler_for(task)
    space = backend.get_missing() if missing else None
    progress = backend.progress(space)
    progress.notes.extend(backend.notes())
    from psyrun.run.attempts import round_notes

    progress.notes.extend(round_notes(backend.paths))
    pid = running_pid(backend)
    queued = backend.get_queued(scheduler)
    failed = backend.get_failed(queued, pending=pid is not None)
    if pid is None:
        live = _unaccounted_leases(backend, queued)
        progress.notes.extend(
            f"{lease.describe()} is still running, though no scheduler lists it; "
            f"`psy run {task.name}` waits until it has ended"
            for lease in live
        )
        running = {lease.job for lease in live}
        failed = [f for f in failed if f.name not in running]
    return StatusReport(
        progress,
        space,
        queued,
        failed,
        pid,
        backend.paths.root,
        backend.rows_evaluated() if pid is not None else 0,
        backend.get_partial() if hasattr(backend, "get_partial") else [],
    )


def prune_task(task) -> tuple[int, int] | None:
    """Remove from `task`'s result file the rows outside its parameter space.

    The new result is written beside the old one, read back, and renamed
    over it (see :func:`psyrun.results.merge.merge_files`); copies of an assignment
    beyond the number of times the space holds it go too.

    Returns
    -------
    tuple of int or None
        ``(rows kept, rows removed)``; None (nothing done) while a ``psy run``
        holds the task.

    Raises
    ------
    ValueError
        When there is nothing to prune from, or part files wait to be merged;
        the message says what to do.
    """
    backend = make_backend(task)
    prune = getattr(backend, "prune", None)
    if prune is None:
        raise ValueError(f"{type(backend).__name__} cannot prune results")
    with task_lock(backend, create=False) as locked:
        if not locked:
            return None
        return prune()


def kill_task(task) -> tuple[int, str]:
    """Cancel the queued and running jobs of `task`; return how many, and a note.

    The note says why nothing was killed when the scheduler runs jobs under
    the ``psy run`` that started them (stop that process instead).
    """
    backend = make_backend(task)
    scheduler = scheduler_for(task)
    from psyrun.run.attempts import request_stop

    # First the stop marker, then the kill: a round being submitted meanwhile
    # either sees the marker or has recorded its jobs where get_queued looks.
    if task.max_attempts > 1:
        request_stop(backend.paths)
    queued = backend.get_queued(scheduler)
    # Failed jobs the batch system still lists (Grid Engine's Eqw) go too.
    lingering = backend.get_lingering(scheduler)
    if queued or lingering:
        scheduler.kill_jobs([*(s.id for s in queued), *lingering])
        return len(queued) + len(lingering), ""
    if getattr(scheduler, "attached", False):
        pid = running_pid(backend)
        if pid:
            return 0, (
                f"{type(scheduler).__name__} runs the jobs inside the `psy run` that started "
                f"them (pid {pid}); stop that process (Ctrl-C, or kill {pid}) to stop them"
            )
        return 0, f"{type(scheduler).__name__} queues nothing: no job is waiting or running"
    return 0, ""


class JobsInQueue(RuntimeError):
    """``psy clean`` refused: jobs of the task are queued or running (the message says how on)."""


def clean_task(task) -> tuple[bool, list[str]]:
    """Remove the files psyrun made for `task`; return whether it cleaned, and notes.

    Nothing is removed (False) while a run holds the task's lock. The notes
    name what was left because psyrun did not make it
    (:func:`psyrun.paths.clean_task_files`: files of its own in the work
    directory, and the result file only when it is this task's).

    Raises
    ------
    JobsInQueue
        When jobs of the task's last submission are queued (held ones too) or
        running: they would write into the cleaned directory. Nothing is
        removed; the message says to ``psy kill`` them first. Jobs that can
        never start (blocked by a failed dependency) are cancelled instead.
    """
    backend = make_backend(task)
    problem = backend.paths.ownership_problem()
    if problem is not None:
        # Not this task's directory: do not even take a lock in it.
        return True, [f"did not touch {backend.paths.root}: {problem}"]
    if not os.path.isdir(backend.paths.root):
        # Nothing to lock: a run starting now makes the directory; leave it alone.
        from psyrun.paths import clean_task_files

        return True, clean_task_files(task, backend.paths, work_dir=False)
    with task_lock(backend, create=False) as locked:
        if not locked:
            return False, []
        _settle_jobs_before_clean(task, backend)
        return True, backend.clean() or []


def _settle_jobs_before_clean(task, backend) -> None:
    """Refuse to clean under live jobs; cancel the blocked ones (they would run if released)."""
    from psyrun.scheduler.base import SchedulerError

    scheduler = scheduler_for(task)
    try:
        held = backend.get_queued(scheduler)
    except SchedulerError as exc:
        raise JobsInQueue(
            f"cannot tell whether jobs of this task are still in the queue ({exc}); not "
            f"cleaning. Run `psy clean {task.name}` where the batch system's commands work."
        ) from None
    live = [s for s in held if s.status.will_run]
    if live:
        waits = describe_waits(live, scheduler, task.name, advice=False)
        raise JobsInQueue(
            f"{len(live)} jobs of this task are still in the queue ({summarize_states(live)}"
            + (f"; {waits}" if waits else "")
            + f"); not cleaning: they would write into the cleaned directory. "
            f"`psy kill {task.name}` cancels them; run `psy clean {task.name}` again once they "
            f"have left the queue (`psy status {task.name}` shows them)."
        )
    # Blocked jobs never start by themselves, but would if their failed parent
    # were deleted (Grid Engine) or the dependency removed; failed jobs Grid
    # Engine still lists (Eqw) run again if their error is cleared: cancel both.
    dead = [s.id for s in held if s.status.in_queue] + backend.get_lingering(scheduler)
    if dead:
        scheduler.kill_jobs(dead)
