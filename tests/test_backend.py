"""Backends, job graphs and the worker: results, crashes, continue, failures."""

from __future__ import annotations

import contextlib
import os
import pickle
import textwrap
from collections import Counter

import numpy as np
import pytest
from psy_helpers import psy, task_paths, task_result, write_task

from psyrun.backend import DistributeBackend, LoadBalancingBackend
from psyrun.jobs import Job, JobArray, JobGraph, is_current, submit_graph
from psyrun.pspace import Param
from psyrun.results.merge import write_merged
from psyrun.run.defaults import make_backend, scheduler_for
from psyrun.run.snapshot import Snapshot, write_snapshot
from psyrun.scheduler import ImmediateRun, Scheduler
from psyrun.store import get_store
from psyrun.tasks import load_tasks

STORES = {"pickle": ".pkl", "npz": ".npz", "h5": ".h5", "zarr": ".zarr"}
STORE_CLASS = {
    "pickle": "from psyrun.store import PickleStore as S",
    "npz": "from psyrun.store import NpzStore as S",
    "h5": "from psyrun.store import H5Store as S",
    "zarr": "from psyrun.store import ZarrStore as S",
}


def make_task(tmp_path, body, name="t", store="pickle", backend="DistributeBackend"):
    taskdir = tmp_path / "tasks"
    taskdir.mkdir(exist_ok=True)
    text = (
        "import os, signal\nimport numpy as np\nfrom psyrun import Param\n"
        f"from psyrun.backend import {backend}\n{STORE_CLASS[store]}\n"
        f"backend = {backend}\nstore = S()\nworkdir = {str(tmp_path / 'work')!r}\n"
        + textwrap.dedent(body)
    )
    (taskdir / f"task_{name}.py").write_text(text)
    return load_tasks(taskdir)[name]


def run(task, cont=False, scheduler=None):
    """Plan and submit a task's jobs with ImmediateRun; return (backend, scheduler, ids)."""
    if scheduler is not None:
        task.config.scheduler = scheduler
    backend = make_backend(task)
    plan = backend.plan(cont)
    ids = {} if plan.up_to_date else backend.submit(plan.graph, scheduler_for(task))
    return backend, scheduler_for(task), ids


def result_rows(task):
    data = task.store.load(task.resultfile)
    return data, Counter(zip(*(data[k].tolist() for k in task.pspace.keys())))


def test_distribute_results_and_logs(tmp_path):
    task = make_task(
        tmp_path,
        """
        pspace = Param(a=np.arange(10)) * Param(b=[0.5, 1.5])
        max_jobs = 3
        def execute(a, b):
            print('evaluating', a, b)
            return {'c': a * b}
        """,
    )
    backend, _sched, ids = run(task)
    assert list(ids) == ["t:split", "t:process:0", "t:process:1", "t:process:2", "t:merge"]
    data, rows = result_rows(task)
    assert len(data["c"]) == 20
    assert set(rows.values()) == {1}
    np.testing.assert_allclose(data["c"], data["a"] * data["b"])
    root = tmp_path / "work" / "t"
    for name in ("t:split", "t:process:0", "t:process:2", "t:merge"):
        assert (root / f"{name}.log").exists()
    assert "evaluating 0 0.5" in (root / "t:process:0.log").read_text()
    assert backend.progress().completed == 20
    assert backend.is_current()
    assert backend.plan().up_to_date


@pytest.mark.parametrize(
    ("rows", "max_jobs", "min_items", "expected"),
    [(10, 3, 1, [3, 3, 4]), (10, 100, 4, [3, 3, 4]), (5, 100, 1, [1] * 5), (1, 4, 1, [1])],
)
def test_rows_shared_evenly(tmp_path, rows, max_jobs, min_items, expected):
    task = make_task(
        tmp_path,
        f"""
        pspace = Param(x=np.arange({rows}))
        max_jobs = {max_jobs}
        min_items = {min_items}
        def execute(x):
            return {{'y': x}}
        """,
    )
    backend = make_backend(task)
    plan = backend.plan()
    assert backend.n_process_jobs(rows) == len(expected)
    # Run split and process jobs only and look at the parts before merging.
    plan.graph.jobs = plan.graph.jobs[:2]
    submit_graph(plan.graph, ImmediateRun())
    store = task.store
    counts = [store.count_rows(path) for _, path, _ in backend.paths.list_parts()]
    assert counts == expected


