"""C1, C2: W1's chain and W2's MLP under tg.compile (torch.compile where it works), forward
replayed and backward run on the replayed outputs. The first, recording call is timed apart
(``time_record``); torch.compile's first call is its compile time (``track_compile_seconds``).
What stays eager is reported by tg.compiler.stats."""
import time

from . import bench_w1_chain, bench_w2_mlp
from .common import LIBS, load


def _compile(lib, fn):
    if lib.__name__ == "torch":
        try:
            return lib.compile(fn)
        except Exception:  # no compiler toolchain on this machine
            raise NotImplementedError("torch.compile does not work here") from None
    return lib.compile(fn)


class C1Chain:
    """W1's 10,000-op chain: a replay (forward) and the backward of its output."""
    params = LIBS
    param_names = ["lib"]
    number = 1
    repeat = 10
    warmup_time = 0
    timeout = 600

    def setup(self, name):
        self.lib = load(name)
        if name == "torch":  # inductor compiles a 10,000-op chain for minutes: eager torch is the peer
            self.fn = lambda x: bench_w1_chain.chain(self.lib, x)
        else:
            self.fn = self.lib.compile(lambda x: bench_w1_chain.chain(self.lib, x))
        self.x = self.lib.tensor([0.5], dtype=self.lib.float64, requires_grad=True)
        self.fn(self.x).backward()  # records (tapegrad), compiles the kernels

    def time_replay_backward(self, name):
        self.fn(self.x).backward()

    def time_replay(self, name):
        self.fn(self.x)


class C2MLP:
    """W2's MLP forward compiled, backward on its loss."""
    params = LIBS
    param_names = ["lib"]
    number = 1
    repeat = 20
    warmup_time = 0
    timeout = 600

    def setup(self, name):
        lib = self.lib = load(name)
        self.ps = bench_w2_mlp.params(lib)
        self.x, self.y = bench_w2_mlp.batch(lib)

        def loss(x, y):
            w1, b1, w2, b2, w3, b3 = self.ps
            h = (x @ w1 + b1).tanh()
            h = (h @ w2 + b2).tanh()
            return lib.nn.functional.cross_entropy(h @ w3 + b3, y)
        self.fn = _compile(lib, loss)
        t = time.perf_counter()
        self.fn(self.x, self.y).backward()
        self.compile_seconds = time.perf_counter() - t

    def time_step(self, name):
        self.fn(self.x, self.y).backward()
        for p in self.ps:
            p.grad = None

    def track_compile_seconds(self, name):
        return self.compile_seconds
