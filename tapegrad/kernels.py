"""The jitted CPU interpreter: numeric adjoint kernels and the one loop that replays a tape.

Imported on the first backward only (Numba's import and compilation stay out of
``import tapegrad``). Values are read in place: a slot holds the address of a NumPy array
object, and ``view`` reads the array's data pointer and shape from its C header (NumPy's
public ``PyArrayObject`` layout; the offset is found and checked at start-up by
``engine_cpu.header_offset``).

Every kernel has the signature ``k(e, R, RF, C)``: entry ``e`` of the int rows ``R`` and
their float view ``RF``; ``C`` is the context tuple built by ``replay``.
"""
import ctypes
import functools
import math
import os
import sys

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
import numba
from numba import carray, types
from numba.extending import intrinsic

from . import blas, ops

# NumPy's error model: a float division by zero gives inf or nan, as in NumPy and torch (sqrt's
# adjoint at 0 is inf). Numba's default raised ZeroDivisionError from inside the kernel.
njit = functools.partial(numba.njit, error_model="numpy")

RG = 1  # tape.REQUIRES_GRAD
FREED = 8  # tape.FREED
F32, F64, I64, I32, BOOL = 0, 1, 2, 3, 4

# status codes returned to the driver
OK, ERR_FREED, ERR_OPCODE, ERR_PYTHON, ERR_NAN = 0, 1, 2, 3, 4