def test_snapshot_of_a_huge_space_is_compact(tmp_path):
    space = Param(a=np.arange(10**4)) * Param(b=np.arange(10**4)) * Param(c=["x", "y"])
    path = str(tmp_path / "pspace.pkl")
    write_snapshot(path, space, None)
    assert os.path.getsize(path) < 200_000
    snap = Snapshot.read(path)
    assert len(snap) == 2 * 10**8
    got = snap.arrays(10**8 + 5, 10**8 + 7)
    assert got["c"].tolist() == ["y", "x"]
    assert got["b"].tolist() == [2, 3]


CRASHING = """
pspace = Param(x=np.arange(60)) * Param(k=[1, 2])
max_jobs = {max_jobs}
pool_size = {pool_size}
MARKER = {marker!r}
def execute(x, k):
    if x == 37 and k == 2 and os.path.exists(MARKER):
        os.remove(MARKER)
        os.kill(os.getpid(), signal.SIGKILL)   # a hard crash of this job
    return {{'y': x * k}}
"""


@pytest.mark.parametrize("store", list(STORES))
@pytest.mark.parametrize(
    ("backend", "pool_size"),
    [("DistributeBackend", 1), ("LoadBalancingBackend", 1), ("LoadBalancingBackend", 2)],
)
def test_kill_9_then_continue_gives_every_row_once(
    tmp_path, monkeypatch, store, backend, pool_size
):
    # Small blocks and chunks so that the crashed job has written some rows.
    monkeypatch.setattr("psyrun.backend.distribute.MIN_BLOCK", 4)
    monkeypatch.setattr("psyrun.backend.distribute.FLUSH_SECONDS", 0.0)
    monkeypatch.setattr("psyrun.backend.loadbalancing.MAX_CHUNK", 4)
    marker = tmp_path / "crash-once"
    marker.write_text("")
    task = make_task(
        tmp_path,
        CRASHING.format(max_jobs=3, pool_size=pool_size, marker=str(marker)),
        store=store,
        backend=backend,
    )
    backend_obj, _sched, _ids = run(task)
    assert not marker.exists(), "the crash did not happen"
    assert not os.path.exists(task.resultfile)  # merge skipped after the failure
    failed = backend_obj.get_failed(queued=[])
    assert any(f.name.startswith("t:process:") for f in failed)
    completed = backend_obj.progress().completed
    if backend == "LoadBalancingBackend":
        # The other workers took over the rows the killed one had claimed.
        assert completed == 120
    else:
        assert 0 < completed < 120

    run(task, cont=True)
    data, rows = result_rows(task)
    assert len(data["y"]) == 120
    assert set(rows) == {(x, k) for x in range(60) for k in (1, 2)}
    assert set(rows.values()) == {1}
    np.testing.assert_array_equal(data["y"], data["x"] * data["k"])
    assert backend_obj.paths.list_parts() == []
    assert backend_obj.plan(cont=True).up_to_date


def test_continue_after_space_grew_evaluates_only_new_rows(tmp_path):
    body = """
    pspace = Param(x=np.arange({n}))
    max_jobs = 4
    def execute(x):
        with open({log!r}, 'a') as f:
            f.write(f'{{x}}\\n')
        return {{'y': x + 0.5}}
    """
    log = str(tmp_path / "calls.txt")
    task = make_task(tmp_path, body.format(n=10, log=log))
    run(task)
    task = make_task(tmp_path, body.format(n=15, log=log))
    run(task, cont=True)
    with open(log) as f:
        calls = [int(v) for v in f.read().split()]
    assert sorted(calls) == list(range(15))
    data, _rows = result_rows(task)
    assert sorted(data["x"].tolist()) == list(range(15))


def test_leftover_parts_already_merged_are_not_duplicated(tmp_path):
    # A crash between renaming the result and removing the parts leaves parts
    # whose rows the result already holds.
    task = make_task(
        tmp_path,
        """
        pspace = Param(x=np.arange(20))
        max_jobs = 2
        def execute(x):
            return {'y': 2 * x}
        """,
    )
    backend, _, _ = run(task)
    paths = backend.paths
    task.store.save(paths.part(0), {"x": np.arange(10), "y": 2 * np.arange(10)})
    task.store.save(paths.partial(1), {"x": np.arange(10, 12), "y": 2 * np.arange(10, 12)})
    assert backend.progress().completed == 20
    run(task, cont=True)
    data, rows = result_rows(task)
    assert len(data["x"]) == 20
    assert set(rows.values()) == {1}


