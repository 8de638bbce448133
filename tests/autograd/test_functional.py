"""tapegrad.autograd.functional: vjp, jvp, jacobian, hessian, hvp, vhp against closed forms, finite
differences and torch (same programs, same flags), with tuple inputs/outputs and torch's errors."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad.autograd import functional as F

RNG = np.random.default_rng(3)


def _t(lib, v, rg=False):
    return lib.tensor(np.asarray(v, dtype=np.float64), requires_grad=rg)


def _np(x):
    if isinstance(x, (tuple, list)):
        return [_np(e) for e in x]
    return x.detach().numpy()


def _flat(x):
    if isinstance(x, (tuple, list)):
        return [a for e in x for a in _flat(e)]
    return [x]


# -- programs for both libraries ------------------------------------------------------------
def scalar_fn(lib, x):
    return (x.sin() * x * x).sum() + (x ** 3).sum() * 0.1


def pair_scalar_fn(lib, x, y):
    return x.exp().sum() * y.sin().sum() + (y ** 2).sum() * (x ** 2).sum()


def vec_fn(lib, x):
    return (x * x).tanh() * 2.0


def pair_fn(lib, x, y):
    return x * y.exp(), (x ** 2).sum() * y


SCALAR = {"one": (scalar_fn, [(3,)]), "two": (pair_scalar_fn, [(2,), (3,)])}
VECTOR = {"one": (vec_fn, [(2, 2)]), "two": (pair_fn, [(3,), (3,)])}


def _args(lib, values, rg=False):
    ts = tuple(_t(lib, v, rg) for v in values)
    return ts if len(ts) > 1 else ts[0]


def _call(lib, name, fn, values, extra=(), **flags):
    f = getattr(lib.autograd.functional, name)
    return f(lambda *a: fn(lib, *a), _args(lib, values), *[_args(lib, e) for e in extra], **flags)


CASES = [  # (api, table, program, vector argument shape: "in" or "out" or None)
    ("vjp", VECTOR, "one", "out"), ("vjp", VECTOR, "two", "out"), ("vjp", SCALAR, "one", None),
    ("jvp", VECTOR, "one", "in"), ("jvp", VECTOR, "two", "in"),
    ("jacobian", VECTOR, "one", None), ("jacobian", VECTOR, "two", None), ("jacobian", SCALAR, "two", None),
    ("hessian", SCALAR, "one", None), ("hessian", SCALAR, "two", None),
    ("hvp", SCALAR, "one", "in"), ("hvp", SCALAR, "two", "in"),
    ("vhp", SCALAR, "one", "in"), ("vhp", SCALAR, "two", "in"),
]


def _case_values(table, prog, vec):
    fn, shapes = table[prog]
    values = [RNG.standard_normal(s) for s in shapes]
    extra = ()
    if vec == "in":
        extra = ([RNG.standard_normal(s) for s in shapes],)
    elif vec == "out":
        with tg.no_grad():
            outs = _flat(fn(tg, *[_t(tg, v) for v in values]))
        extra = ([RNG.standard_normal(tuple(o.shape)) for o in outs],)
    return fn, values, extra


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("api,table,prog,vec", CASES,
                         ids=[f"{c[0]}-{'scalar' if c[1] is SCALAR else 'vector'}-{c[2]}" for c in CASES])
def test_matches_torch(api, table, prog, vec, create_graph):
    torch = pytest.importorskip("torch")
    fn, values, extra = _case_values(table, prog, vec)
    ours = _call(tg, api, fn, values, extra, create_graph=create_graph)
    theirs = _call(torch, api, fn, values, extra, create_graph=create_graph)
    a, b = _flat(ours), _flat(theirs)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert tuple(x.shape) == tuple(y.shape)
        np.testing.assert_allclose(_np(x), _np(y), rtol=1e-10, atol=1e-12)
        assert x.requires_grad == y.requires_grad
    assert _structure(ours) == _structure(theirs)  # torch's nesting: tensor, tuple, tuple of tuples


def _structure(x):
    if isinstance(x, tuple):
        return tuple(_structure(e) for e in x)
    return "T"


@pytest.mark.parametrize("api", ["vjp", "jvp", "hvp", "vhp", "jacobian", "hessian"])
def test_create_graph_results_are_differentiable(api):
    x = _t(tg, [0.3, -0.7, 1.1], rg=True)
    v = _t(tg, [1.0, 0.5, -2.0])
    fn = {"vjp": lambda x: F.vjp(lambda a: (a ** 3).sin(), x, v, create_graph=True)[1],
          "jvp": lambda x: F.jvp(lambda a: (a ** 3).sin(), x, v, create_graph=True)[1],
          "hvp": lambda x: F.hvp(lambda a: (a ** 4).sum(), x, v, create_graph=True)[1],
          "vhp": lambda x: F.vhp(lambda a: (a ** 4).sum(), x, v, create_graph=True)[1],
          "jacobian": lambda x: F.jacobian(lambda a: (a ** 3).sin(), x, create_graph=True),
          "hessian": lambda x: F.hessian(lambda a: (a ** 4).sum(), x, create_graph=True)}[api]
    r = fn(x)
    assert r.requires_grad and r.grad_fn is not None
    (g,) = tg.autograd.grad(r.sum(), x)
    eps = 1e-6
    num = np.zeros(3)
    for i in range(3):
        d = np.zeros(3)
        d[i] = eps
        with tg.enable_grad():
            fp = fn(_t(tg, x.detach().numpy() + d, rg=True)).sum().item()
            fm = fn(_t(tg, x.detach().numpy() - d, rg=True)).sum().item()
        num[i] = (fp - fm) / (2 * eps)
    np.testing.assert_allclose(g.numpy(), num, rtol=1e-6, atol=1e-7)


def test_results_are_detached_without_create_graph():
    x = _t(tg, [1.0, 2.0], rg=True)
    out, r = F.vjp(lambda a: a * a, x, _t(tg, [1.0, 1.0]))
    assert not out.requires_grad and not r.requires_grad
    H = F.hessian(lambda a: (a ** 3).sum(), x)
    assert not H.requires_grad
    np.testing.assert_allclose(H.numpy(), np.diag([6.0, 12.0]))


def test_closed_forms():
    x = np.array([0.5, -1.5, 2.0])
    v = np.array([1.0, 2.0, -1.0])
    f = lambda a: (a ** 3).sum()  # noqa: E731  H = diag(6x)
    _, hv = F.hvp(f, _t(tg, x), _t(tg, v))
    _, vh = F.vhp(f, _t(tg, x), _t(tg, v))
    np.testing.assert_allclose(hv.numpy(), 6 * x * v)
    np.testing.assert_allclose(vh.numpy(), 6 * x * v)
    J = F.jacobian(lambda a: a.exp() * 2, _t(tg, x))
    np.testing.assert_allclose(J.numpy(), np.diag(2 * np.exp(x)))
    Jv = F.jacobian(lambda a: a.exp() * 2, _t(tg, x), vectorize=True)
    np.testing.assert_allclose(Jv.numpy(), J.numpy())
    _, jv = F.jvp(lambda a: a.exp() * 2, _t(tg, x), _t(tg, v))
    np.testing.assert_allclose(jv.numpy(), 2 * np.exp(x) * v)


def test_unused_input_gives_zeros_or_strict_error():
    x, y = _t(tg, [1.0, 2.0]), _t(tg, [3.0])
    J = F.jacobian(lambda a, b: a * 2, (x, y))
    np.testing.assert_allclose(J[1].numpy(), np.zeros((2, 1)))
    with pytest.raises(RuntimeError, match="Output 0 of the user-provided function is independent of input 1"):
        F.jacobian(lambda a, b: a * 2, (x, y), strict=True)
    with pytest.raises(RuntimeError, match="is independent of input 1. This is not allowed in strict mode"):
        F.vjp(lambda a, b: (a * 2).sum(), (x, y), strict=True)
    with pytest.raises(RuntimeError, match="jacobian of the user-provided function with respect to input 0 is "
                                           "independent of the input"):
        F.hessian(lambda a: (a * 2).sum(), x, strict=True)
    with pytest.raises(RuntimeError, match="does not require gradients"):
        F.vjp(lambda a: tg.ones(2), x, _t(tg, [1.0, 1.0]), strict=True)


# -- bad input: torch's error types and key words -------------------------------------------------
BAD = {
    "jacobian_non_tensor_output": (lambda lib, x: lib.autograd.functional.jacobian(lambda a: 3.0, x),
                                   TypeError, "must be either a Tensor or a tuple of Tensors"),
    "jacobian_non_tensor_input": (lambda lib, x: lib.autograd.functional.jacobian(lambda a: a, [1.0]),
                                  TypeError, "The inputs given to jacobian must be either a Tensor or a tuple"),
    "vjp_v_missing": (lambda lib, x: lib.autograd.functional.vjp(lambda a: a * 2, x),
                      RuntimeError, "The vector v can only be None if the user-provided function returns"),
    "vjp_v_bad_size": (lambda lib, x: lib.autograd.functional.vjp(lambda a: a * 2, x, lib.ones(3, dtype=lib.float64)),
                       RuntimeError, "v has invalid size: should be"),
    "hvp_not_scalar": (lambda lib, x: lib.autograd.functional.hvp(lambda a: a * 2, x, x),
                       RuntimeError, "should contain a single element"),
    "hessian_tuple_output": (lambda lib, x: lib.autograd.functional.hessian(lambda a: (a.sum(), a.sum()), x),
                             RuntimeError, "should return a single Tensor"),
    "jvp_v_tuple_length": (lambda lib, x: lib.autograd.functional.jvp(lambda a, b: a * b, (x, x), (x,)),
                           RuntimeError, "v is a tuple of invalid length: should be 2 but got 1"),
    "jacobian_vectorize_strict": (lambda lib, x: lib.autograd.functional.jacobian(lambda a: a, x, strict=True,
                                                                                  vectorize=True),
                                  RuntimeError, "`strict=True` and `vectorized=True` are not supported together"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input(name):
    call, exc, msg = BAD[name]
    with pytest.raises(exc, match=msg):
        call(tg, _t(tg, [1.0, 2.0]))


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_like_torch(name):
    torch = pytest.importorskip("torch")
    call, exc, msg = BAD[name]
    with pytest.raises(exc, match=msg):
        call(torch, _t(torch, [1.0, 2.0]))
