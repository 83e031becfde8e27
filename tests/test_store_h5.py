"""H5Store specifics: real appends into extendable arrays."""

from __future__ import annotations

import numpy as np
import pytest

from psyrun.store import H5Store


def test_appends_extend_arrays_in_place(tmp_path):
    tables = pytest.importorskip("tables")
    filename = str(tmp_path / "r.h5")
    store = H5Store()
    store.append(filename, {"a": np.arange(3.0)})
    store.append(filename, {"a": np.arange(2.0)})
    with tables.open_file(filename) as h5file:
        arrays = [a for a in h5file.walk_nodes("/", classname="EArray") if a.name != "psyrun_sums"]
        assert len(arrays) == 1
        assert arrays[0].nrows == 5
    assert store.load(filename, row=3)["a"].tolist() == [0.0]


def test_row_out_of_range_names_the_file(tmp_path):
    filename = str(tmp_path / "r.h5")
    H5Store().save(filename, {"a": [1.0]})
    with pytest.raises(IndexError, match="out of range"):
        H5Store().load(filename, row=5)
