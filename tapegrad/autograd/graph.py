"""grad_fn objects, made on demand from a tape row (no Python object per op while recording).

A node is made the first time it is asked for and kept in its tape's ``nodes`` (held weakly:
a strong tape -> node -> tape link would be a cycle that reference counting never frees), so
that one entry has one node while anything holds it: the tensor it was read from (the tensor
keeps the node it handed out) or a node downstream (a node keeps its next_functions), as in
torch, where ``b.grad_fn.next_functions[0][0] is a.grad_fn``.

A composite (``tape.shown``) shows as torch's node or nodes: its spec names the node and its
inputs, each an input slot or a further node the composite's rows stand for (``_path`` is where
such a node sits in the spec).
"""
import weakref

from ..ops.attrs import Implicit, Operand
from ..tape import LEAF, LINK, REQUIRES_GRAD, stack_lines


class Node:
    """Base of the grad_fn classes; ``type(y.grad_fn).__name__`` is torch's name (MulBackward0...)."""
    __slots__ = ("_tape", "_slot", "_path", "_next", "_metadata", "__weakref__")

    def __init__(self, tape, slot, path=()):
        self._tape, self._slot, self._path = tape, slot, path
        self._next = self._metadata = None

    def name(self):
        n = type(self).__name__
        return f"torch::autograd::{n}" if n in ("CopySlices", "CopyBackwards") else n  # torch's C++ nodes keep their namespace

    @property
    def metadata(self):
        """A dict of the user's, kept with the node; in anomaly mode it starts with torch's
        ``traceback_``, the stack of the line that recorded the entry."""
        if self._metadata is None:
            self._metadata = {}
            trace = self._tape.traces.get(self._slot) if self._tape.traces is not None and not self._path else None
            if trace is not None:
                self._metadata["traceback_"] = stack_lines(trace[0])
        return self._metadata

    @property
    def next_functions(self):
        if self._next is None:
            self._next = self._edges()
        return self._next

    def _edges(self):
        from .. import ops
        tape = self._tape
        spec = tape.shown.get(self._slot)
        if spec is not None:
            for k in self._path:
                spec = spec[1][k]
            return tuple((_spec_node(tape, self._slot, self._path + (k,), inp), 0) for k, inp in enumerate(spec[1]))
        r = tape.row(tape.producer(self._slot))
        op = ops.TABLE[r[0]]
        out = [(_input_node(tape, r[1 + k]), 0) for k in range(op.inputs)]  # (not tapegrad's index maps)
        if any(isinstance(a, Operand) and a.listed for a in op.attrs):
            out.append((None, 0))  # torch lists the Python-scalar operand too
        return tuple(out)

    def __repr__(self):
        return f"<{type(self).__name__} object at {id(self):#x}>"


class AccumulateGrad:
    __slots__ = ("variable", "_metadata", "__weakref__")

    def __init__(self, variable):
        self.variable = variable
        self._metadata = None

    def name(self):
        return "torch::autograd::AccumulateGrad"

    @property
    def metadata(self):
        if self._metadata is None:
            self._metadata = {}
        return self._metadata
    next_functions = ()

    def __repr__(self):
        return f"<AccumulateGrad object at {id(self):#x}>"


_classes = {}


def _node_class(name):
    cls = _classes.get(name)
    if cls is None:
        cls = _classes[name] = type(name, (Node,), {"__slots__": ()})
    return cls


def _cached(tape, key, make, *args):
    """The node ``key`` of ``tape``: the one already handed out while something holds it, else a new one."""
    nodes = tape.nodes
    if nodes is None:
        nodes = tape.nodes = weakref.WeakValueDictionary()
    node = nodes.get(key)
    if node is None:
        node = nodes[key] = make(*args)
    return node


def node_for(tape, slot):
    """The grad_fn of the value in ``slot`` (a result of an entry of ``tape``)."""
    return _cached(tape, slot, _new_node, tape, slot)


def _new_node(tape, slot):
    from .. import ops
    shown = tape.shown.get(slot)
    if shown is not None:
        return _node_class(shown[0])(tape, slot)
    r = tape.row(tape.producer(slot))
    if r[0] == ops.FUNCTION.code:  # a custom Function: torch names it <class name>Backward
        from .function import backward_name
        return _node_class(backward_name(r))(tape, slot)
    return _node_class(ops.TABLE[r[0]].grad_fn)(tape, slot)


def _spec_node(tape, slot, path, spec):
    """An input of a composite's node: a slot (-1: none) or a node its rows stand for."""
    if isinstance(spec, int):
        return _input_node(tape, spec)
    return _cached(tape, (slot, path), lambda: _node_class(spec[0])(tape, slot, path))


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
        return _cached(tape, s, _accumulate_grad, tape, s)
    from .. import ops
    r = tape.row(tape.producer(s))
    if any(isinstance(a, Implicit) and r[a.column] for a in ops.TABLE[r[0]].attrs):
        return _input_node(tape, r[1])  # an implicit broadcast: torch records no node for it
    return node_for(tape, s)


def _accumulate_grad(tape, s):
    return AccumulateGrad(tape.leaves.get(s) if tape.leaves is not None else None)
