"""DeviceArray: a GPU tensor's value, a C-ordered numba.cuda device array that answers NumPy's
calls the way the ops make them, so that every op's forward code runs unchanged on GPU values.

NumPy hands ufunc calls to ``__array_ufunc__`` and other functions to ``__array_function__``: a
ufunc call that is a GPU row's forward formula (formula.ufunc_call: ``np.add(a, b)``,
``np.tanh(x)``) launches that row's generated kernel; sums, broadcasts, transposes and products
run the hand-written kernels over index maps made on the host from the shapes alone (cached);
indexing, takes and joins gather and scatter through maps the same way (one per call where index
values decide the map). A call with no CUDA kernel raises NotImplementedError naming the op; a CPU
array next to a GPU one raises torch's mixed-device error. Results are always fresh C-ordered
arrays, reshapes views; indexing copies where NumPy makes a view.

numba.cuda is imported on the first GPU value (``cuda.runtime``), never by this module's import.
"""
import math
import sys

import numpy as np

from . import launch, runtime

MIXED_MSG = "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"
_K = []  # [kernels module, generated module] once numba.cuda is imported


def kernels():
    """(the hand-written kernels module, the generated one), numba.cuda imported on first need."""
    if not _K:
        runtime()
        from . import _generated, kernels
        _K.extend((kernels, _generated))
    return _K


class _Flags:
    __slots__ = ()
    c_contiguous = True
    writeable = True


_FLAGS = _Flags()


