"""Casting and copying: to_dtype, to_device (and the arguments of .to), clone, contiguous, zeros_like."""
import numpy as np

from .. import dtypes
from ..tape import note_op
from ..tensor import Device, DeviceArray, Tensor
from ..tensor import leaf as _leaf
from . import _record as _records
from ._record import record_unary as _unary
from .spec import row


CAST = row("to", "ToCopyBackward0", 1, None, "adj_cast", lambda g, i, o, r: (to_dtype(g, i[0].dtype),),
           replay=lambda ins, i0, i1, f0, shape, dtype: ins[0].astype(dtype), gpu=True)
CLONE = row("clone", "CloneBackward0", 1, None, "adj_identity", lambda g, i, o, r: (g,), fwd="fwd_copy",
            replay=lambda ins, i0, i1, f0, shape, dtype: ins[0].copy(), gpu=True)
# A copy to another device (.cuda(), .cpu(), .to(device)): its gradient is copied back. Only a tape
# with GPU values holds one, and the CUDA engine, which keeps every gradient on the device, adds it.
TO_DEVICE = row("to_device", "ToCopyBackward0", 1, None, "adj_identity",
                lambda g, i, o, r: (to_device(g, i[0].device),), gpu=True)


def to_dtype(x, dt):
    dt = dtypes.as_dtype(dt)
    if x._value.dtype == dt.np:
        return x
    value = x._value.astype(dt.np)
    if x._rg and dt.is_floating_point:
        return _unary(CAST, x, value)
    t = _leaf(value)
    if _records.PROGRAMS:
        note_op(CAST.code, x, None, t, 0, 0, 0.0)
    return t


def to_args(args, kwargs):
    """(dtype, device) of a ``.to(...)`` call, as torch reads it (a tensor's or a module's): a dtype,
    a device or its name, a tensor (its dtype and device), or the keywords; None where not given."""
    dt, device = kwargs.get("dtype"), kwargs.get("device")
    for a in args:
        if isinstance(a, dtypes.dtype):
            dt = a
        elif isinstance(a, Tensor):
            dt, device = a.dtype, a.device
        elif a is not None:
            device = a
    return dt, device


def to_device(x, device):
    """x on ``device`` (anything tg.device takes): x itself where it is already, else a copy."""
    device = Device(device)
    on_gpu = x._value.__class__ is DeviceArray
    if (device.type == "cuda") == on_gpu:
        return x
    if device.type == "cuda":
        if device.index not in (None, 0):
            raise RuntimeError(f"CUDA error: invalid device ordinal (tapegrad runs on cuda:0 only, not {device})")
        from ..cuda import array
        value = array.to_device(x._value)
    else:
        value = x._value.get()
    t = _unary(TO_DEVICE, x, value)
    if t._tape is not None:
        t._tape.gpu = True
    return t


def clone(x):
    return _unary(CLONE, x, x._value.copy())


def contiguous(x):
    if x._value.flags.c_contiguous:
        return x
    return clone(x)


def zeros_like(x, dtype=None):
    dt = dtypes.as_dtype(dtype).np if dtype is not None else x._value.dtype
    return _leaf(np.zeros_like(x._value, dt, order="C"))  # (on x's device)


def _float_input(x):
    return x if x._value.dtype.kind == "f" else to_dtype(x, dtypes.get_default_dtype())


def _torch_type_name(npd):
    return {"int64": "Long", "int32": "Int", "bool": "Bool", "float32": "Float", "float64": "Double"}[np.dtype(npd).name]
