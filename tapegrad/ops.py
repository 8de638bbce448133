"""The op table: one row per differentiable operation, and the front-end functions that record them.

A row holds everything about an op: its name, torch's ``grad_fn`` class name, arity, NumPy
forward, the name of its numeric adjoint in ``kernels`` (the jitted path), its differentiable
VJP written in tapegrad ops (the ``create_graph`` path, which re-records), and which values
the adjoint reads (``reads``: operand positions 0..2 and 'out'), used by the in-place version
check. Several rows may share one adjoint kernel (sum/mean, the identity-gradient ops).

VJP signature: ``vjp(g, ins, out, row) -> grads``: ``g`` the output gradient (Tensor), ``ins``
the input Tensors (None where unused), ``out`` the output Tensor, ``row`` the tape row tuple
``(op, a, b, c, out, i0, i1, f0)``; returns one gradient (or None) per input.
"""
import math

import numpy as np

from . import dtypes
from .tape import LEAF, REQUIRES_GRAD, _contiguous, _state, counter, current_tape
from .tensor import Tensor, _dim, _new

ndarray = np.ndarray


class Op:
    __slots__ = ("code", "name", "grad_fn", "arity", "forward", "kernel", "vjp", "reads")

    def __init__(self, code, name, grad_fn, arity, forward, kernel, vjp, reads):
        self.code, self.name, self.grad_fn, self.arity = code, name, grad_fn, arity
        self.forward, self.kernel, self.vjp, self.reads = forward, kernel, vjp, reads

    def __repr__(self):
        return f"<op {self.code} {self.name}>"


TABLE = []


def row(name, grad_fn, arity, forward, kernel, vjp, reads=()):
    op = Op(len(TABLE), name, grad_fn, arity, forward, kernel, vjp, reads)
    TABLE.append(op)
    return op


# -- recording (the hot path) -----------------------------------------------------------------
def _result(value, tape, slot, vc):
    t = _new(Tensor)
    t._value = value
    t._tape = tape
    t._slot = slot
    t._rg = True
    t._vc = vc
    t._grad = None
    t._x = None
    return t


def _leaf(value):
    t = _new(Tensor)
    t._value = value
    t._tape = None
    t._slot = -1
    t._rg = False
    t._vc = None
    t._grad = None
    t._x = None
    return t


def _unary(op, x, value, i0=0, i1=0, f0=0.0):
    """Wrap ``value`` (the result of unary ``op`` on x) and record the op when x needs grad.
    Inlined by hand: this runs once per op (W1 measures it)."""
    if value.__class__ is not ndarray:
        value = np.asarray(value)  # NumPy returns scalars for 0-d results
    elif not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)  # a ufunc keeps a view's memory order; the engine reads C order
    t = _new(Tensor)
    t._value = value
    t._vc = None
    t._grad = None
    t._x = None
    if x._rg and _state.grad_enabled:
        tape = _state.tape_ref()
        if tape is None or tape.closed:
            tape = current_tape()
        t._tape = tape
        t._slot = tape.push(op.code, x._slot if x._tape is tape else tape.slot_of(x), -1, -1, i0, i1, f0, value, None)
        t._rg = True
    else:
        t._tape = None
        t._slot = -1
        t._rg = False
    return t


def _view(op, x, value, i0=0, i1=0, f0=0.0, b=None):
    """A result that shares x's storage (and so its version counter)."""
    vc = counter(x)
    if x._rg and _state.grad_enabled:
        tape = current_tape()
        a = tape.slot_of(x)
        bs = tape.new_slot(b, LEAF, None) if b is not None else -1
        s = tape.push(op.code, a, bs, -1, i0, i1, f0, _contiguous(value), vc)
        t = _result(value, tape, s, vc)
    else:
        t = _leaf(value)
        t._vc = vc
    t._extra().base = x
    return t


def _binary_rec(op, x, y, value):
    if value.__class__ is not ndarray:
        value = np.asarray(value)
    elif not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)
    if (x._rg or y._rg) and _state.grad_enabled:
        tape = _state.tape_ref()
        if tape is None or tape.closed:
            tape = current_tape()
        a = x._slot if x._tape is tape else tape.slot_of(x)
        b = y._slot if y._tape is tape else tape.slot_of(y)
        return _result(value, tape, tape.push(op.code, a, b, -1, 0, 0, 0.0, value, None), None)
    return _leaf(value)


# -- broadcasting and type promotion ------------------------------------------------------------
def broadcast_shapes(sa, sb):
    if sa == sb:
        return sa
    n = max(len(sa), len(sb))
    out = []
    for i in range(-1, -n - 1, -1):
        da = sa[i] if -i <= len(sa) else 1
        db = sb[i] if -i <= len(sb) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise RuntimeError(f"The size of tensor a ({da}) must match the size of tensor b ({db}) "
                               f"at non-singleton dimension {n + i}")
    return tuple(reversed(out))


