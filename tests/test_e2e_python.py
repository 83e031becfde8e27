"""The ``python`` task setting: jobs run with the interpreter the task names."""

from __future__ import annotations

import os
import sys

from e2e_helpers import calls, counting_task, write
from psy_helpers import ok, psy


def test_jobs_run_with_the_tasks_interpreter(tmp_path):
    # A stand-in for another environment's interpreter: it logs, then runs ours.
    log = tmp_path / "interpreter.log"
    wrapper = write(
        tmp_path / "bin" / "python-of-venv",
        f"""
        #!/bin/sh
        echo "$@" >> '{log}'
        exec '{sys.executable}' "$@"
        """,
    )
    os.chmod(wrapper, 0o755)
    write(
        tmp_path / "psy-tasks" / "task_venv.py",
        counting_task(
            tmp_path / "calls.txt", range(12), settings=f"max_jobs = 3\npython = {str(wrapper)!r}"
        ),
    )
    ok(psy("run", cwd=tmp_path, subprocess=True))

    started = log.read_text().splitlines()
    # Split, three process jobs and the merge all went through the task's interpreter.
    assert len(started) == 5
    assert all(line.startswith("-m psyrun.worker ") for line in started)
    assert calls(tmp_path / "calls.txt") == dict.fromkeys(range(12), 1)
    assert "12 out of 12 rows completed" in ok(psy("status", cwd=tmp_path, subprocess=True)).stdout
