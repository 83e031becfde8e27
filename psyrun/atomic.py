"""Atomic file writes: write under a temporary name, sync, rename.

Every file psyrun writes whole (job descriptions, markers, snapshots, counters,
results written by ``save``) goes through :func:`atomic_write`, so a crash or a
kill never leaves a half-written file under the real name. The data and the
directory entry are synced before the function returns: on NFS or Lustre a
node crash right after a rename can otherwise leave an empty file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import IO

from psyrun.durability import fsync

__all__ = ["atomic_write", "fsync_dir", "remove_path", "replace_path", "sync_tree", "tmp_name"]


def tmp_name(path: str | os.PathLike) -> str:
    """Return a hidden temporary name next to `path`, unique to this process.

    The extension is kept (``.result.tmp123.h5`` for ``result.h5``), so that
    libraries that choose a format by extension write the right one.
    """
    head, tail = os.path.split(os.fspath(path))
    base, ext = os.path.splitext(tail)
    return os.path.join(head, f".{base}.tmp{os.getpid()}{ext}")


def fsync_dir(path: str | os.PathLike) -> None:
    """Sync the directory holding `path` (makes a rename in it durable)."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        # Some filesystems refuse fsync on a directory; the rename still happened.
        with contextlib.suppress(OSError):
            fsync(fd)  # (left to a local scheduler by a local process job)
    finally:
        os.close(fd)


def sync_tree(path: str | os.PathLike) -> None:
    """Flush a file, or every file and directory of a tree, to disk.

    Unlike a directory sync, a failed file sync raises: it means written
    data may not be on disk (a full disk found only now, an I/O error).
    """
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        for root, _, files in os.walk(path):
            for name in files:
                _fsync_file(os.path.join(root, name))
            fsync_dir(os.path.join(root, "entry"))  # the directory `root` itself
    else:
        _fsync_file(path)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file or a directory tree (zarr results are directories); ignore absence."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        # NotADirectoryError: a parent is a file, so `path` cannot exist either.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.remove(path)


def replace_path(src: str | os.PathLike, dest: str | os.PathLike, sync: bool = True) -> None:
    """Rename `src` over `dest`, also when `dest` is a directory tree.

    A file replaces a file atomically. A directory (a zarr result) cannot be
    renamed over another one, so the old tree is first moved aside to a
    temporary name and removed only after the new one is in place and the
    renames are durable (a crash in between leaves both trees, which the
    store recognises: see :mod:`psyrun.store.zarr`).
    """
    src, dest = os.fspath(src), os.fspath(dest)
    if os.path.isdir(dest) and not os.path.islink(dest):
        old = tmp_name(dest + ".old")
        os.replace(dest, old)
        os.replace(src, dest)
        if sync:
            fsync_dir(dest)
        remove_path(old)
    else:
        os.replace(src, dest)
    if sync:
        fsync_dir(dest)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = None, sync: bool = True
) -> Iterator[IO]:
    """Open a temporary file for writing; on success sync it and rename it to `path`.

    Parameters
    ----------
    path
        The file to write. Its directory must exist.
    mode
        ``'w'`` (text, the default) or ``'wb'`` (binary).
    encoding
        Text encoding; default UTF-8 in text mode.
    sync
        Sync data and directory (default). False for files whose loss in a
        crash costs nothing (progress counters): each sync can take
        milliseconds on a shared filesystem.

    Yields
    ------
    file object
        Write the whole content to it. When the block raises, the temporary
        file is removed and `path` is left as it was.

    Examples
    --------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with atomic_write(os.path.join(d, "counter")) as f:
    ...     _ = f.write("42")
    >>> with open(os.path.join(d, "counter")) as f:
    ...     f.read()
    '42'
    """
    if mode not in ("w", "wb"):
        raise ValueError(
            f"atomic_write writes whole files: mode must be 'w' or 'wb', got {mode!r}"
        )
    path = os.fspath(path)
    tmp = tmp_name(path)
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            if sync:
                fsync(f.fileno())
        replace_path(tmp, path, sync=sync)
    except BaseException:
        remove_path(tmp)
        raise
