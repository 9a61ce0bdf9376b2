"""Certified Radius Maximization (CRM) loss, paper eqs. (5)-(6).

The loss is cross-entropy plus ``lam`` times a penalty ``g`` on the certified radius of the points
that are correctly classified and whose hard radius (eq. 4) is still below a cut-off ``r0``. As in
the reference implementation the penalty is summed over those points and divided by the *full*
batch size, so a batch with few active points is regularized less.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipzoo.bounds.radius import pairwise_radii
# Supported penalties (the recipe schema's list): ``linear`` is ``g(R_soft) = -R_soft``; ``exp`` is
# ``exp(-t R) / t`` on the hard radius.
from lipzoo.meta import G_FUNCTIONS

__all__ = ["soft_radius", "crm_loss", "CRMLoss", "G_FUNCTIONS"]


def _check_t(t: float) -> None:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(f"t must be a finite number > 0 (log-sum-exp temperature); got {t!r}. The paper uses t=5.")


def _neg_soft_radius(radii: Tensor, t: float) -> Tensor:
    """``-R_soft = (1/t) logsumexp_{i != y}(-t r_i)``; the ``+inf`` entry at ``y`` contributes ``exp(-inf) = 0``."""
    return torch.logsumexp(-t * radii, dim=1) / t


def soft_radius(logits: Tensor, labels: Tensor, pairwise_L: Tensor, t: float) -> Tensor:
    """Soft certified radius of eq. (5).

    ``R_soft(x, y) = -(1/t) log sum_{i != y} exp(-t (z_y - z_i) / L_yi)``. By Proposition 1,
    ``R_soft <= R <= R_soft + log(K - 1) / t`` where ``R`` is the (signed) minimum of eq. (4).

    Args:
        logits: ``(N, K)`` logits.
        labels: ``(N,)`` integer labels.
        pairwise_L: ``(K, K)`` pairwise Lipschitz constants.
        t: temperature ``> 0``; larger ``t`` is closer to the hard minimum.

    Returns:
        ``(N,)`` soft radii (negative for misclassified points), differentiable.

    Raises:
        ValueError: on a non-positive ``t`` or invalid inputs (see ``pairwise_radii``).
    """
    _check_t(t)
    return -_neg_soft_radius(pairwise_radii(logits, labels, pairwise_L), t)


def crm_loss(
    logits: Tensor,
    labels: Tensor,
    pairwise_L: Tensor,
    *,
    t: float = 5.0,
    lam: float = 15.0,
    r0: float | None = None,
    g: str = "linear",
    regularize: bool = True,
    return_parts: bool = False,
    validate: bool = True,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """CRM training loss (eq. 6 with the reference code's choices).

    ``loss = CE(logits, labels) + lam / N * sum_{n in active} g_n`` where a point is *active* iff it is
    correctly classified and its hard radius (eq. 4) is ``< r0`` (no cut-off when ``r0`` is None), and

    * ``g="linear"``: ``g_n = -R_soft(x_n) = (1/t) logsumexp_{i != y}(-t r_i)`` (eq. 5);
    * ``g="exp"``: ``g_n = exp(-t R(x_n)) / t`` on the hard radius.

    Args:
        logits: ``(N, K)`` logits.
        labels: ``(N,)`` integer labels.
        pairwise_L: ``(K, K)`` pairwise Lipschitz constants; may require grad (it usually does: the
            bound is a function of the weights).
        t: temperature ``> 0``.
        lam: weight ``>= 0`` of the radius penalty.
        r0: radius cut-off ``> 0`` above which points are no longer pushed, or None.
        g: ``"linear"`` or ``"exp"``.
        regularize: False gives cross-entropy only (the warm-up epochs).
        validate: check the inputs (shapes, NaN, label range, positive constants). The checks read
            values on the host; a training loop on an accelerator passes False and checks
            finiteness itself (see :mod:`lipzoo.train.trainer`).
        return_parts: also return a dict with ``ce`` and ``reg`` (attached tensors), ``mean_radius``
            (detached mean certified radius, 0 for misclassified points) and ``active`` (detached
            count of regularized points).

    Returns:
        The scalar loss, or ``(loss, parts)`` when ``return_parts``.

    Raises:
        ValueError: on invalid hyper-parameters or inputs.
    """
    _check_t(t)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0 (penalty weight); got {lam!r}.")
    if r0 is not None and (isinstance(r0, bool) or not isinstance(r0, (int, float)) or not r0 > 0):
        raise ValueError(f"r0 must be None (no cut-off) or a number > 0; got {r0!r}.")
    if g not in G_FUNCTIONS:
        raise ValueError(f"g must be one of {G_FUNCTIONS}; got {g!r}.")

    radii = pairwise_radii(logits, labels, pairwise_L, validate=validate)
    ce = F.cross_entropy(logits, labels)
    hard = radii.min(dim=1).values
    correct = logits.argmax(dim=1) == labels
    active = correct if r0 is None else correct & (hard < r0)

    if regularize:
        # Inactive rows get radius 0 *before* the penalty (exp(-t r) of a misclassified point can
        # overflow, and inf * 0 would poison the gradient with NaN), then are masked out. No
        # boolean indexing: its data-dependent shape would make the host wait for the device.
        safe = torch.where(active[:, None], radii, torch.zeros_like(radii).masked_fill(torch.isinf(radii), float("inf")))
        if g == "linear":
            per_point = _neg_soft_radius(safe, t)
        else:
            per_point = torch.exp(-t * safe.min(dim=1).values) / t
        reg = torch.where(active, per_point, torch.zeros_like(per_point)).sum() / logits.shape[0]
        loss = ce + lam * reg
    else:
        reg = ce.new_zeros(())
        loss = ce

    if not return_parts:
        return loss
    with torch.no_grad():
        mean_radius = torch.where(correct, hard.clamp_min(0.0), torch.zeros_like(hard)).mean()
    parts = {"ce": ce, "reg": reg, "mean_radius": mean_radius, "active": active.sum().detach()}
    return loss, parts


class CRMLoss(nn.Module):
    """Module over :func:`crm_loss` with a cross-entropy-only warm-up.

    Epochs are counted from 0; epochs ``0 .. warmup_epochs - 1`` use cross-entropy only. Call
    :meth:`set_epoch` at the start of every epoch.

    Args:
        t: see :func:`crm_loss`.
        lam: see :func:`crm_loss`.
        r0: see :func:`crm_loss`.
        g: see :func:`crm_loss`.
        warmup_epochs: number of cross-entropy-only epochs (the paper uses 10).
    """

    def __init__(
        self,
        t: float = 5.0,
        lam: float = 15.0,
        r0: float | None = None,
        g: str = "linear",
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0; got {warmup_epochs!r}.")
        self.t, self.lam, self.r0, self.g = t, lam, r0, g
        self.warmup_epochs = warmup_epochs
        self.epoch = 0
        # Fail at construction, not at the first batch.
        crm_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), torch.ones(2, 2), t=t, lam=lam, r0=r0, g=g)

    @property
    def regularize(self) -> bool:
        """Whether the radius penalty is on for the current epoch."""
        return self.epoch >= self.warmup_epochs

    def set_epoch(self, epoch: int) -> None:
        """Set the current (0-based) epoch, which decides the warm-up."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0; got {epoch!r}.")
        self.epoch = epoch

    def forward(
        self, logits: Tensor, labels: Tensor, pairwise_L: Tensor, return_parts: bool = False, *,
        regularize: bool | None = None, validate: bool = True,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The loss; ``regularize`` overrides the warm-up decision of the current epoch."""
        return crm_loss(
            logits, labels, pairwise_L, t=self.t, lam=self.lam, r0=self.r0, g=self.g,
            regularize=self.regularize if regularize is None else regularize, return_parts=return_parts,
            validate=validate,
        )

    def extra_repr(self) -> str:
        return f"t={self.t}, lam={self.lam}, r0={self.r0}, g={self.g!r}, warmup_epochs={self.warmup_epochs}"
