"""Fixtures of the fault-injection suite (``tests/faults``); the helpers are in fault_helpers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import FAULT_SEED, SmallDisk, can_mount_tmpfs


@pytest.fixture
def small_disk(tmp_path) -> Iterator:
    """A factory of small tmpfs disks: ``small_disk('8m')`` mounts one, a :class:`SmallDisk`.

    Skipped (with the reason) where this process cannot mount a tmpfs; every
    disk is unmounted at the end of the test.
    """
    if not can_mount_tmpfs():
        pytest.skip("needs root and mount -t tmpfs to make a small disk")
    mounted: list[Path] = []

    def make(size: str = "8m") -> SmallDisk:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        subprocess.run(mount, check=True)
        mounted.append(path)
        return SmallDisk(path, size)

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def fault_rng():
    """A NumPy generator seeded by ``PSYRUN_FAULT_SEED`` (printed on failure to replay a case)."""
    import numpy as np

    return np.random.default_rng(FAULT_SEED)


def pytest_report_header(config):
    return f"psyrun fault injection seed: {FAULT_SEED} (set PSYRUN_FAULT_SEED to replay)"
