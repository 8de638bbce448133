"""The Tensor: a NumPy array plus where it sits on a tape. Small on purpose (``__slots__``).

A leaf has ``_tape is None``; a result of a recorded op has its tape and output slot. The
differentiable operations (methods included) are installed from the op table in ``ops``.
"""
import warnings

import numpy as np

from . import dtypes
from .cuda.array import DeviceArray
from .printing import format_tensor
from .tape import FREED, REQUIRES_GRAD, Global, _state, counter, recording_program



class Size(tuple):
    """torch.Size: a tuple that prints as ``tapegrad.Size([2, 3])``."""

    def __repr__(self):
        return f"tapegrad.Size({list(self)})"

    def numel(self):
        n = 1
        for d in self:
            n *= d
        return n


class _Extra:
    """Rarely used per-tensor state, kept out of the hot path."""
    __slots__ = ("name", "hooks", "retains", "base", "node")

    def __init__(self):
        self.name = None
        self.hooks = None
        self.retains = False
        self.base = None
        self.node = None  # the grad_fn handed out, kept as long as the tensor (torch's tensor holds its node)


class Tensor:
    __slots__ = ("_value", "_tape", "_slot", "_rg", "_vc", "_grad", "_x", "__weakref__")
    __array_priority__ = 1000  # so that ndarray (op) Tensor defers to Tensor's reflected op
    # Tensor(...) itself is torch's legacy constructor, installed by ``creation``.

    # -- attributes --------------------------------------------------------------------------
    @property
    def shape(self):
        return Size(self._value.shape)

    def size(self, dim=None):
        if dim is None:
            return Size(self._value.shape)
        return self._value.shape[_dim(dim, self._value.ndim)]

    @property
    def ndim(self):
        return self._value.ndim

    def dim(self):
        return self._value.ndim

    def numel(self):
        return self._value.size

    nelement = numel

    @property
    def dtype(self):
        return dtypes.from_numpy_dtype(self._value.dtype)

    @property
    def device(self):
        return _CUDA0 if self._value.__class__ is DeviceArray else _CPU

    @property
    def is_cuda(self):
        return self._value.__class__ is DeviceArray

    def cuda(self, device=None):
        return self.to(_CUDA0 if device is None else device)

    def cpu(self):
        return self.to(_CPU)

    def is_floating_point(self):
        return self._value.dtype.kind == "f"

    @property
    def is_leaf(self):
        return self._tape is None

    @property
    def requires_grad(self):
        return self._rg

    @requires_grad.setter
    def requires_grad(self, flag):
        if flag.__class__ is not bool:
            raise RuntimeError("requires_grad must be a bool")
        if self._tape is not None:
            raise RuntimeError(_leaf_flag_error(flag))
        if flag and self._value.dtype.kind != "f":
            raise RuntimeError("only Tensors of floating point and complex dtype can require gradients")
        self._rg = flag

    @requires_grad.deleter
    def requires_grad(self):
        raise RuntimeError("requires_grad must be a bool")

    def requires_grad_(self, requires_grad=True):
        if requires_grad.__class__ is not bool:
            raise TypeError("requires_grad_(): argument 'requires_grad' (position 1) must be bool, not "
                            f"{type(requires_grad).__name__}")
        if self._tape is not None:
            if requires_grad:
                return self  # a result requires grad already: nothing to change
            raise RuntimeError(_leaf_flag_error(False))
        if requires_grad and self._value.dtype.kind != "f":
            raise RuntimeError("only Tensors of floating point dtype can require gradients")  # torch's wording here
        self._rg = requires_grad
        return self

    @property
    def grad(self):
        if self._tape is not None and self._grad is None and not self.retains_grad:  # torch warns only when unset
            warnings.warn(
                "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed. Its "
                ".grad attribute won't be populated during autograd.backward(). If you indeed want "
                "the .grad field to be populated for a non-leaf Tensor, use .retain_grad() on the "
                "non-leaf Tensor. If you access the non-leaf Tensor by mistake, make sure you access "
                "the leaf Tensor instead. See github.com/pytorch/pytorch/pull/30531 for more "
                "informations.", UserWarning, stacklevel=2)
        return self._grad

    @grad.setter
    def grad(self, g):
        if g is not None:
            if not isinstance(g, Tensor):
                raise TypeError(f"assigned grad expected to be a Tensor or None but got grad of type {type(g).__name__}")
            if g.shape != self.shape:
                raise RuntimeError(f"assigned grad has data of a different size: {tuple(g.shape)} vs {tuple(self.shape)}")
            if g._value.dtype != self._value.dtype:
                raise RuntimeError(f"assigned grad has data of a different type: {g.dtype} vs {self.dtype}")
        self._grad = g

    @grad.deleter
    def grad(self):
        self._grad = None

    @property
    def retains_grad(self):
        return self._x is not None and self._x.retains

    def retain_grad(self):
        if not self._rg:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        if self._tape is None:
            return
        self._extra().retains = True
        self._tape.retained[self._slot] = _weakref(self)

    @property
    def name(self):
        return self._x.name if self._x is not None else None

    @name.setter
    def name(self, value):
        self._extra().name = value

    def _extra(self):
        if self._x is None:
            self._x = _Extra()
        return self._x

    @property
    def data(self):
        t = leaf(self._value)  # same storage, its own version counter, untracked
        return t

    @data.setter
    def data(self, other):
        if not isinstance(other, Tensor):
            raise TypeError("data must be a Tensor")
        self._value = other._value
        Global.bump()  # open tapes that registered this leaf must register it afresh

    @data.deleter
    def data(self):
        raise RuntimeError("Deleting tensor data is not allowed. Delete tensor instead!")

    # -- conversion ------------------------------------------------------------------------
    def numpy(self, force=False):
        if self._value.__class__ is DeviceArray:
            raise TypeError(f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to copy the "
                            "tensor to host memory first.")
        if self._rg and not force and _state.grad_enabled:  # (with grad mode off, torch hands out the storage)
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")
        _read(self)
        return self._value.view()  # (its storage, in a new array object: setting its shape leaves the tensor be)

    def __array__(self, dtype=None, copy=None):
        v = self.numpy()  # np.asarray(t) follows numpy()'s rule, as in torch
        return v if dtype is None else v.astype(dtype)

    def item(self):
        if self._value.size != 1:
            raise RuntimeError(f"a Tensor with {self._value.size} elements cannot be converted to Scalar")
        _read(self)
        return _host(self._value).reshape(()).item()

    def tolist(self):
        _read(self)
        return _host(self._value).tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        if self._value.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with more than one value is ambiguous")
        _read(self)
        return bool(_host(self._value).reshape(()))

    def __len__(self):
        if self._value.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._value.shape[0]

    def __iter__(self):
        if self._value.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._value.shape[0]))

    def __hash__(self):
        return id(self)

    def __repr__(self):
        v = _host(self._value)
        suffixes = []
        if self._tape is not None:
            suffixes.append(f"grad_fn=<{type(self.grad_fn).__name__}>")
        elif self._rg:
            suffixes.append("requires_grad=True")
        d = self.dtype
        show = d not in (dtypes.get_default_dtype(), dtypes.int64, dtypes.bool_)
        device = self.device if v is not self._value else None
        return format_tensor(v, suffixes, repr(d) if show else None, device=device)

    __str__ = __repr__

    def __format__(self, spec):
        if self._value.ndim == 0:
            return self._value.item().__format__(spec)
        return object.__format__(self, spec)

    # -- autograd (``backward`` and ``grad_fn`` are bound by tapegrad.autograd, the layer above) ----
    def detach(self):
        t = leaf(self._value)
        t._vc = counter(self)  # shares storage, so shares the version counter
        return t

    def detach_(self):
        if self._x is not None and self._x.base is not None:
            raise RuntimeError("Can't detach views in-place. Use detach() instead.")
        self._tape = None
        self._slot = -1
        self._rg = False
        return self

    def register_hook(self, hook):
        if not self._rg:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self._tape is None:
            x = self._extra()
            if x.hooks is None:
                x.hooks = []
            x.hooks.append(hook)
            return _HookHandle(x.hooks, hook)
        hooks = self._tape.hooks.setdefault(self._slot, [])
        hooks.append(hook)
        return _HookHandle(hooks, hook)

    def _bump_version(self):
        """An in-place change to this tensor's storage (shared by its views)."""
        counter(self)[0] += 1
        Global.bump()

    @property
    def _version(self):
        return 0 if self._vc is None else self._vc[0]


