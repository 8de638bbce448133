"""tg.func: torch.func's function transforms (grad, grad_and_value, vjp, jacrev, hessian, vmap,
functional_call) on the tape."""
from .functional_call import functional_call  # noqa: F401
from .transforms import grad, grad_and_value, hessian, jacrev, vjp  # noqa: F401
from .vmap import vmap  # noqa: F401

__all__ = ["grad", "grad_and_value", "vjp", "jacrev", "hessian", "vmap", "functional_call"]
