"""The jitted CPU interpreter: numeric adjoint kernels and the one loop that replays a tape.

Imported on the first backward only (Numba's import and compilation stay out of
``import tapegrad``). Values are read in place: a slot holds the address of a NumPy array
object, and ``view`` reads the array's data pointer and shape from its C header (NumPy's
public ``PyArrayObject`` layout; the offset is found and checked at start-up by
``engine_cpu.header_offset``).

Every kernel has the signature ``k(e, R, RF, C)``: entry ``e`` of the int rows ``R`` and
their float view ``RF``; ``C`` is the context tuple built by ``replay``.
"""
import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

from . import ops

RG = 1  # tape.REQUIRES_GRAD
FREED = 8  # tape.FREED
F32, F64, I64, I32, BOOL = 0, 1, 2, 3, 4

# status codes returned to the driver
OK, ERR_FREED, ERR_OPCODE, ERR_PYTHON = 0, 1, 2, 3


# -- reading NumPy array headers --------------------------------------------------------
@intrinsic
def _load_i64(typingctx, addr):
    def codegen(context, builder, sig, args):
        return builder.load(builder.inttoptr(args[0], ir.IntType(64).as_pointer()))
    return types.int64(types.int64), codegen


@intrinsic
def _load_i32(typingctx, addr):
    def codegen(context, builder, sig, args):
        v = builder.load(builder.inttoptr(args[0], ir.IntType(32).as_pointer()))
        return builder.sext(v, ir.IntType(64))
    return types.int64(types.int64), codegen


@intrinsic
def _voidptr(typingctx, addr):
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())
    return types.voidptr(types.int64), codegen


@njit(cache=True, inline="always")
def ndim_of(obj, hoff):
    return _load_i32(obj + hoff + 8)


@njit(cache=True, inline="always")
def dim_of(obj, hoff, k):
    return _load_i64(_load_i64(obj + hoff + 16) + 8 * k)


@njit(cache=True)
def size_of(obj, hoff):
    n = 1
    dims = _load_i64(obj + hoff + 16)
    for k in range(_load_i32(obj + hoff + 8)):
        n *= _load_i64(dims + 8 * k)
    return n


@njit(cache=True)
def shape_of(obj, hoff):
    nd = ndim_of(obj, hoff)
    out = np.empty(nd, np.int64)
    for k in range(nd):
        out[k] = dim_of(obj, hoff, k)
    return out


@njit(cache=True)
def header_probe(obj, hoff):
    """(data pointer, ndim, size): checked against NumPy once per process."""
    return _load_i64(obj + hoff), ndim_of(obj, hoff), size_of(obj, hoff)


# -- the context: C = (S, hoff, export, garena, goff, tcode, witness) ------------------------
@njit(cache=True)
def val(C, s):
    """The value of slot s as a flat array of the interpreter's dtype (a view when it matches)."""
    S, hoff, w, tcode = C[0], C[1], C[6], C[5]
    obj = S[s, 0]
    n = size_of(obj, hoff)
    p = _voidptr(_load_i64(obj + hoff))
    dt = S[s, 3]
    if dt == tcode:
        return carray(p, n, w.dtype)
    if dt == F32:
        return carray(p, n, np.float32).astype(w.dtype)
    if dt == F64:
        return carray(p, n, np.float64).astype(w.dtype)
    if dt == I64:
        return carray(p, n, np.int64).astype(w.dtype)
    if dt == I32:
        return carray(p, n, np.int32).astype(w.dtype)
    return carray(p, n, np.bool_).astype(w.dtype)


@njit(cache=True)
def ival(C, s):
    """An int64 slot (an index map) as a flat int64 array."""
    obj = C[0][s, 0]
    return carray(_voidptr(_load_i64(obj + C[1])), size_of(obj, C[1]), np.int64)


@njit(cache=True)
def grad(C, s):
    """The gradient buffer of slot s: the caller's array when exported, else a piece of the arena."""
    ex = C[2][s]
    if ex != 0:
        return carray(_voidptr(_load_i64(ex + C[1])), size_of(ex, C[1]), C[6].dtype)
    o = C[4][s]
    return C[3][o: o + size_of(C[0][s, 0], C[1])]


