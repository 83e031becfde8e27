"""NpzStore: NumPy ``.npz`` files that grow by adding members.

An ``.npz`` is a zip of ``.npy`` members. :meth:`NpzStore.save` writes a
plain one (``a.npy``, ``b.npy``, ...) as ``np.savez`` does. Every append
adds one member, ``chunk000001.npy``, holding a structured array with one
field per column, with zip append mode, so existing members are never
rewritten (one member per chunk rather than per column, because zip append
mode re-reads the central directory every time). ``np.load`` shows the first
chunk under the plain column names and later chunks as ``chunk000001`` etc.;
:meth:`NpzStore.load` joins them.

A zip's member list (its central directory) sits at the end and an append
overwrites it, so a process killed during an append leaves a file that
``np.load`` and ``zipfile`` reject. NpzStore still reads it: it walks the
members' local headers from the start of the file and keeps every member
that is complete and passes its CRC check, which loses only the chunk being
appended. The next append truncates the torn tail and writes a new member
list in place (no rewrite of the data).

Damage: a zip's members carry CRC-32s, but a file cut short looks like one
whose append was killed. So every file this version writes carries a commit
record in an extra field of its first member's local header (which zip
readers skip, and which no append moves): the number of committed members,
the number of rows, and a CRC-32 over every committed member's name, CRC-32
and size. An append writes its member and the new member list, syncs them,
and only then rewrites the record in place (28 bytes inside the first
sector: one write). A reader takes exactly the members the record names:
fewer (a truncated file, a deleted member), others (a replaced member) or a
record that fails its own CRC raise :class:`~psyrun.exceptions.DamagedFileError`;
more are the torn tail of an append, ignored and cut off by the next one.
Files written before the record existed read as before.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from typing import IO, Any

import numpy as np

from psyrun.exceptions import DamagedFileError
from psyrun.store.base import (
    DEFAULT_CHUNK_ROWS,
    NotAResultError,
    Store,
    damage_on_error,
    raise_if_disk_full,
)
from psyrun.store.columns import count, merge_chunks, select_row

__all__ = ["NpzStore"]

_CHUNK_MEMBER = re.compile(r"^chunk(\d{6,})\.npy$")
# The result's metadata, as JSON. Zip members cannot be replaced in place, so
# writing metadata again adds a member with the next number; the highest wins.
# Not a .npy member: NpzStore.load and np.load's arrays never include it.
_METADATA_MEMBER = re.compile(r"^psyrun_metadata\.(\d{6,})\.json$")


def _parse(name: str) -> tuple[int, str | None] | None:
    """``(chunk, column)`` of a member; column None for a structured chunk."""
    match = _CHUNK_MEMBER.match(name)
    if match:
        return int(match.group(1)), None
    if name.endswith(".npy") and "/" not in name:
        return 0, name[:-4]
    return None


def _member(chunk: int, key: str | None) -> str:
    return f"{key}.npy" if chunk == 0 else f"chunk{chunk:06d}.npy"


def _to_record(data: dict[str, np.ndarray]) -> np.ndarray:
    """Pack equal-length columns into one structured array (field per column)."""
    dtype = np.dtype([(key, col.dtype, col.shape[1:]) for key, col in data.items()])
    record = np.empty(count(data), dtype=dtype)
    for key, col in data.items():
        record[key] = col
    return record


def _check_names(data: Mapping[str, np.ndarray]) -> None:
    for key in data:
        # An empty name cannot be a field of the structured chunks (NumPy renames it).
        if _CHUNK_MEMBER.match(f"{key}.npy") or "/" in key or not key:
            raise ValueError(
                f"NpzStore cannot store a column named {key!r}: the empty name, names "
                "like 'chunk000001' and names containing '/' are reserved; rename the column"
            )


def _members(chunk: int, data: dict[str, np.ndarray]) -> dict[str, bytes]:
    """Serialise the ``.npy`` members of chunk number ``chunk``."""
    if chunk == 0:
        return {_member(chunk, key): _npy_bytes(column) for key, column in data.items()}
    return {_member(chunk, None): _npy_bytes(_to_record(data))}


def _npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=True)
    return out.getvalue()


_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header, 30 bytes
_ZIP64_EXTRA = 0x0001
_DATA_DESCRIPTOR = 0x08  # flag: sizes follow the data (NpzStore never writes this)


def _zip64_sizes(extra: bytes, csize: int, usize: int) -> tuple[int, int]:
    """Resolve 0xFFFFFFFF sizes of a local header from its zip64 extra field."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        if tag == _ZIP64_EXTRA:
            values = iter(struct.unpack_from(f"<{size // 8}Q", extra, pos + 4))
            # The field lists the uncompressed size first, then the compressed one.
            if usize == 0xFFFFFFFF:
                usize = next(values, -1)
            if csize == 0xFFFFFFFF:
                csize = next(values, -1)
            break
        pos += 4 + size
    return csize, usize


