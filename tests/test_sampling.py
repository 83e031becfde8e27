"""Sampling spaces (issue 24): Sobol, Halton, LatinHypercube and Random nodes.

The laws every node of the algebra keeps are checked with hypothesis against
the node's own full table (``to_arrays()``) and a plain-Python oracle of the
operators; the values themselves against scipy.stats.qmc and, for each kind
of dimension, against its distribution (Kolmogorov-Smirnov, fixed seeds).
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.stats
from e2e_helpers import load_result, result_path, status_counts, write
from hypothesis import given, settings
from hypothesis import strategies as st
from psy_helpers import psy
from scipy.stats import qmc

import psyrun
from psyrun.pspace import AmbiguousOperationError, Param, missing
from psyrun.sampling import (
    Halton,
    LatinHypercube,
    Random,
    SamplingSpace,
    SamplingWarning,
    Sobol,
    check_seeded,
    unseeded_nodes,
)

NODES = [Sobol, Halton, LatinHypercube, Random]

#: Dimensions of every kind: uniform, log-uniform, continuous and discrete distributions.
DIMS = {
    "u": (-2, 3),
    "lg": (1e-3, 10.0, "log"),
    "z": scipy.stats.norm(1, 2),
    "k": scipy.stats.poisson(4),
}


def make(cls, n, seed=0, options=None, **dims):
    """A node; Sobol sizes that are not a power of two warn (tested separately)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return cls(n, seed=seed, **(options or {}), **(dims or DIMS))


def table(space) -> list[tuple]:
    """Rows of a space as tuples of plain values (NaN kept as NaN)."""
    columns = space.to_arrays()
    keys = space.keys()
    return list(zip(*(columns[k].tolist() for k in keys)))


def same_rows(a: list[tuple], b: list[tuple]) -> bool:
    def same(x, y):
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        return type(x) is type(y) and x == y

    return len(a) == len(b) and all(
        len(r) == len(s) and all(map(same, r, s)) for r, s in zip(a, b)
    )


nodes = st.sampled_from(NODES)
sizes = st.integers(1, 200)
seeds = st.integers(0, 2**40)
dim_sets = st.lists(st.sampled_from(sorted(DIMS)), min_size=1, max_size=4, unique=True)


@st.composite
def spaces(draw):
    cls = draw(nodes)
    keys = draw(dim_sets)
    return make(cls, draw(sizes), draw(seeds), **{k: DIMS[k] for k in keys})


# --------------------------------------------------------------------------
# Laws of a node


@settings(max_examples=40, deadline=None)
@given(spaces(), st.data())
def test_len_rows_slices_blocks_and_take_agree(space, data):
    n = len(space)
    full = space.to_arrays()
    assert all(len(v) == n for v in full.values())
    # Every column has the dtype the node declares (sums and stores rely on it).
    assert all(full[k].dtype == space._spec(k).dtype for k in full)
    assert space.keys() == list(full)
    rows = table(space)
    # p[i] is the i-th row of to_arrays, as plain Python values of the column's type.
    for i in data.draw(st.lists(st.integers(-n, n - 1), max_size=5)):
        assert same_rows([tuple(space[i].values())], [rows[i]])
    # take: any rows, in any order, repeated.
    picked = data.draw(st.lists(st.integers(-n, n - 1), max_size=30))
    taken = space.take(np.array(picked, dtype=np.int64))
    for key in space.keys():
        assert np.array_equal(taken[key], full[key][picked])
        assert taken[key].dtype == full[key].dtype
    # slices are lazy views with the same rows.
    start, stop = sorted(data.draw(st.lists(st.integers(-n - 2, n + 2), min_size=2, max_size=2)))
    step = data.draw(st.sampled_from([1, 2, 3, -1]))
    assert same_rows(table(space[start:stop:step]), rows[start:stop:step])
    # blocks: any partition of the rows into ranges gives the same columns.
    cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=6))) | {0, n})
    for key in space.keys():
        parts = [space.to_arrays(a, b)[key] for a, b in itertools.pairwise(cuts)]
        assert np.array_equal(np.concatenate(parts), full[key])
    # iterate in blocks of any size.
    block = data.draw(st.integers(1, 50))
    assert same_rows([tuple(r.values()) for r in space.iterate(block)], rows)
    # pickling stores the recipe: same rows, and no points in the pickle.
    again = pickle.loads(pickle.dumps(space))
    assert same_rows(table(again), rows)
    recipe = sum(len(pickle.dumps(d.spec)) for d in space._dims.values())
    assert len(pickle.dumps(space)) < 1000 + recipe


