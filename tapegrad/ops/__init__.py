"""The op table and the torch-facing functions that record its rows, one module per concept.

The modules stand on one-way floors, each importing only modules listed before it below, so a
VJP calls the ops of its own module and of lower ones (a formula's VJP calls Tensor methods).
Each row takes its opcode, its index in TABLE, when its module is imported, so the order of the
imports below is the table's order (tools/generate.py derives the engine's dispatch from it).

    spec         the row type (Op) and its declarers; the custom-Function row
    attrs        what a row's fields i0, i1, f0 hold, one codec per kind of attribute
    _record      the generated recorders (tools/generate.py); results: the hand-written ones
    cast         to_dtype, clone
    promote      broadcasting and type promotion
    shape        views and reshapes, dim arguments
    compare      comparisons and tests (no grad)
    sums         sum, mean, expand, and summing a broadcast gradient back (_sum_to)
    algebra      the create_graph walk's deferred signs and runs; neg; flat gathers and scatters
    inplace      in-place writes, setitem's rows, zero_, fill_, copy_
    elementwise  arithmetic, unary functions, activations, clamp, where, masked_fill
    index        getitem, setitem, select, gather, scatter_add, cat, stack, split...
    reduce       prod, max, amax, norm, var, std, logsumexp, softmax, cumsum
    linalg       mm, matmul, bmm, einsum...
    loss         nll_loss, cross-entropy's fused forward
"""
from ._record import record_unary as _unary  # noqa: F401
from .spec import FUNCTION, TABLE  # noqa: F401
from .results import _leaf, _result, shown_as  # noqa: F401
from .cast import clone, contiguous, to_args, to_device, to_dtype  # noqa: F401
from .promote import _SCALARS, _as_tensor  # noqa: F401
from .shape import flatten, permute, reshape, squeeze, t, transpose, unflatten, unsqueeze, view  # noqa: F401
from .compare import (_invert, all_, any_, argmax, argmin, bitwise_and, bitwise_or, bitwise_xor, eq, ge, gt,
                      isfinite, isinf, isnan, le, logical_not, lt, ne, nonzero)  # noqa: F401
from .sums import EXPAND, _broadcast, _sum_to, _uniform, expand, expand_as, mean, sum  # noqa: F401
from .algebra import Negated, Run, _scatter_run, add_run, neg, negated, plain  # noqa: F401
from .inplace import OVERLAP_MSG, _inplace, _update_base, copy_, fill_, fresh_grad, zero_  # noqa: F401
from .elementwise import (ADD_SCALAR, DIV_SCALAR, FUNCTIONS, METHODS, MUL_SCALAR, SIGN_THROUGH, SUB_SCALAR,
                          _exact, _pow_value, _rdiv, _rpow, _rsub, abs, add, add_grads, binary_elementwise,
                          clamp, clamp_, clamp_max, clamp_min, cos, div, div_, erf, exp, exp_, expm1, gelu,
                          leaky_relu, log, log1p, masked_fill, masked_fill_, maximum, minimum, mul, mul_, pow,
                          pow_, reciprocal, relu, rsqrt, sigmoid, sign, sin, softplus, sqrt, square, sub, tan,
                          tanh, where)  # noqa: F401
from .index import (MULTI_OUTPUT, TAKES_NEGATED, cat, chunk, concat, concatenate, flip, gather, getitem,
                    index_select, narrow, repeat, repeat_interleave, scatter_add, scatter_add_, select, setitem,
                    split, stack, unbind)  # noqa: F401
from .reduce import (amax, amin, cumsum, log_softmax, logsumexp, max_, min_, norm, prod, softmax, std,  # noqa: F401
                     var)
from .linalg import bmm, dot, einsum, ger, inner, matmul, mm, mv, outer, vdot  # noqa: F401
from .loss import cross_entropy_mean, nll  # noqa: F401

BY_NAME = {r.name: r for r in TABLE}
assert len(BY_NAME) == len(TABLE), "row names must be unique"
assert all(r.code == k for k, r in enumerate(TABLE))
