"""The in-place family: values, gradients and grad_fn names against torch, writes through views
(torch's CopySlices on the base), the version check, and the leaf errors."""
import numpy as np
import pytest

import tapegrad as tg

A = np.array([[0.3, -1.2, 2.0], [0.7, -0.4, 1.1]])
B = np.array([0.5, 1.5, -0.8])


def _t(lib, a, rg=True):
    return lib.tensor(a, dtype=lib.float64, requires_grad=rg)


# name: program(lib, x, y) -> output; x (2, 3) and y (3,) require grad; in-place ops act on a
# non-leaf made from x
CASES = {
    "add_": lambda lib, x, y: (x * 1).add_(y, alpha=2),
    "sub_": lambda lib, x, y: (x * 1).sub_(y),
    "mul_tensor": lambda lib, x, y: (x * 1).mul_(y),
    "mul_scalar": lambda lib, x, y: (x * 1).mul_(3.0),
    "div_tensor": lambda lib, x, y: (x * 1).div_(y),
    "pow_scalar": lambda lib, x, y: (x * 1).pow_(3),
    "pow_tensor": lambda lib, x, y: (x.exp() * 1).pow_(y),
    "clamp_": lambda lib, x, y: (x * 1).clamp_(-0.5, 1.0),
    "exp_": lambda lib, x, y: (x * 1).exp_(),
    "zero_": lambda lib, x, y: (x * 1).zero_() + x,
    "fill_": lambda lib, x, y: (x * 1).fill_(1.5) * x,
    "copy_": lambda lib, x, y: (x * 1).copy_(y) * x,
    "masked_fill_": lambda lib, x, y: (x * 1).masked_fill_(x > 0.5, 0.0),
    "setitem_row": lambda lib, x, y: _setitem(lib, x * 1, 1, y * 2),
    "setitem_mask": lambda lib, x, y: _setitem(lib, x * 1, x > 0, 0.0),
    "iadd": lambda lib, x, y: _iop(x * 1, y),
    "view_mul_": lambda lib, x, y: _view_op(x * 1, lambda v: v.mul_(y[:2])),
    "view_setitem": lambda lib, x, y: _view_op(x * 1, lambda v: v.__setitem__(0, y[0])),
    "view_of_view": lambda lib, x, y: _view_op(x * 1, lambda v: v[1:].exp_()),
    "transposed_view": lambda lib, x, y: _transposed(x * 1, y),
    "buffer_copy_": lambda lib, x, y: _buffer(lib, y),
}


def _setitem(lib, z, key, v):
    z[key] = v
    return z


def _iop(z, y):
    z += y
    z *= 2
    return z


def _view_op(z, op):
    op(z[:, 1])
    return z * 1  # z's later uses see the write


def _transposed(z, y):
    z.t()[1:].mul_(y[:2, None])
    return z


def _buffer(lib, y):
    buf = lib.zeros(2, 3, dtype=lib.float64)
    buf[1].copy_(y * 3)  # a view of a leaf that does not require grad
    return buf * buf


