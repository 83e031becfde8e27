"""The report's figures, drawn with matplotlib's Agg canvas into PNG bytes.

matplotlib is imported on first use (it is in the ``analysis`` extra), and
only through :class:`matplotlib.figure.Figure` and the Agg canvas: no pyplot,
no global backend, no window. Text from the user (parameter and output names,
str values) is drawn as plain text: mathtext is off, so a ``$`` in a name is
a dollar sign, not a formula that fails to parse.

Every function returns a list of :class:`Plot`; a figure that cannot be drawn
becomes a plot whose ``error`` says why, never an exception that loses the
page.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from psyrun.report.data import Grid, ReportData, Sample

__all__ = ["MAX_OUTPUTS", "MAX_PAIRS", "MAX_PANELS", "Plot", "draw_plots", "matplotlib_missing"]

#: Outputs with plots at most (the others are listed as not plotted).
MAX_OUTPUTS = 12
#: Parameters with a panel per output at most.
MAX_PANELS = 6
#: Pairs of grid parameters with a heatmap at most.
MAX_PAIRS = 6
#: Tick labels per axis at most (every k-th value is labelled beyond).
MAX_TICKS = 12
#: Characters of a name drawn in a figure (longer ones end in an ellipsis).
MAX_LABEL = 40
DPI = 80
MISSING_COLOR = "#d62728"
EMPTY_COLOR = "#d9d9d9"


@dataclass
class Plot:
    """One figure of the page: a title, a caption, and the PNG (or why there is none)."""

    title: str
    caption: str
    png: bytes = b""
    error: str = ""
    alt: str = ""


def matplotlib_missing() -> str:
    """Return ``''`` when matplotlib can be imported, else what to install."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (
            "matplotlib is not installed, so this report has no plots; "
            'install it with `pip install "psyrun[analysis]"` and run `psy report` again'
        )
    return ""


def _label(text: str) -> str:
    text = str(text)
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "\u2026"


