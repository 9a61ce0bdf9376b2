"""L2 projected gradient descent (PGD): an empirical *upper* bound on robust accuracy.

A successful attack at ``eps`` proves a point is not robust at ``eps``; a failed one proves nothing.
It is the adversarial counterpart of the certified radius, which proves robustness: a point certified
at ``eps`` must never be broken by an attack at ``eps`` (``lipzoo.certify.metrics.evaluate`` checks it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["margin_loss", "pgd_l2"]

# Project onto a ball this much smaller than eps so that float rounding in ``x + delta`` rarely
# pushes a perturbation outside the eps-ball; ``_enforce_ball`` catches the rest.
_SHRINK = 1.0 - 1e-6


def margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample ``max_{i != y} z_i - z_y``: positive iff the point is misclassified."""
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    is_y = torch.nn.functional.one_hot(labels, logits.shape[1]).bool()
    return logits.masked_fill(is_y, float("-inf")).max(dim=1).values - z_y


def _flat_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _project(x: Tensor, delta: Tensor, radius: float) -> Tensor:
    """Project ``delta`` onto the l2 ball of ``radius`` (not the sphere); return ``x + delta`` clamped to [0, 1]."""
    norm = _flat_norm(delta)
    delta = delta * torch.clamp(radius / norm.clamp_min(1e-30), max=1.0)
    # Clamping moves each coordinate towards x, so it never increases the norm.
    return torch.clamp(x + delta, 0.0, 1.0)


def _ball_norm(x: Tensor, x_adv: Tensor) -> Tensor:
    """The float64 l2 norm of ``x_adv - x`` per sample: the one test of "inside the ball" (see ``_enforce_ball``)."""
    return (x_adv - x).flatten(1).double().norm(dim=1)


def _enforce_ball(x: Tensor, x_adv: Tensor, eps: float) -> Tensor:
    """Guard against float rounding: shrink the rare perturbation whose computed norm exceeds eps."""
    for attempt in range(21):
        norm = _ball_norm(x, x_adv)
        over = norm > eps
        if not over.any():
            break
        if attempt == 20:  # unreachable in practice; the clean input is always inside the ball
            x_adv[over] = x[over]
            break
        scale = (eps / norm[over] * (1 - 1e-4)).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        x_adv[over] = torch.clamp(x[over] + (x_adv[over] - x[over]) * scale, 0.0, 1.0)
    return x_adv


def _random_start(x: Tensor, radius: float, generator: torch.Generator | None) -> Tensor:
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    scale = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return _project(x, direction / _flat_norm(direction).clamp_min(1e-30) * radius * scale, radius)


def pgd_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 50,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    stop_when_broken: bool = False,
) -> Tensor:
    """L2 PGD maximizing the margin loss ``max_{i != y} z_i - z_y``.

    Each step moves ``step_size`` along the l2-normalized gradient, projects onto the ball
    ``||delta|| <= eps`` and clamps pixels to [0, 1]. Every iterate (and the clean input itself) is
    scored; per sample the highest-margin-loss one across all steps and restarts is returned. The
    model's mode is left unchanged (call ``model.eval()`` first) and its parameter gradients are not
    touched.

    With ``stop_when_broken=True`` a sample leaves the batch at the first iterate (or the clean input)
    that the model misclassifies and that lies inside the ball (float64 norm ``<= eps``); that iterate
    is returned for it. The samples of a batch do not interact (an eval-mode model, per-sample
    losses), so the others follow the same trajectories as without it, and it breaks the points the
    full run breaks (whose best iterate is misclassified, so some iterate is) at a fraction of the
    cost: a broken point takes no further steps or restarts.

    Args:
        model: maps ``(N, ...)`` pixels in [0, 1] to ``(N, K)`` logits.
        x: ``(N, ...)`` inputs in [0, 1].
        y: ``(N,)`` integer labels.
        eps: l2 radius ``>= 0`` in pixel units.
        steps: gradient steps per restart (``>= 1``).
        step_size: l2 length of a step; default ``2.5 * eps / steps``.
        restarts: number of independent runs (``>= 1``).
        random_start: start each run from a random point of the ball instead of ``x``.
        generator: optional ``torch.Generator`` on ``x``'s device for reproducible random starts.
        stop_when_broken: drop a sample once an adversarial example inside the ball is found.

    Returns:
        Detached adversarial inputs with ``||x_adv - x||_2 <= eps`` and pixels in [0, 1].

    Raises:
        ValueError: on invalid arguments or shapes.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 (l2 radius in pixel units); got {eps!r}.")
    for name, value in (("steps", steps), ("restarts", restarts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1; got {value!r}.")
    if step_size is None:
        step_size = 2.5 * eps / steps
    elif isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0:
        raise ValueError(f"step_size must be None (default 2.5 * eps / steps) or a number > 0; got {step_size!r}.")
    if x.dim() < 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be (N, ...) and y (N,); got x {tuple(x.shape)} and y {tuple(y.shape)}.")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("x must be pixels in [0, 1]; got values outside. Normalization belongs inside the model.")

    x = x.detach()
    radius = eps * _SHRINK
    with torch.no_grad():
        best = x.clone()
        logits = model(x)
        best_loss = margin_loss(logits, y)
    if eps == 0:
        return best
    # ``active``: indices (into x) of the samples still attacked; without stop_when_broken, all of them.
    active = torch.arange(x.shape[0], device=x.device)
    if stop_when_broken:
        active = active[logits.argmax(dim=1) == y]

    for _ in range(restarts):
        if active.numel() == 0:
            break
        xa, ya = x[active], y[active]
        # drawn for every sample, so that a sample's start does not depend on which others were dropped
        x_adv = _random_start(x, radius, generator)[active] if random_start else xa.clone()
        for step in range(steps + 1):
            if step < steps:
                with torch.enable_grad():
                    x_adv.requires_grad_(True)
                    logits = model(x_adv)
                    loss = margin_loss(logits, ya)
                    grad = torch.autograd.grad(loss.sum(), x_adv)[0]
            else:  # the last iterate is scored, not stepped from
                with torch.no_grad():
                    logits = model(x_adv)
                    loss = margin_loss(logits, ya)
                grad = None
            with torch.no_grad():
                x_adv, loss, logits = x_adv.detach(), loss.detach(), logits.detach()
                # no host sync here: index_put with the indices of the active samples
                improved = loss > best_loss[active]
                best_loss[active] = torch.where(improved, loss, best_loss[active])
                best[active] = torch.where(improved.view(-1, *([1] * (x.dim() - 1))), x_adv, best[active])
                if stop_when_broken:
                    broken = logits.argmax(dim=1) != ya
                    if broken.any():
                        broken &= _ball_norm(xa, x_adv) <= eps  # a verified adversarial example
                        best[active[broken]] = x_adv[broken]
                        keep = ~broken
                        active, xa, ya, x_adv = active[keep], xa[keep], ya[keep], x_adv[keep]
                        if grad is not None:
                            grad = grad[keep]
                        if active.numel() == 0:
                            break
                if grad is not None:
                    direction = grad / _flat_norm(grad).clamp_min(1e-30)
                    x_adv = _project(xa, x_adv - xa + step_size * direction, radius)
    with torch.no_grad():
        return _enforce_ball(x, best, eps)
