"""The GPU engine's figures on a real GPU, as markdown: W2, W3 and W5 forward + backward with every
tensor on the device, tapegrad against torch CUDA in alternating rounds (the issue's targets are
these ratios), and the host time per tape row of the per-row launches (W5's backward, timed on the
host without waiting for the device). tools/device_check.sh runs it on the device machine.

    python3 tools/gpu_figures.py [device] [--profile]   # device: cuda (default); cpu checks the plumbing

With --profile it also prints where the host's time goes in tapegrad's W5 steps (cProfile).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_cuda, bench_w2_mlp as w2, bench_w3_elementwise as w3, bench_w5_deep as w5  # noqa: E402
from benchmarks.bench_ratios import alternating_ratio, best  # noqa: E402
from benchmarks.common import load  # noqa: E402

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
DEVICE = ARGS[0] if ARGS else "cuda"


def synced(lib, f):
    def call():
        f()
        if DEVICE == "cuda":
            lib.cuda.synchronize()
    return call


def workloads(name):
    """{workload: a synced forward + backward call} for library ``name`` on DEVICE."""
    if DEVICE == "cuda":
        param = f"{name}-cuda"
        lib, ps, x, y = bench_cuda._w2(param)
        lib3, x3 = bench_cuda._w3(param)
        lib5, ps5, x5 = bench_cuda._w5(param)
    else:
        lib, ps, x, y = w2.ready(name)
        lib3, x3 = w3.ready(name)
        lib5, ps5, x5 = w5.ready(name)
    return {"W2": (synced(lib, lambda: w2.step(lib, ps, x, y)), 20),
            "W3": (synced(lib3, lambda: w3.step(lib3, x3)), 3),
            "W5": (synced(lib5, lambda: w5.step(lib5, ps5, x5)), 20)}


def host_per_row(name):
    """(forward host us per op, backward host us per row) of W5 on DEVICE: the host's time to record
    and to launch, the device left running (synchronised before and after, outside the timing)."""
    lib = load(name)
    if DEVICE == "cuda":
        _, ps, x = bench_cuda._w5(f"{name}-cuda")
    else:
        _, ps, x = w5.ready(name)
    rows = 3 * len(ps) + 1  # matmul, add, tanh a layer, then the sum
    sync = lib.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    fwd, bwd = [], []
    for _ in range(15):
        sync()
        t0 = time.perf_counter()
        h = x
        for w, b in ps:
            h = (h @ w + b).tanh()
        loss = h.sum()
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        sync()
        for w, b in ps:
            w.grad = b.grad = None
        fwd.append((t1 - t0) / rows)
        bwd.append((t3 - t2) / rows)
    return min(fwd) * 1e6, min(bwd) * 1e6


def main():
    ours, theirs = workloads("tapegrad"), workloads("torch")
    print(f"## tapegrad against torch on {DEVICE}: forward + backward, median of alternating rounds\n")
    print("| workload | tapegrad / torch | tapegrad | torch |")
    print("|---|---|---|---|")
    for w, (f, k) in ours.items():
        g = theirs[w][0]
        r = alternating_ratio(f, g, k=k)
        print(f"| {w} | {r:.2f} | {best(f, k) * 1e3:.3f} ms | {best(g, k) * 1e3:.3f} ms |", flush=True)
    print()
    for name in ("tapegrad", "torch"):
        f, b = host_per_row(name)
        print(f"- {name} W5 host time: forward {f:.1f} us an op, backward {b:.1f} us a row "
              f"(launches not waited for)")
    if "--profile" in sys.argv:
        profile(ours["W5"][0])


def profile(step, steps=10):
    import cProfile
    import pstats
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(steps):
        step()
    pr.disable()
    print(f"\n## where the host's time goes: {steps} tapegrad W5 steps\n\n```")
    stats = pstats.Stats(pr, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(35)
    print("```")


if __name__ == "__main__":
    main()
