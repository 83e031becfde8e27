"""Faults around per-row random generators: a row's draws survive kills and reruns.

A row evaluated again (after a job was killed with SIGKILL, or after its
``execute`` raised and was fixed) must draw exactly what it would have drawn
in an undisturbed run: its generator depends on ``rng_seed`` and its values,
never on the job, the block or the attempt.
"""

from __future__ import annotations

import numpy as np
import pytest
from psy_helpers import describe, ok, psy, task_result, write_task

from psyrun import row_rng

TASK = """
import os
import signal

import numpy as np
from psyrun import Param
{backend}

pspace = Param(x=list(range(12))) * Param(trial=[0, 1])
rng_seed = 99
max_jobs = 4
vectorized = {vectorized}
block_size = 3
MARKER = {marker!r}


def crash_once(x):
    if {crash_row} in np.atleast_1d(x) and not os.path.exists(MARKER):
        open(MARKER, "w").close()
        {death}


def draw(rng):
    return int(rng.bit_generator.random_raw()) >> 12


def execute(x, trial, rng):
    crash_once(x)
    if {vectorized}:
        return {{"y": np.array([draw(np.random.default_rng(s)) for s in rng])}}
    return {{"y": draw(rng)}}
"""


def expected(result) -> list[int]:
    return [
        int(row_rng(99, x=x, trial=t).bit_generator.random_raw()) >> 12
        for x, t in zip(result["x"].tolist(), result["trial"].tolist())
    ]


@pytest.mark.parametrize(
    ("backend", "vectorized", "death"),
    [
        ("", False, "os.kill(os.getpid(), signal.SIGKILL)"),
        ("", True, "os.kill(os.getpid(), signal.SIGKILL)"),
        (
            "from psyrun import LoadBalancingBackend\nbackend = LoadBalancingBackend",
            False,
            "os.kill(os.getpid(), signal.SIGKILL)",
        ),
        ("", False, "raise RuntimeError('transient')"),
        ("", True, "raise RuntimeError('transient')"),
    ],
    ids=["kill9", "kill9-vectorized", "kill9-loadbalancing", "raise", "raise-vectorized"],
)
def test_rows_evaluated_again_by_continue_draw_what_they_would_have_drawn(
    project, backend, vectorized, death
):
    marker = project / "crashed-once"
    source = TASK.format(
        backend=backend, vectorized=vectorized, marker=str(marker), crash_row=7, death=death
    )
    write_task(project, "noisy", source)
    first = psy("run", "noisy", subprocess=True)  # fails: a job died or rows failed
    assert marker.exists(), describe(first)

    ok(psy("run", "-c", "noisy", subprocess=True))
    result = task_result(project, "noisy")
    assert len(result["y"]) == 24, describe(first)
    assert sorted(zip(result["x"].tolist(), result["trial"].tolist())) == [
        (x, t) for x in range(12) for t in (0, 1)
    ]
    np.testing.assert_array_equal(result["y"].astype(np.int64), expected(result))


def test_an_unencodable_value_fails_only_its_rows_and_continue_finishes_after_the_fix(project):
    """A parameter value row_rng cannot hash is a per-row failure naming it; nothing is lost."""
    text = """
        from psyrun import Param
        pspace = Param(x=[1, 2]) + Param(x=[{{"bad": 1}}])
        rng_seed = 5

        def execute(x, rng):
            return {{"y": int(rng.bit_generator.random_raw()) >> 12}}
        """
    write_task(project, "mixed", text.format())
    out = psy("run", "mixed", subprocess=True)
    assert "row_rng cannot use parameter 'x'" in out.output, describe(out)
    kept = task_result(project, "mixed")
    assert kept["x"].tolist() == [1, 2]
    assert kept["y"].tolist() == [
        int(row_rng(5, x=v).bit_generator.random_raw()) >> 12 for v in (1, 2)
    ]

    write_task(project, "mixed", text.replace('{{"bad": 1}}', '"bad"').format())
    ok(psy("run", "-c", "mixed", subprocess=True))
    final = task_result(project, "mixed")
    assert final["y"].tolist()[:2] == kept["y"].tolist()
    assert final["y"].tolist()[2] == int(row_rng(5, x="bad").bit_generator.random_raw()) >> 12
