"""The op surface beyond one case per row: broadcasting, keepdim and negative dims, tuple dims,
batched linear algebra, einsum forms, shape ops with many pieces, every indexing key, float32 and
non-contiguous inputs.

Each case is a program written once for both libraries; it is checked three ways, as the rows
are in test_rows.py: central finite differences in float64, torch when installed, and the jitted
adjoints against the differentiable VJPs (the create_graph path).
"""
import numpy as np
import pytest

import tapegrad as tg

RNG = np.random.default_rng(7)


def normal(shape):
    return RNG.standard_normal(shape)


def positive(shape):
    return RNG.uniform(0.5, 2.0, shape)


def distinct(shape):
    """Well-separated values: no ties for max/min/sort-like ops, no kinks within eps."""
    n = int(np.prod(shape))
    return (RNG.permutation(n) * 0.37 - n * 0.15).reshape(shape) + RNG.uniform(-0.05, 0.05, shape)


def ix(lib, v):
    return lib.tensor(v)


# name: (program, input shapes, sampler)
CASES = {
    # binary ops broadcast in the forward and sum each gradient back to its operand's shape
    "add_row": (lambda lib, x, y: x + y, [(2, 3), (3,)], normal),
    "add_col_row": (lambda lib, x, y: x + y, [(2, 1), (1, 3)], normal),
    "add_0d": (lambda lib, x, y: x + y, [(), (2, 3)], normal),
    # 0-d inputs of ops that pick along a dim: one element along dim 0, as torch's (np.flip of a 0-d
    # array is a NumPy scalar, which the engine cannot read as an array)
    "flip_0d": (lambda lib, x: x.flip(0) * x.flip(-1), [()], normal),
    "gather_0d": (lambda lib, x: x.gather(0, ix(lib, 0)) ** 2, [()], normal),
    "scatter_add_0d": (lambda lib, x, y: x.scatter_add(0, ix(lib, 0), y) * y, [(), ()], normal),
    "sub_lead": (lambda lib, x, y: x - y, [(4, 1, 3), (2, 3)], normal),
    "mul_inner": (lambda lib, x, y: x * y, [(2, 3, 4), (3, 1)], normal),
    "mul_same_object": (lambda lib, x: x * x[0], [(2, 3)], normal),
    "div_bcast": (lambda lib, x, y: x / y, [(3,), (2, 3)], positive),
    "pow_bcast": (lambda lib, x, y: x ** y, [(2, 3), (1, 3)], positive),
    "maximum_bcast": (lambda lib, x, y: lib.maximum(x, y), [(3, 1), (1, 4)], distinct),
    "minimum_bcast": (lambda lib, x, y: lib.minimum(x, y) * 2, [(3, 4), (4,)], distinct),
    "where_scalar": (lambda lib, x: lib.where(x > 0, x, 0.5) * x, [(2, 3)], distinct),
    "where_bcast": (lambda lib, x, y: lib.where(x > y, x * 2, y), [(2, 3), (3,)], distinct),
    "clamp_tensor": (lambda lib, x, y: x.clamp(min=y), [(2, 3), (3,)], distinct),
    "outer": (lambda lib, x, y: lib.outer(x, y), [(3,), (4,)], normal),
    # reductions: tuple dims, negative dims, keepdim
    "sum_tuple": (lambda lib, x: x.sum((0, -1)), [(2, 3, 4)], normal),
    "mean_keep": (lambda lib, x: x.mean(-1, keepdim=True) * x, [(2, 3)], normal),
    "prod_dim0": (lambda lib, x: x.prod(0), [(3, 4)], normal),
    "prod_zero": (lambda lib, x: (x * lib.tensor([1.0, 0.0, 1.0])).prod(-1), [(2, 3)], normal),
    "prod_two_zeros": (lambda lib, x: (x * lib.tensor([0.0, 0.0, 1.0])).prod(), [(3,)], normal),
    "amax_neg": (lambda lib, x: x.amax(-2), [(2, 3, 4)], distinct),
    "amin_tuple_keep": (lambda lib, x: x.amin((0, 2), keepdim=True) * x, [(2, 3, 4)], distinct),
    "max_keep": (lambda lib, x: x.max(1, keepdim=True)[0] * x, [(3, 4)], distinct),
    "min_all": (lambda lib, x: x.min() * x, [(3, 4)], distinct),
    "norm_all": (lambda lib, x: x.norm(), [(3, 4)], normal),
    "norm_p1": (lambda lib, x: x.norm(p=1, dim=0), [(3, 4)], distinct),
    "norm_p3_keep": (lambda lib, x: x.norm(p=3, dim=(0, 1), keepdim=True) * x, [(2, 3)], normal),
    "norm_inf": (lambda lib, x: x.norm(p=float("inf"), dim=-1), [(3, 4)], distinct),
    "var_dim": (lambda lib, x: x.var(1), [(3, 4)], normal),
    "var_biased": (lambda lib, x: x.var(unbiased=False), [(3, 4)], normal),
    "var_correction": (lambda lib, x: x.var(0, correction=0, keepdim=True), [(3, 4)], normal),
    "std_tuple": (lambda lib, x: x.std(dim=(0, 1), keepdim=True), [(2, 3, 2)], normal),
    "logsumexp": (lambda lib, x: x.logsumexp(-1), [(3, 4)], normal),
    "logsumexp_tuple": (lambda lib, x: lib.logsumexp(x, (0, 2), keepdim=True), [(2, 3, 2)], normal),
    "softmax_inner": (lambda lib, x: x.softmax(1) * x, [(2, 3, 4)], normal),
    "log_softmax_3d": (lambda lib, x: x.log_softmax(-2), [(2, 3, 4)], normal),
    "cumsum0": (lambda lib, x: x.cumsum(0) * x, [(3, 4)], normal),
    # linear algebra
    "matmul_1d_1d": (lambda lib, x, y: x @ y, [(4,), (4,)], normal),
    "matmul_1d_2d": (lambda lib, x, y: x @ y, [(4,), (4, 3)], normal),
    "matmul_2d_1d": (lambda lib, x, y: x @ y, [(3, 4), (4,)], normal),
    "matmul_batch_bcast": (lambda lib, x, y: x @ y, [(2, 1, 3, 4), (5, 4, 2)], normal),
    "matmul_1d_3d": (lambda lib, x, y: lib.matmul(x, y), [(4,), (2, 4, 3)], normal),
    "matmul_3d_1d": (lambda lib, x, y: x @ y, [(2, 3, 4), (4,)], normal),
    "mv": (lambda lib, x, y: x.mv(y), [(3, 4), (4,)], normal),
    "dot": (lambda lib, x, y: lib.dot(x, y), [(4,), (4,)], normal),
    "einsum_mm": (lambda lib, x, y: lib.einsum("ij,jk->ik", x, y), [(2, 3), (3, 4)], normal),
    "einsum_bmm": (lambda lib, x, y: lib.einsum("bij,bjk->bik", x, y), [(2, 2, 3), (2, 3, 4)], normal),
    "einsum_full": (lambda lib, x, y: lib.einsum("ij,ij->", x, y), [(2, 3), (2, 3)], normal),
    "einsum_trace": (lambda lib, x: lib.einsum("ii->", x), [(3, 3)], normal),
    "einsum_diag": (lambda lib, x: lib.einsum("ii->i", x), [(3, 3)], normal),
    "einsum_transpose": (lambda lib, x: lib.einsum("ij->ji", x), [(2, 3)], normal),
    "einsum_outer": (lambda lib, x, y: lib.einsum("i,j->ij", x, y), [(2,), (3,)], normal),
    "einsum_rowdot": (lambda lib, x, y: lib.einsum("bi,bi->b", x, y), [(3, 4), (3, 4)], normal),
    "einsum_implicit": (lambda lib, x, y: lib.einsum("ij,jk", x, y), [(2, 3), (3, 4)], normal),
    "einsum_ellipsis": (lambda lib, x, y: lib.einsum("...ij,...jk->...ik", x, y), [(2, 2, 3), (2, 3, 2)], normal),
    "einsum_sum_free": (lambda lib, x, y: lib.einsum("ijk,k->i", x, y), [(2, 3, 4), (4,)], normal),
    "einsum_chain3": (lambda lib, x, y, z: lib.einsum("ij,jk,kl->il", x, y, z), [(2, 3), (3, 4), (4, 2)], normal),
    "einsum_bilinear": (lambda lib, x, y, z: lib.einsum("bi,ij,bj->b", x, y, z), [(3, 2), (2, 4), (3, 4)], normal),
    "einsum_shared3": (lambda lib, x, y, z: lib.einsum("i,i,i->", x, y, z), [(4,), (4,), (4,)], normal),
    "einsum_ellipsis3": (lambda lib, x, y, z: lib.einsum("...ij,...jk,...k", x, y, z), [(2, 2, 3), (2, 3, 2), (2, 2)],
                         normal),
    # shape ops
    "flatten_mid": (lambda lib, x: x.flatten(1).exp(), [(2, 3, 4)], normal),
    "flatten_all": (lambda lib, x: lib.flatten(x).exp(), [(2, 3)], normal),
    "cat_many": (lambda lib, *xs: lib.cat(list(xs), -1), [(2, k) for k in range(1, 8)], normal),
    "stack_many": (lambda lib, *xs: lib.stack(list(xs), 1), [(2, 3)] * 5, normal),
    "split_sections": (lambda lib, x: x.split([1, 2], 1)[1] * x.split([1, 2], 1)[0], [(2, 3)], normal),
    "chunk": (lambda lib, x: x.chunk(3, -1)[2] * 2 + x.chunk(3, -1)[0], [(2, 5)], normal),
    "unbind": (lambda lib, x: x.unbind(1)[2] * x.unbind(1)[0], [(2, 3)], normal),
    "narrow": (lambda lib, x: x.narrow(0, 1, 2).exp(), [(3, 2)], normal),
    "repeat_expand": (lambda lib, x: x.unsqueeze(0).repeat(2, 1, 3), [(2, 3)], normal),
    "expand_as": (lambda lib, x, y: x.expand_as(y) * y, [(1, 3), (2, 3)], normal),
    "flip_3d": (lambda lib, x: x.flip(1) * x, [(2, 3, 2)], normal),
    # indexing
    "index_list": (lambda lib, x: x[[2, 0, 2]], [(3, 2)], normal),
    "index_tensor_2d": (lambda lib, x: x[:, ix(lib, [[1, 0], [2, 2]])], [(2, 3)], normal),
    "index_mask": (lambda lib, x: x[x > 0.2], [(3, 4)], distinct),
    "index_none_ellipsis": (lambda lib, x: x[None, ..., 1], [(2, 3, 4)], normal),
    "index_pairs": (lambda lib, x: x[ix(lib, [0, 1, 1]), ix(lib, [2, 0, 2])], [(2, 3)], normal),
    "index_slice_step": (lambda lib, x: x[::2, 1:], [(4, 3)], normal),
    "gather_dup": (lambda lib, x: x.gather(0, ix(lib, [[1, 1, 0], [1, 0, 0]])), [(2, 3)], normal),
    "scatter_add_dup": (lambda lib, x, y: x.scatter_add(0, ix(lib, [[1, 1, 0], [1, 0, 0]]), y), [(2, 3), (2, 3)],
                        normal),
    "index_select_0d": (lambda lib, x: x.index_select(0, ix(lib, 1)), [(3, 2)], normal),
    "masked_fill_bcast": (lambda lib, x: x.masked_fill(ix(lib, [True, False, True]), -1.0), [(2, 3)], normal),
    "repeat_interleave": (lambda lib, x: x.repeat_interleave(2, dim=0), [(2, 3)], normal),
    # non-contiguous inputs: transposed, sliced, expanded
    "noncontig_t_mm": (lambda lib, x, y: x.t() @ y, [(4, 3), (4, 2)], normal),
    "noncontig_slice": (lambda lib, x: x[:, ::2].exp() * x[:, 1::2], [(2, 6)], normal),
    "noncontig_expand": (lambda lib, x, y: x.expand(3, 2, 4) * y, [(2, 4), (3, 1, 4)], normal),
    "noncontig_permute_sum": (lambda lib, x: x.permute(2, 0, 1).softmax(-1), [(2, 3, 4)], normal),
    "noncontig_bmm": (lambda lib, x, y: lib.bmm(x.transpose(1, 2), y), [(2, 4, 3), (2, 4, 2)], normal),
}


