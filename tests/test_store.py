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


# -- the contract suite catches stores whose flags lie ---------------------------------


class _ClaimsEverything(PickleStore):
    """Claims every capability but keeps the defaults, which load the whole file."""

    supports_row_range = True
    supports_chunks = True

    def count_rows(self, filename):
        return len(self.load(filename)["x"])


class _ReadsEverythingQuietly(NpzStore):
    """Claims row ranges and reads them without calling load: all members, then a slice."""

    supports_row_range = True

    def load_rows(self, filename, start, stop):
        from psyrun.store.columns import merge_chunks

        data = merge_chunks(list(self.iter_file_chunks(filename)))
        return {k: v[start:stop] for k, v in data.items()}


@pytest.mark.parametrize(
    ("store", "check"),
    [
        (_ClaimsEverything(), "test_row_range_reads_only_those_rows"),
        (_ClaimsEverything(), "test_load_of_one_row_reads_only_that_row"),
        (_ClaimsEverything(), "test_iter_chunks_holds_one_chunk_at_a_time"),
        (_ClaimsEverything(), "test_count_rows_reads_no_rows"),
        (_ReadsEverythingQuietly(), "test_row_range_reads_only_those_rows"),
        (_ReadsEverythingQuietly(), "test_load_of_one_row_reads_only_that_row"),
    ],
)
def test_capability_checks_fail_for_a_store_whose_flags_lie(store, check, tmp_path):
    suite = StoreTests()
    with pytest.raises(AssertionError, match="promise"):
        getattr(suite, check)(store, str(tmp_path / f"r{store.ext}"))


def test_capability_checks_pass_for_the_honest_parent(tmp_path):
    # The same checks on NpzStore itself: iter_chunks and count_rows are honest.
    suite = StoreTests()
    suite.test_iter_chunks_holds_one_chunk_at_a_time(NpzStore(), str(tmp_path / "a.npz"))
    suite.test_count_rows_reads_no_rows(NpzStore(), str(tmp_path / "b.npz"))
