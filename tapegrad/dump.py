"""The tape as data: a listing of its entries (``dump``) and a Graphviz picture (``to_dot``, ``render``).

One line per slot, in slot order (slots and entries are appended in step, so this is the order in
which the program ran): a leaf, a link into an older tape, a constant (an index map), or the entry
that produced the slot. A cold path: plain Python over the tape's row and slot tables.
"""
import os

import numpy as np

from . import ops
from .ops.attrs import Operand
from .tape import FREED, LEAF, LINK, REQUIRES_GRAD, _state, recorded_at
from .tensor import Tensor

DTYPE_NAMES = ("float32", "float64", "int64", "int32", "bool")

GRAPHVIZ_MISSING = (
    "Graphviz's `dot` program is not on PATH, so the graph cannot be drawn. Install Graphviz:\n"
    "  Debian/Ubuntu: sudo apt-get install graphviz\n"
    "  Fedora:        sudo dnf install graphviz\n"
    "  macOS:         brew install graphviz\n"
    "  conda:         conda install -c conda-forge graphviz\n"
    "  Windows:       winget install graphviz   (or https://graphviz.org/download/)\n"
    "tapegrad.to_dot(t) gives the DOT text without Graphviz.")


class GraphvizMissing(RuntimeError):
    pass


class DumpText(str):
    """The dump's text. Its repr is the text itself, so ``tg.dump(y)`` reads well at a prompt."""
    __slots__ = ()

    def __repr__(self):
        return str(self)


# -- what to show --------------------------------------------------------------------------
class _View:
    """The slots and entries to show, per tape, with names and the outputs to mark."""

    def __init__(self):
        self.slots = {}  # tape -> set of slots to show
        self.names = {}  # (tape serial, slot) -> name
        self.known = {}  # (tape serial, slot) -> array of a live tensor (a freed slot's value is gone)
        self.outputs = []  # (tape, slot)
        self.subset = False  # True: only what the outputs depend on
        self.notes = []  # lines said before the tapes (a leaf, nothing recorded...)

    def tapes(self):
        return sorted(self.slots, key=lambda tp: tp.serial)


def _producers(tape):
    """{output slot: [entries]}: one entry per slot, except a custom Function with over three
    inputs, which records further rows for the same output."""
    out = {}
    for e, s in enumerate(tape.row_table()[0][:, 4].tolist()):
        out.setdefault(s, []).append(e)
    return out


def _grad_fn(op, r):
    if op is ops.FUNCTION:
        from .autograd.function import backward_name
        return backward_name(r)  # torch's <class name>Backward
    return op.grad_fn


def _depends(view, roots):
    """Select the slots the (tape, slot) roots depend on, following links into older tapes."""
    want = {}
    for tape, s in roots:
        want.setdefault(tape, set()).add(s)
    while want:
        tape = max(want, key=lambda tp: tp.serial)  # links point only to older tapes
        need = want.pop(tape)
        rows = tape.row_table()[0].tolist()
        for e in range(len(rows) - 1, -1, -1):
            r = rows[e]
            if r[4] in need:
                need.update(s for s in r[1:1 + ops.TABLE[r[0]].arity] if s >= 0)
        for s in need:
            if s in tape.links:
                older, os_ = tape.links[s]
                want.setdefault(older, set()).add(os_)
        view.slots.setdefault(tape, set()).update(need)


def _add_tensor_name(view, t, name):
    if t._tape is not None:
        view.names[(t._tape.serial, t._slot)] = name
        view.known[(t._tape.serial, t._slot)] = t._value
        return
    for tape in view.slots:  # a leaf has a slot on every tape that used it
        s = tape.leaf_slot.get(id(t)) if tape.leaf_slot is not None else None
        if s is not None:
            view.names.setdefault((tape.serial, s), name)


