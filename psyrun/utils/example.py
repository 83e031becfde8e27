"""Example functions for the documentation and tests.

They live in an importable module so that they can be pickled and sent to
worker processes (see :func:`psyrun.mapper.map_pspace_parallel`).
"""

from __future__ import annotations


def square(x):
    """Return the square of `x` as a result dictionary.

    Parameters
    ----------
    x : number
        Value to square.

    Returns
    -------
    dict
        ``{'y': x ** 2}``.
    """
    return {"y": x**2}
