"""Loading task files: settings, defaults, psy-conf.py, errors and typo warnings."""

from __future__ import annotations

import os
import sys
import textwrap
import types

import pytest
from psy_helpers import psy, write_task

from psyrun.backend import DistributeBackend, LoadBalancingBackend
from psyrun.pspace import Param
from psyrun.run import defaults
from psyrun.scheduler import ImmediateRun
from psyrun.store import H5Store, PickleStore, get_store
from psyrun.tasks import (
    SETTINGS,
    Config,
    TaskConfigWarning,
    TaskDef,
    TaskDirError,
    get_task,
    load_tasks,
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """
from psyrun import Param
pspace = Param(x=[1, 2, 3])
def execute(x):
    return {'y': x * 2}
"""


def test_config_defaults_are_those_of_psyrun_08(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = Config()
    assert isinstance(c.pspace, Param)
    assert len(c.pspace) == 0
    assert c.execute is None
    assert c.setup is None
    assert isinstance(c.store, PickleStore)
    # The defaults that name other parts of psyrun are resolved by psyrun.run.defaults.
    assert c.backend is None
    assert c.scheduler is None
    task = types.SimpleNamespace(config=c)
    assert defaults.backend_class(task) is DistributeBackend
    assert isinstance(defaults.scheduler_for(task), ImmediateRun)
    assert defaults.scheduler_for(task) is defaults.scheduler_for(task)
    assert c.scheduler_args == {}
    assert c.max_jobs == 100
    assert c.min_items == 1
    assert c.pool_size == 1
    assert c.workdir == "psy-work"  # relative to where psy starts; tasks make it absolute
    assert c.resultfile is None
    assert c.exclude_from_result == []
    assert c.file_dep == []
    assert c.overwrite_dirty is True
    assert c.python == sys.executable


def test_every_setting_is_documented_in_config():
    for name in SETTINGS:
        assert f"{name} :" in Config.__doc__, name


def test_config_rejects_unknown_setting_with_suggestion():
    with pytest.raises(AttributeError, match="did you mean 'max_jobs'"):
        Config(max_job=3)


def test_load_task_settings_and_derived_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path / "tasks" / "task_one.py",
        MINIMAL
        + """
from psyrun.store import H5Store
from psyrun.backend import LoadBalancingBackend
store = H5Store            # a class is instantiated
backend = LoadBalancingBackend
max_jobs = 7
workdir = 'w'
file_dep = 'data.txt'
""",
    )
    tasks = load_tasks(tmp_path / "tasks")
    assert list(tasks) == ["one"]
    t = tasks["one"]
    assert t.name == "one"
    assert isinstance(t.store, H5Store)
    assert t.backend is LoadBalancingBackend
    assert t.max_jobs == 7
    assert t.workdir == str(tmp_path / "w")
    assert t.resultfile == str(tmp_path / "w" / "one" / "result.h5")
    assert t.file_dep == [str(tmp_path / "data.txt")]
    assert t.execute(x=2) == {"y": 4}


def test_psy_conf_provides_defaults_task_overrides(tmp_path):
    write(tmp_path / "psy-conf.py", "max_jobs = 3\nmin_items = 5\n")
    write(tmp_path / "task_a.py", MINIMAL + "max_jobs = 9\n")
    write(tmp_path / "task_b.py", MINIMAL)
    tasks = load_tasks(tmp_path)
    assert (tasks["a"].max_jobs, tasks["a"].min_items) == (9, 5)
    assert (tasks["b"].max_jobs, tasks["b"].min_items) == (3, 5)
    assert str(tmp_path / "psy-conf.py") in tasks["a"].dependencies


def test_broken_task_file_is_reported_and_others_load(tmp_path):
    write(tmp_path / "task_good.py", MINIMAL)
    write(tmp_path / "task_bad.py", "import numpy\nx = 1 / 0\n")
    write(tmp_path / "task_noexec.py", "from psyrun import Param\npspace = Param(x=[1])\n")
    write(tmp_path / "task_syntax.py", "def execute(:\n")
    tasks = load_tasks(tmp_path)
    assert list(tasks) == ["good"]
    errors = {os.path.basename(e.path): e.message for e in tasks.errors}
    assert set(errors) == {"task_bad.py", "task_noexec.py", "task_syntax.py"}
    assert "ZeroDivisionError (line 2)" in errors["task_bad.py"]
    assert "execute" in errors["task_noexec.py"]
    assert "SyntaxError" in errors["task_syntax.py"]
    assert str(tmp_path / "task_bad.py") in str(tasks.errors[0]) or any(
        str(tmp_path) in str(e) for e in tasks.errors
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("max_jobs = 0", "max_jobs must be a positive integer"),
        ("min_items = 'a'", "min_items must be a positive integer"),
        ("pspace = {'x': [1]}", "pspace must be a parameter space"),
        ("backend = 3", "backend must be a backend class"),
    ],
)
def test_invalid_settings_are_load_errors(tmp_path, setting, message):
    write(tmp_path / "task_t.py", MINIMAL + setting + "\n")
    tasks = load_tasks(tmp_path)
    assert not tasks
    assert message in tasks.errors[0].message


