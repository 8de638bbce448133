"""Devices as torch has them: tg.device, device= on the factories, .cuda(), .cpu(), .to(), what a
GPU tensor says and refuses, the errors for mixed devices, for ops without CUDA kernels and for a
missing extra or driver, and a training loop on the GPU equal to the same loop on the CPU."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import tapegrad as tg

from ..ops.cases import cube_function

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_device_objects():
    d = tg.device("cuda:0")
    assert (d.type, d.index, str(d)) == ("cuda", 0, "cuda:0")
    assert d == "cuda:0" and d == tg.device("cuda", 0) and d != "cpu"
    assert repr(tg.device("cuda")) == "device(type='cuda')"
    assert tg.cuda.is_available() and tg.cuda.device_count() == 1
    tg.cuda.synchronize()


def test_gpu_tensor_attributes_and_copies():
    x = tg.tensor([[1.0, 2.0], [3.0, 4.0]], device="cuda")
    assert x.is_cuda and x.device == "cuda:0" and str(x.device) == "cuda:0"
    assert repr(x) == "tensor([[1., 2.],\n        [3., 4.]], device='cuda:0')"
    assert repr(tg.ones(2, dtype=tg.float64, device="cuda", requires_grad=True)) == \
        "tensor([1., 1.], device='cuda:0', dtype=tapegrad.float64, requires_grad=True)"
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]] and x.sum().item() == 10.0 and float(x.mean()) == 2.5
    with pytest.raises(TypeError, match=r"^can't convert cuda:0 device type tensor to numpy\. Use Tensor\.cpu\(\) to "
                                        r"copy the tensor to host memory first\.$"):
        x.numpy()
    h = x.cpu()
    assert not h.is_cuda and h.device == "cpu" and h.numpy().tolist() == x.tolist()
    assert x.cuda() is x and h.cpu() is h and x.to("cuda") is x
    assert h.to(x).is_cuda and x.to(h).device == "cpu" and h.to("cuda:0").is_cuda
    assert x.to(tg.float64).is_cuda and x.to("cpu", tg.float64).dtype == tg.float64
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        h.to("cuda:1")


@pytest.mark.parametrize("make", [
    lambda **k: tg.zeros(2, 3, **k), lambda **k: tg.ones(2, 3, **k), lambda **k: tg.full((2, 3), 7.0, **k),
    lambda **k: tg.tensor([1.0, 2.0], **k), lambda **k: tg.arange(0, 4, **k), lambda **k: tg.linspace(0, 1, 5, **k),
    lambda **k: tg.eye(3, **k), lambda **k: (tg.manual_seed(0), tg.randn(2, 3, **k))[1],
    lambda **k: (tg.manual_seed(0), tg.rand(2, 3, **k))[1], lambda **k: tg.as_tensor([3.0], **k),
    lambda **k: tg.zeros_like(tg.ones(2, **k)), lambda **k: tg.ones_like(tg.ones(2, **k)),
    lambda **k: tg.full_like(tg.ones(2, **k), 3.0), lambda **k: (tg.manual_seed(1), tg.randn_like(tg.ones(2, **k)))[1],
])
def test_factories_make_gpu_tensors(make):
    g, c = make(device="cuda"), make()
    assert g.is_cuda and not c.is_cuda and g.dtype == c.dtype
    np.testing.assert_array_equal(g.cpu().numpy(), c.numpy())


def test_mixing_devices_names_both():
    x, y = tg.ones(3, device="cuda"), tg.ones(3)
    msg = r"^Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!$"
    F = tg.nn.functional
    for f in (lambda: x + y, lambda: y * x, lambda: x @ tg.ones(3, 1),
              lambda: F.cross_entropy(x.view(1, 3), tg.tensor([1])),
              lambda: F.nll_loss(y.view(1, 3), tg.tensor([1], device="cuda")),
              lambda: F.nll_loss(x.view(1, 3), tg.tensor([1], device="cuda"), weight=y)):
        with pytest.raises(RuntimeError, match=msg):
            f()
    assert (x + tg.tensor(2.0)).is_cuda  # a 0-d CPU tensor is a scalar, as in torch


def test_an_op_without_a_cuda_kernel_is_named():
    x = tg.ones(3, device="cuda", requires_grad=True)
    with pytest.raises(NotImplementedError, match="'argmax' has no CUDA kernel"):
        x.argmax()  # (a NumPy function without a kernel)


def test_float_tests_give_bools_on_the_gpu():
    values = [[1.5, float("nan"), -float("inf")], [float("inf"), 0.0, -2.0]]
    x, h = tg.tensor(values, device="cuda", requires_grad=True), tg.tensor(values)
    n, nh = tg.tensor([0, 3], device="cuda"), tg.tensor([0, 3])
    for f in (tg.isnan, tg.isinf, tg.isfinite, tg.logical_not):
        for a, b in ((x, h), (x.float(), h.float()), (n, nh), (x > 0, h > 0)):
            out = f(a)
            assert out.is_cuda and out.dtype == tg.bool and not out.requires_grad
            assert out.tolist() == f(b).tolist()


def test_indexing_with_gpu_and_cpu_keys_and_assignment():
    h = tg.arange(0, 12, dtype=tg.float64).reshape(3, 4)
    x = h.cuda()
    idx, mask = tg.tensor([2, 0], device="cuda"), tg.tensor([True, False, True], device="cuda")
    for key in ((1, 2), (slice(None), [3, 1]), (Ellipsis, None, slice(1, 3)), idx, (mask, 1), ([[0], [2]], idx)):
        hkey = tuple(k.cpu() if isinstance(k, tg.Tensor) else k for k in key) if isinstance(key, tuple) else key.cpu()
        assert x[key].is_cuda and x[key].tolist() == h[hkey].tolist()
    assert idx[1:].tolist() == [0] and tg.cat([idx, idx]).is_cuda  # (integer tensors index and join too)
    x[idx, 1:] = tg.tensor([-1.0, -2.0, -3.0], device="cuda")
    x[mask, 0] = 7.0
    assert x.tolist() == [[7.0, -1.0, -2.0, -3.0], [4.0, 5.0, 6.0, 7.0], [7.0, -1.0, -2.0, -3.0]]
    with pytest.raises(NotImplementedError, match="indexing or expanding a GPU tensor copies its elements"):
        x[0][1] = 3.0
    x.view(12)[1] = 3.0  # (a reshape is a view on the GPU too)
    assert x[0, 1].item() == 3.0


@pytest.mark.parametrize("write", [
    lambda x: x[0].mul_(2.0), lambda x: x.t().zero_(), lambda x: x[:, 1:].fill_(1.0),
    lambda x: x[0].expand(2, 3).masked_fill_(tg.tensor([True, False, True], device="cuda"), 5.0),
], ids=["index", "transpose", "slice", "masked_fill_expand"])
def test_an_in_place_write_into_a_copied_gpu_view_is_refused_not_lost(write):
    """Indexing, transposing and expanding copy on the GPU: a write into the copy would leave the
    tensor it came from unchanged, where torch's changes it."""
    x = tg.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], device="cuda")
    with pytest.raises(NotImplementedError, match="indexing or expanding a GPU tensor copies its elements"):
        write(x)
    assert x.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    x.view(6).mul_(2.0)  # (a reshape shares the memory: its writes reach x)
    assert x.tolist() == [[2.0, 4.0, 6.0], [8.0, 10.0, 12.0]]


