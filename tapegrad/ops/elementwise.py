"""Elementwise ops: arithmetic with Python scalars on either side, unary functions, activations,
clamp, maximum and minimum, where and masked_fill, and the in-place forms of several.

Binary rows record operands of their own shapes (the forward broadcasts); each gradient is summed
back to its operand's shape (``_fit``; the kernels' ``bsum``)."""
import math
import warnings

import numpy as np

from .. import dtypes, formula
from ..operands import operand as _operand
from ..tensor import Tensor, _read
from ..tensor import leaf as _leaf
from . import _record as _records
from ._record import record_binary as _binary_rec, record_unary as _unary, recorder as _recorder
from .algebra import Negated, Run, add_run, negated, plain
from .attrs import Bool, Float, FloatBits, Int, Operand
from .cast import _float_input, _torch_type_name, to_dtype, zeros_like
from .compare import nonzero
from .inplace import _inplace, _overlaps, _saved
from .promote import (_SCALARS, _as_tensor, _prepare, _promote, _same_dtype, _scalar_result_dtype,
                      broadcast_shapes)
from .results import _const_like, _constant, _record, _scalar_like, shown, shown_as
from .spec import TABLE, Op, elementwise, loop_ready, row
from .sums import _broadcast, _fit, _uniform, expand

ndarray = np.ndarray


FUNCTIONS = {}  # public name -> function, for rows that declare their own front end (installed below)


def binary_elementwise(name, grad_fn, forward, da, db, aliases=(), integers=True, gpu=None):
    """A broadcasting binary row of two tensors promoted to a floating dtype, whose derivatives are
    the formulas ``da`` and ``db`` (formula.py, in ``g``, ``a``, ``b``, ``y``): the jitted adjoint
    ``adj_<name>`` and the VJP come from them, and so do ``tg.<name>``, the method, the in-place
    method ``<name>_`` and the ``aliases``. ``integers`` false: two integer tensors are refused, as
    torch has no integer kernel for the op. ``gpu``: the row's (spec.Op)."""
    vjp = eval(f"lambda g, i, o, r: _fit(({formula.vjp_expr(da)}, {formula.vjp_expr(db)}), i)", globals())
    op = Op(len(TABLE), name, grad_fn, 2, forward, "adj_" + name, vjp, {0: formula.reads(da), 1: formula.reads(db)},
            (da, db), gpu=gpu)
    TABLE.append(op)

    def function(input, other):
        for pos, (arg, v) in enumerate((("input", input), ("other", other))):
            if not isinstance(v, Tensor):
                raise TypeError(f"{name}(): argument '{arg}' (position {pos + 1}) must be Tensor, not {type(v).__name__}")
        if not integers and input._value.dtype.kind in "biu" and other._value.dtype.kind in "biu":
            raise NotImplementedError(f'"{name}_cpu" not implemented for '
                                      f"'{_torch_type_name(_promote(input, other).np)}'")
        x, y = _prepare(input, other, float_result=True)
        return _binary_rec(op, x, y, forward(x._value, y._value))

    def method(self, other):
        if not isinstance(other, Tensor):
            raise TypeError(f"{name}(): argument 'other' (position 1) must be Tensor, not {type(other).__name__}")
        return function(self, other)

    def in_place(self, other):  # (an adjoint that reads self's old value gets a copy: _saved)
        return _inplace(self, method(_saved(self, other) if 0 in op.reads[0] + op.reads[1] else self, other))

    function.__name__ = method.__name__ = name
    in_place.__name__ = name + "_"
    FUNCTIONS[name] = function
    for alias in aliases:
        FUNCTIONS[alias] = function
    for n in (name, *aliases):
        METHODS[n] = method
        METHODS[n + "_"] = in_place
    return op


METHODS = {}  # Tensor method name -> function, for rows that declare their own front end


def _float_unary(op):
    """``tg.exp`` and kin: an integer x goes to the default dtype first, as in torch."""
    forward = op.forward

    def promoted(x):
        x = to_dtype(x, dtypes.get_default_dtype())
        return _unary(op, x, forward(x._value))
    promoted.__name__ = op.name
    return _recorder(op, promoted, binary=False)


def _binary(op, op_scalar, x, y, reverse_scalar=None, float_result=False):
    """Dispatch ``x (op) y`` with Tensors, arrays or Python scalars on either side."""
    if y.__class__ is Tensor or isinstance(y, Tensor):  # exact class first: the common case is cheap
        if not isinstance(x, Tensor):
            if isinstance(x, _SCALARS):
                return reverse_scalar(y, x)
            x = _as_tensor(x, y)
        xv, yv = x._value, y._value
        if xv.dtype != yv.dtype or (float_result and xv.dtype.kind != "f"):
            x, y = _prepare(x, y, float_result)
            xv, yv = x._value, y._value
        elif xv.shape != yv.shape:  # (a bias: broadcast_shapes' first checks pass it)
            broadcast_shapes(xv.shape, yv.shape)  # torch's error; the rows broadcast themselves
        return _binary_rec(op, x, y, op.forward(xv, yv))
    if isinstance(y, _SCALARS):
        rt = _scalar_result_dtype(x, y, float_result)
        if rt is not None:
            x = to_dtype(x, rt)
        v = x._value
        if v.dtype.kind == "f":
            c = float(y)
            return _unary(op_scalar, x, op_scalar.forward(v, _operand(c, v.dtype)), f0=c)
        return _unary(op_scalar, x, op_scalar.forward(v, y), f0=float(y))
    return _binary(op, op_scalar, x, _as_tensor(y, x), reverse_scalar, float_result)


