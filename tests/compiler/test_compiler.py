"""tg.compile: recording a program on the first call, replaying it on later ones (results equal
to eager bit for bit), the guards that send a call back to eager recording, and what stays eager."""
import gc
import re
import threading
import tracemalloc
import warnings
import weakref

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import ops
from tapegrad.compiler.program import python_forward


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# -- replay equals eager ---------------------------------------------------------------------------
CASES = {
    "chain": lambda x, w: ((x * w + 1.0) * 0.5 - 2.0).relu().sum(),
    "unary": lambda x, w: (w.exp() + (w * w + 1.0).log() + w.tanh() + w.sigmoid() + (w * w).sqrt()).mean(),
    "scalars": lambda x, w: (2.0 - w / 3.0 + 1.5 * w - (w ** 2)).sum(),
    "bias": lambda x, w: (x + w.sum(0)).sum() + (x * w.mean(0, keepdim=True)).sum() + (w.sum() * x).sum()
    + (w.sum(0) - x).sum(),  # (the trailing block on either side)
    "mlp": lambda x, w: (x.t() @ w).relu().mean(),
    "softmax": lambda x, w: (x * w).softmax(1).sum() + (x * w).log_softmax(-1).mean(),
    "views": lambda x, w: (x * w).reshape(-1).unsqueeze(0).sum(1).squeeze(0),
    "reduce_dim": lambda x, w: (x * w).sum(0).mean() + (x * w).mean(1, keepdim=True).sum(),
    "no_grad_part": lambda x, w: _no_grad_part(x, w),
    "trig": lambda x, w: (w.sin() * x.cos() + (w * 3.0).sin()).sum(),
}


def _no_grad_part(x, w):
    with tg.no_grad():
        s = x * 2.0 + 1.0
    return (w * s).sum()


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_replay_matches_eager(name, dtype):
    f = CASES[name]
    cf = tg.compile(f)
    tg.manual_seed(0)
    shape = (4, 4)
    cf(tg.randn(*shape, dtype=dtype), tg.randn(*shape, dtype=dtype, requires_grad=True))  # records
    for _ in range(2):
        x = tg.randn(*shape, dtype=dtype)
        w = tg.randn(*shape, dtype=dtype, requires_grad=True)
        y = cf(x, w)
        y.backward()
        gc_ = w.grad.numpy().copy()
        w.grad = None
        ye = f(x, w)
        ye.backward()
        assert same(y.detach().numpy(), ye.detach().numpy())
        assert np.array_equal(gc_, w.grad.numpy())
        assert y.grad_fn is not None
    assert cf.trace_count == 1 and cf.replay_count == 2, tg.compiler.stats(cf)


def test_create_graph_through_replayed_outputs():
    f = lambda x: (x * x * x).sum()
    cf = tg.compile(f)
    cf(tg.randn(3, requires_grad=True))
    x = tg.randn(3, dtype=tg.float64, requires_grad=True)
    cf(x.detach().requires_grad_())  # a new signature (float64) records again
    y = cf(x)
    assert cf.replay_count == 1
    (g,) = tg.autograd.grad(y, x, create_graph=True)
    (h,) = tg.autograd.grad(g.sum(), x)
    assert np.allclose(g.detach().numpy(), 3 * x.detach().numpy() ** 2)
    assert np.allclose(h.numpy(), 6 * x.detach().numpy())


def test_untracked_program_and_outputs_structure():
    def f(x, k):
        y = x * k
        return {"y": y, "pair": (y + 1.0, x)}, k
    cf = tg.compile(f)
    x = tg.randn(3)
    cf(x, 2.0)
    x2 = tg.randn(3)
    out, k = cf(x2, 2.0)
    assert cf.replay_count == 1 and k == 2.0, tg.compiler.stats(cf)
    assert same(out["y"].numpy(), (x2 * 2.0).numpy()) and out["pair"][1] is x2
    assert not out["y"].requires_grad and out["y"].grad_fn is None


# -- the API ------------------------------------------------------------------------------------------
def test_decorator_forms_and_torch_keywords():
    @tg.compile
    def f(x):
        return x + 1.0

    @tg.compile(fullgraph=False, dynamic=None, backend="inductor", mode="max-autotune", options={})
    def g(x):
        return x * 2.0

    x = tg.ones(2)
    for _ in range(2):
        assert same(f(x).numpy(), np.full(2, 2.0, np.float32)) and same(g(x).numpy(), np.full(2, 2.0, np.float32))
    assert f.trace_count == 1 and f.replay_count == 1 and g.replay_count == 1
    assert tg.compile(f.__wrapped__, disable=True) is f.__wrapped__


def test_compiling_a_non_callable_is_an_error():
    with pytest.raises(RuntimeError, match="callable"):
        tg.compile(3)


def test_compiled_module_shares_parameters():
    lin = tg.nn.Linear(3, 2)
    m = tg.compile(lin)
    assert isinstance(m, tg.nn.Module) and list(m.parameters())[0] is lin.weight
    x = tg.randn(4, 3)
    m(x)
    y = m(x)
    assert m.replay_count == 1
    assert same(y.detach().numpy(), lin(x).detach().numpy())
    y.sum().backward()
    assert lin.weight.grad is not None
    with tg.no_grad():
        lin.weight.mul_(2.0)  # parameters are read live at each replay
    assert same(m(x).detach().numpy(), lin(x).detach().numpy())


