"""asv benchmarks: sampling spaces (psyrun.sampling, issue 24).

The cases mirror benchmarks/report_sampling.py, which prints each figure next
to its target from the issue. scipy is needed for the quasi-random designs;
without it those benchmarks are skipped (asv skips a setup that raises
NotImplementedError).
"""

import numpy as np

from psyrun import Param, Random, Sobol


def _needs_scipy():
    try:
        import scipy.stats.qmc  # noqa: F401
    except ImportError:
        raise NotImplementedError("scipy is not installed") from None


class SobolDraw:
    """2**k Sobol' points in 3-d, through psyrun and through scipy directly."""

    params = [16, 18, 20]
    param_names = ["log2_n"]

    def setup(self, log2_n):
        _needs_scipy()
        self.n = 2**log2_n
        self.space = Sobol(self.n, seed=1, a=(0, 1), b=(-1, 1), c=(2, 3))
        self.space.to_arrays(0, 2)  # make the engine outside the timing

    def time_psyrun_to_arrays(self, log2_n):
        self.space.to_arrays()

    def time_scipy_random(self, log2_n):
        from scipy.stats import qmc

        qmc.Sobol(3, rng=1).random(self.n)


class SobolRandomRows:
    """1000 random rows of Sobol(2**20) * grid(1000)."""

    def setup(self):
        _needs_scipy()
        self.space = Sobol(2**20, seed=1, a=(0, 1), b=(-1, 1), c=(1e-3, 1, "log")) * Param(
            k=np.arange(1000)
        )
        self.rows = np.random.default_rng(0).integers(0, len(self.space), 1000)
        self.space.take(self.rows[:2])

    def time_take_1000(self):
        self.space.take(self.rows)


class RandomDraw:
    """10**6 rows of Random in 3-d against NumPy's default generator."""

    def setup(self):
        self.space = Random(10**6, seed=1, a=(0, 1), b=(-1, 1), c=(2, 3))
        self.space.to_arrays()  # compile the kernel outside the timing

    def time_psyrun_to_arrays(self):
        self.space.to_arrays()

    def time_numpy_random(self):
        np.random.default_rng(1).random((10**6, 3))

    def time_take_1000_rows(self):
        self.space.take(np.arange(0, 10**6, 1000))
