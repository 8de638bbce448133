"""Custom differentiable operations: ``tapegrad.autograd.Function``, as torch's.

``MyOp.apply(*args)`` runs ``forward`` under ``no_grad`` and, when an input needs grad, records
the call on the tape as rows of the ``function`` opcode (``ops.FUNCTION``): one row per
differentiable output, each carrying up to three input slots (a call with more inputs that need
grad gets further rows for the same output, so that the engine's plan reaches every input).
The rows of one call are consecutive, and ``tape.pyfuncs`` maps each of them to its ``_Call``.

Why one row per output: a row has one output slot, so every output keeps an ordinary slot (with
its own grad_fn, hooks, retain_grad and dump line) and the jitted planner needs no new rule.
The engine runs the call's Python ``backward`` once, when the reverse walk reaches the call's
rows, with the gradients of all its outputs (they are complete then: every consumer of an
output was recorded after the call). On the jitted path that is between two replay segments
(``engine.driver._replay_with_hooks``); with ``create_graph`` the backward runs with grad mode on,
so a backward written in tapegrad ops is recorded and can be differentiated again.

Saved tensors that live on a tape are kept as slots, not Tensors, so that the tape -> call ->
ctx -> tensor -> tape chain is no reference cycle: reference counting alone frees the graph.
As torch's, a backward without retain_graph that runs the call releases what it saved: reading
``ctx.saved_tensors`` afterwards fails, while a backward that does not read them runs again.
"""
import functools
import inspect
import warnings
import weakref

import numpy as np

from .. import ops
from ..engine.create_graph import slot_tensor
from ..engine.errors import FREED_MSG
from ..grad_mode import no_grad
from ..tape import _contiguous, _state, counter, current_tape, recording_program
from ..tensor import Tensor

_NAMES = []  # backward node names ("MyOpBackward"); a row's i0 indexes this list
_NAME_ID = {}


def backward_name(row):
    """grad_fn name of a ``function`` row: torch's ``<class name>Backward``."""
    i = row[5]
    return _NAMES[i] if 0 <= i < len(_NAMES) else "FunctionBackward"


def _name_id(cls):
    name = cls.__dict__.get("_node_name") or cls.__name__ + "Backward"
    i = _NAME_ID.get(name)
    if i is None:
        i = _NAME_ID[name] = len(_NAMES)
        _NAMES.append(name)
    return i


class FunctionCtx:
    """The ``ctx`` handed to forward and backward."""

    def __init__(self):
        self.to_save = ()
        self.needs_input_grad = ()
        self.materialize_grads = True
        self._dirty = ()
        self._non_differentiable = ()
        self._saved = None  # after apply: per saved tensor, ("slot", s, vc, version), _SavedLeaf or None
        self._released = False  # a backward without retain_graph ran the call
        self._tape = None  # weak reference to the tape that holds the call

    def save_for_backward(self, *tensors):
        for i, t in enumerate(tensors):
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_backward can only save variables, but argument {i} is of type "
                                f"{type(t).__name__}")
        self.to_save = tensors

    save_for_forward = save_for_backward

    def mark_dirty(self, *tensors):
        self._dirty = tensors

    def mark_non_differentiable(self, *tensors):
        self._non_differentiable = tensors

    def set_materialize_grads(self, value):
        if value.__class__ is not bool:
            raise TypeError("set_materialize_grads received an invalid combination of arguments - got "
                            f"({type(value).__name__}), but expected (bool)")
        self.materialize_grads = value

    @property
    def saved_tensors(self):
        if self._released:
            raise RuntimeError(FREED_MSG)
        if self._saved is None:
            return tuple(self.to_save)
        tape = self._tape() if self._tape is not None else None
        out = []
        for item in self._saved:
            if isinstance(item, tuple):
                out.append(_resolve(tape, item))
            elif item is None:
                out.append(None)
            else:
                _check_version(counter(item.t), item.version, item.t)
                out.append(item.t)
        return tuple(out)

    saved_variables = saved_tensors

    def _release(self):
        """What the engine calls once a backward without retain_graph has run the call."""
        self._released = True
        self._saved = ()

    def _saved_slots(self):
        """The tape slots of the saved tensors, kept whole while the call may still run."""
        return [item[1] for item in self._saved or () if isinstance(item, tuple)]


def _resolve(tape, item):
    """The Tensor standing for a saved slot, attached to the graph (differentiable again)."""
    _, s, vc, version = item
    if tape is None:  # the graph itself is gone
        raise RuntimeError(FREED_MSG)
    _check_version(vc, version, tape.values[s])
    return slot_tensor(tape, s)


