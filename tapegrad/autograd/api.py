"""backward, grad and the legacy Variable, with torch's semantics and errors."""
import warnings

import numpy as np

from ..dtypes import get_default_dtype
from ..engine import driver
from ..engine.delivery import give_grad
from ..engine.errors import blame_leaf
from ..grad_mode import set_grad_enabled
from ..tape import recording_program
from ..tensor import Size, Tensor
from . import anomaly_mode


def _tuple(x):
    if x is None:
        return None
    if isinstance(x, Tensor):
        return (x,)
    return tuple(x)


def _seeds(outputs, grad_outputs, create_graph):
    """Group the output gradients by tape: {tape: {slot: gradient}}, checked as torch checks them."""
    if grad_outputs is None:
        if len(outputs) == 1:  # loss.backward(): one scalar output on a tape
            y = outputs[0]
            if y.__class__ is Tensor and y._rg and y._tape is not None and y._value.size == 1:
                v = y._value  # (np.array: np.ones costs 0.6 us more)
                return {y._tape: {y._slot: np.array(1, v.dtype).reshape(v.shape)}}, []
        grad_outputs = (None,) * len(outputs)
    if len(grad_outputs) != len(outputs):
        raise RuntimeError(f"grad can be implicitly created only for scalar outputs" if not grad_outputs else
                           f"got {len(grad_outputs)} tensors and {len(outputs)} gradients")
    seeds, leaf_seeds = {}, []
    for i, (y, g) in enumerate(zip(outputs, grad_outputs)):
        if not isinstance(y, Tensor):
            raise TypeError(f"expected Tensor as element {i} in argument 0, but got {type(y).__name__}")
        if not y._rg:
            raise RuntimeError(f"element {i} of tensors does not require grad and does not have a grad_fn")
        if g is None:
            if y._value.size != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            g = np.ones(y._value.shape, y._value.dtype)
        else:
            if not isinstance(g, Tensor):
                from .. import ops
                g = ops._leaf(np.asarray(g, dtype=y._value.dtype))
            if g._value.shape != y._value.shape:
                raise RuntimeError(f"Mismatch in shape: grad_output[{i}] has a shape of {Size(g._value.shape)!r} "
                                   f"and output[{i}] has a shape of {Size(y._value.shape)!r}.")
            if g._value.dtype != y._value.dtype:  # torch casts it to the output's dtype (a float32 output rounds it)
                from .. import ops
                g = ops.to_dtype(g, y.dtype)
            g = g if create_graph else g._value
        if y._tape is None:
            leaf_seeds.append((y, g))
            continue
        tape_seeds = seeds.setdefault(y._tape, {})
        s = y._slot
        tape_seeds[s] = g if s not in tape_seeds else tape_seeds[s] + g
    return seeds, leaf_seeds


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, grad_variables=None, inputs=None):
    tensors = _tuple(tensors)
    grad_tensors = _tuple(grad_tensors if grad_tensors is not None else grad_variables)
    if retain_graph is None:
        retain_graph = create_graph
    inputs = _tuple(inputs)
    if inputs is not None and len(inputs) == 0:
        raise RuntimeError("`inputs` argument to `backward()` cannot be empty.")
    p = recording_program()
    if p is not None:  # inside a compiled function: a row of its program (a training step)
        return p.note_backward(lambda: _backward(tensors, grad_tensors, retain_graph, create_graph, inputs),
                               tensors, grad_tensors, retain_graph, create_graph, inputs)
    _backward(tensors, grad_tensors, retain_graph, create_graph, inputs)


def _backward(tensors, grad_tensors, retain_graph, create_graph, inputs):
    seeds, leaf_seeds = _seeds(tensors, grad_tensors, create_graph)
    want = _want_from_graph(seeds, inputs) if inputs is not None else None
    req = driver.Request(want, retain_graph, create_graph)
    with set_grad_enabled(create_graph):
        try:
            driver.run(seeds, req)
            if inputs is not None:
                for i, t in enumerate(inputs):
                    if i in req.results:
                        _give_grad(req, t, req.results[i], create_graph)
            for y, g in leaf_seeds:
                if inputs is None or any(y is t for t in inputs):
                    _give_grad(req, y, g if create_graph else np.array(g, copy=True), create_graph)
        except BaseException as exc:
            anomaly_mode.report(exc)
            raise


