"""One certification run: guaranteed pairwise bound, certified / PGD accuracy, files and a table.

An estimate (``norm="power"`` or a precomputed bound with ``guarantee="estimate"``) is refused
unless ``allow_estimate=True``; then every output (metrics keys, ``report.json``, the table, the
plot) says ``estimated`` instead of ``certified``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from lipzoo.bounds import BoundOptions, LipschitzBound, lipschitz_bound, lipschitz_bounds
from lipzoo.bounds.norms import weakest_guarantee
from lipzoo.certify.metrics import evaluate, pairwise_constants, radius_kind
from lipzoo.certify.plots import plot_certified_curve

logger = logging.getLogger(__name__)

__all__ = ["certify", "format_table", "bounds_table"]


def certify(model: nn.Module, dataset: Dataset, eps_list: Sequence[str], *, input_shape, out_dir=None,
            name: str = "model", limit: int | None = None, batch_size: int = 500, attack: dict | None = None,
            options: BoundOptions | None = None, bound: LipschitzBound | None = None, certificate=None,
            compare: dict[str, torch.Tensor] | None = None, device=None, progress: bool = True,
            allow_estimate: bool = False, cache: bool | None = None,
            arithmetic: torch.dtype | None = None, accumulate: torch.dtype | None = None) -> dict[str, Any]:
    """Certify ``model`` on ``dataset`` at each eps (pixel units) and write the report files.

    Args:
        model: the network (pixels in [0, 1] in, logits out).
        dataset: yields ``(x, y)``; ``limit`` keeps the first ``limit`` samples.
        eps_list: radii as exact fraction strings (``"36/255"``) or numbers.
        input_shape: per-sample input shape for the bound.
        out_dir: where ``report.json``, ``radii.csv`` and ``certified_curve.png`` (``estimated_curve.png``
            for an estimate) go (None: nowhere).
        attack: PGD settings for :func:`lipzoo.certify.evaluate` (None: no attack). Under a guaranteed
            bound the points certified at an eps are not attacked at it (proved robust) unless
            ``attack["attack_all"]`` asks for the audit; ``report["attack"]["attacked"]`` counts the
            points attacked per eps.
        options: how the pairwise bound is computed (:class:`~lipzoo.bounds.options.BoundOptions`; default: the
            guaranteed LipLT bound at the default effort).
        bound: a precomputed :class:`~lipzoo.LipschitzBound` (skips the computation).
        certificate: the model's shipped certificate (:mod:`lipzoo.bounds.shipped`), checked and used for the
            bound's certified chain norms.
        cache: use the on-disk bound cache (see :func:`lipzoo.lipschitz_bound`; None: unless ``LIPZOO_CACHE=off``).
        compare: extra radii curves for the plot, ``{label: radii}``.
        allow_estimate: accept an estimate (``norm="power"``); everything is then labelled
            ``estimated``, never ``certified``.
        arithmetic, accumulate: the floating-point arithmetic the radii must hold for (default: the
            model's parameter dtype; see :func:`lipzoo.certify.evaluate`). ``report["rounding"]`` states
            it, the bound ``E`` on the rounding of the logit differences (median / max) and how many
            points lost their certificate at each eps because of it.

    Raises:
        TypeError: if ``bound`` is given and is not a :class:`~lipzoo.LipschitzBound`.
        ValueError: on an estimate without ``allow_estimate`` (checked before the data is read).
    """
    if bound is not None and not isinstance(bound, LipschitzBound):
        raise TypeError(f"bound must be a lipzoo.LipschitzBound, got {type(bound).__name__}.")
    options = options if options is not None else BoundOptions()
    if not allow_estimate and (options.norm == "power" if bound is None else bound.guarantee == "estimate"):
        raise ValueError("this bound would be an estimate (norm='power' / guarantee='estimate'), not a "
                         "certificate; use norm='auto' or pass allow_estimate=True.")
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be a positive number of samples, got {limit}.")
        dataset = Subset(dataset, range(min(limit, len(dataset))))  # type: ignore[arg-type]  # a sized dataset
    t0 = time.time()
    if bound is None:
        bound = lipschitz_bound(model, input_shape, mode="pairwise", options=options, cache=cache,
                                certificate=certificate)
    bound_seconds = time.time() - t0
    kind = radius_kind(bound)
    if kind == "probabilistic":
        logger.warning("The %s bound is PROBABILISTIC: it holds except with probability %.3g over random start "
                       "vectors (seed %s); the radii are certificates only under that condition.", bound.mode,
                       bound.failure_probability, (bound.details.get("lanczos") or {}).get("seed"))
    elif not bound.guaranteed:
        logger.warning("The %s bound is an ESTIMATE (guarantee=%s): the radii below are not certificates.",
                       bound.mode, bound.guarantee)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    result = evaluate(model, loader, bound, eps_list, allow_estimate=allow_estimate, attack=attack, device=device,
                      progress=progress, arithmetic=arithmetic, accumulate=accumulate)
    summary = dict(result["summary"])
    pair = pairwise_constants(bound, bound.num_classes or 2, allow_estimate=True)  # checked by evaluate above
    mask = ~torch.eye(pair.shape[0], dtype=torch.bool)
    off = pair[mask]
    # the recursion at the norms' estimates from below: the exact LipLT value lies between it and the bound
    below = bound.liplt_at_estimates if bound.mode == "pairwise" else None
    report = {"model": name, "num_samples": summary.pop("num_samples"), "metrics": summary, "kind": kind,
              "bound": {**bound.to_dict(),
                        "pairwise_mean": float(off.mean()), "pairwise_max": float(off.max()),
                        **({"pairwise_mean_at_estimates": float(below[mask].mean())} if below is not None else {}),
                        **({"effort": bound.details["options"]["effort"]}
                           if bound.norm == "auto" and "options" in bound.details else {}),
                        "seconds": round(bound_seconds, 2)},
              "attack": None if attack is None else {  # the workers change the speed, not the verdicts
                  **{k: v for k, v in attack.items() if k != "workers"},
                  "attacked": {key: int(mask.sum()) for key, mask in result["attacked"].items()}},
              "eps": [str(e) for e in eps_list],
              "mean_radius": float(result["radii"].mean()),
              "rounding": _rounding_summary(result)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        with open(out / "radii.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "label", "prediction", "margin", "radius"])
            for i, (y, p, m, r) in enumerate(zip(result["labels"].tolist(), result["predictions"].tolist(),
                                                 result["margins"].tolist(), result["radii"].tolist())):
                w.writerow([i, y, p, f"{m:.6g}", f"{r:.6g}"])
        label = name if kind == "certified" else f"{name} ({_KIND_NOTE[kind]})"
        curves = {label: result["radii"], **(compare or {})}
        plot_certified_curve(curves, out / f"{kind}_curve.png", eps_marks=list(eps_list),
                             title=f"{Path(name).name}: {bound.mode} {bound.method} ({bound.guarantee})",
                             ylabel="certified accuracy" if kind == "certified"
                             else f"{kind} robust accuracy ({_KIND_NOTE[kind]})")
        report["files"] = [str(out / f) for f in ("report.json", "radii.csv", f"{kind}_curve.png")]
    report["radii"] = result["radii"]
    report["bound_object"] = bound  # the LipschitzBound itself (not in report.json): for a shipped certificate
    return report


def _rounding_summary(result: dict[str, Any]) -> dict[str, Any]:
    errors = result["margin_errors"]
    return {**result["rounding"],
            "radii_account_for_rounding": True,
            "margin_error_median": float(errors.median()), "margin_error_max": float(errors.max()),
            "note": "radii are (m - 2E) / L with E a proved bound on the floating-point error of every logit "
                    "difference in this arithmetic; they hold when the model is evaluated in this dtype"}


_METHOD_NAME = {"liplt": "LipLT", "best": "min(LipLT, ECLipsE-style)", "eclipse": "ECLipsE-style"}
_KIND_NOTE = {"probabilistic": "probabilistic bound, not a proof", "estimated": "estimate, not certified"}


def format_table(report: dict[str, Any]) -> str:
    """A printed table of one certification report."""
    m = report["metrics"]
    kind = report.get("kind", "certified" if report["bound"]["guaranteed"] else "estimated")
    lines = [f"model: {report['model']}    samples: {report['num_samples']}",
             f"bound: {report['bound'].get('mode', 'pairwise')} {_METHOD_NAME.get(report['bound'].get('method'), 'LipLT')}, "
             f"guarantee={report['bound']['guarantee']} "
             f"(guaranteed={report['bound']['guaranteed']}), mean L_ij={report['bound']['pairwise_mean']:.4g}",
             f"clean accuracy: {100 * m['clean']:.2f}%", ""]
    below = report["bound"].get("pairwise_mean_at_estimates")
    if below:
        lines[1] += f" (LipLT at the norms' estimates from below: {below:.4g})"
    if kind == "probabilistic":
        lines[-1:] = [f"PROBABILISTIC: the bound holds except with probability "
                      f"{report['bound'].get('failure_probability', float('nan')):.3g} over random start vectors; "
                      "the radii are certificates under that condition only.", ""]
    elif kind != "certified":
        lines[-1:] = ["ESTIMATE: the bound may under-estimate the Lipschitz constant; "
                      "these radii are not certificates.", ""]
    rounding = report.get("rounding")
    if rounding:
        lost = ", ".join(f"{n} at {e}" for e, n in rounding["lost"].items())
        u = rounding.get("unit_roundoff")
        lines[-1:] = [f"arithmetic: {rounding['dtype']}" + (f" (u={u:.3g})" if u else "")
                      + f"; radii account for its rounding: E median {rounding['margin_error_median']:.3g}, "
                      f"max {rounding['margin_error_max']:.3g}; certificates lost to rounding: {lost}", ""]
    w = max(9, len(kind))
    lines += [f"{'eps':>10} | {kind:>{w}} | {'PGD':>7} | {'violations':>10}", "-" * (37 + w)]
    for eps in report["eps"]:
        pgd = m.get(f"pgd@{eps}")
        viol = m.get(f"consistency_violations@{eps}")
        lines.append(f"{eps:>10} | {100 * m[f'{kind}@{eps}']:{w - 1}.2f}% | "
                     f"{'-' if pgd is None else f'{100 * pgd:6.2f}%':>7} | {'-' if viol is None else viol:>10}")
    attack = report.get("attack") or {}
    if attack and kind == "certified" and not attack.get("attack_all"):
        lines += ["", "PGD ran on the correctly classified points not certified at eps (the certificate proves the "
                      "others robust; violations: - = not attacked, --attack-all audits them)."]
    return "\n".join(lines)


def bounds_table(model: nn.Module, input_shape, *, options: BoundOptions | None = None,
                 cache: bool | None = None, certificate=None) -> dict[str, Any]:
    """The paper's Table 2 for ``model``: mean ``L_ij``, ``L_i + L_j`` and ``sqrt(2) L``, naive and LipLT, and
    ``best`` (the entrywise minimum of LipLT and the ECLipsE-style bound) where the latter applies.

    ``norm="lanczos"`` is for the LipLT operators; the naive row then uses ``"auto"`` (its per-layer norms are
    cheap to prove). ``certificate``: the model's shipped certificate for the LipLT row
    (:mod:`lipzoo.bounds.shipped`: checked, then used as the certificate cache is)."""
    options = options if options is not None else BoundOptions()
    bounds: dict[str, dict[str, Any]] = {}  # per method and mode: a LipschitzBound, or (value, guarantee) for best
    for method in ("naive", "liplt"):
        how = "auto" if method == "naive" and options.norm == "lanczos" else options.norm
        bounds[method] = lipschitz_bounds(model, input_shape, options=options.replace(method=method, norm=how),
                                          cache=cache, certificate=certificate if method == "liplt" else None)
    try:  # exact where it applies; both are upper bounds, so is their minimum
        eclipse = lipschitz_bounds(model, input_shape, method="eclipse", cache=cache)
    except (TypeError, ValueError):
        pass  # a skip branch or a layer too wide to materialise: best is LipLT
    else:
        weaker = weakest_guarantee([bounds["liplt"]["pairwise"].guarantee, eclipse["pairwise"].guarantee])
        bounds["best"] = {m: (torch.minimum(bounds["liplt"][m].value, eclipse[m].value), weaker) for m in eclipse}
    rows = {}
    for method, b in bounds.items():
        value = {m: (x if isinstance(x, tuple) else (x.value, x.guarantee)) for m, x in b.items()}
        pair, pc, glob = value["pairwise"][0], value["per_class"][0], value["global"][0]
        off = ~torch.eye(pair.shape[0], dtype=torch.bool)
        rows[method] = {"L_ij": float(pair[off].mean()), "L_i+L_j": float((pc[:, None] + pc[None, :])[off].mean()),
                        "sqrt2_L": float(2 ** 0.5 * glob), "guarantee": value["pairwise"][1]}
        below = b["pairwise"].liplt_at_estimates if method == "liplt" else None
        if below is not None:  # the exact LipLT value lies between this and the bound
            rows[method]["L_ij_at_estimates"] = float(below[off].mean())
            proofs = b["pairwise"].details["inner_proofs"]
            rows[method]["chains"] = {"certified": sum(p["guarantee"] == "exact" for p in proofs.values()),
                                      "total": len(proofs), "work": dict(b["pairwise"].details.get("work") or {})}
    return rows

