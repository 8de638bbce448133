"""Reductions and scans beyond sum and mean: prod, max and min, amax and amin, norm, var and std,
logsumexp, softmax and log_softmax, cumsum."""
import math
import warnings

import numpy as np

from ..cuda import array as cuda_array
from ..tape import _contiguous
from ..tensor import Tensor, _dim
from ..tensor import leaf as _leaf
from ._record import record_unary as _unary
from .algebra import gather_row
from .attrs import Bool, Float, Int, Mask
from .cast import _float_input, _torch_type_name, to_dtype, zeros_like
from .elementwise import _power, abs, exp, log, masked_fill, maximum, minimum, sign, where
from .index import flip, stack
from .results import _const_like, _noted_python, _with_map, shown_as
from .shape import _NO_DIM, _axes, _axis, permute, reshape, squeeze
from .spec import row
from .sums import _keep_shape, expand, mean, sum


def _prod_vjp(g, i, o, r):
    x = i[0]
    keep = _keep_shape(x, r)
    gk = expand(reshape(g, keep), tuple(x.shape))
    if not (x._value == 0).any():
        return (gk * expand(reshape(o, keep), tuple(x.shape)) / x,)
    # With zeros: each element's gradient is the product of the others in its group, built
    # (differentiably) one position at a time along the reduced axes moved to the end.
    axes = list(Mask.decode(r[5], x.ndim))
    kept = [k for k in range(x.ndim) if k not in axes]
    n = 1
    for k in axes:
        n *= x.shape[k]
    xr = reshape(permute(x, kept + axes), (-1, n))
    cols = []
    for j in range(n):
        onehot = np.zeros((1, n), bool)
        onehot[0, j] = True
        cols.append(prod(where(_leaf(cuda_array.to_device(onehot) if x.is_cuda else onehot), 1.0, xr), 1))
    others = stack(cols, 1) * reshape(g, (-1, 1))
    back = reshape(others, tuple(x.shape[k] for k in kept + axes))
    inv = [0] * x.ndim
    for k, p in enumerate(kept + axes):
        inv[p] = k
    return (permute(back, inv),)


def _amax_vjp(g, i, o, r):
    x = i[0]
    keep = _keep_shape(x, r)
    axes = Mask.decode(r[5], x.ndim)
    if x._value.__class__ is cuda_array.DeviceArray:  # (the adjoint's kernel counts the ties)
        return (reshape(g, keep) * _leaf(cuda_array.extreme_share(x._value, o._value, axes)),)
    hit = x._value == o._value.reshape(keep)
    share = hit / np.sum(hit, axis=axes, keepdims=True)
    return (reshape(g, keep) * _const_like(share, g),)


def _norm_vjp(g, i, o, r):
    # torch's norm_backward, formula by formula: a zero norm (an all-zero group) has gradient 0
    x, p = i[0], r[7]
    keep = _keep_shape(x, r)
    gk, ok = reshape(g, keep), reshape(o, keep)
    if p == 0:
        return (zeros_like(x),)
    if p == 1:
        return (sign(x) * gk,)
    if math.isinf(p):
        hit = np.abs(x._value) == ok._value
        count = np.sum(hit, axis=Mask.decode(r[5], x.ndim), keepdims=True)
        return (sign(x) * ((gk / _const_like(count, g)) * _const_like(hit, g)),)
    zero = _leaf(ok._value == 0)
    if p == 2:
        return (gk * masked_fill(x / ok, zero, 0.0),)
    if p < 1:
        scaled = sign(x) * masked_fill(abs(x) ** (p - 1), _leaf(x._value == 0), 0.0)
        return (scaled * gk * ok ** (1 - p),)
    scaled = sign(x) * abs(x) ** (p - 1) if p < 2 else x * abs(x) ** (p - 2)
    return (scaled * masked_fill(gk / ok ** (p - 1), zero, 0.0),)


def _axes_of(i0, xv):
    return Mask.decode(i0, xv.ndim)


PROD = row("prod", "ProdBackward0", 1, None, "adj_prod", _prod_vjp, reads=(0, "out"),
           attrs=(Mask("dim"), Bool("keepdim")),
           replay=lambda ins, i0, i1, f0, shape, dtype: _prod_value(ins[0], None, False), gpu=True)
PROD_DIM = row("prod_dim", "ProdBackward1", 1, None, "adj_prod", _prod_vjp, reads=(0, "out"),
               attrs=(Mask("dim"), Bool("keepdim")),
               replay=lambda ins, i0, i1, f0, shape, dtype: _prod_value(ins[0], _axes_of(i0, ins[0]), i1), gpu=True)
