"""``psy report``: the page's status, provenance, rows and plots, for every kind of task.

The pages are parsed with :mod:`html.parser` (what a browser would build from
them); the browser itself is in ``test_report_browser.py``, the faults
(damaged results, refused outputs, a full disk) in
``tests/faults/test_faults_report.py``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import VERSIONED_TASK, finish, start_psy, wait_for_rows, write
from psy_helpers import describe, ok, psy, write_task
from report_helpers import REPORT_TAGS, Page, png_size

pytest.importorskip("matplotlib")


def report(project: Path, task: str, *extra: str) -> tuple[Page, str]:
    out = project / f"{task}.html"
    result = ok(psy("report", task, "-o", str(out), *extra, cwd=project))
    return Page(out.read_text(encoding="utf-8")), result.stdout


GRID = """
import numpy as np
from psyrun import Param

pspace = Param(a=[1, 2, 3]) * Param(b=[0.5, 1.0]) * Param(c="const")
max_jobs = 2


def execute(a, b, c):
    if a == {fail}:
        raise ValueError("no result for this a")
    return {{"y": a * b, "label": f"a={{a}}", "vec": np.array([a, b]), "obj": {{"a": a}}}}
"""


def test_grid_task_page_has_status_provenance_rows_and_exact_plots(project):
    task = write_task(project, "grid", GRID.format(fail=-1))
    ok(psy("run", "grid", cwd=project))
    page, stdout = report(project, "grid")
    assert "wrote" in stdout
    assert "6 of 6 rows done" in stdout

    status = page.table("State")
    assert status["State"] == "complete"
    assert status["Rows done"].startswith("6 of 6")
    assert status["Rows missing"] == "0"
    assert status["Jobs of the last run"] == "0 queued, 0 running, 4 done, 0 failed"
    assert "rows/s" in status["Rate"]

    provenance = page.table("task")
    assert provenance["task"] == "grid"
    assert provenance["task_sha256"] == hashlib.sha256(task.read_bytes()).hexdigest()
    assert provenance["pspace_length"] == "6"

    rows = page.rows_table()
    assert rows[0] == ["#", "a (parameter)", "b (parameter)", "c (parameter)", "y", "label",
                       "vec", "obj"]  # fmt: skip
    body = [r[1:] for r in rows[1:]]
    assert sorted((int(r[0]), float(r[1]), float(r[3])) for r in body) == [
        (a, b, a * b) for a in (1, 2, 3) for b in (0.5, 1.0)
    ]
    assert all(r[2] == "const" and r[4] == f"a={r[0]}" for r in body)

    # One line figure and one heatmap for y; a complete grid has no coverage figure.
    assert [t for t, _ in page.tags].count("figure") == 2
    assert len(page.images) == 2
    for image in page.images:
        width, height = png_size(image)
        assert width > 100
        assert height > 100
    assert "exact over every current row" in page.captions[0]
    assert "could not be drawn" not in " ".join(page.sections["Plots"])
    not_plotted = page.text("Plots")
    assert "label: it holds text" in not_plotted
    assert "vec: it holds an array of shape (2) per row" in not_plotted
    assert "obj: it holds Python objects (dict)" in not_plotted


def test_grid_statistics_are_exact_when_read_in_many_chunks(project, monkeypatch):
    from psyrun.report import data as report_data
    from psyrun.tasks import load_tasks

    write_task(
        project,
        "chunks",
        """
        from psyrun import Param
        pspace = Param(a=[1, 2, 3, 4]) * Param(b=[10, 20, 30]) * Param(r=range(5))
        max_jobs = 1

        def execute(a, b, r):
            return {"y": a * b + r}
        """,
    )
    ok(psy("run", "chunks", cwd=project))
    monkeypatch.setattr(report_data, "CHUNK_ROWS", 7)  # 60 rows in 9 chunks
    data = report_data.collect(load_tasks("psy-tasks")["chunks"])
    grid = data.grid
    a, b, r = np.meshgrid([1, 2, 3, 4], [10, 20, 30], range(5), indexing="ij")
    y = a * b + r
    line = grid.lines["y"]["a"]
    np.testing.assert_allclose(line["sum"] / line["count"], y.mean(axis=(1, 2)))
    np.testing.assert_array_equal(line["min"], y.min(axis=(1, 2)))
    np.testing.assert_array_equal(line["max"], y.max(axis=(1, 2)))
    mean = line["sum"] / line["count"]
    np.testing.assert_allclose(
        np.sqrt(line["sumsq"] / line["count"] - mean**2), y.std(axis=(1, 2))
    )
    cell = grid.cells["y"][("b", "r")]
    np.testing.assert_allclose(cell["sum"] / cell["count"], y.mean(axis=0))
    assert data.rows_read == 60
    assert grid.off_grid == 0


def test_failed_and_missing_rows_are_counted_and_drawn(project):
    write_task(project, "grid", GRID.format(fail=2))
    result = psy("run", "grid", cwd=project)
    assert result.returncode != 0 or "failed" in result.output
    page, _ = report(project, "grid")
    status = page.table("State")
    assert status["State"] == "incomplete"
    assert status["Rows done"].startswith("4 of 6")
    assert status["Rows missing"] == "2"
    assert status["Rows failed"].startswith("2 (their execute raised")
    assert "failed" in status["Jobs of the last run"]
    assert "Failed jobs" in " ".join(page.sections["Status"])
    titles = list(page.captions)
    assert any("share of the rows of each cell" in c for c in titles)
    heat = next(c for c in titles if c.startswith("Mean of y"))
    assert "Grey cells (2) have no result yet" in heat
    line = next(c for c in titles if c.startswith("y against"))
    assert "red \u00d7" in line
    assert len(page.images) == 3
    assert all(png_size(i)[0] > 0 for i in page.images)


def test_a_task_without_rows_gets_a_page_that_says_so(project):
    write_task(project, "fresh", GRID.format(fail=-1))
    page, stdout = report(project, "fresh")
    assert "0 of 6 rows done" in stdout
    assert page.table("State")["State"] == "no rows yet"
    assert page.table("State")["Result file"] == "does not exist yet"
    assert "No rows yet" in page.text("First rows")
    assert "Nothing to plot" in page.text("Plots")
    assert "No provenance recorded" in page.text("Provenance")
    assert page.images == []


def test_unknown_task_is_one_line_and_writes_nothing(project):
    write_task(project, "grid", GRID.format(fail=-1))
    result = psy("report", "nope", cwd=project)
    assert result.exit_code == 1, describe(result)
    assert "no task named 'nope'" in result.stderr
    assert "Traceback" not in result.output
    assert not list(project.glob("*.html"))


def test_outputs_that_cannot_be_plotted_are_listed_not_drawn(project):
    write_task(
        project,
        "texts",
        """
        import numpy as np
        from psyrun import Param
        pspace = Param(a=[1, 2, 3])

        def execute(a):
            return {"s": "x" * a, "v": np.ones((2, 2)) * a, "z": complex(a, 1)}
        """,
    )
    ok(psy("run", "texts", cwd=project))
    page, _ = report(project, "texts")
    assert page.images == []
    plots = page.text("Plots")
    assert "Nothing to plot: no output holds one number per row" in plots
    assert "s: it holds text" in plots
    assert "v: it holds an array of shape (2x2) per row" in plots
    assert "z: it holds complex numbers" in plots
    assert len(page.rows_table()) == 4


def test_a_space_that_is_no_grid_is_drawn_as_a_subsampled_scatter(project, monkeypatch):
    from psyrun.report import data as report_data

    write_task(
        project,
        "zipped",
        """
        import numpy as np
        from psyrun import Param
        pspace = Param(a=np.arange(30), b=np.arange(30) ** 2) + Param(a=[100, 101], b=[0, 1])

        def execute(a, b):
            if a == 101:
                raise ValueError("fails")
            return {"y": a + b}
        """,
    )
    psy("run", "zipped", cwd=project)
    monkeypatch.setattr(report_data, "SAMPLE_ROWS", 10)
    page, _ = report(project, "zipped")
    assert page.table("State")["Rows missing"] == "1"
    plots = page.text("Plots")
    assert "not a grid" in plots
    assert "one row in every 4 (8 rows)" in plots
    caption = page.captions[0]
    assert "scatter" in caption
    assert "Red ticks on the axis mark missing assignments" in caption
    assert len(page.images) == 1
    assert png_size(page.images[0])[0] > 0


HOSTILE = "<img src=x onerror=alert(1)>"


def test_hostile_names_and_values_are_text_not_markup(project):
    name = 'h<b>"&'
    write_task(
        project,
        name,
        f"""
        from psyrun import Param
        pspace = Param(**{{{HOSTILE!r}: [1, 2], "$\\\\frac{{a}}{{$": [3, 4]}})

        def execute(**row):
            return {{"</table><script>alert(1)</script>": 1.5, "cost $x^2$ {{": 2.0,
                    "s": "<script>alert('v')</script>"}}
        """,
    )
    ok(psy("run", name, cwd=project))
    out = project / "hostile.html"
    ok(psy("report", name, "-o", str(out), cwd=project))
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert {tag for tag, _ in page.tags} <= REPORT_TAGS
    assert all(set(attrs) <= {"src", "alt", "class", "charset", "name", "content", "lang"}
               for _, attrs in page.tags)  # fmt: skip
    assert "<script" not in text
    assert "<b>" not in text
    # The names and values are on the page as text.
    assert f"Task {name}" in page.text("top")
    header = page.rows_table()[0]
    assert f"{HOSTILE} (parameter)" in header
    assert "</table><script>alert(1)</script>" in header
    assert "<script>alert('v')</script>" in page.rows_table()[1]
    # mathtext is off: names with $ draw as text instead of failing.
    assert "could not be drawn" not in text
    assert len(page.images) == 2
    assert all(png_size(i)[0] > 0 for i in page.images)


def test_stale_rows_are_counted_and_left_out_of_the_plots(project):
    task = project / "psy-tasks" / "task_v.py"
    write(task, VERSIONED_TASK.format(preamble="", n=6, jobs=1, y="x"))
    ok(psy("run", "v", cwd=project))
    write(task, VERSIONED_TASK.format(preamble="", n=6, jobs=1, y="2 * x"))
    page, _ = report(project, "v")
    status = page.table("State")
    assert status["Rows by older code"].startswith("6 of the rows done")
    assert "older version" in status["State"]
    assert "6 of them were computed by an older version" in page.text("Plots")
    assert page.images == []  # every row is stale: nothing current to draw
    assert len(page.rows_table()) == 7


def test_a_run_in_progress_shows_its_part_files(project):
    task = project / "psy-tasks" / "task_slow.py"
    write(task, VERSIONED_TASK.format(preamble="", n=100, jobs=2, y="x * 1.5"))
    run = start_psy("run", "slow", cwd=project, env={"V_DELAY": "0.05"})
    try:
        wait_for_rows(project / "psy-work" / "slow", 3, proc=run)
        page, _ = report(project, "slow")
    finally:
        # The run has done its part; stop it (psy run ends cleanly on SIGTERM).
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGTERM)
        finish(run)
    status = page.table("State")
    assert status["State"] == "a run is in progress"
    done = int(status["Rows done"].split(" of ")[0])
    assert 0 < done < 100
    assert status["Result file"] == "does not exist yet"
    assert "part file" in page.text("First rows")
    assert any("share of the rows of each value" in c for c in page.captions)
    assert all(png_size(i)[0] > 0 for i in page.images)


def test_without_matplotlib_the_page_says_what_to_install(project):
    write_task(project, "grid", GRID.format(fail=-1))
    ok(psy("run", "grid", cwd=project))
    code = (
        "import sys; sys.modules['matplotlib'] = None; from psyrun.cli import main; "
        "main(['report', 'grid', '-o', 'nompl.html'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    page = Page((project / "nompl.html").read_text(encoding="utf-8"))
    assert page.images == []
    assert 'pip install "psyrun[analysis]"' in page.text("Plots")
    assert page.table("State")["State"] == "complete"


def test_import_of_the_report_command_keeps_matplotlib_out():
    code = "import sys, psyrun.cli, psyrun.report; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_report_help_names_the_output_option():
    result = ok(psy("report", "--help"))
    assert "-o, --output" in result.stdout
    assert "self-contained HTML page" in result.stdout


@pytest.mark.parametrize("store", ["npz", "h5", "zarr"])
def test_every_store_gives_the_statistics_of_the_pickle_result(project, store):
    from psyrun.report.data import collect
    from psyrun.tasks import load_tasks

    imports = {
        "npz": ("psyrun.store.npz", "NpzStore"),
        "h5": ("psyrun.store.h5", "H5Store"),
        "zarr": ("psyrun.store.zarr", "ZarrStore"),
    }
    module, cls = imports[store]
    pytest.importorskip({"h5": "tables", "zarr": "zarr"}.get(store, "numpy"))
    source = """
    from psyrun import Param
    {setting}
    pspace = Param(a=[1, 2, 3]) * Param(b=[0.5, 1.0, 2.0, 4.0])
    max_jobs = 1

    def execute(a, b):
        return {{"y": a / b, "n": a * 10}}
    """
    write_task(project, "p", source.format(setting=""))
    setting = f"from {module} import {cls}\n    store = {cls}()"
    write_task(project, "s", source.format(setting=setting))
    ok(psy("run", cwd=project))
    tasks = load_tasks("psy-tasks")
    expected, found = collect(tasks["p"]), collect(tasks["s"])
    assert found.rows_read == expected.rows_read == 12
    for output in ("y", "n"):
        for key in ("a", "b"):
            for stat in ("count", "sum", "min", "max"):
                np.testing.assert_allclose(
                    found.grid.lines[output][key][stat], expected.grid.lines[output][key][stat]
                )


def test_parameters_whose_values_are_objects_or_arrays_give_a_scatter_of_the_others(project):
    write_task(
        project,
        "objs",
        """
        import numpy as np
        from psyrun import Param
        pspace = Param(cfg=[{"k": 1}, {"k": 2}]) * Param(x=[1.0, 2.0, 3.0]) * Param(
            w=[np.zeros(2)], tag=[[1, 2]]
        )

        def execute(cfg, x, w, tag):
            return {"y": cfg["k"] * x}
        """,
    )
    ok(psy("run", "objs", cwd=project))
    page, _ = report(project, "objs")
    assert page.table("State")["State"] == "complete"
    assert "not a grid" in page.text("Plots")
    assert len(page.images) == 1
    assert png_size(page.images[0])[0] > 0
    assert "{'k': 1}" in {row[1] for row in page.rows_table()[1:]}


def test_text_and_boolean_parameters_are_grid_axes(project):
    write_task(
        project,
        "labels",
        """
        from psyrun import Param
        pspace = Param(method=["adam", "sgd", "<rms>"]) * Param(flag=[True, False])

        def execute(method, flag):
            return {"loss": len(method) + flag}
        """,
    )
    ok(psy("run", "labels", cwd=project))
    page, _ = report(project, "labels")
    assert "The space is a grid" in page.text("Plots")
    assert len(page.images) == 2
    assert "could not be drawn" not in page.text("Plots")


def test_a_one_parameter_grid_with_failures_draws_its_coverage_as_bars(project):
    write_task(
        project,
        "line",
        """
        from psyrun import Param
        pspace = Param(x=range(10))

        def execute(x):
            if x % 4 == 0:
                raise ValueError("not this one")
            return {"y": x * x}
        """,
    )
    psy("run", "line", cwd=project)
    page, _ = report(project, "line")
    assert page.table("State")["Rows missing"] == "3"
    assert page.table("State")["Rows failed"].startswith("3 ")
    assert any("share of the rows of each value" in c for c in page.captions)
    assert len(page.images) == 2
    assert all(png_size(i)[0] > 0 for i in page.images)
    assert "could not be drawn" not in page.text("Plots")


def test_rows_outside_a_shrunk_space_are_counted_and_not_drawn(project):
    task = project / "psy-tasks" / "task_shrink.py"
    write(task, VERSIONED_TASK.format(preamble="", n=10, jobs=1, y="x + 0.5"))
    ok(psy("run", "shrink", cwd=project))
    write(task, VERSIONED_TASK.format(preamble="", n=4, jobs=1, y="x + 0.5"))
    page, _ = report(project, "shrink")
    status = page.table("State")
    assert status["Rows done"].startswith("4 of 4")
    assert status["Rows outside the space"].startswith("6 stored rows")
    plots = page.text("Plots")
    assert "6 rows are not on the current grid (outside the space) and are left out" in plots
    assert len(page.images) == 1
