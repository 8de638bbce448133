"""grad, grad_and_value, vjp, jacrev, hessian against torch.func (and against finite differences
where torch is absent), composed with each other, and their errors."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad import func


def _np(t):
    if isinstance(t, (tuple, list)):
        return type(t)(_np(x) for x in t)
    return t.detach().numpy()


def _pair(shape, seed=0):
    v = np.random.default_rng(seed).standard_normal(shape)
    torch = pytest.importorskip("torch")
    return tg.tensor(v), torch.tensor(v)


def f_scalar(lib, x, y):
    return (lib.sin(x) * y).sum() + (x * x * y).sum()


def f_vec(lib, x, y):
    return lib.tanh(x) * y + x


def test_grad_finite_differences():
    x, y = tg.tensor([0.3, -1.2, 2.0], dtype=tg.float64), tg.tensor([1.5, 0.5, -2.0], dtype=tg.float64)
    g = func.grad(lambda x, y: f_scalar(tg, x, y))(x, y).numpy()
    eps = 1e-6
    for i in range(3):
        e = np.zeros(3)
        e[i] = eps
        up = f_scalar(tg, tg.tensor(x.numpy() + e), y).item()
        down = f_scalar(tg, tg.tensor(x.numpy() - e), y).item()
        assert abs((up - down) / (2 * eps) - g[i]) < 1e-6
    assert not x.requires_grad and func.grad(lambda x, y: f_scalar(tg, x, y))(x, y).grad_fn is None


@pytest.mark.parametrize("argnums", [0, 1, (0, 1), (1, 0), -1])
def test_grad_and_value_against_torch(argnums):
    torch = pytest.importorskip("torch")
    (x, tx), (y, ty) = _pair(3, 1), _pair(3, 2)
    g, v = func.grad_and_value(lambda x, y: f_scalar(tg, x, y), argnums)(x, y)
    tgv, tv = torch.func.grad_and_value(lambda x, y: f_scalar(torch, x, y), argnums)(tx, ty)
    np.testing.assert_allclose(v.item(), tv.item(), rtol=1e-12)
    for a, b in zip(g if isinstance(g, tuple) else (g,), tgv if isinstance(tgv, tuple) else (tgv,)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    assert isinstance(g, tuple) == isinstance(argnums, tuple)


def test_grad_has_aux_and_pytree_argument():
    torch = pytest.importorskip("torch")
    (x, tx), (y, ty) = _pair(3, 1), _pair(3, 2)

    def f(lib):
        return lambda d: ((d["a"] * d["b"][0]).sum(), d["a"] * 2)

    g, aux = func.grad(f(tg), has_aux=True)({"a": x, "b": [y]})
    tgr, taux = torch.func.grad(f(torch), has_aux=True)({"a": tx, "b": [ty]})
    np.testing.assert_allclose(g["a"].numpy(), tgr["a"].numpy())
    np.testing.assert_allclose(g["b"][0].numpy(), tgr["b"][0].numpy())
    np.testing.assert_allclose(aux.numpy(), taux.numpy())


def test_grad_of_grad_and_vmap_of_grad():
    torch = pytest.importorskip("torch")
    x, tx = _pair(4, 3)
    f = lambda lib: lambda x: (lib.sin(x) * x ** 3).sum()
    g2 = func.grad(lambda x: func.grad(f(tg))(x).sum())(x)
    t2 = torch.func.grad(lambda x: torch.func.grad(f(torch))(x).sum())(tx)
    np.testing.assert_allclose(g2.numpy(), t2.numpy(), rtol=1e-12)
    third = func.grad(func.grad(func.grad(lambda s: s.sin() * s ** 4)))(tg.tensor(0.7, dtype=tg.float64))
    tthird = torch.func.grad(torch.func.grad(torch.func.grad(lambda s: s.sin() * s ** 4)))(
        torch.tensor(0.7, dtype=torch.float64))
    np.testing.assert_allclose(third.item(), tthird.item(), rtol=1e-12)
    xs, txs = _pair((5, 4), 4)
    np.testing.assert_allclose(func.vmap(func.grad(f(tg)))(xs).numpy(),
                               torch.func.vmap(torch.func.grad(f(torch)))(txs).numpy(), rtol=1e-12)


def test_vjp_against_torch():
    torch = pytest.importorskip("torch")
    (x, tx), (y, ty), (v, tv) = _pair(3, 1), _pair(3, 2), _pair(3, 5)
    out, fn = func.vjp(lambda x, y: f_vec(tg, x, y), x, y)
    tout, tfn = torch.func.vjp(lambda x, y: f_vec(torch, x, y), tx, ty)
    np.testing.assert_allclose(out.numpy(), tout.numpy())
    for _ in range(2):  # vjp_fn may be called again
        gs, tgs = fn(v), tfn(tv)
        assert isinstance(gs, tuple) and len(gs) == 2
        for a, b in zip(gs, tgs):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    out, fn, aux = func.vjp(lambda x: (x.exp(), x.sum()), x, has_aux=True)
    assert aux.item() == pytest.approx(x.sum().item())
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        fn(tg.ones(2, dtype=tg.float64))


@pytest.mark.parametrize("argnums", [0, (0, 1)])
def test_jacrev_and_jacrev_of_jacrev_against_torch(argnums):
    torch = pytest.importorskip("torch")
    (x, tx), (y, ty) = _pair(3, 1), _pair(3, 2)
    j = func.jacrev(lambda x, y: f_vec(tg, x, y), argnums)(x, y)
    tj = torch.func.jacrev(lambda x, y: f_vec(torch, x, y), argnums)(tx, ty)
    for a, b in zip(j if isinstance(j, tuple) else (j,), tj if isinstance(tj, tuple) else (tj,)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    jj = func.jacrev(func.jacrev(lambda x: f_vec(tg, x, y)))(x)
    tjj = torch.func.jacrev(torch.func.jacrev(lambda x: f_vec(torch, x, ty)))(tx)
    assert tuple(jj.shape) == (3, 3, 3)
    np.testing.assert_allclose(jj.numpy(), tjj.numpy(), rtol=1e-12, atol=1e-15)


def test_jacrev_tuple_output_and_hessian_against_torch():
    torch = pytest.importorskip("torch")
    (x, tx), (y, ty) = _pair((2, 2), 1), _pair((2, 2), 2)
    j = func.jacrev(lambda x: (x.sin(), (x * x).sum()))(x)
    tj = torch.func.jacrev(lambda x: (x.sin(), (x * x).sum()))(tx)
    assert tuple(j[0].shape) == (2, 2, 2, 2) and tuple(j[1].shape) == (2, 2)
    for a, b in zip(j, tj):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    h = func.hessian(lambda x, y: f_scalar(tg, x, y), (0, 1))(x, y)
    th = torch.func.hessian(lambda x, y: f_scalar(torch, x, y), (0, 1))(tx, ty)
    for a, b in zip(h, th):
        for c, d in zip(a, b):
            np.testing.assert_allclose(c.numpy(), d.numpy(), rtol=1e-12, atol=1e-15)


def test_grad_of_closure_requiring_grad_stays_differentiable():
    """grad's result depends on w through the closure: backward reaches w, as torch's does."""
    w = tg.tensor([1.0, 2.0, 3.0], dtype=tg.float64, requires_grad=True)
    x = tg.tensor([0.5, -0.5, 1.0], dtype=tg.float64, requires_grad=True)
    g = func.grad(lambda x: (w * x ** 2).sum())(x)  # 2 w x
    g.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), 2 * x.detach().numpy())
    np.testing.assert_allclose(x.grad.numpy(), 2 * w.detach().numpy())


@pytest.mark.parametrize("call, error, words", [
    (lambda: func.grad(lambda x: x)(tg.ones(2)), RuntimeError, "scalar"),
    (lambda: func.grad(lambda x: x.sum(), has_aux=True)(tg.ones(2)), RuntimeError, "tuple"),
    (lambda: func.grad(lambda x: (x.sum(),), has_aux=True)(tg.ones(2)), RuntimeError, "tuple"),
    (lambda: func.grad(lambda x: 1.0)(tg.ones(2)), RuntimeError, "return a Tensor"),
    (lambda: func.grad(lambda x: x.sum(), argnums=1)(tg.ones(2)), RuntimeError, "only 1 positional"),
    (lambda: func.grad(lambda x: x.sum(), argnums=1.0)(tg.ones(2)), RuntimeError, "argnums must be int"),
    (lambda: func.grad(lambda x: x.sum(), argnums=())(tg.ones(2)), RuntimeError, "non-empty"),
    (lambda: func.grad(lambda x: x.sum())(1.0), ValueError, "must be Tensor"),
])
def test_errors_as_torch(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_grad_of_per_sample_gradients_and_nested_vmap_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w, xs = rng.standard_normal(3), rng.standard_normal((5, 3))
    results = []
    for lib, F in ((tg, func), (torch, torch.func)):
        loss = lambda w, x: (lib.sin(w * x) * w).sum()
        W, X = lib.tensor(w), lib.tensor(xs)
        for _ in range(2):  # (the second call replays)
            g = F.grad(lambda W: F.vmap(F.grad(loss), in_dims=(None, 0))(W, X).pow(2).sum())(W)
        pairs = F.vmap(F.vmap(loss, in_dims=(None, 0)), in_dims=(0, None))(X, X)
        results.append((g.detach().numpy(), pairs.detach().numpy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("transform", ["grad", "vmap"])
def test_nested_arguments_and_results_are_freed_by_reference_counting(transform):
    """Flattening and rebuilding nested arguments and results makes no reference cycle: a result
    the caller drops, and the arguments, are freed at once, not at the cyclic collector's next run
    (which would keep a batch of per-sample gradients alive, and their arrays from reuse)."""
    import gc
    import weakref

    def loss(p, x):
        return ((x[None] @ p["w"]) ** 2).sum()  # (under vmap: a tap on the mm gives w's gradients)

    f = func.grad(loss) if transform == "grad" else func.vmap(func.grad(loss), in_dims=(None, 0))
    p = {"w": tg.ones(3, 2)}
    shape = (3,) if transform == "grad" else (4, 3)
    for _ in range(2):  # (recordings: a program holds the arguments it was recorded on)
        f(p, tg.ones(*shape))
    gc.disable()
    try:
        x = tg.ones(*shape)
        r = f(p, x)
        result, arg = weakref.ref(r["w"]), weakref.ref(x)
        del r, x
        assert result() is None and arg() is None
    finally:
        gc.enable()
