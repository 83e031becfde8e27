"""Faults: sampling spaces (issue 24) through edits, crashes and shrinks.

A sampled row is identified by its values, so these cases check that the
values of a row never depend on which job or process drew them:

* a task file edited to drop its sample's seed is refused with the reason,
  before anything is written, and the result stays as it was;
* a process job killed with SIGKILL at a seeded row: ``psy run -c``
  finishes with every row once, bit for bit the values of the space;
* a sample shrunk after rows failed at seeded points: ``psy run -c``
  computes exactly the current rows still missing, and the rows of the
  dropped points are reported as outside the space, never counted.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import scipy.stats
from e2e_helpers import load_result, result_path, status_counts, write
from fault_helpers import assert_untouched, tree_state
from psy_helpers import psy

from psyrun import Param, Random, Sobol

TASK = """
import os
import signal

import scipy.stats

from psyrun import Param, Random, Sobol

pspace = {space}
max_jobs = 3
min_items = 1
FAULT = {fault!r}


def execute(x, k, method):
    if os.path.exists(FAULT) and k in {bad!r}:
        if {kill!r}:
            os.remove(FAULT)  # once: the next run finishes
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError('injected failure')
    return {{'y': x * 2 + k}}
"""

RANDOM = (
    "Random({n}, seed={seed}, x=(-1, 1), k=scipy.stats.poisson(30)) * Param(method=['a', 'b'])"
)
SOBOL = "Sobol({n}, seed=5, x=(0, 1), k=scipy.stats.randint(0, 1000)) * Param(method=['a', 'b'])"


def task(tmp_path: Path, space: str, bad=(), kill=False) -> Path:
    fault = tmp_path / "fault"
    if bad:
        fault.write_text("armed")
    source = TASK.format(space=space, fault=str(fault), bad=list(bad), kill=kill)
    return write(tmp_path / "psy-tasks" / "task_s.py", textwrap.dedent(source))


def rows(data, keys=("x", "k", "method")) -> list[tuple]:
    return sorted(zip(*(np.asarray(data[k]).tolist() for k in keys)))


def space_rows(space) -> list[tuple]:
    return rows(space.to_arrays())


def test_dropping_the_seed_is_refused_and_leaves_the_result(tmp_path):
    task(tmp_path, RANDOM.format(n=6, seed=3))
    assert psy("run", "s", cwd=tmp_path).returncode == 0
    before = tree_state(tmp_path)
    task(tmp_path, RANDOM.format(n=6, seed=3).replace("seed=3, ", ""))
    before = {k: v for k, v in before.items() if "task_s.py" not in str(k)}
    for args in (("run", "-c", "s"), ("run", "s"), ("status", "s")):
        out = psy(*args, cwd=tmp_path)
        assert out.returncode != 0, out.output
        assert "without a seed" in out.output, out.output
        assert "Traceback" not in out.output
    after = {k: v for k, v in tree_state(tmp_path).items() if "task_s.py" not in str(k)}
    assert_untouched(before, after, "the project after refused runs")


def test_a_job_killed_at_a_seeded_row_then_continue(tmp_path, fault_rng):
    seed = int(fault_rng.integers(2**31))
    space = Random(9, seed=seed, x=(-1, 1), k=scipy.stats.poisson(30)) * Param(method=["a", "b"])
    ks = space.to_arrays()["k"]
    victim = int(ks[int(fault_rng.integers(len(ks)))])
    task(tmp_path, RANDOM.format(n=9, seed=seed), bad=[victim], kill=True)
    first = psy("run", "s", cwd=tmp_path)
    assert first.returncode != 0, first.output
    assert "-9" in first.output or "SIGKILL" in first.output or "killed" in first.output, (
        first.output
    )
    cont = psy("run", "-c", "s", cwd=tmp_path)
    assert cont.returncode == 0, cont.output
    data = load_result(result_path(tmp_path, "s"), "pickle")
    assert rows(data) == space_rows(space), "rows lost, duplicated or drawn differently"
    assert np.array_equal(np.sort(data["y"]), np.sort(data["x"] * 2 + data["k"]))
    status = psy("status", "s", cwd=tmp_path)
    assert status_counts(status.stdout) == [(18, 18)], status.output


def test_shrink_a_sample_after_failures_then_continue(tmp_path, fault_rng, monkeypatch):
    big = Sobol(16, seed=5, x=(0, 1), k=scipy.stats.randint(0, 1000)) * Param(method=["a", "b"])
    ks = big.to_arrays()["k"]
    bad = sorted({int(k) for k in fault_rng.choice(ks, size=4)})
    task(tmp_path, SOBOL.format(n=16), bad=bad)
    psy("run", "s", cwd=tmp_path)
    failed = sum(int(k in bad) for k in ks)
    data = load_result(result_path(tmp_path, "s"), "pickle")
    assert len(data["x"]) == 32 - failed
    # Shrink to the first 8 points (the same points: a Sobol sequence extends),
    # with the failure gone.
    (tmp_path / "fault").unlink()
    task(tmp_path, SOBOL.format(n=8))
    small = big[: 8 * 2]
    cont = psy("run", "-c", "s", cwd=tmp_path)
    assert cont.returncode == 0, cont.output
    status = psy("status", "s", cwd=tmp_path)
    assert status_counts(status.stdout) == [(16, 16)], status.output
    from psyrun.results import load_results

    monkeypatch.chdir(tmp_path)
    current = load_results("s", only_current=True)
    assert rows(current) == space_rows(small)
    stored = load_result(result_path(tmp_path, "s"), "pickle")
    # Nothing computed twice; the rows of dropped points kept (psy prune drops them).
    assert len(stored["x"]) == len(set(rows(stored)))
    dropped_done = 16 - sum(int(k in bad) for k in ks[16:])
    assert len(stored["x"]) == 16 + dropped_done
