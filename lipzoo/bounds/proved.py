"""Guaranteed norms of all LipLT inner operators: cheap proved bounds, then certified refinement.

Eq. (16) needs ``||S_{t,j}||`` for every ``S_{t,j} = W_t Hhat_{t-1} ... Hhat_{j+1} G_j``. Every
number returned here is a mathematically guaranteed upper bound, floating-point rounding included:

1. **Cheap proved bounds.** Each chain is a product of factors; any split into consecutive
   segments gives ``||S|| <= prod ||segment||``. A segment is bounded by its certified norm when one is
   known, a factor by its own proved bound (FFT/polyphase bound of a convolution, with per-channel
   scalings merged into the kernel; dense factors by a Gram/Cholesky certificate, :func:`_dense_norm_bound`;
   diagonal maps exactly). A dynamic programme takes the best split per chain; factor bounds are
   memoized, so a factor shared by many chains is bounded once.
2. **Exact where a side is small**: every chain with a side of at most ``small`` dimensions is
   certified; chains sharing that side share one sweep of the identity basis (:func:`_group_gram`), and
   each chain's Gram matrix is formed at the level of that sweep where it is cheapest (GEMM of its own
   rows, back through the chain to the small side without GEMM, or in between), chosen from the cost
   measured on the first block of the sweep and the GEMM rate measured at that moment.
3. **Certified refinement where it pays.** Batched Lanczos (one forward and one adjoint sweep per step
   for all remaining chains, in float32: :data:`ESTIMATE_DTYPE`) gives estimates ``sigma_k <= ||S_k||``;
   with the sensitivity ``dF/db_k`` of the final bound, ``dF/db_k (b_k - sigma_k)`` bounds what an exact
   norm of ``S_k`` could gain (the recursion is a polynomial with non-negative coefficients, so these
   first-order gains over-state the true ones); a certified chain also tightens the longer chains that
   pass through it (:meth:`_Planner.record`), and that counts in its gain. Chains are certified exactly in
   order of gain per predicted second (:func:`_certificate_cost`: each step's measured seconds per vector,
   corrected by the certificates made so far), one at a time, each only if its measured cost (the first
   blocks are timed) fits in what is left of ``budget`` seconds; refinement stops when all possible direct
   gains together, or the distance from the bound to the objective at the estimates (which no certificate
   can go below), are below ``tol``.
   A chain certified alone whose factors are all local (convolutions, scalings, their sums and adjoints)
   goes through :mod:`lipzoo.bounds.banded`: sources whose Gram columns cannot meet share a probe vector,
   and the Gram matrix, block tridiagonal in row blocks, is factored block by block (6C2F's ``S_{2,0}``:
   3,136 probes instead of 16,384 sweeps and 6 factorizations of 3,072 instead of one of 16,384), with
   no cap on its side: blocks that do not fit in memory (:func:`memory_caps`) are factored in parts, one
   sweep of the probes each.
4. **Exact certificates**: the Gram matrix ``G`` of the smaller side is formed in float64, a Lanczos
   estimate ``lam`` of its top eigenvalue is computed, and ``tau I - G`` with ``tau = lam (1 + delta)`` is
   shown positive definite by a Cholesky factorization that runs to completion
   (:func:`_certify_by_shifts` has the rounding argument). The rounding of ``G`` itself is bounded a
   priori: every primitive has a rounding model (:func:`rounding_model`) and the error is propagated
   through the chain with the factors' proved norms (:func:`_run_tracked`); :func:`_group_gram` has the
   argument for each way of forming ``G``.

Assumption: float64 arithmetic in the standard model (each sum of ``K`` products within ``gamma_K``),
which holds for PyTorch's CPU kernels (im2col + GEMM, LAPACK Cholesky) and for CUDA with cuDNN
switched off (done here); fast (Strassen/Winograd/FFT) products would need other constants.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from lipzoo.bounds.structure import Structure, numel
from lipzoo.bounds.sweep import adjoint, adjoint_sweep, forward_sweep
from lipzoo.layers.operators import (AdjointOp, ComposeOp, Conv2dOp, DenseOp, DiagonalOp, FlattenOp,
                                     LinearOperator, ScaleOp, SumOp)

Shape = tuple[int, ...]

logger = logging.getLogger(__name__)

__all__ = ["FACTOR_MARGIN", "LOCAL_MAX_BYTES", "abs_norm_bound", "certified_lambda_max", "certified_chain_norm",
           "gram_steps", "memory_caps", "proved_inner_norms", "ProvedNorm"]

U = 2.0 ** -53  # unit roundoff of float64

LOCAL_MAX_BYTES = 4 * 2.0 ** 30
"""Memory for the blocks of a local chain's Gram matrix (:mod:`lipzoo.bounds.banded`) on the CPU: this, or
half the memory available when that is more (:func:`memory_caps`); and for a group's matrices."""

FACTOR_MARGIN = 1e-9
"""Relative margin on a factor's own ``norm_bound`` (FFT/polyphase bound of a convolution, dense norms).

The FFT of the kernel has absolute error ``<= log2(N^2) eta ||F||_F`` with ``eta ~ 5u`` (Higham, *Accuracy
and Stability*, Thm 24.2), ``||F||_F = N ||w||_F`` (Parseval), while the bound itself is at least
``||w||_F / sqrt(min(c_in, c_out))``; for grids up to ``N = 128`` and 512 channels that is a relative
``<= 14 * 5.6e-16 * 128 * 23 < 3e-11``; the small SVDs add ``O(k u)``. ``1e-9`` covers both 30x over."""


def _gamma(n: int) -> float:
    """``gamma_n = n u / (1 - n u)``: relative error bound of an ``n``-term float64 dot product."""
    return n * U / (1 - n * U)


# ----------------------------------------------------------------------------- rounding helpers

def _as_known(op: LinearOperator, in_shape: Shape) -> LinearOperator:
    """``op``, or the same map in known primitives when it says what it is: an operator with ``adjoint_of()``
    (a residual block's transposed convolution) is the :class:`AdjointOp` of that convolution."""
    conv = getattr(op, "adjoint_of", None)
    return AdjointOp(conv(), tuple(op.out_shape(in_shape))) if conv is not None else op


