"""Certified checkpoints in Hugging Face Hub layout: ``save_pretrained``, ``load``, ``push``.

Importing this package registers :func:`load` as the registry's pretrained loader, so
``lipzoo.models.create_model(name, pretrained=True)`` goes through the checksum-verified path.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from lipzoo.hub.card import certify_command, render_card
from lipzoo.hub.checkpoint import load, push, read_config, save_pretrained
from lipzoo.models.registry import set_pretrained_loader

__all__ = ["save_pretrained", "load", "push", "read_config", "render_card", "certify_command"]


def _pretrained_loader(name: str, **kwargs: Any) -> nn.Module:
    """The registry hook: load zoo entry ``name`` (``revision`` / ``map_location`` pass through).

    Published weights load exactly as saved: a builder override (``num_classes``, ``mean``, ...)
    that differs from the checkpoint is refused rather than silently ignored.
    """
    options = {k: kwargs.pop(k) for k in ("revision", "map_location") if k in kwargs}
    model = load(name, **options)
    config = model.lipzoo_config
    saved = {**config.get("model_args", {}), **(config.get("normalization") or {}),
             "num_classes": config["num_classes"]}
    # compared as JSON: (0.5,) and [0.5] are the same normalization
    differing = {k: v for k, v in kwargs.items()
                 if k not in saved or json.dumps(saved[k], default=str) != json.dumps(v, default=str)}
    if differing:
        raise ValueError(f"create_model({name!r}, pretrained=True) got builder arguments {differing} that differ "
                         f"from the published checkpoint ({saved}). Pretrained weights load as saved: drop those "
                         "arguments, or build with pretrained=False and train.")
    return model


def _register_pretrained_loader() -> None:
    set_pretrained_loader(_pretrained_loader)


_register_pretrained_loader()
