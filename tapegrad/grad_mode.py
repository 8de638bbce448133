"""Grad mode: no_grad, enable_grad, set_grad_enabled, inference_mode (per thread, as in torch)."""
import functools
import inspect
import sys

from .tape import _state


def is_grad_enabled():
    return _state.grad_enabled


def is_inference_mode_enabled():
    return _state.inference


class _Mode:
    """A context manager that is also a decorator, restoring the previous mode on exit."""
    _enabled = True

    def __enter__(self):
        self._prev = _state.grad_enabled
        _state.grad_enabled = self._enabled

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False

    def __call__(self, fn):
        if inspect.isgeneratorfunction(fn):
            return _generator(self, fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__(*self._args()):
                return fn(*args, **kwargs)
        return wrapper

    def _args(self):
        return ()


class _NoParamMode(_Mode):
    """As in torch, usable as a bare decorator too: ``@no_grad`` as well as ``@no_grad()``."""

    def __new__(cls, orig_func=None):
        if orig_func is None:
            return super().__new__(cls)
        return cls()(orig_func)


class no_grad(_NoParamMode):
    _enabled = False


class enable_grad(_NoParamMode):
    _enabled = True


class set_grad_enabled(_Mode):
    def __init__(self, mode):
        self._enabled = bool(mode)
        self._prev = _state.grad_enabled
        _state.grad_enabled = self._enabled  # torch switches on construction, so a bare call works

    def __enter__(self):
        pass

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False

    def _args(self):
        return (self._enabled,)

    def __call__(self, fn):
        _state.grad_enabled = self._prev  # used as a decorator: undo the switch made on construction
        return super().__call__(fn)


class inference_mode(_Mode):
    def __new__(cls, mode=True):
        if callable(mode):  # a bare @inference_mode
            return cls()(mode)
        return super().__new__(cls)

    def __init__(self, mode=True):
        self._enabled = not mode
        self._mode = bool(mode)

    def __enter__(self):
        self._prev = _state.grad_enabled
        self._prev_inf = _state.inference
        _state.grad_enabled = self._enabled
        _state.inference = self._mode

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        _state.inference = self._prev_inf
        return False

    def _args(self):
        return (self._mode,)


def _generator(mode, fn):
    """A decorated generator function, as torch wraps one: the mode holds while the generator's
    body runs and the caller's mode is back at each ``yield``, so every resumption (next, send,
    throw, close) enters the mode afresh."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        gen = fn(*args, **kwargs)
        try:
            with mode.__class__(*mode._args()):
                response = gen.send(None)
            while True:
                try:
                    request = yield response
                except GeneratorExit:
                    with mode.__class__(*mode._args()):
                        gen.close()
                    raise
                except BaseException:
                    with mode.__class__(*mode._args()):
                        response = gen.throw(*sys.exc_info())
                else:
                    with mode.__class__(*mode._args()):
                        response = gen.send(request)
        except StopIteration as stop:
            return stop.value
    return wrapper
