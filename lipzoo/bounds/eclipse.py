"""A compositional LipSDP-Neuron bound in the manner of ECLipsE-Fast, verified in floating point.

Method after Xu & Sivaranjani, *ECLipsE: Efficient Compositional Lipschitz Constant Estimation for
Deep Neural Networks* (NeurIPS 2024); this is an independent implementation from the mathematics
below, with the multipliers tuned for the final bound and every inequality checked with rounding
accounted for. It applies to plain feed-forward structures (every block ``H = None``); see
:func:`eclipse_bound` for what is refused.

Mathematics
-----------
Write the network as ``x_{k+1} = phi_k(W_k x_k)`` (``k = 0 .. L-1``) and ``z = W_L x_L``, with
``phi_k`` acting coordinatewise and slope-restricted in ``[alpha_k, beta_k]`` (``alpha_k < beta_k``,
any signs). For two inputs, the differences satisfy ``dx_{k+1} = D_k W_k dx_k`` with ``D_k`` diagonal,
entries in ``[alpha_k, beta_k]``; so for any multiplier ``lam_k >= 0`` (``Lam_k = lam_k I``)

    S_k = sum_i lam_k (dx'_i - alpha dy_i)(beta dy_i - dx'_i)
        = -p lam |dy|^2 + 2 m lam dy.dx' - lam |dx'|^2  >= 0,   p = alpha beta, m = (alpha+beta)/2,

with ``dy = W_k dx_k``, ``dx' = dx_{k+1}``. **Stage inequality.** For symmetric ``X_k``, ``X_{k+1}``, if

    B_k = [[ X_k + p lam W^T W ,  -m lam W^T        ],
           [ -m lam W          ,  lam I - X_{k+1}   ]]  >= 0                            (1)

then ``dx_k^T X_k dx_k - dx_{k+1}^T X_{k+1} dx_{k+1} - S_k = [dx_k; dx_{k+1}]^T B_k [dx_k; dx_{k+1}] >= 0``,
hence ``dx_{k+1}^T X_{k+1} dx_{k+1} <= dx_k^T X_k dx_k``. Chaining from ``X_0 = I`` gives
``dx_L^T X_L dx_L <= |dx_0|^2``. **Output.** If ``C`` satisfies ``C^T X_L C >= c I`` (``c > 0``; ``C`` is then
invertible), then ``X_L >= c C^{-T} C^{-1}`` and for any row vector ``v``

    |v dx_L| = |v C C^{-1} dx_L| <= |v C| |C^{-1} dx_L| <= |v C| |dx_0| / sqrt(c).            (2)

With ``v = e_i^T W_L`` (per class), ``(e_i - e_j)^T W_L`` (pairwise) and ``||W_L C||`` for the whole
output (global) this bounds the Lipschitz constants. All modes come from the one ``K x n`` matrix
``Q = W_L C`` (``Q Q^T ~ W_L X_L^{-1} W_L^T``, the ``K x K`` matrix of the method): a pair's value is
``|q_i - q_j|``, computed from the difference of the rows, never from the Gram form
``g_ii + g_jj - 2 g_ij`` (which cancels when two rows nearly coincide).

**Closed form (where it gains over the loop transformation).** By the Schur complement, (1) holds
with equality of the lower-right Schur complement for ``X_{k+1} = lam I - m^2 lam^2 W A^{-1} W^T``,
``A = X_k + p lam W^T W > 0``. With ``N = W X_k^{-1} W^T = U diag(nu) U^T`` (push-through identity:
``W A^{-1} W^T = N (I + p lam N)^{-1}``) this is ``X_{k+1} = U diag(lam - m^2 lam^2 nu / (1 + p lam nu)) U^T``:
the whole quadratic form of the prefix network is carried from stage to stage, direction by direction,
where LipLT (eq. 16) only carries norms of partial products and adds one triangle inequality per
path through the ``d``-terms. With ``a = lam nu_max`` the smallest eigenvalue of ``X_{k+1}`` is
``(a - m^2 a^2 / (1 + p a)) / nu_max``, maximal at ``a = 1 / (d (|m| + d))``, ``d = (beta - alpha)/2``
(for ReLU ``a = 2``, the ECLipsE-Fast choice ``lam = 1 / (2 m^2 nu_max)``); admissible ``a`` lie in
``(0, min(1/d^2, 1/|p| if p < 0))`` (``A > 0`` and ``X_{k+1} > 0``). ECLipsE-Fast drops the ``p`` term
(valid only for ``p >= 0``, and looser for ``p > 0``) and takes the greedy ``a`` at every stage; here
``p`` is kept (so ``alpha < 0`` is handled: GELU, SiLU, Hardswish, negative leaky slopes) and the
``a_k`` start at the greedy values and are then tuned by coordinate search (golden section in
``log a_k``) for the requested mode's objective: ``lambda_max(M)`` (global), ``tr M`` (per class) or
``sum_{i,j} (e_i - e_j)^T M (e_i - e_j)`` (pairwise), ``M = W_L X_L^{-1} W_L^T``. A tuned choice is kept
only when it does not raise that objective, so the bound is never above the greedy one (up to the
verification slack below, ~1e-8 relative).

Soundness in floating point
---------------------------
The search above is plain float64 arithmetic and proves nothing. The certificate is built and
*checked* afterwards; every number returned is a mathematical upper bound:

* **Weights.** Each dense matrix is materialized by pushing the identity basis through the operator
  chain; for a chain of one ``DenseOp`` with flattenings and unit scalings this is exact, otherwise its
  error ``||W - W_hat||_2 <= sqrt(n_in) theta A`` comes from
  :func:`lipzoo.bounds.proved.rounding_model` (standard model, float64 operators required). Every
  matrix is scaled by a power of two (exact; the factors are multiplied back at the end with
  ``math.ldexp``, rounded up if it leaves the normal range). Both steps live in
  :mod:`lipzoo.bounds.eclipse_dense`.
* **Stage inequality (1).** ``X_{k+1}`` is stored with a slack ``eps lam`` subtracted (``eps`` tried from
  1e-10 upward). ``B_hat``, the float64 matrix of (1), is formed exactly symmetric (lower triangle
  mirrored); its entrywise distance to the exact ``B_k`` (exact ``alpha, beta``, the stored ``lam``,
  ``X_k``, ``X_{k+1}``) is bounded a priori: ``2 gamma_{n+3} |p| lam c c^T`` on the upper-left block
  (``c`` the column norms of ``W``; ``|W|^T |W| <= c c^T`` by Cauchy-Schwarz), ``2 gamma_3 |B_hat|``
  elsewhere, and the materialization error of ``W`` adds ``|p| lam (2 ||W_hat||_F e + e^2) + |m| lam e``
  in spectral norm. :func:`_certify_psd` then shows ``B_k >= 0``: after an exact power-of-two diagonal
  scaling ``S = D B_hat D`` (unit-size diagonal), the Cholesky factorization of ``fl(S - s I)`` runs to
  completion for a shift ``s`` covering (i) ``||D (B_k - B_hat) D||_2`` (Frobenius bound), (ii) the
  rounding of the diagonal subtraction and (iii) Cholesky's backward error: if it completes,
  ``R^T R = A + dA`` with ``|dA| <= gamma_{n+1} |R^T||R|`` (Higham, *Accuracy and Stability*, Thm 10.5,
  any summation order), so ``||dA||_2 <= gamma_{n+1} tr(R^T R) <= gamma_{n+1} tr(A) / (1 - gamma_{n+1})``
  and ``A >= -||dA|| I`` (the argument of :func:`lipzoo.bounds.proved._certify_by_shifts`).
* **Output (2).** ``C = L^{-T}`` from a Cholesky factor ``X_L ~ L L^T``; ``T_hat = fl(C^T fl(X_L C))`` is off
  by at most ``2 gamma_n (1 + gamma_n) |C|^T |X_L| |C|`` entrywise, and ``T - c I >= 0`` is certified the
  same way (``c = fl(1 - eta)``, the float itself). The rows ``Q_hat = fl(W_hat C)`` are off by at most
  ``gamma_n |r_i| |C|`` per row (``|| |C|^T |r_i| || <= ||C||_F |r_i|``) plus ``||C||_2 e`` for the
  materialization; these absolute terms are added to the norms that
  :func:`lipzoo.bounds.liplt.output_norms` returns (already rounded up) for ``Q_hat``. The last few scalar
  operations (sum, division by ``sqrt(c)``, scaling) carry a relative ``1e-12`` (>> their ``~10 u``).

Assumption (as in :mod:`lipzoo.bounds.proved`): float64 arithmetic in the standard model, which PyTorch's
CPU kernels (GEMM, LAPACK Cholesky) satisfy; fast (Strassen-type) products would need other constants.
If a stage cannot be certified with any slack, the whole bound falls back to the product of certified
layer norms (``prod max(|alpha|,|beta|) ||W_k||``, valid but loose) and ``details["fallback"]`` says why.
"""