def test_reset_forgets_programs():
    cf = tg.compile(lambda x: x * 3.0)
    cf(tg.ones(2))
    cf(tg.ones(2))
    tg.compiler.reset()
    assert tg.compiler.stats(cf)["variants"] == 0
    cf(tg.ones(2))
    assert cf.trace_count == 1 and cf.replay_count == 0


# -- guards -------------------------------------------------------------------------------------------
def test_argument_guards():
    cf = tg.compile(lambda x, y, c: x * y + c)
    a, b = tg.ones(2), tg.ones(2)
    cf(a, b, 1.0)
    cf(tg.ones(2), tg.ones(2), 1.0)
    assert cf.trace_count == 1
    cf(tg.ones(3), tg.ones(3), 1.0)  # shape
    cf(tg.ones(2, dtype=tg.float64), tg.ones(2, dtype=tg.float64), 1.0)  # dtype
    cf(tg.ones(2, requires_grad=True), tg.ones(2), 1.0)  # requires_grad
    r = cf(a, a, 1.0)  # the same tensor twice
    assert same(r.numpy(), np.full(2, 2.0, np.float32))
    r = cf(a, b, 5.0)  # a Python value
    assert same(r.numpy(), np.full(2, 6.0, np.float32))
    with tg.no_grad():
        cf(a, b, 1.0)  # grad mode
    assert cf.trace_count == 7 and cf.replay_count == 1


def test_each_argument_guard_holds_on_a_replayed_tensor_signature():
    """Calls with tensor arguments only are first checked against the last replayed key without
    building one: at the last of ten arguments, each guard must still record a new variant whose
    result is eager's (aliasing: the write into xs[0] is seen by its alias)."""
    def f(*xs):
        xs[0].add_(1.0)
        out = xs[0] * 1.0
        for i, x in enumerate(xs[1:]):
            out = out + x * float(i + 2)
        return out

    def plain():
        return [tg.zeros(3) for _ in range(10)]

    def last(t):
        return lambda: plain()[:9] + [t()]

    def aliased():
        xs = plain()
        return xs[:9] + [xs[0]]

    def detached():
        xs = plain()
        return xs[:9] + [xs[0].detach()]

    def views():
        xs, base = plain(), tg.zeros(2, 3)
        return [base[0]] + xs[1:9] + [base[0]]

    class NotATensor:  # a tensor's attributes, but keyed by identity
        _value, _rg = np.zeros(3, np.float32), False

        def __mul__(self, c):
            return tg.zeros(3)

    other = NotATensor()
    cf = tg.compile(f)
    cases = [
        (plain, 1),
        (lambda: [tg.zeros(2, 3)[0] for _ in range(10)], 1),  # views of distinct arrays: no aliasing
        (aliased, 2),
        (detached, 2),  # another tensor on the same array: the same aliasing
        (views, 2),
        (last(lambda: tg.zeros(3, dtype=tg.float64)), 3),
        (last(lambda: tg.zeros(3, requires_grad=True)), 4),
        (last(lambda: tg.zeros(1)), 5),
        (last(lambda: 0.0), 6),
        (last(lambda: other), 7),
        (plain, 7),
    ]
    for make, traces in cases:
        for _ in range(2):
            cf(*plain())  # the key checked first
            assert same(cf(*make()).detach().numpy(), f(*make()).detach().numpy())
        assert cf.trace_count == traces
    with tg.no_grad():
        cf(*plain())
    assert cf.trace_count == 8


def test_the_same_arrays_again_skip_their_shape_checks_and_nothing_else():
    """A call passing the very arrays that a replay was checked on passes on identity; a changed
    value (another array, of another shape), requires_grad, an alias or a dead array's successor
    at any position is checked again and gets eager's result."""
    def f(*xs):
        out = xs[0] * 1.0
        for i, x in enumerate(xs[1:]):
            out = out + x * float(i + 2)
        xs[1].add_(1.0)  # (an alias of xs[1] among the arguments sees the write)
        return out

    def check(args, traces):
        want = f(*[a.detach().clone().requires_grad_(a.requires_grad) for a in args])
        got = cf(*args)
        assert same(got.detach().numpy(), want.detach().numpy()) and cf.trace_count == traces

    cf = tg.compile(f)
    xs = [tg.full((3,), float(k)) for k in range(10)]
    for _ in range(3):
        check(xs, 1)
    assert cf.replay_count == 2
    check(xs[:9] + [xs[1]], 2)  # an alias: another variant
    check(xs, 2)
    for n, k in enumerate((0, 5, 9)):
        ys = list(xs)
        ys[k] = xs[k].detach().requires_grad_()  # the same array, requires_grad
        check(ys, 3 + n)
        check(xs, 3 + n)
    xs[7].data = tg.full((4,), 7.0)  # the same tensor, a value of another shape
    with pytest.raises(RuntimeError):
        f(*[x.detach().clone() for x in xs])
    with pytest.raises(RuntimeError):
        cf(*xs)
    xs[7].data = tg.full((3,), 7.0)
    check(xs, 5)
    for _ in range(3):  # arrays dying and new ones in their place (ids reused)
        xs = [tg.full((3,), float(k)) for k in range(10)]
        check(xs, 5)
    dead = weakref.ref(xs[3]._value)
    del xs
    gc.collect()
    assert dead() is None  # the compiled function holds no argument's array


SCALE = 2.0


