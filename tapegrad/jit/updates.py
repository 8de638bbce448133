"""Optimizer updates over many parameters in one jitted call (tapegrad.optim): a model's step
otherwise pays NumPy's call overhead twice per parameter. Arrays are read by the addresses of
their NumPy objects, as the compiled replay reads its slots."""
import numpy as np

from . import njit
from .ffi import flat


@njit(cache=True)
def sgd(X, G, lr, hoff, w):
    """x -= lr * g for each pair of arrays (X, G: their objects' addresses), all of w's dtype: NumPy's
    steps, lr cast to the dtype, the product rounded, then the difference."""
    c = np.empty(1, w.dtype)
    c[0] = lr
    a = c[0]
    for k in range(X.size):
        x, g = flat(X[k], hoff, w), flat(G[k], hoff, w)
        for i in range(x.size):
            x[i] -= a * g[i]
