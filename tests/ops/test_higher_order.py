"""Higher order, to any order: every row of ops.TABLE differentiated three times.

The programs are the higher-order ones of tests/ops/cases.py (one entry per row, shared with
test_rows.py): each is a scalar program (written once for tapegrad and torch) that records its row
where its VJP is itself differentiated: the first derivative goes through the row's VJP
(create_graph path, recorded), the second and third through the VJPs of what that recorded.
tests/ops/test_rows.py's ``test_every_row_has_a_case`` fails for a row without one.

For each case, in float64, with fixed vectors u and w:
  g = d f / dx,  h = d (g . u) / dx  (Hessian times u),  t = d (h . w) / dx  (third derivative)
are checked against torch, and h and t against central finite differences of g and h.
"""
import gc
import tracemalloc
import warnings

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import ops
from tapegrad.tape import Tape

from .cases import CASES, GPU_ONLY, cube_function

RNG = np.random.default_rng(5)
SEED = 5  # the cases' inputs: drawn afresh for each test, the same on every run


ROWS = sorted(CASES)


def _values(name):
    return CASES[name].higher.inputs(SEED)


def _directions(values):
    r = np.random.default_rng(1)
    return [r.standard_normal(v.shape) for v in values], [r.standard_normal(v.shape) for v in values]


def _xs(lib, values):
    return [lib.tensor(v, dtype=lib.float64, requires_grad=True) for v in values]


def _np(t):
    return t.detach().numpy()


def derivatives(lib, fn, values, u, w):
    """[g, h, t] per input, each as NumPy arrays (see the module docstring)."""
    xs = _xs(lib, values)
    g = lib.autograd.grad(fn(lib, *xs), xs, create_graph=True)
    s2 = sum((gi * lib.tensor(ui)).sum() for gi, ui in zip(g, u))
    h = lib.autograd.grad(s2, xs, create_graph=True, allow_unused=True)
    h = [hi if hi is not None else lib.zeros_like(x) for hi, x in zip(h, xs)]
    s3 = sum((hi * lib.tensor(wi)).sum() for hi, wi in zip(h, w))
    t = lib.autograd.grad(s3, xs, allow_unused=True) if s3.requires_grad else [None] * len(xs)
    t = [ti if ti is not None else lib.zeros_like(x) for ti, x in zip(t, xs)]
    return [list(map(_np, d)) for d in (g, h, t)]


@pytest.mark.parametrize("name", sorted(set(ROWS) - GPU_ONLY))
def test_row_is_differentiated(name):
    """The case records its row on the tapes that the third derivative walks."""
    fn = CASES[name].higher.fn
    values = _values(name)
    xs = _xs(tg, values)
    y = fn(tg, *xs)
    g = tg.autograd.grad(y, xs, create_graph=True)
    codes = set()
    for t in [y, *g]:
        if t._tape is not None:
            R, _ = t._tape.row_table()
            codes |= set(R[:, 0].tolist())
    assert ops.BY_NAME[name].code in codes, f"the program for {name} does not record that row"
    assert any(gi.requires_grad for gi in g), "the first derivative does not depend on the inputs"


@pytest.mark.parametrize("name", ROWS)
def test_against_torch(name):
    torch = pytest.importorskip("torch")
    fn = CASES[name].higher.fn
    values = _values(name)
    u, w = _directions(values)
    ours = derivatives(tg, fn, values, u, w)
    theirs = derivatives(torch, fn, values, u, w)
    rtol = CASES[name].higher.torch_rtol
    for order, (a, b) in enumerate(zip(ours, theirs), 1):
        for k, (x, y) in enumerate(zip(a, b)):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-10, err_msg=f"order {order}, input {k}")


