"""Report section: end-to-end ``psy run`` (issue 4 targets).

Each figure is one ``psy run`` started as a subprocess in a fresh temporary
directory holding one task file, exactly as a user would run it. Wall time is
measured around the subprocess; peak memory is the child's ``ru_maxrss`` from
``os.wait4``. A run counts only if it exits with status 0 and leaves the
expected number of rows (or submissions), so a fast but broken run is not
reported as meeting its target.

psyrun 0.8.0 on this kind of machine, ``execute(x) -> {'y': x*x}``: 10^3 rows
with defaults 28 s (pickle) / 30 s (HDF5); 10^4 rows with ``max_jobs=4`` 40 s
(pickle) / 10 s (HDF5); load balancing 10^4 rows, HDF5, ``max_jobs=2`` 20 s.
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from pathlib import Path

SQUARE = """
from psyrun import Param
{imports}

pspace = {pspace}
{settings}


def execute(x):
    return {{"y": x * x}}
"""

# Records submissions (one line each) and runs nothing.
RECORDER = """
import numpy as np

from psyrun import Param
from psyrun.scheduler import Scheduler

SUBMITTED = {submitted!r}


class OnlyRecord(Scheduler):
    supports_arrays = False

    def __init__(self):
        self.n = 0

    def submit(self, args, output_filename, name=None, depends_on=None, scheduler_args=None):
        self.n += 1
        with open(SUBMITTED, "a") as f:
            f.write(f"{{name}}\\n")
        return f"job{{self.n}}"

    def kill(self, jobid):
        pass

    def get_status(self, jobid):
        return None

    def get_jobs(self):
        return []


scheduler = OnlyRecord()
pspace = Param(a=np.arange(10**4)) * Param(b=np.arange(10**4))
max_jobs = 1000


def execute(a, b):
    return {{"y": a * b}}
"""


def psy_command() -> list[str]:
    """The argv prefix that runs ``psy`` with this interpreter."""
    script = Path(sys.executable).with_name("psy")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "psyrun.cli"]


# Runs a command and reports its wall time and peak memory. Linux keeps a
# process's peak RSS across fork and exec, so a child started straight from this
# report (which holds large arrays by now) would inherit our peak; a small
# launcher process in between gives the command a clean start.
_LAUNCHER = """
import json, os, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"wall": time.perf_counter() - started, "maxrss_kib": usage.ru_maxrss,
               "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def run_psy(cwd: str, *args: str, timeout: float = 600) -> dict:
    """Run ``psy *args`` in `cwd`; return wall seconds, peak RSS (MB), status, output.

    The peak RSS is the largest of ``psy`` and the jobs it ran in its own
    child processes (``ru_maxrss`` from ``os.wait4``).
    """
    import json
    import subprocess

    out_path, err_path = os.path.join(cwd, "psy.out"), os.path.join(cwd, "psy.err")
    measured = os.path.join(cwd, "psy.measured.json")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        subprocess.run(
            [sys.executable, "-c", _LAUNCHER, measured, *psy_command(), *args],
            cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, timeout=timeout,
            check=False,
        )
    with open(measured) as f:
        figures = json.load(f)
    return {
        "wall": figures["wall"],
        "rss_mb": figures["maxrss_kib"] / 1024,  # Linux reports kilobytes
        "rc": figures["rc"],
        "stdout": Path(out_path).read_text(),
        "stderr": Path(err_path).read_text(),
    }


def square_task(n_rows: int, store: str | None = None, settings: str = "") -> str:
    """Task source for ``execute(x) -> {'y': x*x}`` on ``Param(x=arange(n_rows))``."""
    imports = "import numpy as np"
    if store == "h5":
        imports += "\nfrom psyrun.store.h5 import H5Store"
        settings = "store = H5Store()\n" + settings
    elif store == "zarr":
        imports += "\nfrom psyrun.store.zarr import ZarrStore"
        settings = "store = ZarrStore()\n" + settings
    return SQUARE.format(
        imports=imports, pspace=f"Param(x=np.arange({n_rows}))", settings=settings
    )


