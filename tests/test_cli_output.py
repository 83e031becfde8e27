"""How psy output scales: compact status for many jobs, progress on a terminal."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from e2e_helpers import counting_task, recorder_preamble, write
from psy_helpers import ok, psy, psy_command


def test_status_summarises_thousands_of_jobs_unless_verbose(tmp_path):
    state = tmp_path / "queue.json"
    write(
        tmp_path / "psy-tasks" / "task_many.py",
        counting_task(
            tmp_path / "calls.txt",
            range(1000),
            preamble=recorder_preamble(state, supports_arrays=True),
            settings="max_jobs = 500",
        ),
    )
    ok(psy("run", cwd=tmp_path, subprocess=True))

    short = ok(psy("status", cwd=tmp_path, subprocess=True)).stdout
    # Split, 500 process jobs and the merge are queued: one summary line, not 502.
    assert "jobs in the queue: 502 queued" in short
    assert len(short.splitlines()) < 10

    # -v lists the first jobs, -v -v every one.
    verbose = ok(psy("status", "-v", cwd=tmp_path, subprocess=True)).stdout
    listed = [line for line in verbose.splitlines() if "(id r" in line]
    assert len(listed) == 20
    assert "... and 482 more (`psy status -v -v many`)" in verbose
    everything = ok(psy("status", "-v", "-v", cwd=tmp_path, subprocess=True)).stdout
    listed = [line for line in everything.splitlines() if "(id r" in line]
    assert len(listed) == 502
    assert any("many:process:499" in line for line in listed)


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
@pytest.mark.parametrize(("rows", "max_jobs"), [(200, 20), (150, 1)])
def test_long_local_run_shows_a_progress_bar_on_a_terminal(tmp_path, rows, max_jobs):
    # Issue 14.11: also a single-job run shows progress (rows, not jobs).
    write(
        tmp_path / "psy-tasks" / "task_bar.py",
        counting_task(tmp_path / "calls.txt", range(rows), settings=f"max_jobs = {max_jobs}"),
    )
    command = " ".join([*psy_command(), "run"])
    shown = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    # One bar counting the rows of all jobs instead of a line per job.
    assert f"{rows}/{rows}" in shown
    assert f"{max_jobs}/{max_jobs}" not in shown
    assert ". bar:process:" not in shown


def test_plain_output_lists_each_job_when_not_a_terminal(tmp_path):
    write(
        tmp_path / "psy-tasks" / "task_plain.py",
        counting_task(tmp_path / "calls.txt", range(30), settings="max_jobs = 3"),
    )
    out = ok(psy("run", cwd=tmp_path, subprocess=True)).stdout
    assert out.splitlines() == [
        ". plain:split",
        ". plain:process:0",
        ". plain:process:1",
        ". plain:process:2",
        ". plain:merge",
    ]
