"""How a forward value becomes a Tensor outside the generated recorders (_record.py): results that
share their input's storage (views), rows with index maps or constant operands, and the torch
nodes a composite shows instead of its rows (``shown_as``)."""
import numpy as np

from ..tape import LEAF, _contiguous, _state, counter, current_tape, note_op, recording_program
from ..tensor import DeviceArray, Tensor, as_value
from ..tensor import leaf as _leaf
from . import _record as _records

ndarray = np.ndarray


def _result(value, tape, slot, vc):
    t = _leaf(value)
    t._tape = tape
    t._slot = slot
    t._rg = True
    t._vc = vc
    return t


def _view(op, x, value, i0=0, i1=0, f0=0.0, b=None):
    """A result that shares x's storage (and so its version counter)."""
    vc = counter(x)
    if x._rg and _state.grad_enabled:
        tape = current_tape()
        a = tape.slot_of(x)
        bs = tape.new_slot(b, LEAF, None) if b is not None else -1
        s = tape.push(op.code, a, bs, -1, i0, i1, f0, _contiguous(value), vc)
        t = _result(value, tape, s, vc)
    else:
        t = _leaf(value)
        t._vc = vc
        if _records.PROGRAMS:
            if b is None and op.kernel == "adj_getitem":  # (a compiled program replays the pick by its map)
                b = _view_positions(x._value, value)
            note_op(op.code, x, b, t, i0, i1, f0)
    t._extra().base = x
    return t


def _record(op, value, a, b=None, c=None, i0=0, i1=0, f0=0.0):
    """Record ``op`` over up to three operands: Tensors, or arrays stored as constant slots (masks,
    index maps; an (array, tensor) pair for an array made from a tensor, a condition broadcast:
    version-checked as that tensor, as torch checks the tensor it saved). Results that need no
    grad are leaves."""
    if value.__class__ is not ndarray:
        value = as_value(value)
    elif not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)
    if not (_state.grad_enabled and (_tracked(a) or _tracked(b) or _tracked(c))):
        t = _leaf(value)
        if _records.PROGRAMS:
            _note_record(op, a, b, c, t, i0, i1, f0)
        return t
    tape = current_tape()
    slots = [-1 if v is None else tape.slot_of(v) if v.__class__ is Tensor else
             _made_from(tape, v) if v.__class__ is tuple else
             tape.new_slot(_contiguous(v), LEAF, None) for v in (a, b, c)]
    return _result(value, tape, tape.push(op.code, slots[0], slots[1], slots[2], i0, i1, f0, value, None), None)


def _made_from(tape, v):
    """The constant slot of an (array, tensor) operand: the tensor's value broadcast."""
    arr = _contiguous(v[0])
    if _records.PROGRAMS:
        _derived(arr, _broadcast(arr.shape), v[1])
    return tape.new_slot(arr, LEAF, counter(v[1]))


def _broadcast(shape):
    return lambda c: np.ascontiguousarray(np.broadcast_to(c, shape))


def _derived(value, fn, *inputs):
    """``value`` (an index map, a mask, weights) is ``fn`` of the values of ``inputs`` (Tensors, or
    arrays derived so themselves): a compiled program recomputes it from them at each replay
    instead of keeping the recorded one. Returns ``value``."""
    if _records.PROGRAMS:
        p = recording_program()
        if p is not None:
            p.derive(value, fn, inputs)
    return value


def _tracked(v):
    return v.__class__ is Tensor and v._rg


def _note_record(op, a, b, c, t, i0, i1, f0):
    p = recording_program()
    if p is not None:
        p.note(op.code, a, b, t, i0, i1, f0, c)


def _noted_python(fn, operands, t):
    """t = fn(*operands) by NumPy, with no row (a comparison): a compiled program replays the call."""
    if _records.PROGRAMS:
        p = recording_program()
        if p is not None:
            p.note_python(fn, operands, t)
    return t


