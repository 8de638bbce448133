"""Optimizer updates over many parameters in one jitted call (tapegrad.optim): a model's step
otherwise pays NumPy's call overhead twice per parameter. Arrays are read by the addresses of
their NumPy objects, as the compiled replay reads its slots."""
import numpy as np
from numba import carray

from . import njit
from .ffi import _load_i64, _voidptr, size_of


@njit(cache=True)
def sgd(X, G, lr, hoff, w):
    """x -= lr * g for each pair of arrays (X, G: their objects' addresses), all of w's dtype: NumPy's
    steps, lr cast to the dtype, the product rounded, then the difference."""
    c = np.empty(1, w.dtype)
    c[0] = lr
    a = c[0]
    for k in range(X.size):
        n = size_of(X[k], hoff)
        x = carray(_voidptr(_load_i64(X[k] + hoff)), n, w.dtype)
        g = carray(_voidptr(_load_i64(G[k] + hoff)), n, w.dtype)
        for i in range(n):
            x[i] -= a * g[i]
