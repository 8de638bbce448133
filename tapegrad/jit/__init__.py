"""Numba building blocks below every engine: reading NumPy array headers, the BLAS call, and the
jitted forward kernels the op table uses. Numba only, imported lazily (never by ``import tapegrad``);
nothing here imports a tapegrad module above floor 0.

Every jitted module of tapegrad imports ``njit`` from here, so this runs before any of their
functions is declared: it makes Numba's on-disk cache of those functions depend on all of their
source files together. Numba checks only the file that defines a function, but a cached function
holds the compiled code of what it calls and inlines from other files (the interpreter inlines the
generated dispatch): after a change to one of those, it would run stale code. The joint stamp is
also in the cache's file names, so processes running different sources never share a file.
"""
import functools
import hashlib
import os

import numba
from numba.core import caching

# NumPy's error model: a float division by zero gives inf or nan, as in NumPy and torch (sqrt's
# adjoint at 0 is inf). Numba's default raised ZeroDivisionError from inside the kernel.
njit = functools.partial(numba.njit, error_model="numpy")

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JITTED_DIRS = (os.path.join(_PACKAGE, "jit"), os.path.join(_PACKAGE, "engine", "cpu"))


def sources_stamp(dirs=JITTED_DIRS):
    """A hash of every Python source under ``dirs``: it changes when any of them does."""
    h = hashlib.sha256()
    for d in dirs:
        for name in sorted(os.listdir(d)):
            if name.endswith(".py"):
                with open(os.path.join(d, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def _is_jitted_source(path):
    path = os.path.abspath(path)
    return any(os.path.dirname(path) == d for d in JITTED_DIRS)


def _stamped(locator):
    """``locator`` (a Numba cache locator class) for tapegrad's jitted files only, with their
    joint stamp added to each one's own."""
    class Stamped(locator):
        @classmethod
        def from_function(cls, py_func, py_file):
            if not _is_jitted_source(py_file):
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return super().get_source_stamp(), STAMP

        def get_disambiguator(self):
            # In the file names too: two processes of different sources (a test run while the
            # files are edited) otherwise rewrite one index, and each numbers its entries from 1,
            # so one could load the other's code for another signature.
            return f"{super().get_disambiguator()}-{STAMP[:12]}"

    Stamped.__name__ = Stamped.__qualname__ = "Tapegrad" + locator.__name__.lstrip("_")
    return Stamped


class _KeyedFiles(caching.IndexDataCacheFile):
    """Numba's index and data files; for tapegrad's functions each data file is named by a hash of
    its key (signature and target). Numba numbers them instead, from the index as it read it: two
    processes compiling one function for two signatures at once could both take number 1, and the
    index left by one then names the data file the other wrote last, so a third process loads
    code compiled for another signature (seen as wrong gradients in a blocked run while two test
    runs shared one cache). By key, an index entry can only be lost (a compile again), never wrong."""

    def save(self, key, data):
        stamp = self._source_stamp
        if not (isinstance(stamp, tuple) and len(stamp) == 2 and stamp[1] == STAMP):
            return super().save(key, data)
        name = self._data_name_pattern.replace("{number:d}", hashlib.sha256(self._dump(key)).hexdigest()[:20])
        self._save_data(name, data)  # (the data first: an index entry never names a file not yet written)
        overloads = self._load_index()
        if overloads.get(key) != name:
            overloads[key] = name
            self._save_index(overloads)


STAMP = sources_stamp()
_impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # (named _CacheImpl before Numba 0.61)
_impl._locator_classes[:0] = [_stamped(c) for c in _impl._locator_classes]
caching.IndexDataCacheFile = _KeyedFiles  # (Cache builds its files through this module name)
