"""Every GPU row of the op table, in float32 and float64: its forward on the device against the
CPU's (NumPy's) and its gradients from the CUDA engine against the CPU engine's, on one program
per row (the row, then a weighted sum so that each element's gradient differs). A row that says
it runs on the GPU without a case here, or without kernels, fails."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad import ops
from tapegrad.cuda import _generated
from tapegrad.engine import cuda_replay
from tapegrad.nn import functional as F
from tapegrad.ops.elementwise import leaky_relu_backward, threshold_backward

from ..ops.cases import cube_function

GPU_ROWS = sorted(op.name for op in ops.TABLE if op.gpu)


def normal(rng, shape):
    return rng.standard_normal(shape)


def positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def small(rng, shape):
    return rng.uniform(-1.0, 1.0, shape)


CASES = {
    "neg": (lambda x: -x, [(2, 3)], normal),
    "add": (lambda x, y: x + y, [(2, 3), (3,)], normal),
    "sub": (lambda x, y: x - y, [(2, 3), (2, 1)], normal),
    "mul": (lambda x, y: x * y, [(2, 3), (2, 3)], normal),
    "div": (lambda x, y: x / y, [(2, 3), (3,)], positive),
    "add_scalar": (lambda x: x + 1.5, [(2, 3)], normal),
    "sub_scalar": (lambda x: x - 1.5, [(2, 3)], normal),
    "rsub_scalar": (lambda x: 1.5 - x, [(2, 3)], normal),
    "mul_scalar": (lambda x: x * 1.5, [(2, 3)], normal),
    "scale": (lambda x, y: x.sub(y, alpha=2.5), [(3,), (3,)], normal),
    "div_scalar": (lambda x: x / 4.0, [(2, 3)], normal),
    "exp": (lambda x: x.exp(), [(2, 3)], normal),
    "log": (lambda x: x.log(), [(2, 3)], positive),
    "sin": (lambda x: x.sin(), [(2, 3)], normal),
    "cos": (lambda x: x.cos(), [(2, 3)], normal),
    "tanh": (lambda x: x.tanh(), [(2, 3)], normal),
    "sqrt": (lambda x: x.sqrt(), [(2, 3)], positive),
    "abs": (lambda x: x.abs(), [(2, 3)], normal),
    "relu": (lambda x: x.relu(), [(2, 3)], normal),
    "sign": (lambda x: x.sign() * x, [(2, 3)], normal),
    "pow_scalar": (lambda x: x ** 2 + x ** 3 + x ** 2.5 + x ** 1 + x ** 0, [(2, 3)], positive),
    "log1p": (lambda x: x.log1p(), [(2, 3)], positive),
    "expm1": (lambda x: x.expm1(), [(2, 3)], normal),
    "tan": (lambda x: x.tan(), [(2, 3)], small),
    "sum": (lambda x: x.sum(), [(2, 3)], normal),
    "sum_dim": (lambda x: x.sum(1), [(2, 3)], normal),
    "mean": (lambda x: x.mean(), [(2, 3)], normal),
    "mean_dim": (lambda x: x.mean(0, keepdim=True), [(2, 3)], normal),
    "expand": (lambda x: x.expand(2, 3), [(1, 3)], normal),
    "view": (lambda x: x.view(3, 2), [(2, 3)], normal),
    "unsqueeze": (lambda x: x.unsqueeze(1), [(2, 3)], normal),
    "squeeze": (lambda x: x.squeeze(0), [(1, 3)], normal),
    "unsafe_view": (lambda x, y: x @ y, [(2, 3, 4), (4, 2)], normal),
    "permute": (lambda x: x.permute(2, 0, 1), [(2, 3, 2)], normal),
    "transpose": (lambda x: x.transpose(0, 1), [(2, 3)], normal),
    "t": (lambda x: x.t(), [(2, 3)], normal),
    "mm": (lambda x, y: x @ y, [(2, 3), (3, 4)], normal),
    "to": (lambda x: (x.float() if x.dtype == tg.float64 else x.double()) * 2.0, [(2, 3)], normal),
    "clone": (lambda x: x.clone(), [(2, 3)], normal),
    "to_device": (lambda x: x.cpu().cuda() if x.is_cuda else x, [(2, 3)], normal),
}
CASES.update({
    "pow": (lambda x, y: x ** y, [(2, 3), (3,)], positive),
    "rpow_scalar": (lambda x: 2.0 ** x + 0.0 ** x.abs(), [(2, 3)], normal),  # (a zero base: torch's zero gradient)
    "reciprocal": (lambda x: x.reciprocal(), [(2, 3)], positive),
    "sigmoid": (lambda x: x.sigmoid(), [(2, 3)], normal),
    "atan2": (lambda x, y: tg.atan2(x, y), [(2, 3), (3,)], normal),
    "hypot": (lambda x, y: tg.hypot(x, y), [(2, 3), (2, 1)], normal),
    "rsqrt": (lambda x: x.rsqrt(), [(2, 3)], positive),
    "erf": (lambda x: x.erf(), [(2, 3)], normal),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), [(2, 3)], normal),
    "gelu": (lambda x: F.gelu(x) + F.gelu(x, approximate="tanh"), [(2, 3)], normal),
    "softplus": (lambda x: F.softplus(x, beta=2.0, threshold=1.0), [(2, 3)], normal),  # (both sides of it)
    "clamp": (lambda x: x.clamp(-0.5, 0.5) + x.clamp(min=0.1), [(2, 3)], normal),
    "maximum": (lambda x, y: tg.maximum(x, y) + tg.maximum(x, x), [(2, 3), (3,)], normal),  # (ties: halves)
    "minimum": (lambda x, y: tg.minimum(x, y) + tg.minimum(y, y), [(2, 3), (3,)], normal),
    "where": (lambda x, y: tg.where(x > 0, x, y), [(2, 3), (3,)], normal),
    "masked_fill": (lambda x: x.masked_fill(x < 0, 0.5), [(2, 3)], normal),
    "threshold_backward": (lambda g, r: threshold_backward(g, r), [(2, 3), (2, 3)], normal),
    "leaky_relu_backward": (lambda g, x: leaky_relu_backward(g, x, 0.1), [(2, 3), (2, 3)], normal),
    "copy": (lambda x, y: (x * 1.0).copy_(y), [(2, 3), (3,)], normal),
    "zero": (lambda x: (x * 1.0).zero_() + x, [(2, 3)], normal),
    "fill": (lambda x: (x * 1.0).fill_(2.5) * x, [(2, 3)], normal),
})


def _nll(x):
    """nll_loss per sample and weighted-mean, its targets (int64) and weights on x's device."""
    t = tg.tensor([2, 0, 1], device=x.device)
    w = tg.tensor([0.5, 1.0, 2.0], dtype=x.dtype, device=x.device)
    F = tg.nn.functional
    return F.nll_loss(x, t, reduction="none") * F.nll_loss(x, t, weight=w)


