"""The CPU engine: runs backward over one or more linked tapes.

Without ``create_graph`` each tape is replayed by ONE call into the jitted interpreter
(``engine.cpu.interp.backward``); Python only prepares the seeds and the exported gradient buffers
(leaf grads, retained grads, links into older tapes) and hands them out afterwards. Hooks on
non-leaf tensors split that call at the hooked slot's producer. With ``create_graph`` the
rows' differentiable VJPs run in Python and record onto the current tape.

In anomaly mode (``tape.Anomaly``) each entry's gradients are checked for NaN as it runs (the
jitted replay in segments, its check_nan flag on), and an error raised in backward carries the
node it arose in (``_blame``) for autograd's report of that node's forward traceback.
"""
import ctypes
import threading
import weakref

import numpy as np

from . import ops
from .tape import LEAF, LINK, REQUIRES_GRAD, ROW, Anomaly, Global, _state
from .ops import Negated, add_grads, negated, plain
from .tensor import Size, Tensor
from .tensor import _new
from .tensor import leaf as _leaf

_K = None  # engine.cpu.interp, imported on first use (Numba stays out of `import tapegrad`)
_HOFF = _TNOFF = _LUT = None


def _kernels():
    global _K, _HOFF, _TNOFF, _LUT
    if _K is None:
        from . import malloc
        from .engine.cpu import interp
        from .jit import ffi
        malloc.apply_environment()
        from .tape import _DTYPE_CODE
        _HOFF = header_offset()
        _TNOFF = typenum_offset()
        _LUT = np.full(256, -2, np.int64)
        for num, code in _DTYPE_CODE.items():
            _LUT[num] = code
        _K = interp
        probe = np.arange(6.0).reshape(2, 3)
        if ffi.header_probe(id(probe), _HOFF) != (probe.ctypes.data, 2, 6):
            raise RuntimeError("tapegrad cannot read this NumPy's array header; please report your NumPy version")
        pair = [probe, None]
        if ffi.list_probe(id(pair), _LIST_ITEMS) != (id(probe), id(None)):
            raise RuntimeError("tapegrad cannot read this Python's list layout; please report your Python version")
    return _K


_LIST_ITEMS = tuple.__basicsize__  # a list's item pointer follows the variable-size object header


def typenum_offset():
    """Offset of ``type_num`` in a NumPy dtype object (``PyArray_Descr``), found and cross-checked
    on two dtypes; the engine reads it to learn each value's dtype without Python."""
    d64, d32 = np.dtype(np.float64), np.dtype(np.float32)
    w64 = (ctypes.c_int32 * 16).from_address(id(d64))
    w32 = (ctypes.c_int32 * 16).from_address(id(d32))
    for i in range(4, 16):
        if w64[i] == d64.num and w32[i] == d32.num:
            return i * 4
    raise RuntimeError("tapegrad cannot locate type_num in NumPy's dtype objects")


def header_offset():
    """Offset of the data pointer in a NumPy array object (``PyArrayObject.data``); ndim and the
    dims pointer follow it, as in NumPy's public struct."""
    a = np.empty(3)
    words = (ctypes.c_int64 * 8).from_address(id(a))
    for i in range(8):
        if words[i] == a.ctypes.data:
            return i * 8
    raise RuntimeError("tapegrad cannot locate the data pointer in NumPy's array header")


# Backwards in several threads may reach one leaf: its .grad is read, added to and written under
# this lock (torch's AccumulateGrad holds a mutex too), so no thread's gradient is lost.
_GRAD_LOCK = threading.Lock()

FREED_MSG = ("Trying to backward through the graph a second time (or directly access saved tensors after "
             "they have already been freed). Saved intermediate values of the graph are freed when you call "
             ".backward() or autograd.grad(). Specify retain_graph=True if you need to backward through the "
             "graph a second time or if you need to access saved tensors after calling backward.")


class Request:
    """What one backward wants: seeds per (tape, slot), and where gradients go afterwards."""

    def __init__(self, accumulate, want, retain_graph, create_graph):
        self.accumulate = accumulate  # fill .grad of leaves (backward) or not (autograd.grad)
        self.want = want  # {(tape serial, slot): index} of requested inputs, or None for all leaves
        self.retain_graph = retain_graph
        self.create_graph = create_graph
        self.results = {}  # index -> gradient (ndarray, or Tensor with create_graph)
        self.leaf_grads = {}  # id(leaf) -> [leaf, gradient summed over its slots on every tape]
        self.last = False  # the tape now running is the last one (no older tape pending)
        self.reached = set()
        self.leaf_slots = {}  # anomaly mode: id(leaf) -> (tape, slot), where its AccumulateGrad was recorded
        self.gradless = []  # leaves with hooks that were reached but got no gradient (see _Defined)
        self.on = {}  # tape -> interp.leads marks, when only some inputs are wanted