@pytest.mark.parametrize("name", ROWS)
def test_against_finite_differences(name):
    """h against central differences of g . u, and t against those of h . w, along random
    directions z (a directional derivative checks every entry at once: sum_k h_k . z_k)."""
    fn = CASES[name].higher.fn
    values = _values(name)
    u, w = _directions(values)
    g, h, t = derivatives(tg, fn, values, u, w)
    eps = CASES[name].higher.eps
    rtol = CASES[name].higher.fd_rtol

    def g_dot_u(vals):  # by the jitted backward
        xs = _xs(tg, vals)
        return sum(float((gi.numpy() * ui).sum()) for gi, ui in zip(tg.autograd.grad(fn(tg, *xs), xs), u))

    def h_dot_w(vals):  # one create_graph pass, then the jitted backward
        xs = _xs(tg, vals)
        gs = tg.autograd.grad(fn(tg, *xs), xs, create_graph=True)
        s2 = sum((gi * tg.tensor(ui)).sum() for gi, ui in zip(gs, u))
        if not s2.requires_grad:
            return 0.0
        hs = tg.autograd.grad(s2, xs, allow_unused=True)
        return sum(float((hi.numpy() * wi).sum()) for hi, wi in zip(hs, w) if hi is not None)

    r = np.random.default_rng(2)
    for target, f in ((h, g_dot_u), (t, h_dot_w)):
        for _ in range(2):
            z = [r.standard_normal(v.shape) for v in values]
            up, down = [v + eps * d for v, d in zip(values, z)], [v - eps * d for v, d in zip(values, z)]
            num = (f(up) - f(down)) / (2 * eps)
            ana = sum(float((a * d).sum()) for a, d in zip(target, z))
            np.testing.assert_allclose(ana, num, rtol=rtol, atol=1e-6)


# -- create_graph semantics ----------------------------------------------------------------------
def test_backward_create_graph_then_backward_again():
    torch = pytest.importorskip("torch")
    out = []
    for lib in (tg, torch):
        x = lib.tensor([0.5, -1.0, 2.0], dtype=lib.float64, requires_grad=True)
        y = (x.sin() * x ** 3).sum()
        y.backward(create_graph=True)
        g = x.grad
        assert g.requires_grad and g.grad_fn is not None
        (g * g).sum().backward()  # accumulates d(|g|^2)/dx into x.grad, as torch does
        out.append((_np(g), _np(x.grad)))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-12)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-12)


