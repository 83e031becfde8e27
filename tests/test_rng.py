"""Per-row random generators: psyrun.row_rng, row_seeds and a task's ``rng`` argument."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psy_helpers import describe, ok, psy, task_result, write_task

from psyrun import Param, row_rng, row_seeds
from psyrun.mapper import evaluate_block
from psyrun.rng import encode_value
from psyrun.tasks import TaskDef, load_tasks


def draw(generator: np.random.Generator) -> int:
    """A value that identifies a generator's stream (raw bits: stable across NumPy).

    52 bits, so that a result file holds it exactly whatever the store.
    """
    return int(generator.bit_generator.random_raw()) >> 12


def rows_of(columns: dict) -> list[dict]:
    keys = list(columns)
    return [dict(zip(keys, values)) for values in zip(*(columns[k] for k in keys))]


# --- the canonical encoding -----------------------------------------------------


@pytest.mark.parametrize(
    "same",
    [
        [
            1,
            1.0,
            True,
            np.int8(1),
            np.uint64(1),
            np.float16(1),
            np.float32(1),
            1 + 0j,
            np.array(1),
            np.complex64(1),
        ],
        [0, 0.0, -0.0, False, np.float32(-0.0)],
        [float("nan"), np.float32("nan"), -float("nan"), np.complex128(complex("nan"))],
        [2**70, float(2**70), np.float64(2**70)],
        [2**200, float(2**200)],
        [10**6000, 10**6000],
        [-(2**63), float(-(2**63)), np.int64(-(2**63))],
        [2**64 - 1, np.uint64(2**64 - 1)],
        [[1, 2], (1, 2), np.array([1, 2]), np.array([1.0, 2.0]), [True, 2.0]],
        [["a", "b"], ("a", "b"), np.array(["a", "b"])],
        ["ä", np.str_("ä")],
        [b"x", np.bytes_(b"x")],
    ],
)
def test_values_psyrun_matches_as_one_assignment_get_one_generator(same):
    expected = draw(row_rng(3, v=same[0]))
    for value in same[1:]:
        assert draw(row_rng(3, v=value)) == expected, value


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, "1"),
        ("1", b"1"),
        (None, float("nan")),
        (None, "None"),
        (0.1, np.float32(0.1)),  # another number: float32's 0.1 is 0.100000001490116...
        (2**53 + 1, float(2**53)),
        (2**200, 2**200 + 1),
        (2**200, -(2**200)),
        (2**127, -(2**127)),
        (float("inf"), -float("inf")),
        (1 + 1j, 1),
        ([1, 2, 3, 4], [[1, 2], [3, 4]]),
        ([1, 2], [2, 1]),
        (["a", 1], ("a", 1)),
        ("", b""),
    ],
)
def test_different_values_get_different_generators(a, b):
    assert draw(row_rng(3, v=a)) != draw(row_rng(3, v=b))


def test_names_count_and_their_order_does_not():
    assert draw(row_rng(5, x=1, y=2)) == draw(row_rng(5, y=2, x=1))
    assert draw(row_rng(5, x=1)) != draw(row_rng(5, y=1))
    assert draw(row_rng(5, x=1, y=2)) != draw(row_rng(5, x=2, y=1))
    # A name and a value do not run into each other.
    assert draw(row_rng(5, ab="c")) != draw(row_rng(5, a="bc"))


def test_the_seed_counts_and_a_parameter_may_be_called_seed():
    assert draw(row_rng(1, x=1)) != draw(row_rng(2, x=1))
    assert draw(row_rng(1, seed=4)) != draw(row_rng(1, seed=5))
    assert draw(row_rng(np.int64(7), x=1)) == draw(row_rng(7, x=1))


def test_the_hash_is_the_documented_encoding():
    """An independent reading of psyrun.rng's documented encoding (a contract)."""

    def length(n):
        return struct.pack("<Q", n)

    def integer(v):
        return b"i" + (v % 2**128).to_bytes(16, "little")

    message = (
        b"psyrun.row_rng/1\x00"
        + integer(11)
        + length(3)
        + length(1) + b"a" + b"f" + struct.pack("<d", 0.25) + bytes(8)
        + length(1) + b"b" + integer(-3)
        + length(1) + b"c" + b"s" + length(2) + "é".encode()
    )  # fmt: skip
    digest = hashlib.blake2b(message, digest_size=16).digest()
    entropy = np.frombuffer(digest, dtype="<u4")
    seeds = row_seeds(11, {"c": ["é"], "b": [-3.0], "a": [0.25]})
    np.testing.assert_array_equal(seeds[0], entropy)
    expected = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
    assert draw(row_rng(11, a=0.25, b=-3, c="é")) == draw(expected)


