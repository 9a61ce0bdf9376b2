"""Almost-orthogonal layers, 1-Lipschitz by construction (Prach & Lampert, ECCV 2022).

For any matrix ``P`` the rescaled ``P D`` with the diagonal

    D_ii = (sum_j |P^T P|_ij)^(-1/2)

has ``||P D||_2 <= 1`` (AOL, Theorem 1: ``D P^T P D`` is dominated by its weighted diagonal). A
convolution is a matrix too: with zero padding and any stride its rows are a subset of the rows of the
*full* convolution (padding ``k - 1``, stride 1), whose Gram ``M^T M`` is the convolution by the kernel's
autocorrelation ``Q[i, j] = sum_o K[o, i] * K[o, j]`` (full padding, ``2k - 1`` taps). Dropping rows can
only shrink the norm, so ``D_ii = (sum_{j, taps} |Q[i, j, taps]|)^(-1/2)`` per input channel gives a
1-Lipschitz convolution (AOL's convolutional layers). When the stride is at least the kernel (non-overlapping
windows, e.g. a 2x2 stride-2 downsampling) the convolution is block-diagonal with one block
``M = K.reshape(c_out, c_in k_h k_w)`` per window, and the dense rescaling of ``M``'s columns (per input
channel *and* tap) is both valid and tighter.

The layers are :class:`~lipzoo.layers.LTLinear` / :class:`~lipzoo.layers.LTConv2d` whose ``weight`` is
a ``torch.nn.utils.parametrize`` parametrization of the free parameter ``P``
(``parametrizations.weight.original`` in the ``state_dict``): ``layer.weight`` *is* ``P D``, so
``forward``, ``lipschitz_state()``, export and the rounding bound all read the rescaled weight, and
no ``forward`` is redefined. Zero columns are safe: ``D_ii = (s_i + eps)^(-1/2)`` is finite, and a
smaller ``D`` only makes ``P D`` more contractive (``P D' = P D (D^{-1} D')`` with ``D^{-1} D' <= I``).

``lipschitz_state()`` describes the weight as computed; the accountant proves its own bound from it and
never relies on the construction. The guarantee ``||P D|| <= 1`` holds in exact arithmetic; computed in
floating point the norm can exceed 1 by a few units of roundoff, which the accountant's bound sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from lipzoo.layers.lt import LTConv2d, LTLinear

__all__ = ["AOLLinear", "AOLConv2d", "aol_scale_dense", "aol_scale_conv"]

AOL_EPS = 1e-12
"""Added to every row sum before ``^(-1/2)``: keeps ``D`` finite for a zero column (and only shrinks ``D``)."""


def aol_scale_dense(p: torch.Tensor, eps: float = AOL_EPS) -> torch.Tensor:
    """``D_ii = (sum_j |P^T P|_ij + eps)^(-1/2)`` for the columns of ``p`` (shape ``(out, in)``)."""
    return ((p.T @ p).abs().sum(1) + eps).rsqrt()


def aol_scale_conv(kernel: torch.Tensor, stride=1, eps: float = AOL_EPS) -> torch.Tensor:
    """The AOL rescaling of a convolution kernel ``(c_out, c_in, k_h, k_w)``, broadcastable to it.

    Overlapping windows (stride below the kernel in some direction): one factor per input channel, shape
    ``(1, c_in, 1, 1)``, from the full-padding autocorrelation of the kernel. Non-overlapping windows
    (stride ``>=`` kernel in both directions): one factor per input channel and tap, shape
    ``(1, c_in, k_h, k_w)``, the dense AOL of ``K.reshape(c_out, -1)``.
    """
    c_out, c_in, kh, kw = kernel.shape
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if sh >= kh and sw >= kw:
        return aol_scale_dense(kernel.reshape(c_out, -1), eps).reshape(1, c_in, kh, kw)
    k_t = kernel.transpose(0, 1)  # (c_in, c_out, kh, kw): the input channels as a batch and as filters
    gram = F.conv2d(k_t, k_t, padding=(kh - 1, kw - 1))  # (c_in, c_in, 2kh - 1, 2kw - 1): Q[i, j]
    return (gram.abs().sum((1, 2, 3)) + eps).rsqrt().reshape(1, c_in, 1, 1)


class _AOLDense(nn.Module):
    """Parametrization ``P -> P D`` of a dense weight (``D`` the AOL diagonal of ``P``'s columns)."""

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return p * aol_scale_dense(p)


class _AOLConv(nn.Module):
    """Parametrization ``K -> K D`` of a convolution kernel for the given stride (see :func:`aol_scale_conv`)."""

    def __init__(self, stride) -> None:
        super().__init__()
        self.stride = tuple(stride)

    def forward(self, kernel: torch.Tensor) -> torch.Tensor:
        return kernel * aol_scale_conv(kernel, self.stride)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class AOLLinear(LTLinear):
    """``phi(P D x + b)``: a dense layer with ``||P D||_2 <= 1`` (AOL), then an optional activation.

    ``P`` starts orthogonal (then ``D = I``, the layer an isometry where ``in <= out``); ``weight`` is
    ``P D`` (a parametrization; ``parametrizations.weight.original`` holds ``P``).
    """

    def __init__(self, in_features: int, out_features: int, activation: str | None = "relu",
                 bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, activation=activation, bias=bias, device=device, dtype=dtype)
        with torch.no_grad():
            nn.init.orthogonal_(self.weight)
        parametrize.register_parametrization(self, "weight", _AOLDense())


class AOLConv2d(LTConv2d):
    """``phi(conv(x; K D) + b)``: a zero-padded convolution with ``||conv||_2 <= 1`` (AOL), then an activation.

    The kernel's centre tap starts (semi-)orthogonal and the others at zero (with ``in_channels ==
    out_channels`` and ``padding = kernel_size // 2`` the layer is then an isometry). ``weight`` is ``K D``
    (a parametrization). Dilation and groups are 1.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: an int or a pair.
        stride: any (the rows of a strided convolution are a subset of the stride-1 ones); the rescaling is chosen
            for the stride given here (per input channel and tap when ``stride >= kernel_size``).
        padding: zero padding (default ``kernel_size // 2``).
        activation: a registered activation name, or ``None`` (a linear layer).
        bias: learn a bias.
        device: as ``nn.Conv2d``.
        dtype: as ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=None,
                 activation: str | None = "relu", bias: bool = True, device=None, dtype=None):
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if padding is None:
            padding = (ks[0] // 2, ks[1] // 2)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         activation=activation, bias=bias, device=device, dtype=dtype)
        with torch.no_grad():
            centre = torch.empty(out_channels, in_channels, device=self.weight.device, dtype=self.weight.dtype)
            nn.init.orthogonal_(centre)
            self.weight.zero_()
            self.weight[:, :, ks[0] // 2, ks[1] // 2] = centre
        parametrize.register_parametrization(self, "weight", _AOLConv(self.stride))
