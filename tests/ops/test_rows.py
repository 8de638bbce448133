"""Every row of the op table, checked three ways: central finite differences in float64, torch
(when installed), and the jitted adjoint against the differentiable VJP (create_graph path).

The programs are the first-order ones of tests/ops/cases.py (one entry per row, shared with
test_higher_order.py): each records its row, written once for both libraries (``lib`` is tapegrad
or torch). A row without a case fails ``test_every_row_has_a_case``.
"""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad import ops
from tapegrad.engine import cpu_replay

from .cases import CASES

RNG = np.random.default_rng(0)
SEED = 0  # the cases' inputs: drawn afresh for each test, the same on every run


def test_every_row_has_a_case():
    """One entry per row serves both orders: a higher-order program always, a first-order one or
    the place its first order is checked."""
    rows = {r.name for r in ops.TABLE}
    missing, stale = sorted(rows - set(CASES)), sorted(set(CASES) - rows)
    assert not missing, f"rows without a case in tests/ops/cases.py: {missing}"
    assert not stale, f"cases for rows that no longer exist: {stale}"
    assert sorted(r.name for r in ops.TABLE) == sorted(CASES)  # (and no row name twice)
    for name, case in CASES.items():
        assert case.higher is not None, name
        assert case.first is not None or case.why, f"{name}: no first-order program, nor where it is checked"


ROWS = [name for name, case in CASES.items() if case.first is not None]


def _inputs(name, lib=tg):
    program = CASES[name].first
    return program.fn, program.inputs(SEED)


def _run(fn, arrays, lib):
    xs = [lib.tensor(a, dtype=lib.float64, requires_grad=True) for a in arrays]
    return xs, fn(lib, *xs)


def _cotangent(shape):
    return np.random.default_rng(1).standard_normal(shape)


@pytest.mark.parametrize("name", ROWS)
def test_row_is_recorded(name):
    fn, arrays = _inputs(name)
    _, y = _run(fn, arrays, tg)
    R, _ = y._tape.row_table()
    assert ops.BY_NAME[name].code in R[:, 0], f"the program for {name} does not record that row"


@pytest.mark.parametrize("name", ROWS)
def test_finite_differences(name):
    fn, arrays = _inputs(name)
    xs, y = _run(fn, arrays, tg)
    v = _cotangent(y.shape)
    y.backward(tg.tensor(v))
    program = CASES[name].first
    eps = program.eps
    for k, a in enumerate(arrays):
        num = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            hi, lo = [b.copy() for b in arrays], [b.copy() for b in arrays]
            hi[k][i] += eps
            lo[k][i] -= eps
            with tg.no_grad():
                fhi = fn(tg, *[tg.tensor(b) for b in hi]).numpy()
                flo = fn(tg, *[tg.tensor(b) for b in lo]).numpy()
            num[i] = np.sum((fhi - flo) * v) / (2 * eps)
        np.testing.assert_allclose(xs[k].grad.numpy(), num, rtol=program.fd_rtol, atol=1e-7,
                                   err_msg=f"input {k}")


@pytest.mark.parametrize("name", ROWS)
def test_against_torch(name):
    torch = pytest.importorskip("torch")
    fn, arrays = _inputs(name)
    xs, y = _run(fn, arrays, tg)
    txs, ty = _run(fn, arrays, torch)
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert y.dtype.name == str(ty.dtype).replace("torch.", "")
    assert y.grad_fn.name() == ty.grad_fn.name()
    v = _cotangent(tuple(y.shape))
    y.backward(tg.tensor(v))
    ty.backward(torch.tensor(v))
    for k, (x, tx) in enumerate(zip(xs, txs)):
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=CASES[name].first.torch_rtol, atol=1e-12,
                                   err_msg=f"input {k}")


@pytest.mark.parametrize("name", ROWS)
def test_jitted_and_differentiable_adjoints_agree(name):
    fn, arrays = _inputs(name)
    xs, y = _run(fn, arrays, tg)
    v = tg.tensor(_cotangent(y.shape))
    jitted = tg.autograd.grad(y, xs, v, retain_graph=True)
    recorded = tg.autograd.grad(y, xs, v, create_graph=True)
    for a, b in zip(jitted, recorded):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["mul", "tanh", "mm", "sum_dim", "index_put"])
