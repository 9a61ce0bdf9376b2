"""One registry for architectures and zoo entries.

* An **architecture** is a builder function decorated with :func:`register_model` in a family file
  (``plain.py``, ``residual.py``); ``lipzoo_4c3f`` registers ``"4c3f"``, ``lipzoo_lt_res_s``
  registers ``"lt-res-s"``.
* A **zoo entry** is a YAML file ``lipzoo/zoo_configs/<entry>.yaml`` (see :mod:`lipzoo.models.zoo`):
  an architecture plus its normalization, recipe, certification radii and (once trained) weights.

Loading weights is the hub package's job; it plugs in with :func:`set_pretrained_loader` so that
this package never imports ``lipzoo.hub`` (the hub sits above models in the import order).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from typing import Any, Callable

from torch import nn

from lipzoo.models import zoo

__all__ = ["register_model", "create_model", "list_models", "list_pretrained", "list_architectures",
           "is_model", "set_pretrained_loader", "add_register_hook", "architecture_name"]

logger = logging.getLogger(__name__)

_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}
_REGISTER_HOOKS: list[Callable[[str, Callable[..., nn.Module]], None]] = []
_PRETRAINED_LOADER: Callable[..., nn.Module] | None = None

_PREFIX = "lipzoo_"


def architecture_name(fn_name: str) -> str:
    """Registry name of a builder: ``lipzoo_lt_res_s`` -> ``lt-res-s``."""
    base = fn_name[len(_PREFIX):] if fn_name.startswith(_PREFIX) else fn_name
    return base.replace("_", "-")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` as an architecture builder (returns ``fn`` unchanged).

    Raises:
        ValueError: the name is already an architecture or a zoo entry.
    """
    name = architecture_name(fn.__name__)
    if name in _ARCHITECTURES:
        old = _ARCHITECTURES[name]
        raise ValueError(f"Architecture {name!r} is already registered by {old.__module__}.{old.__name__}; "
                         f"rename {fn.__module__}.{fn.__name__}.")
    if name in zoo.list_entries():
        raise ValueError(f"Architecture name {name!r} clashes with the zoo entry lipzoo/zoo_configs/{name}.yaml; "
                         "rename the builder.")
    _ARCHITECTURES[name] = fn
    for hook in _REGISTER_HOOKS:
        hook(name, fn)
    return fn


def add_register_hook(hook: Callable[[str, Callable[..., nn.Module]], None]) -> None:
    """Call ``hook(name, fn)`` for every architecture registered so far and from now on (timm bridge)."""
    _REGISTER_HOOKS.append(hook)
    for name, fn in list(_ARCHITECTURES.items()):
        hook(name, fn)


def set_pretrained_loader(fn: Callable[..., nn.Module] | None) -> None:
    """Install the loader ``create_model(..., pretrained=True)`` delegates to.

    ``fn(entry_name, **kwargs) -> nn.Module``; ``lipzoo.hub`` installs its own on import.
    ``None`` uninstalls it.
    """
    global _PRETRAINED_LOADER
    if fn is not None and not callable(fn):
        raise TypeError(f"set_pretrained_loader expects a callable or None, got {type(fn).__name__}.")
    _PRETRAINED_LOADER = fn


def list_architectures(pattern: str | None = None) -> list[str]:
    """Registered architecture names matching the fnmatch ``pattern``, sorted."""
    return _filter(_ARCHITECTURES, pattern)


def list_models(pattern: str | None = None) -> list[str]:
    """Architectures and zoo entries matching the fnmatch ``pattern`` (e.g. ``"crm-*"``), sorted."""
    return _filter(set(_ARCHITECTURES) | set(zoo.list_entries()), pattern)


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Zoo entries with published weights (``weights`` not null) matching ``pattern``, sorted."""
    names = [n for n in zoo.list_entries() if zoo.get_entry(n)["weights"] is not None]
    return _filter(names, pattern)


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered architecture or a zoo entry."""
    return name in _ARCHITECTURES or name in zoo.list_entries()


