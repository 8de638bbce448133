"""The worked examples our users learned autograd from (/work/shared/seeds.md), one test each.

Every test body is torch user code with ``tg`` for the library; the ``tg`` fixture runs it on
tapegrad and, where torch is installed, on torch too, so the numbers asserted here are torch's.
"""
import numpy as np
import pytest


@pytest.fixture(params=["tapegrad", "torch"])
def tg(request):
    if request.param == "torch":
        return pytest.importorskip("torch")
    import tapegrad
    return tapegrad


def val(t):
    return np.asarray(t.tolist(), dtype=np.float64)


def same(t, expected):
    """Exact float32 results, up to one rounding."""
    np.testing.assert_allclose(val(t), np.asarray(expected, dtype=np.float64), rtol=1e-6, atol=0)


def fn_name(t):
    """grad_fn's class name, checked against its name() (torch keeps the C++ namespace of CopySlices)."""
    name = type(t.grad_fn).__name__
    assert t.grad_fn.name() == ("torch::autograd::CopySlices" if name == "CopySlices" else name)
    return name


# -- A. autograd.grad and grad_outputs -------------------------------------------------------
def test_A1_grad_wrt_intermediate(tg):
    x = tg.rand(2, 2, requires_grad=True)
    y = x + 2
    z = tg.sum(y)
    dz = tg.autograd.grad(z, y)
    assert isinstance(dz, tuple) and len(dz) == 1
    same(dz[0], np.ones((2, 2)))
    assert x.grad is None  # autograd.grad never touches .grad


def test_A2_chained_vjps_by_hand(tg):
    x = tg.rand(2, 2, requires_grad=True)
    y = x ** 2
    z = tg.sum(y)
    dzdy = tg.autograd.grad(z, y, retain_graph=True)[0]
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        tg.autograd.grad(y, x, grad_outputs=tg.ones(4))
    dzdx = tg.autograd.grad(y, x, grad_outputs=dzdy)[0]
    same(dzdx, 2 * val(x))
    assert x.grad is None


def test_A3_autograd_backward_is_tensor_backward(tg):
    data = [[0.5, -1.0], [2.0, 3.0]]
    x1 = tg.tensor(data, requires_grad=True)
    x2 = tg.tensor(data, requires_grad=True)
    tg.autograd.backward((x1 * x1 + x1).sum())
    (x2 * x2 + x2).sum().backward()
    same(x1.grad, [[2.0, -1.0], [5.0, 7.0]])
    same(x2.grad, val(x1.grad))


def test_A4_allow_unused(tg):
    x = tg.rand(3, requires_grad=True)
    u = tg.rand(3, requires_grad=True)
    y = (x * 2).sum()
    gx, gu = tg.autograd.grad(y, (x, u), allow_unused=True, retain_graph=True)
    same(gx, [2.0, 2.0, 2.0])
    assert gu is None
    with pytest.raises(RuntimeError, match="appears to not have been used in the graph"):
        tg.autograd.grad(y, (x, u))


# -- B. leaves, requires_grad, grad_fn -------------------------------------------------------
def test_B1_requires_grad_propagation(tg):
    x = tg.tensor([1.0, 2.0])
    y = tg.tensor([3.0, 4.0])
    z = tg.tensor([5.0, 6.0], requires_grad=True)
    a = x + y
    b = a + z
    assert x.grad_fn is None and a.grad_fn is None
    assert (x.requires_grad, y.requires_grad, z.requires_grad) == (False, False, True)
    assert (a.requires_grad, b.requires_grad) == (False, True)
    assert fn_name(b) == "AddBackward0"
    assert (a.is_leaf, b.is_leaf, z.is_leaf) == (True, False, True)


def test_B2_later_requires_grad_does_not_reach_back(tg):
    x = tg.tensor([1.0, 2.0])
    y = tg.tensor([3.0, 4.0])
    a = x + y
    x.requires_grad = True
    assert x.requires_grad
    assert a.requires_grad is False and a.grad_fn is None


def test_B3_add_mul_mean_grad_fns(tg):
    x = tg.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    y = x + 2
    z = y * y * 3
    out = z.mean()
    same(y, [[3, 4, 5], [6, 7, 8]])
    assert fn_name(y) == "AddBackward0"
    same(z, [[27, 48, 75], [108, 147, 192]])
    assert fn_name(z) == "MulBackward0"
    assert out.item() == 99.5
    assert fn_name(out) == "MeanBackward0"
    assert x.grad_fn is None