def test_fourth_and_fifth_order():
    x = tg.tensor([0.7], dtype=tg.float64, requires_grad=True)
    d = (x ** 5 + x.sin()).sum()
    got = []
    for _ in range(5):
        (d,) = tg.autograd.grad(d.sum(), x, create_graph=True)
        got.append(d.item())
    v = 0.7
    want = [5 * v ** 4 + np.cos(v), 20 * v ** 3 - np.sin(v), 60 * v ** 2 - np.cos(v), 120 * v + np.sin(v),
            120 + np.cos(v)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


REPRS = {  # programs whose create_graph gradients print as torch's do (values and grad_fn)
    "pow": lambda lib, x: (x ** 3).sum(),
    "sin": lambda lib, x: x.sin().sum(),
    "exp": lambda lib, x: x.exp().sum(),
    "mul": lambda lib, x: (x * x).sum(),
    "mean": lambda lib, x: (x * x).mean(),
    "log": lambda lib, x: x.log().sum(),
    "sqrt": lambda lib, x: x.sqrt().sum(),
    "reciprocal": lambda lib, x: (1 / x).sum(),
    "mm": lambda lib, x: (x.view(1, 2) @ x.view(2, 1)).sum(),
    "linear": lambda lib, x: (x * 3).sum(),
    "cos": lambda lib, x: x.cos().sum(),
    "rpow": lambda lib, x: (2.0 ** x).sum(),
}


@pytest.mark.parametrize("name", sorted(REPRS))
def test_create_graph_grads_print_like_torch(name):
    torch = pytest.importorskip("torch")
    texts = []
    for lib in (tg, torch):
        x = lib.tensor([1.5, 2.0], requires_grad=True)
        (g,) = lib.autograd.grad(REPRS[name](lib, x), x, create_graph=True)
        texts.append(repr(g))
        if g.requires_grad:
            (g2,) = lib.autograd.grad(g.sum(), x, create_graph=True)
            texts.append(repr(g2))
    assert texts[: len(texts) // 2] == texts[len(texts) // 2:]


def test_hvp_records_its_product_on_the_gradient_tape():
    """After a tape's first create_graph backward, ops on its values still record on it: an hvp's
    (g * v).sum() joins the gradient's tape, so its backward replays one tape; a new forward from
    leaves starts a new tape. Values are torch's either way."""
    torch = pytest.importorskip("torch")
    a, u = RNG.standard_normal(6), RNG.standard_normal(6)
    out = []
    for lib in (tg, torch):
        x = lib.tensor(a, requires_grad=True)
        f = ((x[1:] - x[:-1] ** 2) ** 2 * 100.0 + (1.0 - x[:-1]) ** 2).sum()
        (g,) = lib.autograd.grad(f, x, create_graph=True)
        s = (g * lib.tensor(u)).sum()
        if lib is tg:
            assert s._tape is g._tape is f._tape
            assert (x * 2.0)._tape is not f._tape
        (h,) = lib.autograd.grad(s, x)
        out.append(h.numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-13)


def test_create_graph_loop_through_one_gradient_does_not_grow_its_tape():
    """Only a tape's first create_graph backward leaves it open to ops on its values: a loop of
    create_graph backwards through one gradient records each step on a tape of its own."""
    x = tg.tensor([0.5, -1.5, 2.0], dtype=tg.float64, requires_grad=True)
    y = x * 2.0  # (the VJPs then read y, on this tape, rather than the leaf: they would record here too)
    (g,) = tg.autograd.grad((y ** 3).sum(), y, create_graph=True)
    tape, sizes = g._tape, []
    for i in range(1, 6):
        (h,) = tg.autograd.grad((g * float(i)).sum(), y, create_graph=True)
        np.testing.assert_allclose(h.detach().numpy(), 6.0 * i * y.detach().numpy(), rtol=1e-15)
        sizes.append(tape.n)
    assert len(set(sizes)) == 1, sizes


# -- memory: create_graph loops run flat, freed by reference counting alone --------------------
def _penalty_step(w, x, create_graph_backward=False):
    """A gradient-penalty step: loss + |d loss / d input|^2, backward into the parameter."""
    xi = x.detach().requires_grad_(True)
    out = (xi @ w).tanh().sum()
    (gx,) = tg.autograd.grad(out, xi, create_graph=True)
    loss = out + (gx * gx).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference-cycle warning torch gives; tapegrad has no such cycle
        loss.backward(create_graph=create_graph_backward)
    with tg.no_grad():
        w -= 0.001 * w.grad
    w.grad = None
    return loss


@pytest.mark.parametrize("create_graph_backward", [False, True])
def test_gradient_penalty_loop_runs_in_flat_memory(create_graph_backward):
    w = tg.tensor(RNG.standard_normal((8, 4)) * 0.1, dtype=tg.float64, requires_grad=True)
    x = tg.tensor(RNG.standard_normal((16, 8)), dtype=tg.float64)
    gc.collect()
    gc.disable()  # reference counting alone must free every step's tape
    tracemalloc.start()
    try:
        kept = []
        for i in range(2000):
            loss = _penalty_step(w, x, create_graph_backward)
            if i % 100 == 0:
                kept.append(loss.item())
            if i == 999:  # after a warm-up that fills the interpreter's free lists
                base, _ = tracemalloc.get_traced_memory()
        end, _ = tracemalloc.get_traced_memory()
        tapes = sum(type(o) is Tape for o in gc.get_objects())
    finally:
        tracemalloc.stop()
        gc.enable()
    # one leaked step's tape holds a few KiB of values: 1000 of them would be megabytes
    assert end - base < 100 * 1024, f"grew by {(end - base) / 1024:.0f} KiB over 1000 steps"
    # the last step's only: its forward (closed by autograd.grad) and the loss recorded after it
    assert tapes <= 2, f"{tapes} tapes alive after the loop"
    assert np.isfinite(kept).all()


def test_parameter_grad_with_graph_does_not_keep_the_tape_alive():
    import weakref
    gc.disable()
    try:
        w = tg.tensor([1.0, 2.0], dtype=tg.float64, requires_grad=True)
        y = (w ** 3).sum()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's reference-cycle warning
            y.backward(create_graph=True)  # w.grad has a grad_fn; its tape has w as a leaf
        tape, param = weakref.ref(w.grad._tape), weakref.ref(w)
        del y, w  # only w -> w.grad -> tape -> w is left: reference counting must free it
        assert param() is None and tape() is None
    finally:
        gc.enable()


# -- the create_graph walk defers negations (ops.Negated) --------------------------------------
def _cube_of(lib, t):
    return cube_function(lib).apply(t)


# programs where a negation (neg, sub's second operand, rsub) meets each row of ops.SIGN_THROUGH,
# an accumulation, a leaf, a custom Function, hooks and retained grads
NEGATED = {
    "add": lambda lib, x, y: ((1.0 - (x + y)) ** 3).sum(),
    "sub": lambda lib, x, y: ((1.0 - (x * 2.0 - y)) ** 3 * x).sum(),
    "mul": lambda lib, x, y: ((1.0 - x * y) ** 3).sum(),
    "mul_same": lambda lib, x, y: ((1.0 - x * x) ** 3 + y * y).sum(),
    "mul_broadcast": lambda lib, x, y: ((1.0 - (x * y.sum(0, keepdim=True)).exp()) ** 3).sum(),
    "div": lambda lib, x, y: ((1.0 - x / y) ** 3).sum(),
    "add_scalar": lambda lib, x, y: ((1.0 - (x + 2.0) * y) ** 3).sum(),
    "sub_scalar": lambda lib, x, y: ((1.0 - (x - 2.0) * y) ** 3).sum(),
    "rsub_scalar": lambda lib, x, y: ((1.0 - (2.0 - x * y)) ** 3).sum(),
    "mul_scalar": lambda lib, x, y: ((1.0 - (x * y) * 3.0) ** 3).sum(),
    "scale": lambda lib, x, y: ((1.0 - y.add(x * y, alpha=3.0)) ** 3).sum(),
    "div_scalar": lambda lib, x, y: ((1.0 - (x * y) / 3.0) ** 3).sum(),
    "pow_scalar": lambda lib, x, y: ((1.0 - (x * y) ** 3) ** 3).sum(),
    "neg": lambda lib, x, y: ((-(-(x * y))) ** 3 - x).sum(),
    "exp": lambda lib, x, y: ((1.0 - (x * y).exp()) ** 3).sum(),
    "log": lambda lib, x, y: ((1.0 - (x * y).abs().log()) ** 3).sum(),
    "sin": lambda lib, x, y: ((1.0 - (x * y).sin()) ** 3).sum(),
    "cos": lambda lib, x, y: ((1.0 - (x * y).cos()) ** 3).sum(),
    "tanh": lambda lib, x, y: ((1.0 - (x * y).tanh()) ** 3).sum(),
    "sqrt": lambda lib, x, y: ((1.0 - (x * y).abs().sqrt()) ** 3).sum(),
    # two gradients of one intermediate z: negated and negated, plain then negated, negated then plain
    "negated_meets_negated": lambda lib, x, y: (lambda z: ((1.0 - z) ** 3 + (2.0 - z) ** 2).sum())(x * y),
    "plain_meets_negated": lambda lib, x, y: (lambda z: ((1.0 - z) ** 3 + z ** 2).sum())(x * y),
    "negated_meets_plain": lambda lib, x, y: (lambda z: (z ** 2 + (1.0 - z) ** 3).sum())(x * y),
    "leaf": lambda lib, x, y: (x * y - x - (-y)).sum() ** 2,
    "getitem": lambda lib, x, y: ((x[1:] - x[:-1] * x[:-1]) ** 2 * 100.0 + (1.0 - x[:-1]) ** 2).sum() * y.sum(),
    "function": lambda lib, x, y: ((1.0 - _cube_of(lib, x * y)) ** 2).sum(),
    "abs": lambda lib, x, y: ((1.0 - (x * y).abs()) ** 3).sum(),  # (not SIGN_THROUGH: the neg is recorded)
}


def _negated_derivatives(lib, name, hook):
    a = np.array([[0.3, -1.2, 0.7], [1.1, -0.4, 0.9]])
    b = np.array([[0.8, 0.5, -1.3], [-0.6, 1.4, 0.2]])
    x = lib.tensor(a, dtype=lib.float64, requires_grad=True)
    y = lib.tensor(b, dtype=lib.float64, requires_grad=True)
    xy = None
    if hook:  # a hook (that sees the sign) and a retained grad on z, the operand of the rsub
        xy = (x * y).exp()
        xy.retain_grad()
        xy.register_hook(lambda g: g * g)
        f = ((1.0 - xy) ** 3).sum()
    else:
        f = NEGATED[name](lib, x, y)
    gs = lib.autograd.grad(f, (x, y), create_graph=True)
    names = [type(g.grad_fn).__name__ if lib is not tg else g.grad_fn.name() for g in gs]
    s = sum((g * lib.tensor(np.cos(np.arange(6.0)).reshape(2, 3))).sum() for g in gs)
    hs = lib.autograd.grad(s, (x, y), allow_unused=True)
    out = [g.detach().numpy().copy() for g in gs] + [h.numpy().copy() for h in hs if h is not None]
    if hook:
        out.append(xy.grad.detach().numpy().copy())
    return out, names


@pytest.mark.parametrize("name", sorted(NEGATED) + ["hook"])
def test_deferred_negation_matches_torch_and_the_recorded_negation(name, monkeypatch):
    """Each gradient is torch's (its grad_fn too), and the first derivatives are bit for bit what
    recording every neg gives (the second ones replay another graph: the same up to rounding)."""
    torch = pytest.importorskip("torch")
    hook = name == "hook"
    ours, names = _negated_derivatives(tg, name, hook)
    theirs, torch_names = _negated_derivatives(torch, name, hook)
    assert names == torch_names
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(ops, "negated", lambda g: -g)  # every VJP's negation recorded, as before
    monkeypatch.setattr(ops, "SIGN_THROUGH", frozenset())
    recorded, recorded_names = _negated_derivatives(tg, name, hook)
    assert names == recorded_names
    for k, (a, b) in enumerate(zip(ours, recorded)):
        if k < 2:
            assert a.tobytes() == b.tobytes()
        else:
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)


def test_rosenbrock_gradient_records_no_negation():
    """W4's create_graph pass: the signs of sub's and rsub's VJPs fold into the rows around them
    (x[:-1]'s into the add_run that sums x's gradient);
    the gradient is torch's bit for bit and shows torch's grad_fn."""
    torch = pytest.importorskip("torch")
    a = RNG.standard_normal(50)
    gs = []
    for lib in (tg, torch):
        x = lib.tensor(a, dtype=lib.float64, requires_grad=True)
        xa, xb = x[:-1], x[1:]
        f = (100.0 * (xb - xa * xa) ** 2 + (1.0 - xa) ** 2).sum()
        n = f._tape.n if lib is tg else 0
        (g,) = lib.autograd.grad(f, x, create_graph=True)
        gs.append(g)
        if lib is tg:
            R, _ = g._tape.row_table()
            recorded = [ops.TABLE[c].name for c in R[n:, 0].tolist()]
            assert "neg" not in recorded, recorded
    assert gs[0].grad_fn.name() == type(gs[1].grad_fn).__name__
    assert gs[0].detach().numpy().tobytes() == gs[1].detach().numpy().tobytes()
