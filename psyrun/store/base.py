"""The interface every store implements, and the algorithm they share.

A store keeps a table of equal-length columns in one file (or directory) and
can grow it by appending chunks of rows. :meth:`Store.save` and
:meth:`Store.append` are template methods: the base class normalises and
checks the data, creates a missing file, skips empty chunks, and either lets
the store extend the file in place or rewrites it whole (under a temporary
name, synced, then renamed). A store supplies only the format-specific steps.
The row-range, chunk and row-count methods have defaults built on
:meth:`Store.load`; a store overrides them when it can do better and says so
with the ``supports_*`` flags.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import importlib
import json
import os
import time
from collections.abc import Collection, Iterator, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from psyrun.atomic import remove_path, replace_path, tmp_name
from psyrun.durability import fsync
from psyrun.exceptions import DamagedFileError
from psyrun.store.columns import (
    count,
    find_unpicklable,
    find_unsupported,
    merge_chunks,
    normalize,
    resolve_row,
)

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "NotAResultError",
    "Store",
    "UnsupportedValueError",
    "damage_on_error",
    "disk_full_error",
    "free_bytes",
    "raise_if_disk_full",
]

#: Rows per chunk used by :meth:`Store.iter_chunks` when not told otherwise.
DEFAULT_CHUNK_ROWS = 65536


class UnsupportedValueError(TypeError):
    """A result value that the store cannot hold.

    The message names the key, the type of the value and the ways out
    (``exclude_from_result`` for an output, or another store).

    Attributes
    ----------
    key : str or None
        The column whose value the store cannot hold.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def _big_ints_with_gaps(column: np.ndarray) -> bool:
    """Tell whether ``column`` holds integers beyond float64's exact range and None (missing)."""
    if column.dtype.kind != "O":
        return False
    ints = [v for v in column.flat if v is not None]
    return (
        len(ints) < column.size
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ints)
        and any(abs(int(v)) > 2**53 for v in ints)
    )


class NotAResultError(DamagedFileError, ValueError):
    """A file that does not hold a result of the store reading it.

    Both a :class:`~psyrun.exceptions.DamagedFileError` (a result psyrun
    wrote that lost its first bytes looks the same) and a :class:`ValueError`
    (the error of earlier versions: a file of another kind under the name).
    """


# Errors that say something other than "the file is damaged" and pass through.
_NOT_DAMAGE = (
    DamagedFileError,
    ImportError,
    IndexError,
    MemoryError,
    PermissionError,
    IsADirectoryError,
)


@contextlib.contextmanager
def damage_on_error(filename: str) -> Iterator[None]:
    """Turn any error while reading the existing result ``filename`` into DamagedFileError.

    Parameters
    ----------
    filename
        The result being read; when it does not exist at all, a
        :class:`FileNotFoundError` passes through unchanged (nothing is
        damaged, the result is missing).

    Notes
    -----
    For stores: wrap the reading of a file in it, so that whatever a format
    library raises for a truncated or changed file (``EOFError``,
    ``UnpicklingError``, ``BadZipFile``, ``HDF5ExtError``, a JSON error) is
    reported as damage, naming the file. A missing library, a row out of
    range and a full memory are not damage and pass through.
    """
    try:
        yield
    except _NOT_DAMAGE:
        raise
    except OSError as exc:
        if getattr(exc, "psyrun_disk_full", False):
            raise  # a refusal to write, not damage
        if isinstance(exc, FileNotFoundError):
            if not os.path.lexists(filename):
                raise
            raise DamagedFileError(f"{filename} is damaged: a part of it is missing") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DamagedFileError(
            f"{filename} is damaged: it cannot be read ({type(exc).__name__}: {first})"
        ) from exc
    except FileNotFoundError:
        if not os.path.lexists(filename):
            raise
        raise DamagedFileError(f"{filename} is damaged: a part of it is missing") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DamagedFileError(
            f"{filename} is damaged: it cannot be read ({type(exc).__name__}: {first})"
        ) from exc


