"""H5Store: HDF5 files through PyTables, one extendable array per column.

The layout (psyrun 0.8's, so that its readers keep working) is one dataset
per column under a group, ``/psyrun`` by default (the ``node`` argument),
named by the column: ``h5py.File(f)['psyrun/x'][:]`` is column ``x``. A
column name that cannot be an HDF5/PyTables node name is escaped by
:func:`node_name` (and read back by :func:`column_name`). Everything else
is a native HDF5 attribute: numbers, strings and JSON text, no pickles.
str columns are fixed-width UTF-8 strings (typed UTF-8, so that h5py's
``.asstr()`` gives ``str``, when h5py is installed; it comes with
``psyrun[h5]``), booleans HDF5 enums that h5py reads as ``bool`` (with
h5py; else PyTables' own boolean type).

Appends extend each column's ``EArray`` along its first axis, so they cost
what they add, and single rows or row ranges are read without loading the
file. A chunk that changes a column's type or per-row shape, adds or drops
keys, or has longer strings than the column holds makes the store rewrite
the file once with the merged columns.

Damage: a checksum of every block of 32768 rows of every column (the sum,
modulo 2**64, of its bytes read as 64-bit words, computed at memory speed)
is kept in the array ``<node>_checksums`` beside the group (outside it, so
that the group holds only columns), one row per complete block, and a
commit record in the group's attribute ``psyrun_commit``: the row count,
each column's type and per-row shape, the checksums of the last, partial
block, and a CRC-32 of the record itself, written after the rows. Complete
blocks never change, so an append adds their checksums and replaces only the
record. Readers take the row count from the record (rows past it belong to
an append that did not finish, and the next append drops them) and check
every block they read; a record that fails its CRC, a column missing or of
another type, fewer rows than recorded or a block that fails its checksum
raise :class:`~psyrun.exceptions.DamagedFileError`. An append first checks
that the disk has room for it (HDF5 can damage a file it fails to extend),
and a full disk raises ``OSError(ENOSPC)`` naming the file.

Older files load as they are: psyrun 0.8's (the same group of named
arrays, without any attribute of ours) and those of psyrun versions that
named the columns ``/c0``, ``/c1``, ... (names in a pickled attribute). The
first append to such a file rewrites it in the current layout, under a
temporary name that replaces the file only when complete, so a failed or
killed conversion leaves the old file as it was. Every rewrite copies what
else the file holds (other groups, such as another ``node=``'s result, and
the user's own data) into the new file.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import re
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

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

__all__ = ["H5Store", "column_name", "node_name"]

DEFAULT_NODE = "/psyrun"

# -- the current layout: attributes of the column group -------------------------------
_ORDER_ATTR = "psyrun_columns"  # JSON text: the column names in order
_ROWS_ATTR = "psyrun_rows"  # the committed row count (for readers without psyrun)
_COMMIT_ATTR = "psyrun_commit"  # "<crc32 hex> <JSON: rows, columns, layout, sums>"
_METADATA_ATTR = "psyrun_metadata"  # JSON text of the result's metadata
_NAME_ATTR = "psyrun_name"  # on every column: its name as JSON text (any str survives)
_SUMS_SUFFIX = "_checksums"  # the checksum array is the group's sibling <node>_checksums

# -- the layout of earlier versions (columns /c0, /c1, ..., attributes on the root) ----
_OLD_COLUMNS_ATTR = "psyrun_columns"  # a pickled list of names on the root
_OLD_STRING_ATTR = "psyrun_utf8"  # set on nodes that hold encoded str
_OLD_SUMS = "psyrun_sums"

# The file a rewrite replaces, while its successor is written: what else it holds
# (other stores' groups, the user's own data) is copied over.
_REPLACING: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "psyrun_h5_replacing", default=None
)

_MARGIN = 1 << 18  # room HDF5 needs beyond the chunks for its own records
_BLOCK = 32768  # rows per checksummed block
_BLOCKS_PER_READ = 8  # blocks read at once when checking

# -- column names as node names --------------------------------------------------------

_ESCAPED = re.compile(r"[%/\x00]")
_RESERVED = re.compile(r"^(\.|_[cfgvpi]_|__members__$)")
_UNESCAPE = re.compile(r"%([0-9A-F]{2})")


def node_name(column: str) -> str:
    """Return the node name that holds ``column`` in an HDF5 result.

    Names are kept as they are where HDF5 and PyTables allow them. Otherwise
    ``%``, ``/`` and NUL become ``%25``, ``%2F`` and ``%00``; a leading
    and a trailing ``.`` (so ``'.'`` and ``'..'``; PyTables loses nodes
    whose name ends in a dot) become ``%2E``; the first character of a name
    PyTables reserves (the prefixes ``_c_``, ``_f_``, ``_g_``, ``_v_``,
    ``_p_``, ``_i_``, and ``__members__``) becomes ``%5F``; and the empty
    name is ``%``. :func:`column_name` reverses it.

    Parameters
    ----------
    column
        A column name.

    Returns
    -------
    str
        The name of the column's dataset in the group.

    Examples
    --------
    >>> node_name('x'), node_name('a/b'), node_name('..'), node_name('')
    ('x', 'a%2Fb', '%2E%2E', '%')
    """
    if column == "":
        return "%"
    name = _ESCAPED.sub(lambda m: f"%{ord(m.group()):02X}", column)
    if _RESERVED.match(name):
        name = f"%{ord(name[0]):02X}{name[1:]}"
    if name.endswith("."):
        name = name[:-1] + "%2E"
    return name


def column_name(node: str) -> str:
    """Return the column name a node name of :func:`node_name` stands for.

    Examples
    --------
    >>> column_name('a%2Fb'), column_name('%2E%2E'), column_name('%')
    ('a/b', '..', '')
    """
    if node == "%":
        return ""
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), node)


@contextlib.contextmanager
def _natural_names_off() -> Iterator[None]:
    """Silence PyTables' warning that a node name is not a Python identifier."""
    import tables

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tables.NaturalNameWarning)
        yield


