"""Lipschitz states of plain torch modules, so an existing ``nn.Sequential`` gets a bound as it is."""

from __future__ import annotations

from torch import nn

from lipzoo.layers.activations import activation_bounds_of_module
from lipzoo.layers.lt import AvgPool2dOp
from lipzoo.layers.operators import Conv2dOp, DenseOp, DiagonalOp, FlattenOp, ScaleOp
from lipzoo.layers.state import LipschitzState

__all__ = ["module_state", "SUPPORTED_TORCH_MODULES"]

SUPPORTED_TORCH_MODULES = (
    "nn.Conv2d (zero padding), nn.Linear, nn.Flatten(1), nn.AvgPool2d (count_include_pad, no ceil_mode), "
    "eval-mode nn.BatchNorm1d/2d, nn.Identity, eval-mode nn.Dropout, activations nn.ReLU/ReLU6/LeakyReLU/"
    "PReLU/Tanh/Hardtanh/Sigmoid/Softplus/ELU/GELU, nested nn.Sequential, and any module with "
    "lipschitz_state()"
)


def _unsupported(module: nn.Module, why: str) -> TypeError:
    return TypeError(f"Cannot bound the Lipschitz constant of {module!r}: {why}. Supported: "
                     f"{SUPPORTED_TORCH_MODULES}.")


def module_state(module: nn.Module) -> LipschitzState:
    """The eq. (14) state of one module; raises ``TypeError`` for anything we cannot bound."""
    if hasattr(module, "lipschitz_state"):
        return module.lipschitz_state()
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise _unsupported(module, "only explicit zero padding is supported")
        return LipschitzState(W=Conv2dOp(module.weight, module.stride, module.padding, module.dilation,
                                         module.groups))
    if isinstance(module, nn.Linear):
        return LipschitzState(W=DenseOp(module.weight))
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise _unsupported(module, "only Flatten(start_dim=1, end_dim=-1) is supported")
        return LipschitzState(W=FlattenOp())
    if isinstance(module, nn.AvgPool2d):
        if module.ceil_mode or not module.count_include_pad or module.divisor_override is not None:
            raise _unsupported(module, "needs ceil_mode=False, count_include_pad=True, no divisor_override")
        return LipschitzState(W=AvgPool2dOp(module.kernel_size, module.stride, module.padding))
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.training or module.running_var is None:
            raise _unsupported(module, "BatchNorm is only an affine map in eval mode with running "
                                       "statistics; call model.eval() first")
        scale = (module.running_var + module.eps).rsqrt()
        if module.weight is not None:
            scale = scale * module.weight
        return LipschitzState(W=DiagonalOp(scale))
    if isinstance(module, nn.Dropout):
        if module.training and module.p > 0:
            raise _unsupported(module, "Dropout in training mode is random; call model.eval() first")
        return LipschitzState(W=ScaleOp(1.0))
    bounds = activation_bounds_of_module(module)
    if bounds is None:
        raise _unsupported(module, f"{type(module).__name__} has no declared Lipschitz structure")
    return LipschitzState(W=ScaleOp(1.0), alpha=bounds[0], beta=bounds[1])
