"""Anomaly mode (tapegrad.autograd.anomaly_mode, the engine's NaN checks and blame, the dump's column).

Tests taking the ``lib`` fixture are torch user code run on tapegrad and on torch: the errors, the
warnings and the forward lines they name are torch's. The forward lines checked are marked with a
comment, so a warning that names the wrong line (or the recording machinery's) fails.
"""
import sys
import threading
import warnings

import numpy as np
import pytest

import tapegrad as tg


@pytest.fixture(autouse=True)
def anomaly_mode_left_off():
    yield
    for m in (tg, sys.modules.get("torch")):
        if m is not None:
            on = m.is_anomaly_enabled()
            m.set_anomaly_enabled(False)
            assert not on, "a test left anomaly mode on"


def backward_error(fn):
    """Run fn (a backward), return (its RuntimeError or other exception, the UserWarnings' texts)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(Exception) as info:
            fn()
    return info.value, [str(w.message) for w in record if w.category is UserWarning]


def error_detected(texts, node, line):
    """Whether one warning is torch's report of ``node`` naming forward ``line`` (source text)."""
    head = f"Error detected in {node}. Traceback of forward call that caused the error:\n"
    return any(t.startswith(head) and f"\n    {line}\n" in t for t in texts)


# -- the switches -----------------------------------------------------------------------------------
def test_set_detect_anomaly_switches_at_once_and_restores_as_a_context_manager(lib):
    assert not lib.is_anomaly_enabled() and lib.is_anomaly_check_nan_enabled()
    lib.autograd.set_detect_anomaly(True)
    try:
        assert lib.is_anomaly_enabled()
        with lib.autograd.set_detect_anomaly(False):
            assert not lib.is_anomaly_enabled()
        assert lib.is_anomaly_enabled()
    finally:
        lib.autograd.set_detect_anomaly(False)
    with lib.autograd.set_detect_anomaly(True, check_nan=False):
        assert lib.is_anomaly_enabled() and not lib.is_anomaly_check_nan_enabled()
    assert not lib.is_anomaly_enabled() and lib.is_anomaly_check_nan_enabled()


def test_detect_anomaly_warns_on_entering_and_restores(lib):
    with pytest.warns(UserWarning, match="Anomaly Detection has been enabled. This mode will increase the runtime "
                                         "and should only be enabled for debugging."):
        with lib.autograd.detect_anomaly(check_nan=False):
            assert lib.is_anomaly_enabled() and not lib.is_anomaly_check_nan_enabled()
            with lib.autograd.detect_anomaly():
                assert lib.is_anomaly_check_nan_enabled()
            assert not lib.is_anomaly_check_nan_enabled()
    assert not lib.is_anomaly_enabled() and lib.is_anomaly_check_nan_enabled()