@pytest.mark.parametrize(
    "value", [{"a": 1}, object(), np.datetime64("2020-01-01"), [{"a": 1}], np.array([None, {}])]
)
def test_a_value_without_canonical_encoding_is_refused_naming_the_parameter(value):
    with pytest.raises(TypeError, match="parameter 'p'"):
        row_rng(1, p=value)


@pytest.mark.parametrize(
    ("seed", "error", "match"),
    [(-1, ValueError, "non-negative"), (1.5, TypeError, "integer"), (True, TypeError, "integer"),
     ("3", TypeError, "integer"), (None, TypeError, "integer")],
)  # fmt: skip
def test_a_bad_seed_is_refused(seed, error, match):
    with pytest.raises(error, match=match):
        row_rng(seed, x=1)


def test_encode_value_refuses_unknown_kinds():
    with pytest.raises(TypeError, match="no canonical encoding"):
        encode_value(set())


# --- vectorized seeds equal the generators of single rows -------------------------

reals = st.one_of(
    st.integers(min_value=-(2**130), max_value=2**130),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(
    ints=st.lists(st.integers(min_value=1 - 2**63, max_value=2**63 - 1), min_size=1, max_size=8),
    floats=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=8, max_size=8),
    floats32=st.lists(st.floats(width=32), min_size=8, max_size=8),
    mixed=st.lists(st.one_of(reals, st.text(max_size=3), st.none()), min_size=8, max_size=8),
    seed=st.integers(min_value=0, max_value=2**70),
)
def test_block_seeds_equal_the_generator_of_each_row(ints, floats, floats32, mixed, seed):
    n = len(ints)
    columns = {
        "i": np.array(ints, dtype=np.int64),
        "f": np.array(floats[:n], dtype=np.float64),
        "f32": np.array(floats32[:n], dtype=np.float32),
        "u": np.abs(np.array(ints, dtype=np.int64)).astype(np.uint64),
        "b": np.array([v % 2 == 0 for v in ints]),
        "o": np.array(mixed[:n] + [None] * (n - len(mixed[:n])), dtype=object),
        "s": np.array([str(v) for v in ints]),
        "nd": np.array([[v, v / 3] for v in ints], dtype=np.float64),
    }
    seeds = row_seeds(seed, columns)
    assert seeds.shape == (n, 4)
    assert seeds.dtype == np.uint32
    for i, row in enumerate(rows_of({k: list(v) for k, v in columns.items()})):
        assert draw(np.random.default_rng(seeds[i])) == draw(row_rng(seed, **row)), row


@settings(max_examples=60, deadline=None)
@given(st.lists(reals, min_size=1, max_size=10))
def test_a_real_column_gives_the_same_seeds_as_any_of_its_types(values):
    floats = np.array([float(v) if abs(v) < 1e308 else 0.0 for v in values])
    as_object = np.array(list(floats), dtype=object)
    np.testing.assert_array_equal(row_seeds(9, {"x": floats}), row_seeds(9, {"x": as_object}))


def test_mixed_lists_keep_their_values():
    """A list of numbers and strings is not turned into strings by NumPy."""
    seeds = row_seeds(2, {"x": [1, "1"]})
    assert draw(np.random.default_rng(seeds[0])) == draw(row_rng(2, x=1))
    assert draw(np.random.default_rng(seeds[1])) == draw(row_rng(2, x="1"))


