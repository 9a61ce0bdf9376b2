"""The factory: ``create_model`` over the architecture registry and the zoo entries.

Names it takes:

* an architecture (``"6c2f"``): fresh weights; with ``pretrained=True`` its default pretrained
  entry (see :func:`lipzoo.models.zoo.default_entry`);
* ``"<architecture>.<tag>"`` (``"6c2f.crm_cifar10"``) or a zoo entry (``"crm-cifar10-6c2f"``);
* ``"hf-hub:owner/name"``: a checkpoint on the Hugging Face Hub, ``"local-dir:path"``: a checkpoint
  folder (both always pretrained); :func:`load_pretrained` also takes a folder path as it is.

With ``pretrained=True`` and a ``num_classes`` other than the checkpoint's, every weight but the
classifier is loaded and the classifier is re-initialised (``reset_classifier``); the certificate
and measured numbers of the checkpoint no longer apply and are dropped from the model's metadata.

This is the one place where the models package reaches the hub for weights (timm's ``_builder``
-> ``_hub``): the import is done when weights are asked for, so building architectures never
imports ``lipzoo.hub`` and nothing has to be installed from above.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from lipzoo.meta import Metadata
from lipzoo.models import zoo
from lipzoo.models.registry import REGISTRY, filter_names, get_architecture, list_architectures

__all__ = ["create_model", "build_model", "build_entry", "load_pretrained", "list_models", "list_pretrained",
           "is_model", "resolve_name", "HUB_PREFIX", "LOCAL_PREFIX"]

logger = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"  # timm's spelling of "a checkpoint folder on this machine"
# keyword arguments of the hub loader (lipzoo.hub.load), passed through with pretrained=True
_LOAD_OPTIONS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "map_location")


def list_models(pattern: str | None = None) -> list[str]:
    """Architectures and zoo entries matching the fnmatch ``pattern`` (e.g. ``"crm-*"``), sorted."""
    return filter_names(set(list_architectures()) | set(zoo.list_entries()), pattern)


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Zoo entries with published weights matching ``pattern``, sorted."""
    return filter_names([n for n in zoo.list_entries() if zoo.get_metadata(n).weights is not None], pattern)


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered architecture or a zoo entry."""
    return name in REGISTRY or name in zoo.list_entries()


def _unknown(name: Any) -> ValueError:
    if isinstance(name, str) and ("/" in name or "\\" in name or name.endswith((".pt", ".pth", ".safetensors"))):
        return ValueError(f"create_model takes a registered name, got {name!r}, which looks like a Hub repo id "
                          f"or a path; load a checkpoint with lipzoo.load(...) (or create_model('{HUB_PREFIX}"
                          "owner/name') for a Hub repo).")
    close = difflib.get_close_matches(str(name), list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"Unknown model {name!r}.{hint} See lipzoo.list_models().")


def resolve_name(name: str) -> tuple[str | None, str | None]:
    """``(architecture, entry)`` of a name: ``"6c2f"`` -> ``("6c2f", None)``; ``"crm-cifar10-6c2f"`` and
    ``"6c2f.crm_cifar10"`` -> ``("6c2f", "crm-cifar10-6c2f")``.

    Raises:
        ValueError: unknown name or tag (with suggestions).
    """
    if name in REGISTRY:
        return name, None
    if name in zoo.list_entries():
        return zoo.get_metadata(name).architecture, name
    arch, dot, tag = name.partition(".")
    if dot and arch in REGISTRY:
        for entry in zoo.entries_of(arch):
            if zoo.pretrained_tag(entry) == tag:
                return arch, entry
        tags = [zoo.pretrained_tag(e) for e in zoo.entries_of(arch)]
        raise ValueError(f"Architecture {arch!r} has no pretrained tag {tag!r}; its tags are {tags}. See "
                         "lipzoo.list_pretrained().")
    raise _unknown(name)


def build_model(config: Metadata | Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Build the (untrained) network a config describes; ``overrides`` win over its builder arguments.

    Args:
        config: a :class:`lipzoo.meta.Metadata` or a dict in its layout (a zoo entry, ``config.json``
            or what :func:`lipzoo.train.resolve_config` returns).

    Raises:
        ValueError: the architecture is not registered, or it builds a model whose input shape is not the
            config's ``input_shape``.
    """
    meta = config if isinstance(config, Metadata) else Metadata.from_dict(config)
    info = get_architecture(meta.architecture) if meta.architecture in REGISTRY else None
    if info is None:
        raise ValueError(f"{_what(meta)} names architecture {meta.architecture!r}, which is not registered; "
                         f"known: {list_architectures()}.")
    model = info.build(**{**meta.arch.builder_kwargs(), **overrides})
    shape = tuple(model.input_shape)
    if "in_chans" not in overrides and "img_size" not in overrides and shape != tuple(meta.input_shape):
        raise ValueError(f"{_what(meta)} declares input_shape {list(meta.input_shape)} but architecture "
                         f"{meta.architecture!r} built with its model_args expects {list(shape)}; fix the "
                         "input_shape or model_args.")
    return model


def _what(meta: Metadata) -> str:
    return f"Zoo entry {meta.name!r}" if meta.name else "The config"


def build_entry(entry: Metadata | Mapping[str, Any], **overrides: Any) -> nn.Module:
    """lipzoo 0.1 name of :func:`build_model`."""
    return build_model(entry, **overrides)


