"""What every CPU adjoint reads and writes through: slot constants, the per-slot pointer table and
its accessors (values, gradients, shapes), fresh-region claims, index maps and broadcasting.

Every kernel has the signature ``k(e, R, RF, C)``: entry ``e`` of the int rows ``R`` and their
float view ``RF``; ``C`` is the context tuple built by ``interp.replay``."""
import numpy as np
from numba import carray

from ...jit import njit
from ...jit.attrs import has_axis, perm_axis
from ...jit.ffi import _load_i32, _load_i64, _voidptr, shape_of, size_of


RG = 1  # tape.REQUIRES_GRAD
LEAF = 2  # tape.LEAF


FREED = 8  # tape.FREED
# plan's ``need``, per slot: its gradient is wanted and its producing entry runs (RUN), or it is a
# requested input of autograd.grad that nothing past it leads to: delivered, its entry not run (STOP)
RUN, STOP = 1, 2
# SAVES[op, k] (_generated.py, from ops' ``reads``): the values that input k's gradient reads as
# torch saves them, bits of the row's a, b, c, its output, and CONST, a tensor torch saves that the
# row keeps itself (a Python scalar, an index)
SAVE_A, SAVE_B, SAVE_C, SAVE_OUT, SAVE_CONST = 1, 2, 4, 8, 16


F32, F64, I64, I32, BOOL = 0, 1, 2, 3, 4


# status codes returned to the driver
OK, ERR_FREED, ERR_OPCODE, ERR_PYTHON, ERR_NAN, SPLIT = 0, 1, 2, 3, 4, 5


@njit(cache=True)
def fill_slots(S, lo, values, items_off, none, hoff, tn_off, lut):
    """Complete the slots that recording left as written at growth (tape.py): slots from ``lo`` on
    get their values' addresses, read from the tape's ``values`` list (its item array: CPython
    keeps the object addresses there, checked by engine/cpu_replay.py once per process), so recording makes
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
    touch = need != 0
    for e in range(R.shape[0]):
        if need[R[e, 4]] == RUN:
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
        # (an input whose gradient nothing wants, past autograd.grad's inputs, reads as not
        # requiring grad: the adjoints skip it, as torch's nodes skip outputs not needed)
        P[s, FLAGS] = S[s, 1] if need[s] else S[s, 1] & ~RG
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
        if not has_axis(mask, k):
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
        p = perm_axis(perm_code, k)
        oshape[k] = in_shape[p]
        ostride[k] = instride[p]
    return strided_offsets(oshape, ostride)


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
    """Where an adjoint writes slot s's contribution for an output of n elements, and whether
    that write assigns: s's gradient buffer when it has n elements (claimed: assigns if fresh),
    else a scratch of n that every write assigns and ``settle`` folds back with bsum."""
    gs = grad(C, s)
    if gs.size == n:
        return gs, claim(C, s)
    return np.empty(n, gs.dtype), True


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
