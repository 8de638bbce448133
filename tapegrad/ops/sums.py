"""sum, mean and expand, each the other's gradient, and ``_sum_to``: a gradient that was broadcast
in the forward (by expand, or by a binary row's operands) is summed back to its input's shape."""
import math

import numpy as np

from .. import dtypes
from ..tape import _contiguous, _state
from ..tensor import leaf as _leaf
from . import _record as _records
from ._record import record_unary as _unary
from .attrs import Bool, Float, Implicit, Mask
from .cast import _torch_type_name, to_dtype
from .results import _view, shown_as
from .shape import _axes, _axis, _shape_arg, reshape, unsqueeze
from .spec import row

ndarray = np.ndarray


def _sum_to(g, shape):
    """Sum a broadcast gradient back to ``shape`` (the VJP of expand), in torch's at::sum_to nodes."""
    if g._value.shape == tuple(shape):  # the common case, on the create_graph path's hot loop
        return g
    if not shape:
        return sum(g)
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1)
    g = sum(g, axes, keepdim=True) if axes else g
    return reshape(g, shape) if lead else g


def _fit(grads, ins):
    """Sum each gradient back to its input's shape: binary rows broadcast in the forward."""
    ga, gb = grads
    a, b = ins
    if ga is not None and a is not None and ga._value.shape != a._value.shape:
        ga = _sum_to(ga, a._value.shape)
    if gb is not None and b is not None and gb._value.shape != b._value.shape:
        gb = _sum_to(gb, b._value.shape)
    return ga, gb


def _broadcast(v, shape):
    """np.broadcast_to(v, shape) for v of shape ``shape`` with some 1s (or 0-d): a read-only
    view with stride 0 along the broadcast axes, made in 0.5 us instead of broadcast_to's 4
    (a C-ordered v only: the constructor takes its buffer)."""
    if v.__class__ is not ndarray or not v.flags.c_contiguous:  # (a GPU value: its own broadcast)
        return np.broadcast_to(v, shape)
    if v.ndim == len(shape):
        strides = tuple(0 if n == 1 and d != 1 else st for n, d, st in zip(v.shape, shape, v.strides))
    else:
        strides = (0,) * len(shape)
        assert v.size == 1
    out = ndarray(shape, v.dtype, v, 0, strides)
    out.flags.writeable = False
    return out


def _uniform(g):
    """The one value of an untracked float gradient that is a single number broadcast (a scalar
    loss's seed after sum, mean, add or scalar factors), else None. VJPs fold it into their own
    scalar factor: x * (c * u) is one row where g * (x * c) records two (and registers g)."""
    v = g._value
    if g._rg or v.__class__ is not ndarray or any(v.strides) or not v.size or v.dtype.kind != "f":
        return None  # (a GPU value keeps its one number on the device)
    return v[(0,) * v.ndim]  # a NumPy scalar of g's dtype: products round as g's would


def _keep_shape(x, r):
    """The shape of a reduction's result with keepdim, from its axis mask r[5]."""
    m = r[5]
    return tuple(1 if Mask.has(m, k) else d for k, d in enumerate(x.shape))


def _sum_vjp(g, i, o, r):
    # torch's sum_backward, grad.unsqueeze(dims).expand(sizes), divided by the count for a mean
    x = i[0]
    mean = r[0] == MEAN.code or r[0] == MEAN_DIM.code
    if not g._rg:  # the seed of a scalar loss (W4): the broadcast view itself, recorded nowhere
        gv = g._value
        gv = gv.reshape(_keep_shape(x, r)) if gv.ndim else gv  # (a 0-d gradient broadcasts as it is)
        return (_leaf(_broadcast(gv / _count(x, r) if mean else gv, x._value.shape)),)
    if not r[6] and r[0] != SUM.code and r[0] != MEAN.code:  # (a full reduction's grad expands as it is)
        for k in Mask.decode(r[5], x.ndim):
            g = unsqueeze(g, k)
    g = expand(g, tuple(x.shape))
    return (shown_as(g / _count(x, r), "DivBackward1", g),) if mean else (g,)


def _count(x, r):
    """The number of elements a mean over x (its axis mask r[5]) averages."""
    n = 1
    for k in Mask.decode(r[5], x.ndim):
        n *= x.shape[k]
    return n


def _sum_replay(ins, i0, i1, f0, shape, dtype):
    a = ins[0]
    return _sum_value(a, Mask.decode(i0, a.ndim), bool(i1))


