"""Exact certified norms of chains from their Gram matrices: one chain alone, or many sharing a small side.

A chain ``S`` with a small side of ``n`` dimensions has the ``n x n`` Gram matrix ``S^T S`` (or ``S S^T``),
formed here in float64 with a proved bound on its rounding (every vector carries one: :mod:`lipzoo.bounds.steps`)
and certified by a Cholesky factorization (:mod:`lipzoo.bounds.eigen`):

* :func:`certified_chain_norm`: one chain, through the operator and its adjoint (``n`` identity vectors), or,
  when the chain is local (convolutions and scalings), through probed block-tridiagonal Gram matrices
  (:mod:`lipzoo.bounds.banded`);
* :func:`group_gram`: several chains that share their small side, in one sweep of its identity basis; each
  chain's Gram matrix is formed at the level of the sweep where the cost model (:mod:`lipzoo.bounds.cost`)
  says it is cheapest.

The work of each (:func:`chain_work`, and the level choice of :func:`group_gram`) is counted from shapes only.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from lipzoo.bounds.banded import certified_local_norm, local_plan, local_work
from lipzoo.bounds.cost import LOCAL_MAX_BYTES, MAX_BYTES, apply_work, cholesky_work, gemm_work
from lipzoo.bounds.eigen import certify_gram, upper_product
from lipzoo.bounds.steps import (FactorBounds, Step, basis, basis_channels, gram_steps, run_tracked,
                                 transpose_steps)
from lipzoo.layers.operators import LinearOperator
from lipzoo.numerics import gamma

Shape = tuple[int, ...]

logger = logging.getLogger(__name__)

__all__ = ["certified_chain_norm", "chain_work", "group_gram", "useful_local_plan"]


def useful_local_plan(steps: list[Step], shape: Shape, n: int):
    """The local plan (:mod:`lipzoo.bounds.banded`) of the Gram operator ``steps`` when it saves sweeps (fewer
    probes than ``n``) or factorization (several blocks), else ``None``: when :func:`certified_chain_norm`
    takes the local path."""
    plan = local_plan(steps, shape)
    return plan if plan is not None and (plan.probes < n or plan.blocks > 1) else None


def chain_work(factors: list[LinearOperator], in_shape: Shape, bounds: FactorBounds | None = None, *,
               max_side: int | None = None, local_max_bytes: float = LOCAL_MAX_BYTES) -> float:
    """Work units of :func:`certified_chain_norm` on this chain (``inf`` when it would refuse: a dense side above
    ``max_side``, or local blocks of which not one part fits ``local_max_bytes``): the probes (local path) or the
    identity vectors of the smaller side (dense path) through the Gram operator, and the factorization."""
    steps, shape, n = gram_steps(factors, in_shape, bounds)
    plan = useful_local_plan(steps, shape, n)
    if plan is not None:
        return local_work(plan, steps, local_max_bytes)
    if max_side is not None and n > max_side:
        return math.inf
    return apply_work(steps, n) + cholesky_work(n ** 3 / 3)


def certified_chain_norm(factors: list[LinearOperator], in_shape: Shape, *, chunk: int = 256,
                         generator: torch.Generator | None = None, device=None, max_side: int | None = None,
                         local: bool = True, local_max_bytes: float = LOCAL_MAX_BYTES,
                         bounds: FactorBounds | None = None) -> float | None:
    """A proved upper bound on ``||factors[0] ... factors[-1]||`` that is exact up to ~1e-7 relative.

    A *local* chain (convolutions, scalings, their sums and adjoints: :mod:`lipzoo.bounds.banded`) is
    certified through probed, block-tridiagonal Gram matrices when that needs fewer sweeps or smaller
    factorizations (``local=False``: never), within ``local_max_bytes`` of blocks whatever its side. Otherwise
    the Gram matrix of the smaller side is formed block by block as ``S^T S E`` (or ``S S^T E``) for
    identity blocks ``E`` in float64 (memory ``n^2`` for the smaller side ``n``), with a proved bound on
    each column's rounding error (:func:`lipzoo.bounds.steps.run_tracked`), then certified by
    :func:`lipzoo.bounds.eigen.certified_lambda_max`. Returns ``None`` when the smaller side is above
    ``max_side`` (the matrix would not fit: one of 8C2F's operators has ``n = 57,600``, 26.5 GB).
    """
    steps, shape, n = gram_steps(factors, in_shape, bounds)
    plan = useful_local_plan(steps, shape, n) if local else None
    if plan is not None:
        return certified_local_norm(steps, plan, chunk=chunk, generator=generator, device=device,
                                    max_bytes=local_max_bytes)
    if max_side is not None and n > max_side:
        return None
    gram = torch.empty(n, n, dtype=torch.float64, device=device)
    col_err = torch.empty(n, dtype=torch.float64, device=device)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        y, err = run_tracked(steps, basis(a, b, n, shape, device), torch.zeros(b - a, dtype=torch.float64,
                                                                                device=device),
                             basis_channels(a, b, n, shape))
        gram[a:b] = y.reshape(b - a, n)
        col_err[a:b] = err
    return certify_gram(gram, col_err, generator)


def _sweep_block(steps, stops, x, err, keep=None, channels=None):
    """One block of a group sweep (see :func:`group_gram`); ``channels`` as in :func:`run_tracked`, for ``x``.

    Returns ``levels`` (``{index: (x, err)}``: the state after ``index`` steps, for the indices in ``keep``, all
    visited ones when ``keep`` is None) and ``rows`` (``{key: (y, err)}``: the key's rows and their proved error
    bounds)."""
    levels, rows = {}, {}
    i = 0
    while i <= len(steps):
        if keep is None or i in keep:
            levels[i] = (x, err)
        skip = None
        for key, extra in stops.get(i, []):
            y, e2 = run_tracked(extra, x, err, channels if i == 0 else None)
            rows[key] = (y, e2)
            # Hhat_t = c W_t (no skip branch): continue from W_t's output instead of applying W_t again
            if extra and len(steps) - i >= len(extra) and all(
                    a.op is b.op and a.adjoint == b.adjoint for a, b in zip(extra, steps[i:])):
                skip = (len(extra), y, e2)
        if skip is not None:
            i, x, err = i + skip[0], skip[1], skip[2]
            continue
        if i < len(steps):
            x, err = run_tracked([steps[i]], x, err, channels if i == 0 else None)
        i += 1
    return levels, rows


def _walk(steps: list[Step], stops: dict) -> tuple[list[int], dict]:
    """The levels a group sweep visits (:func:`_sweep_block`, without running it) and each key's stop index: a
    key whose extra steps are the sweep's next steps (``Hhat_t = c W_t``) lets the sweep continue from its rows."""
    visited, where = [], {}
    i = 0
    while i <= len(steps):
        visited.append(i)
        skip = None
        for key, extra in stops.get(i, []):
            where[key] = i
            if extra and len(steps) - i >= len(extra) and all(
                    a.op is b.op and a.adjoint == b.adjoint for a, b in zip(extra, steps[i:])):
                skip = len(extra)
        i += skip if skip is not None else 1
    return visited, where


def _width(steps: list[Step], level: int, shape: Shape) -> int:
    """Dimension of the sweep's state after ``level`` steps."""
    if level == 0:
        return math.prod(shape)
    last = steps[level - 1]
    return math.prod(last.in_shape if last.adjoint else last.op.out_shape(last.in_shape))


def _rows_width(extra: list[Step], steps: list[Step], level: int, shape: Shape) -> int:
    if not extra:
        return _width(steps, level, shape)
    last = extra[-1]
    return math.prod(last.in_shape if last.adjoint else last.op.out_shape(last.in_shape))


def group_gram(steps_to_keys, n: int, shape: Shape, *, chunk: int, device, generator,
               max_bytes: float = MAX_BYTES, gemm_only: bool = False,
               force_level=None, estimates: dict | None = None, report=None) -> dict:
    """Exact certified norms of several chains that share their small side (one sweep for all).

    ``steps_to_keys``: ``(steps, stops)`` with ``steps`` a list of :class:`~lipzoo.bounds.steps.Step` applied in
    order starting from the shared small space, and ``stops`` mapping an index ``i`` (after ``i`` steps) to
    a list of ``(key, extra_steps)``: the chain of ``key`` is ``extra_steps`` after the first ``i``
    steps. The sweep pushes the ``n`` identity vectors ``E`` of the small side through, block by block,
    and gives per chain ``A`` its rows ``M = A E``. The ``n x n`` Gram matrix ``M M^T`` is formed at a
    *level* ``s`` of the sweep chosen per chain: with ``X_s`` the sweep's state after ``s`` steps and ``P``
    the part of the chain after it (``M = P X_s``), ``M M^T = X_s Z^T`` with ``Z = P^T P X_s``, i.e. the rows
    go back through ``P^T`` to level ``s`` (``n`` passes of ``P^T``) and meet ``X_s`` in a GEMM of
    ``2 n^2 m_s`` flops (``m_s`` the dimension there). ``s = 0`` (``X_0 = E``) needs no GEMM at all (the
    returned rows are the Gram matrix), the chain's own ``M`` (``P = I``) no return pass; in between, e.g.
    going back through one convolution to a space 4x smaller than the source, is often cheapest. The
    choice minimizes the work of the cost model (:mod:`lipzoo.bounds.cost`: return passes and GEMM, from the
    shapes), with the stored ``X_s`` (shared by the chains using the same level) within ``max_bytes``.

    Rounding: every primitive's rounding is propagated by :func:`~lipzoo.bounds.steps.run_tracked`, so each
    computed row has a proved error bound against the exact one: ``||x_b - X_s e_b|| <= d_b`` and
    ``||z_b - Z e_b|| <= z_b``. With ``dX = X_hat - X`` and ``dZ = Z_hat - Z``:
    ``X_hat Z_hat^T - X Z^T = dX Z_hat^T + X dZ^T``, so ``||.||_F <= ||dX||_F ||Z_hat||_F +
    (||X_hat||_F + ||dX||_F) ||dZ||_F`` with ``||dX||_F <= sqrt(sum d_b^2)``; the GEMM adds
    ``|fl(X_hat Z_hat^T) - X_hat Z_hat^T| <= gamma_{m_s} |X_hat| |Z_hat|^T``, at most
    ``gamma_{m_s} ||X_hat||_F ||Z_hat||_F`` in Frobenius norm. At ``s = 0`` (``X_hat = E`` exact, no GEMM) this
    is ``||dZ||_F``; for the chain's own rows (``Z_hat = X_hat = M_hat``) it is
    ``||dM||_F (2 ||M_hat||_F + ||dM||_F) + gamma_m ||M_hat||_F^2``. :func:`~lipzoo.bounds.eigen.certify_gram`
    then adds the symmetrization. Computed Frobenius norms are inflated by ``1 + 1e-6`` (their own relative
    rounding is below ``gamma`` of the number of entries, < 1e-7 for the sizes used).

    ``gemm_only``: every chain from its own rows. ``force_level`` (tests): ``"own"`` or an index ``s``, the
    deepest visited level ``<= s`` for every chain. ``estimates``: filled with the square roots of the Lanczos
    Ritz values (estimates from below, for reports). ``report(done, total)`` is called after each block
    (progress bars).
    """
    steps, stops = steps_to_keys
    nb = math.ceil(n / chunk)
    visited, where = _walk(steps, stops)
    extras = {key: extra for i in stops for key, extra in stops[i]}
    # candidate levels per chain: (work units, level, width there); "own": its rows, GEMM
    cands: dict = {}
    for key, i in where.items():
        extra = extras[key]
        m_own = _rows_width(extra, steps, i, shape)
        cands[key] = [(gemm_work(n, n, m_own), "own", m_own)]
        if gemm_only:
            continue
        for s in visited:
            if s <= i:
                m_s = _width(steps, s, shape)
                back = apply_work(steps[s:i] + extra, n)
                cands[key].append((back + (0.0 if s == 0 else gemm_work(n, n, m_s)), s, m_s))
        if force_level is not None:
            cands[key] = [c for c in cands[key] if c[1] == "own"] if force_level == "own" else \
                [max((c for c in cands[key] if c[1] != "own" and c[1] <= force_level), key=lambda c: c[1])]

    def memory(assign) -> float:
        """Bytes held: per chain its returned rows (n x width), once per shared level its stored X_s."""
        shared = {c[1]: c[2] for c in assign.values() if c[1] != "own" and c[1] != 0}
        return 8.0 * n * (sum(c[2] for c in assign.values()) + sum(shared.values()))

    # start from the cheapest-memory choice of each chain, then take the move that saves most while it fits
    # (ties broken by the order of the candidates: a function of the shapes only)
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
        logger.debug("  %s: own rows %d wide, GEMM %.3g units; level %s (%d wide, %.3g units)", k,
                     cands[k][0][2], cands[k][0][0], c[1], c[2], c[0])
    back_steps = {key: transpose_steps(steps[level:where[key]] + extras[key])
                  for key, level in choice.items() if level != "own"}
    xs: dict = {s: [] for s in stored_levels}  # stored states X_s (rows) and their error bounds
    zs: dict = {k: [] for k in where}  # per chain: rows Z (or its own M) and their error bounds
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        levels, rows = _sweep_block(
            steps, stops, basis(start, stop, n, shape, device),
            torch.zeros(stop - start, dtype=torch.float64, device=device), keep=stored_levels,
            channels=basis_channels(start, stop, n, shape))
        for s in stored_levels:
            x, e = levels[s]
            xs[s].append((x.reshape(stop - start, -1), e))
        for key, (y, e2) in rows.items():
            if choice[key] == "own":
                zs[key].append((y.reshape(stop - start, -1), e2))
            else:
                z, ez = run_tracked(back_steps[key], y, e2)
                zs[key].append((z.reshape(stop - start, -1), ez))
        del levels, rows
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
            gram = upper_product(x, z)
            # mirrored entries: the error matrix has each upper entry twice, so its norm grows by <= sqrt(2)
            err = math.sqrt(2) * (dx * fz + (fx + dx) * dz + gamma(x.shape[1] + 1) * fx * fz) * (1 + 1e-15)
        del z
        info: dict = {}
        out[key] = certify_gram(gram, err, generator, symmetric=level != 0, info=info)
        if estimates is not None:
            estimates[key] = math.sqrt(max(info.get("ritz", 0.0), 0.0))
    logger.debug("  sweep %.2fs, Gram products and certificates %.2fs", t1 - t0, time.perf_counter() - t1)
    return out
