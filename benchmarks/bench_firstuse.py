"""asv: first use in a fresh process (issue 25, targets 3 and 5).

The cases mirror benchmarks/report_firstuse.py, which prints each figure next
to its target. ``timeraw_*`` benchmarks run in a fresh interpreter, so any
numba import and compile counts, as a job meets it.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

_DIFFERENCE = """
import numpy as np
from psyrun.pspace import Param
n = {n}
space = Param(a=np.arange(100)) * Param(b=np.arange(n // 100) * 0.5)
sub = Param(**(Param(a=np.arange(10)) * Param(b=np.arange(n // 100) * 0.5)).to_arrays())
d = space - sub
len(d)
d.to_arrays()
"""

_MISSING = """
import numpy as np
from psyrun.pspace import Param, missing
space = Param(a=np.arange(100)) * Param(b=np.arange(100) * 0.5) * Param(c=np.arange(100))
rows = np.random.default_rng(1).choice(len(space), 5 * 10**5, replace=False)
results = space.take(rows)
results["y"] = np.zeros(len(rows))
len(missing(space, results))
"""


def timeraw_first_difference(n):
    return _DIFFERENCE.format(n=n)


timeraw_first_difference.params = [10**4, 3 * 10**4, 10**5, 10**6]
timeraw_first_difference.param_names = ["rows"]


def timeraw_first_missing_1e6():
    return _MISSING


TASK = """
import numpy as np
from psyrun import Param

pspace = Param(a=np.arange(1000)) * Param(b=np.arange(1000) * 0.5)
vectorized = True
max_jobs = 1


def execute(a, b):
    return {"y": a * b + 0.5}
"""


# Peak RSS must be read by a small parent: a child started (vfork) from a large
# process inherits that process's high-water mark in ``ru_maxrss``.
_MEASURE = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "_, s, u = os.wait4(p.pid, 0); print(u.ru_maxrss, os.waitstatus_to_exitcode(s))"
)


def _psy(cwd, *args):
    """Run ``psy *args`` in `cwd`; return its peak resident memory in MB."""
    script = Path(sys.executable).with_name("psy")
    argv = (
        [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "psyrun.cli"]
    )
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv, *args], cwd=cwd, capture_output=True, text=True
    )
    peak_kb, rc = out.stdout.split()
    if int(rc) != 0:
        raise RuntimeError(f"psy {' '.join(args)} failed")
    return int(peak_kb) / 1024


class FinishedTask:
    """``psy status -v`` and ``psy run -c`` of a finished 10^6-row task."""

    timeout = 300

    def setup_cache(self):
        cwd = tempfile.mkdtemp(prefix="psy-asv-finished-")
        (Path(cwd) / "psy-tasks").mkdir()
        (Path(cwd) / "psy-tasks" / "task_big.py").write_text(TASK)
        _psy(cwd, "run", "big")
        return cwd

    def time_status_verbose(self, cwd):
        _psy(cwd, "status", "-v", "big")

    def time_run_continue(self, cwd):
        _psy(cwd, "run", "-c", "big")

    def track_status_verbose_peak_mb(self, cwd):
        return _psy(cwd, "status", "-v", "big")

    track_status_verbose_peak_mb.unit = "MB"

    def track_run_continue_peak_mb(self, cwd):
        return _psy(cwd, "run", "-c", "big")

    track_run_continue_peak_mb.unit = "MB"
