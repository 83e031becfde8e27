"""``psy status --watch``: follows a run from another process until it ends."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import time

import pytest
from e2e_helpers import describe, ok, psy, psy_command, write

from psyrun.run.watch import Sample, Watcher, format_duration

TASK = """
import time
import numpy as np
from psyrun import Param

pspace = Param(x=np.arange({n}))
max_jobs = 2


def execute(x):
    time.sleep({sleep})
    if x in {fail}:
        raise ValueError("bad row")
    return {{"y": x * 2}}
"""

LINE = re.compile(
    r"^(\w+): (\d+)/(\d+) rows(?: \(\d+%\))?, (.*); "
    r"jobs: (\d+) queued, (\d+) running, (\d+) done, (\d+) failed$"
)


def lines_of(text: str) -> list[tuple[int, int, str, tuple[int, ...]]]:
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            jobs = tuple(int(g) for g in m.groups()[4:])
            out.append((int(m.group(2)), int(m.group(3)), m.group(4), jobs))
    return out


def start_run(cwd) -> subprocess.Popen:
    env = dict(os.environ, NO_COLOR="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [*psy_command(), "run", "w"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_watch_follows_a_run_from_another_process_until_complete(tmp_path):
    # 2 jobs of 8 rows at 0.5 s: parts grow about every 2 s while the run goes.
    write(tmp_path / "psy-tasks" / "task_w.py", TASK.format(n=16, sleep=0.5, fail="()"))
    run = start_run(tmp_path)
    try:
        lock_seen = time.monotonic() + 60
        while not (tmp_path / "psy-work" / "w" / "jobs" / "submitted.json").exists():
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < lock_seen
            time.sleep(0.05)
        watched = psy("status", "--watch", "--interval", "0.5", "w", cwd=tmp_path)
    finally:
        out, err = run.communicate(timeout=120)
    assert run.returncode == 0, (out, err)
    assert watched.returncode == 0, describe(watched)
    lines = lines_of(watched.stdout)
    # One line per interval (not a terminal), rows appear between two of them.
    assert len(lines) >= 4, watched.stdout
    done = [d for d, _, _, _ in lines]
    assert done == sorted(done)
    assert any(0 < b - a < 16 for a, b in itertools.pairwise(done)), done
    assert any(0 < d < 16 for d in done), done
    assert {t for _, t, _, _ in lines} == {16}
    # Some line while rows came in had a rate and an ETA.
    assert any(re.match(r"[\d.e+]+ rows/s, ETA \w+", rest) for _, _, rest, _ in lines)
    last = lines[-1]
    assert last[0] == 16
    assert last[2] == "complete"
    assert last[3][3] == 0  # no failed jobs
    assert last[3][2] == 4  # split, 2 process jobs, merge: done


def test_watch_of_a_complete_task_exits_at_once(tmp_path):
    write(tmp_path / "psy-tasks" / "task_w.py", TASK.format(n=4, sleep=0, fail="()"))
    ok(psy("run", "w", cwd=tmp_path))
    watched = psy("status", "--watch", "w", cwd=tmp_path)
    assert watched.returncode == 0, describe(watched)
    assert lines_of(watched.stdout)[-1][:3] == (4, 4, "complete")


def test_watch_exits_1_when_jobs_failed(tmp_path):
    write(tmp_path / "psy-tasks" / "task_w.py", TASK.format(n=6, sleep=0, fail="(3,)"))
    assert psy("run", "w", cwd=tmp_path).returncode != 0
    watched = psy("status", "--watch", "--interval", "0.2", "w", cwd=tmp_path)
    assert watched.returncode == 1, describe(watched)
    done, total, _, jobs = lines_of(watched.stdout)[-1]
    assert (done, total) == (5, 6)
    assert jobs[3] >= 1
    assert "nothing is running any more" in watched.stdout


def test_watch_needs_one_task(tmp_path):
    write(tmp_path / "psy-tasks" / "task_w.py", TASK.format(n=4, sleep=0, fail="()"))
    write(tmp_path / "psy-tasks" / "task_v.py", TASK.format(n=4, sleep=0, fail="()"))
    result = psy("status", "--watch", cwd=tmp_path)
    assert result.returncode == 2
    assert "--watch follows one task" in result.stderr


def test_rate_is_over_the_last_minute_and_gives_the_eta():
    w = Watcher("t", window=60.0)
    s = Sample(0, 1000, {}, active=True)
    assert "rate: measuring" in w.line(s, 0.0)
    # 10 rows/s for two minutes, then 1 row/s: the figure follows the last minute.
    for t in range(1, 121):
        w.rate(float(t), 10 * t)
    line = w.line(Sample(1200 + 60, 10000, {}, active=True), 180.0)
    assert "1 rows/s" in line
    assert f"ETA {format_duration(10000 - 1260)}" in line


def test_format_duration():
    assert format_duration(12.4) == "12s"
    assert format_duration(245) == "4m05s"
    assert format_duration(3720) == "1h02m"


def test_interval_must_be_positive(tmp_path):
    write(tmp_path / "psy-tasks" / "task_w.py", TASK.format(n=4, sleep=0, fail="()"))
    result = psy("status", "--watch", "--interval", "0", "w", cwd=tmp_path)
    assert result.returncode == 2


@pytest.mark.slurm
def test_watch_against_the_live_slurm(tmp_path):
    from slurm_helpers import slurm_unavailable_reason

    reason = slurm_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    import uuid

    name = "w" + uuid.uuid4().hex[:8]
    source = TASK.format(n=8, sleep=0.5, fail="()") + (
        "\nimport sys\nfrom psyrun import Slurm\nscheduler = Slurm()\npython = sys.executable\n"
        'scheduler_args = {"timelimit": "5", "memory_per_cpu": "200M"}\n'
    )
    write(tmp_path / "psy-tasks" / f"task_{name}.py", source)
    try:
        ok(psy("run", name, cwd=tmp_path))  # submits and exits: the jobs run on their own
        watched = psy("status", "--watch", "--interval", "1", name, cwd=tmp_path, timeout=200)
    finally:
        subprocess.run(["scancel", "--name", f"{name}:split"], capture_output=True, check=False)
    assert watched.returncode == 0, describe(watched)
    lines = lines_of(watched.stdout)
    assert lines[-1][:3] == (8, 8, "complete")
    # While the jobs were in the queue, the scheduler's view showed them.
    assert any(jobs[0] + jobs[1] > 0 for _, _, _, jobs in lines), watched.stdout