# Composites (STYLE.md: few primitives) whose grad_fn is still their last primitive's, where torch
# has a node of its own; values and gradients match. (var, std, logsumexp, dot, mv show torch's node.)
COMPOSITE = {"clamp_tensor", "matmul_1d_1d", "matmul_1d_2d", "matmul_2d_1d", "matmul_3d_1d",
             "einsum_mm", "einsum_bmm", "einsum_full", "einsum_trace", "einsum_diag", "einsum_transpose",
             "einsum_outer", "einsum_rowdot", "einsum_implicit", "einsum_ellipsis", "einsum_sum_free",
             "einsum_chain3", "einsum_bilinear", "einsum_shared3", "einsum_ellipsis3",
             "index_none_ellipsis", "repeat_interleave", "matmul_1d_3d"}


def _inputs(name):
    shapes, sampler = CASES[name][1:3]
    state = RNG.bit_generator.state
    arrays = [sampler(s) for s in shapes]
    RNG.bit_generator.state = state
    return arrays


def _run(lib, name, arrays, dtype="float64"):
    xs = [lib.tensor(a, dtype=getattr(lib, dtype), requires_grad=True) for a in arrays]
    return xs, CASES[name][0](lib, *xs)


def _cotangent(shape):
    return np.random.default_rng(1).standard_normal(shape)


