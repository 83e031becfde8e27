# ruff: noqa: D102  (test methods and fixtures document themselves by name)
"""A contract test suite every store runs; third-party stores can reuse it.

Subclass :class:`StoreTests` in a test module and provide a ``store``
fixture::

    from psyrun.store.testing import StoreTests

    class TestMyStore(StoreTests):
        supports_objects = False  # arbitrary Python values?

        @pytest.fixture
        def store(self):
            return MyStore()

The suite needs pytest; it is imported only by tests.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from psyrun.store.base import Store

__all__ = ["StoreTests", "assert_columns_equal"]


def assert_columns_equal(actual: dict, expected: dict) -> None:
    """Assert two dicts of columns hold the same keys, shapes and values (NaN == NaN)."""
    assert sorted(actual) == sorted(expected)
    for key, want in expected.items():
        got = np.asarray(actual[key])
        want = np.asarray(want)
        assert got.shape == want.shape, f"column {key!r}: shape {got.shape} != {want.shape}"
        if want.dtype.kind in "fc":
            assert got.dtype.kind in "fc", f"column {key!r}: dtype {got.dtype} is not float"
            np.testing.assert_array_equal(got, want, err_msg=f"column {key!r}")
        elif want.dtype.kind == "O":
            assert list(got) == list(want), f"column {key!r}"
        else:
            assert got.tolist() == want.tolist(), f"column {key!r}"


class StoreTests:
    """The behaviour every :class:`~psyrun.store.base.Store` promises.

    Attributes
    ----------
    supports_strings : bool
        Whether the store keeps ``str`` columns.
    supports_objects : bool
        Whether the store keeps arbitrary Python objects (object columns).
    """

    supports_strings: bool = True
    supports_objects: bool = False

    @pytest.fixture
    def store(self) -> Store:
        raise NotImplementedError("subclasses provide a `store` fixture")

    @pytest.fixture
    def filename(self, store: Store, tmp_path) -> str:
        return str(tmp_path / f"result{store.ext}")

    @staticmethod
    def _exists(filename: str) -> bool:
        return os.path.exists(filename)

    # -- declaration -----------------------------------------------------------

    def test_declares_extension_and_capabilities(self, store):
        assert isinstance(store, Store)
        assert store.ext.startswith(".")
        assert store.ext == store.ext.lower()
        for flag in ("supports_row_range", "supports_chunks", "supports_row_count"):
            assert isinstance(getattr(store, flag), bool)

    # -- save / load -------------------------------------------------------------

    def test_save_load_roundtrip(self, store, filename):
        data = {
            "x": np.array([0.5, -1.0, np.inf]),
            "n": [1, 2, 3],
            "flag": [True, False, True],
            "v": np.arange(12.0).reshape(3, 2, 2),
        }
        store.save(filename, data)
        loaded = store.load(filename)
        assert all(isinstance(v, np.ndarray) for v in loaded.values())
        assert_columns_equal(loaded, data)
        assert loaded["n"].dtype.kind in "iu"
        assert loaded["flag"].dtype == np.bool_

    def test_save_replaces_existing_file(self, store, filename):
        store.save(filename, {"a": [1.0, 2.0, 3.0]})
        store.save(filename, {"b": [4.0]})
        assert_columns_equal(store.load(filename), {"b": [4.0]})

    def test_load_row_returns_one_element_columns(self, store, filename):
        store.save(filename, {"a": [1.0, 2.0, 3.0], "v": np.arange(6).reshape(3, 2)})
        assert_columns_equal(store.load(filename, row=1), {"a": [2.0], "v": [[2, 3]]})
        assert_columns_equal(store.load(filename, row=-1), {"a": [3.0], "v": [[4, 5]]})

    def test_load_row_out_of_range_raises(self, store, filename):
        store.save(filename, {"a": [1.0, 2.0]})
        for row in (2, -3):
            with pytest.raises(IndexError, match="out of range"):
                store.load(filename, row=row)

    def test_append_with_keys_in_another_order(self, store, filename):
        store.append(filename, {"a": [1.0], "b": [2.0]})
        store.append(filename, {"b": [4.0], "a": [3.0]})
        assert_columns_equal(store.load(filename), {"a": [1.0, 3.0], "b": [2.0, 4.0]})

    def test_unequal_column_lengths_rejected(self, store, filename):
        with pytest.raises(ValueError, match="same length"):
            store.save(filename, {"a": [1, 2], "b": [1]})
        assert not self._exists(filename)
        store.save(filename, {"a": [1.0]})
        with pytest.raises(ValueError, match="same length"):
            store.append(filename, {"a": [1.0, 2.0], "b": [1.0]})
        assert_columns_equal(store.load(filename), {"a": [1.0]})

    def test_non_mapping_rejected(self, store, filename):
        with pytest.raises(TypeError, match="mapping"):
            store.save(filename, [1, 2, 3])

    # -- append --------------------------------------------------------------------

    def test_append_creates_missing_file(self, store, filename):
        assert not self._exists(filename)
        store.append(filename, {"a": [1.0, 2.0]})
        assert_columns_equal(store.load(filename), {"a": [1.0, 2.0]})

    def test_append_concatenates_chunks(self, store, filename):
        chunks = [
            {"a": np.arange(k, dtype=float) + 10 * i, "b": np.arange(k) * i}
            for i, k in enumerate([3, 1, 4])
        ]
        for chunk in chunks:
            store.append(filename, chunk)
        expected = {key: np.concatenate([c[key] for c in chunks]) for key in ("a", "b")}
        assert_columns_equal(store.load(filename), expected)
        assert store.count_rows(filename) == 8

    def test_append_after_save(self, store, filename):
        store.save(filename, {"a": [1.0], "b": [[1, 2]]})
        store.append(filename, {"a": [2.0, 3.0], "b": [[3, 4], [5, 6]]})
        assert_columns_equal(
            store.load(filename), {"a": [1.0, 2.0, 3.0], "b": [[1, 2], [3, 4], [5, 6]]}
        )

    def test_append_empty_chunk_keeps_rows(self, store, filename):
        store.append(filename, {"a": [1.0, 2.0]})
        store.append(filename, {"a": np.empty(0)})
        assert_columns_equal(store.load(filename), {"a": [1.0, 2.0]})

    def test_int_chunk_into_float_column(self, store, filename):
        store.append(filename, {"a": [0.5]})
        store.append(filename, {"a": [2]})
        loaded = store.load(filename)
        assert loaded["a"].dtype.kind == "f"
        assert loaded["a"].tolist() == [0.5, 2.0]

    def test_float_chunk_into_int_column_promotes(self, store, filename):
        store.append(filename, {"a": [1, 2]})
        store.append(filename, {"a": [2.5]})
        loaded = store.load(filename)
        assert loaded["a"].dtype.kind == "f"
        assert loaded["a"].tolist() == [1.0, 2.0, 2.5]

    # -- padding -------------------------------------------------------------------

    def test_chunks_of_different_shapes_are_padded(self, store, filename):
        store.append(filename, {"v": np.ones((2, 2), dtype=int)})
        store.append(filename, {"v": np.zeros((1, 3), dtype=int)})
        nan = np.nan
        expected = {"v": [[1.0, 1.0, nan], [1.0, 1.0, nan], [0.0, 0.0, 0.0]]}
        loaded = store.load(filename)
        assert_columns_equal(loaded, expected)
        assert loaded["v"].dtype.kind == "f"  # ints promoted to float by the padding

    def test_rows_of_different_shapes_within_a_chunk_are_padded(self, store, filename):
        store.append(filename, {"v": [np.array([1.0]), np.array([2.0, 3.0])]})
        assert_columns_equal(store.load(filename), {"v": [[1.0, np.nan], [2.0, 3.0]]})

    def test_key_missing_from_later_chunk_is_filled(self, store, filename):
        store.append(filename, {"a": [1.0], "b": [1]})
        store.append(filename, {"a": [2.0]})
        assert_columns_equal(store.load(filename), {"a": [1.0, 2.0], "b": [1.0, np.nan]})

    def test_key_added_by_later_chunk_is_filled(self, store, filename):
        store.append(filename, {"a": [1.0, 2.0]})
        store.append(filename, {"a": [3.0], "c": [[7, 8]]})
        nan = np.nan
        expected = {"a": [1.0, 2.0, 3.0], "c": [[nan, nan], [nan, nan], [7.0, 8.0]]}
        assert_columns_equal(store.load(filename), expected)
        assert store.count_rows(filename) == 3

    def test_appends_after_padding_keep_working(self, store, filename):
        store.append(filename, {"a": [1.0]})
        store.append(filename, {"a": [2.0], "b": [5.0]})
        store.append(filename, {"a": [3.0], "b": [6.0]})
        assert_columns_equal(store.load(filename), {"a": [1.0, 2.0, 3.0], "b": [np.nan, 5.0, 6.0]})

    # -- strings and objects -------------------------------------------------------

    def test_strings_roundtrip_and_pad_with_empty_string(self, store, filename):
        if not self.supports_strings:
            pytest.skip("store does not keep str columns")
        store.append(filename, {"s": ["a", "bé"], "x": [1.0, 2.0]})
        store.append(filename, {"s": ["longer text"], "x": [3.0]})
        store.append(filename, {"x": [4.0]})
        loaded = store.load(filename)
        assert loaded["s"].tolist() == ["a", "bé", "longer text", ""]
        assert all(isinstance(v, str) for v in loaded["s"].tolist())

    def test_objects_roundtrip_and_pad_with_none(self, store, filename):
        if not self.supports_objects:
            pytest.skip("store does not keep arbitrary objects")
        values = [{"k": 1}, None, (1, "x")]
        store.append(filename, {"o": values[:2], "x": [1.0, 2.0]})
        store.append(filename, {"o": values[2:], "x": [3.0]})
        store.append(filename, {"x": [4.0]})
        assert store.load(filename)["o"].tolist() == [*values, None]

    def test_unsupported_values_rejected_before_writing(self, store, filename):
        if self.supports_objects:
            pytest.skip("store keeps arbitrary objects")
        with pytest.raises(TypeError, match="'o'"):
            store.append(filename, {"o": [{"k": 1}, None]})
        assert not self._exists(filename)
        store.save(filename, {"x": [1.0]})
        with pytest.raises(TypeError, match="'o'"):
            store.append(filename, {"x": [2.0], "o": [object()]})
        assert_columns_equal(store.load(filename), {"x": [1.0]})

    # -- optional capabilities -----------------------------------------------------

    def test_load_rows_matches_slicing(self, store, filename):
        data = {"a": np.arange(10.0), "v": np.arange(20).reshape(10, 2)}
        store.append(filename, {k: v[:4] for k, v in data.items()})
        store.append(filename, {k: v[4:] for k, v in data.items()})
        for start, stop in [(0, 10), (2, 7), (3, 3), (8, 20), (-3, None)]:
            expected = {k: v[start:stop] for k, v in data.items()}
            assert_columns_equal(store.load_rows(filename, start, stop), expected)

    def test_iter_chunks_yields_all_rows_in_order(self, store, filename):
        data = {"a": np.arange(11.0), "b": np.arange(11) % 3 == 0}
        for start in range(0, 11, 4):
            store.append(filename, {k: v[start : start + 4] for k, v in data.items()})
        for chunk_rows in (1, 3, 5, 100):
            chunks = list(store.iter_chunks(filename, chunk_rows=chunk_rows))
            assert all(1 <= len(c["a"]) <= chunk_rows for c in chunks)
            joined = {k: np.concatenate([c[k] for c in chunks]) for k in data}
            assert_columns_equal(joined, data)

    def test_iter_chunks_rejects_bad_chunk_rows(self, store, filename):
        store.save(filename, {"a": [1.0]})
        with pytest.raises(ValueError, match="chunk_rows"):
            list(store.iter_chunks(filename, chunk_rows=0))

    def test_count_rows(self, store, filename):
        store.save(filename, {"a": np.arange(5.0)})
        assert store.count_rows(filename) == 5
        store.append(filename, {"a": np.arange(3.0)})
        assert store.count_rows(filename) == 8
