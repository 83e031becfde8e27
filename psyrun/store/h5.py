"""H5Store: HDF5 files through PyTables, one extendable array per column.

Appends extend each column's ``EArray`` along its first axis, so they cost
what they add, and single rows or row ranges are read without loading the
file. Numeric, boolean and string (stored as UTF-8 bytes) columns are
supported; anything else raises
:class:`~psyrun.store.base.UnsupportedValueError` before the file is touched.
A chunk that changes a column's type or per-row shape, adds or drops keys, or
has longer strings than the column holds makes the store rewrite the file
once with the merged columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from psyrun.store.base import Store
from psyrun.store.columns import ARRAY_KINDS, count, fits_layout, row_slice

__all__ = ["H5Store"]

_COLUMNS_ATTR = "psyrun_columns"  # column names in order; nodes are named c0, c1, ...
_STRING_ATTR = "psyrun_utf8"  # set on nodes that hold encoded str


def _encode(column: np.ndarray) -> np.ndarray:
    if column.dtype.kind == "U":
        encoded = np.char.encode(column, "utf-8")
        return encoded if encoded.dtype.itemsize else encoded.astype("S1")
    return column


class H5Store(Store):
    """Store results in an HDF5 file (``.h5``) with PyTables."""

    ext = ".h5"
    library = "tables"
    requirement = "psyrun[h5]"
    column_kinds = ARRAY_KINDS
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

    @staticmethod
    def _fits(nodes: dict, data: dict[str, np.ndarray]) -> bool:
        layout = {
            key: (None if _STRING_ATTR in node.attrs else node.atom.dtype.base, node.shape[1:])
            for key, node in nodes.items()
        }

        def str_fits(key: str, column: np.ndarray) -> bool:
            # Strings are stored with a fixed width: longer ones need a rewrite.
            return _encode(column).dtype.itemsize <= nodes[key].atom.dtype.base.itemsize

        return fits_layout(layout, data, str_fits)

    # -- format-specific steps of save and append ------------------------------

    def _write_file(self, path: str, data: dict[str, np.ndarray]) -> None:
        tables = self.preload()
        filters = tables.Filters(complevel=self.complevel, complib=self.complib)
        n = count(data)
        with tables.open_file(path, "w") as h5file:
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

    def _append_in_place(self, filename: str, data: dict[str, np.ndarray]) -> bool:
        """Extend every column's array by the new rows."""
        with self.preload().open_file(filename, "a") as h5file:
            nodes = self._nodes(h5file)
            rows = next(iter(nodes.values())).nrows if nodes else 0
            # A file without rows takes its column types from the first rows.
            if not (rows and self._fits(nodes, data)):
                return False
            for key, node in nodes.items():
                node.append(_encode(data[key]))
        return True

    # -- reading -----------------------------------------------------------------

    def load_rows(self, filename: str, start: int, stop: int | None) -> dict[str, np.ndarray]:
        """Read rows ``start:stop`` only."""
        with self.preload().open_file(filename, "r") as h5file:
            nodes = self._nodes(h5file)
            n = next(iter(nodes.values())).nrows if nodes else 0
            start, stop = row_slice(start, stop, n)
            return {key: self._decode(node, node[start:stop]) for key, node in nodes.items()}

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read all columns, or only row ``row`` (one-element columns)."""
        return self._load_via_rows(filename, row)

    def count_rows(self, filename: str) -> int:
        """Count the rows from the array metadata."""
        with self.preload().open_file(filename, "r") as h5file:
            nodes = self._nodes(h5file)
            return int(next(iter(nodes.values())).nrows) if nodes else 0
