from __future__ import annotations

import doctest
import sys

import numpy as np
import pytest

import psyrun.results.load
from psyrun import Param
from psyrun.mapper import map_pspace
from psyrun.results import (
    load_dataframe,
    load_results,
    load_xarray,
    to_dataframe,
    to_xarray,
)
from psyrun.store import NpzStore, PickleStore

pd = pytest.importorskip("pandas")
xr = pytest.importorskip("xarray")


def add(a, b):
    return {"s": a + b}


# --- to_dataframe -------------------------------------------------------------


def test_to_dataframe_one_row_per_assignment():
    data = map_pspace(add, Param(a=[1, 2]) * Param(b=[10, 20]))
    df = to_dataframe(data)
    assert list(df.columns) == ["a", "b", "s"]
    assert df["s"].tolist() == [11, 21, 12, 22]
    assert df.loc[2, "a"] == 2


def test_to_dataframe_keeps_array_outputs_as_one_array_per_row():
    data = {"x": np.array([1, 2]), "trace": np.arange(6.0).reshape(2, 3)}
    df = to_dataframe(data)
    assert df["trace"].dtype == object
    np.testing.assert_array_equal(df.loc[1, "trace"], [3.0, 4.0, 5.0])


def test_to_dataframe_rejects_columns_of_different_length():
    with pytest.raises(ValueError, match="different lengths"):
        to_dataframe({"a": [1, 2], "b": [1]})


@pytest.mark.parametrize(
    ("module", "func", "args"),
    [
        ("pandas", to_dataframe, ({"a": [1]},)),
        ("xarray", to_xarray, ({"a": [1]}, ["a"])),
    ],
)
def test_missing_optional_library_names_the_extra(monkeypatch, module, func, args):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=r'pip install "psyrun\[analysis\]"'):
        func(*args)


def test_importing_psyrun_results_does_not_import_pandas_or_xarray():
    code = "import sys, psyrun.results; print(any(m in sys.modules for m in ('pandas', 'xarray')))"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- to_xarray ----------------------------------------------------------------


def test_to_xarray_full_grid_keeps_dtypes():
    space = Param(a=[1, 2]) * Param(b=[10, 20, 30])
    ds = to_xarray(map_pspace(add, space), pspace=space)
    assert dict(ds.sizes) == {"a": 2, "b": 3}
    assert ds["a"].values.tolist() == [1, 2]
    assert ds["b"].values.tolist() == [10, 20, 30]
    assert ds["s"].dtype.kind == "i"
    assert ds["s"].sel(a=2, b=30).item() == 32


def test_to_xarray_missing_assignments_are_nan():
    space = Param(a=[1, 2]) * Param(b=[10, 20, 30])
    data = map_pspace(add, space[::2])  # rows 0, 2 and 4
    ds = to_xarray(data, pspace=space)
    np.testing.assert_array_equal(ds["s"].values, [[11.0, np.nan, 31.0], [np.nan, 22.0, np.nan]])


def test_to_xarray_coordinates_come_from_the_space_even_without_any_result():
    space = Param(a=[1, 2, 3]) * Param(b=[10, 20])
    data = map_pspace(add, space[:2])  # only a == 1 evaluated
    ds = to_xarray(data, pspace=space)
    assert ds["a"].values.tolist() == [1, 2, 3]
    assert np.isnan(ds["s"].sel(a=3).values).all()


def test_to_xarray_without_pspace_uses_the_values_present():
    data = {"a": [2, 1, 2], "b": ["x", "x", "y"], "out": [0.5, 0.25, 0.75]}
    ds = to_xarray(data, dims=["a", "b"])
    assert ds["a"].values.tolist() == [1, 2]
    assert ds["b"].values.tolist() == ["x", "y"]
    np.testing.assert_array_equal(ds["out"].values, [[0.25, np.nan], [0.5, 0.75]])


def test_to_xarray_string_outputs_are_nan_in_missing_cells():
    data = {"a": [1, 2, 3], "b": [1, 1, 2], "label": ["p", "q", "r"]}
    ds = to_xarray(data, dims=["a", "b"])
    assert ds["label"].sel(a=1, b=1).item() == "p"
    assert ds["label"].sel(a=3, b=2).item() == "r"
    assert np.isnan(ds["label"].sel(a=1, b=2).item())


