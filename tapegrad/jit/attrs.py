"""The jitted twins of the op table's attribute decoders (ops/attrs.py: Mask, Perm), for the
adjoints that read a row's axis mask or permutation."""
from . import njit


@njit(cache=True, inline="always")
def has_axis(mask, k):
    """Whether axis k is in axis mask ``mask`` (attrs.Mask)."""
    return (mask >> k) & 1


@njit(cache=True, inline="always")
def perm_axis(code, k):
    """The input axis that output axis k takes, from permutation ``code`` (attrs.Perm)."""
    return (code >> (4 * k)) & 15
