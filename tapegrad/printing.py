"""Tensor repr text, ported from PyTorch's torch/_tensor_str.py (strided dense tensors only).

The structure and the quirks of the original are kept on purpose so that the output matches
torch character for character; see the comments where a quirk is easy to "fix" by mistake.
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass
class _PrinterOptions:
    precision: int = 4
    threshold: float = 1000
    edgeitems: int = 3
    linewidth: int = 80
    sci_mode: "bool | None" = None


PRINT_OPTS = _PrinterOptions()


def set_printoptions(precision=None, threshold=None, edgeitems=None, linewidth=None, sci_mode=None):
    """Same meaning as torch.set_printoptions (without `profile`)."""
    if precision is not None:
        PRINT_OPTS.precision = precision
    if threshold is not None:
        PRINT_OPTS.threshold = threshold
    if edgeitems is not None:
        PRINT_OPTS.edgeitems = edgeitems
    if linewidth is not None:
        PRINT_OPTS.linewidth = linewidth
    # As in torch, sci_mode is always overwritten: leaving it out restores the automatic choice.
    PRINT_OPTS.sci_mode = sci_mode


class _Formatter:
    """Chooses one notation and one column width for every element of a tensor."""

    def __init__(self, a):
        self.floating = np.issubdtype(a.dtype, np.floating)
        self.int_mode = True
        self.sci_mode = False
        self.max_width = 1
        flat = a.reshape(-1)
        if not self.floating:
            self.max_width = max([1] + [len(f"{v}") for v in flat.tolist()])
            return
        # Zeros and non-finite values take no part in choosing the notation.
        vals = flat[np.isfinite(flat) & (flat != 0)]
        if vals.size == 0:
            return
        mags = np.abs(vals).astype(np.float64)
        lo, hi = mags.min(), mags.max()
        self.int_mode = bool(np.all(vals == np.ceil(vals)))
        if PRINT_OPTS.sci_mode is None:
            with np.errstate(over="ignore"):  # hi / lo may overflow to inf, which still means sci
                self.sci_mode = bool(hi / lo > 1000.0 or hi > 1.0e8 or lo < 1.0e-4)
        else:
            self.sci_mode = PRINT_OPTS.sci_mode
        p = PRINT_OPTS.precision
        if self.sci_mode:
            strs = [f"{v:.{p}e}" for v in vals.tolist()]
        elif self.int_mode:
            strs = [f"{v:.0f}." for v in vals.tolist()]  # the "." marks a floating tensor
        else:
            strs = [f"{v:.{p}f}" for v in vals.tolist()]
        self.max_width = max(self.max_width, *map(len, strs))

    def format(self, v):
        p = PRINT_OPTS.precision
        if not self.floating:
            s = f"{v}"
        elif self.sci_mode:
            s = f"{v:{self.max_width}.{p}e}"
        elif self.int_mode:
            s = f"{v:.0f}" + ("" if math.isinf(v) or math.isnan(v) else ".")
        else:
            s = f"{v:.{p}f}"
        return s.rjust(self.max_width)


def _edge_rows(n, summarize):
    """Row indices to show, with None standing for the elided middle."""
    e = PRINT_OPTS.edgeitems
    if summarize and n > 2 * e:
        return list(range(e)) + [None] + list(range(n - e, n))
    return list(range(n))


def _vector_str(a, indent, summarize, fmt):
    e = PRINT_OPTS.edgeitems
    per_line = max(1, math.floor((PRINT_OPTS.linewidth - indent) / (fmt.max_width + 2)))
    if summarize and not e:
        data = ["..."]
    elif summarize and a.shape[0] > 2 * e:
        data = [fmt.format(v) for v in a[:e].tolist()] + [" ..."]
        data += [fmt.format(v) for v in a[-e:].tolist()]
    else:
        data = [fmt.format(v) for v in a.tolist()]
    lines = [", ".join(data[i : i + per_line]) for i in range(0, len(data), per_line)]
    return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"


def _tensor_str(a, indent, summarize, fmt):
    if a.ndim == 0:
        return fmt.format(a.item())
    if a.ndim == 1:
        return _vector_str(a, indent, summarize, fmt)
    slices = [
        "..." if i is None else _tensor_str(a[i], indent + 1, summarize, fmt)
        for i in _edge_rows(a.shape[0], summarize)
    ]
    # One blank line between blocks per dimension above the rows.
    return "[" + ("," + "\n" * (a.ndim - 1) + " " * (indent + 1)).join(slices) + "]"


def _summarized_data(a):
    """Only the elements that will be shown, so that hidden ones don't affect the format."""
    e = PRINT_OPTS.edgeitems
    if a.ndim == 0:
        return a
    if a.ndim == 1:
        # With edgeitems=0, a[-0:] is the whole vector; torch has the same quirk.
        return np.concatenate((a[:e], a[-e:])) if a.shape[0] > 2 * e else a
    if not e:
        return np.empty([0] * a.ndim, a.dtype)
    rows = [i for i in _edge_rows(a.shape[0], True) if i is not None]
    return np.stack([_summarized_data(a[i]) for i in rows])


def _add_suffixes(text, suffixes, indent):
    parts = [text]
    # torch's "+ 1" over-counts by two on a single line; kept because it decides where to wrap.
    last_line_len = len(text) - text.rfind("\n") + 1
    for suffix in suffixes:
        if last_line_len + len(suffix) + 2 > PRINT_OPTS.linewidth:
            parts.append(",\n" + " " * indent + suffix)
            last_line_len = indent + len(suffix)
        else:
            parts.append(", " + suffix)
            last_line_len += len(suffix) + 2
    return "".join(parts) + ")"


def format_tensor(values, suffixes=(), dtype_suffix=None, prefix="tensor(", device=None):
    """Return torch's repr text for the NumPy array `values`.

    suffixes: extra 'key=value' strings appended in order, e.g. ("requires_grad=True",) or
        ("grad_fn=<MulBackward0>",).
    dtype_suffix: None, or a string such as "tapegrad.float64" that is shown as
        `dtype=tapegrad.float64` (the caller decides whether the dtype must be shown, as torch
        does for non-default dtypes). For an empty non-floating array torch always names the
        dtype, so None then means `dtype=tapegrad.<numpy dtype name>`.
    device: None (the CPU), or the device shown before the dtype, as `device='cuda:0'`.
    """
    a = np.asarray(values)
    indent = len(prefix)
    extra = []
    if a.size == 0:
        if a.ndim != 1:
            extra.append(f"size={tuple(a.shape)}")
        # No element shows whether it is an int or a bool, so torch names the dtype.
        if dtype_suffix is None and not np.issubdtype(a.dtype, np.floating):
            dtype_suffix = f"tapegrad.{a.dtype.name}"
        body = "[]"
    else:
        if not PRINT_OPTS.edgeitems:
            extra.append(f"size={tuple(a.shape)}")
        summarize = a.size > PRINT_OPTS.threshold
        fmt = _Formatter(_summarized_data(a) if summarize else a)
        body = _tensor_str(a, indent, summarize, fmt)
    if device is not None:
        extra.append(f"device='{device}'")
    if dtype_suffix is not None:
        extra.append(f"dtype={dtype_suffix}")
    return _add_suffixes(prefix + body, extra + list(suffixes), indent)