@pytest.mark.parametrize("name", sorted(CASES))
def test_finite_differences(name):
    arrays = _inputs(name)
    xs, y = _run(tg, name, arrays)
    v = _cotangent(tuple(y.shape))
    y.backward(tg.tensor(v))
    eps = 1e-6
    for k, a in enumerate(arrays):
        num = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            hi, lo = [b.copy() for b in arrays], [b.copy() for b in arrays]
            hi[k][i] += eps
            lo[k][i] -= eps
            with tg.no_grad():
                fhi = CASES[name][0](tg, *[tg.tensor(b) for b in hi]).numpy()
                flo = CASES[name][0](tg, *[tg.tensor(b) for b in lo]).numpy()
            num[i] = np.sum((fhi - flo) * v) / (2 * eps)
        np.testing.assert_allclose(xs[k].grad.numpy(), num, rtol=1e-5, atol=1e-7, err_msg=f"input {k}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_against_torch(name):
    torch = pytest.importorskip("torch")
    arrays = _inputs(name)
    xs, y = _run(tg, name, arrays)
    txs, ty = _run(torch, name, arrays)
    assert tuple(y.shape) == tuple(ty.shape)
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    if name not in COMPOSITE:
        assert y.grad_fn.name() == ty.grad_fn.name()
    v = _cotangent(tuple(y.shape))
    y.backward(tg.tensor(v))
    ty.backward(torch.tensor(v))
    for k, (x, tx) in enumerate(zip(xs, txs)):
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"input {k}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_jitted_and_differentiable_adjoints_agree(name):
    xs, y = _run(tg, name, _inputs(name))
    v = tg.tensor(_cotangent(tuple(y.shape)))
    jitted = tg.autograd.grad(y, xs, v, retain_graph=True)
    recorded = tg.autograd.grad(y, xs, v, create_graph=True)
    for a, b in zip(jitted, recorded):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-12)


FLOAT32 = ["add_row", "mul_inner", "maximum_bcast", "prod_dim0", "amax_neg", "norm_all", "var_dim", "logsumexp",
           "softmax_inner", "log_softmax_3d", "cumsum0", "matmul_batch_bcast", "einsum_bmm", "cat_many",
           "index_mask", "scatter_add_dup", "noncontig_t_mm", "noncontig_expand"]


@pytest.mark.parametrize("name", FLOAT32)
def test_float32_gradients_keep_dtype(name):
    arrays = _inputs(name)
    xs, y = _run(tg, name, arrays, "float32")
    assert y.dtype == tg.float32
    y.sum().backward()
    for x in xs:
        assert x.grad.dtype == tg.float32
    xs64, y64 = _run(tg, name, arrays)
    y64.sum().backward()
    for x, x64 in zip(xs, xs64):
        np.testing.assert_allclose(x.grad.numpy(), x64.grad.numpy(), rtol=2e-4, atol=2e-4)


def test_mixed_dtypes_promote_and_grads_keep_each_dtype():
    x = tg.tensor(normal((2, 3)), dtype=tg.float32, requires_grad=True)
    y = tg.tensor(normal((3,)), dtype=tg.float64, requires_grad=True)
    z = x * y
    assert z.dtype == tg.float64
    z.sum().backward()
    assert x.grad.dtype == tg.float32 and y.grad.dtype == tg.float64
    np.testing.assert_allclose(y.grad.numpy(), x.detach().numpy().astype(np.float64).sum(0), rtol=1e-6)


