"""Failed rows on record (record = [..., 'error', 'attempt']): kept, never counted as done."""

from __future__ import annotations

import numpy as np
import pytest
from psy_helpers import describe, ok, psy, task_result, write_task

from psyrun.pspace import Param
from psyrun.results.failed_rows import cause_of, error_text, failed_mask, summarize
from psyrun.results.merge import merge_files
from psyrun.store import PickleStore

TASK = """
import os
from psyrun import Param
{imports}
pspace = Param(x=list(range(12)))
max_jobs = 3
record = ['error', 'attempt', 'duration']
{settings}
BAD = {{int(v) for v in os.environ.get('BAD_ROWS', '3,7').split(',') if v}}
# Automatic rounds where the test asks for them (the task file stays the same code).
max_attempts = int(os.environ.get('ATTEMPTS', '1'))
retry_errors = True

def execute(x):
    if x in BAD:
        raise ValueError(f"bad row {{x % 2}}")
    return {{'y': x * x}}
"""

VECTOR_TASK = """
import os
import numpy as np
from psyrun import Param
pspace = Param(x=list(range(12)))
max_jobs = 2
vectorized = True
block_size = 4
record = ['error', 'attempt']
BAD = {int(v) for v in os.environ.get('BAD_ROWS', '3,7').split(',') if v}

def execute(x):
    if BAD & set(x.tolist()):
        raise ValueError("bad block")
    return {'y': x * x}
"""


def rows_by_x(result) -> dict:
    out = {}
    for i, x in enumerate(result["x"]):
        assert int(x) not in out, f"row x={x} is in the result twice"
        out[int(x)] = {k: result[k][i] for k in result}
    return out


@pytest.mark.parametrize("backend", ["distribute", "loadbalancing"])
def test_failed_rows_are_on_record_and_missing_until_they_succeed(tmp_path, monkeypatch, backend):
    imports = settings = ""
    if backend == "loadbalancing":
        imports, settings = (
            "from psyrun import LoadBalancingBackend",
            "backend = LoadBalancingBackend",
        )
    write_task(tmp_path, "f", TASK.format(imports=imports, settings=settings))
    first = psy("run", "f", cwd=tmp_path)
    assert first.returncode == 1, describe(first)  # rows failed: the run says so
    rows = rows_by_x(task_result(tmp_path, "f"))
    assert sorted(rows) == list(range(12))  # every assignment once, failures included
    assert rows[3]["psy_error"] == "ValueError: bad row 1"
    assert rows[3]["psy_attempt"] == 1
    assert np.isnan(rows[3]["y"])
    assert rows[4]["psy_error"] == ""
    assert rows[4]["y"] == 16
    status = ok(psy("status", "-v", "f", cwd=tmp_path))
    # Failed rows count as failed and missing, never as done.
    assert "10 out of 12 rows completed" in status.stdout, describe(status)
    assert "2 of the missing rows failed" in status.stdout
    assert "by cause: exception 2" in status.stdout
    assert "2  ValueError: bad row 1" in status.stdout
    assert "{'x': 3}" in status.stdout
    assert "{'x': 7}" in status.stdout

    # `-c` with two automatic rounds: row 3 succeeds in round 1; row 7 fails in both,
    # and each failure replaces the record before it (no row twice).
    monkeypatch.setenv("ATTEMPTS", "2")
    monkeypatch.setenv("BAD_ROWS", "7")
    assert psy("run", "-c", "f", cwd=tmp_path).returncode == 1
    rows = rows_by_x(task_result(tmp_path, "f"))
    assert sorted(rows) == list(range(12))
    assert (rows[3]["psy_error"], rows[3]["psy_attempt"], rows[3]["y"]) == ("", 1, 9)
    assert (rows[7]["psy_error"], rows[7]["psy_attempt"]) == ("ValueError: bad row 1", 2)
    assert rows[4]["psy_attempt"] == 1  # computed once, in the first attempt
    assert "11 out of 12 rows completed" in ok(psy("status", "f", cwd=tmp_path)).stdout

    monkeypatch.setenv("BAD_ROWS", "")
    ok(psy("run", "-c", "f", cwd=tmp_path))
    rows = rows_by_x(task_result(tmp_path, "f"))
    assert sorted(rows) == list(range(12))
    assert all(r["psy_error"] == "" and r["y"] == x * x for x, r in rows.items())
    status = ok(psy("status", "f", cwd=tmp_path))
    assert "12 out of 12 rows completed" in status.stdout
    assert "failed" not in status.stdout


