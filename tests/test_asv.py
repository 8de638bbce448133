"""The Makefile's asv targets as a user runs them on a fresh machine (CI=true, no input, no asv
machine info yet): asv finds the whole suite, `make bench` files results under the checked-out
commit, `make bench-publish` lists every benchmark with a graph for what ran, and
`make bench-compare` judges a regression as `asv continuous` does or says what to run first.

One benchmark runs, once (QUICK=1), into a results folder of the test's own: the checkout's
.asv/results is never touched. Pip is not: the test runs in the installed environment.
"""
import importlib
import inspect
import json
import os
import pkgutil
import shutil
import subprocess
import sys

import pytest

import benchmarks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(sys.prefix, "bin")
RAN = "bench_w1_chain.W1Record.time_record"  # records only: no Numba compile in a 5 s run
ASV_PREFIXES = ("time_", "timeraw_", "track_", "mem_", "peakmem_")

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(BIN, "asv")) or shutil.which("make") is None
    or shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")),
    reason="needs asv in this environment (pip install -e .[test]), make, and a git checkout")


def suite():
    """Every benchmark in benchmarks/, named as asv names it, read from the source."""
    names = set()
    for info in pkgutil.iter_modules(benchmarks.__path__):
        module = importlib.import_module(f"benchmarks.{info.name}")
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and not cls_name.startswith("_"):  # (asv skips _names)
                names |= {f"{info.name}.{cls_name}.{m}" for m in dir(cls) if m.startswith(ASV_PREFIXES)}
    return names


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def parent():
    """HEAD~1's hash, or skip (a shallow clone may not have it)."""
    out = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD~1^{commit}"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("a checkout without HEAD's parent")
    return out.stdout.strip()


class Checkout:
    """The checkout, with asv's folders and home in a temporary directory."""

    def __init__(self, tmp):
        with open(os.path.join(ROOT, "asv.conf.json")) as f:
            conf = json.loads("".join(line for line in f if not line.lstrip().startswith("//")))
        self.results = str(tmp / "results")
        self.env_dir = str(tmp / "env")
        self.html = str(tmp / "html")
        conf.update(repo=ROOT, benchmark_dir=os.path.join(ROOT, "benchmarks"), env_dir=self.env_dir,
                    results_dir=self.results, html_dir=self.html)
        self.conf = str(tmp / "asv.conf.json")
        with open(self.conf, "w") as f:
            json.dump(conf, f)
        (tmp / "home").mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        self.env = dict(env, CI="true", HOME=str(tmp / "home"))
        self.head = git("rev-parse", "HEAD")
        self.machine = os.uname().nodename

    def make(self, target, *variables, env=None):
        # -o bench-install: the environment is this one, installed already
        cmd = ["make", "--no-print-directory", "-o", "bench-install", target, f"VENV={sys.prefix}",
               f"ASV_CONF={self.conf}", *variables]
        return subprocess.run(cmd, cwd=ROOT, env=env or self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=300)

    def asv(self, *args):
        return subprocess.run([os.path.join(BIN, "asv"), "--config", self.conf, *args], cwd=ROOT, env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)

    def result_files(self, commit):
        folder = os.path.join(self.results, self.machine)
        return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.startswith(commit[:8] + "-")]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    co = Checkout(tmp_path_factory.mktemp("asv"))
    run = co.make("bench", "QUICK=1", f"BENCH=^{RAN}")
    assert run.returncode == 0, run.stdout + run.stderr
    co.bench_output = run.stdout
    return co


@pytest.fixture(scope="module")
def site(checkout):
    run = checkout.make("bench-publish")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "preview" in run.stdout  # how to open it
    with open(os.path.join(checkout.html, "index.json")) as f:
        return json.load(f)


def test_asv_check_discovers_the_suite(checkout):
    out = checkout.asv("check", "--python=same")
    assert out.returncode == 0 and "No problems found" in out.stdout, out.stdout + out.stderr
    with open(os.path.join(checkout.results, "benchmarks.json")) as f:
        discovered = set(json.load(f)) - {"version"}
    assert discovered == suite()


def test_quick_run_files_results_under_head(checkout):
    # asv's machine questions were answered without a prompt, in the fresh home
    with open(os.path.join(checkout.env["HOME"], ".asv-machine.json")) as f:
        assert checkout.machine in json.load(f)
    (path,) = checkout.result_files(checkout.head)
    with open(path) as f:
        result = json.load(f)
    assert result["commit_hash"] == checkout.head
    assert set(result["results"]) == {RAN}
    tapegrad_time, torch_time = result["results"][RAN][0]
    assert tapegrad_time > 0
    if importlib.util.find_spec("torch"):
        assert torch_time > 0


def test_results_are_kept_between_runs(checkout):
    (path,) = checkout.result_files(checkout.head)
    with open(path) as f:
        tapegrad_time = json.load(f)["results"][RAN][0][0]
    run = checkout.make("bench", "QUICK=1", f"BENCH=^{RAN}\\(.torch")  # the other parameter only
    assert run.returncode == 0, run.stdout + run.stderr
    (path,) = checkout.result_files(checkout.head)
    with open(path) as f:
        assert json.load(f)["results"][RAN][0][0] == tapegrad_time


