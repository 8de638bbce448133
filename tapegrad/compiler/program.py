"""Recording a program (the eager run of a compiled function) and replaying it.

Recording. The eager run records as always: ops on tensors that need grad append rows to the
thread's tape. While a program records, the recorders' untracked branch (results that need no
grad, and every op under no_grad) also hands each op to ``Recording.note``, and the tape rows
made since the last note are copied in first (``_sync``), so the program keeps the eager order
without any cost on the tracked path. Factories (zeros, randn...), comparisons, in-place writes
and values Python reads out of a tensor (item, bool...) are noted by small hooks beside them. A
custom autograd.Function's apply is one row (FUNC) that calls apply again at each replay: its
forward is Python, so it runs live (the values it reads need no guard), with a fresh ctx.

Every value of a program is accounted for: a row's output, a constant made from Python data
(which the guards on arguments and closure values pin), a random draw, an operand derived from
tensors' values (an index map, a mask, nll_loss's target positions: ops.results._derived; its row
recomputes it at each replay, and a different shape or an error is a failed guard), the .grad a
backward left (read live), or an external tensor: an argument, or a tensor read from the
function's closure, globals or module (read live at each replay, replacement guarded). A tensor
of any other origin (made by an op that does not record, a NumPy write, autograd.grad) makes the
program unreplayable: that signature then runs eagerly, and ``stats`` says why. Nothing is ever
replayed on a guess. Rows that index (select, slice, x[i]...) replay as copies: a program that
writes into a tensor and then reads a view of it made by indexing runs eagerly.

A training step. backward() inside the function is a row (BACKWARD) whose replay runs the engine
on the tape of the rows replayed since the previous one; an optimizer's step and zero_grad (and a
module's) are rows (CALL) that call the optimizer again on its live state: its step count and
learning rate are read at each call, never kept. The first backward, step or .grad read commits a
replay: guards must come before it (a guard after it makes the recording unreplayable), and
zero_grad and writes into external tensors before it are held back until then.

Replay. The rows run in order on fresh arrays: runs of rows with a jitted forward kernel (a
row's ``fwd``, where its ``fwd_exact`` holds) in one call of the generic interpreter each
(engine/cpu/forward_replay.py), the others in NumPy, as the eager front end computes them (the
row's ``replay``, or its ``forward``). Value guards compare the bytes Python read; writes into external
tensors are held back until every guard has passed, so a failing guard leaves nothing changed.
The rows that need grad are written to fresh tapes, so backward (and create_graph) runs on
replayed outputs as on eager ones."""
import threading
from itertools import chain
from operator import itemgetter
from math import prod
from sys import getrefcount

import numpy as np

from .. import ops, parallel
from ..operands import operand
from ..ops.attrs import Operand, Perm
from ..tape import LEAF, LINK, REQUIRES_GRAD, SLOT, Tape, _contiguous, _hot, _state
from ..tensor import DeviceArray, Tensor, leaf as _leaf

# row kinds
OP, PY, CONST, RAND, WRITE, GUARD = "op", "py", "const", "rand", "write", "guard"
# a training step's rows: loss.backward(), a Python call (an optimizer's step, zero_grad), a .grad read
BACKWARD, CALL, GRAD = "backward", "call", "grad"
FUNC = "function"  # a custom autograd.Function's apply, called again at each replay (its forward is Python)
DERIVED = 1  # a PY row's i0: it derives an operand from tensors' values (its shape, dtype and errors are guards)
# slot kinds
EXT, VALUE, CONSTANT = "ext", "value", "constant"  # a constant: an index map, kept by value



class Unreplayable(Exception):
    pass


class GuardFailed(Exception):
    pass


class Slot:
    __slots__ = ("kind", "shape", "dtype", "rg", "tensor", "arg", "value")

    def __init__(self, kind, shape, dtype, rg, tensor=None, arg=-1, value=None):
        self.kind, self.shape, self.dtype, self.rg = kind, shape, dtype, rg
        self.tensor, self.arg, self.value = tensor, arg, value


