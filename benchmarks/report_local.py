"""Report section: local jobs and the defaults on this machine (issue 25, targets 1 and 2).

Every figure is a whole ``psy run`` started as a subprocess in a fresh
directory, as a user runs it; the compared variants run interleaved, each
the best of a few runs, and every target is a ratio within this run (the
machine is shared and noisy). A run counts only if it exits with status 0
and its result holds every row.

* **Per local job:** ``psy run`` of 100 rows with ``max_jobs = 100`` (100
  process jobs of one row each) against ``max_jobs = 1``; the difference
  divided by 99 is what one more job costs (fork, task, description, part,
  markers, log, its share of the merge). Wall time, and CPU time of ``psy``
  and its jobs (less sensitive to other load on the machine).
* **Defaults against ``max_jobs = 1``:** the 10^6-row task
  ``y = a * b + 0.5`` (``Param(a) * Param(b)``, 1000 x 1000) vectorized and
  row by row, serial and ``-j 2``, with ``max_jobs`` left at its default.
* **LoadBalancing**, H5Store, ``pool_size = 2``, defaults against
  ``max_jobs = 1`` (10^5 rows: 10^6 rows row by row take minutes on a loaded
  machine; the ratio is what the target is about), and an explicit
  ``max_jobs = 20``, whose 19 jobs after the first find no rows left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SQUARE = """
import numpy as np
from psyrun import Param

pspace = Param(x=np.arange({n}))
{settings}


def execute(x):
    return {{"y": x * x}}
"""

PRODUCT = """
import numpy as np
from psyrun import Param
{imports}

pspace = Param(a=np.arange({n_a})) * Param(b=np.linspace(0.0, 1.0, {n_b}))
vectorized = {vectorized}
{settings}


def execute(a, b):
    return {{"y": a * b + 0.5}}
"""

LB = """from psyrun.backend import LoadBalancingBackend
from psyrun.store.h5 import H5Store"""
LB_SETTINGS = "backend = LoadBalancingBackend\nstore = H5Store()\npool_size = 2\n"


def run(source: str, n_rows: int, *args: str, ext: str = ".pkl") -> dict:
    """Run ``psy run *args`` on a task `source` in a fresh directory: wall and CPU seconds."""
    from report_run import psy_command

    from psyrun.store import get_store

    with tempfile.TemporaryDirectory(prefix="psy-bench-") as cwd:
        (Path(cwd) / "psy-tasks").mkdir()
        (Path(cwd) / "psy-tasks" / "task_t.py").write_text(source)
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode caching on, as users have it
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*psy_command(), "run", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        rc = os.waitstatus_to_exitcode(status)
        result = Path(cwd) / "psy-work" / "t" / f"result{ext}"
        rows = get_store(ext).count_rows(str(result)) if rc == 0 and result.exists() else None
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "valid": rc == 0 and rows == n_rows,
        "rc": rc,
        "detail": (err.strip().splitlines() or ["no output"])[-1],
    }


def best_of(variants: dict, repeat: int) -> dict:
    """Run every variant `repeat` times, interleaved; keep each one's best (a failure stops it)."""
    best: dict = {}
    for _ in range(repeat):
        for name, (source, n_rows, args, ext) in variants.items():
            if name in best and not best[name]["valid"]:
                continue
            r = run(source, n_rows, *args, ext=ext)
            if name not in best or not r["valid"] or r["wall"] < best[name]["wall"]:
                best[name] = r
    return best


def _failed(what: str, target: str, r: dict) -> dict:
    return {
        "what": what,
        "measured": f"FAILED rc={r['rc']}",
        "target": target,
        "ok": False,
        "detail": r["detail"],
    }


def _ratio_rows(what: str, default: dict, one: dict, limit: float) -> list[dict]:
    target = f"<= {limit}x"
    for r in (default, one):
        if not r["valid"]:
            return [_failed(what, target, r)]
    ratio = default["wall"] / one["wall"]
    return [
        {"what": what, "measured": f"{ratio:.2f}x", "target": target, "ok": ratio <= limit},
        {
            "what": "  defaults / max_jobs = 1 wall",
            "measured": f"{default['wall']:.2f} / {one['wall']:.2f} s",
            "target": "-",
            "ok": None,
        },
    ]


