"""Numba building blocks below every engine: reading NumPy array headers, the BLAS call, and the
jitted forward kernels the op table uses. Numba only, imported lazily (never by ``import tapegrad``);
nothing here imports a tapegrad module above floor 0."""
import functools

import numba

# NumPy's error model: a float division by zero gives inf or nan, as in NumPy and torch (sqrt's
# adjoint at 0 is inf). Numba's default raised ZeroDivisionError from inside the kernel.
njit = functools.partial(numba.njit, error_model="numpy")
