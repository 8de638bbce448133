import numpy as np
import pytest

from tapegrad.printing import PRINT_OPTS, format_tensor, set_printoptions

DEFAULTS = dict(precision=4, threshold=1000, edgeitems=3, linewidth=80, sci_mode=None)


@pytest.fixture(autouse=True)
def _restore_printoptions():
    yield
    set_printoptions(**DEFAULTS)
    try:
        import torch
    except ImportError:
        return
    torch.set_printoptions(**DEFAULTS)


def f32(x):
    return np.array(x, dtype=np.float32)


def f64(x):
    return np.array(x, dtype=np.float64)


rng = np.random.default_rng(0)

# (id, array). Each is also checked with requires_grad and grad_fn suffixes when floating.
ARRAYS = [
    ("scalar_int_valued", f32(3.0)),
    ("scalar_frac", f32(16.5)),
    ("scalar_neg", f32(-0.125)),
    ("scalar_tiny", f32(1e-5)),
    ("scalar_large", f32(3e9)),
    ("scalar_zero", f32(0.0)),
    ("scalar_neg_zero", f32(-0.0)),
    ("scalar_nan", f32(np.nan)),
    ("scalar_neg_inf", f32(-np.inf)),
    ("scalar_f64", f64(2.718281828)),
    ("int_valued", f32([2.0, 10.0])),
    ("int_valued_neg", f32([-1.0, 0.0, 100.0, -2000.0])),
    ("fractional", f32([0.1, 0.25, -3.75, 12.5])),
    ("mixed_magnitudes", f32([1e-3, 1.0, 5e3])),
    ("ratio_just_under_1000", f32([1.0, 999.0, 0.5])),
    ("tiny", f32([1e-5, 2e-6, 3e-7])),
    ("large", f32([1e9, 2e9, 3.5e10])),
    ("large_int_valued_sci", f32([1.0, 1e9])),
    ("nan_inf", f32([np.nan, np.inf, -np.inf, 1.0])),
    ("nan_inf_frac", f32([np.nan, np.inf, -np.inf, 1.5])),
    ("nan_inf_sci", f32([np.nan, np.inf, 1e-8, 1.0])),
    ("only_nonfinite", f32([np.nan, np.inf, -np.inf])),
    ("negative", f32([-1.5, -2.25, -0.001])),
    ("neg_zero", f32([-0.0, 0.0, 1.0])),
    ("neg_zero_frac", f32([-0.0, 0.5])),
    ("all_zero", f32([0.0, -0.0, 0.0])),
    ("rounds_up", f32([0.99999, 9.99996])),
    ("f64_vec", f64([1.0, 2.5, 3.14159265358979])),
    ("f64_sci", f64([1e-300, 1e300])),
    ("f64_int_valued", f64([1.0, 2.0])),
    ("random_2d", rng.standard_normal((3, 4)).astype(np.float32)),
    ("random_3d", rng.standard_normal((2, 3, 4)).astype(np.float32)),
    ("random_4d", rng.standard_normal((2, 2, 2, 3)).astype(np.float32)),
    ("random_3d_f64", rng.standard_normal((2, 2, 3))),
    ("sci_2d", f32(rng.standard_normal((3, 3)) * 10.0 ** rng.integers(-6, 6, (3, 3)))),
    ("int_valued_3d", np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
    ("row_wraps", rng.standard_normal(30).astype(np.float32)),
    ("row_wraps_2d", rng.standard_normal((2, 25)).astype(np.float32)),
    ("row_wraps_3d", rng.standard_normal((2, 2, 20)).astype(np.float32) * 1e6),
    ("row_wraps_ints", np.arange(40, dtype=np.float32)),
    ("summarize_1d", np.linspace(0, 1, 2000, dtype=np.float32)),
    ("summarize_2d", rng.standard_normal((50, 40)).astype(np.float32)),
    ("summarize_3d", rng.standard_normal((12, 10, 10)).astype(np.float32)),
    ("summarize_short_rows", rng.standard_normal((1001, 2)).astype(np.float32)),
    # The hidden middle must not push the shown edges into sci mode.
    ("summarize_hidden_big", f32([1.0, 2.0, 3.0] + [1e12] * 1000 + [4.0, 5.0, 6.0])),
    ("summarize_f64", rng.standard_normal((40, 30))),
    ("int64_vec", np.array([1, -20, 300], dtype=np.int64)),
    ("int64_scalar", np.array(-7, dtype=np.int64)),
    ("int64_2d", np.arange(12, dtype=np.int64).reshape(3, 4) - 5),
    ("int64_wraps", np.arange(100, dtype=np.int64) * 12345),
    ("int64_summarize", np.arange(2000, dtype=np.int64)),
    ("int64_summarize_2d", np.arange(3000, dtype=np.int64).reshape(60, 50)),
    ("bool_vec", np.array([True, False])),
    ("bool_true", np.array([True, True])),
    ("bool_scalar", np.array(False)),
    ("bool_2d", rng.random((3, 5)) > 0.5),
    ("bool_summarize", rng.random((40, 40)) > 0.5),
    ("empty_0", np.zeros(0, np.float32)),
    ("empty_0x3", np.zeros((0, 3), np.float32)),
    ("empty_3x0", np.zeros((3, 0), np.float32)),
    ("empty_2x0x4", np.zeros((2, 0, 4), np.float32)),
    ("empty_f64", np.zeros((0, 2), np.float64)),
    ("empty_int64", np.zeros(0, np.int64)),
    ("empty_int64_2d", np.zeros((4, 0), np.int64)),
    ("empty_bool", np.zeros((0, 1), bool)),
]

FLOAT_SUFFIXES = [(), ("requires_grad=True",), ("grad_fn=<MulBackward0>",)]


def dtype_suffix_for(a):
    """The dtype text torch shows for `a`, or None (float32 is torch's default float).

    The comparisons use torch's own "torch." names: "tapegrad." is longer, so it can move the
    point where the suffixes wrap, and the text must then differ from torch's.
    """
    default = a.dtype in (np.float32, np.int64, np.bool_)
    if default and (a.size or a.dtype == np.float32):
        return None
    return f"torch.{a.dtype.name}"


def torch_repr(torch, a, suffixes=()):
    t = torch.from_numpy(a.copy())
    if suffixes:
        t.requires_grad_()
        if suffixes == ("grad_fn=<MulBackward0>",):
            t = t * 1
    return repr(t)


CASES = [
    pytest.param(a, s, id=f"{name}-{s[0].split('=')[0] if s else 'plain'}")
    for name, a in ARRAYS
    for s in (FLOAT_SUFFIXES if a.dtype.kind == "f" else [()])
]


@pytest.mark.parametrize("a,suffixes", CASES)
def test_matches_torch(a, suffixes):
    torch = pytest.importorskip("torch")
    assert format_tensor(a, suffixes, dtype_suffix_for(a)) == torch_repr(torch, a, suffixes)


OTHER_DTYPES = [
    np.array([1, 2, 300], dtype=np.int32),
    np.array([[1, -2], [3, 4]], dtype=np.int16),
    np.array([0, 255], dtype=np.uint8),
    np.array([0.5, 1.0, 1e-3], dtype=np.float16),
    np.zeros((0, 2), dtype=np.int32),
]


@pytest.mark.parametrize("a", OTHER_DTYPES, ids=lambda a: f"{a.dtype.name}{a.shape}")
def test_other_dtypes_match_torch(a):
    torch = pytest.importorskip("torch")
    assert format_tensor(a, (), dtype_suffix_for(a)) == torch_repr(torch, a)


OPTIONS = [
    dict(precision=2),
    dict(precision=8),
    dict(sci_mode=True),
    dict(sci_mode=False),
    dict(linewidth=40),
    dict(linewidth=200),
    dict(threshold=5),
    dict(threshold=5, edgeitems=1),
    dict(threshold=5, edgeitems=0),
    dict(edgeitems=0),
]
OPTION_ARRAYS = [
    ("frac", f32([0.123456789, 1.5, -2.25])),
    ("int_valued", f32([1.0, 2.0, 30.0])),
    ("zeros", f32([0.0, -0.0])),
    ("tiny", f32([1e-6, 3.0])),
    ("vec20", rng.standard_normal(20).astype(np.float32)),
    ("mat", rng.standard_normal((8, 9)).astype(np.float32)),
    ("cube", rng.standard_normal((4, 5, 6)).astype(np.float32)),
    ("ints", np.arange(30, dtype=np.int64).reshape(5, 6)),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("name,a", OPTION_ARRAYS, ids=[n for n, _ in OPTION_ARRAYS])
def test_printoptions_match_torch(opts, name, a):
    torch = pytest.importorskip("torch")
    set_printoptions(**opts)
    torch.set_printoptions(**opts)
    suffixes = ("requires_grad=True",) if a.dtype.kind == "f" else ()
    assert format_tensor(a, suffixes) == torch_repr(torch, a, suffixes)


def test_long_suffix_wraps_like_torch():
    torch = pytest.importorskip("torch")
    a = rng.standard_normal((2, 8)).astype(np.float32)
    t = torch.from_numpy(a.copy()).requires_grad_()
    out = t.unsqueeze(0).squeeze(0)  # grad_fn=<SqueezeBackward1>, long enough to wrap
    expected = repr(out)
    assert expected.endswith("]],\n       grad_fn=<SqueezeBackward1>)")
    assert format_tensor(a, ("grad_fn=<SqueezeBackward1>",)) == expected


# Hard-coded expectations, so the module is checked even without torch.
EXPECTED = [
    (f32(16.5), ("grad_fn=<MeanBackward0>",), None, "tensor(16.5000, grad_fn=<MeanBackward0>)"),
    (f32([[1.0, 2.0]]), ("requires_grad=True",), None, "tensor([[1., 2.]], requires_grad=True)"),
    (f32([2.0, 10.0]), (), None, "tensor([ 2., 10.])"),
    (f32([[1.0, 2.0], [3.0, 4.0]]), (), None, "tensor([[1., 2.],\n        [3., 4.]])"),
    (f64([1.5]), ("requires_grad=True",), "tapegrad.float64",
     "tensor([1.5000], dtype=tapegrad.float64, requires_grad=True)"),
    (f32([1e-5, 1.0]), (), None, "tensor([1.0000e-05, 1.0000e+00])"),
    (f32([np.nan, np.inf, -1.0]), (), None, "tensor([nan, inf, -1.])"),
    (f32([-0.0, 0.5]), (), None, "tensor([-0.0000, 0.5000])"),
    (f32([[1.5] * 8, [2.5] * 8]), ("grad_fn=<MulBackward0>",), None,
     "tensor([[1.5000, 1.5000, 1.5000, 1.5000, 1.5000, 1.5000, 1.5000, 1.5000],\n"
     "        [2.5000, 2.5000, 2.5000, 2.5000, 2.5000, 2.5000, 2.5000, 2.5000]],\n"
     "       grad_fn=<MulBackward0>)"),
    (np.array([True, False]), (), None, "tensor([ True, False])"),
    (np.array([3, -12], dtype=np.int64), (), None, "tensor([  3, -12])"),
    (np.zeros((0, 3), np.float32), (), None, "tensor([], size=(0, 3))"),
    (np.zeros((0, 3), np.float64), (), "tapegrad.float64",
     "tensor([], size=(0, 3), dtype=tapegrad.float64)"),
    (np.zeros(0, np.int64), (), None, "tensor([], dtype=tapegrad.int64)"),
    (np.arange(2000, dtype=np.int64), (), None,
     "tensor([   0,    1,    2,  ..., 1997, 1998, 1999])"),
    (np.arange(8, dtype=np.float32).reshape(2, 2, 2), (), None,
     "tensor([[[0., 1.],\n         [2., 3.]],\n\n        [[4., 5.],\n         [6., 7.]]])"),
]


@pytest.mark.parametrize(
    "a,suffixes,dtype_suffix,expected", EXPECTED, ids=[e[3][:40] for e in EXPECTED]
)
def test_expected_strings(a, suffixes, dtype_suffix, expected):
    assert format_tensor(a, suffixes, dtype_suffix) == expected


def test_prefix_sets_indent():
    expected = "Parameter([[1.],\n           [2.]])"
    assert format_tensor(f32([[1.0], [2.0]]), prefix="Parameter(") == expected


def test_set_printoptions():
    set_printoptions(precision=2, sci_mode=True)
    assert (PRINT_OPTS.precision, PRINT_OPTS.sci_mode) == (2, True)
    assert format_tensor(f32([1.5])) == "tensor([1.50e+00])"
    set_printoptions(precision=4)  # omitting sci_mode resets it to automatic, as in torch
    assert PRINT_OPTS.sci_mode is None
    assert format_tensor(f32([1.5])) == "tensor([1.5000])"
    set_printoptions(threshold=4, edgeitems=1)
    assert format_tensor(np.arange(5, dtype=np.int64)) == "tensor([0,  ..., 4])"
