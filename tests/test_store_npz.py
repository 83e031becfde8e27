"""NpzStore specifics: plain .npz compatibility and appends that add members."""

from __future__ import annotations

import os
import struct
import zipfile

import numpy as np
import pytest

from psyrun.store import NpzStore
from psyrun.store.testing import assert_columns_equal


def test_saved_file_is_a_plain_npz(tmp_path):
    filename = str(tmp_path / "r.npz")
    NpzStore().save(filename, {"a": [1.0, 2.0], "b": [1, 2]})
    with np.load(filename) as npz:
        assert sorted(npz.files) == ["a", "b"]
        assert npz["a"].tolist() == [1.0, 2.0]


def test_np_savez_files_load_and_append(tmp_path):
    filename = str(tmp_path / "r.npz")
    np.savez(filename, a=np.array([1.0, 2.0]), b=np.array([3, 4]))
    store = NpzStore()
    store.append(filename, {"a": [5.0], "b": [6]})
    assert_columns_equal(store.load(filename), {"a": [1.0, 2.0, 5.0], "b": [3, 4, 6]})


def test_append_adds_members_without_rewriting_old_ones(tmp_path):
    filename = str(tmp_path / "r.npz")
    store = NpzStore()
    store.append(filename, {"a": np.arange(1000.0)})
    with zipfile.ZipFile(filename) as zf:
        first = zf.getinfo("a.npy")
        offset, crc = first.header_offset, first.CRC
    store.append(filename, {"a": [1.5]})
    with zipfile.ZipFile(filename) as zf:
        assert zf.getinfo("a.npy").header_offset == offset
        assert crc == zf.getinfo("a.npy").CRC
        assert len(zf.namelist()) == 2
    assert store.count_rows(filename) == 1001


def test_column_names_that_look_like_chunks_survive(tmp_path):
    filename = str(tmp_path / "r.npz")
    store = NpzStore()
    store.append(filename, {"chunky": [1.0], "chunk1": [2.0]})
    store.append(filename, {"chunky": [3.0], "chunk1": [4.0]})
    assert_columns_equal(store.load(filename), {"chunky": [1.0, 3.0], "chunk1": [2.0, 4.0]})


def test_reserved_column_names_rejected(tmp_path):

    with pytest.raises(ValueError, match="reserved"):
        NpzStore().save(str(tmp_path / "r.npz"), {"chunk000001": [1.0]})


def _rows(start: int, stop: int) -> dict[str, np.ndarray]:
    return {"a": np.arange(start, stop, dtype=float), "s": [f"r{i}" for i in range(start, stop)]}


def _joined(*ranges: tuple[int, int]) -> dict[str, np.ndarray]:
    parts = [_rows(*r) for r in ranges]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in ("a", "s")}


def _record_span(contents: bytes) -> tuple[int, int]:
    """Where the commit record sits in an npz file's bytes."""
    import io

    from psyrun.store.npz import _RECORD_SIZE, _record_offset

    start = _record_offset(io.BytesIO(contents))
    return start, start + _RECORD_SIZE


def _torn_files(tmp_path):
    """Yield (contents, complete) of an append of rows 30:40 killed at many points.

    The append overwrites the old member list from its start on, so a kill
    leaves the new bytes up to some offset, then either the old bytes after
    it or nothing (when the file had grown). ``complete`` tells whether the
    new member was all written. The commit record in the first member's
    header is written last, so every such file still holds the old one: the
    append was not committed and its rows are not read, complete or not.
    """
    filename = str(tmp_path / "whole.npz")
    store = NpzStore()
    store.save(filename, _rows(0, 10))
    store.append(filename, _rows(10, 30))
    with open(filename, "rb") as f:
        before = f.read()
    store.append(filename, _rows(30, 40))
    with open(filename, "rb") as f:
        after = f.read()
    with zipfile.ZipFile(filename) as zf:
        new = zf.getinfo("chunk000002.npy")
    name_len, extra_len = struct.unpack_from("<HH", after, new.header_offset + 26)
    data_end = new.header_offset + 30 + name_len + extra_len + new.compress_size
    os.remove(filename)
    record = slice(*_record_span(before))
    after = bytearray(after)
    after[record] = before[record]  # not committed: the old record
    after = bytes(after)
    cuts = [new.header_offset + d for d in (0, 2, 10, 40, 100)] + [data_end - 1, data_end]
    for cut in [*cuts, data_end + 30, len(after)]:
        yield after[:cut] + before[cut:], cut >= data_end
        yield after[:cut], cut >= data_end
    # Data all written, but killed before the header got its CRC and sizes.
    placeholder = bytearray(after[:data_end])
    placeholder[new.header_offset + 14 : new.header_offset + 18] = bytes(4)
    extra = new.header_offset + 30 + name_len
    placeholder[extra + 4 : extra + 20] = bytes(16)
    yield bytes(placeholder), False


def test_append_killed_part_way_loses_only_that_chunk(tmp_path):
    store = NpzStore()
    for i, (contents, _complete) in enumerate(_torn_files(tmp_path)):
        filename = str(tmp_path / f"torn{i}.npz")
        with open(filename, "wb") as f:
            f.write(contents)
        expected = _joined((0, 10), (10, 30))  # the append of 30:40 was never committed
        n = len(expected["a"])
        assert_columns_equal(store.load(filename), expected)
        assert store.count_rows(filename) == n
        last = {k: v[-1:] for k, v in expected.items()}
        assert_columns_equal(store.load(filename, row=-1), last)
        chunks = list(store.iter_chunks(filename, chunk_rows=7))
        assert sum(len(c["a"]) for c in chunks) == n
        with open(filename, "rb") as f:
            assert f.read() == contents  # reading does not touch the file
        store.append(filename, _rows(n, n + 5))
        assert_columns_equal(store.load(filename), _joined((0, n + 5)))
        with zipfile.ZipFile(filename) as zf:  # the append wrote a valid member list
            assert zf.testzip() is None
        with np.load(filename) as npz:
            assert npz["a"].tolist() == list(range(10))