def test_max_min_with_dim_return_values_and_indices():
    torch = pytest.importorskip("torch")
    a = distinct((3, 4))
    for lib in (tg, torch):
        x = lib.tensor(a, requires_grad=True)
        r = x.max(1)
        assert r.indices.dtype == lib.int64 and not r.indices.requires_grad
    tr = torch.tensor(a).min(0, keepdim=True)
    r = tg.tensor(a).min(0, keepdim=True)
    np.testing.assert_array_equal(r.indices.numpy(), tr.indices.numpy())
    np.testing.assert_array_equal(r.values.numpy(), tr.values.numpy())
    v, i = tg.max(tg.tensor(a), -1)
    np.testing.assert_array_equal(i.numpy(), a.argmax(-1))


def test_ties_share_the_gradient_like_torch():
    torch = pytest.importorskip("torch")
    a = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])
    for prog in (lambda lib, x: x.max(), lambda lib, x: x.amax(1), lambda lib, x: x.amin(0),
                 lambda lib, x: lib.maximum(x, x.flip(1)), lambda lib, x: x.norm(p=float("inf"), dim=1)):
        grads = []
        for lib in (tg, torch):
            x = lib.tensor(a, dtype=lib.float64, requires_grad=True)
            prog(lib, x).sum().backward()
            grads.append(x.grad.numpy())
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12)


def test_zero_norm_has_zero_gradient():
    x = tg.zeros(3, dtype=tg.float64, requires_grad=True)
    x.norm().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros(3))
    (g,) = tg.autograd.grad(tg.zeros(3, dtype=tg.float64, requires_grad=True).norm(dim=0), [x], allow_unused=True)
    assert g is None


def test_comparisons_and_tests_do_not_require_grad():
    torch = pytest.importorskip("torch")
    a, b = distinct((2, 3)), distinct((3,))
    a[0, 0] = np.nan
    for name in ("lt", "le", "gt", "ge", "eq", "ne"):
        got = getattr(tg.tensor(a, requires_grad=True), f"__{name}__")(tg.tensor(b))
        want = getattr(torch.tensor(a), f"__{name}__")(torch.tensor(b))
        assert got.dtype == tg.bool and not got.requires_grad
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    x = tg.tensor(a, requires_grad=True)
    for name in ("isnan", "isfinite", "argmax", "argmin"):
        got = getattr(x, name)()
        assert not got.requires_grad
    np.testing.assert_array_equal(tg.isnan(x).numpy(), np.isnan(a))
    np.testing.assert_array_equal(tg.tensor(b).argmax().numpy(), torch.tensor(b).argmax().numpy())
    np.testing.assert_array_equal(tg.tensor(a[1:]).argmin(1, keepdim=True).numpy(),
                                  torch.tensor(a[1:]).argmin(1, keepdim=True).numpy())
    assert (x == None) is False  # noqa: E711 (torch answers False too)
    m = (tg.tensor(b) > 0) & ~(tg.tensor(b) > 1)
    np.testing.assert_array_equal(m.numpy(), (b > 0) & ~(b > 1))


def test_where_with_condition_only_is_nonzero():
    torch = pytest.importorskip("torch")
    a = np.array([[0.0, 1.0], [2.0, 0.0]])
    for got, want in zip(tg.where(tg.tensor(a) > 0), torch.where(torch.tensor(a) > 0)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_split_and_chunk_pieces_match_torch():
    torch = pytest.importorskip("torch")
    a = normal((7, 2))
    for args in ((3,), ([2, 5],), (7,)):
        got = [p.numpy() for p in tg.tensor(a).split(*args)]
        want = [p.numpy() for p in torch.tensor(a).split(*args)]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    for n in (1, 2, 3, 4, 7, 9):
        assert [tuple(p.shape) for p in tg.tensor(a).chunk(n)] == [tuple(p.shape) for p in torch.tensor(a).chunk(n)]


def test_vectorised_sin_cos_on_large_tensors_match_numpy():
    """sin/cos of 4096+ elements take the vectorised kernels (forward and adjoint)."""
    a = np.random.default_rng(2).uniform(-20, 20, 10000)
    x = tg.tensor(a, requires_grad=True)
    y = x.sin()
    np.testing.assert_allclose(y.detach().numpy(), np.sin(a), rtol=0, atol=4e-16)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.cos(a), rtol=0, atol=4e-16)
    x.grad = None
    x.cos().sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), -np.sin(a), rtol=0, atol=4e-16)


def test_zero_dim_inputs_keep_zero_dim_results():
    torch = pytest.importorskip("torch")
    for prog in (lambda lib, x: x.max(0).values, lambda lib, x: x.max(0).indices, lambda lib, x: x.argmax(0),
                 lambda lib, x: x.softmax(0), lambda lib, x: x.cumsum(-1), lambda lib, x: x.amax(),
                 lambda lib, x: lib.where(x > 0, x, 0.0), lambda lib, x: x.norm(), lambda lib, x: x.prod(0)):
        got, want = prog(tg, tg.tensor(1.5)), prog(torch, torch.tensor(1.5))
        assert tuple(got.shape) == tuple(want.shape) == ()
        assert got.item() == pytest.approx(want.item())


