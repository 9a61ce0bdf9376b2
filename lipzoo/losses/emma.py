"""EMMA loss (Hu, Zou, Wang, Leino, Fredrikson, Datta, *Unlocking Deterministic Robustness Certification on
ImageNet*, NeurIPS 2023) on pairwise bounds.

EMMA ("efficient margin maximization") is cross-entropy on logits in which every competitor is
moved up by the margin it would need at its *own* current radius, capped at ``eps``:

    ε_j = clip((z_y - z_j) / (eps · L_yj), FLOOR, 1) · eps        (detached; FLOOR = 0.01)
    z̃_j = z_j + ε_j · L_yj   (j != y),      z̃_y = z_y
    loss = CE(z̃, y)

A pair already certified beyond ``eps`` gets the full GloRo margin ``eps · L_yj``; a pair that is
close or wrong gets a small one (``FLOOR · eps · L_yj``), so the points the network cannot yet
certify do not dominate the gradient. ``ε_j`` is detached and ``L_yj`` is not, as in LiResNet's
``emma_loss`` (hukkai/liresnet, ``models/margin_layer.py``), where ``L_yj = lc · ‖W_y - W_j‖``; here it is the
pairwise constant of the LipLT estimator. The quotient's denominator is floored at
``DENOMINATOR_FLOOR`` as there, so ``eps = 0`` gives plain cross-entropy. LiResNet ramps its
training radius from 0.1 to 3 times the certified one over the first half of the run; here the
radius and its ramp are the recipe's (:func:`lipzoo.losses._margin.ramped_eps`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lipzoo.bounds.radius import pairwise_radii
from lipzoo.losses._margin import RampedLoss, check_number, radius_parts

__all__ = ["emma_logits", "emma_loss", "EMMALoss", "FLOOR", "DENOMINATOR_FLOOR"]

FLOOR = 0.01
"""Smallest share of ``eps`` a competitor's margin gets (LiResNet's clip)."""
DENOMINATOR_FLOOR = 1e-8
"""Floor of ``eps · L_yj`` in the quotient (LiResNet's), so that ``eps = 0`` or ``L_yj = 0`` divide safely."""


def emma_logits(logits: Tensor, labels: Tensor, pairwise_L: Tensor, eps: float) -> Tensor:
    """The margin-adjusted logits ``z̃`` (see the module docstring), shape ``(N, K)``."""
    k = logits.shape[1]
    L_y = pairwise_L.to(device=logits.device, dtype=logits.dtype)[labels]  # (N, K): row y
    is_y = F.one_hot(labels, k).bool()
    margins = logits.gather(1, labels[:, None]) - logits  # z_y - z_j
    with torch.no_grad():
        share = (margins / (eps * L_y).clamp_min(DENOMINATOR_FLOOR)).clamp(FLOOR, 1.0)
    return logits + torch.where(is_y, torch.zeros_like(L_y), share * eps * L_y)


def emma_loss(
    logits: Tensor,
    labels: Tensor,
    pairwise_L: Tensor,
    *,
    eps: float,
    return_parts: bool = False,
    validate: bool = True,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """EMMA loss ``CE(z̃, y)`` at radius ``eps`` (mean over the batch; see the module docstring).

    Args:
        logits: ``(N, K)`` logits.
        labels: ``(N,)`` integer labels.
        pairwise_L: ``(K, K)`` pairwise Lipschitz constants (positive off the diagonal); may require grad.
        eps: training radius ``>= 0``.
        return_parts: also return ``ce`` (clean cross-entropy), ``robust`` (the EMMA cross-entropy, the
            loss itself), ``mean_radius`` (detached mean certified radius, 0 for misclassified points) and
            ``certified`` (detached share of the batch with radius > eps).
        validate: check the inputs (see :func:`lipzoo.bounds.radius.pairwise_radii`).

    Returns:
        The scalar loss, or ``(loss, parts)``.

    Raises:
        ValueError: on invalid hyper-parameters or inputs (a zero or negative ``L_yj`` included).
    """
    eps = check_number(eps, "eps", what="the EMMA radius")
    radii = pairwise_radii(logits, labels, pairwise_L, validate=validate)
    loss = F.cross_entropy(emma_logits(logits, labels, pairwise_L, eps), labels)
    if not return_parts:
        return loss
    with torch.no_grad():
        ce = F.cross_entropy(logits, labels)
    return loss, {"ce": ce, "robust": loss, **radius_parts(radii, logits, labels, eps)}


class EMMALoss(RampedLoss):
    """Module over :func:`emma_loss` whose radius ramps up over a share of the run (see :class:`GloRoLoss`).

    Args:
        eps: training radius ``> 0``.
        eps_ramp: share of ``epochs`` in [0, 1] over which the radius ramps linearly up to ``eps``.
        epochs: the run's epochs.
    """

    def __init__(self, eps: float, eps_ramp: float = 0.0, epochs: int = 1) -> None:
        super().__init__(eps, eps_ramp, epochs, what="the EMMA radius")

    def forward(self, logits: Tensor, labels: Tensor, pairwise_L: Tensor, return_parts: bool = False, *,
                validate: bool = True) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The loss at the current epoch's radius."""
        return emma_loss(logits, labels, pairwise_L, eps=self.current_eps, return_parts=return_parts,
                         validate=validate)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, eps_ramp={self.eps_ramp}, epochs={self.epochs}"