def test_failing_rows_are_logged_and_others_kept(tmp_path):
    task = make_task(
        tmp_path,
        """
        pspace = Param(x=np.arange(12))
        max_jobs = 3
        def execute(x):
            if x in (5, 6):
                raise ValueError(f'bad x {x}')
            return {'y': x}
        """,
    )
    backend, _sched, _ids = run(task)
    data, _rows = result_rows(task)
    assert sorted(data["x"].tolist()) == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11]
    failed = backend.get_failed(queued=[])
    assert [f.name for f in failed] == ["t:process:1"]
    assert "2 row(s) raised" in failed[0].message
    with open(failed[0].log) as f:
        log = f.read()
    assert "Traceback" in log
    assert "ValueError: bad x 5" in log
    assert not backend.is_current()
    missing = backend.get_missing().build()
    assert missing == {"x": [5, 6]}


def test_load_balancing_setup_once_per_worker_and_exclude(tmp_path):
    calls = tmp_path / "setup.txt"
    task = make_task(
        tmp_path,
        f"""
        pspace = Param(x=np.arange(40))
        max_jobs = 2
        pool_size = 2
        exclude_from_result = ['ctx']
        def setup(proc_id):
            with open({str(calls)!r}, 'a') as f:
                f.write(f'{{proc_id}} {{os.getpid()}}\\n')
            return {{'ctx': object(), 'offset': proc_id * 0}}
        def execute(x, ctx, offset):
            return {{'y': x + offset, 'ctx': ctx}}
        """,
        backend="LoadBalancingBackend",
    )
    run(task)
    lines = [line.split() for line in calls.read_text().splitlines()]
    # ImmediateRun runs the jobs one after another: job 0's two workers take
    # every row, so job 1 finds none left and starts no worker (no setup).
    assert sorted(int(p) for p, _ in lines) == [0, 1]
    assert len({pid for _, pid in lines}) == 2
    log = (tmp_path / "work" / "t" / "t:process:1.log").read_text()
    assert "no rows left to claim" in log
    data, _rows = result_rows(task)
    assert "ctx" not in data
    assert sorted(data["x"].tolist()) == list(range(40))
    np.testing.assert_array_equal(data["y"], data["x"])


def test_write_merged_never_destroys_result_on_error(tmp_path):
    store = get_store(".pkl")
    result = str(tmp_path / "result.pkl")
    store.save(result, {"x": [1, 2]})
    with open(result, "rb") as f:
        before = f.read()

    class Failing(type(store)):
        def append(self, filename, data):
            raise OSError("disk full")

    part = str(tmp_path / "0.pkl")
    store.save(part, {"x": [3]})
    with pytest.raises(OSError, match="disk full"):
        write_merged(Failing(), result, [part], ["x"], base=result)
    with open(result, "rb") as f:
        assert f.read() == before
    assert sorted(os.listdir(tmp_path)) == ["0.pkl", "result.pkl"]


def test_write_merged_drops_rows_the_base_holds(tmp_path):
    store = get_store(".pkl")
    base = str(tmp_path / "r.pkl")
    store.save(base, {"x": [1, 2], "y": [10, 20]})
    part = str(tmp_path / "0.pkl")
    store.save(part, {"x": [2, 3], "y": [20, 30]})
    assert write_merged(store, base, [part], ["x"], base=base) == 3
    with open(base, "rb") as f:
        assert pickle.load(f) == {"x": [1, 2, 3], "y": [10, 20, 30]}


def test_is_current(tmp_path):
    dep, target = tmp_path / "dep", tmp_path / "target"
    dep.write_text("a")
    assert not is_current([str(target)], [str(dep)])
    target.write_text("b")
    os.utime(dep, ns=(0, 10**18))
    os.utime(target, ns=(0, 2 * 10**18))
    assert is_current([str(target)], [str(dep)])
    os.utime(dep, ns=(0, 3 * 10**18))
    assert not is_current([str(target)], [str(dep)])
    assert not is_current([str(target)], [str(tmp_path / "gone")])


class ArrayRecorder(Scheduler):
    supports_arrays = True

    def __init__(self):
        self.calls = []

    def submit(self, args, output_filename, name=None, depends_on=None, scheduler_args=None):
        self.calls.append(("submit", list(args), output_filename, list(depends_on or [])))
        return f"j{len(self.calls)}"

    def submit_array(
        self, n, args, output_filename, name=None, depends_on=None, scheduler_args=None
    ):
        self.calls.append(("array", n, list(args), output_filename, list(depends_on or [])))
        return [f"a{i}" for i in range(n)]

    def kill(self, jobid):
        pass

    def get_status(self, jobid):
        return None

    def get_jobs(self):
        return []


