"""The numeric adjoint of every row of the op table, jitted. Each is declared with ``@adjoint``,
which says how it writes its inputs' gradients: ``assigns`` when every write goes through
claim/put (or gemm's beta), so a fresh region needs no zeroing first; ``blockable`` when it is
elementwise over its operands and may replay a block at a time inside a run (interp.py).
tools/generate.py reads these declarations into the dispatch (_generated.py)."""
import math

import numpy as np

from ...jit import njit
from ...jit.ffi import gemm_acc
from ...jit.forward import sincos1, trig_safe
from .context import (ERR_PYTHON, F32, blocks, bsum, bval, claim, dtype_code, grad, ival, nel, permute_map, put,
                      reduce_map, rg, settle, shape, span, target, val)

DECLARED = {}  # name -> (assigns, blockable, status), in declaration order


def adjoint(assigns=False, blockable=False, status=False):
    """Jit an adjoint and declare how it writes (see above); ``status``: it returns the dispatch
    status itself (a row whose backward is not jitted)."""
    def declare(fn):
        DECLARED[fn.__name__] = (assigns, blockable, status)
        return njit(cache=True)(fn)
    return declare


# -- numeric adjoints, one per row of ops.TABLE ----------------------------------------------
# Each reads the output gradient g and accumulates into the inputs that require grad. Explicit
# loops, not array expressions: those allocate a temporary per entry, which dominates small ops.
@adjoint(assigns=True, blockable=True)
def adj_add(e, R, RF, C):
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    g = grad(C, o)
    n = g.size
    if a != b and rg(C, a) and rg(C, b) and nel(C, a) == n and nel(C, b) == n:  # one pass over g
        ga, gb, fa, fb = grad(C, a), grad(C, b), claim(C, a), claim(C, b)
        for i in range(n):
            put(ga, i, g[i], fa)
            put(gb, i, g[i], fb)
        return
    for k in (1, 2):
        if rg(C, R[e, k]):
            bsum(C, R[e, k], o, g, 1.0)


@adjoint(assigns=True, blockable=True)
def adj_sub(e, R, RF, C):
    o = R[e, 4]
    g = grad(C, o)
    if rg(C, R[e, 1]):
        bsum(C, R[e, 1], o, g, 1.0)
    if rg(C, R[e, 2]):
        bsum(C, R[e, 2], o, g, -1.0)


@adjoint(assigns=True, blockable=True)
def adj_mul(e, R, RF, C):
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    g = grad(C, o)
    n = g.size
    if a == b and rg(C, a) and nel(C, a) == n:  # x * x: one pass
        ga, va, f = grad(C, a), val(C, a), claim(C, a)
        for i in range(n):
            put(ga, i, 2.0 * g[i] * va[i], f)
        return
    if rg(C, a) and rg(C, b) and nel(C, a) == n and nel(C, b) == n:  # one pass over g
        ga, gb, va, vb = grad(C, a), grad(C, b), val(C, a), val(C, b)
        fa, fb = claim(C, a), claim(C, b)
        for i in range(n):
            put(ga, i, g[i] * vb[i], fa)
            put(gb, i, g[i] * va[i], fb)
        return
    if rg(C, a):
        vb = bval(C, b, o)
        if nel(C, a) == n:
            ga, f = grad(C, a), claim(C, a)
            for i in range(n):
                put(ga, i, g[i] * vb[i], f)
        else:
            bsum(C, a, o, g * vb, 1.0)
    if rg(C, b):
        va = bval(C, a, o)
        if nel(C, b) == n:
            gb, f = grad(C, b), claim(C, b)
            for i in range(n):
                put(gb, i, g[i] * va[i], f)
        else:
            bsum(C, b, o, g * va, 1.0)