def run(seeds, req):
    """seeds: {tape: {slot: gradient}}; walks the tapes newest first, following links."""
    if req.want is not None:
        _mark_leads(seeds, req)
    pending = dict(seeds)
    while pending:
        tape = max(pending, key=lambda t: t.serial)
        tape_seeds = pending.pop(tape)
        req.last = not pending
        if req.create_graph:
            with np.errstate(all="ignore"):  # the VJPs' ops: inf and nan as torch gives them, without NumPy's warnings
                links = _run_python(tape, tape_seeds, req)
        else:
            links = _run_jitted(tape, tape_seeds, req)
        # Later ops start a fresh tape even when this graph is retained: a retain_graph or create_graph
        # loop then frees each step's tape with its last tensor, instead of growing one tape forever.
        # Except, after a first create_graph backward, ops that read this tape's values (ops._unary,
        # _binary_rec): an hvp's (g * v).sum() then records here, and its backward replays one tape
        # instead of two linked ones (one interpreter call, 35 us on W4). Once only, so that a loop of
        # create_graph backwards through one gradient does not grow this tape for as long as it lives.
        tape.closed = True
        tape.resumable = 1 if req.create_graph and req.retain_graph and not tape.resumable else 2
        for (older, slot), g in links.items():
            into = pending.setdefault(older, {})
            into[slot] = _accumulate(into.get(slot), g)
    # Once per leaf after every tape, so that its hooks see the whole gradient, as torch's do.
    for t, g in req.leaf_grads.values():
        try:
            _give_grad(t, g, req.create_graph)
        except BaseException as exc:
            blame_leaf(exc, req, t)
            raise
    for t in req.gradless:  # torch calls a leaf's hooks with None when no gradient reached it
        if id(t) not in req.leaf_grads:
            req.leaf_grads[id(t)] = None
            _hooks_on_none(t._x.hooks)


_EVERY = np.zeros(0, np.int8)  # plan's ``on`` when every leaf is wanted: nothing limits the walk
_NO_SLOTS = np.zeros(0, np.int64)


def _mark_leads(seeds, req):
    """For autograd.grad and backward(inputs=...): mark the requested inputs on each tape reachable
    from the seeds (plan completes the marks with interp.leads); a link leads when its older slot
    does, so with links the tapes' marks are completed oldest first, and again until none changes
    (a tape another thread made may link to one newer than itself)."""
    K = _kernels()
    if len(seeds) == 1:
        tape = next(iter(seeds))
        if not tape.links:  # (the common case: one tape)
            on = req.on[tape] = np.zeros(tape.ns, np.int8)
            for serial, s in req.want:
                if serial == tape.serial:
                    on[s] = K.WANTED
            return
    tapes, stack = {}, list(seeds)
    while stack:
        tape = stack.pop()
        if tape not in tapes:
            tapes[tape] = None
            stack.extend(older for older, _ in tape.links.values())
    serials = {tape.serial: tape for tape in tapes}
    for tape in tapes:
        req.on[tape] = np.zeros(tape.ns, np.int8)
    for serial, s in req.want:
        if serial in serials:
            req.on[serials[serial]][s] = K.WANTED
    if len(tapes) > 1:
        order, total = sorted(tapes, key=lambda t: t.serial), -1
        while True:  # (marks only grow: their sum stops changing once they are complete)
            for tape in order:
                on = req.on[tape]
                for s, (older, there) in tape.links.items():
                    if req.on[older][there]:
                        on[s] |= K.LEADS
                K.leads(tape.row_table()[0], tape.raw_slots(), on)
            now = sum(int(req.on[tape].sum(dtype=np.int64)) for tape in order)
            if now == total:
                break
            total = now


def _blame(exc, tape, slot):
    """Anomaly mode: tag an error raised in backward with the node it arose in (the entry that made
    ``slot``, or the leaf at ``slot``): autograd warns with that node's forward traceback."""
    if Anomaly.enabled:
        try:
            exc.anomaly_node = (tape, slot)
        except AttributeError:  # an exception type that takes no attributes: reported without its node
            pass
    return exc


def blame_leaf(exc, req, t):
    """_blame for an error in a leaf's hooks (torch's AccumulateGrad)."""
    where = req.leaf_slots.get(id(t))
    if where is not None:
        _blame(exc, *where)
    elif Anomaly.enabled:
        try:
            exc.anomaly_node = None  # a leaf with no recorded slot: no forward information
        except AttributeError:
            pass


def _note_leaves(req, tape, pairs):
    """Anomaly mode: where each leaf of the (slot, leaf) pairs was recorded, for blame_leaf (its
    newest tape's slot)."""
    for s, t in pairs:
        req.leaf_slots.setdefault(id(t), (tape, s))


def _entry_name(tape, e):
    """torch's name of the node of entry e, for a message (a composite shows as its torch node)."""
    r = tape.row(e)
    shown = tape.shown.get(r[4])
    if shown is not None:
        return shown[0]
    call = tape.pyfuncs.get(e)
    return call.name if call is not None else ops.TABLE[r[0]].grad_fn


