"""The BLAS that matrix products run on (blas.py): NumPy's own OpenBLAS where NumPy bundles one,
forward and adjoints alike, else SciPy's through Numba. Both routes give the same gradients."""
import glob
import os
import subprocess
import sys

import numpy as np

import tapegrad as tg

PROGRAM = """
import numpy as np, tapegrad as tg
from tapegrad import blas
rng = np.random.default_rng(0)
out = [blas.NUMPY_BLAS]
for dt in (tg.float32, tg.float64):
    a = tg.tensor(rng.standard_normal((5, 7)), dtype=dt, requires_grad=True)
    b = tg.tensor(rng.standard_normal((7, 3)), dtype=dt, requires_grad=True)
    c = tg.tensor(rng.standard_normal((2, 5, 7)), dtype=dt, requires_grad=True)
    d = tg.tensor(rng.standard_normal((2, 7, 4)), dtype=dt, requires_grad=True)
    w = tg.tensor(rng.standard_normal((3,)), dtype=dt)
    ((a @ b) * w).sum().backward()   # accumulates into a fresh region and a leaf
    (a.t().t() @ b).pow(2).sum().backward()
    tg.bmm(c, d).sin().sum().backward()
    out += [a.grad.numpy().tolist(), b.grad.numpy().tolist(), c.grad.numpy().tolist(), d.grad.numpy().tolist(),
            (a @ b).detach().numpy().tolist()]
print(repr(out))
"""


def _run(blas):
    env = dict(os.environ, TAPEGRAD_BLAS=blas)
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
    return eval(done.stdout)


def test_numpy_and_scipy_routes_agree():
    numpy_route, scipy_route = _run("numpy"), _run("scipy")
    bundled = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas64_*"))
    assert numpy_route[0] is bool(bundled)  # NumPy's wheels bundle one: it is the one used
    assert scipy_route[0] is False
    for got, want in zip(numpy_route[1:], scipy_route[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_products_match_numpy():
    rng = np.random.default_rng(1)
    av, bv = rng.standard_normal((6, 4)), rng.standard_normal((4, 5))
    a, b = tg.tensor(av, requires_grad=True, dtype=tg.float64), tg.tensor(bv, requires_grad=True, dtype=tg.float64)
    (a @ b).sum().backward()
    np.testing.assert_allclose((a @ b).detach().numpy(), av @ bv, rtol=1e-12)
    np.testing.assert_allclose(a.grad.numpy(), np.ones((6, 5)) @ bv.T, rtol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), av.T @ np.ones((6, 5)), rtol=1e-12)


def test_import_and_forward_leave_numba_unloaded():
    """`import tapegrad` and a forward pass, matrix products included, never load Numba: only the
    first backward does (its import and compilation stay off the forward path)."""
    program = ("import sys, tapegrad as tg\n"
               "x = tg.randn(3, 4, requires_grad=True)\n"
               "y = (x @ tg.randn(4, 2)).tanh().sum()\n"
               "print('numba' in sys.modules)\n"
               "y.backward()\n"
               "print('numba' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    from tapegrad import blas
    want = "False" if blas.NUMPY_BLAS else "True"  # SciPy's route runs its forward through Numba
    assert done.stdout.split() == [want, "True"]