def per_job(repeat: int = 3) -> list[dict]:
    """What one more local process job costs (100 jobs of 1 row against 1 job)."""
    many = SQUARE.format(n=100, settings="max_jobs = 100")
    one = SQUARE.format(n=100, settings="max_jobs = 1")
    best = best_of({"many": (many, 100, (), ".pkl"), "one": (one, 100, (), ".pkl")}, repeat)
    what = "one more local job (100 jobs x 1 row vs 1 job), wall"
    if not (best["many"]["valid"] and best["one"]["valid"]):
        bad = best["many"] if not best["many"]["valid"] else best["one"]
        return [_failed(what, "<= 2 ms", bad)]
    wall = (best["many"]["wall"] - best["one"]["wall"]) / 99 * 1e3
    cpu = (best["many"]["cpu"] - best["one"]["cpu"]) / 99 * 1e3
    return [
        {"what": what, "measured": f"{wall:.1f} ms", "target": "<= 2 ms", "ok": wall <= 2.0},
        {
            "what": "  same, CPU of psy and its jobs",
            "measured": f"{cpu:.1f} ms",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  100 jobs / 1 job wall",
            "measured": f"{best['many']['wall']:.2f} / {best['one']['wall']:.2f} s",
            "target": "-",
            "ok": None,
        },
    ]


def defaults_vs_one(vectorized: bool, args: tuple, repeat: int = 3) -> list[dict]:
    """The 10^6-row product task, max_jobs left at its default against max_jobs = 1."""

    def task(settings: str) -> str:
        return PRODUCT.format(
            n_a=1000, n_b=1000, vectorized=vectorized, settings=settings, imports=""
        )

    best = best_of(
        {
            "default": (task(""), 10**6, args, ".pkl"),
            "one": (task("max_jobs = 1"), 10**6, args, ".pkl"),
        },
        repeat,
    )
    how = "vectorized" if vectorized else "row by row"
    where = " -j 2" if args else ""
    what = f"psy run{where}, 1e6 rows {how}: defaults vs max_jobs = 1"
    return _ratio_rows(what, best["default"], best["one"], 1.2)


def load_balancing(repeat: int = 2) -> list[dict]:
    """LoadBalancing, H5Store, pool_size 2: defaults, max_jobs = 1 and max_jobs = 20."""
    n_a, n_b = 100, 1000

    def task(settings: str) -> str:
        return PRODUCT.format(
            n_a=n_a, n_b=n_b, vectorized=False, settings=LB_SETTINGS + settings, imports=LB
        )

    best = best_of(
        {
            "default": (task(""), n_a * n_b, (), ".h5"),
            "one": (task("max_jobs = 1"), n_a * n_b, (), ".h5"),
            "twenty": (task("max_jobs = 20"), n_a * n_b, (), ".h5"),
        },
        repeat,
    )
    rows = _ratio_rows(
        "LoadBalancing h5 pool_size 2, 1e5 rows: defaults vs max_jobs = 1",
        best["default"],
        best["one"],
        1.5,
    )
    what = "  max_jobs = 20 (19 jobs find no rows) vs max_jobs = 1"
    if best["twenty"]["valid"] and best["one"]["valid"]:
        ratio = best["twenty"]["wall"] / best["one"]["wall"]
        rows.append(
            {"what": what, "measured": f"{ratio:.2f}x", "target": "<= 1.5x", "ok": ratio <= 1.5}
        )
    else:
        rows.append(_failed(what, "<= 1.5x", best["twenty"]))
    return rows


def collect() -> list[dict]:
    """Measure the issue-25 local-job targets; rows of what, measured, target, ok."""
    rows = per_job()
    for vectorized in (True, False):
        for args in ((), ("-j", "2")):
            rows.extend(defaults_vs_one(vectorized, args, repeat=3 if vectorized else 2))
    rows.extend(load_balancing())
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    for row in collect():
        print(textwrap.shorten(str(row), 200))
