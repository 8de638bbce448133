"""Every row of the op table recorded in a compiled program and replayed on new inputs, against the
same program run eagerly: values bit for bit and gradients, float32 and float64, with the inputs
requiring grad (the rows come from the tape) and without (the rows are noted untracked).

The programs are tests/ops/cases.py's (one per row); those rows whose map or mask comes from a
tensor's values derive it again at each replay, so the second inputs are drawn afresh."""
import gc

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import ops

from ..ops.cases import GPU_ONLY, Program, away_from_zero, CASES

# rows that do not replay: two that only the create_graph walk records (a compiled function that
# runs one runs eagerly), and those only GPU tensors record (a custom Function's row replays by
# calling its apply again)
EAGER = {"add_run", "scatter_flat"} | GPU_ONLY
# the case picks by a mask (x > 0): new values that change how many it picks are another variant
GUARDED = {"index_put_advanced"}
# rows that torch's gradients are: their cases record them through create_graph, which a program
# does not replay; called directly here
DIRECT = {
    "threshold_backward": lambda lib, g, r: ops.elementwise.threshold_backward(g, r),
    "leaky_relu_backward": lambda lib, g, x: ops.elementwise.leaky_relu_backward(g, x, 0.1),
    "nll_loss_backward": lambda lib, g, x: (lambda a: ops.loss._record(ops.loss.NLL_BACKWARD, a._value, a, x, i0=2))(
        g * 2.0),
}


@pytest.fixture(autouse=True)
def _fresh_tape():
    """Each test records on a tape of its own: eager float32 gradients may differ in the last bit
    when the thread's open tape also holds float64 rows of an earlier test (programs kept alive
    until a collection)."""
    gc.collect()


def _programs():
    out = []
    for name, case in CASES.items():
        if name in EAGER:
            continue
        prog = Program(DIRECT[name], ((2, 3), (2, 3)), away_from_zero) if name in DIRECT else case.first or case.higher
        out.append((name, prog))
    return out


PROGRAMS = _programs()


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _tensors(arrays, dtype, rg):
    return [tg.tensor(a, dtype=dtype, requires_grad=rg) for a in arrays]


def _run(fn, arrays, dtype, rg, cotangent):
    xs = _tensors(arrays, dtype, rg)
    y = fn(*xs)
    grads = None
    if rg and y.requires_grad:
        y.backward(tg.tensor(cotangent(y.shape), dtype=y.dtype))
        grads = [None if x.grad is None else x.grad.numpy().copy() for x in xs]
    return y.detach().numpy().copy(), grads


