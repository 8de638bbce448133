"""tg.compile: record a function's tensor program once per guard signature and replay it.

``compile(fn)`` returns a function (or, for an nn.Module, a module sharing its parameters)
whose first call with a new signature runs ``fn`` eagerly and records a program (program.py);
later calls whose guards hold replay that program. The guards, in the order they are checked:
the key (each tensor argument's shape, dtype, device and requires_grad, which arguments share
storage, every other argument by type and value, and grad mode; a call of tensors only is first
compared with the last replayed key of tensors only, without building its own), then per
variant the Python values ``fn`` read from its closure cells and globals (by value), the
tensors it read from its closure, globals and module (by identity: replacing one is a new
signature), and inside the replay the values Python read out of tensors. Up to ``cache_size_limit`` variants per
function; past that it runs eagerly with one warning, as torch's recompile limit does."""
import gc
import threading
import types
import warnings
import weakref

from numpy import ndarray

from ..grad_mode import is_grad_enabled
from ..ops import _record
from ..tape import _hot
from ..tensor import Tensor
from .program import GuardFailed, Program, Recording, Unreplayable

cache_size_limit = 8  # variants per compiled function (torch._dynamo.config.cache_size_limit)

_ALL = weakref.WeakSet()  # every compiled function, for reset()
_SCALARS = (int, float, bool, str, bytes, complex, type(None))


class _Variant:
    __slots__ = ("program", "why", "checks", "plain")

    def __init__(self, program, why, checks, plain):
        self.program, self.why, self.checks = program, why, checks
        self.plain = plain  # its key is of tensor arguments only, none sharing storage: _same_key can check it


class CompiledFunction:
    """What tg.compile returns for a function: call it as ``fn``."""

    def __init__(self, fn, fullgraph=False):
        self._fn = fn
        self._fullgraph = fullgraph
        self._variants = {}  # key -> [_Variant]
        # (argument keys, grad mode, key, variants, seen: _same_key's memo) of the last replay of a plain
        # key: checked first
        self._last = None
        self._count = 0
        self._warned = False
        self._lock = threading.Lock()
        self.trace_count = 0
        self.replay_count = 0
        self.eager_count = 0
        self.__wrapped__ = fn
        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            try:
                setattr(self, attr, getattr(fn, attr))
            except (AttributeError, TypeError):
                pass
        _ALL.add(self)

    def __get__(self, obj, objtype=None):  # a compiled method binds like a function
        return self if obj is None else types.MethodType(self, obj)

    def __call__(self, *args, **kwargs):
        if getattr(_hot, "prog", None) is not None:  # called while a program records: part of that one
            return self._fn(*args, **kwargs)
        last = self._last
        if last is not None and not kwargs and last[1] == is_grad_enabled() and _same_key(args, last[0], last[4]):
            key, variants, tensors = last[2], last[3], args
        else:
            last = None
            tensors, roots = [], []
            key = (_keys(args, tensors, roots), _key(kwargs, tensors, roots) if kwargs else None, is_grad_enabled(),
                   None if len(roots) < 2 or len(set(roots)) == len(roots) else _aliases(roots))
            variants = self._variants.get(key, ())
        for v in variants:
            if v.checks and not _checks_hold(v.checks):
                continue
            if v.program is None:  # this signature cannot replay (stats says why)
                self.eager_count += 1
                return self._fn(*args, **kwargs)
            try:
                outs = v.program.replay(tensors)
            except GuardFailed:  # a value Python read differs: try the next variant, or record one
                continue
            self.replay_count += 1
            if last is None and v.plain:
                self._last = (key[0], key[2], key, variants, [_UNSEEN] * len(key[0]))
            for i, c in enumerate(v.program.consts):
                if c is not None:
                    outs[i] = c
            return v.program.structure(outs)
        if self._count >= cache_size_limit:
            if not self._warned:
                self._warned = True
                warnings.warn(f"tg.compile: {getattr(self._fn, '__qualname__', self._fn)} has recorded "
                              f"{cache_size_limit} variants (cache_size_limit); it runs eagerly from now on",
                              UserWarning, stacklevel=2)
            self.eager_count += 1
            return self._fn(*args, **kwargs)
        return self._record(key, args, kwargs, tensors)

    def _record(self, key, args, kwargs, tensors):
        checks, sources = _sources(self._fn)
        rec = Recording(tensors, sources, self._fullgraph)
        _hot.prog = rec
        _record.PROGRAMS += 1
        try:
            result = self._fn(*args, **kwargs)
        finally:
            _record.PROGRAMS -= 1
            _hot.prog = None
        self._count += 1
        self.trace_count += 1
        outputs, structure = _flatten(result)
        program, why = None, None
        # planning makes a few objects per row and frees none: the cyclic collector's passes over
        # them cost a third of a 10,000-row recording, and find nothing to free
        collecting = gc.isenabled()
        gc.disable()
        try:
            program = rec.finish(outputs)
            why = rec.bad
        except Unreplayable as e:
            why = str(e)
        finally:
            if collecting:
                gc.enable()
        if program is not None and any(not isinstance(t, Tensor) and t.__class__ not in _SCALARS for t in outputs):
            program, why = None, "it returns a value that is neither a tensor nor a Python scalar (a replay would " \
                                 "return the recorded one)"
        if program is not None:
            program.structure = structure
            program.consts = [None if isinstance(t, Tensor) else t for t in outputs]
        plain = key[1] is None and key[3] is None and all(k[0] == "T" for k in key[0])
        self._variants.setdefault(key, []).append(_Variant(program, why, checks, plain))
        return result

    # -- introspection -----------------------------------------------------------------------
    def _dump_text(self):
        lines = [f"compiled {getattr(self._fn, '__qualname__', self._fn)}: {self.trace_count} recorded, "
                 f"{self.replay_count} replayed"]
        k = 0
        for key, variants in self._variants.items():
            for v in variants:
                lines.append(f"program {k}: guards: {_describe_key(key)}")
                for kind, what, expect in v.checks:
                    lines.append(f"  guard {kind} {what} == {expect!r}")
                if v.program is None:
                    lines.append(f"  runs eagerly: {v.why}")
                else:
                    lines.extend("  " + line for line in v.program.listing())
                k += 1
        return "\n".join(lines) + "\n"

    def _reset(self):
        self._variants.clear()
        self._last = None
        self._count = 0
        self._warned = False
        self.trace_count = self.replay_count = self.eager_count = 0




