"""grad, grad_and_value, vjp, jacrev, hessian: torch.func's reverse-mode transforms on the tape.

Each call differentiates with ``autograd.grad`` on fresh inputs: an input that needs no grad is
detached into a new leaf that requires grad; one that already needs grad (an outer transform's
input) enters through an alias row, so the outer transform still sees the path to it. Inside
another transform (or on inputs that need grad) the backward records its own graph
(create_graph), which is what makes ``grad(grad(f))`` and ``jacrev(jacrev(f))`` work; at top
level it does not, and the results are plain tensors."""
import functools
import threading

from ..autograd.api import grad as _autograd_grad
from ..grad_mode import enable_grad, is_grad_enabled
from ..tensor import Tensor
from ._tree import flatten, unflatten

_depth = threading.local()  # how many transforms are running on this thread (their results must stay differentiable)


def _nested():
    return getattr(_depth, "n", 0) > 0


class _Level:
    def __enter__(self):
        _depth.n = getattr(_depth, "n", 0) + 1

    def __exit__(self, *exc):
        _depth.n -= 1


def _check_argnums(argnums, n):
    if isinstance(argnums, tuple):
        if not argnums:
            raise RuntimeError("argnums must be non-empty")
        for a in argnums:
            _check_argnums(a, n)
        if len(set(a % n for a in argnums)) != len(argnums):
            raise RuntimeError(f"argnums must be unique, got {argnums}")
        return
    if not isinstance(argnums, int) or isinstance(argnums, bool):
        raise RuntimeError(f"argnums must be int or Tuple[int, ...], got: {type(argnums)}")
    if not -n <= argnums < n:
        raise RuntimeError(f"Got argnum={argnums}, but only {n} positional inputs")


