"""asv benchmarks: per-row random generators (psyrun.rng).

The cases mirror benchmarks/report_rng.py, which prints each figure as a
ratio to NumPy creating a generator.
"""

import numpy as np

from psyrun import Param, row_rng, row_seeds
from psyrun.mapper import evaluate_block

from .report_rng import drawing, plain


class RowGenerators:
    params = [10**3, 10**4]
    param_names = ["rows"]

    def setup(self, rows):
        space = (
            Param(x=np.linspace(0, 1, rows // 10))
            * Param(method=["a", "b"])
            * Param(seed=range(5))
        )
        self.arrays = space.to_arrays()
        self.keys = list(self.arrays)
        self.rows = [
            dict(zip(self.keys, values))
            for values in zip(*(self.arrays[k].tolist() for k in self.keys))
        ]
        self.seeds = row_seeds(1, self.arrays)

    def time_numpy_default_rng(self, rows):
        for seed in self.seeds:
            np.random.default_rng(seed)

    def time_row_rng(self, rows):
        for row in self.rows:
            row_rng(1, **row)

    def time_row_seeds(self, rows):
        row_seeds(1, self.arrays)

    def time_evaluate_block_plain(self, rows):
        evaluate_block(plain, self.arrays, self.keys)

    def time_evaluate_block_rng(self, rows):
        evaluate_block(drawing, self.arrays, self.keys, rng_seed=1)