# --- stable when the space changes; distinct rows get distinct streams -------------


def plain(value):
    return value.item() if isinstance(value, np.generic) else value


def seeds_by_row(space, seed: int = 1) -> dict[tuple, tuple]:
    arrays = space.to_arrays()
    seeds = row_seeds(seed, arrays)
    keys = sorted(arrays)
    return {
        tuple((k, plain(arrays[k][i])) for k in keys): tuple(seeds[i]) for i in range(len(space))
    }


def test_a_row_keeps_its_generator_when_the_space_grows_shrinks_or_is_regrouped():
    base = seeds_by_row(Param(x=[1, 2, 3]) * Param(m=["a", "b"]))
    # Regrouped (another factor order), grown with a float (x turns into 1.0, 2.0, ...),
    # shrunk by a difference, and split into a sum of pieces.
    grown = seeds_by_row(Param(m=["a", "b", "c"]) * Param(x=[1, 2, 3, 2.5]))
    shrunk = seeds_by_row(Param(x=[1, 2, 3]) * Param(m=["a", "b"]) - Param(x=[2], m=["a"]))
    pieces = seeds_by_row(
        Param(x=[3]) * Param(m=["a", "b"]) + Param(m=["b", "a"]) * Param(x=[1, 2])
    )
    for other in (grown, shrunk, pieces):
        common = base.keys() & other.keys()
        assert common
        assert {k: base[k] for k in common} == {k: other[k] for k in common}
    assert len(shrunk) == 5


def test_distinct_rows_get_distinct_streams():
    space = Param(a=np.arange(50)) * Param(b=np.linspace(0, 1, 40)) * Param(c=["p", "q", "r"])
    seeds = row_seeds(0, space.to_arrays())
    assert len(np.unique(seeds, axis=0)) == len(space) == 6000
    firsts = [draw(np.random.default_rng(s)) for s in seeds[:2000]]
    assert len(set(firsts)) == 2000


def test_the_generator_is_the_same_in_another_process():
    values = [(1, "a"), (2.5, "b"), (float("nan"), "é")]
    here = [draw(row_rng(77, x=x, name=name)) for x, name in values]
    code = (
        "from psyrun import row_rng\n"
        f"for x, name in {values!r}:\n"
        "    print(int(row_rng(77, x=x, name=name).bit_generator.random_raw()) >> 12)\n"
    ).replace("nan", "float('nan')")
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**__import__("os").environ, "PYTHONHASHSEED": hash_seed},
        )
        assert [int(line) for line in out.stdout.split()] == here


# --- evaluate_block ----------------------------------------------------------------


def noisy(x, label, rng):
    return {"y": draw(rng)}


def noisy_block(x, label, rng):
    return {"y": np.array([draw(np.random.default_rng(s)) for s in rng], dtype=object)}


def expected_draws(arrays, seed=4):
    return [draw(row_rng(seed, **row)) for row in rows_of(arrays)]


def test_evaluate_block_passes_each_row_its_generator_and_not_setup_values():
    arrays = (Param(x=[1, 2, 3]) * Param(label=["u", "v"])).to_arrays()

    def with_setup(x, label, rng, gpu):
        return {"y": draw(rng)}

    out = evaluate_block(with_setup, arrays, ["x", "label"], extra={"gpu": 0}, rng_seed=4)
    assert out["y"] == expected_draws(arrays)
    assert "rng" not in out


def test_a_vectorized_block_gets_the_rows_seeds_also_when_retried_row_by_row():
    arrays = (Param(x=[1, 2, 3, 4]) * Param(label=["u", "v"])).to_arrays()
    out = evaluate_block(noisy_block, arrays, ["x", "label"], vectorized=True, rng_seed=4)
    assert list(out["y"]) == expected_draws(arrays)

    def fails_on_x3(x, label, rng):
        if (x == 3).any():
            raise RuntimeError("x == 3")
        return noisy_block(x, label, rng)

    failed = []
    out = evaluate_block(
        fails_on_x3,
        arrays,
        ["x", "label"],
        vectorized=True,
        rng_seed=4,
        on_error=lambda row, exc: failed.append(row),
    )
    kept = [d for d, x in zip(expected_draws(arrays), arrays["x"]) if x != 3]
    assert list(out["y"]) == kept
    assert failed == [{"x": 3, "label": "u"}, {"x": 3, "label": "v"}]