class Recording:
    """The program being recorded on this thread (``_hot.prog`` while ``fn`` runs)."""

    def __init__(self, args, sources, fullgraph):
        self.slots = []
        self.rows = []  # (kind, op or callable, a, b, c, out, i0, i1, f0)
        self.tmap = {}  # (id(tape), tape slot) -> program slot
        self.byid = {}  # id(tensor) -> program slot, for tensors that are on no tape
        self.keep = []  # the tensors of byid, alive while recording (ids are not reused)
        self.synced = {}  # id(tape) -> [tape, rows copied]; rows recorded before the call are not the program's
        cur = self.start_tape = _state.tape_ref()
        if cur is not None and not cur.closed:
            self.synced[id(cur)] = [cur, cur.n]
        self.args = {id(t): i for i, t in enumerate(args)}
        self.sources = sources  # id(tensor) -> tensor, for the tensors fn may read from outside
        self.links = {}  # (id(tape), slot) -> external tensor that stands there
        for t in list(args) + list(sources.values()):
            if t._tape is not None:
                self.links[(id(t._tape), t._slot)] = t
        self.ext = {}  # id(tensor) -> its external slot
        self.versions = {id(t): (t, t._version, t._grad) for t in list(args) + list(sources.values())}
        self.writes = {}  # id(external tensor) -> in-place writes recorded into it
        self.viewed = set()  # external slots that a view row reads (their storage is shared)
        self.fullgraph = fullgraph
        self.bad = None
        self.reads = 0
        self.derived = {}  # id(array) -> (array, fn, inputs): an operand that is fn of tensors' values (_derived)
        self.derived_slots = {}  # id(array) -> the slot its row computes
        self.written = {}  # id(tensor) -> (slot, its place on a tape) after an in-place write
        self.views = {}  # id(version counter) -> (counter, slots of views that a replay copies)
        self.stale = set()  # those slots after a write into their storage
        self.committed = False  # a backward, step or .grad read is recorded: no guard may follow
        self.backward_tapes = set()  # ids of the tapes a recorded backward closed
        self.call_bumps = {}  # id(tensor) -> version bumps that recorded calls made
        self.grads_set = set()  # ids of the tensors whose .grad a recorded backward or call set

    # -- failure -----------------------------------------------------------------------------
    def fail(self, why):
        if self.bad is None:
            self.bad = why

    # -- slots ---------------------------------------------------------------------------------
    def _new(self, kind, like, rg, **kw):
        if like.__class__ is DeviceArray:
            self.fail("it runs on GPU tensors: a compiled program replays on the CPU (on the GPU it runs eagerly, "
                      "and its backward on the CUDA engine)")
        self.slots.append(Slot(kind, like.shape, like.dtype, rg, **kw))
        return len(self.slots) - 1

    def _external(self, t):
        s = self.ext.get(id(t))
        if s is not None:
            return s
        i = self.args.get(id(t), -1)
        if i < 0 and id(t) not in self.sources:
            owner = next((o for o, _, _ in self.versions.values() if o._grad is t), None)
            if owner is not None:  # a .grad that a backward (recorded or before the call) made: read live
                s = self._new(VALUE, t._value, False)
                self.rows.append((GRAD, None, self._external(owner), -1, -1, s, 0, 0, 0.0))
                self.committed = True
                self._hold(t, s)
                return s
            self.fail("it reads a tensor made outside the recorded ops (neither an argument, nor read from the "
                      "function's closure, globals or module, nor made by an op that records)")
        s = self._new(EXT, t._value, t._rg, tensor=t, arg=i)
        self.ext[id(t)] = s
        self.byid[id(t)] = s
        return s

    def slot_of(self, t):
        """The program slot that holds tensor t's current value."""
        return self._fresh(self._slot_of(t))

    def _fresh(self, s):
        if s in self.stale:
            self.fail("it reads an indexed view of a tensor after an in-place write into that tensor "
                      "(a replay copies such views)")
        return s

    def _slot_of(self, t):
        w = self.written.get(id(t))
        if w is not None and w[1] == _place(t):
            return w[0]
        if t._tape is not None:
            s = self.tmap.get((id(t._tape), t._slot))
            if s is not None:
                return s
            self._sync()  # (rows since the last note; a tape begun in the call joins there)
            s = self.tmap.get((id(t._tape), t._slot))
            if s is not None:
                return s
        s = self.byid.get(id(t))
        if s is not None:
            return s
        return self._external(t)

    def _operand(self, v, op):
        if v is None:
            return -1
        if isinstance(v, Tensor):
            return self.slot_of(v)
        if v.__class__ is tuple:  # (array, the tensor it was made from): the tensor's value broadcast
            if id(v[0]) not in self.derived:
                self.derive(v[0], _broadcast(np.shape(v[0])), (v[1],))
            v = v[0]
        if id(v) in self.derived:
            return self._derived_slot(v)
        if not op.static_maps:  # (a mask, an index tensor: the program would bake its values in)
            self.fail(f"row {op.name!r} holds a constant made from a tensor's values")
        return self._new(CONSTANT, np.asarray(v), False, value=np.array(v))

    def derive(self, array, fn, inputs):
        self.derived[id(array)] = (array, fn, inputs)

    def _derived_slot(self, array):
        """The slot of a derived operand: a row that computes it again at each replay."""
        s = self.derived_slots.get(id(array))
        if s is not None:
            return s
        array, fn, inputs = self.derived[id(array)]
        ins = []
        for x in inputs:
            if isinstance(x, Tensor):
                ins.append(self.slot_of(x))
            elif id(x) in self.derived:
                ins.append(self._derived_slot(x))
            else:
                self.fail("it derives a constant from an array of unknown origin")
                return self._new(CONSTANT, np.asarray(x), False, value=np.array(x))
        s = self._new(VALUE, np.asarray(array), False)
        self._check()
        self.rows.append((PY, (fn, [None] * len(ins)), ins, -1, -1, s, DERIVED, 0, 0.0))
        self.derived_slots[id(array)] = s
        return s

    # -- the tape's rows -----------------------------------------------------------------------
    def _sync(self):
        """Copy the rows recorded on the thread's tapes since the last call."""
        cur = _state.tape_ref()
        if cur is not None and id(cur) not in self.synced and cur is not self.start_tape:  # (begun in the call)
            self.synced[id(cur)] = [cur, 0]
        for entry in list(self.synced.values()):
            tape, done = entry
            if tape.n > done:
                entry[1] = tape.n
                self._copy_rows(tape, done, tape.n)

    def _tape_slot(self, tape, s):
        key = (id(tape), s)
        p = self.tmap.get(key)
        if p is not None:
            return p
        flags = tape.slot_flags(s)
        if flags & LINK:
            older, os_ = tape.links[s]
            p = self.tmap.get((id(older), os_))
            if p is None:
                t = self.links.get((id(older), os_))
                if t is None:
                    self.fail("it reads a tensor recorded before the call that it cannot name")
                    p = self._new(CONSTANT, tape.values[s], False, value=tape.values[s])
                else:
                    p = self._external(t)
        elif flags & LEAF:
            t = tape.leaves.get(s)
            if t is not None:
                p = self.slot_of(t)
            else:  # an array constant (an index map)
                p = -2
        else:
            self.fail("it reads a value of a tape row it did not record")
            p = self._new(CONSTANT, tape.values[s], False, value=tape.values[s])
        if p != -2:
            self.tmap[key] = p
        return p

    def _copy_rows(self, tape, lo, hi):
        ints, floats = tape.row_table()
        R = ints[lo:hi].tolist()
        F = floats[lo:hi, 7].tolist()
        tid, tmap, stale, values = id(tape), self.tmap, self.stale, tape.values
        slots, rows, table = self.slots, self.rows, ops.TABLE
        for r, f0 in zip(R, F):
            op = table[r[0]]
            if op is ops.FUNCTION or r[4] < tape.ns and (tid, r[4]) in tmap:
                self.fail(f"row {op.name!r} (a custom autograd.Function or a multi-row op) does not replay")
            ins = [-1, -1, -1]
            for k in (0, 1, 2):
                s = r[k + 1]
                if s < 0:
                    continue
                p = tmap.get((tid, s))  # (_tape_slot's first step, inlined: nearly every operand)
                if p is None:
                    p = self._tape_slot(tape, s)
                    if p == -2:
                        p = self._operand(values[s], op)
                        tmap[(tid, s)] = p
                if p in stale:
                    self._fresh(p)
                ins[k] = p
            value = values[r[4]]
            if value.__class__ is DeviceArray:
                out = self._new(VALUE, value, True)  # (fails the recording)
            else:
                out = len(slots)
                slots.append(Slot(VALUE, value.shape, value.dtype, True))
            tmap[(tid, r[4])] = out
            if op.fwd == "fwd_view":
                self._row(OP, op, ins, out, r[5], r[6], f0)
            else:
                rows.append((OP, op, ins[0], ins[1], ins[2], out, r[5], r[6], f0))
            if op.kernel == "adj_getitem" and tape.vcs:
                self._viewing(tape.vcs.get(r[4]), out)

    def _viewing(self, vc, s):
        """Slot s holds a view that shares version counter vc with its base: a replay copies it."""
        if vc is not None:
            self.views.setdefault(id(vc), (vc, []))[1].append(s)

    def _row(self, kind, op, ins, out, i0=0, i1=0, f0=0.0):
        ins = list(ins) + [-1] * (3 - len(ins))
        if kind == OP and op.fwd == "fwd_view" and ins[0] >= 0 and self.slots[ins[0]].kind == EXT:
            self.viewed.add(ins[0])
        self.rows.append((kind, op, ins[0], ins[1], ins[2], out, i0, i1, f0))

    # -- hooks (tape.note_*) -------------------------------------------------------------------
    def note(self, code, x, y, t, i0, i1, f0, z=None):
        """An op whose result needs no grad (or any op under no_grad)."""
        self._sync()
        op = ops.TABLE[code]
        ins = [self._operand(v, op) for v in (x, y, z)]
        out = self._new(VALUE, t._value, False)
        self._hold(t, out)
        self._row(OP, op, ins, out, i0, i1, f0)
        if op.kernel == "adj_getitem":
            self._viewing(t._vc, out)

    def note_python(self, fn, operands, t):
        """A result that no row computes (a comparison): replayed by calling ``fn`` on the operands."""
        self._sync()
        ins = [self.slot_of(v) for v in operands if isinstance(v, Tensor)]
        consts = [None if isinstance(v, Tensor) else v for v in operands]
        out = self._new(VALUE, t._value, False)
        self._hold(t, out)
        self.rows.append((PY, (fn, consts), ins, -1, -1, out, 0, 0, 0.0))

    def note_created(self, t, draw):
        """A tensor made by a factory: a constant of Python data, or a random draw (``draw``)."""
        self._sync()
        if t._rg:
            self.fail("it makes a tensor that requires grad")
        out = self._new(VALUE, t._value, False, value=None if draw else t._value.copy())
        self._hold(t, out)
        self.rows.append((RAND if draw else CONST, draw, -1, -1, -1, out, 0, 0, 0.0))

    def note_write(self, x, result, target, through_view):
        """x has just taken ``result``'s values in place; ``target``: the slot that held x before
        (ops.inplace._inplace, setitem). ``through_view``: an untracked write into a view, whose
        base changes with no row."""
        self._sync()
        if through_view:
            self.fail("it writes in place into a view with no graph recording (the base's change has no row)")
        src = self.slot_of(result)
        self.rows.append((WRITE, None, target, src, -1, target, 0, 0, 0.0))
        if self.slots[target].kind == EXT:
            self.writes[id(x)] = self.writes.get(id(x), 0) + 1
        self.written[id(x)] = (src, _place(x))
        self.keep.append(x)
        views = self.views.get(id(x._vc)) if x._vc is not None else None
        if views is not None:  # views that share x's storage (copies at replay) no longer hold x's values
            self.stale.update(s for s in views[1] if s != src)

    def note_backward(self, run, tensors, grads, retain_graph, create_graph, inputs):
        """backward() inside the function: run it eagerly (``run``) and record a row whose replay
        runs the engine again on the replayed tape."""
        self._sync()
        if create_graph:
            self.fail("it calls backward(create_graph=True)")
        outs = [self.slot_of(t) for t in tensors]
        gs = [-1 if g is None else self.slot_of(g) if isinstance(g, Tensor) else -2 for g in grads or [None] * len(outs)]
        ins = None if inputs is None else [self.slot_of(t) for t in inputs]
        if -2 in gs or ins is not None and any(self.slots[s].kind != EXT for s in ins):
            self.fail("it calls backward() with gradients that are not tensors, or inputs that are not its arguments")
        result = self._effects(run)
        self.backward_tapes.update(id(t._tape) for t in tensors if t._tape is not None)
        self.rows.append((BACKWARD, (outs, gs, ins, bool(retain_graph)), -1, -1, -1, -1, 0, 0, 0.0))
        self.committed = True
        return result

    def note_call(self, fn, args, defer):
        """A Python step on tensors (an optimizer's step, zero_grad) inside the function: run it
        and record a row whose replays call it again, on the live tensors. ``defer``: it only
        resets grads (zero_grad), so a replay may hold it back until its guards have passed."""
        self._sync()
        changed = set()
        result = self._effects(fn, *args, changed=changed)
        self.rows.append((CALL, (fn, args, defer, changed), -1, -1, -1, -1, 0, 0, 0.0))
        self.committed |= not defer
        return result

    def _effects(self, fn, *args, changed=None):
        """fn(*args) with nothing noted; the in-place changes and .grad changes it makes to the
        function's tensors are the recorded row's (the ids of those it changed in place go to
        ``changed``)."""
        before = [(t, t._version, t._grad) for t, _, _ in self.versions.values()]
        prog, _hot.prog = _hot.prog, None
        try:
            return fn(*args)
        finally:
            _hot.prog = prog
            for t, version, grad in before:
                if t._version != version:
                    self.call_bumps[id(t)] = self.call_bumps.get(id(t), 0) + t._version - version
                    if changed is not None:
                        changed.add(id(t))
                if t._grad is not grad:
                    self.grads_set.add(id(t))

    def note_function(self, cls, args, kwargs):
        """A custom autograd.Function's apply: run it with nothing noted and record one row whose
        replay calls apply again on the replayed tensors, so its forward and its ctx are fresh
        and its backward is torch's. The rows it puts on the tape stand for it and are not copied."""
        self._sync()
        ins = [self.slot_of(a) for a in args if isinstance(a, Tensor)]
        prog, _hot.prog = _hot.prog, None
        try:
            result = cls.apply(*args, **kwargs)
        finally:
            _hot.prog = prog
        cur = _state.tape_ref()
        if cur is not None:  # (the tape the call recorded on: begun before it, or by it)
            entry = self.synced.setdefault(id(cur), [cur, 0])
            if (cur.row_table()[0][entry[1]:cur.n, 0] != ops.FUNCTION.code).any():
                self.fail("a custom autograd.Function's forward records ops that need grad")
            entry[1] = cur.n
        outs = result if isinstance(result, tuple) else (result,)
        if not all(isinstance(o, Tensor) for o in outs):
            self.fail("a custom autograd.Function returns a value that is not a tensor (a replay would return the "
                      "recorded one)")
            return result
        if any(o is a for o in outs for a in args):
            self.fail("a custom autograd.Function returns one of its inputs (mark_dirty, or an input as is)")
            return result
        self._check()  # (a replay whose forward returns other shapes fails there)
        slots = []
        for o in outs:
            s = self._new(VALUE, o._value, o._rg)
            if o._tape is not None:
                self.tmap[(id(o._tape), o._slot)] = s
                self.keep.append(o)
            else:
                self._hold(o, s)
            slots.append(s)
        template = [None if isinstance(a, Tensor) else a for a in args]
        self.rows.append((FUNC, (cls, template, kwargs, slots), ins, -1, -1, -1, 0, 0, 0.0))
        return result

    def note_read(self, t, value):
        """Python read t's values (item, bool, tolist...): the replay checks them."""
        if self.fullgraph:
            raise RuntimeError("torch._dynamo.exc.Unsupported: a compiled function with fullgraph=True reads a "
                               "tensor's value into Python (item(), bool(), tolist(), a comparison in `if`): "
                               "that is a graph break")
        self._sync()
        s = self.slot_of(t)
        v = t._value
        self._check()
        self.rows.append((GUARD, (v.dtype, v.shape, v.tobytes()), s, -1, -1, -1, 0, 0, 0.0))

    def _check(self):
        """A row that may fail a replay (a guard, a derived operand) is about to be added."""
        self.reads += 1
        if self.committed:
            self.fail("it reads a value into Python (or indexes by a tensor's values) after backward(), an "
                      "optimizer step or a .grad read, whose effects a failed guard could not undo")

    def _hold(self, t, s):
        self.byid[id(t)] = s
        self.keep.append(t)

    # -- the end -------------------------------------------------------------------------------
    def finish(self, outputs):
        """The program, or the reason it cannot replay."""
        self._sync()
        for tape, _ in self.synced.values():
            if tape.closed and id(tape) not in self.backward_tapes:
                self.fail("it runs a backward that it does not record (autograd.grad, a closure's backward)")
        for t, version, grad in self.versions.values():
            if t._version - version != self.writes.get(id(t), 0) + self.call_bumps.get(id(t), 0):
                self.fail("it changes a tensor in place in a way no op records (a NumPy write)")
            if t._grad is not grad and id(t) not in self.grads_set:
                self.fail("it sets a tensor's .grad other than by backward() or zero_grad()")
        for s in self.viewed:
            if id(self.slots[s].tensor) in self.writes:
                self.fail("it writes in place into an argument that it also views")
        outs = [self.slot_of(t) if isinstance(t, Tensor) else None for t in outputs]
        if self.bad is not None:
            return None
        return Program(self, outs)


