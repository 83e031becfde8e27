"""Report section: the cost of ``import psyrun``, paid by every job."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("numba", "tables", "zarr", "joblib", "pandas", "xarray")


def _import_seconds(statement: str, repeat: int = 7) -> float:
    """Best wall time of a fresh interpreter running ``statement`` minus a bare one."""

    def once(code: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", f"import time; t=time.perf_counter(); {code}; "
             "print(time.perf_counter()-t)"],
            check=True, capture_output=True, text=True,
        ).stdout
        return float(out)

    return min(once(statement) for _ in range(repeat))


def _heavy_modules_loaded(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    return out.split()


def collect() -> list[dict]:
    """Measure ``import psyrun`` (numpy included) and what a job imports."""
    numpy_only = _import_seconds("import numpy")
    psyrun_with_numpy = _import_seconds("import numpy, psyrun, psyrun.pspace")
    job_imports = "import psyrun, psyrun.pspace, psyrun.store, psyrun.worker"
    job = _import_seconds(job_imports)
    heavy = _heavy_modules_loaded(job_imports)
    return [
        {
            "what": "import psyrun + pspace (numpy included)",
            "measured": f"{psyrun_with_numpy * 1e3:.0f} ms",
            "target": "< 120 ms",
            "ok": psyrun_with_numpy < 0.120,
        },
        {
            "what": "  of which numpy alone",
            "measured": f"{numpy_only * 1e3:.0f} ms",
            "target": "-",
            "ok": None,
        },
        {
            "what": "imports of a job (psyrun, pspace, store, worker)",
            "measured": f"{job * 1e3:.0f} ms",
            "target": "-",
            "ok": None,
        },
        {
            "what": "  heavy modules a job imports",
            "measured": " ".join(heavy) or "none",
            "target": "none",
            "ok": not heavy,
        },
    ]


if __name__ == "__main__":
    for row in collect():
        print(row)
