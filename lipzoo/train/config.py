"""Training configuration: a zoo entry or YAML file, plus ``key=value`` overrides, parsed once.

:func:`resolve_config` returns the dict layout of :meth:`lipzoo.meta.Metadata.to_dict` (keys
``name``, ``architecture``, ``model_args``, ``num_classes``, ``input_shape``, ``dataset``,
``normalization``, ``recipe``, ``certify.eps``, ``weights``, ``metrics``, ...), after the whole
config went through :class:`lipzoo.meta.Metadata` and the registry checks of the zoo; use
:func:`resolve_metadata` for the typed form.

Fine-tuning (``lipzoo train ENTRY --init SOURCE --data FILE``) is resolved here too, before any
training starts: the class count and input shape come from the data, the architecture must be the
initial checkpoint's, and the normalization follows :data:`NORMALIZATION_CHOICES` (see
``docs/finetune.md`` for why a fine-tuned model keeps its parent's ``Normalize`` by default).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, cast

import yaml

from lipzoo.meta import Metadata, Normalization, Parent, Recipe

__all__ = ["resolve_config", "resolve_metadata", "apply_overrides", "init_metadata", "NORMALIZATION_CHOICES"]

logger = logging.getLogger(__name__)

#: ``--normalization``: ``auto`` keeps the initial checkpoint's ``Normalize`` when there is one (its
#: weights were trained behind it), else uses the statistics of the user's training split when the
#: data is not the recipe's dataset, else the recipe's; ``data`` always uses the training split's
#: statistics; ``keep`` never does (the initial checkpoint's, else the recipe's). An explicit
#: ``normalization.mean=...`` / ``normalization.std=...`` override always wins.
NORMALIZATION_CHOICES = ("auto", "data", "keep")

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


def resolve_metadata(target: str, overrides: list[str] | None = None, *, data: str | None = None,
                     init: str | None = None, normalization: str = "auto",
                     data_root: str | None = None) -> Metadata:
    """The :class:`lipzoo.meta.Metadata` of a zoo entry or YAML file after ``overrides``, ``data`` and ``init``.

    Args:
        target: a zoo entry (``"crm-mnist-4c3f"``) or a path to a YAML file with the same schema
            (its ``recipe`` may name a shared recipe, e.g. ``recipe: crm-cifar10``).
        overrides: ``"dotted.key=value"`` strings, e.g. ``["recipe.epochs=5", "recipe.crm.lam=10"]``;
            values are parsed as YAML. A key that is not in the config is an error (all of them are
            listed). ``recipe.epochs`` alone implies the decay start and the CE warm-up: they scale
            with it (:func:`lipzoo.train.budget.scale_schedule`) unless they are overridden too.
        data: train on this data instead of the recipe's dataset: a known dataset name, a Keras-layout
            ``.npz`` or an image folder (see :func:`lipzoo.data.data_facts`). Its class count and
            input shape replace the recipe's; it is checked here, before anything is trained.
        init: start from these weights (a checkpoint folder, zoo entry, ``arch.tag`` or
            ``hf-hub:owner/name``): its architecture must be the target's; it becomes the
            ``parent``, and its ``Normalize`` is kept (``normalization="auto"``).
        normalization: one of :data:`NORMALIZATION_CHOICES`.
        data_root: folder of the known datasets (``--data-root``).

    Raises:
        ValueError: a bad override, a config that breaks the schema (naming the key), data that
            breaks the rules of :func:`lipzoo.data.data_facts` or does not fit ``init``, or an
            ``init`` of another architecture.
    """
    from lipzoo.models import zoo

    if normalization not in NORMALIZATION_CHOICES:
        raise ValueError(f"normalization must be one of {list(NORMALIZATION_CHOICES)}; got {normalization!r}.")
    overrides = list(overrides or [])
    raw = _raw(target)
    entry = apply_overrides(raw, overrides)
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    if "recipe.epochs" in keys:
        entry["recipe"] = _with_epochs(raw.get("recipe"), entry.get("recipe"), keys)
    if any(k.startswith("recipe.") for k in keys) and isinstance(entry.get("recipe"), dict):
        entry["recipe"].pop("name", None)  # a modified shared recipe is not that recipe any more
    meta = zoo.parse_entry(entry)
    if data is None and init is None:
        return meta
    told = any(k == "normalization" or k.startswith("normalization.") for k in keys)
    return _fit_run(meta, data=data, init=init, normalization="config" if told else normalization,
                    data_root=data_root)


def _with_epochs(before: Any, after: Any, keys: list[str]) -> Any:
    """An overridden ``recipe.epochs`` implies the settings counted in epochs: the decay start and the CE warm-up
    scale with it (:func:`lipzoo.train.budget.scale_schedule`), unless the command line sets them too. A recipe
    that cannot be scaled is returned as it is: the schema check names its problems."""
    from lipzoo.train.budget import DEPENDENT, scale_schedule

    if not (isinstance(before, dict) and isinstance(after, dict)):
        return after
    old, new = before.get("epochs"), after.get("epochs")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (old, new)) or old == new:
        return after
    keep = tuple(k for k in DEPENDENT if f"recipe.{k}" in keys or f"recipe.{k.split('.')[0]}" in keys)
    try:
        scaled = scale_schedule({**after, "epochs": old}, cast(int, new), keep=keep)  # an int: checked above
    except (TypeError, ValueError, KeyError, AttributeError):
        return after
    changed = []
    for dotted in DEPENDENT:
        section, key = dotted.split(".")
        was, now = (after.get(section) or {}).get(key), (scaled.get(section) or {}).get(key)
        if was != now:
            changed.append(f"recipe.{dotted} {was} -> {now}")
    if changed:
        logger.info("recipe.epochs=%d (the recipe has %d): %s, scaled with it (set them on the command line to choose).",
                    new, old, ", ".join(changed))
    return scaled


def init_metadata(init: str) -> Metadata:
    """The metadata of the checkpoint ``init`` names (``lipzoo train --init``), read by loading it."""
    from lipzoo.models import load_pretrained

    model = load_pretrained(init)
    meta = getattr(model, "metadata", None)
    return meta if isinstance(meta, Metadata) else Metadata.from_dict(model.lipzoo_config)


def _fit_run(meta: Metadata, *, data: str | None, init: str | None, normalization: str,
             data_root: str | None) -> Metadata:
    """``meta`` for a run on ``data`` starting from ``init`` (see :func:`resolve_metadata`)."""
    from lipzoo.data import data_facts

    start = None
    if init is not None:
        start = init_metadata(init)
        if (start.architecture, dict(start.arch.model_args)) != (meta.architecture, dict(meta.arch.model_args)):
            raise ValueError(f"--init {init!r} is a {start.architecture!r} model (model_args "
                             f"{dict(start.arch.model_args)}), but the recipe trains {meta.architecture!r} "
                             f"({dict(meta.arch.model_args)}); start from a checkpoint of that architecture, or "
                             f"train a recipe of {start.architecture!r}.")
    model_shape = tuple((start or meta).input_shape)
    facts = data_facts(data, root=data_root) if data is not None else None
    shape = model_shape if facts is None else tuple(facts.input_shape)
    model_args = dict(meta.arch.model_args)
    if shape != model_shape:
        what = "channels" if shape[1:] == model_shape[1:] else "shape"
        if start is not None:
            raise ValueError(f"The data does not fit --init {init!r} ({what}): its images are {list(shape)}, the model "
                             f"takes {list(model_shape)}. Fine-tune on images of that shape, or train from scratch "
                             "(no --init).")
        # from scratch: the family builds for the data's image size and channels
        model_args.update(in_chans=shape[0], img_size=list(shape[1:]))
    norm: dict[str, list[float]] | None
    if normalization == "data" or (normalization == "auto" and start is None and facts is not None
                                   and facts.name != meta.dataset):
        if facts is None:
            raise ValueError("--normalization data needs --data (the statistics of its training split).")
        norm = {"mean": list(facts.mean), "std": list(facts.std)}
    elif normalization != "config" and start is not None and start.arch.normalization is not None:
        norm = start.arch.normalization.to_dict()  # the init's weights were trained behind this Normalize
    else:  # "config": normalization.* overridden on the command line
        norm = None if meta.arch.normalization is None else meta.arch.normalization.to_dict()
    if facts is not None:
        out = meta.with_data(facts.name, facts.num_classes, input_shape=shape, normalization=norm,
                             model_args=model_args)
    else:
        arch = dataclasses.replace(meta.arch, normalization=None if norm is None else Normalization.parse(
            norm, shape[0] if len(shape) == 3 else None))
        out = meta.replace(arch=arch)
    if start is not None:  # the weights it starts from, not the recipe's entry, are its parent
        out = out.replace(parent=Parent(start.name, start.sha256), name=None if meta.weights is not None else out.name)
    _check_builds(out)
    return out


def _check_builds(meta: Metadata) -> None:
    """Build the model once: an architecture that cannot take the data's shape fails here, in one line."""
    from lipzoo.models import build_model

    try:
        build_model(meta)
    except TypeError as err:
        raise ValueError(f"Architecture {meta.architecture!r} cannot be built for input shape "
                         f"{list(meta.input_shape)} ({err}); use data of its input shape.") from None


