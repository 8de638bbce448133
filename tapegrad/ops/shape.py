"""Views and reshapes (view, reshape, unsqueeze, squeeze, permute, transpose, t, flatten), and the
dim arguments every op parses."""
import numpy as np

from ..tensor import _dim
from ._record import record_unary as _unary
from .attrs import Perm
from .results import _view, shown_as
from .spec import row


def _reshape_replay(ins, i0, i1, f0, shape, dtype):
    return ins[0].reshape(shape)


# (a replay's fwd_view result shares its input's memory, as the eager view does)
VIEW = row("view", "ViewBackward0", 1, None, "adj_identity", lambda g, i, o, r: (reshape(g, i[0].shape),),
           fwd="fwd_view", replay=_reshape_replay, gpu=True)
UNSQUEEZE = row("unsqueeze", "UnsqueezeBackward0", 1, None, "adj_identity", lambda g, i, o, r: (reshape(g, i[0].shape),),
                fwd="fwd_view", replay=_reshape_replay, gpu=True)
SQUEEZE = row("squeeze", "SqueezeBackward0", 1, None, "adj_identity", lambda g, i, o, r: (reshape(g, i[0].shape),),
              fwd="fwd_view", replay=_reshape_replay, gpu=True)


def _permute_vjp(g, i, o, r):
    nd = i[0].ndim
    perm = Perm.decode(r[5], nd)
    inv = [0] * nd
    for k, p in enumerate(perm):
        inv[p] = k
    return (permute(g, inv),)


def _permute_replay(ins, i0, i1, f0, shape, dtype):
    a = ins[0]
    return np.ascontiguousarray(np.transpose(a, Perm.decode(i0, a.ndim)))


PERMUTE = row("permute", "PermuteBackward0", 1, None, "adj_permute", _permute_vjp, attrs=(Perm("perm", dump=True),),
              fwd="fwd_transpose", replay=_permute_replay, gpu=True)
TRANSPOSE = row("transpose", "TransposeBackward0", 1, None, "adj_permute", _permute_vjp,
                attrs=(Perm("perm", dump=True),), fwd="fwd_transpose", replay=_permute_replay, gpu=True)
T = row("t", "TBackward0", 1, None, "adj_permute", _permute_vjp, attrs=(Perm("perm", dump=True),),
        fwd="fwd_transpose", replay=_permute_replay, gpu=True)
UNSAFE_VIEW = row("unsafe_view", "UnsafeViewBackward0", 1, None, "adj_identity",
                  lambda g, i, o, r: (reshape(g, i[0].shape),), fwd="fwd_view", replay=_reshape_replay, gpu=True)


# -- dim arguments ---------------------------------------------------------------------------
def _axes(dim, ndim):
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, int):
        dim = (dim,)
    seen = []
    for d in dim:
        a = _dim(d, ndim)
        if a in seen:
            raise RuntimeError(f"dim {a} appears multiple times in the list of dims")
        seen.append(a)
    return tuple(sorted(seen)) if ndim else ()  # a 0-d tensor takes dim 0 or -1 and has no axes


_NO_DIM = object()  # a required dim, which NumPy's axis= may give instead


def _axis(name, dim, axis, default=None):
    """dim, or NumPy's axis= that torch's argument parser takes in its place on every native function."""
    if axis is None:
        if dim is _NO_DIM:
            raise TypeError(f'{name}() missing 1 required positional arguments: "dim"')
        return dim
    if dim is not default and dim is not _NO_DIM:
        raise TypeError(f"{name}() got an unexpected keyword argument 'axis'")
    return axis


def _required(name, **args):
    """torch's error for required arguments left out (they default to _NO_DIM so that axis= can stand for dim)."""
    missing = [k for k, v in args.items() if v is _NO_DIM]
    if missing:
        raise TypeError(f"{name}() missing {len(missing)} required positional arguments: "
                        + ", ".join(f'"{k}"' for k in missing))


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


def unsqueeze(x, dim=_NO_DIM, *, axis=None):
    dim = _axis("unsqueeze", dim, axis)
    xv = x._value
    d = _dim(dim, xv.ndim + 1)
    return _view(UNSQUEEZE, x, np.expand_dims(xv, d))


def squeeze(x, dim=None, *, axis=None):
    if axis is not None:
        dim = _axis("squeeze", dim, axis)
    xv = x._value
    if dim is None:
        axes = tuple(i for i, s in enumerate(xv.shape) if s == 1)
    else:
        axes = tuple(a for a in _axes(dim, xv.ndim) if xv.shape[a] == 1)
    out = _view(SQUEEZE, x, np.squeeze(xv, axes))
    # torch's node depends on the form of the call: squeeze(), squeeze(dim), squeeze(dims)
    return out if dim is None else shown_as(out, "SqueezeBackward1" if isinstance(dim, int) else "SqueezeBackward2", x)


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
    return _view(PERMUTE, x, np.transpose(xv, perm), i0=Perm.encode(perm))


def transpose(x, dim0, dim1):
    xv = x._value
    nd = xv.ndim
    perm = list(range(nd))
    if nd:
        d0, d1 = _dim(dim0, nd), _dim(dim1, nd)
        perm[d0], perm[d1] = perm[d1], perm[d0]
    return _view(TRANSPOSE, x, np.transpose(xv, perm), i0=Perm.encode(perm))


def t(x):
    nd = x._value.ndim
    if nd > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {nd}D")
    perm = list(range(nd))[::-1]
    return _view(T, x, np.transpose(x._value, perm), i0=Perm.encode(perm))


def _unsafe_view(x, shape):
    shape = tuple(shape)
    if tuple(x._value.shape) == shape:
        return x
    return _view(UNSAFE_VIEW, x, x._value.reshape(shape))


def flatten(x, start_dim=0, end_dim=-1):
    shape = x._value.shape
    if not shape:
        return reshape(x, 1)
    s, e = _dim(start_dim, len(shape)), _dim(end_dim, len(shape))
    if s > e:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    n = 1
    for d in shape[s:e + 1]:
        n *= d
    return reshape(x, shape[:s] + (n,) + shape[e + 1:])


def unflatten(x, dim, sizes):
    shape = x._value.shape
    d = _dim(dim, len(shape))
    return reshape(x, shape[:d] + tuple(_infer_shape(tuple(sizes), shape[d])) + shape[d + 1:])
