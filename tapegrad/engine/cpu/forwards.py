"""The hand-written forward kernels of a compiled program's replay (tg.compile), for the rows
whose forward is no formula: each row names its kernel (``fwd="fwd_sum"``, ops/spec.py) and
tools/generate.py writes the dispatch (_forward.py) beside the formula rows' kernels.

A kernel ``k(e, R, RF, O, hoff, w)`` runs row e of the program's row table R (RF its float
view) on the values whose NumPy array objects ``O`` holds by slot (the output allocated by the
caller), reading each as a flat array of the witness ``w``'s dtype. Each declares its ``kind``,
which the planner checks before it puts a row in a jitted run: ELEMENTWISE (every operand has the
output's size), BINARY (an operand of the output's size, size 1, or a trailing block of it), FULL
(a reduction to one element), VIEW (the output shares its input's memory), TRANSPOSE (a matrix's
transpose, as a C-ordered copy), MATMUL (a product of two matrices, every dimension above 1). The kernels reproduce
the eager forward bit for bit: sums in NumPy's pairwise order, sin and cos as ops' _sin and _cos,
and what NumPy computes with a ufunc by that ufunc's own loop (jit/ufuncs.py). A kernel declared
with ``status`` returns whether it ran (False where the probe found no loop: the planner keeps such
rows in NumPy, so the run never gets there)."""
import numpy as np

from ...jit import njit
from ...jit.ffi import _load_i64, dim_of, flat, gemm_acc, size_of
from ...jit.forward import _TRIG_MAX, sincos1
from ...jit.ufuncs import unary

ELEMENTWISE, BINARY, FULL, VIEW, TRANSPOSE, MATMUL = 1, 2, 3, 4, 5, 6
DECLARED = {}  # kernel name -> kind
STATUS = set()  # the kernels that return whether they ran
WHOLE = set()  # elementwise kernels whose result depends on the whole array (its size, a range check)

# The ufuncs whose loops the hand kernels call, first in the loop table (the generated UFUNCS
# appends the rows' own): U_EXP is the table index of numpy.exp.
LOOPS = ("numpy.exp", "numpy.sin", "numpy.cos")
U_EXP, U_SIN, U_COS = range(len(LOOPS))


def forward(kind, status=False, whole=False):
    """Declare a kernel of ``kind``; ``whole``: an elementwise kernel that must see the whole array,
    which a chunked replay (compiler/program.py) then leaves unsplit."""
    def declare(f):
        DECLARED[f.__name__] = kind
        if status:
            STATUS.add(f.__name__)
        if whole:
            WHOLE.add(f.__name__)
        return njit(cache=True, inline="always")(f)
    return declare


@njit(cache=True, inline="always")
def arr(O, s, hoff, w):
    """Slot s's value as a flat array."""
    return flat(O[s], hoff, w)


@njit(cache=True, inline="always")
def scalar(f, w):
    """A row's f0 in the operands' dtype, as NumPy casts a Python float."""
    c1 = np.empty(1, w.dtype)
    c1[0] = f
    return c1[0]


@njit(cache=True, inline="always")
def ufunc(u, e, R, O, hoff, w):
    """Row e as loop u of the table (jit/ufuncs.py) over the whole output, as NumPy calls it on
    contiguous operands; False where the table holds no loop for the dtype."""
    src, dst = O[R[e, 1]], O[R[e, 4]]
    return unary(u, _load_i64(src + hoff), _load_i64(dst + hoff), size_of(dst, hoff), w.itemsize)


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


@forward(FULL)
def fwd_sum(e, R, RF, O, hoff, w):
    a, out = arr(O, R[e, 1], hoff, w), arr(O, R[e, 4], hoff, w)
    out[0] = _pairwise(a, 0, a.size) if a.size else scalar(0.0, w)  # (np.add.reduce: one pairwise sum)


@forward(FULL)
def fwd_mean(e, R, RF, O, hoff, w):  # (the planner leaves an empty mean to NumPy)
    a, out = arr(O, R[e, 1], hoff, w), arr(O, R[e, 4], hoff, w)
    out[0] = _pairwise(a, 0, a.size) / scalar(a.size, w)


@forward(VIEW)
def fwd_view(e, R, RF, O, hoff, w):
    """Nothing to do: the caller made the output a view of the input."""


