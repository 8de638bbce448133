"""Batched replay: ``func`` recorded once on one sample (compiler/program.py's Recording), its rows
replayed over the whole batch, each row once for all samples.

Every slot of the program holds either one value for all samples (an unmapped argument, a tensor
``func`` reads from outside, a constant, and what rows compute from those alone) or a batched
tensor with the samples along a leading axis. A row whose operands are all unbatched runs as
recorded; otherwise its batching rule (``RULES``) runs it on the batch as tapegrad ops, so the
batched tensors carry the tape and a backward runs over all samples at once:

- elementwise rows (and comparisons, clamp, std's root): the batched operands padded to the row's
  rank after the batch axis; NumPy broadcasts the unbatched ones against them;
- view, reshape, squeeze, unsqueeze, expand: the sample shape behind the batch axis;
- sum, mean, max, min, amax, amin, prod, norm, var (over all or some dims), cumsum, softmax,
  log_softmax, t, transpose, permute: the dims shifted by one (a 0-d sample's over a dim of one);
- mm with one operand shared: one GEMM over all samples' rows (or columns); both batched: bmm;
- bmm: the samples' batches as one; cat and stack: along the dim after the batch axis;
- select, slice, flip, repeat, split, unbind, index_select, gather, x[index], max and min along a
  dim, and the other rows that pick elements by a flat map, and scatter_add, which adds at one:
  the row over the batch, each sample's map shifted to its own row of the batch;
- where and masked_fill: the mask at the batch's shape;
- nll_loss: the samples' (N, C) log-probabilities as one, unreduced, then each sample's sum scaled.

A map or mask made from tensors' values (an index tensor's, max's positions, a mask, nll_loss's
targets and weights: a derived row) is made once for all samples where its tensors are unbatched;
from batched ones, its function runs on each sample in NumPy when a rule needs it (where's and
masked_fill's rules read the batched mask itself, nll_loss's the batched targets where its map is
their places), and a sample whose map has another shape, or fails, makes vmap loop. While the compiled batch step records, these maps are registered as derived
(ops.results._derived), so its replays make them again from the new values.

In-place writes into tensors ``func`` makes (setitem, copy_, zero_, fill_, masked_fill_...): the
write's row by its rule, the write itself a rebinding (the rows after it read the new value); a
write into an argument or a tensor read from outside, or into a tensor that a view shares, loops.
Random draws, as torch.func's randomness: 'same' draws once for all samples (the values a loop
gives, the recording's draws undone), 'different' once per sample; 'error' loops, which raises.

Other rows (custom Functions, backward inside ``func``, and the gradient rows threshold_backward,
leaky_relu_backward and nll_loss_backward, which only a backward inside ``func`` records) have no
rule: such a program makes vmap call ``func`` once per sample (``why`` says which row).

Guards: a value Python read out of a tensor during the recording is compared per sample; the
samples whose values differ run another variant of the program, recorded on the first of them,
and their results are put back in sample order: the result is that of a loop over samples.

Per-sample gradients: for ``vmap(grad(f))`` the arguments differentiated are made leaves holding
one copy per sample (an unmapped parameter is repeated), ``f`` is replayed over the batch, and one
backward of the sum of the per-sample outputs gives each sample's gradient in its own copy.

From the second call. A signature with one variant and no guards replays as one tg.compile'd step
(``_compiled_step``): the rows above, then the backward, recorded once and replayed with jitted
forward runs and the jitted engine, no Python per row. In that step an unmapped parameter that
meets the samples only in mm, add and sub (through views) is not copied per sample: taps
(``_tap_plan``) give its per-sample gradients from the per-sample gradients of those rows' outputs.
``chunk_size`` is not needed here: the batch runs whole."""
import contextlib
import threading
from sys import getrefcount

import numpy as np

from ..autograd.api import grad as _autograd_grad
from ..compiler import _checks_hold, _sources
from ..compiler.program import (CONST, DERIVED, EXT, FUNC, GUARD, OP, PY, RAND, WRITE, Recording, Unreplayable,
                                python_forward)
from ..grad_mode import enable_grad, is_grad_enabled
from ..ops import _record as _records
from ..ops.results import _constant, _noted_python, _record
from ..tape import _hot, recording_program
from ..tensor import Tensor, leaf
from ._tree import flatten, unflatten

MAX_VARIANTS = 8  # branch variants per signature (tg.compile's cache_size_limit)


class Unbatchable(Exception):
    """The program has a row without a batching rule, or something a replay cannot batch."""


class _Split(Exception):
    """A guard holds for some samples of the group and not for others."""

    def __init__(self, passed):
        self.passed = passed


class _Signature:
    __slots__ = ("variants", "checks", "why", "step", "taps")

    def __init__(self, checks):
        self.variants, self.checks, self.why = [], checks, None
        self.step = None  # the whole-batch replay under tg.compile, once one run showed it applies
        self.taps = None  # with step, per-sample gradients of shared parameters by taps (_tap_plan)


class BatchedFunction:
    """The batched replays of one vmapped function, by signature (the sample's shapes, dtypes,
    requires_grad, mapped dims and non-tensor arguments)."""

    def __init__(self, func, randomness="error"):
        self.func, self.randomness = func, randomness
        grad_of = getattr(func, "_grad_of", None)  # vmap(grad(f)): replay f, differentiate the batch
        self.inner, self.argnums, has_aux = grad_of if grad_of else (func, None, False)
        self.enabled = not has_aux
        self.signatures = {}
        self.why = None  # why the last call was not batched

    def __call__(self, leaves, spec, dims, size, kwargs):
        if not self.enabled or kwargs or size == 0:
            self.why = "keyword arguments" if kwargs else "has_aux" if not self.enabled else "an empty batch"
            return None
        if getattr(_hot, "prog", None) is not None:  # inside another recording (an outer vmap's): part of it
            self.why = "called while another program records"
            return None
        key = []
        for x, d in zip(leaves, dims):
            if isinstance(x, Tensor):
                shape = tuple(x.shape) if d is None else tuple(x.shape[:d]) + tuple(x.shape[d + 1:])
                key.append((shape, x.dtype, x.requires_grad, d is None))
            elif x is None or isinstance(x, (int, float, bool, str)):
                key.append((type(x), x))
            else:
                self.why = f"an argument of type {type(x).__name__}"
                return None
        key = (tuple(key), spec, is_grad_enabled())
        sig = self.signatures.get(key)
        if sig is not None and not _checks_hold(sig.checks):
            sig = None
        if sig is None:
            sig = self.signatures[key] = _Signature(_sources(self.inner)[0])
        if sig.why is not None:
            self.why = sig.why
            return None
        try:
            result = _Run(self, sig, leaves, spec, dims, size).result()
        except Unbatchable as e:
            sig.why = self.why = str(e)
            return None
        self.why = None
        return result


