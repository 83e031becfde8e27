"""The streaming, de-duplicating merge of result files.

Used by the backends (merging part files into the result, folding the parts
of an interrupted run into it before continuing) and by ``psy merge``. Rows
are matched as whole rows on the parameter keys: a row of a source whose
parameters the base file already holds is dropped, so merging after a crash
between writing the result and removing the parts never duplicates a row.
"""

from __future__ import annotations

import errno
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from psyrun.atomic import sync_tree, tmp_name
from psyrun.results.failed_rows import ERROR_COLUMN, failed_mask

__all__ = [
    "DiskFullError",
    "MergeOutcome",
    "RowMatch",
    "describe_error",
    "find_sources",
    "load_params",
    "match_rows",
    "merge_files",
    "missing_rows",
    "params_and_failures",
    "replaced_failures",
    "write_merged",
]

#: Rows gathered before one append to the merged file (each append may cost a sync).
MERGE_ROWS = 2**20
#: Rows read from an input at once (a few reads fill one append).
READ_ROWS = 2**18


def _store_of(store, path: str):
    """`store` itself, or the store `store(path)` picks for `path`."""
    return store if hasattr(store, "iter_chunks") else store(path)


def _count(chunk: Mapping) -> int:
    for v in chunk.values():
        return len(v)
    return 0


#: Rows of a space matched against stored rows at once (bounds the memory of a block).
MATCH_BLOCK = 2**18