def _check_version(vc, version, t):
    if vc[0] != version:
        v = t._value if isinstance(t, Tensor) else t
        kind = {"float32": "FloatTensor", "float64": "DoubleTensor"}.get(v.dtype.name, "Tensor")
        raise RuntimeError("one of the variables needed for gradient computation has been modified by an "
                           f"inplace operation: [torch.{kind} {list(v.shape)}] is at version {vc[0]}; expected "
                           f"version {version} instead. Hint: the saved tensor was changed in place after "
                           "save_for_backward.")


class _Call:
    """One application of a Function, as recorded: what its backward needs from the engine."""
    __slots__ = ("cls", "ctx", "name", "in_slots", "in_meta", "out_slots", "out_meta", "lo", "hi")

    def run(self, grad_outputs):
        """Call the user's backward with one gradient (Tensor or None) per output; return
        ``[(slot, gradient Tensor)]`` for the inputs that need grad, checked as torch checks them."""
        ctx = self.ctx
        if ctx.materialize_grads:
            grad_outputs = [g if g is not None or m is None else ops._leaf(np.zeros(m[0], m[1]))
                            for g, m in zip(grad_outputs, self.out_meta)]
        grads = _backward_of(self.cls)(ctx, *grad_outputs)
        if not isinstance(grads, tuple):
            grads = (grads,)
        n = len(self.in_slots)
        if len(grads) != n:
            if len(grads) > n and all(g is None for g in grads[n:]):
                grads = grads[:n]
            else:
                raise RuntimeError(f"function {self.name} returned an incorrect number of gradients "
                                   f"(expected {n}, got {len(grads)})")
        out = []
        for i, (g, s, meta) in enumerate(zip(grads, self.in_slots, self.in_meta)):
            if g is None:
                continue
            if meta is None:
                raise RuntimeError(f"function {self.name} returned a gradient different than None at position "
                                   f"{i + 1}, but the corresponding forward input was not a Variable")
            if s < 0:
                continue  # that input does not need grad: torch drops what backward gave for it
            if not isinstance(g, Tensor):
                raise TypeError(f"function {self.name} returned a gradient at index {i} of type "
                                f"{type(g).__name__}, expected a Tensor or None")
            shape, dt = meta
            if tuple(g.shape) != shape:
                if not _expandable(shape, tuple(g.shape)):
                    raise RuntimeError(f"Function {self.name} returned an invalid gradient at index {i} - got "
                                       f"{list(g.shape)} but expected shape compatible with {list(shape)}")
                g = ops._sum_to(g, shape)
            if g._value.dtype != dt:
                g = ops.to_dtype(g, dt)
            out.append((s, g))
        return out


def _expandable(shape, to):
    """Whether ``shape`` broadcasts to ``to`` (torch's is_expandable_to)."""
    if len(shape) > len(to):
        return False
    for a, b in zip(reversed(shape), reversed(to)):
        if a != b and a != 1:
            return False
    return True


def _backward_of(cls):
    if cls.backward is Function.backward and cls.vjp is not Function.vjp:
        return cls.vjp
    return cls.backward


class Function:
    """Base class of user-defined differentiable operations (static ``forward``/``backward``)."""

    def __init__(self, *args, **kwargs):
        warnings.warn(f"{self.__class__} should not be instantiated. Methods on autograd functions are all "
                      "static, so you should invoke them on the class itself. Instantiating an autograd function "
                      "will raise an error in a future version of PyTorch.", DeprecationWarning, stacklevel=2)

    def __call__(self, *args, **kwargs):
        raise RuntimeError("Legacy autograd function with non-static forward method is deprecated. Please use "
                           "new-style autograd function with static forward method. (Example: "
                           "https://pytorch.org/docs/stable/autograd.html#torch.autograd.Function)")

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("You must implement the forward function for custom autograd.Function.")

    @staticmethod
    def setup_context(ctx, inputs, output):
        raise NotImplementedError("setup_context is not implemented.")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("You must implement either the backward or vjp method for your custom "
                                  "autograd.Function to use it with backward mode AD.")

    vjp = backward

    @staticmethod
    def jvp(ctx, *grad_inputs):
        raise NotImplementedError("You must implement the jvp function for custom autograd.Function to use it "
                                  "with forward mode AD.")

    @classmethod
    def apply(cls, *args, **kwargs):
        prog = recording_program()
        if prog is not None:  # a compiled function records: its program calls apply again at each replay
            return prog.note_function(cls, args, kwargs)
        if kwargs:  # torch binds keyword arguments to forward's positions
            args = _bind(cls, args, kwargs)
        ctx = FunctionCtx()
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a._rg for a in args)  # (grad mode aside, as torch's)
        with no_grad():
            if cls.setup_context is not Function.setup_context:
                outputs = cls.forward(*args)
                cls.setup_context(ctx, args, outputs)
            else:
                outputs = cls.forward(ctx, *args)
        _check_marks(ctx)
        if not (_state.grad_enabled and any(ctx.needs_input_grad)):
            return _unrecorded(ctx, args, outputs)
        return _record(cls, ctx, args, outputs)