class DeviceArray:
    __slots__ = ("d", "shape", "dtype", "__weakref__")
    flags = _FLAGS
    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: _prod(self.shape))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)
    itemsize = property(lambda self: self.dtype.itemsize)
    strides = property(lambda self: _strides(self.shape, self.dtype.itemsize))

    def __init__(self, d, shape=None):
        self.d = d  # the device array, flat (1-D) and C-ordered: every kernel reads it so
        self.shape = tuple(int(n) for n in (d.shape if shape is None else shape))
        self.dtype = np.dtype(d.dtype)

    # -- moving between devices ------------------------------------------------------------------
    def get(self):
        """The values on the host (a synchronising copy)."""
        return self.d.copy_to_host().reshape(self.shape)

    def __array__(self, dtype=None, copy=None):
        raise _unsupported("np.asarray")

    # -- array methods the ops call ----------------------------------------------------------------
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = tuple(shape)
        if -1 in shape:
            known = _prod(s for s in shape if s != -1)
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        if _prod(shape) != self.size:
            raise ValueError(f"cannot reshape array of size {self.size} into shape {shape}")
        return DeviceArray(self.d, shape)

    def view(self):
        return DeviceArray(self.d, self.shape)

    def ravel(self):
        return DeviceArray(self.d, (self.size,))

    def copy(self):
        return self.astype(self.dtype)

    def astype(self, dtype, copy=True):
        dtype = np.dtype(dtype)
        if dtype == self.dtype and not copy:
            return self
        out = empty(self.shape, dtype)
        run_kernel("copy", out.size, self.d, out.d)
        return out

    def __getitem__(self, key):
        """A copy of the elements NumPy's ``key`` picks (a view in NumPy): 0-d where NumPy gives a scalar."""
        idx, shape = picks(self.shape, key)
        return _gather(self, idx, shape)

    def __setitem__(self, key, value):
        s = _scalar(value)
        if isinstance(key, DeviceArray) and key.dtype == np.bool_ and key.shape == self.shape and s is not None:
            run_kernel("masked_fill", self.size, key.d, self.d, self.dtype.type(s))  # (masked_fill's forward)
        elif key is Ellipsis and s is not None:
            run_kernel("fill", self.size, self.d, self.dtype.type(s))
        elif key is Ellipsis:
            v = _on_device(value)
            run_kernel("copy", self.size, (v if v.size == self.size else broadcast_to(v, self.shape)).d, self.d)
        else:
            idx, shape = picks(self.shape, key)
            if s is not None:
                run_kernel("fill_at", _prod(shape), self.d, idx, self.dtype.type(s))
            elif _prod(shape):
                run_kernel("scatter", _prod(shape), broadcast_to(_on_device(value), shape).d, idx, self.d)

    def any(self, axis=None):
        """Whether any element is nonzero: a 0-d bool on the device."""
        if axis is not None:
            raise _unsupported(".any(axis=...)")
        return np.not_equal(_sum(np.not_equal(self, 0), None, False, None), 0)

    def __bool__(self):
        """The value read to the host, as bool() of a CUDA tensor is in torch (it synchronises)."""
        return bool(self.get())

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise _unsupported(f".{name}")

    # -- NumPy's protocols -------------------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.pop("out", None)
        if ufunc is np.matmul and method == "__call__" and out is None and not kwargs:
            return matmul(*inputs)
        if method == "at" and ufunc is np.add and out is None and not kwargs:
            return _add_at(*inputs)
        if method == "reduce" and ufunc is np.add and out is None:
            return _sum(inputs[0], kwargs.get("axis", 0), kwargs.get("keepdims", False), kwargs.get("dtype"))
        if method != "__call__" or kwargs:
            raise _unsupported(f"np.{ufunc.__name__}.{method}" if method != "__call__" else f"np.{ufunc.__name__}")
        if out is None and ufunc.__name__ in COMPARISONS:
            return _compare(COMPARISONS[ufunc.__name__], inputs)
        if out is None and ufunc.__name__ in _CLASSES:
            return _classify(ufunc.__name__, *inputs)
        if out is None and ufunc.__name__ in _LOGICAL:
            return _logical(ufunc.__name__, inputs)
        return _elementwise(ufunc.__name__, inputs, out[0] if out else None)

    def __array_function__(self, func, types, args, kwargs):
        handler = _FUNCTIONS.get(func.__name__)
        if handler is None:
            raise _unsupported(f"np.{func.__name__}")
        return handler(*args, **kwargs)

    __add__ = __radd__ = lambda self, other: np.add(self, other)
    __sub__ = lambda self, other: np.subtract(self, other)
    __rsub__ = lambda self, other: np.subtract(other, self)
    __mul__ = __rmul__ = lambda self, other: np.multiply(self, other)
    __truediv__ = lambda self, other: np.divide(self, other)
    __rtruediv__ = lambda self, other: np.divide(other, self)
    __neg__ = lambda self: np.negative(self)
    __matmul__ = lambda self, other: np.matmul(self, other)
    __lt__ = lambda self, other: np.less(self, other)
    __le__ = lambda self, other: np.less_equal(self, other)
    __gt__ = lambda self, other: np.greater(self, other)
    __ge__ = lambda self, other: np.greater_equal(self, other)
    __eq__ = lambda self, other: np.equal(self, other)  # (not identity: VJPs compare values, e.g. max's ties)
    __ne__ = lambda self, other: np.not_equal(self, other)
    __hash__ = object.__hash__
    __invert__ = lambda self: np.invert(self)
    __and__ = lambda self, other: np.bitwise_and(self, other)
    __or__ = lambda self, other: np.bitwise_or(self, other)

    def __iadd__(self, other):
        return _elementwise("add", (self, other), self)

    def __isub__(self, other):
        return _elementwise("subtract", (self, other), self)

    def __imul__(self, other):
        return _elementwise("multiply", (self, other), self)


def _prod(shape):
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _strides(shape, itemsize):
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= int(n)
    return tuple(reversed(out))


def empty(shape, dtype):
    cuda = runtime()
    n = _prod(shape)
    return DeviceArray(cuda.device_array(n, np.dtype(dtype)), shape)


def full(shape, dtype, value):
    out = empty(shape, dtype)
    run_kernel("fill", out.size, out.d, out.dtype.type(value))
    return out


def zeros(shape, dtype):
    return full(shape, dtype, 0)


def to_device(v):
    """A host array's values on the device."""
    v = np.asarray(v)  # (np.ascontiguousarray would make a 0-d value 1-d)
    return DeviceArray(runtime().to_device(np.ascontiguousarray(v.reshape(-1))), v.shape)