# -- checksums and the commit record ------------------------------------------------------


def _block_sum(values: np.ndarray) -> int:
    """Return the sum modulo 2**64 of the bytes of `values` as little-endian words."""
    raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    n = raw.size // 8
    total = int(np.add.reduce(raw[: n * 8].view("<u8"), dtype=np.uint64)) if n else 0
    return (total + int.from_bytes(raw[n * 8 :].tobytes().ljust(8, b"\0"), "little")) % 2**64


def _word_sums(values: np.ndarray, blocks: int) -> list[int]:
    """Return :func:`_block_sum` of each of the first `blocks` complete blocks of `values`."""
    if blocks <= 0:
        return []
    raw = np.ascontiguousarray(values[: blocks * _BLOCK]).reshape(-1).view(np.uint8)
    # A block is a multiple of 8 bytes: one reduction sums every block's words.
    words = raw.view("<u8").reshape(blocks, -1)
    return [int(v) for v in np.add.reduce(words, axis=1, dtype=np.uint64)]


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


def _appended_sums(olds: list[np.ndarray], news: list[np.ndarray]):
    """:func:`_block_sums` of each ``old + new`` column, without joining them whole.

    `olds` are the rows of the last, partial block (fewer than a block);
    only that block is joined with the first new rows, and the complete
    blocks after it are summed where they lie.
    """
    if not olds or len(olds[0]) + len(news[0]) < _BLOCK:
        return _block_sums([np.concatenate([o, n]) for o, n in zip(olds, news)])
    fill = _BLOCK - len(olds[0])
    rest = [n[fill:] for n in news]
    full = len(rest[0]) // _BLOCK
    per_column = [
        [_block_sum(np.concatenate([o, n[:fill]])), *_word_sums(r, full)]
        for o, n, r in zip(olds, news, rest)
    ]
    complete = [list(block) for block in zip(*per_column)]
    return complete, [_block_sum(r[full * _BLOCK :]) for r in rest]


def _layout(nodes) -> list:
    return [[node.atom.dtype.base.str, [int(d) for d in node.shape[1:]]] for node in nodes]


def _commit_text(names: list[str], rows: int, nodes: list, partial: list[int]) -> str:
    record = {"rows": rows, "columns": names, "layout": _layout(nodes), "block": _BLOCK}
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


def _is_text(node) -> bool:
    return node.atom.kind == "string"


def _is_bool(node) -> bool:
    """Tell a boolean column: PyTables' own type, or the HDF5 enum h5py writes for bool."""
    if node.atom.kind == "bool":
        return True
    if node.atom.kind != "enum":
        return False
    return dict(node.atom.enum) == {"FALSE": 0, "TRUE": 1}


