"""functional_call: a module called with other tensors for its parameters, alone and as the base of
per-sample gradients (vmap of grad) against torch.func."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad import func


def _mlp(lib, seed, dtype):
    rng = np.random.default_rng(seed)
    net = lib.nn.Sequential(lib.nn.Linear(4, 8), lib.nn.Tanh(), lib.nn.Linear(8, 1))
    values = {k: rng.standard_normal(tuple(p.shape)) * 0.5 for k, p in net.named_parameters()}
    params = {k: lib.tensor(v, dtype=dtype) for k, v in values.items()}
    return net, params


def test_call_with_other_parameters_leaves_the_module_alone():
    net, params = _mlp(tg, 0, tg.float64)
    before = {k: p for k, p in net.named_parameters()}
    x = tg.randn(3, 4, dtype=tg.float64)
    y = func.functional_call(net, params, (x,))
    h = (x @ params["0.weight"].t() + params["0.bias"]).tanh()
    np.testing.assert_allclose(y.numpy(), (h @ params["2.weight"].t() + params["2.bias"]).numpy(), rtol=1e-12)
    assert {k: p for k, p in net.named_parameters()} == before
    y2 = func.functional_call(net, ({"0.weight": params["0.weight"].float()}, {"0.bias": params["0.bias"].float()}),
                              x.float())
    assert tuple(y2.shape) == (3, 1)


def test_strict_and_tied_weights():
    net, params = _mlp(tg, 0, tg.float32)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\): '2.bias'"):
        func.functional_call(net, {k: v for k, v in params.items() if k != "2.bias"}, tg.ones(4), strict=True)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\): 'foo'"):
        func.functional_call(net, dict(params, foo=tg.ones(1)), tg.ones(4), strict=True)
    with pytest.raises(ValueError, match="multiple dictionaries"):
        func.functional_call(net, (params, params), tg.ones(4))
    lin = tg.nn.Linear(3, 3)
    tied = tg.nn.Sequential(lin, lin)
    w = tg.eye(3)
    out = func.functional_call(tied, {"0.weight": w, "0.bias": tg.zeros(3)}, tg.ones(3))
    np.testing.assert_array_equal(out.numpy(), np.ones(3))  # both layers took the given weight


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_per_sample_gradients_of_sequential_against_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    xs, ys = rng.standard_normal((6, 4)), rng.standard_normal((6, 1))
    results = []
    for lib, F in ((tg, func), (torch, torch.func)):
        net, params = _mlp(lib, 0, getattr(lib, dtype))

        def loss(p, x, y):
            out = F.functional_call(net, p, (x[None],))
            return ((out - y) ** 2).mean()

        g = F.vmap(F.grad(loss), in_dims=(None, 0, 0))(params, lib.tensor(xs, dtype=getattr(lib, dtype)),
                                                     lib.tensor(ys, dtype=getattr(lib, dtype)))
        results.append({k: v.detach().numpy() for k, v in g.items()})
    mine, theirs = results
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert mine[k].shape == theirs[k].shape == (6,) + theirs[k].shape[1:]
        np.testing.assert_allclose(mine[k], theirs[k], rtol=1e-4 if dtype == "float32" else 1e-12, atol=1e-6)