def _fresh(x):
    """x as an input to differentiate with respect to (see the module docstring)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"Thing passed to transform API must be Tensor, got {type(x)}")
    if x.requires_grad:
        return x.view(tuple(x.shape))
    return x.detach().requires_grad_()


def _fresh_tree(tree):
    leaves, spec = flatten(tree)
    return unflatten([_fresh(x) for x in leaves], spec)


def _inputs(args, argnums):
    """(args with the differentiated ones made fresh, the differentiated trees as given to f)."""
    args = list(args)
    picks = argnums if isinstance(argnums, tuple) else (argnums,)
    for a in picks:
        args[a] = _fresh_tree(args[a])
    diff = tuple(args[a] for a in picks) if isinstance(argnums, tuple) else args[argnums]
    return args, diff


def _create_graph(trees, outer):
    return is_grad_enabled() and (outer or any(x.requires_grad for x in flatten(trees)[0]
                                                   if isinstance(x, Tensor)))


def _result(t, create_graph):
    return t if create_graph or not isinstance(t, Tensor) else t.detach()


def _differentiate(outputs, cotangents, inputs, create_graph, retain_graph):
    """d<outputs, cotangents>/d inputs for flat lists; zeros where an input is unused."""
    pairs = [(y, v) for y, v in zip(outputs, cotangents) if y.requires_grad]
    if not pairs:
        from ..creation import zeros_like
        return [zeros_like(x) for x in inputs]
    ys, vs = zip(*pairs)
    return list(_autograd_grad(ys, inputs, vs, retain_graph=retain_graph, create_graph=create_graph,
                               allow_unused=True, materialize_grads=True))


def grad_and_value(func, argnums=0, has_aux=False):
    """torch.func.grad_and_value: a function returning (gradient, value) (and (gradient, (value, aux))
    with has_aux) of ``func`` at its arguments, ``func`` returning a scalar tensor."""
    @functools.wraps(func, updated=())  # (not func.__dict__: a transform's marks are its own)
    def wrapper(*args, **kwargs):
        _check_argnums(argnums, len(args))
        picks = argnums if isinstance(argnums, tuple) else (argnums,)
        create_graph = _create_graph([args[a] for a in picks], _nested())
        with _Level(), enable_grad():
            args, diff = _inputs(args, argnums)
            out = func(*args, **kwargs)
            aux = None
            if has_aux:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise RuntimeError("grad_and_value(f)(*args): output of function f should be a tuple: "
                                       "(output, aux) if has_aux is True")
                out, aux = out
            if not isinstance(out, Tensor):
                raise RuntimeError(f"grad_and_value(f)(*args): Expected f(*args) to return a Tensor, got {type(out)}")
            if out.dim() != 0:
                raise RuntimeError(f"grad_and_value(f)(*args): Expected f(*args) to return a scalar Tensor, got "
                                   f"tensor with {out.dim()} dims. Maybe you wanted to use the vjp or jacrev APIs "
                                   "instead?")
            leaves, spec = flatten(diff)
            from ..creation import ones_like
            gs = _differentiate([out], [ones_like(out)], leaves, create_graph, retain_graph=create_graph)
        g = unflatten([_result(x, create_graph) for x in gs], spec)
        out = _result(out, create_graph)
        if has_aux:
            al, aspec = flatten(aux)
            return g, (out, unflatten([_result(x, create_graph) for x in al], aspec))
        return g, out

    return wrapper


def grad(func, argnums=0, has_aux=False):
    """torch.func.grad: a function returning the gradient of scalar-valued ``func`` with respect to
    the arguments at ``argnums`` (int: that argument's structure; tuple: a tuple of them); with
    has_aux, ``func`` returns (output, aux) and the result is (gradient, aux)."""
    gv = grad_and_value(func, argnums, has_aux)

    @functools.wraps(func, updated=())  # (not func.__dict__: a transform's marks are its own)
    def wrapper(*args, **kwargs):
        g, value = gv(*args, **kwargs)
        return (g, value[1]) if has_aux else g

    wrapper._grad_of = (func, argnums, has_aux)  # vmap batches the forward and differentiates the batch
    return wrapper


def vjp(func, *primals, has_aux=False):
    """torch.func.vjp: (func(*primals), vjp_fn) (and aux with has_aux); vjp_fn(cotangents) returns a
    tuple with one gradient per primal and may be called again."""
    create_graph = _create_graph(primals, _nested())
    with _Level(), enable_grad():
        primals = tuple(_fresh_tree(p) for p in primals)
        out = func(*primals)
        aux = None
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise RuntimeError("vjp(f, *primals): output of function f should be a tuple: (output, aux) if "
                                   "has_aux is True")
            out, aux = out
    outs, ospec = flatten(out)
    for y in outs:
        if not isinstance(y, Tensor):
            raise RuntimeError(f"vjp(f, *primals): Expected f to be a function that has non-empty output of "
                               f"Tensors, got {type(y)}")
    ins, ispec = flatten(primals)

    def vjp_fn(*cotangents):
        if len(cotangents) == 1 and not isinstance(out, (tuple, list, dict)):
            cts = flatten(cotangents[0])[0]
        else:
            cts = flatten(cotangents[0] if len(cotangents) == 1 else cotangents)[0]
        if len(cts) != len(outs):
            raise RuntimeError(f"Expected pytree structure of cotangents to be the same as pytree structure of "
                               f"outputs to the function; got {len(cts)} cotangents for {len(outs)} outputs")
        for y, v in zip(outs, cts):
            if tuple(v.shape) != tuple(y.shape):
                raise RuntimeError(f"Mismatch in shape: grad_output[0] has a shape of {tuple(v.shape)} and "
                                   f"output[0] has a shape of {tuple(y.shape)}.")
        cg = create_graph or _nested() or any(v.requires_grad for v in cts)
        with _Level(), enable_grad():
            gs = _differentiate(outs, cts, ins, cg, retain_graph=True)
        return unflatten([_result(g, cg) for g in gs], ispec)

    result = unflatten([_result(y, create_graph) for y in outs], ospec)
    if has_aux:
        al, aspec = flatten(aux)
        return result, vjp_fn, unflatten([_result(x, create_graph) for x in al], aspec)
    return result, vjp_fn


def jacrev(func, argnums=0, *, has_aux=False, chunk_size=None, _preallocate_and_copy=False):
    """torch.func.jacrev: the Jacobian of ``func`` with respect to the arguments at ``argnums``, one
    vector-Jacobian product per output element; each output's Jacobian has shape
    output.shape + input.shape (a tuple over argnums when it is a tuple)."""
    @functools.wraps(func, updated=())  # (not func.__dict__: a transform's marks are its own)
    def wrapper(*args, **kwargs):
        _check_argnums(argnums, len(args))
        picks = argnums if isinstance(argnums, tuple) else (argnums,)

        def inner(*diff):
            full = list(args)
            for a, d in zip(picks, diff):
                full[a] = d
            return func(*full, **kwargs)

        res = vjp(inner, *[args[a] for a in picks], has_aux=has_aux)
        out, vjp_fn = res[0], res[1]
        outs, ospec = flatten(out)
        n_out = len(outs)
        from ..creation import zeros
        from ..ops import reshape, stack
        jacs = []  # per output: per differentiated input leaf
        for k, y in enumerate(outs):
            rows = []
            for i in range(y.numel()):
                cts = []
                for j, z in enumerate(outs):
                    e = zeros(z.numel(), dtype=z.dtype)
                    if j == k:
                        e[i] = 1.0
                    cts.append(e.reshape(z.shape))
                gs = vjp_fn(unflatten(cts, ospec) if n_out > 1 or isinstance(out, (tuple, list, dict)) else cts[0])
                rows.append(flatten(gs)[0])
            per_input = []
            for j, x in enumerate(flatten(tuple(args[a] for a in picks))[0]):
                shape = tuple(y.shape) + tuple(x.shape)
                if rows:
                    per_input.append(reshape(stack([r[j] for r in rows]), shape))
                else:
                    per_input.append(zeros(shape, dtype=x.dtype))
            jacs.append(per_input)
        _, ispec = flatten(tuple(args[a] for a in picks))
        per_out = []
        for per_input in jacs:
            tree = unflatten(per_input, ispec)
            per_out.append(tree if isinstance(argnums, tuple) else tree[0])
        result = unflatten(per_out, ospec)
        return (result, res[2]) if has_aux else result

    return wrapper


def hessian(func, argnums=0):
    """torch.func.hessian: the Jacobian of the Jacobian (reverse over reverse here)."""
    return jacrev(jacrev(func, argnums), argnums)
