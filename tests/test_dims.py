"""The dims setting: names for the axes of array outputs, from the task file to the files."""

from __future__ import annotations

import re

import numpy as np
import pytest
from psy_helpers import psy, write_task

from psyrun.dims import check_dims_setting, check_output_dims
from psyrun.results import load_metadata, load_xarray, to_xarray
from psyrun.tasks import load_tasks

HIST_TASK = """
import numpy as np
from psyrun import Param
from psyrun.store import {store}
store = {store}()
pspace = Param(a=[1, 2]) * Param(b=[10, 20, 30])
dims = {dims}
def execute(a, b):
    return {{'s': a + b, 'hist': np.arange(4.0) * a + b, 'img': np.ones((2, 3)) * a}}
"""


def hist_task(project, dims="{'hist': ['bin'], 'img': ['y', 'x_px']}", store="ZarrStore"):
    write_task(project, "hist", HIST_TASK.format(store=store, dims=dims))


# -- the setting, checked when the task loads -----------------------------------------


@pytest.mark.parametrize(
    ("dims", "error", "match"),
    [
        (["bin"], TypeError, "dims must be a dict"),
        ({"hist": "bin"}, TypeError, r"dims\['hist'\] must be a list"),
        ({"hist": [""]}, TypeError, "non-empty str"),
        ({1: ["bin"]}, TypeError, "keyed by output names"),
        ({"a": ["bin"]}, ValueError, "names the parameter 'a'"),
        ({"hist": ["bin", "bin"]}, ValueError, "names an axis twice"),
        ({"hist": ["row"]}, ValueError, "rows' dimension"),
        ({"hist": ["b"]}, ValueError, "like a parameter"),
        ({"hist": ["img"], "img": ["y"]}, ValueError, "like an output"),
    ],
)
def test_bad_settings_are_refused_with_one_line(dims, error, match):
    with pytest.raises(error, match=match) as info:
        check_dims_setting(dims, ["a", "b"])
    assert "\n" not in str(info.value)


def test_good_setting_becomes_lists():
    assert check_dims_setting({"hist": ("bin",)}, ["a"]) == {"hist": ["bin"]}
    assert check_dims_setting(None, ["a"]) == {}


def test_task_with_a_bad_setting_fails_to_load_naming_it(tmp_path):
    hist_task(tmp_path, dims="{'hist': ['a']}")
    tasks = load_tasks(tmp_path / "psy-tasks")
    assert "hist" not in tasks
    assert "like a parameter" in str(tasks.errors[0])
    result = psy("test", "hist", cwd=tmp_path)
    assert result.exit_code != 0
    assert "dims['hist'] names an axis 'a'" in result.output
    assert "Traceback" not in result.output


def test_default_is_empty(tmp_path):
    hist_task(tmp_path, dims="{}")
    assert load_tasks(tmp_path / "psy-tasks")["hist"].dims == {}


# -- against the outputs, by psy test --------------------------------------------------


@pytest.mark.parametrize(
    ("dims", "match"),
    [
        ("{'hst': ['bin']}", r"dims names 'hst', which is not an output of execute"),
        ("{'hist': ['bin', 'more']}", r"gives 2 axis name\(s\).*1-d arrays"),
        ("{'s': ['bin']}", r"values of 's' are scalars"),
        ("{'hist': ['bin'], 'img': ['bin', 'x_px']}", r"axis 'bin' for 'hist' \(length 4\)"),
    ],
)
def test_psy_test_checks_the_setting_against_the_first_row(tmp_path, dims, match):
    hist_task(tmp_path, dims=dims)
    result = psy("test", "hist", cwd=tmp_path)
    assert result.exit_code == 1
    assert "hist: FAILED" in result.output
    assert re.search(match, result.output), result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("result*"))  # psy test writes nothing


def test_psy_test_passes_a_fitting_setting(tmp_path):
    hist_task(tmp_path)
    result = psy("test", "hist", cwd=tmp_path)
    assert result.exit_code == 0, result.output


def test_check_output_dims_refuses_a_name_of_a_column():
    columns = {"a": np.array([1]), "hist": np.zeros((1, 4)), "bin": np.array([0.5])}
    with pytest.raises(ValueError, match="like a column"):
        check_output_dims({"hist": ["bin"]}, columns, ["a"])


# -- to the files and back -------------------------------------------------------------


def test_to_xarray_names_the_value_axes():
    data = {"a": np.array([1, 2]), "hist": np.zeros((2, 4)), "t": np.zeros((2, 3))}
    ds = to_xarray(data, dims=["a"], array_dims={"hist": ["bin"]})
    assert ds["hist"].dims == ("a", "bin")
    assert ds["t"].dims == ("a", "t_dim_0")
    with pytest.raises(ValueError, match=r"dims\['hist'\] gives 2 axis name"):
        to_xarray(data, dims=["a"], array_dims={"hist": ["bin", "x"]})


def test_dims_end_to_end_through_psy_run(tmp_path, monkeypatch):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("zarr")
    hist_task(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = psy("run", "hist")
    assert result.exit_code == 0, result.output
    dims = {"hist": ["bin"], "img": ["y", "x_px"]}
    assert load_metadata("hist")["dims"] == dims
    ds = load_xarray("hist")
    assert ds["hist"].dims == ("a", "b", "bin")
    assert ds["img"].dims == ("a", "b", "y", "x_px")
    assert ds["hist"].sel(a=2, b=30).values.tolist() == [30.0, 32.0, 34.0, 36.0]
    raw = xr.open_zarr(tmp_path / "psy-work" / "hist" / "result.zarr")
    assert raw["hist"].dims == ("row", "bin")
    assert raw["img"].dims == ("row", "y", "x_px")
    assert raw["s"].dims == ("row",)
    assert raw.sizes["row"] == 6
    assert raw.attrs["psyrun_metadata"]["dims"] == dims


def test_provenance_carries_the_dims_only_when_set(tmp_path):
    from psyrun.results.provenance import collect

    hist_task(tmp_path)
    task = load_tasks(tmp_path / "psy-tasks")["hist"]
    assert collect(task)["dims"] == {"hist": ["bin"], "img": ["y", "x_px"]}
    hist_task(tmp_path, dims="{}")
    assert "dims" not in collect(load_tasks(tmp_path / "psy-tasks")["hist"])


def test_the_h5_store_gets_the_dims_in_its_metadata(tmp_path, monkeypatch):
    # The HDF5 layout names its axes from the metadata: the run must hand them over.
    pytest.importorskip("tables")
    hist_task(tmp_path, dims="{'hist': ['bin']}", store="H5Store")
    monkeypatch.chdir(tmp_path)
    result = psy("run", "hist")
    assert result.exit_code == 0, result.output
    assert load_metadata("hist")["dims"] == {"hist": ["bin"]}
    assert load_xarray("hist")["hist"].dims == ("a", "b", "bin")