class _Run:
    """One call: the batched inputs, the groups of samples by variant, the results put together."""

    def __init__(self, fn, sig, leaves, spec, dims, size):
        self.fn, self.sig, self.spec, self.size = fn, sig, spec, size
        self.leaves, self.dims = leaves, dims
        self.batched = [None if d is None or not isinstance(x, Tensor) else _to_front(x, d) for x, d in zip(leaves, dims)]
        self.diff = set()  # leaf positions differentiated (vmap of grad)
        self.create_graph = False
        if fn.argnums is not None:
            self._per_sample_leaves()

    def _per_sample_leaves(self):
        """The differentiated arguments as leaves with one copy per sample (see the module docstring)."""
        from .transforms import _check_argnums
        top = unflatten(list(range(len(self.leaves))), self.spec)
        _check_argnums(self.fn.argnums, len(top))
        picks = self.fn.argnums if isinstance(self.fn.argnums, tuple) else (self.fn.argnums,)
        for a in picks:
            self.diff.update(flatten(top[a])[0])
        self.create_graph = is_grad_enabled() and any(
            isinstance(self.leaves[k], Tensor) and self.leaves[k].requires_grad for k in self.diff)
        tree = top[self.fn.argnums] if not isinstance(self.fn.argnums, tuple) else tuple(top[a] for a in picks)
        self.grad_leaves, self.grad_spec = flatten(tree)
        for k in self.diff:
            x = self.leaves[k]
            if not isinstance(x, Tensor):
                raise ValueError(f"Thing passed to transform API must be Tensor, got {type(x)}")
            b = self.batched[k]
            if b is None and self.sig.taps is not None:
                continue  # (a shared parameter: its per-sample gradients come from the taps)
            if b is None:
                b = x.unsqueeze(0).expand((self.size,) + tuple(x.shape))
            with enable_grad():
                self.batched[k] = b.contiguous() if self.create_graph else leaf(np.ascontiguousarray(
                    b._value)).requires_grad_()

    # -- recording a variant ------------------------------------------------------------------
    def _record(self, b):
        """The program of func's inner function on sample b."""
        args = []
        for k, (x, d) in enumerate(zip(self.leaves, self.dims)):
            # (a copy: func may write into its argument, and the loop after a failed recording must see it unchanged)
            v = x if self.batched[k] is None else self.batched[k][b].detach().clone()
            if k in self.diff:
                v = v.detach().requires_grad_()  # (as grad records it)
            elif isinstance(v, Tensor) and self.batched[k] is not None:
                v = v.detach()
            args.append(v)
        tensors = [v for v in args if isinstance(v, Tensor)]
        rec = Recording(tensors, _sources(self.fn.inner)[1], False)
        _hot.prog = rec
        _records.PROGRAMS += 1
        try:
            with enable_grad() if self.diff else contextlib.nullcontext():
                out = self.fn.inner(*unflatten(args, self.spec))
        finally:
            _records.PROGRAMS -= 1
            _hot.prog = None
        outs, ospec = flatten(out)
        if not all(isinstance(t, Tensor) for t in outs):
            raise Unbatchable("func returns a value that is not a tensor")
        if self.diff and (len(outs) != 1 or outs[0].dim() != 0):
            raise Unbatchable("grad's function does not return one scalar tensor")  # (the loop raises torch's error)
        try:
            program = rec.finish(outs)
        except Unreplayable as e:
            raise Unbatchable(str(e)) from None
        if program is None:
            raise Unbatchable(rec.bad)
        if program.has_rand and self.fn.randomness == "error":
            raise Unbatchable("it draws random numbers in randomness='error' mode (the loop raises torch's error)")
        program.randomness = self.fn.randomness
        program.ospec = ospec
        positions = [k for k, v in enumerate(args) if isinstance(v, Tensor)]
        program.arg_slot = {s: positions[program.slots[s].arg] for s in program.ext if program.slots[s].arg >= 0}
        return program

    # -- running ------------------------------------------------------------------------------
    def result(self):
        if self.sig.step is not None:
            return self._stepped()
        index = np.arange(self.size)
        pieces = []  # (sample indices, flat outputs batched over them)
        pending = [(index, 0)]
        while pending:
            idx, v = pending.pop()
            if not len(idx):
                continue
            variants = self.sig.variants
            if v == len(variants):
                if len(variants) >= MAX_VARIANTS:
                    raise Unbatchable(f"more than {MAX_VARIANTS} branch variants")
                from ..creation import _rng
                gen = _rng[0]  # (inside an outer vmap's loop in randomness='error' mode: its stand-in)
                state = gen.bit_generator.state if isinstance(gen, np.random.Generator) else None
                variants.append(self._record(int(idx[0])))
                if variants[-1].has_rand and state is not None:  # (the replay draws what the recording drew)
                    gen.bit_generator.state = state
            try:
                pieces.append((idx, self._replay(variants[v], idx)))
            except _Split as s:
                pending.append((idx[s.passed], v))
                pending.append((idx[~s.passed], v + 1))
        outs = self._assemble(pieces)
        if len(self.sig.variants) == 1 and not self.create_graph and not any(
                r[0] == GUARD for r in self.sig.variants[0].rows):
            prog = self.sig.variants[0]
            if self.fn.argnums is not None:
                shared = {s: k for s, k in prog.arg_slot.items() if k in self.diff and self.dims[k] is None}
                batched = {s for s, k in prog.arg_slot.items() if self.dims[k] is not None}
                self.sig.taps = _tap_plan(prog, batched, shared) if shared else None
            self.sig.step = _compiled_step(prog, self.fn.argnums is not None, self.sig.taps)
        if self.fn.argnums is None:
            return outs, self.sig.variants[0].ospec
        total = outs[0].sum()
        inputs = [self.batched[k] for k in self.grad_leaves]
        with enable_grad():
            gs = _autograd_grad([total], inputs, create_graph=self.create_graph, allow_unused=True,
                                materialize_grads=True)
        if not self.create_graph:
            gs = [g.detach() for g in gs]
        return list(gs), self.grad_spec

    def _step_inputs(self):
        prog = self.sig.variants[0]
        ins = [(self.leaves[k].detach() if k in self.diff else self.leaves[k]) if self.batched[k] is None
               else self.batched[k] for k in prog.arg_slot.values()]
        ins += [prog.slots[s].tensor for s in prog.ext if s not in prog.arg_slot]
        if self.fn.argnums is not None:
            ins += [self.batched[k] for k in self.grad_leaves if self.batched[k] is not None]
            for tap in self.sig.taps or ():
                ins.append(leaf(np.zeros((self.size,) + tap.out_shape, tap.dtype)).requires_grad_())
        return ins

    def _stepped(self):
        """The run as the compiled whole-batch step: one jitted replay (and backward) per call."""
        prog = self.sig.variants[0]
        outs = list(self.sig.step(*self._step_inputs()))
        if self.fn.argnums is None:
            return outs, prog.ospec
        from ..creation import zeros_like
        own = [k for k in self.grad_leaves if self.batched[k] is not None]
        grads = {k: zeros_like(self.batched[k]).detach() if g is None else g for k, g in zip(own, outs)}
        if self.sig.taps:
            taps = self.sig.taps
            per_sample = {}
            rest = outs[len(own):]
            for tap, g, other in zip(taps, rest[:len(taps)], rest[len(taps):]):
                d = tap.gradient(np.zeros((self.size,) + tap.out_shape, tap.dtype) if g is None else g._value,
                                 other._value, self.size)
                per_sample[tap.leaf] = d if tap.leaf not in per_sample else per_sample[tap.leaf] + d
            for k in self.grad_leaves:
                if k not in grads:
                    x = self.leaves[k]
                    grads[k] = leaf(per_sample[k]) if k in per_sample else \
                        leaf(np.zeros((self.size,) + tuple(x.shape), x._value.dtype))
        return [grads[k] for k in self.grad_leaves], self.grad_spec

    def _assemble(self, pieces):
        """The outputs of all groups, batched in sample order."""
        if len(pieces) == 1:
            return pieces[0][1]
        order = np.concatenate([idx for idx, _ in pieces])
        from ..creation import tensor
        inverse = tensor(np.argsort(order))
        from ..ops import cat, index_select
        return [index_select(cat([p[1][k] for p in pieces]), 0, inverse) for k in range(len(pieces[0][1]))]

    def _replay(self, prog, idx):
        """The program's rows over the samples idx; returns the flat outputs batched over them."""
        from ..creation import tensor
        from ..ops import index_select
        whole = len(idx) == self.size
        pick = None if whole else tensor(idx)
        args = {}
        for s in prog.ext:
            k = prog.arg_slot.get(s)
            if k is not None:
                b = self.batched[k]
                args[s] = (self.leaves[k], False) if b is None else (b if whole else index_select(b, 0, pick), True)
        return replay(prog, args, len(idx))


