"""jit/outer.py's per-sample outer products: einsum's bits, in every dtype pair and shape."""
import numpy as np
import pytest

outer = pytest.importorskip("tapegrad.jit.outer").outer

RNG = np.random.default_rng(6)


@pytest.mark.parametrize("da, db", [(np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float64)])
@pytest.mark.parametrize("n, k, q", [(1, 1, 1), (1, 4, 3), (7, 3, 5), (512, 64, 64), (5, 1, 16), (0, 2, 2), (3, 0, 2)])
def test_bits_of_einsum(da, db, n, k, q):
    a, b = RNG.standard_normal((n, k)).astype(da), RNG.standard_normal((n, q)).astype(db)
    if a.size:
        a.flat[0] = np.finfo(da).tiny  # (a subnormal or zero product: no flush to zero)
    want = np.einsum("nk,nq->nkq", a, b)
    got = outer(a, b, np.full((n, k, q), np.nan, np.result_type(a, b)))
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))


def test_strided_operands():
    a, b = RNG.standard_normal((6, 4, 2))[:, :, 1], RNG.standard_normal((6, 5))[:, ::-1]
    assert np.array_equal(outer(a, b, np.empty((6, 4, 5))), np.einsum("nk,nq->nkq", a, b))
