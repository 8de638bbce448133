"""In-place writes: x takes a new value in its own storage and the result's place in the graph,
a view's write reaches its base (torch's CopySlices), and expanded tensors refuse writes whose
places repeat. Also the in-place ops of their own (zero_, fill_, copy_)."""
import numpy as np

from ..tape import LEAF, SLOT, _contiguous, _state, counter, current_tape, recording_program
from ..tensor import DeviceArray, Tensor, _read
from ..tensor import leaf as _leaf
from . import _record as _records
from ._record import record_unary as _unary
from .algebra import _gather_flat
from .attrs import Float
from .cast import _torch_type_name, clone, to_device, to_dtype, zeros_like
from .promote import broadcast_shapes
from .results import _constant, _record, _result, _view_positions
from .shape import reshape
from .spec import row
from .sums import _sum_to

ndarray = np.ndarray


def _root(x):
    """The tensor whose storage x views (x itself when it is no view)."""
    while x._x is not None and x._x.base is not None:
        x = x._x.base
    return x


def _check_inplace(x):
    if _state.grad_enabled and x._rg and x._tape is None:
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
    root = _root(x)
    if root is not x and _state.grad_enabled and root._rg and root._tape is None:
        raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place operation.")
    if root is not x and x._value.__class__ is DeviceArray and not np.shares_memory(x._value, root._value):
        raise NotImplementedError("indexing or expanding a GPU tensor copies its elements in tapegrad (no view yet), "
                                  "so an in-place write into the result would not reach the tensor it came from: "
                                  "write into that tensor itself (x[i, j] = v, not x[i][j] = v)")


def _inplace(x, result, where=True, overlap_ok=False):
    """Make x hold ``result`` in its own storage: x takes result's place in the graph. ``where``: the
    elements written (masked_fill_); ``overlap_ok``: fill_, zero_ and masked_fill_, which torch lets
    write into an expanded tensor."""
    _check_inplace(x)
    before = _before_write(x)
    xv = x._value
    if result._value.shape != xv.shape:
        raise RuntimeError(f"output with shape {list(xv.shape)} doesn't match the broadcast shape "
                           f"{list(result._value.shape)}")
    if result._value.dtype.kind == "f" and xv.dtype.kind != "f":
        raise RuntimeError(f"result type Float can't be cast to the desired output type "
                           f"{_torch_type_name(xv.dtype)}")
    try:
        if where is True:  # (where=True costs a ufunc argument more)
            np.copyto(xv, result._value, casting="unsafe")
        else:
            np.copyto(xv, result._value, casting="unsafe", where=where)
    except ValueError:  # read-only: an expand, or a view of one
        if xv.flags.writeable:
            raise
        np.copyto(_write_target(xv, overlap_ok), result._value, casting="unsafe", where=where)
    x._bump_version()
    if result._tape is not None:
        tape = result._tape
        x._tape, x._slot, x._rg = tape, result._slot, True
        tape.vcs[result._slot] = x._vc  # later in-place changes to x invalidate what was saved
        _repin_version(tape, result._slot, x._vc[0])
    if before is not None:
        _note_write(before, x, result)
    _update_base(x)
    return x


def _before_write(x):
    """(program, the slot that held x) when a compiled program records, before x is written."""
    if _records.PROGRAMS:
        p = recording_program()
        if p is not None:
            return p, p.slot_of(x)
    return None


def _note_write(before, x, result):
    """The program records the write, after it (x's place in the graph is known then)."""
    p, target = before
    root = _root(x)
    # an untracked write through a view changes its base with no row that says so
    p.note_write(x, result, target, root is not x and not (_state.grad_enabled and (x._rg or root._rg)))


OVERLAP_MSG = ("unsupported operation: more than one element of the written-to tensor refers to a single memory "
               "location. Please clone() the tensor before performing the operation.")


def _overlaps(v):
    """Whether some elements of v share memory (torch's has_internal_overlap: a stride 0 over a size > 1)."""
    return any(st == 0 and n > 1 for n, st in zip(v.shape, v.strides))


def _write_target(v, overlap_ok=False):
    """v, ready for an in-place write. An expand, and any view of one, is a read-only NumPy view
    (np.broadcast_to): where its elements repeat, torch's error, unless the op may write there
    (``overlap_ok``); else a writable view of the same memory, so the write reaches the expanded
    tensor's storage as in torch."""
    if v.flags.writeable:
        return v
    if not overlap_ok and _overlaps(v):
        raise RuntimeError(OVERLAP_MSG)
    root = v
    while isinstance(root.base, ndarray):
        root = root.base
    if not root.flags.writeable or not root.flags.c_contiguous:
        return v  # memory that is read-only itself: NumPy's error stands
    return ndarray(v.shape, v.dtype, root, v.ctypes.data - root.ctypes.data, v.strides)


def _update_base(x):
    """x, a view, was just changed in place: its root records the write as torch's CopySlices, so
    the root's later uses differentiate through the new values."""
    root = _root(x)
    if root is x or not _state.grad_enabled or not (x._rg or root._rg):
        return
    tape = x._tape if x._tape is not None else current_tape()
    a, b = tape.slot_of(root), tape.slot_of(x)
    c = tape.new_slot(_view_positions(root._value, x._value), LEAF, None)
    root._slot = tape.push(SETITEM.code, a, b, c, 0, 0, 0.0, _contiguous(root._value), counter(root))
    root._tape, root._rg = tape, True
    if _overlaps(x._value):  # written through an expand (fill_, zero_, masked_fill_, index_put_): as in
        # torch, the forward stands and a gradient that reaches the write is an error (check_versions)
        tape.overlapped = (tape.overlapped or set()) | {b, root._slot}