def _compiled_step(prog, grads, taps):
    """tg.compile of a whole-batch replay of prog (one variant, no guards): its arguments are the
    argument slots' tensors (in prog.arg_slot's order), the tensors func read from outside, and
    (with grads) the per-sample leaves and the taps, whose .grad it returns, then the taps' other
    operands."""
    from ..autograd.api import backward
    from ..compiler import compile
    layout = list(prog.arg_slot)
    outside = [s for s in prog.ext if s not in prog.arg_slot]
    n_in = len(layout) + len(outside)
    n_taps = len(taps or ())

    def step(*tensors):
        args = {s: (t, t.dim() > len(prog.slots[s].shape)) for s, t in zip(layout + outside, tensors)}
        n = next((t.shape[0] for t, b in args.values() if b), tensors[-1].shape[0] if tensors else 0)
        leaves = tensors[n_in:len(tensors) - n_taps]
        tapped = tensors[len(tensors) - n_taps:] if n_taps else ()
        others = []
        outs = replay(prog, args, n, {tap.row: (t, tap.other, others) for tap, t in zip(taps or (), tapped)})
        if not grads:
            return tuple(outs)
        backward([outs[0].sum()], inputs=list(leaves) + list(tapped))
        return tuple(x.grad for x in leaves) + tuple(t.grad for t in tapped) + tuple(others)

    return compile(step)


_VIEWS = {"t", "transpose", "permute", "view", "unsafe_view", "unsqueeze", "squeeze"}
_TRANSPOSES = ("t", "transpose", "permute")


def _perm(view):
    """The axes permutation of a transposing view in a tap's chain, as a list."""
    from ..ops.attrs import Perm
    return list(Perm.decode(view[1], len(view[3])))


