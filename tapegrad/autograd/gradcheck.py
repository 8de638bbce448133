"""gradcheck and gradgradcheck: analytical Jacobians (one backward per output element) against
central finite differences, with torch's signature, checks and messages.

Both Jacobians are laid out as torch lays them out, one per (output, input) pair, of shape
(input numel, output numel), so a failure prints the same matrices torch would. ``fast_mode``
is accepted and runs the full (slow) check, which is exact where fast mode is approximate.
tapegrad has no forward-mode AD, so ``check_forward_ad=True`` is refused.
"""
import warnings

import numpy as np

from .. import ops
from ..tensor import Tensor

__all__ = ["gradcheck", "gradgradcheck", "GradcheckError"]


class GradcheckError(RuntimeError):
    """Error raised by gradcheck and gradgradcheck."""


FAILED_NONDET_MSG = """

NOTE: If your op relies on non-deterministic operations, this failure might be expected: call
gradcheck/gradgradcheck with `nondet_tol=<tol>` as a keyword argument.
"""


def _as_tuple(x):
    if isinstance(x, tuple):
        return x
    if isinstance(x, list):
        return tuple(x)
    return (x,)


def _differentiable_outputs(x):
    return tuple(o for o in _as_tuple(x) if isinstance(o, Tensor) and o.requires_grad)


def _check_inputs(tupled_inputs):
    any_requiring_grad = False
    for idx, inp in enumerate(tupled_inputs):
        if isinstance(inp, Tensor) and inp.requires_grad:
            if inp._value.dtype != np.float64:
                warnings.warn(f"Input #{idx} requires gradient and is not a double precision floating point or "
                              "complex. This check will likely fail if all the inputs are not of double precision "
                              "floating point or complex. ", stacklevel=3)
            v = inp._value
            if not all(st > 0 or sz <= 1 for st, sz in zip(v.strides, v.shape)):
                raise RuntimeError(f"The {idx}th input has a dimension with stride 0. gradcheck only supports inputs "
                                   "that are non-overlapping to be able to compute the numerical gradients "
                                   "correctly. You should call .contiguous on the input before passing it to "
                                   "gradcheck.")
            any_requiring_grad = True
    if not any_requiring_grad:
        raise ValueError("gradcheck expects at least one input tensor to require gradient, but none of them "
                         "have requires_grad=True.")


def _numerical_jacobians(func, inputs, out_indices, eps):
    """For each input requiring grad, a list over ``out_indices`` of (input numel, output numel)
    central-difference Jacobians; the input is perturbed in place (its storage, as torch's .data)."""
    result = []
    for inp in inputs:
        if not (isinstance(inp, Tensor) and inp.requires_grad):
            continue
        v = inp._value
        cols = []
        for idx in np.ndindex(v.shape):
            orig = v[idx].copy()
            v[idx] = orig - eps
            outa = _snapshot(func(*inputs))
            v[idx] = orig + eps
            outb = _snapshot(func(*inputs))
            v[idx] = orig
            cols.append([_diff(outa[k], outb[k], eps) for k in out_indices])
        jacs = []
        for n, k in enumerate(out_indices):
            col = [c[n] for c in cols]
            width = col[0].size if col else 0
            jacs.append(np.stack(col).astype(v.dtype) if col else np.zeros((0, width), v.dtype))
        result.append(jacs)
    return result


def _snapshot(out):
    """func's outputs as copies, as torch's clones them: an output that views a perturbed input
    (x[0], x.t(), x itself) would otherwise change with the next perturbation."""
    return tuple(np.array(o._value, np.float64) if isinstance(o, Tensor) else o for o in _as_tuple(out))


def _diff(a, b, eps):
    a = np.asarray(a._value if isinstance(a, Tensor) else a, np.float64)
    b = np.asarray(b._value if isinstance(b, Tensor) else b, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"Expected `func` to return outputs with the same shape when inputs are perturbed by "
                             f"{eps}, but got: shapes {a.shape} and {b.shape}.")
    return ((b - a) / (2 * eps)).reshape(-1)


