"""The CUDA engine as the driver sees it (``load()``): a tape that holds GPU values replays backward
on the device, behind the interface that ``engine.driver`` documents.

The CPU engine's planner marks the rows to run on the host-side row and slot tables; the gradients
of every needed slot live in one device buffer per backward (the arena, zeroed by one launch), and
a host loop launches each row's adjoint kernels over it in reverse, without waiting for the device:
the elementwise rows' kernels generated from their formulas (cuda/_generated.py), the others'
below, by the row's kernel name. A host value on such a tape (before a ``.cuda()`` copy) is copied
to the device when an adjoint reads it, and its gradient back to the host when it is delivered.
"""
import numpy as np

from .. import formula, ops
from ..cuda import array, launch, runtime
from ..cuda.array import DeviceArray
from ..ops.attrs import FloatBits, Mask, Perm
from . import cpu_replay

_ENGINE = []


def load():
    if not _ENGINE:
        _ENGINE.append(CudaEngine(cpu_replay.load()))
    return _ENGINE[0]


def holds_gpu_values(tape, seeds):
    """Whether ``tape`` replays on the CUDA engine: a copy between devices was recorded on it, or
    a seed is a GPU value."""
    values = tape.values
    return tape.gpu or any(values[s].__class__ is DeviceArray for s in seeds)


class Pass:
    """One backward over one tape on the device (see cpu_replay.Pass): the gradients of the needed
    slots are views into one arena; ``bufs`` by slot and ``lbufs`` (for ``lslots``) are those to
    deliver, on the device of their values (host copies for host values), read once the replay is
    done. It leaves nothing unfreed for ``keep``: the driver's ``release`` frees the tape."""

    def __init__(self, tape, seeds, lslots, wanted, zeroed):
        self.tape = tape
        self.R, self.RF = tape.row_table()
        self.S = tape.raw_slots()
        self.seeds, self.lslots, self.wanted = seeds, lslots, wanted
        self.roots = np.fromiter(seeds, np.int64, len(seeds))
        self.grads, self.run = {}, None
        self.host = {}  # slot -> its host value's device copy
        self.maps = {}  # slot -> its index map's device copy

    def backward(self, on, release):
        """The whole replay: (status, where, need, -1)."""
        engine = load()
        status, where, need = engine.plan(self.R, self.S, self.roots, on)
        if status == engine.OK:
            self.arena(need)
            status, where, _ = self.replay(0, self.R.shape[0], False)
        return status, where, need, -1

    def arena(self, need):
        """The gradients of the needed slots, zeroed by one launch, the seeds written in."""
        values = self.tape.values
        self.run = need == load().RUN
        slots = np.flatnonzero(need).tolist()
        floats = [values[s].dtype for s in slots if values[s] is not None]
        T = np.dtype(np.float64) if any(d == np.float64 for d in floats) else np.dtype(np.float32)
        offsets, total = {}, 0
        for s in slots:
            offsets[s] = total
            total += values[s].size
        arena = array.zeros((total,), T)
        grads = self.grads = {s: DeviceArray(arena.d[o:o + values[s].size], values[s].shape)
                              for s, o in offsets.items()}
        for s, seed in self.seeds.items():  # (a 0-d seed, backward()'s 1, is a fill: no copy to the device)
            grads[s][...] = seed if seed.__class__ is DeviceArray or np.ndim(seed) == 0 else \
                array.to_device(np.asarray(seed, T))

    def replay(self, lo, hi, check_nan):
        """Rows hi-1 down to lo: (status, where, k). With ``check_nan`` (anomaly mode) it stops at the
        first row that makes its k-th operand's gradient NaN (one already NaN before does not count),
        reading each gradient on the host."""
        engine, R, RF, run, grads = load(), self.R, self.RF, self.run, self.grads
        for e in range(hi - 1, lo - 1, -1):
            o = int(R[e, 4])
            if not run[o]:
                continue
            op = ops.TABLE[R[e, 0]]
            ins = [int(R[e, k]) for k in (1, 2, 3)]
            into = [grads[s] if s >= 0 and run[s] else None for s in ins]
            if all(g is None for g in into):
                continue
            before = [g is not None and _has_nan(g) for g in into] if check_nan else ()
            _adjoint(op, self, e, grads[o], ins, into, o, R[e], RF[e, 7])
            for k, was in enumerate(before):
                if not was and into[k] is not None and _has_nan(into[k]):
                    return engine.ERR_NAN, e, k
        return engine.OK, -1, -1

    def buffer(self, s):
        """Slot s's gradient, a view into the arena."""
        return self.grads[s]

    @property
    def bufs(self):
        grads = self.grads
        return {s: self._out(s, grads[s]) for s in list(self.seeds) + list(self.wanted) if s in grads}

    @property
    def lbufs(self):
        return [self._out(s, self.grads[s]) if s in self.grads else None for s in self.lslots]

    def _out(self, s, g):
        """Slot s's gradient as delivered: on the device of its value."""
        return g if self.tape.values[s].__class__ is DeviceArray else g.get()

    def value(self, s, dtype=None):
        """Slot s's value on the device, in ``dtype`` (the gradients'; None: its own), a host value
        copied once."""
        v = self.tape.values[s]
        if v.__class__ is not DeviceArray:
            v = self.host.get(s)
            if v is None:
                v = self.host[s] = array.to_device(np.ascontiguousarray(self.tape.values[s]))
        return v if dtype is None or v.dtype == dtype else v.astype(dtype)

    def index(self, s):
        """Slot s's int64 index map on the device, flat: the device map the forward's pick read where
        the tape keeps that (indexing, views), else copied once a backward from the host."""
        m = self.maps.get(s)
        if m is None:
            v = self.tape.values[s]
            m = self.maps[s] = v.d if v.__class__ is DeviceArray else runtime().to_device(v.reshape(-1))
        return m


