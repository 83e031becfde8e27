"""Hostile names: task names, work directories, result files and parameter strings.

Every case runs ``psy`` end to end in a project directory and checks the
invariants of the fault suite: nothing outside the task's own work directory
(and its result file) is created, changed or removed (:func:`tree_state`,
:func:`assert_untouched`), results round-trip exactly with every row once,
and ``psy status`` never says more than the result holds. The last cases
start ``psy run -c``, ``psy merge`` and ``psy clean`` of one task at once.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from fault_helpers import assert_untouched, tree_state
from psy_helpers import describe, psy, psy_command

from psyrun.paths import TaskPaths, check_task_name

STORES = {
    "pickle": ("from psyrun.store.pickle import PickleStore as Store", ".pkl"),
    "npz": ("from psyrun.store.npz import NpzStore as Store", ".npz"),
    "h5": ("from psyrun.store.h5 import H5Store as Store", ".h5"),
    "zarr": ("from psyrun.store.zarr import ZarrStore as Store", ".zarr"),
}

SIMPLE = """
from psyrun import Param
pspace = Param(x=[1, 2, 3])
max_jobs = 2
def execute(x):
    return {"y": 10 * x}
"""


def project_with_bystanders(root: Path) -> Path:
    """A project directory with files a careless clean would hit: the tree we watch."""
    (root / "psy-tasks").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "measurements.txt").write_text("precious\n")
    (root / "notes.txt").write_text("my notes\n")
    return root


def write_task_file(project: Path, name: str | bytes, text: str) -> Path:
    """Write ``psy-tasks/task_<name>.py``; a bytes name makes a file name that is not UTF-8."""
    directory = os.fsencode(project / "psy-tasks")
    name = name if isinstance(name, bytes) else os.fsencode(name)
    path = os.path.join(directory, b"task_" + name + b".py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))
    return Path(os.fsdecode(path))


def run_psy(project: Path, *args: str):
    return psy(*args, cwd=project)


def result_rows(project: Path, name: str, ext: str = ".pkl") -> dict:
    from psyrun.store import get_store

    paths = TaskPaths(name, str(project / "psy-work"), ext)
    return get_store(ext).load(paths.result)


# -- task names ----------------------------------------------------------------


def _too_long() -> str:
    return "n" * 240


REFUSED_NAMES = {
    "dot": ".",
    "dotdot": "..",
    "dash": "-rf",
    "dash-dash": "--all",
    "leading-space": " lead",
    "trailing-space": "trail ",
    "tab": "a\tb",
    "newline": "a\nb",
    "escape": "a\x1b[31mred",
    "percent-a": "x%ay",
    "bidi": "abc\u202eexe.py",
    "line-separator": "a\u2028b",
    "too-long": _too_long(),
}


@pytest.mark.parametrize("name", list(REFUSED_NAMES.values()), ids=list(REFUSED_NAMES))
def test_hostile_task_names_are_refused_when_tasks_load(tmp_path, name):
    project = project_with_bystanders(tmp_path / "p")
    write_task_file(project, name, SIMPLE)
    write_task_file(project, "good", SIMPLE)
    before = tree_state(project)

    listed = run_psy(project, "list")
    assert listed.exit_code == 0, describe(listed)
    assert "broken" in listed.output
    assert "UnsafePathError" in listed.output
    # The refused task is named with why, on one line.
    broken = [line for line in listed.stdout.splitlines() if "broken" in line]
    assert broken
    assert "task name" in "".join(broken)
    for command in ("run", "clean", "status"):
        result = run_psy(project, command, "--", name)
        assert result.exit_code != 0, describe(result)
        assert "Traceback" not in result.output
    assert_untouched(before, tree_state(project), "psy run/clean/status of a refused name")

    # The other task is not held hostage, and `psy clean --all` touches only its files.
    assert run_psy(project, "run", "good").exit_code == 0
    clean = run_psy(project, "clean", "--all")
    assert "cleaned good" in clean.output
    assert os.listdir(project / "psy-work") == []
    skip = project / "psy-work"
    assert_untouched(before, tree_state(project, skip=skip), "psy run good; psy clean --all")


def test_a_task_file_name_that_is_not_utf8_is_refused(tmp_path):
    project = project_with_bystanders(tmp_path / "p")
    write_task_file(project, b"caf\xe9", SIMPLE)
    before = tree_state(project)
    listed = run_psy(project, "list")
    assert listed.exit_code == 0, describe(listed)
    assert "not valid UTF-8" in listed.output
    assert run_psy(project, "run").exit_code == 1
    assert_untouched(before, tree_state(project), "psy run with a non-UTF-8 task name")


def test_old_names_dot_and_dotdot_cannot_reach_the_project_or_other_tasks(tmp_path):
    """Issue 21, item 3: ``psy clean ..`` deleted the project, ``psy clean .`` every result."""
    project = project_with_bystanders(tmp_path / "p")
    write_task_file(project, ".", SIMPLE)
    write_task_file(project, "..", SIMPLE)
    write_task_file(project, "other", SIMPLE)
    assert run_psy(project, "run", "other").exit_code == 0
    before = tree_state(project)
    for name in (".", ".."):
        assert run_psy(project, "run", name).exit_code != 0
        assert run_psy(project, "clean", name).exit_code != 0
    assert_untouched(before, tree_state(project), "psy run/clean of '.' and '..'")
    assert result_rows(project, "other")["y"].tolist() == [10, 20, 30]


ACCEPTED_NAMES = [
    "é ü 中文",
    "with space",
    "$(touch pwned)",
    ";rm -rf ~",
    "`touch pwned2`",
    "a.b",
    "...",
    "quote'and\"double",
    "a:b",
    "*?[x]",
    "a=b,c",
]


def test_accepted_names_work_end_to_end_and_touch_nothing_else(tmp_path):
    project = project_with_bystanders(tmp_path / "p")
    for name in ACCEPTED_NAMES:
        check_task_name(name)
        write_task_file(project, name, SIMPLE)
    before = tree_state(project, skip=project / "psy-work")
    run = run_psy(project, "run")
    assert run.exit_code == 0, describe(run)
    status = run_psy(project, "status")
    for name in ACCEPTED_NAMES:
        assert f"{name}: 3 out of 3 rows completed" in status.output
        rows = result_rows(project, name)
        assert sorted(zip(rows["x"].tolist(), rows["y"].tolist())) == [(1, 10), (2, 20), (3, 30)]
    # No shell ever saw a name: nothing named pwned was created anywhere.
    assert not list(tmp_path.rglob("pwned*"))
    assert_untouched(before, tree_state(project, skip=project / "psy-work"), "psy run")
    clean = run_psy(project, "clean", "--all")
    assert clean.exit_code == 0, describe(clean)
    assert os.listdir(project / "psy-work") == []
    assert_untouched(before, tree_state(project, skip=project / "psy-work"), "psy clean --all")


def test_the_longest_name_the_file_system_allows_runs_and_one_more_byte_is_refused(tmp_path):
    project = project_with_bystanders(tmp_path / "p")
    workdir = project / "psy-work"
    name_max = os.pathconf(project, "PC_NAME_MAX")
    # The longest name psyrun makes from a task name, for max_jobs = 2.
    extra = max(len(n) for n in TaskPaths("", str(workdir), ".pkl").longest_names(2))
    longest = "L" * (name_max - extra)
    text = SIMPLE
    write_task_file(project, longest, text)
    write_task_file(project, longest + "M", text)
    listed = run_psy(project, "list")
    assert f"{longest}M (broken" in listed.output
    assert f"use at most {len(longest)} bytes" in listed.output
    run = run_psy(project, "run", longest)
    assert run.exit_code == 0, describe(run)
    assert "3 out of 3 rows completed" in run_psy(project, "status", longest).output
    assert run_psy(project, "clean", longest).exit_code == 0


# -- result files and work directories ------------------------------------------


def _other_task_result(project: Path) -> str:
    write_task_file(project, "other", SIMPLE)
    assert run_psy(project, "run", "other").exit_code == 0
    return "psy-work/other/result.pkl"


def _results_of_another_task_elsewhere(project: Path) -> str:
    write_task_file(project, "other", SIMPLE + "resultfile = 'shared.pkl'\n")
    assert run_psy(project, "run", "other").exit_code == 0
    return "shared.pkl"


def _symlink(project: Path) -> str:
    (project / "link.pkl").symlink_to(project / "notes.txt")
    return "link.pkl"


HOSTILE_RESULTFILES = {
    "existing-directory": lambda p: "data",
    "text-file": lambda p: "notes.txt",
    "task-file": lambda p: "psy-tasks/task_t.py",
    "another-task-file": lambda p: (
        write_task_file(p, "second", SIMPLE),
        "psy-tasks/task_second.py",
    )[1],
    "task-directory": lambda p: "psy-tasks",
    "project-directory": lambda p: ".",
    "work-directory": lambda p: "psy-work",
    "own-parts-directory": lambda p: "psy-work/t/out/r.pkl",
    "own-log-name": lambda p: "psy-work/t/t:split.log",
    "inside-another-task": _other_task_result,
    "result-of-another-task": _results_of_another_task_elsewhere,
    "symlink": _symlink,
}


@pytest.mark.parametrize("make", list(HOSTILE_RESULTFILES.values()), ids=list(HOSTILE_RESULTFILES))
def test_a_resultfile_psyrun_did_not_make_is_refused_before_anything_runs(tmp_path, make):
    """Issue 21, item 2: ``resultfile`` naming an existing directory deleted it."""
    project = project_with_bystanders(tmp_path / "p")
    resultfile = make(project)
    write_task_file(project, "t", SIMPLE + f"resultfile = {resultfile!r}\n")
    before = tree_state(project)
    for args in (("run", "t"), ("run", "-c", "t"), ("clean", "t")):
        result = run_psy(project, *args)
        assert "Traceback" not in result.output, describe(result)
        if args[0] == "run":
            assert result.exit_code == 1, describe(result)
            assert "resultfile" in result.output or "not running" in result.output
    assert_untouched(before, tree_state(project), "psy run/clean with a hostile resultfile")


def test_a_resultfile_of_its_own_is_replaced_continued_and_cleaned(tmp_path):
    project = project_with_bystanders(tmp_path / "p")
    write_task_file(project, "t", SIMPLE + "resultfile = 'results/t.pkl'\n")
    before = tree_state(project, skip=project / "psy-work")
    for args in (("run", "t"), ("run", "-c", "t")):
        assert run_psy(project, *args).exit_code == 0
    (project / "psy-tasks" / "task_t.py").touch()  # out of date: a fresh run replaces it
    before = tree_state(project, skip=project / "psy-work")
    before.pop(os.path.join("results", "t.pkl"))
    before.pop("results")
    assert run_psy(project, "run", "t").exit_code == 0
    from psyrun.store import get_store

    assert sorted(get_store(".pkl").load(str(project / "results/t.pkl"))["x"]) == [1, 2, 3]
    clean = run_psy(project, "clean", "t")
    assert clean.exit_code == 0, describe(clean)
    assert "warning" not in clean.output, describe(clean)
    assert not (project / "results" / "t.pkl").exists()
    (project / "results").rmdir()  # made for the result: the only thing left
    assert_untouched(before, tree_state(project, skip=project / "psy-work"), "run, -c, clean")


def test_work_directories_and_result_files_with_odd_characters_work(tmp_path):
    project = project_with_bystanders(tmp_path / "p")
    workdir, resultfile = "work dir $(touch pwned);é", "résultats/out put `id`;.pkl"
    write_task_file(
        project, "odd", SIMPLE + f"workdir = {workdir!r}\nresultfile = {resultfile!r}\n"
    )
    before = tree_state(project, skip=project / workdir)
    for args in (("run", "odd"), ("run", "-c", "odd")):
        result = run_psy(project, *args)
        assert result.exit_code == 0, describe(result)
    assert "odd: 3 out of 3 rows completed" in run_psy(project, "status", "odd").output
    from psyrun.store import get_store

    assert sorted(get_store(".pkl").load(str(project / resultfile))["y"]) == [10, 20, 30]
    assert run_psy(project, "clean", "odd").exit_code == 0
    assert os.listdir(project / workdir) == []
    assert os.listdir(project / "résultats") == []
    (project / "résultats").rmdir()
    assert not list(tmp_path.rglob("pwned*"))
    assert_untouched(before, tree_state(project, skip=project / workdir), "odd paths")


def test_a_task_work_directory_over_user_files_is_refused(tmp_path):
    project = project_with_bystanders(tmp_path / "p")
    # workdir '.' and a task named like a directory of the user's: <workdir>/<task> is theirs.
    write_task_file(project, "data", SIMPLE + "workdir = '.'\n")
    before = tree_state(project)
    listed = run_psy(project, "list")
    assert "data (broken" in listed.output
    assert "psyrun did not make" in listed.output
    for command in ("run", "clean"):
        assert run_psy(project, command, "data").exit_code == 1
    assert_untouched(before, tree_state(project), "a task whose work directory is the user's")


def test_a_work_directory_inside_another_tasks_is_refused(tmp_path):
    project = project_with_bystanders(tmp_path / "p")
    write_task_file(project, "a", SIMPLE)
    assert run_psy(project, "run", "a").exit_code == 0
    # Named 'out': its work directory would be a's parts directory.
    write_task_file(project, "out", SIMPLE + "workdir = 'psy-work/a'\n")
    write_task_file(project, "pct", SIMPLE + "workdir = 'w%a'\n")
    before = tree_state(project)
    listed = run_psy(project, "list")
    assert "out (broken" in listed.output
    assert "work directory of another task" in listed.output
    assert "pct (broken" in listed.output
    assert "'%a'" in listed.output
    for name in ("out", "pct"):
        assert run_psy(project, "run", name).exit_code == 1
        assert run_psy(project, "clean", name).exit_code == 1
    assert_untouched(before, tree_state(project), "tasks with hostile work directories")


def test_two_task_files_of_one_name_cannot_share_a_work_directory(tmp_path):
    shared = tmp_path / "scratch"
    one, two = (project_with_bystanders(tmp_path / n) for n in ("one", "two"))
    for project in (one, two):
        write_task_file(project, "sim", SIMPLE + f"workdir = {str(shared)!r}\n")
    assert run_psy(one, "run", "sim").exit_code == 0
    before = tree_state(tmp_path)
    run = run_psy(two, "run", "sim")
    assert run.exit_code == 1
    assert "belongs to the task file" in run.output
    assert run_psy(two, "clean", "sim").exit_code == 1
    assert_untouched(before, tree_state(tmp_path), "a second task file of the same name")


def test_clean_keeps_what_psyrun_did_not_make_in_the_work_directory(tmp_path):
    project = project_with_bystanders(tmp_path / "p")
    write_task_file(project, "t", SIMPLE)
    assert run_psy(project, "run", "t").exit_code == 0
    (project / "psy-work" / "t" / "analysis.ipynb").write_text("{}")
    clean = run_psy(project, "clean", "t")
    assert clean.exit_code == 0
    assert "psyrun did not make ('analysis.ipynb')" in clean.output
    assert sorted(os.listdir(project / "psy-work" / "t")) == ["analysis.ipynb"]


# -- parameter strings ----------------------------------------------------------------

HOSTILE_STRINGS = [
    "plain",
    "",
    "new\nline",
    "carriage\rreturn",
    "tab\there",
    "nul\x00inside",
    "quote ' and \" both",
    "$(touch pwned)",
    ";rm -rf ~",
    "`id`",
    "back\\slash",
    "%a %s %(x)s {x}",
    "é ü 中文 🎉",
    "x" * 5000,
]


def _strings_task(store_key: str, values: list[str]) -> str:
    import_line, _ = STORES[store_key]
    return f"""
{import_line}
from psyrun import Param
store = Store()
pspace = Param(s={values!r})
max_jobs = 3
def execute(s):
    return {{"out": s + "!", "n": len(s)}}
