"""Every numba kernel against its NumPy reference, and the exact row matching."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from psyrun import _kernels as K

SPECIAL_FLOATS = np.array(
    [0.0, -0.0, 1.0, -1.0, np.nan, -np.nan, np.inf, -np.inf, 1e308, 5e-324, 2.0**53 + 2]
)

float_arrays = hnp.arrays(
    np.float64,
    st.integers(0, 200),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
)
uint_arrays = hnp.arrays(np.uint64, st.integers(0, 200))


def odd_nan():
    # A NaN with another payload and the sign bit set: still "NaN" to psyrun.
    return np.array([0xFFF8000000000001], dtype=np.uint64).view(np.float64)


@given(uint_arrays)
def test_mix64_numba_matches_reference(values):
    np.testing.assert_array_equal(K.mix64.compiled()(values), K.mix64.reference(values))


@given(float_arrays)
def test_hash_floats_numba_matches_reference(values):
    values = np.concatenate([values, SPECIAL_FLOATS, odd_nan()])
    np.testing.assert_array_equal(
        K.hash_floats.compiled()(values), K.hash_floats.reference(values)
    )


def test_hash_floats_equal_values_hash_equal():
    h = K.hash_floats.reference(np.concatenate([SPECIAL_FLOATS, odd_nan()]))
    assert h[0] == h[1]  # 0.0 and -0.0
    assert h[4] == h[5] == h[-1]  # every NaN
    assert len(set(h[[0, 2, 3, 4, 6, 7, 8, 9, 10]].tolist())) == 9


@given(uint_arrays, st.data())
def test_combine_hashes_numba_matches_reference(acc, data):
    h = data.draw(hnp.arrays(np.uint64, len(acc)))
    np.testing.assert_array_equal(
        K.combine_hashes.compiled()(acc, h), K.combine_hashes.reference(acc, h)
    )


@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(0, 30), st.integers(0, 6)),
        elements=st.sampled_from([0.0, -0.0, 1.5, np.nan, -3.0]),
    )
)
def test_hash_float_rows_numba_matches_reference(values):
    seed = np.arange(len(values), dtype=np.uint64)
    np.testing.assert_array_equal(
        K.hash_float_rows.compiled()(values, seed), K.hash_float_rows.reference(values, seed)
    )


@given(hnp.arrays(np.uint64, st.integers(0, 300), elements=st.integers(0, 20)), st.data())
def test_hash_index_numba_matches_reference(keys, data):
    queries = data.draw(hnp.arrays(np.uint64, st.integers(0, 50), elements=st.integers(0, 25)))
    fast = K.HashIndex(keys, force="numba")
    slow = K.HashIndex(keys, force="reference")
    np.testing.assert_array_equal(fast.chain, slow.chain)
    np.testing.assert_array_equal(fast.lookup(queries), slow.lookup(queries))
    # Oracle: the lowest row holding the key, chains ascending through equal keys.
    for q, row in zip(queries.tolist(), slow.lookup(queries).tolist()):
        holders = np.flatnonzero(keys == q).tolist()
        assert row == (holders[0] if holders else -1)
    for i, nxt in enumerate(slow.chain.tolist()):
        later = [j for j in np.flatnonzero(keys == keys[i]).tolist() if j > i]
        assert nxt == (later[0] if later else -1)


def test_hash_index_large_random_keys():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 2**63, 50_000, dtype=np.int64).astype(np.uint64)
    keys[::7] = keys[0]  # many duplicates of one key
    queries = np.concatenate([keys[:1000], rng.integers(0, 2**63, 1000).astype(np.uint64)])
    fast, slow = K.HashIndex(keys), K.HashIndex(keys, force="reference")
    np.testing.assert_array_equal(fast.chain, slow.chain)
    np.testing.assert_array_equal(fast.lookup(queries), slow.lookup(queries))


def test_dispatch_uses_reference_below_threshold_and_when_disabled(monkeypatch):
    calls = []
    kernel = K._Kernel(lambda x: calls.append("numba"), lambda x: calls.append("ref"), 10)
    kernel._compiled = lambda x: calls.append("numba")
    kernel(np.zeros(9))
    kernel(np.zeros(10))
    monkeypatch.setenv("PSYRUN_DISABLE_NUMBA", "1")
    kernel(np.zeros(10))
    assert calls == ["ref", "numba", "ref"]


def test_a_kernel_compiles_only_once_its_reference_work_would_pay_for_it(monkeypatch):
    # The ski-rental rule: the reference runs until the rows it has done
    # reach compile_after; from then on (and only for calls above the
    # call threshold) the compiled loop runs.
    monkeypatch.delenv("PSYRUN_DISABLE_NUMBA", raising=False)
    calls, compiles = [], []
    kernel = K._Kernel(None, lambda x: calls.append(("ref", len(x))), 10, compile_after=100)

    def compile_loop(loop):
        compiles.append(loop)
        return lambda x: calls.append(("numba", len(x)))

    monkeypatch.setattr(K, "_jit", compile_loop)
    for n in (40, 5, 40, 9, 19):
        kernel(np.zeros(n))
    assert not compiles
    assert kernel.reference_rows == 99  # calls below the call threshold are not counted
    kernel(np.zeros(10))
    kernel(np.zeros(9))
    kernel(np.zeros(10))
    assert len(compiles) == 1
    assert calls[5:] == [("numba", 10), ("ref", 9), ("numba", 10)]


def test_hash_index_counts_its_lookups_towards_compiling(monkeypatch):
    monkeypatch.setattr(K._build_index, "compile_after", 3 * K.NUMBA_THRESHOLD)
    monkeypatch.setattr(K._build_index, "reference_rows", 0)
    monkeypatch.setattr(K._build_index, "_compiled", None)
    monkeypatch.delenv("PSYRUN_DISABLE_NUMBA", raising=False)
    keys = np.arange(K.NUMBA_THRESHOLD, dtype=np.uint64)
    first = K.HashIndex(keys)
    assert first._build is None
    first.lookup(np.arange(K.NUMBA_THRESHOLD, dtype=np.uint64))
    assert K.HashIndex(keys)._build is not None  # the third lot of rows pays


def test_a_difference_of_a_million_rows_does_not_wait_for_numba():
    # Target 3 of issue 25: a fresh process does a difference and missing()
    # of 10^6 rows with the NumPy references, so it waits for no compile.
    code = (
        "import sys, numpy as np\n"
        "from psyrun.pspace import Param, missing\n"
        "space = Param(a=np.arange(1000)) * Param(b=np.arange(1000) * 0.5)\n"
        "sub = Param(**space.take(np.arange(0, 10**6, 10)))\n"
        "d = space - sub\n"
        "assert len(d) == 900_000 and len(missing(space, sub)) == 900_000\n"
        "print('numba' in sys.modules)\n"
    )
    env = dict(os.environ)
    env.pop("PSYRUN_DISABLE_NUMBA", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False"]


@contextlib.contextmanager
def compiled_kernels():
    """Every kernel compiled and used from the first row (the other side of the switch)."""
    with pytest.MonkeyPatch.context() as m:
        m.delenv("PSYRUN_DISABLE_NUMBA", raising=False)
        for kernel in vars(K).values():
            if isinstance(kernel, K._Kernel):
                kernel.compiled()
                m.setattr(kernel, "threshold", 0)
        yield


spread_keys = st.sampled_from(
    [0, 1, 2**63, 2**64 - 1, 2**63 - 1, 0x9E3779B97F4A7C15, 2**32, 2**62 + 7, 12345]
)


@given(
    hnp.arrays(np.uint64, st.integers(0, 200), elements=spread_keys),
    hnp.arrays(np.uint64, st.integers(0, 60), elements=spread_keys),
)
def test_hash_index_buckets_agree_with_numba_on_keys_across_the_range(keys, queries):
    # Keys at both ends of the range and repeated: buckets by top bits,
    # ties in row order, an empty index.
    fast = K.HashIndex(keys, force="numba")
    slow = K.HashIndex(keys, force="reference")
    np.testing.assert_array_equal(fast.chain, slow.chain)
    np.testing.assert_array_equal(fast.lookup(queries), slow.lookup(queries))
    np.testing.assert_array_equal(fast.lookup(keys), slow.lookup(keys))


@given(
    st.integers(1, 40),
    st.integers(1, 30),
    st.lists(st.integers(0, 1199), max_size=300),
    st.booleans(),
)
def test_difference_and_missing_identical_whichever_kernels_run(a, b, picks, as_floats):
    from psyrun.pspace import Param, missing

    values = np.arange(b) * 0.5 if as_floats else np.arange(b)
    space = Param(a=np.arange(a) % 7) * Param(b=values)
    sub = space.take(np.array([p % len(space) for p in picks], dtype=np.int64))
    with compiled_kernels():
        compiled = [(space - Param(**sub)).surviving_rows(), missing(space, sub).surviving_rows()]
    with pytest.MonkeyPatch.context() as m:
        m.setenv("PSYRUN_DISABLE_NUMBA", "1")
        reference = [(space - Param(**sub)).surviving_rows(), missing(space, sub).surviving_rows()]
    # Oracle: a set of the subtracted (a, b) pairs.
    all_rows = space.take(np.arange(len(space)))
    gone = set(zip(sub["a"].tolist(), sub["b"].tolist()))
    pairs = zip(all_rows["a"].tolist(), all_rows["b"].tolist())
    expected = [i for i, pair in enumerate(pairs) if pair not in gone]
    for got, ref in zip(compiled, reference):
        np.testing.assert_array_equal(got, ref)
        assert got.tolist() == expected


# ---------------------------------------------------------------------------
# Column hashing: equal values hash equal across column types


def test_hash_column_consistent_across_types():
    ints = np.array([1, 0, 2], dtype=np.int64)
    floats = np.array([1.0, -0.0, 2.0])
    bools_and_ints = np.array([True, False, 2], dtype=object)
    small = np.array([1, 0, 2], dtype=np.uint8)
    expected = K.hash_column(ints)
    for column in (floats, bools_and_ints, small):
        np.testing.assert_array_equal(K.hash_column(column), expected)


def test_hash_column_strings_and_objects():
    u = np.array(["a", "bb"])
    o = np.array(["a", "bb"], dtype=object)
    np.testing.assert_array_equal(K.hash_column(u), K.hash_column(o))
    mixed = np.array(["1", 1, None, (1, 2), [1, 2], math.nan, 2**80], dtype=object)
    h = K.hash_column(mixed)
    assert h[0] != h[1]  # "1" and 1 differ
    assert h[1] == K.hash_column(np.array([1.0]))[0]
    assert h[5] == K.hash_column(np.array([np.nan]))[0]


def test_hash_column_arrays_by_content():
    nd = np.array([[1.0, 2.0], [3.0, 4.0]])
    objs = np.empty(2, dtype=object)
    objs[0], objs[1] = np.array([1, 2]), np.array([3.0, 4.0])
    np.testing.assert_array_equal(K.hash_column(nd), K.hash_column(objs))
    other_shape = np.empty(1, dtype=object)
    other_shape[0] = np.array([[1.0, 2.0]])
    assert K.hash_column(other_shape)[0] != K.hash_column(nd)[0]


# ---------------------------------------------------------------------------
# Confirming by value


def test_values_equal_numeric_exactness():
    a = np.array([1, 2**53 + 1, -(2**62), 0, 5], dtype=np.int64)
    b = np.array([1.0, 2.0**53, -(2.0**62), -0.0, np.nan])
    assert K.values_equal(a, b).tolist() == [True, False, True, True, False]
    assert K.values_equal(b, a).tolist() == [True, False, True, True, False]
    nans = np.array([np.nan, 1.0])
    assert K.values_equal(nans, nans.copy()).tolist() == [True, True]
    signed = np.array([-1, 3], dtype=np.int64)
    unsigned = np.array([2**64 - 1, 3], dtype=np.uint64)
    assert K.values_equal(signed, unsigned).tolist() == [False, True]
    assert K.values_equal(np.array([True, False]), np.array([1, 1])).tolist() == [True, False]


def test_values_equal_objects_and_arrays():
    a = np.array(["1", 1, None, math.nan, (1, 2)], dtype=object)
    b = np.array([1, 1.0, None, float("nan"), (1.0, 2.0)], dtype=object)
    assert K.values_equal(a, b).tolist() == [False, True, True, True, True]
    x = np.empty(3, dtype=object)
    y = np.empty(3, dtype=object)
    x[:] = [np.array([1, 2]), np.array([np.nan]), np.array(["s"])]
    y[:] = [np.array([1.0, 2.0]), np.array([np.nan]), np.array(["s"])]
    assert K.values_equal(x, y).tolist() == [True, True, True]
    assert K.values_equal(np.ones((2, 2)), np.array([[1, 1], [1, 0]])).tolist() == [True, False]


def brute_force_contains(table, queries):
    out = []
    for i in range(len(queries[0])):
        out.append(
            any(
                all(
                    K._values_equal_python(
                        q[i].item() if q.ndim == 1 and q.dtype != object else q[i],
                        t[j].item() if t.ndim == 1 and t.dtype != object else t[j],
                    )
                    for q, t in zip(queries, table)
                )
                for j in range(len(table[0]))
            )
        )
    return out


@given(st.data())
def test_row_table_matches_brute_force(data):
    pool = [0, 1, 2, 1.0, -0.0, math.nan, "1", "a", None, True]
    n_table = data.draw(st.integers(1, 8))
    n_query = data.draw(st.integers(0, 8))
    n_cols = data.draw(st.integers(1, 3))

    def column(n):
        values = data.draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
        out = np.empty(n, dtype=object)
        out[:] = values
        return out

    table = [column(n_table) for _ in range(n_cols)]
    queries = [column(n_query) for _ in range(n_cols)]
    got = K.RowTable(table).contains(queries).tolist()
    assert got == brute_force_contains(table, queries)


def test_row_table_confirms_hash_collisions(monkeypatch):
    # Force every row onto one hash: membership must still be exact.
    monkeypatch.setattr(K, "hash_rows", lambda columns: np.zeros(len(columns[0]), np.uint64))
    table = K.RowTable([np.array([1, 2, 3, 2])])
    found = table.contains([np.array([3, 4, 2, 0])])
    assert found.tolist() == [True, False, True, False]


@pytest.mark.parametrize("disabled", ["0", "1"])
def test_row_table_large_typed(monkeypatch, disabled):
    monkeypatch.setenv("PSYRUN_DISABLE_NUMBA", disabled)
    rng = np.random.default_rng(3)
    a = rng.integers(0, 1000, 60_000)
    b = rng.integers(0, 50, 60_000).astype(float)
    table = K.RowTable([a[:30_000], b[:30_000]])
    found = table.contains([a, b])
    expected = np.isin(a * 100 + b.astype(int), a[:30_000] * 100 + b[:30_000].astype(int))
    np.testing.assert_array_equal(found, expected)


def test_values_equal_string_arrays_by_whole_value():
    # Rows of 2-d string columns are whole array values, matched by content.
    a = np.array([["x", "y"], ["x", "z"]])
    np.testing.assert_array_equal(K.values_equal(a, np.array([["x", "y"]] * 2)), [True, False])
    # Array values of different shapes never match (this raised a ValueError).
    assert K.values_equal(np.array([["x"]]), np.array([["x", "x"]])).tolist() == [False]


# ---------------------------------------------------------------------------
# numba's on-disk cache: off unless PSYRUN_NUMBA_CACHE asks for it

_COMPILE_MIX64 = """
import numba, numpy as np
from psyrun import _kernels as K
before = numba.config.CACHE_DIR
f = K.mix64.compiled()
x = np.arange(10, dtype=np.uint64)
assert (f(x) == K.mix64.reference(x)).all()
assert numba.config.CACHE_DIR == before, "numba's global cache setting changed"
print(sum(f.stats.cache_hits.values()))
"""


def run_compile(env_changes: dict[str, str | None]) -> int:
    """Compile mix64 in a fresh interpreter; return its numba cache hits."""
    env = dict(os.environ)
    env.pop("PSYRUN_DISABLE_NUMBA", None)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_MIX64], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def cache_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.suffix in (".nbi", ".nbc")]


def test_kernels_write_no_numba_cache_by_default(tmp_path):
    # Where numba itself would cache (cache=True honours NUMBA_CACHE_DIR).
    numba_dir = tmp_path / "numba"
    env = {"PSYRUN_NUMBA_CACHE": None, "NUMBA_CACHE_DIR": str(numba_dir)}
    assert run_compile(env) == 0
    assert run_compile(env) == 0  # compiled again: nothing was cached
    assert not numba_dir.exists() or cache_files(numba_dir) == []


def test_numba_cache_opt_in_writes_a_per_host_directory_and_is_reused(tmp_path):
    env = {"PSYRUN_NUMBA_CACHE": str(tmp_path / "cache"), "NUMBA_CACHE_DIR": None}
    assert run_compile(env) == 0  # empty cache: compiled and written
    host_dir = tmp_path / "cache" / socket.gethostname()
    assert cache_files(host_dir)
    assert set(cache_files(tmp_path / "cache")) == set(cache_files(host_dir))
    assert run_compile(env) >= 1  # loaded from the cache


def test_numba_cache_opt_in_with_many_processes_starting_together(tmp_path):
    # Jobs of one array start at once on a node: all must work with one cache.
    env = dict(os.environ, PSYRUN_NUMBA_CACHE=str(tmp_path / "cache"))
    env.pop("PSYRUN_DISABLE_NUMBA", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _COMPILE_MIX64],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert out.split()[-1].isdigit()
        assert proc.returncode == 0, err
        assert "Traceback" not in err


def test_numba_cache_dir_from_the_environment(monkeypatch, tmp_path):
    host = socket.gethostname()
    for off in (None, "", "0", "false", "off"):
        if off is None:
            monkeypatch.delenv("PSYRUN_NUMBA_CACHE", raising=False)
        else:
            monkeypatch.setenv("PSYRUN_NUMBA_CACHE", off)
        assert K.numba_cache_dir() is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PSYRUN_NUMBA_CACHE", "1")
    assert K.numba_cache_dir() == str(tmp_path / "xdg" / "psyrun" / "numba" / host)
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert K.numba_cache_dir() == str(tmp_path / "home" / ".cache" / "psyrun" / "numba" / host)
    monkeypatch.setenv("PSYRUN_NUMBA_CACHE", str(tmp_path / "mine"))
    assert K.numba_cache_dir() == str(tmp_path / "mine" / host)


def test_unusable_numba_cache_directory_only_costs_compile_time(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert run_compile({"PSYRUN_NUMBA_CACHE": str(blocker / "cache")}) == 0


def test_kernels_hash_and_equality_of_array_like_lists_agree():
    lists = np.empty(3, dtype=object)
    lists[:] = [[1, 2], (1.0, 2.0), [np.nan, 3]]
    arrays = np.array([[1, 2], [1, 2], [np.nan, 3]])
    assert np.array_equal(K.hash_column(lists), K.hash_column(arrays))
    assert K.values_equal(lists, arrays).all()


def test_hash_rows_in_blocks_equals_whole_columns(monkeypatch):
    rng = np.random.default_rng(7)
    n = 2 * K.HASH_BLOCK + 5
    columns = [rng.integers(0, 50, n), rng.normal(size=n), np.array(["x", "y"] * (n // 2) + ["z"])]
    blocked = K.hash_rows(columns)
    monkeypatch.setattr(K, "HASH_BLOCK", 4 * n)
    np.testing.assert_array_equal(blocked, K.hash_rows(columns))
