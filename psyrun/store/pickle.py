"""PickleStore: any picklable values, appended in place.

The file is a plain pickle of a ``dict`` of lists that ``pickle.load`` reads
whole (as psyrun 0.8 files are). To append without rewriting, each column
list is written once with a memo slot; an append replaces the final STOP
opcode with: fetch column list from the memo, push the new items, APPENDS,
POP (for every column), then STOP. A small trailer after STOP, which
``pickle.load`` never reads, records where STOP is and what the columns hold.

Crash safety: the new section is written after the old STOP with its first
byte left out; only when everything (including the new trailer) is on disk is
that first byte written over the old STOP. Until then the old STOP ends the
pickle and the old rows load unchanged.

Speed: the rows of 1-d bool, int and float columns are turned into opcodes by
NumPy (one fixed-size record per row, :mod:`psyrun.store.pickle_codec`)
rather than by pickling ``tolist()``, and read back the same way; ``pickle.load``
gives the same Python values.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from psyrun.store.base import Store
from psyrun.store.columns import count, fits_layout, normalize, select_row
from psyrun.store.pickle_codec import decode_items, encode_items

__all__ = ["PickleStore"]

_PROTOCOL = 3  # no framing, so the opcode stream can be cut and extended freely
_MAGIC = b"PSYRUNPK1"
_TRAILER_END = struct.Struct("<Q")  # length of the pickled trailer metadata
_SLOT = struct.Struct("<I")  # the memo slot of a column's list
_HEADER = pickle.PROTO + bytes([_PROTOCOL]) + pickle.EMPTY_DICT


def _raw_opcodes(obj: Any) -> bytes:
    """Opcodes that push ``obj`` without using the memo (no PROTO, no STOP)."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=_PROTOCOL)
    pickler.fast = True  # no memo: nothing may take memo slots but the column lists
    pickler.dump(obj)
    raw = out.getvalue()
    return raw[2:-1]


def _items_opcodes(column: np.ndarray) -> bytes:
    """Opcodes that push the rows of ``column`` onto a list already on the stack."""
    numeric = encode_items(column)
    if numeric is not None:
        return numeric
    items = list(column) if column.dtype.kind == "O" else column.tolist()
    pickler_out = io.BytesIO()
    pickler = pickle.Pickler(pickler_out, protocol=_PROTOCOL)
    pickler.fast = True  # no memo: the items must not take memo slots
    pickler.dump(items)
    raw = pickler_out.getvalue()
    # raw = PROTO 3, EMPTY_LIST, [MARK items APPENDS]..., STOP
    head = pickle.PROTO + bytes([_PROTOCOL]) + pickle.EMPTY_LIST
    if not raw.startswith(head) or not raw.endswith(pickle.STOP):
        raise RuntimeError("unexpected pickle layout; cannot append in place")
    return raw[len(head) : -1]


def _decode_file(raw: bytes, meta: dict) -> dict[str, np.ndarray] | None:
    """Read the columns of a file of this layout without unpickling its rows.

    `raw` is the file up to its STOP. The opcodes must be exactly those the
    writers below produce: the columns' lists (memo slots in trailer order),
    then one section per append, each column's rows readable by
    :func:`~psyrun.store.pickle_codec.decode_items`. Anything else (object or
    string columns, a file edited by hand) gives None: ``pickle.load`` then
    reads the file.
    """
    stop = meta["stop"]
    # Every row takes at least a byte per column: a trailer that says otherwise
    # (or names no column, which would never advance) is not one of ours.
    if not meta["columns"] or meta["rows"] > stop:
        return None
    columns = {}
    for key, (dtype, shape) in meta["columns"].items():
        if dtype == "U" or shape:
            return None
        columns[key] = np.empty(meta["rows"], dtype=dtype)
    filled = dict.fromkeys(columns, 0)
    buf = np.frombuffer(raw, dtype=np.uint8)

    def rows(pos: int, key: str, before: bytes, after: bytes) -> int | None:
        # `before`, the rows of `key`, then `after`; the offset past them.
        if raw[pos : pos + len(before)] != before:
            return None
        got = decode_items(buf, pos + len(before), stop, columns[key], filled[key])
        if got is None:
            return None
        filled[key], pos = got
        if raw[pos : pos + len(after)] != after:
            return None
        return pos + len(after)

    pos: int | None = len(_HEADER)
    if raw[:pos] != _HEADER:
        return None
    for slot, key in enumerate(columns):
        before = _raw_opcodes(key) + pickle.EMPTY_LIST + pickle.LONG_BINPUT + _SLOT.pack(slot)
        pos = rows(pos, key, before, pickle.SETITEM)
        if pos is None:
            return None
    while pos < stop:  # one section per append
        for slot, key in enumerate(columns):
            pos = rows(pos, key, pickle.LONG_BINGET + _SLOT.pack(slot), pickle.POP)
            if pos is None:
                return None
    if pos != stop or any(n != meta["rows"] for n in filled.values()):
        return None
    return columns


