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
(``engine_cpu._replay_with_hooks``); with ``create_graph`` the backward runs with grad mode on,
so a backward written in tapegrad ops is recorded and can be differentiated again.

Saved tensors that live on a tape are kept as slots, not Tensors, so that the tape -> call ->
ctx -> tensor -> tape chain is no reference cycle: reference counting alone frees the graph.
"""
import inspect
import warnings
import weakref

import numpy as np

from .. import ops
from ..grad_mode import no_grad
from ..tape import FREED, _contiguous, _state, counter, current_tape
from ..tensor import Tensor

_NAMES = []  # backward node names ("MyOpBackward"); a row's i0 indexes this list
_NAME_ID = {}


def backward_name(row):
    """grad_fn name of a ``function`` row: torch's ``<class name>Backward``."""
    i = row[5]
    return _NAMES[i] if 0 <= i < len(_NAMES) else "FunctionBackward"


def _name_id(cls):
    name = cls.__name__ + "Backward"
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
        self._saved = None  # after apply: per saved tensor, ("slot", s, vc, version, guard), _SavedLeaf or None
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
        self.materialize_grads = bool(value)

    @property
    def saved_tensors(self):
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


def _resolve(tape, item):
    """The Tensor standing for a saved slot, attached to the graph (differentiable again)."""
    from ..engine_cpu import FREED_MSG, slot_tensor
    _, s, vc, version, guard = item
    if tape is None or tape.freed or tape.values[s] is None or tape.slot_flags(guard) & FREED:
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
        if kwargs:  # torch binds keyword arguments to forward's positions
            args = _bind(cls, args, kwargs)
        ctx = FunctionCtx()
        tracking = _state.grad_enabled
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a._rg and tracking for a in args)
        with no_grad():
            if cls.setup_context is not Function.setup_context:
                outputs = cls.forward(*args)
                cls.setup_context(ctx, args, outputs)
            else:
                outputs = cls.forward(ctx, *args)
        if not any(ctx.needs_input_grad):
            return outputs
        return _record(cls, ctx, args, outputs)


def _bind(cls, args, kwargs):
    fwd = cls.forward
    params = list(inspect.signature(fwd).parameters)
    uses_ctx = cls.setup_context is Function.setup_context
    bound = inspect.signature(fwd).bind(*((None,) if uses_ctx else ()), *args, **kwargs)
    bound.apply_defaults()
    vals = [bound.arguments[p] for p in params if p in bound.arguments]
    return tuple(vals[1:] if uses_ctx else vals)


def _record(cls, ctx, args, outputs):
    """Put the call on the tape: wrap the outputs and append one row per differentiable output."""
    single = not isinstance(outputs, tuple)
    outs = (outputs,) if single else outputs
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

    dirty = {id(t) for t in ctx._dirty}
    non_diff = {id(t) for t in ctx._non_differentiable}
    cid = _name_id(cls)
    call.lo = tape.n
    wrapped, out_slots, out_meta = [], [], []
    for k, o in enumerate(outs):
        if not isinstance(o, Tensor):
            wrapped.append(o)
            out_slots.append(-1)
            out_meta.append(None)
            continue
        out_meta.append((o._value.shape, o._value.dtype))
        if id(o) in non_diff or o._value.dtype.kind != "f":
            wrapped.append(o if o._tape is None else o.detach())
            out_slots.append(-1)
            continue
        value = _contiguous(o._value)
        if id(o) in dirty:  # modified in place by forward: the input itself becomes the output
            ops._check_inplace(o)
            t, vc = o, counter(o)
        else:
            t, vc = None, _shared_vc(o, args)
        s = tape.push(ops.FUNCTION.code, *chunks[0], cid, k, 0.0, value, vc)
        for more in chunks[1:]:
            tape.push_row(ops.FUNCTION.code, *more, s, cid, k, 0.0)
        if t is None:
            t = ops._result(o._value, tape, s, vc)
        else:
            t._tape, t._slot, t._rg = tape, s, True
        wrapped.append(t)
        out_slots.append(s)
    call.hi = tape.n
    call.out_slots, call.out_meta = tuple(out_slots), tuple(out_meta)
    if call.hi == call.lo:
        return outputs  # no differentiable output
    for e in range(call.lo, call.hi):
        tape.pyfuncs[e] = call
    ctx._tape = weakref.ref(tape)
    ctx._saved = [_saved_item(tape, t, outs, wrapped, out_slots) for t in ctx.to_save]
    ctx.to_save = ()
    return wrapped[0] if single else tuple(wrapped)


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
    guard = next(s for s in out_slots if s >= 0)  # freed with the call's rows
    for o, w, s in zip(outs, wrapped, out_slots):
        if o is t and s >= 0:
            vc = counter(w)
            return ("slot", s, vc, vc[0], guard)
    if t._rg:  # a result, or a leaf that may get a .grad with a graph: kept as a slot, no cycle
        vc = counter(t)
        return ("slot", tape.slot_of(t), vc, vc[0], guard)
    return _SavedLeaf(t)


class _SavedLeaf:
    """A saved tensor that does not require grad: kept as is, with its version at save time."""
    __slots__ = ("t", "version")

    def __init__(self, t):
        self.t, self.version = t, counter(t)[0]


def once_differentiable(fn):
    """Decorator for a backward that is not itself differentiable: it runs under ``no_grad``."""
    import functools

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        with no_grad():
            return fn(ctx, *args)
    return wrapper
