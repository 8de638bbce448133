"""functional_call: a module called with other tensors in place of its parameters."""
from ..tensor import Tensor


def functional_call(module, parameter_and_buffer_dicts, args=None, kwargs=None, *, tie_weights=True, strict=False):
    """torch.func.functional_call: ``module(*args, **kwargs)`` with the tensors of
    ``parameter_and_buffer_dicts`` (a dict by dotted name, or a tuple of dicts) standing for its
    parameters during the call; the module is left as it was. With tie_weights, a parameter
    shared under two names takes the given tensor under either name."""
    dicts = parameter_and_buffer_dicts
    if isinstance(dicts, dict):
        given = dict(dicts)
    elif isinstance(dicts, (tuple, list)) and all(isinstance(d, dict) for d in dicts):
        given = {}
        for d in dicts:
            repeated = given.keys() & d.keys()
            if repeated:
                raise ValueError(f"{sorted(repeated)} appeared in multiple dictionaries; behavior of functional call "
                                 "is ambiguous")
            given.update(d)
    else:
        raise ValueError(f"Expected parameter_and_buffer_dicts to be a dict, or a list/tuple of dicts, but got "
                         f"{type(dicts)}")
    places = {}  # dotted name -> (owning module, attribute), every name a shared parameter goes by
    by_param = {}
    for m_name, m in _all_modules(module):
        for name, p in m._parameters.items():
            full = f"{m_name}.{name}" if m_name else name
            places[full] = (m, name)
            if p is not None:
                by_param.setdefault(id(p), []).append(full)
    unexpected = [k for k in given if k not in places]
    missing = [k for k in places if k not in given]
    if tie_weights:
        for names in by_param.values():
            tied = [n for n in names if n in given]
            if len(tied) > 1 and any(given[n] is not given[tied[0]] for n in tied):
                raise ValueError(f"functional_call got multiple values for keys {tied}, which are tied. Consider "
                                 "using tie_weights=False")
            if tied:
                for n in names:
                    if n not in given:
                        given[n] = given[tied[0]]
                        missing.remove(n)
    if strict and (missing or unexpected):
        parts = []
        if unexpected:
            parts.append("Unexpected key(s): " + ", ".join(repr(k) for k in unexpected) + ".")
        if missing:
            parts.append("Missing key(s): " + ", ".join(repr(k) for k in missing) + ".")
        raise RuntimeError(f"Error(s) in reparametrizing for {type(module).__name__}:\n\t" + "\n\t".join(parts))
    for k, v in given.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"functional_call: the value for '{k}' is a {type(v).__name__}, not a Tensor")
    saved = [(m, name, m._parameters[name]) for k, (m, name) in places.items() if k in given]
    try:
        for k, v in given.items():
            if k not in places:
                continue  # (torch sets an unknown name as an attribute for the call; nothing reads it here)
            m, name = places[k]
            m._parameters[name] = v  # (a plain tensor where a Parameter stood: only for this call)
        if args is None:
            args = ()
        elif not isinstance(args, tuple):
            args = (args,)
        return module(*args, **(kwargs or {}))
    finally:
        for m, name, p in reversed(saved):
            m._parameters[name] = p


def _all_modules(module, prefix=""):
    """Every (dotted name, module), a module reached twice under each of its names."""
    yield prefix, module
    for name, m in module._modules.items():
        if m is not None:
            yield from _all_modules(m, f"{prefix}.{name}" if prefix else name)