# Binary rows record operands of their own shapes (the forward broadcasts); each gradient is
# summed back to its operand's shape (``_fit``; the kernels' ``bsum``).
ADD = row("add", "AddBackward0", 2, np.add, "adj_add", lambda g, i, o, r: _fit((g, g), i), fwd="a + b",
          formula=("g", "g"), gpu=True)


def _sub_vjp(g, i, o, r):
    ga, gb = _fit((g, g), i)
    return (ga, negated(g)) if gb is g else _fit((g, -g), i)  # (a broadcast b: summed after the neg, as torch)


SUB = row("sub", "SubBackward0", 2, np.subtract, "adj_sub", _sub_vjp, fwd="a - b", formula=("g", "-g"), gpu=True)


def _mul_vjp(g, i, o, r):
    if r[1] == r[2]:  # x * x: one product, which the engine adds to itself (torch's value, one op fewer)
        t = _same(MUL, g, i[0])
        return (t, t)
    return _fit((g * i[1], g * i[0]), i)


MUL = row("mul", "MulBackward0", 2, np.multiply, "adj_mul", _mul_vjp, reads={0: (1,), 1: (0,)}, fwd="a * b",
          formula=("g * b", "g * a"), gpu=True)
DIV = row("div", "DivBackward0", 2, np.true_divide, "adj_div",
          lambda g, i, o, r: _fit((g / i[1], -g * ((i[0] / i[1]) / i[1])), i),  # torch's order
          reads={0: (1,), 1: (0, 1)}, fwd="a / b", formula=("g / b", "-g * ((a / b) / b)"), gpu=True)


def _rounded_once(f):
    """The NumPy function f, float32 operands computed in float64 and rounded once: NumPy's float32
    pow and atan2 loops (its AVX-512 ones) are an ulp off where torch's are not, and its 0-d path
    takes another loop than its arrays (one sample would differ from its batch)."""
    def rounded(*xs):
        if all(x.__class__ in _ROUNDED_ONCE_TYPES or isinstance(x, np.generic) for x in xs) \
                and np.result_type(*xs) == np.float32:
            return f(*(x.astype(np.float64) if x.__class__ is not float and x.__class__ is not int else x
                       for x in xs)).astype(np.float32)
        return f(*xs)
    return rounded


_ROUNDED_ONCE_TYPES = (np.ndarray, float, int)
_power = _rounded_once(np.power)


def _pow_vjp(g, i, o, r):
    # torch's pow_backward_self and pow_backward_exponent: a zero exponent has gradient 0 in x (not
    # 0 * x**-1), and a zero base with a non-negative exponent gradient 0 in y (not result * log(0))
    x, y = i
    xv, yv = x._value, y._value
    gx = gy = None
    if x._rg:
        gx = where(_leaf(yv == 0), 0.0, g * (y * pow(x, y - 1)))
    if y._rg:
        gy = g * where(_leaf((xv == 0) & (yv >= 0)), 0.0, o * log(x))
    return _fit((gx, gy), i)


POW = row("pow", "PowBackward1", 2, _power, "adj_pow", _pow_vjp, reads={0: (0, 1), 1: (0, 1, "out")},
          gpu="pow(a, b)")
# x (op) c for a Python scalar c, kept in f0
ADD_SCALAR = row("add_scalar", "AddBackward0", 1, np.add, "adj_identity", lambda g, i, o, r: (g,),
                 attrs=(None, None, Operand(listed=True)), fwd="x + c", formula="g", gpu=True)
SUB_SCALAR = row("sub_scalar", "SubBackward0", 1, np.subtract, "adj_identity", lambda g, i, o, r: (g,),
                 attrs=(None, None, Operand(listed=True)), fwd="x - c", formula="g", gpu=True)
RSUB_SCALAR = row("rsub_scalar", "RsubBackward1", 1, lambda x, c: np.subtract(c, x), "adj_neg",
                  lambda g, i, o, r: (negated(g),), attrs=(None, None, Operand(left=True)), fwd="c - x",
                  formula="-g", gpu=True)


def _exact(a, b):
    """Whether regrouping a product with factors a and b cannot change a bit: one is a power of
    two, so scaling by it is exact (short of overflow and subnormals)."""
    return math.frexp(a)[0] in (0.5, -0.5) or math.frexp(b)[0] in (0.5, -0.5)