def test_to_xarray_array_outputs_get_extra_dimensions():
    space = Param(a=[1, 2])
    data = map_pspace(lambda a: {"v": np.full(3, a)}, space)
    ds = to_xarray(data, pspace=space)
    assert ds["v"].dims == ("a", "v_dim_0")
    assert ds["v"].values.tolist() == [[1, 1, 1], [2, 2, 2]]


def test_to_xarray_with_dims_drops_a_parameter_that_varies_with_another():
    space = Param(a=[1, 2], label=["one", "two"]) * Param(b=[3, 4])
    data = map_pspace(lambda a, label, b: {"p": a * b}, space)
    with pytest.raises(ValueError, match="no grid structure"):
        to_xarray(data, pspace=space)
    ds = to_xarray(data, dims=["a", "b"], pspace=space)
    assert ds["label"].sel(a=2, b=3).item() == "two"
    assert ds["p"].sel(a=2, b=4).item() == 8


# --- spaces that are not full products: holes, and no grid at all -------------------

CORNER_SPACE = (
    Param(theta=[0.1, 0.2, 0.3]) * Param(sigma=[1, 2, 3]) - Param(theta=[0.3], sigma=[3])
) * Param(seed=[0, 1])


def outputs(theta, sigma, seed):
    return {
        "y": theta * sigma + seed,
        "n": sigma * 10,
        "big": 2**60 + sigma,
        "ok": sigma > 1,
        "label": f"s{sigma}",
    }


def test_to_xarray_with_dims_fills_the_cells_a_space_lacks_with_nan():
    data = map_pspace(outputs, CORNER_SPACE)
    ds = to_xarray(data, dims=["theta", "sigma", "seed"], pspace=CORNER_SPACE)
    assert dict(ds.sizes) == {"theta": 3, "sigma": 3, "seed": 2}
    lacking = np.zeros((3, 3, 2), dtype=bool)
    lacking[2, 2, :] = True  # theta 0.3, sigma 3: the corner taken out
    assert np.isnan(ds["y"].values[lacking]).all()
    assert not np.isnan(ds["y"].values[~lacking]).any()
    for row in map(dict, zip(*[[(k, v) for v in data[k]] for k in data])):
        cell = ds.sel(theta=row["theta"], sigma=row["sigma"], seed=row["seed"])
        assert cell["y"].item() == row["y"]
        assert cell["label"].item() == row["label"]
        assert cell["big"].item() == row["big"]


def test_columns_with_holes_get_a_missing_mark_their_values_survive():
    ds = to_xarray(map_pspace(outputs, CORNER_SPACE), dims=["theta", "sigma", "seed"],
                   pspace=CORNER_SPACE)  # fmt: skip
    corner = {"theta": 0.3, "sigma": 3, "seed": 0}
    # Integers and booleans exact as floats: float64 with NaN, as pandas does.
    assert ds["n"].dtype == np.float64
    assert ds["ok"].dtype == np.float64
    assert ds["ok"].sel(theta=0.1, sigma=2, seed=0).item() == 1.0
    # Integers a float would round: their exact values in an object array.
    assert ds["big"].dtype == object
    assert ds["big"].sel(theta=0.1, sigma=1, seed=0).item() == 2**60 + 1
    # Strings: an object array; NaN is the mark (not the text 'nan').
    assert ds["label"].dtype == object
    for key in ("n", "ok", "big", "label"):
        assert np.isnan(ds[key].sel(**corner).item()), key


def test_a_full_space_keeps_integer_dtypes_even_with_dims():
    space = Param(a=[1, 2]) * Param(b=[3, 4])
    ds = to_xarray(map_pspace(lambda a, b: {"n": a * b}, space), dims=["a", "b"], pspace=space)
    assert ds["n"].dtype.kind == "i"


def test_without_dims_a_space_with_holes_is_refused_naming_the_way_out():
    data = map_pspace(outputs, CORNER_SPACE)
    with pytest.raises(ValueError, match="not a Cartesian product") as err:
        to_xarray(data, pspace=CORNER_SPACE)
    message = str(err.value)
    assert "16 of the 18 combinations" in message
    assert "dims=['theta', 'sigma', 'seed']" in message
    assert "2 cells" in message


def test_a_sum_of_grids_is_a_grid_with_holes():
    space = Param(a=[1, 2]) * Param(b=[1, 2]) + Param(a=[3, 4]) * Param(b=[3, 4])
    ds = to_xarray(map_pspace(add, space), dims=["a", "b"], pspace=space)
    assert np.isnan(ds["s"].sel(a=1, b=3).item())
    assert ds["s"].sel(a=4, b=3).item() == 7


