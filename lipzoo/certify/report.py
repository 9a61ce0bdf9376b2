"""One certification run: guaranteed pairwise bound, certified / PGD accuracy, files and a table."""

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

from lipzoo.bounds import LipschitzBound, lipschitz_bound, lipschitz_bounds
from lipzoo.certify.metrics import evaluate
from lipzoo.certify.plots import plot_certified_curve

logger = logging.getLogger(__name__)

__all__ = ["certify", "format_table", "bounds_table"]


def certify(model: nn.Module, dataset: Dataset, eps_list: Sequence[str], *, input_shape, out_dir=None,
            name: str = "model", limit: int | None = None, batch_size: int = 500, attack: dict | None = None,
            norm: str = "auto", max_dense: int = 4096, bound: LipschitzBound | None = None,
            compare: dict[str, torch.Tensor] | None = None, device=None, progress: bool = True) -> dict[str, Any]:
    """Certify ``model`` on ``dataset`` at each eps (pixel units) and write the report files.

    Args:
        model: the network (pixels in [0, 1] in, logits out).
        dataset: yields ``(x, y)``; ``limit`` keeps the first ``limit`` samples.
        eps_list: radii as exact fraction strings (``"36/255"``) or numbers.
        input_shape: per-sample input shape for the bound.
        out_dir: where ``report.json``, ``radii.csv`` and ``certified_curve.png`` go (None: nowhere).
        attack: PGD settings for :func:`lipzoo.certify.evaluate` (None: no attack).
        norm, max_dense: operator-norm path of the bound (see :func:`lipzoo.lipschitz_bound`); the
            default ``"auto"`` is guaranteed.
        bound: a precomputed pairwise bound (skips the computation).
        compare: extra radii curves for the plot, ``{label: radii}``.
    """
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be a positive number of samples, got {limit}.")
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    t0 = time.time()
    if bound is None:
        bound = lipschitz_bound(model, input_shape, method="liplt", mode="pairwise", norm=norm, max_dense=max_dense)
    bound_seconds = time.time() - t0
    if not bound.guaranteed:
        logger.warning("The pairwise bound is an ESTIMATE (guarantee=%s): the radii below are not certificates.",
                       bound.guarantee)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    result = evaluate(model, loader, bound.value.float(), eps_list, attack=attack, device=device, progress=progress)
    summary = dict(result["summary"])
    off = bound.value[~torch.eye(bound.value.shape[0], dtype=torch.bool)]
    report = {"model": name, "num_samples": summary.pop("num_samples"), "metrics": summary,
              "bound": {**bound.to_dict(),
                        "pairwise_mean": float(off.mean()), "pairwise_max": float(off.max()),
                        "seconds": round(bound_seconds, 2)},
              "attack": attack, "eps": [str(e) for e in eps_list],
              "mean_radius": float(result["radii"].mean())}
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
        curves = {name: result["radii"], **(compare or {})}
        plot_certified_curve(curves, out / "certified_curve.png", eps_marks=list(eps_list),
                             title=f"{Path(name).name}: pairwise LipLT ({bound.guarantee})")
        report["files"] = [str(out / f) for f in ("report.json", "radii.csv", "certified_curve.png")]
    report["radii"] = result["radii"]
    return report


def format_table(report: dict[str, Any]) -> str:
    """A printed table of one certification report."""
    m = report["metrics"]
    lines = [f"model: {report['model']}    samples: {report['num_samples']}",
             f"bound: pairwise LipLT, guarantee={report['bound']['guarantee']} "
             f"(guaranteed={report['bound']['guaranteed']}), mean L_ij={report['bound']['pairwise_mean']:.4g}",
             f"clean accuracy: {100 * m['clean']:.2f}%", "",
             f"{'eps':>10} | {'certified':>9} | {'PGD':>7} | {'violations':>10}", "-" * 46]
    for eps in report["eps"]:
        pgd = m.get(f"pgd@{eps}")
        viol = m.get(f"consistency_violations@{eps}")
        lines.append(f"{eps:>10} | {100 * m[f'certified@{eps}']:8.2f}% | "
                     f"{'-' if pgd is None else f'{100 * pgd:6.2f}%':>7} | {'-' if viol is None else viol:>10}")
    return "\n".join(lines)


def bounds_table(model: nn.Module, input_shape, *, norm: str = "auto", max_dense: int = 4096) -> dict[str, Any]:
    """The paper's Table 2 for ``model``: mean ``L_ij``, ``L_i + L_j`` and ``sqrt(2) L``, naive and LipLT."""
    rows = {}
    for method in ("naive", "liplt"):
        b = lipschitz_bounds(model, input_shape, method=method, norm=norm, max_dense=max_dense)
        k = b["pairwise"].value.shape[0]
        off = ~torch.eye(k, dtype=torch.bool)
        pc = b["per_class"].value
        rows[method] = {"L_ij": float(b["pairwise"].value[off].mean()),
                        "L_i+L_j": float((pc[:, None] + pc[None, :])[off].mean()),
                        "sqrt2_L": float(2 ** 0.5 * b["global"].value),
                        "guarantee": b["pairwise"].guarantee}
    return rows