@settings(max_examples=25, deadline=None)
@given(spaces(), st.lists(st.integers(0, 3), min_size=1, max_size=4), st.data())
def test_composition_with_grids(space, grid_values, data):
    grid = Param(g=grid_values)
    rows, grid_rows = table(space), [(v,) for v in grid_values]
    # Products in both orders: the left factor varies slowest.
    assert same_rows(table(space * grid), [r + g for r, g in itertools.product(rows, grid_rows)])
    assert same_rows(table(grid * space), [g + r for g, r in itertools.product(grid_rows, rows)])
    # Sums: a key missing on one side reads as NaN there.
    summed = table(space + Param(**{k: [0.5] for k in space.keys()}))
    assert same_rows(summed[: len(rows)], rows)
    # Differences and missing() match whole rows.
    product = space * grid
    all_rows = table(product)
    done = sorted(set(data.draw(st.lists(st.integers(0, len(all_rows) - 1), max_size=10))))
    done_space = product.take(np.array(done, dtype=np.int64))
    expected = [r for r in all_rows if not any(same_rows([r], [all_rows[d]]) for d in done)]
    assert same_rows(table(product - Param(**done_space)), expected)
    results = dict(done_space, out=np.zeros(len(done)))
    assert same_rows(table(missing(product, results)), expected)
    # Two sampling nodes compose as well.
    other = make(Random, 3, 5, w=(0, 1))
    assert same_rows(
        table(space * other), [r + o for r, o in itertools.product(rows, table(other))]
    )


@pytest.mark.parametrize("cls", NODES)
def test_row_values_depend_only_on_the_arguments(cls):
    a, b = make(cls, 64, 9), make(cls, 64, 9)
    assert same_rows(table(a), table(b))
    assert not same_rows(table(a), table(make(cls, 64, 10)))
    # A row of a smaller design: Sobol, Halton and Random extend; a Latin
    # hypercube of another size is another design.
    if cls is not LatinHypercube:
        assert same_rows(table(make(cls, 16, 9)), table(a)[:16])


def test_random_dimensions_are_independent_streams():
    """A Random dimension's values do not change when other dimensions come or go."""
    one = Random(100, seed=4, x=(0, 1))
    two = Random(100, seed=4, a=(5, 6), x=(0, 1), b=scipy.stats.norm())
    assert np.array_equal(one.to_arrays()["x"], two.to_arrays()["x"])
    assert not np.array_equal(two.to_arrays()["x"], two.to_arrays()["a"] - 5)