def test_submit_graph_uses_native_arrays():
    graph = JobGraph("t")
    graph.jobs = [
        Job("t:split", ["p", "split"], "s.log"),
        JobArray("t:process", 3, ["p", "proc", "%a"], "p%a.log", depends_on=["t:split"]),
        Job("t:merge", ["p", "merge"], "m.log", depends_on=["t:process"]),
    ]
    sched = ArrayRecorder()
    ids = submit_graph(graph, sched, {"timelimit": "1h"})
    assert sched.calls[1] == ("array", 3, ["p", "proc", "%a"], "p%a.log", ["j1"])
    assert sched.calls[2][-1] == ["a0", "a1", "a2"]
    assert ids["t:process:2"] == "a2"
    # A scheduler without arrays gets one job per index (the base class's
    # submit_array), with the index substituted.
    sched = OneByOne()
    ids = submit_graph(graph, sched)
    assert [c[1] for c in sched.calls[1:4]] == [["p", "proc", str(i)] for i in range(3)]
    assert [c[2] for c in sched.calls[1:4]] == ["p0.log", "p1.log", "p2.log"]
    assert sched.calls[4][-1] == ["j2", "j3", "j4"]  # the merge waits for every index
    assert ids["t:process:1"] == "j3"


class OneByOne(ArrayRecorder):
    supports_arrays = False
    submit_array = Scheduler.submit_array


def test_huge_lazy_space_submits_without_expanding(tmp_path):
    task = make_task(
        tmp_path,
        """
        pspace = Param(a=np.arange(10**4)) * Param(b=np.arange(10**4))
        max_jobs = 1000
        def execute(a, b):
            return {'c': a + b}
        """,
    )
    sched = ArrayRecorder()
    backend = make_backend(task)
    plan = backend.plan()
    ids = submit_graph(plan.graph, sched)
    assert len(ids) == 1002
    assert sched.calls[1][1] == 1000
    assert isinstance(backend, DistributeBackend)
    assert not isinstance(backend, LoadBalancingBackend)


# -- kill -9 while a process job appends ---------------------------------------

APPENDING = """
pspace = Param(x=np.arange({n}))
max_jobs = {max_jobs}
pool_size = {pool_size}
EVALUATED = {evaluated!r}
_log = []
def execute(x):
    if not _log:
        _log.append(open(EVALUATED, 'a', buffering=1))  # one write per row
    _log[0].write(f'{{x}}\\n')
    return {{'y': x * x + 0.5}}
"""

# Runs one process job like psyrun.worker, with tiny blocks and chunks so that
# the job appends all the time (a kill then nearly always lands in an append).
SMALL_APPENDS_WORKER = """
import sys
import psyrun.backend.distribute as d
import psyrun.backend.loadbalancing as lb
d.FLUSH_SECONDS = 0.0
d.MIN_BLOCK = d.MAX_BLOCK = {block}
lb.MAX_CHUNK = {block}
from psyrun.worker import main
sys.exit(main(sys.argv[1:]))
"""


def _kill_while_appending(task, block, rng, evaluated, n):
    """Start the process jobs, SIGKILL them at a random moment of their appends.

    The moment is a random share of the rows logged to `evaluated` (of `n`),
    not a random delay: however fast the jobs run, the kill lands while they
    evaluate and append. Return whether any of them was still running then.
    """
    import signal
    import subprocess
    import sys
    import time

    backend = make_backend(task)
    plan = backend.plan()
    backend.run_split(cont=False)
    n_jobs = backend.n_process_jobs(len(task.pspace))
    job_file = backend.paths.job_file("process")
    script = SMALL_APPENDS_WORKER.format(block=block)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, job_file, str(i)],
            start_new_session=True,  # its own process group: the kill reaches pool workers
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(n_jobs)
    ]
    assert plan.graph.names[1] == "t:process:0"
    # The log holds one line per evaluated row: kill after a random share of them.
    target = rng.uniform(0.05, 0.9) * sum(len(f"{x}\n") for x in range(n))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if os.path.exists(evaluated) and os.path.getsize(evaluated) >= target:
            break
        time.sleep(0.001)
    running = any(p.poll() is None for p in procs)
    for p in procs:
        with contextlib.suppress(ProcessLookupError):  # it finished already
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()
    return running


