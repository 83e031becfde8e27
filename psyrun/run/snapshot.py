"""The snapshot of a run: the rows its process jobs evaluate.

The split job writes one small file (``in/pspace.pkl``): the lazy parameter
space as the task defined it when the run started, plus the row numbers still
missing when continuing, and the version of the task's code the run
evaluates (:mod:`psyrun.run.versions`). Process jobs read their row ranges from
it, so a task file edited while jobs are queued does not change what they
compute, and nothing is expanded to disk up front; the version tells which
code computed the rows of the run's part files.
"""

from __future__ import annotations

import pickle

import numpy as np

from psyrun.atomic import atomic_write

__all__ = ["SNAPSHOT_VERSION", "Snapshot", "snapshot_version", "write_snapshot"]

#: Format version of the snapshot file.
SNAPSHOT_VERSION = 1


def write_snapshot(
    path: str, pspace, rows: np.ndarray | None, task_version: str | None = None
) -> None:
    """Store the lazy space (and the row numbers to evaluate, when not all).

    `task_version` is the version of the task's code the run evaluates.
    """
    with atomic_write(path, "wb") as f:
        pickle.dump(
            {
                "version": SNAPSHOT_VERSION,
                "pspace": pspace,
                "rows": rows,
                "task_version": task_version,
            },
            f,
            protocol=pickle.HIGHEST_PROTOCOL,
        )


class Snapshot:
    """The rows a run evaluates: a lazy space and optionally a subset of its rows.

    Parameters
    ----------
    pspace : psyrun.pspace.ParameterSpace
        The space of the run.
    rows : numpy.ndarray or None
        Row numbers of `pspace` to evaluate (None: all of them).
    task_version : str or None
        The version of the task's code the run evaluates (None: a snapshot
        written by a psyrun that did not record it).
    """

    def __init__(self, pspace, rows: np.ndarray | None, task_version: str | None = None) -> None:
        self.pspace = pspace
        self.rows = rows
        self.task_version = task_version
        self.keys = list(pspace.keys())

    @classmethod
    def read(cls, path: str) -> Snapshot:
        """Read a snapshot written by :func:`write_snapshot`."""
        with open(path, "rb") as f:
            data = pickle.load(f)
        return cls(data["pspace"], data["rows"], data.get("task_version"))

    def __len__(self) -> int:
        return len(self.pspace) if self.rows is None else len(self.rows)

    def take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """Parameter columns of the snapshot rows `index`."""
        if self.rows is None:
            return self.pspace.take(index)
        return self.pspace.take(self.rows[index])

    def arrays(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Parameter columns of snapshot rows ``start:stop``."""
        if self.rows is None:
            return self.pspace.to_arrays(start, stop)
        return self.pspace.take(self.rows[start:stop])


def snapshot_version(path: str) -> str | None:
    """Return the task version recorded in the snapshot `path` (None: none or unreadable)."""
    try:
        return Snapshot.read(path).task_version
    except Exception:
        return None
