"""tapegrad.optim: SGD, Adam and AdamW step for step against torch; their rules by hand; torch's errors."""
import math

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import nn, optim

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.5, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.02, amsgrad=True)),
    ("Adam", dict(lr=0.01, maximize=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
]


def _loss(lib, w, b, x):
    return (lib.tanh(x @ w + b) ** 2).sum() + (w * w).sum() * 0.1


@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_steps_match_torch(name, kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0, b0, x0 = rng.normal(size=(3, 2)), rng.normal(size=2), rng.normal(size=(5, 3))
    ours = [tg.tensor(v, dtype=tg.float64, requires_grad=True) for v in (w0, b0)]
    theirs = [torch.tensor(v, requires_grad=True) for v in (w0, b0)]
    opt_o, opt_t = getattr(optim, name)(ours, **kw), getattr(torch.optim, name)(theirs, **kw)
    xo, xt = tg.tensor(x0, dtype=tg.float64), torch.tensor(x0)
    for _ in range(6):
        opt_o.zero_grad()
        opt_t.zero_grad()
        _loss(tg, *ours, xo).backward()
        _loss(torch, *theirs, xt).backward()
        opt_o.step()
        opt_t.step()
        for o, t in zip(ours, theirs):
            np.testing.assert_allclose(o.detach().numpy(), t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_float32_steps_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    ours, theirs = tg.tensor(w0, requires_grad=True), torch.tensor(w0, requires_grad=True)
    opt_o, opt_t = optim.Adam([ours], lr=0.05), torch.optim.Adam([theirs], lr=0.05)
    for _ in range(5):
        for opt, w in ((opt_o, ours), (opt_t, theirs)):
            opt.zero_grad()
            (w * w * w).sum().backward()
            opt.step()
    assert ours.dtype == tg.float32
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_sgd_rule_by_hand():
    p = tg.tensor([1.0, -2.0], requires_grad=True)
    opt = optim.SGD([p], lr=0.1, momentum=0.5)
    # grad 2p: buf = g = [2, -4], p = [0.8, -1.6]; then buf = 0.5 buf + [1.6, -3.2] = [2.6, -5.2]
    for expected in ([0.8, -1.6], [0.54, -1.08]):
        opt.zero_grad()
        (p * p).sum().backward()
        opt.step()
        np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-6)


def test_adam_first_step_moves_by_lr_times_sign():
    p = tg.tensor([3.0, -0.5, 50.0], dtype=tg.float64, requires_grad=True)
    opt = optim.Adam([p], lr=0.1)
    (p * p).sum().backward()
    opt.step()
    # m / sqrt(v) after bias correction is g / |g|: every element moves by lr against its gradient
    np.testing.assert_allclose(p.detach().numpy(), [2.9, -0.4, 49.9], rtol=1e-6)
    assert opt.state[p]["step"].item() == 1 and set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}


def test_param_groups_and_defaults():
    a, b = tg.ones(2, requires_grad=True), tg.ones(2, requires_grad=True)
    opt = optim.SGD([{"params": [a]}, {"params": b, "lr": 1.0}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]
    (a.sum() + b.sum()).backward()
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), [0.9, 0.9])
    np.testing.assert_allclose(b.detach().numpy(), [0.0, 0.0])
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


def test_zero_grad_like_torch():
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1)
    model(tg.ones(4, 3)).sum().backward()
    grads = [p.grad for p in model.parameters()]
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))  # the same tensors, cleared
    assert not any(g.numpy().any() for g in grads)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_parameters_without_grad_are_skipped():
    a, b = tg.ones(2, requires_grad=True), tg.ones(2, requires_grad=True)
    opt = optim.Adam([a, b], lr=0.1)
    a.sum().backward()
    opt.step()
    assert b.tolist() == [1.0, 1.0] and b not in opt.state


def test_step_bumps_the_version_so_stale_graphs_fail():
    w = tg.ones(3, requires_grad=True)
    opt = optim.SGD([w], lr=0.1)
    y = (w * w).sum()
    y.backward(retain_graph=True)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_closure_is_called_with_grad_enabled():
    w = tg.tensor([2.0], requires_grad=True)
    opt = optim.SGD([w], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    with tg.no_grad():
        loss = opt.step(closure)
    assert loss.item() == 4.0 and math.isclose(w.item(), 1.0)


@pytest.mark.parametrize("make, match", [
    (lambda p: optim.SGD(p, lr=-1), "Invalid learning rate: -1"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), "Invalid momentum value"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1), "Invalid weight_decay value"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.9)), "Invalid beta parameter at index 0"),
    (lambda p: optim.Adam(p, eps=-1), "Invalid epsilon value"),
    (lambda p: optim.Adam([], lr=0.1), "optimizer got an empty parameter list"),
    (lambda p: optim.SGD([p[0] * 2], lr=0.1), "can't optimize a non-leaf Tensor"),
])
def test_errors_like_torch(make, match):
    with pytest.raises(ValueError, match=match):
        make([tg.ones(2, requires_grad=True)])


def test_a_tensor_is_not_a_parameter_list():
    with pytest.raises(TypeError, match="iterable of Tensors"):
        optim.SGD(tg.ones(2, requires_grad=True), lr=0.1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lr", [0.1, 3, np.float64(0.1)])
def test_plain_sgd_in_one_call_has_numpy_s_bits(dtype, lr):
    """Plain SGD updates every C-ordered float parameter in one jitted call: bit for bit NumPy's
    x -= lr * grad (which a transposed parameter still takes), one call per dtype."""
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(s).astype(dtype) for s in [(5, 3), (7,), (), (4, 6)]]
    values[3] = values[3].T  # not C-ordered
    values.append(rng.standard_normal(4).astype(np.float64 if dtype == np.float32 else np.float32))
    grads = [rng.standard_normal(v.shape).astype(v.dtype) for v in values]
    params = [tg.tensor(v.copy(), requires_grad=True) for v in values]
    params[3] = tg.tensor(values[3].T.copy(), requires_grad=True).t().detach().requires_grad_()
    for p, g in zip(params, grads):
        p.grad = tg.tensor(g)
    versions = [p._version for p in params]
    optim.SGD(params, lr=lr).step()
    for p, v, g, before in zip(params, values, grads, versions):
        want = v.copy()
        want -= lr * g
        got = p.detach().numpy()
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        assert p._version == before + 1
