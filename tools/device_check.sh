#!/usr/bin/env bash
# The real-GPU checks as one run, for a machine with an NVIDIA GPU whose python3 holds numba-cuda and
# torch's CUDA build: the GPU tests without the simulator, the figures of tools/gpu_figures.py
# (tapegrad against torch CUDA), and ../shared/gpu/device_bench.py when its folder is given.
# Each part has its own time limit and writes its own file, so a slow part leaves the others' results.
#     tools/device_check.sh OUTDIR [DEVICE_BENCH_DIR]
# On the device tool's H200 image (numpy 2.5.2 beside numba-cuda 0.30.4, which then compiles no
# kernel: np.row_stack is gone) carry wheels of numpy 2.4 and nvmath-python 1.0 for cp312 in an
# ignored .whl/ and install them first:
#     pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -u
out=${1:?usage: tools/device_check.sh OUTDIR [DEVICE_BENCH_DIR]}
bench=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/numba-cache}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
    nvidia-smi -L
    python3 -c 'import sys, numpy, numba, numba_cuda, torch
print(sys.version.split()[0], "numpy", numpy.__version__, "numba", numba.__version__, "numba-cuda",
      numba_cuda.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available())
try:
    import nvmath; print("nvmath-python", nvmath.__version__)
except ImportError as e: print("no nvmath-python:", e)'
} 2>&1 | tee "$out/versions.txt"
xdist=$(python3 -c 'import xdist' 2>/dev/null && echo "-n ${WORKERS:-8}")
echo "== tests/cuda on the GPU" | tee "$out/tests.log"
TAPEGRAD_TEST_GPU=1 timeout "${TESTS_S:-240}" python3 -m pytest tests/cuda -p no:cacheprovider -q -rfEs \
    --durations=10 $xdist 2>&1 | tail -n 400 | tee -a "$out/tests.log"
echo "== figures" | tee "$out/figures.md"
timeout "${FIGURES_S:-120}" python3 tools/gpu_figures.py 2>&1 | tee -a "$out/figures.md"
if [ -n "$bench" ]; then
    (cd "$bench" && timeout "${BENCH_S:-200}" python3 device_bench.py) 2>&1 | tee "$out/device_bench.md"
fi