def _view_of(t):
    """The part of the tapes that ``t`` depends on (a Tensor, a sequence of them, or None for all)."""
    view = _View()
    if t is None:
        tape = _state.tape_ref()
        if tape is None or tape.n == 0:
            view.notes.append("no live tape: nothing has been recorded on this thread (or it was all released)")
            return view
        _whole(view, [tape])
        return view
    if not isinstance(t, (Tensor, list, tuple)):
        raise TypeError(f"dump() expects a Tensor, a sequence of Tensors or None, but got {type(t).__name__}")
    ts = [t] if isinstance(t, Tensor) else list(t)
    view.subset = True
    roots = []
    for i, x in enumerate(ts):
        if not isinstance(x, Tensor):
            raise TypeError(f"dump() expects a Tensor, a sequence of Tensors or None, but got {type(x).__name__}")
        label = x.name or (None if len(ts) == 1 else f"[{i}]")
        if x._tape is None:
            what = "requires grad" if x._rg else "does not require grad"
            view.notes.append(f"tensor{' ' + label if label else ''} is a leaf ({what}, "
                              f"shape {tuple(x.shape)}, {x.dtype}): no tape entries to show")
            continue
        roots.append((x._tape, x._slot))
        view.outputs.append((x._tape, x._slot))
    _depends(view, roots)
    for i, x in enumerate(ts):
        if x._tape is not None:
            view.known[(x._tape.serial, x._slot)] = x._value
            if x.name:
                view.names[(x._tape.serial, x._slot)] = x.name
    return view


def _whole(view, tapes):
    """Select every slot of ``tapes`` and of the older tapes they link to; mark their sinks."""
    stack = list(tapes)
    while stack:
        tape = stack.pop()
        if tape in view.slots:
            continue
        view.slots[tape] = set(range(tape.ns))
        stack.extend(older for older, _ in tape.links.values())
    for tape in view.slots:
        rows = tape.row_table()[0].tolist()
        used = {s for r in rows for s in r[1:1 + ops.TABLE[r[0]].arity]}
        view.outputs.extend((tape, r[4]) for r in rows if r[4] not in used)


def view_of_tapes(tapes, named=()):
    """A view of whole tapes (the CLI's "everything the script left alive"), naming the slots of
    the ``(name, tensor)`` pairs in ``named``."""
    view = _View()
    _whole(view, [tp for tp in tapes if tp.n])
    for name, t in named:
        _add_tensor_name(view, t, name)
    return view


# -- describing one slot ---------------------------------------------------------------------
def _array(tape, s, view):
    """The slot's value, or a live tensor's value standing for it; None once freed."""
    v = view.known.get((tape.serial, s))
    if v is None:
        v = tape.values[s]
    if v is None and tape.leaves is not None and s in tape.leaves:
        v = tape.leaves[s]._value
    return v


def _shape(tape, s, view):
    v = _array(tape, s, view)
    return None if v is None else v.shape


def _dtype(tape, s, code, view):
    if code >= 0:
        return DTYPE_NAMES[code]
    v = _array(tape, s, view)
    return "?" if v is None else v.dtype.name


def _fmt_shape(shape):
    return "?" if shape is None else "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _name(tape, s, view):
    name = view.names.get((tape.serial, s)) or tape.names.get(s)
    if name is None and tape.leaves is not None:
        leaf = tape.leaves.get(s)
        if leaf is not None:
            name = leaf.name  # named after it was first used
    return name


def _ref(tape, s, view):
    name = _name(tape, s, view)
    return f"%{s} {name}" if name else f"%{s}"


def _flags(tape, s, flags):
    out = []
    if flags & REQUIRES_GRAD:
        out.append("rg")
    ref = tape.retained.get(s)
    if ref is not None and ref() is not None:
        out.append("retained")
    if tape.hooks.get(s):
        out.append("hook")
    if flags & FREED:
        out.append("freed")
    return " ".join(out)


def _version(tape, s, recorded):
    vc = tape.vcs.get(s) if tape.vcs is not None else None  # None: a fresh result nothing has changed
    now = vc[0] if vc is not None else recorded
    return str(recorded) if now == recorded else f"{recorded}->{now}"


def _operand(op, r):
    """The row's Python scalar operand as (text, whether it stands left of the op), or None."""
    for a in op.attrs:
        if isinstance(a, Operand):
            return a.text(r[a.column], None), a.left
    return None


def _args(op, r, ndim):
    """The attributes the row's schema shows (attrs.py): the dims of a reduction, a permutation."""
    texts = (a.text(r[a.column], ndim) for a in op.attrs if a.dump and not isinstance(a, Operand))
    return ", ".join(t for t in texts if t)


def _inputs(tape, r, op, view):
    shape = _shape(tape, r[4], view)
    parts = [_ref(tape, s, view) for s in r[1:1 + op.arity] if s >= 0]
    operand = _operand(op, r)
    if operand is not None:
        parts.insert(0 if operand[1] else len(parts), operand[0])
    args = _args(op, r, None if shape is None else len(shape))
    if args:
        parts.append(args)
    return ", ".join(parts)


