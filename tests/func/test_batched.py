"""Batched replay against a Python loop over the samples: every case of tests/ops/cases.py under
vmap with in_dims 0, 1 and None, per-sample gradients, branch variants, and which programs batch."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad import func

from ..ops.cases import CASES

B = 3
FIRST = sorted(k for k, c in CASES.items() if c.first is not None)
# rows whose programs batch (a batching rule for every row they record); the others loop
BATCHED = {"add", "sub", "mul", "div", "pow", "add_scalar", "rsub_scalar", "sub_scalar", "mul_scalar", "scale",
           "div_scalar", "pow_scalar", "rpow_scalar", "neg", "reciprocal", "exp", "log", "sin", "cos", "tanh",
           "sigmoid", "relu", "sqrt", "abs", "sum", "sum_dim", "mean", "mean_dim", "t", "transpose", "permute",
           "view", "unsqueeze", "squeeze", "mm", "softmax", "log_softmax", "select", "slice", "expand", "bmm",
           "cat", "stack", "clamp", "max", "min", "amax", "amin", "max_dim", "min_dim", "prod", "prod_dim", "norm",
           "var", "std_root", "cumsum", "flip", "repeat", "split", "unbind", "index", "index_select", "gather",
           "scatter_add", "where", "masked_fill", "nll_loss", "copy", "zero", "fill", "index_put"}


def _samples(case, seed):
    p = case.first
    return [[tg.tensor(v) for v in p.inputs(seed + b)] for b in range(B)]


def _loop(fn, samples, mapped):
    outs = [fn(tg, *[s if m else samples[0][i] for i, (s, m) in enumerate(zip(sample, mapped))]) for sample in samples]
    return outs


def _batch(samples, k, dim):
    return tg.stack([s[k] for s in samples], dim=dim if samples[0][k].dim() >= dim else 0)


# in_dims None: the first input mapped, the others not (cases of one input have nothing unmapped)
@pytest.mark.parametrize("name, in_dim", [(name, d) for name in FIRST for d in (0, 1, None)
                                          if d is not None or len(CASES[name].first.shapes) > 1])
def test_every_row_against_a_loop(name, in_dim):
    case = CASES[name]
    fn = case.first.fn
    samples = _samples(case, 7)
    n = len(samples[0])
    mapped = [True] + [in_dim is not None] * (n - 1)
    dims = []
    args = []
    for k in range(n):
        if not mapped[k]:
            dims.append(None)
            args.append(samples[0][k])
            continue
        d = in_dim if in_dim is not None and samples[0][k].dim() >= in_dim else 0
        dims.append(d)
        args.append(_batch(samples, k, d))
    try:
        expect = _loop(fn, samples, mapped)
    except Exception as e:  # (a case that only runs with grad: not a vmap question)
        pytest.skip(f"the case does not run on plain tensors: {e}")
    vm = func.vmap(lambda *xs: fn(tg, *xs), in_dims=tuple(dims))
    got = vm(*args)
    if isinstance(expect[0], tuple):
        for j in range(len(expect[0])):
            np.testing.assert_allclose(got[j].numpy(), np.stack([e[j].numpy() for e in expect]), rtol=1e-12, atol=1e-14)
    else:
        np.testing.assert_allclose(got.numpy(), np.stack([e.numpy() for e in expect]), rtol=1e-12, atol=1e-14)
    if name in BATCHED:
        assert vm.batched == 1, vm.why


def test_per_sample_gradients_batched_against_a_loop():
    rng = np.random.default_rng(0)
    W = tg.tensor(rng.standard_normal((5, 4)))
    xs = tg.tensor(rng.standard_normal((6, 4)))

    def loss(W, x):
        h = (W @ x).tanh()
        return (h * h).mean() + W.sum() * 0.1

    g = func.vmap(func.grad(loss), in_dims=(None, 0))
    got = g(W, xs)
    expect = tg.stack([func.grad(loss)(W, xs[b]) for b in range(6)])
    assert g.batched == 1, g.why
    np.testing.assert_allclose(got.numpy(), expect.numpy(), rtol=1e-12)
    both = func.vmap(func.grad(loss, argnums=(0, 1)), in_dims=(None, 0))(W, xs)
    np.testing.assert_allclose(both[0].numpy(), expect.numpy(), rtol=1e-12)
    np.testing.assert_allclose(both[1].numpy(),
                               tg.stack([func.grad(loss, 1)(W, xs[b]) for b in range(6)]).numpy(), rtol=1e-12)


def test_branch_variants_against_a_loop():
    """A value read into Python picks the branch: each sample runs its own branch's program."""
    def f(x, w):
        if x.sum() > 0:
            return (x * w).sin().sum()
        if x[0] > 0.5:
            return (x * x).sum() * 3.0
        return x.exp().sum()

    rng = np.random.default_rng(1)
    xs = tg.tensor(rng.standard_normal((16, 3)))
    xs._value[0] = [0.9, -2.0, 0.1]  # (each branch taken by some sample)
    w = tg.tensor(rng.standard_normal(3))
    for fn in (f, func.grad(f)):
        vm = func.vmap(fn, in_dims=(0, None))
        got = vm(xs, w)
        expect = tg.stack([fn(xs[b], w) for b in range(16)])
        assert vm.batched == 1, vm.why
        np.testing.assert_allclose(got.numpy(), expect.numpy(), rtol=1e-12)
        v = xs.numpy()
        branches = {0 if r.sum() > 0 else 1 if r[0] > 0.5 else 2 for r in v}
        assert len(branches) == 3 and len(vm._batched.signatures.popitem()[1].variants) == 3


