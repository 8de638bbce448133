"""The hand-written CUDA kernels: fills, casts, the index-map gathers and scatters that broadcast,
reduce, index, join and sum back gradients, a plain matrix product, the elementwise forwards and
adjoints that no formula generates (comparisons, where, clamp, gelu...), and softmax, nll_loss, the
reductions and scans (one thread per output element over its inputs in order). Every one is a
grid-stride loop over flat C-ordered arrays, so any launch size covers any length. The other
elementwise rows' kernels are generated from the op table (_generated.py)."""
import math

from numba import cuda


@cuda.jit(cache=True)
def fill(x, v):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        x[i] = v


@cuda.jit(cache=True)
def copy(src, dst):
    """dst = src, cast to dst's dtype."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[i]


@cuda.jit(cache=True)
def add_into(src, dst):
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] += src[i]


@cuda.jit(cache=True)
def gather(src, idx, dst):
    """dst[i] = src[idx[i]]: a broadcast, or any other pick."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[idx[i]]


@cuda.jit(cache=True)
def gather_add(src, idx, dst, scale):
    """dst[i] += src[idx[i]] * scale: a sum's or mean's gradient spread over its input."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] += src[idx[i]] * scale


@cuda.jit(cache=True)
def scatter_add(src, idx, dst, scale):
    """dst[idx[i]] += src[i] * scale: a reduction, or a broadcast gradient summed back (atomics:
    several i share one target)."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        cuda.atomic.add(dst, idx[i], src[i] * scale)


@cuda.jit(cache=True)
def scatter(src, idx, dst):
    """dst[idx[i]] = src[i]: an indexed assignment, or a piece placed into a join."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        dst[idx[i]] = src[i]


@cuda.jit(cache=True)
def fill_at(dst, idx, v):
    """dst[idx[i]] = v."""
    for i in range(cuda.grid(1), idx.shape[0], cuda.gridsize(1)):
        dst[idx[i]] = v


@cuda.jit(cache=True)
def add_scaled(src, dst, scale):
    """dst[i] += src[i] * scale."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] += src[i] * scale


@cuda.jit(cache=True)
def add_run(a, b, out, off, at, sign):
    """out = a placed at flat offset at, plus sign times b placed at flat offset off (add_run's
    forward): a alone gives a + 0, b alone 0 + b or 0 - b, neither 0, as the CPU's regions do."""
    zero = sign - sign
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        v = a[i - at] if at <= i < at + a.shape[0] else zero
        if off <= i < off + b.shape[0]:
            v = v + b[i - off] if sign > 0 else v - b[i - off]
        elif at <= i < at + a.shape[0]:
            v = v + zero
        out[i] = v


@cuda.jit(cache=True)
def power(x, y, c):
    """y = x ** c (pow_scalar's forward where no cheaper formula serves)."""
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = x[i] ** c


@cuda.jit(cache=True)
def power_adjoint(g, x, gx, c):
    """pow_scalar's gradient, torch's g * (c * x ** (c - 1)) (c != 0: for 0 it adds nothing)."""
    for i in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        gx[i] += g[i] * (c * x[i] ** (c - 1))


@cuda.jit(cache=True)
def maximum_scalar(x, y, c):
    """y = np.maximum(x, c) (relu's forward): NaN stays NaN."""
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        v = x[i]
        y[i] = c if v < c else v


@cuda.jit(cache=True)
def relu_adjoint(g, y, gx):
    """torch's threshold_backward at the result: g unless y <= 0 (a NaN result passes g)."""
    for i in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        if not y[i] <= 0:
            gx[i] += g[i]


@cuda.jit(cache=True)
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


