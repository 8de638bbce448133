"""How each op row replays in a compiled program: the jitted forward kernel code
(engine/cpu/forward_replay.py) of the rows that have one, and a NumPy forward for the rest,
computed as the eager front end computes it, so that a replay gives the eager bits.

A row with neither cannot replay: a program that holds one runs eagerly (compiler.stats says
which row), and tests/compiler/test_compiler.py lists these rows so the gap stays visible."""
import numpy as np

from .. import ops
from ..ops import linalg, reduce
from ..operands import operand

# op name -> jitted kernel name (forward_replay's constants). Elementwise rows whose kernel
# reproduces NumPy's bits (tanh, sin, cos... go through NumPy: its SIMD versions round
# differently from libm).
JITTED = {
    "add": "ADD", "sub": "SUB", "mul": "MUL", "div": "DIV",
    "add_scalar": "ADD_S", "sub_scalar": "SUB_S", "rsub_scalar": "RSUB_S", "mul_scalar": "MUL_S",
    "scale": "MUL_S", "div_scalar": "DIV_S",
    "neg": "NEG", "relu": "RELU", "sqrt": "SQRT", "reciprocal": "RECIP",
    "exp": "EXP", "log": "LOG", "sigmoid": "SIGMOID",
    "sum": "SUM", "mean": "MEAN",
    "view": "COPY", "unsqueeze": "COPY", "squeeze": "COPY", "unsafe_view": "COPY", "clone": "COPY",
}
# Jitted in float64 only: in float32 libm and NumPy's SIMD functions differ by 2-3 ulp.
FLOAT64_ONLY = frozenset({"exp", "log", "sigmoid"})
# Rows that may take part in a jitted run only when each operand has the output's size, size 1,
# or is a trailing block of it (the broadcasts the kernel reads by index).
BINARY = frozenset({"add", "sub", "mul", "div"})
VIEWS = frozenset({"view", "unsqueeze", "squeeze", "unsafe_view"})  # their value shares the input's memory
FULL_REDUCTIONS = frozenset({"sum", "mean"})

SCALAR_ROWS = frozenset({"add_scalar", "sub_scalar", "rsub_scalar", "mul_scalar", "scale", "div_scalar",
                         "pow_scalar", "rpow_scalar"})


def _scalar(c, like):
    """The row's f0 as the eager front end handed it to NumPy."""
    if like.dtype.kind == "f":
        return operand(c, like.dtype)
    return int(c) if c == int(c) else c


def _axes(mask, nd):
    return tuple(k for k in range(nd) if (mask >> k) & 1)


def _sum(ins, i0, i1, f0, shape, dtype):
    a = ins[0]
    v = np.add.reduce(a, axis=_axes(i0, a.ndim), keepdims=bool(i1)) if a.dtype.kind == "f" else \
        np.sum(a, axis=_axes(i0, a.ndim), keepdims=bool(i1)).astype(np.int64)
    return np.asarray(v)


def _mean(ins, i0, i1, f0, shape, dtype):
    a = ins[0]
    v = np.add.reduce(a, axis=_axes(i0, a.ndim), keepdims=bool(i1))
    count = a.size // max(int(np.prod(shape)), 1) if a.size else 0
    return np.asarray(v / count if count else np.full_like(v, np.nan))


def _permute(ins, i0, i1, f0, shape, dtype):
    a = ins[0]
    perm = [(i0 >> (4 * k)) & 15 for k in range(a.ndim)]
    return np.ascontiguousarray(np.transpose(a, perm))


def _softmax(log):
    def f(ins, i0, i1, f0, shape, dtype):
        a = ins[0]
        if a.ndim == 0:
            return np.zeros((), a.dtype) if log else np.ones((), a.dtype)
        if 0 < a.size <= reduce._SMALL_SOFTMAX:
            return reduce._softmax_kernel(a, i0, log)
        with np.errstate(invalid="ignore", divide="ignore"):
            if log:
                z = a - np.max(a, axis=i0, keepdims=True) if a.size else a.copy()
                return z - np.log(np.sum(np.exp(z), axis=i0, keepdims=True))
            e = np.exp(a - np.max(a, axis=i0, keepdims=True)) if a.size else a.copy()
            return e / np.sum(e, axis=i0, keepdims=True)
    return f


def _reshape(ins, i0, i1, f0, shape, dtype):
    return ins[0].reshape(shape)


PYTHON = {
    "sum": _sum, "sum_dim": _sum, "mean": _mean, "mean_dim": _mean,
    "view": _reshape, "unsqueeze": _reshape, "squeeze": _reshape, "unsafe_view": _reshape,
    "permute": _permute, "transpose": _permute, "t": _permute,
    "mm": lambda ins, i0, i1, f0, shape, dtype: linalg._matmul_value(ins[0], ins[1]),
    "to": lambda ins, i0, i1, f0, shape, dtype: ins[0].astype(dtype),
    "clone": lambda ins, i0, i1, f0, shape, dtype: ins[0].copy(),
    "softmax": _softmax(False), "log_softmax": _softmax(True),
    "expand": lambda ins, i0, i1, f0, shape, dtype: np.ascontiguousarray(np.broadcast_to(ins[0], shape)),
}


def python_forward(op):
    """The NumPy forward of row ``op`` as ``f(ins, i0, i1, f0, shape, dtype)``, or None."""
    f = PYTHON.get(op.name)
    if f is not None:
        return f
    fwd = op.forward
    if fwd is None:
        return None
    if op.name in SCALAR_ROWS:
        return lambda ins, i0, i1, f0, shape, dtype: fwd(ins[0], _scalar(f0, ins[0]))
    if op.arity == 1:
        return lambda ins, i0, i1, f0, shape, dtype: fwd(ins[0])
    if op.arity == 2 and op.name not in ("pow",):
        return lambda ins, i0, i1, f0, shape, dtype: fwd(ins[0], ins[1])
    return None
