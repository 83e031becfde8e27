"""Faults around walltime-aware jobs, failed rows on record, fail fast and row timeouts.

* a kill -9 of a process job at a seeded row while it writes results and
  failed rows on record, then ``psy run -c``;
* a full disk while the merge replaces failed rows on record by a later
  attempt's rows, then the disk is freed;
* damaged job markers (``.partial`` cut short or garbage, a ``fail-fast``
  file holding binary garbage) and a nonsense ``PSYRUN_TIME_LIMIT``;
* a job whose time is up before its first row.

Checks (``docs/guarantees.rst``): after ``psy run -c`` every assignment is
in the result exactly once with the right value (failed ones once, on
record, until they succeed); nothing outside the task's work directory
changed; ``psy status`` never counts a failed row, or more rows than the
file holds, as done.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
from e2e_helpers import calls, counting_task, describe, load_result, write
from fault_helpers import assert_untouched, tree_state
from psy_helpers import psy

ROWS = 40
BAD = {5, 23}

# Rows in BAD raise while the file FIX does not exist; on the first attempt the job
# kills itself with SIGKILL before row KILL_AT (the file KILLED records that it did).
FLAKY = """
import os, signal
FIX = {fix!r}
KILLED = {killed!r}
KILL_AT = {kill_at}
record = ["error", "attempt"]
max_jobs = 2
"""

FLAKY_BODY = """
if x == KILL_AT and not os.path.exists(KILLED):
    open(KILLED, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)
if x in {bad!r} and not os.path.exists(FIX):
    raise ValueError("not yet")
"""


def _task(project: Path, kill_at: int, workdir: str | None = None) -> Path:
    # The test's own files live beside the project (the project must stay untouched).
    aside = project.parent / "aside"
    aside.mkdir(parents=True, exist_ok=True)
    side = aside / "calls.txt"
    settings = FLAKY.format(fix=str(aside / "fix"), killed=str(aside / "killed"), kill_at=kill_at)
    if workdir is not None:
        settings += f"workdir = {workdir!r}\n"
    source = counting_task(
        side, range(ROWS), settings=settings, before_record=FLAKY_BODY.format(bad=BAD)
    )
    write(project / "psy-tasks" / "task_fl.py", source)
    return side


def _rows(path: Path) -> dict[int, tuple]:
    data = load_result(path, "pickle")
    out: dict[int, tuple] = {}
    for i, x in enumerate(data["x"]):
        assert int(x) not in out, f"x={x} is in the result twice"
        out[int(x)] = (data["y"][i], str(data["psy_error"][i]))
    return out


def _status_done(project: Path) -> int:
    out = psy("status", "fl", cwd=project)
    assert out.returncode == 0, describe(out)
    assert "Traceback" not in out.output
    import re

    return int(re.search(r"(\d+) out of \d+ rows completed", out.stdout).group(1))


def test_kill_9_while_failed_rows_are_written_then_continue(tmp_path, fault_rng):
    project = tmp_path / "project"
    kill_at = int(fault_rng.integers(0, ROWS))
    side = _task(project, kill_at)
    before = tree_state(project, skip=project / "psy-work")
    first = psy("run", "fl", cwd=project)
    assert first.returncode == 1, describe(first)
    result = project / "psy-work" / "fl" / "result.pkl"
    # The killed job's rows before the kill are kept; the row it died on is missing.
    done = _status_done(project)
    if result.exists():
        rows = _rows(result)
        assert done == sum(1 for _, e in rows.values() if not e) <= ROWS - 1
    # Continue (the bad rows still fail): every assignment once, failures on record.
    second = psy("run", "-c", "fl", cwd=project)
    assert second.returncode == 1, describe(second)
    rows = _rows(result)
    assert sorted(rows) == list(range(ROWS)), f"kill at row {kill_at}"
    assert {x for x, (_, e) in rows.items() if e} == BAD
    assert _status_done(project) == ROWS - len(BAD)
    # Fixed: the failed rows are replaced, none twice.
    (tmp_path / "aside" / "fix").touch()
    third = psy("run", "-c", "fl", cwd=project)
    assert third.returncode == 0, describe(third)
    rows = _rows(result)
    assert rows == {x: (x * x, "") for x in range(ROWS)}
    assert _status_done(project) == ROWS
    # execute ran again only for the bad rows and for rows of the killed job up to the
    # kill (those not yet appended to its part: at most FLUSH_SECONDS of work).
    extra = calls(side) - Counter(range(ROWS))
    assert set(extra) - BAD <= set(range(kill_at + 1))
    assert_untouched(before, tree_state(project, skip=project / "psy-work"))


BIG = """
import os
import numpy as np
from psyrun import Param
pspace = Param(x=list(range({n})))
workdir = {workdir!r}
record = ["error", "attempt"]
max_jobs = 2


