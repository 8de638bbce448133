"""The negative log-likelihood as one row, and cross-entropy's common case in one jitted pass."""
import math

import numpy as np

from ..tape import LEAF
from ..tensor import leaf as _leaf
from ._record import record_unary as _unary
from .algebra import _scatter_flat
from .attrs import Bool, Float
from .elementwise import BACKWARD_OP_ATTRS, _backward_op_vjp
from .reduce import LOG_SOFTMAX
from .results import _record, _result
from .shape import reshape
from .spec import row
from .sums import expand


def _nll_vjp(g, i, o, r):
    # torch's nll_loss_backward: -g (times the weights) at each target, as an op that takes the
    # log-probabilities too (see THRESHOLD_BACKWARD)
    logp, pos, w = i
    gi = g if r[5] == 0 else expand(reshape(g * r[7], (1,)), tuple(pos.shape))
    if w is not None:
        gi = gi * w
    out = _scatter_flat(-gi, pos, tuple(logp.shape))  # (negated before the scatter: its zeros stay +0.0)
    return (_record(NLL_BACKWARD, out._value, out, logp, i0=2), None, None)


# nll_loss (and cross_entropy after log_softmax) as one row: b holds the flat position of each
# sample's target in the (N, C) log-probabilities, c the per-sample weights (none: ones); i0 = 1
# for a reduced (scalar) loss, whose sum is scaled by f0 (1 / total weight for 'mean').
NLL = row("nll_loss", "NllLossBackward0", 3, None, "adj_nll", _nll_vjp, reads=(0, 1, 2),
          attrs=(Bool("reduced"), None, Float("scale")))
# (torch's node saves the target and weights, which this row holds in its gradient's scatter: 'const')
NLL_BACKWARD = row("nll_loss_backward", "NllLossBackwardBackward0", 2, None, "adj_backward_op", _backward_op_vjp,
                   reads=("const",), attrs=BACKWARD_OP_ATTRS)


def nll(logp2, target, weight=None, reduction="mean"):
    """The negative log-likelihood of (N, C) log-probabilities at class indices ``target`` (an int
    array (N,), in range), each sample weighted by ``weight`` ((N,) array, None for ones): one
    row, torch's NllLossBackward0 (nn.functional.nll_loss and cross_entropy build on it)."""
    lv = logp2._value
    n, c = lv.shape
    pos = np.arange(n, dtype=np.int64) * c + target.astype(np.int64, copy=False)
    picked = np.ascontiguousarray(lv).reshape(-1)[pos]
    w = None if weight is None else np.ascontiguousarray(weight, dtype=lv.dtype)
    terms = -picked if w is None else -(picked * w)
    if reduction == "none":
        return _record(NLL, terms, logp2, pos, w)
    total = (n if w is None else float(w.sum())) if reduction == "mean" else 1.0
    scale = 1.0 / total if total else math.inf  # torch: nan when every sample is ignored
    with np.errstate(invalid="ignore"):
        value = np.asarray(terms.sum() * scale, dtype=lv.dtype)
    return _record(NLL, value, logp2, pos, w, i0=1, f0=scale)


_XENT = []  # jit.forward.xent_forward, imported on first use


def cross_entropy_mean(x, target):
    """nn.functional.cross_entropy(x, target) in its common case: (N, C) float32/64 logits, N class
    indices all in range, mean reduction. log_softmax and the nll in one jitted pass (NumPy takes
    ~15 small calls, W2's largest non-GEMM forward cost), recorded as the same two rows as the
    general path. None when not that case (the caller takes the general path)."""
    xv, tv = x._value, target._value
    if xv.ndim != 2 or xv.dtype.char not in "fd" or tv.shape != xv.shape[:1] or tv.dtype.kind not in "iu" \
            or not xv.size:
        return None
    if not _XENT:
        from ..jit.forward import xent_forward
        _XENT.append(xent_forward)
    if not xv.flags.c_contiguous:
        xv = np.ascontiguousarray(xv)
    logp, pos, total, ok = _XENT[0](xv, tv if tv.dtype is _INT64 and tv.flags.c_contiguous else
                                    np.ascontiguousarray(tv, np.int64))
    if not ok:
        return None
    scale = 1.0 / xv.shape[0]
    value = np.asarray(total * scale, xv.dtype)
    lp = _unary(LOG_SOFTMAX, x, logp, i0=1)
    if not lp._rg:
        return _leaf(value)
    tape = lp._tape  # the recording tape: _record's checks, done
    b = tape.new_slot(pos, LEAF, None)
    return _result(value, tape, tape.push(NLL.code, lp._slot, b, -1, 1, 0, scale, value, None), None)


_INT64 = np.dtype(np.int64)