def _analytical_jacobians(inputs, output):
    """(jacobians per input requiring grad, sizes ok, dtypes ok): row j is the gradient for the
    one-hot grad_output at output element j, stored as column j as torch stores it."""
    from .api import grad
    diff_inputs = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    n_out = output.numel()
    jacs = [np.zeros((t.numel(), n_out), t._value.dtype) for t in diff_inputs]
    sizes_ok = types_ok = True
    base = np.zeros(output._value.shape, output._value.dtype)
    flat = base.reshape(-1)
    for j in range(n_out):
        flat[:] = 0
        flat[j] = 1
        gins = grad(output, diff_inputs, ops._leaf(base.copy()), retain_graph=True, allow_unused=True)
        for k, (g, t) in enumerate(zip(gins, diff_inputs)):
            if g is None:
                continue
            if tuple(g.shape) != tuple(t.shape):
                sizes_ok = False
                continue
            if g._value.dtype != t._value.dtype:
                types_ok = False
            jacs[k][:, j] = g._value.reshape(-1)
    return jacs, sizes_ok, types_ok


def _check_analytical(inputs, output, nondet_tol, check_grad_dtypes):
    jac1, sizes_ok, types_ok = _analytical_jacobians(inputs, output)
    jac2, _, _ = _analytical_jacobians(inputs, output)
    reentrant = all(a.size == 0 or np.abs(a - b).max() <= nondet_tol for a, b in zip(jac1, jac2))
    if not types_ok and check_grad_dtypes:
        raise GradcheckError("Gradient has dtype mismatch")
    if not sizes_ok:
        raise GradcheckError("Analytical gradient has incorrect size")
    if not reentrant:
        raise GradcheckError("Backward is not reentrant, i.e., running backward with same input and grad_output "
                             "multiple times gives different values, although analytical gradient matches "
                             f"numerical gradient.The tolerance for nondeterminism was {nondet_tol}."
                             + FAILED_NONDET_MSG)
    return jac1


def _notallclose_msg(analytical, numerical, output_idx, input_idx):
    return (f"Jacobian mismatch for output {output_idx:d} with respect to input {input_idx:d},\n"
            f"numerical:{ops._leaf(numerical)!r}\nanalytical:{ops._leaf(analytical)!r}\n")


def _test_backward_mul_by_grad_output(outputs, inputs):
    """With all-zero grad_outputs every input gradient must be zero, of the input's dtype and size."""
    from .api import grad
    diff_inputs = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    zeros = [ops._leaf(np.zeros(o._value.shape, o._value.dtype)) for o in outputs]
    gins = grad(outputs, diff_inputs, zeros, allow_unused=True)
    for gi, di in zip(gins, diff_inputs):
        if gi is None:
            continue
        if not bool((gi._value == 0).all()):
            raise GradcheckError("backward not multiplied by grad_output")
        if gi._value.dtype != di._value.dtype:
            raise GradcheckError("grad is incorrect type")
        if tuple(gi.shape) != tuple(di.shape):
            raise GradcheckError("grad is incorrect size")


def _gradcheck(func, inputs, eps, atol, rtol, nondet_tol, check_grad_dtypes):
    tupled_inputs = _as_tuple(inputs)
    _check_inputs(tupled_inputs)
    func_out = _as_tuple(func(*tupled_inputs))
    out_indices = [k for k, o in enumerate(func_out) if isinstance(o, Tensor) and o.requires_grad]
    if not out_indices:
        # no differentiable output: the function must then be locally constant in its inputs
        every = [k for k, o in enumerate(func_out) if isinstance(o, Tensor) and o._value.dtype.kind == "f"]
        for jacs in _numerical_jacobians(func, tupled_inputs, every, eps):
            for jac in jacs:
                if np.count_nonzero(jac):
                    raise GradcheckError("Numerical gradient for function expected to be zero")
        return True
    numerical = _numerical_jacobians(func, tupled_inputs, out_indices, eps)  # [input][output]
    outputs = [func_out[k] for k in out_indices]
    for i, o in enumerate(outputs):
        analytical = _check_analytical(tupled_inputs, o, nondet_tol, check_grad_dtypes)
        for j, a in enumerate(analytical):
            n = numerical[j][i]
            if not np.allclose(a, n, rtol=rtol, atol=atol):
                raise GradcheckError(_notallclose_msg(a, n, i, j))
    _test_backward_mul_by_grad_output(outputs, tupled_inputs)
    return True


