"""tapegrad.nn.functional: losses and layers as functions, as in torch.nn.functional.

The losses are composites written in tapegrad ops (STYLE.md: few primitives); softmax and
log_softmax are rows of the op table.
"""
import warnings

import numpy as np

from .. import ops
from ..ops import _record as _records
from ..ops.results import _derived
from ..cuda.array import MIXED_MSG
from ..tensor import Tensor, _host

_REDUCTIONS = ("none", "mean", "sum")


def _reduce(loss, reduction):
    if reduction == "mean":
        return ops.mean(loss)
    if reduction == "sum":
        return ops.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"{reduction} is not a valid value for reduction")


def _const(x, like):
    """A constant (untracked) tensor in ``like``'s dtype."""
    return ops._leaf(np.asarray(x, dtype=like._value.dtype))


def linear(input, weight, bias=None):
    """``input @ weight.T + bias`` with ``weight`` of shape (out_features, in_features)."""
    x = input
    lead = tuple(x.shape[:-1])
    if x.ndim > 2:  # fold the leading dims into one batch dim
        x = ops.reshape(x, -1, x.shape[-1])
    out = ops.matmul(x, ops.t(weight))
    if x is not input:
        out = ops.reshape(out, lead + (weight.shape[0],))
    if bias is not None:
        out = out + bias
    return out


def relu(input):
    return ops.relu(input)


def tanh(input):
    return ops.tanh(input)


def sigmoid(input):
    return ops.sigmoid(input)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        dim = _implicit_dim(input, "log_softmax")
    return ops.log_softmax(input, dim, dtype=dtype)


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        dim = _implicit_dim(input, "softmax")
    return ops.softmax(input, dim, dtype=dtype)


def _implicit_dim(input, name):
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call to include dim=X "
                  "as an argument.", UserWarning, stacklevel=3)
    return 0 if input.ndim in (0, 1, 3) else 1


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    if tuple(target.shape) != tuple(input.shape):
        warnings.warn(f"Using a target size ({target.shape}) that is different to the input size ({input.shape}). "
                      "This will likely lead to incorrect results due to broadcasting. Please ensure they have "
                      "the same size.", UserWarning, stacklevel=2)
    d = input - target
    return ops.shown_as(_reduce(d * d, _legacy_reduction(size_average, reduce, reduction)), "MseLossBackward0",
                        input, target)


def _legacy_reduction(size_average, reduce, reduction):
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return ("mean" if size_average else "sum") if reduce else "none"


def _classes_last(input):
    """(N, C, d1, ...) as (N*d1*..., C); (C,) as (1, C). Returns the 2-D tensor and the batch shape."""
    if input.ndim == 1:
        return ops.unsqueeze(input, 0), ()
    if input.ndim == 2:
        return input, (input.shape[0],)
    nd = input.ndim
    moved = ops.permute(input, (0,) + tuple(range(2, nd)) + (1,))
    batch = (input.shape[0],) + tuple(input.shape[2:])
    return ops.reshape(moved, -1, input.shape[1]), batch


def _check_target(input, target, batch):
    if not isinstance(target, Tensor):
        raise TypeError(f"nll_loss(): argument 'target' must be Tensor, not {type(target).__name__}")
    if target._value.dtype.kind not in "iu":
        raise RuntimeError(f"expected scalar type Long but found {target.dtype}")
    if target.is_cuda != input.is_cuda:  # (torch's error, though the target is read on the host either way)
        raise RuntimeError(MIXED_MSG)
    if tuple(target.shape) != batch:
        if input.ndim <= 2:
            raise ValueError(f"Expected input batch_size ({batch[0] if batch else 1}) to match target batch_size "
                             f"({target.shape[0] if target.ndim else 1}).")
        raise RuntimeError(f"size mismatch (got input: {list(input.shape)}, target: {list(target.shape)})")


def _picked(logp2, target, ignore_index, weight):
    """Per sample: its class (0 where ignored) and its weight (None: all ones; 0 where ignored)."""
    n, c = logp2.shape
    dtype = logp2._value.dtype
    # (a GPU target is checked on the host, as its places are found there)
    safe, w = _picked_values(n, c, dtype, _host(target._value), ignore_index, None if weight is None else
                             _host(weight._value))
    if _records.PROGRAMS:
        # the target's values decide them: a compiled program derives them again at each replay (with
        # the same structure: where no weights were needed, an ignored sample is another program)
        unweighted = w is None

        def again(tv, wv=None):
            s, w2 = _picked_values(n, c, dtype, tv, ignore_index, wv)
            if (w2 is None) != unweighted:
                raise ValueError("nll_loss: the samples ignored differ")
            return s, w2
        inputs = (target,) if weight is None else (target, weight)
        _derived(safe, lambda *vs: again(*vs)[0], *inputs)
        if w is not None:
            _derived(w, lambda *vs: again(*vs)[1], *inputs)
    return safe, w