@pytest.mark.parametrize("name", sorted(CASES))
def test_against_torch(name):
    torch = pytest.importorskip("torch")
    out = []
    for lib in (tg, torch):
        x, y = _t(lib, A), _t(lib, B)
        z = CASES[name](lib, x, y)
        v = np.random.default_rng(3).standard_normal(tuple(z.shape))
        z.backward(lib.tensor(v))
        out.append((z.detach().numpy().copy(), z.grad_fn.name(), x.grad, y.grad))
    (zv, name_tg, gx, gy), (tzv, name_t, tgx, tgy) = out
    np.testing.assert_allclose(zv, tzv, rtol=1e-12)
    assert name_tg == name_t
    for g, tgrad in ((gx, tgx), (gy, tgy)):
        assert (g is None) == (tgrad is None)
        if g is not None:
            np.testing.assert_allclose(g.numpy(), tgrad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jitted_and_differentiable_adjoints_agree(name):
    x, y = _t(tg, A), _t(tg, B)
    z = CASES[name](tg, x, y)
    v = tg.tensor(np.random.default_rng(3).standard_normal(tuple(z.shape)))
    jitted = tg.autograd.grad(z, [x, y], v, retain_graph=True, allow_unused=True)
    recorded = tg.autograd.grad(z, [x, y], v, create_graph=True, allow_unused=True)
    for a, b in zip(jitted, recorded):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_versions_count_each_write():
    x = tg.ones(3) * 1
    assert x._version == 0
    x.add_(1)
    x[0] = 2.0
    x.mul_(2)
    assert x._version == 3
    v = x[1:]
    v.zero_()
    assert x._version == 4 and v._version == 4  # a view shares its base's counter


@pytest.mark.parametrize("write", [lambda z: z.add_(1), lambda z: z.mul_(2), lambda z: z.__setitem__(0, 5.0),
                                   lambda z: z.copy_(tg.ones(3)), lambda z: z.clamp_(0, 1), lambda z: z[1:].zero_()])
def test_modifying_a_saved_value_raises_at_backward(write):
    x = tg.tensor([0.5, 1.0, 2.0], requires_grad=True)
    z = x * 1
    y = z.sin()  # saves z
    write(z)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_modifying_a_value_nobody_saved_is_fine():
    x = tg.tensor([0.5, 1.0, 2.0], requires_grad=True)
    z = x * 1
    y = z.exp()  # saves its output, not z
    z.add_(1)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp([0.5, 1.0, 2.0]))


@pytest.mark.parametrize("write", [lambda t: t.add_(1), lambda t: t.exp_(), lambda t: t.copy_(tg.ones(3)),
                                   lambda t: t.zero_(), lambda t: t.__setitem__(0, 1.0)])
def test_leaf_that_requires_grad_refuses_in_place(write):
    x = tg.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
        write(x)
    with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad is being used in an in-place"):
        write(x[:3])
    with tg.no_grad():
        write(x)  # allowed, as in torch


def test_int_tensor_refuses_a_float_result():
    x = tg.tensor([1, 2])
    with pytest.raises(RuntimeError, match="result type Float can't be cast to the desired output type Long"):
        x.mul_(1.5)


def test_grad_zero_clears_accumulated_gradients():
    x = tg.ones(2, requires_grad=True)
    (x * 3).sum().backward()
    x.grad.zero_()
    (x * 2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0])
    x.grad.data.zero_()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 0.0])


# -- writes into an expand: torch's rule for memory that several elements share ---------------------
OVERLAP = "unsupported operation: more than one element of the written-to tensor refers to a single memory location"
VIEWS = {"expand": lambda e: e, "slice": lambda e: e[:, 1:], "transposed": lambda e: e.t(), "column": lambda e: e[:, 1]}


def _expanded(lib, mode, view):
    """x (1, 3); b is x, or x * 1 when the write is recorded; the written tensor is a view of b.expand(2, 3)."""
    x = lib.tensor([[1.0, 2.0, 3.0]], requires_grad=mode != "plain")
    b = x * 1 if mode == "recorded" else x
    return x, b, VIEWS[view](b.expand(2, 3))


def _write(mode, lib, fn):
    if mode == "no_grad":
        with lib.no_grad():
            return fn()
    return fn()


# ops that read what they write through TensorIterator: refused wherever elements repeat
REFUSED = {
    "add_": lambda lib, e: e.add_(1),
    "sub_": lambda lib, e: e.sub_(lib.ones(tuple(e.shape))),
    "mul_": lambda lib, e: e.mul_(2),
    "div_": lambda lib, e: e.div_(2),
    "pow_": lambda lib, e: e.pow_(2),
    "clamp_": lambda lib, e: e.clamp_(0, 1),
    "exp_": lambda lib, e: e.exp_(),
    "copy_": lambda lib, e: e.copy_(lib.zeros(tuple(e.shape))),
    "iadd": lambda lib, e: e.__iadd__(1),
    "imul": lambda lib, e: e.__imul__(2),
    "setitem_all": lambda lib, e: e.__setitem__(slice(None), 5.0),
}


@pytest.mark.parametrize("view", sorted(VIEWS))
@pytest.mark.parametrize("mode", ["plain", "no_grad", "recorded"])
@pytest.mark.parametrize("op", sorted(REFUSED))
def test_write_into_an_expand_is_refused(lib, op, mode, view):
    x, b, e = _expanded(lib, mode, view)
    with pytest.raises(RuntimeError, match=OVERLAP):
        _write(mode, lib, lambda: REFUSED[op](lib, e))


