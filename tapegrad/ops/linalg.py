"""Matrix products: mm, matmul, bmm, mv, dot, outer, einsum."""
import numpy as np

from ._record import record_binary as _binary_rec
from .algebra import INDEX
from .cast import _torch_type_name
from .elementwise import mul
from .promote import broadcast_shapes
from .results import _with_map, shown_as
from .shape import _unsafe_view, permute, reshape, transpose, unsqueeze
from .spec import row
from .sums import expand, sum


MM = row("mm", "MmBackward0", 2, None, "adj_mm",
         lambda g, i, o, r: (mm(g, i[1].t()), mm(i[0].t(), g)), reads={0: (1,), 1: (0,)}, fwd="fwd_mm",
         replay=lambda ins, i0, i1, f0, shape, dtype: _matmul_value(ins[0], ins[1]), gpu=True)
BMM = row("bmm", "BmmBackward0", 2, None, "adj_bmm",
          lambda g, i, o, r: (bmm(g, transpose(i[1], 1, 2)), bmm(transpose(i[0], 1, 2), g)),
          reads={0: (1,), 1: (0,)}, replay=lambda ins, i0, i1, f0, shape, dtype: _bmm_value(ins[0], ins[1]),
          gpu=True)


def mm(x, y):
    xv, yv = x._value, y._value
    if xv.ndim != 2 or yv.ndim != 2 or xv.shape[1] != yv.shape[0] or xv.dtype != yv.dtype:
        _mm_error(xv, yv)
    return _binary_rec(MM, x, y, _matmul_value(xv, yv))


def _mm_error(xv, yv):
    if xv.ndim != 2:
        raise RuntimeError(f"self must be a matrix")
    if yv.ndim != 2:
        raise RuntimeError(f"mat2 must be a matrix")
    if xv.shape[1] != yv.shape[0]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({xv.shape[0]}x{xv.shape[1]} and "
                           f"{yv.shape[0]}x{yv.shape[1]})")
    raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: "
                       f"{_torch_type_name(xv.dtype).lower()} != {_torch_type_name(yv.dtype).lower()}")


_MM_FORWARD = []  # [2-D product, batched product] on the adjoints' BLAS, chosen on the first float product


def _mm_forward():
    """One BLAS for forward and backward (blas.py: NumPy's own where NumPy bundles one, else
    SciPy's through Numba); alternated, the two libraries' thread pools fight (DESIGN.md)."""
    if not _MM_FORWARD:
        from .. import blas
        if blas.NUMPY_BLAS:
            _MM_FORWARD.extend((np.matmul, np.matmul))
        else:
            from ..jit import forward
            _MM_FORWARD.extend((lambda a, b: forward.mm_forward(np.ascontiguousarray(a), np.ascontiguousarray(b)),
                                lambda a, b: forward.bmm_forward(np.ascontiguousarray(a), np.ascontiguousarray(b))))
    return _MM_FORWARD


def _matmul_value(a, b):
    if a.dtype.kind != "f":
        return a @ b
    return (_MM_FORWARD or _mm_forward())[0](a, b)


def matmul(x, y):
    xv, yv = x._value, y._value
    if xv.ndim == 0 or yv.ndim == 0:
        raise RuntimeError(f"both arguments to matmul need to be at least 1D, but they are {xv.ndim}D and {yv.ndim}D")
    if xv.ndim == 2 and yv.ndim == 2:
        return mm(x, y)
    if xv.ndim <= 2 and yv.ndim <= 2:
        a = unsqueeze(x, 0) if xv.ndim == 1 else x
        b = unsqueeze(y, 1) if yv.ndim == 1 else y
        if a._value.shape[1] != b._value.shape[0]:
            if xv.ndim == 1 and yv.ndim == 1:
                raise RuntimeError(f"inconsistent tensor size, expected tensor [{xv.shape[0]}] and src "
                                   f"[{yv.shape[0]}] to have the same number of elements, but got "
                                   f"{xv.shape[0]} and {yv.shape[0]} elements respectively")
            raise RuntimeError(f"size mismatch, got input ({a._value.shape[0]}), mat ({a._value.shape[0]}x"
                               f"{a._value.shape[1]}), vec ({b._value.shape[0]})" if yv.ndim == 1 else
                               f"mat1 and mat2 shapes cannot be multiplied ({a._value.shape[0]}x{a._value.shape[1]} "
                               f"and {b._value.shape[0]}x{b._value.shape[1]})")
        r = mm(a, b)
        out_shape = xv.shape[:-1] + yv.shape[1:]
        return reshape(r, out_shape)
    return _batched_matmul(x, y)


def bmm(x, y):
    xv, yv = x._value, y._value
    if xv.ndim != 3:
        raise RuntimeError("batch1 must be a 3D tensor")
    if yv.ndim != 3:
        raise RuntimeError("batch2 must be a 3D tensor")
    if yv.shape[0] != xv.shape[0] or yv.shape[1] != xv.shape[2]:
        raise RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: "
                           f"[{xv.shape[0]}, {xv.shape[2]}] but got: [{yv.shape[0]}, {yv.shape[1]}].")
    if xv.dtype != yv.dtype:
        raise RuntimeError(f"expected scalar type {_torch_type_name(xv.dtype)} but found "
                           f"{_torch_type_name(yv.dtype)}")
    return _binary_rec(BMM, x, y, _bmm_value(xv, yv))


