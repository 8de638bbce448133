"""gradcheck and gradgradcheck: pass on correct gradients, explain a wrong one with both Jacobians,
and refuse bad input with torch's errors."""
import re
import warnings

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.autograd import GradcheckError, gradcheck, gradgradcheck

RNG = np.random.default_rng(11)


def f64(shape, lib=tg):
    return lib.tensor(RNG.standard_normal(shape), dtype=lib.float64, requires_grad=True)


GOOD = {  # name: (fn, input shapes); every input requires grad
    "elementwise": (lambda x: (x ** 3).sin() * x.exp(), [(2, 3)]),
    "reduction": (lambda x: (x * x).sum(1).tanh(), [(3, 2)]),
    "two_inputs_two_outputs": (lambda x, y: (x @ y, (x * 2).sum()), [(2, 3), (3, 2)]),
    "broadcast": (lambda x, y: (x * y).sigmoid(), [(2, 3), (3,)]),
    "indexing": (lambda x: x[1:, ::2].exp() * x[0, 0], [(3, 4)]),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_gradcheck_and_gradgradcheck_pass(name):
    fn, shapes = GOOD[name]
    inputs = tuple(f64(s) for s in shapes)
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


def test_single_tensor_input_and_non_differentiable_output():
    x = f64((3,))
    assert gradcheck(lambda a: (a.exp(), a.detach() * 2), x)
    assert gradcheck(lambda a: (a * 2, tg.tensor([1, 2])), (x,))


def _wrong_cube(lib, detach_in_backward=False, scale=3.0):
    class WrongCube(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            if detach_in_backward:
                x = x.detach()  # first derivative right, second wrong
            return g * scale * x * x

    return WrongCube


def test_wrong_gradient_is_explained_with_both_jacobians():
    x = tg.tensor([1.0, 2.0], dtype=tg.float64, requires_grad=True)
    bad = _wrong_cube(tg, scale=2.0)
    with pytest.raises(GradcheckError) as info:
        gradcheck(bad.apply, (x,))
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert msg.startswith("Jacobian mismatch for output 0 with respect to input 0,\nnumerical:tensor(")
    numerical = msg.split("numerical:")[1].split("analytical:")[0]
    analytical = msg.split("analytical:")[1]
    assert _numbers(numerical) == pytest.approx([3.0, 0.0, 0.0, 12.0], abs=1e-4)  # diag(3x^2)
    assert _numbers(analytical) == pytest.approx([2.0, 0.0, 0.0, 8.0])  # diag(2x^2)
    assert gradcheck(bad.apply, (x,), raise_exception=False) is False


def _numbers(text):
    return [float(v) for v in re.findall(r"-?\d+\.\d*(?:e[-+]?\d+)?", text.split("dtype")[0])]


def test_failure_message_matches_torch():
    torch = pytest.importorskip("torch")
    values = [1.0, 2.0]
    msgs = []
    for lib in (tg, torch):
        x = lib.tensor(values, dtype=lib.float64, requires_grad=True)
        with pytest.raises(RuntimeError) as info:
            lib.autograd.gradcheck(_wrong_cube(lib, scale=2.0).apply, (x,), eps=1e-6)
        msgs.append(str(info.value))
    ours, theirs = (m.split("numerical:")[0] for m in msgs)
    assert ours == theirs
    assert _numbers(msgs[0].split("analytical:")[1]) == _numbers(msgs[1].split("analytical:")[1])
    np.testing.assert_allclose(_numbers(msgs[0].split("numerical:")[1].split("analytical")[0]),
                               _numbers(msgs[1].split("numerical:")[1].split("analytical")[0]), atol=1e-4)


def test_gradgradcheck_catches_a_wrong_second_derivative():
    x = tg.tensor([1.0, -2.0], dtype=tg.float64, requires_grad=True)
    bad = _wrong_cube(tg, detach_in_backward=True)
    assert gradcheck(bad.apply, (x,))
    with pytest.raises(GradcheckError, match="Jacobian mismatch for output 0 with respect to input 0"):
        gradgradcheck(bad.apply, (x,))
    assert gradgradcheck(bad.apply, (x,), raise_exception=False) is False
    good = _wrong_cube(tg)
    assert gradgradcheck(good.apply, (x,))


def test_tolerances_and_eps():
    x = tg.tensor([1.0, 2.0], dtype=tg.float64, requires_grad=True)
    slightly_off = _wrong_cube(tg, scale=3.0 * (1 + 1e-4))
    assert gradcheck(slightly_off.apply, (x,))  # within rtol=1e-3
    assert not gradcheck(slightly_off.apply, (x,), rtol=1e-6, atol=1e-8, raise_exception=False)
    assert gradcheck(slightly_off.apply, (x,), eps=1e-3, atol=1e-2)
    # a coarse eps makes the numerical Jacobian of x**3 wrong by eps**2
    assert not gradcheck(lambda a: a ** 3, (x,), eps=1e-1, atol=1e-5, rtol=1e-6, raise_exception=False)


def test_gradgradcheck_with_given_grad_outputs():
    x = f64((3,))
    go = tg.tensor(RNG.standard_normal(3), dtype=tg.float64, requires_grad=True)
    assert gradgradcheck(lambda a: a.sin() * a, (x,), (go,))


# functions whose output views (or is) their input: the numerical Jacobian must copy each output
# before the next perturbation changes it through the shared storage, as torch's clones it
VIEWS = {
    "itself": (lambda x: x, (3, 2)),
    "index": (lambda x: x[0], (3, 2)),
    "index_1d": (lambda x: x[1], (3,)),
    "column": (lambda x: x[:, 1], (3, 2)),
    "slice": (lambda x: x[1:], (3, 2)),
    "step": (lambda x: x[::2], (3, 2)),
    "narrow": (lambda x: x.narrow(0, 1, 2), (3, 2)),
    "t": (lambda x: x.t(), (3, 2)),
    "T": (lambda x: x.T, (3, 2)),
    "transpose": (lambda x: x.transpose(0, 1), (2, 3)),
    "permute": (lambda x: x.permute(2, 0, 1), (2, 3, 2)),
    "view": (lambda x: x.view(6), (3, 2)),
    "reshape": (lambda x: x.reshape(2, 3), (3, 2)),
    "flatten": (lambda x: x.flatten(), (3, 2)),
    "unsqueeze": (lambda x: x.unsqueeze(0), (3, 2)),
    "squeeze": (lambda x: x.squeeze(), (3, 1)),
    "none_and_ellipsis": (lambda x: x[None][...], (3, 2)),
    "expand": (lambda x: x.expand(2, 3, 2), (3, 2)),
    "contiguous": (lambda x: x.contiguous(), (3, 2)),
    "unbind": (lambda x: x.unbind(0), (3, 2)),
    "split": (lambda x: x.split(1), (3, 2)),
    "chunk": (lambda x: x.chunk(2, 1), (3, 2)),
    "with_another_output": (lambda x: (x, x * 2), (3, 2)),
}


@pytest.mark.parametrize("lib", ["tapegrad", "torch"])
@pytest.mark.parametrize("name", sorted(VIEWS))
def test_gradcheck_on_views_of_the_input(name, lib):
    lib = pytest.importorskip(lib)
    fn, shape = VIEWS[name]
    x = lib.arange(1.0, 1.0 + np.prod(shape), dtype=lib.float64).reshape(shape).requires_grad_()
    assert lib.autograd.gradcheck(fn, (x,))
    assert lib.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("lib", ["tapegrad", "torch"])
def test_gradcheck_on_a_detached_view_finds_a_nonzero_numerical_gradient(lib):
    lib = pytest.importorskip(lib)
    x = lib.tensor([1.0, 2.0], dtype=lib.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="Numerical gradient for function expected to be zero"):
        lib.autograd.gradcheck(lambda a: a.detach(), (x,))


# -- bad input -------------------------------------------------------------------------------
def test_float32_input_warns():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.warns(UserWarning, match="Input #0 requires gradient and is not a double precision floating point"):
        gradcheck(lambda a: a * 2, (x,), atol=1e-2, rtol=1e-2, eps=1e-2)


BAD = {
    "no_input_requires_grad": (lambda lib: lib.autograd.gradcheck(lambda a: a * 2, (lib.tensor([1, 2]),)),
                               ValueError, "gradcheck expects at least one input tensor to require gradient"),
    "integer_and_plain_float": (lambda lib: lib.autograd.gradcheck(lambda a, b: a * b,
                                                                   (lib.tensor([1, 2]), lib.tensor([1.0, 2.0]))),
                                ValueError, "none of them have requires_grad=True"),
    "stride_zero": (lambda lib: lib.autograd.gradcheck(
        lambda a: a * 2, (lib.tensor([1.0], dtype=lib.float64, requires_grad=True).expand(3),)),
        RuntimeError, "has a dimension with stride 0"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input(name):
    call, exc, msg = BAD[name]
    with pytest.raises(exc, match=msg):
        call(tg)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_like_torch(name):
    torch = pytest.importorskip("torch")
    call, exc, msg = BAD[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=msg):
            call(torch)
