"""Vectorized execute: the function sees a block of rows as NumPy arrays."""

import math

import numpy as np
import pytest

from psyrun import Param, map_pspace, map_pspace_hdd_backed, map_pspace_parallel
from psyrun.mapper import (
    DEFAULT_VECTORIZED_BLOCK_SIZE,
    OutputKeyError,
    VectorizedOutputError,
    evaluate_block,
    iter_results,
)
from psyrun.store import NpzStore, PickleStore


def affine(a, b):
    return {"y": a * b + 0.5, "s": np.char.add(np.full(len(a), "r"), a.astype(int).astype(str))}


def affine_row(a, b):
    return {"y": a * b + 0.5, "s": f"r{int(a)}"}


SPACE = Param(a=np.arange(7.0)) * Param(b=[1.0, 2.0, 3.0])


@pytest.mark.parametrize("block_size", [1, 4, 21, None])
def test_vectorized_map_pspace_equals_the_row_path(block_size):
    vec = map_pspace(affine, SPACE, vectorized=True, block_size=block_size)
    rows = map_pspace(affine_row, SPACE)
    assert list(vec) == ["a", "b", "y", "s"]
    assert all(isinstance(v, np.ndarray) for v in vec.values())
    for key in rows:
        assert vec[key].tolist() == rows[key], key


def test_the_function_receives_whole_blocks_of_arrays():
    seen = []

    def fn(a, b):
        seen.append((type(a), len(a), len(b)))
        return {"y": a + b}

    map_pspace(fn, SPACE, vectorized=True, block_size=8)
    assert seen == [(np.ndarray, 8, 8), (np.ndarray, 8, 8), (np.ndarray, 5, 5)]


def test_array_valued_parameters_arrive_stacked():
    space = Param(v=[np.zeros(3), np.ones(3), np.full(3, 2.0)])
    result = map_pspace(lambda v: {"n": v.sum(axis=1), "v2": 2 * v}, space, vectorized=True)
    assert result["v"].shape == (3, 3)
    assert result["n"].tolist() == [0.0, 3.0, 6.0]
    assert result["v2"].shape == (3, 3)


def test_outputs_may_be_sequences():
    result = map_pspace(
        lambda a: {"l": [int(x) for x in a], "t": tuple(str(x) for x in a)},
        Param(a=[1, 2]),
        vectorized=True,
    )
    assert result["l"].tolist() == [1, 2]
    assert result["t"].tolist() == ["1", "2"]


def test_exclude_and_unknown_excludes():
    result = map_pspace(affine, SPACE, exclude=["b", "s"], vectorized=True)
    assert list(result) == ["a", "y"]
    with pytest.warns(UserWarning, match="'q'"):
        map_pspace(affine, SPACE, exclude=["q"], vectorized=True)


def test_a_key_some_blocks_lack_is_nan_there():
    def fn(a):
        return {"y": a} if a[0] < 4 else {"y": a, "z": -a}

    for block_size in (2, 4):
        result = map_pspace(fn, Param(a=np.arange(6.0)), vectorized=True, block_size=block_size)
        assert result["y"].tolist() == list(range(6))
        assert np.isnan(result["z"][:4]).all()
        assert result["z"][4:].tolist() == [-4.0, -5.0]


def test_empty_space():
    result = map_pspace(affine, Param(a=[], b=[]), vectorized=True)
    assert {k: len(v) for k, v in result.items()} == {"a": 0, "b": 0}


def test_default_block_size():
    assert DEFAULT_VECTORIZED_BLOCK_SIZE == 65536
    blocks = list(iter_results(lambda a: {"y": a}, Param(a=np.arange(70000)), vectorized=True))
    assert [len(b["y"]) for b in blocks] == [65536, 70000 - 65536]


# -- bad outputs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (
            lambda a: {"y": a[:-1]},
            r"returned 'y' with length 3 for a block of 4 rows: expected length 4",
        ),
        (lambda a: {"y": [1]}, r"returned 'y' with length 1 for a block of 4 rows: expected"),
        (lambda a: {"y": 2.0}, r"returned a scalar \(float\) for 'y' .*expected length 4"),
        (lambda a: {"y": np.float64(2)}, r"scalar \(float64\) for 'y'.*expected length 4"),
        (lambda a: {"y": "text"}, r"scalar \(str\) for 'y'"),
        (lambda a: {"y": a, "z": None}, r"scalar \(NoneType\) for 'z'.*received no length"),
    ],
    ids=["short", "list", "scalar", "numpy-scalar", "str", "none"],
)
def test_bad_outputs_name_the_key_and_the_lengths(fn, message):
    with pytest.raises(VectorizedOutputError, match=message):
        map_pspace(fn, Param(a=np.arange(4.0)), vectorized=True)
    # Not a per-row failure: raised even when failing rows are recorded.
    with pytest.raises(VectorizedOutputError):
        evaluate_block(
            fn, {"a": np.arange(4.0)}, ["a"], vectorized=True, on_error=lambda r, e: None
        )


