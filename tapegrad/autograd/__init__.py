"""tapegrad.autograd: backward, grad and the legacy Variable (api.py), custom Functions, the
functional API, gradcheck, anomaly mode and the graph's nodes, with torch's semantics and errors."""
from ..grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled  # noqa: F401
from ..tensor import Tensor
from . import functional  # noqa: F401
from .anomaly_mode import detect_anomaly, set_detect_anomaly  # noqa: F401
from .api import Variable, backward, grad  # noqa: F401
from .function import Function, FunctionCtx, once_differentiable  # noqa: F401
from .gradcheck import GradcheckError, gradcheck, gradgradcheck  # noqa: F401
from .graph import Node, node_for  # noqa: F401


# -- the Tensor methods of this layer (tensor.py sits below it and imports nothing from here) ------
def _tensor_backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    backward((self,), None if gradient is None else (gradient,), retain_graph, create_graph, inputs=inputs)


def _tensor_grad_fn(self):
    if self._tape is None:
        return None
    x = self._x
    node = x.node if x is not None else None
    if node is None or node._tape is not self._tape or node._slot != self._slot:  # (changed in place since)
        node = self._extra().node = node_for(self._tape, self._slot)
    return node


_tensor_backward.__name__ = "backward"
Tensor.backward = _tensor_backward
Tensor.grad_fn = property(_tensor_grad_fn)