@njit(cache=True, inline="always")
def rg(C, s):
    return s >= 0 and (C[0][s, 1] & RG) != 0


@njit(cache=True)
def shape(C, s):
    return shape_of(C[0][s, 0], C[1])


# -- shared index helpers ------------------------------------------------------------------
@njit(cache=True)
def reduce_map(shp, mask):
    """For each flat index of an array of shape ``shp``, the flat index after summing the axes
    in bit-mask ``mask`` with keepdim (the same flat layout as without keepdim)."""
    nd = shp.shape[0]
    ostride = np.zeros(nd, np.int64)
    acc = 1
    for k in range(nd - 1, -1, -1):
        if not (mask >> k) & 1:
            ostride[k] = acc
            acc *= shp[k]
    n = 1
    for k in range(nd):
        n *= shp[k]
    out = np.empty(n, np.int64)
    idx = np.zeros(nd, np.int64)
    o = 0
    for i in range(n):
        out[i] = o
        k = nd - 1
        while k >= 0:  # odometer increment
            idx[k] += 1
            o += ostride[k]
            if idx[k] < shp[k]:
                break
            o -= ostride[k] * idx[k]
            idx[k] = 0
            k -= 1
    return out


@njit(cache=True)
def expand_mask(small, big):
    """Axes of ``big`` that broadcasting ``small`` (right-aligned) to ``big`` repeats."""
    lead = big.shape[0] - small.shape[0]
    m = 0
    for k in range(big.shape[0]):
        if k < lead or (small[k - lead] == 1 and big[k] != 1):
            m |= 1 << k
    return m


@njit(cache=True)
def permute_map(in_shape, perm_code):
    """For each flat index of the permuted array, the flat index into the source."""
    nd = in_shape.shape[0]
    instride = np.empty(nd, np.int64)
    acc = 1
    for k in range(nd - 1, -1, -1):
        instride[k] = acc
        acc *= in_shape[k]
    oshape = np.empty(nd, np.int64)
    ostride = np.empty(nd, np.int64)  # source stride of each output axis
    for k in range(nd):
        p = (perm_code >> (4 * k)) & 15
        oshape[k] = in_shape[p]
        ostride[k] = instride[p]
    out = np.empty(acc, np.int64)
    idx = np.zeros(nd, np.int64)
    o = 0
    for i in range(acc):
        out[i] = o
        k = nd - 1
        while k >= 0:
            idx[k] += 1
            o += ostride[k]
            if idx[k] < oshape[k]:
                break
            o -= ostride[k] * idx[k]
            idx[k] = 0
            k -= 1
    return out


# -- numeric adjoints, one per row of ops.TABLE ----------------------------------------------
# Each reads the output gradient g and accumulates into the inputs that require grad.
@njit(cache=True)
def adj_add(e, R, RF, C):
    g = grad(C, R[e, 4])
    if rg(C, R[e, 1]):
        grad(C, R[e, 1])[:] += g
    if rg(C, R[e, 2]):
        grad(C, R[e, 2])[:] += g


@njit(cache=True)
def adj_sub(e, R, RF, C):
    g = grad(C, R[e, 4])
    if rg(C, R[e, 1]):
        grad(C, R[e, 1])[:] += g
    if rg(C, R[e, 2]):
        grad(C, R[e, 2])[:] -= g


@njit(cache=True)
def adj_mul(e, R, RF, C):
    g = grad(C, R[e, 4])
    a, b = R[e, 1], R[e, 2]
    if rg(C, a):
        grad(C, a)[:] += g * val(C, b)
    if rg(C, b):
        grad(C, b)[:] += g * val(C, a)


@njit(cache=True)
def adj_div(e, R, RF, C):
    g = grad(C, R[e, 4])
    a, b = R[e, 1], R[e, 2]
    vb = val(C, b)
    if rg(C, a):
        grad(C, a)[:] += g / vb
    if rg(C, b):
        grad(C, b)[:] += -g * val(C, a) / (vb * vb)


