"""Compiled replay (tg.compile) against torch: C1 = W1's chain, C2 = W2's MLP, C3 = W3's
elementwise chain, C5 = W5's deep narrow net, each with its forward compiled and the backward run
on the replayed output; S5 = W5 as a whole training step (forward, backward, SGD) compiled; G10 =
a call whose guards check 10 tensor arguments.

The ``time_*`` benchmarks time each library alone; ``CompiledRatioToTorch`` takes turns as
bench_ratios.py does and reports compiled tapegrad / torch eager, and / torch.compile where torch's
compiler works on the machine (inductor needs a C compiler). The first, recording call is timed
apart (``time_record``); torch.compile's first call, its compile, is ``track_compile_seconds``.

Targets (ratio to torch eager): C1 <= 0.01, C2 <= 0.65, C3 <= 0.4, C5 <= 0.15, S5 <= 0.15; a replay
whose guards hold spends <= 2 us checking 10 tensor arguments."""
import time

from . import bench_ratios
from . import bench_w1_chain as w1
from . import bench_w2_mlp as w2
from . import bench_w3_elementwise as w3
from . import bench_w5_deep as w5
from .common import LIBS, load


def _first_call(name, fn, *args):
    """Seconds of fn's first call (tapegrad records; torch.compile compiles), then two warm calls.
    NotImplementedError (asv: skipped) where torch's compiler fails on this machine (inductor
    needs a C compiler)."""
    try:
        t = time.perf_counter()
        fn(*args)
        seconds = time.perf_counter() - t
        for _ in range(2):
            fn(*args)
    except Exception as e:
        if name != "torch":
            raise
        raise NotImplementedError(f"torch.compile does not work here: {e}") from None
    return seconds


# -- the workloads: (forward to compile, the step around it) per library -------------------------
def mlp_loss(lib, ps):
    def loss(x, y):
        w1_, b1, w2_, b2, w3_, b3 = ps
        h = (x @ w1_ + b1).tanh()
        h = (h @ w2_ + b2).tanh()
        return lib.nn.functional.cross_entropy(h @ w3_ + b3, y)
    return loss


def elementwise_loss(lib):
    return lambda x: (lib.sin(x) * lib.exp(-x * x) + lib.tanh(x) ** 2).sum()


def deep_loss(ps):
    def loss(x):
        h = x
        for w, b in ps:
            h = (h @ w + b).tanh()
        return h.sum()
    return loss


def backward_step(loss, params, *args):
    """One forward (the compiled ``loss``) and backward, the gradients dropped as W2/W3/W5 do."""
    def step():
        loss(*args).backward()
        for p in params:
            p.grad = None
    return step


def training_step(lib, compiled):
    """(step, x): W5 as a training step (zero_grad, forward, backward, SGD without momentum) on
    W5's input, the whole step compiled where ``compiled`` (tapegrad's; torch runs it eagerly)."""
    ps = w5.params(lib)
    opt = lib.optim.SGD([p for wb in ps for p in wb], lr=1e-4)
    loss = deep_loss(ps)

    def step(x):
        opt.zero_grad()
        out = loss(x)
        out.backward()
        opt.step()
        return out
    return (lib.compile(step) if compiled and lib.__name__ != "torch" else step), w5.batch(lib)


def workloads(lib, compiler):
    """name -> a zero-argument call of one step, with its forward (or whole step) compiled by
    ``compiler`` (None: eager); each made and warmed once."""
    same = compiler or (lambda f: f)
    out = {}
    for name, bench in (("c2", C2MLP), ("c3", C3Elementwise), ("c5", C5Deep)):
        loss, args, params = bench.make(lib)
        out[name] = backward_step(same(loss), params, *args)
    train, x = training_step(lib, compiled=compiler is not None)
    out["s5"] = lambda: train(x)
    for step in out.values():
        _first_call(lib.__name__, step)
    return out


_WORK = {}


def ready(key):
    """(tapegrad compiled, torch eager, torch compiled or None) workloads, made once per process."""
    if key not in _WORK:
        tg, torch = load("tapegrad"), load("torch")
        try:
            tc = workloads(torch, torch.compile)
        except NotImplementedError:
            tc = None
        _WORK[key] = (workloads(tg, tg.compile), workloads(torch, None), tc)
    return _WORK[key]


# -- one library at a time -------------------------------------------------------------------------
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
            self.fn = lambda x: w1.chain(self.lib, x)
        else:
            self.fn = self.lib.compile(lambda x: w1.chain(self.lib, x))
        self.x = self.lib.tensor([0.5], dtype=self.lib.float64, requires_grad=True)
        self.fn(self.x).backward()  # records (tapegrad), compiles the kernels

    def time_replay_backward(self, name):
        self.fn(self.x).backward()

    def time_replay(self, name):
        self.fn(self.x)

    def time_record(self, name):
        """A first call: tapegrad records its program (eager torch: one forward)."""
        fn = self.lib.compile(lambda x: w1.chain(self.lib, x)) if name == "tapegrad" else self.fn
        fn(self.x)


class _CompiledStep:
    """A step whose forward is compiled (tapegrad.compile, torch.compile) and whose backward runs on
    its output; ``make(lib)`` gives (forward, its arguments, the parameters whose grads it drops)."""
    params = LIBS
    param_names = ["lib"]
    warmup_time = 0
    timeout = 600

    def setup(self, name):
        lib = load(name)
        loss, args, params = self.make(lib)
        self.step = backward_step(lib.compile(loss), params, *args)
        self.compile_seconds = _first_call(name, self.step)

    def time_step(self, name):
        self.step()

    def track_compile_seconds(self, name):
        return self.compile_seconds


