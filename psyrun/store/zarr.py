"""ZarrStore: zarr v3 directory stores, one chunked array per column.

Each column is a compressed array chunked along rows; appends resize it and
write the new rows, so they cost what they add (plus the partial last chunk),
and row ranges are read chunk by chunk. Numeric, boolean and str columns are
supported (str as zarr's variable-length string type); anything else raises
``TypeError`` before the store is touched. Chunks that change a column's type
or per-row shape, or add or drop keys, make the store rewrite the columns
once with the merged data.

Appends are crash-consistent: the columns are resized and written first and
the number of complete rows is recorded in the group attributes last (zarr
writes each metadata and chunk file atomically, by rename). Readers use that
count and ignore rows past it, and the next append overwrites them, so a
process killed during an append loses at most the rows it was appending.
Stores written before the count was recorded read as many rows as their
shortest column has.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from psyrun.store.base import Store
from psyrun.store.columns import (
    check_supported,
    common_dtype,
    count,
    import_optional,
    load_by_rows,
    merge_chunks,
    prepare_array_columns,
)

__all__ = ["ZarrStore"]

_COLUMNS_ATTR = "psyrun_columns"  # column names in order; arrays are named c0, c1, ...
_ROWS_ATTR = "psyrun_rows"  # rows committed by the last complete write
_CHUNK_BYTES = 1 << 18  # target size of one chunk before compression


def _zarr():
    return import_optional("zarr", "ZarrStore", "zarr>=3", "zarr")


def _chunk_rows(column: np.ndarray) -> int:
    row_bytes = max(1, column.dtype.itemsize if column.dtype.kind != "U" else 16)
    row_bytes *= int(np.prod(column.shape[1:], dtype=np.int64)) or 1
    return max(1, _CHUNK_BYTES // row_bytes)


class ZarrStore(Store):
    """Store results in a zarr v3 directory (``.zarr``).

    Appends record the number of complete rows last, so an append killed
    part way leaves the store as it was before it; readers ignore the rows
    it had written and the next :meth:`append` overwrites them.
    """

    ext = ".zarr"
    supports_row_range = True
    supports_chunks = True
    supports_row_count = True

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _arrays(group) -> dict[str, Any]:
        names = group.attrs.get(_COLUMNS_ATTR, [])
        return {name: group[f"c{i}"] for i, name in enumerate(names)}

    @staticmethod
    def _rows(group, arrays: dict[str, Any]) -> int:
        """Return the number of committed rows (rows past it belong to an interrupted append)."""
        stored = min((array.shape[0] for array in arrays.values()), default=0)
        committed = group.attrs.get(_ROWS_ATTR)
        # Stores written before the count was recorded: trust the shortest column.
        return stored if committed is None else min(int(committed), stored)

    @staticmethod
    def _decode(values: np.ndarray) -> np.ndarray:
        # zarr hands strings back as StringDType; the stores promise U arrays.
        if values.dtype.kind == "T":
            width = max(map(len, values.flat), default=0)
            return values.astype(f"U{max(width, 1)}")
        return values

    @staticmethod
    def _fits(arrays: dict, data: dict[str, np.ndarray]) -> bool:
        if set(arrays) != set(data):
            return False
        for key, array in arrays.items():
            column = data[key]
            if tuple(array.shape[1:]) != column.shape[1:]:
                return False
            stored = np.dtype(array.dtype)
            if stored.kind == "T":
                if column.dtype.kind != "U":
                    return False
            elif column.dtype.kind == "U" or common_dtype([stored, column.dtype]) != stored:
                return False
        return True

    def _write_new(self, filename: str, data: dict[str, np.ndarray]) -> None:
        zarr = _zarr()
        tmp = f"{filename}.tmp{os.getpid()}"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        group = zarr.open_group(tmp, mode="w")
        n = count(data)
        for i, column in enumerate(data.values()):
            array = group.create_array(
                f"c{i}",
                shape=column.shape,
                dtype=str if column.dtype.kind == "U" else column.dtype,
                chunks=(_chunk_rows(column), *column.shape[1:]),
            )
            if n:
                array[...] = column
        group.attrs.update({_COLUMNS_ATTR: list(data), _ROWS_ATTR: n})
        # Replace the old directory only once the new one is complete; a kill
        # between the two renames is finished by _interrupted_rewrite.
        if os.path.exists(filename):
            old = f"{filename}.old{os.getpid()}"
            os.replace(filename, old)
            os.replace(tmp, filename)
            shutil.rmtree(old)
        else:
            os.replace(tmp, filename)

    @staticmethod
    def _interrupted_rewrite(filename: str) -> tuple[str, str] | None:
        """Return the ``(new, old)`` directories of a rewrite killed between its two renames.

        The new directory was complete before the first rename, so it holds
        the store; None when ``filename`` exists or no such pair is left.
        """
        if os.path.exists(filename):
            return None
        parent, base = os.path.split(os.path.abspath(filename))
        try:
            names = os.listdir(parent)
        except FileNotFoundError:
            return None
        for name in sorted(names):
            pid = name[len(base) + 4 :]
            if name.startswith(f"{base}.old") and pid.isdigit() and f"{base}.tmp{pid}" in names:
                return os.path.join(parent, f"{base}.tmp{pid}"), os.path.join(parent, name)
        return None

    def _open(self, filename: str, mode: str):
        zarr = _zarr()
        if not os.path.isdir(filename):
            pair = self._interrupted_rewrite(filename)
            if pair is None:
                raise FileNotFoundError(f"no zarr store at {filename!r}")
            if mode == "r":
                filename = pair[0]  # readers leave the repair to the next append
            else:
                os.replace(pair[0], filename)
                shutil.rmtree(pair[1])
        return zarr.open_group(filename, mode=mode, use_consolidated=False)

    # -- Store interface -------------------------------------------------------

    def save(self, filename: str, data: Mapping[str, Any]) -> None:
        """Write ``data`` to ``filename``, replacing any existing store."""
        filename, data = prepare_array_columns(filename, data, "ZarrStore")
        self._write_new(filename, data)

    def append(self, filename: str, data: Mapping[str, Any]) -> None:
        """Write the rows of ``data`` after the committed rows (creates the store).

        The new row count is recorded only after every column holds the new
        rows, so a kill part way leaves the store as it was.
        """
        filename, data = prepare_array_columns(filename, data, "ZarrStore")
        if not os.path.exists(filename) and self._interrupted_rewrite(filename) is None:
            self._write_new(filename, data)
            return
        k = count(data)
        if k == 0:
            # No rows: nothing to add (and no column may change type because of it).
            return
        group = self._open(filename, "r+")
        arrays = self._arrays(group)
        n = self._rows(group, arrays)
        # A store without rows takes its column types from the first rows.
        if n and self._fits(arrays, data):
            for key, array in arrays.items():
                # Also drops rows an interrupted append left past n.
                if array.shape[0] != n + k:
                    array.resize((n + k, *array.shape[1:]))
                array[n : n + k] = data[key]
            group.attrs[_ROWS_ATTR] = n + k  # the commit point
            return
        merged = merge_chunks([self.load(filename), data])
        check_supported(merged, filename, "ZarrStore")
        self._write_new(filename, merged)

    def load_rows(self, filename: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """Read rows ``start:stop`` only (of the committed rows)."""
        group = self._open(os.fspath(filename), "r")
        arrays = self._arrays(group)
        n = self._rows(group, arrays)
        start, stop, _ = slice(start, stop).indices(n)
        stop = max(stop, start)
        return {key: self._decode(array[start:stop]) for key, array in arrays.items()}

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read all columns, or only row ``row`` (one-element columns)."""
        return load_by_rows(self, filename, row)

    def count_rows(self, filename: str) -> int:
        """Count the committed rows from the metadata."""
        group = self._open(os.fspath(filename), "r")
        return self._rows(group, self._arrays(group))