def test_typo_of_a_setting_is_warned_about(tmp_path):
    write(
        tmp_path / "task_t.py",
        MINIMAL
        + "from psyrun.scheduler import Scheduler\nimport numpy as np\n"
        + "max_job = 4\nschedular_args = {}\nhelper = 3\n",
    )
    with pytest.warns(TaskConfigWarning) as record:
        tasks = load_tasks(tmp_path)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2, messages
    assert "'max_job'" in messages[0]
    assert "did you mean 'max_jobs'" in messages[0]
    assert "did you mean 'scheduler_args'" in messages[1]
    assert tasks["t"].max_jobs == 100


def test_missing_task_directory(tmp_path):
    with pytest.raises(TaskDirError, match="does not exist"):
        load_tasks(tmp_path / "nope")


def test_task_file_name_must_follow_scheme(tmp_path):
    path = write(tmp_path / "other.py", MINIMAL)
    with pytest.raises(ValueError, match=r"task_<name>\.py"):
        TaskDef.load(path)


def test_get_task_reuses_until_file_changes(tmp_path):
    path = write(tmp_path / "task_t.py", MINIMAL)
    first = load_tasks(tmp_path)["t"]
    assert get_task(path) is first
    write(path, MINIMAL + "max_jobs = 2\n")
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    again = get_task(path)
    assert again is not first
    assert again.max_jobs == 2


def test_task_can_import_helper_module_next_to_it(tmp_path):
    write(tmp_path / "helpers_for_tt.py", "def f(x):\n    return {'z': x + 1}\n")
    write(
        tmp_path / "task_tt.py",
        "from psyrun import Param\nfrom helpers_for_tt import f as execute\n"
        "pspace = Param(x=[1])\n",
    )
    assert load_tasks(tmp_path)["tt"].execute(x=1) == {"z": 2}


# -- settings psy warns about, awkward task names and paths ------------------------------


SQUARE = """
from psyrun import Param
pspace = Param(x=range(12))
max_jobs = 3
def execute(x):
    return {'y': x * x}
"""


def test_resultfile_whose_extension_does_not_match_the_store_is_warned_about(project):
    write_task(project, "square", SQUARE + "resultfile = 'out/square.npz'\n")
    result = psy("list")
    assert result.exit_code == 0
    assert "resultfile 'square.npz' does not end in '.pkl'" in result.output
    write_task(
        project,
        "square",
        SQUARE + "from psyrun.store import NpzStore\nstore = NpzStore()\n"
        "resultfile = 'out/square.npz'\n",
    )
    assert "resultfile" not in psy("list").output


def test_pool_size_with_distribute_backend_is_warned_about(project):
    write_task(project, "pool", SQUARE + "pool_size = 4\n")
    result = psy("list")
    assert result.exit_code == 0
    assert "pool_size = 4 is used only by LoadBalancingBackend" in result.output
    write_task(
        project,
        "pool",
        SQUARE + "from psyrun.backend import LoadBalancingBackend\n"
        "backend = LoadBalancingBackend\npool_size = 2\n",
    )
    assert "pool_size" not in psy("list").output


def test_task_names_with_dashes_dots_and_paths_with_spaces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    taskdir = tmp_path / "my tasks"
    taskdir.mkdir()
    for name in ("my-task", "my_task", "my.task"):
        (taskdir / f"task_{name}.py").write_text(
            textwrap.dedent(
                f"""
                from psyrun import Param
                pspace = Param(a=[1, 2, 3])
                workdir = 'work dir/with space'
                resultfile = 'not yet/sub dir/{name}.pkl'
                def execute(a):
                    return {{'y': a}}
                """
            )
        )
    result = psy("run", "--taskdir", str(taskdir))
    assert result.exit_code == 0, result.output
    for name in ("my-task", "my_task", "my.task"):
        data = get_store(".pkl").load(str(tmp_path / "not yet" / "sub dir" / f"{name}.pkl"))
        assert data["y"].tolist() == [1, 2, 3]
    assert psy("clean", "--taskdir", str(taskdir), "my.task").exit_code == 0
    status = psy("status", "--taskdir", str(taskdir)).output
    assert "my.task: 0 out of 3 rows completed" in status
    assert "my-task: 3 out of 3 rows completed" in status
