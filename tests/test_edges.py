"""Autograd at the edges, as torch has it: views from integer indexing, cat with legacy empty
tensors, and reductions over a dim differentiated twice through non-leaves.

Tests taking the ``lib`` fixture are user code run on tapegrad and (when installed) on torch, so the
behaviour asserted is torch's.
"""
import math

import numpy as np
import pytest

import tapegrad as tg


@pytest.fixture(params=["tapegrad", "torch"])
def lib(request):
    if request.param == "torch":
        return pytest.importorskip("torch")
    return tg


def val(t):
    return np.asarray(t.detach().tolist(), dtype=np.float64)


def same(t, expected):
    """Equal values, inf and nan in the same places (and zeros of either sign)."""
    np.testing.assert_array_equal(val(t), np.asarray(expected, dtype=np.float64))


# -- integer indexing gives views ------------------------------------------------------------------
def test_int_index_of_a_vector_is_a_zero_dim_view(lib):
    x = lib.tensor([1.0, 2.0, 3.0])
    y = x[0]
    assert y.shape == () and y._version == 0
    y.add_(1)
    x[2].mul_(5)
    same(x, [2.0, 2.0, 15.0])
    same(y, 2.0)
    assert x._version == 2 and y._version == 2
    x[0] = 7.0  # and the other way round
    same(y, 7.0)


def test_int_index_view_of_a_matrix(lib):
    x = lib.arange(6.0).view(2, 3)
    row, one, other = x[1], x[0, 1], x.t()[2, 0]
    one.fill_(-1.0)
    row.mul_(2)
    other.zero_()
    same(x, [[0.0, -1.0, 0.0], [6.0, 8.0, 10.0]])
    same(row, [6.0, 8.0, 10.0])


def test_write_through_int_index_view_reaches_the_gradient(lib):
    x0 = lib.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=lib.float64, requires_grad=True)
    x = x0 * 1
    y = x[0, 0]
    y.mul_(2)
    x[1].mul_(3)
    x[1][2].add_(x0[0, 1])
    assert x.grad_fn.name().endswith("CopySlices")
    (x * x).sum().backward()
    same(x, [[2.0, 2.0, 3.0], [12.0, 15.0, 20.0]])
    same(x0.grad, [[8.0, 4.0 + 40.0, 6.0], [72.0, 90.0, 120.0]])


def test_int_index_of_a_tensor_requiring_grad(lib):
    x = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x[1]
    assert y.grad_fn.name() == "SelectBackward0" and y.shape == ()
    (y * 3).backward()
    same(x.grad, [0.0, 3.0, 0.0])
    with pytest.raises(RuntimeError, match="view of a leaf Variable that requires grad"):
        x[0].add_(1)


def test_write_through_int_index_view_after_save_raises(lib):
    x0 = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x = x0.exp()  # saves its result
    x[1].mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        x.sum().backward()
    x = x0 * 1
    y = x[-1]
    w = y * y  # saves y, a view of x
    x[2].add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        w.backward()


def test_write_through_int_index_view_then_create_graph(lib):
    x0 = lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64, requires_grad=True)
    x = x0 * 1
    x[0].mul_(2)
    (g,) = lib.autograd.grad(x.pow(3).sum(), x0, create_graph=True)
    (h,) = lib.autograd.grad(g.sum(), x0)
    same(g, [24.0, 12.0, 27.0])
    same(h, [48.0, 12.0, 18.0])


# -- cat and stack with empty pieces ------------------------------------------------------------
@pytest.mark.parametrize("shapes", [[(0,), (2, 3)], [(2, 3), (0,)], [(0,), (2,)], [(0,), (0,)], [(0,)]])
def test_cat_with_a_legacy_empty_piece_that_requires_grad(lib, shapes):
    # torch leaves a 1-D empty tensor out of the value, but it stays an input of the node
    empty = lib.zeros(0, dtype=lib.float64, requires_grad=True)
    pieces = [empty if s == (0,) else lib.ones(s, dtype=lib.float64) * 2 for s in shapes]
    out = lib.cat(pieces, 0)
    assert out.requires_grad and out.grad_fn.name() == "CatBackward0"
    (g,) = lib.autograd.grad((out * 3).sum(), empty, retain_graph=True)
    assert g.shape == (0,)
    out.sum().backward()
    assert empty.grad.shape == (0,)


