"""Derivative formulas of elementwise rows, in the spirit of derivatives.yaml: one expression per
row, from which both the jitted adjoint (tools/generate.py writes it into the CPU engine) and the
differentiable VJP (tapegrad ops, built when the op table loads) are derived, so the two cannot
drift. Both evaluate the formula in the order it is written, so write it in torch's order.

The language: ``g`` (the output's gradient), ``x`` (a unary row's input), ``a`` and ``b`` (a
binary row's operands, each broadcast to the output's shape), ``y`` (the output), ``c`` (the row's
float attribute), number literals, ``+ - * /``, unary ``-`` and the functions in FUNCTIONS.
"""
import ast
import functools

# name in a formula -> (its spelling in a jitted kernel, in a VJP, in a CUDA kernel). A VJP calls the
# Tensor method, the same function as tapegrad's op, so that it needs no names where the row is
# declared. CUDA kernels call libdevice through math; sign is spelled out (np.sign's 0 and NaN kept),
# as a device function of its own would need a driver to compile.
FUNCTIONS = {name: (f"np.{name}({{0}})", f"({{0}}).{name}()", f"math.{name}({{0}})")
             for name in ("exp", "log", "sign", "cos", "sin", "sqrt", "tanh", "log1p", "expm1", "tan", "abs")}
FUNCTIONS["abs"] = FUNCTIONS["abs"][:2] + ("abs({0})",)
FUNCTIONS["sign"] = FUNCTIONS["sign"][:2] + ("(1.0 if ({0}) > 0 else -1.0 if ({0}) < 0 else ({0}) * 0.0)",)
# Functions of GPU rows' forward formulas, some of two arguments; pow is spelled ** on the device, as
# the simulator's math.pow raises where pow gives inf or NaN.
FUNCTIONS.update({"erf": ("math.erf({0})", "({0}).erf()", "math.erf({0})"),
                  "atan2": ("np.arctan2({0}, {1})", "({0}).atan2({1})", "math.atan2({0}, {1})"),
                  "hypot": ("np.hypot({0}, {1})", "({0}).hypot({1})", "math.hypot({0}, {1})"),
                  "pow": ("({0}) ** ({1})", "({0}).pow({1})", "({0}) ** ({1})")})
# A formula function's NumPy ufunc, where the names differ (a GPU row's forward is found by its ufunc).
UFUNC_NAMES = {"abs": "absolute", "atan2": "arctan2", "pow": "power"}
VARIABLES = ("g", "x", "a", "b", "y", "c")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def parse(d):
    """The formula's expression tree, checked against the language above."""
    tree = ast.parse(d, mode="eval").body
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in VARIABLES and node.id not in FUNCTIONS:
            raise ValueError(f"formula {d!r}: unknown name {node.id!r}")
        if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS
                                           or len(node.args) != _arity(node.func.id) or node.keywords):
            raise ValueError(f"formula {d!r}: only calls of {sorted(FUNCTIONS)}, with their arguments")
        if isinstance(node, ast.BinOp) and type(node.op) not in _BINOPS:
            raise ValueError(f"formula {d!r}: only + - * /")
        if not isinstance(node, (ast.Name, ast.Call, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Load,
                                 ast.USub, *_BINOPS)):
            raise ValueError(f"formula {d!r}: {type(node).__name__} is not part of the language")
    return tree


def _arity(name):
    return 2 if "{1}" in FUNCTIONS[name][0] else 1


def _render(node, name, call):
    """Source text of ``node`` with variables spelled by ``name`` and functions by ``call``,
    parenthesised exactly as parsed, so evaluation follows the formula's order."""
    if isinstance(node, ast.Name):
        return name[node.id]
    if isinstance(node, ast.Constant):
        return repr(node.value)
    if isinstance(node, ast.UnaryOp):
        return f"-{_wrap(node.operand, name, call)}"
    if isinstance(node, ast.Call):
        return call[node.func.id].format(*(_render(arg, name, call) for arg in node.args))
    return f"{_wrap(node.left, name, call)} {_BINOPS[type(node.op)]} {_wrap(node.right, name, call)}"