@pytest.mark.parametrize("how", ["no_argument", "gradient_none"])
def test_B4_scalar_backward(tg, how):
    x = tg.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    out = ((x + 2) * (x + 2) * 3).mean()
    if how == "no_argument":
        out.backward()
    else:
        out.backward(gradient=None)
    same(x.grad, [[3, 4, 5], [6, 7, 8]])


def test_B5_vector_backward_needs_gradient(tg):
    x = tg.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    z = (x + 2) * (x + 2) * 3
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar outputs"):
        z.backward()
    z.backward(gradient=tg.ones(2, 3))
    same(x.grad, [[18, 24, 30], [36, 42, 48]])

    x = tg.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    z = (x + 2) * (x + 2) * 3
    z.backward(gradient=tg.full((2, 3), 0.5))
    same(x.grad, [[9, 12, 15], [18, 21, 24]])


def test_B6_backward_with_gradient_is_weighted_sum(tg):
    g = tg.tensor([[0.5, -1.0, 2.0], [0.25, 3.0, -0.75]])
    x1 = tg.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    x2 = tg.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    z1 = (x1 + 2) * (x1 + 2) * 3
    z2 = (x2 + 2) * (x2 + 2) * 3
    z1.backward(g)
    tg.sum(z2 * g).backward()
    same(x1.grad, val(x2.grad))
    same(x1.grad, 6 * (val(x1) + 2) * val(g))


# -- C. backward with a weight vector ----------------------------------------------------------
def test_C1_mean_of_affine(tg):
    a = tg.tensor([2.0, 3.0], requires_grad=True)
    out = ((a + 3) * 3).mean()
    assert out.item() == 16.5
    assert repr(out) == "tensor(16.5000, grad_fn=<MeanBackward0>)"
    out.backward()
    same(a.grad, [1.5, 1.5])


def test_C2_element_assignment_is_recorded(tg):
    a = tg.tensor([[2.0, 4.0]], requires_grad=True)
    b = tg.zeros(1, 2)
    b[0, 0] = a[0, 0] ** 2 + a[0, 1]
    b[0, 1] = a[0, 1] ** 3 + a[0, 0]
    assert b.requires_grad and not b.is_leaf
    assert fn_name(b) == "CopySlices"
    assert repr(b) == "tensor([[ 8., 66.]], grad_fn=<CopySlices>)"
    out = 2 * b
    same(out, [[16, 132]])
    assert repr(out) == "tensor([[ 16., 132.]], grad_fn=<MulBackward0>)"
    out.backward(tg.tensor([[1.0, 2.0]]))
    same(a.grad, [[12, 194]])  # [1, 2] @ [[8, 2], [2, 96]]


def test_C3_mm_weight_grad(tg):
    a = tg.tensor([[2.0, 3.0], [1.0, 2.0]], requires_grad=True)
    w = tg.ones(2, 1, requires_grad=True)
    out = tg.mm(a, w)
    assert fn_name(out) == "MmBackward0"
    same(out, [[5], [3]])
    out.backward(tg.tensor([[1.0], [1.0]]))
    same(w.grad, [[3], [5]])
    same(a.grad, [[1, 1], [1, 1]])


# -- D. leaves, accumulation, no_grad, .data ---------------------------------------------------
def test_D1_only_leaves_get_grad(tg):
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    c = tg.tensor([3.0, 4.0])
    y = x * c
    y.sum().backward()
    assert (x.is_leaf, c.is_leaf, y.is_leaf) == (True, True, False)
    same(x.grad, [3, 4])
    assert c.grad is None
    with pytest.warns(UserWarning, match="retain_grad"):
        assert y.grad is None


def test_D2_requires_grad_on_computed_plain_tensor_makes_a_leaf(tg):
    x = tg.ones(3, 3)
    x = x * x + 2
    assert x.grad_fn is None and not x.requires_grad
    x.requires_grad_(True)
    assert x.requires_grad and x.grad_fn is None and x.is_leaf
    same(x, np.full((3, 3), 3.0))


def test_D3_mean_of_square(tg):
    x = tg.ones(2, 2, requires_grad=True)
    out = tg.mean(3 * (x + 2) ** 2)
    assert out.item() == 27
    out.backward()
    same(x.grad, np.full((2, 2), 4.5))