def _scan_members(fp: IO[bytes]) -> tuple[list[tuple[zipfile.ZipInfo, int]], int]:
    """Walk the local headers of a zip whose member list is missing or torn.

    Returns ``(members, end)``: ``(info, data offset)`` of every member from
    the start of the file that is stored uncompressed, complete and passes
    its CRC check, up to the first that is not, and the offset where the
    last of them ends.
    """
    members: list[tuple[zipfile.ZipInfo, int]] = []
    end = 0
    while True:
        fp.seek(end)
        header = fp.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size or header[:4] != zipfile.stringFileHeader:
            break
        _, version, _, flags, method, mtime, mdate, crc, csize, usize, nlen, xlen = (
            _LOCAL_HEADER.unpack(header)
        )
        raw_name, extra = fp.read(nlen), fp.read(xlen)
        if len(raw_name) < nlen or len(extra) < xlen:
            break
        csize, usize = _zip64_sizes(extra, csize, usize)
        # An append killed before it finished a member leaves sizes 0 in its header.
        if method != zipfile.ZIP_STORED or flags & _DATA_DESCRIPTOR or csize <= 0:
            break
        if csize != usize:
            break
        start = fp.tell()
        check, left = 0, csize
        while left:
            block = fp.read(min(left, 1 << 20))
            if not block:
                break
            check = zlib.crc32(block, check)
            left -= len(block)
        if left or check != crc:
            break
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        date_time = (
            (mdate >> 9) + 1980,
            (mdate >> 5) & 0xF,
            mdate & 0x1F,
            mtime >> 11,
            (mtime >> 5) & 0x3F,
            (mtime & 0x1F) * 2,
        )
        info = zipfile.ZipInfo(name, date_time)
        info.extract_version = version
        info.flag_bits = flags
        info.compress_type = method
        info.CRC = crc
        info.compress_size = info.file_size = csize
        info.header_offset = end
        info.extra = extra
        members.append((info, start))
        end = start + csize
    return members, end


# The commit record: an extra field of the first member's local header.
_RECORD_ID = 0x5350  # 'PS'
_RECORD = struct.Struct("<4sQQI")  # tag, committed members, rows, CRC-32 of the members
_RECORD_TAG = b"PSY2"
_RECORD_FIELD = struct.Struct("<HH")
_RECORD_SIZE = _RECORD.size + 4  # with the record's own CRC-32


def _record_extra() -> bytes:
    """Return a member's extra field for the commit record (see :func:`_write_record`)."""
    return _RECORD_FIELD.pack(_RECORD_ID, _RECORD_SIZE) + bytes(_RECORD_SIZE)


def _read_record(fp: IO[bytes]) -> tuple[tuple[int, int, int] | None, int | None]:
    """Return ``((members, rows, chain), offset)`` of the commit record, or ``(None, None)``.

    Raises DamagedFileError when the record is there but fails its CRC-32.
    """
    fp.seek(0)
    header = fp.read(_LOCAL_HEADER.size)
    if header[:4] != zipfile.stringFileHeader[: len(header[:4])] or not header:
        return None, None
    nlen, xlen = _LOCAL_HEADER.unpack(header)[-2:] if len(header) == _LOCAL_HEADER.size else (0, 0)
    fp.seek(_LOCAL_HEADER.size + nlen)
    extra = fp.read(xlen)
    if len(header) < _LOCAL_HEADER.size or len(extra) < xlen:
        # Every npz with members holds at least its first member's header.
        raise DamagedFileError(f"{getattr(fp, 'name', 'the file')} is damaged: it is cut short")
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = _RECORD_FIELD.unpack_from(extra, pos)
        if tag == _RECORD_ID and size == _RECORD_SIZE:
            payload = extra[pos + 4 : pos + 4 + size]
            record = payload[: _RECORD.size]
            (crc,) = struct.unpack("<I", payload[_RECORD.size :])
            offset = _LOCAL_HEADER.size + nlen + pos + 4
            if len(payload) < size or zlib.crc32(record) != crc:
                raise DamagedFileError(
                    f"{getattr(fp, 'name', 'the file')} is damaged: its commit record "
                    "fails its checksum"
                )
            tag_bytes, members, rows, chain = _RECORD.unpack(record)
            if tag_bytes != _RECORD_TAG:
                name = getattr(fp, "name", "the file")
                raise DamagedFileError(f"{name} is damaged: its commit record is unreadable")
            return (members, rows, chain), offset
        pos += 4 + size
    return None, None


