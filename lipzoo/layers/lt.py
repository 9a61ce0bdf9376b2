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

from lipzoo.layers.activations import get_activation, module_activation_slopes
from lipzoo.layers.operators import (ComposeOp, Conv2dOp, DenseOp, DiagonalOp, FlattenOp, LinearOperator,
                                     ScaleOp)
from lipzoo.layers.padding import PadOp
from lipzoo.layers.state import LipschitzState, UnsupportedModule

__all__ = ["LTLinear", "LTConv2d", "Normalize", "Flatten", "AvgPool2d", "AvgPool2dOp", "conv2d_operator",
           "linear_operator", "avg_pool2d_operator", "flatten_operator"]


# -- the linear maps of torch modules, from every attribute their forward reads ----------------------

def _positive_pair(value, name: str) -> tuple[int, int]:
    pair = _pair(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise UnsupportedModule(f"{name}={value!r} is not one or two positive ints")
    return pair


def conv2d_operator(conv: nn.Conv2d) -> LinearOperator:
    """The operator of ``nn.Conv2d.forward`` (without bias) from the module's current attributes.

    Reads what ``_conv_forward`` reads: ``padding_mode``, ``padding`` (ints or ``'valid'``), ``stride``,
    ``dilation``, ``groups`` and ``weight``; for ``reflect`` / ``replicate`` / ``circular`` padding,
    ``_reversed_padding_repeated_twice`` (the pads ``F.pad`` gets, fixed at construction), as a
    :class:`PadOp` followed by an unpadded convolution. ``padding='same'`` (zero mode) is the symmetric padding it
    amounts to when the dilated kernel is odd, and refused otherwise (torch pads one more row after than before).
    """
    stride = _positive_pair(conv.stride, "stride")
    dilation = _positive_pair(conv.dilation, "dilation")
    groups, w = conv.groups, conv.weight
    if not isinstance(groups, int) or groups < 1 or w.dim() != 4 or w.shape[0] % groups:
        raise UnsupportedModule(f"groups={groups!r} does not fit a weight of shape {tuple(w.shape)}")
    if conv.padding_mode != "zeros":
        if conv.padding_mode not in PadOp.MODES:
            raise UnsupportedModule(f"padding_mode={conv.padding_mode!r} is not one torch knows")
        pads = tuple(conv._reversed_padding_repeated_twice)
        if len(pads) != 4 or not all(isinstance(p, int) and p >= 0 for p in pads):
            raise UnsupportedModule(f"_reversed_padding_repeated_twice={pads!r} is not four non-negative ints")
        return ComposeOp([Conv2dOp(w, stride, 0, dilation, groups), PadOp(pads, conv.padding_mode)])
    padding = conv.padding
    if padding == "same":
        # torch pads dilation * (kernel - 1) in all per dimension, the smaller half before: symmetric when even
        total = [d * (k - 1) for d, k in zip(dilation, w.shape[2:])]
        if stride != (1, 1) or any(t % 2 for t in total):
            raise UnsupportedModule(f"padding='same' with stride {stride} and kernel {tuple(w.shape[2:])} (dilation "
                                    f"{dilation}) pads unevenly; only the symmetric case (odd dilated kernel) is modelled")
        padding = tuple(t // 2 for t in total)
    elif isinstance(padding, str):
        if padding != "valid":
            raise UnsupportedModule(f"padding={padding!r}: only explicit zero padding (ints, 'valid', or 'same' "
                                    "with an odd dilated kernel) is modelled")
        padding = (0, 0)
    padding = _pair(padding)
    if len(padding) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in padding):
        raise UnsupportedModule(f"padding={conv.padding!r} is not one or two non-negative ints")
    return Conv2dOp(w, stride, padding, dilation, groups)


def linear_operator(linear: nn.Linear) -> DenseOp:
    """The operator of ``nn.Linear.forward`` (without bias)."""
    if linear.weight.dim() != 2:
        raise UnsupportedModule(f"weight of shape {tuple(linear.weight.shape)} is not a matrix")
    return DenseOp(linear.weight)


def flatten_operator(flatten: nn.Flatten) -> FlattenOp:
    """``nn.Flatten(start_dim=1, end_dim=-1)``; other dimensions are refused."""
    if flatten.start_dim != 1 or flatten.end_dim != -1:
        raise UnsupportedModule(f"start_dim={flatten.start_dim}, end_dim={flatten.end_dim}: only "
                                "Flatten(start_dim=1, end_dim=-1) is supported")
    return FlattenOp()


def avg_pool2d_operator(pool: nn.AvgPool2d) -> LinearOperator:
    """The operator of ``nn.AvgPool2d.forward`` from ``kernel_size, stride, padding, ceil_mode,
    count_include_pad, divisor_override``.

    ``ceil_mode=True`` is refused (windows hanging over the border change the divisor);
    ``count_include_pad=False`` is accepted without padding only (where it changes nothing);
    ``divisor_override=d`` is the average scaled by ``k_h k_w / d``.
    """
    kernel = _positive_pair(pool.kernel_size, "kernel_size")
    stride = kernel if pool.stride is None else _positive_pair(pool.stride, "stride")
    padding = _pair(pool.padding)
    if len(padding) != 2 or not all(isinstance(p, int) and 0 <= p <= k // 2 for p, k in zip(padding, kernel)):
        raise UnsupportedModule(f"padding={pool.padding!r} must be ints between 0 and kernel_size // 2")
    if pool.ceil_mode:
        raise UnsupportedModule("needs ceil_mode=False (windows over the border change the divisor), "
                                "count_include_pad=True, no divisor_override")
    d = pool.divisor_override
    if d is None and not pool.count_include_pad and any(padding):
        raise UnsupportedModule("count_include_pad=False with padding divides border windows by fewer cells: "
                                "needs ceil_mode=False, count_include_pad=True, no divisor_override")
    op = AvgPool2dOp(kernel, stride, padding)
    if d is None:
        return op
    if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
        raise UnsupportedModule(f"divisor_override={d!r} is not a positive int")
    return ComposeOp([ScaleOp(kernel[0] * kernel[1] / d), op])


class _ActivationMixin:
    """An affine torch layer followed by a registered slope-restricted activation (H = 0, G = I)."""

    def _init_activation(self, activation: str | None) -> None:
        spec = get_activation(activation)
        self.activation_name = activation
        self.act = spec.factory()
        self._slopes = (spec.alpha, spec.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))  # type: ignore[misc]  # the torch layer's forward

    def _state(self, W, bias_shape) -> LipschitzState:
        # slopes of the activation module as it is now (its attributes may have changed since __init__)
        alpha, beta = module_activation_slopes(self.act, self.activation_name)
        bias = None if self.bias is None else self.bias.reshape(bias_shape)  # type: ignore[attr-defined]  # the layer's
        return LipschitzState(W=W, alpha=alpha, beta=beta, activation=self.act, bias=bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation_name!r}"  # type: ignore[misc]


class LTLinear(_ActivationMixin, nn.Linear):
    """``phi(W x + b)`` with a slope-restricted activation (``activation=None``: a readout layer)."""

    def __init__(self, in_features: int, out_features: int, activation: str | None = "relu",
                 bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_activation(activation)

    def lipschitz_state(self) -> LipschitzState:
        return self._state(linear_operator(self), (-1,))


class LTConv2d(_ActivationMixin, nn.Conv2d):
    """``phi(conv2d(x) + b)`` with a slope-restricted activation (any ``padding_mode`` set later is modelled)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 activation: str | None = "relu", bias: bool = True, dilation=1, groups: int = 1,
                 device=None, dtype=None):
        if isinstance(padding, str):
            raise ValueError(f"LTConv2d needs an explicit integer padding, got padding={padding!r}.")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self._init_activation(activation)

    def lipschitz_state(self) -> LipschitzState:
        return self._state(conv2d_operator(self), (-1, 1, 1))


class Normalize(nn.Module):
    """Per-channel standardisation ``(x - mean) / std`` inside the model.

    Keeping it inside the model keeps certificates in the input's own units (pixels in [0, 1]):
    the accountant sees the diagonal ``1/std`` scaling.
    """

    mean: torch.Tensor  # buffers
    std: torch.Tensor

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
        inv = 1.0 / self.std
        if inv.numel() == 0 or not bool(torch.isfinite(inv).all()):
            raise UnsupportedModule(f"std={self.std.tolist()} has zeros or non-finite entries")
        return LipschitzState(W=DiagonalOp(inv))

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class Flatten(nn.Flatten):
    """``nn.Flatten(1)`` with its (isometric) Lipschitz state."""

    def __init__(self):
        super().__init__(start_dim=1, end_dim=-1)

    def lipschitz_state(self) -> LipschitzState:
        return LipschitzState(W=flatten_operator(self))


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
        # In float64, rounded up: the bound is guaranteed, not a float32 approximation of it.
        col = 1.0
        for k, s in zip(self.kernel_size, self.stride):
            col *= math.ceil(k / s) / k
        return torch.tensor(math.nextafter(math.sqrt(col), math.inf), dtype=torch.float64)


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` (``count_include_pad=True``, ``ceil_mode=False``) with its Lipschitz state."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride=stride, padding=padding, ceil_mode=False,
                         count_include_pad=True)

    def lipschitz_state(self) -> LipschitzState:
        return LipschitzState(W=avg_pool2d_operator(self))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)