@pytest.mark.parametrize("rg", [True, False], ids=["tracked", "untracked"])
@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
@pytest.mark.parametrize("name,prog", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_row_replays_as_eager(name, prog, dtype, rg):
    fn = lambda *xs: prog.fn(tg, *xs)  # noqa: E731
    cf = tg.compile(fn)
    cot = lambda shape: np.random.default_rng(1).standard_normal(shape)  # noqa: E731
    first = prog.inputs(0)
    cf(*_tensors(first, dtype, rg))  # records
    for seed in (0, 3):
        arrays = prog.inputs(seed)
        got = _run(cf, arrays, dtype, rg, cot)
        want = _run(fn, arrays, dtype, rg, cot)
        assert same(got[0], want[0]), (name, seed)
        if want[1] is not None:
            for g, w in zip(got[1], want[1]):
                assert (g is None) == (w is None) and (g is None or same(g, w)), (name, seed)
    st = tg.compiler.stats(cf)
    assert not st["unreplayable"], st
    assert st["replay_count"] == (1 if name in GUARDED else 2), st


def test_which_rows_these_programs_record():
    """Each row's program records that row (in the program the test above replays)."""
    for name, prog in PROGRAMS:
        cf = tg.compile(lambda *xs, p=prog: p.fn(tg, *xs))
        cf(*_tensors(prog.inputs(0), tg.float64, True))
        variant = next(iter(cf._variants.values()))[0]
        assert variant.program is not None, (name, variant.why)
        names = {r[1].name if r[0] == "op" else "function" for r in variant.program.rows if r[0] in ("op", "function")}
        assert name in names, (name, sorted(names))


def _planned_as_row_by_row(cf):
    from tapegrad.engine.cpu._forward import FWD_KIND
    for variants in cf._variants.values():
        for v in variants:
            p = v.program
            p._exact = {}
            isop = np.array([r[0] == "op" for r in p.rows], bool)
            size = np.array([int(np.prod(sl.shape)) for sl in p.slots], np.int64)
            assert p._run_dtypes(FWD_KIND, p._row_kinds(FWD_KIND, isop), size) == [p._jittable(r, FWD_KIND) for r in p.rows]


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_the_planner_picks_the_rows_the_row_rule_picks(dtype):
    """The planner decides most rows' jitted runs over the row table at once: on every row's
    program, and on broadcasts and mixed dtypes, it picks what the row-by-row rule picks."""
    for name, prog in PROGRAMS:
        cf = tg.compile(lambda *xs, p=prog: p.fn(tg, *xs))
        cf(*_tensors(prog.inputs(0), dtype, True))
        _planned_as_row_by_row(cf)

    def mixed(x, y, z, i, col):
        return ((x * y + z).sum(0) + (x.double() * 2.0).float() + (y - x) / (z + 3.0) + i * x + x * col,
                (x @ x.t()).mean())

    cf = tg.compile(mixed)
    cf(tg.randn(4, 3, dtype=dtype, requires_grad=True), tg.randn(3, dtype=dtype), tg.randn(1, dtype=dtype),
       tg.tensor([1, 2, 3]), tg.randn(4, 1, dtype=dtype))
    _planned_as_row_by_row(cf)


# -- operands made from tensors' values: derived again at each replay ------------------------------
def _eager_and_compiled(f, calls):
    """Run f and tg.compile(f) on each argument tuple; values (and the first input's gradient,
    where it requires grad) must be equal bit for bit. Returns the compiled function."""
    cf = tg.compile(f)
    for args in calls:
        outs = []
        for g in (f, cf):
            xs = [a.detach().requires_grad_(a.requires_grad) if isinstance(a, tg.Tensor) and a.is_floating_point()
                  else a for a in args]
            y = g(*xs)
            grad = None
            if y.requires_grad:
                y.sum().backward()
                grad = xs[0].grad.numpy().copy()
            outs.append((y.detach().numpy().copy(), grad))
        assert same(outs[0][0], outs[1][0])
        assert (outs[0][1] is None and outs[1][1] is None) or same(outs[0][1], outs[1][1])
    return cf


def test_cross_entropy_targets_are_read_at_each_replay():
    f = lambda x, t: tg.nn.functional.cross_entropy(x * 2.0, t)  # noqa: E731 (the fused pass)
    x = tg.randn(6, 4, requires_grad=True)
    cf = _eager_and_compiled(f, [(x, tg.tensor([0, 1, 2, 3, 0, 1])), (x, tg.tensor([3, 3, 3, 0, 0, 0])),
                                 (x, tg.tensor([1, 2, 3, 0, 1, 2]))])
    assert cf.trace_count == 1 and cf.replay_count == 2
    with pytest.raises(IndexError):  # out of range: the guard fails, and eager raises its error
        cf(x, tg.tensor([0, 1, 2, 9, 0, 1]))


def test_nll_loss_with_ignored_samples_and_weights():
    w = tg.tensor([0.5, 2.0, 1.0, 3.0])

    def f(x, t):
        return tg.nn.functional.cross_entropy(x, t, weight=w, ignore_index=2)

    x = tg.randn(5, 4, dtype=tg.float64, requires_grad=True)
    cf = _eager_and_compiled(f, [(x, tg.tensor([0, 1, 2, 3, 0])), (x, tg.tensor([2, 2, 2, 1, 3])),
                                 (x, tg.tensor([2, 2, 2, 2, 2]))])  # (the mean's weights are recomputed)
    assert cf.trace_count == 1 and cf.replay_count == 2

    g = lambda x, t: tg.nn.functional.nll_loss(x.log_softmax(1), t, ignore_index=1)  # noqa: E731
    cg = _eager_and_compiled(g, [(x, tg.tensor([0, 2, 3, 3, 0])), (x, tg.tensor([3, 2, 0, 0, 0])),
                                 (x, tg.tensor([1, 2, 0, 0, 0]))])  # a sample ignored: another variant
    assert cg.trace_count == 2 and cg.replay_count == 1


@pytest.mark.parametrize("rg", [True, False])
def test_index_maps_from_tensors(rg):
    def f(x, i, m):
        return x[i].exp() + x.index_select(0, i) * 2.0 + x.gather(0, i.reshape(-1, 1).expand(3, 2)) \
            + x.max(1).values.unsqueeze(1) + x.masked_fill(m, 0.5)[i] + tg.where(m, x, -x)[i]

    x = tg.randn(3, 2, requires_grad=rg)
    calls = [(x, tg.tensor([0, 2, 1]), tg.tensor([[True, False], [False, False], [True, True]])),
             (x, tg.tensor([2, 2, 0]), tg.tensor([[False, False], [True, False], [False, True]])),
             (tg.randn(3, 2, requires_grad=rg), tg.tensor([1, 0, 0]), tg.tensor([[True] * 2] * 3))]
    cf = _eager_and_compiled(f, calls)
    assert cf.trace_count == 1 and cf.replay_count == 2, tg.compiler.stats(cf)
    with pytest.raises(IndexError):
        cf(x, tg.tensor([0, 5, 1]), calls[0][2])


def test_max_dim_indices_follow_the_values():
    f = lambda x: x.max(1)  # noqa: E731
    cf = tg.compile(f)
    for _ in range(3):
        x = tg.randn(4, 5)
        (v, i), (ve, ie) = cf(x), f(x)
        assert same(v.numpy(), ve.numpy()) and same(i.numpy(), ie.numpy())
    assert cf.replay_count == 2


def test_mask_pick_of_another_size_is_another_variant():
    f = lambda x: x[x > 0].sum() + 0.0 * x.sum()  # noqa: E731
    cf = _eager_and_compiled(f, [(tg.tensor([1.0, -1.0, 2.0]),), (tg.tensor([3.0, -1.0, 5.0]),),
                                 (tg.tensor([3.0, 1.0, 5.0]),)])
    assert cf.trace_count == 2 and cf.replay_count == 1


# -- in-place writes and the views a replay copies -------------------------------------------------
@pytest.mark.parametrize("rg", [True, False])
def test_a_view_read_after_a_write_into_its_base_stays_eager(rg):
    def f(x):
        z = x * 1.0
        v = z[:, 1]
        z.add_(1.0)
        return v * 2.0  # eager: v sees the write

    cf = _eager_and_compiled(f, [(tg.randn(2, 3, requires_grad=rg),)] * 2)
    assert cf.replay_count == 0 and "view" in tg.compiler.stats(cf)["unreplayable"][0]


def test_writes_into_internal_tensors_replay():
    def f(x):
        z = x * 1.0
        z[1] = x[0] * 3.0  # setitem, untracked
        z[:, 0].fill_(2.0)  # fill_ through a view: untracked, changes z with no row: eager
        return z

    cf = _eager_and_compiled(f, [(tg.randn(2, 3),)] * 2)
    assert cf.replay_count == 0

    def g(x):
        z = x * 1.0
        z[1] = x[0] * 3.0
        z.zero_()[0] = 5.0
        y = z.clone()
        y.fill_(1.5)
        return z + y

    cg = _eager_and_compiled(g, [(tg.randn(2, 3),), (tg.randn(2, 3),), (tg.randn(2, 3, requires_grad=True),),
                                 (tg.randn(2, 3, requires_grad=True),)])
    assert cg.trace_count == 2 and cg.replay_count == 2, tg.compiler.stats(cg)


def test_a_tensor_fill_value_is_guarded():
    f = lambda x, v: x.masked_fill(x > 0, v) + x.clone().fill_(v)  # noqa: E731
    cf = _eager_and_compiled(f, [(tg.randn(4), tg.tensor(1.0)), (tg.randn(4), tg.tensor(1.0)),
                                 (tg.randn(4), tg.tensor(2.0))])
    assert cf.trace_count == 2 and cf.replay_count == 1
