"""tapegrad.nn: Module, Parameter, Linear, Sequential, activations and losses; against torch when installed,
against finite differences always."""
import warnings

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import nn
from tapegrad.nn import functional as F


def t64(a, requires_grad=False):
    return tg.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


def fd_grad(fn, x, eps=1e-6):
    """Central finite differences of scalar fn() with respect to the float64 array x (changed in place)."""
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        hi = fn()
        flat[i] = old - eps
        lo = fn()
        flat[i] = old
        gf[i] = (hi - lo) / (2 * eps)
    return g


# -- Module --------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        self.scale = nn.Parameter(tg.ones(2))
        self.note = "not a parameter"

    def forward(self, x):
        return self.body(x) * self.scale


def test_registration_names_and_order():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == ["scale", "body.0.weight", "body.0.bias", "body.2.weight",
                                                     "body.2.bias"]
    assert [type(m).__name__ for m in net.modules()] == ["Net", "Sequential", "Linear", "Tanh", "Linear"]
    assert [n for n, _ in net.named_children()] == ["body"]
    assert all(isinstance(p, nn.Parameter) and p.is_leaf and p.requires_grad for p in net.parameters())
    assert not isinstance(tg.ones(2), nn.Parameter) and not isinstance(3, nn.Parameter)
    assert net.note == "not a parameter" and "note" not in dict(net.named_parameters())


def test_shared_parameters_are_listed_once():
    lin = nn.Linear(2, 2)
    seq = nn.Sequential(lin, lin)
    assert len(list(seq.parameters())) == 2


def test_assignment_errors_and_deletion():
    net = Net()
    with pytest.raises(TypeError, match="cannot assign 'Tensor' as parameter 'scale'"):
        net.scale = tg.ones(2)
    net.scale = None
    assert "scale" not in dict(net.named_parameters())
    del net.body
    assert list(net.parameters()) == []
    with pytest.raises(AttributeError, match="has no attribute 'body'"):
        net.body

    class Early(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(tg.ones(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()


def test_parameter_shares_storage_and_refuses_integers():
    data = tg.zeros(3)
    p = nn.Parameter(data)
    p.data[0] = 5.0
    assert data.tolist() == [5.0, 0.0, 0.0]
    assert not nn.Parameter(tg.zeros(2), requires_grad=False).requires_grad
    with pytest.raises(RuntimeError, match="floating point"):
        nn.Parameter(tg.tensor([1, 2]))


def test_train_eval_and_zero_grad():
    net = Net()
    assert net.training and net.body[1].training
    assert net.eval() is net and not net.body[1].training
    net.train()
    assert all(m.training for m in net.modules())
    net(tg.ones(5, 3)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_state_dict_round_trip_and_dtype():
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    x = tg.randn(4, 3)
    assert np.array_equal(a(x).detach().numpy(), b(x).detach().numpy())
    with pytest.raises(RuntimeError, match="Missing key"):
        b.load_state_dict({"scale": tg.ones(2)})
    b.double()
    assert all(p.dtype == tg.float64 for p in b.parameters())
    assert b(x.double()).dtype == tg.float64


def test_sequential_indexing():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[-1], nn.Linear)
    assert [type(m).__name__ for m in seq[1:]] == ["ReLU", "Linear"]
    with pytest.raises(IndexError):
        seq[3]
    seq.append(nn.Sigmoid())
    assert seq(tg.ones(4, 2)).shape == (4, 1)


def test_linear_init_is_seeded_and_bounded():
    tg.manual_seed(3)
    a = nn.Linear(16, 8)
    tg.manual_seed(3)
    b = nn.Linear(16, 8)
    assert np.array_equal(a.weight.detach().numpy(), b.weight.detach().numpy())
    assert a.weight.shape == (8, 16) and a.bias.shape == (8,) and a.weight.dtype == tg.float32
    assert np.abs(a.weight.detach().numpy()).max() <= 1 / 4 and np.abs(a.bias.detach().numpy()).max() <= 1 / 4
    assert np.abs(a.weight.detach().numpy()).max() > 1 / 8  # uniform over the whole range, not a tiny one
    assert nn.Linear(2, 3, bias=False).bias is None


def test_repr_like_torch():
    torch = pytest.importorskip("torch")
    ours = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1, bias=False), nn.Sigmoid())
    theirs = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1, bias=False),
                                 torch.nn.Sigmoid())
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("shape", [(3,), (5, 3), (2, 4, 3)])
def test_linear_matches_torch(shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=shape), rng.normal(size=(2, 3)), rng.normal(size=2)
    ours = [t64(v, True) for v in (x, w, b)]
    theirs = [torch.tensor(v, requires_grad=True) for v in (x, w, b)]
    y, yt = F.linear(*ours), torch.nn.functional.linear(*theirs)
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), rtol=1e-12)
    (y * y).sum().backward()
    (yt * yt).sum().backward()
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(o.grad.numpy(), t.grad.numpy(), rtol=1e-12)