def test_random_numba_and_numpy_paths_agree_across_processes(tmp_path):
    """Large ranges use a numba kernel, small ones NumPy: each row is the same either way."""
    space = Random(60_000, seed=11, x=(0, 1), k=scipy.stats.poisson(2))
    path = tmp_path / "space.pkl"
    path.write_bytes(pickle.dumps(space))
    code = (
        "import pickle, sys, numpy as np\n"
        f"space = pickle.load(open({os.fspath(path)!r}, 'rb'))\n"
        "cols = space.to_arrays()\n"
        "np.save(sys.argv[1], np.column_stack([cols['x'], cols['k']]))\n"
    )
    out = tmp_path / "other.npy"
    env = dict(os.environ, PSYRUN_DISABLE_NUMBA="1")
    subprocess.run([sys.executable, "-c", code, out], check=True, env=env)
    other = np.load(out)
    here = space.to_arrays()  # 60000 rows: the numba kernel
    assert np.array_equal(other[:, 0], here["x"])
    assert np.array_equal(other[:, 1], here["k"])
    rows = np.array([59_999, 3, 30_000])
    assert np.array_equal(space.take(rows)["x"], here["x"][rows])  # few rows: NumPy


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 2**62), min_size=1, max_size=50),
    st.integers(0, 2**64 - 1),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.floats(-1e6, 1e6, allow_nan=False),
)
def test_sampling_kernels_match_their_numpy_references(rows, key, scale, shift):
    from psyrun import _kernels

    rows = np.array(rows, dtype=np.int64)
    kernel = _kernels.counter_uniforms
    got = kernel.compiled()(rows, np.uint64(key))
    assert np.array_equal(got, kernel.reference(rows, np.uint64(key)))
    assert ((got > 0) & (got < 1)).all()
    block = np.random.default_rng(key % 2**32).random((len(rows), 3))
    column = block[:, 1]  # strided, as a column of a scipy draw
    compiled = _kernels.affine.compiled()(column, scale, shift, np.empty(len(rows)))
    reference = _kernels.affine.reference(column, scale, shift, np.empty(len(rows)))
    assert np.array_equal(compiled, reference)


@pytest.mark.parametrize("cls", [Sobol, Halton, Random])
def test_large_draws_equal_row_by_row_access(cls):
    """Ranges of 20000+ rows take compiled loops, single rows NumPy: the same bits."""
    space = make(cls, 2**15, 6, u=(-3.7, 11.3), lg=(1e-3, 5.0, "log"))
    full = space.to_arrays()
    rows = np.random.default_rng(1).integers(0, len(space), 500)
    taken = space.take(rows)
    for key in full:
        assert np.array_equal(full[key][rows], taken[key])
        assert np.array_equal(full[key][: 2**14], space.to_arrays(0, 2**14)[key])


def test_same_points_in_another_process(tmp_path):
    """A task file builds its space in every process: the points must be equal bit for bit."""
    code = (
        "import sys, warnings, numpy as np, scipy.stats\n"
        "warnings.simplefilter('ignore')\n"
        "from psyrun import Sobol, Halton, LatinHypercube, Random\n"
        "dims = dict(u=(-2, 3), lg=(1e-3, 10.0, 'log'), z=scipy.stats.norm(1, 2),"
        " k=scipy.stats.poisson(4))\n"
        "out = []\n"
        "for cls in (Sobol, Halton, LatinHypercube, Random):\n"
        "    cols = cls(100, seed=5, **dims).to_arrays(7, 100)\n"
        "    out.append(np.column_stack([cols[k] for k in dims]))\n"
        "np.save(sys.argv[1], np.stack(out))\n"
    )
    path = tmp_path / "points.npy"
    subprocess.run([sys.executable, "-c", code, path], check=True)
    theirs = np.load(path)
    for cls, points in zip(NODES, theirs):
        cols = make(cls, 100, 5).to_arrays(7, 100)
        assert np.array_equal(np.column_stack([cols[k] for k in DIMS]), points), cls.__name__


