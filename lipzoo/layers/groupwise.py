"""Group-wise 1-Lipschitz activations: sorts, max-min pairs, concatenated ReLU, l2-norm pooling.

These maps are not coordinatewise, so they have no slope bounds ``[alpha, beta]`` per coordinate, but
each is 1-Lipschitz in l2 as a whole: a sort (of groups, or of everything) and max-min pairs permute
their input wherever they are differentiable; ``(relu(x), relu(-x))`` and the norms of disjoint windows
move by at most as much as their input. Their states declare exactly that (``elementwise=False``,
``[alpha, beta] = [-d, d]``: the map itself is ``d``-Lipschitz on the range of ``W``, nothing of it
is linear), which is all LipLT's Theorem 3 needs: a chain ``S_{t,j}`` cannot pass through such a block
(its ``Hhat`` is zero), so the bound composes the pairwise bound of the layers after the last one with
the l2 bounds of the segments before, exactly 1 per block. Writing max-min in the form of eq. (14)
with ``|.|`` or ReLU slopes instead would cost a factor ``sqrt 2`` to 2 per block that the map does not
have.

The classes compute what deel-torchlip's and orthogonium's layers of the same purpose compute
(:mod:`lipzoo.interop` recognises those by comparing outputs, not names):

* :class:`GroupSort` (``group_size=2``: GroupSort2, ``None``: FullSort): ascending sort of contiguous
  groups along ``dim``;
* :class:`MaxMin`: ``(max(a, b), min(a, b))`` of the two halves ``a, b`` along ``dim`` (orthogonium);
* :class:`CReLU`: ``(relu(x), relu(-x))`` concatenated along ``dim`` (deel-torchlip's ``MaxMin``);
* :class:`L2NormPool2d`: ``scale`` times the l2 norm of each window (``nn.LPPool2d`` with ``p = 2``;
  deel-torchlip's ``ScaledL2NormPool2d``), non-overlapping windows only (``stride >= kernel_size``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipzoo.layers.lt import AvgPool2dOp, _pair
from lipzoo.layers.operators import ComposeOp, LinearOperator, ScaleOp
from lipzoo.layers.state import LipschitzState, UnsupportedModule
from lipzoo.numerics import U, up

__all__ = ["GroupSort", "FullSort", "MaxMin", "CReLU", "L2NormPool2d", "l2_pool_state", "group_sort"]

Shape = tuple[int, ...]


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1 (dimension 0 is the batch), got {dim!r}.")
    return dim


def group_sort(x: torch.Tensor, group_size: int | None, dim: int = 1) -> torch.Tensor:
    """Sort contiguous groups of ``group_size`` entries along ``dim`` in ascending order (``None``: all)."""
    n = x.shape[dim]
    g = n if group_size is None or group_size > n else group_size
    if n % g:
        raise ValueError(f"GroupSort: the size {n} of dimension {dim} is not a multiple of group_size={g}.")
    grouped = x.reshape(*x.shape[:dim], n // g, g, *x.shape[dim + 1:])
    if g == 2:
        lo, hi = grouped.min(dim + 1, keepdim=True)[0], grouped.max(dim + 1, keepdim=True)[0]
        return torch.cat([lo, hi], dim + 1).reshape(x.shape)
    return grouped.sort(dim + 1)[0].reshape(x.shape)


def _one_lipschitz_map_state(module: nn.Module) -> LipschitzState:
    """A shape-preserving 1-Lipschitz map of the whole input: ``W = I``, ``phi`` = its ``forward``, ``d = 1``."""
    return LipschitzState(W=ScaleOp(1.0), alpha=-1.0, beta=1.0, activation=module.forward, elementwise=False)


class GroupSort(nn.Module):
    """Ascending sort of contiguous groups of ``group_size`` entries along ``dim`` (Anil et al., 2019).

    ``group_size=2`` is GroupSort2 (min then max of each pair), ``None`` sorts the whole dimension (FullSort).
    """

    def __init__(self, group_size: int | None = 2, dim: int = 1):
        super().__init__()
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                       or group_size < 1):
            raise ValueError(f"group_size must be a positive int or None (full sort), got {group_size!r}.")
        self.group_size, self.dim = group_size, _check_dim(dim)

    def forward(self, x):
        return group_sort(x, self.group_size, self.dim)

    def lipschitz_state(self) -> LipschitzState:
        return _one_lipschitz_map_state(self)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, dim={self.dim}"


class FullSort(GroupSort):
    """Ascending sort of the whole dimension ``dim`` (GroupSort with a single group)."""

    def __init__(self, dim: int = 1):
        super().__init__(None, dim)


class MaxMin(nn.Module):
    """``(max(a, b), min(a, b))`` of the two halves ``a, b`` of dimension ``dim`` (orthogonium's MaxMin)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = _check_dim(dim)

    def forward(self, x):
        n = x.shape[self.dim]
        if n % 2:
            raise ValueError(f"MaxMin needs an even size along dimension {self.dim}, got {n}.")
        a, b = x.split(n // 2, self.dim)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], self.dim)

    def lipschitz_state(self) -> LipschitzState:
        return _one_lipschitz_map_state(self)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class _SignStackOp(LinearOperator):
    """``x -> (x, -x)`` concatenated along ``dim`` (of the batched tensor): exact, norm ``sqrt 2``."""

    def __init__(self, dim: int):
        self.dim = dim

    def forward(self, x):
        return torch.cat([x, -x], self.dim)

    def adjoint(self, y, in_shape):
        a, b = y.split(in_shape[self.dim - 1], self.dim)
        return a - b

    def out_shape(self, in_shape):
        if len(in_shape) < self.dim:
            raise ValueError(f"inputs of shape {tuple(in_shape)} have no dimension {self.dim}")
        shape = list(in_shape)
        shape[self.dim - 1] *= 2
        return tuple(shape)

    def norm_bound(self, in_shape):
        return torch.tensor(up(math.sqrt(2.0)), dtype=torch.float64)  # ||[I; -I]|| = sqrt 2 (sqrt correctly rounded)

    def abs_norm_bound(self, in_shape):
        return float(self.norm_bound(in_shape))  # |[I; -I]| = [I; I], the same norm

    def rounding_model(self, in_shape):
        return 0.0, self.abs_norm_bound(in_shape)  # a copy and a negation: no rounding

    def flops(self, in_shape):
        return 2.0 * math.prod(in_shape)


class CReLU(nn.Module):
    """``(relu(x), relu(-x))`` concatenated along ``dim`` (deel-torchlip's ``MaxMin``; Shang et al., 2016).

    State: ``W = [I; -I]`` (norm ``sqrt 2``), ``phi = relu``, declared ``1/sqrt 2``-Lipschitz on the range of
    ``W``: for ``y = (x, -x)``, ``||relu(y) - relu(y')||^2 = sum_i (relu(x_i) - relu(x'_i))^2 + (relu(-x_i) -
    relu(-x'_i))^2 <= ||x - x'||^2 = ||y - y'||^2 / 2``. The block's bound is 1 (up to rounding), where ReLU's
    slopes ``[0, 1]`` would give ``sqrt 2``.
    """

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = _check_dim(dim)

    def forward(self, x):
        return torch.cat([F.relu(x), F.relu(-x)], self.dim)

    def lipschitz_state(self) -> LipschitzState:
        d = up(math.sqrt(0.5))  # correctly rounded sqrt, one ulp up: >= 1/sqrt 2
        return LipschitzState(W=_SignStackOp(self.dim), alpha=-d, beta=d, activation=F.relu, elementwise=False)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _spread(norms: torch.Tensor, shape: Shape, kernel: tuple[int, int], stride: tuple[int, int],
            divisor: float) -> torch.Tensor:
    """Each window's value ``/ divisor`` on every cell of its window, zero outside the windows (disjoint)."""
    (kh, kw), (sh, sw) = kernel, stride
    v = (norms / divisor).repeat_interleave(sh, 2).repeat_interleave(sw, 3)
    rows = (torch.arange(v.shape[2], device=v.device) % sh) < kh
    cols = (torch.arange(v.shape[3], device=v.device) % sw) < kw
    v = v * (rows[:, None] & cols[None, :]).to(v.dtype)
    h, w = shape[-2], shape[-1]
    v = v[..., :h, :w]  # cut: only cells outside every window lie beyond (h, w)
    return F.pad(v, (0, w - v.shape[3], 0, h - v.shape[2]))


def l2_pool_state(kernel_size, stride, scale: float = 1.0, pool=None) -> LipschitzState:
    """The state of ``scale`` times the l2 norms of disjoint ``kernel_size`` windows taken every ``stride``.

    ``W = I``; ``phi`` puts ``||y_w|| / s`` (``s = fl(sqrt(k_h k_w))``) on every cell of window ``w`` and zero
    elsewhere, which is ``d``-Lipschitz with ``d = sqrt(k_h k_w) / s`` (1 up to rounding) because the windows
    are disjoint; ``G = scale * s * AvgPool2d(kernel_size, stride)`` takes it back to the window norms and has
    norm ``scale`` (each output averages its own disjoint window). Overlapping windows (a stride below the
    kernel) are refused: there a cell counts in several windows.
    """
    kernel = _pair(kernel_size)
    stride = kernel if stride is None else _pair(stride)
    if len(kernel) != 2 or len(stride) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                   for v in (*kernel, *stride)):
        raise UnsupportedModule(f"kernel_size={kernel_size!r} and stride={stride!r} must be positive ints")
    if stride[0] < kernel[0] or stride[1] < kernel[1]:
        raise UnsupportedModule(f"l2-norm pooling with stride {stride} below the kernel {kernel} has overlapping "
                                "windows; only disjoint windows (stride >= kernel_size) are modelled")
    if not math.isfinite(scale):
        raise UnsupportedModule(f"its scale {scale!r} is not finite")
    s = math.sqrt(kernel[0] * kernel[1])
    d = up(up(math.sqrt(kernel[0] * kernel[1])) / s, U)  # >= sqrt(k_h k_w) / s: the division's rounding covered

    def phi(y: torch.Tensor) -> torch.Tensor:
        norms = F.lp_pool2d(y, 2, kernel, stride)
        return _spread(norms, tuple(y.shape), kernel, stride, s)

    ops: list[LinearOperator] = [ScaleOp(s), AvgPool2dOp(kernel, stride, 0)]
    G = ComposeOp(([ScaleOp(float(scale))] if scale != 1.0 else []) + ops)
    return LipschitzState(W=ScaleOp(1.0), G=G, alpha=-d, beta=d, activation=phi, elementwise=False)


class L2NormPool2d(nn.Module):
    """``scale`` times the l2 norm of each ``kernel_size`` window (``nn.LPPool2d(2, ...)``), disjoint windows.

    ``stride`` defaults to ``kernel_size`` and must be at least it. 1-Lipschitz times ``|scale|``.
    """

    def __init__(self, kernel_size, stride=None, scale: float = 1.0):
        super().__init__()
        self.kernel_size, self.stride, self.scale = kernel_size, stride, float(scale)
        l2_pool_state(kernel_size, stride, self.scale)  # refuses overlapping windows now

    def forward(self, x):
        out = F.lp_pool2d(x, 2, self.kernel_size, self.stride)
        return out if self.scale == 1.0 else out * self.scale

    def lipschitz_state(self) -> LipschitzState:
        return l2_pool_state(self.kernel_size, self.stride, self.scale)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, scale={self.scale}"
