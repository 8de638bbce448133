"""tapegrad.nn: the minimum that makes training natural (torch.nn's names and behaviour)."""
from . import functional  # noqa: F401
from .modules import (CrossEntropyLoss, Identity, Linear, LogSoftmax, Module, MSELoss, NLLLoss,  # noqa: F401
                      Parameter, ReLU, Sequential, Sigmoid, Softmax, Tanh)