def _promote(*ts):
    dims = [dtypes.from_numpy_dtype(t._value.dtype) for t in ts if t._value.ndim]
    zero = [dtypes.from_numpy_dtype(t._value.dtype) for t in ts if not t._value.ndim]
    return dtypes.result_type(dims, zero, ())


def _prepare(x, y, float_result=False):
    """Cast to the common dtype and broadcast to the common shape, recording both when tracked."""
    xv, yv = x._value, y._value
    if xv.dtype != yv.dtype or (float_result and xv.dtype.kind != "f"):
        rt = _promote(x, y)
        if float_result and not rt.is_floating_point:
            rt = dtypes.get_default_dtype()
        x, y = to_dtype(x, rt), to_dtype(y, rt)
    if x._value.shape != y._value.shape:
        shape = broadcast_shapes(x._value.shape, y._value.shape)
        x, y = expand(x, shape, _materialize=True), expand(y, shape, _materialize=True)
    return x, y


def _as_tensor(v, like):
    if isinstance(v, Tensor):
        return v
    if isinstance(v, ndarray):
        return _leaf(v)
    raise TypeError(f"unsupported operand type: {type(v).__name__}")


_SCALARS = (int, float, bool, np.integer, np.floating, np.bool_)


def _scalar_result_dtype(x, c, true_divide=False):
    xd = x._value.dtype
    if xd.kind == "f":
        return None
    if true_divide or isinstance(c, (float, np.floating)):
        return dtypes.get_default_dtype()
    if xd.kind == "b" and not isinstance(c, (bool, np.bool_)):
        return dtypes.int64
    return None


def _binary(op, op_scalar, x, y, reverse_scalar=None, float_result=False):
    """Dispatch ``x (op) y`` with Tensors, arrays or Python scalars on either side."""
    if y.__class__ is Tensor:
        if x.__class__ is not Tensor:
            if isinstance(x, _SCALARS):
                return reverse_scalar(y, x)
            x = _as_tensor(x, y)
        xv, yv = x._value, y._value
        if xv.shape != yv.shape or xv.dtype != yv.dtype or (float_result and xv.dtype.kind != "f"):
            x, y = _prepare(x, y, float_result)
            xv, yv = x._value, y._value
        return _binary_rec(op, x, y, op.forward(xv, yv))
    if isinstance(y, _SCALARS):
        rt = _scalar_result_dtype(x, y, float_result)
        if rt is not None:
            x = to_dtype(x, rt)
        c = y
        if x._value.dtype.kind == "f":
            c = float(y)
        return _unary(op_scalar, x, op_scalar.forward(x._value, c), f0=float(c))
    return _binary(op, op_scalar, x, _as_tensor(y, x), reverse_scalar, float_result)


# -- the rows -----------------------------------------------------------------------------
def _sum_to(g, shape):
    """Sum a broadcast gradient back to ``shape`` (the VJP of expand)."""
    if tuple(g.shape) == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1)
    return reshape(sum(g, axes, keepdim=True), shape)


ADD = row("add", "AddBackward0", 2, np.add, "adj_add", lambda g, i, o, r: (g, g))
SUB = row("sub", "SubBackward0", 2, np.subtract, "adj_sub", lambda g, i, o, r: (g, -g))
MUL = row("mul", "MulBackward0", 2, np.multiply, "adj_mul",
          lambda g, i, o, r: (g * i[1], g * i[0]), reads=(0, 1))
DIV = row("div", "DivBackward0", 2, np.true_divide, "adj_div",
          lambda g, i, o, r: (g / i[1], -g * i[0] / (i[1] * i[1])), reads=(0, 1))
POW = row("pow", "PowBackward1", 2, np.power, "adj_pow",
          lambda g, i, o, r: (g * i[1] * i[0] ** (i[1] - 1), g * o * log(i[0])), reads=(0, 1, "out"))
ADD_SCALAR = row("add_scalar", "AddBackward0", 1, np.add, "adj_identity", lambda g, i, o, r: (g,))
SUB_SCALAR = row("sub_scalar", "SubBackward0", 1, np.subtract, "adj_identity", lambda g, i, o, r: (g,))
RSUB_SCALAR = row("rsub_scalar", "RsubBackward1", 1, lambda x, c: np.subtract(c, x), "adj_neg", lambda g, i, o, r: (-g,))
MUL_SCALAR = row("mul_scalar", "MulBackward0", 1, np.multiply, "adj_mul_scalar", lambda g, i, o, r: (g * r[7],))
DIV_SCALAR = row("div_scalar", "DivBackward0", 1, np.true_divide, "adj_div_scalar", lambda g, i, o, r: (g / r[7],))
POW_SCALAR = row("pow_scalar", "PowBackward0", 1, np.power, "adj_pow_scalar",
                 lambda g, i, o, r: (g * 0.0 if r[7] == 0 else g * r[7] * i[0] ** (r[7] - 1),), reads=(0,))
