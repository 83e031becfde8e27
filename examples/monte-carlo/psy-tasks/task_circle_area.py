"""Monte Carlo estimate of the area of a circle, over a grid of radii.

Points drawn uniformly in the square [-1, 1]^2 fall inside the circle of
radius r (r <= 1) with probability pi r^2 / 4. Each assignment draws
``n_points`` points for one radius and one trial and records the fraction that
fell inside; averaging over trials gives the estimate, and the spread over
trials its error. Every assignment seeds its own generator from its
parameters, so results do not depend on which job computed them.

Run it from ``examples/monte-carlo`` with ``psy run``; the results go to
``psy-work/circle_area/result.npz``. ``plot_circle_area.py`` plots them.
"""

import numpy as np

from psyrun import Param
from psyrun.store.npz import NpzStore

pspace = Param(radius=np.linspace(0.0, 1.0, 21)) * Param(trial=np.arange(30))
store = NpzStore()
max_jobs = 6
min_items = 50


def execute(radius, trial):
    n_points = 2000
    rng = np.random.default_rng([trial, round(radius * 1000)])
    points = rng.uniform(-1.0, 1.0, size=(n_points, 2))
    inside = np.hypot(points[:, 0], points[:, 1]) < radius
    a_frac = inside.mean()
    return {"a_frac": a_frac, "error": a_frac - np.pi * radius**2 / 4.0}