from __future__ import annotations

import logging
import math

import torch

from lipzoo.bounds.eclipse_dense import SCALAR_MARGIN, _materialize, _pow2_normalize, _rescale, _up
from lipzoo.bounds.norms import output_norms
from lipzoo.bounds.structure import Structure
from lipzoo.numerics import U, gamma

logger = logging.getLogger(__name__)

__all__ = ["eclipse_bound", "MAX_SIDE", "GUARANTEE"]

MODES = ("global", "per_class", "pairwise")
MAX_SIDE = 4096
"""Default largest side of a materialized weight matrix (a convolution is materialized up to it)."""
GUARANTEE = "exact"
"""Guarantee string of :func:`eclipse_bound`: every value is certified from the dense matrices, rounding included."""
SLACKS = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 0.1)
ETAS = (1e-9, 1e-7, 1e-5, 1e-3, 1e-1)


# ----------------------------------------------------------------------------- certification

def _certify_psd(b_hat: torch.Tensor, err_scaled_fn) -> bool:
    """True only if the exact matrix ``B`` with ``||D (B - b_hat) D||_2 <= err_scaled_fn(d)`` is PSD.

    ``b_hat`` must be exactly symmetric. ``d`` is the diagonal of the power-of-two scaling ``D`` (so the
    caller bounds its error in the scaled coordinates). See the module docstring for the argument.
    """
    n = b_hat.shape[0]
    diag = b_hat.diagonal()
    if not bool(torch.isfinite(b_hat).all()) or bool((diag <= 0).any()) or not torch.equal(b_hat, b_hat.T):
        return False
    # D_ii = 2^-round(log2(sqrt(B_ii))): exact scaling, diagonal of S in [0.25, 4) roughly
    _, ex = torch.frexp(diag)
    d = torch.ldexp(torch.ones_like(diag), (-(ex // 2)).to(torch.int32))
    s_mat = d[:, None] * b_hat * d[None, :]
    # entries that left the normal range lost bits: at most 2^-1074 each, n^2 of them
    tiny = n * 2.0 ** -1074 if bool(((s_mat != 0) & (s_mat.abs() < 2.0 ** -1022)).any()) else 0.0
    e = float(err_scaled_fn(d)) + tiny
    sdiag = s_mat.diagonal()
    tr = float(sdiag.sum()) * (1 + gamma(n))
    top = float(sdiag.max())
    g = gamma(n + 1)
    c_bound = g * tr * (1 + 2 * g) / (1 - g)
    shift = _up((e + c_bound + 2 * U * top) / (1 - 4 * U), 1e-6)
    # c_bound was sized with tr(S) >= tr(fl(S - shift I)) (shift > 0); the diagonal rounding is <= u (top + shift)
    shift = _up(shift + 2 * U * shift, 1e-9)
    a = s_mat - shift * torch.eye(n, dtype=torch.float64)
    _, info = torch.linalg.cholesky_ex(a)
    return int(info) == 0


def _sym(m: torch.Tensor) -> torch.Tensor:
    """Exactly symmetric copy (lower triangle mirrored)."""
    low = torch.tril(m)
    return low + torch.tril(m, -1).T


def _stage_block(x_k, w, lam, alpha, beta, x_next):
    p = alpha * beta
    m = (alpha + beta) / 2
    n_in = x_k.shape[0]
    n_out = w.shape[0]
    # exactly symmetric: x_k is, the Gram is mirrored; with p = 0 (ReLU) the Gram is not needed
    tl = x_k + (p * lam) * _sym(w.T @ w) if p != 0 else x_k.clone()
    off = (m * lam) * w  # (n_out, n_in)
    br = lam * torch.eye(n_out, dtype=torch.float64) - x_next
    b = torch.zeros(n_in + n_out, n_in + n_out, dtype=torch.float64)
    b[:n_in, :n_in] = tl
    b[n_in:, :n_in] = -off
    b[:n_in, n_in:] = -off.T
    b[n_in:, n_in:] = br  # br is symmetric (x_next is), the off-diagonal blocks are transposes
    return b


def _stage_error_fn(b_hat, w, w_err, lam, alpha, beta):
    """Bound on ``||D (B_exact - b_hat) D||_2`` (see the module docstring)."""
    n_in = b_hat.shape[0] - w.shape[0]
    p = abs(alpha * beta)
    m = abs((alpha + beta) / 2)
    col = w.square().sum(0).sqrt() * (1 + gamma(w.shape[0] + 1))
    g_tl = 2 * gamma(w.shape[0] + 3)
    w_f = float(w.norm()) * (1 + gamma(w.numel()))

    def fn(d):
        scaled_abs = (d[:, None] * b_hat.abs() * d[None, :]).norm() * (1 + gamma(b_hat.numel() + 2))
        cd = (col * d[:n_in]).square().sum() * (1 + gamma(n_in + 2))
        e = 2 * gamma(3) * float(scaled_abs) + g_tl * p * lam * float(cd)
        if w_err:
            dmax = float(d.max())
            e += dmax * dmax * (p * lam * (2 * w_f * w_err + w_err ** 2) + m * lam * w_err)
        return _up(e, 1e-6)
    return fn


# ----------------------------------------------------------------------------- the float search

class _Chain:
    """Float64 evaluation of the closed-form chain for given ``a_k`` (no proof; the search only)."""

    def __init__(self, weights, slopes, w_out):
        self.w, self.slopes, self.w_out = weights, slopes, w_out
        self.cache: dict = {}

    @staticmethod
    def a_range(alpha, beta):
        p, m, d = alpha * beta, (alpha + beta) / 2, (beta - alpha) / 2
        hi = 1 / d ** 2
        if p < 0:
            hi = min(hi, 1 / -p)
        greedy = 1 / (d * (abs(m) + d))
        return min(greedy, hi * (1 - 1e-3)), hi

    def stage(self, k, inv_factor, a):
        """``inv_factor = (P, s)`` with ``X_k^{-1} = P diag(s) P^T`` (``P`` None: identity). Returns
        (U, nu, lam, x') of stage k for the ratio ``a``, or None if inadmissible."""
        w = self.w[k]
        hit = self.cache.get(k)  # one entry per stage: the search varies one a_k with X_k fixed
        if hit is None or hit[0] is not inv_factor:
            if inv_factor is None:
                nmat = w @ w.T
            else:
                pw = w @ inv_factor[0]
                nmat = (pw * inv_factor[1]) @ pw.T
            nu, vec = torch.linalg.eigh(_sym(nmat))
            nu = nu.clamp_min(0)
            hit = (inv_factor, nu, vec)
            self.cache[k] = hit
        _, nu, vec = hit
        alpha, beta = self.slopes[k]
        p, m = alpha * beta, (alpha + beta) / 2
        top = float(nu[-1])
        if top <= 0:
            return None
        lam = a / top
        den = 1 + p * lam * nu
        if bool((den <= 0).any()):
            return None
        xp = lam - m * m * lam * lam * nu / den
        if bool((xp <= 0).any()):
            return None
        return vec, nu, lam, xp

    def run(self, a_list, start=0, factors=None):
        """All stages from ``start`` (with the inverse factor of ``X_start``); returns (objective parts)."""
        inv = factors[start] if factors is not None else None
        facs = list(factors[:start + 1]) if factors is not None else [None]
        lams = []
        for k in range(start, len(self.w)):
            st = self.stage(k, inv, a_list[k])
            if st is None:
                return None
            vec, nu, lam, xp = st
            inv = (vec, 1 / xp)
            facs.append(inv)
            lams.append(lam)
        return facs

    def matrix(self, inv):
        q = self.w_out @ inv[0] if inv is not None else self.w_out
        s = inv[1] if inv is not None else torch.ones(q.shape[1], dtype=torch.float64)
        return _sym((q * s) @ q.T)


def _objective(mmat, mode):
    if mode == "global":
        return float(torch.linalg.eigvalsh(mmat)[-1])
    if mode == "per_class":
        return float(mmat.diagonal().sum())
    k = mmat.shape[0]
    return float(2 * k * mmat.diagonal().sum() - 2 * mmat.sum())


def _search(chain: _Chain, mode: str, sweeps: int, evals: int):
    n = len(chain.w)
    a = [chain.a_range(*chain.slopes[k])[0] for k in range(n)]
    facs = chain.run(a)
    if facs is None:
        return a, None
    best = _objective(chain.matrix(facs[-1]), mode)
    greedy = best
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(sweeps):
        improved = False
        for k in range(n):
            lo_a, hi_a = chain.a_range(*chain.slopes[k])
            lo, hi = math.log(a[k]) - math.log(20.0), math.log(hi_a * (1 - 1e-6))

            def f(t):
                trial = list(a)
                trial[k] = math.exp(t)
                fs = chain.run(trial, k, facs)
                return (math.inf, None) if fs is None else (_objective(chain.matrix(fs[-1]), mode), fs)

            x1, x2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
            f1, f2 = f(x1), f(x2)
            for _ in range(evals):
                if f1[0] <= f2[0]:
                    hi, x2, f2 = x2, x1, f1
                    x1 = hi - phi * (hi - lo)
                    f1 = f(x1)
                else:
                    lo, x1, f1 = x1, x2, f2
                    x2 = lo + phi * (hi - lo)
                    f2 = f(x2)
            cand_t, (val, fs) = (x1, f1) if f1[0] <= f2[0] else (x2, f2)
            if val < best * (1 - 1e-9):
                best, facs = val, fs
                a[k] = math.exp(cand_t)
                improved = True
        if not improved:
            break
    return a, {"objective": best, "greedy_objective": greedy}


# ----------------------------------------------------------------------------- certificate

def _certify_chain(weights, errs, slopes, a_list):
    """Build ``X_1 .. X_L`` for the ratios ``a_k`` with verified stage inequalities. Returns (X_L, info)."""
    x = torch.eye(weights[0].shape[1], dtype=torch.float64)
    used = []
    for k, (w, e_w) in enumerate(zip(weights, errs)):
        alpha, beta = slopes[k]
        p, m = alpha * beta, (alpha + beta) / 2
        # N = W X^{-1} W^T from a Cholesky factor of X (float only; the proof is the check below)
        chol, info = torch.linalg.cholesky_ex(x)
        if int(info) != 0:
            raise _Fail(f"stage {k}: X_{k} is not positive definite in float64")
        v = torch.linalg.solve_triangular(chol, w.T, upper=False)
        nu, vec = torch.linalg.eigh(_sym(v.T @ v))
        nu = nu.clamp_min(0)
        top = float(nu[-1])
        if top <= 0:
            raise _Fail(f"stage {k}: W_{k} X^-1 W_{k}^T vanishes")
        lam = a_list[k] / top
        den = 1 + p * lam * nu
        xp = lam - m * m * lam * lam * nu / den
        if bool((den <= 0).any()) or bool((xp <= 0).any()):
            raise _Fail(f"stage {k}: multiplier not admissible")
        ok = False
        for eps in SLACKS:
            x_next = _sym(((vec * (xp - eps * lam)) @ vec.T))
            b = _stage_block(x, w, lam, alpha, beta, x_next)
            if _certify_psd(b, _stage_error_fn(b, w, e_w, lam, alpha, beta)):
                ok = True
                break
        if not ok:
            raise _Fail(f"stage {k}: the stage inequality could not be certified with any slack")
        used.append(eps)
        x = x_next
    return x, used


class _Fail(Exception):
    pass


def _output_factor(x_l):
    """``C`` and the float ``c`` with ``C^T X_L C >= c I`` certified."""
    n = x_l.shape[0]
    chol, info = torch.linalg.cholesky_ex(x_l)
    if int(info) != 0:
        raise _Fail("X_L is not positive definite in float64")
    eye = torch.eye(n, dtype=torch.float64)
    c_mat = torch.linalg.solve_triangular(chol.T, eye, upper=True)  # L^{-T}
    t_hat = c_mat.T @ (x_l @ c_mat)
    abs_c = c_mat.abs()
    bound = abs_c.T @ (x_l.abs() @ abs_c)
    gam = gamma(n)
    for eta in ETAS:
        c = 1.0 - eta
        b = _sym(t_hat - c * eye)

        def fn(d, b=b):
            rel = 2 * gam * (1 + gam) ** 3 * float((d[:, None] * bound * d[None, :]).norm())
            rel *= 1 + gamma(n * n + 2 * n)
            return _up(rel + 2 * gamma(2) * float((d[:, None] * b.abs() * d[None, :]).norm()) * 1.01, 1e-6)

        if _certify_psd(b, fn):
            return c_mat, c
    raise _Fail("C^T X_L C >= c I could not be certified")


def _output_values(w_out, e_out, c_mat, c, modes):
    """Certified bounds on ``||W_L C||``-type quantities divided by ``sqrt(c)``, per mode."""
    n = c_mat.shape[0]
    q = w_out @ c_mat
    c_fro = float(c_mat.norm()) * (1 + gamma(c_mat.numel()))
    row_norms = w_out.norm(dim=1) * (1 + gamma(n + 2))
    row_err = gamma(n) * c_fro * row_norms + c_fro * e_out  # per row, absolute (||C||_2 <= ||C||_F)
    scale = 1 / math.sqrt(c)
    out = {}
    for mode in modes:
        base = output_norms(q, mode, margin=1e-12)
        if mode == "global":
            err = float(row_err.square().sum().sqrt()) * (1 + 1e-9)  # ||Q_hat - Q||_F
            val = (base + err) * scale
        elif mode == "per_class":
            val = (base + row_err) * scale
        else:
            val = (base + row_err[:, None] + row_err[None, :]) * scale
            val = val * (1 - torch.eye(val.shape[0], dtype=val.dtype))
        out[mode] = val * (1 + SCALAR_MARGIN)
    return out


def _naive(weights, errs, slopes, w_out, e_out, modes):
    """Fallback: ``prod_k slope_k (||W_k|| + e_k)`` times the output norms (each a certified bound)."""
    prod = 1.0
    for w, e, (alpha, beta) in zip(weights, errs, slopes):
        prod = _up(prod * max(abs(alpha), abs(beta)) * (float(output_norms(w, "global", 1e-12)) + e), 1e-12)
    out = {}
    for mode in modes:
        base = output_norms(w_out, mode, 1e-12) + (e_out * (2 ** 0.5 if mode == "pairwise" else 1.0))
        if mode == "pairwise":
            base = base * (1 - torch.eye(base.shape[0], dtype=base.dtype))
        out[mode] = base * prod * (1 + SCALAR_MARGIN)
    return out


# ----------------------------------------------------------------------------- entry point

def eclipse_bound(structure: Structure, modes=("pairwise",), *, max_side: int = MAX_SIDE, sweeps: int = 3,
                  evals: int = 12, return_details: bool = False):
    """Certified l2 Lipschitz bounds of a plain feed-forward structure (ECLipsE-Fast style, tuned).

    Args:
        structure: from :func:`lipzoo.bounds.structure.build_structure`, ideally of a float64 copy of the
            model (needed when a weight is a composite operator, e.g. a normalisation folded into a
            linear layer, or a convolution).
        modes: among ``"global"`` (value ``()``), ``"per_class"`` (``(K,)``) and ``"pairwise"`` (``(K, K)``,
            zero diagonal, entry ``(i, j)`` bounds the Lipschitz constant of ``z_i - z_j``).
        max_side: largest side of a weight matrix to materialize (convolutions included).
        sweeps, evals: coordinate-search sweeps over the multipliers, golden-section steps per multiplier
            (``sweeps=0``: the greedy ECLipsE-Fast-like choice, with ``p`` kept).
        return_details: also return a dict (search objectives, slacks used, fallback reason if any).

    Returns:
        ``{mode: float64 tensor}`` (and the details dict when asked). Every value is a guaranteed upper
        bound (guarantee :data:`GUARANTEE`), floating-point rounding included.

    Raises:
        TypeError: a block with a skip branch (``H``), i.e. a residual layer: the stage inequality (1)
            assumes ``x_{k+1} = G phi(W x_k)``; or a block whose ``phi`` is not coordinatewise
            (``Block.elementwise`` false): the quadratic constraint per neuron needs it.
        ValueError: unknown mode, a per-class / pairwise mode for a non-vector output, a weight with a
            side above ``max_side``, non-finite weights, a composite operator that is not float64, or
            an activation with ``alpha >= beta`` (cannot occur in a built structure).
    """
    with torch.no_grad():
        return _eclipse_bound(structure, tuple(modes), max_side, sweeps, evals, return_details)


def _eclipse_bound(structure, modes, max_side, sweeps, evals, return_details):
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if any(mode != "global" for mode in modes) and len(structure.output_shape) != 1:
        raise ValueError(f"modes {modes} need a model with (B, K) outputs; this one gives {structure.output_shape}.")
    for k, blk in enumerate(structure.blocks):
        if blk.H is not None:
            raise TypeError(f"eclipse_bound handles plain feed-forward blocks only; block {k} has a skip branch "
                            f"(a residual layer). Use method='liplt' for this network.")
        if not blk.elementwise:
            raise TypeError(f"eclipse_bound needs coordinatewise slope-restricted activations; block {k}'s is a "
                            f"Lipschitz map of the whole pre-activation (a sort, max-min, window norms). Use "
                            f"method='liplt' for this network.")
        if not (math.isfinite(blk.alpha) and math.isfinite(blk.beta)) or not blk.alpha < blk.beta:
            raise ValueError(f"block {k}: slopes [alpha, beta] = [{blk.alpha}, {blk.beta}] must be finite with "
                             f"alpha < beta.")
    L = structure.depth
    weights, errs, exps, slopes = [], [], [], []
    for k in range(L + 1):
        factors = structure.chain(k, k - 1)
        in_shape = structure.space_shape(k, k - 1)[0]
        what = "the output map" if k == L else f"the weight of block {k}"
        mat, err = _materialize(factors, in_shape, max_side, what)
        mat, err, e = _pow2_normalize(mat, err)
        weights.append(mat)
        errs.append(err)
        exps.append(e)
        if k < L:
            slopes.append((float(structure.blocks[k].alpha), float(structure.blocks[k].beta)))
    w_out, e_out = weights.pop(), errs.pop()
    details: dict = {"exponent": sum(exps)}
    zero = any(float(w.abs().max()) == 0.0 and err == 0.0 for w, err in zip(weights + [w_out], errs + [e_out]))
    if zero:  # some layer is the zero map: the network is constant
        values = {m: _zeros(mode=m, k=w_out.shape[0]) for m in modes}
        details["zero_layer"] = True
        return (values, details) if return_details else values
    values = {}
    for mode in modes:
        try:
            if L == 0:
                c_mat, c = torch.eye(w_out.shape[1], dtype=torch.float64), 1.0
                vals = _output_values(w_out, e_out, c_mat, c, (mode,))
            else:
                chain = _Chain(weights, slopes, w_out)
                a, info = _search(chain, mode, sweeps, evals)
                details[mode] = {"a": a, **(info or {})}
                try:
                    x_l, used = _certify_chain(weights, errs, slopes, a)
                except _Fail as why:  # the tuned multipliers: retry with the greedy ones
                    details[mode]["tuned_failed"] = str(why)
                    a = [_Chain.a_range(*s)[0] for s in slopes]
                    x_l, used = _certify_chain(weights, errs, slopes, a)
                details[mode]["slacks"] = used
                c_mat, c = _output_factor(x_l)
                details[mode]["c"] = c
                vals = _output_values(w_out, e_out, c_mat, c, (mode,))
        except _Fail as why:
            logger.warning("eclipse_bound: %s; falling back to the product of layer norms.", why)
            details.setdefault("fallback", {})[mode] = str(why)
            vals = _naive(weights, errs, slopes, w_out, e_out, (mode,))
        values[mode] = _rescale(vals[mode], sum(exps))
    return (values, details) if return_details else values


def _zeros(mode, k):
    if mode == "global":
        return torch.zeros((), dtype=torch.float64)
    if mode == "per_class":
        return torch.zeros(k, dtype=torch.float64)
    return torch.zeros(k, k, dtype=torch.float64)
