"""Report section: a 10^6-row sweep through a real Slurm (issue 5 "Scale").

Needs a running cluster (``bash scripts/local-slurm.sh start``); without one
the section reports why it was skipped. Not in the default section list of
``benchmarks/report.py``: run it with ``python benchmarks/report.py slurm`` or
``python benchmarks/report_slurm.py``.

One ``psy run`` of ``Param(x=np.arange(10**6))``, ``execute(x) -> {'y': x*x}``,
``max_jobs=100`` (one split job, an array of 100 process tasks, one merge
job) in a fresh temporary directory. Every job records when its process
started (from ``/proc/self/stat``, when the task file is loaded in the job);
it ends when it writes its ``.done`` marker. From these:

- wall: from starting ``psy run`` to the merge job's end;
- job time: the sum of the jobs' run times (what the jobs themselves cost);
- idle: the part of the wall time during which none of the task's jobs was
  running, i.e. time spent only in Slurm's scheduling and dispatch (and in
  ``psy run`` before the first job started).

The run counts only if every row is in the result exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_ROWS = 10**6
MAX_JOBS = 100
TIMEOUT = 900.0

TASK = """
import json
import os
import sys

import numpy as np

from psyrun import Param, Slurm

TIMES = {times!r}

if os.environ.get("SLURM_JOB_ID"):
    # When did this job's process start? (field 22 of /proc/self/stat, after the
    # command name, which may hold spaces: split after the closing parenthesis).
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    started = btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    with open(TIMES, "a") as f:
        f.write(json.dumps({{"argv": sys.argv[1:], "start": started}}) + "\\n")

pspace = Param(x=np.arange({n_rows}))
max_jobs = {max_jobs}
scheduler = Slurm()
scheduler_args = {{"timelimit": "10", "memory_per_cpu": "1G"}}
python = sys.executable


def execute(x):
    return {{"y": x * x}}
"""


def _psy() -> list[str]:
    script = Path(sys.executable).with_name("psy")
    return (
        [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "psyrun.cli"]
    )


def _slurm_reason() -> str | None:
    # The same check as the Slurm tests skip on (tests/slurm_helpers.py).
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from slurm_helpers import slurm_unavailable_reason

    return slurm_unavailable_reason()


def _job_name(task: str, argv: list[str]) -> str:
    """``<task>:<kind>[:<i>]`` from a worker's argv ``[<jobs/kind.json>, index?]``."""
    kind = Path(argv[0]).stem
    return f"{task}:{kind}" if len(argv) == 1 else f"{task}:{kind}:{argv[1]}"


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def sweep(n_rows: int = N_ROWS, max_jobs: int = MAX_JOBS, keep: bool = False) -> dict:
    """Run the sweep once through Slurm; return the measured figures (seconds)."""
    import numpy as np

    from psyrun.store import PickleStore

    root = Path(tempfile.mkdtemp(prefix="psyrun-slurm-bench-"))
    try:
        task = "million"
        times = root / "times.jsonl"
        tasks = root / "psy-tasks"
        tasks.mkdir()
        (tasks / f"task_{task}.py").write_text(
            TASK.format(times=str(times), n_rows=n_rows, max_jobs=max_jobs)
        )
        env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
        started = time.time()
        run = subprocess.run(
            [*_psy(), "run"], cwd=root, capture_output=True, text=True, env=env, timeout=300
        )
        submitted = time.time()
        if run.returncode != 0:
            raise RuntimeError(f"psy run failed:\n{run.stdout}\n{run.stderr}")
        status_dir = root / "psy-work" / task / "status"
        deadline = time.monotonic() + TIMEOUT
        merge_done = status_dir / f"{task}_merge.done"
        while not merge_done.exists():
            failed = list(status_dir.glob("*.failed")) if status_dir.is_dir() else []
            if failed or time.monotonic() > deadline:
                queue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
                raise RuntimeError(f"sweep did not finish: failed={failed}\n{queue}")
            time.sleep(0.2)
        ended = merge_done.stat().st_mtime

        intervals = []
        for line in times.read_text().splitlines():
            rec = json.loads(line)
            name = _job_name(task, rec["argv"])
            done = status_dir / f"{name.replace(':', '_')}.done"
            intervals.append((name, rec["start"], done.stat().st_mtime))
        names = [n for n, _, _ in intervals]
        assert len(names) == len(set(names)) == max_jobs + 2, names

        data = PickleStore().load(str(root / "psy-work" / task / "result.pkl"))
        x = np.asarray(data["x"])
        counts = np.bincount(x, minlength=n_rows)
        exactly_once = len(x) == n_rows and bool((counts == 1).all())
        exactly_once &= bool((np.asarray(data["y"]) == x * x).all())

        spans = [(s, e) for _, s, e in intervals]
        busy = _union_length(spans)
        durations = {n: e - s for n, s, e in intervals}
        process = [d for n, d in durations.items() if ":process:" in n]
        return {
            "root": str(root),
            "wall": ended - started,
            "submit": submitted - started,
            "job_time": sum(durations.values()),
            "busy": busy,
            "idle": (ended - started) - busy,
            "first_start": min(s for s, _ in spans) - started,
            "split": durations[f"{task}:split"],
            "merge": durations[f"{task}:merge"],
            "process_mean": sum(process) / len(process),
            "process_max": max(process),
            "exactly_once": exactly_once,
            "rows": len(x),
        }
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