def test_setitem_whose_places_repeat_is_refused(lib):
    x, b, e = _expanded(lib, "plain", "expand")
    with pytest.raises(RuntimeError, match=OVERLAP):
        e.t()[2] = lib.tensor(8.0)  # a column of the expand: one memory place twice
    e.t()[2, 1] = 8.0  # one element is fine
    assert x.tolist() == [[1.0, 2.0, 8.0]]


# writes torch lets into an expand (fill_, zero_, masked_fill_ and index_put_ with a deprecation
# warning): view -> x afterwards
ALLOWED = {
    "fill_": (lambda lib, e: e.fill_(0.0), {"expand": [[0, 0, 0]], "column": [[1, 0, 3]]}),
    "zero_": (lambda lib, e: e.zero_(), {"expand": [[0, 0, 0]], "column": [[1, 0, 3]]}),
    "masked_fill_": (lambda lib, e: e.masked_fill_(e > 1.5, 0.0), {"expand": [[1, 0, 0]], "column": [[1, 0, 3]]}),
    "index_put": (lambda lib, e: e.__setitem__(lib.tensor([0]), 5.0), {"expand": [[5, 5, 5]], "column": [[1, 5, 3]]}),
}
DEPRECATED = {"masked_fill_": "masked_fill_", "index_put": "index_put_"}


def _allowed(lib, op, e):
    if op in DEPRECATED:
        with pytest.warns(UserWarning, match=f"Use of {DEPRECATED[op]} on expanded tensors is deprecated"):
            return ALLOWED[op][0](lib, e)
    return ALLOWED[op][0](lib, e)


@pytest.mark.parametrize("view", ["expand", "column"])
@pytest.mark.parametrize("mode", ["plain", "no_grad"])
@pytest.mark.parametrize("op", sorted(ALLOWED))
def test_unrecorded_write_into_an_expand_reaches_its_base(lib, op, mode, view):
    x, b, e = _expanded(lib, mode, view)
    v0 = x._version
    _write(mode, lib, lambda: _allowed(lib, op, e))
    assert x.tolist() == [[float(v) for v in ALLOWED[op][1][view][0]]]
    assert x._version == e._version == v0 + 1


@pytest.mark.parametrize("view", ["expand", "column"])
@pytest.mark.parametrize("op", sorted(ALLOWED))
def test_recorded_write_into_an_expand_fails_when_backward_reaches_it(lib, op, view):
    x, b, e = _expanded(lib, "recorded", view)
    _allowed(lib, op, e)
    assert b.tolist() == [[float(v) for v in ALLOWED[op][1][view][0]]]
    with pytest.raises(RuntimeError, match=OVERLAP):
        (b * 3).sum().backward()
    x, b, e = _expanded(lib, "recorded", view)
    _allowed(lib, op, e)
    (x * 5).sum().backward()  # a backward that does not reach the write is fine
    assert x.grad.tolist() == [[5.0, 5.0, 5.0]]


def test_recorded_fill_with_a_tensor_requiring_grad_is_refused(lib):
    x, b, e = _expanded(lib, "recorded", "expand")
    with pytest.raises(RuntimeError, match=OVERLAP):
        e.fill_(lib.tensor(2.0, requires_grad=True))


def test_recorded_setitem_into_an_expand_writes_its_base(lib):
    """e[0] = y writes b's one row, which every row of e shows: y gets the gradient of all of them."""
    x, b, e = _expanded(lib, "recorded", "expand")
    y = lib.tensor([7.0, 8.0, 9.0], requires_grad=True)
    e[0] = y
    assert b.tolist() == [[7.0, 8.0, 9.0]] and e.tolist() == [[7.0, 8.0, 9.0]] * 2
    ((b * lib.tensor([[1.0, 10.0, 100.0]])).sum() + (e * e).sum()).backward()
    assert x.grad.tolist() == [[0.0, 0.0, 0.0]] and y.grad.tolist() == [29.0, 42.0, 136.0]
    x, b, e = _expanded(lib, "recorded", "expand")
    e[0, 1] = 5.0
    (e * e).sum().backward()
    assert x.grad.tolist() == [[4.0, 0.0, 12.0]]
