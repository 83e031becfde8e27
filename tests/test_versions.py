"""Versions of a task's code: stale rows are never reported as current (issue 21, items 15-16).

Every run evaluates the task as it was when ``psy run`` loaded it (a copy of
its source in the work directory), every row of a result records the version
of the code that computed it, and ``psy status`` / ``psy run -c`` say how many
rows an older version computed and how to recompute them.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter

import numpy as np
import pytest
from e2e_helpers import (
    VERSIONED_TASK,
    finish,
    load_result,
    psy,
    recorded,
    recorder_preamble,
    result_path,
    run_recorded_jobs,
    start_psy,
    status_counts,
    wait_for_rows,
    wait_until,
    write,
)

from psyrun.run.versions import (
    ROW_VERSIONS,
    code_digest,
    encode_segments,
    expand_segments,
    task_version,
)

TASK = VERSIONED_TASK


def write_task(tmp_path, y, n=40, jobs=4, preamble="", name="v"):
    """The task ``v``: `n` rows, ``y`` = `y` in each; rows take ``$V_DELAY`` s."""
    return write(
        tmp_path / "psy-tasks" / f"task_{name}.py",
        TASK.format(y=y, n=n, jobs=jobs, preamble=preamble),
    )


SLOW = {"V_DELAY": "0.02"}


def edit(path, y):
    """Change the task's code (the value of ``y`` it computes)."""
    text = path.read_text()
    new = re.sub(r'"y": \d+', f'"y": {y}', text)
    assert new != text
    path.write_text(new)


def ys(tmp_path, name="v") -> Counter:
    return Counter(int(v) for v in load_result(result_path(tmp_path, name), "pickle")["y"])


def row_versions(tmp_path, name="v"):
    from psyrun.store.pickle import PickleStore

    return PickleStore().read_metadata(result_path(tmp_path, name))[ROW_VERSIONS]


def stale_in(text: str) -> int:
    """Rows ``psy status`` says an older version computed (0 when it says none)."""
    m = re.search(r"rows completed \((\d+) by an older version", text)
    return int(m.group(1)) if m else 0


# -- the version of a task's code ------------------------------------------------


def test_comments_layout_and_the_space_do_not_change_the_version():
    base = (
        "from psyrun import Param\nxs = [1, 2]\npspace = Param(x=xs)\n\n"
        "def execute(x):\n    return {'y': x}\n"
    )
    same = [
        base.replace("def execute", "# a comment\n\n\ndef execute"),
        base.replace("xs = [1, 2]", "xs = [1, 2, 3, 4]"),
        base.replace("pspace = Param(x=xs)", "pspace = Param(x=xs) + Param(x=[9])"),
    ]
    for text in same:
        assert code_digest(text) == code_digest(base), text
    changed = [
        base.replace("'y': x", "'y': 2 * x"),
        base.replace("xs = [1, 2]", "xs = [1, 2]\nscale = 3"),
    ]
    for text in changed:
        assert code_digest(text) != code_digest(base), text


def test_a_name_the_space_and_execute_share_is_part_of_the_code():
    text = "K = 2\npspace = Param(x=[K])\ndef execute(x):\n    return {'y': K * x}\n"
    assert code_digest(text) != code_digest(text.replace("K = 2", "K = 3"))


def test_psy_conf_is_part_of_the_version():
    task = "def execute(x):\n    return {}\n"
    assert task_version(task, None) != task_version(task, "max_jobs = 2\n")
    assert task_version(task, "max_jobs = 2\n") != task_version(task, "max_jobs = 3\n")


def test_segments_round_trip():
    names: list = []
    codes = expand_segments([["a", 2], ["b", 3], ["a", 1]], names)
    assert list(codes) == [0, 0, 1, 1, 1, 0]
    assert encode_segments(codes, names) == [["a", 2], ["b", 3], ["a", 1]]
    assert encode_segments(np.zeros(0, dtype=np.int32), names) == []


# -- item 15: a task file edited during a run ------------------------------------