def test_large_sines_take_the_gpu_kernel_not_the_cpu_one():
    x = tg.linspace(-3, 3, 4100, dtype=tg.float64)  # (from 4096 elements the CPU runs its own vectorised sine)
    np.testing.assert_allclose(x.cuda().sin().cpu().numpy(), x.sin().numpy(), rtol=1e-15)
    np.testing.assert_allclose(x.cuda().cos().cpu().numpy(), x.cos().numpy(), rtol=1e-15, atol=1e-16)


def test_a_broadcast_bias_gradient_is_one_launch_summing_g(monkeypatch):
    """The gradient of add's and sub's broadcast operand is g (or -g) summed over the broadcast, one
    scatter launch: no zeroed buffer, no adjoint kernel of its own."""
    from tapegrad.cuda import array
    x = tg.tensor(np.arange(12.0).reshape(4, 3), device="cuda", requires_grad=True)
    b = tg.tensor([1.0, -2.0, 0.5], device="cuda", requires_grad=True)
    c = tg.tensor([0.25, 0.5, 1.0], device="cuda", requires_grad=True)
    y = ((x + b) * (x - c)).sum()
    launched = []
    real = array.run_kernel
    monkeypatch.setattr(array, "run_kernel", lambda name, n, *args: launched.append(name) or real(name, n, *args))
    generated = array.kernels()[1].ADJOINT
    monkeypatch.setitem(generated, "add", [generated["add"][0], None])  # (add's own b kernel: never launched)
    monkeypatch.setitem(generated, "sub", [generated["sub"][0], None])
    y.backward()
    # two fills (the arena, the seed) and one scatter a bias: a zeroed buffer per bias would be a fill more
    assert launched.count("fill") == 2 and launched.count("scatter_add") == 2, launched
    xh, bh, ch = (t.detach().cpu().requires_grad_() for t in (x, b, c))
    ((xh + bh) * (xh - ch)).sum().backward()
    for t, h in ((x, xh), (b, bh), (c, ch)):
        np.testing.assert_allclose(t.grad.cpu().numpy(), h.grad.numpy(), rtol=1e-12)