@njit(cache=True)
def adj_pow(e, R, RF, C):
    g = grad(C, R[e, 4])
    a, b = R[e, 1], R[e, 2]
    va, vb = val(C, a), val(C, b)
    if rg(C, a):
        ga = grad(C, a)
        for i in range(g.size):
            if vb[i] != 0:
                ga[i] += g[i] * vb[i] * va[i] ** (vb[i] - 1)
    if rg(C, b):
        gb = grad(C, b)
        out = val(C, R[e, 4])
        for i in range(g.size):
            if not (va[i] == 0 and vb[i] >= 0):
                gb[i] += g[i] * out[i] * np.log(va[i])


@njit(cache=True)
def adj_identity(e, R, RF, C):
    """add a scalar, view/reshape, cast, clone: the gradient passes through unchanged."""
    grad(C, R[e, 1])[:] += grad(C, R[e, 4])


@njit(cache=True)
def adj_cast(e, R, RF, C):
    """The gradient passes back rounded to the input's dtype, as torch computes it in that dtype."""
    a = R[e, 1]
    g = grad(C, R[e, 4])
    if C[0][a, 3] == F32:
        grad(C, a)[:] += g.astype(np.float32).astype(C[6].dtype)
    else:
        grad(C, a)[:] += g


@njit(cache=True)
def adj_neg(e, R, RF, C):
    grad(C, R[e, 1])[:] -= grad(C, R[e, 4])


@njit(cache=True)
def adj_mul_scalar(e, R, RF, C):
    grad(C, R[e, 1])[:] += grad(C, R[e, 4]) * RF[e, 7]


@njit(cache=True)
def adj_div_scalar(e, R, RF, C):
    grad(C, R[e, 1])[:] += grad(C, R[e, 4]) / RF[e, 7]


@njit(cache=True)
def adj_pow_scalar(e, R, RF, C):
    c = RF[e, 7]
    if c != 0.0:
        a = R[e, 1]
        grad(C, a)[:] += grad(C, R[e, 4]) * c * val(C, a) ** (c - 1.0)


@njit(cache=True)
def adj_rpow_scalar(e, R, RF, C):
    c = RF[e, 7]
    g, ga, out, va = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 4]), val(C, R[e, 1])
    lc = np.log(c) if c > 0 else np.nan
    for i in range(g.size):
        if not (c == 0 and va[i] >= 0):
            ga[i] += g[i] * out[i] * lc


@njit(cache=True)
def adj_exp(e, R, RF, C):
    grad(C, R[e, 1])[:] += grad(C, R[e, 4]) * val(C, R[e, 4])


@njit(cache=True)
def adj_log(e, R, RF, C):
    grad(C, R[e, 1])[:] += grad(C, R[e, 4]) / val(C, R[e, 1])


@njit(cache=True)
def adj_sin(e, R, RF, C):
    grad(C, R[e, 1])[:] += grad(C, R[e, 4]) * np.cos(val(C, R[e, 1]))


@njit(cache=True)
def adj_cos(e, R, RF, C):
    grad(C, R[e, 1])[:] += grad(C, R[e, 4]) * -np.sin(val(C, R[e, 1]))


@njit(cache=True)
def adj_tanh(e, R, RF, C):
    y = val(C, R[e, 4])
    grad(C, R[e, 1])[:] += grad(C, R[e, 4]) * (1 - y * y)


@njit(cache=True)
def adj_sigmoid(e, R, RF, C):
    y = val(C, R[e, 4])
    grad(C, R[e, 1])[:] += grad(C, R[e, 4]) * ((1 - y) * y)


@njit(cache=True)
def adj_relu(e, R, RF, C):
    g, ga, y = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 4])
    for i in range(g.size):
        if y[i] > 0:
            ga[i] += g[i]


@njit(cache=True)
def adj_sqrt(e, R, RF, C):
    grad(C, R[e, 1])[:] += grad(C, R[e, 4]) / (2 * val(C, R[e, 4]))


@njit(cache=True)
def adj_abs(e, R, RF, C):
    grad(C, R[e, 1])[:] += grad(C, R[e, 4]) * np.sign(val(C, R[e, 1]))


@njit(cache=True)
def adj_sum(e, R, RF, C):
    """sum (f0 = 1) and mean (f0 = 1/count) over the axes in bit-mask i0."""
    a = R[e, 1]
    g, ga = grad(C, R[e, 4]), grad(C, a)
    m = reduce_map(shape(C, a), R[e, 5])
    scale = RF[e, 7]
    for i in range(ga.size):
        ga[i] += g[m[i]] * scale


