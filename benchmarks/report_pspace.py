"""Report section: the lazy parameter-space engine (issue 2 targets).

Runnable alone: ``python benchmarks/report_pspace.py``; normally run through
``python benchmarks/report.py pspace``. Every figure is the best of a few
runs in this process, except the first-call times, which are measured in
fresh interpreters: without numba's on-disk cache (the default; kernels run
their NumPy versions until compiling pays, see psyrun._kernels), and with
``PSYRUN_NUMBA_CACHE`` set (once with an empty cache, once with the cache that
run left behind). iterate() and its two
plain-Python floors are timed in CPU time, interleaved, best of nine.
"""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
import tempfile
import time

import numpy as np


def _best_of(fn, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def product_1e6():
    """The 10^6-row 3-factor product of the issue (three 100-value Params)."""
    from psyrun.pspace import Param

    return Param(a=np.arange(100)) * Param(b=np.arange(100) * 0.5) * Param(c=np.arange(100))


def product_1e12():
    """Six 100-value Params: 10^12 rows."""
    from psyrun.pspace import Param

    space = Param(p0=np.arange(100))
    for i in range(1, 6):
        space = space * Param(**{f"p{i}": np.arange(100)})
    return space


def ten_way_sum():
    """Ten concatenated 10^4-row Params with distinct keys."""
    from psyrun.pspace import Param

    space = Param(k0=np.arange(10**4))
    for i in range(1, 10):
        space = space + Param(**{f"k{i}": np.arange(10**4)})
    return space


def difference_case():
    """A 10^6-row product and 10^5 of its rows (as a Param)."""
    from psyrun.pspace import Param

    space = product_1e6()
    rows = np.random.default_rng(0).choice(len(space), 10**5, replace=False)
    return space, Param(**space.take(rows))


def missing_case():
    """A 10^6-row product and 5*10^5 result rows as a store's load() gives them."""
    space = product_1e6()
    rows = np.random.default_rng(1).choice(len(space), 5 * 10**5, replace=False)
    results = space.take(rows)
    results["y"] = np.random.default_rng(2).random(len(rows))
    return space, results


def _difference_first_1000(space, subtrahend):
    d = space - subtrahend
    len(d)
    d.to_arrays(0, 1000)


_FIRST_CALL = """
import time, numpy as np
import sys; sys.path.insert(0, {here!r})
from report_pspace import difference_case, _difference_first_1000
space, sub = difference_case()
started = time.perf_counter()
_difference_first_1000(space, sub)
first = time.perf_counter() - started
started = time.perf_counter()
_difference_first_1000(space, sub)
print(first, time.perf_counter() - started)
"""


def _first_call(code: str, env: dict) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return [float(x) for x in out.stdout.split()]


def iterate_figures(space, a: list, b: list, c: list, repeat: int = 9):
    """Best CPU seconds of iterate() and of two plain-Python floors, interleaved.

    Both floors build the same dicts of the same Python values from
    ``itertools.product``: one inline in a loop (it yields nothing), one in a
    generator, which is what any lazy iterator of dicts must at least cost.
    """

    def iterate():
        for _ in space.iterate():
            pass

    def inline():
        for x, y, z in itertools.product(a, b, c):
            {"a": x, "b": y, "c": z}  # noqa: B018 - the dict is the work measured

    def generator():
        for x, y, z in itertools.product(a, b, c):
            yield {"a": x, "b": y, "c": z}

    def lazy():
        for _ in generator():
            pass

    best = [float("inf")] * 3
    for _ in range(repeat):
        for j, fn in enumerate((iterate, inline, lazy)):
            started = time.process_time()
            fn()
            best[j] = min(best[j], time.process_time() - started)
    return tuple(best)


def first_call_times() -> tuple[float, float, float, float]:
    """Return seconds of the first difference in a fresh process, and of a second one.

    (cache off: the default, cache on: empty, cache on: warm, second difference)
    """
    here = os.path.dirname(os.path.abspath(__file__))
    code = _FIRST_CALL.format(here=here)
    env = dict(os.environ)
    env.pop("PSYRUN_DISABLE_NUMBA", None)
    env.pop("PSYRUN_NUMBA_CACHE", None)
    off = _first_call(code, env)
    with tempfile.TemporaryDirectory() as cache:
        env["PSYRUN_NUMBA_CACHE"] = cache
        empty = _first_call(code, env)
        warm = _first_call(code, env)
    return off[0], empty[0], warm[0], warm[1]


def import_time() -> tuple[float, bool]:
    """Return the seconds to import psyrun.pspace and whether numba came along."""
    code = (
        "import time; t = time.perf_counter(); import psyrun.pspace; "
        "import sys; print(time.perf_counter() - t, 'numba' in sys.modules)"
    )
    times = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        seconds, numba = out.stdout.split()
        times.append(float(seconds))
    return min(times), numba == "True"


def collect() -> list[dict]:
    """Measure every pspace target of issue 2."""
    rows = []

    def row(what, measured, target, ok):
        rows.append({"what": what, "measured": measured, "target": target, "ok": ok})

    space = product_1e6()
    build = _best_of(space.build)
    row("build(), 1e6-row 3-factor product", f"{build:.3f} s", "<= 0.14 s", build <= 0.14)

    arrays = _best_of(space.to_arrays)
    a, b, c = np.arange(100), np.arange(100) * 0.5, np.arange(100)
    direct = _best_of(
        lambda: (np.repeat(a, 10**4), np.tile(np.repeat(b, 100), 100), np.tile(c, 10**4))
    )
    ratio = arrays / direct
    row("  to_arrays() of it", f"{arrays * 1e3:.1f} ms", "-", None)
    row("  ratio to np.repeat/np.tile", f"{ratio:.1f}x", "<= 3x", ratio <= 3)

    it, inline, lazy = iterate_figures(space, a.tolist(), b.tolist(), c.tolist())
    row("iterate(), same product (CPU)", f"{it:.3f} s", "<= 0.14 s", it <= 0.14)
    row(
        "  vs the same dicts from itertools.product in a generator",
        f"{it / lazy:.2f}x",
        "<= 1.3x",
        it / lazy <= 1.3,
    )
    row("  vs an inline itertools.product loop (no yield)", f"{it / inline:.2f}x", "-", None)
    row("  (generator vs inline loop: the cost of yielding)", f"{lazy / inline:.2f}x", "-", None)

    huge = product_1e12()
    picks = np.random.default_rng(3).integers(0, len(huge), 1000).tolist()
    per_item = _best_of(lambda: [huge[i] for i in picks]) / 1000
    row(
        "p[i], 1e12-row product of six Params",
        f"{per_item * 1e6:.1f} us",
        "<= 6 us",
        per_item <= 6e-6,
    )
    lists = [list(range(100))] * 6
    names = [f"p{i}" for i in range(6)]

    def grid_lookup(i):
        # The plain mixed-radix lookup a grid class does, for scale.
        out = {}
        for name, values in zip(reversed(names), reversed(lists)):
            i, r = divmod(i, len(values))
            out[name] = values[r]
        return out

    baseline = _best_of(lambda: [grid_lookup(i) for i in picks]) / 1000
    row("  plain-Python grid lookup, same rows", f"{baseline * 1e6:.1f} us", "-", None)

    many = np.random.default_rng(4).integers(0, len(huge), 10**6)
    take = _best_of(lambda: huge.take(many))
    row("1e6 random rows as columns (take)", f"{take:.3f} s", "< 0.2 s", take < 0.2)

    size = len(pickle.dumps(huge))
    again = pickle.loads(pickle.dumps(huge))
    same = all(again[i] == huge[i] for i in picks[:20])
    row(
        "pickle of the 1e12-row product",
        f"{size / 1024:.1f} KiB",
        "few KiB, same rows",
        size < 8 * 1024 and same,
    )

    minuend, subtrahend = difference_case()
    _difference_first_1000(minuend, subtrahend)
    diff = _best_of(lambda: _difference_first_1000(minuend, subtrahend))
    row("(1e6 product) - (1e5 rows): len+1000 rows", f"{diff:.3f} s", "< 0.3 s warm", diff < 0.3)

    big, results = missing_case()
    miss = _best_of(lambda: len(__import__("psyrun.pspace").pspace.missing(big, results)))
    row("missing(1e6 space, 5e5 result rows)", f"{miss:.3f} s", "< 0.5 s", miss < 0.5)
    as_lists = {k: v.tolist() for k, v in results.items()}
    miss_lists = _best_of(
        lambda: len(__import__("psyrun.pspace").pspace.missing(big, as_lists)), repeat=3
    )
    row("  same, results as Python lists", f"{miss_lists:.3f} s", "-", None)

    off, empty, cached, warm = first_call_times()
    row("  first difference in a fresh process (default)", f"{off:.2f} s", "-", None)
    row("  first difference, PSYRUN_NUMBA_CACHE, empty cache", f"{empty:.2f} s", "-", None)
    row("  first difference, PSYRUN_NUMBA_CACHE, cache on disk", f"{cached:.2f} s", "-", None)
    row("  second difference, same process", f"{warm:.3f} s", "-", None)

    ten = ten_way_sum()
    concat = _best_of(ten.build)
    row("build(), ten 1e4-row Params concatenated", f"{concat:.4f} s", "< 0.05 s", concat < 0.05)

    seconds, numba = import_time()
    row(
        "import psyrun.pspace (numba not loaded)", f"{seconds * 1e3:.0f} ms", "no numba", not numba
    )
    return rows


if __name__ == "__main__":
    for r in collect():
        print(r)