def _mean_replay(ins, i0, i1, f0, shape, dtype):
    a = ins[0]
    return _mean_value(a, Mask.decode(i0, a.ndim), bool(i1))[0]


# f0 scales the sum: 1, or 1 / count for a mean. A replay's full sums are NumPy's pairwise sums.
SUM = row("sum", "SumBackward0", 1, None, "adj_sum", _sum_vjp, attrs=(Mask("dim"), Bool("keepdim"), Float("scale")),
          fwd="fwd_sum", replay=_sum_replay, gpu=True)
SUM_DIM = row("sum_dim", "SumBackward1", 1, None, "adj_sum", _sum_vjp,
              attrs=(Mask("dim", dump=True), Bool("keepdim", dump=True), Float("scale")), replay=_sum_replay, gpu=True)
MEAN = row("mean", "MeanBackward0", 1, None, "adj_sum", _sum_vjp, attrs=(Mask("dim"), Bool("keepdim"), Float("scale")),
           fwd="fwd_mean", replay=_mean_replay, gpu=True)
MEAN_DIM = row("mean_dim", "MeanBackward1", 1, None, "adj_sum", _sum_vjp,
               attrs=(Mask("dim", dump=True), Bool("keepdim", dump=True), Float("scale")), replay=_mean_replay, gpu=True)
EXPAND = row("expand", "ExpandBackward0", 1, None, "adj_expand", lambda g, i, o, r: (_sum_to(g, i[0].shape),),
             attrs=(None, Implicit("implicit")), static_maps=True,
             replay=lambda ins, i0, i1, f0, shape, dtype: np.ascontiguousarray(np.broadcast_to(ins[0], shape)), gpu=True)


def sum(x, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:  # NumPy's names (torch takes them too)
        dim, keepdim = _axis("sum", dim, axis), keepdim if keepdims is None else keepdims
    if dtype is not None:
        x = to_dtype(x, dtypes.as_dtype(dtype))
    xv = x._value
    if dim is None and xv.dtype.kind == "f":  # a scalar loss: every axis, no checks
        return _unary(SUM, x, np.add.reduce(xv, axis=None, keepdims=keepdim), (1 << xv.ndim) - 1, int(keepdim), 1.0)
    axes = _axes(dim, xv.ndim)
    return _unary(SUM if dim is None else SUM_DIM, x, _sum_value(xv, axes, keepdim), i0=Mask.encode(axes),
                  i1=int(keepdim), f0=1.0)


def _sum_value(xv, axes, keepdim):
    # np.add.reduce is what np.sum runs, without its 2.5 us of argument handling (bool would stay bool)
    value = np.add.reduce(xv, axis=axes, keepdims=keepdim) if xv.dtype.kind == "f" else \
        np.sum(xv, axis=axes, keepdims=keepdim)
    return value.astype(np.int64) if xv.dtype.kind in "bi" else value


def mean(x, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("mean", dim, axis), keepdim if keepdims is None else keepdims
    if dtype is not None:
        x = to_dtype(x, dtypes.as_dtype(dtype))
    xv = x._value
    if xv.dtype.kind != "f":
        raise RuntimeError("mean(): could not infer output dtype. Input dtype must be either a floating "
                           f"point or complex dtype. Got: {_torch_type_name(xv.dtype)}")
    axes = _axes(dim, xv.ndim)
    value, count = _mean_value(xv, axes, keepdim)
    return _unary(MEAN if dim is None else MEAN_DIM, x, value, i0=Mask.encode(axes), i1=int(keepdim),
                  f0=1.0 / count if count else math.nan)


def _mean_value(xv, axes, keepdim):
    count = 1
    for a in axes:
        count *= xv.shape[a]
    value = np.add.reduce(xv, axis=axes, keepdims=keepdim)  # np.mean's sum and division, bit for bit
    return (value / count if count else np.full_like(value, math.nan)), count  # (torch's nan for an empty mean, no warning)


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
        value = _contiguous(value)  # (np.ascontiguousarray takes no GPU value)
        if x._rg and _state.grad_enabled or _records.PROGRAMS:  # (a compiled program records it untracked too)
            return _unary(EXPAND, x, value, i1=1)  # (implicit: grad_fn.next_functions looks through it)
        return _leaf(value)
    return _view(EXPAND, x, value)


def expand_as(x, other):
    return expand(x, tuple(other.shape))