@njit(cache=True)
def adj_expand(e, R, RF, C):
    a = R[e, 1]
    g, ga = grad(C, R[e, 4]), grad(C, a)
    big = shape(C, R[e, 4])
    m = reduce_map(big, expand_mask(shape(C, a), big))
    for i in range(g.size):
        ga[m[i]] += g[i]


@njit(cache=True)
def adj_mm(e, R, RF, C):
    a, b = R[e, 1], R[e, 2]
    sa, sb = shape(C, a), shape(C, b)
    g = grad(C, R[e, 4]).reshape((sa[0], sb[1]))
    if rg(C, a):
        grad(C, a).reshape((sa[0], sa[1]))[:, :] += np.dot(g, val(C, b).reshape((sb[0], sb[1])).T)
    if rg(C, b):
        grad(C, b).reshape((sb[0], sb[1]))[:, :] += np.dot(val(C, a).reshape((sa[0], sa[1])).T, g)


@njit(cache=True)
def adj_permute(e, R, RF, C):
    a = R[e, 1]
    g, ga = grad(C, R[e, 4]), grad(C, a)
    m = permute_map(shape(C, a), R[e, 5])
    for i in range(g.size):
        ga[m[i]] += g[i]


@njit(cache=True)
def adj_getitem(e, R, RF, C):
    """b is an int64 slot mapping each output element to its flat source index."""
    g, ga, idx = grad(C, R[e, 4]), grad(C, R[e, 1]), ival(C, R[e, 2])
    for k in range(g.size):
        ga[idx[k]] += g[k]


@njit(cache=True)
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


@njit(cache=True)
def adj_reciprocal(e, R, RF, C):
    y = val(C, R[e, 4])
    grad(C, R[e, 1])[:] += -grad(C, R[e, 4]) * (y * y)


@njit(cache=True)
def adj_scatter_flat(e, R, RF, C):
    """The transpose of getitem: the output gradient gathered at the index map."""
    g, ga, idx = grad(C, R[e, 4]), grad(C, R[e, 1]), ival(C, R[e, 2])
    for k in range(idx.size):
        ga[k] += g[idx[k]]


@njit(cache=True)
def mm_forward(a, b):
    return np.dot(a, b)


# -- the interpreter -----------------------------------------------------------------------
# Rows name their adjoint; the engine maps each opcode to its kernel id here.
KERNELS = ("adj_add", "adj_sub", "adj_mul", "adj_div", "adj_pow", "adj_identity", "adj_neg",
           "adj_mul_scalar", "adj_div_scalar", "adj_pow_scalar", "adj_rpow_scalar", "adj_reciprocal",
           "adj_exp", "adj_log", "adj_sin", "adj_cos", "adj_tanh", "adj_sigmoid", "adj_relu", "adj_sqrt",
           "adj_abs", "adj_sum", "adj_expand", "adj_mm", "adj_permute", "adj_getitem", "adj_scatter_flat",
           "adj_setitem", "adj_cast")
(K_ADD, K_SUB, K_MUL, K_DIV, K_POW, K_IDENTITY, K_NEG, K_MUL_SCALAR, K_DIV_SCALAR, K_POW_SCALAR,
 K_RPOW_SCALAR, K_RECIPROCAL, K_EXP, K_LOG, K_SIN, K_COS, K_TANH, K_SIGMOID, K_RELU, K_SQRT, K_ABS,
 K_SUM, K_EXPAND, K_MM, K_PERMUTE, K_GETITEM, K_SCATTER_FLAT, K_SETITEM, K_CAST) = range(len(KERNELS))
OP_KERNEL = np.array([KERNELS.index(r.kernel) for r in ops.TABLE], np.int64)


