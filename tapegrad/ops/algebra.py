"""The create_graph walk's gradient algebra (engine.create_graph.walk): a negation it defers
(``Negated``), a gradient that is zeros but for one contiguous run (``Run``), and the rows they
become when recorded: neg, the flat gathers and scatters that indexing's gradients are, and
add_run."""
import math

import numpy as np

from ..cuda import array
from ..cuda.array import DeviceArray
from ..tape import _state, current_tape
from ..tensor import leaf as _leaf
from ._record import record_unary as _unary
from .attrs import Float, Int
from .results import _result, _unary_with_index
from .shape import reshape
from .spec import elementwise, row


class Negated:
    """The gradient -t of a tracked t, its neg row not recorded: the create_graph walk
    (engine.create_graph.walk) hands t to a VJP that commutes with the sign (SIGN_THROUGH) and
    negates what comes out, or subtracts t where it accumulates, and records the neg only where
    neither can take it. A sign flip is exact, so the values are torch's bit for bit (W4's
    Rosenbrock: the negations of sub's and rsub's VJPs cost no rows)."""
    __slots__ = ("t",)

    def __init__(self, t):
        self.t = t


def negated(g):
    """-g in a VJP (neg, sub, rsub): unrecorded for a tracked g, -(-t) is t."""
    if g.__class__ is Negated:
        return g.t
    return Negated(g) if g._rg else -g


class Run:
    """The gradient of x from a contiguous run of it (x[1:]): zeros of ``shape`` holding g (a Tensor
    or Negated) from flat offset ``off``, not yet recorded. Added to x's other gradient it is one
    add_run row, where a scatter would write a zeroed copy of x and an add read it again (W4's
    x[:-1] and x[1:]); alone it becomes that scatter."""
    __slots__ = ("g", "off", "shape")

    def __init__(self, g, off, shape):
        self.g, self.off, self.shape = g, off, shape


def plain(g):
    """A gradient of the create_graph walk as a Tensor: a Negated one gets its neg row, a Run its scatter."""
    if g.__class__ is Negated:
        return neg(g.t)
    if g.__class__ is Run:
        return _scatter_run(plain(g.g), g.off, g.shape)
    return g


NEG = elementwise("neg", "NegBackward0", np.negative, "-g", vjp=lambda g, i, o, r: (negated(g),), fwd="-x",
                 gpu=True)


def neg(x):
    return _unary(NEG, x, np.negative(x._value))


def _gather_vjp(g, i, o, r):
    if r[2] < 0:  # a contiguous run of the input, from flat offset i0 (g may be Negated: TAKES_NEGATED)
        return (Run(g, r[5], i[0].shape), None)
    return (_scatter_flat(plain(g), i[1], i[0].shape), None)


def _scatter_vjp(g, i, o, r):
    if r[2] < 0:
        return (_gather_run(g, r[5], tuple(i[0].shape)), None)
    return (reshape(_gather_flat(g, i[1], tuple(i[0].shape)), i[0].shape), None)


def gather_row(name, grad_fn, reads=(), output=False, static_maps=True, gpu=None):
    """A row whose result picks elements of its input a (getitem and kin). b is an int64 index map
    from each output element to its flat source index; or b = -1 for one contiguous run of a
    C-ordered input (x[1:], x[i] of a matrix) from flat offset i0: no map to build, and the adjoints
    copy a block. ``output``: one of several outputs of one call, its index in i1; ``static_maps``:
    the map comes from a Python key and shapes, not from a tensor's values; ``gpu``: spec.py's."""
    attrs = (Int("offset"), Int("output")) if output else (Int("offset"),)
    return row(name, grad_fn, 2, None, "adj_getitem", _gather_vjp, reads, attrs=attrs, inputs=1, static_maps=static_maps,
               replay=_gather_replay, gpu=gpu)


def _gather_replay(ins, i0, i1, f0, shape, dtype):
    """A gather row's value: a's elements at map b, or the run from flat offset i0 (a copy: where
    eager made a view, a compiled program refuses writes that the copy would miss)."""
    flat = ins[0].reshape(-1)
    if ins[1] is not None:
        return flat[ins[1]].reshape(shape)
    return flat[i0:i0 + math.prod(shape)].reshape(shape).copy()


INDEX = gather_row("index", "IndexBackward0", reads=(1,), static_maps=False, gpu=True)  # (torch saves the indices)
# _gather_vjp's gradient, zeros with g at an index map's positions or at a run from flat offset i0
SCATTER_FLAT = row("scatter_flat", "IndexPutBackward0", 2, None, "adj_scatter_flat", _scatter_vjp,
                   attrs=(Int("offset"),), inputs=1, gpu=True)


def _gather_flat(g, idx, shape):
    """g.flatten()[idx] as a tensor of ``shape`` (differentiable in g)."""
    value = g._value.reshape(-1)[idx._value].reshape(shape)  # (a fresh C-ordered copy)
    return _unary_with_index(INDEX, g, value, idx._value) if g._rg and _state.grad_enabled else _leaf(value)