def test_detect_anomaly_as_a_decorator():
    # (torch's class is a context manager only; tapegrad's decorates as no_grad does)
    with pytest.warns(UserWarning, match="Anomaly Detection has been enabled"):
        @tg.autograd.detect_anomaly()
        def f(x):
            assert tg.is_anomaly_enabled()
            return tg.log(x).sum()
    x = tg.tensor([0.0, 1.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warning per call
        with np.errstate(divide="ignore"):
            y = f(x)
    assert not tg.is_anomaly_enabled()
    assert y._tape.traces  # recorded inside: its entries know their lines


def test_anomaly_mode_is_one_switch_for_every_thread(lib):
    seen = []
    with lib.autograd.set_detect_anomaly(True):
        t = threading.Thread(target=lambda: seen.append(lib.is_anomaly_enabled()))
        t.start()
        t.join()
    assert seen == [True]


# -- NaN checks -------------------------------------------------------------------------------------
def test_nan_gradient_names_the_entry_and_its_forward_line(lib):
    x = lib.tensor([0.0, 1.0], requires_grad=True)
    with lib.autograd.set_detect_anomaly(True), np.errstate(all="ignore"):
        y = lib.log(x)  # the forward line
        z = (y * 0).sum()
        err, texts = backward_error(z.backward)
    assert type(err) is RuntimeError
    assert str(err) == "Function 'LogBackward0' returned nan values in its 0th output."
    assert error_detected(texts, "LogBackward0", "y = lib.log(x)  # the forward line")


def test_nan_check_through_autograd_grad_and_create_graph(lib):
    x = lib.tensor([0.0, 1.0], dtype=lib.float64, requires_grad=True)
    with lib.autograd.set_detect_anomaly(True), np.errstate(all="ignore"):
        y = lib.log(x)  # logged
        err, texts = backward_error(lambda: lib.autograd.grad((y * 0).sum(), x))
        assert "returned nan values in its 0th output" in str(err)
        assert error_detected(texts, "LogBackward0", "y = lib.log(x)  # logged")
        y = lib.log(x)  # logged again
        err, texts = backward_error(lambda: lib.autograd.grad((y * 0).sum(), x, create_graph=True))
        assert str(err) == "Function 'LogBackward0' returned nan values in its 0th output."
        assert error_detected(texts, "LogBackward0", "y = lib.log(x)  # logged again")


def test_nan_index_is_the_input_whose_gradient_is_nan(lib):
    x = lib.tensor([1.0, 1.0], requires_grad=True)
    w = lib.tensor([float("inf"), 1.0], requires_grad=True)
    with lib.autograd.set_detect_anomaly(True), np.errstate(all="ignore"):
        y = x * w  # inf * 0 in x's gradient
        err, texts = backward_error(lambda: (y * 0).sum().backward())
    assert str(err) == "Function 'MulBackward0' returned nan values in its 0th output."
    assert error_detected(texts, "MulBackward0", "y = x * w  # inf * 0 in x's gradient")
    a = lib.tensor([float("inf"), 1.0], requires_grad=True)
    b = lib.tensor([1.0, 1.0], requires_grad=True)
    with lib.autograd.set_detect_anomaly(True), np.errstate(all="ignore"):
        q = a / b  # 0 * inf in b's gradient only
        err, texts = backward_error(lambda: (q * 0).sum().backward())
    assert str(err) == "Function 'DivBackward0' returned nan values in its 1th output."


def test_nan_seed_blames_the_first_entry_that_reads_it(lib):
    x = lib.tensor([1.0, 1.0], requires_grad=True)
    with lib.autograd.set_detect_anomaly(True):
        y = x * 2  # seeded with nan
        err, texts = backward_error(lambda: y.backward(lib.tensor([float("nan"), 1.0])))
    assert str(err) == "Function 'MulBackward0' returned nan values in its 0th output."


def test_nan_in_a_double_backward_names_the_node_that_recorded_it(lib):
    x = lib.tensor([0.0, 1.0], dtype=lib.float64, requires_grad=True)
    with lib.autograd.set_detect_anomaly(True), np.errstate(all="ignore"):
        y = x.sqrt()  # the first forward
        (g,) = lib.autograd.grad(y.sum(), x, create_graph=True)
        err, texts = backward_error(lambda: (g * 0).sum().backward())
    assert str(err) == "Function 'DivBackward0' returned nan values in its 1th output."
    assert texts[0].startswith("Error detected in DivBackward0. Traceback of forward call that caused the error:\n")
    assert "(g,) = lib.autograd.grad(y.sum(), x, create_graph=True)" in texts[0]
    assert texts[1].startswith("\n\nPrevious calculation was induced by SqrtBackward0. Traceback of forward call "
                               "that induced the previous calculation:\n")
    assert "\n    y = x.sqrt()  # the first forward\n" in texts[1]


def test_check_nan_off_lets_nan_through(lib):
    x = lib.tensor([0.0, 1.0], requires_grad=True)
    with lib.autograd.set_detect_anomaly(True, check_nan=False), np.errstate(all="ignore"):
        (lib.log(x) * 0).sum().backward()
    assert np.isnan(x.grad.tolist()[0]) and x.grad.tolist()[1] == 0


def test_mode_off_checks_nothing_and_warns_nothing(lib):
    x = lib.tensor([0.0, 1.0], requires_grad=True)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("error", UserWarning)
        y = lib.log(x)
        (y * 0).sum().backward()
    assert np.isnan(x.grad.tolist()[0])


def test_nan_check_on_a_tape_with_hooks_and_functions(lib):
    class Double(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

    x = lib.tensor([0.0, 4.0], requires_grad=True)
    with lib.autograd.set_detect_anomaly(True), np.errstate(all="ignore"):
        h = Double.apply(x)
        h.register_hook(lambda g: g * 1)
        y = h.sqrt()  # sqrt at 0, then times 0
        err, texts = backward_error(lambda: (y * 0).sum().backward())
    assert str(err) == "Function 'SqrtBackward0' returned nan values in its 0th output."
    assert error_detected(texts, "SqrtBackward0", "y = h.sqrt()  # sqrt at 0, then times 0")


def test_nan_from_a_custom_function_names_its_input(lib):
    class G(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            return x * y

        @staticmethod
        def backward(ctx, g):
            return g, g * float("nan")

    x = lib.ones(2, requires_grad=True)
    y = lib.ones(2, requires_grad=True)
    for create_graph in (False, True):
        with lib.autograd.set_detect_anomaly(True):
            out = G.apply(x, y)  # the call
            err, texts = backward_error(lambda: out.sum().backward(create_graph=create_graph))
        assert str(err) == "Function 'GBackward' returned nan values in its 1th output."
        assert error_detected(texts, "GBackward", "out = G.apply(x, y)  # the call")


# -- errors in backward: the node they arose in and its forward line ------------------------------
def test_freed_graph_error_names_the_entry(lib):
    with lib.autograd.set_detect_anomaly(True):
        a = lib.tensor([1.0, 2.0], requires_grad=True)
        b = a * a  # freed by the first backward
        b.sum().backward()
        err, texts = backward_error(lambda: b.sum().backward())
    assert "Trying to backward through the graph a second time" in str(err)
    assert error_detected(texts, "MulBackward0", "b = a * a  # freed by the first backward")


def test_version_error_names_the_entry_and_gives_the_anomaly_hint(lib):
    a = lib.tensor([1.0, 2.0], requires_grad=True)
    b = a.exp()
    b.add_(1)
    with pytest.raises(RuntimeError, match=r"Hint: enable anomaly detection to find the operation that failed to "
                                           r"compute its gradient, with torch.autograd.set_detect_anomaly\(True, "
                                           r"check_nan=False\)."):
        b.sum().backward()
    with lib.autograd.set_detect_anomaly(True):
        a = lib.tensor([1.0, 2.0], requires_grad=True)
        b = a.exp()  # saves its output
        b.add_(1)
        err, texts = backward_error(lambda: b.sum().backward())
    assert "is at version 1; expected version 0 instead. Hint: the backtrace further above shows the operation " \
           "that failed to compute its gradient. The variable in question was changed in there or anywhere later. " \
           "Good luck!" in str(err)
    assert error_detected(texts, "ExpBackward0", "b = a.exp()  # saves its output")


@pytest.mark.parametrize("create_graph", [False, True])
def test_hook_error_names_the_node_of_the_hooked_tensor(lib, create_graph):
    def hook(g):
        raise ValueError("from the hook")

    with lib.autograd.set_detect_anomaly(True):
        x = lib.ones(2, requires_grad=True)
        y = x * 2  # hooked
        y.register_hook(hook)
        err, texts = backward_error(lambda: y.exp().sum().backward(create_graph=create_graph))
    assert type(err) is ValueError and str(err) == "from the hook"
    assert error_detected(texts, "MulBackward0", "y = x * 2  # hooked")


def test_leaf_hook_error_names_accumulate_grad(lib):
    def hook(g):
        raise ValueError("from the leaf's hook")

    with lib.autograd.set_detect_anomaly(True):
        x = lib.ones(2, requires_grad=True)
        x.register_hook(hook)
        err, texts = backward_error(lambda: (x * 2).sum().backward())
    assert type(err) is ValueError
    assert texts and texts[0].startswith("Error detected in torch::autograd::AccumulateGrad.")


@pytest.mark.parametrize("create_graph", [False, True])
def test_custom_function_backward_error_names_the_function(lib, create_graph):
    class F(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            raise ValueError("in backward")

    with lib.autograd.set_detect_anomaly(True):
        x = lib.ones(2, requires_grad=True)
        y = F.apply(x)  # applied
        err, texts = backward_error(lambda: y.sum().backward(create_graph=create_graph))
    assert type(err) is ValueError
    assert error_detected(texts, "FBackward", "y = F.apply(x)  # applied")


def test_entry_recorded_before_the_mode_has_no_forward_information(lib):
    x = lib.tensor([0.0], requires_grad=True)
    with np.errstate(all="ignore"):
        y = lib.log(x) * 0  # recorded with the mode off
        with lib.autograd.set_detect_anomaly(True):
            z = y.sum()  # recorded with it on: the same tape
            err, texts = backward_error(z.backward)
    assert str(err) == "Function 'LogBackward0' returned nan values in its 0th output."
    assert texts[0].startswith("Error detected in LogBackward0. No forward pass information available. Enable detect "
                               "anomaly during forward pass for more information.")


def test_errors_outside_any_node_warn_nothing(lib):
    x = lib.ones(2, requires_grad=True)
    with lib.autograd.set_detect_anomaly(True):
        y = x * 2
        err, texts = backward_error(lambda: y.backward(lib.ones(3)))
    assert "Mismatch in shape" in str(err) and texts == []


# -- what recording keeps ---------------------------------------------------------------------------
def close_current_tape():
    """Let the next op start a tape of its own (a backward closes the one it ran on)."""
    (tg.ones(1, requires_grad=True) * 1).sum().backward()


def test_recording_with_the_mode_off_keeps_no_stacks():
    close_current_tape()
    x = tg.ones(2, requires_grad=True)
    y = x * 2
    assert y._tape.values.__class__ is list and y._tape.traces is None
    with tg.autograd.set_detect_anomaly(True):
        z = y * 3  # the open tape records stacks from here on
    assert z._tape is y._tape and set(z._tape.traces) == {z._slot}
    w = z * 4  # and no longer once the mode is off again: a plain list of values
    assert w._tape is y._tape and set(w._tape.traces) == {z._slot} and w._tape.values.__class__ is list
    np.testing.assert_array_equal(w.detach().numpy(), [24, 24])


def test_stacks_survive_the_backward_that_frees_the_values():
    close_current_tape()
    with tg.autograd.set_detect_anomaly(True):
        x = tg.ones(2, requires_grad=True)
        y = (x * x).prod()  # (every entry saved a value: the backward frees the whole graph)
        y.backward()
    assert y._tape.freed and y._tape.traces[y._slot][0]


def test_dump_shows_where_each_entry_was_recorded():
    close_current_tape()
    with tg.autograd.set_detect_anomaly(True):
        x = tg.ones(2, requires_grad=True)
        y = x.exp()
    lines = tg.dump(y).splitlines()
    assert lines[1].split()[-2:] == ["recorded", "at"]
    entry = next(ln for ln in lines if " exp " in ln)
    assert entry.rstrip().endswith(f"test_anomaly_mode.py:{_line_of('y = x.exp()', test_dump_shows_where_each_entry_was_recorded)}")
    close_current_tape()
    assert "recorded at" not in tg.dump(x * 2)


def _line_of(text, fn):
    import inspect
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, ln in enumerate(lines) if text in ln)


def test_anomaly_mode_changes_no_gradient(lib):
    x = lib.tensor([0.3, -1.2, 2.0], dtype=lib.float64, requires_grad=True)

    def f():
        return ((x * x).sin() * x.exp()).tanh().sum()

    f().backward()
    plain = np.array(x.grad.tolist())
    x.grad = None
    with lib.autograd.set_detect_anomaly(True):
        f().backward()
        (g,) = lib.autograd.grad(f(), x, create_graph=True)
    assert np.array(x.grad.tolist()).tolist() == plain.tolist()
    np.testing.assert_allclose(g.tolist(), plain, rtol=1e-12)
