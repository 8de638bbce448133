"""Recording a program (the eager run of a compiled function) and replaying it.

Recording. The eager run records as always: ops on tensors that need grad append rows to the
thread's tape. While a program records, the recorders' untracked branch (results that need no
grad, and every op under no_grad) also hands each op to ``Recording.note``, and the tape rows
made since the last note are copied in first (``_sync``), so the program keeps the eager order
without any cost on the tracked path. Factories (zeros, randn...), comparisons, in-place writes
and values Python reads out of a tensor (item, bool...) are noted by small hooks beside them.

Every value of a program is accounted for: a row's output, a constant made from Python data
(which the guards on arguments and closure values pin), a random draw, or an external tensor:
an argument, or a tensor read from the function's closure, globals or module (read live at each
replay, replacement guarded). A tensor of any other origin (made by an op that does not record,
an optimizer's NumPy update, a backward inside the function) makes the program unreplayable:
that signature then runs eagerly, and ``stats`` says why. Nothing is ever replayed on a guess.

Replay. The rows run in order on fresh arrays: runs of rows with a jitted forward kernel (a
row's ``fwd``, where its ``fwd_exact`` holds) in one call of the generic interpreter each
(engine/cpu/forward_replay.py), the others in NumPy, as the eager front end computes them (the
row's ``replay``, or its ``forward``). Value guards compare the bytes Python read; writes into external
tensors are held back until every guard has passed, so a failing guard leaves nothing changed.
Then the rows that need grad are written to a fresh tape, so backward (and create_graph) runs
on replayed outputs as on eager ones."""
import numpy as np

from .. import ops
from ..operands import operand
from ..ops.attrs import Operand
from ..tape import LEAF, LINK, REQUIRES_GRAD, Tape, _contiguous, _state
from ..tensor import Tensor, leaf as _leaf

