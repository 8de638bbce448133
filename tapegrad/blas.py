"""Which BLAS the matrix products run on, forward and adjoints alike (numba-free: the forward
asks on its first product, before any backward has loaded Numba).

NumPy's own OpenBLAS where NumPy bundles one (its wheels' ILP64 scipy-openblas64): the forward
uses NumPy's matmul and the jitted adjoints call the same library's cblas_?gemm (jit/ffi.py). For
W2's shapes it runs 5-10% faster than SciPy's OpenBLAS, which Numba's np.dot uses. Elsewhere, or
with TAPEGRAD_BLAS=scipy, both directions use SciPy's through Numba: never the two libraries
alternately, whose thread pools fight (DESIGN.md)."""
import ctypes
import glob
import os

import numpy as np


def _numpy_cblas():
    """Addresses of cblas_sgemm and cblas_dgemm in the OpenBLAS that NumPy bundles, or (0, 0)."""
    if os.environ.get("TAPEGRAD_BLAS") == "scipy":
        return 0, 0
    for path in glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                       "libscipy_openblas64_*")):
        try:
            lib = ctypes.CDLL(path)
            return (ctypes.cast(lib.scipy_cblas_sgemm64_, ctypes.c_void_p).value,
                    ctypes.cast(lib.scipy_cblas_dgemm64_, ctypes.c_void_p).value)
        except (OSError, AttributeError):
            continue
    return 0, 0


SGEMM, DGEMM = _numpy_cblas()
NUMPY_BLAS = bool(SGEMM and DGEMM)