def test_setup_returning_rng_is_refused():
    with pytest.raises(ValueError, match="setup returned an 'rng' key"):
        evaluate_block(noisy, {"x": np.array([1]), "label": np.array(["a"])}, ["x", "label"],
                       extra={"rng": 1}, rng_seed=1)  # fmt: skip


# --- tasks ---------------------------------------------------------------------------

RNG_TASK = """
import numpy as np
from psyrun import Param

pspace = {pspace}
rng_seed = 2024
max_jobs = {jobs}
{settings}

def execute(x, trial, rng):
    return {{"y": int(rng.bit_generator.random_raw()) >> 12}}
"""

VECTOR_TASK = """
import numpy as np
from psyrun import Param

pspace = {pspace}
rng_seed = 2024
max_jobs = {jobs}
vectorized = True
block_size = 4
{settings}

def execute(x, trial, rng):
    y = [int(np.random.default_rng(s).bit_generator.random_raw()) >> 12 for s in rng]
    return {{"y": np.array(y, dtype=np.int64)}}
"""

SPACE = "Param(x=[0.5, 1, 2, 3, 4]) * Param(trial=[0, 1, 2])"
GROWN = "Param(trial=[0, 1, 2, 3]) * Param(x=[0.5, 1, 2, 3, 4, 5.5])"


def check_rows(result: dict, seed: int = 2024) -> int:
    """Assert every row's y is its generator's first draw; return the row count."""
    rows = rows_of({"x": result["x"].tolist(), "trial": result["trial"].tolist()})
    for row, y in zip(rows, result["y"].tolist()):
        assert int(y) == draw(row_rng(seed, **row)), row
    return len(rows)


@pytest.mark.parametrize(
    ("template", "jobs", "settings"),
    [
        (RNG_TASK, 3, ""),
        (RNG_TASK, 2, "from psyrun import LoadBalancingBackend\nbackend = LoadBalancingBackend"),
        (VECTOR_TASK, 4, ""),
    ],
    ids=["distribute", "loadbalancing", "vectorized"],
)
def test_psy_run_gives_each_row_its_generator_whatever_the_jobs_and_after_growth(
    project, template, jobs, settings
):
    write_task(project, "noise", template.format(pspace=SPACE, jobs=jobs, settings=settings))
    ok(psy("run", "noise"))
    first = task_result(project, "noise")
    assert check_rows(first) == 15

    # The space grows and is regrouped; -c evaluates only the new rows, in other jobs.
    write_task(project, "noise", template.format(pspace=GROWN, jobs=jobs + 1, settings=settings))
    ok(psy("run", "-c", "noise"))
    grown = task_result(project, "noise")
    assert check_rows(grown) == 24
    old = {(x, t): y for x, t, y in zip(first["x"], first["trial"], first["y"])}
    new = {(x, t): y for x, t, y in zip(grown["x"], grown["trial"], grown["y"])}
    assert {k: new[k] for k in old} == old


def test_psy_test_shows_the_rows_generator(project):
    write_task(project, "noise", RNG_TASK.format(pspace=SPACE, jobs=1, settings=""))
    out = ok(psy("test", "noise"))
    expected = draw(row_rng(2024, x=0.5, trial=0))
    assert f"{{'y': {expected}}}" in out.stdout, describe(out)


def test_changing_rng_seed_changes_the_task_version(project):
    path = write_task(project, "noise", RNG_TASK.format(pspace=SPACE, jobs=1, settings=""))
    before = TaskDef.load(path).version
    path.write_text(path.read_text().replace("rng_seed = 2024", "rng_seed = 2025"))
    assert TaskDef.load(path).version != before


def load_error(project, text: str) -> str:
    write_task(project, "t", text)
    tasks = load_tasks(project / "psy-tasks")
    assert "t" not in tasks
    return str(tasks.errors[0])