def _has_nan(g):
    return bool(np.isnan(g.get()).any())


def _adjoint(op, p, e, g, ins, into, o, r, f0):
    """Launch row e's adjoints: add each needed input's gradient into ``into``."""
    kernels = array.kernels()[1].ADJOINT.get(op.name)
    dt = g.dtype
    if kernels is not None:
        blocks, threads = launch(g.size)
        uses = set().union(*map(formula.uses, op.formula if isinstance(op.formula, tuple) else (op.formula,)))
        y = p.value(o, dt) if "y" in uses else g  # (g stands in for what a kernel does not read)
        if len(kernels) == 1:
            x = p.value(ins[0], dt) if "x" in uses else g
            kernels[0][blocks, threads](g.d, x.d, y.d, into[0].d, dt.type(f0))
            return
        shape = g.shape
        a = array.broadcast_to(p.value(ins[0], dt), shape) if "a" in uses else g
        b = array.broadcast_to(p.value(ins[1], dt), shape) if "b" in uses else g
        for k in (0, 1):
            gk = into[k]
            if gk is None:
                continue
            sign = _PASSED.get(op.formula[k])
            if sign is not None and gk.shape != shape:  # (g itself, summed over the broadcast straight into gk)
                array.run_kernel("scatter_add", g.size, g.d, _broadcast_map(gk.shape, shape), gk.d, dt.type(sign))
            else:
                _summed(gk, shape, lambda t: kernels[k][blocks, threads](g.d, a.d, b.d, y.d, t.d))
        return
    adjoint = _HAND.get(op.kernel) if op.gpu else None
    if adjoint is None:
        raise NotImplementedError(f"'{op.name}' has no CUDA adjoint in tapegrad yet: backward through it on GPU "
                                  "tensors needs the tensors on the CPU (.cpu())")
    adjoint(p, g, ins, into, r, f0)


