"""Nested arguments and results (tuples, lists, dicts of tensors) as flat lists, as torch.func's pytrees.

The walks are module functions, not closures that call themselves: a nested function that refers to
itself is a reference cycle, which would hold the leaves it saw until the cyclic collector runs."""


def flatten(tree):
    """(leaves, spec): the leaves of nested tuples, lists and dicts in order, and how to rebuild them."""
    leaves = []
    return leaves, _walk(tree, leaves)


def _walk(v, leaves):
    if isinstance(v, (tuple, list)):
        return (type(v), tuple(_walk(x, leaves) for x in v))
    if isinstance(v, dict):
        return (dict, tuple((k, _walk(x, leaves)) for k, x in v.items()))
    leaves.append(v)
    return None


def unflatten(leaves, spec):
    return _build(spec, iter(leaves))


def _build(s, it):
    if s is None:
        return next(it)
    kind, children = s
    if kind is dict:
        return {k: _build(c, it) for k, c in children}
    items = [_build(c, it) for c in children]
    return kind(*items) if hasattr(kind, "_fields") else kind(items)  # (a namedtuple takes fields)


def broadcast_prefix(prefix, tree, is_leaf_value):
    """``prefix`` (a leaf value, or nested containers matching the top of ``tree``) repeated down
    to each leaf of ``tree``: one value per leaf; ValueError when the structures differ."""
    out = []
    _repeat(prefix, tree, is_leaf_value, out)
    return out


def _repeat(p, v, is_leaf_value, out):
    if is_leaf_value(p):
        out.extend([p] * len(flatten(v)[0]))
    elif isinstance(p, dict) and isinstance(v, dict) and p.keys() == v.keys():
        for k in v:
            _repeat(p[k], v[k], is_leaf_value, out)
    elif isinstance(p, (tuple, list)) and isinstance(v, (tuple, list)) and len(p) == len(v):
        for a, b in zip(p, v):
            _repeat(a, b, is_leaf_value, out)
    else:
        raise ValueError("structure mismatch")