def test_repr_rebuilds_the_space():
    space = make(Sobol, 32, 3, {"scramble": False}, **{"a b": (0, 1)}) * Param(m=["a", "b"])
    space = space + make(Halton, 4, 1, {"scramble": False}, **{"a b": (2, 3)})
    namespace = {
        "Param": Param,
        "Sobol": Sobol,
        "Halton": Halton,
        "LatinHypercube": LatinHypercube,
        "Random": Random,
        "scipy": scipy,
        "numpy": np,
    }
    for node in [space, make(Random, 10, 2), make(LatinHypercube, 5, 1), make(Halton, 9, 2)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            again = eval(repr(node), namespace)
        assert same_rows(table(again), table(node)), repr(node)


# --------------------------------------------------------------------------
# The values: scipy's point sets, and each dimension's distribution


@pytest.mark.parametrize("engine", [qmc.Sobol, qmc.Halton])
@pytest.mark.parametrize("scramble", [True, False])
@pytest.mark.parametrize("seed", [0, 12345, 2**63 + 5])
def test_points_equal_scipy_qmc(engine, scramble, seed):
    cls = Sobol if engine is qmc.Sobol else Halton
    space = cls(1024, seed=seed, scramble=scramble, a=(0, 1), b=(0, 1), c=(0, 1))
    expected = engine(3, scramble=scramble, rng=seed).random(1024)

    def points(columns):
        return np.column_stack([columns[k] for k in "abc"])

    assert np.array_equal(points(space.to_arrays()), expected)
    assert np.array_equal(points(space.to_arrays(333, 777)), expected[333:777])
    rows = np.random.default_rng(seed % 2**32).integers(0, 1024, 500)
    assert np.array_equal(points(space.take(rows)), expected[rows])  # direct access
    assert space[1000] == dict(zip("abc", expected[1000].tolist()))


def test_sobol_ranges_deep_in_the_sequence_equal_scipy():
    """A range far from the start skips ahead without drawing the points before it."""
    n = 2**21
    space = Sobol(n, seed=4, a=(0, 1), b=(0, 1))
    expected = qmc.Sobol(2, rng=4).random(n)
    for start, stop in [(n - 100, n), (1, 3), (2, 3), (2**20 - 1, 2**20 + 2), (777_777, 800_000)]:
        columns = space.to_arrays(start, stop)
        assert np.array_equal(np.column_stack([columns["a"], columns["b"]]), expected[start:stop])


def test_latin_hypercube_equals_scipy_and_is_stratified():
    space = LatinHypercube(50, seed=8, a=(0, 1), b=(0, 1))
    cols = space.to_arrays()
    expected = qmc.LatinHypercube(2, rng=8).random(50)
    assert np.array_equal(np.column_stack([cols["a"], cols["b"]]), expected)
    for key in "ab":
        assert sorted(np.floor(cols[key] * 50).astype(int).tolist()) == list(range(50))


def marginal_cdf(spec):
    if isinstance(spec, tuple) and len(spec) == 2:
        return scipy.stats.uniform(spec[0], spec[1] - spec[0]).cdf
    if isinstance(spec, tuple):
        return scipy.stats.loguniform(spec[0], spec[1]).cdf
    return spec.cdf


@pytest.mark.parametrize("cls", NODES)
@pytest.mark.parametrize("key", sorted(DIMS))
def test_marginal_distribution(cls, key):
    """Each dimension follows its distribution (KS test; for discrete ones, the DKW bound)."""
    n = 1024
    spec = DIMS[key]
    values = make(cls, n, 2024).to_arrays()[key]
    cdf = marginal_cdf(spec)
    if key == "k":
        assert values.dtype == np.int64
        support = np.arange(values.min() - 1, values.max() + 1)
        empirical = np.searchsorted(np.sort(values), support, side="right") / n
        # Dvoretzky-Kiefer-Wolfowitz: the bound a sample exceeds with probability 0.001.
        assert np.max(np.abs(empirical - cdf(support))) < math.sqrt(math.log(2 / 1e-3) / (2 * n))
    else:
        assert values.dtype == np.float64
        assert scipy.stats.kstest(values, cdf).pvalue > 1e-3
    if isinstance(spec, tuple):
        assert values.min() >= spec[0]
        assert values.max() <= spec[1]


def test_unscrambled_origin_maps_to_finite_values():
    space = Sobol(4, seed=0, scramble=False, z=scipy.stats.norm(), k=scipy.stats.poisson(1))
    first = space[0]
    assert math.isfinite(first["z"])
    assert first["k"] == 0


# --------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        (3, TypeError, "dimension 'x' must be (low, high)"),
        ("ab", TypeError, "dimension 'x' must be (low, high)"),
        ((1, 2, 3, 4), TypeError, "dimension 'x' must be (low, high)"),
        (("a", 2), TypeError, "bounds of dimension 'x' must be numbers"),
        ((2, 2), ValueError, "dimension 'x' needs low < high"),
        ((3, 1), ValueError, "dimension 'x' needs low < high"),
        ((0, float("inf")), ValueError, "bounds of dimension 'x' must be finite"),
        ((0, 1, "log"), ValueError, "log-uniform dimension 'x' needs positive bounds"),
        ((-1, 1, "log"), ValueError, "log-uniform dimension 'x' needs positive bounds"),
        ((1, 2, "lin"), ValueError, "third item of dimension 'x' must be 'log'"),
        (type(scipy.stats.norm), TypeError, "dimension 'x' is the class"),
        (scipy.stats.poisson, TypeError, "distribution of dimension 'x' cannot be evaluated"),
    ],
)
@pytest.mark.parametrize("cls", NODES)
def test_bad_dimensions_are_named(cls, spec, error, words):
    with pytest.raises(error) as info:
        cls(8, seed=0, ok=(0, 1), x=spec)
    assert words in str(info.value)
    assert str(info.value).startswith(cls.__name__)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cls", NODES)
