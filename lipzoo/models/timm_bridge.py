"""Expose every lipzoo architecture to timm as ``lipzoo_<name>``, with the zoo entries as pretrained tags.

``import lipzoo`` does not import timm: it arranges for this module to be imported right after timm
is (``lipzoo/__init__.py``), so ``import lipzoo, timm`` (in either order) is enough for::

    timm.list_models("lipzoo*")        # lipzoo_4c3f, lipzoo_6c2f, lipzoo_lt_res_s, ...
    timm.list_pretrained("lipzoo*")    # lipzoo_4c3f.crm_mnist, lipzoo_6c2f.crm_cifar10, ...
    timm.create_model("lipzoo_6c2f.crm_cifar10", pretrained=True, num_classes=5)

The tag of a zoo entry is its name without the architecture (``crm-cifar10-6c2f`` ->
``crm_cifar10``); the architecture's first tag (CRM, published) is its default, so
``timm.create_model("lipzoo_6c2f", pretrained=True)`` loads ``crm-cifar10-6c2f``. Weights are
loaded by lipzoo (checksum-verified, strict); with another ``num_classes`` the classifier is
re-initialised and the certificate dropped. Registration reads the registry's metadata and builds
nothing. The ``pretrained_cfg`` declares ``mean = 0``, ``std = 1``: the model normalizes its own
input, so a timm data pipeline must feed raw pixels in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any, Callable

from timm.models import PretrainedCfg, generate_default_cfgs
from timm.models import register_model as timm_register_model
from torch import nn

from lipzoo.models import zoo
from lipzoo.models.base import build_pretrained_cfg
from lipzoo.models.factory import create_model
from lipzoo.models.registry import REGISTRY, ArchitectureInfo

__all__ = ["timm_name", "timm_tag_names"]

logger = logging.getLogger(__name__)

default_cfgs: dict[str, Any] = {}  # read by timm.models.register_model (module attribute, by name)

# Keyword arguments timm's create_model passes to every entrypoint that lipzoo builders do not take.
_TIMM_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict")
_KNOWN_CFG_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}


def timm_name(architecture: str) -> str:
    """timm name of a lipzoo architecture: ``lt-res-s`` -> ``lipzoo_lt_res_s``."""
    return "lipzoo_" + architecture.replace("-", "_")


def timm_tag_names(architecture: str) -> dict[str, str]:
    """``{tag: zoo entry}`` of an architecture, the default tag first."""
    return {zoo.pretrained_tag(e): e for e in zoo.entries_of(architecture)}


def _cfg(info: ArchitectureInfo, entry: str | None) -> dict[str, Any]:
    cfg = build_pretrained_cfg(info.name, info.num_classes, info.input_shape, classifier=None, first_conv=None)
    if entry is not None:
        meta = zoo.get_metadata(entry)
        cfg.update(num_classes=meta.num_classes, input_size=tuple(meta.input_shape),
                   mean=(0.0,) * meta.input_shape[0], std=(1.0,) * meta.input_shape[0])
        if meta.weights is not None:
            cfg["hf_hub_id"] = meta.weights.repo_id
        cfg["notes"] = cfg["notes"] + (f"lipzoo zoo entry {entry}.",)
    return {k: v for k, v in cfg.items() if k in _KNOWN_CFG_FIELDS}


def _make_entrypoint(architecture: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        cfg = kwargs.pop("pretrained_cfg", None)
        overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
        for key in _TIMM_KWARGS:
            kwargs.pop(key, None)
        cache_dir = kwargs.pop("cache_dir", None)
        tags = timm_tag_names(architecture)
        tag = cfg if isinstance(cfg, str) else cfg.tag if isinstance(cfg, PretrainedCfg) else None
        if tag and tag not in tags:
            raise ValueError(f"{timm_name(architecture)} has no pretrained tag {tag!r}; its tags are "
                             f"{[f'{timm_name(architecture)}.{t}' for t in tags]} (timm.list_pretrained('lipzoo*')).")
        model: Any  # a lipzoo model: pretrained_cfg, num_classes
        if pretrained:
            entry = tags[tag] if tag else zoo.default_entry(architecture)
            if entry is None:
                raise ValueError(f"timm.create_model({timm_name(architecture)!r}, pretrained=True): no lipzoo zoo "
                                 f"entry of {architecture!r} has published weights yet; see "
                                 "timm.list_pretrained('lipzoo*').")
            options = {"cache_dir": cache_dir} if cache_dir is not None else {}
            model = create_model(entry, pretrained=True, **options, **kwargs)
        else:
            entry = tags.get(tag) if tag else None
            # a tag builds its entry's configuration (model_args, input shape), untrained
            model = create_model(entry if entry else architecture, **kwargs)
        if isinstance(cfg, PretrainedCfg):
            cfg = cfg.to_dict()
        base = {**model.pretrained_cfg, "tag": tag or (zoo.pretrained_tag(entry) if entry else None)}
        if entry is not None and (weights := zoo.get_metadata(entry).weights) is not None:
            base["hf_hub_id"] = weights.repo_id
        model.pretrained_cfg = {**base, **(cfg if isinstance(cfg, dict) else {}), **overlay,
                                "num_classes": model.num_classes}
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = timm_name(architecture)
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"timm entrypoint of the lipzoo architecture {architecture!r}."
    return entrypoint


def _bridge(info: ArchitectureInfo) -> None:
    name = timm_name(info.name)
    if name in default_cfgs and callable(getattr(sys.modules[__name__], name, None)):
        return  # bridged already (a listener replays the registry): registering again would overwrite
    tags = timm_tag_names(info.name)
    cfgs: dict[str, dict[str, Any] | PretrainedCfg] = (
        {f"{name}.{tag}": _cfg(info, entry) for tag, entry in tags.items()} or {name: _cfg(info, None)})
    default_cfgs[name] = generate_default_cfgs(cfgs)[name]
    entrypoint = _make_entrypoint(info.name)
    setattr(sys.modules[__name__], name, entrypoint)
    try:
        timm_register_model(entrypoint)
    except Exception:
        default_cfgs.pop(name, None)
        vars(sys.modules[__name__]).pop(name, None)
        raise
    logger.debug("Registered %s with timm (tags %s).", name, list(tags))


REGISTRY.add_listener(_bridge)