def test_cat_with_many_empty_pieces_along_a_later_dim(lib):
    a = lib.ones(2, 3, dtype=lib.float64, requires_grad=True)
    es = [lib.zeros(0, dtype=lib.float64, requires_grad=True) for _ in range(5)]
    out = lib.cat([es[0], a, es[1], es[2], es[3], a * 2, es[4]], 1)
    assert out.shape == (2, 6)
    grads = lib.autograd.grad((out * out).sum(), [a] + es, create_graph=True)
    same(grads[0], np.full((2, 3), 10.0))
    assert [tuple(g.shape) for g in grads[1:]] == [(0,)] * 5
    (h,) = lib.autograd.grad(grads[0].sum(), a)
    same(h, np.full((2, 3), 10.0))


def test_cat_and_stack_of_empty_pieces_of_a_shape(lib):
    a = lib.zeros(0, 3, dtype=lib.float64, requires_grad=True)
    b = lib.ones(2, 3, dtype=lib.float64, requires_grad=True)
    out = lib.cat([a, b, a], 0)
    assert out.shape == (2, 3) and out.requires_grad
    ga, gb = lib.autograd.grad(out.sum(), [a, b])
    assert ga.shape == (0, 3)
    same(gb, np.ones((2, 3)))
    s = lib.stack([a, a], 1)
    assert s.shape == (0, 2, 3) and s.requires_grad
    (g,) = lib.autograd.grad(s.sum(), a)
    assert g.shape == (0, 3)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        lib.cat([lib.zeros(0, 2), b], 0)


# -- reductions over a dim under create_graph, on non-leaves ---------------------------------------
REDUCTIONS = {
    "norm": lambda y: y.norm(dim=1),
    "norm_keepdim": lambda y: y.norm(dim=-1, keepdim=True),
    "norm_p3": lambda y: y.norm(p=3, dim=1),
    "norm_p1": lambda y: y.norm(p=1, dim=0),
    "norm_dims": lambda y: y.norm(dim=(0, 1)),
    "sum": lambda y: (y * y).sum(1),
    "mean": lambda y: (y * y).mean(-1, keepdim=True),
    "prod": lambda y: y.prod(1),
    "amax": lambda y: (y * y).amax(1),
    "max": lambda y: (y * y).max(1).values,
    "min": lambda y: (y * y).min(0)[0],
    "var": lambda y: y.var(1),
    "std": lambda y: y.std(0, keepdim=True),
    "logsumexp": lambda y: y.logsumexp(1),
    "softmax": lambda y: y.softmax(1) ** 2,
    "log_softmax": lambda y: y.log_softmax(0) ** 2,
    "cumsum": lambda y: y.cumsum(1) ** 2,
}


@pytest.mark.parametrize("name", list(REDUCTIONS))
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 2)])
def test_reduction_over_a_dim_of_a_nonleaf_twice(name, shape):
    torch = pytest.importorskip("torch")
    data = np.random.default_rng(3).uniform(0.5, 2.0, shape)
    out = []
    for lib in (tg, torch):
        x = lib.tensor(data, dtype=lib.float64, requires_grad=True)
        y = x * 2 - 1.5
        r = REDUCTIONS[name](y)
        g, gy = lib.autograd.grad(r, (x, y), grad_outputs=lib.ones_like(r) * 1.5, create_graph=True)
        assert g.requires_grad and gy.requires_grad
        (h,) = lib.autograd.grad((g * g * x).sum() + (gy * y).sum(), x)
        out.append((val(g), val(h)))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-10, atol=1e-10)