def abs_norm_bound(op: LinearOperator, in_shape: Shape) -> float:
    """A proved upper bound on ``|| |A| ||_2`` (entrywise absolute value of the matrix of ``op``).

    Used only to size rounding margins. Convolutions and dense maps: Schur test
    ``sqrt(max row sum * max column sum)`` of ``|A|`` (a given input pixel meets each output channel's
    tap ``(kh, kw)`` at most once, for any stride, padding or dilation). Operators of unknown type:
    ``|| |A| ||_2 <= ||A||_F <= sqrt(rank) ||A||_2``.
    """
    op = _as_known(op, in_shape)
    if isinstance(op, ComposeOp):
        out = 1.0
        for f, shape in op.factors(in_shape):
            out *= abs_norm_bound(f, shape)
        return out
    if isinstance(op, SumOp):
        return sum(abs_norm_bound(f, in_shape) for f in op.ops)
    if isinstance(op, AdjointOp):
        return abs_norm_bound(op.op, op.base_in_shape)
    if isinstance(op, (ScaleOp, DiagonalOp, FlattenOp)):
        return float(op.norm_bound(in_shape)) * (1 + FACTOR_MARGIN)
    if isinstance(op, (DenseOp, Conv2dOp)):
        a = op.weight.detach().abs().double()
        if isinstance(op, DenseOp):
            rows, cols = a.sum(1).max(), a.sum(0).max()
        else:  # (c_out, c_in/groups, kh, kw): rows sum over (c_in, taps), columns over (c_out of the group, taps)
            g = op.groups
            rows = a.sum((1, 2, 3)).max()
            cols = a.reshape(g, a.shape[0] // g, a.shape[1], -1).sum((1, 3)).max()
        # the float64 sums above round down by at most a relative (n + 1) u; 1e-9 covers it
        return float((rows * cols).sqrt()) * (1 + 1e-9)
    n = min(numel(in_shape), numel(op.out_shape(in_shape)))
    # the memoized bound: a step is built on such an operator for every chain through it (a residual block's
    # transposed convolution, before it named its convolution, cost lt-res-m 20 of its 125 s this way)
    return math.sqrt(n) * _norm_bound(op, in_shape)


def rounding_model(op: LinearOperator, in_shape: Shape) -> tuple[float, float]:
    """``(theta, A)`` with ``||fl(op x) - op x||_2 <= theta A ||x||_2`` for the forward and the adjoint.

    Standard model of float64 arithmetic (no fast/FFT products; true of PyTorch's CPU float64 conv,
    im2col + GEMM): an entry that sums ``K`` products is off by ``<= gamma_K`` times the sum of their
    absolute values, i.e. ``|e| <= theta |A| |x|`` entrywise with ``theta = gamma_{K+1}``; then
    ``||e||_2 <= theta || |A| ||_2 ||x||_2``. Compositions multiply ``(1 + theta)`` factors, sums add a
    ``gamma_m`` for the final additions. ``K`` is the longest such sum: ``c_in k_h k_w`` or
    ``c_out k_h k_w`` for a (grouped) convolution, the larger side for anything else.
    """
    op = _as_known(op, in_shape)
    if isinstance(op, ComposeOp):
        theta, a = 1.0, 1.0
        for f, shape in op.factors(in_shape):
            th, af = rounding_model(f, shape)
            theta *= 1 + th
            a *= af
        return theta - 1, a
    if isinstance(op, SumOp):
        parts = [rounding_model(f, in_shape) for f in op.ops]
        top = max(p[0] for p in parts)
        return top + _gamma(len(parts)) * (1 + top), sum(p[1] for p in parts)
    if isinstance(op, AdjointOp):
        return rounding_model(op.op, op.base_in_shape)
    if isinstance(op, FlattenOp):
        return 0.0, 1.0
    if isinstance(op, (ScaleOp, DiagonalOp)):
        return U, abs_norm_bound(op, in_shape)
    if isinstance(op, Conv2dOp):
        c_out, c_in_g, kh, kw = op.weight.shape
        k = max(c_in_g, c_out // op.groups) * kh * kw
    else:
        k = max(numel(in_shape), numel(op.out_shape(in_shape)))
    return _gamma(k + 1), abs_norm_bound(op, in_shape)


_NB_MEMO: dict = {}


def _memoized(memo: dict, op: LinearOperator, key: tuple, compute: Callable[[], float]) -> float:
    """``compute()``, kept in ``memo`` under ``(id(op), *key)`` while a computation runs (the memos are cleared
    by :func:`proved_inner_norms`); the operator is stored with it, so a recycled ``id`` never hits."""
    hit = memo.get((id(op), *key))
    if hit is None or hit[0] is not op:
        hit = (op, compute())
        memo[(id(op), *key)] = hit
    return hit[1]


def _norm_bound(op: LinearOperator, in_shape: Shape) -> float:
    """``op.norm_bound(in_shape) (1 + FACTOR_MARGIN)`` rounded up, memoized while a computation runs
    (FFT bounds of convolutions cost ~0.1-1 s each; the same factor appears in many chains)."""
    def compute() -> float:
        if type(op) is DenseOp and min(op.weight.shape) > 64 and max(op.weight.shape) >= 1024:
            return _dense_norm_bound(op.weight)
        return math.nextafter(float(op.norm_bound(in_shape)) * (1 + FACTOR_MARGIN), math.inf)

    return _memoized(_NB_MEMO, op, (tuple(in_shape),), compute)


def _dense_norm_bound(weight: torch.Tensor) -> float:
    """Proved ``||W||_2`` of a dense matrix from its smaller Gram matrix and a Cholesky certificate
    (:func:`certified_lambda_max`): ~20x faster than the SVD of ``DenseOp.norm_bound`` for a 512 x 3136 matrix
    (1.7 s on a loaded 2-core machine). ``|fl(W W^T) - W W^T| <= gamma_m |W| |W|^T`` entrywise (``m`` the longer
    side), at most ``gamma_m ||W||_F^2`` in Frobenius norm; the computed Gram matrix is symmetrized
    (:func:`_certify_gram` adds that rounding)."""
    w = weight.detach().to(torch.float64)
    if w.shape[0] > w.shape[1]:
        w = w.T
    fro = float(w.norm()) * (1 + 1e-6)
    return _certify_gram(w @ w.T, _gamma(w.shape[1] + 1) * fro * fro)


class _Step:
    """One primitive factor (or its adjoint) with its rounding model and proved norm bound."""

    def __init__(self, op: LinearOperator, in_shape: Shape, adjoint: bool):
        self.op, self.in_shape, self.adjoint = op, tuple(in_shape), adjoint
        self.theta, self.a = rounding_model(op, in_shape)
        self.nb = _norm_bound(op, in_shape)

    def __call__(self, x):
        return _apply(self.op, x, self.in_shape, self.adjoint)

    def one_channel(self, x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """``self(x)`` for a batch whose sample ``i`` is non-zero in channel ``channels[i]`` only (identity and
        probe vectors). A convolution without groups then needs only that channel's slice of its kernel:
        ``1/C`` of the work. Each output entry is the same sum with exact-zero products left out, i.e. one
        order of evaluating it, so :func:`rounding_model` covers it unchanged."""
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
            y[rows] = _apply(sub, x[rows][:, c:c + 1], shape, self.adjoint)
        return y


def _apply(op: LinearOperator, x: torch.Tensor, in_shape: Shape, transpose: bool) -> torch.Tensor:
    """``op`` (``transpose``: its adjoint) on the batch ``x``: on CUDA by :func:`apply_by_gemm`, on the CPU by
    the operators' own kernels (1.1-2.2x faster there)."""
    if x.is_cuda:
        return apply_by_gemm(op, x, in_shape, transpose)
    return adjoint(op, x, in_shape) if transpose else op.forward(x)


def apply_by_gemm(op: LinearOperator, x: torch.Tensor, in_shape: Shape, transpose: bool = False) -> torch.Tensor:
    """``op`` (``transpose``: its adjoint) on the batch ``x``, every convolution as one batched GEMM.

    With cuDNN off (:func:`proved_inner_norms`), a float64 CUDA convolution runs ``im2col`` and a GEMM *per
    sample*; on a batch of probes that is hundreds of small launches per convolution. Here the batch is
    unfolded at once (``F.unfold``; the padding's zeros contribute exact zero products), multiplied by the
    ``c_out x c_in k^2`` kernel matrix in one GEMM, and the adjoint folds ``W^T y`` back (``F.fold`` adds the
    overlapping windows). Every output entry is still a sum of at most ``max(c_in, c_out) k^2`` products in
    some order, the model :func:`rounding_model` bounds. Compositions, sums and adjoints recurse, and so does
    an operator that names the convolution it is the adjoint of (``adjoint_of``); any other operator uses its
    own methods. With groups, one GEMM per group (a batched product): cuDNN plays no
    part, also when this runs outside :func:`proved_inner_norms`' cuDNN-off context."""
    t = type(op)
    if t is Conv2dOp:
        c_out, _, kh, kw = op.weight.shape
        g, b = op.groups, x.shape[0]
        kernel = op.weight.reshape(g, c_out // g, -1)  # per group: c_out/g x (c_in/g) k^2
        if transpose:
            cols = kernel.transpose(1, 2) @ x.reshape(b, g, c_out // g, -1)  # (b, g, (c_in/g) k^2, L)
            return F.fold(cols.reshape(b, -1, cols.shape[-1]), tuple(in_shape[1:]), (kh, kw), dilation=op.dilation,
                          padding=op.padding, stride=op.stride)
        out = op.out_shape(in_shape)
        cols = F.unfold(x, (kh, kw), dilation=op.dilation, padding=op.padding, stride=op.stride)
        # unfold orders its rows (channel, kernel row, kernel column): a group's channels are contiguous
        return (kernel @ cols.reshape(b, g, -1, cols.shape[-1])).reshape(b, *out)
    if t is ComposeOp:
        order = op.factors(in_shape)
        for f, shape in (reversed(order) if transpose else order):
            x = apply_by_gemm(f, x, shape, transpose)
        return x
    if t is SumOp:
        return sum(apply_by_gemm(f, x, in_shape, transpose) for f in op.ops)
    if t is AdjointOp:
        return apply_by_gemm(op.op, x, op.base_in_shape, not transpose)
    if hasattr(op, "adjoint_of"):
        return apply_by_gemm(_as_known(op, in_shape), x, in_shape, transpose)
    if t is ScaleOp:
        return op.c * x
    return op.adjoint(x, in_shape) if transpose else op.forward(x)


def _primitive_steps(factors: list[LinearOperator], in_shape: Shape) -> list[_Step]:
    """Forward steps of ``factors[0] ... factors[-1]`` (rightmost first), compositions flattened."""
    flat = [f for op in factors for f in (op.ops if isinstance(op, ComposeOp) else [op])]
    steps, shape = [], tuple(in_shape)
    for f in reversed(flat):
        steps.append(_Step(f, shape, False))
        shape = f.out_shape(shape)
    return steps


def _adjoint_steps(forward: list[_Step]) -> list[_Step]:
    return [_Step(s.op, s.in_shape, True) for s in reversed(forward)]


def gram_steps(factors: list[LinearOperator], in_shape: Shape) -> tuple[list[_Step], Shape, int]:
    """The steps of the Gram operator of the chain's smaller side, that side's shape and dimension."""
    fwd = _primitive_steps(factors, in_shape)
    in_shape = tuple(in_shape)
    out_shape = tuple(fwd[-1].op.out_shape(fwd[-1].in_shape))
    if numel(in_shape) <= numel(out_shape):
        return fwd + _adjoint_steps(fwd), in_shape, numel(in_shape)
    return _adjoint_steps(fwd) + fwd, out_shape, numel(out_shape)


def _run_tracked(steps: list[_Step], x: torch.Tensor, err: torch.Tensor, channels: torch.Tensor | None = None):
    """Apply ``steps`` to the batch ``x``; ``err`` (per vector) bounds ``||x - x_exact||`` before and after.

    With ``x_hat' = fl(F x_hat) = F x_hat + e``, ``||e|| <= theta A ||x_hat||`` and ``||F|| <= nb``:
    ``||x_hat' - F x_exact|| <= nb err + theta A ||x_hat||``. The computed norms are inflated by
    ``1 + 1e-10`` for their own rounding. ``channels``: sample ``i`` of ``x`` is non-zero in that channel only
    (:meth:`_Step.one_channel` takes the first step)."""
    for i, st in enumerate(steps):
        if st.theta:
            norms = x.flatten(1).norm(dim=1) * (1 + 1e-10)
            err = st.nb * err + st.theta * st.a * norms
        else:
            err = st.nb * err
        x = st.one_channel(x, channels) if i == 0 and channels is not None else st(x)
    return x, err


# ----------------------------------------------------------------------------- certificates

def _lanczos_top(a: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                 with_progress: bool = False):
    """Largest Ritz value of symmetric ``a`` after ``steps`` Lanczos steps (full reorthogonalization).

    An estimate from below; the certificate does not rely on its accuracy, only its cost does."""
    n = a.shape[0]
    steps = min(steps, n)
    q = torch.randn(n, 1, dtype=a.dtype, generator=generator).to(a.device)
    Q = torch.empty(n, steps, dtype=a.dtype, device=a.device)
    alpha, beta = [], []
    q = q / q.norm()
    for i in range(steps):
        Q[:, i:i + 1] = q
        w = a @ q
        alpha.append(float(q.T @ w))
        w = w - Q[:, :i + 1] @ (Q[:, :i + 1].T @ w)
        w = w - Q[:, :i + 1] @ (Q[:, :i + 1].T @ w)
        b = float(w.norm())
        if b <= 1e-14 * max(abs(x) for x in alpha) or i == steps - 1:
            break
        beta.append(b)
        q = w / b
    k = len(alpha)
    T = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(beta[:k - 1], dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    top = float(torch.linalg.eigvalsh(T)[-1])
    if not with_progress:
        return top
    # relative progress of the top Ritz value over the last 8 steps (0 when the space was exhausted)
    j = k - 8
    if j < 1 or b <= 1e-14 * max(abs(x) for x in alpha):
        return top, 0.0
    Tj = torch.diag(torch.tensor(alpha[:j], dtype=torch.float64))
    if j > 1:
        off = torch.tensor(beta[:j - 1], dtype=torch.float64)
        Tj = Tj + torch.diag(off, 1) + torch.diag(off, -1)
    earlier = float(torch.linalg.eigvalsh(Tj)[-1])
    return top, max(top - earlier, 0.0) / max(abs(top), 1e-300)


def _certify_by_shifts(diagonal: torch.Tensor, lam: float, factors: Callable[[float], bool],
                       gershgorin: Callable[[], float], *, deltas, start_delta: float | None, what: str) -> float:
    """A proved upper bound on the largest eigenvalue of a symmetric float64 ``N x N`` matrix ``G`` with the
    given ``diagonal``, from a Cholesky factorization of ``fl(tau I - G)`` that runs to completion.

    ``tau = lam (1 + delta)`` for the ``deltas`` (those ``>= start_delta`` when given; ``lam`` an estimate,
    which only chooses the shifts tried) and ``factors(tau)`` says whether the factorization completed.
    Rounding: if Cholesky of a symmetric ``A`` completes, ``R^T R = A + dA`` with
    ``|dA| <= gamma_{N+1} |R^T||R|`` (Higham, Thm 10.5; any summation order, so blocked LAPACK/BLAS without
    fast matrix products qualify, and so does a block-tridiagonal factorization whose entries outside the
    band are exact zeros). By Cauchy-Schwarz ``||dA||_2 <= gamma_{N+1} tr(R^T R)`` and
    ``tr(R^T R) <= tr(A) / (1 - gamma_{N+1})``, so ``A >= -c I`` with ``c = gamma_{N+1} tr(A) / (1 - gamma_{N+1})``.
    ``A = tau I - G + D`` with ``D`` the diagonal rounding of the subtraction, ``|D_ii| <= u |tau - G_ii| <= 2 u tau``
    (``tau >= max |G_ii|`` is enforced), and ``tr(A) <= (N tau + sum max(-G_ii, 0)) (1 + u)``. Hence
    ``lam_max(G) <= tau + c + 2 u tau``. Underflow plays no part at the sizes used (entries are normal
    numbers well above 1e-290); ``tau`` itself is rounded up at the end. When no shift works, Gershgorin's
    ``gershgorin()`` (the largest absolute row sum) is returned, its summation rounding included.
    """
    n = diagonal.numel()
    gam = _gamma(n + 1)
    neg = float(diagonal.clamp_max(0).abs().sum())
    diag_abs = float(diagonal.abs().max())
    if start_delta is not None:  # skip the shifts below what the estimate's own progress suggests
        deltas = [d for d in deltas if d >= start_delta] or list(deltas)[-1:]
    for delta in deltas:
        tau = max(lam * (1 + delta), diag_abs, 1e-280)
        t0 = time.perf_counter()
        ok = factors(tau)
        logger.debug("    lambda_max (%s), shift %g over the Ritz value: %s in %.2fs", what, delta,
                     "certified" if ok else "not positive definite", time.perf_counter() - t0)
        if ok:
            c = gam * (n * tau + neg) * (1 + U) / (1 - gam)
            return math.nextafter((tau + c + 2 * U * tau) * (1 + 2 * U), math.inf)
    return math.nextafter(gershgorin() * (1 + gam), math.inf)


def _cholesky(a: torch.Tensor) -> torch.Tensor | None:
    """The float64 Cholesky factor of ``a``, or ``None`` when the factorization breaks down. A factor whose
    diagonal is not finite and positive counts as a breakdown: LAPACK flags a NaN pivot, other solvers
    (cuSOLVER, MAGMA) need not; with every pivot a positive finite number, every entry is finite too."""
    r, info = torch.linalg.cholesky_ex(a)
    d = r.diagonal(dim1=-2, dim2=-1)
    if int(info) != 0 or not bool((torch.isfinite(d) & (d > 0)).all()):
        return None
    return r


def certified_lambda_max(gram: torch.Tensor, *, deltas=(1e-7, 1e-5, 1e-3, 1e-2, 0.1, 1.0, 10.0),
                         generator: torch.Generator | None = None, info: dict | None = None) -> float:
    """A proved upper bound on the largest eigenvalue of the symmetric float64 matrix ``gram``.

    With ``lam`` a Lanczos estimate, ``tau = lam (1 + delta)`` for growing ``delta`` until the float64
    Cholesky factorization of ``fl(tau I - gram)`` runs to completion (:func:`_certify_by_shifts` has the
    rounding argument); Gershgorin if none does.
    """
    g = gram.to(torch.float64)
    n = g.shape[0]
    if not torch.isfinite(g).all():
        raise ValueError("certified_lambda_max: the Gram matrix has non-finite entries")
    # the estimate only chooses tau (the Cholesky certifies whatever tau it gets): for large n in float32,
    # which halves the memory traffic of its matrix-vector products
    lam, moved = _lanczos_top(g.float() if n > 1024 else g, 64, generator, with_progress=True)
    lam = max(lam, float(g.diagonal().max().clamp_min(0)))
    # A Ritz value that still moved by a relative `moved` over the last 8 steps is usually further than that
    # below lam_max: start where the first Cholesky is likely to succeed (each failure costs n^3/3 flops).
    start_delta = min(2 * moved, 1e-3) if n > 1024 else None
    if info is not None:
        info["ritz"] = lam * (1 - 1e-6 if n > 1024 else 1)  # an estimate from below (Lanczos), for reports
    eye = torch.eye(n, dtype=g.dtype, device=g.device)
    return _certify_by_shifts(g.diagonal(), lam, lambda tau: _cholesky(tau * eye - g) is not None,
                              lambda: float(g.abs().sum(1).max()), deltas=deltas, start_delta=start_delta,
                              what=f"n={n}")


def _now(device=None) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` has run. CUDA kernels run asynchronously:
    without the synchronization a clock times their launches, and the budget decisions built on the first
    block's time would accept certificates many times slower than predicted."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


_RATES: dict = {}  # (kind, device) -> seconds per float64 flop


def _device_key(device) -> str:
    d = torch.device(device if device is not None else "cpu")
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return str(d)


def _seconds_once(device: torch.device, fn) -> float:
    """Seconds of one call of ``fn`` on ``device``, after an untimed call (solver handles, kernels, the CPU's
    thread pool: a first Cholesky at n = 1024 ran at 15 GFLOP/s, the next at 22)."""
    fn()
    t0 = _now(device)
    fn()
    return max(_now(device) - t0, 1e-6)


def _gram_cost_unit(device=None, n: int = 1024) -> float:
    """Seconds per float64 Cholesky flop on ``device`` for an ``n x n`` factorization (measured once per device
    and size class: on the CPU at 1024, 2048 or 4096, the nearest to ``n``; on a GPU at 4096). The rate grows
    with the size: on 2 CPU cores 22 GFLOP/s at 1024, 66 at 3840, so a rate from 1024 predicted 8C2F's block
    factorization of ``S_{2,0}`` (15 blocks of 3,840) at 4x the 20 s it took, and the refinement refused
    it. At 384 the rate had been 2.5x below that of the 3000-4000-dimensional factorizations."""
    dev = torch.device(_device_key(device))
    size = 4096 if dev.type == "cuda" else min((1024, 2048, 4096), key=lambda m: abs(math.log2(max(n, 1) / m)))
    key = ("cholesky", str(dev), size)
    if key not in _RATES:
        a = torch.randn(size, size, dtype=torch.float64, device=dev)
        a = a @ a.T + size * torch.eye(size, dtype=torch.float64, device=dev)
        _RATES[key] = _seconds_once(dev, lambda: torch.linalg.cholesky_ex(a)) / (size ** 3 / 3)
    return _RATES[key]


def _gemm_cost_unit(fresh: bool = False, device=None) -> float:
    """Seconds per float64 matrix-product flop on ``device`` (measured once, or again with ``fresh``: a shared
    machine's load changes, and the other costs it is compared with are measured live)."""
    key = ("gemm", _device_key(device))
    if key not in _RATES or fresh:
        dev = torch.device(key[1])
        m = 2048 if dev.type == "cuda" else 384
        a = torch.randn(m, 2048, dtype=torch.float64, device=dev)
        _RATES[key] = _seconds_once(dev, lambda: a @ a.T) / (2 * m * m * 2048)
    return _RATES[key]


def _fold_into_convs(parts: list[LinearOperator], in_shape: Shape) -> list[LinearOperator]:
    """The same operator with scalars moved to the front and per-input-channel scalings merged into the
    convolution they feed (one factor instead of two).

    Scalars commute with every linear map, and ``||c X|| = |c| ||X||``: moved out, they leave the convolution
    itself in place, so its memoized FFT bound serves ``Hhat_k = c W_k`` as well as ``W_k`` (merging ``c`` into
    the kernel made a new one, whose FFT bound was computed again: half of 8C2F's factor-bound time).
    ``conv_w(diag(s) x) = conv_{w s}(x)`` for a per-channel ``s``, so the FFT bound of the merged kernel bounds
    the product without the looseness of ``||conv|| ||diag||``. The merged kernel is rounded (relative ``u``
    per entry): the two operators differ by at most ``u || |M| ||_2 <= u ||M||_F <= u sqrt(min(m, n)) ||M||_2``
    for the merged matrix ``M``, i.e. a relative ``< 1.2e-10`` for any size below 1e12, inside
    :data:`FACTOR_MARGIN`."""
    scalars = [p for p in parts if isinstance(p, ScaleOp)]
    out = [p for p in parts if not isinstance(p, ScaleOp)]
    changed = True
    while changed:
        changed = False
        for i in range(len(out) - 1):
            a, b = out[i], out[i + 1]  # a acts after b
            if isinstance(a, Conv2dOp) and a.groups == 1 and isinstance(b, DiagonalOp) and b.scale.dim() == 1 \
                    and b.scale.numel() == a.weight.shape[1]:
                w = a.weight * b.scale.to(a.weight)[None, :, None, None]
                out[i:i + 2] = [Conv2dOp(w, a.stride, a.padding, a.dilation, a.groups)]
                changed = True
                break
    return scalars + out


def _upper_product(x: torch.Tensor, z: torch.Tensor, blocks: int = 8) -> torch.Tensor:
    """``fl(x z^T)`` for a product known to be symmetric in exact arithmetic: only the blocks on and above the
    diagonal are computed (GEMM), the others mirrored, which saves ~45% of the flops. Every computed entry
    is an ordinary ``fl(<x_i, z_j>)`` (same rounding bound as the full product); the mirrored entry ``(j, i)``
    approximates ``G_ji = G_ij`` with that same bound, so the Frobenius norm of the error matrix is at most
    ``sqrt(2)`` times the bound for the full product."""
    n = x.shape[0]
    if n < 2 * blocks:
        g = x @ z.T
        return torch.triu(g) + torch.triu(g, 1).T
    edges = [round(i * n / blocks) for i in range(blocks + 1)]
    g = torch.empty(n, n, dtype=x.dtype, device=x.device)
    for a in range(blocks):
        r0, r1 = edges[a], edges[a + 1]
        g[r0:r1, r0:] = x[r0:r1] @ z[r0:].T
        g[r1:, r0:r1] = g[r0:r1, r1:].T
    # the diagonal blocks were computed whole: mirror their upper halves as well
    for a in range(blocks):
        r0, r1 = edges[a], edges[a + 1]
        d = g[r0:r1, r0:r1]
        g[r0:r1, r0:r1] = torch.triu(d) + torch.triu(d, 1).T
    return g


def _certify_gram(gram: torch.Tensor, col_err, generator=None, symmetric: bool = False,
                  info: dict | None = None) -> float:
    """Proved ``sqrt(lam_max(G))`` from a computed ``gram`` with ``||gram - G||_F <= `` the given bound.

    ``col_err``: either a proved Frobenius-norm bound (a float) or a tensor of per-column bounds
    (``||gram - G||_F <= ||col_err||_2``). ``||G_hat - G||_2 <= ||G_hat - G||_F``; symmetrizing
    ``(G_hat + G_hat^T) / 2`` moves entries by a relative ``u`` at most (``<= u ||G_hat||_F`` in norm) and can
    only reduce the distance to the symmetric ``G`` otherwise. Weyl's inequality then gives
    ``lam_max(G) <= lam_max(G_sym) + both``. ``symmetric=True``: ``gram`` is exactly symmetric already.
    """
    if torch.is_tensor(col_err):
        col_err = float(col_err.double().square().sum().sqrt()) * (1 + 1e-10)
    if symmetric:  # symmetric by construction (:func:`_upper_product`): nothing to add
        sym, err = gram, col_err
    else:
        sym = (gram + gram.T) / 2
        err = col_err + 2 * U * float(gram.norm()) * (1 + 1e-6)
    lam = certified_lambda_max(sym, generator=generator, info=info) + err
    return math.nextafter(math.sqrt(lam) * (1 + 2 * U), math.inf)


def _basis(start: int, stop: int, n: int, shape: Shape, device) -> torch.Tensor:
    e = torch.zeros(stop - start, n, dtype=torch.float64, device=device)
    e[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
    return e.reshape(stop - start, *shape)


def _basis_channels(start: int, stop: int, n: int, shape: Shape) -> torch.Tensor | None:
    """The channel of each identity vector ``start..stop-1`` on a ``(C, H, W)`` side (``None`` on others)."""
    return torch.arange(start, stop) // (n // shape[0]) if len(shape) == 3 else None


class _Deadline:
    """Whether a computation in ``blocks`` equal blocks plus ``fixed`` seconds fits ``time_limit``, judged on
    its first block or, when that one predicts too much, on its second: the first pays one-time costs
    (allocations, kernel selection). Judged on its first block, 8C2F's ``S_{2,0}`` was refused with 177 s left
    (127 s predicted); it took 88 s in another run."""

    def __init__(self, blocks: int, fixed: float, time_limit: float, device=None):
        self.blocks, self.fixed, self.time_limit, self.device = blocks, fixed, time_limit, device
        self.seen, self.t = 0, _now(device)

    def after_block(self) -> str:
        """``"go"`` (decided: fits, or nothing left to save), ``"wait"`` (judge again after the next block),
        or ``"stop"``."""
        now = _now(self.device)
        per_block, self.t = now - self.t, now
        self.seen += 1
        if self.seen >= self.blocks or per_block * self.blocks + self.fixed <= self.time_limit:
            return "go"
        return "wait" if self.seen == 1 and self.blocks > 2 else "stop"

    def sweep(self, total: int, chunk: int, run: Callable, allocate: Callable, store: Callable) -> bool:
        """``store(start, stop, *run(start, stop))`` for the consecutive blocks of ``chunk`` of ``range(total)``,
        after one ``allocate()`` once :meth:`after_block` says ``"go"`` (the blocks run while it waits are
        kept). ``False``, with nothing allocated, when it says ``"stop"``."""
        pending: list = []
        decided = False
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            pending.append((start, stop, run(start, stop)))
            if not decided:
                verdict = self.after_block()
                if verdict == "stop":
                    return False
                if verdict == "wait":
                    continue
                decided = True
                allocate()
            for a, b, out in pending:
                store(a, b, *out)
            pending.clear()
        return True


def certified_chain_norm(factors: list[LinearOperator], in_shape: Shape, *, chunk: int = 256,
                         time_limit: float = math.inf, generator: torch.Generator | None = None,
                         device=None, max_side: int | None = None, local: bool = True,
                         local_max_bytes: float = LOCAL_MAX_BYTES) -> float | None:
    """A proved upper bound on ``||factors[0] ... factors[-1]||`` that is exact up to ~1e-7 relative.

    A *local* chain (convolutions, scalings, their sums and adjoints: :mod:`lipzoo.bounds.banded`) is
    certified through probed, block-tridiagonal Gram matrices when that needs fewer sweeps or smaller
    factorizations (``local=False``: never), within ``local_max_bytes`` of blocks whatever its side. Otherwise
    the Gram matrix of the smaller side is formed block by block as ``S^T S E`` (or ``S S^T E``) for
    identity blocks ``E`` in float64 (memory ``n^2`` for the smaller side ``n``), with a proved bound on
    each column's rounding error (:func:`_run_tracked`), then certified by :func:`certified_lambda_max`.
    Returns ``None`` without finishing when the smaller side is above ``max_side`` (the matrix would
    not fit: one of 8C2F's operators has ``n = 57,600``, 26.5 GB) or when the cost measured on the first
    blocks predicts more than ``time_limit`` seconds (:class:`_Deadline`); nothing of size ``n^2`` is
    allocated before both checks pass.
    """
    from lipzoo.bounds.banded import certified_local_norm  # banded builds on this module

    steps, shape, n = gram_steps(factors, in_shape)
    plan = _useful_local_plan(steps, shape, n) if local else None
    if plan is not None:
        return certified_local_norm(steps, plan, chunk=chunk, time_limit=time_limit, generator=generator,
                                    device=device, max_bytes=local_max_bytes)
    if max_side is not None and n > max_side:
        return None
    gram, col_err = [], torch.empty(n, dtype=torch.float64, device=device)

    def store(a, b, y, err):
        gram[0][a:b] = y.reshape(b - a, n)
        col_err[a:b] = err

    deadline = _Deadline(math.ceil(n / chunk), 1.5 * n ** 3 / 3 * _gram_cost_unit(device, n), time_limit, device)
    if not deadline.sweep(n, chunk, lambda a, b: _run_tracked(
            steps, _basis(a, b, n, shape, device), torch.zeros(b - a, dtype=torch.float64, device=device),
            _basis_channels(a, b, n, shape)),
            lambda: gram.append(torch.empty(n, n, dtype=torch.float64, device=device)), store):
        return None
    return _certify_gram(gram[0], col_err, generator)


def _transpose_steps(steps: list[_Step]) -> list[_Step]:
    """The steps of the adjoint of ``steps`` (applied in order): reversed, each one transposed."""
    return [_Step(s.op, s.in_shape, not s.adjoint) for s in reversed(steps)]


def _sweep_block(steps, stops, x, err, keep=None, timing: bool = False, channels=None):
    """One block of a group sweep (see :func:`_group_gram`); ``channels`` as in :func:`_run_tracked`, for ``x``.

    Returns ``levels`` (``{index: (x, err)}``: the state after ``index`` steps, for the indices in ``keep``, all
    visited ones when ``keep`` is None), ``rows`` (``{key: (y, err)}``: the key's rows and their proved error
    bounds), ``where`` (``{key: index of its stop}``) and, with ``timing``, ``cum`` (``{index: seconds to reach
    it}``) and ``t_extra`` (``{key: seconds of its extra steps}``)."""
    levels, rows, where, cum, t_extra = {}, {}, {}, {}, {}
    clock = (lambda: _now(x.device)) if timing else time.perf_counter
    t0 = clock()
    i = 0
    while i <= len(steps):
        if timing:
            cum[i] = clock() - t0
        if keep is None or i in keep:
            levels[i] = (x, err)
        skip = None
        for key, extra in stops.get(i, []):
            ts = clock()
            y, e2 = _run_tracked(extra, x, err, channels if i == 0 else None)
            t_extra[key] = clock() - ts
            rows[key], where[key] = (y, e2), i
            # Hhat_t = c W_t (no skip branch): continue from W_t's output instead of applying W_t again
            if extra and len(steps) - i >= len(extra) and all(
                    a.op is b.op and a.adjoint == b.adjoint for a, b in zip(extra, steps[i:])):
                skip = (len(extra), y, e2)
        if skip is not None:
            i, x, err = i + skip[0], skip[1], skip[2]
            continue
        if i < len(steps):
            x, err = _run_tracked([steps[i]], x, err, channels if i == 0 else None)
        i += 1
    return levels, rows, where, cum, t_extra


def _group_gram(steps_to_keys, n: int, shape: Shape, *, chunk: int, device, generator,
                max_bytes: float = math.inf, gemm_only: bool = False,
                force_level=None, estimates: dict | None = None, report=None) -> dict:
    """Exact certified norms of several chains that share their small side (one sweep for all).

    ``steps_to_keys``: ``(steps, stops)`` with ``steps`` a list of :class:`_Step` applied in order
    starting from the shared small space, and ``stops`` mapping an index ``i`` (after ``i`` steps) to
    a list of ``(key, extra_steps)``: the chain of ``key`` is ``extra_steps`` after the first ``i``
    steps. The sweep pushes the ``n`` identity vectors ``E`` of the small side through, block by block,
    and gives per chain ``A`` its rows ``M = A E``. The ``n x n`` Gram matrix ``M M^T`` is formed at a
    *level* ``s`` of the sweep chosen per chain: with ``X_s`` the sweep's state after ``s`` steps and ``P``
    the part of the chain after it (``M = P X_s``), ``M M^T = X_s Z^T`` with ``Z = P^T P X_s``, i.e. the rows
    go back through ``P^T`` to level ``s`` (``n`` passes of ``P^T``) and meet ``X_s`` in a GEMM of
    ``2 n^2 m_s`` flops (``m_s`` the dimension there). ``s = 0`` (``X_0 = E``) needs no GEMM at all (the
    returned rows are the Gram matrix), the chain's own ``M`` (``P = I``) no return pass; in between, e.g.
    going back through one convolution to a space 4x smaller than the source, is often cheapest. The
    choice minimizes the cost predicted from the first block (each step of the sweep is timed there; a
    return pass costs about what the same steps cost forward) and the GEMM rate, with the stored ``X_s``
    (shared by the chains using the same level) within ``max_bytes``.

    Rounding: every primitive's rounding is propagated by :func:`_run_tracked`, so each computed row has a
    proved error bound against the exact one: ``||x_b - X_s e_b|| <= d_b`` and ``||z_b - Z e_b|| <= z_b``.
    With ``dX = X_hat - X`` and ``dZ = Z_hat - Z``:
    ``X_hat Z_hat^T - X Z^T = dX Z_hat^T + X dZ^T``, so ``||.||_F <= ||dX||_F ||Z_hat||_F +
    (||X_hat||_F + ||dX||_F) ||dZ||_F`` with ``||dX||_F <= sqrt(sum d_b^2)``; the GEMM adds
    ``|fl(X_hat Z_hat^T) - X_hat Z_hat^T| <= gamma_{m_s} |X_hat| |Z_hat|^T``, at most
    ``gamma_{m_s} ||X_hat||_F ||Z_hat||_F`` in Frobenius norm. At ``s = 0`` (``X_hat = E`` exact, no GEMM) this
    is ``||dZ||_F``; for the chain's own rows (``Z_hat = X_hat = M_hat``) it is
    ``||dM||_F (2 ||M_hat||_F + ||dM||_F) + gamma_m ||M_hat||_F^2``. :func:`_certify_gram` then adds the
    symmetrization. Computed Frobenius norms are inflated by ``1 + 1e-6`` (their own relative rounding is
    below ``gamma`` of the number of entries, < 1e-7 for the sizes used).

    ``gemm_only``: every chain from its own rows (the earlier behaviour). ``force_level`` (tests): ``"own"``
    or an index ``s``, the deepest visited level ``<= s`` for every chain. ``estimates``: filled with the
    square roots of the Lanczos Ritz values (estimates from below, for reports). ``report(done, total)`` is
    called after each block (progress bars). Logs (DEBUG) the level chosen per chain and the seconds of
    each phase.
    """
    steps, stops = steps_to_keys
    nb = math.ceil(n / chunk)
    t0 = _now(device)
    stop0 = min(chunk, n)
    levels0, rows0, where, cum, t_extra = _sweep_block(
        steps, stops, _basis(0, stop0, n, shape, device), torch.zeros(stop0, dtype=torch.float64, device=device),
        timing=True, channels=_basis_channels(0, stop0, n, shape))
    unit = _gemm_cost_unit(fresh=True, device=device)  # the machine's load changes: measure the rate now
    # candidate levels per chain: (predicted seconds, level, width there); "own": its rows, GEMM
    cands: dict = {}
    for key in rows0:
        i = where[key]
        m_own = rows0[key][0][0].numel()
        cands[key] = [(2.0 * n * n * m_own * unit, "own", m_own)]
        if gemm_only:
            continue
        for s in levels0:
            if s <= i:
                m_s = levels0[s][0][0].numel()
                back = (cum[i] - cum[s] + t_extra[key]) * nb
                cands[key].append((back + (0.0 if s == 0 else 2.0 * n * n * m_s * unit), s, m_s))
        if force_level is not None:
            cands[key] = [c for c in cands[key] if c[1] == "own"] if force_level == "own" else \
                [max((c for c in cands[key] if c[1] != "own" and c[1] <= force_level), key=lambda c: c[1])]

    def memory(assign) -> float:
        """Bytes held: per chain its returned rows (n x width), once per shared level its stored X_s."""
        shared = {c[1]: c[2] for c in assign.values() if c[1] != "own" and c[1] != 0}
        return 8.0 * n * (sum(c[2] for c in assign.values()) + sum(shared.values()))

    # start from the cheapest-memory choice of each chain, then take the move that saves most while it fits
    assign = {k: min(c, key=lambda c: (c[2] if c[1] in ("own", 0) else 2 * c[2], c[0])) for k, c in cands.items()}
    while True:
        best = None
        for k, cs in cands.items():
            for c in cs:
                if c[0] < assign[k][0] and (best is None or assign[k][0] - c[0] > best[0]) and \
                        memory({**assign, k: c}) <= max(max_bytes, memory(assign)):
                    best = (assign[k][0] - c[0], k, c)
        if best is None:
            break
        assign[best[1]] = best[2]
    choice = {k: c[1] for k, c in assign.items()}
    stored_levels = {c[1] for c in assign.values() if c[1] != "own" and c[1] != 0}
    for k, c in assign.items():
        logger.debug("  %s: own rows %d wide, GEMM %.2fs; level %s (%d wide, %.2fs predicted)", k,
                     cands[k][0][2], cands[k][0][0], c[1], c[2], c[0])
    back_steps = {}
    for key, level in choice.items():
        if level != "own":
            i = where[key]
            extra = next(e for k, e in stops[i] if k == key)
            back_steps[key] = _transpose_steps(steps[level:i] + extra)
    xs: dict = {s: [] for s in stored_levels}  # stored states X_s (rows) and their error bounds
    zs: dict = {k: [] for k in rows0}  # per chain: rows Z (or its own M) and their error bounds
    t_back = 0.0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        if start == 0:
            levels, rows = levels0, rows0
        else:
            levels, rows, _, _, _ = _sweep_block(
                steps, stops, _basis(start, stop, n, shape, device),
                torch.zeros(stop - start, dtype=torch.float64, device=device), keep=stored_levels,
                channels=_basis_channels(start, stop, n, shape))
        for s in stored_levels:
            x, e = levels[s]
            xs[s].append((x.reshape(stop - start, -1), e))
        for key, (y, e2) in rows.items():
            if choice[key] == "own":
                zs[key].append((y.reshape(stop - start, -1), e2))
            else:
                tb = time.perf_counter()
                z, ez = _run_tracked(back_steps[key], y, e2)
                zs[key].append((z.reshape(stop - start, -1), ez))
                t_back += time.perf_counter() - tb
        del levels, rows
        levels0 = rows0 = None
        if report is not None:
            report(start // chunk + 1, nb)
    t1 = time.perf_counter()
    X = {s: (torch.cat([a for a, _ in v], 0), torch.cat([b for _, b in v])) for s, v in xs.items()}
    del xs
    out = {}
    for key in list(zs):
        z = torch.cat([a for a, _ in zs[key]], 0)
        dz = float(torch.cat([b for _, b in zs.pop(key)]).square().sum().sqrt()) * (1 + 1e-6)
        level = choice[key]
        if level == 0:
            gram, err = z, dz
        else:
            x, dx = (z, dz) if level == "own" else (X[level][0], float(X[level][1].square().sum().sqrt()) * (1 + 1e-6))
            fx, fz = float(x.norm()) * (1 + 1e-6), float(z.norm()) * (1 + 1e-6)
            gram = _upper_product(x, z)
            # mirrored entries: the error matrix has each upper entry twice, so its norm grows by <= sqrt(2)
            err = math.sqrt(2) * (dx * fz + (fx + dx) * dz + _gamma(x.shape[1] + 1) * fx * fz) * (1 + 1e-15)
        del z
        info: dict = {}
        out[key] = _certify_gram(gram, err, generator, symmetric=level != 0, info=info)
        if estimates is not None:
            estimates[key] = math.sqrt(max(info.get("ritz", 0.0), 0.0))
    logger.debug("  sweep %.2fs (return passes %.2fs), Gram products and certificates %.2fs",
                 t1 - t0 - t_back, t_back, time.perf_counter() - t1)
    return out


# ----------------------------------------------------------------------------- the planner

@dataclass
class ProvedNorm:
    """A guaranteed bound of one inner operator, with how it was obtained."""

    value: float
    guarantee: str  # "exact" (certified Gram eigenvalue) or "proved" (product of proved segment bounds)
    how: str
    estimate: float = 0.0


class _Planner:
    def __init__(self, structure: Structure, chunk: int, generator, device):
        self.s, self.chunk, self.gen, self.device = structure, chunk, generator, device
        self.hhat: dict[int, LinearOperator] = {}
        self.exact: dict[tuple, float] = {}  # (labels, in_shape) -> certified norm of that segment
        self.own: dict[tuple, tuple[float, str]] = {}

    def H(self, k: int) -> LinearOperator:
        if k not in self.hhat:
            self.hhat[k] = self.s.blocks[k].H_hat()
        return self.hhat[k]

    def chain(self, t: int, j: int):
        """Labels, operators (leftmost first), the input shape of each, and the output shape of ``S_{t,j}``."""
        s = self.s
        labels, ops = [("W", t)], [s.output if t == s.depth else s.blocks[t].W]
        for k in range(t - 1, j, -1):
            labels.append(("H", k))
            ops.append(self.H(k))
        if j >= 0 and s.blocks[j].G is not None:
            labels.append(("G", j))
            ops.append(s.blocks[j].G)
        ins = [tuple(s.space_shape(t, j)[0])]
        for op in reversed(ops[1:]):
            ins.append(op.out_shape(ins[-1]))
        ins = ins[::-1]  # ins[i]: input shape of ops[i]
        return labels, ops, ins, ops[0].out_shape(ins[0])

    def record(self, key, value: float) -> None:
        """Store the certified norm of ``S_key`` for every split that contains it as a segment.

        Besides the chain's own factors ``[W_t, Hhat_{t-1}, ..., G_j]``, a block without ``H`` and ``G`` has
        ``Hhat_t = c W_t`` exactly (``c = (alpha+beta)/2``, the stored number), so the segment
        ``[Hhat_t, Hhat_{t-1}, ..., G_j]`` of every longer chain ``S_{t',j}`` (``t' > t``) has norm
        ``|c| ||S_{t,j}||``: one certificate tightens every chain that passes through it."""
        labels, _, ins, _ = self.chain(*key)
        self.exact[(tuple(labels), ins[-1])] = value
        t = key[0]
        if t < self.s.depth:
            blk = self.s.blocks[t]
            if blk.H is None and blk.G is None:
                alias = (("H", t),) + tuple(labels[1:])
                self.exact[(alias, ins[-1])] = math.nextafter(abs(float(blk.c)) * value, math.inf)

    def return_steps(self, key, kind: str) -> list:
        """The steps that take a group's rows of ``key`` back to the small side: ``S`` after ``S^T E`` (a
        target's side, ``kind="dst"``), ``S^T`` after ``S E`` (a source's side, ``kind="src"``)."""
        _, ops, ins, _ = self.chain(*key)
        fwd = _primitive_steps(ops, ins[-1])
        return fwd if kind == "dst" else _adjoint_steps(fwd)

    def _own(self, label, op, in_shape) -> tuple[float, str]:
        """A single factor's own proved bound; a composite factor is split into its parts."""
        key = (label, tuple(in_shape))
        if key not in self.own:
            if isinstance(op, ComposeOp):
                parts = _fold_into_convs(list(op.ops), in_shape)
                ins = [tuple(in_shape)]
                for f in reversed(parts[1:]):
                    ins.append(f.out_shape(ins[-1]))
                v, how = self.best_split([(label, i) for i in range(len(parts))], parts, ins[::-1], None)
            else:
                v = _norm_bound(op, in_shape)
                how = f"{type(op).__name__}.norm_bound"
            self.own[key] = (v, how)
        return self.own[key]

    def best_split(self, labels, ops, ins, out_shape=None) -> tuple[float, str]:
        """Smallest product of segment bounds over all splits into consecutive segments (dynamic programme).

        A segment is bounded by its certified norm when one is known, a single factor by its own bound."""
        r = len(ops)
        best: dict[tuple[int, int], tuple[float, str]] = {}
        for length in range(1, r + 1):
            for a in range(0, r - length + 1):
                b = a + length
                cands = []
                exact = self.exact.get((tuple(labels[a:b]), ins[b - 1]))
                if exact is not None:
                    cands.append((exact, "certified"))
                if length == 1:
                    cands.append(self._own(labels[a], ops[a], ins[a]))
                for m in range(a + 1, b):
                    (lv, lh), (rv, rh) = best[(a, m)], best[(m, b)]
                    cands.append((math.nextafter(lv * rv, math.inf), f"{lh} * {rh}"))
                best[(a, b)] = min(cands, key=lambda c: c[0])
        return best[(0, r)]

    def groups(self, keys, small: int, small_input: int | None = None) -> list:
        """Sweeps that certify every key with a side of at most ``small`` dimensions (``small_input`` for
        chains from the network's input), grouped by that side."""
        s = self.s
        by_side: dict = {}
        for (t, j) in keys:
            n_src, n_dst = (numel(x) for x in s.space_shape(t, j))
            if j < 0 and small_input is not None and n_src <= small_input:
                side = ("src", j)
            elif min(n_src, n_dst) > small:
                continue
            else:
                side = ("src", j) if n_src <= n_dst else ("dst", t)
            by_side.setdefault(side, []).append((t, j))
        out = []
        for (kind, idx), ks in sorted(by_side.items()):
            steps: list[_Step] = []
            stops: dict = {}
            if kind == "src":
                j, targets = idx, {t for t, _ in ks}
                shape = tuple(s.space_shape(max(targets), j)[0])
                if j >= 0 and s.blocks[j].G is not None:
                    steps += _primitive_steps([s.blocks[j].G], shape)
                    shape = s.blocks[j].G.out_shape(shape)
                for t in range(j + 1, max(targets) + 1):
                    if t in targets:
                        stops.setdefault(len(steps), []).append(((t, j), _primitive_steps([s.blocks[t].W], shape)))
                    if t < max(targets):
                        steps += _primitive_steps([self.H(t)], shape)
                        shape = self.H(t).out_shape(shape)
                n, start_shape = numel(s.space_shape(max(targets), j)[0]), tuple(s.space_shape(max(targets), j)[0])
            else:
                t, sources = idx, {j for _, j in ks}
                start_shape = tuple(s.blocks[t].y_shape)
                x_shape = tuple(s.blocks[t].x_shape)
                steps += _adjoint_steps(_primitive_steps([s.blocks[t].W], x_shape))
                for k in range(t - 1, max(min(sources), 0) - 1, -1):  # now in x_{k+1}
                    if k in sources:
                        blk = s.blocks[k]
                        extra = _adjoint_steps(_primitive_steps([blk.G], blk.y_shape)) if blk.G is not None else []
                        stops.setdefault(len(steps), []).append(((t, k), extra))
                    if k > min(sources):
                        steps += _adjoint_steps(_primitive_steps([self.H(k)], s.blocks[k].x_shape))
                if -1 in sources:
                    stops.setdefault(len(steps), []).append(((t, -1), []))
                n = numel(start_shape)
            out.append((f"{kind} {idx}", ks, (steps, stops), n, start_shape))
        return out


_STEP_MEMO: dict = {}


def _step_seconds(step: _Step, device=None, batch: int = 8) -> float:
    """Seconds per vector of one sweep step on ``device``, timed on ``batch`` random vectors (after an untimed
    call: :func:`_seconds_once`), memoized while a computation runs (like the factor bounds). A flop count
    misses how unequal the rates are: on 2 CPU cores 8C2F's ``S_{1,-1}`` (a convolution from 3 channels on
    64 x 64 pixels) swept at ~20 GFLOP/s, its ``S_{7,5}`` (256 channels) at ~75. Flop-based predictions of
    8C2F's certificates ran 0.52-2.3x the seconds taken; these ran 0.65-1.5x after the first certificate's
    correction, and 0.87-1.2x once factorizations were costed at their own size (:func:`_gram_cost_unit`)."""
    def compute() -> float:
        shape = step.op.out_shape(step.in_shape) if step.adjoint else step.in_shape
        x = torch.randn(batch, *shape, dtype=torch.float64, device=device)
        return _seconds_once(torch.device(_device_key(device)), lambda: step(x)) / batch

    return _memoized(_STEP_MEMO, step.op, (step.in_shape, step.adjoint, _device_key(device)), compute)


def _useful_local_plan(steps: list[_Step], shape: Shape, n: int):
    """The local plan (:mod:`lipzoo.bounds.banded`) of the Gram operator ``steps`` when it saves sweeps (fewer
    probes than ``n``) or factorization (several blocks), else ``None``: when :func:`certified_chain_norm`
    takes the local path."""
    from lipzoo.bounds.banded import local_plan  # banded builds on this module

    plan = local_plan(steps, shape)
    return plan if plan is not None and (plan.probes < n or plan.blocks > 1) else None


def _certificate_cost(factors: list[LinearOperator], in_shape: Shape, device=None,
                      local_max_bytes: float = LOCAL_MAX_BYTES) -> tuple[float, float]:
    """``(sweep seconds, factorization seconds)`` of :func:`certified_chain_norm` on this chain: the probes
    (local path; once per part when its blocks are factored in parts within ``local_max_bytes``, infinite when
    not even one part fits) or the identity vectors of the smaller side (dense path) through the Gram
    operator, at the seconds per vector of each step (:func:`_step_seconds`), and the block or dense Cholesky
    factorization at the rate of its (block) size."""
    steps, shape, n = gram_steps(factors, in_shape)
    plan = _useful_local_plan(steps, shape, n)
    passes = plan.passes(local_max_bytes) if plan is not None else 1
    if passes == 0:
        return math.inf, 0.0
    per_vector = sum(_step_seconds(st, device) for st in steps)
    if plan is not None:
        return passes * plan.probes * per_vector, plan.factor_flops() * _gram_cost_unit(device, plan.block_size)
    return n * per_vector, n ** 3 / 3 * _gram_cost_unit(device, n)


def memory_caps(device=None) -> tuple[int, float, float]:
    """``(max_side, max_bytes, local_max_bytes)`` of :func:`proved_inner_norms` on ``device``.

    On the CPU fixed sizes for the dense path and groups (a 16,384-dimensional Gram matrix is 2 GiB, and its
    factorization makes a copy; :data:`LOCAL_MAX_BYTES` of group matrices), sized for a machine of 16-32 GB,
    and half the memory available now for a local chain's blocks (at least :data:`LOCAL_MAX_BYTES`): blocks
    that do not fit are factored in parts, one sweep of the probes each
    (:meth:`lipzoo.bounds.banded.LocalPlan.passes`), and 8C2F's ``S_{4,2}`` (7.1 GB of blocks) is one part
    instead of four on a machine with 21 GB free. With 1 GiB
    for a group, lt-res-l's input-side group (8 chains, side 3,072) sent five of its chains back through
    the network instead of keeping their rows for a GEMM: 211 s of return passes in a 324 s sweep. On a CUDA
    device shares of the memory free now: the dense path holds about five ``n x n`` matrices at its peak
    (the Gram matrix, its symmetrized and shifted copies, the factor, the identity), so ``n`` up to
    ``sqrt(free / 40)``; a group's matrices an eighth; a local chain's blocks a third (its factorization adds
    a few blocks). An allocation that fails all the same skips that certificate (the bound stays proved)."""
    if device is None or torch.device(device).type != "cuda":
        return 16384, LOCAL_MAX_BYTES, max(LOCAL_MAX_BYTES, _free_cpu_bytes() / 2)
    free, _ = torch.cuda.mem_get_info(device)
    return math.isqrt(int(free) // 40), free / 8, free / 3


def _free_cpu_bytes() -> float:
    """Memory available now: Linux's ``MemAvailable`` (free memory and the page cache it can reclaim), else
    POSIX ``sysconf``'s free pages, else 0."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 0.0


def _out_of_memory_is_none(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or ``None`` if the GPU runs out of memory (the certificate is skipped; what was
    allocated is released before the next one)."""
    try:
        return fn(*args, **kwargs)
    except torch.cuda.OutOfMemoryError:
        logger.debug("out of GPU memory: certificate skipped")
        torch.cuda.empty_cache()
        return None


def proved_inner_norms(structure: Structure, keys, *, objective: Callable[[dict], torch.Tensor],
                       small: int = 1024, small_input: int | None = 4096, budget: float = 60.0,
                       tol: float = 2e-3, chunk: int = 256,
                       n_estimate: int = 40, seed: int = 0, progress: bool | None = None, device=None,
                       max_side: int | None = None, max_bytes: float | None = None,
                       local_max_bytes: float | None = None, known: dict | None = None,
                       on_certified: Callable[[tuple, float, float], None] | None = None,
                       on_corrupt: Callable[[list], None] | None = None) -> dict:
    """Guaranteed upper bounds ``{(t, j): ProvedNorm}`` on ``||S_{t,j}||`` for the given keys.

    Args:
        structure: the network's structure (float64 operators).
        keys: the inner operators ``(t, j)``.
        objective: maps ``{key: tensor norm}`` to the scalar final bound (for sensitivities).
        small: chains with a side of at most this many dimensions are always certified exactly.
        small_input: the same for chains from the network's input (``S_{t,-1}``, one shared sweep): these
            are the longest products, and their split bounds the loosest (2-17x on a random 6C2F).
        budget: seconds to spend on certifying larger chains exactly, most useful first.
        tol: stop refining once the bound is within ``tol`` (relative) of the objective at the estimates
            from below of every norm, or the first-order gains of all remaining chains together are (both
            over-state what certificates could still gain).
        chunk: identity-basis block size for Gram matrices.
        n_estimate: batched Lanczos steps (at most) for the estimates that rank and stop the certification.
        seed: seed of the Lanczos start vectors.
        progress: show a tqdm bar (``None``: only on a terminal).
        max_side: largest smaller side certified exactly during the refinement on the dense path (a local
            chain, :mod:`lipzoo.bounds.banded`, is capped by the memory of its blocks instead).
        max_bytes: memory for the matrices of one certified group.
        local_max_bytes: memory for the blocks of one local chain.
            ``None`` (each of the three): :func:`memory_caps` of the device.
        known: ``{key: (norm, estimate)}`` certified before for these very operators (same weights, same
            accountant: :func:`lipzoo.bounds.cache.load_certificates`). A claim, checked first: one below this
            run's own Lanczos estimate of that norm (from below) is corrupt, dropped (``on_corrupt(keys)``) and
            certified again; each other is taken as certified, serves the chains through it, and no time is
            spent on it again.
        on_certified: called as ``on_certified(key, norm, estimate)`` right after each certificate, so a
            caller can keep it (an interrupted run loses none of them).
        on_corrupt: called with the keys of ``known`` entries found below their estimates.
    """
    keys = list(keys)
    if not keys:
        return {}
    caps = memory_caps(device)
    max_side = caps[0] if max_side is None else max_side
    max_bytes = caps[1] if max_bytes is None else max_bytes
    local_max_bytes = caps[2] if local_max_bytes is None else local_max_bytes
    _NB_MEMO.clear()
    _STEP_MEMO.clear()
    try:
        # cuDNN may pick FFT/Winograd convolutions, outside the rounding model: use the direct kernels
        with torch.backends.cudnn.flags(enabled=False):
            return _proved_inner_norms(structure, keys, objective, small, small_input, budget, tol, chunk,
                                       n_estimate, seed, progress, device, max_side, max_bytes, local_max_bytes,
                                       known or {}, on_certified, on_corrupt)
    finally:
        _NB_MEMO.clear()
        _STEP_MEMO.clear()


ESTIMATE_DTYPE = torch.float32
"""Precision of the Lanczos sweeps that rank and stop the refinement (:func:`_lanczos_estimates`): float32
convolutions run 2.5-6x faster than float64 ones on 2 CPU cores, and no estimate enters a bound."""

ESTIMATE_MARGIN = 1e-4
"""Relative margin taken off a reduced-precision estimate so that it stays below the float64 norm: the
float32 operator and the Ritz value's rounding are off by ~1e-6 relative, and the refinement's stop rule
(``tol`` = 2e-3) does not feel 1e-4."""


def _lanczos_estimates(structure: Structure, keys, steps: int, generator, device, rtol: float = 1e-6,
                       dtype: torch.dtype = ESTIMATE_DTYPE) -> dict:
    """Estimates (from below) of every ``||S_k||`` by batched Lanczos on ``S_k^T S_k``: one forward and one
    adjoint sweep per step advance all chains together (like a power iteration, which converges much
    more slowly: after 15 power steps the 4C3F estimates were 1-3% low, enough to send the refinement
    after norms that were already certified to 1e-9).

    Three-term recurrence without reorthogonalization (two vectors per chain): lost orthogonality only
    duplicates converged Ritz values (Paige), and in exact arithmetic every Ritz value is at most
    ``lambda_max``. Used for ranking and stopping only, never as a bound. A chain stops once its top Ritz
    value moves by less than ``rtol`` (relative). The sweeps run in ``dtype`` (a copy of the structure;
    8C2F's 36 estimates took 28 s in float64); below float64 the result is lowered by :data:`ESTIMATE_MARGIN`."""
    if dtype != torch.float64:
        structure = structure.to(dtype)
    q, q_prev, alpha, beta, top = {}, {}, {}, {}, {}
    for k in keys:
        x = torch.randn(1, *structure.space_shape(*k)[0], generator=generator, dtype=torch.float64).to(device)
        q[k] = (x / x.norm()).to(dtype)
        alpha[k], beta[k], top[k] = [], [], 0.0
    active = list(keys)
    for _ in range(steps):
        if not active:
            break
        w = adjoint_sweep(structure, forward_sweep(structure, {k: q[k] for k in active}))
        for k in list(active):
            wk = w[k]
            a = float((q[k].double() * wk.double()).sum())
            alpha[k].append(a)
            wk = wk - a * q[k]
            if k in q_prev:
                wk = wk - beta[k][-1] * q_prev[k]
            b = float(wk.double().norm())
            if not (math.isfinite(a) and math.isfinite(b)):  # overflow in a reduced precision: no estimate
                top[k] = math.inf
                active.remove(k)
                continue
            n = len(alpha[k])
            T = torch.diag(torch.tensor(alpha[k], dtype=torch.float64))
            if n > 1:
                off = torch.tensor(beta[k], dtype=torch.float64)
                T = T + torch.diag(off, 1) + torch.diag(off, -1)
            ritz = float(torch.linalg.eigvalsh(T)[-1])
            converged = abs(ritz - top[k]) <= rtol * abs(ritz)
            top[k] = max(top[k], ritz)
            if converged or b <= 1e-13 * max(abs(top[k]), 1e-300):
                active.remove(k)
                continue
            beta[k].append(b)
            q_prev[k], q[k] = q[k], wk / b
    shrink = 1.0 if dtype == torch.float64 else 1.0 - ESTIMATE_MARGIN
    # a non-finite Ritz value (float32 overflow on a huge operator) estimates nothing: 0 over-states the gains
    return {k: math.sqrt(top[k]) * shrink if math.isfinite(top[k]) and top[k] > 0 else 0.0 for k in keys}


def _proved_inner_norms(structure, keys, objective, small, small_input, budget, tol, chunk, n_estimate, seed,
                        progress, device, max_side, max_bytes, local_max_bytes, known, on_certified, on_corrupt):
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    plan = _Planner(structure, chunk, gen, device)
    bar = tqdm(total=len(keys), desc="guaranteed norms", disable=(None if progress is None else not progress),
               leave=False, unit="op")
    t_all = time.perf_counter()
    est: dict = {k: 0.0 for k in keys}
    chains = {k: plan.chain(*k) for k in keys}
    done: set = set()
    result: dict = {}

    def certified(key, value: float, estimate: float, report: bool = True) -> None:
        plan.record(key, value)
        done.add(key)
        est[key] = estimate
        bar.update(1)
        if report and on_certified is not None:
            on_certified(key, value, estimate)

    known = {k: v for k, v in known.items() if k in chains}
    if known:
        # a stored certificate is a claim: this run's own estimate from below (its own generator, so the rest of
        # the run draws what it would draw without a cache) must not exceed it
        check = _lanczos_estimates(structure, list(known), n_estimate, torch.Generator().manual_seed(seed + 7919),
                                   device)
        corrupt = sorted(k for k, (value, _) in known.items() if not value >= check[k])
        if corrupt:
            logger.warning("Ignoring %d stored certificate(s) below this run's estimate of the norm (corrupt cache "
                           "entries %s); certifying them again.", len(corrupt), ", ".join(f"S{k}" for k in corrupt))
            if on_corrupt is not None:
                on_corrupt(corrupt)
        for key, (value, _) in known.items():
            if key not in corrupt:
                certified(key, value, check[key], report=False)
    if done:
        logger.debug("%d of %d chains certified before (cache)", len(done), len(keys))

    def update():
        for k in keys:
            val, how = plan.best_split(*chains[k])
            if k not in result or val < result[k].value:
                result[k] = ProvedNorm(val, "exact" if k in done else "proved", how, est[k])
            elif k in done and result[k].guarantee != "exact":
                # certified, and the split bound kept is no larger than the certificate: exact-grade too
                result[k] = ProvedNorm(result[k].value, "exact", result[k].how, est[k])

    def floor() -> float:
        """The objective at the estimates (from below) of every norm: no certificate can bring the bound under
        it, since each exact norm is at least its estimate and the recursion is monotone."""
        with torch.no_grad():
            return float(objective({k: torch.tensor(min(est[k], result[k].value), dtype=torch.float64)
                                    for k in keys}))

    def gains() -> tuple[float, dict, dict]:
        """The final bound and, per chain not yet certified, upper bounds on what certifying it could gain:
        directly, and in total (with the other chains that contain it as a segment, :meth:`_Planner.record`).

        The recursion is a polynomial with non-negative coefficients in the norms, so its partial derivatives
        are non-decreasing and ``F(b) - F(b') <= sum_k dF/db_k(b) (b_k - b'_k)`` for ``b' <= b``; certifying
        ``S_k`` gives ``b'_k >= est_k``, and every other chain at best its split bound with ``est_k`` in place of
        ``||S_k||``. The direct gains together bound what all certificates could still gain (the stop rule);
        the total ones rank the chains: a short chain inside many long ones is worth more than its own gain."""
        with torch.enable_grad():  # the caller usually runs under no_grad
            inner = {k: torch.tensor(result[k].value, dtype=torch.float64, requires_grad=True) for k in keys}
            f = objective(inner)
            grads = torch.autograd.grad(f, [inner[k] for k in keys], allow_unused=True)
        grad = {k: (float(g) if g is not None else 0.0) for k, g in zip(keys, grads)}
        direct = {k: grad[k] * max(result[k].value - est[k], 0.0) for k in keys if k not in done}
        others = [k for k in keys if k not in done and grad[k] > 0]
        total = {}
        proved_only = plan.exact
        try:
            for k in direct:
                plan.exact = dict(proved_only)
                plan.record(k, est[k])  # a what-if: an estimate, never left among the proved norms
                total[k] = direct[k] + sum(grad[k2] * max(result[k2].value - plan.best_split(*chains[k2])[0], 0.0)
                                           for k2 in others if k2 != k)
        finally:
            plan.exact = proved_only
        return float(f), direct, total

    def certify(group) -> None:
        name, ks, steps, n, shape = group
        bar.set_postfix_str(f"exact ({name}, side {n})")
        t0 = time.perf_counter()
        vals = _out_of_memory_is_none(
            _group_gram, steps, n, shape, chunk=chunk, device=device, generator=gen, max_bytes=max_bytes,
            estimates=est,
            report=lambda i, nb: bar.set_postfix_str(f"exact ({name}, side {n}): block {i}/{nb}"))
        logger.debug("exact group %s (%d operators, side %d): %s in %.2fs", name, len(ks), n,
                     "certified" if vals is not None else "out of memory, skipped", time.perf_counter() - t0)
        for key, val in (vals or {}).items():
            certified(key, val, est[key])

    update()
    logger.debug("proved split bounds of %d chains: %.2fs", len(keys), time.perf_counter() - t_all)
    # 1. every chain with a small side: certified exactly, one sweep per shared small side
    for group in plan.groups([k for k in keys if k not in done], small, small_input):
        # at most max_bytes of stored matrices per sweep: split a wide group into several sweeps
        name, ks, _, n, _ = group
        batch: list = []
        for k in sorted(ks) + [None]:
            if batch and (k is None or (len(batch) + 1) * n * n * 8 > max_bytes):
                certify(next(g for g in plan.groups(batch, small, small_input) if g[0] == name))
                batch = []
            if k is not None:
                batch.append(k)
    logger.debug("small sides certified: %.2fs", time.perf_counter() - t_all)
    # 2. estimates (from below) of the other norms by batched Lanczos: they rank and stop the refinement
    rest = [k for k in keys if k not in done]
    if rest:
        t0 = time.perf_counter()
        bar.set_postfix_str("Lanczos estimates")
        est.update(_lanczos_estimates(structure, rest, n_estimate, gen, device))
        logger.debug("Lanczos estimates of %d norms (%d steps at most): %.2fs", len(rest), n_estimate,
                     time.perf_counter() - t0)
    result.clear()  # the estimates changed: rebuild every entry
    update()
    if logger.isEnabledFor(logging.DEBUG):
        f0, gain, total = gains()
        logger.debug("bound %.6g, at the estimates %.6g; possible gains relative to the bound, direct / with the "
                     "chains through it: %s",
                     f0, floor(),
                     ", ".join(f"{k}: {g / max(f0, 1e-300):.1e} / {total[k] / max(f0, 1e-300):.1e}"
                               for k, g in sorted(gain.items(), key=lambda x: -total[x[0]])))
    # 3. certify exactly the chains whose looseness costs most per predicted second, one at a time, within
    #    the budget. Predicted seconds: the sweeps at each step's measured seconds per vector
    #    (_certificate_cost), scaled by how those predictions compared with the sweeps of the certificates
    #    made so far, plus the factorization at the Cholesky rate of its (block) size. Once a certificate has
    #    been made, a chain predicted to take more than twice what is left is not started (its first block
    #    alone cost 5-19 s on 8C2F, 2 CPU threads, before certified_chain_norm refused it)
    t_start = time.perf_counter()
    tried: set = set()
    cost: dict = {}
    swept = [0.0, 0.0]  # measured and predicted seconds of the sweeps of the certificates made so far

    def seconds(k) -> float:
        if k not in cost:
            _, ops, ins, _ = chains[k]
            cost[k] = _certificate_cost(ops, ins[-1], device, local_max_bytes)
        scale = swept[0] / swept[1] if swept[1] else 1.0
        return cost[k][0] * scale + cost[k][1]

    while budget > 0:
        left = budget - (time.perf_counter() - t_start)
        if left <= 0:
            break
        f, gain, total = gains()
        if min(sum(gain.values()), f - floor()) <= tol * f:
            break  # even exact norms everywhere could not lower the bound by more than tol
        todo = sorted((k for k in gain if total[k] > 1e-4 * f and k not in tried),
                      key=lambda k: -total[k] / max(seconds(k), 1e-6))
        if not todo:
            break
        k = todo[0]
        tried.add(k)
        # k alone, through the operator and its adjoint (memory n^2, no stored matrix) or its local Gram blocks.
        # One at a time: the chains sharing k's small side in one sweep (as in step 1) also certified chains
        # the bound did not need, and the stop rule comes between two certificates (lt-res-s, random init:
        # 231.5 -> 157.4 s, 1.0007 -> 1.0020 of the converged estimate; no other zoo model took that path)
        left = budget - (time.perf_counter() - t_start)
        _, ops, ins, _ = chains[k]
        bar.set_postfix_str(f"exact S{k}")
        predicted = seconds(k)
        if swept[1] and predicted > 2 * left:  # only once the rate is measured: a guessed one could stop all
            logger.debug("exact S%s: not started (%.2fs predicted, %.2fs left)", k, predicted, left)
            continue
        t0 = time.perf_counter()
        val = _out_of_memory_is_none(certified_chain_norm, ops, ins[-1], chunk=chunk, time_limit=left, generator=gen,
                                     device=device, max_side=max_side, local_max_bytes=local_max_bytes)
        took = time.perf_counter() - t0
        logger.debug("exact S%s: %s in %.2fs (%.2fs predicted)", k, "certified" if val is not None else
                     "skipped (above max_side or the memory caps, or too slow)", took, predicted)
        if val is not None:
            sweep = took - cost[k][1]
            if sweep > 0 and cost[k][0] > 0:
                swept[0] += sweep
                swept[1] += cost[k][0]
            certified(k, val, est[k])
            update()
    bar.close()
    logger.debug("refinement %.2fs; total %.2fs", time.perf_counter() - t_start, time.perf_counter() - t_all)
    if rest and logger.isEnabledFor(logging.DEBUG):
        logger.debug("bound %.6g, at the estimates %.6g", float(objective({k: torch.tensor(
            result[k].value, dtype=torch.float64) for k in keys})), floor())
    return result
