"""Python float constants as operands: cached read-only 0-d arrays, which a ufunc takes about 250 ns
faster than a Python float (same value: NumPy casts a Python float to the array's dtype)."""
import numpy as np

OPERANDS = {}  # (float, dtype) -> read-only 0-d array
F64 = np.dtype(np.float64)
F64_OPERANDS = {}  # float -> the same arrays for float64, keyed by the float alone (no dtype hash)


def operand(c, dt):
    """The float constant c as an operand of dtype dt. Zeros (0.0 and -0.0 share a key) and NaN
    (never equal to a key) stay Python floats."""
    a = OPERANDS.get((c, dt))
    if a is None:
        if not c or c != c:
            return c
        if len(OPERANDS) >= 1024:  # a loop that makes ever-new constants stays bounded
            OPERANDS.clear()
            F64_OPERANDS.clear()
        a = OPERANDS[c, dt] = np.array(c, dt)
        a.flags.writeable = False
        if dt is F64:
            F64_OPERANDS[c] = a
    return a
