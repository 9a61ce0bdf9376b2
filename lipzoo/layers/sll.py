"""SDP-based Lipschitz layers (SLL; Araujo, Havens, Delattre, Allauzen & Hu, ICLR 2023).

The SLL block

    h(x) = x - 2 W T^{-1} phi(W^T x + b),    T = diag(sum_j |W^T W|_ij q_j / q_i),  q = exp(log_q) > 0

is 1-Lipschitz for every ``W``, ``b`` and ``q`` when ``phi`` is slope-restricted in ``[0, 1]`` (ReLU):
``T >= W^T W`` (a weighted diagonally dominant bound), and then ``I - 2 W T^{-1} Lambda W^T`` has norm
at most 1 for every ``0 <= Lambda <= I``. It is eq. (14) with ``W := W^T`` (the map into the inner
space), ``H = I`` and ``G = -2 W T^{-1}``.

It is :class:`~lipzoo.layers.LTResidualLinear` / :class:`~lipzoo.layers.LTResidualConv` (Proposition 2)
with ``rho = 1`` fixed, which reads ``h(x) = x - 2/(alpha+beta) W T_D^{-1} phi(W^T x + b)`` (the factor
is 2 for ReLU and tanh, whose slopes span ``[0, 1]``); the stored ``weight`` is the map into the inner space
(``(inner, features)``, or the kernel ``(inner, channels, k, k)``), as in those classes. So the Lipschitz
state, ``forward``, export (``effective_parameters``) and the rounding bound are theirs; what is new is
the convolutional ``T``:

* **dense**: ``T_ii = sum_j |W^T W|_ij q_j / q_i`` exactly as in the paper (the residual layer's diagonal);
* **convolution** (stride 1, zero padding ``k // 2``): the inner-space Gram ``W^T W`` is the convolution
  by the kernel's autocorrelation ``K * K`` (``(inner, inner, 2k-1, 2k-1)``: ``F.conv2d(K, K, padding=k-1)``),
  and ``T_ii = sum_{j, taps} |K * K|_{ij} q_j / q_i``, as the paper and orthogonium compute it. Zero padding
  makes the Gram ``C E E^T C^T <= C C^T`` (``E`` the embedding of the image into the unpadded plane) and
  restricts it to the image's positions (a principal submatrix, whose row sums are smaller), so the bound
  holds at every input size. It is never larger, and usually much smaller, than the
  ``S S^T`` bound of :class:`~lipzoo.layers.LTResidualConv` (``S[i, c] = sum_u |K[i, c, u]|``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lipzoo.layers.residual import LTResidualConv, LTResidualLinear

__all__ = ["SLLLinear", "SLLConv2d", "sll_conv_gram"]


def sll_conv_gram(kernel: torch.Tensor) -> torch.Tensor:
    """The autocorrelation ``K * K`` of a kernel ``(inner, channels, k_h, k_w)``: ``(inner, inner, 2k_h-1, 2k_w-1)``,
    entry ``[i, j, t]`` = sum over channels and taps ``u`` of ``K[i, c, u + t - (k-1)] K[j, c, u]`` (the Gram of the
    convolution on the inner space, at shift ``t``)."""
    kh, kw = kernel.shape[-2:]
    return F.conv2d(kernel, kernel, padding=(kh - 1, kw - 1))


class SLLLinear(LTResidualLinear):
    """Dense SLL block ``h(x) = x - 2 W T^{-1} phi(W^T x + b)`` on ``features``-dimensional inputs.

    Args:
        features: input and output size.
        inner_features: size of the inner space (columns of ``W``).
        activation: a registered monotone activation (``0 <= alpha <= beta``), ReLU by default.
    """

    def __init__(self, features: int, inner_features: int, activation: str | None = "relu"):
        super().__init__(features, inner_features, activation=activation, rho=1.0, learn_rho=False)


class SLLConv2d(LTResidualConv):
    """Convolutional SLL block (stride 1, zero padding ``k // 2``, odd ``k``), ``T`` from ``|K * K|``.

    Args:
        channels: input and output channels.
        inner_channels: channels of the inner space.
        kernel_size: odd kernel size.
        activation: a registered monotone activation (``0 <= alpha <= beta``), ReLU by default.
    """

    def __init__(self, channels: int, inner_channels: int, kernel_size: int = 3, activation: str | None = "relu"):
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"SLLConv2d needs an odd integer kernel_size (stride 1, padding k // 2 keeps the size), "
                             f"got {kernel_size!r}.")
        super().__init__(channels, inner_channels, kernel_size, activation=activation, rho=1.0, learn_rho=False)

    def _gram_row_sums(self) -> torch.Tensor:
        q = self.log_q.exp()
        return sll_conv_gram(self.weight).abs().sum((2, 3)) @ q