def test_closure_and_global_values_are_guarded():
    k = [3.0]
    offset = 1.0

    def f(x):
        return x * SCALE + offset

    cf = tg.compile(f)
    x = tg.ones(2)
    cf(x)
    assert same(cf(x).numpy(), np.full(2, 3.0, np.float32)) and cf.replay_count == 1
    global SCALE
    old = SCALE
    SCALE = 5.0
    try:
        assert same(cf(x).numpy(), np.full(2, 6.0, np.float32))
    finally:
        SCALE = old
    assert cf.trace_count == 2
    del k


def test_captured_tensors_read_live_and_replacement_detected():
    w = tg.ones(2)

    def f(x):
        return x * w

    cf = tg.compile(f)
    x = tg.full((2,), 3.0)
    cf(x)
    w.mul_(2.0)  # read live
    assert same(cf(x).numpy(), np.full(2, 6.0, np.float32)) and cf.replay_count == 1
    w = tg.full((2,), 10.0)  # a new object in the closure cell: a new variant
    assert same(cf(x).numpy(), np.full(2, 30.0, np.float32)) and cf.trace_count == 2


def test_value_read_guard_takes_the_other_branch():
    def f(x):
        if x.sum() > 0:
            return x * 2.0
        return x - 100.0

    cf = tg.compile(f)
    cf(tg.ones(2))
    assert same(cf(tg.full((2,), 3.0)).numpy(), np.full(2, 6.0, np.float32)) and cf.replay_count == 1
    assert same(cf(tg.full((2,), -1.0)).numpy(), np.full(2, -101.0, np.float32))
    assert cf.trace_count == 2
    assert same(cf(tg.full((2,), -2.0)).numpy(), np.full(2, -102.0, np.float32)) and cf.replay_count == 2


@pytest.mark.parametrize("read", ["item", "float", "int", "bool", "tolist"])
def test_each_value_read_is_guarded(read):
    def f(x):
        v = {"item": lambda t: t.item(), "float": float, "int": int, "bool": bool,
             "tolist": lambda t: t.tolist()}[read](x.sum())
        return x * 0.0 + (1.0 if v == 2 or v is True and False else 0.0)

    cf = tg.compile(f)
    cf(tg.ones(2))
    cf(tg.ones(2))
    assert cf.replay_count == 1
    y = cf(tg.full((2,), 0.5 if read != "bool" else 0.0))
    assert cf.trace_count == 2 and same(y.numpy(), f(tg.full((2,), 0.5 if read != "bool" else 0.0)).numpy())


def test_failing_guard_has_no_visible_effect():
    def f(x):
        x.add_(1.0)  # an in-place write into the argument, before the guard
        if x.sum() > 0:
            return x * 2.0
        return x * 3.0

    cf = tg.compile(f)
    cf(tg.ones(2))
    a = tg.ones(2)
    cf(a)
    assert cf.replay_count == 1 and same(a.numpy(), np.full(2, 2.0, np.float32)) and a._version == 1
    b = tg.full((2,), -5.0)
    y = cf(b)  # the replay's guard fails: the eager run writes once
    assert same(b.numpy(), np.full(2, -4.0, np.float32)) and b._version == 1
    assert same(y.numpy(), np.full(2, -12.0, np.float32))


def test_fullgraph_makes_a_value_read_an_error():
    cf = tg.compile(lambda x: x * 2.0 if x.sum() > 0 else x, fullgraph=True)
    with pytest.raises(RuntimeError, match="graph break"):
        cf(tg.ones(2))


def test_variants_up_to_the_limit_then_eager_with_one_warning():
    cf = tg.compile(lambda x: x + 1.0)
    for n in range(1, 9):
        cf(tg.ones(n))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y = cf(tg.ones(20))
        cf(tg.ones(21))
    assert len([x for x in w if "cache_size_limit" in str(x.message)]) == 1
    assert same(y.numpy(), np.full(20, 2.0, np.float32))
    assert cf.trace_count == 8 and tg.compiler.stats(cf)["eager_count"] == 2


# -- randomness and side effects ----------------------------------------------------------------------
def test_random_ops_draw_afresh_at_each_replay():
    cf = tg.compile(lambda x: x + tg.rand(3))
    x = tg.zeros(3)
    a = cf(x).numpy().copy()
    b = cf(x).numpy().copy()
    c = cf(x).numpy().copy()
    assert cf.replay_count == 2
    assert not np.array_equal(a, b) and not np.array_equal(b, c)
    tg.manual_seed(5)
    r = cf(x).numpy().copy()
    tg.manual_seed(5)
    assert np.array_equal(r, tg.rand(3).numpy())  # the replay draws what eager would


def test_python_side_effects_only_on_eager_runs():
    log = []

    def f(x):
        log.append(1)
        return x * 2.0

    cf = tg.compile(f)
    for _ in range(3):
        cf(tg.ones(2))
    assert log == [1] and cf.replay_count == 2


def test_constants_made_inside_are_fresh_each_replay():
    def f(x):
        acc = tg.zeros(2)
        acc.add_(x)
        return acc * 1.0

    cf = tg.compile(f)
    for v in (1.0, 2.0, 3.0):
        assert same(cf(tg.full((2,), v)).numpy(), np.full(2, v, np.float32))
    assert cf.replay_count == 2


