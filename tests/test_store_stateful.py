"""Each store against a plain row-list model under random save/append/load sequences."""

from __future__ import annotations

import math
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from psyrun.store import H5Store, NpzStore, PickleStore, ZarrStore

NAN = math.nan


@st.composite
def chunks(draw):
    """A chunk as a list of row dicts plus the column mapping passed to the store."""
    n = draw(st.integers(1, 4))
    keys = draw(st.sets(st.sampled_from(["a", "b", "v", "s"]), min_size=1))
    columns = {}
    if "a" in keys:
        values = draw(st.lists(st.integers(-9, 9), min_size=n, max_size=n))
        columns["a"] = [float(x) for x in values]
    if "b" in keys:
        columns["b"] = draw(st.lists(st.integers(-9, 9), min_size=n, max_size=n))
    if "v" in keys:
        width = draw(st.integers(1, 3))
        row = st.lists(st.integers(-9, 9), min_size=width, max_size=width)
        columns["v"] = [[float(x) for x in r] for r in draw(st.lists(row, min_size=n, max_size=n))]
    if "s" in keys:
        text = st.text(st.sampled_from("xyzé"), min_size=1, max_size=4)
        columns["s"] = draw(st.lists(text, min_size=n, max_size=n))
    rows = [{k: columns[k][i] for k in columns} for i in range(n)]
    return columns, rows


class StoreModel(RuleBasedStateMachine):
    """The model is a list of rows; a key absent from a row is missing there."""

    store_class = PickleStore

    def __init__(self):
        super().__init__()
        self.store = self.store_class()
        self.dir = tempfile.mkdtemp(prefix="psyrun-stateful-")
        self.filename = f"{self.dir}/r{self.store.ext}"
        self.rows: list[dict] | None = None
        self.keys: list[str] = []

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def _expected(self, rows):
        """Float columns as the store should return them, built from the rows alone."""
        rows = list(rows)
        out = {}
        for key in self.keys:
            values = [r.get(key) for r in self.rows]
            if key == "v":
                width = max(len(v) for v in values if v is not None)
                padded = np.full((len(values), width), NAN)
                for i, v in enumerate(values):
                    if v is not None:
                        padded[i, : len(v)] = v
                out[key] = padded[rows]
            elif key == "s":
                out[key] = ["" if values[i] is None else values[i] for i in rows]
            else:
                out[key] = np.array([NAN if v is None else v for v in values], dtype=float)[rows]
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


def _machine(store_class):
    return type(f"{store_class.__name__}Model", (StoreModel,), {"store_class": store_class})


# A few dozen sequences per store by default; the "thorough" profile digs deeper.
_THOROUGH = os.environ.get("PSYRUN_HYPOTHESIS_PROFILE") == "thorough"
_settings = settings(max_examples=400 if _THOROUGH else 30, stateful_step_count=10, deadline=None)

TestPickleStoreModel = _settings(_machine(PickleStore)).TestCase
TestNpzStoreModel = _settings(_machine(NpzStore)).TestCase
TestH5StoreModel = _settings(_machine(H5Store)).TestCase
TestZarrStoreModel = _settings(_machine(ZarrStore)).TestCase

pytestmark = pytest.mark.filterwarnings("error")
