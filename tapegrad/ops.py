"""The op table: one row per differentiable operation, and the front-end functions that record them.

A row holds everything about an op: its name, torch's ``grad_fn`` class name, arity, NumPy
forward, the name of its numeric adjoint in ``engine/cpu/adjoints.py`` (the jitted path), its differentiable
VJP written in tapegrad ops (the ``create_graph`` path, which re-records), and what it saves
(``reads``, below). Several rows may share one adjoint kernel (sum/mean, the identity-gradient ops).

``reads`` is torch's saved set for the op (tools/autograd/derivatives.yaml): the values each
input's gradient reads, as operand positions 0..2, 'out' for the result, and 'const' for a
tensor torch saves that the row keeps itself (a Python scalar operand, indices). A plain tuple
holds for every input; a dict {input: tuple} when it depends on which inputs need grad (x * y
saves y for x's gradient, x for y's); the row keeps it per input, a tuple of three. It decides
what a backward frees: an entry whose inputs that need grad read something is freed (a second
backward through it fails, and only the values unfreed entries read are kept), one that reads
nothing replays again (x + 1, sum, views); and which values the in-place version check guards.
The adjoints read no other value (shapes aside, and a row's own index maps).

VJP signature: ``vjp(g, ins, out, row) -> grads``: ``g`` the output gradient (Tensor), ``ins``
the input Tensors (None where unused), ``out`` the output Tensor, ``row`` the tape row tuple
``(op, a, b, c, out, i0, i1, f0)``; returns one gradient (or None) per input.
"""
import math
import struct
import warnings

import numpy as np

from . import _record as _records, dtypes, formula
from ._record import record_binary as _binary_rec, record_unary as _unary, recorder as _recorder
from .operands import operand as _operand
from .tape import LEAF, _contiguous, _state, counter, current_tape, note_op, recording_program
from .tensor import Tensor, _dim, _new
from .tensor import leaf as _leaf

ndarray = np.ndarray


class Op:
    __slots__ = ("code", "name", "grad_fn", "arity", "forward", "kernel", "vjp", "reads", "formula", "sign_through")

    def __init__(self, code, name, grad_fn, arity, forward, kernel, vjp, reads, formula=None, sign_through=False):
        self.code, self.name, self.grad_fn, self.arity = code, name, grad_fn, arity
        self.forward, self.kernel, self.vjp = forward, kernel, vjp
        self.reads = tuple(reads.get(k, ()) for k in range(3)) if isinstance(reads, dict) else (tuple(reads),) * 3
        self.formula = formula  # an elementwise row's derivative (formula.py): its adjoint is generated
        self.sign_through = sign_through  # its VJP commutes with negating g (Negated, below)

    def __repr__(self):
        return f"<op {self.code} {self.name}>"


TABLE = []


def row(name, grad_fn, arity, forward, kernel, vjp, reads=(), sign_through=False):
    op = Op(len(TABLE), name, grad_fn, arity, forward, kernel, vjp, reads, sign_through=sign_through)
    TABLE.append(op)
    return op


def elementwise(name, grad_fn, forward, d, vjp=None, kernel=None, reads=None):
    """A unary elementwise row whose derivative is the formula ``d`` (formula.py). Its jitted
    adjoint ``adj_<name>`` is generated from ``d`` (tools/generate.py) unless ``kernel`` names a
    hand-written one; its VJP is ``d`` in tapegrad ops unless ``vjp`` is given (a VJP tuned for
    torch's bits or graph). It saves what ``d`` reads, unless ``reads`` says more (torch's saved set)."""
    if vjp is None:
        vjp = eval(f"lambda g, i, o, r: ({formula.vjp_expr(d)},)", globals())  # names resolve when called
    op = Op(len(TABLE), name, grad_fn, 1, forward, kernel or "adj_" + name, vjp,
            formula.reads(d) if reads is None else reads, d, formula.sign_through(d))
    TABLE.append(op)
    return op


FUNCTIONS = {}  # public name -> function, for rows that declare their own front end (installed below)


def binary_elementwise(name, grad_fn, forward, da, db, aliases=(), integers=True):
    """A broadcasting binary row of two tensors promoted to a floating dtype, whose derivatives are
    the formulas ``da`` and ``db`` (formula.py, in ``g``, ``a``, ``b``, ``y``): the jitted adjoint
    ``adj_<name>`` and the VJP come from them, and so do ``tg.<name>``, the method, the in-place
    method ``<name>_`` and the ``aliases``. ``integers`` false: two integer tensors are refused, as
    torch has no integer kernel for the op."""
    vjp = eval(f"lambda g, i, o, r: _fit(({formula.vjp_expr(da)}, {formula.vjp_expr(db)}), i)", globals())
    op = Op(len(TABLE), name, grad_fn, 2, forward, "adj_" + name, vjp, {0: formula.reads(da), 1: formula.reads(db)},
            (da, db))
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


# -- recording (the hot path: generated into _record.py) ---------------------------------------
def _result(value, tape, slot, vc):
    t = _leaf(value)
    t._tape = tape
    t._slot = slot
    t._rg = True
    t._vc = vc
    return t


def _float_unary(op):
    """``tg.exp`` and kin: an integer x goes to the default dtype first, as in torch."""
    forward = op.forward

    def promoted(x):
        x = to_dtype(x, dtypes.get_default_dtype())
        return _unary(op, x, forward(x._value))
    promoted.__name__ = op.name
    return _recorder(op, promoted, binary=False)


def _view(op, x, value, i0=0, i1=0, f0=0.0, b=None):
    """A result that shares x's storage (and so its version counter)."""
    vc = counter(x)
    if x._rg and _state.grad_enabled:
        tape = current_tape()
        a = tape.slot_of(x)
        bs = tape.new_slot(b, LEAF, None) if b is not None else -1
        s = tape.push(op.code, a, bs, -1, i0, i1, f0, _contiguous(value), vc)
        t = _result(value, tape, s, vc)
    else:
        t = _leaf(value)
        t._vc = vc
        if _records.PROGRAMS:
            note_op(op.code, x, b, t, i0, i1, f0)
    t._extra().base = x
    return t


def _same(op, x, y):
    """x (op) y for tensors that are usually of one shape and dtype (a VJP's products, the
    create_graph walk's sums of gradients): straight to the recorder, else the public path."""
    xv, yv = x._value, y._value
    if xv.shape == yv.shape and xv.dtype == yv.dtype:
        return _binary_rec(op, x, y, op.forward(xv, yv))
    return add(x, y) if op is ADD else sub(x, y) if op is SUB else mul(x, y)


class Negated:
    """The gradient -t of a tracked t, its neg row not recorded: the create_graph walk
    (engine_cpu._run_python) hands t to a VJP that commutes with the sign (SIGN_THROUGH) and
    negates what comes out, or subtracts t where it accumulates, and records the neg only where
    neither can take it. A sign flip is exact, so the values are torch's bit for bit (W4's
    Rosenbrock: the negations of sub's and rsub's VJPs cost no rows)."""
    __slots__ = ("t",)

    def __init__(self, t):
        self.t = t


def negated(g):
    """-g in a VJP (neg, sub, rsub): unrecorded for a tracked g, -(-t) is t."""
    if g.__class__ is Negated:
        return g.t
    return Negated(g) if g._rg else -g


class Run:
    """The gradient of x from a contiguous run of it (x[1:]): zeros of ``shape`` holding g (a Tensor
    or Negated) from flat offset ``off``, not yet recorded. Added to x's other gradient it is one
    add_run row, where a scatter would write a zeroed copy of x and an add read it again (W4's
    x[:-1] and x[1:]); alone it becomes that scatter."""
    __slots__ = ("g", "off", "shape")

    def __init__(self, g, off, shape):
        self.g, self.off, self.shape = g, off, shape


def plain(g):
    """A gradient of the create_graph walk as a Tensor: a Negated one gets its neg row, a Run its scatter."""
    if g.__class__ is Negated:
        return neg(g.t)
    if g.__class__ is Run:
        return _scatter_run(plain(g.g), g.off, g.shape)
    return g


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


def shown_as(out, grad_fn, *inputs):
    """Show a composite's result as torch's node: ``grad_fn`` its class name, ``inputs`` its
    next_functions: the user's tensors, None for other operands, or a ``shown`` node that the
    composite's rows stand for (a VJP fused into fewer rows than torch's formula has nodes). The
    tape keeps the primitives."""
    tape = out._tape
    if tape is not None:
        tape.shown[out._slot] = (grad_fn, _shown_inputs(tape, inputs))
    return out


def shown(grad_fn, *inputs):
    """A node of torch's graph inside a ``shown_as`` spec, with no row of its own."""
    return grad_fn, inputs


def _shown_inputs(tape, inputs):
    """The spec's inputs as slots (-1: none) and nested (name, inputs) pairs. (A plain loop: W4's
    create_graph walk runs this twice per Hessian-vector product.)"""
    out = []
    for t in inputs:
        if t.__class__ is tuple:
            out.append((t[0], _shown_inputs(tape, t[1])))
        elif isinstance(t, Tensor) and t._rg:
            out.append(t._slot if t._tape is tape else tape.slot_of(t))
        else:
            out.append(-1)
    return tuple(out)


# -- broadcasting and type promotion ------------------------------------------------------------
def broadcast_shapes(sa, sb):
    if sa == sb:
        return sa
    la, lb = len(sa), len(sb)
    if lb < la and sa[la - lb:] == sb:  # a bias-like operand: trailing dims equal
        return sa
    if la < lb and sb[lb - la:] == sa:
        return sb
    n = max(len(sa), len(sb))
    out = []
    for i in range(-1, -n - 1, -1):
        da = sa[i] if -i <= len(sa) else 1
        db = sb[i] if -i <= len(sb) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise RuntimeError(f"The size of tensor a ({da}) must match the size of tensor b ({db}) "
                               f"at non-singleton dimension {n + i}")
    return tuple(reversed(out))


def _promote(*ts):
    dims = [dtypes.from_numpy_dtype(t._value.dtype) for t in ts if t._value.ndim]
    zero = [dtypes.from_numpy_dtype(t._value.dtype) for t in ts if not t._value.ndim]
    return dtypes.result_type(dims, zero, ())


def _prepare(x, y, float_result=False):
    """Cast to the common dtype (recorded when tracked) and check that the shapes broadcast."""
    xv, yv = x._value, y._value
    if xv.dtype != yv.dtype or (float_result and xv.dtype.kind != "f"):
        rt = _promote(x, y)
        if float_result and not rt.is_floating_point:
            rt = dtypes.get_default_dtype()
        x, y = to_dtype(x, rt), to_dtype(y, rt)
    if x._value.shape != y._value.shape:
        broadcast_shapes(x._value.shape, y._value.shape)  # torch's error; the rows broadcast themselves
    return x, y


def _as_tensor(v, like):
    if isinstance(v, Tensor):
        return v
    if isinstance(v, ndarray):
        return _leaf(v)
    raise TypeError(f"unsupported operand type: {type(v).__name__}")


_SCALARS = (int, float, bool, np.integer, np.floating, np.bool_)


def _scalar_result_dtype(x, c, true_divide=False):
    xd = x._value.dtype
    if xd.kind == "f":
        return None
    if true_divide or isinstance(c, (float, np.floating)):
        return dtypes.get_default_dtype()
    if xd.kind == "b" and not isinstance(c, (bool, np.bool_)):
        return dtypes.int64
    return None


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


# -- the rows -----------------------------------------------------------------------------
def _sum_to(g, shape):
    """Sum a broadcast gradient back to ``shape`` (the VJP of expand), in torch's at::sum_to nodes."""
    if g._value.shape == tuple(shape):  # the common case, on the create_graph path's hot loop
        return g
    if not shape:
        return sum(g)
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1)
    g = sum(g, axes, keepdim=True) if axes else g
    return reshape(g, shape) if lead else g


# Binary rows record operands of their own shapes (the forward broadcasts); each gradient is
# summed back to its operand's shape (``_fit``; the kernels' ``bsum``).
ADD = row("add", "AddBackward0", 2, np.add, "adj_add", lambda g, i, o, r: _fit((g, g), i))


def _sub_vjp(g, i, o, r):
    ga, gb = _fit((g, g), i)
    return (ga, negated(g)) if gb is g else _fit((g, -g), i)  # (a broadcast b: summed after the neg, as torch)


SUB = row("sub", "SubBackward0", 2, np.subtract, "adj_sub", _sub_vjp)


def _mul_vjp(g, i, o, r):
    if r[1] == r[2]:  # x * x: one product, which the engine adds to itself (torch's value, one op fewer)
        t = _same(MUL, g, i[0])
        return (t, t)
    return _fit((g * i[1], g * i[0]), i)


MUL = row("mul", "MulBackward0", 2, np.multiply, "adj_mul", _mul_vjp, reads={0: (1,), 1: (0,)})
DIV = row("div", "DivBackward0", 2, np.true_divide, "adj_div",
          lambda g, i, o, r: _fit((g / i[1], -g * ((i[0] / i[1]) / i[1])), i),  # torch's order
          reads={0: (1,), 1: (0, 1)})


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


POW = row("pow", "PowBackward1", 2, np.power, "adj_pow", _pow_vjp, reads={0: (0, 1), 1: (0, 1, "out")})
ADD_SCALAR = row("add_scalar", "AddBackward0", 1, np.add, "adj_identity", lambda g, i, o, r: (g,))
SUB_SCALAR = row("sub_scalar", "SubBackward0", 1, np.subtract, "adj_identity", lambda g, i, o, r: (g,))
RSUB_SCALAR = row("rsub_scalar", "RsubBackward1", 1, lambda x, c: np.subtract(c, x), "adj_neg",
                  lambda g, i, o, r: (negated(g),))
def _broadcast(v, shape):
    """np.broadcast_to(v, shape) for v of shape ``shape`` with some 1s (or 0-d): a read-only
    view with stride 0 along the broadcast axes, made in 0.5 us instead of broadcast_to's 4
    (a C-ordered v only: the constructor takes its buffer)."""
    if not v.flags.c_contiguous:
        return np.broadcast_to(v, shape)
    if v.ndim == len(shape):
        strides = tuple(0 if n == 1 and d != 1 else st for n, d, st in zip(v.shape, shape, v.strides))
    else:
        strides = (0,) * len(shape)
        assert v.size == 1
    out = ndarray(shape, v.dtype, v, 0, strides)
    out.flags.writeable = False
    return out


