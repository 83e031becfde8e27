"""Vectorized execute through ``psy run``: every backend, store and local scheduler."""

from __future__ import annotations

import numpy as np
import pytest
from e2e_helpers import BACKENDS, STORES, load_result, result_path, sorted_rows, write
from psy_helpers import ok, psy

from psyrun import Param, map_pspace

SPACE = "Param(a=np.arange(37)) * Param(b=np.linspace(0.0, 1.0, 11)) + Param(a=[100], b=[0.5])"

TASK = """
import numpy as np

from psyrun import Param
{backend_import}
{store_import}

pspace = {space}
backend = {backend}
store = {store}
max_jobs = 3
pool_size = 2 if backend.__name__ == "LoadBalancingBackend" else 1
vectorized = True
block_size = 50


def execute(a, b):
    # A whole block at once: arrays in, arrays of the same length out.
    assert isinstance(a, np.ndarray) and a.shape == b.shape
    return {{"y": a * b + 0.5, "z": np.stack([a, -a], axis=1)}}
"""


def expected() -> dict:
    space = eval(SPACE, {"Param": Param, "np": np})
    return map_pspace(lambda a, b: {"y": a * b + 0.5, "z": np.array([a, -a])}, space)


def _rows(data) -> list[tuple]:
    plain = {k: data[k] for k in ("a", "b", "y")}
    return sorted_rows(plain)


@pytest.mark.parametrize("store", list(STORES))
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("jobs", [None, "2"])
def test_vectorized_run_equals_map_pspace(tmp_path, store, backend, jobs):
    b_import, b_value = BACKENDS[backend]
    s_import, s_value, _ext = STORES[store]
    write(
        tmp_path / "psy-tasks" / "task_vec.py",
        TASK.format(
            backend_import=b_import,
            store_import=s_import,
            space=SPACE,
            backend=b_value,
            store=s_value,
        ),
    )
    ok(psy("run", *(["-j", jobs] if jobs else []), cwd=tmp_path, subprocess=True))
    data = load_result(result_path(tmp_path, "vec", store), store)
    want = expected()
    assert _rows(data) == _rows(want)
    order = np.lexsort((np.asarray(data["b"]), np.asarray(data["a"])))
    z = np.asarray(data["z"])[order]
    np.testing.assert_array_equal(z[:, 0], -z[:, 1])
    np.testing.assert_array_equal(z[:, 0], np.asarray(data["a"])[order])
    status = ok(psy("status", "vec", cwd=tmp_path, subprocess=True)).stdout
    assert f"{len(want['a'])} out of {len(want['a'])} rows completed" in status


BAD = """
import numpy as np

from psyrun import Param

pspace = Param(x=np.arange(30))
max_jobs = 1
vectorized = True
block_size = 10


def execute(x):
    {body}
"""


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("return {'y': x[:-1]}", ["'y'", "10", "9"]),
        ("return {'y': 1.0}", ["'y'", "scalar"]),
    ],
)
def test_bad_vectorized_output_fails_the_job_with_the_key_and_lengths(tmp_path, body, words):
    write(tmp_path / "psy-tasks" / "task_bad.py", BAD.format(body=body))
    run = psy("run", cwd=tmp_path, subprocess=True)
    assert run.returncode == 1
    log = (tmp_path / "psy-work" / "bad" / "bad:process:0.log").read_text()
    for word in words:
        assert word in log, log
    assert "Traceback" not in run.stderr  # psy itself prints the job's one-line failure


def test_a_block_that_raises_is_retried_row_by_row(tmp_path):
    body = (
        "if (x == 13).any():\n"
        "        raise ValueError('bad row')\n"
        "    return {'y': x * 2}"
    )
    write(tmp_path / "psy-tasks" / "task_retry.py", BAD.format(body=body))
    run = psy("run", cwd=tmp_path, subprocess=True)
    assert run.returncode == 1  # one row failed: the job is reported
    data = load_result(result_path(tmp_path, "retry"), "pickle")
    assert sorted(np.asarray(data["x"]).tolist()) == [x for x in range(30) if x != 13]
    status = ok(psy("status", "retry", cwd=tmp_path, subprocess=True)).stdout
    assert "29 out of 30 rows completed" in status
