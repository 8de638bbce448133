"""Generated files are checked in (Numba caches only real files; editors read stubs from disk):
regenerating must change nothing, and the typed stub must let a type checker see the API."""
import os
import subprocess
import sys
import textwrap

from tools import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_regenerating_changes_no_checked_in_file(capsys):
    assert generate.main(["--check"]) == 0, capsys.readouterr().out + "\nrun: python tools/generate.py"


def _mypy(tmp_path, source):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ, MYPYPATH=ROOT)  # mypy does not follow setuptools' editable-install finder
    out = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental",
                          "--cache-dir", os.devnull, str(script)], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    return out.returncode, out.stdout + out.stderr


def test_type_checker_accepts_a_torch_style_script(tmp_path):
    code, out = _mypy(tmp_path, """
        import tapegrad as tg
        from tapegrad import nn, optim

        x = tg.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
        w = tg.randn(2, 3, requires_grad=True)
        loss = (x @ w).tanh().sum(dim=1, keepdim=True).mean()
        loss.backward(retain_graph=True)
        g: tg.Tensor | None = x.grad
        z = tg.exp(x) * 2.0 + 1 - x ** 2 / 3
        z = z.clamp(min=0.0).view(4).unsqueeze(0).t()
        n: int = z.dim()
        s: tg.Size = z.shape
        parts: tuple[tg.Tensor, ...] = z.split(1)
        with tg.no_grad():
            x.add_(1.0)
            x.grad = None
        grads = tg.autograd.grad(loss, [x])
        d: tg.dtype = tg.float64
        model = nn.Linear(2, 1)
        opt = optim.SGD(model.parameters(), lr=0.1)
        legacy: tg.Tensor = tg.Tensor([1.0, 2.0]) + tg.Tensor(2, 3).sum() + tg.LongTensor([1, 2])
        typed: bool = isinstance(legacy, tg.FloatTensor)
        r = x.sum(axis=1, keepdims=True).select(0, 0)
    """)
    assert code == 0, out


def test_type_checker_sees_mistakes(tmp_path):
    code, out = _mypy(tmp_path, """
        import tapegrad as tg

        x = tg.tensor([1.0, 2.0], requires_grad=True)
        x.no_such_method()
        y: int = x.sum()
        tg.exp(x, 2)
        x.backward(retain_grph=True)
    """)
    assert code == 1, out
    assert '"Tensor" has no attribute "no_such_method"' in out
    assert 'expression has type "Tensor", variable has type "int"' in out
    assert 'Too many arguments for "exp"' in out
    assert 'Unexpected keyword argument "retain_grph"' in out