# row kinds
OP, PY, CONST, RAND, WRITE, GUARD = "op", "py", "const", "rand", "write", "guard"
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

    # -- failure -----------------------------------------------------------------------------
    def fail(self, why):
        if self.bad is None:
            self.bad = why

    # -- slots ---------------------------------------------------------------------------------
    def _new(self, kind, like, rg, **kw):
        self.slots.append(Slot(kind, like.shape, like.dtype, rg, **kw))
        return len(self.slots) - 1

    def _external(self, t):
        s = self.ext.get(id(t))
        if s is not None:
            return s
        i = self.args.get(id(t), -1)
        if i < 0 and id(t) not in self.sources:
            self.fail("it reads a tensor made outside the recorded ops (neither an argument, nor read from the "
                      "function's closure, globals or module, nor made by an op that records)")
        s = self._new(EXT, t._value, t._rg, tensor=t, arg=i)
        self.ext[id(t)] = s
        self.byid[id(t)] = s
        return s

    def slot_of(self, t):
        """The program slot that holds tensor t's current value."""
        if t._tape is not None:
            s = self.tmap.get((id(t._tape), t._slot))
            if s is not None:
                return s
            if id(t._tape) in self.synced:
                self._sync()
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
        if v.__class__ is Tensor:
            return self.slot_of(v)
        if v.__class__ is tuple:  # (array, the tensor it was made from)
            v = v[0]
        if not op.static_maps:  # (a mask, an index tensor: the program would bake its values in)
            self.fail(f"row {op.name!r} holds a constant made from a tensor's values")
        return self._new(CONSTANT, np.asarray(v), False, value=np.array(v))

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
        R = tape.row_table()[0][lo:hi].tolist()
        F = tape.row_table()[1][lo:hi, 7].tolist()
        for r, f0 in zip(R, F):
            op = ops.TABLE[r[0]]
            if op is ops.FUNCTION or r[4] < tape.ns and (id(tape), r[4]) in self.tmap:
                self.fail(f"row {op.name!r} (a custom autograd.Function or a multi-row op) does not replay")
            ins = []
            for k in (1, 2, 3):
                s = r[k]
                if s < 0:
                    ins.append(-1)
                    continue
                p = self._tape_slot(tape, s)
                if p == -2:
                    p = self._operand(tape.values[s], op)
                    self.tmap[(id(tape), s)] = p
                ins.append(p)
            value = tape.values[r[4]]
            out = self._new(VALUE, value, True)
            self.tmap[(id(tape), r[4])] = out
            self._row(OP, op, ins, out, r[5], r[6], f0)

    def _row(self, kind, op, ins, out, i0=0, i1=0, f0=0.0):
        ins = list(ins) + [-1] * (3 - len(ins))
        if kind == OP and op.fwd == "fwd_view" and ins[0] >= 0 and self.slots[ins[0]].kind == EXT:
            self.viewed.add(ins[0])
        self.rows.append((kind, op, ins[0], ins[1], ins[2], out, i0, i1, f0))

    # -- hooks (tape.note_*) -------------------------------------------------------------------
    def note(self, code, x, y, t, i0, i1, f0):
        """An op whose result needs no grad (or any op under no_grad)."""
        self._sync()
        op = ops.TABLE[code]
        ins = [self.slot_of(x) if x.__class__ is Tensor or isinstance(x, Tensor) else self._operand(x, op),
               -1 if y is None else self.slot_of(y) if isinstance(y, Tensor) else self._operand(y, op)]
        out = self._new(VALUE, t._value, False)
        self._hold(t, out)
        self._row(OP, op, ins, out, i0, i1, f0)

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

    def note_write(self, x, result):
        """x is about to take ``result``'s values in place (ops._inplace)."""
        self._sync()
        target = self.slot_of(x)
        src = self.slot_of(result)
        self.rows.append((WRITE, None, target, src, -1, target, 0, 0, 0.0))
        if self.slots[target].kind == EXT:
            self.writes[id(x)] = self.writes.get(id(x), 0) + 1
        self.byid[id(x)] = src
        if x._tape is None:
            self.keep.append(x)

    def note_read(self, t, value):
        """Python read t's values (item, bool, tolist...): the replay checks them."""
        if self.fullgraph:
            raise RuntimeError("torch._dynamo.exc.Unsupported: a compiled function with fullgraph=True reads a "
                               "tensor's value into Python (item(), bool(), tolist(), a comparison in `if`): "
                               "that is a graph break")
        self._sync()
        s = self.slot_of(t)
        v = t._value
        self.rows.append((GUARD, (v.dtype, v.shape, v.tobytes()), s, -1, -1, -1, 0, 0, 0.0))
        self.reads += 1

    def _hold(self, t, s):
        self.byid[id(t)] = s
        self.keep.append(t)

    # -- the end -------------------------------------------------------------------------------
    def finish(self, outputs):
        """The program, or the reason it cannot replay."""
        self._sync()
        for tape, _ in self.synced.values():
            if tape.closed:
                self.fail("it calls backward() (a compiled training step replays eagerly for now)")
        for t, version, grad in self.versions.values():
            if t._version - version != self.writes.get(id(t), 0):
                self.fail("it changes a tensor in place in a way no op records (a NumPy write, an optimizer step)")
            if t._grad is not grad:
                self.fail("it changes a tensor's .grad")
        for s in self.viewed:
            if id(self.slots[s].tensor) in self.writes:
                self.fail("it writes in place into an argument that it also views")
        outs = [self.slot_of(t) if isinstance(t, Tensor) else None for t in outputs]
        if self.bad is not None:
            return None
        return Program(self, outs)


