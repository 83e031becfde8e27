"""Report section: mapping functions over parameter spaces (issues 3 and 10).

Runnable alone: ``python benchmarks/report_mapper.py``; normally run through
``python benchmarks/report.py mapper``. Each ratio compares two figures
measured in this run, interleaved (so a busy machine slows both alike), as
the best of a few runs of CPU time of this process (``time.process_time``:
what the code costs, not what other processes on shared cores cost it).
"""

from __future__ import annotations

import itertools
import time

import numpy as np


def _best_interleaved(fns: dict, repeat: int = 7) -> dict:
    """Best CPU time of each function, running them in turn `repeat` times."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            started = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - started)
    return best


def trivial(x):
    """Return one output; the cheapest useful function (issue 10's case)."""
    return {"y": x * x}


def identity(x):
    """Return the parameter as the output (issue 3's case)."""
    return {"y": x}


def affine(a, b):
    """The vectorized function of issue 10."""
    return {"y": a * b + 0.5}


def grid_fn(a, b, c):
    """A cheap function of the three keys of the 10^6-row product."""
    return {"y": a * b + c}


def grid_space():
    """The 10^6-row product of three 100-value Params (as in report_pspace)."""
    from psyrun import Param

    return Param(a=np.arange(100)) * Param(b=np.arange(100) * 0.5) * Param(c=np.arange(100))


def grid_loop(a: list, b: list, c: list) -> dict:
    """The plain loop over ``itertools.product``: call, build the four columns."""
    a_column, b_column, c_column, y_column = [], [], [], []
    for x, y, z in itertools.product(a, b, c):
        result = grid_fn(a=x, b=y, c=z)
        a_column.append(x)
        b_column.append(y)
        c_column.append(z)
        y_column.append(result["y"])
    return {"a": a_column, "b": b_column, "c": c_column, "y": y_column}


def plain_loop(xs):
    """The loop a user would write by hand: call the function, build both columns."""
    x_column, y_column = [], []
    for x in xs:
        result = trivial(x=x)
        x_column.append(x)
        y_column.append(result["y"])
    return {"x": x_column, "y": y_column}


def bare_loop(xs):
    """Cheaper still: the input list is the parameter column, only outputs are built."""
    y_column = []
    for x in xs:
        y_column.append(trivial(x=x)["y"])
    return {"x": xs, "y": y_column}


def fresh_loop(values: np.ndarray, block_size: int = 16384):
    """The plain loop over values decoded from NumPy a block at a time.

    This is the floor for any mapper over a space held as arrays: the
    parameter values must be created as Python objects (``tolist``), where
    :func:`plain_loop` reuses the objects of a list that already exists.
    """
    x_column, y_column = [], []
    for start in range(0, len(values), block_size):
        for x in values[start : start + block_size].tolist():
            result = trivial(x=x)
            x_column.append(x)
            y_column.append(result["y"])
    return {"x": x_column, "y": y_column}


def plain_blocks(xs, block_size: int = 1024) -> int:
    """The plain loop over blocks of rows, each block's columns dropped after use."""
    rows = 0
    for start in range(0, len(xs), block_size):
        rows += len(plain_loop(xs[start : start + block_size])["y"])
    return rows


def results_blocks(fn, space, block_size: int = 1024) -> int:
    """Consume :func:`psyrun.mapper.iter_results` as a process job does.

    A job appends each block to its part file and drops it; here each block
    is only counted.
    """
    from psyrun.mapper import iter_results

    return sum(len(block["y"]) for block in iter_results(fn, space, block_size))


def rows_as_dicts(space, block_size: int = 1024) -> list:
    """Blocks of ``(param_columns, rows)`` for :func:`psyrun.mapper.evaluate_rows`."""
    from psyrun.mapper import iter_rows

    return list(iter_rows(space, block_size=block_size))


def evaluate_each(fn, blocks: list) -> list:
    """Evaluate every block of :func:`rows_as_dicts` with ``evaluate_rows``."""
    from psyrun.mapper import evaluate_rows

    return [evaluate_rows(fn, columns, rows) for columns, rows in blocks]


def collect() -> list[dict]:
    """Measure the row path against plain loops, the vectorized path against NumPy."""
    from psyrun import Param, map_pspace, map_pspace_parallel
    from psyrun.mapper import concatenate_results, iter_results

    n = 10**6
    space = Param(x=list(range(n)))
    xs = list(range(n))
    values = np.arange(n)
    dict_rows = rows_as_dicts(space)
    rows = _best_interleaved(
        {
            "map_pspace": lambda: map_pspace(trivial, space),
            "plain": lambda: plain_loop(xs),
            "bare": lambda: bare_loop(xs),
            "fresh": lambda: fresh_loop(values),
            "iter_results": lambda: results_blocks(trivial, space),
            "plain_blocks": lambda: plain_blocks(xs),
            "evaluate_rows": lambda: evaluate_each(trivial, dict_rows),
        }
    )
    assert map_pspace(trivial, Param(x=xs[:10])) == plain_loop(xs[:10]) == fresh_loop(values[:10])
    small = Param(x=xs[:3000])
    assert results_blocks(trivial, small) == plain_blocks(xs[:3000]) == 3000
    assert concatenate_results(iter_results(trivial, small, 1024)) == plain_loop(xs[:3000])
    assert concatenate_results(evaluate_each(trivial, rows_as_dicts(small))) == plain_loop(
        xs[:3000]
    )

    grid = grid_space()
    lists = [np.arange(100).tolist(), (np.arange(100) * 0.5).tolist(), np.arange(100).tolist()]
    assert map_pspace(grid_fn, grid) == grid_loop(*lists)
    product = _best_interleaved(
        {"map_pspace": lambda: map_pspace(grid_fn, grid), "plain": lambda: grid_loop(*lists)},
        repeat=5,
    )

    vspace = Param(a=np.arange(10**4, dtype=float)) * Param(b=np.arange(10**3, dtype=float))
    arrays = vspace.to_arrays()
    a, b = arrays["a"], arrays["b"]
    del arrays
    vec = _best_interleaved(
        {
            "map_pspace": lambda: map_pspace(affine, vspace, vectorized=True),
            "numpy": lambda: a * b + 0.5,
        },
        repeat=5,
    )
    assert np.array_equal(map_pspace(affine, vspace, vectorized=True)["y"], a * b + 0.5)

    # Issue 3's absolute target (wall time, a one-output identity function).
    big = Param(x=list(range(10**5)))
    serial = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        map_pspace(identity, big)
        serial = min(serial, time.perf_counter() - started)

    small = Param(x=list(range(10**4)))
    map_pspace_parallel(trivial, Param(x=[1, 2]), n_jobs=2)  # start the workers once
    started = time.perf_counter()
    map_pspace_parallel(trivial, small, n_jobs=2)
    parallel = time.perf_counter() - started

    row_ratio = rows["map_pspace"] / rows["plain"]
    vec_ratio = vec["map_pspace"] / vec["numpy"]
    return [
        {
            "what": "map_pspace, 1e5 rows, trivial fn (wall)",
            "measured": f"{serial:.3f} s",
            "target": "<= 0.105 s",
            "ok": serial <= 0.105,
        },
        {
            "what": "map_pspace, 1e6 rows, {'y': x * x} (CPU)",
            "measured": f"{rows['map_pspace']:.3f} s",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  vs a plain loop building both columns",
            "measured": f"{row_ratio:.2f}x",
            "target": "<= 1.5x",
            "ok": row_ratio <= 1.5,
        },
        {
            "what": "  iter_results, 1024-row blocks (a job's loop), vs plain ones",
            "measured": f"{rows['iter_results'] / rows['plain_blocks']:.2f}x",
            "target": "<= 1.5x",
            "ok": rows["iter_results"] / rows["plain_blocks"] <= 1.5,
        },
        {
            "what": "  evaluate_rows, rows as dicts, vs plain",
            "measured": f"{rows['evaluate_rows'] / rows['plain']:.2f}x",
            "target": "<= 1.5x",
            "ok": rows["evaluate_rows"] / rows["plain"] <= 1.5,
        },
        {
            "what": "  vs a bare loop (input list as x column)",
            "measured": f"{rows['map_pspace'] / rows['bare']:.2f}x",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  plain loop over values decoded from NumPy, vs plain",
            "measured": f"{rows['fresh'] / rows['plain']:.2f}x",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  map_pspace vs that decoding plain loop",
            "measured": f"{rows['map_pspace'] / rows['fresh']:.2f}x",
            "target": "-",
            "ok": None,
        },
        {
            "what": "map_pspace, 1e6-row product of three Params, row by row (CPU)",
            "measured": f"{product['map_pspace']:.3f} s",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  vs a plain itertools.product loop building the columns",
            "measured": f"{product['map_pspace'] / product['plain']:.2f}x",
            "target": "<= 1.5x",
            "ok": product["map_pspace"] / product["plain"] <= 1.5,
        },
        {
            "what": "vectorized map_pspace, 1e7 rows, a * b + 0.5 (CPU)",
            "measured": f"{vec['map_pspace']:.3f} s",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  vs the NumPy expression alone",
            "measured": f"{vec_ratio:.2f}x",
            "target": "<= 3x",
            "ok": vec_ratio <= 3,
        },
        {
            "what": "map_pspace_parallel, 1e4 rows, 2 jobs (wall)",
            "measured": f"{parallel:.3f} s",
            "target": "< 1 s",
            "ok": parallel < 1.0,
        },
    ]


if __name__ == "__main__":
    for row in collect():
        print(row)
