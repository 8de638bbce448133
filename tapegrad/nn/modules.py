"""Module, Parameter and the few layers that make training natural: Linear, Sequential,
activations and losses as modules, with torch's names and behaviour."""
import math
import weakref
from collections import OrderedDict

import numpy as np

from .. import creation, dtypes, ops
from ..grad_mode import no_grad
from ..tape import program_step
from ..tensor import Tensor
from . import functional as F

# Tensors made by Parameter(...). A Parameter is an ordinary leaf Tensor (the hot paths test
# `x.__class__ is Tensor`, so no subclass); isinstance(p, Parameter) looks it up here.
_parameters = weakref.WeakValueDictionary()


class _ParameterMeta(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, Tensor) and _parameters.get(id(obj)) is obj


class Parameter(metaclass=_ParameterMeta):
    """``Parameter(data, requires_grad=True)``: a leaf tensor sharing ``data``'s storage, that a
    Module registers as a parameter when assigned as an attribute."""

    def __new__(cls, data=None, requires_grad=True):
        if data is None:
            data = creation.empty(0)
        p = data.detach()  # the same storage and version counter, a leaf of its own
        p.requires_grad_(requires_grad)
        _parameters[id(p)] = p
        return p


class Module:
    """Base class of layers: holds parameters and submodules, registered by attribute assignment."""

    def __init__(self):
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required "forward" function')

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- registration --------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign parameters or modules before Module.__init__() call")
        params, modules = self._parameters, self._modules
        if isinstance(value, Parameter):
            self.__dict__.pop(name, None)
            modules.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            self.__dict__.pop(name, None)
            params.pop(name, None)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                                "(tapegrad.nn.Parameter or None expected)")
            params[name] = None
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module '{name}' "
                                "(tapegrad.nn.Module or None expected)")
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for table in ("_parameters", "_modules"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for table in (self._parameters, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' object to parameter '{name}' "
                            "(tapegrad.nn.Parameter or None required)")
        self._parameters[name] = param

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        self._modules[name] = module

    register_module = add_module

    # -- traversal -----------------------------------------------------------------------------
    def named_modules(self, memo=None, prefix=""):
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix="", recurse=True):
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mprefix}.{name}" if mprefix else name), p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    # -- state -------------------------------------------------------------------------------
    def train(self, mode=True):
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        program_step(self._zero_grad, (set_to_none,), defer=True)  # (a compiled training step replays it)

    def _zero_grad(self, set_to_none):
        for p in self.parameters():
            _zero_grad(p, set_to_none)

    def state_dict(self, prefix=""):
        return OrderedDict((name, p.detach()) for name, p in self.named_parameters(prefix))

    def load_state_dict(self, state_dict, strict=True):
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                               f"Missing key(s): {missing}. Unexpected key(s): {unexpected}.")
        for k, p in own.items():
            if k in state_dict:
                v = state_dict[k]
                v = v._value if isinstance(v, Tensor) else np.asarray(v)
                v = _moved(v, None, p.device)  # (torch's copy_ between devices)
                if v.shape != p._value.shape:
                    raise RuntimeError(f"size mismatch for {k}: copying a param with shape {list(v.shape)} from "
                                       f"checkpoint, the shape in current model is {list(p._value.shape)}.")
                with no_grad():
                    p._value[...] = v
                    p._bump_version()
        return _IncompatibleKeys(missing, unexpected)

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def to(self, *args, **kwargs):
        """Move and cast the parameters in place, as torch's: ``to(device)``, ``to(dtype)``, ``to(device,
        dtype)``, ``to(tensor)``; only floating parameters change dtype. Each stays the same Parameter
        (an optimizer holding it sees the change), its version bumped so that a graph that saved the
        old value refuses to backward through it; a .grad moves with it."""
        dt, device = ops.to_args(args, kwargs)
        for p in self.parameters():
            v = _moved(p._value, dt, device)
            if v is not p._value:
                p._value = v
                p._bump_version()
                if p._grad is not None:
                    p._grad = ops._leaf(_moved(p._grad._value, dt, device))
        return self

    def float(self):
        return self.to(dtypes.float32)

    def double(self):
        return self.to(dtypes.float64)

    def cuda(self, device=None):
        return self.to("cuda" if device is None else device)

    def cpu(self):
        return self.to("cpu")

    # -- printing ------------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = []
        for name, m in self._modules.items():
            body = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        head = f"{type(self).__name__}(" + (extra + "\n" if extra else "\n")
        return head + "".join(f"  {ln}\n" for ln in lines) + ")"


def _moved(v, dtype, device):
    """Value v cast to floating ``dtype`` and put on ``device`` (None: as it is); v itself where
    nothing changes."""
    if dtype is not None and v.dtype.kind == "f" and v.dtype != dtype.np:
        v = v.astype(dtype.np)
    if device is not None:
        v = ops.to_device(ops._leaf(v), device)._value
    return v


class _IncompatibleKeys:
    def __init__(self, missing_keys, unexpected_keys):
        self.missing_keys, self.unexpected_keys = missing_keys, unexpected_keys

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return f"_IncompatibleKeys(missing_keys={self.missing_keys}, unexpected_keys={self.unexpected_keys})"


def _zero_grad(p, set_to_none):
    if p._grad is None:
        return
    if set_to_none:
        p._grad = None
    else:
        if p._grad._tape is not None:
            p._grad = p._grad.detach()
        p._grad._value[...] = 0


# -- containers -------------------------------------------------------------------------------
class Sequential(Module):
    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, m in args[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(args):
                self.add_module(str(i), m)

    def forward(self, input):
        for m in self._modules.values():
            input = m(input)
        return input

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        if not -len(mods) <= idx < len(mods):
            raise IndexError(f"index {idx} is out of range")
        return mods[idx]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self


# -- layers -----------------------------------------------------------------------------------
def _uniform(shape, bound, dtype):
    """U(-bound, bound) from tapegrad's generator (seeded by tg.manual_seed)."""
    dt = (dtypes.as_dtype(dtype) if dtype is not None else dtypes.get_default_dtype()).np
    return creation._rng[0].uniform(-bound, bound, size=shape).astype(dt)


class Linear(Module):
    """``y = x @ weight.T + bias``, weight (out_features, in_features). torch's default init:
    kaiming-uniform with a=sqrt(5), which bounds both weight and bias by 1/sqrt(in_features)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
        self.weight = Parameter(ops._leaf(_uniform((out_features, in_features), bound, dtype)))
        if bias:
            self.bias = Parameter(ops._leaf(_uniform((out_features,), bound, dtype)))
        else:
            self.register_parameter("bias", None)

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Identity(Module):
    def forward(self, input):
        return input


class Tanh(Module):
    def forward(self, input):
        return ops.tanh(input)


class ReLU(Module):
    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return ops.relu(input)


class Sigmoid(Module):
    def forward(self, input):
        return ops.sigmoid(input)


class Softmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return F.softmax(input, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    def forward(self, input):
        return F.log_softmax(input, self.dim)


# -- losses -----------------------------------------------------------------------------------
class _Loss(Module):
    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        self.reduction = F._legacy_reduction(size_average, reduce, reduction)


class MSELoss(_Loss):
    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


class NLLLoss(_Loss):
    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        self.weight, self.ignore_index = weight, ignore_index

    def forward(self, input, target):
        return F.nll_loss(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class CrossEntropyLoss(NLLLoss):
    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        super().__init__(weight, size_average, ignore_index, reduce, reduction)
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)