def _bind(cls, args, kwargs):
    fwd = cls.forward
    params = list(inspect.signature(fwd).parameters)
    uses_ctx = cls.setup_context is Function.setup_context
    bound = inspect.signature(fwd).bind(*((None,) if uses_ctx else ()), *args, **kwargs)
    bound.apply_defaults()
    vals = [bound.arguments[p] for p in params if p in bound.arguments]
    return tuple(vals[1:] if uses_ctx else vals)


def _check_marks(ctx):
    """ctx.mark_dirty and mark_non_differentiable take tensors; the dirty ones were changed in place,
    which counts on their version counters as any in-place op does (recorded or not)."""
    for i, t in enumerate(ctx._dirty):
        if not isinstance(t, Tensor):
            raise RuntimeError(f"mark_dirty can only accept variables, but argument {i} is of type "
                               f"{type(t).__name__}")
    for t in ctx._non_differentiable:
        if not isinstance(t, Tensor):
            raise RuntimeError(f"mark_non_differentiable only accepts variable arguments, but got {type(t).__name__}")
    for t in ctx._dirty:
        t._bump_version()


def _check_dirty_returned(ctx, outs):
    returned = {id(o) for o in outs}
    if any(id(t) not in returned for t in ctx._dirty):
        raise RuntimeError("Some elements marked as dirty during the forward method were not returned as output. "
                           "The inputs that are modified inplace must all be outputs of the Function.")


def _is_view(t):
    return t._x is not None and t._x.base is not None


def _not_differentiable(o, is_input, is_dirty):
    """An output that gets no gradient, as torch hands it out: an input returned as is becomes an
    alias of it (detached), unless forward changed it in place; another output that requires grad
    (forward returned some outside tensor) is detached in place, unless it is a view."""
    if not o._rg:
        return o.detach() if is_input and not is_dirty else o
    if is_input:
        return o.detach()
    return o if _is_view(o) else o.detach_()


def _unrecorded(ctx, args, outputs):
    """The outputs of a call that is not recorded (grad mode off, or no input requires grad)."""
    single = not isinstance(outputs, tuple)
    outs = (outputs,) if single else outputs
    _check_dirty_returned(ctx, outs)
    inputs = {id(a) for a in args if isinstance(a, Tensor)}
    dirty = {id(t) for t in ctx._dirty}
    res = [_not_differentiable(o, id(o) in inputs, id(o) in dirty) if isinstance(o, Tensor) else o for o in outs]
    return res[0] if single else tuple(res)


def _record(cls, ctx, args, outputs):
    """Put the call on the tape: wrap the outputs and append one row per differentiable output."""
    single = not isinstance(outputs, tuple)
    outs = (outputs,) if single else outputs
    _check_dirty_returned(ctx, outs)
    tape = current_tape()
    call = _Call()
    call.cls, call.ctx, call.name = cls, ctx, cls.__name__ + "Backward"
    in_slots, in_meta = [], []
    for a in args:
        if isinstance(a, Tensor):
            in_slots.append(tape.slot_of(a) if a._rg else -1)
            in_meta.append((tuple(a._value.shape), a._value.dtype))
        else:
            in_slots.append(-1)
            in_meta.append(None)
    call.in_slots, call.in_meta = tuple(in_slots), tuple(in_meta)
    live = sorted({s for s in in_slots if s >= 0})
    chunks = [live[i:i + 3] + [-1] * (3 - len(live[i:i + 3])) for i in range(0, len(live), 3)]

    inputs = {id(a) for a in args if isinstance(a, Tensor)}
    dirty = {id(t) for t in ctx._dirty}
    non_diff = {id(t) for t in ctx._non_differentiable}
    # A tensor returned twice (not an input) is one output object, whose gradient is that of its
    # last place, as torch sets its output_nr; the earlier places get none (zeros, materialized).
    last = {id(o): k for k, o in enumerate(outs) if isinstance(o, Tensor)}
    cid = _name_id(cls)
    call.lo = tape.n
    wrapped, out_slots, out_meta, rebased = [], [], [], []
    for k, o in enumerate(outs):
        if not isinstance(o, Tensor):
            wrapped.append(o)
            out_slots.append(-1)
            out_meta.append(None)
            continue
        out_meta.append((o._value.shape, o._value.dtype))
        is_input, is_dirty = id(o) in inputs, id(o) in dirty
        if (not is_input or is_dirty) and last[id(o)] != k:
            wrapped.append(None)  # the object made at its last place (below)
            out_slots.append(-1)
            continue
        if id(o) in non_diff or o._value.dtype.kind != "f":
            wrapped.append(_not_differentiable(o, is_input, is_dirty))
            out_slots.append(-1)
            continue
        value = _contiguous(o._value)
        if is_dirty:  # modified in place by forward: the input itself becomes the output
            _check_dirty_output(o, is_input, len(outs))
            t, vc = o, counter(o)
        else:
            t, vc = None, _shared_vc(o, args)
        s = tape.push(ops.FUNCTION.code, *chunks[0], cid, k, 0.0, value, vc)
        for more in chunks[1:]:
            tape.push_row(ops.FUNCTION.code, *more, s, cid, k, 0.0)
        if t is None:
            t = ops._result(o._value, tape, s, vc)
        else:
            t._tape, t._slot, t._rg, t._grad = tape, s, True, None
            if _is_view(t):
                rebased.append(t)
        wrapped.append(t)
        out_slots.append(s)
    call.hi = tape.n
    call.out_slots, call.out_meta = tuple(out_slots), tuple(out_meta)
    wrapped = [wrapped[last[id(o)]] if w is None and isinstance(o, Tensor) else w for w, o in zip(wrapped, outs)]
    if call.hi == call.lo:
        return wrapped[0] if single else tuple(wrapped)  # no differentiable output
    for e in range(call.lo, call.hi):
        tape.pyfuncs[e] = call
    for t in rebased:  # a view changed in place: its base records the write (torch's CopySlices)
        ops._update_base(t)
    ctx._tape = weakref.ref(tape)
    ctx._saved = [_saved_item(tape, t, outs, wrapped, out_slots) for t in ctx.to_save]
    ctx.to_save = ()
    return wrapped[0] if single else tuple(wrapped)


