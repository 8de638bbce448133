"""The tape dump (tg.dump), its DOT graph (tg.to_dot) and rendering (tapegrad.dump.render)."""
import io
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.dump import GraphvizMissing, render

HEADER = re.compile(r"^tape #(\d+): (\d+) entries, (\d+) slots, ([\d.]+ (?:B|KiB|MiB|GiB)) of values held")


def table(text):
    """The dump as {tape serial: (header match, [row dicts])}, parsed by the header's column starts."""
    tapes, cols, current = {}, None, None
    for line in text.splitlines():
        m = HEADER.match(line)
        if m:
            current = tapes.setdefault(int(m.group(1)), (m, []))
            continue
        if line.strip().startswith("entry"):
            names = line.split()
            cols = [(n, line.index(n if n != "entry" else "entry")) for n in names]
            continue
        if current is None or not line.startswith("  ") or cols is None:
            continue
        row = {}
        for k, (name, start) in enumerate(cols):
            end = cols[k + 1][1] if k + 1 < len(cols) else None
            row[name] = line[start:end].strip() if name != "entry" else line[:cols[1][1]].strip()
        current[1].append(row)
    return tapes


def only(text):
    tapes = table(text)
    assert len(tapes) == 1, text
    return next(iter(tapes.values()))


def test_header_counts_and_one_line_per_slot():
    x = tg.tensor([[1.0, 2, 3], [4, 5, 6]], requires_grad=True)
    out = ((x + 2) * (x + 2) * 3).mean()
    text = tg.dump(out)
    head, rows = only(text)
    tape = out._tape
    assert int(head.group(2)) == tape.n and int(head.group(3)) == tape.ns
    assert len(rows) == tape.ns  # every slot once: leaves and entry outputs
    assert [r["out"].split()[0] for r in rows] == [f"%{s}" for s in range(tape.ns)]
    entries = [r for r in rows if r["entry"]]
    assert [int(r["entry"]) for r in entries] == list(range(tape.n))
    assert [r["grad_fn"] for r in entries] == ["AddBackward0", "AddBackward0", "MulBackward0", "MulBackward0",
                                               "MeanBackward0"]
    assert entries[-1]["shape"] == "()" and entries[0]["shape"] == "(2, 3)"
    assert all(r["dtype"] == "float32" for r in rows)
    assert "of values held" in head.group(0) and "current" in text.splitlines()[0]


def test_bytes_held_counts_each_buffer_once():
    x = tg.zeros(1000, dtype=tg.float64, requires_grad=True)
    y = (x * 2).view(10, 100)  # the view shares its input's buffer
    head, _ = only(tg.dump(y))
    assert head.group(4) == "15.6 KiB"  # x and x*2: 2 x 8000 bytes, the view adds nothing


def test_leaf_names_scalar_constants_and_attributes():
    w = tg.ones(2, 3, requires_grad=True)
    w.name = "w"
    y = tg.sum(2.5 - w.t() * 4.0, 0, keepdim=True)
    _, rows = only(tg.dump(y))
    by_op = {r["op"]: r for r in rows}
    assert by_op["leaf"]["out"] == "%0 w"
    assert by_op["t"]["inputs"] == "%0 w, perm=(1, 0)"
    assert by_op["mul_scalar"]["inputs"].endswith(", 4")
    assert by_op["rsub_scalar"]["inputs"].startswith("2.5, %")
    assert by_op["sum_dim"]["inputs"].endswith("dim=(0,), keepdim")


def test_only_what_the_output_depends_on():
    x = tg.ones(3, requires_grad=True)
    a = x * 2
    b = x.exp()  # recorded on the same tape, not needed for a
    head, rows = only(tg.dump(a))
    assert int(head.group(2)) == 2 and "showing the 1 entries" in head.group(0) + tg.dump(a).splitlines()[0]
    assert [r["op"] for r in rows] == ["leaf", "mul_scalar"]
    _, every = only(tg.dump())  # None: every live entry of the current tape
    assert [r["op"] for r in every] == ["leaf", "mul_scalar", "exp"]
    del b


def test_flags_retained_hook_and_in_place_version():
    x = tg.ones(3, requires_grad=True)
    y = x * 2
    y.retain_grad()
    z = y * y
    z.register_hook(lambda g: g)
    c = y.clone()
    out = (z + c).sum()
    c.mul_(3)  # an in-place change after c was recorded
    _, rows = only(tg.dump(out))
    flags = {r["out"]: r for r in rows}
    assert "retained" in flags[f"%{y._slot}"]["flags"].split()
    assert "hook" in flags[f"%{z._slot}"]["flags"].split()
    clone_row = next(r for r in rows if r["op"] == "clone")
    assert re.fullmatch(r"0->\d+", clone_row["ver"])


