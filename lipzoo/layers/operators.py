"""Matrix-free linear operators with exact adjoints and proved norm bounds.

Every lipzoo layer describes its part of the structure ``y = W x``, ``x' = H x + G phi(y)``
(paper eq. 14) with these operators. An operator acts on a batch ``(B, *in_shape)`` and knows

* ``forward(x)``: ``A x``;
* ``adjoint(y, in_shape)``: ``A^T y``, exact for every input size (strided, padded
  convolutions included; the reference implementation's ``conv_transpose2d`` without
  ``output_padding`` is not);
* ``out_shape(in_shape)``;
* ``norm_bound(in_shape)``: a *proved* upper bound on the spectral norm ``||A||_2`` (used by the
  certification path when an operator is too large to materialize), a float64 tensor computed in
  float64 and rounded up (a float32 computation can round a guaranteed norm down).

and, for the guaranteed bound (:mod:`lipzoo.bounds`), what it needs to reason about an operator without
switching on its type (scipy's ``LinearOperator`` is the model: behaviour lives on the class):

* ``rounding_model(in_shape)``: ``(theta, A)`` with ``||fl(A x) - A x|| <= theta A ||x||`` in float64, for the
  forward map and the adjoint (standard model, :mod:`lipzoo.numerics`), and ``abs_norm_bound`` (``|| |A| ||_2``);
* ``flops(in_shape)``: floating-point operations of one application to one vector (the planner's cost
  model counts work, never seconds);
* ``apply_gemm(x, in_shape, transpose)``: the map as batched GEMMs (CUDA with cuDNN off);
* ``reach(in_shape, adjoint, lo, hi, axis)``: where a local map can send index intervals (``None``: not local);
* ``canonical(in_shape)``: the same map in these primitives, when an operator can say what it is;
* ``primitives()``: the factors of a composition, flattened.

A new operator type is one new class: the defaults below are sound for any linear map (a dense worst case).

Operators hold references to the layer's parameters, so anything computed from them is
differentiable.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence, overload

import torch
import torch.nn.functional as F

from lipzoo.layers.fft_bound import NORM_ROUNDING, conv2d_norm_bound
from lipzoo.numerics import FACTOR_MARGIN, U, gamma, up

Shape = tuple[int, ...]

EMPTY = 1 << 40
"""An empty index interval in :meth:`LinearOperator.reach` is ``(EMPTY, -EMPTY)``: disjoint from everything."""

# Relative margin per floating-point product or sum of bounds (one rounding each, 2**-53).
_ULP = 2.0 ** -51


def _f64(t) -> torch.Tensor:
    if torch.is_tensor(t):
        return t.to(torch.float64)
    return torch.tensor(float(t), dtype=torch.float64)  # not via float32 (torch's default dtype)

__all__ = [
    "LinearOperator",
    "Conv2dOp",
    "DenseOp",
    "DiagonalOp",
    "ScaleOp",
    "FlattenOp",
    "ComposeOp",
    "SumOp",
    "AdjointOp",
    "compose",
    "conv2d_norm_bound",
]


class LinearOperator:
    """A linear map between tensor spaces, without batch dimension in its shapes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor, in_shape: Shape) -> torch.Tensor:
        raise NotImplementedError

    def out_shape(self, in_shape: Shape) -> Shape:
        raise NotImplementedError

    def norm_bound(self, in_shape: Shape) -> torch.Tensor:
        """A proved upper bound on ``||A||_2`` for inputs of shape ``in_shape``."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    # -- what the guaranteed bound needs (defaults: sound for any linear map)

    def canonical(self, in_shape: Shape) -> "LinearOperator":
        """The same map written in the primitives below when it can say so (default: itself)."""
        return self

    def primitives(self) -> list["LinearOperator"]:
        """The factors of a composition, leftmost first (default: ``[self]``)."""
        return [self]

    def abs_norm_bound(self, in_shape: Shape) -> float:
        """A proved upper bound on ``|| |A| ||_2`` (entrywise absolute value of the matrix), for rounding margins.
        Default: ``|| |A| ||_2 <= ||A||_F <= sqrt(rank) ||A||_2``."""
        c = self.canonical(in_shape)
        if c is not self:
            return c.abs_norm_bound(in_shape)
        n = min(math.prod(in_shape), math.prod(self.out_shape(in_shape)))
        return up(math.sqrt(n) * up(float(self.norm_bound(in_shape)), FACTOR_MARGIN), 1e-15)

    def rounding_model(self, in_shape: Shape) -> tuple[float, float]:
        """``(theta, A)`` with ``||fl(op x) - op x||_2 <= theta A ||x||_2`` for the forward map and the adjoint.

        An entry that sums ``K`` products is off by ``<= gamma_K`` times the sum of their absolute values,
        i.e. ``|e| <= theta |A| |x|`` entrywise with ``theta = gamma_{K+1}``; then ``||e|| <= theta || |A| || ||x||``.
        Default: ``K`` the larger side (a dense map)."""
        c = self.canonical(in_shape)
        if c is not self:
            return c.rounding_model(in_shape)
        k = max(math.prod(in_shape), math.prod(self.out_shape(in_shape)))
        return gamma(k + 1), self.abs_norm_bound(in_shape)

    def flops(self, in_shape: Shape) -> float:
        """Floating-point operations of one application to one vector (default: a dense matrix)."""
        c = self.canonical(in_shape)
        if c is not self:
            return c.flops(in_shape)
        return 2.0 * math.prod(in_shape) * math.prod(self.out_shape(in_shape))

    def apply_gemm(self, x: torch.Tensor, in_shape: Shape, transpose: bool = False) -> torch.Tensor:
        """The map (``transpose``: its adjoint) on the batch ``x`` by batched GEMMs where the operator knows how
        (convolutions; on CUDA with cuDNN off a float64 convolution runs one GEMM per sample). Every entry is
        still a sum of the products :meth:`rounding_model` counts, in some order."""
        c = self.canonical(in_shape)
        if c is not self:
            return c.apply_gemm(x, in_shape, transpose)
        return self.adjoint(x, in_shape) if transpose else self.forward(x)

    def reach(self, in_shape: Shape, adjoint: bool, lo: torch.Tensor, hi: torch.Tensor, axis: int):
        """Output indices along ``axis`` (0: rows, 1: columns of a ``(C, H, W)`` space) that input indices in
        ``[lo, hi]`` can reach, in exact arithmetic (``adjoint``: for the adjoint map, whose input has this
        operator's output shape); ``None`` when the map is not local (default)."""
        c = self.canonical(in_shape)
        if c is not self:
            return c.reach(in_shape, adjoint, lo, hi, axis)
        return None

    def __matmul__(self, other: "LinearOperator") -> "LinearOperator":
        return compose(self, other)

    def to(self, dtype: torch.dtype) -> "LinearOperator":
        """A copy whose weights (floating tensors of one or more dimensions, in this operator and the ones
        it is built from) are cast to ``dtype``; scalars keep their precision. Used for the low-precision
        power iteration (:func:`lipzoo.bounds.sweep.power_iteration`), which runs without gradients."""
        out = copy.copy(self)
        for name, value in vars(self).items():
            setattr(out, name, _cast(value, dtype))
        return out


class Conv2dOp(LinearOperator):
    """``x -> conv2d(x, weight)`` (no bias), with stride, zero padding, dilation and groups."""

    def __init__(self, weight: torch.Tensor, stride=1, padding=0, dilation=1, groups: int = 1):
        self.weight = weight
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups

    def forward(self, x):
        return F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)

    def adjoint(self, y, in_shape):
        # conv2d_input is the exact gradient of conv2d w.r.t. its input, i.e. the adjoint, for any
        # input size (it chooses the output_padding that conv_transpose2d alone gets wrong).
        size = (y.shape[0], *in_shape)
        return torch.nn.grad.conv2d_input(
            size, self.weight, y, self.stride, self.padding, self.dilation, self.groups
        )

    def out_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.weight.shape[1] * self.groups:
            raise ValueError(f"convolution expects (C={self.weight.shape[1] * self.groups}, H, W) inputs, "
                             f"got {tuple(in_shape)}")
        c, h, w = in_shape
        k = self.weight.shape[-2:]
        hw = [
            (n + 2 * p - d * (kk - 1) - 1) // s + 1
            for n, p, d, kk, s in zip((h, w), self.padding, self.dilation, k, self.stride)
        ]
        if min(hw) <= 0:
            raise ValueError(f"input {tuple(in_shape)} is too small for a {tuple(k)} kernel")
        return (self.weight.shape[0], *hw)

    def norm_bound(self, in_shape):
        return conv2d_norm_bound(self.weight, in_shape[-2:], self.padding, self.dilation, self.groups,
                                 self.stride)

    def abs_norm_bound(self, in_shape):
        """Schur test ``sqrt(max row sum * max column sum)`` of ``|A|``: a given input pixel meets each output
        channel's tap ``(kh, kw)`` at most once, for any stride, padding or dilation. Rows sum over
        ``(c_in, taps)``, columns over ``(c_out of the group, taps)``; the float64 sums round down by at most a
        relative ``(n + 1) u``, which the ``1e-9`` covers."""
        a = self.weight.detach().abs().double()
        g = self.groups
        rows = a.sum((1, 2, 3)).max()
        cols = a.reshape(g, a.shape[0] // g, a.shape[1], -1).sum((1, 3)).max()
        return float((rows * cols).sqrt()) * (1 + 1e-9)

    def rounding_model(self, in_shape):
        """``K = max(c_in / groups, c_out / groups) k_h k_w``: the longest sum of products of an output entry
        (forward) or of an input entry (adjoint); im2col + GEMM, any order."""
        c_out, c_in_g, kh, kw = self.weight.shape
        return gamma(max(c_in_g, c_out // self.groups) * kh * kw + 1), self.abs_norm_bound(in_shape)

    def flops(self, in_shape):
        c_out, c_in_g, kh, kw = self.weight.shape
        _, h, w = self.out_shape(in_shape)
        return 2.0 * c_out * c_in_g * kh * kw * h * w

    def apply_gemm(self, x, in_shape, transpose=False):
        """The batch unfolded at once (``F.unfold``; the padding's zeros are exact zero products), multiplied by
        the ``c_out x c_in k^2`` kernel matrix in one GEMM per group; the adjoint folds ``W^T y`` back
        (``F.fold`` adds the overlapping windows)."""
        c_out, _, kh, kw = self.weight.shape
        g, b = self.groups, x.shape[0]
        kernel = self.weight.reshape(g, c_out // g, -1)  # per group: c_out/g x (c_in/g) k^2
        if transpose:
            cols = kernel.transpose(1, 2) @ x.reshape(b, g, c_out // g, -1)  # (b, g, (c_in/g) k^2, L)
            return F.fold(cols.reshape(b, -1, cols.shape[-1]), tuple(in_shape[1:]), (kh, kw), dilation=self.dilation,
                          padding=self.padding, stride=self.stride)
        out = self.out_shape(in_shape)
        cols = F.unfold(x, (kh, kw), dilation=self.dilation, padding=self.padding, stride=self.stride)
        # unfold orders its rows (channel, kernel row, kernel column): a group's channels are contiguous
        return (kernel @ cols.reshape(b, g, -1, cols.shape[-1])).reshape(b, *out)

    def reach(self, in_shape, adjoint, lo, hi, axis):
        """Forward: output ``o`` reads inputs ``o s - p + t d`` for taps ``t < k``, so an input ``i`` reaches ``o``
        only if ``i + p - (k-1) d <= o s <= i + p``. Adjoint: output ``o`` of the forward map reaches back to
        ``[o s - p, o s - p + (k-1) d]``. Both clipped to the target's extent (zero padding). An empty interval
        is ``(EMPTY, -EMPTY)``."""
        if len(in_shape) != 3:
            return None
        s, p, d = self.stride[axis], self.padding[axis], self.dilation[axis]
        k = self.weight.shape[2 + axis]
        n_in = in_shape[1 + axis]
        n_out = self.out_shape(in_shape)[1 + axis]
        empty = lo > hi
        if adjoint:
            new_lo, new_hi = (lo * s - p).clamp_min(0), (hi * s - p + (k - 1) * d).clamp_max(n_in - 1)
        else:
            new_lo = torch.div(lo + p - (k - 1) * d + s - 1, s, rounding_mode="floor").clamp_min(0)
            new_hi = torch.div(hi + p, s, rounding_mode="floor").clamp_max(n_out - 1)
        empty = empty | (new_lo > new_hi)
        return torch.where(empty, EMPTY, new_lo), torch.where(empty, -EMPTY, new_hi)


class DenseOp(LinearOperator):
    """``x -> x @ weight.T`` on the last dimension (an ``nn.Linear`` without bias)."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def forward(self, x):
        return x @ self.weight.T

    def adjoint(self, y, in_shape):
        return y @ self.weight

    def out_shape(self, in_shape):
        if len(in_shape) != 1 or in_shape[0] != self.weight.shape[1]:
            raise ValueError(f"linear map expects ({self.weight.shape[1]},) inputs, got {tuple(in_shape)}")
        return (self.weight.shape[0],)

    def norm_bound(self, in_shape):
        return torch.linalg.matrix_norm(_f64(self.weight), ord=2) * (1 + NORM_ROUNDING)

    def abs_norm_bound(self, in_shape):
        """Schur test of ``|W|`` (float64 sums, rounding covered by the ``1e-9``)."""
        a = self.weight.detach().abs().double()
        return float((a.sum(1).max() * a.sum(0).max()).sqrt()) * (1 + 1e-9)

    def flops(self, in_shape):
        return 2.0 * self.weight.shape[0] * self.weight.shape[1]


class DiagonalOp(LinearOperator):
    """Elementwise scaling by ``scale`` broadcast over the per-sample shape.

    ``scale`` has shape ``(C,)`` for per-channel scaling of ``(C, H, W)`` or ``(C,)`` inputs,
    or the full per-sample shape.
    """

    def __init__(self, scale: torch.Tensor):
        self.scale = scale

    def _broadcast(self, x):
        s = self.scale
        extra = x.dim() - 1 - s.dim()
        return s.reshape(*s.shape, *([1] * extra))

    def forward(self, x):
        return x * self._broadcast(x)

    def adjoint(self, y, in_shape):
        return self.forward(y)

    def out_shape(self, in_shape):
        if self.scale.numel() > 1 and tuple(self.scale.shape) != tuple(in_shape[: self.scale.dim()]):
            raise ValueError(f"scaling of shape {tuple(self.scale.shape)} does not fit inputs {tuple(in_shape)}")
        return tuple(in_shape)

    def norm_bound(self, in_shape):
        return _f64(self.scale).abs().max()  # exact: float32 -> float64 is exact

    def abs_norm_bound(self, in_shape):
        return float(self.norm_bound(in_shape)) * (1 + FACTOR_MARGIN)

    def rounding_model(self, in_shape):
        return U, self.abs_norm_bound(in_shape)  # one product per entry

    def flops(self, in_shape):
        return float(math.prod(in_shape))

    def reach(self, in_shape, adjoint, lo, hi, axis):
        return (lo, hi) if len(in_shape) == 3 else None


class ScaleOp(LinearOperator):
    """``x -> c x`` for a scalar ``c`` (a Python number or a 0-d tensor)."""

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return self.c * x

    def adjoint(self, y, in_shape):
        return self.c * y

    def out_shape(self, in_shape):
        return tuple(in_shape)

    def norm_bound(self, in_shape):
        # a Python float is already a float64; torch.as_tensor would round it to float32
        c = self.c
        return _f64(c.detach() if torch.is_tensor(c) else float(c)).abs()

    def abs_norm_bound(self, in_shape):
        return float(self.norm_bound(in_shape)) * (1 + FACTOR_MARGIN)

    def rounding_model(self, in_shape):
        return U, self.abs_norm_bound(in_shape)

    def flops(self, in_shape):
        return float(math.prod(in_shape))

    def apply_gemm(self, x, in_shape, transpose=False):
        return self.c * x

    def reach(self, in_shape, adjoint, lo, hi, axis):
        return (lo, hi) if len(in_shape) == 3 else None


class FlattenOp(LinearOperator):
    """Reshape ``(C, H, W) -> (C*H*W,)``; an isometry."""

    def forward(self, x):
        return x.flatten(1)

    def adjoint(self, y, in_shape):
        return y.reshape(y.shape[0], *in_shape)

    def out_shape(self, in_shape):
        return (math.prod(in_shape),)

    def norm_bound(self, in_shape):
        return torch.tensor(1.0, dtype=torch.float64)

    def abs_norm_bound(self, in_shape):
        return 1.0 + FACTOR_MARGIN

    def rounding_model(self, in_shape):
        return 0.0, 1.0  # a reshape: exact

    def flops(self, in_shape):
        return 0.0


class ComposeOp(LinearOperator):
    """``ops[0] @ ops[1] @ ... @ ops[-1]`` (the last one acts first)."""

    def __init__(self, ops: Sequence[LinearOperator]):
        self.ops = list(ops)

    def _shapes(self, in_shape):
        shapes = [tuple(in_shape)]
        for op in reversed(self.ops):
            shapes.append(op.out_shape(shapes[-1]))
        return shapes  # shapes[i] is the input shape of ops[-1 - i]

    def factors(self, in_shape) -> list[tuple["LinearOperator", tuple]]:
        """``(factor, its input shape)`` in the order the forward map applies them (rightmost first); the
        adjoint applies ``reversed(...)`` of it, each factor's adjoint taking that same shape."""
        shapes = self._shapes(in_shape)
        return [(op, shapes[i]) for i, op in enumerate(reversed(self.ops))]

    def forward(self, x):
        for op in reversed(self.ops):
            x = op.forward(x)
        return x

    def adjoint(self, y, in_shape):
        for op, shape in reversed(self.factors(in_shape)):
            y = op.adjoint(y, shape)
        return y

    def out_shape(self, in_shape):
        return self._shapes(in_shape)[-1]

    def norm_bound(self, in_shape):
        bound = torch.tensor(1.0, dtype=torch.float64)
        for op, shape in self.factors(in_shape):
            bound = bound * _f64(op.norm_bound(shape)).to(bound.device) * (1 + _ULP)
        return bound

    def primitives(self):
        return [f for op in self.ops for f in op.primitives()]

    def abs_norm_bound(self, in_shape):
        out = 1.0
        for f, shape in self.factors(in_shape):
            out *= f.abs_norm_bound(shape)
        return out

    def rounding_model(self, in_shape):
        """Compositions multiply the ``(1 + theta)`` factors."""
        theta, a = 1.0, 1.0
        for f, shape in self.factors(in_shape):
            th, af = f.rounding_model(shape)
            theta *= 1 + th
            a *= af
        return theta - 1, a

    def flops(self, in_shape):
        return sum(f.flops(shape) for f, shape in self.factors(in_shape))

    def apply_gemm(self, x, in_shape, transpose=False):
        order = self.factors(in_shape)
        for f, shape in (reversed(order) if transpose else order):
            x = f.apply_gemm(x, shape, transpose)
        return x

    def reach(self, in_shape, adjoint, lo, hi, axis):
        if len(in_shape) != 3:
            return None
        order = self.factors(in_shape)
        for f, shape in (reversed(order) if adjoint else order):
            r = f.reach(shape, adjoint, lo, hi, axis)  # None for a shape other than (C, H, W)
            if r is None:
                return None
            lo, hi = r
        return lo, hi


class SumOp(LinearOperator):
    """``sum_i ops[i]`` (all with the same input and output shapes)."""

    def __init__(self, ops: Sequence[LinearOperator]):
        self.ops = list(ops)

    def forward(self, x):
        return sum(op.forward(x) for op in self.ops)

    def adjoint(self, y, in_shape):
        return sum(op.adjoint(y, in_shape) for op in self.ops)

    def out_shape(self, in_shape):
        return self.ops[0].out_shape(in_shape)

    def norm_bound(self, in_shape):
        total = torch.tensor(0.0, dtype=torch.float64)
        for op in self.ops:
            total = (total + _f64(op.norm_bound(in_shape)).to(total.device)) * (1 + _ULP)
        return total

    def abs_norm_bound(self, in_shape):
        return sum(f.abs_norm_bound(in_shape) for f in self.ops)

    def rounding_model(self, in_shape):
        """Sums add a ``gamma_m`` for the final additions of the ``m`` terms."""
        parts = [f.rounding_model(in_shape) for f in self.ops]
        top = max(p[0] for p in parts)
        return top + gamma(len(parts)) * (1 + top), sum(p[1] for p in parts)

    def flops(self, in_shape):
        return sum(f.flops(in_shape) for f in self.ops) + len(self.ops) * math.prod(self.out_shape(in_shape))

    def apply_gemm(self, x, in_shape, transpose=False):
        return sum(f.apply_gemm(x, in_shape, transpose) for f in self.ops)

    def reach(self, in_shape, adjoint, lo, hi, axis):
        if len(in_shape) != 3:
            return None
        parts = [f.reach(in_shape, adjoint, lo, hi, axis) for f in self.ops]
        if any(r is None for r in parts):
            return None
        return (torch.stack([a for a, _ in parts]).min(0).values, torch.stack([b for _, b in parts]).max(0).values)


class AdjointOp(LinearOperator):
    """The adjoint ``A^T`` of an operator ``A`` whose input shape is ``base_in_shape``."""

    def __init__(self, op: LinearOperator, base_in_shape: Shape):
        self.op = op
        self.base_in_shape = tuple(base_in_shape)

    def forward(self, x):
        return self.op.adjoint(x, self.base_in_shape)

    def adjoint(self, y, in_shape):
        return self.op.forward(y)

    def out_shape(self, in_shape):
        return self.base_in_shape

    def norm_bound(self, in_shape):
        return self.op.norm_bound(self.base_in_shape)

    def abs_norm_bound(self, in_shape):
        return self.op.abs_norm_bound(self.base_in_shape)

    def rounding_model(self, in_shape):
        return self.op.rounding_model(self.base_in_shape)  # the models cover forward and adjoint

    def flops(self, in_shape):
        return self.op.flops(self.base_in_shape)

    def apply_gemm(self, x, in_shape, transpose=False):
        return self.op.apply_gemm(x, self.base_in_shape, not transpose)

    def reach(self, in_shape, adjoint, lo, hi, axis):
        return self.op.reach(self.base_in_shape, not adjoint, lo, hi, axis)


def _cast(value, dtype: torch.dtype):
    if isinstance(value, LinearOperator):
        return value.to(dtype)
    if isinstance(value, (list, tuple)) and any(isinstance(v, LinearOperator) for v in value):
        return type(value)(_cast(v, dtype) for v in value)
    if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0 and value.dtype != dtype:
        return value.to(dtype)
    return value


@overload
def compose(first: LinearOperator, /, *ops: LinearOperator | None) -> LinearOperator: ...
@overload
def compose(first: LinearOperator | None, second: LinearOperator, /, *ops: LinearOperator | None) -> LinearOperator: ...
@overload
def compose(*ops: LinearOperator | None) -> LinearOperator | None: ...
def compose(*ops: LinearOperator | None) -> LinearOperator | None:
    """Compose operators (``None`` is the identity), flattening nested compositions."""
    flat: list[LinearOperator] = []
    for op in ops:
        if op is None:
            continue
        flat.extend(op.ops if isinstance(op, ComposeOp) else [op])
    if not flat:
        return None
    return flat[0] if len(flat) == 1 else ComposeOp(flat)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)