class _Tap:
    """A row where a shared parameter's value (reached through views) meets batched values: the
    replay adds a zero tensor (the tap) to its output, whose gradient is the row's per-sample output
    gradient g; ``gradient`` turns g and the row's other operand into each sample's gradient of the
    parameter."""
    __slots__ = ("row", "leaf", "chain", "kind", "other", "out_shape", "dtype", "u_shape", "sign", "flip", "undo",
                 "kept")

    def buffer(self, shape, dtype):
        """An array for this thread's product of ``shape``: one of its last two that nothing holds
        any more (the caller dropped the per-sample gradient it became), else a new one. A fresh
        array of a batch's gradients page-faults in anew at every call: 6x the product's time."""
        kept = self.kept.__dict__.setdefault("arrays", [])
        for a in kept:
            if getrefcount(a) == 3 and a.shape == shape and a.dtype == dtype:  # (kept, a, the call)
                return a
        a = np.empty(shape, dtype)
        kept.append(a)
        if len(kept) > 2:
            del kept[0]
        return a

    def plan_views(self):
        """From ``chain`` and ``kind``, once: ``flip`` and ``undo``, the steps back through the views
        to the parameter (transpose axes, or a shape), for every call's ``gradient``."""
        chain = self.chain
        # u = w^T (nn.Linear's weight.t()): w's gradient is du^T, the product with its operands swapped,
        # written in w's layout instead of transposing a copy of du
        self.flip = self.kind != "add" and bool(chain) and chain[-1][0] in _TRANSPOSES and \
            len(chain[-1][3]) == 2 and _perm(chain[-1]) == [1, 0]
        if self.flip:
            chain = chain[:-1]
        self.undo = []
        for view in reversed(chain):
            name, i0, in_shape, out_shape = view
            if name in _TRANSPOSES:
                perm = _perm(view)
                self.undo.append((True, [0] + [1 + perm.index(j) for j in range(len(perm))]))
            else:
                self.undo.append((False, tuple(in_shape)))

    def gradient(self, g, other, n):
        # (an outer product per sample where x is a row or y a column: a jitted loop writes it faster
        # than einsum or a broadcast product, and np.matmul runs one tiny GEMM per sample)
        from ..jit.outer import outer
        flip = self.flip
        if self.kind in ("mm_right", "mm_left"):
            # out = x @ u: du = x^T g (du^T = g^T x); out = u @ y: du = g y^T (du^T = y g^T)
            if self.kind == "mm_right":
                x, y = (g.swapaxes(1, 2), other) if flip else (other.swapaxes(1, 2), g)
            else:
                x, y = (other, g.swapaxes(1, 2)) if flip else (g, other.swapaxes(1, 2))
            d = self.buffer((n, x.shape[1], y.shape[2]), np.result_type(x, y))
            if x.shape[2] == 1:
                outer(x[:, :, 0], y[:, 0, :], d)
            else:
                np.matmul(x, y, out=d)
        else:  # out = x +- u (u broadcast): g summed over u's broadcast axes
            d = g
            extra = d.ndim - 1 - len(self.u_shape)
            if extra:
                d = d.sum(axis=tuple(range(1, 1 + extra)))
            axes = tuple(1 + i for i, m in enumerate(self.u_shape) if m == 1 and d.shape[1 + i] != 1)
            if axes:
                d = d.sum(axis=axes, keepdims=True)
            d = d * self.sign
        for transpose, how in self.undo:  # back through the views to the parameter
            d = d.transpose(how) if transpose else d.reshape((n,) + how)
        return np.ascontiguousarray(d)


def _tap_plan(prog, batched, shared):
    """The taps that give the per-sample gradients of the shared parameters (external slot ->
    argument position), or None where a shared parameter's value meets batched values other than
    through views into mm, add or sub (then the parameters are copied per sample)."""
    batched = set(batched)
    origin = {s: (k, []) for s, k in shared.items()}  # slot -> (parameter, the views from it)
    tainted = set()  # slots computed from a shared parameter otherwise
    taps = []
    for e, (kind, op, a, b, c, out, i0, i1, f0) in enumerate(prog.rows):
        ins = [s for s in (a, b, c) if s >= 0] if kind == OP else list(a) if kind == PY else \
            [s for s in (a, b, c) if isinstance(s, int) and s >= 0]
        if any(s in origin or s in tainted for s in ins) and kind != OP:
            return None
        if not any(s in batched for s in ins):
            if any(s in origin or s in tainted for s in ins):
                if op.name in _VIEWS and ins == [a] and a in origin:
                    k, chain = origin[a]
                    origin[out] = (k, chain + [(op.name, i0, prog.slots[a].shape, prog.slots[out].shape)])
                else:
                    tainted.add(out)
            continue
        if kind in (OP, PY):
            batched.add(out)
        shared_ins = [s for s in ins if s in origin or s in tainted]
        if not shared_ins:
            continue
        if len(shared_ins) != 1 or shared_ins[0] not in origin or op.name not in ("mm", "add", "sub"):
            return None
        u = shared_ins[0]
        tap = _Tap()
        tap.kept = threading.local()
        tap.row, tap.u_shape = e, prog.slots[u].shape
        tap.leaf, tap.chain = origin[u][0], origin[u][1]
        tap.out_shape, tap.dtype = prog.slots[out].shape, prog.slots[out].dtype
        tap.other = b if u == a else a
        tap.kind = ("mm_left" if u == a else "mm_right") if op.name == "mm" else "add"
        tap.sign = -1.0 if op.name == "sub" and u == b else 1.0
        if op.name == "sub" and u == a or op.name == "add" and f0 not in (0.0, 1.0):
            return None
        tap.plan_views()
        taps.append(tap)
    if any(s in origin or s in tainted for s in prog.outs):
        return None
    return taps


