"""dtypes: torch's names over NumPy dtypes, the default float dtype, and torch's type promotion."""
import builtins

import numpy as np


class dtype:
    __slots__ = ("name", "np", "code", "is_floating_point", "itemsize")

    def __init__(self, name, np_dtype, code):
        self.name = name
        self.np = np.dtype(np_dtype)
        self.code = code  # small int stored in the tape's slot table
        self.is_floating_point = self.np.kind == "f"
        self.itemsize = self.np.itemsize

    def __repr__(self):
        return f"tapegrad.{self.name}"

    def __reduce__(self):
        return (_by_name, (self.name,))


float32 = dtype("float32", np.float32, 0)
float64 = dtype("float64", np.float64, 1)
int64 = dtype("int64", np.int64, 2)
int32 = dtype("int32", np.int32, 3)
bool_ = dtype("bool", np.bool_, 4)
ALL = (float32, float64, int64, int32, bool_)
float = float32  # torch aliases
double = float64
long = int64
int = int32

_FROM_NP = {d.np: d for d in ALL}
_BY_CODE = {d.code: d for d in ALL}


def _by_name(name):
    return {d.name: d for d in ALL}[name]


def from_numpy_dtype(npd):
    d = _FROM_NP.get(np.dtype(npd))
    if d is None:
        raise TypeError(f"tapegrad does not support NumPy dtype {np.dtype(npd)}; "
                        f"use one of {', '.join(x.name for x in ALL)}")
    return d


def by_code(code):
    return _BY_CODE[code]


_default = [float32]


def get_default_dtype():
    return _default[0]


def set_default_dtype(d):
    d = as_dtype(d)
    if d not in (float32, float64):
        raise TypeError(f"only floating-point types are supported as the default type, got {d}")
    _default[0] = d


def as_dtype(d):
    """Accept a tapegrad dtype, a NumPy dtype or a Python type, as torch's factories do."""
    if d is None or isinstance(d, dtype):
        return d
    if d is builtins.bool:
        return bool_
    if d is builtins.float:
        return get_default_dtype()
    if d is builtins.int:
        return int64
    return from_numpy_dtype(d)


# torch's categories: bool < integer < floating
_CAT = {bool_: 0, int32: 1, int64: 1, float32: 2, float64: 2}


def _higher(a, b):
    """The wider of two dtypes (torch's promote_types for the supported set)."""
    if a is b:
        return a
    ca, cb = _CAT[a], _CAT[b]
    if ca != cb:
        return a if ca > cb else b
    return a if a.itemsize >= b.itemsize else b


def scalar_dtype(x):
    if isinstance(x, builtins.bool):
        return bool_
    if isinstance(x, builtins.int):
        return int64
    return get_default_dtype()


def result_type(dims, zero_dims, scalars):
    """torch.result_type: tensors with dimensions decide; zero-dim tensors count only when of a
    higher category; Python scalars only when of a higher category than every tensor."""
    r = None
    for d in dims:
        r = d if r is None else _higher(r, d)
    z = None
    for d in zero_dims:
        z = d if z is None else _higher(z, d)
    if r is None:
        r = z
    elif z is not None and _CAT[z] > _CAT[r]:
        r = z
    for s in scalars:
        sd = scalar_dtype(s)
        if r is None:
            r = sd
        elif _CAT[sd] > _CAT[r]:
            r = get_default_dtype() if _CAT[sd] == 2 else sd
    return r
