"""Seeded random programs that compose the op surface, compared with torch: the output, the
gradient of every input (jitted backward), and the create_graph path against the jitted one.

Every value in a program has shape (3, 4); each step picks an op from OPS and operands from the
values so far. The ops change shapes inside (broadcasting, reductions with keepdim, matmul,
cat, indexing, einsum) and return to (3, 4), so any op can follow any other. Ops whose gradient
is undefined at ties or kinks are fed values where that has probability zero.
"""
import numpy as np
import pytest

import tapegrad as tg

torch = pytest.importorskip("torch")

IDX = [2, 0, 1]

# name: (arity, fn(lib, F, *values))
OPS = {
    "add_row": (2, lambda lib, F, x, y: x + y.mean(0)),
    "mul_col": (2, lambda lib, F, x, y: x * y.sum(1, keepdim=True).tanh()),
    "div": (2, lambda lib, F, x, y: x / (1 + y * y)),
    "sub_scalar": (1, lambda lib, F, x: 0.5 - x),
    "pow": (2, lambda lib, F, x, y: (x * x + 0.5) ** y.sigmoid()),
    "tanh": (1, lambda lib, F, x: x.tanh()),
    "sin_exp": (1, lambda lib, F, x: x.sin() * (-x * x).exp()),
    "sigmoid_mul": (2, lambda lib, F, x, y: x.sigmoid() * y),
    "softplus": (1, lambda lib, F, x: F.softplus(x, beta=2.0)),
    "gelu": (1, lambda lib, F, x: F.gelu(x)),
    "leaky": (1, lambda lib, F, x: F.leaky_relu(x, 0.2)),
    "abs_log1p": (1, lambda lib, F, x: x.abs().log1p()),
    "rsqrt": (1, lambda lib, F, x: (x * x + 1).rsqrt()),
    "maximum": (2, lambda lib, F, x, y: lib.maximum(x, y)),
    "where": (2, lambda lib, F, x, y: lib.where(x > y, x * y, y - x)),
    "softmax": (1, lambda lib, F, x: x.softmax(-1)),
    "log_softmax": (1, lambda lib, F, x: x.log_softmax(0) * 0.3),
    "logsumexp": (2, lambda lib, F, x, y: x - y.logsumexp(1, keepdim=True)),
    "normalize": (1, lambda lib, F, x: x / (x.norm(dim=1, keepdim=True) + 0.1)),
    "standardize": (1, lambda lib, F, x: (x - x.mean(0)) / (x.std(0) + 0.5)),
    "amax": (2, lambda lib, F, x, y: x * y.amax(0, keepdim=True)),
    "max_dim": (2, lambda lib, F, x, y: x + y.max(1, keepdim=True).values),
    "prod": (1, lambda lib, F, x: x * (x.tanh() + 1.5).prod(0)),
    "cumsum": (1, lambda lib, F, x: x.cumsum(1) * 0.5),
    "matmul": (2, lambda lib, F, x, y: (x @ y.t()).tanh() @ x * 0.3),
    "einsum": (2, lambda lib, F, x, y: lib.einsum("ij,kj->ik", x, y).softmax(-1) @ y),
    "bmm": (2, lambda lib, F, x, y: lib.bmm(x.unsqueeze(0), y.t().unsqueeze(0)).squeeze(0) @ x * 0.2),
    "outer_sum": (2, lambda lib, F, x, y: (x.unsqueeze(0) * y.unsqueeze(1)).sum(1) * 0.3),
    "cat_slices": (2, lambda lib, F, x, y: lib.cat([x[:, :1], y[:, 1:3], x[:, 3:]], 1)),
    "stack_mean": (2, lambda lib, F, x, y: lib.stack([x, y, x * y]).mean(0)),
    "flip_perm": (1, lambda lib, F, x: x.flip(0)[IDX]),
    "transpose": (1, lambda lib, F, x: x.t().reshape(4, 3).t().contiguous().reshape(3, 4)),
    "gather": (1, lambda lib, F, x: x.gather(1, lib.tensor([[3, 0, 1, 1], [2, 2, 0, 3], [1, 0, 3, 2]]))),
    "index_select": (1, lambda lib, F, x: x.index_select(0, lib.tensor(IDX))),
    "scatter_add": (2, lambda lib, F, x, y: x.scatter_add(1, lib.tensor([[0, 0, 1, 3]] * 3), y)),
    "masked": (1, lambda lib, F, x: x.masked_fill(x > 0.8, 0.8)),
    "repeat_split": (1, lambda lib, F, x: x.repeat(1, 2).split(4, 1)[1] * x),
    "chunk_expand": (1, lambda lib, F, x: x.chunk(3, 0)[1].expand(3, 4) + x),
    "setitem": (2, lambda lib, F, x, y: _setitem(x * 1, y)),
    "inplace": (2, lambda lib, F, x, y: (x * 1).mul_(y.tanh()).add_(y, alpha=0.5)),
    "view_inplace": (1, lambda lib, F, x: _view_inplace(x * 1)),
}


def _setitem(z, y):
    z[1] = y[2] * 0.5
    return z


def _view_inplace(z):
    z[:, 1:3].mul_(2.0)
    return z


def build(seed, steps=8):
    """A program: the number of inputs and a list of (op name, operand indices)."""
    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(1, 4))
    names = sorted(OPS)
    prog, nvals = [], n_in
    for _ in range(steps):
        name = names[int(rng.integers(len(names)))]
        arity = OPS[name][0]
        prog.append((name, [int(rng.integers(nvals)) for _ in range(arity)]))
        nvals += 1
    return n_in, prog


def run(lib, seed, inputs, weights):
    n_in, prog = build(seed)
    xs = [lib.tensor(a, dtype=lib.float64, requires_grad=True) for a in inputs]
    vals = list(xs)
    for name, args in prog:
        vals.append(OPS[name][1](lib, lib.nn.functional, *[vals[k] for k in args]))
    loss = sum((v * lib.tensor(w)).sum() for v, w in zip(vals[n_in:], weights))
    return xs, loss


def _data(seed):
    n_in, prog = build(seed)
    rng = np.random.default_rng(1000 + seed)
    inputs = [rng.standard_normal((3, 4)) for _ in range(n_in)]
    weights = [rng.standard_normal((3, 4)) for _ in prog]
    return inputs, weights


SEEDS = range(60)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_program_against_torch(seed):
    inputs, weights = _data(seed)
    xs, loss = run(tg, seed, inputs, weights)
    txs, tloss = run(torch, seed, inputs, weights)
    assert np.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-10, atol=1e-10)
    loss.backward()
    tloss.backward()
    for k, (x, tx) in enumerate(zip(xs, txs)):
        assert (x.grad is None) == (tx.grad is None), f"input {k}"
        if x.grad is not None:
            np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-8, atol=1e-10,
                                       err_msg=f"input {k} of {build(seed)}")


@pytest.mark.parametrize("seed", SEEDS[:20])
def test_random_program_create_graph_path_agrees(seed):
    inputs, weights = _data(seed)
    xs, loss = run(tg, seed, inputs, weights)
    jitted = tg.autograd.grad(loss, xs, retain_graph=True, allow_unused=True)
    recorded = tg.autograd.grad(loss, xs, create_graph=True, allow_unused=True)
    for a, b in zip(jitted, recorded):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_every_op_is_drawn():
    drawn = {name for seed in SEEDS for name, _ in build(seed)[1]}
    assert drawn == set(OPS)