def _nan_error(tape, e, k):
    return _blame(RuntimeError(f"Function '{_entry_name(tape, e)}' returned nan values in its {k}th output."),
                  tape, tape.row(e)[4])


def _has_nan(g):
    """Whether gradient g (a Tensor, ndarray or a deferred Negated or Run) holds a NaN."""
    while g.__class__ is Negated or g.__class__ is ops.Run:
        g = g.t if g.__class__ is Negated else g.g
    v = g._value if isinstance(g, Tensor) else g
    return v.dtype.kind == "f" and bool(np.isnan(v).any())


def _add_leaf_grad(req, t, g):
    entry = req.leaf_grads.get(id(t))
    if entry is None:
        req.leaf_grads[id(t)] = [t, g]
    else:
        entry[1] = entry[1] + g


def _accumulate(old, g):
    if old is None:
        return g
    return old + g


def _exports(tape, req):
    """Slots whose gradient leaves the engine: (slots and leaves that require grad, when every leaf
    is wanted, else two empty lists; {slot: (kind, who)} for requested inputs, retained grads and links)."""
    lslots, leaves, out = [], [], {}
    if req.want is None:
        lslots, leaves = tape.leaves.requiring_grad()
    else:
        for (serial, s), i in req.want.items():
            if serial == tape.serial:
                out[s] = ("input", i)
    # retained grads are filled by autograd.grad too, as torch's retain_grad hooks fire on the way
    for s, ref in tape.retained.items():
        t = ref()
        if t is not None and s not in out:
            out[s] = ("retained", t)
    for s in tape.links:
        out.setdefault(s, ("link", None))
    return lslots, leaves, out


def _wanted_slots(tape, req):
    """``_exports`` as one dict {slot: (kind, who)} (a leaf is never retained nor a link)."""
    lslots, leaves, out = _exports(tape, req)
    for s, t in zip(lslots, leaves):
        out[s] = ("leaf", t)
    return out


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_WITNESS = {_F32: np.empty(0, _F32), _F64: np.empty(0, _F64)}


def _run_jitted(tape, seeds, req):
    K = _kernels()
    R, RF = tape.row_table()
    S = tape.raw_slots()
    T = _F64 if K.fill_slots(S, tape.synced, id(tape.values), _LIST_ITEMS, id(None), _HOFF, _TNOFF, _LUT) else _F32
    tape.synced = tape.ns
    values = tape.values
    export = np.zeros(S.shape[0], np.int64)
    bufs = {}
    for s, seed in seeds.items():
        if values[s] is None:  # the seed's own entry was freed by an earlier backward
            raise _blame(RuntimeError(FREED_MSG), tape, s)
        # The kernels read a buffer in C order: an expanded or transposed seed must be laid out anew.
        b = np.array(seed, dtype=T, order="C", copy=True).reshape(values[s].shape)
        bufs[s] = b
        export[s] = id(b)
    lslots, leaves, wanted = _exports(tape, req)
    hooked = [s for s, hs in tape.hooks.items() if hs] if tape.hooks else ()
    # The one-call replay (no hooks, no Functions, no NaN checks) writes or zeroes each exported
    # buffer before reading it (interp.replay_packed): no memset here.
    anomaly = Anomaly.enabled
    check_nan = anomaly and Anomaly.check_nan
    segmented = hooked or tape.pyfuncs or check_nan
    alloc = np.zeros if segmented else np.empty
    # The hot part for a model with many parameters. A leaf slot is never a seed (seeds are outputs).
    lbufs = [alloc(values[s].shape, T) for s in lslots]
    for s, b in zip(lslots, lbufs):
        export[s] = id(b)
    if segmented:
        bufs.update(zip(lslots, lbufs))
    for s in wanted:
        if s not in bufs and values[s] is not None:  # a freed slot is never needed (plan refuses it)
            b = bufs[s] = alloc(values[s].shape, T)
            export[s] = id(b)
    roots = np.fromiter(seeds, np.int64, len(seeds))
    witness = _WITNESS[T]
    tcode = 1 if T is _F64 else 0
    on = req.on.get(tape, _EVERY)
    # Unless the version check below may still raise, the kernel frees the entries itself.
    release = not req.retain_graph and tape.epoch == Global.inplace_events
    left = -1
    if anomaly:
        _note_leaves(req, tape, zip(lslots, leaves))
    if not segmented:
        status, where, need, left = K.backward(R, RF, S, _HOFF, export, roots, on, tcode, witness, K.OP_KERNEL,
                                               K.SAVES, release)
        got = need  # (without Functions every needed slot gets a gradient)
    else:
        status, where, need = K.plan(R, S, roots, on)
        defined = _Defined(K, tape, R, S, need, roots, on)
        if status == K.OK:
            status, where = _replay_with_hooks(K, tape, R, RF, S, export, need, bufs, hooked, tcode, witness,
                                               defined, check_nan)
        got = defined.mask()
    if status == K.ERR_FREED:
        raise _blame(RuntimeError(FREED_MSG), tape, R[where, 4])
    if status != K.OK:
        raise RuntimeError(f"tapegrad internal error: no adjoint for entry {where} ({tape.row(where)})")
    if tape.epoch != Global.inplace_events:
        check_versions(tape, R, need)
    links = _deliver(tape, wanted, got, bufs, req)
    if leaves:
        _deliver_leaves(tape, lslots, leaves, lbufs, got, req.leaf_grads, req.last and not tape.links)
        if got is not need:
            req.gradless.extend(t for s, t in zip(lslots, leaves) if need[s] and not got[s] and t._x and t._x.hooks)
    if left >= 0:
        _keep(K, tape, R, S, left)
    elif not req.retain_graph:
        _release(tape, need)
    return links