def replay(prog, args, n, taps=None):
    """The rows of ``prog`` over n samples; ``args``: external slot -> (tensor, batched) for the
    arguments (the tensors func read from outside are the slots' own); ``taps``: row -> (tap
    tensor added to its output, the slot of its other operand, a list that collects that operand).
    Returns the outputs, batched over the n samples."""
    vals = [None] * len(prog.slots)  # Tensor (or, for a constant map, an array)
    batched = [False] * len(prog.slots)
    for s in prog.ext:
        vals[s], batched[s] = args.get(s, (prog.slots[s].tensor, False))
    for s in prog.constants:
        vals[s] = prog.slots[s].value
    for e, (kind, op, a, b, c, out, i0, i1, f0) in enumerate(prog.rows):
        if kind == OP:
            ins = [s for s in (a, b, c) if s >= 0]
            shape = prog.slots[out].shape
            if not any(batched[s] for s in ins):
                vals[out] = _unbatched_row(op, [vals[s] for s in (a, b, c)], i0, i1, f0, prog.slots[out])
                continue
            rule = _rule(op)
            if rule is None:
                raise Unbatchable(f"row {op.name!r} has no batching rule")
            operands = [None if s < 0 else (vals[s], batched[s], prog.slots[s].shape) for s in (a, b, c)]
            vals[out] = rule(op, operands, i0, i1, f0, shape, prog.slots[out].dtype, n)
            batched[out] = True
            if taps and e in taps:
                tap, other, others = taps[e]
                vals[out] = vals[out] + tap
                others.append(vals[other])
        elif kind == GUARD:
            dtype, gshape, data = op
            v = vals[a]
            expect = np.frombuffer(data, dtype).reshape(gshape)
            if not batched[a]:
                ok = v._value.dtype == dtype and v._value.shape == gshape and np.array_equal(v._value, expect)
                passed = np.full(n, ok)
            else:
                passed = (v._value == expect).reshape(n, -1).all(axis=1)
            if not passed.all():
                raise _Split(passed)
        elif kind == CONST:
            vals[out] = _constant(prog.slots[out].value.copy())
        elif kind == RAND:  # (torch.func's randomness: one draw for all samples, or one per sample)
            draw = op if prog.randomness == "same" else _draws(op, n)
            vals[out], batched[out] = _drawn(draw), prog.randomness != "same"
        elif kind == PY:
            fn, consts = op
            ins = [vals[s] for s in a]
            if not any(batched[s] for s in a):
                it = iter(ins)
                operands = [next(it) if i0 == DERIVED or k is None else k for k in consts]
                v = np.asarray(_unrecorded(fn, *[_array(o) for o in operands]))
                vals[out] = _derive(v, fn, *ins) if i0 == DERIVED else _noted_python(fn, operands, leaf(v))
                continue
            if i0 == DERIVED:  # made when a row needs it: rules that read the tensors it comes from skip it
                vals[out] = _PerSample(fn, [(vals[s], batched[s]) for s in a], prog.slots[out].shape)
            else:
                vals[out] = _batched_python(fn, consts, [(vals[s], batched[s], prog.slots[s].shape) for s in a],
                                            prog.slots[out].shape, n)
            batched[out] = True
        elif kind == WRITE:  # (the rows after it read the written tensor at src's slot)
            if prog.slots[a].kind == EXT:
                raise Unbatchable("it writes in place into an argument or a tensor read from outside")
            if any(r[0] == OP and r[1].fwd == "fwd_view" and r[2] == a for r in prog.rows):
                raise Unbatchable("it writes in place into a tensor that a view shares")
            vals[a], batched[a] = vals[b], batched[b]
        elif kind == FUNC:
            raise Unbatchable(f"row 'function' ({op[0].__name__}, a custom autograd.Function) has no batching rule")
        else:
            raise Unbatchable(f"a {kind} row (backward() or a call inside func)")
    outs = []
    for s in prog.outs:
        t = vals[s]
        if not batched[s]:
            t = t.unsqueeze(0).expand((n,) + tuple(t.shape)).contiguous()
        outs.append(t)
    return outs


def _to_front(x, d):
    """x with its mapped dim d moved to the front."""
    if d == 0:
        return x
    order = [d] + [k for k in range(x.dim()) if k != d]
    return x.permute(order)


def _array(v):
    return v._value if isinstance(v, Tensor) else v


def _unbatched_row(op, ins, i0, i1, f0, out):
    """A row whose operands are the same for every sample: run once, as recorded."""
    arrays = [None if v is None else _array(v) for v in ins]
    value = python_forward(op)(arrays, i0, i1, f0, out.shape, out.dtype)
    if value.__class__ is tuple:  # (value, the row's f0 at this call)
        value, f0 = value
    return _record(op, np.ascontiguousarray(value), *ins, i0=i0, i1=i1, f0=f0)


def _derive(value, fn, *inputs):
    """value = fn(*inputs) for an index map or mask: while a tg.compile of the replay records (the
    compiled batch step), its program derives value again from the same inputs at each replay
    (ops.results._derived). Inputs are tensors or values so registered; a map derived from a
    constant stays a constant."""
    p = recording_program()
    if p is not None and all(isinstance(x, Tensor) or id(x) in p.derived for x in inputs):
        p.derive(value, fn, inputs)
    return value


def _draws(draw, n):
    """One draw per sample, stacked."""
    return lambda: np.stack([draw() for _ in range(n)])


def _drawn(draw):
    """A random tensor of draw(), noted as a draw where a tg.compile of the replay records (its
    replays draw afresh)."""
    t = leaf(draw())
    p = recording_program()
    if p is not None:
        p.note_created(t, draw)
    return t


def _unrecorded(fn, *args):
    """fn(*args) with no program noting the ops it runs (a derived map's function runs eager ops
    that a tg.compile of the replay must not take for its own)."""
    prog, _hot.prog = getattr(_hot, "prog", None), None
    try:
        return fn(*args)
    finally:
        _hot.prog = prog


def _per_sample(f, n, shape):
    """f(b) for each sample b, stacked: each must have the shape recorded for one sample."""
    try:
        out = [np.asarray(_unrecorded(f, b)) for b in range(n)]
    except Exception as e:  # (a sample that its program does not fit: the loop runs it, or raises as eager does)
        raise Unbatchable(f"an index map or mask made from a batched tensor's values fails for a sample: {e}") from None
    size = int(np.prod(shape))
    if any(o.size != size for o in out):
        raise Unbatchable("an index map or mask made from a batched tensor's values differs in shape between samples")
    return np.stack([o.reshape(shape) for o in out])  # (NumPy makes some 0-d maps 1-d)


