"""Zoo entries: ``lipzoo/zoo_configs/<entry>.yaml`` and the shared recipes in ``zoo_configs/recipes/``.

An entry is the metadata that travels with a set of weights (:class:`lipzoo.meta.Metadata`):
architecture and its arguments, normalization, the training recipe, the radii it is certified at,
where the weights live and what was measured on them (``metrics.sha256`` = ``weights.sha256``).
Each file is parsed once by :meth:`Metadata.from_dict` (``strict``: unknown keys are errors) and
checked against the architecture registry here.

A recipe shared by several entries lives once in ``zoo_configs/recipes/<name>.yaml``; an entry
names it (``recipe: crm-cifar10``) or starts from it (``recipe: {use: crm-cifar10, epochs: 300}``).

Every entry is a pretrained *tag* of its architecture (timm's ``arch.tag``): ``crm-cifar10-6c2f``
is ``6c2f.crm_cifar10`` (timm: ``lipzoo_6c2f.crm_cifar10``); see :func:`pretrained_tag`.

``python -m lipzoo.models.zoo --markdown > docs/models.md`` regenerates the docs table from the
entries; it is never edited by hand.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import logging
import sys
from importlib import resources
from typing import Any, Mapping, Sequence

import yaml

from lipzoo.meta import Metadata, parse_eps  # noqa: F401  (parse_eps: lipzoo 0.1 import path)
from lipzoo.models.registry import REGISTRY, list_architectures

__all__ = ["get_entry", "get_metadata", "list_entries", "validate_entry", "markdown_table", "main",
           "list_recipes", "get_recipe", "parse_entry", "resolve_recipe", "parse_eps", "pretrained_tag", "entries_of", "default_entry", "published_sha256"]

logger = logging.getLogger(__name__)


# -- files -------------------------------------------------------------------------------------------
def _config_dir():
    return resources.files("lipzoo") / "zoo_configs"


@functools.lru_cache(maxsize=None)
def _entry_files() -> dict[str, Any]:
    folder = _config_dir()
    if not folder.is_dir():
        return {}
    return {f.name[: -len(".yaml")]: f for f in folder.iterdir() if f.name.endswith(".yaml")}


@functools.lru_cache(maxsize=None)
def _recipe_files() -> dict[str, Any]:
    folder = _config_dir() / "recipes"
    if not folder.is_dir():
        return {}
    return {f.name[: -len(".yaml")]: f for f in folder.iterdir() if f.name.endswith(".yaml")}


def list_recipes() -> list[str]:
    """Names of the shared recipes (``zoo_configs/recipes/*.yaml``), sorted."""
    return sorted(_recipe_files())


@functools.lru_cache(maxsize=None)
def _recipe(name: str) -> dict[str, Any]:
    files = _recipe_files()
    if name not in files:
        raise ValueError(f"Unknown recipe {name!r}; shared recipes are {list_recipes()} "
                         "(lipzoo/zoo_configs/recipes/).")
    return yaml.safe_load(files[name].read_text(encoding="utf-8"))


def get_recipe(name: str) -> dict[str, Any]:
    """A copy of shared recipe ``name`` as a dict (with ``name`` set)."""
    return {**copy.deepcopy(_recipe(name)), "name": name}


def resolve_recipe(recipe: Any) -> Any:
    """Expand a recipe reference (``"crm-cifar10"`` or ``{use: crm-cifar10, <overrides>}``) to a mapping.

    Overrides replace whole top-level recipe keys (``optimizer: {...}`` replaces the optimizer).
    Anything else is returned unchanged for :class:`lipzoo.meta.Recipe` to check.
    """
    if isinstance(recipe, str):
        return get_recipe(recipe)
    if isinstance(recipe, Mapping) and "use" in recipe:
        base = get_recipe(recipe["use"])
        overrides = {k: v for k, v in recipe.items() if k != "use"}
        if overrides:
            base.pop("name")  # a modified shared recipe is not that recipe any more
        return {**base, **copy.deepcopy(overrides)}
    return recipe


# -- entries -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _load(name: str) -> Metadata:
    raw = yaml.safe_load(_entry_files()[name].read_text(encoding="utf-8"))
    try:
        meta = _parse(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"lipzoo/zoo_configs/{name}.yaml is invalid: {err}") from err
    if meta.name != name:
        raise ValueError(f"lipzoo/zoo_configs/{name}.yaml declares name {meta.name!r}; the name must equal "
                         "the file name.")
    return meta


def _parse(entry: Any) -> Metadata:
    if isinstance(entry, Mapping) and "recipe" in entry:
        entry = {**entry, "recipe": resolve_recipe(entry["recipe"])}
    elif not isinstance(entry, Mapping):
        raise ValueError(f"entry: expected a mapping, got {entry!r}.")
    meta = Metadata.from_dict(entry, strict=True)
    if meta.architecture not in REGISTRY:
        raise ValueError(f"architecture: expected a registered architecture {list_architectures()}, got "
                         f"{meta.architecture!r}.")
    if meta.name in REGISTRY:
        raise ValueError(f"name: {meta.name!r} is an architecture name; an entry needs its own name.")
    return meta


def list_entries() -> list[str]:
    """Names of all zoo entries (YAML files in ``lipzoo/zoo_configs``), sorted."""
    return sorted(_entry_files())


def get_metadata(name: str) -> Metadata:
    """The parsed :class:`lipzoo.meta.Metadata` of zoo entry ``name``.

    Raises:
        ValueError: no such entry (with the closest names), or the file breaks the schema.
    """
    if name not in _entry_files():
        close = difflib.get_close_matches(str(name), list_entries(), n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown zoo entry {name!r}.{hint} Known entries: {list_entries()}.")
    return _load(name)


def get_entry(name: str) -> dict[str, Any]:
    """Zoo entry ``name`` as a fresh dict in the entry layout (shared recipes expanded)."""
    return get_metadata(name).to_entry_dict()


def parse_entry(entry: Any) -> Metadata:
    """Parse an entry dict (shared recipe names expanded) into :class:`lipzoo.meta.Metadata`, checked
    against the registry.

    Raises:
        ValueError: naming the first bad key (dotted path), what was expected and what came.
    """
    return _parse(entry)


def validate_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Check an entry dict against the schema and the registry; return it unchanged.

    Raises:
        ValueError: naming the first bad key (dotted path), what was expected and what came.
    """
    _parse(entry)
    return entry


# -- pretrained tags ---------------------------------------------------------------------------------
def pretrained_tag(name: str) -> str:
    """The tag of entry ``name`` under its architecture: ``crm-cifar10-6c2f`` -> ``crm_cifar10``."""
    meta = get_metadata(name)
    base = name[: -len(meta.architecture) - 1] if name.endswith("-" + meta.architecture) else name
    return base.replace("-", "_").replace(".", "_")


def entries_of(architecture: str, *, with_weights: bool = False) -> list[str]:
    """Entries of ``architecture``, the default first: CRM before other losses, then shipped, then by name."""
    def rank(name: str) -> tuple:
        meta = get_metadata(name)
        return meta.weights is None, meta.recipe is None or meta.recipe.loss != "crm", name

    names = [n for n in list_entries() if get_metadata(n).architecture == architecture
             and (not with_weights or get_metadata(n).weights is not None)]
    return sorted(names, key=rank)


def default_entry(architecture: str) -> str | None:
    """The entry ``create_model(architecture, pretrained=True)`` loads (``None`` if none has weights)."""
    names = entries_of(architecture, with_weights=True)
    return names[0] if names else None


def published_sha256() -> dict[str, str]:
    """``{entry: sha256}`` of every entry with published weights (for provenance checks)."""
    return {n: w.sha256 for n in list_entries() if (w := get_metadata(n).weights) is not None}


# -- docs table --------------------------------------------------------------------------------------
def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def markdown_table() -> str:
    """The docs page: one table of architectures, one of zoo entries (with metrics when present)."""
    lines = ["# Model zoo", "",
             "<!-- Generated by `python -m lipzoo.models.zoo --markdown`; do not edit by hand. -->", "",
             "Inputs are pixels in [0, 1]; every model standardises them with its own `Normalize` layer, so "
             "ε is in pixel units (ℓ2). Build with `lipzoo.create_model(name)`; load trained weights with "
             "`lipzoo.create_model(entry, pretrained=True)` or `lipzoo.load(entry)`; fine-tune with "
             "`lipzoo.create_model(entry, pretrained=True, num_classes=N)` (timm: "
             "`timm.create_model('lipzoo_<arch>.<tag>', pretrained=True, num_classes=N)`).", "",
             "## Architectures", "",
             "| architecture | input | classes | parameters | description |", "|---|---|---:|---:|---|"]
    for arch in list_architectures():
        info = REGISTRY.get(arch)
        params = sum(p.numel() for p in info.build().parameters())
        shape = "x".join(str(s) for s in info.input_shape)
        lines.append(f"| `{arch}` | {shape} | {info.num_classes} | {params:,} | {info.description} |")
    lines += ["", "## Zoo entries", "",
              "Metrics are percentages on the test split, measured on the published weights (sha256 in the "
              "entry): clean accuracy, certified accuracy and PGD accuracy at each ε; — means not measured.", "",
              "| entry | timm name | dataset | recipe | epochs (trained of recipe) | ε | clean | certified | PGD "
              "| weights |",
              "|---|---|---|---|---:|---|---:|---:|---:|---|"]
    for name in list_entries():
        m = get_metadata(name)
        res = m.results
        cert = " / ".join(_percent(res.at(e).certified if res else None) for e in m.eps)
        pgd = " / ".join(_percent(res.at(e).pgd if res else None) for e in m.eps)
        weights = "—" if m.weights is None else f"shipped (`{m.weights.local}`), Hub: `{m.weights.repo_id}`"
        trained = res.epochs_trained if res else None
        planned = m.recipe.epochs if m.recipe else "—"
        epochs = f"{trained} of {planned}" if trained is not None else str(planned)
        recipe = f"{m.recipe.loss}" + (  # type: ignore[union-attr]  # an entry without a recipe fails here
            f" (`{m.recipe.name}`)" if m.recipe and m.recipe.name else "")
        timm_name = f"lipzoo_{m.architecture.replace('-', '_')}.{pretrained_tag(name)}"
        lines.append(f"| `{name}` | `{timm_name}` | {m.dataset} | {recipe} | {epochs} | "
                     f"{', '.join(e.text for e in m.eps)} | {_percent(res.clean if res else None)} | {cert} | "
                     f"{pgd} | {weights} |")
    lines += ["", "## Fine-tuning, and whose numbers a card shows", "",
              "```python",
              "import lipzoo, timm",
              "model = lipzoo.create_model(\"crm-cifar10-6c2f\", pretrained=True, num_classes=5)",
              "model = timm.create_model(\"lipzoo_6c2f.crm_cifar10\", pretrained=True, num_classes=5)  # the same",
              "model = lipzoo.load_pretrained(\"runs/A/final\", num_classes=5)  # from a checkpoint folder",
              "# ... train ...",
              "model.save_pretrained(\"runs/B\")  # parent: crm-cifar10-6c2f; no metrics until certified",
              "```", "",
              "Every weight but the classifier is loaded; the new classifier is initialised afresh, and the "
              "checkpoint's certificate and numbers no longer apply (a log line says so). A saved checkpoint "
              "shows numbers only after `lipzoo certify <folder> --attach` measured them on its own weights "
              "(checked by sha256); its card names the parent, never the parent's numbers."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lipzoo.models.zoo [--markdown | --validate]``."""
    parser = argparse.ArgumentParser(prog="python -m lipzoo.models.zoo", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the docs/models.md page")
    group.add_argument("--validate", action="store_true", help="validate every entry; print their names")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown_table())
    else:
        sys.stdout.write("\n".join(get_metadata(n).name for n in list_entries()) + "\n")  # type: ignore[misc]  # set
    return 0


if __name__ == "__main__":
    # Run the canonical module's main (``lipzoo.models`` already imported it), so that the entry
    # caches and the architecture registry are the package's own, not this __main__ copy's.
    from lipzoo.models.zoo import main as _main

    raise SystemExit(_main())
