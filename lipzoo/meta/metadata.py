"""The record that travels with a set of weights: architecture, normalization, weights reference, measured
:class:`Results` (keyed by the weights' sha256), parent, and :class:`Metadata`, the whole of it."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from lipzoo.meta._schema import (_NAME_RE, _REPO_ID_RE, STORAGE_DTYPES, _accuracy, _choice, _drop_none, _fail, _json,
                                 _keys, _number, _sha, _string)
from lipzoo.meta.datasets import DATASETS, dataset_facts
from lipzoo.meta.eps import Eps, parse_eps
from lipzoo.meta.recipe import Recipe

logger = logging.getLogger(__name__)


# -- architecture ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Normalization:
    """The model's own ``Normalize`` layer: per-channel ``mean`` and ``std`` in pixel units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def parse(cls, d: Any, channels: int | None, path: str = "normalization") -> "Normalization":
        _keys(d, path, ("mean", "std"))
        out = {}
        for key in ("mean", "std"):
            values = d[key]
            if not isinstance(values, (list, tuple)) or not values or (channels is not None
                                                                        and len(values) != channels):
                want = f"a list of {channels} numbers (one per input channel)" if channels else "a list of numbers"
                raise _fail(f"{path}.{key}", want, values)
            out[key] = tuple(float(_number(v, f"{path}.{key}[{i}]", low=0, low_open=key == "std"))
                             for i, v in enumerate(values))
        return cls(**out)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class ArchitectureConfig:
    """What rebuilds the network: ``create_model(architecture, num_classes=..., **normalization, **model_args)``."""

    architecture: str
    num_classes: int
    input_shape: tuple[int, ...]
    model_args: Mapping[str, Any] = field(default_factory=dict)
    normalization: Normalization | None = None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "ArchitectureConfig":
        arch = _string(d.get("architecture"), "architecture")
        num_classes = _number(d.get("num_classes"), "num_classes", low=1, integer=True)
        shape = d.get("input_shape")
        if not isinstance(shape, (list, tuple)) or not shape:
            raise _fail("input_shape", "[channels, height, width] (or [features])", shape)
        shape = tuple(_number(s, f"input_shape[{i}]", low=1, integer=True) for i, s in enumerate(shape))
        args = {} if d.get("model_args") is None else d["model_args"]
        if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
            raise _fail("model_args", "a mapping of builder keyword arguments", args)
        clash = sorted({"num_classes", "mean", "std"} & set(args))
        if clash:
            raise ValueError(f"model_args: {clash} have their own keys (num_classes, normalization); move them there.")
        _json(dict(args), "model_args")
        norm = d.get("normalization")
        norm = None if norm is None else Normalization.parse(norm, shape[0] if len(shape) == 3 else None)
        return cls(arch, num_classes, shape, dict(args), norm)

    def builder_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the architecture's builder."""
        out = {**self.model_args, "num_classes": self.num_classes}
        if self.normalization is not None:
            out.update(mean=list(self.normalization.mean), std=list(self.normalization.std))
        return out


# -- weights and results -----------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsRef:
    """``weights``: where a zoo entry's published weights are, pinned by their sha256."""

    repo_id: str
    revision: str | None
    sha256: str
    filename: str
    local: str | None
    storage_dtype: str

    @classmethod
    def parse(cls, d: Any, path: str = "weights") -> "WeightsRef":
        _keys(d, path, ("repo_id", "revision", "sha256", "filename", "local", "storage_dtype"))
        repo = _string(d["repo_id"], f"{path}.repo_id")
        if not _REPO_ID_RE.match(repo):
            raise _fail(f"{path}.repo_id", "a Hub repo id 'owner/name'", repo)
        return cls(repo, None if d["revision"] is None else _string(d["revision"], f"{path}.revision"),
                   _sha(d["sha256"], f"{path}.sha256"), _string(d["filename"], f"{path}.filename"),
                   None if d["local"] is None else _string(d["local"], f"{path}.local"),
                   _choice(d["storage_dtype"], f"{path}.storage_dtype", STORAGE_DTYPES))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Measured:
    """What was measured at one ε: certified and PGD accuracy, certified points the attack broke."""

    certified: float | None = None
    pgd: float | None = None
    consistency_violations: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))


_PER_EPS = ("certified", "pgd", "consistency_violations")
_RESULT_KEYS = ("sha256", "clean", "eps", "bound", "attack", "epochs_trained", "num_test_samples",
                "measured_on_stored_weights", "data", "arithmetic")


