"""tapegrad.optim: SGD (momentum, Nesterov, weight decay), Adam and AdamW, following torch's update
rules step for step (torch's single-tensor CPU implementations), so that the same script gives the
same numbers. Updates are in place on the parameters' arrays and bump their version counters."""
import math

import numpy as np

from . import ops
from .grad_mode import enable_grad
from .nn.modules import _zero_grad
from .tape import Global, counter, program_step
from .tensor import Tensor


class Optimizer:
    def __init__(self, params, defaults):
        self.defaults = defaults
        self.state = {}  # parameter -> dict of its buffers (Tensors hash by identity)
        self.param_groups = []
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            "but got tapegrad.Tensor")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group):
        group = dict(group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        program_step(self._zero_grad, (set_to_none,), defer=True)  # (a compiled training step replays it)

    def _zero_grad(self, set_to_none):
        for g in self.param_groups:
            for p in g["params"]:
                _zero_grad(p, set_to_none)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        program_step(self._update_all)  # (a compiled training step replays it, on the live state)
        return loss

    def _update_all(self):
        for group in self.param_groups:
            self._update_group(group)

    def _update_group(self, group):
        for p in group["params"]:
            if p._grad is not None:
                self._update(p, p._grad._value, group, self.state.setdefault(p, {}))
                p._bump_version()

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {g[k]}" for k in sorted(g) if k != "params")
        return "\n".join(lines) + "\n)"


def _buffer(like):
    return ops._leaf(np.zeros_like(like))


class SGD(Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def _update_group(self, group):
        if group["momentum"] or group["weight_decay"] or group["maximize"] or group["lr"].__class__ not in (float, int):
            super()._update_group(group)
        else:
            _plain_sgd(group["params"], group["lr"])

    def _update(self, p, grad, group, state):
        x = p._value
        d = -grad if group["maximize"] else grad
        if group["weight_decay"]:
            d = d + group["weight_decay"] * x
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = ops._leaf(d.copy())
            else:
                b = buf._value
                b *= momentum
                b += (1 - group["dampening"]) * d
            d = d + momentum * buf._value if group["nesterov"] else buf._value
        x -= group["lr"] * d


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _plain_sgd(params, lr):
    """x -= lr * grad for each parameter with a gradient: the C-ordered float ones in one jitted call
    per dtype (the same steps as NumPy's, so the same bits), the others in NumPy."""
    pairs = {}
    changed = False
    for p in params:
        g = p._grad
        if g is None:
            continue
        x, gv = p._value, g._value
        dt = x.dtype
        if (x.__class__ is np.ndarray and gv.__class__ is np.ndarray and dt in _FLOATS and gv.dtype == dt
                and x.flags.c_contiguous and gv.flags.c_contiguous and x.shape == gv.shape):
            pair = pairs.get(dt)
            if pair is None:
                pair = pairs[dt] = ([], [])
            pair[0].append(id(x))
            pair[1].append(id(gv))
        else:
            x -= lr * gv
        (p._vc if p._vc is not None else counter(p))[0] += 1  # p._bump_version, with one Global.bump for all
        changed = True
    if changed:
        Global.bump()
    if pairs:
        from .jit.updates import sgd
        from .engine.cpu_replay import array_header
        hoff = array_header()
        for dt, (xs, gs) in pairs.items():  # (the arrays stay alive: the parameters and grads hold them)
            sgd(np.array(xs, np.int64), np.array(gs, np.int64), lr, hoff, np.empty(0, dt))


class Adam(Optimizer):
    _decoupled = False  # AdamW: weight decay shrinks the parameter instead of adding to the gradient

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i in (0, 1):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))

    def _update(self, p, grad, group, state):
        x = p._value
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if not state:
            state["step"] = ops._leaf(np.zeros((), x.dtype))
            state["exp_avg"] = _buffer(x)
            state["exp_avg_sq"] = _buffer(x)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = _buffer(x)
        g = -grad if group["maximize"] else grad
        if wd:
            if self._decoupled:
                x *= 1 - lr * wd
            else:
                g = g + wd * x
        state["step"]._value += 1
        step = float(state["step"]._value)
        m, v = state["exp_avg"]._value, state["exp_avg_sq"]._value
        m += (1 - beta1) * (g - m)  # torch's lerp_(g, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * g * g
        bias1 = 1 - beta1 ** step
        bias2_sqrt = math.sqrt(1 - beta2 ** step)
        if group["amsgrad"]:
            vmax = state["max_exp_avg_sq"]._value
            np.maximum(vmax, v, out=vmax)
            v = vmax
        denom = np.sqrt(v) / bias2_sqrt + eps
        x -= (lr / bias1) * (m / denom)  # torch's addcdiv_(m, denom, value=-lr / bias1)


class AdamW(Adam):
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)