MAX = row("max", "MaxBackward1", 1, None, "adj_amax", _amax_vjp, reads=(0, "out"), attrs=(Mask("dim"),),
          replay=lambda ins, i0, i1, f0, shape, dtype: np.asarray(np.max(ins[0])), gpu=True)
MIN = row("min", "MinBackward1", 1, None, "adj_amax", _amax_vjp, reads=(0, "out"), attrs=(Mask("dim"),),
          replay=lambda ins, i0, i1, f0, shape, dtype: np.asarray(np.min(ins[0])), gpu=True)
AMAX = row("amax", "AmaxBackward0", 1, None, "adj_amax", _amax_vjp, reads=(0, "out"),
           attrs=(Mask("dim"), Bool("keepdim")),
           replay=lambda ins, i0, i1, f0, shape, dtype: np.max(ins[0], axis=_axes_of(i0, ins[0]), keepdims=bool(i1)),
           gpu=True)
AMIN = row("amin", "AminBackward0", 1, None, "adj_amax", _amax_vjp, reads=(0, "out"),
           attrs=(Mask("dim"), Bool("keepdim")),
           replay=lambda ins, i0, i1, f0, shape, dtype: np.min(ins[0], axis=_axes_of(i0, ins[0]), keepdims=bool(i1)),
           gpu=True)
NORM = row("norm", "LinalgVectorNormBackward0", 1, None, "adj_norm", _norm_vjp, reads=(0, "out"),
           attrs=(Mask("dim"), Bool("keepdim"), Float("ord")),
           replay=lambda ins, i0, i1, f0, shape, dtype: _norm_value(ins[0], f0, _axes_of(i0, ins[0]), bool(i1)),
           gpu=True)
CUMSUM = row("cumsum", "CumsumBackward0", 1, None, "adj_cumsum",
             lambda g, i, o, r: (flip(cumsum(flip(g, r[5]), r[5]), r[5]),), attrs=(Int("dim"),),
             replay=lambda ins, i0, i1, f0, shape, dtype: _cumsum_value(ins[0], i0), gpu=True)
SOFTMAX = row("softmax", "SoftmaxBackward0", 1, None, "adj_softmax",
              lambda g, i, o, r: (shown_as(o * (g - sum(g * o, r[5], keepdim=True)), "SoftmaxBackwardDataBackward0",
                                           g, o),), reads=("out",), attrs=(Int("dim", dump=True),),
              replay=lambda ins, i0, i1, f0, shape, dtype: _softmax_value(ins[0], i0, False), gpu=True)
LOG_SOFTMAX = row("log_softmax", "LogSoftmaxBackward0", 1, None, "adj_log_softmax",
                  lambda g, i, o, r: (shown_as(g - exp(o) * sum(g, r[5], keepdim=True),
                                               "LogSoftmaxBackwardDataBackward0", g, o),), reads=("out",),
                  attrs=(Int("dim", dump=True), Int("kernel")),
                  replay=lambda ins, i0, i1, f0, shape, dtype: _softmax_value(ins[0], i0, True, i1), gpu=True)
MAX_DIM = gather_row("max_dim", "MaxBackward0", reads=(1,), static_maps=False, gpu=True)  # (the indices)
MIN_DIM = gather_row("min_dim", "MinBackward0", reads=(1,), static_maps=False, gpu=True)


def _var_vjp(g, i, o, r):
    # torch's var_backward: (2 / (n - correction)) * grad * (x - x.mean(dim)), the mean recorded (its
    # gradient is part of var's second derivative); reduced over every dim without a dim argument
    # (i1 bit 1 unset) and no degrees of freedom: grad * (nan where x is its mean, else inf)
    x = i[0]
    xv = x._value
    keep = _keep_shape(x, r)
    n = xv.size // max(o._value.size, 1)
    dof = n - r[7]
    if not r[6] & 2 and dof <= 0:
        hit = xv == (np.add.reduce(xv, axis=None) / xv.size if xv.size else 0.0)
        return (g * _const_like(np.where(hit, math.nan, math.inf), g),)
    axes = Mask.decode(r[5], x.ndim)
    scale = 2.0 / dof if dof else math.inf
    with np.errstate(invalid="ignore"):  # (inf * 0 is torch's nan too, without a warning)
        return ((reshape(g, keep) * scale) * (x - mean(x, axes, keepdim=True)),)


