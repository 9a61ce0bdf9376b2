"""Eigenvalue certificates: proved upper bounds on the largest eigenvalue of a symmetric float64 matrix.

The guaranteed norm of an operator ``S`` is ``sqrt(lambda_max(G))`` for its Gram matrix ``G`` (formed with a proved
rounding bound elsewhere: :mod:`lipzoo.bounds.gram`, :mod:`lipzoo.bounds.banded`). Here:

* :func:`lanczos_top`: a Lanczos estimate of ``lambda_max`` (from below; it only chooses the shifts tried);
* :func:`certify_by_shifts`: ``tau I - G`` positive definite, shown by a float64 Cholesky factorization that
  runs to completion, proves ``lambda_max(G) <= tau`` up to the factorization's backward error (Higham,
  Thm 10.5), which is bounded and added (the argument is in its docstring);
* :func:`certify_gram`: the same for a computed ``G_hat`` with a proved ``||G_hat - G||_F`` (Weyl);
* :func:`dense_norm_bound`: ``||W||_2`` of a dense matrix by its smaller Gram matrix.

Assumption: float64 arithmetic in the standard model (:mod:`lipzoo.numerics`), which holds for LAPACK's and
cuSOLVER's Cholesky and for GEMM without fast (Strassen/Winograd) products.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Protocol

import torch

from lipzoo.numerics import U, gamma

logger = logging.getLogger(__name__)

__all__ = ["lanczos_top", "ritz_top", "certify_by_shifts", "cholesky", "certified_lambda_max", "upper_product",
           "certify_gram", "dense_norm_bound", "DELTAS", "DENSE_DELTAS"]

DELTAS = (1e-7, 1e-5, 1e-3, 1e-2, 0.1, 1.0, 10.0)
"""Relative shifts over the Lanczos estimate tried in turn until a Cholesky factorization completes (block and
in-part factorizations, where each failure costs a sweep or a large factorization)."""

DENSE_DELTAS = (1e-7, 1e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 1.0, 10.0)
"""The shifts of a dense certificate: finer, since a failed factorization there costs at most ``n^3 / 3`` flops
and every step of the list that is skipped loosens the norm by half of it (6C2F's 4096-wide Gram matrices were
certified at 1e-3 and 1e-2 with 64 Lanczos steps and the coarse list)."""

DENSE_LANCZOS_STEPS = 256
"""Lanczos steps of a dense certificate's estimate: a matrix-vector product costs ``2 n^2`` flops against the
factorization's ``n^3 / 3``, and a converged estimate lets the first shift (1e-7) succeed."""


