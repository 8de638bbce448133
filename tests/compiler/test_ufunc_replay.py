"""Rows replayed by NumPy's own inner loops (jit/ufuncs.py): bit for bit eager's, jitted, in float32
and float64, small and large; the probe that finds the loops, and the NumPy replay where it fails."""
import numpy as np
import pytest

import tapegrad as tg

ufuncs = pytest.importorskip("tapegrad.jit.ufuncs")


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# row -> (the op, an input domain)
ROWS = {
    "tanh": (lambda x: x.tanh(), "wide"),
    "exp": (lambda x: x.exp(), "wide"),
    "log": (lambda x: x.log(), "positive"),
    "abs": (lambda x: x.abs(), "wide"),
    "sign": (lambda x: x.sign(), "wide"),
    "log1p": (lambda x: x.log1p(), "positive"),
    "expm1": (lambda x: x.expm1(), "wide"),
    "tan": (lambda x: x.tan(), "wide"),
    "erf": (lambda x: x.erf(), "wide"),
    "sigmoid": (lambda x: x.sigmoid(), "wide"),
    "sin": (lambda x: x.sin(), "wide"),
    "cos": (lambda x: x.cos(), "wide"),
    "rsqrt": (lambda x: x.rsqrt(), "positive"),
}
SIZES = (1, 7, 16, 100, 4099, 100_003)  # (SIMD bodies and tails; sin and cos switch kernels at 4096)
RNG = np.random.default_rng(11)


def _input(domain, n, dtype):
    x = RNG.standard_normal(n) * RNG.choice([0.01, 1.0, 5.0, 100.0], n)
    if n >= 100:
        x[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-310]
    if domain == "positive":
        x = np.abs(x)
    return tg.tensor(x.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(ROWS))
def test_row_replays_jitted_with_eager_bits(name, dtype):
    op, domain = ROWS[name]
    f = lambda x: op(x * 1.0)  # (x * 1.0: the row reads a value of the program, not an argument)
    cf = tg.compile(f)
    with np.errstate(all="ignore"):
        for n in SIZES:
            cf(_input(domain, n, dtype))  # records
            for _ in range(2):
                x = _input(domain, n, dtype)
                assert same(cf(x).numpy(), f(x).numpy()), (name, n)
    assert cf.replay_count == 2 * len(SIZES), tg.compiler.stats(cf)
    lines = [ln for ln in tg.dump(cf).splitlines() if f"= {name}(" in ln]
    assert len(lines) == len(SIZES) and all(ln.endswith("[jitted]") for ln in lines), lines


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_backward_through_replayed_loops(dtype):
    f = lambda x: (x.tanh() * x.sigmoid() + x.exp().log1p()).sum()
    cf = tg.compile(f)
    x = tg.randn(300, dtype=dtype, requires_grad=True)
    cf(x)
    y = cf(x)
    y.backward()
    g = x.grad.numpy().copy()
    x.grad = None
    ye = f(x)
    ye.backward()
    assert same(y.detach().numpy(), ye.detach().numpy()) and same(g, x.grad.numpy())


def test_a_chain_of_unary_rows_is_one_jitted_call():
    """W1's chain (y * 0.9, y + 0.1, sin, tanh, exp, then sum): one run of the interpreter."""
    def chain(x):
        y = x
        for _ in range(20):
            y = (((y * 0.9) + 0.1).sin().tanh()).exp()
        return y.sum()
    cf = tg.compile(chain)
    x = tg.tensor([0.5], dtype=tg.float64, requires_grad=True)
    cf(x)
    y = cf(x)
    assert same(y.detach().numpy(), chain(x).detach().numpy())
    (variant,) = [v for vs in cf._variants.values() for v in vs]
    assert [step[0] for step in variant.program.plan] == ["jit"]


# -- the probe ---------------------------------------------------------------------------------
def test_probe_reads_only_unary_float_loops():
    assert ufuncs.find("numpy.tanh", np.float64) != (0, 0)
    assert ufuncs.find("numpy.add", np.float64) == (0, 0)  # binary: not read
    assert ufuncs.find("numpy.no_such_ufunc", np.float64) == (0, 0)
    assert ufuncs.find("numpy.ndarray", np.float64) == (0, 0)  # not a ufunc
    assert ufuncs.legacy_loop(np.isnan, np.float64) is None  # (bool output: no d->d loop)


def test_probe_rejects_a_loop_with_other_bits():
    exp_loop = ufuncs.legacy_loop(np.exp, np.float64)
    assert ufuncs._verify(np.exp, *exp_loop, np.float64)
    assert not ufuncs._verify(np.tanh, *exp_loop, np.float64)


@pytest.fixture
def failed_probe(monkeypatch):
    """Every probe fails from here on (and the table is emptied): as on a NumPy whose loops differ."""
    monkeypatch.setattr(ufuncs, "_verify", lambda *a: False)
    monkeypatch.setattr(ufuncs, "_FOUND", {})
    saved = list(ufuncs._TABLE)
    ufuncs._TABLE[:] = [0] * len(ufuncs._TABLE)
    yield
    ufuncs._TABLE[:] = saved


@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_failed_probe_replays_those_rows_in_numpy(failed_probe, dtype):
    f = lambda x: ((x * 2.0).tanh() + x.sigmoid() + x.sin() + x.exp()).sum()
    cf = tg.compile(f)
    cf(tg.randn(50, dtype=dtype))
    for _ in range(2):
        x = tg.randn(50, dtype=dtype)
        assert same(cf(x).numpy(), f(x).numpy())
    text = tg.dump(cf)
    for name in ("tanh", "sigmoid", "sin", "exp"):
        assert f"= {name}(" in text and [ln for ln in text.splitlines() if f"= {name}(" in ln][0].endswith("[numpy]")
    assert f"mul_scalar(%0) i0=0 i1=0 f0=2.0  [50] {dtype.np.name}  [jitted]" in text  # the rest stays jitted
    assert cf.replay_count == 2


def test_a_missing_loop_stops_the_run_instead_of_calling_nothing():
    f = lambda x: (x * 2.0).tanh()
    cf = tg.compile(f)
    x = tg.randn(8, dtype=tg.float64)
    cf(x)
    k = ufuncs._INSTALLED.index("numpy.tanh")
    saved = ufuncs._TABLE[4 * k + 2]
    ufuncs._TABLE[4 * k + 2] = 0  # (the planner saw it, the run does not)
    try:
        with pytest.raises(RuntimeError, match="tanh has no jitted kernel"):
            cf(x)
    finally:
        ufuncs._TABLE[4 * k + 2] = saved
    assert same(cf(x).numpy(), f(x).numpy())