# The largest value (in bytes) a freed tape keeps whole where its shape would do: a stub costs
# about as much as that, and a chain's one-element values are kept at no cost per slot.
_SMALL = 64


def _release(tape, need):
    """Free what a backward without retain_graph ran, as torch's engine releases each node's saved
    tensors once it has run: the entries that saved a value (interp.free_entries) and custom
    Functions' saved tensors; then keep only what the entries left unfreed read."""
    K = _kernels()
    R = tape.row_table()[0]
    S = tape.raw_slots()
    K.fill_slots(S, tape.synced, id(tape.values), _LIST_ITEMS, id(None), _HOFF, _TNOFF, _LUT)
    tape.synced = tape.ns
    if need.shape[0] < S.shape[0]:  # slots the create_graph VJPs added: not run by this backward
        need = np.concatenate([need, np.zeros(S.shape[0] - need.shape[0], np.int8)])
    for call in {id(c): c for c in tape.pyfuncs.values()}.values():
        if any(s >= 0 and need[s] == K.RUN for s in call.out_slots):
            call.ctx._release()
    _keep(K, tape, R, S, K.free_entries(R, S, need, K.SAVES))


def _keep(K, tape, R, S, left):
    """Close the tape, keeping for its ``left`` unfreed entries the values and shapes they read."""
    if not left:
        tape.free(None)
        return
    # what a custom Function not yet run saved, wherever it lives
    pinned = np.array([s for call in tape.pyfuncs.values() for s in call.ctx._saved_slots()], np.int64) \
        if tape.pyfuncs else _NO_SLOTS
    level, missing = K.keep(R, S, K.SAVES, pinned, id(tape.values), _LIST_ITEMS, id(None), _HOFF, _TNOFF, _SMALL,
                            _STUBS.table)
    for s in missing.tolist():
        stub = tape.values[s] = _STUBS.make(tape.values[s])
        S[s, 0] = id(stub)
    tape.free(level)


class _Stubs:
    """Stubs: arrays of a shape and dtype that hold no data (every stride 0, over one element),
    what a freed tape keeps where its adjoints read a shape only. One per shape and dtype, shared
    by every tape (a training loop's freed tapes hold no stub of their own), found by the jitted
    ``interp.keep`` in ``table`` (their addresses, by shape and dtype)."""
    _DATA = np.zeros(16, np.uint8)
    _DATA.flags.writeable = False

    def __init__(self):
        self.table = np.zeros(4096, np.int64)
        self.stubs = {}  # address -> stub (keeps it alive while the table names it)

    def make(self, v):
        K = _kernels()
        i = K.find_stub(self.table, id(v), _HOFF, _TNOFF)
        if i >= 0:
            return self.stubs[i]
        if len(self.stubs) * 2 >= self.table.shape[0]:  # ever-new shapes stay bounded
            self.table[:] = 0
            self.stubs.clear()
            i = K.find_stub(self.table, id(v), _HOFF, _TNOFF)
        stub = np.ndarray(v.shape, v.dtype, self._DATA, 0, (0,) * v.ndim)
        self.table[-1 - i] = id(stub)
        self.stubs[id(stub)] = stub
        return stub


_STUBS = _Stubs()


def _deliver_leaves(tape, lslots, leaves, lbufs, need, leaf_grads, last):
    """Collect each needed leaf's gradient in ``leaf_grads``, in the leaf's dtype: ``run`` hands
    them out once every tape is done. On the ``last`` tape a leaf without hooks gets it at once
    (what _give_grad would do: nothing can add to it later, and no hook can see the difference)."""
    need = memoryview(need)  # indexing it gives Python bools, 3x faster than a NumPy scalar
    values = tape.values
    with _GRAD_LOCK:
        for s, t, g in zip(lslots, leaves, lbufs):
            if need[s]:
                dt = values[s].dtype
                if g.dtype is not dt and g.dtype != dt:
                    g = g.astype(dt)
                if last and t._x is None:
                    if t._grad is None:
                        t._grad = lg = _new(Tensor)  # _leaf(g), inlined: once per parameter per step
                        lg._value = g
                        lg._tape = lg._vc = lg._grad = lg._x = None
                        lg._slot = -1
                        lg._rg = False
                    else:
                        t._grad._value += g
                    continue
                entry = leaf_grads.get(id(t))
                if entry is None:
                    leaf_grads[id(t)] = [t, g]
                else:
                    entry[1] = entry[1] + g