def resolve_config(target: str, overrides: list[str] | None = None, **run: Any) -> dict[str, Any]:
    """:func:`resolve_metadata` as the plain dict ``lipzoo.train`` consumes (see the module docstring).

    ``run`` takes the keyword arguments of :func:`resolve_metadata` (``data``, ``init``,
    ``normalization``, ``data_root``).
    """
    return resolve_metadata(target, overrides, **run).to_dict()


# keys a config may leave out (their default applies) and an override may still set: the recipe schema's
OPTIONAL_KEYS = tuple(f"recipe.{k}" for k in (*Recipe.DEFAULTED, *Recipe.LOSS_BLOCKS))
# blocks a config may leave out (or set to null) whose keys an override may set one by one (recipe.gloro.eps=0.5)
OPTIONAL_BLOCKS = tuple(f"recipe.{k}" for k in Recipe.LOSS_BLOCKS)


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``config`` with ``"dotted.key=value"`` overrides applied (values parsed as YAML).

    ``1e-4`` is read as a number (plain YAML would read a string).

    Raises:
        ValueError: an override without ``=``, a key that is not in the config (nor in
            :data:`OPTIONAL_KEYS`) or a value that is not YAML; every wrong override is listed.
    """
    config = copy.deepcopy(config)
    problems = []
    for item in overrides:
        try:
            _apply(config, item)
        except ValueError as err:
            problems.append(str(err))
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        raise ValueError(f"{len(problems)} overrides are wrong:\n  - " + "\n  - ".join(problems))
    return config


def _apply(config: dict[str, Any], item: str) -> None:
    """One ``key=value`` override, in place."""
    if "=" not in item:
        raise ValueError(f"Override {item!r} must look like key=value, e.g. recipe.epochs=5.")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = config
    for i, part in enumerate(parts):
        optional = i == len(parts) - 1 and isinstance(node, dict) and (
            key.strip() in OPTIONAL_KEYS or ".".join(parts[:-1]) in OPTIONAL_BLOCKS)  # the schema names unknown ones
        if i < len(parts) - 1 and ".".join(parts[:i + 1]) in OPTIONAL_BLOCKS and isinstance(node, dict) \
                and node.get(part) is None:
            node[part] = {}  # an absent loss block: the recipe schema fills in the keys not set here
        if not isinstance(node, dict) or part not in node and not optional:
            where = ".".join(parts[:i]) or "the config"
            known = sorted(node) if isinstance(node, dict) else []
            raise ValueError(f"Unknown config key {key!r}: {part!r} is not in {where} (known: {known}).")
        if i == len(parts) - 1:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as err:
                raise ValueError(f"Override {item!r}: the value is not valid YAML ({err.problem}).") from None  # type: ignore[attr-defined]
            if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(raw.strip()):
                value = float(raw)
            node[part] = value
        else:
            node = node[part]
