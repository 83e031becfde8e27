"""asv benchmarks: local jobs and the defaults on this machine (issue 25).

``PsyRunLocalJobs`` times a ``psy run`` of 100 one-row jobs against one job
(the difference over 99 is what a local job costs); ``PsyRunDefaults`` the
10^6-row product task with ``max_jobs`` left at its default against
``max_jobs = 1``, vectorized and row by row, serial and ``-j 2``. Compare
the parameters of one run with each other (``benchmarks/report_local.py``
prints the ratios next to their targets).
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ONE_ROW_JOBS = """
import numpy as np
from psyrun import Param

pspace = Param(x=np.arange(100))
max_jobs = {max_jobs}


def execute(x):
    return {{"y": x * x}}
"""

PRODUCT = """
import numpy as np
from psyrun import Param

pspace = Param(a=np.arange(1000)) * Param(b=np.linspace(0.0, 1.0, 1000))
vectorized = {vectorized}
{settings}


def execute(a, b):
    return {{"y": a * b + 0.5}}
"""


def _psy():
    script = Path(sys.executable).with_name("psy")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "psyrun.cli"]


class _FreshRun:
    """A ``psy run`` of one task source in a fresh directory each call."""

    number = 1
    warmup_time = 0

    def _setup(self, source, args=()):
        self.root = tempfile.mkdtemp(prefix="psy-asv-")
        self.source = source
        self.args = list(args)
        self.runs = 0

    def teardown(self, *params):
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self):
        self.runs += 1
        cwd = os.path.join(self.root, str(self.runs))
        os.makedirs(os.path.join(cwd, "psy-tasks"))
        with open(os.path.join(cwd, "psy-tasks", "task_t.py"), "w") as f:
            f.write(self.source)
        subprocess.run([*_psy(), "run", *self.args], cwd=cwd, check=True, capture_output=True)


class PsyRunLocalJobs(_FreshRun):
    """100 rows as 100 local jobs of one row, or as one job."""

    params = ([100, 1],)
    param_names = ["max_jobs"]
    repeat = 3
    timeout = 300

    def setup(self, max_jobs):
        self._setup(ONE_ROW_JOBS.format(max_jobs=max_jobs))

    def time_psy_run(self, max_jobs):
        self._run()


class PsyRunDefaults(_FreshRun):
    """10^6 rows: max_jobs left at its default, or 1; vectorized or not; serial or -j 2."""

    params = (["default", "1"], ["vectorized", "rows"], ["serial", "jobs2"])
    param_names = ["max_jobs", "execute", "mode"]
    repeat = 2
    timeout = 600

    def setup(self, max_jobs, execute, mode):
        settings = "" if max_jobs == "default" else f"max_jobs = {max_jobs}"
        source = PRODUCT.format(vectorized=execute == "vectorized", settings=settings)
        self._setup(source, ["-j", "2"] if mode == "jobs2" else [])

    def time_psy_run(self, max_jobs, execute, mode):
        self._run()
