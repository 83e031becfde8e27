"""The store contract, run for every built-in store."""

from __future__ import annotations

import pytest

from psyrun.store import AutodetectStore, H5Store, NpzStore, PickleStore, ZarrStore
from psyrun.store.testing import StoreTests


class TestPickleStore(StoreTests):
    supports_objects = True

    @pytest.fixture
    def store(self):
        return PickleStore()


class TestNpzStore(StoreTests):
    supports_objects = True

    @pytest.fixture
    def store(self):
        return NpzStore()


class TestH5Store(StoreTests):
    @pytest.fixture
    def store(self):
        return H5Store()


class TestZarrStore(StoreTests):
    @pytest.fixture
    def store(self):
        return ZarrStore()


class TestAutodetectStoreWithPickle(StoreTests):
    """AutodetectStore forwards to the store its file name selects."""

    supports_objects = True

    @pytest.fixture
    def store(self):
        return AutodetectStore()

    @pytest.fixture
    def filename(self, tmp_path):
        return str(tmp_path / "result.PKL")

    def test_declares_extension_and_capabilities(self, store):
        assert store.ext == ""
