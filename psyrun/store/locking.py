"""An inter-process lock on a file, for appends to a shared result file."""

from __future__ import annotations

import fcntl
import os
import time

__all__ = ["FileLock"]


class FileLock:
    """Exclusive lock held with ``fcntl.flock`` on a separate lock file.

    Parameters
    ----------
    path : str or os.PathLike
        The file to protect. The lock itself is taken on ``path + '.lock'``
        (or on ``path`` when it already ends in ``.lock``), so the protected
        file may be replaced or renamed while locked.
    timeout : float, optional
        Seconds to wait for the lock before raising :class:`TimeoutError`;
        ``None`` waits forever.
    poll_interval : float
        Seconds between attempts while waiting with a timeout.

    Notes
    -----
    The lock is re-entrant for the same instance; separate instances (also in
    one process or thread) exclude each other, because ``flock`` belongs to
    the open file description.

    Examples
    --------
    >>> with FileLock(filename):  # doctest: +SKIP
    ...     store.append(filename, chunk)
    """

    def __init__(
        self, path: str | os.PathLike, timeout: float | None = None, poll_interval: float = 0.01
    ) -> None:
        path = os.fspath(path)
        self.path = path if path.endswith(".lock") else path + ".lock"
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._fd: int | None = None
        self._depth = 0

    @property
    def locked(self) -> bool:
        """Whether this instance currently holds the lock."""
        return self._depth > 0

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds."""
        if self._depth:
            self._depth += 1
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if self.timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + self.timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise TimeoutError(
                                f"could not lock {self.path!r} within {self.timeout} s; "
                                "another process holds it (delete the file only if no "
                                "psyrun process is running)"
                            ) from None
                        time.sleep(self.poll_interval)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._depth = 1

    def release(self) -> None:
        """Release the lock (once per :meth:`acquire`)."""
        if not self._depth:
            raise RuntimeError(f"release of {self.path!r}, which this lock does not hold")
        self._depth -= 1
        if self._depth == 0:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FileLock({self.path!r}, locked={self.locked})"
