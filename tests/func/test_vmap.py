"""vmap's semantics against torch.func.vmap and against a Python loop: in_dims (int, None, nested,
negative), out_dims, tuple outputs, randomness modes, chunk_size, and torch's errors."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad import func


def _loop(f, args, dims):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    outs = [f(*[a if d is None else a.select(d, b) for a, d in zip(args, dims)]) for b in range(size)]
    return tg.stack(outs)


def test_in_dims_int_none_negative():
    x, y = tg.randn(4, 3), tg.randn(3, 4)
    f = lambda a, b: (a * b).sin() + a
    np.testing.assert_array_equal(func.vmap(f, in_dims=(0, 1))(x, y).numpy(), _loop(f, [x, y], [0, 1]).numpy())
    np.testing.assert_array_equal(func.vmap(f, in_dims=(0, -1))(x, y).numpy(), _loop(f, [x, y], [0, 1]).numpy())
    w = tg.randn(3)
    np.testing.assert_array_equal(func.vmap(f, in_dims=(0, None))(x, w).numpy(), _loop(f, [x, w], [0, None]).numpy())


def test_nested_in_dims_and_non_tensor_arguments():
    torch = pytest.importorskip("torch")
    xs = np.random.default_rng(0).standard_normal((2, 3))
    v = np.random.default_rng(1).standard_normal(3)

    def f(d, s):
        return d["a"][0] * d["a"][1] * s

    for lib, vm in ((tg, func.vmap), (torch, torch.func.vmap)):
        out = vm(f, in_dims=({"a": [0, None]}, None))({"a": [lib.tensor(xs), lib.tensor(v)]}, 2.0)
        if lib is tg:
            mine = out.numpy()
        else:
            np.testing.assert_allclose(mine, out.numpy())


def test_out_dims_and_tuple_outputs_against_torch():
    torch = pytest.importorskip("torch")
    xs = np.random.default_rng(0).standard_normal((2, 3, 4))
    f = lambda x: (x.sum(0), x * 2, x[0])
    for out_dims in (0, 1, -1, (0, 1, 0), (1, 2, -2)):
        mine = func.vmap(f, out_dims=out_dims)(tg.tensor(xs))
        theirs = torch.func.vmap(f, out_dims=out_dims)(torch.tensor(xs))
        for a, b in zip(mine, theirs):
            assert tuple(a.shape) == tuple(b.shape)
            np.testing.assert_allclose(a.numpy(), b.numpy())
    a, b = func.vmap(lambda x: (x, 3), out_dims=(0, None))(tg.ones(2, 3))
    assert b == 3 and tuple(a.shape) == (2, 3)
    c = func.vmap(lambda x: x.sum() * 0 + tg.ones(2), out_dims=None)(tg.ones(3, 2))
    assert tuple(c.shape) == (2,)


def test_nested_vmap_and_chunk_size():
    x = tg.randn(3, 4, 5)
    f = lambda r: r.exp().sum()
    out = func.vmap(func.vmap(f), chunk_size=2)(x)
    np.testing.assert_allclose(out.numpy(), x.exp().sum(-1).numpy(), rtol=1e-6)


def test_vmap_is_differentiable():
    x = tg.randn(4, 3, requires_grad=True)
    func.vmap(lambda r: (r * r).sum())(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.detach().numpy(), rtol=1e-6)


def test_randomness_modes():
    x = tg.zeros(5)
    with pytest.raises(RuntimeError, match="vmap: called random operation while in randomness error mode"):
        func.vmap(lambda r: r + tg.rand(()))(x)
    with pytest.raises(RuntimeError, match="randomness error mode"):
        func.vmap(lambda r: r * tg.randn(4), randomness="error")(tg.ones(2, 4))
    same = func.vmap(lambda r: r + tg.rand(()), randomness="same")(x).numpy()
    assert np.all(same == same[0])
    diff = func.vmap(lambda r: r + tg.rand(()), randomness="different")(x).numpy()
    assert len(set(diff.tolist())) == 5
    tg.manual_seed(3)
    a = tg.rand(())
    tg.manual_seed(3)
    assert func.vmap(lambda r: r + tg.rand(()), randomness="same")(x).numpy()[0] == a.item()
    tg.randn(3)  # the generator is back in place after an error
    with pytest.raises(RuntimeError, match="Only allowed values for randomness"):
        func.vmap(lambda r: r, randomness="foo")


@pytest.mark.parametrize("call, error, words", [
    (lambda: func.vmap(lambda x, y: x + y)(tg.ones(2, 3), tg.ones(3, 3)), ValueError,
     r"Expected all tensors to have the same size in the mapped dimension, got sizes \[2, 3\]"),
    (lambda: func.vmap(lambda x: x, in_dims=2)(tg.ones(2, 3)), ValueError, "expected in_dim to satisfy -2 <= in_dim < 2"),
    (lambda: func.vmap(lambda x: x, in_dims=-3)(tg.ones(2, 3)), ValueError, "in_dim"),
    (lambda: func.vmap(lambda x: 1.0)(tg.ones(2, 3)), ValueError, "must only return Tensors"),
    (lambda: func.vmap(lambda x: x, in_dims=(0, 0))(tg.ones(2, 3)), ValueError, "in_dims is not compatible"),
    (lambda: func.vmap(lambda x: x, in_dims=None)(tg.ones(2, 3)), ValueError, "expected `in_dims` to be int"),
    (lambda: func.vmap(lambda x: x, in_dims=[0])(tg.ones(2, 3)), ValueError, "expected `in_dims` to be int"),
    (lambda: func.vmap(lambda x: x, in_dims=(None,))(tg.ones(2, 3)), ValueError, "at least one Tensor"),
    (lambda: func.vmap(lambda x: x)(1.0), ValueError, "We cannot vmap over non-Tensor arguments"),
    (lambda: func.vmap(lambda x: x)(), ValueError, "got no inputs"),
    (lambda: func.vmap(lambda x: (x, x), out_dims=(0, 0, 0))(tg.ones(2, 3)), ValueError, "out_dims is not compatible"),
    (lambda: func.vmap(lambda x: x, out_dims="a")(tg.ones(2, 3)), ValueError, "`out_dims` must be an int"),
    (lambda: func.vmap(lambda x: x, out_dims=None)(tg.ones(2, 3) * tg.arange(2.0)[:, None]), ValueError,
     "can not return a BatchedTensor when out_dim is None"),
    (lambda: func.vmap(lambda x: x, chunk_size=0), ValueError, "chunk_size should be None or greater than 0"),
])
def test_errors_as_torch(call, error, words):
    with pytest.raises(error, match=words):
        call()


@pytest.mark.parametrize("call", [
    lambda lib, vm: vm(lambda x, y: x + y)(lib.ones(2, 3), lib.ones(3, 3)),
    lambda lib, vm: vm(lambda x: x, in_dims=2)(lib.ones(2, 3)),
    lambda lib, vm: vm(lambda x: 1.0)(lib.ones(2, 3)),
    lambda lib, vm: vm(lambda x: x, in_dims=(0, 0))(lib.ones(2, 3)),
    lambda lib, vm: vm(lambda x: x)(1.0),
])
def test_errors_are_torchs_type(call):
    torch = pytest.importorskip("torch")
    with pytest.raises(Exception) as theirs:
        call(torch, torch.func.vmap)
    with pytest.raises(Exception) as mine:
        call(tg, func.vmap)
    assert type(mine.value) is type(theirs.value)
