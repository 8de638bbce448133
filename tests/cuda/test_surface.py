"""The op surface of tests/ops/test_surface.py (broadcasting, keepdim, negative and tuple dims, every
indexing key, einsum forms, shape ops, float32) on GPU tensors: each program's value and gradients
on the device against the CPU's. The programs make their constants with ``lib.tensor``; here that
puts them on the GPU, as a torch program on CUDA tensors would."""
import numpy as np
import pytest

import tapegrad as tg

from ..ops import test_surface as surface


class _Device:
    """tapegrad, with tensor() making GPU tensors."""

    def __getattr__(self, name):
        return getattr(tg, name)

    @staticmethod
    def tensor(data, **kwargs):
        return tg.tensor(data, device="cuda", **kwargs)


def run(name, lib, dtype):
    arrays = surface._inputs(name)
    xs = [lib.tensor(a, dtype=dtype, requires_grad=True) for a in arrays]
    y = surface.CASES[name][0](lib, *xs)
    y.backward(lib.tensor(surface._cotangent(tuple(y.shape)), dtype=y.dtype))
    return y, [x.grad for x in xs]


# every case in float64, test_surface's FLOAT32 ones in float32 too
RUNS = [pytest.param(name, tg.float64, id=f"{name}-float64") for name in sorted(surface.CASES)] + \
    [pytest.param(name, tg.float32, id=f"{name}-float32") for name in surface.FLOAT32]


@pytest.mark.parametrize("name, dtype", RUNS)
def test_surface_on_the_gpu_matches_the_cpu(name, dtype):
    out, grads = run(name, _Device(), dtype)
    ref, ref_grads = run(name, tg, dtype)
    assert out.is_cuda and all(g.is_cuda for g in grads)
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == tg.float32 else dict(rtol=1e-13, atol=1e-13)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    np.testing.assert_allclose(out.cpu().detach().numpy(), ref.detach().numpy(), **tol)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g.cpu().numpy(), r.numpy(), **tol)
