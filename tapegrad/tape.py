"""The Wengert tape: rows of opcodes and a slot table, both flat byte buffers (struct of arrays).

A row is one recorded operation: ``op, a, b, c, out, i0, i1, f0`` (input slots a, b, c are -1
when unused; i0/i1 are integer attributes, f0 a float constant). A slot names one value: the
address of the NumPy array holding it (the jitted engine reads the array's header there), its
flags, the version of its storage when recorded and its dtype code.

Recording writes one row and no slot: slot buffers grow pre-filled with a fresh result's record
(requires grad, version 0, dtype -1), and the engine reads the addresses from ``values`` (the
slot-ordered list of the arrays) when it needs them (engine/cpu/context.fill_slots), for every slot: no
recording path writes an address. One struct pack an op
and no id() int instead of two packs (W1: 1.65 to 1.3 us an op).

Lifecycle: the thread's current tape is held weakly, so a tape that no tensor reaches is freed by
reference counting. A backward closes the tape (and frees the graph unless retained); later ops start
a fresh one, and an op whose input lives on an older tape gets a LINK slot that backward follows into it.
After a tape's first create_graph backward, ops that read its values (a Hessian-vector product's
(g * v).sum()) still record on it while it is the current tape, so the next backward replays one tape.
"""
import itertools
import linecache
import os
import struct
import sys
import _thread
import threading
import traceback
import weakref

import numpy as np

ROW = struct.Struct("<7qd")
ROW_WIDTH = 8  # int64 words per row; word 7 holds f0 as a double
SLOT = struct.Struct("<4q")
SLOT_WIDTH = 4  # obj, flags, version, dtype code

# slot flags
REQUIRES_GRAD = 1
LEAF = 2
LINK = 4  # stands for a value recorded on an older tape (see Tape.links)
FREED = 8  # its producing entry's saved values were released by a backward

_INITIAL_ROWS = 32


