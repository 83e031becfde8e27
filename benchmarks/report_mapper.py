"""Report section: mapping functions over parameter spaces (issue 3 targets)."""

from __future__ import annotations

import time


def _best_of(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def trivial(x):
    """Return a one-output result; the cheapest useful function."""
    return {"y": x}


def collect() -> list[dict]:
    """Measure map_pspace and map_pspace_parallel on trivial functions."""
    from psyrun import Param, map_pspace, map_pspace_parallel

    big = Param(x=list(range(10**5)))
    serial = _best_of(lambda: map_pspace(trivial, big))
    # The bare loop a user could write by hand, for a ratio within this run.
    xs = list(range(10**5))
    loop = _best_of(lambda: [trivial(x=x) for x in xs])

    small = Param(x=list(range(10**4)))
    map_pspace_parallel(trivial, Param(x=[1, 2]), n_jobs=2)  # start the workers once
    parallel = _best_of(lambda: map_pspace_parallel(trivial, small, n_jobs=2))
    return [
        {
            "what": "map_pspace, 1e5 rows, trivial fn",
            "measured": f"{serial:.3f} s",
            "target": "<= 0.105 s",
            "ok": serial <= 0.105,
        },
        {
            "what": "  ratio to a bare Python loop",
            "measured": f"{serial / loop:.1f}x",
            "target": "-",
            "ok": None,
        },
        {
            "what": "map_pspace_parallel, 1e4 rows, 2 jobs",
            "measured": f"{parallel:.3f} s",
            "target": "< 1 s",
            "ok": parallel < 1.0,
        },
    ]


if __name__ == "__main__":
    for row in collect():
        print(row)
