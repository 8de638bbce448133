"""Loads from raw addresses (NumPy array headers, list item arrays) and the cblas_?gemm call.

Values are read in place: a slot holds the address of a NumPy array object, and these read the
array's data pointer and shape from its C header (NumPy's public ``PyArrayObject`` layout; the
offset is found and checked when the engine loads, engine/cpu_replay.header_offset)."""
import ctypes
import sys

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import carray, types
from numba.extending import intrinsic

from .. import blas
from . import njit


# -- reading NumPy array headers --------------------------------------------------------
@intrinsic
def _load_i64(typingctx, addr):
    def codegen(context, builder, sig, args):
        return builder.load(builder.inttoptr(args[0], ir.IntType(64).as_pointer()))
    return types.int64(types.int64), codegen


@intrinsic
def _load_i32(typingctx, addr):
    def codegen(context, builder, sig, args):
        v = builder.load(builder.inttoptr(args[0], ir.IntType(32).as_pointer()))
        return builder.sext(v, ir.IntType(64))
    return types.int64(types.int64), codegen


@intrinsic
def _store_i64(typingctx, addr, value):
    def codegen(context, builder, sig, args):
        builder.store(args[1], builder.inttoptr(args[0], ir.IntType(64).as_pointer()))
        return context.get_dummy_value()
    return types.void(types.int64, types.int64), codegen


@intrinsic
def _voidptr(typingctx, addr):
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())
    return types.voidptr(types.int64), codegen


@njit(cache=True, inline="always")
def ndim_of(obj, hoff):
    return _load_i32(obj + hoff + 8)


@njit(cache=True, inline="always")
def dim_of(obj, hoff, k):
    return _load_i64(_load_i64(obj + hoff + 16) + 8 * k)


@njit(cache=True)
def size_of(obj, hoff):
    n = 1
    dims = _load_i64(obj + hoff + 16)
    for k in range(_load_i32(obj + hoff + 8)):
        n *= _load_i64(dims + 8 * k)
    return n


@njit(cache=True, inline="always")
def flat(obj, hoff, w):
    """The NumPy array whose object is at address obj (C-ordered), as a flat array of w's dtype."""
    return carray(_voidptr(_load_i64(obj + hoff)), size_of(obj, hoff), w.dtype)


@njit(cache=True)
def shape_of(obj, hoff):
    nd = ndim_of(obj, hoff)
    out = np.empty(nd, np.int64)
    for k in range(nd):
        out[k] = dim_of(obj, hoff, k)
    return out


# CPython's reference counting, for editing a freed tape's values list (interp.keep)
_incref = types.ExternalFunction("Py_IncRef", types.void(types.int64))
_decref = types.ExternalFunction("Py_DecRef", types.void(types.int64))


@njit(cache=True)
def most_references(objs):
    """The highest reference count among the objects at addresses ``objs``: CPython's ob_refcnt,
    an object's first word (where ``refcount_readable`` says so)."""
    m = 0
    for o in objs:
        m = max(m, _load_i64(o))
    return m


def refcount_readable():
    """Whether an object's first word is its reference count (not so in a free-threaded build)."""
    a = np.empty(1)
    return ctypes.c_ssize_t.from_address(id(a)).value == sys.getrefcount(a) - 1


@njit(cache=True)
def list_probe(values, items_off):
    """The first two addresses in a list's item array: checked against id() once per process."""
    items = _load_i64(values + items_off)
    return _load_i64(items), _load_i64(items + 8)


@njit(cache=True)
def header_probe(obj, hoff):
    """(data pointer, ndim, size): checked against NumPy once per process."""
    return _load_i64(obj + hoff), ndim_of(obj, hoff), size_of(obj, hoff)


# Matrix products run on the BLAS that blas.py picks: NumPy's own, whose cblas_?gemm the adjoints
# call through a pointer looked up each process (a cached kernel cannot hold an address), or else
# SciPy's through Numba's own entry point, the one np.dot calls.
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp, types.voidptr, types.voidptr,
    types.intp, types.voidptr, types.intp, types.voidptr, types.voidptr, types.intp))


_N, _T = np.int8(ord("n")), np.int8(ord("t"))


_GEMM_PTRS = (ctypes.c_int64 * 2)(blas.SGEMM, blas.DGEMM)  # 0: use numba_xxgemm


llvm_binding.add_symbol("tapegrad_gemm_ptrs", ctypes.addressof(_GEMM_PTRS))


@intrinsic
def _gemm_ptr(typingctx, which):
    """The process's cblas_?gemm address (which: 0 float32, 1 float64), 0 when NumPy bundles none."""
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        table = builder.module.globals.get("tapegrad_gemm_ptrs")
        if table is None:
            table = ir.GlobalVariable(builder.module, ir.ArrayType(i64, 2), "tapegrad_gemm_ptrs")
            table.linkage = "external"
        return builder.load(builder.gep(table, [ir.Constant(i64, 0), args[0]]))
    return types.int64(types.int64), codegen


@intrinsic
def _cblas_gemm(typingctx, fptr, ta, tb, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc):
    """cblas_?gemm(RowMajor, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc) at address fptr
    (ILP64: 64-bit sizes); ta and tb are CblasNoTrans (111) or CblasTrans (112)."""
    def codegen(context, builder, sig, args):
        i32, i64, p8 = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
        ft = context.get_value_type(sig.args[6])
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, ft, p8, i64, p8, i64, ft, p8, i64])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        a = list(args)
        builder.call(fn, [ir.Constant(i32, 101), builder.trunc(a[1], i32), builder.trunc(a[2], i32), a[3], a[4], a[5],
                          a[6], builder.inttoptr(a[7], p8), a[8], builder.inttoptr(a[9], p8), a[10], a[11],
                          builder.inttoptr(a[12], p8), a[13]])
        return context.get_dummy_value()
    return types.void(*(types.int64,) * 6, alpha, *(types.int64,) * 4, alpha, types.int64, types.int64), codegen


@njit(cache=True)
def gemm_acc(ta, tb, m, n, k, pa, pb, pc, ab):
    """C (m x n, C order, at pc) = op(A) @ op(B) + beta C: A is m x k, or k x m when ta (used
    transposed); B is k x n, or n x k when tb. ``ab`` holds alpha and beta in the dtype."""
    if m == 0 or n == 0:
        return
    if k == 0:  # an empty product: C = beta C (BLAS may skip the call)
        if ab[1] == 0:
            c = carray(_voidptr(pc), m * n, ab.dtype)
            c[:] = 0
        return
    f = _gemm_ptr(1 if ab.itemsize == 8 else 0)
    if f != 0:
        _cblas_gemm(f, 112 if ta else 111, 112 if tb else 111, m, n, k, ab[0], pa, m if ta else k, pb,
                    k if tb else n, ab[1], pc, n)
        return
    kind = np.int8(ord("d")) if ab.itemsize == 8 else np.int8(ord("s"))
    # row-major C = A @ B is column-major C^T = B^T @ A^T: B goes first
    _xxgemm(kind, _T if tb else _N, _T if ta else _N, n, m, k, _voidptr(ab.ctypes.data), _voidptr(pb),
            k if tb else n, _voidptr(pa), m if ta else k, _voidptr(ab.ctypes.data + ab.itemsize), _voidptr(pc), n)
