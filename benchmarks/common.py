"""Shared by the asv benchmarks: the libraries compared and a guard that skips an absent peer."""
import importlib


def load(name):
    """Import a library for a benchmark; asv skips a benchmark whose setup raises NotImplementedError."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise NotImplementedError(f"{name} is not installed") from None


LIBS = ["tapegrad", "torch"]
