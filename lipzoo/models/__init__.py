"""Architectures, the registry, zoo entries, the factory and export.

Layering (each imports only those before it): ``registry`` (architectures) -> families (``plain``,
``residual``, ``sll``, ``aol``: register on import) -> ``zoo`` (entries, shared recipes, pretrained tags) ->
``factory`` (``create_model``; reaches ``lipzoo.hub`` only when weights are asked for). The timm
bridge (``lipzoo.models.timm_bridge``) is imported when timm is (see ``lipzoo/__init__.py``).
"""

from lipzoo.models.registry import (REGISTRY, ArchitectureInfo, ModelRegistry, get_architecture,  # noqa: I001
                                    list_architectures, register_model)
from lipzoo.models import aol, plain, residual, sll  # noqa: F401  (register the families)
from lipzoo.models.base import LipschitzSequential
from lipzoo.models.export import export
from lipzoo.models.factory import build_model, create_model, is_model, list_models, list_pretrained, load_pretrained
from lipzoo.models.zoo import get_entry, get_metadata, list_entries, validate_entry

__all__ = [
    "REGISTRY", "ArchitectureInfo", "LipschitzSequential", "ModelRegistry", "build_model", "create_model", "export",
    "get_architecture", "get_entry", "get_metadata", "is_model", "list_architectures", "list_entries",
    "list_models", "list_pretrained", "load_pretrained", "register_model", "validate_entry",
]