def _uniform(g):
    """The one value of an untracked float gradient that is a single number broadcast (a scalar
    loss's seed after sum, mean, add or scalar factors), else None. VJPs fold it into their own
    scalar factor: x * (c * u) is one row where g * (x * c) records two (and registers g)."""
    v = g._value
    if g._rg or any(v.strides) or not v.size or v.dtype.kind != "f":
        return None
    return v[(0,) * v.ndim]  # a NumPy scalar of g's dtype: products round as g's would


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
MUL_SCALAR = elementwise("mul_scalar", "MulBackward0", np.multiply, "g * c", vjp=_mul_scalar_vjp, reads=("const",))
# x * c inside a node of torch's that keeps c as a number (add's and sub's alpha): saves nothing
SCALE = row("scale", "MulBackward0", 1, np.multiply, "adj_mul_scalar", _mul_scalar_vjp, sign_through=True)
DIV_SCALAR = elementwise("div_scalar", "DivBackward0", np.true_divide, "g / c", reads=("const",))


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


def _pow_value(x, c):
    """x ** c as torch computes it: its special exponents are other formulas than pow(), which
    differ from it in the last bit (x * x * x, 1 / sqrt) or at -0.0 and -inf (sqrt)."""
    if c == 2:
        return np.square(x)  # (np.power's ufunc call has no x * x fast path)
    if x.dtype.kind != "f":
        if c < 0:
            raise RuntimeError("Integers to negative integer powers are not allowed.")
        return np.power(x, c)
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
    return np.power(x, c)


def _rpow_scalar_vjp(g, i, o, r):
    # torch's pow_backward_exponent for a Python base c: grad * (result * log(c)); a zero base has
    # gradient 0 where x >= 0 (not 0 * -inf) and -inf where x < 0
    c = r[7]
    if c == 0:
        return (g * where(_leaf(i[0]._value >= 0), 0.0, shown_as(o * -math.inf, "MulBackward1", o)),)
    return (g * shown_as(o * (math.log(c) if c > 0 else math.nan), "MulBackward1", o),)


POW_SCALAR = row("pow_scalar", "PowBackward0", 1, _pow_value, "adj_pow_scalar", _pow_scalar_vjp, reads=(0,))
RPOW_SCALAR = row("rpow_scalar", "PowBackward2", 1, lambda x, c: np.power(c, x), "adj_rpow_scalar",
                  _rpow_scalar_vjp, reads=(0, "out"))
NEG = elementwise("neg", "NegBackward0", np.negative, "-g", vjp=lambda g, i, o, r: (negated(g),))
RECIPROCAL = elementwise("reciprocal", "ReciprocalBackward0", lambda x: np.true_divide(1, x), "-g * (y * y)")
EXP = elementwise("exp", "ExpBackward0", np.exp, "g * y")
LOG = elementwise("log", "LogBackward0", np.log, "g / x")


# Large float arrays take the vectorised kernels (libm's sin/cos are scalar calls); small ones
# stay with NumPy, one call deep (W1 records 2,000 sines).
def _sin(x):
    if x.size < 4096:
        return np.sin(x)
    from .jit.forward import sin_forward
    return sin_forward(x)


def _cos(x):
    if x.size < 4096:
        return np.cos(x)
    from .jit.forward import cos_forward
    return cos_forward(x)


# (their kernels compute cos and sin with the vectorised kernel where it is exact)
SIN = elementwise("sin", "SinBackward0", _sin, "g * cos(x)", kernel="adj_sin")
COS = elementwise("cos", "CosBackward0", _cos, "g * -sin(x)", kernel="adj_cos")
# A VJP that torch writes as one op (tanh_backward...) or with Scalar overloads (MulBackward1: one
# input) shows those nodes (shown_as): the same formula, with torch's nodes in the graph.
TANH = elementwise("tanh", "TanhBackward0", np.tanh, "g * (1 - y * y)",
                   vjp=lambda g, i, o, r: (shown_as(g * (1 - o * o), "TanhBackwardBackward0", g, o),))
SIGMOID = elementwise("sigmoid", "SigmoidBackward0", lambda x: _sigmoid(x), "g * ((1 - y) * y)",
                      vjp=lambda g, i, o, r: (shown_as(g * ((1 - o) * o), "SigmoidBackwardBackward0", g, o),))
RELU = row("relu", "ReluBackward0", 1, lambda x: np.maximum(x, 0), "adj_relu",
           lambda g, i, o, r: (threshold_backward(g, o),), reads=("out",))
SQRT = elementwise("sqrt", "SqrtBackward0", np.sqrt, "g / (2 * y)",
                   vjp=lambda g, i, o, r: (g / shown_as(o * 2.0, "MulBackward1", o),))
ABS = elementwise("abs", "AbsBackward0", np.abs, "g * sign(x)",
                  vjp=lambda g, i, o, r: (g * shown_as(sign(i[0]), "SgnBackward0", i[0]),))

# Rows whose VJP is products, quotients and sums of g: it commutes with negation bit for bit
# (rounding is symmetric, and no zero of their own gets the wrong sign), so the create_graph walk
# hands them a Negated gradient's t and negates what they return.
SIGN_THROUGH = frozenset({ADD, SUB, MUL, DIV, ADD_SCALAR, SUB_SCALAR, RSUB_SCALAR, POW_SCALAR} |
                         {op for op in TABLE if op.sign_through})


def _sum_vjp(g, i, o, r):
    # torch's sum_backward, grad.unsqueeze(dims).expand(sizes), divided by the count for a mean
    x = i[0]
    mean = r[0] == MEAN.code or r[0] == MEAN_DIM.code
    if not g._rg:  # the seed of a scalar loss (W4): the broadcast view itself, recorded nowhere
        gv = g._value
        gv = gv.reshape(_keep_shape(x, r)) if gv.ndim else gv  # (a 0-d gradient broadcasts as it is)
        return (_leaf(_broadcast(gv / _count(x, r) if mean else gv, x._value.shape)),)
    if not r[6] and r[0] != SUM.code and r[0] != MEAN.code:  # (a full reduction's grad expands as it is)
        for k in range(x.ndim):
            if (r[5] >> k) & 1:
                g = unsqueeze(g, k)
    g = expand(g, tuple(x.shape))
    return (shown_as(g / _count(x, r), "DivBackward1", g),) if mean else (g,)


def _count(x, r):
    """The number of elements a mean over x (its axis mask r[5]) averages."""
    n = 1
    for k, d in enumerate(x.shape):
        if (r[5] >> k) & 1:
            n *= d
    return n


SUM = row("sum", "SumBackward0", 1, None, "adj_sum", _sum_vjp)
SUM_DIM = row("sum_dim", "SumBackward1", 1, None, "adj_sum", _sum_vjp)
MEAN = row("mean", "MeanBackward0", 1, None, "adj_sum", _sum_vjp)
MEAN_DIM = row("mean_dim", "MeanBackward1", 1, None, "adj_sum", _sum_vjp)
EXPAND = row("expand", "ExpandBackward0", 1, None, "adj_expand", lambda g, i, o, r: (_sum_to(g, i[0].shape),))
MM = row("mm", "MmBackward0", 2, None, "adj_mm",
         lambda g, i, o, r: (mm(g, i[1].t()), mm(i[0].t(), g)), reads={0: (1,), 1: (0,)})
VIEW = row("view", "ViewBackward0", 1, None, "adj_identity", lambda g, i, o, r: (reshape(g, i[0].shape),))
UNSQUEEZE = row("unsqueeze", "UnsqueezeBackward0", 1, None, "adj_identity", lambda g, i, o, r: (reshape(g, i[0].shape),))
SQUEEZE = row("squeeze", "SqueezeBackward0", 1, None, "adj_identity", lambda g, i, o, r: (reshape(g, i[0].shape),))


def _permute_vjp(g, i, o, r):
    nd = i[0].ndim
    perm = [(r[5] >> (4 * k)) & 15 for k in range(nd)]
    inv = [0] * nd
    for k, p in enumerate(perm):
        inv[p] = k
    return (permute(g, inv),)


PERMUTE = row("permute", "PermuteBackward0", 1, None, "adj_permute", _permute_vjp)
TRANSPOSE = row("transpose", "TransposeBackward0", 1, None, "adj_permute", _permute_vjp)
T = row("t", "TBackward0", 1, None, "adj_permute", _permute_vjp)


def _gather_vjp(g, i, o, r):
    if r[2] < 0:  # a contiguous run of the input, from flat offset i0 (g may be Negated: TAKES_NEGATED)
        return (Run(g, r[5], i[0].shape), None)
    return (_scatter_flat(plain(g), i[1], i[0].shape), None)


def _scatter_vjp(g, i, o, r):
    if r[2] < 0:
        return (_gather_run(g, r[5], tuple(i[0].shape)), None)
    return (reshape(_gather_flat(g, i[1], tuple(i[0].shape)), i[0].shape), None)


# getitem: b is an int64 index map from each output element to its flat source index; the
# grad_fn name follows the kind of key, as torch's does. A key that selects one contiguous run of
# a C-ordered input (x[1:], x[:-1], x[i] of a matrix) records b = -1 and the run's flat offset in
# i0 instead: no map to build, and the adjoints copy a block. scatter_flat, their VJP, does the same.
SELECT = row("select", "SelectBackward0", 2, None, "adj_getitem", _gather_vjp)
SLICE = row("slice", "SliceBackward0", 2, None, "adj_getitem", _gather_vjp)
INDEX = row("index", "IndexBackward0", 2, None, "adj_getitem", _gather_vjp, reads=(1,))  # (torch saves the indices)
ALIAS = row("alias", "AliasBackward0", 2, None, "adj_getitem", _gather_vjp)
UNSQUEEZE_KEY = row("index_unsqueeze", "UnsqueezeBackward0", 2, None, "adj_getitem", _gather_vjp)
SCATTER_FLAT = row("scatter_flat", "IndexPutBackward0", 2, None, "adj_scatter_flat", _scatter_vjp)


def _add_run_vjp(g, i, o, r):
    a, b = i
    ga = g if a._value.size == o._value.size else _gather_run(g, r[6], tuple(a.shape))
    gb = _gather_run(g, r[5], tuple(b.shape))
    return (ga, gb if r[7] > 0 else negated(gb))


# a + f0 * scatter(b at flat offset i0), f0 = 1 or -1, a smaller than the output placed at flat
# offset i1: the create_graph walk's sum of x's gradient and a Run (ops.Run, add_run); shown as
# the add it stands for
ADD_RUN = row("add_run", "AddBackward0", 2, None, "adj_add_run", _add_run_vjp)
# VJPs that take a Negated gradient themselves (a Run carries its sign to where it is added)
TAKES_NEGATED = frozenset(op for op in TABLE if op.vjp is _gather_vjp)


def _setitem_vjp(g, i, o, r):
    x, v, idx = i
    return (_index_put(g, idx, zeros_like(v)), reshape(_gather_flat(g, idx, tuple(v.shape)), v.shape), None)


SETITEM = row("index_put", "CopySlices", 3, None, "adj_setitem", _setitem_vjp, reads=("const",))  # (its view function)
CAST = row("to", "ToCopyBackward0", 1, None, "adj_cast", lambda g, i, o, r: (to_dtype(g, i[0].dtype),))
CLONE = row("clone", "CloneBackward0", 1, None, "adj_identity", lambda g, i, o, r: (g,))
# A custom autograd.Function (autograd/function.py): one row per differentiable output, a, b, c up
# to three input slots (more rows for more inputs), i0 its grad_fn name id, i1 the output index.
# Its backward is Python: the engine calls it once per call, between jitted segments (no vjp here).
FUNCTION = row("function", "FunctionBackward", 3, None, "adj_function", None)


# -- the full op surface: rows --------------------------------------------------------------------
# A second float attribute rides in the bits of i1 (``_float_bits``; kernels read it as RF[e, 6]).
def _keep_shape(x, r):
    """The shape of a reduction's result with keepdim, from its axis mask r[5]."""
    return tuple(1 if (r[5] >> k) & 1 else d for k, d in enumerate(x.shape))


def _const_like(a, like):
    return _leaf(np.asarray(a, dtype=like._value.dtype))


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
    return (where(_leaf(z._value > _bits_float(r[6])), g, g * sigmoid(z)),)


def _clamp_vjp(g, i, o, r):
    xv = i[0]._value
    return (g * _const_like((xv >= r[7]) & (xv <= _bits_float(r[6])), g),)


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


def _prod_vjp(g, i, o, r):
    x = i[0]
    keep = _keep_shape(x, r)
    gk = expand(reshape(g, keep), tuple(x.shape))
    if not (x._value == 0).any():
        return (gk * expand(reshape(o, keep), tuple(x.shape)) / x,)
    # With zeros: each element's gradient is the product of the others in its group, built
    # (differentiably) one position at a time along the reduced axes moved to the end.
    axes = [k for k in range(x.ndim) if (r[5] >> k) & 1]
    kept = [k for k in range(x.ndim) if k not in axes]
    n = 1
    for k in axes:
        n *= x.shape[k]
    xr = reshape(permute(x, kept + axes), (-1, n))
    cols = []
    for j in range(n):
        onehot = np.zeros((1, n), bool)
        onehot[0, j] = True
        cols.append(prod(where(_leaf(onehot), 1.0, xr), 1))
    others = stack(cols, 1) * reshape(g, (-1, 1))
    back = reshape(others, tuple(x.shape[k] for k in kept + axes))
    inv = [0] * x.ndim
    for k, p in enumerate(kept + axes):
        inv[p] = k
    return (permute(back, inv),)


def _amax_vjp(g, i, o, r):
    x = i[0]
    keep = _keep_shape(x, r)
    hit = x._value == o._value.reshape(keep)
    share = hit / np.sum(hit, axis=tuple(k for k in range(x.ndim) if (r[5] >> k) & 1), keepdims=True)
    return (reshape(g, keep) * _const_like(share, g),)