def _stacked(fn, flags, shape):
    """fn (of one sample's values) over batched arrays (flags: which are): its results stacked."""
    def f(*vs):
        n = next(len(v) for v, b in zip(vs, flags) if b)
        return _per_sample(lambda k: fn(*[v[k] if b else v for v, b in zip(vs, flags)]), n, shape)
    return f


class _PerSample:
    """A map or mask that a derived row makes from batched values, per sample: made when a rule needs
    it (``value``); rules that can read the tensors it comes from (``ins``) skip it."""
    __slots__ = ("fn", "ins", "shape", "_value")

    def __init__(self, fn, ins, shape):
        self.fn, self.ins, self.shape, self._value = fn, ins, tuple(shape), None

    def value(self):
        """(n, *one sample's map shape)."""
        if self._value is None:
            inputs = [v.value() if isinstance(v, _PerSample) else v for v, _ in self.ins]
            f = _stacked(self.fn, [b for _, b in self.ins], self.shape)
            self._value = _derive(f(*[_array(v) for v in inputs]), f, *inputs)
        return self._value


def _batched_python(fn, consts, ins, shape, n):
    """A value Python computes from batched tensors (a comparison, max's indices): a ufunc on the
    operands padded to its rank, another function per sample; noted as the eager op notes it."""
    ufunc = isinstance(fn, np.ufunc)
    tensors = iter((v.reshape((n,) + (1,) * (len(shape) - len(s)) + tuple(s)) if ufunc and b else v, b)
                   for v, b, s in ins)
    operands, flags = [], []
    for k in consts:
        v, b = next(tensors) if k is None else (k, False)
        operands.append(v)
        flags.append(b)
    if not ufunc:
        fn = _stacked(fn, flags, shape)
    return _noted_python(fn, operands, leaf(np.asarray(fn(*[_array(o) for o in operands]))))


def _batch_map(m, batched, n, stride):
    """A row's map (flat positions in one sample; per sample where batched) as flat positions in the
    batch, each sample's shifted to its own row."""
    src = m.value() if batched else m

    def shift(v):
        per = v.reshape(n, -1) if batched else v.reshape(1, -1)
        return np.ascontiguousarray(per + np.arange(n, dtype=np.int64)[:, None] * stride).reshape(-1)
    return _derive(shift(src), shift, src)


def _full_mask(arg, shape, n):
    """A where or masked_fill condition (its row's: the mask tensor's values broadcast to the sample's
    shape) over the batch, (n, *shape): from the mask tensor itself where it is batched."""
    m, batched, _ = arg
    if batched:
        src = m.ins[0] if len(m.ins) == 1 else None
        if src is None or not isinstance(src[0], Tensor) or not src[1]:
            return _broadcast_mask(m.value(), True, shape, shape, n)
        mask = src[0]
        full = _broadcast_mask(mask, True, tuple(mask.shape[1:]), shape, n)
        first = np.asarray(_unrecorded(m.fn, mask._value[0]))
        if first.size != full[0].size or not np.array_equal(first.reshape(full[0].shape), full[0]):  # (it broadcasts)
            return _broadcast_mask(m.value(), True, shape, shape, n)
        return full
    return _broadcast_mask(m, False, np.shape(m), shape, n)


def _broadcast_mask(m, batched, s, shape, n):
    def full(v):
        k = len(v) if batched else n
        v = v.reshape((k,) + (1,) * (len(shape) - len(s)) + tuple(s)) if batched else v
        return np.ascontiguousarray(np.broadcast_to(v, (k,) + tuple(shape)))
    return _derive(full(_array(m)), full, m)


_RULE_OF = {}  # op code -> its batching rule (None: none)


def _rule(op):
    try:
        return _RULE_OF[op.code]
    except KeyError:
        rule = _RULE_OF[op.code] = RULES.get(op.name) or (_elementwise if _is_elementwise(op) else None)
        return rule


# -- batching rules: (op, [(value, batched, sample shape) or None] * 3, i0, i1, f0, out shape, out dtype, n) ---
def _is_elementwise(op):
    from ..engine.cpu._forward import FWD_KIND
    from ..engine.cpu.forwards import BINARY, ELEMENTWISE
    return op.formula is not None or FWD_KIND[op.code] in (ELEMENTWISE, BINARY) or op.name in ELEMENTWISE_ROWS


ELEMENTWISE_ROWS = {"clamp", "maximum", "minimum", "std_root", "zero", "fill", "copy", "leaky_relu", "gelu",
                    "softplus", "to", "clone", "threshold_backward", "leaky_relu_backward", "pow", "pow_scalar",
                    "rpow_scalar", "atan2", "hypot"}


def _padded(op, arg, rank, n):
    """A batched operand padded to the row's rank after the batch axis; an unbatched one as it is."""
    v, batched, s = arg
    if not isinstance(v, Tensor):
        raise Unbatchable(f"row {op.name!r} reads a constant operand")
    return v.reshape((n,) + (1,) * (rank - len(s)) + tuple(s)) if batched and len(s) < rank else v


def _elementwise(op, args, i0, i1, f0, shape, dtype, n):
    padded = [None if arg is None else _padded(op, arg, len(shape), n) for arg in args]
    arrays = [None if p is None else p._value for p in padded]
    value = python_forward(op)(arrays, i0, i1, f0, (n,) + tuple(shape), dtype)
    if value.__class__ is tuple:
        raise Unbatchable(f"row {op.name!r} changes its attributes per call")
    return _record(op, np.asarray(value), *padded, i0=i0, i1=i1, f0=f0)


def _reshape(op, args, i0, i1, f0, shape, dtype, n):
    return args[0][0].reshape((n,) + tuple(shape))


def _expand(op, args, i0, i1, f0, shape, dtype, n):
    v, batched, s = args[0]
    return v.reshape((n,) + (1,) * (len(shape) - len(s)) + tuple(s)).expand((n,) + tuple(shape))