def test_batched_output_is_differentiable():
    x = tg.randn(4, 3, dtype=tg.float64, requires_grad=True)
    w = tg.randn(3, dtype=tg.float64, requires_grad=True)
    vm = func.vmap(lambda r, w: (r * w).sin().sum(), in_dims=(0, None))
    vm(x, w).sum().backward()
    assert vm.batched == 1
    np.testing.assert_allclose(x.grad.numpy(), ((x * w).cos() * w).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), ((x * w).cos() * x).sum(0).detach().numpy(), rtol=1e-12)


def _write_under_a_view(r):
    z = r * 1
    v = z.view(3, 1)
    z.zero_()
    return v + r


@pytest.mark.parametrize("f, why", [
    (_write_under_a_view, "it writes in place into a tensor that a view shares"),
    (lambda r: tg.cat([r, r[r > 0]]).sum() + r[0], "differs in shape between samples"),
])
def test_what_does_not_batch_loops_and_says_why(f, why):
    x = tg.tensor([[1.0, -2.0, 3.0], [-1.0, -2.0, 3.0]])
    vm = func.vmap(f, randomness="different")
    np.testing.assert_array_equal(vm(x).numpy(), tg.stack([f(x[b]) for b in range(2)]).numpy())
    assert vm.looped == 1 and why in vm.why


