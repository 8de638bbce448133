"""Indexing, slicing, joining: getitem and setitem, select, narrow, index_select, gather,
scatter_add, and the ops whose rows map each output element to an input element (repeat, flip,
cat, stack, split, chunk, unbind). Their gradients are the flat gathers and scatters of algebra.py."""
import math
import warnings

import numpy as np

from .. import dtypes
from ..cuda import array as cuda_array
from ..cuda.array import DeviceArray
from ..cuda.array import to_device as to_device_array
from ..tape import LEAF, _contiguous, _state, counter, current_tape
from ..tensor import Tensor, _dim
from ..tensor import leaf as _leaf
from . import _record as _records
from .algebra import INDEX, _gather_flat, gather_row
from .attrs import Int
from .cast import to_dtype
from .inplace import (INDEX_PUT, OVERLAP_MSG, SETITEM, _before_write, _check_inplace, _inplace, _note_write, _overlaps, _put_value,
                      _root, _update_base, _view_positions, _write_target)
from .promote import _promote, broadcast_shapes
from .results import (_constant, _derived, _note_record, _positions, _record, _scalar_like, _unary_with_index, _view,
                      _with_map)
from .shape import _NO_DIM, _axes, _axis, _required, _shape_arg, reshape
from .spec import row
from .sums import expand

ndarray = np.ndarray


# getitem's rows (and algebra.INDEX): the grad_fn name follows the kind of key, as torch's does
SELECT = gather_row("select", "SelectBackward0", gpu=True)
SLICE = gather_row("slice", "SliceBackward0", gpu=True)
ALIAS = gather_row("alias", "AliasBackward0", gpu=True)
UNSQUEEZE_KEY = gather_row("index_unsqueeze", "UnsqueezeBackward0", gpu=True)
# VJPs that take a Negated gradient themselves (a Run carries its sign to where it is added)
TAKES_NEGATED = frozenset({SELECT, SLICE, INDEX, ALIAS, UNSQUEEZE_KEY})


def _np_key(key):
    """A tapegrad indexing key as a NumPy one (Tensors become arrays), checked for bounds."""
    if isinstance(key, tuple):
        return tuple(_np_key(k) for k in key)
    if isinstance(key, Tensor):
        v = _on_host(key._value)
        if v.dtype.kind not in "bi":
            raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
        return v
    if isinstance(key, list):
        return np.asarray(key)
    return key


def _on_host(v):
    """An index tensor's values on the host: a GPU one is copied, as its values decide the map."""
    return v.get() if v.__class__ is DeviceArray else v


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
        if "out of bounds" in msg:  # NumPy's words for torch's: "... for dimension 0 with size 3"
            raise IndexError(msg.replace("for axis", "for dimension")) from None
        if "boolean index did not match" in msg:
            raise IndexError(_mask_mismatch(xv, key)) from None
        raise IndexError(msg) from None


def _mask_mismatch(xv, key):
    """torch's message for a boolean mask whose shape does not match the dims it indexes."""
    parts = key if isinstance(key, tuple) else (key,)
    dim = 0
    for k in parts:
        if isinstance(k, ndarray) and k.dtype == np.bool_:
            for i, n in enumerate(k.shape):
                if dim + i >= xv.ndim or xv.shape[dim + i] != n:
                    return (f"The shape of the mask {list(k.shape)} at index {i} does not match the shape of the "
                            f"indexed tensor {list(xv.shape)} at index {dim + i}")
            dim += k.ndim
        elif k is not None:
            dim += 1
    return "boolean index did not match the indexed tensor"


