"""vmap: torch.func.vmap's arguments, checks and errors; the work is batched replay (batched.py)
where the program allows it, else one call of ``func`` per sample, stacked."""
import contextlib
import functools

import numpy as np

from ..tensor import Tensor
from ._tree import broadcast_prefix, flatten, unflatten

RANDOMNESS = ("error", "different", "same")


def _name(func):
    return getattr(func, "__name__", repr(func))


def _is_dim(p):
    return p is None or (isinstance(p, int) and not isinstance(p, bool))


def vmap(func, in_dims=0, out_dims=0, randomness="error", *, chunk_size=None):
    """torch.func.vmap: ``func`` mapped over a dimension of its inputs (``in_dims``: an int, or a
    tuple matching the positional arguments, nested like them, None for an argument not mapped),
    the results stacked at ``out_dims``. Random ops inside raise (randomness='error'), draw per
    sample ('different') or once for the whole batch ('same').

    Batched replay: the first call records ``func`` on one sample as a program and replays it over
    the whole batch, a row at a time, each row's NumPy forward applied to all samples at once
    (batched.py says which rows batch and how); ``vmap(grad(f))`` batches ``f`` and differentiates
    the batch, so per-sample gradients come out of one backward. A sample whose recorded guards
    fail (a value read into Python) runs the program variant of its own branch, the samples of one
    variant batched together. Programs with rows that do not batch, random ops in randomness='error'
    mode, or transforms other than grad inside run ``func`` once per sample: the returned function counts its
    ``batched`` and ``looped`` calls, and ``why`` says why the last call looped. ``chunk_size``
    is checked; the batched replay runs the batch whole."""
    if randomness not in RANDOMNESS:
        raise RuntimeError(f"Only allowed values for randomness are 'error', 'different', or 'same'. Got {randomness}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"vmap: chunk_size should be None or greater than 0. (got {chunk_size})")
    from .batched import BatchedFunction
    batched = BatchedFunction(func, randomness)

    @functools.wraps(func, updated=())  # (not func.__dict__: a transform's marks are its own)
    def wrapper(*args, **kwargs):
        leaves, spec, dims, size = _mapped_inputs(func, in_dims, args)
        result = batched(leaves, spec, dims, size, kwargs)
        wrapper.why = batched.why
        if result is None:
            wrapper.looped += 1
            result = _loop(func, leaves, spec, dims, size, kwargs, randomness)
        else:
            wrapper.batched += 1
        return _outputs(func, result, out_dims)

    wrapper.looped = wrapper.batched = 0
    wrapper.why = None
    wrapper._batched = batched
    return wrapper


def _mapped_inputs(func, in_dims, args):
    """(flat leaves of args, their spec, each leaf's mapped dim or None, the batch size), with
    torch's errors."""
    name = _name(func)
    if not args:
        raise ValueError(f"vmap({name})(<inputs>): got no inputs. Maybe you forgot to add inputs, or you are trying "
                         "to vmap over a function with no inputs. The latter is unsupported.")
    if not (isinstance(in_dims, int) and not isinstance(in_dims, bool) or isinstance(in_dims, tuple)):
        raise ValueError(f"vmap({name}, in_dims={in_dims}, ...)(<inputs>): expected `in_dims` to be int or a "
                         f"(potentially nested) tuple matching the structure of inputs, got: {type(in_dims)}.")
    if isinstance(in_dims, tuple) and len(in_dims) != len(args):
        raise ValueError(f"vmap({name}, in_dims={in_dims}, ...)(<inputs>): in_dims is not compatible with the "
                         f"structure of `inputs`: in_dims has {len(in_dims)} entries but there are {len(args)} inputs.")
    leaves, spec = flatten(args)
    try:
        dims = broadcast_prefix(in_dims, args, _is_dim)
    except ValueError:
        raise ValueError(f"vmap({name}, in_dims={in_dims}, ...)(<inputs>): in_dims is not compatible with the "
                         "structure of `inputs`.") from None
    sizes = []
    for k, (x, d) in enumerate(zip(leaves, dims)):
        if d is None:
            continue
        if not isinstance(x, Tensor):
            raise ValueError(f"vmap({name}, in_dims={in_dims}, ...)(<inputs>): Got in_dim={d} for an input but the "
                             f"input is of type {type(x)}. We cannot vmap over non-Tensor arguments, please use None "
                             "as the respective in_dim")
        n = x.dim()
        if not -n <= d < n:
            raise ValueError(f"vmap({name}, in_dims={in_dims}, ...)(<inputs>): Got in_dim={d} for some input, but "
                             f"that input is a Tensor of dimensionality {n} so expected in_dim to satisfy "
                             f"-{n} <= in_dim < {n}.")
        dims[k] = d % n
        sizes.append(x.shape[dims[k]])
    if not sizes:
        raise ValueError("vmap: Expected at least one Tensor to vmap over")
    if len(set(sizes)) > 1:
        raise ValueError(f"vmap: Expected all tensors to have the same size in the mapped dimension, got sizes "
                         f"{sizes} for the mapped dimension")
    return leaves, spec, dims, sizes[0]


class _RandomnessError:
    """Stands for the generator while a sample runs in randomness='error' mode."""

    def __getattr__(self, name):
        raise RuntimeError("vmap: called random operation while in randomness error mode. Please either use the "
                           "'same' or 'different' randomness flags on vmap or perform the randomness operation out "
                           "of vmap")


@contextlib.contextmanager
def _no_random():
    from .. import creation
    rng = creation._rng[0]
    creation._rng[0] = _RandomnessError()
    try:
        yield
    finally:
        creation._rng[0] = rng


def sample(leaves, dims, b):
    """The b-th sample of the mapped leaves (C-ordered, as a tensor made for one sample is)."""
    return [x if d is None else x.select(d, b).contiguous() for x, d in zip(leaves, dims)]


def _loop(func, leaves, spec, dims, size, kwargs, randomness):
    """func once per sample: (one column of per-sample values per output leaf, the output spec)."""
    from .. import creation
    state = creation._rng[0].bit_generator.state if randomness == "same" else None
    rows, ospec = [], None
    for b in range(size):
        if state is not None:
            creation._rng[0].bit_generator.state = state  # every sample draws what the first drew
        with _no_random() if randomness == "error" else contextlib.nullcontext():
            out = func(*unflatten(sample(leaves, dims, b), spec), **kwargs)
        flat, ospec = flatten(out)
        rows.append(flat)
    return [list(c) for c in zip(*rows)], ospec


def _outputs(func, result, out_dims):
    """Each output column (a list of per-sample values, or a Tensor batched at dim 0) with its
    batch dim at out_dims, in func's output structure."""
    from ..ops import permute, stack
    columns, ospec = result
    name = _name(func)
    if not (_is_dim(out_dims) or isinstance(out_dims, tuple)):
        raise ValueError(f"vmap({name}, ..., out_dims={out_dims}): `out_dims` must be an int, None or a python "
                         "collection of ints representing where in the outputs the vmapped dimension should appear.")
    try:
        dims = broadcast_prefix(out_dims, unflatten(list(range(len(columns))), ospec), _is_dim)
    except ValueError:
        raise ValueError(f"vmap({name}, ..., out_dims={out_dims})(<inputs>): out_dims is not compatible with the "
                         "structure of `outputs`.") from None
    final = []
    for column, d in zip(columns, dims):
        if isinstance(column, list):
            bad = [c for c in column if not isinstance(c, Tensor)]
            if d is None:
                first = column[0]
                if not bad and any(not np.array_equal(first._value, c._value) for c in column[1:]):
                    raise ValueError(f"vmap({name}, ...): `{name}` can not return a BatchedTensor when out_dim is None")
                final.append(first)
                continue
            if bad:
                raise ValueError(f"vmap({name}, ...): `{name}` must only return Tensors, got type {type(bad[0])}. "
                                 "Did you mean to set out_dims= to None for output?")
            column = stack(column)
        if d is None:
            if column.shape[0] and any(not np.array_equal(column._value[0], v) for v in column._value[1:]):
                raise ValueError(f"vmap({name}, ...): `{name}` can not return a BatchedTensor when out_dim is None")
            final.append(column[0])
            continue
        n = column.dim()
        if not -n <= d < n:
            raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d})")
        d %= n
        if d:
            order = list(range(1, n))
            order.insert(d, 0)
            column = permute(column, order)
        final.append(column)
    return unflatten(final, ospec)
