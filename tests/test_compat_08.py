"""The modules and names of psyrun 0.8's API reference, and how they behave now."""

from __future__ import annotations

import importlib
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import psyrun

ROOT = Path(__file__).resolve().parent.parent
MIGRATION_PAGE = (ROOT / "docs" / "coming-from-0.8.rst").read_text(encoding="utf-8")

#: Every public name of psyrun 0.8's API reference, by module.
NAMES_08 = {
    "psyrun": [
        "DistributeBackend",
        "LoadBalancingBackend",
        "map_pspace",
        "map_pspace_parallel",
        "map_pspace_hdd_backed",
        "Param",
        "ImmediateRun",
        "Sqsub",
        "DefaultStore",
        "PickleStore",
        "__version__",
    ],
    "psyrun.backend": ["DistributeBackend", "LoadBalancingBackend"],
    "psyrun.backend.base": ["Backend", "JobSourceFile"],
    "psyrun.backend.distribute": ["DistributeBackend", "Splitter", "Worker"],
    "psyrun.backend.load_balancing": ["LoadBalancingBackend", "LoadBalancingWorker"],
    "psyrun.exceptions": [
        "TaskWarning",
        "JobsRunningWarning",
        "TaskWorkdirDirtyWarning",
        "IneffectiveExcludeWarning",
    ],
    "psyrun.mapper": ["get_result", "map_pspace", "map_pspace_hdd_backed", "map_pspace_parallel"],
    "psyrun.pspace": [
        "dict_concat",
        "ParameterSpace",
        "Param",
        "Difference",
        "Product",
        "Sum",
        "missing",
        "AmbiguousOperationError",
    ],
    "psyrun.scheduler": [
        "JobStatus",
        "Scheduler",
        "ImmediateRun",
        "ExternalScheduler",
        "Sqsub",
        "Slurm",
    ],
    "psyrun.store": ["AutodetectStore", "DefaultStore", "PickleStore"],
    "psyrun.store.base": ["Store", "AutodetectStore"],
    "psyrun.store.h5": ["H5Store"],
    "psyrun.store.npz": ["NpzStore"],
    "psyrun.store.pickle": ["PickleStore"],
    "psyrun.store.np_shape": ["min_shape", "match_shape"],
    "psyrun.tasks": ["TaskDef", "Config", "PackageLoader"],
    "psyrun.main": [
        "psy_main",
        "commands",
        "Command",
        "TaskdirCmd",
        "TaskselCmd",
        "RunCmd",
        "CleanCmd",
        "KillCmd",
        "ListCmd",
        "MergeCmd",
        "NewTaskCmd",
        "StatusCmd",
        "TestCmd",
    ],
    "psyrun.jobs": [
        "Job",
        "JobArray",
        "JobChain",
        "JobGroup",
        "JobTreeVisitor",
        "Submit",
        "Clean",
        "Fullname",
        "Uptodate",
    ],
    "psyrun.utils.doc": ["inherit_docs"],
    "psyrun.utils.example": ["square"],
    "psyrun.utils.testing": ["MockScheduler", "taskenv"],
    "psyrun.utils.venv": ["init_virtualenv"],
    "psyrun.version": ["version"],
}

#: Modules of the 0.8 API reference (and task files) that must import.
MODULES_KEPT = [
    "psyrun",
    "psyrun.backend",
    "psyrun.backend.base",
    "psyrun.backend.distribute",
    "psyrun.backend.load_balancing",
    "psyrun.exceptions",
    "psyrun.jobs",
    "psyrun.main",
    "psyrun.mapper",
    "psyrun.pspace",
    "psyrun.scheduler",
    "psyrun.store",
    "psyrun.store.base",
    "psyrun.store.h5",
    "psyrun.store.npz",
    "psyrun.store.pickle",
    "psyrun.tasks",
    "psyrun.utils",
    "psyrun.utils.example",
]


