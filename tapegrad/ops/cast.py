"""Casting and copying: to_dtype, clone, contiguous, zeros_like."""
import numpy as np

from .. import dtypes
from ..tape import note_op
from ..tensor import leaf as _leaf
from . import _record as _records
from ._record import record_unary as _unary
from .spec import row


CAST = row("to", "ToCopyBackward0", 1, None, "adj_cast", lambda g, i, o, r: (to_dtype(g, i[0].dtype),),
           replay=lambda ins, i0, i1, f0, shape, dtype: ins[0].astype(dtype))
CLONE = row("clone", "CloneBackward0", 1, None, "adj_identity", lambda g, i, o, r: (g,), fwd="fwd_copy",
            replay=lambda ins, i0, i1, f0, shape, dtype: ins[0].copy())


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


def clone(x):
    return _unary(CLONE, x, x._value.copy())


def contiguous(x):
    if x._value.flags.c_contiguous:
        return x
    return clone(x)


def zeros_like(x, dtype=None):
    dt = dtypes.as_dtype(dtype).np if dtype is not None else x._value.dtype
    return _leaf(np.zeros(x._value.shape, dt))


def _float_input(x):
    return x if x._value.dtype.kind == "f" else to_dtype(x, dtypes.get_default_dtype())


def _torch_type_name(npd):
    return {"int64": "Long", "int32": "Int", "bool": "Bool", "float32": "Float", "float64": "Double"}[np.dtype(npd).name]