def _record_offset(fp: IO[bytes]) -> int:
    """Return the offset of the commit record in the first member's local header."""
    fp.seek(0)
    nlen, xlen = _LOCAL_HEADER.unpack(fp.read(_LOCAL_HEADER.size))[-2:]
    fp.seek(_LOCAL_HEADER.size + nlen)
    extra = fp.read(xlen)
    if extra[:4] != _RECORD_FIELD.pack(_RECORD_ID, _RECORD_SIZE):
        raise RuntimeError("the first member has no room for the commit record")
    return _LOCAL_HEADER.size + nlen + 4


def _write_record(fp: IO[bytes], offset: int, members: int, rows: int, chain: int) -> None:
    record = _RECORD.pack(_RECORD_TAG, members, rows, chain)
    fp.seek(offset)
    fp.write(record + struct.pack("<I", zlib.crc32(record)))


def _chain(infos: list[zipfile.ZipInfo], crc: int = 0) -> int:
    """CRC-32 over the names, CRC-32s and sizes of `infos`, continuing `crc`."""
    for info in infos:
        crc = zlib.crc32(info.filename.encode("utf-8"), crc)
        crc = zlib.crc32(struct.pack("<IQ", info.CRC, info.file_size), crc)
    return crc


def _data_end(fp: IO[bytes], info: zipfile.ZipInfo) -> int:
    """Return the offset where the data of the member `info` ends (from its local header)."""
    fp.seek(info.header_offset)
    header = fp.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or header[:4] != zipfile.stringFileHeader:
        raise DamagedFileError(
            f"{getattr(fp, 'name', 'the file')} is damaged: member {info.filename!r} is missing"
        )
    nlen, xlen = _LOCAL_HEADER.unpack(header)[-2:]
    return info.header_offset + _LOCAL_HEADER.size + nlen + xlen + info.compress_size


def _all_members(fp: IO[bytes]) -> tuple[list[zipfile.ZipInfo], zipfile.ZipFile | None]:
    """Return every member in file order (from the local headers when the member list is torn)."""
    try:
        zf = zipfile.ZipFile(fp)
    except zipfile.BadZipFile:
        return [info for info, _ in _scan_members(fp)[0]], None
    return sorted(zf.infolist(), key=lambda info: info.header_offset), zf


def _committed(fp: IO[bytes], record: tuple[int, int, int]) -> list[zipfile.ZipInfo]:
    """Return the members the commit `record` names; DamagedFileError when they are missing."""
    n, _, chain = record
    infos, zf = _all_members(fp)
    if zf is not None:
        zf.close()
    committed = infos[:n]
    if len(committed) < n or _chain(committed) != chain:
        name = getattr(fp, "name", "the file")
        what = f"{len(infos)} of its {n} members" if len(infos) < n else "other members"
        raise DamagedFileError(
            f"{name} is damaged: it holds {what} than its commit record names "
            "(truncated, or a member deleted or replaced)"
        )
    return committed


class _Committed:
    """Read-only view of a zip restricted to its committed members."""

    def __init__(self, fp: IO[bytes], names: list[str], zf: zipfile.ZipFile | None) -> None:
        self._names = names
        self._zf = zf if zf is not None else _Salvaged(fp)

    def namelist(self) -> list[str]:
        return list(self._names)

    def open(self, name: str) -> IO[bytes]:
        return self._zf.open(name)


class _Salvaged:
    """Read-only stand-in for a ``ZipFile`` whose member list was lost."""

    def __init__(self, fp: IO[bytes]) -> None:
        self._fp = fp
        members, _ = _scan_members(fp)
        self._members = {info.filename: (start, info.file_size) for info, start in members}

    def namelist(self) -> list[str]:
        return list(self._members)

    def open(self, name: str) -> IO[bytes]:
        start, size = self._members[name]
        self._fp.seek(start)
        return io.BytesIO(self._fp.read(size))