def _figure(n_panels: int, per_row: int = 3, width: float = 3.6, height: float = 2.9):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max(1, min(per_row, n_panels))
    rows = max(1, math.ceil(n_panels / cols))
    fig = Figure(figsize=(width * cols, height * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _legend(fig, axes, **kwargs) -> None:
    """One legend above the panels (every panel draws the same things; no search for room)."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if labels:
        fig.legend(
            [handles[label] for label in labels],
            labels,
            loc="outside upper center",
            ncols=len(labels),
            fontsize="small",
            frameon=False,
            **kwargs,
        )


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _draw(title: str, caption: str, alt: str, draw) -> Plot:
    """Run `draw()` (which returns a figure) with mathtext off; a failure becomes the error."""
    import matplotlib

    try:
        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            fig = draw()
            png = _png(fig)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        return Plot(title, caption, error=f"this figure could not be drawn ({why})", alt=alt)
    return Plot(title, caption, png, alt=alt)


def _positions(axis: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """Return the x positions of an axis' values, and tick labels when they are not numbers."""
    if axis.dtype.kind in "iuf":
        return axis.astype(np.float64), None
    # Text and booleans: one position per value, named.
    return np.arange(len(axis), dtype=np.float64), [_label(v) for v in axis.tolist()]


def _set_ticks(ax, which: str, positions: np.ndarray, labels: list[str] | None) -> None:
    """Label the ticks at `positions` with `labels`, thinned so that they do not overlap."""
    if labels is None:
        return
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axis = ax.xaxis if which == "x" else ax.yaxis
    if len(labels) <= 8:
        axis.set_ticks(positions, labels)
    else:
        # Ticks on whole positions only, as many as fit; each names the value there.
        axis.set_major_locator(MaxNLocator(nbins=6, integer=True))

        def name(pos, _):
            i = round(float(pos))
            return labels[i] if 0 <= i < len(labels) and abs(pos - i) < 1e-6 else ""

        axis.set_major_formatter(FuncFormatter(name))
    if which == "x" and max(map(len, labels), default=0) > 5:
        for tick in ax.get_xticklabels():
            tick.set_rotation(30)
            tick.set_horizontalalignment("right")


# -- grids -----------------------------------------------------------------------------


def _grid_lines(grid: Grid, output: str) -> Plot:
    keys = list(grid.axes)[:MAX_PANELS]
    lines = grid.lines.get(output, {})

    def draw():
        fig, axes = _figure(len(keys))
        for ax, key in zip(axes, keys):
            stats = lines[key]
            x, labels = _positions(grid.axes[key])
            count = stats["count"]
            has = count > 0
            mean = np.full(len(x), np.nan)
            mean[has] = stats["sum"][has] / count[has]
            var = np.full(len(x), np.nan)
            var[has] = np.maximum(stats["sumsq"][has] / count[has] - mean[has] ** 2, 0)
            sd = np.sqrt(var)
            low = np.where(has, stats["min"], np.nan)
            high = np.where(has, stats["max"], np.nan)
            ax.fill_between(x, low, high, color="C0", alpha=0.15, lw=0, label="min\u2013max")
            ax.fill_between(
                x, mean - sd, mean + sd, color="C0", alpha=0.3, lw=0, label="\u00b11 s.d."
            )
            marker = "o-" if len(x) <= 50 else "-"
            ax.plot(x, mean, marker, color="C0", ms=3, lw=1.2, label="mean")
            short = grid.expected[key] > grid.have[key]
            if short.any():
                ax.plot(
                    x[short],
                    np.zeros(int(short.sum())),
                    "x",
                    color=MISSING_COLOR,
                    ms=6,
                    mew=1.5,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                    label="rows missing",
                )
            _set_ticks(ax, "x", x, labels)
            ax.set_xlabel(_label(key))
            ax.set_ylabel(_label(output))
        _legend(fig, axes)
        return fig

    others = "the other parameters" if len(grid.axes) > 1 else "repeated assignments"
    caption = (
        f"{output} against each parameter: the mean over {others} (line), \u00b11 standard "
        "deviation (dark band) and the range from minimum to maximum (light band), exact "
        "over every current row read."
    )
    if any((grid.expected[k] > grid.have[k]).any() for k in keys):
        caption += (
            " A red \u00d7 on the axis marks values with rows still missing (not yet run, "
            "or failed)."
        )
    if len(grid.axes) > MAX_PANELS:
        caption += f" Only the first {MAX_PANELS} of {len(grid.axes)} parameters are drawn."
    return _draw(f"{output} by parameter", caption, f"line plots of {output}", draw)


def _heatmaps(grid: Grid, output: str) -> Plot:
    pairs = grid.pairs[:MAX_PAIRS]
    cells = grid.cells.get(output, {})
    partial_total = empty_total = 0
    for a, b in pairs:
        have, expected = grid.pair_have[(a, b)], grid.pair_expected(a, b)
        empty_total += int((cells[(a, b)]["count"] == 0).sum())
        partial_total += int(((have > 0) & (have < expected)).sum())

    def draw():
        fig, axes = _figure(len(pairs), per_row=2, width=4.6, height=3.6)
        for ax, (a, b) in zip(axes, pairs):
            cell = cells[(a, b)]
            count = cell["count"]
            mean = np.full(count.shape, np.nan)
            mean[count > 0] = cell["sum"][count > 0] / count[count > 0]
            image = np.ma.masked_invalid(mean.T)
            cmap = _colormap()
            mesh = ax.imshow(
                image, origin="lower", aspect="auto", cmap=cmap, interpolation="nearest"
            )
            fig.colorbar(mesh, ax=ax, label=_label(output))
            xa, xl = _labels(grid.axes[a])
            ya, yl = _labels(grid.axes[b])
            _set_ticks(ax, "x", xa, xl)
            _set_ticks(ax, "y", ya, yl)
            have, expected = grid.pair_have[(a, b)], grid.pair_expected(a, b)
            partial = (have > 0) & (have < expected)
            if partial.any() and partial.size <= 2500:
                i, j = np.nonzero(partial)
                ax.plot(i, j, ".", color=MISSING_COLOR, ms=4)
            ax.set_xlabel(_label(a))
            ax.set_ylabel(_label(b))
        return fig

    caption = (
        f"Mean of {output} in each cell of every pair of grid parameters (over the other "
        "parameters), exact over every current row read."
    )
    if empty_total:
        caption += f" Grey cells ({empty_total}) have no result yet (not run, or failed)."
    if partial_total:
        caption += f" {partial_total} cells lack some of their rows" + (
            " (red dots)." if all(grid.pair_have[p].size <= 2500 for p in pairs) else "."
        )
    if len(grid.pairs) > MAX_PAIRS:
        caption += f" Only the first {MAX_PAIRS} of {len(grid.pairs)} pairs are drawn."
    return _draw(f"{output} by pairs of parameters", caption, f"heatmaps of {output}", draw)


def _labels(axis: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Cell positions and labels of a heatmap axis (every value, as text)."""
    text = [_label(f"{v:.4g}" if isinstance(v, float) else str(v)) for v in axis.tolist()]
    return np.arange(len(axis), dtype=np.float64), text


def _colormap():
    import matplotlib

    return matplotlib.colormaps["viridis"].with_extremes(bad=EMPTY_COLOR)


def _coverage(grid: Grid, stale: int) -> Plot | None:
    """Share of each value's (or cell's) rows that have a result; None when none is missing."""
    keys = list(grid.axes)
    if all((grid.have[k] >= grid.expected[k]).all() for k in keys):
        return None
    if not any(grid.have[k].any() for k in keys):
        return None  # nothing current is stored: the status says it all
    pairs = grid.pairs[:MAX_PAIRS]

    def draw():
        if not pairs:
            fig, axes = _figure(1)
            key = keys[0]
            x, labels = _positions(grid.axes[key])
            share = np.minimum(grid.have[key] / np.maximum(grid.expected[key], 1), 1)
            ax = axes[0]
            ax.bar(x, share, color="C2", label="done")
            ax.bar(x, 1 - share, bottom=share, color=MISSING_COLOR, alpha=0.6, label="missing")
            _set_ticks(ax, "x", x, labels)
            ax.set_xlabel(_label(key))
            ax.set_ylabel("share of rows")
            ax.legend(fontsize="x-small")
            return fig
        fig, axes = _figure(len(pairs), per_row=2, width=4.6, height=3.6)
        for ax, (a, b) in zip(axes, pairs):
            share = grid.pair_have[(a, b)] / np.maximum(grid.pair_expected(a, b), 1)
            mesh = ax.imshow(
                np.minimum(share, 1).T,
                origin="lower",
                aspect="auto",
                cmap="RdYlGn",
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            fig.colorbar(mesh, ax=ax, label="share of rows done")
            xa, xl = _labels(grid.axes[a])
            ya, yl = _labels(grid.axes[b])
            _set_ticks(ax, "x", xa, xl)
            _set_ticks(ax, "y", ya, yl)
            ax.set_xlabel(_label(a))
            ax.set_ylabel(_label(b))
        return fig

    caption = (
        "Which assignments have a result: the share of the rows of each "
        + ("cell" if pairs else "value")
        + " that is done (1: complete, 0: nothing yet). Rows that failed count as missing."
    )
    if stale:
        caption += " Rows computed by an older version of the task file count as not done."
    return _draw("Rows done and missing", caption, "coverage of the grid", draw)


# -- other spaces ----------------------------------------------------------------------


def _scatter(sample: Sample, output: str, params: list[str], total: int) -> Plot:
    keys = [k for k in params if k in sample.columns and _drawable(sample.columns[k])][:MAX_PANELS]
    y = np.asarray(sample.columns[output], dtype=np.float64)

    def draw():
        fig, axes = _figure(max(1, len(keys)))
        for ax, key in zip(axes, keys):
            x, labels = _values(sample.columns[key])
            ax.plot(x, y, ".", ms=2, alpha=0.5, color="C0", label="rows")
            gone = sample.missing.get(key)
            if gone is not None and len(gone) and _drawable(gone):
                mx, _ = _values(gone, labels)
                ax.plot(
                    mx,
                    np.zeros(len(mx)),
                    "|",
                    color=MISSING_COLOR,
                    ms=8,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                    label="missing",
                )
            if labels is not None:
                _set_ticks(ax, "x", np.arange(len(labels), dtype=float), labels)
            ax.set_xlabel(_label(key))
            ax.set_ylabel(_label(output))
        _legend(fig, axes, markerscale=3)
        return fig

    kept = len(y)
    how = (
        f"all {kept:,} current rows"
        if sample.step == 1
        else f"a regular subsample: one stored row in every {sample.step:,}, {kept:,} of {total:,}"
    )
    caption = f"{output} against each parameter (scatter; the space is not a grid), {how}."
    if sample.missing:
        n = len(next(iter(sample.missing.values())))
        every = f"one in every {sample.missing_step}, " if sample.missing_step > 1 else ""
        caption += (
            " Red ticks on the axis mark missing assignments (not run, or failed; "
            f"{every}{n} drawn)."
        )
    return _draw(f"{output} by parameter", caption, f"scatter plots of {output}", draw)


def _drawable(column: np.ndarray) -> bool:
    column = np.asarray(column)
    return column.ndim == 1 and column.dtype.kind in "biufU"


def _values(column: np.ndarray, labels: list[str] | None = None):
    """Return x values of a column: numbers as they are, str as indices of their sorted values."""
    column = np.asarray(column)
    if column.dtype.kind in "biuf":
        return column.astype(np.float64), None
    if labels is None:
        labels = sorted(set(column.tolist()))
    where = {v: i for i, v in enumerate(labels)}
    return np.array([where.get(v, np.nan) for v in column.tolist()], dtype=np.float64), [
        _label(v) for v in labels
    ]


def draw_plots(data: ReportData) -> list[Plot]:
    """Return every figure of the report of `data` (none when there is nothing to draw)."""
    outputs = data.plotted_outputs[:MAX_OUTPUTS]
    plots: list[Plot] = []
    if data.grid is not None and data.grid.axes:
        coverage = _coverage(data.grid, data.rows_stale)
        if coverage is not None:
            plots.append(coverage)
        for output in outputs:
            if output not in data.grid.lines:
                continue
            plots.append(_grid_lines(data.grid, output))
            if data.grid.pairs:
                plots.append(_heatmaps(data.grid, output))
    elif data.sample is not None and data.sample.kept():
        for output in outputs:
            if output in data.sample.columns:
                plots.append(_scatter(data.sample, output, data.params, data.rows_stored))
    return plots