def count_result_rows(workdir: str, task: str) -> int | None:
    """Rows in the task's default result file, or None if there is none."""
    from psyrun.store import get_store

    folder = Path(workdir) / "psy-work" / task
    for candidate in sorted(folder.glob("result.*")):
        return get_store(candidate.suffix).count_rows(str(candidate))
    return None


def measure_square(
    n_rows: int, store: str | None = None, settings: str = "", repeat: int = 1
) -> dict:
    """Best wall time of `repeat` fresh ``psy run`` calls; checks the result's size."""
    best = None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="psy-bench-") as cwd:
            tasks = Path(cwd) / "psy-tasks"
            tasks.mkdir()
            (tasks / "task_sq.py").write_text(square_task(n_rows, store, settings))
            run = run_psy(cwd, "run")
            run["rows"] = count_result_rows(cwd, "sq") if run["rc"] == 0 else None
            run["valid"] = run["rc"] == 0 and run["rows"] == n_rows
            if not run["valid"]:
                return run
            if best is None or run["wall"] < best["wall"]:
                best = run
    return best


def measure_submit_only() -> dict:
    """``psy run`` of a 10^8-row lazy product over 1,000 jobs with a recording scheduler."""
    with tempfile.TemporaryDirectory(prefix="psy-bench-") as cwd:
        tasks = Path(cwd) / "psy-tasks"
        tasks.mkdir()
        submitted = Path(cwd) / "submitted.txt"
        (tasks / "task_huge.py").write_text(RECORDER.format(submitted=str(submitted)))
        run = run_psy(cwd, "run")
        lines = submitted.read_text().split("\n") if submitted.exists() else []
        run["submitted"] = sum(1 for line in lines if line.strip())
        # split + 1,000 process jobs + merge
        run["valid"] = run["rc"] == 0 and run["submitted"] >= 1000
        return run


def _row(what: str, run: dict, key: str, unit: str, target: str, limit: float) -> dict:
    if not run.get("valid"):
        detail = (run.get("stderr") or "").strip().splitlines()[-1:] or ["no output"]
        print(
            f"{what}: psy run failed (rc={run.get('rc')}, rows={run.get('rows')}): {detail[0]}",
            file=sys.stderr,
        )
        return {
            "what": what,
            "measured": f"FAILED rc={run.get('rc')}",
            "target": target,
            "ok": False,
            "detail": detail[0],
        }
    value = run[key]
    return {"what": what, "measured": f"{value:.2f} {unit}", "target": target, "ok": value < limit}


def collect() -> list[dict]:
    """Measure the four issue-4 scenarios; each row says what, measured, target, ok."""
    rows = []
    run = measure_square(10**4, repeat=3)
    rows.append(_row("psy run, 1e4 rows, all defaults", run, "wall", "s", "< 2.8 s (aim 1)", 2.8))
    if run.get("valid"):
        rows.append(
            {
                "what": "  peak RSS of psy",
                "measured": f"{run['rss_mb']:.0f} MB",
                "target": "-",
                "ok": None,
            }
        )
    for store in ("h5", "zarr"):
        run = measure_square(10**6, store=store, settings="max_jobs = 100")
        rows.append(
            _row(f"psy run, 1e6 rows, max_jobs=100, {store}", run, "wall", "s", "< 30 s", 30.0)
        )
    run = measure_square(
        10**4,
        store="h5",
        settings="from psyrun.backend import LoadBalancingBackend\n"
        "backend = LoadBalancingBackend\nmax_jobs = 2",
        repeat=3,
    )
    rows.append(_row("load balancing, 1e4 rows, max_jobs=2, h5", run, "wall", "s", "< 2 s", 2.0))
    run = measure_submit_only()
    rows.append(
        _row("submit only, 1e8-row product, 1000 jobs: RSS", run, "rss_mb", "MB", "< 300 MB", 300)
    )
    rows.append(_row("  same run: wall", run, "wall", "s", "< 10 s", 10.0))
    return rows


if __name__ == "__main__":
    for row in collect():
        print(textwrap.shorten(str(row), 200))