def test_vectorized_failed_rows_on_record(tmp_path, monkeypatch):
    write_task(tmp_path, "v", VECTOR_TASK)
    assert psy("run", "v", cwd=tmp_path).returncode == 1
    rows = rows_by_x(task_result(tmp_path, "v"))
    assert sorted(rows) == list(range(12))
    assert {x for x, r in rows.items() if r["psy_error"]} == {3, 7}
    monkeypatch.setenv("BAD_ROWS", "")
    ok(psy("run", "-c", "v", cwd=tmp_path))
    rows = rows_by_x(task_result(tmp_path, "v"))
    assert all(r["psy_error"] == "" and r["y"] == x * x for x, r in rows.items())


def test_without_error_in_record_failed_rows_stay_out(tmp_path):
    write_task(tmp_path, "plain", TASK.format(imports="", settings="").replace("'error', ", ""))
    assert psy("run", "plain", cwd=tmp_path).returncode == 1
    result = task_result(tmp_path, "plain")
    assert sorted(int(x) for x in result["x"]) == [x for x in range(12) if x not in (3, 7)]
    assert "psy_error" not in result


def _save(path, xs, errors):
    PickleStore().save(
        str(path),
        {
            "x": np.asarray(xs),
            "y": np.asarray([np.nan if e else float(x) for x, e in zip(xs, errors)]),
            "psy_error": np.asarray(errors, dtype=str),
        },
    )


def test_merge_keeps_a_result_over_a_failure_and_the_latest_failure(tmp_path):
    # psy merge's case (no base, no drop): the same assignments in several files.
    a, b, c = tmp_path / "0.pkl", tmp_path / "1.pkl", tmp_path / "2.pkl"
    _save(a, [1, 2, 3], ["", "E: old", "E: old"])
    _save(b, [2, 3, 4], ["", "E: new", ""])
    _save(c, [5], ["E: only"])
    dest = str(tmp_path / "out.pkl")
    store = PickleStore()
    for space in (None, Param(x=[1, 2, 3, 4, 5])):
        merge_files(store, dest, [str(a), str(b), str(c)], ["x"], space=space)
        out = store.load(dest)
        got = {int(x): str(e) for x, e in zip(out["x"], out["psy_error"])}
        assert len(out["x"]) == 5
        assert got == {1: "", 2: "", 3: "E: new", 4: "", 5: "E: only"}


def test_failure_texts_and_causes():
    assert error_text(ValueError("a\nb")) == "ValueError: a"
    assert error_text(KeyError()) == "KeyError"
    assert cause_of("RowTimeout: took too long") == "timeout"
    assert cause_of("ValueError: x") == "exception"
    assert failed_mask(np.array(["", "E", ""])).tolist() == [False, True, False]
    assert failed_mask(np.array(["", None, "E", np.nan], dtype=object)).tolist() == [
        False,
        False,
        True,
        False,
    ]
    by_cause, by_error = summarize(["A: x", "A: x", "RowTimeout: t"])
    assert by_cause == {"exception": 2, "timeout": 1}
    assert by_error == {"A: x": 2, "RowTimeout: t": 1}


def test_record_names_are_checked(tmp_path):
    write_task(tmp_path, "bad", TASK.format(imports="", settings="record = ['errors']"))
    out = psy("status", "bad", cwd=tmp_path)
    assert out.returncode != 0
    assert "'error'" in out.output
    assert "'attempt'" in out.output
    assert "Traceback" not in out.output


def test_a_result_with_failed_rows_is_never_up_to_date(tmp_path):
    import shutil

    write_task(tmp_path, "f", TASK.format(imports="", settings=""))
    assert psy("run", "f", cwd=tmp_path).returncode == 1
    # Without the failed jobs' markers (removed by hand) the result itself says it.
    shutil.rmtree(tmp_path / "psy-work" / "f" / "status")
    again = psy("run", "f", cwd=tmp_path)
    assert "up to date" not in again.output, describe(again)
    assert ". f:split" in again.stdout