def _replay_with_hooks(K, tape, R, RF, S, export, need, bufs, hooked, tcode, witness, got, check_nan=False):
    """Replay in segments: a hook on a non-leaf sees (and may replace) its complete gradient, and a
    custom Function's Python backward runs after the rows recorded later than its call. ``got``
    (_Defined) learns which inputs each Function gave a gradient. With ``check_nan`` (anomaly mode)
    every entry's gradients are checked as it runs."""
    goff, garena = K.arena(S, _HOFF, need, export, witness)

    def replay(lo, hi):
        status, where, k = K.replay(R, RF, S, _HOFF, export, need, goff, garena, lo, hi, tcode, witness,
                                    K.OP_KERNEL, check_nan)
        if status == K.ERR_NAN:
            raise _nan_error(tape, where, k)
        return status, where

    def gbuf(s):
        v = tape.values[s]
        return bufs[s] if s in bufs else garena[goff[s]: goff[s] + v.size].reshape(v.shape)

    # (top, order, bottom, what): replay rows top..hi-1, act, go on below bottom. A hook on a
    # Function's output (order 1) runs before that Function's backward (order 0) at the same top.
    # The outputs of one multi-output node (unbind, split) have their hooks run together once the
    # gradients of all of them are complete, output by output in the order of first registration.
    cuts, groups = [], set()
    for s in hooked:
        p = tape.producer(s)
        if p >= 0 and R[p, 0] in ops.MULTI_OUTPUT:
            lo, hi = output_group(R, p)
            if lo not in groups and need[R[lo:hi, 4]].any():
                groups.add(lo)
                outs = set(R[lo:hi, 4].tolist())
                cuts.append((hi, 1, hi, [o for o in hooked if o in outs]))
        elif need[s]:
            call = tape.pyfuncs.get(p)
            top = call.hi if call is not None else p + 1
            cuts.append((top, 1, top, [s]))
    seen = set()
    for call in tape.pyfuncs.values():
        if id(call) not in seen and any(s >= 0 and need[s] == K.RUN for s in call.out_slots):
            seen.add(id(call))
            cuts.append((call.hi, 0, call.lo, call))
    cuts.sort(key=lambda c: (c[0], c[1]), reverse=True)
    hi = R.shape[0]
    for top, order, bottom, what in cuts:
        status, where = replay(top, hi)
        if status != K.OK:
            return status, where
        if order:
            for s in what:
                hs = tape.hooks.get(s)
                if not hs:
                    continue
                try:  # a hook on a tensor runs as part of its node, as in torch
                    if not got.has(s):
                        _hooks_on_none(hs)
                        continue
                    g = gbuf(s)
                    for hook in hs:
                        r = hook(ops._leaf(g.copy()))
                        if r is not None:
                            g[...] = r._value
                except BaseException as exc:
                    _blame(exc, tape, s)
                    raise
        else:
            try:
                _function_jitted(tape, what, gbuf, need, got, check_nan)
            except BaseException as exc:
                _blame(exc, tape, R[what.lo, 4])
                raise
        hi = bottom
    return replay(0, hi)


def output_group(R, e):
    """Rows lo..hi-1 of the multi-output call that row e belongs to (its rows are consecutive, on
    one input, with their output index in i1)."""
    lo = e - int(R[e, 6])
    hi, n = e + 1, R.shape[0]
    while hi < n and R[hi, 0] == R[e, 0] and R[hi, 1] == R[e, 1] and R[hi, 6] == R[hi - 1, 6] + 1:
        hi += 1
    return lo, hi


def _hooks_on_none(hooks):
    """torch runs the hooks of a tensor that got no gradient with None; they may not replace it."""
    for hook in hooks:
        if hook(None) is not None:
            raise RuntimeError("can't replace a None gradient with a non-None value")


class _Defined:
    """Which needed slots got a gradient (torch's defined ones). All of them, ``need``, unless a
    custom Function's backward returns None for an input that needs grad: from then on, the slots
    that only such inputs reach got none (their .grad stays None, their hooks see None), found by
    planning again from the seeds and from each input a Function did give a gradient, through the
    rows other than Functions'. A slot's answer is final once the rows recorded after it have run,
    which is when the engine asks."""
    __slots__ = ("K", "tape", "R", "S", "need", "roots", "on", "given", "withheld", "cached")

    def __init__(self, K, tape, R, S, need, roots, on):
        self.K, self.tape, self.R, self.S, self.need, self.roots, self.on = K, tape, R, S, need, roots, on
        self.given, self.withheld, self.cached = [], False, None

    def gave(self, slots, withheld):
        self.given.extend(slots)
        self.withheld = self.withheld or withheld
        self.cached = None

    def mask(self):
        if not self.withheld:
            return self.need
        if self.cached is None:
            R = self.R.copy()
            for call in self.tape.pyfuncs.values():
                R[call.lo:call.hi, 1:4] = -1
            roots = np.concatenate([self.roots, np.asarray(self.given, np.int64)])
            self.cached = (self.K.plan(R, self.S, roots, self.on.copy())[2] != 0) & (self.need != 0)
        return self.cached

    def has(self, s):
        return bool(self.mask()[s])


