"""Architectures, the registry, zoo entries and export.

Families register themselves on import (``plain``, ``residual``); the timm bridge lives in
``lipzoo.models.timm_bridge`` (imported by ``lipzoo/__init__.py``, since importing timm costs ~2 s).
"""

from lipzoo.models import plain, residual  # noqa: F401  (register the families)
from lipzoo.models.base import LipschitzSequential
from lipzoo.models.export import export
from lipzoo.models.registry import (create_model, is_model, list_architectures, list_models, list_pretrained,
                                    register_model, set_pretrained_loader)
from lipzoo.models.zoo import get_entry, list_entries, parse_eps, validate_entry

__all__ = [
    "LipschitzSequential", "create_model", "export", "get_entry", "is_model", "list_architectures",
    "list_entries", "list_models", "list_pretrained", "parse_eps", "register_model", "set_pretrained_loader",
    "validate_entry",
]
