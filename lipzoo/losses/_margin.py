"""What the Lipschitz-margin losses (GloRo, EMMA, hinge-KR) share: checks, the ε ramp, the epoch.

Each of them takes ``(logits, labels, pairwise_L)`` with ``pairwise_L[i, j]`` a Lipschitz constant
of ``z_i - z_j`` (the trainer passes the differentiable :class:`lipzoo.LipLTEstimator` estimate) and
reads its row ``y`` only; the diagonal is ignored.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["check_number", "ramped_eps", "mean_radius", "radius_parts", "EpochLoss", "RampedLoss"]


def check_number(value: object, name: str, *, low: float = 0.0, low_open: bool = False, high: float | None = None,
                 what: str = "") -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name``, the range and what came."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low) and (high is None or value <= high))
    if not ok:
        bounds = f"{'>' if low_open else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
        raise ValueError(f"{name} must be a finite number {bounds}{f' ({what})' if what else ''}; got {value!r}.")
    return float(value)  # type: ignore[arg-type]  # a checked int or float


def ramped_eps(eps: float, ramp: float, epochs: int, epoch: int) -> float:
    """The training radius of ``epoch`` (0-based) when ``eps`` ramps up over a ``ramp`` share of ``epochs``.

    ``W = ceil(ramp * epochs)`` epochs ramp linearly, epoch ``e`` training at ``eps * min(1, (e + 1) / W)``
    (``eps / W`` first, ``eps`` from epoch ``W - 1`` on); ``ramp = 0`` trains at ``eps`` throughout. A share
    of the run rather than a count of epochs, like Leino et al.'s ``linear_half`` schedule and LiResNet's
    ramp over the first half, so that it scales with ``recipe.epochs`` and with a time budget's fit.
    """
    ramp_epochs = math.ceil(ramp * epochs - 1e-9)
    if ramp_epochs <= 0:
        return eps
    return eps * min(1.0, (epoch + 1) / ramp_epochs)


def mean_radius(radii: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """Detached mean certified radius of the batch (eq. 4, 0 for misclassified points), from ``pairwise_radii``."""
    with torch.no_grad():
        hard = radii.min(dim=1).values
        correct = logits.argmax(dim=1) == labels
        return torch.where(correct, hard.clamp_min(0.0), torch.zeros_like(hard)).mean()


def radius_parts(radii: Tensor, logits: Tensor, labels: Tensor, eps: float) -> dict[str, Tensor]:
    """The detached training reports of a loss at radius ``eps``: ``mean_radius`` (:func:`mean_radius`) and
    ``certified``, the share of the batch whose radius (from ``pairwise_radii``) exceeds ``eps``."""
    with torch.no_grad():
        certified = (radii.min(dim=1).values > eps).to(logits.dtype).mean()
    return {"mean_radius": mean_radius(radii, logits, labels), "certified": certified}


class EpochLoss(nn.Module):
    """A loss the trainer drives epoch by epoch (:meth:`set_epoch`), without a cross-entropy warm-up.

    ``regularize`` is always True: GloRo and EMMA ramp their radius instead (see :func:`ramped_eps`),
    hinge-KR has no schedule.
    """

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    @property
    def regularize(self) -> bool:
        """Always True: these losses have no cross-entropy-only epochs."""
        return True

    def set_epoch(self, epoch: int) -> None:
        """Set the current (0-based) epoch, which decides the radius of a ramp."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0; got {epoch!r}.")
        self.epoch = epoch


class RampedLoss(EpochLoss):
    """An :class:`EpochLoss` at a radius ``eps`` that ramps up over a share ``eps_ramp`` of ``epochs``.

    Epoch ``e`` trains at ``ramped_eps(eps, eps_ramp, epochs, e)`` (:attr:`current_eps`).
    """

    def __init__(self, eps: float, eps_ramp: float, epochs: int, *, what: str) -> None:
        super().__init__()
        self.eps = check_number(eps, "eps", low_open=True, what=what)
        self.eps_ramp = check_number(eps_ramp, "eps_ramp", high=1.0, what="share of the epochs the radius ramps over")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1 (the run's, which eps_ramp is a share of); got {epochs!r}.")
        self.epochs = epochs

    @property
    def current_eps(self) -> float:
        """The radius of the current epoch."""
        return ramped_eps(self.eps, self.eps_ramp, self.epochs, self.epoch)
