"""``python -m tapegrad demo``: the worked examples of the articles our users learned autograd from,
each result beside the value the article shows; then a small MLP trained on two spirals, the tape
of one training step, and that step's gradients checked against finite differences."""
import math
import shutil
import sys
import time
import warnings

import numpy as np

import tapegrad as tg
from tapegrad import nn
from tapegrad.nn import functional as F


# -- the worked examples (seeds.md) ----------------------------------------------------------------
def _v(t):
    return t.tolist() if isinstance(t, tg.Tensor) else t


def _error(fn):
    """'ErrorType: message' of what fn raises, or 'no error'."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _seeds_A():
    x = tg.rand(2, 2, requires_grad=True)
    y = x + 2
    z = tg.sum(y)
    yield "A1", "autograd.grad(z, y)[0]", _v(tg.autograd.grad(z, y)[0]), [[1, 1], [1, 1]]
    yield "A1", "x.grad (grad() leaves it alone)", x.grad, None
    y = x ** 2
    z = tg.sum(y)
    dzdy = tg.autograd.grad(z, y, retain_graph=True)[0]
    dzdx = tg.autograd.grad(y, x, grad_outputs=dzdy)[0]
    yield "A2", "grad(y, x, grad_outputs=dzdy) == 2*x", bool(np.allclose(dzdx.tolist(), 2 * x.detach().numpy())), True
    a, b = tg.tensor([1.0, 2.0], requires_grad=True), tg.tensor([1.0, 2.0], requires_grad=True)
    tg.autograd.backward((a * a).sum())
    (b * b).sum().backward()
    yield "A3", "autograd.backward(t) vs t.backward()", _v(a.grad), _v(b.grad)
    u = tg.tensor([1.0], requires_grad=True)
    y = 3 * x
    yield "A4", "grad(y.sum(), [x, u], allow_unused=True)[1]", \
        tg.autograd.grad(y.sum(), [x, u], allow_unused=True, retain_graph=True)[1], None
    yield "A4", "... without allow_unused", _error(lambda: tg.autograd.grad(y.sum(), [x, u])), \
        "RuntimeError: ...appears to not have been used in the graph"


def _seeds_B():
    x, y, z = tg.randn(3), tg.randn(3), tg.randn(3, requires_grad=True)
    a = x + y
    b = a + z
    yield "B1", "x.grad_fn, a.grad_fn", (x.grad_fn, a.grad_fn), (None, None)
    yield "B1", "x, y, z requires_grad", (x.requires_grad, y.requires_grad, z.requires_grad), (False, False, True)
    yield "B1", "a, b requires_grad", (a.requires_grad, b.requires_grad), (False, True)
    x.requires_grad = True
    yield "B2", "a.requires_grad after x.requires_grad=True", a.requires_grad, False
    x = tg.tensor([[1.0, 2, 3], [4, 5, 6]], requires_grad=True)
    y = x + 2
    z = y * y * 3
    out = z.mean()
    yield "B3", "y = x + 2", (_v(y), y.grad_fn.name()), ([[3, 4, 5], [6, 7, 8]], "AddBackward0")
    yield "B3", "z = y * y * 3", (_v(z), z.grad_fn.name()), ([[27, 48, 75], [108, 147, 192]], "MulBackward0")
    yield "B3", "out = z.mean()", (out.item(), out.grad_fn.name()), (99.5, "MeanBackward0")
    out.backward()
    yield "B4", "out.backward(); x.grad", _v(x.grad), [[3, 4, 5], [6, 7, 8]]
    x = tg.tensor([[1.0, 2, 3], [4, 5, 6]], requires_grad=True)
    z = (x + 2) * (x + 2) * 3
    yield "B5", "z.backward() on a 2x3 z", _error(z.backward), \
        "RuntimeError: grad can be implicitly created only for scalar outputs"
    z.backward(gradient=tg.ones(2, 3), retain_graph=True)
    yield "B5", "z.backward(ones(2,3)); x.grad", _v(x.grad), [[18, 24, 30], [36, 42, 48]]
    x.grad = None
    z.backward(gradient=tg.full((2, 3), 0.5), retain_graph=True)
    yield "B5", "z.backward(0.5 everywhere); x.grad", _v(x.grad), [[9, 12, 15], [18, 21, 24]]
    g = tg.tensor([[1.0, 0.1, 2], [0.5, 1, 3]])
    x.grad = None
    z.backward(g, retain_graph=True)
    by_vjp = _v(x.grad)
    x.grad = None
    tg.sum(z * g).backward()
    yield "B6", "z.backward(g) vs sum(z*g).backward()", by_vjp, _v(x.grad)


def _seeds_C():
    a = tg.tensor([2.0, 3.0], requires_grad=True)
    out = ((a + 3) * 3).mean()
    out.backward()
    yield "C1", "out, a.grad", (out.item(), _v(a.grad)), (16.5, [1.5, 1.5])
    a = tg.tensor([[2.0, 4.0]], requires_grad=True)
    b = tg.zeros(1, 2)
    b[0, 0] = a[0, 0] ** 2 + a[0, 1]
    b[0, 1] = a[0, 1] ** 3 + a[0, 0]
    out = 2 * b
    out.backward(tg.tensor([[1.0, 2.0]]))
    yield "C2", "out = 2*b (b assigned element-wise)", _v(out), [[16, 132]]
    yield "C2", "out.backward([[1,2]]); a.grad", _v(a.grad), [[12, 194]]
    a = tg.tensor([[2.0, 3.0], [1.0, 2.0]], requires_grad=True)
    w = tg.ones(2, 1, requires_grad=True)
    tg.mm(a, w).backward(tg.tensor([[1.0], [1.0]]))
    yield "C3", "mm(a, w).backward([[1],[1]]); w.grad", _v(w.grad), [[3], [5]]


def _seeds_D():
    x = tg.ones(2, requires_grad=True)
    y = x * 2
    y.sum().backward()
    yield "D1", "x.is_leaf, y.is_leaf; x.grad", (x.is_leaf, y.is_leaf, _v(x.grad)), (True, False, [2, 2])
    x = tg.ones(3, 3)
    x = x * x + 2
    x.requires_grad_(True)
    yield "D2", "requires_grad_() on a computed tensor", (x.requires_grad, x.grad_fn, x.is_leaf), (True, None, True)
    x = tg.ones(2, 2, requires_grad=True)
    out = tg.mean(3 * (x + 2) ** 2)
    out.backward()
    yield "D3", "out = mean(3*(x+2)**2); x.grad", (out.item(), _v(x.grad)), (27, [[4.5, 4.5], [4.5, 4.5]])
    x.sum().backward()
    yield "D4", "grads accumulate: + x.sum().backward()", _v(x.grad), [[5.5, 5.5], [5.5, 5.5]]
    x.grad.data.zero_()
    yield "D4", "x.grad.data.zero_()", _v(x.grad), [[0, 0], [0, 0]]
    x = tg.tensor([1.0, 2, 3, 4.5], requires_grad=True)
    z = (x * x + 2).view(2, 2)
    z.backward(tg.tensor([[1.0, 0.1], [1.0, 0.01]]))
    yield "D5", "view(2,2).backward(...); x.grad", _v(x.grad), [2, 0.4, 6, 0.09]
    x = tg.tensor(1.0, requires_grad=True)
    y1 = x ** 2
    with tg.no_grad():
        y2 = x ** 3
    (y1 + y2).backward()
    yield "D6", "y2 under no_grad: x.grad, y2.requires_grad", (x.grad.item(), y2.requires_grad), (2, False)
    x = tg.ones(1, requires_grad=True)
    d = x.data
    y = 2 * x
    x.data *= 100
    y.backward()
    yield "D7", "x.data *= 100 after y = 2*x: x, x.grad", (d.requires_grad, _v(x), _v(x.grad)), (False, [100], [2])


def _seeds_E():
    a = tg.tensor([10.0, 10.0], requires_grad=True)
    b = tg.tensor([20.0, 20.0], requires_grad=True)
    F_ = a * b
    yield "E1", "F.backward() on a vector", _error(F_.backward), \
        "RuntimeError: grad can be implicitly created only for scalar outputs"
    F_.backward(gradient=tg.ones(2))
    yield "E1", "F.backward(ones(2)); a.grad, b.grad", (_v(a.grad), _v(b.grad)), ([20, 20], [10, 10])
    F_ = a * b
    G = 2 * F_
    G.backward(tg.ones(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = F_.grad
    warned = any("retain_grad" in str(w.message) for w in caught)
    yield "E2", "non-leaf F.grad; a warning names retain_grad", (got, warned), (None, True)
    F_ = a * b
    F_.retain_grad()
    (2 * F_).backward(tg.ones(2))
    yield "E3", "F.retain_grad(); F.grad", _v(F_.grad), [2, 2]
    yield "E4", "a.is_leaf, b.is_leaf, F.is_leaf", (a.is_leaf, b.is_leaf, F_.is_leaf), (True, True, False)
    y = (a * a).sum()
    y.backward()
    yield "E5", "a second backward", _error(y.backward), \
        "RuntimeError: Trying to backward through the graph a second time"
    y = (a * a).sum()
    y.backward(retain_graph=True)
    yield "E5", "... after retain_graph=True", _error(y.backward), "no error"
    c = a * 1.0
    y = (c * c).sum()
    c.mul_(2)
    yield "E5", "in-place change of a saved value", _error(y.backward), \
        "RuntimeError: one of the variables needed for gradient computation has been modified by an inplace operation"
    d = c.detach()
    d.zero_()
    yield "E5", "detach() shares storage", (d.requires_grad, _v(c)), (False, [0, 0])
    v = tg.autograd.Variable(tg.ones(2, 2), requires_grad=True)
    (v * 2).sum().backward()
    yield "Var", "Variable(t, requires_grad=True)", (type(v).__name__, _v(v.grad)), ("Tensor", [[2, 2], [2, 2]])


SECTIONS = [("A", "autograd.grad and grad_outputs (vector-Jacobian products)", _seeds_A),
            ("B", "leaves, requires_grad, grad_fn", _seeds_B),
            ("C", "backward with a weight vector", _seeds_C),
            ("D", "leaves, accumulation, no_grad, .data", _seeds_D),
            ("E", ".backward() on vectors, leaves and retain_grad; the legacy Variable", _seeds_E)]


def _same(got, want):
    if isinstance(want, str):  # an error: its type and key words ("..." stands for any text)
        return isinstance(got, str) and got.startswith(want.split("...")[0]) and \
            all(k in got for k in want.split("..."))
    if want is None or isinstance(want, bool):
        return got is want or got == want
    if isinstance(want, tuple):
        return isinstance(got, tuple) and len(got) == len(want) and all(map(_same, got, want))
    try:
        return bool(np.allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=1e-5, atol=1e-6))
    except (TypeError, ValueError):
        return got == want


def _show(v, width=36):
    if isinstance(v, float):
        s = f"{v:g}"
    elif isinstance(v, list):
        s = "[" + ", ".join(_show(x, 10**6) for x in v) + "]"
    elif isinstance(v, tuple):
        s = ", ".join(_show(x, 10**6) for x in v)
    else:
        s = str(v)
    return s if len(s) <= width else s[: width - 3] + "..."


def run_seeds(out):
    print("1. The worked examples, tapegrad beside the articles", file=out)
    w = 36
    print(f"  {'':4} {'':44} {'tapegrad':{w}}  article", file=out)
    passed = total = 0
    for key, title, gen in SECTIONS:
        print(f"  {key}. {title}", file=out)
        for ex, what, got, want in gen():
            ok = _same(got, want)
            passed += ok
            total += 1
            print(f"  {ex:4} {what:44.44} {_show(got):{w}}  {_show(want):{w}}  {'ok' if ok else 'MISMATCH'}",
                  file=out)
    print(f"  {passed}/{total} results match the articles\n", file=out)
    return passed == total


# -- two spirals -------------------------------------------------------------------------------------
def two_spirals(n_per_class=200, noise=0.15, seed=0):
    """Two interleaved spirals in the plane (the classic benchmark), scaled to about [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.random(n_per_class)) * 3 * math.pi  # denser towards the centre
    arm = np.stack([-np.cos(t) * t, np.sin(t) * t], 1) + rng.normal(0, noise, (n_per_class, 2))
    X = np.concatenate([arm, -arm]) / (3 * math.pi)
    y = np.concatenate([np.zeros(n_per_class), np.ones(n_per_class)]).astype(np.int64)
    return X.astype(np.float32), y


