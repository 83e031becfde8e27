"""Versions of a task: which code computed each row of a result.

A task's **version** is a short hash of the code that computes its rows: the
task file's source plus ``psy-conf.py``. Two things are left out of the hash,
so that they do not make rows look stale: comments and layout (the hash is
taken over the Python tokens), and the definition of the parameter space (the
top-level ``pspace = ...`` statements and the top-level assignments that only
feed them). Growing the space and continuing with ``psy run -c`` is the main
use of ``-c``; the rows already computed are still current.

Every run evaluates one version. When ``psy run`` plans a run it copies the
source it loaded (task file and ``psy-conf.py``) into
``<workdir>/<task>/jobs/source/`` and the job descriptions name the copy and
its version (:func:`freeze`); every job loads that copy
(:func:`psyrun.tasks.get_task`), so a task file edited during the run changes
nothing the run computes. The split job records the version in the snapshot
of the run, the process jobs check it, and the merge writes the version of
every row into the result's metadata as segments ``[[version, rows], ...]`` in
file order (:data:`ROW_VERSIONS`). A merge writes the old result first and the
new rows after it, so the segments stay contiguous; when a row of a later run
replaces a row of another version (:func:`replaced_rows`), the segments are
recomputed from the per-row versions.
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import tokenize
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ROW_VERSIONS",
    "SOURCE_DIR",
    "code_digest",
    "encode_segments",
    "expand_segments",
    "freeze",
    "read_row_versions",
    "replaced_rows",
    "task_version",
]

#: Metadata key of a result: ``[[version, rows], ...]``, the version of every row in file order.
ROW_VERSIONS = "row_versions"
#: Metadata key of a result: the version of the run that wrote it.
TASK_VERSION = "task_version"
#: Directory under the task's ``jobs/`` holding the source a run evaluates.
SOURCE_DIR = "source"
#: The name of the copy of ``psy-conf.py`` in :data:`SOURCE_DIR`.
CONF_COPY = "psy-conf.py"
#: Hex digits of a version.
VERSION_DIGITS = 16

_SKIPPED_TOKENS = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER})


def _space_lines(source: str) -> set[int]:
    """Line numbers (1-based) of the top-level statements that only define the space.

    These are the assignments to ``pspace`` and, repeatedly, the top-level
    assignments to plain names that nothing but such statements reads.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    body = tree.body

    def targets(stmt) -> set[str] | None:
        if isinstance(stmt, ast.Assign):
            found = stmt.targets
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            found = [stmt.target]
        else:
            return None
        if not all(isinstance(t, ast.Name) for t in found):
            return None
        return {t.id for t in found}

    def reads(stmt) -> set[str]:
        return {
            n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
        }

    space: set[int] = set()
    for i, stmt in enumerate(body):
        names = targets(stmt)
        if names == {"pspace"}:
            space.add(i)
    if not space:
        return set()
    read_by = [reads(stmt) for stmt in body]
    changed = True
    while changed:
        changed = False
        used_elsewhere = set().union(*(read_by[i] for i in range(len(body)) if i not in space))
        used_by_space = set().union(*(read_by[i] for i in space))
        for i, stmt in enumerate(body):
            if i in space:
                continue
            names = targets(stmt)
            if names and names <= used_by_space and not names & used_elsewhere:
                space.add(i)
                changed = True
    lines: set[int] = set()
    for i in space:
        stmt = body[i]
        lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    # A line shared with a statement that stays (``a = 1; pspace = ...``) is kept.
    for i, stmt in enumerate(body):
        if i not in space:
            lines.difference_update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return lines


def code_digest(source: str | bytes) -> str:
    """Return the SHA-256 (hex) of the code in `source`, without comments, layout and space.

    Falls back to the bytes themselves when the source does not tokenize.
    """
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            return hashlib.sha256(source).hexdigest()
    digest = hashlib.sha256()
    skip = _space_lines(source)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in _SKIPPED_TOKENS or tok.start[0] in skip:
                continue
            digest.update(f"{tok.type}\x00{tok.string}\x01".encode())
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
    return digest.hexdigest()


def task_version(source: str | bytes, conf_source: str | bytes | None = None) -> str:
    """Return the version of a task: a hash of its file's code and of ``psy-conf.py``'s."""
    digest = hashlib.sha256(b"psyrun task version 1\x00")
    digest.update(code_digest(source).encode())
    digest.update(b"\x00")
    if conf_source is not None:
        digest.update(code_digest(conf_source).encode())
    return digest.hexdigest()[:VERSION_DIGITS]


# -- the source of a run --------------------------------------------------------


def source_dir(jobs_dir: str) -> str:
    """Return the directory holding the source a run evaluates (under ``jobs/``)."""
    return os.path.join(jobs_dir, SOURCE_DIR)