def ritz_top(alpha: list[float], beta: list[float]) -> float:
    """Largest eigenvalue of the symmetric tridiagonal matrix with diagonal ``alpha`` and off-diagonal
    ``beta[:len(alpha) - 1]``: the top Ritz value of a Lanczos run (shared by every Lanczos loop of lipzoo)."""
    k = len(alpha)
    t = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(beta[:k - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(t)[-1])


class _MatrixLike(Protocol):
    """What :func:`lanczos_top` uses of its matrix: a tensor, or an operator that multiplies a column block."""

    @property
    def shape(self) -> Any: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def device(self) -> Any: ...
    def __matmul__(self, x: torch.Tensor, /) -> torch.Tensor: ...


def lanczos_top(a: torch.Tensor | _MatrixLike, steps: int, generator: torch.Generator | None = None,
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
    top = ritz_top(alpha, beta)
    if not with_progress:
        return top
    # relative progress of the top Ritz value over the last 8 steps (0 when the space was exhausted)
    j = k - 8
    if j < 1 or b <= 1e-14 * max(abs(x) for x in alpha):
        return top, 0.0
    earlier = ritz_top(alpha[:j], beta)
    return top, max(top - earlier, 0.0) / max(abs(top), 1e-300)




def certify_by_shifts(diagonal: torch.Tensor, lam: float, factors: Callable[[float], bool],
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
    gam = gamma(n + 1)
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




def cholesky(a: torch.Tensor) -> torch.Tensor | None:
    """The float64 Cholesky factor of ``a``, or ``None`` when the factorization breaks down. A factor whose
    diagonal is not finite and positive counts as a breakdown: LAPACK flags a NaN pivot, other solvers
    (cuSOLVER, MAGMA) need not; with every pivot a positive finite number, every entry is finite too."""
    r, info = torch.linalg.cholesky_ex(a)
    d = r.diagonal(dim1=-2, dim2=-1)
    if int(info) != 0 or not bool((torch.isfinite(d) & (d > 0)).all()):
        return None
    return r




def certified_lambda_max(gram: torch.Tensor, *, deltas=DENSE_DELTAS,
                         generator: torch.Generator | None = None, info: dict | None = None) -> float:
    """A proved upper bound on the largest eigenvalue of the symmetric float64 matrix ``gram``.

    With ``lam`` a Lanczos estimate, ``tau = lam (1 + delta)`` for growing ``delta`` until the float64
    Cholesky factorization of ``fl(tau I - gram)`` runs to completion (:func:`certify_by_shifts` has the
    rounding argument); Gershgorin if none does.
    """
    g = gram.to(torch.float64)
    n = g.shape[0]
    if not torch.isfinite(g).all():
        raise ValueError("certified_lambda_max: the Gram matrix has non-finite entries")
    # the estimate only chooses tau (the Cholesky certifies whatever tau it gets): for large n in float32,
    # which halves the memory traffic of its matrix-vector products
    lam, moved = lanczos_top(g.float() if n > 1024 else g, DENSE_LANCZOS_STEPS, generator, with_progress=True)
    lam = max(lam, float(g.diagonal().max().clamp_min(0)))
    # A Ritz value that still moved by a relative `moved` over the last 8 steps is usually further than that
    # below lam_max: start where the first Cholesky is likely to succeed (each failure costs n^3/3 flops).
    start_delta = min(2 * moved, 1e-3) if n > 1024 and moved > 0 else None
    if info is not None:
        info["ritz"] = lam * (1 - 1e-6 if n > 1024 else 1)  # an estimate from below (Lanczos), for reports
    eye = torch.eye(n, dtype=g.dtype, device=g.device)
    return certify_by_shifts(g.diagonal(), lam, lambda tau: cholesky(tau * eye - g) is not None,
                              lambda: float(g.abs().sum(1).max()), deltas=deltas, start_delta=start_delta,
                              what=f"n={n}")




def upper_product(x: torch.Tensor, z: torch.Tensor, blocks: int = 8) -> torch.Tensor:
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




def certify_gram(gram: torch.Tensor, col_err, generator=None, symmetric: bool = False,
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
    if symmetric:  # symmetric by construction (:func:`upper_product`): nothing to add
        sym, err = gram, col_err
    else:
        sym = (gram + gram.T) / 2
        err = col_err + 2 * U * float(gram.norm()) * (1 + 1e-6)
    lam = certified_lambda_max(sym, generator=generator, info=info) + err
    return math.nextafter(math.sqrt(lam) * (1 + 2 * U), math.inf)




def dense_norm_bound(weight: torch.Tensor) -> float:
    """Proved ``||W||_2`` of a dense matrix from its smaller Gram matrix and a Cholesky certificate
    (:func:`certified_lambda_max`): ~20x faster than the SVD of ``DenseOp.norm_bound`` for a 512 x 3136 matrix
    (1.7 s on a loaded 2-core machine). ``|fl(W W^T) - W W^T| <= gamma_m |W| |W|^T`` entrywise (``m`` the longer
    side), at most ``gamma_m ||W||_F^2`` in Frobenius norm; the computed Gram matrix is symmetrized
    (:func:`certify_gram` adds that rounding)."""
    w = weight.detach().to(torch.float64)
    if w.shape[0] > w.shape[1]:
        w = w.T
    fro = float(w.norm()) * (1 + 1e-6)
    return certify_gram(w @ w.T, gamma(w.shape[1] + 1) * fro * fro)
