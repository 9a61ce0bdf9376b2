"""Certified accuracy, PGD accuracy and the soundness check between them.

Convention: a point is certified at ``eps`` iff its certified radius (eq. 4) is ``> eps``. All
accuracies are fractions in [0, 1]; ``eps`` is an l2 radius in pixel units ([0, 1] images) and may
be given as an exact fraction string such as ``"36/255"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lipzoo.bounds.radius import certified_radius, pairwise_radii
from lipzoo.certify.attacks import margin_loss, pgd_l2

__all__ = ["certified_radius", "pairwise_radii", "certified_accuracy", "evaluate", "parse_eps"]

logger = logging.getLogger(__name__)

_ATTACK_KEYS = ("steps", "restarts", "step_size", "random_start", "seed")


def parse_eps(eps: float | int | str) -> float:
    """Turn ``1.58``, ``"1.58"`` or ``"36/255"`` into a float ``>= 0``.

    Raises:
        ValueError: if ``eps`` is not a number / fraction string, or is negative or not finite.
    """
    if isinstance(eps, bool):
        raise ValueError(f"eps must be a number or a fraction string like '36/255'; got {eps!r}.")
    try:
        value = float(Fraction(eps)) if isinstance(eps, str) else float(eps)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(f"eps must be a number or a fraction string like '36/255'; got {eps!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps must be finite and >= 0; got {eps!r}.")
    return value


def certified_accuracy(radii: Tensor, eps: float | str) -> float:
    """Fraction of points with certified radius ``> eps`` (misclassified points have radius 0).

    Args:
        radii: ``(N,)`` certified radii, e.g. from :func:`certified_radius`.
        eps: l2 radius (number or fraction string).

    Raises:
        ValueError: if ``radii`` is not a non-empty 1-D tensor without NaN, or ``eps`` is invalid.
    """
    if not isinstance(radii, Tensor) or radii.dim() != 1 or radii.numel() == 0:
        got = tuple(radii.shape) if isinstance(radii, Tensor) else type(radii).__name__
        raise ValueError(f"radii must be a non-empty 1-D tensor; got {got}.")
    if torch.isnan(radii).any():
        raise ValueError("radii contain NaN; check the logits and the pairwise Lipschitz constants.")
    return (radii > parse_eps(eps)).double().mean().item()


def _eps_key(eps: float | int | str) -> str:
    return eps if isinstance(eps, str) else f"{eps:g}"


def _check_attack(attack: dict[str, Any] | None) -> dict[str, Any] | None:
    if attack is None:
        return None
    if not isinstance(attack, dict):
        raise ValueError(f"attack must be None or a dict with keys {_ATTACK_KEYS}; got {type(attack).__name__}.")
    unknown = sorted(set(attack) - set(_ATTACK_KEYS))
    if unknown:
        raise ValueError(f"attack has unknown keys {unknown}; supported keys are {_ATTACK_KEYS}.")
    return dict(attack)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    pairwise_L: Tensor,
    eps_list: Sequence[float | str],
    *,
    attack: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Clean, certified and (optionally) PGD accuracy of ``model`` over ``loader``.

    The model is evaluated in eval mode (its previous mode is restored). Points already
    misclassified count as broken by the attack; only correctly classified points are attacked.

    Args:
        model: maps pixels in [0, 1] to logits.
        loader: iterable of ``(x, y)`` batches.
        pairwise_L: ``(K, K)`` pairwise Lipschitz constants of the model's logit differences. Only a
            proved upper bound gives a certificate.
        eps_list: radii to report, numbers or fraction strings (``"36/255"``).
        attack: None (no attack) or a dict with optional keys ``steps`` (50), ``restarts`` (1),
            ``step_size`` (``2.5 * eps / steps``), ``random_start`` (True), ``seed`` (0).
        device: where to run; default the model's device.
        progress: show a tqdm progress bar.

    Returns:
        Dict with per-sample tensors ``labels``, ``predictions``, ``radii`` (certified radius, 0 if
        misclassified), ``margins`` (``z_y - max_{i != y} z_i``), ``attack_success`` (``{eps_key:
        bool tensor}``, empty without attack) and ``summary``: ``clean``, ``certified@<eps>``,
        ``num_samples`` and, with an attack, ``pgd@<eps>`` and ``consistency_violations@<eps>``
        (points certified at eps yet broken at eps; any nonzero count means the bound is unsound).
        ``<eps>`` is the string as given, or the number formatted with ``:g``.

    Raises:
        ValueError: on an empty ``eps_list`` or loader, invalid eps or attack settings.
    """
    eps_values = {_eps_key(e): parse_eps(e) for e in eps_list}
    if not eps_values:
        raise ValueError("eps_list must hold at least one radius, e.g. [1.58] or ['36/255'].")
    attack = _check_attack(attack)
    device = torch.device(device) if device is not None else _model_device(model)
    pairwise_L = pairwise_L.detach().to(device)
    generator = None
    if attack is not None:
        generator = torch.Generator(device=device).manual_seed(int(attack.pop("seed", 0)))

    labels, predictions, radii, margins = [], [], [], []
    success: dict[str, list[Tensor]] = {key: [] for key in eps_values} if attack is not None else {}
    was_training = model.training
    model.eval()
    try:
        for x, y in tqdm(loader, desc="certify", disable=not progress, leave=False):
            x, y = x.to(device), y.to(device).long()
            with torch.no_grad():
                logits = model(x)
            pred = logits.argmax(dim=1)
            labels.append(y.cpu())
            predictions.append(pred.cpu())
            radii.append(certified_radius(logits, y, pairwise_L).cpu())
            margins.append((-margin_loss(logits, y)).cpu())
            if attack is None:
                continue
            correct = pred == y
            for key, eps in eps_values.items():
                broken = ~correct
                if correct.any():
                    x_adv = pgd_l2(model, x[correct], y[correct], eps, generator=generator, **attack)
                    with torch.no_grad():
                        broken[correct] = model(x_adv).argmax(dim=1) != y[correct]
                success[key].append(broken.cpu())
    finally:
        model.train(was_training)

    if not labels:
        raise ValueError("loader yielded no batches; nothing to evaluate.")
    result: dict[str, Any] = {
        "labels": torch.cat(labels),
        "predictions": torch.cat(predictions),
        "radii": torch.cat(radii),
        "margins": torch.cat(margins),
        "attack_success": {key: torch.cat(parts) for key, parts in success.items()},
    }
    summary: dict[str, float | int] = {
        "num_samples": result["labels"].numel(),
        "clean": (result["predictions"] == result["labels"]).double().mean().item(),
    }
    for key, eps in eps_values.items():
        summary[f"certified@{key}"] = certified_accuracy(result["radii"], eps)
        if attack is not None:
            broken = result["attack_success"][key]
            summary[f"pgd@{key}"] = (~broken).double().mean().item()
            violations = int(((result["radii"] > eps) & broken).sum())
            summary[f"consistency_violations@{key}"] = violations
            if violations:
                logger.error("%d points certified at eps=%s were broken by PGD: the bound is unsound.", violations, key)
    result["summary"] = summary
    return result
