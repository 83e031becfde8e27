"""Report section: what the row guards cost, and the rows a time limit costs.

* the time ``row_timeout`` adds to each ``execute`` call (a timer armed and
  disarmed per call), measured on a cheap function, as a ratio to no timeout;
* a local sweep whose process job has a 2-second limit
  (``PSYRUN_TIME_LIMIT``): rows evaluated but not in the result (lost to the
  limit; target 0) and the seconds left between the last row and the limit
  (target: no more than about the margin).

Run alone: ``python benchmarks/report_walltime.py``.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile
import textwrap
import time

N_ROWS = 200_000


def _per_row(fn, arrays, keys, wrap=None) -> float:
    from psyrun.mapper import evaluate_block

    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        if wrap is None:
            evaluate_block(fn, arrays, keys)
        else:
            with wrap.armed():
                evaluate_block(wrap.wrap(fn), arrays, keys)
        best = min(best, time.perf_counter() - t0)
    return best / len(arrays[keys[0]])


def _timeout_overhead() -> tuple[float, float]:
    import numpy as np

    from psyrun.run.row_timeout import RowTimer

    arrays = {"x": np.arange(N_ROWS)}

    def fn(x):
        return {"y": x}

    plain = _per_row(fn, arrays, ["x"])
    timed = _per_row(fn, arrays, ["x"], RowTimer(30.0))
    return plain, timed


TASK = """
import time
from psyrun import Param
pspace = Param(x=list(range(400)))
max_jobs = 1
walltime_margin = 0.5
record = ["finished"]
CALLS = {calls!r}

def execute(x):
    with open(CALLS, "a") as f:
        f.write(f"{{x}}\\n")
    time.sleep(0.02)
    return {{"y": x}}
"""


def _limit_run(limit: float = 2.0) -> dict:
    from psyrun.run.walltime import read_partial
    from psyrun.store import PickleStore

    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "psy-tasks"))
        calls = os.path.join(d, "calls.txt")
        with open(os.path.join(d, "psy-tasks", "task_w.py"), "w") as f:
            f.write(textwrap.dedent(TASK.format(calls=calls)))
        env = dict(os.environ, PSYRUN_TIME_LIMIT=str(limit))
        psy = [sys.executable, "-m", "psyrun.cli", "run", "w"]
        subprocess.run(psy, cwd=d, env=env, capture_output=True, check=False)
        result = PickleStore().load(os.path.join(d, "psy-work", "w", "result.pkl"))
        info = read_partial(os.path.join(d, "psy-work", "w", "status", "w_process_0.partial"))
        with open(calls) as f:
            evaluated = len(f.read().split())
        last = max(
            datetime.datetime.fromisoformat(str(t)).timestamp() for t in result["psy_finished"]
        )
        return {
            "evaluated": evaluated,
            "kept": len(result["x"]),
            "spare": (info or {}).get("deadline", float("nan")) - last,
            "margin": (info or {}).get("margin", float("nan")),
        }


def collect() -> list[dict]:
    """Measure the row timeout's cost per row and the rows a local time limit loses."""
    plain, timed = _timeout_overhead()
    run = _limit_run()
    lost = run["evaluated"] - run["kept"]
    return [
        {
            "what": f"execute call, cheap function ({N_ROWS} rows), no row_timeout",
            "measured": f"{plain * 1e6:.2f} us/row",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  with row_timeout (periodic alarm, a clock read per call)",
            "measured": f"{timed * 1e6:.2f} us/row ({timed / plain:.1f}x)",
            "target": "< 3 us/row added",
            "ok": (timed - plain) < 3e-6,
        },
        {
            "what": "rows lost to a 2 s job time limit (local, 20 ms rows)",
            "measured": f"{lost} of {run['evaluated']} evaluated",
            "target": "0",
            "ok": lost == 0,
        },
        {
            "what": "  seconds left between the last row and the limit",
            "measured": f"{run['spare']:.2f} s (margin {run['margin']:.2f} s)",
            "target": "<= margin + 2 rows",
            "ok": 0 < run["spare"] <= run["margin"] + 0.1,
        },
    ]


if __name__ == "__main__":
    for row in collect():
        flag = {True: "ok", False: "MISSED", None: ""}[row["ok"]]
        print(f"{row['what']:<62} {row['measured']:>28}  {row['target']:<20} {flag}")