# -- keys and guards -----------------------------------------------------------------------------
def _key(v, tensors, roots):
    """A hashable description of an argument; its tensors are appended to ``tensors``, the ids
    of their storage to ``roots``."""
    if isinstance(v, Tensor):
        tensors.append(v)
        a = v._value
        roots.append(id(a) if a.__class__ is ndarray and a.base is None else _root(a))
        return _tensor_key(v, a)
    c = v.__class__
    if c in _SCALARS:
        return (c, v) if c is not float or v == v else (c, "nan")
    if c is tuple or c is list:
        return (c, _keys(v, tensors, roots))
    if c is dict:
        return (c, tuple((k, _key(x, tensors, roots)) for k, x in v.items()))
    try:
        hash(v)
    except TypeError:
        return ("id", id(v))
    if isinstance(v, (types.FunctionType, type, types.ModuleType)):
        return ("id", id(v))
    return ("obj", c, id(v))


def _keys(items, tensors, roots):
    """_key of each item, a tensor's inline: a call's arguments are mostly tensors, and guard
    checking is paid on every replay (the aliasing too: a fresh array is its own root)."""
    out = []
    for v in items:
        if isinstance(v, Tensor):
            tensors.append(v)
            a = v._value
            roots.append(id(a) if a.__class__ is ndarray and a.base is None else _root(a))
            out.append(_tensor_key(v, a))
        else:
            out.append(_key(v, tensors, roots))
    return tuple(out)


def _same_key(args, keys, seen):
    """Whether tensor arguments ``args`` have the argument key ``keys`` (all tensors) and share no
    storage, i.e. a plain key's; as _keys and _aliases would find, without building a key.

    ``seen`` holds for each argument a weak reference to the last array found to fit its key, and
    that array's storage: the same array again fits without a look at its shape and dtype (an
    array's shape, dtype and base stay as they are: a tensor hands out views, never its array).
    Each entry is replaced whole, so threads sharing ``seen`` see one array's entry or another's."""
    if len(args) != len(keys):
        return False
    roots = set()
    i = 0
    for v, key, (ref, root) in zip(args, keys, seen):
        if v.__class__ is not Tensor and not isinstance(v, Tensor) or v._rg is not key[3]:
            return False
        a = v._value
        if ref() is not a:
            _, shape, dtype, _ = key
            if a.__class__ is not ndarray or a.shape != shape or a.dtype is not dtype and a.dtype != dtype:
                return False  # (a GPU value: its own key, with its device)
            root = id(a) if a.base is None else _root(a)
            seen[i] = (weakref.ref(a), root)
        roots.add(root)
        i += 1
    return len(roots) == len(keys)


