"""Feed-forward ("LT-wrapped") layers and the linear helpers a certified model is built from.

Each layer is a drop-in replacement of its torch counterpart and declares its structure through
``lipschitz_state()`` (paper eq. 14 with ``H = 0``, ``G = I``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lipzoo.layers.activations import get_activation
from lipzoo.layers.operators import Conv2dOp, DenseOp, DiagonalOp, FlattenOp, LinearOperator
from lipzoo.layers.state import LipschitzState

__all__ = ["LTLinear", "LTConv2d", "Normalize", "Flatten", "AvgPool2d", "AvgPool2dOp"]


class _ActivationMixin:
    """An affine torch layer followed by a registered slope-restricted activation (H = 0, G = I)."""

    def _init_activation(self, activation: str | None) -> None:
        spec = get_activation(activation)
        self.activation_name = activation
        self.act = spec.factory()
        self._slopes = (spec.alpha, spec.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))

    def _state(self, W) -> LipschitzState:
        return LipschitzState(W=W, alpha=self._slopes[0], beta=self._slopes[1])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation_name!r}"


class LTLinear(_ActivationMixin, nn.Linear):
    """``phi(W x + b)`` with a slope-restricted activation (``activation=None``: a readout layer)."""

    def __init__(self, in_features: int, out_features: int, activation: str | None = "relu",
                 bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_activation(activation)

    def lipschitz_state(self) -> LipschitzState:
        return self._state(DenseOp(self.weight))


class LTConv2d(_ActivationMixin, nn.Conv2d):
    """``phi(conv2d(x) + b)`` with a slope-restricted activation; zero padding only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 activation: str | None = "relu", bias: bool = True, dilation=1, groups: int = 1,
                 device=None, dtype=None):
        if isinstance(padding, str):
            raise ValueError(f"LTConv2d needs an explicit integer padding, got padding={padding!r}.")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self._init_activation(activation)

    def lipschitz_state(self) -> LipschitzState:
        return self._state(Conv2dOp(self.weight, self.stride, self.padding, self.dilation, self.groups))


class Normalize(nn.Module):
    """Per-channel standardisation ``(x - mean) / std`` inside the model.

    Keeping it inside the model keeps certificates in the input's own units (pixels in [0, 1]):
    the accountant sees the diagonal ``1/std`` scaling.
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.shape != std_t.shape:
            raise ValueError(f"Normalize: mean and std need the same length, got {mean_t.numel()} and "
                             f"{std_t.numel()}.")
        if not bool(torch.isfinite(std_t).all()) or bool((std_t <= 0).any()):
            raise ValueError(f"Normalize: std must be positive and finite, got {std_t.tolist()}.")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, *([1] * (x.dim() - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or (self.mean.numel() > 1 and x.shape[1] != self.mean.numel()):
            raise ValueError(f"Normalize expects input of shape (B, {self.mean.numel()}, ...), got "
                             f"{tuple(x.shape)}.")
        return (x - self._view(self.mean, x)) / self._view(self.std, x)

    def lipschitz_state(self) -> LipschitzState:
        return LipschitzState(W=DiagonalOp(1.0 / self.std))

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class Flatten(nn.Flatten):
    """``nn.Flatten(1)`` with its (isometric) Lipschitz state."""

    def __init__(self):
        super().__init__(start_dim=1, end_dim=-1)

    def lipschitz_state(self) -> LipschitzState:
        return LipschitzState(W=FlattenOp())


class AvgPool2dOp(LinearOperator):
    """Average pooling (zero padding counted) as a depthwise convolution with weights ``1/k^2``."""

    def __init__(self, kernel_size, stride, padding):
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)

    def _conv(self, channels: int, ref: torch.Tensor) -> Conv2dOp:
        k = self.kernel_size
        w = ref.new_full((channels, 1, *k), 1.0 / (k[0] * k[1]))
        return Conv2dOp(w, self.stride, self.padding, 1, channels)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=True)

    def adjoint(self, y, in_shape):
        return self._conv(in_shape[0], y).adjoint(y, in_shape)

    def out_shape(self, in_shape):
        return self._conv(in_shape[0], torch.empty(0)).out_shape(in_shape)

    def norm_bound(self, in_shape):
        # Schur test: ||A||^2 <= (max row sum) (max column sum); every row sums to 1 and every input
        # feeds at most prod(ceil(k/s)) outputs with weight 1/prod(k).
        col = 1.0
        for k, s in zip(self.kernel_size, self.stride):
            col *= math.ceil(k / s) / k
        return torch.tensor(col).sqrt()


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` (``count_include_pad=True``, ``ceil_mode=False``) with its Lipschitz state."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride=stride, padding=padding, ceil_mode=False,
                         count_include_pad=True)

    def lipschitz_state(self) -> LipschitzState:
        return LipschitzState(W=AvgPool2dOp(self.kernel_size, self.stride, self.padding))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)
