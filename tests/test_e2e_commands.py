"""End to end: the other ``psy`` subcommands and the errors users can cause.

status, clean, kill, list, merge, new-task, test and --help, run as a user
would (see ``e2e_helpers``). Queued jobs are simulated with a scheduler
defined in the task file that only records submissions; running the recorded
argv lists afterwards plays the part of the cluster.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from e2e_helpers import (
    STORES,
    calls,
    counting_task,
    job_marks,
    load_result,
    recorded,
    recorder_preamble,
    result_path,
    run_recorded_jobs,
    sorted_rows,
    square_rows,
    status_counts,
    write,
)
from psy_helpers import describe, ok, psy

SUBCOMMANDS = ["run", "clean", "kill", "list", "merge", "new-task", "status", "test"]


def test_list_names_every_task_and_nothing_else(tmp_path):
    tasks = tmp_path / "psy-tasks"
    for name in ["alpha", "beta_2"]:
        write(tasks / f"task_{name}.py", counting_task(tmp_path / name, range(2)))
    write(tasks / "psy-conf.py", "max_jobs = 3\n")
    write(tasks / "helpers.py", "VALUE = 1\n")
    out = ok(psy("list", cwd=tmp_path, subprocess=True))
    assert sorted(out.stdout.split()) == ["alpha", "beta_2"], describe(out)


def test_status_before_and_after_run(tmp_path):
    side = tmp_path / "calls.txt"
    write(
        tmp_path / "psy-tasks" / "task_st.py",
        counting_task(side, [70001, 70002, 70003, 4, 5], settings="max_jobs = 2"),
    )
    before = ok(psy("status", cwd=tmp_path, subprocess=True))
    assert status_counts(before.stdout) == [(0, 5)], describe(before)
    assert "st" in before.stdout
    verbose = ok(psy("status", "-v", cwd=tmp_path, subprocess=True))
    for value in (70001, 70002, 70003):
        assert str(value) in verbose.stdout, describe(verbose)
    assert not calls(side), "status must not evaluate anything"

    ok(psy("run", cwd=tmp_path, subprocess=True))
    after = ok(psy("status", "-v", "st", cwd=tmp_path, subprocess=True))
    assert status_counts(after.stdout) == [(5, 5)], describe(after)
    assert "70001" not in after.stdout, "a completed row is listed as missing"


def test_status_of_several_tasks(tmp_path):
    write(tmp_path / "psy-tasks" / "task_done.py", counting_task(tmp_path / "c1", range(3)))
    write(tmp_path / "psy-tasks" / "task_todo.py", counting_task(tmp_path / "c2", range(4)))
    ok(psy("run", "done", cwd=tmp_path, subprocess=True))
    out = ok(psy("status", cwd=tmp_path, subprocess=True))
    assert sorted(status_counts(out.stdout)) == [(0, 4), (3, 3)], describe(out)


def test_clean_deletes_only_the_named_task(tmp_path):
    for name in ["gone", "kept"]:
        write(
            tmp_path / "psy-tasks" / f"task_{name}.py",
            counting_task(tmp_path / f"calls-{name}", range(4), settings="max_jobs = 2"),
        )
    ok(psy("run", cwd=tmp_path, subprocess=True))
    ok(psy("clean", "gone", cwd=tmp_path, subprocess=True))
    gone_dir = tmp_path / "psy-work" / "gone"
    assert not gone_dir.exists() or not any(gone_dir.iterdir()), list(gone_dir.iterdir())
    assert result_path(tmp_path, "kept").exists()
    assert (tmp_path / "psy-tasks" / "task_gone.py").exists(), "clean deleted the task file"
    status = ok(psy("status", "gone", cwd=tmp_path, subprocess=True))
    assert status_counts(status.stdout) == [(0, 4)], describe(status)

    rerun = ok(psy("run", cwd=tmp_path, subprocess=True))
    marks = {name: mark for mark, name in job_marks(rerun.stdout)}
    assert any(m == "." and "gone" in n for n, m in marks.items()), describe(rerun)
    assert all(m == "-" for n, m in marks.items() if "kept" in n), describe(rerun)
    assert calls(tmp_path / "calls-gone") == dict.fromkeys(range(4), 2)
    assert calls(tmp_path / "calls-kept") == dict.fromkeys(range(4), 1)


@pytest.mark.parametrize("store", list(STORES))
def test_merge_directory_into_one_file(tmp_path, store):
    from psyrun.store import get_store

    ext = STORES[store][2]
    backend = get_store(ext)
    parts = tmp_path / "parts"
    parts.mkdir()
    chunks = [
        {"x": [0, 1, 2], "y": [0.0, 0.5, 1.0]},
        {"x": [3], "y": [1.5]},
        {"x": [4, 5], "y": [2.0, 2.5]},
    ]
    for i, chunk in enumerate(chunks):
        backend.save(str(parts / f"part{i}{ext}"), chunk)
    merged = tmp_path / f"merged{ext}"
    ok(psy("merge", str(parts), str(merged), cwd=tmp_path, subprocess=True))
    expected = {"x": list(range(6)), "y": [0.5 * i for i in range(6)]}
    assert sorted_rows(load_result(merged, store)) == sorted_rows(expected)


def test_new_task_template_runs(tmp_path):
    (tmp_path / "psy-tasks").mkdir()
    ok(psy("new-task", "fresh", cwd=tmp_path, subprocess=True))
    template = tmp_path / "psy-tasks" / "task_fresh.py"
    assert template.exists()
    compile(template.read_text(), str(template), "exec")
    listing = ok(psy("list", cwd=tmp_path, subprocess=True))
    assert listing.stdout.split() == ["fresh"], describe(listing)
    ok(psy("test", "fresh", cwd=tmp_path, subprocess=True))
    ok(psy("run", "fresh", cwd=tmp_path, subprocess=True))
    status = ok(psy("status", "fresh", cwd=tmp_path, subprocess=True))
    counts = status_counts(status.stdout)
    assert len(counts) == 1, describe(status)
    assert counts[0][0] == counts[0][1], describe(status)

    # A second new-task of the same name must not destroy the user's edits.
    template.write_text(template.read_text() + "\n# my edits\n")
    again = psy("new-task", "fresh", cwd=tmp_path, subprocess=True)
    assert again.returncode != 0, describe(again)
    assert "Traceback" not in again.stderr, describe(again)
    assert "# my edits" in template.read_text()


@pytest.mark.parametrize(("scheduler", "arg"), [("Slurm", "timelimit"), ("Sqsub", "timelimit")])
def test_new_task_for_a_scheduler_prefills_its_arguments(tmp_path, scheduler, arg):
    (tmp_path / "psy-tasks").mkdir()
    ok(psy("new-task", "--scheduler", scheduler, "cluster", cwd=tmp_path, subprocess=True))
    text = (tmp_path / "psy-tasks" / "task_cluster.py").read_text()
    compile(text, "task_cluster.py", "exec")
    assert scheduler in text
    assert "scheduler_args" in text
    assert arg in text
    listing = ok(psy("list", cwd=tmp_path, subprocess=True))
    assert listing.stdout.split() == ["cluster"], describe(listing)


def test_test_command_runs_one_assignment_without_the_scheduler(tmp_path):
    state = tmp_path / "scheduler.json"
    write(
        tmp_path / "psy-tasks" / "task_queued.py",
        counting_task(tmp_path / "calls-q", range(50), preamble=recorder_preamble(state)),
    )
    write(tmp_path / "psy-tasks" / "task_local.py", counting_task(tmp_path / "calls-l", range(7)))
    ok(psy("test", cwd=tmp_path, subprocess=True))
    assert sum(calls(tmp_path / "calls-q").values()) == 1
    assert sum(calls(tmp_path / "calls-l").values()) == 1
    assert recorded(state)["jobs"] == [], "psy test submitted jobs to the task's scheduler"

    ok(psy("test", "local", cwd=tmp_path, subprocess=True))
    assert sum(calls(tmp_path / "calls-l").values()) == 2
    assert sum(calls(tmp_path / "calls-q").values()) == 1


def _recorded_task(tmp_path, state, backend="distribute", arrays=False, n=10):
    write(
        tmp_path / "psy-tasks" / "task_q.py",
        counting_task(
            tmp_path / "calls.txt",
            range(n),
            backend=backend,
            settings="max_jobs = 3\nscheduler_args = {'timelimit': '5m', 'memory': '1G'}",
            preamble=recorder_preamble(state, supports_arrays=arrays),
        ),
    )


def test_queued_jobs_are_not_resubmitted_and_kill_kills_them(tmp_path):
    state = tmp_path / "scheduler.json"
    _recorded_task(tmp_path, state)
    ok(psy("run", cwd=tmp_path, subprocess=True))
    jobs = recorded(state)["jobs"]
    names = [j["name"] or "" for j in jobs]
    assert sum("split" in n for n in names) == 1, names
    assert sum("merge" in n for n in names) == 1, names
    processes = [j for j in jobs if "process" in (j["name"] or "")]
    assert len(processes) == 3, names
    split = next(j for j in jobs if "split" in j["name"])
    merge = next(j for j in jobs if "merge" in j["name"])
    assert all(split["id"] in j["depends_on"] for j in processes)
    assert {j["id"] for j in processes} <= set(merge["depends_on"])
    for job in jobs:
        assert all(isinstance(a, str) for a in job["args"]), job["args"]
        assert "psyrun.worker" in job["args"], job["args"]
        assert job["scheduler_args"].get("timelimit") == "5m", job["scheduler_args"]
        assert job["scheduler_args"].get("memory") == "1G", job["scheduler_args"]
    assert not calls(tmp_path / "calls.txt"), "a recording scheduler ran nothing"

    status = ok(psy("status", "-v", "q", cwd=tmp_path, subprocess=True))
    assert status_counts(status.stdout) == [(0, 10)], describe(status)
    assert re.search("queued", status.stdout, re.IGNORECASE), describe(status)
    for job in jobs:
        assert job["name"] in status.stdout, f"status -v must list {job['name']}\n{status.stdout}"

    again = ok(psy("run", cwd=tmp_path, subprocess=True))
    assert len(recorded(state)["jobs"]) == len(jobs), "queued jobs were submitted again"
    assert re.search("queued", again.stdout + again.stderr, re.IGNORECASE), describe(again)

    ok(psy("kill", "q", cwd=tmp_path, subprocess=True))
    after = recorded(state)
    assert set(after["killed"]) == {j["id"] for j in jobs}
    assert all(j["state"] == "killed" for j in after["jobs"])

    # Nothing is queued any more, so a new run submits afresh.
    ok(psy("run", cwd=tmp_path, subprocess=True))
    assert len(recorded(state)["jobs"]) == 2 * len(jobs)


@pytest.mark.parametrize(
    ("backend", "arrays"),
    [("distribute", False), ("distribute", True), ("loadbalancing", False)],
)
def test_recorded_jobs_run_in_fresh_interpreters(tmp_path, backend, arrays):
    """The submitted argv lists are complete jobs: running them finishes the task."""
    state = tmp_path / "scheduler.json"
    _recorded_task(tmp_path, state, backend=backend, arrays=arrays, n=11)
    ok(psy("run", cwd=tmp_path, subprocess=True))
    jobs = recorded(state)["jobs"]
    assert jobs
    if backend == "distribute":
        outs = {j["out"].rsplit("/", 1)[-1] for j in jobs}
        assert outs == {"q:split.log", "q:merge.log"} | {f"q:process:{i}.log" for i in range(3)}
    statuses = run_recorded_jobs(state, tmp_path)
    logs = "\n".join(
        f"{j['out']}:\n{Path(j['out']).read_text()}" for j in jobs if Path(j["out"]).exists()
    )
    assert statuses == [0] * len(statuses), logs
    assert calls(tmp_path / "calls.txt") == dict.fromkeys(range(11), 1)
    assert sorted_rows(load_result(result_path(tmp_path, "q"), "pickle")) == square_rows(range(11))
    status = ok(psy("status", "q", cwd=tmp_path, subprocess=True))
    assert status_counts(status.stdout) == [(11, 11)], describe(status)


def test_broken_task_file_is_reported_and_others_still_load(tmp_path):
    write(tmp_path / "psy-tasks" / "task_good.py", counting_task(tmp_path / "c", range(3)))
    write(
        tmp_path / "psy-tasks" / "task_broken.py",
        """
        from psyrun import Param

        pspace = Param(x=[1])
        raise RuntimeError("boom while loading")
        """,
    )
    listing = psy("list", cwd=tmp_path, subprocess=True)
    text = listing.stdout + listing.stderr
    assert "good" in listing.stdout.split(), describe(listing)
    assert "task_broken.py" in text, describe(listing)
    assert "boom while loading" in text, describe(listing)
    # Naming a task loads only its file (issue 14.8): not a word about the broken one.
    run = ok(psy("run", "good", cwd=tmp_path, subprocess=True))
    assert "task_broken.py" not in run.stdout + run.stderr, describe(run)
    # Running every task reports the broken file and fails.
    every = psy("run", cwd=tmp_path, subprocess=True)
    assert every.returncode == 1, describe(every)
    assert "Traceback" not in every.stderr, describe(every)
    assert "task_broken.py" in every.stderr, describe(every)
    assert sorted_rows(load_result(result_path(tmp_path, "good"), "pickle")) == square_rows(
        range(3)
    )


def test_misspelt_setting_is_warned_about(tmp_path):
    write(
        tmp_path / "psy-tasks" / "task_typo.py",
        counting_task(tmp_path / "c", range(3), settings="max_job = 2"),
    )
    out = psy("list", cwd=tmp_path, subprocess=True)
    text = out.stdout + out.stderr
    assert "max_job" in text, describe(out)
    assert "max_jobs" in text, describe(out)


def test_imported_names_are_not_mistaken_for_misspelt_settings(tmp_path):
    # The guide tells users to subclass Scheduler (and Store) in their task files.
    write(
        tmp_path / "psy-tasks" / "task_custom.py",
        counting_task(
            tmp_path / "c",
            range(3),
            preamble="""
                from psyrun.scheduler import Scheduler
                from psyrun.store import Store
                from psyrun.store.pickle import PickleStore


                class MyStore(PickleStore):
                    pass


                Store = MyStore
                """,
            settings="store = MyStore()",
        ),
    )
    out = ok(psy("list", cwd=tmp_path, subprocess=True))
    assert out.stdout.split() == ["custom"], describe(out)
    assert "did you mean" not in out.stderr.lower(), describe(out)
    assert "warning" not in out.stderr.lower(), describe(out)


def test_help_for_every_subcommand(tmp_path):
    top = ok(psy("--help", cwd=tmp_path, subprocess=True))
    for name in SUBCOMMANDS:
        assert name in top.stdout, describe(top)
    for name in SUBCOMMANDS:
        sub = ok(psy(name, "--help", cwd=tmp_path, subprocess=True))
        assert "Usage" in sub.stdout, describe(sub)
    for name in ["run", "status", "clean", "kill", "list", "new-task", "test"]:
        assert "--taskdir" in ok(psy(name, "--help", cwd=tmp_path, subprocess=True)).stdout, name


ERROR_CASES = [
    # (argv, text that must appear in the message)
    (["run", "nosuchtask"], "nosuchtask"),
    (["status", "nosuchtask"], "nosuchtask"),
    (["clean", "nosuchtask"], "nosuchtask"),
    (["kill", "nosuchtask"], "nosuchtask"),
    (["test", "nosuchtask"], "nosuchtask"),
    (["run", "--taskdir", "no-such-dir"], "no-such-dir"),
    (["list", "--taskdir", "no-such-dir"], "no-such-dir"),
    (["status", "--taskdir", "no-such-dir"], "no-such-dir"),
    (["run", "--no-such-option"], "--no-such-option"),
    (["frobnicate"], "frobnicate"),
    (["merge", "parts"], "merged"),
    (["merge", "no-such-parts", "out.pkl"], "no-such-parts"),
    (["merge", "parts", "out.unknownext"], ".unknownext"),
    (["new-task", "--scheduler", "NoSuchScheduler", "x"], "NoSuchScheduler"),
]


@pytest.mark.parametrize(
    ("argv", "needle"), ERROR_CASES, ids=[" ".join(argv) for argv, _ in ERROR_CASES]
)
def test_user_errors_give_a_short_message_and_nonzero_exit(tmp_path, argv, needle):
    write(tmp_path / "psy-tasks" / "task_real.py", counting_task(tmp_path / "c", range(2)))
    parts = tmp_path / "parts"
    parts.mkdir()
    from psyrun.store import PickleStore

    PickleStore().save(str(parts / "a.pkl"), {"x": [1]})
    out = psy(*argv, cwd=tmp_path, subprocess=True)
    assert out.returncode != 0, describe(out)
    text = out.stdout + out.stderr
    assert "Traceback" not in text, describe(out)
    assert needle.lower() in text.lower(), describe(out)
    message = [
        line
        for line in out.stderr.splitlines()
        if line.strip() and not line.startswith(("Usage:", "Try "))
    ]
    assert 1 <= len(message) <= 2, describe(out)
    assert not calls(tmp_path / "c"), "a failed command evaluated rows"
