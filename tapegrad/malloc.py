"""Opt-in malloc tuning for programs dominated by large temporaries (glibc only).

glibc hands blocks over 128 KiB back to the OS when they are freed (and trims the heap top), so
each large array of the next step page-faults in afresh. ``keep_freed_memory()`` serves blocks
up to 32 MiB from the heap and keeps up to 128 MiB of freed heap for reuse. It changes malloc for
the whole process, so a library must not do it on its own: call it, or set
``TAPEGRAD_MALLOC=keep`` to have the CPU engine call it when it loads.
"""
import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory():
    """Returns whether malloc was tuned (False off Linux or glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 128 << 20)
    return True


def apply_environment():
    """The opt-in by environment variable, read once by the CPU engine."""
    if os.environ.get("TAPEGRAD_MALLOC") == "keep":
        keep_freed_memory()
