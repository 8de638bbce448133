"""The GPU tests run on Numba's CUDA simulator: numba.cuda is imported here, once, with
NUMBA_ENABLE_CUDASIM=1 set for that import only, so that the variable reaches no other test nor
any subprocess (the CPU jit never reads it). Where numba-cuda is missing the GPU tests skip."""
import os
import sys

import pytest


def _import_simulator():
    if "numba.cuda" in sys.modules:  # (imported by another test first: whatever it was, it stays)
        return sys.modules["numba.cuda"]
    import numba.core.config
    old = os.environ.get("NUMBA_ENABLE_CUDASIM")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    numba.core.config.reload_config()
    try:
        from numba import cuda
    finally:
        if old is None:
            del os.environ["NUMBA_ENABLE_CUDASIM"]
        else:
            os.environ["NUMBA_ENABLE_CUDASIM"] = old
        numba.core.config.reload_config()
    return cuda


try:
    import numba_cuda  # noqa: F401
    CUDA = _import_simulator()
except ImportError:
    CUDA = None


@pytest.fixture(autouse=True)
def _simulator():
    if CUDA is None:
        pytest.skip("numba-cuda is not installed (pip install tapegrad[test])")
    from tapegrad import cuda
    if not cuda.simulated(CUDA):
        pytest.skip("numba.cuda was imported without the simulator before these tests")
