"""Report section: appending to and loading from the stores (issue targets).

Runnable alone: ``python benchmarks/report_store.py``. Writes 10^6 rows of
three float64 columns in 1,000 chunks with each store, and the same chunks
with PyTables and zarr directly (file opened once, same chunk layout), so the
H5/zarr figures are ratios measured in the same run.

Two direct baselines: "reopened" opens the file for every chunk, as every
psyrun job must (appends come from separate processes); "open once" keeps it
open across all chunks, which no backend can do, and is shown for reference.
The target ratio is taken against the reopened baseline.

The cost of the damage checks (row counts and checksums, issue 21): 10^7
rows (two float64 and one int64 column) are written with each store, once
as it writes them now and once without the checks (the layout files had
before them: no checksums, no commit record; for NpzStore, whose zip CRCs
were always checked, the commit record ignored), and both are loaded in the
same run, alternately, best of five. Target: loading gets at most 10%
slower. Run only this part with ``python benchmarks/report_store.py checks``.

Loading against another tree (issue 22: the layouts that describe
themselves must not make loads slower): ``python benchmarks/report_store.py
load /work/main`` writes the 10^7 rows of the check-cost measurement with
each store of this tree and of the other one (each file by its own tree's
code, so each in its own layout), then loads them in child processes,
alternating the trees (ABBA), best of twelve loads each. Target: at most
1.2x the other tree's time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from unittest import mock

import numpy as np

N_CHUNKS = 1000
CHUNK_ROWS = 1000
COLUMNS = ("a", "b", "c")


def make_chunks(n_chunks: int = N_CHUNKS, chunk_rows: int = CHUNK_ROWS) -> list[dict]:
    """Return the chunks every measurement writes (three float64 columns)."""
    rng = np.random.default_rng(0)
    return [{k: rng.random(chunk_rows) for k in COLUMNS} for _ in range(n_chunks)]


def remove(path: str) -> None:
    """Delete a file or a directory store if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def append_with_store(ext: str, filename: str, chunks: list[dict]) -> None:
    """Append every chunk through the psyrun store for ``ext``."""
    from psyrun.store import get_store

    store = get_store(ext)
    for chunk in chunks:
        store.append(filename, chunk)


def append_with_pytables_reopened(filename: str, chunks: list[dict]) -> None:
    """Append the chunks with PyTables directly, opening the file for every chunk."""
    import tables

    for chunk in chunks:
        with tables.open_file(filename, "a") as h5file:
            if "a" not in h5file.root:
                for k in COLUMNS:
                    h5file.create_earray(
                        h5file.root, k, atom=tables.Float64Atom(), shape=(0,), expectedrows=1000
                    )
            for k in COLUMNS:
                h5file.root[k].append(chunk[k])


def append_with_zarr_reopened(filename: str, chunks: list[dict]) -> None:
    """Append the chunks with zarr directly, opening the group for every chunk."""
    import zarr

    from psyrun.store.zarr import _CHUNK_BYTES

    rows = _CHUNK_BYTES // 8
    group = zarr.open_group(filename, mode="w")
    for k in COLUMNS:
        group.create_array(k, shape=(0,), dtype="f8", chunks=(rows,))
    for chunk in chunks:
        group = zarr.open_group(filename, mode="r+")
        for k in COLUMNS:
            array = group[k]
            n = array.shape[0]
            array.resize((n + len(chunk[k]),))
            array[n : n + len(chunk[k])] = chunk[k]


def append_with_pytables(filename: str, chunks: list[dict]) -> None:
    """Append the chunks with PyTables directly: one EArray per column, file opened once."""
    import tables

    with tables.open_file(filename, "w") as h5file:
        arrays = {
            k: h5file.create_earray(
                h5file.root, k, atom=tables.Float64Atom(), shape=(0,), expectedrows=1000
            )
            for k in COLUMNS
        }
        for chunk in chunks:
            for k, array in arrays.items():
                array.append(chunk[k])


def append_with_zarr(filename: str, chunks: list[dict]) -> None:
    """Append the chunks with zarr directly: group opened once, same chunk layout."""
    import zarr

    from psyrun.store.zarr import _CHUNK_BYTES

    group = zarr.open_group(filename, mode="w")
    rows = _CHUNK_BYTES // 8
    arrays = {k: group.create_array(k, shape=(0,), dtype="f8", chunks=(rows,)) for k in COLUMNS}
    n = 0
    for chunk in chunks:
        for k, array in arrays.items():
            array.resize((n + len(chunk[k]),))
            array[n : n + len(chunk[k])] = chunk[k]
        n += len(chunk[COLUMNS[0]])


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _best_of(fn, repeat: int = 3) -> float:
    return min(_timed(fn) for _ in range(repeat))