def _child(children, name: str):
    """Return the child ``name`` of a group's ``_v_children``, or None.

    Not ``children.get``: PyTables loads a node only when it is indexed.
    """
    return children[name] if name in children else None  # noqa: SIM401 (see above)


@dataclass
class _Columns:
    """The columns of an open file, as one of the layouts holds them.

    ``commit`` is None for files without a commit record (psyrun 0.8's,
    and the oldest ``/c0`` files); ``sums`` is the node of the complete
    blocks' checksums.
    """

    layout: str  # "named" (current), "c" (/c0, /c1, ...) or "0.8"
    nodes: dict[str, Any]
    rows: int
    commit: dict | None = None
    sums: Any = None


class H5Store(Store):
    """Store results in an HDF5 file (``.h5``) with PyTables.

    Parameters
    ----------
    complevel, complib
        PyTables' compression of the columns (none by default).
    node
        The group that holds the columns (psyrun 0.8's argument), an
        absolute path other than ``'/'``.
    """

    ext = ".h5"
    library = "tables"
    requirement = "psyrun[h5]"
    column_kinds = ARRAY_KINDS
    text_encoding = "utf-8"
    supports_row_range = True
    supports_chunks = True
    supports_row_count = True
    supports_metadata = True
    appends_survive_kill = True
    node = DEFAULT_NODE  # for stores pickled before the argument existed

    def __init__(
        self, complevel: int = 0, complib: str = "zlib", node: str = DEFAULT_NODE
    ) -> None:
        if not isinstance(node, str) or not node.startswith("/") or node.rstrip("/") == "":
            raise ValueError(
                f"H5Store(node={node!r}): node must be the absolute path of a group "
                "other than the root, such as '/psyrun'"
            )
        parts = node.strip("/").split("/")
        if any(node_name(p) != p for p in parts):
            raise ValueError(
                f"H5Store(node={node!r}): {node!r} is not a valid HDF5 group path "
                "(empty parts, '.', '%' or names PyTables reserves)"
            )
        self.complevel = complevel
        self.complib = complib
        self.node = "/" + "/".join(parts)

    def __repr__(self) -> str:
        node = "" if self.node == DEFAULT_NODE else f", node={self.node!r}"
        return f"H5Store(complevel={self.complevel}, complib={self.complib!r}{node})"

    @property
    def _sums_path(self) -> str:
        return self.node + _SUMS_SUFFIX

    def _check_columns(self, data: dict[str, np.ndarray]) -> None:
        """Refuse names HDF5 cannot store (surrogates), then the values."""
        for key in data:
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                raise UnsupportedValueError(
                    f"H5Store cannot hold a column named {key!r}: HDF5 names are UTF-8 "
                    "text, and this name is not valid Unicode text (it holds a surrogate). "
                    "Rename the output, or use PickleStore or NpzStore.",
                    key,
                ) from None
        super()._check_columns(data)

    # -- finding the columns in any layout -------------------------------------------------

    def _columns(self, h5file, filename: str) -> _Columns:
        """Return the columns of an open file and its committed row count, checked."""
        import tables

        try:
            group = h5file.get_node(self.node)
        except tables.NoSuchNodeError:
            group = None
        if group is not None and not isinstance(group, tables.Group):
            raise DamagedFileError(f"{filename}: {self.node} is not a group of columns")
        attrs = group._v_attrs if group is not None else None
        if attrs is not None and (_COMMIT_ATTR in attrs or _ORDER_ATTR in attrs):
            return self._named_columns(h5file, filename, group)
        if self._sums_path in h5file:
            raise DamagedFileError(f"{filename} is damaged: its commit record is missing")
        if group is not None:
            return self._columns_08(filename, group)
        root = h5file.root
        if _OLD_COLUMNS_ATTR in root._v_attrs or _OLD_SUMS in root:
            return self._c_columns(h5file, filename)
        # psyrun always writes the group: a file without it is another file, or one
        # whose links were damaged (never a result without rows).
        found = ", ".join(sorted(n._v_pathname for n in root._f_iter_nodes())) or "nothing"
        raise DamagedFileError(
            f"{filename} holds no psyrun result at {self.node} (it holds {found}); "
            "if it was written with H5Store(node=...), pass the same group"
        )

    def _named_columns(self, h5file, filename: str, group) -> _Columns:
        attrs = group._v_attrs
        if _COMMIT_ATTR not in attrs or _ORDER_ATTR not in attrs:
            raise DamagedFileError(f"{filename} is damaged: its commit record is missing")
        commit = _parse_commit(filename, attrs[_COMMIT_ATTR])
        names = commit["columns"]
        nodes = {}
        children = group._v_children
        for name in names:
            node = _child(children, node_name(name))
            if node is None:
                raise DamagedFileError(
                    f"{filename} is damaged: column {name!r} "
                    f"({self.node}/{node_name(name)}) is missing"
                )
            nodes[name] = node
        found = _Columns("named", nodes, int(commit["rows"]), commit)
        if nodes:
            found.sums = h5file.get_node(self._sums_path) if self._sums_path in h5file else None
        self._check_commit(filename, found)
        return found

    def _c_columns(self, h5file, filename: str) -> _Columns:
        """Columns of the layout before named nodes: /c0, /c1, ... named on the root."""
        root = h5file.root
        names = (
            list(root._v_attrs[_OLD_COLUMNS_ATTR]) if _OLD_COLUMNS_ATTR in root._v_attrs else []
        )
        nodes = {}
        for i, name in enumerate(names):
            if f"/c{i}" not in h5file:
                raise DamagedFileError(
                    f"{filename} is damaged: column {name!r} (/c{i}) is missing"
                )
            nodes[name] = h5file.get_node(f"/c{i}")
        if _COMMIT_ATTR not in root._v_attrs:
            # Files written before the record existed have no checksums.
            if _OLD_SUMS in root or (not nodes and root._v_nchildren):
                raise DamagedFileError(f"{filename} is damaged: its commit record is missing")
            rows = int(next(iter(nodes.values())).nrows) if nodes else 0
            return _Columns("c", nodes, rows)
        commit = _parse_commit(filename, root._v_attrs[_COMMIT_ATTR])
        found = _Columns("c", nodes, int(commit["rows"]), commit)
        found.sums = getattr(root, _OLD_SUMS) if _OLD_SUMS in root else None
        self._check_commit(filename, found)
        return found

    @staticmethod
    def _columns_08(filename: str, group) -> _Columns:
        """Read psyrun 0.8's layout: every array in the group is a column named by its node."""
        import tables

        nodes = {
            column_name(leaf._v_name): leaf
            for leaf in group._f_iter_nodes()
            if isinstance(leaf, tables.Leaf)
        }
        lengths = {name: int(leaf.nrows) for name, leaf in nodes.items()}
        if len(set(lengths.values())) > 1:
            raise DamagedFileError(
                f"{filename}: its columns hold different numbers of rows ({lengths}), as "
                "psyrun 0.8 wrote when a chunk lacked a key; their rows cannot be matched "
                "up. Read the columns with PyTables or h5py."
            )
        return _Columns("0.8", nodes, next(iter(lengths.values()), 0))

    @staticmethod
    def _check_commit(filename: str, found: _Columns) -> None:
        commit, nodes, rows = found.commit, found.nodes, found.rows
        if (
            commit["columns"] != list(nodes)
            or commit["layout"] != _layout(nodes.values())
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
        if nodes and (found.sums is None or found.sums.nrows < rows // _BLOCK):
            raise DamagedFileError(f"{filename} is damaged: the checksums of its rows are missing")

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _read_checked(filename: str, found: _Columns, start: int, stop: int) -> dict:
        """Read rows ``start:stop`` of every column, checking the blocks they lie in."""
        nodes, rows, commit = found.nodes, found.rows, found.commit
        if commit is None or stop <= start or not nodes:
            return {key: node[start:stop] for key, node in nodes.items()}
        first, last = start // _BLOCK, (stop - 1) // _BLOCK
        lo, hi = first * _BLOCK, min((last + 1) * _BLOCK, rows)
        complete = rows // _BLOCK
        stored = found.sums[first : min(last + 1, complete)]
        partial = [int(s) for s in commit["partial"]]
        values = {}
        for j, (key, node) in enumerate(nodes.items()):
            out = np.empty((hi - lo, *node.shape[1:]), dtype=node.atom.dtype.base)
            # A few blocks per read (fewer HDF5 calls), summed while in the cache.
            for b0 in range(first, last + 1, _BLOCKS_PER_READ):
                b1 = min(b0 + _BLOCKS_PER_READ, last + 1)
                a, z = b0 * _BLOCK, min(b1 * _BLOCK, rows)
                piece = out[a - lo : z - lo]
                node.read(a, z, out=piece)
                got = _word_sums(piece, min(b1, complete) - b0)
                want = [int(s[j]) for s in stored[b0 - first : b0 - first + len(got)]]
                if b1 > complete:
                    got.append(_block_sum(piece[len(want) * _BLOCK :]))
                    want.append(partial[j])
                if got != want:
                    b = b0 + next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
                    raise DamagedFileError(
                        f"{filename} is damaged: rows {b * _BLOCK} to "
                        f"{min((b + 1) * _BLOCK, rows)} of column {key!r} "
                        "do not match their checksum"
                    )
            values[key] = out[start - lo : stop - lo]
        return values

    @staticmethod
    def _decode(found: _Columns, key: str, values: np.ndarray) -> np.ndarray:
        node = found.nodes[key]
        text = _OLD_STRING_ATTR in node.attrs if found.layout == "c" else _is_text(node)
        if text:
            return np.char.decode(values, "utf-8")
        if _is_bool(node) and values.dtype != np.bool_:
            return values.astype(np.bool_)
        return values

    def load_rows(self, filename: str, start: int, stop: int | None) -> dict[str, np.ndarray]:
        """Read rows ``start:stop`` only."""
        tables = self.preload()
        with damage_on_error(filename), tables.open_file(filename, "r") as h5file:
            found = self._columns(h5file, filename)
            start, stop = row_slice(start, stop, found.rows)
            values = self._read_checked(filename, found, start, stop)
            return {key: self._decode(found, key, v) for key, v in values.items()}

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read all columns, or only row ``row`` (one-element columns)."""
        return self._load_via_rows(filename, row)

    def iter_chunks(
        self, filename: str, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield the committed rows in order, `chunk_rows` at a time, checking every block.

        The file is opened once (not once per chunk), and closed between
        chunks only when the caller stops iterating.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        tables = self.preload()
        with damage_on_error(filename), tables.open_file(filename, "r") as h5file:
            found = self._columns(h5file, filename)
            for start in range(0, found.rows, chunk_rows):
                stop = min(start + chunk_rows, found.rows)
                values = self._read_checked(filename, found, start, stop)
                yield {key: self._decode(found, key, v) for key, v in values.items()}

    def count_rows(self, filename: str) -> int:
        """Count the rows from the commit record (checked against the arrays)."""
        tables = self.preload()
        with damage_on_error(filename), tables.open_file(filename, "r") as h5file:
            return self._columns(h5file, filename).rows

    def layout_of(self, filename: str) -> str:
        """Return the layout of the result ``filename``.

        ``'named'`` (the current one), ``'0.8'`` (psyrun 0.8's, without
        checksums) or ``'c'`` (columns ``/c0``, ``/c1``, ... of earlier
        versions). The first append to an older layout rewrites the file in
        the current one; so does ``psy merge``.
        """
        tables = self.preload()
        with damage_on_error(filename), tables.open_file(filename, "r") as h5file:
            return self._columns(h5file, filename).layout

    # -- writing ---------------------------------------------------------------------------

    @staticmethod
    def _fits(nodes: dict, data: dict[str, np.ndarray]) -> bool:
        layout = {}
        for key, node in nodes.items():
            if _is_text(node):
                dtype = None
            elif _is_bool(node):
                dtype = np.dtype(bool)
            else:
                dtype = node.atom.dtype.base
            layout[key] = (dtype, node.shape[1:])

        def str_fits(key: str, column: np.ndarray) -> bool:
            # Strings are stored with a fixed width: longer ones need a rewrite.
            return _encode(column).dtype.itemsize <= nodes[key].atom.dtype.base.itemsize

        return fits_layout(layout, data, str_fits)

    def _create_typed(self, path: str, data: dict[str, np.ndarray], n: int) -> bool:
        """Create the str and bool columns with h5py, which types them for every reader.

        PyTables writes str as ASCII-typed bytes and bool as a bit field; h5py
        writes UTF-8 strings and the enum that h5py and MATLAB read as
        logical. PyTables then appends to them like to its own arrays.
        Returns False (nothing written) without h5py or such columns.
        """
        typed = {k: v for k, v in data.items() if v.dtype.kind in "Ub"}
        if not typed:
            return False
        try:
            import h5py
        except ImportError:
            return False
        with h5py.File(path, "w") as h5file:
            group = h5file.create_group(self.node)
            for key, column in typed.items():
                if column.dtype.kind == "U":
                    dtype = h5py.string_dtype("utf-8", _encode(column).dtype.itemsize)
                else:
                    dtype = np.dtype(bool)
                row_bytes = max(1, dtype.itemsize * math.prod(column.shape[1:]))
                chunk_rows = max(1, min(max(n, 1024), (1 << 16) // row_bytes))
                group.create_dataset(
                    node_name(key),
                    shape=(0, *column.shape[1:]),
                    maxshape=(None, *column.shape[1:]),
                    dtype=dtype,
                    chunks=(chunk_rows, *column.shape[1:]),
                    **(
                        {"compression": "gzip", "compression_opts": self.complevel}
                        if self.complevel and self.complib == "zlib"
                        else {}
                    ),
                )
        return True

    def _write_file(self, path: str, data: dict[str, np.ndarray]) -> None:
        tables = self.preload()
        # HDF5 can report success for a file it could not finish on a full disk.
        needed = _MARGIN + sum(2 * v.nbytes + (1 << 16) for v in data.values())
        free = free_bytes(path)
        if free is not None and free < needed:
            raise disk_full_error(path, free, needed)
        filters = tables.Filters(complevel=self.complevel, complib=self.complib)
        n = count(data)
        made = self._create_typed(path, data, n)
        parent, _, leaf = self.node.rpartition("/")
        with tables.open_file(path, "a" if made else "w") as h5file, _natural_names_off():
            if made:
                group = h5file.get_node(self.node)
            else:
                group = h5file.create_group(parent or "/", leaf, createparents=True)
            nodes = []
            for key, column in data.items():
                values = _encode(column)
                name = node_name(key)
                node = _child(group._v_children, name)  # made by h5py above
                if node is not None:
                    values = values.astype(node.atom.dtype.base)
                else:
                    node = h5file.create_earray(
                        group,
                        name,
                        atom=tables.Atom.from_dtype(values.dtype.base),
                        shape=(0, *values.shape[1:]),
                        filters=filters,
                        expectedrows=max(n, 1000),
                    )
                node.attrs[_NAME_ATTR] = json.dumps(key)
                if n:
                    node.append(values)
                nodes.append(node)
            stored = [
                np.asarray(_encode(c), dtype=nd.atom.dtype.base)
                for c, nd in zip(data.values(), nodes)
            ]
            complete, partial = _block_sums(stored)
            sums_parent, _, sums_name = self._sums_path.rpartition("/")
            sums = h5file.create_earray(
                sums_parent or "/",
                sums_name,
                atom=tables.UInt64Atom(),
                shape=(0, max(len(nodes), 1)),
                expectedrows=max(n // _BLOCK, 100),
            )
            sums.attrs["psyrun_about"] = (
                f"checksums of every {_BLOCK} rows of each column of {self.node}, "
                "for psyrun's damage checks"
            )
            if complete:
                sums.append(np.array(complete, dtype=np.uint64))
            attrs = group._v_attrs
            attrs[_ORDER_ATTR] = json.dumps(list(data))
            attrs[_COMMIT_ATTR] = _commit_text(list(data), n, nodes, partial)
            attrs[_ROWS_ATTR] = np.int64(n)
        replacing = _REPLACING.get()
        if replacing is not None:
            self._carry_over(replacing, path)
        self._check_written(path, n)

    def _rewrite(self, filename: str, new: dict[str, np.ndarray]) -> None:
        """Rewrite as every store does, keeping what else the file holds."""
        token = _REPLACING.set(filename)
        try:
            super()._rewrite(filename, new)
        finally:
            _REPLACING.reset(token)

    def _carry_over(self, src: str, dest: str) -> None:
        """Copy every node of `src` that is not this store's result into `dest`.

        A file may hold more than one result (0.8's ``node=``) or the user's
        own data; a rewrite of one result must not drop the rest.
        """
        tables = self.preload()
        with tables.open_file(src, "r") as old:
            found = self._columns(old, src)
            ours = {self.node, self._sums_path}
            if found.layout == "c":
                ours |= {node._v_pathname for node in found.nodes.values()} | {f"/{_OLD_SUMS}"}
            parts = self.node.strip("/").split("/")
            ancestors = {"/"} | {"/" + "/".join(parts[:i]) for i in range(1, len(parts))}
            with tables.open_file(dest, "a") as new, _natural_names_off():

                def visit(group) -> None:
                    for child in group._f_iter_nodes():
                        path = child._v_pathname
                        if path in ours:
                            continue
                        if path in ancestors:
                            visit(child)
                        else:
                            child._f_copy(new.get_node(group._v_pathname), recursive=True)

                visit(old.root)

    def _check_written(self, path: str, rows: int) -> None:
        """Open the file just written and check its commit record (HDF5 may fail silently)."""
        if self.count_rows(path) != rows:
            raise DamagedFileError(f"{path}: the file just written does not hold its rows")

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

    def _append_in_place(self, filename: str, data: dict[str, np.ndarray]) -> bool:
        """Extend every column's array by the new rows."""
        tables = self.preload()
        with damage_on_error(filename), tables.open_file(filename, "r") as h5file:
            found = self._columns(h5file, filename)
            rows = found.rows
            # A file without rows takes its column types from the first rows; a
            # file of an older layout is rewritten once in the current one.
            if not (found.layout == "named" and rows and self._fits(found.nodes, data)):
                return False
            needed = self._room_needed(found.nodes, rows, count(data))
            # The partial last block is checksummed again with the new rows:
            # check it first, so that no damage gets a new checksum.
            head = rows - rows % _BLOCK
            old = self._read_checked(filename, found, head, rows)
        free = free_bytes(filename)
        if free is not None and free < needed:
            raise disk_full_error(filename, free, needed)
        with tables.open_file(filename, "a") as h5file:
            found = self._columns(h5file, filename)
            olds, news = [], []
            for key, node in found.nodes.items():
                if node.nrows > rows:
                    node.truncate(rows)  # what an append that did not finish left
                new = np.asarray(_encode(data[key])).astype(node.atom.dtype.base, copy=False)
                node.append(new)
                olds.append(old[key])
                news.append(new)
            complete, partial = _appended_sums(olds, news)
            sums = found.sums
            if sums.nrows > rows // _BLOCK:
                sums.truncate(rows // _BLOCK)  # not committed: an append that did not finish
            if complete:
                sums.append(np.array(complete, dtype=np.uint64))
            h5file.flush()
            # The commit: the record names the new rows last.
            total = rows + count(data)
            attrs = h5file.get_node(self.node)._v_attrs
            attrs[_COMMIT_ATTR] = _commit_text(
                list(found.nodes), total, list(found.nodes.values()), partial
            )
            attrs[_ROWS_ATTR] = np.int64(total)
        self._check_written(filename, total)
        return True

    def _write_metadata(self, path: str, metadata: dict[str, Any]) -> None:
        free = free_bytes(path)
        if free is not None and free < _MARGIN:
            raise disk_full_error(path, free, _MARGIN)
        tables = self.preload()
        with tables.open_file(path, "a") as h5file:
            found = self._columns(h5file, path)
            if found.layout == "c":
                h5file.root._v_attrs[_METADATA_ATTR] = json.dumps(metadata)
            else:
                parent, _, leaf = self.node.rpartition("/")
                if self.node not in h5file:
                    h5file.create_group(parent or "/", leaf, createparents=True)
                h5file.get_node(self.node)._v_attrs[_METADATA_ATTR] = json.dumps(metadata)

    def _read_metadata(self, filename: str) -> dict[str, Any] | None:
        tables = self.preload()
        with damage_on_error(filename), tables.open_file(filename, "r") as h5file:
            found = self._columns(h5file, filename)
            if found.layout == "c":
                attrs = h5file.root._v_attrs
            elif self.node in h5file:
                attrs = h5file.get_node(self.node)._v_attrs
            else:
                return None
            if _METADATA_ATTR not in attrs:
                return None
            return json.loads(str(attrs[_METADATA_ATTR]))