def test_a_space_without_grid_structure_is_refused_pointing_to_dataframes():
    """Points of a random design: each a goes with one b; their grid would be mostly empty."""
    rng = np.random.default_rng(0)
    design = Param(a=rng.random(20), b=rng.random(20)) * Param(seed=[0, 1, 2])
    data = map_pspace(lambda a, b, seed: {"y": a + b + seed}, design)
    for dims in (None, ["a", "b", "seed"]):
        with pytest.raises(ValueError, match="no grid structure") as err:
            to_xarray(data, dims=dims, pspace=design)
        assert "load_dataframe()" in str(err.value)
        assert "dims=['a', 'seed']" in str(err.value)
    # The suggested dims do form a grid: b becomes a data variable.
    ds = to_xarray(data, dims=["a", "seed"], pspace=design)
    assert dict(ds.sizes) == {"a": 20, "seed": 3}
    assert not np.isnan(ds["b"].values).any()


def test_a_nearly_empty_grid_is_refused_before_it_fills_the_memory():
    """Blocks of distinct values: no dim determines another, but the grid is mostly NaN."""
    blocks = [Param(a=[10 * i, 10 * i + 1]) * Param(b=[10 * i, 10 * i + 1]) for i in range(120)]
    space = blocks[0]
    for block in blocks[1:]:
        space = space + block
    space = space * Param(c=list(range(80)))
    data = map_pspace(lambda a, b, c: {"y": a + b + c}, space)
    with pytest.raises(ValueError, match=r"no grid structure.*38400 of its 4608000 cells"):
        to_xarray(data, dims=["a", "b", "c"], pspace=space)
    # A few blocks make a grid with holes.
    few = (blocks[0] + blocks[1]) * Param(c=[0, 1])
    ds = to_xarray(map_pspace(lambda a, b, c: {"y": a}, few), dims=["a", "b", "c"], pspace=few)
    assert np.isnan(ds["y"].values).sum() == 16


def test_a_one_dimensional_design_is_a_grid():
    design = Param(a=np.random.default_rng(1).random(10))
    ds = to_xarray(map_pspace(lambda a: {"y": 2 * a}, design), pspace=design)
    np.testing.assert_allclose(ds["y"].values, 2 * ds["a"].values)


def test_to_xarray_rejects_rows_sharing_an_assignment():
    data = {"a": [1, 2, 1], "y": [0, 1, 2]}
    with pytest.raises(ValueError, match=r"rows 0 and 2 share the assignment \{'a': 1\}"):
        to_xarray(data, dims=["a"])


def test_to_xarray_needs_dims_or_pspace():
    with pytest.raises(ValueError, match="dims="):
        to_xarray({"a": [1]})


def test_to_xarray_unknown_dimension_lists_the_columns():
    with pytest.raises(ValueError, match=r"\['c'\] are not columns.*\['a', 'y'\]"):
        to_xarray({"a": [1], "y": [2]}, dims=["c"])


def test_to_xarray_nan_parameter_of_a_concatenation():
    space = Param(a=[1, 2]) + Param(a=[3], b=[0.5])
    data = map_pspace(lambda a, b=None: {"y": a}, space)
    ds = to_xarray(data, dims=["a"])
    assert ds["y"].values.tolist() == [1, 2, 3]
    assert np.isnan(ds["b"].sel(a=1).item())


