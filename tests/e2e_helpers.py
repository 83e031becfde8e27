"""Helpers for the end-to-end tests: run ``psy`` as a user would and read what it left.

The tests write task files into a temporary directory, run the ``psy`` console
script in a subprocess from that directory (so ``psy-tasks`` and ``psy-work``
are the defaults a user gets; ``psy`` here is ``psy_helpers.psy`` with
``subprocess=True`` under its old name), and check the files and the output. Nothing
here imports the task machinery (``psyrun.tasks``, ``psyrun.backend``): the
tests judge it only from the outside.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

# Re-exported: the e2e tests import the psy helpers from here too.
from psy_helpers import PSY_TIMEOUT, PsyResult, describe, ok, psy_command  # noqa: F401
from psy_helpers import psy as _psy

# store key -> (import line, constructor expression, extension)
STORES = {
    "pickle": ("from psyrun.store.pickle import PickleStore", "PickleStore()", ".pkl"),
    "npz": ("from psyrun.store.npz import NpzStore", "NpzStore()", ".npz"),
    "h5": ("from psyrun.store.h5 import H5Store", "H5Store()", ".h5"),
    "zarr": ("from psyrun.store.zarr import ZarrStore", "ZarrStore()", ".zarr"),
}

# backend key -> (import line, the value a task file assigns to ``backend``)
BACKENDS = {
    "distribute": ("from psyrun.backend import DistributeBackend", "DistributeBackend"),
    "loadbalancing": ("from psyrun.backend import LoadBalancingBackend", "LoadBalancingBackend"),
}


def psy(*args: str, cwd: str | os.PathLike, timeout: float = PSY_TIMEOUT, env=None) -> PsyResult:
    """Run ``psy *args`` in `cwd` in a subprocess (``psy_helpers.psy(..., subprocess=True)``)."""
    return _psy(*args, cwd=cwd, subprocess=True, timeout=timeout, env=env)


def write(path: str | os.PathLike, text: str) -> Path:
    """Write dedented `text` to `path`, creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def counting_task(
    side_file: str | os.PathLike,
    values: Iterable[int],
    *,
    store: str | None = None,
    backend: str | None = None,
    settings: str = "",
    preamble: str = "",
    before_record: str = "",
) -> str:
    """Source of a task ``pspace = Param(x=values)``, ``execute(x) -> {'y': x*x}``.

    Every call of ``execute`` appends ``x`` to `side_file` (one line per call,
    an O_APPEND write, so concurrent workers do not mix lines), after running
    `before_record` (source indented into the function body, may use ``x``).
    `store` and `backend` are keys of STORES and BACKENDS (None: the default).
    """
    lines = ["import os", "import signal", "from psyrun import Param"]
    assignments = []
    if store is not None:
        imp, expr, _ = STORES[store]
        lines.append(imp)
        assignments.append(f"store = {expr}")
    if backend is not None:
        imp, expr = BACKENDS[backend]
        lines.append(imp)
        assignments.append(f"backend = {expr}")
    lines.append(textwrap.dedent(preamble))
    lines.append(f"CALLS = {os.fspath(side_file)!r}")
    lines.append(f"pspace = Param(x={[int(v) for v in values]!r})")
    lines.extend(assignments)
    lines.append(textwrap.dedent(settings))
    body = textwrap.indent(textwrap.dedent(before_record).strip("\n"), " " * 4)
    lines.append(
        "\n\ndef execute(x):\n"
        + (body + "\n" if body.strip() else "")
        + "    with open(CALLS, 'a') as f:\n"
        + "        f.write(f'{x}\\n')\n"
        + "    return {'y': x * x}\n"
    )
    return "\n".join(lines)


def calls(side_file: str | os.PathLike) -> Counter:
    """How often ``execute`` ran for each x, read from the side file."""
    path = Path(side_file)
    if not path.exists():
        return Counter()
    return Counter(int(float(line)) for line in path.read_text().split())


def load_result(path: str | os.PathLike, store: str) -> dict[str, np.ndarray]:
    """Load a result file with the named store."""
    from psyrun.store import H5Store, NpzStore, PickleStore, ZarrStore

    cls = {"pickle": PickleStore, "npz": NpzStore, "h5": H5Store, "zarr": ZarrStore}[store]
    return cls().load(os.fspath(path))


