"""Job leases: a running job says, in its task's work directory, that it lives.

Every job (:mod:`psyrun.worker`) holds a lease while it runs: the file
``status/<job>.lease`` with its host, pid and start, whose modification time a
thread of the job refreshes every :data:`REFRESH` seconds; the job removes it
when it ends. A lease is *live* when its process still runs (on this host the
process table answers) or, for a job on another host, when it was refreshed
less than :data:`TTL` seconds ago.

``psy run`` refuses to submit while a job of the task holds a live lease that
no scheduler accounts for (a Dask scheduler that died under its running jobs,
a ``psy`` killed before it learnt the ids of jobs it had submitted), and ``psy
status`` reports such jobs: no assignment is evaluated in two live jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass

from psyrun.atomic import atomic_write

__all__ = [
    "REFRESH",
    "TTL",
    "JobLease",
    "Lease",
    "host_id",
    "live_leases",
    "process_alive",
    "read_lease",
    "start_ticks",
]

#: Seconds between two refreshes of a lease by its job.
REFRESH = 5.0
#: Seconds after its last refresh a lease of a job on another host counts as live.
TTL = 60.0
_SUFFIX = ".lease"


def start_ticks(pid: int) -> int | None:
    """Return when process `pid` started (clock ticks since boot; Linux); None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return -1  # a zombie has ended
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def host_id() -> str:
    """Return this machine's name and boot (a process of an earlier boot has ended)."""
    return f"{socket.gethostname()}/{_boot_id()}"


def process_alive(pid: int, start: int | None) -> bool:
    """Whether the process `pid` of this host that started at `start` still runs."""
    now = start_ticks(pid)
    if now is not None and start is not None:
        return now == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@dataclass(frozen=True)
class Lease:
    """A job's lease as read back.

    Attributes
    ----------
    job : str
        The job's name.
    host : str
        The host name (without the boot id).
    pid : int
        The job's process.
    age : float
        Seconds since the job last refreshed it.
    path : str
        The lease file.
    """

    job: str
    host: str
    pid: int
    age: float
    path: str

    def describe(self) -> str:
        """Return ``'<job> (pid <pid> on <host>, alive <n> s ago)'``."""
        return f"{self.job} (pid {self.pid} on {self.host}, alive {self.age:.0f} s ago)"


class JobLease:
    """Hold the lease `path` of job `job` while a ``with`` block runs (the job itself).

    Parameters
    ----------
    path : str
        The lease file (``status/<job>.lease``); its directory is created.
    job : str
        The job's name.
    refresh : float
        Seconds between two refreshes.
    """

    def __init__(self, path: str, job: str, refresh: float = REFRESH) -> None:
        self.path = path
        self.job = job
        self.refresh = refresh
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def __enter__(self) -> JobLease:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        record = {
            "job": self.job,
            "host": host_id(),
            "pid": self._pid,
            "start": start_ticks(self._pid),
            "since": time.time(),
        }
        # Not synced: after a crash of the machine no job of it runs anyway.
        with atomic_write(self.path, sync=False) as f:
            json.dump(record, f)
        self._thread = threading.Thread(target=self._keep, name="psyrun-lease", daemon=True)
        self._thread.start()
        return self

    def _keep(self) -> None:
        while not self._stop.wait(self.refresh):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if os.getpid() != self._pid:
            return  # a forked child leaving: the lease belongs to its parent
        with contextlib.suppress(OSError):
            with open(self.path, encoding="utf-8") as f:
                mine = json.load(f).get("pid") == self._pid
            if mine:
                os.remove(self.path)


def read_lease(path: str) -> Lease | None:
    """Return the lease in `path` when it is live, else None (also when it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        age = max(0.0, time.time() - os.stat(path).st_mtime)
        host, pid = str(record["host"]), int(record["pid"])
        job = str(record.get("job", os.path.basename(path)[: -len(_SUFFIX)]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # On this host the process table answers; elsewhere the age of the last refresh.
    live = process_alive(pid, record.get("start")) if host == host_id() else age < TTL
    return Lease(job, host.split("/", 1)[0], pid, age, path) if live else None


def live_leases(status_dir: str) -> list[Lease]:
    """Return the live leases in a task's ``status`` directory, by job name."""
    try:
        names = os.listdir(status_dir)
    except OSError:
        return []
    found = (read_lease(os.path.join(status_dir, n)) for n in sorted(names) if n.endswith(_SUFFIX))
    return [lease for lease in found if lease is not None]