def _keep_freed_memory():
    """glibc hands blocks over 128 KiB back to the OS when freed (and trims the heap top), so each
    large array of the next step page-faults in afresh: 22k faults, most of W3's time (one
    forward+backward of 1M float64 values), where torch's steps fault about none. Serving blocks
    up to 32 MiB from the heap and keeping up to 128 MiB of freed heap makes them reusable.
    Linux/glibc only; TAPEGRAD_MALLOC=default leaves malloc as it is."""
    if os.environ.get("TAPEGRAD_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 128 << 20)


_keep_freed_memory()


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
def fill_slots(S, lo, values, items_off, none, hoff, tn_off, lut):
    """Complete the slots that recording left as written at growth (tape.py): slots from ``lo`` on
    get their values' addresses, read from the tape's ``values`` list (its item array: CPython
    keeps the object addresses there, checked by engine_cpu once per process), so recording makes
    no id() int; then each dtype code left at -1 is read from the value's descr->type_num (the
    descr pointer follows data, nd, dims, strides, base in the array header). Returns whether any
    slot holds float64, which decides the interpreter's dtype."""
    items = _load_i64(values + items_off)
    for s in range(lo, S.shape[0]):
        obj = _load_i64(items + 8 * s)
        if obj != none:  # (a value already dropped: its slot is FREED and keeps the old address)
            S[s, 0] = obj
    any64 = False
    for s in range(S.shape[0]):
        if S[s, 3] == -1:
            descr = _load_i64(S[s, 0] + hoff + 40)
            S[s, 3] = lut[_load_i32(descr + tn_off)]
        if S[s, 3] == F64:
            any64 = True
    return any64


@njit(cache=True)
def list_probe(values, items_off):
    """The first two addresses in a list's item array: checked against id() once per process."""
    items = _load_i64(values + items_off)
    return _load_i64(items), _load_i64(items + 8)


@njit(cache=True)
def header_probe(obj, hoff):
    """(data pointer, ndim, size): checked against NumPy once per process."""
    return _load_i64(obj + hoff), ndim_of(obj, hoff), size_of(obj, hoff)


# -- the context: C = (P, witness, tcode, hoff) ------------------------------------------------
# P is the per-slot pointer table built once per replay by ``pointers``: kernels then reach a
# value or a gradient buffer with two loads, and no reference-counted array (garena slices, a
# tuple of arrays) crosses a call: that cost 130 ns an entry against 14 ns now (W1). P's last
# row is the window of a blocked run (``replay_packed``): [elements of the run's slots, block
# start, block end]; a fifth array in C instead cost W1's backward 50 ns an entry (reference counts).
VPTR, SIZE, GPTR, DT, OBJ, FLAGS = 0, 1, 2, 3, 4, 5


@njit(cache=True)
def pointers(R, S, hoff, export, need, goff, garena):
    """For every slot a needed row touches: value data pointer, size, gradient pointer (0 when
    it has none), dtype, array object address and flags. Slots of rows not replayed (other
    computations left on a retained tape) are skipped."""
    n = S.shape[0]
    touch = need.copy()
    for e in range(R.shape[0]):
        if need[R[e, 4]]:
            for k in range(1, 4):
                if R[e, k] >= 0:
                    touch[R[e, k]] = True
    P = np.zeros((n + 1, 6), np.int64)  # (row n: the window, closed)
    base = garena.ctypes.data
    item = garena.itemsize
    for s in range(n):
        if not touch[s]:
            continue
        obj = S[s, 0]
        P[s, VPTR] = _load_i64(obj + hoff)
        P[s, SIZE] = size_of(obj, hoff)
        P[s, DT] = S[s, 3]
        P[s, OBJ] = obj
        P[s, FLAGS] = S[s, 1]
        if export[s] != 0:
            P[s, GPTR] = _load_i64(export[s] + hoff)
        elif goff[s] >= 0:
            P[s, GPTR] = base + item * goff[s]
    return P


@njit(cache=True, inline="always")
def span(C, s):
    """(first element, count) of slot s that the adjoints see: all of it, or the current block
    when a blocked run (``replay_packed``) replays elementwise rows of W[0] elements a block at a
    time. Outside a run the window W (P's last row) is [0, 0, 0] (a slot of no elements sees no
    elements either way)."""
    P = C[0]
    w = P.shape[0] - 1
    if P[s, SIZE] == P[w, 0]:
        return P[w, 1], P[w, 2] - P[w, 1]
    return 0, P[s, SIZE]


@njit(cache=True)
def val(C, s):
    """The value of slot s as a flat array of the interpreter's dtype (a view when it matches)."""
    P, w = C[0], C[1]
    lo, n = span(C, s)
    p = P[s, VPTR]
    dt = P[s, DT]
    if dt == C[2]:
        return carray(_voidptr(p + lo * w.itemsize), n, w.dtype)
    if dt == F32:
        return carray(_voidptr(p + 4 * lo), n, np.float32).astype(w.dtype)
    if dt == F64:
        return carray(_voidptr(p + 8 * lo), n, np.float64).astype(w.dtype)
    if dt == I64:
        return carray(_voidptr(p + 8 * lo), n, np.int64).astype(w.dtype)
    if dt == I32:
        return carray(_voidptr(p + 4 * lo), n, np.int32).astype(w.dtype)
    return carray(_voidptr(p + lo), n, np.bool_).astype(w.dtype)


@njit(cache=True)
def ival(C, s):
    """An int64 slot (an index map) as a flat int64 array."""
    P = C[0]
    return carray(_voidptr(P[s, VPTR]), P[s, SIZE], np.int64)


@njit(cache=True)
def grad(C, s):
    """The gradient buffer of slot s: the caller's array when exported, else a piece of the arena
    (the current block of it in a blocked run, as ``val``; a scratch block when the run owns it).
    """
    lo, n = span(C, s)
    if C[0][s, FLAGS] & SCRATCH:
        lo = 0
    return carray(_voidptr(C[0][s, GPTR] + lo * C[1].itemsize), n, C[1].dtype)


@njit(cache=True, inline="always")
def rg(C, s):
    return s >= 0 and (C[0][s, FLAGS] & RG) != 0


@njit(cache=True)
def dtype_code(C, s):
    return C[0][s, DT]


@njit(cache=True)
def shape(C, s):
    return shape_of(C[0][s, OBJ], C[3])


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
    return strided_offsets(shp, ostride)


@njit(cache=True)
def strided_offsets(shape, stride):
    """For each flat (C-order) index of an array of ``shape``, the offset sum(index_k * stride_k):
    where that element sits in a buffer laid out with ``stride``."""
    nd = shape.shape[0]
    n = 1
    for k in range(nd):
        n *= shape[k]
    out = np.empty(n, np.int64)
    idx = np.zeros(nd, np.int64)
    o = 0
    for i in range(n):
        out[i] = o
        k = nd - 1
        while k >= 0:  # odometer increment
            idx[k] += 1
            o += stride[k]
            if idx[k] < shape[k]:
                break
            o -= stride[k] * idx[k]
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
    return strided_offsets(oshape, ostride)


# -- numeric adjoints, one per row of ops.TABLE ----------------------------------------------
# Each reads the output gradient g and accumulates into the inputs that require grad. Explicit
# loops, not array expressions: those allocate a temporary per entry, which dominates small ops.
@njit(cache=True)
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


@njit(cache=True)
def adj_sub(e, R, RF, C):
    o = R[e, 4]
    g = grad(C, o)
    if rg(C, R[e, 1]):
        bsum(C, R[e, 1], o, g, 1.0)
    if rg(C, R[e, 2]):
        bsum(C, R[e, 2], o, g, -1.0)


@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
def adj_pow(e, R, RF, C):
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    g = grad(C, o)
    va, vb = bval(C, a, o), bval(C, b, o)
    if rg(C, a):
        t = target(C, a, g.size)
        for i in range(g.size):
            if vb[i] != 0:
                t[i] += g[i] * vb[i] * va[i] ** (vb[i] - 1)
        settle(C, a, o, t)
    if rg(C, b):
        t, out = target(C, b, g.size), val(C, o)
        for i in range(g.size):
            if not (va[i] == 0 and vb[i] >= 0):
                t[i] += g[i] * out[i] * np.log(va[i])
        settle(C, b, o, t)


@njit(cache=True)
def adj_identity(e, R, RF, C):
    """add a scalar, view/reshape, clone: the gradient passes through unchanged."""
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, g[i], f)


@njit(cache=True)
def adj_cast(e, R, RF, C):
    """The gradient passes back rounded to the input's dtype, as torch computes it in that dtype."""
    a = R[e, 1]
    g = grad(C, R[e, 4])
    if dtype_code(C, a) == F32:
        grad(C, a)[:] += g.astype(np.float32).astype(C[1].dtype)
    else:
        grad(C, a)[:] += g


@njit(cache=True)
def adj_neg(e, R, RF, C):
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, -g[i], f)


@njit(cache=True)
def adj_mul_scalar(e, R, RF, C):
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    c = RF[e, 7]
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, g[i] * c, f)


@njit(cache=True)
def adj_div_scalar(e, R, RF, C):
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    c = RF[e, 7]
    for i in range(g.size):
        ga[i] += g[i] / c


@njit(cache=True)
def adj_pow_scalar(e, R, RF, C):
    c = RF[e, 7]
    if c != 0.0:
        g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
        f = claim(C, R[e, 1])
        if c == 2.0:  # x ** 2: no pow call per element
            for i in range(g.size):
                put(ga, i, 2.0 * g[i] * x[i], f)
        else:
            for i in range(g.size):
                put(ga, i, g[i] * c * x[i] ** (c - 1.0), f)


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
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    y = val(C, R[e, 4])
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, g[i] * y[i], f)


