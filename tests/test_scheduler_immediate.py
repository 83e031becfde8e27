"""ImmediateRun: jobs run at submission, dependencies, the forked worker path."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time

import pytest
from e2e_helpers import reaped

from psyrun.run.runner import Interrupted
from psyrun.scheduler import ImmediateRun, JobState, JobStatus, Scheduler, _fork
from psyrun.scheduler import immediate as immediate_module

PY = sys.executable


def _read(path) -> str:
    with open(path) as f:
        return f.read()


def test_submit_runs_at_once_and_records_exit_status(tmp_path):
    sched = ImmediateRun()
    out = tmp_path / "job.log"
    jobid = sched.submit(
        [PY, "-c", "import sys; print('hello'); print('oops', file=sys.stderr)"],
        str(out),
        name="a",
    )
    assert isinstance(jobid, str)
    assert _read(out).split() == ["hello", "oops"]
    assert sched.get_status(jobid) is None
    assert sched.result(jobid) == JobStatus(jobid, JobState.COMPLETED, "a")
    assert sched.returncode(jobid) == 0
    assert sched.get_jobs() == []


def test_failed_job_blocks_its_dependents_transitively(tmp_path):
    sched = ImmediateRun()
    marker = tmp_path / "ran"
    bad = sched.submit([PY, "-c", "raise SystemExit(3)"], str(tmp_path / "bad.log"), name="bad")
    good = sched.submit([PY, "-c", "pass"], str(tmp_path / "good.log"), name="good")
    dep = sched.submit(
        [PY, "-c", f"open({str(marker)!r}, 'w')"],
        str(tmp_path / "dep.log"),
        name="dep",
        depends_on=[good, bad],
    )
    dep2 = sched.submit([PY, "-c", "pass"], str(tmp_path / "d2.log"), name="d2", depends_on=dep)
    assert sched.returncode(bad) == 3
    assert sched.result(bad).status is JobState.FAILED
    assert not marker.exists()
    assert sched.get_status(dep) == JobStatus(dep, JobState.BLOCKED, "dep")
    assert sched.get_status(dep2).status is JobState.BLOCKED
    assert sched.returncode(dep) is None
    assert sched.get_statuses([bad, good, dep, dep2, "nope"]).keys() == {dep, dep2}
    assert sorted(sched.get_jobs()) == sorted([dep, dep2])
    sched.kill(dep)
    assert sched.get_status(dep) is None
    assert sched.result(dep).status is JobState.CANCELLED
    assert sched.get_jobs() == [dep2]


def test_completed_and_unknown_dependencies_do_not_block(tmp_path):
    sched = ImmediateRun()
    first = sched.submit([PY, "-c", "pass"], str(tmp_path / "1.log"))
    out = tmp_path / "2.log"
    second = sched.submit(
        [PY, "-c", "print('ran')"], str(out), depends_on=[first, "id-from-an-earlier-run"]
    )
    assert sched.result(second).status is JobState.COMPLETED
    assert _read(out).strip() == "ran"


def test_arguments_reach_the_program_literally(tmp_path):
    tricky = ["a b", "it's", 'say "hi"', "x; rm -rf /", "$HOME", "`id`", "*"]
    out = tmp_path / "dir with space; and 'quote'.log"
    sched = ImmediateRun()
    sched.submit([PY, "-c", "import sys; print(repr(sys.argv[1:]))", *tricky], str(out))
    assert _read(out).strip() == repr(tricky)


def test_shell_string_and_bad_arguments_are_rejected(tmp_path):
    sched = ImmediateRun()
    with pytest.raises(TypeError, match="argv list"):
        sched.submit("echo hi", str(tmp_path / "x.log"))
    with pytest.raises(ValueError, match="empty"):
        sched.submit([], str(tmp_path / "x.log"))
    with pytest.raises(TypeError, match="must be a string"):
        sched.submit([PY, 3], str(tmp_path / "x.log"))
    with pytest.raises(ValueError, match="negative"):
        sched.submit_array(-1, [PY], str(tmp_path / "x.log"))


def test_missing_program_is_a_failed_job_with_a_message(tmp_path):
    sched = ImmediateRun()
    out = tmp_path / "x.log"
    jobid = sched.submit(["/nonexistent/program", "a"], str(out))
    assert sched.returncode(jobid) == 127
    assert "/nonexistent/program" in _read(out)


def test_submit_array_substitutes_the_index(tmp_path):
    sched = ImmediateRun()
    assert not sched.supports_arrays
    ids = sched.submit_array(
        3,
        [PY, "-c", "import sys; print(sys.argv[1:])", "i=%a", "%a%a"],
        str(tmp_path / "job-%a.log"),
        name="arr",
    )
    assert len(set(ids)) == 3
    for i in range(3):
        assert _read(tmp_path / f"job-{i}.log").strip() == str([f"i={i}", f"{i}{i}"])
        assert sched.result(ids[i]).name == f"arr:{i}"  # each job its own name
    assert sched.submit_array(0, [PY], str(tmp_path / "none-%a.log")) == []


FAKE_JOB = """
import os, signal, sys, time

