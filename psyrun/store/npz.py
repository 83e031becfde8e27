"""NpzStore: NumPy ``.npz`` files that grow by adding members.

An ``.npz`` is a zip of ``.npy`` members. :meth:`NpzStore.save` writes a
plain one (``a.npy``, ``b.npy``, ...) as ``np.savez`` does. Every append
adds one member, ``chunk000001.npy``, holding a structured array with one
field per column, with zip append mode, so existing members are never
rewritten (one member per chunk rather than per column, because zip append
mode re-reads the central directory every time). ``np.load`` shows the first
chunk under the plain column names and later chunks as ``chunk000001`` etc.;
:meth:`NpzStore.load` joins them.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from psyrun.store.base import DEFAULT_CHUNK_ROWS, Store
from psyrun.store.columns import count, merge_chunks, normalize, select_row

__all__ = ["NpzStore"]

_CHUNK_MEMBER = re.compile(r"^chunk(\d{6,})\.npy$")


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


def _write_chunk(zf: zipfile.ZipFile, chunk: int, data: dict[str, np.ndarray]) -> None:
    for key in data:
        if _CHUNK_MEMBER.match(f"{key}.npy") or "/" in key:
            raise ValueError(
                f"NpzStore cannot store a column named {key!r}: names like 'chunk000001' "
                "and names containing '/' are reserved; rename the column"
            )
    if chunk == 0:
        for key, column in data.items():
            with zf.open(_member(chunk, key), "w", force_zip64=True) as member:
                np.lib.format.write_array(member, column, allow_pickle=True)
        return
    with zf.open(_member(chunk, None), "w", force_zip64=True) as member:
        np.lib.format.write_array(member, _to_record(data), allow_pickle=True)


class NpzStore(Store):
    """Store results as a NumPy ``.npz`` file; appends add zip members."""

    ext = ".npz"
    supports_chunks = True
    supports_row_count = True

    @staticmethod
    def _chunks(zf: zipfile.ZipFile) -> dict[int, list[str] | None]:
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
    def _read_chunk(zf: zipfile.ZipFile, chunk: int, keys: list[str] | None):
        if keys is None:
            with zf.open(_member(chunk, None)) as member:
                record = np.lib.format.read_array(member, allow_pickle=True)
            return {key: record[key] for key in record.dtype.names}
        out = {}
        for key in keys:
            with zf.open(_member(chunk, key)) as member:
                out[key] = np.lib.format.read_array(member, allow_pickle=True)
        return out

    def save(self, filename: str, data: Mapping[str, Any]) -> None:
        """Write ``data`` as a plain ``.npz`` (temporary file, then rename)."""
        filename = os.fspath(filename)
        data = normalize(data)
        tmp = f"{filename}.tmp{os.getpid()}.npz"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            _write_chunk(zf, 0, data)
        os.replace(tmp, filename)

    def append(self, filename: str, data: Mapping[str, Any]) -> None:
        """Add the rows of ``data`` as new members (creates the file if missing)."""
        filename = os.fspath(filename)
        data = normalize(data)
        if not os.path.exists(filename):
            self.save(filename, data)
            return
        if not data or count(data) == 0:
            return
        with zipfile.ZipFile(filename, "a", compression=zipfile.ZIP_STORED) as zf:
            chunks = self._chunks(zf)
            _write_chunk(zf, max(chunks, default=-1) + 1, data)

    def iter_file_chunks(self, filename: str) -> Iterator[dict[str, np.ndarray]]:
        """Yield the chunks as they were appended (columns not yet padded)."""
        with zipfile.ZipFile(filename) as zf:
            for chunk, keys in self._chunks(zf).items():
                yield self._read_chunk(zf, chunk, keys)

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read and join all chunks (or row ``row`` as one-element columns)."""
        data = merge_chunks(list(self.iter_file_chunks(filename)))
        if row is None:
            return data
        return select_row(data, row, filename)

    @staticmethod
    def _header(zf: zipfile.ZipFile, chunk: int, key: str | None):
        """Shape and dtype of a member, read from its ``.npy`` header only."""
        with zf.open(_member(chunk, key)) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        return shape, dtype

    def _signature(self, zf: zipfile.ZipFile, chunk: int, keys: list[str] | None):
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
        with zipfile.ZipFile(filename) as zf:
            return sum(
                self._signature(zf, chunk, keys)[0] for chunk, keys in self._chunks(zf).items()
            )

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
        with zipfile.ZipFile(filename) as zf:
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