@adjoint(assigns=True, blockable=True)
def adj_div(e, R, RF, C):
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    g = grad(C, o)
    n = g.size
    vb = bval(C, b, o)
    if rg(C, a):
        if nel(C, a) == n:
            ga, f = grad(C, a), claim(C, a)
            for i in range(n):
                put(ga, i, g[i] / vb[i], f)
        else:
            bsum(C, a, o, g / vb, 1.0)
    if rg(C, b):
        va = bval(C, a, o)
        t = np.empty(n, g.dtype)
        for i in range(n):
            t[i] = -g[i] * va[i] / (vb[i] * vb[i])
        bsum(C, b, o, t, 1.0)


@adjoint(assigns=True, blockable=True)
def adj_pow(e, R, RF, C):
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    g = grad(C, o)
    va, vb = bval(C, a, o), bval(C, b, o)
    # torch's formulas: 0 where the exponent is 0 (not 0 * x**-1), and g * 0 where the base is 0
    # and the exponent not negative (not g * 0 * log(0))
    if rg(C, a):
        t, f = target(C, a, g.size)
        for i in range(g.size):
            put(t, i, g[i] * (vb[i] * va[i] ** (vb[i] - 1)) if vb[i] != 0 else 0.0, f)
        settle(C, a, o, t)
    if rg(C, b):
        (t, f), out = target(C, b, g.size), val(C, o)
        for i in range(g.size):
            if va[i] == 0 and vb[i] >= 0:
                put(t, i, g[i] * 0.0, f)
            else:
                put(t, i, g[i] * (out[i] * np.log(va[i])), f)
        settle(C, b, o, t)


@adjoint(assigns=True, blockable=True)
def adj_identity(e, R, RF, C):
    """add a scalar, view/reshape, clone: the gradient passes through unchanged."""
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, g[i], f)


@adjoint(assigns=True, blockable=True)
def adj_cast(e, R, RF, C):
    """The gradient passes back rounded to the input's dtype, as torch computes it in that dtype."""
    a = R[e, 1]
    g, ga = grad(C, R[e, 4]), grad(C, a)
    f = claim(C, a)
    if dtype_code(C, a) == F32:
        for i in range(g.size):
            put(ga, i, np.float32(g[i]), f)
    else:
        for i in range(g.size):
            put(ga, i, g[i], f)


@njit(cache=True, inline="always")
def torch_pow(x, c):
    """x ** c as torch computes it for a Python exponent (ops._pow_value): its special exponents
    are other formulas than pow(), which differ from it in the last bit or at -0.0 and -inf."""
    if c == 1.0:
        return x
    if c == 0.0:
        return 1.0
    if c == 2.0:
        return x * x
    if c == 0.5:
        return np.sqrt(x)
    if c == -1.0:
        return 1.0 / x
    if c == 3.0:
        return x * x * x
    if c == -0.5:
        return 1.0 / np.sqrt(x)
    if c == -2.0:
        return 1.0 / (x * x)
    return x ** c


@adjoint(assigns=True, blockable=True)
def adj_pow_scalar(e, R, RF, C):
    """torch's grad * (c * x ** (c - 1)); nothing for c == 0."""
    c = RF[e, 7]
    if c != 0.0:
        g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
        f = claim(C, R[e, 1])
        if c == 2.0:  # x ** 2: no pow call per element (2 * g * x is g * (2 * x) bit for bit)
            for i in range(g.size):
                put(ga, i, 2.0 * g[i] * x[i], f)
        elif c == 1.0:  # x ** 1 (x ** 2's gradient): g * (1 * 1)
            for i in range(g.size):
                put(ga, i, g[i], f)
        else:
            for i in range(g.size):
                put(ga, i, g[i] * (c * torch_pow(x[i], c - 1.0)), f)


@adjoint(assigns=True, blockable=True)
def adj_rpow_scalar(e, R, RF, C):
    """torch's grad * (c ** x * log(c)); a zero base: g * 0 where x >= 0, g * -inf where x < 0."""
    c = RF[e, 7]
    g, ga, out, va = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 4]), val(C, R[e, 1])
    lc = np.log(c) if c >= 0 else np.nan
    f = claim(C, R[e, 1])
    for i in range(g.size):
        if c == 0 and va[i] >= 0:
            put(ga, i, g[i] * 0.0, f)
        else:
            put(ga, i, g[i] * (out[i] * lc), f)


