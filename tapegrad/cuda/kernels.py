"""The hand-written CUDA kernels: fills, casts, the index-map gathers and scatters that broadcast,
reduce and sum back broadcast gradients, and a plain matrix product. Every one is a grid-stride
loop over flat C-ordered arrays, so any launch size covers any length. The elementwise rows'
kernels are generated from the op table (_generated.py)."""
import math

from numba import cuda


@cuda.jit
def fill(x, v):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        x[i] = v


@cuda.jit
def copy(src, dst):
    """dst = src, cast to dst's dtype."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[i]


@cuda.jit
def add_into(src, dst):
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] += src[i]


@cuda.jit
def gather(src, idx, dst):
    """dst[i] = src[idx[i]]: a broadcast, or any other pick."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[idx[i]]


@cuda.jit
def gather_add(src, idx, dst, scale):
    """dst[i] += src[idx[i]] * scale: a sum's or mean's gradient spread over its input."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] += src[idx[i]] * scale


@cuda.jit
def scatter_add(src, idx, dst, scale):
    """dst[idx[i]] += src[i] * scale: a reduction, or a broadcast gradient summed back (atomics:
    several i share one target)."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        cuda.atomic.add(dst, idx[i], src[i] * scale)


@cuda.jit
def power(x, y, c):
    """y = x ** c (pow_scalar's forward where no cheaper formula serves)."""
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = x[i] ** c


@cuda.jit
def power_adjoint(g, x, gx, c):
    """pow_scalar's gradient, torch's g * (c * x ** (c - 1)) (c != 0: for 0 it adds nothing)."""
    for i in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        gx[i] += g[i] * (c * x[i] ** (c - 1))


@cuda.jit
def maximum_scalar(x, y, c):
    """y = np.maximum(x, c) (relu's forward): NaN stays NaN."""
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        v = x[i]
        y[i] = c if v < c else v


@cuda.jit
def relu_adjoint(g, y, gx):
    """torch's threshold_backward at the result: g unless y <= 0 (a NaN result passes g)."""
    for i in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        if not y[i] <= 0:
            gx[i] += g[i]


@cuda.jit
def matmul(a, b, out, m, k, n, ta, tb, beta):
    """out[m, n] = beta * out + op(a) @ op(b), op transposing where ta (a is [k, m]) or tb (b is
    [n, k]): one thread per output element. (On a GPU, cuBLAS is the intended route.)"""
    for t in range(cuda.grid(1), m * n, cuda.gridsize(1)):
        i = t // n
        j = t - i * n
        acc = out[t] * beta if beta != 0 else beta  # (out may hold anything where beta is 0)
        for p in range(k):
            x = a[p * m + i] if ta else a[i * k + p]
            y = b[j * k + p] if tb else b[p * n + j]
            acc += x * y
        out[t] = acc


# -- reductions and scans: one thread per output element, looping over the elements it reduces in
# a fixed order (deterministic, no atomics). A single axis d is addressed as [outer, n, inner]; any
# set of axes through a segment map ``seg``, seg[j * m + k] the k-th of output element j's m inputs.
@cuda.jit
def softmax_rows(x, y, outer, n, inner, log):
    """y = softmax of x along the middle axis (log: log_softmax), the exponentials summed in float64
    as the CPU's jitted pass sums them."""
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        base = (t // inner) * n * inner + t % inner
        m = x[base]
        for k in range(1, n):
            v = x[base + k * inner]
            if v > m or v != v:
                m = v
        s = 0.0
        for k in range(n):
            s += math.exp(x[base + k * inner] - m)
        shift = m + math.log(s)
        for k in range(n):
            i = base + k * inner
            y[i] = x[i] - shift if log else math.exp(x[i] - m) / s


@cuda.jit
def softmax_adjoint(g, y, gx, outer, n, inner, log):
    """gx += y * (g - sum(g * y)) (log: g - exp(y) * sum(g)) along the middle axis."""
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        base = (t // inner) * n * inner + t % inner
        s = 0.0
        for k in range(n):
            i = base + k * inner
            s += g[i] if log else g[i] * y[i]
        for k in range(n):
            i = base + k * inner
            gx[i] += g[i] - math.exp(y[i]) * s if log else y[i] * (g[i] - s)


@cuda.jit
def nll_forward(x, pos, w, y, weighted, reduced, scale):
    """y = -x[pos] (times w where weighted), or reduced, their sum times scale (one thread: in order)."""
    if reduced:
        if cuda.grid(1) == 0:
            s = 0.0
            for i in range(pos.shape[0]):
                s -= x[pos[i]] * w[i] if weighted else x[pos[i]]
            y[0] = s * scale
        return
    for i in range(cuda.grid(1), pos.shape[0], cuda.gridsize(1)):
        y[i] = -(x[pos[i]] * w[i]) if weighted else -x[pos[i]]


@cuda.jit
def nll_adjoint(g, pos, w, gx, weighted, reduced, scale):
    """gx[pos[i]] -= g (g[0] * scale when reduced) times w[i]: each sample's target its own element."""
    for i in range(cuda.grid(1), pos.shape[0], cuda.gridsize(1)):
        gi = g[0] * scale if reduced else g[i]
        gx[pos[i]] -= gi * w[i] if weighted else gi


KERNELS = {"fill": fill, "copy": copy, "add_into": add_into, "gather": gather, "gather_add": gather_add,
           "scatter_add": scatter_add, "power": power, "power_adjoint": power_adjoint,
           "maximum_scalar": maximum_scalar, "relu_adjoint": relu_adjoint, "matmul": matmul}
KERNELS.update({"softmax_rows": softmax_rows, "softmax_adjoint": softmax_adjoint, "nll_forward": nll_forward,
                "nll_adjoint": nll_adjoint})
