"""What a run proves about a Lipschitz bound from below: the check a stored bound must pass before it is used.

The Lipschitz constant of a logit (difference) is at least the norm of its gradient at any point; and the exact
LipLT value, which ``liplt`` and ``naive`` bounds are at least (Theorem 3), is at least the recursion at estimates
from below of every inner norm. A stored bound (the cache, a shipped certificate) below either is corrupt.
"""

from __future__ import annotations

import torch
from torch import nn

from lipzoo.bounds.certificate import LipschitzBound
from lipzoo.bounds.lanczos import lanczos_estimates
from lipzoo.bounds.norms import output_norms, reference_tensor
from lipzoo.bounds.recursion import liplt_recursion, output_rows
from lipzoo.bounds.structure import Structure

__all__ = ["FLOOR_RTOL", "floors", "gradient_floors", "below_floor"]

FLOOR_RTOL = 1e-6
"""Relative slack under which a stored bound is compared with this run's floor: the floor's own rounding
(float32 Lanczos estimates are lowered by ESTIMATE_MARGIN = 1e-4 already; gradient norms in float64 are off by
~1e-13), so only a bound genuinely below what the run proves from below is called corrupt."""


def floors(net: nn.Module, structure: Structure, modes, *, method: str, norm: str, seed: int,
            steps: int = 20, points: int = 4) -> dict:
    """What this run proves from below about every mode's value, cheaply: the Lipschitz constant is at least
    the norm of the gradient of each logit difference at any point (``points`` seeded random inputs, float64);
    and for ``liplt`` / ``naive`` (both at least the exact LipLT value, Theorem 3) the LipLT recursion at
    Lanczos estimates from below of every inner norm (``steps`` batched steps). Empty for estimates."""
    if norm == "power":
        return {}
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    ref = reference_tensor(structure)
    floors = {m: v for m, v in gradient_floors(net, structure, modes, gen, points).items()}
    if method in ("liplt", "naive") and norm != "lanczos":
        keys = [(t, j) for t in range(structure.depth) for j in range(-1, t)]
        with torch.no_grad():
            est = lanczos_estimates(structure, keys, steps, int(seed) + 7919, ref.device) if keys else {}
            inner = {k: torch.tensor(v, dtype=torch.float64) for k, v in est.items()}
            rows = output_rows(structure, range(-1, structure.depth))
            for m in modes:
                final = {j: output_norms(r.double(), m) for j, r in rows.items()}
                below = liplt_recursion(structure, inner, final)[0].detach().cpu().double()
                floors[m] = torch.maximum(floors[m], below) if m in floors else below
    return floors


def gradient_floors(net: nn.Module, structure: Structure, modes, gen, points: int) -> dict:
    """Per mode, the largest gradient norm of the bounded quantity at ``points`` random inputs (float64)."""
    ref = reference_tensor(structure)
    with torch.enable_grad():
        x = torch.rand(points, *structure.input_shape, generator=gen, dtype=torch.float64).to(ref.device)
        x.requires_grad_(True)
        z = net(x.to(ref.dtype) if ref.numel() else x).double().reshape(points, -1)
        k = z.shape[1]
        jac = torch.stack([torch.autograd.grad(z[:, i].sum(), x, retain_graph=i + 1 < k)[0].reshape(points, -1)
                           for i in range(k)], 1)  # (points, K, n)
    jac = jac.detach().cpu()
    out = {}
    for m in modes:
        if m == "global":
            out[m] = torch.linalg.matrix_norm(jac, 2).max()
        elif m == "per_class":
            out[m] = jac.norm(dim=2).max(0).values
        else:
            out[m] = (jac[:, :, None, :] - jac[:, None, :, :]).norm(dim=3).max(0).values
    return out


def below_floor(bound: LipschitzBound, floor) -> str | None:
    """Why ``bound`` cannot be right (it is below ``floor`` somewhere), or None."""
    if floor is None or not bound.guaranteed and bound.guarantee != "probabilistic":
        return None
    value = bound.value.double()
    floor = torch.as_tensor(floor, dtype=torch.float64).reshape(value.shape) * (1 - FLOOR_RTOL)
    bad = value < floor
    if bound.mode == "pairwise":
        bad &= ~torch.eye(value.shape[0], dtype=torch.bool)
    if not bool(bad.any()):
        return None
    i = int(bad.reshape(-1).nonzero()[0])
    return (f"{value.reshape(-1)[i].item():.6g} at entry {i} is below {floor.reshape(-1)[i].item():.6g}, which this "
            "run proves from below")