def _function_jitted(tape, call, gbuf, need, got, check_nan):
    """A custom Function's backward on the jitted path: its output gradients come from the
    buffers (copied, in each output's dtype; None where none came), its input gradients are added
    into theirs."""
    gouts = [ops._leaf(gbuf(s).astype(m[1])) if s >= 0 and got.has(s) else None
             for s, m in zip(call.out_slots, call.out_meta)]
    grads = call.run(gouts)
    if check_nan:
        _check_function_nan(tape, call, grads)
    given = []
    for s, g in grads:
        if need[s]:  # (not an input past autograd.grad's inputs)
            b = gbuf(s)
            b += g._value
        given.append(s)
    got.gave(given, any(s >= 0 and need[s] and s not in given for s in call.in_slots))


def _check_function_nan(tape, call, grads):
    for s, g in grads:
        if _has_nan(g):
            raise _nan_error(tape, call.lo, call.in_slots.index(s))


def _deliver(tape, wanted, need, bufs, req):
    links = {}
    for s, (kind, who) in wanted.items():
        if not need[s]:
            continue
        g = bufs[s]
        dt = tape.values[s].dtype
        if g.dtype != dt:
            g = g.astype(dt)
        _route(tape, s, kind, who, g, req, links)
    return links


def _route(tape, s, kind, who, g, req, links):
    """Send the finished gradient of exported slot s on: to an older tape, a requested input or .grad."""
    if kind == "link":
        links[tape.links[s]] = g
    elif kind == "input":
        req.results[who] = _accumulate(req.results.get(who), g)
    elif kind == "leaf":
        _add_leaf_grad(req, who, g)
    else:
        _give_grad(who, g, req.create_graph)


def _give_grad(t, g, create_graph):
    """Accumulate into t.grad as torch's AccumulateGrad does (hooks on leaves first)."""
    x = t._x
    if x is not None and x.hooks:
        for hook in x.hooks:
            r = hook(g if isinstance(g, Tensor) else ops._leaf(g.copy()))
            if r is not None:
                g = r if create_graph else r._value
    with _GRAD_LOCK:
        if not isinstance(g, Tensor):
            if t._grad is None:
                t._grad = ops._leaf(g)
            else:
                t._grad._value += g
        elif t._grad is None:
            t._grad = ops.fresh_grad(g) if create_graph else ops._leaf(g._value)
        elif create_graph:
            t._grad = t._grad + g
        else:
            t._grad._value += g._value


def check_versions(tape, R, need):
    """Raise torch's error when a value that an entry about to run saved (ops' ``reads``, for its
    inputs that require grad) was changed in place after recording (in anomaly mode with its other
    hint, and blaming the entry that reads it), or when the gradient reaches a write into an expand
    (which needs an in-place write first)."""
    if tape.overlapped and any(need[s] for s in tape.overlapped):
        raise RuntimeError(ops.OVERLAP_MSG)  # torch refuses to backward through a write into an expand
    S = tape.slot_table()
    vcs = tape.vcs
    for e in np.flatnonzero(need[R[:, 4]] == 1).tolist():  # (the entries that run: interp.RUN)
        op = ops.TABLE[R[e, 0]]
        reads = set()
        for k in range(3):
            s = R[e, 1 + k]
            if s >= 0 and S[s, 1] & REQUIRES_GRAD:
                reads.update(op.reads[k])
        for r in reads:
            if r == "const":
                continue
            s = R[e, 4] if r == "out" else R[e, 1 + r]
            if s >= 0 and s in vcs and vcs[s][0] != S[s, 2]:
                v = tape.values[s]
                kind = {"float32": "FloatTensor", "float64": "DoubleTensor"}.get(v.dtype.name, "Tensor")
                p = tape.producer(s)
                origin = f"output 0 of {ops.TABLE[R[p, 0]].grad_fn}" if p >= 0 else "a leaf"
                hint = ("the backtrace further above shows the operation that failed to compute its gradient. "
                        "The variable in question was changed in there or anywhere later. Good luck!"
                        if Anomaly.enabled else
                        "enable anomaly detection to find the operation that failed to compute its gradient, "
                        "with torch.autograd.set_detect_anomaly(True, check_nan=False).")
                raise _blame(RuntimeError(
                    "one of the variables needed for gradient computation has been modified by an inplace "
                    f"operation: [torch.{kind} {list(v.shape)}], which is {origin}, is at version {vcs[s][0]}; "
                    f"expected version {S[s, 2]} instead. Hint: {hint}"), tape, R[e, 4])