def _mul_scalar_vjp(g, i, o, r):
    u = _uniform(g)
    if u is not None:  # keep it one number: the VJPs below fold it (W4's 100 * (b - a * a) ** 2)
        return (_leaf(_broadcast(np.asarray(u * r[7]), g._value.shape)),)
    return (g * r[7],)


# (torch wraps the scalar in a tensor and saves it: a second backward through x * 2 fails)
MUL_SCALAR = elementwise("mul_scalar", "MulBackward0", np.multiply, "g * c", vjp=_mul_scalar_vjp, reads=("const",),
                         attrs=(None, None, Operand(listed=True)), fwd="x * c", gpu=True)
# x * c inside a node of torch's that keeps c as a number (add's and sub's alpha): saves nothing
SCALE = row("scale", "MulBackward0", 1, np.multiply, "adj_mul_scalar", _mul_scalar_vjp, sign_through=True,
            attrs=(None, None, Operand()), fwd="x * c", formula="g * c", gpu=True)
DIV_SCALAR = elementwise("div_scalar", "DivBackward0", np.true_divide, "g / c", reads=("const",),
                         attrs=(None, None, Operand(listed=True)), fwd="x / c", gpu=True)


def _pow_scalar_vjp(g, i, o, r):
    # torch's pow_backward: zeros for c == 0, else grad * (c * x.pow(c - 1)), x.pow(c - 1) recorded
    # even where it is x itself or ones (c == 2, c == 1), so that the gradient stays differentiable
    # in x as torch's does (the fourth derivative of x**3 is zeros, not an error)
    c = r[7]
    x = i[0]
    if c == 0:
        return (zeros_like(x),)
    # torch's nodes: MulBackward0(grad, MulBackward1(PowBackward0(x))); a uniform grad folded into
    # the scalar has no row of its own, so its node is shown. x ** 1 is x: its row holds x's own
    # array, not a copy (this tensor stays inside the VJP: nothing writes to it)
    p = _unary(POW_SCALAR, x, x._value, f0=1.0) if c == 2 else pow(x, c - 1)
    u = _uniform(g)
    if u is not None and _exact(c, u):  # g is the number u everywhere: one product fewer, same bits
        return (shown_as(p * float(c * u), "MulBackward0", None, shown("MulBackward1", p)),)
    return (g * shown_as(p * float(c), "MulBackward1", p),)


_POW_FORMULAS = (2, 3, 0.5, -1, -0.5, -2, 1, 0)  # the exponents _pow_value computes by a formula


def _pow_value(x, c):
    """x ** c as torch computes it: its special exponents are other formulas than pow(), which
    differ from it in the last bit (x * x * x, 1 / sqrt) or at -0.0 and -inf (sqrt)."""
    if c == 2:
        return np.square(x)  # (np.power's ufunc call has no x * x fast path)
    if x.dtype.kind != "f":
        if c < 0:
            raise RuntimeError("Integers to negative integer powers are not allowed.")
        return _power(x, c)
    if c == 0.5:
        return np.sqrt(x)
    if c == -1:
        return np.reciprocal(x)
    if c == 3:
        return x * x * x
    if c == -0.5:
        return np.reciprocal(np.sqrt(x))
    if c == -2:
        return np.reciprocal(x * x)
    if c == 1:
        return x.copy()
    if c == 0:
        return np.ones_like(x)
    return _power(x, c)


def _rpow_scalar_vjp(g, i, o, r):
    # torch's pow_backward_exponent for a Python base c: grad * (result * log(c)); a zero base has
    # gradient 0 where x >= 0 (not 0 * -inf) and -inf where x < 0
    c = r[7]
    if c == 0:
        return (g * where(_leaf(i[0]._value >= 0), 0.0, shown_as(o * -math.inf, "MulBackward1", o)),)
    return (g * shown_as(o * (math.log(c) if c > 0 else math.nan), "MulBackward1", o),)


POW_SCALAR = row("pow_scalar", "PowBackward0", 1, _pow_value, "adj_pow_scalar", _pow_scalar_vjp, reads=(0,),
                 attrs=(None, None, Operand()), fwd="fwd_pow_scalar", fwd_f0=lambda c: c in _POW_FORMULAS, gpu=True)
RPOW_SCALAR = row("rpow_scalar", "PowBackward2", 1, lambda x, c: _power(c, x), "adj_rpow_scalar",
                  _rpow_scalar_vjp, reads=(0, "out"), attrs=(None, None, Operand(left=True)), gpu="pow(c, x)")


# (on the GPU, the kernel of any c / x: its own forward is the call with c = 1)
RECIPROCAL = elementwise("reciprocal", "ReciprocalBackward0", lambda x: np.true_divide(1, x), "-g * (y * y)",
                         fwd="1 / x", gpu="c / x")
EXP = elementwise("exp", "ExpBackward0", np.exp, "g * y", fwd="ufunc:numpy.exp", gpu=True)
LOG = elementwise("log", "LogBackward0", np.log, "g / x", fwd="ufunc:numpy.log", gpu=True)


