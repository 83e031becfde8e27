"""asv benchmarks for psyrun.store: chunked appends and loads for every store."""

from __future__ import annotations

import os
import shutil
import tempfile

from .report_store import (
    append_with_pytables,
    append_with_pytables_reopened,
    append_with_store,
    append_with_zarr,
    append_with_zarr_reopened,
    make_chunks,
    remove,
)

EXTS = [".pkl", ".npz", ".h5", ".zarr"]


class Append:
    """Append 10^6 rows of three float64 columns in 1,000 chunks."""

    params = [EXTS]
    param_names = ["store"]
    timeout = 300
    number = 1
    repeat = 3

    def setup(self, ext):
        self.chunks = make_chunks()
        self.dir = tempfile.mkdtemp(prefix="psyrun-asv-")
        self.filename = os.path.join(self.dir, f"r{ext}")

    def teardown(self, ext):
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_append(self, ext):
        remove(self.filename)
        append_with_store(ext, self.filename, self.chunks)


class AppendDirect:
    """The same chunks written with PyTables / zarr directly, for the ratio."""

    params = [["pytables", "zarr"], [True, False]]
    param_names = ["library", "reopen_per_chunk"]
    timeout = 300
    number = 1
    repeat = 3

    def setup(self, library, reopen):
        self.chunks = make_chunks()
        self.dir = tempfile.mkdtemp(prefix="psyrun-asv-")
        self.filename = os.path.join(self.dir, "r.h5" if library == "pytables" else "r.zarr")

    def teardown(self, library, reopen):
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_append_direct(self, library, reopen):
        remove(self.filename)
        if library == "pytables":
            fn = append_with_pytables_reopened if reopen else append_with_pytables
        else:
            fn = append_with_zarr_reopened if reopen else append_with_zarr
        fn(self.filename, self.chunks)


class Load:
    """Load back a file of 10^6 rows written in 1,000 chunks."""

    params = [EXTS]
    param_names = ["store"]
    timeout = 300

    def setup_cache(self):
        root = tempfile.mkdtemp(prefix="psyrun-asv-load-")
        chunks = make_chunks()
        for ext in EXTS:
            append_with_store(ext, os.path.join(root, f"r{ext}"), chunks)
        return root

    def time_load(self, root, ext):
        from psyrun.store import get_store

        get_store(ext).load(os.path.join(root, f"r{ext}"))

    def time_count_rows(self, root, ext):
        from psyrun.store import get_store

        get_store(ext).count_rows(os.path.join(root, f"r{ext}"))