@adjoint(assigns=True, blockable=True)
def adj_sin(e, R, RF, C):
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    x = val(C, R[e, 1])
    f = claim(C, R[e, 1])
    if trig_safe(x):
        for i in range(g.size):
            put(ga, i, g[i] * sincos1(np.float64(x[i]), 1), f)
    else:
        for i in range(g.size):
            put(ga, i, g[i] * np.cos(x[i]), f)


@adjoint(assigns=True, blockable=True)
def adj_cos(e, R, RF, C):
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    x = val(C, R[e, 1])
    f = claim(C, R[e, 1])
    if trig_safe(x):
        for i in range(g.size):
            put(ga, i, g[i] * sincos1(np.float64(x[i]), 2), f)  # -sin: half a turn on
    else:
        for i in range(g.size):
            put(ga, i, -g[i] * np.sin(x[i]), f)


@adjoint(assigns=True, blockable=True)
def adj_relu(e, R, RF, C):
    """torch's threshold_backward at the result: g unless y <= 0 (a NaN result passes g)."""
    g, ga, y = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 4])
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, 0.0 if y[i] <= 0 else g[i], f)


@adjoint(assigns=True, blockable=True)
def adj_sum(e, R, RF, C):
    """sum (f0 = 1) and mean (f0 = 1/count) over the axes in bit-mask i0."""
    a = R[e, 1]
    g, ga = grad(C, R[e, 4]), grad(C, a)
    scale = RF[e, 7]
    f = claim(C, a)
    if g.size == 1:  # a full reduction: no index map
        c = g[0] * scale
        for i in range(ga.size):
            put(ga, i, c, f)
        return
    m = reduce_map(shape(C, a), R[e, 5])
    for i in range(ga.size):
        put(ga, i, g[m[i]] * scale, f)


@adjoint(assigns=True)
def adj_expand(e, R, RF, C):
    bsum(C, R[e, 1], R[e, 4], grad(C, R[e, 4]), 1.0)


@njit(cache=True)
def alpha_beta(like, fresh):
    """[alpha, beta] for gemm_acc: accumulate (beta 1), or assign into a fresh region (beta 0)."""
    ab = np.ones(2, like.dtype)
    if fresh:
        ab[1] = 0
    return ab


@adjoint(assigns=True)
def adj_mm(e, R, RF, C):
    a, b = R[e, 1], R[e, 2]
    sa, sb = shape(C, a), shape(C, b)
    g = grad(C, R[e, 4])
    if rg(C, a):  # ga (M x K) += g (M x N) @ b.T
        vb, ab = val(C, b), alpha_beta(g, claim(C, a))
        gemm_acc(False, True, sa[0], sa[1], sb[1], g.ctypes.data, vb.ctypes.data, grad(C, a).ctypes.data, ab)
    if rg(C, b):  # gb (K x N) += a.T @ g
        va, ab = val(C, a), alpha_beta(g, claim(C, b))
        gemm_acc(True, False, sb[0], sb[1], sa[0], va.ctypes.data, g.ctypes.data, grad(C, b).ctypes.data, ab)


@adjoint()
def adj_permute(e, R, RF, C):
    a = R[e, 1]
    g, ga = grad(C, R[e, 4]), grad(C, a)
    m = permute_map(shape(C, a), R[e, 5])
    for i in range(g.size):
        ga[m[i]] += g[i]


@adjoint()
def adj_getitem(e, R, RF, C):
    """b is an int64 slot mapping each output element to its flat source index (b < 0: the
    output is the contiguous run of the input from flat offset i0)."""
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    if R[e, 2] < 0:
        off = R[e, 5]
        for k in range(g.size):
            ga[off + k] += g[k]
        return
    idx = ival(C, R[e, 2])
    for k in range(g.size):
        ga[idx[k]] += g[k]