def gradcheck(func, inputs, *, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, nondet_tol=0.0,
              check_undefined_grad=True, check_grad_dtypes=False, check_batched_grad=False,
              check_batched_forward_grad=False, check_forward_ad=False, check_backward_ad=True,
              fast_mode=False, masked=None):
    """Check the gradients of ``func`` at ``inputs`` (float64 advised) against finite differences:
    True when they agree; otherwise raise GradcheckError (or return False with raise_exception=False)."""
    if not (check_forward_ad or check_backward_ad):
        raise AssertionError("Expected at least one of check_forward_ad or check_backward_ad to be True")
    if check_batched_grad and not check_backward_ad:
        raise AssertionError("Setting check_batched_grad=True requires check_backward_ad to be True")
    if check_batched_forward_grad and not check_forward_ad:
        raise AssertionError("Setting check_batched_forward_grad=True requires check_forward_ad to be True")
    if check_forward_ad:
        raise NotImplementedError("tapegrad has no forward-mode AD: gradcheck(check_forward_ad=True) is not "
                                  "supported")
    try:
        return _gradcheck(func, inputs, eps, atol, rtol, nondet_tol, check_grad_dtypes)
    except GradcheckError:
        if raise_exception:
            raise
        return False


def gradgradcheck(func, inputs, grad_outputs=None, *, eps=1e-6, atol=1e-5, rtol=1e-3,
                  gen_non_contig_grad_outputs=False, raise_exception=True, nondet_tol=0.0,
                  check_undefined_grad=True, check_grad_dtypes=False, check_batched_grad=False,
                  check_fwd_over_rev=False, check_rev_over_rev=True, fast_mode=False, masked=False):
    """gradcheck of the gradient of ``func``: backward with create_graph, differentiated again with
    respect to the inputs and to ``grad_outputs`` (random in [-1, 1) when not given)."""
    from .api import grad
    from ..creation import rand
    from ..dtypes import float64
    if not (check_fwd_over_rev or check_rev_over_rev):
        raise AssertionError("Expected at least one of check_fwd_over_rev or check_rev_over_rev to be True")
    if check_undefined_grad and not check_rev_over_rev:
        raise AssertionError("Setting check_undefined_grad=True requires check_rev_over_rev to be True")
    if check_batched_grad and not check_rev_over_rev:
        raise AssertionError("Setting check_batched_grad=True requires check_rev_over_rev to be True")
    tupled_inputs = _as_tuple(inputs)
    if grad_outputs is None:
        outputs = _differentiable_outputs(func(*tupled_inputs))
        tupled_grad_outputs = tuple(
            ops._leaf(np.asarray(rand(*x.shape, dtype=x.dtype if x.is_floating_point() else float64)._value * 2 - 1))
            .requires_grad_(True) for x in outputs)
    else:
        tupled_grad_outputs = _as_tuple(grad_outputs)
    num_outputs = len(tupled_grad_outputs)
    diff_input_indices = {i for i, x in enumerate(tupled_inputs) if isinstance(x, Tensor) and x.requires_grad}

    def new_func(*args):
        input_args = args[:len(args) - num_outputs]
        outputs = _differentiable_outputs(func(*input_args))
        gouts = args[len(args) - num_outputs:]
        diff_inputs = tuple(x for i, x in enumerate(input_args) if i in diff_input_indices)
        grad_inputs = grad(outputs, diff_inputs, gouts, create_graph=True, allow_unused=True)
        return tuple(g for g in grad_inputs if g is not None)

    return gradcheck(new_func, tupled_inputs + tupled_grad_outputs, eps=eps, atol=atol, rtol=rtol,
                     raise_exception=raise_exception, nondet_tol=nondet_tol,
                     check_undefined_grad=check_undefined_grad, check_grad_dtypes=check_grad_dtypes,
                     check_batched_grad=check_batched_grad, fast_mode=fast_mode,
                     check_forward_ad=check_fwd_over_rev, check_backward_ad=check_rev_over_rev, masked=masked)