def _std_root_vjp(g, i, o, r):
    # torch's std_backward: (grad / (result * 2)) with 0 where the result is 0, then var's
    zero = o._value == 0
    if not zero.any():
        return (g / (o * 2),)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (masked_fill(g / (o * 2), _leaf(zero), 0.0),)


# var over the axes in mask i0 (i1: bit 0 keepdim, bit 1 a dim was given; f0 the correction), and
# std as the square root of a var row whose gradient is 0 where it is 0
VAR = row("var", "VarBackward0", 1, None, "adj_var", _var_vjp, reads=(0,),
          attrs=(Mask("dim"), Int("flags"), Float("correction")),
          replay=lambda ins, i0, i1, f0, shape, dtype: _var_value(ins[0], _axes_of(i0, ins[0]), i1 & 1, f0),
          gpu=True)
STD_ROOT = row("std_root", "StdBackward0", 1, np.sqrt, "adj_std_root", _std_root_vjp, reads=("out",), gpu=True)


def _full_reduction_error(name, x):
    if x._value.size == 0:
        raise RuntimeError(f"{name}(): Expected reduction dim to be specified for input.numel() == 0. "
                           "Specify the reduction dim with the 'dim' argument.")


def _reduce_axes(dim, xv):
    """Axes and mask for dim = None / () (all) or an int or a tuple of ints."""
    axes = _axes(None if dim is None or dim == () or dim == [] else dim, xv.ndim)
    return axes, Mask.encode(axes)