def _filter(names, pattern: str | None) -> list[str]:
    if pattern is not None and not isinstance(pattern, str):
        raise TypeError(f"pattern must be an fnmatch string such as 'crm-*' or None, got {type(pattern).__name__}.")
    return sorted(n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern))


def _unknown(name: Any) -> ValueError:
    if isinstance(name, str) and ("/" in name or "\\" in name or name.endswith((".pt", ".pth", ".safetensors"))):
        return ValueError(f"create_model takes a registered name, got {name!r}, which looks like a Hub repo id "
                          "or a path; load a checkpoint with lipzoo.load(...) instead.")
    close = difflib.get_close_matches(str(name), list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"Unknown model {name!r}.{hint} See lipzoo.list_models().")


def create_model(name: str, pretrained: bool = False, num_classes: int | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build an architecture or a zoo entry.

    Args:
        name: an architecture (``"6c2f"``) or a zoo entry (``"crm-cifar10-6c2f"``); see
            :func:`list_models`.
        pretrained: load the entry's published weights through the loader installed with
            :func:`set_pretrained_loader` (only zoo entries have weights).
        num_classes: readout size; ``None`` keeps the architecture's / entry's own.
        **kwargs: builder arguments (``mean``, ``std``, ``activation``, ``in_chans``, ...); for a
            zoo entry they override its ``model_args`` and ``normalization``.

    Raises:
        ValueError: unknown name, or ``pretrained=True`` where there are no weights or no loader.
    """
    if not isinstance(name, str):
        raise TypeError(f"create_model: name must be a str such as '6c2f', got {type(name).__name__}.")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name in _ARCHITECTURES:
        if pretrained:
            entries = [e for e in list_pretrained() if zoo.get_entry(e)["architecture"] == name]
            where = f"the zoo entries {entries}" if entries else "zoo entries (none has weights yet for it)"
            raise ValueError(f"Architecture {name!r} has no weights of its own; pretrained weights belong to "
                             f"{where}. Use lipzoo.create_model('<entry>', pretrained=True) or lipzoo.load('<entry>'); "
                             "see lipzoo.list_pretrained().")
        return _ARCHITECTURES[name](**kwargs)
    if name in zoo.list_entries():
        entry = zoo.get_entry(name)
        if pretrained:
            return _load_pretrained(name, entry, kwargs)
        return build_entry(entry, **kwargs)
    raise _unknown(name)


def build_entry(entry: dict[str, Any], **overrides: Any) -> nn.Module:
    """Build the (untrained) architecture of a zoo entry dict; ``overrides`` win over the entry."""
    arch = entry["architecture"]
    if arch not in _ARCHITECTURES:
        raise ValueError(f"Zoo entry {entry['name']!r} names architecture {arch!r}, which is not registered; "
                         f"known: {list_architectures()}.")
    args: dict[str, Any] = {**entry["model_args"], "num_classes": entry["num_classes"], **entry["normalization"]}
    args.update(overrides)
    model = _ARCHITECTURES[arch](**args)
    shape = list(getattr(model, "input_shape", entry["input_shape"]))
    if "in_chans" not in overrides and "img_size" not in overrides and shape != list(entry["input_shape"]):
        raise ValueError(f"Zoo entry {entry['name']!r} declares input_shape {entry['input_shape']} but "
                         f"architecture {arch!r} built with its model_args expects {shape}; fix the entry's "
                         "input_shape or model_args.")
    return model


def _load_pretrained(name: str, entry: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    if entry["weights"] is None:
        available = list_pretrained()
        raise ValueError(f"Zoo entry {name!r} has no published weights yet (weights: null in "
                         f"lipzoo/zoo_configs/{name}.yaml). Build it untrained with pretrained=False, or pick one "
                         f"of list_pretrained() = {available}.")
    if _PRETRAINED_LOADER is None:
        raise RuntimeError(f"No pretrained loader is installed, so the weights of {name!r} cannot be loaded. "
                           "`import lipzoo.hub` installs it (lipzoo.load does the same), or call "
                           "lipzoo.models.set_pretrained_loader(fn).")
    logger.info("Loading pretrained zoo entry %s.", name)
    return _PRETRAINED_LOADER(name, **kwargs)