def collect() -> list[dict]:
    """Measure appends and loads for every store against the targets."""
    from psyrun.store import get_store

    chunks = make_chunks()
    rows = []
    tmp = tempfile.mkdtemp(prefix="psyrun-bench-store-")
    try:
        direct = {
            ".h5": ("PyTables", append_with_pytables_reopened, append_with_pytables),
            ".zarr": ("zarr", append_with_zarr_reopened, append_with_zarr),
        }
        for ext in (".pkl", ".npz", ".h5", ".zarr"):
            filename = os.path.join(tmp, f"store{ext}")
            remove(filename)
            took = _timed(lambda ext=ext, f=filename: append_with_store(ext, f, chunks))
            if ext in direct:
                name, reopened, once = direct[ext]
                other = os.path.join(tmp, f"direct{ext}")
                remove(other)
                base = _timed(lambda fn=reopened, other=other: fn(other, chunks))
                remove(other)
                base_once = _timed(lambda fn=once, other=other: fn(other, chunks))
                ratio = took / base
                rows.append(
                    {
                        "what": f"append 1e6 rows/1000 chunks {ext} vs {name} reopened",
                        "measured": f"{ratio:.2f}x ({took:.2f}/{base:.2f} s)",
                        "target": "<= 2x direct",
                        "ok": ratio <= 2.0,
                    }
                )
                rows.append(
                    {
                        "what": f"  (same, vs {name} kept open: reference only)",
                        "measured": f"{took / base_once:.2f}x ({base_once:.2f} s)",
                        "target": "(no target)",
                        "ok": None,
                    }
                )
            else:
                rows.append(
                    {
                        "what": f"append 1e6 rows/1000 chunks {ext}",
                        "measured": f"{took:.2f} s",
                        "target": "< 3 s",
                        "ok": took < 3.0,
                    }
                )
            store = get_store(ext)
            loaded = store.load(filename)
            assert len(loaded["a"]) == N_CHUNKS * CHUNK_ROWS
            load = _best_of(lambda s=store, f=filename: s.load(f))
            target = 0.3 if ext != ".pkl" else None
            rows.append(
                {
                    "what": f"load 1e6 rows {ext}",
                    "measured": f"{load:.3f} s",
                    "target": "< 0.3 s" if target else "(no target)",
                    "ok": load < target if target else None,
                }
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


CHECK_ROWS = 10**7


def check_data(rows: int = CHECK_ROWS) -> dict:
    """The columns of the check-cost measurement: two float64, one int64."""
    rng = np.random.default_rng(1)
    return {"x": rng.random(rows), "y": rng.random(rows), "n": np.arange(rows, dtype=np.int64)}


def _skip(*args, **kwargs) -> None:
    """Check nothing (PickleStore's checksum check, replaced)."""


def _plain_read(f, meta: dict) -> bytes:
    """Read a PickleStore file up to its STOP without checking its sum."""
    f.seek(0)
    return f.read(meta["stop"] + 1)


def _no_record(fp) -> tuple[None, None]:
    """Find no commit record (NpzStore reads the file as one written before it)."""
    return None, None


def _no_checksum_codecs() -> list:
    """Return ZarrStore's codecs without the chunk checksum."""
    from zarr.codecs import ZstdCodec

    return [ZstdCodec(level=0)]


@contextlib.contextmanager
def without_checks(ext: str):
    """Write (and read) as the store did before it recorded counts and checksums.

    Files of H5Store and ZarrStore written so read without checks as they
    are; PickleStore and NpzStore skip their checks while the block runs.
    """
    from psyrun.store import h5 as h5_module
    from psyrun.store import npz as npz_module
    from psyrun.store import pickle as pickle_module
    from psyrun.store import zarr as zarr_module

    if ext == ".pkl":
        with mock.patch.object(
            pickle_module.PickleStore, "_read_summed", staticmethod(_plain_read)
        ):
            yield
    elif ext == ".npz":
        with (
            mock.patch.object(npz_module, "_read_record", _no_record),
            mock.patch.object(npz_module, "_check_no_record_expected", _skip),
        ):
            yield
    elif ext == ".h5":
        # No commit record, column list or checksums: read as a file of psyrun 0.8.
        with (
            mock.patch.object(h5_module, "_COMMIT_ATTR", "psyrun_no_commit"),
            mock.patch.object(h5_module, "_ORDER_ATTR", "psyrun_no_columns"),
            mock.patch.object(h5_module, "_SUMS_SUFFIX", "_no_checksums"),
        ):
            yield
    else:
        with (
            mock.patch.object(zarr_module, "_codecs", _no_checksum_codecs),
            mock.patch.object(zarr_module, "_COMMIT_ATTR", "psyrun_no_commit"),
        ):
            yield


def check_cost(rows: int = CHECK_ROWS, repeat: int = 5) -> list[dict]:
    """Measure :meth:`Store.load` of ``rows`` rows with and without the damage checks."""
    from psyrun.store import get_store

    data = check_data(rows)
    out = []
    tmp = tempfile.mkdtemp(prefix="psyrun-bench-checks-")
    try:
        for ext in (".pkl", ".npz", ".h5", ".zarr"):
            store = get_store(ext)
            checked = os.path.join(tmp, f"checked{ext}")
            plain = os.path.join(tmp, f"plain{ext}")
            store.save(checked, data)
            with without_checks(ext):
                store.save(plain, data)
            times: dict[str, list[float]] = {"checked": [], "plain": []}
            for _ in range(repeat):
                times["checked"].append(_timed(lambda s=store, f=checked: s.load(f)))
                # Files of H5Store and ZarrStore without checks read as they are.
                reading = (
                    without_checks(ext) if ext in (".pkl", ".npz") else contextlib.nullcontext()
                )
                with reading:
                    times["plain"].append(_timed(lambda s=store, f=plain: s.load(f)))
            assert store.verify(checked) == rows
            with_checks, without = min(times["checked"]), min(times["plain"])
            ratio = with_checks / without
            out.append(
                {
                    "what": f"load 1e{len(str(rows)) - 1} rows {ext}: checks vs none",
                    "measured": f"{ratio:.2f}x ({with_checks:.2f}/{without:.2f} s)",
                    "target": "<= 1.10x",
                    "ok": ratio <= 1.10,
                }
            )
            remove(checked)
            remove(plain)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


_LOAD_CHILD = """
import sys, time
import numpy as np
from psyrun.store import get_store

mode, filename, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = get_store(filename)
store.preload()
if mode == "write":
    rng = np.random.default_rng(1)
    store.save(filename, {
        "x": rng.random(rows), "y": rng.random(rows), "n": np.arange(rows, dtype=np.int64)
    })
else:
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        data = store.load(filename)
        best = min(best, time.perf_counter() - t0)
        assert len(data["n"]) == rows
        del data
    print(best)
"""


def _child(tree: str, *args: str) -> str:
    import subprocess

    env = {**os.environ, "PYTHONPATH": tree}
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_CHILD, *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def load_against(baseline: str, rows: int = CHECK_ROWS, rounds: int = 6) -> list[dict]:
    """Compare :meth:`Store.load` of ``rows`` rows in this tree and in ``baseline``."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this": here, "baseline": os.path.abspath(baseline)}
    out = []
    tmp = tempfile.mkdtemp(prefix="psyrun-bench-load-")
    try:
        for ext in (".h5", ".zarr", ".npz", ".pkl"):
            files = {name: os.path.join(tmp, f"{name}{ext}") for name in trees}
            for name, tree in trees.items():
                _child(tree, "write", files[name], str(rows))
            best = {name: float("inf") for name in trees}
            for round_ in range(rounds):
                # ABBA order: a slow spell of the machine hits both trees alike.
                order = list(trees.items())[:: 1 if round_ % 2 == 0 else -1]
                for name, tree in order:
                    seconds = float(_child(tree, "load", files[name], str(rows)))
                    best[name] = min(best[name], seconds)
            ratio = best["this"] / best["baseline"]
            out.append(
                {
                    "what": f"load 1e{len(str(rows)) - 1} rows {ext}: this vs baseline",
                    "measured": f"{ratio:.2f}x ({best['this']:.2f}/{best['baseline']:.2f} s)",
                    "target": "<= 1.20x",
                    "ok": ratio <= 1.20,
                }
            )
            for path in files.values():
                remove(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Print this section's rows.

    Only the check cost with the argument ``checks``; only the load time
    against another tree with ``load PATH``.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["load"] and len(argv) == 2:
        rows = load_against(argv[1])
    elif argv[:1] == ["checks"]:
        rows = check_cost()
    else:
        rows = collect() + check_cost()
    for r in rows:
        ok = {True: "yes", False: "NO", None: "-"}[r["ok"]]
        print(f"{r['what']:<48} {r['measured']:>24}  {r['target']:<14} {ok}")
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
