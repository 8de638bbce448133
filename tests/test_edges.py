"""Autograd at the edges, as torch has it: views from integer indexing, cat with legacy empty
tensors, and reductions over a dim differentiated twice through non-leaves.

Tests taking the ``lib`` fixture are user code run on tapegrad and (when installed) on torch, so the
behaviour asserted is torch's.
"""
import math
import warnings

import numpy as np
import pytest

import tapegrad as tg


def val(t):
    t = t.detach()
    if type(t).__module__.startswith("torch") and t._is_zerotensor():
        t = t + 0  # torch's efficient zeros (some of its gradients) have no storage to read
    return np.asarray(t.tolist(), dtype=np.float64)


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


# -- pow at a zero base, to any order --------------------------------------------------------------
def derivatives(lib, f, data, orders, jitted_last=False):
    """[(values, requires_grad)] of d^k sum(f(x)) / dx^k for k = 1.. while they require grad, each
    made with create_graph (the last by the jitted replay with ``jitted_last``)."""
    x = lib.tensor(data, dtype=lib.float64, requires_grad=True)
    g, out = f(x), []
    for k in range(orders):
        if not g.requires_grad:
            with pytest.raises(RuntimeError, match="does not require grad"):
                lib.autograd.grad(g.sum(), x)
            break
        (g,) = lib.autograd.grad(g.sum(), x, create_graph=not (jitted_last and k == orders - 1))
        out.append((val(g), g.requires_grad))
    return out


INF, NAN = math.inf, math.nan
# exponent: torch's derivatives at x = 0, 1, 2 while they require grad (x ** 2's third is zeros
# that do not: a fourth raises, as torch's)
POW_AT_ZERO = {
    2: [([0, 2, 4], True), ([2, 2, 2], True), ([0, 0, 0], False)],
    3: [([0, 3, 12], True), ([0, 6, 12], True), ([6, 6, 6], True), ([0, 0, 0], False)],
    1: [([1, 1, 1], True), ([0, 0, 0], False)],
    0: [([0, 0, 0], False)],
    0.5: [([INF, 0.5, 0.35355339059327373], True), ([-INF, -0.25, -0.08838834764831845], True),
          ([INF, 0.375, 0.06629126073623884], True), ([-INF, -0.9375, -0.08286407592029854], True)],
    -1: [([-INF, -1, -0.25], True), ([INF, 2, 0.25], True), ([-INF, -6, -0.375], True), ([INF, 24, 0.75], True)],
    -0.5: [([-INF, -0.5, -0.1767766952966369], True), ([INF, 0.75, 0.13258252147247768], True),
           ([-INF, -1.875, -0.16572815184059708], True), ([INF, 6.5625, 0.2900242657210449], True)],
    -2: [([-INF, -2, -0.25], True), ([INF, 6, 0.375], True), ([-INF, -24, -0.75], True), ([INF, 120, 1.875], True)],
    2.5: [([0, 2.5, 7.0710678118654755], True), ([0, 3.75, 5.303300858899107], True),
          ([INF, 1.875, 1.3258252147247764], True), ([-INF, -0.9375, -0.33145630368119416], True)],
}


def assert_derivatives(got, want):
    assert len(got) == len(want), f"{len(got)} derivatives where torch has {len(want)}"
    for k, ((g, rg), (w, wrg)) in enumerate(zip(got, want), 1):
        np.testing.assert_allclose(g, np.asarray(w, dtype=np.float64), rtol=2e-16, atol=0, err_msg=f"order {k}")
        assert rg == wrg, f"order {k}: requires_grad {rg}, torch's {wrg}"


@pytest.mark.parametrize("jitted_last", [False, True])
@pytest.mark.parametrize("c", list(POW_AT_ZERO))
def test_pow_of_a_tensor_at_zero_to_any_order(lib, c, jitted_last):
    want = POW_AT_ZERO[c]
    if jitted_last and len(want) == 4:
        want = want[:3] + [(want[3][0], False)]
    assert_derivatives(derivatives(lib, lambda x: x ** c, [0.0, 1.0, 2.0], 4, jitted_last), want)


@pytest.mark.parametrize("base", ["python", "tensor"])
@pytest.mark.parametrize("jitted_last", [False, True])
def test_zero_to_a_tensor_power(lib, base, jitted_last):
    # torch: 0 where y >= 0 (not 0 * log 0), -inf where y < 0; its second derivative is nan there
    zero = 0.0 if base == "python" else lib.tensor(0.0, dtype=lib.float64)
    got = derivatives(lib, lambda y: zero ** y, [-1.0, 0.0, 0.5, 2.0], 3, jitted_last)
    want = [([-INF, 0, 0, 0], True), ([INF, NAN, NAN, NAN], True), ([-INF, NAN, NAN, NAN], not jitted_last)]
    assert_derivatives(got, want)


