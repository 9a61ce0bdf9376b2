"""The end of a training run: the ``final/`` Hub-format checkpoint and its training record, and ``curves.png``."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lipzoo.train.trainer import _Run

logger = logging.getLogger(__name__)

__all__ = ["finish_run"]


def finish_run(run: _Run, seconds: float) -> None:
    """The end of a run (rank 0): ``final/`` in the Hub format, with what was trained and how, and ``curves.png``."""
    from lipzoo.hub import save_pretrained

    config = dict(run.config)
    history = [json.loads(line) for line in (run.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_info = {"epochs_trained": run.epoch, "seconds_this_session": round(seconds, 1),
                  "seconds_total": round(sum(r.get("epoch_seconds", 0) for r in history), 1),
                  "hardware": _hardware(run.device), "last_epoch": history[-1] if history else {}}
    if run.opts.init:
        train_info["init"] = run.opts.init
    else:
        # Trained from scratch with an entry's recipe: not derived from the entry's weights, so no
        # parent; the run has no name of its own until it is shipped (scripts/publish_entry.py).
        train_info["recipe_of"] = config.get("name")
        config = {**config, "name": None, "weights": None, "metrics": None, "parent": None}
    if run.opts.data:
        train_info["data"] = _data_record(run.opts.data)
    config["training"] = train_info
    config["eps"] = list((config.get("certify") or {}).get("eps", []))
    save_pretrained(run.model.cpu(), run.out / "final", config=config)
    run.model.to(run.device)
    try:  # a picture of the run beside its numbers; never a reason to fail a finished run
        from lipzoo.train.curves import plot_training_curves

        plot_training_curves({_curve_label(config, run): run.out}, run.out / "curves.png")
    except Exception as err:  # noqa: BLE001 - matplotlib back ends vary
        logger.warning("could not draw %s: %s", run.out / "curves.png", err)


def _curve_label(config: dict, run: _Run) -> str:
    """The legend's name of a run: its own name, else the data file's stem (``--data``), else the recipe's entry."""
    if config.get("name"):
        return str(config["name"])
    if run.opts.data:
        from lipzoo.data import data_label

        return Path(data_label(run.opts.data)).stem
    return str((config.get("training") or {}).get("recipe_of") or run.out.name)


def _data_record(data: str) -> dict[str, str]:
    """What a run trained on: the data's name, and the sha256 of the file when it is one."""
    from lipzoo.data import data_label

    record = {"name": data_label(data)}
    path = Path(data).expanduser()
    if path.is_file():
        from lipzoo.meta import file_sha256

        record["sha256"] = file_sha256(path)
    return record


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
