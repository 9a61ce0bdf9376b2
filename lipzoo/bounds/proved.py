"""Guaranteed norms of all LipLT inner operators in seconds: cheap proved bounds, then certified refinement.

Eq. (16) needs ``||S_{t,j}||`` for every ``S_{t,j} = W_t Hhat_{t-1} ... Hhat_{j+1} G_j``. Every
number returned here is a mathematically guaranteed upper bound, floating-point rounding included:

1. **Cheap proved bounds.** Each chain is a product of factors; any split into consecutive
   segments gives ``||S|| <= prod ||segment||``. A segment is bounded by its certified norm when one is
   known, a factor by its own proved bound (FFT/polyphase bound of a convolution, with per-channel
   scalings merged into the kernel; exact for dense and diagonal maps). A dynamic programme takes the
   best split per chain; factor bounds are memoized, so a factor shared by many chains is bounded once.
2. **Exact where a side is small**: every chain with a side of at most ``small`` dimensions is
   certified; chains sharing that side share one sweep of the identity basis (:func:`_group_gram`).
3. **Certified refinement where it pays.** A cheap batched power iteration gives estimates
   ``sigma_k <= ||S_k||``; with the sensitivity ``dF/db_k`` of the final bound, ``dF/db_k (b_k - sigma_k)``
   bounds what an exact norm of ``S_k`` could gain. Chains are certified exactly in that order (with the
   chains sharing their small side when the stored matrices fit in ``max_bytes``), each only if its
   measured cost (the first block is timed) fits in what is left of ``budget`` seconds.
4. **Exact certificates**: the Gram matrix ``G`` of the smaller side is formed in float64, a Lanczos
   estimate ``lam`` of its top eigenvalue is computed, and ``tau I - G`` with ``tau = lam (1 + delta)`` is
   shown positive definite by a Cholesky factorization that runs to completion
   (:func:`certified_lambda_max` has the rounding argument). The rounding of ``G`` itself is bounded a
   priori: every primitive has a rounding model (:func:`rounding_model`) and the error is propagated
   through the chain with the factors' proved norms (:func:`_run_tracked`).

Assumption: float64 arithmetic in the standard model (each sum of ``K`` products within ``gamma_K``),
which holds for PyTorch's CPU kernels (im2col + GEMM, LAPACK Cholesky) and for CUDA with cuDNN
switched off (done here); fast (Strassen/Winograd/FFT) products would need other constants.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from lipzoo.bounds.structure import Structure, numel
from lipzoo.bounds.sweep import adjoint, forward_sweep, power_iteration
from lipzoo.layers.operators import (AdjointOp, ComposeOp, Conv2dOp, DenseOp, DiagonalOp, FlattenOp,
                                     LinearOperator, ScaleOp, SumOp)

Shape = tuple[int, ...]

logger = logging.getLogger(__name__)

__all__ = ["FACTOR_MARGIN", "abs_norm_bound", "certified_lambda_max", "certified_chain_norm", "proved_inner_norms",
           "ProvedNorm"]

U = 2.0 ** -53  # unit roundoff of float64

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

def abs_norm_bound(op: LinearOperator, in_shape: Shape) -> float:
    """A proved upper bound on ``|| |A| ||_2`` (entrywise absolute value of the matrix of ``op``).

    Used only to size rounding margins. Convolutions and dense maps: Schur test
    ``sqrt(max row sum * max column sum)`` of ``|A|`` (a given input pixel meets each output channel's
    tap ``(kh, kw)`` at most once, for any stride, padding or dilation). Operators of unknown type:
    ``|| |A| ||_2 <= ||A||_F <= sqrt(rank) ||A||_2``.
    """
    if isinstance(op, ComposeOp):
        shapes = op._shapes(in_shape)
        out = 1.0
        for i, f in enumerate(reversed(op.ops)):
            out *= abs_norm_bound(f, shapes[i])
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
    return math.sqrt(n) * float(op.norm_bound(in_shape)) * (1 + FACTOR_MARGIN)


def rounding_model(op: LinearOperator, in_shape: Shape) -> tuple[float, float]:
    """``(theta, A)`` with ``||fl(op x) - op x||_2 <= theta A ||x||_2`` for the forward and the adjoint.

    Standard model of float64 arithmetic (no fast/FFT products; true of PyTorch's CPU float64 conv,
    im2col + GEMM): an entry that sums ``K`` products is off by ``<= gamma_K`` times the sum of their
    absolute values, i.e. ``|e| <= theta |A| |x|`` entrywise with ``theta = gamma_{K+1}``; then
    ``||e||_2 <= theta || |A| ||_2 ||x||_2``. Compositions multiply ``(1 + theta)`` factors, sums add a
    ``gamma_m`` for the final additions. ``K`` is the longest such sum: ``c_in k_h k_w`` or
    ``c_out k_h k_w`` for a (grouped) convolution, the larger side for anything else.
    """
    if isinstance(op, ComposeOp):
        shapes = op._shapes(in_shape)
        theta, a = 1.0, 1.0
        for i, f in enumerate(reversed(op.ops)):
            th, af = rounding_model(f, shapes[i])
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


def _norm_bound(op: LinearOperator, in_shape: Shape) -> float:
    """``op.norm_bound(in_shape) (1 + FACTOR_MARGIN)`` rounded up, memoized while a computation runs
    (FFT bounds of convolutions cost ~0.1-1 s each; the same factor appears in many chains)."""
    key = (id(op), tuple(in_shape))
    hit = _NB_MEMO.get(key)
    if hit is None or hit[0] is not op:
        hit = (op, math.nextafter(float(op.norm_bound(in_shape)) * (1 + FACTOR_MARGIN), math.inf))
        _NB_MEMO[key] = hit
    return hit[1]


class _Step:
    """One primitive factor (or its adjoint) with its rounding model and proved norm bound."""

    def __init__(self, op: LinearOperator, in_shape: Shape, adjoint: bool):
        self.op, self.in_shape, self.adjoint = op, tuple(in_shape), adjoint
        self.theta, self.a = rounding_model(op, in_shape)
        self.nb = _norm_bound(op, in_shape)

    def __call__(self, x):
        return adjoint(self.op, x, self.in_shape) if self.adjoint else self.op.forward(x)


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


def _run_tracked(steps: list[_Step], x: torch.Tensor, err: torch.Tensor):
    """Apply ``steps`` to the batch ``x``; ``err`` (per vector) bounds ``||x - x_exact||`` before and after.

    With ``x_hat' = fl(F x_hat) = F x_hat + e``, ``||e|| <= theta A ||x_hat||`` and ``||F|| <= nb``:
    ``||x_hat' - F x_exact|| <= nb err + theta A ||x_hat||``. The computed norms are inflated by
    ``1 + 1e-10`` for their own rounding."""
    for st in steps:
        if st.theta:
            norms = x.flatten(1).norm(dim=1) * (1 + 1e-10)
            err = st.nb * err + st.theta * st.a * norms
        else:
            err = st.nb * err
        x = st(x)
    return x, err


# ----------------------------------------------------------------------------- certificates

def _lanczos_top(a: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> float:
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
    return float(torch.linalg.eigvalsh(T)[-1])


def certified_lambda_max(gram: torch.Tensor, *, deltas=(1e-7, 1e-5, 1e-3, 1e-2, 0.1, 1.0, 10.0),
                         generator: torch.Generator | None = None) -> float:
    """A proved upper bound on the largest eigenvalue of the symmetric float64 matrix ``gram``.

    With ``lam`` a Lanczos estimate, ``tau = lam (1 + delta)`` for growing ``delta`` until the float64
    Cholesky factorization of ``A = fl(tau I - gram)`` runs to completion. Rounding: if Cholesky of a
    symmetric ``A`` completes, ``R^T R = A + dA`` with ``|dA| <= gamma_{n+1} |R^T||R|`` (Higham, Thm 10.5;
    any summation order, so blocked LAPACK/BLAS without fast matrix products qualify). By
    Cauchy-Schwarz ``||dA||_2 <= gamma_{n+1} tr(R^T R)`` and ``tr(R^T R) <= tr(A) / (1 - gamma_{n+1})``, so
    ``A >= -c I`` with ``c = gamma_{n+1} tr(A) / (1 - gamma_{n+1})``. ``A = tau I - gram + D`` with ``D`` the
    diagonal rounding of the subtraction, ``|D_ii| <= u |tau - gram_ii| <= 2 u tau`` (``tau >= max gram_ii``
    is enforced; a computed diagonal entry may be slightly negative, ``|gram_ii| <= tau`` is checked), and
    ``tr(A) <= (n tau + sum max(-gram_ii, 0)) (1 + u)``. Hence ``lam_max(gram) <= tau + c + 2 u tau``. Underflow plays no part at the sizes used (entries are
    normal numbers well above 1e-290); ``tau`` itself is rounded up at the end.
    """
    g = gram.to(torch.float64)
    n = g.shape[0]
    if not torch.isfinite(g).all():
        raise ValueError("certified_lambda_max: the Gram matrix has non-finite entries")
    diag_max = float(g.diagonal().max().clamp_min(0))
    lam = max(_lanczos_top(g, 64, generator), diag_max)
    eye = torch.eye(n, dtype=g.dtype, device=g.device)
    gam = _gamma(n + 1)
    neg = float(g.diagonal().clamp_max(0).abs().sum())
    diag_abs = float(g.diagonal().abs().max())
    for delta in deltas:
        tau = max(lam * (1 + delta), diag_abs, 1e-280)
        _, info = torch.linalg.cholesky_ex(tau * eye - g)
        if int(info) == 0:
            c = gam * (n * tau + neg) * (1 + U) / (1 - gam)
            return math.nextafter((tau + c + 2 * U * tau) * (1 + 2 * U), math.inf)
    # Gershgorin: always valid, for the pathological case no tau above worked
    radius = float(g.abs().sum(1).max())
    return math.nextafter(radius * (1 + _gamma(n + 1)), math.inf)


def _gram_cost_unit() -> float:
    """Seconds per float64 Cholesky flop on this machine (measured once)."""
    global _CHOL_RATE
    if _CHOL_RATE is None:
        a = torch.randn(384, 384, dtype=torch.float64)
        a = a @ a.T + 384 * torch.eye(384, dtype=torch.float64)
        t0 = time.perf_counter()
        torch.linalg.cholesky_ex(a)
        _CHOL_RATE = max(time.perf_counter() - t0, 1e-6) / (384 ** 3 / 3)
    return _CHOL_RATE


_CHOL_RATE: float | None = None
_GEMM_RATE: float | None = None


def _gemm_cost_unit() -> float:
    """Seconds per float64 matrix-product flop on this machine (measured once)."""
    global _GEMM_RATE
    if _GEMM_RATE is None:
        a = torch.randn(256, 2048, dtype=torch.float64)
        t0 = time.perf_counter()
        a @ a.T
        _GEMM_RATE = max(time.perf_counter() - t0, 1e-6) / (2 * 256 * 256 * 2048)
    return _GEMM_RATE


def _fold_into_convs(parts: list[LinearOperator], in_shape: Shape) -> list[LinearOperator]:
    """Merge scalars and per-input-channel scalings into an adjacent convolution (same operator, one factor).

    ``conv_w(diag(s) x) = conv_{w s}(x)`` for a per-channel ``s`` and ``c conv_w = conv_{c w}``, so the
    FFT bound of the merged kernel bounds the product without the looseness of ``||conv|| ||diag||``.
    The merged kernel is rounded (relative ``u`` per entry): the two operators differ by at most
    ``u || |M| ||_2 <= u ||M||_F <= u sqrt(min(m, n)) ||M||_2`` for the merged matrix ``M``, i.e. a relative
    ``< 1.2e-10`` for any size below 1e12, inside :data:`FACTOR_MARGIN`."""
    out = list(parts)
    changed = True
    while changed:
        changed = False
        for i in range(len(out) - 1):
            a, b = out[i], out[i + 1]  # a acts after b
            if isinstance(a, Conv2dOp) and a.groups == 1 and isinstance(b, DiagonalOp) and b.scale.dim() == 1 \
                    and b.scale.numel() == a.weight.shape[1]:
                w = a.weight * b.scale.to(a.weight)[None, :, None, None]
            elif isinstance(a, Conv2dOp) and isinstance(b, ScaleOp):
                w = a.weight * b.c
            elif isinstance(a, ScaleOp) and isinstance(b, Conv2dOp):
                a, w = b, b.weight * a.c
            else:
                continue
            out[i:i + 2] = [Conv2dOp(w, a.stride, a.padding, a.dilation, a.groups)]
            changed = True
            break
    return out


def _certify_gram(gram: torch.Tensor, col_err: torch.Tensor, generator=None) -> float:
    """Proved ``sqrt(lam_max(G))`` from a computed ``gram`` whose columns are off by at most ``col_err``.

    ``||G_hat - G||_2 <= ||G_hat - G||_F <= ||col_err||_2``; symmetrizing ``(G_hat + G_hat^T) / 2`` moves
    entries by a relative ``u`` at most (``<= u ||G_hat||_F`` in norm) and can only reduce the distance to
    the symmetric ``G`` otherwise. Weyl's inequality then gives ``lam_max(G) <= lam_max(G_sym) + both``.
    """
    sym = (gram + gram.T) / 2
    err = float(col_err.double().square().sum().sqrt()) * (1 + 1e-10) + 2 * U * float(gram.norm())
    lam = certified_lambda_max(sym, generator=generator) + err
    return math.nextafter(math.sqrt(lam) * (1 + 2 * U), math.inf)


def _basis(start: int, stop: int, n: int, shape: Shape, device) -> torch.Tensor:
    e = torch.zeros(stop - start, n, dtype=torch.float64, device=device)
    e[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
    return e.reshape(stop - start, *shape)


def certified_chain_norm(factors: list[LinearOperator], in_shape: Shape, *, chunk: int = 256,
                         time_limit: float = math.inf, generator: torch.Generator | None = None,
                         device=None) -> float | None:
    """A proved upper bound on ``||factors[0] ... factors[-1]||`` that is exact up to ~1e-7 relative.

    The Gram matrix of the smaller side is formed block by block as ``S^T S E`` (or ``S S^T E``) for
    identity blocks ``E`` in float64 (memory ``n^2`` for the smaller side ``n``), with a proved bound on
    each column's rounding error (:func:`_run_tracked`), then certified by :func:`certified_lambda_max`.
    Returns ``None`` without finishing when the cost measured on the first block predicts more than
    ``time_limit`` seconds.
    """
    fwd = _primitive_steps(factors, in_shape)
    in_shape = tuple(in_shape)
    out_shape = fwd[-1].op.out_shape(fwd[-1].in_shape)
    n_in, n_out = numel(in_shape), numel(out_shape)
    if n_in <= n_out:
        n, shape, steps = n_in, in_shape, fwd + _adjoint_steps(fwd)
    else:
        n, shape, steps = n_out, out_shape, _adjoint_steps(fwd) + fwd
    gram = torch.empty(n, n, dtype=torch.float64, device=device)
    col_err = torch.empty(n, dtype=torch.float64, device=device)
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        e = _basis(start, stop, n, shape, device)
        y, err = _run_tracked(steps, e, torch.zeros(stop - start, dtype=torch.float64, device=device))
        gram[start:stop] = y.reshape(stop - start, n)
        col_err[start:stop] = err
        if start == 0 and stop < n:
            per_block = time.perf_counter() - t0
            predicted = per_block * math.ceil(n / chunk) + 1.5 * n ** 3 / 3 * _gram_cost_unit()
            if predicted > time_limit:
                return None
    return _certify_gram(gram, col_err, generator)


def _group_gram(steps_to_keys, n: int, shape: Shape, *, chunk: int, device, generator,
                time_limit: float = math.inf) -> dict | None:
    """Exact certified norms of several chains that share their small side (one sweep for all).

    ``steps_to_keys``: ``(steps, stops)`` with ``steps`` a list of :class:`_Step` applied in order
    starting from the shared small space, and ``stops`` mapping an index ``i`` (after ``i`` steps) to
    a list of ``(key, extra_steps)``: the chain of ``key`` is ``extra_steps`` after the first ``i``
    steps. Each chain's matrix ``M`` (``n`` columns) is stored, then ``M^T M`` formed by GEMM:
    ``|fl(M^T M) - M^T M| <= gamma_rows |M|^T |M|`` (``<= gamma_rows ||M||_F^2`` in norm) plus the
    propagated column errors ``||dM||_F (2 ||M_hat||_F + ||dM||_F)``. Returns None when the cost measured
    on the first block predicts more than ``time_limit`` seconds.
    """
    steps, stops = steps_to_keys
    cols: dict = {}
    errs: dict = {}
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        if start == chunk and time_limit < math.inf:
            rows = sum(c[0].shape[1] for c in cols.values())
            predicted = ((time.perf_counter() - t0) * math.ceil(n / chunk) + 2 * n * n * rows * _gemm_cost_unit()
                         + len(cols) * n ** 3 / 3 * _gram_cost_unit())
            if predicted > time_limit:
                return None
        stop = min(start + chunk, n)
        x = _basis(start, stop, n, shape, device)
        err = torch.zeros(stop - start, dtype=torch.float64, device=device)
        i = 0
        while i <= len(steps):
            skip = None
            for key, extra in stops.get(i, []):
                y, e2 = _run_tracked(extra, x, err)
                cols.setdefault(key, []).append(y.reshape(stop - start, -1))
                errs.setdefault(key, []).append(e2)
                # Hhat_t = c W_t (no skip branch): continue from W_t's output instead of applying W_t again
                if extra and len(steps) - i >= len(extra) and all(a.op is b.op and a.adjoint == b.adjoint for a, b in zip(extra, steps[i:])):
                    skip = (len(extra), y, e2)
            if skip is not None:
                i, x, err = i + skip[0], skip[1], skip[2]
                continue
            if i < len(steps):
                x, err = _run_tracked([steps[i]], x, err)
            i += 1
    out = {}
    for key in list(cols):
        m = torch.cat(cols.pop(key), 0)  # (n, rows): row b is M e_b
        e = torch.cat(errs[key])
        gram = m @ m.T
        fro = float(m.norm())
        d = float(e.square().sum().sqrt()) * (1 + 1e-10)
        err = _gamma(m.shape[1] + 1) * fro * fro + d * (2 * fro + d) + 2 * U * float(gram.norm())
        lam = certified_lambda_max((gram + gram.T) / 2, generator=generator) + err
        out[key] = math.nextafter(math.sqrt(lam) * (1 + 2 * U), math.inf)
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


def proved_inner_norms(structure: Structure, keys, *, objective: Callable[[dict], torch.Tensor],
                       small: int = 1024, small_input: int | None = 4096, budget: float = 60.0,
                       tol: float = 2e-3, chunk: int = 256,
                       n_estimate: int = 15, seed: int = 0, progress: bool | None = None, device=None,
                       max_side: int = 16384, max_bytes: int = 1 << 30) -> dict:
    """Guaranteed upper bounds ``{(t, j): ProvedNorm}`` on ``||S_{t,j}||`` for the given keys.

    Args:
        structure: the network's structure (float64 operators).
        keys: the inner operators ``(t, j)``.
        objective: maps ``{key: tensor norm}`` to the scalar final bound (for sensitivities).
        small: chains with a side of at most this many dimensions are always certified exactly.
        small_input: the same for chains from the network's input (``S_{t,-1}``, one shared sweep): these
            are the longest products, and their split bounds the loosest (2-17x on a random 6C2F).
        budget: seconds to spend on certifying larger chains exactly, most useful first.
        tol: stop refining once the possible gain of all remaining chains together (estimated from
            power-iteration lower bounds, so over-stated) is below ``tol`` of the objective.
        chunk: identity-basis block size for Gram matrices.
        n_estimate: power iterations for the estimates that rank the refinements.
        seed: seed of the power-iteration and Lanczos start vectors.
        progress: show a tqdm bar (``None``: only on a terminal).
        max_side: largest smaller side certified exactly during the refinement.
        max_bytes: memory for the matrices of one certified group.
    """
    keys = list(keys)
    if not keys:
        return {}
    _NB_MEMO.clear()
    try:
        # cuDNN may pick FFT/Winograd convolutions, outside the rounding model: use the direct kernels
        with torch.backends.cudnn.flags(enabled=False):
            return _proved_inner_norms(structure, keys, objective, small, small_input, budget, tol, chunk,
                                       n_estimate, seed, progress, device, max_side, max_bytes)
    finally:
        _NB_MEMO.clear()


def _proved_inner_norms(structure, keys, objective, small, small_input, budget, tol, chunk, n_estimate, seed,
                        progress, device, max_side, max_bytes):
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    plan = _Planner(structure, chunk, gen, device)
    bar = tqdm(total=len(keys), desc="guaranteed norms", disable=(None if progress is None else not progress),
               leave=False, unit="op")
    # 1. estimates (lower bounds on the norms) from a cheap batched power iteration
    bar.set_postfix_str("power estimates")
    v = {}
    for (t, j) in keys:
        x = torch.randn(1, *structure.space_shape(t, j)[0], generator=gen, dtype=torch.float64).to(device)
        v[(t, j)] = x / x.norm()
    t0 = time.perf_counter()
    v = power_iteration(structure, v, n_estimate)
    out = forward_sweep(structure, v)
    est = {k: float(out[k].norm()) for k in keys}
    logger.debug("power estimates: %.2fs", time.perf_counter() - t0)
    chains = {k: plan.chain(*k) for k in keys}
    # 2. every chain with a small side: certified exactly, one sweep per shared small side
    done: set = set()

    def certify(group, time_limit=math.inf) -> bool:
        name, ks, steps, n, shape = group
        bar.set_postfix_str(f"exact ({name})")
        t0 = time.perf_counter()
        vals = _group_gram(steps, n, shape, chunk=chunk, device=device, generator=gen, time_limit=time_limit)
        logger.debug("exact group %s (%d operators, side %d): %s in %.2fs", name, len(ks), n,
                     "certified" if vals is not None else "too slow, skipped", time.perf_counter() - t0)
        if vals is None:
            return False
        for key, val in vals.items():
            labels, _, ins, _ = chains[key]
            plan.exact[(tuple(labels), ins[-1])] = val
            done.add(key)
        bar.update(len(vals))
        return True

    for group in plan.groups(keys, small, small_input):
        # at most max_bytes of stored matrices per sweep: split a wide group into several sweeps
        name, ks, _, n, _ = group
        batch: list = []
        size = 0
        for k in sorted(ks) + [None]:
            w = 0 if k is None else n * max(numel(x) for x in structure.space_shape(*k)) * 8
            if batch and (k is None or size + w > max_bytes):
                certify(next(g for g in plan.groups(batch, small, small_input) if g[0] == name))
                batch, size = [], 0
            if k is not None:
                batch.append(k)
                size += w
    result = {}

    def update():
        for k in keys:
            val, how = plan.best_split(*chains[k])
            if k not in result or val < result[k].value:
                result[k] = ProvedNorm(val, "exact" if k in done else "proved", how, est[k])

    update()
    # 3. certify exactly the chains whose looseness costs most, a shared side at a time, within the budget
    t_start = time.perf_counter()
    tried: set = set()
    while budget > 0:
        left = budget - (time.perf_counter() - t_start)
        if left <= 0:
            break
        with torch.enable_grad():  # the caller usually runs under no_grad
            inner = {k: torch.tensor(result[k].value, dtype=torch.float64, requires_grad=True) for k in keys}
            f = objective(inner)
            grads = torch.autograd.grad(f, [inner[k] for k in keys], allow_unused=True)
        gain = {k: float(g) * max(result[k].value - est[k], 0.0) for k, g in zip(keys, grads)
                if g is not None and k not in done}
        if sum(gain.values()) <= tol * float(f):
            break  # even exact norms everywhere could not lower the bound by more than tol
        todo = sorted((k for k in gain if gain[k] > 1e-4 * float(f) and k not in tried), key=lambda k: -gain[k])
        if not todo:
            break
        k = todo[0]
        tried.add(k)
        # the operators sharing k's small side, in one sweep (stored matrices capped at max_bytes) ...
        own = plan.groups([k], max_side)
        if own and own[0][0] not in tried:
            name, n = own[0][0], own[0][3]
            tried.add(name)
            fitting, size = [], 0
            for k2 in todo:
                w = n * max(numel(x) for x in structure.space_shape(*k2)) * 8
                if size + w <= max_bytes and any(g[0] == name for g in plan.groups([k2], max_side)):
                    fitting.append(k2)
                    size += w
            group = next((g for g in plan.groups(fitting, max_side) if g[0] == name), None)
            if group is not None and len(group[1]) > 1 and certify(group, time_limit=left):
                update()
                continue
        # ... or k alone, through the operator and its adjoint (memory n^2, no stored matrix)
        left = budget - (time.perf_counter() - t_start)
        labels, ops, ins, _ = chains[k]
        bar.set_postfix_str(f"exact S{k}")
        t0 = time.perf_counter()
        val = certified_chain_norm(ops, ins[-1], chunk=chunk, time_limit=left, generator=gen, device=device)
        logger.debug("exact S%s: %s in %.2fs", k, "certified" if val is not None else "too slow, skipped",
                     time.perf_counter() - t0)
        if val is not None:
            plan.exact[(tuple(labels), ins[-1])] = val
            done.add(k)
            bar.update(1)
            update()
    bar.close()
    return result