# -- a whole training step: forward, backward() and the optimizer's update ---------------------------
def _train(opt_name, compiled, dtype=tg.float64, steps=20):
    tg.manual_seed(0)
    model = tg.nn.Linear(4, 3).to(dtype)
    opt = tg.optim.Adam(model.parameters(), lr=0.01) if opt_name == "adam" else \
        tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, t = tg.randn(8, 4, dtype=dtype), tg.randn(8, 3, dtype=dtype)

    def step():
        opt.zero_grad()
        loss = ((model(x) - t) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    run = tg.compile(step) if compiled else step
    losses = [run().item() for _ in range(steps)]
    return [p.detach().numpy().copy() for p in model.parameters()], losses, run


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_compiled_training_step_matches_eager(opt, dtype):
    eager, eager_losses, _ = _train(opt, False, dtype)
    compiled, losses, run = _train(opt, True, dtype)
    assert all(same(a, b) for a, b in zip(eager, compiled)) and losses == eager_losses
    assert tg.compiler.stats(run)["replay_count"] == 19 and run.trace_count == 1, tg.compiler.stats(run)
    text = tg.dump(run)
    assert "backward(" in text and "_update_all" in text and "_zero_grad" in text


def test_training_step_reads_the_optimizer_live():
    """The step count and the learning rate are the optimizer's Python state: the replayed step
    reads them at each call, nothing of them is in the program."""
    def train(compiled):
        tg.manual_seed(1)
        model = tg.nn.Sequential(tg.nn.Linear(5, 8), tg.nn.Tanh(), tg.nn.Linear(8, 3))
        opt = tg.optim.Adam(model.parameters(), lr=0.05)
        x, y = tg.randn(16, 5), np.random.default_rng(0).integers(0, 3, 16)

        def step(x, y):
            loss = tg.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        run = tg.compile(step) if compiled else step
        for k in range(12):
            if k == 6:
                opt.param_groups[0]["lr"] = 0.01
            run(x, tg.tensor((y + k) % 3))  # (new targets each step: derived again)
        return [p.detach().numpy().copy() for p in model.parameters()], run

    eager, _ = train(False)
    compiled, run = train(True)
    assert all(same(a, b) for a, b in zip(eager, compiled))
    assert run.replay_count == 11


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_ops_after_a_step_read_the_updated_parameters(momentum):
    """Two updates in one call, and a loss after them: the rows after each step read the values it
    wrote (the parameters of a module that is not C-ordered are copies, taken again)."""
    def train(compiled):
        tg.manual_seed(3)
        model = tg.nn.Linear(4, 2).double()
        with tg.no_grad():
            model.weight = tg.nn.Parameter(tg.randn(4, 2, dtype=tg.float64).t())  # (a transposed view)
        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
        x = tg.randn(5, 4, dtype=tg.float64)

        def step():
            for _ in range(2):
                opt.zero_grad()
                model(x).tanh().sum().backward()
                opt.step()
            return model(x).sum()

        run = tg.compile(step) if compiled else step
        out = [run().item() for _ in range(4)]
        return [p.detach().numpy().copy() for p in model.parameters()], out, run

    eager, le, _ = train(False)
    compiled, lc, run = train(True)
    assert all(same(a, b) for a, b in zip(eager, compiled)) and lc == le
    assert run.replay_count == 3, tg.compiler.stats(run)


def test_manual_update_through_grads():
    """A step written by hand: .grad read in ops, parameters and grads changed in place under no_grad."""
    def train(compiled):
        tg.manual_seed(2)
        w = tg.randn(4, 2, dtype=tg.float64, requires_grad=True)
        x = tg.randn(6, 4, dtype=tg.float64)

        def step(lr):
            loss = (x @ w).tanh().sum()
            loss.backward()
            with tg.no_grad():
                w.sub_(w.grad * lr)
                w.grad.zero_()
            return loss

        run = tg.compile(step) if compiled else step
        out = [run(0.1).item() for _ in range(10)]
        return w.detach().numpy().copy(), w.grad.numpy().copy(), out, run

    we, ge, le, _ = train(False)
    wc, gc_, lc, run = train(True)
    assert same(we, wc) and same(ge, gc_) and le == lc
    assert run.replay_count == 9, tg.compiler.stats(run)


def test_failing_guard_in_a_training_step_has_no_visible_effect():
    """zero_grad before the guard is held back: a failed guard leaves grads and parameters as they
    were, and the eager run that follows makes the step once (the same as a twin run eagerly)."""
    def make():
        tg.manual_seed(0)
        model = tg.nn.Linear(3, 1).double()
        with tg.no_grad():
            model.weight.fill_(1.0)
        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
        zero_grad, opt.calls = opt._zero_grad, []
        opt._zero_grad = lambda set_to_none: (opt.calls.append(1), zero_grad(set_to_none))

        def step(x):
            opt.zero_grad()
            loss = model(x).sum()
            if loss > 0:  # a guard before backward()
                loss = loss * 2.0
            loss.backward()
            opt.step()
            return loss
        return model, step, opt

    model, step, opt = make()
    twin, twin_step, twin_opt = make()
    run = tg.compile(step)
    for v in (1.0, 1.0, -20.0, -20.0, 1.0):  # recorded, replayed, the guard fails (another variant), ...
        run(tg.full((2, 3), v, dtype=tg.float64))
        twin_step(tg.full((2, 3), v, dtype=tg.float64))
        for p, q in zip(model.parameters(), twin.parameters()):
            assert same(p.detach().numpy(), q.detach().numpy()) and same(p.grad.numpy(), q.grad.numpy())
        assert len(opt.calls) == len(twin_opt.calls)  # (the failed replay did not zero the grads)
    assert run.trace_count == 2 and run.replay_count == 3, tg.compiler.stats(run)


def test_a_guard_after_the_step_keeps_the_step_eager():
    model = tg.nn.Linear(3, 1)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)

    def step(x):
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        opt.step()
        return 1.0 if model.weight.sum() > 0 else 0.0  # (read after the update: it cannot be undone)

    run = tg.compile(step)
    for _ in range(3):
        run(tg.ones(2, 3))
    st = tg.compiler.stats(run)
    assert st["replay_count"] == 0 and "after backward()" in st["unreplayable"][0]


