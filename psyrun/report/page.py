"""The report page: HTML from :class:`~psyrun.report.data.ReportData`, written atomically.

Every text that comes from the user (task, parameter and output names, str
values, messages that quote them, metadata) goes through :func:`html.escape`
before it reaches the page, so no name can add markup or script. Images are
inline ``data:image/png;base64`` URIs and the style sheet is in the page: the
file needs nothing else to be read.

The page starts with a marker (:data:`MARKER`) so that ``psy report -o FILE``
replaces an earlier report but refuses any other file.
"""

from __future__ import annotations

import base64
import datetime
import html
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from psyrun.report.data import HEAD_ROWS, ReportData, collect

__all__ = [
    "MARKER",
    "ReportRefused",
    "ReportWriteError",
    "default_output",
    "render_report",
    "write_report",
]

#: In the head of every report: ``psy report -o`` overwrites only files that hold it.
MARKER = '<meta name="generator" content="psyrun report">'
#: Bytes of an existing file searched for the marker.
_MARKER_WINDOW = 4096
#: Characters of one value in the table of first rows.
MAX_CELL = 60
#: Metadata entries (e.g. earlier runs) listed one by one at most.
MAX_LISTED = 20

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 78em;
       padding: 0 1em; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.stale td { background: #fff3cd; }
.state-ok { color: #1a7f37; font-weight: bold; }
.state-warn { color: #9a6700; font-weight: bold; }
.state-bad { color: #cf222e; font-weight: bold; }
ul.notes li { color: #9a6700; }
figure { margin: 1em 0 2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9em; max-width: 60em; }
.scroll { overflow-x: auto; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


class ReportRefused(ValueError):
    """The report cannot be written where asked (the message says why and what to do)."""


class ReportWriteError(OSError):
    """Writing the page failed (a full disk, no permission); nothing is left under its name.

    An :class:`OSError` with the ``errno`` and ``strerror`` of the failure and
    the page's path as ``filename``.
    """


def _n(count: int) -> str:
    """Return a count with thousands separators (``1,000,000``)."""
    return f"{int(count):,}"


def _e(value: Any) -> str:
    """Escape `value`'s text for HTML (quotes too: it may end up in an attribute)."""
    return html.escape(str(value), quote=True)


def default_output(task) -> str:
    """Return the file ``psy report`` writes without ``-o``: ``<task>-report.html`` here."""
    return f"{task.name}-report.html"


def check_output(path: str) -> None:
    """Refuse an output that is a directory, or an existing file that is not a report.

    Raises
    ------
    ReportRefused
        With a message naming the path and what to do.
    """
    if os.path.isdir(path):
        raise ReportRefused(
            f"{path} is a directory; give the report a file name, e.g. "
            f"-o {os.path.join(path, 'report.html')}"
        )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ReportRefused(f"cannot write {path}: the directory {parent} does not exist")
    if os.path.lexists(path):
        if not os.path.isfile(path):
            raise ReportRefused(f"{path} exists and is not a regular file; choose another name")
        try:
            with open(path, "rb") as f:
                start = f.read(_MARKER_WINDOW)
        except OSError as exc:
            raise ReportRefused(f"{path} exists and cannot be read ({exc.strerror})") from None
        if MARKER.encode() not in start:
            raise ReportRefused(
                f"{path} exists and is not a psyrun report; not overwriting it. Choose another "
                "name with -o, or move the file away"
            )


def write_report(task, output: str | os.PathLike | None = None) -> tuple[str, ReportData]:
    """Write the report of `task` to `output` (default :func:`default_output`).

    The page is written under a temporary name, synced and renamed, so a
    crash or a full disk never leaves half a page under `output`.

    Returns
    -------
    tuple of (str, ReportData)
        The path written and what the page shows.

    Raises
    ------
    ReportRefused
        When `output` is a directory or an existing file that is not a report.
    ReportWriteError
        When writing fails (a full disk: ``ENOSPC``); nothing is left under `output`.
    """
    from psyrun.atomic import atomic_write

    path = os.fspath(output) if output is not None else default_output(task)
    check_output(path)
    data = collect(task)
    text = render_report(data)
    try:
        with atomic_write(path) as f:
            f.write(text)
    except OSError as exc:
        raise ReportWriteError(exc.errno, exc.strerror or str(exc), path) from exc
    return path, data


# -- the page --------------------------------------------------------------------------


def render_report(data: ReportData) -> str:
    """Return the HTML page for `data`."""
    from psyrun.report.plots import draw_plots, matplotlib_missing

    missing_lib = matplotlib_missing()
    plots = [] if missing_lib else draw_plots(data)
    when = datetime.datetime.fromtimestamp(data.generated, datetime.timezone.utc)
    import psyrun

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        MARKER,
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>psyrun report: {_e(data.task)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Task {_e(data.task)}</h1>",
        f'<p class="sub">Report written {_e(when.strftime("%Y-%m-%d %H:%M:%S UTC"))} by psyrun '
        f"{_e(psyrun.__version__)} (<code>psy report {_e(data.task)}</code>).</p>",
        _status_section(data),
        _provenance_section(data),
        _head_section(data),
        _plots_section(data, plots, missing_lib),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _state(data: ReportData) -> tuple[str, str]:
    s = data.status
    if s.result == "damaged":
        return "state-bad", "the result file is damaged"
    if s.in_progress:
        return "state-warn", "a run is in progress"
    if s.total and s.completed >= s.total and s.result == "ok" and not s.unmerged:
        if s.stale:
            return "state-warn", "complete, but some rows were computed by an older version"
        return "state-ok", "complete"
    if not s.completed:
        return "state-warn", "no rows yet"
    return "state-warn", "incomplete"


def _row(label: str, value: str, raw: bool = False, num: bool = False) -> str:
    cls = ' class="num"' if num else ""
    return f"<tr><th>{_e(label)}</th><td{cls}>{value if raw else _e(value)}</td></tr>"


def _status_section(data: ReportData) -> str:
    s = data.status
    cls, state = _state(data)
    share = f" ({100 * s.completed / s.total:.1f}%)" if s.total else ""
    rows = [
        _row("State", f'<span class="{cls}">{_e(state)}</span>', raw=True),
        _row("Rows done", f"{_n(s.completed)} of {_n(s.total)}{share}", num=True),
        _row("Rows missing", _n(s.missing), num=True),
    ]
    if s.failed_rows:
        rows.append(
            _row(
                "Rows failed",
                f"{_n(s.failed_rows)} (their execute raised in the last run; counted among the "
                "missing rows, and not stored)",
            )
        )
    if s.stale:
        rows.append(
            _row(
                "Rows by older code",
                f"{_n(s.stale)} of the rows done were computed by an older version of the task "
                f"file (`psy run -c --stale {data.task}` recomputes them); not plotted",
            )
        )
    if s.outside:
        rows.append(_row("Rows outside the space", f"{_n(s.outside)} stored rows (not counted)"))
    if s.unmerged:
        rows.append(
            _row("Only in part files", f"{_n(s.unmerged)} of the rows done (not yet merged)")
        )
    result = {
        "ok": "reads back completely",
        "missing": "does not exist yet",
        "damaged": "is damaged: its rows are not counted or shown",
    }.get(s.result, s.result)
    rows.append(_row("Result file", result))
    jobs = ", ".join(f"{s.jobs.get(k, 0)} {k}" for k in ("queued", "running", "done", "failed"))
    rows.append(_row("Jobs of the last run", jobs))
    if s.running_pid is not None:
        pid = f" (pid {s.running_pid})" if s.running_pid else ""
        rows.append(_row("psy run", f"working on this task now{pid}"))
    if s.rate:
        rows.append(_row("Rate", s.rate))
    out = ["<h2>Status</h2>", "<table>", *rows, "</table>"]
    notes = [*s.notes, *data.read_notes]
    if notes:
        out.append('<ul class="notes">')
        out.extend(f"<li>{_e(n)}</li>" for n in notes)
        out.append("</ul>")
    if s.failed_jobs:
        out.append(f"<h3>Failed jobs ({len(s.failed_jobs)})</h3><table>")
        out.append("<tr><th>Job</th><th>Message</th><th>Log</th></tr>")
        for job in s.failed_jobs[:MAX_LISTED]:
            out.append(
                f"<tr><td>{_e(job.name)}</td><td>{_e(job.message)}</td>"
                f"<td><code>{_e(job.log)}</code></td></tr>"
            )
        out.append("</table>")
        if len(s.failed_jobs) > MAX_LISTED:
            out.append(
                f"<p>... and {len(s.failed_jobs) - MAX_LISTED} more "
                f"(<code>psy status -v -v {_e(data.task)}</code>).</p>"
            )
    return "\n".join(out)


def _value_text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        import json

        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    return text if len(text) <= 200 else text[:199] + "\u2026"


def _provenance_section(data: ReportData) -> str:
    from psyrun.results.provenance import PROVENANCE_KEYS

    out = ["<h2>Provenance</h2>"]
    meta = data.metadata
    if data.metadata_error:
        out.append(f"<p>The result's metadata cannot be read ({_e(data.metadata_error)}).</p>")
        return "\n".join(out)
    if not isinstance(meta, Mapping) or not meta:
        out.append(
            "<p>No provenance recorded: there is no result file yet, or it was written "
            "without it (by psyrun 0.8, or by hand).</p>"
        )
        return "\n".join(out)
    rows = []
    shown = set()
    for key in (*PROVENANCE_KEYS, "task_version"):
        if key in meta:
            rows.append(_row(key, _value_text(meta[key])))
            shown.add(key)
    segments = meta.get("row_versions")
    if isinstance(segments, list):
        versions = {}
        for seg in segments:
            if isinstance(seg, list) and len(seg) == 2 and isinstance(seg[1], int):
                versions[str(seg[0])] = versions.get(str(seg[0]), 0) + seg[1]
        text = "; ".join(f"{v}: {n} rows" for v, n in versions.items())
        rows.append(_row("rows per code version", text or "none"))
        shown.add("row_versions")
    earlier = meta.get("earlier_runs")
    if isinstance(earlier, list):
        rows.append(_row("earlier runs kept", f"{len(earlier)} (continued with psy run -c)"))
        shown.add("earlier_runs")
    for key, value in meta.items():
        if key not in shown:
            rows.append(_row(str(key), _value_text(value)))
    out.extend(["<table>", *rows, "</table>"])
    return "\n".join(out)


def _cell(value: Any) -> tuple[str, bool]:
    """Text of one table value (escaped later) and whether it is a number."""
    if isinstance(value, np.ndarray):
        shape = "x".join(map(str, value.shape))
        return (
            f"array({shape}) {np.array2string(value.ravel()[:4], threshold=4)[:MAX_CELL]}",
            False,
        )
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}", True
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)), False
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    text = repr(value) if not isinstance(value, str) else value
    return (text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "\u2026"), False


def _head_section(data: ReportData) -> str:
    out = ["<h2>First rows</h2>"]
    if not data.head:
        if data.status.result == "damaged":
            out.append("<p>None shown: the result file is damaged.</p>")
        else:
            out.append(
                f"<p>No rows yet: nothing has been stored. <code>psy run {_e(data.task)}</code> "
                "computes them.</p>"
            )
        return "\n".join(out)
    names = list(data.head)
    n = len(data.head[names[0]])
    params = set(data.params)
    header = "".join(f"<th>{_e(k)}{' (parameter)' if k in params else ''}</th>" for k in names)
    rows = [f"<tr><th>#</th>{header}</tr>"]
    stale = data.head_stale if data.head_stale is not None else np.zeros(n, bool)
    for i in range(n):
        cls = ' class="stale"' if stale[i] else ""
        cells = []
        for k in names:
            text, num = _cell(data.head[k][i])
            cells.append(
                f"<td{' class=' + chr(34) + 'num' + chr(34) if num else ''}>{_e(text)}</td>"
            )
        rows.append(f'<tr{cls}><td class="num">{i}</td>{"".join(cells)}</tr>')
    shown = f"The first {n}" if n >= HEAD_ROWS else f"All {n}" if n == data.rows_stored else f"{n}"
    out.append(
        f"<p>{_e(shown)} of {_n(data.rows_stored)} stored rows, in file order "
        f"(from the {_e(data.head_source)}).</p>"
    )
    if stale.any():
        out.append("<p>Highlighted rows were computed by an older version of the task file.</p>")
    out.append(f'<div class="scroll"><table>{"".join(rows)}</table></div>')
    return "\n".join(out)


def _plots_section(data: ReportData, plots: list, missing_lib: str) -> str:
    out = ["<h2>Plots</h2>"]
    if missing_lib:
        out.append(f"<p>{_e(missing_lib)}.</p>")
    elif not data.rows_read:
        out.append("<p>Nothing to plot: no rows are stored yet (or none could be read).</p>")
    elif not data.plotted_outputs:
        out.append("<p>Nothing to plot: no output holds one number per row.</p>")
    if data.rows_read:
        out.append(f"<p>{_e(_how_read(data))}</p>")
    for plot in plots:
        out.append(f"<figure><h3>{_e(plot.title)}</h3>")
        if plot.png:
            encoded = base64.b64encode(plot.png).decode("ascii")
            out.append(f'<img src="data:image/png;base64,{encoded}" alt="{_e(plot.alt)}">')
        else:
            out.append(f"<p><strong>{_e(plot.error)}</strong></p>")
        out.append(f"<figcaption>{_e(plot.caption)}</figcaption></figure>")
    skipped = [c for c in data.outputs if not c.plottable]
    from psyrun.report.plots import MAX_OUTPUTS

    extra = data.plotted_outputs[MAX_OUTPUTS:]
    if skipped or extra:
        out.append("<h3>Outputs not plotted</h3><ul>")
        out.extend(f"<li>{_e(c.name)}: {_e(c.why_not)}</li>" for c in skipped)
        out.extend(
            f"<li>{_e(name)}: only the first {MAX_OUTPUTS} numeric outputs are plotted</li>"
            for name in extra
        )
        out.append("</ul>")
    return "\n".join(out)


def _how_read(data: ReportData) -> str:
    """Say which rows the plots show and how they were reduced."""
    text = (
        f"The plots are made from {_n(data.rows_read)} of the {_n(data.rows_stored)} stored rows"
    )
    text += " (read in chunks)."
    if data.rows_stale:
        text += (
            f" {_n(data.rows_stale)} of them were computed by an older version of the task file "
            "and are left out."
        )
    if data.grid is not None:
        text += (
            " The space is a grid: every statistic is computed exactly over every row read "
            "(binned by parameter value), not from a sample."
        )
        if data.grid.off_grid:
            text += (
                f" {_n(data.grid.off_grid)} rows are not on the current grid (outside the space) "
                "and are left out."
            )
    elif data.sample is not None:
        if data.sample.step > 1:
            text += (
                " The space is not a grid: the scatter plots show a regular subsample, one "
                f"row in every {_n(data.sample.step)} ({_n(data.sample.kept())} rows)."
            )
        else:
            text += " The space is not a grid: the scatter plots show every row."
    return text