def mlp(hidden=32):
    return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, 2))


def _accuracy(logits, y):
    return float((logits.detach().numpy().argmax(1) == y).mean())


def train(model, X, y, steps, out):
    print(f"2. Training a {_arch(model)} MLP on two spirals ({len(y)} points), Adam, full batch", file=out)
    opt = tg.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    Xt, yt = tg.from_numpy(X), tg.from_numpy(y)
    print(f"  {'step':>6}  {'loss':>8}  {'accuracy':>8}", file=out)
    out.flush()
    try:
        from tqdm import tqdm
        bar = tqdm(range(steps), desc="  training", unit="step", disable=None)  # no bar without a terminal
    except ImportError:  # the demo extra brings tqdm; the run works without it
        bar = None
    every = max(1, steps // 6)
    t0 = time.perf_counter()
    for step in (bar if bar is not None else range(steps)):
        opt.zero_grad()
        logits = model(Xt)
        loss = loss_fn(logits, yt)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps - 1:
            acc = _accuracy(logits, y)
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.4f}", acc=f"{acc:.3f}")
                bar.clear()
            print(f"  {step:>6}  {loss.item():>8.4f}  {acc:>8.1%}", file=out, flush=True)
    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    acc = _accuracy(model(Xt), y)
    print(f"  {steps} steps in {dt:.2f} s ({1e3 * dt / steps:.2f} ms a step); final accuracy {acc:.1%}\n", file=out)
    return acc


