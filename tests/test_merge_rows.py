"""The merge and the status it feeds: rows counted with repeats, results checked before
anything they replace is removed, rows a store cannot hold set aside, rows outside the
space reported and prunable, and no status that calls a missing or damaged result complete.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from cli_helpers import psy
from psy_helpers import ok, task_paths, task_result, write_task

from psyrun import Param
from psyrun.exceptions import DamagedFileError
from psyrun.results import current_rows, load_results
from psyrun.results.merge import match_rows, merge_files, missing_rows, write_merged
from psyrun.store.pickle import PickleStore

REPEATED = Param(a=[1, 2, 3]) + Param(a=[3, 4])


# -- row matching with multiplicity -------------------------------------------------


@pytest.mark.parametrize(
    ("done", "missing"),
    [
        ([1, 2, 3, 4], [3]),  # the second a=3 is not done by one stored a=3
        ([1, 2, 3, 4, 3], []),
        ([3, 3, 3, 9], [0, 1, 4]),
        ([], [0, 1, 2, 3, 4]),
        ([1.0, 2.0, 3.0], [3, 4]),  # numbers match across types
    ],
)
def test_missing_rows_counts_repeated_assignments(done, missing):
    assert missing_rows(REPEATED, {"a": np.array(done)}).tolist() == missing


def test_match_rows_tells_used_outside_and_surplus_rows():
    match = match_rows(REPEATED, {"a": np.array([3, 3, 3, 9, 1, 9])})
    assert match.missing.tolist() == [1, 4]
    assert match.used.tolist() == [True, True, False, False, True, False]
    assert match.outside.tolist() == [False, False, False, True, False, True]
    assert match.n_extra == 3


def test_match_rows_priority_order_chooses_which_copy_stands():
    # The later copy first: it stands for the assignment, the earlier one is surplus.
    match = match_rows(Param(a=[1]), {"a": np.array([1, 1])}, order=np.array([1, 0]))
    assert match.used.tolist() == [False, True]


def test_merge_writes_an_assignment_at_most_as_often_as_the_space_holds_it(tmp_path):
    store = PickleStore()
    base, part0, part1 = (str(tmp_path / n) for n in ("r.pkl", "0.pkl", "1.pkl"))
    store.save(base, {"a": [1, 3], "y": [10, 30]})
    # Part 0 repeats a row of the base and holds the second a=3; part 1 repeats both.
    store.save(part0, {"a": [1, 3, 2], "y": [10, 30, 20]})
    store.save(part1, {"a": [3, 2, 4, 4], "y": [30, 20, 40, 40]})
    rows = write_merged(store, base, [part0, part1], ["a"], base=base, space=REPEATED)
    assert rows == 5
    assert sorted(store.load(base)["a"].tolist()) == [1, 2, 3, 3, 4]


def test_merge_keeps_rows_outside_the_space_once(tmp_path):
    store = PickleStore()
    base, part = str(tmp_path / "r.pkl"), str(tmp_path / "0.pkl")
    store.save(base, {"a": [1, 7], "y": [10, 70]})
    store.save(part, {"a": [7, 2], "y": [70, 20]})
    assert write_merged(store, base, [part], ["a"], base=base, space=Param(a=[1, 2])) == 3
    assert sorted(store.load(base)["a"].tolist()) == [1, 2, 7]


# -- replace, then remove ----------------------------------------------------------


class ShortReading(PickleStore):
    """Writes correctly but reads one row less back (a write the disk cut short)."""

    def verify(self, filename):
        return super().verify(filename) - 1


def test_merge_replaces_nothing_with_a_file_that_reads_back_short(tmp_path):
    good = PickleStore()
    result, part = str(tmp_path / "r.pkl"), str(tmp_path / "0.pkl")
    good.save(result, {"a": [1], "y": [10]})
    good.save(part, {"a": [2], "y": [20]})
    with open(result, "rb") as f:
        before = f.read()
    with pytest.raises(DamagedFileError, match="holds 1 rows after writing 2"):
        merge_files(ShortReading(), result, [part], ["a"], base=result, space=Param(a=[1, 2]))
    with open(result, "rb") as f:
        assert f.read() == before
    assert sorted(os.listdir(tmp_path)) == ["0.pkl", "r.pkl"]


def test_single_part_is_adopted_only_after_it_reads_back(tmp_path):
    part, result = str(tmp_path / "0.pkl"), str(tmp_path / "r.pkl")
    PickleStore().save(part, {"a": [1, 2], "y": [10, 20]})
    store = ShortReading()
    # verify reads 1 of 2 rows: the part must stay a part.
    with pytest.raises(DamagedFileError):
        merge_files(store, result, [part], ["a"], consume=True, space=Param(a=[1, 2]))
    assert os.listdir(tmp_path) == ["0.pkl"]


def test_npz_results_read_whole_with_plain_numpy(tmp_path, monkeypatch):
    from psyrun.store.npz import NpzStore

    # Merges append in pieces of MERGE_ROWS; three pieces here, and a part that
    # was itself appended to in two pieces (as process jobs write them).
    monkeypatch.setattr("psyrun.results.merge.MERGE_ROWS", 4)
    store = NpzStore()
    result, part0, part1 = (str(tmp_path / n) for n in ("r.npz", "0.npz", "1.npz"))
    store.save(part0, {"a": [0, 1, 2, 3, 4], "y": [0.0, 1, 2, 3, 4]})
    store.append(part0, {"a": [5, 6], "y": [5.0, 6]})
    store.save(part1, {"a": [7, 8, 9], "y": [7.0, 8, 9]})
    rows = write_merged(store, result, [part0, part1], ["a"], space=Param(a=range(10)))
    assert rows == 10
    with np.load(result) as plain:
        assert sorted(plain["a"].tolist()) == list(range(10))
        assert sorted(plain["y"].tolist()) == [float(a) for a in range(10)]

    # The single-part shortcut must not hand over a part appended in pieces.
    single = str(tmp_path / "s.npz")
    merge_files(store, single, [part0], ["a"], consume=True, space=Param(a=range(7)))
    with np.load(single) as plain:
        assert plain["a"].tolist() == list(range(7))


# -- through psy ---------------------------------------------------------------------

CRASH_IN_SECOND_3 = """
import os, signal
from psyrun import Param
pspace = Param(a=[1, 2, 3]) + Param(a=[3, 4])
max_jobs = 5
min_items = 1
HERE = os.path.dirname(os.path.abspath(__file__))