@njit(cache=True)
def dispatch(k, e, R, RF, C):
    if k == K_ADD:
        adj_add(e, R, RF, C)
    elif k == K_SUB:
        adj_sub(e, R, RF, C)
    elif k == K_MUL:
        adj_mul(e, R, RF, C)
    elif k == K_DIV:
        adj_div(e, R, RF, C)
    elif k == K_POW:
        adj_pow(e, R, RF, C)
    elif k == K_IDENTITY:
        adj_identity(e, R, RF, C)
    elif k == K_NEG:
        adj_neg(e, R, RF, C)
    elif k == K_MUL_SCALAR:
        adj_mul_scalar(e, R, RF, C)
    elif k == K_DIV_SCALAR:
        adj_div_scalar(e, R, RF, C)
    elif k == K_POW_SCALAR:
        adj_pow_scalar(e, R, RF, C)
    elif k == K_RPOW_SCALAR:
        adj_rpow_scalar(e, R, RF, C)
    elif k == K_RECIPROCAL:
        adj_reciprocal(e, R, RF, C)
    elif k == K_EXP:
        adj_exp(e, R, RF, C)
    elif k == K_LOG:
        adj_log(e, R, RF, C)
    elif k == K_SIN:
        adj_sin(e, R, RF, C)
    elif k == K_COS:
        adj_cos(e, R, RF, C)
    elif k == K_TANH:
        adj_tanh(e, R, RF, C)
    elif k == K_SIGMOID:
        adj_sigmoid(e, R, RF, C)
    elif k == K_RELU:
        adj_relu(e, R, RF, C)
    elif k == K_SQRT:
        adj_sqrt(e, R, RF, C)
    elif k == K_ABS:
        adj_abs(e, R, RF, C)
    elif k == K_SUM:
        adj_sum(e, R, RF, C)
    elif k == K_EXPAND:
        adj_expand(e, R, RF, C)
    elif k == K_MM:
        adj_mm(e, R, RF, C)
    elif k == K_PERMUTE:
        adj_permute(e, R, RF, C)
    elif k == K_GETITEM:
        adj_getitem(e, R, RF, C)
    elif k == K_SCATTER_FLAT:
        adj_scatter_flat(e, R, RF, C)
    elif k == K_SETITEM:
        adj_setitem(e, R, RF, C)
    elif k == K_CAST:
        adj_cast(e, R, RF, C)
    else:
        return ERR_OPCODE
    return OK


@njit(cache=True)
def plan(R, S, roots, lo):
    """Mark the slots whose gradient reaches a root; fail on an entry already freed."""
    need = np.zeros(S.shape[0], np.bool_)
    for r in roots:
        need[r] = True
    for e in range(R.shape[0] - 1, lo - 1, -1):
        o = R[e, 4]
        if not need[o]:
            continue
        if S[o, 1] & FREED:
            return ERR_FREED, e, need
        for k in range(1, 4):
            s = R[e, k]
            if s >= 0 and (S[s, 1] & RG):
                need[s] = True
    return OK, -1, need


@njit(cache=True)
def arena(S, hoff, need, export, witness):
    """Offsets of the non-exported gradient buffers in one zeroed arena."""
    goff = np.full(S.shape[0], -1, np.int64)
    total = 0
    for s in range(S.shape[0]):
        if need[s] and export[s] == 0:
            goff[s] = total
            total += size_of(S[s, 0], hoff)
    return goff, np.zeros(total, witness.dtype)


@njit(cache=True)
def replay(R, RF, S, hoff, export, need, goff, garena, lo, hi, tcode, witness, op_kernel):
    """Walk entries hi-1 .. lo in reverse, running the adjoint of each one that is needed."""
    C = (S, hoff, export, garena, goff, tcode, witness)
    for e in range(hi - 1, lo - 1, -1):
        if need[R[e, 4]]:
            if dispatch(op_kernel[R[e, 0]], e, R, RF, C) != OK:
                return ERR_OPCODE, e
    return OK, -1


@njit(cache=True)
def backward(R, RF, S, hoff, export, roots, tcode, witness, op_kernel):
    """The whole backward of one tape in one call: plan, arena, replay."""
    status, where, need = plan(R, S, roots, 0)
    if status != OK:
        return status, where, need
    goff, garena = arena(S, hoff, need, export, witness)
    status, where = replay(R, RF, S, hoff, export, need, goff, garena, 0, R.shape[0], tcode, witness, op_kernel)
    return status, where, need