class Tape:
    __slots__ = ("cap", "rows", "n", "slots", "ns", "synced", "values", "vcs", "leaf_slot", "leaves", "links",
                 "link_slot", "retained", "hooks", "pyfuncs", "names", "shown", "closed", "resumable", "freed",
                 "serial", "epoch", "traces", "nodes", "overlapped", "gpu", "__weakref__")

    _serials = iter(range(1, 1 << 62))

    def __init__(self, cap=_INITIAL_ROWS):
        """``cap``: room for that many slots and rows, in one allocation (a compiled replay knows its
        tape's size before it writes it, where doubling would copy the buffers again and again)."""
        cap = max(cap, _INITIAL_ROWS)  # (doubling grows from here: never from zero)
        self.cap = cap
        self.rows = bytearray(ROW.size * cap)
        self.n = 0
        self.slots = bytearray(_FRESH_SLOT * cap)
        self.ns = 0
        self.synced = 0  # slots whose address the engine has filled in from ``values``
        self.traces = None  # anomaly mode: slot -> (where it was made, parent), see _TracedValues
        # slot -> ndarray kept alive while the slot can be read (None once freed)
        self.values = [] if not Anomaly.enabled else _TracedValues(self)
        self.vcs = {}  # slot -> version counter ([int]) of the storage, for the in-place check (absent: version 0)
        self.leaf_slot = {}  # id(leaf tensor) -> slot
        self.leaves = _Leaves(self.leaf_slot)  # slot -> leaf tensor (gets .grad), held weakly
        self.links = {}  # slot -> (older tape, slot there)
        self.link_slot = {}  # (id(older tape), slot there) -> slot here
        self.retained = {}  # slot -> weakref to a non-leaf tensor that called retain_grad()
        self.hooks = {}  # slot -> [hook] registered on non-leaf tensors
        self.pyfuncs = {}  # entry -> Python backward (custom autograd.Function)
        self.names = {}  # slot -> name shown by the dump
        self.shown = {}  # slot -> (grad_fn name, input slots): a composite shown as torch's one node
        self.closed = False
        self.resumable = 0  # 1: closed by its first create_graph backward; ops on its values still record here
        self.freed = False
        self.serial = next(Tape._serials)
        self.epoch = Global.inplace_events
        self.nodes = None  # slot -> its grad_fn object, held weakly, made on first request (autograd.graph)
        self.overlapped = None  # slots written through an expand: a gradient reaching one is torch's error
        self.gpu = False  # a copy between devices was recorded here: its backward runs on the CUDA engine

    # -- recording (hot path) ------------------------------------------------------------
    def push(self, op, a, b, c, i0, i1, f0, value, vc):
        """Append one row and the slot of its output (requires grad); return that slot.
        ``vc`` is the storage's version counter, or None for a fresh result (version 0)."""
        s = self.ns
        if s >= self.cap:
            self._grow()
        if vc is not None:  # a fresh result keeps the slot the buffer was filled with
            _pack_slot(self.slots, s << 5, 0, REQUIRES_GRAD, vc[0], -1)
            self.vcs[s] = vc
        _pack_row(self.rows, self.n << 6, op, a, b, c, s, i0, i1, f0)
        self.values.append(value)
        self.n += 1
        self.ns = s + 1
        return s

    def _grow(self):
        """Double both buffers; there are never more rows than slots, so one capacity serves both."""
        self.rows = self.rows + bytearray(len(self.rows))
        self.slots = self.slots + _FRESH_SLOT * self.cap
        self.cap *= 2

    def push_row(self, op, a, b, c, out, i0, i1, f0):
        """Append a row whose output slot exists already (a custom Function with over three inputs
        that need grad gets one such row per further three, so the planner reaches them all)."""
        n = self.n
        if (n + 1) * ROW.size > len(self.rows):
            self.rows = self.rows + bytearray(len(self.rows))
        ROW.pack_into(self.rows, n * ROW.size, op, a, b, c, out, i0, i1, f0)
        self.n = n + 1

    def new_slot(self, value, flags, vc):
        s = self.ns
        if s >= self.cap:
            self._grow()
        _pack_slot(self.slots, s * SLOT.size, 0, flags, 0 if vc is None else vc[0], _DTYPE_CODE[value.dtype.num])
        self.values.append(value)
        if vc is not None:
            self.vcs[s] = vc
        self.ns = s + 1
        return s

    def slot_of(self, t):
        """The slot that stands for tensor ``t`` on this tape, registering it when needed."""
        if t._tape is self:
            return t._slot
        if t._tape is None:
            s = self.leaf_slot.get(id(t))
            if s is None or (Global.inplace_events != self.epoch and self._leaf_changed(s, t)):
                s = self._new_leaf(t)
            return s
        key = (id(t._tape), t._slot)
        s = self.link_slot.get(key)
        if s is None:
            s = self.new_slot(_contiguous(t._value), REQUIRES_GRAD | LINK, counter(t))
            self.link_slot[key] = s
            self.links[s] = (t._tape, t._slot)
        return s

    def _new_leaf(self, t):
        """Register leaf t in a new slot. new_slot inlined, dtype left to the engine as push does:
        a model registers each of its parameters on every step's tape."""
        v = t._value
        if not v.flags.c_contiguous:  # the engine reads values as flat C-ordered buffers
            v = np.ascontiguousarray(v)
        vc = t._vc if t._vc is not None else counter(t)
        s = self.ns
        if s >= self.cap:
            self._grow()
        _pack_slot(self.slots, s << 5, 0, (REQUIRES_GRAD | LEAF) if t._rg else LEAF, vc[0], -1)
        self.values.append(v)
        self.vcs[s] = vc
        self.ns = s + 1
        tid = id(t)
        self.leaf_slot[tid] = s
        leaves = self.leaves  # _Leaves.__setitem__, inlined
        r = _LeafRef(t, leaves._remove)
        r.slot = s
        r.tid = tid
        leaves._refs[s] = r
        x = t._x
        if x is not None and x.name is not None:
            self.names[s] = x.name
        return s

    def add_leaves(self, ts):
        """Register leaves ``ts`` (none of them on this tape yet) in new slots, in order; returns the
        first. _new_leaf for many at once: a compiled replay registers every parameter on its tape."""
        lo, n = self.ns, len(ts)
        while self.cap < lo + n:
            self._grow()
        values, vcs, leaf_slot, names = self.values, self.vcs, self.leaf_slot, self.names
        refs, remove = self.leaves._refs, self.leaves._remove
        flags, versions = [], []
        s = lo
        for t in ts:
            v = t._value
            if not v.flags.c_contiguous:
                v = np.ascontiguousarray(v)
            vc = t._vc if t._vc is not None else counter(t)
            values.append(v)
            vcs[s] = vc
            flags.append((REQUIRES_GRAD | LEAF) if t._rg else LEAF)
            versions.append(vc[0])
            tid = id(t)
            leaf_slot[tid] = s
            r = _LeafRef(t, remove)
            r.slot, r.tid = s, tid
            refs[s] = r
            x = t._x
            if x is not None and x.name is not None:
                names[s] = x.name
            s += 1
        S = np.frombuffer(self.slots, np.int64, (lo + n) * SLOT_WIDTH).reshape(-1, SLOT_WIDTH)
        S[lo:, 0] = 0
        S[lo:, 1] = flags
        S[lo:, 2] = versions
        S[lo:, 3] = -1
        del S
        self.ns = lo + n
        return lo

    def _leaf_changed(self, s, t):
        """Whether leaf t was changed in place, or given new .data, since slot s recorded it. Ops
        recorded from now on then get a fresh slot that reads (and version-checks) the new value, as
        torch's new ops do; the leaf then has several slots here and their gradients add up."""
        v = t._value
        if self.values[s] is not v and v.flags.c_contiguous:  # (a non-contiguous leaf is stored as a copy)
            return True
        return SLOT.unpack_from(self.slots, s * SLOT.size)[2] != counter(t)[0]

    # -- columns for the engine and the dump ---------------------------------------------
    def row_table(self):
        """(int64 rows, float64 view of the same rows), each of shape (n, ROW_WIDTH)."""
        ints = np.frombuffer(self.rows, np.int64, self.n * ROW_WIDTH).reshape(self.n, ROW_WIDTH)
        return ints, ints.view(np.float64)

    def slot_table(self):
        """The slot table with its dtype column filled in (readers; the engine uses raw_slots)."""
        S = self.raw_slots()
        for s in np.flatnonzero(S[:, 3] == -1).tolist():
            v = self.values[s]
            if v is not None:
                S[s, 3] = _DTYPE_CODE[v.dtype.num]
        return S

    def raw_slots(self):
        return np.frombuffer(self.slots, np.int64, self.ns * SLOT_WIDTH).reshape(self.ns, SLOT_WIDTH)

    def row(self, e):
        return ROW.unpack_from(self.rows, e * ROW.size)

    def slot_flags(self, s):
        return SLOT.unpack_from(self.slots, s * SLOT.size)[1]

    def set_slot_flags(self, s, flags):
        obj, _, ver, dt = SLOT.unpack_from(self.slots, s * SLOT.size)
        SLOT.pack_into(self.slots, s * SLOT.size, obj, flags, ver, dt)

    def producer(self, s):
        """The entry whose output is slot ``s`` (slots and rows are appended in step)."""
        ints = np.frombuffer(self.rows, np.int64, self.n * ROW_WIDTH)[4::ROW_WIDTH]
        hit = np.flatnonzero(ints == s)
        return int(hit[0]) if hit.size else -1

    # -- lifecycle -------------------------------------------------------------------------
    def free(self, level):
        """Close the tape for good after a backward freed entries (their FREED flags set). ``level``
        (interp.keep) told the engine what each slot keeps for the entries left unfreed, and the
        engine has dropped the rest; None: no entry is left, so keep no value at all. The rows stay
        (grad_fn names), so a tensor that outlives its graph pins nothing but what it still needs."""
        self.closed = True
        if self.cap > 2 * self.ns:  # nothing records here again: a tape more than half spare sheds it
            self.rows = bytearray(memoryview(self.rows)[: self.n * ROW.size])  # (writable: one kernel signature)
            self.slots = bytearray(memoryview(self.slots)[: self.ns * SLOT.size])
        self.leaf_slot = self.link_slot = self.leaves._ids = None  # (read by recording only)
        if level is None:
            self.freed = True
            self.values = [None] * self.ns
            self.vcs = None
            self.links = {}
            self.pyfuncs = {}
        elif self.links:  # an older tape stays alive only while an unfreed entry reads from it
            self.links = {s: link for s, link in self.links.items() if level[s]}


