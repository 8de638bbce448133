"""Tensor factories: tensor, zeros, ones, arange, randn... with torch's dtype rules."""
import numpy as np

from . import dtypes
from .ops import _leaf
from .tape import _contiguous
from .tensor import Tensor


def _check_device(device):
    if device is not None and str(device).split(":")[0] not in ("cpu",):
        raise RuntimeError(f"device {device} is not available: this build of tapegrad runs on the CPU")


def _finish(value, requires_grad, device=None):
    _check_device(device)
    t = _leaf(value)
    if requires_grad:
        if value.dtype.kind != "f":
            raise RuntimeError("Only Tensors of floating point and complex dtype can require gradients")
        t._rg = True
    return t


def _infer(data):
    """torch.tensor's dtype inference: bools, ints (int64) and floats (the default float dtype)."""
    arr = np.asarray(data)
    if arr.dtype.kind == "b":
        return arr.astype(np.bool_)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        return arr.astype(dtypes.get_default_dtype().np)
    if arr.dtype.kind == "O":
        raise TypeError(f"Could not infer dtype of {type(data).__name__}")
    raise TypeError(f"tapegrad does not support data of dtype {arr.dtype}")


def _unwrap(data):
    if isinstance(data, Tensor):
        return data._value
    if isinstance(data, (list, tuple)):
        return [_unwrap(d) for d in data]
    return data


def tensor(data, dtype=None, device=None, requires_grad=False, pin_memory=False):
    data = _unwrap(data)
    if dtype is None:
        if isinstance(data, np.ndarray):
            value = data.astype(dtypes.from_numpy_dtype(data.dtype).np, copy=True)
        else:
            value = _infer(data)
    else:
        value = np.array(data, dtype=dtypes.as_dtype(dtype).np)
    return _finish(_contiguous(value), requires_grad, device)  # astype/np.array copied already


def as_tensor(data, dtype=None, device=None):
    if isinstance(data, Tensor):
        return data if dtype is None else data.to(dtype)
    if isinstance(data, np.ndarray) and dtype is None:
        return from_numpy(data)
    return tensor(data, dtype=dtype, device=device)


def from_numpy(a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(a).__name__})")
    dtypes.from_numpy_dtype(a.dtype)
    return _leaf(a)  # shares memory, as torch.from_numpy does


def _size(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return tuple(int(s) for s in size)


def _float_dtype(dtype):
    return (dtypes.as_dtype(dtype) or dtypes.get_default_dtype()).np


def zeros(*size, dtype=None, device=None, requires_grad=False):
    return _finish(np.zeros(_size(size), _float_dtype(dtype)), requires_grad, device)


def ones(*size, dtype=None, device=None, requires_grad=False):
    return _finish(np.ones(_size(size), _float_dtype(dtype)), requires_grad, device)


def empty(*size, dtype=None, device=None, requires_grad=False):
    return _finish(np.empty(_size(size), _float_dtype(dtype)), requires_grad, device)


def full(size, fill_value, dtype=None, device=None, requires_grad=False):
    if dtype is None:
        dtype = dtypes.scalar_dtype(fill_value)
    return _finish(np.full(_size((size,)), fill_value, dtypes.as_dtype(dtype).np), requires_grad, device)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    return _finish(np.zeros(t._value.shape, _like_dtype(t, dtype)), requires_grad, device)


def ones_like(t, dtype=None, device=None, requires_grad=False):
    return _finish(np.ones(t._value.shape, _like_dtype(t, dtype)), requires_grad, device)


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    return _finish(np.full(t._value.shape, fill_value, _like_dtype(t, dtype)), requires_grad, device)


def empty_like(t, dtype=None, device=None, requires_grad=False):
    return _finish(np.empty(t._value.shape, _like_dtype(t, dtype)), requires_grad, device)


def _like_dtype(t, dtype):
    return dtypes.as_dtype(dtype).np if dtype is not None else t._value.dtype


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    if end is None:
        start, end = 0, start
    if dtype is None:
        is_float = any(isinstance(v, float) for v in (start, end, step))
        dtype = dtypes.get_default_dtype() if is_float else dtypes.int64
    return _finish(np.arange(start, end, step).astype(dtypes.as_dtype(dtype).np), requires_grad, device)


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False):
    return _finish(np.linspace(start, end, steps).astype(_float_dtype(dtype)), requires_grad, device)


def eye(n, m=None, dtype=None, device=None, requires_grad=False):
    return _finish(np.eye(n, m, dtype=_float_dtype(dtype)), requires_grad, device)


# -- random numbers: one generator, seeded by manual_seed ------------------------------------------
_rng = [np.random.default_rng()]


def manual_seed(seed):
    _rng[0] = np.random.default_rng(seed)


def rand(*size, dtype=None, device=None, requires_grad=False, generator=None):
    return _finish(_rng[0].random(_size(size)).astype(_float_dtype(dtype)), requires_grad, device)


def randn(*size, dtype=None, device=None, requires_grad=False, generator=None):
    return _finish(_rng[0].standard_normal(_size(size)).astype(_float_dtype(dtype)), requires_grad, device)


def randint(low, high=None, size=None, dtype=None, device=None, requires_grad=False):
    if size is None:
        low, high, size = 0, low, high
    dt = dtypes.as_dtype(dtype).np if dtype is not None else np.int64
    return _finish(_rng[0].integers(low, high, size=_size((size,))).astype(dt), requires_grad, device)


def rand_like(t, dtype=None, device=None, requires_grad=False):
    return _finish(_rng[0].random(t._value.shape).astype(_like_dtype(t, dtype)), requires_grad, device)


def randn_like(t, dtype=None, device=None, requires_grad=False):
    return _finish(_rng[0].standard_normal(t._value.shape).astype(_like_dtype(t, dtype)), requires_grad, device)