def execute(x):
    if x in {bad!r} and not os.path.exists({fix!r}):
        raise ValueError("not yet")
    return {{"y": x * x, "pad": np.full(2000, float(x))}}
"""


def test_full_disk_while_failed_rows_are_replaced_then_continue(tmp_path, small_disk):
    disk = small_disk("4m")
    project = tmp_path / "project"
    workdir = disk.path / "w"
    fix = tmp_path / "fix"
    write(
        project / "psy-tasks" / "task_fl.py",
        BIG.format(n=ROWS, workdir=str(workdir), bad=BAD, fix=str(fix)),
    )
    first = psy("run", "fl", cwd=project)
    assert first.returncode == 1, describe(first)
    result = workdir / "fl" / "result.pkl"
    kept = result.read_bytes()
    assert {x for x, (_, e) in _rows(result).items() if e} == BAD
    fix.touch()
    # Room for the new rows' parts, not for a new result beside the old one.
    disk.fill(leave=len(kept) // 2)
    full = psy("run", "-c", "fl", cwd=project)
    assert full.returncode == 1, describe(full)
    assert "is full" in full.output, describe(full)
    # The old result is as it was, failed rows still on record; the rows that now
    # succeeded are in parts, which status counts as such (not merged).
    assert result.read_bytes() == kept
    status = psy("status", "fl", cwd=project)
    assert f"{ROWS} out of {ROWS} rows completed" in status.stdout, describe(status)
    assert f"{len(BAD)} of them are only in part files" in status.stdout
    assert "missing rows failed" not in status.stdout  # the parts replace the failures
    disk.free()
    again = psy("run", "-c", "fl", cwd=project)
    assert again.returncode == 0, describe(again)
    rows = _rows(result)
    assert rows == {x: (x * x, "") for x in range(ROWS)}
    assert _status_done(project) == ROWS


SLOW = """
import time
from psyrun import Param
pspace = Param(x=list(range(12)))
max_jobs = 2
walltime_margin = 0.2


def execute(x):
    time.sleep(0.02)
    return {"y": x * x}
"""


def test_damaged_markers_do_not_break_status_or_run(tmp_path):
    write(tmp_path / "psy-tasks" / "task_s.py", SLOW)
    out = psy("run", "s", cwd=tmp_path, env={"PSYRUN_TIME_LIMIT": "0.3"})
    assert out.returncode == 0, describe(out)
    status_dir = tmp_path / "psy-work" / "s" / "status"
    partial = sorted(status_dir.glob("*.partial"))
    assert partial
    partial[0].write_bytes(partial[0].read_bytes()[:7])  # cut short by a crash
    if len(partial) > 1:
        partial[1].write_bytes(b"\x00\xff garbage")
    status = psy("status", "-v", "s", cwd=tmp_path)
    assert status.returncode == 0, describe(status)
    assert "Traceback" not in status.output
    assert "partial" in status.stdout
    # A fail-fast file of garbage (not written by psyrun's jobs of this run) is
    # cleared by the next run with the other markers.
    (status_dir / "fail-fast").write_bytes(b"\xff\xfe\x00")
    done = psy("run", "-c", "s", cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    data = load_result(tmp_path / "psy-work" / "s" / "result.pkl", "pickle")
    assert sorted(int(x) for x in data["x"]) == list(range(12))
    assert np.array_equal(np.sort(data["y"]), np.arange(12) ** 2)


def test_nonsense_time_limits_are_ignored_and_a_spent_one_evaluates_nothing(tmp_path):
    write(tmp_path / "psy-tasks" / "task_s.py", SLOW)
    for value in ("soon", "-5", "nan", "0"):
        out = psy("run", "s", cwd=tmp_path, env={"PSYRUN_TIME_LIMIT": value})
        assert out.returncode == 0, describe(out)
        assert "stopped before" not in out.output, value
        psy("clean", "s", cwd=tmp_path)
    # A limit already spent (less than the margin): no row starts, nothing is lost.
    out = psy("run", "s", cwd=tmp_path, env={"PSYRUN_TIME_LIMIT": "0.01"})
    assert out.returncode == 0, describe(out)
    assert "stopped before" in out.output
    status = psy("status", "s", cwd=tmp_path)
    assert "0 out of 12 rows completed" in status.stdout, describe(status)
    done = psy("run", "-c", "s", cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    assert "12 out of 12 rows completed" in psy("status", "s", cwd=tmp_path).stdout
    assert os.path.exists(tmp_path / "psy-work" / "s" / "result.pkl")