# -- comparisons, where, and the forwards and adjoints of rows that pick or clamp -------------------
# Comparison ops by code: less, less_equal, greater, greater_equal, equal, not_equal (array.COMPARISONS).
@cuda.jit(cache=True)
def compare(a, b, mask, op):
    """mask = a (op) b: a NaN compares false, but for not_equal."""
    for i in range(cuda.grid(1), mask.shape[0], cuda.gridsize(1)):
        u, v = a[i], b[i]
        mask[i] = (u < v if op == 0 else u <= v if op == 1 else u > v if op == 2 else u >= v if op == 3
                  else u == v if op == 4 else u != v)


@cuda.jit(cache=True)
def compare_scalar(x, mask, c, op):
    """mask = x (op) c."""
    for i in range(cuda.grid(1), mask.shape[0], cuda.gridsize(1)):
        u = x[i]
        mask[i] = (u < c if op == 0 else u <= c if op == 1 else u > c if op == 2 else u >= c if op == 3
                  else u == c if op == 4 else u != c)


@cuda.jit(cache=True)
def classify(x, mask, op):
    """mask = isnan(x) (op 0), isinf(x) (op 1), isfinite(x) (op 2) of floats (a NaN compares false)."""
    for i in range(cuda.grid(1), mask.shape[0], cuda.gridsize(1)):
        u = abs(x[i])
        mask[i] = u != u if op == 0 else u == math.inf if op == 1 else u < math.inf


@cuda.jit(cache=True)
def logical(p, q, mask, op):
    """mask = p and q (op 0), p or q (op 1), of bools."""
    for i in range(cuda.grid(1), mask.shape[0], cuda.gridsize(1)):
        mask[i] = (p[i] and q[i]) if op == 0 else (p[i] or q[i])


@cuda.jit(cache=True)
def logical_not(p, mask):
    for i in range(cuda.grid(1), mask.shape[0], cuda.gridsize(1)):
        mask[i] = not p[i]


@cuda.jit(cache=True)
def where(cond, a, b, out):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = a[i] if cond[i] else b[i]