def _saved(x, *others):
    """x for an in-place op whose adjoint reads x's old value: a copy when the op is recorded,
    since the write would overwrite what the adjoint needs (torch saves the original too)."""
    if _state.grad_enabled and (x._rg or any(isinstance(o, Tensor) and o._rg for o in others)):
        return clone(x)
    return x


def _repin_version(tape, s, version):
    obj, flags, _, dt = SLOT.unpack_from(tape.slots, s * SLOT.size)
    SLOT.pack_into(tape.slots, s * SLOT.size, obj, flags, version, dt)


def _setitem_vjp(g, i, o, r):
    x, v, idx = i
    return (_index_put(g, idx, zeros_like(v)), reshape(_gather_flat(g, idx, tuple(v.shape)), v.shape), None)


def _put_value(xv, v, idx):
    out = xv.copy()
    out.reshape(-1)[idx] = v.reshape(-1)
    return out


def _put_replay(ins, i0, i1, f0, shape, dtype):
    return _put_value(ins[0], ins[1], ins[2])


# x with v written at the flat positions of index map c (torch's CopySlices, the node of its view function)
SETITEM = row("index_put", "CopySlices", 3, None, "adj_setitem", _setitem_vjp, reads=("const",), inputs=2,
              replay=_put_replay, static_maps=True, gpu=True)
INDEX_PUT = row("index_put_advanced", "IndexPutBackward0", 3, None, "adj_setitem", _setitem_vjp,
                reads=(2,), inputs=2, replay=_put_replay, gpu=True)  # x[mask] = v


def _index_put(g, idx, v):
    """A copy of g with the flat positions idx replaced by v (differentiable in g and v)."""
    value = g._value.copy()
    value.reshape(-1)[idx._value] = v._value.reshape(-1)
    if (g._rg or v._rg) and _state.grad_enabled:
        tape = current_tape()
        vc = [0]
        a, b = tape.slot_of(g), tape.slot_of(v)
        c = tape.new_slot(idx._value, LEAF, [0])
        return _result(value, tape, tape.push(SETITEM.code, a, b, c, 0, 0, 0.0, value, vc), vc)
    return _leaf(value)


COPY = row("copy", "CopyBackwards", 2, None, "adj_copy",
           lambda g, i, o, r: (zeros_like(i[0]), to_dtype(_sum_to(g, tuple(i[1].shape)), i[1].dtype)),
           replay=lambda ins, i0, i1, f0, shape, dtype: _copy_value(ins[1], shape, dtype), gpu=True)


def fresh_grad(g):
    """The .grad a create_graph backward gives a leaf that had none: a copy of g, made as torch's
    AccumulateGrad makes it, empty(...).copy_(g), so it shows CopyBackwards(None, g's node)."""
    value = np.copy(g._value, order="C")  # (np.copy: a GPU value answers it)
    return _record(COPY, value, np.empty_like(value), g)


def copy_(x, src, non_blocking=False):
    if not isinstance(src, Tensor):
        src = _constant(np.asarray(src))
    src = to_device(src, x.device)  # (torch copies across devices: src's gradient goes back to src's)
    broadcast_shapes(x._value.shape, src._value.shape)
    value = _copy_value(src._value, x._value.shape, x._value.dtype)
    return _inplace(x, _record(COPY, value, x, src))


def _copy_value(sv, shape, dtype):
    return np.broadcast_to(sv, shape).astype(dtype)


ZERO = row("zero", "ZeroBackward0", 1, None, "adj_zero", lambda g, i, o, r: (zeros_like(g),),
           replay=lambda ins, i0, i1, f0, shape, dtype: np.zeros(shape, dtype), gpu=True)
FILL = row("fill", "FillBackward2", 1, None, "adj_zero", lambda g, i, o, r: (zeros_like(g),),
           attrs=(None, None, Float("value")), replay=lambda ins, i0, i1, f0, shape, dtype: np.full(shape, f0, dtype),
           gpu=True)


def zero_(x):
    _check_inplace(x)
    if (x._rg or x._tape is not None) and _state.grad_enabled or _records.PROGRAMS:  # (a program records the write)
        return _inplace(x, _unary(ZERO, x, np.zeros_like(x._value)), overlap_ok=True)
    _write_target(x._value, True)[...] = 0
    x._bump_version()
    return x


def fill_(x, value):
    _check_inplace(x)
    if isinstance(value, Tensor) and value._rg and _state.grad_enabled:
        # x's gradient is zero, the fill value's the sum of g: neither row saves a value (torch's FillBackward)
        return _inplace(x, _unary(FILL, x, np.zeros_like(x._value)) + value)
    v = value._value if isinstance(value, Tensor) else value
    if (x._rg or x._tape is not None) and _state.grad_enabled or _records.PROGRAMS:
        if isinstance(value, Tensor) and _records.PROGRAMS:
            _read(value)  # (the row keeps the value: a compiled program guards on it)
        return _inplace(x, _unary(FILL, x, np.full_like(x._value, v), f0=float(v)), overlap_ok=True)
    _write_target(x._value, True)[...] = v
    x._bump_version()
    return x
