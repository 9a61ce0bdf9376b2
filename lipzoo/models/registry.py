"""The architecture registry: one object, filled by ``@register_model`` in the family files.

Layering (as in timm, ``_registry`` -> ``_builder`` -> ``_factory``): this module knows
architectures only; :mod:`lipzoo.models.zoo` reads the pretrained entries (YAML) and checks them
against it; :mod:`lipzoo.models.factory` builds models and loads weights on top of both. Nothing
here imports either of them, and nothing is installed into this module from outside; the timm
bridge *listens* to registrations (:meth:`ModelRegistry.add_listener`).

Each architecture carries the metadata of its default build (classes, input shape, dataset), so
listing, docs, tests and the timm bridge never build a model to learn it.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Iterator, Sequence

from torch import nn

__all__ = ["ArchitectureInfo", "ModelRegistry", "REGISTRY", "register_model", "list_architectures",
           "get_architecture", "architecture_name", "zoo_entry_names", "check_built_model"]

logger = logging.getLogger(__name__)

_PREFIX = "lipzoo_"


def architecture_name(fn_name: str) -> str:
    """Registry name of a builder: ``lipzoo_lt_res_s`` -> ``lt-res-s``."""
    base = fn_name[len(_PREFIX):] if fn_name.startswith(_PREFIX) else fn_name
    return base.replace("_", "-")


def zoo_entry_names() -> list[str]:
    """Names of the YAML files in ``lipzoo/zoo_configs`` (no parsing; the registry refuses these names)."""
    folder = resources.files("lipzoo") / "zoo_configs"
    if not folder.is_dir():
        return []
    return sorted(f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml"))


@dataclass(frozen=True)
class ArchitectureInfo:
    """A registered architecture and the metadata of its default build.

    Attributes:
        name: registry name (``"6c2f"``).
        builder: ``builder(num_classes=None, **kwargs) -> nn.Module``.
        num_classes: classes of the default build.
        input_shape: shape of one input of the default build, e.g. ``(3, 32, 32)``.
        dataset: the dataset the default build is sized for (``None`` if none).
        description: first line of the builder's docstring.
    """

    name: str
    builder: Callable[..., nn.Module]
    num_classes: int
    input_shape: tuple[int, ...]
    dataset: str | None
    description: str

    def build(self, **kwargs: Any) -> nn.Module:
        """Call the builder and check that it returns a registry model (see :func:`check_built_model`)."""
        return check_built_model(self.builder(**kwargs), self.name)


def check_built_model(model: Any, name: str) -> nn.Module:
    """``model`` if it offers what every lipzoo model offers, else ``TypeError`` naming what is missing.

    A registry model is an ``nn.Module`` with ``num_classes``, ``input_shape``, ``get_classifier()``
    and ``reset_classifier(n)`` (what the timm bridge, the hub and fine-tuning rely on);
    :class:`lipzoo.models.LipschitzSequential` has them all.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"The builder of {name!r} returned {type(model).__name__}, not an nn.Module.")
    missing = [a for a in ("num_classes", "input_shape", "get_classifier", "reset_classifier", "get_config")
               if not hasattr(model, a)]
    if missing:
        raise TypeError(f"The builder of {name!r} returned a {type(model).__name__} without {missing}; registry "
                        "builders must return a lipzoo.models.LipschitzSequential (or a module with the same API).")
    return model


