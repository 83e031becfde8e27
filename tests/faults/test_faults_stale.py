"""Faults: the task file edited at seeded random moments of a run (issue 21, items 15-16).

Each case edits the task's code (the value ``y`` every row gets, so a row's
value tells which version computed it) at a seeded moment: before the split,
between two process jobs, before the merge, or while a local run goes and is
then interrupted. Then ``psy run -c`` and ``psy status`` run, and every case
checks:

* every row's recorded version is the version that computed it (its ``y``),
  and one run's rows all come from one version;
* no row lost or duplicated after ``psy run -c``;
* ``psy status`` never counts a stale row as current (its stale figure is
  exactly the rows of other versions);
* nothing outside the project's work directory is touched.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import (
    VERSIONED_TASK,
    finish,
    load_result,
    psy,
    recorder_preamble,
    result_path,
    start_psy,
    status_counts,
    wait_until,
    write,
)
from fault_helpers import assert_untouched, tree_state
from psy_helpers import psy as psy_in_process

from psyrun.run.versions import ROW_VERSIONS, expand_segments, task_version
from psyrun.store.pickle import PickleStore

N_ROWS = 24
N_JOBS = 3

TASK = VERSIONED_TASK


def source(y: int, preamble: str = "") -> str:
    return TASK.format(y=y, n=N_ROWS, jobs=N_JOBS, preamble=preamble)


def set_version(tmp_path: Path, y: int, preamble: str = "") -> str:
    """Write the task computing ``y`` = `y`; return its version."""
    text = source(y, preamble)
    write(tmp_path / "psy-tasks" / "task_v.py", text)
    return task_version((tmp_path / "psy-tasks" / "task_v.py").read_text())


def check_result(tmp_path: Path, y_of: dict) -> Counter:
    """Every row once, and each row's recorded version computed its ``y``; return versions."""
    path = result_path(tmp_path, "v")
    data = load_result(path, "pickle")
    xs = sorted(int(x) for x in data["x"])
    assert xs == list(range(N_ROWS)), f"rows lost or duplicated: {Counter(xs)}"
    segments = PickleStore().read_metadata(path)[ROW_VERSIONS]
    names: list = []
    codes = expand_segments(segments, names)
    assert len(codes) == N_ROWS
    for code, y in zip(codes, data["y"]):
        version = names[int(code)]
        assert y_of.get(version) == int(y), f"a row of y={y} is recorded as version {version}"
    return Counter(names[int(c)] for c in codes)


def stale_reported(out: str) -> int:
    m = re.search(r"rows completed \((\d+) by an older version", out)
    return int(m.group(1)) if m else 0


def check_status(tmp_path: Path, current: str, versions: Counter, fast: bool = False) -> None:
    """``psy status`` counts every row of another version as stale, and nothing else."""
    out = psy_fast("status", "v", cwd=tmp_path) if fast else psy("status", "v", cwd=tmp_path)
    assert out.returncode == 0, out.output
    assert status_counts(out.stdout) == [(N_ROWS, N_ROWS)], out.output
    stale = sum(n for v, n in versions.items() if v != current)
    assert stale_reported(out.stdout) == stale, out.output
    if stale:
        assert "psy run -c --stale v" in out.stderr, out.output


def run_job(args: list[str], log: str) -> int:
    """Run one job's worker command in a forked child (as a cluster node would, but faster)."""
    assert args[1:3] == ["-m", "psyrun.worker"], args
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves with os._exit
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            from psyrun.worker import main

            code = main(args[3:])
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def run_jobs(state: Path, before: int, edit) -> None:
    """Run the recorded jobs in order as a cluster would, calling `edit` before job `before`."""
    data = json.loads(state.read_text())
    queued = [job for job in data["jobs"] if job["state"] == "queued"]
    for i, job in enumerate(queued):
        if i == before:
            edit()
        rc = run_job(job["args"], job["out"])
        assert rc == 0, Path(job["out"]).read_text()
        job["state"] = "done"
        state.write_text(json.dumps(data))
    if before >= len(queued):
        edit()


def psy_fast(*args, cwd):
    """``psy`` in this process (the jobs of the cluster cases run forked, see run_job)."""
    return psy_in_process(*args, cwd=cwd)


