"""Expose every lipzoo architecture to timm as ``lipzoo_<name>``.

After ``import lipzoo.models.timm_bridge`` (``import lipzoo`` does it), ``timm.list_models("lipzoo*")``
lists ``lipzoo_4c3f``, ``lipzoo_6c2f``, ``lipzoo_lt_res_s``, ... and ``timm.create_model("lipzoo_6c2f",
num_classes=100)`` builds one. Architectures registered later with ``@register_model`` are bridged
as they appear. Registration goes through timm's own API (``timm.models.register_model`` with a
module-level ``default_cfgs`` built by ``generate_default_cfgs``).

timm's pretrained weights machinery is not used: lipzoo weights carry certificates and metadata
that timm's loader would drop, so ``pretrained=True`` is refused with a pointer to ``lipzoo.load``.
The ``pretrained_cfg`` declares ``mean = 0``, ``std = 1``: the model normalizes its own input, so a
timm data pipeline must feed raw pixels in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any, Callable

from timm.models import generate_default_cfgs
from timm.models import register_model as timm_register_model
from timm.models import PretrainedCfg
import torch
from torch import nn

from lipzoo.models.base import build_pretrained_cfg
from lipzoo.models.registry import add_register_hook, create_model, list_pretrained
from lipzoo.models import zoo

__all__ = ["timm_name"]

logger = logging.getLogger(__name__)

default_cfgs: dict[str, Any] = {}  # read by timm.models.register_model (module attribute, by name)

# Keyword arguments timm's create_model passes to every entrypoint; lipzoo builders do not take them.
_TIMM_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_strict")


def timm_name(architecture: str) -> str:
    """timm name of a lipzoo architecture: ``lt-res-s`` -> ``lipzoo_lt_res_s``."""
    return "lipzoo_" + architecture.replace("-", "_")


def _refuse_pretrained(architecture: str) -> ValueError:
    entries = sorted((e for e in zoo.list_entries() if zoo.get_entry(e)["architecture"] == architecture),
                     key=lambda e: (not e.startswith("crm-"), e))  # CRM entries are the zoo's main models
    with_weights = [e for e in entries if e in list_pretrained()]
    example = (with_weights or entries or ["crm-mnist-4c3f"])[0]
    return ValueError(f"timm.create_model({timm_name(architecture)!r}, pretrained=True) is not supported: lipzoo "
                      f"weights belong to zoo entries (with their certificates), not to architectures. Load one "
                      f"with lipzoo.load({example!r}) (zoo entries of {architecture!r}: {entries}; with weights: "
                      f"{with_weights}); lipzoo.list_pretrained() lists them all.")


def _make_entrypoint(architecture: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise _refuse_pretrained(architecture)
        cfg = kwargs.pop("pretrained_cfg", None)
        overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
        for key in _TIMM_KWARGS:
            kwargs.pop(key, None)
        if isinstance(cfg, str) and cfg:
            raise ValueError(f"{timm_name(architecture)} has no pretrained tags in timm (got tag {cfg!r}); "
                             f"load trained lipzoo weights with lipzoo.load('<entry>').")
        model = create_model(architecture, **kwargs)
        if isinstance(cfg, PretrainedCfg):
            cfg = cfg.to_dict()
        if isinstance(cfg, dict) or overlay:
            model.pretrained_cfg = {**model.pretrained_cfg, **(cfg or {}), **overlay,
                                    "num_classes": model.num_classes}
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = timm_name(architecture)
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"timm entrypoint of the lipzoo architecture {architecture!r}."
    return entrypoint


def _bridge(architecture: str, builder: Callable[..., nn.Module]) -> None:
    name = timm_name(architecture)
    with torch.random.fork_rng(devices=[]):  # a throwaway build must not move the caller's RNG
        model = builder()  # only to read input shape and classes (all builds take milliseconds)
    cfg = build_pretrained_cfg(architecture, model.num_classes, model.input_shape,
                               classifier=model.pretrained_cfg["classifier"],
                               first_conv=model.pretrained_cfg["first_conv"])
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    default_cfgs.update(generate_default_cfgs({name: {k: v for k, v in cfg.items() if k in known}}))
    entrypoint = _make_entrypoint(architecture)
    setattr(sys.modules[__name__], name, entrypoint)
    timm_register_model(entrypoint)
    logger.debug("Registered %s with timm.", name)


add_register_hook(_bridge)