def test_bad_sizes_and_seeds(cls):
    with pytest.raises(ValueError, match="at least 1"):
        cls(0, seed=0, x=(0, 1))
    with pytest.raises(TypeError, match="must be an integer"):
        cls(2.5, seed=0, x=(0, 1))
    with pytest.raises(ValueError, match="non-negative"):
        cls(8, seed=-1, x=(0, 1))
    with pytest.raises(TypeError, match="Generator or RandomState"):
        cls(8, seed=np.random.default_rng(0), x=(0, 1))
    with pytest.raises(ValueError, match="at least one dimension"):
        cls(8, seed=0)


@pytest.mark.parametrize("cls", NODES)
def test_a_key_twice_across_a_product_is_named(cls):
    with pytest.raises(AmbiguousOperationError, match="Key `x` exists in both factors"):
        make(cls, 8, 0, x=(0, 1)) * Param(x=[1, 2])
    with pytest.raises(AmbiguousOperationError, match="Key `y` exists in both factors"):
        make(cls, 8, 0, y=(0, 1)) * make(Random, 4, 0, y=(1, 2))


def test_sobol_size_not_a_power_of_two_warns_what_is_lost():
    with pytest.warns(SamplingWarning, match=r"Sobol\(12, \.\.\.\).*balanced.*use 8 or 16 points"):
        space = Sobol(12, seed=0, x=(0, 1))
    # Drawing from it does not warn again (the pytest config makes warnings errors).
    space.to_arrays(), space.to_arrays(3, 7), space.take([11, 2])
    with pytest.raises(ValueError, match="bits"):
        Sobol(2**31, seed=0, x=(0, 1))
    assert len(Sobol(2**31, seed=0, bits=32, x=(0, 1))[2**31 - 4 :]) == 4


def test_psy_shows_the_sobol_size_warning(tmp_path):
    write(tmp_path / "psy-tasks" / "task_sweep.py", SWEEP.format(n=12, seeds=1))
    listed = psy("list", cwd=tmp_path)
    assert listed.returncode == 0, listed.output
    assert "warning: Sobol(12, ...): Sobol' points are balanced only for a power of two" in (
        listed.stderr
    )


def test_a_missing_seed_is_drawn_and_kept_but_refused_in_a_task():
    space = Random(5, x=(0, 1)) * Param(m=[1, 2]) - Param(m=[3])
    (node,) = unseeded_nodes(space)
    assert not node.seed_given
    assert isinstance(node.seed, int)
    # Kept: the same points after pickling and in its repr.
    again = pickle.loads(pickle.dumps(space))
    assert same_rows(table(again), table(space))
    assert f"seed={node.seed}" in repr(space)
    with pytest.raises(
        ValueError, match=r"Random over x without a seed.*loaded again by every job"
    ):
        check_seeded(space)
    check_seeded(Random(5, seed=1, x=(0, 1)) * Param(m=[1]))


