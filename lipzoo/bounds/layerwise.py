"""Per-layer product bounds: ``method="naive"`` (eq. 11) and ``method="lt_sdp"`` (Theorem 2 per layer).

Each block's Lipschitz constant is bounded on its own from operator norms (:func:`_single_norm`: exact or
proved, or a power-iteration estimate) and the bound of the network is their product (:func:`layerwise`).
"""

from __future__ import annotations

from typing import cast

import torch

from lipzoo.bounds.norms import NormResult, chain_norm, mul_up, reference_tensor
from lipzoo.bounds.structure import Structure, numel
from lipzoo.layers.operators import DiagonalOp, compose

__all__ = ["layerwise", "naive_layer", "sdp_layer"]


def _single_norm(op, in_shape, norm: str, max_dense: int | None, n_iter: int, generator=None) -> NormResult:
    if norm == "power":
        x = torch.randn(1, *in_shape, generator=generator, dtype=torch.float64)
        ref = reference_tensor(Structure([], op, tuple(in_shape), op.out_shape(in_shape)))
        x = (x / x.norm()).to(ref.device, ref.dtype if ref.numel() else torch.float64)
        for _ in range(n_iter):
            # normalized after each side (not after A^T A): weights of 1e-160 would underflow A^T A x to 0
            y = op.forward(x)
            y = y / y.norm() if bool(y.norm() > 0) else y
            x = op.adjoint(y, in_shape)
            x = x / x.norm() if bool(x.norm() > 0) else x
        return NormResult(op.forward(x).norm(), "estimate")
    limit = cast(int, max_dense) if norm == "auto" else 10**12  # the caller resolves the default
    return chain_norm([op], in_shape, max_dense=limit)


def layerwise(structure, layer_bound):
    """Product of per-layer Lipschitz constants ``layer_bound(block) -> (value, guarantees)``."""
    m, per_layer, kinds = [], [], []
    total = torch.tensor(1.0, dtype=torch.float64)
    for blk in structure.blocks:
        lk, k = layer_bound(blk)
        kinds.extend(k)
        per_layer.append(float(lk))
        total = total.to(lk) * lk
        m.append(total)
    return total, m, {"per_layer": per_layer}, kinds


def naive_layer(norm, max_dense, n_iter, gen):
    """Eq. (11): ``||H|| + max(|alpha|, |beta|) ||G|| ||W||``."""
    def bound(blk):
        w = _single_norm(blk.W, blk.x_shape, norm, max_dense, n_iter, gen)
        g = _single_norm(blk.G, blk.y_shape, norm, max_dense, n_iter, gen) if blk.G is not None else None
        h = _single_norm(blk.H, blk.x_shape, norm, max_dense, n_iter, gen) if blk.H is not None else None
        wg = mul_up(w.value, g.value) if g is not None else w.value
        lk = mul_up(wg, abs(blk.slope)) + (h.value if h is not None else 0.0)
        return lk, [r.guarantee for r in (w, g, h) if r is not None]
    return bound


def sdp_layer(norm, max_dense, n_iter, gen, choice):
    """Theorem 2 (l2): ``||H + (a+b)/2 G W|| + (b-a)/2 ||W^T T W||^{1/2}`` with diagonal ``T >= G^T G``.

    ``T`` choices: ``sn`` (``||G||^2 I``, gives back eq. 13), ``aol`` (``T_ii = sum_j |G^T G|_ij``),
    ``sll`` (``T_ii = sum_j |G^T G|_ij q_j / q_i`` with ``q`` the Perron vector of ``|G^T G|``) or
    ``best`` (the smallest of the three, each being valid). AOL and SLL need ``G`` as a dense
    matrix; when its input side exceeds ``max_dense`` they fall back to SN, and so does a block whose ``phi`` is
    not coordinatewise (``Block.elementwise`` false), for which only ``T = ||G||^2 I`` is valid.
    """
    def bound(blk):
        hhat = _single_norm(blk.H_hat(), blk.x_shape, norm, max_dense, n_iter, gen)
        kinds = [hhat.guarantee]
        if blk.d == 0:
            return hhat.value, kinds
        candidates = []
        n_y = numel(blk.y_shape)
        coordinatewise = choice != "sn" and n_y <= max_dense and blk.elementwise
        if not coordinatewise or choice == "best":
            g = _single_norm(blk.G, blk.y_shape, norm, max_dense, n_iter, gen).value if blk.G is not None else 1.0
            w = _single_norm(blk.W, blk.x_shape, norm, max_dense, n_iter, gen)
            candidates.append(mul_up(w.value, g))
            kinds.append(w.guarantee)
        if coordinatewise:
            for t_sqrt in _dense_T(blk, choice):
                sq = DiagonalOp(t_sqrt.reshape(blk.y_shape))
                r = _single_norm(compose(sq, blk.W), blk.x_shape, norm, max_dense, n_iter, gen)
                candidates.append(r.value)
                kinds.append(r.guarantee)
        best = torch.stack([torch.as_tensor(c).to(hhat.value) for c in candidates]).min()
        return hhat.value + mul_up(best, blk.d), kinds
    from lipzoo.bounds.norms import mul_up  # products of tiny norms must not round to 0
    return bound


def _dense_T(blk, choice):
    """Square roots ``sqrt(T)`` of diagonal(s) ``T >= G^T G`` of the AOL / SLL kind, as vectors over the
    pre-activation space.

    ``G`` is scaled by a power of two ``2**-e`` (largest entry in ``[0.5, 1)``) before its Gram matrix is
    formed, and ``sqrt(T)`` scaled back by ``2**e`` (exact): ``G`` with entries 1e-160 would give a Gram of
    zeros and ``T = 0``, and entries 1e160 an infinite one.
    """
    from lipzoo.bounds.norms import ldexp, pow2_exponent
    ref = reference_tensor(Structure([blk], None, blk.x_shape, blk.next_shape))
    n_y = numel(blk.y_shape)
    if blk.G is None:
        return [torch.ones(n_y, dtype=ref.dtype, device=ref.device)]
    eye = torch.eye(n_y, dtype=ref.dtype, device=ref.device).reshape(n_y, *blk.y_shape)
    cols = blk.G.forward(eye).reshape(n_y, -1)  # row i = G e_i
    e = pow2_exponent(cols)
    cols = ldexp(cols, -e)
    gram = (cols @ cols.T).abs()  # |G^T G| 2**-2e
    out = []
    if choice in ("aol", "best"):
        out.append(gram.sum(1))
    if choice in ("sll", "best"):
        q = torch.ones(n_y, dtype=gram.dtype, device=gram.device)
        for _ in range(100):  # Perron vector of the non-negative matrix |G^T G|
            q = gram @ q + 1e-30
            q = q / q.norm()
        q = q.clamp_min(torch.finfo(q.dtype).tiny)
        out.append((gram @ q) / q)
    # scaled back after the square root: sqrt(T) 2**e is representable wherever G's entries are
    return [ldexp(t.sqrt(), e) for t in out]
