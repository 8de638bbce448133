"""Blocked runs of engine/cpu/interp.replay_packed: rows whose adjoints are elementwise over more than BLOCK
elements are replayed block by block, the gradients that live only inside the run in scratch.
Each gradient must equal, bit for bit, the one of the unblocked replay (a hook on the loss sends
the backward through interp.replay, which never blocks), and match torch."""
import numpy as np
import pytest

import tapegrad as tg

kernels = pytest.importorskip("tapegrad.engine.cpu.interp")
torch = pytest.importorskip("torch")

N = 3 * kernels.BLOCK + 123  # three whole blocks and a part
RNG = np.random.default_rng(7)
A = RNG.uniform(-2, 2, N)
B = RNG.uniform(0.5, 2, N)  # positive: log, sqrt, pow's base
W = RNG.standard_normal(N)
F = tg.nn.functional

# name: fn(lib, F, x, z) on N-element float64 tensors (z > 0); every op of BLOCKABLE's rows
CHAINS = {
    "w3": lambda lib, F, x, z: lib.sin(x) * lib.exp(-x * x) + lib.tanh(x) ** 2,
    "add_sub_x_x": lambda lib, F, x, z: (x + x) - (z - x) + z,
    "mul_div": lambda lib, F, x, z: x * z / (z + x * x) * (x * x),
    "pow": lambda lib, F, x, z: z ** x + z ** 3 + 2 ** x,
    "scalars": lambda lib, F, x, z: (3 - x) * 0.5 / 3 + 1,
    "unary": lambda lib, F, x, z: (x.cos() + z.log() + z.sqrt() + x.abs() + z.rsqrt() + z.log1p() + x.expm1()
                                   + (x * 0.5).tan() + x.reciprocal() + x.sigmoid() + x.relu()),
    "activations": lambda lib, F, x, z: (F.leaky_relu(x, 0.1) + F.gelu(x) + F.gelu(x, approximate="tanh")
                                         + F.softplus(x, beta=2.0) + x.clamp(-1, 1) + lib.erf(x)),
    "select": lambda lib, F, x, z: (lib.maximum(x, z - 1) + lib.minimum(x, z) + lib.where(x > 0, x * z, -x)
                                    + x.masked_fill(x > 1, 0.5)),
    # one slot as both operands (the second write adds to the first), and a broadcast operand
    # (written through a scratch that bsum folds back)
    "select_same_slot": lambda lib, F, x, z: (lib.where(x > 0, x, x) * lib.maximum(x, x) + lib.minimum(z, z)
                                              + lib.where(x > 0.5, z, z.mean()) + lib.maximum(x, z.mean())
                                              + z ** z + x.masked_fill(x > 1, 0.5) * x),
    "views_sign": lambda lib, F, x, z: x.reshape(3, -1).reshape(-1).clone() * x.sign() + x * 1,
    "cast": lambda lib, F, x, z: (x.float() * 2).double() * z,
    "mean": lambda lib, F, x, z: lib.exp(x) * z,
}


def grads(lib, name, hook=False):
    x = lib.tensor(A, dtype=lib.float64, requires_grad=True)
    z = lib.tensor(B, dtype=lib.float64, requires_grad=True)
    out = CHAINS[name](lib, lib.nn.functional, x, z)
    loss = out.mean() if name == "mean" else (out * lib.tensor(W)).sum()
    if hook:
        loss.register_hook(lambda g: None)  # a hooked tape replays unblocked (interp.replay)
    loss.backward()
    return [None if t.grad is None else t.grad.numpy() for t in (x, z)]


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_blocked_run_equals_unblocked_and_torch(name):
    blocked, plain, want = grads(tg, name), grads(tg, name, hook=True), grads(torch, name)
    for b, p, w in zip(blocked, plain, want):
        assert (b is None) == (p is None) == (w is None)
        if b is None:
            continue
        np.testing.assert_array_equal(b, p)
        np.testing.assert_allclose(b, w, rtol=1e-6 if name == "cast" else 1e-12, atol=1e-12)