def test_import_psyrun_does_not_import_scipy():
    code = (
        "import sys, psyrun\n"
        "from psyrun import Sobol, Halton, LatinHypercube, Random\n"
        "Random(10, seed=1, x=(0, 1)).to_arrays()\n"
        "assert 'scipy' not in sys.modules, 'scipy imported'\n"
        "Sobol(8, seed=1, x=(0, 1)).to_arrays()\n"
        "assert 'scipy.stats.qmc' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert {"Sobol", "Halton", "LatinHypercube", "Random"} <= set(psyrun.__all__)
    assert issubclass(psyrun.Sobol, SamplingSpace)


# --------------------------------------------------------------------------
# psy run end to end

SWEEP = """
from psyrun import Param, Sobol

pspace = Sobol({n}, seed=7, x=(0, 1), lr=(1e-4, 1e-1, 'log')) * Param(method=['a', 'b']) \\
    * Param(seed=range({seeds}))
max_jobs = 4
min_items = 1


def execute(x, lr, method, seed):
    return {{'y': x * lr + seed}}
"""


def check_exactly_once(tmp_path, space):
    data = load_result(result_path(tmp_path, "sweep"), "pickle")
    keys = space.keys()
    got = sorted(zip(*(data[k].tolist() for k in keys)))
    expected = sorted(table(space))
    assert got == expected, f"{len(got)} rows stored, {len(expected)} in the space"
    assert np.allclose(data["y"], data["x"] * data["lr"] + data["seed"])


def test_psy_run_split_then_continue_after_a_shrink(tmp_path, monkeypatch):
    task = tmp_path / "psy-tasks" / "task_sweep.py"
    write(task, SWEEP.format(n=8, seeds=5))
    run = psy("run", "sweep", cwd=tmp_path)
    assert run.returncode == 0, run.output
    assert run.stdout.count("sweep:process:") == 4, run.output
    space = Sobol(8, seed=7, x=(0, 1), lr=(1e-4, 1e-1, "log")) * Param(method=["a", "b"])
    check_exactly_once(tmp_path, space * Param(seed=range(5)))
    # Shrink the sample and add seeds: -c computes only the new assignments, and
    # the rows of the dropped points are outside the space, not counted.
    write(task, SWEEP.format(n=4, seeds=6))
    cont = psy("run", "-c", "sweep", cwd=tmp_path)
    assert cont.returncode == 0, cont.output
    smaller = Sobol(4, seed=7, x=(0, 1), lr=(1e-4, 1e-1, "log")) * Param(method=["a", "b"])
    status = psy("status", "sweep", cwd=tmp_path)
    assert status_counts(status.stdout) == [(48, 48)], status.output
    from psyrun.results import load_results

    monkeypatch.chdir(tmp_path)
    current = load_results("sweep", only_current=True)
    keys = ["x", "lr", "method", "seed"]
    got = sorted(zip(*(current[k].tolist() for k in keys)))
    assert got == sorted(table(smaller * Param(seed=range(6))))
    stored = load_result(result_path(tmp_path, "sweep"), "pickle")
    assert len(stored["x"]) == 8 * 2 * 5 + 4 * 2  # the old rows kept, 8 new ones


def test_psy_refuses_a_task_whose_sample_has_no_seed(tmp_path):
    write(
        tmp_path / "psy-tasks" / "task_sweep.py",
        SWEEP.format(n=8, seeds=2).replace("seed=7, ", ""),
    )
    run = psy("run", "sweep", cwd=tmp_path)
    assert run.returncode != 0
    assert "Sobol over x, lr without a seed" in run.output
    assert "give it a fixed seed" in run.output
    assert "Traceback" not in run.output
    assert not (tmp_path / "psy-work" / "sweep").exists()