def test_jobs_submitted_before_an_edit_run_the_task_as_it_was(tmp_path):
    """Jobs a cluster starts after the edit still evaluate the version psy submitted."""
    state = tmp_path / "jobs.json"
    path = write_task(tmp_path, 1, preamble=recorder_preamble(state))
    out = psy("run", "v", cwd=tmp_path)
    assert out.returncode == 0, out.output
    assert len(recorded(state)["jobs"]) == 6
    edit(path, 2)
    assert run_recorded_jobs(state, tmp_path) == [0] * 6
    assert ys(tmp_path) == {1: 40}
    status = psy("status", "v", cwd=tmp_path)
    assert status_counts(status.stdout) == [(40, 40)]
    assert stale_in(status.stdout) == 40
    assert "40 of 40 rows were computed by an older version of task_v.py" in status.stderr
    assert "psy run -c --stale v" in status.stderr
    # Not up to date: the next run evaluates the task as it is now.
    again = psy("run", "v", cwd=tmp_path)
    assert again.returncode == 0, again.output
    assert ". v:split" in again.output
    run_recorded_jobs(state, tmp_path)
    assert ys(tmp_path) == {2: 40}
    status = psy("status", "v", cwd=tmp_path)
    assert stale_in(status.stdout) == 0
    assert "older version" not in status.output


def test_an_edit_while_local_jobs_run_changes_nothing_the_run_computes(tmp_path):
    """Default scheduler: four process jobs one after the other, the edit after the first."""
    path = write_task(tmp_path, 1, n=40, jobs=4)
    root = tmp_path / "psy-work" / "v"
    proc = start_psy("run", "v", cwd=tmp_path, env=SLOW)
    wait_for_rows(root, 1, proc=proc)
    edit(path, 2)
    out = finish(proc)
    assert proc.returncode == 0, out
    assert ys(tmp_path) == {1: 40}
    status = psy("status", "v", cwd=tmp_path)
    assert stale_in(status.stdout) == 40, status.output
    run = psy("run", "v", cwd=tmp_path)
    assert run.returncode == 0, run.output
    assert ". v:split" in run.output, run.output
    assert ys(tmp_path) == {2: 40}
    assert psy("status", "v", cwd=tmp_path).output.count("older version") == 0


def test_status_during_a_run_says_the_task_file_changed_since_it_started(tmp_path):
    state = tmp_path / "jobs.json"
    path = write_task(tmp_path, 1, preamble=recorder_preamble(state))
    assert psy("run", "v", cwd=tmp_path).returncode == 0
    edit(path, 2)
    status = psy("status", "v", cwd=tmp_path)
    assert "task_v.py changed since the last run started" in status.stderr, status.output


def test_the_run_keeps_the_task_directory_for_imports_and_data_files(tmp_path):
    """The copy runs with the task file's directory as cwd, __file__ and on sys.path."""
    write(tmp_path / "psy-tasks" / "helper.py", "FACTOR = 3\n")
    write(tmp_path / "psy-tasks" / "data.txt", "5\n")
    write(
        tmp_path / "psy-tasks" / "task_d.py",
        """
        import os

        from helper import FACTOR
        from psyrun import Param

        pspace = Param(x=[1, 2])
        HERE = os.path.dirname(os.path.abspath(__file__))
        max_jobs = 2


        def execute(x):
            with open("data.txt") as f:
                offset = int(f.read())
            same = os.path.samefile(os.getcwd(), HERE)
            return {"y": FACTOR * x + offset, "here": same}
        """,
    )
    out = psy("run", "d", cwd=tmp_path)
    assert out.returncode == 0, out.output
    data = load_result(result_path(tmp_path, "d"), "pickle")
    assert sorted(int(v) for v in data["y"]) == [8, 11]
    assert all(bool(v) for v in data["here"])


# -- item 16: edit, start, Ctrl-C, psy run -c -------------------------------------