def _check_is_zip(fp: IO[bytes], filename: str) -> None:
    """Refuse a non-empty file that does not start like a zip archive.

    Salvaging (and the repair before an append) must only ever act on an
    npz whose tail was torn, never on some other file that happens to carry
    the extension: reading it as empty could get it replaced.
    """
    size = fp.seek(0, os.SEEK_END)
    fp.seek(0)
    # A zip starts with its first member, or (no members) with its end record.
    if size and fp.read(4) not in (zipfile.stringFileHeader, zipfile.stringEndArchive):
        fp.seek(0)
        raise NotAResultError(
            f"{filename!r} is not an .npz file (no zip archive at its start); "
            "check the file name or the task's store, nothing was changed"
        )
    fp.seek(0)


@contextlib.contextmanager
def _open_archive(filename: str) -> Iterator[zipfile.ZipFile | _Salvaged | _Committed]:
    """Open ``filename`` for reading: its committed members, or those a torn file kept."""
    with open(filename, "rb") as fp:
        _check_is_zip(fp, filename)
        record, _ = _read_record(fp)
        if record is None:
            _check_no_record_expected(fp, filename)
        if record is not None:
            names = [info.filename for info in _committed(fp, record)]
            try:
                zf = zipfile.ZipFile(fp)
            except zipfile.BadZipFile:
                zf = None
            try:
                yield _Committed(fp, names, zf)
            finally:
                if zf is not None:
                    zf.close()
            return
        try:
            archive = zipfile.ZipFile(fp)
        except zipfile.BadZipFile:
            yield _Salvaged(fp)
            return
        with archive:
            yield archive


def _check_no_record_expected(fp: IO[bytes], filename: str) -> None:
    """Raise DamagedFileError when members of a file without a record say it had one."""
    infos, zf = _all_members(fp)
    if zf is not None:
        zf.close()
    mark = _RECORD_FIELD.pack(_RECORD_ID, _RECORD_SIZE)
    if any(mark in info.extra for info in infos):
        raise DamagedFileError(
            f"{filename} is damaged: the member holding its commit record is missing"
        )


def _committed_rows(filename: str) -> int | None:
    """Return the row count of the commit record, None for a file without one."""
    with open(filename, "rb") as fp:
        record, _ = _read_record(fp)
    return None if record is None else record[1]


def _open_for_append(fp: IO[bytes]) -> zipfile.ZipFile:
    """Open the zip ``fp`` for appending, first repairing it if an append was killed.

    zipfile appends at the end as a new, empty archive when it finds no
    member list, which would hide every earlier chunk. Instead the complete
    members are found by their local headers, the torn tail is cut off and
    the archive is told about them, so closing it writes a full member list.
    """
    _check_is_zip(fp, getattr(fp, "name", "the file"))
    record, _ = _read_record(fp)
    if record is not None:
        committed = _committed(fp, record)
        infos, reader = _all_members(fp)
        if reader is not None:
            reader.close()
        if reader is not None and len(infos) == len(committed):
            fp.seek(0)
            return zipfile.ZipFile(fp, "a", compression=zipfile.ZIP_STORED)
        # Cut off what an interrupted append left after the committed members;
        # without a member list zipfile starts an empty archive at the end.
        end = _data_end(fp, committed[-1])
        fp.seek(end)
        fp.truncate()
        fp.seek(0)
        zf = zipfile.ZipFile(fp, "a", compression=zipfile.ZIP_STORED)
        members = [(info, None) for info in committed]
    else:
        size = fp.seek(0, os.SEEK_END)
        fp.seek(0)
        zf = zipfile.ZipFile(fp, "a", compression=zipfile.ZIP_STORED)
        if fp.tell() < size:  # zipfile found the member list and stands at its start
            return zf
        members, end = _scan_members(fp)
    fp.seek(end)
    fp.truncate()
    # ZipFile keeps its members in filelist/NameToInfo and writes new ones at
    # start_dir (stable attributes since Python 2; no public API for this).
    zf.start_dir = end
    for info, _ in members:
        zf.filelist.append(info)
        zf.NameToInfo[info.filename] = info
    return zf


