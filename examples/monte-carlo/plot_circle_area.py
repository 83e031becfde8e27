"""Plot the results of the circle-area sweep (run ``psy run`` here first).

Usage, from ``examples/monte-carlo``::

    psy run && python plot_circle_area.py circle_area.png

Needs ``pip install "psyrun[analysis]" matplotlib``. The documentation's
recipe page shows the same steps and the figure this script makes.
"""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import numpy as np

from psyrun.results import load_xarray


def main(output: str = "circle_area.png") -> None:
    ds = load_xarray("circle_area")
    estimate = ds.a_frac.mean("trial")
    spread = ds.a_frac.std("trial")
    fig, ax = plt.subplots(figsize=(6, 4))
    estimate.plot(ax=ax, marker="o", linestyle="none", label="Monte Carlo (mean of 30 trials)")
    ax.fill_between(ds.radius, estimate - spread, estimate + spread, alpha=0.3, label="± 1 s.d.")
    ax.plot(ds.radius, np.pi * ds.radius**2 / 4, color="k", label=r"$\pi r^2 / 4$")
    ax.set_ylabel("fraction of points inside")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:])