_pack_row = ROW.pack_into
_pack_slot = SLOT.pack_into
_FRESH_SLOT = SLOT.pack(0, REQUIRES_GRAD, 0, -1)  # a fresh result's slot, its address filled in by the engine
assert ROW.size == 64 and SLOT.size == 32


def counter(t):
    """t's version counter, made on first need: fresh results carry None (version 0, unshared)
    until a view, a registration on a tape or an in-place change needs one."""
    vc = t._vc
    if vc is None:
        vc = t._vc = [0]
        tape = t._tape
        if tape is not None and tape.vcs is not None:
            tape.vcs[t._slot] = vc
    return vc


class _LeafRef(weakref.ref):
    __slots__ = ("slot", "tid")


class _Leaves:
    """slot -> leaf Tensor, held weakly. A leaf given a .grad made with create_graph holds this tape
    (grad -> tape), so a strong tape -> leaf link would make a cycle that reference counting never
    frees (a parameter and its gradient keeping every graph alive). A leaf's death also drops its
    id from ``leaf_slot``, since ids are reused. Plain refs in a dict: WeakValueDictionary's
    Python-level __setitem__ cost 2.3 us a registration, a quarter of a W5 step."""
    __slots__ = ("_refs", "_ids", "_remove", "__weakref__")

    def __init__(self, leaf_slot):
        self._refs = {}
        self._ids = leaf_slot  # (None once the tape is freed: it records nothing more)
        me = weakref.ref(self)  # the callback must not hold self: refs -> callback -> self would be a cycle

        def remove(wr):
            leaves = me()
            if leaves is not None:
                if leaves._refs.get(wr.slot) is wr:
                    del leaves._refs[wr.slot]
                if leaves._ids is not None:
                    leaves._ids.pop(wr.tid, None)

        self._remove = remove

    def get(self, s, default=None):
        r = self._refs.get(s)
        t = r() if r is not None else None
        return default if t is None else t

    def __getitem__(self, s):
        t = self.get(s)
        if t is None:
            raise KeyError(s)
        return t

    def __contains__(self, s):
        return self.get(s) is not None

    def items(self):
        return [(s, t) for s, r in self._refs.items() if (t := r()) is not None]

    def requiring_grad(self):
        """([slot], [leaf]) of the living leaves that require grad: those backward gives a .grad."""
        slots, leaves = [], []
        for s, r in self._refs.items():
            t = r()
            if t is not None and t._rg:
                slots.append(s)
                leaves.append(t)
        return slots, leaves

    def __len__(self):
        return len(self._refs)