CASES.update({
    "softmax": (lambda x: x.softmax(1), [(2, 3, 2)], normal),
    "log_softmax": (lambda x: x.log_softmax(-1), [(2, 3)], normal),
    "nll_loss": (_nll, [(3, 3)], normal),
    "nll_loss_backward": (lambda x: tg.autograd.grad(_nll(x).sum(), x, create_graph=True)[0], [(3, 3)], normal),
})


def ties(rng, shape):
    """Small integers: extremes tie, and share their gradient."""
    return rng.integers(-2, 3, shape).astype(np.float64)


def some_zeros(rng, shape):
    """Normal values with one zero in the first row and two in the second."""
    v = rng.standard_normal(shape)
    v[0, 1] = v[1, 0] = v[1, 2] = 0.0
    return v


def _norms(x):
    inf = float("inf")
    return sum((x.norm(p, dim=1) for p in (2, 1, inf, -inf, 3, 0.5, 0)), x.norm())


CASES.update({
    "max": (lambda x: x.max(), [(2, 3)], ties),
    "min": (lambda x: x.min(), [(2, 3)], ties),
    "amax": (lambda x: x.amax((0, 2)), [(2, 3, 2)], ties),
    "amin": (lambda x: x.amin(1, keepdim=True), [(3, 4)], ties),
    "max_dim": (lambda x: x.max(1).values, [(2, 3, 2)], ties),
    "min_dim": (lambda x: x.min(0, keepdim=True).values, [(3, 2)], ties),
    "prod": (lambda x: x.prod(), [(2, 3)], positive),
    "prod_dim": (lambda x: x.prod(1), [(3, 3)], some_zeros),
    "norm": (_norms, [(2, 3)], normal),
    "var": (lambda x: x.var((0, 2)) * x.var(1, correction=0).sum(), [(2, 3, 2)], normal),
    "std_root": (lambda x: x.std(1, keepdim=True), [(2, 3)], normal),
    "cumsum": (lambda x: x.cumsum(1), [(2, 3, 2)], normal),
    "bmm": (lambda x, y: tg.bmm(x, y), [(2, 2, 3), (2, 3, 2)], normal),
})