class NpzStore(Store):
    """Store results as a NumPy ``.npz`` file; appends add zip members.

    An append killed part way loses only its own chunk: the file then lacks
    its member list, so ``np.load`` rejects it, but this store still reads
    every complete member, and the next :meth:`append` cuts off the torn end
    and writes a new member list, making it a plain ``.npz`` again.
    """

    ext = ".npz"
    supports_chunks = True
    supports_row_count = True
    supports_metadata = True
    # Appends add chunk members; a result in one piece reads with plain np.load.
    write_whole = True

    @staticmethod
    def _chunks(zf: zipfile.ZipFile | _Salvaged) -> dict[int, list[str] | None]:
        """Chunk index -> its plain column members, or None for a structured chunk."""
        chunks: dict[int, list[str] | None] = {}
        for name in zf.namelist():
            parsed = _parse(name)
            if parsed is None:
                continue
            chunk, key = parsed
            if key is None:
                chunks[chunk] = None
            else:
                chunks.setdefault(chunk, []).append(key)
        return dict(sorted(chunks.items()))

    @staticmethod
    def _read_chunk(zf, chunk: int, keys: list[str] | None):
        def read(name: str) -> np.ndarray:
            with zf.open(name) as member:
                array = np.lib.format.read_array(member, allow_pickle=True)
                # Read to the end: zipfile checks the member's CRC-32 there.
                if member.read():
                    raise DamagedFileError(f"member {name!r} holds more than its array")
            return array

        if keys is None:
            record = read(_member(chunk, None))
            return {key: record[key] for key in record.dtype.names}
        return {key: read(_member(chunk, key)) for key in keys}

    def _check_columns(self, data: dict[str, np.ndarray]) -> None:
        _check_names(data)

    def _write_chunk(self, zf: zipfile.ZipFile, chunk: int, data: dict[str, np.ndarray]) -> None:
        # Serialise every member before the archive is touched: a value that
        # cannot be pickled must fail here, not half way through a member of a
        # file that already holds results.
        with self._pickling(data):
            members = _members(chunk, data)
        for name, raw in members.items():
            info = zipfile.ZipInfo(name, time.localtime(time.time())[:6])
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o600 << 16
            # The first member's holds the commit record; the others' mark the
            # file as one that has a record, should the first member be lost.
            info.extra = _record_extra()
            with zf.open(info, "w", force_zip64=True) as member:
                member.write(raw)

    def _write_file(self, path: str, data: dict[str, np.ndarray]) -> None:
        # A plain .npz, as np.savez writes it, with the commit record.
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            self._write_chunk(zf, 0, data)
        if not data:
            return  # no member to hold a commit record (and no rows to protect)
        with open(path, "r+b") as fp:
            infos, zf = _all_members(fp)
            zf.close()
            _write_record(fp, _record_offset(fp), len(infos), count(data), _chain(infos))

    def _add_members(self, filename: str, write, rows: int) -> bool:
        """Add members to the file (``write(zf)``), then commit them in its record.

        Returns False, having changed nothing, for a file without a commit
        record (written before it existed): it is rewritten once instead.
        """
        with damage_on_error(filename), open(filename, "rb") as fp:
            record, offset = _read_record(fp)
            if record is None:
                return False
            committed_end = _data_end(fp, _committed(fp, record)[-1])
        with open(filename, "r+b") as fp:
            zf = _open_for_append(fp)
            try:
                write(zf)
                zf.close()
                fp.flush()
                os.fsync(fp.fileno())
            except BaseException as exc:
                # The record still names the old members; give back the space
                # the torn member took (the next append writes a member list).
                zf._didModify = False  # no member list now: it may not fit
                with contextlib.suppress(Exception):
                    zf.close()
                with contextlib.suppress(OSError):
                    fp.truncate(committed_end)
                if isinstance(exc, Exception):
                    raise_if_disk_full(exc, filename)
                raise
            infos, reader = _all_members(fp)
            if reader is not None:
                reader.close()
            # The commit: the record now names the new members too.
            chain = _chain(infos[record[0] :], record[2])
            _write_record(fp, offset, len(infos), record[1] + rows, chain)
            fp.flush()
            os.fsync(fp.fileno())
        return True

    def _append_in_place(self, filename: str, data: dict[str, np.ndarray]) -> bool:
        """Add the rows as a new member and commit it."""

        def write(zf: zipfile.ZipFile) -> None:
            self._write_chunk(zf, max(self._chunks(zf), default=-1) + 1, data)

        return self._add_members(filename, write, count(data))

    @staticmethod
    def _metadata_members(zf) -> dict[int, str]:
        found = {}
        for name in zf.namelist():
            match = _METADATA_MEMBER.match(name)
            if match:
                found[int(match.group(1))] = name
        return found

    def _write_metadata(self, path: str, metadata: dict[str, Any]) -> None:
        def write(zf: zipfile.ZipFile) -> None:
            number = max(self._metadata_members(zf), default=0) + 1
            with zf.open(f"psyrun_metadata.{number:06d}.json", "w") as member:
                member.write(json.dumps(metadata).encode("utf-8"))

        if not self._add_members(path, write, 0):
            self._write_whole(path, self.load(path), metadata)

    def _read_metadata(self, filename: str) -> dict[str, Any] | None:
        with damage_on_error(filename), _open_archive(filename) as zf:
            members = self._metadata_members(zf)
            if not members:
                return None
            with zf.open(members[max(members)]) as member:
                return json.loads(member.read().decode("utf-8"))

    def iter_file_chunks(self, filename: str) -> Iterator[dict[str, np.ndarray]]:
        """Yield the chunks as they were appended (columns not yet padded).

        Raises
        ------
        psyrun.exceptions.DamagedFileError
            When a member is missing, fails its CRC-32, or the rows differ
            from the count the file's commit record holds.
        """
        with damage_on_error(filename):
            expected = _committed_rows(filename)
            seen = 0
            with _open_archive(filename) as zf:
                for chunk, keys in self._chunks(zf).items():
                    piece = self._read_chunk(zf, chunk, keys)
                    seen += count(piece)
                    yield piece
            if expected is not None and seen != expected:
                raise DamagedFileError(
                    f"{filename} is damaged: it holds {seen} rows, its commit record {expected}"
                )

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read and join all chunks (or row ``row`` as one-element columns)."""
        data = merge_chunks(list(self.iter_file_chunks(filename)))
        if row is None:
            return data
        return select_row(data, row, filename)

    @staticmethod
    def _header(zf: zipfile.ZipFile | _Salvaged, chunk: int, key: str | None):
        """Shape and dtype of a member, read from its ``.npy`` header only."""
        with zf.open(_member(chunk, key)) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        return shape, dtype

    def _signature(self, zf: zipfile.ZipFile | _Salvaged, chunk: int, keys: list[str] | None):
        """(rows, [(column, dtype kind, row shape)]) of a chunk, from headers."""
        if keys is None:
            shape, dtype = self._header(zf, chunk, None)
            fields = [(name, dtype[name].base, dtype[name].shape) for name in dtype.names]
            rows = shape[0]
        else:
            fields, rows = [], 0
            for key in keys:
                shape, dtype = self._header(zf, chunk, key)
                fields.append((key, dtype, tuple(shape[1:])))
                rows = shape[0] if shape else 0
        sig = tuple((k, "U" if d.kind == "U" else d.str, tuple(s)) for k, d, s in fields)
        return rows, sig

    def count_rows(self, filename: str) -> int:
        """Count the rows from the ``.npy`` headers only."""
        with damage_on_error(filename):
            expected = _committed_rows(filename)
            with _open_archive(filename) as zf:
                n = sum(
                    self._signature(zf, chunk, keys)[0] for chunk, keys in self._chunks(zf).items()
                )
        if expected is not None and n != expected:
            raise DamagedFileError(
                f"{filename} is damaged: it holds {n} rows, its commit record {expected}"
            )
        return n

    def iter_chunks(
        self, filename: str, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield rows in order, at most ``chunk_rows`` at a time, chunk by chunk.

        When later chunks add keys or change per-row shapes or types, the
        whole file is merged first so that every yielded chunk has the same
        columns and shapes.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        with damage_on_error(filename), _open_archive(filename) as zf:
            signatures = {self._signature(zf, c, keys)[1] for c, keys in self._chunks(zf).items()}
        if len(signatures) > 1:
            yield from super().iter_chunks(filename, chunk_rows)
            return
        buffer: list[dict[str, np.ndarray]] = []
        buffered = 0
        for piece in self.iter_file_chunks(filename):
            buffer.append(piece)
            buffered += count(piece)
            while buffered >= chunk_rows:
                merged = merge_chunks(buffer)
                yield {k: v[:chunk_rows] for k, v in merged.items()}
                buffered -= chunk_rows
                buffer = [{k: v[chunk_rows:] for k, v in merged.items()}] if buffered else []
        if buffered:
            yield merge_chunks(buffer)
