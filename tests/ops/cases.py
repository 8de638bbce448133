"""One case per row of the op table (``tapegrad.ops.TABLE``), the one place a new row's tests go.

``CASES`` maps each row name to a ``Case``: programs written once for both libraries (``lib`` is
tapegrad or torch) that record the row, with their inputs' shapes, a sampler for values inside the
op's domain, and the tolerances the checks use.

- ``first``: a program whose output is a tensor, checked at first order by test_rows.py:
  recorded, central finite differences in float64, torch, the jitted adjoint against the
  differentiable VJP, and what a backward frees. ``None`` for three rows whose first order is
  checked elsewhere (a VJP's row, the create_graph walk's, a custom Function's): ``why`` says where.
- ``higher``: a program whose output is a scalar, differentiated three times by
  test_higher_order.py, so that the row's VJP is itself differentiated. Where it is the first
  program cubed, squared or summed, a rule (``cubed``, ``squared``, ``summed``) says so.
- ``alone``: where ``first`` runs other ops too, the row with nothing else, for the saved-set
  tests (its own saved set decides: x + 1 replays, x * 2 does not); same inputs as ``first``.

A row without an entry fails ``test_every_row_has_a_case``: a new op is not done until it is here.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


# samplers: (rng, shape) -> float64 values inside the op's domain; a test draws a case's inputs in
# order from a fresh generator of its own seed, so each test sees the same values on every run
def normal(rng, shape):
    return rng.standard_normal(shape)


def positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def away_from_zero(rng, shape):
    return rng.uniform(0.3, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def uniform(low, high):
    return lambda rng, shape: rng.uniform(low, high, shape)


@dataclass(frozen=True)
class Program:
    fn: Callable  # fn(lib, *inputs)
    shapes: tuple
    sampler: Callable
    eps: float = 1e-6  # finite-difference step (programs through float32 need coarser ones)
    fd_rtol: float = 1e-5  # against finite differences
    torch_rtol: float = 1e-10  # against torch

    def inputs(self, seed):
        rng = np.random.default_rng(seed)
        return [self.sampler(rng, s) for s in self.shapes]


@dataclass(frozen=True)
class Case:
    first: Optional[Program]
    higher: Program
    alone: Optional[Callable] = None
    why: str = ""  # where first order is checked when ``first`` is None


@dataclass(frozen=True)
class Rule:
    """The higher-order program derived from the first-order one."""
    derive: Callable


cubed = Rule(lambda f: lambda lib, *xs: (f(lib, *xs) ** 3).sum())
squared = Rule(lambda f: lambda lib, *xs: (f(lib, *xs) ** 2).sum())
summed = Rule(lambda f: lambda lib, *xs: f(lib, *xs).sum())


def case(first, shapes, sampler, higher, *, higher_shapes=None, higher_sampler=None, alone=None, why="",
         first_tol=None, higher_tol=None):
    """first(lib, *inputs) over inputs of these shapes from sampler; higher: a program (on the same
    inputs unless higher_shapes / higher_sampler say otherwise) or a Rule applied to first."""
    if isinstance(higher, Rule):
        higher = higher.derive(first)
    return Case(first=None if first is None else Program(first, tuple(shapes), sampler, **(first_tol or {})),
                higher=Program(higher, tuple(higher_shapes or shapes), higher_sampler or sampler,
                               **(higher_tol or {})),
                alone=alone, why=why)


# -- helpers the programs share --------------------------------------------------------------------
def _grad_at(lib, f, x, v):
    """f's gradient at x along v, recorded (create_graph); a plain value when x needs no grad."""
    track = x.requires_grad
    with lib.enable_grad():
        xr = x if track else x.detach().requires_grad_()
        g = lib.autograd.grad(f(xr), xr, v, create_graph=True)[0]
    return g if track else g.detach()


def _setitem(lib, x, y):
    z = x * 1
    z[1] = y.exp()
    return z


def _setitem_mask(lib, x, y, value=lambda y: y.sum()):
    z = x * 1
    z[x > 0] = value(y)
    return z


def _assign(z, key, v):
    z[key] = v
    return z


_FUNCTIONS = {}


