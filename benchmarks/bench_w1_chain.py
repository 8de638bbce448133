"""W1: a chain of 10,000 elementwise ops on a one-element float64 tensor, then sum.

Per-op overhead in isolation: recording (the forward) and backward are timed separately.
Each library runs the same code; compare tapegrad with torch in the same run.
"""
from .common import LIBS, load

N_ROUNDS = 2000  # 5 ops a round: 10,000 ops


def chain(lib, x):
    y = x
    for _ in range(N_ROUNDS):
        y = y * 0.9
        y = y + 0.1
        y = lib.sin(y)
        y = lib.tanh(y)
        y = lib.exp(y)  # tanh keeps exp's argument in (-1, 1)
    return y.sum()


class W1Record:
    """Forward with recording; each chain is dropped, so its tape is freed before the next."""
    params = LIBS
    param_names = ["lib"]
    number = 1
    repeat = 10
    warmup_time = 0

    def setup(self, name):
        self.lib = load(name)
        self.x = self.lib.tensor([0.5], dtype=self.lib.float64, requires_grad=True)

    def time_record(self, name):
        chain(self.lib, self.x)


class W1Backward:
    """Backward over the recorded chain (retain_graph, so the same tape replays each time)."""
    params = LIBS
    param_names = ["lib"]
    number = 1
    repeat = 10
    warmup_time = 0

    def setup(self, name):
        self.lib = load(name)
        self.x = self.lib.tensor([0.5], dtype=self.lib.float64, requires_grad=True)
        self.loss = chain(self.lib, self.x)
        self.loss.backward(retain_graph=True)  # compiles (or loads from cache) once

    def time_backward(self, name):
        self.loss.backward(retain_graph=True)
