"""asv benchmarks: ``psy report`` of a 10^6-row task, as a user runs it (issue 22).

The task runs once per benchmark (``setup_cache``, not timed); each timed call
writes the page again in a new ``psy`` process. ``benchmarks/report_report.py``
prints the same figure next to its target (under 10 s).
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = """
import numpy as np
from psyrun import Param

{pspace}
vectorized = True
max_jobs = 2


def execute(a, b):
    return {{"y": a * b, "z": np.sin(a + b)}}
"""

SPACES = {
    "grid": "pspace = Param(a=np.arange(1000)) * Param(b=np.linspace(0.0, 1.0, 1000))",
    "scatter": ("pspace = Param(a=np.arange(10**6), b=np.random.default_rng(1).random(10**6))"),
}


def _psy():
    script = Path(sys.executable).with_name("psy")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "psyrun.cli"]


class PsyReport:
    """``psy report`` of 10^6 rows: a grid (binned exactly) and a scatter (subsampled)."""

    params = (["grid", "scatter"],)
    param_names = ["space"]
    number = 1
    repeat = 3
    warmup_time = 0
    timeout = 600

    def setup_cache(self):
        root = tempfile.mkdtemp(prefix="psy-asv-report-")
        for space, pspace in SPACES.items():
            cwd = os.path.join(root, space)
            os.makedirs(os.path.join(cwd, "psy-tasks"))
            with open(os.path.join(cwd, "psy-tasks", "task_big.py"), "w") as f:
                f.write(SOURCE.format(pspace=pspace))
            subprocess.run([*_psy(), "run", "big"], cwd=cwd, check=True, capture_output=True)
        return root

    def time_psy_report(self, root, space):
        cwd = os.path.join(root, space)
        subprocess.run(
            [*_psy(), "report", "big", "-o", "page.html"], cwd=cwd, check=True, capture_output=True
        )