def test_a_host_leaf_copied_to_the_gpu_gets_its_gradient_on_the_host():
    x = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    w = tg.tensor([0.5, -1.0, 2.0], device="cuda", requires_grad=True)
    y = (x.cuda() * w).tanh().sum()
    y.backward()
    assert not x.grad.is_cuda and w.grad.is_cuda
    xr, wr = x.detach().clone().requires_grad_(), w.detach().cpu().requires_grad_()
    (xr * wr).tanh().sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xr.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(w.grad.cpu().numpy(), wr.grad.numpy(), rtol=1e-6)
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        y.backward()


def test_masks_and_in_place_writes_on_the_gpu():
    values = [[-1.5, 0.0, 0.25], [2.0, -0.5, 1.0]]
    x, h = tg.tensor(values, device="cuda"), tg.tensor(values)
    for f in (lambda t: (t > 0) & (t < 1) | ~(t != 0), lambda t: (t >= 0.25) == (t <= -0.5),
              lambda t: tg.where(t > 0, t, 0.0), lambda t: t.clone().masked_fill_(t < 0, 9.0),
              lambda t: t.clone().clamp_(max=0.5), lambda t: t.clone().copy_(tg.ones(3, device=t.device)),
              lambda t: t.clone().fill_(2.0), lambda t: t.clone().zero_()):
        out = f(x)
        assert out.is_cuda and out.dtype == f(h).dtype
        np.testing.assert_array_equal(out.cpu().numpy(), f(h).numpy())


@pytest.mark.parametrize("x_device, src_device", [("cuda", "cpu"), ("cpu", "cuda")])
def test_copy_across_devices_sends_each_gradient_to_its_tensors_device(x_device, src_device):
    def program(xd, sd):
        w = tg.tensor([1.0, 2.0, 3.0], device=xd, requires_grad=True)
        s = tg.tensor([0.5, -1.0, 2.0], device=sd, requires_grad=True)
        x = (w * 2).view(1, 3).expand(2, 3).clone()
        x.copy_(s * 3)
        (x * x * tg.tensor([[1.0], [2.0]], device=xd)).sum().backward()
        return x.detach(), w.grad, s.grad
    (x, gw, gs), want = program(x_device, src_device), program("cpu", "cpu")
    assert x.device == x_device and gw.device == x_device and gs.device == src_device
    for a, b in zip((x, gw, gs), want):
        np.testing.assert_array_equal(a.cpu().numpy(), b.numpy())
    assert tg.zeros(2, device=x_device).copy_(tg.ones(2, device=src_device)).tolist() == [1.0, 1.0]


def test_a_create_graph_backward_leaves_a_differentiable_grad_on_the_gpu():
    x = tg.tensor([0.5, -1.0, 2.0], dtype=tg.float64, device="cuda", requires_grad=True)
    (x.sigmoid() * x).sum().backward(create_graph=True)
    assert x.grad.is_cuda and type(x.grad.grad_fn).__name__ == "CopyBackwards"
    x.grad.sum().backward()
    h = x.detach().cpu().requires_grad_()
    (h.sigmoid() * h).sum().backward(create_graph=True)
    h.grad.sum().backward()
    np.testing.assert_allclose(x.grad.detach().cpu().numpy(), h.grad.detach().numpy(), rtol=1e-13)