def test_gradient_written_above_the_run_is_kept():
    """tanh's output gets a gradient from a broadcasting mul above the run (not blockable): the run
    below must accumulate into it, not take it for its own scratch."""
    def run(lib, hook=False):
        x = lib.tensor(A, dtype=lib.float64, requires_grad=True)
        h = x.tanh()
        loss = (h * h.sum() * 1e-3).sum() + (h.exp() * lib.tensor(W)).sum()
        if hook:
            loss.register_hook(lambda g: None)
        loss.backward()
        return x.grad.numpy()
    np.testing.assert_array_equal(run(tg), run(tg, hook=True))
    np.testing.assert_allclose(run(tg), run(torch), rtol=1e-12, atol=1e-12)


def test_two_runs_of_different_sizes_and_a_float32_graph():
    """A run over N elements, a reshape-free broadcast in between, a run over 2N; and the same in
    float32 (the interpreter's float32 dtype)."""
    for dt, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        def run(lib, hook=False):
            x = lib.tensor(A.astype(dt), requires_grad=True)
            big = lib.cat([x, x.sin()])  # 2N elements
            y = (big.exp() * big).tanh() * 0.5
            loss = (y.sum() + (x.cos() * x.cos()).sum()) * 2.0
            if hook:
                loss.register_hook(lambda g: None)
            loss.backward()
            return x.grad.numpy()
        got = run(tg)
        assert got.dtype == dt
        np.testing.assert_array_equal(got, run(tg, hook=True))
        np.testing.assert_allclose(got, run(torch), rtol=tol, atol=tol)


def test_retained_graph_and_second_backward():
    x = tg.tensor(A, requires_grad=True)
    loss = (x.sin() * x.exp()).sum()
    loss.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * first)
    np.testing.assert_allclose(first, np.cos(A) * np.exp(A) + np.sin(A) * np.exp(A), rtol=1e-14, atol=1e-15)


# -- split backwards: a tape whose rows are all elementwise over N values, in ranges over threads --
@pytest.fixture
def split_ranges(monkeypatch):
    """Backwards split at test sizes (from 64 elements) over two threads; counts the ranges run."""
    from tapegrad import parallel
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 64)
    ranges = []
    part = kernels.replay_part
    monkeypatch.setattr(kernels, "replay_part", lambda *args: ranges.append(args[2]) or part(*args))
    threads = tg.get_num_threads()
    tg.set_num_threads(2)
    yield ranges
    tg.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_a_split_backward_equals_the_whole_one(name, split_ranges):
    """Each chain's gradients, in two ranges of N on two threads where every row is elementwise
    (a broadcast mean keeps the backward whole; a mean loss is a sum's row), bit for bit the
    one-thread ones."""
    split = grads(tg, name)
    assert len(split_ranges) == (0 if name == "select_same_slot" else 2)
    tg.set_num_threads(1)
    whole = grads(tg, name)
    for s, w in zip(split, whole):
        assert (s is None) == (w is None)
        if s is not None:
            np.testing.assert_array_equal(s, w)


def test_a_split_backward_accumulates_and_frees_as_a_whole_one(split_ranges):
    """Seeds of N values, a leaf's .grad added to, retain_graph, then the graph freed; and float32."""
    for dt in (np.float64, np.float32):
        x = tg.tensor(A.astype(dt), requires_grad=True)
        y = x.sin() * x.exp() + x
        g = tg.tensor(W.astype(dt))
        y.backward(g, retain_graph=True)
        first = x.grad.numpy().copy()
        assert len(split_ranges) == 2 and first.dtype == dt
        y.backward(g)
        np.testing.assert_array_equal(x.grad.numpy(), 2 * first)
        want = W * (np.cos(A) * np.exp(A) + np.sin(A) * np.exp(A) + 1)
        np.testing.assert_allclose(first, want, rtol=1e-5 if dt == np.float32 else 1e-13, atol=1e-6)
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            y.backward(g)
        split_ranges.clear()
