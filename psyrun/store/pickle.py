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
from psyrun.store.columns import common_dtype, count, merge_chunks, normalize, select_row

__all__ = ["PickleStore"]

_PROTOCOL = 3  # no framing, so the opcode stream can be cut and extended freely
_MAGIC = b"PSYRUNPK1"
_TRAILER_END = struct.Struct("<Q")  # length of the pickled trailer metadata


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


def _column_meta(column: np.ndarray) -> tuple[str, tuple[int, ...]]:
    # Strings are kept as their kind only: a longer string must not force a rewrite.
    dtype = "U" if column.dtype.kind == "U" else column.dtype.str
    return dtype, tuple(column.shape[1:])


def _fits(meta: dict, data: dict[str, np.ndarray]) -> bool:
    """Whether ``data`` can be appended without changing any column's type or shape."""
    if set(data) != set(meta["columns"]):
        return False
    for key, column in data.items():
        dtype, shape = meta["columns"][key]
        new_dtype, new_shape = _column_meta(column)
        if new_shape != tuple(shape):
            return False
        if dtype == "U" or new_dtype == "U":
            if dtype != new_dtype:
                return False
        elif common_dtype([np.dtype(dtype), np.dtype(new_dtype)]) != np.dtype(dtype):
            return False
    return True


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
            raw = pickle.load(f)
            meta = self._read_meta(f)
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

    # -- writing -------------------------------------------------------------

    def save(self, filename: str, data: Mapping[str, Any]) -> None:
        """Write ``data`` to ``filename`` (atomically: temporary file, then rename)."""
        self._write_new(os.fspath(filename), normalize(data))

    def _write_new(self, filename: str, data: dict[str, np.ndarray]) -> None:
        out = io.BytesIO()
        out.write(pickle.PROTO + bytes([_PROTOCOL]) + pickle.EMPTY_DICT)
        for slot, (key, column) in enumerate(data.items()):
            out.write(_raw_opcodes(key))
            out.write(pickle.EMPTY_LIST + pickle.LONG_BINPUT + struct.pack("<I", slot))
            out.write(_items_opcodes(column))
            out.write(pickle.SETITEM)
        stop = out.tell()
        out.write(pickle.STOP)
        meta = {
            "stop": stop,
            "prev_stop": None,
            "rows": count(data),
            "columns": {k: _column_meta(v) for k, v in data.items()},
        }
        out.write(self._trailer(meta))
        tmp = f"{filename}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(out.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)

    @staticmethod
    def _trailer(meta: dict) -> bytes:
        raw = pickle.dumps(meta, protocol=_PROTOCOL)
        return raw + _TRAILER_END.pack(len(raw)) + _MAGIC

    def append(self, filename: str, data: Mapping[str, Any]) -> None:
        """Add the rows of ``data``, writing only the new rows when possible."""
        filename = os.fspath(filename)
        new = normalize(data)
        if not os.path.exists(filename):
            self._write_new(filename, new)
            return
        if count(new) == 0:
            # No rows: nothing to add (and no column may change type because of it).
            return
        with open(filename, "rb") as f:
            meta = self._read_meta(f)
        if meta is None or meta["rows"] == 0 or not _fits(meta, new):
            # A file without rows takes its column types from the first rows.
            old = self.load(filename)
            self._write_new(filename, merge_chunks([old, new]) if old else new)
            return
        section = io.BytesIO()
        for slot, key in enumerate(meta["columns"]):
            section.write(pickle.LONG_BINGET + struct.pack("<I", slot))
            section.write(_items_opcodes(new[key]))
            section.write(pickle.POP)
        new_stop = meta["stop"] + section.tell()
        section.write(pickle.STOP)
        rows = meta["rows"] + count(new)
        new_meta = dict(meta, stop=new_stop, prev_stop=meta["stop"], rows=rows)
        section.write(self._trailer(new_meta))
        payload = section.getvalue()
        with open(filename, "r+b") as f:
            # Everything but the first byte goes after the old STOP ...
            f.seek(meta["stop"] + 1)
            f.write(payload[1:])
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
            # ... and this one-byte write commits the append.
            f.seek(meta["stop"])
            f.write(payload[:1])
            f.flush()