# -- the listing -------------------------------------------------------------------------------
def _held_bytes(values):
    """Bytes of the arrays the tape keeps alive (views counted once, by their base)."""
    seen = {}
    for v in values:
        if v is None:
            continue
        while isinstance(v.base, np.ndarray):
            v = v.base
        seen[id(v)] = v.nbytes
    return sum(seen.values())


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _header(tape, shown, view):
    head = (f"tape #{tape.serial}: {tape.n} entries, {tape.ns} slots, "
            f"{_fmt_bytes(_held_bytes(tape.values))} of values held")
    state = []
    if tape is _state.tape_ref() and not tape.closed:
        state.append("current")
    if tape.freed:
        state.append("freed by backward(): only the opcodes remain (pass retain_graph=True to keep the values)")
    elif tape.closed and bool((tape.slot_table()[:, 1] & FREED).any()):
        state.append("closed by a backward that freed some of its entries")
    elif tape.closed and tape.resumable == 1:
        state.append("closed by a create_graph backward: ops on its values still record here")
    elif tape.closed:
        state.append("closed by a backward that retained it: later ops start a new tape")
    if view.subset:
        state.append(f"showing the {shown} entries the output depends on")
    return head + (" (" + "; ".join(state) + ")" if state else "")


def _tape_rows(tape, view):
    """The table rows (lists of cells) of one tape, in slot order."""
    prod = _producers(tape)
    S = tape.slot_table().tolist()
    out = []
    for s in sorted(view.slots[tape]):
        flags, recorded, dt = S[s][1], S[s][2], S[s][3]
        heads = []
        for e in prod.get(s, ()):
            r = tape.row(e)
            op = ops.TABLE[r[0]]
            heads.append([str(e), op.name, _grad_fn(op, r), _inputs(tape, r, op, view)])
        if heads:
            pass
        elif flags & LINK:
            older, os_ = tape.links.get(s, (None, None))
            heads = [["", "link", "", f"tape #{older.serial} %{os_}" if older is not None else "older tape"]]
        elif flags & LEAF and (tape.leaves is None or s in tape.leaves):
            heads = [["", "leaf", "", ""]]
        else:
            heads = [["", "const", "", ""]]  # an index map or other value a row reads, not a tensor
        tail = [_ref(tape, s, view), _fmt_shape(_shape(tape, s, view)), _dtype(tape, s, dt, view),
                _version(tape, s, recorded), _flags(tape, s, flags)]
        if tape.traces is not None:  # recorded in anomaly mode: where each entry was made
            trace = tape.traces.get(s) if heads[0][0] else None
            tail.append(recorded_at(trace[0]) if trace is not None else "")
        out.extend(h + tail for h in heads)
    return out


_COLUMNS = ["entry", "op", "grad_fn", "inputs", "out", "shape", "dtype", "ver", "flags"]
_TRACED_COLUMNS = _COLUMNS + ["recorded at"]
_RIGHT = {0}  # right-aligned columns
_LEGEND = ("flags: rg = requires grad, retained = retain_grad(), hook = register_hook(), "
           "freed = saved values released by backward\n"
           "ver: the storage's version when recorded (a->b: changed in place since)")


def _table(rows):
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if k in _RIGHT else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths))]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def format_view(view):
    lines = list(view.notes)
    for tape in view.tapes():
        rows = _tape_rows(tape, view)
        shown = sum(1 for r in rows if r[0])
        if lines:
            lines.append("")
        lines.append(_header(tape, shown, view))
        lines.extend(_table([_COLUMNS if tape.traces is None else _TRACED_COLUMNS] + rows))
    if view.slots:
        lines.append(_LEGEND)
    return DumpText("\n".join(lines) + "\n")


