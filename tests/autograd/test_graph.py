"""grad_fn objects (tapegrad.autograd.graph): identity, lifetime, metadata, and torch's nodes in the
graphs that create_graph records (its VJPs shown as torch's formulas' nodes, .grad's CopyBackwards).

Tests taking the ``lib`` fixture are torch user code run on tapegrad and on torch; the structure
tests compare tapegrad's graph with torch's node by node.
"""
import gc
import warnings
import weakref

import numpy as np
import pytest

import tapegrad as tg


def structure(fn, depth=8):
    if fn is None:
        return None
    if depth == 0:
        return type(fn).__name__
    return type(fn).__name__, tuple(structure(f, depth - 1) for f, _ in fn.next_functions)


# -- identity and lifetime ---------------------------------------------------------------------------
def test_a_node_is_one_object(lib):
    x = lib.ones(3, requires_grad=True)
    a = x * 2
    b = a.exp()
    assert a.grad_fn is a.grad_fn and id(a.grad_fn) == id(a.grad_fn)
    assert b.grad_fn.next_functions[0][0] is a.grad_fn
    c = (a * 3).sin()
    assert c.grad_fn.next_functions[0][0].next_functions[0][0] is b.grad_fn.next_functions[0][0]


def test_accumulate_grad_is_one_object_per_leaf(lib):
    x = lib.ones(2, requires_grad=True)
    y, z = x * 3, x * 4
    acc = y.grad_fn.next_functions[0][0]
    assert acc is z.grad_fn.next_functions[0][0] and acc.variable is x
    assert acc.name() == "torch::autograd::AccumulateGrad"


def test_metadata_stays_with_the_node(lib):
    x = lib.ones(2, requires_grad=True)
    a = x * 2
    a.grad_fn.metadata["seen"] = 1
    assert a.grad_fn.metadata == {"seen": 1}
    b = a.exp()
    assert b.grad_fn.next_functions[0][0].metadata == {"seen": 1}
    assert (x * 2).grad_fn.metadata == {}


def test_metadata_holds_the_forward_traceback_in_anomaly_mode(lib):
    x = lib.ones(2, requires_grad=True)
    with lib.autograd.set_detect_anomaly(True):
        a = x * 2  # traced
    lines = a.grad_fn.metadata["traceback_"]
    assert isinstance(lines, list) and lines[-1].endswith("\n    a = x * 2  # traced\n")
    assert "traceback_" not in (x * 2).grad_fn.metadata


def test_a_node_outlives_its_tensor_and_keeps_its_inputs(lib):
    x = lib.ones(2, requires_grad=True)
    b = (x * 2).exp()  # the product's only reference is b's graph
    fn = b.grad_fn
    del b
    gc.collect()
    inner = fn.next_functions[0][0]
    assert type(inner).__name__ == "MulBackward0" and fn.next_functions[0][0] is inner
    assert inner.next_functions[0][0].variable is x


def test_node_follows_an_in_place_change(lib):
    x = lib.ones(2, requires_grad=True)
    a = x * 2
    first = a.grad_fn
    a.add_(1)
    assert type(a.grad_fn).__name__ == "AddBackward0" and a.grad_fn is a.grad_fn
    assert a.grad_fn.next_functions[0][0] is first


def test_recording_makes_no_node_and_nodes_hold_no_cycle():
    x = tg.ones(2, requires_grad=True)
    y = x
    for _ in range(100):
        y = y * 1.5
    tape = y._tape
    assert tape.nodes is None  # nothing per op until a grad_fn is asked for
    fn = y.grad_fn
    fn.next_functions[0][0].next_functions
    assert len(tape.nodes) == 3
    ref = weakref.ref(tape)
    gc.disable()
    try:
        del y, fn, tape
        assert ref() is None  # reference counting alone frees the tape: the nodes made no cycle
    finally:
        gc.enable()


def test_composite_nodes_are_one_object_each(lib):
    x = lib.tensor([0.5, 1.5], dtype=lib.float64, requires_grad=True)
    (g,) = lib.autograd.grad((x ** 2).sum(), x, create_graph=True)
    mul1 = g.grad_fn.next_functions[1][0]
    assert type(mul1).__name__ == "MulBackward1" and g.grad_fn.next_functions[1][0] is mul1
    assert mul1.next_functions[0][0] is mul1.next_functions[0][0]
    assert mul1.next_functions[0][0].next_functions[0][0].variable is x


