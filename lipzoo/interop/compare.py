"""Certify a converted peer network three ways on one pass over the data, side by side.

* **lipzoo**: the guaranteed pairwise LipLT bound ``L_ij``, capped by the proved rule (both are proved, so is their
  minimum: lipzoo's certificate is never looser than the peer's rule made sound); radius
  ``min_{i != y} (z_y - z_i - 2E) / L_yi`` with ``E`` the proved bound on the float64 rounding of the logit
  differences over the ball (as :func:`lipzoo.certify.evaluate` computes it: the exact-arithmetic radius first,
  ``E`` on that ball, then the radius minus ``2E``, rounded down).
* **peer rule, proved**: the same with every ``L_ij`` replaced by ``sqrt(2) prod_k L_k`` of
  :func:`lipzoo.interop.one_lipschitz_rule` (each layer's proved constant): the peer's rule made sound, rounding
  included.
* **peer rule, claimed**: ``(z_y - max_{i != y} z_i) / (sqrt(2) prod_k c_k)`` with the claimed constants, in
  exact arithmetic: what the peer itself reports (nothing proved).

The model runs in float64 (``lipzoo certify``'s default arithmetic). A point is certified at ``eps`` iff its
prediction is right and its radius is ``> eps``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from lipzoo.interop.rule import OneLipschitzRule

__all__ = ["compare_certificates", "format_comparison", "COLUMNS"]

COLUMNS = (("claimed", "peer rule, claimed"), ("proved", "peer rule, proved"), ("lipzoo", "lipzoo LipLT pairwise"))


def _constant_matrix(c: float, k: int) -> torch.Tensor:
    return torch.full((k, k), float(c), dtype=torch.float64).fill_diagonal_(0.0)


@torch.no_grad()
def compare_certificates(model: nn.Module, dataset: Dataset, eps_list: Sequence[str], *, input_shape,
                         bound, rule: OneLipschitzRule, limit: int | None = None, batch_size: int = 500,
                         device=None, progress: bool = True) -> dict[str, Any]:
    """Clean accuracy and certified accuracy at each eps under the three columns (module docstring).

    Args:
        model: the converted model (:func:`lipzoo.interop.convert`; run in float64 here).
        dataset: ``(x, y)`` pairs of pixels in [0, 1]; ``limit`` keeps the first ``limit``.
        eps_list: radii (numbers or exact fractions such as ``"36/255"``).
        input_shape: the per-sample input shape (the bound's).
        bound: ``lipzoo.lipschitz_bound(model, input_shape, mode="pairwise")``: guaranteed, of this model.
        rule: :func:`lipzoo.interop.one_lipschitz_rule` of the model.

    Returns:
        ``{"summary": {clean, num_samples, <column>@<eps>...}, "per_point": {labels, predictions, margins,
        radii: {column: tensor}}, "rounding": {...}}``.
    """
    from lipzoo.bounds.certificate import check_bound_for
    from lipzoo.bounds.radius import certified_radius as radius_from_tensor
    from lipzoo.certify.metrics import pairwise_constants, parse_eps
    from lipzoo.interop.rounding import rounding_plan

    eps_values = {str(e): parse_eps(e) for e in eps_list}
    if not eps_values:
        raise ValueError("eps_list must hold at least one radius, e.g. ['1.58'].")
    if not (bound.guaranteed and bound.trusted and bound.mode == "pairwise"):
        raise ValueError(f"the bound must be a guaranteed pairwise lipzoo.lipschitz_bound; got a {bound.mode} "
                         f"{bound.guarantee} bound (trusted={bound.trusted}).")
    wide = all(t.dtype == torch.float64 for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())
    there = device is None or all(p.device == torch.device(device) for p in model.parameters())
    if model.training or not wide or not there:  # a float64 eval-mode copy where needed: the caller's is not changed
        model = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    check_bound_for(bound, model, tuple(input_shape), where="lipzoo interop")
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))  # type: ignore[arg-type]  # a sized dataset
    plan = rounding_plan(model, input_shape, dtype=torch.float64)
    L = None
    capped = 0
    out: dict[str, list] = {"labels": [], "predictions": [], "margins": [], "errors": []}
    radii: dict[str, list] = {key: [] for key, _ in COLUMNS}
    for x, y in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=False), desc="interop", disable=not progress,
                     leave=False):
        x, y = x.to(dev), y.to(dev).long()
        logits = model(x.to(torch.float64))
        k = logits.shape[1]
        if L is None:
            proved = _constant_matrix(rule.proved, k)
            liplt = pairwise_constants(bound, k)
            capped = int(((liplt > proved) & ~torch.eye(k, dtype=torch.bool)).sum()) // 2
            L = {"lipzoo": torch.minimum(liplt, proved).to(dev), "proved": proved.to(dev),
                 "claimed": _constant_matrix(rule.claimed, k).to(dev)}
        for key in ("lipzoo", "proved"):
            exact = radius_from_tensor(logits, y, L[key])  # the ball on which the rounding bound must hold
            error = plan(x, exact)
            radii[key].append(radius_from_tensor(logits, y, L[key], margin_error=2 * error).cpu())
            if key == "lipzoo":
                out["errors"].append(error.cpu())
        radii["claimed"].append(radius_from_tensor(logits, y, L["claimed"]).cpu())
        top = logits.clone()
        top.scatter_(1, y[:, None], -math.inf)
        out["margins"].append((logits.gather(1, y[:, None])[:, 0] - top.max(1).values).cpu())
        out["labels"].append(y.cpu())
        out["predictions"].append(logits.argmax(1).cpu())
    if not out["labels"]:
        raise ValueError("The dataset is empty; nothing to certify.")
    per = {key: torch.cat(v) for key, v in out.items()}
    per_radii = {key: torch.cat(v) for key, v in radii.items()}
    correct = per["predictions"] == per["labels"]
    summary: dict[str, Any] = {"num_samples": int(correct.numel()), "clean": float(correct.double().mean())}
    for key, _ in COLUMNS:
        for name, eps in eps_values.items():
            summary[f"{key}@{name}"] = float((correct & (per_radii[key] > eps)).double().mean())
    pair = cast(dict, L)["lipzoo"].cpu()  # set on the first batch (the loader yielded one)
    off = ~torch.eye(pair.shape[0], dtype=torch.bool)
    constants = {"lipzoo_mean_L_ij": float(pair[off].mean()), "lipzoo_max_L_ij": float(pair[off].max()),
                 "pairs_capped_by_rule": capped,
                 "rule_claimed": rule.claimed, "rule_proved": rule.proved}
    return {"summary": summary, "constants": constants, "eps": list(eps_values),
            "per_point": {**{k: per[k] for k in ("labels", "predictions", "margins")}, "radii": per_radii},
            "rounding": {"dtype": "float64", "margin_error_median": float(per["errors"].median()),
                         "margin_error_max": float(per["errors"].max())}}


def format_comparison(result: dict[str, Any], rule: OneLipschitzRule, *, name: str, guarantee: str) -> str:
    """The side-by-side table of :func:`compare_certificates`."""
    s, c = result["summary"], result["constants"]
    lines = [f"model: {name}    samples: {s['num_samples']}    clean accuracy: {100 * s['clean']:.2f}%",
             f"constant of a logit pair: peer rule claimed sqrt(2) x prod = {c['rule_claimed']:.6g}; peer rule proved "
             f"sqrt(2) x prod = {c['rule_proved']:.6g} ({rule.guarantee}); lipzoo pairwise LipLT mean L_ij = "
             f"{c['lipzoo_mean_L_ij']:.6g}, max {c['lipzoo_max_L_ij']:.6g} ({guarantee}"
             + (f"; {c['pairs_capped_by_rule']} pair(s) capped by the proved rule" if c["pairs_capped_by_rule"] else "")
             + ")",
             f"arithmetic: float64; the proved columns subtract the proved rounding bound (E median "
             f"{result['rounding']['margin_error_median']:.3g}, max {result['rounding']['margin_error_max']:.3g}); the "
             "claimed column is the peer's own exact-arithmetic rule (nothing proved)", ""]
    heads = [title for _, title in COLUMNS]
    lines.append(f"{'eps':>10} | " + " | ".join(f"{h:>22}" for h in heads))
    lines.append("-" * (13 + 25 * len(heads)))
    for eps in result["eps"]:
        lines.append(f"{eps:>10} | " + " | ".join(f"{100 * s[f'{key}@{eps}']:21.2f}%" for key, _ in COLUMNS))
    return "\n".join(lines)
