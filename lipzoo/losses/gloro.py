"""GloRo loss (Leino, Wang, Fredrikson, *Globally-Robust Neural Networks*, ICML 2021) on pairwise bounds.

A GloRo net appends a ``⊥`` logit that wins wherever the prediction is not certified at radius
``eps`` (Leino et al., Sec. 3, eq. for ``f^⊥``); with pairwise constants ``L`` it is

    z_⊥ = max_{j != y} (z_j + eps · L_yj),

so ``z_y > z_⊥`` iff every margin ``z_y - z_j`` exceeds ``eps · L_yj``, i.e. iff the certified
radius of eq. (4) of the CRM paper exceeds ``eps``. Training is cross-entropy over the ``K + 1``
logits ``[z, z_⊥]`` with label ``y`` (Leino et al.'s ``crossentropy``), or the TRADES form
(their ``trades_kl``, and the GloRo baseline of the CRM reference code o4lc/CRM-LipLT,
``Losses/GloRo.py``)

    CE(z, y) + λ · KL(softmax(z) ⊕ 0  ‖  softmax([z, z_⊥])) = CE(z, y) + λ · softplus(z_⊥ - logsumexp(z)),

the closed form of that KL divergence (``log Σ_{K+1} exp - log Σ_K exp``); its gradient is that of the
KL with the target not detached, as in both references. Since ``CE([z, z_⊥], y) = CE(z, y) +
softplus(z_⊥ - logsumexp(z))``, the plain loss is the TRADES form with ``λ = 1``.

``⊥`` is built from the *label* ``y`` (as the CRM reference's baseline and LiResNet's EMMA do);
Leino et al. build it from the predicted class, which is the same for every correctly classified
point. The radius ``eps`` may ramp up over a share of the run (:func:`lipzoo.losses._margin.ramped_eps`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lipzoo.bounds.radius import pairwise_radii
from lipzoo.losses._margin import RampedLoss, check_number, radius_parts

__all__ = ["bottom_logit", "gloro_loss", "GloRoLoss"]


def bottom_logit(logits: Tensor, labels: Tensor, pairwise_L: Tensor, eps: float) -> Tensor:
    """The ``⊥`` logit ``z_⊥ = max_{j != y} (z_j + eps · L_yj)``, shape ``(N,)``, differentiable in both inputs."""
    k = logits.shape[1]
    L_y = pairwise_L.to(device=logits.device, dtype=logits.dtype)[labels]  # (N, K): row y of the pairwise matrix
    is_y = F.one_hot(labels, k).bool()
    return (logits + eps * L_y).masked_fill(is_y, float("-inf")).max(dim=1).values


def gloro_loss(
    logits: Tensor,
    labels: Tensor,
    pairwise_L: Tensor,
    *,
    eps: float,
    trades_lam: float | None = None,
    return_parts: bool = False,
    validate: bool = True,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """GloRo loss at radius ``eps`` (see the module docstring for the formulas).

    * ``trades_lam=None``: ``CE([z, z_⊥], y)`` over the ``K + 1`` logits (mean over the batch);
    * ``trades_lam=λ``: ``CE(z, y) + λ · mean_n softplus(z_⊥ - logsumexp(z))``.

    Args:
        logits: ``(N, K)`` logits.
        labels: ``(N,)`` integer labels.
        pairwise_L: ``(K, K)`` pairwise Lipschitz constants (positive off the diagonal); may require grad.
        eps: training radius ``>= 0`` (input units of the model, pixels in [0, 1] for the zoo).
        trades_lam: weight ``>= 0`` of the TRADES term, or None for the plain GloRo loss.
        return_parts: also return ``ce`` (clean cross-entropy), ``robust`` (the GloRo term: the
            ``K + 1`` cross-entropy, or the KL term), ``mean_radius`` (detached mean certified radius,
            0 for misclassified points) and ``certified`` (detached share of the batch with radius > eps).
        validate: check the inputs (see :func:`lipzoo.bounds.radius.pairwise_radii`); a training loop on an
            accelerator passes False.

    Returns:
        The scalar loss, or ``(loss, parts)``.

    Raises:
        ValueError: on invalid hyper-parameters or inputs (a zero or negative ``L_yj`` included).
    """
    eps = check_number(eps, "eps", what="the GloRo radius")
    if trades_lam is not None:
        trades_lam = check_number(trades_lam, "trades_lam", what="weight of the TRADES term, or None")
    radii = pairwise_radii(logits, labels, pairwise_L, validate=validate)  # the checks; the radii feed the parts
    bottom = bottom_logit(logits, labels, pairwise_L, eps)
    ce = F.cross_entropy(logits, labels)
    if trades_lam is None:
        robust = F.cross_entropy(torch.cat([logits, bottom[:, None]], dim=1), labels)
        loss = robust
    else:
        robust = F.softplus(bottom - torch.logsumexp(logits, dim=1)).mean()
        loss = ce + trades_lam * robust
    if not return_parts:
        return loss
    return loss, {"ce": ce, "robust": robust, **radius_parts(radii, logits, labels, eps)}


class GloRoLoss(RampedLoss):
    """Module over :func:`gloro_loss` whose radius ramps up over a share of the run.

    Call :meth:`set_epoch` at the start of every epoch; epoch ``e`` trains at
    ``ramped_eps(eps, eps_ramp, epochs, e)`` (``eps`` throughout when ``eps_ramp`` is 0).

    Args:
        eps: training radius ``> 0``.
        eps_ramp: share of ``epochs`` in [0, 1] over which the radius ramps linearly up to ``eps``.
        epochs: the run's epochs (what ``eps_ramp`` is a share of).
        trades_lam: see :func:`gloro_loss`.
    """

    def __init__(self, eps: float, eps_ramp: float = 0.0, epochs: int = 1, trades_lam: float | None = None) -> None:
        super().__init__(eps, eps_ramp, epochs, what="the GloRo radius")
        self.trades_lam = None if trades_lam is None else check_number(
            trades_lam, "trades_lam", what="weight of the TRADES term, or None")

    def forward(self, logits: Tensor, labels: Tensor, pairwise_L: Tensor, return_parts: bool = False, *,
                validate: bool = True) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The loss at the current epoch's radius."""
        return gloro_loss(logits, labels, pairwise_L, eps=self.current_eps, trades_lam=self.trades_lam,
                          return_parts=return_parts, validate=validate)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, eps_ramp={self.eps_ramp}, epochs={self.epochs}, trades_lam={self.trades_lam}"
