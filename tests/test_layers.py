"""The package stands on one-way floors: a module imports only from its own floor or below, at the
top of the file or inside a function alike, and no imports go round in a circle."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tapegrad")

# Lowest first. A module not listed takes the floor of the nearest package listed above it.
FLOORS = [
    ["tapegrad.dtypes", "tapegrad.blas", "tapegrad.printing", "tapegrad.formula", "tapegrad.operands",
     "tapegrad.malloc", "tapegrad.jit", "tapegrad.parallel",
     "tapegrad.cuda"],  # (parallel: the thread count and its pool; cuda: numba.cuda and GPU values, no tapes)
    ["tapegrad.engine.cpu"],  # the jitted engine: Numba and floor 0 only (its dispatch is generated)
    ["tapegrad.tape", "tapegrad.grad_mode"],
    ["tapegrad.engine.cpu_replay"],  # the CPU engine behind the driver's interface: tapes, no Tensors or ops
    ["tapegrad.tensor"],
    ["tapegrad.ops", "tapegrad.creation"],
    ["tapegrad.engine.errors", "tapegrad.engine.delivery"],  # device-free, below the two walks that use them
    ["tapegrad.engine.create_graph"],
    ["tapegrad.engine.cuda_replay"],  # the CUDA engine: runs the op table's GPU adjoints over a tape
    ["tapegrad.engine", "tapegrad.engine.driver"],  # the driver chooses between the walk and a device engine
    ["tapegrad.autograd", "tapegrad.dump"],
    ["tapegrad.nn", "tapegrad.optim", "tapegrad.compiler"],  # (compiler: a compiled module is an nn.Module)
    ["tapegrad.func"],  # (functional_call calls modules; vmap replays programs)
    ["tapegrad", "tapegrad._methods", "tapegrad.__main__", "tapegrad.demo"],
]


def floor_of(module):
    parts = module.split(".")
    while parts:
        name = ".".join(parts)
        for k, names in enumerate(FLOORS):
            if name in names:
                return k
        parts.pop()
    raise AssertionError(f"{module} has no floor in tests/test_layers.py")


def _is_module(name):
    path = os.path.join(os.path.dirname(PACKAGE), *name.split("."))
    return os.path.exists(path + ".py") or os.path.exists(os.path.join(path, "__init__.py"))


def import_edges():
    """{module: {imported tapegrad module: line}} for every import statement in the package."""
    edges = {}
    for dirpath, _, files in os.walk(PACKAGE):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
            module = rel[:-len(".__init__")] if f == "__init__.py" else rel
            package = module if f == "__init__.py" else module.rsplit(".", 1)[0]
            out = edges.setdefault(module, {})
            with open(path) as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names if a.name.split(".")[0] == "tapegrad"]
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = package.split(".")[:len(package.split(".")) - node.level + 1]
                        source = ".".join(base + ([node.module] if node.module else []))
                    elif node.module and node.module.split(".")[0] == "tapegrad":
                        source = node.module
                    else:
                        continue
                    subs = [f"{source}.{a.name}" for a in node.names if _is_module(f"{source}.{a.name}")]
                    targets = subs + ([source] if len(subs) < len(node.names) else [])
                else:
                    continue
                for t in targets:
                    if t != module:
                        out.setdefault(t, node.lineno)
    return edges


EDGES = import_edges()


@pytest.mark.parametrize("module", sorted(EDGES))
def test_imports_go_down(module):
    mine = floor_of(module)
    upward = [f"{t} (line {line}, floor {floor_of(t)})" for t, line in EDGES[module].items() if floor_of(t) > mine]
    assert not upward, f"{module} (floor {mine}) imports from above: {upward}"


def test_no_import_cycle():
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in EDGES.get(m, ()):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(EDGES):
        if m not in state:
            visit(m)


def test_the_walk_sees_function_level_imports():
    assert "tapegrad.jit.forward" in EDGES["tapegrad.ops.elementwise"]  # imported inside functions, lazily