def test_gradient_keeps_input_dtype(name, dtype):
    fn, arrays = _inputs(name)
    xs = [tg.tensor(a, dtype=getattr(tg, dtype), requires_grad=True) for a in arrays]
    fn(tg, *xs).sum().backward()
    for x in xs:
        assert x.grad.dtype == getattr(tg, dtype)


def test_scatter_flat_through_double_backward():
    """scatter_flat is the VJP of getitem: differentiate a gradient that went through it."""
    torch = pytest.importorskip("torch")
    a = np.array([0.3, -1.2, 2.0, 0.7])
    out = []
    for lib in (tg, torch):
        x = lib.tensor(a, requires_grad=True, dtype=lib.float64)
        y = (x[1:3] ** 3).sum()
        (g,) = lib.autograd.grad(y, x, create_graph=True)
        (gg,) = lib.autograd.grad((g * g).sum(), x)
        out.append(gg.detach().numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-12)


# programs whose create_graph gradient of x adds a contiguous run's gradient (ops.Run) to another
ADD_RUN_PROGRAMS = {
    "neighbours": lambda lib, x, w: ((x[1:] - x[:-1] * x[:-1]) ** 2 * 100.0 + (1.0 - x[:-1]) ** 2).sum(),
    "plus": lambda lib, x, w: ((x[1:] + x[:-1]) ** 3).sum(),
    "overlapping": lambda lib, x, w: ((x[1:4] - x[2:5]) ** 3).sum(),
    "minus_first": lambda lib, x, w: ((x[1:] - x[:-1]) ** 3).sum(),  # (the walk meets x[:-1], negated, first)
    "dense_then_run": lambda lib, x, w: (x[1:] ** 3).sum() + (x * w).sum(),  # (the walk meets x * w first)
    "run_then_dense": lambda lib, x, w: (x * w).sum() + (x[1:] ** 3).sum(),
    "negated_dense": lambda lib, x, w: (x[1:] ** 3).sum() - (x * w).sum() ** 2,
    "dense_then_head": lambda lib, x, w: (x[:-1] ** 3).sum() + (x * w).sum(),
    "broadcast_base": lambda lib, x, w: x.sum() + (x[1:] ** 3).sum(),  # (a stride-0 ones: added as it is)
    "transposed_base": lambda lib, x, w: (lambda y: (y.t() * w.view(3, 2) * y.t()).sum() + (y[1] ** 3).sum())(
        x.view(2, 3) * 1.0),
    "matrix_row": lambda lib, x, w: (x.view(2, 3)[1] ** 3).sum() * x.view(2, 3)[0].sum(),
    "three_runs": lambda lib, x, w: (x[1:] * x[:-1]).sum() * x[2:].sum() - (x[:-2] ** 3).sum(),
    "disjoint": lambda lib, x, w: (x[:2] ** 3).sum() * (x[3:] ** 2).sum(),
    # -0.0 where only one of two runs is, either one scattered first: torch's sum makes it 0.0
    "signed_zero_runs": lambda lib, x, w: (x[1:] * w[1:]).sum() * 2.0 + (x[:-1] ** 3).sum(),
    "signed_zero_runs_swapped": lambda lib, x, w: (x[:-1] ** 3).sum() + (x[1:] * w[1:]).sum() * 2.0,
    "signed_zero_head": lambda lib, x, w: (x[:-1] * w[:-1]).sum() * 2.0 + (x[1:] ** 3).sum(),
    "signed_zero_head_swapped": lambda lib, x, w: (x[1:] ** 3).sum() + (x[:-1] * w[:-1]).sum() * 2.0,
    "negated_runs": lambda lib, x, w: (-(x[1:] ** 3)).sum() - (x[:-1] * w[:-1]).sum(),
    # two elements where only one of the runs is, at each end (add_run's regions wider than one)
    "wide_ends": lambda lib, x, w: ((x[2:] - x[:-2]) ** 3).sum(),
    "signed_zero_wide": lambda lib, x, w: (x[2:] * w[2:]).sum() * 2.0 + (x[:-2] ** 3).sum(),
    "signed_zero_wide_head": lambda lib, x, w: (x[:-2] * w[:-2]).sum() * 2.0 + (x[2:] ** 3).sum(),
}