@njit(cache=True)
def adj_log(e, R, RF, C):
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    x = val(C, R[e, 1])
    for i in range(g.size):
        ga[i] += g[i] / x[i]


@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
def adj_tanh(e, R, RF, C):
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    y = val(C, R[e, 4])
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, g[i] * (1 - y[i] * y[i]), f)


@njit(cache=True)
def adj_sigmoid(e, R, RF, C):
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    y = val(C, R[e, 4])
    f = claim(C, R[e, 1])
    for i in range(g.size):
        put(ga, i, g[i] * ((1 - y[i]) * y[i]), f)


@njit(cache=True)
def adj_relu(e, R, RF, C):
    g, ga, y = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 4])
    for i in range(g.size):
        if y[i] > 0:
            ga[i] += g[i]


@njit(cache=True)
def adj_sqrt(e, R, RF, C):
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    y = val(C, R[e, 4])
    for i in range(g.size):
        ga[i] += g[i] / (2 * y[i])


@njit(cache=True)
def adj_abs(e, R, RF, C):
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    x = val(C, R[e, 1])
    for i in range(g.size):
        ga[i] += g[i] * np.sign(x[i])


@njit(cache=True)
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


@njit(cache=True)
def adj_expand(e, R, RF, C):
    bsum(C, R[e, 1], R[e, 4], grad(C, R[e, 4]), 1.0)


# Matrix products run on the BLAS that blas.py picks: NumPy's own, whose cblas_?gemm the adjoints
# call through a pointer looked up each process (a cached kernel cannot hold an address), or else
# SciPy's through Numba's own entry point, the one np.dot calls.
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp, types.voidptr, types.voidptr,
    types.intp, types.voidptr, types.intp, types.voidptr, types.voidptr, types.intp))
_N, _T = np.int8(ord("n")), np.int8(ord("t"))
_GEMM_PTRS = (ctypes.c_int64 * 2)(blas.SGEMM, blas.DGEMM)  # 0: use numba_xxgemm
llvm_binding.add_symbol("tapegrad_gemm_ptrs", ctypes.addressof(_GEMM_PTRS))


@intrinsic
def _gemm_ptr(typingctx, which):
    """The process's cblas_?gemm address (which: 0 float32, 1 float64), 0 when NumPy bundles none."""
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        table = builder.module.globals.get("tapegrad_gemm_ptrs")
        if table is None:
            table = ir.GlobalVariable(builder.module, ir.ArrayType(i64, 2), "tapegrad_gemm_ptrs")
            table.linkage = "external"
        return builder.load(builder.gep(table, [ir.Constant(i64, 0), args[0]]))
    return types.int64(types.int64), codegen


@intrinsic
def _cblas_gemm(typingctx, fptr, ta, tb, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc):
    """cblas_?gemm(RowMajor, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc) at address fptr
    (ILP64: 64-bit sizes); ta and tb are CblasNoTrans (111) or CblasTrans (112)."""
    def codegen(context, builder, sig, args):
        i32, i64, p8 = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
        ft = context.get_value_type(sig.args[6])
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, ft, p8, i64, p8, i64, ft, p8, i64])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        a = list(args)
        builder.call(fn, [ir.Constant(i32, 101), builder.trunc(a[1], i32), builder.trunc(a[2], i32), a[3], a[4], a[5],
                          a[6], builder.inttoptr(a[7], p8), a[8], builder.inttoptr(a[9], p8), a[10], a[11],
                          builder.inttoptr(a[12], p8), a[13]])
        return context.get_dummy_value()
    return types.void(*(types.int64,) * 6, alpha, *(types.int64,) * 4, alpha, types.int64, types.int64), codegen


@njit(cache=True)
def gemm_acc(ta, tb, m, n, k, pa, pb, pc, ab):
    """C (m x n, C order, at pc) = op(A) @ op(B) + beta C: A is m x k, or k x m when ta (used
    transposed); B is k x n, or n x k when tb. ``ab`` holds alpha and beta in the dtype."""
    if m == 0 or n == 0:
        return
    if k == 0:  # an empty product: C = beta C (BLAS may skip the call)
        if ab[1] == 0:
            c = carray(_voidptr(pc), m * n, ab.dtype)
            c[:] = 0
        return
    f = _gemm_ptr(1 if ab.itemsize == 8 else 0)
    if f != 0:
        _cblas_gemm(f, 112 if ta else 111, 112 if tb else 111, m, n, k, ab[0], pa, m if ta else k, pb,
                    k if tb else n, ab[1], pc, n)
        return
    kind = np.int8(ord("d")) if ab.itemsize == 8 else np.int8(ord("s"))
    # row-major C = A @ B is column-major C^T = B^T @ A^T: B goes first
    _xxgemm(kind, _T if tb else _N, _T if ta else _N, n, m, k, _voidptr(ab.ctypes.data), _voidptr(pb),
            k if tb else n, _voidptr(pa), m if ta else k, _voidptr(ab.ctypes.data + ab.itemsize), _voidptr(pc), n)


@njit(cache=True)
def alpha_beta(like, fresh):
    """[alpha, beta] for gemm_acc: accumulate (beta 1), or assign into a fresh region (beta 0)."""
    ab = np.ones(2, like.dtype)
    if fresh:
        ab[1] = 0
    return ab


@njit(cache=True)
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


@njit(cache=True)
def adj_permute(e, R, RF, C):
    a = R[e, 1]
    g, ga = grad(C, R[e, 4]), grad(C, a)
    m = permute_map(shape(C, a), R[e, 5])
    for i in range(g.size):
        ga[m[i]] += g[i]


