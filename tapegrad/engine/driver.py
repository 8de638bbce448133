"""The backward driver: runs one backward over one or more linked tapes, device-free.

``run`` walks the tapes newest first, following links into older tapes, and for each tape
either replays it on its device engine or, with ``create_graph``, walks the rows' differentiable
VJPs (``create_graph.walk``); then it hands each leaf its gradient. Around the device's replay
the driver decides what leaves the engine (``delivery.exports``), cuts the replay into segments
where a hook on a non-leaf or a custom Function's Python backward must run, checks versions and
routes the finished gradients.

A device engine is one object (``cpu_replay.load()`` for the CPU) that provides:

- ``plan(R, S, roots, on)`` -> (status, where, need) and ``leads(R, S, on)``: the planner over the
  tape's host-side row and slot tables (its marks ``RUN``, ``WANTED``, ``LEADS``; ``EVERY``, the
  ``on`` that wants every input; statuses ``OK``, ``ERR_FREED``, ``ERR_NAN``);
- ``start(tape, seeds, lslots, wanted, zeroed)`` -> a pass: the gradient buffers of one backward
  over one tape (``bufs`` by slot, ``lbufs`` for ``lslots``; zeroed when the replay runs in
  segments), with ``backward(on, release)`` -> (status, where, need, left), the whole replay in
  one call, ``keep(left)`` for what it left unfreed, and for segments ``arena(need)``,
  ``replay(lo, hi, check_nan)`` -> (status, where, k) and ``buffer(s)``;
- ``release(tape, need)``: free what a backward without retain_graph ran.

Buffers are arrays with NumPy's ``dtype``, ``astype``, ``copy``, in-place ``+=`` and ``[...] =``:
the driver hands them to leaves, hooks and Functions as Tensors' values.
"""
import numpy as np

from .. import ops
from ..tape import Anomaly, Global
from . import cpu_replay, create_graph, cuda_replay
from .delivery import accumulate, deliver, deliver_leaves, exports, give_grad, hooks_on_none, output_group
from .errors import FREED_MSG, blame, blame_leaf, check_function_nan, check_versions, nan_error, note_leaves


class Request:
    """What one backward wants: seeds per (tape, slot), and where gradients go afterwards."""

    def __init__(self, want, retain_graph, create_graph):
        self.want = want  # {(tape serial, slot): index} of requested inputs, or None: every leaf
        self.retain_graph = retain_graph
        self.create_graph = create_graph
        self.results = {}  # index -> gradient (ndarray, or Tensor with create_graph)
        self.leaf_grads = {}  # id(leaf) -> [leaf, gradient summed over its slots on every tape]
        self.last = False  # the tape now running is the last one (no older tape pending)
        self.leaf_slots = {}  # anomaly mode: id(leaf) -> (tape, slot), where its AccumulateGrad was recorded
        self.gradless = []  # leaves with hooks that were reached but got no gradient (see _Defined)
        self.on = {}  # tape -> the planner's lead marks, when only some inputs are wanted


def run(seeds, req):
    """seeds: {tape: {slot: gradient}}; walks the tapes newest first, following links."""
    engine = cpu_replay.load()  # (every tape's values live on the CPU)
    if req.want is not None:
        _mark_leads(engine, seeds, req)
    pending = dict(seeds)
    while pending:
        tape = max(pending, key=lambda t: t.serial)
        tape_seeds = pending.pop(tape)
        req.last = not pending
        if req.create_graph:
            links = create_graph.walk(engine, tape, tape_seeds, req)
        elif cuda_replay.holds_gpu_values(tape, tape_seeds):
            links = _replay(cuda_replay.load(), tape, tape_seeds, req)
        else:
            links = _replay(engine, tape, tape_seeds, req)
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
            into[slot] = accumulate(into.get(slot), g)
    # Once per leaf after every tape, so that its hooks see the whole gradient, as torch's do.
    for t, g in req.leaf_grads.values():
        try:
            give_grad(t, g, req.create_graph)
        except BaseException as exc:
            blame_leaf(exc, req, t)
            raise
    for t in req.gradless:  # torch calls a leaf's hooks with None when no gradient reached it
        if id(t) not in req.leaf_grads:
            req.leaf_grads[id(t)] = None
            hooks_on_none(t._x.hooks)


