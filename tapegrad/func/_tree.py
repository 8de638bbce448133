"""Nested arguments and results (tuples, lists, dicts of tensors) as flat lists, as torch.func's pytrees."""


def flatten(tree):
    """(leaves, spec): the leaves of nested tuples, lists and dicts in order, and how to rebuild them."""
    leaves = []

    def walk(v):
        if isinstance(v, (tuple, list)):
            return (type(v), tuple(walk(x) for x in v))
        if isinstance(v, dict):
            return (dict, tuple((k, walk(x)) for k, x in v.items()))
        leaves.append(v)
        return None

    return leaves, walk(tree)


def unflatten(leaves, spec):
    it = iter(leaves)

    def build(s):
        if s is None:
            return next(it)
        kind, children = s
        if kind is dict:
            return {k: build(c) for k, c in children}
        items = [build(c) for c in children]
        return kind(*items) if hasattr(kind, "_fields") else kind(items)  # (a namedtuple takes fields)

    return build(spec)


def broadcast_prefix(prefix, tree, is_leaf_value):
    """``prefix`` (a leaf value, or nested containers matching the top of ``tree``) repeated down
    to each leaf of ``tree``: one value per leaf; ValueError when the structures differ."""
    out = []

    def walk(p, v):
        if is_leaf_value(p):
            out.extend([p] * len(flatten(v)[0]))
        elif isinstance(p, dict) and isinstance(v, dict) and p.keys() == v.keys():
            for k in v:
                walk(p[k], v[k])
        elif isinstance(p, (tuple, list)) and isinstance(v, (tuple, list)) and len(p) == len(v):
            for a, b in zip(p, v):
                walk(a, b)
        else:
            raise ValueError("structure mismatch")

    walk(prefix, tree)
    return out