def _wrap(node, name, call):
    text = _render(node, name, call)
    return f"({text})" if isinstance(node, ast.BinOp) else text


def kernel_expr(d):
    """The formula for element i of a jitted loop (``g[i] * (1 - y[i] * y[i])``)."""
    return _render(parse(d), {"g": "g[i]", "x": "x[i]", "a": "a[i]", "b": "b[i]", "y": "y[i]", "c": "c"},
                   {k: v[0] for k, v in FUNCTIONS.items()})


def cuda_expr(d):
    """The formula for element i of a CUDA kernel's grid-stride loop."""
    return _render(parse(d), {"g": "g[i]", "x": "x[i]", "a": "a[i]", "b": "b[i]", "y": "y[i]", "c": "c"},
                   {k: v[2] for k, v in FUNCTIONS.items()})


def ufunc_call(d):
    """(NumPy ufunc name, operand pattern) of a forward formula that is one ufunc call: ``tanh(x)``
    is ("tanh", "x"), ``a + b`` ("add", "ab"), ``c - x`` ("subtract", "cx"), ``pow(c, x)`` ("power",
    "cx"); None otherwise (a constant operand, a nested call)."""
    tree = parse(d)
    if isinstance(tree, ast.Call) and all(isinstance(arg, ast.Name) for arg in tree.args):
        pattern = "".join(arg.id for arg in tree.args)
        if pattern in ("x", "ab", "xc", "cx"):
            return UFUNC_NAMES.get(tree.func.id, tree.func.id), pattern
    if isinstance(tree, ast.UnaryOp) and isinstance(tree.operand, ast.Name) and tree.operand.id == "x":
        return "negative", "x"
    if isinstance(tree, ast.BinOp) and isinstance(tree.left, ast.Name) and isinstance(tree.right, ast.Name):
        pattern = tree.left.id + tree.right.id
        if pattern in ("ab", "xc", "cx"):
            return _UFUNCS[type(tree.op)], pattern
    return None


_UFUNCS = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "divide"}


def forward_expr(d):
    """A forward formula (a row's ``fwd``) for one element, its variables read as plain names."""
    return _render(parse(d), {v: v for v in VARIABLES}, {k: v[0] for k, v in FUNCTIONS.items()})


def vjp_expr(d):
    """The formula in tapegrad ops over a VJP's arguments ``(g, i, o, r)``."""
    return _render(parse(d), {"g": "g", "x": "i[0]", "a": "i[0]", "b": "i[1]", "y": "o", "c": "r[7]"},
                   {k: v[1] for k, v in FUNCTIONS.items()})


@functools.lru_cache(maxsize=None)
def uses(d):
    """The variables the formula reads (cached: the CUDA engine asks at every adjoint launch)."""
    return frozenset(node.id for node in ast.walk(parse(d)) if isinstance(node, ast.Name) and node.id in VARIABLES)


def reads(*ds):
    """What the adjoint of formulas ``ds`` reads, as a row's ``reads``: operand 0 for x or a,
    1 for b, "out" for y."""
    u = set().union(*map(uses, ds))
    return (0,) * bool(u & {"x", "a"}) + (1,) * ("b" in u) + ("out",) * ("y" in u)


def sign_through(d):
    """Whether the formula is g times or over factors that do not involve g (and g appears once):
    then it commutes with negating g bit for bit (rounding is symmetric), which the create_graph
    walk uses to defer negations."""
    tree = parse(d)
    if sum(isinstance(n, ast.Name) and n.id == "g" for n in ast.walk(tree)) != 1:
        return False
    node = tree
    while not (isinstance(node, ast.Name) and node.id == "g"):
        if isinstance(node, ast.UnaryOp):
            node = node.operand
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
            left_has_g = any(isinstance(n, ast.Name) and n.id == "g" for n in ast.walk(node.left))
            if isinstance(node.op, ast.Div) and not left_has_g:
                return False  # g in a denominator
            node = node.left if left_has_g else node.right
        else:
            return False
    return True