def _contiguous(a):
    # The engine reads values as flat C-ordered buffers.
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


_DTYPE_CODE = {np.dtype(np.float32).num: 0, np.dtype(np.float64).num: 1, np.dtype(np.int64).num: 2,
               np.dtype(np.int32).num: 3, np.dtype(np.bool_).num: 4}


class _State(threading.local):
    """Per-thread autograd state: grad mode and the current tape (held weakly)."""

    def __init__(self):
        self._grad = True
        self.inference = False
        self.anomaly_parent = None  # anomaly mode: (weakref to tape, slot) of the entry whose VJP is recording
        self.tape_ref = _dead_ref
        _hot.rec = _dead_ref

    @property
    def grad_enabled(self):
        return self._grad

    @grad_enabled.setter
    def grad_enabled(self, on):
        self._grad = on
        _hot.rec = self.tape_ref if on else _dead_ref


def _nothing():
    return None


_dead_ref = _nothing
# The recorders' one lookup: ``_hot.rec()`` is the tape to record on (tape_ref while grad mode is on,
# else dead). A bare _thread._local: its attribute reads take 30 ns less than a threading.local
# subclass's (W1 makes one per op). It has no per-thread __init__: in a thread that has not yet
# touched _state the read raises AttributeError, and the recorders fall back to recording_tape().
_hot = _thread._local()
_state = _State()


class Global:
    inplace_events = 0  # counts in-place ops in every thread; a tape with none since it began skips the version check
    _events = itertools.count(1)

    @classmethod
    def bump(cls):
        # next() on a count is atomic: two threads never store one number, so a tape whose epoch
        # differs from any in-place event's number cannot miss it (a read-add-store could lose one)
        cls.inplace_events = next(cls._events)


class Anomaly:
    """Anomaly mode (autograd.detect_anomaly): one switch for every thread, as torch's. Tapes begun
    while it is on keep, per slot, the Python stack that made it (_TracedValues); backward then checks
    each entry's gradients for NaN (``check_nan``) and names the forward line of a failing entry."""
    enabled = False
    check_nan = True