RPOW_SCALAR = row("rpow_scalar", "PowBackward2", 1, lambda x, c: np.power(c, x), "adj_rpow_scalar",
                  lambda g, i, o, r: (g * o * math.log(r[7]) if r[7] > 0 else g * o * math.nan,), reads=(0, "out"))
NEG = row("neg", "NegBackward0", 1, np.negative, "adj_neg", lambda g, i, o, r: (-g,))
RECIPROCAL = row("reciprocal", "ReciprocalBackward0", 1, lambda x: np.true_divide(1, x), "adj_reciprocal",
                 lambda g, i, o, r: (-g * o * o,), reads=("out",))
EXP = row("exp", "ExpBackward0", 1, np.exp, "adj_exp", lambda g, i, o, r: (g * o,), reads=("out",))
LOG = row("log", "LogBackward0", 1, np.log, "adj_log", lambda g, i, o, r: (g / i[0],), reads=(0,))
SIN = row("sin", "SinBackward0", 1, np.sin, "adj_sin", lambda g, i, o, r: (g * cos(i[0]),), reads=(0,))
COS = row("cos", "CosBackward0", 1, np.cos, "adj_cos", lambda g, i, o, r: (g * -sin(i[0]),), reads=(0,))
TANH = row("tanh", "TanhBackward0", 1, np.tanh, "adj_tanh", lambda g, i, o, r: (g * (1 - o * o),), reads=("out",))
SIGMOID = row("sigmoid", "SigmoidBackward0", 1, lambda x: _sigmoid(x), "adj_sigmoid",
              lambda g, i, o, r: (g * ((1 - o) * o),), reads=("out",))
RELU = row("relu", "ReluBackward0", 1, lambda x: np.maximum(x, 0), "adj_relu",
           lambda g, i, o, r: (g * gt(o, 0),), reads=("out",))
SQRT = row("sqrt", "SqrtBackward0", 1, np.sqrt, "adj_sqrt", lambda g, i, o, r: (g / (2 * o),), reads=("out",))
ABS = row("abs", "AbsBackward0", 1, np.abs, "adj_abs", lambda g, i, o, r: (g * sign(i[0]),), reads=(0,))


def _sum_vjp(g, i, o, r):
    x = i[0]
    keep = [1 if (r[5] >> k) & 1 else d for k, d in enumerate(x.shape)]
    return (expand(reshape(g, keep), tuple(x.shape)) * r[7],) if r[7] != 1.0 else \
        (expand(reshape(g, keep), tuple(x.shape)),)


SUM = row("sum", "SumBackward0", 1, None, "adj_sum", _sum_vjp)
SUM_DIM = row("sum_dim", "SumBackward1", 1, None, "adj_sum", _sum_vjp)
MEAN = row("mean", "MeanBackward0", 1, None, "adj_sum", _sum_vjp)
MEAN_DIM = row("mean_dim", "MeanBackward1", 1, None, "adj_sum", _sum_vjp)
EXPAND = row("expand", "ExpandBackward0", 1, None, "adj_expand", lambda g, i, o, r: (_sum_to(g, i[0].shape),))
MM = row("mm", "MmBackward0", 2, None, "adj_mm",
         lambda g, i, o, r: (mm(g, i[1].t()), mm(i[0].t(), g)), reads=(0, 1))
VIEW = row("view", "ViewBackward0", 1, None, "adj_identity", lambda g, i, o, r: (reshape(g, i[0].shape),))
UNSQUEEZE = row("unsqueeze", "UnsqueezeBackward0", 1, None, "adj_identity", lambda g, i, o, r: (reshape(g, i[0].shape),))
SQUEEZE = row("squeeze", "SqueezeBackward0", 1, None, "adj_identity", lambda g, i, o, r: (reshape(g, i[0].shape),))


def _permute_vjp(g, i, o, r):
    nd = i[0].ndim
    perm = [(r[5] >> (4 * k)) & 15 for k in range(nd)]
    inv = [0] * nd
    for k, p in enumerate(perm):
        inv[p] = k
    return (permute(g, inv),)


PERMUTE = row("permute", "PermuteBackward0", 1, None, "adj_permute", _permute_vjp)
TRANSPOSE = row("transpose", "TransposeBackward0", 1, None, "adj_permute", _permute_vjp)
T = row("t", "TBackward0", 1, None, "adj_permute", _permute_vjp)


def _gather_vjp(g, i, o, r):
    return (_scatter_flat(g, i[1], i[0].shape), None)


def _scatter_vjp(g, i, o, r):
    return (reshape(_gather_flat(g, i[1], tuple(i[0].shape)), i[0].shape), None)


