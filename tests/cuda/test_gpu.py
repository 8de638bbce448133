"""What only a real GPU runs (TAPEGRAD_TEST_GPU=1): matrix products on cuBLAS and on the fallback
kernel, every transpose and accumulation the engine asks for, against NumPy."""
import itertools

import numpy as np
import pytest

pytestmark = pytest.mark.gpu_only

SHAPES = [(None, 5, 7, 3), (None, 64, 784, 256), (None, 1, 1, 1), (4, 3, 6, 2), (2, 33, 17, 65)]


@pytest.fixture(params=["cublas", "kernel"])
def route(request, monkeypatch):
    from tapegrad.cuda import blas
    if request.param == "kernel":
        monkeypatch.setattr(blas, "_STATE", [None])
    elif not blas.available():
        pytest.skip("nvmath-python is not installed: no cuBLAS")
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nb,m,k,n", SHAPES)
@pytest.mark.parametrize("ta,tb,beta", list(itertools.product([False, True], [False, True], [0.0, 1.0])))
def test_products_match_numpy(route, dtype, nb, m, k, n, ta, tb, beta):
    from tapegrad.cuda import array
    rng = np.random.default_rng(m * 100 + n)
    batch = () if nb is None else (nb,)
    a = rng.standard_normal(batch + ((k, m) if ta else (m, k))).astype(dtype)
    b = rng.standard_normal(batch + ((n, k) if tb else (k, n))).astype(dtype)
    c = rng.standard_normal(batch + (m, n)).astype(dtype)
    out = array.to_device(c)
    array.mm_into(array.to_device(a), array.to_device(b), out, ta, tb, beta)
    want = (a.swapaxes(-1, -2) if ta else a) @ (b.swapaxes(-1, -2) if tb else b) + beta * c
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.get(), want, rtol=tol, atol=tol * np.sqrt(k))


def test_a_linear_layer_backward_on_cublas_matches_the_cpu(route):
    import tapegrad as tg
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s) for s in ((8, 5), (3, 5), (3,)))
    grads = []
    for device in ("cpu", "cuda"):
        ps = [tg.tensor(v, device=device, requires_grad=True) for v in (x, w, b)]
        tg.tanh(tg.nn.functional.linear(*ps)).pow(2).sum().backward()
        grads.append([p.grad.cpu().numpy() for p in ps])
    for cpu, gpu in zip(*grads):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-12, atol=1e-12)
