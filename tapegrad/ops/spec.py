"""The op table's row type and its declarers.

A row holds everything about an op: its name, torch's ``grad_fn`` class name, arity, NumPy
forward, the name of its numeric adjoint in ``engine/cpu/adjoints.py`` (the jitted path), its
differentiable VJP written in tapegrad ops (the ``create_graph`` path, which re-records), what it
saves (``reads``, below) and what its attribute fields hold (``attrs``, attrs.py). Several rows
may share one adjoint kernel (sum/mean, the identity-gradient ops).

``reads`` is torch's saved set for the op (tools/autograd/derivatives.yaml): the values each
input's gradient reads, as operand positions 0..2, 'out' for the result, and 'const' for a
tensor torch saves that the row keeps itself (a Python scalar operand, indices). A plain tuple
holds for every input; a dict {input: tuple} when it depends on which inputs need grad (x * y
saves y for x's gradient, x for y's); the row keeps it per input, a tuple of three. It decides
what a backward frees: an entry whose inputs that need grad read something is freed (a second
backward through it fails, and only the values unfreed entries read are kept), one that reads
nothing replays again (x + 1, sum, views); and which values the in-place version check guards.
The adjoints read no other value (shapes aside, and a row's own index maps).

``inputs`` is how many of its operand slots are tensors of the user's, which torch's node lists
in ``next_functions``; the slots after them hold tapegrad's int64 index maps.

VJP signature: ``vjp(g, ins, out, row) -> grads``: ``g`` the output gradient (Tensor), ``ins``
the input Tensors (None where unused), ``out`` the output Tensor, ``row`` the tape row tuple
``(op, a, b, c, out, i0, i1, f0)``; returns one gradient (or None) per input.

How a compiled program (tg.compile) replays the row forward: ``fwd`` is its jitted forward
kernel, an expression in formula.py's language over ``x`` (or ``a`` and ``b``) and ``c`` (``"a +
b"``, ``"x * c"``), whose loop tools/generate.py writes, or the name of a hand-written one in
``engine/cpu/forwards.py``, or ``"ufunc:<module>.<name>"`` for a row whose eager forward is that
one unary ufunc call (``"ufunc:numpy.tanh"``): the replay calls the ufunc's own inner loop
(jit/ufuncs.py), exact wherever the loop is found; ``fwd_exact(dtype, size)`` says where that kernel
gives the bits of the NumPy forward the eager path runs (libm and NumPy's SIMD loops round
differently; None: always), ``fwd_f0(f0)`` for which of the row's scalars it does (None: all);
``replay(ins, i0, i1, f0, shape, dtype)`` is the NumPy forward for rows whose ``forward`` alone
cannot replay (it returns the value, or (value, f0) where f0 comes from values, nll_loss's weighted
mean: the replayed tape's row takes that f0); ``static_maps``: its index maps come from Python keys
and shapes only, so a program may keep them (other maps and masks are derived again from the tensors
they come from at each replay: ops.results._derived). A row with none of these cannot replay (its
program runs eagerly).

``gpu`` says the row runs on GPU tensors: True, or the forward formula its CUDA kernel computes
where ``fwd`` is not one ufunc call (sin's ``"sin(x)"``, reciprocal's ``"c / x"``). A forward formula
that is one ufunc call gets its CUDA kernel generated (tools/generate.py writes cuda/_generated.py;
the eager forward reaches it through that ufunc call, formula.ufunc_call); any other GPU row's
NumPy forward runs on the kernels of the calls it makes (rsqrt's np.reciprocal(np.sqrt(x)),
sigmoid's exp and where). A derivative ``formula``'s adjoint is generated too; any other GPU row's
adjoint is the CUDA engine's own, by the row's kernel name (engine/cuda_replay.py).

Each row takes its opcode, its index in TABLE, when it is declared; the package's __init__
imports the modules that declare rows in a fixed order.
"""
from .. import formula
from .attrs import Int, schema

_parse = formula.parse  # (Op's argument ``formula`` shadows the module)


def loop_ready(name):
    """fwd_exact of a kernel that runs ufunc ``name``'s own loop: wherever the probe found it."""
    def exact(dtype, size):
        from ..jit import ufuncs
        return ufuncs.ready(name, dtype)
    return exact


