"""Helpers for tests that run once per store."""

from __future__ import annotations

import json

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


def write_h5_08_file(filename: str, chunks: list[dict], node: str = "/psyrun") -> None:
    """Write `chunks` as psyrun 0.8's H5Store did: one array per column under `node`.

    The first chunk makes fixed arrays (0.8's ``save``) when there is only
    one; otherwise every chunk is appended to extendable arrays (0.8's
    ``append``, which creates them on the first chunk).
    """
    import numpy as np
    import tables

    parent, _, name = node.rpartition("/")
    with tables.open_file(filename, "w") as h5file:
        group = h5file.create_group(parent or "/", name, createparents=True)
        if len(chunks) == 1:
            for key, values in chunks[0].items():
                h5file.create_array(group, key, np.asarray(values))
            return
        for chunk in chunks:
            for key, values in chunk.items():
                values = np.asarray(values)
                if key not in group:
                    h5file.create_earray(group, key, obj=values)
                else:
                    group._f_get_child(key).append(values)


def write_h5_c_file(filename: str, data: dict) -> None:
    """Write `data` in the layout of the psyrun versions between 0.8 and named columns.

    Columns /c0, /c1, ... named by a pickled list on the root, str as UTF-8
    bytes marked ``psyrun_utf8``, checksums in /psyrun_sums and the commit
    record on the root (the format of the record is the current one's).
    """
    import numpy as np
    import tables

    from psyrun.store import h5

    with tables.open_file(filename, "w") as h5file:
        h5file.root._v_attrs.psyrun_columns = list(data)  # PyTables pickles the list
        nodes, stored = [], []
        for i, values in enumerate(data.values()):
            values = np.asarray(values)
            if values.dtype.kind == "U":
                values = np.char.encode(values, "utf-8")
            node = h5file.create_earray(h5file.root, f"c{i}", obj=values)
            if values.dtype.kind == "S":
                node.attrs.psyrun_utf8 = True
            nodes.append(node)
            stored.append(values)
        complete, partial = h5._block_sums(stored)
        sums = h5file.create_earray(
            h5file.root, "psyrun_sums", atom=tables.UInt64Atom(), shape=(0, len(nodes))
        )
        if complete:
            sums.append(np.array(complete, dtype=np.uint64))
        n = len(stored[0])
        h5file.root._v_attrs.psyrun_commit = h5._commit_text(list(data), n, nodes, partial)
        h5file.root._v_attrs.psyrun_metadata = json.dumps({"run": 3})