"""


def _check_round_trip(project: Path, store_key: str, values: list[str]) -> None:
    rows = result_rows(project, "s", STORES[store_key][1])
    assert len(rows["s"]) == len(values), "rows lost or duplicated"
    got = {str(s): (str(o), int(n)) for s, o, n in zip(rows["s"], rows["out"], rows["n"])}
    assert got == {v: (v + "!", len(v)) for v in values}


@pytest.mark.parametrize("store_key", list(STORES))
def test_hostile_parameter_strings_round_trip_in_every_store(tmp_path, store_key):
    pytest.importorskip({"h5": "tables", "zarr": "zarr"}.get(store_key, "numpy"))
    project = project_with_bystanders(tmp_path / "p")
    write_task_file(project, "s", _strings_task(store_key, HOSTILE_STRINGS))
    before = tree_state(project, skip=project / "psy-work")
    run = run_psy(project, "run", "s")
    assert run.exit_code == 0, describe(run)
    _check_round_trip(project, store_key, HOSTILE_STRINGS)
    n = len(HOSTILE_STRINGS)
    assert f"s: {n} out of {n} rows completed" in run_psy(project, "status", "s").output
    # Continuing adds nothing: every stored string matches its assignment.
    assert run_psy(project, "run", "-c", "s").exit_code == 0
    _check_round_trip(project, store_key, HOSTILE_STRINGS)
    assert not list(tmp_path.rglob("pwned*"))
    assert_untouched(before, tree_state(project, skip=project / "psy-work"), "hostile strings")


@pytest.mark.parametrize("store_key", ["npz"])
def test_a_string_ending_in_nul_is_stored_exactly_or_refused(tmp_path, store_key):
    project = project_with_bystanders(tmp_path / "p")
    values = ["a", "trailing nul\x00"]
    write_task_file(project, "s", _strings_task(store_key, values))
    run = run_psy(project, "run", "s")
    if run.exit_code != 0:
        # A refusal is fine, if it is clear and nothing claims completion.
        assert "NUL" in run.output
        assert "2 out of 2" not in run_psy(project, "status", "s").output
        return
    run_psy(project, "run", "-c", "s")
    _check_round_trip(project, store_key, values)


@pytest.mark.parametrize(
    "store_key",
    [
        "pickle",
        "npz",
        "h5",
        "zarr",
    ],
)
def test_a_string_that_is_not_unicode_text_is_kept_or_refused_never_garbled(tmp_path, store_key):
    """A surrogate (what os.fsdecode makes of a non-UTF-8 file name) in a parameter."""
    pytest.importorskip({"h5": "tables", "zarr": "zarr"}.get(store_key, "numpy"))
    project = project_with_bystanders(tmp_path / "p")
    values = ["ok", "caf\udce9"]
    write_task_file(project, "s", _strings_task(store_key, values))
    run = run_psy(project, "run", "s")
    status = run_psy(project, "status", "s").output
    if run.exit_code == 0:
        _check_round_trip(project, store_key, values)
        assert "2 out of 2 rows completed" in status
    else:
        assert "Traceback" not in run.stderr.splitlines()[-1:]
        assert "2 out of 2 rows completed" not in status


# -- concurrent commands ----------------------------------------------------------------

SLOW = """
import time
from psyrun import Param
pspace = Param(x=list(range(60)))
max_jobs = 3
def execute(x):
    time.sleep(0.01)
    return {"y": 2 * x}