def _place(t):
    return None if t._tape is None else (id(t._tape), t._slot)


def _broadcast(shape):
    return lambda c: np.ascontiguousarray(np.broadcast_to(c, shape))


def _replayable(rec):
    for op in {r[1] for r in rec.rows if r[0] == OP}:
        if python_forward(op) is None:
            return f"row {op.name!r} has no replay kernel yet"
    return None


def python_forward(op):
    """Row ``op``'s NumPy forward as ``f(ins, i0, i1, f0, shape, dtype)``, or None: its ``replay``,
    else its ``forward`` called as the eager front end calls it."""
    if op.replay is not None:
        return op.replay
    fwd = op.forward
    if fwd is None or op.arity > 2:
        return None
    if any(isinstance(a, Operand) and a.column == 7 for a in op.attrs):  # x (op) c, c kept in f0
        return lambda ins, i0, i1, f0, shape, dtype: fwd(ins[0], _scalar(f0, ins[0]))
    if op.arity == 1:
        return lambda ins, i0, i1, f0, shape, dtype: fwd(ins[0])
    return lambda ins, i0, i1, f0, shape, dtype: fwd(ins[0], ins[1])


def _scalar(c, like):
    """A row's f0 as the eager front end handed it to NumPy."""
    if like.dtype.kind == "f":
        return operand(c, like.dtype)
    return int(c) if c == int(c) else c