@njit(cache=True)
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
    g, ga = grad(C, R[e, 4]), grad(C, R[e, 1])
    y = val(C, R[e, 4])
    for i in range(g.size):
        ga[i] += -g[i] * (y[i] * y[i])


@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
def adj_function(e, R, RF, C):
    """A custom autograd.Function: its backward is Python, run by the engine between replay
    segments; a replay that reaches this row is a driver bug (dispatch reports ERR_PYTHON)."""
    return ERR_PYTHON


@njit(cache=True)
def mm_forward(a, b):
    return np.dot(a, b)


# -- fresh gradient regions -------------------------------------------------------------------
# replay_packed leaves arena regions uninitialised and marks them FRESH in the pointer table;
# the first adjoint that writes one assigns instead of accumulating (a kernel that can, listed in
# ASSIGNS, claims the region; for the others the region is zeroed first). Saves a zeroing pass
# and a read per gradient buffer: a third of W3's backward traffic.
FRESH = 16
SCRATCH = 32  # a blocked run's own gradient: its GPTR is a block-sized scratch (replay_packed)


@njit(cache=True)
def claim(C, s):
    """Whether s's region is fresh (this write assigns); it is not fresh afterwards."""
    P = C[0]
    f = P[s, FLAGS]
    if f & FRESH:
        P[s, FLAGS] = f & ~FRESH
        return True
    return False


@njit(cache=True)
def put(buf, i, v, fresh):
    if fresh:
        buf[i] = v
    else:
        buf[i] += v


# -- broadcasting helpers: binary rows record operands of their own shapes -------------------
@njit(cache=True)
def nel(C, s):
    return span(C, s)[1]


@njit(cache=True)
def suffix_of(small, big):
    """Whether ``small`` (leading 1s dropped) equals the trailing dims of ``big``: broadcasting
    it repeats whole blocks, so flat index i of big reads i % size(small)."""
    lead = 0
    while lead < small.shape[0] and small[lead] == 1:
        lead += 1
    k = small.shape[0] - lead
    if k > big.shape[0]:
        return False
    for j in range(k):
        if small[lead + j] != big[big.shape[0] - k + j]:
            return False
    return True


@njit(cache=True)
def bval(C, s, o):
    """Slot s's value broadcast to slot o's shape, flat (s's own buffer when no broadcast)."""
    v = val(C, s)
    n = nel(C, o)
    if v.size == n:
        return v
    so = shape(C, o)
    return v[reduce_map(so, expand_mask(shape(C, s), so))]


@njit(cache=True)
def bsum(C, s, o, t, scale):
    """grad(s) += scale * t, t shaped like slot o (flat), summed over the axes s was broadcast along."""
    gs = grad(C, s)
    n = gs.size
    f = claim(C, s)
    if n == t.size:
        for i in range(n):
            put(gs, i, t[i] * scale, f)
        return
    if n == 1:
        acc = 0.0
        for i in range(t.size):
            acc += t[i]
        put(gs, 0, acc * scale, f)
        return
    so, ss = shape(C, o), shape(C, s)
    if suffix_of(ss, so):  # a bias: whole rows of t fold onto s
        acc = np.zeros(n, np.float64)
        for r in range(t.size // n):
            row = t[r * n:(r + 1) * n]  # not t[r * n + j]: a possibly negative index blocks vectorising
            for j in range(n):
                acc[j] += row[j]
        for j in range(n):
            put(gs, j, acc[j] * scale, f)
        return
    if f:
        gs[:] = 0
    m = reduce_map(so, expand_mask(ss, so))
    for i in range(t.size):
        gs[m[i]] += t[i] * scale


@njit(cache=True)
def target(C, s, n):
    """Where an adjoint writes the contribution for slot s: its gradient buffer when s has the
    output's size n, else a zeroed scratch of size n that ``settle`` folds back with bsum."""
    gs = grad(C, s)
    if gs.size == n:
        return gs
    return np.zeros(n, gs.dtype)


@njit(cache=True)
def settle(C, s, o, t):
    if nel(C, s) != t.size:
        bsum(C, s, o, t, 1.0)


@njit(cache=True)
def blocks(shp, d):
    """(outer, n, inner) of shape ``shp`` around axis d."""
    outer, inner = 1, 1
    for k in range(d):
        outer *= shp[k]
    for k in range(d + 1, shp.shape[0]):
        inner *= shp[k]
    return outer, (shp[d] if shp.shape[0] else 1), inner


# -- vectorisable sin and cos ------------------------------------------------------------------
# libm's sin/cos are scalar calls (about 10 ns an element); this is fdlibm's kernel with a
# branch-free Cody-Waite reduction, which LLVM vectorises. Within 1 ulp of NumPy for
# |x| <= 1e5 (tests/test_kernels_math.py); larger or non-finite arguments take libm.
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


# -- adjoints of the full op surface ---------------------------------------------------------
@njit(cache=True)
def adj_rsqrt(e, R, RF, C):
    g, ga, y = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 4])
    for i in range(g.size):
        ga[i] += -0.5 * g[i] * (y[i] * y[i] * y[i])


@njit(cache=True)
def adj_log1p(e, R, RF, C):
    g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
    for i in range(g.size):
        ga[i] += g[i] / (x[i] + 1)


@njit(cache=True)
def adj_expm1(e, R, RF, C):
    g, ga, y = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 4])
    for i in range(g.size):
        ga[i] += g[i] * (y[i] + 1)


@njit(cache=True)
def adj_tan(e, R, RF, C):
    g, ga, y = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 4])
    for i in range(g.size):
        ga[i] += g[i] * (1 + y[i] * y[i])