# -- the graph create_graph records --------------------------------------------------------------
def _fns(lib):
    return {
        "mul": lambda x, y: x * y,
        "mul_self": lambda x, y: x * x,
        "pow2": lambda x, y: x ** 2,
        "pow3": lambda x, y: x ** 3,
        "square": lambda x, y: x.square(),
        "pow_half": lambda x, y: x ** 0.5,
        "exp": lambda x, y: x.exp(),
        "log": lambda x, y: x.log(),
        "sin": lambda x, y: x.sin(),
        "cos": lambda x, y: x.cos(),
        "tan": lambda x, y: x.tan(),
        "tanh": lambda x, y: x.tanh(),
        "sigmoid": lambda x, y: x.sigmoid(),
        "sqrt": lambda x, y: x.sqrt(),
        "rsqrt": lambda x, y: x.rsqrt(),
        "abs": lambda x, y: x.abs(),
        "reciprocal": lambda x, y: x.reciprocal(),
        "rdiv": lambda x, y: 2 / x,
        "rpow": lambda x, y: 2 ** x,
        "log1p": lambda x, y: x.log1p(),
        "expm1": lambda x, y: x.expm1(),
        "erf": lambda x, y: x.erf(),
        "div": lambda x, y: x / y,
        "sub_neg": lambda x, y: (x - y) * -x,
        "sum": lambda x, y: x.sum() * x,
        "mean": lambda x, y: x.mean() * x,
        "mm": lambda x, y: x.view(2, 2).mm(y.view(2, 2)).view(4) * x,
        "softmax": lambda x, y: x.softmax(0),
        "log_softmax": lambda x, y: x.log_softmax(0),
        "chain": lambda x, y: (x.sin() * y).exp().tanh(),
    }


NAMES = list(_fns(tg))


def _seeded(lib, name, seed):
    x = lib.tensor([0.5, 1.0, 2.0, 3.0], dtype=lib.float64, requires_grad=True)
    y = lib.tensor([1.5, -1.0, 2.0, 0.5], dtype=lib.float64, requires_grad=True)
    w = lib.tensor([1.5, -1.0, 2.0, 0.5], dtype=lib.float64)
    f = _fns(lib)[name](x, y)
    loss = f.sum() if seed == "ones" else (f * w).sum() if seed == "weights" else (f * y).sum()
    return x, y, loss


@pytest.mark.parametrize("seed", ["ones", "weights", "tracked"])
@pytest.mark.parametrize("name", NAMES)
def test_create_graph_gradient_shows_torchs_nodes(name, seed):
    torch = pytest.importorskip("torch")
    got = []
    for lib in (tg, torch):
        x, y, loss = _seeded(lib, name, seed)
        (gx,) = lib.autograd.grad(loss, x, create_graph=True)
        got.append((structure(gx.grad_fn), gx.tolist()))
    assert got[0][0] == got[1][0]
    np.testing.assert_allclose(got[0][1], got[1][1], rtol=1e-12, atol=1e-15)


def test_relu_backward_shows_threshold_backward():
    # with a gradient that requires grad (whether an untracked one gives a result that requires grad
    # is a matter of differentiability, not of names)
    torch = pytest.importorskip("torch")
    got = []
    for lib in (tg, torch):
        x, y, loss = _seeded(lib, "mul", "tracked")
        (gx,) = lib.autograd.grad((x.relu() * y).sum(), x, create_graph=True)
        got.append(structure(gx.grad_fn))
    assert got[0] == got[1] and got[0][0] == "ThresholdBackwardBackward0"


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("dim", [0, 1, (0, 1), None])
def test_create_graph_gradient_of_a_reduction_shows_torchs_nodes(reduce, dim, keepdim):
    torch = pytest.importorskip("torch")
    got = []
    for lib in (tg, torch):
        x = lib.tensor([[0.5, 1.0, 2.0], [3.0, -1.0, 0.25]], dtype=lib.float64, requires_grad=True)
        r = getattr(x, reduce)() if dim is None else getattr(x, reduce)(dim, keepdim=keepdim)
        w = lib.ones_like(r, requires_grad=True) * 1.5  # a tracked seed: the VJP's nodes all show
        (gx,) = lib.autograd.grad((r * w).sum(), x, create_graph=True)
        got.append((structure(gx.grad_fn), gx.tolist()))
    assert got[0] == got[1]


@pytest.mark.parametrize("name", ["mul", "pow2", "exp", "sin", "tanh", "sqrt", "mean", "mm", "chain"])
def test_backward_create_graph_grad_is_copied_as_torchs_accumulate_grad(name):
    torch = pytest.importorskip("torch")
    got = []
    for lib in (tg, torch):
        x, y, loss = _seeded(lib, name, "weights")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's reference-cycle warning
            loss.backward(create_graph=True)
            first = structure(x.grad.grad_fn)
            _fns(lib)[name](x, y).sum().backward(create_graph=True)  # accumulates: x.grad + new
        got.append((first, structure(x.grad.grad_fn), None if y.grad is None else structure(y.grad.grad_fn)))
    assert got[0] == got[1]
    assert got[0][0][0] == "CopyBackwards"


def test_fresh_grad_is_a_copy_of_its_own(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    v = lib.tensor([3.0, 4.0])
    x.backward(v, create_graph=True)
    assert x.grad is not v and x.grad.tolist() == [3.0, 4.0] and x.grad.grad_fn is None
    v.mul_(2)
    assert x.grad.tolist() == [3.0, 4.0]


def test_grad_of_a_copied_grad_is_torchs(lib):
    x = lib.tensor([0.3, -0.7, 1.1], dtype=lib.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (x.sin() * x ** 2).sum().backward(create_graph=True)
    (g2,) = lib.autograd.grad(x.grad.sum(), x)
    expected = [2 * np.cos(v) * v + 2 * np.sin(v) + 2 * np.cos(v) * v - v * v * np.sin(v) for v in (0.3, -0.7, 1.1)]
    np.testing.assert_allclose(g2.tolist(), expected, rtol=1e-12)
