"""Fault injection into the stores: full disks, truncated, changed and cut files.

Every case asserts what a store promises when its file meets a fault: a read
gives exactly the rows written or raises
:class:`~psyrun.exceptions.DamagedFileError`, never wrong data and never
fewer rows without a word; a write on a full disk raises ``OSError(ENOSPC)``
saying so and leaves the file it was adding to (or replacing) as it was; and
nothing outside the result is touched. An append torn by a kill at the end of
a file is not damage: it is dropped and the rows before it read back.

The offsets, sizes and free-space margins come from ``fault_rng`` (seeded by
``PSYRUN_FAULT_SEED``), so a failing case can be replayed.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import zipfile

import numpy as np
import pytest
from fault_helpers import assert_untouched, tree_state

from psyrun.exceptions import DamagedFileError
from psyrun.store import PickleStore, get_store
from psyrun.store.npz import _RECORD_SIZE, _record_offset
from psyrun.store.testing import (
    assert_columns_equal,
    assert_exact_or_damaged,
    delete_member,
    result_files,
)

EXTS = [".pkl", ".npz", ".h5", ".zarr"]


def _store(ext: str):
    store = get_store(ext)
    if store.library is not None:
        pytest.importorskip(store.library)
    return store


def _chunk(rng, start: int, n: int, extra: bool = False) -> dict:
    chunk = {
        "x": rng.random(n),
        "n": np.arange(start, start + n, dtype=np.int64) + 2**60,  # exact only as int64
        "s": [f"row{i}" for i in range(start, start + n)],
    }
    if extra:
        chunk["late"] = rng.random(n)
    return chunk


def _expected(chunks: list[dict]) -> dict:
    """The columns the chunks make, padded as the stores promise (NaN for a late float key)."""
    keys = list(dict.fromkeys(k for c in chunks for k in c))
    out = {}
    for key in keys:
        parts = []
        for c in chunks:
            n = len(c["x"])
            parts.append(np.asarray(c[key]) if key in c else np.full(n, np.nan))
        out[key] = np.concatenate(parts)
    return out


def _written(store, filename: str, rng, appends: int = 3) -> dict:
    chunks = [_chunk(rng, 100 * i, int(rng.integers(50, 150))) for i in range(appends)]
    for chunk in chunks:
        store.append(filename, chunk)
    if store.supports_metadata:
        store.write_metadata(filename, {"run": 1})
    return _expected(chunks)


@pytest.fixture
def workdir(tmp_path):
    """The result's directory, and a check that nothing beside it was touched."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "project.txt").write_text("not psyrun's")
    before = tree_state(tmp_path, skip=work)
    yield work
    assert_untouched(before, tree_state(tmp_path, skip=work), "a store fault case")


def _restore(backup: str, filename: str) -> None:
    if os.path.isdir(filename):
        shutil.rmtree(filename)
        shutil.copytree(backup, filename)
    else:
        shutil.copyfile(backup, filename)


def _backup(filename: str) -> str:
    backup = filename + ".backup"
    if os.path.isdir(filename):
        shutil.copytree(filename, backup)
    else:
        shutil.copyfile(filename, backup)
    return backup


# -- a full disk at each write -----------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
def test_full_disk_at_each_write_of_a_sequence_of_appends(ext, small_disk, fault_rng, tmp_path):
    store = _store(ext)
    disk = small_disk("12m")  # room for a rewrite beside the old file
    (tmp_path / "project.txt").write_text("not psyrun's")
    before = tree_state(tmp_path, skip=disk.path)
    filename = str(disk.path / f"r{ext}")
    written: list[dict] = []
    failures = 0
    for i in range(6):
        # The fourth chunk adds a key: the store rewrites the file rather than appending.
        chunk = _chunk(fault_rng, 8_000 * i, 8_000, extra=i >= 3)
        leave = int(fault_rng.choice([0, 4096, 65_536, 400_000, 4_000_000]))
        disk.fill(leave)
        error = None
        try:
            store.append(filename, chunk)
        except OSError as exc:
            error = exc
        if error is not None:
            assert error.errno == errno.ENOSPC, error
            assert "disk full" in str(error)
            assert os.path.basename(filename) in str(error)
            failures += 1
            disk.free()
            # The file (or its absence) is as before the failed write ...
            if written:
                assert_columns_equal(store.load(filename), _expected(written))
                assert store.verify(filename) == sum(len(c["x"]) for c in written)
            else:
                assert not store.exists(filename)
            # ... and the same write succeeds once there is room.
            store.append(filename, chunk)
        disk.free()
        written.append(chunk)
        assert_columns_equal(store.load(filename), _expected(written))
        assert store.count_rows(filename) == store.verify(filename) == 8_000 * len(written)
        leftovers = set(os.listdir(disk.path)) - {os.path.basename(filename)}
        assert not leftovers, f"files left after a failed write: {leftovers}"
    assert failures, "no write met the full disk; the case tested nothing"
    assert_untouched(before, tree_state(tmp_path, skip=disk.path), "a full-disk case")