def _listed_as_gone(page: str) -> set[str]:
    """Names in the first column of the migration page's "without a counterpart" table."""
    table = page.split("Names without a counterpart", 1)[1]
    rows = table.split("\n   * - ")[2:]  # [0]: before the table, [1]: the header row
    return {
        name
        for row in rows
        for name in re.findall(r"``(psyrun(?:\.\w+)+)``", row.split("\n     - ")[0])
    }


LISTED = _listed_as_gone(MIGRATION_PAGE)


@pytest.mark.parametrize("module", MODULES_KEPT)
def test_module_of_the_08_api_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize(
    ("module", "name"), [(m, n) for m, names in NAMES_08.items() for n in names]
)
def test_every_08_name_imports_or_is_listed_on_the_migration_page(module, name):
    try:
        found = hasattr(importlib.import_module(module), name)
    except ModuleNotFoundError:
        found = False
    if found:
        return
    qualified = f"{module}.{name}"
    assert qualified in LISTED, (
        f"{qualified} neither imports nor is listed in docs/coming-from-0.8.rst"
    )


def test_names_listed_as_gone_are_really_gone():
    # A name the page calls gone but that imports would mislead readers.
    gone = [
        (m, n)
        for m, names in NAMES_08.items()
        for n in names
        if f"{m}.{n}" in LISTED and f"{m}.{n}" != "psyrun.jobs.Job"  # kept, changed
    ]
    assert len(gone) > 30
    for module, name in gone:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        assert not hasattr(mod, name), f"{module}.{name} imports but is listed as gone"


def test_aliases_are_the_same_objects():
    from psyrun.backend import DistributeBackend, LoadBalancingBackend, distribute, load_balancing

    assert load_balancing.LoadBalancingBackend is LoadBalancingBackend
    assert distribute.DistributeBackend is DistributeBackend
    from psyrun import exceptions, tasks

    assert tasks.TaskConfigWarning is exceptions.TaskConfigWarning
    assert exceptions.TaskDirError is tasks.TaskDirError
    assert exceptions.AmbiguousOperationError is psyrun.AmbiguousOperationError
    from psyrun.scheduler import SchedulerError

    assert exceptions.SchedulerError is SchedulerError
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        exceptions.Nope  # noqa: B018


# ---------------------------------------------------------------------------
# psyrun.pspace.dict_concat


def test_dict_concat_as_08_documents():
    from psyrun.pspace import dict_concat

    assert dict_concat(({"a": 0, "b": 0}, {"a": 1})) == {"a": [0, 1], "b": [0, None]}
    # Keys in order of first appearance; values are not concatenated but listed.
    out = dict_concat([{"b": [1, 2]}, {"a": "x"}, {"b": 3, "c": None}])
    assert list(out) == ["b", "a", "c"]
    assert out == {"b": [[1, 2], None, 3], "a": [None, "x", None], "c": [None, None, None]}
    assert dict_concat([]) == {}
    assert dict_concat(iter([{"a": 1}, {}])) == {"a": [1, None]}


def test_dict_concat_fill_marks_missing_values():
    from psyrun.pspace import dict_concat

    out = dict_concat([{"a": 1.5}, {"b": 2}], fill=math.nan)
    assert out["a"][0] == 1.5
    assert math.isnan(out["a"][1])
    assert math.isnan(out["b"][0])
    assert out["b"][1] == 2


def test_dict_concat_rows_build_the_same_space():
    from psyrun import Param
    from psyrun.pspace import dict_concat

    space = Param(a=[1, 2]) * Param(b=["u", "v"])
    assert Param(**dict_concat(space.iterate())).build() == space.build()


# ---------------------------------------------------------------------------
# psyrun.mapper.get_result (0.8's documented example)


def test_get_result_combines_parameters_and_outputs():
    from psyrun.mapper import OutputKeyError, get_result

    def fn(x):
        return {"y": x * x}

    assert get_result(fn, {"x": 4}) == {"x": 4, "y": 16}
    assert get_result(fn, {"x": 2}, exclude=["y"]) == {"x": 2}

    # 0.8 let an output overwrite a parameter; that silently lost the parameter
    # column, so it is an error now (the migration page says to rename).
    def overwrites(x, is_result):
        return {"y": x * x, "is_result": 1}

    with pytest.raises(OutputKeyError, match="is_result"):
        get_result(overwrites, {"x": 4, "is_result": 0})