def _arch(model):
    sizes = [m.in_features for m in model if isinstance(m, nn.Linear)] + [model[-1].out_features]
    return "-".join(map(str, sizes))


# -- one step, dumped and checked ----------------------------------------------------------------
def _layers(model):
    return [(m.weight, m.bias) for m in model if isinstance(m, nn.Linear)]


def forward(params, X, y):
    """The training step's loss as a function of the flat parameter list [W1, b1, W2, b2, ...]."""
    h = X
    for k in range(0, len(params), 2):
        h = F.linear(h, params[k], params[k + 1])
        if k + 2 < len(params):
            h = tg.tanh(h)
    return F.cross_entropy(h, y)


def show_step(model, X, y, out):
    print("3. The tape of one training step (tg.dump(loss))", file=out)
    for name, p in model.named_parameters():
        p.name = name  # the dump shows leaves by their names
    Xt, yt = tg.from_numpy(X), tg.from_numpy(y)
    Xt.name = "X"
    loss = forward(list(model.parameters()), Xt, yt)
    for line in tg.dump(loss).splitlines():
        print("  " + line, file=out)
    print(file=out)
    return loss


def check_step(model, X, y, out, n=16):
    """Gradients of the step against finite differences, in float64 on a few points."""
    print("4. Checking that step's gradients (float64, central differences)", file=out)
    idx = np.linspace(0, len(y) - 1, n).astype(int)
    Xs, ys = tg.from_numpy(X[idx].astype(np.float64)), tg.from_numpy(y[idx])
    params = [tg.tensor(p.detach().numpy(), dtype=tg.float64, requires_grad=True) for p in model.parameters()]
    count = sum(p.numel() for p in params)
    try:
        ok = bool(tg.autograd.gradcheck(lambda *ps: forward(list(ps), Xs, ys), tuple(params), eps=1e-6,
                                        atol=1e-5, rtol=1e-3))
    except tg.autograd.GradcheckError as exc:  # the mismatching Jacobians, as torch prints them
        print(f"  {exc}", file=out)
        ok = False
    print(f"  tg.autograd.gradcheck over {count} parameters on {n} points: {'passed' if ok else 'FAILED'}\n",
          file=out)
    return ok


def draw_step(loss, png, out):
    print("5. The graph of that step", file=out)
    if shutil.which("dot") is None:
        print("  Graphviz's `dot` is not installed, so no picture is drawn (tg.to_dot(loss) gives the DOT text).\n"
              "  Install it with `sudo apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS)\n"
              "  or `conda install -c conda-forge graphviz`, then run the demo again.\n", file=out)
        return
    from tapegrad.dump import render
    render(loss, png)
    print(f"  drawn to {png}\n", file=out)


def run(steps=300, png="tapegrad-demo.png", out=None):
    out = out or sys.stdout
    t0 = time.perf_counter()
    print(f"tapegrad {tg.__version__} demo\n", file=out)
    seeds_ok = run_seeds(out)
    tg.manual_seed(0)
    X, y = two_spirals()
    model = mlp()
    train(model, X, y, steps, out)
    loss = show_step(model, X, y, out)
    grads_ok = check_step(model, X, y, out)
    draw_step(loss, png, out)
    print(f"demo finished in {time.perf_counter() - t0:.1f} s", file=out)
    return 0 if seeds_ok and grads_ok else 1
