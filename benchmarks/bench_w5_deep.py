"""W5: 50 layers of Linear(32, 32) + tanh, batch 8, float32, loss = sum: one forward+backward of
many small ops, where per-op overhead dominates (target: tapegrad <= 0.4x torch)."""
import numpy as np

from .common import LIBS, load

DEPTH, WIDTH, BATCH = 50, 32, 8
_READY = {}


def params(lib, seed=0):
    rng = np.random.default_rng(seed)
    ps = []
    for _ in range(DEPTH):
        w = (rng.uniform(-1, 1, (WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        b = rng.uniform(-0.1, 0.1, WIDTH).astype(np.float32)
        ps.append((lib.tensor(w, requires_grad=True), lib.tensor(b, requires_grad=True)))
    return ps


def step(lib, ps, x):
    h = x
    for w, b in ps:
        h = (h @ w + b).tanh()
    loss = h.sum()
    loss.backward()
    for w, b in ps:
        w.grad = b.grad = None
    return loss


def batch(lib):
    """W5's input: BATCH x WIDTH float32 values."""
    return lib.tensor(np.random.default_rng(1).standard_normal((BATCH, WIDTH)).astype(np.float32))


def ready(name):
    """One warmed-up model per process (asv re-runs setup before every timed call)."""
    if name not in _READY:
        lib = load(name)
        ps = params(lib)
        x = batch(lib)
        for _ in range(3):
            step(lib, ps, x)
        _READY[name] = (lib, ps, x)
    return _READY[name]


class W5Deep:
    params = LIBS
    param_names = ["lib"]
    number = 20
    repeat = 10
    warmup_time = 0

    def setup(self, name):
        self.lib, self.ps, self.x = ready(name)

    def time_forward_backward(self, name):
        step(self.lib, self.ps, self.x)
