"""GPU tensors through NVIDIA's numba-cuda: availability, the runtime, launch sizes.

numba.cuda is imported when the first GPU tensor appears (its import alone takes about a second),
never by ``import tapegrad``. ``NUMBA_ENABLE_CUDASIM=1`` runs the same kernels on Numba's
simulator, where every thread is a Python thread: launches are kept to 2 blocks of 4 threads there.
"""
_CUDA = []  # [numba.cuda] once imported and checked


def runtime():
    """numba.cuda, checked to have a device; RuntimeError saying which of the extra, a driver or
    a GPU is missing, and how to get it."""
    if _CUDA:
        return _CUDA[0]
    try:
        import numba_cuda  # noqa: F401  (numba's own built-in numba.cuda is deprecated: not that one)
        from numba import cuda
    except ImportError as exc:
        raise RuntimeError("GPU tensors need the cuda extra, which is not installed (" + str(exc) + "): "
                           "pip install tapegrad[cuda] (CUDA 13 drivers) or tapegrad[cuda12]; set "
                           "NUMBA_ENABLE_CUDASIM=1 to run the GPU path on Numba's simulator") from None
    if not simulated(cuda):
        from numba.cuda.cudadrv.error import CudaSupportError
        try:
            count = len(cuda.gpus)
        except CudaSupportError as exc:
            raise RuntimeError("GPU tensors need an NVIDIA driver, and none was found (" + str(exc).strip() + "): "
                               "install the NVIDIA driver (>= 580 for tapegrad[cuda], CUDA 12 ones with "
                               "tapegrad[cuda12]), or set NUMBA_ENABLE_CUDASIM=1 to run the GPU path on "
                               "Numba's simulator") from None
        if not count:
            raise RuntimeError("GPU tensors need an NVIDIA GPU: the driver found none (set "
                               "NUMBA_ENABLE_CUDASIM=1 to run the GPU path on Numba's simulator)")
        from . import pool
        pool.install(cuda)
    _CUDA.append(cuda)
    return cuda


def simulated(cuda=None):
    """Whether numba.cuda is Numba's simulator."""
    cuda = cuda or runtime()
    return cuda.to_device.__module__.startswith("numba.cuda.simulator")


def is_available():
    try:
        runtime()
    except RuntimeError:
        return False
    return True


def device_count():
    return len(runtime().gpus) if is_available() else 0


def synchronize(device=None):
    runtime().synchronize()


def empty_cache():
    """Frees the device memory cached for reuse (torch.cuda.empty_cache); arrays in use keep theirs."""
    if is_available() and not simulated():
        from . import pool
        mm = pool.current(runtime())
        if mm is not None:
            mm.empty_cache()


def launch(n):
    """(blocks, threads) for a grid-stride loop over n elements."""
    if _SIM[0] is None:
        _SIM[0] = simulated()
    if _SIM[0]:
        return 2, 4  # each simulated thread costs 0.1-0.3 ms
    return max(1, min((n + 255) // 256, 1024)), 256


_SIM = [None]
