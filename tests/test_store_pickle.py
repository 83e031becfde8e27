"""PickleStore specifics: plain-pickle compatibility, in-place appends, crash safety."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from psyrun.store import PickleStore
from psyrun.store import pickle as pickle_module
from psyrun.store.pickle import _PROTOCOL, _decode_file, _items_opcodes
from psyrun.store.pickle_codec import encode_items
from psyrun.store.testing import assert_columns_equal


@pytest.fixture
def store():
    return PickleStore()


@pytest.fixture
def filename(tmp_path):
    return str(tmp_path / "result.pkl")


def test_finished_file_is_a_plain_pickled_dict(store, filename):
    store.append(filename, {"a": [1.0, 2.0], "s": ["x", "y"], "o": [None, {"k": 1}]})
    store.append(filename, {"a": [3.0], "s": ["z"], "o": [{"k": 2}]})
    with open(filename, "rb") as f:
        raw = pickle.load(f)
    assert raw == {"a": [1.0, 2.0, 3.0], "s": ["x", "y", "z"], "o": [None, {"k": 1}, {"k": 2}]}


@pytest.mark.parametrize(
    "legacy",
    [
        {"a": [1, 2], "b": [0.5, 1.5]},  # psyrun 0.8: dict of lists
        {"a": np.array([1, 2]), "b": np.array([0.5, 1.5])},  # ... or of arrays
    ],
)
def test_psyrun_08_files_load_and_append(store, filename, legacy):
    with open(filename, "wb") as f:
        pickle.dump(legacy, f)
    assert_columns_equal(store.load(filename), {"a": [1, 2], "b": [0.5, 1.5]})
    assert store.count_rows(filename) == 2
    store.append(filename, {"a": [3], "b": [2.5]})
    store.append(filename, {"a": [4], "b": [3.5]})
    assert_columns_equal(store.load(filename), {"a": [1, 2, 3, 4], "b": [0.5, 1.5, 2.5, 3.5]})
    with open(filename, "rb") as f:
        assert pickle.load(f) == {"a": [1, 2, 3, 4], "b": [0.5, 1.5, 2.5, 3.5]}


def _stop(raw: bytes) -> int:
    """The offset of the STOP that ends the pickle in a file's bytes `raw`."""
    stop = PickleStore._read_meta(io.BytesIO(raw))["stop"]
    assert raw[stop : stop + 1] == pickle.STOP
    return stop


def test_append_writes_only_the_new_rows(store, filename):
    store.append(filename, {"a": np.arange(10_000.0)})
    with open(filename, "rb") as f:
        before = f.read()
    size_before = len(before)
    store.append(filename, {"a": [1.5]})
    with open(filename, "rb") as f:
        after = f.read()
    # the old file is untouched but for the commit byte over its STOP, and it grew by a little
    stop = _stop(before)
    assert after[:stop] == before[:stop]
    assert after[stop : stop + 1] == pickle.BINBYTES
    assert after[stop + 1 : size_before] == before[stop + 1 :]
    assert len(after) - size_before < 200
    assert store.load(filename)["a"][-2:].tolist() == [9999.0, 1.5]


def test_crash_while_writing_an_append_keeps_old_rows(store, filename):
    store.append(filename, {"a": [1.0, 2.0]})
    with open(filename, "ab") as f:
        f.write(b"\x00garbage from an interrupted append")
    assert_columns_equal(store.load(filename), {"a": [1.0, 2.0]})
    assert store.count_rows(filename) == 2
    store.append(filename, {"a": [3.0]})
    assert_columns_equal(store.load(filename), {"a": [1.0, 2.0, 3.0]})


def test_crash_before_commit_byte_keeps_old_rows(store, filename):
    store.append(filename, {"a": [1.0, 2.0]})
    with open(filename, "rb") as f:
        old_stop = _stop(f.read())
    store.append(filename, {"a": [3.0]})
    # undo only the final one-byte commit: the new section and trailer are on disk
    with open(filename, "r+b") as f:
        f.seek(old_stop)
        f.write(pickle.STOP)
    assert_columns_equal(store.load(filename), {"a": [1.0, 2.0]})
    assert store.count_rows(filename) == 2
    store.append(filename, {"a": [4.0]})
    assert_columns_equal(store.load(filename), {"a": [1.0, 2.0, 4.0]})


