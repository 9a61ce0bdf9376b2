"""Spectral norms of operator chains, each tagged with the guarantee it carries.

Three ways to get ``||A||_2`` for a matrix-free chain ``A = F_1 F_2 ... F_r``:

* ``exact`` - materialize ``A`` (identity basis through the smaller side) and take the largest
  eigenvalue of the smaller Gram matrix in float64. Sound up to floating-point rounding, which we
  cover with a relative margin :data:`EXACT_MARGIN`.
* ``proved`` - when ``A`` is too large to materialize: split the chain at its narrowest interior
  space and bound ``||A|| <= ||A_left|| ||A_right||`` recursively; a single factor too large to
  materialize uses its own proved bound (FFT bound for convolutions, exact for dense and diagonal
  maps, triangle inequality for sums). Always an upper bound; looser than ``exact``.
* ``power`` - power iteration: ``||A v||`` for a unit ``v`` *under*-estimates ``||A||``. Fast, used
  for training, never a certificate.
"""

from __future__ import annotations

import math
from typing import cast
from dataclasses import dataclass

import torch

from lipzoo.bounds.structure import numel
from lipzoo.layers.operators import ComposeOp, LinearOperator, compose
from lipzoo.numerics import U

Shape = tuple[int, ...]

EXACT_MARGIN = 1e-6
"""Relative margin added to float64 exact norms (covers rounding in the matvecs and eigvalsh).

Sized for float64 only: a float32 exact norm came out 8e-6 low. Other dtypes get
:func:`exact_margin`; :func:`lipzoo.lipschitz_bound` computes every guaranteed norm in float64."""


def exact_margin(dtype: torch.dtype, rows: int, cols: int) -> float:
    """Relative margin for the top singular value of a ``(rows, cols)`` matrix via its Gram matrix in ``dtype``.

    ``max(EXACT_MARGIN, (cols + 8) (rows + 8) u)``: the computed Gram is off by at most
    ``gamma_cols ||M|^T|M||| <= gamma_cols rows ||M||^2`` and a backward-stable ``eigvalsh`` adds
    ``O(rows u ||G||)``; the square root halves both. In float64 this is EXACT_MARGIN for any size
    up to ~10^4 x 10^5; in float32 it grows with the size (1.2e-4 for 10 x 100).
    """
    u = torch.finfo(dtype).eps / 2
    return max(EXACT_MARGIN, (cols + 8) * (rows + 8) * u)

GUARANTEE_ORDER = {"exact": 0, "proved": 1, "probabilistic": 2, "estimate": 3}

__all__ = ["NormResult", "exact_norm", "chain_norm", "output_norms", "round_cast", "EXACT_MARGIN", "exact_margin",
           "weakest_guarantee", "DIRECT_PAIRS_MAX_CLASSES", "reference_tensor", "materialize_scaled", "ldexp", "ldexp_up", "mul_up",
           "pow2_exponent"]


@dataclass
class NormResult:
    value: torch.Tensor
    guarantee: str  # "exact" | "proved" | "probabilistic" | "estimate"


def weakest_guarantee(kinds) -> str:
    kinds = list(kinds)
    return max(kinds, key=GUARANTEE_ORDER.__getitem__) if kinds else "exact"


def exact_norm(op: LinearOperator, in_shape: Shape, *, chunk: int = 256) -> torch.Tensor:
    """``||op||_2`` from the dense matrix, plus :data:`EXACT_MARGIN`. Use float64 operators.

    The dense matrix is formed with power-of-two rescaling after every factor
    (:func:`materialize_scaled`), so its Gram matrix neither underflows (weights ~1e-82 per layer
    gave a Gram of subnormals and a bound 24% below the true norm) nor overflows (weights ~1e160 made
    ``eigvalsh`` fail); the norm of the scaled matrix is scaled back exactly (:func:`ldexp_up`).
    """
    ref = _tensor_of(op)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float64
    m, e = materialize_scaled(op, in_shape, dtype=dtype, device=None if ref is None else ref.device, chunk=chunk)
    gram = m @ m.T
    top = torch.linalg.eigvalsh(gram)[-1].clamp_min(0)
    return ldexp_up(top.sqrt() * (1 + exact_margin(m.dtype, *m.shape)), e)


def pow2_exponent(t: torch.Tensor) -> int:
    """``e`` with ``max|t| = f 2**e``, ``0.5 <= f < 1`` (``0`` for an all-zero, empty or non-finite ``t``)."""
    if t.numel() == 0:
        return 0
    m = float(t.detach().abs().max())
    return math.frexp(m)[1] if m != 0 and math.isfinite(m) else 0