def _put(key):
    """x with y written at ``key`` (a function of x's device), recorded on a copy of x."""
    def program(x, y):
        z = x.clone()
        z[key(x.device)] = y
        return z
    return program


def _twice(program):
    """program's gradient as a function of x (create_graph: the rows of gradients of indexing)."""
    return lambda x: tg.autograd.grad(program(x).sum(), x, create_graph=True)[0]


def _index(device):
    return tg.tensor([2, 0, 2], device=device)


CASES.update({
    "function": (lambda x: cube_function(tg).apply(x.tanh()) * x, [(2, 3)], normal),
    "index": (lambda x: x[_index(x.device), 1:] + x[[True, False, True]][[1, 0, 1], 1:], [(3, 4)], normal),
    "select": (lambda x: x[1] + x.select(1, 2)[:, None], [(3, 4)], normal),
    "slice": (lambda x: (x[1:] * x[:-1])[:, 1:3], [(3, 4)], normal),
    "alias": (lambda x: x[...], [(2, 3)], normal),
    "index_unsqueeze": (lambda x: x[..., None, :], [(2, 3)], normal),
    "index_select": (lambda x: x.index_select(1, _index(x.device)), [(3, 4)], normal),
    "gather": (lambda x: x.gather(1, tg.tensor([[0, 2], [1, 1], [3, 0]], device=x.device)), [(3, 4)], normal),
    "scatter_add": (lambda x, y: x.scatter_add(1, tg.tensor([[0, 2, 0], [1, 1, 3]], device=x.device), y),
                    [(2, 4), (2, 3)], normal),
    "cat": (lambda x, y: tg.cat([x, y, x, y], 1), [(2, 3), (2, 2)], normal),
    "stack": (lambda x, y: tg.stack([x, y, x, y], 1), [(2, 3), (2, 3)], normal),
    "repeat": (lambda x: x.repeat(2, 1, 2), [(2, 3)], normal),
    "flip": (lambda x: x.flip(0, 1), [(2, 3)], normal),
    "split": (lambda x: (lambda a, b: a * b)(*x.split([2, 1], 1)) + x.split(1)[1][:, 1:], [(2, 3)], normal),
    "unbind": (lambda x: (lambda a, b, c: a * b + c)(*x.unbind(0)) * x.unbind(1)[2], [(3, 3)], normal),
    "index_put": (_put(lambda d: (slice(None), 1)), [(2, 3), (2,)], normal),
    "index_put_advanced": (_put(lambda d: _index(d)[:2]), [(3, 2), (2, 2)], normal),
    "scatter_flat": (_twice(lambda x: x[[2, 0, 2]] ** 3), [(3, 2)], normal),
    "add_run": (_twice(lambda x: (x[:-1] - x[1:]) ** 3 * x[1:]), [(4, 2)], normal),
})