def _unary_with_index(op, x, value, idx):
    tape = current_tape()
    vc = [0]
    a = tape.slot_of(x)
    b = tape.new_slot(idx, LEAF, [0])
    return _result(value, tape, tape.push(op.code, a, b, -1, 0, 0, 0.0, _contiguous(value), vc), vc)


def _with_map(op, x, value, positions, derive=None):
    """A result that picks elements of x: ``positions`` (x's flat indices in the result's
    layout) become the row's index map. ``derive``: (fn, inputs) when the positions come from
    tensors' values (fn of their values gives ``positions``: _derived)."""
    rg = x._rg and _state.grad_enabled
    if rg or _records.PROGRAMS:
        idx = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
        if derive is not None and _records.PROGRAMS:
            fn, inputs = derive
            _derived(idx, lambda *vs: np.ascontiguousarray(fn(*vs), dtype=np.int64).reshape(-1), *inputs)
        if rg:
            return _unary_with_index(op, x, value, idx)
        t = _leaf(_contiguous(value))
        _note_record(op, x, idx, None, t, 0, 0, 0.0)
        return t
    return _leaf(_contiguous(value))  # (np.ascontiguousarray would make a 0-d result 1-d)


def _view_positions(base, view):
    """For each element of ``view`` (C order), its flat C-order index in ``base``, whose memory it shares."""
    start = base.ctypes.data

    def offsets(a):
        o = np.full(a.shape, a.ctypes.data - start, dtype=np.int64)
        for k, (n, st) in enumerate(zip(a.shape, a.strides)):
            o = o + (np.arange(n, dtype=np.int64) * st).reshape((1,) * k + (n,) + (1,) * (a.ndim - k - 1))
        return o.reshape(-1)

    vo = offsets(view)
    if base.flags.c_contiguous:
        return vo // base.itemsize
    bo = offsets(base)
    order = np.argsort(bo, kind="stable")
    return order[np.searchsorted(bo[order], vo)]


def _positions(x):
    return np.arange(x._value.size, dtype=np.int64).reshape(x._value.shape)


def shown_as(out, grad_fn, *inputs):
    """Show a composite's result as torch's node: ``grad_fn`` its class name, ``inputs`` its
    next_functions: the user's tensors, None for other operands, or a ``shown`` node that the
    composite's rows stand for (a VJP fused into fewer rows than torch's formula has nodes). The
    tape keeps the primitives."""
    tape = out._tape
    if tape is not None:
        tape.shown[out._slot] = (grad_fn, _shown_inputs(tape, inputs))
    return out


def shown(grad_fn, *inputs):
    """A node of torch's graph inside a ``shown_as`` spec, with no row of its own."""
    return grad_fn, inputs


def _shown_inputs(tape, inputs):
    """The spec's inputs as slots (-1: none) and nested (name, inputs) pairs. (A plain loop: W4's
    create_graph walk runs this twice per Hessian-vector product.)"""
    out = []
    for t in inputs:
        if t.__class__ is tuple:
            out.append((t[0], _shown_inputs(tape, t[1])))
        elif isinstance(t, Tensor) and t._rg:
            out.append(t._slot if t._tape is tape else tape.slot_of(t))
        else:
            out.append(-1)
    return tuple(out)


def _const_like(a, like):
    dt = like._value.dtype
    return _leaf(a.astype(dt, copy=False) if a.__class__ is DeviceArray else np.asarray(a, dtype=dt))


def _scalar_like(v, like):
    """A Python scalar or array as a constant tensor in ``like``'s dtype (a Tensor stays as is)."""
    if isinstance(v, Tensor):
        return v
    return _constant(np.asarray(v, dtype=like._value.dtype))


def _constant(value):
    """A tensor of Python data (an operand given as a number or a list): a compiled program keeps it."""
    t = _leaf(value)
    if _records.PROGRAMS:
        p = recording_program()
        if p is not None:
            p.note_created(t, None)
    return t