def test_function_rows_loop_and_say_why():
    from ..ops.cases import cube_function
    g = func.vmap(func.grad(lambda r: cube_function(tg).apply(r).sum()))
    x = tg.tensor([[1.0, -2.0, 3.0], [-1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(g(x).numpy(), 3 * x.numpy() ** 2)
    assert g.looped == 1 and "'function'" in g.why


def test_later_calls_replay_the_compiled_batch_step():
    """From the second call on, a program without guards replays as one compiled whole-batch step
    (forward and backward): new values, a closure tensor changed in place, and a new batch size."""
    rng = np.random.default_rng(2)
    W = tg.tensor(rng.standard_normal((5, 4)))

    def loss(p, x):
        return ((W @ x).tanh() * p).sum() + (p * p).mean()

    vg, vf = func.vmap(func.grad(loss), in_dims=(None, 0)), func.vmap(loss, in_dims=(None, 0))
    for size in (6, 6, 6, 4, 4):
        p, xs = tg.tensor(rng.standard_normal(5)), tg.tensor(rng.standard_normal((size, 4)))
        with tg.no_grad():
            W.mul_(1.5)
        np.testing.assert_allclose(vg(p, xs).numpy(), tg.stack([func.grad(loss)(p, xs[b]) for b in range(size)]).numpy(),
                                   rtol=1e-12)
        np.testing.assert_allclose(vf(p, xs).numpy(), tg.stack([loss(p, xs[b]) for b in range(size)]).numpy(),
                                   rtol=1e-12)
    for vm in (vg, vf):
        step = next(iter(vm._batched.signatures.values())).step
        assert vm.batched == 5 and tg.compiler.stats(step)["replay_count"] == 2


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_shared_parameters_per_sample_gradients_by_taps(dtype):
    """Shared parameters that meet the samples in mm (either side, through a transpose), add and
    sub are not copied per sample: their per-sample gradients come from taps on those rows."""
    rng = np.random.default_rng(3)
    params = tuple(tg.tensor(rng.standard_normal(s), dtype=dtype) for s in ((6, 4), (6,), (6, 3), (3,)))

    def loss(params, x, y):
        w1, b1, w2, c = params
        h = (w1 @ x + b1).tanh()  # W @ x: mm with the shared operand on the left
        h = (h[None] @ w2).reshape(3) - c  # x @ W: on the right; minus a shared vector
        return ((h - y) ** 2).mean()

    vg = func.vmap(func.grad(loss), in_dims=(None, 0, 0))
    for _ in range(3):
        xs, ys = tg.tensor(rng.standard_normal((5, 4)), dtype=dtype), tg.tensor(rng.standard_normal((5, 3)), dtype=dtype)
        got = vg(params, xs, ys)
        expect = [func.grad(loss)(params, xs[b], ys[b]) for b in range(5)]
        for j, g in enumerate(got):
            assert tuple(g.shape) == (5,) + tuple(params[j].shape)
            np.testing.assert_allclose(g.numpy(), np.stack([e[j].numpy() for e in expect]),
                                       rtol=1e-4 if dtype == tg.float32 else 1e-12, atol=1e-6)
    sig = next(iter(vg._batched.signatures.values()))
    assert [t.kind for t in sig.taps] == ["mm_left", "add", "mm_right", "add"]


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_linear_layers_per_sample_gradients_by_taps_through_the_transpose(dtype):
    """nn.Linear multiplies by weight.t(): the tap on that mm gives the transpose's gradient, and
    the chain of views leads it back to the weight's shape."""
    rng = np.random.default_rng(5)
    model = tg.nn.Sequential(tg.nn.Linear(5, 7), tg.nn.Tanh(), tg.nn.Linear(7, 3), tg.nn.Tanh(), tg.nn.Linear(3, 1))
    params = {k: v.detach().to(dtype) for k, v in model.named_parameters()}

    def loss(p, x, y):
        return ((func.functional_call(model, p, (x.unsqueeze(0),)) - y) ** 2).mean()

    vg = func.vmap(func.grad(loss), in_dims=(None, 0, 0))
    for size in (6, 6, 2):
        xs, ys = (tg.tensor(rng.standard_normal(s), dtype=dtype) for s in ((size, 5), (size, 1)))
        got = vg(params, xs, ys)
        expect = [func.grad(loss)(params, xs[b], ys[b]) for b in range(size)]
        for k in params:
            np.testing.assert_allclose(got[k].numpy(), np.stack([e[k].numpy() for e in expect]),
                                       rtol=1e-5 if dtype == tg.float32 else 1e-12, atol=1e-7)
    sig = next(iter(vg._batched.signatures.values()))
    assert [t.kind for t in sig.taps] == ["mm_right", "add"] * 3
    assert [[name for name, *_ in t.chain] for t in sig.taps] == [["t"], []] * 3


def test_taps_through_each_view_of_a_shared_parameter_against_a_loop():
    """Views between a shared parameter and the row it meets the samples in: transpose, permute,
    view, unsqueeze and squeeze, alone and chained; each tap's gradient goes back through them."""
    rng = np.random.default_rng(6)
    shapes = ((4, 3), (3, 1, 4), (12,), (1, 4), (4,), (3, 2), (2, 3))
    params = tuple(tg.tensor(rng.standard_normal(s), dtype=tg.float64) for s in shapes)

    def loss(params, x):
        a, b, c, d, e, f, k = params
        h = (a.t() @ x[:, None]).squeeze(1)  # t, then mm_left
        h = h + b.permute(2, 0, 1).reshape(4, 3).transpose(0, 1) @ x  # permute, view, transpose
        h = h[None] @ c.view(3, 4) + d  # view (mm_right), then add of a (1, 4)
        h = h.squeeze(0) - e.unsqueeze(0).squeeze(0)  # sub through unsqueeze and squeeze
        m = x.reshape(2, 2)
        r = ((m @ f.t()).tanh() ** 2).sum() + ((k.t() @ m).tanh() ** 2).sum()  # t into mm of matrices, each side
        return (h.tanh() ** 2).sum() + r

    vg = func.vmap(func.grad(loss), in_dims=(None, 0))
    for _ in range(3):
        xs = tg.tensor(rng.standard_normal((5, 4)), dtype=tg.float64)
        got = vg(params, xs)
        expect = [func.grad(loss)(params, xs[i]) for i in range(5)]
        for j, g in enumerate(got):
            np.testing.assert_allclose(g.numpy(), np.stack([e[j].numpy() for e in expect]), rtol=1e-12, atol=1e-14)
    sig = next(iter(vg._batched.signatures.values()))
    assert sig.taps is not None and len(sig.taps) == 7


def test_a_shared_parameter_also_used_apart_from_views_is_copied_per_sample():
    """A weight read by an elementwise row as well (weight decay here) has no tap: the parameters
    are copied per sample, with the same result as a loop."""
    rng = np.random.default_rng(7)
    w = tg.tensor(rng.standard_normal((3, 4)), dtype=tg.float64)

    def loss(w, x):
        return ((w @ x).tanh() ** 2).sum() + 0.1 * (w ** 2).sum()

    vg = func.vmap(func.grad(loss), in_dims=(None, 0))
    for _ in range(2):
        xs = tg.tensor(rng.standard_normal((5, 4)), dtype=tg.float64)
        np.testing.assert_allclose(vg(w, xs).numpy(), np.stack([func.grad(loss)(w, xs[i]).numpy() for i in range(5)]),
                                   rtol=1e-12)
    assert next(iter(vg._batched.signatures.values())).taps is None


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_per_sample_outer_products_of_taps_against_a_loop(dtype):
    """A shared weight's per-sample gradient from a tap on W @ x (x a column) or x @ W (x a row) is
    an outer product per sample. Small integers keep every sum exact in any order, so the batch
    (any size, one sample too) gives a loop's bits."""
    rng = np.random.default_rng(4)
    w1, w2 = (tg.tensor(rng.integers(-3, 4, s), dtype=dtype) for s in ((5, 3), (5, 5)))

    def loss(w1, w2, x):
        h = w1 @ x  # mm_left: g x^T
        return ((h[None] @ w2) ** 2).sum()  # mm_right, w2 square: x^T g

    vg = func.vmap(func.grad(loss, argnums=(0, 1)), in_dims=(None, None, 0))
    for size in (1, 1, 4, 1, 7):
        xs = tg.tensor(rng.integers(-3, 4, (size, 3)), dtype=dtype)
        got = vg(w1, w2, xs)
        expect = [func.grad(loss, argnums=(0, 1))(w1, w2, xs[b]) for b in range(size)]
        for j in range(2):
            assert np.array_equal(got[j].numpy(), np.stack([e[j].numpy() for e in expect])), (size, j)
    sig = next(iter(vg._batched.signatures.values()))
    assert [t.kind for t in sig.taps] == ["mm_left", "mm_right"]


def test_tap_products_reuse_only_the_arrays_nobody_holds():
    """A tap writes its per-sample products into an array of an earlier call only once the caller
    dropped every gradient and view of it: held results keep their values, and a steady loop that
    drops them takes its arrays back instead of page-faulting new ones in."""
    rng = np.random.default_rng(6)
    model = tg.nn.Sequential(tg.nn.Linear(4, 6), tg.nn.Tanh(), tg.nn.Linear(6, 1))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x):
        return (func.functional_call(model, p, (x.unsqueeze(0),)) ** 2).sum()

    vg = func.vmap(func.grad(loss), in_dims=(None, 0))
    batches = [tg.tensor(rng.standard_normal((8, 4)), dtype=tg.float32) for _ in range(5)]
    for x in batches[:2]:
        vg(params, x)  # (the first call records: its sums may round otherwise than a replay's)
    want = [{k: v.numpy().copy() for k, v in vg(params, x).items()} for x in batches]
    held = [vg(params, x) for x in batches[:3]]  # every call's gradients held: each its own arrays
    views = [vg(params, x)["0.weight"][1] for x in batches[3:]]  # a view holds its base
    for got, w in zip(held, want):
        for k in w:
            np.testing.assert_array_equal(got[k].numpy(), w[k])
    for v, w in zip(views, want[3:]):
        np.testing.assert_array_equal(v.numpy(), w["0.weight"][1])
    del held, views, got, v  # (the loop variables hold the last ones too)
    addresses = set()
    for _ in range(4):  # results dropped: the arrays of two calls back serve again
        g = vg(params, batches[0])
        np.testing.assert_array_equal(g["0.weight"].numpy(), want[0]["0.weight"])
        addresses.add(g["0.weight"].numpy().ctypes.data)
    assert len(addresses) == 2


def test_nested_vmap_of_grad_and_jacrev_of_grad_against_a_loop():
    """A transform's marks stay its own: vmap(vmap(grad(f))) and vmap(jacrev(grad(f))) are not
    taken for vmap(grad(f))."""
    f = lambda w, x: (w * x).sin().sum()
    w, xs = tg.randn(3, dtype=tg.float64), tg.randn(2, 4, 3, dtype=tg.float64)
    got = func.vmap(func.vmap(func.grad(f), in_dims=(None, 0)), in_dims=(None, 0))(w, xs)
    expect = tg.stack([tg.stack([func.grad(f)(w, xs[i, j]) for j in range(4)]) for i in range(2)])
    np.testing.assert_allclose(got.numpy(), expect.numpy(), rtol=1e-12)
    h = func.vmap(func.jacrev(func.grad(f)), in_dims=(None, 0))(w, xs[0])
    expect = tg.stack([func.jacrev(func.grad(f))(w, xs[0, j]) for j in range(4)])
    assert tuple(h.shape) == (4, 3, 3)
    np.testing.assert_allclose(h.numpy(), expect.numpy(), rtol=1e-12)


def test_long_joins_against_a_loop():
    """A stack or cat of more than three pieces is recorded as several rows; each batches."""
    f = lambda r: tg.stack([r, r * 2, r.sin(), r + 1, r.exp()], 1).sum(1) + tg.cat([r, r, r, r, r], 0)[:3]
    x = tg.randn(4, 3, dtype=tg.float64)
    vm = func.vmap(f)
    np.testing.assert_allclose(vm(x).numpy(), tg.stack([f(x[b]) for b in range(4)]).numpy(), rtol=1e-12)
    assert vm.batched == 1, vm.why


# rows that batch by the rules for reductions, scans, index maps, masks, nll_loss and in-place writes
RULED = ["clamp", "max", "min", "amax", "amin", "max_dim", "min_dim", "prod", "prod_dim", "norm", "var", "std_root",
         "cumsum", "flip", "repeat", "split", "unbind", "index", "index_select", "gather", "scatter_add", "where",
         "masked_fill", "nll_loss", "copy", "zero", "fill", "index_put"]


def _per_sample_grads(lib, fn, argnums, in_dims):
    F = func if lib is tg else lib.func
    return F.vmap(F.grad(lambda *xs: (fn(lib, *xs) ** 2).sum(), argnums=argnums), in_dims=in_dims)


def _arrays(out):
    return [g.numpy() for g in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("name", RULED)
def test_per_sample_gradients_through_the_rules_batch_as_torch_func(name):
    """vmap(grad(f)) through each rule batches (no call of f per sample), on the first call and on
    the compiled batch step's later ones with new values, and gives torch.func's per-sample
    gradients (a loop's where torch is missing)."""
    case = CASES[name].first
    n = len(case.shapes)
    in_dims = (0,) + (None,) * (n - 1) if n > 1 else 0  # (the first input mapped, the others shared)
    argnums = tuple(range(n)) if n > 1 else 0
    mine = _per_sample_grads(tg, case.fn, argnums, in_dims)
    try:
        import torch
        theirs = _per_sample_grads(torch, case.fn, argnums, in_dims)
    except ImportError:
        torch = None
    for seed in (11, 12, 13):
        rng = np.random.default_rng(seed)
        arrays = [np.stack([case.sampler(rng, case.shapes[0]) for _ in range(4)])] + \
            [case.sampler(rng, s) for s in case.shapes[1:]]
        got = _arrays(mine(*[tg.tensor(a) for a in arrays]))
        if torch is not None:
            expect = _arrays(theirs(*[torch.tensor(a) for a in arrays]))
        else:
            grad = func.grad(lambda *xs: (case.fn(tg, *xs) ** 2).sum(), argnums=argnums)
            per = [_arrays(grad(tg.tensor(arrays[0][b]), *[tg.tensor(a) for a in arrays[1:]])) for b in range(4)]
            expect = [np.stack(column) for column in zip(*per)]
        for g, e in zip(got, expect):
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)
    assert mine.batched == 3 and mine.looped == 0, mine.why


def _compiled_replays(vm):
    step = next(iter(vm._batched.signatures.values())).step
    return tg.compiler.stats(step)["replay_count"]


@pytest.mark.parametrize("dims", [(0, 0, 0), (0, None, None), (None, 0, 0)])
def test_index_tensors_mapped_and_not_against_a_loop(dims):
    """gather, index_select, x[index], max along a dim, scatter_add, where and masked_fill with the
    index tensors mapped (each sample its own) or shared, and x mapped or shared; the compiled batch
    step derives the positions again from new indices."""
    def f(x, i, j):
        picked = x.gather(1, i) * x.index_select(0, j).sum() + x[j].sum(0).sum() + x.max(1).values.sum()
        return tg.zeros(2, 3, dtype=x.dtype).scatter_add(1, i, picked.exp()) + \
            tg.where(x > 0.3, x, 0.0).masked_fill(x < -1.0, 2.0)

    def loss(*a):
        return (f(*a) ** 2).sum()

    rng = np.random.default_rng(4)
    vm, vg = func.vmap(f, in_dims=dims), func.vmap(func.grad(loss), in_dims=dims)
    for _ in range(3):
        x = tg.tensor(rng.standard_normal((5, 2, 3) if dims[0] == 0 else (2, 3)))
        shape = (5,) if dims[1] == 0 else ()
        i = tg.tensor(rng.integers(0, 3, shape + (2, 2)))
        j = tg.tensor(rng.integers(0, 2, shape + (3,)))
        args = lambda b: [t if d is None else t[b] for t, d in zip((x, i, j), dims)]  # noqa: E731
        np.testing.assert_allclose(vm(x, i, j).numpy(), tg.stack([f(*args(b)) for b in range(5)]).numpy(), rtol=1e-12)
        np.testing.assert_allclose(vg(x, i, j).numpy(), tg.stack([func.grad(loss)(*args(b)) for b in range(5)]).numpy(),
                                   rtol=1e-12)
    assert vm.batched == 3 and vg.batched == 3, (vm.why, vg.why)
    assert _compiled_replays(vm) == 1 and _compiled_replays(vg) == 1  # (the second call records the step)


@pytest.mark.parametrize("weighted", [False, True])
def test_per_sample_gradients_of_a_classifier_as_torch_func(weighted):
    """Per-sample gradients of cross_entropy (log_softmax and nll_loss rows; with class weights and
    an ignored class), each sample's target mapped: batched, on the compiled batch step's calls too,
    and torch.func's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    W, b = rng.standard_normal((4, 6)), rng.standard_normal(4)
    weight = np.array([0.5, 2.0, 1.0, 1.5]) if weighted else None

    def loss(lib, W, b, x, y):
        logits = (W @ x + b)[None]
        w = None if weight is None else lib.tensor(weight)
        return lib.nn.functional.cross_entropy(logits, y[None], weight=w, ignore_index=3 if weighted else -100) + \
            lib.nn.functional.cross_entropy(logits * 2, y[None], reduction="sum")

    vgs = [(lib, (func if lib is tg else lib.func)) for lib in (tg, torch)]
    vgs = [(lib, F.vmap(F.grad(lambda *a, lib=lib: loss(lib, *a), argnums=(0, 1)), in_dims=(None, None, 0, 0)))
           for lib, F in vgs]
    for _ in range(3):
        xs, ys = rng.standard_normal((8, 6)), rng.integers(0, 4, 8)
        mine, theirs = [vg(lib.tensor(W), lib.tensor(b), lib.tensor(xs), lib.tensor(ys)) for lib, vg in vgs]
        for m, t in zip(mine, theirs):
            np.testing.assert_allclose(m.numpy(), t.numpy(), rtol=1e-10, atol=1e-12)
    assert vgs[0][1].batched == 3, vgs[0][1].why
    assert _compiled_replays(vgs[0][1]) == 1


def test_masks_from_batched_values_against_a_loop():
    """where and masked_fill with masks computed from each sample's values, mask and values each
    mapped or not."""
    def f(x, y):
        return tg.where(x > y.mean(), x * y, y.exp()).masked_fill(y < 0.2, 1.5).sum(0) + x.clamp(-0.5, 0.5)

    rng = np.random.default_rng(6)
    for dims in ((0, 0), (0, None), (None, 0), (1, 0)):
        x = tg.tensor(rng.standard_normal((4, 3) if dims[0] != 1 else (3, 4)))
        y = tg.tensor(rng.standard_normal((4, 3)))
        vm = func.vmap(f, in_dims=dims)
        pick = lambda t, d, b: t if d is None else t.select(d, b)  # noqa: E731
        np.testing.assert_allclose(vm(x, y).numpy(), tg.stack([f(pick(x, dims[0], b), pick(y, dims[1], b))
                                                               for b in range(4)]).numpy(), rtol=1e-12)
        assert vm.batched == 1, vm.why


def test_in_place_writes_against_a_loop():
    """Writes into tensors func makes (setitem with a basic key or an index tensor, copy_,
    masked_fill_, clamp_) batch; a write into an argument loops."""
    def f(x, i):
        z = x * 2
        z[1:] = x[:2].exp()
        z[i] = x[0]
        z.masked_fill_(x > 1.0, 0.5)
        w = tg.zeros(3, dtype=x.dtype)
        w.copy_(z.flip(0))
        w.clamp_(min=0.0)
        return w * z

    rng = np.random.default_rng(7)
    x, i = tg.tensor(rng.standard_normal((5, 3))), tg.tensor(rng.integers(0, 3, (5, 1)))
    for fn in (f, func.grad(lambda x, i: f(x, i).sum())):
        vm = func.vmap(fn)
        for _ in range(2):
            np.testing.assert_allclose(vm(x, i).numpy(), tg.stack([fn(x[b], i[b]) for b in range(5)]).numpy(),
                                       rtol=1e-12)
        assert vm.batched == 2, vm.why
    vm, y = func.vmap(lambda x: x.mul_(2).sum()), x.clone()
    np.testing.assert_allclose(vm(y).numpy(), 2 * x.numpy().sum(1), rtol=1e-12)
    np.testing.assert_array_equal(y.numpy(), 2 * x.numpy())  # (as torch.func writes into the batch)
    assert vm.looped == 1 and "argument" in vm.why


def test_random_draws_batch_in_torch_funcs_modes():
    """randomness='same': one draw for all samples, the loop's values; 'different': one per sample;
    both batched, per-sample gradients too, and the compiled batch step draws afresh."""
    f = lambda w, r: ((w * r).sum() * tg.rand(()) + tg.randn(2).sum()) * r.sum()  # noqa: E731
    w, xs = tg.tensor([1.0, -2.0, 0.5]), tg.tensor(np.random.default_rng(8).standard_normal((6, 3)))
    for mode in ("same", "different"):
        for fn in (f, func.grad(f)):
            vm = func.vmap(fn, in_dims=(None, 0), randomness=mode)
            seen = []
            for _ in range(3):
                tg.manual_seed(5)
                got = vm(w, xs).numpy().reshape(6, -1)
                if mode == "same":  # (a loop whose every sample draws what the first drew)
                    loop = [(tg.manual_seed(5), fn(w, xs[b]))[1].numpy().reshape(-1) for b in range(6)]
                    np.testing.assert_allclose(got, np.stack(loop), rtol=1e-12)
                else:
                    assert len(set(got[:, 0].tolist())) == 6
                seen.append(got)
                got = vm(w, xs).numpy().reshape(6, -1)
                assert not np.array_equal(got, seen[-1])  # (fresh draws, unseeded)
            np.testing.assert_array_equal(seen[0], seen[2])  # (seeded: the same draws)
            assert vm.batched == 6 and vm.looped == 0, vm.why


SCALAR_SAMPLES = {
    "max": lambda r: r.max(), "amin": lambda r: r.amin(keepdim=True), "prod": lambda r: r.prod(),
    "prod_dim": lambda r: r.prod(0), "norm": lambda r: r.norm(p=3), "var": lambda r: r.var(correction=0) + r,
    "std": lambda r: r.std(0, correction=0) + r, "cumsum": lambda r: r.cumsum(0), "max_dim": lambda r: r.max(0).values,
    "indices": lambda r: r.max(0, keepdim=True).indices * r, "repeat": lambda r: r.repeat(3),
    "gather": lambda r: r[None].gather(0, tg.tensor([0, 0])), "where": lambda r: tg.where(r > 0, r, -r),
    "masked_fill": lambda r: r.masked_fill(r > 1, 0.0), "flip": lambda r: r.flip(0) * r,
}


@pytest.mark.parametrize("name", sorted(SCALAR_SAMPLES))
def test_scalar_samples_against_a_loop(name):
    """0-d samples: reductions over a dim of one after the batch axis; maps and masks of one element."""
    f = SCALAR_SAMPLES[name]
    x = tg.tensor([1.5, -2.0, 0.5, 3.0])
    for fn in (f, func.grad(lambda r: (f(r) ** 2).sum())):
        vm = func.vmap(fn)
        np.testing.assert_allclose(vm(x).numpy(), tg.stack([fn(x[b]) for b in range(4)]).numpy(), rtol=1e-12)
        assert vm.batched == 1, vm.why