def test_execute_asking_for_rng_without_rng_seed_is_a_clear_load_error(project):
    text = "from psyrun import Param\npspace = Param(x=[1])\ndef execute(x, rng):\n    return {}\n"
    message = load_error(project, text)
    assert "execute takes an `rng` argument" in message
    assert "rng_seed = " in message
    out = psy("run", "t")
    assert out.exit_code != 0
    assert "rng_seed" in out.output, describe(out)
    assert "Traceback" not in out.output, describe(out)


@pytest.mark.parametrize(
    ("seed", "match"), [("-4", "non-negative"), ("1.5", "integer"), ("'abc'", "integer")]
)
def test_a_bad_rng_seed_is_a_load_error(project, seed, match):
    text = f"from psyrun import Param\npspace = Param(x=[1])\nrng_seed = {seed}\n"
    text += "def execute(x):\n    return {}\n"
    assert "rng_seed" in load_error(project, text)
    assert match in load_error(project, text)


def test_rng_as_a_parameter_and_a_generator_at_once_is_refused(project):
    text = "from psyrun import Param\npspace = Param(rng=[1])\nrng_seed = 3\n"
    text += "def execute(rng):\n    return {'y': rng}\n"
    assert "rename the parameter" in load_error(project, text)


def test_a_parameter_named_rng_without_rng_seed_is_passed_as_in_psyrun_08(project):
    write_task(
        project,
        "old",
        "from psyrun import Param\npspace = Param(rng=[1, 2])\n"
        "def execute(rng):\n    return {'y': rng * 10}\n",
    )
    ok(psy("run", "old"))
    assert task_result(project, "old")["y"].tolist() == [10, 20]


def test_rng_seed_without_an_rng_argument_is_for_the_task_to_use(project):
    write_task(
        project,
        "own",
        "from psyrun import Param, row_rng\npspace = Param(x=[1, 2])\nrng_seed = 8\n"
        "def execute(**row):\n"
        "    return {'y': int(row_rng(rng_seed, **row).bit_generator.random_raw()) >> 12}\n",
    )
    ok(psy("run", "own"))
    assert task_result(project, "own")["y"].tolist() == [
        draw(row_rng(8, x=1)),
        draw(row_rng(8, x=2)),
    ]


def test_a_parameter_without_canonical_encoding_fails_its_rows_with_the_reason(project):
    write_task(
        project,
        "objs",
        "from psyrun import Param\npspace = Param(x=[1, 2]) * Param(opts=[{'a': 1}])\n"
        "rng_seed = 1\n"
        "def execute(x, opts, rng):\n    return {'y': 1}\n",
    )
    out = psy("run", "objs")
    assert "row_rng cannot use parameter 'opts'" in out.output, describe(out)
    assert "Traceback" not in out.stdout


def test_rng_seed_from_psy_conf_applies_to_every_task(project):
    (project / "psy-tasks" / "psy-conf.py").write_text("rng_seed = 31\n")
    write_task(
        project,
        "conf",
        "from psyrun import Param\npspace = Param(x=[1, 2])\n"
        "def execute(x, rng):\n    return {'y': int(rng.bit_generator.random_raw()) >> 12}\n",
    )
    ok(psy("run", "conf"))
    assert task_result(project, "conf")["y"].tolist() == [
        draw(row_rng(31, x=1)),
        draw(row_rng(31, x=2)),
    ]


def test_hostile_names_and_text_are_hashed_as_they_are():
    """Lone surrogates, NUL, newlines and right-to-left marks: valid, distinct rows."""
    names = ["\ud800", "a\x00b", "a\nb", "\u202eevil", "é", "e\u0301"]
    firsts = {draw(row_rng(0, **{name: name})) for name in names}
    assert len(firsts) == len(names)
    column = np.array(names, dtype=object)
    seeds = row_seeds(0, {"v": column})
    assert [draw(np.random.default_rng(s)) for s in seeds] == [
        draw(row_rng(0, v=name)) for name in names
    ]
