"""W3: sum(sin(x) * exp(-x * x) + tanh(x) ** 2) over 1,000,000 float64 values: one
forward+backward, memory and transcendental bound (target: tapegrad <= 1.0x torch)."""
import numpy as np

from .common import LIBS, load

N = 1_000_000
_READY = {}


def step(lib, x):
    y = (lib.sin(x) * lib.exp(-x * x) + lib.tanh(x) ** 2).sum()
    y.backward()
    x.grad = None
    return y


def leaf(lib):
    """W3's input: N standard normal float64 values that require grad."""
    return lib.tensor(np.random.default_rng(0).standard_normal(N), dtype=lib.float64, requires_grad=True)


def ready(name):
    """One warmed-up input per process (asv re-runs setup before every timed call)."""
    if name not in _READY:
        lib = load(name)
        x = leaf(lib)
        for _ in range(3):
            step(lib, x)
        _READY[name] = (lib, x)
    return _READY[name]


class W3Elementwise:
    params = LIBS
    param_names = ["lib"]
    number = 2
    repeat = 10
    warmup_time = 0

    def setup(self, name):
        self.lib, self.x = ready(name)

    def time_forward_backward(self, name):
        step(self.lib, self.x)
