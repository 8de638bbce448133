"""tapegrad.autograd.Function: custom ops on the tape, on the jitted path and with create_graph.

Each program is written once for both libraries (``lib`` is tapegrad or torch); the Function
classes are built per library by ``make_functions`` so the same code defines both.
"""
import gc
import warnings
import weakref

import numpy as np
import pytest

import tapegrad as tg

RNG = np.random.default_rng(7)


def make_functions(lib):
    class Cube(lib.autograd.Function):
        """x**3 with a backward written in ops, saving the input: differentiable again."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x * x

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return g * 3 * x * x

    class Exp(lib.autograd.Function):
        """exp, saving its output (torch's SavedBackward pattern)."""

        @staticmethod
        def forward(ctx, x):
            y = x.exp()
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            y, = ctx.saved_tensors
            return g * y

    class MulK(lib.autograd.Function):
        """x * y * k with a non-tensor argument and a tensor that may not need grad."""

        @staticmethod
        def forward(ctx, x, y, k):
            ctx.save_for_backward(x, y)
            ctx.k = k
            return x * y * k

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            return g * y * ctx.k, g * x * ctx.k, None

    class SinCos(lib.autograd.Function):
        """Two outputs: backward receives both gradients at once."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.sin(), x.cos()

        @staticmethod
        def backward(ctx, gs, gc_):
            x, = ctx.saved_tensors
            return gs * x.cos() - gc_ * x.sin()

    class Weighted(lib.autograd.Function):
        """Five inputs: more than one tape row's worth of input slots."""

        @staticmethod
        def forward(ctx, a, b, c, d, e):
            ctx.save_for_backward(a, b, c, d, e)
            return a * b + c * d * e

        @staticmethod
        def backward(ctx, g):
            a, b, c, d, e = ctx.saved_tensors
            return g * b, g * a, g * d * e, g * c * e, g * c * d

    return dict(Cube=Cube, Exp=Exp, MulK=MulK, SinCos=SinCos, Weighted=Weighted)


TG = make_functions(tg)

# name: (program(lib, F, *inputs) -> tensor, input shapes). Inputs are float64 and require grad.
PROGRAMS = {
    "cube": (lambda lib, F, x: F["Cube"].apply(x.sin()).sum(), [(3,)]),
    "exp_saved_output": (lambda lib, F, x: (F["Exp"].apply(x * 0.5) * x).sum(), [(2, 3)]),
    "mulk": (lambda lib, F, x, y: F["MulK"].apply(x.tanh(), y, 2.5).pow(2).sum(), [(4,), (4,)]),
    "two_outputs": (lambda lib, F, x: (lambda s, c: (s * c * x).sum())(*F["SinCos"].apply(x * 1.5)), [(3,)]),
    "one_of_two_outputs": (lambda lib, F, x: F["SinCos"].apply(x)[1].exp().sum(), [(3,)]),
    "five_inputs": (lambda lib, F, a, b, c, d, e: F["Weighted"].apply(a, b.exp(), c, d, e * e).sin().sum(),
                    [(2,)] * 5),
    "chained": (lambda lib, F, x: F["Cube"].apply(F["Exp"].apply(x) * 0.3).sum(), [(2, 2)]),
}


def _inputs(lib, values):
    if lib is tg:
        return [tg.tensor(v, dtype=tg.float64, requires_grad=True) for v in values]
    return [lib.tensor(v, dtype=lib.float64, requires_grad=True) for v in values]


def _np(t):
    return t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)


