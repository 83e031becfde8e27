"""The smallest useful sweep: square every x on a grid of 1,000 values.

Run it from the repository root with ``psy run --taskdir examples/psy-tasks``;
the results land in ``psy-work/square/result.pkl``.
"""

from psyrun import Param

pspace = Param(x=range(1000))
max_jobs = 4


def execute(x):
    return {"y": x * x}