def test_rows_kept_by_an_interrupted_run_replace_the_old_ones(tmp_path):
    path = write_task(tmp_path, 1, n=200, jobs=1)
    assert psy("run", "v", cwd=tmp_path).returncode == 0
    assert ys(tmp_path) == {1: 200}
    edit(path, 2)
    root = tmp_path / "psy-work" / "v"
    proc = start_psy("run", "v", cwd=tmp_path, env=SLOW)
    # The last run's row counters are still there: wait for this run's part file.
    wait_until(lambda: any((root / "out").glob("*.pkl")), "rows of the new run", proc=proc)
    os.kill(proc.pid, signal.SIGINT)
    out = finish(proc)
    found = re.search(r"(\d+) rows evaluated in this run are kept", out)
    assert found, out
    kept = int(found.group(1))
    assert 0 < kept < 200, out
    status = psy("status", "v", cwd=tmp_path)
    assert status_counts(status.stdout) == [(200, 200)]
    assert stale_in(status.stdout) == 200 - kept, status.output

    cont = psy("run", "-c", "v", cwd=tmp_path)
    assert cont.returncode == 0, cont.output
    assert f"{200 - kept} of 200 rows were computed by an older version" in cont.stderr
    assert ys(tmp_path) == {2: kept, 1: 200 - kept}
    data = load_result(result_path(tmp_path, "v"), "pickle")
    assert sorted(int(x) for x in data["x"]) == list(range(200))
    assert sum(n for _, n in row_versions(tmp_path)) == 200
    assert stale_in(psy("status", "v", cwd=tmp_path).stdout) == 200 - kept

    # Only the stale rows run again.
    calls = tmp_path / "calls.txt"
    text = path.read_text().replace(
        "    time.sleep", f"    open({str(calls)!r}, 'a').write(f'{{x}}\\n')\n    time.sleep"
    )
    path.write_text(text)  # a new version again: every row is stale now
    fresh = psy("run", "-c", "--stale", "v", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.output
    assert ys(tmp_path) == {2: 200}
    assert len(calls.read_text().split()) == 200
    calls.unlink()
    status = psy("status", "v", cwd=tmp_path)
    assert status_counts(status.stdout) == [(200, 200)]
    assert stale_in(status.stdout) == 0
    assert "older version" not in status.output
    assert psy("run", "-c", "--stale", "v", cwd=tmp_path).returncode == 0
    assert not calls.exists()


@pytest.mark.parametrize("backend", ["distribute", "loadbalancing"])
def test_stale_recomputes_only_the_stale_rows(tmp_path, backend):
    from e2e_helpers import BACKENDS

    calls = tmp_path / "calls.txt"
    imp, name = BACKENDS[backend]
    pre = f"{imp}\nbackend = {name}\nCALLS = {str(calls)!r}\n"
    path = write_task(tmp_path, 1, n=10, jobs=2, preamble=pre)
    text = path.read_text().replace(
        "    time.sleep", "    open(CALLS, 'a').write(f'{x}\\n')\n    time.sleep"
    )
    path.write_text(text)
    assert psy("run", "v", cwd=tmp_path).returncode == 0
    # Grow the space: not stale code, -c evaluates the new rows only, without fuss.
    path.write_text(path.read_text().replace("range(10)", "range(14)"))
    cont = psy("run", "-c", "v", cwd=tmp_path)
    assert cont.returncode == 0, cont.output
    assert "older version" not in cont.output, cont.output
    assert Counter(calls.read_text().split()) == Counter(str(i) for i in range(14))
    assert row_versions(tmp_path)[0][1] == 14
    # Change the code: the 14 rows are stale; --stale evaluates them once each.
    calls.unlink()
    edit(path, 2)
    assert stale_in(psy("status", "v", cwd=tmp_path).stdout) == 14
    out = psy("run", "-c", "--stale", "v", cwd=tmp_path)
    assert out.returncode == 0, out.output
    assert Counter(calls.read_text().split()) == Counter(str(i) for i in range(14))
    assert ys(tmp_path) == {2: 14}
    assert len(row_versions(tmp_path)) == 1


@pytest.mark.parametrize("store", ["npz", "h5", "zarr"])
def test_every_store_records_row_versions(tmp_path, store):
    from e2e_helpers import STORES

    imp, ctor, _ = STORES[store]
    pytest.importorskip({"h5": "tables", "zarr": "zarr"}.get(store, "numpy"))
    path = write_task(tmp_path, 1, n=6, jobs=2, preamble=f"{imp}\nstore = {ctor}\n")
    assert psy("run", "v", cwd=tmp_path).returncode == 0
    edit(path, 2)
    status = psy("status", "v", cwd=tmp_path)
    assert stale_in(status.stdout) == 6, status.output
    assert psy("run", "-c", "--stale", "v", cwd=tmp_path).returncode == 0
    status = psy("status", "v", cwd=tmp_path)
    assert status_counts(status.stdout) == [(6, 6)]
    assert stale_in(status.stdout) == 0
    data = load_result(result_path(tmp_path, "v", store), store)
    assert sorted(int(v) for v in data["y"]) == [2] * 6


# -- the merge hook (psyrun.results.merge.write_merged) ------------------------------------


def test_write_merged_drops_replaced_base_rows_and_reports_rows_per_input(tmp_path):
    from psyrun.results.merge import write_merged
    from psyrun.store.pickle import PickleStore

    store = PickleStore()
    base, part = str(tmp_path / "result.pkl"), str(tmp_path / "0.pkl")
    store.save(base, {"x": [1, 2, 3], "y": [1, 1, 1]})
    store.save(part, {"x": [2, 4], "y": [2, 2]})
    seen = []

    def metadata(counts):
        seen.append(counts)
        return {"k": 1}

    drop = np.array([False, True, False])
    rows = write_merged(store, base, [part], ["x"], base=base, metadata=metadata, drop_base=drop)
    assert rows == 4
    data = store.load(base)
    assert sorted(zip(data["x"].tolist(), data["y"].tolist())) == [(1, 1), (2, 2), (3, 1), (4, 2)]
    assert seen == [[(base, 2), (part, 2)]]
    assert store.read_metadata(base) == {"k": 1}


def test_merge_versions_keeps_segments_exact_when_rows_are_replaced(tmp_path):
    from psyrun.results.merge import write_merged
    from psyrun.run.versions import merge_versions, read_row_versions
    from psyrun.store.pickle import PickleStore

    store = PickleStore()
    base, part = str(tmp_path / "result.pkl"), str(tmp_path / "0.pkl")
    store.save(base, {"x": [1, 2, 3, 5], "y": [1, 1, 1, 0]})
    store.write_metadata(base, {ROW_VERSIONS: [["a", 3], ["b", 1]]})
    store.save(part, {"x": [2, 4, 5], "y": [2, 2, 2]})
    # x=2 (version a) is replaced, x=5 (version b, the parts' own) is a duplicate.
    drop, metadata = merge_versions(store, base, [part], ["x"], "b", store)
    assert drop.tolist() == [False, True, False, False]
    write_merged(store, base, [part], ["x"], base=base, metadata=metadata, drop_base=drop)
    data = store.load(base)
    assert data["x"].tolist() == [1, 3, 5, 2, 4]
    assert read_row_versions(store, base) == [["a", 2], ["b", 3]]
    assert data["y"].tolist() == [1, 1, 0, 2, 2]


def test_row_versions_that_do_not_add_up_are_unknown(tmp_path):
    from psyrun.run.versions import read_row_versions
    from psyrun.store.pickle import PickleStore

    store = PickleStore()
    path = str(tmp_path / "r.pkl")
    store.save(path, {"x": [1, 2]})
    store.write_metadata(path, {ROW_VERSIONS: [["a", 2]]})
    assert read_row_versions(store, path) == [["a", 2]]
    store.append(path, {"x": [3]})  # rows added by something else
    assert read_row_versions(store, path) is None


def test_psy_conf_edited_during_a_run_is_part_of_the_frozen_source(tmp_path):
    state = tmp_path / "jobs.json"
    write_task(tmp_path, 1, n=6, jobs=2, preamble=recorder_preamble(state))
    conf = write(tmp_path / "psy-tasks" / "psy-conf.py", "exclude_from_result = []\n")
    assert psy("run", "v", cwd=tmp_path).returncode == 0
    conf.write_text("exclude_from_result = ['y']\n")
    assert run_recorded_jobs(state, tmp_path) == [0] * 4
    assert ys(tmp_path) == {1: 6}
    status = psy("status", "v", cwd=tmp_path)
    assert stale_in(status.stdout) == 6, status.output
