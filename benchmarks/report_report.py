"""Report section: ``psy report`` of a 10^6-row task (issue 22 target: under 10 s).

Two tasks of 10^6 rows are run once with ``psy run`` (vectorized, not
timed), then ``psy report TASK -o page.html`` is started as a subprocess, as a
user would, ``REPEAT`` times; the best wall time counts. ``psy status`` of the
same task is timed in the same way next to it: the report computes the same
status (the numba kernels that match stored rows to the space compile in
every new process), so the ratio report/status shows what the page itself
adds. CPU seconds (user + system of the process, from ``os.wait4``) are
printed too: on a shared machine they vary less than wall time.

* ``grid``: ``Param(a=1000 values) * Param(b=1000 values)``, two outputs: exact
  per-value and per-cell statistics over every row (binned).
* ``scatter``: the same rows as one zipped ``Param`` (not a grid): a regular
  subsample of 20,000 rows is drawn.

A run counts only if ``psy report`` exits with status 0 and the page holds
the expected number of inline images.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_ROWS = 10**6
TARGET_SECONDS = 10.0
REPEAT = 3

TASKS = {
    "grid": (
        "pspace = Param(a=np.arange(1000)) * Param(b=np.linspace(0.0, 1.0, 1000))",
        # coverage is not drawn (complete); y and z: lines and heatmaps
        4,
    ),
    "scatter": (
        f"pspace = Param(a=np.arange({N_ROWS}), b=np.random.default_rng(1).random({N_ROWS}))",
        2,
    ),
}

SOURCE = """
import numpy as np
from psyrun import Param

{pspace}
vectorized = True
max_jobs = 2


def execute(a, b):
    return {{"y": a * b, "z": np.sin(a + b)}}
"""


def psy_command() -> list[str]:
    """The argv prefix that runs ``psy`` with this interpreter."""
    script = Path(sys.executable).with_name("psy")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "psyrun.cli"]


def timed(cwd: str, *args: str) -> dict:
    """Run ``psy *args`` in `cwd`; return wall and CPU seconds and the exit status."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*psy_command(), *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rc": os.waitstatus_to_exitcode(status),
        "stderr": err,
    }


def measure(kind: str) -> dict:
    """Best of `REPEAT` ``psy report`` and ``psy status`` calls on a 10^6-row task."""
    pspace, images = TASKS[kind]
    with tempfile.TemporaryDirectory(prefix="psy-bench-report-") as cwd:
        (Path(cwd) / "psy-tasks").mkdir()
        (Path(cwd) / "psy-tasks" / "task_big.py").write_text(SOURCE.format(pspace=pspace))
        run = timed(cwd, "run", "big")
        if run["rc"] != 0:
            return {"valid": False, "why": f"psy run failed: {run['stderr'][-300:]}"}
        best = {}
        for _ in range(REPEAT):
            for what, args in (
                ("report", ("report", "big", "-o", "page.html")),
                ("status", ("status", "big")),
            ):
                done = timed(cwd, *args)
                if done["rc"] != 0:
                    return {"valid": False, "why": f"psy {what} failed: {done['stderr'][-300:]}"}
                if what not in best or done["wall"] < best[what]["wall"]:
                    best[what] = done
        page = (Path(cwd) / "page.html").read_text(encoding="utf-8")
        found = page.count("data:image/png;base64,")
        if found != images or "1,000,000 of 1,000,000" not in page:
            return {"valid": False, "why": f"the page holds {found} images, not {images}"}
        return {"valid": True, **best}


def collect() -> list[dict]:
    """Rows ``{'what', 'measured', 'target', 'ok'}`` for benchmarks/report.py."""
    rows = []
    for kind in TASKS:
        m = measure(kind)
        what = f"psy report, 10^6 rows ({kind})"
        if not m["valid"]:
            print(f"{what}: {m['why']}", file=sys.stderr)
            rows.append({"what": what, "measured": "FAILED", "target": "< 10 s", "ok": False})
            continue
        report, status = m["report"], m["status"]
        rows.append(
            {
                "what": what,
                "measured": f"{report['wall']:.2f} s",
                "target": f"< {TARGET_SECONDS:g} s",
                "ok": report["wall"] < TARGET_SECONDS,
            }
        )
        rows.append(
            {
                "what": f"  CPU seconds of that report (of psy status: {status['cpu']:.2f})",
                "measured": f"{report['cpu']:.2f} s",
                "target": "-",
                "ok": None,
            }
        )
        rows.append(
            {
                "what": "  wall time report / psy status of the same task",
                "measured": f"{report['wall'] / status['wall']:.2f}x",
                "target": "-",
                "ok": None,
            }
        )
    return rows


if __name__ == "__main__":
    for row in collect():
        print(f"{row['what']:<60} {row['measured']:>10}  target {row['target']}")