def _plain(value):
    if isinstance(value, np.ndarray):
        return tuple(_plain(v) for v in value.tolist()) if value.ndim else value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def sorted_rows(data: Mapping[str, Iterable]) -> list[tuple]:
    """The rows of a column mapping as sorted tuples of plain values (keys sorted)."""
    keys = sorted(data)
    columns = [[_plain(v) for v in data[k]] for k in keys]
    lengths = {len(c) for c in columns}
    assert len(lengths) <= 1, f"columns of unequal length: {dict(zip(keys, lengths))}"
    return sorted(zip(*columns), key=repr)


def square_rows(values: Iterable[int]) -> list[tuple]:
    """Sorted rows ``(x, y=x*x)`` as map_pspace computes them for counting_task."""
    from psyrun import Param, map_pspace

    return sorted_rows(map_pspace(lambda x: {"y": x * x}, Param(x=list(values))))


def result_path(cwd: str | os.PathLike, task: str, store: str = "pickle") -> Path:
    """The default result file ``psy-work/<task>/result<ext>``."""
    return Path(cwd) / "psy-work" / task / f"result{STORES[store][2]}"


def status_counts(text: str) -> list[tuple[int, int]]:
    """Every ``N out of M rows completed`` in `text`, as (N, M) pairs."""
    return [(int(a), int(b)) for a, b in re.findall(r"(\d+) out of (\d+) rows completed", text)]


def job_marks(text: str) -> list[tuple[str, str]]:
    """The doit-style job lines of ``psy run`` output: ('.', name) or ('-', name)."""
    return re.findall(r"^\s*([.-])\s+(\S+)", text, flags=re.MULTILINE)


def age_files(root: str | os.PathLike, seconds: float = 100.0) -> None:
    """Move the modification time of everything under `root` `seconds` into the past.

    Used before changing a task file or a ``file_dep`` so that the change is
    unambiguously newer than every earlier output, whatever the file system's
    timestamp resolution.
    """
    then = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), (then, then), follow_symlinks=False)


# A scheduler defined in a task file that records submissions in a JSON file and
# reports them as queued until the test marks them done; kills are recorded too.
RECORDER_SOURCE = '''
import json as _json
import os as _os

from psyrun.scheduler import JobState, JobStatus, Scheduler


class Recorder(Scheduler):
    """Record every submission; jobs stay queued until the test runs them."""

    supports_arrays = SUPPORTS_ARRAYS

    def __init__(self, state_file):
        self.state_file = state_file

    def _load(self):
        if not _os.path.exists(self.state_file):
            return {"jobs": [], "killed": []}
        with open(self.state_file) as f:
            return _json.load(f)

    def _save(self, state):
        with open(self.state_file + ".tmp", "w") as f:
            _json.dump(state, f)
        _os.replace(self.state_file + ".tmp", self.state_file)

    def _add(self, args, output_filename, name, depends_on, scheduler_args, index=None):
        state = self._load()
        jobid = "r%d" % len(state["jobs"])
        state["jobs"].append({
            "id": jobid, "name": name, "args": list(args), "out": output_filename,
            "depends_on": list(depends_on or []), "state": "queued", "index": index,
            "scheduler_args": {str(k): str(v) for k, v in dict(scheduler_args or {}).items()},
        })
        self._save(state)
        return jobid

    def submit(self, args, output_filename, name=None, depends_on=None,
               scheduler_args=None):
        return self._add(args, output_filename, name, depends_on, scheduler_args)

    def submit_array(self, n, args, output_filename, name=None, depends_on=None,
                     scheduler_args=None):
        ids = []
        for i in range(n):
            sub = [a.replace("%a", str(i)) for a in args]
            ids.append(self._add(sub, output_filename.replace("%a", str(i)),
                                 name, depends_on, scheduler_args, index=i))
        return ids

    def kill(self, jobid):
        state = self._load()
        state["killed"].append(jobid)
        for job in state["jobs"]:
            if job["id"] == jobid:
                job["state"] = "killed"
        self._save(state)

    def get_status(self, jobid):
        for job in self._load()["jobs"]:
            if job["id"] == jobid and job["state"] == "queued":
                return JobStatus(jobid, JobState.QUEUED, job["name"])
        return None

    def get_statuses(self, jobids):
        queued = {j["id"]: j for j in self._load()["jobs"] if j["state"] == "queued"}
        return {i: JobStatus(i, JobState.QUEUED, queued[i]["name"])
                for i in jobids if i in queued}

    def get_jobs(self):
        return [j["id"] for j in self._load()["jobs"] if j["state"] == "queued"]
'''