# -- Python float operands (recorded as scalar rows; NumPy gets a cached 0-d array) ---------------
SCALARS = [0.9, 0.1, -0.0, 0.0, float("nan"), float("inf"), -float("inf"), 1e-45, 3.0000001, 1e300]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["add", "sub", "mul", "truediv", "rsub"])
def test_float_operands_give_numpys_python_float_results(op, dtype):
    """Bit for bit what NumPy gives with the Python float (signed zeros, NaN, float32 rounding)."""
    import operator
    v = np.array([0.5, -2.0, 0.0, -0.0, 7.25], dtype)
    f = (lambda a, c: c - a) if op == "rsub" else getattr(operator, op)
    x = tg.tensor(v, requires_grad=True)
    with np.errstate(all="ignore"):
        for c in SCALARS:
            got, want = f(x, c).detach().numpy(), f(v, c)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got.view(f"u{v.itemsize}"), want.view(f"u{v.itemsize}"))


def test_float_operand_cache_stays_bounded():
    from tapegrad import operands
    for dtype in (tg.float32, tg.float64):
        x = tg.ones(1, dtype=dtype, requires_grad=True)
        for k in range(3000):
            x * (1.0 + k * 1e-3)
    assert len(operands.OPERANDS) <= 1024 and len(operands.F64_OPERANDS) <= 1024
    assert not operands.OPERANDS[next(iter(operands.OPERANDS))].flags.writeable


# The operators with a Python float and the unary float functions have their own recorders
# (_record.recorder): they must agree with torch in value, dtype, node and
# gradient for every kind of tensor, and send what they do not handle to the general path.
OPERATOR_EXPRS = ["x + 0.5", "0.5 + x", "x - 0.5", "x * 0.5", "0.5 * x", "x / 0.5", "x * 2", "x + True",
                  "lib.sin(x)", "lib.exp(x)", "lib.tanh(x)", "lib.sqrt(x.abs() + 1)"]
OPERATOR_INPUTS = {
    "0-d float64": lambda lib: lib.tensor(0.75, dtype=lib.float64, requires_grad=True),
    "float32": lambda lib: lib.tensor([0.5, -1.25, 3.0], requires_grad=True),
    "transposed float64": lambda lib: lib.tensor(np.arange(6.0).reshape(2, 3) / 7, dtype=lib.float64,
                                                 requires_grad=True),
    "int64": lambda lib: lib.tensor([1, 2, 3]),
}


@pytest.mark.parametrize("kind", OPERATOR_INPUTS)
@pytest.mark.parametrize("expr", OPERATOR_EXPRS)
def test_scalar_operators_and_unary_functions_match_torch(expr, kind):
    torch = pytest.importorskip("torch")
    out = {}
    for lib in (tg, torch):
        x = OPERATOR_INPUTS[kind](lib)
        if kind.startswith("transposed"):
            x = x.detach().t().requires_grad_()
        y = eval(expr, {"x": x, "lib": lib})
        grad = None
        if y.requires_grad:
            y.sum().backward()
            grad = x.grad.numpy()
        out[lib.__name__] = (y.detach().numpy(), str(y.dtype).split(".")[-1], type(y.grad_fn).__name__, grad)
    got, want = out["tapegrad"], out["torch"]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    assert got[0].shape == want[0].shape and got[1:3] == want[1:3]
    if want[3] is not None:
        np.testing.assert_allclose(got[3], want[3], rtol=1e-5)


# At a singular point an adjoint divides by zero: the gradient is inf or nan, as in torch, never
# an exception from inside the jitted interpreter (Numba's default error model raised one).
SINGULAR = ["x.sqrt()", "x.log()", "x.rsqrt()", "x.reciprocal()", "1 / x", "x.pow(0.5)", "(x * 0).sqrt()",
            "x / x", "x.norm()", "(x * 0).norm()"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("expr", SINGULAR)
def test_gradients_at_singular_points_match_torch(expr, dtype):
    torch = pytest.importorskip("torch")
    grads = []
    for lib in (tg, torch):
        x = lib.tensor([0.0, 1.0, 4.0], dtype=getattr(lib, dtype), requires_grad=True)
        with np.errstate(all="ignore"):
            eval(expr, {"x": x}).sum().backward()
        grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)


@pytest.mark.parametrize("call", [lambda lib, x: lib.sin(x, 2.0), lambda lib, x: lib.exp(x, x),
                                  lambda lib, x: x.tanh(0.5)])
def test_unary_functions_refuse_a_second_argument(call):
    torch = pytest.importorskip("torch")
    for lib in (tg, torch):
        with pytest.raises(TypeError):
            call(lib, lib.ones(2, requires_grad=True))


# Rows that declare their own front end (ops.binary_elementwise): atan2 and hypot.
BINARY_FLOAT = ["atan2", "hypot"]


@pytest.mark.parametrize("name", BINARY_FLOAT)
@pytest.mark.parametrize("call", [lambda lib, f, x: getattr(lib, f)(x, 2.0), lambda lib, f, x: getattr(lib, f)(2.0, x),
                                  lambda lib, f, x: getattr(x, f)(2.0)])
def test_binary_float_functions_take_tensors_only(name, call):
    torch = pytest.importorskip("torch")
    messages = []
    for lib in (tg, torch):
        with pytest.raises(TypeError) as err:
            call(lib, name, lib.ones(2, requires_grad=True))
        messages.append(str(err.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("name", BINARY_FLOAT)
def test_binary_float_functions_broadcast_zero_dim_operands_and_promote_integers(name):
    torch = pytest.importorskip("torch")
    out = []
    for lib in (tg, torch):
        x = lib.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.5]], dtype=lib.float64, requires_grad=True)
        s = lib.tensor(-0.75, dtype=lib.float64, requires_grad=True)
        n = lib.tensor([1, 2, 3])
        y = getattr(lib, name)(x, s) + getattr(lib, name)(s, x) + getattr(x, name)(n)
        if name == "atan2":
            y = y + lib.atan2(n, n)
        else:
            with pytest.raises(NotImplementedError, match="\"hypot_cpu\" not implemented for 'Long'"):
                lib.hypot(n, n)
        y.sum().backward()
        out.append((y.detach().numpy(), x.grad.numpy(), s.grad.numpy(), str(y.dtype).split(".")[1], type(y.grad_fn).__name__))
    for a, b in zip(*out):
        if isinstance(a, str):
            assert a == b
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("name", BINARY_FLOAT)
def test_binary_float_functions_in_place(name):
    torch = pytest.importorskip("torch")
    out = []
    for lib in (tg, torch):
        w = lib.tensor([1.0, -2.0, 3.0], requires_grad=True)
        o = lib.tensor([2.0, 0.5, -1.0], requires_grad=True)
        x = w * 1
        assert getattr(x, name + "_")(o) is x
        x.sum().backward()
        out.append((x.detach().numpy(), w.grad.numpy(), o.grad.numpy()))
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            getattr(w, name + "_")(o)
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-6)


