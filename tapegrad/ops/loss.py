"""The negative log-likelihood as one row, and cross-entropy's common case in one jitted pass."""
import math

import numpy as np

from ..cuda import array as cuda_array
from ..tape import LEAF
from ..tensor import leaf as _leaf
from . import _record as _records
from ._record import record_unary as _unary
from .algebra import _scatter_flat
from .attrs import Bool, Float, Int
from .elementwise import BACKWARD_OP_ATTRS, _backward_op_vjp
from .reduce import LOG_SOFTMAX
from .results import _derived, _note_record, _record, _result
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


def _nll_replay(ins, i0, i1, f0, shape, dtype):
    lv, pos, w = ins
    if i1 == FUSED:
        return _fused_value(lv, pos, f0)
    if i1 == WEIGHTED_MEAN:
        scale = _mean_scale(w)
        return _nll_value(lv, pos, w, i0, scale), scale  # (the row's f0 at this replay: its adjoint reads it)
    return _nll_value(lv, pos, w, i0, f0)


# nll_loss (and cross_entropy after log_softmax) as one row: b holds the flat position of each
# sample's target in the (N, C) log-probabilities, c the per-sample weights (none: ones); i0 = 1
# for a reduced (scalar) loss, whose sum is scaled by f0 (1 / total weight for 'mean'). i1 says how
# the sum was made, for a compiled program's replay: in the row's dtype scaled by f0; in float64
# (cross_entropy_mean's FUSED pass); or scaled by 1 / the weights' sum, which come from the target's
# values (WEIGHTED_MEAN: f0 is recomputed).
FUSED, WEIGHTED_MEAN = 1, 2
NLL = row("nll_loss", "NllLossBackward0", 3, None, "adj_nll", _nll_vjp, reads=(0, 1, 2),
          attrs=(Bool("reduced"), Int("sum"), Float("scale")), replay=_nll_replay, gpu=True)
# (torch's node saves the target and weights, which this row holds in its gradient's scatter: 'const')
NLL_BACKWARD = row("nll_loss_backward", "NllLossBackwardBackward0", 2, None, "adj_backward_op", _backward_op_vjp,
                   reads=("const",), attrs=BACKWARD_OP_ATTRS, replay=lambda ins, i0, i1, f0, shape, dtype: ins[0],
                   gpu=True)


def nll(logp2, target, weight=None, reduction="mean"):
    """The negative log-likelihood of (N, C) log-probabilities at class indices ``target`` (an int
    array (N,), in range), each sample weighted by ``weight`` ((N,) array, None for ones): one
    row, torch's NllLossBackward0 (nn.functional.nll_loss and cross_entropy build on it)."""
    lv = logp2._value
    n, c = lv.shape
    # (target and weight come from tensors' values: a compiled program derives them again, and so these)
    pos = _derived(_positions(target, n, c), lambda t: _positions(t, n, c), target)
    w = None if weight is None else np.ascontiguousarray(weight, dtype=lv.dtype)
    if w is not None and w is not weight:
        _derived(w, lambda v: np.ascontiguousarray(v, dtype=lv.dtype), weight)
    weighted = reduction == "mean" and w is not None
    scale = _mean_scale(w) if weighted else _inverse(n) if reduction == "mean" else 1.0
    if lv.__class__ is cuda_array.DeviceArray:  # (found on the host: the targets' places and weights go over)
        pos, w = cuda_array.to_device(pos), None if w is None else cuda_array.to_device(w)
    if reduction == "none":
        return _record(NLL, _nll_value(lv, pos, w, False, 1.0), logp2, pos, w)
    return _record(NLL, _nll_value(lv, pos, w, True, scale), logp2, pos, w, i0=1, i1=WEIGHTED_MEAN if weighted else 0,
                   f0=scale)


def _positions(target, n, c):
    return np.arange(n, dtype=np.int64) * c + target.astype(np.int64, copy=False)


def _mean_scale(w):
    return _inverse(float(w.sum()))


def _inverse(total):
    return 1.0 / total if total else math.inf  # torch: nan when every sample is ignored


def _nll_value(lv, pos, w, reduced, scale):
    if lv.__class__ is cuda_array.DeviceArray:
        return cuda_array.nll(lv, pos, w, reduced, scale)
    picked = np.ascontiguousarray(lv).reshape(-1)[pos]
    terms = -picked if w is None else -(picked * w)
    if not reduced:
        return terms
    with np.errstate(invalid="ignore"):
        return np.asarray(terms.sum() * scale, dtype=lv.dtype)


def _fused_value(lv, pos, scale):
    """xent_forward's loss from its log-probabilities: the picked ones subtracted from 0.0 one by one
    in float64, as its loop does (accumulate is sequential: no pairwise sum)."""
    picked = lv.reshape(-1)[pos].astype(np.float64)
    total = np.subtract.accumulate(np.concatenate((np.zeros(1), picked)))[-1]
    return np.asarray(total * scale, lv.dtype)


_XENT = []  # jit.forward.xent_forward, imported on first use


def cross_entropy_mean(x, target):
    """nn.functional.cross_entropy(x, target) in its common case: (N, C) float32/64 logits, N class
    indices all in range, mean reduction. log_softmax and the nll in one jitted pass (NumPy takes
    ~15 small calls, W2's largest non-GEMM forward cost), recorded as the same two rows as the
    general path. None when not that case (the caller takes the general path)."""
    xv, tv = x._value, target._value
    if xv.ndim != 2 or xv.dtype.char not in "fd" or tv.shape != xv.shape[:1] or tv.dtype.kind not in "iu" \
            or not xv.size or xv.__class__ is cuda_array.DeviceArray:  # (the GPU: the general path's kernels)
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
    lp = _unary(LOG_SOFTMAX, x, logp, i0=1, i1=1)  # (i1: the jitted pass at any size, as here)
    if _records.PROGRAMS:  # a compiled program finds the targets' places again (out of range: not this path)
        _derived(pos, lambda t: _in_range(_positions(t, *xv.shape), t, xv.shape[1]), target)
    if not lp._rg:
        if _records.PROGRAMS:
            t = _leaf(value)
            _note_record(NLL, lp, pos, None, t, 1, FUSED, scale)
            return t
        return _leaf(value)
    tape = lp._tape  # the recording tape: _record's checks, done
    b = tape.new_slot(pos, LEAF, None)
    return _result(value, tape, tape.push(NLL.code, lp._slot, b, -1, 1, FUSED, scale, value, None), None)


def _in_range(pos, t, c):
    if t.size and (t.min() < 0 or t.max() >= c):
        raise IndexError("a target out of range: cross_entropy takes its general path")
    return pos


_INT64 = np.dtype(np.int64)