@njit(cache=True)
def adj_erf(e, R, RF, C):
    g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
    for i in range(g.size):
        ga[i] += g[i] * 1.1283791670955126 * np.exp(-x[i] * x[i])  # 2/sqrt(pi)


@njit(cache=True)
def adj_leaky_relu(e, R, RF, C):
    g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
    slope = RF[e, 7]
    for i in range(g.size):
        ga[i] += g[i] if x[i] > 0 else g[i] * slope


@njit(cache=True)
def adj_gelu(e, R, RF, C):
    """i0 = 0: the exact gelu x * Phi(x); i0 = 1: torch's tanh approximation."""
    g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
    if R[e, 5] == 0:
        for i in range(g.size):
            xi = x[i]
            cdf = 0.5 * (1 + math.erf(xi * 0.7071067811865476))
            pdf = np.exp(-0.5 * xi * xi) * 0.3989422804014327
            ga[i] += g[i] * (cdf + xi * pdf)
    else:
        beta, kappa = 0.7978845608028654, 0.044715  # sqrt(2/pi)
        for i in range(g.size):
            xi = x[i]
            th = np.tanh(beta * (xi + kappa * xi * xi * xi))
            left = 0.5 * xi
            dright = (1 - th * th) * beta * (1 + 3 * kappa * xi * xi)
            ga[i] += g[i] * (0.5 * (1 + th) + left * dright)


@njit(cache=True)
def adj_softplus(e, R, RF, C):
    """f0 = beta; the bits of i1 hold the threshold (read as a float through RF)."""
    g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
    beta, threshold = RF[e, 7], RF[e, 6]
    for i in range(g.size):
        z = x[i] * beta
        if z > threshold:
            ga[i] += g[i]
        else:
            ez = np.exp(z)
            ga[i] += g[i] * ez / (ez + 1)


@njit(cache=True)
def adj_clamp(e, R, RF, C):
    """f0 = min; the bits of i1 hold max (infinite where not given)."""
    g, ga, x = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 1])
    lo, hi = RF[e, 7], RF[e, 6]
    for i in range(g.size):
        if x[i] >= lo and x[i] <= hi:
            ga[i] += g[i]


@njit(cache=True)
def adj_zero(e, R, RF, C):
    """sign, zero_, fill_: the input gets a zero gradient (nothing to add)."""
    return


@njit(cache=True)
def adj_maximum(e, R, RF, C):
    """maximum (i0 = 0) and minimum (i0 = 1): ties split the gradient in halves, as torch does."""
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    g = grad(C, o)
    va, vb = bval(C, a, o), bval(C, b, o)
    sgn = 1.0 if R[e, 5] == 0 else -1.0
    for k in (1, 2):
        s = R[e, k]
        if rg(C, s):
            t = target(C, s, g.size)
            for i in range(g.size):
                d = (va[i] - vb[i]) * sgn
                if k == 2:
                    d = -d
                if va[i] == vb[i]:
                    t[i] += 0.5 * g[i]
                elif not d < 0:
                    t[i] += g[i]
            settle(C, s, o, t)


@njit(cache=True)
def adj_where(e, R, RF, C):
    """where(c, a, b): a gets g where c holds, b where it does not; c is stored at the output's shape."""
    o, a, b = R[e, 4], R[e, 1], R[e, 2]
    g, cond = grad(C, o), val(C, R[e, 3])
    for k in (1, 2):
        s = R[e, k]
        if rg(C, s):
            t = target(C, s, g.size)
            want = k == 1
            for i in range(g.size):
                if (cond[i] != 0) == want:
                    t[i] += g[i]
            settle(C, s, o, t)


@njit(cache=True)
def adj_masked_fill(e, R, RF, C):
    """b is the mask at x's shape: filled positions get no gradient."""
    g, ga, mask = grad(C, R[e, 4]), grad(C, R[e, 1]), val(C, R[e, 2])
    for i in range(g.size):
        if mask[i] == 0:
            ga[i] += g[i]


@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
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
    elif p == 2:
        for i in range(x.size):
            j = m[i]
            if y[j] != 0:
                ga[i] += g[j] * x[i] / y[j]
    else:
        for i in range(x.size):
            j = m[i]
            if y[j] != 0 and x[i] != 0:
                ga[i] += g[j] * x[i] * abs(x[i]) ** (p - 2) / y[j] ** (p - 1)


@njit(cache=True)
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
def adj_softmax(e, R, RF, C):
    """y * (g - sum(g * y)) along dim i0."""
    a, o = R[e, 1], R[e, 4]
    g, ga, y = grad(C, o), grad(C, a), val(C, o)
    outer, n, inner = blocks(shape(C, a), R[e, 5])
    for p in range(outer):
        for j in range(inner):
            base = p * n * inner + j
            s = 0.0
            for k in range(n):
                s += g[base + k * inner] * y[base + k * inner]
            for k in range(n):
                i = base + k * inner
                ga[i] += y[i] * (g[i] - s)


@njit(cache=True)
def adj_log_softmax(e, R, RF, C):
    """g - exp(y) * sum(g) along dim i0."""
    a, o = R[e, 1], R[e, 4]
    g, ga, y = grad(C, o), grad(C, a), val(C, o)
    outer, n, inner = blocks(shape(C, a), R[e, 5])
    for p in range(outer):
        for j in range(inner):
            base = p * n * inner + j
            s = 0.0
            for k in range(n):
                s += g[base + k * inner]
            for k in range(n):
                i = base + k * inner
                ga[i] += g[i] - np.exp(y[i]) * s


