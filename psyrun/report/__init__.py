"""``psy report``: one self-contained HTML page about a task, to open anywhere.

The page holds the task's status (rows done, missing and failed, jobs, the
rate of the run), the provenance recorded in its result file, a table of the
first rows and plots that fit its parameter space; images are inline PNGs, so
the file opens from a laptop without a server. Three modules share the work:

* :mod:`psyrun.report.data` reads what the page shows: the status as
  ``psy status`` computes it, and the stored rows in chunks, reduced on the
  way to what is plotted (exact per-value and per-cell statistics for grids,
  a regular subsample for other spaces), so a result of 10^7 rows is never
  held in memory for the plots;
* :mod:`psyrun.report.plots` draws them with matplotlib (Agg, loaded lazily);
* :mod:`psyrun.report.page` writes the HTML, escaping every name and value
  that comes from the user, and writes the file atomically.

>>> from psyrun.report import write_report  # doctest: +SKIP
>>> write_report(task, "square-report.html")  # doctest: +SKIP
"""

from __future__ import annotations

from psyrun.report.page import (
    ReportRefused,
    ReportWriteError,
    default_output,
    render_report,
    write_report,
)

__all__ = ["ReportRefused", "ReportWriteError", "default_output", "render_report", "write_report"]
