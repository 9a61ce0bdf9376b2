"""Chains as sequences of primitive steps, applied with a proved bound on their float64 rounding.

A LipLT inner operator ``S = F_1 ... F_r`` (and its Gram operator ``S^T S`` or ``S S^T``) is applied here as
a list of :class:`Step`: one primitive factor or its adjoint, with its rounding model ``(theta, A)`` and a
proved bound ``nb`` on its norm (both from the operator's own methods, :mod:`lipzoo.layers.operators`).

**What is proved** (:func:`run_tracked`). With ``x_hat' = fl(F x_hat) = F x_hat + e``, ``||e|| <= theta A
||x_hat||`` and ``||F|| <= nb``: ``||x_hat' - F x_exact|| <= nb err + theta A ||x_hat||``, so every vector that
leaves a sweep carries a proved bound on its distance to the exact result. Computed norms are inflated by
``1 + 1e-10`` for their own rounding.

Factor norm bounds (FFT bound of a convolution: 0.1-1 s each) are kept in a :class:`FactorBounds` that the
caller passes explicitly and that lives as long as one bound computation: no module-level memo.
"""

from __future__ import annotations

import math

import torch

from lipzoo.bounds.eigen import dense_norm_bound
from lipzoo.bounds.structure import numel
from lipzoo.bounds.sweep import adjoint
from lipzoo.layers.operators import Conv2dOp, DenseOp, LinearOperator
from lipzoo.numerics import FACTOR_MARGIN

Shape = tuple[int, ...]

__all__ = ["FactorBounds", "Step", "apply", "primitive_steps", "adjoint_steps", "transpose_steps", "gram_steps",
           "run_tracked", "basis", "basis_channels"]


class FactorBounds:
    """Proved norm bounds of single factors, computed once per computation.

    Keyed by the operator object (held, so an ``id`` is never recycled while the table lives) and its input
    shape. A dense matrix with a large side is bounded from its smaller Gram matrix and a Cholesky certificate
    (:func:`lipzoo.bounds.eigen.dense_norm_bound`, ~20x faster than an SVD for 512 x 3136); anything else by its
    ``norm_bound`` with :data:`lipzoo.numerics.FACTOR_MARGIN`, rounded up."""

    def __init__(self):
        self._table: dict = {}

    def __call__(self, op: LinearOperator, in_shape: Shape) -> float:
        key = (id(op), tuple(in_shape))
        hit = self._table.get(key)
        if hit is None or hit[0] is not op:
            if type(op) is DenseOp and min(op.weight.shape) > 64 and max(op.weight.shape) >= 1024:
                value = dense_norm_bound(op.weight)
            else:
                value = math.nextafter(float(torch.as_tensor(op.norm_bound(in_shape)).detach()) * (1 + FACTOR_MARGIN),
                                       math.inf)
            hit = (op, value)
            self._table[key] = hit
        return hit[1]


