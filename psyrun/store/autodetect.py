"""Choose a store from a file's extension: built-ins plus ``psyrun.stores`` plugins.

A third-party package registers a store with an entry point::

    [project.entry-points."psyrun.stores"]
    ".myext" = "mypackage.module:MyStore"

Entry points are read on first use and cached; :func:`available_stores`
``(refresh=True)`` reads them again.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import numpy as np

from psyrun.store.base import DEFAULT_CHUNK_ROWS, Store
from psyrun.store.columns import normalize

__all__ = ["AutodetectStore", "available_stores", "get_store"]

ENTRY_POINT_GROUP = "psyrun.stores"

#: The one table of built-in extensions: extension -> "module:Class". What a
#: store needs installed is the class's own business (``library``, ``requirement``).
BUILTINS: dict[str, str] = {
    ".pkl": "psyrun.store.pickle:PickleStore",
    ".npz": "psyrun.store.npz:NpzStore",
    ".h5": "psyrun.store.h5:H5Store",
    ".zarr": "psyrun.store.zarr:ZarrStore",
}

_cache: dict[str, Any] | None = None


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ext = ep.name.lower()
        if not ext.startswith("."):
            ext = "." + ext
        found[ext] = ep
    return found


def available_stores(refresh: bool = False) -> dict[str, str]:
    """Map every known extension to the store class path that handles it.

    Built-ins win over plugins registering the same extension.
    """
    global _cache
    if _cache is None or refresh:
        _cache = _entry_points()
    known = {ext: ep.value for ext, ep in _cache.items()}
    known.update(BUILTINS)
    return dict(sorted(known.items()))


def _extension(filename_or_ext: str | os.PathLike) -> str:
    name = os.fspath(filename_or_ext).rstrip("/" + os.sep)
    if name.startswith(".") and "." not in name[1:] and os.sep not in name:
        return name.lower()
    return os.path.splitext(name)[1].lower()


def _load_class(path: str) -> type[Store]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def get_store(filename_or_ext: str | os.PathLike) -> Store:
    """Return the store instance for a file name or an extension (``'.h5'``, ``'x.H5'``).

    Raises
    ------
    ValueError
        For an unknown extension; the message lists the known ones.
    ImportError
        When the store's library is missing; the message names the extra.
    """
    ext = _extension(filename_or_ext)
    if ext in BUILTINS:
        store = _load_class(BUILTINS[ext])()
        # Only look for the library (importing it would make `psy` slow to start).
        if store.library is not None and importlib.util.find_spec(store.library) is None:
            raise ImportError(store.missing_library_message())
        return store
    available_stores()
    assert _cache is not None
    if ext not in _cache:
        available_stores(refresh=True)  # a plugin may have been installed since
    if ext in _cache:
        cls = _cache[ext].load()
        if not (isinstance(cls, type) and issubclass(cls, Store)):
            raise TypeError(
                f"entry point {_cache[ext].value!r} for {ext!r} in group "
                f"{ENTRY_POINT_GROUP!r} is not a psyrun.store.Store subclass"
            )
        return cls()
    known = ", ".join(available_stores())
    needs = {ext: _load_class(path).requirement for ext, path in BUILTINS.items()}
    extras = "; ".join(f"{e} needs `pip install {x}`" for e, x in needs.items() if x)
    raise ValueError(
        f"no store for {os.fspath(filename_or_ext)!r} (extension {ext or '(none)'!r}); "
        f"known extensions: {known} ({extras}). Other stores can be added through the "
        f"{ENTRY_POINT_GROUP!r} entry-point group."
    )


class AutodetectStore(Store):
    """A store that forwards every call to the store chosen by the file extension.

    The extension is matched case-insensitively among the built-in stores and
    those registered in the ``psyrun.stores`` entry-point group.
    """

    ext = ""
    supports_metadata = True  # every built-in store; a plugin store may refuse to write

    def save(self, filename: str, data: Mapping[str, Any]) -> None:
        """Save with the store for ``filename``'s extension."""
        get_store(filename).save(filename, data)

    def load(self, filename: str, row: int | None = None) -> dict[str, np.ndarray]:
        """Load with the store for ``filename``'s extension."""
        return get_store(filename).load(filename, row=row)

    def append(self, filename: str, data: Mapping[str, Any]) -> None:
        """Append with the store for ``filename``'s extension."""
        get_store(filename).append(filename, data)

    def load_rows(self, filename: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """Load a row range with the store for ``filename``'s extension."""
        return get_store(filename).load_rows(filename, start, stop)

    def iter_chunks(
        self, filename: str, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Iterator[dict[str, np.ndarray]]:
        """Iterate chunks with the store for ``filename``'s extension."""
        return get_store(filename).iter_chunks(filename, chunk_rows)

    def count_rows(self, filename: str) -> int:
        """Count rows with the store for ``filename``'s extension."""
        return get_store(filename).count_rows(filename)

    def check(
        self, data: Mapping[str, Any], filename: str | None = None, params: Collection[str] = ()
    ) -> None:
        """Check ``data`` with the store for ``filename``'s extension.

        Without a file name only the shape of ``data`` can be checked;
        ``params`` as for :meth:`psyrun.store.Store.check`.
        """
        if filename is None:
            normalize(data)
        else:
            get_store(filename).check(data, filename, params)

    def exists(self, filename: str) -> bool:
        """Ask the store for ``filename``'s extension whether the result exists."""
        return get_store(filename).exists(filename)

    def remove(self, filename: str) -> None:
        """Remove ``filename`` with the store for its extension."""
        get_store(filename).remove(filename)

    def replace(self, src: str, dest: str) -> None:
        """Replace ``dest`` with the store for its extension."""
        get_store(dest).replace(src, dest)

    def read_metadata(self, filename: str | os.PathLike) -> dict[str, Any]:
        """Read the metadata with the store for ``filename``'s extension."""
        return get_store(filename).read_metadata(filename)

    def write_metadata(self, filename: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
        """Write the metadata with the store for ``filename``'s extension."""
        get_store(filename).write_metadata(filename, metadata)