def _column_meta(column: np.ndarray) -> tuple[str, tuple[int, ...]]:
    # Strings are kept as their kind only: a longer string must not force a rewrite.
    dtype = "U" if column.dtype.kind == "U" else column.dtype.str
    return dtype, tuple(column.shape[1:])


def _layout(meta: dict) -> dict:
    """Return the trailer's column metadata in the form ``fits_layout`` takes."""
    return {
        key: (None if dtype == "U" else np.dtype(dtype), tuple(shape))
        for key, (dtype, shape) in meta["columns"].items()
    }


class PickleStore(Store):
    """Store results as a pickled dict of lists (``.pkl``); the default store.

    Any picklable values work. Appending costs what it adds; a file written
    by :meth:`save`, by psyrun 0.8 or by hand (a pickled dict of lists or
    arrays) is rewritten once into the appendable layout on its first append.
    Chunks that change a column's type or per-row shape, or add or drop
    columns, also cause one rewrite.
    """

    ext = ".pkl"
    supports_row_count = True
    supports_metadata = True

    # -- reading -------------------------------------------------------------

    @staticmethod
    def _read_meta(f) -> dict | None:
        """Return the trailer metadata, or None when the file has no valid trailer."""
        size = f.seek(0, os.SEEK_END)
        tail = len(_MAGIC) + _TRAILER_END.size
        if size < tail:
            return None
        f.seek(size - tail)
        raw = f.read(tail)
        if raw[-len(_MAGIC) :] != _MAGIC:
            return None
        (meta_len,) = _TRAILER_END.unpack(raw[: _TRAILER_END.size])
        if meta_len > size - tail:
            return None
        f.seek(size - tail - meta_len)
        try:
            meta = pickle.loads(f.read(meta_len))
        except Exception:
            return None
        # The trailer is only valid if the append that wrote it was committed:
        # the byte at its STOP is STOP and the previous STOP was overwritten.
        f.seek(meta["stop"])
        if f.read(1) != pickle.STOP:
            return None
        if meta["prev_stop"] is not None:
            f.seek(meta["prev_stop"])
            if f.read(1) == pickle.STOP:
                return None
        return meta

    def _load_all(self, filename: str) -> tuple[dict[str, np.ndarray], dict | None]:
        with open(filename, "rb") as f:
            meta = self._read_meta(f)
            if meta is not None:
                f.seek(0)
                data = _decode_file(f.read(meta["stop"] + 1), meta)
                if data is not None:
                    return data, meta
            f.seek(0)
            raw = pickle.load(f)
        if not isinstance(raw, Mapping):
            raise ValueError(
                f"{filename!r} does not hold a pickled dict of columns "
                f"(found {type(raw).__name__}); is it a psyrun result file?"
            )
        if meta is None or set(raw) != set(meta["columns"]):
            return normalize(raw), None
        data = {}
        for key, values in raw.items():
            dtype, shape = meta["columns"][key]
            if dtype == "U":
                column = np.asarray(values, dtype=str).reshape(-1, *shape)
            elif np.dtype(dtype).kind == "O":
                column = np.empty(len(values), dtype=object)
                for i, value in enumerate(values):
                    column[i] = value
            else:
                column = np.asarray(values, dtype=dtype).reshape(-1, *shape)
            data[key] = column
        return data, meta

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read all columns (or row ``row`` as one-element columns)."""
        data, _ = self._load_all(filename)
        if row is None:
            return data
        return select_row(data, row, filename)

    def count_rows(self, filename: str) -> int:
        """Count the rows, from the trailer when the file has one."""
        with open(filename, "rb") as f:
            meta = self._read_meta(f)
        if meta is not None:
            return meta["rows"]
        return count(self.load(filename))

    def _read_metadata(self, filename: str) -> dict[str, Any] | None:
        with open(filename, "rb") as f:
            meta = self._read_meta(f)
        return None if meta is None else meta.get("metadata")

    def _write_metadata(self, path: str, metadata: dict[str, Any]) -> None:
        """Write a new trailer, with the metadata, after the pickle's STOP.

        A file without a valid trailer (psyrun 0.8, written by hand) is
        rewritten once in this store's layout to get one.
        """
        with open(path, "rb") as f:
            meta = self._read_meta(f)
        if meta is None:
            self._write_whole(path, self.load(path), metadata)
            return
        trailer = self._trailer(dict(meta, metadata=metadata))
        with open(path, "r+b") as f:
            f.seek(meta["stop"] + 1)
            f.write(trailer)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())

    # -- writing -------------------------------------------------------------

    def _write_file(self, path: str, data: dict[str, np.ndarray]) -> None:
        # The pieces are written one by one: joining them would copy every
        # column's opcodes once more.
        pieces = [_HEADER]
        with self._pickling(data):
            for slot, (key, column) in enumerate(data.items()):
                pieces.append(_raw_opcodes(key))
                pieces.append(pickle.EMPTY_LIST + pickle.LONG_BINPUT + _SLOT.pack(slot))
                pieces.append(_items_opcodes(column))
                pieces.append(pickle.SETITEM)
        stop = sum(len(piece) for piece in pieces)
        meta = {
            "stop": stop,
            "prev_stop": None,
            "rows": count(data),
            "columns": {k: _column_meta(v) for k, v in data.items()},
        }
        pieces.append(pickle.STOP + self._trailer(meta))
        with open(path, "wb") as f:
            f.writelines(pieces)

    @staticmethod
    def _trailer(meta: dict) -> bytes:
        raw = pickle.dumps(meta, protocol=_PROTOCOL)
        return raw + _TRAILER_END.pack(len(raw)) + _MAGIC

    def _append_in_place(self, filename: str, data: dict[str, np.ndarray]) -> bool:
        """Write only the new rows, committed by a final one-byte write."""
        with open(filename, "rb") as f:
            meta = self._read_meta(f)
        # A file without rows takes its column types from the first rows.
        if meta is None or meta["rows"] == 0 or not fits_layout(_layout(meta), data):
            return False
        # The new section: STOP's replacement (LONG_BINGET's first byte) first.
        pieces = []
        with self._pickling(data):
            for slot, key in enumerate(meta["columns"]):
                pieces.append(pickle.LONG_BINGET + _SLOT.pack(slot))
                pieces.append(_items_opcodes(data[key]))
                pieces.append(pickle.POP)
        new_stop = meta["stop"] + sum(len(piece) for piece in pieces)
        rows = meta["rows"] + count(data)
        new_meta = dict(meta, stop=new_stop, prev_stop=meta["stop"], rows=rows)
        pieces.append(pickle.STOP + self._trailer(new_meta))
        commit, pieces[0] = pieces[0][:1], pieces[0][1:]
        with open(filename, "r+b") as f:
            # Everything but the first byte goes after the old STOP ...
            f.seek(meta["stop"] + 1)
            f.writelines(pieces)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
            # ... and this one-byte write commits the append.
            f.seek(meta["stop"])
            f.write(commit)
            f.flush()
        return True