def _give_grad(req, t, g, create_graph):
    try:
        give_grad(t, g, create_graph)
    except BaseException as exc:
        blame_leaf(exc, req, t)
        raise


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, only_inputs=True,
         allow_unused=None, is_grads_batched=False, materialize_grads=False):
    outputs = _tuple(outputs)
    inputs = _tuple(inputs)
    if not inputs:
        raise RuntimeError("`inputs` argument to `grad()` cannot be empty.")
    for t in inputs:
        if not isinstance(t, Tensor):
            raise RuntimeError(f"all inputs have to be Tensors or GradientEdges, but got {type(t).__name__}")
    grad_outputs = _tuple(grad_outputs)
    if allow_unused is None:
        allow_unused = materialize_grads
    if materialize_grads and not allow_unused:
        raise ValueError("Expected allow_unused to be True or not passed when materialize_grads=True, but got: allow_unused=False.")
    if retain_graph is None:
        retain_graph = create_graph
    seeds, leaf_seeds = _seeds(outputs, grad_outputs, create_graph)
    want = _want_from_graph(seeds, inputs)
    req = driver.Request(want, retain_graph, create_graph)
    with set_grad_enabled(create_graph):
        try:
            driver.run(seeds, req)
        except BaseException as exc:
            anomaly_mode.report(exc)
            raise
    result = []
    for i, t in enumerate(inputs):
        g = req.results.get(i)
        for y, sg in leaf_seeds:
            if y is t:
                g = sg if g is None else g + sg
        if g is None:
            if not allow_unused:
                raise RuntimeError(f"The differentiated Tensor at index {i} appears to not have been used in the "
                                   "graph. Set allow_unused=True if this is the desired behavior.")
            if materialize_grads:
                from .. import ops
                g = ops._leaf(np.zeros_like(t._value))
            result.append(g)
            continue
        result.append(g if isinstance(g, Tensor) else _plain(g))
    return tuple(result)


def _plain(g):
    from .. import ops
    return ops._leaf(g)


def _want_from_graph(seeds, inputs):
    """Map each input to its slot on every tape reachable from the seeds (leaves may sit on several)."""
    tapes, stack = [], list(seeds)
    seen = set()
    while stack:
        tp = stack.pop()
        if id(tp) in seen:
            continue
        seen.add(id(tp))
        tapes.append(tp)
        stack.extend(older for older, _ in tp.links.values())
    want = {}
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"expected Tensor as element {i} in argument 1, but got {type(t).__name__}")
        if not t._rg:
            raise RuntimeError("One of the differentiated Tensors does not require grad")
        if t._tape is not None:
            want[(t._tape.serial, t._slot)] = i
            continue
        for tp in tapes:  # a leaf changed in place between uses has several slots on one tape
            for s, leaf in (tp.leaves or {}).items():
                if leaf is t:
                    want[(tp.serial, s)] = i
    return want


class _VariableMeta(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, Tensor)


class Variable(metaclass=_VariableMeta):
    """The legacy wrapper, as torch's: ``Variable(t)`` is a new leaf that shares t's storage and
    version counter (t itself is left alone); every Tensor is an instance."""

    def __new__(cls, data=None, requires_grad=False, volatile=False, _grad_fn=None, name=None):
        if volatile:
            warnings.warn("volatile was removed and now has no effect. Use `with torch.no_grad():` instead.",
                          UserWarning, stacklevel=2)
            if requires_grad:
                raise ValueError("Variable can't be volatile and require_grad at the same time!")
        if _grad_fn is not None:
            raise RuntimeError("_grad_fn argument to legacy Variable constructor is no longer supported.  Instead, "
                               "please invoke your _grad_fn to produce a variable with it as the _grad_fn.")
        if data is None:
            from .. import ops
            t = ops._leaf(np.empty(0, get_default_dtype().np))
        elif isinstance(data, Tensor):
            t = data.detach()
        else:
            raise TypeError(f"Variable data has to be a tensor, but got {type(data).__name__}")
        if requires_grad:
            if t._value.dtype.kind != "f":
                raise RuntimeError("Only Tensors of floating point and complex dtype can require gradients")
            t._rg = True
        if name is not None:
            t.name = name
        return t