def _reduction(mean):
    def rule(op, args, i0, i1, f0, shape, dtype, n):
        from ..ops.attrs import Mask
        v, batched, s = args[0]
        if not s:
            return v.clone() if not mean else v * 1.0
        dims = Mask.decode(i0, len(s)) if op.name.endswith("_dim") else tuple(range(len(s)))
        keepdim = bool(i1) if op.name.endswith("_dim") else False
        dims = tuple(d + 1 for d in dims)
        return v.mean(dim=dims, keepdim=keepdim) if mean else v.sum(dim=dims, keepdim=keepdim)
    return rule


def _permute(op, args, i0, i1, f0, shape, dtype, n):
    from ..ops.attrs import Perm
    perm = Perm.decode(i0, len(shape))
    return args[0][0].permute([0] + [p + 1 for p in perm])


def _softmax(log):
    def rule(op, args, i0, i1, f0, shape, dtype, n):
        from ..ops import log_softmax, softmax
        d = i0 % len(shape) + 1 if shape else 1
        return (log_softmax if log else softmax)(args[0][0], d)
    return rule


def _mm(op, args, i0, i1, f0, shape, dtype, n):
    """(p, k) @ (k, q) per sample: one GEMM when an operand is shared."""
    from ..ops import bmm, matmul
    (x, xb, xs), (y, yb, ys) = args[0], args[1]
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise Unbatchable("mm of a constant operand")
    p, k = xs
    q = ys[1]
    if xb and yb:
        return bmm(x, y)
    if xb:
        return matmul(x.reshape(n * p, k), y).reshape(n, p, q)
    if q == 1:  # (a matrix times each sample's vector: the samples' vectors as rows, times its transpose)
        return matmul(y.reshape(n, k), x.t()).reshape(n, p, 1)
    # shared left operand: its product with every sample's columns side by side
    cols = y.permute(1, 0, 2).reshape(k, n * q)
    return matmul(x, cols).reshape(p, n, q).permute(1, 0, 2)


def _gather(op, args, i0, i1, f0, shape, dtype, n):
    """A row that picks elements of its input by a flat map (or a run from an offset on): the row
    over the batch, each sample's picks (its own where the map is batched) from its own row."""
    v, batched, s = args[0]
    if not isinstance(v, Tensor):
        raise Unbatchable(f"row {op.name!r} picks from a constant")
    if not batched:
        v = v.unsqueeze(0).expand((n,) + tuple(s))
    m, mb = (np.arange(i0, i0 + int(np.prod(shape)), dtype=np.int64), False) if args[1] is None else args[1][:2]
    positions = _batch_map(m, mb, n, int(np.prod(s)))
    value = python_forward(op)([v._value, positions], 0, i1, 0.0, (n,) + tuple(shape), dtype)
    return _record(op, value, v, positions, i1=i1)


def _scatter(op, args, i0, i1, f0, shape, dtype, n):
    """x with src added (scatter_add) or written (setitem) at a flat map of x's places: each
    sample's into its own row of the batch."""
    (x, xb, xs), (src, sb, ss), (m, mb, _) = args
    if not isinstance(x, Tensor) or not isinstance(src, Tensor):
        raise Unbatchable(f"row {op.name!r} of a constant")
    x = x if xb else x.unsqueeze(0).expand((n,) + tuple(xs))
    src = src if sb else src.unsqueeze(0).expand((n,) + tuple(ss))
    positions = _batch_map(m, mb, n, int(np.prod(xs)))
    value = python_forward(op)([x._value, src._value, positions], 0, 0, 0.0, (n,) + tuple(shape), dtype)
    return _record(op, value, x, src, positions)


def _where(op, args, i0, i1, f0, shape, dtype, n):
    x, y = _padded(op, args[0], len(shape), n), _padded(op, args[1], len(shape), n)
    cond = _full_mask(args[2], shape, n)
    return _record(op, np.where(cond, x._value, y._value), x, y, cond)


def _masked_fill(op, args, i0, i1, f0, shape, dtype, n):
    x, batched, s = args[0]
    if not isinstance(x, Tensor):
        raise Unbatchable(f"row {op.name!r} reads a constant operand")
    x = x if batched else x.unsqueeze(0).expand((n,) + tuple(s))
    mask = _full_mask(args[1], shape, n)
    return _record(op, python_forward(op)([x._value, mask], 0, 0, f0, (n,) + tuple(shape), dtype), x, mask, f0=f0)


def _over_dims(op, args, i0, i1, f0, shape, dtype, n):
    """A reduction or scan over some of the sample's dims: the same op over those dims shifted by one
    (a 0-d sample's over a dim of one)."""
    from ..ops import amax, amin, cumsum, norm, prod, var
    from ..ops.attrs import Mask
    v, batched, s = args[0]
    scalar = not s
    if scalar:
        v, s = v.unsqueeze(1), (1,)
    if op.name == "cumsum":
        return cumsum(v, 1 if scalar else i0 % len(s) + 1).reshape((n,) + tuple(shape))
    dims = (1,) if scalar else tuple(d + 1 for d in Mask.decode(i0, len(s)))
    keep = bool(i1 & 1) and len(shape) == len(s)
    if op.name in ("max", "amax"):
        out = amax(v, dims, keep)
    elif op.name in ("min", "amin"):
        out = amin(v, dims, keep)
    elif op.name == "norm":
        out = norm(v, f0, dims, keep)
    elif op.name == "var":
        out = var(v, dims, keepdim=keep, correction=f0)
    elif len(dims) == 1:  # prod_dim, or prod of one dim
        out = prod(v, dims[0], keep)
    else:
        out = prod(v.reshape(n, -1), 1)
    return out.reshape((n,) + tuple(shape))


