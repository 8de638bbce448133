"""NumPy's own inner loops, called from jitted code: a replayed tanh runs the very C function that
``np.tanh`` runs, so its bits are NumPy's on every machine (libm and NumPy's SIMD loops round
apart; a Numba formula can only match where both are correctly rounded).

A ufunc object holds its legacy loops in C (``PyUFuncObject``: ``functions[i]``, ``data[i]``, the
type signature of each in ``types``); a loop is ``void loop(char **args, npy_intp const *dims,
npy_intp const *steps, void *data)``. Called as NumPy calls it on contiguous operands of one
length (one call over the whole array, steps the item size), it computes what the ufunc does:
NumPy's SIMD loops choose their code path by strides and length only. The struct is read with
ctypes at the offsets of NumPy 2's public header, each loop found is checked against the ufunc
itself on probe arrays when a program first needs it, and a ufunc that fails replays in NumPy
instead (``ready``).

The addresses go into a table that jitted code reads through a linked symbol, as ffi.py's gemm
pointers: a cached function cannot hold an address of this process."""
import ctypes
import importlib

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import njit

CAPACITY = 64  # ufuncs the table holds
_TABLE = (ctypes.c_int64 * (CAPACITY * 4))()  # per ufunc: float32 loop, its data, float64 loop, its data
llvm_binding.add_symbol("tapegrad_ufunc_loops", ctypes.addressof(_TABLE))

# PyUFuncObject's fields (numpy/_core/include/numpy/ufuncobject.h), after PyObject_HEAD
_NIN, _NOUT, _NARGS, _FUNCTIONS, _DATA, _NTYPES, _NAME, _TYPES = 16, 20, 24, 32, 40, 48, 56, 64
_LOOP = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_ssize_t),
                         ctypes.POINTER(ctypes.c_ssize_t), ctypes.c_void_p)
_FOUND = {}  # (dotted name, itemsize) -> (loop, data), (0, 0) where none passed the probe
_INSTALLED = []  # the dotted names in table order


def resolve(name):
    """The ufunc object a dotted name ("numpy.tanh", "scipy.special.erf") names."""
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _int(addr):
    return ctypes.c_int.from_address(addr).value


def _ptr(addr):
    return ctypes.c_void_p.from_address(addr).value or 0


def legacy_loop(uf, dtype):
    """(loop, data) of ufunc ``uf``'s unary loop for ``dtype`` -> ``dtype``, read from its C struct,
    or None where the struct does not read as the ufunc describes itself."""
    if not isinstance(uf, np.ufunc) or uf.nin != 1 or uf.nout != 1:
        return None
    base = id(uf)
    if (_int(base + _NIN), _int(base + _NOUT), _int(base + _NARGS), _int(base + _NTYPES)) != (1, 1, 2, uf.ntypes):
        return None
    name = ctypes.c_char_p.from_address(base + _NAME).value
    if name is None or name.decode(errors="replace") != uf.__name__:
        return None
    types_, num = _ptr(base + _TYPES), np.dtype(dtype).num
    sigs = ctypes.string_at(types_, 2 * uf.ntypes) if types_ else b""
    for i in range(uf.ntypes):  # the first loop of the signature, as NumPy's type resolution takes
        if sigs[2 * i] == num and sigs[2 * i + 1] == num:
            if [np.dtype(c).num for c in uf.types[i].split("->")] != [num, num]:
                return None
            loop = _ptr(_ptr(base + _FUNCTIONS) + 8 * i)
            return (loop, _ptr(_ptr(base + _DATA) + 8 * i)) if loop else None
    return None


def _call(loop, data, x, out):
    args = (ctypes.c_void_p * 2)(x.ctypes.data, out.ctypes.data)
    _LOOP(loop)(args, (ctypes.c_ssize_t * 1)(x.size), (ctypes.c_ssize_t * 2)(x.itemsize, out.itemsize), data)


def _probe_inputs(dtype):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.01, 0.99, 1000)  # (in every domain: log, arcsin, arctanh...)
    x[::3] *= -1
    return [x[:n].astype(dtype) for n in (1, 3, 8, 17, 64, 1000)] + [np.abs(x[:257]).astype(dtype)]