def case_rng(fault_rng, case: int) -> np.random.Generator:
    return np.random.default_rng([int(fault_rng.integers(2**32)), case])


@pytest.mark.parametrize("case", range(4))
def test_edit_at_a_random_moment_of_a_cluster_run(tmp_path, fault_rng, case):
    """Jobs run one by one (split, 3 process, merge); the edit comes before a seeded one."""
    rng = case_rng(fault_rng, case)
    (tmp_path / "psy-tasks").mkdir(parents=True)
    before = tree_state(tmp_path.parent, skip=tmp_path)
    state = tmp_path / "jobs.json"
    pre = recorder_preamble(state)
    v1 = set_version(tmp_path, 1, pre)
    y_of = {v1: 1}
    assert psy_fast("run", "v", cwd=tmp_path).returncode == 0
    moment = int(rng.integers(0, N_JOBS + 3))  # 0: before the split ... 4: before the merge
    versions = [v1]

    def edit() -> None:
        y = len(versions) + 1
        version = set_version(tmp_path, y, pre)
        y_of[version] = y
        versions.append(version)

    run_jobs(state, moment, edit)
    counts = check_result(tmp_path, y_of)
    assert counts == {v1: N_ROWS}, f"one run, one version; edit before job {moment}"
    check_status(tmp_path, versions[-1], counts, fast=True)

    # -c keeps the rows (nothing is missing) and says they are stale.
    cont = psy_fast("run", "-c", "v", cwd=tmp_path)
    assert cont.returncode == 0, cont.output
    assert f"{N_ROWS} of {N_ROWS} rows were computed by an older version" in cont.stderr
    check_status(tmp_path, versions[-1], check_result(tmp_path, y_of), fast=True)

    # --stale recomputes them; an edit during that run again leaves one version per run.
    assert psy_fast("run", "-c", "--stale", "v", cwd=tmp_path).returncode == 0
    run_jobs(state, int(rng.integers(0, N_JOBS + 3)), edit)
    counts = check_result(tmp_path, y_of)
    assert counts == {versions[1]: N_ROWS}
    check_status(tmp_path, versions[-1], counts, fast=True)
    assert_untouched(before, tree_state(tmp_path.parent, skip=tmp_path))


@pytest.mark.parametrize("case", range(3))
def test_edit_and_interrupt_a_local_run_then_continue(tmp_path, fault_rng, case):
    """A finished result (or none), an edit, a run interrupted at a seeded row, edits, -c."""
    rng = case_rng(fault_rng, 100 + case)
    (tmp_path / "psy-tasks").mkdir(parents=True)
    before = tree_state(tmp_path.parent, skip=tmp_path)
    v1 = set_version(tmp_path, 1)
    y_of = {v1: 1}
    if rng.random() < 0.7:
        assert psy("run", "v", cwd=tmp_path).returncode == 0
    v2 = set_version(tmp_path, 2)
    y_of[v2] = 2
    root = tmp_path / "psy-work" / "v"
    proc = start_psy("run", "v", cwd=tmp_path, env={"V_DELAY": "0.05"})
    # Jobs write their parts about every 2 s: wait for a seeded number of part files.
    wanted = int(rng.integers(1, N_JOBS))
    wait_until(lambda: len(list((root / "out").glob("*.pkl"))) >= wanted, "parts", proc=proc)
    current = v2
    if rng.random() < 0.5:
        current = set_version(tmp_path, 3)  # edited again while the run goes
        y_of[current] = 3
    os.kill(proc.pid, signal.SIGINT)
    out = finish(proc)
    assert proc.returncode in (0, 128 + signal.SIGINT), out
    cont = psy("run", "-c", "v", cwd=tmp_path)
    assert cont.returncode == 0, cont.output
    counts = check_result(tmp_path, y_of)
    check_status(tmp_path, current, counts)
    # The rows of the interrupted run were kept: nothing of v1 where v2 was evaluated.
    found = re.search(r"(\d+) rows evaluated in this run are kept", out)
    if found:
        assert counts[v2] >= int(found.group(1))
    assert_untouched(before, tree_state(tmp_path.parent, skip=tmp_path))