@adjoint()
def adj_setitem(e, R, RF, C):
    """x[idx] = v: a is x before, b is v (already shaped like the selection), c the index map."""
    a, b = R[e, 1], R[e, 2]
    g, idx = grad(C, R[e, 4]), ival(C, R[e, 3])
    if rg(C, b):
        gb = grad(C, b)
        for k in range(idx.size):
            gb[k] += g[idx[k]]
    if rg(C, a):
        keep = g.copy()
        for k in range(idx.size):
            keep[idx[k]] = 0
        grad(C, a)[:] += keep


@adjoint(assigns=True)
def adj_scatter_flat(e, R, RF, C):
    """The transpose of getitem: the output gradient gathered at the index map (or the run from i0).
    Every element of the input's gradient is written once: it assigns a fresh region (ASSIGNS)."""
    g, ga, f = grad(C, R[e, 4]), grad(C, R[e, 1]), claim(C, R[e, 1])
    if R[e, 2] < 0:
        off = R[e, 5]
        for k in range(ga.size):
            put(ga, k, g[off + k], f)
        return
    idx = ival(C, R[e, 2])
    for k in range(idx.size):
        put(ga, k, g[idx[k]], f)


@adjoint(assigns=True)
def adj_add_run(e, R, RF, C):
    """a + f0 * (b placed at flat offset i0), a smaller than the output placed at i1: a's gradient
    is g (or its run from i1), b's is f0 times g's run from i0 (ASSIGNS)."""
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    g = grad(C, o)
    if rg(C, a):
        ga, f = grad(C, a), claim(C, a)
        lo = 0 if ga.size == g.size else R[e, 6]
        for k in range(ga.size):
            put(ga, k, g[lo + k], f)
    if rg(C, b):
        gb, f, off, c = grad(C, b), claim(C, b), R[e, 5], RF[e, 7]
        for k in range(gb.size):
            put(gb, k, g[off + k] * c, f)


@adjoint(status=True)
def adj_function(e, R, RF, C):
    """A custom autograd.Function: its backward is Python, run by the engine between replay
    segments; a replay that reaches this row is a driver bug (dispatch reports ERR_PYTHON)."""
    return ERR_PYTHON


@adjoint(assigns=True, blockable=True)
def adj_leaky_relu(e, R, RF, C):
    g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
    slope = RF[e, 7]
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, g[i] if x[i] > 0 else g[i] * slope, f)


@adjoint(assigns=True, blockable=True)
def adj_gelu(e, R, RF, C):
    """i0 = 0: the exact gelu x * Phi(x); i0 = 1: torch's tanh approximation."""
    g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
    f = claim(C, R[e, 1])
    if R[e, 5] == 0:
        for i in range(g.size):
            xi = x[i]
            cdf = 0.5 * (1 + math.erf(xi * 0.7071067811865476))
            pdf = np.exp(-0.5 * xi * xi) * 0.3989422804014327
            put(ga, i, g[i] * (cdf + xi * pdf), f)
    else:
        beta, kappa = 0.7978845608028654, 0.044715  # sqrt(2/pi)
        for i in range(g.size):
            xi = x[i]
            th = np.tanh(beta * (xi + kappa * xi * xi * xi))
            left = 0.5 * xi
            dright = (1 - th * th) * beta * (1 + 3 * kappa * xi * xi)
            put(ga, i, g[i] * (0.5 * (1 + th) + left * dright), f)


@adjoint(assigns=True, blockable=True)
def adj_softplus(e, R, RF, C):
    """f0 = beta; the bits of i1 hold the threshold (read as a float through RF)."""
    g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
    beta, threshold = RF[e, 7], RF[e, 6]
    f = claim(C, R[e, 1])
    for i in range(g.size):
        z = x[i] * beta
        if z > threshold:
            put(ga, i, g[i], f)
        else:
            ez = np.exp(z)
            put(ga, i, g[i] * ez / (ez + 1), f)


@adjoint(assigns=True, blockable=True)
def adj_clamp(e, R, RF, C):
    """f0 = min; the bits of i1 hold max (infinite where not given)."""
    g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
    lo, hi = RF[e, 7], RF[e, 6]
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, g[i] if x[i] >= lo and x[i] <= hi else 0.0, f)


