"""The interface every store implements (no implementation lives here).

A store keeps a table of equal-length columns in one file and can grow it by
appending chunks of rows. The core is :meth:`Store.save`, :meth:`Store.load`
and :meth:`Store.append`; the row-range, chunk and row-count methods have
defaults built on :meth:`Store.load` which a store overrides when it can do
better, and says so with the ``supports_*`` flags.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["Store"]

#: Rows per chunk used by :meth:`Store.iter_chunks` when not told otherwise.
DEFAULT_CHUNK_ROWS = 65536


class Store(abc.ABC):
    """A file of columnar results that grows by appending chunks of rows.

    ``data`` passed to :meth:`save` and :meth:`append` is a mapping of
    equal-length columns (lists or arrays; an array column may hold an n-d
    array per row). Every store shares these semantics:

    * chunks whose per-row arrays differ in shape are padded to the enclosing
      shape: NaN for floats (integers and booleans are promoted to float),
      ``''`` for strings, ``None`` for objects;
    * a key present in only some chunks is filled with that missing value for
      the other rows, so all columns always have the same length;
    * :meth:`load` returns a dict of NumPy arrays (object arrays for general
      values); ``load(filename, row=i)`` returns one-element columns.

    Attributes
    ----------
    ext : str
        File extension including the dot, for example ``'.pkl'``.
    supports_row_range : bool
        :meth:`load_rows` reads only the requested rows.
    supports_chunks : bool
        :meth:`iter_chunks` does not load the whole file at once.
    supports_row_count : bool
        :meth:`count_rows` does not load the whole file.

    Notes
    -----
    For implementers: :meth:`append` must create a missing file, and is
    called from several processes only under a
    :class:`psyrun.store.locking.FileLock`, so it needs no locking of its
    own. The defaults of :meth:`load_rows`, :meth:`iter_chunks` and
    :meth:`count_rows` load the whole file; override them (and set the flag)
    when the format allows better.
    """

    ext: str = ""
    supports_row_range: bool = False
    supports_chunks: bool = False
    supports_row_count: bool = False

    @abc.abstractmethod
    def save(self, filename: str, data: Mapping[str, Any]) -> None:
        """Write ``data`` to ``filename``, replacing any existing file."""

    @abc.abstractmethod
    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read all columns, or only row ``row`` as one-element columns."""

    @abc.abstractmethod
    def append(self, filename: str, data: Mapping[str, Any]) -> None:
        """Add the rows of ``data`` to ``filename``, creating it if missing."""

    def load_rows(self, filename: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """Read rows ``start:stop`` (slice semantics).

        Note for implementers: the default loads the whole file.
        """
        return {k: v[start:stop] for k, v in self.load(filename).items()}

    def iter_chunks(
        self, filename: str, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield the file's rows in order, at most ``chunk_rows`` at a time.

        Note for implementers: the default uses :meth:`load_rows` when
        ``supports_row_range`` is set, otherwise it loads the whole file once.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        if self.supports_row_range:
            n = self.count_rows(filename)
            for start in range(0, n, chunk_rows):
                yield self.load_rows(filename, start, min(start + chunk_rows, n))
            return
        data = self.load(filename)
        n = len(next(iter(data.values()))) if data else 0
        for start in range(0, n, chunk_rows):
            yield {k: v[start : start + chunk_rows] for k, v in data.items()}

    def count_rows(self, filename: str) -> int:
        """Count the rows in ``filename``.

        Note for implementers: the default loads the whole file.
        """
        data = self.load(filename)
        return len(next(iter(data.values()))) if data else 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