def test_module_examples():
    result = doctest.testmod(psyrun.results.load, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# --- loading a task's results ------------------------------------------------------


def write_task(taskdir, name, body):
    taskdir.mkdir(exist_ok=True)
    (taskdir / f"task_{name}.py").write_text(body, encoding="utf-8")


GRID_TASK = """
from psyrun import Param
from psyrun.store.npz import NpzStore

pspace = Param(a=[1, 2]) * Param(b=[10, 20, 30])
store = NpzStore()

def execute(a, b):
    return {'s': a + b}
"""


@pytest.fixture
def grid_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_task(tmp_path / "psy-tasks", "grid", GRID_TASK)
    return tmp_path


def test_load_results_reads_the_tasks_result_file_with_its_store(grid_task):
    space = Param(a=[1, 2]) * Param(b=[10, 20, 30])
    resultfile = grid_task / "psy-work" / "grid" / "result.npz"
    resultfile.parent.mkdir(parents=True)
    NpzStore().save(str(resultfile), map_pspace(add, space[:4]))

    data = load_results("grid")
    assert data["s"].tolist() == [11, 21, 31, 12]
    assert load_dataframe("grid").shape == (4, 3)
    ds = load_xarray("grid")
    np.testing.assert_array_equal(ds["s"].values, [[11, 21, 31], [12, np.nan, np.nan]])


def test_load_results_before_the_task_ran_says_what_to_do(grid_task):
    with pytest.raises(FileNotFoundError, match="psy run grid"):
        load_results("grid")


def test_load_results_unknown_task_lists_the_tasks(grid_task):
    with pytest.raises(KeyError, match=r"no task 'gird'.*\['grid'\]"):
        load_results("gird")


def test_load_results_missing_task_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results("grid", taskdir=tmp_path / "nowhere")


def test_load_results_task_file_that_fails_to_load(tmp_path):
    write_task(tmp_path / "tasks", "broken", "raise RuntimeError('boom')\n")
    with pytest.raises(RuntimeError, match=r"failed to load.*boom"):
        load_results("broken", taskdir=tmp_path / "tasks")


def test_load_results_honours_resultfile_setting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_task(
        tmp_path / "psy-tasks",
        "custom",
        "from psyrun import Param\npspace = Param(x=[1, 2])\nresultfile = 'out/custom.pkl'\n"
        "def execute(x):\n    return {'y': x}\n",
    )
    (tmp_path / "out").mkdir()
    PickleStore().save(str(tmp_path / "out" / "custom.pkl"), {"x": [1, 2], "y": [1, 2]})
    assert load_results("custom")["y"].tolist() == [1, 2]


@pytest.mark.slow
def test_psy_run_then_load_xarray(grid_task):
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", "from psyrun.cli import main; main()", "run"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ds = load_xarray("grid")
    assert ds["s"].values.tolist() == [[11, 21, 31], [12, 22, 32]]


CORNER_TASK = """
from psyrun import Param

pspace = (
    Param(theta=[0.1, 0.2, 0.3]) * Param(sigma=[1, 2, 3]) - Param(theta=[0.3], sigma=[3])
) * Param(seed=[0, 1])
max_jobs = 3


def execute(theta, sigma, seed):
    if theta == 0.2 and sigma == 2:
        raise ValueError("diverged")
    return {"y": theta * sigma + seed, "n": sigma * 10}
"""


def test_a_task_space_with_holes_in_psy_status_missing_and_load_xarray(tmp_path, monkeypatch):
    """Cells outside the space and failed rows are NaN; status lists only the failed ones."""
    from psy_helpers import psy

    from psyrun import missing

    monkeypatch.chdir(tmp_path)
    write_task(tmp_path / "psy-tasks", "corner", CORNER_TASK)
    run = psy("run", "corner")
    assert "diverged" in run.output

    status = psy("status", "-v", "corner")
    assert "14 out of 16 rows" in status.stdout, status.output
    listed = [line.strip() for line in status.stdout.splitlines() if line.strip().startswith("{")]
    assert listed == [
        "{'theta': 0.2, 'sigma': 2, 'seed': 0}",
        "{'theta': 0.2, 'sigma': 2, 'seed': 1}",
    ]

    from psyrun.tasks import load_tasks

    space = load_tasks("psy-tasks")["corner"].pspace
    assert missing(space, load_results("corner")).build() == {
        "theta": [0.2, 0.2],
        "sigma": [2, 2],
        "seed": [0, 1],
    }

    with pytest.raises(ValueError, match=r"dims=\['theta', 'sigma', 'seed'\]"):
        load_xarray("corner")
    ds = load_xarray("corner", dims=["theta", "sigma", "seed"])
    nan_cells = {
        (t.item(), s.item(), e.item())
        for t in ds.theta
        for s in ds.sigma
        for e in ds.seed
        if np.isnan(ds["y"].sel(theta=t, sigma=s, seed=e).item())
    }
    assert nan_cells == {(0.2, 2, 0), (0.2, 2, 1), (0.3, 3, 0), (0.3, 3, 1)}
    assert ds["n"].sel(theta=0.1, sigma=3, seed=1).item() == 30
    assert ds.attrs["task"] == "corner"


def test_the_results_package_names_exactly_what_load_defines():
    # psyrun.results lists its names without importing load (a lazy facade).
    import psyrun.results

    assert psyrun.results.__all__ == psyrun.results.load.__all__
    assert all(
        getattr(psyrun.results, name) is getattr(psyrun.results.load, name)
        for name in psyrun.results.__all__
    )