def free_bytes(path: str) -> int | None:
    """Free bytes for unprivileged users on the filesystem holding ``path``."""
    directory = path
    while directory and not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    try:
        st = os.statvfs(directory or ".")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _is_disk_full(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        # HDF5 reports the system error in its own error stack, as text.
        if "No space left on device" in text or "errno = 28" in text:
            return True
        # zarr writes chunks concurrently and may gather their errors.
        if any(map(_is_disk_full, getattr(exc, "exceptions", ()) or ())):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


#: A write that failed with less than this much space left failed for want of space.
_FULL_MARGIN = 1 << 20


def disk_full_error(path: str, free: int | None, needed: int) -> OSError:
    """Return the ``OSError(ENOSPC)`` of a write refused for want of space, naming ``path``."""
    error = OSError(
        errno.ENOSPC,
        f"{path}: disk full ({free} bytes free, the write needs about {needed}); "
        "free some space and run again, the file was not changed",
        path,
    )
    error.psyrun_disk_full = True
    return error


def raise_if_disk_full(exc: BaseException, path: str, needed: int = 0) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``path`` when ``exc`` came from a full disk.

    Some libraries wrap the system's error (HDF5 reports it in its own
    errors, or as a missing node); so a failed write also counts as a full
    disk when the filesystem has less free space left than ``needed`` bytes
    plus 1 MiB. Returns (the caller re-raises ``exc``) otherwise.

    Parameters
    ----------
    exc
        The error a write raised.
    path
        The file (or directory) being written.
    needed
        Bytes the write needed, when known.
    """
    free = free_bytes(path)
    ours = getattr(exc, "psyrun_disk_full", False)
    if ours and getattr(exc, "filename", None) == path:
        raise exc  # already says so, naming this file
    if ours or _is_disk_full(exc) or (free is not None and free < needed + _FULL_MARGIN):
        where = f"{free} bytes free" if free is not None else "no space left"
        cause = "" if ours else f"; {type(exc).__name__}: {_first_line(exc)}"
        error = OSError(
            errno.ENOSPC,
            f"{path}: disk full ({where}{cause}); free some space and run again, "
            "nothing already written was changed",
            path,
        )
        error.psyrun_disk_full = True
        raise error from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "write failed"


def _sync(path: str) -> None:
    """Flush a file, or every file and directory of a tree, to disk."""
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for name in files:
                _sync_one(os.path.join(root, name))
            _sync_one(root)
    else:
        _sync_one(path)


def _sync_one(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        # Some filesystems refuse fsync on a directory; the data is written anyway.
        with contextlib.suppress(OSError):
            fsync(fd)  # (left to a local scheduler by a local process job)
    finally:
        os.close(fd)


def _as_json_dict(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Return a JSON round trip of ``metadata`` (what every store gives back)."""
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata), allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"metadata must hold only str, numbers, bool, None, lists and dicts ({exc})"
        ) from None


def _nbytes(data: Mapping[str, np.ndarray]) -> int:
    return sum(int(getattr(v, "nbytes", 0)) for v in data.values())


def _write_failed_for_space(exc: Exception, path: str, data: Mapping[str, np.ndarray]) -> bool:
    if _is_disk_full(exc):
        return True
    free = free_bytes(path)
    return free is not None and free < _nbytes(data) + _FULL_MARGIN


