"""The result side: result files as tables, and how parts become one result.

``load`` turns a task's result into a DataFrame or a labelled xarray grid (its
public functions are importable from here: ``from psyrun.results import
load_dataframe``); ``merge`` writes parts into the result exactly once;
``records`` and ``failed_rows`` are the extra per-row columns (errors,
attempts, timing); ``provenance`` is what a result file says about the run that
made it. :mod:`psyrun.report` builds the HTML page from these.

Names resolve on first access so that importing ``psyrun.results.merge`` in
a job does not import the analysis helpers.
"""

from __future__ import annotations

import importlib

__all__ = [
    "current_rows",
    "load_dataframe",
    "load_metadata",
    "load_results",
    "load_xarray",
    "to_dataframe",
    "to_xarray",
]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'psyrun.results' has no attribute {name!r}")
    value = getattr(importlib.import_module("psyrun.results.load"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
