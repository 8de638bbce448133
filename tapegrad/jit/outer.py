"""Per-sample outer products for tapegrad.func's per-sample gradients of shared parameters
(func/batched.py's taps): np.einsum("ni,nj->nij") takes about 3.5 times as long for a batch of
small vectors."""
import numpy as np

from . import njit


@njit(cache=True)
def _outer(a, b, out):
    for n in range(out.shape[0]):
        for i in range(out.shape[1]):
            x = a[n, i]
            for j in range(out.shape[2]):
                out[n, i, j] = x * b[n, j]  # (one rounded product, as einsum's: the same bits)


def outer(a, b, out):
    """out[n, i, j] = a[n, i] * b[n, j] for 2-d a and b of one length n (out: C-ordered, of their
    result dtype); returns out."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)  # (C layout: one compile per dtype)
    _outer(a, b, out)
    return out