@dataclass(frozen=True)
class Results:
    """Numbers measured on one set of weights (``sha256``), keyed by :class:`Eps`.

    ``bound`` is the guaranteed pairwise bound record and ``attack`` the PGD settings used.
    """

    sha256: str
    clean: float | None
    per_eps: Mapping[Eps, Measured]
    bound: Mapping[str, Any] | None = None
    attack: Mapping[str, Any] | None = None
    epochs_trained: int | None = None
    num_test_samples: int | None = None
    measured_on_stored_weights: bool = True
    data: str | None = None  # what was certified on (a dataset name or file), when not the model's dataset
    arithmetic: str | None = None  # the dtype the certified radii hold for (they account for its rounding)

    def at(self, eps: Any) -> Measured:
        """The :class:`Measured` at ``eps`` (any form :func:`parse_eps` takes), empty if not measured."""
        return self.per_eps.get(parse_eps(eps), Measured())

    @classmethod
    def parse(cls, d: Any, sha256: str | None, path: str = "metrics") -> "Results":
        """Read the ``metrics`` mapping; ``sha256`` is the owner when the mapping does not name one.

        Accepts the layout written by :meth:`to_dict` (``{"sha256", "clean", "eps": {"1.58": {...}}}``) and
        the flat layout of ``lipzoo certify`` reports and lipzoo 0.1 files (``"certified@1.58": 0.49``).
        """
        if not isinstance(d, Mapping) or not all(isinstance(k, str) for k in d):
            raise _fail(path, "a mapping with string keys", d)
        per: dict[Eps, dict[str, Any]] = {}
        flat = {}
        for key, value in d.items():
            kind, sep, eps = key.partition("@")
            if sep and kind in _PER_EPS:
                per.setdefault(parse_eps(eps, where=f"{path}[{key!r}]"), {})[kind] = value
            elif sep:
                raise ValueError(f"{path}: unknown per-eps metric {key!r}; known: {list(_PER_EPS)}.")
            else:
                flat[key] = value
        for text, row in (flat.pop("eps", None) or {}).items():
            _keys(row, f"{path}.eps[{text!r}]", (), _PER_EPS)
            per.setdefault(parse_eps(text, where=f"{path}.eps"), {}).update(row)
        _keys(flat, path, (), _RESULT_KEYS)
        owner = flat.get("sha256", sha256)
        if owner is None:
            raise ValueError(f"{path}: measured numbers must name the sha256 of the weights they were measured on "
                             "(metrics.sha256). To add numbers to a checkpoint, certify it and attach the report: "
                             "`lipzoo certify <folder> --attach` (lipzoo.hub.attach_results).")
        measured = {}
        for eps, row in per.items():
            where = f"{path}[{eps.text!r}]"
            violations = row.get("consistency_violations")
            if violations is not None:
                _number(violations, f"{where}.consistency_violations", low=0, integer=True)
            measured[eps] = Measured(_accuracy(row.get("certified"), f"{where}.certified"),
                                     _accuracy(row.get("pgd"), f"{where}.pgd"), violations)
        for key in ("bound", "attack"):
            if flat.get(key) is not None:
                if not isinstance(flat[key], Mapping):
                    raise _fail(f"{path}.{key}", "a mapping", flat[key])
                _json(flat[key], f"{path}.{key}")
        return cls(_sha(owner, f"{path}.sha256"), _accuracy(flat.get("clean"), f"{path}.clean"), measured,
                   flat.get("bound"), flat.get("attack"),
                   None if flat.get("epochs_trained") is None else _number(flat["epochs_trained"],
                                                                           f"{path}.epochs_trained", low=0,
                                                                           integer=True),
                   None if flat.get("num_test_samples") is None else _number(flat["num_test_samples"],
                                                                             f"{path}.num_test_samples", low=1,
                                                                             integer=True),
                   bool(flat.get("measured_on_stored_weights", True)),
                   None if flat.get("data") is None else _string(flat["data"], f"{path}.data"),
                   None if flat.get("arithmetic") is None else _string(flat["arithmetic"], f"{path}.arithmetic"))

    @classmethod
    def from_report(cls, report: Mapping[str, Any], sha256: str) -> "Results":
        """Results from a ``lipzoo certify`` report (``report.json``) measured on the weights ``sha256``."""
        metrics = dict(report.get("metrics") or {})
        bound = report.get("bound")
        if bound is not None:
            bound = {k: v for k, v in bound.items() if k != "seconds"}
        arithmetic = (report.get("rounding") or {}).get("dtype")
        return cls.parse({**metrics, "num_test_samples": report.get("num_samples"), "bound": bound,
                          "attack": report.get("attack"), "sha256": sha256, "data": report.get("data"),
                          "arithmetic": arithmetic}, None, "report.metrics")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sha256": self.sha256, "clean": self.clean,
                               "eps": {e.text: m.to_dict() for e, m in self.per_eps.items()}}
        for key in ("epochs_trained", "num_test_samples", "bound", "attack", "data", "arithmetic"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if not self.measured_on_stored_weights:
            out["measured_on_stored_weights"] = False
        return out


@dataclass(frozen=True)
class Parent:
    """The checkpoint (or zoo entry) a model was derived from. Its numbers never apply to the child."""

    name: str | None
    sha256: str | None = None

    @classmethod
    def parse(cls, d: Any, path: str = "parent") -> "Parent":
        _keys(d, path, (), ("name", "sha256"))
        name = d.get("name")
        sha = d.get("sha256")
        return cls(None if name is None else _string(name, f"{path}.name"), None if sha is None else _sha(sha, path))

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))


