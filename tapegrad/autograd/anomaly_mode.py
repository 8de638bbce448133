"""Anomaly mode: ``detect_anomaly`` and ``set_detect_anomaly``, as torch's.

While it is on, each tape entry recorded keeps the stack of the line that recorded it (taken
where a tape stores the entry's value: ``tape._TracedValues``; off, recording does nothing
more), every backward entry's gradients are checked for NaN, and an error in backward warns
with the forward traceback of the entry that failed (``engine.errors.blame``) before it propagates.
"""
import functools
import os
import sys
import warnings

from ..tape import LEAF, Anomaly, _state, format_stack, trace_values
from .graph import node_for


def is_anomaly_enabled():
    return Anomaly.enabled


def is_anomaly_check_nan_enabled():
    return Anomaly.check_nan


def set_anomaly_enabled(enabled, check_nan=True):
    Anomaly.enabled = bool(enabled)
    Anomaly.check_nan = bool(check_nan)
    trace_values(_state.tape_ref(), Anomaly.enabled)  # this thread's open tape may hold part of a forward


class detect_anomaly:
    """Context manager (and decorator) that turns anomaly detection on; ``check_nan=False`` keeps
    the forward tracebacks but lets NaN gradients through."""

    def __init__(self, check_nan=True):
        self.prev = Anomaly.enabled
        self.check_nan = check_nan
        self.prev_check_nan = Anomaly.check_nan
        warnings.warn("Anomaly Detection has been enabled. This mode will increase the runtime and should "
                      "only be enabled for debugging.", stacklevel=2)

    def __enter__(self):
        set_anomaly_enabled(True, self.check_nan)

    def __exit__(self, *exc):
        set_anomaly_enabled(self.prev, self.prev_check_nan)
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):  # (warned once, when decorating)
            prev, prev_check_nan = Anomaly.enabled, Anomaly.check_nan
            set_anomaly_enabled(True, self.check_nan)
            try:
                return fn(*args, **kwargs)
            finally:
                set_anomaly_enabled(prev, prev_check_nan)
        return wrapper


class set_detect_anomaly:
    """Switches anomaly detection on or off at once; used as a context manager, restores the
    previous setting on exit."""

    def __init__(self, mode, check_nan=True):
        self.prev = Anomaly.enabled
        self.prev_check_nan = Anomaly.check_nan
        set_anomaly_enabled(mode, check_nan)

    def __enter__(self):
        pass

    def __exit__(self, *exc):
        set_anomaly_enabled(self.prev, self.prev_check_nan)
        return False


def report(exc):
    """Warn as torch does when an error raised in backward in anomaly mode: the node it arose in
    (``engine.errors.blame``) and the traceback of the forward line that recorded it, then that of
    each node whose create_graph backward recorded it in turn."""
    where = exc.__dict__.pop("anomaly_node", _UNSET)
    if where is _UNSET:
        return  # not raised by a node (bad arguments...), or anomaly mode was off in backward
    if where is None:  # a leaf's hook whose AccumulateGrad has no slot of its own
        _warn("torch::autograd::AccumulateGrad", None, False)
        return
    tape, slot = where
    trace = tape.traces.get(slot) if tape.traces is not None else None
    _warn(_node_name(tape, slot), trace, False)
    while trace is not None and trace[1] is not None:
        parent, slot = trace[1][0](), trace[1][1]
        if parent is None:
            return
        trace = parent.traces.get(slot) if parent.traces is not None else None
        _warn(_node_name(parent, slot), trace, True)


_UNSET = object()


def _node_name(tape, slot):
    if tape.slot_flags(slot) & LEAF:
        return "torch::autograd::AccumulateGrad"
    return node_for(tape, slot).name()


def _warn(name, trace, parent):
    if trace is None:
        msg = (f"Error detected in {name}. No forward pass information available. Enable detect anomaly during "
               "forward pass for more information.")
    elif parent:
        msg = (f"\n\nPrevious calculation was induced by {name}. Traceback of forward call that induced the "
               f"previous calculation:\n{format_stack(trace[0])}")
    else:
        msg = f"Error detected in {name}. Traceback of forward call that caused the error:\n{format_stack(trace[0])}"
    warnings.warn(msg, UserWarning, stacklevel=_user_level())


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _user_level():
    """The warnings stacklevel of the first caller outside tapegrad (the user's backward line)."""
    f, level = sys._getframe(1), 1  # (level 1: the caller of warnings.warn)
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(_PACKAGE):
        f, level = f.f_back, level + 1
    return level