def _check_dirty_output(o, is_input, n_outputs):
    if o._rg and o._tape is None:
        raise RuntimeError("a leaf Variable that requires grad has been used in an in-place operation.")
    if not is_input:
        warnings.warn("ctx.mark_dirty() received a tensor that was not an input. Only input Tensors that have "
                      "been mutated should be passed to ctx.mark_dirty().", UserWarning, stacklevel=4)
    if _is_view(o) and n_outputs > 1:
        raise RuntimeError(
            "If your Function modifies inplace an input that is a view of another Tensor, your Function cannot "
            "return more than one Tensor. This is not supported by the current autograd engine. You should either "
            "make sure the input is not a view (using .clone() for example) or make your Function only return one "
            "Tensor (potentially splitting it into two Functions: one doing the inplace that returns a single Tensor "
            "and a second one that does the other operations). You can ask on the forum "
            "https://discuss.pytorch.org/ if you need help to do this change.")


def _shared_vc(o, args):
    # An output that shares storage with an input shares its version counter too.
    for a in args:
        if isinstance(a, Tensor) and np.may_share_memory(a._value, o._value):
            return counter(a)
    return None


def _saved_item(tape, t, outs, wrapped, out_slots):
    """How a saved tensor is kept: as a slot when it lives on a tape (no reference cycle), else itself."""
    if t is None:
        return None
    for o, w, s in zip(outs, wrapped, out_slots):
        if o is t and s >= 0:
            vc = counter(w)
            return ("slot", s, vc, vc[0])
    if t._rg:  # a result, or a leaf that may get a .grad with a graph: kept as a slot, no cycle
        vc = counter(t)
        return ("slot", tape.slot_of(t), vc, vc[0])
    return _SavedLeaf(t)


class _SavedLeaf:
    """A saved tensor that does not require grad: kept as is, with its version at save time."""
    __slots__ = ("t", "version")

    def __init__(self, t):
        self.t, self.version = t, counter(t)[0]


def once_differentiable(fn):
    """Decorator for a backward that is not itself differentiable: it runs under ``no_grad``. Where
    torch would differentiate it again (grad mode on, a gradient that requires grad), its results
    come out of a node whose backward raises, as torch's DelayedError does."""

    @functools.wraps(fn)
    def wrapper(ctx, *args, **kwargs):
        with no_grad():
            outputs = fn(ctx, *args, **kwargs)
        if not _state.grad_enabled or not any(isinstance(a, Tensor) and a._rg for a in args):
            return outputs
        outs = outputs if isinstance(outputs, tuple) else (outputs,)
        return _DelayedError.apply(*(o.detach().requires_grad_(True) if isinstance(o, Tensor) else o for o in outs))
    return wrapper


class _DelayedError(Function):
    """What once_differentiable's results come out of: torch's node named Error."""
    _node_name = "Error"

    @staticmethod
    def forward(ctx, *xs):
        return xs if len(xs) > 1 else xs[0]

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("trying to differentiate twice a function that was marked with @once_differentiable")