def recorder_preamble(state_file: str | os.PathLike, supports_arrays: bool = False) -> str:
    """Task-file source defining ``scheduler = Recorder(state_file)``."""
    source = RECORDER_SOURCE.replace("SUPPORTS_ARRAYS", repr(bool(supports_arrays)))
    return source + f"\n\nscheduler = Recorder({os.fspath(state_file)!r})\n"


def recorded(state_file: str | os.PathLike) -> dict:
    """The Recorder's state: ``{'jobs': [...], 'killed': [...]}``."""
    import json

    path = Path(state_file)
    if not path.exists():
        return {"jobs": [], "killed": []}
    return json.loads(path.read_text())


def run_recorded_jobs(state_file: str | os.PathLike, cwd: str | os.PathLike) -> list[int]:
    """Run the queued recorded jobs in submission order, as a cluster would.

    Each job's argv runs in a fresh process with its output going to the job's
    output file; the job is then marked done so that the Recorder stops
    reporting it. Returns the exit statuses.
    """
    import json

    path = Path(state_file)
    state = json.loads(path.read_text())
    statuses = []
    for job in state["jobs"]:
        if job["state"] != "queued":
            continue
        Path(job["out"]).parent.mkdir(parents=True, exist_ok=True)
        with open(job["out"], "a") as out:
            rc = subprocess.call(
                job["args"], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=PSY_TIMEOUT
            )
        statuses.append(rc)
        job["state"] = "done"
        path.write_text(json.dumps(state))
    return statuses


def start_psy(*args: str, cwd: str | os.PathLike, env=None) -> subprocess.Popen:
    """Start ``psy *args`` in `cwd` in the background (own session); stdout+stderr merged.

    For tests that signal a run or look at it from another ``psy`` while it goes.
    """
    full_env = dict(os.environ)
    full_env.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    full_env.pop("PYTHONWARNINGS", None)
    if env:
        full_env.update(env)
    return subprocess.Popen(
        [*psy_command(), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=full_env,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = PSY_TIMEOUT) -> str:
    """Wait for a background ``psy`` (killing its group after `timeout`); return its output."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"psy did not finish within {timeout} s\n{out}") from None
    return out


def rows_reported(task_root: str | os.PathLike) -> int:
    """Rows the jobs of a run have written so far (their ``status/*.rows`` counters)."""
    total = 0
    for path in Path(task_root, "status").glob("*.rows"):
        try:
            total += int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
    return total


def wait_until(predicate, what: str, timeout: float = 60.0, proc=None, interval: float = 0.05):
    """Poll `predicate` until it returns something true, and return that; fail after `timeout` s.

    When `proc` (a background psy) ends first, fail with its output: the
    run finished before the test could act on it.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"psy ended before {what}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_for_rows(task_root: str | os.PathLike, n: int = 1, timeout: float = 60.0, proc=None):
    """Wait until the jobs of a run have written at least `n` rows (see rows_reported)."""
    wait_until(lambda: rows_reported(task_root) >= n, f"{n} rows written", timeout, proc)


def reaped(pid: int) -> bool:
    """Whether process `pid` is gone altogether (not even a zombie: it was reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


#: A task whose value ``y`` and preamble tests edit between runs (task-file versions):
#: format with ``preamble``, ``n``, ``jobs`` and ``y``; ``V_DELAY`` slows each row.
VERSIONED_TASK = """
import os
import time

from psyrun import Param

{preamble}
pspace = Param(x=list(range({n})))
max_jobs = {jobs}


def execute(x):
    time.sleep(float(os.environ.get("V_DELAY", "0")))
    return {{"y": {y}}}
"""
