"""The create_graph walk: a backward whose gradients are Tensors recorded onto the current tape,
so that they differentiate again. Each row's differentiable VJP (``ops``) runs in Python, with
the sign and run algebra (``Negated``, ``Run``) deferring what the next VJP can absorb; hooks,
custom Functions and the NaN checks of anomaly mode run as the walk reaches them. The walk is
device-free: the VJPs' ops run on the device the values live on, and the device engine plans
the walk and frees what it ran."""
import weakref

import numpy as np

from .. import ops
from ..ops import Negated, add_grads, negated, plain
from ..tape import LEAF, LINK, REQUIRES_GRAD, ROW, Anomaly, Global, _state
from ..tensor import DeviceArray, Tensor
from ..tensor import _new
from .delivery import accumulate, hooks_on_none, output_group, route, wanted_slots
from .errors import FREED_MSG, blame, check_function_nan, check_versions, has_nan, nan_error, note_leaves

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
            hooks_on_none(tape.hooks[s])
        gouts.append(g)
    gis = call.run(gouts)
    if check_nan:
        check_function_nan(tape, call, gis)
    for s, g in gis:
        grads[s] = accumulate(grads.get(s), g)


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
            hooks_on_none(hs)
            continue
        g = grads[o] = plain(grads[o])
        for hook in hs:
            h = hook(g)
            if h is not None:
                g = grads[o] = h


def _seed(g, v):
    """A seed as a tensor like the value v it seeds: its dtype, shape and device."""
    if g.__class__ is DeviceArray:
        return ops._leaf(g)
    t = ops._leaf(np.asarray(g, dtype=v.dtype).reshape(v.shape))
    return t if v.__class__ is not DeviceArray else ops.to_device(t, "cuda")


def walk(engine, tape, seeds, req):
    """Run the backward of one tape from its seeds {slot: gradient}, on ``engine`` (the device
    engine that plans it and frees what it ran); returns {(older tape, slot): gradient} for the
    links."""
    with np.errstate(all="ignore"):  # the VJPs' ops: inf and nan as torch gives them, without NumPy's warnings
        return _walk(engine, tape, seeds, req)


def _walk(engine, tape, seeds, req):
    # The VJPs append to this tape while we walk it, past these views' ends or into grown
    # buffers (new bytearrays: the views keep the old ones), so the views stay as they are.
    R = tape.row_table()[0]
    S = tape.raw_slots()  # (plan reads the flags only: no dtype fill)
    for s in seeds:
        if tape.values[s] is None:  # a seed's own entry was freed by an earlier backward
            raise blame(RuntimeError(FREED_MSG), tape, s)
    roots = np.fromiter(seeds, np.int64, len(seeds))
    status, where, need = engine.plan(R, S, roots, req.on.get(tape, engine.EVERY))
    if status == engine.ERR_FREED:
        raise blame(RuntimeError(FREED_MSG), tape, R[where, 4])
    if tape.epoch != Global.inplace_events:
        check_versions(tape, R, need)
    grads = {s: (g if isinstance(g, Tensor) else _seed(g, tape.values[s])) for s, g in seeds.items()}
    wanted = wanted_slots(tape, req)
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
        note_leaves(req, tape, ((s, t) for s, (kind, t) in wanted.items() if kind == "leaf"))
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
            if g is None or needl[o] != engine.RUN:
                if g is None and hooks and needl[o] and o in hooks and o not in grouped:
                    hooks_on_none(hooks[o])
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
                    if gi is not None and s >= 0 and needl[s] and has_nan(gi):
                        raise nan_error(tape, e, k)
            for s, gi in zip((a, b, c), gis):
                if gi is None or s < 0 or not needl[s]:
                    continue
                if sign:
                    gi = negated(gi)
                old = grads.get(s)
                grads[s] = gi if old is None else add_grads(old, gi, s in wanted)
    except BaseException as exc:
        blame(exc, tape, o)  # the entry whose backward (VJP, hook or Function) failed
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
        route(tape, s, kind, who, g, req, links)
    if not req.retain_graph:
        engine.release(tape, need)
    return links