def _bmm_value(a, b):
    return (_MM_FORWARD or _mm_forward())[1](a, b) if a.dtype.kind == "f" else np.matmul(a, b)


def _batched_matmul(x, y):
    """matmul with a 3-D or larger operand: fold into mm when the right side is a matrix (as torch
    does), else broadcast the batch dims and run bmm."""
    xv, yv = x._value, y._value
    a = unsqueeze(x, 0) if xv.ndim == 1 else x
    b = unsqueeze(y, -1) if yv.ndim == 1 else y
    (n, k), (k2, p) = a._value.shape[-2:], b._value.shape[-2:]
    if xv.dtype != yv.dtype:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {_torch_type_name(xv.dtype).lower()} "
                           f"!= {_torch_type_name(yv.dtype).lower()}")
    if b._value.ndim == 2:
        if k != k2:
            raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({a._value.size // k if k else 0}x{k} "
                               f"and {k2}x{p})")
        r = _unsafe_view(mm(reshape(a, -1, k), b), a._value.shape[:-1] + (p,))
        batch = a._value.shape[:-2]
    else:
        batch = broadcast_shapes(a._value.shape[:-2], b._value.shape[:-2])
        if k != k2:
            nb = 1
            for s in batch:
                nb *= s
            raise RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: [{nb}, {k}] "
                               f"but got: [{nb}, {k2}].")
        a3 = reshape(expand(a, batch + (n, k)), -1, n, k)
        b3 = reshape(expand(b, batch + (k, p)), -1, k, p)
        r = bmm(a3, b3)
    shape = tuple(batch) + ((n,) if xv.ndim > 1 else ()) + ((p,) if yv.ndim > 1 else ())
    return _unsafe_view(r, shape)


def mv(x, v):
    if x._value.ndim != 2 or v._value.ndim != 1:
        raise RuntimeError(f"vector + matrix @ vector expected, got 1, {x._value.ndim}, {v._value.ndim}")
    if x._value.shape[1] != v._value.shape[0]:
        raise RuntimeError(f"size mismatch, got input ({x._value.shape[0]}), mat ({x._value.shape[0]}x"
                           f"{x._value.shape[1]}), vec ({v._value.shape[0]})")
    return shown_as(matmul(x, v), "MvBackward0", x, v)


def dot(x, y):
    xv, yv = x._value, y._value
    if xv.ndim != 1 or yv.ndim != 1:
        raise RuntimeError(f"1D tensors expected, but got {xv.ndim}D and {yv.ndim}D tensors")
    if xv.shape[0] != yv.shape[0]:
        raise RuntimeError(f"inconsistent tensor size, expected tensor [{xv.shape[0]}] and src [{yv.shape[0]}] "
                           f"to have the same number of elements, but got {xv.shape[0]} and {yv.shape[0]} "
                           "elements respectively")
    if xv.dtype != yv.dtype:
        raise RuntimeError(f"dot : expected both vectors to have same dtype, but found "
                           f"{_torch_type_name(xv.dtype)} and {_torch_type_name(yv.dtype)}")
    return shown_as(sum(mul(x, y)), "DotBackward0", x, y)


def vdot(x, y):
    return shown_as(dot(x, y), "VdotBackward0", x, y)


inner = dot


def outer(x, y):
    return mul(unsqueeze(x, 1), unsqueeze(y, 0))


ger = outer


