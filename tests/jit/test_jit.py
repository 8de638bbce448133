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


def test_two_processes_saving_two_signatures_never_cross_their_code(tmp_path):
    """Numba numbers data files from the index it read: two processes that both read an empty
    index wrote "1" each, and the index of one named the other's code. Keyed names cannot cross:
    an index entry may be lost (a compile again), but what it names is its own key's code."""
    from numba.core import caching
    stamp = (("mtime", 1), jit.STAMP)
    first, second = (caching.IndexDataCacheFile(str(tmp_path), "f-1", stamp) for _ in range(2))
    first._load_index = second._load_index = lambda: {}  # both read the index before either saved
    late = []  # the first process's data write lands last
    write = first._save_data
    first._save_data = lambda name, data: late.append((name, data))
    first.save(("float64",), "code for float64")
    second.save(("float32",), "code for float32")
    write(*late[0])
    reader = caching.IndexDataCacheFile(str(tmp_path), "f-1", stamp)
    assert reader.load(("float32",)) == "code for float32"
    assert reader.load(("float64",)) in (None, "code for float64")
    other = caching.IndexDataCacheFile(str(tmp_path), "g-1", ("mtime", 1))  # not tapegrad's: Numba's numbering
    other.save(("int64",), "code")
    assert (tmp_path / "g-1.1.nbc").exists()