class Device:
    __slots__ = ("type", "index")

    def __init__(self, spec="cpu", index=None):
        spec = str(spec)
        self.type, _, idx = spec.partition(":")
        self.index = int(idx) if idx else index
        if self.type not in ("cpu", "cuda"):
            raise RuntimeError(f"Expected one of cpu, cuda device type at start of device string: {spec}")

    def __eq__(self, other):
        if isinstance(other, str):
            other = Device(other)
        return isinstance(other, Device) and self.type == other.type and (self.index or 0) == (other.index or 0)

    def __hash__(self):
        return hash((self.type, self.index or 0))

    def __repr__(self):
        return f"device(type='{self.type}')" if self.index is None else f"device(type='{self.type}', index={self.index})"

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"


_CPU, _CUDA0 = Device("cpu"), Device("cuda:0")


def _host(v):
    """v's values on the host (a copy for a GPU value)."""
    return v.get() if v.__class__ is DeviceArray else v


def as_value(v):
    """A forward's result as a tensor value: a GPU value as it is, anything else as an ndarray
    (NumPy returns scalars for 0-d results)."""
    return v if v.__class__ is DeviceArray else np.asarray(v)


class _HookHandle:
    __slots__ = ("hooks", "hook")

    def __init__(self, hooks, hook):
        self.hooks, self.hook = hooks, hook

    def remove(self):
        if self.hook in self.hooks:
            self.hooks.remove(self.hook)


def leaf(value):
    """A leaf Tensor holding ``value`` (no graph, no grad); every factory and untracked op ends here."""
    t = _new(Tensor)
    t._value = value
    t._tape = None
    t._slot = -1
    t._rg = False
    t._vc = None
    t._grad = None
    t._x = None
    return t


def _leaf_flag_error(flag):
    msg = "you can only change requires_grad flags of leaf variables."
    if not flag:
        msg += (" If you want to use a computed variable in a subgraph that doesn't require differentiation use "
                "var_no_grad = var.detach().")
    return msg


def _dim(d, ndim):
    """Normalise a possibly negative dim, with torch's error for one out of range."""
    n = max(ndim, 1)
    if not -n <= d < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d})")
    return d + n if d < 0 else d


_new = object.__new__


def _read(t):
    """Python reads t's values: a compiled program being recorded guards on them."""
    p = recording_program()
    if p is not None:
        p.note_read(t, t._value)
from weakref import ref as _weakref  # noqa: E402