def _add_run_derivatives(lib, name):
    a = np.array([0.3, -1.2, 2.0, 0.7, -0.5, 1.1])
    w = np.array([-0.0, 0.5, -1.5, 0.25, 2.0, -0.0])  # (-0.0 outside a run: torch's sum makes it 0.0)
    x = lib.tensor(a, dtype=lib.float64, requires_grad=True)
    (g,) = lib.autograd.grad(ADD_RUN_PROGRAMS[name](lib, x, lib.tensor(w)), x, create_graph=True)
    (h,) = lib.autograd.grad((g * lib.tensor(np.cos(np.arange(6.0)))).sum(), x, create_graph=True)
    (t,) = lib.autograd.grad((h * h).sum(), x)
    name = g.grad_fn.name() if lib is tg else type(g.grad_fn).__name__
    return [v.detach().numpy().copy() for v in (g, h, t)], name


@pytest.mark.parametrize("name", sorted(ADD_RUN_PROGRAMS))
def test_add_run_matches_torch_and_the_scatter(name, monkeypatch):
    """x's gradient from x[i:j] is added to its other gradient in one add_run row: derivatives to
    third order (through add_run's adjoint and VJP) are torch's, the first one shows torch's grad_fn
    and is bit for bit what a scatter and an add give (signed zeros included: -0.0 + 0.0 is 0.0)."""
    torch = pytest.importorskip("torch")
    ours, gname = _add_run_derivatives(tg, name)
    theirs, tname = _add_run_derivatives(torch, name)
    assert gname == tname
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(ops, "Run", lambda g, off, shape: ops._scatter_run(ops.plain(g), off, shape))
    scattered, sname = _add_run_derivatives(tg, name)
    assert sname == gname
    assert ours[0].tobytes() == scattered[0].tobytes()


def test_add_run_replaces_two_scatters_and_an_add():
    x = tg.tensor(np.arange(6.0), requires_grad=True)
    f = ((x[1:] - x[:-1]) ** 3).sum()
    n = f._tape.n
    (g,) = tg.autograd.grad(f, x, create_graph=True)
    R, RF = g._tape.row_table()
    names = [ops.TABLE[c].name for c in R[n:, 0].tolist()]
    assert names.count("add_run") == 1 and "scatter_flat" not in names and "add" not in names, names
    assert RF[n + names.index("add_run"), 7] == -1.0  # x[:-1]'s sign, carried from sub's VJP


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("base, run", [
    ((0, 7), (1, 7)), ((1, 7), (0, 7)), ((0, 6), (2, 6)), ((2, 6), (0, 6)), ((1, 3), (4, 3)), ((0, 2), (5, 3)),
    ((3, 2), (1, 6)), ((1, 6), (3, 2)), ((2, 4), (2, 4)), (None, (1, 7)), (None, (0, 1)), (None, (3, 3))])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_add_run_regions(dtype, base, run, sign):
    """add_run's value is the sum of the two scatters bit for bit (signed zeros included), whatever the
    runs' overlap: regions of one element (NumPy scalars), wider ones, gaps left 0.0, either dtype."""
    n = 8
    pool = np.array([-0.0, 0.0, 1.5, -2.25, 3.0, -0.0, 0.1, -0.7], dtype)
    t = tg.tensor(np.roll(pool, 3)[:run[1]])
    a = tg.tensor(pool[:base[1]] if base else np.roll(pool, 5))
    got = ops.add_run(ops.Run(a, base[0], (n,)) if base else a, ops.Run(ops.Negated(t) if sign < 0 else t, run[0], (n,)))
    scattered = np.zeros(n, dtype)
    if base:
        scattered[base[0]:base[0] + base[1]] = a._value
    else:
        scattered = a._value
    other = np.zeros(n, dtype)
    other[run[0]:run[0] + run[1]] = t._value if sign > 0 else -t._value
    want = scattered + other
    assert got._value.dtype == dtype and got._value.tobytes() == want.tobytes(), (got._value, want)


@pytest.mark.parametrize("key, shape, run", [
    (slice(1, None), (5,), True), (slice(None, -1), (5,), True), (slice(1, 3), (4, 2), True),
    ((slice(1, None),), (5,), True), ((slice(1, 3),), (4, 2), True), ((1,), (3, 2, 2), True),
    ((Ellipsis,), (2, 3), True), (slice(None, None, 2), (5,), False), (slice(0, 3, 2), (3, 2), False)])
