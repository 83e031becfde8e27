"""asv benchmarks: end-to-end ``psy run`` on a small task, as a user runs it."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

TASK = """
from psyrun import Param
{imports}

pspace = Param(x=list(range({rows})))
max_jobs = {max_jobs}
{settings}


def execute(x):
    return {{"y": x * x}}
"""

STORES = {
    "pickle": ("", ""),
    "h5": ("from psyrun.store.h5 import H5Store", "store = H5Store()"),
}
BACKENDS = {
    "distribute": ("", ""),
    "loadbalancing": (
        "from psyrun.backend import LoadBalancingBackend",
        "backend = LoadBalancingBackend",
    ),
}


def _psy():
    script = Path(sys.executable).with_name("psy")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "psyrun.cli"]


class PsyRun:
    """One ``psy run`` of 10^3 rows in a fresh directory (the whole user-visible cost)."""

    params = (["pickle", "h5"], ["distribute", "loadbalancing"])
    param_names = ["store", "backend"]
    number = 1
    repeat = 3
    warmup_time = 0
    timeout = 120

    def setup(self, store, backend):
        self.root = tempfile.mkdtemp(prefix="psy-asv-")
        imports = "\n".join(x for x in (STORES[store][0], BACKENDS[backend][0]) if x)
        settings = "\n".join(x for x in (STORES[store][1], BACKENDS[backend][1]) if x)
        self.source = TASK.format(
            imports=imports,
            rows=1000,
            max_jobs=4 if backend == "distribute" else 2,
            settings=settings,
        )
        self.runs = 0

    def teardown(self, store, backend):
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)

    def time_psy_run(self, store, backend):
        # A fresh task directory each time, so every call does the full work.
        self.runs += 1
        cwd = os.path.join(self.root, str(self.runs))
        os.makedirs(os.path.join(cwd, "psy-tasks"))
        with open(os.path.join(cwd, "psy-tasks", "task_sq.py"), "w") as f:
            f.write(self.source)
        subprocess.run([*_psy(), "run"], cwd=cwd, check=True, capture_output=True)


BUSY = """
import time

from psyrun import Param

pspace = Param(x=list(range({rows})))
max_jobs = 8
vectorized = {vectorized}


def execute(x):
    if {vectorized}:
        return {{"y": x * x}}
    end = time.perf_counter() + 50e-6
    while time.perf_counter() < end:
        pass
    return {{"y": x * x}}
"""


class PsyRunThroughput:
    """``psy run`` serial, ``-j 2``, and vectorized (issue 10): compare within one run."""

    params = (["serial", "jobs2", "vectorized"],)
    param_names = ["mode"]
    number = 1
    repeat = 2
    warmup_time = 0
    timeout = 300

    def setup(self, mode):
        self.root = tempfile.mkdtemp(prefix="psy-asv-")
        rows = 10**5 if mode == "vectorized" else 10**4
        self.source = BUSY.format(rows=rows, vectorized=mode == "vectorized")
        self.args = ["-j", "2"] if mode == "jobs2" else []
        self.runs = 0

    def teardown(self, mode):
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)

    def time_psy_run(self, mode):
        self.runs += 1
        cwd = os.path.join(self.root, str(self.runs))
        os.makedirs(os.path.join(cwd, "psy-tasks"))
        with open(os.path.join(cwd, "psy-tasks", "task_t.py"), "w") as f:
            f.write(self.source)
        subprocess.run([*_psy(), "run", *self.args], cwd=cwd, check=True, capture_output=True)
