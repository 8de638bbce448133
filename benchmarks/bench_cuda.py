"""W2, W3 and W5 on a GPU: the same programs as bench_w2_mlp, bench_w3_elementwise and bench_w5_deep
with every tensor on ``cuda``, tapegrad beside torch in one run. Skipped (NotImplementedError in
setup, asv's skip) without a real GPU (the simulator is not one) or without torch's CUDA build, and
for tapegrad while a row of the program has no CUDA kernel (the error names it)."""
import numpy as np

from . import bench_w2_mlp as w2, bench_w3_elementwise as w3, bench_w5_deep as w5
from .common import load

PARAMS = ["tapegrad-cuda", "torch-cuda"]
_READY = {}


def gpu_lib(param):
    """The library of ``param`` ("tapegrad-cuda"), checked to have a real GPU."""
    name, device = param.split("-")
    lib = load(name)
    if name == "torch":
        if not lib.cuda.is_available():
            raise NotImplementedError("torch has no CUDA device here")
    elif not lib.cuda.is_available() or lib.cuda.simulated():
        raise NotImplementedError("no GPU: tapegrad's CUDA benchmarks need a real one")
    return lib, device


def _on(lib, device, ts):
    """Tensors moved to ``device``, leaves again where they required grad."""
    return [t.detach().to(device).requires_grad_(t.requires_grad) for t in ts]


def _ready(key, make):
    if key not in _READY:
        _READY[key] = make()
    return _READY[key]


def _w2(param):
    lib, device = gpu_lib(param)
    ps = _on(lib, device, w2.params(lib))
    x, y = _on(lib, device, w2.batch(lib))
    for _ in range(3):
        w2.step(lib, ps, x, y)  # (a row without a CUDA kernel raises NotImplementedError here: a skip)
    return lib, ps, x, y


def _w3(param):
    lib, device = gpu_lib(param)
    x = lib.tensor(np.random.default_rng(0).standard_normal(w3.N), dtype=lib.float64, device=device,
                   requires_grad=True)
    for _ in range(3):
        w3.step(lib, x)
    return lib, x


def _w5(param):
    lib, device = gpu_lib(param)
    ps = [tuple(_on(lib, device, wb)) for wb in w5.params(lib)]
    x = _on(lib, device, [lib.tensor(np.random.default_rng(1).standard_normal((w5.BATCH, w5.WIDTH))
                                     .astype(np.float32))])[0]
    for _ in range(3):
        w5.step(lib, ps, x)
    return lib, ps, x


class _OnGpu:
    """Each timed call ends with the device idle (launches return before the kernels finish)."""
    params = PARAMS
    param_names = ["lib-device"]
    repeat = 10
    warmup_time = 0


class W2MLPCuda(_OnGpu):
    number = 20

    def setup(self, param):
        self.lib, self.ps, self.x, self.y = _ready(("w2", param), lambda: _w2(param))

    def time_forward_backward(self, param):
        w2.step(self.lib, self.ps, self.x, self.y)
        self.lib.cuda.synchronize()


class W3ElementwiseCuda(_OnGpu):
    number = 2

    def setup(self, param):
        self.lib, self.x = _ready(("w3", param), lambda: _w3(param))

    def time_forward_backward(self, param):
        w3.step(self.lib, self.x)
        self.lib.cuda.synchronize()


class W5DeepCuda(_OnGpu):
    number = 20

    def setup(self, param):
        self.lib, self.ps, self.x = _ready(("w5", param), lambda: _w5(param))

    def time_forward_backward(self, param):
        w5.step(self.lib, self.ps, self.x)
        self.lib.cuda.synchronize()