# -- the whole record --------------------------------------------------------------------------------
_ENTRY_KEYS = ("name", "architecture", "model_args", "num_classes", "input_shape", "dataset", "normalization",
               "recipe", "certify", "weights", "metrics")
# keys save_pretrained computes; a config passing them in is overwritten
_COMPUTED_KEYS = ("sha256", "storage_dtype", "lipzoo_version")
# lipzoo 0.1 kept the bound and attack next to the metrics; they are part of Results now
_LEGACY_RESULT_KEYS = ("bound", "certify_attack", "metrics_measured_on_stored_weights")


@dataclass(frozen=True)
class Metadata:
    """Everything a checkpoint or zoo entry says about a model.

    Attributes:
        arch: what rebuilds the network.
        name: the model's own name (a zoo entry's name only when these are its weights).
        dataset: a known dataset (:data:`DATASETS`) or ``None`` for the user's own data.
        recipe: the training recipe, if known.
        eps: the radii the model is certified at.
        weights: a zoo entry's published weights (never inherited by a copy).
        results: what was measured, on the weights ``results.sha256``.
        parent: the checkpoint this one was derived from.
        training: what ``lipzoo train`` recorded (epochs trained, time, hardware).
        sha256, storage_dtype, lipzoo_version: of the checkpoint file (``config.json`` only).
        extra: other JSON keys of a ``config.json`` (kept as they are).
    """

    arch: ArchitectureConfig
    name: str | None = None
    dataset: str | None = None
    recipe: Recipe | None = None
    eps: tuple[Eps, ...] = ()
    weights: WeightsRef | None = None
    results: Results | None = None
    parent: Parent | None = None
    training: Mapping[str, Any] | None = None
    sha256: str | None = None
    storage_dtype: str | None = None
    lipzoo_version: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    # convenient read-only views
    @property
    def architecture(self) -> str:
        return self.arch.architecture

    @property
    def num_classes(self) -> int:
        return self.arch.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.arch.input_shape

    @classmethod
    def from_dict(cls, d: Any, *, strict: bool = False) -> "Metadata":
        """Parse a zoo entry (``strict=True``: the schema of ``docs/architecture.md``, unknown keys are
        errors) or a checkpoint's ``config.json`` (other keys are kept in ``extra``).

        Raises:
            ValueError: naming the first bad key (dotted path), what was expected and what came.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"config must be a mapping (a zoo entry or config.json), got {type(d).__name__}.")
        if strict:
            _keys(d, "entry", _ENTRY_KEYS)
            if not isinstance(d["input_shape"], list) or len(d["input_shape"]) != 3:
                raise _fail("input_shape", "[channels, height, width]", d["input_shape"])
        arch = ArchitectureConfig.parse(d)
        name = d.get("name")
        if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
            raise _fail("name", "lowercase letters, digits, '-', '_' and '.' (e.g. 'crm-cifar10-6c2f')", name)
        dataset = d.get("dataset")
        if strict:  # a zoo entry is trained on a known dataset; a checkpoint may name the user's own data
            facts = dataset_facts(_choice(dataset, "dataset", list(DATASETS)))
            if arch.num_classes != facts.num_classes:
                raise _fail("num_classes", f"{facts.num_classes} for dataset {dataset!r}", arch.num_classes)
        elif dataset is not None:
            _string(dataset, "dataset")
        recipe = d.get("recipe")
        recipe = None if recipe is None else Recipe.parse(recipe)
        eps_list = (d.get("certify") or {}).get("eps") if d.get("certify") is not None else d.get("eps")
        if strict:
            _keys(d["certify"], "certify", ("eps",))
            if not isinstance(eps_list, list) or not eps_list:
                raise _fail("certify.eps", "a non-empty list of fraction strings such as ['36/255']", eps_list)
        if eps_list is not None and not isinstance(eps_list, (list, tuple)):
            raise _fail("certify.eps", "a list of fraction strings such as ['36/255']", eps_list)
        try:
            eps = tuple(parse_eps(e, where=f"certify.eps[{i}]") for i, e in enumerate(eps_list or ()))
        except TypeError as err:  # in a config, a wrong type is a schema error like any other
            raise ValueError(str(err)) from None
        weights = None if d.get("weights") is None else WeightsRef.parse(d["weights"])
        sha = d.get("sha256")
        sha = None if sha is None else _sha(sha, "sha256")
        results = cls._parse_results(d, weights, sha, strict)
        parent = None if d.get("parent") is None else Parent.parse(d["parent"])
        training = d.get("training")
        if training is not None:
            if not isinstance(training, Mapping):
                raise _fail("training", "a mapping", training)
            _json(dict(training), "training")
        storage = d.get("storage_dtype")
        if storage is not None:
            _choice(storage, "storage_dtype", STORAGE_DTYPES)
        known = set(_ENTRY_KEYS) | {"eps", "parent", "training", *_COMPUTED_KEYS, *_LEGACY_RESULT_KEYS}
        extra = {k: v for k, v in d.items() if k not in known}
        _json(extra, "config")
        return cls(arch, name, dataset, recipe, eps, weights, results, parent, training, sha, storage,
                   d.get("lipzoo_version"), extra)

    @staticmethod
    def _parse_results(d: Mapping[str, Any], weights: WeightsRef | None, sha: str | None,
                       strict: bool) -> Results | None:
        metrics = d.get("metrics")
        if metrics is None:
            return None
        if not isinstance(metrics, Mapping) or not all(isinstance(k, str) for k in metrics):
            raise _fail("metrics", "null or a mapping with string keys", metrics)
        if strict and weights is None:
            raise ValueError("metrics: an entry without weights has nothing to measure; set metrics: null until "
                             "its weights are published and certified.")
        legacy = "sha256" not in metrics
        if legacy and weights is not None and sha is not None and weights.sha256 != sha:
            # a lipzoo 0.1 copy of a zoo entry's config next to other weights: its numbers are the entry's
            logger.warning("Ignoring metrics in a config whose weights (sha256 %s) are not the ones they were "
                           "measured on (%s).", sha[:12], weights.sha256[:12])
            return None
        owner = weights.sha256 if weights is not None else sha
        extra = {}
        if legacy:  # lipzoo 0.1 kept bound and attack beside the metrics
            if d.get("bound") is not None:
                extra["bound"] = d["bound"]
            if d.get("certify_attack") is not None:
                extra["attack"] = d["certify_attack"]
        results = Results.parse({**metrics, **extra}, owner)
        if strict and weights is not None and results.sha256 != weights.sha256:
            raise ValueError(f"metrics.sha256 is {results.sha256}, but weights.sha256 is {weights.sha256}: the "
                             "numbers were measured on other weights. Re-certify the published weights.")
        return results

    def to_dict(self) -> dict[str, Any]:
        """The one dict layout (zoo entry keys first, then the checkpoint's), JSON/YAML-ready.

        ``certify.eps`` and ``eps`` both hold the radii as text (``lipzoo.train`` reads the former).
        """
        out: dict[str, Any] = {
            "name": self.name, "architecture": self.arch.architecture, "model_args": dict(self.arch.model_args),
            "num_classes": self.arch.num_classes, "input_shape": list(self.arch.input_shape),
            "dataset": self.dataset,
            "normalization": None if self.arch.normalization is None else self.arch.normalization.to_dict(),
            "recipe": None if self.recipe is None else self.recipe.to_dict(),
            "certify": {"eps": [e.text for e in self.eps]},
            "weights": None if self.weights is None else self.weights.to_dict(),
            "metrics": None if self.results is None else self.results.to_dict(),
            "eps": [e.text for e in self.eps],
        }
        if self.results is not None and self.results.bound is not None:
            out["bound"] = dict(self.results.bound)  # mirror of metrics.bound, where lipzoo 0.1 readers look
        if self.parent is not None:
            out["parent"] = self.parent.to_dict()
        if self.training is not None:
            out["training"] = dict(self.training)
        out.update(self.extra)
        for key in _COMPUTED_KEYS:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def to_entry_dict(self) -> dict[str, Any]:
        """Only the zoo-entry keys (a YAML file's layout)."""
        full = self.to_dict()
        return {k: full[k] for k in _ENTRY_KEYS}

    # -- provenance ------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "Metadata":
        """A copy with ``changes`` (dataclass fields)."""
        return dataclasses.replace(self, **changes)

    def for_weights(self, sha256: str, *, zoo_weights: Mapping[str, str] | None = None) -> "Metadata":
        """This metadata as it may be written next to the weights ``sha256``.

        * ``results`` survive only if they were measured on ``sha256``;
        * ``weights`` (a published reference) survives only if it pins ``sha256``;
        * a ``name`` that ``zoo_weights`` (zoo entry -> published sha256) gives to other weights, or that
          this metadata gave to other weights (its own ``sha256``), moves to ``parent``;
        * metadata that described other weights (``self.sha256`` set and different) also loses what
          described them: ``training``, ``recipe`` and the card extras.

        A copy never carries the name, numbers, card or weights of what it came from.
        """
        _sha(sha256, "sha256")
        changes: dict[str, Any] = {"sha256": sha256}
        other = self.sha256 is not None and self.sha256 != sha256
        if self.results is not None and self.results.sha256 != sha256:
            logger.info("Dropping results measured on other weights (sha256 %s...); certify these weights and "
                        "attach the report (`lipzoo certify <folder> --attach`).", self.results.sha256[:12])
            changes["results"] = None
        if self.weights is not None and self.weights.sha256 != sha256:
            changes["weights"] = None
        published = (zoo_weights or {}).get(self.name) if self.name else None
        if self.name is not None and ((published is not None and published != sha256) or other):
            logger.info("%r names other weights; this checkpoint is derived from it (parent).", self.name)
            changes["name"] = None
            if self.parent is None:
                changes["parent"] = Parent(self.name, published if published is not None else self.sha256)
        elif other and self.parent is None:
            changes["parent"] = Parent(None, self.sha256)
        if other:
            changes.update(training=None, recipe=None, extra={k: v for k, v in self.extra.items() if k != "card"})
        return dataclasses.replace(self, **changes)

    def with_data(self, dataset: str, num_classes: int, *, input_shape: Sequence[int] | None = None,
                  normalization: Mapping[str, Sequence[float]] | None = None,
                  model_args: Mapping[str, Any] | None = None) -> "Metadata":
        """The metadata of a model to be trained on other data (``lipzoo train --data FILE.npz``).

        ``dataset`` is a label (a file name for the user's own data); ``input_shape``,
        ``normalization`` and ``model_args`` replace the architecture's when given (e.g.
        ``in_chans`` / ``img_size`` for another image size). Results, weights and name go, as for
        any copy (see :meth:`for_weights`).
        """
        arch = dataclasses.replace(
            self.arch, num_classes=int(_number(num_classes, "num_classes", low=1, integer=True)),
            input_shape=self.arch.input_shape if input_shape is None else tuple(int(v) for v in input_shape),
            model_args=self.arch.model_args if model_args is None else dict(model_args),
            normalization=self.arch.normalization if normalization is None else Normalization.parse(
                normalization, None if input_shape is None or len(input_shape) != 3 else int(input_shape[0])))
        parent = self.parent
        if parent is None and self.weights is not None:
            parent = Parent(self.name, self.weights.sha256)
        return dataclasses.replace(self, arch=arch, dataset=_string(dataset, "dataset"), results=None, weights=None,
                                   name=None if self.weights is not None else self.name, parent=parent)

    def with_new_head(self, num_classes: int) -> "Metadata":
        """The metadata after the readout was replaced: no results, no weights, no name; parent recorded."""
        parent = self.parent
        if self.name is not None or self.sha256 is not None:
            parent = Parent(self.name, self.sha256 or (self.weights.sha256 if self.weights else None))
        return dataclasses.replace(self, arch=dataclasses.replace(self.arch, num_classes=int(num_classes)),
                                   results=None, weights=None, name=None, parent=parent, sha256=None,
                                   training=None, recipe=None,
                                   extra={k: v for k, v in self.extra.items() if k != "card"},
                                   dataset=None if num_classes != self.arch.num_classes else self.dataset)
