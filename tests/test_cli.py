"""`python -m tapegrad`: --help, dump SCRIPT.py (with --dot and --png), demo; run in a subprocess."""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = """
import tapegrad as tg
w = tg.ones(2, 3, requires_grad=True)
x = tg.full((4, 2), 0.5)
hidden = (x @ w).tanh()
loss = hidden.sum()
"""


def run(*args, cwd=None, path=None):
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "tapegrad", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def fake_dot(path):
    """Stands in for Graphviz's dot: writes the -T format and the DOT text it was given to the -o file."""
    path.write_text(f"#!{sys.executable}\nimport sys\n"
                    "open(sys.argv[3], 'w').write(sys.argv[1] + '\\n' + sys.stdin.read())\n")
    path.chmod(0o755)
    return path


def script(tmp_path, body, name="s.py"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return str(p)


def test_help_lists_the_subcommands():
    r = run("--help")
    assert r.returncode == 0
    assert "dump" in r.stdout and "demo" in r.stdout
    r = run("dump", "--help")
    assert r.returncode == 0 and "--dot" in r.stdout and "--png" in r.stdout


def test_no_subcommand_prints_help_and_fails():
    r = run()
    assert r.returncode == 2 and "dump" in r.stdout


def test_dump_names_the_script_globals(tmp_path):
    r = run("dump", script(tmp_path, SCRIPT + "print('script ran')\n"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.index("script ran") < out.index("tapegrad dump")
    assert "tape #" in out and "3 entries" in out  # mm, tanh, sum
    for name in ("%0 x", "%1 w", "%3 hidden", "%4 loss"):
        assert name in out
    assert "TanhBackward0" in out


def test_dump_writes_dot(tmp_path):
    dot = tmp_path / "g.dot"
    r = run("dump", script(tmp_path, SCRIPT), "--dot", str(dot))
    assert r.returncode == 0, r.stderr
    text = dot.read_text()
    assert text.startswith("digraph tapegrad {") and "palegreen" in text and "lightblue" in text


def test_png_without_graphviz_fails_clearly_and_keeps_the_dot(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    png = tmp_path / "g.png"
    r = run("dump", script(tmp_path, SCRIPT), "--png", str(png), path=str(empty))
    assert r.returncode == 1
    assert "Graphviz" in r.stderr and "apt-get install graphviz" in r.stderr
    assert not png.exists() and (tmp_path / "g.dot").read_text().startswith("digraph")
    assert "loss" in r.stdout  # the dump itself was printed


def test_png_with_graphviz(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    fake_dot(bin_ / "dot")
    png = tmp_path / "g.png"
    r = run("dump", script(tmp_path, SCRIPT), "--png", str(png), path=str(bin_))
    assert r.returncode == 0, r.stderr
    assert png.read_text().startswith("-Tpng\ndigraph tapegrad {")


def test_missing_script():
    r = run("dump", "no/such/script.py")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_failing_script_shows_its_traceback(tmp_path):
    path = script(tmp_path, """
        import tapegrad as tg
        def inner():
            return 1 / 0
        inner()
        """, "broken.py")
    r = run("dump", path)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and 'broken.py", line 4, in inner' in r.stderr
    assert "ZeroDivisionError" in r.stderr and "nothing dumped" in r.stderr
    assert "runpy" not in r.stderr and "__main__.py" not in r.stderr  # only the script's frames


def test_syntax_error_in_script(tmp_path):
    r = run("dump", script(tmp_path, "x = (\n", "bad.py"))
    assert r.returncode == 1 and "SyntaxError" in r.stderr and "bad.py" in r.stderr


@pytest.mark.parametrize("code, status", [(0, 0), (3, 3)])
def test_script_calling_sys_exit(tmp_path, code, status):
    r = run("dump", script(tmp_path, SCRIPT + f"import sys\nsys.exit({code})\n"))
    assert r.returncode == status
    if status == 0:
        assert "loss" in r.stdout and "TanhBackward0" in r.stdout
    else:
        assert "exited with status 3" in r.stderr


def test_script_without_live_tapes(tmp_path):
    r = run("dump", script(tmp_path, """
        import tapegrad as tg
        def f():
            x = tg.ones(2, requires_grad=True)
            return (x * 2).sum().item()
        print(f())
        """))
    assert r.returncode == 0 and "none: no tensor with a grad_fn is alive" in r.stdout


def test_script_sees_its_own_argv_and_directory(tmp_path):
    (tmp_path / "helper.py").write_text("VALUE = 7\n")
    r = run("dump", script(tmp_path, "import sys, helper\nprint(sys.argv[0].endswith('s.py'), helper.VALUE)\n"),
            cwd="/")
    assert r.returncode == 0, r.stderr
    assert "True 7" in r.stdout


def test_demo(tmp_path):
    r = run("demo", "--steps", "40", "--png", str(tmp_path / "demo.png"), cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "40/40 results match the articles" in out
    assert "MISMATCH" not in out
    assert "2-32-32-2" in out and "final accuracy" in out
    assert "MeanBackward0" in out or "NegBackward0" in out  # the dump of one step
    assert "passed" in out.split("4. Checking")[1]