@pytest.mark.slow
@pytest.mark.parametrize("store", ["npz", "zarr"])
@pytest.mark.parametrize(
    ("backend", "max_jobs", "pool_size"),
    [("DistributeBackend", 2, 1), ("LoadBalancingBackend", 1, 2)],
)
def test_kill_9_while_appending_loses_only_rows_in_flight(
    tmp_path, store, backend, max_jobs, pool_size
):
    import time

    from psyrun.backend.splitmerge import part_store

    # Trials until the time budget is spent (at least 2): about 7 s per case.
    n, block, min_trials, max_trials, budget = 40_000, 100, 2, 5, 7.0
    rng = np.random.default_rng()
    workers = max_jobs * pool_size
    hits = trials = 0
    started = time.monotonic()
    while trials < max_trials and (trials < min_trials or time.monotonic() - started < budget):
        trial = trials
        trials += 1
        base = tmp_path / f"trial{trial}"
        base.mkdir()
        evaluated = base / "evaluated.txt"
        task = make_task(
            base,
            APPENDING.format(
                n=n, max_jobs=max_jobs, pool_size=pool_size, evaluated=str(evaluated)
            ),
            store=store,
            backend=backend,
        )
        hits += _kill_while_appending(task, block, rng, evaluated, n)
        backend_obj = make_backend(task)
        parts = [path for _, path, _ in backend_obj.paths.list_parts()]
        # Parts of the task's store where its appends survive a kill (DistributeBackend
        # with zarr), else PickleStore files.
        ext = getattr(backend_obj, "parts_format", part_store()).ext
        assert all(path.endswith(ext) for path in parts)
        # Every part reads, holds each row at most once, and with the right value.
        kept = []
        for path in parts:
            data = backend_obj.store_for(path).load(path)
            assert len(data["x"]) == len(data["y"])
            np.testing.assert_array_equal(data["y"], data["x"] ** 2 + 0.5)
            kept.extend(data["x"].tolist())
        assert len(kept) == len(set(kept))
        # Rows lost: only those evaluated but not yet appended (a block or a
        # chunk per worker, plus the one being evaluated).
        done = {int(v) for v in evaluated.read_text().split()}
        assert set(kept) <= done
        assert len(done) - len(kept) <= workers * 2 * block

        run(task, cont=True)
        data, rows = result_rows(task)
        assert sorted(data["x"].tolist()) == list(range(n))
        assert set(rows.values()) == {1}
        np.testing.assert_array_equal(data["y"], data["x"] ** 2 + 0.5)
        assert backend_obj.paths.list_parts() == []
    # Timing on a loaded machine varies; the checks above only mean something
    # if at least one kill landed while a job was still appending.
    assert hits >= 1, f"no kill hit a running job in {trials} trials"


@pytest.mark.parametrize("backend", ["DistributeBackend", "LoadBalancingBackend"])
def test_parts_are_pickle_files_and_result_uses_the_task_store(tmp_path, backend):
    task = make_task(
        tmp_path,
        """
        pspace = Param(x=np.arange(30))
        max_jobs = 3
        def execute(x):
            return {'y': x + 0.25}
        """,
        store="npz",
        backend=backend,
    )
    backend_obj = make_backend(task)
    plan = backend_obj.plan()
    plan.graph.jobs = plan.graph.jobs[:2]  # split and process: keep the parts
    submit_graph(plan.graph, ImmediateRun())
    parts = backend_obj.paths.list_parts()
    assert parts
    assert all(
        path.endswith(".pkl") and finished is (backend == "DistributeBackend")
        for _, path, finished in parts
    )
    # A part with the task's extension (left by an older psyrun) is still read.
    task.store.save(backend_obj.paths.out_dir + "/7.npz", {"x": [30], "y": [30.25]})
    assert backend_obj.progress().completed == 30

    run(task, cont=True)
    with open(task.resultfile, "rb") as f:
        assert f.read(2) == b"PK"  # a zip: written by NpzStore
    data, rows = result_rows(task)
    assert sorted(rows) == [(x,) for x in range(31)]
    assert set(rows.values()) == {1}
    np.testing.assert_array_equal(data["y"], data["x"] + 0.25)
    assert backend_obj.paths.list_parts() == []


# -- through psy: exclude_from_result, unreadable results, tiny spaces, failing rows -----


SQUARE = """
from psyrun import Param
pspace = Param(x=range(12))
max_jobs = 3
def execute(x):
    return {'y': x * x}
"""


