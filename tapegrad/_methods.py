"""The one place that binds Tensor's methods and operators to the ops (tensor.py defines the data
and pure properties only). Importing this module installs them; ``tapegrad`` imports it first."""
from . import dtypes
from .ops import (ADD_SCALAR, DIV_SCALAR, METHODS, MUL_SCALAR, SUB_SCALAR, _SCALARS, _as_tensor, _inplace, _invert,
                  _rdiv, _rpow, _rsub, abs, add, all_, amax, amin, any_, argmax, argmin, bitwise_and, bitwise_or,
                  bitwise_xor, bmm, chunk, clamp, clamp_, clamp_max, clamp_min, clone, contiguous, copy_, cos, cumsum,
                  div, div_, dot, eq, erf, exp, exp_, expand, expand_as, expm1, fill_, flatten, flip, gather, ge,
                  getitem, gt, index_select, inner, isfinite, isinf, isnan, le, log, log1p, log_softmax, logical_not,
                  logsumexp, lt, masked_fill, masked_fill_, matmul, max_, maximum, mean, min_, minimum, mm, mul, mul_,
                  mv, narrow, ne, neg, nonzero, norm, outer, permute, pow, pow_, prod, reciprocal, relu, repeat,
                  repeat_interleave, reshape, rsqrt, scatter_add, scatter_add_, select, setitem, sigmoid, sign, sin,
                  softmax, split, sqrt, square, squeeze, std, sub, sum, t, tan, tanh, to_args, to_device, to_dtype, transpose,
                  unbind, unflatten, unsqueeze, var, vdot, view, where, zero_)
from .ops._record import recorder
from .tensor import Tensor


def _to(x, *args, **kwargs):
    dt, device = to_args(args, kwargs)
    x = to_dtype(x, dt) if dt is not None else x
    return to_device(x, device) if device is not None else x


def _install():
    M = Tensor
    M.__add__ = M.__radd__ = recorder(ADD_SCALAR, add)  # (x + c is c + x, bit for bit)
    M.__sub__ = recorder(SUB_SCALAR, sub)
    M.__rsub__ = lambda x, y: _rsub(x, y) if isinstance(y, _SCALARS) else sub(_as_tensor(y, x), x)
    M.__mul__ = M.__rmul__ = recorder(MUL_SCALAR, mul)
    M.__truediv__ = recorder(DIV_SCALAR, div)
    M.__rtruediv__ = lambda x, y: _rdiv(x, y) if isinstance(y, _SCALARS) else div(_as_tensor(y, x), x)
    M.__pow__ = pow
    M.__rpow__ = lambda x, y: _rpow(x, y) if isinstance(y, _SCALARS) else pow(_as_tensor(y, x), x)
    M.__matmul__ = matmul
    M.__rmatmul__ = lambda x, y: matmul(_as_tensor(y, x), x)
    M.__neg__ = neg
    M.__pos__ = lambda x: x
    M.__abs__ = abs
    M.__getitem__ = getitem
    M.__setitem__ = setitem
    M.__lt__, M.__le__, M.__gt__, M.__ge__, M.__eq__, M.__ne__ = lt, le, gt, ge, eq, ne
    M.__and__, M.__or__, M.__xor__, M.__invert__ = bitwise_and, bitwise_or, bitwise_xor, _invert
    M.__rand__, M.__ror__, M.__rxor__ = bitwise_and, bitwise_or, bitwise_xor
    M.__iadd__ = lambda x, y: _inplace(x, add(x, y))
    M.__isub__ = lambda x, y: _inplace(x, sub(x, y))
    M.__imul__ = mul_
    M.__itruediv__ = div_
    M.__ipow__ = pow_
    for name, fn in dict(
            add=add, sub=sub, mul=mul, div=div, pow=pow, neg=neg, exp=exp, log=log, sin=sin, cos=cos, tanh=tanh,
            sigmoid=sigmoid, relu=relu, sqrt=sqrt, abs=abs, sum=sum, mean=mean, matmul=matmul, mm=mm, view=view,
            reshape=reshape, transpose=transpose, t=t, permute=permute, expand=expand, expand_as=expand_as,
            unsqueeze=unsqueeze, squeeze=squeeze, clone=clone, contiguous=contiguous, reciprocal=reciprocal,
            sign=sign, multiply=mul, subtract=sub, divide=div, true_divide=div,
            rsqrt=rsqrt, log1p=log1p, expm1=expm1, tan=tan, erf=erf, square=square, clamp=clamp, clip=clamp,
            clamp_min=clamp_min, clamp_max=clamp_max, maximum=maximum, minimum=minimum, prod=prod,
            max=max_, min=min_, amax=amax, amin=amin, norm=norm, var=var, std=std, logsumexp=logsumexp,
            softmax=softmax, log_softmax=log_softmax, cumsum=cumsum, argmax=argmax, argmin=argmin, isnan=isnan,
            isfinite=isfinite, isinf=isinf, bmm=bmm, mv=mv, dot=dot, vdot=vdot, inner=inner, outer=outer, ger=outer,
            flatten=flatten, unflatten=unflatten, repeat=repeat, split=split, chunk=chunk, flip=flip, unbind=unbind,
            narrow=narrow, select=select, index_select=index_select, gather=gather, scatter_add=scatter_add,
            masked_fill=masked_fill, lt=lt, le=le, gt=gt, ge=ge, eq=eq, ne=ne, greater=gt, less=lt,
            logical_not=logical_not, all=all_, any=any_, nonzero=nonzero, repeat_interleave=repeat_interleave,
            mul_=mul_, div_=div_, pow_=pow_, clamp_=clamp_, clip_=clamp_, copy_=copy_, exp_=exp_,
            masked_fill_=masked_fill_, zero_=zero_, fill_=fill_, scatter_add_=scatter_add_).items():
        setattr(M, name, fn)
    M.add_ = lambda x, y, alpha=1: _inplace(x, add(x, y, alpha=alpha))
    M.sub_ = lambda x, y, alpha=1: _inplace(x, sub(x, y, alpha=alpha))
    M.where = lambda x, condition, y: where(condition, x, y)
    M.T = property(lambda x: permute(x, *range(x.ndim - 1, -1, -1)))
    M.mT = property(lambda x: transpose(x, -2, -1))
    M.to = _to
    M.float = lambda x: to_dtype(x, dtypes.float32)
    M.double = lambda x: to_dtype(x, dtypes.float64)
    M.long = lambda x: to_dtype(x, dtypes.int64)
    M.int = lambda x: to_dtype(x, dtypes.int32)
    M.bool = lambda x: to_dtype(x, dtypes.bool_)
    M.type_as = lambda x, other: to_dtype(x, other.dtype)
    for name, fn in METHODS.items():  # the methods rows declare themselves (binary_elementwise)
        setattr(M, name, fn)


_install()
