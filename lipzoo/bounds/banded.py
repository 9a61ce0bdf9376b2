"""Certified norms of local chains: probed Gram matrices, block-tridiagonal Cholesky certificates.

A chain of convolutions is *local*: a pixel of the Gram matrix's side reaches only pixels a few rows
and columns away. :func:`lipzoo.bounds.gram.certified_chain_norm` pushes all ``n`` identity
vectors of the smaller side through ``S^T S`` and factors an ``n x n`` matrix (``n^3 / 3`` flops: 68 s for
6C2F's ``n = 16,384``; 8C2F's ``n = 57,600`` does not fit in memory). Locality makes both parts cheap:

1. **Reach** (:func:`gram_reach`): interval arithmetic on every primitive (convolution, its adjoint,
   scalings, sums, compositions) gives, for each source row/column index, an interval that contains
   every output row/column its Gram column can be non-zero in (exact arithmetic). Operators of any
   other kind (dense maps, flattening, padding modes) make the chain non-local: ``None``.
2. **Probing** (Curtis-Powell-Reid): sources whose reach boxes are disjoint share one probe vector.
   With period ``P`` per axis such that intervals of indices ``P, 2P, ...`` apart never meet, the probe
   ``1_K`` of class ``K = (c, h mod P_h, w mod P_w)`` returns ``G 1_K``, and column ``p`` of ``G`` is that
   result restricted to ``p``'s box (no other source of ``K`` reaches there). ``C P_h P_w`` probes instead of
   ``n = C H W``.
3. **Block-tridiagonal certificate**: ordered row-block-major (blocks of ``B`` image rows, ``B`` at least
   the largest reach), ``G`` is block tridiagonal. ``tau I - G`` is factored block by block
   (Cholesky of each Schur complement, triangular solves for the coupling blocks), ``nb (m^3/3 + 2 m^3)``
   flops for ``nb`` blocks of ``m`` rows instead of ``(nb m)^3 / 3``. Blocks that do not fit in memory are
   factored in parts (:meth:`LocalPlan.passes`), each decoded from its own sweep of all probes.

Rounding: every probe result has a proved error bound (:func:`lipzoo.bounds.steps.run_tracked`); the
decoded columns of a probe are disjoint pieces of its result, so ``||G_hat - G||_F^2 <= sum_K d_K^2``, and
the entries left out are zero in ``G`` exactly (step 1). The block factorization computes every entry of
the Cholesky factor by the usual formula ``r_ij = (a_ij - sum_k r_ki r_kj) / r_ii``, with the sum split
into the part from the previous block (GEMM) and the rest (LAPACK) and the entries outside the block
band exact zeros: Higham's backward error bound ``|dA| <= gamma_{N+1} |R^T| |R|`` holds for any order of
summation, so the argument of :func:`lipzoo.bounds.eigen.certify_by_shifts` holds for it unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from lipzoo.bounds.cost import LOCAL_MAX_BYTES, apply_work, cholesky_work
from lipzoo.bounds.eigen import certify_by_shifts, cholesky, lanczos_top
from lipzoo.bounds.steps import Step, run_tracked
from lipzoo.bounds.structure import numel
from lipzoo.numerics import U

logger = logging.getLogger(__name__)

__all__ = ["gram_reach", "LocalPlan", "local_plan", "certified_local_norm", "local_work", "certified_block_lambda_max"]

Shape = tuple[int, ...]


# ----------------------------------------------------------------------------- reach (interval arithmetic)

def gram_reach(steps: list[Step], shape: Shape):
    """Per axis, ``(lo, hi)`` (one entry per source index) bounding where the Gram operator ``steps`` (from
    the space ``shape = (C, H, W)`` back to it) can be non-zero: column ``(c, h, w)`` of its matrix vanishes
    outside rows ``[lo_h[h], hi_h[h]] x [lo_w[w], hi_w[w]]`` (all channels). ``None`` when a step is not local.
    """
    if len(shape) != 3:
        return None
    out = []
    for axis in (0, 1):
        lo = hi = torch.arange(shape[1 + axis])
        for st in steps:
            r = st.op.reach(st.in_shape, st.adjoint, lo, hi, axis)
            if r is None:
                return None
            lo, hi = r
        out.append((lo, hi))
    return out


def _period(lo: torch.Tensor, hi: torch.Tensor) -> int:
    """Smallest ``P`` such that the intervals of any two sources a multiple of ``P`` apart are disjoint."""
    n = lo.numel()
    for period in range(1, n):
        if all(bool(((hi[:-d] < lo[d:]) | (hi[d:] < lo[:-d])).all()) for d in range(period, n, period)):
            return period
    return n


def _owners(lo: torch.Tensor, hi: torch.Tensor, period: int) -> torch.Tensor:
    """``owner[a, i]``: the source ``j = a (mod period)`` whose interval holds ``i`` (unique), or -1."""
    n = lo.numel()
    owner = torch.full((period, n), -1, dtype=torch.long)
    for j in range(n):
        if lo[j] <= hi[j]:
            seg = owner[j % period, int(lo[j]):int(hi[j]) + 1]
            if (seg >= 0).any():  # _period guarantees this never happens; a certificate must not rely on it
                raise AssertionError("probing classes overlap")
            seg.fill_(j)
    return owner


# ----------------------------------------------------------------------------- the plan

@dataclass
class LocalPlan:
    """How a local chain's Gram matrix is probed and blocked."""

    shape: Shape  # the Gram matrix's side, (C, H, W)
    periods: tuple[int, int]  # probing period along rows and columns
    block_rows: int  # image rows per block
    owners: tuple[torch.Tensor, torch.Tensor]  # per axis, owner[a, i] (see _owners)

    @property
    def probes(self) -> int:
        return self.shape[0] * self.periods[0] * self.periods[1]

    @property
    def blocks(self) -> int:
        return math.ceil(self.shape[1] / self.block_rows)

    @property
    def block_size(self) -> int:
        return self.block_rows * self.shape[0] * self.shape[2]

    def factor_flops(self) -> float:
        """Flops of one block-tridiagonal Cholesky (Schur GEMM, Cholesky and triangular solve per block)."""
        m = self.block_size
        return self.blocks * m ** 3 / 3 + (self.blocks - 1) * 2 * m ** 3

    def bytes(self) -> float:
        """float64 memory of the diagonal and coupling blocks."""
        return 8.0 * (2 * self.blocks - 1) * self.block_size ** 2

    def passes(self, max_bytes: float) -> int:
        """Sweeps of all probes needed to factor within ``max_bytes`` (0: not even one block fits).

        One pass holds all blocks when they fit. Otherwise each pass decodes ``k`` consecutive diagonal
        blocks and their couplings to the block before, and carries the factorization on from the previous
        pass's last factor: ``(2k + 4)`` blocks with the carried factor and the factorization's work space."""
        if self.bytes() <= max_bytes:
            return 1
        k = int((max_bytes / (8.0 * self.block_size ** 2) - 4) // 2)
        return math.ceil(self.blocks / k) if k >= 1 else 0


def local_plan(steps: list[Step], shape: Shape) -> LocalPlan | None:
    """The probing/blocking plan of the Gram operator ``steps`` on ``shape``, or ``None`` if not local."""
    reach = gram_reach(steps, shape)
    if reach is None:
        return None
    (lo_h, hi_h), (lo_w, hi_w) = reach
    rows = torch.arange(shape[1])
    live = lo_h <= hi_h
    width = int(torch.maximum(rows - lo_h, hi_h - rows)[live].max()) if bool(live.any()) else 0
    periods = (_period(lo_h, hi_h), _period(lo_w, hi_w))
    return LocalPlan(tuple(shape), periods, min(max(width, 1), shape[1]),
                     (_owners(lo_h, hi_h, periods[0]), _owners(lo_w, hi_w, periods[1])))


# ----------------------------------------------------------------------------- block-tridiagonal matrices

class _BlockTridiagonal:
    """Symmetric ``[[D0, E0^T, ...], [E0, D1, E1^T, ...], ...]`` (``D``: ``nb x m x m``, ``E``: ``nb-1 x m x m``);
    ``@`` multiplies a column block ``(nb m, k)``, enough for :func:`lipzoo.bounds.eigen.lanczos_top`."""

    def __init__(self, diag: torch.Tensor, low: torch.Tensor):
        self.diag, self.low = diag, low
        nb, m = diag.shape[0], diag.shape[1]
        self.shape = (nb * m, nb * m)
        self.dtype, self.device = diag.dtype, diag.device

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        nb, m = self.diag.shape[0], self.diag.shape[1]
        xb = x.reshape(nb, m, -1)
        y = torch.bmm(self.diag, xb)
        if nb > 1:
            y[1:] += torch.bmm(self.low, xb[:-1])
            y[:-1] += torch.bmm(self.low.transpose(1, 2), xb[1:])
        return y.reshape(nb * m, -1)


class _GramOperator:
    """The Gram operator ``steps`` on column vectors of ``shape``'s dimension (for :func:`lanczos_top`)."""

    def __init__(self, steps: list[Step], shape: Shape, device):
        n = numel(shape)
        self.steps, self.space, self.shape = steps, tuple(shape), (n, n)
        self.dtype, self.device = torch.float64, device

    def __matmul__(self, q: torch.Tensor) -> torch.Tensor:
        x = q.T.reshape(q.shape[1], *self.space)
        for st in self.steps:
            x = st(x)
        return x.reshape(q.shape[1], -1).T


def _blockcholesky(diag: torch.Tensor, low: torch.Tensor, tau: float,
                    factor: torch.Tensor | None = None) -> torch.Tensor | None:
    """Continue the float64 block Cholesky factorization of ``tau I - G`` over the diagonal blocks ``diag``:
    ``low[i]`` couples ``diag[i + 1]`` to ``diag[i]``, or, after the last ``factor`` of an earlier part,
    ``low[i]`` couples ``diag[i]`` to the block before it. The last factor, or ``None`` on a breakdown."""
    shift = 0 if factor is not None else -1
    for k in range(diag.shape[0]):
        a = diag[k].neg()
        a.diagonal().add_(tau)  # tau I - D, each entry rounded as in tau * eye - D (off the diagonal: exact)
        if factor is not None:
            # the coupling block of tau I - G is -E: X R_prev^T = -E, then the Schur complement A - X X^T; X is
            # solved from E instead (negation is exact, and X X^T the same bits), in place: fewer m x m blocks
            x = torch.linalg.solve_triangular(factor.T, low[k + shift], upper=True, left=False)
            factor = None
            a.addmm_(x, x.T, alpha=-1)
            del x
        factor = cholesky(a)
        del a
        if factor is None:
            return None
    return factor


def _block_cholesky_succeeds(diag: torch.Tensor, low: torch.Tensor, tau: float) -> bool:
    """Whether the float64 block Cholesky factorization of ``tau I - G`` runs to completion."""
    return _blockcholesky(diag, low, tau) is not None


def certified_block_lambda_max(diag: torch.Tensor, low: torch.Tensor, *,
                               deltas=(1e-7, 1e-5, 1e-3, 1e-2, 0.1, 1.0, 10.0),
                               generator: torch.Generator | None = None, info: dict | None = None,
                               estimate: tuple[float, float] | None = None) -> float:
    """A proved upper bound on the largest eigenvalue of the symmetric block-tridiagonal float64 matrix
    with diagonal blocks ``diag`` and sub-diagonal blocks ``low``: the shifted Cholesky certificate of
    :func:`lipzoo.bounds.eigen.certify_by_shifts`, with the block factorization.

    ``estimate``: ``(Ritz value, its relative progress over the last steps)`` from elsewhere (it only
    chooses the shifts tried); by default Lanczos on the blocks."""
    if not (torch.isfinite(diag).all() and torch.isfinite(low).all()):
        raise ValueError("certified_block_lambda_max: the matrix has non-finite entries")
    d = diag.diagonal(dim1=1, dim2=2).reshape(-1)
    lam, moved = lanczos_top(_BlockTridiagonal(diag, low), 64, generator, with_progress=True) \
        if estimate is None else estimate
    lam = max(lam, float(d.max().clamp_min(0)))
    if info is not None:
        info["ritz"] = lam * (1 - 1e-6)

    def gershgorin() -> float:
        rows = diag.abs().sum(2)
        if diag.shape[0] > 1:
            rows[1:] += low.abs().sum(2)
            rows[:-1] += low.abs().sum(1)
        return float(rows.max())

    return certify_by_shifts(d, lam, lambda tau: _block_cholesky_succeeds(diag, low, tau), gershgorin,
                              deltas=deltas, start_delta=min(2 * moved, 1e-3),
                              what=f"{diag.shape[0]} blocks of {diag.shape[1]}")


# ----------------------------------------------------------------------------- the certificate

def _probe_block(plan: LocalPlan, start: int, stop: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe vectors ``start..stop-1`` (class ``(c, a, b)`` in that order) as a ``(k, C, H, W)`` batch, and the
    channel each one is non-zero in."""
    c, h, w = plan.shape
    ph, pw = plan.periods
    idx = torch.arange(start, stop)
    ch, a, b = idx // (ph * pw), (idx // pw) % ph, idx % pw
    rows = (torch.arange(h)[None, :] % ph) == a[:, None]
    cols = (torch.arange(w)[None, :] % pw) == b[:, None]
    x = torch.zeros(stop - start, c, h, w, dtype=torch.float64)
    x[torch.arange(stop - start), ch] = (rows[:, :, None] & cols[:, None, :]).double()
    return x.to(device), ch


def _decode_into(plan: LocalPlan, start: int, y: torch.Tensor, diag: torch.Tensor, low: torch.Tensor,
                 first: int = 0) -> float:
    """Scatter the columns held by probe results ``y`` (probes ``start, ...``) into the symmetrized blocks
    (each entry ``G_hat[r, q]`` adds half to ``(r, q)`` and half to ``(q, r)``: ``(G_hat + G_hat^T) / 2``).
    Returns the sum of squares of the entries held (``||G_hat||_F^2`` over these columns).

    ``diag`` holds the diagonal blocks ``first, first + 1, ...`` and ``low`` the coupling blocks ``low[j]``
    (block ``j + 1`` to block ``j``) for ``j = max(first - 1, 0), ...``: a pass of a factorization in parts
    (:meth:`LocalPlan.passes`); entries of other blocks are left out. Vectorized over all ``(probe, row)``
    pairs: rows outside every source's box carry the value 0 to a valid slot (adding an exact 0 changes
    nothing)."""
    c, h, w = plan.shape
    ph, pw = plan.periods
    br, m = plan.block_rows, plan.block_size
    dev = y.device
    own_h, own_w = (o.to(dev) for o in plan.owners)
    k = y.shape[0]
    idx = torch.arange(start, start + k, device=dev)
    ch, a, b = idx // (ph * pw), (idx // pw) % ph, idx % pw
    src_h, src_w = own_h[a], own_w[b]  # (k, H), (k, W): the source each row/column belongs to, or -1
    valid = (src_h >= 0)[:, None, :, None] & (src_w >= 0)[:, None, None, :]
    vals = torch.where(valid, y, 0.0)
    # block and in-block index of a row (c, h, w) and of its source: blocks of br image rows, ordered (h, c, w)
    rows = torch.arange(h, device=dev)
    ib = (rows // br)[None, None, :, None]
    ii = (((rows % br)[None, :] * c + torch.arange(c, device=dev)[:, None]) * w)[None, :, :, None] \
        + torch.arange(w, device=dev)[None, None, None, :]
    sh, sw = src_h.clamp_min(0), src_w.clamp_min(0)
    jb = (sh // br)[:, None, :, None]
    ji = (((sh % br) * c)[:, None, :, None] + ch[:, None, None, None]) * w + sw[:, None, None, :]
    d = ib - jb
    if bool((valid & (d.abs() > 1)).any()):  # block_rows >= every reach: never; must not be silent
        raise AssertionError("an entry outside the block band")
    half = vals / 2
    mm = m * m
    # a diagonal block holds both (i, j) and (j, i); a coupling block only the one below the diagonal:
    # (i, j) below is low[jb][ii, ji], above it is low[ib][ji, ii] (where its mirror (j, i) lives)
    # index_add_: atomic adds on CUDA, in no fixed order, which changes nothing here: every entry receives
    # its two halves and otherwise exact zeros (index_put_(accumulate=True) sorts the indices on CUDA first:
    # 74 of the 79 s of 8C2F's S(6,3) on an H100; on the CPU index_add_ is faster as well)
    nd, lo = diag.shape[0], max(first - 1, 0)
    held = (jb >= first) & (jb < first + nd)
    on = torch.where((d == 0) & held, half, 0.0).reshape(-1)
    jd = (jb - first).clamp(0, max(nd - 1, 0))
    diag.view(-1).index_add_(0, (jd * mm + ii * m + ji).expand_as(half).reshape(-1), on)
    diag.view(-1).index_add_(0, (jd * mm + ji * m + ii).expand_as(half).reshape(-1), on)
    if low.numel():
        j = torch.minimum(ib, jb)  # the coupling block of the pair of blocks
        jl = (j - lo).clamp(0, low.shape[0] - 1)
        off = torch.where((d.abs() == 1) & (j >= lo) & (j < lo + low.shape[0]), half, 0.0).reshape(-1)
        slot = torch.where(d == 1, jl * mm + ii * m + ji, torch.where(d == -1, jl * mm + ji * m + ii, 0))
        low.view(-1).index_add_(0, slot.expand_as(half).reshape(-1), off)
    return float(vals.square().sum())


def certified_local_norm(steps: list[Step], plan: LocalPlan, *, chunk: int = 256,
                         max_bytes: float = LOCAL_MAX_BYTES, generator: torch.Generator | None = None, device=None,
                         info: dict | None = None) -> float | None:
    """Proved ``sqrt(lambda_max)`` of the Gram operator ``steps`` (``S^T S`` or ``S S^T`` on ``plan.shape``).

    When all blocks do not fit in ``max_bytes``, the factorization runs in parts (:meth:`LocalPlan.passes`),
    each part after a sweep of all probes that keeps only its blocks; the sweeps' rounding bounds all add
    up (each entry factored comes from one of them). Returns ``None`` without allocating any block when not
    even one part fits. The work is :func:`local_work`; whether to spend it is the caller's decision."""
    passes = plan.passes(max_bytes)
    if passes == 0:
        return None
    if passes > 1:
        return _certified_in_parts(steps, plan, passes, chunk=chunk, generator=generator, device=device, info=info)
    t0 = time.perf_counter()
    sums = {"sq_err": 0.0, "sq_norm": 0.0, "decode": 0.0}
    diag, low = _sweep_blocks(steps, plan, 0, plan.blocks, chunk, sums, device)
    t1 = time.perf_counter()
    # the shifts' starting point from Lanczos on the operator itself: one sweep per step, much less memory
    # traffic than a product with the blocks (0.08 s each for 6 blocks of 3072). 128 steps: after 64, 6C2F's
    # S_{2,0} was still 5e-8 below, so the first shift (1e-7) failed and cost a whole factorization (4 s)
    estimate = lanczos_top(_GramOperator(steps, plan.shape, device), LANCZOS_STEPS, generator, with_progress=True)
    lam = certified_block_lambda_max(diag, low, generator=generator, info=info, estimate=estimate) + _gram_error(sums)
    logger.debug("  local chain: %d probes for side %d (%.2fs, decoding %.2fs), %d blocks of %d certified in %.2fs",
                 plan.probes, numel(plan.shape), t1 - t0 - sums["decode"], sums["decode"], plan.blocks,
                 plan.block_size, time.perf_counter() - t1)
    return math.nextafter(math.sqrt(lam) * (1 + 2 * U), math.inf)


LANCZOS_STEPS = 128
"""Lanczos steps on the Gram operator that choose the first shift of a local certificate."""


def local_work(plan: LocalPlan, steps: list[Step], max_bytes: float = LOCAL_MAX_BYTES) -> float:
    """Work units (:mod:`lipzoo.bounds.cost`) of :func:`certified_local_norm`: every pass sweeps all probes, one
    block factorization, and the Lanczos estimate; ``inf`` when not even one part fits in ``max_bytes``."""
    passes = plan.passes(max_bytes)
    if passes == 0:
        return math.inf
    return apply_work(steps, passes * plan.probes + LANCZOS_STEPS) + cholesky_work(plan.factor_flops())


def _gram_error(sums: dict) -> float:
    """``||G_hat - G||_F`` from the probes' bounds; the symmetrization rounds each entry once (relative u)."""
    return math.sqrt(sums["sq_err"]) * (1 + 1e-6) + 2 * U * math.sqrt(sums["sq_norm"]) * (1 + 1e-6)


def _sweep_blocks(steps, plan: LocalPlan, first: int, stop: int, chunk: int, sums: dict, device,
                  diagonal: torch.Tensor | None = None):
    """Every probe through ``steps``, keeping the diagonal blocks ``first .. stop - 1`` and their couplings to
    the block before (:func:`_decode_into`); the probes' squared error bounds and norms added to ``sums``, and
    when ``diagonal`` is given, ``G_hat``'s diagonal added to it (each entry from its own probe)."""
    m = plan.block_size
    blocks = (torch.zeros(stop - first, m, m, dtype=torch.float64, device=device),
              torch.zeros(max(stop - max(first, 1), 0), m, m, dtype=torch.float64, device=device))
    for start in range(0, plan.probes, chunk):
        end = min(start + chunk, plan.probes)
        x, channels = _probe_block(plan, start, end, device)
        y, err = run_tracked(steps, x, torch.zeros(end - start, dtype=torch.float64, device=device), channels)
        td = time.perf_counter()
        sums["sq_err"] += float(err.double().square().sum())
        if diagonal is not None:  # a probe is 1 exactly at its sources: y x is G_hat_qq there, 0 elsewhere
            diagonal.add_((y * x).sum(0).reshape(-1))
        sub = max(1, (1 << 21) // numel(plan.shape))  # bounds the index tensors of one scatter (~100 MB)
        for i in range(0, y.shape[0], sub):
            sums["sq_norm"] += _decode_into(plan, start + i, y[i:i + sub], *blocks, first=first)
        sums["decode"] += time.perf_counter() - td
    return blocks


def _certified_in_parts(steps, plan: LocalPlan, passes: int, *, chunk, generator, device, info):
    """:func:`certified_local_norm` with the factorization in ``passes`` parts, one sweep of all probes each.

    The shifted Cholesky certificate of :func:`lipzoo.bounds.eigen.certify_by_shifts` needs ``G_hat``'s
    diagonal before the first factorization: it comes from the first sweep (each ``G_hat_qq`` read where its
    probe is 1), and every later sweep's blocks must hold exactly those values (else the attempt fails: the
    certificate would be about another matrix). A failed shift repeats every sweep."""
    nb, m = plan.blocks, plan.block_size
    per = math.ceil(nb / passes)
    parts = [(k, min(k + per, nb)) for k in range(0, nb, per)]
    t0 = time.perf_counter()
    sums = {"sq_err": 0.0, "sq_norm": 0.0, "decode": 0.0}
    n = numel(plan.shape)
    order = torch.zeros(n, dtype=torch.float64, device=device)  # G_hat_qq in the (c, h, w) order of the side
    held = [_sweep_blocks(steps, plan, *parts[0], chunk, sums, device, diagonal=order)]
    # the same entries in the blocks' order (h, c, w) within blocks of block_rows image rows
    c, h, w = plan.shape
    grid = torch.zeros(c, plan.block_rows * nb, w, dtype=torch.float64, device=device)  # whole blocks
    grid[:, :h] = order.reshape(c, h, w)
    diagonal = grid.reshape(c, nb, plan.block_rows, w).permute(1, 2, 0, 3).reshape(-1)
    sweeps = [1]

    def factors(tau: float) -> bool:
        factor = None
        for first, stop in parts:
            blocks = held.pop() if held else None
            if blocks is None:
                blocks = _sweep_blocks(steps, plan, first, stop, chunk, sums, device)
                sweeps[0] += 1
            diag, low = blocks
            if not torch.equal(diag.diagonal(dim1=1, dim2=2).reshape(-1), diagonal[first * m:stop * m]):
                logger.debug("    a sweep's diagonal differs from the first's: no certificate from this one")
                return False
            factor = _blockcholesky(diag, low, tau, factor)
            del blocks, diag, low
            if factor is None:
                return False
        return True

    t1 = time.perf_counter()
    lam, moved = lanczos_top(_GramOperator(steps, plan.shape, device), LANCZOS_STEPS, generator, with_progress=True)
    lam = max(lam, float(diagonal.max().clamp_min(0)))
    if info is not None:
        info["ritz"] = lam * (1 - 1e-6)
    top = certify_by_shifts(diagonal, lam, factors, lambda: math.inf, deltas=(1e-7, 1e-5, 1e-3, 1e-2, 0.1),
                             start_delta=min(2 * moved, 1e-3), what=f"{nb} blocks of {m} in {len(parts)} parts")
    held.clear()
    if not math.isfinite(top):
        return None
    lam = top + _gram_error(sums)
    logger.debug("  local chain: %d probes for side %d, %d blocks of %d in %d parts certified in %.2fs: %d sweeps of "
                 "the probes (the first %.2fs; decoding %.2fs in all) and the factorizations", plan.probes, n, nb, m,
                 len(parts), time.perf_counter() - t0, sweeps[0], t1 - t0, sums["decode"])
    return math.nextafter(math.sqrt(lam) * (1 + 2 * U), math.inf)