# -- custom autograd.Functions: their rows call apply again at each replay -----------------------------
class _Scaled(tg.autograd.Function):
    """Two outputs, a keyword argument, a forward that branches on a value it reads (replays read it
    live), and a backward written in tapegrad ops (so it can be differentiated again)."""
    calls = 0

    @staticmethod
    def forward(ctx, x, y, k=2.0):
        _Scaled.calls += 1
        ctx.save_for_backward(x, y)
        ctx.k = k if x.sum().item() > 0 else -k
        return x * y * ctx.k, x + y

    @staticmethod
    def backward(ctx, ga, gb):
        x, y = ctx.saved_tensors
        return ga * y * ctx.k + gb, ga * x * ctx.k + gb, None


def _scaled(x, y):
    a, b = _Scaled.apply(x.exp() - 1.5, y, k=3.0)
    return (a * b).sum() + a.mean()


def test_a_custom_function_replays_by_calling_its_apply():
    cf = tg.compile(_scaled)
    rng = np.random.default_rng(4)
    for k in range(4):
        arrays = [rng.standard_normal(3) + (1.0 if k % 2 else -1.0), rng.standard_normal(3)]
        results = []
        for f in (_scaled, cf):
            x, y = (tg.tensor(a, dtype=tg.float64, requires_grad=True) for a in arrays)
            before = _Scaled.calls
            out = f(x, y)
            assert _Scaled.calls == before + 1  # (its forward runs once per call, replayed or not)
            gx, gy = tg.autograd.grad(out, (x, y), create_graph=True)
            (ggx,) = tg.autograd.grad((gx * gy).sum(), x)
            results.append([v.detach().numpy() for v in (out, gx, gy, ggx)])
        assert all(same(a, b) for a, b in zip(*results)), k
    assert cf.trace_count == 1 and cf.replay_count == 3, tg.compiler.stats(cf)
    assert re.search(r"%\d+, %\d+ = _Scaled\.apply\(%\d+, %\d+, k=3\.0\)  \[python\]", tg.dump(cf))


def test_a_custom_function_in_a_compiled_training_step():
    def train(compiled):
        tg.manual_seed(5)
        model = tg.nn.Linear(3, 2).double()
        opt = tg.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
        x, y = tg.randn(6, 3, dtype=tg.float64), tg.randn(6, dtype=tg.float64)

        def step():
            opt.zero_grad()
            a, b = _Scaled.apply(model(x).tanh(), y.unsqueeze(1))
            loss = (a - b).pow(2).mean()
            loss.backward()
            opt.step()
            return loss

        run = tg.compile(step) if compiled else step
        losses = [run().item() for _ in range(10)]
        return [p.detach().numpy().copy() for p in model.parameters()], losses, run

    eager, le, _ = train(False)
    compiled, lc, run = train(True)
    assert all(same(a, b) for a, b in zip(eager, compiled)) and lc == le
    assert run.replay_count == 9, tg.compiler.stats(run)


class _Repeated(tg.autograd.Function):
    """Its output's shape depends on its input's values."""
    @staticmethod
    def forward(ctx, x):
        ctx.n = 2 if x.sum().item() > 0 else 1
        return x.repeat(ctx.n)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.n, -1).sum(0)


def test_a_custom_function_whose_output_changes_shape_records_a_variant():
    f = lambda x: (_Repeated.apply(x * 2.0) ** 2).sum()  # noqa: E731
    cf = tg.compile(f)
    for v in (1.0, 2.0, -1.0, -2.0, 3.0):
        got, want = (tg.full((3,), v, dtype=tg.float64, requires_grad=True) for _ in range(2))
        a, b = cf(got), f(want)
        a.backward()
        b.backward()
        assert a.item() == b.item() and same(got.grad.numpy(), want.grad.numpy()), v
    assert cf.trace_count == 2 and cf.replay_count == 3, tg.compiler.stats(cf)


class _InPlace(tg.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x.mul_(2.0)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, g):
        return g * 2.0


def test_a_custom_function_that_returns_its_input_runs_eagerly():
    f = lambda x: _InPlace.apply(x.clone()).sum()  # noqa: E731
    cf = tg.compile(f)
    for _ in range(2):
        x = tg.ones(3, requires_grad=True)
        cf(x).backward()
        assert same(x.grad.numpy(), np.full(3, 2.0, np.float32))
    st = tg.compiler.stats(cf)
    assert st["replay_count"] == 0 and "returns one of its inputs" in st["unreplayable"][0], st


def test_autograd_grad_inside_stays_eager():
    def f(x):
        y = (x * x).sum()
        (g,) = tg.autograd.grad(y, x)
        return g * 1.0

    cf = tg.compile(f)
    for _ in range(2):
        x = tg.randn(3, requires_grad=True)
        assert same(cf(x).detach().numpy(), (2 * x).detach().numpy())
    assert cf.replay_count == 0 and tg.compiler.stats(cf)["unreplayable"]