def test_python_base_to_a_tensor_power(lib):
    got = derivatives(lib, lambda y: 2 ** y, [-1.0, 0.0, 0.5, 2.0], 2)
    want = [([0.34657359027997264, 0.6931471805599453, 0.9802581434685472, 2.772588722239781], True),
            ([0.2402265069591007, 0.4804530139182014, 0.6794631683661498, 1.9218120556728056], True)]
    assert len(got) == 2
    for (g, rg), (w, _) in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-15)
        assert rg


@pytest.mark.parametrize("create_graph", [False, True])
def test_tensor_to_a_tensor_power_at_zero(lib, create_graph):
    # torch's pow_backward_self / _exponent: a zero exponent has gradient 0 in x (not 0 * 0 ** -1),
    # a zero base with a non-negative exponent gradient 0 in y (not 0 * log 0)
    x = lib.tensor([0.0, 0.0, 0.0, 1.0, 0.0, -0.0], dtype=lib.float64, requires_grad=True)
    y = lib.tensor([-1.0, 0.0, 0.5, 2.0, 2.0, 3.0], dtype=lib.float64, requires_grad=True)
    gx, gy = lib.autograd.grad((x ** y).sum(), (x, y), create_graph=create_graph)
    same(gx, [-INF, 0.0, INF, 2.0, 0.0, 0.0])
    same(gy, [-INF, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert gx.requires_grad == gy.requires_grad == create_graph


def test_pow_values_where_torch_has_own_formulas(lib):
    # x ** 0.5 is sqrt (-0.0 stays -0.0), x ** -0.5 is 1 / sqrt: a last bit off pow()'s
    x = lib.tensor([-0.0, 2.0, 3.0, -INF], dtype=lib.float64)
    same(x ** 0.5, [-0.0, 1.4142135623730951, 1.7320508075688772, NAN])
    same(x ** -0.5, [-INF, 0.7071067811865475, 0.5773502691896258, NAN])
    with pytest.raises(RuntimeError, match="Integers to negative integer powers are not allowed"):
        lib.tensor([2, 3]) ** -1


def test_square_to_any_order(lib):
    got = derivatives(lib, lambda x: x.square() * 3.0, [0.0, 1.0, 2.0], 4)
    assert_derivatives(got, [([0, 6, 12], True), ([6, 6, 6], True), ([0, 0, 0], False)])


def test_fourth_derivative_of_a_cube_is_zeros(lib):
    x = lib.tensor([-2.0, 0.5, 3.0], dtype=lib.float64, requires_grad=True)
    g = (x ** 3).sum()
    for _ in range(3):
        (g,) = lib.autograd.grad(g.sum(), x, create_graph=True)
    assert g.requires_grad
    (g4,) = lib.autograd.grad(g.sum(), x, create_graph=True)
    same(g4, [0.0, 0.0, 0.0])
    assert not g4.requires_grad


# -- create_graph results stay differentiable exactly where torch's do -------------------------------
# Whether a gradient requires grad follows the structure of torch's derivative formulas: x * c's
# gradient is a constant that does not, relu's is torch's threshold_backward(g, result), which does
# (with zeros for its own gradient), x ** 2's is g * (2 * x.pow(1)), whose gradient is tracked ones.
STRUCTURE = {
    "mul_scalar": lambda lib, x: x * 3, "div_scalar": lambda lib, x: x / 3, "add_scalar": lambda lib, x: x + 1,
    "rsub": lambda lib, x: 1 - x, "neg": lambda lib, x: -x, "sum": lambda lib, x: x.sum(),
    "mean": lambda lib, x: x.mean(), "view": lambda lib, x: x.view(3, 1), "slice": lambda lib, x: x[1:],
    "cat": lambda lib, x: lib.cat([x, x]), "stack": lambda lib, x: lib.stack([x, x]),
    "expand": lambda lib, x: x.view(3, 1).expand(3, 2),
    "matmul": lambda lib, x: x @ lib.ones(3, 2, dtype=lib.float64),
    "linear": lambda lib, x: lib.nn.functional.linear(x, lib.ones(2, 3, dtype=lib.float64)),
    "mv": lambda lib, x: lib.ones(2, 3, dtype=lib.float64) @ x, "cumsum": lambda lib, x: x.cumsum(0),
    "square": lambda lib, x: x * x, "square_method": lambda lib, x: x.square(), "pow2": lambda lib, x: x ** 2,
    "pow3": lambda lib, x: x ** 3, "pow1": lambda lib, x: x ** 1, "pow0": lambda lib, x: x ** 0,
    "pow2_scaled": lambda lib, x: (x * 3).sum() ** 2, "cube_product": lambda lib, x: x * x * x,
    "dot": lambda lib, x: x.dot(x), "pow_tensor": lambda lib, x: x ** lib.tensor(2.0, dtype=lib.float64),
    "pow_self": lambda lib, x: x ** x, "rpow": lambda lib, x: 2 ** x, "exp": lambda lib, x: x.exp(),
    "relu": lambda lib, x: x.relu(), "relu_twice": lambda lib, x: (x - 1).relu().relu() * x,
    "leaky_relu": lambda lib, x: lib.nn.functional.leaky_relu(x, 0.1),
    "leaky_relu_of_result": lambda lib, x: lib.nn.functional.leaky_relu(x * x - 1, 0.1),
    "abs": lambda lib, x: x.abs(), "clamp": lambda lib, x: x.clamp(0, 1), "sqrt": lambda lib, x: x.sqrt(),
    "maximum": lambda lib, x: lib.maximum(x, lib.ones(3, dtype=lib.float64)),
    "where": lambda lib, x: lib.where(x > 1, x, x * 2), "amax": lambda lib, x: x.amax(),
    "prod": lambda lib, x: x.prod(), "var": lambda lib, x: x.var(), "var_dim": lambda lib, x: x.view(1, 3).var(1),
    "std": lambda lib, x: x.std(), "norm": lambda lib, x: x.norm(), "norm_dim": lambda lib, x: x.view(1, 3).norm(dim=1),
    "norm1": lambda lib, x: x.norm(p=1), "softmax": lambda lib, x: x.softmax(0), "tanh": lambda lib, x: x.tanh(),
    "mse": lambda lib, x: lib.nn.functional.mse_loss(x, lib.ones(3, dtype=lib.float64)),
    "cross_entropy": lambda lib, x: lib.nn.functional.cross_entropy(x.view(1, 3), lib.tensor([1])),
    "nll_loss": lambda lib, x: lib.nn.functional.nll_loss(x.view(1, 3), lib.tensor([1])),
    "nll_loss_weighted": lambda lib, x: lib.nn.functional.nll_loss(
        x.view(1, 3) * x.view(1, 3), lib.tensor([2]), weight=lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64)),
}


@pytest.mark.parametrize("name", list(STRUCTURE))
def test_higher_derivatives_require_grad_where_torchs_do(name):
    torch = pytest.importorskip("torch")
    out = []
    for lib in (tg, torch):
        x = lib.tensor([0.5, 1.0, 2.0], dtype=lib.float64, requires_grad=True)
        g, steps = STRUCTURE[name](lib, x), []
        for _ in range(4):
            if not g.requires_grad:
                break
            (g,) = lib.autograd.grad(g.sum(), x, create_graph=True)
            steps.append((val(g), g.requires_grad))
        out.append(steps)
    ours, torchs = out
    assert [rg for _, rg in ours] == [rg for _, rg in torchs]
    for k, ((a, _), (b, _)) in enumerate(zip(ours, torchs), 1):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"order {k}")