def test_excluding_a_parameter_warns_and_continue_refuses_instead_of_duplicating(project):
    write_task(
        project,
        "excl",
        """
        from psyrun import Param
        pspace = Param(a=[1, 2, 3])
        exclude_from_result = ['a', 'not_an_output']
        def execute(a):
            return {'y': a * 10}
        """,
    )
    first = psy("run", "excl")
    assert first.exit_code == 0, first.output
    assert "exclude_from_result leaves out the parameter(s) 'a'" in first.output
    assert sorted(task_result(project, "excl")["y"].tolist()) == [10, 20, 30]
    cont = psy("run", "-c", "excl")
    assert cont.exit_code == 1
    assert "cannot continue task 'excl'" in cont.output
    assert "Traceback" not in cont.output
    # Every row once: before the fix each -c appended all rows again.
    assert sorted(task_result(project, "excl")["y"].tolist()) == [10, 20, 30]


def test_excluding_only_missing_keys_and_setup_keys_still_continues(project):
    write_task(
        project,
        "ctx",
        """
        from psyrun import Param
        pspace = Param(a=[1, 2, 3, 4])
        exclude_from_result = ['ctx', 'never_returned']
        def setup(proc_id):
            return {'ctx': object()}
        def execute(a, ctx):
            if a == 4 and not DONE:
                raise RuntimeError('not yet')
            return {'y': a, 'ctx': ctx}
        DONE = False
        """,
    )
    first = psy("run", "ctx")
    assert first.exit_code == 1
    assert "leaves out the parameter" not in first.output
    path = project / "psy-tasks" / "task_ctx.py"
    path.write_text(path.read_text().replace("DONE = False", "DONE = True"))
    assert psy("run", "-c", "ctx").exit_code == 0
    result = task_result(project, "ctx")
    assert sorted(result["a"].tolist()) == [1, 2, 3, 4]
    assert "ctx" not in result


def test_unreadable_result_is_reported_and_never_replaced(project):
    write_task(project, "square", SQUARE)
    assert psy("run", "square").exit_code == 0
    result_file = task_paths(project, "square").result
    with open(result_file, "wb") as f:
        f.write(b"garbage")
    status = psy("status", "square")
    assert "0 out of 12 rows completed" in status.output
    assert f"the result file {result_file} is damaged" in status.output
    cont = psy("run", "-c", "square")
    assert cont.exit_code == 1
    assert f"the result file {result_file} is damaged" in cont.output
    assert "Move it away" in cont.output
    with open(result_file, "rb") as f:
        assert f.read() == b"garbage"


@pytest.mark.parametrize("backend", ["DistributeBackend", "LoadBalancingBackend"])
@pytest.mark.parametrize("space", ["Param()", "Param(a=[1, 2]) - Param(a=[1, 2])"])
def test_empty_space_runs_and_lists_no_process_job(project, backend, space):
    write_task(
        project,
        "empty",
        f"""
        from psyrun import Param
        from psyrun.backend import {backend}
        backend = {backend}
        pspace = {space}
        def execute(**kw):
            return {{'y': 1}}
        """,
    )
    first = psy("run", "empty")
    assert first.exit_code == 0, first.output
    assert "process" not in first.output
    again = psy("run", "empty")
    assert again.output.split() == ["-", "empty:split", "-", "empty:merge"]
    assert psy("run", "-c", "empty").exit_code == 0
    assert "empty: 0 out of 0 rows completed" in psy("status", "empty").output
    assert "nothing to test" in psy("test", "empty").output


@pytest.mark.parametrize("backend", ["DistributeBackend", "LoadBalancingBackend"])
def test_more_jobs_and_items_than_rows(project, backend):
    write_task(
        project,
        "one",
        f"""
        from psyrun import Param
        from psyrun.backend import {backend}
        backend = {backend}
        pspace = Param(a=[5])
        max_jobs = 50
        min_items = 1000
        def execute(a):
            return {{'y': a * 2}}
        """,
    )
    result = psy("run", "one")
    assert result.exit_code == 0, result.output
    assert result.output.count(":process:") == 1
    result = task_result(project, "one")
    assert result["a"].tolist() == [5]
    assert result["y"].tolist() == [10]