# -- what torch accepts that users write ---------------------------------------------------------
def _mat(lib, rg=True):
    return lib.tensor([[1.0, 5.0, 3.0], [4.0, 2.0, 6.0]], dtype=lib.float64, requires_grad=rg)


def _outputs(r):
    return list(r) if isinstance(r, tuple) else [r]


# name: (torch's own spelling, NumPy's spelling): NumPy's axis= and keepdims= stand for dim= and
# keepdim= wherever torch's argument parser sees them
NUMPY_NAMES = {
    "sum": (lambda lib, x: x.sum(dim=1, keepdim=True), lambda lib, x: x.sum(axis=1, keepdims=True)),
    "sum_tuple": (lambda lib, x: lib.sum(x, dim=(0, 1)), lambda lib, x: lib.sum(x, axis=(0, 1))),
    "mean": (lambda lib, x: lib.mean(x, dim=0), lambda lib, x: lib.mean(x, axis=0)),
    "prod": (lambda lib, x: x.prod(dim=1, keepdim=True), lambda lib, x: x.prod(axis=1, keepdim=True)),
    "max": (lambda lib, x: x.max(dim=1, keepdim=True), lambda lib, x: x.max(axis=1, keepdims=True)),
    "min": (lambda lib, x: lib.min(x, dim=0), lambda lib, x: lib.min(x, axis=0)),
    "amax": (lambda lib, x: x.amax(dim=1), lambda lib, x: x.amax(axis=1)),
    "amin": (lambda lib, x: lib.amin(x, dim=(0, 1), keepdim=True), lambda lib, x: lib.amin(x, axis=(0, 1), keepdims=True)),
    "std": (lambda lib, x: x.std(dim=1, keepdim=True), lambda lib, x: x.std(axis=1, keepdims=True)),
    "var": (lambda lib, x: lib.var(x, dim=0, correction=0), lambda lib, x: lib.var(x, axis=0, correction=0)),
    "logsumexp": (lambda lib, x: x.logsumexp(dim=1, keepdim=True), lambda lib, x: x.logsumexp(axis=1, keepdims=True)),
    "argmax": (lambda lib, x: x.argmax(dim=1, keepdim=True), lambda lib, x: x.argmax(axis=1, keepdims=True)),
    "argmin": (lambda lib, x: lib.argmin(x, dim=0), lambda lib, x: lib.argmin(x, axis=0)),
    "any": (lambda lib, x: (x > 4).any(dim=1, keepdim=True), lambda lib, x: (x > 4).any(axis=1, keepdims=True)),
    "all": (lambda lib, x: lib.all(x > 1, dim=0), lambda lib, x: lib.all(x > 1, axis=0)),
    "softmax": (lambda lib, x: x.softmax(dim=1), lambda lib, x: x.softmax(axis=1)),
    "log_softmax": (lambda lib, x: lib.log_softmax(x, dim=0), lambda lib, x: lib.log_softmax(x, axis=0)),
    "cumsum": (lambda lib, x: x.cumsum(dim=1), lambda lib, x: x.cumsum(axis=1)),
    "squeeze": (lambda lib, x: x[:, None].squeeze(dim=1), lambda lib, x: x[:, None].squeeze(axis=1)),
    "unsqueeze": (lambda lib, x: lib.unsqueeze(x, dim=2), lambda lib, x: lib.unsqueeze(x, axis=2)),
    "unbind": (lambda lib, x: x.unbind(dim=1), lambda lib, x: x.unbind(axis=1)),
    "select": (lambda lib, x: x.select(dim=1, index=2), lambda lib, x: x.select(axis=1, index=2)),
    "cat": (lambda lib, x: lib.cat([x, x * 2], dim=1), lambda lib, x: lib.cat([x, x * 2], axis=1)),
    "stack": (lambda lib, x: lib.stack([x, x * 2], dim=1), lambda lib, x: lib.stack([x, x * 2], axis=1)),
    "chunk": (lambda lib, x: x.chunk(3, dim=1), lambda lib, x: x.chunk(3, axis=1)),
    "narrow": (lambda lib, x: x.narrow(dim=1, start=1, length=2), lambda lib, x: x.narrow(axis=1, start=1, length=2)),
    "index_select": (lambda lib, x: x.index_select(dim=1, index=lib.tensor([2, 0])),
                     lambda lib, x: x.index_select(axis=1, index=lib.tensor([2, 0]))),
    "gather": (lambda lib, x: x.gather(dim=1, index=lib.tensor([[2], [0]])),
               lambda lib, x: x.gather(axis=1, index=lib.tensor([[2], [0]]))),
    "repeat_interleave": (lambda lib, x: x.repeat_interleave(2, dim=1), lambda lib, x: x.repeat_interleave(2, axis=1)),
}


