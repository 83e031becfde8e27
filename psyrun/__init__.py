"""psyrun: parameter-space exploration and serial farming.

Describe a space of parameter assignments with a small algebra
(``Param(a=...) * Param(b=...) + ... - ...``), evaluate a function on every
assignment, and farm the work out to local processes or cluster jobs, with the
results in one columnar file.

Every job imports this package, so importing it must stay cheap: the public
names below are resolved on first access, and heavy libraries (numba, PyTables,
zarr, joblib) are only imported by the code that needs them.
"""

from __future__ import annotations

import importlib

__version__ = "0.9.0.dev0"

# public name -> module that defines it; resolved lazily by __getattr__ below.
_EXPORTS = {
    "Param": "psyrun.pspace",
    "missing": "psyrun.pspace",
    "AmbiguousOperationError": "psyrun.pspace",
    "Sobol": "psyrun.sampling",
    "Halton": "psyrun.sampling",
    "LatinHypercube": "psyrun.sampling",
    "Random": "psyrun.sampling",
    "map_pspace": "psyrun.mapper",
    "map_pspace_parallel": "psyrun.mapper",
    "map_pspace_hdd_backed": "psyrun.mapper",
    "DistributeBackend": "psyrun.backend",
    "LoadBalancingBackend": "psyrun.backend",
    "Scheduler": "psyrun.scheduler",
    "JobStatus": "psyrun.scheduler",
    "ImmediateRun": "psyrun.scheduler",
    "Slurm": "psyrun.scheduler",
    "Sqsub": "psyrun.scheduler",
    "LocalPool": "psyrun.scheduler",
    "GridEngine": "psyrun.scheduler",
    "PBS": "psyrun.scheduler",
    "LSF": "psyrun.scheduler",
    "Dask": "psyrun.scheduler",
    "run_task": "psyrun.run.runner",
    "row_rng": "psyrun.rng",
    "row_seeds": "psyrun.rng",
    "Store": "psyrun.store",
    "AutodetectStore": "psyrun.store",
    "PickleStore": "psyrun.store",
    "DefaultStore": "psyrun.store",
    "NpzStore": "psyrun.store",
    "H5Store": "psyrun.store",
    "ZarrStore": "psyrun.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        # Submodules (psyrun.pspace, ...) are still importable as attributes.
        try:
            return importlib.import_module(f"psyrun.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'psyrun' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