@pytest.mark.parametrize("backend", ["DistributeBackend", "LoadBalancingBackend"])
@pytest.mark.parametrize("ext", [".h5", ".zarr"])
def test_rows_without_an_array_output_are_padded_in_every_backend(project, backend, ext):
    """A row whose execute omits an array output reads as NaN padding, not an object."""
    store = {".h5": "H5Store", ".zarr": "ZarrStore"}[ext]
    module = {".h5": "h5", ".zarr": "zarr"}[ext]
    write_task(
        project,
        "ragged",
        f"""
        import numpy as np
        from psyrun import Param
        from psyrun.backend import {backend}
        from psyrun.store.{module} import {store}

        pspace = Param(a=np.arange(6))
        backend = {backend}
        store = {store}()
        max_jobs = 3

        def execute(a):
            return {{}} if a == 0 else {{'v': np.arange(a, dtype=float)}}
        """,
    )
    result = psy("run", "ragged")
    assert result.exit_code == 0, result.output
    data = task_result(project, "ragged", ext)
    order = np.argsort(data["a"])
    v = np.asarray(data["v"])[order]
    assert v.dtype.kind == "f"
    assert v.shape == (6, 5)
    assert np.isnan(v[0]).all()
    np.testing.assert_array_equal(v[5], np.arange(5.0))
    assert np.isnan(v[2, 2:]).all()


@pytest.mark.parametrize("backend", ["DistributeBackend", "LoadBalancingBackend"])
def test_a_failing_row_does_not_make_the_others_run_twice(project, backend):
    calls = project / "calls.txt"
    write_task(
        project,
        "flaky",
        f"""
        from psyrun import Param
        from psyrun.backend import {backend}

        pspace = Param(x=range(20))
        backend = {backend}
        max_jobs = 1

        def execute(x):
            with open({str(calls)!r}, 'a') as f:
                f.write(f'{{x}}\\n')
            if x == 13:
                raise ValueError('thirteen')
            return {{'y': x * x}}
        """,
    )
    result = psy("run", "flaky")
    assert result.exit_code == 1
    evaluated = [int(line) for line in calls.read_text().split()]
    assert sorted(evaluated) == list(range(20))
    data = task_result(project, "flaky")
    assert sorted(data["x"]) == [x for x in range(20) if x != 13]
    assert all(y == x * x for x, y in zip(data["x"], data["y"]))


# -- LoadBalancing's claims log --------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _claim_log(tmp_path, n_rows):
    from psyrun.backend.loadbalancing import ClaimLog
    from psyrun.store import PickleStore

    store = PickleStore()

    def part(k):
        return str(tmp_path / f"{k}.partial.pkl")

    def count(path):
        return store.count_rows(path) if os.path.exists(path) else 0

    return ClaimLog(str(tmp_path / "counter"), n_rows, part, count), part, store


def _owner(pid=None, start="same", job="t:process:0", attempt=None):
    """An Owner of this host; by default the calling process itself."""
    import dataclasses

    from psyrun.backend.loadbalancing import Owner

    me = Owner.this_process(job, attempt)
    if pid is None:
        return me
    return dataclasses.replace(me, pid=pid, start=me.start if start == "same" else start)


def test_claims_hand_out_every_row_once_in_shrinking_chunks(tmp_path):
    log, _, _ = _claim_log(tmp_path, 1000)
    log.register(_owner())
    chunks = []
    while (claim := log.next(n_workers=2)) is not None:
        chunks.append(claim)
        log.done(claim[0], 0)
    rows = [r for start, stop in chunks for r in range(start, stop)]
    assert rows == list(range(1000))
    sizes = [stop - start for start, stop in chunks]
    assert sizes[0] == 1000 // 16
    assert sizes[-1] == 1
    assert sizes == sorted(sizes, reverse=True)
    assert log.unfinished() == []


def test_claim_of_a_dead_worker_is_taken_over_and_a_live_ones_is_not(tmp_path):
    from psyrun.run.lease import start_ticks

    # Two other workers claim rows and never record them: one lives (pytest's
    # parent process stands for it), one is dead.
    live, _, _ = _claim_log(tmp_path, 100)
    live.register(_owner(pid=os.getppid(), start=start_ticks(os.getppid())))
    live_claim = live.next(n_workers=1)
    dead, _, _ = _claim_log(tmp_path, 100)
    dead.register(_owner(pid=_dead_pid(), start=None))
    dead_claim = dead.next(n_workers=1)
    assert live_claim[1] == dead_claim[0]
    log, _, _ = _claim_log(tmp_path, 100)
    log.register(_owner())
    # A worker that starts takes over the dead worker's rows first.
    assert log.next(n_workers=1) == dead_claim
    log.done(dead_claim[0], 0)
    handed = []
    while (claim := log.next(n_workers=1)) is not None:
        handed.append(claim)
        log.done(claim[0], 0)
    assert handed[0][0] == dead_claim[1]
    assert handed[-1][1] == 100
    # The live worker's rows stay with it (it may still append them).
    assert [(c.start, c.stop) for c in log.unfinished()] == [live_claim]


