"""tg.nn.functional losses and layers against torch: values, gradients of every input, and the
keyword variants (reduction, weight, ignore_index, label_smoothing, pos_weight)."""
import numpy as np
import pytest

import tapegrad as tg

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(11)
LOGITS = RNG.standard_normal((4, 3))
LOGITS3 = RNG.standard_normal((2, 3, 5))
TARGET = np.array([0, 2, 1, 2])
TARGET3 = np.array([[0, 2, 1, 1, 0], [2, 2, 0, 1, 1]])
PROBS = RNG.uniform(0.05, 0.95, (4, 3))
LABELS = RNG.uniform(0, 1, (4, 3))


def t(lib, a, rg=False, dtype=None):
    if np.asarray(a).dtype.kind in "iu":
        return lib.tensor(a)
    return lib.tensor(a, dtype=dtype or lib.float64, requires_grad=rg)


# name: program(lib, F) -> loss; the float inputs made with rg=True are checked for gradients
CASES = {
    "mse_mean": lambda lib, F, x, y: F.mse_loss(x, y),
    "mse_sum": lambda lib, F, x, y: F.mse_loss(x, y, reduction="sum"),
    "mse_none": lambda lib, F, x, y: F.mse_loss(x, y, reduction="none"),
    "ce": lambda lib, F, x, y: F.cross_entropy(x, t(lib, TARGET)),
    "ce_sum_weight": lambda lib, F, x, y: F.cross_entropy(x, t(lib, TARGET), weight=y[0].exp().detach(), reduction="sum"),
    "ce_ignore": lambda lib, F, x, y: F.cross_entropy(x, t(lib, np.array([0, -100, 1, 2]))),
    "ce_ignore_in_range": lambda lib, F, x, y: F.cross_entropy(x, t(lib, TARGET), ignore_index=2),
    "ce_transposed": lambda lib, F, x, y: F.cross_entropy(x.t(), t(lib, np.array([3, 0, 1]))),
    "ce_smoothing": lambda lib, F, x, y: F.cross_entropy(x, t(lib, TARGET), label_smoothing=0.2),
    "ce_none": lambda lib, F, x, y: F.cross_entropy(x, t(lib, TARGET), reduction="none"),
    "ce_probs": lambda lib, F, x, y: F.cross_entropy(x, y.softmax(1)),
    "ce_spatial": lambda lib, F, x, y: F.cross_entropy(x.reshape(2, 3, 2) * 2, t(lib, TARGET[:4].reshape(2, 2))),
    "nll": lambda lib, F, x, y: F.nll_loss(x.log_softmax(1), t(lib, TARGET)),
    "nll_weight_mean": lambda lib, F, x, y: F.nll_loss(x.log_softmax(1), t(lib, TARGET), weight=y[1].exp().detach()),
    "bce": lambda lib, F, x, y: F.binary_cross_entropy(x.sigmoid(), y.sigmoid()),
    "bce_weight_sum": lambda lib, F, x, y: F.binary_cross_entropy(x.sigmoid(), t(lib, LABELS), weight=y.exp().detach(),
                                                                reduction="sum"),
    "bce_logits": lambda lib, F, x, y: F.binary_cross_entropy_with_logits(x * 3, y.sigmoid()),
    "bce_logits_pos_weight": lambda lib, F, x, y: F.binary_cross_entropy_with_logits(
        x, t(lib, LABELS), pos_weight=y[0].exp().detach(), reduction="none"),
    "bce_logits_zero_logit": lambda lib, F, x, y: F.binary_cross_entropy_with_logits(x * 0, y.sigmoid()),
    "linear": lambda lib, F, x, y: F.linear(x, y),
    "linear_bias": lambda lib, F, x, y: F.linear(x, y, y[0]),
    "linear_3d": lambda lib, F, x, y: F.linear(x.reshape(2, 2, 3), y, y[:, 0]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_against_torch(name):
    out = []
    for lib in (tg, torch):
        x, y = t(lib, LOGITS, rg=True), t(lib, PROBS[:3] if name.startswith("linear") else PROBS, rg=True)
        loss = CASES[name](lib, lib.nn.functional, x, y)
        v = np.random.default_rng(2).standard_normal(tuple(loss.shape))
        loss.backward(lib.tensor(v))
        out.append((loss.detach().numpy(), x.grad, y.grad))
    (l1, gx1, gy1), (l2, gx2, gy2) = out
    np.testing.assert_allclose(l1, l2, rtol=1e-10, atol=1e-12)
    for a, b in ((gx1, gx2), (gy1, gy2)):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)


def test_cross_entropy_3d_input_matches_torch():
    out = []
    for lib in (tg, torch):
        x = t(lib, LOGITS3, rg=True)
        loss = lib.nn.functional.cross_entropy(x, t(lib, TARGET3))
        loss.backward()
        out.append((loss.item(), x.grad.numpy()))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-12)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-10)


def test_float32_losses_keep_dtype():
    x = tg.tensor(LOGITS, dtype=tg.float32, requires_grad=True)
    loss = tg.nn.functional.cross_entropy(x, tg.tensor(TARGET))
    assert loss.dtype == tg.float32
    loss.backward()
    assert x.grad.dtype == tg.float32
    tx = torch.tensor(LOGITS, dtype=torch.float32, requires_grad=True)
    torch.nn.functional.cross_entropy(tx, torch.tensor(TARGET)).backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_binary_cross_entropy_saturates_like_torch():
    """log is clamped at -100: probabilities of exactly 0 and 1 give finite losses."""
    p = np.array([0.0, 1.0, 0.5])
    y = np.array([1.0, 0.0, 1.0])
    got = tg.nn.functional.binary_cross_entropy(tg.tensor(p, dtype=tg.float64), tg.tensor(y, dtype=tg.float64),
                                                reduction="none")
    want = torch.nn.functional.binary_cross_entropy(torch.tensor(p), torch.tensor(y), reduction="none")
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)


@pytest.mark.parametrize("call, exc, words", [
    (lambda lib: lib.nn.functional.cross_entropy(t(lib, LOGITS), t(lib, np.array([0, 1, 3, 0]))), IndexError,
     "Target 3 is out of bounds"),
    (lambda lib: lib.nn.functional.cross_entropy(t(lib, LOGITS), t(lib, np.array([0, 1]))), ValueError,
     r"Expected input batch_size \(4\) to match target batch_size \(2\)"),
    (lambda lib: lib.nn.functional.mse_loss(t(lib, LOGITS), t(lib, LOGITS), reduction="avg"), ValueError,
     "avg is not a valid value for reduction"),
    (lambda lib: lib.nn.functional.binary_cross_entropy(t(lib, LOGITS), t(lib, PROBS)), RuntimeError,
     "all elements of input should be between 0 and 1"),
    (lambda lib: lib.nn.functional.binary_cross_entropy(t(lib, PROBS), t(lib, PROBS[:2])), ValueError,
     "different to the input size"),
    (lambda lib: lib.nn.functional.binary_cross_entropy_with_logits(t(lib, PROBS), t(lib, PROBS[:2])), ValueError,
     "must be the same as input size"),
    (lambda lib: lib.nn.functional.linear(t(lib, LOGITS), t(lib, PROBS.T)), RuntimeError,
     r"mat1 and mat2 shapes cannot be multiplied \(4x3 and 4x3\)"),
])
def test_bad_input_raises_like_torch(call, exc, words):
    for lib in (tg, torch):
        with pytest.raises(exc, match=words):
            call(lib)
