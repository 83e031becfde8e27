"""Sweeps at disk speed: parts in the task's own format, merges that stream them.

* ``psy run`` with H5Store and ZarrStore and several process jobs gives a
  result holding every row once with the right value (vectorized and row by
  row, with an assignment the space holds twice and a row that fails), and
  the parts it merged were files of the task's store;
* the merge of disjoint parts (``merge_files(..., exact=True)``) holds one
  chunk at a time: its peak memory is a small part of the result's size;
* ``exact`` refuses what it cannot honour (``drop_base``).
"""

from __future__ import annotations

import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import STORES, describe, write
from psy_helpers import psy

TASK = """
import json
import os

import numpy as np
import psyrun.backend.splitmerge as _splitmerge
from psyrun import Param
{imp}

# Record what each merge is given, in whichever process runs it.
_real_merge = getattr(_splitmerge.merge_files, "real", _splitmerge.merge_files)


def _spy(store, dest, sources, keys, **kwargs):
    with open({record!r}, "a") as f:
        names = [os.path.basename(s) for s in sources]
        f.write(json.dumps([names, kwargs.get("exact")]) + "\\n")
    return _real_merge(store, dest, sources, keys, **kwargs)


_spy.real = _real_merge
_splitmerge.merge_files = _spy

pspace = (Param(a=np.arange(7.0)) * Param(b=np.arange(11.0))) + Param(a=[3.0], b=[4.0])
store = {expr}
max_jobs = 4
min_items = 1
vectorized = {vectorized}


def execute(a, b):
    if {vectorized}:
        if np.any((a == 6.0) & (b == 10.0)):
            raise ValueError("the corner fails")
        return {{"y": a * b + 0.5}}
    if a == 6.0 and b == 10.0:
        raise ValueError("the corner fails")
    return {{"y": a * b + 0.5}}
"""


def _expected() -> Counter:
    rows = Counter((float(a), float(b)) for a in range(7) for b in range(11))
    rows[(3.0, 4.0)] += 1  # the space holds this assignment twice
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("vectorized", [True, False])
@pytest.mark.parametrize("store", ["h5", "zarr"])
def test_run_with_several_jobs_is_exact(tmp_path, store, vectorized):
    pytest.importorskip({"h5": "tables", "zarr": "zarr"}[store])
    import json

    from psyrun.backend.distribute import DistributeBackend

    imp, expr, ext = STORES[store]
    record = tmp_path / "merges.jsonl"
    write(
        tmp_path / "psy-tasks" / "task_t.py",
        TASK.format(imp=imp, expr=expr, vectorized=vectorized, record=str(record)),
    )
    run = psy("run", "t", cwd=tmp_path)
    # The corner row fails (kept on record); every other row is in the result.
    assert run.exit_code == 1, describe(run)
    merged = [json.loads(line) for line in record.read_text().splitlines()]
    assert merged, "no merge ran"
    parts, exact = merged[0]
    assert exact is True
    assert len(parts) == 4
    assert all(p.endswith(ext) for p in parts), parts
    assert DistributeBackend.parts_are_disjoint

    from psyrun.store import get_store

    result = str(tmp_path / "psy-work" / "t" / f"result{ext}")
    expected = _expected()
    del expected[(6.0, 10.0)]  # the failed row is left out
    data = get_store(ext).load(result)
    assert Counter(zip(data["a"].tolist(), data["b"].tolist())) == expected
    np.testing.assert_array_equal(data["y"], data["a"] * data["b"] + 0.5)
    # -c evaluates only the failed row again (it fails again); every other row stays once.
    cont = psy("run", "-c", "t", cwd=tmp_path)
    assert cont.exit_code == 1, describe(cont)
    assert "1 row(s) raised" in cont.output, describe(cont)
    data = get_store(ext).load(result)
    assert Counter(zip(data["a"].tolist(), data["b"].tolist())) == expected


def _write_parts(store, directory: Path, n_parts: int, rows: int) -> list[str]:
    paths = []
    for i in range(n_parts):
        path = str(directory / f"{i}{store.ext}")
        ids = np.arange(i * rows, (i + 1) * rows)
        for piece in np.array_split(ids, 4):
            a, b = (piece // 1000).astype(float), (piece % 1000).astype(float)
            store.append(path, {"a": a, "b": b, "y": a * b + 0.5})
        paths.append(path)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("store_name", ["h5", "zarr"])
def test_exact_merge_holds_one_chunk_at_a_time(tmp_path, store_name, monkeypatch):
    pytest.importorskip({"h5": "tables", "zarr": "zarr"}[store_name])
    import psyrun.results.merge
    from psyrun.store import get_store

    store = get_store(STORES[store_name][2])
    rows, n_parts = 400_000, 4
    paths = _write_parts(store, tmp_path, n_parts, rows)
    total_bytes = rows * n_parts * 3 * 8  # 38 MB of columns
    # The bound is the merge's chunk, whatever the size of the result.
    monkeypatch.setattr(psyrun.results.merge, "MERGE_ROWS", 2**14)
    monkeypatch.setattr(psyrun.results.merge, "READ_ROWS", 2**13)
    dest = str(tmp_path / f"result{store.ext}")
    tracemalloc.start()
    try:
        outcome = psyrun.results.merge.merge_files(store, dest, paths, ["a", "b"], exact=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.rows == rows * n_parts
    assert sorted(outcome.merged) == sorted(paths)
    assert peak < total_bytes / 4, f"the merge held {peak} bytes at once ({total_bytes} in all)"
    # Every row once, in order, right values.
    seen = 0
    for chunk in store.iter_chunks(dest, chunk_rows=2**17):
        ids = np.arange(seen, seen + len(chunk["a"]))
        np.testing.assert_array_equal(chunk["a"], (ids // 1000).astype(float))
        np.testing.assert_array_equal(chunk["b"], (ids % 1000).astype(float))
        np.testing.assert_array_equal(chunk["y"], chunk["a"] * chunk["b"] + 0.5)
        seen += len(ids)
    assert seen == rows * n_parts


def test_exact_merge_refuses_drop_base(tmp_path):
    from psyrun.results.merge import merge_files
    from psyrun.store.pickle import PickleStore

    store = PickleStore()
    base = str(tmp_path / "base.pkl")
    store.save(base, {"a": [1.0, 2.0]})
    with pytest.raises(ValueError, match="exact=True takes no drop_base"):
        merge_files(
            store,
            str(tmp_path / "out.pkl"),
            [],
            ["a"],
            base=base,
            exact=True,
            drop_base=np.array([True, False]),
        )
    assert store.load(base)["a"].tolist() == [1.0, 2.0]