def test_bench_commit_times_that_commits_tapegrad(checkout):
    base = parent()
    env = {k: v for k, v in checkout.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run = checkout.make("bench", "COMMIT=HEAD~1", "QUICK=1", f"BENCH=^{RAN}\\(.tapegrad", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    (path,) = checkout.result_files(base)
    with open(path) as f:
        assert json.load(f)["commit_hash"] == base
    # the timed processes imported HEAD~1's tapegrad, extracted into asv's env_dir
    source = os.path.join(checkout.env_dir, f"src-{base[:12]}", "tapegrad")
    assert os.path.exists(os.path.join(source, "__pycache__", f"__init__.{sys.implementation.cache_tag}.pyc"))


def test_published_index_lists_every_benchmark(checkout, site):
    assert set(site["benchmarks"]) == suite()
    assert site["params"]["branch"] == ["HEAD"]
    assert checkout.head in site["revision_to_hash"].values()


def test_published_graph_shows_both_libraries(checkout, site):
    graphs = [os.path.join(d, n) for d, _, files in os.walk(os.path.join(checkout.html, "graphs"))
              for n in files if n == RAN + ".json" and "branch-HEAD" in d]
    assert graphs, "no history graph for the benchmark that ran"
    with open(graphs[0]) as f:
        points = {site["revision_to_hash"][str(revision)]: values for revision, values in json.load(f)}
    tapegrad_time, torch_time = points[checkout.head]  # a point for each library
    assert tapegrad_time > 0


def test_torch_is_a_parameter_and_ratios_are_tracks(site):
    """The graphs show both libraries: a workload's library is a parameter, not a separate class."""
    workloads = [n for n in site["benchmarks"] if n.startswith("bench_w")]
    assert workloads
    for name in workloads:
        bench = site["benchmarks"][name]
        assert bench["param_names"] == ["lib"] and bench["params"] == [["'tapegrad'", "'torch'"]], name
    ratios = [n for n in site["benchmarks"] if n.startswith("bench_ratios.RatioToTorch.")]
    assert ratios
    for name in ratios:
        bench = site["benchmarks"][name]
        assert bench["type"] == "track" and bench["unit"] == "tapegrad/torch", name


def _fake_results(checkout, commit, scale):
    """``commit``'s results: HEAD's, each value times ``scale`` (a base to compare against)."""
    (path,) = checkout.result_files(checkout.head)
    with open(path) as f:
        result = json.load(f)
    result["commit_hash"] = commit
    for row in result["results"].values():
        row[0] = [v * scale for v in row[0]]
    with open(path.replace(checkout.head[:8], commit[:8], 1), "w") as f:
        json.dump(result, f)


def test_compare_fails_on_a_regression(checkout):
    _fake_results(checkout, parent(), 0.01)  # the base 100 times faster: HEAD regressed, whatever the noise
    run = checkout.make("bench-compare", "BASE=HEAD~1", "QUICK=1", f"BENCH=^{RAN}\\(.tapegrad", "FACTOR=1.25")
    assert run.returncode != 0, run.stdout + run.stderr
    rows = [line for line in run.stdout.splitlines() if RAN in line and line.startswith("|")]
    assert len(rows) == 2 and all(row.startswith("| +") for row in rows), run.stdout
    assert "Ratio" in run.stdout and "PERFORMANCE DECREASED" in run.stdout


def test_compare_passes_when_nothing_got_slower(checkout):
    _fake_results(checkout, parent(), 100.0)  # the base 100 times slower
    out = subprocess.run([os.path.join(BIN, "python"), "tools/bench.py", "--config", checkout.conf, "compare",
                          "HEAD~1", "--factor", "1.25", "--bench", f"^{RAN}"], cwd=ROOT, env=checkout.env,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PERFORMANCE INCREASED" in out.stdout and out.stdout.count("| -") == 2


@pytest.mark.parametrize("base, says", [
    ("no-such-ref", "unknown base BASE=no-such-ref"),
    ("HEAD", "is the checked-out commit"),
])
def test_compare_refuses_a_base_it_cannot_compare_against(checkout, base, says):
    run = checkout.make("bench-compare", f"BASE={base}", "QUICK=1", f"BENCH=^{RAN}")
    assert run.returncode != 0 and says in run.stderr, run.stdout + run.stderr
    assert "asv" not in run.stdout  # refused before any run


def test_compare_says_what_to_run_for_a_base_without_results(tmp_path):
    base = parent()
    run = Checkout(tmp_path).make("bench-compare", "BASE=HEAD~1")  # no results at all
    assert run.returncode != 0, run.stdout + run.stderr
    assert f"no results for BASE=HEAD~1 ({base[:8]})" in run.stderr
    assert f"make bench COMMIT={base[:8]}" in run.stderr
    assert "asv" not in run.stdout


def test_publish_says_what_to_run_without_results(tmp_path):
    run = Checkout(tmp_path).make("bench-publish")
    assert run.returncode != 0 and "run make bench first" in run.stderr, run.stdout + run.stderr