@pytest.mark.parametrize("name", sorted(NUMPY_NAMES))
def test_numpy_names_for_dim_and_keepdim(lib, name):
    torch_style, numpy_style = NUMPY_NAMES[name]
    x = _mat(lib)
    want, got = _outputs(torch_style(lib, x)), _outputs(numpy_style(lib, x))
    assert len(got) == len(want)
    for w, g in zip(want, got):
        assert tuple(g.shape) == tuple(w.shape) and g.dtype == w.dtype and g.tolist() == w.tolist()
    floats = [(w, g) for w, g in zip(want, got) if w.requires_grad]
    if floats:
        gw = lib.autograd.grad(sum((w * (k + 1)).sum() for k, (w, _) in enumerate(floats)), x)[0]
        gg = lib.autograd.grad(sum((g * (k + 1)).sum() for k, (_, g) in enumerate(floats)), x)[0]
        np.testing.assert_allclose(gg.tolist(), gw.tolist(), rtol=1e-12)


@pytest.mark.parametrize("call", [
    lambda lib, x: x.norm(axis=1),  # a Python function in torch: no NumPy names
    lambda lib, x: x.cumsum(axis=1, keepdims=True),  # no keepdim to alias
    lambda lib, x: x.flip(axis=1),  # its argument is dims
    lambda lib, x: x.softmax(),  # dim is required
    lambda lib, x: x.sum(1, axis=1),  # dim given twice
], ids=["norm", "cumsum_keepdims", "flip", "softmax_no_dim", "sum_dim_twice"])
def test_numpy_names_where_torch_takes_none(lib, call):
    with pytest.raises(TypeError):
        call(lib, _mat(lib))


def test_select_is_a_differentiable_view(lib):
    x = _mat(lib)
    y = x * 1
    s, t = y.select(1, 2), lib.select(y, 0, -1)
    assert type(s.grad_fn).__name__ == "SelectBackward0" and s.tolist() == [3.0, 6.0] and t.tolist() == [4.0, 2.0, 6.0]
    (s * t[:2]).sum().backward()
    assert x.grad.tolist() == [[0.0, 0.0, 4.0], [3.0, 6.0, 2.0]]
    with lib.no_grad():
        s[0] = 7.0  # a view: the write shows in y, and bumps the counter they share
    assert y[0, 2].item() == 7.0 and y._version == s._version == 1
    z = lib.tensor([1.0, 2.0, 3.0])
    e = z.select(0, 1)
    assert e.shape == () and e.item() == 2.0
    e.mul_(5)  # one element of a 1-D tensor: still a view
    assert z.tolist() == [1.0, 10.0, 3.0]
    assert lib.zeros(0, 3).select(1, 1).shape == (0,)
    assert lib.tensor([1.0, 2.0]).select(0, lib.tensor(1)).item() == 2.0


@pytest.mark.parametrize("call, error, words", [
    (lambda lib: lib.tensor([[1.0, 2.0, 3.0]]).select(1, 3), IndexError,
     r"select\(\): index 3 out of range for tensor of size \[1, 3\] at dimension 1"),
    (lambda lib: lib.tensor([[1.0, 2.0, 3.0]]).select(1, -4), IndexError,
     r"select\(\): index -4 out of range for tensor of size \[1, 3\] at dimension 1"),
    (lambda lib: lib.tensor([[1.0, 2.0, 3.0]]).select(2, 0), IndexError, r"Dimension out of range"),
    (lambda lib: lib.tensor(1.0).select(0, 0), IndexError, r"select\(\) cannot be applied to a 0-dim tensor"),
    (lambda lib: lib.tensor([1.0, 2.0]).select(0, 1.0), TypeError,
     r"select\(\): argument 'index' \(position 2\) must be int, not float"),
], ids=["past_end", "before_start", "dim", "zero_dim", "float_index"])
def test_select_bad_input(lib, call, error, words):
    with pytest.raises(error, match=words):
        call(lib)


def _hook_log(outputs, log):
    for k, t in enumerate(outputs):
        t.register_hook(lambda g, k=k: log.append((k, None if g is None else g.tolist())))


# how: (split it, x.grad for 5 * piece 0 + 2 * piece 1)
MULTI_OUTPUT = {
    "unbind": (lambda x: x.unbind(), [[5.0, 5.0], [2.0, 2.0]]),
    "unbind_1": (lambda x: x.unbind(1), [[5.0, 2.0], [5.0, 2.0]]),
    "split": (lambda x: x.split(1), [[5.0, 5.0], [2.0, 2.0]]),
    "chunk": (lambda x: x.chunk(2, 1), [[5.0, 2.0], [5.0, 2.0]]),
}


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("how", sorted(MULTI_OUTPUT))
def test_hooks_on_the_outputs_of_one_multi_output_node(lib, how, create_graph):
    """torch records unbind and split as one node: when it runs, the hooks of all its outputs run,
    with None for an output no gradient reached."""
    split, want = MULTI_OUTPUT[how]
    x = lib.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=lib.float64, requires_grad=True)
    pieces = split(x * 1)
    assert len(pieces) == 2 and not pieces[0].is_leaf
    log = []
    _hook_log(pieces, log)
    (pieces[1] * 3).sum().backward(create_graph=create_graph)
    assert log == [(0, None), (1, (pieces[1].detach() * 0 + 3).tolist())]
    log.clear()
    x.grad = None
    pieces = split(x * 1)
    _hook_log(pieces[::-1], log)  # (piece 1 is k = 0 here): output by output, as first registered
    pieces[0].register_hook(lambda g: log.append("again"))
    (pieces[1] * 2 + pieces[0] * 5).sum().backward(create_graph=create_graph)
    assert [entry if entry == "again" else entry[0] for entry in log] == [0, 1, "again"]
    assert x.grad.tolist() == want