def test_non_dict_pickle_is_rejected_clearly(store, filename):
    with open(filename, "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match="pickled dict"):
        store.load(filename)


# -- the NumPy encoder of bool, int and float columns ------------------------------------

NUMERIC_DTYPES = [
    "float16", "float32", "float64", ">f8",
    "int8", "int16", "int32", "int64", ">i8",
    "uint8", "uint16", "uint32", "uint64", ">u8",
    "bool",
]  # fmt: skip


def _items(column: np.ndarray) -> list:
    """Load ``column``'s item opcodes as the rows of a list, as a file does."""
    raw = pickle.PROTO + bytes([_PROTOCOL]) + pickle.EMPTY_LIST + _items_opcodes(column)
    raw += pickle.STOP
    pickletools.dis(raw, out=io.StringIO())  # a well-formed stream (MARK ... APPENDS balanced)
    assert all(op.proto <= _PROTOCOL for op, _, _ in pickletools.genops(raw))
    return pickle.loads(raw)


def assert_same_python_values(got: list, want: list) -> None:
    """Same length, element types and values; floats compare bit for bit (NaN, -0.0)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert type(g) is type(w), (g, w)
        if type(w) is float:
            assert struct.pack("<d", g) == struct.pack("<d", w), (g, w)
        else:
            assert g == w


def _numeric_columns(dtype: str, max_size: int = 50):
    column = hnp.arrays(np.dtype(dtype), st.integers(0, max_size))
    # Strided columns too: the encoder must not rely on contiguous input.
    return st.tuples(column, st.booleans()).map(lambda c: c[0][::2] if c[1] else c[0])


def _extremes(dtype: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        values = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, np.finfo(dtype).max]
        values += [np.finfo(dtype).min, np.finfo(dtype).tiny, np.finfo(dtype).smallest_subnormal]
        return np.array(values, dtype=dtype)
    if dtype.kind == "b":
        return np.array([True, False, True], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([info.min, info.max, 0, info.max // 2, info.max // 2 + 1], dtype=dtype)


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES)
@given(data=st.data())
def test_numeric_columns_load_as_tolist(dtype, data):
    column = data.draw(st.one_of(_numeric_columns(dtype), st.just(_extremes(dtype))))
    assert encode_items(column) is not None  # the NumPy path, not the Pickler
    assert_same_python_values(_items(column), column.tolist())


@pytest.mark.parametrize(
    "values",
    [
        [0, 255],  # BININT1
        [0, 65535],  # BININT2
        [-1, 2**31 - 1],  # BININT
        [-(2**31) - 1, 2**63 - 1],  # LONG1, 8 bytes
        [2**63, 2**64 - 1, 0],  # LONG1, 9 bytes: the sign byte of uint64
    ],
)
def test_integer_columns_at_each_opcode_range(values):
    for dtype in ("int64", "uint64"):
        if all(np.iinfo(dtype).min <= v <= np.iinfo(dtype).max for v in values):
            column = np.array(values, dtype=dtype)
            assert_same_python_values(_items(column), values)


def test_an_empty_numeric_column_gives_no_opcodes():
    # As pickling an empty list: nothing between the list and the next opcode.
    for dtype in NUMERIC_DTYPES:
        assert _items_opcodes(np.empty(0, dtype=dtype)) == b""


@pytest.mark.parametrize(
    "column",
    [
        np.array([1 + 2j, 3j]),
        np.array(["a", "bc"]),
        np.array([[1.0, 2.0], [3.0, 4.0]]),
        np.array([1.5, 2.5], dtype=np.longdouble),
        np.ma.masked_array([1.0, 2.0], mask=[False, True]),
        np.array([None, {"k": 1}], dtype=object),
    ],
    ids=["complex", "str", "2-d", "longdouble", "masked", "object"],
)
def test_other_columns_take_the_pickler_path(column):
    assert encode_items(column) is None
    want = list(column) if column.dtype.kind == "O" else column.tolist()
    assert _items(column) == want


# One column of each kind; int8 and uint64 also cover the smallest and widest opcodes.
_CHUNK_DTYPES = {
    "f": "float64",
    "h": "float32",
    "i": "int64",
    "u": "uint64",
    "k": "int8",
    "b": "bool",
}


@st.composite
def _chunks(draw):
    """A few chunks of equal-length columns, one per supported dtype."""
    chunks = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, 20))
        chunks.append(
            {key: draw(hnp.arrays(np.dtype(dt), n)) for key, dt in _CHUNK_DTYPES.items()}
        )
    return chunks


@given(chunks=_chunks())
@example(chunks=[{k: _extremes(dt)[:3] for k, dt in _CHUNK_DTYPES.items()}] * 3)
def test_appended_numeric_columns_load_back_with_exact_types(chunks):
    with tempfile.TemporaryDirectory() as tmp:
        filename = os.path.join(tmp, "result.pkl")
        store = PickleStore()
        for chunk in chunks:
            store.append(filename, chunk)
        want = {k: np.concatenate([c[k] for c in chunks]) for k in _CHUNK_DTYPES}
        with open(filename, "rb") as f:
            raw = pickle.load(f)
        assert set(raw) == set(want)
        for key in want:
            assert type(raw[key]) is list
            assert_same_python_values(raw[key], want[key].tolist())
        if any(len(c["f"]) for c in chunks):  # (a file without rows has float columns)
            loaded = store.load(filename)
            assert_columns_equal(loaded, want)
            assert {k: v.dtype for k, v in loaded.items()} == _CHUNK_DTYPES
        # Read by NumPy, exactly as unpickling the rows reads them.
        assert_same_columns(read_by_numpy(filename), read_by_pickle(filename))


# -- reading the rows with NumPy ---------------------------------------------------


def read_by_numpy(filename: str) -> dict | None:
    """The columns NumPy reads from a file, None where it leaves the file to pickle."""
    with open(filename, "rb") as f:
        meta = PickleStore._read_meta(f)
        f.seek(0)
        raw = f.read(meta["stop"] + 1)
    return _decode_file(raw, meta)


def read_by_pickle(filename: str) -> dict:
    """The columns as unpickling the rows and converting them gives them."""
    with open(filename, "rb") as f:
        raw = pickle.load(f)
        meta = PickleStore._read_meta(f)
    return {k: np.asarray(v, dtype=meta["columns"][k][0]) for k, v in raw.items()}


def assert_same_columns(got: dict | None, want: dict) -> None:
    assert got is not None, "NumPy did not read the file"
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].tobytes() == want[key].tobytes(), key  # the bits, NaN included


@pytest.fixture
def pickler_writes(monkeypatch):
    """Append as earlier versions did: every column through the standard Pickler."""
    monkeypatch.setattr(pickle_module, "encode_items", lambda column: None)


@pytest.mark.parametrize(
    "column",
    [
        np.array([0.5, -0.0, np.nan, np.inf] * 700),  # several MARK ... APPENDS batches
        np.array([True, False, False] * 400),
        np.arange(2001) % 256,  # ints that all take BININT1
        np.array([2.5]),  # one row: the Pickler writes it with APPEND
    ],
    ids=["float", "bool", "narrow-int", "one-row"],
)
def test_numpy_reads_what_the_pickler_wrote(store, filename, pickler_writes, column):
    for start in (0, 1, 1001):
        store.append(filename, {"c": column[start:], "n": column[start:]})
    assert_same_columns(read_by_numpy(filename), read_by_pickle(filename))
    assert_same_columns(store.load(filename), read_by_pickle(filename))


@pytest.mark.parametrize(
    "columns",
    [
        {"i": np.array([1, 300, 70000, 2**40])},  # the Pickler's ints of mixed widths
        {"f": np.array([0.5, 1.5]), "s": np.array(["x", "y"])},
        {"f": np.array([0.5, 1.5]), "o": np.array([None, {"k": 1}], dtype=object)},
        {"m": np.zeros((2, 3))},
    ],
    ids=["mixed-ints", "strings", "objects", "2-d"],
)
def test_files_numpy_cannot_read_are_unpickled(store, filename, pickler_writes, columns):
    store.append(filename, columns)
    store.append(filename, columns)
    assert read_by_numpy(filename) is None
    want = {k: np.concatenate([v, v]) for k, v in columns.items()}
    assert_columns_equal(store.load(filename), want)


def test_numpy_reads_files_whose_chunks_change_the_int_opcode(store, filename):
    # Each append picks its own opcode from its own range.
    for chunk in ([1, 2], [300, 70000], [-(2**40), 5], [2]):
        store.append(filename, {"i": np.array(chunk, dtype=np.int64)})
    got = read_by_numpy(filename)
    assert_same_columns(got, read_by_pickle(filename))
    assert got["i"].tolist() == [1, 2, 300, 70000, -(2**40), 5, 2]