def test_vectorized_output_error_is_a_value_error():
    assert issubclass(VectorizedOutputError, ValueError)


def test_a_non_dict_result_is_a_type_error():
    with pytest.raises(TypeError, match="returned ndarray for a block of 2 rows"):
        map_pspace(lambda a: a, Param(a=[1, 2]), vectorized=True)


def test_an_output_named_like_a_parameter_is_an_error():
    with pytest.raises(OutputKeyError, match="returned 'a', which is also a parameter"):
        map_pspace(lambda a: {"a": a}, Param(a=[1, 2]), vectorized=True)
    with pytest.raises(OutputKeyError):
        evaluate_block(
            lambda a: {"a": a}, {"a": np.arange(2)}, ["a"], vectorized=True, on_error=print
        )


# -- a block that raises -------------------------------------------------------


def test_a_failing_block_is_retried_row_by_row():
    calls = []

    def fn(a, b):
        calls.append(len(a))
        if (a == 3).any():
            raise ValueError("a is 3")
        return {"y": a * b}

    errors = []
    arrays = SPACE.to_arrays()
    result = evaluate_block(
        fn, arrays, ["a", "b"], vectorized=True, on_error=lambda r, e: errors.append((r, str(e)))
    )
    # One call for the block, then one per row with length-1 arrays.
    assert calls == [21] + [1] * 21
    assert errors == [({"a": 3.0, "b": b}, "a is 3") for b in (1.0, 2.0, 3.0)]
    keep = arrays["a"] != 3
    assert result["a"].tolist() == arrays["a"][keep].tolist()
    assert result["b"].tolist() == arrays["b"][keep].tolist()
    assert result["y"].tolist() == (arrays["a"] * arrays["b"])[keep].tolist()


def test_retried_rows_with_differing_keys_are_nan_filled():
    def fn(a):
        if len(a) > 1:
            raise ValueError
        return {"y": a} if a[0] else {"z": a}

    result = evaluate_block(
        fn, {"a": np.arange(3)}, ["a"], vectorized=True, on_error=lambda r, e: None
    )
    assert math.isnan(result["y"][0])
    assert result["y"][1:].tolist() == [1, 2]
    assert result["z"][0] == 0


def test_retried_rows_still_check_their_outputs():
    def fn(a):
        if len(a) > 1:
            raise ValueError
        return {"y": float(a[0])}

    with pytest.raises(VectorizedOutputError, match="row 0 of a block"):
        evaluate_block(fn, {"a": np.arange(3)}, ["a"], vectorized=True, on_error=print)


def test_without_on_error_a_failing_block_raises():
    def fn(a):
        if (a == 0).any():
            raise ZeroDivisionError("a is 0")
        return {"y": 1 / a}

    with pytest.raises(ZeroDivisionError, match="a is 0"):
        map_pspace(fn, Param(a=[1, 0]), vectorized=True)


# -- parallel and on disk ------------------------------------------------------


def test_parallel_vectorized_equals_serial():
    space = Param(a=np.arange(300.0)) * Param(b=[1.0, 2.0])
    serial = map_pspace(affine, space, vectorized=True, block_size=7)
    parallel = map_pspace_parallel(
        affine, space, n_jobs=2, backend="threading", vectorized=True, block_size=7
    )
    assert list(parallel) == list(serial)
    for key in serial:
        assert parallel[key].tolist() == serial[key].tolist()


@pytest.mark.parametrize("store", [PickleStore(), NpzStore()], ids=["pickle", "npz"])
def test_hdd_backed_vectorized_resumes(tmp_path, store):
    filename = tmp_path / f"out{store.ext}"
    map_pspace_hdd_backed(
        affine, Param(a=[1.0, 2.0], b=[1.0, 1.0]), filename, store, vectorized=True
    )
    seen = []

    def fn(a, b):
        seen.extend(a.tolist())
        return affine(a, b)

    data = map_pspace_hdd_backed(fn, SPACE, filename, store, vectorized=True, block_size=5)
    assert len(seen) == len(SPACE) - 2
    assert sorted(zip(data["a"].tolist(), data["b"].tolist())) == sorted(
        zip(SPACE.to_arrays()["a"].tolist(), SPACE.to_arrays()["b"].tolist())
    )


def test_hdd_backed_keeps_the_blocks_before_a_bad_one(tmp_path):
    filename = tmp_path / "out.pkl"

    def fn(a):
        return {"y": a if a[0] < 6 else a[:1]}

    with pytest.raises(VectorizedOutputError, match="expected length 3"):
        map_pspace_hdd_backed(fn, Param(a=np.arange(9)), filename, vectorized=True, block_size=3)
    data = PickleStore().load(filename)
    assert data["a"].tolist() == list(range(6))
    assert data["y"].tolist() == list(range(6))
