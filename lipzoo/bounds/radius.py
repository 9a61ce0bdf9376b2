"""Certified radius from logit margins and pairwise Lipschitz constants (paper eq. 4).

If the logit difference ``z_y - z_i`` is ``L_yi``-Lipschitz (l2), then within the l2 ball of radius
``(z_y(x) - z_i(x)) / L_yi`` around ``x`` class ``i`` cannot overtake class ``y``. The minimum over
``i != y`` is the certified radius ``R(x, y)`` of eq. (4).

Convention (used throughout lipzoo): a point is *certified at eps* iff ``radius > eps`` (strict), so
a point exactly on the boundary of its certified ball counts as not certified.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipzoo.bounds.norms import round_cast

__all__ = ["pairwise_radii", "certified_radius"]


def _check_inputs(logits: Tensor, labels: Tensor, pairwise_L: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a (N, K) tensor; got {got}. Flatten or batch the logits first.")
    n, k = logits.shape
    if k < 2:
        raise ValueError(f"logits must have K >= 2 classes; got K={k}. A radius needs a competing class.")
    if not isinstance(labels, Tensor) or labels.shape != (n,):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a ({n},) tensor matching logits; got {got}.")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor; got dtype {labels.dtype}. Use labels.long().")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(
            f"labels must lie in [0, {k - 1}]; got range [{int(labels.min())}, {int(labels.max())}]."
        )
    if not isinstance(pairwise_L, Tensor) or pairwise_L.shape != (k, k):
        got = tuple(pairwise_L.shape) if isinstance(pairwise_L, Tensor) else type(pairwise_L).__name__
        raise ValueError(
            f"pairwise_L must be a ({k}, {k}) tensor (Lipschitz bound of z_i - z_j); got {got}."
        )
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN; check the model output (diverged training?).")
    if torch.isnan(pairwise_L).any():
        raise ValueError("pairwise_L contains NaN; check the Lipschitz bound computation.")
    off_diag = ~torch.eye(k, dtype=torch.bool, device=pairwise_L.device)
    # Checked on the given values; the radius is then computed in float64, so a tiny positive
    # float64 constant cannot underflow to 0 in a float32 computation.
    if (pairwise_L[off_diag] <= 0).any():
        raise ValueError(
            "pairwise_L must be positive off the diagonal; got a value <= 0. "
            "A zero Lipschitz constant would certify an infinite radius."
        )


def pairwise_radii(logits: Tensor, labels: Tensor, pairwise_L: Tensor, *, validate: bool = True,
                   margin_error: Tensor | float | None = None) -> Tensor:
    """Per-class radii ``(z_y - z_i) / L_yi`` (the terms of eq. 4), rounded down.

    Low level: ``pairwise_L`` is trusted as given. The radii are certificates only when it is a
    proved upper bound (a :class:`lipzoo.LipschitzBound` with ``guaranteed=True``; use
    :func:`lipzoo.certify.evaluate`, which checks that). Training uses this with estimates.

    The quotient is formed in float64 (so a tiny ``L`` does not underflow to 0 in the logits'
    dtype), lowered by 4 float64 ulps (covering the rounding of the subtraction and the division)
    and cast to the logits' dtype rounding toward ``-inf``: a returned radius never exceeds the
    exact quotient of the given numbers.

    Args:
        logits: ``(N, K)`` logits ``z(x)``.
        labels: ``(N,)`` integer labels ``y``.
        pairwise_L: ``(K, K)`` symmetric matrix, ``L[i, j]`` a Lipschitz constant of ``z_i - z_j``
            (the diagonal is ignored).
        margin_error: ``None`` (default, training: the logits are taken as exact), or a float or
            ``(N,)`` tensor subtracted from every margin first: ``(z_y - z_i - margin_error) / L_yi``.
            For a certificate in floating point pass ``2 E`` with ``E`` a bound on the rounding error
            of the logit differences over the ball (:func:`lipzoo.certify.rounding.margin_error_bound`).

    Returns:
        ``(N, K)`` tensor in the logits' dtype, ``+inf`` in column ``y`` of each row. Negative
        entries mean class ``i`` already beats ``y``. Differentiable in ``logits`` and ``pairwise_L``.

    Raises:
        ValueError: on wrong shapes, NaN, labels out of range or non-positive constants.
    """
    if validate:  # the checks read values on the host; a training loop on a GPU skips them
        _check_inputs(logits, labels, pairwise_L)
    n, k = logits.shape
    z = logits.to(torch.float64)
    z_y = z.gather(1, labels[:, None])
    L_y = pairwise_L.to(device=logits.device, dtype=torch.float64)[labels]  # (N, K): row y of the pairwise matrix
    is_y = torch.nn.functional.one_hot(labels, k).bool()
    # Replace the diagonal before dividing so that no 0/0 enters the autograd graph.
    safe_L = torch.where(is_y, torch.ones_like(L_y), L_y)
    margins = z_y - z
    if margin_error is not None:
        err = torch.as_tensor(margin_error, dtype=torch.float64, device=logits.device)
        if validate and (torch.isnan(err).any() or (err < 0).any()):
            raise ValueError("margin_error must be >= 0 (a bound on the rounding of the margins), without NaN.")
        err = err.reshape(-1, 1) if err.dim() else err
        # rounded up: z_y - z_i is exact or off by an ulp covered below; the subtraction of err is then
        # lowered by one more float64 ulp of the larger operand
        margins = margins - err - (margins.detach().abs() + err) * torch.finfo(torch.float64).eps
    radii = margins / safe_L
    radii = radii - radii.detach().abs() * (4 * torch.finfo(torch.float64).eps)
    return round_cast(radii, logits.dtype, float("-inf")).masked_fill(is_y, float("inf"))


def certified_radius(logits: Tensor, labels: Tensor, pairwise_L: Tensor, *, validate: bool = True,
                     margin_error: Tensor | float | None = None) -> Tensor:
    """Radius of eq. (4) from a raw tensor: ``min_{i != y} (z_y - z_i) / L_yi``; 0 when misclassified.

    Low level, for training metrics: ``pairwise_L`` is trusted as given (the trainer passes the
    power-iteration *estimate* of :class:`lipzoo.LipLTEstimator`), so the result is a certified
    radius only when ``pairwise_L`` is a proved upper bound. For certificates use
    :func:`lipzoo.certify.certified_radius` / :func:`lipzoo.certify.evaluate`, which take a
    :class:`lipzoo.LipschitzBound` and refuse estimates. Rounded down like :func:`pairwise_radii`.

    A point is certified at ``eps`` iff ``radius > eps`` (strict). A point whose prediction
    ``argmax z`` differs from ``y`` (ties included, argmax picks the first maximum) gets radius 0.

    Args:
        logits: ``(N, K)`` logits.
        labels: ``(N,)`` integer labels.
        pairwise_L: ``(K, K)`` pairwise Lipschitz constants (see :func:`pairwise_radii`).
        margin_error: subtracted from every margin (see :func:`pairwise_radii`); ``None`` treats the
            logits as exact (training).

    Returns:
        ``(N,)`` non-negative radii.
    """
    radius = pairwise_radii(logits, labels, pairwise_L, validate=validate, margin_error=margin_error).min(dim=1).values
    correct = logits.argmax(dim=1) == labels
    return torch.where(correct, radius.clamp_min(0.0), torch.zeros_like(radius))
