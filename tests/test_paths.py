"""psyrun.paths: the task-name rule, whose files are whose, what clean and clear_parts remove."""

from __future__ import annotations

import os

import pytest

from psyrun.paths import OWNER_FILE, TaskPaths, UnsafePathError, check_task_name


@pytest.mark.parametrize(
    "name",
    [
        "sq",
        "é ü",
        "中文",
        "with space",
        "a.b",
        "...",
        "a:b",
        "$(x)",
        ";rm -rf ~",
        "'\"",
        "x" * 200,
    ],
)
def test_names_that_make_good_file_names_are_accepted(name):
    check_task_name(name)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "is empty"),
        (".", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("a\0b", "NUL"),
        ("a\nb", "U+000A"),
        ("a\x7fb", "U+007F"),
        ("a\u2029b", "U+2029"),
        ("a\u202eb", "U+202E"),
        ("caf\udce9", "not valid UTF-8"),
        ("-x", "starts with '-'"),
        (" x", "white space"),
        ("x\u00a0", "white space"),
        ("50%", "'%'"),
    ],
)
def test_names_that_break_file_names_or_command_lines_are_refused(name, why):
    with pytest.raises(UnsafePathError, match="task name") as info:
        check_task_name(name)
    assert why in str(info.value)
    assert "\n" not in str(info.value).replace(repr(name), "")


def test_longest_names_are_the_logs_and_temporary_markers_of_the_last_job(tmp_path):
    paths = TaskPaths("t", str(tmp_path), ".pkl")
    names = paths.longest_names(100)
    assert "t:process:99.log" in names
    assert ".t_process_99.tmp9999999.failed" in names
    assert ".t_process_99.tmp9999999.partial" in names
    assert max(map(len, names)) == len(".t_process_99.tmp9999999.partial")


def test_own_entries_are_the_names_psyrun_gives_its_files(tmp_path):
    paths = TaskPaths("t", str(tmp_path), ".h5")
    own = [
        "jobs",
        "status",
        "in",
        "out",
        OWNER_FILE,
        "t:split.log",
        "t:process:3.log",
        "result.h5",
        "result.pkl",
        ".result.tmp123.h5",
        ".result.zarr.tmp5.old",
    ]
    foreign = ["notes.txt", "results.h5", "u:split.log", "t.log", "jobs2", ".hidden"]
    assert all(paths.is_own_entry(e) for e in own)
    assert not any(paths.is_own_entry(e) for e in foreign)


def test_clear_parts_removes_parts_and_their_temporaries_only(tmp_path):
    paths = TaskPaths("t", str(tmp_path), ".pkl")
    paths.make_dirs()
    parts = ["0.pkl", "1.partial.pkl", ".0.partial.tmp42.pkl", "0.partial.pkl.lock", "2.h5"]
    for entry in [*parts, "mine.txt"]:
        (tmp_path / "t" / "out" / entry).write_text("")
    paths.clear_parts()
    assert os.listdir(paths.out_dir) == ["mine.txt"]


def test_a_work_directory_with_foreign_files_is_not_claimed(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "thesis.tex").write_text("")
    paths = TaskPaths("t", str(tmp_path), ".pkl", task_file=str(tmp_path / "task_t.py"))
    with pytest.raises(UnsafePathError, match="psyrun did not make"):
        paths.make_root()
    assert os.listdir(tmp_path / "t") == ["thesis.tex"]
    # An empty one (or an older psyrun's) is claimed for the task file.
    (tmp_path / "t" / "thesis.tex").unlink()
    paths.make_root()
    assert sorted(os.listdir(tmp_path / "t")) == [OWNER_FILE, "jobs"]
    other = TaskPaths("t", str(tmp_path), ".pkl", task_file=str(tmp_path / "other" / "task_t.py"))
    assert other.ownership_problem() is None  # the recorded task file is gone
    (tmp_path / "task_t.py").write_text("")
    assert "belongs to the task file" in other.ownership_problem()
