"""Where jobs run: in the task file's directory, as in psyrun 0.8 (issue 15.1).

Relative ``workdir`` and ``resultfile`` settings still mean what they mean
where ``psy`` is started.
"""

from __future__ import annotations

import pytest
from e2e_helpers import BACKENDS, describe, load_result, ok, psy, sorted_rows, write

READER = """
from psyrun import Param
{backend_import}
pspace = Param(x=[1, 2, 3, 4])
backend = {backend}
max_jobs = 2
workdir = 'out-work'
resultfile = 'results/reader.pkl'

def setup(proc_id):
    with open('in.txt') as f:
        return {{'scale': int(f.read())}}

def execute(x, scale):
    with open('in.txt') as f:
        offset = int(f.read())
    return {{'y': x * scale + offset}}
"""


@pytest.mark.parametrize("jobs", [None, 2], ids=["immediate", "j2"])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_execute_opens_files_next_to_the_task_file(tmp_path, backend, jobs):
    backend_import, backend_expr = BACKENDS[backend]
    write(
        tmp_path / "psy-tasks" / "task_reader.py",
        READER.format(backend_import=backend_import, backend=backend_expr),
    )
    (tmp_path / "psy-tasks" / "in.txt").write_text("10")
    args = ["run"] if jobs is None else ["run", "-j", str(jobs)]
    run = ok(psy(*args, cwd=tmp_path))
    # workdir and resultfile are relative to where psy started, not to psy-tasks.
    result = tmp_path / "results" / "reader.pkl"
    assert result.exists(), describe(run)
    assert (tmp_path / "out-work" / "reader").is_dir()
    assert not (tmp_path / "psy-tasks" / "out-work").exists()
    assert not (tmp_path / "psy-tasks" / "results").exists()
    assert sorted_rows(load_result(result, "pickle")) == sorted(
        (10, x, 10 * x + 10) for x in [1, 2, 3, 4]
    )
    # The work directory is found again from where psy started.
    status = ok(psy("status", cwd=tmp_path))
    assert "4 out of 4 rows completed" in status.stdout, describe(status)
