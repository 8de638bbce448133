"""P6a, P6b: per-sample gradients, vmap(grad(loss)), tapegrad's batched replay beside torch.func.

- P6a: an MLP 16-64-64-1 (tanh, MSE), batch 512, float32: the parameters shared (in_dims None),
  one sample and target per row.
- P6a with modules: the same MLP as torch.func's tutorial writes it, nn.Linear layers and
  functional_call over their parameters (each layer multiplies by weight.t()).
- P6b: a damped oscillator x'' = -k x - c x' integrated by 50 explicit Euler steps of size dt
  (k, c, dt the three parameters; about 350 scalar ops per sample), loss x(T)^2 + v(T)^2; batch
  256 initial states, float64.
"""
import numpy as np

from . import bench_ratios
from .common import LIBS, load

MLP = (16, 64, 64, 1)
STEPS = 50


def mlp_loss(lib):
    def loss(params, x, y):
        w1, b1, w2, b2, w3, b3 = params
        h = (w1 @ x + b1).tanh()
        h = (w2 @ h + b2).tanh()
        return ((w3 @ h + b3 - y) ** 2).mean()
    return loss


def oscillator_loss(lib):
    def loss(p, state):
        k, c, dt = p[0], p[1], p[2]
        x, v = state[0], state[1]
        for _ in range(STEPS):
            a = -k * x - c * v
            x, v = x + dt * v, v + dt * a
        return x * x + v * v
    return loss


def _func(lib):
    return lib.func


def p6a(name):
    """(per-sample-gradient call, its arguments) for P6a."""
    lib = load(name)
    rng = np.random.default_rng(0)
    params = tuple(lib.tensor((rng.standard_normal(s) / np.sqrt(s[-1])).astype(np.float32))
                   for a, b in zip(MLP, MLP[1:]) for s in ((b, a), (b,)))
    x = lib.tensor(rng.standard_normal((512, MLP[0])).astype(np.float32))
    y = lib.tensor(rng.standard_normal((512, 1)).astype(np.float32))
    F = _func(lib)
    return F.vmap(F.grad(mlp_loss(lib)), in_dims=(None, 0, 0)), (params, x, y)


def p6a_modules(name):
    """(per-sample-gradient call, its arguments) for P6a written with nn.Linear and functional_call."""
    lib = load(name)
    nn, F = lib.nn, _func(lib)
    model = nn.Sequential(*[m for a, b in zip(MLP, MLP[1:]) for m in (nn.Linear(a, b), nn.Tanh())][:-1])
    rng = np.random.default_rng(0)
    params = {k: lib.tensor((rng.standard_normal(tuple(v.shape)) / np.sqrt(v.shape[-1])).astype(np.float32))
              for k, v in model.named_parameters()}
    x = lib.tensor(rng.standard_normal((512, MLP[0])).astype(np.float32))
    y = lib.tensor(rng.standard_normal((512, 1)).astype(np.float32))

    def loss(p, x, y):
        return ((F.functional_call(model, p, (x.unsqueeze(0),)) - y) ** 2).mean()
    return F.vmap(F.grad(loss), in_dims=(None, 0, 0)), (params, x, y)


def p6b(name):
    lib = load(name)
    rng = np.random.default_rng(1)
    p = lib.tensor(np.array([2.0, 0.3, 0.02]))
    states = lib.tensor(rng.standard_normal((256, 2)))
    F = _func(lib)
    return F.vmap(F.grad(oscillator_loss(lib)), in_dims=(None, 0)), (p, states)


class P6aPerSampleMLP:
    params = LIBS
    param_names = ["lib"]
    number = 5
    repeat = 20
    warmup_time = 0

    def setup(self, name):
        self.fn, self.args = p6a(name)
        self.fn(*self.args)  # records (tapegrad)

    def time_per_sample_grad(self, name):
        self.fn(*self.args)


class P6bPerSampleOscillator:
    params = LIBS
    param_names = ["lib"]
    number = 1
    repeat = 20
    warmup_time = 0

    def setup(self, name):
        self.fn, self.args = p6b(name)
        self.fn(*self.args)

    def time_per_sample_grad(self, name):
        self.fn(*self.args)


class RatioToTorchFunc:
    unit = "tapegrad/torch.func"
    timeout = 300
    warmup_time = 0

    def setup(self):
        load("torch")

    def _ratio(self, make, k):
        (a, xa), (b, xb) = make("tapegrad"), make("torch")
        a(*xa), b(*xb)
        return bench_ratios.alternating_ratio(lambda: a(*xa), lambda: b(*xb), k=k)

    def track_p6a(self):
        return self._ratio(p6a, k=10)

    def track_p6a_modules(self):
        return self._ratio(p6a_modules, k=10)

    def track_p6b(self):
        return self._ratio(p6b, k=5)
