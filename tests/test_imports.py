"""Every job imports psyrun, so importing it must not drag in heavy libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("numba", "tables", "zarr", "joblib", "pandas", "xarray")


@pytest.mark.parametrize(
    "statement",
    [
        "import psyrun",
        "import psyrun, psyrun.pspace; psyrun.Param",
        "import psyrun.store; psyrun.store.H5Store(); psyrun.store.ZarrStore()",
        "import psyrun.mapper",
        "import psyrun.scheduler, psyrun.backend, psyrun.tasks, psyrun.worker",
        "import psyrun.cli",
    ],
)
def test_import_keeps_heavy_libraries_out(statement):
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert loaded == []


def test_public_names_resolve():
    import psyrun

    for name in psyrun.__all__:
        assert getattr(psyrun, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        psyrun.nonexistent  # noqa: B018
