"""ZarrStore: zarr v3 directory stores, one chunked array per column.

Each column is a compressed array chunked along rows; appends resize it and
write the new rows, so they cost what they add (plus the partial last chunk),
and row ranges are read chunk by chunk. Numeric, boolean and str columns are
supported (str as zarr's variable-length string type); anything else raises
:class:`~psyrun.store.base.UnsupportedValueError` before the store is
touched. Chunks that change a column's type or per-row shape, or add or drop
keys, make the store rewrite the columns once with the merged data (a new
directory under a temporary name, renamed into place).

Appends are crash-consistent: the columns are resized and written first and
the number of complete rows is recorded in the group attributes last (zarr
writes each metadata and chunk file atomically, by rename). Readers use that
count and ignore rows past it, and the next append overwrites them, so a
process killed during an append loses at most the rows it was appending.
Stores written before the count was recorded read as many rows as their
shortest column has.

A directory cannot be renamed over another one, so replacing the store (a
rewrite, :meth:`ZarrStore.replace`) takes two renames, as
:func:`psyrun.atomic.replace_path` does them: the old directory to
``tmp_name(filename + '.old')``, the new one, complete under
``tmp_name(filename)``, into place. A process killed between the two leaves
no store under its name; readers then read the new directory, and the next
append (or any write) renames it into place. That pair of names is the one
temporary-name scheme of this store.
"""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from typing import Any

import numpy as np

from psyrun.atomic import remove_path, tmp_name
from psyrun.exceptions import DamagedFileError
from psyrun.store.base import Store, damage_on_error, disk_full_error, free_bytes
from psyrun.store.columns import ARRAY_KINDS, count, fits_layout, row_slice

__all__ = ["ZarrStore"]

_COLUMNS_ATTR = "psyrun_columns"  # column names in order; arrays are named c0, c1, ...
_ROWS_ATTR = "psyrun_rows"  # rows committed by the last complete write
_METADATA_ATTR = "psyrun_metadata"  # the result's metadata (a JSON object)
_COMMIT_ATTR = "psyrun_commit"  # "<crc32 hex> <JSON: rows, columns, layout, metadata>"
_CHUNK_BYTES = 1 << 18  # target size of one chunk before compression


def _codecs():
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=0), Crc32cCodec()]


def _layout(arrays: dict[str, Any]) -> list:
    return [
        [str(array.dtype), [int(d) for d in array.shape[1:]], [int(c) for c in array.chunks]]
        for array in arrays.values()
    ]


def _commit_text(arrays: dict[str, Any], rows: int, metadata: Any) -> str:
    record = {"rows": rows, "columns": list(arrays), "layout": _layout(arrays)}
    text = json.dumps({**record, "metadata": metadata}, sort_keys=True)
    return f"{zlib.crc32(text.encode()):08x} {text}"


def _checked(arrays: dict[str, Any]) -> bool:
    """Whether the arrays were written with chunk checksums (by this version)."""
    return any(type(c).__name__ == "Crc32cCodec" for a in arrays.values() for c in a.compressors)


def _write_all_chunks():
    """Make zarr write chunks that hold only the fill value (a missing one is then damage)."""
    import zarr

    return zarr.config.set({"array.write_empty_chunks": True})


