"""Several threads recording and running backward at once, as torch allows: each thread has its own
tape and grad mode, and each gets the gradients a single thread gets.

The workers run with a tiny switch interval, so threads interleave inside ops and backwards, not
just between them. Tests taking the ``lib`` fixture run on tapegrad and (when installed) on torch.
"""
import sys
import threading

import numpy as np
import pytest


THREADS = 4
STEPS = 200


@pytest.fixture(autouse=True)
def switch_often():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def run_threads(work, n=THREADS, barriers=()):
    """work(k) in n threads at once; re-raises the first error (an assertion failure included).
    ``barriers``: those ``work`` waits at, broken when a thread fails."""
    errors = []
    start = threading.Barrier(n)
    barriers = (start,) + tuple(barriers)

    def body(k):
        try:
            start.wait()
            work(k)
        except threading.BrokenBarrierError:
            pass  # another thread failed first
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
            for b in barriers:
                b.abort()  # so that no thread waits forever for the one that failed

    threads = [threading.Thread(target=body, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


RNG = np.random.default_rng(11)
P0 = [RNG.standard_normal((6, 8)) * 0.5, RNG.standard_normal(8) * 0.1, RNG.standard_normal((8, 3)) * 0.5,
      RNG.standard_normal(3) * 0.1]
DATA = [(RNG.standard_normal((5, 6)), RNG.integers(0, 3, 5)) for _ in range(THREADS)]


def params(lib):
    return [lib.tensor(p, requires_grad=True) for p in P0]


def loss_of(lib, ps, k):
    w1, b1, w2, b2 = ps
    x, y = lib.tensor(DATA[k][0]), lib.tensor(DATA[k][1])
    h = (x @ w1 + b1).relu()
    return lib.nn.functional.cross_entropy(h @ w2 + b2, y) + (h.tanh() ** 2).mean()


def grads_by_backward(lib, ps, k):
    loss = loss_of(lib, ps, k)
    loss.backward()
    out = [p.grad.numpy().copy() for p in ps]
    for p in ps:
        p.grad = None
    return out


def grads_by_grad(lib, ps, k):
    return [g.numpy().copy() for g in lib.autograd.grad(loss_of(lib, ps, k), ps)]


def penalty_grads(lib, ps, k):
    """create_graph: the gradient of a gradient penalty (two backwards, the first recorded)."""
    gs = lib.autograd.grad(loss_of(lib, ps, k), ps, create_graph=True)
    pen = sum((g * g).sum() for g in gs)
    return [g.numpy().copy() for g in lib.autograd.grad(pen, ps)]


@pytest.mark.parametrize("how", [grads_by_backward, grads_by_grad, penalty_grads])
def test_mlp_in_threads_gets_single_thread_gradients(lib, how):
    want = [how(lib, params(lib), k) for k in range(THREADS)]

    def work(k):
        ps = params(lib) if how is grads_by_backward else shared  # .grad is per parameter
        for _ in range(STEPS // (4 if how is penalty_grads else 1)):
            got = how(lib, ps, k)
            for g, w in zip(got, want[k]):
                np.testing.assert_array_equal(g, w)

    shared = params(lib)
    run_threads(work)


def test_backward_into_shared_leaves_adds_every_thread(lib):
    # torch's AccumulateGrad adds under a lock: no thread's gradient is lost, the first one included
    ps = params(lib)
    single = [grads_by_grad(lib, ps, k) for k in range(THREADS)]
    want = [sum(s[i] for s in single) for i in range(len(ps))]
    rounds = 150
    step = threading.Barrier(THREADS)

    def work(k):
        for _ in range(rounds):
            loss_of(lib, ps, k).backward()
            step.wait()
            if k == 0:
                for p, w in zip(ps, want):
                    np.testing.assert_allclose(p.grad.numpy(), w, rtol=1e-10, atol=1e-12)
                    p.grad = None
            step.wait()

    run_threads(work, barriers=[step])


@pytest.mark.filterwarnings("ignore:Using backward.. with create_graph")  # torch's reference-cycle warning
def test_backward_create_graph_into_shared_leaves(lib):
    x = lib.tensor([0.5, -1.0, 2.0], dtype=lib.float64, requires_grad=True)
    steps = 60

    def work(k):
        for _ in range(steps):
            ((x * (k + 1)) ** 3).sum().backward(create_graph=True)

    run_threads(work)
    assert x.grad.requires_grad
    want = steps * sum(3 * (k + 1) ** 3 for k in range(THREADS)) * np.array([0.25, 1.0, 4.0])
    np.testing.assert_allclose(x.grad.detach().numpy(), want, rtol=1e-12)
    (h,) = lib.autograd.grad(x.grad.sum(), x)
    np.testing.assert_allclose(h.numpy(), 2 * want / np.array([0.5, -1.0, 2.0]), rtol=1e-12)


def test_threads_backward_through_one_shared_graph(lib):
    # a graph recorded in the main thread, retained, and differentiated from every thread at once
    w = lib.tensor(P0[0], requires_grad=True)
    shared = (w * 2).tanh()
    want = [lib.autograd.grad((shared * (k + 1)).pow(2).sum(), w, retain_graph=True)[0].numpy().copy()
            for k in range(THREADS)]

    def work(k):
        for _ in range(STEPS // 4):
            (g,) = lib.autograd.grad((shared * (k + 1)).pow(2).sum(), w, retain_graph=True)
            np.testing.assert_array_equal(g.numpy(), want[k])

    run_threads(work)


def test_hooks_retain_grad_and_inplace_checks_per_thread(lib):
    def work(k):
        for _ in range(STEPS // 4):
            x = lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64, requires_grad=True)
            seen = []
            h = x * (k + 1)
            h.retain_grad()
            h.register_hook(lambda g: seen.append(g.numpy().copy()))
            y = h.exp()
            y.sum().backward()
            np.testing.assert_array_equal(seen[0], np.exp(np.array([1.0, 2.0, 3.0]) * (k + 1)))
            np.testing.assert_array_equal(h.grad.numpy(), seen[0])
            np.testing.assert_array_equal(x.grad.numpy(), seen[0] * (k + 1))
            z = x * 1
            s = z.sin()  # saves z
            if k % 2:
                z.mul_(2)
                with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                    s.sum().backward()
            else:
                s.sum().backward()  # unchanged: no error, whatever the other threads change in place

    run_threads(work)


def test_grad_mode_in_one_thread_leaves_the_others_recording(lib):
    def work(k):
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        for _ in range(STEPS):
            if k % 2:
                with lib.no_grad():
                    assert not (x * 2).requires_grad
            else:
                y = x * 2
                assert y.requires_grad
                y.sum().backward()
        if not k % 2:
            np.testing.assert_array_equal(x.grad.numpy(), [2.0 * STEPS] * 2)

    run_threads(work)
