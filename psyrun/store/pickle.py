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

Damage: every file this version writes starts with a format tag (a bytes
object pushed and popped, invisible to ``pickle.load``), and its trailer
records the row count and a CRC-32 of every byte before STOP, plus a CRC-32
of its own. An append does not overwrite the old trailer: it is written at
the end of the file, after the old trailer, and the commit byte over the old
STOP is ``BINBYTES``, which makes ``pickle.load`` read the old trailer as a
bytes object (popped again) and carry on into the new rows. So the committed
trailer survives an append that was killed: a reader that finds no valid
trailer at the end looks for the last committed one before it and drops only
what follows it (the torn append). A file whose committed trailer is gone
(truncated), or whose bytes disagree with its CRC (a flipped byte, bytes cut
out), raises :class:`~psyrun.exceptions.DamagedFileError`. Files written
before the tag existed have no checksums and read as before.

Speed: the rows of 1-d bool, int and float columns are turned into opcodes by
NumPy (one fixed-size record per row, :mod:`psyrun.store.pickle_codec`)
rather than by pickling ``tolist()``, and read back the same way; ``pickle.load``
gives the same Python values.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from psyrun.durability import fsync
from psyrun.exceptions import DamagedFileError
from psyrun.store.base import Store, damage_on_error, raise_if_disk_full
from psyrun.store.columns import count, fits_layout, normalize, select_row
from psyrun.store.pickle_codec import decode_items, encode_items

__all__ = ["PickleStore"]

_PROTOCOL = 3  # no framing, so the opcode stream can be cut and extended freely
_MAGIC = b"PSYRUNPK1"
_TRAILER_END = struct.Struct("<Q")  # length of the pickled trailer metadata
_SLOT = struct.Struct("<I")  # the memo slot of a column's list
_HEADER = pickle.PROTO + bytes([_PROTOCOL]) + pickle.EMPTY_DICT  # files of earlier versions
_TAG = b"PSYRUNPK2"
# Files with checksums: the tag is pushed and popped before the dict.
_HEADER2 = (
    pickle.PROTO
    + bytes([_PROTOCOL])
    + pickle.SHORT_BINBYTES
    + bytes([len(_TAG)])
    + _TAG
    + pickle.POP
    + pickle.EMPTY_DICT
)
_BLOB_LEN = struct.Struct("<I")  # BINBYTES' length: the trailer after STOP is its argument
_CRC = struct.Struct("<I")
_FORMAT = 2  # the trailer's "format" of files with checksums
_SCAN_BLOCK = 1 << 20
_SUM_PIECE = 1 << 18  # bytes read and summed at a time (fits a processor cache)
_WORD = np.dtype("<u8")


