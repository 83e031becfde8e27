"""asv benchmarks: the lazy parameter-space engine (psyrun.pspace).

The cases mirror benchmarks/report_pspace.py, which prints each figure next
to its target from the issue.
"""

import itertools

import numpy as np

from psyrun.pspace import Param, missing


def product_1e6():
    return Param(a=np.arange(100)) * Param(b=np.arange(100) * 0.5) * Param(c=np.arange(100))


def product_1e12():
    space = Param(p0=np.arange(100))
    for i in range(1, 6):
        space = space * Param(**{f"p{i}": np.arange(100)})
    return space


class Product:
    def setup(self):
        self.space = product_1e6()

    def time_build(self):
        self.space.build()

    def time_to_arrays(self):
        self.space.to_arrays()

    def time_iterate(self):
        for _ in self.space.iterate():
            pass

    def time_iterate_floor(self):
        # The same dicts from itertools.product in a generator: the least a
        # lazy iterator of dicts costs (report_pspace.iterate_figures).
        a, b, c = list(range(100)), [i * 0.5 for i in range(100)], list(range(100))

        def rows():
            for x, y, z in itertools.product(a, b, c):
                yield {"a": x, "b": y, "c": z}

        for _ in rows():
            pass

    def peakmem_build(self):
        self.space.build()


class RandomAccess:
    def setup(self):
        self.space = product_1e12()
        rng = np.random.default_rng(0)
        self.picks = rng.integers(0, len(self.space), 1000).tolist()
        self.rows = rng.integers(0, len(self.space), 10**6)

    def time_getitem_1000(self):
        for i in self.picks:
            self.space[i]

    def time_take_1e6(self):
        self.space.take(self.rows)

    def track_pickle_bytes(self):
        import pickle

        return len(pickle.dumps(self.space))

    track_pickle_bytes.unit = "bytes"


class Concatenation:
    def setup(self):
        space = Param(k0=np.arange(10**4))
        for i in range(1, 10):
            space = space + Param(**{f"k{i}": np.arange(10**4)})
        self.space = space

    def time_build(self):
        self.space.build()


class Difference:
    timeout = 120
    params = [10**4, 10**5]
    param_names = ["subtracted"]

    def setup(self, subtracted):
        self.space = product_1e6()
        rows = np.random.default_rng(1).choice(len(self.space), subtracted, replace=False)
        self.subtrahend = Param(**self.space.take(rows))
        # Compile the kernels outside the timed region.
        len(self.space - self.subtrahend)

    def time_difference_len_and_head(self, subtracted):
        d = self.space - self.subtrahend
        len(d)
        d.to_arrays(0, 1000)


class Missing:
    timeout = 120

    def setup(self):
        self.space = product_1e6()
        rows = np.random.default_rng(2).choice(len(self.space), 5 * 10**5, replace=False)
        self.results = self.space.take(rows)
        self.results["y"] = np.zeros(len(rows))
        len(missing(self.space, self.results))

    def time_missing(self):
        len(missing(self.space, self.results))


class Sample:
    def setup(self):
        self.space = product_1e12()

    def time_sample_1e4_build(self):
        self.space.sample(10**4, seed=0).build()


def timeraw_import_pspace():
    return "import psyrun.pspace"