def freeze(task, jobs_dir: str) -> dict[str, Any]:
    """Copy the source `task` was loaded from into `jobs_dir`; return job description fields.

    The copy holds the bytes psy loaded (not the file as it is now), so that
    the jobs evaluate exactly the task the run was planned with. The fields
    are ``task_version``, ``task_source`` and ``conf_source`` (None without
    ``psy-conf.py``).
    """
    from psyrun.atomic import atomic_write

    source = getattr(task, "source", None)
    if source is None:
        return {}
    where = source_dir(jobs_dir)
    os.makedirs(where, exist_ok=True)
    copies: dict[str, Any] = {"task_version": task.version}
    for key, name, text in (
        ("task_source", os.path.basename(task.path), source),
        ("conf_source", CONF_COPY, task.conf_source),
    ):
        path = os.path.join(where, name)
        if text is None:
            copies[key] = None
            if os.path.exists(path):
                os.remove(path)
            continue
        data = text.encode("utf-8") if isinstance(text, str) else text
        try:
            with open(path, "rb") as f:
                same = f.read() == data
        except OSError:
            same = False
        if not same:
            with atomic_write(path, "wb") as f:
                f.write(data)
        copies[key] = path
    return copies


# -- the version of every row -----------------------------------------------------


def _count_rows(store, path: str) -> int | None:
    try:
        return int(store.count_rows(path))
    except Exception:
        return None


def read_row_versions(store, path: str, n_rows: int | None = None) -> list[list] | None:
    """Return the ``[[version, rows], ...]`` segments of a result, None when unknown.

    Unknown: the store keeps no metadata, the file records no versions
    (written by an older psyrun, or by hand), or the segments do not add up
    to the file's rows (rows were added to it by something else).
    """
    if not getattr(store, "supports_metadata", False):
        return None
    try:
        meta = store.read_metadata(path)
    except Exception:
        return None
    segments = meta.get(ROW_VERSIONS) if isinstance(meta, Mapping) else None
    if not isinstance(segments, list):
        return None
    out = []
    for seg in segments:
        if (
            not isinstance(seg, (list, tuple))
            or len(seg) != 2
            or not isinstance(seg[1], int)
            or seg[1] < 0
            or not (seg[0] is None or isinstance(seg[0], str))
        ):
            return None
        out.append([seg[0], seg[1]])
    if n_rows is None:
        n_rows = _count_rows(store, path)
    if n_rows is None or sum(s[1] for s in out) != n_rows:
        return None
    return out


def expand_segments(segments: Sequence[Sequence], names: list) -> np.ndarray:
    """Return one code per row: the index of its version in `names` (extended as needed)."""
    codes = []
    for version, n in segments:
        if version not in names:
            names.append(version)
        codes.append(np.full(int(n), names.index(version), dtype=np.int32))
    return np.concatenate(codes) if codes else np.zeros(0, dtype=np.int32)


def encode_segments(codes: np.ndarray, names: list) -> list[list]:
    """Return the ``[[version, rows], ...]`` run-length encoding of per-row `codes`."""
    codes = np.asarray(codes)
    if not len(codes):
        return []
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], len(codes)]
    return [[names[int(codes[s])], int(e - s)] for s, e in zip(starts, ends)]


def append_segment(segments: list[list], version: str | None, n: int) -> None:
    """Add `n` rows of `version` at the end of `segments` (joining an equal last segment)."""
    if n <= 0:
        return
    if segments and segments[-1][0] == version:
        segments[-1][1] += int(n)
    else:
        segments.append([version, int(n)])


def replaced_rows(
    base_params: Mapping[str, np.ndarray],
    base_codes: np.ndarray,
    new_params: Mapping[str, np.ndarray],
    new_code: int,
) -> np.ndarray | None:
    """Rows of the base that rows of a later run replace; None when none do.

    A base row is replaced when a new row has the same assignment and the
    base row was computed by another version (`base_codes` hold the base
    rows' versions, `new_code` the new rows'). Rows of the same version are
    duplicates, and the base keeps them.
    """
    from psyrun.pspace import Param
    from psyrun.results.merge import missing_rows

    if not base_params or not new_params:
        return None
    other = np.flatnonzero(np.asarray(base_codes) != new_code)
    if not len(other):
        return None
    n_new = len(next(iter(new_params.values())))
    if not n_new or set(base_params) != set(new_params):
        return None
    candidates = Param(**{k: np.asarray(v)[other] for k, v in base_params.items()})
    kept = missing_rows(candidates, dict(new_params))
    drop = np.ones(len(other), dtype=bool)
    drop[kept] = False
    if not drop.any():
        return None
    mask = np.zeros(len(base_codes), dtype=bool)
    mask[other[drop]] = True
    return mask


# -- merging and counting -----------------------------------------------------------


def _segments(store, base: str | None) -> list[list]:
    """Return the ``[[version, rows], ...]`` of the result `base` (unknown: one None segment)."""
    if base is None or not store.exists(base):
        return []
    n = _count_rows(store, base)
    if not n:
        return []
    return read_row_versions(store, base, n) or [[None, n]]


