"""The autograd semantics of API.md beyond the seeds: graph lifetime, grad/backward options, errors,
grad modes, detach/.data, hooks, grad_fn structure, higher order and memory.

Tests taking the ``lib`` fixture are torch user code run on tapegrad and (when installed) on torch,
so the behaviour asserted is torch's; the rest compare with torch inside the test where they can.
"""
import gc
import threading
import tracemalloc
import warnings
import weakref

import numpy as np
import pytest

import tapegrad as tg


def val(t):
    return np.asarray(t.tolist(), dtype=np.float64)


def close(t, expected, rtol=1e-6):
    np.testing.assert_allclose(val(t), np.asarray(expected, dtype=np.float64), rtol=rtol, atol=1e-12)


# -- graph lifetime: retain_graph and the freed-graph error ---------------------------------------
def test_retain_graph_allows_second_backward_and_grads_accumulate(lib):
    x = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    close(x.grad, [2, 4, 6])
    y.backward()
    close(x.grad, [4, 8, 12])
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        y.backward()


def test_freed_graph_error_through_autograd_grad(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    close(lib.autograd.grad(y, x)[0], [2, 4])
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        lib.autograd.grad(y, x)
    z = (x.exp() * 2).sum()
    z.backward()
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        lib.autograd.grad(z, x)


def test_freed_graph_error_on_shared_intermediate(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    h = x.exp()
    h.sum().backward()
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        (h * 3).sum().backward()


def test_second_backward_through_nodes_without_saved_tensors(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    s = (x + 1).sum()
    s.backward()
    s.backward()
    close(x.grad, [2, 2])


# torch releases each node's saved tensors, not the graph: a backward frees what saved a value
def test_second_backward_through_views_and_sums_of_a_gradient(lib):
    b = lib.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    c = (b.t() + 1).view(3).expand(2, 3)[1]
    g = lib.tensor([1.0, -2.0, 0.5])
    c.backward(g)
    c.backward(g)
    close(b.grad, [[2, -4, 1]])


def test_second_backward_stops_at_the_first_entry_that_saved_a_value(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2  # saves the 2 (a tensor in torch)
    s = (y + 1).sum()
    s.backward()
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        s.backward()
    close(x.grad, [2, 2])
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        (y * 3).sum().backward()  # a new graph over y's freed entry


def test_entry_outside_the_backward_keeps_what_it_saved(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    w = lib.tensor([3.0, -1.0], requires_grad=True)
    a = x + 1
    k = a * w  # saves a (for w's gradient) and w: not run by the backward below
    a.sum().backward()
    k.sum().backward()
    close(w.grad, [2, 3])
    close(x.grad, [1 + 3, 1 - 1])


def test_linked_tape_replays_an_older_entry_that_saved_nothing(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x + 1
    y.sum().backward()
    (y * 3).sum().backward()  # recorded after a backward: through y's add again
    close(x.grad, [4, 4])


def test_hooked_graph_replays_its_entries_that_saved_nothing(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x - 1
    seen = []
    y.register_hook(lambda g: seen.append(val(g)))
    s = y.sum()
    s.backward()
    s.backward()
    assert len(seen) == 2
    close(x.grad, [2, 2])


def test_create_graph_backward_frees_as_a_plain_one(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    s = (x + 1).sum()
    (g,) = lib.autograd.grad(s, x, create_graph=True, retain_graph=False)
    close(g, [1, 1])
    (g,) = lib.autograd.grad(s, x)
    close(g, [1, 1])
    t = (x * x).sum()
    lib.autograd.grad(t, x, create_graph=True, retain_graph=False)
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        lib.autograd.grad(t, x)


def test_two_grads_of_one_loss_when_no_saved_value_is_needed(lib):
    x = lib.tensor([0.5, -1.0], requires_grad=True)
    a = x.exp()
    loss = (a + 1).sum()
    close(lib.autograd.grad(loss, a)[0], [1, 1])
    close(lib.autograd.grad(loss, a)[0], [1, 1])  # the walk stopped at a: exp neither ran nor was freed
    close(lib.autograd.grad(loss, x)[0], np.exp([0.5, -1.0]))
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        lib.autograd.grad(loss, x)


def test_backward_with_inputs_runs_and_frees_only_what_leads_to_them(lib):
    x = lib.tensor([0.5, -1.0], requires_grad=True)
    w = lib.tensor([2.0, 3.0], requires_grad=True)
    a = x.exp()
    (a * w).sum().backward(inputs=[w])
    close(w.grad, np.exp([0.5, -1.0]))
    assert x.grad is None
    a.sum().backward()  # exp did not run above, so it saved its result still
    close(x.grad, np.exp([0.5, -1.0]))


def test_requested_nonleaf_input_runs_its_hooks_and_off_path_grads_stay_unset(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    a = x * 2
    seen = []
    a.register_hook(lambda g: seen.append(val(g)))
    (g,) = lib.autograd.grad((a * a).sum(), a)
    close(g, [4, 8])
    assert len(seen) == 1
    b = x * 3
    b.retain_grad()
    (a * b).sum().backward(inputs=[a])
    assert b.grad is None and x.grad is None
    close(a.grad, [3, 6])


def test_grad_of_an_input_that_also_leads_to_another(lib):
    x = lib.tensor([0.5, -1.0], requires_grad=True)
    a = x * 3
    loss = (a * a).sum()
    ga, gx = lib.autograd.grad(loss, [a, x])
    close(ga, [3, -6])
    close(gx, [9, -18])


def test_changing_a_constant_factor_in_place_fails_but_not_the_other_factor(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    c = lib.tensor([3.0, 4.0])
    u = x * 1  # (an operand that may change in place)
    y = u * c  # saves c for u's gradient; u itself is not saved
    u.mul_(2)
    y.sum().backward()
    close(x.grad, [3, 4])
    y = x * c
    c.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_second_backward_through_a_tensor_fill_and_an_alpha_sum(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    v = lib.tensor(3.0, requires_grad=True)
    s = (x + 0).fill_(v).sum() + x.add(x, alpha=2).sum()  # nothing here saves a value
    s.backward()
    s.backward()
    close(x.grad, [6, 6])
    close(v.grad, 4)
    close((lib.tensor([float("inf"), 1.0], requires_grad=True) + 0).fill_(v), [3, 3])  # (inf * 0 is NaN)


@pytest.mark.parametrize("op", ["where", "masked_fill", "masked_fill_tensor"])
def test_changing_a_saved_condition_in_place_fails(lib, op):
    x = lib.tensor([1.0, -2.0], requires_grad=True)
    c = lib.tensor([True, False])
    if op == "where":
        y = lib.where(c, x, x * 2)
    elif op == "masked_fill":
        y = x.masked_fill(c, 2.0)
    else:
        y = x.masked_fill(c, lib.tensor(2.0, requires_grad=True))
    c.zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_second_backward_through_a_scalar_product_fails(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = (x * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        y.backward()


# -- backward(inputs=...) and autograd.grad ---------------------------------------------------------
def test_backward_inputs_restricts_accumulation(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    w = lib.tensor([3.0, 4.0], requires_grad=True)
    (x * w).sum().backward(inputs=[w])
    close(w.grad, [1, 2])
    assert x.grad is None
    (x * w).sum().backward(inputs=x)
    close(x.grad, [3, 4])
    close(w.grad, [1, 2])


def test_backward_inputs_nonleaf_gets_grad(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    a = x * 2
    (a * a).sum().backward(inputs=[a])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # populated, so reading it does not warn
        close(a.grad, [4, 8])
    assert x.grad is None


def test_backward_inputs_empty_is_an_error(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="argument to .?backward\\(\\).? cannot be empty"):
        (x * 2).sum().backward(inputs=[])


@pytest.mark.parametrize("inputs", [[], ()], ids=["list", "tuple"])
def test_autograd_grad_with_empty_inputs_is_an_error(lib, inputs):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="`inputs` argument to `grad\\(\\)` cannot be empty"):
        lib.autograd.grad((x * 2).sum(), inputs)
    with pytest.raises(RuntimeError, match="`inputs` argument to `grad\\(\\)` cannot be empty"):
        lib.autograd.grad((x * 2).sum(), inputs, allow_unused=True)


def test_autograd_grad_input_that_is_no_tensor(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="all inputs have to be Tensors or GradientEdges, but got float"):
        lib.autograd.grad((x * 2).sum(), [x, 1.0])


def test_autograd_grad_never_touches_grad(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    x.grad = lib.tensor([10.0, 10.0])
    h = x * 3
    h.retain_grad()
    (gx,) = lib.autograd.grad((h * h).sum(), x)
    close(gx, [18, 36])
    close(x.grad, [10, 10])
    close(h.grad, [6, 12])  # torch's retain_grad hook still fires on the way


def test_autograd_grad_several_outputs_and_inputs(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    w = lib.tensor([3.0, -1.0], requires_grad=True)
    y1 = (x * w).sum()
    y2 = (x * x).sum()
    gx, gw = lib.autograd.grad([y1, y2], [x, w], grad_outputs=[lib.tensor(1.0), lib.tensor(2.0)])
    close(gx, [3 + 4 * 1, -1 + 4 * 2])
    close(gw, [1, 2])


def test_allow_unused_and_materialize_grads(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    u = lib.tensor([5.0], requires_grad=True)
    y = (x * x).sum()
    with pytest.raises(RuntimeError, match="appears to not have been used in the graph"):
        lib.autograd.grad(y, [x, u], retain_graph=True)
    gx, gu = lib.autograd.grad(y, [x, u], allow_unused=True, retain_graph=True)
    assert gu is None
    gx, gu = lib.autograd.grad(y, [x, u], materialize_grads=True, retain_graph=True)
    close(gx, [2, 4])
    close(gu, [0])
    assert tuple(gu.shape) == (1,)
    with pytest.raises(ValueError, match="allow_unused"):
        lib.autograd.grad(y, [x, u], allow_unused=False, materialize_grads=True)


# A gradient handed to backward is often a view: expanded, transposed or sliced. Its values count,
# not its memory order.
SEED_VIEWS = {
    "expand": lambda lib: lib.tensor([1.0, 2.0]).expand(3, 2),
    "transpose": lambda lib: lib.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).t(),
    "slice": lambda lib: lib.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])[:, 1:],
    "float64 transpose": lambda lib: lib.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=lib.float64).t(),
}


@pytest.mark.parametrize("seed", list(SEED_VIEWS))
@pytest.mark.parametrize("call", ["backward", "grad", "grad create_graph", "two outputs"])
def test_non_contiguous_gradient_is_read_by_value(lib, seed, call):
    x = lib.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    v = SEED_VIEWS[seed](lib)
    expected = 2 * val(v) * np.exp(val(x))
    if call == "backward":
        (x.exp() * 2).backward(v)
        got = x.grad
    elif call == "two outputs":  # two seeds on one tape, each a view
        got, = lib.autograd.grad([x.exp(), x.exp()], [x], [v, v])
    else:
        got, = lib.autograd.grad(x.exp() * 2, x, v, create_graph=call.endswith("create_graph"))
    close(got, expected)


def test_gradient_is_cast_to_the_output_dtype(lib):
    x = lib.tensor([0.3, 0.7], dtype=lib.float64, requires_grad=True)
    g = lib.tensor([0.1, 0.2], dtype=lib.float64)
    x.float().backward(g)  # rounded to float32 first, as the output is
    (gx,) = lib.autograd.grad(x.float(), x, g, create_graph=True)
    expected = np.float32([0.1, 0.2]).astype(np.float64)
    assert val(x.grad).tolist() == expected.tolist() and val(gx).tolist() == expected.tolist()


@pytest.mark.parametrize("call", ["backward", "grad"])
def test_gradient_shape_mismatch(lib, call):
    x = lib.ones(2, 3, requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        if call == "backward":
            y.backward(lib.ones(3, 2))
        else:
            lib.autograd.grad(y, x, grad_outputs=lib.ones(6))


def test_backward_on_tensor_without_grad(lib):
    x = lib.ones(2)
    with pytest.raises(RuntimeError, match="element 0 of tensors does not require grad and does not have a grad_fn"):
        (x * 2).sum().backward()


# -- requires_grad rules and in-place checks --------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda lib: lib.tensor([1, 2], requires_grad=True),
    lambda lib: lib.ones(2, dtype=lib.int64, requires_grad=True),
    lambda lib: lib.tensor([1, 2]).requires_grad_(),
    lambda lib: lib.arange(3, requires_grad=True),
    lambda lib: setattr(lib.tensor([1]), "requires_grad", True),
], ids=["tensor", "ones_int64", "requires_grad_", "arange", "setter"])
def test_requires_grad_on_int_tensor(lib, make):
    # torch words it three ways (factories, requires_grad_, the setter); these key words are common
    with pytest.raises(RuntimeError, match="(?i)only Tensors of floating point.* can require gradients"):
        make(lib)


@pytest.mark.parametrize("flag", [True, False])
def test_requires_grad_setter_on_nonleaf(lib, flag):
    y = lib.ones(2, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="you can only change requires_grad flags of leaf variables"):
        y.requires_grad = flag


@pytest.mark.parametrize("op", [
    lambda x: x.add_(1), lambda x: x.mul_(2), lambda x: x.zero_(), lambda x: x.__iadd__(1),
    lambda x: x.__setitem__(0, 5.0),
], ids=["add_", "mul_", "zero_", "iadd", "setitem"])
def test_inplace_on_leaf_requiring_grad(lib, op):
    x = lib.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place operation"):
        op(x)
    with lib.no_grad():
        op(x)  # the SGD-update pattern is fine


def test_inplace_modification_of_saved_value(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x * 1
    z = y * y
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_inplace_modification_of_saved_output(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x.exp()
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_inplace_modification_not_needed_by_backward(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x * 1
    z = y + 1
    y.mul_(2)
    z.sum().backward()
    close(x.grad, [1, 1])
    x.grad = None
    y = x * 1
    z = y + 1
    y.mul_(2)
    (z + y).sum().backward()  # y now stands for (x * 1) * 2
    close(x.grad, [3, 3])


def test_inplace_on_view_reaches_base(lib):
    x = lib.ones(3, requires_grad=True)
    y = x * 1
    y[:2].mul_(2)
    y.sum().backward()
    close(x.grad, [2, 2, 1])


# -- grad modes ------------------------------------------------------------------------------
def test_no_grad_and_enable_grad(lib):
    x = lib.ones(2, requires_grad=True)
    with lib.no_grad():
        assert not lib.is_grad_enabled()
        y = x * 2
        with lib.enable_grad():
            assert lib.is_grad_enabled()
            z = x * 2
        assert not lib.is_grad_enabled()
    assert lib.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad and type(z.grad_fn).__name__ == "MulBackward0"


def test_grad_mode_decorators(lib):
    @lib.no_grad()
    def f(x):
        return lib.is_grad_enabled(), x * 2

    @lib.no_grad
    def g(x):
        return lib.is_grad_enabled(), x * 2

    @lib.set_grad_enabled(False)
    def h(x):
        return lib.is_grad_enabled(), x * 2

    @lib.inference_mode()
    def i(x):
        return lib.is_grad_enabled(), x * 2

    @lib.inference_mode
    def j(x):
        return lib.is_grad_enabled(), x * 2

    x = lib.ones(2, requires_grad=True)
    for fn in (f, g, h, i, j):
        enabled, y = fn(x)
        assert enabled is False and not y.requires_grad
        assert lib.is_grad_enabled()
    with lib.no_grad():
        @lib.enable_grad()
        def e(x):
            return x * 2
        assert e(x).requires_grad


def test_set_grad_enabled_context_and_bare_call(lib):
    x = lib.ones(2, requires_grad=True)
    with lib.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert lib.is_grad_enabled()
    lib.set_grad_enabled(False)
    try:
        assert not lib.is_grad_enabled()
        assert not (x * 2).requires_grad
    finally:
        lib.set_grad_enabled(True)
    assert lib.is_grad_enabled() and (x * 2).requires_grad


def test_inference_mode(lib):
    x = lib.ones(2, requires_grad=True)
    with lib.inference_mode():
        assert not lib.is_grad_enabled()
        assert lib.is_inference_mode_enabled()
        y = x * 2
    assert not y.requires_grad
    assert lib.is_grad_enabled() and not lib.is_inference_mode_enabled()
    with lib.inference_mode(False):
        assert lib.is_grad_enabled()


def test_grad_mode_restored_after_exception(lib):
    with pytest.raises(KeyError):
        with lib.no_grad():
            raise KeyError
    assert lib.is_grad_enabled()


def test_grad_mode_is_per_thread(lib):
    seen = {}
    inside, checked = threading.Barrier(2), threading.Barrier(2)

    def worker():
        seen["start"] = lib.is_grad_enabled()  # main is under no_grad right now
        x = lib.ones(2, requires_grad=True)
        with lib.no_grad():
            inside.wait()
            checked.wait()
            seen["inner"] = (x * 2).requires_grad
        seen["after"] = (x * 2).requires_grad

    with lib.no_grad():
        t = threading.Thread(target=worker)
        t.start()
        inside.wait()
    seen["main"] = lib.is_grad_enabled()  # main left no_grad while the worker is inside its own
    checked.wait()
    t.join()
    assert seen == {"start": True, "inner": False, "after": True, "main": True}


@pytest.mark.parametrize("first_op", ["tg.sin(x)", "x * 2.0", "x * x", "x.sum()", "x[1:]"])
def test_first_op_of_a_new_thread_records(lib, first_op):
    # The recorders read per-thread state that a thread which never touched grad mode has not set
    # up yet; its very first op must still record, even while the main thread is under no_grad.
    x = lib.tensor([0.5, 1.0], requires_grad=True)
    out = {}

    def worker():
        y = eval(first_op, {"tg": lib, "x": x})
        out["rg"] = y.requires_grad
        out["grad"] = lib.autograd.grad(y.sum(), x)[0]

    with lib.no_grad():
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    expected = {"tg.sin(x)": np.cos([0.5, 1.0]), "x * 2.0": [2, 2], "x * x": [1, 2], "x.sum()": [1, 1],
                "x[1:]": [0, 1]}[first_op]
    assert out["rg"]
    close(out["grad"], expected)


def test_backward_in_several_threads():
    def work(k, out):
        x = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
        for _ in range(20):
            (x * x * k).sum().backward()
        out[k] = val(x.grad)

    out = {}
    threads = [threading.Thread(target=work, args=(k, out)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(1, 5):
        np.testing.assert_allclose(out[k], 20 * 2 * k * np.array([1.0, 2.0, 3.0]), rtol=1e-6)


# -- detach and .data ------------------------------------------------------------------------------
def test_detach_shares_storage_and_is_untracked(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    d = y.detach()
    assert not d.requires_grad and d.grad_fn is None and d.is_leaf
    assert not (d * 2).requires_grad
    d.add_(1)
    close(y, [4, 7])
    dx = x.detach()
    dx[1] = 9.0
    close(x, [1, 9])


def test_detach_inplace_is_seen_by_version_check(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x * 1
    z = y * y
    y.detach().mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_data_shares_storage_without_version_check(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    assert not x.data.requires_grad and x.data.is_leaf
    y = x * 1
    z = y * y
    y.data.mul_(2)  # .data bypasses the version check: backward reads the new value
    z.sum().backward()
    close(x.grad, [4, 8])
    x.data = lib.tensor([5.0, 6.0])
    close(x, [5, 6])
    assert x.requires_grad and x.is_leaf


# -- hooks and retain_grad ------------------------------------------------------------------------
def test_hook_on_leaf_replaces_grad_and_can_be_removed(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    h = x.register_hook(lambda g: seen.append(val(g)) or g * 10)
    (x * 3).sum().backward()
    close(x.grad, [30, 30])
    np.testing.assert_allclose(seen[0], [3, 3])
    h.remove()
    (x * 3).sum().backward()
    close(x.grad, [33, 33])
    assert len(seen) == 1


def test_leaf_hook_runs_once_with_the_whole_gradient(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    calls = []
    x.register_hook(lambda g: calls.append(val(g)) or g + 1)
    a = x * 2
    (x * 5).sum().backward()  # a's graph outlives this backward
    calls.clear()
    (a * x).sum().backward()  # x reached directly and through a
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0], [4, 8])
    close(x.grad, [6 + 5, 6 + 9])  # each backward's hook added 1 once


def test_hook_on_nonleaf_changes_what_flows_on(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x * x
    seen = []
    y.register_hook(lambda g: seen.append(val(g)))  # observes only
    h = y.register_hook(lambda g: g * 2)
    y.register_hook(lambda g: g + 1)  # hooks compose in registration order
    (y * 3).sum().backward(retain_graph=True)
    np.testing.assert_allclose(seen[0], [3, 3])
    close(x.grad, 2 * np.array([1.0, 2.0]) * 7)
    h.remove()
    x.grad = None
    (y * 3).sum().backward()
    close(x.grad, 2 * np.array([1.0, 2.0]) * 4)


def test_hook_on_nonleaf_with_retain_grad(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.retain_grad()
    y.register_hook(lambda g: g * 3)
    y.sum().backward()
    close(y.grad, [3, 3])  # torch runs the retain_grad hook last
    close(x.grad, [6, 6])


def test_hook_requires_grad(lib):
    with pytest.raises(RuntimeError, match="cannot register a hook on a tensor that doesn't require gradient"):
        lib.ones(2).register_hook(lambda g: g)


def test_retain_grad(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    x.retain_grad()  # a no-op on a leaf
    assert not x.retains_grad
    y = x * 2
    assert not y.retains_grad
    y.retain_grad()
    assert y.retains_grad
    z = (y * y).sum()
    z.backward(retain_graph=True)
    close(y.grad, [4, 8])
    z.backward()
    close(y.grad, [8, 16])  # accumulates like a leaf's
    with pytest.raises(RuntimeError, match="can't retain_grad on Tensor that has requires_grad=False"):
        lib.ones(2).retain_grad()


# -- a leaf changed between two uses on one graph ------------------------------------------------
def test_leaf_updated_in_place_between_two_forwards(lib):
    w = lib.ones(2, requires_grad=True)
    y1 = (w * w).sum()  # kept alive: its graph saved w at version 0
    with lib.no_grad():
        w.add_(1)
    y2 = (w * w).sum()  # saves w at version 1
    y2.backward()
    close(w.grad, [4, 4])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y1.backward()


def test_leaf_updated_in_place_in_retain_graph_loop(lib):
    w = lib.tensor([1.0, -2.0], requires_grad=True)
    kept = []
    for _ in range(3):
        loss = (w * w).sum()
        loss.backward(retain_graph=True)
        kept.append(loss)
        with lib.no_grad():
            w.sub_(0.25 * w.grad)
        w.grad.zero_()
    close(w, [0.125, -0.25])


def test_leaf_given_new_data_between_two_forwards(lib):
    w = lib.ones(2, requires_grad=True)
    y1 = (w * 3).sum()
    w.data = lib.tensor([3.0, 3.0])
    y2 = (w * w).sum() + y1
    (g,) = lib.autograd.grad(y2, w)
    close(g, [9, 9])


# -- how the engine hands out leaf gradients --------------------------------------------------------
def test_leaf_reached_on_two_tapes_without_hooks_sums_both(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    a = x * x
    (x * 5).sum().backward()  # a's graph outlives this backward, on an older tape
    (a * 3 + x).sum().backward()  # x on the new tape and, through a, on the older one
    close(x.grad, [5 + 6 + 1, 5 + 12 + 1])


def test_leaf_given_new_data_mid_graph_gets_both_slots(lib):
    w = lib.ones(2, requires_grad=True)
    a = w * 2
    w.data = lib.tensor([5.0, 5.0])
    (a + w * 3).sum().backward()  # w holds two slots on one tape: their gradients add up
    close(w.grad, [5, 5])
    (a.detach() + w * 3).sum().backward()
    close(w.grad, [8, 8])


def test_float32_leaf_in_a_float64_graph_gets_a_float32_grad(lib):
    w = lib.ones(2, requires_grad=True)
    x = lib.tensor([1.0, 2.0], dtype=lib.float64)
    (w.double() * x).sum().backward()
    assert w.grad.dtype == lib.float32
    close(w.grad, [1, 2])


def test_unused_parameter_keeps_grad_none(lib):
    w, unused = lib.ones(2, requires_grad=True), lib.ones(2, requires_grad=True)
    keep = unused * 2  # on the same tape, but not part of the loss
    (w * 3).sum().backward()
    close(w.grad, [3, 3])
    assert unused.grad is None
    keep.sum().backward()  # its entry was not freed by the first backward
    close(unused.grad, [2, 2])


# -- graphs that span a freed tape --------------------------------------------------------------
def test_grads_flow_into_older_unfreed_entries(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    a = x * x  # recorded before the freeing backward below, but not part of its graph
    (x * 5).sum().backward()
    close(x.grad, [5, 5])
    d = a * 3  # a's entry is still alive
    d.sum().backward()
    close(x.grad, [5 + 6, 5 + 12])
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        (a * 2).sum().backward()


def test_older_entry_freed_by_a_later_graph_raises(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    a = x.exp()
    b = a * 2  # recorded after a; frees a's entry too
    b.sum().backward()
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        (a * 3).sum().backward()


def test_retained_older_entries_serve_many_new_graphs(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    a = x * x
    a.sum().backward(retain_graph=True)
    for k in range(3):
        (a * k).sum().backward(retain_graph=True)
    close(x.grad, 2 * np.array([1.0, 2.0]) * (1 + 0 + 1 + 2))


# -- grad_fn structure -------------------------------------------------------------------------
def structure(fn):
    if fn is None:
        return None
    return type(fn).__name__, tuple(structure(f) for f, _ in fn.next_functions)


def _functional(x):
    return tg.nn.functional if isinstance(x, tg.Tensor) else __import__("torch").nn.functional


EXPRESSIONS = {
    "mul": lambda x, y, c: x * y,
    "mul_scalar": lambda x, y, c: x * 2,
    "mul_plain": lambda x, y, c: x * c,
    "sum_of_add": lambda x, y, c: (x + y).sum(),
    "mean_affine": lambda x, y, c: (x * 2 + 1).mean(),
    "chain": lambda x, y, c: x.exp().sin().tanh(),
    "rsub": lambda x, y, c: 2 - x,
    "sub_scalar": lambda x, y, c: x - 2,
    "sub_alpha": lambda x, y, c: x.sub(y, alpha=2),
    "add_scalar_alpha": lambda x, y, c: x.add(2, alpha=3),
    "add_alpha": lambda x, y, c: x.add(c, alpha=3),
    "div_scalar": lambda x, y, c: x / 2,
    "rdiv": lambda x, y, c: 2 / x,
    "pow": lambda x, y, c: x ** 2,
    "neg": lambda x, y, c: -x,
    "mm_of_views": lambda x, y, c: x.view(2, 2).mm(y.view(2, 2).t()),
    "sum_dim": lambda x, y, c: (x * y).view(2, 2).sum(0),
    "broadcast_add": lambda x, y, c: x + y[:1],
    "broadcast_mul_plain": lambda x, y, c: x.view(2, 2) * c[:2],
    "slice": lambda x, y, c: x[1:],
    "select": lambda x, y, c: x[0] * y[1],
    "index": lambda x, y, c: x[[0, 2]],
    "double": lambda x, y, c: x.double() * 2,
    # composites: the tape keeps their primitives, grad_fn shows torch's single node
    "var": lambda x, y, c: x.var(),
    "std_dim": lambda x, y, c: x.view(2, 2).std(1),
    "logsumexp": lambda x, y, c: x.view(2, 2).logsumexp(1),
    "dot": lambda x, y, c: x.dot(y),
    "vdot": lambda x, y, c: x.vdot(c),
    "mv": lambda x, y, c: x.view(2, 2).mv(y[:2]),
    "squeeze_dim": lambda x, y, c: x.view(1, 4).squeeze(0),
    "squeeze_dims": lambda x, y, c: x.view(1, 4).squeeze((0,)),
    "squeeze_all": lambda x, y, c: x.view(1, 4).squeeze(),
    "mse_loss": lambda x, y, c: _functional(x).mse_loss(x * 2, c),
    "bce": lambda x, y, c: _functional(x).binary_cross_entropy(x.sigmoid(), c / 10),
    "bce_logits": lambda x, y, c: _functional(x).binary_cross_entropy_with_logits(x, c / 10, weight=c),
    "composite_inside": lambda x, y, c: x.var() * y,
}


@pytest.mark.parametrize("name", EXPRESSIONS)
def test_next_functions_match_torch(name):
    torch = pytest.importorskip("torch")
    got = []
    for lib in (tg, torch):
        x = lib.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
        y = lib.tensor([0.5, -1.0, 2.0, 1.5], requires_grad=True)
        c = lib.tensor([3.0, 1.0, 2.0, 5.0])
        got.append(structure(EXPRESSIONS[name](x, y, c).grad_fn))
    assert got[0] == got[1]


def test_next_functions_accumulate_grad_variable():
    x = tg.ones(2, requires_grad=True)
    (acc, _), (none, _) = (x * tg.ones(2)).grad_fn.next_functions
    assert acc.variable is x and none is None
    assert acc.name() == "torch::autograd::AccumulateGrad"


def test_copyslices_next_functions_match_torch():
    torch = pytest.importorskip("torch")
    got = []
    for lib in (tg, torch):
        x = lib.ones(4, requires_grad=True)
        b = lib.zeros(4)
        b[1:3] = x[:2] * 2
        got.append(structure(b.grad_fn))
    assert got[0] == got[1]


# -- higher order ----------------------------------------------------------------------------------
HIGHER = {
    "cube": lambda x: x ** 3,
    "sin": lambda x: x.sin(),
    "exp_tanh": lambda x: x.exp() * x.tanh(),
    "tanh_of_exp_times_x": lambda x: (x.exp() * x).tanh() * x,
    "sin_cos_div": lambda x: x.sin() / (x.cos() + 2),
    "sigmoid_sqrt": lambda x: (x * x + 1).sqrt().sigmoid(),
}


@pytest.mark.parametrize("name", list(HIGHER))
def test_second_derivative_matches_torch(name):
    torch = pytest.importorskip("torch")
    f = HIGHER[name]
    data = [-1.3, -0.2, 0.4, 1.1]
    out = []
    for lib in (tg, torch):
        x = lib.tensor(data, dtype=lib.float64, requires_grad=True)
        (g,) = lib.autograd.grad(f(x).sum(), x, create_graph=True)
        assert g.requires_grad and g.grad_fn is not None
        (g2,) = lib.autograd.grad(g.sum(), x)
        out.append((val(g), val(g2)))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-12)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-10)


def test_third_derivative_of_cube():
    x = tg.tensor([-2.0, 0.5, 3.0], dtype=tg.float64, requires_grad=True)
    (g,) = tg.autograd.grad((x ** 3).sum(), x, create_graph=True)
    (g2,) = tg.autograd.grad(g.sum(), x, create_graph=True)
    (g3,) = tg.autograd.grad(g2.sum(), x)
    close(g, 3 * val(x) ** 2)
    close(g2, 6 * val(x))
    close(g3, [6, 6, 6])


def test_backward_create_graph_gives_differentiable_grad():
    torch = pytest.importorskip("torch")
    out = []
    for lib in (tg, torch):
        x = lib.tensor([0.3, -0.7], dtype=lib.float64, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's reference-cycle warning; tapegrad's tape holds no such cycle
            (x.sin() * x).sum().backward(create_graph=True)
        assert x.grad.requires_grad and x.grad.grad_fn is not None
        (g2,) = lib.autograd.grad(x.grad.sum(), x)
        out.append((val(x.grad), val(g2)))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-12)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-12)


# -- memory: reference counting alone frees each iteration's tape ----------------------------------
@pytest.mark.parametrize("keep", ["item", "tensor"])
def test_training_loop_memory_is_flat(keep):
    rng = np.random.default_rng(0)
    x = tg.tensor(rng.standard_normal((64, 8)).astype(np.float32))
    w = tg.tensor(rng.standard_normal((8, 8)).astype(np.float32) * 0.3, requires_grad=True)
    losses = []

    def step():
        loss = ((x @ w).tanh() ** 2).mean()
        loss.backward()
        with tg.no_grad():
            w.sub_(0.1 * w.grad)
        w.grad.zero_()
        losses.append(loss.item() if keep == "item" else loss)

    step()  # compile and warm the caches before measuring
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        for i in range(2000):
            step()
            if i == 199:
                at_200 = tracemalloc.get_traced_memory()[0]
        at_2000 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        gc.enable()
    # A tape that kept its values costs about 8 KB here, so one leaked per iteration is 14 MB.
    # Kept floats cost ~60 KB; a kept loss tensor may pin its freed tape's rows (as torch's keeps
    # its grad_fn nodes), about 1.5 KB, but never the arrays.
    bound = 200_000 if keep == "item" else 1800 * 3000
    assert at_2000 - at_200 < bound, (at_200, at_2000)
    assert float(losses[-1]) < float(losses[0])


def test_freed_graph_keeps_the_shapes_its_replayable_entries_read_not_the_values():
    x = tg.ones(100_000, dtype=tg.float64, requires_grad=True)
    (x.exp() + 1).sum().backward()  # (loads the kernels, and the thread pool of a split backward)
    x.grad = None
    tracemalloc.start()
    try:
        loss = (x.exp() + 1).sum()  # exp saves its result; add and sum save nothing
        held = tracemalloc.get_traced_memory()[0]
        loss.backward()
        x.grad = None
        gc.collect()
        left = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held > 1_600_000 and left < 100_000, (held, left)
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        loss.backward()  # sum and add replay on the shapes they kept; exp's result is gone


def test_freed_tape_lets_go_of_the_values_it_drops():
    x = tg.ones(1000, dtype=tg.float64, requires_grad=True)
    e = x.exp()
    dropped, kept = weakref.ref(e._value), (e * 2)
    loss = (kept + 1).sum()  # exp's result: read by the freed product only; the product's: by add, for its shape
    del e
    loss.backward()
    assert dropped() is None
    values = loss._tape.values
    # kept: x (a leaf that requires grad: its tensor holds it anyway), the loss, add's operand and
    # result as one stub, a (1000,) float64 array that holds no data
    assert sum(v is None for v in values) == len(values) - 4
    stub = values[kept._slot]
    assert stub.shape == (1000,) and not any(stub.strides) and values[loss._slot - 1] is stub
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        loss.backward()


def test_tensor_from_a_fortran_array_is_c_ordered_and_owns_its_data():
    a = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    t = tg.tensor(a, dtype=tg.float64)
    assert t.numpy().flags.c_contiguous
    a[0, 0] = 99.0
    assert t[0, 0].item() == 0.0


def test_tensor_from_a_scalar_stays_zero_dim():
    assert tg.tensor(3.5).shape == () and tg.tensor(np.float64(2.0), dtype=tg.float64).shape == ()


def test_composite_node_survives_its_backward_and_prints_like_torch():
    x = tg.tensor([1.0, 2.0, 4.0], requires_grad=True)
    v = x.var()
    v.backward()
    assert type(v.grad_fn).__name__ == "VarBackward0" and v.grad_fn.name() == "VarBackward0"
    assert repr(v) == "tensor(2.3333, grad_fn=<VarBackward0>)"
    assert [type(f).__name__ for f, _ in v.grad_fn.next_functions] == ["AccumulateGrad"]


# -- the legacy Variable, requires_grad_, del, numpy() and decorated generators ------------------
def test_variable_is_a_new_leaf_sharing_storage(lib):
    t = lib.tensor([1.0, 2.0])
    v = lib.autograd.Variable(t, requires_grad=True)
    assert v is not t and v.requires_grad and v.is_leaf and not t.requires_grad
    with lib.no_grad():
        v[0] = 5.0
    assert t.tolist() == [5.0, 2.0] and t._version == 1 and v._version == 1
    assert isinstance(t, lib.autograd.Variable) and isinstance(v, lib.Tensor)
    plain = lib.autograd.Variable(t)
    assert plain is not t and not plain.requires_grad


def test_variable_of_a_result_is_a_detached_leaf(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    u = x * 2
    for flag in (False, True):
        v = lib.autograd.Variable(u, requires_grad=flag)
        assert v is not u and v.is_leaf and v.grad_fn is None and v.requires_grad is flag
    assert lib.autograd.Variable(x).requires_grad is False and x.requires_grad


def test_variable_bad_input(lib):
    with pytest.raises(TypeError, match="Variable data has to be a tensor, but got list"):
        lib.autograd.Variable([1.0, 2.0])
    with pytest.raises(RuntimeError, match="Only Tensors of floating point and complex dtype can require gradients"):
        lib.autograd.Variable(lib.tensor([1, 2]), requires_grad=True)
    with pytest.warns(UserWarning, match="volatile was removed and now has no effect"):
        v = lib.autograd.Variable(lib.tensor([1.0]), volatile=True)
    assert not v.requires_grad
    assert lib.autograd.Variable().shape == (0,)


def test_requires_grad_on_a_result(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    assert y.requires_grad_() is y and y.requires_grad_(True) is y and not y.is_leaf  # nothing to change
    v = x[:1]
    assert v.requires_grad_() is v
    with pytest.raises(RuntimeError, match="you can only change requires_grad flags of leaf variables. If you want"):
        y.requires_grad_(False)
    with pytest.raises(RuntimeError, match="you can only change requires_grad flags of leaf variables.$"):
        y.requires_grad = True
    with lib.no_grad():
        z = x * 2
    assert z.requires_grad_() is z and z.is_leaf and z.requires_grad


@pytest.mark.parametrize("flag", [1, None, "yes"])
def test_requires_grad_must_be_a_bool(lib, flag):
    t = lib.tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match="requires_grad must be a bool"):
        t.requires_grad = flag
    with pytest.raises(TypeError, match="requires_grad_\\(\\): argument 'requires_grad' \\(position 1\\) must be bool"):
        t.requires_grad_(flag)
    assert not t.requires_grad


def test_del_grad_data_and_requires_grad(lib):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    (x * 2).sum().backward()
    del x.grad
    assert x.grad is None
    del x.grad  # when there is none, too
    y = x * 2
    y.retain_grad()
    y.sum().backward()
    del y.grad
    assert y.grad is None
    with pytest.raises(RuntimeError, match="Deleting tensor data is not allowed. Delete tensor instead!"):
        del x.data
    with pytest.raises(RuntimeError, match="requires_grad must be a bool"):
        del x.requires_grad


@pytest.mark.parametrize("mode", ["no_grad", "set_grad_enabled", "inference_mode"])
def test_numpy_of_a_tensor_requiring_grad_with_grad_mode_off(lib, mode):
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    off = {"no_grad": lib.no_grad, "set_grad_enabled": lambda: lib.set_grad_enabled(False),
           "inference_mode": lib.inference_mode}[mode]
    with off():
        a, b = x.numpy(), np.asarray(y)
    assert a.tolist() == [1.0, 2.0] and b.tolist() == [2.0, 4.0]
    a[0] = 7.0  # the tensor's own storage, as torch hands out
    assert x.tolist() == [7.0, 2.0]
    for get in (lambda t: t.numpy(), np.asarray):
        with pytest.raises(RuntimeError, match="Can't call numpy\\(\\) on Tensor that requires grad"):
            get(x)
    assert x.numpy(force=True).tolist() == [7.0, 2.0]


def _decorated_generators(lib):
    @lib.no_grad()
    def called(n):
        for _ in range(n):
            yield lib.is_grad_enabled()

    @lib.no_grad
    def bare(n):
        for _ in range(n):
            yield lib.is_grad_enabled()

    @lib.set_grad_enabled(False)
    def switched():
        yield lib.is_grad_enabled()

    @lib.inference_mode()
    def inference():
        yield lib.is_grad_enabled(), lib.is_inference_mode_enabled()

    @lib.enable_grad()
    def enabled():
        yield lib.is_grad_enabled()
        yield lib.is_grad_enabled()

    return called, bare, switched, inference, enabled


def test_grad_mode_decorators_on_generators(lib):
    """The mode holds while the generator's body runs; the caller's is back at each yield."""
    called, bare, switched, inference, enabled = _decorated_generators(lib)
    import inspect
    assert inspect.isgeneratorfunction(called) and inspect.isgeneratorfunction(bare)
    assert [(v, lib.is_grad_enabled()) for v in called(2)] == [(False, True)] * 2
    assert [(v, lib.is_grad_enabled()) for v in bare(2)] == [(False, True)] * 2
    assert list(switched()) == [False] and lib.is_grad_enabled()
    assert list(inference()) == [(False, True)] and not lib.is_inference_mode_enabled()
    with lib.no_grad():
        g = enabled()
        assert next(g) is True and not lib.is_grad_enabled()
        assert next(g) is True and not lib.is_grad_enabled()
    assert lib.is_grad_enabled()


def test_decorated_generator_send_throw_close_and_return(lib):
    @lib.no_grad()
    def echo():
        try:
            got = yield lib.is_grad_enabled()
            while True:
                got = yield (got, lib.is_grad_enabled())
        except ValueError:
            yield ("thrown", lib.is_grad_enabled())
        finally:
            closing.append(lib.is_grad_enabled())

    @lib.no_grad()
    def returns():
        yield 1
        return 9

    closing = []
    g = echo()
    assert next(g) is False and lib.is_grad_enabled()
    assert g.send(5) == (5, False) and lib.is_grad_enabled()
    assert g.throw(ValueError()) == ("thrown", False) and lib.is_grad_enabled()
    g.close()
    assert closing == [False] and lib.is_grad_enabled()
    r = returns()
    next(r)
    with pytest.raises(StopIteration) as stop:
        next(r)
    assert stop.value.value == 9
