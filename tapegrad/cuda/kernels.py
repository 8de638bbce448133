"""The hand-written CUDA kernels: fills, casts, the index-map gathers and scatters that broadcast,
reduce, index, join and sum back gradients, and a plain matrix product. Every one is a grid-stride
loop over flat C-ordered arrays, so any launch size covers any length. The elementwise rows'
kernels are generated from the op table (_generated.py)."""
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
def scatter(src, idx, dst):
    """dst[idx[i]] = src[i]: an indexed assignment, or a piece placed into a join."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        dst[idx[i]] = src[i]


@cuda.jit
def fill_at(dst, idx, v):
    """dst[idx[i]] = v."""
    for i in range(cuda.grid(1), idx.shape[0], cuda.gridsize(1)):
        dst[idx[i]] = v


@cuda.jit
def add_scaled(src, dst, scale):
    """dst[i] += src[i] * scale."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] += src[i] * scale


@cuda.jit
def add_run(a, b, out, off, lo, sign):
    """out = a placed at flat offset lo, plus sign times b placed at flat offset off (add_run's
    forward): a alone gives a + 0, b alone 0 + b or 0 - b, neither 0, as the CPU's regions do."""
    zero = sign - sign
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        v = a[i - lo] if lo <= i < lo + a.shape[0] else zero
        if off <= i < off + b.shape[0]:
            v = v + b[i - off] if sign > 0 else v - b[i - off]
        elif lo <= i < lo + a.shape[0]:
            v = v + zero
        out[i] = v


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


KERNELS = {"fill": fill, "copy": copy, "add_into": add_into, "gather": gather, "gather_add": gather_add,
           "scatter_add": scatter_add, "power": power, "power_adjoint": power_adjoint,
           "maximum_scalar": maximum_scalar, "relu_adjoint": relu_adjoint, "matmul": matmul}
# indexing and joining
KERNELS.update(scatter=scatter, fill_at=fill_at, add_scaled=add_scaled, add_run=add_run)
