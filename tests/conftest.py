"""Shared test configuration."""

from __future__ import annotations

import os

import pytest
from fakebin_helpers import FakeCluster, start_fake_cluster
from hypothesis import HealthCheck, settings

# One profile for everyone: no per-example deadline (the machine is shared and
# numba compiles on first use), a moderate number of examples so the whole
# suite stays within a few minutes. PSYRUN_HYPOTHESIS_PROFILE=thorough digs deeper.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=1000)
settings.load_profile(os.environ.get("PSYRUN_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeCluster:
    """The fake cluster commands of tests/fakebin, first on PATH (see fakebin_helpers)."""
    return start_fake_cluster(tmp_path, monkeypatch)


@pytest.fixture
def fake_pbs(tmp_path, monkeypatch) -> FakeCluster:
    """Like `fake`, with the fake PBS qsub/qstat/qdel first on PATH."""
    return start_fake_cluster(tmp_path, monkeypatch, "pbs")


@pytest.fixture
def fake_lsf(tmp_path, monkeypatch) -> FakeCluster:
    """Like `fake`, with the fake LSF bsub/bjobs/bkill first on PATH."""
    return start_fake_cluster(tmp_path, monkeypatch, "lsf")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project directory with a psy-tasks folder, as the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "psy-tasks").mkdir()
    return tmp_path


@pytest.fixture
def sigterm_raises():
    """While the test runs, SIGTERM raises psy's Interrupted in this process (as in psy run)."""
    import signal

    from psyrun.run.runner import Interrupted

    def handler(signum, frame):
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    yield
    signal.signal(signal.SIGTERM, old)