class _Sum64:
    """The sum, modulo 2**64, of a byte stream read as little-endian 64-bit words.

    The last, partial word is padded with zeros. It changes with any changed
    byte (and with a zeroed block, unless it summed to zero already) and
    NumPy computes it at memory speed, several times faster than CRC-32, so
    :meth:`PickleStore.load` can check every file it reads. ``verify`` also
    checks the CRC-32.
    """

    def __init__(self, total: int = 0, pending: bytes = b"") -> None:
        self.total = total
        self.pending = pending  # the bytes of the current, incomplete word

    def update(self, data) -> None:
        data = memoryview(data).cast("B")
        if self.pending:
            take = min(8 - len(self.pending), len(data))
            self.pending += bytes(data[:take])
            data = data[take:]
            if len(self.pending) < 8:
                return
            self.total += int.from_bytes(self.pending, "little")
            self.pending = b""
        n = len(data) // 8
        if n:
            words = np.frombuffer(data, dtype=_WORD, count=n)
            self.total += int(np.add.reduce(words, dtype=np.uint64))
        self.pending = bytes(data[n * 8 :])

    @property
    def value(self) -> int:
        return (self.total + int.from_bytes(self.pending.ljust(8, b"\0"), "little")) % 2**64

    @classmethod
    def resume(cls, value: int, stop: int, tail: bytes) -> _Sum64:
        """Continue the sum `value` of `stop` bytes whose last partial word is `tail`."""
        assert len(tail) == stop % 8
        partial = int.from_bytes(tail.ljust(8, b"\0"), "little") if tail else 0
        return cls((value - partial) % 2**64, tail)


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

    header = _HEADER2 if meta.get("format") == _FORMAT else _HEADER
    pos: int | None = len(header)
    if raw[:pos] != header:
        return None
    for slot, key in enumerate(columns):
        before = _raw_opcodes(key) + pickle.EMPTY_LIST + pickle.LONG_BINPUT + _SLOT.pack(slot)
        pos = rows(pos, key, before, pickle.SETITEM)
        if pos is None:
            return None
    while pos < stop:  # one section per append
        if raw[pos : pos + 1] == pickle.BINBYTES:
            # A superseded trailer, pushed as bytes and popped again.
            (length,) = _BLOB_LEN.unpack_from(raw, pos + 1)
            pos += 1 + _BLOB_LEN.size + length
            if raw[pos : pos + 1] != pickle.POP:
                return None
            pos += 1
            continue
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
    appends_survive_kill = True

    # -- reading -------------------------------------------------------------

    @staticmethod
    def _parse_trailer(f, end: int) -> dict | None:
        """Return the trailer whose magic ends at offset `end`, None when there is none."""
        tail = len(_MAGIC) + _TRAILER_END.size
        if end < tail:
            return None
        f.seek(end - tail)
        raw = f.read(tail)
        if len(raw) < tail or raw[-len(_MAGIC) :] != _MAGIC:
            return None
        (meta_len,) = _TRAILER_END.unpack(raw[: _TRAILER_END.size])
        start = end - tail - meta_len
        if start < 0:
            return None
        f.seek(start)
        body = f.read(meta_len)
        try:
            meta = pickle.loads(body)
        except Exception:
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("stop"), int):
            return None
        if meta.get("format") == _FORMAT:
            # Our own CRC, and the place: BINBYTES' argument right after its STOP.
            if (
                len(body) < _CRC.size
                or zlib.crc32(body[: -_CRC.size]) != _CRC.unpack(body[-_CRC.size :])[0]
            ):
                return None
            blob_start = meta["stop"] + 1
            f.seek(blob_start)
            if f.read(_BLOB_LEN.size) != _BLOB_LEN.pack(end - blob_start - _BLOB_LEN.size):
                return None
        return meta

    @staticmethod
    def _committed(f, meta: dict) -> bool:
        """Whether the append that wrote `meta` was committed (its STOP ends the pickle)."""
        f.seek(meta["stop"])
        if f.read(1) != pickle.STOP:
            return False
        if meta.get("prev_stop") is not None:
            f.seek(meta["prev_stop"])
            byte = f.read(1)
            # The commit byte: BINBYTES in files with checksums, anything but STOP before.
            return (
                byte == pickle.BINBYTES if meta.get("format") == _FORMAT else byte != pickle.STOP
            )
        return True

    @classmethod
    def _find_commit(cls, f) -> tuple[dict | None, int]:
        """Return the committed trailer and the offset where it ends.

        ``(None, size)`` for a file of an earlier layout without a valid
        trailer (``pickle.load`` reads it). A file with checksums whose
        committed trailer cannot be found is damaged: an append that was
        killed leaves it intact, before what it wrote.
        """
        size = f.seek(0, os.SEEK_END)
        meta = cls._parse_trailer(f, size)
        if meta is not None and cls._committed(f, meta):
            return meta, size
        f.seek(0)
        if f.read(len(_HEADER2)) != _HEADER2:
            return None, size
        hi = size
        while hi > 0:
            lo = max(0, hi - _SCAN_BLOCK)
            f.seek(lo)
            block = f.read(hi - lo)
            i = block.rfind(_MAGIC)
            while i >= 0:
                end = lo + i + len(_MAGIC)
                if end != size:
                    meta = cls._parse_trailer(f, end)
                    if (
                        meta is not None
                        and meta.get("format") == _FORMAT
                        and cls._committed(f, meta)
                    ):
                        return meta, end
                i = block.rfind(_MAGIC, 0, i + len(_MAGIC) - 1)
            hi = lo + len(_MAGIC) - 1 if lo > 0 else 0
        name = getattr(f, "name", "the file")
        raise DamagedFileError(
            f"{name} is damaged: the record of its rows and checksums is missing "
            "(the file was truncated or overwritten)"
        )

    @classmethod
    def _read_meta(cls, f) -> dict | None:
        """Return the committed trailer, or None for a file of an earlier layout without one."""
        return cls._find_commit(f)[0]

    @staticmethod
    def _read_summed(f, meta: dict) -> memoryview:
        """Read the file up to its STOP, checking the word sum piece by piece.

        Each piece is summed right after it is read, while it is in the
        processor's cache, into memory that is not cleared first: the check
        then costs little beside the read.
        """
        stop = meta["stop"]
        view = memoryview(np.empty(stop + 1, dtype=np.uint8))
        total = _Sum64()
        f.seek(0)
        pos = 0
        while pos <= stop:
            n = f.readinto(view[pos : min(pos + _SUM_PIECE, stop + 1)])
            if not n:
                break
            total.update(view[pos : min(pos + n, stop)])
            pos += n
        if pos != stop + 1 or total.value != meta["sum"]:
            raise DamagedFileError(
                f"{getattr(f, 'name', 'the file')} is damaged: its bytes do not match the "
                "checksum written with them (a changed byte, or bytes cut out)"
            )
        return view

    @staticmethod
    def _check_crc(f, meta: dict, raw: bytes | None = None) -> None:
        """Raise DamagedFileError unless the bytes before STOP match the trailer's checksums.

        With the bytes in memory (`raw`, up to STOP), the fast 64-bit word
        sum; else (reading from `f`) the CRC-32.
        """
        stop = meta["stop"]
        if raw is not None:
            total = _Sum64()
            total.update(memoryview(raw)[:stop])
            ok = len(raw) == stop + 1 and total.value == meta["sum"]
        else:
            f.seek(0)
            crc, left = 0, stop
            while left:
                block = f.read(min(left, _SCAN_BLOCK))
                if not block:
                    break
                crc = zlib.crc32(block, crc)
                left -= len(block)
            ok = not left and crc == meta["crc"]
        if not ok:
            raise DamagedFileError(
                f"{getattr(f, 'name', 'the file')} is damaged: its bytes do not match the "
                "checksum written with them (a changed byte, or bytes cut out)"
            )

    def _load_all(self, filename: str) -> tuple[dict[str, np.ndarray], dict | None]:
        with damage_on_error(filename), open(filename, "rb") as f:
            meta, _ = self._find_commit(f)
            checked = meta is not None and meta.get("format") == _FORMAT
            if meta is not None:
                raw = self._read_summed(f, meta) if checked else f.read(meta["stop"] + 1)
                data = _decode_file(raw, meta)
                if data is not None:
                    return data, meta
                del raw
            f.seek(0)
            raw = pickle.load(f)
        if not isinstance(raw, Mapping):
            raise ValueError(
                f"{filename!r} does not hold a pickled dict of columns "
                f"(found {type(raw).__name__}); is it a psyrun result file?"
            )
        if checked and (
            set(raw) != set(meta["columns"]) or any(len(v) != meta["rows"] for v in raw.values())
        ):
            raise DamagedFileError(
                f"{filename} is damaged: its columns do not hold the {meta['rows']} rows "
                "its trailer records"
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
        """Read all columns (or row ``row`` as one-element columns).

        Raises
        ------
        psyrun.exceptions.DamagedFileError
            When the file is truncated or its bytes do not match its checksum.
        """
        data, _ = self._load_all(filename)
        if row is None:
            return data
        return select_row(data, row, filename)

    def count_rows(self, filename: str) -> int:
        """Count the rows, from the trailer when the file has one.

        A truncated file raises :class:`~psyrun.exceptions.DamagedFileError`;
        a changed byte among the rows is found by :meth:`load` and
        :meth:`verify`, which read them.
        """
        with damage_on_error(filename), open(filename, "rb") as f:
            meta = self._read_meta(f)
        if meta is not None:
            return meta["rows"]
        return count(self.load(filename))

    def verify(self, filename: str) -> int:
        """Read the whole file, check its checksums and row count, and return the row count."""
        data, meta = self._load_all(filename)
        if meta is not None and meta.get("format") == _FORMAT:
            with damage_on_error(filename), open(filename, "rb") as f:
                self._check_crc(f, meta)  # the CRC-32 too, besides load's word sum
        n = count(data)
        if meta is not None and n != meta["rows"]:
            raise DamagedFileError(
                f"{filename} is damaged: it holds {n} rows, its trailer records {meta['rows']}"
            )
        return n

    def _read_metadata(self, filename: str) -> dict[str, Any] | None:
        with damage_on_error(filename), open(filename, "rb") as f:
            meta = self._read_meta(f)
        return None if meta is None else meta.get("metadata")

    def _write_metadata(self, path: str, metadata: dict[str, Any]) -> None:
        """Commit a new trailer with the metadata, as an append of no rows.

        A file of an earlier layout is rewritten once in this one to get it.
        """
        with damage_on_error(path), open(path, "rb") as f:
            meta, end = self._find_commit(f)
        if meta is None or meta.get("format") != _FORMAT:
            self._write_whole(path, self.load(path), metadata)
            return
        self._commit(path, meta, end, [pickle.POP], {"metadata": metadata})

    # -- writing -------------------------------------------------------------

    def _write_file(self, path: str, data: dict[str, np.ndarray]) -> None:
        # The pieces are written one by one: joining them would copy every
        # column's opcodes once more.
        pieces = [_HEADER2]
        with self._pickling(data):
            for slot, (key, column) in enumerate(data.items()):
                pieces.append(_raw_opcodes(key))
                pieces.append(pickle.EMPTY_LIST + pickle.LONG_BINPUT + _SLOT.pack(slot))
                pieces.append(_items_opcodes(column))
                pieces.append(pickle.SETITEM)
        crc, total = 0, _Sum64()
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
            total.update(piece)
        meta = {
            "format": _FORMAT,
            "stop": sum(len(piece) for piece in pieces),
            "prev_stop": None,
            "rows": count(data),
            "columns": {k: _column_meta(v) for k, v in data.items()},
            "crc": crc,
            "sum": total.value,
        }
        pieces.append(pickle.STOP + self._trailer(meta))
        with open(path, "wb") as f:
            try:
                f.writelines(pieces)
                f.flush()
            except OSError as exc:
                raise_if_disk_full(exc, path)
                raise

    @staticmethod
    def _trailer(meta: dict) -> bytes:
        """Return the bytes after STOP: BINBYTES' length, then the trailer, read from the end."""
        raw = pickle.dumps(meta, protocol=_PROTOCOL)
        body = raw + _CRC.pack(zlib.crc32(raw)) + _TRAILER_END.pack(len(raw) + _CRC.size)
        body += _MAGIC
        return _BLOB_LEN.pack(len(body)) + body

    def _commit(self, filename: str, meta: dict, end: int, pieces: list, changes: dict) -> None:
        """Write `pieces` (opcodes after the old trailer) and a new trailer; then commit.

        Everything goes after the committed trailer (which ends at `end`;
        anything after it is what a killed append left). Only when it is on
        disk does one byte, BINBYTES over the old STOP, link it in. A failed
        write cuts the file back to `end`.
        """
        stop = meta["stop"]
        with open(filename, "r+b") as f:
            f.seek(stop + 1)
            old_trailer = f.read(end - stop - 1)
            f.seek(stop - stop % 8)
            total = _Sum64.resume(meta["sum"], stop, f.read(stop % 8))
            crc = zlib.crc32(old_trailer, zlib.crc32(pickle.BINBYTES, meta["crc"]))
            total.update(pickle.BINBYTES + old_trailer)
            for piece in pieces:
                crc = zlib.crc32(piece, crc)
                total.update(piece)
            new_stop = end + sum(len(piece) for piece in pieces)
            new_meta = dict(
                meta, **changes, stop=new_stop, prev_stop=stop, crc=crc, sum=total.value
            )
            try:
                f.seek(end)
                f.writelines(pieces)
                f.write(pickle.STOP + self._trailer(new_meta))
                f.truncate()
                f.flush()
                fsync(f.fileno())
            except OSError as exc:
                # Give back the space; the old trailer still ends the file.
                with contextlib.suppress(OSError):
                    f.truncate(end)
                raise_if_disk_full(exc, filename)
                raise
            # This one-byte write commits the append.
            f.seek(stop)
            f.write(pickle.BINBYTES)
            f.flush()

    def _append_in_place(self, filename: str, data: dict[str, np.ndarray]) -> bool:
        """Write only the new rows, committed by a final one-byte write."""
        with damage_on_error(filename), open(filename, "rb") as f:
            meta, end = self._find_commit(f)
        # A file without rows takes its column types from the first rows; a
        # file of an earlier layout is rewritten once, to get checksums.
        if (
            meta is None
            or meta.get("format") != _FORMAT
            or meta["rows"] == 0
            or not fits_layout(_layout(meta), data)
        ):
            return False
        pieces = [pickle.POP]  # pops the old trailer that BINBYTES pushes
        with self._pickling(data):
            for slot, key in enumerate(meta["columns"]):
                pieces.append(pickle.LONG_BINGET + _SLOT.pack(slot))
                pieces.append(_items_opcodes(data[key]))
                pieces.append(pickle.POP)
        self._commit(filename, meta, end, pieces, {"rows": meta["rows"] + count(data)})
        return True