def dump(t=None, file=None):
    """List the tape entries ``t`` depends on (every live entry of this thread's tape when ``t`` is
    None): one line per slot with its entry, op, inputs, shape, dtype, version and flags. Returns
    the text; also writes it to ``file`` (a stream or a path) when given."""
    # a compiled function (tg.compile) lists its programs
    text = DumpText(t._dump_text()) if hasattr(t, "_dump_text") else format_view(_view_of(t))
    if file is not None:
        if isinstance(file, (str, os.PathLike)):
            with open(file, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            file.write(text)
    return text


# -- Graphviz ------------------------------------------------------------------------------------
def _q(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node_id(tape, s):
    return f"t{tape.serial}_s{s}"


def dot_view(view):
    """DOT text of a view: leaves light blue, outputs green, ops grey boxes, edges labelled with shapes."""
    outputs = {(tp.serial, s) for tp, s in view.outputs}
    lines = ["digraph tapegrad {", "  rankdir=TB;",
             '  node [fontname="Helvetica", fontsize=10];', '  edge [fontname="Helvetica", fontsize=9];']
    edges = []
    tapes = view.tapes()
    for tape in tapes:
        prod = _producers(tape)
        S = tape.slot_table().tolist()
        indent = "  "
        if len(tapes) > 1:
            lines.append(f"  subgraph cluster_t{tape.serial} {{")
            lines.append(f'    label={_q(f"tape #{tape.serial}")}; style=dashed; color=gray;')
            indent = "    "
        for s in sorted(view.slots[tape]):
            flags, dt = S[s][1], S[s][3]
            shape = _fmt_shape(_shape(tape, s, view))
            name = _name(tape, s, view)
            entries = prod.get(s)
            if flags & LINK and entries is None:
                older, os_ = tape.links.get(s, (None, None))
                if older is not None and older in view.slots:
                    continue  # drawn as an edge straight from the older tape's node
                attrs = dict(label=f"from an older tape\n{shape}", shape="ellipse", style="dashed")
            elif entries is None:
                leaf = flags & LEAF and (tape.leaves is None or s in tape.leaves)
                label = (name or ("leaf" if leaf else "const")) + f"\n{shape} {_dtype(tape, s, dt, view)}"
                fill = "lightblue" if flags & REQUIRES_GRAD else ("white" if leaf else "gray90")
                attrs = dict(label=label, shape="ellipse" if leaf else "note", style="filled", fillcolor=fill)
            else:
                r = tape.row(entries[0])
                op = ops.TABLE[r[0]]
                operand = _operand(op, r)
                consts = [operand[0]] if operand is not None else []
                args = _args(op, r, None if _shape(tape, s, view) is None else len(_shape(tape, s, view)))
                label = " ".join([op.name] + consts + ([f"({args})"] if args else []))
                label += f"\n#{entries[0]} {_grad_fn(op, r)}"
                attrs = dict(label=label, shape="box", style="filled,rounded", fillcolor="gray95")
                if (tape.serial, s) in outputs:
                    attrs["label"] += f"\n{name + ': ' if name else ''}{shape} {_dtype(tape, s, dt, view)}"
                    attrs["fillcolor"] = "palegreen"
                elif name:
                    attrs["label"] += f"\n{name}"
                if flags & FREED:
                    attrs["style"] = "filled,rounded,dashed"
                    attrs["fontcolor"] = "gray40"
                for e in entries:
                    r = tape.row(e)
                    edges.extend(_edge(tape, k, s, view) for k in r[1:1 + ops.TABLE[r[0]].arity] if k >= 0)
            lines.append(f"{indent}{_node_id(tape, s)} [" + ", ".join(f"{a}={_q(v)}" for a, v in attrs.items()) + "];")
        if len(tapes) > 1:
            lines.append("  }")
    lines.extend(edges)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _edge(tape, s, dst, view):
    label = _q(_fmt_shape(_shape(tape, s, view)))
    src, style = _node_id(tape, s), ""
    if tape.slot_flags(s) & LINK and s in tape.links:
        older, os_ = tape.links[s]
        if older in view.slots:
            src, style = _node_id(older, os_), ', style="dashed"'
    return f"  {src} -> {_node_id(tape, dst)} [label={label}{style}];"


def to_dot(t=None):
    """Graphviz DOT text of the graph ``dump(t)`` lists."""
    return dot_view(_view_of(t))


def render(t, path, format=None, view=None):
    """Draw the graph of ``t`` to ``path`` with Graphviz's ``dot`` (format from the suffix: png,
    svg, pdf...). Raises GraphvizMissing, saying how to install it, when ``dot`` is absent."""
    import shutil
    import subprocess  # both imported here: keeps `import tapegrad` light
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing(GRAPHVIZ_MISSING)
    fmt = format or os.path.splitext(str(path))[1].lstrip(".").lower() or "png"
    text = dot_view(view) if view is not None else to_dot(t)
    done = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=text.encode(), capture_output=True)
    if done.returncode:
        why = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"Graphviz's dot failed (exit {done.returncode}): {why}")
    return path


# `tg.dump` is the function (the package's `from .dump import dump` hides this module's name), so
# the README's `tapegrad.dump.render(...)` and `tg.dump.to_dot(...)` need the pair as its attributes.
dump.render = render
dump.to_dot = to_dot