def _train(device, dtype, make_optimizer, activation=tg.tanh):
    rng = np.random.default_rng(0)
    data = tg.tensor(rng.standard_normal((8, 3)), dtype=dtype, device=device)
    target = tg.tensor(rng.standard_normal((8, 1)), dtype=dtype, device=device)
    w1 = tg.tensor(rng.standard_normal((3, 4)) * 0.5, dtype=dtype, device=device, requires_grad=True)
    b1 = tg.zeros(4, dtype=dtype, device=device, requires_grad=True)
    w2 = tg.tensor(rng.standard_normal((4, 1)) * 0.5, dtype=dtype, device=device, requires_grad=True)
    opt = make_optimizer([w1, b1, w2])
    losses = []
    for _ in range(4):
        opt.zero_grad()
        err = activation(data @ w1 + b1) @ w2 - target
        loss = (err * err).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().cpu().numpy() for p in (w1, b1, w2)]


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("optimizer", [lambda ps: tg.optim.SGD(ps, lr=0.1, momentum=0.9),
                                       lambda ps: tg.optim.Adam(ps, lr=0.05)], ids=["sgd", "adam"])
def test_training_on_the_gpu_equals_the_cpu(optimizer, dtype):
    gpu, cpu = _train("cuda", dtype, optimizer), _train("cpu", dtype, optimizer)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == tg.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gpu[0], cpu[0], **tol)
    for g, c in zip(gpu[1], cpu[1]):
        np.testing.assert_allclose(g, c, **tol)


@pytest.mark.parametrize("activation", [tg.nn.functional.gelu, tg.nn.functional.softplus, tg.sigmoid,
                                        lambda x: tg.nn.functional.leaky_relu(x, 0.1), tg.relu],
                         ids=["gelu", "softplus", "sigmoid", "leaky_relu", "relu"])
def test_activations_train_on_the_gpu(activation):
    sgd = lambda ps: tg.optim.SGD(ps, lr=0.1)  # noqa: E731
    gpu, cpu = _train("cuda", tg.float64, sgd, activation), _train("cpu", tg.float64, sgd, activation)
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-12, atol=1e-13)
    for g, c in zip(gpu[1], cpu[1]):
        np.testing.assert_allclose(g, c, rtol=1e-12, atol=1e-13)


def _train_classifier(device, dtype):
    """A two-layer classifier under nn.CrossEntropyLoss (log_softmax and nll_loss rows, int64 targets on
    the device), with Adam."""
    rng = np.random.default_rng(1)
    data = tg.tensor(rng.standard_normal((8, 3)), dtype=dtype, device=device)
    target = tg.tensor(rng.integers(0, 3, 8), device=device)
    params = [tg.tensor(rng.standard_normal(s) * 0.5, dtype=dtype, device=device, requires_grad=True)
              for s in [(3, 5), (5,), (5, 3), (3,)]]
    opt, criterion, losses = tg.optim.Adam(params, lr=0.05), tg.nn.CrossEntropyLoss(), []
    for _ in range(4):
        opt.zero_grad()
        w1, b1, w2, b2 = params
        loss = criterion((data @ w1 + b1).tanh() @ w2 + b2, target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().cpu().numpy() for p in params]


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64], ids=["float32", "float64"])
def test_a_classifier_trained_on_the_gpu_equals_the_cpu(dtype):
    gpu, cpu = _train_classifier("cuda", dtype), _train_classifier("cpu", dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == tg.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gpu[0], cpu[0], **tol)
    assert gpu[0][-1] < gpu[0][0]
    for g, c in zip(gpu[1], cpu[1]):
        np.testing.assert_allclose(g, c, **tol)


@pytest.mark.filterwarnings("ignore:var\\(\\)")
def test_reductions_of_nothing_match_the_cpu():
    """Rows of no elements: the kernels that read a row's first element are not launched."""
    out = {}
    for device in ("cuda", "cpu"):
        x = tg.zeros(2, 0, device=device, requires_grad=True)
        ys = [x.softmax(1), x.log_softmax(1), x.cumsum(1), x.prod(1), x.norm(dim=1), x.var(1), x.amax(0)]
        sum(y.sum() for y in ys).backward()
        out[device] = [y.detach().cpu().numpy() for y in ys] + [x.grad.cpu().numpy()]
    for g, c in zip(out["cuda"], out["cpu"]):
        np.testing.assert_array_equal(g, c)