# -- activations and losses --------------------------------------------------------------------------
def _case_targets(rng):
    return {
        "index": (rng.normal(size=(6, 4)), rng.integers(0, 4, 6), {}),
        "weight": (rng.normal(size=(6, 4)), rng.integers(0, 4, 6), {"weight": rng.random(4) + 0.5}),
        "ignore": (rng.normal(size=(6, 4)), np.array([0, -100, 3, 1, -100, 2]), {}),
        "ignore+weight": (rng.normal(size=(6, 4)), np.array([0, 2, 3, 1, 2, 2]),
                          {"ignore_index": 2, "weight": rng.random(4) + 0.5}),
        "smoothing": (rng.normal(size=(6, 4)), rng.integers(0, 4, 6), {"label_smoothing": 0.2}),
        "smoothing+weight+ignore": (rng.normal(size=(6, 4)), np.array([0, -100, 3, 1, 1, 2]),
                                    {"label_smoothing": 0.1, "weight": rng.random(4) + 0.5}),
        "probabilities": (rng.normal(size=(6, 4)), rng.dirichlet(np.ones(4), 6), {}),
        "probabilities+smoothing": (rng.normal(size=(6, 4)), rng.dirichlet(np.ones(4), 6), {"label_smoothing": 0.3}),
        "spatial": (rng.normal(size=(2, 3, 4, 5)), rng.integers(0, 3, (2, 4, 5)), {}),
        "unbatched": (rng.normal(size=4), np.array(2), {}),
    }


CE_CASES = list(_case_targets(np.random.default_rng(0)))


def _to_tg(v):
    return t64(v) if np.asarray(v).dtype.kind == "f" else tg.tensor(v)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CE_CASES)
