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

import os
import re
from typing import Any

import numpy as np

from psyrun.atomic import remove_path, tmp_name
from psyrun.store.base import Store
from psyrun.store.columns import ARRAY_KINDS, count, fits_layout, row_slice

__all__ = ["ZarrStore"]

_COLUMNS_ATTR = "psyrun_columns"  # column names in order; arrays are named c0, c1, ...
_ROWS_ATTR = "psyrun_rows"  # rows committed by the last complete write
_CHUNK_BYTES = 1 << 18  # target size of one chunk before compression


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
        layout = {}
        for key, array in arrays.items():
            stored = np.dtype(array.dtype)
            layout[key] = (None if stored.kind == "T" else stored, array.shape[1:])
        return fits_layout(layout, data)

    def _open(self, filename: str, mode: str):
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
        return zarr.open_group(filename, mode=mode, use_consolidated=False)

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
        group = self.preload().open_group(path, mode="w")
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

    def _append_in_place(self, filename: str, data: dict[str, np.ndarray]) -> bool:
        """Write the rows after the committed rows, then record the new count.

        The count is recorded only after every column holds the new rows, so
        a kill part way leaves the store as it was.
        """
        k = count(data)
        group = self._open(filename, "r+")
        arrays = self._arrays(group)
        n = self._rows(group, arrays)
        # A store without rows takes its column types from the first rows.
        if not (n and self._fits(arrays, data)):
            return False
        for key, array in arrays.items():
            # Also drops rows an interrupted append left past n.
            if array.shape[0] != n + k:
                array.resize((n + k, *array.shape[1:]))
            array[n : n + k] = data[key]
        group.attrs[_ROWS_ATTR] = n + k  # the commit point
        return True

    # -- reading -----------------------------------------------------------------

    def load_rows(self, filename: str, start: int, stop: int | None) -> dict[str, np.ndarray]:
        """Read rows ``start:stop`` only (of the committed rows)."""
        group = self._open(os.fspath(filename), "r")
        arrays = self._arrays(group)
        start, stop = row_slice(start, stop, self._rows(group, arrays))
        return {key: self._decode(array[start:stop]) for key, array in arrays.items()}

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read all columns, or only row ``row`` (one-element columns)."""
        return self._load_via_rows(filename, row)

    def count_rows(self, filename: str) -> int:
        """Count the committed rows from the metadata."""
        group = self._open(os.fspath(filename), "r")
        return self._rows(group, self._arrays(group))