def execute(a):
    if a == 3:
        seen = os.path.join(HERE, 'seen3')
        if os.path.exists(seen) and not os.path.exists(os.path.join(HERE, 'crashed')):
            open(os.path.join(HERE, 'crashed'), 'w').close()
            os.kill(os.getpid(), signal.SIGKILL)
        open(seen, 'w').close()
    return {'y': a * 10}
"""


def test_repeated_assignment_crash_then_continue_gives_a_fresh_runs_rows(project):
    write_task(project, "rep", CRASH_IN_SECOND_3)
    first = psy("run", "rep")
    assert first.exit_code == 1
    assert "4 out of 5 rows completed" in psy("status", "rep").output
    ok(psy("run", "-c", "rep"))
    result = task_result(project, "rep")
    assert sorted(result["a"].tolist()) == [1, 2, 3, 3, 4]
    assert "5 out of 5 rows completed" in psy("status", "rep").output


UNHOLDABLE = """
from psyrun import Param
from psyrun.store.h5 import H5Store
pspace = Param(x=list(range(20)))
store = H5Store()
max_jobs = 2
min_items = 1

def execute(x):
    return {'y': {'a': 1} if x == 13 else x}
"""


def test_rows_the_store_cannot_hold_are_evaluated_again_after_the_fix(project):
    pytest.importorskip("tables")
    path = write_task(project, "bad", UNHOLDABLE)
    first = psy("run", "bad")
    assert first.exit_code == 1
    assert "H5Store cannot hold the value of 'y'" in first.output
    assert "19 out of 20 rows completed" in psy("status", "bad").output
    path.write_text(path.read_text().replace("{'a': 1} if x == 13 else x", "x"))
    ok(psy("run", "-c", "bad"))
    result = task_result(project, "bad", ".h5")
    assert sorted(result["x"].tolist()) == list(range(20))
    np.testing.assert_array_equal(result["y"], result["x"])
    # The row that could not be held is kept aside, not destroyed.
    rejected = PickleStore().load(str(task_paths(project, "bad", ".h5").root) + "/rejected.pkl")
    assert rejected["x"].tolist() == [13]


SQUARE = """
from psyrun import Param
pspace = Param(x=list(range(6)))
max_jobs = 2
min_items = 1

