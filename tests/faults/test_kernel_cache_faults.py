"""Faults: numba's on-disk cache damaged, and finished results that only look finished.

Issue 25 (targets 3 and 5) made two things cheaper, and each is a place
where a fault could turn into a wrong answer:

* The kernels may use numba's on-disk cache (``PSYRUN_NUMBA_CACHE``). A cache
  file cut short (a full disk, a job killed while numba wrote it), filled
  with other bytes or missing its index must only cost compile time: the
  process still computes the same hashes as the NumPy reference, exits 0 and
  prints no traceback, also when several processes meet the damage at once.
* ``psy status`` and ``psy run -c`` recognise a finished task by comparing
  the result's parameter columns with the space row by row, without the
  hash index. A result that holds the space's rows in order except one
  (edited, duplicated) or that is damaged must still be reported exactly:
  never as complete, and ``psy run -c`` then computes exactly the rows
  missing.

Offsets and rows come from ``fault_rng`` (``PSYRUN_FAULT_SEED`` replays them).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import assert_untouched, tree_state
from psy_helpers import ok, psy, task_paths, task_result, write_task

from psyrun.store.pickle import PickleStore

# ---------------------------------------------------------------------------
# numba's cache

# Two kernels (the cheapest to compile), so that an index holds two entries.
_USE_KERNELS = """
import numpy as np
from psyrun import _kernels as K
rng = np.random.default_rng(5)
x = rng.integers(0, 2**63, 1000).astype(np.uint64)
assert (K.mix64.compiled()(x) == K.mix64.reference(x)).all()
assert (K.combine_hashes.compiled()(x, x) == K.combine_hashes.reference(x, x)).all()
print("same")
"""


def run_kernels(cache: Path, n: int = 1) -> list[subprocess.CompletedProcess]:
    """Run the kernels in `n` fresh processes started together, with `cache` as the cache."""
    env = dict(os.environ, PSYRUN_NUMBA_CACHE=str(cache))
    env.pop("PSYRUN_DISABLE_NUMBA", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _USE_KERNELS],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def assert_kernels_right(results: list[subprocess.CompletedProcess]) -> None:
    for done in results:
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["same"]
        assert "Traceback" not in done.stderr


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.suffix in (".nbi", ".nbc"))


def cut(path: Path, rng) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(rng.integers(0, max(1, len(data))))])


def garble(path: Path, rng) -> None:
    data = bytearray(path.read_bytes())
    for i in rng.integers(0, len(data), max(1, len(data) // 50)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory) -> Path:
    """A numba cache the kernels filled (copied by each test that damages it)."""
    cache = tmp_path_factory.mktemp("numba") / "cache"
    assert_kernels_right(run_kernels(cache))
    return cache


@pytest.mark.slow  # each process compiles (3-10 s on the shared 2-core machine)
@pytest.mark.parametrize(
    "damage",
    ["every file cut short", "index cut short", "data bytes garbled", "index removed"],
)
def test_a_damaged_numba_cache_only_costs_compile_time(tmp_path, filled_cache, fault_rng, damage):
    cache = tmp_path / "cache"
    shutil.copytree(filled_cache, cache)
    files = cache_files(cache)
    assert files
    for path in files:
        index = path.suffix == ".nbi"
        if damage == "every file cut short" or (damage == "index cut short" and index):
            cut(path, fault_rng)
        elif damage == "data bytes garbled" and not index:
            garble(path, fault_rng)
        elif damage == "index removed" and index:
            path.unlink()
    # Several jobs of an array meet the damage at once (once: it costs compiles).
    assert_kernels_right(run_kernels(cache, n=2 if damage == "every file cut short" else 1))


@pytest.mark.slow  # a process compiles
def test_a_full_disk_under_the_numba_cache_only_costs_compile_time(small_disk):
    disk = small_disk("1m")
    disk.path.joinpath("filler").write_bytes(b"\0" * (1024 * 1024 - 4096))
    with contextlib.suppress(OSError):  # full, as wanted
        disk.path.joinpath("more").write_bytes(b"\0" * 8192)
    assert_kernels_right(run_kernels(disk.path / "cache"))


# ---------------------------------------------------------------------------
# Finished results that only look finished

N_A, N_B = 60, 50
N_ROWS = N_A * N_B

TASK = f"""
import numpy as np
from psyrun import Param