def _derivatives(lib, F, program, values):
    """First (jitted), first/second/third (create_graph chain) derivatives of program at values."""
    xs = _inputs(lib, values)
    g_plain = lib.autograd.grad(program(lib, F, *xs), xs)
    xs = _inputs(lib, values)
    g = lib.autograd.grad(program(lib, F, *xs), xs, create_graph=True)
    s2 = sum((gi * gi).sum() for gi in g)
    h = lib.autograd.grad(s2, xs, create_graph=True)
    s3 = sum((hi.sin()).sum() for hi in h)
    t = lib.autograd.grad(s3, xs)
    return [list(map(_np, r)) for r in (g_plain, g, h, t)]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_function_grads_match_finite_differences(name):
    program, shapes = PROGRAMS[name]
    values = [RNG.standard_normal(s) for s in shapes]
    g_plain, g, *_ = _derivatives(tg, TG, program, values)
    eps = 1e-6
    for k, v in enumerate(values):
        num = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            vals_p = [w.copy() for w in values]
            vals_m = [w.copy() for w in values]
            vals_p[k][idx] += eps
            vals_m[k][idx] -= eps
            with tg.no_grad():
                fp = program(tg, TG, *[tg.tensor(w, dtype=tg.float64) for w in vals_p]).item()
                fm = program(tg, TG, *[tg.tensor(w, dtype=tg.float64) for w in vals_m]).item()
            num[idx] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(g_plain[k], num, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(g[k], g_plain[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_function_higher_order_matches_torch(name):
    torch = pytest.importorskip("torch")
    program, shapes = PROGRAMS[name]
    values = [RNG.standard_normal(s) for s in shapes]
    ours = _derivatives(tg, TG, program, values)
    theirs = _derivatives(torch, make_functions(torch), program, values)
    for a, b in zip(ours, theirs):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_grad_fn_name_and_needs_input_grad():
    seen = {}

    class Scale(tg.autograd.Function):
        @staticmethod
        def forward(ctx, x, y, k):
            seen["needs"] = ctx.needs_input_grad
            return x * y * k

        @staticmethod
        def backward(ctx, g):
            return g, g, None

    x = tg.tensor([1.0, 2.0], requires_grad=True)
    z = Scale.apply(x, tg.tensor([3.0, 4.0]), 2.0)
    assert seen["needs"] == (True, False, False)
    assert type(z.grad_fn).__name__ == "ScaleBackward" and z.grad_fn.name() == "ScaleBackward"
    assert repr(z) == "tensor([ 6., 16.], grad_fn=<ScaleBackward>)"
    assert z.requires_grad and not z.is_leaf


def test_no_grad_and_no_input_needing_grad_record_nothing():
    F = TG["Exp"]
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    with tg.no_grad():
        y = F.apply(x)
    assert not y.requires_grad and y.grad_fn is None
    z = F.apply(tg.tensor([1.0, 2.0]))
    assert not z.requires_grad and z.grad_fn is None


def test_multiple_outputs_backward_receives_zeros_or_none():
    got = []

    class Split(tg.autograd.Function):
        @staticmethod
        def forward(ctx, x, materialize):
            ctx.set_materialize_grads(materialize)
            return x * 2, x * 3

        @staticmethod
        def backward(ctx, g1, g2):
            got.append((g1, g2))
            out = g1 * 2 if g1 is not None else 0
            return out + (g2 * 3 if g2 is not None else 0), None

    x = tg.tensor([1.0, 2.0], requires_grad=True)
    a, _ = Split.apply(x, True)
    a.sum().backward()
    assert got[-1][1].tolist() == [0.0, 0.0] and got[-1][0].tolist() == [1.0, 1.0]
    assert x.grad.tolist() == [2.0, 2.0]
    _, b = Split.apply(x, False)
    b.sum().backward()
    assert got[-1][0] is None and got[-1][1].tolist() == [1.0, 1.0]
    assert x.grad.tolist() == [5.0, 5.0]


def test_function_between_ops_and_intermediate_grad():
    F = TG["Cube"]
    x = tg.tensor([0.5, -1.0, 2.0], dtype=tg.float64, requires_grad=True)
    u = x * 2
    y = F.apply(u)
    (gu,) = tg.autograd.grad(y.sum(), u, retain_graph=True)
    np.testing.assert_allclose(gu.numpy(), 3 * (2 * x.detach().numpy()) ** 2)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * 3 * (2 * x.detach().numpy()) ** 2)


def test_hook_on_function_output_runs_before_its_backward():
    F = TG["Exp"]
    x = tg.tensor([0.0, 1.0], dtype=tg.float64, requires_grad=True)
    y = F.apply(x)
    y.register_hook(lambda g: g * 10)
    (y * 1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 10 * np.exp([0.0, 1.0]))


def test_input_on_an_older_tape():
    F = TG["Cube"]
    x = tg.tensor([1.0, 2.0], dtype=tg.float64, requires_grad=True)
    a = x * 2
    (x * 5).sum().backward()  # closes a's tape without freeing a's entry
    x.grad = None
    y = F.apply(a)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * 3 * (2 * np.array([1.0, 2.0])) ** 2)


def test_mark_non_differentiable_and_integer_outputs():
    class ArgSort(tg.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = x * 2
            idx = tg.tensor(np.argsort(x.detach().numpy()))
            ctx.mark_non_differentiable(idx)
            return y, idx

        @staticmethod
        def backward(ctx, g, gi):
            return g * 2

    x = tg.tensor([3.0, 1.0, 2.0], requires_grad=True)
    y, idx = ArgSort.apply(x)
    assert y.requires_grad and not idx.requires_grad and idx.dtype == tg.int64
    y.sum().backward()
    assert x.grad.tolist() == [2.0, 2.0, 2.0]


def test_setup_context_style():
    class Square(tg.autograd.Function):
        @staticmethod
        def forward(x):
            return x * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return 2 * x * g

    x = tg.tensor([1.0, 3.0], requires_grad=True)
    Square.apply(x).sum().backward()
    assert x.grad.tolist() == [2.0, 6.0]


def test_saved_tensors_freed_after_backward():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = TG["Exp"].apply(x)
    y.sum().backward(retain_graph=True)
    y.sum().backward()  # retained once: works
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        y.sum().backward()


@pytest.mark.parametrize("lib", ["tapegrad", "torch"])
def test_saved_tensors_are_released_by_the_backward_that_runs_the_call(lib):
    lib = pytest.importorskip(lib)
    ctxs = []

    def function(reads_saved, saves=True):
        class Twice(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctxs.append(ctx)
                if saves:
                    ctx.save_for_backward(x)
                return x * 2, x * 3

            @staticmethod
            def backward(ctx, g2, g3):
                if reads_saved:
                    ctx.saved_tensors
                return (0 if g2 is None else g2 * 2) + (0 if g3 is None else g3 * 3)
        return Twice

    x = lib.tensor([1.0, 2.0], dtype=lib.float64, requires_grad=True)
    a, b = function(reads_saved=False).apply(x)
    a.sum().backward()
    a.sum().backward()  # saved, released, but never read: runs again
    b.sum().backward()
    assert x.grad.tolist() == [7.0, 7.0]
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        ctxs[-1].saved_tensors
    for saves in (True, False):  # reading saved_tensors after the release fails, whatever was saved
        a, b = function(reads_saved=True, saves=saves).apply(x)
        a.sum().backward(retain_graph=True)
        assert len(ctxs[-1].saved_tensors) == int(saves)
        a.sum().backward()
        with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
            b.sum().backward()  # the call's other output: the same released node
    a, b = function(reads_saved=True).apply(x)
    u = a * 1
    lib.autograd.grad(u.sum(), u)  # stops before the call: it neither runs nor is released
    assert len(ctxs[-1].saved_tensors) == 1


def test_saved_tensor_modified_in_place():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    u = x * 1
    y = TG["Cube"].apply(u)
    u.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


# -- bad input: torch's errors and key words ------------------------------------------------------
def _bad(lib, returns):
    class Bad(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x, k):
            return x.sum() * k

        @staticmethod
        def backward(ctx, g):
            return returns(lib, g)

    return Bad


BAD = {
    "too_few": (lambda lib, g: g, r"incorrect number of gradients \(expected 2, got 1\)"),
    "too_many": (lambda lib, g: (g, None, g), r"incorrect number of gradients \(expected 2, got 3\)"),
    "wrong_shape": (lambda lib, g: (lib.ones(3, dtype=lib.float64), None),
                    r"invalid gradient at index 0 - got \[3\] but expected shape compatible with \[2\]"),
    "grad_for_non_tensor": (lambda lib, g: (g.expand(2), g),
                            "returned a gradient different than None at position 2, but the corresponding "
                            "forward input was not a Variable"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_backward_returning_wrong_grads(name):
    returns, msg = BAD[name]
    x = tg.tensor([1.0, 2.0], dtype=tg.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match=msg):
        _bad(tg, returns).apply(x, 2.0).backward()
    with pytest.raises(RuntimeError, match=msg):  # the create_graph path checks the same
        tg.autograd.grad(_bad(tg, returns).apply(x, 2.0), x, create_graph=True)


@pytest.mark.parametrize("name", sorted(BAD))
def test_backward_returning_wrong_grads_like_torch(name):
    torch = pytest.importorskip("torch")
    returns, msg = BAD[name]
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match=msg):
        _bad(torch, returns).apply(x, 2.0).backward()


def test_extra_none_grads_and_broadcast_grads_are_accepted():
    class Loose(tg.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return (g * 2).unsqueeze(0), None  # a leading dim is summed away; a trailing None is dropped

    x = tg.tensor([1.0, 2.0], requires_grad=True)
    Loose.apply(x).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]


def test_legacy_calls_raise():
    with pytest.warns(DeprecationWarning, match="should not be instantiated"):
        f = TG["Exp"]()
    with pytest.raises(RuntimeError, match="Legacy autograd function with non-static forward method"):
        f(tg.tensor([1.0]))

    class NoBackward(tg.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

    x = tg.tensor([1.0], requires_grad=True)
    with pytest.raises(NotImplementedError, match="must implement either the backward or vjp"):
        NoBackward.apply(x).sum().backward()


def test_call_graph_is_freed_by_reference_counting():
    gc.disable()
    try:
        x = tg.tensor([1.0, 2.0], requires_grad=True)
        y = TG["Exp"].apply(x * 2)  # saves its output: no cycle through ctx
        z = TG["Cube"].apply(y)  # saves a non-leaf input
        tape = weakref.ref(z._tape)
        del y, z
        assert tape() is None
    finally:
        gc.enable()


def test_saved_leaf_with_a_create_graph_grad_is_no_cycle():
    """ctx holds a saved parameter by slot: tape -> call -> ctx -> w -> w.grad -> tape is no cycle."""
    gc.disable()
    try:
        w = tg.tensor([1.0, 2.0], dtype=tg.float64, requires_grad=True)
        y = TG["Cube"].apply(w).sum()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's reference-cycle warning, copied by tapegrad
            y.backward(create_graph=True)
        assert w.grad.grad_fn is not None
        tape, param = weakref.ref(y._tape), weakref.ref(w)
        del y, w  # w.grad still holds the tape: dropping w must free both
        assert param() is None and tape() is None
    finally:
        gc.enable()


# -- torch's semantics of Functions, run as user code on both libraries ----------------------------
def _first_only(lib):
    class FirstOnly(lib.autograd.Function):
        """x * y whose backward gives y no gradient (None)."""

        @staticmethod
        def forward(ctx, x, y):
            return x * y

        @staticmethod
        def backward(ctx, g):
            return g, None

    return FirstOnly


@pytest.mark.parametrize("create_graph", [False, True])
def test_backward_returning_none_leaves_no_gradient(lib, create_graph):
    F = _first_only(lib)
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = lib.tensor([3.0, 4.0], requires_grad=True)
    F.apply(x, y).sum().backward(create_graph=create_graph)
    assert x.grad.tolist() == [1.0, 1.0] and y.grad is None
    y.grad = None
    (F.apply(x, y).sum() + (y * 2).sum()).backward(create_graph=create_graph)  # another path still gives one
    assert y.grad.tolist() == [2.0, 2.0]


@pytest.mark.parametrize("create_graph", [False, True])
def test_none_reaches_through_ops_retained_grads_and_hooks(lib, create_graph):
    F = _first_only(lib)
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = lib.tensor([1.0, 2.0], requires_grad=True)
    u = y.exp()
    u.retain_grad()
    seen = []
    u.register_hook(lambda g: seen.append(("u", g)))
    y.register_hook(lambda g: seen.append(("y", g)))
    F.apply(x, u * 2).sum().backward(create_graph=create_graph)
    assert x.grad.tolist() == [1.0, 1.0] and y.grad is None and u.grad is None
    assert seen == [("u", None), ("y", None)]


@pytest.mark.parametrize("create_graph", [False, True])
def test_autograd_grad_of_an_input_given_none(lib, create_graph):
    F = _first_only(lib)
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = lib.tensor([3.0, 4.0], requires_grad=True)
    gx, gy = lib.autograd.grad(F.apply(x, y).sum(), [x, y], allow_unused=True, create_graph=create_graph)
    assert gx.tolist() == [1.0, 1.0] and gy is None
    with pytest.raises(RuntimeError, match="The differentiated Tensor at index 1 appears to not have been used"):
        lib.autograd.grad(F.apply(x, y).sum(), [x, y], create_graph=create_graph)


@pytest.mark.parametrize("create_graph", [False, True])
def test_a_function_downstream_of_a_none_still_runs(lib, create_graph):
    """Its backward runs with zeros (materialized) or None, and what it returns counts."""
    F = _first_only(lib)
    got = []

    def make(materialize):
        class Id(lib.autograd.Function):
            @staticmethod
            def forward(ctx, t):
                ctx.set_materialize_grads(materialize)
                return t * 1

            @staticmethod
            def backward(ctx, g):
                got.append(g if g is None else g.tolist())
                return g

        return Id

    for materialize, want_got, want_grad in ((True, [0.0, 0.0], [0.0, 0.0]), (False, None, None)):
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        y = lib.tensor([1.0, 2.0], requires_grad=True)
        F.apply(x, make(materialize).apply(y)).sum().backward(create_graph=create_graph)
        assert got[-1] == want_got
        assert (y.grad.tolist() if y.grad is not None else None) == want_grad


def test_forward_returning_one_tensor_twice_returns_one_object(lib):
    got = []

    def make(materialize):
        class Twice(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.set_materialize_grads(materialize)
                y = x * 2
                return y, y

            @staticmethod
            def backward(ctx, g1, g2):
                got.append((None if g1 is None else g1.tolist(), g2.tolist()))
                return g2 * 2

        return Twice

    for materialize, first in ((True, [0.0, 0.0]), (False, None)):
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        a, b = make(materialize).apply(x)
        assert a is b and a.grad_fn is not None
        (a.sum() * 3).backward()  # the gradient of the object reaches backward at its last place
        assert got[-1] == (first, [3.0, 3.0]) and x.grad.tolist() == [6.0, 6.0]
    with lib.no_grad():
        a, b = make(True).apply(lib.tensor([1.0, 2.0], requires_grad=True))
    assert a is b and not a.requires_grad


def test_input_returned_as_is_is_an_alias(lib):
    class Ident(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x, x

        @staticmethod
        def backward(ctx, g1, g2):
            return g1 + g2

    x = lib.tensor([1.0, 2.0], requires_grad=True)
    a, b = Ident.apply(x)
    assert a is not x and b is not x and a is not b and not a.is_leaf
    (a.sum() + 2 * b.sum()).backward()
    assert x.grad.tolist() == [3.0, 3.0]
    for make in (lambda: lib.tensor([1.0, 2.0]), lambda: lib.tensor([1.0, 2.0], requires_grad=True)):
        t = make()
        with lib.no_grad():
            c, _ = Ident.apply(t)
        assert c is not t and not c.requires_grad and c.is_leaf  # unrecorded: a detached alias
        with lib.no_grad():
            c[0] = 7.0
        assert t[0].item() == 7.0


def test_needs_input_grad(lib):
    seen = []

    class Scale(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x, y, k, z=None):
            seen.append(("forward", ctx.needs_input_grad))
            return x * y * k

        @staticmethod
        def backward(ctx, g):
            seen.append(("backward", ctx.needs_input_grad))
            return g, g, None, None

    x, y = lib.tensor([1.0, 2.0], requires_grad=True), lib.tensor([3.0, 4.0])
    Scale.apply(x, y, 2.0).sum().backward()
    assert seen == [("forward", (True, False, False)), ("backward", (True, False, False))]
    seen.clear()
    with lib.no_grad():  # grad mode aside: whether each input requires grad
        Scale.apply(x, y, 2.0)
    Scale.apply(y, y, 2.0)
    Scale.apply(x, x * 1, 2.0, x).sum().backward()
    Scale.apply(x, lib.tensor([1, 2]), 2.0)
    assert seen == [("forward", (True, False, False)), ("forward", (False, False, False)),
                    ("forward", (True, True, False, True)), ("backward", (True, True, False, True)),
                    ("forward", (True, False, False))]


def _add_one(lib):
    class AddOne(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            x.add_(1)
            ctx.mark_dirty(x)
            return x

        @staticmethod
        def backward(ctx, g):
            return g * 2

    return AddOne


def test_mark_dirty_returns_the_input_changed_in_place(lib):
    AddOne = _add_one(lib)
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    u = x * 1
    y = AddOne.apply(u)
    assert y is u and type(u.grad_fn).__name__ == "AddOneBackward" and u.tolist() == [2.0, 3.0]
    assert u._version == 2  # the add_ and the mark, as torch counts
    y.sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]
    plain = lib.tensor([1.0, 2.0])
    assert AddOne.apply(plain) is plain and plain._version == 2 and not plain.requires_grad
    w = lib.tensor([1.0, 2.0], requires_grad=True)
    with lib.no_grad():
        z = AddOne.apply(w)
    assert z is not w and not z.requires_grad and w.requires_grad and w._version == 2 and w.tolist() == [2.0, 3.0]


def test_mark_dirty_on_a_view_records_the_write_on_its_base(lib):
    AddOne = _add_one(lib)
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    u = x * 2
    v = u[:1]
    AddOne.apply(v)
    assert u.tolist() == [3.0, 4.0] and type(u.grad_fn).__name__ == "CopySlices"
    u.sum().backward()
    assert x.grad.tolist() == [4.0, 2.0]


def test_mark_dirty_saved_value_is_seen_by_the_version_check(lib):
    AddOne = _add_one(lib)
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    u = x * 2
    s = u.sin()  # saves u
    AddOne.apply(u)
    with pytest.raises(RuntimeError, match="modified by an inplace operation.* is at version 2; expected version 0"):
        s.sum().backward()


def test_mark_dirty_errors(lib):
    AddOne = _add_one(lib)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad has been used in an in-place operation"):
        AddOne.apply(lib.tensor([1.0, 2.0], requires_grad=True))

    class NotReturned(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            x.add_(1)
            ctx.mark_dirty(x)
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g

    for t in (lib.tensor([1.0, 2.0], requires_grad=True) * 1, lib.tensor([1.0, 2.0])):
        with pytest.raises(RuntimeError, match="Some elements marked as dirty during the forward method were not "
                                               "returned as output"):
            NotReturned.apply(t)

    class NotATensor(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.mark_dirty(5)
            return x * 1

        @staticmethod
        def backward(ctx, g):
            return g

    with pytest.raises(RuntimeError, match="mark_dirty can only accept variables, but argument"):
        NotATensor.apply(lib.tensor([1.0], requires_grad=True))

    class ViewTwoOutputs(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            x.add_(1)
            ctx.mark_dirty(x)
            return x, x * 2

        @staticmethod
        def backward(ctx, g, h):
            return g + 2 * h

    u = lib.tensor([1.0, 2.0], requires_grad=True) * 1
    with pytest.raises(RuntimeError, match="If your Function modifies inplace an input that is a view of another "
                                           "Tensor, your Function cannot return more than one Tensor"):
        ViewTwoOutputs.apply(u[:1])
    a, b = ViewTwoOutputs.apply(u)  # not a view: fine
    assert a is u


def test_mark_dirty_of_a_tensor_that_is_no_input_warns(lib):
    class Marks(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = x * 2
            ctx.mark_dirty(y)
            return y

        @staticmethod
        def backward(ctx, g):
            return g * 2

    x = lib.tensor([1.0, 2.0], requires_grad=True)
    with pytest.warns(UserWarning, match="ctx.mark_dirty\\(\\) received a tensor that was not an input"):
        y = Marks.apply(x)
    y.sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]


def test_mark_non_differentiable(lib):
    got = []

    class Split(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            a, b = x * 2, x * 3
            ctx.mark_non_differentiable(b)
            return a, b

        @staticmethod
        def backward(ctx, ga, gb):
            got.append(gb.tolist())
            return ga * 2

    x = lib.tensor([1.0, 2.0], requires_grad=True)
    a, b = Split.apply(x)
    assert a.requires_grad and not b.requires_grad and b.grad_fn is None and b.is_leaf
    a.sum().backward()
    assert x.grad.tolist() == [2.0, 2.0] and got == [[0.0, 0.0]]  # its gradient: zeros
    with pytest.raises(RuntimeError, match="element 0 of tensors does not require grad and does not have a grad_fn"):
        Split.apply(x)[1].sum().backward()

    class Passes(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.mark_non_differentiable(x)
            return x

        @staticmethod
        def backward(ctx, g):
            return g

    y = Passes.apply(x)
    assert y is not x and not y.requires_grad and y.is_leaf and x.requires_grad

    class NotATensor(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.mark_non_differentiable("a")
            return x * 1

        @staticmethod
        def backward(ctx, g):
            return g

    with pytest.raises(RuntimeError, match="mark_non_differentiable only accepts variable arguments, but got"):
        NotATensor.apply(x)


@pytest.mark.parametrize("value", [1, 0, None])
def test_set_materialize_grads_takes_a_bool(lib, value):
    class M(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.set_materialize_grads(value)
            return x * 1

        @staticmethod
        def backward(ctx, g):
            return g

    with pytest.raises(TypeError, match="set_materialize_grads received an invalid combination of arguments"):
        M.apply(lib.tensor([1.0], requires_grad=True))


def _square_once(lib):
    from importlib import import_module
    once = import_module(lib.__name__ + ".autograd.function").once_differentiable  # torch's import path
    modes = []

    class Square(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        @once
        def backward(ctx, g):
            x, = ctx.saved_tensors
            modes.append(lib.is_grad_enabled())
            return 2 * x * g

    return Square, modes


def test_once_differentiable(lib):
    Square, modes = _square_once(lib)
    x = lib.tensor([1.0, 3.0], requires_grad=True)
    Square.apply(x).sum().backward()
    assert x.grad.tolist() == [2.0, 6.0] and modes == [False]
    g, = lib.autograd.grad(Square.apply(x).sum(), x, create_graph=True)  # its gradient needs no grad
    assert not g.requires_grad and g.tolist() == [2.0, 6.0] and modes == [False, False]
    y = Square.apply(x)
    g, = lib.autograd.grad((y * y).sum(), x, create_graph=True)
    assert g.tolist() == [4.0, 108.0] and type(g.grad_fn).__name__ == "Error" and modes[-1] is False
    with pytest.raises(RuntimeError, match="trying to differentiate twice a function that was marked with "
                                           "@once_differentiable"):
        g.sum().backward()