def run_kernel(name, n, *args):
    """Launch the hand-written kernel ``name`` over n elements."""
    k = kernels()[0].KERNELS[name]
    blocks, threads = launch(n)
    k[blocks, threads](*args)


def _on_device(v):
    """v, a GPU value, or torch's error for a CPU one beside GPU ones."""
    if isinstance(v, DeviceArray):
        return v
    raise RuntimeError(MIXED_MSG)


def _scalar(v):
    """v as a Python number when it is one (a 0-d CPU array is one, as torch lets a CPU scalar
    tensor meet GPU ones), else None."""
    if isinstance(v, (bool, int, float, np.number, np.bool_)):
        return v
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    return None


def _elementwise(name, inputs, out):
    """A ufunc call on device values: the GPU row whose forward is that ufunc on these operands."""
    arrays, pattern, c = [], "", 0.0
    for v in inputs:
        s = _scalar(v)
        if s is not None:
            pattern += "c"
            c = s
        elif isinstance(v, DeviceArray):
            pattern += "x"
            arrays.append(v)
        else:
            raise RuntimeError(MIXED_MSG) if isinstance(v, np.ndarray) else _unsupported(f"np.{name}")
    if pattern == "xx":
        pattern = "ab"
    if name == "square" and pattern == "x":  # (np.square is x * x, bit for bit)
        arrays, pattern, name = arrays * 2, "ab", "multiply"
    if name == "reciprocal" and pattern == "x":  # (and np.reciprocal 1 / x: rsqrt's forward)
        pattern, name, c = "cx", "divide", 1
    kernel = kernels()[1].FORWARD.get((name, pattern))
    if kernel is None and (name, pattern) in _HAND_FORWARD:
        kernel = kernels()[0].KERNELS[_HAND_FORWARD[name, pattern]]
    dtype = arrays[0].dtype
    if kernel is None or dtype.kind != "f" or any(a.dtype != dtype for a in arrays):
        raise _unsupported(f"np.{name}" + ("" if kernel is None else f" on {', '.join(str(a.dtype) for a in arrays)}"))
    shape = arrays[0].shape if len(arrays) == 1 else tuple(np.broadcast_shapes(arrays[0].shape, arrays[1].shape))
    if out is None:
        out = empty(shape, dtype)
    elif out.shape != shape:
        raise ValueError(f"non-broadcastable output operand with shape {out.shape} doesn't match the broadcast "
                         f"shape {shape}")
    blocks, threads = launch(out.size)
    if pattern == "ab":
        a, b = (broadcast_to(v, shape) for v in arrays)
        kernel[blocks, threads](a.d, b.d, out.d)
    else:
        kernel[blocks, threads](arrays[0].d, out.d, dtype.type(c))
    return out


# The hand-written kernels of ufunc calls that no row's formula is, by (ufunc name, operands).
_HAND_FORWARD = {("power", "xc"): "power", ("maximum", "xc"): "maximum_scalar", ("maximum", "ab"): "maximum",
                 ("minimum", "ab"): "minimum", ("minimum", "xc"): "minimum_scalar",
                 ("logaddexp", "cx"): "logaddexp_scalar"}

# Comparisons (bool results), by their code in the compare kernels; c (op) x is x (flipped op) c.
COMPARISONS = {"less": 0, "less_equal": 1, "greater": 2, "greater_equal": 3, "equal": 4, "not_equal": 5}
_FLIPPED = (2, 3, 0, 1, 4, 5)
# Logical ops of bool arrays (the bitwise ones are the same there), by their code in the logical kernel.
_LOGICAL = {"logical_and": 0, "bitwise_and": 0, "logical_or": 1, "bitwise_or": 1, "logical_not": -1, "invert": -1}

# Tests of each float's class, by their code in the classify kernel; what they answer for other dtypes.
_CLASSES = {"isnan": (0, False), "isinf": (1, False), "isfinite": (2, True)}