# Large float arrays take the vectorised kernels (libm's sin/cos are scalar calls); small ones
# stay with NumPy, one call deep (W1 records 2,000 sines).
def _sin(x):
    if x.size < 4096 or x.__class__ is not ndarray:  # (a GPU value: its own kernel)
        return np.sin(x)
    from ..jit.forward import sin_forward
    return sin_forward(x)


def _cos(x):
    if x.size < 4096 or x.__class__ is not ndarray:
        return np.cos(x)
    from ..jit.forward import cos_forward
    return cos_forward(x)


def _trig_exact(name):
    """Where a replay's jitted sin/cos gives _sin's bits: the vectorised kernel, or NumPy's own loop."""
    ready = loop_ready(name)
    return lambda dtype, size: size >= 4096 or ready(dtype, size)


# (their kernels compute cos and sin with the vectorised kernel where it is exact)
SIN = elementwise("sin", "SinBackward0", _sin, "g * cos(x)", kernel="adj_sin", fwd="fwd_sin", fwd_exact=_trig_exact("numpy.sin"),
                  gpu="sin(x)")
COS = elementwise("cos", "CosBackward0", _cos, "g * -sin(x)", kernel="adj_cos", fwd="fwd_cos", fwd_exact=_trig_exact("numpy.cos"),
                  gpu="cos(x)")
# A VJP that torch writes as one op (tanh_backward...) or with Scalar overloads (MulBackward1: one
# input) shows those nodes (shown_as): the same formula, with torch's nodes in the graph.
TANH = elementwise("tanh", "TanhBackward0", np.tanh, "g * (1 - y * y)",
                   vjp=lambda g, i, o, r: (shown_as(g * (1 - o * o), "TanhBackwardBackward0", g, o),),
                   fwd="ufunc:numpy.tanh", gpu=True)
SIGMOID = elementwise("sigmoid", "SigmoidBackward0", lambda x: _sigmoid(x), "g * ((1 - y) * y)",
                      vjp=lambda g, i, o, r: (shown_as(g * ((1 - o) * o), "SigmoidBackwardBackward0", g, o),),
                      fwd="fwd_sigmoid", fwd_exact=loop_ready("numpy.exp"), gpu=True)
RELU = row("relu", "ReluBackward0", 1, lambda x: np.maximum(x, 0), "adj_relu",
           lambda g, i, o, r: (threshold_backward(g, o),), reads=("out",), fwd="fwd_relu", gpu=True)
SQRT = elementwise("sqrt", "SqrtBackward0", np.sqrt, "g / (2 * y)",
                   vjp=lambda g, i, o, r: (g / shown_as(o * 2.0, "MulBackward1", o),), fwd="sqrt(x)", gpu=True)
ABS = elementwise("abs", "AbsBackward0", np.abs, "g * sign(x)",
                  vjp=lambda g, i, o, r: (g * shown_as(sign(i[0]), "SgnBackward0", i[0]),), fwd="ufunc:numpy.absolute",
                  gpu="abs(x)")

# Rows whose VJP is products, quotients and sums of g: it commutes with negation bit for bit
# (rounding is symmetric, and no zero of their own gets the wrong sign), so the create_graph walk
# hands them a Negated gradient's t and negates what they return. (The formula rows among them are
# those declared up to here, neg's included; the later ones keep their neg row.)
SIGN_THROUGH = frozenset({ADD, SUB, MUL, DIV, ADD_SCALAR, SUB_SCALAR, RSUB_SCALAR, POW_SCALAR} |
                         {op for op in TABLE if op.sign_through})


# -- the create_graph walk's sums of gradients ----------------------------------------------------
def _same(op, x, y):
    """x (op) y for tensors that are usually of one shape and dtype (a VJP's products, the
    create_graph walk's sums of gradients): straight to the recorder, else the public path."""
    xv, yv = x._value, y._value
    if xv.shape == yv.shape and xv.dtype == yv.dtype:
        return _binary_rec(op, x, y, op.forward(xv, yv))
    return add(x, y) if op is ADD else sub(x, y) if op is SUB else mul(x, y)


def add_grads(old, g, exported=False):
    """old + g, two gradients of one tensor (the create_graph walk's accumulation). With Negated
    ones a + -b is a - b and -a + -b is -(a + b), bit for bit; but a gradient that leaves the
    walk (``exported``) is summed as torch sums it, so that it shows torch's AddBackward0. A Run
    is added in place of its zeros, to another Run too (add_run, shown as AddBackward0)."""
    if old.__class__ is Run and (g.__class__ is not Run or old.g.__class__ is Negated):
        old, g = g, old  # g + old: the same bits; of two runs, scatter one without a sign
    if g.__class__ is Run:
        return add_run(old if old.__class__ is Run and old.g.__class__ is not Negated else plain(old), g)
    if old.__class__ is Negated or g.__class__ is Negated:
        if exported:
            return _same(ADD, plain(old), plain(g))
        if old.__class__ is not Negated:
            return _same(SUB, old, g.t)
        if g.__class__ is not Negated:
            return _same(SUB, g, old.t)
        return Negated(_same(ADD, old.t, g.t))
    return _same(ADD, old, g)