# ---------------------------------------------------------------------------
# psyrun.exceptions


@pytest.mark.parametrize(
    "name",
    [
        "TaskWarning",
        "TaskConfigWarning",
        "JobsRunningWarning",
        "TaskWorkdirDirtyWarning",
        "IneffectiveExcludeWarning",
    ],
)
def test_exceptions_are_user_warnings(name):
    from psyrun import exceptions

    cls = getattr(exceptions, name)
    assert issubclass(cls, UserWarning)


def test_task_warnings_carry_the_task_name():
    from psyrun.exceptions import JobsRunningWarning, TaskWarning, TaskWorkdirDirtyWarning

    for cls in (JobsRunningWarning, TaskWorkdirDirtyWarning):
        w = cls("square")
        assert isinstance(w, TaskWarning)
        assert w.task_name == "square"
        assert "square" in str(w)
        assert "psy " in str(w)
    assert TaskWarning("text").task_name is None
    assert str(TaskWarning("text", task_name="t")) == "text"


def write_task_with_typo(taskdir: Path) -> None:
    taskdir.mkdir()
    (taskdir / "task_sq.py").write_text(
        "from psyrun import Param\n"
        "pspace = Param(x=[1, 2])\n"
        "max_job = 2\n"  # misspelt max_jobs
        "def execute(x):\n"
        "    return {'y': x * x}\n",
        encoding="utf-8",
    )


def test_misspelt_setting_issues_task_warning_which_filters_silence(tmp_path):
    from psyrun.exceptions import TaskConfigWarning, TaskWarning
    from psyrun.tasks import load_tasks

    write_task_with_typo(tmp_path / "tasks")
    with pytest.warns(TaskConfigWarning, match="max_job") as caught:
        load_tasks(tmp_path / "tasks")
    assert all(issubclass(w.category, TaskWarning) for w in caught)
    # The 0.8 base class silences it (warnings are errors in this test suite).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=TaskWarning)
        tasks = load_tasks(tmp_path / "tasks")
    assert list(tasks) == ["sq"]


def test_unknown_exclude_issues_ineffective_exclude_warning():
    from psyrun import Param, map_pspace
    from psyrun.exceptions import IneffectiveExcludeWarning

    with pytest.warns(IneffectiveExcludeWarning, match="nosuchkey"):
        map_pspace(lambda x: {"y": x}, Param(x=[1]), exclude=["nosuchkey"])


# ---------------------------------------------------------------------------
# psyrun.main


def test_psy_main_help_and_version(capsys):
    from psyrun.main import psy_main

    assert psy_main(["--version"]) == 0
    assert psyrun.__version__ in capsys.readouterr().out
    assert psy_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: psy" in out
    assert "run" in out
    assert "status" in out
    assert psy_main(["run", "--help"]) == 0
    assert "--continue" in capsys.readouterr().out


def test_psy_main_returns_the_exit_status_of_mistakes(tmp_path, capsys):
    from psyrun.main import psy_main

    assert psy_main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err
    assert psy_main(["list", "--taskdir", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_psy_main_runs_a_task_in_process(tmp_path, monkeypatch, capsys):
    from psyrun.main import psy_main
    from psyrun.store import PickleStore

    taskdir = tmp_path / "tasks"
    write_task_with_typo(taskdir)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the typo, reported on stderr
        assert psy_main(["list", "--taskdir", str(taskdir)], init_venv=False) == 0
        assert capsys.readouterr().out.split() == ["sq"]
        assert psy_main(["run", "--taskdir", str(taskdir), "sq"]) == 0
    result = PickleStore().load(str(tmp_path / "psy-work" / "sq" / "result.pkl"))
    assert sorted(zip(result["x"], result["y"])) == [(1, 1), (2, 4)]


def test_psy_main_module_is_light():
    # The entry function must not load click or the CLI before it is called.
    code = (
        "import sys, psyrun.main; "
        "print(sorted(m for m in ('click', 'psyrun.cli', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