def _compare(op, inputs):
    a, b = inputs
    if isinstance(a, DeviceArray) and isinstance(b, DeviceArray):
        dtype = np.result_type(a.dtype, b.dtype)
        shape = tuple(np.broadcast_shapes(a.shape, b.shape))
        a, b = (broadcast_to(v.astype(dtype, copy=False), shape) for v in (a, b))
        out = empty(shape, np.bool_)
        run_kernel("compare", out.size, a.d, b.d, out.d, op)
        return out
    if not isinstance(a, DeviceArray):
        a, b, op = b, a, _FLIPPED[op]
    c = _scalar(b)
    if c is None:
        raise RuntimeError(MIXED_MSG)
    out = empty(a.shape, np.bool_)
    run_kernel("compare_scalar", out.size, a.d, out.d, np.result_type(a.dtype, c).type(c), op)  # (NumPy's promotion)
    return out


def _classify(name, v):
    """np.isnan, np.isinf, np.isfinite of a device array (bools)."""
    op, other = _CLASSES[name]
    v = _on_device(v)
    if v.dtype.kind != "f":  # (integers and bools are finite numbers)
        return full(v.shape, np.bool_, other)
    out = empty(v.shape, np.bool_)
    run_kernel("classify", out.size, v.d, out.d, op)
    return out


def _logical(name, inputs):
    arrays = [_on_device(v) for v in inputs]
    if name == "logical_not" and arrays[0].dtype != np.bool_:  # (of numbers: whether each is zero)
        return _compare(COMPARISONS["equal"], (arrays[0], 0))
    if any(v.dtype != np.bool_ for v in arrays):
        raise _unsupported(f"np.{name} of " + ", ".join(str(v.dtype) for v in arrays))
    shape = tuple(np.broadcast_shapes(*(v.shape for v in arrays)))
    out = empty(shape, np.bool_)
    if len(arrays) == 1:
        run_kernel("logical_not", out.size, arrays[0].d, out.d)
    else:
        run_kernel("logical", out.size, *(broadcast_to(v, shape).d for v in arrays), out.d, _LOGICAL[name])
    return out


def where(cond, x, y):
    """np.where of device values; a scalar operand (a number, a 0-d host array) stands for a full array."""
    cond = _on_device(cond)
    dtype = np.result_type(*(v.dtype if isinstance(v, (DeviceArray, np.ndarray)) else v for v in (x, y)))
    shape = tuple(np.broadcast_shapes(cond.shape, *(v.shape for v in (x, y) if isinstance(v, DeviceArray))))
    a, b = (broadcast_to(v.astype(dtype, copy=False), shape) if isinstance(v, DeviceArray) else
            full(shape, dtype, _number(v)) for v in (x, y))
    out = empty(shape, dtype)
    run_kernel("where", out.size, broadcast_to(cond, shape).d, a.d, b.d, out.d)
    return out


def _number(v):
    s = _scalar(v)
    if s is None:
        raise RuntimeError(MIXED_MSG)
    return s


# -- index maps: which element of one array each element of another reads --------------------------
_MAPS = {}


def index_map(key, make):
    """The device copy of ``make()`` (an int64 host array made from shapes only), cached by ``key``."""
    return shaped_map(key, make)[0]


def shaped_map(key, make):
    """(index_map's device copy of ``make()``, flat, and ``make()``'s shape)."""
    m = _MAPS.get(key)
    if m is None:
        if len(_MAPS) > 4096:  # ever-new shapes stay bounded
            _MAPS.clear()
        m = _MAPS[key] = _per_call(make())
    return m


def broadcast_to(v, shape, subok=False):
    shape = tuple(int(s) for s in shape)
    if v.shape == shape:
        return v
    idx = index_map(("bcast", v.shape, shape),
                    lambda: np.broadcast_to(np.arange(v.size).reshape(v.shape), shape))
    out = empty(shape, v.dtype)
    run_kernel("gather", out.size, v.d, idx, out.d)
    return out


def transpose(v, axes=None):
    axes = tuple(reversed(range(v.ndim))) if axes is None else tuple(axes)
    shape = tuple(v.shape[k] for k in axes)
    idx = index_map(("perm", v.shape, axes), lambda: np.transpose(np.arange(v.size).reshape(v.shape), axes))
    out = empty(shape, v.dtype)
    run_kernel("gather", out.size, v.d, idx, out.d)
    return out