def _gelu_vjp(g, i, o, r):
    x = i[0]
    if r[5] == 0:
        cdf = (erf(x * (1 / math.sqrt(2))) + 1) * 0.5
        pdf = exp(x * x * -0.5) * (1 / math.sqrt(2 * math.pi))
        return (g * (cdf + x * pdf),)
    beta, kappa = math.sqrt(2 / math.pi), 0.044715
    th = tanh((x + x * x * x * kappa) * beta)
    dright = (1 - th * th) * ((x * x * (3 * kappa) + 1) * beta)
    return (g * ((th + 1) * 0.5 + x * 0.5 * dright),)


def _softplus_vjp(g, i, o, r):
    z = i[0] * r[7]
    return (where(_leaf(z._value > FloatBits.decode(r[6])), g, g * sigmoid(z)),)


def _clamp_vjp(g, i, o, r):
    xv = i[0]._value
    return (g * _const_like((xv >= r[7]) & (xv <= FloatBits.decode(r[6])), g),)


def _maximum_vjp(g, i, o, r):
    a, b = i[0]._value, i[1]._value
    lose_a, lose_b = (a < b, a > b) if r[5] == 0 else (a > b, a < b)
    eq = a == b
    wa = np.where(eq, 0.5, np.where(lose_a, 0.0, 1.0))
    wb = np.where(eq, 0.5, np.where(lose_b, 0.0, 1.0))
    return _fit((g * _const_like(wa, g), g * _const_like(wb, g)), i)


def _where_vjp(g, i, o, r):
    c = i[2]
    zero = zeros_like(g)
    return _fit((where(c, g, zero), where(c, zero, g)), i[:2]) + (None,)


ATAN2 = binary_elementwise("atan2", "Atan2Backward0", _rounded_once(np.arctan2), "g * b * (1 / (a * a + b * b))",
                           "g * -a * (1 / (a * a + b * b))", aliases=("arctan2",), gpu="atan2(a, b)")
HYPOT = binary_elementwise("hypot", "HypotBackward0", np.hypot, "g * a / y", "g * b / y", integers=False,
                           gpu="hypot(a, b)")
# (1 / sqrt(x) is exact in float32 too: sqrt rounds correctly, and a quotient rounded to double
# and then to float is the float's own)
RSQRT = elementwise("rsqrt", "RsqrtBackward0", lambda x: np.reciprocal(np.sqrt(x)), "-0.5 * g * (y * y * y)",
                    vjp=lambda g, i, o, r: (shown_as(g * -0.5, "MulBackward1", g) *
                                            shown_as(o * o * o, "PowBackward0", o),),  # torch's result.pow(3)
                    fwd="1 / sqrt(x)", gpu=True)
LOG1P = elementwise("log1p", "Log1PBackward0", np.log1p, "g / (x + 1)",
                    vjp=lambda g, i, o, r: (g / shown_as(i[0] + 1, "AddBackward1", i[0]),), fwd="ufunc:numpy.log1p",
                    gpu=True)
EXPM1 = elementwise("expm1", "Expm1Backward0", np.expm1, "g * (y + 1)",
                    vjp=lambda g, i, o, r: (g * shown_as(o + 1, "AddBackward1", o),), fwd="ufunc:numpy.expm1", gpu=True)


def _tan_vjp(g, i, o, r):
    sq = shown_as(o * o, "PowBackward0", o)  # torch's grad * (1 + result.pow(2))
    return (g * shown_as(sq + 1, "AddBackward1", sq),)


TAN = elementwise("tan", "TanBackward0", np.tan, "g * (1 + y * y)", vjp=_tan_vjp, fwd="ufunc:numpy.tan", gpu=True)


def _erf_vjp(g, i, o, r):
    x = i[0]  # torch's 2 / sqrt(pi) * exp(-(x.pow(2))) * grad
    e = exp(-shown_as(x * x, "PowBackward0", x))
    return (shown_as(e * (2 / math.sqrt(math.pi)), "MulBackward1", e) * g,)


ERF = elementwise("erf", "ErfBackward0", lambda x: _scipy_special().erf(x), "1.1283791670955126 * exp(-(x * x)) * g",
                  vjp=_erf_vjp, fwd="ufunc:scipy.special.erf", gpu=True)
LEAKY_RELU = row("leaky_relu", "LeakyReluBackward0", 1, None, "adj_leaky_relu",
                 lambda g, i, o, r: (leaky_relu_backward(g, i[0], r[7]),), reads=(0,),
                 attrs=(None, None, Float("negative_slope")),
                 replay=lambda ins, i0, i1, f0, shape, dtype: _leaky_relu_value(ins[0], f0), gpu=True)
GELU = row("gelu", "GeluBackward0", 1, None, "adj_gelu", _gelu_vjp, reads=(0,), attrs=(Bool("tanh"),),
           replay=lambda ins, i0, i1, f0, shape, dtype: _gelu_value(ins[0], i0), gpu=True)
