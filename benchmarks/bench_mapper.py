"""asv benchmarks: mapping functions over parameter spaces."""

from psyrun import Param, map_pspace, map_pspace_parallel
from psyrun.utils.example import square


def trivial(x):
    return {"y": x}


class MapPspace:
    params = [10**3, 10**5]
    param_names = ["rows"]

    def setup(self, rows):
        self.space = Param(x=list(range(rows)))

    def time_map_pspace(self, rows):
        map_pspace(trivial, self.space)


class MapPspaceParallel:
    timeout = 120

    def setup(self):
        self.space = Param(x=list(range(10**4)))
        # Worker processes import the function by module name: the asv suite is
        # not importable there, so use psyrun's own example function.
        map_pspace_parallel(square, Param(x=[1, 2]), n_jobs=2)

    def time_map_pspace_parallel(self):
        map_pspace_parallel(square, self.space, n_jobs=2)