class Step:
    """One primitive factor (or its adjoint) with its rounding model and proved norm bound."""

    def __init__(self, op: LinearOperator, in_shape: Shape, adjoint: bool, bounds: FactorBounds | None = None):
        self.op, self.in_shape, self.adjoint = op, tuple(in_shape), adjoint
        self.bounds = bounds if bounds is not None else FactorBounds()
        self.theta, self.a = op.rounding_model(self.in_shape)
        self.nb = self.bounds(op, self.in_shape)

    def flops(self) -> float:
        """Flops of one application to one vector (forward and adjoint cost the same)."""
        return self.op.flops(self.in_shape)

    def transposed(self) -> "Step":
        return Step(self.op, self.in_shape, not self.adjoint, self.bounds)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply(self.op, x, self.in_shape, self.adjoint)

    def one_channel(self, x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """``self(x)`` for a batch whose sample ``i`` is non-zero in channel ``channels[i]`` only (identity and
        probe vectors). A convolution without groups then needs only that channel's slice of its kernel:
        ``1/C`` of the work. Each output entry is the same sum with exact-zero products left out, i.e. one
        order of evaluating it, so the rounding model covers it unchanged."""
        op = self.op
        if type(op) is not Conv2dOp or op.groups != 1:
            return self(x)
        y = x.new_empty(x.shape[0], *(self.in_shape if self.adjoint else op.out_shape(self.in_shape)))
        for c in channels.unique().tolist():
            rows = (channels == c).nonzero().squeeze(1).to(x.device)
            if self.adjoint:  # x lives in the output space: output channel c of the kernel
                sub, shape = Conv2dOp(op.weight[c:c + 1], op.stride, op.padding, op.dilation), self.in_shape
            else:
                sub = Conv2dOp(op.weight[:, c:c + 1], op.stride, op.padding, op.dilation)
                shape = (1, *self.in_shape[1:])
            y[rows] = apply(sub, x[rows][:, c:c + 1], shape, self.adjoint)
        return y


def apply(op: LinearOperator, x: torch.Tensor, in_shape: Shape, transpose: bool) -> torch.Tensor:
    """``op`` (``transpose``: its adjoint) on the batch ``x``: on CUDA by batched GEMMs
    (:meth:`LinearOperator.apply_gemm`), on the CPU by the operators' own kernels (1.1-2.2x faster there)."""
    if x.is_cuda:
        return op.apply_gemm(x, in_shape, transpose)
    return adjoint(op, x, in_shape) if transpose else op.forward(x)


def primitive_steps(factors: list[LinearOperator], in_shape: Shape, bounds: FactorBounds | None = None) -> list[Step]:
    """Forward steps of ``factors[0] ... factors[-1]`` (rightmost first), compositions flattened."""
    bounds = bounds if bounds is not None else FactorBounds()
    flat = [f for op in factors for f in op.primitives()]
    steps, shape = [], tuple(in_shape)
    for f in reversed(flat):
        steps.append(Step(f, shape, False, bounds))
        shape = f.out_shape(shape)
    return steps


def adjoint_steps(forward: list[Step]) -> list[Step]:
    """The adjoint of a forward chain of steps (each step's adjoint, in reverse order)."""
    return [Step(s.op, s.in_shape, True, s.bounds) for s in reversed(forward)]


def transpose_steps(steps: list[Step]) -> list[Step]:
    """The steps of the adjoint of ``steps`` (applied in order): reversed, each one transposed."""
    return [s.transposed() for s in reversed(steps)]


def gram_steps(factors: list[LinearOperator], in_shape: Shape,
               bounds: FactorBounds | None = None) -> tuple[list[Step], Shape, int]:
    """The steps of the Gram operator of the chain's smaller side, that side's shape and dimension."""
    fwd = primitive_steps(factors, in_shape, bounds)
    in_shape = tuple(in_shape)
    out_shape = tuple(fwd[-1].op.out_shape(fwd[-1].in_shape))
    if numel(in_shape) <= numel(out_shape):
        return fwd + adjoint_steps(fwd), in_shape, numel(in_shape)
    return adjoint_steps(fwd) + fwd, out_shape, numel(out_shape)


def run_tracked(steps: list[Step], x: torch.Tensor, err: torch.Tensor, channels: torch.Tensor | None = None):
    """Apply ``steps`` to the batch ``x``; ``err`` (per vector) bounds ``||x - x_exact||`` before and after (the
    module docstring has the argument). ``channels``: sample ``i`` of ``x`` is non-zero in that channel only
    (:meth:`Step.one_channel` takes the first step)."""
    for i, st in enumerate(steps):
        if st.theta:
            norms = x.flatten(1).norm(dim=1) * (1 + 1e-10)
            err = st.nb * err + st.theta * st.a * norms
        else:
            err = st.nb * err
        x = st.one_channel(x, channels) if i == 0 and channels is not None else st(x)
    return x, err


def basis(start: int, stop: int, n: int, shape: Shape, device) -> torch.Tensor:
    """Identity vectors ``start .. stop - 1`` of an ``n``-dimensional space of ``shape``, float64."""
    e = torch.zeros(stop - start, n, dtype=torch.float64, device=device)
    e[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
    return e.reshape(stop - start, *shape)


def basis_channels(start: int, stop: int, n: int, shape: Shape) -> torch.Tensor | None:
    """The channel of each identity vector ``start..stop-1`` on a ``(C, H, W)`` side (``None`` on others)."""
    return torch.arange(start, stop) // (n // shape[0]) if len(shape) == 3 else None