_UNSEEN = (lambda: None, 0)  # a ``seen`` entry before any array


def _tensor_key(v, a):
    """A tensor argument's key: "T" on the CPU, "G" with its device on a GPU (a program recorded
    on one device never replays on another)."""
    if a.__class__ is ndarray:
        return ("T", a.shape, a.dtype, v._rg)
    return ("G", a.shape, a.dtype, v._rg, str(v.device))


def _root(v):
    """The id of the storage a tensor's value views."""
    if v.__class__ is not ndarray:  # a GPU value: its device buffer (its views share it)
        return id(v.d)
    b = v.base
    while b.__class__ is ndarray:  # (a base that is no array, a buffer, ends the walk)
        v = b
        b = v.base
    return id(v)


def _aliases(roots):
    """Which tensor arguments are one tensor, or share storage (the first index of each root);
    the key holds None where none do."""
    first = {}
    return tuple(first.setdefault(r, i) for i, r in enumerate(roots))


def _describe_key(key):
    args, kwargs, grad, aliases = key
    parts = []

    def walk(k):
        if k[0] == "T":
            return f"Tensor(shape={list(k[1])}, dtype={k[2]}, requires_grad={k[3]})"
        if k[0] == "G":
            return f"Tensor(shape={list(k[1])}, dtype={k[2]}, requires_grad={k[3]}, device='{k[4]}')"
        if k[0] in (tuple, list):
            return "(" + ", ".join(walk(x) for x in k[1]) + ")"
        if k[0] is dict:
            return "{" + ", ".join(f"{n!r}: {walk(x)}" for n, x in k[1]) + "}"
        if k[0] in ("id", "obj"):
            return f"<object id {k[-1]}>"
        return repr(k[1])
    parts.append("args " + walk((tuple, args)))
    if kwargs is not None:
        parts.append("kwargs " + walk(kwargs))
    parts.append(f"grad_enabled={grad}")
    if aliases is not None:
        parts.append(f"aliases={list(aliases)}")
    return "; ".join(parts)


_MISSING = object()


def _checks_hold(checks):
    for kind, where, expect in checks:
        if kind == "cell":
            try:
                v = where.cell_contents
            except ValueError:
                v = _MISSING
        else:  # "global" or "attr": (namespace, name)
            ns, name = where
            v = ns.get(name, _MISSING) if isinstance(ns, dict) else getattr(ns, name, _MISSING)
        if v.__class__ in _SCALARS or v.__class__ is tuple:
            if v.__class__ is not expect.__class__ or not (v == expect or v != v and expect != expect):
                return False
        elif v is not expect:
            return False
    return True


def _sources(fn):
    """(checks, tensors): the guards on what ``fn`` reads from outside (closure cells and
    globals: Python values by value, anything else by identity), and the tensors it may read
    from there, from modules (their parameters and buffers, recursively) and containers."""
    checks, tensors = [], {}
    seen = set()

    def collect(v, depth=0):
        if id(v) in seen or depth > 4:
            return
        seen.add(id(v))
        if isinstance(v, Tensor):
            tensors[id(v)] = v
        elif isinstance(v, (list, tuple)):
            for x in v:
                collect(x, depth + 1)
        elif isinstance(v, dict):
            for x in v.values():
                collect(x, depth + 1)
        elif hasattr(v, "_parameters") and hasattr(v, "_modules"):  # an nn.Module
            for x in v.__dict__.values():
                collect(x, depth + 1)
        elif hasattr(v, "param_groups") and hasattr(v, "state"):  # an optimizer
            collect(v.param_groups, depth + 1)
            collect(v.state, depth + 1)

    def guard(kind, where, v):
        checks.append((kind, where, v))
        collect(v)

    f = fn
    if isinstance(f, types.MethodType):
        collect(f.__self__)
        f = f.__func__
    if hasattr(f, "_parameters") and hasattr(f, "_modules"):  # a module itself
        collect(f)
        f = type(f).forward
    code = getattr(f, "__code__", None)
    if code is None:
        return checks, tensors
    for name, cell in zip(code.co_freevars, f.__closure__ or ()):
        try:
            v = cell.cell_contents
        except ValueError:
            continue
        if not isinstance(v, (types.FunctionType, types.ModuleType, type)):
            guard("cell", cell, v)
    g = f.__globals__
    for name in _names(code):
        v = g.get(name, _MISSING)
        if v is _MISSING or isinstance(v, (types.FunctionType, types.ModuleType, type, CompiledFunction)):
            continue
        guard("global", (g, name), v)
    return checks, tensors


