"""Modules on the GPU as torch moves them (module.cuda(), .to(device), .cpu(), state_dict across
devices), and tg.compile on GPU tensors: a compiled program replays on the CPU, so on the GPU
it runs eagerly and says so."""
import numpy as np
import pytest

import tapegrad as tg


def _model(dtype=tg.float64):
    tg.manual_seed(0)
    return tg.nn.Sequential(tg.nn.Linear(3, 5), tg.nn.Tanh(), tg.nn.Linear(5, 1)).to(dtype)


def _train(model, x, y, steps=4, compiled=False):
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)  # (made before any move)

    def step():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    run = tg.compile(step) if compiled else step
    return [run().item() for _ in range(steps)], run


def test_module_cuda_moves_each_parameter_in_place():
    model = _model()
    params = list(model.parameters())
    model(tg.ones(2, 3, dtype=tg.float64)).sum().backward()
    assert model.cuda() is model
    assert [p is q for p, q in zip(params, model.parameters())] == [True] * 4
    assert all(p.is_cuda and p.requires_grad and p.grad.is_cuda for p in model.parameters())
    model.cpu()
    assert all(p.device == "cpu" and p.grad.device == "cpu" for p in model.parameters())
    model.to("cuda", tg.float32)
    assert all(p.is_cuda and p.dtype == tg.float32 for p in model.parameters())
    model.to(tg.ones(1, dtype=tg.float64))  # (a tensor's device and dtype: the CPU, float64)
    assert all(p.device == "cpu" and p.dtype == tg.float64 for p in model.parameters())
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        model.to("cuda:1")


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_model_moved_to_the_gpu_trains_as_on_the_cpu(compiled):
    rng = np.random.default_rng(1)
    xs, ys = rng.standard_normal((6, 3)), rng.standard_normal((6, 1))
    cpu = _model()
    want, _ = _train(cpu, tg.tensor(xs), tg.tensor(ys))
    gpu = _model().cuda()
    got, run = _train(gpu, tg.tensor(xs, device="cuda"), tg.tensor(ys, device="cuda"), compiled=compiled)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for p, q in zip(gpu.parameters(), cpu.parameters()):
        np.testing.assert_allclose(p.detach().cpu().numpy(), q.detach().numpy(), rtol=1e-12)
    if compiled:
        st = tg.compiler.stats(run)
        assert st["replay_count"] == 0 and "GPU tensors" in st["unreplayable"][0], st


def test_a_compiled_function_of_gpu_arguments_runs_eagerly():
    f = lambda x, w: (x @ w).tanh().sum()  # noqa: E731
    cf = tg.compile(f)
    for _ in range(3):
        x, w = tg.randn(4, 3, device="cuda"), tg.randn(3, 2, device="cuda", requires_grad=True)
        y = cf(x, w)
        y.backward()
        h = w.detach().cpu().requires_grad_()
        f(x.cpu(), h).backward()
        assert y.is_cuda and w.grad.is_cuda
        np.testing.assert_allclose(w.grad.cpu().numpy(), h.grad.numpy(), rtol=1e-5)
    st = tg.compiler.stats(cf)
    assert st["eager_count"] == 2 and "GPU tensors" in st["unreplayable"][0], st


def test_a_program_recorded_on_one_device_never_replays_on_the_other():
    """The key of a tensor argument holds its device: a CPU call's program, replayed (and checked
    first, as the last replayed key), is not a GPU call's of the same shape and dtype."""
    f = lambda x: (x * 2.0).sin()  # noqa: E731
    cf = tg.compile(f)
    xs = np.linspace(-1.0, 1.0, 4, dtype=np.float32)
    for device in ("cpu", "cpu", "cuda", "cuda", "cpu", "cuda"):
        x = tg.tensor(xs, device=device)
        y = cf(x)
        assert y.device == x.device
        np.testing.assert_allclose(y.cpu().numpy(), f(tg.tensor(xs)).numpy(), rtol=1e-6)
    st = tg.compiler.stats(cf)
    assert (st["trace_count"], st["replay_count"]) == (2, 2), st
    assert "device='cuda:0'" in tg.dump(cf)


def test_state_dict_loads_across_devices():
    gpu, cpu = _model().cuda(), _model()
    with tg.no_grad():
        for p in gpu.parameters():
            p.mul_(2.0)
    cpu.load_state_dict(gpu.state_dict())
    back = _model().cuda()
    back.load_state_dict(cpu.state_dict())
    for p, q, r in zip(gpu.parameters(), cpu.parameters(), back.parameters()):
        assert q.device == "cpu" and r.is_cuda
        np.testing.assert_array_equal(p.detach().cpu().numpy(), q.detach().numpy())
        np.testing.assert_array_equal(r.detach().cpu().numpy(), q.detach().numpy())
