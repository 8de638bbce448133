"""Tensor factories: tensor, zeros, ones, arange, randn... with torch's dtype rules."""
import numpy as np

from . import dtypes
from .ops import _record as _records, getitem
from .tape import _contiguous, recording_program
from .tensor import Device, DeviceArray, Size, Tensor
from .tensor import leaf as _leaf


def _on_device(value, device):
    """The value of a new tensor on ``device`` (random draws stay the host's: a seed gives the same
    values on either device)."""
    if device is None or Device(device).type == "cpu":
        return value
    if Device(device).index not in (None, 0):
        raise RuntimeError(f"CUDA error: invalid device ordinal (tapegrad runs on cuda:0 only, not {device})")
    from .cuda import array
    return array.to_device(value)


def _finish(value, requires_grad, device=None, draw=None):
    """``draw``: for a random tensor, how to draw another like it (a compiled program draws afresh)."""
    value = _on_device(value, device)
    t = _leaf(value)
    if requires_grad:
        if value.dtype.kind != "f":
            raise RuntimeError("Only Tensors of floating point and complex dtype can require gradients")
        t._rg = True
    if _records.PROGRAMS:
        p = recording_program()
        if p is not None:
            p.note_created(t, draw)
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
    return _finish(np.zeros(t._value.shape, _like_dtype(t, dtype)), requires_grad, _like_device(t, device))


def ones_like(t, dtype=None, device=None, requires_grad=False):
    return _finish(np.ones(t._value.shape, _like_dtype(t, dtype)), requires_grad, _like_device(t, device))


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    return _finish(np.full(t._value.shape, fill_value, _like_dtype(t, dtype)), requires_grad, _like_device(t, device))


def empty_like(t, dtype=None, device=None, requires_grad=False):
    return _finish(np.empty(t._value.shape, _like_dtype(t, dtype)), requires_grad, _like_device(t, device))


def _like_device(t, device):
    """The device of a tensor made like t: t's unless given."""
    return "cuda" if device is None and t._value.__class__ is DeviceArray else device


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
    shape, dt = _size(size), _float_dtype(dtype)
    return _finish(_rng[0].random(shape).astype(dt), requires_grad, device, lambda: _rng[0].random(shape).astype(dt))


def randn(*size, dtype=None, device=None, requires_grad=False, generator=None):
    shape, dt = _size(size), _float_dtype(dtype)
    return _finish(_rng[0].standard_normal(shape).astype(dt), requires_grad, device,
                   lambda: _rng[0].standard_normal(shape).astype(dt))


def randint(low, high=None, size=None, dtype=None, device=None, requires_grad=False):
    if size is None:
        low, high, size = 0, low, high
    dt = dtypes.as_dtype(dtype).np if dtype is not None else np.int64
    shape = _size((size,))
    return _finish(_rng[0].integers(low, high, size=shape).astype(dt), requires_grad, device,
                   lambda: _rng[0].integers(low, high, size=shape).astype(dt))


def rand_like(t, dtype=None, device=None, requires_grad=False):
    shape, dt = t._value.shape, _like_dtype(t, dtype)
    return _finish(_rng[0].random(shape).astype(dt), requires_grad, _like_device(t, device),
                   lambda: _rng[0].random(shape).astype(dt))


def randn_like(t, dtype=None, device=None, requires_grad=False):
    shape, dt = t._value.shape, _like_dtype(t, dtype)
    return _finish(_rng[0].standard_normal(shape).astype(dt), requires_grad, _like_device(t, device),
                   lambda: _rng[0].standard_normal(shape).astype(dt))


# -- torch's legacy constructors: Tensor(...), FloatTensor(...) -----------------------------------
def _legacy(dt, args, kwargs, typed):
    """``Tensor(2, 3)`` (or ``size=``) is an uninitialised tensor of that size, ``Tensor([1, 2])`` data
    in dtype dt (the default float dtype for Tensor itself), ``Tensor(t)`` an alias of t."""
    device = kwargs.pop("device", None)
    if "size" in kwargs and not args:
        args = tuple(kwargs.pop("size"))
    if kwargs:
        raise TypeError(f"new() received an invalid combination of arguments - got ({', '.join(kwargs)}), but "
                        "expected one of: (*, torch.device device), (tuple of ints size, *, torch.device device), "
                        "(object data, *, torch.device device), (Tensor other)")
    if device is not None and Device(device).type != "cpu":
        raise RuntimeError(f"legacy constructor expects device type: cpu but device type: {Device(device).type} "
                           "was passed")
    if len(args) == 1 and not _is_size(args[0]):
        data = args[0]
        if isinstance(data, Size):
            args = tuple(data)
        elif isinstance(data, Tensor):
            if typed and data._value.dtype != dt.np:
                raise TypeError(f"expected {dt} (got {data.dtype})")
            return getitem(data, ...)  # torch's alias: a view of the same storage
        elif isinstance(data, str):
            raise TypeError("new(): invalid data type 'str'")
        elif not isinstance(data, (list, tuple, range, np.ndarray)):
            raise TypeError(f"new(): data must be a sequence (got {type(data).__name__})")
        else:
            return _leaf(_contiguous(np.array(_unwrap(data), dtype=dt.np)))
    for k, n in enumerate(args):
        if not _is_size(n):
            raise TypeError(f"new(): argument 'size' failed to unpack the object at pos {k + 1} with error "
                            f'"type must be tuple of ints,but got {type(n).__name__}"')
    shape = tuple(int(n) for n in args) if args else (0,)
    for n in shape:
        if n < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {n}: {list(shape)}")
    return _leaf(np.empty(shape, dt.np))


def _is_size(n):
    return isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_))


def _tensor_new(cls, *args, **kwargs):
    return _legacy(dtypes.get_default_dtype(), args, kwargs, False)


Tensor.__new__ = _tensor_new


class _LegacyType(type):
    """torch.FloatTensor and kin: calling one constructs (as Tensor(...) does, in its dtype); a tensor
    of that dtype is an instance."""

    def __call__(cls, *args, **kwargs):
        return _legacy(cls.dtype, args, kwargs, True)

    def __instancecheck__(cls, obj):
        return isinstance(obj, Tensor) and obj._value.dtype == cls.dtype.np


def _legacy_type(name, dt):
    return _LegacyType(name, (), {"dtype": dt, "__module__": "tapegrad",
                                  "__doc__": f"torch.{name}: the legacy constructor of {dt} tensors."})


FloatTensor = _legacy_type("FloatTensor", dtypes.float32)
DoubleTensor = _legacy_type("DoubleTensor", dtypes.float64)
LongTensor = _legacy_type("LongTensor", dtypes.int64)
IntTensor = _legacy_type("IntTensor", dtypes.int32)
BoolTensor = _legacy_type("BoolTensor", dtypes.bool_)
