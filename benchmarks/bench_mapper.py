"""asv benchmarks: mapping functions over parameter spaces (psyrun.mapper).

The cases mirror benchmarks/report_mapper.py, which prints each figure next
to its target from the issues (the mapper row path against a plain loop, the
vectorized path against NumPy alone).
"""

import numpy as np

from psyrun import Param, map_pspace, map_pspace_parallel
from psyrun.mapper import evaluate_block
from psyrun.utils.example import square

from .report_mapper import (
    affine,
    evaluate_each,
    grid_fn,
    grid_loop,
    grid_space,
    plain_blocks,
    plain_loop,
    results_blocks,
    rows_as_dicts,
    trivial,
)


class MapPspace:
    params = [10**3, 10**5, 10**6]
    param_names = ["rows"]
    timeout = 120

    def setup(self, rows):
        self.space = Param(x=list(range(rows)))
        self.xs = list(range(rows))

    def time_map_pspace(self, rows):
        map_pspace(trivial, self.space)

    def time_plain_loop(self, rows):
        plain_loop(self.xs)

    def time_iter_results_blocks(self, rows):
        results_blocks(trivial, self.space)

    def time_plain_loop_blocks(self, rows):
        plain_blocks(self.xs)


class MapPspaceProduct:
    """Row by row over the 10^6-row product of three Params, against itertools.product."""

    timeout = 120

    def setup(self):
        self.space = grid_space()
        self.lists = [list(range(100)), [i * 0.5 for i in range(100)], list(range(100))]

    def time_map_pspace(self):
        map_pspace(grid_fn, self.space)

    def time_plain_loop(self):
        grid_loop(*self.lists)


class EvaluateRows:
    """``evaluate_rows`` on decoded blocks of dict rows, against the plain loop."""

    timeout = 120

    def setup(self):
        self.blocks = rows_as_dicts(Param(x=list(range(10**5))))
        self.xs = list(range(10**5))

    def time_evaluate_rows(self):
        evaluate_each(trivial, self.blocks)

    def time_plain_loop(self):
        plain_loop(self.xs)


class MapPspaceVectorized:
    params = [10**5, 10**7]
    param_names = ["rows"]
    timeout = 120

    def setup(self, rows):
        self.space = Param(a=np.arange(rows // 1000, dtype=float)) * Param(
            b=np.arange(1000, dtype=float)
        )
        arrays = self.space.to_arrays()
        self.a, self.b = arrays["a"], arrays["b"]

    def time_map_pspace_vectorized(self, rows):
        map_pspace(affine, self.space, vectorized=True)

    def time_numpy_alone(self, rows):
        self.a * self.b + 0.5

    def peakmem_map_pspace_vectorized(self, rows):
        map_pspace(affine, self.space, vectorized=True)


class EvaluateBlock:
    """One block as the backends' process jobs evaluate it."""

    params = [[False, True]]
    param_names = ["vectorized"]

    def setup(self, vectorized):
        space = Param(a=np.arange(64.0)) * Param(b=np.arange(256.0))
        self.arrays = space.to_arrays()
        self.keys = space.keys()

    def time_evaluate_block(self, vectorized):
        evaluate_block(affine, self.arrays, self.keys, vectorized=vectorized)


class MapPspaceParallel:
    timeout = 120

    def setup(self):
        self.space = Param(x=list(range(10**4)))
        # Worker processes import the function by module name: the asv suite is
        # not importable there, so use psyrun's own example function.
        map_pspace_parallel(square, Param(x=[1, 2]), n_jobs=2)

    def time_map_pspace_parallel(self):
        map_pspace_parallel(square, self.space, n_jobs=2)