# An input's derivative formula that passes g on unchanged (or negated): its gradient needs no kernel
# of its own, only the sum over a broadcast.
_PASSED = {"g": 1, "-g": -1}


def _summed(gk, shape, launch):
    """``launch(t)`` adds an input's gradient at the output's ``shape`` into t: gk itself, or for a
    broadcast operand a zeroed buffer, then summed back over the broadcast into gk."""
    if gk.shape == shape:
        launch(gk)
        return
    full = array.zeros(shape, gk.dtype)
    launch(full)
    array.run_kernel("scatter_add", full.size, full.d, _broadcast_map(gk.shape, shape), gk.d, gk.dtype.type(1))


def _broadcast_map(small, shape):
    """Where each element of ``shape`` comes from in an operand of shape ``small`` broadcast to it."""
    return array.index_map(("bcast", small, shape),
                           lambda: np.broadcast_to(np.arange(int(np.prod(small))).reshape(small), shape))


def _identity(p, g, ins, into, r, f0):
    """view, reshape, clone, casts and copies between devices: the gradient flows through."""
    array.run_kernel("add_into", g.size, g.d, into[0].d)


def _sum(p, g, ins, into, r, f0):
    """sum and mean (f0 scales): each input element adds its sum's gradient."""
    gx = into[0]
    axes = tuple(Mask.decode(int(r[5]), gx.ndim))
    idx, _ = array.reduced_positions(gx.shape, axes, bool(r[6]))
    array.run_kernel("gather_add", gx.size, g.d, idx, gx.d, g.dtype.type(f0))


def _expand(p, g, ins, into, r, f0):
    gx = into[0]
    idx = array.index_map(("bcast", gx.shape, g.shape),
                          lambda: np.broadcast_to(np.arange(gx.size).reshape(gx.shape), g.shape))
    array.run_kernel("scatter_add", g.size, g.d, idx, gx.d, g.dtype.type(1))


def _permute(p, g, ins, into, r, f0):
    gx = into[0]
    perm = Perm.decode(int(r[5]), gx.ndim)
    idx = array.index_map(("perm", gx.shape, perm), lambda: np.transpose(np.arange(gx.size).reshape(gx.shape), perm))
    array.run_kernel("scatter_add", g.size, g.d, idx, gx.d, g.dtype.type(1))


def _pow_scalar(p, g, ins, into, r, f0):
    if f0 != 0:  # (x ** 0: no gradient, as torch's)
        x = p.value(ins[0], g.dtype)
        array.run_kernel("power_adjoint", g.size, g.d, x.d, into[0].d, g.dtype.type(f0))


def _relu(p, g, ins, into, r, f0):
    y = p.value(int(r[4]), g.dtype)
    array.run_kernel("relu_adjoint", g.size, g.d, y.d, into[0].d)


def _zero(p, g, ins, into, r, f0):
    """sign, zero_, fill_: the gradient is zero, as the arena already holds."""


def _mm(p, g, ins, into, r, f0):
    """gA += g @ B^T, gB += A^T @ g."""
    ga, gb = into[0], into[1]
    if ga is not None:
        array.mm_into(g, p.value(ins[1], g.dtype), ga, False, True, 1.0)
    if gb is not None:
        array.mm_into(p.value(ins[0], g.dtype), g, gb, True, False, 1.0)


def _operands(p, g, ins):
    """A binary row's two operands on the device, broadcast to the output's shape."""
    return [array.broadcast_to(p.value(s, g.dtype), g.shape) for s in ins[:2]]


def _pow(p, g, ins, into, r, f0):
    a, b = _operands(p, g, ins)
    if into[0] is not None:
        _summed(into[0], g.shape, lambda t: array.run_kernel("pow_adjoint_a", g.size, g.d, a.d, b.d, t.d))
    if into[1] is not None:
        y = p.value(int(r[4]), g.dtype)
        _summed(into[1], g.shape, lambda t: array.run_kernel("pow_adjoint_b", g.size, g.d, a.d, b.d, y.d, t.d))