class _TracedValues(list):
    """A tape's ``values`` in anomaly mode. Every recording path appends one value per slot it makes,
    so the stack is taken here and a plain list (anomaly mode off) costs recording nothing. The
    engine reads the items through the list's C layout, which a subclass with __slots__ keeps."""
    __slots__ = ("traces",)

    def __init__(self, tape, items=()):
        super().__init__(items)
        if tape.traces is None:
            tape.traces = {}
        self.traces = tape.traces  # the tape's own dict: it outlives the values a backward frees

    def append(self, value):
        if Anomaly.enabled:
            self.traces[len(self)] = (_stack(), _state.anomaly_parent)
        list.append(self, value)


def trace_values(tape, on):
    """Make ``tape``, still open when anomaly mode is switched, record stacks from now on (or no
    longer: its recording then costs nothing more, as a tape begun with the mode off)."""
    if tape is None or tape.closed:
        return
    if on and tape.values.__class__ is list:
        tape.values = _TracedValues(tape, tape.values)
    elif not on and tape.values.__class__ is _TracedValues:
        tape.values = list(tape.values)


def _stack():
    """(file, line, function) of each frame that led to this recording, innermost first; the lines'
    text is read only if a report needs it."""
    out = []
    f = sys._getframe(2)
    while f is not None:
        out.append((f.f_code.co_filename, f.f_lineno, f.f_code.co_name))
        f = f.f_back
    return out


_HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# The frames of recording itself (ops, recorders, a Function's call, the create_graph walk) are every
# module of the package but the layers written like user code (nn, optim, the demo), whose
# counterparts in torch are Python too; torch's recording machinery is C++ and shows no frame.
_USER_LAYERS = tuple(os.path.join(_HERE, f) for f in ("nn" + os.sep, "optim.py", "demo.py"))


def _recording_frame(filename):
    path = os.path.abspath(filename)
    return path.startswith(_HERE) and not path.startswith(_USER_LAYERS)


def _callers(stack):
    """The stack without the frames of the recording machinery at its inner end."""
    k = 0
    while k < len(stack) - 1 and _recording_frame(stack[k][0]):
        k += 1
    return stack[k:]


def recorded_at(stack):
    """``file.py:line`` of the line that recorded an entry (the dump's column)."""
    filename, lineno, _ = _callers(stack)[0]
    return f"{os.path.basename(filename)}:{lineno}"


def stack_lines(stack):
    """A recorded stack as traceback.format_stack gives one (a string per frame, outermost first),
    without the frames of the recording machinery at its inner end."""
    frames = []
    for filename, lineno, name in reversed(_callers(stack)):
        linecache.checkcache(filename)
        frames.append(traceback.FrameSummary(filename, lineno, name, line=linecache.getline(filename, lineno)))
    return traceback.format_list(frames)


def format_stack(stack):
    return "".join(stack_lines(stack))


def current_tape():
    t = _state.tape_ref()
    if t is None or t.closed:
        t = Tape()
        _state.tape_ref = weakref.ref(t)
        if _state._grad:
            _hot.rec = _state.tape_ref
    return t


def recording_tape():
    """The tape to record on, or None under no_grad (the recorders inline the common case)."""
    return current_tape() if _state._grad else None


# -- the program a compiled function records (tg.compile, compiler/program.py) -------------------
# ``_hot.prog`` is this thread's Recording while a compiled function's first call runs; the
# recorders' untracked branch reaches note_op only while some thread records (_record.PROGRAMS).
def recording_program():
    return getattr(_hot, "prog", None)


def program_step(fn, args=(), defer=False):
    """fn(*args), a Python step on tensors (an optimizer's step, zero_grad): while a compiled
    function records, one row of its program, which replays call again (``defer``: it only resets
    grads, and a replay may hold it back until its guards pass)."""
    p = getattr(_hot, "prog", None)
    return fn(*args) if p is None else p.note_call(fn, args, defer)


def note_op(code, x, y, t, i0, i1, f0):
    """A result that needs no grad (or made under no_grad): the program records it too."""
    p = getattr(_hot, "prog", None)
    if p is not None:
        p.note(code, x, y, t, i0, i1, f0)
