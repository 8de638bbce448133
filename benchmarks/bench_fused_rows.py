"""Why some composites are rows: each pair times the fused row against the same function written
in primitive ops (DESIGN.md: a composite stays a composite unless a row is measurably faster).

- cross-entropy (W2's loss, 64 x 10): log_softmax and nll_loss rows against max/sub/exp/sum/log
  and an index-map gather with mean;
- sin on 1,000,000 float64 values (W3): the vectorised kernel against NumPy's libm loop, forward
  and backward.
"""
import numpy as np

from .common import load


def composite_cross_entropy(tg, x, y):
    m = tg.tensor(np.max(x.detach().numpy(), axis=1, keepdims=True))  # untracked shift
    z = x - m
    logp = z - tg.log(tg.exp(z).sum(1, keepdim=True))
    picked = logp[np.arange(x.shape[0]), y.numpy()]
    return -picked.mean()


class CrossEntropyRows:
    params = ["row", "composite"]
    param_names = ["form"]
    number = 200
    repeat = 10
    warmup_time = 0

    def setup(self, form):
        self.tg = load("tapegrad")
        rng = np.random.default_rng(0)
        self.x = self.tg.tensor(rng.standard_normal((64, 10)).astype(np.float32), requires_grad=True)
        self.y = self.tg.tensor(rng.integers(0, 10, 64))
        self.fn = (lambda x, y: self.tg.nn.functional.cross_entropy(x, y)) if form == "row" else \
            (lambda x, y: composite_cross_entropy(self.tg, x, y))
        self.time_forward_backward(form)

    def time_forward_backward(self, form):
        self.fn(self.x * 1.0, self.y).backward()
        self.x.grad = None


class SinKernel:
    params = ["vectorised", "libm"]
    param_names = ["kernel"]
    number = 3
    repeat = 10
    warmup_time = 0

    def setup(self, kernel):
        self.tg = load("tapegrad")
        from tapegrad.jit import forward
        self.kernels = forward
        self.a = np.random.default_rng(0).standard_normal(1_000_000)
        forward.sin_forward(self.a[:1])  # compiles (or loads from cache) once, as the other
        forward.cos_forward(self.a[:1])  # benchmarks' setups do: a quick run times one call

    def time_forward(self, kernel):
        if kernel == "vectorised":
            self.kernels.sin_forward(self.a)
        else:
            np.sin(self.a)

    def time_adjoint(self, kernel):
        # the adjoint's work: g * cos(x) accumulated into a buffer
        g = np.ones_like(self.a)
        if kernel == "vectorised":
            g *= self.kernels.cos_forward(self.a)
        else:
            g *= np.cos(self.a)