class _Segment:
    """The rows between two backward() or custom Function rows that need grad: rows (program row
    indices), index (row -> its place), the slots they use: ext_slots (external; ext: each one's
    argument index, or its captured tensor), linked (those that need grad and another tape holds)
    and internal (the others; take: them as a slice where consecutive; flags: theirs), R (their row
    table); layout: where the last replay's tape put them, with the rows and slots it wrote
    (Program._layout), which the next replay's tape copies when its slots land in the same places."""
    __slots__ = ("rows", "index", "ext_slots", "ext", "linked", "internal", "take", "flags", "R", "layout")


class Program:
    """A recorded program: slots, rows, and the plan that replays them."""

    def __init__(self, rec, outs):
        why = _replayable(rec)
        if why is not None:
            raise Unreplayable(why)
        self.slots = rec.slots
        self.rows = rec.rows
        self.outs = outs
        self.reads = rec.reads
        self.ext = [s for s, sl in enumerate(self.slots) if sl.kind == EXT]
        self._ext_src = [(s,) + self._source(s) for s in self.ext]
        # a module's parameters: their ids written at once (a few: one by one is cheaper)
        self._ext_at = np.array(self.ext, np.int64) if len(self.ext) > 4 else None
        self.constants = [s for s, sl in enumerate(self.slots) if sl.kind == CONSTANT]
        kinds = set(map(itemgetter(0), self.rows))
        self.has_rand = RAND in kinds
        self.refresh = self._refreshes() if CALL in kinds else {}
        self.R = _row_table(self.rows)  # (the engine's layout, for the jitted runs and the replayed tapes)
        self.RF = self.R.view(np.float64)
        # (what planning reads of every row and slot, as arrays)
        isop = np.fromiter((r[0] == OP for r in self.rows), bool, len(self.rows))
        rg = np.fromiter((sl.rg for sl in self.slots), bool, len(self.slots))
        self.plan = self._plan(isop)
        self._tape_plan(isop, rg)
        self._pool = threading.local()
        for sl in self.slots:  # a replay reads its call's own arguments: the recorded ones go free
            if sl.arg >= 0:
                sl.tensor = None

    # -- planning --------------------------------------------------------------------------------
    def _source(self, s):
        """(argument index, captured tensor) of external slot s: a replay reads tensors[index] when
        the index is not -1, else the tensor."""
        sl = self.slots[s]
        return sl.arg, sl.tensor if sl.arg < 0 else None

    def _refreshes(self):
        """CALL row -> the external slots whose values it changes in place and that a later row
        reads: a replay reads those again after the call (an optimizer step at the end of a
        training step, or a zero_grad, needs none)."""
        out = {}
        last = max((e for e, r in enumerate(self.rows) if r[0] not in (CALL, GRAD)), default=-1)
        for e, r in enumerate(self.rows):
            if r[0] == CALL and e < last:
                changed = r[1][3]
                out[e] = [s for s in self.ext if id(self.slots[s].tensor) in changed]
        return out

    def _jittable(self, r, kinds):
        """The dtype of the run row r may join, or None: its kernel gives the eager bits only for
        the operands its kind reads (forwards.py) and where the row's fwd_exact holds."""
        from ..engine.cpu.forwards import BINARY, ELEMENTWISE, FULL, MATMUL, TRANSPOSE
        kind, op, a, b, c, out, i0, i1, f0 = r
        k = kinds[op.code] if kind == OP else 0
        if not k:
            return None
        sl = self.slots
        dt = sl[out].dtype
        if dt.kind != "f" or dt.itemsize not in (4, 8):
            return None
        for s in (a, b, c):
            if s >= 0 and sl[s].dtype != dt:
                return None
        n = prod(sl[out].shape)
        if op.fwd_f0 is not None and not op.fwd_f0(f0):
            return None
        if op.fwd_exact is not None:
            key = (op.code, dt, n)
            exact = self._exact.get(key)
            if exact is None:
                exact = self._exact[key] = op.fwd_exact(dt, n)
            if not exact:
                return None
        if k == BINARY:
            na, nb = prod(sl[a].shape), prod(sl[b].shape)
            if not (na == n and nb in (n, 1) or nb == n and na == 1 or
                    na == n and _trailing(sl[b].shape, sl[out].shape) or
                    nb == n and _trailing(sl[a].shape, sl[out].shape)):
                return None
        elif k == FULL and (n != 1 or prod(sl[a].shape) == 0):  # (an empty mean is NumPy's nan)
            return None
        elif k == ELEMENTWISE and prod(sl[a].shape) != n:
            return None
        elif k == TRANSPOSE and out not in self.transposes:  # (a matrix's transpose only)
            return None
        elif k == MATMUL and (not (len(sl[a].shape) == len(sl[b].shape) == 2 and min(*sl[a].shape, sl[b].shape[1]) > 1)
                              or self.transposes.get(a, a) == self.transposes.get(b, b)):
            return None  # (x @ x.t(): NumPy's syrk, replayed on the views as eager ran it)
        return dt

    def _row_kinds(self, kinds, isop):
        """Each row's forward kind (forwards.py), 0 for rows that are no op (isop: which are)."""
        return np.where(isop, kinds[self.R[:, 0]], 0)

    def _run_dtypes(self, kinds, kind, size):
        """Each row's _jittable (``kind``: each row's forward kind, 0 for rows that are no op; size:
        each slot's): the common rows (same-size or scalar operands) decided over the row table at
        once, the others one by one."""
        from ..engine.cpu.forwards import BINARY, ELEMENTWISE, FULL
        rows, slots, R = self.rows, self.slots, self.R
        dcode = np.fromiter((_RUN_DTYPES.get(sl.dtype, -1) for sl in slots), np.int64, len(slots))
        code, a, b, c, out = R[:, 0], R[:, 1], R[:, 2], R[:, 3], R[:, 4]
        d, n, na, nb = dcode[out], size[out], size[a], size[b]  # (slot -1 reads the last: masked below)
        fast = (d >= 0) & ~_declares("fwd_f0")[code]  # (rows exact for some scalars only: one by one)
        for x in (a, b, c):
            fast &= (x < 0) | (dcode[x] == d)
        fast &= ((kind == ELEMENTWISE) & (a >= 0) & (na == n) |
                 (kind == BINARY) & (a >= 0) & (b >= 0) & ((na == n) & ((nb == n) | (nb == 1)) | (nb == n) & (na == 1)) |
                 (kind == FULL) & (a >= 0) & (n == 1) & (na != 0))
        named = list(_RUN_DTYPES)
        at = np.flatnonzero(fast & _declares("fwd_exact")[code])  # fwd_exact asked once per (code, dtype, size)
        if at.size:
            keys, which = np.unique((code[at] * 2 + d[at]) << 40 | n[at], return_inverse=True)
            exact = np.array([ops.TABLE[k >> 41].fwd_exact(named[k >> 40 & 1], k & (1 << 40) - 1)
                              for k in keys.tolist()], bool)
            fast[at] = exact[which.ravel()]
        out_dts = []
        for e, (f, k, dc) in enumerate(zip(fast.tolist(), kind.tolist(), d.tolist())):
            out_dts.append(named[dc] if f else self._jittable(rows[e], kinds) if k else None)
        return out_dts

    def _plan(self, isop):
        """Steps: ("jit", lo, hi, witness, owned, views, owned's slots (a slice where consecutive, else a
        list) and as an array, chunks) for a run of jittable rows (owned: each output that has its
        own array, by slot, shape, dtype; views: each output that views its input, by slot, shape,
        its input's slot; chunks: None, or how a large elementwise run splits, _chunking), ("row", e)
        for one row."""
        from ..engine.cpu._forward import FWD_KIND
        from ..engine.cpu.forwards import MATMUL, TRANSPOSE, VIEW
        rows = self.rows
        kind = self._row_kinds(FWD_KIND, isop)
        kind_of = kind.tolist()
        # a matrix's transpose -> the matrix: a product in NumPy reads the view, as eager's did
        self.transposes = {r[5]: r[2] for r, k in zip(rows, kind_of) if k == TRANSPOSE and
                           len(self.slots[r[2]].shape) == 2 and Perm.decode(r[6], 2) == (1, 0)}
        self.reads_views = {e for e, (r, k) in enumerate(zip(rows, kind_of)) if k == MATMUL and
                            (r[2] in self.transposes or r[3] in self.transposes)}
        self._exact = {}  # (code, dtype, size) -> the row's fwd_exact there
        size = np.fromiter((prod(sl.shape) for sl in self.slots), np.int64, len(self.slots))
        dts = self._run_dtypes(FWD_KIND, kind, size)
        del self._exact
        chunked = self._chunked_rows(kind, size)
        plan = []
        e = 0
        n = len(self.rows)
        while e < n:
            dt = dts[e]
            if dt is None:
                plan.append(("row", e))
                e += 1
                continue
            lo = e
            big = chunked[e]  # a run is chunked all through or not at all
            while e < n:
                d = dts[e]
                if d is None or d != dt or chunked[e] != big:  # (not d == dt: NumPy reads None as float64)
                    break
                e += 1
            owned, views = [], []
            for r, k in zip(rows[lo:e], kind_of[lo:e]):  # each output's array, made before the run (a view: of its input)
                sl = self.slots[r[5]]
                if k == VIEW:
                    views.append((r[5], sl.shape, r[2]))
                else:
                    owned.append((r[5], sl.shape, sl.dtype))
            outs = [a[0] for a in owned]
            plan.append(("jit", lo, e, np.empty(0, dt), owned, views, _slice_or_list(outs), np.array(outs, np.int64),
                         self._chunking(lo, e, big, size, dt) if big else None))
        return plan

    def _chunked_rows(self, kind, size):
        """Each row's size where a replay may split it into chunks over threads (an elementwise row
        over parallel.MIN_ELEMENTS or more elements whose operands all have that size, or one element), else 0."""
        from ..engine.cpu.forwards import BINARY, ELEMENTWISE, VIEW, WHOLE
        R = self.R
        a, b, c, out = R[:, 1], R[:, 2], R[:, 3], R[:, 4]
        n = size[out]
        ok = (n >= parallel.MIN_ELEMENTS) & np.isin(kind, (ELEMENTWISE, BINARY, VIEW))
        for x in (a, b, c):
            nx = size[x]
            ok &= (x < 0) | (nx == n) | (kind == BINARY) & (nx == 1)
        whole = np.array([r[0] == OP and r[1].fwd in WHOLE for r in self.rows], bool) if ok.any() else ok
        return np.where(ok & ~whole, n, 0).tolist()

    def _chunking(self, lo, hi, n, size, dt):
        """(n, chunk length, the run's slots of n elements as a list and an array): what a replay
        slices into chunks (the others, one element, every chunk reads whole)."""
        used = np.unique(self.R[lo:hi, 1:5])
        big = used[(used >= 0) & (size[np.maximum(used, 0)] == n)]
        length = max(1, min(n, CHUNK_BYTES // (np.dtype(dt).itemsize * len(big))))
        return n, int(length), big.tolist(), big

    def _tape_plan(self, isop, rg):
        """Which rows and slots a replay writes to its tapes (those that need grad): one tape per
        segment of rows that a backward() row ends (the eager backward closes its tape; later ops
        record on another), the last one ending with the program."""
        rows, slots = self.rows, self.slots
        cuts = [e for e, r in enumerate(rows) if r[0] in (BACKWARD, FUNC)] if not isop.all() else []
        taped = np.flatnonzero(isop & rg[self.R[:, 4]])  # the rows that need grad
        self.seg_of = np.full(len(slots), -1, np.int64)  # slot -> the segment whose tape holds it (-1: none)
        self.segments = []
        for lo, hi in zip([0] + [c + 1 for c in cuts], cuts + [len(rows)]):
            seg_rows = taped[np.searchsorted(taped, lo):np.searchsorted(taped, hi)]
            self.segments.append(self._segment(seg_rows, len(self.segments), rg))
        # a custom Function's call also ends a segment: its apply records on the thread's tape, which
        # links to the tape before it; a backward() ends an epoch, whose values it frees
        epoch = 0
        born = np.full(len(slots), -1, np.int64)  # slot that needs grad -> the epoch that makes it (-1: none)
        for k, seg in enumerate(self.segments):
            R = seg.R
            born[R[:, 4]] = epoch
            ins = R[:, 1:4][R[:, 1:4] >= 0]
            end = rows[cuts[k]] if k < len(cuts) else None
            if end is not None and end[0] == FUNC:
                ins = np.concatenate([ins, np.array([s for s in end[2] if s >= 0], np.int64)])
            if ((born[ins] >= 0) & (born[ins] != epoch)).any():
                raise Unreplayable("it records ops that need grad on values from before its backward()")
            if end is None:
                continue
            if end[0] == FUNC:
                born[[s for s in end[1][3] if slots[s].rg]] = epoch
            else:
                if any(slots[s].kind != EXT and born[s] != epoch for s in end[1][0]):
                    raise Unreplayable("it calls backward() on a value from before an earlier backward()")
                epoch += 1

    def _segment(self, seg_rows, k, rg):
        seg = _Segment()
        seg.layout = None
        seg.rows = seg_rows.tolist()
        seg.index = dict(zip(seg.rows, range(len(seg.rows))))
        seg.R = self.R[seg_rows]
        self.seg_of[seg.R[:, 4]] = k
        used = np.unique(seg.R[:, 1:5])
        used = used[used >= 0]
        slots = self.slots
        isext = np.fromiter((slots[s].kind == EXT for s in used.tolist()), bool, used.size)
        ext = used[isext].tolist()
        seg.ext_slots = np.array(ext, np.int64)
        seg.ext = [self._source(s) for s in ext]
        # slots that need grad and come from another tape (an earlier segment's, a Function's) link there
        others = used[~isext]
        link = rg[others] & (self.seg_of[others] != k)
        seg.linked = others[link].tolist()
        seg.internal = others[~link].tolist()
        seg.take = _slice_or_list(seg.internal)
        seg.flags = np.where(rg[seg.internal], REQUIRES_GRAD, LEAF).astype(np.int64)
        return seg

    # -- replay ----------------------------------------------------------------------------------
    def replay(self, tensors):
        """Run the program on the tensor arguments ``tensors``; returns the output values (Tensors
        and Python constants in the order of ``outs``)."""
        vals = [None] * len(self.slots)
        O = np.zeros(len(self.slots), np.int64)
        slots = self.slots
        if self._ext_at is None:
            for s, a, t in self._ext_src:
                v = vals[s] = _contiguous((tensors[a] if a >= 0 else t)._value)
                O[s] = id(v)
        else:
            ext = [_contiguous((tensors[a] if a >= 0 else t)._value) for _, a, t in self._ext_src]
            for s, v in zip(self.ext, ext):
                vals[s] = v
            O[self._ext_at] = np.fromiter(map(id, ext), np.int64, len(ext))
        for s in self.constants:
            vals[s] = slots[s].value
            O[s] = id(slots[s].value)
        state = None
        if self.has_rand and self.reads:
            from ..creation import _rng
            state = _rng[0].bit_generator.state
        deferred = []  # writes into external tensors and zero_grad calls, held back until every guard has passed
        committed = False  # a backward, step or .grad read ran: no guard follows (Recording._check)
        f0s = {}
        tapes, made = {}, {}
        pool = self._pool.__dict__  # this thread's output arrays of the last replay, reused once nothing holds them
        rows = self.rows

        def flush():
            for a, b in deferred:
                if a is None:
                    e = b
                    rows[e][1][0](*rows[e][1][1])
                    if e in self.refresh:
                        self._refresh(self.refresh[e], tensors, vals, O)
                else:
                    t = slots[a].tensor if slots[a].arg < 0 else tensors[slots[a].arg]
                    np.copyto(t._value, vals[b])
                    t._bump_version()
            deferred.clear()

        try:
            for step in self.plan:
                if step[0] == "jit":
                    _, lo, hi, w, owned, views, outs, at, chunks = step
                    if owned:
                        kept = pool.get(lo)
                        if kept is None or _held(kept):
                            kept = pool[lo] = _take_back(kept, owned)
                        arrays, ids = kept
                        if outs.__class__ is slice:
                            vals[outs] = arrays
                        else:
                            for s, v in zip(outs, arrays):
                                vals[s] = v
                        O[at] = ids
                    for out, shape, src in views:
                        v = vals[out] = vals[src].reshape(shape)
                        O[out] = id(v)
                    status = _jit_run(self, O, lo, hi, w) if chunks is None else _chunked_run(self, O, vals, lo, hi, w, chunks)
                    if status != -1:
                        raise RuntimeError(f"compiled replay: row {rows[status][1].name} has no jitted kernel")
                    continue
                e = step[1]
                kind, op, a, b, c, out, i0, i1, f0 = rows[e]
                if kind == OP:
                    ins = [vals[s] if s >= 0 else None for s in (a, b, c)]
                    if e in self.reads_views:
                        ins = [vals[self.transposes[s]].T if s in self.transposes else v for s, v in zip((a, b, c), ins)]
                    f = _PY_CACHE.get(op.code)
                    if f is None:
                        f = _PY_CACHE[op.code] = python_forward(op)
                    v = f(ins, i0, i1, f0, slots[out].shape, slots[out].dtype)
                    if v.__class__ is tuple:  # (value, the row's f0 at this replay)
                        v, f0s[e] = v
                    v = np.asarray(v)
                    v = v if v.flags.c_contiguous else np.ascontiguousarray(v)
                elif kind == GUARD:
                    dtype, shape, data = op
                    v = vals[a]
                    if v.dtype != dtype or v.shape != shape or v.tobytes() != data:
                        raise GuardFailed
                    continue
                elif kind == WRITE:
                    if slots[a].kind == EXT:
                        deferred.append((a, b))
                        if committed:
                            flush()
                    else:
                        np.copyto(vals[a], vals[b])
                    continue
                elif kind == CONST:
                    v = slots[out].value.copy()
                elif kind == RAND:
                    v = op()
                elif kind == PY:
                    fn, consts = op
                    it = iter(vals[s] for s in a)
                    if i0 == DERIVED:  # an index map or mask the eager op would make otherwise: eager then
                        try:
                            v = np.asarray(fn(*[next(it) for _ in consts]))
                        except Exception:
                            raise GuardFailed from None
                        if v.shape != slots[out].shape or v.dtype != slots[out].dtype:
                            raise GuardFailed
                    else:
                        v = np.asarray(fn(*[next(it) if k is None else k for k in consts]))
                elif kind == CALL:
                    defer = op[2]
                    deferred.append((None, e))
                    if committed or not defer:
                        flush()
                        committed = True
                    continue
                elif kind == FUNC:
                    self._function(op, a, tensors, vals, O, f0s, tapes, made)
                    continue
                elif kind == BACKWARD:
                    flush()
                    committed = True
                    self._backward(e, tensors, vals, f0s, tapes, made)
                    continue
                else:  # GRAD: the .grad a backward left, read live
                    flush()
                    committed = True
                    sl = slots[a]
                    g = (tensors[sl.arg] if sl.arg >= 0 else sl.tensor)._grad
                    if g is None:
                        raise RuntimeError("compiled replay: a tensor whose .grad the recording read has none")
                    v = _contiguous(g._value)
                vals[out] = v
                O[out] = id(v)
        except GuardFailed:
            if state is not None:
                _rng[0].bit_generator.state = state  # a failed replay draws nothing
            raise
        flush()
        return [None if s is None else self._tensor(s, tensors, vals, f0s, tapes, made) for s in self.outs]

    def _refresh(self, slots, tensors, vals, O):
        """After a call changed external tensors in place: the values of their ``slots`` again (a
        copy was taken where one is not C-ordered)."""
        for s in slots:
            sl = self.slots[s]
            v = _contiguous((tensors[sl.arg] if sl.arg >= 0 else sl.tensor)._value)
            vals[s] = v
            O[s] = id(v)

    def _backward(self, e, tensors, vals, f0s, tapes, made):
        """A backward() row: the engine on this segment's replayed tape, as eager ran it."""
        from ..autograd.api import backward
        outs, gs, ins, retain = self.rows[e][1]
        ys = [self._tensor(s, tensors, vals, f0s, tapes, made) for s in outs]
        grads = None if all(g < 0 for g in gs) else [None if g < 0 else self._tensor(g, tensors, vals, f0s, tapes, made)
                                                   for g in gs]
        inputs = None if ins is None else [self._tensor(s, tensors, vals, f0s, tapes, made) for s in ins]
        backward(ys, grads, retain_graph=retain, inputs=inputs)

    def _function(self, row, ins, tensors, vals, O, f0s, tapes, made):
        """A custom Function's row: its apply on this replay's tensors; outputs of other shapes,
        dtypes or requires_grad than the recording's fail the replay (nothing was committed)."""
        cls, template, kwargs, outs = row
        it = iter(ins)
        args = [self._tensor(next(it), tensors, vals, f0s, tapes, made) if k is None else k for k in template]
        result = cls.apply(*args, **kwargs)
        results = result if isinstance(result, tuple) else (result,)
        if len(results) != len(outs):
            raise GuardFailed
        for s, t in zip(outs, results):
            sl = self.slots[s]
            v = t._value if isinstance(t, Tensor) else None
            if v is None or v.shape != sl.shape or v.dtype != sl.dtype or t._rg != sl.rg:
                raise GuardFailed
            v = _contiguous(v)
            vals[s] = v
            O[s] = id(v)
            made[s] = t

    def _tensor(self, s, tensors, vals, f0s, tapes, made):
        """Slot s as a Tensor: an argument or captured tensor, a result on its segment's replayed
        tape, or a leaf; one Tensor per slot in a replay."""
        t = made.get(s)
        if t is None:
            sl = self.slots[s]
            if sl.kind == EXT:
                t = tensors[sl.arg] if sl.arg >= 0 else sl.tensor
            elif sl.rg:
                k = int(self.seg_of[s])
                if k not in tapes:
                    tapes[k] = self._tape(tensors, vals, f0s, self.segments[k], tapes, made)
                tape, tslot = tapes[k]
                t = ops._result(vals[s], tape, int(tslot[s]), None)
            else:
                t = _leaf(vals[s])
            made[s] = t
        return t

    def _tape(self, tensors, vals, f0s, seg, tapes, made):
        """A fresh tape holding segment seg's rows that need grad, on this replay's values (and
        f0s: the rows whose f0 this replay computed)."""
        k = len(seg.internal)
        ts = [tensors[a] if a >= 0 else t for a, t in seg.ext]
        tape = Tape(len(ts) + len(seg.linked) + k)
        if all(t._tape is None for t in ts):  # (leaves, as parameters are: one registration for all)
            lo = tape.add_leaves(ts)
            ext_at = tuple(range(lo, lo + len(ts)))
        else:
            ext_at = tuple(tape.slot_of(t) for t in ts)
        linked_at = tuple(tape.slot_of(self._tensor(s, tensors, vals, f0s, tapes, made)) for s in seg.linked)
        lo = tape.ns
        where = (lo, ext_at, linked_at)
        layout = seg.layout
        if layout is None or layout[0] != where:  # (a replay's tape is laid out as the last one was)
            layout = seg.layout = (where, *self._layout(seg, where))
        _, remap, rows, slots = layout
        tape.slots[lo * SLOT.size:(lo + k) * SLOT.size] = slots
        take = seg.take
        if take.__class__ is slice:
            tape.values.extend(vals[take])
        elif k:
            got = itemgetter(*take)(vals)
            tape.values.extend(got if k > 1 else (got,))
        tape.ns = lo + k
        tape.rows[:len(rows)] = rows
        if f0s:
            R = np.frombuffer(tape.rows, np.int64, len(seg.rows) * 8).reshape(-1, 8)
            for e, f0 in f0s.items():
                i = seg.index.get(e)
                if i is not None:
                    R[i:i + 1, 7:8].view(np.float64)[0, 0] = f0
            del R  # (a view into the bytearray would block its resizing)
        tape.n = len(seg.rows)
        return tape, remap

    def _layout(self, seg, where):
        """Segment seg's slot map (program slot -> tape slot), its rows and its internal slots'
        records as a tape holds them, for a tape whose slots from ``lo`` on are the segment's own
        and whose external and linked slots landed at ``ext_at`` and ``linked_at``."""
        lo, ext_at, linked_at = where
        k = len(seg.internal)
        remap = np.full(len(self.slots) + 1, -1, np.int64)  # (index -1 maps to -1)
        remap[seg.ext_slots] = ext_at
        remap[seg.linked] = linked_at
        remap[seg.internal] = np.arange(lo, lo + k)
        R = seg.R.copy()
        R[:, 1:5] = remap[seg.R[:, 1:5]]
        S = np.zeros((k, 4), np.int64)  # flags, version 0, dtype code -1 (the engine reads it from the value)
        S[:, 1] = seg.flags
        S[:, 3] = -1
        return remap, R.tobytes(), S.tobytes()

    # -- introspection -------------------------------------------------------------------------
    def listing(self):
        """One line per slot and row, as the tape dump lists a tape."""
        lines = []
        for s, sl in enumerate(self.slots):
            if sl.kind == EXT:
                what = f"argument {sl.arg}" if sl.arg >= 0 else "captured tensor (read live)"
                lines.append(f"%{s} = {what}  {list(sl.shape)} {sl.dtype}{'  requires_grad' if sl.rg else ''}")
            elif sl.kind == CONSTANT:
                lines.append(f"%{s} = constant  {list(sl.shape)} {sl.dtype}")
        for e, (kind, op, a, b, c, out, i0, i1, f0) in enumerate(self.rows):
            args = ", ".join(f"%{s}" for s in (a if kind in (PY, FUNC) else (a, b, c)) if s >= 0)
            if kind == OP:
                how = "jitted" if any(st[0] == "jit" and st[1] <= e < st[2] for st in self.plan) else "numpy"
                attrs = f" i0={i0} i1={i1} f0={f0!r}" if (i0 or i1 or f0) else ""
                sl = self.slots[out]
                lines.append(f"%{out} = {op.name}({args}){attrs}  {list(sl.shape)} {sl.dtype}"
                             f"{'  requires_grad' if sl.rg else ''}  [{how}]")
            elif kind == GUARD:
                dtype, shape, data = op
                value = np.frombuffer(data, dtype).reshape(shape)
                lines.append(f"guard %{a} == {value.tolist()!r}")
            elif kind == WRITE:
                lines.append(f"%{a} <- %{b}  (in place)")
            elif kind == PY:
                name = "derived" if i0 == DERIVED else getattr(op[0], "__name__", op[0])
                lines.append(f"%{out} = {name}({args})  [numpy]")
            elif kind == BACKWARD:
                outs, gs, ins, retain = op
                lines.append(f"backward({', '.join(f'%{s}' for s in outs)})" + (" retain_graph" if retain else ""))
            elif kind == CALL:
                lines.append(f"call {getattr(op[0], '__qualname__', op[0])}{op[1]!r}  [python]")
            elif kind == FUNC:
                cls, template, kwargs, outs = op
                it = iter(a)
                shown = ", ".join([f"%{next(it)}" if k is None else repr(k) for k in template] +
                                  [f"{k}={v!r}" for k, v in kwargs.items()])
                lines.append(f"{', '.join(f'%{s}' for s in outs)} = {cls.__name__}.apply({shown})  [python]")
            elif kind == GRAD:
                lines.append(f"%{out} = %{a}.grad  (read live)")
            else:
                lines.append(f"%{out} = {kind}  {list(self.slots[out].shape)} {self.slots[out].dtype}")
        lines.append("return " + ", ".join("-" if s is None else f"%{s}" for s in self.outs))
        return lines


_PY_CACHE = {}
_RUN_DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}  # the dtypes a jitted run takes, by code
_DECLARES = {}


def _declares(attr):
    """op code -> whether the row declares ``attr``: fwd_exact (its kernel is exact only somewhere)
    or fwd_f0 (only for some of its scalars)."""
    has = _DECLARES.get(attr)
    if has is None:
        has = _DECLARES[attr] = np.array([getattr(op, attr) is not None for op in ops.TABLE], bool)
    return has


def _slice_or_list(slots):
    """Slots as a slice where they are consecutive and ascending (one C-level copy in a replay), else
    as they are."""
    if slots and slots == list(range(slots[0], slots[0] + len(slots))):
        return slice(slots[0], slots[-1] + 1)
    return slots


def _trailing(small, big):
    small = tuple(small)
    while small and small[0] == 1:
        small = small[1:]
    return len(small) <= len(big) and tuple(big[len(big) - len(small):]) == small


def _row_table(rows):
    """The engine's row table (a tape's layout: code, a, b, c, out, i0, i1, f0's bits) of program
    rows; rows that are no op stay zero."""
    R = np.zeros((len(rows), 8), np.int64)
    ops_ = [(e, r) for e, r in enumerate(rows) if r[0] == OP]
    if ops_:
        at = np.fromiter((e for e, _ in ops_), np.int64, len(ops_))
        R[at, :7] = np.fromiter(chain.from_iterable((r[1].code, r[2], r[3], r[4], r[5], r[6], r[7]) for _, r in ops_),
                                np.int64, 7 * len(ops_)).reshape(-1, 7)
        R[at, 7] = np.fromiter((r[8] for _, r in ops_), np.float64, len(ops_)).view(np.int64)
    return R


def _held(kept):
    """Whether something besides the pool holds one of the arrays (with their ids) that a run of
    the last replay wrote: a result, a view, a tape whose backward is still to come."""
    arrays, ids = kept
    if len(ids) > 16:  # (a jitted pass over the addresses: 1 ns an array instead of 12)
        most, readable = _jit()[3:]
        if readable:
            return most(ids) > 1
    return max(map(getrefcount, arrays)) > 2  # (the pool's list and the call's argument)


def _take_back(kept, owned):
    """(arrays, their ids) for a jitted run's outputs: the last replay's where nothing else holds
    one (a result, a view, a tape of a backward still to come), fresh ones for the others."""
    arrays = kept[0] if kept is not None else [None] * len(owned)
    for i, (_, shape, dtype) in enumerate(owned):
        v = arrays[i]
        if v is None or getrefcount(v) > 3:  # (the list, v, the call): held elsewhere too
            arrays[i] = np.empty(shape, dtype)
    return arrays, np.fromiter(map(id, arrays), np.int64, len(arrays))


_JIT = []
CHUNK_BYTES = 1 << 19  # a chunk's slices of all the run's arrays together: half the L2 cache


def _chunked_run(prog, O, vals, lo, hi, w, chunks):
    """A run of elementwise rows, chunk by chunk (every row on one chunk, while its arrays sit in
    cache), the chunks spread over threads: each chunk's row table reads views of its elements."""
    n, length, big, at = chunks
    flat = [vals[s].reshape(-1) for s in big]
    tables, held = [], []
    for c0 in range(0, n, length):
        part = [v[c0:c0 + length] for v in flat]
        Oc = O.copy()
        Oc[at] = np.fromiter(map(id, part), np.int64, len(part))
        tables.append(Oc)
        held.append(part)
    status = parallel.run_each(lambda Oc: _jit_run(prog, Oc, lo, hi, w), tables)
    return next((s for s in status if s != -1), -1)


def _jit():
    """(the forward interpreter, its kernel table, the array header offset, most_references,
    refcount_readable()), loaded on first use."""
    if not _JIT:
        from ..engine.cpu._forward import FWD_KERNEL
        from ..engine.cpu.forward_replay import run
        from ..engine.cpu_replay import array_header
        from ..jit.ffi import most_references, refcount_readable
        _JIT[:] = [(run, FWD_KERNEL, array_header(), most_references, refcount_readable())]  # (one assignment: threads may race here)
    return _JIT[0]


def _jit_run(prog, O, lo, hi, w):
    run, fk, hoff = _jit()[:3]
    return run(prog.R, prog.RF, fk, O, lo, hi, hoff, w)
