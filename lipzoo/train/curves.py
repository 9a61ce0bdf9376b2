"""Training curves from ``metrics.jsonl``: certified accuracy (estimated) and accuracy against epoch."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["read_metrics", "plot_training_curves"]


def read_metrics(path: str | os.PathLike[str]) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (a run folder or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i} is not a JSON line: {err}") from err
    if not rows:
        raise ValueError(f"{path} holds no epochs.")
    return rows


def plot_training_curves(runs: Mapping[str, str | os.PathLike[str]], path: str | os.PathLike[str],
                         title: str | None = None) -> Path:
    """One figure: validation certified accuracy at every eps (left) and train / validation accuracy (right).

    The certified accuracies during training come from the power-iteration *estimate* of the
    bound (``val_cert_est@eps``), so the axis says "estimated"; certify the final checkpoint with
    ``lipzoo certify`` for guaranteed numbers.

    Args:
        runs: label -> run folder (or ``metrics.jsonl``).
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cert, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for label, run in runs.items():
        rows = read_metrics(run)
        epochs = [r["epoch"] for r in rows]
        for key in sorted({k for r in rows for k in r if k.startswith("val_cert_est@")}):
            ax_cert.plot(epochs, [100 * r.get(key, float("nan")) for r in rows],
                         label=f"{label}, eps {key.split('@', 1)[1]}")
        line, = ax_acc.plot(epochs, [100 * r["train_acc"] for r in rows], label=f"{label}, train", alpha=0.6)
        if any("val_acc" in r for r in rows):
            ax_acc.plot(epochs, [100 * r.get("val_acc", float("nan")) for r in rows], color=line.get_color(),
                        linestyle="--", label=f"{label}, validation")
    ax_cert.set(xlabel="epoch", ylabel="certified accuracy, estimated (%)", title="validation, certified (estimate)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="clean accuracy")
    for ax in (ax_cert, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
