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

The suite also checks that the ``supports_*`` flags are true: a store that
claims row ranges, chunk iteration or cheap row counts must neither call
``load`` for them nor allocate memory for the whole file (measured with
:mod:`tracemalloc`).

:func:`store_model_test` adds a stateful test (hypothesis): random sequences
of saves, appends and reads, checked against a plain list of rows::

    from psyrun.store.testing import store_model_test

    TestMyStoreModel = store_model_test(MyStore)

The suite needs pytest, and :func:`store_model_test` needs hypothesis; it is
imported only by tests.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import tracemalloc
import uuid
import zipfile
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from psyrun.atomic import tmp_name
from psyrun.exceptions import DamagedFileError
from psyrun.store.base import Store, UnsupportedValueError

__all__ = [
    "PLAIN_READERS",
    "StoreTests",
    "assert_columns_equal",
    "assert_exact_or_damaged",
    "delete_member",
    "fill_disk",
    "read_h5_plainly",
    "read_npz_plainly",
    "read_pickle_plainly",
    "read_zarr_plainly",
    "result_files",
    "small_disk",
    "store_model",
    "store_model_test",
]


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


@contextlib.contextmanager
def _forbidden(store: Store, *names: str) -> Iterator[None]:
    """Make the methods ``names`` of this store instance fail when called."""

    def refuse(name: str) -> Callable:
        def method(*args, **kwargs):
            raise AssertionError(
                f"{type(store).__name__}.{name} was called, but the store's flags "
                "promise that this operation does not read the whole file"
            )

        return method

    for name in names:
        setattr(store, name, refuse(name))
    try:
        yield
    finally:
        for name in names:
            delattr(store, name)


