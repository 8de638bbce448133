"""Comparisons, tests and index-valued reductions: results that never require grad."""
import numpy as np

from ..tensor import Tensor, _dim, as_value
from ..tensor import leaf as _leaf
from .cast import _torch_type_name
from .promote import broadcast_shapes
from .results import _noted_python
from .shape import _axes, _axis


def _compare(fn):
    def f(x, y):
        if y is None:
            return False
        yv = y._value if isinstance(y, Tensor) else np.asarray(y)
        xv = x._value if isinstance(x, Tensor) else np.asarray(x)
        broadcast_shapes(xv.shape, yv.shape)
        return _noted_python(fn, (x, y), _leaf(as_value(fn(xv, yv))))
    f.__name__ = fn.__name__
    return f


lt, le, gt, ge, eq, ne = (_compare(np.less), _compare(np.less_equal), _compare(np.greater),
                          _compare(np.greater_equal), _compare(np.equal), _compare(np.not_equal))
greater, less, greater_equal, less_equal, not_equal = gt, lt, ge, le, ne


def isnan(x):
    return _leaf(np.isnan(x._value))


def isfinite(x):
    return _leaf(np.isfinite(x._value))


def isinf(x):
    return _leaf(np.isinf(x._value))


def logical_not(x):
    return _leaf(as_value(np.logical_not(x._value)))


def _bitwise(fn, name):
    def f(x, y):
        yv = y._value if isinstance(y, Tensor) else y
        if x._value.dtype.kind not in "biu":
            raise RuntimeError(f"\"{name}_cpu\" not implemented for '{_torch_type_name(x._value.dtype)}'")
        return _leaf(as_value(fn(x._value, yv)))
    return f


bitwise_and = _bitwise(np.bitwise_and, "bitwise_and")
bitwise_or = _bitwise(np.bitwise_or, "bitwise_or")
bitwise_xor = _bitwise(np.bitwise_xor, "bitwise_xor")


def _invert(x):
    if x._value.dtype.kind not in "biu":
        raise RuntimeError(f"\"bitwise_not_cpu\" not implemented for '{_torch_type_name(x._value.dtype)}'")
    return _leaf(np.invert(x._value))


def argmax(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("argmax", dim, axis), keepdim if keepdims is None else keepdims
    return _arg(np.argmax, "argmax", x, dim, keepdim)


def argmin(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("argmin", dim, axis), keepdim if keepdims is None else keepdims
    return _arg(np.argmin, "argmin", x, dim, keepdim)


def _arg(fn, name, x, dim, keepdim):
    xv = x._value
    if dim is None:
        if xv.size == 0:
            raise RuntimeError(f"{name}(): Expected reduction dim to be specified for input.numel() == 0.")
        i = np.asarray(fn(xv.reshape(-1)), dtype=np.int64)
        return _leaf(i.reshape((1,) * xv.ndim) if keepdim else i)
    d = _dim(dim, xv.ndim)
    if xv.ndim == 0:
        return _leaf(np.asarray(0, dtype=np.int64))
    if xv.shape[d] == 0:
        raise IndexError(f"{name}(): Expected reduction dim {d} to have non-zero size.")
    return _leaf(np.asarray(fn(xv, axis=d, keepdims=keepdim), dtype=np.int64))


def all_(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("all", dim, axis), keepdim if keepdims is None else keepdims
    return _leaf(np.asarray(np.all(x._value, axis=None if dim is None else _axes(dim, x._value.ndim),
                                   keepdims=keepdim)))


def any_(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("any", dim, axis), keepdim if keepdims is None else keepdims
    return _leaf(np.asarray(np.any(x._value, axis=None if dim is None else _axes(dim, x._value.ndim),
                                   keepdims=keepdim)))


def nonzero(x, as_tuple=False):
    nz = np.nonzero(x._value)
    if as_tuple:
        return tuple(_leaf(np.ascontiguousarray(a, dtype=np.int64)) for a in nz)
    return _leaf(np.ascontiguousarray(np.stack(nz, 1), dtype=np.int64))
