"""Every asv benchmark runs once per parameter, so that a benchmark broken by an API change
fails here rather than in a later `make bench` (asv reports a failing benchmark and goes on)."""
import importlib
import inspect
import math
import pkgutil

import pytest

import benchmarks
from benchmarks import bench_ratios


def _cases():
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if not info.name.startswith("bench_"):
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or name.startswith("_"):  # (asv skips _names)
                continue
            methods = [m for m in dir(cls) if m.startswith(("time_", "track_"))]
            for param in getattr(cls, "params", [None]):
                for m in methods:
                    yield pytest.param(cls, m, param, id=f"{info.name}.{name}.{m}[{param}]")


@pytest.mark.parametrize("cls, method, param", list(_cases()))
def test_benchmark_runs(cls, method, param, monkeypatch):
    # the ratio tracks alternate 15 rounds of blocks: one round of one call each is enough here
    real = bench_ratios.alternating_ratio
    monkeypatch.setattr(bench_ratios, "alternating_ratio", lambda ours, theirs, k: real(ours, theirs, 1, rounds=1))
    args = () if param is None else (param,)
    bench = cls()
    try:
        bench.setup(*args)
    except NotImplementedError:  # asv's skip: the peer library is not installed
        pytest.skip(f"{param or 'torch'} is not installed")
    result = getattr(bench, method)(*args)
    if method.startswith("track_"):
        assert isinstance(result, float) and math.isfinite(result) and result > 0
