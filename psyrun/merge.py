"""The streaming, de-duplicating merge of result files.

Used by the backends (merging part files into the result, folding the parts
of an interrupted run into it before continuing) and by ``psy merge``. Rows
are matched as whole rows on the parameter keys: a row of a source whose
parameters the base file already holds is dropped, so merging after a crash
between writing the result and removing the parts never duplicates a row.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

import numpy as np

from psyrun.atomic import tmp_name

if TYPE_CHECKING:
    pass

__all__ = ["find_sources", "load_params", "missing_rows", "write_merged"]

#: Rows gathered before one append to the merged file (each append may cost a sync).
MERGE_ROWS = 2**20


def _store_of(store, path: str):
    """`store` itself, or the store `store(path)` picks for `path`."""
    return store if hasattr(store, "iter_chunks") else store(path)


def _count(chunk: Mapping) -> int:
    for v in chunk.values():
        return len(v)
    return 0


def missing_rows(space, done: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """Row numbers of `space` whose parameters are not among the rows of `done`."""
    from psyrun.pspace import missing

    if not done or not len(next(iter(done.values()))):
        return np.arange(len(space), dtype=np.int64)
    return np.asarray(missing(space, done).surviving_rows(), dtype=np.int64)


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


def load_params(store, files: list[str], keys: list[str], log=None) -> dict[str, np.ndarray]:
    """Return the parameter columns (`keys`) of every row in `files`, concatenated.

    `store` is the store that reads the files, or a function of a file name
    returning it. Files that cannot be read (a partial file cut short by a
    crash) are reported to `log` and skipped.
    """
    parts = []
    for path in files:
        try:
            params = file_params(_store_of(store, path), path, keys)
        except Exception as exc:
            if log is not None:
                log(f"skipping unreadable file {path}: {type(exc).__name__}: {exc}")
            continue
        if params:
            parts.append(params)
    return concat_columns(parts, keys) if parts else {}


def write_merged(
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
) -> int:
    """Stream `base` (kept whole) and `sources` into `dest`; return rows written.

    Parameters
    ----------
    store : psyrun.store.Store
        Writes `dest` and reads `base`.
    dest : str
        The merged file. The data goes to a temporary name renamed over `dest`
        at the end, so `dest` is never left half-written; on error it is
        untouched.
    sources : list of str
        Files to merge. Sources that cannot be read (cut short by a crash) are
        reported to `log` and skipped.
    keys : list of str
        The parameter keys rows are matched on.
    base : str, optional
        An existing file whose rows are kept; rows of `sources` whose
        parameters it already holds are dropped.
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
        metadata (:mod:`psyrun.versions` records which rows came from where).
    drop_base : numpy.ndarray of bool, optional
        Rows of `base` left out (rows of a later run replace them); the
        sources' rows with those parameters are then kept.
    """
    if source_store is None:
        source_store = store
    from psyrun.pspace import Param

    drop = set(drop)
    has_base = base is not None and store.exists(base)
    good, source_params = [], []
    for path in sources:
        source = _store_of(source_store, path)
        try:
            if has_base:
                source_params.append(file_params(source, path, keys))
            else:
                # Nothing to drop: only make sure the file reads (cheap for parts).
                source.count_rows(path)
        except Exception as exc:
            if log is not None:
                log(f"skipping unreadable part {path}: {type(exc).__name__}: {exc}")
            continue
        good.append(path)
    if consume and not has_base and len(good) == 1:
        source = _store_of(source_store, good[0])
        first = next(iter(source.iter_chunks(good[0])), {}) if drop else {}
        if type(source) is type(store) and not drop & set(first):
            # Nothing to convert, drop or add: the part becomes the result.
            rows = source.count_rows(good[0])
            if callable(metadata):
                metadata = metadata([(good[0], rows)])
            if metadata and store.supports_metadata:
                store.write_metadata(good[0], metadata)
            store.replace(good[0], dest)
            return rows
    keep = None
    if has_base and good:
        seen = load_params(store, [base], keys)
        if drop_base is not None and seen:
            seen = {k: v[~drop_base] for k, v in seen.items()}
        combined = concat_columns([sp for sp in source_params if sp], keys)
        if seen and combined:
            n_total = len(next(iter(combined.values())))
            keep = np.zeros(n_total, dtype=bool)
            keep[missing_rows(Param(**combined), seen)] = True

    tmp = tmp_name(dest)
    store.remove(tmp)
    written = 0
    offset = 0
    counts: list[tuple[str, int]] = []
    pending: list[dict] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if pending:
            from psyrun.store.columns import merge_chunks

            store.append(tmp, pending[0] if len(pending) == 1 else merge_chunks(pending))
        pending, pending_rows = [], 0

    def without_dropped(chunk: Mapping) -> dict:
        return {k: np.asarray(v) for k, v in chunk.items() if k not in drop}

    try:
        if has_base:
            try:
                base_offset = 0
                for chunk in store.iter_chunks(base):
                    if drop_base is not None:
                        n = _count(chunk)
                        mask = ~drop_base[base_offset : base_offset + n]
                        base_offset += n
                        chunk = {k: np.asarray(v)[mask] for k, v in chunk.items()}
                    store.append(tmp, without_dropped(chunk))
                    written += _count(chunk)
                counts.append((base, written))
            except Exception as exc:
                raise OSError(
                    f"cannot read the existing results {base} ({type(exc).__name__}: {exc}); "
                    "it was left unchanged. Move it away (its rows are then evaluated "
                    "again) or restore it, then run again."
                ) from exc
        for path in good:
            counts.append((path, 0))
            for chunk in _store_of(source_store, path).iter_chunks(path):
                n = _count(chunk)
                if keep is not None:
                    mask = keep[offset : offset + n]
                    offset += n
                    if not mask.all():
                        chunk = {k: np.asarray(v)[mask] for k, v in chunk.items()}
                        n = int(mask.sum())
                if n:
                    pending.append(without_dropped(chunk))
                    pending_rows += n
                    written += n
                    counts[-1] = (path, counts[-1][1] + n)
                    if pending_rows >= MERGE_ROWS:
                        flush()
        flush()
        if not store.exists(tmp):
            store.save(tmp, {k: [] for k in keys})
        if callable(metadata):
            metadata = metadata(counts)
        if metadata is None:
            metadata = _inputs_metadata(store, base if has_base else None, good, source_store)
        if metadata and store.supports_metadata:
            # Written to the temporary file: the result appears with it or not at all.
            store.write_metadata(tmp, metadata)
        store.replace(tmp, dest)
    except BaseException:
        store.remove(tmp)
        raise
    return written


def _inputs_metadata(store, base: str | None, sources: list[str], source_store) -> dict:
    """Return the metadata a merge of `base` and `sources` keeps (see :func:`write_merged`)."""
    from psyrun.provenance import combine

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