def test_freed_graph_says_so_instead_of_failing():
    x = tg.ones(2, 2, requires_grad=True)
    x.name = "x"
    out = (x * x).exp()  # every entry saves a value, so the backward frees them all
    out.backward(tg.ones(2, 2))
    text = tg.dump(out)
    assert "freed by backward()" in text and "retain_graph=True" in text
    _, rows = only(text)
    assert all("freed" in r["flags"] for r in rows if r["entry"])
    assert rows[-1]["shape"] == "(2, 2)"  # the output's own value is still known
    tg.to_dot(out)  # and the picture does not fail either


def test_entries_that_saved_nothing_survive_their_backward_with_their_shapes():
    x = tg.ones(2, 3, requires_grad=True)
    out = (x * x).sum()  # mul saves x, sum only its input's shape (as torch's SumBackward0)
    out.backward()
    text = tg.dump(out)
    assert "closed by a backward that freed some of its entries" in text
    _, rows = only(text)
    flags = {r["op"]: r["flags"].split() for r in rows if r["entry"]}
    assert "freed" in flags["mul"] and "freed" not in flags["sum"]
    assert [r["shape"] for r in rows] == ["(2, 3)", "(2, 3)", "()"]
    assert "B of values held" in text.splitlines()[0]  # the product's value is gone, its shape kept


def test_partly_freed_and_retained_graphs():
    x = tg.ones(2, requires_grad=True)
    y = x * 3
    out = y.sum()
    out.backward(retain_graph=True)
    assert "freed" not in tg.dump(out).split("flags:")[0]
    out.backward()
    assert "freed" in tg.dump(out)


def test_tape_closed_by_create_graph_says_it_still_takes_ops_on_its_values():
    x = tg.ones(2, requires_grad=True)
    (g,) = tg.autograd.grad((x * x).sum(), x, create_graph=True)
    assert "closed by a create_graph backward: ops on its values still record here" in tg.dump(g)
    s = (g * 2.0).sum()
    assert s._tape is g._tape
    tg.autograd.grad(s, x, retain_graph=True)  # a plain backward closes it for good
    assert "retained it: later ops start a new tape" in tg.dump(s)
    assert (g * 3.0)._tape is not g._tape


def test_links_into_older_tapes():
    x = tg.ones(2, requires_grad=True)
    y = x * 2
    y.sum().backward()  # frees and closes the tape: later ops start a new one
    z = y * 3
    tapes = table(tg.dump(z))
    assert sorted(tapes) == sorted({y._tape.serial, z._tape.serial})
    _, new_rows = tapes[z._tape.serial]
    link = next(r for r in new_rows if r["op"] == "link")
    assert link["inputs"] == f"tape #{y._tape.serial} %{y._slot}"


@pytest.mark.parametrize("make, note", [
    (lambda: tg.ones(2, requires_grad=True), "is a leaf (requires grad"),
    (lambda: tg.ones(2), "is a leaf (does not require grad"),
])
def test_leaves_have_no_entries(make, note):
    assert note in tg.dump(make())


def test_dump_writes_to_a_stream_or_a_path(tmp_path):
    y = tg.ones(2, requires_grad=True) * 2
    buf = io.StringIO()
    text = tg.dump(y, file=buf)
    assert buf.getvalue() == text and isinstance(text, str)
    tg.dump(y, file=tmp_path / "d.txt")
    assert (tmp_path / "d.txt").read_text() == text
    assert repr(text) == text  # reads well at a prompt


def test_bad_argument():
    with pytest.raises(TypeError, match="Tensor"):
        tg.dump(3)


# -- DOT -------------------------------------------------------------------------------------------
NODE = re.compile(r'^\s*(\w+) \[(.*)\];$')
EDGE = re.compile(r'^\s*(\w+) -> (\w+) \[(.*)\];$')
ATTR = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_dot(text):
    """Nodes {id: attrs} and edges [(src, dst, attrs)] of our DOT, checking its structure line by line."""
    lines = text.strip().splitlines()
    assert lines[0] == "digraph tapegrad {" and lines[-1] == "}"
    assert text.count("{") == text.count("}")
    nodes, edges = {}, []
    for line in lines[1:-1]:
        if line.strip().startswith(("rankdir", "node ", "edge ", "label=", "subgraph")) or line.strip() == "}":
            continue
        m = EDGE.match(line)
        if m:
            edges.append((m.group(1), m.group(2), dict(ATTR.findall(m.group(3)))))
            continue
        m = NODE.match(line)
        assert m, f"not a DOT statement: {line!r}"
        attrs = dict(ATTR.findall(m.group(2)))
        assert ", ".join(f'{k}="{v}"' for k, v in attrs.items()) == m.group(2), line  # well quoted
        nodes[m.group(1)] = attrs
    for src, dst, _ in edges:
        assert src in nodes and dst in nodes
    return nodes, edges