# -- what stays eager -----------------------------------------------------------------------------
def test_unknown_tensor_origin_stays_eager():
    def f(x):
        m = tg.isnan(x)  # an op that records no row
        return tg.where(m, tg.zeros(2), x)

    cf = tg.compile(f)
    for v in (1.0, float("nan"), 2.0):
        y = cf(tg.full((2,), v))
        assert same(y.numpy(), f(tg.full((2,), v)).numpy())
    assert cf.replay_count == 0 and tg.compiler.stats(cf)


# -- introspection, memory, threads ---------------------------------------------------------------
def test_dump_lists_programs_and_guards():
    def f(x):
        if x.sum() > 0:
            return (x * 2.0).exp()
        return x

    cf = tg.compile(f)
    cf(tg.ones(2, dtype=tg.float64))
    text = tg.dump(cf)
    assert "program 0" in text and "Tensor(shape=[2]" in text
    assert "mul_scalar" in text and "exp" in text and "guard" in text and "[jitted]" in text


def test_replays_run_in_flat_memory_and_programs_are_freed():
    cf = tg.compile(lambda x, w: ((x * w).relu() + 1.0).sum())
    x, w = tg.randn(8), tg.randn(8, requires_grad=True)
    for _ in range(200):
        cf(x, w).backward()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(10_000):
        cf(x, w)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 200_000, grown
    prog = weakref.ref(next(iter(cf._variants.values()))[0].program)
    del cf
    gc.collect()
    assert prog() is None


def test_a_program_does_not_hold_the_arguments_it_was_recorded_on():
    """A replay reads its own call's arguments: the first call's (a batch, say) go free when the
    caller drops them, while the compiled function lives on; captured tensors stay read live."""
    w = tg.randn(8, requires_grad=True)
    f = lambda x: ((x * w).relu() + 1.0).sum()
    cf = tg.compile(f)
    x = tg.randn(8)
    cf(x)
    recorded = weakref.ref(x)
    del x
    gc.collect()
    assert recorded() is None
    for _ in range(2):
        x = tg.randn(8)
        got = tg.autograd.grad(cf(x), w)[0]
        np.testing.assert_array_equal(got.numpy(), tg.autograd.grad(f(x), w)[0].numpy())
    assert cf.replay_count == 2


def test_two_threads_replay_one_function():
    cf = tg.compile(lambda x: (x * 2.0 + 1.0).sum())
    cf(tg.ones(100))
    errors = []

    def work(v):
        try:
            for _ in range(200):
                y = cf(tg.full((100,), v))
                assert y.item() == 100 * (2 * v + 1)
        except Exception as e:  # pragma: no cover (reported below)
            errors.append(e)

    ts = [threading.Thread(target=work, args=(v,)) for v in (1.0, 2.0)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and cf.replay_count == 400


# -- large elementwise runs: chunks over threads -----------------------------------------------------
@pytest.fixture
def small_chunks(monkeypatch):
    """Chunked runs at test sizes: from 64 elements, chunks of 4 KiB over all of a run's arrays."""
    from tapegrad import parallel
    from tapegrad.compiler import program
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 64)
    monkeypatch.setattr(program, "CHUNK_BYTES", 4096)
    yield
    tg.set_num_threads(tg.get_num_threads())


def _chunk_program(x, w, s):
    """Elementwise rows over x's elements (chunked), with one-element operands, a view, a row that
    must see the whole array (sin), a reduction and a broadcast of a trailing block (unchunked)."""
    h = ((x * w - 1.5) * s).exp() + (x / 3.0).tanh()
    v = h.reshape(-1, 10).unsqueeze(0)
    return ((v * 2.0 + x.reshape(1, -1, 10)).sin() + v.neg() * s).sum() + (v + w.reshape(-1, 10)[0]).sum()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_chunked_runs_replay_with_eager_bits(small_chunks, dtype, threads):
    tg.set_num_threads(threads)
    cf = tg.compile(_chunk_program)
    for seed in range(3):
        g = np.random.default_rng(seed)
        args = [tg.tensor(g.standard_normal(s), dtype=dtype, requires_grad=True) for s in ((1010,), (1010,), (1,))]
        outs = []
        for fn in (_chunk_program, cf):
            xs = [a.detach().requires_grad_() for a in args]
            y = fn(*xs)
            y.backward()
            outs.append([y.detach().numpy()] + [a.grad.numpy() for a in xs])
        for got, want in zip(*outs):
            assert same(got, want)
    assert cf.replay_count == 2
    prog = next(iter(cf._variants.values()))[0].program
    chunked = [st for st in prog.plan if st[0] == "jit" and st[-1] is not None]
    assert chunked, "no chunked run"
    names = {prog.rows[e][1].name for st in chunked for e in range(st[1], st[2])}
    assert "sin" not in names and "sum" not in names and {"exp", "tanh", "mul", "neg"} <= names
    assert all(st[-1][1] < 1010 for st in chunked)  # several chunks each