def _norm_vjp(g, i, o, r):
    # torch's norm_backward, formula by formula: a zero norm (an all-zero group) has gradient 0
    x, p = i[0], r[7]
    keep = _keep_shape(x, r)
    gk, ok = reshape(g, keep), reshape(o, keep)
    if p == 0:
        return (zeros_like(x),)
    if p == 1:
        return (sign(x) * gk,)
    if math.isinf(p):
        hit = np.abs(x._value) == ok._value
        count = np.sum(hit, axis=tuple(k for k in range(x.ndim) if (r[5] >> k) & 1), keepdims=True)
        return (sign(x) * ((gk / _const_like(count, g)) * _const_like(hit, g)),)
    zero = _leaf(ok._value == 0)
    if p == 2:
        return (gk * masked_fill(x / ok, zero, 0.0),)
    if p < 1:
        scaled = sign(x) * masked_fill(abs(x) ** (p - 1), _leaf(x._value == 0), 0.0)
        return (scaled * gk * ok ** (1 - p),)
    scaled = sign(x) * abs(x) ** (p - 1) if p < 2 else x * abs(x) ** (p - 2)
    return (scaled * masked_fill(gk / ok ** (p - 1), zero, 0.0),)


def _cat_vjp(g, i, o, r):
    d = r[5]
    shp = tuple(o.shape)
    per = 1
    for k, s in enumerate(shp):
        if k != d:
            per *= s
    out, off = [], 0
    for x in i:
        if x is None:
            out.append(None)
            continue
        span = x.numel() // per if per else 0
        key = (slice(None),) * d + (slice(off, off + span),)
        out.append(reshape(getitem(g, key), tuple(x.shape)))
        off += span
    return tuple(out)


def _fit(grads, ins):
    """Sum each gradient back to its input's shape: binary rows broadcast in the forward."""
    ga, gb = grads
    a, b = ins
    if ga is not None and a is not None and ga._value.shape != a._value.shape:
        ga = _sum_to(ga, a._value.shape)
    if gb is not None and b is not None and gb._value.shape != b._value.shape:
        gb = _sum_to(gb, b._value.shape)
    return ga, gb


ATAN2 = binary_elementwise("atan2", "Atan2Backward0", np.arctan2, "g * b * (1 / (a * a + b * b))",
                           "g * -a * (1 / (a * a + b * b))", aliases=("arctan2",))
HYPOT = binary_elementwise("hypot", "HypotBackward0", np.hypot, "g * a / y", "g * b / y", integers=False)
RSQRT = elementwise("rsqrt", "RsqrtBackward0", lambda x: np.reciprocal(np.sqrt(x)), "-0.5 * g * (y * y * y)",
                    vjp=lambda g, i, o, r: (shown_as(g * -0.5, "MulBackward1", g) *
                                            shown_as(o * o * o, "PowBackward0", o),))  # torch's result.pow(3)
LOG1P = elementwise("log1p", "Log1PBackward0", np.log1p, "g / (x + 1)",
                    vjp=lambda g, i, o, r: (g / shown_as(i[0] + 1, "AddBackward1", i[0]),))
EXPM1 = elementwise("expm1", "Expm1Backward0", np.expm1, "g * (y + 1)",
                    vjp=lambda g, i, o, r: (g * shown_as(o + 1, "AddBackward1", o),))


def _tan_vjp(g, i, o, r):
    sq = shown_as(o * o, "PowBackward0", o)  # torch's grad * (1 + result.pow(2))
    return (g * shown_as(sq + 1, "AddBackward1", sq),)


TAN = elementwise("tan", "TanBackward0", np.tan, "g * (1 + y * y)", vjp=_tan_vjp)


def _erf_vjp(g, i, o, r):
    x = i[0]  # torch's 2 / sqrt(pi) * exp(-(x.pow(2))) * grad
    e = exp(-shown_as(x * x, "PowBackward0", x))
    return (shown_as(e * (2 / math.sqrt(math.pi)), "MulBackward1", e) * g,)


ERF = elementwise("erf", "ErfBackward0", lambda x: _scipy_special().erf(x), "1.1283791670955126 * exp(-(x * x)) * g",
                  vjp=_erf_vjp)
LEAKY_RELU = row("leaky_relu", "LeakyReluBackward0", 1, None, "adj_leaky_relu",
                 lambda g, i, o, r: (leaky_relu_backward(g, i[0], r[7]),), reads=(0,))
GELU = row("gelu", "GeluBackward0", 1, None, "adj_gelu", _gelu_vjp, reads=(0,))
SOFTPLUS = row("softplus", "SoftplusBackward0", 1, None, "adj_softplus", _softplus_vjp, reads=(0,))
CLAMP = row("clamp", "ClampBackward1", 1, None, "adj_clamp", _clamp_vjp, reads=(0,))
SIGN = row("sign", "SignBackward0", 1, np.sign, "adj_zero", lambda g, i, o, r: (zeros_like(g),))
MAXIMUM = row("maximum", "MaximumBackward0", 2, np.maximum, "adj_maximum", _maximum_vjp, reads=(0, 1))
MINIMUM = row("minimum", "MinimumBackward0", 2, np.minimum, "adj_maximum", _maximum_vjp, reads=(0, 1))
WHERE = row("where", "WhereBackward0", 3, None, "adj_where", _where_vjp, reads=(2,))
MASKED_FILL = row("masked_fill", "MaskedFillBackward0", 2, None, "adj_masked_fill",
                  lambda g, i, o, r: (g * _const_like(~i[1]._value.astype(bool), g), None), reads=(1,))
PROD = row("prod", "ProdBackward0", 1, None, "adj_prod", _prod_vjp, reads=(0, "out"))
PROD_DIM = row("prod_dim", "ProdBackward1", 1, None, "adj_prod", _prod_vjp, reads=(0, "out"))
MAX = row("max", "MaxBackward1", 1, None, "adj_amax", _amax_vjp, reads=(0, "out"))
MIN = row("min", "MinBackward1", 1, None, "adj_amax", _amax_vjp, reads=(0, "out"))
AMAX = row("amax", "AmaxBackward0", 1, None, "adj_amax", _amax_vjp, reads=(0, "out"))
AMIN = row("amin", "AminBackward0", 1, None, "adj_amax", _amax_vjp, reads=(0, "out"))
NORM = row("norm", "LinalgVectorNormBackward0", 1, None, "adj_norm", _norm_vjp, reads=(0, "out"))
CUMSUM = row("cumsum", "CumsumBackward0", 1, None, "adj_cumsum",
             lambda g, i, o, r: (flip(cumsum(flip(g, r[5]), r[5]), r[5]),))
SOFTMAX = row("softmax", "SoftmaxBackward0", 1, None, "adj_softmax",
              lambda g, i, o, r: (shown_as(o * (g - sum(g * o, r[5], keepdim=True)), "SoftmaxBackwardDataBackward0",
                                           g, o),), reads=("out",))
LOG_SOFTMAX = row("log_softmax", "LogSoftmaxBackward0", 1, None, "adj_log_softmax",
                  lambda g, i, o, r: (shown_as(g - exp(o) * sum(g, r[5], keepdim=True),
                                               "LogSoftmaxBackwardDataBackward0", g, o),), reads=("out",))
BMM = row("bmm", "BmmBackward0", 2, None, "adj_bmm",
          lambda g, i, o, r: (bmm(g, transpose(i[1], 1, 2)), bmm(transpose(i[0], 1, 2), g)),
          reads={0: (1,), 1: (0,)})
UNSAFE_VIEW = row("unsafe_view", "UnsafeViewBackward0", 1, None, "adj_identity",
                  lambda g, i, o, r: (reshape(g, i[0].shape),))
CAT = row("cat", "CatBackward0", 3, None, "adj_cat", _cat_vjp)
STACK = row("stack", "StackBackward0", 3, None, "adj_cat", _cat_vjp)
# rows whose b slot is an int64 index map (output element -> flat input index), as getitem's
REPEAT = row("repeat", "RepeatBackward0", 2, None, "adj_getitem", _gather_vjp)
FLIP = row("flip", "FlipBackward0", 2, None, "adj_getitem", _gather_vjp)
INDEX_SELECT = row("index_select", "IndexSelectBackward0", 2, None, "adj_getitem", _gather_vjp, reads=(1,))
GATHER = row("gather", "GatherBackward0", 2, None, "adj_getitem", _gather_vjp, reads=(0, 1))
MAX_DIM = row("max_dim", "MaxBackward0", 2, None, "adj_getitem", _gather_vjp, reads=(1,))  # (the indices)
MIN_DIM = row("min_dim", "MinBackward0", 2, None, "adj_getitem", _gather_vjp, reads=(1,))
SPLIT = row("split", "SplitBackward0", 2, None, "adj_getitem", _gather_vjp)
UNBIND = row("unbind", "UnbindBackward0", 2, None, "adj_getitem", _gather_vjp)
# One call's outputs are one node in torch (the hooks of all of them run when it runs, None where no
# gradient came): their rows are consecutive, each with its output index in i1 (engine_cpu.output_group).
MULTI_OUTPUT = frozenset({SPLIT.code, UNBIND.code})
SCATTER_ADD = row("scatter_add", "ScatterAddBackward0", 3, None, "adj_scatter_add",
                  lambda g, i, o, r: (g, _gather_flat(g, i[2], tuple(i[1].shape)), None), reads={1: (2,)})
COPY = row("copy", "CopyBackwards", 2, None, "adj_copy",
           lambda g, i, o, r: (zeros_like(i[0]), to_dtype(_sum_to(g, tuple(i[1].shape)), i[1].dtype)))
ZERO = row("zero", "ZeroBackward0", 1, None, "adj_zero", lambda g, i, o, r: (zeros_like(g),))
FILL = row("fill", "FillBackward2", 1, None, "adj_zero", lambda g, i, o, r: (zeros_like(g),))
INDEX_PUT = row("index_put_advanced", "IndexPutBackward0", 3, None, "adj_setitem", _setitem_vjp,
                reads=(2,))  # x[mask] = v


def _nll_vjp(g, i, o, r):
    # torch's nll_loss_backward: -g (times the weights) at each target, as an op that takes the
    # log-probabilities too (see THRESHOLD_BACKWARD)
    logp, pos, w = i
    gi = g if r[5] == 0 else expand(reshape(g * r[7], (1,)), tuple(pos.shape))
    if w is not None:
        gi = gi * w
    out = _scatter_flat(-gi, pos, tuple(logp.shape))  # (negated before the scatter: its zeros stay +0.0)
    return (_record(NLL_BACKWARD, out._value, out, logp, i0=2), None, None)


# nll_loss (and cross_entropy after log_softmax) as one row: b holds the flat position of each
# sample's target in the (N, C) log-probabilities, c the per-sample weights (none: ones); i0 = 1
# for a reduced (scalar) loss, whose sum is scaled by f0 (1 / total weight for 'mean').
NLL = row("nll_loss", "NllLossBackward0", 3, None, "adj_nll", _nll_vjp, reads=(0, 1, 2))


# Gradients that torch computes as ops of their own, which take a value of the forward (relu's
# result, leaky_relu's input, nll_loss's log-probabilities) as an input: a gradient made with
# create_graph then requires grad through it, as torch's does, though its own gradient there is
# zero. a = the gradient, b = the value; threshold_backward (i0 = 0): a where b > 0 else 0;
# leaky_relu_backward (i0 = 1): a where b > 0 else a * f0; nll_loss_backward (i0 = 2): a, the
# scattered gradient that _nll_vjp made.
def _backward_op_vjp(g, i, o, r):
    kind = r[5]
    gi = threshold_backward(g, i[1]) if kind == 0 else leaky_relu_backward(g, i[1], r[7]) if kind == 1 else g
    return (gi, zeros_like(i[1]))


THRESHOLD_BACKWARD = row("threshold_backward", "ThresholdBackwardBackward0", 2, None, "adj_backward_op",
                         _backward_op_vjp, reads=(1,))
LEAKY_RELU_BACKWARD = row("leaky_relu_backward", "LeakyReluBackwardBackward0", 2, None, "adj_backward_op",
                          _backward_op_vjp, reads=(1,))
# (torch's node saves the target and weights, which this row holds in its gradient's scatter: 'const')
NLL_BACKWARD = row("nll_loss_backward", "NllLossBackwardBackward0", 2, None, "adj_backward_op", _backward_op_vjp,
                   reads=("const",))


def _var_vjp(g, i, o, r):
    # torch's var_backward: (2 / (n - correction)) * grad * (x - x.mean(dim)), the mean recorded (its
    # gradient is part of var's second derivative); reduced over every dim without a dim argument
    # (i1 bit 1 unset) and no degrees of freedom: grad * (nan where x is its mean, else inf)
    x = i[0]
    xv = x._value
    keep = _keep_shape(x, r)
    n = xv.size // max(o._value.size, 1)
    dof = n - r[7]
    if not r[6] & 2 and dof <= 0:
        hit = xv == (np.add.reduce(xv, axis=None) / xv.size if xv.size else 0.0)
        return (g * _const_like(np.where(hit, math.nan, math.inf), g),)
    axes = tuple(k for k in range(x.ndim) if (r[5] >> k) & 1)
    scale = 2.0 / dof if dof else math.inf
    with np.errstate(invalid="ignore"):  # (inf * 0 is torch's nan too, without a warning)
        return ((reshape(g, keep) * scale) * (x - mean(x, axes, keepdim=True)),)


def _std_root_vjp(g, i, o, r):
    # torch's std_backward: (grad / (result * 2)) with 0 where the result is 0, then var's
    zero = o._value == 0
    if not zero.any():
        return (g / (o * 2),)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (masked_fill(g / (o * 2), _leaf(zero), 0.0),)


# var over the axes in mask i0 (i1: bit 0 keepdim, bit 1 a dim was given; f0 the correction), and
# std as the square root of a var row whose gradient is 0 where it is 0
VAR = row("var", "VarBackward0", 1, None, "adj_var", _var_vjp, reads=(0,))
STD_ROOT = row("std_root", "StdBackward0", 1, np.sqrt, "adj_std_root", _std_root_vjp, reads=("out",))


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


def neg(x):
    return _unary(NEG, x, np.negative(x._value))


exp = _float_unary(EXP)
log = _float_unary(LOG)
sin = _float_unary(SIN)
cos = _float_unary(COS)
tanh = _float_unary(TANH)
sigmoid = _float_unary(SIGMOID)
sqrt = _float_unary(SQRT)
reciprocal = _float_unary(RECIPROCAL)


def relu(x):
    return _unary(RELU, x, RELU.forward(x._value))


def abs(x):
    return _unary(ABS, x, np.abs(x._value))