class Op:
    __slots__ = ("code", "name", "grad_fn", "arity", "forward", "kernel", "vjp", "reads", "formula", "sign_through",
                 "attrs", "inputs", "fwd", "fwd_exact", "fwd_f0", "replay", "static_maps", "gpu")

    def __init__(self, code, name, grad_fn, arity, forward, kernel, vjp, reads, formula=None, sign_through=False,
                 attrs=(), inputs=None, fwd=None, fwd_exact=None, fwd_f0=None, replay=None, static_maps=False,
                 gpu=None):
        self.code, self.name, self.grad_fn, self.arity = code, name, grad_fn, arity
        self.forward, self.kernel, self.vjp = forward, kernel, vjp
        self.reads = tuple(reads.get(k, ()) for k in range(3)) if isinstance(reads, dict) else (tuple(reads),) * 3
        self.formula = formula  # an elementwise row's derivative (formula.py): its adjoint is generated
        self.sign_through = sign_through  # its VJP commutes with negating g (algebra.Negated)
        self.attrs = schema(attrs)
        self.inputs = arity if inputs is None else inputs
        if fwd is not None and fwd.startswith("ufunc:"):
            fwd_exact = fwd_exact or loop_ready(fwd[len("ufunc:"):])
        elif fwd is not None and not fwd.startswith("fwd_"):
            _parse(fwd)  # (a formula row's forward: checked here, not at generation)
        self.fwd, self.fwd_exact, self.replay, self.static_maps = fwd, fwd_exact, replay, static_maps
        self.fwd_f0 = fwd_f0
        self.gpu = gpu

    def gpu_forward(self):
        """The forward formula of a GPU row's generated CUDA kernel, or None (its forward on the GPU
        runs other kernels)."""
        if isinstance(self.gpu, str):
            return self.gpu
        if not self.gpu or self.fwd is None or self.fwd.startswith("fwd_"):
            return None
        if self.fwd.startswith("ufunc:"):
            return self.fwd.rsplit(".", 1)[1] + "(x)"
        return self.fwd if formula.ufunc_call(self.fwd) else None

    def attr(self, r, name):
        """The value of attribute ``name`` in row tuple ``r``."""
        for a in self.attrs:
            if a.name == name:
                return a.decode(r[a.column])
        raise KeyError(f"row {self.name!r} has no attribute {name!r}")

    def __repr__(self):
        return f"<op {self.code} {self.name}>"


TABLE = []


def row(name, grad_fn, arity, forward, kernel, vjp, reads=(), sign_through=False, attrs=(), inputs=None, formula=None,
        **replay):
    """A row; ``replay``: its fwd, fwd_exact, fwd_f0, replay, static_maps and gpu (above). ``formula``: the
    derivative of an elementwise row whose CPU adjoint ``kernel`` is hand-written (its CUDA adjoint
    is generated from it)."""
    op = Op(len(TABLE), name, grad_fn, arity, forward, kernel, vjp, reads, formula, sign_through=sign_through,
            attrs=attrs, inputs=inputs, **replay)
    TABLE.append(op)
    return op


def elementwise(name, grad_fn, forward, d, vjp=None, kernel=None, reads=None, attrs=(), **replay):
    """A unary elementwise row whose derivative is the formula ``d`` (formula.py). Its jitted
    adjoint ``adj_<name>`` is generated from ``d`` (tools/generate.py) unless ``kernel`` names a
    hand-written one; its VJP is ``d`` in tapegrad ops unless ``vjp`` is given (a VJP tuned for
    torch's bits or graph). It saves what ``d`` reads, unless ``reads`` says more (torch's saved set)."""
    if vjp is None:
        vjp = eval(f"lambda g, i, o, r: ({formula.vjp_expr(d)},)", {})  # (it calls Tensor methods only)
    op = Op(len(TABLE), name, grad_fn, 1, forward, kernel or "adj_" + name, vjp,
            formula.reads(d) if reads is None else reads, d, formula.sign_through(d), attrs, **replay)
    TABLE.append(op)
    return op


# A custom autograd.Function (autograd/function.py): one row per differentiable output, a, b, c up
# to three input slots (more rows for more inputs), i0 its grad_fn name id, i1 the output index.
# Its backward is Python: the engine calls it once per call, between jitted segments (no vjp here),
# on the GPU too.
FUNCTION = row("function", "FunctionBackward", 3, None, "adj_function", None, attrs=(Int("name_id"), Int("output")),
               gpu=True)
