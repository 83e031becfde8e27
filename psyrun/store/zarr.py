"""ZarrStore: zarr v3 directory stores, one chunked array per column.

The layout is one a plain zarr or xarray reader understands: the root group
holds one array per column, named by the column (:func:`array_name` escapes
names a zarr array cannot have), with the dimension names xarray reads
(``row`` along the rows, then ``<column>_dim_1``, ``<column>_dim_2``, ... for
the axes of n-d values, or the names the task's ``dims`` setting gives in
the metadata). The group's attributes hold the column order
(``psyrun_columns``), the committed row count (``psyrun_rows``), the
metadata (``psyrun_metadata``, a JSON object) and the commit record; the
group also carries consolidated metadata, rewritten at every commit, so
``xarray.open_zarr(result)`` opens it in one read and sees exactly the
committed rows. Stores written before this layout (arrays ``c0``, ``c1``,
... in column order) are read as they are and rewritten once in this layout
by their next append.

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
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import numpy as np

from psyrun.atomic import atomic_write, remove_path, tmp_name
from psyrun.dims import ROW_DIM
from psyrun.exceptions import DamagedFileError
from psyrun.store.base import (
    DEFAULT_CHUNK_ROWS,
    Store,
    UnsupportedValueError,
    damage_on_error,
    disk_full_error,
    free_bytes,
)
from psyrun.store.columns import ARRAY_KINDS, count, fits_layout, row_slice

__all__ = ["ROW_DIM", "ZarrStore", "array_name", "column_name", "dimension_names"]


_COLUMNS_ATTR = "psyrun_columns"  # column names in order
_LAYOUT_ATTR = "psyrun_layout"  # "named": arrays named by column; absent: c0, c1, ...
_NAMED = "named"
_ROWS_ATTR = "psyrun_rows"  # rows committed by the last complete write
_METADATA_ATTR = "psyrun_metadata"  # the result's metadata (a JSON object)
_COMMIT_ATTR = "psyrun_commit"  # "<crc32 hex> <JSON: rows, columns, layout, metadata>"
# Size of one chunk before compression: the smallest for stores that start small
# (a single row read reads one chunk), up to the largest for stores written in big
# pieces (every chunk is a file, and each file costs a sync when the store is
# committed and an unlink when it is replaced).
_CHUNK_BYTES = 1 << 18
_MAX_CHUNK_BYTES = 1 << 21


#: Characters escaped anywhere in an array name: the escape itself, path
#: separators and control characters.
_ESCAPED = frozenset("%/\\") | frozenset(map(chr, [*range(0x20), 0x7F]))
#: The longest array name (in UTF-8 bytes) a directory entry can have.
_NAME_MAX = 255


def array_name(column: str) -> str:
    r"""Return the name of the zarr array that holds `column`.

    The name is the column's name, with these characters percent-escaped as
    ``%XX`` (their code in hex): ``%``, ``/``, ``\\`` and control characters
    anywhere; a leading ``.`` (hidden files, ``.``, ``..``); the first ``_``
    of a name starting with ``__`` (zarr reserves those); the ``z`` of a name
    that is ``zarr.json`` in any case (the group's own metadata file).
    :func:`column_name` (``urllib.parse.unquote``) reverses it.

    Examples
    --------
    >>> array_name('rate')
    'rate'
    >>> array_name('a/b %')
    'a%2Fb %25'
    >>> array_name('..'), array_name('__x')
    ('%2E.', '%5F_x')
    """
    escaped = "".join(f"%{ord(c):02X}" if c in _ESCAPED else c for c in column)
    if escaped.startswith((".", "__")) or escaped.lower() == "zarr.json":
        escaped = f"%{ord(escaped[0]):02X}{escaped[1:]}"
    return escaped


def column_name(name: str) -> str:
    """Return the column an array named `name` holds (the inverse of :func:`array_name`).

    Examples
    --------
    >>> column_name('a%2Fb %25')
    'a/b %'
    """
    return unquote(name)


def dimension_names(
    column: str, ndim: int, dims: Mapping[str, Sequence[str]] | None = None
) -> list[str]:
    """Return the dimension names of the array of `column` with `ndim` axes.

    ``row`` first, then the names `dims` gives the column's value axes
    (when they are `ndim` - 1 distinct str other than ``row``), else
    ``<column>_dim_1``, ``<column>_dim_2``, ...

    Examples
    --------
    >>> dimension_names('hist', 2)
    ['row', 'hist_dim_1']
    >>> dimension_names('hist', 2, {'hist': ['bin']})
    ['row', 'bin']
    """
    names = (dims or {}).get(column)
    if _fitting_names(names, ndim - 1):
        return [ROW_DIM, *names]
    return [ROW_DIM, *(f"{column}_dim_{i}" for i in range(1, ndim))]


def _fitting_names(names: Any, n: int) -> bool:
    return (
        isinstance(names, (list, tuple))
        and len(names) == n
        and all(isinstance(name, str) and name and name != ROW_DIM for name in names)
        and len(set(names)) == n
    )


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


def _array_dir(root: str, array) -> str:
    """Return the directory of `array` in the store at `root`."""
    return os.path.join(root, *array.path.split("/"))


def _consolidate(path: str) -> None:
    """Write the group's consolidated metadata (every array's metadata, in one file).

    With it, xarray and zarr open the store in one read and without a
    warning, and see the arrays' shapes of the last commit: the commit
    (a write of the group's attributes) drops the consolidated metadata,
    which is written again right after it, so it is never older than the
    commit. Failing to write it loses nothing (readers then read each
    array's own metadata); the commit stands, so the error is not raised.
    """
    import zarr

    try:
        with warnings.catch_warnings():
            # zarr v3 calls consolidated metadata not yet part of the specification.
            warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
            zarr.consolidate_metadata(path, zarr_format=3)
    except Exception:
        pass


def _name_dimensions(root: str, arrays: dict[str, Any], dims: Any) -> None:
    """Set the dimension names of the arrays as `dims` (``{column: [names]}``) gives them.

    A name a column shares with another column of another length, or with
    a column, is left at its default (``<column>_dim_<i>``): xarray could
    not open the store otherwise. The task's ``dims`` setting is checked
    when the task loads and by ``psy test``; this only keeps a bad one from
    spoiling the file.
    """
    if not isinstance(dims, Mapping):
        dims = {}
    sizes: dict[str, int] = {}
    wanted = {}
    for key, array in arrays.items():
        names = dimension_names(key, array.ndim, dims)
        clash = any(
            name in arrays or sizes.get(name, size) != size
            for name, size in zip(names[1:], array.shape[1:])
        )
        if clash:
            names = dimension_names(key, array.ndim)
        sizes.update(zip(names[1:], array.shape[1:]))
        wanted[key] = names
    for key, array in arrays.items():
        if list(array.metadata.dimension_names or ()) == wanted[key]:
            continue
        # zarr has no call to rename dimensions: rewrite the array's zarr.json
        # (the zarr v3 format), atomically, as zarr writes it.
        path = os.path.join(_array_dir(root, array), "zarr.json")
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
        document["dimension_names"] = wanted[key]
        with atomic_write(path) as f:
            json.dump(document, f, indent=2)


#: From this many row chunks on, checking that they exist lists their directory.
_LIST_CHUNKS = 16


def _missing_row_chunks(root: str, array, first: int, stop: int) -> list[int]:
    """Return the row chunks ``first:stop`` of `array` that have no entry on disk.

    One listing of the directory of the row chunks: their chunk files (1-d
    arrays) or the directories of their chunks (n-d arrays).
    """
    prefix = array.metadata.encode_chunk_key((0,) * array.ndim).split("/")[: -array.ndim]
    try:
        names = set(os.listdir(os.path.join(_array_dir(root, array), *prefix)))
    except FileNotFoundError:
        names = set()
    return [j for j in range(first, stop) if str(j) not in names]


def _write_all_chunks():
    """Make zarr write chunks that hold only the fill value (a missing one is then damage)."""
    import zarr

    return zarr.config.set({"array.write_empty_chunks": True})


def _chunk_rows(column: np.ndarray) -> int:
    row_bytes = max(1, column.dtype.itemsize if column.dtype.kind != "U" else 16)
    row_bytes *= int(np.prod(column.shape[1:], dtype=np.int64)) or 1
    # As large as the first write (up to the largest size): later writes are alike.
    target = min(max(_CHUNK_BYTES, row_bytes * len(column)), _MAX_CHUNK_BYTES)
    return max(1, target // row_bytes)


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
    appends_survive_kill = True

    # -- helpers -------------------------------------------------------------

    def _check_columns(self, data: dict[str, np.ndarray]) -> None:
        """Also refuse column names no array can have (see :func:`array_name`)."""
        super()._check_columns(data)
        for key in data:
            if not key:
                raise UnsupportedValueError(
                    "ZarrStore cannot hold a column without a name (''): every column "
                    "is a zarr array named by it. Give the output a name, or use "
                    "PickleStore or NpzStore.",
                    key,
                )
            if len(array_name(key).encode("utf-8", "surrogatepass")) > _NAME_MAX:
                raise UnsupportedValueError(
                    f"ZarrStore cannot hold the column {key[:40]!r}... : its name is longer "
                    f"than the {_NAME_MAX} bytes a zarr array's directory name may have. "
                    "Use a shorter name, or PickleStore or NpzStore.",
                    key,
                )

    @staticmethod
    def _arrays(group) -> dict[str, Any]:
        names = group.attrs.get(_COLUMNS_ATTR, [])
        if group.attrs.get(_LAYOUT_ATTR) == _NAMED:
            return {name: group[array_name(name)] for name in names}
        # The layout before arrays were named by their columns.
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
        for column, array in arrays.items():
            first, last = start // array.chunks[0], (stop - 1) // array.chunks[0]
            if array.ndim == 1 and last - first >= _LIST_CHUNKS:
                # Many chunks (a whole load): one listing instead of a stat per chunk.
                missing = _missing_row_chunks(root, array, first, last + 1)
                if missing:
                    key = array.metadata.encode_chunk_key((missing[0],))
                    raise DamagedFileError(
                        f"{filename} is damaged: chunk {key} of column {column!r} is missing"
                    )
                continue
            grid = [math.ceil(s / c) for s, c in zip(array.shape[1:], array.chunks[1:])]
            inner = [()]
            for n in grid:
                inner = [(*t, j) for t in inner for j in range(n)]
            for row_chunk in range(first, last + 1):
                for rest in inner:
                    key = array.metadata.encode_chunk_key((row_chunk, *rest))
                    chunk = os.path.join(_array_dir(root, array), *key.split("/"))
                    if not os.path.exists(chunk):
                        raise DamagedFileError(
                            f"{filename} is damaged: chunk {key} of column {column!r} is missing"
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
            for key, column in data.items():
                array = group.create_array(
                    array_name(key),
                    shape=column.shape,
                    dtype=str if column.dtype.kind == "U" else column.dtype,
                    chunks=(_chunk_rows(column), *column.shape[1:]),
                    compressors=_codecs(),
                    dimension_names=dimension_names(key, column.ndim),
                )
                if n:
                    array[...] = column
                arrays[key] = array
        group.update_attributes(
            {
                _LAYOUT_ATTR: _NAMED,
                _COLUMNS_ATTR: list(data),
                _ROWS_ATTR: n,
                _COMMIT_ATTR: _commit_text(arrays, n, None),
            }
        )
        _consolidate(path)

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
        # written before the commit record or the named arrays existed is
        # rewritten once to get them.
        if not (
            n
            and group.attrs.get(_COMMIT_ATTR)
            and group.attrs.get(_LAYOUT_ATTR) == _NAMED
            and self._fits(arrays, data)
        ):
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
        _consolidate(filename)
        return True

    def _write_metadata(self, path: str, metadata: dict[str, Any]) -> None:
        # zarr writes the group's attributes file by rename: old or new, never torn.
        group, root = self._open_at(path, "r+")
        update = {_METADATA_ATTR: metadata}
        arrays = self._arrays(group)
        if group.attrs.get(_LAYOUT_ATTR) == _NAMED:
            # The names of the value axes come with the metadata (the task's dims).
            _name_dimensions(root, arrays, metadata.get("dims"))
        if group.attrs.get(_COMMIT_ATTR) is not None:
            rows = self._rows(group, arrays, path)
            update[_COMMIT_ATTR] = _commit_text(arrays, rows, metadata)
        group.update_attributes(update)
        _consolidate(root)

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

    def iter_chunks(
        self, filename: str, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield the committed rows in order, `chunk_rows` at a time (the store opened once)."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        filename = os.fspath(filename)
        with damage_on_error(filename):
            group, root = self._open_at(filename, "r")
            arrays = self._arrays(group)
            rows = self._rows(group, arrays, filename)
            for start in range(0, rows, chunk_rows):
                stop = min(start + chunk_rows, rows)
                self._check_chunks(filename, root, group, arrays, start, stop)
                yield {key: self._decode(array[start:stop]) for key, array in arrays.items()}

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
        for key, array in arrays.items():
            missing = _missing_row_chunks(root, array, 0, math.ceil(rows / array.chunks[0]))
            if missing:
                raise DamagedFileError(
                    f"{filename} is damaged: {len(missing)} chunk(s) of column {key!r} "
                    f"are missing (the first holds row {missing[0] * array.chunks[0]})"
                )