@adjoint(assigns=True, blockable=True)
def adj_zero(e, R, RF, C):
    """sign, zero_, fill_: the input gets a zero gradient (nothing to add; left fresh, a region
    nothing writes is zeroed at the end of the replay)."""
    return


@adjoint(assigns=True, blockable=True)
def adj_maximum(e, R, RF, C):
    """maximum (i0 = 0) and minimum (i0 = 1): ties split the gradient in halves, as torch does."""
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    g = grad(C, o)
    va, vb = bval(C, a, o), bval(C, b, o)
    sgn = 1.0 if R[e, 5] == 0 else -1.0
    for k in (1, 2):
        s = R[e, k]
        if rg(C, s):
            t, f = target(C, s, g.size)
            for i in range(g.size):
                d = (va[i] - vb[i]) * sgn
                if k == 2:
                    d = -d
                if va[i] == vb[i]:
                    put(t, i, 0.5 * g[i], f)
                else:
                    put(t, i, g[i] if not d < 0 else 0.0, f)
            settle(C, s, o, t)


@adjoint(assigns=True, blockable=True)
def adj_where(e, R, RF, C):
    """where(c, a, b): a gets g where c holds, b where it does not; c is stored at the output's shape."""
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    g, cond = grad(C, o), val(C, R[e, 3])
    for k in (1, 2):
        s = R[e, k]
        if rg(C, s):
            t, f = target(C, s, g.size)
            want = k == 1
            for i in range(g.size):
                put(t, i, g[i] if (cond[i] != 0) == want else 0.0, f)
            settle(C, s, o, t)


@adjoint(assigns=True, blockable=True)
def adj_masked_fill(e, R, RF, C):
    """b is the mask at x's shape: filled positions get no gradient."""
    g, ga, mask = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 2])
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, g[i] if mask[i] == 0 else 0.0, f)


@adjoint()
def adj_prod(e, R, RF, C):
    """prod over the axes in mask i0: g * prod / x, or with one zero in a group, the product of
    the others at the zero (torch's exact rule)."""
    a, o = R[e, 1], R[e, 4]
    g, ga, x, y = grad(C, o), grad(C, a), val(C, a), val(C, o)
    m = reduce_map(shape(C, a), R[e, 5])
    zeros = np.zeros(g.size, np.int64)
    others = np.ones(g.size, ga.dtype)
    for i in range(x.size):
        if x[i] == 0:
            zeros[m[i]] += 1
        else:
            others[m[i]] *= x[i]
    for i in range(x.size):
        j = m[i]
        if zeros[j] == 0:
            ga[i] += g[j] * y[j] / x[i]
        elif zeros[j] == 1 and x[i] == 0:
            ga[i] += g[j] * others[j]


@adjoint()
def adj_amax(e, R, RF, C):
    """amax/amin and the full max/min: the gradient is shared evenly by the tied extremes."""
    a, o = R[e, 1], R[e, 4]
    g, ga, x, y = grad(C, o), grad(C, a), val(C, a), val(C, o)
    m = reduce_map(shape(C, a), R[e, 5])
    count = np.zeros(g.size, ga.dtype)
    for i in range(x.size):
        if x[i] == y[m[i]]:
            count[m[i]] += 1
    for i in range(x.size):
        j = m[i]
        if x[i] == y[j]:
            ga[i] += g[j] / count[j]