def _scatter_flat(g, idx, shape):
    """zeros(shape) with g added at the flat positions idx (differentiable in g)."""
    n = 1
    for s in shape:
        n *= s
    out = np.zeros_like(g._value, shape=(n,))  # (on g's device)
    np.add.at(out, idx._value, g._value.reshape(-1))
    out = out.reshape(tuple(shape))
    return _unary_with_index(SCATTER_FLAT, g, out, idx._value) if g._rg and _state.grad_enabled else _leaf(out)


def _gather_run(g, off, shape):
    """g.flatten()[off:off + size] as a tensor of ``shape`` (differentiable in g; a copy, as _gather_flat's)."""
    n = 1
    for s in shape:
        n *= s
    value = g._value.reshape(-1)[off:off + n].reshape(shape).copy()
    if g._rg and _state.grad_enabled:
        tape = current_tape()
        return _result(value, tape, tape.push(INDEX.code, tape.slot_of(g), -1, -1, off, 0, 0.0, value, None), None)
    return _leaf(value)


def _scatter_run(g, off, shape):
    """zeros(shape) with g written at flat positions off, off + 1, ... (differentiable in g)."""
    gv = g._value
    out = np.empty_like(gv, shape=shape)  # (on g's device)
    flat, end = out.reshape(-1), off + gv.size
    flat[:off] = 0  # (zeroing only around the run: np.zeros and a copy would write it twice)
    flat[end:] = 0
    flat[off:end] = gv.reshape(-1)
    if g._rg and _state.grad_enabled:
        tape = current_tape()
        return _result(out, tape, tape.push(SCATTER_FLAT.code, tape.slot_of(g), -1, -1, off, 0, 0.0, out, None), None)
    return _leaf(out)


def _add_run_vjp(g, i, o, r):
    a, b = i
    ga = g if a._value.size == o._value.size else _gather_run(g, r[6], tuple(a.shape))
    gb = _gather_run(g, r[5], tuple(b.shape))
    return (ga, gb if r[7] > 0 else negated(gb))


# a + f0 * scatter(b at flat offset i0), f0 = 1 or -1, a smaller than the output placed at flat
# offset i1: the create_graph walk's sum of x's gradient and a Run (Run, add_run); shown as
# the add it stands for
ADD_RUN = row("add_run", "AddBackward0", 2, None, "adj_add_run", _add_run_vjp,
              attrs=(Int("offset"), Int("base_offset"), Float("sign")), gpu=True)


def add_run(base, run):
    """base + the Run ``run`` (a row add_run): base's values, plus or minus run.g's at the run.
    base may be an unsigned Run itself (from flat offset i1): x's gradients from two slices (W4's
    x[1:] and x[:-1]) then cost one row. Each element is torch's sum of the scatters bit for bit:
    base alone gives base + 0.0 (-0.0 + 0.0 is 0.0), the run alone 0.0 + t or 0.0 - t, both
    base + t or base - t (for base + (-t))."""
    g, sign = (run.g.t, -1.0) if run.g.__class__ is Negated else (run.g, 1.0)
    a, i1 = (base.g, base.off) if base.__class__ is Run else (base, 0)
    gv, av = g._value.reshape(-1), a._value.reshape(-1)  # (C order: a copy of a non-contiguous base)
    off, end, hi = run.off, run.off + gv.size, i1 + av.size
    if gv.__class__ is DeviceArray:  # (slices of device arrays are copies: one kernel writes the regions)
        return _add_run_result(a, g, array.add_run(av, gv, off, i1, sign, run.shape), off, i1, sign)
    lo, up = max(i1, off), min(hi, end)  # where both are
    # Each region in one pass, a region of one element (each end of W4's runs) as NumPy scalars: a
    # ufunc call costs about 1 us, and zeros then a copy then += wrote the base twice (9 us on W4).
    n = av.size if a is base else math.prod(run.shape)
    gap = min(i1, off) > 0 or max(hi, end) < n or lo > up  # some place neither covers stays 0.0
    out = (np.zeros if gap else np.empty)(run.shape, av.dtype)
    dst = out.reshape(-1)
    for l, u in ((i1, min(hi, off)), (max(i1, end), hi)):  # base alone, + 0.0: -0.0 becomes 0.0
        if u - l == 1:
            dst[l] = av[l - i1] + 0.0
        elif u > l:
            np.add(av[l - i1:u - i1], 0.0, out=dst[l:u])
    add = np.add if sign > 0 else np.subtract
    if up > lo:
        add(av[lo - i1:up - i1], gv[lo - off:up - off], out=dst[lo:up])
    for l, u in ((off, min(end, i1)), (max(off, hi), end)):  # the run alone: 0.0 + g or 0.0 - g
        if u - l == 1:
            dst[l] = 0.0 + gv[l - off] if sign > 0 else 0.0 - gv[l - off]
        elif u > l:
            add(0.0, gv[l - off:u - off], out=dst[l:u])
    return _add_run_result(a, g, out, off, i1, sign)


def _add_run_result(a, g, out, off, i1, sign):
    if (a._rg or g._rg) and _state.grad_enabled:
        tape = current_tape()
        sa, sb = tape.slot_of(a), tape.slot_of(g)
        return _result(out, tape, tape.push(ADD_RUN.code, sa, sb, -1, off, i1, sign, out, None), None)
    return _leaf(out)