def _verify(uf, loop, data, dtype):
    """Whether the loop gives the ufunc's bits on probe arrays (SIMD bodies and tails)."""
    with np.errstate(all="ignore"):
        for x in _probe_inputs(dtype):
            out = np.empty_like(x)
            _call(loop, data, x, out)
            if out.tobytes() != uf(x).tobytes():
                return False
    return True


def find(name, dtype):
    """(loop, data) for the ufunc at dotted ``name`` on float ``dtype``, (0, 0) where none is usable."""
    key = (name, np.dtype(dtype).itemsize)
    got = _FOUND.get(key)
    if got is None:
        got = (0, 0)
        try:
            uf = resolve(name)
        except (ImportError, AttributeError):
            uf = None
        if uf is not None:
            found = legacy_loop(uf, dtype)
            if found is not None and _verify(uf, found[0], found[1], dtype):
                got = found
        _FOUND[key] = got
    return got


def install(names):
    """The table's order: jitted code reads ufunc k (``names[k]``, dotted) at entries 4k..4k+3,
    which ``ready`` fills on first asking."""
    if len(names) > CAPACITY:
        raise ValueError(f"{len(names)} ufuncs, the table holds {CAPACITY}")
    _INSTALLED[:] = names
    _TABLE[:] = [0] * len(_TABLE)


def ready(name, dtype):
    """Whether jitted code can call ufunc ``name``'s loop for float ``dtype``: found, probed and
    in the table (the planner asks before it puts a row in a jitted run)."""
    if name not in _INSTALLED:
        return False
    e = 4 * _INSTALLED.index(name) + (2 if np.dtype(dtype).itemsize == 8 else 0)
    if _TABLE[e] == 0:
        _TABLE[e], _TABLE[e + 1] = find(name, dtype)
    return _TABLE[e] != 0


@intrinsic
def _entry(typingctx, i):
    """Entry i of the loop table."""
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        table = builder.module.globals.get("tapegrad_ufunc_loops")
        if table is None:
            table = ir.GlobalVariable(builder.module, ir.ArrayType(i64, CAPACITY * 4), "tapegrad_ufunc_loops")
            table.linkage = "external"
        return builder.load(builder.gep(table, [ir.Constant(i64, 0), args[0]]))
    return types.int64(types.int64), codegen


@intrinsic
def _call_unary(typingctx, loop, data, src, dst, n, step):
    """loop({src, dst}, {n}, {step, step}, data): NumPy's calling convention for a unary loop."""
    def codegen(context, builder, sig, args):
        i64, p8 = ir.IntType(64), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [p8.as_pointer(), i64.as_pointer(), i64.as_pointer(), p8])
        loop_, data_, src_, dst_, n_, step_ = args
        argv = cgutils.alloca_once(builder, p8, size=2)
        builder.store(builder.inttoptr(src_, p8), argv)
        builder.store(builder.inttoptr(dst_, p8), builder.gep(argv, [ir.Constant(i64, 1)]))
        dims = cgutils.alloca_once(builder, i64)
        builder.store(n_, dims)
        steps = cgutils.alloca_once(builder, i64, size=2)
        builder.store(step_, steps)
        builder.store(step_, builder.gep(steps, [ir.Constant(i64, 1)]))
        builder.call(builder.inttoptr(loop_, fnty.as_pointer()), [argv, dims, steps, builder.inttoptr(data_, p8)])
        return context.get_dummy_value()
    return types.void(*(types.int64,) * 6), codegen


@njit(cache=True, inline="always")
def unary(k, src, dst, n, itemsize):
    """Ufunc k's loop (table order) on n contiguous elements of ``itemsize`` (4 or 8) from address
    src to dst. False, doing nothing, where the table holds no loop for it."""
    e = 4 * k + (2 if itemsize == 8 else 0)
    loop = _entry(e)
    if loop == 0:
        return False
    if n > 0:
        _call_unary(loop, _entry(e + 1), src, dst, n, itemsize)
    return True
