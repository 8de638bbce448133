"""What a row's attribute fields hold: the two integers i0, i1 and the float f0 of a tape row
(``(op, a, b, c, out, i0, i1, f0)``), declared per row as a schema of typed attributes.

A row's ``attrs`` names one attribute per field it uses, in field order (i0, i1, f0), None for a
field it leaves unused. Each codec below is the one place that encodes its values into a field
and decodes them back; the dump prints a row through its schema, and grad_fn objects read it.
The jitted adjoints decode the same fields with the twins in ``jit/attrs.py`` (``has_axis``,
``perm_axis``) and read a float kept in i1 through the row table's float view (``RF[e, 6]``).
"""
import struct

FIELDS = ("i0", "i1", "f0")
COLUMN = {"i0": 5, "i1": 6, "f0": 7}  # the field's position in a row tuple


class Attr:
    """One attribute: ``name`` as torch's argument is named; ``dump``: whether the dump lists it
    with the row's inputs. The base codec stores the value as it is."""
    __slots__ = ("name", "dump", "column")

    def __init__(self, name, dump=False):
        self.name, self.dump, self.column = name, dump, None

    @staticmethod
    def encode(value):
        return value

    @staticmethod
    def decode(raw, ndim=None):
        return raw

    def text(self, raw, ndim):
        """The attribute as the dump shows it ('' for nothing)."""
        return f"{self.name}={self.decode(raw, ndim)}"

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class Int(Attr):
    """An integer: a dim, a flat offset, an output index, a variant."""
    __slots__ = ()


class Bool(Attr):
    """A flag (keepdim...), shown by its name when set."""
    __slots__ = ()

    @staticmethod
    def encode(value):
        return int(bool(value))

    @staticmethod
    def decode(raw, ndim=None):
        return bool(raw)

    def text(self, raw, ndim):
        return self.name if raw else ""


class Implicit(Bool):
    """Set on a row recorded for a broadcast the user did not write (a binary op's operand made
    contiguous): torch records no node for it, so grad_fn objects look through the row."""
    __slots__ = ()


class Float(Attr):
    """A float in f0 (a scale, a slope, a bound)."""
    __slots__ = ()

    @staticmethod
    def encode(value):
        return float(value)


class Operand(Float):
    """A Python scalar operand kept in f0 (x * c, c - x): the dump shows it among the inputs, on
    the ``left`` for c (op) x; ``listed``: torch's node lists it too, as a None in next_functions."""
    __slots__ = ("left", "listed")

    def __init__(self, left=False, listed=False):
        super().__init__("other" if not left else "self", dump=True)
        self.left, self.listed = left, listed

    def text(self, raw, ndim):
        return f"{raw:g}"


_I64, _F64 = struct.Struct("<q"), struct.Struct("<d")


class FloatBits(Attr):
    """A second float, its bits in an integer field (the kernels read it back as ``RF[e, 6]``)."""
    __slots__ = ()

    @staticmethod
    def encode(value):
        return _I64.unpack(_F64.pack(float(value)))[0]

    @staticmethod
    def decode(raw, ndim=None):
        return _F64.unpack(_I64.pack(int(raw)))[0]


class Mask(Attr):
    """A set of axes, bit k for axis k (a reduction's dims)."""
    __slots__ = ()

    @staticmethod
    def encode(axes):
        m = 0
        for a in axes:
            m |= 1 << a
        return m

    @staticmethod
    def has(raw, k):
        return (raw >> k) & 1

    @staticmethod
    def decode(raw, ndim=None):
        return tuple(k for k in range(64 if ndim is None else ndim) if (raw >> k) & 1)


class Perm(Attr):
    """A permutation of up to 16 axes, 4 bits per axis: output axis k is input axis ``perm[k]``."""
    __slots__ = ()

    @staticmethod
    def encode(perm):
        code = 0
        for k, p in enumerate(perm):
            code |= p << (4 * k)
        return code

    @staticmethod
    def decode(raw, ndim=None):
        return tuple((raw >> (4 * k)) & 15 for k in range(ndim))

    def text(self, raw, ndim):
        return "" if ndim is None else super().text(raw, ndim)


def schema(attrs):
    """A row's attributes checked and bound to their fields: a tuple in field order."""
    if len(attrs) > len(FIELDS):
        raise ValueError(f"a row has {len(FIELDS)} attribute fields, not {len(attrs)}")
    out = []
    for field, attr in zip(FIELDS, attrs):
        if attr is None:
            continue
        if (field == "f0") != isinstance(attr, Float):
            raise ValueError(f"{attr!r} cannot be kept in {field}")
        attr.column = COLUMN[field]
        out.append(attr)
    return tuple(out)
