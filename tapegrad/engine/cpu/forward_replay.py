"""The generic forward interpreter of a compiled program (tg.compile): one jitted call runs a
run of rows, each row's forward kernel chosen by its kernel code. Compiled once per install
(cache=True) for float32 and float64 (the witness ``w``), never per program.

``O`` holds, per program slot, the address of the NumPy array object that holds its value
(outputs allocated by the caller), so no array crosses the call; ``FK`` maps an opcode to its
forward kernel code (compiler/kernels.py, from the op table's names). The kernels reproduce
NumPy's forward bit for bit where the eager path runs NumPy: elementwise arithmetic in the
operands' dtype, and sums in NumPy's pairwise order."""
import math

import numpy as np
from numba import carray

from ...jit import njit
from ...jit.ffi import _load_i64, _voidptr, size_of

# kernel codes (0: no jitted kernel)
ADD, SUB, MUL, DIV = 1, 2, 3, 4
ADD_S, SUB_S, RSUB_S, MUL_S, DIV_S = 10, 11, 12, 13, 14
NEG, RELU, SQRT, RECIP, EXP, LOG, TANH, SIGMOID = 20, 21, 22, 23, 24, 25, 26, 27
SUM, MEAN = 30, 31
COPY = 40

OK = -1  # every row ran; else the status is the row that stopped the run


@njit(cache=True, inline="always")
def _arr(obj, hoff, w):
    return carray(_voidptr(_load_i64(obj + hoff)), size_of(obj, hoff), w.dtype)


@njit(cache=True)
def _block(a, lo, n):
    """NumPy's pairwise_sum for n <= 128 (numpy/_core/src/umath/loops_utils.h.src)."""
    if n < 8:
        s = -np.zeros(1, a.dtype)[0]  # NumPy starts from -0.0, so that x + s is x for every x
        for i in range(n):
            s += a[lo + i]
        return s
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    m = n - n % 8
    while i < m:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(cache=True, inline="always")
def _half(n):
    n2 = n // 2
    return n2 - n2 % 8


@njit(cache=True)
def _pairwise(a, lo, n):
    """NumPy's pairwise sum of a[lo:lo + n]: halves (cut at a multiple of 8) summed separately down
    to blocks of 128, left + right. An explicit stack: Numba's recursion would not cache."""
    if n <= 128:
        return _block(a, lo, n)
    los = np.empty(64, np.int64)
    ns = np.empty(64, np.int64)
    left = np.zeros(64, np.bool_)  # the slot's left half is summed, in acc
    acc = np.empty(64, a.dtype)
    sp = 0
    los[0], ns[0] = lo, n
    while True:
        if ns[sp] > 128:  # descend into the left half
            left[sp] = False
            los[sp + 1], ns[sp + 1] = los[sp], _half(ns[sp])
            sp += 1
            continue
        v = _block(a, los[sp], ns[sp])
        while True:  # hand v up: a left half waits for its right, a right half completes its parent
            sp -= 1
            if sp < 0:
                return v
            if not left[sp]:
                acc[sp] = v
                left[sp] = True
                h = _half(ns[sp])
                los[sp + 1], ns[sp + 1] = los[sp] + h, ns[sp] - h
                sp += 1
                break
            v = acc[sp] + v


@njit(cache=True, inline="always")
def _binary(k, x, y):
    if k == ADD:
        return x + y
    if k == SUB:
        return x - y
    if k == MUL:
        return x * y
    return x / y


@njit(cache=True, inline="always")
def _unary(k, x, c):
    if k == ADD_S:
        return x + c
    if k == SUB_S:
        return x - c
    if k == RSUB_S:
        return c - x
    if k == MUL_S:
        return x * c
    if k == DIV_S:
        return x / c
    if k == NEG:
        return -x
    if k == RELU:
        return x if (x >= 0 or x != x) else c  # np.maximum(x, 0): NaN and -0.0 pass through (c: the row's 0.0)
    if k == SQRT:
        return np.sqrt(x)
    if k == RECIP:
        return 1 / x
    if k == EXP:
        return np.exp(x)
    if k == LOG:
        return np.log(x)
    return np.tanh(x)


@njit(cache=True)
def run(R, RF, FK, O, lo, hi, hoff, w):
    """Rows lo..hi-1 of the program (R its int rows, RF their float view) on the values whose
    array objects ``O`` holds. Returns OK, or the row whose kernel code is unknown."""
    c1 = np.empty(1, w.dtype)
    for e in range(lo, hi):
        k = FK[R[e, 0]]
        out = _arr(O[R[e, 4]], hoff, w)
        n = out.size
        if k >= ADD and k <= DIV:
            a = _arr(O[R[e, 1]], hoff, w)
            b = _arr(O[R[e, 2]], hoff, w)
            na, nb = a.size, b.size
            if na == n and nb == n:
                for i in range(n):
                    out[i] = _binary(k, a[i], b[i])
            elif na == n and nb == 1:
                y = b[0]
                for i in range(n):
                    out[i] = _binary(k, a[i], y)
            elif nb == n and na == 1:
                x = a[0]
                for i in range(n):
                    out[i] = _binary(k, x, b[i])
            elif na == n:  # b a trailing block (a bias): checked when the program was built
                for i in range(n):
                    out[i] = _binary(k, a[i], b[i % nb])
            else:
                for i in range(n):
                    out[i] = _binary(k, a[i % na], b[i])
        elif k >= ADD_S and k <= TANH:
            a = _arr(O[R[e, 1]], hoff, w)
            c1[0] = RF[e, 7]  # the scalar in the operands' dtype, as NumPy casts a Python float
            c = c1[0]
            for i in range(n):
                out[i] = _unary(k, a[i], c)
        elif k == SIGMOID:
            a = _arr(O[R[e, 1]], hoff, w)
            for i in range(n):  # ops._sigmoid: exp of a negative argument only
                x = a[i]
                ex = np.exp(-np.abs(x))
                out[i] = 1 / (1 + ex) if x >= 0 else ex / (1 + ex)
        elif k == SUM or k == MEAN:
            a = _arr(O[R[e, 1]], hoff, w)
            na = a.size
            if na == 0:
                c1[0] = 0
                s = c1[0]
            else:  # np.add.reduce of a contiguous array: one pairwise sum
                s = _pairwise(a, 0, na)
            if k == MEAN:
                c1[0] = na
                s = s / c1[0]
            out[0] = s
        elif k == COPY:
            a = _arr(O[R[e, 1]], hoff, w)
            if _load_i64(O[R[e, 1]] + hoff) != _load_i64(O[R[e, 4]] + hoff):  # (a view shares its memory)
                for i in range(n):
                    out[i] = a[i]
        else:
            return e
    return OK