def test_dot_structure_leaves_outputs_and_shape_labels():
    x = tg.ones(2, 3, requires_grad=True)
    x.name = 'x "in"'  # quotes in a name must be escaped
    c = tg.full((3, 4), 2.0)
    out = (x @ c).relu().sum()
    nodes, edges = parse_dot(tg.to_dot(out))
    tape = out._tape
    assert len(nodes) == tape.ns
    assert len(edges) == sum(tg.ops.TABLE[tape.row(e)[0]].arity for e in range(tape.n))
    leaf = nodes[f"t{tape.serial}_s0"]
    assert leaf["fillcolor"] == "lightblue" and leaf["label"].startswith('x \\"in\\"')
    assert nodes[f"t{tape.serial}_s1"]["fillcolor"] == "white"  # a leaf that does not require grad
    outs = [n for n in nodes.values() if n.get("fillcolor") == "palegreen"]
    assert len(outs) == 1 and "SumBackward0" in outs[0]["label"]
    assert {e[2]["label"] for e in edges} == {"(2, 3)", "(3, 4)", "(2, 4)"}


def test_dot_across_tapes_draws_dashed_links():
    x = tg.ones(2, requires_grad=True)
    y = x * 2
    y.sum().backward()
    z = y * 3
    text = tg.to_dot(z)
    assert text.count("subgraph cluster_") == 2
    _, edges = parse_dot(text)
    assert any(e[2].get("style") == "dashed" and e[0] == f"t{y._tape.serial}_s{y._slot}" for e in edges)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_graphviz_accepts_the_dot(tmp_path):
    x = tg.ones(2, 2, requires_grad=True)
    out = (x.exp() * x).mean()
    subprocess.run(["dot", "-Tsvg"], input=tg.to_dot(out).encode(), check=True, capture_output=True)
    assert render(out, tmp_path / "g.svg").exists()


def test_render_without_graphviz_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    y = tg.ones(2, requires_grad=True) * 2
    with pytest.raises(GraphvizMissing, match="apt-get install graphviz"):
        render(y, tmp_path / "g.png")


def test_render_runs_dot_with_the_format_of_the_suffix(monkeypatch, tmp_path):
    fake = tmp_path / "dot"  # stands in for Graphviz: writes the -T format and the DOT it was given
    fake.write_text(f"#!{sys.executable}\nimport sys\n"
                    "open(sys.argv[3], 'w').write(sys.argv[1] + '\\n' + sys.stdin.read())\n")
    fake.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: str(fake) if name == "dot" else None)
    y = tg.ones(2, requires_grad=True) * 2
    path = render(y, tmp_path / "g.svg")
    written = path.read_text()
    assert written.startswith("-Tsvg\n") and written.endswith(tg.to_dot(y))


def test_dump_reads_values_only():
    x = tg.tensor(np.arange(4.0), requires_grad=True)
    y = (x * 2).sum()
    before = (y._tape.slot_table().copy(), bytes(y._tape.rows))
    tg.dump(y)
    tg.to_dot(y)
    assert np.array_equal(before[0], y._tape.slot_table()) and before[1] == bytes(y._tape.rows)
    y.backward()
    assert np.array_equal(x.grad.numpy(), [2, 2, 2, 2])


def test_custom_function_with_more_than_three_inputs():
    class Four(tg.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, c, d):
            return a * b + c * d

        @staticmethod
        def backward(ctx, g):
            return g, g, g, g

    xs = [tg.ones(2, requires_grad=True) for _ in range(4)]
    y = Four.apply(*xs)
    _, rows = only(tg.dump(y))
    calls = [r for r in rows if r["op"] == "function"]
    assert len(calls) == 2  # a row holds three inputs: the call takes two rows for one output
    assert all(r["grad_fn"] == "FourBackward" and r["out"] == f"%{y._slot}" for r in calls)
    nodes, edges = parse_dot(tg.to_dot(y))
    assert len(nodes) == 5 and len(edges) == 4


def test_render_and_to_dot_reachable_as_written_in_the_readme():
    """`tapegrad.dump` is the dump function after `import tapegrad`; render hangs off it."""
    import tapegrad
    assert tapegrad.dump.render is render
    assert tapegrad.dump.to_dot is tg.to_dot
