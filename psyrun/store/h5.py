"""H5Store: HDF5 files through PyTables, one extendable array per column.

Appends extend each column's ``EArray`` along its first axis, so they cost
what they add, and single rows or row ranges are read without loading the
file. Numeric, boolean and string (stored as UTF-8 bytes) columns are
supported; anything else raises ``TypeError`` before the file is touched.
A chunk that changes a column's type or per-row shape, adds or drops keys, or
has longer strings than the column holds makes the store rewrite the file
once with the merged columns.
"""

from __future__ import annotations

import os
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

__all__ = ["H5Store"]

_COLUMNS_ATTR = "psyrun_columns"  # column names in order; nodes are named c0, c1, ...
_STRING_ATTR = "psyrun_utf8"  # set on nodes that hold encoded str


def _tables():
    return import_optional("tables", "H5Store", "PyTables", "h5")


def _encode(column: np.ndarray) -> np.ndarray:
    if column.dtype.kind == "U":
        encoded = np.char.encode(column, "utf-8")
        return encoded if encoded.dtype.itemsize else encoded.astype("S1")
    return column


class H5Store(Store):
    """Store results in an HDF5 file (``.h5``) with PyTables."""

    ext = ".h5"
    supports_row_range = True
    supports_chunks = True
    supports_row_count = True

    def __init__(self, complevel: int = 0, complib: str = "zlib") -> None:
        self.complevel = complevel
        self.complib = complib

    def __repr__(self) -> str:
        return f"H5Store(complevel={self.complevel}, complib={self.complib!r})"

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _nodes(h5file) -> dict[str, Any]:
        root = h5file.root
        names = list(root._v_attrs[_COLUMNS_ATTR]) if _COLUMNS_ATTR in root._v_attrs else []
        return {name: getattr(root, f"c{i}") for i, name in enumerate(names)}

    @staticmethod
    def _decode(node, values: np.ndarray) -> np.ndarray:
        if _STRING_ATTR in node.attrs:
            return np.char.decode(values, "utf-8")
        return values

    def _fits(self, nodes: dict, data: dict[str, np.ndarray]) -> bool:
        if set(nodes) != set(data):
            return False
        for key, node in nodes.items():
            column = data[key]
            if tuple(node.shape[1:]) != column.shape[1:]:
                return False
            stored = node.atom.dtype.base
            if _STRING_ATTR in node.attrs:
                if column.dtype.kind != "U" or _encode(column).dtype.itemsize > stored.itemsize:
                    return False
            elif column.dtype.kind == "U" or common_dtype([stored, column.dtype]) != stored:
                return False
        return True

    def _write_new(self, filename: str, data: dict[str, np.ndarray]) -> None:
        tables = _tables()
        tmp = f"{filename}.tmp{os.getpid()}.h5"
        filters = tables.Filters(complevel=self.complevel, complib=self.complib)
        n = count(data)
        with tables.open_file(tmp, "w") as h5file:
            h5file.root._v_attrs[_COLUMNS_ATTR] = list(data)
            for i, column in enumerate(data.values()):
                values = _encode(column)
                node = h5file.create_earray(
                    h5file.root,
                    f"c{i}",
                    atom=tables.Atom.from_dtype(values.dtype.base),
                    shape=(0, *values.shape[1:]),
                    filters=filters,
                    expectedrows=max(n, 1000),
                )
                if column.dtype.kind == "U":
                    node.attrs[_STRING_ATTR] = True
                if n:
                    node.append(values)
        os.replace(tmp, filename)

    # -- Store interface -------------------------------------------------------

    def save(self, filename: str, data: Mapping[str, Any]) -> None:
        """Write ``data`` to ``filename`` (temporary file, then rename)."""
        filename, data = prepare_array_columns(filename, data, "H5Store")
        self._write_new(filename, data)

    def append(self, filename: str, data: Mapping[str, Any]) -> None:
        """Extend every column by the rows of ``data`` (creates the file if missing)."""
        filename, data = prepare_array_columns(filename, data, "H5Store")
        if not os.path.exists(filename):
            self._write_new(filename, data)
            return
        if count(data) == 0:
            # No rows: nothing to add (and no column may change type because of it).
            return
        tables = _tables()
        with tables.open_file(filename, "a") as h5file:
            nodes = self._nodes(h5file)
            rows = next(iter(nodes.values())).nrows if nodes else 0
            # A file without rows takes its column types from the first rows.
            if rows and self._fits(nodes, data):
                for key, node in nodes.items():
                    node.append(_encode(data[key]))
                return
        merged = merge_chunks([self.load(filename), data])
        check_supported(merged, filename, "H5Store")
        self._write_new(filename, merged)

    def load_rows(self, filename: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """Read rows ``start:stop`` only."""
        tables = _tables()
        with tables.open_file(filename, "r") as h5file:
            nodes = self._nodes(h5file)
            n = next(iter(nodes.values())).nrows if nodes else 0
            start, stop, _ = slice(start, stop).indices(n)
            stop = max(stop, start)
            return {key: self._decode(node, node[start:stop]) for key, node in nodes.items()}

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read all columns, or only row ``row`` (one-element columns)."""
        return load_by_rows(self, filename, row)

    def count_rows(self, filename: str) -> int:
        """Count the rows from the array metadata."""
        tables = _tables()
        with tables.open_file(filename, "r") as h5file:
            nodes = self._nodes(h5file)
            return int(next(iter(nodes.values())).nrows) if nodes else 0
