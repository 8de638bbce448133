"""Broadcasting and type promotion: the shape two operands broadcast to and the dtype they are
computed in, as torch's rules have them."""
import numpy as np

from .. import dtypes
from ..tensor import Tensor
from ..tensor import leaf as _leaf
from .cast import to_dtype

ndarray = np.ndarray


def broadcast_shapes(sa, sb):
    if sa == sb:
        return sa
    la, lb = len(sa), len(sb)
    if lb < la and sa[la - lb:] == sb:  # a bias-like operand: trailing dims equal
        return sa
    if la < lb and sb[lb - la:] == sa:
        return sb
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
    """Cast to the common dtype (recorded when tracked) and check that the shapes broadcast."""
    xv, yv = x._value, y._value
    if xv.dtype != yv.dtype or (float_result and xv.dtype.kind != "f"):
        rt = _promote(x, y)
        if float_result and not rt.is_floating_point:
            rt = dtypes.get_default_dtype()
        x, y = to_dtype(x, rt), to_dtype(y, rt)
    if x._value.shape != y._value.shape:
        broadcast_shapes(x._value.shape, y._value.shape)  # torch's error; the rows broadcast themselves
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


def _same_dtype(*ts):
    """Cast tensors to their promoted dtype (recorded when tracked), as torch's binary ops do."""
    if all(t._value.dtype == ts[0]._value.dtype for t in ts):
        return ts
    rt = _promote(*ts)
    return tuple(to_dtype(t, rt) for t in ts)
