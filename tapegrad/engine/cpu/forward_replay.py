"""The generic forward interpreter of a compiled program (tg.compile): one jitted call runs a
run of rows, each by its forward kernel (the generated _forward.py dispatch). Compiled once per
install (cache=True) for float32 and float64 (the witness ``w``), never per program.

``O`` holds, per program slot, the address of the NumPy array object that holds its value
(outputs allocated by the caller), so no array crosses the call; ``FK`` is _forward.FWD_KERNEL."""
from ...jit import njit
from ._forward import forward_dispatch

OK = -1  # every row ran; else the status is the row that stopped the run


@njit(cache=True, nogil=True)  # (a chunked run spreads over threads)
def run(R, RF, FK, O, lo, hi, hoff, w):
    """Rows lo..hi-1 of the program (R its int rows, RF their float view). Returns OK, or the
    first row that has no forward kernel."""
    for e in range(lo, hi):
        if not forward_dispatch(FK[R[e, 0]], e, R, RF, O, hoff, w):
            return e
    return OK