def _rpow_scalar(p, g, ins, into, r, f0):
    with np.errstate(divide="ignore", invalid="ignore"):
        log_base = float(np.log(f0))  # (-inf for a zero base, NaN for a negative one, as the CPU's)
    x, y = p.value(ins[0], g.dtype), p.value(int(r[4]), g.dtype)
    array.run_kernel("rpow_adjoint", g.size, g.d, x.d, y.d, into[0].d, float(f0), log_base)


def _maximum(p, g, ins, into, r, f0):
    """maximum (i0 = 0) and minimum (i0 = 1)."""
    a, b = _operands(p, g, ins)
    sgn = 1.0 if r[5] == 0 else -1.0
    for k in (0, 1):
        if into[k] is not None:
            s = sgn if k == 0 else -sgn
            _summed(into[k], g.shape, lambda t: array.run_kernel("maximum_adjoint", g.size, g.d, a.d, b.d, t.d, s))


def _where(p, g, ins, into, r, f0):
    """where(c, a, b): c is kept at the output's shape."""
    cond = p.value(ins[2])
    for k in (0, 1):
        if into[k] is not None:
            _summed(into[k], g.shape, lambda t: array.run_kernel("where_adjoint", g.size, g.d, cond.d, t.d, k == 0))


def _masked_fill(p, g, ins, into, r, f0):
    array.run_kernel("where_adjoint", g.size, g.d, p.value(ins[1]).d, into[0].d, False)


def _leaky_relu(p, g, ins, into, r, f0):
    array.run_kernel("leaky_relu_adjoint", g.size, g.d, p.value(ins[0], g.dtype).d, into[0].d, float(f0))


def _clamp(p, g, ins, into, r, f0):
    hi = FloatBits.decode(int(r[6]))
    array.run_kernel("clamp_adjoint", g.size, g.d, p.value(ins[0], g.dtype).d, into[0].d, float(f0), hi)


def _gelu(p, g, ins, into, r, f0):
    array.run_kernel("gelu_adjoint", g.size, g.d, p.value(ins[0], g.dtype).d, into[0].d, bool(r[5]))


def _softplus(p, g, ins, into, r, f0):
    threshold = FloatBits.decode(int(r[6]))
    array.run_kernel("softplus_adjoint", g.size, g.d, p.value(ins[0], g.dtype).d, into[0].d, float(f0), threshold)


def _backward_op(p, g, ins, into, r, f0):
    """threshold_backward (i0 = 0), leaky_relu_backward (1), nll_loss_backward (2): the gradient a
    masked as the op masks it; b's is zero."""
    ga = into[0]
    if ga is None:
        return
    if r[5] == 2:
        array.run_kernel("add_into", g.size, g.d, ga.d)
        return
    v = p.value(ins[1], g.dtype)
    if r[5] == 0:
        array.run_kernel("relu_adjoint", g.size, g.d, v.d, ga.d)
    else:
        array.run_kernel("leaky_relu_adjoint", g.size, g.d, v.d, ga.d, float(f0))


def _copy(p, g, ins, into, r, f0):
    """x.copy_(src): the old x gets nothing, src the gradient summed to its shape."""
    if into[1] is not None:
        _summed(into[1], g.shape, lambda t: array.run_kernel("add_into", g.size, g.d, t.d))
def _softmax_family(log):
    def adjoint(p, g, ins, into, r, f0):
        """softmax and log_softmax along dim i0, from their result."""
        y = p.value(int(r[4]), g.dtype)
        outer, n, inner = array.around(g.shape, int(r[5]))
        array.run_kernel("softmax_adjoint", outer * inner, g.d, y.d, into[0].d, outer, n, inner, log)
    return adjoint