def _chunk_rows(column: np.ndarray) -> int:
    row_bytes = max(1, column.dtype.itemsize if column.dtype.kind != "U" else 16)
    row_bytes *= int(np.prod(column.shape[1:], dtype=np.int64)) or 1
    return max(1, _CHUNK_BYTES // row_bytes)


def _tmp_pattern(path: str) -> re.Pattern[str]:
    """Match the names :func:`psyrun.atomic.tmp_name` gives `path` in any process.

    The group is the process id.
    """
    marker = f".tmp{os.getpid()}"
    head, _, tail = os.path.basename(tmp_name(path)).rpartition(marker)
    return re.compile(re.escape(head) + r"\.tmp(\d+)" + re.escape(tail))


def _interrupted_replace(filename: str) -> tuple[str, str] | None:
    """Return the ``(new, old)`` directories of a replace killed between its two renames.

    A result directory is replaced by :func:`psyrun.atomic.replace_path`:
    the new tree, complete under ``tmp_name(filename)``, say
    ``.r.tmp123.zarr``, is renamed in after the old one was moved aside to
    ``tmp_name(filename + '.old')``, ``.r.zarr.tmp123.old``. A kill between
    the two renames leaves both and no ``filename``; the new one then holds
    the store. Returns None when ``filename`` exists or no such pair (of one
    process id) is left.
    """
    if os.path.exists(filename):
        return None
    parent = os.path.dirname(os.path.abspath(filename))
    try:
        names = sorted(os.listdir(parent))
    except FileNotFoundError:
        return None
    new_name, old_name = _tmp_pattern(filename), _tmp_pattern(filename + ".old")
    new = {m.group(1): name for name in names if (m := new_name.fullmatch(name))}
    for name in names:
        match = old_name.fullmatch(name)
        if match and match.group(1) in new:
            return os.path.join(parent, new[match.group(1)]), os.path.join(parent, name)
    return None


class ZarrStore(Store):
    """Store results in a zarr v3 directory (``.zarr``).

    Appends record the number of complete rows last, so an append killed
    part way leaves the store as it was before it; readers ignore the rows
    it had written and the next :meth:`append` overwrites them.
    """

    ext = ".zarr"
    library = "zarr"
    requirement = "psyrun[zarr]"
    column_kinds = ARRAY_KINDS
    text_encoding = "utf-8"
    supports_row_range = True
    supports_chunks = True
    supports_row_count = True
    supports_metadata = True

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _arrays(group) -> dict[str, Any]:
        names = group.attrs.get(_COLUMNS_ATTR, [])
        return {name: group[f"c{i}"] for i, name in enumerate(names)}

    @staticmethod
    def _rows(group, arrays: dict[str, Any], filename: str = "the store") -> int:
        """Return the number of committed rows (rows past it belong to an interrupted append).

        Raises DamagedFileError when the commit record (of stores written
        with checksums) fails its CRC or disagrees with the arrays.
        """
        text = group.attrs.get(_COMMIT_ATTR)
        if text is None:
            if _checked(arrays) or (
                not arrays and _COLUMNS_ATTR not in group.attrs and list(group.array_keys())
            ):
                raise DamagedFileError(f"{filename} is damaged: its commit record is missing")
            stored = min((array.shape[0] for array in arrays.values()), default=0)
            committed = group.attrs.get(_ROWS_ATTR)
            # Stores written before the count was recorded: trust the shortest column.
            return stored if committed is None else min(int(committed), stored)
        crc, _, body = str(text).partition(" ")
        if f"{zlib.crc32(body.encode()):08x}" != crc:
            raise DamagedFileError(f"{filename} is damaged: its commit record fails its checksum")
        record = json.loads(body)
        rows = int(record["rows"])
        metadata = group.attrs.get(_METADATA_ATTR)
        differ = [
            what
            for what, same in (
                ("columns", record["columns"] == list(arrays)),
                ("layout", record["layout"] == _layout(arrays)),
                ("metadata", record["metadata"] == (dict(metadata) if metadata else None)),
                ("row count", group.attrs.get(_ROWS_ATTR) == rows),
                ("checksums", not arrays or _checked(arrays)),
            )
            if not same
        ]
        if differ:
            raise DamagedFileError(
                f"{filename} is damaged: its {', '.join(differ)} differ from its commit record"
            )
        for key, array in arrays.items():
            if array.shape[0] < rows:
                raise DamagedFileError(
                    f"{filename} is damaged: column {key!r} holds {array.shape[0]} of the "
                    f"{rows} rows its commit record names"
                )
        return rows

    @staticmethod
    def _check_chunks(
        filename: str, root: str, group, arrays: dict[str, Any], start: int, stop: int
    ) -> None:
        """Raise DamagedFileError when a chunk holding rows ``start:stop`` is missing."""
        if stop <= start or group.attrs.get(_COMMIT_ATTR) is None:
            return
        for i, array in enumerate(arrays.values()):
            grid = [math.ceil(s / c) for s, c in zip(array.shape[1:], array.chunks[1:])]
            inner = [()]
            for n in grid:
                inner = [(*t, j) for t in inner for j in range(n)]
            first, last = start // array.chunks[0], (stop - 1) // array.chunks[0]
            for row_chunk in range(first, last + 1):
                for rest in inner:
                    key = array.metadata.encode_chunk_key((row_chunk, *rest))
                    if not os.path.exists(os.path.join(root, f"c{i}", *key.split("/"))):
                        raise DamagedFileError(
                            f"{filename} is damaged: chunk {key} of column "
                            f"{list(arrays)[i]!r} is missing"
                        )

    @staticmethod
    def _decode(values: np.ndarray) -> np.ndarray:
        # zarr hands strings back as StringDType; the stores promise U arrays.
        if values.dtype.kind == "T":
            width = max(map(len, values.flat), default=0)
            return values.astype(f"U{max(width, 1)}")
        return values

    @staticmethod
    def _fits(arrays: dict, data: dict[str, np.ndarray]) -> bool:
        layout = {}
        for key, array in arrays.items():
            stored = np.dtype(array.dtype)
            layout[key] = (None if stored.kind == "T" else stored, array.shape[1:])
        return fits_layout(layout, data)

    def _open(self, filename: str, mode: str):
        return self._open_at(filename, mode)[0]

    def _open_at(self, filename: str, mode: str):
        """Return the group and the directory it was opened at."""
        zarr = self.preload()
        if not os.path.isdir(filename):
            pair = _interrupted_replace(filename)
            if pair is None:
                raise FileNotFoundError(f"no zarr store at {filename!r}")
            if mode == "r":
                filename = pair[0]  # readers leave the repair to the next append
            else:
                os.replace(pair[0], filename)
                remove_path(pair[1])
        return zarr.open_group(filename, mode=mode, use_consolidated=False), filename

    # -- a result is a directory -----------------------------------------------

    def exists(self, filename: str) -> bool:
        """Whether the store exists, also as the new half of an interrupted replace."""
        return os.path.exists(filename) or _interrupted_replace(filename) is not None

    def remove(self, filename: str) -> None:
        """Remove the store directory (and what an interrupted replace left of it)."""
        pair = _interrupted_replace(filename)
        for path in pair or ():
            remove_path(path)
        remove_path(filename)

    # -- format-specific steps of save and append ------------------------------

    def _write_file(self, path: str, data: dict[str, np.ndarray]) -> None:
        # zarr writes chunks concurrently: a write failing for want of space
        # may leave others running. Refuse up front what cannot fit.
        needed = (1 << 20) + sum(v.nbytes + v.nbytes // 50 for v in data.values())
        free = free_bytes(os.path.dirname(os.path.abspath(path)))
        if free is not None and free < needed:
            raise disk_full_error(path, free, needed)
        group = self.preload().open_group(path, mode="w")
        n = count(data)
        arrays = {}
        with _write_all_chunks():
            for i, (key, column) in enumerate(data.items()):
                array = group.create_array(
                    f"c{i}",
                    shape=column.shape,
                    dtype=str if column.dtype.kind == "U" else column.dtype,
                    chunks=(_chunk_rows(column), *column.shape[1:]),
                    compressors=_codecs(),
                )
                if n:
                    array[...] = column
                arrays[key] = array
        group.update_attributes(
            {_COLUMNS_ATTR: list(data), _ROWS_ATTR: n, _COMMIT_ATTR: _commit_text(arrays, n, None)}
        )

    def _append_in_place(self, filename: str, data: dict[str, np.ndarray]) -> bool:
        """Write the rows after the committed rows, then record the new count.

        The count is recorded only after every column holds the new rows, so
        a kill part way leaves the store as it was.
        """
        k = count(data)
        with damage_on_error(filename):
            group = self._open(filename, "r+")
            arrays = self._arrays(group)
            n = self._rows(group, arrays, filename)
        # A store without rows takes its column types from the first rows; one
        # written before the commit record existed is rewritten once to get it.
        if not (n and group.attrs.get(_COMMIT_ATTR) and self._fits(arrays, data)):
            return False
        with _write_all_chunks():
            group = self._open(filename, "r+")
            arrays = self._arrays(group)
            for key, array in arrays.items():
                # Also drops rows an interrupted append left past n.
                if array.shape[0] != n + k:
                    array.resize((n + k, *array.shape[1:]))
                array[n : n + k] = data[key]
        # The commit point: one write of the group's attributes (attrs.update
        # would write them once per key).
        metadata = group.attrs.get(_METADATA_ATTR)
        group.update_attributes(
            {
                _ROWS_ATTR: n + k,
                _COMMIT_ATTR: _commit_text(arrays, n + k, dict(metadata) if metadata else None),
            }
        )
        return True

    def _write_metadata(self, path: str, metadata: dict[str, Any]) -> None:
        # zarr writes the group's attributes file by rename: old or new, never torn.
        group = self._open(path, "r+")
        update = {_METADATA_ATTR: metadata}
        if group.attrs.get(_COMMIT_ATTR) is not None:
            arrays = self._arrays(group)
            rows = self._rows(group, arrays, path)
            update[_COMMIT_ATTR] = _commit_text(arrays, rows, metadata)
        group.update_attributes(update)

    def _read_metadata(self, filename: str) -> dict[str, Any] | None:
        with damage_on_error(filename):
            group = self._open(os.fspath(filename), "r")
            self._rows(group, self._arrays(group), filename)
            value = group.attrs.get(_METADATA_ATTR)
        return dict(value) if value else None

    # -- reading -----------------------------------------------------------------

    def load_rows(self, filename: str, start: int, stop: int | None) -> dict[str, np.ndarray]:
        """Read rows ``start:stop`` only (of the committed rows)."""
        filename = os.fspath(filename)
        with damage_on_error(filename):
            group, root = self._open_at(filename, "r")
            arrays = self._arrays(group)
            start, stop = row_slice(start, stop, self._rows(group, arrays, filename))
            self._check_chunks(filename, root, group, arrays, start, stop)
            return {key: self._decode(array[start:stop]) for key, array in arrays.items()}

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read all columns, or only row ``row`` (one-element columns)."""
        return self._load_via_rows(filename, row)

    def count_rows(self, filename: str) -> int:
        """Count the committed rows from the metadata.

        Also checks the commit record and that the first chunk of each row
        range exists; a changed byte inside a chunk is found by the reads.
        """
        filename = os.fspath(filename)
        with damage_on_error(filename):
            group, root = self._open_at(filename, "r")
            arrays = self._arrays(group)
            rows = self._rows(group, arrays, filename)
            self._check_row_chunks(filename, root, group, arrays, rows)
            return rows

    @staticmethod
    def _check_row_chunks(filename: str, root: str, group, arrays: dict, rows: int) -> None:
        """Cheaply check that every chunk along the rows exists (one listing per column)."""
        if not rows or group.attrs.get(_COMMIT_ATTR) is None:
            return
        for i, (key, array) in enumerate(arrays.items()):
            prefix = array.metadata.encode_chunk_key((0,) * array.ndim).split("/")[: -array.ndim]
            try:
                names = set(os.listdir(os.path.join(root, f"c{i}", *prefix)))
            except FileNotFoundError:
                names = set()
            needed = math.ceil(rows / array.chunks[0])
            missing = [j for j in range(needed) if str(j) not in names]
            if missing:
                raise DamagedFileError(
                    f"{filename} is damaged: {len(missing)} chunk(s) of column {key!r} "
                    f"are missing (the first holds row {missing[0] * array.chunks[0]})"
                )
