"""Helpers for tests that run once per store."""

from __future__ import annotations

import pytest

from psyrun.store import get_store

#: The extensions of the four built-in stores.
STORE_EXTS = [".pkl", ".npz", ".h5", ".zarr"]


def store_or_skip(ext: str):
    """The store for `ext`, or skip the test when its library is not installed."""
    try:
        return get_store(ext)
    except ImportError as exc:  # pragma: no cover - depends on the installation
        pytest.skip(str(exc))