@forward(TRANSPOSE)
def fwd_transpose(e, R, RF, O, hoff, w):
    """The C-ordered copy of a matrix's transpose (the tape keeps a view's value as one)."""
    src = O[R[e, 1]]
    m, n = dim_of(src, hoff, 0), dim_of(src, hoff, 1)
    a, out = arr(O, R[e, 1], hoff, w), arr(O, R[e, 4], hoff, w)
    for i in range(n):
        for j in range(m):
            out[i * m + j] = a[j * n + i]


@forward(MATMUL)
def fwd_mm(e, R, RF, O, hoff, w):
    """np.matmul of two matrices whose dimensions all exceed 1: NumPy calls cblas_?gemm (no gemv,
    dot or outer-product path) on the library gemm_acc calls, so the same call gives the same bits."""
    a, b, out = O[R[e, 1]], O[R[e, 2]], O[R[e, 4]]
    ab = np.zeros(2, w.dtype)  # alpha 1, beta 0
    ab[0] = 1
    gemm_acc(False, False, dim_of(a, hoff, 0), dim_of(b, hoff, 1), dim_of(a, hoff, 1), _load_i64(a + hoff),
             _load_i64(b + hoff), _load_i64(out + hoff), ab)


@forward(ELEMENTWISE)
def fwd_copy(e, R, RF, O, hoff, w):
    a, out = arr(O, R[e, 1], hoff, w), arr(O, R[e, 4], hoff, w)
    for i in range(out.size):
        out[i] = a[i]


@forward(ELEMENTWISE)
def fwd_pow_scalar(e, R, RF, O, hoff, w):
    """ops' _pow_value for the exponents it computes by a formula (the row's fwd_f0: the planner
    leaves the others, np.power's, to NumPy), step for step in the dtype."""
    a, out = arr(O, R[e, 1], hoff, w), arr(O, R[e, 4], hoff, w)
    c = RF[e, 7]
    one = scalar(1.0, w)
    for i in range(out.size):
        x = a[i]
        if c == 2:
            y = x * x
        elif c == 3:
            y = x * x * x
        elif c == 0.5:
            y = np.sqrt(x)
        elif c == -1:
            y = one / x
        elif c == -0.5:
            y = one / np.sqrt(x)
        elif c == -2:
            y = one / (x * x)
        elif c == 1:
            y = x
        else:
            y = one
        out[i] = y


@forward(ELEMENTWISE)
def fwd_relu(e, R, RF, O, hoff, w):
    a, out = arr(O, R[e, 1], hoff, w), arr(O, R[e, 4], hoff, w)
    z = scalar(0.0, w)
    for i in range(out.size):
        x = a[i]
        out[i] = x if (x >= 0 or x != x) else z  # np.maximum(x, 0): NaN and -0.0 pass through


@forward(ELEMENTWISE, status=True)
def fwd_sigmoid(e, R, RF, O, hoff, w):
    """ops' _sigmoid step for step: ex = exp(-|x|) by NumPy's exp loop (in place in the output),
    then 1 / (1 + ex) or ex / (1 + ex) in the dtype."""
    a, out = arr(O, R[e, 1], hoff, w), arr(O, R[e, 4], hoff, w)
    for i in range(out.size):
        out[i] = -np.abs(a[i])
    p = _load_i64(O[R[e, 4]] + hoff)
    if not unary(U_EXP, p, p, out.size, w.itemsize):
        return False
    one = scalar(1.0, w)
    for i in range(out.size):
        ex = out[i]
        out[i] = one / (one + ex) if a[i] >= 0 else ex / (one + ex)
    return True


@njit(cache=True, inline="always")
def _trig(e, R, O, hoff, w, quarter):
    """ops' _sin/_cos: NumPy's loop below 4096 elements; from there the vectorised kernel (libm for
    all when one argument is large or not finite)."""
    a, out = arr(O, R[e, 1], hoff, w), arr(O, R[e, 4], hoff, w)
    n = out.size
    if n < 4096:
        return ufunc(U_SIN if quarter == 0 else U_COS, e, R, O, hoff, w)
    bad = False
    for i in range(n):
        bad |= not (abs(a[i]) <= _TRIG_MAX)
        out[i] = sincos1(np.float64(a[i]), quarter)
    if bad:
        for i in range(n):
            out[i] = np.sin(a[i]) if quarter == 0 else np.cos(a[i])
    return True


@forward(ELEMENTWISE, status=True, whole=True)
def fwd_sin(e, R, RF, O, hoff, w):
    return _trig(e, R, O, hoff, w, 0)


@forward(ELEMENTWISE, status=True, whole=True)
def fwd_cos(e, R, RF, O, hoff, w):
    return _trig(e, R, O, hoff, w, 1)