@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
def adj_copy(e, R, RF, C):
    """x.copy_(src): the old x gets nothing, src the gradient summed to its shape."""
    b = R[e, 2]
    if rg(C, b):
        bsum(C, b, R[e, 4], grad(C, R[e, 4]), 1.0)


@njit(cache=True)
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


# -- the interpreter -----------------------------------------------------------------------
# Rows name their adjoint; the engine maps each opcode to its kernel id here.
KERNELS = ("adj_add", "adj_sub", "adj_mul", "adj_div", "adj_pow", "adj_identity", "adj_neg",
           "adj_mul_scalar", "adj_div_scalar", "adj_pow_scalar", "adj_rpow_scalar", "adj_reciprocal",
           "adj_exp", "adj_log", "adj_sin", "adj_cos", "adj_tanh", "adj_sigmoid", "adj_relu", "adj_sqrt",
           "adj_abs", "adj_sum", "adj_expand", "adj_mm", "adj_permute", "adj_getitem", "adj_scatter_flat",
           "adj_setitem", "adj_cast", "adj_function",
           "adj_rsqrt", "adj_log1p", "adj_expm1", "adj_tan", "adj_erf", "adj_leaky_relu", "adj_gelu",
           "adj_softplus", "adj_clamp", "adj_zero", "adj_maximum", "adj_where", "adj_masked_fill", "adj_prod",
           "adj_amax", "adj_norm", "adj_cumsum", "adj_softmax", "adj_log_softmax", "adj_bmm", "adj_cat",
           "adj_scatter_add", "adj_copy", "adj_nll", "adj_add_run")
(K_ADD, K_SUB, K_MUL, K_DIV, K_POW, K_IDENTITY, K_NEG, K_MUL_SCALAR, K_DIV_SCALAR, K_POW_SCALAR,
 K_RPOW_SCALAR, K_RECIPROCAL, K_EXP, K_LOG, K_SIN, K_COS, K_TANH, K_SIGMOID, K_RELU, K_SQRT, K_ABS,
 K_SUM, K_EXPAND, K_MM, K_PERMUTE, K_GETITEM, K_SCATTER_FLAT, K_SETITEM, K_CAST, K_FUNCTION,
 K_RSQRT, K_LOG1P, K_EXPM1, K_TAN, K_ERF, K_LEAKY_RELU, K_GELU, K_SOFTPLUS, K_CLAMP, K_ZERO, K_MAXIMUM,
 K_WHERE, K_MASKED_FILL, K_PROD, K_AMAX, K_NORM, K_CUMSUM, K_SOFTMAX, K_LOG_SOFTMAX, K_BMM, K_CAT,
 K_SCATTER_ADD, K_COPY, K_NLL, K_ADD_RUN) = range(len(KERNELS))
OP_KERNEL = np.array([KERNELS.index(r.kernel) for r in ops.TABLE], np.int64)
# kernels whose every write to an input's gradient goes through claim/put (or beta for gemm)
ASSIGNS = np.array([k in ("adj_add", "adj_sub", "adj_mul", "adj_div", "adj_identity", "adj_neg",
                          "adj_mul_scalar", "adj_pow_scalar", "adj_exp", "adj_sin", "adj_cos", "adj_tanh",
                          "adj_sigmoid", "adj_sum", "adj_expand", "adj_mm", "adj_bmm", "adj_scatter_flat",
                          "adj_add_run")
                    for k in KERNELS])


# Inlined (Numba IR) into the replays: as a call of its own it cost 40 ns an entry, the arguments'
# reference counts (atomic increments of R, RF, P, witness) taken and dropped around every entry.
# W1's backward went from 84 to 52 ns an entry; the cold compile is unchanged.
@njit(cache=True, inline="always")
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
    elif k == K_FUNCTION:
        return adj_function(e, R, RF, C)
    elif k == K_RSQRT:
        adj_rsqrt(e, R, RF, C)
    elif k == K_LOG1P:
        adj_log1p(e, R, RF, C)
    elif k == K_EXPM1:
        adj_expm1(e, R, RF, C)
    elif k == K_TAN:
        adj_tan(e, R, RF, C)
    elif k == K_ERF:
        adj_erf(e, R, RF, C)
    elif k == K_LEAKY_RELU:
        adj_leaky_relu(e, R, RF, C)
    elif k == K_GELU:
        adj_gelu(e, R, RF, C)
    elif k == K_SOFTPLUS:
        adj_softplus(e, R, RF, C)
    elif k == K_CLAMP:
        adj_clamp(e, R, RF, C)
    elif k == K_ZERO:
        adj_zero(e, R, RF, C)
    elif k == K_MAXIMUM:
        adj_maximum(e, R, RF, C)
    elif k == K_WHERE:
        adj_where(e, R, RF, C)
    elif k == K_MASKED_FILL:
        adj_masked_fill(e, R, RF, C)
    elif k == K_PROD:
        adj_prod(e, R, RF, C)
    elif k == K_AMAX:
        adj_amax(e, R, RF, C)
    elif k == K_NORM:
        adj_norm(e, R, RF, C)
    elif k == K_CUMSUM:
        adj_cumsum(e, R, RF, C)
    elif k == K_SOFTMAX:
        adj_softmax(e, R, RF, C)
    elif k == K_LOG_SOFTMAX:
        adj_log_softmax(e, R, RF, C)
    elif k == K_BMM:
        adj_bmm(e, R, RF, C)
    elif k == K_CAT:
        adj_cat(e, R, RF, C)
    elif k == K_SCATTER_ADD:
        adj_scatter_add(e, R, RF, C)
    elif k == K_COPY:
        adj_copy(e, R, RF, C)
    elif k == K_NLL:
        adj_nll(e, R, RF, C)
    elif k == K_ADD_RUN:
        adj_add_run(e, R, RF, C)
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
def has_nan(a):
    for v in a:
        if v != v:
            return True
    return False