SOFTPLUS = row("softplus", "SoftplusBackward0", 1, None, "adj_softplus", _softplus_vjp, reads=(0,),
               attrs=(None, FloatBits("threshold"), Float("beta")),
               replay=lambda ins, i0, i1, f0, shape, dtype: _softplus_value(ins[0], f0, FloatBits.decode(i1)),
               gpu=True)
CLAMP = row("clamp", "ClampBackward1", 1, None, "adj_clamp", _clamp_vjp, reads=(0,),
            attrs=(None, FloatBits("max"), Float("min")),
            replay=lambda ins, i0, i1, f0, shape, dtype: _clamp_value(ins[0], f0, FloatBits.decode(i1)), gpu=True)
SIGN = row("sign", "SignBackward0", 1, np.sign, "adj_zero", lambda g, i, o, r: (zeros_like(g),), fwd="ufunc:numpy.sign",
           gpu=True)
MAXIMUM = row("maximum", "MaximumBackward0", 2, np.maximum, "adj_maximum", _maximum_vjp, reads=(0, 1),
              attrs=(Bool("min"),), gpu=True)
MINIMUM = row("minimum", "MinimumBackward0", 2, np.minimum, "adj_maximum", _maximum_vjp, reads=(0, 1),
              attrs=(Bool("min"),), gpu=True)
WHERE = row("where", "WhereBackward0", 3, None, "adj_where", _where_vjp, reads=(2,),
            replay=lambda ins, i0, i1, f0, shape, dtype: np.where(ins[2], ins[0], ins[1]), gpu=True)
MASKED_FILL = row("masked_fill", "MaskedFillBackward0", 2, None, "adj_masked_fill",
                  lambda g, i, o, r: (g * _const_like(~i[1]._value.astype(bool), g), None), reads=(1,),
                  attrs=(None, None, Float("value")),
                  replay=lambda ins, i0, i1, f0, shape, dtype: _masked_fill_value(ins[0], ins[1], f0), gpu=True)


# Gradients that torch computes as ops of their own, which take a value of the forward (relu's
# result, leaky_relu's input, nll_loss's log-probabilities) as an input: a gradient made with
# create_graph then requires grad through it, as torch's does, though its own gradient there is
# zero. a = the gradient, b = the value; threshold_backward (kind 0): a where b > 0 else 0;
# leaky_relu_backward (kind 1): a where b > 0 else a * slope; nll_loss_backward (kind 2): a, the
# scattered gradient that _nll_vjp made.
def _backward_op_vjp(g, i, o, r):
    kind = r[5]
    gi = threshold_backward(g, i[1]) if kind == 0 else leaky_relu_backward(g, i[1], r[7]) if kind == 1 else g
    return (gi, zeros_like(i[1]))


BACKWARD_OP_ATTRS = (Int("kind"), None, Float("slope"))
THRESHOLD_BACKWARD = row("threshold_backward", "ThresholdBackwardBackward0", 2, None, "adj_backward_op",
                         _backward_op_vjp, reads=(1,), attrs=BACKWARD_OP_ATTRS,
                         replay=lambda ins, i0, i1, f0, shape, dtype: _threshold_backward_value(ins[0], ins[1]),
                         gpu=True)
LEAKY_RELU_BACKWARD = row("leaky_relu_backward", "LeakyReluBackwardBackward0", 2, None, "adj_backward_op",
                          _backward_op_vjp, reads=(1,), attrs=BACKWARD_OP_ATTRS,
                          replay=lambda ins, i0, i1, f0, shape, dtype: _leaky_backward_value(ins[0], ins[1], f0),
                          gpu=True)


def _sigmoid(x):
    # exp of a negative argument only, so large |x| neither overflows nor warns
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


# -- public functions: arithmetic -----------------------------------------------------------
def _rsub(x, c):
    rt = _scalar_result_dtype(x, c)
    if rt is not None:
        x = to_dtype(x, rt)
    v = x._value
    if v.dtype.kind == "f":
        c = float(c)
        return _unary(RSUB_SCALAR, x, RSUB_SCALAR.forward(v, _operand(c, v.dtype)), f0=c)
    return _unary(RSUB_SCALAR, x, RSUB_SCALAR.forward(v, c), f0=float(c))


def _rdiv(x, c):
    return mul(reciprocal(x), c)


def _rpow(x, c):
    rt = _scalar_result_dtype(x, c)
    if rt is not None:
        x = to_dtype(x, rt)
    if x._value.dtype.kind == "f":
        c = float(c)
    return _unary(RPOW_SCALAR, x, RPOW_SCALAR.forward(x._value, c), f0=float(c))


def add(x, y, alpha=1):
    if alpha != 1:
        return _scaled(ADD, ADD_SCALAR, _add_r, "AddBackward0", x, y, alpha)
    return _binary(ADD, ADD_SCALAR, x, y, _add_r)


def sub(x, y, alpha=1):
    if alpha != 1:
        return _scaled(SUB, SUB_SCALAR, _rsub, "SubBackward0", x, y, alpha)
    return _binary(SUB, SUB_SCALAR, x, y, _rsub)


