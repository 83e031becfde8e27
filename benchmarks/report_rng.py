"""Report section: per-row random generators (issue 24, item 3).

Runnable alone: ``python benchmarks/report_rng.py``; normally run through
``python benchmarks/report.py rng``. A row's generator cannot cost less than
NumPy creating one (``np.random.default_rng`` of a 128-bit seed), so every
figure is a ratio to that floor, measured in this run, interleaved, as the
best CPU time of a few runs (``time.process_time``).
"""

from __future__ import annotations

import time

import numpy as np


def _best_interleaved(fns: dict, repeat: int = 5) -> dict:
    """Best CPU time of each function, running them in turn `repeat` times."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            started = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - started)
    return best


def plain(x, method, seed):
    """A row function that draws nothing."""
    return {"y": x}


def drawing(x, method, seed, rng):
    """The same function given its row's generator."""
    return {"y": x}


def collect() -> list[dict]:
    """Measure row_rng, row_seeds and a block with generators against NumPy's floor."""
    from psyrun import Param, row_rng, row_seeds
    from psyrun.mapper import evaluate_block

    space = Param(x=np.linspace(0, 1, 64)) * Param(method=["a", "b"]) * Param(seed=range(32))
    arrays = space.to_arrays()
    keys = list(arrays)
    n = len(space)
    rows = [dict(zip(keys, values)) for values in zip(*(arrays[k].tolist() for k in keys))]
    seeds = row_seeds(1, arrays)
    assert np.array_equal(
        np.random.default_rng(seeds[5]).random(3), row_rng(1, **rows[5]).random(3)
    )

    best = _best_interleaved(
        {
            "numpy": lambda: [np.random.default_rng(s) for s in seeds],
            "row_rng": lambda: [row_rng(1, **row) for row in rows],
            "row_seeds": lambda: row_seeds(1, arrays),
            "block": lambda: evaluate_block(plain, arrays, keys),
            "block_rng": lambda: evaluate_block(drawing, arrays, keys, rng_seed=1),
        }
    )
    floor = best["numpy"] / n
    per_row = {k: v / n for k, v in best.items()}
    overhead = per_row["block_rng"] - per_row["block"]
    return [
        {
            "what": f"np.random.default_rng(seed), per row ({n} rows; the floor)",
            "measured": f"{floor * 1e6:.1f} us",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  row_rng(seed, **row) / the floor",
            "measured": f"{per_row['row_rng'] / floor:.2f}x",
            "target": "<= 2x",
            "ok": per_row["row_rng"] <= 2 * floor,
        },
        {
            "what": "  row_seeds, per row (vectorized rng) / the floor",
            "measured": f"{per_row['row_seeds'] / floor:.2f}x",
            "target": "<= 1x",
            "ok": per_row["row_seeds"] <= floor,
        },
        {
            "what": "  evaluate_block: cost of rng per row / the floor",
            "measured": f"{overhead / floor:.2f}x",
            "target": "<= 2x",
            "ok": overhead <= 2 * floor,
        },
    ]


if __name__ == "__main__":
    for row in collect():
        print(f"{row['what']:<60} {row['measured']:>10}  target {row['target']}")