def picks(shape, key):
    """(the device map of the flat positions that NumPy's ``key`` picks from an array of ``shape``,
    the shape picked). A key of ints, slices, None and Ellipsis makes a map cached by shape and key;
    index arrays, whose values decide the map, one per call (a GPU index is read on the host)."""
    parts = key if isinstance(key, tuple) else (key,)
    parts = tuple(p.get() if isinstance(p, DeviceArray) else np.asarray(p) if isinstance(p, list) else p
                  for p in parts)
    key = parts if isinstance(key, tuple) else parts[0]
    make = lambda: np.arange(_prod(shape), dtype=np.int64).reshape(shape)[key]
    if all(p is None or p is Ellipsis or isinstance(p, (int, np.integer, slice)) for p in parts):
        hashable = tuple((p.start, p.stop, p.step) if isinstance(p, slice) else p for p in parts)
        return shaped_map(("key", shape, hashable), make)
    return _per_call(make())


def _per_call(h):
    """(the device copy of host map h, h's shape), not cached: h depends on index values."""
    h = np.asarray(h, np.int64)  # (np.ascontiguousarray would make a 0-d map 1-d)
    return runtime().to_device(np.ascontiguousarray(h.reshape(-1))), h.shape


def _gather(v, idx, shape):
    """v's elements at the flat positions of device map idx, as an array of ``shape``."""
    out = empty(shape, v.dtype)
    if out.size:
        run_kernel("gather", out.size, v.d, idx, out.d)
    return out


def _add_at(a, key, b):
    """np.add.at(a, key, b): atomics, as positions may repeat."""
    idx, shape = picks(_on_device(a).shape, key)
    if _prod(shape):
        s = _scalar(b)
        b = full(shape, a.dtype, s) if s is not None else broadcast_to(_on_device(b), shape)
        run_kernel("scatter_add", b.size, b.d, idx, a.d, a.dtype.type(1))


def take(v, indices, axis=None, out=None, mode="raise"):
    indices = indices.get() if isinstance(indices, DeviceArray) else indices
    return _gather(v, *_per_call(np.take(np.arange(v.size, dtype=np.int64).reshape(v.shape), indices, axis)))


def tile_positions(shape, reps):
    """np.tile's device map of an array of ``shape`` (cached): repeat's index map is the one its forward read."""
    reps = tuple(reps) if isinstance(reps, (tuple, list)) else (reps,)
    make = lambda: np.tile(np.arange(_prod(shape)).reshape(shape), reps)
    return DeviceArray(*shaped_map(("tile", shape, reps), make))


def flip_positions(shape, axis):
    """np.flip's device map of an array of ``shape`` (cached), as tile_positions."""
    axis = tuple(axis) if isinstance(axis, (tuple, list)) else axis
    make = lambda: np.flip(np.arange(_prod(shape)).reshape(shape), axis)
    return DeviceArray(*shaped_map(("flip", shape, axis), make))


def tile(v, reps):
    p = tile_positions(v.shape, reps)
    return _gather(v, p.d, p.shape)


def flip(v, axis=None):
    p = flip_positions(v.shape, axis)
    return _gather(v, p.d, p.shape)


def join_positions(shape, d, off, span):
    """The flat positions, in an array of ``shape``, of positions off .. off + span - 1 of dim d
    (where cat puts a piece, and reads its gradient back)."""
    return index_map(("join", shape, d, off, span),
                     lambda: np.arange(_prod(shape)).reshape(shape)[(slice(None),) * d + (slice(off, off + span),)])