@adjoint()
def adj_norm(e, R, RF, C):
    """The p-norm (p = f0) over the axes in mask i0; zero where the norm is zero, as torch."""
    a, o = R[e, 1], R[e, 4]
    g, ga, x, y = grad(C, o), grad(C, a), val(C, a), val(C, o)
    m = reduce_map(shape(C, a), R[e, 5])
    p = RF[e, 7]
    if p == 0:
        return
    if np.isinf(p):
        count = np.zeros(g.size, ga.dtype)
        for i in range(x.size):
            if abs(x[i]) == y[m[i]]:
                count[m[i]] += 1
        for i in range(x.size):
            j = m[i]
            if abs(x[i]) == y[j]:
                ga[i] += np.sign(x[i]) * g[j] / count[j]
    elif p == 1:
        for i in range(x.size):
            ga[i] += g[m[i]] * np.sign(x[i])
    elif p == 2:  # torch's formulas and order of operations from here on
        for i in range(x.size):
            j = m[i]
            if y[j] != 0:
                ga[i] += g[j] * (x[i] / y[j])
    elif p < 1:
        for i in range(x.size):
            j = m[i]
            if x[i] != 0:
                ga[i] += np.sign(x[i]) * abs(x[i]) ** (p - 1) * g[j] * y[j] ** (1 - p)
    else:
        for i in range(x.size):
            j = m[i]
            if y[j] != 0:
                scaled = np.sign(x[i]) * abs(x[i]) ** (p - 1) if p < 2 else x[i] * abs(x[i]) ** (p - 2)
                ga[i] += scaled * (g[j] / y[j] ** (p - 1))


@adjoint()
def adj_cumsum(e, R, RF, C):
    """The reversed cumulative sum of g along dim i0."""
    a, o = R[e, 1], R[e, 4]
    g, ga = grad(C, o), grad(C, a)
    outer, n, inner = blocks(shape(C, a), R[e, 5])
    for p in range(outer):
        for j in range(inner):
            acc = 0.0
            for k in range(n - 1, -1, -1):
                i = (p * n + k) * inner + j
                acc += g[i]
                ga[i] += acc


@njit(cache=True)
def softmax_family(e, R, C, log):
    """The adjoint of softmax (y * (g - sum(g * y))) or, with ``log``, of log_softmax
    (g - exp(y) * sum(g)), along dim i0."""
    a, o = R[e, 1], R[e, 4]
    g, ga, y = grad(C, o), grad(C, a), val(C, o)
    outer, n, inner = blocks(shape(C, a), R[e, 5])
    for p in range(outer):
        for j in range(inner):
            base = p * n * inner + j
            s = 0.0
            for k in range(n):
                i = base + k * inner
                s += g[i] if log else g[i] * y[i]
            for k in range(n):
                i = base + k * inner
                ga[i] += g[i] - np.exp(y[i]) * s if log else y[i] * (g[i] - s)


@adjoint()
def adj_softmax(e, R, RF, C):
    softmax_family(e, R, C, False)


@adjoint()
def adj_log_softmax(e, R, RF, C):
    softmax_family(e, R, C, True)


@adjoint(assigns=True)
def adj_bmm(e, R, RF, C):
    a, b = R[e, 1], R[e, 2]
    sa, sb = shape(C, a), shape(C, b)
    nb, n, k, p = sa[0], sa[1], sa[2], sb[2]
    g = grad(C, R[e, 4]).reshape((nb, n, p))
    if rg(C, a):  # per batch: ga (n x k) += g (n x p) @ b.T
        ga, vb, ab = grad(C, a).reshape((nb, n, k)), val(C, b).reshape((nb, k, p)), alpha_beta(g, claim(C, a))
        for i in range(nb):
            gemm_acc(False, True, n, k, p, g[i].ctypes.data, vb[i].ctypes.data, ga[i].ctypes.data, ab)
    if rg(C, b):  # gb (k x p) += a.T @ g
        gb, va, ab = grad(C, b).reshape((nb, k, p)), val(C, a).reshape((nb, n, k)), alpha_beta(g, claim(C, b))
        for i in range(nb):
            gemm_acc(True, False, k, p, n, va[i].ctypes.data, g[i].ctypes.data, gb[i].ctypes.data, ab)


@adjoint()
def adj_cat(e, R, RF, C):
    """cat and stack of up to three pieces along dim i0 of the output; a piece spans
    size / (outer * inner) positions of that dim (1 for stack)."""
    o = R[e, 4]
    g = grad(C, o)
    outer, total, inner = blocks(shape(C, o), R[e, 5])
    if outer * inner == 0:
        return
    off = 0
    for k in (1, 2, 3):
        s = R[e, k]
        if s < 0:
            break
        span = nel(C, s) // (outer * inner)
        if rg(C, s):
            gs = grad(C, s)
            w = span * inner
            for p in range(outer):
                src = (p * total + off) * inner
                for j in range(w):
                    gs[p * w + j] += g[src + j]
        off += span


