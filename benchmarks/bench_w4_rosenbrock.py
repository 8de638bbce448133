"""W4: Rosenbrock on n = 10,000 float64 variables: the gradient, and a Hessian-vector product by
double backward (``g = grad(f, x, create_graph=True); hvp = grad(dot(g, v), x)``).

Both timings include the forward pass. Each library runs the same code; compare tapegrad with
torch in the same run. Targets: hvp <= 0.7x torch's, and tapegrad's hvp / gradient <= 2.5
(``track_hvp_over_gradient``; torch's is about 2.4).

The dot product is written ``(g * v).sum()``, the same value: on the 2-core CI machine torch.dot
(MKL, two OpenMP threads) takes about 7 ms instead of 3 us once torch's autograd threads have run,
which would make the comparison meaningless.
"""
import timeit

import numpy as np

from .common import LIBS, load

N = 10_000


def rosenbrock(x):
    a, b = x[:-1], x[1:]
    return (100.0 * (b - a * a) ** 2 + (1.0 - a) ** 2).sum()


def gradient(lib, x):
    return lib.autograd.grad(rosenbrock(x), x)[0]


def hvp(lib, x, v):
    (g,) = lib.autograd.grad(rosenbrock(x), x, create_graph=True)
    return lib.autograd.grad((g * v).sum(), x)[0]


class W4Rosenbrock:
    params = LIBS
    param_names = ["lib"]
    number = 20
    repeat = 10

    def setup(self, name):
        self.lib = load(name)
        rng = np.random.default_rng(0)
        self.x = self.lib.tensor(rng.standard_normal(N), dtype=self.lib.float64, requires_grad=True)
        self.v = self.lib.tensor(rng.standard_normal(N), dtype=self.lib.float64)
        hvp(self.lib, self.x, self.v)  # compiles (or loads from cache) once

    def time_gradient(self, name):
        gradient(self.lib, self.x)

    def time_hvp(self, name):
        hvp(self.lib, self.x, self.v)

    def track_hvp_over_gradient(self, name):
        """Cost of an hvp in gradients (best of 7 rounds of 20 each)."""
        g = min(timeit.repeat(lambda: gradient(self.lib, self.x), number=20, repeat=7))
        h = min(timeit.repeat(lambda: hvp(self.lib, self.x, self.v), number=20, repeat=7))
        return h / g

    track_hvp_over_gradient.unit = "ratio"
