"""Training configuration: a zoo entry or YAML file, plus ``key=value`` overrides."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["resolve_config", "apply_overrides"]

# YAML 1.1 (PyYAML) reads 1e-3 as a string; a command-line override means the number.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def resolve_config(target: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load a training config from a zoo entry name or a YAML path and apply overrides.

    Args:
        target: a zoo entry (``"crm-mnist-4c3f"``) or a path to a YAML file with the same schema.
        overrides: ``"dotted.key=value"`` strings, e.g. ``["recipe.epochs=5", "recipe.crm.lam=10"]``;
            values are parsed as YAML. A key that is not in the config is an error.
    """
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
        entry = zoo.validate_entry(entry)
    else:
        entry = copy.deepcopy(zoo.get_entry(target))
    entry = apply_overrides(entry, overrides or [])
    return zoo.validate_entry(entry)


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