@njit(cache=True)
def replay(R, RF, S, hoff, export, need, goff, garena, lo, hi, tcode, witness, op_kernel, check_nan):
    """Walk entries hi-1 .. lo in reverse, running the adjoint of each one that is needed; returns
    (status, entry, operand). With ``check_nan`` (anomaly mode) stop at the first entry whose adjoint
    makes the gradient of one of its operands NaN. A gradient already NaN before the entry ran (a
    NaN seed) does not count against it: the entry that reads it next is blamed, as torch's check
    of each node's outputs blames it. (A flag here, not a second replay: that would compile the
    interpreter's dispatch once more, half a minute on a first use.)"""
    C = (pointers(R, S, hoff, export, need, goff, garena), witness, tcode, hoff)
    P = C[0]
    before = np.zeros(3, np.bool_)
    for e in range(hi - 1, lo - 1, -1):
        if need[R[e, 4]]:
            if check_nan:
                for k in range(3):
                    s = R[e, 1 + k]
                    before[k] = s >= 0 and P[s, GPTR] != 0 and has_nan(grad(C, s))
            if dispatch(op_kernel[R[e, 0]], e, R, RF, C) != OK:
                return ERR_OPCODE, e, -1
            if check_nan:
                for k in range(3):
                    s = R[e, 1 + k]
                    if s >= 0 and P[s, GPTR] != 0 and not before[k] and has_nan(grad(C, s)):
                        return ERR_NAN, e, k
    return OK, -1, -1


@njit(cache=True)
def arena_packed(R, S, hoff, need, export, witness):
    """``arena`` with liveness packing: once a slot's producer has run in the reverse walk its
    gradient is consumed, and its region serves a slot first written later. A long elementwise
    chain then needs a few buffers, not one per entry (W3: 24 MiB instead of 64 MiB of fresh,
    page-faulting zeroes per backward). The arena is left uninitialised: ``replay_packed``
    zeroes each region just before its first write. Only for whole-tape replays (``backward``):
    segmented replays (hooks, custom Functions) read gradients between segments."""
    n = S.shape[0]
    goff = np.full(n, -1, np.int64)
    size = np.zeros(n, np.int64)
    free_off = np.empty(n, np.int64)
    free_len = np.empty(n, np.int64)
    nfree = 0
    total = 0
    for e in range(R.shape[0] - 1, -1, -1):
        o = R[e, 4]
        if not need[o]:
            continue
        for k in range(1, 4):
            s = R[e, k]
            if s < 0 or not need[s] or export[s] != 0 or goff[s] >= 0:
                continue
            m = size_of(S[s, 0], hoff)
            best = -1
            for f in range(nfree):  # best fit among the consumed regions
                if free_len[f] >= m and (best < 0 or free_len[f] < free_len[best]):
                    best = f
            if best < 0:
                goff[s] = total
                total += m
            else:
                goff[s] = free_off[best]
                free_off[best] += m
                free_len[best] -= m
                if free_len[best] == 0:
                    nfree -= 1
                    free_off[best], free_len[best] = free_off[nfree], free_len[nfree]
            size[s] = m
        if goff[o] >= 0 and size[o] > 0:  # this entry consumes o's gradient
            free_off[nfree], free_len[nfree] = goff[o], size[o]
            nfree += 1
    return goff, np.empty(total, witness.dtype)


# -- blocked runs -------------------------------------------------------------------------------
# Consecutive rows whose adjoints are elementwise over slots of one size N (W3's whole backward:
# sum, add, pow, tanh, mul, exp, neg, mul, sin on 1M values) are replayed a block of BLOCK
# elements at a time, each row in turn on the block, then the next block: the gradients passed
# between the rows stay in cache instead of each row streaming N-element arrays through memory.
BLOCK = 4096
BLOCKABLE = np.array([k in ("adj_add", "adj_sub", "adj_mul", "adj_div", "adj_pow", "adj_identity", "adj_neg",
                            "adj_mul_scalar", "adj_div_scalar", "adj_pow_scalar", "adj_rpow_scalar",
                            "adj_reciprocal", "adj_exp", "adj_log", "adj_sin", "adj_cos", "adj_tanh",
                            "adj_sigmoid", "adj_relu", "adj_sqrt", "adj_abs", "adj_sum", "adj_rsqrt", "adj_log1p",
                            "adj_expm1", "adj_tan", "adj_erf", "adj_leaky_relu", "adj_gelu", "adj_softplus",
                            "adj_clamp", "adj_zero", "adj_maximum", "adj_where", "adj_masked_fill", "adj_cast")
                      for k in KERNELS])


@njit(cache=True)
def run_size(e, R, P, op_kernel):
    """N when row e may join a blocked run: an elementwise adjoint (BLOCKABLE) whose operands and
    output all hold N > BLOCK elements, or a full sum of N elements (its output holds one); else 0.
    Operands of other sizes would broadcast, which indexes by shape, not block by block."""
    k = op_kernel[R[e, 0]]
    if not BLOCKABLE[k]:
        return 0
    n = P[R[e, 1], SIZE]
    if n <= BLOCK:
        return 0
    for j in range(2, 5):
        s = R[e, j]
        if s >= 0 and P[s, SIZE] != (1 if j == 4 and k == K_SUM else n):
            return 0
    return n