@cuda.jit(cache=True)
def masked_fill(cond, out, v):
    """out[cond] = v."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        if cond[i]:
            out[i] = v


@cuda.jit(cache=True)
def maximum(a, b, y):
    """np.maximum: a NaN on either side is the result."""
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        u, v = a[i], b[i]
        y[i] = u if u >= v or u != u else v


@cuda.jit(cache=True)
def minimum(a, b, y):
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        u, v = a[i], b[i]
        y[i] = u if u <= v or u != u else v


@cuda.jit(cache=True)
def minimum_scalar(x, y, c):
    """y = np.minimum(x, c) (clamp's upper bound): NaN stays NaN."""
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        v = x[i]
        y[i] = c if v > c else v


@cuda.jit(cache=True)
def logaddexp_scalar(x, y, c):
    """y = np.logaddexp(c, x) as NumPy computes it (softplus's log(1 + exp(z)) is logaddexp(0, z))."""
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        v = x[i]
        if v == c:
            y[i] = v + 0.6931471805599453
        elif c - v > 0:
            y[i] = c + math.log1p(math.exp(v - c))
        elif c - v <= 0:
            y[i] = v + math.log1p(math.exp(c - v))
        else:  # a NaN
            y[i] = c - v


@cuda.jit(cache=True)
def where_adjoint(g, cond, grad, want):
    """where's and masked_fill's gradient: grad += g where cond is ``want``."""
    for i in range(cuda.grid(1), grad.shape[0], cuda.gridsize(1)):
        if (cond[i] != 0) == want:
            grad[i] += g[i]


@cuda.jit(cache=True)
def maximum_adjoint(g, a, b, grad, sgn):
    """maximum's (sgn 1) and minimum's (sgn -1) gradient in a, or, with sgn negated, in b: g where
    the input wins, halves at ties (torch's)."""
    for i in range(cuda.grid(1), grad.shape[0], cuda.gridsize(1)):
        if a[i] == b[i]:
            grad[i] += 0.5 * g[i]
        elif not (a[i] - b[i]) * sgn < 0:
            grad[i] += g[i]


@cuda.jit(cache=True)
def leaky_relu_adjoint(g, x, gx, slope):
    """leaky_relu's gradient at its input, and leaky_relu_backward's: g where x > 0, else g * slope."""
    for i in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        gx[i] += g[i] if x[i] > 0 else g[i] * slope


@cuda.jit(cache=True)
def clamp_adjoint(g, x, gx, lo, hi):
    for i in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        if x[i] >= lo and x[i] <= hi:
            gx[i] += g[i]


@cuda.jit(cache=True)
def gelu_adjoint(g, x, gx, approximate):
    """gelu's gradient, in the CPU engine's formulas: x * Phi(x), or torch's tanh approximation."""
    for i in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        xi = x[i]
        if not approximate:
            cdf = 0.5 * (1 + math.erf(xi * 0.7071067811865476))
            pdf = math.exp(-0.5 * xi * xi) * 0.3989422804014327
            gx[i] += g[i] * (cdf + xi * pdf)
        else:
            th = math.tanh(0.7978845608028654 * (xi + 0.044715 * xi * xi * xi))
            dright = (1 - th * th) * 0.7978845608028654 * (1 + 3 * 0.044715 * xi * xi)
            gx[i] += g[i] * (0.5 * (1 + th) + 0.5 * xi * dright)


@cuda.jit(cache=True)
def softplus_adjoint(g, x, gx, factor, threshold):
    """softplus's gradient, its beta the factor."""
    for i in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        z = x[i] * factor
        if z > threshold:
            gx[i] += g[i]
        else:
            ez = math.exp(z)
            gx[i] += g[i] * ez / (ez + 1)


@cuda.jit(cache=True)
def pow_adjoint_a(g, a, b, ga):
    """pow's gradient in the base: torch's 0 where the exponent is 0."""
    for i in range(cuda.grid(1), ga.shape[0], cuda.gridsize(1)):
        if b[i] != 0:
            ga[i] += g[i] * (b[i] * a[i] ** (b[i] - 1))


@cuda.jit(cache=True)
def pow_adjoint_b(g, a, b, y, gb):
    """pow's gradient in the exponent: torch's g * 0 where the base is 0 and the exponent not negative."""
    for i in range(cuda.grid(1), gb.shape[0], cuda.gridsize(1)):
        if a[i] == 0 and b[i] >= 0:
            gb[i] += g[i] * 0.0
        else:
            gb[i] += g[i] * (y[i] * math.log(a[i]))


@cuda.jit(cache=True)
def rpow_adjoint(g, x, y, gx, base, log_base):
    """c ** x's gradient, torch's g * (y * log(c)); a zero base: g * 0 where x >= 0."""
    for i in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        if base == 0 and x[i] >= 0:
            gx[i] += g[i] * 0.0
        else:
            gx[i] += g[i] * (y[i] * log_base)
# -- reductions and scans: one thread per output element, looping over the elements it reduces in
# a fixed order (deterministic, no atomics). A single axis d is addressed as [outer, n, inner]; any
# set of axes through a segment map ``seg``, seg[j * m + k] the k-th of output element j's m inputs.
@cuda.jit(cache=True)
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


@cuda.jit(cache=True)
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


@cuda.jit(cache=True)
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


@cuda.jit(cache=True)
def nll_adjoint(g, pos, w, gx, weighted, reduced, scale):
    """gx[pos[i]] -= g (g[0] * scale when reduced) times w[i]: each sample's target its own element."""
    for i in range(cuda.grid(1), pos.shape[0], cuda.gridsize(1)):
        gi = g[0] * scale if reduced else g[i]
        gx[pos[i]] -= gi * w[i] if weighted else gi


@cuda.jit(cache=True)
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


@cuda.jit(cache=True)
def cumsum_rows(x, y, outer, n, inner):
    """The cumulative sum along the middle axis, in order (np.cumsum's)."""
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        base = (t // inner) * n * inner + t % inner
        acc = x[base]
        y[base] = acc
        for k in range(1, n):
            acc += x[base + k * inner]
            y[base + k * inner] = acc


@cuda.jit(cache=True)
def cumsum_adjoint(g, gx, outer, n, inner):
    """gx += the reversed cumulative sum of g along the middle axis (in float64, as the CPU's)."""
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        base = (t // inner) * n * inner + t % inner
        acc = 0.0
        for k in range(n - 1, -1, -1):
            i = base + k * inner
            acc += g[i]
            gx[i] += acc


@cuda.jit(cache=True)
def segment_extreme(x, seg, y, m, largest):
    """y[j] = the max (largest) or min of output element j's inputs; NaN wins, as in NumPy."""
    for j in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        v = x[seg[j * m]]
        for k in range(1, m):
            u = x[seg[j * m + k]]
            if u != u or (u > v if largest else u < v):
                v = u
        y[j] = v


@cuda.jit(cache=True)
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


@cuda.jit(cache=True)
def segment_prod(x, seg, y, m):
    """y[j] = the product of output element j's inputs, in x's dtype."""
    for j in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        v = x[seg[j * m]]
        for k in range(1, m):
            v *= x[seg[j * m + k]]
        y[j] = v


@cuda.jit(cache=True)
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


@cuda.jit(cache=True)
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


@cuda.jit(cache=True)
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


@cuda.jit(cache=True)
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


@cuda.jit(cache=True)
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


@cuda.jit(cache=True)
def std_root_adjoint(g, y, gx):
    """std as the root of its var: gx += g / (2 * y), nothing where y is 0."""
    for i in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        if y[i] != 0:
            gx[i] += g[i] / (2 * y[i])


KERNELS = {
    # fills, casts, maps and products
    "fill": fill, "copy": copy, "add_into": add_into, "gather": gather, "gather_add": gather_add,
    "scatter_add": scatter_add, "matmul": matmul,
    # elementwise forwards and adjoints that no formula generates
    "power": power, "power_adjoint": power_adjoint, "maximum_scalar": maximum_scalar, "relu_adjoint": relu_adjoint,
    "compare": compare, "compare_scalar": compare_scalar, "classify": classify, "logical": logical,
    "logical_not": logical_not, "where": where, "masked_fill": masked_fill, "maximum": maximum, "minimum": minimum,
    "minimum_scalar": minimum_scalar, "logaddexp_scalar": logaddexp_scalar, "where_adjoint": where_adjoint,
    "maximum_adjoint": maximum_adjoint, "leaky_relu_adjoint": leaky_relu_adjoint, "clamp_adjoint": clamp_adjoint,
    "gelu_adjoint": gelu_adjoint, "softplus_adjoint": softplus_adjoint, "pow_adjoint_a": pow_adjoint_a,
    "pow_adjoint_b": pow_adjoint_b, "rpow_adjoint": rpow_adjoint,
    # softmax, nll_loss, reductions and scans
    "softmax_rows": softmax_rows, "softmax_adjoint": softmax_adjoint, "nll_forward": nll_forward,
    "nll_adjoint": nll_adjoint, "extreme_rows": extreme_rows, "cumsum_rows": cumsum_rows,
    "cumsum_adjoint": cumsum_adjoint, "segment_extreme": segment_extreme,
    "segment_extreme_adjoint": segment_extreme_adjoint, "segment_prod": segment_prod,
    "segment_prod_adjoint": segment_prod_adjoint, "segment_norm": segment_norm,
    "segment_norm_adjoint": segment_norm_adjoint, "segment_var": segment_var,
    "segment_var_adjoint": segment_var_adjoint, "std_root_adjoint": std_root_adjoint,
    # indexing and joining
    "scatter": scatter, "fill_at": fill_at, "add_scaled": add_scaled, "add_run": add_run,
}