def _picked_values(n, c, dtype, tv, ignore_index, wv):
    t = tv.reshape(-1)
    keep = t != ignore_index
    ignored = not keep.all()
    safe = np.where(keep, t, 0) if ignored else t
    if bool(((safe < 0) | (safe >= c)).any()):
        bad = int(safe[(safe < 0) | (safe >= c)][0])
        raise IndexError(f"Target {bad} is out of bounds.")
    if wv is None and not ignored:
        return safe, None
    w = wv[safe] if wv is not None else np.ones(n, dtype)
    return safe, (w * keep).astype(dtype)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    logp2, batch = _classes_last(input)
    _check_target(input, target, batch)
    if weight is not None and weight.is_cuda != input.is_cuda:
        raise RuntimeError(MIXED_MSG)
    safe, w = _picked(logp2, target, ignore_index, weight)
    loss = ops.nll(logp2, safe, w, reduction)  # one row: NllLossBackward0, as torch's
    return ops.reshape(loss, batch) if reduction == "none" else loss


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    if reduction == "mean" and weight is None and size_average is None and reduce is None and not label_smoothing \
            and ignore_index < 0 and isinstance(target, Tensor):  # (no in-range target is ignored)
        loss = ops.cross_entropy_mean(input, target)  # one jitted pass (None: not its case)
        if loss is not None:
            return loss
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    logp = log_softmax(input, 1 if input.ndim >= 2 else 0)
    if target._value.dtype.kind == "f":
        return _cross_entropy_probs(logp, target, weight, reduction, label_smoothing)
    loss = nll_loss(logp, target, weight, ignore_index=ignore_index, reduction=reduction)
    if not label_smoothing:
        return loss
    # torch: (1 - eps) * nll + eps / C * (-sum over classes of w_c * log p_c), same reduction
    logp2, batch = _classes_last(logp)
    c = logp2.shape[1]
    wc = weight if weight is not None else None
    smooth = -ops.sum(logp2 * wc if wc is not None else logp2, 1)
    t = target._value.reshape(-1)
    keep = (t != ignore_index).astype(logp2._value.dtype)
    smooth = smooth * _const(keep, smooth)
    if reduction == "none":
        smooth = ops.reshape(smooth, batch)
    elif reduction == "sum":
        smooth = ops.sum(smooth)
    else:
        denom = weight._value[np.where(t != ignore_index, t, 0)] @ keep if weight is not None else keep.sum()
        smooth = ops.sum(smooth) / _const(denom, smooth)
    return loss * (1.0 - label_smoothing) + smooth * (label_smoothing / c)


def _cross_entropy_probs(logp, target, weight, reduction, label_smoothing):
    if tuple(target.shape) != tuple(logp.shape):
        raise RuntimeError(f"Expected target size {list(logp.shape)}, got {list(target.shape)}")
    cdim = 1 if logp.ndim >= 2 else 0
    c = logp.shape[cdim]
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / c
    terms = logp * target
    if weight is not None:
        shape = [1] * logp.ndim
        shape[cdim] = c
        terms = terms * ops.reshape(weight, shape)
    loss = -ops.sum(terms, cdim)
    if reduction == "mean":
        n = logp.numel() // c
        return ops.sum(loss) / n
    return _reduce(loss, reduction)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    return ops.leaky_relu(input, negative_slope, inplace)


def gelu(input, approximate="none"):
    return ops.gelu(input, approximate)


def softplus(input, beta=1.0, threshold=20.0):
    return ops.softplus(input, beta, threshold)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None, reduction="mean"):
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"Using a target size ({target.shape}) that is different to the input size "
                         f"({input.shape}) is deprecated. Please ensure they have the same size.")
    v = input._value
    if v.size and not ((v >= 0) & (v <= 1)).all():
        raise RuntimeError("all elements of input should be between 0 and 1")
    # torch clamps each log at -100, so a probability of exactly 0 or 1 gives a finite loss
    with np.errstate(divide="ignore"):
        loss = -(target * ops.clamp(ops.log(input), min=-100.0)
                 + (1 - target) * ops.clamp(ops.log(1 - input), min=-100.0))
    if weight is not None:
        loss = loss * weight
    return ops.shown_as(_reduce(loss, reduction), "BinaryCrossEntropyBackward0", input, target)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"Target size ({target.shape}) must be the same as input size ({input.shape})")
    # (1 - t) x + w_pos * log(1 + exp(-x)), with softplus for the smooth, stable log term
    soft = ops.softplus(-input)
    if pos_weight is not None:
        soft = soft * (1 + (pos_weight - 1) * target)
    loss = (1 - target) * input + soft
    if weight is not None:
        loss = loss * weight
    return ops.shown_as(_reduce(loss, reduction), "BinaryCrossEntropyWithLogitsBackward0", input, target)