def execute(x):
    return {'y': x * x}
"""


def test_status_and_watch_never_call_a_result_that_is_not_there_complete(project):
    write_task(project, "sq", SQUARE)
    ok(psy("run", "sq"))
    paths = task_paths(project, "sq")
    # The merge failed after the process jobs: parts only, no result.
    os.makedirs(paths.out_dir, exist_ok=True)
    PickleStore().save(paths.part(0), {"x": [0, 1, 2], "y": [0, 1, 4]})
    PickleStore().save(paths.part(1), {"x": [3, 4, 5], "y": [9, 16, 25]})
    os.remove(paths.result)
    status = psy("status", "sq")
    assert "6 out of 6 rows completed" in status.output
    assert "only in part files (the result file does not exist)" in status.output
    watch = psy("status", "--watch", "--interval", "0.05", "sq")
    assert watch.exit_code == 1
    assert "complete;" not in watch.output
    ok(psy("run", "-c", "sq"))
    assert psy("status", "--watch", "--interval", "0.05", "sq").exit_code == 0


def test_damaged_result_is_reported_and_refused(project):
    write_task(project, "sq", SQUARE)
    ok(psy("run", "sq"))
    result = task_paths(project, "sq").result
    with open(result, "r+b") as f:
        f.write(b"\0" * 16)  # the header: nothing reads past it
    with open(result, "rb") as f:
        damaged = f.read()
    status = psy("status", "sq")
    assert f"the result file {result} is damaged" in status.output
    assert psy("status", "--watch", "--interval", "0.05", "sq").exit_code == 1
    cont = psy("run", "-c", "sq")
    assert cont.exit_code == 1
    assert "Move it away" in cont.output
    with open(result, "rb") as f:
        assert f.read() == damaged
    # A plain run does not call the damaged result up to date: it computes every row again.
    ok(psy("run", "sq"))
    assert sorted(task_result(project, "sq")["x"].tolist()) == list(range(6))


def test_rows_outside_a_shrunk_space_are_reported_loadable_apart_and_prunable(project):
    path = write_task(project, "sq", SQUARE.replace("range(6)", "range(9)"))
    ok(psy("run", "sq"))
    path.write_text(SQUARE)
    ok(psy("run", "-c", "sq"))
    status = psy("status", "sq")
    assert "6 out of 6 rows completed" in status.output
    assert "3 rows outside the current parameter space" in status.output
    assert len(load_results("sq")["x"]) == 9
    current = load_results("sq", only_current=True)
    assert sorted(current["x"].tolist()) == list(range(6))
    pruned = ok(psy("prune", "sq"))
    assert "removed 3 rows outside the space; 6 rows kept" in pruned.output
    assert sorted(task_result(project, "sq")["x"].tolist()) == list(range(6))
    assert "outside" not in psy("status", "sq").output


def test_current_rows_drops_surplus_copies_and_keeps_order():
    data = {"a": [3, 1, 3, 3, 8], "y": [0, 1, 2, 3, 4]}
    out = current_rows(data, REPEATED)
    assert out["a"].tolist() == [3, 1, 3]
    assert out["y"].tolist() == [0, 1, 2]


def test_an_unreadable_part_is_set_aside_not_counted_and_does_not_block(project):
    write_task(project, "sq", SQUARE)
    ok(psy("run", "sq"))
    paths = task_paths(project, "sq")
    garbage = paths.part(7)
    os.makedirs(paths.out_dir, exist_ok=True)
    with open(garbage, "wb") as f:
        f.write(b"not a pickle")
    status = psy("status", "sq")
    assert f"part file {garbage} cannot be read" in status.output
    assert "6 out of 6 rows completed" in status.output
    ok(psy("run", "-c", "sq"))
    assert sorted(task_result(project, "sq")["x"].tolist()) == list(range(6))
    # Kept for the user to look at, out of the way of the next runs.
    aside = os.path.join(paths.root, "unreadable", os.path.basename(garbage))
    with open(aside, "rb") as f:
        assert f.read() == b"not a pickle"
    assert paths.list_parts() == []
    # Nothing is left to do: no job runs again.
    again = ok(psy("run", "-c", "sq"))
    assert ". sq:" not in again.output
