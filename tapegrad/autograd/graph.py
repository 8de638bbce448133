"""grad_fn objects, made on demand from a tape row (no Python object per op while recording)."""
from ..tape import LEAF, LINK, REQUIRES_GRAD


class Node:
    """Base of the grad_fn classes; ``type(y.grad_fn).__name__`` is torch's name (MulBackward0...)."""
    __slots__ = ("_tape", "_slot")

    def __init__(self, tape, slot):
        self._tape, self._slot = tape, slot

    def name(self):
        n = type(self).__name__
        return f"torch::autograd::{n}" if n in ("CopySlices", "CopyBackwards") else n  # torch's C++ nodes keep their namespace

    @property
    def next_functions(self):
        from .. import ops
        tape = self._tape
        shown = tape.shown.get(self._slot)
        if shown is not None:
            return tuple((_input_node(tape, s), 0) for s in shown[1])
        e = tape.producer(self._slot)
        r = tape.row(e)
        op = ops.TABLE[r[0]]
        out = []
        for k in range(_USER_OPERANDS.get(op.kernel, op.arity)):
            s = r[1 + k]
            out.append((_input_node(tape, s), 0))
        if op.name in ("add_scalar", "sub_scalar", "mul_scalar", "div_scalar"):
            out.append((None, 0))  # torch lists the Python-scalar operand too
        return tuple(out)

    def __eq__(self, other):
        return type(other) is type(self) and other._tape is self._tape and other._slot == self._slot

    def __hash__(self):
        return hash((id(self._tape), self._slot))

    def __repr__(self):
        return f"<{type(self).__name__} object at {id(self):#x}>"


class AccumulateGrad:
    __slots__ = ("variable",)

    def __init__(self, variable):
        self.variable = variable

    def name(self):
        return "torch::autograd::AccumulateGrad"

    next_functions = ()

    def __repr__(self):
        return f"<AccumulateGrad object at {id(self):#x}>"


# Rows whose trailing operands are tapegrad's int64 index maps, which torch's nodes do not list.
_USER_OPERANDS = {"adj_getitem": 1, "adj_scatter_flat": 1, "adj_setitem": 2}
_classes = {}


def _node_class(name):
    cls = _classes.get(name)
    if cls is None:
        cls = _classes[name] = type(name, (Node,), {"__slots__": ()})
    return cls


def node_for(tape, slot):
    from .. import ops
    shown = tape.shown.get(slot)
    if shown is not None:
        return _node_class(shown[0])(tape, slot)
    r = tape.row(tape.producer(slot))
    if r[0] == ops.FUNCTION.code:  # a custom Function: torch names it <class name>Backward
        from .function import backward_name
        return _node_class(backward_name(r))(tape, slot)
    return _node_class(ops.TABLE[r[0]].grad_fn)(tape, slot)


def _input_node(tape, s):
    if s < 0:
        return None
    flags = tape.slot_flags(s)
    if flags & LINK:
        older, os_ = tape.links[s]
        return node_for(older, os_)
    if flags & LEAF:
        if not flags & REQUIRES_GRAD:
            return None
        leaf = tape.leaves.get(s) if tape.leaves is not None else None
        return AccumulateGrad(leaf)
    from .. import ops
    r = tape.row(tape.producer(s))
    if r[0] == ops.EXPAND.code and r[6] == 1:
        return _input_node(tape, r[1])  # an implicit broadcast: torch records no node for it
    return node_for(tape, s)