def _nll_loss(op, args, i0, i1, f0, shape, dtype, n):
    """Each sample's negative log-likelihood: the row, unreduced, over the samples' (N, C)
    log-probabilities stacked as one (n * N, C); then each sample's terms summed and scaled."""
    from ..ops.loss import WEIGHTED_MEAN, _nll_value
    (lp, lb, (rows, classes)), (pos, pb, _), w = args
    if not isinstance(lp, Tensor):
        raise Unbatchable(f"row {op.name!r} reads a constant operand")
    lp = (lp if lb else lp.unsqueeze(0).expand((n, rows, classes))).reshape(n * rows, classes)
    positions = _target_places(pos, n, rows, classes) if pb else None
    if positions is None:
        positions = _batch_map(pos, pb, n, rows * classes)
    weights = empty = None
    if w is not None:
        wv, wb, _ = w
        src = wv.value() if wb else wv
        weighted = i0 and i1 == WEIGHTED_MEAN

        def per_row(v):  # (a weighted mean: each sample's weights over their sum)
            v = v.reshape(-1, rows) if wb else np.broadcast_to(v.reshape(1, rows), (n, rows))
            if weighted:
                total = v.sum(axis=1, keepdims=True)
                v = v / np.where(total != 0, total, 1)
            return np.ascontiguousarray(v, dtype=lp._value.dtype).reshape(-1)
        weights = _derive(per_row(src), per_row, src)
        if weighted:  # a sample with no weight: nan as torch's 0 / 0, and no gradient, as torch's backward gives
            def none_kept(v):
                return np.ascontiguousarray((v.reshape(-1, rows) if wb else v.reshape(1, rows)).sum(axis=1) == 0)
            empty = _derive(none_kept(src), none_kept, src)
    terms = _record(op, _nll_value(lp._value, positions, weights, False, 1.0), lp, positions, weights)
    terms = terms.reshape(n, rows)
    if not i0:
        return terms
    total = terms.sum(1)
    if empty is None:
        return total * f0
    from ..ops.elementwise import MASKED_FILL
    mask = _derive(np.broadcast_to(empty, (n,)).copy(), lambda e: np.broadcast_to(e, (n,)).copy(), empty)
    return _record(MASKED_FILL, np.where(mask, np.nan, total._value), total, mask, f0=np.nan)


def _target_places(m, n, rows, classes):
    """nll_loss's positions over the batch straight from the batched targets, where its map is their
    places in each sample's (N, C) (i * C + target: cross_entropy's common case); None otherwise."""
    if len(m.ins) != 1 or not isinstance(m.ins[0][0], Tensor) or not m.ins[0][1]:
        return None
    target = m.ins[0][0]

    def places(t):
        t = t.reshape(-1).astype(np.int64, copy=False)
        if t.size and (t.min() < 0 or t.max() >= classes):
            raise Unbatchable("a target out of range: cross_entropy takes its general path per sample")
        return np.ascontiguousarray(np.arange(t.size, dtype=np.int64) * classes + t)
    first = target._value[:1]
    try:
        ok = np.array_equal(np.asarray(_unrecorded(m.fn, first[0])).reshape(-1), places(first))
    except Exception:  # (its function refuses the first sample: the map per sample says why)
        ok = False
    return _derive(places(target._value), places, target) if ok else None


def _join(stack):
    """cat or stack of up to three pieces along dim i0 (the output's): along i0 + 1, a shared piece
    repeated for every sample."""
    def rule(op, args, i0, i1, f0, shape, dtype, n):
        from ..ops import cat, stack as stack_
        given = [a for a in args if a is not None]
        shapes = [tuple(s) for _, _, s in given]
        stacks = stack and len(shapes[0]) < len(shape)  # (a stack row past three pieces adds to a stack)
        whole = tuple(shapes[0][:i0]) + (len(given),) + tuple(shapes[0][i0:]) if stacks else \
            tuple(shapes[0][:i0]) + (sum(s[i0] for s in shapes),) + tuple(shapes[0][i0 + 1:])
        if tuple(shape) != whole:
            raise Unbatchable(f"row {op.name!r} joins pieces of other shapes than its output's")
        pieces = []
        for v, batched, s in given:
            if not isinstance(v, Tensor):
                raise Unbatchable(f"row {op.name!r} joins a constant")
            pieces.append(v if batched else v.unsqueeze(0).expand((n,) + tuple(s)))
        return (stack_ if stacks else cat)(pieces, i0 + 1)
    return rule


def _bmm(op, args, i0, i1, f0, shape, dtype, n):
    """(b, p, k) @ (b, k, q) per sample: the samples' batches as one batch."""
    from ..ops import bmm
    (x, xb, xs), (y, yb, ys) = args[0], args[1]
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise Unbatchable("bmm of a constant operand")
    x = x if xb else x.unsqueeze(0).expand((n,) + tuple(xs))
    y = y if yb else y.unsqueeze(0).expand((n,) + tuple(ys))
    return bmm(x.reshape((n * xs[0],) + tuple(xs[1:])), y.reshape((n * ys[0],) + tuple(ys[1:]))).reshape(
        (n,) + tuple(shape))


RULES = {
    "view": _reshape, "unsafe_view": _reshape, "unsqueeze": _reshape, "squeeze": _reshape,
    "expand": _expand,
    "sum": _reduction(False), "sum_dim": _reduction(False), "mean": _reduction(True), "mean_dim": _reduction(True),
    "t": _permute, "transpose": _permute, "permute": _permute,
    "softmax": _softmax(False), "log_softmax": _softmax(True),
    "mm": _mm, "bmm": _bmm, "cat": _join(False), "stack": _join(True),
    "select": _gather, "slice": _gather, "alias": _gather, "index_unsqueeze": _gather, "index": _gather,
    "index_select": _gather, "gather": _gather, "max_dim": _gather, "min_dim": _gather, "repeat": _gather,
    "flip": _gather, "split": _gather, "unbind": _gather, "scatter_add": _scatter,
    "index_put": _scatter, "index_put_advanced": _scatter,
    "where": _where, "masked_fill": _masked_fill, "nll_loss": _nll_loss,
    "max": _over_dims, "min": _over_dims, "amax": _over_dims, "amin": _over_dims, "prod": _over_dims,
    "prod_dim": _over_dims, "norm": _over_dims, "var": _over_dims, "cumsum": _over_dims,
}