def ldexp(x: torch.Tensor, e: int) -> torch.Tensor:
    """``x * 2**e``, in steps that are normal floats of ``x``'s dtype: exact wherever the result is a normal float."""
    e = int(e)
    limit = math.frexp(torch.finfo(x.dtype).max)[1] - 2 if x.is_floating_point() else 1000
    while e:
        step = max(-limit, min(limit, e))
        x = x * math.ldexp(1.0, step)
        e -= step
    return x


def ldexp_up(x: torch.Tensor, e: int) -> torch.Tensor:
    """:func:`ldexp`, never below ``x 2**e``: a result that lands below the smallest normal float (where the
    scaling rounds) is raised by one ulp, so a positive ``x`` never becomes ``0``; an overflow gives ``inf``."""
    out = ldexp(x, e)
    return _raise_subnormal(out, x > 0)


def _raise_subnormal(out: torch.Tensor, positive) -> torch.Tensor:
    """``out`` raised by one ulp where it is below the smallest normal float and ``positive`` holds (it may have
    been rounded down, to 0 included, by a product or scaling there; relative margins cover normal floats only)."""
    tiny = torch.finfo(out.dtype).tiny
    d = out.detach()
    low = (d < tiny) & positive
    step = torch.nextafter(d, torch.full_like(d, math.inf)) - d
    return out + torch.where(low, step, torch.zeros_like(d))  # differentiable: the ulp is a constant


def _pow2_tensor(k: torch.Tensor) -> torch.Tensor:
    """``2.0 ** k`` in float64 for integer ``k`` in ``[-1022, 1023]``, built from its bits (exact, no host sync)."""
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)