def create_model(name: str, pretrained: bool = False, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build an architecture or a zoo entry, with its published weights when ``pretrained``.

    Args:
        name: an architecture (``"6c2f"``), a zoo entry (``"crm-cifar10-6c2f"``), an architecture with a
            pretrained tag (``"6c2f.crm_cifar10"``) or ``"hf-hub:owner/name"``; see :func:`list_models`.
        pretrained: load the weights (the entry's, or the architecture's default entry's). The model
            comes back in eval mode with its metadata in ``model.lipzoo_config``.
        num_classes: readout size. With ``pretrained=True`` and a different size than the checkpoint's,
            the classifier is re-initialised and the checkpoint's certificate is dropped.
        **kwargs: builder arguments (``mean``, ``std``, ``activation``, ``in_chans``, ...); with
            ``pretrained=True`` only :func:`lipzoo.hub.load` options (``revision``, ``cache_dir``,
            ``token``, ``local_files_only``, ``force_download``, ``map_location``), since the weights
            fix the rest.

    Raises:
        ValueError: unknown name, no weights, or builder arguments that contradict the weights.
    """
    if not isinstance(name, str):
        raise TypeError(f"create_model: name must be a str such as '6c2f', got {type(name).__name__}.")
    if name.startswith(HUB_PREFIX):
        return _pretrained(name, name, num_classes, kwargs)
    if name.startswith(LOCAL_PREFIX):
        return _pretrained(name, name[len(LOCAL_PREFIX):], num_classes, kwargs)
    arch, entry = resolve_name(name)
    if pretrained:
        if entry is None:
            entry = zoo.default_entry(arch)
            if entry is None:
                entries = zoo.entries_of(arch)
                raise ValueError(f"Architecture {name!r} has no pretrained weights yet (zoo entries of it: {entries}, "
                                 "none published). Build it with pretrained=False, or pick one of "
                                 f"lipzoo.list_pretrained() = {list_pretrained()}.")
            logger.info("%s: loading its default pretrained entry %s.", name, entry)
        return _pretrained(name, entry, num_classes, kwargs)
    bad = sorted(set(kwargs) & set(_LOAD_OPTIONS))
    if bad:
        raise ValueError(f"create_model({name!r}): {bad} apply to pretrained=True only.")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if entry is None:
        return get_architecture(arch).build(**kwargs)
    return build_model(zoo.get_metadata(entry), **kwargs)


def load_pretrained(source: str | os.PathLike, num_classes: int | None = None, **options: Any) -> nn.Module:
    """A pretrained model from anywhere, its classifier resized to ``num_classes`` (fine-tuning's start).

    Args:
        source: a checkpoint folder (``runs/A/final``), a zoo entry (``"crm-cifar10-6c2f"``), an
            architecture or ``architecture.tag`` (its default / tagged entry) or ``"hf-hub:owner/name"``.
        num_classes: the new readout size; ``None`` or the checkpoint's own keeps the classifier. A new
            classifier drops the checkpoint's certificate and numbers (``model.lipzoo_config["parent"]``
            names the checkpoint).
        **options: :func:`lipzoo.hub.load` options (``revision``, ``cache_dir``, ``token``,
            ``local_files_only``, ``force_download``, ``map_location``).

    Returns:
        The model in eval mode with ``model.lipzoo_config``.
    """
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.isdir(source)):
        return create_model(LOCAL_PREFIX + os.fspath(source), num_classes=num_classes, **options)
    return create_model(source, pretrained=True, num_classes=num_classes, **options)


def _pretrained(name: str, source: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
    local = name.startswith(LOCAL_PREFIX)
    meta = None if source.startswith(HUB_PREFIX) or local else zoo.get_metadata(source)
    if meta is not None and meta.weights is None:
        raise ValueError(f"Zoo entry {source!r} has no published weights yet (weights: null in "
                         f"lipzoo/zoo_configs/{source}.yaml). Build it untrained with pretrained=False, or pick "
                         f"one of list_pretrained() = {list_pretrained()}.")
    options = {k: kwargs.pop(k) for k in _LOAD_OPTIONS if k in kwargs}
    from lipzoo.hub.checkpoint import load  # weights come from the hub layer (see the module docstring)

    if local and not os.path.isdir(source):
        raise ValueError(f"{name!r}: {source!r} is not a checkpoint folder (model.safetensors + config.json).")
    model = load(Path(source) if local else source, **options)
    saved = model.lipzoo_config
    builder = {**saved.get("model_args", {}), **(saved.get("normalization") or {})}
    # compared as JSON: (0.5,) and [0.5] are the same normalization
    differing = {k: v for k, v in kwargs.items()
                 if k not in builder or json.dumps(builder[k], default=str) != json.dumps(v, default=str)}
    if differing:
        raise ValueError(f"create_model({name!r}, pretrained=True) got builder arguments {differing} that differ "
                         f"from the checkpoint's ({builder}). Pretrained weights load as saved: drop those "
                         "arguments (num_classes=N replaces only the classifier), or build with pretrained=False.")
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    if meta is not None and isinstance(getattr(model, "pretrained_cfg", None), dict):
        model.pretrained_cfg = {**model.pretrained_cfg, "tag": zoo.pretrained_tag(source),
                                "hf_hub_id": meta.weights.repo_id}
    return model
