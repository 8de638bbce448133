"""Anomaly mode's cost: a chain of 10,000 ``x = x * 1.0001`` on a one-element float64 tensor,
recorded and replayed backward with the mode off (the default: it must cost nothing, so these
track W1's per-op figures across commits) and on (stacks kept per entry, NaN checked per entry).

Each library runs the same code; compare tapegrad with torch in the same run.
"""
from .common import LIBS, load

N = 10_000


def chain(x):
    for _ in range(N):
        x = x * 1.0001
    return x.sum()


class AnomalyOff:
    """The default: recording and backward exactly as W1's, nothing kept, nothing checked."""
    params = LIBS
    param_names = ["lib"]
    number = 1
    repeat = 10
    warmup_time = 0
    anomaly = False

    def setup(self, name):
        self.lib = load(name)
        self.x = self.lib.tensor([0.5], dtype=self.lib.float64, requires_grad=True)
        with self.lib.autograd.set_detect_anomaly(self.anomaly):
            self.loss = chain(self.x)
            self.loss.backward(retain_graph=True)  # compiles (or loads from cache) once

    def time_record(self, name):
        with self.lib.autograd.set_detect_anomaly(self.anomaly):
            chain(self.x)

    def time_backward(self, name):
        with self.lib.autograd.set_detect_anomaly(self.anomaly):
            self.loss.backward(retain_graph=True)


class AnomalyOn(AnomalyOff):
    """Every entry keeps the stack that recorded it; backward checks every entry for NaN."""
    anomaly = True
    time_record = AnomalyOff.time_record  # (named here too: tests/test_benchmarks.py reads the class's own)
    time_backward = AnomalyOff.time_backward