def getitem(x, key):
    xv = x._value
    if key.__class__ is slice and x._rg and _state.grad_enabled and xv.ndim and xv.flags.c_contiguous:
        # x[a:b] of a C-ordered tensor (W4's x[1:] and x[:-1]): a run from row ``start``, found
        # without the general path's key checks
        start, _, step = key.indices(xv.shape[0])
        value = xv[key]
        if step == 1 and value.size:
            return _view(SLICE, x, value, i0=start * (xv.size // xv.shape[0]))
    k = _np_key(key)
    value = _index(xv, k)
    if isinstance(value, np.generic):  # an int for every dim: NumPy's scalar copy, where torch gives a 0-d view
        value = xv[k + (Ellipsis,)] if isinstance(k, tuple) else xv[k, ...]
    kind = _key_kind(k)
    if x._rg and _state.grad_enabled:
        if (kind is not INDEX and value.size and value.flags.c_contiguous and xv.flags.c_contiguous
                and np.shares_memory(value, xv)):
            return _view(kind, x, value, i0=(value.ctypes.data - xv.ctypes.data) // xv.itemsize)
        idx = _key_map(xv, k, key)
        if not _viewed(kind, value, xv):
            t = _unary_with_index(kind, x, value, idx)
            return t
        return _view(kind, x, value, b=idx)
    t = _leaf(value)
    if _viewed(kind, value, xv):
        t._vc = counter(x)
        t._extra().base = x  # an in-place change to the view reaches x (``_update_base``)
    if _records.PROGRAMS:  # (a compiled program replays the pick by its map)
        _note_record(kind, x, _key_map(xv, k, key), None, t, 0, 0, 0.0)
    return t


def _device_picks(xv, k):
    """The device map that GPU value xv[k] read, flat (cached by shape and key where k is shape-only)."""
    m, _ = cuda_array.picks(xv.shape, k)
    return DeviceArray(m, (m.shape[0],))


def _picked(x, key, pos):
    """The flat positions in x of x's value[key] (a view's index map), from x's positions ``pos``;
    for a GPU value, the device map that pick read."""
    xv = x._value
    if xv.__class__ is DeviceArray and not _records.PROGRAMS:
        return _device_picks(xv, key)
    return np.ascontiguousarray(pos[key]).reshape(-1)


def _viewed(kind, value, xv):
    """Whether x[key] is a view of x: a GPU pick is a copy, yet recorded as the view torch makes, so
    that a write into it is refused (setitem) rather than lost."""
    return kind is not INDEX and (value.__class__ is DeviceArray or np.shares_memory(value, xv))


_TENSOR = object()


def _key_map(xv, k, key):
    """The flat positions that NumPy key k picks from xv; ``key``, the user's key, may hold tensors,
    whose values a compiled program reads again at each replay (_derived). For a GPU value, the
    device map that xv[k] read (cached where the key is shape-only), so a backward copies no map."""
    if xv.__class__ is DeviceArray and not _records.PROGRAMS:
        return _device_picks(xv, k)
    shape = xv.shape
    idx = np.ascontiguousarray(np.arange(math.prod(shape), dtype=np.int64).reshape(shape)[k]).reshape(-1)
    if _records.PROGRAMS:
        parts = key if isinstance(key, tuple) else (key,)
        tensors = [p for p in parts if isinstance(p, Tensor)]
        if tensors:
            plain = [_TENSOR if isinstance(p, Tensor) else p for p in parts]  # (the program holds no tensor)
            is_tuple = isinstance(key, tuple)

            def again(*values):
                it = iter(values)
                new = tuple(_np_key(_leaf(next(it))) if p is _TENSOR else _np_key(p) for p in plain)
                new = new if is_tuple else new[0]
                _index(np.empty(shape, np.int8), new)  # (eager's errors for a key out of range)
                return np.ascontiguousarray(np.arange(math.prod(shape), dtype=np.int64).reshape(shape)[new]).reshape(-1)
            _derived(idx, again, *tensors)
        elif _key_kind(k) is INDEX:  # (a list's map, from Python data: kept)
            _derived(idx, lambda: idx)
    return idx


def setitem(x, key, v):
    _check_inplace(x)
    xv = x._value
    k = _np_key(key)
    sel_shape = np.shape(_index(xv, k))
    if not isinstance(v, Tensor):
        v = np.asarray(v, dtype=xv.dtype)
        v = _constant(to_device_array(v) if xv.__class__ is DeviceArray else v)
    if v._value.dtype != xv.dtype:
        v = to_dtype(v, dtypes.from_numpy_dtype(xv.dtype))
    if v._value.shape != sel_shape:
        broadcast_shapes(v._value.shape, sel_shape)
        v = expand(v, sel_shape, _materialize=True)
    advanced = _key_kind(k) is INDEX
    record = (x._rg or v._rg) and _state.grad_enabled
    if not xv.flags.writeable and _overlaps(xv):  # an expand, or a view of one, whose elements repeat
        if advanced:
            warnings.warn("Use of index_put_ on expanded tensors is deprecated. Please clone() the tensor before "
                          "performing this operation. This also applies to advanced indexing e.g. "
                          "tensor[indices] = tensor", UserWarning, stacklevel=2)
        else:
            _write_target(_basic_view(xv, k))  # (torch's error where the places written repeat)
            if record:
                return _setitem_shared(x, k, v)
    op = INDEX_PUT if advanced else SETITEM  # torch: index_put_ for tensor keys
    before = _before_write(x)
    if record:
        tape = current_tape()
        a = tape.slot_of(x)
        b = tape.slot_of(v)
        c = tape.new_slot(_key_map(xv, k, key), LEAF, [0])
    elif _records.PROGRAMS:  # an untracked write: a compiled program records it as the row and a write
        result = _leaf(_put_value(xv, v._value, _key_map(xv, k, key)))
        _note_record(op, x, v, _key_map(xv, k, key), result, 0, 0, 0.0)
    _write_target(xv, True)[k] = v._value
    x._bump_version()
    if record:
        x._tape = tape
        x._slot = tape.push(op.code, a, b, c, 0, 0, 0.0, _contiguous(xv), x._vc)
        x._rg = True
    if before is not None:
        _note_write(before, x, x if record else result)
    _update_base(x)


def _basic_view(xv, k):
    """xv[k] for a basic key, as a view even where it is one element (NumPy gives a scalar then)."""
    parts = k if isinstance(k, tuple) else (k,)
    return _index(xv, parts if any(p is Ellipsis for p in parts) else parts + (Ellipsis,))


def _setitem_shared(x, k, v):
    """x[k] = v, recorded, for an x whose elements share memory (an expand): writing one place
    changes all that alias it, so, as torch does, the write is recorded on x's base at the places
    written, and x is read anew from the new base."""
    root = _root(x)
    if root is x:
        raise RuntimeError(OVERLAP_MSG)
    xv, rv = x._value, root._value
    dest = _basic_view(xv, k)
    tape = current_tape()
    a, b = tape.slot_of(root), tape.slot_of(v)
    c = tape.new_slot(_view_positions(rv, dest), LEAF, None)
    _write_target(dest)[...] = v._value
    x._bump_version()  # (x shares its base's counter)
    vc = counter(root)
    root._tape, root._rg = tape, True
    root._slot = tape.push(SETITEM.code, a, b, c, 0, 0, 0.0, _contiguous(rv), vc)
    d = tape.new_slot(_view_positions(rv, xv), LEAF, None)
    x._tape, x._rg = tape, True
    x._slot = tape.push(ALIAS.code, root._slot, d, -1, 0, 0, 0.0, _contiguous(xv), vc)


# -- index_select, gather, scatter_add ----------------------------------------------------------
INDEX_SELECT = gather_row("index_select", "IndexSelectBackward0", reads=(1,), static_maps=False, gpu=True)
GATHER = gather_row("gather", "GatherBackward0", reads=(0, 1), static_maps=False, gpu=True)
SCATTER_ADD = row("scatter_add", "ScatterAddBackward0", 3, None, "adj_scatter_add",
                  lambda g, i, o, r: (g, _gather_flat(g, i[2], tuple(i[1].shape)), None), reads={1: (2,)},
                  replay=lambda ins, i0, i1, f0, shape, dtype: _scatter_add_value(ins[0], ins[1], ins[2]), gpu=True)


def _index_tensor(index, name, allow_int32=True):
    iv = _on_host(index._value) if isinstance(index, Tensor) else np.asarray(index)
    if iv.dtype.kind not in "iu" or (not allow_int32 and iv.dtype != np.int64):
        raise RuntimeError(f"{name}(): Expected dtype int32/int64 for index" if allow_int32 else
                           f"{name}(): Expected dtype int64 for index")
    return iv.astype(np.int64, copy=False)


def index_select(x, dim=_NO_DIM, index=_NO_DIM, *, axis=None):
    dim = _axis("index_select", dim, axis)
    _required("index_select", index=index)
    xv = x._value
    iv = _on_host(index._value) if isinstance(index, Tensor) else np.asarray(index)
    if iv.dtype.kind not in "iu":
        raise RuntimeError("index_select(): Expected dtype int32 or int64 for index")
    if iv.ndim > 1:
        raise IndexError("index_select(): Index is supposed to be a vector")
    iv = iv.reshape(-1).astype(np.int64, copy=False)
    d = _dim(dim, xv.ndim)
    n = xv.shape[d] if xv.ndim else 1
    if iv.size and (iv.min() < 0 or iv.max() >= n):
        raise IndexError("index out of range in self")
    x1 = xv.reshape(1) if xv.ndim == 0 else xv
    value = np.take(x1, iv, axis=d).reshape(xv.shape if xv.ndim == 0 else x1.shape[:d] + (iv.size,) + x1.shape[d + 1:])
    positions = np.take(_positions(x).reshape(x1.shape), iv, axis=d)
    return _with_map(INDEX_SELECT, x, value, positions, derive=_again(index, positions, index_select, xv.shape, d))


def _again(index, positions, op, shape, d):
    """_with_map's ``derive`` for a map made from an index: from the index tensor's values, as the
    eager op picks from x's flat positions (its checks included); a Python list's map is kept."""
    if not isinstance(index, Tensor):
        return (lambda: positions), ()
    where = _leaf(np.arange(math.prod(shape), dtype=np.int64).reshape(shape))
    return (lambda v: op(where, d, _leaf(v))._value), (index,)


def repeat_interleave(x, repeats, dim=None, *, axis=None):
    if axis is not None:
        dim = _axis("repeat_interleave", dim, axis)
    if dim is None:
        x, dim = reshape(x, -1), 0
    n = x._value.shape[_dim(dim, x._value.ndim)]
    reps = repeats._value if isinstance(repeats, Tensor) else repeats
    return index_select(x, dim, _leaf(np.repeat(np.arange(n, dtype=np.int64), reps)))


def _scatter_positions(shape, iv, d, name, limits):
    """Flat positions in an array of ``shape`` for each element of index ``iv`` along dim d."""
    if iv.ndim != len(shape):
        raise RuntimeError("Index tensor must have the same number of dimensions as input tensor" if name == "gather"
                           else "Index tensor must have the same number of dimensions as self tensor")
    for k in range(iv.ndim):
        for lim, what in limits:
            if (k != d or what == "src") and iv.shape[k] > lim[k]:
                raise RuntimeError(f"Size does not match at dimension {k} expected index {list(iv.shape)} to be no "
                                   f"larger than {what} {list(lim)} apart from dimension {d}" if what != "src" else
                                   f"Expected index {list(iv.shape)} to be no larger than self {list(shape)} apart "
                                   f"from dimension {d} and to be no larger size than src {list(lim)}")
    size = shape[d] if shape else 1  # (a 0-d tensor is one element along its dim 0, as torch's)
    if iv.size:
        bad = (iv < 0) | (iv >= size)
        if bad.any():
            raise RuntimeError(f"index {int(iv[bad][0])} is out of bounds for dimension {d} with size {size}")
    strides = [int(np.prod(shape[k + 1:])) for k in range(len(shape))]
    pos = np.zeros(iv.shape, np.int64)
    for k in range(iv.ndim):
        coord = iv if k == d else np.arange(iv.shape[k], dtype=np.int64).reshape(
            (1,) * k + (-1,) + (1,) * (iv.ndim - k - 1))
        pos = pos + coord * strides[k]
    return pos


def gather(x, dim=_NO_DIM, index=_NO_DIM, sparse_grad=False, *, axis=None):
    dim = _axis("gather", dim, axis)
    _required("gather", index=index)
    xv = x._value
    iv = _index_tensor(index, "gather")
    d = _dim(dim, xv.ndim)
    pos = _scatter_positions(xv.shape, iv, d, "gather", [(xv.shape, "self")])
    value = xv.reshape(-1)[pos.reshape(-1)].reshape(iv.shape)
    return _with_map(GATHER, x, value, pos, derive=_again(index, pos, gather, xv.shape, d))


def scatter_add(x, dim=_NO_DIM, index=_NO_DIM, src=_NO_DIM, *, axis=None):
    dim = _axis("scatter_add", dim, axis)
    _required("scatter_add", index=index, src=src)
    xv = x._value
    iv = _index_tensor(index, "scatter_add", allow_int32=False)
    d = _dim(dim, xv.ndim)
    src = _scalar_like(src, x)
    if src._value.dtype != xv.dtype:
        raise RuntimeError(f"scatter(): Expected self.dtype to be equal to src.dtype")
    pos = _scatter_positions(xv.shape, iv, d, "scatter_add", [(xv.shape, "self"), (src._value.shape, "src")])
    if src._value.shape != iv.shape:
        src = getitem(src, tuple(slice(0, n) for n in iv.shape))
    flat = pos.reshape(-1)
    if isinstance(index, Tensor):  # (a compiled program finds the positions again at each replay)
        _derived(flat, lambda v: _scatter_positions(xv.shape, _index_tensor(_leaf(v), "scatter_add", False), d,
                                                    "scatter_add", [(xv.shape, "self"), (src._value.shape, "src")])
                 .reshape(-1), index)
    else:
        _derived(flat, lambda: flat)
    return _record(SCATTER_ADD, _scatter_add_value(xv, src._value, flat), x, src, flat)


def _scatter_add_value(xv, sv, flat):
    value = xv.copy()
    np.add.at(value.reshape(-1), flat, sv.reshape(-1))
    return value


def scatter_add_(x, dim, index, src):
    return _inplace(x, scatter_add(x, dim, index, src))


# -- joining and splitting -----------------------------------------------------------------------
def _cat_vjp(g, i, o, r):
    d = r[5]
    shp = tuple(o.shape)
    per = 1
    for k, s in enumerate(shp):
        if k != d:
            per *= s
    out, off = [], 0
    for x in i:
        if x is None:
            out.append(None)
            continue
        span = x.numel() // per if per else 0
        key = (slice(None),) * d + (slice(off, off + span),)
        out.append(reshape(getitem(g, key), tuple(x.shape)))
        off += span
    return tuple(out)


def _join_replay(ins, i0, i1, f0, shape, dtype):
    return _join([v for v in ins if v is not None], i0)


def _stack_replay(ins, i0, i1, f0, shape, dtype):
    vs = [v for v in ins if v is not None]
    return np.stack(vs, axis=i0) if vs[0].ndim < len(shape) else np.concatenate(vs, axis=i0)


CAT = row("cat", "CatBackward0", 3, None, "adj_cat", _cat_vjp, attrs=(Int("dim"),), replay=_join_replay, gpu=True)
STACK = row("stack", "StackBackward0", 3, None, "adj_cat", _cat_vjp, attrs=(Int("dim"),), replay=_stack_replay,
            gpu=True)
REPEAT = gather_row("repeat", "RepeatBackward0", gpu=True)
FLIP = gather_row("flip", "FlipBackward0", gpu=True)


SPLIT = gather_row("split", "SplitBackward0", output=True, gpu=True)
UNBIND = gather_row("unbind", "UnbindBackward0", output=True, gpu=True)
# One call's outputs are one node in torch (the hooks of all of them run when it runs, None where no
# gradient came): their rows are consecutive, each with its output index in i1 (engine.delivery.output_group).
MULTI_OUTPUT = frozenset({SPLIT.code, UNBIND.code})


def repeat(x, *sizes):
    sizes = _shape_arg(sizes)
    xv = x._value
    if len(sizes) < xv.ndim:
        raise RuntimeError("Number of dimensions of repeat dims can not be smaller than number of dimensions of tensor")
    gpu = xv.__class__ is DeviceArray and not _records.PROGRAMS  # (the device map the forward read)
    return _with_map(REPEAT, x, np.tile(xv, sizes),
                     cuda_array.tile_positions(xv.shape, sizes) if gpu else np.tile(_positions(x), sizes))


def flip(x, *dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    xv = x._value
    if not xv.ndim:  # (np.flip of a 0-d array gives a NumPy scalar, no array)
        _axes(dims, 1)
        return _with_map(FLIP, x, xv.copy(), _positions(x))
    axes = _axes(dims, xv.ndim)
    gpu = xv.__class__ is DeviceArray and not _records.PROGRAMS  # (the device map the forward read)
    return _with_map(FLIP, x, np.flip(xv, axes).copy(),
                     cuda_array.flip_positions(xv.shape, axes) if gpu else np.flip(_positions(x), axes))


def _seq(tensors, name):
    if isinstance(tensors, Tensor):
        raise TypeError(f"{name}(): argument 'tensors' (position 1) must be tuple of Tensors, not Tensor")
    ts = list(tensors)
    if not ts:
        raise ValueError(f"{name}(): expected a non-empty list of Tensors")
    if any(t._value.dtype != ts[0]._value.dtype for t in ts):
        rt = _promote(*ts)
        ts = [to_dtype(t, rt) for t in ts]
    return ts


def cat(tensors, dim=0, *, axis=None):
    if axis is not None:
        dim = _axis("cat", dim, axis, 0)
    ts = _seq(tensors, "torch.cat")
    # torch skips legacy empty 1-D tensors in the checks and the value, yet keeps them as inputs of
    # the node: one that requires grad makes the result require grad, and gets an empty gradient
    real = [t for t in ts if t._value.shape != (0,)] or ts[:1]
    ref = real[0]._value.shape
    if not ref:
        raise RuntimeError("zero-dimensional tensor (at position 0) cannot be concatenated")
    d = _dim(dim, len(ref))
    for k, t in enumerate(real):
        s = t._value.shape
        if len(s) != len(ref):
            raise RuntimeError(f"Tensors must have same number of dimensions: got {len(ref)} and {len(s)}")
        for j in range(len(ref)):
            if j != d and s[j] != ref[j]:
                raise RuntimeError(f"Sizes of tensors must match except in dimension {d}. Expected size {ref[j]} "
                                   f"but got size {s[j]} for tensor number {k} in the list.")

    return _cat_tree(CAT, ts, d, lambda vs: _join(vs, d))


def _join(vs, d):
    kept = [v for v in vs if v.shape != (0,)]
    return np.concatenate(kept, axis=d) if kept else np.concatenate(vs)  # (a row of empties only: empty)


concat = concatenate = cat


def stack(tensors, dim=0, *, axis=None):
    if axis is not None:
        dim = _axis("stack", dim, axis, 0)
    ts = _seq(tensors, "stack")
    ref = ts[0]._value.shape
    for k, t in enumerate(ts):
        if t._value.shape != ref:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got {list(ref)} at entry 0 and "
                               f"{list(t._value.shape)} at entry {k}")
    d = _dim(dim, len(ref) + 1)
    return _cat_tree(STACK, ts, d, lambda vs: np.stack(vs, axis=d) if vs[0].ndim == len(ref) else
                     np.concatenate(vs, axis=d))


def _cat_tree(op, ts, d, join):
    """Rows take up to three pieces; more become a tree of rows (three-way, so shallow)."""
    while True:
        groups = [ts[k:k + 3] for k in range(0, len(ts), 3)]
        ts = [_cat_row(op, join([t._value for t in grp]), grp, d) for grp in groups]
        if len(ts) == 1:
            return ts[0]


def _cat_row(op, value, pieces, d):
    # a row of legacy empty pieces only is itself one, joined along its only dim
    return _record(op, value, *pieces, i0=d if value.ndim > d else 0)


def split(x, split_size_or_sections, dim=0):
    xv = x._value
    d = _dim(dim, xv.ndim)
    n = xv.shape[d]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step == 0 and n:
            raise RuntimeError(f"split_size can only be 0 if dimension size is 0, but got dimension size of {n}")
        if step < 0:
            raise RuntimeError(f"split expects split_size be non-negative, but got split_size={step}")
        sizes = [min(step, n - s) for s in range(0, n, step)] if step else [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if int(np.sum(sizes)) != n:
            raise RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {n} (input tensor's size "
                               f"at dimension {d}), but got split_sizes={sizes}")
    pos = _positions(x) if x._rg and _state.grad_enabled else None
    out, off = [], 0
    for s in sizes:
        key = (slice(None),) * d + (slice(off, off + s),)
        value = xv[key]
        if pos is not None:
            out.append(_view(SPLIT, x, value, i1=len(out), b=_picked(x, key, pos)))
        else:
            out.append(_view(SPLIT, x, value))
        off += s
    return tuple(out)


def chunk(x, chunks, dim=0, *, axis=None):
    if axis is not None:
        dim = _axis("chunk", dim, axis, 0)
    if chunks <= 0:
        raise RuntimeError(f"chunk expects `chunks` to be greater than 0, got: {chunks}")
    xv = x._value
    n = xv.shape[_dim(dim, xv.ndim)]
    return split(x, -(-n // chunks) if n else 0, dim)


def unbind(x, dim=0, *, axis=None):
    """Views of x's pieces along dim, recorded as one multi-output node (torch's UnbindBackward0)."""
    if axis is not None:
        dim = _axis("unbind", dim, axis, 0)
    xv = x._value
    if xv.ndim == 0:
        raise IndexError("Dimension specified as 0 but tensor has no dimensions")
    d = _dim(dim, xv.ndim)
    n = xv.shape[d]
    if not (x._rg and _state.grad_enabled):
        return tuple(_view(UNBIND, x, xv[(slice(None),) * d + (i, ...)]) for i in range(n))
    if d == 0 and xv.flags.c_contiguous:  # each piece is a run of x: no index map
        step = xv.size // n if n else 0
        return tuple(_view(UNBIND, x, xv[i, ...], i0=i * step, i1=i) for i in range(n))
    pos = _positions(x)
    keys = [(slice(None),) * d + (i, ...) for i in range(n)]
    return tuple(_view(UNBIND, x, xv[k], i1=i, b=_picked(x, k, pos))
                 for i, k in enumerate(keys))


def select(x, dim=_NO_DIM, index=_NO_DIM, *, axis=None):
    """x's slice at ``index`` along dim, without that dim: a view (torch's SelectBackward0)."""
    dim = _axis("select", dim, axis)
    _required("select", index=index)
    xv = x._value
    if xv.ndim == 0:
        raise IndexError("select() cannot be applied to a 0-dim tensor.")
    if isinstance(index, Tensor):
        index = index.item()
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
        raise TypeError(f"select(): argument 'index' (position 2) must be int, not {type(index).__name__}")
    d = _dim(dim, xv.ndim)
    n = xv.shape[d]
    if not -n <= index < n:
        raise IndexError(f"select(): index {index} out of range for tensor of size {list(xv.shape)} at dimension {d}")
    key = (slice(None),) * d + (index % n, ...)
    value = xv[key]  # (the Ellipsis keeps a one-element result a view)
    if not (x._rg and _state.grad_enabled):
        return _view(SELECT, x, value)
    if value.size and value.flags.c_contiguous and xv.flags.c_contiguous and np.shares_memory(value, xv):
        return _view(SELECT, x, value, i0=(value.ctypes.data - xv.ctypes.data) // xv.itemsize)
    return _view(SELECT, x, value, b=_picked(x, key, _positions(x)))


def narrow(x, dim=_NO_DIM, start=_NO_DIM, length=_NO_DIM, *, axis=None):
    dim = _axis("narrow", dim, axis)
    _required("narrow", start=start, length=length)
    d = _dim(dim, x._value.ndim)
    return getitem(x, (slice(None),) * d + (slice(start, start + length),))
