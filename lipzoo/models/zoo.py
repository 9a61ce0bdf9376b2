"""Zoo entries: ``lipzoo/zoo_configs/<entry>.yaml``, their schema and the generated docs table.

An entry is the metadata that travels with a set of weights: architecture and its arguments,
normalization, the training recipe, the radii it is certified at (exact fractions such as
``"36/255"``), where the weights live and what was measured. The schema is the one in
``docs/architecture.md``; :func:`validate_entry` enforces it key by key, and unknown keys are
errors (a typo must not silently drop a setting).

``python -m lipzoo.models.zoo --markdown > docs/models.md`` regenerates the docs table from the
entries; it is never edited by hand.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import math
import re
import sys
from fractions import Fraction
from importlib import resources
from typing import Any, Sequence

import yaml

__all__ = ["get_entry", "list_entries", "validate_entry", "parse_eps", "markdown_table", "main",
           "DATASETS", "LOSSES"]

logger = logging.getLogger(__name__)

DATASETS = {"mnist": 10, "cifar10": 10, "tinyimagenet": 200}  # dataset -> number of classes
LOSSES = ("crm", "ce")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("exponential", "constant")
G_FUNCTIONS = ("linear", "exp")
AUGMENTATIONS = ("hflip", "affine")
STORAGE_DTYPES = ("float32", "float16", "bfloat16")

_TOP_KEYS = ("name", "architecture", "model_args", "num_classes", "input_shape", "dataset", "normalization",
             "recipe", "certify", "weights", "metrics")
_RECIPE_KEYS = ("loss", "epochs", "batch_size", "optimizer", "scheduler", "augmentation", "crm",
                "power_iterations", "validation_split")
_WEIGHTS_KEYS = ("repo_id", "revision", "sha256", "filename", "local", "storage_dtype")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# -- eps ---------------------------------------------------------------------------------------------
def parse_eps(eps: str) -> Fraction:
    """Parse a certification radius written as an exact fraction string (``"36/255"``, ``"1.58"``).

    Raises:
        TypeError: ``eps`` is not a string (a float such as 1.58 is not exact; quote it).
        ValueError: the string is not a positive fraction.
    """
    if not isinstance(eps, str):
        raise TypeError(f"eps must be a string such as '36/255' or '1.58' (exact), got {type(eps).__name__} "
                        f"{eps!r}; quote it in the YAML.")
    try:
        value = Fraction(eps.strip())
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"eps {eps!r} is not a fraction; write it like '36/255' or '1.58'.") from err
    if value <= 0:
        raise ValueError(f"eps must be positive, got {eps!r}.")
    return value


# -- loading -----------------------------------------------------------------------------------------
def _config_dir():
    return resources.files("lipzoo") / "zoo_configs"


@functools.lru_cache(maxsize=None)
def _entry_files() -> dict[str, Any]:
    folder = _config_dir()
    if not folder.is_dir():
        return {}
    return {f.name[: -len(".yaml")]: f for f in folder.iterdir() if f.name.endswith(".yaml")}


@functools.lru_cache(maxsize=None)
def _load(name: str) -> dict[str, Any]:
    entry = yaml.safe_load(_entry_files()[name].read_text(encoding="utf-8"))
    try:
        validate_entry(entry)
    except (TypeError, ValueError) as err:
        raise ValueError(f"lipzoo/zoo_configs/{name}.yaml is invalid: {err}") from err
    if entry["name"] != name:
        raise ValueError(f"lipzoo/zoo_configs/{name}.yaml declares name {entry['name']!r}; the name must equal "
                         "the file name.")
    return entry


def list_entries() -> list[str]:
    """Names of all zoo entries (YAML files in ``lipzoo/zoo_configs``), sorted."""
    return sorted(_entry_files())


def get_entry(name: str) -> dict[str, Any]:
    """A validated copy of zoo entry ``name``.

    Raises:
        ValueError: no such entry (with the closest names), or the file breaks the schema.
    """
    if name not in _entry_files():
        import difflib

        close = difflib.get_close_matches(str(name), list_entries(), n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown zoo entry {name!r}.{hint} Known entries: {list_entries()}.")
    return copy.deepcopy(_load(name))


# -- validation --------------------------------------------------------------------------------------
def _fail(path: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"{path}: expected {expected}, got {got!r}.")


def _keys(d: Any, path: str, required: Sequence[str], optional: Sequence[str] = ()) -> dict:
    if not isinstance(d, dict):
        raise _fail(path, "a mapping", d)
    unknown = sorted(set(d) - set(required) - set(optional), key=str)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed: {list(required) + list(optional)}.")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}.")
    return d


def _number(v: Any, path: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, integer: bool = False) -> float:
    kind = "an int" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        hint = " (PyYAML reads 1e-3 as a string; write 1.0e-3)" if isinstance(v, str) else ""
        raise ValueError(f"{path}: expected {kind}{hint}, got {v!r}.")
    if not math.isfinite(v):
        raise _fail(path, f"a finite {kind[2:] if not integer else 'int'}", v)
    if low is not None and (v < low or (low_open and v == low)):
        raise _fail(path, f"{kind} {'>' if low_open else '>='} {low}", v)
    if high is not None and (v > high or (high_open and v == high)):
        raise _fail(path, f"{kind} {'<' if high_open else '<='} {high}", v)
    return v


def _choice(v: Any, path: str, choices: Sequence[str]) -> str:
    if v not in choices:
        raise _fail(path, f"one of {list(choices)}", v)
    return v


def _string(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(path, "a non-empty string", v)
    return v


def _json_value(v: Any, path: str) -> None:
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: must be JSON-serializable (numbers, strings, lists, mappings): {err}") from err


def validate_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Check a zoo entry against the schema of ``docs/architecture.md``; return it unchanged.

    Raises:
        ValueError: naming the first bad key (dotted path), what was expected and what came.
    """
    _keys(entry, "entry", _TOP_KEYS)
    name = entry["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail("name", "lowercase letters, digits, '-' and '.' (e.g. 'crm-cifar10-6c2f')", name)
    _validate_model(entry)
    _validate_recipe(entry["recipe"])
    _keys(entry["certify"], "certify", ("eps",))
    eps = entry["certify"]["eps"]
    if not isinstance(eps, list) or not eps:
        raise _fail("certify.eps", "a non-empty list of fraction strings such as ['36/255']", eps)
    for i, e in enumerate(eps):
        try:
            parse_eps(e)
        except (TypeError, ValueError) as err:
            raise ValueError(f"certify.eps[{i}]: {err}") from err
    if entry["weights"] is not None:
        _validate_weights(entry["weights"])
    metrics = entry["metrics"]
    if metrics is not None:
        if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
            raise _fail("metrics", "null or a mapping with string keys", metrics)
        _json_value(metrics, "metrics")
    return entry


def _validate_model(entry: dict[str, Any]) -> None:
    from lipzoo.models.registry import list_architectures  # lazy: registry imports this module

    arch = entry["architecture"]
    if arch not in list_architectures():
        raise _fail("architecture", f"a registered architecture {list_architectures()}", arch)
    args = entry["model_args"]
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise _fail("model_args", "a mapping of builder keyword arguments", args)
    clash = sorted({"num_classes", "mean", "std"} & set(args))
    if clash:
        raise ValueError(f"model_args: {clash} have their own keys (num_classes, normalization); move them there.")
    _json_value(args, "model_args")
    dataset = _choice(entry["dataset"], "dataset", list(DATASETS))
    num_classes = _number(entry["num_classes"], "num_classes", low=1, integer=True)
    if num_classes != DATASETS[dataset]:
        raise _fail("num_classes", f"{DATASETS[dataset]} for dataset {dataset!r}", num_classes)
    shape = entry["input_shape"]
    if not isinstance(shape, list) or len(shape) != 3:
        raise _fail("input_shape", "[channels, height, width]", shape)
    for i, s in enumerate(shape):
        _number(s, f"input_shape[{i}]", low=1, integer=True)
    norm = _keys(entry["normalization"], "normalization", ("mean", "std"))
    for key in ("mean", "std"):
        values = norm[key]
        if not isinstance(values, list) or len(values) != shape[0]:
            raise _fail(f"normalization.{key}", f"a list of {shape[0]} numbers (one per input channel)", values)
        for i, v in enumerate(values):
            _number(v, f"normalization.{key}[{i}]", low=0, low_open=key == "std")


def _validate_recipe(recipe: dict[str, Any]) -> None:
    _keys(recipe, "recipe", _RECIPE_KEYS)
    loss = _choice(recipe["loss"], "recipe.loss", LOSSES)
    epochs = _number(recipe["epochs"], "recipe.epochs", low=1, integer=True)
    _number(recipe["batch_size"], "recipe.batch_size", low=1, integer=True)
    _number(recipe["power_iterations"], "recipe.power_iterations", low=1, integer=True)
    _number(recipe["validation_split"], "recipe.validation_split", low=0, high=1, high_open=True)

    opt = _keys(recipe["optimizer"], "recipe.optimizer", ("name", "lr"), ("betas", "eps", "weight_decay", "momentum"))
    _choice(opt["name"], "recipe.optimizer.name", OPTIMIZERS)
    _number(opt["lr"], "recipe.optimizer.lr", low=0, low_open=True)
    if "betas" in opt:
        betas = opt["betas"]
        if not isinstance(betas, list) or len(betas) != 2:
            raise _fail("recipe.optimizer.betas", "[beta1, beta2]", betas)
        for i, b in enumerate(betas):
            _number(b, f"recipe.optimizer.betas[{i}]", low=0, high=1, high_open=True)
    if "eps" in opt:
        _number(opt["eps"], "recipe.optimizer.eps", low=0, low_open=True)
    for key in ("weight_decay", "momentum"):
        if key in opt:
            _number(opt[key], f"recipe.optimizer.{key}", low=0)

    sched = recipe["scheduler"]
    if not isinstance(sched, dict) or "name" not in sched:
        raise _fail("recipe.scheduler", "a mapping with a name", sched)
    if _choice(sched["name"], "recipe.scheduler.name", SCHEDULERS) == "exponential":
        _keys(sched, "recipe.scheduler", ("name", "start_epoch", "final_lr"))
        _number(sched["start_epoch"], "recipe.scheduler.start_epoch", low=0, high=epochs, high_open=True,
                integer=True)
        _number(sched["final_lr"], "recipe.scheduler.final_lr", low=0, low_open=True)
    else:
        _keys(sched, "recipe.scheduler", ("name",))

    aug = recipe["augmentation"]
    if not isinstance(aug, list):
        raise _fail("recipe.augmentation", "a list such as [hflip, {affine: {degrees: 10, translate: 0.1}}]", aug)
    for i, item in enumerate(aug):
        _validate_augmentation(item, f"recipe.augmentation[{i}]")

    crm = recipe["crm"]
    if loss == "crm" or crm is not None:
        if crm is None:
            raise _fail("recipe.crm", "a mapping {t, lam, r0, g, warmup_epochs} when recipe.loss is 'crm'", crm)
        _keys(crm, "recipe.crm", ("t", "lam", "r0", "g", "warmup_epochs"))
        _number(crm["t"], "recipe.crm.t", low=0, low_open=True)
        _number(crm["lam"], "recipe.crm.lam", low=0)
        _number(crm["r0"], "recipe.crm.r0", low=0, low_open=True)
        _choice(crm["g"], "recipe.crm.g", G_FUNCTIONS)
        _number(crm["warmup_epochs"], "recipe.crm.warmup_epochs", low=0, high=epochs, high_open=True, integer=True)


def _validate_augmentation(item: Any, path: str) -> None:
    if isinstance(item, str):
        if item != "hflip":
            raise _fail(path, "'hflip' or {affine: {degrees, translate}}", item)
        return
    if not isinstance(item, dict) or len(item) != 1:
        raise _fail(path, "'hflip' or a one-key mapping such as {affine: {degrees: 10, translate: 0.1}}", item)
    (kind, args), = item.items()
    _choice(kind, f"{path} kind", AUGMENTATIONS[1:])
    _keys(args, f"{path}.affine", ("degrees", "translate"))
    _number(args["degrees"], f"{path}.affine.degrees", low=0, high=180)
    _number(args["translate"], f"{path}.affine.translate", low=0, high=1)


def _validate_weights(weights: dict[str, Any]) -> None:
    _keys(weights, "weights", _WEIGHTS_KEYS)
    repo = _string(weights["repo_id"], "weights.repo_id")
    if repo.count("/") != 1:
        raise _fail("weights.repo_id", "a Hub repo id 'owner/name'", repo)
    if weights["revision"] is not None:
        _string(weights["revision"], "weights.revision")
    sha = weights["sha256"]
    if not isinstance(sha, str) or not _SHA256_RE.match(sha):
        raise _fail("weights.sha256", "64 lowercase hex digits", sha)
    _string(weights["filename"], "weights.filename")
    if weights["local"] is not None:
        _string(weights["local"], "weights.local")
    _choice(weights["storage_dtype"], "weights.storage_dtype", STORAGE_DTYPES)


# -- docs table --------------------------------------------------------------------------------------
def _fmt_metric(metrics: dict[str, Any] | None, key: str) -> str:
    value = None if metrics is None else metrics.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{100 * value:.2f}"  # stored as fractions (0.4955), shown as percent
    return "—" if value is None else str(value)


def markdown_table() -> str:
    """The docs page: one table of architectures, one of zoo entries (with metrics when present)."""
    import lipzoo.models  # noqa: F401  (registers the families)
    from lipzoo.models.registry import _ARCHITECTURES, create_model, list_architectures

    lines = ["# Model zoo", "",
             "<!-- Generated by `python -m lipzoo.models.zoo --markdown`; do not edit by hand. -->", "",
             "Inputs are pixels in [0, 1]; every model standardises them with its own `Normalize` layer, so "
             "ε is in pixel units (ℓ2). Build with `lipzoo.create_model(name)`; "
             "load trained weights with `lipzoo.load(entry)`.", "",
             "## Architectures", "",
             "| architecture | input | parameters | description |", "|---|---|---:|---|"]
    for arch in list_architectures():
        fn = _ARCHITECTURES[arch]
        model = create_model(arch)
        shape = "x".join(str(s) for s in getattr(model, "input_shape", ()))
        params = sum(p.numel() for p in model.parameters())
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        lines.append(f"| `{arch}` | {shape} | {params:,} | {doc} |")
    lines += ["", "## Zoo entries", "",
              "Metrics are percentages on the test split: clean accuracy, certified accuracy and PGD "
              "accuracy at each ε; — means not measured yet.", "",
              "| entry | architecture | dataset | loss | epochs (trained of recipe) | ε | clean | certified | PGD "
              "| weights |",
              "|---|---|---|---|---:|---|---:|---:|---:|---|"]
    for name in list_entries():
        e = get_entry(name)
        eps = e["certify"]["eps"]
        metrics = e["metrics"]
        cert = " / ".join(_fmt_metric(metrics, f"certified@{x}") for x in eps)
        pgd = " / ".join(_fmt_metric(metrics, f"pgd@{x}") for x in eps)
        weights = "—" if e["weights"] is None else f"shipped (`{e['weights']['local']}`), Hub: " \
                                                     f"`{e['weights']['repo_id']}`"
        trained = (metrics or {}).get("epochs_trained")
        epochs = f"{trained} of {e['recipe']['epochs']}" if trained is not None else str(e["recipe"]["epochs"])
        lines.append(f"| `{name}` | `{e['architecture']}` | {e['dataset']} | {e['recipe']['loss']} | "
                     f"{epochs} | {', '.join(eps)} | {_fmt_metric(metrics, 'clean')} | {cert} | "
                     f"{pgd} | {weights} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lipzoo.models.zoo [--markdown | --validate]``."""
    parser = argparse.ArgumentParser(prog="python -m lipzoo.models.zoo", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the docs/models.md page")
    group.add_argument("--validate", action="store_true", help="validate every entry; print their names")
    args = parser.parse_args(argv)
    import lipzoo.models  # noqa: F401  (registers the architectures entries refer to)

    if args.markdown:
        sys.stdout.write(markdown_table())
    else:
        sys.stdout.write("\n".join(get_entry(n)["name"] for n in list_entries()) + "\n")
    return 0


if __name__ == "__main__":
    # Run the canonical module's main (``lipzoo.models`` already imported it), so that the entry
    # caches and the architecture registry are the package's own, not this __main__ copy's.
    from lipzoo.models.zoo import main as _main

    raise SystemExit(_main())
