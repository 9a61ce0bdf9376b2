"""Certified-accuracy curves (the paper's Figure 2)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lipzoo.certify.metrics import parse_eps

__all__ = ["certified_curve", "plot_certified_curve"]

_GRID_POINTS = 512


def certified_curve(radii: Tensor, eps_grid: np.ndarray) -> np.ndarray:
    """Fraction of points with radius ``> eps`` for every ``eps`` of ``eps_grid`` (strict, as in certification)."""
    r = np.sort(radii.detach().double().cpu().numpy())
    # Points with r > eps are those after the last index where r <= eps.
    return (r.size - np.searchsorted(r, eps_grid, side="right")) / r.size


def _check_radii(name: str, radii: Tensor) -> None:
    if not isinstance(radii, Tensor) or radii.dim() != 1 or radii.numel() == 0:
        raise ValueError(f"radii_by_model[{name!r}] must be a non-empty 1-D tensor; got {radii!r:.60}.")
    if torch.isnan(radii).any() or (radii < 0).any():
        raise ValueError(
            f"radii_by_model[{name!r}] has NaN or negative radii; pass certified radii "
            "(lipzoo.certify.certified_radius gives 0 for misclassified points)."
        )


def plot_certified_curve(
    radii_by_model: Mapping[str, Tensor],
    path: str | os.PathLike[str],
    eps_marks: Sequence[float | str] = (),
    title: str | None = None,
    ylabel: str = "certified accuracy",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Plot certified accuracy against eps, one curve per model, and save it as a PNG.

    The curve of a model is the fraction of its points whose certified radius is ``> eps``
    (misclassified points must carry radius 0), so it starts at the clean accuracy. The grid runs
    from 0 to 5% past the largest finite radius or eps mark.

    Args:
        radii_by_model: model name -> ``(N,)`` certified radii.
        path: output PNG file; its folder must exist.
        eps_marks: radii (numbers or fraction strings) drawn as dashed vertical lines.
        title: optional figure title.
        ylabel: y-axis label; say "estimate" here when the radii come from an estimated bound.

    Returns:
        model name -> ``(eps_grid, certified_fraction)`` numpy arrays, exactly what was drawn.

    Raises:
        ValueError: on an empty mapping, invalid radii, eps marks or a path not ending in ``.png``.
        FileNotFoundError: if the folder of ``path`` does not exist.
    """
    if not radii_by_model:
        raise ValueError("radii_by_model is empty; pass {'model name': radii_tensor, ...}.")
    for name, radii in radii_by_model.items():
        _check_radii(name, radii)
    marks = [(str(m), parse_eps(m)) for m in eps_marks]
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"path must end in .png; got {path!r}.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Folder {folder!r} of path does not exist; create it first.")

    finite = [float(r[torch.isfinite(r)].max()) for r in radii_by_model.values() if torch.isfinite(r).any()]
    top = max(finite + [value for _, value in marks] + [0.0])
    top = 1.05 * top if top > 0 else 1.0
    grid = np.linspace(0.0, top, _GRID_POINTS)
    curves = {name: (grid, certified_curve(radii, grid)) for name, radii in radii_by_model.items()}

    # The object-oriented API with an explicit Agg canvas leaves pyplot's global backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.6), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (eps, fraction) in curves.items():
        ax.plot(eps, fraction, label=name)
    for label, value in marks:
        ax.axvline(value, color="gray", linestyle="--", linewidth=0.8)
        ax.annotate(f"eps={label}", (value, 1.0), xytext=(2, -10), textcoords="offset points", fontsize=7)
    ax.set_xlabel("l2 radius eps (pixel units)")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.0, top)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return curves