def hold(pidfile, final, signame):
    # Interrupt the scheduler, then run until stopped; the finally block
    # shows whether the SIGTERM that stops the job unwinds it.
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pidfile + ".tmp", pidfile)
    try:
        if signame != "-":
            os.kill(os.getppid(), getattr(signal, signame))
        time.sleep(60)
    finally:
        with open(final, "w") as f:
            f.write("finally ran")

def main(argv):
    if argv and argv[0] == "hold":
        return hold(*argv[1:])
    print("fake worker", argv, f"pid={os.getpid()}", f"name={__name__}", f"argv0={sys.argv[0]}")
    sys.stdout.write("no newline at the end")
    print("to stderr", file=sys.stderr)
    if argv and argv[0] == "raise":
        raise RuntimeError("boom in the job")
    if argv and argv[0] == "exit":
        sys.exit(int(argv[1]))
    if argv and argv[0] == "message":
        sys.exit("a message instead of a status")
    if argv and argv[0] == "none":
        return None
    return int(argv[0]) if argv else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
"""

#: A module only this test process can import (a fresh interpreter cannot).
FAKE = "psyrun_fake_job_module"


@pytest.fixture
def fake_worker(tmp_path_factory, monkeypatch):
    """A job module importable here only, that reports what it was given."""
    where = tmp_path_factory.mktemp("fakemod")
    (where / f"{FAKE}.py").write_text(FAKE_JOB)
    monkeypatch.syspath_prepend(str(where))
    # Earlier tests in this process may have left idle threads (zarr's event loop),
    # which would send these jobs down the subprocess path; the fork path is under test.
    monkeypatch.setattr(_fork, "other_threads_running", lambda: False)
    return where / f"{FAKE}.py"


def test_worker_jobs_run_in_a_forked_child(tmp_path, fake_worker):
    sched = ImmediateRun()
    out = tmp_path / "w.log"
    jobid = sched.submit([PY, "-m", FAKE, "0", "job file.json"], str(out))
    text = _read(out)
    # The fake module only exists in this process, so it ran in a fork of it.
    assert "fake worker ['0', 'job file.json']" in text
    # Run like ``python -m``: as __main__, argv[0] the module's file.
    assert f"name=__main__ argv0={fake_worker}" in text
    child_pid = int(text.split("pid=")[1].split()[0])
    assert child_pid != os.getpid()
    assert "no newline at the end" in text
    assert "to stderr" in text
    assert sched.returncode(jobid) == 0


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["5"], 5),
        (["none"], 0),
        (["exit", "7"], 7),
        (["exit", "0"], 0),
        (["300"], 1),
        (["message"], 1),
    ],
)
def test_forked_exit_status(tmp_path, fake_worker, argv, code):
    sched = ImmediateRun()
    jobid = sched.submit([PY, "-m", FAKE, *argv], str(tmp_path / "w.log"))
    assert sched.returncode(jobid) == code
    assert sched.result(jobid).status is (JobState.COMPLETED if code == 0 else JobState.FAILED)


def test_forked_exception_becomes_exit_1_with_traceback(tmp_path, fake_worker):
    sched = ImmediateRun()
    out = tmp_path / "w.log"
    bad = sched.submit([PY, "-m", FAKE, "raise"], str(out))
    assert sched.returncode(bad) == 1
    text = _read(out)
    assert "Traceback" in text
    assert "RuntimeError: boom in the job" in text
    # The parent carries on normally after a failed child.
    dep = sched.submit([PY, "-m", FAKE, "0"], str(tmp_path / "d.log"), depends_on=bad)
    assert sched.get_status(dep).status is JobState.BLOCKED


def test_other_threads_or_fork_false_use_a_subprocess(tmp_path, fake_worker, monkeypatch):
    monkeypatch.setattr(_fork, "other_threads_running", lambda: threading.active_count() > 1)
    for sched in (ImmediateRun(fork=False), ImmediateRun()):
        out = tmp_path / "w.log"
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        if sched.fork:
            thread.start()
        try:
            sched.submit([PY, "-m", FAKE, "0"], str(out))
        finally:
            stop.set()
            if thread.is_alive():
                thread.join()
        # A fresh interpreter does not see the fake worker installed here.
        assert "fake worker" not in _read(out)


def test_fork_only_for_the_running_interpreter(tmp_path, fake_worker):
    sched = ImmediateRun()
    out = tmp_path / "w.log"
    sched.submit(["python-other", "-m", FAKE, "0"], str(out))
    assert "fake worker" not in _read(out)


def test_forked_jobs_are_cheap(tmp_path, fake_worker):
    sched = ImmediateRun()
    start = time.perf_counter()
    for i in range(3):
        # What a job started afresh costs at least: an interpreter that imports NumPy.
        sched.submit([PY, "-c", "import numpy"], str(tmp_path / f"s{i}.log"))
    per_interpreter = (time.perf_counter() - start) / 3
    start = time.perf_counter()
    for i in range(30):
        sched.submit([PY, "-m", FAKE, "0"], str(tmp_path / f"{i}.log"))
    per_fork = (time.perf_counter() - start) / 30
    # Measured against an interpreter start-up on this machine now (its load
    # slows both): a fork costs a fraction of one.
    assert per_fork < per_interpreter / 2, (per_fork, per_interpreter)


def test_contract_attributes():
    sched = ImmediateRun()
    assert sched.attached
    assert sched.local
    assert sched.monitor is None
    assert sched.monitor_interval == 0.5
    sched.wait(["0"])
    sched.shutdown(cancel=True)
    assert sched.result("0") is None


def test_any_python_m_module_importable_here_is_forked(tmp_path, monkeypatch):
    monkeypatch.setattr(_fork, "other_threads_running", lambda: False)
    pkg = tmp_path / "mods" / "psyrun_fake_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(
        "import os, sys\nprint('pkg main', __name__, sys.argv[1:], os.getppid())\nsys.exit(4)"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    sched = ImmediateRun()
    out = tmp_path / "p.log"
    jobid = sched.submit([PY, "-m", "psyrun_fake_pkg", "x"], str(out))
    # Only this process can import the package: it ran in a fork, as python -m would.
    assert _read(out).split() == ["pkg", "main", "__main__", "['x']", str(os.getpid())]
    assert sched.returncode(jobid) == 4


def test_python_m_module_not_importable_here_runs_as_subprocess(tmp_path, monkeypatch):
    monkeypatch.setattr(_fork, "other_threads_running", lambda: False)
    where = tmp_path / "elsewhere"
    where.mkdir()
    (where / "psyrun_sub_only.py").write_text("import sys; print('sub', sys.argv[1:])")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(where), os.environ.get("PYTHONPATH", "")])
    )
    sched = ImmediateRun()
    out = tmp_path / "s.log"
    jobid = sched.submit([PY, "-m", "psyrun_sub_only", "a b"], str(out))
    assert _read(out).strip() == "sub ['a b']"
    assert sched.returncode(jobid) == 0


def test_monitor_is_called_while_a_job_runs(tmp_path, fake_worker):
    sched = ImmediateRun()
    calls = []
    sched.monitor = lambda: calls.append(time.monotonic())
    sched.monitor_interval = 0.05
    start = time.monotonic()
    jobid = sched.submit([PY, "-c", "import time; time.sleep(0.5)"], str(tmp_path / "m.log"))
    elapsed = time.monotonic() - start
    assert sched.result(jobid).status is JobState.COMPLETED
    # About every monitor_interval seconds, not more often.
    assert 5 <= len(calls) <= elapsed / 0.05 + 1
    assert min(b - a for a, b in itertools.pairwise(calls)) >= 0.045




@pytest.mark.parametrize(("signame", "expected"), [("SIGTERM", Interrupted), ("SIGINT", None)])
def test_a_signal_during_a_job_stops_it_and_propagates(
    tmp_path, fake_worker, sigterm_raises, signame, expected
):
    expected = expected or KeyboardInterrupt
    sched = ImmediateRun()
    pidfile, final = tmp_path / "pid", tmp_path / "final"
    with pytest.raises(expected):
        sched.submit([PY, "-m", FAKE, "hold", pidfile, final, signame], str(tmp_path / "h.log"))
    assert reaped(int(pidfile.read_text()))
    # The child's SIGTERM handler unwound the job: its finally block ran.
    assert final.read_text() == "finally ran"
    assert sched.returncode("0") == 143
    assert sched.result("0").status is JobState.CANCELLED
    # The scheduler is usable afterwards.
    jobid = sched.submit([PY, "-m", FAKE, "0"], str(tmp_path / "ok.log"))
    assert sched.result(jobid).status is JobState.COMPLETED


def test_a_monitor_error_stops_the_job(tmp_path, fake_worker):
    sched = ImmediateRun(grace=2)
    pidfile, final = tmp_path / "pid", tmp_path / "final"

    def monitor():
        if pidfile.exists():
            raise RuntimeError("the progress bar broke")

    sched.monitor = monitor
    sched.monitor_interval = 0.02
    with pytest.raises(RuntimeError, match="progress bar broke"):
        sched.submit([PY, "-m", FAKE, "hold", pidfile, final, "-"], str(tmp_path / "h.log"))
    assert reaped(int(pidfile.read_text()))
    assert final.read_text() == "finally ran"
    assert sched.result("0").status is JobState.CANCELLED


def test_no_scheduler_module_names_the_worker():
    # The schedulers run any ``python -m`` module; knowing the worker made a cycle.
    folder = os.path.dirname(immediate_module.__file__)
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                assert "psyrun.worker" not in f.read(), name


def test_a_user_scheduler_gets_working_defaults(tmp_path):
    class Recording(Scheduler):
        def __init__(self):
            self.calls = []

        def submit(self, args, output_filename, name=None, depends_on=None, scheduler_args=None):
            self.calls.append((args, output_filename, name, depends_on))
            return f"r{len(self.calls)}"

        def kill(self, jobid):
            pass

        def get_status(self, jobid):
            return JobStatus(jobid, JobState.QUEUED, "x") if jobid == "r1" else None

        def get_jobs(self):
            return ["r1"]

    sched = Recording()
    ids = sched.submit_array(2, ["prog", "--index=%a"], "out-%a.log", name="n", depends_on="d")
    assert ids == ["r1", "r2"]
    assert sched.calls == [
        (["prog", "--index=0"], "out-0.log", "n:0", ["d"]),
        (["prog", "--index=1"], "out-1.log", "n:1", ["d"]),
    ]
    assert sched.get_statuses(["r1", "r2"]) == {"r1": JobStatus("r1", JobState.QUEUED, "x")}
    sched.refresh()
    with pytest.raises(TypeError):
        Scheduler()


def test_job_state_flags():
    assert {s for s in JobState if s.in_queue} == {
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.BLOCKED,
    }
    assert {s for s in JobState if s.will_run} == {JobState.QUEUED, JobState.RUNNING}
    assert str(JobState.FAILED) == "failed"
    assert f"{JobState.BLOCKED}" == "blocked"