# -- std and var of constants, and without degrees of freedom ---------------------------------------
@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("call", [lambda x: x.std(), lambda x: x.std(0), lambda x: x.std(correction=0),
                                  lambda x: x.view(1, 3).std(1, keepdim=True), lambda x: x.std(unbiased=False)])
def test_std_of_a_constant_has_gradient_zero(lib, call, create_graph):
    for data in ([2.0, 2.0, 2.0], [0.0, 0.0, 0.0]):
        x = lib.tensor(data, dtype=lib.float64, requires_grad=True)
        s = call(x)
        same(s, np.zeros(s.shape))
        (g,) = lib.autograd.grad(s.sum(), x, create_graph=create_graph)
        same(g, [0.0, 0.0, 0.0])
        if create_graph:
            assert g.requires_grad  # (grad / (2 * result), masked: it reads the result)
            (h,) = lib.autograd.grad(g.sum(), x)
            same(h, [0.0, 0.0, 0.0])


def test_var_of_a_constant_has_gradient_zero(lib):
    x = lib.tensor([[2.0, 2.0], [2.0, 2.0]], dtype=lib.float64, requires_grad=True)
    (g,) = lib.autograd.grad(x.var(), x, create_graph=True)
    same(g, np.zeros((2, 2)))
    (h,) = lib.autograd.grad(x.var(0).sum(), x)
    same(h, np.zeros((2, 2)))


