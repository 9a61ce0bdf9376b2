"""Training configuration: a zoo entry or YAML file, plus ``key=value`` overrides, parsed once.

:func:`resolve_config` returns the dict layout of :meth:`lipzoo.meta.Metadata.to_dict` (keys
``name``, ``architecture``, ``model_args``, ``num_classes``, ``input_shape``, ``dataset``,
``normalization``, ``recipe``, ``certify.eps``, ``weights``, ``metrics``, ...), after the whole
config went through :class:`lipzoo.meta.Metadata` and the registry checks of the zoo; use
:func:`resolve_metadata` for the typed form.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from lipzoo.meta import Metadata

__all__ = ["resolve_config", "resolve_metadata", "apply_overrides"]

# YAML 1.1 (PyYAML) reads 1e-3 as a string; a command-line override means the number.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _raw(target: str) -> dict[str, Any]:
    from lipzoo.models import zoo

    path = Path(target)
    if path.suffix in (".yaml", ".yml") or os.sep in target:
        if not path.is_file():
            raise FileNotFoundError(f"Config file {str(path)!r} does not exist. Pass a zoo entry name "
                                    f"({', '.join(zoo.list_entries())}) or a path to a YAML file.")
        try:
            entry = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"Config file {str(path)!r} is not valid YAML: {err}") from err
        if not isinstance(entry, dict):
            raise ValueError(f"Config file {str(path)!r} must hold a mapping, got {type(entry).__name__}.")
        if "recipe" in entry:
            entry = {**entry, "recipe": zoo.resolve_recipe(entry["recipe"])}
        return entry
    return zoo.get_entry(target)


def resolve_metadata(target: str, overrides: list[str] | None = None) -> Metadata:
    """The :class:`lipzoo.meta.Metadata` of a zoo entry or YAML file after ``overrides``.

    Args:
        target: a zoo entry (``"crm-mnist-4c3f"``) or a path to a YAML file with the same schema
            (its ``recipe`` may name a shared recipe, e.g. ``recipe: crm-cifar10``).
        overrides: ``"dotted.key=value"`` strings, e.g. ``["recipe.epochs=5", "recipe.crm.lam=10"]``;
            values are parsed as YAML. A key that is not in the config is an error.

    Raises:
        ValueError: a bad override or a config that breaks the schema (naming the key).
    """
    from lipzoo.models import zoo

    entry = apply_overrides(_raw(target), overrides or [])
    changed = any(item.split("=", 1)[0].strip().startswith("recipe.") for item in overrides or [])
    if changed and isinstance(entry.get("recipe"), dict):
        entry["recipe"].pop("name", None)  # a modified shared recipe is not that recipe any more
    return zoo.parse_entry(entry)


def resolve_config(target: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """:func:`resolve_metadata` as the plain dict ``lipzoo.train`` consumes (see the module docstring)."""
    return resolve_metadata(target, overrides).to_dict()


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``config`` with ``"dotted.key=value"`` overrides applied (values parsed as YAML).

    ``1e-4`` is read as a number (plain YAML would read a string).

    Raises:
        ValueError: an override without ``=``, or a key that is not in the config.
    """
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r} must look like key=value, e.g. recipe.epochs=5.")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = config
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:i]) or "the config"
                known = sorted(node) if isinstance(node, dict) else []
                raise ValueError(f"Unknown config key {key!r}: {part!r} is not in {where} (known: {known}).")
            if i == len(parts) - 1:
                value = yaml.safe_load(raw)
                if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(raw.strip()):
                    value = float(raw)
                node[part] = value
            else:
                node = node[part]
    return config
