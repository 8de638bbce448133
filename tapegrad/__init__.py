"""tapegrad: reverse-mode autograd with PyTorch's semantics, recorded on a flat Wengert tape and
replayed backward by one Numba-jitted call."""
from . import _methods  # noqa: F401  (binds Tensor's methods and operators first)
from . import autograd, dtypes, ops  # noqa: F401
from .creation import (arange, as_tensor, empty, empty_like, eye, from_numpy, full, full_like, linspace,  # noqa: F401
                       manual_seed, ones, ones_like, rand, rand_like, randint, randn, randn_like, tensor, zeros,
                       zeros_like)
from .creation import BoolTensor, DoubleTensor, FloatTensor, IntTensor, LongTensor  # noqa: F401
from .dtypes import bool_ as bool  # noqa: F401,A001
from .dtypes import (double, float32, float64, get_default_dtype, int32, int64, long,  # noqa: F401
                     set_default_dtype)
from .dtypes import dtype  # noqa: F401
from .dtypes import float as float  # noqa: F401,A001
from .dtypes import int as int  # noqa: F401,A001
from .grad_mode import (enable_grad, inference_mode, is_grad_enabled, is_inference_mode_enabled,  # noqa: F401
                        no_grad, set_grad_enabled)
from .ops import (abs, add, clone, cos, div, exp, expand, log, matmul, mean, mm, mul, neg, permute, pow,  # noqa: F401
                  reciprocal, relu, reshape, sigmoid, sign, sin, sqrt, sub, sum, t, tanh, transpose, unsqueeze,
                  squeeze, view)
from .ops import (all_ as all, amax, amin, any_ as any, argmax, argmin, bmm, cat, chunk, clamp,  # noqa: F401,A001
                  clamp_max, clamp_min, concat, concatenate, cumsum, dot, einsum, eq, erf, expm1, flatten, flip,
                  gather, ge, ger, gt, index_select, inner, isfinite, isinf, isnan, le, log1p, log_softmax,
                  logical_not, logsumexp, lt, masked_fill, max_ as max, maximum, min_ as min, minimum, mv, narrow,
                  ne, nonzero, norm, outer, prod, repeat_interleave, rsqrt, scatter_add, softmax, split, square,
                  select, stack, std, tan, unbind, unflatten, var, vdot, where)
from .printing import set_printoptions  # noqa: F401
from .parallel import get_num_threads, set_num_threads  # noqa: F401
from .autograd.anomaly_mode import is_anomaly_check_nan_enabled, is_anomaly_enabled, set_anomaly_enabled  # noqa: F401
from .ops import FUNCTIONS as _FUNCTIONS

globals().update(_FUNCTIONS)  # the functions that rows declare themselves (atan2, hypot...)
from .dump import dump, to_dot  # noqa: F401  (tapegrad.dump the module stays importable by its full name)
from . import nn, optim  # noqa: F401,E402
from . import compiler  # noqa: F401,E402
from .compiler import compile  # noqa: F401,E402,A004
from . import func  # noqa: F401,E402
from .tensor import Device as device  # noqa: F401
from .tensor import Size, Tensor  # noqa: F401

multiply, subtract, divide, true_divide = mul, sub, div, div
clip, greater, less, greater_equal, less_equal, not_equal = clamp, gt, lt, ge, le, ne
__version__ = "0.1.0"