def cube_function(lib):
    """A custom Function whose backward is written in ops (differentiable again)."""
    if lib.__name__ not in _FUNCTIONS:
        class Cube(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x * x * x

            @staticmethod
            def backward(ctx, g):
                x, = ctx.saved_tensors
                return g * 3 * x * x

        _FUNCTIONS[lib.__name__] = Cube
    return _FUNCTIONS[lib.__name__]


CASES = {
    "add": case(lambda lib, x, y: x + y, [(2, 3), (2, 3)], normal, cubed),
    "sub": case(lambda lib, x, y: x - y, [(2, 3), (2, 3)], normal, lambda lib, x, y: ((x - y) ** 3 * x).sum()),
    "mul": case(lambda lib, x, y: x * y, [(2, 3), (2, 3)], normal, lambda lib, x, y: (x * y * x * y).sum(),
                alone=lambda lib, x, y: x * y.detach()),  # (torch saves y only, for x's gradient)
    "div": case(lambda lib, x, y: x / y, [(2, 3), (2, 3)], away_from_zero, summed,
                alone=lambda lib, x, y: x.detach() / y),
    "pow": case(lambda lib, x, y: x ** y, [(2, 3), (2, 3)], positive, summed),
    "add_scalar": case(lambda lib, x: 1.5 + x, [(3,)], normal, cubed),
    "rsub_scalar": case(lambda lib, x: 2.0 - x, [(3,)], normal, cubed),
    "sub_scalar": case(lambda lib, x: x - 1.5, [(3,)], normal, cubed),
    "mul_scalar": case(lambda lib, x: x * 3.0, [(3,)], normal, cubed),
    "scale": case(lambda lib, x, y: x.sub(y, alpha=2.5), [(3,), (3,)], normal,
                  lambda lib, x, y: (x.add(y * y, alpha=-2.5) ** 3).sum()),
    "div_scalar": case(lambda lib, x: x / 3.0, [(3,)], normal, cubed),
    "pow_scalar": case(lambda lib, x: x ** 3, [(3,)], normal,
                       lambda lib, x: (x ** 4).sum() + (x ** 2.5).sum() * 0, higher_sampler=positive),
    "rpow_scalar": case(lambda lib, x: 2.0 ** x, [(3,)], normal, lambda lib, x: (2.0 ** (x * x)).sum()),
    "neg": case(lambda lib, x: -x, [(3,)], normal, cubed),
    "reciprocal": case(lambda lib, x: 2.0 / x, [(3,)], away_from_zero, summed),
    "exp": case(lambda lib, x: x.exp(), [(2, 2)], normal, lambda lib, x: (x * x).exp().sum()),
    "log": case(lambda lib, x: x.log(), [(2, 2)], positive, summed),
    "sin": case(lambda lib, x: x.sin(), [(2, 2)], normal, summed),
    "cos": case(lambda lib, x: x.cos(), [(2, 2)], normal, summed),
    "tanh": case(lambda lib, x: x.tanh(), [(2, 2)], normal, summed),
    "sigmoid": case(lambda lib, x: x.sigmoid(), [(2, 2)], normal, summed),
    "relu": case(lambda lib, x: x.relu(), [(2, 3)], away_from_zero, cubed),
    "sqrt": case(lambda lib, x: x.sqrt(), [(2, 2)], positive, summed),
    "abs": case(lambda lib, x: x.abs(), [(2, 3)], away_from_zero, cubed),
    "sum": case(lambda lib, x: x.sum(), [(2, 3)], normal, lambda lib, x: x.sum() ** 3),
    "sum_dim": case(lambda lib, x: x.sum(-1, keepdim=True) * x.sum((0, 2)).sum(), [(2, 3, 4)], normal,
                    lambda lib, x: (x.sum(-1, keepdim=True) ** 3 * x.sum((0, 2)).sum()).sum(),
                    alone=lambda lib, x: x.sum(-1)),
    "mean": case(lambda lib, x: x.mean(), [(2, 3)], normal, lambda lib, x: x.mean() ** 3),
    "mean_dim": case(lambda lib, x: x.mean(1), [(2, 3, 4)], normal, cubed, alone=lambda lib, x: x.mean((0, 2))),
    "expand": case(lambda lib, x, y: x * y + x.expand(4, 2, 3), [(2, 3), (4, 1, 3)], normal, cubed,
                   alone=lambda lib, x, y: x.expand(4, 2, 3)),
    "mm": case(lambda lib, x, y: x @ y, [(3, 4), (4, 2)], normal, cubed, alone=lambda lib, x, y: x.detach() @ y),
    "view": case(lambda lib, x: x.view(3, 2).reshape(6), [(2, 3)], normal, cubed),
    "unsqueeze": case(lambda lib, x: x.unsqueeze(1).sin(), [(2, 3)], normal, lambda lib, x: (x.unsqueeze(1) ** 3).sum(),
                      alone=lambda lib, x: x.unsqueeze(1)),
    "squeeze": case(lambda lib, x: x.squeeze(1).sin(), [(2, 1, 3)], normal, lambda lib, x: (x.squeeze(1) ** 3).sum(),
                    alone=lambda lib, x: x.squeeze(1)),
    "permute": case(lambda lib, x: x.permute(2, 0, 1).exp(), [(2, 3, 4)], normal,
                    lambda lib, x: (x.permute(2, 0, 1).exp() * x.permute(2, 0, 1)).sum(),
                    alone=lambda lib, x: x.permute(2, 0, 1)),
    "transpose": case(lambda lib, x: x.transpose(0, 2).exp(), [(2, 3, 4)], normal,
                      lambda lib, x, y: ((x.transpose(0, 1) @ y) ** 3).sum(), higher_shapes=[(4, 3), (4, 2)],
                      alone=lambda lib, x: x.transpose(0, 2)),
    "t": case(lambda lib, x, y: x.t() @ y, [(4, 3), (4, 2)], normal, cubed, alone=lambda lib, x, y: x.t()),
    "select": case(lambda lib, x: x[1] * x[0, 2], [(2, 3)], normal, lambda lib, x: (x[1] ** 3 * x[0, 2]).sum(),
                   alone=lambda lib, x: x[1]),
    "slice": case(lambda lib, x: x[:, 1:3].exp(), [(2, 4)], normal, lambda lib, x: (x[:, 1:3] ** 3).sum(),
                  alone=lambda lib, x: x[:, 1:3]),
    "index": case(lambda lib, x: x[[0, 2, 2]].exp(), [(3, 2)], normal, lambda lib, x: (x[[0, 2, 2]] ** 3).sum(),
                  alone=lambda lib, x: x[[0, 2, 2]]),
    "alias": case(lambda lib, x: x[...].exp(), [(2, 2)], normal, lambda lib, x: (x[...] ** 3).sum(),
                  alone=lambda lib, x: x[...]),
    "index_unsqueeze": case(lambda lib, x: x[None].exp(), [(2, 2)], normal, lambda lib, x: (x[None] ** 3).sum(),
                            alone=lambda lib, x: x[None]),
    # the VJP of getitem: recorded by the first derivative, differentiated by the second and third
    "scatter_flat": case(None, [(4,)], normal, lambda lib, x: (x[1:3] ** 3).sum() * x[[0]].sum(),
                         why="test_rows.py's test_scatter_flat_through_double_backward"),
    # the create_graph walk's sum of x's gradients from two runs of it: a scatter and an add_run
    "add_run": case(None, [(5,)], normal, lambda lib, x: ((x[1:] - x[:-1]) ** 3).sum() * x[0],
                    why="test_rows.py's add_run tests (torch, the scatter it replaces, its regions)"),
    "index_put": case(lambda lib, x, y: _setitem(lib, x, y), [(2, 3), (3,)], normal,
                      lambda lib, x, y: (_setitem(lib, x, y) ** 2).sin().sum(),
                      alone=lambda lib, x, y: _assign(x.clone(), 1, y)),
    "to": case(lambda lib, x: (x.float() * 2).double(), [(3,)], normal, cubed, alone=lambda lib, x: x.float(),
               first_tol=dict(eps=1e-2, fd_rtol=1e-3), higher_tol=dict(torch_rtol=1e-5, fd_rtol=1e-3, eps=1e-3)),
    "clone": case(lambda lib, x: x.clone().exp(), [(3,)], normal, lambda lib, x: (x.clone() ** 3).sum(),
                  alone=lambda lib, x: x.clone()),
    "to_device": case(None, [(3,)], normal, lambda lib, x: (x.to("cpu") ** 3).sum(),
                      why="tests/cuda/test_rows.py (a copy between devices takes a GPU tensor)"),
    "function": case(None, [(3,)], normal, lambda lib, x: cube_function(lib).apply(x.sin()).sum(),
                     why="a custom autograd.Function's row: tests/autograd/test_function.py"),
    # the full op surface (issue 3); broadcasting, keepdim and dtypes are covered in test_surface.py
    "rsqrt": case(lambda lib, x: x.rsqrt(), [(2, 3)], positive, summed),
    "log1p": case(lambda lib, x: x.log1p(), [(2, 3)], positive, summed),
    "expm1": case(lambda lib, x: x.expm1(), [(2, 3)], normal, squared),
    "tan": case(lambda lib, x: x.tan(), [(2, 3)], uniform(-1.0, 1.0), summed, higher_sampler=uniform(-0.8, 0.8)),
    "erf": case(lambda lib, x: lib.erf(x), [(2, 3)], normal, summed),
    "leaky_relu": case(lambda lib, x: lib.nn.functional.leaky_relu(x, 0.1), [(2, 3)], away_from_zero, cubed),
    "gelu": case(lambda lib, x: lib.nn.functional.gelu(lib.nn.functional.gelu(x, approximate="tanh")), [(2, 3)],
                 normal,
                 lambda lib, x: (lib.nn.functional.gelu(x) + lib.nn.functional.gelu(x, approximate="tanh") ** 2).sum()),
    "softplus": case(lambda lib, x: lib.nn.functional.softplus(x * 4, beta=2, threshold=3), [(2, 3)], away_from_zero,
                     lambda lib, x: lib.nn.functional.softplus(x * 4, beta=2, threshold=3).pow(2).sum(),
                     alone=lambda lib, x: lib.nn.functional.softplus(x, beta=2, threshold=3)),
    "clamp": case(lambda lib, x: x.clamp(min=-0.9).clamp(-0.5, 0.5), [(2, 4)], away_from_zero, cubed),
    "sign": case(lambda lib, x: (x * 2).sign(), [(2, 3)], away_from_zero,
                 lambda lib, x: ((x * 2).sign() * x ** 3).sum(), alone=lambda lib, x: x.sign()),
    "maximum": case(lambda lib, x, y: lib.maximum(x, y), [(2, 3), (3,)], normal, cubed),
    "atan2": case(lambda lib, x, y: lib.atan2(x, y) + x.atan2(y[0]) + lib.arctan2(y[0], x), [(2, 3), (3,)],
                  away_from_zero, lambda lib, x, y: (lib.atan2(x, y) * x).sum()),
    "hypot": case(lambda lib, x, y: lib.hypot(x, y) + y[1].hypot(x), [(2, 3), (3,)], away_from_zero,
                  lambda lib, x, y: (lib.hypot(x, y) * y).sum()),
    "minimum": case(lambda lib, x, y: lib.minimum(x, y), [(2, 1), (2, 3)], normal, cubed),
    "where": case(lambda lib, x, y: lib.where(x > 0, x, y), [(2, 3), (2, 1)], normal, cubed,
                  alone=lambda lib, x, y: lib.where(lib.tensor([[True, False, True], [False, True, False]]), x, y)),
    "masked_fill": case(lambda lib, x: x.masked_fill(x > 0.5, 2.0), [(2, 3)], normal, cubed),
    "prod": case(lambda lib, x: x.prod(), [(2, 3)], normal, lambda lib, x: x.prod() ** 2),
    "prod_dim": case(lambda lib, x: x.prod(-1, keepdim=True), [(2, 3, 4)], normal, squared),
    "max": case(lambda lib, x: x.max(), [(2, 3)], normal, lambda lib, x: x.max() ** 3),
    "min": case(lambda lib, x: x.min(), [(2, 3)], normal, lambda lib, x: x.min() ** 3),
    "amax": case(lambda lib, x: x.amax((0, -1), keepdim=True), [(2, 3, 4)], normal, cubed),
    "amin": case(lambda lib, x: x.amin(1), [(2, 3, 4)], normal, cubed),
    "max_dim": case(lambda lib, x: x.max(-1).values, [(2, 3, 4)], normal, cubed),
    "min_dim": case(lambda lib, x: x.min(0, keepdim=True)[0], [(2, 3)], normal, cubed),
    "norm": case(lambda lib, x: x.norm(dim=-1), [(2, 3)], normal, cubed),
    "cumsum": case(lambda lib, x: x.cumsum(-2), [(2, 3, 2)], normal, cubed),
    "softmax": case(lambda lib, x: x.softmax(-1), [(2, 4)], normal, squared),
    "log_softmax": case(lambda lib, x: x.log_softmax(0), [(3, 2)], normal, squared),
    "bmm": case(lambda lib, x, y: lib.bmm(x, y), [(2, 3, 4), (2, 4, 2)], normal, cubed),
    "unsafe_view": case(lambda lib, x, y: x @ y, [(2, 3, 4), (4, 2)], normal, cubed),
    "cat": case(lambda lib, x, y: lib.cat([x, y, x], 1), [(2, 3), (2, 2)], normal, cubed),
    "stack": case(lambda lib, x, y: lib.stack([x, y], -1), [(2, 3), (2, 3)], normal, cubed),
    "repeat": case(lambda lib, x: x.repeat(2, 1, 2), [(2, 3)], normal, cubed),
    "flip": case(lambda lib, x: x.flip(0, -1), [(2, 3)], normal, lambda lib, x: (x.flip(0, -1) ** 3 * x).sum()),
    "index_select": case(lambda lib, x: x.index_select(-1, lib.tensor([2, 0, 2])), [(2, 3)], normal, cubed),
    "gather": case(lambda lib, x: x.gather(1, lib.tensor([[0, 2], [1, 1]])), [(2, 3)], normal, cubed),
    "split": case(lambda lib, x: x.split(2, -1)[1], [(2, 5)], normal, cubed),
    "unbind": case(lambda lib, x: (lambda a, b, c: a * b + c)(*x.unbind(1)), [(2, 3)], normal,
                   lambda lib, x: (lambda a, b, c: (a * b ** 2 * c.exp()).sum())(*x.unbind(1))),
    "scatter_add": case(lambda lib, x, y: x.scatter_add(1, lib.tensor([[0, 2, 0]]), y), [(2, 3), (1, 3)], normal, cubed,
                        # (src needs none)
                        alone=lambda lib, x, y: x.scatter_add(1, lib.tensor([[0, 2, 0]]), y.detach())),
    "copy": case(lambda lib, x, y: (x * 1).copy_(y), [(2, 3), (3,)], normal,
                 lambda lib, x, y: ((x * 1).copy_(y) ** 3 * x).sum(), alone=lambda lib, x, y: x.clone().copy_(y)),
    "zero": case(lambda lib, x: (x * 1).zero_(), [(2, 3)], normal,
                 lambda lib, x: (((x * 1).zero_() + x * x) ** 3).sum(), alone=lambda lib, x: x.clone().zero_()),
    "fill": case(lambda lib, x: (x * 1).fill_(2.0), [(2, 3)], normal,
                 lambda lib, x: (((x * 1).fill_(2.0) + x * x) ** 3).sum(), alone=lambda lib, x: x.clone().fill_(2.0)),
    "index_put_advanced": case(lambda lib, x, y: _setitem_mask(lib, x, y), [(2, 3), (3,)], normal,
                               lambda lib, x, y: (_setitem_mask(lib, x, y, lambda y: (y * y).sum()) ** 2).sin().sum(),
                               alone=lambda lib, x, y: _assign(x.clone(), x.detach() > 0, y.sum())),
    "nll_loss": case(lambda lib, x, y: lib.nn.functional.cross_entropy(
        x + y, lib.tensor([2, 0, 1, 2]), weight=lib.tensor([0.5, 2.0, 1.0], dtype=lib.float64), ignore_index=1),
        [(4, 3), (3,)], normal,
        lambda lib, x: lib.nn.functional.cross_entropy(x * x, lib.tensor([2, 0, 1])), higher_shapes=[(3, 4)],
        alone=lambda lib, x, y: lib.nn.functional.nll_loss(x, lib.tensor([2, 0, 1, 2]), reduction="none")),
    # gradients as torch's ops of their own: at first order recorded by create_graph (the gradient
    # along y); at higher order recorded by the first derivative and differentiated twice
    "threshold_backward": case(lambda lib, x, y: _grad_at(lib, lambda t: t.relu(), x, y), [(2, 3), (2, 3)],
                               away_from_zero, lambda lib, x: ((x * x - 0.5).relu() ** 2).sum(),
                               higher_shapes=[(2, 3)]),
    "leaky_relu_backward": case(
        lambda lib, x, y: _grad_at(lib, lambda t: lib.nn.functional.leaky_relu(t, 0.1), x, y), [(2, 3), (2, 3)],
        away_from_zero, lambda lib, x: (lib.nn.functional.leaky_relu(x * x - 0.5, 0.2) ** 2).sum(),
        higher_shapes=[(2, 3)]),
    "nll_loss_backward": case(lambda lib, x, y: _grad_at(lib, lambda t: lib.nn.functional.nll_loss(
        t, lib.tensor([2, 0, 1]), reduction="none"), x, y), [(3, 4), (3,)], normal,
        lambda lib, x: lib.nn.functional.nll_loss((x * x).log_softmax(1), lib.tensor([2, 0, 1]), reduction="sum") ** 2,
        higher_shapes=[(3, 4)]),
    "var": case(lambda lib, x: x.var(1, keepdim=True) + x.var(correction=0), [(2, 3)], normal,
                lambda lib, x: (x.var(1) ** 2).sum() + x.var() ** 2),
    "std_root": case(lambda lib, x: x.std(0), [(2, 3)], normal,
                     lambda lib, x: (x.std(0) ** 3).sum() + x.std(correction=0)),
}


# Rows that only a GPU tensor records (on the CPU their program records none): tests/cuda checks them.
GPU_ONLY = {"to_device"}