@contextlib.contextmanager
def _peak_memory() -> Iterator[dict[str, int]]:
    """Measure the peak of memory allocated inside the block (``result['peak']``)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    result: dict[str, int] = {}
    try:
        yield result
    finally:
        _, peak = tracemalloc.get_traced_memory()
        result["peak"] = peak - before
        if started:
            tracemalloc.stop()


def result_files(filename: str) -> list[str]:
    """Every regular file of a result (the file itself, or those under a directory store)."""
    if not os.path.isdir(filename):
        return [filename]
    found = []
    for root, _, names in os.walk(filename):
        found.extend(os.path.join(root, name) for name in names)
    return sorted(found)


def delete_member(filename: str) -> str:
    """Delete a part of a built-in store's result the way a tool or a bad disk could.

    A chunk file of a zarr store, a column of an HDF5 file (under ``/psyrun``), a chunk
    member of an npz (the archive rewritten without it), a run of bytes from
    the middle of a pickle. Returns what was deleted. Raises
    ``NotImplementedError`` for other extensions.
    """
    ext = os.path.splitext(filename)[1].lower()
    if ext == ".zarr":
        chunks = [f for f in result_files(filename) if os.path.basename(f) != "zarr.json"]
        victim = chunks[len(chunks) // 2]
        os.remove(victim)
        return os.path.relpath(victim, filename)
    if ext == ".h5":
        import tables

        with tables.open_file(filename, "a") as h5file:
            victim = sorted(h5file.root.psyrun._v_children)[1]
            h5file.remove_node(f"/psyrun/{victim}")
        return f"/psyrun/{victim}"
    if ext == ".npz":
        with zipfile.ZipFile(filename) as src:
            infos = src.infolist()
            victim = [i for i in infos if i.filename.endswith(".npy")][-1]
            members = [(i, src.read(i)) for i in infos if i is not victim]
        with zipfile.ZipFile(filename, "w") as dst:
            for info, raw in members:
                dst.writestr(info, raw)
        return victim.filename
    if ext == ".pkl":
        with open(filename, "rb") as f:
            raw = f.read()
        middle = len(raw) // 2
        with open(filename, "wb") as f:
            f.write(raw[:middle] + raw[middle + 64 :])
        return f"bytes {middle}:{middle + 64}"
    raise NotImplementedError(f"no way to delete a member of a {ext} result")


def _can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def small_disk(size: str = "8m") -> Iterator[str]:
    """Mount a tmpfs of `size` for the block; skip the test where that is not possible."""
    if not _can_mount_tmpfs():
        pytest.skip("needs root and mount -t tmpfs to make a small disk")
    path = os.path.join(tempfile.gettempdir(), f"psyrun-disk-{uuid.uuid4().hex}")
    os.mkdir(path)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path])
    if done.returncode:
        os.rmdir(path)
        pytest.skip("mount -t tmpfs is not allowed here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(path)


def fill_disk(path: str, leave: int = 0) -> str:
    """Write a filler file under the tmpfs `path` until only `leave` bytes are free."""
    filler = os.path.join(path, ".filler")
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize - leave
    with open(filler, "ab") as f:
        block = bytes(1 << 20)
        while free > 0:
            n = min(free, len(block))
            try:
                f.write(block[:n])
                f.flush()
            except OSError:
                break
            free -= n
    return filler


def assert_exact_or_damaged(
    store: Store, filename: str, expected: dict, must_detect: tuple[str, ...] = ()
) -> list[str]:
    """Read `filename` every way a store can; each read gives `expected` or DamagedFileError.

    Never wrong data, never fewer rows silently. The reads named in
    `must_detect` (``'load'``, ``'load_rows'``, ``'iter_chunks'``,
    ``'count_rows'``, ``'verify'``) must raise. Returns the reads that raised.
    """
    n = len(next(iter(expected.values())))
    reads = {
        "load": lambda: store.load(filename),
        "load_rows": lambda: store.load_rows(filename, 1, n - 1),
        "iter_chunks": lambda: list(store.iter_chunks(filename, chunk_rows=max(1, n // 3))),
        "count_rows": lambda: store.count_rows(filename),
        "verify": lambda: store.verify(filename),
    }
    raised = []
    for name, read in reads.items():
        try:
            got = read()
        except DamagedFileError:
            raised.append(name)
            continue
        if name == "load":
            assert_columns_equal(got, expected)
        elif name == "load_rows":
            assert_columns_equal(got, {k: np.asarray(v)[1 : n - 1] for k, v in expected.items()})
        elif name == "iter_chunks":
            joined = {k: np.concatenate([c[k] for c in got]) for k in got[0]}
            assert_columns_equal(joined, expected)
        else:
            assert got == n, f"{name} says {got} rows, {n} were written"
    missed = [name for name in must_detect if name not in raised]
    assert not missed, f"{missed} did not report the damage of {filename}"
    return raised


# -- layout rules: what a reader without psyrun finds (HDF5, NPZ, pickle) -----------------


def read_h5_plainly(filename: str, group: str = "psyrun") -> dict[str, np.ndarray]:
    """Read an H5Store result with h5py alone, as a user without psyrun would.

    Every dataset of ``group`` is a column; its ``psyrun_name`` attribute
    holds the column's name as JSON text (the node name may be escaped) and the group's
    ``psyrun_rows`` the committed row count. str columns are UTF-8 strings
    (``.asstr()``). Skips the test without h5py.
    """
    h5py = pytest.importorskip("h5py")
    out = {}
    with h5py.File(filename, "r") as f:
        columns = f[group]
        rows = int(columns.attrs["psyrun_rows"])
        for node, dataset in columns.items():
            name = json.loads(dataset.attrs["psyrun_name"])
            info = h5py.check_string_dtype(dataset.dtype)
            if info is not None:
                assert info.encoding == "utf-8", f"{node}: str typed {info.encoding}"
                values = np.array(dataset.asstr()[:rows].tolist(), dtype=str)
            else:
                values = dataset[:rows]
            out[name] = values
    return out


def read_npz_plainly(filename: str) -> dict[str, np.ndarray]:
    """Read an NpzStore result with ``numpy.load`` alone.

    ``numpy.load(f)[name]`` is column ``name`` of the first chunk; each
    later append is a member ``chunkNNNNNN`` whose fields are the columns
    of its rows (``metadata`` members are JSON, not arrays).
    """
    with np.load(filename, allow_pickle=True) as npz:
        names = sorted(n for n in npz.files if not n.endswith(".json"))  # metadata
        chunks = sorted(n for n in names if n.startswith("chunk") and n[5:].isdigit())
        out = {name: npz[name] for name in names if name not in chunks}
        for chunk in chunks:
            record = npz[chunk]
            for name in record.dtype.names:
                out[name] = np.concatenate([out[name], record[name]])
    return out


def read_pickle_plainly(filename: str) -> dict[str, np.ndarray]:
    """Read a PickleStore result with ``pickle.load`` alone: a dict of lists by name."""
    import pickle

    with open(filename, "rb") as f:
        data = pickle.load(f)
    assert isinstance(data, dict), f"{filename} holds a {type(data).__name__}, not a dict"
    return {name: np.asarray(values) for name, values in data.items()}


def read_zarr_plainly(filename: str) -> dict[str, np.ndarray]:
    """Read a ZarrStore result with zarr alone: one array per column.

    The group attribute ``psyrun_rows`` is the committed row count (arrays
    may be longer after an interrupted append); an array's name is its
    column's name with ``%XX`` escapes (``urllib.parse.unquote`` reverses
    them). Skips the test without zarr.
    """
    from urllib.parse import unquote

    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(filename, mode="r")
    rows = int(group.attrs["psyrun_rows"])
    out = {}
    for name, array in group.arrays():
        values = np.asarray(array[:rows])
        if values.dtype.kind == "T" or (values.dtype == object and rows):
            values = np.array([str(v) for v in values.ravel()], dtype=str).reshape(values.shape)
        out[unquote(name)] = values
    return out


#: Readers without psyrun, by extension (``read_<format>_plainly``).
PLAIN_READERS: dict[str, Callable[[str], dict[str, np.ndarray]]] = {
    ".zarr": read_zarr_plainly,
    ".h5": read_h5_plainly,
    ".npz": read_npz_plainly,
    ".pkl": read_pickle_plainly,
}


class StoreTests:
    """The behaviour every :class:`~psyrun.store.base.Store` promises.

    Attributes
    ----------
    supports_strings : bool
        Whether the store keeps ``str`` columns.
    supports_objects : bool
        Whether the store keeps arbitrary Python objects (object columns).
    capability_rows : int
        Rows of the file the ``supports_*`` flags are checked on (one float
        column, so 8 bytes per row); reading all of it must show up clearly.
    """

    supports_strings: bool = True
    supports_objects: bool = False
    capability_rows: int = 1 << 19

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
        for name in ("library", "requirement", "column_kinds"):
            assert getattr(store, name) is None or isinstance(getattr(store, name), str)

    def test_preload_imports_the_library(self, store):
        module = store.preload()
        if store.library is None:
            assert module is None
        else:
            assert module.__name__ == store.library

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

    def test_rows_of_str_arrays_become_a_2d_str_column(self, store, filename):
        if not self.supports_strings:
            pytest.skip("store does not keep str columns")
        # Rows of one shape (arrays or lists of str), rows of another shape
        # in a later chunk, a row lacking the output (NaN, the mapper's mark)
        # and a chunk without the key: one str column, padded with ''.
        store.append(filename, {"s": [np.array(["a", "bé"]), ["c", "d"]], "x": [1.0, 2.0]})
        store.append(filename, {"s": [["long text", "e", "f"], math.nan], "x": [3.0, 4.0]})
        store.append(filename, {"x": [5.0]})
        loaded = store.load(filename)["s"]
        assert loaded.dtype.kind == "U", f"rows of str arrays loaded as {loaded.dtype}"
        assert loaded.tolist() == [
            ["a", "bé", ""],
            ["c", "d", ""],
            ["long text", "e", "f"],
            ["", "", ""],
            ["", "", ""],
        ]
        assert store.load_rows(filename, 1, 3)["s"].tolist() == loaded[1:3].tolist()
        # Rows of (number, str) tuples are no str arrays: they stay as they are, or are refused.
        mixed = {"t": [(1, "x"), (2, "y")]}
        if self.supports_objects:
            store.save(filename, mixed)
            assert store.load(filename)["t"].tolist() == [(1, "x"), (2, "y")]
        else:
            with pytest.raises(UnsupportedValueError, match="'t'"):
                store.check(mixed)

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
        with pytest.raises(TypeError, match="'o'") as info:
            store.append(filename, {"o": [{"k": 1}, None]})
        assert info.type is UnsupportedValueError
        assert "dict" in str(info.value)
        assert "exclude_from_result" in str(info.value)
        assert not self._exists(filename)
        store.save(filename, {"x": [1.0]})
        with pytest.raises(TypeError, match="'o'"):
            store.append(filename, {"x": [2.0], "o": [object()]})
        assert_columns_equal(store.load(filename), {"x": [1.0]})

    def test_check_rejects_what_append_rejects(self, store, filename):
        if self.supports_objects:
            pytest.skip("store keeps arbitrary objects")
        for check in (store.check, lambda data: store.check(data, filename)):
            with pytest.raises(UnsupportedValueError, match=r"'o'.*exclude_from_result"):
                check({"x": [1.0], "o": [{"k": 1}]})
        assert not self._exists(filename)

    def test_check_accepts_what_append_accepts(self, store, filename):
        data = {"x": [1.0, 2.0], "n": [1, 2], "v": np.zeros((2, 3))}
        if self.supports_strings:
            data["s"] = ["a", "b"]
        if self.supports_objects:
            data["o"] = [{"k": 1}, None]
        store.check(data)
        store.check(data, filename)
        assert not self._exists(filename)
        with pytest.raises(ValueError, match="same length"):
            store.check({"a": [1.0], "b": [1.0, 2.0]})

    def test_unpicklable_values_rejected_by_name(self, store, filename):
        # A value no store can write (a lock, a GPU context): the error names the
        # key, and neither a new nor an existing file is touched.
        data = {"x": [1.0, 2.0], "handle": [None, threading.Lock()]}
        with pytest.raises(UnsupportedValueError, match=r"'handle'.*exclude_from_result"):
            store.check(data, filename)
        with pytest.raises(UnsupportedValueError, match="'handle'"):
            store.append(filename, data)
        assert not self._exists(filename)
        store.save(filename, {"x": [0.0]})
        for write in (store.append, store.save):
            with pytest.raises(UnsupportedValueError, match="'handle'"):
                write(filename, data)
            assert_columns_equal(store.load(filename), {"x": [0.0]})
        assert os.listdir(os.path.dirname(filename)) == [os.path.basename(filename)]

    # -- the file as a whole: exists, remove, replace, temporary names ------------

    def test_exists_remove_replace(self, store, filename):
        assert not store.exists(filename)
        store.remove(filename)  # nothing to remove is fine
        store.save(filename, {"a": [1.0]})
        assert store.exists(filename)
        tmp = tmp_name(filename)
        store.append(tmp, {"a": [2.0]})
        store.append(tmp, {"a": [3.0], "b": [4.0]})
        store.replace(tmp, filename)
        assert not os.path.exists(tmp)
        assert_columns_equal(store.load(filename), {"a": [2.0, 3.0], "b": [np.nan, 4.0]})
        store.remove(filename)
        assert not store.exists(filename)
        assert not os.path.exists(filename)

    def test_writes_leave_no_temporary_files(self, store, filename):
        store.save(filename, {"a": [1.0]})
        store.save(filename, {"a": [1.0, 2.0]})
        store.append(filename, {"a": [3.0]})
        store.append(filename, {"a": [4.0], "b": [[1, 2]]})  # a new key: a rewrite
        with pytest.raises(ValueError, match="same length"):
            store.save(filename, {"a": [1.0], "b": [1.0, 2.0]})
        assert os.listdir(os.path.dirname(filename)) == [os.path.basename(filename)]
        assert_columns_equal(
            store.load(filename),
            {"a": [1.0, 2.0, 3.0, 4.0], "b": [[np.nan, np.nan]] * 3 + [[1.0, 2.0]]},
        )

    # -- metadata ------------------------------------------------------------------

    _METADATA = {"psyrun": "1.0", "n": 3, "ok": True, "keys": ["a", "b"], "git": None}

    def test_metadata_of_a_file_without_any_is_empty(self, store, filename):
        store.save(filename, {"a": [1.0]})
        assert store.read_metadata(filename) == {}

    def test_metadata_roundtrip_leaves_load_unchanged(self, store, filename):
        if not store.supports_metadata:
            pytest.skip("the store keeps no metadata")
        data = {"a": np.array([1.0, 2.0]), "n": np.array([1, 2])}
        store.append(filename, {k: v[:1] for k, v in data.items()})
        store.append(filename, {k: v[1:] for k, v in data.items()})
        store.write_metadata(filename, self._METADATA)
        assert store.read_metadata(filename) == self._METADATA
        assert_columns_equal(store.load(filename), data)
        assert store.count_rows(filename) == 2
        assert_columns_equal(store.load(filename, row=1), {"a": [2.0], "n": [2]})

    def test_metadata_written_again_replaces_the_old(self, store, filename):
        if not store.supports_metadata:
            pytest.skip("the store keeps no metadata")
        store.save(filename, {"a": [1.0]})
        store.write_metadata(filename, {"run": 1})
        store.write_metadata(filename, {"run": 2})
        assert store.read_metadata(filename) == {"run": 2}

    def test_metadata_survives_appends_and_rewrites(self, store, filename):
        if not store.supports_metadata:
            pytest.skip("the store keeps no metadata")
        store.save(filename, {"a": [1.0]})
        store.write_metadata(filename, self._METADATA)
        store.append(filename, {"a": [2.0]})  # in place where the store can
        store.append(filename, {"a": [3.0], "b": [[1, 2]]})  # a new key: a rewrite
        assert store.read_metadata(filename) == self._METADATA
        assert_columns_equal(
            store.load(filename),
            {"a": [1.0, 2.0, 3.0], "b": [[np.nan, np.nan]] * 2 + [[1.0, 2.0]]},
        )

    def test_metadata_goes_along_with_replace(self, store, filename):
        if not store.supports_metadata:
            pytest.skip("the store keeps no metadata")
        tmp = tmp_name(filename)
        store.save(tmp, {"a": [1.0]})
        store.write_metadata(tmp, {"run": 1})
        store.replace(tmp, filename)
        assert store.read_metadata(filename) == {"run": 1}

    def test_metadata_must_be_json(self, store, filename):
        if not store.supports_metadata:
            pytest.skip("the store keeps no metadata")
        store.save(filename, {"a": [1.0]})
        with pytest.raises(TypeError, match="metadata must hold only"):
            store.write_metadata(filename, {"x": object()})
        assert store.read_metadata(filename) == {}

    # -- optional capabilities: correct results ---------------------------------------

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

    # -- optional capabilities: the flags are true ----------------------------------------

    def _capability_file(self, store: Store, filename: str, flag: str) -> int:
        """Skip unless the store sets ``flag``; else write the test file and return its size.

        The file holds ``capability_rows`` rows of one float column, in 8 appends.
        """
        if not getattr(store, flag):
            pytest.skip(f"store does not set {flag}")
        x = np.arange(self.capability_rows, dtype=float)
        for piece in np.array_split(x, 8):
            store.append(filename, {"x": piece})
        return x.nbytes

    @staticmethod
    def _assert_reads_part(what: str, peak: int, limit: float, flag: str) -> None:
        assert peak < limit, (
            f"{what} allocated up to {peak} bytes at once (limit {int(limit)}): "
            f"{flag} promises that it does not read the whole file"
        )

    def test_row_range_reads_only_those_rows(self, store, filename):
        total = self._capability_file(store, filename, "supports_row_range")
        middle = self.capability_rows // 2
        with _forbidden(store, "load", "iter_chunks"), _peak_memory() as memory:
            rows = store.load_rows(filename, middle, middle + 10)
        assert_columns_equal(rows, {"x": np.arange(middle, middle + 10, dtype=float)})
        self._assert_reads_part("load_rows", memory["peak"], total / 4, "supports_row_range")

    def test_load_of_one_row_reads_only_that_row(self, store, filename):
        total = self._capability_file(store, filename, "supports_row_range")
        with _peak_memory() as memory:
            row = store.load(filename, row=-1)
        assert_columns_equal(row, {"x": [self.capability_rows - 1.0]})
        self._assert_reads_part("load(row=-1)", memory["peak"], total / 4, "supports_row_range")

    def test_iter_chunks_holds_one_chunk_at_a_time(self, store, filename):
        total = self._capability_file(store, filename, "supports_chunks")
        chunk_rows = self.capability_rows // 16
        seen = 0
        with _forbidden(store, "load"), _peak_memory() as memory:
            for chunk in store.iter_chunks(filename, chunk_rows=chunk_rows):
                assert len(chunk["x"]) <= chunk_rows
                assert chunk["x"][0] == seen
                seen += len(chunk["x"])
                del chunk
        assert seen == self.capability_rows
        self._assert_reads_part("iter_chunks", memory["peak"], total / 2, "supports_chunks")

    def test_appends_survive_kill(self, store, filename):
        """``appends_survive_kill``: appends killed at random moments keep a readable prefix."""
        if not store.appends_survive_kill:
            pytest.skip("store does not set appends_survive_kill")
        import pickle
        import signal
        import sys
        import time

        # A fresh interpreter appends chunks of 400 rows until it is killed.
        child = (
            "import pickle, sys\n"
            "import numpy as np\n"
            "store = pickle.loads(bytes.fromhex(sys.argv[2]))\n"
            "start = 0\n"
            "while True:\n"
            "    x = np.arange(start, start + 400, dtype=float)\n"
            "    store.append(sys.argv[1], {'x': x, 'y': x * 2})\n"
            "    start += 400\n"
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        rng = np.random.default_rng(11)
        for delay in rng.uniform(0.05, 0.4, size=2):
            proc = subprocess.Popen(
                [sys.executable, "-c", child, filename, pickle.dumps(store).hex()], env=env
            )
            deadline = time.monotonic() + 60
            while not store.exists(filename) and time.monotonic() < deadline:
                assert proc.poll() is None, f"the appending child exited with {proc.returncode}"
                time.sleep(0.005)
            time.sleep(float(delay))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            data = store.load(filename)
            n = len(data["x"])
            assert n % 400 == 0, f"{n} rows is not a whole number of appends"
            assert_columns_equal(data, {"x": np.arange(n, dtype=float), "y": 2 * np.arange(n)})
            assert store.count_rows(filename) == n
        # The next append goes right after the committed rows.
        store.append(filename, {"x": np.array([-1.0]), "y": np.array([-2.0])})
        data = store.load(filename)
        assert_columns_equal(
            data,
            {"x": np.append(np.arange(n, dtype=float), -1), "y": np.append(2 * np.arange(n), -2)},
        )

    def test_count_rows_reads_no_rows(self, store, filename):
        total = self._capability_file(store, filename, "supports_row_count")
        with _forbidden(store, "load", "load_rows", "iter_chunks"), _peak_memory() as memory:
            n = store.count_rows(filename)
        assert n == self.capability_rows
        self._assert_reads_part("count_rows", memory["peak"], total / 8, "supports_row_count")

    # -- damage: every read tells a damaged file from a good one ------------------------

    def _damage_sample(self, store: Store, filename: str) -> dict:
        """Write three appends and metadata; return the columns written."""
        rng = np.random.default_rng(7)
        chunks = []
        for i in range(3):
            n = 300 + 100 * i
            chunk = {"x": rng.random(n), "n": np.arange(n) + 1000 * i}
            if self.supports_strings:
                chunk["s"] = [f"r{j}" for j in range(n)]
            chunks.append(chunk)
            store.append(filename, chunk)
        if store.supports_metadata:
            store.write_metadata(filename, {"run": 1})
        return {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}

    @staticmethod
    def _largest_file(filename: str) -> str:
        return max(result_files(filename), key=os.path.getsize)

    def test_intact_file_verifies(self, store, filename):
        expected = self._damage_sample(store, filename)
        assert assert_exact_or_damaged(store, filename, expected) == []
        assert store.verify(filename) == len(expected["x"])

    @pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
    def test_truncated_file_is_damaged(self, store, filename, fraction):
        expected = self._damage_sample(store, filename)
        target = self._largest_file(filename)
        size = os.path.getsize(target)
        with open(target, "r+b") as f:
            f.truncate(int(size * fraction))
        assert_exact_or_damaged(store, filename, expected, ("load", "iter_chunks", "verify"))

    @pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
    def test_flipped_byte_is_damaged(self, store, filename, where):
        expected = self._damage_sample(store, filename)
        target = self._largest_file(filename)
        offset = int(os.path.getsize(target) * where)
        with open(target, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x5A]))
        # A byte HDF5 left unused may change harmlessly: the rows must then
        # read back exactly; a changed value must be reported.
        assert_exact_or_damaged(store, filename, expected)

    def test_deleted_member_is_damaged(self, store, filename):
        expected = self._damage_sample(store, filename)
        try:
            delete_member(filename)
        except NotImplementedError as exc:
            pytest.skip(str(exc))
        assert_exact_or_damaged(store, filename, expected, ("load", "iter_chunks", "verify"))

    # -- a full disk -------------------------------------------------------------------

    @pytest.mark.parametrize("leave", [0, 8192, 200_000])
    def test_full_disk_says_so_and_keeps_the_file(self, store, filename, leave):
        with small_disk("8m") as disk:
            filename = os.path.join(disk, os.path.basename(filename))
            first = {"x": np.arange(1000.0), "n": np.arange(1000)}
            store.save(filename, first)
            fill_disk(disk, leave)
            big = {"x": np.arange(100_000.0), "n": np.arange(100_000)}
            for write in (store.append, store.save):
                with pytest.raises(OSError, match="disk full") as info:
                    write(filename, big)
                assert info.value.errno == errno.ENOSPC
                assert_columns_equal(store.load(filename), first)
                assert store.verify(filename) == 1000
            os.remove(os.path.join(disk, ".filler"))
            store.append(filename, {"x": [5.0], "n": [5]})
            assert store.verify(filename) == 1001
            names = {os.path.basename(f) for f in os.listdir(disk)}
            assert names == {os.path.basename(filename)}, names

    # -- integers and strings with missing rows ------------------------------------------

    @staticmethod
    def _holds_objects(store: Store) -> bool:
        return store.column_kinds is None or "O" in store.column_kinds

    def test_large_integers_are_never_rounded(self, store, filename):
        # A row without 'n': exact ints and None where objects fit, else a refusal.
        big = [2**60 + 1, 2**60 + 3, -(2**62) - 5]
        store.append(filename, {"n": np.array(big), "x": [1.0, 2.0, 3.0]})
        if self._holds_objects(store):
            store.append(filename, {"x": [4.0]})
            assert store.load(filename)["n"].tolist() == [*big, None]
            return
        with pytest.raises(UnsupportedValueError, match=r"'n'.*2\*\*53"):
            store.append(filename, {"x": [4.0]})
        assert store.load(filename)["n"].tolist() == big  # the file is as it was

    def test_large_integers_next_to_nan_are_never_rounded(self, store, filename):
        column = [2**60 + 1, math.nan, 7]  # NaN: the mapper's mark of a row without a value
        if self._holds_objects(store):
            store.append(filename, {"n": column})
            assert store.load(filename)["n"].tolist() == [2**60 + 1, None, 7]
            return
        with pytest.raises(UnsupportedValueError, match=r"'n'.*2\*\*53"):
            store.append(filename, {"n": column})
        assert not self._exists(filename)

    def test_small_integers_with_missing_rows_become_float(self, store, filename):
        store.append(filename, {"n": [1, 2**53], "x": [1.0, 2.0]})
        store.append(filename, {"x": [3.0]})
        loaded = store.load(filename)
        assert loaded["n"].dtype.kind == "f"
        assert loaded["n"][:2].tolist() == [1.0, float(2**53)]
        assert math.isnan(loaded["n"][2])

    def test_strings_missing_on_some_rows_are_filled_with_empty_string(self, store, filename):
        if not self.supports_strings:
            pytest.skip("store does not keep str columns")
        # NaN marks rows without a value: the mapper's outputs, the parameter
        # space's keys that a sum's other part lacks.
        store.append(filename, {"s": ["a", math.nan, "b"], "x": [1.0, 2.0, 3.0]})
        store.append(filename, {"s": np.full(2, np.nan), "x": [4.0, 5.0]})
        store.append(filename, {"x": [6.0]})
        store.append(filename, {"s": ["c"], "x": [7.0]})
        assert store.load(filename)["s"].tolist() == ["a", "", "b", "", "", "", "c"]
        store.check({"s": ["a", math.nan]}, filename)

    def test_check_does_not_advise_excluding_a_parameter(self, store, filename):
        if self.supports_objects:
            pytest.skip("store keeps arbitrary objects")
        data = {"p": [{"k": 1}], "y": [1.0]}
        with pytest.raises(UnsupportedValueError, match="parameter 'p'") as info:
            store.check(data, filename, params=("p",))
        assert "exclude_from_result" not in str(info.value)
        with pytest.raises(UnsupportedValueError, match="exclude_from_result"):
            store.check(data, filename)  # an output: leaving it out is a way out

    # -- layout: every column by name for a reader without psyrun (HDF5, NPZ, pickle) ------

    @staticmethod
    def _plain_reader(filename: str) -> Callable[[str], dict[str, np.ndarray]]:
        ext = os.path.splitext(filename)[1].lower()
        reader = PLAIN_READERS.get(ext)
        if reader is None:
            pytest.skip(f"no reader without psyrun is known for {ext} results")
        return reader

    def _layout_sample(self) -> list[dict]:
        rng = np.random.default_rng(22)
        chunks = []
        for n in (3, 2):
            chunk = {
                "x": rng.random(n),
                "n": rng.integers(-5, 5, n),
                "flag": rng.random(n) < 0.5,
                "trace": rng.random((n, 2)),
                "with space": rng.random(n),
                "ünï": rng.random(n),
            }
            if self.supports_strings:
                chunk["s"] = [f"é{i}" * (i + 1) for i in range(n)]
            chunks.append(chunk)
        return chunks

    def test_layout_columns_read_by_name_without_psyrun(self, store, filename):
        read = self._plain_reader(filename)
        chunks = self._layout_sample()
        for chunk in chunks:
            store.append(filename, chunk)
        expected = {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
        plain = read(filename)
        assert_columns_equal(plain, expected)
        assert plain["flag"].dtype == np.bool_
        assert plain["n"].dtype.kind in "iu"
        if self.supports_strings:
            assert all(isinstance(v, str) for v in plain["s"].tolist())

    def test_layout_save_gives_plain_columns(self, store, filename):
        # A file written at once: each column under its own name, nothing to join.
        read = self._plain_reader(filename)
        data = {
            k: np.concatenate([np.asarray(c[k]) for c in self._layout_sample()])
            for k in self._layout_sample()[0]
        }
        store.save(filename, data)
        assert_columns_equal(read(filename), data)
        if filename.endswith(".npz"):
            with np.load(filename) as npz:
                for name, values in data.items():
                    assert_columns_equal({name: npz[name]}, {name: values})

    def test_layout_h5_named_nodes_and_native_attributes(self, store, filename):
        if not filename.endswith(".h5"):
            pytest.skip("an HDF5 rule")
        h5py = pytest.importorskip("h5py")
        store.append(filename, {"x": [1.0, 2.0], "a/b": [3, 4], "..": [5.0, 6.0]})
        store.append(filename, {"x": [7.0], "a/b": [8], "..": [9.0]})
        if store.supports_metadata:
            store.write_metadata(filename, {"task": "t", "keys": ["x"]})
        with h5py.File(filename, "r") as f:
            assert f["psyrun/x"][:].tolist() == [1.0, 2.0, 7.0]
            assert f["psyrun/a%2Fb"][:].tolist() == [3, 4, 8]  # the escape of '/'
            assert f["psyrun/%2E%2E"][:].tolist() == [5.0, 6.0, 9.0]  # and of '..'
            attributes = []
            f.visititems(lambda name, obj: attributes.extend(obj.attrs.items()))
            attributes.extend(f.attrs.items())
            for key, value in attributes:
                # Numbers and strings (JSON text where structured), never objects or
                # pickles; PyTables' empty TITLE is an HDF5 null value.
                if isinstance(value, h5py.Empty):
                    continue
                kind = np.asarray(value).dtype.kind
                assert kind in "biufSU", f"attribute {key!r} is of kind {kind!r}"
                if kind in "SU" and not key.isupper():
                    text = value.decode() if isinstance(value, bytes) else str(value)
                    assert not text.startswith(("(", "\x80", "c__builtin__")), key
            if store.supports_metadata:
                assert json.loads(f["psyrun"].attrs["psyrun_metadata"]) == {
                    "task": "t",
                    "keys": ["x"],
                }

    def test_layout_pickle_keeps_plain_names(self, store, filename):
        if not filename.endswith(".pkl"):
            pytest.skip("a pickle rule")
        names = ["x", "a/b", "..", "", "ü 🎲"]
        store.append(filename, {name: [float(i)] for i, name in enumerate(names)})
        store.append(filename, {name: [10.0 + i] for i, name in enumerate(names)})
        plain = read_pickle_plainly(filename)
        assert list(plain) == names
        assert plain["a/b"].tolist() == [1.0, 11.0]


# -- the stateful model test -------------------------------------------------------------


def store_model(make_store: Callable[[], Store], strings: bool = True) -> type:
    """Build a hypothesis state machine that checks a store against a list of rows.

    The machine saves and appends random chunks (float, int, per-row vector
    and, with `strings`, str columns; keys come and go, vector widths change)
    and checks :meth:`~Store.load`, ``load(row=...)``, :meth:`~Store.load_rows`,
    :meth:`~Store.iter_chunks` and :meth:`~Store.count_rows` against the rows
    it added, padded as the stores promise.

    Parameters
    ----------
    make_store
        Returns the store to test (a class works).
    strings
        Whether the store keeps str columns.

    Returns
    -------
    type
        A ``hypothesis.stateful.RuleBasedStateMachine`` subclass.
    """
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

    keys = ["a", "b", "v", "s"] if strings else ["a", "b", "v"]

    @st.composite
    def chunks(draw):
        """Draw a chunk: the column mapping passed to the store and its rows."""
        n = draw(st.integers(1, 4))
        present = draw(st.sets(st.sampled_from(keys), min_size=1))
        columns = {}
        if "a" in present:
            values = draw(st.lists(st.integers(-9, 9), min_size=n, max_size=n))
            columns["a"] = [float(x) for x in values]
        if "b" in present:
            columns["b"] = draw(st.lists(st.integers(-9, 9), min_size=n, max_size=n))
        if "v" in present:
            width = draw(st.integers(1, 3))
            row = st.lists(st.integers(-9, 9), min_size=width, max_size=width)
            vectors = draw(st.lists(row, min_size=n, max_size=n))
            columns["v"] = [[float(x) for x in r] for r in vectors]
        if "s" in present:
            text = st.text(st.sampled_from("xyzé"), min_size=1, max_size=4)
            columns["s"] = draw(st.lists(text, min_size=n, max_size=n))
        rows = [{k: columns[k][i] for k in columns} for i in range(n)]
        return columns, rows

    class StoreModel(RuleBasedStateMachine):
        """The model is a list of rows; a key absent from a row is missing there."""

        def __init__(self):
            super().__init__()
            self.store = make_store()
            self.dir = tempfile.mkdtemp(prefix="psyrun-stateful-")
            self.filename = f"{self.dir}/r{self.store.ext}"
            self.rows: list[dict] | None = None
            self.keys: list[str] = []

        def teardown(self):
            shutil.rmtree(self.dir, ignore_errors=True)

        def _expected(self, rows):
            """Columns as the store should return them, built from the rows alone."""
            rows = list(rows)
            out = {}
            for key in self.keys:
                values = [r.get(key) for r in self.rows]
                if key == "v":
                    width = max(len(v) for v in values if v is not None)
                    padded = np.full((len(values), width), math.nan)
                    for i, v in enumerate(values):
                        if v is not None:
                            padded[i, : len(v)] = v
                    out[key] = padded[rows]
                elif key == "s":
                    out[key] = ["" if values[i] is None else values[i] for i in rows]
                else:
                    column = [math.nan if v is None else v for v in values]
                    out[key] = np.array(column, dtype=float)[rows]
            return out

        def _compare(self, loaded, rows):
            expected = self._expected(rows)
            assert list(loaded) == list(expected)
            for key, want in expected.items():
                got = loaded[key]
                assert isinstance(got, np.ndarray)
                if key == "s":
                    assert got.tolist() == want
                    continue
                np.testing.assert_array_equal(got.astype(float), want)
                if any(r.get(key) is None for r in self.rows) or key == "a":
                    assert got.dtype.kind == "f", (key, got.dtype)

        def _add(self, rows, replace):
            if replace:
                self.rows, self.keys = [], []
            for row in rows:
                for key in row:
                    if key not in self.keys:
                        self.keys.append(key)
            self.rows = [*self.rows, *rows]

        @rule(chunk=chunks())
        def save(self, chunk):
            columns, rows = chunk
            self.store.save(self.filename, columns)
            self._add(rows, replace=True)

        @rule(chunk=chunks())
        def append(self, chunk):
            columns, rows = chunk
            self.store.append(self.filename, columns)
            self._add(rows, replace=self.rows is None)

        @precondition(lambda self: self.rows is not None)
        @rule()
        def load(self):
            self._compare(self.store.load(self.filename), range(len(self.rows)))

        @precondition(lambda self: self.rows is not None)
        @rule(data=st.data())
        def load_row(self, data):
            i = data.draw(st.integers(-len(self.rows), len(self.rows) - 1))
            self._compare(self.store.load(self.filename, row=i), [range(len(self.rows))[i]])

        @precondition(lambda self: self.rows is not None)
        @rule(data=st.data())
        def load_rows(self, data):
            n = len(self.rows)
            start = data.draw(st.integers(0, n))
            stop = data.draw(st.integers(start, n + 2))
            self._compare(self.store.load_rows(self.filename, start, stop), range(n)[start:stop])

        @precondition(lambda self: self.rows is not None)
        @rule(chunk_rows=st.integers(1, 5))
        def iter_chunks(self, chunk_rows):
            pieces = list(self.store.iter_chunks(self.filename, chunk_rows=chunk_rows))
            joined = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
            self._compare(joined, range(len(self.rows)))

        @invariant()
        def row_count(self):
            if self.rows is not None:
                assert self.store.count_rows(self.filename) == len(self.rows)

        @invariant()
        def exists(self):
            assert self.store.exists(self.filename) == (self.rows is not None)

    name = getattr(make_store, "__name__", type(make_store).__name__)
    StoreModel.__name__ = StoreModel.__qualname__ = f"{name}Model"
    return StoreModel


def store_model_test(
    make_store: Callable[[], Store],
    strings: bool = True,
    max_examples: int = 30,
    steps: int = 10,
) -> type:
    """Return a test case class running :func:`store_model` for ``make_store``.

    Assign it to a ``Test...`` name in a test module for pytest to collect it.

    Parameters
    ----------
    make_store, strings
        As for :func:`store_model`.
    max_examples
        Number of random sequences of operations.
    steps
        Operations per sequence.

    Returns
    -------
    type
        A :class:`unittest.TestCase` subclass.
    """
    from hypothesis import settings

    machine = store_model(make_store, strings=strings)
    configured = settings(max_examples=max_examples, stateful_step_count=steps, deadline=None)
    return configured(machine).TestCase