class ModelRegistry:
    """Architectures by name. A registration either completes (listeners included) or leaves nothing."""

    def __init__(self) -> None:
        self._archs: dict[str, ArchitectureInfo] = {}
        self._listeners: list[Callable[[ArchitectureInfo], None]] = []

    def __contains__(self, name: object) -> bool:
        return name in self._archs

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._archs))

    def __len__(self) -> int:
        return len(self._archs)

    def register(self, fn: Callable[..., nn.Module], *, num_classes: int | None = None,
                 input_shape: Sequence[int] | None = None, dataset: str | None = None) -> ArchitectureInfo:
        """Register builder ``fn`` under ``architecture_name(fn.__name__)``.

        Without ``num_classes`` / ``input_shape`` the builder is called once (RNG untouched) to read
        them, which also checks that it returns a registry model.

        Raises:
            ValueError: the name is taken (architecture or zoo entry).
            TypeError: ``fn`` is not callable, or its model lacks the registry API.
        """
        if not callable(fn):
            raise TypeError(f"register_model expects a builder function, got {type(fn).__name__}.")
        name = architecture_name(fn.__name__)
        if name in self._archs:
            old = self._archs[name].builder
            raise ValueError(f"Architecture {name!r} is already registered by {old.__module__}.{old.__qualname__}; "
                             f"rename {fn.__module__}.{fn.__qualname__}.")
        if name in zoo_entry_names():
            raise ValueError(f"Architecture name {name!r} clashes with the zoo entry lipzoo/zoo_configs/{name}.yaml; "
                             "rename the builder.")
        if num_classes is None or input_shape is None:
            import torch

            with torch.random.fork_rng(devices=[]):  # a probe build must not move the caller's RNG
                probe: Any = check_built_model(fn(), name)  # a lipzoo model: num_classes, input_shape
            num_classes = probe.num_classes if num_classes is None else num_classes
            input_shape = probe.input_shape if input_shape is None else input_shape
        doc = inspect.getdoc(fn) or ""
        info = ArchitectureInfo(name, fn, int(num_classes), tuple(int(s) for s in input_shape), dataset,
                                doc.split("\n")[0])
        self._archs[name] = info
        try:
            for listener in self._listeners:
                listener(info)
        except Exception:
            del self._archs[name]  # all or nothing: a listener that fails undoes the registration
            raise
        return info

    def add_listener(self, listener: Callable[[ArchitectureInfo], None]) -> None:
        """Call ``listener(info)`` for every architecture registered so far and from now on."""
        for info in list(self._archs.values()):
            listener(info)
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[ArchitectureInfo], None]) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)

    def unregister(self, name: str) -> None:
        """Remove architecture ``name`` (tests and interactive sessions)."""
        self._archs.pop(name)

    def get(self, name: str) -> ArchitectureInfo:
        """The :class:`ArchitectureInfo` of ``name`` (``KeyError`` if unknown; see the factory for messages)."""
        return self._archs[name]

    def names(self, pattern: str | None = None) -> list[str]:
        """Architecture names matching the fnmatch ``pattern``, sorted."""
        return filter_names(self._archs, pattern)


def filter_names(names, pattern: str | None) -> list[str]:
    """``names`` matching the fnmatch ``pattern`` (all for ``None``), sorted."""
    if pattern is not None and not isinstance(pattern, str):
        raise TypeError(f"pattern must be an fnmatch string such as 'crm-*' or None, got {type(pattern).__name__}.")
    return sorted(n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern))


REGISTRY = ModelRegistry()
"""The one registry of architectures: :func:`register_model` adds to it, the factory builds from it."""


def register_model(fn: Callable[..., nn.Module] | None = None, *, num_classes: int | None = None,
                   input_shape: Sequence[int] | None = None, dataset: str | None = None):
    """Decorator: register an architecture builder in :data:`REGISTRY`; returns the builder unchanged.

    Use bare (``@register_model``: the builder is called once to read its metadata) or with the
    default build's metadata (``@register_model(num_classes=10, input_shape=(3, 32, 32),
    dataset="cifar10")``: nothing is built).
    """
    def decorate(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        REGISTRY.register(f, num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        return f

    return decorate if fn is None else decorate(fn)


def list_architectures(pattern: str | None = None) -> list[str]:
    """Registered architecture names matching the fnmatch ``pattern``, sorted."""
    return REGISTRY.names(pattern)


def get_architecture(name: str) -> ArchitectureInfo:
    """The :class:`ArchitectureInfo` of a registered architecture.

    Raises:
        ValueError: not registered (naming the registered ones).
    """
    if name not in REGISTRY:
        raise ValueError(f"Architecture {name!r} is not registered; known: {REGISTRY.names()}.")
    return REGISTRY.get(name)


def __getattr__(name: str) -> Any:
    # lipzoo 0.1 names that moved to the factory (above this module); resolved on use, so there is
    # no import cycle.
    if name in ("create_model", "build_entry", "list_models", "list_pretrained", "is_model"):
        from lipzoo.models import factory

        return getattr(factory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