def prod(x, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("prod", dim, axis), keepdim if keepdims is None else keepdims
    if dtype is not None:
        x = to_dtype(x, dtype)
    xv = x._value
    if dim is None:
        op, axes = PROD, tuple(range(xv.ndim))
    else:
        axes = (_dim(dim, xv.ndim),) if xv.ndim else ()
        op = PROD_DIM
    value = _prod_value(xv, None if dim is None else axes, keepdim)
    return _unary(op, x, value, i0=Mask.encode(axes), i1=int(keepdim))


def _prod_value(xv, axes, keepdim):
    """axes None: the product of all elements (np.prod's own order, not an axis tuple's)."""
    value = np.prod(xv) if axes is None else np.prod(xv, axis=axes, keepdims=bool(keepdim))
    if xv.dtype.kind in "bi":
        value = np.asarray(value).astype(np.int64)
    return value


class _ValuesIndices(tuple):
    """torch.return_types.max and friends: a (values, indices) pair with names."""
    __slots__ = ()
    _name = "max"

    def __new__(cls, values, indices):
        return tuple.__new__(cls, (values, indices))

    values = property(lambda self: self[0])
    indices = property(lambda self: self[1])

    def __repr__(self):
        return f"tapegrad.return_types.{self._name}(\nvalues={self[0]!r},\nindices={self[1]!r})"


def _named(name):
    return type(name, (_ValuesIndices,), {"__slots__": (), "_name": name})


_MAX_RT, _MIN_RT = _named("max"), _named("min")


def max_(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("max", dim, axis), keepdim if keepdims is None else keepdims
    if isinstance(dim, Tensor):
        return maximum(x, dim)
    return _extreme(x, dim, keepdim, np.max, np.argmax, MAX, MAX_DIM, _MAX_RT, "max")


def min_(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("min", dim, axis), keepdim if keepdims is None else keepdims
    if isinstance(dim, Tensor):
        return minimum(x, dim)
    return _extreme(x, dim, keepdim, np.min, np.argmin, MIN, MIN_DIM, _MIN_RT, "min")


def _extreme(x, dim, keepdim, fn, argfn, op_all, op_dim, rt, name):
    xv = x._value
    if dim is None:
        _full_reduction_error(name, x)
        return _unary(op_all, x, fn(xv), i0=Mask.encode(range(xv.ndim)))
    d = _dim(dim, xv.ndim)
    if (xv.shape[d] if xv.ndim else 1) == 0:
        raise IndexError(f"{name}(): Expected reduction dim {d} to have non-zero size.")
    values, idx, positions = _extreme_maps(xv, d, keepdim, argfn)
    # where the extremes are comes from x's values: a compiled program finds them again at each replay
    maps = lambda v: _extreme_maps(v, d, keepdim, argfn)  # noqa: E731
    return rt(_with_map(op_dim, x, values, positions, derive=(lambda v: maps(v)[2], (x,))),
              _noted_python(lambda v: maps(v)[1], (x,), _leaf(idx)))


def _extreme_maps(xv, d, keepdim, argfn):
    """(values, indices, flat positions in x) of the extremes along d."""
    if xv.__class__ is cuda_array.DeviceArray:
        return cuda_array.extreme(xv, d, keepdim and xv.ndim, argfn is np.argmax)
    x1 = xv.reshape(1) if xv.ndim == 0 else xv
    idx = argfn(x1, axis=d, keepdims=True)
    values = np.take_along_axis(x1, idx, d)
    positions = np.take_along_axis(np.arange(x1.size, dtype=np.int64).reshape(x1.shape), idx, d)
    if not keepdim or xv.ndim == 0:
        out_shape = xv.shape[:d] + xv.shape[d + 1:] if xv.ndim else ()
        values, idx, positions = values.reshape(out_shape), idx.reshape(out_shape), positions.reshape(out_shape)
    return values, _contiguous(idx.astype(np.int64, copy=False)), positions


def amax(x, dim=(), keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("amax", dim, axis, ()), keepdim if keepdims is None else keepdims
    return _amax(x, dim, keepdim, np.max, AMAX, "amax")


def amin(x, dim=(), keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("amin", dim, axis, ()), keepdim if keepdims is None else keepdims
    return _amax(x, dim, keepdim, np.min, AMIN, "amin")


def _amax(x, dim, keepdim, fn, op, name):
    xv = x._value
    axes, mask = _reduce_axes(dim, xv)
    if xv.size == 0 and len(axes) == xv.ndim:
        _full_reduction_error(name, x)
    for a in axes:
        if xv.shape[a] == 0:
            raise IndexError(f"{name}(): Expected reduction dim {a} to have non-zero size.")
    return _unary(op, x, fn(xv, axis=axes, keepdims=keepdim), i0=mask, i1=int(keepdim))


def norm(x, p="fro", dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        x = to_dtype(x, dtype)
    xv = x._value
    if xv.dtype.kind != "f":
        raise RuntimeError(f"linalg.vector_norm: Expected a floating point or complex tensor as input. "
                           f"Got {_torch_type_name(xv.dtype)}")
    if p == "fro" or p is None:
        p = 2.0
    elif isinstance(p, str):
        raise NotImplementedError(f"norm with p={p!r} is not supported; use p='fro' or a number")
    p = float(p)
    axes, mask = _reduce_axes(dim, xv)
    return _unary(NORM, x, _norm_value(xv, p, axes, keepdim), i0=mask, i1=int(keepdim), f0=p)


def _norm_value(xv, p, axes, keepdim):
    if xv.__class__ is cuda_array.DeviceArray:
        return cuda_array.norm(xv, p, axes, keepdim)
    a = np.abs(xv)
    with np.errstate(divide="ignore", over="ignore"):
        if p == math.inf:
            value = np.max(a, axis=axes, keepdims=keepdim) if xv.size else np.zeros(())
        elif p == -math.inf:
            value = np.min(a, axis=axes, keepdims=keepdim)
        elif p == 0:
            value = np.sum(a != 0, axis=axes, keepdims=keepdim).astype(xv.dtype)
        elif p == 1:
            value = np.sum(a, axis=axes, keepdims=keepdim)
        elif p == 2:
            value = np.sqrt(np.sum(xv * xv, axis=axes, keepdims=keepdim))
        else:
            value = _power(np.sum(_power(a, p), axis=axes, keepdims=keepdim), 1 / p)
    return np.asarray(value, dtype=xv.dtype)


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("var", dim, axis), keepdim if keepdims is None else keepdims
    return _moment(x, dim, unbiased, keepdim, correction, False)


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("std", dim, axis), keepdim if keepdims is None else keepdims
    return _moment(x, dim, unbiased, keepdim, correction, True)


def _moment(x, dim, unbiased, keepdim, correction, root):
    if isinstance(dim, bool):  # var(unbiased) in torch's older signature
        dim, unbiased = None, dim
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    x = _float_input(x)
    xv = x._value
    axes = _axes(dim, xv.ndim)
    n = 1
    for a in axes:
        n *= xv.shape[a]
    if n - correction <= 0:
        warnings.warn(f"{'std' if root else 'var'}(): degrees of freedom is <= 0. Correction should be strictly "
                      "less than the reduction factor (input numel divided by output numel).", UserWarning,
                      stacklevel=3)
    value = _var_value(xv, axes, keepdim, correction)
    v = _unary(VAR, x, value, i0=Mask.encode(axes), i1=int(keepdim) | (dim is not None) << 1, f0=float(correction))
    if not root:
        return v
    return shown_as(_unary(STD_ROOT, v, np.sqrt(v._value)), "StdBackward0", x)


def _var_value(xv, axes, keepdim, correction):
    if xv.__class__ is cuda_array.DeviceArray:
        return cuda_array.var(xv, axes, keepdim, correction)
    n = 1
    for a in axes:
        n *= xv.shape[a]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = xv - np.add.reduce(xv, axis=axes, keepdims=True) / n  # (np.mean's value, without its warning when empty)
        return np.asarray(np.sum(d * d, axis=axes, keepdims=bool(keepdim)) / max(n - correction, 0), xv.dtype)


def logsumexp(x, dim=_NO_DIM, keepdim=False, *, axis=None, keepdims=None):
    dim = _axis("logsumexp", dim, axis)
    if keepdims is not None:
        keepdim = keepdims
    x = _float_input(x)
    xv = x._value
    axes = _axes(dim, xv.ndim)
    m = np.max(xv, axis=axes, keepdims=True) if xv.size else np.zeros_like(xv, shape=(1,) * xv.ndim)
    m = np.where(np.isfinite(m), m, 0).astype(xv.dtype)  # a shift that keeps exp finite
    shift = _leaf(m)
    out = log(sum(exp(x - shift), axes, keepdim=True)) + shift
    return shown_as(squeeze(out, axes) if not keepdim and axes else out, "LogsumexpBackward0", x)


def _softmax_dim(x, dim, dtype):
    if dtype is not None:
        x = to_dtype(x, dtype)
    x = _float_input(x)
    return x, (_dim(dim, x._value.ndim) if x._value.ndim else 0)


def softmax(x, dim=_NO_DIM, dtype=None, *, axis=None):
    x, d = _softmax_dim(x, _axis("softmax", dim, axis), dtype)
    xv = x._value
    return _unary(SOFTMAX, x, _softmax_value(xv, d, False), i0=d if xv.ndim else 0)


def log_softmax(x, dim=_NO_DIM, dtype=None, *, axis=None):
    x, d = _softmax_dim(x, _axis("log_softmax", dim, axis), dtype)
    xv = x._value
    return _unary(LOG_SOFTMAX, x, _softmax_value(xv, d, True), i0=d if xv.ndim else 0)


def _softmax_value(xv, d, log, kernel=False):
    """``kernel``: the jitted pass at any size (cross_entropy_mean's, whose row says so in i1)."""
    if xv.__class__ is cuda_array.DeviceArray:
        return cuda_array.softmax(xv, d, log)
    if xv.ndim == 0:
        return np.zeros((), xv.dtype) if log else np.ones((), xv.dtype)
    if 0 < xv.size <= _SMALL_SOFTMAX or kernel:
        return _softmax_kernel(xv, d, log)
    with np.errstate(invalid="ignore", divide="ignore"):
        if log:
            z = xv - np.max(xv, axis=d, keepdims=True) if xv.size else xv.copy()
            return z - np.log(np.sum(np.exp(z), axis=d, keepdims=True))
        e = np.exp(xv - np.max(xv, axis=d, keepdims=True)) if xv.size else xv.copy()
        return e / np.sum(e, axis=d, keepdims=True)


_SMALL_SOFTMAX = 1 << 16  # up to here one jitted pass beats NumPy's six (W2's cross-entropy)


def _softmax_kernel(xv, d, log):
    from ..jit.forward import softmax_forward
    shape = xv.shape
    x3 = np.ascontiguousarray(xv).reshape(math.prod(shape[:d]), shape[d], math.prod(shape[d + 1:]))
    return softmax_forward(x3, log).reshape(shape)


def cumsum(x, dim=_NO_DIM, dtype=None, *, axis=None):
    dim = _axis("cumsum", dim, axis)
    if dtype is not None:
        x = to_dtype(x, dtype)
    xv = x._value
    d = _dim(dim, xv.ndim)
    return _unary(CUMSUM, x, _cumsum_value(xv, d), i0=d)


def _cumsum_value(xv, d):
    value = np.cumsum(xv.reshape(1) if xv.ndim == 0 else xv, axis=d).reshape(xv.shape)
    return value.astype(np.int64) if xv.dtype.kind in "bi" else value