class Store(abc.ABC):
    """A file of columnar results that grows by appending chunks of rows.

    ``data`` passed to :meth:`save` and :meth:`append` is a mapping of
    equal-length columns (lists or arrays; an array column may hold an n-d
    array per row). Every store shares these semantics:

    * chunks whose per-row arrays differ in shape are padded to the enclosing
      shape: NaN for floats, ``''`` for strings, ``None`` for objects;
      integers and booleans are promoted to float when every integer is
      exact as a float64 (``|x| <= 2**53``), else kept exact in an object
      column with ``None`` (which stores without objects refuse); NaN in a
      str column marks a missing value and becomes ``''``;
    * a key present in only some chunks is filled with that missing value for
      the other rows, so all columns always have the same length;
    * :meth:`load` returns a dict of NumPy arrays (object arrays for general
      values); ``load(filename, row=i)`` returns one-element columns;
    * a damaged file (truncated, changed, lacking a member) raises
      :class:`~psyrun.exceptions.DamagedFileError` from every read, and a
      write on a full disk raises ``OSError(ENOSPC)`` and leaves the file
      as it was.

    Attributes
    ----------
    ext : str
        File extension including the dot, for example ``'.pkl'``.
    library : str or None
        The module the store imports on first use (``'tables'``, ``'zarr'``),
        None when it needs none; :meth:`preload` imports it.
    requirement : str or None
        What ``pip install`` needs to get `library`, e.g. ``'psyrun[h5]'``.
    column_kinds : str or None
        NumPy dtype kinds of the columns the format holds (``'biufcU'``:
        numbers, booleans, str); None for any picklable value.
    supports_row_range : bool
        :meth:`load_rows` reads only the requested rows.
    supports_chunks : bool
        :meth:`iter_chunks` does not load the whole file at once.
    supports_row_count : bool
        :meth:`count_rows` does not load the whole file.
    supports_metadata : bool
        The file can carry a dict of metadata (:meth:`write_metadata`,
        :meth:`read_metadata`) that :meth:`load` ignores.
    appends_survive_kill : bool
        An append killed part way (``kill -9``) leaves the rows committed
        before it readable and the file appendable, at the cost of the rows
        being appended (``tests/test_store_crash.py`` checks it). With
        :attr:`supports_chunks` too, process jobs write their part files in
        this format, and the merge copies them chunk by chunk.
    write_whole : bool
        Only a file written in one piece has the format's plain layout (an
        NPZ file that was appended to holds later rows in extra members, so
        ``numpy.load(f)[name]`` would give only the first piece): merges
        write such a store's result with a single :meth:`save`.

    Notes
    -----
    Note for implementers: implement :meth:`load` and :meth:`_write_file`
    (write a whole new file at a fresh path); the base class then provides
    :meth:`save` and :meth:`append` (an append rewrites the file through
    :meth:`_write_file`). To append without rewriting, also implement
    :meth:`_append_in_place`. A store may instead override :meth:`save` and
    :meth:`append` outright. :meth:`append` is called from several processes
    only under a :class:`psyrun.store.locking.FileLock`, so it needs no
    locking of its own. A format that is not one plain file (a directory, a
    file with side files) overrides :meth:`exists`, :meth:`remove` and
    :meth:`replace`, so that no code outside the store needs to know. To
    carry metadata, set :attr:`supports_metadata` and implement
    :meth:`_read_metadata` and :meth:`_write_metadata`; the base class keeps
    the metadata when an append rewrites the file.
    """

    ext: str = ""
    library: str | None = None
    requirement: str | None = None
    column_kinds: str | None = None
    #: How the format writes str values (h5, zarr: ``'utf-8'``); None: as Python objects.
    #: Strings that cannot be encoded (surrogates) are then refused by :meth:`check`.
    text_encoding: str | None = None
    supports_row_range: bool = False
    supports_chunks: bool = False
    supports_row_count: bool = False
    supports_metadata: bool = False
    appends_survive_kill: bool = False
    write_whole: bool = False

    # -- the public interface --------------------------------------------------

    def save(self, filename: str | os.PathLike, data: Mapping[str, Any]) -> None:
        """Write ``data`` to ``filename``, replacing any existing file.

        The file is written under a temporary name and renamed into place,
        so a crash leaves either the old file or the new one.
        """
        filename = os.fspath(filename)
        self._write_whole(filename, self._prepare(data))

    def append(self, filename: str | os.PathLike, data: Mapping[str, Any]) -> None:
        """Add the rows of ``data`` to ``filename``, creating it if missing.

        The rows are written in place when the store can (see
        :meth:`_append_in_place`); otherwise the file is rewritten once with
        the old and the new rows merged.
        """
        filename = os.fspath(filename)
        new = self._prepare(data)
        if not self.exists(filename):
            self._write_whole(filename, new)
            return
        if count(new) == 0:
            # No rows: nothing to add (and no column may change type because of it).
            return
        if not self._append_checked(filename, new):
            self._rewrite(filename, new)

    @abc.abstractmethod
    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Read all columns, or only row ``row`` as one-element columns."""

    def check(
        self,
        data: Mapping[str, Any],
        filename: str | None = None,
        params: Collection[str] = (),
    ) -> None:
        """Check that the store can hold ``data``, without writing anything.

        Parameters
        ----------
        data
            A mapping of equal-length columns, as :meth:`append` takes.
        filename
            The file the rows are meant for, when known (a store chosen by
            file name, like :class:`~psyrun.store.AutodetectStore`, needs it).
        params
            The keys of ``data`` that are parameters rather than outputs:
            the message for such a key does not advise
            ``exclude_from_result`` (a parameter must stay in the result).

        Raises
        ------
        UnsupportedValueError
            For a value the store cannot hold (also one that cannot be
            pickled, for stores that pickle); the message names the key.
        TypeError, ValueError
            When ``data`` is not a mapping of equal-length columns.
        """
        try:
            columns = self._prepare(data)
            if self.column_kinds is None:
                error = self._unpicklable(columns)
                if error is not None:
                    raise error
        except UnsupportedValueError as exc:
            if exc.key is None or exc.key not in params or "exclude_from_result" not in str(exc):
                # Not a parameter, or advice that fits a parameter as well.
                raise
            raise UnsupportedValueError(
                f"{type(self).__name__} cannot hold the values of the parameter {exc.key!r} "
                f"({str(exc).split('(', 1)[-1].split(')', 1)[0]}): every row of the result "
                "holds its parameters, so give it values of one kind the store holds "
                "(numbers, booleans or str), or use a store that can hold them (PickleStore).",
                exc.key,
            ) from None

    def exists(self, filename: str) -> bool:
        """Whether ``filename`` holds a result of this store."""
        return os.path.exists(filename)

    def remove(self, filename: str) -> None:
        """Remove the result ``filename`` (nothing happens when there is none)."""
        remove_path(filename)

    def replace(self, src: str, dest: str) -> None:
        """Put the finished result ``src`` in place of ``dest``, durably.

        ``src`` is synced to disk and renamed over ``dest`` (whose directory
        is synced too). Use a name from :func:`psyrun.atomic.tmp_name` for
        ``src``: stores whose results are directories recognise those names
        when a replace was interrupted.
        """
        _sync(src)
        replace_path(src, dest)

    def preload(self) -> ModuleType | None:
        """Import the store's :attr:`library` now (e.g. once, before forking jobs).

        Returns
        -------
        module or None
            The imported module, or None for a store that needs none.

        Raises
        ------
        ImportError
            When the library is missing; the message says what to install.
        """
        if self.library is None:
            return None
        try:
            return importlib.import_module(self.library)
        except ImportError:
            raise ImportError(self.missing_library_message()) from None

    def missing_library_message(self) -> str:
        """Return the one-line message for a missing :attr:`library`: what to install."""
        return (
            f"{type(self).__name__} needs the {self.library!r} package; "
            f"install it with `pip install {self.requirement or self.library}`"
        )

    def read_metadata(self, filename: str | os.PathLike) -> dict[str, Any]:
        """Return the metadata dict stored with the result ``filename``.

        Returns an empty dict when the file has none (written before psyrun
        recorded it, by hand, or by a store without :attr:`supports_metadata`).
        """
        if not self.supports_metadata:
            return {}
        return dict(self._read_metadata(os.fspath(filename)) or {})

    def write_metadata(self, filename: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
        """Replace the metadata of the existing result ``filename``; its rows stay as they are.

        Parameters
        ----------
        filename
            An existing result of this store.
        metadata
            A dict that JSON can represent (str keys; str, numbers, bool,
            None, lists and dicts as values).

        Raises
        ------
        NotImplementedError
            For a store without :attr:`supports_metadata`.
        TypeError
            When ``metadata`` is not JSON-serialisable.
        """
        if not self.supports_metadata:
            raise NotImplementedError(f"{type(self).__name__} cannot store metadata")
        self._write_metadata(os.fspath(filename), _as_json_dict(metadata))

    def load_rows(self, filename: str, start: int, stop: int | None) -> dict[str, np.ndarray]:
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
        n = count(data)
        for start in range(0, n, chunk_rows):
            yield {k: v[start : start + chunk_rows] for k, v in data.items()}

    def count_rows(self, filename: str) -> int:
        """Count the rows in ``filename``.

        Note for implementers: the default loads the whole file.
        """
        return count(self.load(filename))

    def verify(self, filename: str) -> int:
        """Read the whole file back, check it and return its row count.

        Used before anything the file replaces is removed (a merged result
        before its parts, a new result before the old one). Raises
        :class:`psyrun.exceptions.DamagedFileError` when the file cannot be
        read completely and correctly.

        Note for implementers: the default reads every chunk; a format with
        row counts or checksums of its own checks them here.
        """
        from psyrun.exceptions import DamagedFileError

        try:
            return sum(count(chunk) for chunk in self.iter_chunks(filename))
        except DamagedFileError:
            raise
        except Exception as exc:
            raise DamagedFileError(
                f"{filename} cannot be read back ({type(exc).__name__}: {exc})"
            ) from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- steps for implementers ------------------------------------------------

    def _write_file(self, path: str, data: dict[str, np.ndarray]) -> None:
        """Write ``data`` as a complete new file (or directory) at ``path``.

        Note for implementers: ``path`` does not exist; ``data`` is normalised
        and checked. Do not sync or rename: the base class writes to a
        temporary name, then calls :meth:`replace`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement _write_file, or override save and append"
        )

    def _read_metadata(self, filename: str) -> dict[str, Any] | None:
        """Return the stored metadata of ``filename``, None when it has none.

        Note for implementers: a file without metadata (any file the store
        could read before) must give None, never an error.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _read_metadata")

    def _write_metadata(self, path: str, metadata: dict[str, Any]) -> None:
        """Store ``metadata`` (a JSON-compatible dict) in the existing ``path``.

        Note for implementers: ``path`` may be the temporary name of a file
        being written; replace metadata written before. :meth:`load` must
        return exactly what it returned without it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _write_metadata")

    def _append_in_place(self, filename: str, data: dict[str, np.ndarray]) -> bool:
        """Add the rows of ``data`` to the existing ``filename`` without rewriting it.

        Note for implementers: called with at least one row of normalised,
        checked data. Return False, having changed nothing, when the chunk
        does not fit the file (other keys, types or per-row shapes); the
        base class then rewrites the file. The default always returns False.
        """
        return False

    def _check_columns(self, data: dict[str, np.ndarray]) -> None:
        """Raise :class:`UnsupportedValueError` for a column the format cannot hold.

        Note for implementers: called on every chunk before anything is
        written, so keep it cheap. The default refuses dtype kinds outside
        :attr:`column_kinds`; override it for other rules (reserved names).
        """
        if self.column_kinds is None:
            return
        if self.text_encoding is not None:
            self._check_text(data)
        found = find_unsupported(data, self.column_kinds)
        if found is not None:
            key, what = found
            if _big_ints_with_gaps(data[key]):
                raise UnsupportedValueError(
                    f"{type(self).__name__} cannot hold the value of {key!r} (integers "
                    "beyond 2**53 with no value on some rows): a missing value would make "
                    "the column float64, which rounds such integers. Return it on every "
                    "row, or use PickleStore or NpzStore, which keep them exact (None "
                    "marks the missing rows).",
                    key,
                )
            raise UnsupportedValueError(
                f"{type(self).__name__} cannot hold the value of {key!r} ({what}): "
                "it stores only numbers, booleans and str. List it in "
                "exclude_from_result, or use a store that can hold it (PickleStore).",
                key,
            )

    def _check_text(self, data: dict[str, np.ndarray]) -> None:
        """Refuse str columns holding surrogates, which no Unicode encoding can write."""
        for key, column in data.items():
            if column.dtype.kind != "U" or not column.size:
                continue
            # A str array is UTF-32 underneath: look for the surrogate code points at once.
            points = np.ascontiguousarray(column).view(np.uint32)
            bad = (points >= 0xD800) & (points <= 0xDFFF)
            if bad.any():
                flat = np.ascontiguousarray(column).reshape(-1)
                first = next(v for v in flat if any(0xD800 <= ord(c) <= 0xDFFF for c in v))
                raise UnsupportedValueError(
                    f"{type(self).__name__} cannot hold the value of {key!r} ({str(first)!r}): "
                    f"it writes text as {self.text_encoding}, and this string is not valid "
                    "Unicode text (it holds a surrogate, as os.fsdecode makes of bytes that "
                    "are not UTF-8). Decode such text properly, or use PickleStore or "
                    "NpzStore, which keep any str.",
                    key,
                )

    # -- the shared algorithm --------------------------------------------------

    def _prepare(self, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
        columns = normalize(data)
        self._check_columns(columns)
        return columns

    def _unpicklable(self, data: dict[str, np.ndarray]) -> UnsupportedValueError | None:
        """Return the error naming the first value of ``data`` that cannot be pickled, if any.

        For stores that pickle values: they call it when serialising a chunk
        failed, to turn the pickle error into one that names the key.
        """
        found = find_unpicklable(data)
        if found is None:
            return None
        key, what, reason = found
        return UnsupportedValueError(
            f"{type(self).__name__} cannot hold the value of {key!r} ({what}): it cannot "
            f"be pickled ({reason}). List it in exclude_from_result, or return a value "
            "that can be pickled.",
            key,
        )

    @contextlib.contextmanager
    def _pickling(self, data: dict[str, np.ndarray]) -> Iterator[None]:
        """Turn a failure to pickle a value of ``data`` into an error naming its key.

        Note for implementers: wrap the serialisation of a chunk in it when
        the format pickles values; write nothing to the file inside it.
        """
        try:
            yield
        except Exception as exc:
            error = self._unpicklable(data)
            if error is None:
                raise
            raise error from exc

    def _write_whole(
        self, filename: str, data: dict[str, np.ndarray], metadata: dict | None = None
    ) -> None:
        tmp = tmp_name(filename)
        remove_path(tmp)  # left by a killed write of an earlier process with this pid
        try:
            self._write_file(tmp, data)
            if metadata:
                self._write_metadata(tmp, metadata)
        except BaseException as exc:
            # Measure the free space before the partial file is removed.
            full = isinstance(exc, Exception) and _write_failed_for_space(exc, tmp, data)
            remove_path(tmp)
            if os.path.lexists(tmp):
                # A library may still be finishing writes it had started.
                time.sleep(0.2)
                remove_path(tmp)
            if full:
                raise_if_disk_full(exc, filename, needed=1 << 62)
            raise
        # Not removed on failure from here on: a directory result may then
        # exist only under the temporary name (see replace).
        self.replace(tmp, filename)

    def _append_checked(self, filename: str, data: dict[str, np.ndarray]) -> bool:
        try:
            return self._append_in_place(filename, data)
        except Exception as exc:
            raise_if_disk_full(exc, filename, _nbytes(data))
            raise

    def _load_via_rows(self, filename: str, row: int | None) -> dict[str, np.ndarray]:
        """:meth:`load` for stores that read row ranges and count rows cheaply."""
        if row is None:
            return self.load_rows(filename, 0, None)
        index = resolve_row(row, self.count_rows(filename), filename)
        return self.load_rows(filename, index, index + 1)

    def _rewrite(self, filename: str, new: dict[str, np.ndarray]) -> None:
        old = self.load(filename)
        merged = merge_chunks([old, new]) if old else new
        # Merging can turn a column into objects (scalars here, arrays there).
        self._check_columns(merged)
        # The rewritten file keeps the metadata (provenance) of the old one.
        self._write_whole(filename, merged, self.read_metadata(filename) or None)