def test_chunked_runs_from_two_threads(small_chunks):
    tg.set_num_threads(2)
    cf = tg.compile(lambda x: (x * 2.0 + 1.0).exp().sum())
    cf(tg.ones(5000))
    errors = []

    def work(v):
        try:
            for _ in range(50):
                x = tg.full((5000,), v)
                assert same(cf(x).numpy(), (x * 2.0 + 1.0).exp().sum().numpy())
        except Exception as e:  # pragma: no cover (reported below)
            errors.append(e)

    ts = [threading.Thread(target=work, args=(v,)) for v in (0.1, 0.2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and cf.replay_count == 100


def test_num_threads():
    n = tg.get_num_threads()
    assert n >= 1
    tg.set_num_threads(1)
    assert tg.get_num_threads() == 1
    for bad in (0, -1):
        with pytest.raises(RuntimeError, match="positive integer"):
            tg.set_num_threads(bad)
    with pytest.raises(TypeError, match="must be int"):
        tg.set_num_threads(1.5)
    tg.set_num_threads(n)


# -- the rows' replay kernels: the gap stays visible --------------------------------------------------
def test_which_rows_replay_how():
    from tapegrad.engine.cpu._forward import FWD_KERNEL
    jitted = sorted(op.name for op in ops.TABLE if FWD_KERNEL[op.code] >= 0)
    numpy_only = sorted(op.name for op in ops.TABLE if FWD_KERNEL[op.code] < 0 and python_forward(op) is not None)
    missing = sorted(op.name for op in ops.TABLE if python_forward(op) is None)
    assert jitted == JITTED, jitted
    assert numpy_only == NUMPY_ONLY, numpy_only
    # Rows without any replay kernel: a program holding one runs eagerly.
    assert missing == MISSING, missing
    assert not set(jitted) & set(missing)  # a jitted row falls back to NumPy where its kernel is not exact


JITTED = ["abs", "add", "add_scalar", "clone", "cos", "div", "div_scalar", "erf", "exp", "expm1", "log", "log1p",
          "mean", "mm", "mul", "mul_scalar", "neg", "permute", "pow_scalar", "reciprocal", "relu", "rsqrt", "rsub_scalar", "scale",
          "sigmoid", "sign", "sin", "sqrt", "squeeze", "sub", "sub_scalar", "sum", "t", "tan", "tanh", "transpose",
          "unsafe_view", "unsqueeze", "view"]
NUMPY_ONLY = ["alias", "amax", "amin", "atan2", "bmm", "cat", "clamp", "copy", "cumsum", "expand", "fill", "flip",
              "gather", "gelu", "hypot", "index", "index_put", "index_put_advanced", "index_select",
              "index_unsqueeze", "leaky_relu", "leaky_relu_backward", "log_softmax", "masked_fill", "max", "max_dim",
              "maximum", "mean_dim", "min", "min_dim", "minimum", "nll_loss", "nll_loss_backward", "norm", "pow",
              "prod", "prod_dim", "repeat", "rpow_scalar", "scatter_add", "select", "slice", "softmax",
              "softplus", "split", "stack", "std_root", "sum_dim", "threshold_backward", "to", "unbind", "var",
              "where", "zero"]
# a custom autograd.Function (its forward is Python), two rows that only the create_graph walk records,
# and a copy between devices (compiled programs replay on the CPU)
MISSING = ["add_run", "function", "scatter_flat", "to_device"]


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_sin_cos_replay_jitted_as_eager_chooses(dtype):
    """ops' _sin/_cos: the vectorised kernel from 4096 elements, NumPy below; the replay's kernel
    makes the same choice per row (NumPy's own loop below)."""
    f = lambda x: (x.sin() + x.cos() * 2.0).sum()
    cf = tg.compile(f)
    for n in (5, 5000):
        x = tg.randn(n, dtype=dtype)
        x._value[:3] = [1e6, 0.5, -3.0]  # (one large argument: libm for the whole large row)
        cf(x)
        for _ in range(2):
            x = tg.randn(n, dtype=dtype) * 40.0
            assert same(cf(x).numpy(), f(x).numpy())
    text = tg.dump(cf)
    small, large = text.split("program 1")
    assert f"sin(%0)  [5] {dtype.np.name}  [jitted]" in small and f"cos(%0)  [5] {dtype.np.name}  [jitted]" in small
    assert f"sin(%0)  [5000] {dtype.np.name}  [jitted]" in large and f"cos(%0)  [5000] {dtype.np.name}  [jitted]" in large
    assert cf.replay_count == 4


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_powers_replay_jitted_where_eager_has_a_formula(dtype):
    """x ** c replays jitted for the exponents eager computes by a formula (x * x * x, 1 / sqrt, ...)
    with its bits, zeros and infinities included; any other exponent stays on NumPy's pow."""
    formulas, others = (2, 3, 0.5, -1, -0.5, -2, 1, 0), (2.5, -3, 4)
    f = lambda x: [x ** c for c in formulas + others]
    cf = tg.compile(f)
    rng = np.random.default_rng(5)
    for _ in range(3):
        v = rng.standard_normal(2000) * 3.0
        v[:6] = [0.0, -0.0, np.inf, -np.inf, 1e-30, -2.0]
        x = tg.tensor(v, dtype=dtype)
        for got, want in zip(cf(x), f(x)):
            assert same(got.numpy(), want.numpy())
    assert cf.replay_count == 2
    rows = [line for line in tg.dump(cf).splitlines() if " = pow_scalar(" in line]
    assert len(rows) == len(formulas + others)
    assert [("[jitted]" in line) for line in rows] == [True] * len(formulas) + [False] * len(others), rows


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_matrix_products_replay_with_eager_bits(dtype):
    """mm replays jitted on NumPy's own gemm (every dimension above 1), a transpose as a C-ordered
    copy; x @ x.t() stays in NumPy on the views, as eager's (NumPy's syrk, other bits than gemm)."""
    rng = np.random.default_rng(3)
    lin = tg.nn.Linear(300, 7).to(dtype)
    f = lambda x, w: ((x @ w).tanh() @ w.t()).sum() + lin(x).sum() + (x @ x.t()).sum()
    cf, gram = tg.compile(f), tg.compile(lambda x: x @ x.t())
    for _ in range(3):
        x = tg.tensor(rng.standard_normal((33, 300)), dtype=dtype, requires_grad=True)
        w = tg.tensor(rng.standard_normal((300, 40)), dtype=dtype, requires_grad=True)
        got, want = cf(x, w), f(x, w)
        assert got.item() == want.item()
        gx, gw = tg.autograd.grad(got, (x, w))
        ex, ew = tg.autograd.grad(want, (x, w))
        np.testing.assert_array_equal(gx.numpy(), ex.numpy())
        np.testing.assert_array_equal(gw.numpy(), ew.numpy())
        xd = x.detach()
        np.testing.assert_array_equal(gram(xd).numpy(), (xd @ xd.t()).numpy())
    assert cf.replay_count == gram.replay_count == 2
    products = [line for line in tg.dump(cf).splitlines() if " = mm(" in line]
    assert len(products) == 4 and sum("[jitted]" in line for line in products) == 3, products


@pytest.mark.parametrize("rounds", [1, 8])  # 4 arrays (checked in Python) and 32 (in jitted code)
def test_replay_reuses_its_arrays_only_when_nothing_holds_them(rounds):
    """A steady-state replay allocates no array per op: it takes back the arrays of its last replay
    that nothing holds any more (not a result, a view, a tape of a backward still to come)."""
    def f(x):
        for _ in range(rounds):
            x = ((x * 2.0).sin() + 1.0).exp()
        return x

    cf = tg.compile(f)
    xs = [tg.tensor(np.random.default_rng(k).standard_normal(1000)) for k in range(6)]
    held = [cf(x) for x in xs]  # each result held: no replay may write into an earlier one
    views = [cf(x).reshape(10, 100)[2] for x in xs]
    for x, r, v in zip(xs, held, views):
        np.testing.assert_array_equal(r.numpy(), f(x).numpy())
        np.testing.assert_array_equal(v.numpy(), f(x).numpy()[200:300])
    prog = cf._variants[next(iter(cf._variants))][0].program

    def arrays():
        return [id(a) for arrays, _ in prog._pool.__dict__.values() for a in arrays]
    cf(xs[0])
    before = arrays()
    cf(xs[1])
    assert arrays() == before
    r = cf(xs[2])  # taken back whole: the last replay's arrays, none held
    assert arrays() == before
    mid = cf(xs[3])  # r is held: a fresh array for it, the others taken back
    after = arrays()
    assert after != before and len(set(after) & set(before)) == len(before) - 1
    np.testing.assert_array_equal(r.numpy(), f(xs[2]).numpy())
    np.testing.assert_array_equal(mid.numpy(), f(xs[3]).numpy())
    x = tg.tensor(xs[0].numpy(), requires_grad=True)
    g = tg.compile(lambda x: (x.sin() * x).exp().sum())
    losses = [g(x) for _ in range(3)]  # three tapes alive at once: each its own saved values
    grads = [tg.autograd.grad(loss, x)[0].numpy() for loss in losses]
    want = tg.autograd.grad((x.sin() * x).exp().sum(), x)[0].numpy()
    for got in grads:
        np.testing.assert_array_equal(got, want)


def test_aliasing_guard_sees_shared_storage_anywhere_in_the_arguments():
    """A program recorded on distinct arguments must not replay when two of them (nested in a list
    or passed by keyword too) are one tensor or views of one array: its write into x would be
    held back past the read of the alias."""
    def f(x, ys, z=None):
        x.add_(1.0)
        return ys[0] * 2.0 + z

    cf = tg.compile(f)
    for _ in range(2):
        cf(tg.zeros(4), [tg.zeros(4)], z=tg.zeros(4))
    assert cf.trace_count == 1 and cf.replay_count == 1

    def cases():
        a = tg.zeros(4)
        yield a, [a], tg.zeros(4)  # one tensor twice
        base = tg.zeros(2, 4)
        yield base[0], [base[0]], tg.zeros(4)  # two views of one array
        b = tg.zeros(4)
        yield b, [tg.zeros(4)], b  # a keyword argument
    for (x, ys, z), (x2, ys2, z2) in zip(cases(), cases()):
        expect = f(x, ys, z=z)
        assert same(cf(x2, ys2, z=z2).numpy(), expect.numpy())
    assert cf.trace_count == 3  # (the views share the program of one tensor twice: the same aliasing)


def test_a_replay_tape_follows_where_its_arguments_land():
    """A replay's tape copies the last one's rows only where its arguments took the same slots:
    one tensor passed twice takes one slot, an argument on another tape a linked one."""
    cf = tg.compile(lambda x, y: ((x * y).sin() * x).sum())
    rng = np.random.default_rng(0)
    a, b = (tg.tensor(rng.standard_normal(5), requires_grad=True) for _ in range(2))

    def check(x, y, *leaves):
        want = tg.autograd.grad(((x * y).sin() * x).sum(), leaves, retain_graph=True)
        got = tg.autograd.grad(cf(x, y), leaves)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12)

    for _ in range(2):
        check(a, b, a, b)
    check(a, a, a)
    check(a * 3.0, b, a, b)
    check(b, a * 3.0, a, b)
    check(a, b, a, b)
    assert cf.replay_count >= 4