def _scaled(op, op_scalar, reverse, grad_fn, x, y, alpha):
    """x (op) alpha * y: recorded as a scaling and the op, shown as torch's one node."""
    if not isinstance(y, Tensor):
        return _binary(op, op_scalar, x, y * alpha, reverse)  # a Python scalar stays one
    return shown_as(_binary(op, op_scalar, x, _binary(MUL, SCALE, y, alpha), reverse), grad_fn, x, y)


def mul(x, y):
    return _binary(MUL, MUL_SCALAR, x, y, _mul_r)


def _add_r(t, c):
    return _binary(ADD, ADD_SCALAR, t, c)


def _mul_r(t, c):
    return _binary(MUL, MUL_SCALAR, t, c)


def div(x, y):
    return _binary(DIV, DIV_SCALAR, x, y, _rdiv, float_result=True)


def pow(x, y):
    if (y.__class__ is int or y.__class__ is float) and x.__class__ is Tensor and x._value.dtype.kind == "f":
        c = float(y)  # a float tensor to a Python number (W4's ** 2): no promotion to work out
        return _unary(POW_SCALAR, x, POW_SCALAR.forward(x._value, c), 0, 0, c)
    if not isinstance(x, Tensor):
        return _rpow(y, x)
    if isinstance(y, _SCALARS):
        rt = _scalar_result_dtype(x, y)
        if rt is not None:
            x = to_dtype(x, rt)
        c = float(y) if x._value.dtype.kind == "f" else y
        return _unary(POW_SCALAR, x, POW_SCALAR.forward(x._value, c), f0=float(c))
    return _binary(POW, None, x, y, _rpow)


exp = _float_unary(EXP)
log = _float_unary(LOG)
sin = _float_unary(SIN)
cos = _float_unary(COS)
tanh = _float_unary(TANH)
sigmoid = _float_unary(SIGMOID)
sqrt = _float_unary(SQRT)
reciprocal = _float_unary(RECIPROCAL)
rsqrt = _float_unary(RSQRT)
log1p = _float_unary(LOG1P)
expm1 = _float_unary(EXPM1)
tan = _float_unary(TAN)
erf = _float_unary(ERF)


def relu(x):
    return _unary(RELU, x, RELU.forward(x._value))


def abs(x):
    return _unary(ABS, x, np.abs(x._value))


def sign(x):
    return _unary(SIGN, x, np.sign(x._value))


# -- activations, clamp, maximum, where ----------------------------------------------------------
def _scipy_special():
    import scipy.special  # imported on first use: `import tapegrad` stays light
    return scipy.special


def square(x):
    return pow(x, 2)


# The forward values, shared by the eager ops and a compiled program's replay of their rows (which
# hands them the row's attributes: a float where the eager call may have had an int, same bits).
def leaky_relu(x, negative_slope=0.01, inplace=False):
    out = _unary(LEAKY_RELU, x, _leaky_relu_value(x._value, negative_slope), f0=float(negative_slope))
    return _inplace(x, out) if inplace else out


def _leaky_relu_value(xv, slope):
    return np.where(xv > 0, xv, xv * slope).astype(xv.dtype, copy=False)


def threshold_backward(g, r):
    """relu's gradient g at its result r, as torch's op: g where r > 0, else 0 (a NaN r passes g)."""
    return _record(THRESHOLD_BACKWARD, _threshold_backward_value(g._value, r._value), g, r)


def _threshold_backward_value(gv, rv):
    with np.errstate(invalid="ignore"):
        return np.where(rv <= 0, gv.dtype.type(0), gv)


def leaky_relu_backward(g, x, slope):
    """leaky_relu's gradient g at its input x, as torch's op: g where x > 0, else g * slope."""
    return _record(LEAKY_RELU_BACKWARD, _leaky_backward_value(g._value, x._value, slope), g, x, i0=1, f0=float(slope))


def _leaky_backward_value(gv, xv, slope):
    return np.where(xv > 0, gv, gv * gv.dtype.type(slope))