def test_every_gpu_row_has_a_case_and_its_kernels():
    assert sorted(CASES) == GPU_ROWS
    for op in ops.TABLE:
        if op.gpu:
            has = op.name in _generated.ADJOINT or op.kernel in cuda_replay._HAND or op is ops.FUNCTION
            assert has, f"row {op.name!r} runs on the GPU but has no CUDA adjoint"  # (a Function's is Python)
        if op.gpu and op.gpu_forward() is not None:
            assert getattr(_generated, "fwd_" + op.name, None) is not None, op.name
        if op.gpu and op.formula is not None and op.gpu_forward() is not None:
            assert op.name in _generated.ADJOINT, op.name


def run(name, device, dtype):
    program, shapes, sampler = CASES[name]
    rng = np.random.default_rng(1)
    inputs = [tg.tensor(sampler(rng, s), dtype=dtype, device=device, requires_grad=True) for s in shapes]
    out = program(*inputs)
    weights = tg.tensor(rng.uniform(0.5, 1.5, tuple(out.shape)), dtype=out.dtype, device=device)
    (out * weights).sum().backward()
    return out, [x.grad for x in inputs]


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", GPU_ROWS)
def test_row_on_the_gpu_matches_the_cpu(name, dtype):
    assert_gpu_matches_cpu(run(name, "cuda", dtype), run(name, "cpu", dtype), dtype)


def assert_gpu_matches_cpu(gpu, cpu, dtype):
    """(value, gradients) on the GPU against the CPU's: devices, dtypes, shapes, and values within
    the dtype's tolerance."""
    (out, grads), (ref, ref_grads) = gpu, cpu
    assert out.is_cuda and all(g.is_cuda for g in grads)
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == tg.float32 else dict(rtol=1e-13, atol=1e-13)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    np.testing.assert_allclose(out.cpu().detach().numpy(), ref.detach().numpy(), **tol)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g.cpu().numpy(), r.numpy(), **tol)


def second_order(name, device, dtype):
    """The gradient of each input's gradient along fixed directions (create_graph: the VJPs run as
    ops on the inputs' device)."""
    program, shapes, sampler = CASES[name]
    rng = np.random.default_rng(2)
    inputs = [tg.tensor(sampler(rng, s), dtype=dtype, device=device, requires_grad=True) for s in shapes]
    out = program(*inputs)
    weights = tg.tensor(rng.uniform(0.5, 1.5, tuple(out.shape)), dtype=out.dtype, device=device)
    grads = tg.autograd.grad((out * weights).sum(), inputs, create_graph=True, allow_unused=True)
    total = sum((g * tg.tensor(rng.uniform(0.5, 1.5, tuple(g.shape)), dtype=g.dtype, device=device)).sum()
                for g in grads if g is not None and g.requires_grad)
    if not isinstance(total, tg.Tensor):
        return [g.detach() for g in grads], []
    total.backward()
    return [g.detach() for g in grads], [x.grad for x in inputs]


NO_SECOND_ORDER = {}


@pytest.mark.parametrize("name", GPU_ROWS)
def test_second_order_on_the_gpu_matches_the_cpu(name):
    if name in NO_SECOND_ORDER:
        with pytest.raises(NotImplementedError, match=NO_SECOND_ORDER[name]):
            second_order(name, "cuda", tg.float64)
        return
    ours, theirs = second_order(name, "cuda", tg.float64), second_order(name, "cpu", tg.float64)
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.is_cuda
            np.testing.assert_allclose(a.cpu().numpy(), b.numpy(), rtol=1e-12, atol=1e-12)