def _nll(p, g, ins, into, r, f0):
    """nll_loss: -g (reduced: g times f0), times each sample's weight, at each sample's target."""
    pos = p.value(ins[1], np.dtype(np.int64))
    weighted = ins[2] >= 0
    w = p.value(ins[2], g.dtype) if weighted else g
    array.run_kernel("nll_adjoint", pos.size, g.d, pos.d, w.d, into[0].d, weighted, bool(r[5] == 1),
                     g.dtype.type(f0))


def _segment_adjoint(kernel, reads_y=True):
    """The adjoint of a reduction over the axes in mask i0 by segment kernel ``kernel`` (cuda/kernels.py),
    which reads the input (and where ``reads_y``, the result), then takes ``extra`` after its own."""
    def adjoint(p, g, ins, into, r, f0, *extra):
        gx = into[0]
        seg, m = array.segments(gx.shape, tuple(Mask.decode(int(r[5]), gx.ndim)))
        if not m:  # (reductions of nothing: no input to add to)
            return
        x = p.value(ins[0], g.dtype)
        y = (p.value(int(r[4]), g.dtype).d,) if reads_y else ()
        array.run_kernel(kernel, g.size, g.d, x.d, *y, seg, gx.d, m, *extra)
    return adjoint


_extreme = _segment_adjoint("segment_extreme_adjoint")
_prod = _segment_adjoint("segment_prod_adjoint")
_norm_segments = _segment_adjoint("segment_norm_adjoint")
_var_segments = _segment_adjoint("segment_var_adjoint", reads_y=False)


def _norm(p, g, ins, into, r, f0):
    if f0 != 0:  # (the 0-norm's gradient is zero)
        _norm_segments(p, g, ins, into, r, f0, g.dtype.type(f0), array.norm_mode(f0))


def _var(p, g, ins, into, r, f0):
    """torch's var_backward (kernels.segment_var_adjoint); i1 bit 1: a dim was given."""
    dof = into[0].size // max(g.size, 1) - f0
    scale = 2.0 / dof if dof else np.inf
    _var_segments(p, g, ins, into, r, f0, g.dtype.type(scale), bool(not int(r[6]) & 2 and dof <= 0))


def _std_root(p, g, ins, into, r, f0):
    y = p.value(int(r[4]), g.dtype)
    array.run_kernel("std_root_adjoint", g.size, g.d, y.d, into[0].d)


def _cumsum(p, g, ins, into, r, f0):
    outer, n, inner = array.around(g.shape, int(r[5]))
    array.run_kernel("cumsum_adjoint", outer * inner, g.d, into[0].d, outer, n, inner)


def _getitem(p, g, ins, into, r, f0):
    """Every row that picks elements of its input: g added at its index map's positions, or into the
    run from flat offset i0."""
    gx = into[0]
    if ins[1] < 0:
        off = int(r[5])
        array.run_kernel("add_into", g.size, g.d, gx.d[off:off + g.size])
    elif g.size:
        array.run_kernel("scatter_add", g.size, g.d, p.index(ins[1]), gx.d, g.dtype.type(1))


def _scatter_flat(p, g, ins, into, r, f0):
    """The transpose of _getitem: g gathered at the index map (or from the run at flat offset i0)."""
    gx = into[0]
    if ins[1] < 0:
        off = int(r[5])
        array.run_kernel("add_into", gx.size, g.d[off:off + gx.size], gx.d)
    elif gx.size:
        array.run_kernel("gather_add", gx.size, g.d, p.index(ins[1]), gx.d, g.dtype.type(1))


def _setitem(p, g, ins, into, r, f0):
    """x[idx] = v: v gets g at the index map c, x gets g with zeros there."""
    gx, gv = into[0], into[1]
    idx = p.index(ins[2])
    if gv is not None and gv.size:
        array.run_kernel("gather_add", gv.size, g.d, idx, gv.d, g.dtype.type(1))
    if gx is not None:
        keep = g.copy()
        array.run_kernel("fill_at", idx.shape[0], keep.d, idx, g.dtype.type(0))
        array.run_kernel("add_into", g.size, keep.d, gx.d)