# -- damaged files -----------------------------------------------------------------------------


def _cases(fault_rng, files: list[str], count: int) -> list[tuple[str, int]]:
    """Seeded (file, offset) pairs, the larger files drawn more often."""
    sizes = np.array([max(os.path.getsize(f), 1) for f in files], dtype=float)
    picks = fault_rng.choice(len(files), size=count, p=sizes / sizes.sum())
    return [
        (files[i], int(fault_rng.integers(0, max(os.path.getsize(files[i]), 1)))) for i in picks
    ]


@pytest.mark.parametrize("ext", EXTS)
def test_truncated_at_seeded_offsets(ext, workdir, fault_rng):
    store = _store(ext)
    filename = str(workdir / f"r{ext}")
    expected = _written(store, filename, fault_rng)
    backup = _backup(filename)
    detected = 0
    for target, offset in _cases(fault_rng, result_files(filename), 12):
        with open(target, "r+b") as f:
            f.truncate(offset)
        detected += "verify" in assert_exact_or_damaged(store, filename, expected)
        _restore(backup, filename)
    assert detected, "no truncation was detected"
    assert store.verify(filename) == len(expected["x"])


@pytest.mark.parametrize("ext", EXTS)
def test_byte_flipped_at_seeded_offsets(ext, workdir, fault_rng):
    store = _store(ext)
    filename = str(workdir / f"r{ext}")
    expected = _written(store, filename, fault_rng)
    backup = _backup(filename)
    detected = 0
    for target, offset in _cases(fault_rng, result_files(filename), 24):
        if not os.path.getsize(target):
            continue
        with open(target, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ int(fault_rng.integers(1, 256))]))
        detected += "verify" in assert_exact_or_damaged(store, filename, expected)
        _restore(backup, filename)
    assert detected, "no flipped byte was detected"


@pytest.mark.parametrize("ext", EXTS)
def test_deleted_members(ext, workdir, fault_rng):
    store = _store(ext)
    filename = str(workdir / f"r{ext}")
    expected = _written(store, filename, fault_rng)
    backup = _backup(filename)
    deletions = [delete_member]
    if ext == ".zarr":
        # Every kind of file of the directory: chunks, column and group metadata.
        deletions += [lambda f, path=path: os.remove(path) for path in result_files(filename)] + [
            # A whole column's array (whatever the layout names it).
            lambda f: shutil.rmtree(os.path.join(f, sorted(next(os.walk(f))[1])[1]))
        ]
    elif ext == ".pkl":
        # Runs of bytes cut out at seeded offsets (a pickle has no members).
        size = os.path.getsize(filename)
        for _ in range(6):
            start, length = int(fault_rng.integers(0, size)), int(fault_rng.integers(1, 300))

            def cut(f, start=start, length=length):
                with open(f, "rb") as fh:
                    raw = fh.read()
                with open(f, "wb") as fh:
                    fh.write(raw[:start] + raw[start + length :])

            deletions.append(cut)
    for delete in deletions:
        delete(filename)
        raised = assert_exact_or_damaged(store, filename, expected)
        assert {"load", "verify"} <= set(raised), "a deleted part went unnoticed"
        _restore(backup, filename)


# -- a torn append at the end of a file is not damage ---------------------------------------


@pytest.mark.parametrize("ext", [".pkl", ".npz"])
def test_append_torn_at_seeded_points_drops_only_itself(ext, workdir, fault_rng):
    """The bytes an append killed part way left at the end of the file are not damage."""
    store = _store(ext)
    filename = str(workdir / f"r{ext}")
    expected = _written(store, filename, fault_rng)
    with open(filename, "rb") as f:
        old = f.read()
    store.append(filename, _chunk(fault_rng, 10_000, 200))
    with open(filename, "rb") as f:
        new = f.read()
    # Where the append writes (from `start` on) and its commit, written last
    # to bytes the old file had: a killed append leaves the old commit.
    if ext == ".pkl":
        commit = PickleStore._read_meta(io.BytesIO(old))["stop"]
        commit, start = slice(commit, commit + 1), len(old)
    else:
        offset = _record_offset(io.BytesIO(old))
        commit = slice(offset, offset + _RECORD_SIZE)
        start = zipfile.ZipFile(io.BytesIO(old)).start_dir  # the old member list
    for cut in sorted(fault_rng.integers(start, len(new), size=8)):
        torn = bytearray(new[: int(cut)] + old[int(cut) :])
        torn[commit] = old[commit]
        with open(filename, "wb") as f:
            f.write(torn)
        assert assert_exact_or_damaged(store, filename, expected) == [], int(cut)
        # The next append continues right after the committed rows.
        store.append(filename, {k: np.asarray(v)[:1] for k, v in expected.items()})
        want = {k: np.concatenate([np.asarray(v), np.asarray(v)[:1]]) for k, v in expected.items()}
        assert_columns_equal(store.load(filename), want)
    with open(filename, "r+b") as f:  # but a cut inside committed rows is damage
        f.truncate(len(old) // 2)
    with pytest.raises(DamagedFileError):
        store.verify(filename)