def concatenate(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    arrays = [_on_device(v) for v in arrays]
    first = arrays[0]
    d = axis % first.ndim
    if any(v.dtype != first.dtype or v.ndim != first.ndim for v in arrays):
        raise _unsupported("np.concatenate of mixed dtypes or ranks")
    shape = first.shape[:d] + (sum(v.shape[d] for v in arrays),) + first.shape[d + 1:]
    result, off = empty(shape, first.dtype), 0
    for v in arrays:
        if v.size:
            run_kernel("scatter", v.size, v.d, join_positions(shape, d, off, v.shape[d]), result.d)
        off += v.shape[d]
    return result


def stack(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    arrays = [_on_device(v) for v in arrays]
    d = axis % (arrays[0].ndim + 1)
    return concatenate([v.reshape(v.shape[:d] + (1,) + v.shape[d:]) for v in arrays], d)


def add_run(a, b, off, lo, sign, shape):
    """algebra.add_run's value: flat a placed at offset lo, plus sign times flat b placed at offset off."""
    out = empty(shape, a.dtype)
    run_kernel("add_run", out.size, a.d, b.d, out.d, off, lo, a.dtype.type(sign))
    return out


def reduced_positions(shape, axes, keepdims):
    """Each element's position in the sum of an array of ``shape`` over ``axes`` (and that sum's shape)."""
    kept = tuple(1 if k in axes else n for k, n in enumerate(shape))
    out_shape = kept if keepdims else tuple(n for k, n in enumerate(shape) if k not in axes)
    idx = index_map(("sum", shape, axes), lambda: np.broadcast_to(np.arange(_prod(kept)).reshape(kept), shape))
    return idx, out_shape


def _axes(v, axis):
    """NumPy's axis argument (None, an int or a tuple) as a tuple of v's axes."""
    return tuple(range(v.ndim)) if axis is None else \
        tuple(a % v.ndim for a in (axis if isinstance(axis, tuple) else (axis,)))


def _sum(v, axis, keepdims, dtype):
    axes = _axes(v, axis)
    if v.dtype.kind in "biu" and dtype is None:  # (a count of bools, as NumPy's: int64, summed in float64)
        return _sum(v.astype(np.float64), axis, keepdims, None).astype(np.int64)
    if v.dtype.kind != "f" or dtype is not None and np.dtype(dtype) != v.dtype:
        raise _unsupported("np.sum of " + str(v.dtype))
    idx, shape = reduced_positions(v.shape, axes, keepdims)
    out = zeros(shape, v.dtype)
    run_kernel("scatter_add", v.size, v.d, idx, out.d, v.dtype.type(1))
    return out


def matmul(a, b):
    """a @ b for 2-D operands, or 3-D ones with one batch size (bmm): NumPy on host copies under the
    simulator (where a kernel costs 2 us a multiply-add), cuBLAS on a GPU (the matmul kernel without
    nvmath-python)."""
    if not isinstance(a, DeviceArray) or not isinstance(b, DeviceArray):
        raise RuntimeError(MIXED_MSG)
    if a.ndim != b.ndim or a.ndim not in (2, 3) or a.shape[:-2] != b.shape[:-2] or a.dtype != b.dtype \
            or a.dtype.kind != "f":
        raise _unsupported("np.matmul of " + f"{a.shape} {a.dtype} and {b.shape} {b.dtype}")
    out = empty(a.shape[:-1] + b.shape[-1:], a.dtype)
    mm_into(a, b, out, False, False, 0.0)
    return out


def mm_into(a, b, out, ta, tb, beta):
    """out = beta * out + op(a) @ op(b) (op: transposed where ta, tb), all C-ordered 2-D, or 3-D
    with the batch first."""
    m, n = out.shape[-2:]
    k = a.shape[-2] if ta else a.shape[-1]
    from . import simulated
    if simulated():
        ha, hb = a.get(), b.get()
        r = (ha.swapaxes(-1, -2) if ta else ha) @ (hb.swapaxes(-1, -2) if tb else hb)
        if beta:
            r = r + out.get() * beta
        out.d.copy_to_device(np.ascontiguousarray(r, out.dtype).reshape(-1))
        return
    from .blas import gemm
    if gemm(a, b, out, ta, tb, beta):
        return
    nb = out.shape[0] if out.ndim == 3 else 1
    run_kernel("matmul", out.size, a.d, b.d, out.d, nb, m, k, n, ta, tb, out.dtype.type(beta))


# -- reductions and losses with kernels of their own: the ops call these for GPU values ---------------
def around(shape, d):
    """(outer, n, inner) of ``shape`` around axis d (a 0-d shape: one element)."""
    return _prod(shape[:d]), (shape[d] if shape else 1), _prod(shape[d + 1:])


def softmax(v, d, log):
    """softmax of v along axis d (log: log_softmax)."""
    out = empty(v.shape, v.dtype)
    outer, n, inner = around(v.shape, d)
    if n:  # (the kernel reads each row's first element)
        run_kernel("softmax_rows", outer * inner, v.d, out.d, outer, n, inner, bool(log))
    return out


def nll(x, pos, w, reduced, scale):
    """The negative log-likelihood's terms -x[pos] * w at flat positions pos of x (w None: ones), or
    reduced, their sum times scale."""
    out = empty(() if reduced else pos.shape, x.dtype)
    run_kernel("nll_forward", pos.size, x.d, pos.d, x.d if w is None else w.d, out.d, w is not None, bool(reduced),
               x.dtype.type(scale))
    return out


def extreme(v, d, keepdim, largest):
    """(values, indices along d, flat positions in v) of the max (largest) or min along axis d."""
    shape = v.shape[:d] + (1,) * bool(keepdim) + v.shape[d + 1:]
    values, idx, pos = empty(shape, v.dtype), empty(shape, np.int64), empty(shape, np.int64)
    outer, n, inner = around(v.shape, d)
    run_kernel("extreme_rows", outer * inner, v.d, values.d, idx.d, pos.d, outer, n, inner, bool(largest))
    return values, idx, pos


def extreme_share(x, y, axes):
    """Each element's share of the gradient of y, x's max or min over ``axes``: 1 / (its ties) where
    it is the extreme, else 0."""
    seg, m = segments(x.shape, tuple(axes))
    share = zeros(x.shape, x.dtype)
    run_kernel("segment_extreme_adjoint", y.size, full(y.shape, x.dtype, 1).d, x.d, y.d, seg, share.d, m)
    return share


def cumsum(v, axis=None, dtype=None, out=None):
    if v.dtype.kind != "f" or dtype is not None or out is not None:
        raise _unsupported("np.cumsum of " + str(v.dtype))
    if axis is None:
        v, axis = v.ravel(), 0
    result = empty(v.shape, v.dtype)
    outer, n, inner = around(v.shape, axis % v.ndim)
    if n:  # (the kernel reads each row's first element)
        run_kernel("cumsum_rows", outer * inner, v.d, result.d, outer, n, inner)
    return result


def segments(shape, axes):
    """(seg, m) of a reduction of ``shape`` over ``axes``: seg[j * m + k] is the flat index of the
    k-th of the m inputs of output element j (C order both)."""
    kept = [k for k in range(len(shape)) if k not in axes]
    seg = index_map(("seg", shape, axes),
                    lambda: np.transpose(np.arange(_prod(shape)).reshape(shape), kept + list(axes)))
    return seg, _prod(shape[k] for k in axes)


def reduce(kernel, v, axis, keepdims, *args, none=0):
    """v reduced over ``axis`` (NumPy's) by the segment kernel ``kernel`` (launched with ``args``
    after its own); a reduction of no elements gives ``none``."""
    if v.dtype.kind != "f":
        raise _unsupported(f"{kernel} of {v.dtype}")
    axes = _axes(v, axis)
    shape = tuple(1 if k in axes else n for k, n in enumerate(v.shape) if keepdims or k not in axes)
    seg, m = segments(v.shape, axes)
    if not m:
        return full(shape, v.dtype, none)
    out = empty(shape, v.dtype)
    run_kernel(kernel, out.size, v.d, seg, out.d, m, *args)
    return out


def norm_mode(p):
    """How segment_norm and its adjoint compute the p-norm (their docstrings)."""
    return {0: 0, 1: 1, 2: 2, math.inf: 3, -math.inf: 4}.get(p, 5 if p < 1 else 6)


def norm(v, p, axes, keepdims):
    return reduce("segment_norm", v, axes, keepdims, v.dtype.type(p), norm_mode(p))


def var(v, axes, keepdims, correction):
    return reduce("segment_var", v, axes, keepdims, v.dtype.type(correction), none=math.nan)


def _extreme_function(largest):
    def f(v, axis=None, out=None, keepdims=False, initial=None, where=None):
        if out is not None or initial is not None or where is not None:
            raise _unsupported("np.max" if largest else "np.min")
        return reduce("segment_extreme", v, axis, keepdims, bool(largest))
    return f


def _prod_function(v, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    if dtype is not None and np.dtype(dtype) != v.dtype or out is not None or initial is not None or \
            where is not None:
        raise _unsupported("np.prod")
    return reduce("segment_prod", v, axis, keepdims, none=1)


def _unsupported(what):
    """NotImplementedError naming the op (the outermost frame in tapegrad's ops: the row it records,
    or the public function) that needed ``what``."""
    name, f = None, sys._getframe(1)
    while f is not None:
        module = f.f_globals.get("__name__", "")
        if module.startswith("tapegrad.ops") or module.startswith("tapegrad.nn"):
            op, code = f.f_locals.get("op"), f.f_code.co_name
            if hasattr(op, "grad_fn") and hasattr(op, "name"):
                name = op.name
            elif not code.startswith("_") and code not in ("function", "method", "f", "promoted", "<lambda>"):
                name = code
        f = f.f_back
    op = f"'{name}'" if name else "this operation"
    return NotImplementedError(f"{op} has no CUDA kernel in tapegrad yet ({what} on GPU values); copy the "
                               "tensors to the CPU with .cpu() for it")


def _copyto(dst, src, where):
    """np.copyto, as in-place ops write their result into a tensor's own array."""
    if where is not True:
        raise _unsupported("np.copyto with where=")
    dst[...] = src


def _shares_memory(a, b, max_work=None):
    return isinstance(b, DeviceArray) and a.d is b.d


_FUNCTIONS = {
    "broadcast_to": broadcast_to,
    "ascontiguousarray": lambda v, dtype=None: v if dtype is None else v.astype(dtype, copy=False),
    "transpose": transpose,
    "zeros_like": lambda v, dtype=None, order="K", subok=True, shape=None: full(v.shape if shape is None else shape,
                                                                               v.dtype if dtype is None else dtype, 0),
    "ones_like": lambda v, dtype=None, order="K", subok=True, shape=None: full(v.shape if shape is None else shape,
                                                                              v.dtype if dtype is None else dtype, 1),
    "full_like": lambda v, fill_value, dtype=None, order="K", subok=True, shape=None:
        full(v.shape if shape is None else shape, v.dtype if dtype is None else dtype, fill_value),
    "empty_like": lambda v, dtype=None, order="K", subok=True, shape=None:
        empty(v.shape if shape is None else shape, v.dtype if dtype is None else dtype),
    "copy": lambda v, order="K", subok=False: v.copy(),
    "copyto": lambda dst, src, casting="same_kind", where=True: _copyto(dst, src, where),
    "reshape": lambda v, shape, order="C": v.reshape(shape),
    "shape": lambda v: v.shape,
    "shares_memory": _shares_memory,
    "may_share_memory": _shares_memory,
    "expand_dims": lambda v, axis: v.reshape(v.shape[:axis] + (1,) + v.shape[axis:]),
    "squeeze": lambda v, axis=None: v.reshape(tuple(n for k, n in enumerate(v.shape)
                                                    if n != 1 or axis is not None and k not in axis)),
    "where": where,
    # reductions and scans
    "sum": lambda v, axis=None, dtype=None, out=None, keepdims=False: _sum(v, axis, keepdims, dtype),
    "max": _extreme_function(True), "min": _extreme_function(False), "prod": _prod_function, "cumsum": cumsum,
    # picks and joins
    "take": take, "tile": tile, "flip": flip, "concatenate": concatenate, "stack": stack,
}
