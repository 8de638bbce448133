"""tapegrad.jit: Numba's cache of the jitted files depends on all of them together."""
import shutil

import pytest

jit = pytest.importorskip("tapegrad.jit")


def test_sources_stamp_changes_with_any_jitted_file(tmp_path):
    dirs = []
    for d in jit.JITTED_DIRS:
        copy = tmp_path / d.replace("/", "_")
        shutil.copytree(d, copy, ignore=shutil.ignore_patterns("__pycache__"))
        dirs.append(str(copy))
    before = jit.sources_stamp(dirs)
    assert jit.sources_stamp(dirs) == before
    with open(f"{dirs[-1]}/context.py", "a") as f:
        f.write("\n# a change\n")
    assert jit.sources_stamp(dirs) != before


def test_engine_functions_are_cached_under_the_joint_stamp():
    from tapegrad.engine.cpu import _generated, interp
    for fn in (interp.backward, interp.replay_packed, _generated.adj_exp):
        stamp = fn._cache._impl.locator.get_source_stamp()
        assert stamp[1] == jit.STAMP
        assert jit.STAMP[:12] in fn._cache._impl.filename_base  # other sources, other files


def test_other_numba_functions_keep_numba_s_own_cache_rules(tmp_path, monkeypatch):
    src = tmp_path / "user_module.py"
    src.write_text("import numba\n@numba.njit(cache=True)\ndef f(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_module
    assert not type(user_module.f._cache._impl.locator).__name__.startswith("Tapegrad")
    assert user_module.f(1) == 2
