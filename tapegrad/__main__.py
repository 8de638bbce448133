"""``python -m tapegrad``: dump the tapes a script leaves alive, or run the demo."""
import argparse
import gc
import os
import runpy
import sys
import traceback


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tapegrad",
        description="tapegrad: reverse-mode autograd with PyTorch's semantics on a flat, inspectable tape.",
        epilog="examples:\n  python -m tapegrad demo\n  python -m tapegrad dump train.py --png graph.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("dump", help="run a script and print the tapes it leaves alive",
                       description="Run SCRIPT.py (as __main__), then list every tape entry still alive when it "
                                   "ends: tensors reachable from its globals are named by their variables.")
    d.add_argument("script", metavar="SCRIPT.py", help="the Python script to run")
    d.add_argument("--dot", metavar="FILE", help="also write the graph as Graphviz DOT text to FILE")
    d.add_argument("--png", metavar="FILE", help="also draw the graph to FILE (needs Graphviz's dot)")
    m = sub.add_parser("demo", help="the worked examples, a small MLP trained on two spirals, a tape dump",
                       description="Run every worked example of the autograd articles beside the values they "
                                   "show, train a small MLP on two spirals, dump and gradcheck one step.")
    m.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    m.add_argument("--png", metavar="FILE", default="tapegrad-demo.png",
                   help="where to draw one training step's graph when Graphviz is installed")
    args = parser.parse_args(argv)
    if args.command == "dump":
        return dump_script(args.script, args.dot, args.png)
    if args.command == "demo":
        from .demo import run
        return run(steps=args.steps, png=args.png)
    parser.print_help()
    return 2


def _fail(msg, code=1):
    print(f"tapegrad dump: {msg}", file=sys.stderr)
    return code


def dump_script(path, dot=None, png=None):
    from .dump import GraphvizMissing, dot_view, format_view, render, view_of_tapes
    if not os.path.isfile(path):
        return _fail(f"cannot run {path!r}: no such file", 2)
    script = os.path.abspath(path)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [path]
    sys.path.insert(0, os.path.dirname(script))  # as `python SCRIPT.py` does
    try:
        names = runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            return _fail(f"{path} exited with status {exc.code}; nothing dumped",
                         exc.code if isinstance(exc.code, int) else 1)
        names = _script_globals(exc, script)
    except Exception as exc:  # noqa: BLE001  (any failure of the user's script is reported, not raised)
        _print_script_traceback(exc, script)
        return _fail(f"{path} failed with {type(exc).__name__}: {exc}; nothing dumped")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    sys.stdout.flush()
    tapes, named = _live(names)
    out = sys.stdout
    print(f"\n== tapegrad dump: tapes left alive by {path} ==", file=out)
    if not tapes:
        print("none: no tensor with a grad_fn is alive (a tensor only in a function's locals is gone "
              "when the function returns; keep it in a global to dump it)", file=out)
        return 0
    view = view_of_tapes(tapes, named)
    out.write(format_view(view))
    if dot:
        with open(dot, "w", encoding="utf-8") as f:
            f.write(dot_view(view))
        print(f"DOT graph written to {dot}", file=out)
    if png:
        try:
            render(None, png, view=view)
        except GraphvizMissing as exc:
            fallback = os.path.splitext(png)[0] + ".dot"
            with open(fallback, "w", encoding="utf-8") as f:
                f.write(dot_view(view))
            return _fail(f"cannot draw {png}: {exc}\nThe DOT text is in {fallback}.")
        except RuntimeError as exc:
            return _fail(f"cannot draw {png}: {exc}")
        print(f"graph drawn to {png}", file=out)
    return 0


def _live(names):
    """The tapes alive now (found by the garbage collector, so tapes held anywhere count), and the
    script's global tensors, with their names, to label the listing."""
    from .tape import Tape
    from .tensor import Tensor
    named = []
    for name, v in names.items():
        if name.startswith("__"):
            continue
        if isinstance(v, Tensor):
            named.append((name, v))
        elif isinstance(v, (list, tuple)):
            named.extend((f"{name}[{i}]", x) for i, x in enumerate(v) if isinstance(x, Tensor))
        elif isinstance(v, dict):
            named.extend((f"{name}[{k!r}]", x) for k, x in v.items() if isinstance(x, Tensor))
    gc.collect()  # only tapes something still reaches
    tapes = [o for o in gc.get_objects() if type(o) is Tape and o.n]
    return tapes, named


def _script_globals(exc, script):
    """The script's globals, from the frame of the script in a traceback (sys.exit keeps them there)."""
    tb = exc.__traceback__
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == script:
            return dict(tb.tb_frame.f_globals)
        tb = tb.tb_next
    return {}


def _print_script_traceback(exc, script):
    """The script's traceback, without the frames of this CLI and runpy above it."""
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != script:
        tb = tb.tb_next
    if tb is None and not isinstance(exc, SyntaxError):  # it failed outside the script's own code: show all
        tb = exc.__traceback__
    traceback.print_exception(type(exc), exc, tb)


if __name__ == "__main__":
    sys.exit(main())