def sign(x):
    return _unary(SIGN, x, np.sign(x._value))


# -- reductions ------------------------------------------------------------------------------
def _axes(dim, ndim):
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, int):
        dim = (dim,)
    seen = []
    for d in dim:
        a = _dim(d, ndim)
        if a in seen:
            raise RuntimeError(f"dim {a} appears multiple times in the list of dims")
        seen.append(a)
    return tuple(sorted(seen)) if ndim else ()  # a 0-d tensor takes dim 0 or -1 and has no axes


def _mask(axes):
    m = 0
    for a in axes:
        m |= 1 << a
    return m


_NO_DIM = object()  # a required dim, which NumPy's axis= may give instead


def _axis(name, dim, axis, default=None):
    """dim, or NumPy's axis= that torch's argument parser takes in its place on every native function."""
    if axis is None:
        if dim is _NO_DIM:
            raise TypeError(f'{name}() missing 1 required positional arguments: "dim"')
        return dim
    if dim is not default and dim is not _NO_DIM:
        raise TypeError(f"{name}() got an unexpected keyword argument 'axis'")
    return axis


def _required(name, **args):
    """torch's error for required arguments left out (they default to _NO_DIM so that axis= can stand for dim)."""
    missing = [k for k, v in args.items() if v is _NO_DIM]
    if missing:
        raise TypeError(f"{name}() missing {len(missing)} required positional arguments: "
                        + ", ".join(f'"{k}"' for k in missing))