def _scatter_add(p, g, ins, into, r, f0):
    """x.scatter_add(dim, index, src): x gets g, src g at the index map c."""
    gx, gs = into[0], into[1]
    if gx is not None:
        array.run_kernel("add_into", g.size, g.d, gx.d)
    if gs is not None and gs.size:
        array.run_kernel("gather_add", gs.size, g.d, p.index(ins[2]), gs.d, g.dtype.type(1))


def _cat(p, g, ins, into, r, f0):
    """cat and stack along dim i0: each piece gets its block of g."""
    d, off = int(r[5]), 0
    outer = int(np.prod(g.shape[:d]))
    inner = int(np.prod(g.shape[d + 1:]))
    for s, gs in zip(ins, into):
        if s < 0 or not outer * inner:
            break
        span = p.tape.values[s].size // (outer * inner)
        if gs is not None and gs.size:
            idx = array.join_positions(g.shape, d, off, span)
            array.run_kernel("gather_add", gs.size, g.d, idx, gs.d, g.dtype.type(1))
        off += span


def _add_run(p, g, ins, into, r, f0):
    """a + f0 * (b at flat offset i0), a at flat offset i1 where it is smaller: a gets its run of g,
    b f0 times its run."""
    ga, gb = into[0], into[1]
    if ga is not None:
        lo = 0 if ga.size == g.size else int(r[6])
        array.run_kernel("add_into", ga.size, g.d[lo:lo + ga.size], ga.d)
    if gb is not None:
        off = int(r[5])
        array.run_kernel("add_scaled", gb.size, g.d[off:off + gb.size], gb.d, g.dtype.type(f0))


# indexing and joining
# The GPU rows without formulas: their adjoints by the row's kernel name (a table test checks that
# every GPU row has one here or in the generated kernels).
_HAND = {
    "adj_identity": _identity, "adj_cast": _identity, "adj_sum": _sum, "adj_expand": _expand,
    "adj_permute": _permute, "adj_mm": _mm, "adj_bmm": _mm, "adj_zero": _zero, "adj_pow_scalar": _pow_scalar,
    "adj_relu": _relu, "adj_pow": _pow, "adj_rpow_scalar": _rpow_scalar, "adj_maximum": _maximum,
    "adj_where": _where, "adj_masked_fill": _masked_fill, "adj_leaky_relu": _leaky_relu, "adj_clamp": _clamp,
    "adj_gelu": _gelu, "adj_softplus": _softplus, "adj_backward_op": _backward_op, "adj_copy": _copy,
    "adj_softmax": _softmax_family(False), "adj_log_softmax": _softmax_family(True), "adj_nll": _nll,
    "adj_amax": _extreme, "adj_prod": _prod, "adj_norm": _norm, "adj_var": _var, "adj_std_root": _std_root,
    "adj_cumsum": _cumsum, "adj_getitem": _getitem, "adj_scatter_flat": _scatter_flat, "adj_setitem": _setitem,
    "adj_scatter_add": _scatter_add, "adj_cat": _cat, "adj_add_run": _add_run,
}


class CudaEngine:
    """The driver's device-engine interface (cpu_replay.CpuEngine's), on the CUDA device: the
    CPU engine's planner over the host tables, a ``Pass`` per backward."""
    EVERY = cpu_replay.CpuEngine.EVERY
    start = Pass

    def __init__(self, cpu):
        self.OK, self.ERR_FREED, self.ERR_NAN = cpu.OK, cpu.ERR_FREED, cpu.ERR_NAN
        self.RUN, self.WANTED, self.LEADS = cpu.RUN, cpu.WANTED, cpu.LEADS
        self.plan, self.leads = cpu.plan, cpu.leads

    def release(self, tape, need):
        """Free the tape's values after a backward without retain_graph (a second backward through
        it raises torch's error)."""
        tape.free(None)
