"""asv benchmarks for big sweeps: the streaming merge of disjoint parts (issue 25, target 4).

The merge of a fresh DistributeBackend run copies the parts (files of the
task's store) chunk by chunk without matching rows; its time and peak memory
are measured here on 4 parts of 2^18 rows of three float64 columns (24 MB),
beside the one-process PyTables write of the same rows (the floor).
``benchmarks/report_bigsweep.py`` measures whole ``psy run`` commands at
10^7-10^8 rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

ROWS, PARTS = 2**18, 4


def _write_parts(ext: str, directory: str) -> list[str]:
    from psyrun.store import get_store

    store = get_store(ext)
    paths = []
    for i in range(PARTS):
        path = os.path.join(directory, f"{i}{ext}")
        ids = np.arange(i * ROWS, (i + 1) * ROWS)
        a, b = (ids // 1024).astype(float), (ids % 1024).astype(float)
        store.append(path, {"a": a, "b": b, "y": a * b + 0.5})
        paths.append(path)
    return paths


class ExactMerge:
    """merge_files(..., exact=True) of four parts into one result."""

    params = [[".h5", ".zarr"]]
    param_names = ["store"]
    timeout = 300
    number = 1
    repeat = 3

    def setup(self, ext):
        self.dir = tempfile.mkdtemp(prefix="psyrun-asv-")
        self.parts = _write_parts(ext, self.dir)
        self.dest = os.path.join(self.dir, f"result{ext}")

    def teardown(self, ext):
        shutil.rmtree(self.dir, ignore_errors=True)

    def _merge(self, ext):
        from psyrun.results.merge import merge_files
        from psyrun.store import get_store

        store = get_store(ext)
        store.remove(self.dest)
        merge_files(store, self.dest, self.parts, ["a", "b"], exact=True)

    def time_exact_merge(self, ext):
        self._merge(ext)

    def peakmem_exact_merge(self, ext):
        self._merge(ext)


class FloorWrite:
    """The same rows appended by one process with PyTables (the floor of the ratio)."""

    timeout = 300
    number = 1
    repeat = 3

    def setup(self):
        self.dir = tempfile.mkdtemp(prefix="psyrun-asv-")

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_pytables_write(self):
        import tables

        path = os.path.join(self.dir, "floor.h5")
        with tables.open_file(path, "w") as f:
            cols = [f.create_earray("/", k, tables.Float64Atom(), (0,)) for k in "aby"]
            for i in range(PARTS):
                ids = np.arange(i * ROWS, (i + 1) * ROWS)
                a, b = (ids // 1024).astype(float), (ids % 1024).astype(float)
                for col, values in zip(cols, (a, b, a * b + 0.5)):
                    col.append(values)
