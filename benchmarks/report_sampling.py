"""Report section: sampling spaces (issue 24 targets).

Runnable alone: ``python benchmarks/report_sampling.py``; normally run through
``python benchmarks/report.py sampling``. psyrun and its reference are timed
alternately, and each figure is the best of the runs. The times are CPU time
of this process (``time.process_time``: user and system, page faults
included), not wall-clock time: on a shared machine a wall-clock figure
mostly measures how long the process waited for a core. Everything timed
here runs on one thread, so on an idle machine the two agree. The Sobol'
ratio is also given in wall-clock time for comparison.
"""

from __future__ import annotations

import time

import numpy as np


def _best_of_each(fns: dict, repeat: int = 9, clock=time.process_time) -> dict:
    """Best time of each function, running them in turn `repeat` times."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            started = clock()
            fn()
            best[name] = min(best[name], clock() - started)
    return best


def collect() -> list[dict]:
    """Measure every sampling target of issue 24."""
    try:
        from scipy.stats import qmc
    except ImportError:
        return [
            {
                "what": "sampling: scipy not installed (pip install psyrun[qmc])",
                "measured": "-",
                "target": "-",
                "ok": None,
            }
        ]

    from psyrun import Param, Random, Sobol

    rows = []

    def row(what, measured, target, ok):
        rows.append({"what": what, "measured": measured, "target": target, "ok": ok})

    # 2**20 Sobol' points in 3-d: psyrun's columns against scipy's array.
    for log2_n in (16, 18, 20, 22):
        n = 2**log2_n
        uniform = Sobol(n, seed=1, a=(0, 1), b=(-1, 1), c=(2, 3))
        mixed = Sobol(n, seed=1, a=(0, 1), b=(-1, 1), c=(1e-3, 1, "log"))
        uniform.to_arrays(0, 2), mixed.to_arrays(0, 2)
        best = _best_of_each(
            {
                "scipy": lambda n=n: qmc.Sobol(3, rng=1).random(n),
                "uniform": uniform.to_arrays,
                "mixed": mixed.to_arrays,
            },
            repeat=9 if log2_n <= 20 else 3,
        )
        ratio = best["uniform"] / best["scipy"]
        if log2_n == 20:
            row(
                "Sobol 2^20 x 3-d, to_arrays (uniform dims)",
                f"{best['uniform'] * 1e3:.1f} ms",
                "-",
                None,
            )
            row(
                "  scipy.stats.qmc.Sobol(3).random(2^20)",
                f"{best['scipy'] * 1e3:.1f} ms",
                "-",
                None,
            )
            row("  ratio psyrun / scipy", f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5)
            row(
                "  ratio with one log-uniform dim",
                f"{best['mixed'] / best['scipy']:.2f}x",
                "-",
                None,
            )
            wall = _best_of_each(
                {"scipy": lambda n=n: qmc.Sobol(3, rng=1).random(n), "uniform": uniform.to_arrays},
                clock=time.perf_counter,
            )
            row(
                "  ratio in wall-clock time (this machine's load included)",
                f"{wall['uniform'] / wall['scipy']:.2f}x",
                "-",
                None,
            )
        else:
            row(
                f"  scaling: 2^{log2_n} points, psyrun / scipy",
                f"{best['uniform'] * 1e3:.1f} ms / {best['scipy'] * 1e3:.1f} ms",
                f"{ratio:.2f}x",
                None,
            )

    # Skipping ahead: a range deep in the sequence costs what a range at its start does.
    deep = Sobol(2**22, seed=1, a=(0, 1), b=(-1, 1), c=(2, 3))
    deep.to_arrays(0, 2)
    m = 2**16
    best = _best_of_each(
        {
            "start": lambda: deep.to_arrays(0, m),
            "deep": lambda: deep.to_arrays(2**22 - m, 2**22),
        }
    )
    row(
        "  2^16 rows at the end / at the start of Sobol(2^22)",
        f"{best['deep'] * 1e3:.2f} / {best['start'] * 1e3:.2f} ms",
        f"{best['deep'] / best['start']:.2f}x",
        None,
    )

    # 1000 random rows of Sobol(2^20) * grid(1000).
    space = Sobol(2**20, seed=1, a=(0, 1), b=(-1, 1), c=(1e-3, 1, "log")) * Param(
        k=np.arange(1000)
    )
    picks = np.random.default_rng(0).integers(0, len(space), 1000)
    started = time.process_time()
    space.take(picks)  # the first call makes scipy's engine
    cold = time.process_time() - started
    warm = _best_of_each({"take": lambda: space.take(picks)})["take"]
    row(
        "1000 random rows of Sobol(2^20) * grid(1000)",
        f"{warm * 1e3:.2f} ms",
        "<= 10 ms",
        warm <= 0.010,
    )
    row("  first call (makes the scipy engine)", f"{cold * 1e3:.2f} ms", "-", None)

    # 10^6 rows of Random in 3-d against NumPy's default generator.
    rand = Random(10**6, seed=1, a=(0, 1), b=(-1, 1), c=(2, 3))
    started = time.process_time()
    rand.to_arrays()  # the first draw in this process (NumPy kernels until numba pays)
    first = time.process_time() - started
    best = _best_of_each(
        {
            "numpy": lambda: np.random.default_rng(1).random((10**6, 3)),
            "psyrun": rand.to_arrays,
        }
    )
    ratio = best["psyrun"] / best["numpy"]
    row("Random 10^6 x 3-d, to_arrays", f"{best['psyrun'] * 1e3:.1f} ms", "-", None)
    row("  np.random.default_rng().random((10^6, 3))", f"{best['numpy'] * 1e3:.1f} ms", "-", None)
    row("  ratio psyrun / NumPy", f"{ratio:.2f}x", "<= 2x", ratio <= 2)
    row("  first call in a process", f"{first:.2f} s", "-", None)
    return rows


if __name__ == "__main__":
    for r in collect():
        ok = {True: "yes", False: "NO", None: "-"}[r["ok"]]
        print(f"{r['what']:<55} {r['measured']:>22} {r['target']:>10} {ok}")