# -- create_graph: the differentiable path ---------------------------------------------------------
def slot_tensor(tape, s):
    """A Tensor standing for slot s, attached to the graph so that new ops differentiate through it."""
    if s < 0:
        return None
    leaf = tape.leaves.get(s) if tape.leaves is not None else None
    if leaf is not None:
        return leaf
    if s in tape.links:
        older, os_ = tape.links[s]
        return slot_tensor(older, os_)
    flags = tape.slot_flags(s)
    v = tape.values[s]
    if flags & LEAF or not flags & REQUIRES_GRAD:
        return ops._leaf(v)
    return ops._result(v, tape, s, tape.vcs.get(s))


def _slot_tensor(tape, s, flags):
    """slot_tensor with the slot's flags at hand (the create_graph walk reads them as a list)."""
    if flags & LEAF:
        leaf = tape.leaves.get(s) if tape.leaves is not None else None
        return leaf if leaf is not None else ops._leaf(tape.values[s])
    if flags & LINK:
        return slot_tensor(tape, s)
    if not flags & REQUIRES_GRAD:
        return ops._leaf(tape.values[s])
    return ops._result(tape.values[s], tape, s, tape.vcs.get(s))


NONLEAF = REQUIRES_GRAD | LEAF | LINK


class _SlotTensors(dict):
    """slot -> the Tensor standing for it in a create_graph walk, made on first read (a hit is a
    plain dict lookup, no Python call); -1 -> None."""
    __slots__ = ("tape", "flags")

    def __init__(self, tape, flags):
        super().__init__({-1: None})
        self.tape, self.flags = tape, flags

    def __missing__(self, s):
        tape, f = self.tape, self.flags[s]
        if f & NONLEAF != REQUIRES_GRAD:
            t = self[s] = _slot_tensor(tape, s, f)
            return t
        t = self[s] = _new(Tensor)  # an intermediate result (the common case): ops._result inlined
        t._value = tape.values[s]
        t._tape = tape
        t._slot = s
        t._rg = True
        t._vc = tape.vcs.get(s)
        t._grad = t._x = None
        return t


def _function_python(tape, call, grads, wanted, needl, check_nan):
    """A custom Function's backward with create_graph: it records, so it differentiates again.
    It runs when an output is needed, even if no gradient came (torch's None, or zeros)."""
    if not any(s >= 0 and needl[s] for s in call.out_slots):
        return
    gouts = []
    for s in call.out_slots:
        g = None
        if s >= 0 and s in grads:
            g = grads[s] = plain(grads[s] if s in wanted else grads.pop(s))
            for hook in tape.hooks.get(s, ()):
                r = hook(g)
                if r is not None:
                    g = grads[s] = r
        elif s >= 0 and needl[s] and s in tape.hooks:
            _hooks_on_none(tape.hooks[s])
        gouts.append(g)
    gis = call.run(gouts)
    if check_nan:
        _check_function_nan(tape, call, gis)
    for s, g in gis:
        grads[s] = _accumulate(grads.get(s), g)


def _output_groups(tape, R):
    """{top row: (lo, hi)} of the multi-output calls with a hooked output, and their output slots."""
    tops, grouped = {}, set()
    for s, hs in tape.hooks.items():
        p = tape.producer(s) if hs else -1
        if p >= 0 and R[p, 0] in ops.MULTI_OUTPUT:
            lo, hi = output_group(R, p)
            tops[hi - 1] = (lo, hi)
            grouped.update(R[lo:hi, 4].tolist())
    return tops, grouped


def _group_hooks_python(tape, rows, lo, hi, grads, needl):
    """The hooks of one multi-output call's outputs, output by output in the order of first
    registration (None where no gradient came)."""
    outs = {rows[e][4] for e in range(lo, hi)}
    if not any(needl[o] for o in outs):
        return
    for o in [o for o in tape.hooks if o in outs]:
        hs = tape.hooks.get(o)
        if not hs:
            continue
        if o not in grads or not needl[o]:
            _hooks_on_none(hs)
            continue
        g = grads[o] = plain(grads[o])
        for hook in hs:
            h = hook(g)
            if h is not None:
                g = grads[o] = h


