"""H5Store: HDF5 files through PyTables, one extendable array per column.

Appends extend each column's ``EArray`` along its first axis, so they cost
what they add, and single rows or row ranges are read without loading the
file. Numeric, boolean and string (stored as UTF-8 bytes) columns are
supported; anything else raises
:class:`~psyrun.store.base.UnsupportedValueError` before the file is touched.
A chunk that changes a column's type or per-row shape, adds or drops keys, or
has longer strings than the column holds makes the store rewrite the file
once with the merged columns.

Damage: files this version writes keep a checksum of every block of 32768
rows of every column (the sum, modulo 2**64, of its bytes read as 64-bit
words: computed at memory speed, where HDF5's own Fletcher-32 filter made
loading three times slower) in the array ``psyrun_sums``, one row per
complete block, and a commit record on the root group: the row count, each
column's type and per-row shape, the checksums of the last, partial block,
and a CRC-32 of the record itself, written after the rows. Complete blocks
never change, so an append adds their checksums and replaces only the
record. Readers take the row count from the record (rows past it belong to
an append that did not finish, and the next append drops them) and check
every block they read; a record that fails its CRC, a column missing or of
another type, fewer rows than recorded or a block that fails its checksum
raise
:class:`~psyrun.exceptions.DamagedFileError`. Files written before the
record existed read as before. An append first checks that the disk has
room for it (HDF5 can damage a file it fails to extend), and a full disk
raises ``OSError(ENOSPC)`` naming the file.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import numpy as np

from psyrun.exceptions import DamagedFileError
from psyrun.store.base import Store, damage_on_error, disk_full_error, free_bytes
from psyrun.store.columns import ARRAY_KINDS, count, fits_layout, row_slice

__all__ = ["H5Store"]

_COLUMNS_ATTR = "psyrun_columns"  # column names in order; nodes are named c0, c1, ...
_STRING_ATTR = "psyrun_utf8"  # set on nodes that hold encoded str
_METADATA_ATTR = "psyrun_metadata"  # JSON text of the result's metadata, on the root
_COMMIT_ATTR = "psyrun_commit"  # "<crc32 hex> <JSON: rows, columns, layout>", on the root
_MARGIN = 1 << 18  # room HDF5 needs beyond the chunks for its own records
_SUMS = "psyrun_sums"  # checksums of the complete blocks: (blocks, columns) uint64
_BLOCK = 32768  # rows per checksummed block


def _block_sum(values: np.ndarray) -> int:
    """Return the sum modulo 2**64 of the bytes of `values` as little-endian words."""
    raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    n = raw.size // 8
    total = int(np.add.reduce(raw[: n * 8].view("<u8"), dtype=np.uint64)) if n else 0
    return (total + int.from_bytes(raw[n * 8 :].tobytes().ljust(8, b"\0"), "little")) % 2**64


def _block_sums(columns: list[np.ndarray]) -> tuple[list[list[int]], list[int]]:
    """Return the checksums of the complete blocks and of the partial last block.

    The columns start at a block boundary.
    """
    n = len(columns[0]) if columns else 0
    full = n // _BLOCK
    complete = [
        [_block_sum(c[b * _BLOCK : (b + 1) * _BLOCK]) for c in columns] for b in range(full)
    ]
    return complete, [_block_sum(c[full * _BLOCK :]) for c in columns]


def _commit_text(names: list[str], rows: int, nodes: list, partial: list[int]) -> str:
    layout = [[node.atom.dtype.base.str, [int(d) for d in node.shape[1:]]] for node in nodes]
    record = {"rows": rows, "columns": names, "layout": layout, "block": _BLOCK}
    text = json.dumps({**record, "partial": [str(s) for s in partial]})
    return f"{zlib.crc32(text.encode()):08x} {text}"


def _parse_commit(filename: str, value: Any) -> dict:
    crc, _, text = str(value).partition(" ")
    if f"{zlib.crc32(text.encode()):08x}" != crc:
        raise DamagedFileError(f"{filename} is damaged: its commit record fails its checksum")
    return json.loads(text)


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
    text_encoding = "utf-8"
    supports_row_range = True
    supports_chunks = True
    supports_row_count = True
    supports_metadata = True

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

    @classmethod
    def _committed(cls, h5file, filename: str) -> tuple[dict[str, Any], int]:
        """Return the columns and the committed row count, checked against the commit record."""
        nodes, rows, _ = cls._commit(h5file, filename)
        return nodes, rows

    @classmethod
    def _commit(cls, h5file, filename: str) -> tuple[dict[str, Any], int, dict | None]:
        """Return the columns, the committed row count and the commit record (None: none)."""
        nodes = cls._nodes(h5file)
        root = h5file.root
        if _COMMIT_ATTR not in root._v_attrs:
            # Only files written before the record existed lack it; they have
            # no checksums, and name the columns they hold.
            if _SUMS in root or (not nodes and root._v_nchildren):
                raise DamagedFileError(f"{filename} is damaged: its commit record is missing")
            return nodes, (int(next(iter(nodes.values())).nrows) if nodes else 0), None
        commit = _parse_commit(filename, root._v_attrs[_COMMIT_ATTR])
        rows = int(commit["rows"])
        layout = [[n.atom.dtype.base.str, [int(d) for d in n.shape[1:]]] for n in nodes.values()]
        if (
            commit["columns"] != list(nodes)
            or commit["layout"] != layout
            or commit.get("block") != _BLOCK
            or len(commit["partial"]) != len(nodes)
        ):
            raise DamagedFileError(
                f"{filename} is damaged: its columns differ from those its commit record names"
            )
        for key, node in nodes.items():
            if node.nrows < rows:
                raise DamagedFileError(
                    f"{filename} is damaged: column {key!r} holds {node.nrows} of the "
                    f"{rows} rows its commit record names"
                )
        if nodes and (_SUMS not in root or getattr(root, _SUMS).nrows < rows // _BLOCK):
            raise DamagedFileError(f"{filename} is damaged: the checksums of its rows are missing")
        return nodes, rows, commit

    @staticmethod
    def _read_checked(h5file, filename, nodes, rows, commit, start, stop) -> dict:
        """Read rows ``start:stop`` of every column, checking the blocks they lie in."""
        if commit is None or stop <= start or not nodes:
            return {key: node[start:stop] for key, node in nodes.items()}
        first, last = start // _BLOCK, (stop - 1) // _BLOCK
        lo, hi = first * _BLOCK, min((last + 1) * _BLOCK, rows)
        complete = rows // _BLOCK
        stored = getattr(h5file.root, _SUMS)[first : min(last + 1, complete)]
        partial = [int(s) for s in commit["partial"]]
        values = {}
        for j, (key, node) in enumerate(nodes.items()):
            out = np.empty((hi - lo, *node.shape[1:]), dtype=node.atom.dtype.base)
            # Block by block: each is summed while it is still in the cache.
            for b in range(first, last + 1):
                a, z = b * _BLOCK, min((b + 1) * _BLOCK, rows)
                node.read(a, z, out=out[a - lo : z - lo])
                want = int(stored[b - first][j]) if b < complete else partial[j]
                if _block_sum(out[a - lo : z - lo]) != want:
                    raise DamagedFileError(
                        f"{filename} is damaged: rows {a} to {z} of column {key!r} "
                        "do not match their checksum"
                    )
            values[key] = out[start - lo : stop - lo]
        return values

    @staticmethod
    def _room_needed(nodes: dict[str, Any], rows: int, k: int) -> int:
        """Bytes an append of `k` rows may take (whole chunks, HDF5's records): an upper bound."""
        needed = _MARGIN
        for node in nodes.values():
            chunk_rows = node.chunkshape[0]
            chunk_bytes = math.prod(node.chunkshape) * node.atom.dtype.base.itemsize
            chunks = math.ceil((rows + k) / chunk_rows) - math.ceil(rows / chunk_rows) + 1
            needed += chunks * chunk_bytes + 4096
        return needed

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
        # HDF5 can report success for a file it could not finish on a full disk.
        needed = _MARGIN + sum(2 * v.nbytes + (1 << 16) for v in data.values())
        free = free_bytes(path)
        if free is not None and free < needed:
            raise disk_full_error(path, free, needed)
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
            nodes = list(self._nodes(h5file).values())
            stored = [
                np.asarray(_encode(c), dtype=nd.atom.dtype.base)
                for c, nd in zip(data.values(), nodes)
            ]
            complete, partial = _block_sums(stored)
            if nodes:
                sums = h5file.create_earray(
                    h5file.root,
                    _SUMS,
                    atom=tables.UInt64Atom(),
                    shape=(0, len(nodes)),
                    expectedrows=max(n // _BLOCK, 100),
                )
                if complete:
                    sums.append(np.array(complete, dtype=np.uint64))
            h5file.root._v_attrs[_COMMIT_ATTR] = _commit_text(list(data), n, nodes, partial)
        self._check_written(path, n)

    def _check_written(self, path: str, rows: int) -> None:
        """Open the file just written and check its commit record (HDF5 may fail silently)."""
        if self.count_rows(path) != rows:
            raise DamagedFileError(f"{path}: the file just written does not hold its rows")

    def _append_in_place(self, filename: str, data: dict[str, np.ndarray]) -> bool:
        """Extend every column's array by the new rows."""
        tables = self.preload()
        with damage_on_error(filename), tables.open_file(filename, "r") as h5file:
            nodes, rows, commit = self._commit(h5file, filename)
            # A file without rows takes its column types from the first rows;
            # a file without a commit record is rewritten once to get one.
            if not (commit and rows and self._fits(nodes, data)):
                return False
            needed = self._room_needed(nodes, rows, count(data))
            # The partial last block is checksummed again with the new rows:
            # check it first, so that no damage gets a new checksum.
            head = rows - rows % _BLOCK
            old = self._read_checked(h5file, filename, nodes, rows, commit, head, rows)
        free = free_bytes(filename)
        if free is not None and free < needed:
            raise disk_full_error(filename, free, needed)
        with tables.open_file(filename, "a") as h5file:
            nodes = self._nodes(h5file)
            combined = []
            for key, node in nodes.items():
                if node.nrows > rows:
                    node.truncate(rows)  # what an append that did not finish left
                new = np.asarray(_encode(data[key]), dtype=node.atom.dtype.base)
                node.append(new)
                combined.append(np.concatenate([old[key], new]))
            complete, partial = _block_sums(combined)
            sums = getattr(h5file.root, _SUMS)
            if sums.nrows > rows // _BLOCK:
                sums.truncate(rows // _BLOCK)  # not committed: an append that did not finish
            if complete:
                sums.append(np.array(complete, dtype=np.uint64))
            h5file.flush()
            # The commit: the record names the new rows last.
            h5file.root._v_attrs[_COMMIT_ATTR] = _commit_text(
                list(nodes), rows + count(data), list(nodes.values()), partial
            )
        self._check_written(filename, rows + count(data))
        return True

    def _write_metadata(self, path: str, metadata: dict[str, Any]) -> None:
        free = free_bytes(path)
        if free is not None and free < _MARGIN:
            raise disk_full_error(path, free, _MARGIN)
        with self.preload().open_file(path, "a") as h5file:
            h5file.root._v_attrs[_METADATA_ATTR] = json.dumps(metadata)

    def _read_metadata(self, filename: str) -> dict[str, Any] | None:
        tables = self.preload()
        with damage_on_error(filename), tables.open_file(filename, "r") as h5file:
            attrs = h5file.root._v_attrs
            if _METADATA_ATTR not in attrs:
                return None
            return json.loads(str(attrs[_METADATA_ATTR]))

    # -- reading -----------------------------------------------------------------

    def load_rows(self, filename: str, start: int, stop: int | None) -> dict[str, np.ndarray]:
        """Read rows ``start:stop`` only."""
        tables = self.preload()
        with damage_on_error(filename), tables.open_file(filename, "r") as h5file:
            nodes, n, commit = self._commit(h5file, filename)
            start, stop = row_slice(start, stop, n)
            values = self._read_checked(h5file, filename, nodes, n, commit, start, stop)
            return {key: self._decode(nodes[key], v) for key, v in values.items()}

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read all columns, or only row ``row`` (one-element columns)."""
        return self._load_via_rows(filename, row)

    def count_rows(self, filename: str) -> int:
        """Count the rows from the commit record (checked against the arrays)."""
        tables = self.preload()
        with damage_on_error(filename), tables.open_file(filename, "r") as h5file:
            return self._committed(h5file, filename)[1]