def _replayable(rec):
    for kind, op, a, b, c, out, i0, i1, f0 in rec.rows:
        if kind == OP and python_forward(op) is None:
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
        self.constants = [s for s, sl in enumerate(self.slots) if sl.kind == CONSTANT]
        self.has_rand = any(r[0] == RAND for r in self.rows)
        self.plan = self._plan()
        self._tape_plan()

    # -- planning --------------------------------------------------------------------------------
    def _jittable(self, r, kinds):
        """The dtype of the run row r may join, or None: its kernel gives the eager bits only for
        the operands its kind reads (forwards.py) and where the row's fwd_exact holds."""
        from ..engine.cpu.forwards import BINARY, ELEMENTWISE, FULL
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
        n = int(np.prod(sl[out].shape))
        if op.fwd_exact is not None and not op.fwd_exact(dt, n):
            return None
        if k == BINARY:
            na, nb = int(np.prod(sl[a].shape)), int(np.prod(sl[b].shape))
            if not (na == n and nb in (n, 1) or nb == n and na == 1 or
                    na == n and _trailing(sl[b].shape, sl[out].shape) or
                    nb == n and _trailing(sl[a].shape, sl[out].shape)):
                return None
        elif k == FULL and (n != 1 or int(np.prod(sl[a].shape)) == 0):  # (an empty mean is NumPy's nan)
            return None
        elif k == ELEMENTWISE and int(np.prod(sl[a].shape)) != n:
            return None
        return dt

    def _plan(self):
        """Steps: ("jit", lo, hi, witness) for a run of jittable rows, ("row", e) for one row."""
        from ..engine.cpu._forward import FWD_KIND
        from ..engine.cpu.forwards import VIEW
        plan = []
        e = 0
        n = len(self.rows)
        while e < n:
            dt = self._jittable(self.rows[e], FWD_KIND)
            if dt is None:
                plan.append(("row", e))
                e += 1
                continue
            lo = e
            while e < n:
                d = self._jittable(self.rows[e], FWD_KIND)
                if d is None or d != dt:  # (not d == dt: NumPy reads None as float64)
                    break
                e += 1
            allocs = []
            for r in self.rows[lo:e]:  # each output's array, made before the run (a view: of its input)
                sl = self.slots[r[5]]
                allocs.append((r[5], sl.shape, sl.dtype, r[2] if FWD_KIND[r[1].code] == VIEW else -1))
            plan.append(("jit", lo, e, np.empty(0, dt), allocs, np.array([a[0] for a in allocs], np.int64)))
        return plan

    def _tape_plan(self):
        """Which rows and slots a replay writes to its tape (those that need grad)."""
        rg_rows = [e for e, r in enumerate(self.rows) if r[0] == OP and self.slots[r[5]].rg]
        self.rg_rows = rg_rows
        if not rg_rows:
            self.tape_slots = []
            return
        used = set()
        for e in rg_rows:
            r = self.rows[e]
            used.update(s for s in (r[2], r[3], r[4], r[5]) if s >= 0)
        self.tape_slots = sorted(used)
        self.internal_flags = np.array([REQUIRES_GRAD if self.slots[s].rg else LEAF for s in self.tape_slots
                                        if self.slots[s].kind != EXT], np.int64)
        R = np.zeros((len(rg_rows), 8), np.int64)
        for i, e in enumerate(rg_rows):
            kind, op, a, b, c, out, i0, i1, f0 = self.rows[e]
            R[i, :7] = (op.code, a, b, c, out, i0, i1)
            R[i:i + 1, 7:8].view(np.float64)[0, 0] = f0
        self.R = R

    # -- replay ----------------------------------------------------------------------------------
    def replay(self, tensors):
        """Run the program on the tensor arguments ``tensors``; returns the output values (Tensors
        and Python constants in the order of ``outs``)."""
        from ..creation import _rng
        vals = [None] * len(self.slots)
        O = np.zeros(len(self.slots), np.int64)
        slots = self.slots
        for s in self.ext:
            sl = slots[s]
            t = tensors[sl.arg] if sl.arg >= 0 else sl.tensor
            v = _contiguous(t._value)
            vals[s] = v
            O[s] = id(v)
        for s in self.constants:
            vals[s] = slots[s].value
            O[s] = id(slots[s].value)
        state = _rng[0].bit_generator.state if self.has_rand and self.reads else None
        deferred = []
        rows = self.rows
        try:
            for step in self.plan:
                if step[0] == "jit":
                    _, lo, hi, w, allocs, outs = step
                    ids = []
                    for out, shape, dtype, src in allocs:
                        v = np.empty(shape, dtype) if src < 0 else vals[src].reshape(shape)
                        vals[out] = v
                        ids.append(id(v))
                    O[outs] = ids
                    status = _jit_run(self, O, lo, hi, w)
                    if status != -1:
                        raise RuntimeError(f"compiled replay: row {rows[status][1].name} has no jitted kernel")
                    continue
                e = step[1]
                kind, op, a, b, c, out, i0, i1, f0 = rows[e]
                if kind == OP:
                    ins = [vals[s] if s >= 0 else None for s in (a, b, c)]
                    f = _PY_CACHE.get(op.code)
                    if f is None:
                        f = _PY_CACHE[op.code] = python_forward(op)
                    v = np.asarray(f(ins, i0, i1, f0, slots[out].shape, slots[out].dtype))
                    v = v if v.flags.c_contiguous else np.ascontiguousarray(v)
                elif kind == GUARD:
                    dtype, shape, data = op
                    v = vals[a]
                    if v.dtype != dtype or v.shape != shape or v.tobytes() != data:
                        raise GuardFailed
                    continue
                elif kind == WRITE:
                    if slots[a].kind == EXT:
                        deferred.append((a, b))  # held back until every guard has passed
                    else:
                        np.copyto(vals[a], vals[b])
                    continue
                elif kind == CONST:
                    v = slots[out].value.copy()
                elif kind == RAND:
                    v = op()
                else:  # PY
                    fn, consts = op
                    it = iter(vals[s] for s in a)
                    v = np.asarray(fn(*[next(it) if k is None else k for k in consts]))
                vals[out] = v
                O[out] = id(v)
        except GuardFailed:
            if state is not None:
                _rng[0].bit_generator.state = state  # a failed replay draws nothing
            raise
        for a, b in deferred:
            t = slots[a].tensor if slots[a].arg < 0 else tensors[slots[a].arg]
            np.copyto(t._value, vals[b])
            t._bump_version()
        return self._outputs(tensors, vals)

    def _outputs(self, tensors, vals):
        slots = self.slots
        tape, tslot = self._tape(tensors, vals) if self.rg_rows else (None, None)
        made = {}
        out = []
        for s in self.outs:
            if s is None:
                out.append(None)
                continue
            t = made.get(s)
            if t is None:
                sl = slots[s]
                if sl.kind == EXT:
                    t = tensors[sl.arg] if sl.arg >= 0 else sl.tensor
                elif sl.rg and tape is not None:
                    t = ops._result(vals[s], tape, int(tslot[s]), None)
                else:
                    t = _leaf(vals[s])
                made[s] = t
            out.append(t)
        return out

    def _tape(self, tensors, vals):
        """A fresh tape holding the rows that need grad, on this replay's values."""
        slots = self.slots
        tape = Tape()
        remap = np.full(len(slots) + 1, -1, np.int64)  # (index -1 maps to -1)
        internal = []
        for s in self.tape_slots:
            sl = slots[s]
            if sl.kind == EXT:
                t = tensors[sl.arg] if sl.arg >= 0 else sl.tensor
                remap[s] = tape.slot_of(t)
            else:
                internal.append(s)
        # the other slots in one go: flags, version 0, dtype code -1 (the engine reads it from the value)
        k = len(internal)
        lo = tape.ns
        while tape.cap < lo + k:
            tape._grow()
        S = np.frombuffer(tape.slots, np.int64).reshape(-1, 4)
        S[lo:lo + k, 0] = 0
        S[lo:lo + k, 1] = self.internal_flags
        S[lo:lo + k, 2] = 0
        S[lo:lo + k, 3] = -1
        del S
        tape.values.extend([vals[s] for s in internal])
        remap[internal] = np.arange(lo, lo + k)
        tape.ns = lo + k
        R = self.R.copy()
        R[:, 1:5] = remap[R[:, 1:5]]
        n = R.shape[0]
        tape.rows[:n * 64] = R.tobytes()
        tape.n = n
        return tape, remap


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
            args = ", ".join(f"%{s}" for s in (a if kind == PY else (a, b, c)) if s >= 0)
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
                lines.append(f"%{out} = {getattr(op[0], '__name__', op[0])}({args})  [numpy]")
            else:
                lines.append(f"%{out} = {kind}  {list(self.slots[out].shape)} {self.slots[out].dtype}")
        lines.append("return " + ", ".join("-" if s is None else f"%{s}" for s in self.outs))
        return lines


_PY_CACHE = {}


def _trailing(small, big):
    small = tuple(small)
    while small and small[0] == 1:
        small = small[1:]
    return len(small) <= len(big) and tuple(big[len(big) - len(small):]) == small


_JIT = []


def _jit_run(prog, O, lo, hi, w):
    if not _JIT:
        from ..engine.cpu._forward import FWD_KERNEL
        from ..engine.cpu.forward_replay import run
        from ..engine.cpu_replay import header_offset
        _JIT.extend((run, FWD_KERNEL, header_offset()))
    R = getattr(prog, "_R_all", None)
    if R is None:
        R = np.zeros((len(prog.rows), 8), np.int64)
        for e, r in enumerate(prog.rows):
            if r[0] == OP:
                R[e, :7] = (r[1].code, r[2], r[3], r[4], r[5], r[6], r[7])
                R[e:e + 1, 7:8].view(np.float64)[0, 0] = r[8]
        prog._R_all = R
        prog._RF_all = R.view(np.float64)
    run, fk, hoff = _JIT
    return run(R, prog._RF_all, fk, O, lo, hi, hoff, w)
