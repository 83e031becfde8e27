"""The time limit a job finds on a real Slurm and a real Grid Engine (psyrun.run.walltime).

A tiny job asks :func:`psyrun.run.walltime.job_deadline` for its limit and writes
the answer; each test is skipped, with the reason, when its batch system does
not answer here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sge_helpers import sge_unavailable_reason
from slurm_helpers import slurm_unavailable_reason

PROBE = """
import json, sys, time
from psyrun.run.walltime import job_deadline

class Task:
    scheduler_args = {{}}

started = time.time()
found = job_deadline(Task(), started)
answer = {{"started": started, "deadline": found and found[0], "source": found and found[1]}}
with open({out!r}, "w") as f:
    json.dump(answer, f)
"""


def _probe(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "probe.json"
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(out=str(out)))
    return script, out


def _wait_for(path: Path, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the probe job wrote nothing to {path} in {timeout} s")
        time.sleep(0.5)
    time.sleep(0.2)
    return json.loads(path.read_text())


def _env() -> dict:
    env = dict(os.environ)
    env.pop("PSYRUN_TIME_LIMIT", None)
    return env


@pytest.mark.slurm
@pytest.mark.skipif(slurm_unavailable_reason() is not None, reason="no Slurm here")
def test_slurm_job_finds_its_limit(tmp_path):
    script, out = _probe(tmp_path)
    cmd = ["sbatch", "--parsable", "--time=2", "-o", str(tmp_path / "log"),
           "--wrap", f"{sys.executable} {script}"]  # fmt: skip
    jobid = subprocess.run(cmd, capture_output=True, text=True, check=True, env=_env()).stdout
    try:
        found = _wait_for(out)
    finally:
        subprocess.run(["scancel", jobid.strip().split(";")[0]], capture_output=True, check=False)
    assert found["source"] == "Slurm's time left (squeue %L)"
    # 2 minutes from the job's start, as squeue says when the job asks (whole seconds).
    assert 110 <= found["deadline"] - found["started"] <= 121


@pytest.mark.sge
@pytest.mark.skipif(sge_unavailable_reason() is not None, reason="no Grid Engine here")
def test_gridengine_job_finds_its_limit(tmp_path):
    script, out = _probe(tmp_path)
    cmd = ["qsub", "-terse", "-V", "-l", "h_rt=0:01:30", "-o", str(tmp_path / "log"), "-j", "y",
           "-b", "y", sys.executable, str(script)]  # fmt: skip
    jobid = subprocess.run(cmd, capture_output=True, text=True, check=True, env=_env()).stdout
    try:
        found = _wait_for(out)
    finally:
        subprocess.run(["qdel", jobid.strip()], capture_output=True, check=False)
    assert found["source"] == "Grid Engine's h_rt (qstat -j)"
    assert found["deadline"] - found["started"] == pytest.approx(90)
