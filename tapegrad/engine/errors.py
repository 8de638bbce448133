"""The errors a backward raises, and the node each is blamed on: a value freed by an earlier
backward, a saved value changed in place since it was recorded, and in anomaly mode
(``tape.Anomaly``) a NaN in a gradient. An error raised in backward carries the node it arose
in (``blame``), for autograd's report of that node's forward traceback."""
import numpy as np

from .. import ops
from ..ops import Negated
from ..tape import REQUIRES_GRAD, Anomaly
from ..tensor import Tensor

FREED_MSG = ("Trying to backward through the graph a second time (or directly access saved tensors after "
             "they have already been freed). Saved intermediate values of the graph are freed when you call "
             ".backward() or autograd.grad(). Specify retain_graph=True if you need to backward through the "
             "graph a second time or if you need to access saved tensors after calling backward.")


def blame(exc, tape, slot):
    """Anomaly mode: tag an error raised in backward with the node it arose in (the entry that made
    ``slot``, or the leaf at ``slot``): autograd warns with that node's forward traceback."""
    if Anomaly.enabled:
        try:
            exc.anomaly_node = (tape, slot)
        except AttributeError:  # an exception type that takes no attributes: reported without its node
            pass
    return exc


def blame_leaf(exc, req, t):
    """blame for an error in a leaf's hooks (torch's AccumulateGrad)."""
    where = req.leaf_slots.get(id(t))
    if where is not None:
        blame(exc, *where)
    elif Anomaly.enabled:
        try:
            exc.anomaly_node = None  # a leaf with no recorded slot: no forward information
        except AttributeError:
            pass


def note_leaves(req, tape, pairs):
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


def nan_error(tape, e, k):
    return blame(RuntimeError(f"Function '{_entry_name(tape, e)}' returned nan values in its {k}th output."),
                 tape, tape.row(e)[4])


def has_nan(g):
    """Whether gradient g (a Tensor, ndarray or a deferred Negated or Run) holds a NaN."""
    while g.__class__ is Negated or g.__class__ is ops.Run:
        g = g.t if g.__class__ is Negated else g.g
    v = g._value if isinstance(g, Tensor) else g
    return v.dtype.kind == "f" and bool(np.isnan(v).any())


def check_function_nan(tape, call, grads):
    for s, g in grads:
        if has_nan(g):
            raise nan_error(tape, call.lo, call.in_slots.index(s))


def check_versions(tape, R, need):
    """Raise torch's error when a value that an entry about to run saved (ops' ``reads``, for its
    inputs that require grad) was changed in place after recording (in anomaly mode with its other
    hint, and blaming the entry that reads it), or when the gradient reaches a write into an expand
    (which needs an in-place write first)."""
    if tape.overlapped and any(need[s] for s in tape.overlapped):
        raise RuntimeError(ops.OVERLAP_MSG)  # torch refuses to backward through a write into an expand
    S = tape.slot_table()
    vcs = tape.vcs
    for e in np.flatnonzero(need[R[:, 4]] == 1).tolist():  # (the entries that run: the planner's RUN)
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
                raise blame(RuntimeError(
                    "one of the variables needed for gradient computation has been modified by an inplace "
                    f"operation: [torch.{kind} {list(v.shape)}], which is {origin}, is at version {vcs[s][0]}; "
                    f"expected version {S[s, 2]} instead. Hint: {hint}"), tape, R[e, 4])