def gelu(x, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    x = _float_input(x)
    tanh = int(approximate == "tanh")
    return _unary(GELU, x, _gelu_value(x._value, tanh), i0=tanh)


def _gelu_value(xv, tanh):
    if not tanh:
        value = 0.5 * xv * (1 + _scipy_special().erf(xv * (1 / math.sqrt(2))))
    else:
        value = 0.5 * xv * (1 + np.tanh(math.sqrt(2 / math.pi) * (xv + 0.044715 * xv * xv * xv)))
    return value.astype(xv.dtype, copy=False)


def softplus(x, beta=1.0, threshold=20.0):
    x = _float_input(x)
    return _unary(SOFTPLUS, x, _softplus_value(x._value, beta, threshold), i1=FloatBits.encode(threshold),
                  f0=float(beta))


def _softplus_value(xv, beta, threshold):
    z = xv * beta
    return np.where(z > threshold, xv, np.logaddexp(0, z) / beta).astype(xv.dtype, copy=False)


def clamp(x, min=None, max=None):
    if min is None and max is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    if isinstance(min, Tensor) or isinstance(max, Tensor):  # tensor bounds: elementwise max then min
        out = x if min is None else maximum(x, _scalar_like(min, x))
        return out if max is None else minimum(out, _scalar_like(max, x))
    if x._value.dtype.kind != "f" and any(isinstance(b, (float, np.floating)) for b in (min, max)):
        x = to_dtype(x, dtypes.get_default_dtype())
    lo = -math.inf if min is None else min
    hi = math.inf if max is None else max
    return _unary(CLAMP, x, _clamp_value(x._value, lo, hi), i1=FloatBits.encode(hi), f0=float(lo))


def _clamp_value(xv, lo, hi):
    return np.minimum(np.maximum(xv, lo), hi).astype(xv.dtype, copy=False)


def clamp_min(x, min):
    return clamp(x, min=min)


def clamp_max(x, max):
    return clamp(x, max=max)


def maximum(x, y):
    x, y = _same_dtype(x, _as_tensor(y, x))
    broadcast_shapes(x._value.shape, y._value.shape)
    return _record(MAXIMUM, np.maximum(x._value, y._value), x, y)


def minimum(x, y):
    x, y = _same_dtype(x, _as_tensor(y, x))
    broadcast_shapes(x._value.shape, y._value.shape)
    return _record(MINIMUM, np.minimum(x._value, y._value), x, y, i0=1)


def where(condition, x=None, y=None):
    if x is None and y is None:
        return nonzero(condition, as_tuple=True)
    cv = condition._value if isinstance(condition, Tensor) else np.asarray(condition)
    if cv.dtype != np.bool_:
        raise RuntimeError(f"where expected condition to be a boolean tensor, but got a tensor with dtype "
                           f"{_torch_type_name(cv.dtype)}")
    if not isinstance(x, Tensor) and not isinstance(y, Tensor):  # two scalars: torch's scalar dtypes
        dt = dtypes.result_type([], [], (x, y)).np
        x, y = _constant(np.asarray(x, dt)), _constant(np.asarray(y, dt))
    like = x if isinstance(x, Tensor) else y
    x, y = _where_operand(x, like), _where_operand(y, like)
    x, y = _same_dtype(x, y)
    shape = broadcast_shapes(broadcast_shapes(cv.shape, x._value.shape), y._value.shape)
    value = np.where(cv, x._value, y._value)
    c = np.broadcast_to(cv, shape)
    return _record(WHERE, value, x, y, (c, condition) if isinstance(condition, Tensor) else c)


def _where_operand(v, like):
    if isinstance(v, Tensor):
        return v
    dt = like._value.dtype
    if isinstance(v, float) and dt.kind != "f":
        dt = dtypes.get_default_dtype().np
    return _constant(np.asarray(v, dtype=dt))


def masked_fill(x, mask, value):
    mv = mask._value if isinstance(mask, Tensor) else np.asarray(mask)
    if mv.dtype != np.bool_:
        raise RuntimeError(f"masked_fill_ only supports boolean masks, but got mask with dtype "
                           f"{_torch_type_name(mv.dtype).lower()}")
    shape = broadcast_shapes(mv.shape, x._value.shape)  # torch names the mask "a"
    if isinstance(value, Tensor):
        if value._value.ndim:
            raise RuntimeError(f"masked_fill_ only supports a 0-dimensional value tensor, but got tensor with "
                               f"{value._value.ndim} dimension(s).")
        if value._rg:  # a differentiable fill value: where() carries its gradient
            return where(mask if isinstance(mask, Tensor) else _leaf(mv), to_dtype(value, x.dtype), x)
        if _records.PROGRAMS:
            _read(value)  # (the row keeps the value: a compiled program guards on it)
        value = value._value.item()
    x = expand(x, shape)
    full = np.broadcast_to(mv, shape)
    out = _masked_fill_value(x._value, full, value)
    return _record(MASKED_FILL, out, x, (full, mask) if isinstance(mask, Tensor) else full, f0=float(value))


def _masked_fill_value(xv, mask, value):
    out = xv.copy()
    out[mask] = value
    return out


def mul_(x, y):
    return _inplace(x, mul(_saved(x, y), y))


def div_(x, y):
    return _inplace(x, div(_saved(x, y), y))


def pow_(x, e):
    return _inplace(x, pow(_saved(x, e), e))


def clamp_(x, min=None, max=None):
    return _inplace(x, clamp(_saved(x, min, max), min, max))


def exp_(x):
    return _inplace(x, exp(x))


def masked_fill_(x, mask, value):
    result = masked_fill(x, mask, value)
    if not _overlaps(x._value):
        return _inplace(x, result)
    warnings.warn("Use of masked_fill_ on expanded tensors is deprecated. Please clone() the tensor before "
                  "performing this operation. This also applies to advanced indexing e.g. tensor[mask] = scalar",
                  UserWarning, stacklevel=2)
    m = mask._value if isinstance(mask, Tensor) else np.asarray(mask)
    return _inplace(x, result, where=np.broadcast_to(m, x._value.shape), overlap_ok=True)  # (only the masked places)