class C2MLP(_CompiledStep):
    """W2's MLP forward compiled, backward on its loss."""
    number = 1
    repeat = 20

    @staticmethod
    def make(lib):
        ps = w2.params(lib)
        return mlp_loss(lib, ps), w2.batch(lib), ps


class C3Elementwise(_CompiledStep):
    """W3's chain over 1e6 float64 values compiled, backward on its sum."""
    number = 2
    repeat = 10

    @staticmethod
    def make(lib):
        x = w3.leaf(lib)
        return elementwise_loss(lib), (x,), [x]


class C5Deep(_CompiledStep):
    """W5's 50 layers compiled, backward on the sum."""
    number = 20
    repeat = 10

    @staticmethod
    def make(lib):
        ps = w5.params(lib)
        return deep_loss(ps), (w5.batch(lib),), [p for wb in ps for p in wb]


class C3ChunkedRun:
    """C3's compiled forward with its large elementwise run replayed whole, in cache-sized chunks on
    one thread, and in chunks on two (tapegrad.set_num_threads): what the chunked replay buys."""
    params = ["whole", "chunks-1-thread", "chunks-2-threads"]
    param_names = ["run"]
    number = 2
    repeat = 10
    warmup_time = 0

    def setup(self, run):
        from tapegrad import parallel
        self.tg = tg = load("tapegrad")
        chunk_min = parallel.MIN_ELEMENTS
        if run == "whole":
            parallel.MIN_ELEMENTS = 1 << 62
        try:
            loss, (self.x,), _ = C3Elementwise.make(tg)
            self.fn = tg.compile(loss)
            self.fn(self.x)  # records: the program keeps the plan it made
        finally:
            parallel.MIN_ELEMENTS = chunk_min
        self.threads = 2 if run == "chunks-2-threads" else 1
        self.time_forward(run)

    def time_forward(self, run):
        threads = self.tg.get_num_threads()
        self.tg.set_num_threads(self.threads)
        try:
            self.fn(self.x)
        finally:
            self.tg.set_num_threads(threads)


class S5TrainingStep:
    """W5 as a whole training step compiled: zero_grad, forward, backward, SGD step. torch runs
    it eagerly (torch.compile breaks its graph at backward and step)."""
    params = LIBS
    param_names = ["lib"]
    number = 20
    repeat = 10
    warmup_time = 0
    timeout = 600

    def setup(self, name):
        self.step, self.x = training_step(load(name), compiled=True)
        _first_call(name, self.step, self.x)

    def time_step(self, name):
        self.step(self.x)


class G10Guards:
    """A replay of a one-op program with 10 tensor arguments: the cost of its guards (argument
    shapes, dtypes, requires_grad and aliasing, grad mode) and of the call itself."""
    params = ["tapegrad"]
    param_names = ["lib"]
    number = 200
    repeat = 10
    warmup_time = 0

    def setup(self, name):
        tg = load(name)
        self.xs = [tg.ones(4) for _ in range(10)]
        self.fn = tg.compile(lambda *xs: xs[0] + 1.0)
        self.plain = tg.compile(lambda x: x + 1.0)
        for _ in range(3):
            self.fn(*self.xs)
            self.plain(self.xs[0])

    def time_replay_10_arguments(self, name):
        self.fn(*self.xs)

    def time_replay_1_argument(self, name):
        self.plain(self.xs[0])


# -- ratios, taking turns ----------------------------------------------------------------------------
class CompiledRatioToTorch:
    """Compiled tapegrad / torch eager (``track_*``) and / torch.compile (``track_*_vs_compile``),
    the median over rounds of alternating blocks."""
    unit = "tapegrad/torch"
    timeout = 900
    warmup_time = 0

    def setup(self):
        load("torch")  # NotImplementedError (asv: skipped) without torch

    def _ratio(self, name, k, compiled=False):
        ours, eager, tc = ready("all")
        theirs = (tc if compiled else eager)
        if theirs is None:
            raise NotImplementedError("torch.compile does not work here")
        return bench_ratios.alternating_ratio(ours[name], theirs[name], k=k)

    def track_c1(self):
        tg, torch = load("tapegrad"), load("torch")
        fn = tg.compile(lambda x: w1.chain(tg, x))
        x, xt = (lib.tensor([0.5], dtype=lib.float64, requires_grad=True) for lib in (tg, torch))
        fn(x).backward()
        return bench_ratios.alternating_ratio(lambda: fn(x).backward(), lambda: w1.chain(torch, xt).backward(), k=3)

    def track_c2(self):
        return self._ratio("c2", k=20)

    def track_c3(self):
        return self._ratio("c3", k=3)

    def track_c5(self):
        return self._ratio("c5", k=10)

    def track_s5(self):
        return self._ratio("s5", k=10)

    def track_c2_vs_compile(self):
        return self._ratio("c2", k=20, compiled=True)

    def track_c3_vs_compile(self):
        return self._ratio("c3", k=3, compiled=True)

    def track_c5_vs_compile(self):
        return self._ratio("c5", k=10, compiled=True)
