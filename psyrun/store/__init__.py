"""Stores that stream columnar result chunks to and from files.

Every store implements :class:`Store`; pick one by extension with
:func:`get_store` or :class:`AutodetectStore`. PyTables and zarr are imported
only when an :class:`H5Store` or :class:`ZarrStore` actually touches a file.
"""

from __future__ import annotations

from psyrun.store.autodetect import AutodetectStore, available_stores, get_store
from psyrun.store.base import Store, UnsupportedValueError
from psyrun.store.h5 import H5Store
from psyrun.store.npz import NpzStore
from psyrun.store.pickle import PickleStore
from psyrun.store.zarr import ZarrStore

#: The store used when a task does not name one.
DefaultStore = PickleStore

__all__ = [
    "AutodetectStore",
    "DefaultStore",
    "H5Store",
    "NpzStore",
    "PickleStore",
    "Store",
    "UnsupportedValueError",
    "ZarrStore",
    "available_stores",
    "get_store",
]