@njit(cache=True)
def own_gradients(R, P, need, goff, saved, end, top, n, witness):
    """Give the gradients that live only inside the run of rows end..top a block-sized scratch
    each (SCRATCH): written and consumed block by block, they then never leave the cache. Such a
    gradient is the output of a row of the run, an arena region (not the caller's), and still
    FRESH when the run starts (no row above the run wrote it). Returns the scratch buffer."""
    count = 0
    for r in range(end, top + 1):
        o = R[r, 4]
        if need[o] and goff[o] >= 0 and P[o, SIZE] == n and P[o, FLAGS] & FRESH:
            count += 1
    scratch = np.empty(count * BLOCK, witness.dtype)
    base = scratch.ctypes.data
    for r in range(end, top + 1):
        o = R[r, 4]
        if need[o] and goff[o] >= 0 and P[o, SIZE] == n and P[o, FLAGS] & FRESH:
            saved[o] = P[o, GPTR]
            P[o, GPTR] = base
            P[o, FLAGS] |= SCRATCH
            base += BLOCK * scratch.itemsize
    return scratch


@njit(cache=True)
def keep_flags(R, P, flags, end, top, restore):
    """Save (or restore) the flags of the slots of rows end..top."""
    for r in range(end, top + 1):
        for j in range(1, 5):
            s = R[r, j]
            if s >= 0:
                if restore:
                    P[s, FLAGS] = flags[s]
                else:
                    flags[s] = P[s, FLAGS]


@njit(cache=True)
def replay_packed(R, RF, S, hoff, export, roots, need, goff, garena, tcode, witness, op_kernel):
    """``replay`` over the whole tape with an ``arena_packed`` arena: each region, and each buffer
    of the caller but the seeds (allocated uninitialised), is written first by an adjoint that
    assigns (ASSIGNS), or zeroed just before one that accumulates. Runs of elementwise rows go
    block by block (BLOCK): every block sees the FRESH flags the run started with, so each block's
    first write assigns as the whole buffer's would."""
    P = pointers(R, S, hoff, export, need, goff, garena)
    W = P[P.shape[0] - 1]  # the window (a view: span reads it through P)
    C = (P, witness, tcode, hoff)
    for s in range(goff.shape[0]):  # arena regions and the caller's buffers (but the seeds) are fresh
        if goff[s] >= 0 or (export[s] != 0 and need[s]):
            P[s, FLAGS] |= FRESH
    for r in roots:
        P[r, FLAGS] &= ~FRESH
    top, end = -1, 0  # the blocked run under way: rows top down to end (top < 0: none)
    flags = np.empty(P.shape[0], np.int64)  # the run's slots' flags at its start
    saved = np.empty(P.shape[0], np.int64)  # arena pointers of the gradients a run keeps in scratch
    scratch = np.empty(0, witness.dtype)
    e = R.shape[0] - 1
    while e >= 0:
        o = R[e, 4]
        if need[o]:
            if top < 0:  # does a run of two rows or more start here?
                n = run_size(e, R, P, op_kernel)
                f = e - 1
                while n and f >= 0 and (not need[R[f, 4]] or run_size(f, R, P, op_kernel) == n):
                    if need[R[f, 4]]:
                        end = f
                        top = e
                    f -= 1
                if top >= 0:
                    scratch = own_gradients(R, P, need, goff, saved, end, top, n, witness)
                    keep_flags(R, P, flags, end, top, False)
                    W[0], W[1], W[2] = n, 0, BLOCK
            if claim(C, o):  # no adjoint wrote it (x ** 0, sign...): a zero gradient
                grad(C, o)[:] = 0
            k = op_kernel[R[e, 0]]
            if not ASSIGNS[k]:
                for j in range(1, 4):
                    s = R[e, j]
                    if s >= 0 and claim(C, s):
                        grad(C, s)[:] = 0
            if dispatch(k, e, R, RF, C) != OK:
                return ERR_OPCODE, e
        if top >= 0 and e == end:  # the block is done: the next one from the top, or leave the run
            if W[2] < W[0]:
                keep_flags(R, P, flags, end, top, True)
                W[1], W[2] = W[2], min(W[2] + BLOCK, W[0])
                e = top
                continue
            W[:] = 0
            for r in range(end, top + 1):  # the run's own gradients are consumed: back to the arena
                o = R[r, 4]
                if P[o, FLAGS] & SCRATCH:
                    P[o, FLAGS] &= ~SCRATCH
                    P[o, GPTR] = saved[o]
            top = -1
        e -= 1
    for s in range(goff.shape[0]):  # a needed gradient that nothing wrote is zero
        if claim(C, s):
            grad(C, s)[:] = 0
    return OK, -1


@njit(cache=True)
def backward(R, RF, S, hoff, export, roots, tcode, witness, op_kernel, release):
    """The whole backward of one tape in one call: plan, arena, replay. With ``release``, mark
    the replayed entries' outputs FREED afterwards (``Tape.release`` does it otherwise); the last
    value returned counts the entries still unfreed (0: the tape can drop every value)."""
    status, where, need = plan(R, S, roots, 0)
    if status != OK:
        return status, where, need, -1
    goff, garena = arena_packed(R, S, hoff, need, export, witness)
    status, where = replay_packed(R, RF, S, hoff, export, roots, need, goff, garena, tcode, witness, op_kernel)
    left = -1
    if release and status == OK:
        left = 0
        for e in range(R.shape[0]):
            o = R[e, 4]
            if need[o]:
                S[o, 1] |= FREED
            elif not S[o, 1] & FREED:
                left += 1
    return status, where, need, left