@adjoint()
def adj_scatter_add(e, R, RF, C):
    """x.scatter_add(dim, index, src): x gets g; src gets g at the index map c."""
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    g = grad(C, o)
    if rg(C, a):
        ga = grad(C, a)
        for i in range(g.size):
            ga[i] += g[i]
    if rg(C, b):
        gb, idx = grad(C, b), ival(C, R[e, 3])
        for k in range(idx.size):
            gb[k] += g[idx[k]]


@adjoint()
def adj_copy(e, R, RF, C):
    """x.copy_(src): the old x gets nothing, src the gradient summed to its shape."""
    b = R[e, 2]
    if rg(C, b):
        bsum(C, b, R[e, 4], grad(C, R[e, 4]), 1.0)


@adjoint()
def adj_nll(e, R, RF, C):
    """nll_loss: b the flat target position per sample, c its weight (-1: ones); i0 = 1 when the
    loss is reduced (one gradient value, scaled by f0)."""
    g, ga, pos = grad(C, R[e, 4]), grad(C, R[e, 1]), ival(C, R[e, 2])
    c = R[e, 3]
    w = val(C, c) if c >= 0 else np.ones(pos.size, ga.dtype)
    reduced = R[e, 5] == 1
    scale = RF[e, 7]
    for i in range(pos.size):
        gi = g[0] * scale if reduced else g[i]
        ga[pos[i]] -= gi * w[i]


# -- gradients that are ops of their own, and var/std (torch's formulas) -----------------------
@adjoint(assigns=True, blockable=True)
def adj_backward_op(e, R, RF, C):
    """Gradients that are ops of their own, of a gradient a at values b: threshold_backward (i0 = 0)
    and leaky_relu_backward (i0 = 1, slope f0) mask a as they mask their own; nll_loss_backward
    (i0 = 2) passes it. b's gradient is zero."""
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    if rg(C, a):
        g, ga, f = grad(C, o), grad(C, a), claim(C, a)
        kind = R[e, 5]
        if kind == 2:
            for i in range(g.size):
                put(ga, i, g[i], f)
            return
        vb = val(C, b)
        if kind == 0:
            for i in range(g.size):
                put(ga, i, g[i] if not vb[i] <= 0 else 0.0, f)
        else:
            slope = RF[e, 7]
            for i in range(g.size):
                put(ga, i, g[i] if vb[i] > 0 else g[i] * slope, f)


@adjoint()
def adj_var(e, R, RF, C):
    """torch's var_backward over the axes in mask i0, correction f0: (2 / dof) * g * (x - mean);
    over every dim without a dim argument (i1 bit 1 unset) and dof <= 0: g * (nan where x is the
    mean, else inf)."""
    a, o = R[e, 1], R[e, 4]
    g, ga, x = grad(C, o), grad(C, a), val(C, a)
    m = reduce_map(shape(C, a), R[e, 5])
    k = g.size
    if k == 0:
        return
    mu = np.zeros(k, ga.dtype)
    for i in range(x.size):
        mu[m[i]] += x[i]
    n = x.size // k
    for j in range(k):
        mu[j] /= n
    dof = n - RF[e, 7]
    if (R[e, 6] & 2) == 0 and dof <= 0:
        for i in range(x.size):
            ga[i] += g[m[i]] * (np.nan if x[i] == mu[m[i]] else np.inf)
        return
    scale = 2.0 / dof if dof != 0 else np.inf
    for i in range(x.size):
        ga[i] += (g[m[i]] * scale) * (x[i] - mu[m[i]])


@adjoint(assigns=True, blockable=True)
def adj_std_root(e, R, RF, C):
    """std as the square root of its var: torch's std_backward, g / (2 * y) and 0 where y is 0."""
    g, ga, y = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 4])
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, 0.0 if y[i] == 0 else g[i] / (2 * y[i]), f)

