"""The vectorisable sin and cos of jit/forward.py: within 1 ulp of NumPy's (libm's) everywhere they are
used, and exactly libm's where they hand over (|x| > 1e5, inf, nan)."""
import numpy as np
import pytest

kernels = pytest.importorskip("tapegrad.jit.forward")

RNG = np.random.default_rng(4)
RANGES = {
    "normal": RNG.standard_normal(200_000),
    "wide": RNG.uniform(-1e5, 1e5, 200_000),
    "tiny": RNG.uniform(-1e-6, 1e-6, 10_000),
    "quarter_turns": np.arange(-20_000, 20_000) * (np.pi / 2),
    "near_quarter_turns": np.arange(1, 20_000) * (np.pi / 2) + RNG.uniform(-1e-9, 1e-9, 19_999),
    "signed_zeros": np.array([0.0, -0.0, 5e-324, -5e-324]),
}


def ulps(got, want):
    return np.max(np.abs(got - want) / np.spacing(np.maximum(np.abs(want), np.finfo(want.dtype).tiny)))


@pytest.mark.parametrize("name", sorted(RANGES))
def test_within_one_ulp_of_numpy(name):
    x = RANGES[name]
    assert ulps(kernels.sin_forward(x), np.sin(x)) <= 1
    assert ulps(kernels.cos_forward(x), np.cos(x)) <= 1


def test_sign_of_zero_is_kept():
    assert np.signbit(kernels.sin_forward(np.array([-0.0]))[0])


def test_large_and_special_values_take_libm():
    x = np.array([1e6, -3e9, 1e300, np.inf, -np.inf, np.nan, 0.5])
    with np.errstate(invalid="ignore"):  # sin(inf) is nan
        np.testing.assert_array_equal(kernels.sin_forward(x), np.sin(x))
        np.testing.assert_array_equal(kernels.cos_forward(x), np.cos(x))


def test_float32_in_float32_out():
    x = RNG.standard_normal(10_000).astype(np.float32)
    y = kernels.sin_forward(x)
    assert y.dtype == np.float32
    assert ulps(y, np.sin(x.astype(np.float64)).astype(np.float32)) <= 1


def test_shape_is_kept():
    x = RNG.standard_normal((3, 5, 7))
    assert kernels.cos_forward(x).shape == (3, 5, 7)
    np.testing.assert_allclose(kernels.cos_forward(x), np.cos(x), rtol=0, atol=3e-16)