def _mark_leads(engine, seeds, req):
    """For autograd.grad and backward(inputs=...): mark the requested inputs on each tape reachable
    from the seeds (plan completes the marks with the engine's leads); a link leads when its older
    slot does, so with links the tapes' marks are completed oldest first, and again until none
    changes (a tape another thread made may link to one newer than itself)."""
    if len(seeds) == 1:
        tape = next(iter(seeds))
        if not tape.links:  # (the common case: one tape)
            on = req.on[tape] = np.zeros(tape.ns, np.int8)
            for serial, s in req.want:
                if serial == tape.serial:
                    on[s] = engine.WANTED
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
            req.on[serials[serial]][s] = engine.WANTED
    if len(tapes) > 1:
        order, total = sorted(tapes, key=lambda t: t.serial), -1
        while True:  # (marks only grow: their sum stops changing once they are complete)
            for tape in order:
                on = req.on[tape]
                for s, (older, there) in tape.links.items():
                    if req.on[older][there]:
                        on[s] |= engine.LEADS
                engine.leads(tape.row_table()[0], tape.raw_slots(), on)
            now = sum(int(req.on[tape].sum(dtype=np.int64)) for tape in order)
            if now == total:
                break
            total = now


def _replay(engine, tape, seeds, req):
    """One tape's backward on its device engine: in one call, or in segments when hooks on non-leaves,
    custom Functions or anomaly mode's NaN checks must run between rows."""
    values = tape.values
    for s in seeds:
        if values[s] is None:  # the seed's own entry was freed by an earlier backward
            raise blame(RuntimeError(FREED_MSG), tape, s)
    lslots, leaves, wanted = exports(tape, req)
    hooked = [s for s, hs in tape.hooks.items() if hs] if tape.hooks else ()
    anomaly = Anomaly.enabled
    check_nan = anomaly and Anomaly.check_nan
    segmented = hooked or tape.pyfuncs or check_nan
    tape_pass = engine.start(tape, seeds, lslots, wanted, segmented)
    on = req.on.get(tape, engine.EVERY)
    # Unless the version check below may still raise, the engine frees the entries itself.
    release = not req.retain_graph and tape.epoch == Global.inplace_events
    left = -1
    if anomaly:
        note_leaves(req, tape, zip(lslots, leaves))
    if not segmented:
        status, where, need, left = tape_pass.backward(on, release)
        got = need  # (without Functions every needed slot gets a gradient)
    else:
        status, where, need = engine.plan(tape_pass.R, tape_pass.S, tape_pass.roots, on)
        defined = _Defined(engine, tape, tape_pass.R, tape_pass.S, need, tape_pass.roots, on)
        if status == engine.OK:
            status, where = _replay_with_hooks(engine, tape_pass, tape, need, hooked, defined, check_nan)
        got = defined.mask()
    if status == engine.ERR_FREED:
        raise blame(RuntimeError(FREED_MSG), tape, tape_pass.R[where, 4])
    if status != engine.OK:
        raise RuntimeError(f"tapegrad internal error: no adjoint for entry {where} ({tape.row(where)})")
    if tape.epoch != Global.inplace_events:
        check_versions(tape, tape_pass.R, need)
    links = deliver(tape, wanted, got, tape_pass.bufs, req)
    if leaves:
        deliver_leaves(tape, lslots, leaves, tape_pass.lbufs, got, req.leaf_grads, req.last and not tape.links)
        if got is not need:
            req.gradless.extend(t for s, t in zip(lslots, leaves) if need[s] and not got[s] and t._x and t._x.hooks)
    if left >= 0:
        tape_pass.keep(left)
    elif not req.retain_graph:
        engine.release(tape, need)
    return links


