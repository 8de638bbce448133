"""Where a tape's gradients go once a backward has them: the exported slots (leaves, requested
inputs, retained grads, links into older tapes), routing each finished gradient on, and
accumulating into ``.grad`` as torch's AccumulateGrad does, hooks first."""
import threading

from .. import ops
from ..tensor import Tensor
from ..tensor import _new

# Backwards in several threads may reach one leaf: its .grad is read, added to and written under
# this lock (torch's AccumulateGrad holds a mutex too), so no thread's gradient is lost.
GRAD_LOCK = threading.Lock()


def exports(tape, req):
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


def wanted_slots(tape, req):
    """``exports`` as one dict {slot: (kind, who)} (a leaf is never retained nor a link)."""
    lslots, leaves, out = exports(tape, req)
    for s, t in zip(lslots, leaves):
        out[s] = ("leaf", t)
    return out


def accumulate(old, g):
    if old is None:
        return g
    return old + g


def deliver(tape, wanted, need, bufs, req):
    """Route the gradient buffers of the needed exported slots, each in its slot's dtype; returns
    {(older tape, slot): gradient} for the links."""
    links = {}
    for s, (kind, who) in wanted.items():
        if not need[s]:
            continue
        g = bufs[s]
        dt = tape.values[s].dtype
        if g.dtype != dt:
            g = g.astype(dt)
        route(tape, s, kind, who, g, req, links)
    return links


def route(tape, s, kind, who, g, req, links):
    """Send the finished gradient of exported slot s on: to an older tape, a requested input or .grad."""
    if kind == "link":
        links[tape.links[s]] = g
    elif kind == "input":
        req.results[who] = accumulate(req.results.get(who), g)
    elif kind == "leaf":
        entry = req.leaf_grads.get(id(who))
        if entry is None:
            req.leaf_grads[id(who)] = [who, g]
        else:
            entry[1] = entry[1] + g
    else:
        give_grad(who, g, req.create_graph)


def give_grad(t, g, create_graph):
    """Accumulate into t.grad as torch's AccumulateGrad does (hooks on leaves first)."""
    x = t._x
    if x is not None and x.hooks:
        for hook in x.hooks:
            r = hook(g if isinstance(g, Tensor) else ops._leaf(g.copy()))
            if r is not None:
                g = r if create_graph else r._value
    with GRAD_LOCK:
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


def deliver_leaves(tape, lslots, leaves, lbufs, need, leaf_grads, last):
    """Collect each needed leaf's gradient in ``leaf_grads``, in the leaf's dtype: the driver hands
    them out once every tape is done. On the ``last`` tape a leaf without hooks gets it at once
    (what give_grad would do: nothing can add to it later, and no hook can see the difference)."""
    need = memoryview(need)  # indexing it gives Python bools, 3x faster than a NumPy scalar
    values = tape.values
    with GRAD_LOCK:
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


def hooks_on_none(hooks):
    """torch runs the hooks of a tensor that got no gradient with None; they may not replace it."""
    for hook in hooks:
        if hook(None) is not None:
            raise RuntimeError("can't replace a None gradient with a non-None value")


def output_group(R, e):
    """Rows lo..hi-1 of the multi-output call that row e belongs to (its rows are consecutive, on
    one input, with their output index in i1)."""
    lo = e - int(R[e, 6])
    hi, n = e + 1, R.shape[0]
    while hi < n and R[hi, 0] == R[e, 0] and R[hi, 1] == R[e, 1] and R[hi, 6] == R[hi - 1, 6] + 1:
        hi += 1
    return lo, hi