def einsum(equation, *operands):
    """One or two operands: sums, diagonals, permutes, then one mm or bmm. More operands are
    contracted in pairs, left to right, each pair keeping the subscripts still needed later."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    ins, out = _parse_einsum(equation, operands)
    if len(operands) > 2:
        t, s = operands[0], ins[0]
        for k in range(1, len(operands)):
            later = out + "".join(ins[k + 1:])
            mid = "".join(ch for ch in dict.fromkeys(s + ins[k]) if ch in later) if k < len(operands) - 1 else out
            t, s = einsum(f"{s},{ins[k]}->{mid}", t, operands[k]), mid
        return t
    ops_ = [_einsum_prepare(t, s, out, [o for j, o in enumerate(ins) if j != k])
            for k, (t, s) in enumerate(zip(operands, ins))]
    sizes = {}
    for k, (t, s) in enumerate(ops_):
        for ch, n in zip(s, t.shape):
            if ch in sizes and sizes[ch] != n and n != 1 and sizes[ch] != 1:
                raise RuntimeError(f"einsum(): subscript {ch} has size {n} for operand {k} which does not "
                                   f"broadcast with previously seen size {sizes[ch]}")
            sizes[ch] = n if ch not in sizes or sizes[ch] == 1 else sizes[ch]
    if len(ops_) == 1:
        t, s = ops_[0]
        return permute(t, [s.index(ch) for ch in out]) if s != out else t
    (a, sa), (b, sb) = ops_
    a = expand(a, tuple(sizes[ch] for ch in sa))
    b = expand(b, tuple(sizes[ch] for ch in sb))
    batch = [ch for ch in out if ch in sa and ch in sb]
    left = [ch for ch in out if ch in sa and ch not in sb]
    right = [ch for ch in out if ch in sb and ch not in sa]
    contract = [ch for ch in sa if ch in sb and ch not in out]
    nb, nl, nr, nc = (_prod_sizes(sizes, s) for s in (batch, left, right, contract))
    a3 = reshape(permute(a, [sa.index(ch) for ch in batch + left + contract]), nb, nl, nc)
    b3 = reshape(permute(b, [sb.index(ch) for ch in batch + contract + right]), nb, nc, nr)
    r = mm(reshape(a3, nl, nc), reshape(b3, nc, nr)) if not batch else bmm(a3, b3)
    r = reshape(r, tuple(sizes[ch] for ch in batch + left + right))
    order = batch + left + right
    return permute(r, [order.index(ch) for ch in out]) if order != list(out) else r


def _prod_sizes(sizes, letters):
    n = 1
    for ch in letters:
        n *= sizes[ch]
    return n


def _parse_einsum(equation, operands):
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    specs = lhs.split(",")
    if len(specs) > len(operands):
        raise RuntimeError("einsum(): fewer operands were provided than specified in the equation")
    if len(specs) < len(operands):
        raise RuntimeError("einsum(): more operands were provided than specified in the equation")
    for pos, ch in enumerate(eq):
        arrow_part = eq.startswith("->", pos) or (ch == ">" and eq.startswith("->", pos - 1))
        if not (ch.isalpha() and ch.isascii()) and ch not in ",." and not arrow_part:
            raise RuntimeError(f"einsum(): invalid subscript given at index {pos} in the equation string, "
                               "subscripts must be in [a-zA-Z]")
    if "-" in eq and not arrow or eq.count("->") > 1:
        raise RuntimeError("einsum(): invalid equation: '->' must appear once, between the inputs and the output")
    # '...' stands for the same leading broadcast dims in every operand: give them letters
    free = [ch for ch in "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba" if ch not in eq]
    nell = 0
    for k, (s, t) in enumerate(zip(specs, operands)):
        plain = s.replace("...", "")
        if "..." not in s and len(s) != t.ndim:
            raise RuntimeError(f"einsum(): the number of subscripts in the equation ({len(s)}) does not match the "
                               f"number of dimensions ({t.ndim}) for operand {k} and no ellipsis was given")
        if "..." in s:
            nell = max(nell, t.ndim - len(plain))
        if "." in plain:
            raise RuntimeError("einsum(): found '.' for operand 0 that is not part of any ellipsis")
    ell = "".join(free[:nell])
    ins = []
    for s, t in zip(specs, operands):
        if "..." in s:
            n = t.ndim - len(s.replace("...", ""))
            s = s.replace("...", ell[len(ell) - n:] if n else "")
        ins.append(s)
    if arrow:
        out = rhs.replace("...", ell)
        for ch in out:
            if not any(ch in s for s in ins):
                raise RuntimeError(f"einsum(): output subscript {ch} does not appear in the equation for any "
                                   "input operand")
            if out.count(ch) > 1:
                raise RuntimeError(f"einsum(): output subscript {ch} appears more than once in the output")
    else:
        counts = {}
        for s in ins:
            for ch in s:
                counts[ch] = counts.get(ch, 0) + 1
        out = ell + "".join(sorted(ch for ch, c in counts.items() if c == 1 and ch not in ell))
    return ins, out


def _einsum_prepare(t, s, out, others):
    """Take diagonals of repeated subscripts, sum subscripts used nowhere else; return (t, subs)."""
    if len(set(s)) != len(s):
        uniq = "".join(dict.fromkeys(s))
        shape = []
        for ch in uniq:
            sz = {t.shape[k] for k, c in enumerate(s) if c == ch}
            if len(sz) > 1:
                raise RuntimeError(f"einsum(): subscript {ch} is repeated for operand 0 but the sizes don't match, "
                                   f"{sorted(sz)[1]} != {sorted(sz)[0]}")
            shape.append(sz.pop())
        strides = np.array([int(np.prod(t.shape[k + 1:])) for k in range(t.ndim)], dtype=np.int64)
        grids = np.indices(shape, dtype=np.int64) if shape else np.zeros((0,), np.int64)
        pos = np.zeros(tuple(shape), np.int64)
        for k, ch in enumerate(s):
            pos = pos + grids[uniq.index(ch)] * strides[k]
        t = _with_map(INDEX, t, t._value.reshape(-1)[pos.reshape(-1)].reshape(shape), pos)
        s = uniq
    drop = [k for k, ch in enumerate(s) if ch not in out and not any(ch in o for o in others)]
    if drop:
        t = sum(t, tuple(drop))
        s = "".join(ch for k, ch in enumerate(s) if k not in drop)
    return t, s