pspace = Param(a=np.arange({N_A})) * Param(b=np.arange({N_B}) * 0.5)
vectorized = True
max_jobs = 2


def execute(a, b):
    return {{"y": a * b + 0.5}}
"""


def completed(output: str) -> int:
    found = re.search(r"(\d+) out of (\d+) rows completed", output)
    assert found, output
    assert int(found.group(2)) == N_ROWS
    return int(found.group(1))


def assert_result_exact(project: Path) -> None:
    """Every assignment once, every value right."""
    result = task_result(project, "t")
    pairs = list(zip(result["a"].tolist(), result["b"].tolist()))
    assert len(pairs) == N_ROWS
    assert sorted(pairs) == sorted((a, b * 0.5) for a in range(N_A) for b in range(N_B))
    np.testing.assert_array_equal(result["y"], result["a"] * result["b"] + 0.5)


@pytest.fixture
def finished(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_task(tmp_path, "t", TASK)
    ok(psy("run", "t", cwd=tmp_path))
    assert completed(ok(psy("status", "-v", "t", cwd=tmp_path)).output) == N_ROWS
    return tmp_path


def rewrite_result(project: Path, change) -> int:
    """Rewrite the (valid) result with `change` applied to its columns; return the row changed."""
    path = task_paths(project, "t").result
    data = PickleStore().load(path)
    row = change(data)
    os.remove(path)
    PickleStore().save(path, data)
    return row


@pytest.mark.parametrize("edit", ["one value changed", "one row doubled over another"])
def test_a_result_in_order_but_for_one_row_is_not_called_complete(finished, fault_rng, edit):
    row = int(fault_rng.integers(1, N_ROWS))

    def change(data):
        if edit == "one value changed":
            data["b"] = data["b"].copy()
            data["b"][row] = 1000.5  # outside the space
        else:
            for key in data:
                data[key] = data[key].copy()
                data[key][row] = data[key][row - 1]
        return row

    rewrite_result(finished, change)
    status = ok(psy("status", "-v", "t", cwd=finished)).output
    assert completed(status) == N_ROWS - 1, f"row {row}: {status}"
    before = tree_state(finished, skip=finished / "psy-work")
    ok(psy("run", "-c", "t", cwd=finished))
    assert_untouched(before, tree_state(finished, skip=finished / "psy-work"))
    assert completed(ok(psy("status", "-v", "t", cwd=finished)).output) == N_ROWS
    result = task_result(finished, "t")
    if edit == "one value changed":
        # The row outside the space is kept once (prune removes it); the rest is exact.
        outside = result["b"] == 1000.5
        assert outside.sum() == 1
        result = {k: v[~outside] for k, v in result.items()}
        pairs = list(zip(result["a"].tolist(), result["b"].tolist()))
        assert sorted(pairs) == sorted((a, b * 0.5) for a in range(N_A) for b in range(N_B))
    else:
        assert_result_exact(finished)


def test_a_damaged_finished_result_is_reported_damaged_never_complete(finished, fault_rng):
    path = Path(task_paths(finished, "t").result)
    data = path.read_bytes()
    offset = int(fault_rng.integers(len(data) // 4, len(data) - 1))
    path.write_bytes(data[:offset])
    status = psy("status", "-v", "t", cwd=finished).output
    assert "damaged" in status, f"cut at {offset}: {status}"
    assert completed(status) < N_ROWS
    cont = psy("run", "-c", "t", cwd=finished)
    assert cont.exit_code != 0
    assert "damaged" in cont.output
    assert path.read_bytes() == data[:offset]  # nothing written over it