def _run_python(tape, seeds, req):
    K = _kernels()
    # The VJPs append to this tape while we walk it, past these views' ends or into grown
    # buffers (new bytearrays: the views keep the old ones), so the views stay as they are.
    R = tape.row_table()[0]
    S = tape.raw_slots()  # (plan reads the flags only: no dtype fill)
    for s in seeds:
        if tape.values[s] is None:  # a seed's own entry was freed by an earlier backward
            raise _blame(RuntimeError(FREED_MSG), tape, s)
    roots = np.fromiter(seeds, np.int64, len(seeds))
    status, where, need = K.plan(R, S, roots, req.on.get(tape, _EVERY))
    if status == K.ERR_FREED:
        raise _blame(RuntimeError(FREED_MSG), tape, R[where, 4])
    if tape.epoch != Global.inplace_events:
        check_versions(tape, R, need)
    grads = {s: (g if isinstance(g, Tensor) else ops._leaf(np.asarray(g, dtype=tape.values[s].dtype)
                                                            .reshape(tape.values[s].shape)))
             for s, g in seeds.items()}
    wanted = _wanted_slots(tape, req)
    # Plain Python lists: indexing NumPy arrays element by element costs more than the walk itself.
    # The rows as the tuples VJPs take, (op, a, b, c, out, i0, i1, f0), unpacked in one call.
    rows = list(ROW.iter_unpack(tape.rows[:len(R) * ROW.size]))
    needl, flags = need.tolist(), S[:, 1].tolist()
    table, function_code, hooks = ops.TABLE, ops.FUNCTION.code, tape.hooks
    sign_through, takes_negated = ops.SIGN_THROUGH, ops.TAKES_NEGATED
    cache = _SlotTensors(tape, flags)  # slot -> the Tensor standing for it, shared by the rows that read it
    group_tops, grouped = _output_groups(tape, R) if hooks else ({}, ())
    anomaly = Anomaly.enabled
    check_nan = anomaly and Anomaly.check_nan
    if anomaly:
        parent, here = _state.anomaly_parent, weakref.ref(tape)
        _note_leaves(req, tape, ((s, t) for s, (kind, t) in wanted.items() if kind == "leaf"))
    e = len(rows)
    try:
        for r in reversed(rows):
            e -= 1
            code, a, b, c, o = r[0], r[1], r[2], r[3], r[4]
            if anomaly:  # the node whose backward records from here on (torch's anomaly "parent")
                _state.anomaly_parent = (here, o)
            if code == function_code:  # its rows run as one call, from its last row
                call = tape.pyfuncs.get(e)
                if call is not None and e == call.hi - 1:
                    _function_python(tape, call, grads, wanted, needl, check_nan)
                continue
            if group_tops and e in group_tops:
                _group_hooks_python(tape, rows, *group_tops[e], grads, needl)
            g = grads.get(o)
            if g is None or needl[o] != K.RUN:
                if g is None and hooks and needl[o] and o in hooks and o not in grouped:
                    _hooks_on_none(hooks[o])
                continue
            if o not in wanted:
                del grads[o]
            op = table[code]
            sign = False
            if g.__class__ is not Tensor:  # a deferred sign or run (ops.Negated, ops.Run)
                if g.__class__ is Negated and not (hooks and o in hooks) and op in sign_through and \
                        not (a in wanted or b in wanted or c in wanted):
                    # t through a VJP that commutes with the sign, what it returns negated (no row); not
                    # for one going out: it would show NegBackward0 where torch's shows the VJP's last op
                    g, sign = g.t, True
                elif g.__class__ is not Negated or hooks and o in hooks or op not in takes_negated:
                    g = plain(g)
                    if o in grads:
                        grads[o] = g
            if hooks and o not in grouped:
                for hook in hooks.get(o, ()):
                    h = hook(g)
                    if h is not None:
                        g = grads[o] = h
            n = op.arity
            ins = (cache[a],) if n == 1 else (cache[a], cache[b]) if n == 2 else (cache[a], cache[b], cache[c])
            # (an unused operand slot is -1: zip pairs it with nothing, or with a None that is skipped)
            gis = op.vjp(g, ins, cache[o], r)
            if check_nan:
                for k, (s, gi) in enumerate(zip((a, b, c), gis)):
                    if gi is not None and s >= 0 and needl[s] and _has_nan(gi):
                        raise _nan_error(tape, e, k)
            for s, gi in zip((a, b, c), gis):
                if gi is None or s < 0 or not needl[s]:
                    continue
                if sign:
                    gi = negated(gi)
                old = grads.get(s)
                grads[s] = gi if old is None else add_grads(old, gi, s in wanted)
    except BaseException as exc:
        _blame(exc, tape, o)  # the entry whose backward (VJP, hook or Function) failed
        raise
    finally:
        if anomaly:
            _state.anomaly_parent = parent
    links = {}
    for s, (kind, who) in wanted.items():
        if s not in grads or not need[s]:
            if need[s] and kind == "leaf" and who._x is not None and who._x.hooks:
                req.gradless.append(who)
            continue
        g = plain(grads[s])
        if not g._rg and 0 in g._value.strides and g._value.size > 1:  # one number broadcast (ops._uniform)
            g = ops._leaf(np.ascontiguousarray(g._value))  # handed out: a tensor of its own, as torch's
        _route(tape, s, kind, who, g, req, links)
    if not req.retain_graph:
        _release(tape, need)
    return links
