"""Hinge-Kantorovich-Rubinstein (HKR) loss (Serrurier, Mamalet, González-Sanz, Boissin, Loubes, del Barrio,
*Achieving robustness in classification using optimal transport with hinge regularization*, CVPR 2021),
with margins in radius units.

deel-torchlip's ``HKRMulticlassLoss`` (``deel/torchlip/functional.py``: ``hkr_multiclass_loss``) trains
a network that is 1-Lipschitz by construction: ``α · hinge - (1 - α) · KR`` on the logits, where the
hinge asks every logit to lie ``min_margin / 2`` on the right side of 0 and the KR term is the
Wasserstein-1 dual estimate ``E_{class k}[z_k] - E_{not k}[z_k]``, averaged over classes. lipzoo's
networks are not 1-Lipschitz; what the LipLT accountant gives is a constant ``L_yj`` per logit
difference, and the function ``r_j(x) = (z_y(x) - z_j(x)) / L_yj`` *is* 1-Lipschitz, so it is the
quantity HKR's premise needs. lipzoo's HKR therefore acts on these radius-unit margins (the terms of
the certified radius, eq. 4 of the CRM paper), one-vs-one:

    hinge_n = mean_{j != y} max(0, min_margin - r_j(x_n))
    kr_n    = mean_{j != y} r_j(x_n)
    loss    = α · mean_n hinge_n - (1 - α) · mean_n kr_n

Why this form and not HKR on the raw logits: (1) on logits, neither term knows the network's
Lipschitz constant, so the loss could be lowered by scaling the logits up with nothing certified
(deel-torchlip relies on its layers to prevent that); in radius units the gradient also reaches
``L`` and the hinge's ``min_margin`` is the radius to certify, in input units like ``eps``;
(2) a difference of logits is invariant to a shift of all logits, as the classifier is. With
``L_yj = 1`` and a class-balanced batch, ``kr_n`` equals deel-torchlip's per-sample KR term
(``z_y - mean_{j != y} z_j``). The mean over the batch replaces the per-class means of the KR estimate
(no batch statistics: a DDP rank's loss is a plain mean like the others').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lipzoo.bounds.radius import pairwise_radii
from lipzoo.losses._margin import EpochLoss, check_number, mean_radius

__all__ = ["hkr_loss", "HKRLoss"]


def hkr_loss(
    logits: Tensor,
    labels: Tensor,
    pairwise_L: Tensor,
    *,
    min_margin: float,
    alpha: float = 0.99,
    return_parts: bool = False,
    validate: bool = True,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """HKR loss on the radius-unit margins ``r_j = (z_y - z_j) / L_yj`` (see the module docstring).

    Args:
        logits: ``(N, K)`` logits.
        labels: ``(N,)`` integer labels.
        pairwise_L: ``(K, K)`` pairwise Lipschitz constants (positive off the diagonal); may require grad.
        min_margin: the hinge's margin ``> 0``, a radius (input units, like ``eps``).
        alpha: weight in [0, 1] of the hinge against the KR term (deel-torchlip's examples use 0.99).
        return_parts: also return ``hinge`` and ``kr`` (attached batch means) and ``mean_radius``
            (detached mean certified radius, 0 for misclassified points).
        validate: check the inputs (see :func:`lipzoo.bounds.radius.pairwise_radii`).

    Returns:
        The scalar loss, or ``(loss, parts)``.

    Raises:
        ValueError: on invalid hyper-parameters or inputs (a zero or negative ``L_yj`` included: the
            margins divide by it).
    """
    min_margin = check_number(min_margin, "min_margin", low_open=True, what="the hinge margin, a radius")
    alpha = check_number(alpha, "alpha", high=1.0, what="weight of the hinge against the KR term")
    radii = pairwise_radii(logits, labels, pairwise_L, validate=validate)  # r_j, +inf in column y
    k = logits.shape[1]
    others = ~F.one_hot(labels, k).bool()
    r = torch.where(others, radii, torch.zeros_like(radii))  # no inf in the graph
    hinge = torch.where(others, F.relu(min_margin - r), torch.zeros_like(r)).sum(dim=1).div(k - 1).mean()
    kr = r.sum(dim=1).div(k - 1).mean()
    loss = alpha * hinge - (1.0 - alpha) * kr
    if not return_parts:
        return loss
    return loss, {"hinge": hinge, "kr": kr, "mean_radius": mean_radius(radii, logits, labels)}


class HKRLoss(EpochLoss):
    """Module over :func:`hkr_loss` (no schedule; :meth:`set_epoch` is accepted for the trainer).

    Args:
        min_margin: see :func:`hkr_loss`.
        alpha: see :func:`hkr_loss`.
    """

    def __init__(self, min_margin: float, alpha: float = 0.99) -> None:
        super().__init__()
        self.min_margin = check_number(min_margin, "min_margin", low_open=True, what="the hinge margin, a radius")
        self.alpha = check_number(alpha, "alpha", high=1.0, what="weight of the hinge against the KR term")

    def forward(self, logits: Tensor, labels: Tensor, pairwise_L: Tensor, return_parts: bool = False, *,
                validate: bool = True) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The loss."""
        return hkr_loss(logits, labels, pairwise_L, min_margin=self.min_margin, alpha=self.alpha,
                        return_parts=return_parts, validate=validate)

    def extra_repr(self) -> str:
        return f"min_margin={self.min_margin}, alpha={self.alpha}"