def _base_codes(store, base: str | None, names: list) -> np.ndarray:
    """Per-row version codes of the result `base` (one unknown segment when not recorded)."""
    if base is None or not store.exists(base):
        return np.zeros(0, dtype=np.int32)
    n = _count_rows(store, base)
    if not n:
        return np.zeros(0, dtype=np.int32)
    segments = read_row_versions(store, base, n) or [[None, n]]
    return expand_segments(segments, names)


def merge_versions(
    store,
    base: str | None,
    sources: list[str],
    keys: list[str],
    sources_version: str | None,
    source_store,
    metadata: Mapping[str, Any] | None = None,
    also_drop: np.ndarray | None = None,
):
    """Prepare a merge of `sources` (rows of one run) into the result `base`.

    Returns ``(drop_base, metadata)`` for :func:`psyrun.results.merge.write_merged`:
    the rows of `base` that rows of the sources replace (same assignment,
    another version, or the rows `also_drop` marks; None when none), and a
    function that returns `metadata` (default: the base's) with the
    :data:`ROW_VERSIONS` segments of the merged file, given what the merge
    wrote from each input.
    """
    from psyrun.results.merge import load_params

    has_base = base is not None and store.exists(base)
    names: list = []
    base_codes = _base_codes(store, base if has_base else None, names)
    if sources_version not in names:
        names.append(sources_version)
    new_code = names.index(sources_version)
    drop = None
    if has_base and sources and len(base_codes) and (base_codes != new_code).any():
        drop = replaced_rows(
            load_params(store, [base], keys),
            base_codes,
            load_params(source_store, sources, keys),
            new_code,
        )
    if has_base and also_drop is not None and len(also_drop) == len(base_codes):
        drop = also_drop if drop is None else drop | also_drop
    if metadata is None:
        try:
            metadata = store.read_metadata(base) if has_base else {}
        except Exception:
            metadata = {}

    def with_segments(counts: list[tuple[str, int]]) -> dict[str, Any]:
        segments: list[list] = []
        for i, (_, n) in enumerate(counts):
            if i == 0 and has_base:
                kept = base_codes if drop is None else base_codes[~drop]
                if len(kept) == n:
                    for version, k in encode_segments(kept, names):
                        append_segment(segments, version, k)
                else:  # the base changed under the merge: what it held is unknown
                    append_segment(segments, None, n)
            else:
                append_segment(segments, sources_version, n)
        out = {k: v for k, v in dict(metadata or {}).items() if k != ROW_VERSIONS}
        out[ROW_VERSIONS] = segments
        return out

    return drop, with_segments


def version_counts(
    store,
    result: str,
    parts: list[str],
    keys: list[str],
    parts_version: str | None,
    source_store,
) -> dict:
    """Return ``{version: rows}`` of the rows a merge of `parts` into `result` would hold.

    Part rows replace result rows of another version, as in the merge.
    Part rows that repeat result rows of the same version (left by a crash
    after a merge) are counted too: a stale row is never left out.
    """
    from psyrun.results.merge import load_params

    counts: dict = {}
    n_parts = 0
    for path in parts:
        n = _count_rows(source_store(path) if callable(source_store) else source_store, path)
        n_parts += n or 0
    segments = _segments(store, result)
    if not n_parts or all(version == parts_version for version, _ in segments):
        # No part row replaces a row of another version: count the segments,
        # without one code per row (10^8 rows would take 400 MB).
        for version, n in segments:
            counts[version] = counts.get(version, 0) + int(n)
        if n_parts:
            counts[parts_version] = counts.get(parts_version, 0) + n_parts
        return counts
    names: list = []
    base_codes = _base_codes(store, result, names)
    if parts_version not in names:
        names.append(parts_version)
    code = names.index(parts_version)
    if n_parts and len(base_codes) and (base_codes != code).any():
        drop = replaced_rows(
            load_params(store, [result], keys),
            base_codes,
            load_params(source_store, parts, keys),
            code,
        )
        if drop is not None:
            base_codes = base_codes[~drop]
    for c, n in zip(*np.unique(base_codes, return_counts=True)):
        counts[names[int(c)]] = counts.get(names[int(c)], 0) + int(n)
    if n_parts:
        counts[parts_version] = counts.get(parts_version, 0) + n_parts
    return counts


def stale_note(task, counts: Mapping, total: int | None = None) -> str | None:
    """Return what ``psy status`` and ``psy run`` say about rows of other versions (or None)."""
    current = task.version
    stale = sum(n for v, n in counts.items() if v is not None and v != current)
    if not stale:
        return None
    rows = sum(counts.values()) if total is None else total
    name = task.name
    return (
        f"{stale} of {rows} rows were computed by an older version of "
        f"{os.path.basename(task.path)} (its code changed since); `psy run -c --stale {name}` "
        f"recomputes only those rows, `psy run {name}` recomputes every row"
    )