def test_hook_on_a_piece_of_a_leaf_sees_none_when_another_piece_runs_backward(lib):
    """PyTorch's test_grad_nonleaf_register_hook: unbind's node runs for every piece, so the hook on
    piece 0 sees None when piece i's backward runs."""
    x = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
    pieces = x.unbind()
    seen = []
    pieces[0].register_hook(lambda g: seen.append(g if g is None else g.tolist()))
    pieces[0].backward(retain_graph=True)
    assert seen == [1.0] and x.grad.tolist() == [1.0, 0.0, 0.0] and pieces[0].grad_fn is not None
    pieces[2].backward(retain_graph=True)
    assert seen == [1.0, None] and x.grad.tolist() == [1.0, 0.0, 1.0]


def test_hook_may_not_replace_a_missing_gradient(lib):
    x = lib.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    a, b = (x * 1).unbind()
    a.register_hook(lambda g: lib.ones(2))
    with pytest.raises(RuntimeError, match="can't replace a None gradient with a non-None value"):
        b.sum().backward()


def test_unbind_bad_input(lib):
    with pytest.raises(IndexError, match="Dimension specified as 0 but tensor has no dimensions"):
        lib.tensor(1.0).unbind()
    with pytest.raises(IndexError, match="Dimension out of range"):
        lib.tensor([1.0]).unbind(1)


def test_tensor_is_torchs_legacy_constructor(lib):
    a = lib.Tensor([1, 2, 3])
    assert a.dtype == lib.float32 and a.tolist() == [1.0, 2.0, 3.0] and not a.requires_grad and a.is_leaf
    assert lib.Tensor([[1, 2], [3, 4]]).shape == (2, 2) and lib.Tensor((2, 3)).tolist() == [2.0, 3.0]
    assert lib.Tensor(np.array([1, 2])).dtype == lib.float32 and lib.Tensor([True, False]).tolist() == [1.0, 0.0]
    assert lib.Tensor(range(3)).tolist() == [0.0, 1.0, 2.0]
    assert lib.Tensor([lib.tensor(1.0), lib.tensor(2.0)]).tolist() == [1.0, 2.0]
    for t, shape in ((lib.Tensor(2, 3), (2, 3)), (lib.Tensor(2), (2,)), (lib.Tensor(), (0,)), (lib.Tensor(0), (0,)),
                     (lib.Tensor(lib.Size([2, 3])), (2, 3)), (lib.Tensor(size=(4,)), (4,)), (lib.Tensor(np.int64(2)), (2,))):
        assert tuple(t.shape) == shape and t.dtype == lib.float32  # sizes: uninitialised, as torch's
    assert lib.Tensor([1.0], device="cpu").tolist() == [1.0]
    lib.set_default_dtype(lib.float64)
    try:
        assert lib.Tensor([1]).dtype == lib.float64 and lib.Tensor(2).dtype == lib.float64
    finally:
        lib.set_default_dtype(lib.float32)


def test_tensor_of_a_tensor_is_an_alias(lib):
    t = lib.tensor([1.0, 2.0], requires_grad=True)
    a = lib.Tensor(t)
    assert a is not t and a.requires_grad and type(a.grad_fn).__name__ == "AliasBackward0"
    (a * 3).sum().backward()
    assert t.grad.tolist() == [3.0, 3.0]
    with lib.no_grad():
        a[0] = 5.0
    assert t.tolist() == [5.0, 2.0] and t._version == 1
    assert lib.Tensor(lib.tensor([1, 2])).dtype == lib.int64  # the dtype stays


def test_typed_legacy_constructors(lib):
    for cls, dt, data in ((lib.FloatTensor, lib.float32, [1.0, 2.0]), (lib.DoubleTensor, lib.float64, [1.0, 2.0]),
                          (lib.LongTensor, lib.int64, [1, 2]), (lib.IntTensor, lib.int32, [1, 2]),
                          (lib.BoolTensor, lib.bool, [True, False])):
        t = cls(data)
        assert t.dtype == dt and type(t) is lib.Tensor and t.tolist() == data
        assert cls(2, 3).shape == (2, 3) and cls(2, 3).dtype == dt
        assert isinstance(t, cls) and isinstance(t, lib.Tensor)
    assert not isinstance(lib.ones(2, dtype=lib.float64), lib.FloatTensor)
    assert lib.LongTensor([1.5, 2.0]).tolist() == [1, 2]
    with pytest.raises(TypeError, match="expected"):
        lib.FloatTensor(lib.tensor([1, 2]))


@pytest.mark.parametrize("call, error, words", [
    (lambda lib: lib.Tensor(3.5), TypeError, r"new\(\): data must be a sequence \(got float\)"),
    (lambda lib: lib.Tensor(True), TypeError, r"new\(\): data must be a sequence \(got bool\)"),
    (lambda lib: lib.Tensor(i for i in range(3)), TypeError, r"new\(\): data must be a sequence \(got generator\)"),
    (lambda lib: lib.Tensor("ab"), TypeError, r"new\(\): invalid data type 'str'"),
    (lambda lib: lib.Tensor(2, 3.0), TypeError, r"new\(\): argument 'size' failed to unpack the object at pos 2"),
    (lambda lib: lib.Tensor(-1, 2), RuntimeError, r"Trying to create tensor with negative dimension -1: \[-1, 2\]"),
    (lambda lib: lib.Tensor([2.0], requires_grad=True), TypeError, r"new\(\) received an invalid combination of arguments"),
    (lambda lib: lib.Tensor([2.0], dtype=lib.float64), TypeError, r"new\(\) received an invalid combination of arguments"),
], ids=["float", "bool", "generator", "str", "float_size", "negative_size", "requires_grad", "dtype"])
def test_tensor_legacy_constructor_bad_input(lib, call, error, words):
    with pytest.raises(error, match=words):
        call(lib)