def test_std_and_var_of_one_element(lib):
    one = lib.tensor([3.0], dtype=lib.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="degrees of freedom is <= 0"):
        v = one.var()
    same(v, NAN)
    (g,) = lib.autograd.grad(v, one, create_graph=True)
    same(g, [NAN])
    assert not g.requires_grad  # torch: grad * (nan where x is its mean, else inf), a constant
    with pytest.warns(UserWarning, match="std\\(\\): degrees of freedom is <= 0"):
        s = one.std(0)
    (g,) = lib.autograd.grad(s.sum(), one, create_graph=True)
    same(g, [NAN])
    assert g.requires_grad
    s = one.std(correction=0)  # one element, no correction: 0, and gradient 0
    (g,) = lib.autograd.grad(s, one)
    same(s, 0.0)
    same(g, [0.0])


def test_var_without_degrees_of_freedom(lib):
    x = lib.tensor([1.0, 2.0], dtype=lib.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="var\\(\\): degrees of freedom is <= 0"):
        full, along = x.var(correction=2), x.var(0, correction=3)
    same(full, INF)
    (g,) = lib.autograd.grad(full, x)
    same(g, [INF, INF])  # torch's rule over every dim: inf unless x is its mean
    (g,) = lib.autograd.grad(along, x)
    same(g, [1.0, -1.0])  # along a dim: (2 / (n - correction)) * (x - mean)
    with pytest.warns(UserWarning, match="std\\(\\): degrees of freedom is <= 0"):
        s = x.std(correction=2)
    (g,) = lib.autograd.grad(s, x)
    same(g, [NAN, NAN])


def test_std_gradient_through_a_zero_group_only(lib):
    x = lib.tensor([[1.0, 2.0, 4.0], [5.0, 5.0, 5.0]], dtype=lib.float64, requires_grad=True)
    (g,) = lib.autograd.grad(x.std(1).sum(), x)
    np.testing.assert_allclose(val(g)[0], [-0.4364357804719848, -0.10910894511799618, 0.545544725589981], rtol=1e-15)
    same(g[1], [0.0, 0.0, 0.0])


# -- norm at a zero group --------------------------------------------------------------------------
@pytest.mark.parametrize("p", [2, 3, 1.5, 1, 0.5, -1, INF])
def test_norm_gradient_at_a_zero_group(lib, p):
    # torch's norm_backward: 0 for an all-zero group at every p (not 0 / 0 or 0 * inf), both paths
    x = lib.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]], dtype=lib.float64, requires_grad=True)
    jitted = lib.autograd.grad(x.norm(p=p, dim=1).sum(), x)[0]
    recorded = lib.autograd.grad((x * 1).norm(p=p, dim=1).sum(), x, create_graph=True)[0]
    for g in (jitted, recorded):
        assert np.isfinite(val(g)).all()
        same(g[1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(val(jitted), val(recorded), rtol=1e-15)


def test_mean_var_std_of_empty_groups(lib):
    x = lib.zeros(2, 0, dtype=lib.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # torch's nan, without NumPy's warnings
        same(x.mean(), NAN)
        same(x.mean(1), [NAN, NAN])
        assert x.mean(0).shape == (0,)
        with pytest.warns(UserWarning, match="degrees of freedom is <= 0"):
            v, s = x.var(1), x.std()
        same(v, [NAN, NAN])
        same(s, NAN)
        (g,) = lib.autograd.grad(v.sum() + s, x, create_graph=True)
        assert g.shape == (2, 0)


def test_numpy_shares_the_storage_not_the_array_object():
    """As torch's: writes through .numpy() reach the tensor, but setting the array's shape leaves
    the tensor's own (compiled calls rely on a tensor's array keeping its shape)."""
    t = tg.zeros(2, 3)
    a = t.numpy()
    a[0, 1] = 5.0
    assert t[0, 1].item() == 5.0 and np.shares_memory(a, np.asarray(t))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        a.shape = (3, 2)
    assert tuple(t.shape) == (2, 3) and t.numpy().shape == (2, 3)
