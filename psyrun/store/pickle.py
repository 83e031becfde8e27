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
NumPy (one fixed-size record per row) rather than by pickling ``tolist()``;
they load as the same Python values.
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


# Integer opcodes, most compact first: the opcode (with any fixed argument
# bytes) and the dtype its value is written in. LONG1 takes a length byte.
_INT_OPCODES = (
    (pickle.BININT1, np.dtype("<u1")),
    (pickle.BININT2, np.dtype("<u2")),
    (pickle.BININT, np.dtype("<i4")),
    (pickle.LONG1 + b"\x08", np.dtype("<i8")),
)
# The opcode of a bool row, indexed by the row as 0 or 1.
_BOOL_OPCODES = np.frombuffer(pickle.NEWFALSE + pickle.NEWTRUE, dtype=np.uint8)


def _number_opcode(column: np.ndarray) -> tuple[bytes, np.dtype, int]:
    """Choose the opcode that pushes every row of a numeric ``column``.

    Parameters
    ----------
    column
        A 1-d array of dtype kind ``'f'`` (at most 8 bytes), ``'i'`` or ``'u'``.

    Returns
    -------
    opcode : bytes
        The opcode, followed by any argument bytes that are the same for every row.
    value : numpy.dtype
        The dtype each row's value is written in, right after ``opcode``.
    padding : int
        Zero bytes after the value.
    """
    if column.dtype.kind == "f":
        # float16/32 widen exactly to the float64 that tolist() gives.
        return pickle.BINFLOAT, np.dtype(">f8"), 0
    # One opcode for the whole column, chosen by its range (as Python ints,
    # so uint64 and int64 limits compare exactly).
    low, high = int(column.min()), int(column.max())
    for opcode, value in _INT_OPCODES:
        info = np.iinfo(value)
        if info.min <= low and high <= info.max:
            return opcode, value, 0
    # uint64 values >= 2**63: 8 bytes would read as negative; a zero 9th byte
    # keeps the sign positive.
    return pickle.LONG1 + b"\x09", np.dtype("<u8"), 1


def _numeric_items_opcodes(column: np.ndarray) -> bytes | None:
    """Opcodes for the rows of a 1-d bool, int or float column, built by NumPy.

    They load as ``column.tolist()`` does (a Python ``bool``, ``int`` or
    ``float`` per row) but cost a fraction of pickling that list: each row is
    one fixed-size record (opcode, value) of a structured array, and all rows
    go between one MARK and APPENDS.

    Parameters
    ----------
    column
        Any column.

    Returns
    -------
    bytes or None
        The opcodes, or None when ``column`` is of another kind, not 1-d, a
        subclass of ``ndarray`` (a masked array's ``tolist()`` differs) or
        ``longdouble`` (whose ``tolist()`` keeps NumPy scalars).
    """
    dtype = column.dtype
    if (
        type(column) is not np.ndarray
        or column.ndim != 1
        or dtype.kind not in "biuf"
        or (dtype.kind == "f" and dtype.itemsize > 8)
    ):
        return None
    if len(column) == 0:
        return b""  # as the Pickler gives for an empty list
    if dtype.kind == "b":
        # astype gives exactly 0 or 1 (a bool array viewed from other bytes may not).
        items = _BOOL_OPCODES.take(column.astype(np.uint8))
        return b"".join((pickle.MARK, items, pickle.APPENDS))
    opcode, value, padding = _number_opcode(column)
    record = np.dtype(
        {
            "names": ["opcode", "value"],
            "formats": [f"S{len(opcode)}", value],
            "itemsize": len(opcode) + value.itemsize + padding,
        }
    )
    items = np.zeros(len(column), dtype=record)  # zeros: the padding bytes
    items["opcode"] = opcode
    # Converting first is faster than converting into the unaligned field.
    items["value"] = column.astype(value)
    # One copy into the bytes (MARK + items.tobytes() + APPENDS makes three).
    return b"".join((pickle.MARK, items, pickle.APPENDS))


def _items_opcodes(column: np.ndarray) -> bytes:
    """Opcodes that push the rows of ``column`` onto a list already on the stack."""
    numeric = _numeric_items_opcodes(column)
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
        pieces = [pickle.PROTO + bytes([_PROTOCOL]) + pickle.EMPTY_DICT]
        with self._pickling(data):
            for slot, (key, column) in enumerate(data.items()):
                pieces.append(_raw_opcodes(key))
                pieces.append(pickle.EMPTY_LIST + pickle.LONG_BINPUT + struct.pack("<I", slot))
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
                pieces.append(pickle.LONG_BINGET + struct.pack("<I", slot))
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