"""


def _spawn(project: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONWARNINGS", None)
    return subprocess.Popen(
        [*psy_command(), *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def test_concurrent_run_merge_and_clean_lose_and_duplicate_nothing(tmp_path, fault_rng):
    project = project_with_bystanders(tmp_path / "p")
    write_task_file(project, "t", SLOW)
    merged = project / "merged.pkl"
    before = tree_state(project, skip=project / "psy-work")
    for round_ in range(2):
        # Round 0 starts from nothing, later ones from a complete result (-c adds nothing).
        commands = [
            ("run", "-c", "t"),
            ("merge", "psy-work/t/out", str(merged), "--overwrite"),
            ("clean", "t"),
        ]
        order = fault_rng.permutation(len(commands))
        procs = []
        for i in order:
            procs.append((commands[i], _spawn(project, *commands[i])))
            time.sleep(float(fault_rng.uniform(0, 0.3)))
        for args, proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert "Traceback" not in out, f"psy {' '.join(args)} (round {round_}):\n{out}"
        # Whatever happened, -c then completes the task: every row exactly once.
        final = psy("run", "-c", "t", cwd=project, subprocess=True)
        assert final.returncode == 0, describe(final)
        rows = result_rows(project, "t")
        assert sorted(rows["x"].tolist()) == list(range(60)), f"round {round_}"
        assert (rows["y"] == 2 * rows["x"]).all()
        status = psy("status", "t", cwd=project)
        assert "t: 60 out of 60 rows completed" in status.output
        if merged.exists():
            # psy merge read parts: never a row twice.
            from psyrun.store import get_store

            xs = get_store(".pkl").load(str(merged))["x"].tolist()
            assert len(xs) == len(set(xs))
            merged.unlink()
        assert_untouched(before, tree_state(project, skip=project / "psy-work"), "round")


def test_merge_of_a_tasks_parts_waits_for_no_run(tmp_path):
    project = project_with_bystanders(tmp_path / "p")
    write_task_file(project, "t", SLOW.replace("0.01", "0.05"))
    run = _spawn(project, "run", "t")
    try:
        deadline = time.monotonic() + 30
        lock = project / "psy-work" / "t" / "jobs" / "run.lock"
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        merge = psy("merge", "psy-work/t/out", "m.pkl", cwd=project)
        clean = psy("clean", "t", cwd=project)
    finally:
        out, _ = run.communicate(timeout=120)
    assert run.returncode == 0, out
    assert merge.exit_code == 1
    assert "is working on the task" in merge.output
    assert clean.exit_code == 1
    assert "is working on this task" in clean.output
    assert not (project / "m.pkl").exists()
    assert sorted(result_rows(project, "t")["x"].tolist()) == list(range(60))