MANY = """
import os
import sys

from psyrun import Param, Slurm

pspace = Param(x=list(range({n})))
max_jobs = {n}
scheduler = Slurm()
# Held: nothing runs; only submission, status and kill are measured.
scheduler_args = {{"timelimit": "5", "memory_per_cpu": "100M", "sbatch_args": {{"hold": True}}}}
python = sys.executable


def execute(x):
    return {{"y": x * x}}
"""


def many_jobs(n: int = 5000) -> dict:
    """Time ``psy run``, ``psy status`` and ``psy kill`` of a task of `n` held process jobs."""
    root = Path(tempfile.mkdtemp(prefix="psyrun-slurm-many-"))
    try:
        (root / "psy-tasks").mkdir()
        (root / "psy-tasks" / "task_many.py").write_text(MANY.format(n=n))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
        out = {}
        for step in (["run"], ["status", "many"], ["kill", "many"]):
            started = time.perf_counter()
            proc = subprocess.run(
                [*_psy(), *step], cwd=root, capture_output=True, text=True, env=env, timeout=600
            )
            out[step[0]] = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"psy {' '.join(step)} failed:\n{proc.stdout}\n{proc.stderr}")
            out[f"{step[0]}_output"] = proc.stdout.strip().splitlines()[-1]
        return out
    finally:
        queue = subprocess.run(
            ["squeue", "-h", "-n", "many:split,many:process,many:merge", "-o", "%F"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if queue:
            subprocess.run(["scancel", *sorted(set(queue))], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def collect() -> list[dict]:
    """Measure the 10^6-row, max_jobs=100 sweep through the local Slurm."""
    reason = _slurm_reason()
    if reason is not None:
        return [
            {
                "what": "Slurm 1e6 rows, max_jobs=100",
                "measured": "skipped",
                "target": reason,
                "ok": None,
            }
        ]
    r = sweep()
    rows = [
        {
            "what": "Slurm 1e6 rows, max_jobs=100: wall",
            "measured": f"{r['wall']:.1f} s",
            "target": "every row once",
            "ok": r["exactly_once"],
        },
        {
            "what": "  psy run (submission of 3 sbatch)",
            "measured": f"{r['submit']:.2f} s",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  sum of the 102 jobs' run times",
            "measured": f"{r['job_time']:.1f} s",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  split / merge job / process job mean",
            "measured": f"{r['split']:.1f}/{r['merge']:.1f}/{r['process_mean']:.2f} s",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  no job running (Slurm scheduling)",
            "measured": f"{r['idle']:.1f} s",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  jobs started per second",
            "measured": f"{(MAX_JOBS + 2) / r['wall']:.2f}",
            "target": "-",
            "ok": None,
        },
    ]
    m = many_jobs()
    rows += [
        {
            "what": "Slurm 5000 held jobs: psy run",
            "measured": f"{m['run']:.2f} s",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  psy status (one squeue)",
            "measured": f"{m['status']:.2f} s",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  psy kill",
            "measured": f"{m['kill']:.2f} s",
            "target": "-",
            "ok": None,
        },
    ]
    return rows


if __name__ == "__main__":
    if "--raw" in sys.argv:
        print(json.dumps(sweep(keep="--keep" in sys.argv), indent=1))
    else:
        for row in collect():
            print(row)