def test_contiguous_run_keys(key, shape, run):
    """A key picking one contiguous run of a C-ordered tensor records its offset, not an index map
    (b = -1); other keys keep the map. Gradients to third order (through scatter_flat and back)
    match torch's either way."""
    torch = pytest.importorskip("torch")
    a = RNG.standard_normal(shape)
    x = tg.tensor(a, requires_grad=True)
    y = x[key]
    r = y._tape.row(y._tape.producer(y._slot))
    if run:
        assert r[2] == -1 and r[5] == np.arange(a.size).reshape(shape)[key].reshape(-1)[0]
    else:
        assert r[2] >= 0
    out = []
    for lib in (tg, torch):
        x = lib.tensor(a, requires_grad=True, dtype=lib.float64)
        (g,) = lib.autograd.grad((x[key] ** 3).sum() * x.sum(), x, create_graph=True)
        (h,) = lib.autograd.grad((g * g).sum(), x, create_graph=True)
        (t,) = lib.autograd.grad((h[key] ** 2).sum(), x)
        out.append([v.detach().numpy() for v in (g, h, t)])
    for mine, theirs in zip(*out):
        np.testing.assert_allclose(mine, theirs, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("scale, c", [(1.0, 2), (100.0, 2), (0.1, 2), (100.0, 3), (0.5, 3), (3.0, 1.5), (-1.0, 0)])
def test_uniform_gradient_folds_bitwise(scale, c):
    """pow's VJP folds an untracked gradient that is one number (the seed of a sum times scalar
    factors) into its own factor where that cannot change a bit (ops._exact): gradients and
    Hessian-vector products equal torch's bit for bit, folded or not."""
    torch = pytest.importorskip("torch")
    a, u = RNG.uniform(0.5, 2.0, 7), RNG.standard_normal(7)
    out = []
    for lib in (tg, torch):
        x = lib.tensor(a, requires_grad=True)
        (g,) = lib.autograd.grad((x ** c * scale).sum(), x, create_graph=True)
        (h,) = lib.autograd.grad((g * lib.tensor(u)).sum(), x, allow_unused=True) if g.requires_grad else (None,)
        out.append([None if t is None else t.detach().numpy() for t in (g, h)])
    np.testing.assert_array_equal(out[0][0], out[1][0])
    if out[1][1] is not None:
        np.testing.assert_array_equal(out[0][1], out[1][1])
    x = tg.tensor(a, requires_grad=True)
    (g,) = tg.autograd.grad((x ** 2).sum(), x, create_graph=True)
    # pow, sum, x.pow(1) (recorded as torch's, so that the gradient stays differentiable in x) and one
    # product for the gradient (x.pow(1) * 2.0): the seed is folded
    assert g._tape.n == 4


@pytest.mark.parametrize("program", [
    lambda lib, x: (x.sum(0) * 2.0).sum(), lambda lib, x: x.sum(0).sum(), lambda lib, x: (x.t().sum(1) ** 2).mean(),
    lambda lib, x: (x.sum(1, keepdim=True).exp().sum(0) ** 2).sum(), lambda lib, x: (x.mean(0) * 3.0).sum()])
def test_untracked_gradients_through_reductions(program):
    """sum's VJP broadcasts an untracked gradient itself (ops._broadcast), a broadcast one too."""
    torch = pytest.importorskip("torch")
    a = RNG.standard_normal((3, 4))
    out = []
    for lib in (tg, torch):
        x = lib.tensor(a, requires_grad=True)
        (g,) = lib.autograd.grad(program(lib, x), x, create_graph=True)
        out.append(g.detach().numpy())
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("c", [2, 2.0, 3, 0, -1, 0.5, -2.5])
def test_pow_scalar_values_match_torch(c, dtype):
    """x ** c of a float tensor (a short path; c == 2 squares): torch's values, x ** 2 bit for bit."""
    torch = pytest.importorskip("torch")
    a = RNG.uniform(0.5, 2.0, 9).astype(dtype)
    ours = (tg.tensor(a, requires_grad=True) ** c).detach().numpy()
    theirs = (torch.tensor(a, requires_grad=True) ** c).detach().numpy()
    assert ours.dtype == theirs.dtype
    if c == 2:
        np.testing.assert_array_equal(ours, theirs)
    else:
        np.testing.assert_allclose(ours, theirs, rtol=1e-6 if dtype == "float32" else 1e-15)


def test_uniform_gradient_is_handed_out_as_its_own_tensor():
    x = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (g,) = tg.autograd.grad((x * 3.0).sum(), x, create_graph=True)
    g.add_(1.0)  # a broadcast view would refuse the write
    np.testing.assert_array_equal(g.detach().numpy(), [4.0, 4.0, 4.0])


def test_broadcast_error_names_both_shapes():
    with pytest.raises(RuntimeError, match=r"size of tensor a \(2\) must match the size of tensor b \(4\) at non-singleton dimension 0"):
        tg.ones(2, 3) + tg.ones(4, 3)


def test_mm_shape_error():
    with pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied \(2x3 and 2x3\)"):
        tg.ones(2, 3) @ tg.ones(2, 3)


def test_view_errors():
    with pytest.raises(RuntimeError, match=r"shape '\[4, 2\]' is invalid for input of size 6"):
        tg.ones(2, 3).view(4, 2)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        tg.ones(2, 3).t().view(6)


def test_dim_out_of_range():
    with pytest.raises(IndexError, match=r"Dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)"):
        tg.ones(2, 3).sum(2)


def test_index_out_of_range():
    with pytest.raises(IndexError, match="out of"):
        tg.ones(2, 3)[5]


def test_tensor_subclass_operands():
    class Sub(tg.Tensor):
        __slots__ = ()

    p = tg.ones(2).requires_grad_()
    p.__class__ = Sub
    y = (tg.ones(2) * p + p * 2.0).sum()
    y.backward()
    np.testing.assert_allclose(p.grad.numpy(), [3.0, 3.0])


# -- what a backward frees: each row saves what torch's node saves ---------------------------------
# Each row's first-order program, and where that runs other ops too, the row alone (its case's
# ``alone``): their own saved set decides (x + 1 replays, x * 2 does not). Inputs are the case's.
SAVED_PROGRAMS = {**{name: CASES[name].first.fn for name in ROWS},
                  **{name + " alone": case.alone for name, case in CASES.items() if case.alone is not None}}


def _saved_case(program):
    _, arrays = _inputs(program.split(" ")[0])
    return SAVED_PROGRAMS[program], arrays


def _second_backward(program, lib, create_graph):
    fn, arrays = _saved_case(program)
    xs, y = _run(fn, arrays, lib)
    v = lib.tensor(_cotangent(tuple(y.shape)))
    y.backward(v)
    try:
        if create_graph:  # (the differentiable walk over what the first backward left)
            got = lib.autograd.grad(y, xs, v, create_graph=True, allow_unused=True)
            return [None if g is None else g.detach().numpy() for g in got]
        y.backward(v)
    except RuntimeError as e:
        assert "Trying to backward through the graph a second time" in str(e)
        return "raises"
    return [None if x.grad is None else x.grad.numpy() / 2 for x in xs]  # (accumulated twice)


def _changed_input(program, lib, k):
    fn, arrays = _saved_case(program)
    xs, y = _run(fn, arrays, lib)
    with lib.no_grad():
        xs[k].add_(0.25)  # (a value no adjoint may read unless its node saved it)
    try:
        y.backward(lib.tensor(_cotangent(tuple(y.shape))))
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        return "raises"
    return [None if x.grad is None else x.grad.numpy() for x in xs]


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("program", sorted(SAVED_PROGRAMS))
def test_second_backward_fails_where_torch_saved_a_tensor(program, create_graph, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(cpu_replay, "_SMALL", -1)  # every value no entry saved becomes a stub: none is read
    ours, theirs = _second_backward(program, tg, create_graph), _second_backward(program, torch, create_graph)
    if ours == "raises" or theirs == "raises":
        assert ours == theirs
        return
    for a, b in zip(ours, theirs):  # what a replay gives
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("program", [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=(
    "torch refuses any in-place change to the base of a multi-output view (split's, unbind's outputs): a view rule, "
    "not a saved tensor"))) if p in ("split", "unbind") else p for p in sorted(SAVED_PROGRAMS)])
def test_changing_an_input_in_place_fails_where_torch_saved_it(program):
    torch = pytest.importorskip("torch")
    for k in range(len(CASES[program.split(" ")[0]].first.shapes)):
        ours, theirs = _changed_input(program, tg, k), _changed_input(program, torch, k)
        if ours == "raises" or theirs == "raises":
            assert ours == theirs, f"input {k}"
            continue
        for a, b in zip(ours, theirs):  # read from what was saved, never from the changed input
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"input {k}")