def _run(code, **env):
    """``code`` in a fresh interpreter without the simulator (unless env sets it)."""
    full = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    full.update(env, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


def test_import_leaves_numba_cuda_out():
    r = _run("import sys, tapegrad as tg\n(tg.ones(2, requires_grad=True) * 2).sum().backward()\n"
             "print('numba.cuda' in sys.modules, tg.ones(1).device)")
    assert r.stdout.split() == ["False", "cpu"], r.stderr


def test_asking_for_a_gpu_says_what_is_missing():
    r = _run("import sys\nsys.modules['numba_cuda'] = None\nimport tapegrad as tg\nprint(tg.cuda.is_available())\n"
             "tg.ones(1, device='cuda')")
    assert r.stdout.split() == ["False"]
    assert "RuntimeError: GPU tensors need the cuda extra" in r.stderr and "pip install tapegrad[cuda]" in r.stderr
    assert "NUMBA_ENABLE_CUDASIM=1" in r.stderr
    r = _run("import tapegrad as tg\nx = tg.ones(1, device='cuda')\nprint(x.device)")
    if r.returncode == 0:
        pytest.skip("this machine has a GPU: no missing driver to report")
    assert "RuntimeError: GPU tensors need an NVIDIA driver" in r.stderr or \
        "RuntimeError: GPU tensors need an NVIDIA GPU" in r.stderr, r.stderr
    assert "NUMBA_ENABLE_CUDASIM=1" in r.stderr


def _hooks_and_function(device):
    x = tg.tensor([0.5, -1.0, 2.0], dtype=tg.float64, device=device, requires_grad=True)
    y = x * 2.0
    y.register_hook(lambda g: g * 3.0)
    seen = []
    z = cube_function(tg).apply(y.tanh())
    z.register_hook(lambda g: seen.append(("z", g.is_cuda, g.tolist())))
    a, b = z.unbind(0)[:2]  # (a multi-output node: its outputs' hooks run together)
    a.register_hook(lambda g: seen.append(("a", g.is_cuda, [g.item()])))
    (z * tg.tensor([1.0, 2.0, 3.0], dtype=tg.float64, device=device) + a * b).sum().backward()
    return x.grad, seen


def test_hooks_on_non_leaves_and_custom_functions_replay_in_segments_on_the_gpu():
    gpu, cpu = _hooks_and_function("cuda"), _hooks_and_function("cpu")
    assert gpu[0].is_cuda
    np.testing.assert_allclose(gpu[0].cpu().numpy(), cpu[0].numpy(), rtol=1e-13)
    assert [s[:2] for s in gpu[1]] == [("a", True), ("z", True)] and [s[0] for s in cpu[1]] == ["a", "z"]
    for g, c in zip(gpu[1], cpu[1]):
        np.testing.assert_allclose(g[2], c[2], rtol=1e-13)


def test_anomaly_mode_names_the_entry_that_made_a_nan_on_the_gpu():
    x = tg.tensor([0.0, 1.0], device="cuda", requires_grad=True)
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):  # (the simulator's 0 / 0)
        warnings.simplefilter("always")
        with tg.autograd.detect_anomaly():
            with pytest.raises(RuntimeError, match=r"^Function 'SqrtBackward0' returned nan values in its 0th output"):
                (x.sqrt() * 0.0).sum().backward()
    assert any(str(w.message).startswith("Error detected in SqrtBackward0.") for w in caught)


def _views_and_picks(x):
    z = x.clone()
    z[1, 1:3] = x[0, :2] * 3
    a, b = z.split([1, 3], 1)
    return ((x[1:, ::2] * 2).sum() + x[None, ..., 1].sum() + x.select(1, 2).sum() + (x.unbind(1)[3] * a[:, 0]).sum()
            + (b * b).sum() + (x.flip(1).repeat(2, 1) ** 2).sum())


def test_a_backward_through_views_and_picks_copies_nothing_to_the_device(monkeypatch):
    """The index maps of shape-only keys are the device maps the forward's picks read (cached by
    shape and key), kept on the tape: the backward copies none of them from the host again."""
    from tapegrad.cuda import runtime
    cuda = runtime()
    h = tg.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 1.0, 2.0, 3.0]], requires_grad=True)
    x = h.detach().cuda().requires_grad_()
    y = _views_and_picks(x)
    copies = []
    to_device = cuda.to_device
    monkeypatch.setattr(cuda, "to_device", lambda *args, **kw: (copies.append(1), to_device(*args, **kw))[1])
    y.backward()
    monkeypatch.undo()
    assert copies == []
    _views_and_picks(h).backward()
    np.testing.assert_array_equal(x.grad.cpu().numpy(), h.grad.numpy())
