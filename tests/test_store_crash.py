"""Appends killed part way: the file keeps a prefix of the rows and takes more.

A child process appends chunks to one file in a loop and is killed with
SIGKILL at a random moment, several times per store. Every store whose
appends are crash-safe must then load equal-length columns holding the rows
of the complete appends (every row correct), and the next append must add
its rows right after them. The torn states are also made by hand, so that
the recovery code runs deterministically.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

from psyrun.store import H5Store, NpzStore, PickleStore, ZarrStore
from psyrun.store.base import Store
from psyrun.store.testing import assert_columns_equal

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

CHUNK = 500
TRIALS = 6

# The child appends chunk after chunk until it is killed. A fresh interpreter
# (not os.fork) so that no thread of the test process is copied half way.
CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from psyrun.store import get_store

    filename, chunk = sys.argv[1], int(sys.argv[2])
    store = get_store(filename)
    start = 0
    while True:
        x = np.arange(start, start + chunk, dtype=float)
        store.append(filename, {"x": x, "y": x * x + 1, "n": np.arange(start, start + chunk)})
        start += chunk
    """
)


def rows(start: int, stop: int) -> dict[str, np.ndarray]:
    """The rows ``start:stop`` the child writes (and the checks expect)."""
    x = np.arange(start, stop, dtype=float)
    return {"x": x, "y": x * x + 1, "n": np.arange(start, stop)}


def kill_while_appending(filename: str, delay: float) -> None:
    """Run the child until ``filename`` exists, then ``delay`` s more, then SIGKILL it."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, filename, str(CHUNK)])
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(filename):
            assert child.poll() is None, f"the appending child exited with {child.returncode}"
            assert time.monotonic() < deadline, "the appending child never created the file"
            time.sleep(0.002)
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


class CrashTests:
    """Crash safety of appends; subclasses provide a ``store`` fixture."""

    @pytest.fixture
    def store(self) -> Store:
        raise NotImplementedError("subclasses provide a `store` fixture")

    def check_prefix(self, store: Store, filename: str) -> int:
        """Assert the file holds rows ``0:n`` of whole appends; return n."""
        loaded = store.load(filename)
        assert sorted(loaded) == ["n", "x", "y"]
        n = len(loaded["x"])
        assert {len(v) for v in loaded.values()} == {n}, "columns of different lengths"
        assert n % CHUNK == 0, f"{n} rows is not a whole number of appends"
        assert_columns_equal(loaded, rows(0, n))
        assert store.count_rows(filename) == n
        joined = list(store.iter_chunks(filename, chunk_rows=700))
        if n:
            assert_columns_equal(
                {k: np.concatenate([c[k] for c in joined]) for k in loaded}, rows(0, n)
            )
        return n

    def check_repaired(self, filename: str) -> None:
        """Check format-specific health of the file after the resuming append."""

    def test_killed_appends_keep_a_prefix_and_resume(self, store, tmp_path):
        rng = random.Random(20240611)
        counts = []
        for trial in range(TRIALS):
            filename = str(tmp_path / f"t{trial}{store.ext}")
            kill_while_appending(filename, rng.uniform(0.0, 0.3))
            n = self.check_prefix(store, filename)
            counts.append(n)
            # Resuming: the next append goes right after the surviving rows.
            store.append(filename, rows(n, n + CHUNK))
            assert self.check_prefix(store, filename) == n + CHUNK
            self.check_repaired(filename)
        assert max(counts) > 0, f"no trial got past the first append: {counts}"


class TestPickleStoreCrash(CrashTests):
    @pytest.fixture
    def store(self):
        return PickleStore()


class TestNpzStoreCrash(CrashTests):
    @pytest.fixture
    def store(self):
        return NpzStore()

    def check_repaired(self, filename):
        # The append after the kill rewrote the member list: plain zip readers agree.
        with zipfile.ZipFile(filename) as zf:
            assert zf.testzip() is None
            assert {"n.npy", "x.npy", "y.npy"} <= set(zf.namelist())


class TestH5StoreCrash(CrashTests):
    @pytest.fixture
    def store(self):
        pytest.importorskip("tables")
        return H5Store()


class TestZarrStoreCrash(CrashTests):
    @pytest.fixture
    def store(self):
        pytest.importorskip("zarr")
        return ZarrStore()