class DiskFullError(OSError):
    """The disk holding a file being written is full; nothing was removed.

    Its ``errno`` is ``ENOSPC``; ``str()`` gives the one-line message alone.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


def _disk_full_error(dest: str) -> DiskFullError:
    return DiskFullError(
        f"the disk holding {os.path.dirname(os.path.abspath(dest))} is full: "
        f"{dest} was not written and nothing was removed"
    )


def _lowest_equal(
    table: list[np.ndarray], index, queries: list[np.ndarray] | None, hashes: np.ndarray
) -> np.ndarray:
    """For each query row, the lowest row of `table` equal to it as a whole (-1: none).

    `index` is a :class:`psyrun._kernels.HashIndex` of the table's row
    hashes, `hashes` those of the queries. `queries` None: the table itself.
    """
    from psyrun._kernels import values_equal

    candidates = index.lookup(hashes)
    if queries is None:
        # A row whose hash no lower row has is the lowest row equal to itself.
        queries = table
        out = np.where(candidates == np.arange(len(candidates)), candidates, -1)
        wanted = np.flatnonzero(out < 0)
    else:
        out = np.full(len(queries[0]), -1, dtype=np.int64)
        wanted = np.flatnonzero(candidates >= 0)
    rows = candidates[wanted]
    # Chains of equal hashes run upwards, so the first equal row found is the lowest.
    while len(wanted):
        equal = np.ones(len(wanted), dtype=bool)
        for query, column in zip(queries, table):
            pending = np.flatnonzero(equal)
            if not len(pending):
                break
            equal[pending] = values_equal(query[wanted[pending]], column[rows[pending]])
        out[wanted[equal]] = rows[equal]
        rows = index.chain[rows[~equal]]
        wanted = wanted[~equal]
        more = rows >= 0
        wanted, rows = wanted[more], rows[more]
    return out


def _occurrence(groups: np.ndarray) -> np.ndarray:
    """For each entry, how many earlier entries have the same group (0 for the first)."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    n = len(groups)
    first = np.ones(n, dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    run_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    out = np.empty(n, dtype=np.int64)
    out[order] = np.arange(n) - run_start
    return out


@dataclass
class RowMatch:
    """How stored rows cover the assignments of a space, repeats counted.

    The k-th occurrence of an assignment in the space is done only when the
    stored rows hold it at least k times. Stored rows are used in their
    order (or the priority order given to :func:`match_rows`).

    Attributes
    ----------
    missing : numpy.ndarray of int64
        Ascending row numbers of the space that no stored row covers.
    used : numpy.ndarray of bool
        Per stored row: it stands for an assignment of the space.
    outside : numpy.ndarray of bool
        Per stored row: its parameters are not in the space at all.
    first : numpy.ndarray of bool
        Per stored row: no stored row before it (in priority order) is equal.
    """

    missing: np.ndarray
    used: np.ndarray
    outside: np.ndarray
    first: np.ndarray

    @property
    def n_extra(self) -> int:
        """Stored rows that stand for no assignment: outside the space, or surplus copies."""
        return int(len(self.used) - self.used.sum())


def match_rows(space, done: Mapping[str, np.ndarray] | None, order=None) -> RowMatch:
    """Match the stored rows `done` to the assignments of `space`, with multiplicity.

    Parameters
    ----------
    space : psyrun.pspace.ParameterSpace
        The assignments.
    done : mapping of str to numpy.ndarray
        Parameter columns of the stored rows (other keys are ignored). A key
        of the space that `done` lacks makes every assignment missing.
    order : numpy.ndarray of int, optional
        Priority of the stored rows: ``order[0]`` is used first. Default:
        their order in `done`. (Where several stored rows hold the same
        assignment, the ones first in this order stand for it.)

    Returns
    -------
    RowMatch
    """
    n = len(space)
    m = _count(done) if done else 0
    keys = list(space.keys())
    if not m or any(k not in done for k in keys):
        # No stored row can stand for an assignment; none is a copy of another.
        none = np.zeros(m, dtype=bool)
        return RowMatch(np.arange(n, dtype=np.int64), none, ~none, ~none)
    # The usual finished task: the stored rows are the space, in its order.
    # When they are also distinct, each stands for its own assignment
    # (whatever the priority order), and the index is not needed.
    if (
        m == n
        and keys
        and _same_rows_in_order(space, done, keys)
        and _distinct_rows([np.asarray(done[k]) for k in keys])
    ):
        every = np.ones(m, dtype=bool)
        return RowMatch(np.empty(0, dtype=np.int64), every, ~every, every.copy())
    perm = np.arange(m) if order is None else np.asarray(order, dtype=np.int64)
    if not keys:
        # Nothing to tell rows apart: every row is the empty assignment.
        table_groups = np.zeros(m, dtype=np.int64)
        space_groups = np.zeros(n, dtype=np.int64)
    else:
        from psyrun._kernels import HashIndex, hash_rows

        table = [np.asarray(done[k])[perm] for k in keys]
        hashes = hash_rows(table)
        index = HashIndex(hashes)
        if (index.chain < 0).all():
            # No two rows share a hash, so none equals another (the usual case).
            table_groups = np.arange(m, dtype=np.int64)
        else:
            table_groups = _lowest_equal(table, index, None, hashes)
        space_groups = np.empty(n, dtype=np.int64)
        for start in range(0, n, MATCH_BLOCK):
            stop = min(start + MATCH_BLOCK, n)
            block = space._range_take(start, stop, keys)
            columns = [block[k] for k in keys]
            space_groups[start:stop] = _lowest_equal(table, index, columns, hash_rows(columns))
    matched = space_groups >= 0
    in_space = np.bincount(space_groups[matched], minlength=m)
    stored = np.bincount(table_groups, minlength=m)
    done_space = matched.copy()
    repeated = np.flatnonzero(matched & (in_space[np.maximum(space_groups, 0)] > 1))
    if len(repeated):
        # The k-th repeat of an assignment is done only if k copies are stored.
        groups = space_groups[repeated]
        done_space[repeated] = _occurrence(groups) < stored[groups]
    first = table_groups == np.arange(m)
    if stored.max(initial=0) > 1:
        used = _occurrence(table_groups) < in_space[table_groups]
    else:
        used = in_space[table_groups] > 0
    outside = in_space[table_groups] == 0
    # Back from priority order to the order of `done`.
    out = [np.empty(m, dtype=bool) for _ in range(3)]
    for target, values in zip(out, (used, outside, first)):
        target[perm] = values
    return RowMatch(np.flatnonzero(~done_space).astype(np.int64), *out)


def _same_rows_in_order(space, done: Mapping[str, np.ndarray], keys: list[str]) -> bool:
    """Whether row i of `done` equals row i of `space` for every i (equal lengths).

    Compared by value as the row matching compares (``1 == 1.0``, NaN
    matches NaN), a small first block first, so that stored rows in another
    order are told apart cheaply.
    """
    from psyrun._kernels import values_equal

    n = len(space)
    start, size = 0, 1024
    while start < n:
        stop = min(start + size, n)
        block = space._range_take(start, stop, keys)
        for k in keys:
            if not values_equal(block[k], np.asarray(done[k][start:stop])).all():
                return False
        start, size = stop, MATCH_BLOCK
    return True


def _distinct_rows(columns: list[np.ndarray]) -> bool:
    """Whether no two rows of `columns` are equal; False may also mean "cannot tell cheaply".

    Rows of 1-d numeric columns are folded into one 64-bit number each, equal
    rows into equal numbers (both zeros alike, every NaN alike), without the
    row hashes' mixing: a collision of unequal rows only sends the caller to
    the exact path. Other columns use the row hashes.
    """
    if not all(c.ndim == 1 and c.dtype.kind in "biuf" for c in columns):
        from psyrun._kernels import hash_rows

        folded = hash_rows(columns)
    else:
        folded = np.zeros(len(columns[0]), dtype=np.uint64)
        for column in columns:
            values = np.add(column, 0.0, dtype=np.float64)  # -0.0 becomes 0.0
            values[np.isnan(values)] = np.nan  # one NaN bit pattern
            bits = values.view(np.uint64)
            # Numbers differ mostly in their high bits: fold them down first.
            bits ^= bits >> np.uint64(29)
            folded += bits
            folded *= np.uint64(0xBF58476D1CE4E5B9)
    folded.sort()
    return bool((folded[1:] != folded[:-1]).all())


def missing_rows(space, done: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """Row numbers of `space` that the rows of `done` do not cover (repeats counted).

    An assignment the space holds k times needs k stored rows; see
    :func:`match_rows`.
    """
    return match_rows(space, done).missing


def concat_columns(parts: list[dict[str, np.ndarray]], keys: list[str]) -> dict:
    """Concatenate the `keys` columns of `parts`; a key some part lacks is dropped.

    Columns of different kinds or shapes become object columns, so that rows
    still compare by value.
    """
    out = {}
    for k in keys:
        cols = [p[k] for p in parts if k in p]
        if not cols:
            continue
        if len({c.dtype.kind for c in cols}) == 1 and len({c.shape[1:] for c in cols}) == 1:
            out[k] = np.concatenate(cols)
            continue
        # Mixed kinds or shapes: one object per row (element by element, so
        # that NumPy does not broadcast array values into a new dimension).
        values = [v for c in cols for v in c]
        out[k] = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[k][i] = v
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        # A key absent from some file: match on the keys every file has.
        n = max(lengths)
        out = {k: v for k, v in out.items() if len(v) == n}
    return out


def file_params(store, path: str, keys: list[str]) -> dict[str, np.ndarray]:
    """Return the `keys` columns of one file (the keys it has)."""
    parts = [
        {k: np.asarray(chunk[k]) for k in keys if k in chunk} for chunk in store.iter_chunks(path)
    ]
    return concat_columns(parts, keys) if parts else {}


def load_params(
    store, files: list[str], keys: list[str], log=None, strict: bool = False
) -> dict[str, np.ndarray]:
    """Return the parameter columns (`keys`) of every row in `files`, concatenated.

    `store` is the store that reads the files, or a function of a file name
    returning it. Files that cannot be read (a partial file cut short by a
    crash) are reported to `log` and skipped, or with `strict` raise.
    """
    parts = []
    for path in files:
        try:
            params = file_params(_store_of(store, path), path, keys)
        except Exception as exc:
            if strict:
                raise
            if log is not None:
                log(f"skipping unreadable file {path}: {describe_error(exc)}")
            continue
        if params:
            parts.append(params)
    return concat_columns(parts, keys) if parts else {}


def params_and_failures(store, path: str, keys: list[str], errors: list | None = None):
    """``(parameter columns, failed mask)`` of one file, read in one pass.

    The mask marks the failed rows on record (:mod:`psyrun.results.failed_rows`);
    `errors`, when given, receives their ``psy_error`` texts in order.
    """
    parts, masks = [], []
    for chunk in store.iter_chunks(path):
        n = len(next(iter(chunk.values()))) if chunk else 0
        parts.append({k: np.asarray(chunk[k]) for k in keys if k in chunk})
        column = chunk.get(ERROR_COLUMN)
        masks.append(failed_mask(column, n))
        if errors is not None and masks[-1].any():
            errors.extend(str(e) for e in np.asarray(column)[masks[-1]])
    params = concat_columns(parts, keys) if parts else {}
    mask = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    return params, mask


def replaced_failures(store, base: str, sources: list[str], keys: list[str], source_store):
    """Rows of the result `base` that are failures which rows of `sources` replace (or None).

    A failed row of the result goes when the sources (a later attempt) hold
    its assignment, whether they succeeded or failed again.
    """
    from psyrun.pspace import Param

    if not keys or not sources or not store.exists(base):
        return None
    params, mask = params_and_failures(store, base, keys)
    if not mask.any():
        return None
    new = load_params(source_store, sources, keys)
    if not new or set(new) != set(params):
        return None
    failed = np.flatnonzero(mask)
    candidates = Param(**{k: np.asarray(v)[mask] for k, v in params.items()})
    kept = missing_rows(candidates, dict(new))
    drop = np.zeros(len(mask), dtype=bool)
    drop[failed] = True
    drop[failed[kept]] = False
    return drop if drop.any() else None


@dataclass
class MergeOutcome:
    """What :func:`merge_files` did.

    Attributes
    ----------
    rows : int
        Rows in the merged file.
    merged : list of str
        Sources whose rows are now in the merged file (rows they held twice,
        or that the base held already, were left out on purpose): they may
        be removed.
    unreadable : list of str
        Sources that could not be read; nothing of them was merged.
    rejected : dict of str to numpy.ndarray or None
        Rows of the sources that the store cannot hold (see `reject_error`);
        they are not in the merged file.
    reject_error : str
        The store's message about the first rejected row.
    """

    rows: int
    merged: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    rejected: dict | None = None
    reject_error: str = ""


def write_merged(store, dest: str, sources: list[str], keys: list[str], **kwargs) -> int:
    """Merge `sources` (and `base`) into `dest`; return the rows written.

    The same as :func:`merge_files` (which see for the parameters), returning
    only the row count.
    """
    return merge_files(store, dest, sources, keys, **kwargs).rows


def merge_files(
    store,
    dest: str,
    sources: list[str],
    keys: list[str],
    base: str | None = None,
    log=None,
    source_store=None,
    drop: Collection[str] = (),
    consume: bool = False,
    metadata: Mapping | Callable | None = None,
    drop_base: np.ndarray | None = None,
    space=None,
    reject: bool = False,
    keep_outside: bool = True,
    exact: bool = False,
) -> MergeOutcome:
    """Stream `base` and `sources` into `dest`, each assignment as often as it belongs there.

    `dest` is replaced only by a file that was written completely, synced to
    disk and read back with the expected row count (:meth:`Store.verify`);
    until then the old `dest` is left as it was. The caller removes merged
    sources only after this returns.

    Parameters
    ----------
    store : psyrun.store.Store
        Writes `dest` and reads `base`.
    dest : str
        The merged file (written under a temporary name, then renamed).
    sources : list of str
        Files to merge. Sources that cannot be read (cut short by a crash) are
        reported to `log`, skipped and listed in the outcome.
    keys : list of str
        The parameter keys rows are matched on; none: every row is kept.
    base : str, optional
        An existing file whose rows come first (typically `dest` itself).
    log : callable, optional
        Receives one-line messages.
    source_store : Store or callable, optional
        Reads `sources` (default: `store`): a store, or a function of a file
        name returning one, so parts written with another store are converted
        while streaming.
    drop : collection of str, optional
        Columns left out of every chunk (the task's ``exclude_from_result``,
        so a column excluded after the parts were written does not reach the
        result).
    consume : bool, optional
        The sources may be used up (the merge job's part files): a single
        source already in `store`'s format is renamed to `dest` instead of
        copied.
    metadata : mapping, optional
        The metadata of `dest` (the backends pass the run's provenance). By
        default `dest` keeps the metadata of its inputs: that of `base`, or
        else of the first source with any; different metadata of other
        inputs is listed under ``merged_from``. Stores that cannot hold
        metadata get none. A callable is called with ``[(input path, rows
        written from it), ...]`` in file order (base first) and returns the
        metadata (:mod:`psyrun.run.versions` records which rows came from where).
    drop_base : numpy.ndarray of bool, optional
        Rows of `base` left out (rows of a later run replace them); the
        sources' rows with those parameters are then kept.
    space : psyrun.pspace.ParameterSpace, optional
        The task's space. With `keys`, rows are matched as whole rows: an
        assignment of the space is written as often as the space holds it
        (the first rows holding it win: those of `base`, then of the sources
        in order); a row outside the space is kept once. Without a space,
        every distinct row is kept once.
    reject : bool, optional
        Rows of the sources that `store` cannot hold are left out and
        returned in the outcome (the backends evaluate them again) instead
        of failing the merge.
    keep_outside : bool, optional
        With a `space`: keep rows outside it (once each; the default), or
        leave them out (``psy prune``).
    exact : bool, optional
        The caller vouches that `base` and the sources together hold every
        row exactly as often as it belongs in `dest` (the parts of one fresh
        run, each the disjoint row range of one process job): no row is
        matched, so the parameters are never gathered in memory and the
        merge streams chunk by chunk. `drop_base` must then be None.

    Raises
    ------
    DiskFullError
        The disk is full; `dest` and the sources are as they were.
    OSError
        `base` cannot be read (it is left as it was).
    """
    if source_store is None:
        source_store = store
    original_metadata = metadata
    drop = set(drop)
    has_base = base is not None and store.exists(base)
    outcome = MergeOutcome(0)
    inputs: list[tuple[str, object, bool, int]] = []  # (path, reader, is a source, rows)
    params = []
    failed = []  # per input: its failed rows on record (psyrun.results.failed_rows)
    if has_base:
        try:
            store.verify(base)
            if keys and not exact:
                found, mask = params_and_failures(store, base, keys)
                params.append(found)
                failed.append(mask)
        except Exception as exc:
            raise OSError(
                f"cannot read the existing results {base} ({describe_error(exc)}); it was left "
                "unchanged. Move it away (its rows are then evaluated again) or restore it, "
                "then run again."
            ) from exc
        inputs.append((base, store, False, -1))
    for path in sources:
        reader = _store_of(source_store, path)
        try:
            if keys and not exact:
                found, mask = params_and_failures(reader, path, keys)
                n_rows = _count(found) if found else reader.count_rows(path)
                params.append(found)
                failed.append(mask)
            else:
                n_rows = reader.count_rows(path)  # only make sure the file reads
        except Exception as exc:
            if log is not None:
                log(f"skipping unreadable part {path}: {describe_error(exc)}")
            outcome.unreadable.append(path)
            continue
        inputs.append((path, reader, True, n_rows))
    outcome.merged = [path for path, _, is_source, _ in inputs if is_source]
    if exact and drop_base is not None:
        raise ValueError("merge_files: exact=True takes no drop_base (no row is matched)")
    if has_base and drop_base is not None and params:
        # Replaced rows of the base take no part in the matching.
        params[0] = {k: v[~drop_base] for k, v in params[0].items()}
        failed[0] = failed[0][~drop_base]
    # Exact inputs: every row is kept, none needs matching (and none was read).
    keep = None if exact else _rows_to_keep(params, keys, space, keep_outside, failed)
    if has_base and drop_base is not None:
        keep = _without_replaced(keep, drop_base, sum(n for *_, n in inputs[1:]))

    # A store whose plain layout needs one write (NPZ) gets its result in one piece.
    flush_rows = math.inf if store.write_whole else MERGE_ROWS
    if (
        consume
        and not has_base
        and len(inputs) == 1
        and (keep is None or keep.all())
        and not store.write_whole
    ):
        path, reader, _, n_rows = inputs[0]
        first = next(iter(reader.iter_chunks(path)), {}) if drop else {}
        if type(reader) is type(store) and not drop & set(first):
            # Nothing to convert, drop or add: the part becomes the result.
            if callable(metadata):
                metadata = metadata([(path, n_rows)])
            outcome.rows = _adopt(store, path, dest, metadata, n_rows)
            return outcome

    from psyrun.store.columns import merge_chunks

    tmp = tmp_name(dest)
    store.remove(tmp)
    written = offset = 0
    counts: list[tuple[str, int]] = []
    pending: list[dict] = []
    pending_rows = 0
    rejected: list[dict] = []

    def flush() -> None:
        nonlocal pending, pending_rows
        if pending:
            store.append(tmp, pending[0] if len(pending) == 1 else merge_chunks(pending))
        pending, pending_rows = [], 0

    try:
        for path, reader, is_source, _ in inputs:
            counts.append((path, 0))
            for chunk in _chunks_of(reader, path, exact and is_source):
                n = _count(chunk)
                chunk = {k: np.asarray(v) for k, v in chunk.items() if k not in drop}
                if keep is not None:
                    mask = keep[offset : offset + n]
                    offset += n
                    if not mask.all():
                        chunk = {k: v[mask] for k, v in chunk.items()}
                if is_source and reject and type(reader) is not type(store):
                    # (Rows read from a file of the store's own format are rows it holds.)
                    chunk, bad, error = _split_unholdable(store, chunk, dest)
                    if bad is not None:
                        rejected.append(bad)
                        outcome.reject_error = outcome.reject_error or error
                n = _count(chunk)
                if n:
                    pending.append(chunk)
                    pending_rows += n
                    written += n
                    counts[-1] = (path, counts[-1][1] + n)
                    if pending_rows >= flush_rows:
                        flush()
        flush()
        if not store.exists(tmp):
            store.save(tmp, {k: [] for k in keys})
        if callable(metadata):
            metadata = metadata(counts)
        if metadata is None:
            metadata = _inputs_metadata(
                store, base if has_base else None, outcome.merged, source_store
            )
        if metadata and store.supports_metadata:
            # Written to the temporary file: the result appears with it or not at all.
            store.write_metadata(tmp, metadata)
        _check_written(store, tmp, written)
        _replace_synced(store, tmp, dest)
    except BaseException as exc:
        full = _disk_full(exc, tmp)
        store.remove(tmp)
        if full:
            raise _disk_full_error(dest) from exc
        if isinstance(exc, _DamagedSource):
            # An exact merge reads each source only once, as it copies it: a
            # source found damaged part way is left out and the merge starts again.
            if log is not None:
                log(f"skipping unreadable part {exc.path}: {describe_error(exc.__cause__)}")
            again = merge_files(
                store,
                dest,
                [p for p in sources if p != exc.path],
                keys,
                base=base,
                log=log,
                source_store=source_store,
                drop=drop,
                consume=consume,
                metadata=original_metadata,
                space=space,
                reject=reject,
                keep_outside=keep_outside,
                exact=True,
            )
            again.unreadable = [*outcome.unreadable, exc.path, *again.unreadable]
            return again
        raise
    outcome.rows = written
    if rejected:
        outcome.rejected = merge_chunks(rejected) if len(rejected) > 1 else rejected[0]
    return outcome


class _DamagedSource(Exception):
    """A source of an exact merge turned out damaged while it was copied."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def _chunks_of(reader, path: str, exact_source: bool):
    """Yield the chunks of one input (with `exact_source`, damage as :class:`_DamagedSource`)."""
    if not exact_source:
        yield from reader.iter_chunks(path, READ_ROWS)
        return
    from psyrun.exceptions import DamagedFileError

    try:
        yield from reader.iter_chunks(path, READ_ROWS)
    except DamagedFileError as exc:
        raise _DamagedSource(path) from exc


def describe_error(exc: BaseException) -> str:
    """``Type: first line of the message`` (HDF5 errors carry a whole back trace)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _rows_to_keep(
    params: list[dict], keys: list[str], space, keep_outside: bool = True, failed=None
) -> np.ndarray | None:
    """Which input rows a merge writes (None: all); see :func:`merge_files`.

    `failed` (per input, a mask of its failed rows on record) puts failures
    last: a failed row is kept only while no result holds its assignment, and
    of several failures of one assignment only the latest.
    """
    if not keys:
        return None
    combined = concat_columns([p for p in params if p], keys)
    n = sum(_count(p) for p in params)
    if not combined or _count(combined) != n:
        # Rows that cannot all be matched on the same keys: keep them all.
        return None
    from psyrun.pspace import Param

    if keep_outside and _all_distinct([np.asarray(combined[k]) for k in keys if k in combined]):
        # Every row once already (the usual merge): each is kept, in the space or not.
        return None
    mask = np.concatenate(failed) if failed and len(failed) == len(params) else None
    order = None
    if mask is not None and len(mask) == n and mask.any():
        from psyrun.results.failed_rows import failed_last

        order = failed_last(mask)
    else:
        mask = None
    in_space = space is not None
    if space is None:
        space = Param(**{k: np.empty(0) for k in keys})
    match = match_rows(space, combined, order=order)
    # An assignment of the space as often as the space holds it; any other row once.
    keep = match.used if not keep_outside else match.used | (match.outside & match.first)
    if mask is not None:
        # A failure only while it stands for an assignment (of the space, if given).
        keep[mask] = (match.used if in_space else match.first)[mask]
    return keep


def _without_replaced(keep: np.ndarray | None, drop_base: np.ndarray, n_sources: int):
    """Widen `keep` (over the base's remaining rows, then the sources') to every input row."""
    n_base = len(drop_base)
    full = np.zeros(n_base + n_sources, dtype=bool)
    kept_base = np.flatnonzero(~drop_base)
    if keep is None:
        full[kept_base] = True
        full[n_base:] = True
    else:
        full[kept_base] = keep[: len(kept_base)]
        full[n_base:] = keep[len(kept_base) :]
    return full


def _all_distinct(columns: list[np.ndarray]) -> bool:
    """Whether no two rows of `columns` are equal (cheaply: no two row hashes are)."""
    from psyrun._kernels import hash_rows

    if not columns:
        return False
    hashes = np.sort(hash_rows(columns))
    return bool((hashes[1:] != hashes[:-1]).all())


def _split_unholdable(store, chunk: dict, dest: str):
    """Split `chunk` into the rows `store` can hold and those it cannot (or None)."""
    from psyrun.store.base import UnsupportedValueError

    try:
        store.check(chunk, dest)
        return chunk, None, ""
    except UnsupportedValueError as exc:
        error = str(exc)
    from psyrun.store.columns import to_column

    def rows(mask: np.ndarray) -> dict:
        # An object column (one value spoils the type of all) gets its type
        # back from the values that are left.
        return {
            k: to_column(list(v[mask])) if v.dtype.kind == "O" else v[mask]
            for k, v in chunk.items()
        }

    n = _count(chunk)
    ok = np.ones(n, dtype=bool)
    for i in range(n):
        one = np.zeros(n, dtype=bool)
        one[i] = True
        try:
            store.check(rows(one), dest)
        except UnsupportedValueError:
            ok[i] = False
    if ok.all():
        # Only the rows together cannot be held: let the append say why.
        return chunk, None, ""
    return rows(ok), {k: v[~ok] for k, v in chunk.items()}, error


def _check_written(store, path: str, expected: int) -> None:
    """Sync `path` and read it back; raise DamagedFileError unless it holds `expected` rows."""
    from psyrun.exceptions import DamagedFileError

    sync_tree(path)
    if _free_bytes(path) < FULL_DISK_BYTES:
        # Some libraries (HDF5) lose data on a full disk without an error, and
        # the file can even read back: a write that left the disk full is not trusted.
        raise OSError(errno.ENOSPC, f"no space left after writing {path}")
    found = store.verify(path)
    if found != expected:
        raise DamagedFileError(f"{path} holds {found} rows after writing {expected}")


def _replace_synced(store, path: str, dest: str) -> None:
    """Put `path`, synced by :func:`_check_written`, in place of `dest` (not synced again).

    A store's own ``replace`` syncs every file first; a zarr tree has
    thousands, and each sync costs a disk flush.
    """
    from psyrun.atomic import replace_path
    from psyrun.store.base import Store

    if getattr(type(store), "replace", None) is Store.replace:
        replace_path(path, dest)  # what Store.replace does after syncing
    else:
        store.replace(path, dest)


def _adopt(store, path: str, dest: str, metadata: Mapping | None, expected: int) -> int:
    """Make the single part `path` of `expected` rows the result `dest`; return its rows.

    The part is renamed only after it was synced and read back whole.
    """
    if metadata and store.supports_metadata:
        store.write_metadata(path, metadata)
    try:
        _check_written(store, path, expected)
    except BaseException as exc:
        if _disk_full(exc, path):
            raise _disk_full_error(dest) from exc
        raise
    _replace_synced(store, path, dest)
    return expected


#: Free bytes below which a write is put down to a full disk (failed, or not trusted).
FULL_DISK_BYTES = 1 << 20


def _disk_full(exc: BaseException, path: str) -> bool:
    """Whether `exc` (or what caused it) says the disk is full, or the disk is full now."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(exc, Exception):
        return False
    # Libraries (HDF5) may report a short write as anything; ask the disk.
    return _free_bytes(path) < FULL_DISK_BYTES


def _free_bytes(path: str) -> int:
    """Free bytes on the disk holding `path` (a large number when unknown)."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return 1 << 62
    return st.f_bavail * st.f_frsize


def _inputs_metadata(store, base: str | None, sources: list[str], source_store) -> dict:
    """Return the metadata a merge of `base` and `sources` keeps (see :func:`write_merged`)."""
    from psyrun.results.provenance import combine

    found = []
    for path, reader in [(base, store)] + [(p, _store_of(source_store, p)) for p in sources]:
        if path is None:
            continue
        try:
            found.append(reader.read_metadata(path))
        except Exception:
            # Metadata only describes the rows: an unreadable one must not stop the merge.
            continue
    return combine(found)


def _part_order(name: str):
    m = re.match(r"(\d+)", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def find_sources(directory: str, ext: str, exclude: str | None = None) -> list[str]:
    """Files in `directory` with extension `ext`, part files in index order.

    Hidden files (temporary names) and the file `exclude` (the merge target)
    are left out.
    """
    target = os.path.abspath(exclude) if exclude else None
    names = sorted(
        (
            e
            for e in os.listdir(directory)
            if os.path.splitext(e)[1].lower() == ext.lower()
            and not e.startswith(".")
            and os.path.abspath(os.path.join(directory, e)) != target
        ),
        key=_part_order,
    )
    return [os.path.join(directory, e) for e in names]