def sum(x, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:  # NumPy's names (torch takes them too)
        dim, keepdim = _axis("sum", dim, axis), keepdim if keepdims is None else keepdims
    if dtype is not None:
        x = to_dtype(x, dtypes.as_dtype(dtype))
    xv = x._value
    if dim is None and xv.dtype.kind == "f":  # a scalar loss: every axis, no checks
        return _unary(SUM, x, np.add.reduce(xv, axis=None, keepdims=keepdim), (1 << xv.ndim) - 1, int(keepdim), 1.0)
    axes = _axes(dim, xv.ndim)
    # np.add.reduce is what np.sum runs, without its 2.5 us of argument handling (bool would stay bool)
    value = np.add.reduce(xv, axis=axes, keepdims=keepdim) if xv.dtype.kind == "f" else \
        np.sum(xv, axis=axes, keepdims=keepdim)
    if xv.dtype.kind in "bi":
        value = value.astype(np.int64)
    return _unary(SUM if dim is None else SUM_DIM, x, value, i0=_mask(axes), i1=int(keepdim), f0=1.0)


def mean(x, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("mean", dim, axis), keepdim if keepdims is None else keepdims
    if dtype is not None:
        x = to_dtype(x, dtypes.as_dtype(dtype))
    xv = x._value
    if xv.dtype.kind != "f":
        raise RuntimeError("mean(): could not infer output dtype. Input dtype must be either a floating "
                           f"point or complex dtype. Got: {_torch_type_name(xv.dtype)}")
    axes = _axes(dim, xv.ndim)
    count = 1
    for a in axes:
        count *= xv.shape[a]
    value = np.add.reduce(xv, axis=axes, keepdims=keepdim)  # np.mean's sum and division, bit for bit
    value = value / count if count else np.full_like(value, math.nan)  # (torch's nan for an empty mean, no warning)
    return _unary(MEAN if dim is None else MEAN_DIM, x, value, i0=_mask(axes), i1=int(keepdim),
                  f0=1.0 / count if count else math.nan)


def _torch_type_name(npd):
    return {"int64": "Long", "int32": "Int", "bool": "Bool", "float32": "Float", "float64": "Double"}[np.dtype(npd).name]


# -- shape ---------------------------------------------------------------------------------
def _shape_arg(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(s) for s in shape)


def _infer_shape(shape, size):
    shape = list(shape)
    if shape.count(-1) > 1:
        raise RuntimeError("only one dimension can be inferred")
    known = 1
    for s in shape:
        if s != -1:
            if s < 0:
                raise RuntimeError(f"invalid shape dimension {s}")
            known *= s
    if -1 in shape:
        if known == 0 or size % known:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {size}")
        shape[shape.index(-1)] = size // known
    elif known != size:
        raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {size}")
    return tuple(shape)


def view(x, *shape):
    xv = x._value
    shape = _infer_shape(_shape_arg(shape), xv.size)
    value = xv.view()
    try:
        value.shape = shape  # refuses where a copy would be needed, as torch's view does
    except AttributeError:
        raise RuntimeError("view size is not compatible with input tensor's size and stride (at least one "
                           "dimension spans across two contiguous subspaces). Use .reshape(...) instead.") from None
    return _view(VIEW, x, value)


def reshape(x, *shape):
    xv = x._value
    shape = _infer_shape(_shape_arg(shape), xv.size)
    value = xv.reshape(shape)
    if np.shares_memory(value, xv):
        return _view(VIEW, x, value)
    return _unary(VIEW, x, value)


def unsqueeze(x, dim=_NO_DIM, *, axis=None):
    dim = _axis("unsqueeze", dim, axis)
    xv = x._value
    d = _dim(dim, xv.ndim + 1)
    return _view(UNSQUEEZE, x, np.expand_dims(xv, d))


def squeeze(x, dim=None, *, axis=None):
    if axis is not None:
        dim = _axis("squeeze", dim, axis)
    xv = x._value
    if dim is None:
        axes = tuple(i for i, s in enumerate(xv.shape) if s == 1)
    else:
        axes = tuple(a for a in _axes(dim, xv.ndim) if xv.shape[a] == 1)
    out = _view(SQUEEZE, x, np.squeeze(xv, axes))
    # torch's node depends on the form of the call: squeeze(), squeeze(dim), squeeze(dims)
    return out if dim is None else shown_as(out, "SqueezeBackward1" if isinstance(dim, int) else "SqueezeBackward2", x)


def _pack_perm(perm):
    code = 0
    for k, p in enumerate(perm):
        code |= p << (4 * k)
    return code


def permute(x, *dims):
    xv = x._value
    dims = _shape_arg(dims)
    if len(dims) != xv.ndim:
        raise RuntimeError(f"permute(sparse_coo): number of dimensions in the tensor input does not match the "
                           f"length of the desired ordering of dimensions i.e. input.dim() = {xv.ndim} is not "
                           f"equal to len(dims) = {len(dims)}")
    perm = tuple(_dim(d, xv.ndim) for d in dims)
    if len(set(perm)) != len(perm):
        raise RuntimeError("permute(): duplicate dims are not allowed.")
    return _view(PERMUTE, x, np.transpose(xv, perm), i0=_pack_perm(perm))


def transpose(x, dim0, dim1):
    xv = x._value
    nd = xv.ndim
    perm = list(range(nd))
    if nd:
        d0, d1 = _dim(dim0, nd), _dim(dim1, nd)
        perm[d0], perm[d1] = perm[d1], perm[d0]
    return _view(TRANSPOSE, x, np.transpose(xv, perm), i0=_pack_perm(perm))


def t(x):
    nd = x._value.ndim
    if nd > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {nd}D")
    perm = list(range(nd))[::-1]
    return _view(T, x, np.transpose(x._value, perm), i0=_pack_perm(perm))


def expand(x, *shape, _materialize=False):
    """Broadcast x to ``shape`` (torch's expand: -1 keeps a size). ``_materialize`` stores a
    contiguous copy, for binary ops whose adjoint reads the broadcast operand."""
    xv = x._value
    shape = _shape_arg(shape)
    if len(shape) < xv.ndim:
        raise RuntimeError(f"expand({_torch_type_name(xv.dtype)}Tensor{{{list(xv.shape)}}}, size=[{len(shape)}]): "
                           "the number of sizes provided must be greater or equal to the number of dimensions in the tensor")
    lead = len(shape) - xv.ndim
    full = []
    for i, s in enumerate(shape):
        if i >= lead:
            d = xv.shape[i - lead]
            if s == -1:
                s = d
            elif d != 1 and d != s:
                raise RuntimeError(f"The expanded size of the tensor ({s}) must match the existing size ({d}) at "
                                   f"non-singleton dimension {i}.  Target sizes: {list(shape)}.  Tensor sizes: {list(xv.shape)}")
        full.append(s)
    full = tuple(full)
    if full == xv.shape:
        return x
    value = np.broadcast_to(xv, full)
    if _materialize:
        value = np.ascontiguousarray(value)
        if x._rg and _state.grad_enabled:
            return _unary(EXPAND, x, value, i1=1)  # i1=1: implicit, so grad_fn.next_functions looks through it
        return _leaf(value)
    return _view(EXPAND, x, value)


def expand_as(x, other):
    return expand(x, tuple(other.shape))


# -- linear algebra ----------------------------------------------------------------------------
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
        from . import blas
        if blas.NUMPY_BLAS:
            _MM_FORWARD.extend((np.matmul, np.matmul))
        else:
            from .jit import forward
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


# -- casting, copying ----------------------------------------------------------------------------
def to_dtype(x, dt):
    dt = dtypes.as_dtype(dt)
    if x._value.dtype == dt.np:
        return x
    value = x._value.astype(dt.np)
    if x._rg and dt.is_floating_point:
        return _unary(CAST, x, value)
    t = _leaf(value)
    if _records.PROGRAMS:
        note_op(CAST.code, x, None, t, 0, 0, 0.0)
    return t


def clone(x):
    return _unary(CLONE, x, x._value.copy())


def contiguous(x):
    if x._value.flags.c_contiguous:
        return x
    return clone(x)


def zeros_like(x, dtype=None):
    dt = dtypes.as_dtype(dtype).np if dtype is not None else x._value.dtype
    return _leaf(np.zeros(x._value.shape, dt))


# -- indexing -------------------------------------------------------------------------------------
def _np_key(key):
    """A tapegrad indexing key as a NumPy one (Tensors become arrays), checked for bounds."""
    if isinstance(key, tuple):
        return tuple(_np_key(k) for k in key)
    if isinstance(key, Tensor):
        v = key._value
        if v.dtype.kind not in "bi":
            raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
        return v
    if isinstance(key, list):
        return np.asarray(key)
    return key


def _key_kind(key):
    parts = key if isinstance(key, tuple) else (key,)
    if any(isinstance(k, (ndarray, list)) for k in parts):
        return INDEX
    if all(isinstance(k, (int, np.integer)) for k in parts):
        return SELECT
    if any(isinstance(k, slice) for k in parts):
        return SLICE
    if any(k is None for k in parts):
        return UNSQUEEZE_KEY
    return ALIAS


def _index(xv, key):
    try:
        return xv[key]
    except IndexError as exc:
        msg = str(exc)
        if "out of bounds" in msg:  # NumPy's words for torch's: "... for dimension 0 with size 3"
            raise IndexError(msg.replace("for axis", "for dimension")) from None
        if "boolean index did not match" in msg:
            raise IndexError(_mask_mismatch(xv, key)) from None
        raise IndexError(msg) from None


def _mask_mismatch(xv, key):
    """torch's message for a boolean mask whose shape does not match the dims it indexes."""
    parts = key if isinstance(key, tuple) else (key,)
    dim = 0
    for k in parts:
        if isinstance(k, ndarray) and k.dtype == np.bool_:
            for i, n in enumerate(k.shape):
                if dim + i >= xv.ndim or xv.shape[dim + i] != n:
                    return (f"The shape of the mask {list(k.shape)} at index {i} does not match the shape of the "
                            f"indexed tensor {list(xv.shape)} at index {dim + i}")
            dim += k.ndim
        elif k is not None:
            dim += 1
    return "boolean index did not match the indexed tensor"


def getitem(x, key):
    xv = x._value
    if key.__class__ is slice and x._rg and _state.grad_enabled and xv.ndim and xv.flags.c_contiguous:
        # x[a:b] of a C-ordered tensor (W4's x[1:] and x[:-1]): a run from row ``start``, found
        # without the general path's key checks
        start, _, step = key.indices(xv.shape[0])
        value = xv[key]
        if step == 1 and value.size:
            return _view(SLICE, x, value, i0=start * (xv.size // xv.shape[0]))
    k = _np_key(key)
    value = _index(xv, k)
    if value.__class__ is not ndarray:  # an int for every dim: NumPy's scalar copy, where torch gives a 0-d view
        value = xv[k + (Ellipsis,)] if isinstance(k, tuple) else xv[k, ...]
    kind = _key_kind(k)
    if x._rg and _state.grad_enabled:
        if (kind is not INDEX and value.size and value.flags.c_contiguous and xv.flags.c_contiguous
                and np.shares_memory(value, xv)):
            return _view(kind, x, value, i0=(value.ctypes.data - xv.ctypes.data) // xv.itemsize)
        idx = np.ascontiguousarray(np.arange(xv.size, dtype=np.int64).reshape(xv.shape)[k]).reshape(-1)
        if kind is INDEX or not np.shares_memory(value, xv):
            t = _unary_with_index(kind, x, value, idx)
            return t
        return _view(kind, x, value, b=idx)
    t = _leaf(value)
    if kind is not INDEX and np.shares_memory(value, xv):
        t._vc = counter(x)
        t._extra().base = x  # an in-place change to the view reaches x (``_update_base``)
    return t


def _unary_with_index(op, x, value, idx):
    tape = current_tape()
    vc = [0]
    a = tape.slot_of(x)
    b = tape.new_slot(idx, LEAF, [0])
    return _result(value, tape, tape.push(op.code, a, b, -1, 0, 0, 0.0, _contiguous(value), vc), vc)


def _gather_flat(g, idx, shape):
    """g.flatten()[idx] as a tensor of ``shape`` (differentiable in g)."""
    value = np.ascontiguousarray(g._value.reshape(-1)[idx._value]).reshape(shape)
    return _unary_with_index(INDEX, g, value, idx._value) if g._rg and _state.grad_enabled else _leaf(value)


def _scatter_flat(g, idx, shape):
    """zeros(shape) with g added at the flat positions idx (differentiable in g)."""
    n = 1
    for s in shape:
        n *= s
    out = np.zeros(n, g._value.dtype)
    np.add.at(out, idx._value, g._value.reshape(-1))
    out = out.reshape(tuple(shape))
    return _unary_with_index(SCATTER_FLAT, g, out, idx._value) if g._rg and _state.grad_enabled else _leaf(out)


def _gather_run(g, off, shape):
    """g.flatten()[off:off + size] as a tensor of ``shape`` (differentiable in g; a copy, as _gather_flat's)."""
    n = 1
    for s in shape:
        n *= s
    value = g._value.reshape(-1)[off:off + n].reshape(shape).copy()
    if g._rg and _state.grad_enabled:
        tape = current_tape()
        return _result(value, tape, tape.push(INDEX.code, tape.slot_of(g), -1, -1, off, 0, 0.0, value, None), None)
    return _leaf(value)


def _scatter_run(g, off, shape):
    """zeros(shape) with g written at flat positions off, off + 1, ... (differentiable in g)."""
    gv = g._value
    out = np.empty(shape, gv.dtype)
    flat, end = out.reshape(-1), off + gv.size
    flat[:off] = 0  # (zeroing only around the run: np.zeros and a copy would write it twice)
    flat[end:] = 0
    flat[off:end] = gv.reshape(-1)
    if g._rg and _state.grad_enabled:
        tape = current_tape()
        return _result(out, tape, tape.push(SCATTER_FLAT.code, tape.slot_of(g), -1, -1, off, 0, 0.0, out, None), None)
    return _leaf(out)


def add_run(base, run):
    """base + the Run ``run`` (a row add_run): base's values, plus or minus run.g's at the run.
    base may be an unsigned Run itself (from flat offset i1): x's gradients from two slices (W4's
    x[1:] and x[:-1]) then cost one row. Each element is torch's sum of the scatters bit for bit:
    base alone gives base + 0.0 (-0.0 + 0.0 is 0.0), the run alone 0.0 + t or 0.0 - t, both
    base + t or base - t (for base + (-t))."""
    g, sign = (run.g.t, -1.0) if run.g.__class__ is Negated else (run.g, 1.0)
    a, i1 = (base.g, base.off) if base.__class__ is Run else (base, 0)
    gv, av = g._value.reshape(-1), a._value.reshape(-1)  # (C order: a copy of a non-contiguous base)
    off, end, hi = run.off, run.off + gv.size, i1 + av.size
    lo, up = max(i1, off), min(hi, end)  # where both are
    # Each region in one pass, a region of one element (each end of W4's runs) as NumPy scalars: a
    # ufunc call costs about 1 us, and zeros then a copy then += wrote the base twice (9 us on W4).
    n = av.size if a is base else math.prod(run.shape)
    gap = min(i1, off) > 0 or max(hi, end) < n or lo > up  # some place neither covers stays 0.0
    out = (np.zeros if gap else np.empty)(run.shape, av.dtype)
    dst = out.reshape(-1)
    for l, u in ((i1, min(hi, off)), (max(i1, end), hi)):  # base alone, + 0.0: -0.0 becomes 0.0
        if u - l == 1:
            dst[l] = av[l - i1] + 0.0
        elif u > l:
            np.add(av[l - i1:u - i1], 0.0, out=dst[l:u])
    add = np.add if sign > 0 else np.subtract
    if up > lo:
        add(av[lo - i1:up - i1], gv[lo - off:up - off], out=dst[lo:up])
    for l, u in ((off, min(end, i1)), (max(off, hi), end)):  # the run alone: 0.0 + g or 0.0 - g
        if u - l == 1:
            dst[l] = 0.0 + gv[l - off] if sign > 0 else 0.0 - gv[l - off]
        elif u > l:
            add(0.0, gv[l - off:u - off], out=dst[l:u])
    if (a._rg or g._rg) and _state.grad_enabled:
        tape = current_tape()
        sa, sb = tape.slot_of(a), tape.slot_of(g)
        return _result(out, tape, tape.push(ADD_RUN.code, sa, sb, -1, off, i1, sign, out, None), None)
    return _leaf(out)


def _index_put(g, idx, v):
    """A copy of g with the flat positions idx replaced by v (differentiable in g and v)."""
    value = g._value.copy()
    value.reshape(-1)[idx._value] = v._value.reshape(-1)
    if (g._rg or v._rg) and _state.grad_enabled:
        tape = current_tape()
        vc = [0]
        a, b = tape.slot_of(g), tape.slot_of(v)
        c = tape.new_slot(idx._value, LEAF, [0])
        return _result(value, tape, tape.push(SETITEM.code, a, b, c, 0, 0, 0.0, value, vc), vc)
    return _leaf(value)


def setitem(x, key, v):
    _check_inplace(x)
    xv = x._value
    k = _np_key(key)
    sel_shape = np.shape(_index(xv, k))
    if not isinstance(v, Tensor):
        v = _leaf(np.asarray(v, dtype=xv.dtype))
    if v._value.dtype != xv.dtype:
        v = to_dtype(v, dtypes.from_numpy_dtype(xv.dtype))
    if v._value.shape != sel_shape:
        broadcast_shapes(v._value.shape, sel_shape)
        v = expand(v, sel_shape, _materialize=True)
    advanced = _key_kind(k) is INDEX
    record = (x._rg or v._rg) and _state.grad_enabled
    if not xv.flags.writeable and _overlaps(xv):  # an expand, or a view of one, whose elements repeat
        if advanced:
            warnings.warn("Use of index_put_ on expanded tensors is deprecated. Please clone() the tensor before "
                          "performing this operation. This also applies to advanced indexing e.g. "
                          "tensor[indices] = tensor", UserWarning, stacklevel=2)
        else:
            _write_target(_basic_view(xv, k))  # (torch's error where the places written repeat)
            if record:
                return _setitem_shared(x, k, v)
    if record:
        tape = current_tape()
        a = tape.slot_of(x)
        b = tape.slot_of(v)
        idx = np.ascontiguousarray(np.arange(xv.size, dtype=np.int64).reshape(xv.shape)[k]).reshape(-1)
        c = tape.new_slot(idx, LEAF, [0])
    _write_target(xv, True)[k] = v._value
    x._bump_version()
    if record:
        x._tape = tape
        op = INDEX_PUT if advanced else SETITEM  # torch: index_put_ for tensor keys
        x._slot = tape.push(op.code, a, b, c, 0, 0, 0.0, _contiguous(xv), x._vc)
        x._rg = True
    _update_base(x)


def _basic_view(xv, k):
    """xv[k] for a basic key, as a view even where it is one element (NumPy gives a scalar then)."""
    parts = k if isinstance(k, tuple) else (k,)
    return _index(xv, parts if any(p is Ellipsis for p in parts) else parts + (Ellipsis,))


def _setitem_shared(x, k, v):
    """x[k] = v, recorded, for an x whose elements share memory (an expand): writing one place
    changes all that alias it, so, as torch does, the write is recorded on x's base at the places
    written, and x is read anew from the new base."""
    root = _root(x)
    if root is x:
        raise RuntimeError(OVERLAP_MSG)
    xv, rv = x._value, root._value
    dest = _basic_view(xv, k)
    tape = current_tape()
    a, b = tape.slot_of(root), tape.slot_of(v)
    c = tape.new_slot(_view_positions(rv, dest), LEAF, None)
    _write_target(dest)[...] = v._value
    x._bump_version()  # (x shares its base's counter)
    vc = counter(root)
    root._tape, root._rg = tape, True
    root._slot = tape.push(SETITEM.code, a, b, c, 0, 0, 0.0, _contiguous(rv), vc)
    d = tape.new_slot(_view_positions(rv, xv), LEAF, None)
    x._tape, x._rg = tape, True
    x._slot = tape.push(ALIAS.code, root._slot, d, -1, 0, 0, 0.0, _contiguous(xv), vc)


# -- the full op surface: front-end functions -----------------------------------------------------
def _float_bits(f):
    """A float stored in an integer attribute (the kernels read it back through RF)."""
    return _F2I.unpack(_F2I_PACK.pack(float(f)))[0]


def _bits_float(i):
    return _F2I_PACK.unpack(_F2I.pack(int(i)))[0]


_F2I, _F2I_PACK = struct.Struct("<q"), struct.Struct("<d")


def _scipy_special():
    import scipy.special  # imported on first use: `import tapegrad` stays light
    return scipy.special


def _record(op, value, a, b=None, c=None, i0=0, i1=0, f0=0.0):
    """Record ``op`` over up to three operands: Tensors, or arrays stored as constant slots (masks,
    index maps; an (array, tensor) pair for an array made from a tensor, a condition broadcast:
    version-checked as that tensor, as torch checks the tensor it saved). Results that need no
    grad are leaves."""
    if value.__class__ is not ndarray:
        value = np.asarray(value)
    elif not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)
    if not (_state.grad_enabled and (_tracked(a) or _tracked(b) or _tracked(c))):
        t = _leaf(value)
        if _records.PROGRAMS:
            _note_record(op, a, b, c, t, i0, i1, f0)
        return t
    tape = current_tape()
    slots = [-1 if v is None else tape.slot_of(v) if v.__class__ is Tensor else
             tape.new_slot(_contiguous(v[0]), LEAF, counter(v[1])) if v.__class__ is tuple else
             tape.new_slot(_contiguous(v), LEAF, None) for v in (a, b, c)]
    return _result(value, tape, tape.push(op.code, slots[0], slots[1], slots[2], i0, i1, f0, value, None), None)


def _tracked(v):
    return v.__class__ is Tensor and v._rg


def _note_record(op, a, b, c, t, i0, i1, f0):
    p = recording_program()
    if p is not None:
        if c is not None:
            p.fail(f"row {op.name!r} with three operands does not replay untracked yet")
        p.note(op.code, a, b, t, i0, i1, f0)


def _noted_python(fn, operands, t):
    """t = fn(*operands) by NumPy, with no row (a comparison): a compiled program replays the call."""
    if _records.PROGRAMS:
        p = recording_program()
        if p is not None:
            p.note_python(fn, operands, t)
    return t


def fresh_grad(g):
    """The .grad a create_graph backward gives a leaf that had none: a copy of g, made as torch's
    AccumulateGrad makes it, empty(...).copy_(g), so it shows CopyBackwards(None, g's node)."""
    value = np.array(g._value, order="C")
    return _record(COPY, value, np.empty_like(value), g)


def _with_map(op, x, value, positions):
    """A result that picks elements of x: ``positions`` (x's flat indices in the result's
    layout) become the row's index map."""
    if x._rg and _state.grad_enabled:
        return _unary_with_index(op, x, value, np.ascontiguousarray(positions, dtype=np.int64).reshape(-1))
    return _leaf(_contiguous(value))  # (np.ascontiguousarray would make a 0-d result 1-d)


def _positions(x):
    return np.arange(x._value.size, dtype=np.int64).reshape(x._value.shape)


def _scalar_like(v, like):
    """A Python scalar or array as a constant tensor in ``like``'s dtype (a Tensor stays as is)."""
    if isinstance(v, Tensor):
        return v
    return _leaf(np.asarray(v, dtype=like._value.dtype))


def _float_input(x):
    return x if x._value.dtype.kind == "f" else to_dtype(x, dtypes.get_default_dtype())


rsqrt = _float_unary(RSQRT)
log1p = _float_unary(LOG1P)
expm1 = _float_unary(EXPM1)
tan = _float_unary(TAN)
erf = _float_unary(ERF)


def square(x):
    return pow(x, 2)


def leaky_relu(x, negative_slope=0.01, inplace=False):
    xv = x._value
    value = np.where(xv > 0, xv, xv * negative_slope).astype(xv.dtype, copy=False)
    out = _unary(LEAKY_RELU, x, value, f0=float(negative_slope))
    return _inplace(x, out) if inplace else out


def threshold_backward(g, r):
    """relu's gradient g at its result r, as torch's op: g where r > 0, else 0 (a NaN r passes g)."""
    gv = g._value
    with np.errstate(invalid="ignore"):
        value = np.where(r._value <= 0, gv.dtype.type(0), gv)
    return _record(THRESHOLD_BACKWARD, value, g, r)


def leaky_relu_backward(g, x, slope):
    """leaky_relu's gradient g at its input x, as torch's op: g where x > 0, else g * slope."""
    gv = g._value
    value = np.where(x._value > 0, gv, gv * gv.dtype.type(slope))
    return _record(LEAKY_RELU_BACKWARD, value, g, x, i0=1, f0=float(slope))


def gelu(x, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    x = _float_input(x)
    xv = x._value
    if approximate == "none":
        value = 0.5 * xv * (1 + _scipy_special().erf(xv * (1 / math.sqrt(2))))
    else:
        value = 0.5 * xv * (1 + np.tanh(math.sqrt(2 / math.pi) * (xv + 0.044715 * xv * xv * xv)))
    return _unary(GELU, x, value.astype(xv.dtype, copy=False), i0=int(approximate == "tanh"))


def softplus(x, beta=1.0, threshold=20.0):
    x = _float_input(x)
    xv = x._value
    z = xv * beta
    value = np.where(z > threshold, xv, np.logaddexp(0, z) / beta).astype(xv.dtype, copy=False)
    return _unary(SOFTPLUS, x, value, i1=_float_bits(threshold), f0=float(beta))


def clamp(x, min=None, max=None):
    if min is None and max is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    if isinstance(min, Tensor) or isinstance(max, Tensor):  # tensor bounds: elementwise max then min
        out = x if min is None else maximum(x, _scalar_like(min, x))
        return out if max is None else minimum(out, _scalar_like(max, x))
    if x._value.dtype.kind != "f" and any(isinstance(b, (float, np.floating)) for b in (min, max)):
        x = to_dtype(x, dtypes.get_default_dtype())
    xv = x._value
    lo = -math.inf if min is None else min
    hi = math.inf if max is None else max
    value = np.minimum(np.maximum(xv, lo), hi).astype(xv.dtype, copy=False)
    return _unary(CLAMP, x, value, i1=_float_bits(hi), f0=float(lo))


def clamp_min(x, min):
    return clamp(x, min=min)


def clamp_max(x, max):
    return clamp(x, max=max)


def _same_dtype(*ts):
    """Cast tensors to their promoted dtype (recorded when tracked), as torch's binary ops do."""
    if all(t._value.dtype == ts[0]._value.dtype for t in ts):
        return ts
    rt = _promote(*ts)
    return tuple(to_dtype(t, rt) for t in ts)


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
        x, y = _leaf(np.asarray(x, dt)), _leaf(np.asarray(y, dt))
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
    return _leaf(np.asarray(v, dtype=dt))


def nonzero(x, as_tuple=False):
    nz = np.nonzero(x._value)
    if as_tuple:
        return tuple(_leaf(np.ascontiguousarray(a, dtype=np.int64)) for a in nz)
    return _leaf(np.ascontiguousarray(np.stack(nz, 1), dtype=np.int64))


# -- comparisons and tests: results that never require grad ----------------------------------------
def _compare(fn):
    def f(x, y):
        if y is None:
            return False
        yv = y._value if isinstance(y, Tensor) else np.asarray(y)
        xv = x._value if isinstance(x, Tensor) else np.asarray(x)
        broadcast_shapes(xv.shape, yv.shape)
        return _noted_python(fn, (x, y), _leaf(np.asarray(fn(xv, yv))))
    f.__name__ = fn.__name__
    return f


lt, le, gt, ge, eq, ne = (_compare(np.less), _compare(np.less_equal), _compare(np.greater),
                          _compare(np.greater_equal), _compare(np.equal), _compare(np.not_equal))
greater, less, greater_equal, less_equal, not_equal = gt, lt, ge, le, ne


def isnan(x):
    return _leaf(np.isnan(x._value))


def isfinite(x):
    return _leaf(np.isfinite(x._value))


def isinf(x):
    return _leaf(np.isinf(x._value))


def logical_not(x):
    return _leaf(np.logical_not(x._value))


def _bitwise(fn, name):
    def f(x, y):
        yv = y._value if isinstance(y, Tensor) else y
        if x._value.dtype.kind not in "biu":
            raise RuntimeError(f"\"{name}_cpu\" not implemented for '{_torch_type_name(x._value.dtype)}'")
        return _leaf(np.asarray(fn(x._value, yv)))
    return f


bitwise_and = _bitwise(np.bitwise_and, "bitwise_and")
bitwise_or = _bitwise(np.bitwise_or, "bitwise_or")
bitwise_xor = _bitwise(np.bitwise_xor, "bitwise_xor")


def _invert(x):
    if x._value.dtype.kind not in "biu":
        raise RuntimeError(f"\"bitwise_not_cpu\" not implemented for '{_torch_type_name(x._value.dtype)}'")
    return _leaf(np.invert(x._value))


def argmax(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("argmax", dim, axis), keepdim if keepdims is None else keepdims
    return _arg(np.argmax, "argmax", x, dim, keepdim)


def argmin(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("argmin", dim, axis), keepdim if keepdims is None else keepdims
    return _arg(np.argmin, "argmin", x, dim, keepdim)


def _arg(fn, name, x, dim, keepdim):
    xv = x._value
    if dim is None:
        if xv.size == 0:
            raise RuntimeError(f"{name}(): Expected reduction dim to be specified for input.numel() == 0.")
        i = np.asarray(fn(xv.reshape(-1)), dtype=np.int64)
        return _leaf(i.reshape((1,) * xv.ndim) if keepdim else i)
    d = _dim(dim, xv.ndim)
    if xv.ndim == 0:
        return _leaf(np.asarray(0, dtype=np.int64))
    if xv.shape[d] == 0:
        raise IndexError(f"{name}(): Expected reduction dim {d} to have non-zero size.")
    return _leaf(np.asarray(fn(xv, axis=d, keepdims=keepdim), dtype=np.int64))


def all_(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("all", dim, axis), keepdim if keepdims is None else keepdims
    return _leaf(np.asarray(np.all(x._value, axis=None if dim is None else _axes(dim, x._value.ndim),
                                   keepdims=keepdim)))


def any_(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("any", dim, axis), keepdim if keepdims is None else keepdims
    return _leaf(np.asarray(np.any(x._value, axis=None if dim is None else _axes(dim, x._value.ndim),
                                   keepdims=keepdim)))


# -- reductions ----------------------------------------------------------------------------------
def _full_reduction_error(name, x):
    if x._value.size == 0:
        raise RuntimeError(f"{name}(): Expected reduction dim to be specified for input.numel() == 0. "
                           "Specify the reduction dim with the 'dim' argument.")


def _reduce_axes(dim, xv):
    """Axes and mask for dim = None / () (all) or an int or a tuple of ints."""
    axes = _axes(None if dim is None or dim == () or dim == [] else dim, xv.ndim)
    return axes, _mask(axes)


def prod(x, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("prod", dim, axis), keepdim if keepdims is None else keepdims
    if dtype is not None:
        x = to_dtype(x, dtype)
    xv = x._value
    if dim is None:
        value = np.prod(xv)
        op, axes = PROD, tuple(range(xv.ndim))
    else:
        axes = (_dim(dim, xv.ndim),) if xv.ndim else ()
        value = np.prod(xv, axis=axes, keepdims=keepdim)
        op = PROD_DIM
    if xv.dtype.kind in "bi":
        value = np.asarray(value).astype(np.int64)
    return _unary(op, x, value, i0=_mask(axes), i1=int(keepdim))


class _ValuesIndices(tuple):
    """torch.return_types.max and friends: a (values, indices) pair with names."""
    __slots__ = ()
    _name = "max"

    def __new__(cls, values, indices):
        return tuple.__new__(cls, (values, indices))

    values = property(lambda self: self[0])
    indices = property(lambda self: self[1])

    def __repr__(self):
        return f"tapegrad.return_types.{self._name}(\nvalues={self[0]!r},\nindices={self[1]!r})"


def _named(name):
    return type(name, (_ValuesIndices,), {"__slots__": (), "_name": name})


_MAX_RT, _MIN_RT = _named("max"), _named("min")


def max_(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("max", dim, axis), keepdim if keepdims is None else keepdims
    if isinstance(dim, Tensor):
        return maximum(x, dim)
    return _extreme(x, dim, keepdim, np.max, np.argmax, MAX, MAX_DIM, _MAX_RT, "max")


def min_(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("min", dim, axis), keepdim if keepdims is None else keepdims
    if isinstance(dim, Tensor):
        return minimum(x, dim)
    return _extreme(x, dim, keepdim, np.min, np.argmin, MIN, MIN_DIM, _MIN_RT, "min")


def _extreme(x, dim, keepdim, fn, argfn, op_all, op_dim, rt, name):
    xv = x._value
    if dim is None:
        _full_reduction_error(name, x)
        return _unary(op_all, x, np.asarray(fn(xv)), i0=_mask(range(xv.ndim)))
    d = _dim(dim, xv.ndim)
    x1 = xv.reshape(1) if xv.ndim == 0 else xv
    if x1.shape[d] == 0:
        raise IndexError(f"{name}(): Expected reduction dim {d} to have non-zero size.")
    idx = argfn(x1, axis=d, keepdims=True)
    values = np.take_along_axis(x1, idx, d)
    positions = np.take_along_axis(_positions(x).reshape(x1.shape), idx, d)
    if not keepdim or xv.ndim == 0:
        out_shape = xv.shape[:d] + xv.shape[d + 1:] if xv.ndim else ()
        values, idx, positions = values.reshape(out_shape), idx.reshape(out_shape), positions.reshape(out_shape)
    return rt(_with_map(op_dim, x, values, positions), _leaf(_contiguous(idx.astype(np.int64, copy=False))))


def amax(x, dim=(), keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("amax", dim, axis, ()), keepdim if keepdims is None else keepdims
    return _amax(x, dim, keepdim, np.max, AMAX, "amax")


def amin(x, dim=(), keepdim=False, *, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("amin", dim, axis, ()), keepdim if keepdims is None else keepdims
    return _amax(x, dim, keepdim, np.min, AMIN, "amin")


def _amax(x, dim, keepdim, fn, op, name):
    xv = x._value
    axes, mask = _reduce_axes(dim, xv)
    if xv.size == 0 and len(axes) == xv.ndim:
        _full_reduction_error(name, x)
    for a in axes:
        if xv.shape[a] == 0:
            raise IndexError(f"{name}(): Expected reduction dim {a} to have non-zero size.")
    return _unary(op, x, fn(xv, axis=axes, keepdims=keepdim), i0=mask, i1=int(keepdim))


def norm(x, p="fro", dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        x = to_dtype(x, dtype)
    xv = x._value
    if xv.dtype.kind != "f":
        raise RuntimeError(f"linalg.vector_norm: Expected a floating point or complex tensor as input. "
                           f"Got {_torch_type_name(xv.dtype)}")
    if p == "fro" or p is None:
        p = 2.0
    elif isinstance(p, str):
        raise NotImplementedError(f"norm with p={p!r} is not supported; use p='fro' or a number")
    p = float(p)
    axes, mask = _reduce_axes(dim, xv)
    a = np.abs(xv)
    with np.errstate(divide="ignore", over="ignore"):
        if p == math.inf:
            value = np.max(a, axis=axes, keepdims=keepdim) if xv.size else np.zeros(())
        elif p == -math.inf:
            value = np.min(a, axis=axes, keepdims=keepdim)
        elif p == 0:
            value = np.sum(a != 0, axis=axes, keepdims=keepdim).astype(xv.dtype)
        elif p == 1:
            value = np.sum(a, axis=axes, keepdims=keepdim)
        elif p == 2:
            value = np.sqrt(np.sum(xv * xv, axis=axes, keepdims=keepdim))
        else:
            value = np.sum(a ** p, axis=axes, keepdims=keepdim) ** (1 / p)
    return _unary(NORM, x, np.asarray(value, dtype=xv.dtype), i0=mask, i1=int(keepdim), f0=p)


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("var", dim, axis), keepdim if keepdims is None else keepdims
    return _moment(x, dim, unbiased, keepdim, correction, False)


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None):
    if axis is not None or keepdims is not None:
        dim, keepdim = _axis("std", dim, axis), keepdim if keepdims is None else keepdims
    return _moment(x, dim, unbiased, keepdim, correction, True)


def _moment(x, dim, unbiased, keepdim, correction, root):
    if isinstance(dim, bool):  # var(unbiased) in torch's older signature
        dim, unbiased = None, dim
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    x = _float_input(x)
    xv = x._value
    axes = _axes(dim, xv.ndim)
    n = 1
    for a in axes:
        n *= xv.shape[a]
    dof = n - correction
    if dof <= 0:
        warnings.warn(f"{'std' if root else 'var'}(): degrees of freedom is <= 0. Correction should be strictly "
                      "less than the reduction factor (input numel divided by output numel).", UserWarning,
                      stacklevel=3)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = xv - np.add.reduce(xv, axis=axes, keepdims=True) / n  # (np.mean's value, without its warning when empty)
        value = np.asarray(np.sum(d * d, axis=axes, keepdims=keepdim) / max(dof, 0), xv.dtype)  # inf or nan
    v = _unary(VAR, x, value, i0=_mask(axes), i1=int(keepdim) | (dim is not None) << 1, f0=float(correction))
    if not root:
        return v
    return shown_as(_unary(STD_ROOT, v, np.sqrt(v._value)), "StdBackward0", x)


def logsumexp(x, dim=_NO_DIM, keepdim=False, *, axis=None, keepdims=None):
    dim = _axis("logsumexp", dim, axis)
    if keepdims is not None:
        keepdim = keepdims
    x = _float_input(x)
    xv = x._value
    axes = _axes(dim, xv.ndim)
    m = np.max(xv, axis=axes, keepdims=True) if xv.size else np.zeros((1,) * xv.ndim, xv.dtype)
    m = np.where(np.isfinite(m), m, 0).astype(xv.dtype)  # a shift that keeps exp finite
    shift = _leaf(m)
    out = log(sum(exp(x - shift), axes, keepdim=True)) + shift
    return shown_as(squeeze(out, axes) if not keepdim and axes else out, "LogsumexpBackward0", x)


def _softmax_dim(x, dim, dtype):
    if dtype is not None:
        x = to_dtype(x, dtype)
    x = _float_input(x)
    return x, (_dim(dim, x._value.ndim) if x._value.ndim else 0)


def softmax(x, dim=_NO_DIM, dtype=None, *, axis=None):
    x, d = _softmax_dim(x, _axis("softmax", dim, axis), dtype)
    xv = x._value
    if xv.ndim == 0:
        return _unary(SOFTMAX, x, np.ones((), xv.dtype), i0=0)
    if 0 < xv.size <= _SMALL_SOFTMAX:
        return _unary(SOFTMAX, x, _softmax_kernel(xv, d, False), i0=d)
    with np.errstate(invalid="ignore"):
        e = np.exp(xv - np.max(xv, axis=d, keepdims=True)) if xv.size else xv.copy()
        value = e / np.sum(e, axis=d, keepdims=True)
    return _unary(SOFTMAX, x, value, i0=d)


def log_softmax(x, dim=_NO_DIM, dtype=None, *, axis=None):
    x, d = _softmax_dim(x, _axis("log_softmax", dim, axis), dtype)
    xv = x._value
    if xv.ndim == 0:
        return _unary(LOG_SOFTMAX, x, np.zeros((), xv.dtype), i0=0)
    if 0 < xv.size <= _SMALL_SOFTMAX:
        return _unary(LOG_SOFTMAX, x, _softmax_kernel(xv, d, True), i0=d)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = xv - np.max(xv, axis=d, keepdims=True) if xv.size else xv.copy()
        value = z - np.log(np.sum(np.exp(z), axis=d, keepdims=True))
    return _unary(LOG_SOFTMAX, x, value, i0=d)


_SMALL_SOFTMAX = 1 << 16  # up to here one jitted pass beats NumPy's six (W2's cross-entropy)


def _softmax_kernel(xv, d, log):
    from .jit.forward import softmax_forward
    shape = xv.shape
    x3 = np.ascontiguousarray(xv).reshape(math.prod(shape[:d]), shape[d], math.prod(shape[d + 1:]))
    return softmax_forward(x3, log).reshape(shape)


def cumsum(x, dim=_NO_DIM, dtype=None, *, axis=None):
    dim = _axis("cumsum", dim, axis)
    if dtype is not None:
        x = to_dtype(x, dtype)
    xv = x._value
    d = _dim(dim, xv.ndim)
    value = np.cumsum(xv.reshape(1) if xv.ndim == 0 else xv, axis=d).reshape(xv.shape)
    if xv.dtype.kind in "bi":
        value = value.astype(np.int64)
    return _unary(CUMSUM, x, value, i0=d)


# -- linear algebra ----------------------------------------------------------------------------
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
    value = (_MM_FORWARD or _mm_forward())[1](xv, yv) if xv.dtype.kind == "f" else np.matmul(xv, yv)
    return _binary_rec(BMM, x, y, value)


def _unsafe_view(x, shape):
    shape = tuple(shape)
    if tuple(x._value.shape) == shape:
        return x
    return _view(UNSAFE_VIEW, x, x._value.reshape(shape))


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


# -- shape ---------------------------------------------------------------------------------
def flatten(x, start_dim=0, end_dim=-1):
    shape = x._value.shape
    if not shape:
        return reshape(x, 1)
    s, e = _dim(start_dim, len(shape)), _dim(end_dim, len(shape))
    if s > e:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    n = 1
    for d in shape[s:e + 1]:
        n *= d
    return reshape(x, shape[:s] + (n,) + shape[e + 1:])


def unflatten(x, dim, sizes):
    shape = x._value.shape
    d = _dim(dim, len(shape))
    return reshape(x, shape[:d] + tuple(_infer_shape(tuple(sizes), shape[d])) + shape[d + 1:])


def repeat(x, *sizes):
    sizes = _shape_arg(sizes)
    xv = x._value
    if len(sizes) < xv.ndim:
        raise RuntimeError("Number of dimensions of repeat dims can not be smaller than number of dimensions of tensor")
    return _with_map(REPEAT, x, np.tile(xv, sizes), np.tile(_positions(x), sizes))


def flip(x, *dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    xv = x._value
    axes = _axes(dims, xv.ndim) if xv.ndim else ()
    return _with_map(FLIP, x, np.flip(xv, axes).copy(), np.flip(_positions(x), axes))


def _seq(tensors, name):
    if isinstance(tensors, Tensor):
        raise TypeError(f"{name}(): argument 'tensors' (position 1) must be tuple of Tensors, not Tensor")
    ts = list(tensors)
    if not ts:
        raise ValueError(f"{name}(): expected a non-empty list of Tensors")
    if any(t._value.dtype != ts[0]._value.dtype for t in ts):
        rt = _promote(*ts)
        ts = [to_dtype(t, rt) for t in ts]
    return ts


def cat(tensors, dim=0, *, axis=None):
    if axis is not None:
        dim = _axis("cat", dim, axis, 0)
    ts = _seq(tensors, "torch.cat")
    # torch skips legacy empty 1-D tensors in the checks and the value, yet keeps them as inputs of
    # the node: one that requires grad makes the result require grad, and gets an empty gradient
    real = [t for t in ts if t._value.shape != (0,)] or ts[:1]
    ref = real[0]._value.shape
    if not ref:
        raise RuntimeError("zero-dimensional tensor (at position 0) cannot be concatenated")
    d = _dim(dim, len(ref))
    for k, t in enumerate(real):
        s = t._value.shape
        if len(s) != len(ref):
            raise RuntimeError(f"Tensors must have same number of dimensions: got {len(ref)} and {len(s)}")
        for j in range(len(ref)):
            if j != d and s[j] != ref[j]:
                raise RuntimeError(f"Sizes of tensors must match except in dimension {d}. Expected size {ref[j]} "
                                   f"but got size {s[j]} for tensor number {k} in the list.")

    def join(vs):
        kept = [v for v in vs if v.shape != (0,)]
        return np.concatenate(kept, axis=d) if kept else np.concatenate(vs)  # (a row of empties only: empty)
    return _cat_tree(CAT, ts, d, join)


concat = concatenate = cat


def stack(tensors, dim=0, *, axis=None):
    if axis is not None:
        dim = _axis("stack", dim, axis, 0)
    ts = _seq(tensors, "stack")
    ref = ts[0]._value.shape
    for k, t in enumerate(ts):
        if t._value.shape != ref:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got {list(ref)} at entry 0 and "
                               f"{list(t._value.shape)} at entry {k}")
    d = _dim(dim, len(ref) + 1)
    return _cat_tree(STACK, ts, d, lambda vs: np.stack(vs, axis=d) if vs[0].ndim == len(ref) else
                     np.concatenate(vs, axis=d))


def _cat_tree(op, ts, d, join):
    """Rows take up to three pieces; more become a tree of rows (three-way, so shallow)."""
    while True:
        groups = [ts[k:k + 3] for k in range(0, len(ts), 3)]
        ts = [_cat_row(op, join([t._value for t in grp]), grp, d) for grp in groups]
        if len(ts) == 1:
            return ts[0]


def _cat_row(op, value, pieces, d):
    # a row of legacy empty pieces only is itself one, joined along its only dim
    return _record(op, value, *pieces, i0=d if value.ndim > d else 0)


def split(x, split_size_or_sections, dim=0):
    xv = x._value
    d = _dim(dim, xv.ndim)
    n = xv.shape[d]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step == 0 and n:
            raise RuntimeError(f"split_size can only be 0 if dimension size is 0, but got dimension size of {n}")
        if step < 0:
            raise RuntimeError(f"split expects split_size be non-negative, but got split_size={step}")
        sizes = [min(step, n - s) for s in range(0, n, step)] if step else [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if int(np.sum(sizes)) != n:
            raise RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {n} (input tensor's size "
                               f"at dimension {d}), but got split_sizes={sizes}")
    pos = _positions(x) if x._rg and _state.grad_enabled else None
    out, off = [], 0
    for s in sizes:
        key = (slice(None),) * d + (slice(off, off + s),)
        value = xv[key]
        if pos is not None:
            out.append(_view(SPLIT, x, value, i1=len(out), b=np.ascontiguousarray(pos[key]).reshape(-1)))
        else:
            out.append(_view(SPLIT, x, value))
        off += s
    return tuple(out)


def chunk(x, chunks, dim=0, *, axis=None):
    if axis is not None:
        dim = _axis("chunk", dim, axis, 0)
    if chunks <= 0:
        raise RuntimeError(f"chunk expects `chunks` to be greater than 0, got: {chunks}")
    xv = x._value
    n = xv.shape[_dim(dim, xv.ndim)]
    return split(x, -(-n // chunks) if n else 0, dim)


def unbind(x, dim=0, *, axis=None):
    """Views of x's pieces along dim, recorded as one multi-output node (torch's UnbindBackward0)."""
    if axis is not None:
        dim = _axis("unbind", dim, axis, 0)
    xv = x._value
    if xv.ndim == 0:
        raise IndexError("Dimension specified as 0 but tensor has no dimensions")
    d = _dim(dim, xv.ndim)
    n = xv.shape[d]
    if not (x._rg and _state.grad_enabled):
        return tuple(_view(UNBIND, x, xv[(slice(None),) * d + (i, ...)]) for i in range(n))
    if d == 0 and xv.flags.c_contiguous:  # each piece is a run of x: no index map
        step = xv.size // n if n else 0
        return tuple(_view(UNBIND, x, xv[i, ...], i0=i * step, i1=i) for i in range(n))
    pos = _positions(x)
    keys = [(slice(None),) * d + (i, ...) for i in range(n)]
    return tuple(_view(UNBIND, x, xv[k], i1=i, b=np.ascontiguousarray(pos[k]).reshape(-1))
                 for i, k in enumerate(keys))


def select(x, dim=_NO_DIM, index=_NO_DIM, *, axis=None):
    """x's slice at ``index`` along dim, without that dim: a view (torch's SelectBackward0)."""
    dim = _axis("select", dim, axis)
    _required("select", index=index)
    xv = x._value
    if xv.ndim == 0:
        raise IndexError("select() cannot be applied to a 0-dim tensor.")
    if isinstance(index, Tensor):
        index = index.item()
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
        raise TypeError(f"select(): argument 'index' (position 2) must be int, not {type(index).__name__}")
    d = _dim(dim, xv.ndim)
    n = xv.shape[d]
    if not -n <= index < n:
        raise IndexError(f"select(): index {index} out of range for tensor of size {list(xv.shape)} at dimension {d}")
    key = (slice(None),) * d + (index % n, ...)
    value = xv[key]  # (the Ellipsis keeps a one-element result a view)
    if not (x._rg and _state.grad_enabled):
        return _view(SELECT, x, value)
    if value.size and value.flags.c_contiguous and xv.flags.c_contiguous:
        return _view(SELECT, x, value, i0=(value.ctypes.data - xv.ctypes.data) // xv.itemsize)
    return _view(SELECT, x, value, b=np.ascontiguousarray(_positions(x)[key]).reshape(-1))


def narrow(x, dim=_NO_DIM, start=_NO_DIM, length=_NO_DIM, *, axis=None):
    dim = _axis("narrow", dim, axis)
    _required("narrow", start=start, length=length)
    d = _dim(dim, x._value.ndim)
    return getitem(x, (slice(None),) * d + (slice(start, start + length),))


# -- indexing ---------------------------------------------------------------------------------
def _index_tensor(index, name, allow_int32=True):
    iv = index._value if isinstance(index, Tensor) else np.asarray(index)
    if iv.dtype.kind not in "iu" or (not allow_int32 and iv.dtype != np.int64):
        raise RuntimeError(f"{name}(): Expected dtype int32/int64 for index" if allow_int32 else
                           f"{name}(): Expected dtype int64 for index")
    return iv.astype(np.int64, copy=False)


def index_select(x, dim=_NO_DIM, index=_NO_DIM, *, axis=None):
    dim = _axis("index_select", dim, axis)
    _required("index_select", index=index)
    xv = x._value
    iv = index._value if isinstance(index, Tensor) else np.asarray(index)
    if iv.dtype.kind not in "iu":
        raise RuntimeError("index_select(): Expected dtype int32 or int64 for index")
    if iv.ndim > 1:
        raise IndexError("index_select(): Index is supposed to be a vector")
    iv = iv.reshape(-1).astype(np.int64, copy=False)
    d = _dim(dim, xv.ndim)
    n = xv.shape[d] if xv.ndim else 1
    if iv.size and (iv.min() < 0 or iv.max() >= n):
        raise IndexError("index out of range in self")
    x1 = xv.reshape(1) if xv.ndim == 0 else xv
    value = np.take(x1, iv, axis=d).reshape(xv.shape if xv.ndim == 0 else x1.shape[:d] + (iv.size,) + x1.shape[d + 1:])
    return _with_map(INDEX_SELECT, x, value, np.take(_positions(x).reshape(x1.shape), iv, axis=d))


def repeat_interleave(x, repeats, dim=None, *, axis=None):
    if axis is not None:
        dim = _axis("repeat_interleave", dim, axis)
    if dim is None:
        x, dim = reshape(x, -1), 0
    n = x._value.shape[_dim(dim, x._value.ndim)]
    reps = repeats._value if isinstance(repeats, Tensor) else repeats
    return index_select(x, dim, _leaf(np.repeat(np.arange(n, dtype=np.int64), reps)))


def _scatter_positions(shape, iv, d, name, limits):
    """Flat positions in an array of ``shape`` for each element of index ``iv`` along dim d."""
    if iv.ndim != len(shape):
        raise RuntimeError("Index tensor must have the same number of dimensions as input tensor" if name == "gather"
                           else "Index tensor must have the same number of dimensions as self tensor")
    for k in range(iv.ndim):
        for lim, what in limits:
            if (k != d or what == "src") and iv.shape[k] > lim[k]:
                raise RuntimeError(f"Size does not match at dimension {k} expected index {list(iv.shape)} to be no "
                                   f"larger than {what} {list(lim)} apart from dimension {d}" if what != "src" else
                                   f"Expected index {list(iv.shape)} to be no larger than self {list(shape)} apart "
                                   f"from dimension {d} and to be no larger size than src {list(lim)}")
    if iv.size:
        bad = (iv < 0) | (iv >= shape[d])
        if bad.any():
            raise RuntimeError(f"index {int(iv[bad][0])} is out of bounds for dimension {d} with size {shape[d]}")
    strides = [int(np.prod(shape[k + 1:])) for k in range(len(shape))]
    pos = np.zeros(iv.shape, np.int64)
    for k in range(iv.ndim):
        coord = iv if k == d else np.arange(iv.shape[k], dtype=np.int64).reshape(
            (1,) * k + (-1,) + (1,) * (iv.ndim - k - 1))
        pos = pos + coord * strides[k]
    return pos


def gather(x, dim=_NO_DIM, index=_NO_DIM, sparse_grad=False, *, axis=None):
    dim = _axis("gather", dim, axis)
    _required("gather", index=index)
    xv = x._value
    iv = _index_tensor(index, "gather")
    d = _dim(dim, xv.ndim)
    pos = _scatter_positions(xv.shape, iv, d, "gather", [(xv.shape, "self")])
    value = np.ascontiguousarray(xv).reshape(-1)[pos.reshape(-1)].reshape(iv.shape)
    return _with_map(GATHER, x, value, pos)


def scatter_add(x, dim=_NO_DIM, index=_NO_DIM, src=_NO_DIM, *, axis=None):
    dim = _axis("scatter_add", dim, axis)
    _required("scatter_add", index=index, src=src)
    xv = x._value
    iv = _index_tensor(index, "scatter_add", allow_int32=False)
    d = _dim(dim, xv.ndim)
    src = _scalar_like(src, x)
    if src._value.dtype != xv.dtype:
        raise RuntimeError(f"scatter(): Expected self.dtype to be equal to src.dtype")
    pos = _scatter_positions(xv.shape, iv, d, "scatter_add", [(xv.shape, "self"), (src._value.shape, "src")])
    if src._value.shape != iv.shape:
        src = getitem(src, tuple(slice(0, n) for n in iv.shape))
    value = xv.copy()
    np.add.at(value.reshape(-1), pos.reshape(-1), src._value.reshape(-1))
    return _record(SCATTER_ADD, value, x, src, pos.reshape(-1))


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
        value = value._value.item()
    x = expand(x, shape)
    out = x._value.copy()
    full = np.broadcast_to(mv, shape)
    out[full] = value
    return _record(MASKED_FILL, out, x, (full, mask) if isinstance(mask, Tensor) else full, f0=float(value))


def nll(logp2, target, weight=None, reduction="mean"):
    """The negative log-likelihood of (N, C) log-probabilities at class indices ``target`` (an int
    array (N,), in range), each sample weighted by ``weight`` ((N,) array, None for ones): one
    row, torch's NllLossBackward0 (nn.functional.nll_loss and cross_entropy build on it)."""
    lv = logp2._value
    n, c = lv.shape
    pos = np.arange(n, dtype=np.int64) * c + target.astype(np.int64, copy=False)
    picked = np.ascontiguousarray(lv).reshape(-1)[pos]
    w = None if weight is None else np.ascontiguousarray(weight, dtype=lv.dtype)
    terms = -picked if w is None else -(picked * w)
    if reduction == "none":
        return _record(NLL, terms, logp2, pos, w)
    total = (n if w is None else float(w.sum())) if reduction == "mean" else 1.0
    scale = 1.0 / total if total else math.inf  # torch: nan when every sample is ignored
    with np.errstate(invalid="ignore"):
        value = np.asarray(terms.sum() * scale, dtype=lv.dtype)
    return _record(NLL, value, logp2, pos, w, i0=1, f0=scale)


_XENT = []  # jit.forward.xent_forward, imported on first use


def cross_entropy_mean(x, target):
    """nn.functional.cross_entropy(x, target) in its common case: (N, C) float32/64 logits, N class
    indices all in range, mean reduction. log_softmax and the nll in one jitted pass (NumPy takes
    ~15 small calls, W2's largest non-GEMM forward cost), recorded as the same two rows as the
    general path. None when not that case (the caller takes the general path)."""
    xv, tv = x._value, target._value
    if xv.ndim != 2 or xv.dtype.char not in "fd" or tv.shape != xv.shape[:1] or tv.dtype.kind not in "iu" \
            or not xv.size:
        return None
    if not _XENT:
        from .jit.forward import xent_forward
        _XENT.append(xent_forward)
    if not xv.flags.c_contiguous:
        xv = np.ascontiguousarray(xv)
    logp, pos, total, ok = _XENT[0](xv, tv if tv.dtype is _INT64 and tv.flags.c_contiguous else
                                    np.ascontiguousarray(tv, np.int64))
    if not ok:
        return None
    scale = 1.0 / xv.shape[0]
    value = np.asarray(total * scale, xv.dtype)
    lp = _unary(LOG_SOFTMAX, x, logp, i0=1)
    if not lp._rg:
        return _leaf(value)
    tape = lp._tape  # the recording tape: _record's checks, done
    b = tape.new_slot(pos, LEAF, None)
    return _result(value, tape, tape.push(NLL.code, lp._slot, b, -1, 1, 0, scale, value, None), None)


_INT64 = np.dtype(np.int64)


# -- in place ------------------------------------------------------------------------------------
def _root(x):
    """The tensor whose storage x views (x itself when it is no view)."""
    while x._x is not None and x._x.base is not None:
        x = x._x.base
    return x


def _check_inplace(x):
    if _state.grad_enabled and x._rg and x._tape is None:
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
    root = _root(x)
    if root is not x and _state.grad_enabled and root._rg and root._tape is None:
        raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place operation.")


def _inplace(x, result, where=True, overlap_ok=False):
    """Make x hold ``result`` in its own storage: x takes result's place in the graph. ``where``: the
    elements written (masked_fill_); ``overlap_ok``: fill_, zero_ and masked_fill_, which torch lets
    write into an expanded tensor."""
    _check_inplace(x)
    if _records.PROGRAMS:
        p = recording_program()
        if p is not None:
            p.note_write(x, result)
    xv = x._value
    if result._value.shape != xv.shape:
        raise RuntimeError(f"output with shape {list(xv.shape)} doesn't match the broadcast shape "
                           f"{list(result._value.shape)}")
    if result._value.dtype.kind == "f" and xv.dtype.kind != "f":
        raise RuntimeError(f"result type Float can't be cast to the desired output type "
                           f"{_torch_type_name(xv.dtype)}")
    try:
        if where is True:  # (where=True costs a ufunc argument more)
            np.copyto(xv, result._value, casting="unsafe")
        else:
            np.copyto(xv, result._value, casting="unsafe", where=where)
    except ValueError:  # read-only: an expand, or a view of one
        if xv.flags.writeable:
            raise
        np.copyto(_write_target(xv, overlap_ok), result._value, casting="unsafe", where=where)
    x._bump_version()
    if result._tape is not None:
        tape = result._tape
        x._tape, x._slot, x._rg = tape, result._slot, True
        tape.vcs[result._slot] = x._vc  # later in-place changes to x invalidate what was saved
        _repin_version(tape, result._slot, x._vc[0])
    _update_base(x)
    return x


OVERLAP_MSG = ("unsupported operation: more than one element of the written-to tensor refers to a single memory "
               "location. Please clone() the tensor before performing the operation.")


def _overlaps(v):
    """Whether some elements of v share memory (torch's has_internal_overlap: a stride 0 over a size > 1)."""
    return any(st == 0 and n > 1 for n, st in zip(v.shape, v.strides))


def _write_target(v, overlap_ok=False):
    """v, ready for an in-place write. An expand, and any view of one, is a read-only NumPy view
    (np.broadcast_to): where its elements repeat, torch's error, unless the op may write there
    (``overlap_ok``); else a writable view of the same memory, so the write reaches the expanded
    tensor's storage as in torch."""
    if v.flags.writeable:
        return v
    if not overlap_ok and _overlaps(v):
        raise RuntimeError(OVERLAP_MSG)
    root = v
    while isinstance(root.base, ndarray):
        root = root.base
    if not root.flags.writeable or not root.flags.c_contiguous:
        return v  # memory that is read-only itself: NumPy's error stands
    return ndarray(v.shape, v.dtype, root, v.ctypes.data - root.ctypes.data, v.strides)


def _update_base(x):
    """x, a view, was just changed in place: its root records the write as torch's CopySlices, so
    the root's later uses differentiate through the new values."""
    root = _root(x)
    if root is x or not _state.grad_enabled or not (x._rg or root._rg):
        return
    tape = x._tape if x._tape is not None else current_tape()
    a, b = tape.slot_of(root), tape.slot_of(x)
    c = tape.new_slot(_view_positions(root._value, x._value), LEAF, None)
    root._slot = tape.push(SETITEM.code, a, b, c, 0, 0, 0.0, _contiguous(root._value), counter(root))
    root._tape, root._rg = tape, True
    if _overlaps(x._value):  # written through an expand (fill_, zero_, masked_fill_, index_put_): as in
        # torch, the forward stands and a gradient that reaches the write is an error (check_versions)
        tape.overlapped = (tape.overlapped or set()) | {b, root._slot}


def _view_positions(base, view):
    """For each element of ``view`` (C order), its flat C-order index in ``base``, whose memory it shares."""
    start = base.ctypes.data

    def offsets(a):
        o = np.full(a.shape, a.ctypes.data - start, dtype=np.int64)
        for k, (n, st) in enumerate(zip(a.shape, a.strides)):
            o = o + (np.arange(n, dtype=np.int64) * st).reshape((1,) * k + (n,) + (1,) * (a.ndim - k - 1))
        return o.reshape(-1)

    vo = offsets(view)
    if base.flags.c_contiguous:
        return vo // base.itemsize
    bo = offsets(base)
    order = np.argsort(bo, kind="stable")
    return order[np.searchsorted(bo[order], vo)]


def _saved(x, *others):
    """x for an in-place op whose adjoint reads x's old value: a copy when the op is recorded,
    since the write would overwrite what the adjoint needs (torch saves the original too)."""
    if _state.grad_enabled and (x._rg or any(isinstance(o, Tensor) and o._rg for o in others)):
        return clone(x)
    return x


def _repin_version(tape, s, version):
    from .tape import SLOT
    obj, flags, _, dt = SLOT.unpack_from(tape.slots, s * SLOT.size)
    SLOT.pack_into(tape.slots, s * SLOT.size, obj, flags, version, dt)


def zero_(x):
    _check_inplace(x)
    if (x._rg or x._tape is not None) and _state.grad_enabled:
        return _inplace(x, _unary(ZERO, x, np.zeros_like(x._value)), overlap_ok=True)
    _write_target(x._value, True)[...] = 0
    x._bump_version()
    return x


def fill_(x, value):
    _check_inplace(x)
    if isinstance(value, Tensor) and value._rg and _state.grad_enabled:
        # x's gradient is zero, the fill value's the sum of g: neither row saves a value (torch's FillBackward)
        return _inplace(x, _unary(FILL, x, np.zeros_like(x._value)) + value)
    v = value._value if isinstance(value, Tensor) else value
    if (x._rg or x._tape is not None) and _state.grad_enabled:
        return _inplace(x, _unary(FILL, x, np.full_like(x._value, v)), overlap_ok=True)
    _write_target(x._value, True)[...] = v
    x._bump_version()
    return x


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


def scatter_add_(x, dim, index, src):
    return _inplace(x, scatter_add(x, dim, index, src))


def copy_(x, src, non_blocking=False):
    if not isinstance(src, Tensor):
        src = _leaf(np.asarray(src))
    broadcast_shapes(x._value.shape, src._value.shape)
    value = np.broadcast_to(src._value, x._value.shape).astype(x._value.dtype)
    return _inplace(x, _record(COPY, value, x, src))


# -- methods -------------------------------------------------------------------------------------
def _install():
    M = Tensor
    M.__add__ = M.__radd__ = _recorder(ADD_SCALAR, add)  # (x + c is c + x, bit for bit)
    M.__sub__ = _recorder(SUB_SCALAR, sub)
    M.__rsub__ = lambda x, y: _rsub(x, y) if isinstance(y, _SCALARS) else sub(_as_tensor(y, x), x)
    M.__mul__ = M.__rmul__ = _recorder(MUL_SCALAR, mul)
    M.__truediv__ = _recorder(DIV_SCALAR, div)
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
    M.__gt__ = gt
    M.__iadd__ = lambda x, y: _inplace(x, add(x, y))
    M.__isub__ = lambda x, y: _inplace(x, sub(x, y))
    M.__imul__ = lambda x, y: _inplace(x, mul(x, y))
    M.__itruediv__ = lambda x, y: _inplace(x, div(x, y))
    for name, fn in dict(add=add, sub=sub, mul=mul, div=div, pow=pow, neg=neg, exp=exp, log=log, sin=sin,
                         cos=cos, tanh=tanh, sigmoid=sigmoid, relu=relu, sqrt=sqrt, abs=abs, sum=sum, mean=mean,
                         matmul=matmul, mm=mm, view=view, reshape=reshape, transpose=transpose, t=t,
                         permute=permute, expand=expand, expand_as=expand_as, unsqueeze=unsqueeze,
                         squeeze=squeeze, clone=clone, contiguous=contiguous, reciprocal=reciprocal,
                         sign=sign, zero_=zero_, fill_=fill_, multiply=mul, subtract=sub, divide=div,
                         true_divide=div).items():
        setattr(M, name, fn)
    M.add_ = lambda x, y, alpha=1: _inplace(x, add(x, y, alpha=alpha))
    M.sub_ = lambda x, y, alpha=1: _inplace(x, sub(x, y, alpha=alpha))
    M.mul_ = lambda x, y: _inplace(x, mul(x, y))
    M.div_ = lambda x, y: _inplace(x, div(x, y))
    M.T = property(lambda x: permute(x, *range(x.ndim - 1, -1, -1)))
    M.mT = property(lambda x: transpose(x, -2, -1))
    M.to = _to
    M.float = lambda x: to_dtype(x, dtypes.float32)
    M.double = lambda x: to_dtype(x, dtypes.float64)
    M.long = lambda x: to_dtype(x, dtypes.int64)
    M.int = lambda x: to_dtype(x, dtypes.int32)
    M.bool = lambda x: to_dtype(x, dtypes.bool_)
    M.type_as = lambda x, other: to_dtype(x, other.dtype)
    M.cpu = lambda x: x
    _install_surface(M)


def _install_surface(M):
    """Methods of the full op surface (issue 3)."""
    M.__lt__, M.__le__, M.__gt__, M.__ge__, M.__eq__, M.__ne__ = lt, le, gt, ge, eq, ne
    M.__and__, M.__or__, M.__xor__, M.__invert__ = bitwise_and, bitwise_or, bitwise_xor, _invert
    M.__rand__, M.__ror__, M.__rxor__ = bitwise_and, bitwise_or, bitwise_xor
    M.__imul__ = mul_
    M.__itruediv__ = div_
    M.__ipow__ = pow_
    for name, fn in dict(
            rsqrt=rsqrt, log1p=log1p, expm1=expm1, tan=tan, erf=erf, square=square, clamp=clamp, clip=clamp,
            clamp_min=clamp_min, clamp_max=clamp_max, maximum=maximum, minimum=minimum, sign=sign, prod=prod,
            max=max_, min=min_, amax=amax, amin=amin, norm=norm, var=var, std=std, logsumexp=logsumexp,
            softmax=softmax, log_softmax=log_softmax, cumsum=cumsum, argmax=argmax, argmin=argmin, isnan=isnan,
            isfinite=isfinite, isinf=isinf, bmm=bmm, mv=mv, dot=dot, vdot=vdot, inner=inner, outer=outer, ger=outer, flatten=flatten,
            unflatten=unflatten, repeat=repeat, split=split, chunk=chunk, flip=flip, unbind=unbind, narrow=narrow,
            select=select,
            index_select=index_select, gather=gather, scatter_add=scatter_add, masked_fill=masked_fill,
            lt=lt, le=le, gt=gt, ge=ge, eq=eq, ne=ne, greater=gt, less=lt, logical_not=logical_not, all=all_,
            any=any_, nonzero=nonzero, mul_=mul_, div_=div_, pow_=pow_, clamp_=clamp_, clip_=clamp_,
            copy_=copy_, exp_=exp_, masked_fill_=masked_fill_, zero_=zero_, fill_=fill_,
            repeat_interleave=repeat_interleave,
            scatter_add_=scatter_add_).items():
        setattr(M, name, fn)
    M.where = lambda x, condition, y: where(condition, x, y)
    for name, fn in METHODS.items():
        setattr(M, name, fn)


def _to(x, *args, **kwargs):
    dt = kwargs.pop("dtype", None)
    device = kwargs.pop("device", None)
    for a in args:
        if isinstance(a, dtypes.dtype):
            dt = a
        elif isinstance(a, Tensor):
            dt = a.dtype
        else:
            device = a
    if device is not None and str(device).split(":")[0] != "cpu":
        raise RuntimeError(f"device {device} is not available: this build of tapegrad runs on the CPU")
    return to_dtype(x, dt) if dt is not None else x


_install()
BY_NAME = {r.name: r for r in TABLE}
assert len(BY_NAME) == len(TABLE), "row names must be unique"
