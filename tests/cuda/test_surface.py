"""The op surface of tests/ops/test_surface.py (broadcasting, keepdim, negative and tuple dims, every
indexing key, einsum forms, shape ops, float32) on GPU tensors: each program's value and gradients
on the device against the CPU's. The programs make their constants with ``lib.tensor``; here that
puts them on the GPU, as a torch program on CUDA tensors would."""
import pytest

import tapegrad as tg

from ..ops import test_surface as surface
from .test_rows import assert_gpu_matches_cpu


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
    assert_gpu_matches_cpu(run(name, _Device(), dtype), run(name, tg, dtype), dtype)
