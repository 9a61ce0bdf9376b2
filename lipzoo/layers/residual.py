"""Residual layers that are sqrt(rho)-Lipschitz by construction (paper, Proposition 2).

``h(x) = sqrt(rho) x - (alpha+beta)/sqrt(rho) * W^T T phi(W x + b)`` is sqrt(rho)-Lipschitz whenever
``W W^T <= 2 rho / (alpha+beta)^2 * T^{-1}`` for a positive diagonal ``T``. We take
``T = 2 rho / (alpha+beta)^2 * D^{-1}`` with the SLL diagonal (Araujo et al., ICLR 2023)

    D_ii = sum_j |W W^T|_ij q_j / q_i,        q > 0 learnable,

which satisfies ``W W^T <= D`` for every value of ``W`` and ``q`` (a weighted diagonally dominant
bound), hence the condition holds for every parameter value, during and after training. The layer
then reads ``h(x) = sqrt(rho) x - 2 sqrt(rho)/(alpha+beta) * W^T D^{-1} phi(W x + b)`` (``rho = 1``,
ReLU: the SLL layer).

For the convolutional layer the Gram operator ``W W^T`` is a convolution on the hidden channels;
we bound ``|W W^T|`` entrywise by the autocorrelation of ``|W|``, whose row sums factor as
``S S^T`` with ``S[i, c] = sum_{u} |W[i, c, u]|``. This holds for zero padding at every input size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipzoo.layers.activations import get_activation, module_activation_slopes
from lipzoo.layers.operators import (AdjointOp, Conv2dOp, DenseOp, DiagonalOp, LinearOperator,
                                     ScaleOp, compose, conv2d_norm_bound)
from lipzoo.layers.state import LipschitzState, UnsupportedModule

__all__ = ["LTResidualLinear", "LTResidualConv"]

_D_FLOOR = 1e-12  # raising D only shrinks T, so clamping keeps the Lipschitz guarantee


class _ResidualBase(nn.Module):
    """Shared parameters and the Prop. 2 rescaling of both residual layers."""

    weight: nn.Parameter  # set by the subclass
    bias: nn.Parameter
    log_rho: torch.Tensor  # a parameter, or a buffer when rho is not learnt

    def _init_common(self, hidden: int, activation: str | None, rho: float, learn_rho: bool):
        spec = get_activation(activation)
        if spec.alpha < 0 or spec.beta <= 0:
            # Proposition 2 needs a monotone activation: with alpha < 0 the Jacobian
            # sqrt(rho) I - (alpha+beta)/sqrt(rho) W^T T diag(phi') W can exceed sqrt(rho) (e.g. GELU).
            raise ValueError(f"Residual layers need a monotone activation (0 <= alpha <= beta, beta > 0); "
                             f"activation {activation!r} has [{spec.alpha}, {spec.beta}]. Use relu, tanh, "
                             "leaky_relu, softplus, elu or sigmoid.")
        if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a positive number, got {rho!r}.")
        self.activation_name = activation
        self.act = spec.factory()
        self._slopes = (spec.alpha, spec.beta)
        self.log_q = nn.Parameter(torch.zeros(hidden))
        log_rho = torch.tensor(math.log(rho))
        if learn_rho:
            self.log_rho = nn.Parameter(log_rho)
        else:
            self.register_buffer("log_rho", log_rho)

    @property
    def rho(self) -> torch.Tensor:
        return self.log_rho.exp()

    def _gram_row_sums(self) -> torch.Tensor:
        """``sum_j |W W^T|_ij q_j`` (or an entrywise upper bound of it), per hidden unit."""
        raise NotImplementedError

    def _scale(self) -> torch.Tensor:
        """Per-hidden-unit factor ``2 sqrt(rho)/(alpha+beta) / D_ii``."""
        q = self.log_q.exp()
        d = (self._gram_row_sums() / q).clamp_min(_D_FLOOR)
        alpha, beta = self._slopes
        return 2.0 * self.rho.sqrt() / (alpha + beta) / d

    def effective_parameters(self) -> dict:
        """Plain tensors of ``h(x) = sqrt_rho * x - W^T (scale * phi(W x + b))`` (for export)."""
        return {"weight": self.weight.detach().clone(), "bias": self.bias.detach().clone(),
                "scale": self._scale().detach().clone(), "sqrt_rho": float(self.rho.detach().sqrt()),
                "activation": self.activation_name}

    def _state(self, W: LinearOperator, W_T: LinearOperator, bias_shape) -> LipschitzState:
        G = compose(W_T, DiagonalOp(-self._scale()))
        # The accountant needs the slopes of the activation module as it is now; the registered ones
        # (self._slopes) only set the Proposition 2 scale.
        alpha, beta = module_activation_slopes(self.act, self.activation_name)
        return LipschitzState(W=W, H=ScaleOp(self.rho.sqrt()), G=G, alpha=alpha, beta=beta,
                              activation=self.act, bias=self.bias.reshape(bias_shape))


class LTResidualLinear(_ResidualBase):
    """Dense residual layer of Proposition 2 on ``features``-dimensional inputs."""

    def __init__(self, features: int, hidden_features: int, activation: str | None = "relu",
                 rho: float = 1.0, learn_rho: bool = True):
        super().__init__()
        self.features, self.hidden_features = features, hidden_features
        ref = nn.Linear(features, hidden_features)  # PyTorch default initialisation
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone())
        self._init_common(hidden_features, activation, rho, learn_rho)

    def _gram_row_sums(self):
        q = self.log_q.exp()
        return (self.weight @ self.weight.T).abs() @ q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.features:
            raise ValueError(f"LTResidualLinear expects inputs (B, {self.features}), got {tuple(x.shape)}.")
        a = self.act(F.linear(x, self.weight, self.bias)) * self._scale()
        return self.rho.sqrt() * x - a @ self.weight

    def lipschitz_state(self) -> LipschitzState:
        W = DenseOp(self.weight)
        return self._state(W, AdjointOp(W, (self.features,)), (-1,))

    def extra_repr(self) -> str:
        return (f"features={self.features}, hidden_features={self.hidden_features}, "
                f"activation={self.activation_name!r}")


class _SameConvTransposeOp(LinearOperator):
    """Adjoint of a stride-1 'same' convolution: maps hidden channels back to input channels."""

    def __init__(self, weight: torch.Tensor, padding: int):
        self.weight, self.padding = weight, padding

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, None, 1, self.padding)

    def adjoint(self, y, in_shape):
        return F.conv2d(y, self.weight, None, 1, self.padding)

    def out_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.weight.shape[0]:
            raise ValueError(f"transposed convolution expects ({self.weight.shape[0]}, H, W) inputs, got "
                             f"{tuple(in_shape)}")
        k = self.weight.shape[-2:]
        return (self.weight.shape[1], *(n - 1 + kk - 2 * self.padding for n, kk in zip(in_shape[1:], k)))

    def norm_bound(self, in_shape):
        # ||A^T|| = ||A||, A the convolution on this operator's output space
        return conv2d_norm_bound(self.weight, self.out_shape(in_shape)[-2:], self.padding)

    def canonical(self, in_shape) -> AdjointOp:
        """The adjoint of the convolution on this operator's output space: the guaranteed bound sizes its rounding
        from the kernel and applies it as one batched GEMM on CUDA (:class:`~lipzoo.layers.operators.Conv2dOp`)."""
        return AdjointOp(Conv2dOp(self.weight, 1, self.padding), tuple(self.out_shape(in_shape)))


class LTResidualConv(_ResidualBase):
    """Convolutional residual layer of Proposition 2 (stride 1, 'same' zero padding, odd kernel)."""

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int = 3,
                 activation: str | None = "relu", rho: float = 1.0, learn_rho: bool = True):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"LTResidualConv needs an odd integer kernel_size, got {kernel_size!r}.")
        self.channels, self.hidden_channels, self.kernel_size = channels, hidden_channels, kernel_size
        self.padding = kernel_size // 2
        ref = nn.Conv2d(channels, hidden_channels, kernel_size)  # PyTorch default initialisation
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone())  # type: ignore[union-attr]  # bias=True
        self._init_common(hidden_channels, activation, rho, learn_rho)

    def _gram_row_sums(self):
        q = self.log_q.exp()
        s = self.weight.abs().sum(dim=(2, 3))  # (hidden, channels)
        return s @ (s.T @ q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"LTResidualConv expects inputs (B, {self.channels}, H, W), got "
                             f"{tuple(x.shape)}.")
        z = F.conv2d(x, self.weight, self.bias, 1, self.padding)
        a = self.act(z) * self._scale()[:, None, None]
        return self.rho.sqrt() * x - F.conv_transpose2d(a, self.weight, None, 1, self.padding)

    def lipschitz_state(self) -> LipschitzState:
        k, p = self.weight.shape[-1], self.padding
        if (not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < k
                or self.weight.shape[-2] != k):
            raise UnsupportedModule(f"padding={p!r} must be an int in [0, kernel_size) with a square kernel")
        W = Conv2dOp(self.weight, 1, self.padding)
        return self._state(W, _SameConvTransposeOp(self.weight, self.padding), (-1, 1, 1))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hidden_channels={self.hidden_channels}, "
                f"kernel_size={self.kernel_size}, activation={self.activation_name!r}")
