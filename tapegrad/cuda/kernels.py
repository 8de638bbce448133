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
def matmul(a, b, out, nb, m, k, n, ta, tb, beta):
    """out[nb, m, n] = beta * out + op(a) @ op(b) for each of nb matrices, op transposing where ta
    (a is [nb, k, m]) or tb (b is [nb, n, k]): one thread per output element. (On a GPU, cuBLAS is
    the intended route.)"""
    for t in range(cuda.grid(1), nb * m * n, cuda.gridsize(1)):
        q = t // (m * n)
        i = (t - q * m * n) // n
        j = t - q * m * n - i * n
        a0, b0 = q * m * k, q * k * n
        acc = out[t] * beta if beta != 0 else beta  # (out may hold anything where beta is 0)
        for p in range(k):
            x = a[a0 + p * m + i] if ta else a[a0 + i * k + p]
            y = b[b0 + j * k + p] if tb else b[b0 + p * n + j]
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


@cuda.jit
def extreme_rows(x, y, idx, pos, outer, n, inner, largest):
    """max_dim (largest) and min_dim along the middle axis: the value, its index along the axis and
    its flat position in x; the first of tied extremes, and the first NaN, as NumPy's argmax."""
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        base = (t // inner) * n * inner + t % inner
        v, best = x[base], 0
        for k in range(1, n):
            u = x[base + k * inner]
            if v == v and (u != u or (u > v if largest else u < v)):
                v, best = u, k
        y[t] = v
        idx[t] = best
        pos[t] = base + best * inner


@cuda.jit
def cumsum_rows(x, y, outer, n, inner):
    """The cumulative sum along the middle axis, in order (np.cumsum's)."""
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        base = (t // inner) * n * inner + t % inner
        acc = x[base]
        y[base] = acc
        for k in range(1, n):
            acc += x[base + k * inner]
            y[base + k * inner] = acc


@cuda.jit
def cumsum_adjoint(g, gx, outer, n, inner):
    """gx += the reversed cumulative sum of g along the middle axis (in float64, as the CPU's)."""
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        base = (t // inner) * n * inner + t % inner
        acc = 0.0
        for k in range(n - 1, -1, -1):
            i = base + k * inner
            acc += g[i]
            gx[i] += acc


@cuda.jit
def segment_extreme(x, seg, y, m, largest):
    """y[j] = the max (largest) or min of output element j's inputs; NaN wins, as in NumPy."""
    for j in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        v = x[seg[j * m]]
        for k in range(1, m):
            u = x[seg[j * m + k]]
            if u != u or (u > v if largest else u < v):
                v = u
        y[j] = v


@cuda.jit
def segment_extreme_adjoint(g, x, y, seg, gx, m):
    """gx += g shared evenly by the inputs equal to their extreme y."""
    for j in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        count = 0
        for k in range(m):
            if x[seg[j * m + k]] == y[j]:
                count += 1
        for k in range(m):
            i = seg[j * m + k]
            if x[i] == y[j]:
                gx[i] += g[j] / count


@cuda.jit
def segment_prod(x, seg, y, m):
    """y[j] = the product of output element j's inputs, in x's dtype."""
    for j in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        v = x[seg[j * m]]
        for k in range(1, m):
            v *= x[seg[j * m + k]]
        y[j] = v


@cuda.jit
def segment_prod_adjoint(g, x, y, seg, gx, m):
    """gx += g * y / x, or where a group holds one zero, the product of the others at the zero."""
    for j in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        zeros, others = 0, 1.0
        for k in range(m):
            v = x[seg[j * m + k]]
            if v == 0:
                zeros += 1
            else:
                others *= v
        for k in range(m):
            i = seg[j * m + k]
            if zeros == 0:
                gx[i] += g[j] * y[j] / x[i]
            elif zeros == 1 and x[i] == 0:
                gx[i] += g[j] * others


@cuda.jit
def segment_norm(x, seg, y, m, order, mode):
    """The norm of order ``order`` of output element j's inputs; mode (array.norm_mode): 0 the count
    of nonzeros, 1 sum |x|, 2 sqrt(sum x * x), 3 max |x|, 4 min |x|, 5 and 6 (sum |x| ** order) **
    (1 / order)."""
    for j in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        if mode == 3 or mode == 4:
            v = abs(x[seg[j * m]])
            for k in range(1, m):
                u = abs(x[seg[j * m + k]])
                if u != u or (u > v if mode == 3 else u < v):
                    v = u
            y[j] = v
            continue
        s = 0.0
        for k in range(m):
            u = x[seg[j * m + k]]
            if mode == 0:
                s += u != 0
            elif mode == 1:
                s += abs(u)
            elif mode == 2:
                s += u * u
            else:
                s += abs(u) ** order
        y[j] = math.sqrt(s) if mode == 2 else s ** (1 / order) if mode >= 5 else s


@cuda.jit
def segment_norm_adjoint(g, x, y, seg, gx, m, order, mode):
    """The norm's gradient, torch's formulas (mode as segment_norm's, 5: order < 1, 6: order > 1);
    zero where the norm is zero."""
    for j in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        count = 0
        if mode == 3 or mode == 4:
            for k in range(m):
                if abs(x[seg[j * m + k]]) == y[j]:
                    count += 1
        for k in range(m):
            i = seg[j * m + k]
            v = x[i]
            sign = 1.0 if v > 0 else -1.0 if v < 0 else v * 0  # (np.sign's: NaN stays NaN)
            if mode == 1:
                gx[i] += g[j] * sign
            elif mode == 2:
                if y[j] != 0:
                    gx[i] += g[j] * (v / y[j])
            elif mode == 3 or mode == 4:
                if abs(v) == y[j]:
                    gx[i] += sign * g[j] / count
            elif mode == 5:
                if v != 0:
                    gx[i] += sign * abs(v) ** (order - 1) * g[j] * y[j] ** (1 - order)
            elif y[j] != 0:
                scaled = sign * abs(v) ** (order - 1) if order < 2 else v * abs(v) ** (order - 2)
                gx[i] += scaled * (g[j] / y[j] ** (order - 1))


@cuda.jit
def segment_var(x, seg, y, m, correction):
    """The variance of output element j's inputs, with ``correction`` degrees of freedom less."""
    for j in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        s = 0.0
        for k in range(m):
            s += x[seg[j * m + k]]
        mu = s / m
        q = 0.0
        for k in range(m):
            d = x[seg[j * m + k]] - mu
            q += d * d
        dof = m - correction
        y[j] = q / dof if dof > 0 else q * math.inf  # (NumPy's q / 0: inf, or NaN for 0)


@cuda.jit
def segment_var_adjoint(g, x, seg, gx, m, scale, degenerate):
    """torch's var_backward: gx += (g * scale) * (x - mean), scale = 2 / dof; ``degenerate`` (no dim
    given and dof <= 0): g * (NaN where x is the mean, else inf)."""
    for j in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        s = 0.0
        for k in range(m):
            s += x[seg[j * m + k]]
        mu = s / m
        for k in range(m):
            i = seg[j * m + k]
            if degenerate:
                gx[i] += g[j] * (math.nan if x[i] == mu else math.inf)
            else:
                gx[i] += (g[j] * scale) * (x[i] - mu)


@cuda.jit
def std_root_adjoint(g, y, gx):
    """std as the root of its var: gx += g / (2 * y), nothing where y is 0."""
    for i in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        if y[i] != 0:
            gx[i] += g[i] / (2 * y[i])


KERNELS = {"fill": fill, "copy": copy, "add_into": add_into, "gather": gather, "gather_add": gather_add,
           "scatter_add": scatter_add, "power": power, "power_adjoint": power_adjoint,
           "maximum_scalar": maximum_scalar, "relu_adjoint": relu_adjoint, "matmul": matmul}
KERNELS.update({"softmax_rows": softmax_rows, "softmax_adjoint": softmax_adjoint, "nll_forward": nll_forward,
                "nll_adjoint": nll_adjoint})
KERNELS.update({"extreme_rows": extreme_rows, "cumsum_rows": cumsum_rows, "cumsum_adjoint": cumsum_adjoint,
                "segment_extreme": segment_extreme, "segment_extreme_adjoint": segment_extreme_adjoint,
                "segment_prod": segment_prod, "segment_prod_adjoint": segment_prod_adjoint,
                "segment_norm": segment_norm, "segment_norm_adjoint": segment_norm_adjoint,
                "segment_var": segment_var, "segment_var_adjoint": segment_var_adjoint,
                "std_root_adjoint": std_root_adjoint})