def _ldexp_tensor(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``x * 2**k`` for a float64 ``x`` and an integer tensor ``|k| <= 2044``, in two exact power-of-two steps."""
    half = torch.div(k, 2, rounding_mode="floor")
    return x * _pow2_tensor(half) * _pow2_tensor(k - half)


def mul_up(a: torch.Tensor, b) -> torch.Tensor:
    """``a * b`` for non-negative bounds, raised by one ulp where the product falls below the smallest normal float
    (a product of two positive bounds that underflows to 0 would claim a constant network)."""
    a = torch.as_tensor(a)
    b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
    return _raise_subnormal(a * b, (a > 0) & (b > 0))


def materialize_scaled(op: LinearOperator, in_shape: Shape, *, dtype=torch.float64, device=None,
                       chunk: int = 256) -> tuple[torch.Tensor, int]:
    """``(M, e)`` with ``M 2**e`` the matrix :func:`lipzoo.bounds.structure.materialize` returns and
    ``max|M|`` in ``[0.5, 1)``.

    The identity basis goes through the factors of ``op`` one at a time and is rescaled by a power of
    two after each, so no intermediate underflows or overflows (a chain of three layers with weights
    1e-130 would otherwise be all zeros). Powers of two make every rescaling exact. Chunks are
    brought to the largest chunk's exponent at the end; entries more than ``2**1074`` below the
    largest one may round to zero there, far below any norm margin.
    """
    factors = op.ops if isinstance(op, ComposeOp) else [op]
    shapes = [tuple(in_shape)]
    for f in reversed(factors):
        shapes.append(f.out_shape(shapes[-1]))  # shapes[i]: the input shape of factors[-1 - i]
    r = len(factors)
    n_in, n_out = numel(shapes[0]), numel(shapes[-1])
    if n_in <= n_out:
        small, start = n_in, shapes[0]
        steps = [f.forward for f in reversed(factors)]
    else:
        small, start = n_out, shapes[-1]
        steps = [(lambda y, f=f, s=shapes[r - 1 - j]: f.adjoint(y, s))  # type: ignore[misc]  # defaults bind f, s
                 for j, f in enumerate(factors)]
    rows, exps = [], []
    for begin in range(0, small, chunk):
        idx = torch.arange(begin, min(begin + chunk, small), device=device)
        x = torch.zeros(len(idx), small, dtype=dtype, device=device)
        x[torch.arange(len(idx), device=device), idx] = 1.0
        x, e = x.reshape(len(idx), *start), 0
        for step in steps:
            x = step(x)
            k = pow2_exponent(x)
            x, e = ldexp(x, -k), e + k
        rows.append(x.reshape(len(idx), -1))
        exps.append(e if bool((x != 0).any()) else None)  # an all-zero chunk sets no scale
    top = max((e for e in exps if e is not None), default=0)
    return torch.cat([x if e is None else ldexp(x, e - top) for x, e in zip(rows, exps)], 0), top


def _tensor_of(op: LinearOperator) -> torch.Tensor | None:
    """A parameter tensor the operator holds (for its dtype and device)."""
    for attr in ("weight", "scale", "c"):
        t = getattr(op, attr, None)
        if torch.is_tensor(t):
            return t
    for sub in getattr(op, "ops", []) + [getattr(op, "op", None)]:
        t = _tensor_of(sub) if sub is not None else None
        if t is not None:
            return t
    return None


def chain_norm(factors: list[LinearOperator], in_shape: Shape, *, max_dense: int,
               chunk: int = 256) -> NormResult:
    """A guaranteed upper bound on ``||factors[0] @ ... @ factors[-1]||``.

    Exact when the smaller side of the chain has at most ``max_dense`` dimensions; otherwise the
    chain is split at its narrowest interior space (or a single factor uses its own proved bound).
    """
    shapes = [tuple(in_shape)]
    for f in reversed(factors):
        shapes.append(f.out_shape(shapes[-1]))
    shapes = shapes[::-1]  # shapes[i] is the output shape of factors[i]; shapes[-1] the input
    if min(numel(shapes[0]), numel(shapes[-1])) <= max_dense:
        return NormResult(exact_norm(cast(LinearOperator, compose(*factors)), in_shape, chunk=chunk), "exact")
    if len(factors) == 1:
        op = factors[0]
        if isinstance(op, ComposeOp):
            return chain_norm(op.ops, in_shape, max_dense=max_dense, chunk=chunk)
        return NormResult(op.norm_bound(in_shape), "proved")
    interior = range(1, len(factors))
    cut = min(interior, key=lambda i: numel(shapes[i]))
    left = chain_norm(factors[:cut], shapes[cut], max_dense=max_dense, chunk=chunk)
    right = chain_norm(factors[cut:], in_shape, max_dense=max_dense, chunk=chunk)
    return NormResult(mul_up(left.value, right.value), weakest_guarantee([left.guarantee, right.guarantee, "proved"]))


def round_cast(value: torch.Tensor, dtype: torch.dtype, toward: float) -> torch.Tensor:
    """``value`` cast to ``dtype``, rounded toward ``toward`` (``float("inf")``: never below ``value``;
    ``-inf``: never above it). A cast that overflows lands on the largest finite value on the safe side.

    Differentiable: the one-ulp correction is a constant for autograd.
    """
    out = value.to(dtype)
    if dtype == value.dtype:
        return out
    d = out.detach()
    step = torch.nextafter(d, torch.full_like(d, toward))
    back = d.to(value.dtype)
    wrong = back < value.detach() if toward > 0 else back > value.detach()
    finite = torch.isfinite(d)
    out = out + torch.where(wrong & finite, step - d, torch.zeros_like(d))
    return torch.where(wrong & ~finite, step, out)


DIRECT_PAIRS_MAX_CLASSES = 64
"""Up to this many classes the pairwise output norms are all computed from row differences."""


def output_norms(rows: torch.Tensor, mode: str, margin: float = 0.0, *, rho: float = 1e-7) -> torch.Tensor:
    """Norms of the output-side operator from its rows ``S^T e_i`` (a ``(K, n)`` matrix).

    ``global``: ``||S||``; ``per_class``: ``||S^T e_i||``; ``pairwise``: ``||S^T (e_i - e_j)||``.

    Everything is computed in float64 (the result is returned in ``rows``' dtype) and, for the
    given rows, the floating-point rounding of this computation is bounded a priori (``u`` the unit
    roundoff of float64, standard error bounds of dot products, ``gamma_n = n u / (1 - n u)``), so
    the result is never below the exact norm of the given rows:

    * ``per_class``: ``sqrt(fl(sum r^2))`` times ``1 + 2 (n + 4) u``.
    * ``pairwise``: up to :data:`DIRECT_PAIRS_MAX_CLASSES` classes, every ``||r_i - r_j||`` from the
      difference itself (``torch.cdist`` without the matrix-multiplication form; relative error
      ``<= 2 (n + 4) u``). With more classes, the Gram form ``g_ii + g_jj - 2 g_ij``, which cancels
      catastrophically when two rows nearly coincide (rows 1e-5 apart at scale 1e3 gave
      ``L_01 = 1.5e-154``): it is used only where its proved absolute error
      ``E_ij = 2 (n + 8) u (sqrt(g_ii) + sqrt(g_jj))^2`` is at most ``rho`` times the computed square,
      and then ``E_ij`` is added; every other pair is computed from its difference as above.
    * ``global``: ``sqrt(eigvalsh(G) + E)`` with ``E`` covering the Gram rounding
      (``2 (n + 8) u (sum_i ||r_i||)^2``) and the backward error of ``eigvalsh``
      (``8 K u ||G||_F``).

    ``margin`` (relative) is applied on top, for rounding in the rows themselves. Differentiable
    (the training estimator uses this with ``margin=0``).
    """
    out_dtype = rows.dtype
    r = rows.to(torch.float64)
    k, n = r.shape
    # Rows are scaled by a power of two so that their largest entry is in [0.5, 1) (every formula below
    # squares entries: rows of 1e-180 gave squares of 0 and a pairwise bound 24% below the true one) and the
    # norms scaled back exactly; a tensor exponent, so the training estimator does not wait for the device.
    top = r.detach().abs().amax() if r.numel() else r.new_zeros(())
    expo = torch.frexp(top).exponent.to(torch.int64)
    expo = torch.where(torch.isfinite(top) & (top > 0), expo, torch.zeros_like(expo))
    r = _ldexp_tensor(r, -expo)
    val = _output_norms_scaled(r, mode, rho)
    val = _raise_subnormal(_ldexp_tensor(val, expo), val > 0)
    return with_margin(val, margin, out_dtype)


def _output_norms_scaled(r: torch.Tensor, mode: str, rho: float) -> torch.Tensor:
    """:func:`output_norms` of float64 rows whose largest entry is at most 1 in magnitude, without margin."""
    k, n = r.shape
    u = U  # float64
    gamma = 2 * (n + 8) * u
    if mode == "per_class":
        val = r.square().sum(1).clamp_min(torch.finfo(torch.float64).tiny).sqrt() * (1 + 2 * (n + 4) * u)
    elif mode == "global":
        gram = r @ r.T
        diag_norms = gram.diagonal().clamp_min(0).sqrt()
        err = gamma * diag_norms.sum().square() + 8 * k * u * gram.norm()
        val = (torch.linalg.eigvalsh(gram)[-1].clamp_min(0) + err).sqrt() * (1 + 4 * u)
    elif k <= DIRECT_PAIRS_MAX_CLASSES:
        # few classes: every pair from its difference (cdist's direct mode, no Gram), K^2 n flops, and
        # no data-dependent branch, so the training estimator never waits for the device here
        eye = torch.eye(k, dtype=torch.bool, device=r.device)
        direct = torch.cdist(r, r, compute_mode="donot_use_mm_for_euclid_dist") * (1 + 2 * (n + 4) * u)
        val = torch.where(eye, torch.zeros_like(direct), direct.clamp_min(torch.finfo(torch.float64).tiny))
    else:
        gram = r @ r.T
        diag = gram.diagonal().clamp_min(0)
        sq = (diag[:, None] + diag[None, :] - 2 * gram).clamp_min(0)
        err = gamma * (diag.sqrt()[:, None] + diag.sqrt()[None, :]).square()
        eye = torch.eye(k, dtype=torch.bool, device=r.device)
        cancel = (err > rho * sq) & ~eye
        # sqrt has an infinite derivative at 0; the floor keeps training gradients finite.
        val = (sq + err).clamp_min(torch.finfo(torch.float64).tiny).sqrt() * (1 + 4 * u)
        if cancel.any():
            # only the rows in a cancelling pair; cdist's direct mode sums (r_i - r_j)^2, no Gram
            idx = (cancel.any(0) | cancel.any(1)).nonzero(as_tuple=True)[0]  # r @ r.T may be asymmetric
            sub = r[idx]
            direct = torch.cdist(sub, sub, compute_mode="donot_use_mm_for_euclid_dist") * (1 + 2 * (n + 4) * u)
            fix = torch.zeros_like(val).index_put((idx[:, None], idx[None, :]), direct)
            val = torch.where(cancel, fix, val)
        val = torch.where(eye, torch.zeros_like(val), val)
    return val


def with_margin(norms: torch.Tensor, margin: float, dtype: torch.dtype) -> torch.Tensor:
    """``norms`` (float64) raised by the relative ``margin`` and cast to ``dtype``, never below (how
    :func:`output_norms` applies its ``margin``: compute once with ``margin=0`` on float64 rows, then apply)."""
    return round_cast(norms * (1 + margin), dtype, float("inf")) if margin else norms.to(dtype)


def reference_tensor(structure) -> torch.Tensor:
    """A parameter tensor of the network (for the dtype and device of the vectors we create)."""
    for op in [b.W for b in structure.blocks] + [structure.output]:
        t = _tensor_of(op) if op is not None else None
        if t is not None:
            return t
    return torch.empty(0)