def _replay_with_hooks(engine, tape_pass, tape, need, hooked, got, check_nan):
    """Replay ``tape_pass`` in segments: a hook on a non-leaf sees (and may replace) its complete
    gradient, and a custom Function's Python backward runs after the rows recorded later than its
    call. ``got`` (_Defined) learns which inputs each Function gave a gradient. With ``check_nan``
    (anomaly mode) every entry's gradients are checked as it runs."""
    R = tape_pass.R
    tape_pass.arena(need)

    def replay(lo, hi):
        status, where, k = tape_pass.replay(lo, hi, check_nan)
        if status == engine.ERR_NAN:
            raise nan_error(tape, where, k)
        return status, where

    # (top, order, bottom, what): replay rows top..hi-1, act, go on below bottom. A hook on a
    # Function's output (order 1) runs before that Function's backward (order 0) at the same top.
    # The outputs of one multi-output node (unbind, split) have their hooks run together once the
    # gradients of all of them are complete, output by output in the order of first registration.
    cuts, groups = [], set()
    for s in hooked:
        producer = tape.producer(s)
        if producer >= 0 and R[producer, 0] in ops.MULTI_OUTPUT:
            lo, hi = output_group(R, producer)
            if lo not in groups and need[R[lo:hi, 4]].any():
                groups.add(lo)
                outs = set(R[lo:hi, 4].tolist())
                cuts.append((hi, 1, hi, [o for o in hooked if o in outs]))
        elif need[s]:
            call = tape.pyfuncs.get(producer)
            top = call.hi if call is not None else producer + 1
            cuts.append((top, 1, top, [s]))
    seen = set()
    for call in tape.pyfuncs.values():
        if id(call) not in seen and any(s >= 0 and need[s] == engine.RUN for s in call.out_slots):
            seen.add(id(call))
            cuts.append((call.hi, 0, call.lo, call))
    cuts.sort(key=lambda c: (c[0], c[1]), reverse=True)
    hi = R.shape[0]
    for top, order, bottom, what in cuts:
        status, where = replay(top, hi)
        if status != engine.OK:
            return status, where
        if order:
            for s in what:
                hs = tape.hooks.get(s)
                if not hs:
                    continue
                try:  # a hook on a tensor runs as part of its node, as in torch
                    if not got.has(s):
                        hooks_on_none(hs)
                        continue
                    g = tape_pass.buffer(s)
                    for hook in hs:
                        r = hook(ops._leaf(g.copy()))
                        if r is not None:
                            g[...] = r._value
                except BaseException as exc:
                    blame(exc, tape, s)
                    raise
        else:
            try:
                _function_replayed(tape, what, tape_pass.buffer, need, got, check_nan)
            except BaseException as exc:
                blame(exc, tape, R[what.lo, 4])
                raise
        hi = bottom
    return replay(0, hi)


class _Defined:
    """Which needed slots got a gradient (torch's defined ones). All of them, ``need``, unless a
    custom Function's backward returns None for an input that needs grad: from then on, the slots
    that only such inputs reach got none (their .grad stays None, their hooks see None), found by
    planning again from the seeds and from each input a Function did give a gradient, through the
    rows other than Functions'. A slot's answer is final once the rows recorded after it have run,
    which is when the driver asks."""
    __slots__ = ("engine", "tape", "R", "S", "need", "roots", "on", "given", "withheld", "cached")

    def __init__(self, engine, tape, R, S, need, roots, on):
        self.engine, self.tape, self.R, self.S, self.need, self.roots, self.on = engine, tape, R, S, need, roots, on
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
            self.cached = (self.engine.plan(R, self.S, roots, self.on.copy())[2] != 0) & (self.need != 0)
        return self.cached

    def has(self, s):
        return bool(self.mask()[s])


def _function_replayed(tape, call, gbuf, need, got, check_nan):
    """A custom Function's backward between two replay segments: its output gradients come from the
    buffers (copied, in each output's dtype; None where none came), its input gradients are added
    into theirs."""
    gouts = [ops._leaf(gbuf(s).astype(m[1])) if s >= 0 and got.has(s) else None
             for s, m in zip(call.out_slots, call.out_meta)]
    grads = call.run(gouts)
    if check_nan:
        check_function_nan(tape, call, grads)
    given = []
    for s, g in grads:
        if need[s]:  # (not an input past autograd.grad's inputs)
            b = gbuf(s)
            b += g._value
        given.append(s)
    got.gave(given, any(s >= 0 and need[s] and s not in given for s in call.in_slots))
