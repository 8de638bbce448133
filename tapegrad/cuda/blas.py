"""Matrix products on a GPU through cuBLAS (nvmath-python's raw bindings, the cuda extra), on the
default stream that numba.cuda launches on, so no synchronisation is needed around a call.

cuBLAS is column-major: the C-ordered product out[m, n] = op(a) @ op(b) is the column-major one
out^T = op(b)^T @ op(a)^T, so the operands go in swapped and keep their transposes.
"""
import numpy as np

_STATE = []  # [(cublas module, handle)] once loaded, [None] where nvmath-python is missing


def _cublas():
    if not _STATE:
        try:
            from nvmath.bindings import cublas
            _STATE.append((cublas, cublas.create()))
        except ImportError:
            _STATE.append(None)
    return _STATE[0]


def available():
    """Whether cuBLAS can run the products (nvmath-python and its cuBLAS library are installed)."""
    return _cublas() is not None


def _pointer(d):
    return d.__cuda_array_interface__["data"][0]


def gemm(a, b, out, ta, tb, beta):
    """out = beta * out + op(a) @ op(b) on cuBLAS (float32 or float64, all one dtype, C-ordered 2-D or
    3-D with the batch first); False where cuBLAS cannot take it (the caller then launches a kernel)."""
    state = _cublas()
    dtype = out.dtype
    if state is None or dtype not in (np.float32, np.float64) or a.dtype != dtype or b.dtype != dtype:
        return False
    m, n = out.shape[-2:]
    k = a.shape[-2] if ta else a.shape[-1]
    if not (m and n and k):  # (cuBLAS would read empty operands; the kernel handles them)
        return False
    cublas, handle = state
    alpha, beta = np.ones(1, dtype), np.full(1, beta, dtype)  # host scalars, read before the call returns
    N, T = int(cublas.Operation.N), int(cublas.Operation.T)
    ldb = k if tb else n  # b is [n, k] where tb, else [k, n]
    lda = m if ta else k
    nb = out.shape[0] if out.ndim == 3 else 1
    args = (handle, T if tb else N, T if ta else N, n, m, k, alpha.ctypes.data)
    if nb == 1:
        gemm2 = cublas.sgemm if dtype == np.float32 else cublas.dgemm
        gemm2(*args, _pointer(b.d), ldb, _pointer(a.d), lda, beta.ctypes.data, _pointer(out.d), n)
    else:
        batched = cublas.sgemm_strided_batched if dtype == np.float32 else cublas.dgemm_strided_batched
        batched(*args, _pointer(b.d), ldb, k * n, _pointer(a.d), lda, m * k, beta.ctypes.data, _pointer(out.d), n,
                m * n, nb)
    return True
