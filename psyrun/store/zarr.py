"""ZarrStore: zarr v3 directory stores, one chunked array per column.

Each column is a compressed array chunked along rows; appends resize it and
write the new rows, so they cost what they add (plus the partial last chunk),
and row ranges are read chunk by chunk. Numeric, boolean and str columns are
supported (str as zarr's variable-length string type); anything else raises
``TypeError`` before the store is touched. Chunks that change a column's type
or per-row shape, or add or drop keys, make the store rewrite the columns
once with the merged data.
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
_CHUNK_BYTES = 1 << 18  # target size of one chunk before compression


def _zarr():
    return import_optional("zarr", "ZarrStore", "zarr>=3", "zarr")


def _chunk_rows(column: np.ndarray) -> int:
    row_bytes = max(1, column.dtype.itemsize if column.dtype.kind != "U" else 16)
    row_bytes *= int(np.prod(column.shape[1:], dtype=np.int64)) or 1
    return max(1, _CHUNK_BYTES // row_bytes)


class ZarrStore(Store):
    """Store results in a zarr v3 directory (``.zarr``)."""

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
        group.attrs[_COLUMNS_ATTR] = list(data)
        # Replace the old directory only once the new one is complete.
        if os.path.exists(filename):
            old = f"{filename}.old{os.getpid()}"
            os.replace(filename, old)
            os.replace(tmp, filename)
            shutil.rmtree(old)
        else:
            os.replace(tmp, filename)

    def _open(self, filename: str, mode: str):
        zarr = _zarr()
        if not os.path.isdir(filename):
            raise FileNotFoundError(f"no zarr store at {filename!r}")
        return zarr.open_group(filename, mode=mode, use_consolidated=False)

    # -- Store interface -------------------------------------------------------

    def save(self, filename: str, data: Mapping[str, Any]) -> None:
        """Write ``data`` to ``filename``, replacing any existing store."""
        filename, data = prepare_array_columns(filename, data, "ZarrStore")
        self._write_new(filename, data)

    def append(self, filename: str, data: Mapping[str, Any]) -> None:
        """Resize every column and write the rows of ``data`` (creates the store)."""
        filename, data = prepare_array_columns(filename, data, "ZarrStore")
        if not os.path.exists(filename):
            self._write_new(filename, data)
            return
        arrays = self._arrays(self._open(filename, "r+"))
        if self._fits(arrays, data):
            k = count(data)
            if k:
                for key, array in arrays.items():
                    n = array.shape[0]
                    array.resize((n + k, *array.shape[1:]))
                    array[n : n + k] = data[key]
            return
        merged = merge_chunks([self.load(filename), data])
        check_supported(merged, filename, "ZarrStore")
        self._write_new(filename, merged)

    def load_rows(self, filename: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """Read rows ``start:stop`` only."""
        arrays = self._arrays(self._open(os.fspath(filename), "r"))
        n = next(iter(arrays.values())).shape[0] if arrays else 0
        start, stop, _ = slice(start, stop).indices(n)
        stop = max(stop, start)
        return {key: self._decode(array[start:stop]) for key, array in arrays.items()}

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read all columns, or only row ``row`` (one-element columns)."""
        return load_by_rows(self, filename, row)

    def count_rows(self, filename: str) -> int:
        """Count the rows from the array metadata."""
        arrays = self._arrays(self._open(os.fspath(filename), "r"))
        return next(iter(arrays.values())).shape[0] if arrays else 0