def test_a_reused_pid_does_not_keep_a_dead_workers_claim(tmp_path):
    # The recorded process started at another time than the one now holding its pid.
    from psyrun.run.lease import start_ticks

    stale = _owner(pid=os.getpid(), start=(start_ticks(os.getpid()) or 0) - 1)
    viewer = _owner(pid=os.getppid())
    assert stale.is_dead(viewer)
    assert not _owner().is_dead(viewer)


def test_on_another_host_only_an_earlier_attempt_of_the_same_job_is_dead(tmp_path):
    import dataclasses

    viewer = _owner(job="t:process:1", attempt="here/1/1")
    there = dataclasses.replace(_owner(), host="elsewhere/boot")
    assert dataclasses.replace(there, job="t:process:1", attempt="there/9/9").is_dead(viewer)
    assert not dataclasses.replace(there, job="t:process:1", attempt="here/1/1").is_dead(viewer)
    assert not dataclasses.replace(there, job="t:process:2", attempt="x/1/1").is_dead(viewer)


def test_a_dead_workers_appended_but_unrecorded_chunk_is_not_evaluated_again(tmp_path):
    log, part, store = _claim_log(tmp_path, 40)
    dead, _, _ = _claim_log(tmp_path, 40)
    k = dead.register(_owner(pid=_dead_pid(), start=None))
    first = dead.next(n_workers=1)
    store.append(part(k), {"x": np.arange(*first)})
    dead.done(first[0], first[1] - first[0])
    # Killed after appending its second chunk, before recording it.
    second = dead.next(n_workers=1)
    store.append(part(k), {"x": np.arange(*second)})
    # Killed after claiming a third chunk is impossible for one worker; another dead
    # worker was killed during its evaluation.
    other, _, _ = _claim_log(tmp_path, 40)
    other.register(_owner(pid=_dead_pid(), start=None))
    lost = other.next(n_workers=1)
    log.register(_owner())
    assert log.next(n_workers=1) == lost  # only the chunk that never reached a part
    assert {c.start for c in log.unfinished()} == {lost[0]}


def test_a_line_cut_short_by_a_kill_does_not_hide_the_next_claim(tmp_path):
    log, _, _ = _claim_log(tmp_path, 100)
    log.register(_owner())
    first = log.next(n_workers=1)
    with open(tmp_path / "counter", "a") as f:
        f.write('{"c":[99,1')  # a writer killed in the middle of its line
    second = log.next(n_workers=1)
    assert second[0] == first[1]
    assert [(c.start, c.stop) for c in log.unfinished()] == [first, second]


def test_loadbalancing_pool_worker_killed_mid_chunk_loses_no_row(tmp_path):
    # One job, three pool workers; a forked one is SIGKILLed while it holds a claim.
    marker = tmp_path / "kill-once"
    marker.write_text("")
    task = make_task(
        tmp_path,
        f"""
        pspace = Param(x=range(200))
        max_jobs = 1
        pool_size = 3
        MARKER = {str(marker)!r}
        WORKER = []
        def setup(proc_id):
            WORKER.append(proc_id)
            return {{}}
        def execute(x):
            import time
            time.sleep(0.002)
            if WORKER == [1] and os.path.exists(MARKER):  # a forked pool worker, once
                os.remove(MARKER)
                os.kill(os.getpid(), signal.SIGKILL)
            return {{'y': x * x}}
        """,
        backend="LoadBalancingBackend",
    )
    backend_obj, _, _ = run(task)
    assert not marker.exists(), "the kill did not happen"
    # The job fails (a worker died), but every row is in the parts once.
    assert "t:process:0" in [f.name for f in backend_obj.get_failed(queued=[])]
    rows = Counter()
    for _, path, _ in backend_obj.paths.list_parts():
        rows.update(backend_obj.part_store.load(path)["x"].tolist())
    assert rows == Counter(range(200))
    run(task, cont=True)
    _, counts = result_rows(task)
    assert counts == Counter({(x,): 1 for x in range(200)})