def test_D4_grads_accumulate_until_zeroed(tg):
    x = tg.ones(2, 2, requires_grad=True)
    tg.mean(3 * (x + 2) ** 2).backward()
    same(x.grad, np.full((2, 2), 4.5))
    x.sum().backward()
    same(x.grad, np.full((2, 2), 5.5))
    x.grad.data.zero_()
    same(x.grad, np.zeros((2, 2)))
    x.sum().backward()
    same(x.grad, np.ones((2, 2)))


def test_D5_backward_through_view(tg):
    x = tg.tensor([1.0, 2.0, 3.0, 4.5], requires_grad=True)
    y = x * x + 2
    z = y.view(2, 2)
    assert fn_name(z) == "ViewBackward0"
    z.backward(tg.tensor([[1.0, 0.1], [1.0, 0.01]]))
    same(x.grad, [2, 0.4, 6, 0.09])


def test_D6_no_grad_part_is_not_differentiated(tg):
    x = tg.tensor(1.0, requires_grad=True)
    y1 = x ** 2
    with tg.no_grad():
        y2 = x ** 3
    y3 = y1 + y2
    y3.backward()
    same(x.grad, 2.0)
    assert y2.requires_grad is False and y2.grad_fn is None
    assert y1.requires_grad and y3.requires_grad


def test_D7_data_changes_value_not_graph(tg):
    x = tg.ones(1, requires_grad=True)
    assert x.data.requires_grad is False
    y = 2 * x
    x.data *= 100
    y.backward()
    same(x, [100.0])
    same(x.grad, [2.0])


# -- E. backward on vectors, leaves and retain_grad --------------------------------------------
def test_E1_vector_backward_with_ones(tg):
    a = tg.tensor([10.0, 10.0], requires_grad=True)
    b = tg.tensor([20.0, 20.0], requires_grad=True)
    F = a * b
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar outputs"):
        F.backward()
    F.backward(gradient=tg.ones(2))
    same(a.grad, [20, 20])
    same(b.grad, [10, 10])


def test_E2_nonleaf_grad_is_none_and_warns(tg):
    a = tg.tensor([10.0, 10.0], requires_grad=True)
    b = tg.tensor([20.0, 20.0], requires_grad=True)
    F = a * b
    G = 2 * F
    G.backward(tg.ones(2))
    with pytest.warns(UserWarning, match="retain_grad"):
        assert F.grad is None
    same(a.grad, [40, 40])


def test_E3_retain_grad(tg):
    a = tg.tensor([10.0, 10.0], requires_grad=True)
    b = tg.tensor([20.0, 20.0], requires_grad=True)
    F = a * b
    F.retain_grad()
    assert F.retains_grad
    G = 2 * F
    G.backward(tg.ones(2))
    same(F.grad, [2, 2])
    same(b.grad, [20, 20])


def test_E4_is_leaf(tg):
    a = tg.tensor([10.0, 10.0], requires_grad=True)
    b = tg.tensor([20.0, 20.0], requires_grad=True)
    F = a * b
    assert a.is_leaf and b.is_leaf
    assert F.is_leaf is False


def test_E5_second_backward_needs_retain_graph(tg):
    a = tg.tensor([10.0, 10.0], requires_grad=True)
    b = tg.tensor([20.0, 20.0], requires_grad=True)
    F = a * b
    F.backward(tg.ones(2))
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        F.backward(tg.ones(2))

    F = a * b
    F.backward(tg.ones(2), retain_graph=True)
    F.backward(tg.ones(2))
    same(a.grad, [60, 60])  # 20 from the first graph, then 20 twice


def test_E5_inplace_change_of_saved_value(tg):
    a = tg.tensor([10.0, 10.0], requires_grad=True)
    b = tg.tensor([20.0, 20.0], requires_grad=True)
    F = a * b
    G = F * F
    F.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        G.backward(tg.ones(2))


def test_E5_detach_shares_storage(tg):
    a = tg.tensor([10.0, 10.0], requires_grad=True)
    F = a * 2
    d = F.detach()
    assert d.requires_grad is False and d.grad_fn is None and d.is_leaf
    d[0] = 7.0
    same(F, [7, 20])


# -- the legacy wrapper --------------------------------------------------------------------
def test_legacy_Variable(tg):
    v = tg.autograd.Variable(tg.tensor([1.0, 2.0]), requires_grad=True)
    assert type(v) is tg.Tensor
    assert v.requires_grad and v.is_leaf
    (v * v).sum().backward()
    same(v.grad, [2, 4])
    w = tg.autograd.Variable(tg.ones(2))
    assert type(w) is tg.Tensor and not w.requires_grad