# getitem: b is an int64 index map from each output element to its flat source index; the
# grad_fn name follows the kind of key, as torch's does.
SELECT = row("select", "SelectBackward0", 2, None, "adj_getitem", _gather_vjp)
SLICE = row("slice", "SliceBackward0", 2, None, "adj_getitem", _gather_vjp)
INDEX = row("index", "IndexBackward0", 2, None, "adj_getitem", _gather_vjp)
ALIAS = row("alias", "AliasBackward0", 2, None, "adj_getitem", _gather_vjp)
UNSQUEEZE_KEY = row("index_unsqueeze", "UnsqueezeBackward0", 2, None, "adj_getitem", _gather_vjp)
SCATTER_FLAT = row("scatter_flat", "IndexPutBackward0", 2, None, "adj_scatter_flat", _scatter_vjp)


def _setitem_vjp(g, i, o, r):
    x, v, idx = i
    return (_index_put(g, idx, zeros_like(v)), reshape(_gather_flat(g, idx, tuple(v.shape)), v.shape), None)


SETITEM = row("index_put", "CopySlices", 3, None, "adj_setitem", _setitem_vjp)
CAST = row("to", "ToCopyBackward0", 1, None, "adj_cast", lambda g, i, o, r: (to_dtype(g, i[0].dtype),))
CLONE = row("clone", "CloneBackward0", 1, None, "adj_identity", lambda g, i, o, r: (g,))
# A custom autograd.Function (autograd/function.py): one row per differentiable output, a, b, c up
# to three input slots (more rows for more inputs), i0 its grad_fn name id, i1 the output index.
# Its backward is Python: the engine calls it once per call, between jitted segments (no vjp here).
FUNCTION = row("function", "FunctionBackward", 3, None, "adj_function", None)



def _sigmoid(x):
    # exp of a negative argument only, so large |x| neither overflows nor warns
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


# -- public functions: arithmetic -----------------------------------------------------------
def _rsub(x, c):
    rt = _scalar_result_dtype(x, c)
    if rt is not None:
        x = to_dtype(x, rt)
    c = float(c) if x._value.dtype.kind == "f" else c
    return _unary(RSUB_SCALAR, x, RSUB_SCALAR.forward(x._value, c), f0=float(c))


def _rdiv(x, c):
    return mul(reciprocal(x), c)


def _rpow(x, c):
    rt = _scalar_result_dtype(x, c)
    if rt is not None:
        x = to_dtype(x, rt)
    if x._value.dtype.kind == "f":
        c = float(c)
    return _unary(RPOW_SCALAR, x, RPOW_SCALAR.forward(x._value, c), f0=float(c))


# Fast paths: a float tensor with a Python float skips dispatch and promotion (W1's per-op cost).
def add(x, y, alpha=1):
    if y.__class__ is float and alpha == 1 and x._value.dtype.kind == "f":
        return _unary(ADD_SCALAR, x, np.add(x._value, y), 0, 0, y)
    if alpha != 1:
        y = y * alpha  # a Python scalar stays one
    return _binary(ADD, ADD_SCALAR, x, y, _add_r)


def sub(x, y, alpha=1):
    if alpha != 1:
        y = y * alpha  # a Python scalar stays one
    return _binary(SUB, SUB_SCALAR, x, y, _rsub)


def mul(x, y):
    if y.__class__ is float and x._value.dtype.kind == "f":
        return _unary(MUL_SCALAR, x, np.multiply(x._value, y), 0, 0, y)
    return _binary(MUL, MUL_SCALAR, x, y, _mul_r)


def _add_r(t, c):
    return _binary(ADD, ADD_SCALAR, t, c)


def _mul_r(t, c):
    return _binary(MUL, MUL_SCALAR, t, c)


def div(x, y):
    return _binary(DIV, DIV_SCALAR, x, y, _rdiv, float_result=True)


def pow(x, y):
    if not isinstance(x, Tensor):
        return _rpow(y, x)
    if isinstance(y, _SCALARS):
        rt = _scalar_result_dtype(x, y)
        if rt is not None:
            x = to_dtype(x, rt)
        c = float(y) if x._value.dtype.kind == "f" else y
        return _unary(POW_SCALAR, x, POW_SCALAR.forward(x._value, c), f0=float(c))
    return _binary(POW, None, x, y, _rpow)


def neg(x):
    return _unary(NEG, x, np.negative(x._value))


def _float_unary(op):
    forward = op.forward

    def f(x):
        if x._value.dtype.kind != "f":
            x = to_dtype(x, dtypes.get_default_dtype())
        return _unary(op, x, forward(x._value))
    f.__name__ = op.name
    return f


exp = _float_unary(EXP)
log = _float_unary(LOG)
sin = _float_unary(SIN)
cos = _float_unary(COS)
tanh = _float_unary(TANH)
sigmoid = _float_unary(SIGMOID)
sqrt = _float_unary(SQRT)
reciprocal = _float_unary(RECIPROCAL)


def relu(x):
    return _unary(RELU, x, RELU.forward(x._value))


def abs(x):
    return _unary(ABS, x, np.abs(x._value))


def sign(x):
    return _leaf(np.sign(x._value))


def gt(x, y):
    yv = y._value if isinstance(y, Tensor) else y
    return _leaf(np.asarray(np.greater(x._value, yv)))