def test_cross_entropy_matches_torch(case, reduction):
    torch = pytest.importorskip("torch")
    x, target, kw = _case_targets(np.random.default_rng(0))[case]
    xo, xt = t64(x, True), torch.tensor(x, requires_grad=True)
    kwo = {k: (t64(v) if k == "weight" else v) for k, v in kw.items()}
    kwt = {k: (torch.tensor(v) if k == "weight" else v) for k, v in kw.items()}
    lo = nn.CrossEntropyLoss(reduction=reduction, **kwo)(xo, _to_tg(target))
    lt = torch.nn.CrossEntropyLoss(reduction=reduction, **kwt)(xt, torch.tensor(target))
    assert tuple(lo.shape) == tuple(lt.shape)
    np.testing.assert_allclose(lo.detach().numpy(), lt.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = np.random.default_rng(1).normal(size=tuple(lt.shape))
    lo.backward(t64(g))
    lt.backward(torch.tensor(g))
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", ["index", "weight", "ignore+weight", "smoothing+weight+ignore", "probabilities"])
def test_cross_entropy_gradient_by_finite_differences(case):
    x, target, kw = _case_targets(np.random.default_rng(2))[case]
    kw = {k: (t64(v) if k == "weight" else v) for k, v in kw.items()}
    xo = t64(x, True)
    F.cross_entropy(xo, _to_tg(target), **kw).backward()
    with tg.no_grad():
        fd = fd_grad(lambda: F.cross_entropy(xo, _to_tg(target), **kw).item(), xo.detach().numpy())
    np.testing.assert_allclose(xo.grad.numpy(), fd, rtol=1e-6, atol=1e-8)


def test_cross_entropy_is_stable_for_large_logits():
    x = tg.tensor([[1000.0, 0.0], [0.0, -1000.0]], requires_grad=True)
    loss = F.cross_entropy(x, tg.tensor([0, 1]))
    loss.backward()
    assert np.isfinite(loss.item()) and abs(loss.item() - 500.0) < 1e-3
    assert np.isfinite(x.grad.numpy()).all()


@pytest.mark.parametrize("fn, tfn", [("softmax", "softmax"), ("log_softmax", "log_softmax")])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_torch(fn, tfn, dim):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).normal(size=(3, 5))
    xo, xt = t64(x, True), torch.tensor(x, requires_grad=True)
    yo, yt = getattr(F, fn)(xo, dim), getattr(torch.nn.functional, tfn)(xt, dim)
    np.testing.assert_allclose(yo.detach().numpy(), yt.detach().numpy(), rtol=1e-12)
    g = np.random.default_rng(5).normal(size=(3, 5))
    yo.backward(t64(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    xo, xt = t64(x, True), torch.tensor(x, requires_grad=True)
    lo = nn.MSELoss(reduction=reduction)(xo, t64(y))
    lt = torch.nn.MSELoss(reduction=reduction)(xt, torch.tensor(y))
    np.testing.assert_allclose(lo.detach().numpy(), lt.detach().numpy(), rtol=1e-12)
    lo.sum().backward()
    lt.sum().backward()
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-12)


def test_mse_loss_value_and_broadcast_warning():
    x = tg.tensor([1.0, 2.0, 4.0], requires_grad=True)
    loss = nn.MSELoss()(x, tg.tensor([1.0, 1.0, 1.0]))
    loss.backward()
    assert loss.item() == pytest.approx(10 / 3)
    np.testing.assert_allclose(x.grad.numpy(), [0, 2 / 3, 2])
    with pytest.warns(UserWarning, match="different to the input size"):
        F.mse_loss(tg.ones(3, 1), tg.ones(3))
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        F.mse_loss(tg.ones(3), tg.ones(3), reduction="avg")


@pytest.mark.parametrize("module, fn", [(nn.Tanh, np.tanh), (nn.ReLU, lambda v: np.maximum(v, 0)),
                                        (nn.Sigmoid, lambda v: 1 / (1 + np.exp(-v))), (nn.Identity, lambda v: v)])
def test_activation_modules(module, fn):
    x = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(module()(t64(x)).numpy(), fn(x), rtol=1e-12)


def test_nll_loss_errors():
    logp = F.log_softmax(tg.randn(3, 4), 1)
    with pytest.raises(IndexError, match="Target 4 is out of bounds"):
        F.nll_loss(logp, tg.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"Expected input batch_size \(3\) to match target batch_size \(2\)"):
        F.nll_loss(logp, tg.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="expected scalar type Long"):
        F.nll_loss(logp, tg.tensor([0.0, 1.0, 2.0]))


def test_implicit_softmax_dim_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = F.softmax(tg.randn(2, 3))
    assert any("Implicit dimension" in str(w.message) for w in caught)
    np.testing.assert_allclose(y.numpy().sum(1), [1, 1], rtol=1e-6)


def test_training_a_module_reduces_the_loss():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    x = tg.randn(32, 2)
    y = x[:, :1] * 2 - x[:, 1:] * 0.5
    loss_fn = nn.MSELoss()
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    first = None
    for _ in range(50):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.1 * first


def test_parameter_shares_the_version_counter():
    data = tg.zeros(3)
    p = nn.Parameter(data)
    y = (p * p).sum()
    data.add_(1.0)  # changes what y saved
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