def _names(code):
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _names(c)
    return names


# -- outputs ---------------------------------------------------------------------------------------
def _flatten(result):
    """(leaves, rebuild): the tensors and values of a result, and how to put them back."""
    leaves = []
    build = _builder(result, leaves)
    return leaves, lambda outs: build(iter(outs))


def _builder(v, leaves):
    """How to rebuild v from an iterator over its leaves (appended to ``leaves``). A module function:
    a nested one that calls itself is a reference cycle, holding the leaves until the collector runs."""
    c = v.__class__
    if c is tuple or c is list:
        parts = [_builder(x, leaves) for x in v]
        return lambda it: c(p(it) for p in parts)
    if isinstance(v, tuple):  # a named tuple (torch.return_types.max...)
        parts = [_builder(x, leaves) for x in v]
        return lambda it: c(*(p(it) for p in parts))
    if c is dict:
        parts = [(k, _builder(x, leaves)) for k, x in v.items()]
        return lambda it: {k: p(it) for k, p in parts}
    leaves.append(v)
    return next


# -- the public names ------------------------------------------------------------------------------
def compile(model=None, *, fullgraph=False, dynamic=None, backend=None, mode=None, options=None, disable=False):
    """torch.compile's signature: compile ``model`` (a function or an nn.Module), or return a
    decorator when called without it. ``dynamic``, ``backend``, ``mode`` and ``options`` are
    accepted and have no effect: there is one backend, the tape replay."""
    if model is None:
        def decorate(fn):
            return compile(fn, fullgraph=fullgraph, dynamic=dynamic, backend=backend, mode=mode,
                           options=options, disable=disable)
        return decorate
    if not callable(model):
        raise RuntimeError("Unsupported: tg.compile() expects a callable (a function or an nn.Module), "
                           f"got {type(model).__name__}")
    if disable:
        return model
    if hasattr(model, "_parameters") and hasattr(model, "_modules"):
        return _compiled_module(model, fullgraph)
    return CompiledFunction(model, fullgraph)


def _compiled_module(module, fullgraph):
    """A module whose calls are compiled and whose parameters are ``module``'s (torch's
    OptimizedModule: ``_orig_mod`` is the original)."""
    from ..nn.modules import Module

    class OptimizedModule(Module):
        def __init__(self, mod):
            object.__setattr__(self, "_orig_mod", mod)
            object.__setattr__(self, "_compiled", CompiledFunction(mod.__call__, fullgraph))
            object.__setattr__(self, "_parameters", mod._parameters)
            object.__setattr__(self, "_modules", {"_orig_mod": mod})
            object.__setattr__(self, "_buffers", getattr(mod, "_buffers", {}))

        def __call__(self, *args, **kwargs):
            return self._compiled(*args, **kwargs)

        forward = __call__

        def __getattr__(self, name):
            return getattr(self._orig_mod, name)

        def parameters(self, recurse=True):
            return self._orig_mod.parameters(recurse)

        def named_parameters(self, *a, **k):
            return self._orig_mod.named_parameters(*a, **k)

        @property
        def trace_count(self):
            return self._compiled.trace_count

        @property
        def replay_count(self):
            return self._compiled.replay_count

        def _dump_text(self):
            return self._compiled._dump_text()

        def __repr__(self):
            return f"OptimizedModule(\n  (_orig_mod): {self._orig_mod!r}\n)"

    return OptimizedModule(module)


def _of(fn):
    c = getattr(fn, "_compiled", fn)
    if not isinstance(c, CompiledFunction):
        raise TypeError(f"tg.compiler.stats() expects a function made by tg.compile, got {type(fn).__name__}")
    return c


def stats(fn):
    """What happened to a compiled function: its recordings, replays, eager calls and variants."""
    c = _of(fn)
    variants = [v for vs in c._variants.values() for v in vs]
    return {"trace_count": c.trace_count, "replay_count": c.replay_count, "eager_count": c.eager_count,
            "variants": len(variants),
            "unreplayable": [v.why for v in variants if v.program is None]}


def reset():
    """Forget every recorded program of every compiled function (torch.compiler.reset)."""
    for c in list(_ALL):
        c._reset()


__all__ = ["compile", "stats", "reset", "cache_size_limit", "CompiledFunction", "Program"]