# -- reductions ------------------------------------------------------------------------------
def _axes(dim, ndim):
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, int):
        dim = (dim,)
    axes = tuple(sorted({_dim(d, ndim) for d in dim})) if ndim else ()
    if len(axes) != len(dim):
        raise RuntimeError(f"dim {list(dim)} appears multiple times in the list of dims")
    return axes


def _mask(axes):
    m = 0
    for a in axes:
        m |= 1 << a
    return m


def sum(x, dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        x = to_dtype(x, dtypes.as_dtype(dtype))
    xv = x._value
    axes = _axes(dim, xv.ndim)
    value = np.sum(xv, axis=axes, keepdims=keepdim)
    if xv.dtype.kind in "bi":
        value = value.astype(np.int64)
    return _unary(SUM if dim is None else SUM_DIM, x, value, i0=_mask(axes), i1=int(keepdim), f0=1.0)


def mean(x, dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        x = to_dtype(x, dtypes.as_dtype(dtype))
    xv = x._value
    if xv.dtype.kind != "f":
        raise RuntimeError("mean(): could not infer output dtype. Input dtype must be either a floating "
                           f"point or complex dtype. Got: {_torch_type_name(xv.dtype)}")
    axes = _axes(dim, xv.ndim)
    count = 1
    for a in axes:
        count *= xv.shape[a]
    value = np.mean(xv, axis=axes, keepdims=keepdim)
    return _unary(MEAN if dim is None else MEAN_DIM, x, value, i0=_mask(axes), i1=int(keepdim),
                  f0=1.0 / count if count else math.nan)


def _torch_type_name(npd):
    return {"int64": "Long", "int32": "Int", "bool": "Bool", "float32": "Float", "float64": "Double"}[np.dtype(npd).name]


# -- shape ---------------------------------------------------------------------------------
def _shape_arg(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(s) for s in shape)


def _infer_shape(shape, size):
    shape = list(shape)
    if shape.count(-1) > 1:
        raise RuntimeError("only one dimension can be inferred")
    known = 1
    for s in shape:
        if s != -1:
            if s < 0:
                raise RuntimeError(f"invalid shape dimension {s}")
            known *= s
    if -1 in shape:
        if known == 0 or size % known:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {size}")
        shape[shape.index(-1)] = size // known
    elif known != size:
        raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {size}")
    return tuple(shape)


def view(x, *shape):
    xv = x._value
    shape = _infer_shape(_shape_arg(shape), xv.size)
    value = xv.view()
    try:
        value.shape = shape  # refuses where a copy would be needed, as torch's view does
    except AttributeError:
        raise RuntimeError("view size is not compatible with input tensor's size and stride (at least one "
                           "dimension spans across two contiguous subspaces). Use .reshape(...) instead.") from None
    return _view(VIEW, x, value)


def reshape(x, *shape):
    xv = x._value
    shape = _infer_shape(_shape_arg(shape), xv.size)
    value = xv.reshape(shape)
    if np.shares_memory(value, xv):
        return _view(VIEW, x, value)
    return _unary(VIEW, x, value)


def unsqueeze(x, dim):
    xv = x._value
    d = _dim(dim, xv.ndim + 1)
    return _view(UNSQUEEZE, x, np.expand_dims(xv, d))


def squeeze(x, dim=None):
    xv = x._value
    if dim is None:
        axes = tuple(i for i, s in enumerate(xv.shape) if s == 1)
    else:
        axes = tuple(a for a in _axes(dim, xv.ndim) if xv.shape[a] == 1)
    return _view(SQUEEZE, x, np.squeeze(xv, axes))


def _pack_perm(perm):
    code = 0
    for k, p in enumerate(perm):
        code |= p << (4 * k)
    return code


def permute(x, *dims):
    xv = x._value
    dims = _shape_arg(dims)
    if len(dims) != xv.ndim:
        raise RuntimeError(f"permute(sparse_coo): number of dimensions in the tensor input does not match the "
                           f"length of the desired ordering of dimensions i.e. input.dim() = {xv.ndim} is not "
                           f"equal to len(dims) = {len(dims)}")
    perm = tuple(_dim(d, xv.ndim) for d in dims)
    if len(set(perm)) != len(perm):
        raise RuntimeError("permute(): duplicate dims are not allowed.")
    return _view(PERMUTE, x, np.transpose(xv, perm), i0=_pack_perm(perm))


def transpose(x, dim0, dim1):
    xv = x._value
    nd = xv.ndim
    perm = list(range(nd))
    if nd:
        d0, d1 = _dim(dim0, nd), _dim(dim1, nd)
        perm[d0], perm[d1] = perm[d1], perm[d0]
    return _view(TRANSPOSE, x, np.transpose(xv, perm), i0=_pack_perm(perm))


def t(x):
    nd = x._value.ndim
    if nd > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {nd}D")
    perm = list(range(nd))[::-1]
    return _view(T, x, np.transpose(x._value, perm), i0=_pack_perm(perm))


def expand(x, *shape, _materialize=False):
    """Broadcast x to ``shape`` (torch's expand: -1 keeps a size). ``_materialize`` stores a
    contiguous copy, for binary ops whose adjoint reads the broadcast operand."""
    xv = x._value
    shape = _shape_arg(shape)
    if len(shape) < xv.ndim:
        raise RuntimeError(f"expand({_torch_type_name(xv.dtype)}Tensor{{{list(xv.shape)}}}, size=[{len(shape)}]): "
                           "the number of sizes provided must be greater or equal to the number of dimensions in the tensor")
    lead = len(shape) - xv.ndim
    full = []
    for i, s in enumerate(shape):
        if i >= lead:
            d = xv.shape[i - lead]
            if s == -1:
                s = d
            elif d != 1 and d != s:
                raise RuntimeError(f"The expanded size of the tensor ({s}) must match the existing size ({d}) at "
                                   f"non-singleton dimension {i}.  Target sizes: {list(shape)}.  Tensor sizes: {list(xv.shape)}")
        full.append(s)
    full = tuple(full)
    if full == xv.shape:
        return x
    value = np.broadcast_to(xv, full)
    if _materialize:
        value = np.ascontiguousarray(value)
        if x._rg and _state.grad_enabled:
            return _unary(EXPAND, x, value, i1=1)  # i1=1: implicit, so grad_fn.next_functions looks through it
        return _leaf(value)
    return _view(EXPAND, x, value)


def expand_as(x, other):
    return expand(x, tuple(other.shape))


# -- linear algebra ----------------------------------------------------------------------------
def mm(x, y):
    xv, yv = x._value, y._value
    if xv.ndim != 2:
        raise RuntimeError(f"self must be a matrix")
    if yv.ndim != 2:
        raise RuntimeError(f"mat2 must be a matrix")
    if xv.shape[1] != yv.shape[0]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({xv.shape[0]}x{xv.shape[1]} and "
                           f"{yv.shape[0]}x{yv.shape[1]})")
    if xv.dtype != yv.dtype:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {xv.dtype} != {yv.dtype}")
    return _binary_rec(MM, x, y, _matmul_value(xv, yv))


def _matmul_value(a, b):
    # One BLAS for forward and backward: NumPy's `@` and Numba's np.dot (SciPy's OpenBLAS) fight
    # over threads when alternated (DESIGN.md), so float products go through kernels.mm_forward.
    if a.dtype.kind != "f":
        return a @ b
    from .kernels import mm_forward
    return mm_forward(np.ascontiguousarray(a), np.ascontiguousarray(b))


def matmul(x, y):
    xv, yv = x._value, y._value
    if xv.ndim == 0 or yv.ndim == 0:
        raise RuntimeError(f"both arguments to matmul need to be at least 1D, but they are {xv.ndim}D and {yv.ndim}D")
    if xv.ndim == 2 and yv.ndim == 2:
        return mm(x, y)
    if xv.ndim <= 2 and yv.ndim <= 2:
        a = unsqueeze(x, 0) if xv.ndim == 1 else x
        b = unsqueeze(y, 1) if yv.ndim == 1 else y
        if a._value.shape[1] != b._value.shape[0]:
            if xv.ndim == 1 and yv.ndim == 1:
                raise RuntimeError(f"inconsistent tensor size, expected tensor [{xv.shape[0]}] and src "
                                   f"[{yv.shape[0]}] to have the same number of elements, but got "
                                   f"{xv.shape[0]} and {yv.shape[0]} elements respectively")
            raise RuntimeError(f"size mismatch, got input ({a._value.shape[0]}x{a._value.shape[1]}), "
                               f"vec ({b._value.shape[0]})" if yv.ndim == 1 else
                               f"mat1 and mat2 shapes cannot be multiplied ({a._value.shape[0]}x{a._value.shape[1]} "
                               f"and {b._value.shape[0]}x{b._value.shape[1]})")
        r = mm(a, b)
        out_shape = xv.shape[:-1] + yv.shape[1:]
        return reshape(r, out_shape)
    raise NotImplementedError("batched matmul arrives with the full op surface")


# -- casting, copying ----------------------------------------------------------------------------
def to_dtype(x, dt):
    dt = dtypes.as_dtype(dt)
    if x._value.dtype == dt.np:
        return x
    value = x._value.astype(dt.np)
    if x._rg and dt.is_floating_point:
        return _unary(CAST, x, value)
    return _leaf(value)


def clone(x):
    return _unary(CLONE, x, x._value.copy())


def contiguous(x):
    if x._value.flags.c_contiguous:
        return x
    return clone(x)


def zeros_like(x, dtype=None):
    dt = dtypes.as_dtype(dtype).np if dtype is not None else x._value.dtype
    return _leaf(np.zeros(x._value.shape, dt))


# -- indexing -------------------------------------------------------------------------------------
def _np_key(key):
    """A tapegrad indexing key as a NumPy one (Tensors become arrays), checked for bounds."""
    if isinstance(key, tuple):
        return tuple(_np_key(k) for k in key)
    if isinstance(key, Tensor):
        v = key._value
        if v.dtype.kind not in "bi":
            raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
        return v
    if isinstance(key, list):
        return np.asarray(key)
    return key


def _key_kind(key):
    parts = key if isinstance(key, tuple) else (key,)
    if any(isinstance(k, (ndarray, list)) for k in parts):
        return INDEX
    if all(isinstance(k, (int, np.integer)) for k in parts):
        return SELECT
    if any(isinstance(k, slice) for k in parts):
        return SLICE
    if any(k is None for k in parts):
        return UNSQUEEZE_KEY
    return ALIAS


def _index(xv, key):
    try:
        return xv[key]
    except IndexError as exc:
        msg = str(exc)
        if "out of bounds" in msg:
            raise IndexError(f"index out of range: {msg}") from None
        raise IndexError(msg) from None


def getitem(x, key):
    xv = x._value
    k = _np_key(key)
    value = _index(xv, k)
    if value.__class__ is not ndarray:
        value = np.asarray(value)
    kind = _key_kind(k)
    if x._rg and _state.grad_enabled:
        idx = np.ascontiguousarray(np.arange(xv.size, dtype=np.int64).reshape(xv.shape)[k]).reshape(-1)
        if kind is INDEX or not np.shares_memory(value, xv):
            t = _unary_with_index(kind, x, value, idx)
            return t
        return _view(kind, x, value, b=idx)
    t = _leaf(value)
    if kind is not INDEX and np.shares_memory(value, xv):
        t._vc = counter(x)
    return t


def _unary_with_index(op, x, value, idx):
    tape = current_tape()
    vc = [0]
    a = tape.slot_of(x)
    b = tape.new_slot(idx, LEAF, [0])
    return _result(value, tape, tape.push(op.code, a, b, -1, 0, 0, 0.0, _contiguous(value), vc), vc)


def _gather_flat(g, idx, shape):
    """g.flatten()[idx] as a tensor of ``shape`` (differentiable in g)."""
    value = np.ascontiguousarray(g._value.reshape(-1)[idx._value]).reshape(shape)
    return _unary_with_index(INDEX, g, value, idx._value) if g._rg and _state.grad_enabled else _leaf(value)


def _scatter_flat(g, idx, shape):
    """zeros(shape) with g added at the flat positions idx (differentiable in g)."""
    n = 1
    for s in shape:
        n *= s
    out = np.zeros(n, g._value.dtype)
    np.add.at(out, idx._value, g._value.reshape(-1))
    out = out.reshape(tuple(shape))
    return _unary_with_index(SCATTER_FLAT, g, out, idx._value) if g._rg and _state.grad_enabled else _leaf(out)


def _index_put(g, idx, v):
    """A copy of g with the flat positions idx replaced by v (differentiable in g and v)."""
    value = g._value.copy()
    value.reshape(-1)[idx._value] = v._value.reshape(-1)
    if (g._rg or v._rg) and _state.grad_enabled:
        tape = current_tape()
        vc = [0]
        a, b = tape.slot_of(g), tape.slot_of(v)
        c = tape.new_slot(idx._value, LEAF, [0])
        return _result(value, tape, tape.push(SETITEM.code, a, b, c, 0, 0, 0.0, value, vc), vc)
    return _leaf(value)


def _check_inplace(x):
    if x._rg and x._tape is None and _state.grad_enabled:
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")


def setitem(x, key, v):
    _check_inplace(x)
    xv = x._value
    k = _np_key(key)
    sel_shape = np.shape(_index(xv, k))
    if not isinstance(v, Tensor):
        v = _leaf(np.asarray(v, dtype=xv.dtype))
    if v._value.dtype != xv.dtype:
        v = to_dtype(v, dtypes.from_numpy_dtype(xv.dtype))
    if v._value.shape != sel_shape:
        broadcast_shapes(v._value.shape, sel_shape)
        v = expand(v, sel_shape, _materialize=True)
    record = (x._rg or v._rg) and _state.grad_enabled
    if record:
        tape = current_tape()
        a = tape.slot_of(x)
        b = tape.slot_of(v)
        idx = np.ascontiguousarray(np.arange(xv.size, dtype=np.int64).reshape(xv.shape)[k]).reshape(-1)
        c = tape.new_slot(idx, LEAF, [0])
    xv[k] = v._value
    x._bump_version()
    if record:
        x._tape = tape
        x._slot = tape.push(SETITEM.code, a, b, c, 0, 0, 0.0, _contiguous(xv), x._vc)
        x._rg = True


# -- in place ------------------------------------------------------------------------------------
def _inplace(x, result):
    """Make x hold ``result`` in its own storage: x takes result's place in the graph."""
    _check_inplace(x)
    xv = x._value
    if result._value.shape != xv.shape:
        raise RuntimeError(f"output with shape {list(xv.shape)} doesn't match the broadcast shape "
                           f"{list(result._value.shape)}")
    np.copyto(xv, result._value, casting="unsafe")
    x._bump_version()
    if result._tape is not None:
        tape = result._tape
        x._tape, x._slot, x._rg = tape, result._slot, True
        tape.vcs[result._slot] = x._vc  # later in-place changes to x invalidate what was saved
        _repin_version(tape, result._slot, x._vc[0])
    return x


def _repin_version(tape, s, version):
    from .tape import SLOT
    obj, flags, _, dt = SLOT.unpack_from(tape.slots, s * SLOT.size)
    SLOT.pack_into(tape.slots, s * SLOT.size, obj, flags, version, dt)


def zero_(x):
    return fill_(x, 0)


def fill_(x, value):
    _check_inplace(x)
    if x._tape is not None and _state.grad_enabled:
        return _inplace(x, mul(x, 0) + value)
    x._value[...] = value._value if isinstance(value, Tensor) else value
    x._bump_version()
    return x


# -- methods -------------------------------------------------------------------------------------
def _install():
    M = Tensor
    M.__add__ = add
    M.__radd__ = lambda x, y: add(x, y)
    M.__sub__ = sub
    M.__rsub__ = lambda x, y: _rsub(x, y) if isinstance(y, _SCALARS) else sub(_as_tensor(y, x), x)
    M.__mul__ = mul
    M.__rmul__ = lambda x, y: mul(x, y)
    M.__truediv__ = div
    M.__rtruediv__ = lambda x, y: _rdiv(x, y) if isinstance(y, _SCALARS) else div(_as_tensor(y, x), x)
    M.__pow__ = pow
    M.__rpow__ = lambda x, y: _rpow(x, y) if isinstance(y, _SCALARS) else pow(_as_tensor(y, x), x)
    M.__matmul__ = matmul
    M.__rmatmul__ = lambda x, y: matmul(_as_tensor(y, x), x)
    M.__neg__ = neg
    M.__pos__ = lambda x: x
    M.__abs__ = abs
    M.__getitem__ = getitem
    M.__setitem__ = setitem
    M.__gt__ = gt
    M.__iadd__ = lambda x, y: _inplace(x, add(x, y))
    M.__isub__ = lambda x, y: _inplace(x, sub(x, y))
    M.__imul__ = lambda x, y: _inplace(x, mul(x, y))
    M.__itruediv__ = lambda x, y: _inplace(x, div(x, y))
    for name, fn in dict(add=add, sub=sub, mul=mul, div=div, pow=pow, neg=neg, exp=exp, log=log, sin=sin,
                         cos=cos, tanh=tanh, sigmoid=sigmoid, relu=relu, sqrt=sqrt, abs=abs, sum=sum, mean=mean,
                         matmul=matmul, mm=mm, view=view, reshape=reshape, transpose=transpose, t=t,
                         permute=permute, expand=expand, expand_as=expand_as, unsqueeze=unsqueeze,
                         squeeze=squeeze, clone=clone, contiguous=contiguous, reciprocal=reciprocal,
                         sign=sign, zero_=zero_, fill_=fill_, multiply=mul, subtract=sub, divide=div,
                         true_divide=div).items():
        setattr(M, name, fn)
    M.add_ = lambda x, y, alpha=1: _inplace(x, add(x, y, alpha=alpha))
    M.sub_ = lambda x, y, alpha=1: _inplace(x, sub(x, y, alpha=alpha))
    M.mul_ = lambda x, y: _inplace(x, mul(x, y))
    M.div_ = lambda x, y: _inplace(x, div(x, y))
    M.T = property(lambda x: permute(x, *range(x.ndim - 1, -1, -1)))
    M.mT = property(lambda x: transpose(x, -2, -1))
    M.to = _to
    M.float = lambda x: to_dtype(x, dtypes.float32)
    M.double = lambda x: to_dtype(x, dtypes.float64)
    M.long = lambda x: to_dtype(x, dtypes.int64)
    M.int = lambda x: to_dtype(x, dtypes.int32)
    M.bool = lambda x: to_dtype(x, dtypes.bool_)
    M.type_as = lambda x, other: to_dtype(x, other.dtype)
    M.cpu = lambda x: x


def _to(x, *args, **kwargs):
    dt = kwargs.pop("dtype", None)
    device = kwargs.pop("device", None)
    for a in args:
        if isinstance(a, dtypes.dtype):
            dt = a
        elif isinstance(a, Tensor):
            dt = a.dtype
        else:
            device = a
    if device is not None and str(device).split(":")[0] != "cpu":
        raise RuntimeError(f"device {device} is not available: this build of tapegrad runs on the CPU")
    return to_dtype(x, dt) if dt is not None else x


_install()
BY_NAME = {r.name: r for r in TABLE}
assert len(BY_NAME) == len(TABLE), "row names must be unique"
