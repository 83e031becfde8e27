"""Helpers of the fault-injection suite (``tests/faults``), importable by its test files.

Every case in this directory injects a fault (a full disk, a kill -9, a damaged
file, a hostile name, a concurrent command, a dying cluster component) and then
checks the same invariants (see ``docs/guarantees.rst``):

* after ``psy run -c`` no row is lost and none is duplicated;
* no file outside the task's own work directory (and its result file) is touched;
* ``psy status`` never reports a damaged or missing result as complete.

The helpers here are the ones several fault files need; a helper used by one
file lives in that file. The fixtures built on them are in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

FAULT_SEED = int(os.environ.get("PSYRUN_FAULT_SEED", "20261207"))


def tree_state(root: str | os.PathLike, skip: str | os.PathLike | None = None) -> dict:
    """Return ``{relative path: (size, mtime_ns)}`` of every file and directory under `root`.

    `skip` (a directory under `root`, such as the task's work directory) is
    left out, so that comparing two states tells whether anything *else* was
    created, changed or removed.
    """
    root = os.path.abspath(root)
    skip = os.path.abspath(skip) if skip is not None else None
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if path == skip:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                is_dir = os.path.isdir(path) and not os.path.islink(path)
                state[os.path.relpath(path, root)] = (0 if is_dir else st.st_size, st.st_mtime_ns)
    return state


def assert_untouched(before: dict, after: dict, what: str = "the project") -> None:
    """Fail naming every path that was created, changed or removed between two `tree_state`s."""
    created = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    touched = {"created": created, "removed": removed, "changed": changed}
    if created or removed or changed:
        pytest.fail(f"files outside the task's work directory were touched in {what}: {touched}")


def can_mount_tmpfs() -> bool:
    """Whether this process may mount a tmpfs (root in a machine that allows it)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/psyrun-tmpfs-probe-{uuid.uuid4().hex}")
    probe.mkdir()
    try:
        ok = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                capture_output=True,
            ).returncode
            == 0
        )
        if ok:
            subprocess.run(["umount", str(probe)], check=False)
        return ok
    finally:
        probe.rmdir()


class SmallDisk:
    """A tmpfs of a fixed size at `path`: :meth:`fill` uses up its space, :meth:`free` frees it.

    Writes to a full tmpfs fail with ``OSError(ENOSPC)`` inside every
    library (pickle, NumPy, HDF5, zarr): the real fault, not a simulation.
    """

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.size = size
        self._filler = path / ".filler"

    def fill(self, leave: int = 0) -> None:
        """Write a filler file until only `leave` bytes are free."""
        from psyrun.store.testing import fill_disk

        fill_disk(str(self.path), leave)

    def free(self) -> None:
        """Remove the filler file."""
        with contextlib.suppress(FileNotFoundError):
            self._filler.unlink()

    def free_bytes(self) -> int:
        """Free bytes left on the disk."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize
