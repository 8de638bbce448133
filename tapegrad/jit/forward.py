"""Jitted forward kernels that the op table calls where NumPy has none as fast: vectorisable sin
and cos, softmax, cross-entropy, and the small matrix products."""
import math

import numpy as np

from . import njit


@njit(cache=True)
def mm_forward(a, b):
    return np.dot(a, b)


# -- vectorisable sin and cos ------------------------------------------------------------------
# libm's sin/cos are scalar calls (about 10 ns an element); this is fdlibm's kernel with a
# branch-free Cody-Waite reduction, which LLVM vectorises. Within 1 ulp of NumPy for
# |x| <= 1e5 (tests/jit/test_forward.py); larger or non-finite arguments take libm.
_PIO2_1, _PIO2_2, _PIO2_3 = 1.57079632673412561417e+00, 6.07710050630396597660e-11, 2.02226624871116645580e-21


_PIO2_3T = 8.47842766036889956997e-32  # pi/2 = _PIO2_1 + _PIO2_2 + _PIO2_3 + _PIO2_3T to 150 bits


_INVPIO2 = 6.36619772367581382433e-01


_S1, _S2, _S3 = -1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04


_S4, _S5, _S6 = 2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10


_C1, _C2, _C3 = 4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05


_C4, _C5, _C6 = -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11


_ROUND = 6755399441055744.0  # 1.5 * 2**52: x + _ROUND - _ROUND rounds x to an integer


_TRIG_MAX = 1e5


@njit(cache=True, inline="always")
def sincos1(x, quarter):
    """sin(x) for quarter 0, cos(x) for quarter 1 (a quarter turn later)."""
    k = (x * _INVPIO2 + _ROUND) - _ROUND
    t = x - k * _PIO2_1  # exact: _PIO2_1 has 33 bits
    w = k * _PIO2_2
    r = t - w
    y = (((t - r) - w) - k * _PIO2_3) - k * _PIO2_3T  # the low part of r (matters when r is tiny)
    z = r * r
    v = z * r
    p = _S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * _S6)))
    s = r - ((z * (0.5 * y - v * p) - y) - v * _S1)
    zz = z * z
    q = z * (_C1 + z * (_C2 + z * _C3)) + zz * zz * (_C4 + z * (_C5 + z * _C6))
    hz = 0.5 * z
    w1 = 1.0 - hz
    c = w1 + (((1.0 - w1) - hz) + (z * q - r * y))
    n = np.int64(k) + quarter
    res = c if n & 1 else s
    return -res if n & 2 else res


@njit(cache=True)
def trig_safe(x):
    """Whether every element is finite and small enough for sincos1."""
    bad = False
    for i in range(x.size):
        bad |= not (abs(x[i]) <= _TRIG_MAX)
    return not bad


@njit(cache=True)
def sin_forward(x):
    return _trig_forward(x, 0)


@njit(cache=True)
def cos_forward(x):
    return _trig_forward(x, 1)


@njit(cache=True)
def _trig_forward(x, quarter):
    flat = x.reshape(-1)
    out = np.empty(flat.size, x.dtype)
    bad = False
    for i in range(flat.size):  # one pass: the range check rides along (an OR reduction vectorises)
        bad |= not (abs(flat[i]) <= _TRIG_MAX)
        out[i] = sincos1(np.float64(flat[i]), quarter)
    if bad:  # large or non-finite arguments: libm for all
        for i in range(flat.size):
            out[i] = np.sin(flat[i]) if quarter == 0 else np.cos(flat[i])
    return out.reshape(x.shape)


@njit(cache=True)
def softmax_forward(x, log):
    """softmax, or log_softmax when ``log``, of a C-ordered (outer, n, inner) array along axis 1:
    one pass per slice where NumPy makes six (small tensors; large ones keep NumPy's SIMD exp)."""
    outer, n, inner = x.shape
    out = np.empty_like(x)
    for p in range(outer):
        for j in range(inner):
            m = -np.inf
            for k in range(n):
                if x[p, k, j] > m or np.isnan(x[p, k, j]):
                    m = x[p, k, j]
            s = 0.0
            for k in range(n):
                s += np.exp(np.float64(x[p, k, j]) - m)
            if log:
                shift = m + np.log(s)
                for k in range(n):
                    out[p, k, j] = x[p, k, j] - shift
            else:
                for k in range(n):
                    out[p, k, j] = np.exp(np.float64(x[p, k, j]) - m) / s
    return out


@njit(cache=True)
def xent_forward(x, t):
    """cross_entropy's common case in one pass: log_softmax of the C-ordered (n, c) logits along
    dim 1 (as softmax_forward), each sample's flat target position in it, and the sum of the picked
    -log p in float64. ok is False, the rest meaningless, when a target is outside [0, c) (an
    ignore_index or an error: the general path deals with it)."""
    n, c = x.shape
    out = np.empty_like(x)
    pos = np.empty(n, np.int64)
    total = 0.0
    for p in range(n):
        k0 = t[p]
        if k0 < 0 or k0 >= c:
            return out, pos, total, False
        m = -np.inf
        for k in range(c):
            if x[p, k] > m or np.isnan(x[p, k]):
                m = x[p, k]
        s = 0.0
        for k in range(c):
            s += np.exp(np.float64(x[p, k]) - m)
        shift = m + np.log(s)
        for k in range(c):
            out[p, k] = x[p, k] - shift
        pos[p] = p * c + k0
        total -= out[p, k0]
    return out, pos, total, True


@njit(cache=True)
def bmm_forward(a, b):
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), a.dtype)
    for i in range(a.shape[0]):
        out[i] = np.dot(a[i], b[i])
    return out
