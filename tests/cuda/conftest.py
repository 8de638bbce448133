"""The GPU tests run on Numba's CUDA simulator: numba.cuda is imported here, once, with
NUMBA_ENABLE_CUDASIM=1 set for that import only, so that the variable reaches no other test nor
any subprocess (the CPU jit never reads it). Where numba-cuda is missing the GPU tests skip.

With TAPEGRAD_TEST_GPU=1 they run on the real GPU instead (tools/device_check.sh), and so do the
tests marked ``gpu_only`` (what the simulator cannot run: cuBLAS, real launch sizes)."""
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


ON_GPU = os.environ.get("TAPEGRAD_TEST_GPU") == "1"

try:
    import numba_cuda  # noqa: F401
    if ON_GPU:
        from numba import cuda as CUDA
    else:
        CUDA = _import_simulator()
except ImportError:
    CUDA = None


@pytest.fixture(autouse=True)
def _simulator(request):
    if CUDA is None:
        pytest.skip("numba-cuda is not installed (pip install tapegrad[test])")
    from tapegrad import cuda
    if cuda.simulated(CUDA) == ON_GPU:
        pytest.skip("TAPEGRAD_TEST_GPU=1 found the simulator" if ON_GPU else
                    "numba.cuda was imported without the simulator before these tests")
    if request.node.get_closest_marker("gpu_only") and not ON_GPU:
        pytest.skip("needs a real GPU: run with TAPEGRAD_TEST_GPU=1 there")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu_only: runs on a real GPU alone (TAPEGRAD_TEST_GPU=1)")
