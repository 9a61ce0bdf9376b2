"""The metadata model: what a zoo entry, a ``config.json`` or a command line says about a model.

Every value with rules is parsed **once**, where it enters (a zoo YAML, a checkpoint's
``config.json``, ``key=value`` overrides, ``--eps``), into the frozen types below, and passed on as
those types; :meth:`Metadata.to_dict` writes the one JSON/YAML layout back.

This module sits at the bottom of the import order (standard library only), so that every layer
can use :class:`Eps` and the dataset facts. Checks that need the model registry (is the
architecture registered, does it build with these arguments) live in :mod:`lipzoo.models.zoo`.

Provenance (issue 9): measured numbers are :class:`Results`, and a :class:`Results` carries the
sha256 of the ``model.safetensors`` it was measured on. :meth:`Metadata.for_weights` is the one
place that decides what survives when a config is written next to new weights: results and the
``weights`` reference only when their sha256 is the new one, and a zoo name that belongs to other
weights becomes the ``parent``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Mapping, Sequence

__all__ = [
    "Eps", "parse_eps", "DatasetFacts", "DATASETS", "dataset_facts", "LOSSES", "OPTIMIZERS", "SCHEDULERS",
    "G_FUNCTIONS", "AUGMENTATIONS", "STORAGE_DTYPES", "Optimizer", "Scheduler", "CRMSettings", "GloRoSettings",
    "EMMASettings", "HKRSettings", "Augmentation",
    "Recipe", "Normalization", "ArchitectureConfig", "WeightsRef", "Measured", "Results", "Parent", "Metadata",
    "file_sha256",
]

logger = logging.getLogger(__name__)


def file_sha256(path) -> str:
    """The sha256 of a file, read in 1 MiB blocks: the identity that weights, data and results share."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

LOSSES = ("crm", "ce", "gloro", "emma", "hkr")
"""``recipe.loss``: CRM, plain cross-entropy, GloRo (Leino et al. 2021), EMMA (Hu et al. 2023), hinge-KR (deel-torchlip)."""
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("exponential", "constant")
G_FUNCTIONS = ("linear", "exp")
"""The CRM loss's radius transforms ``g`` (paper eq. 6): ``linear`` or ``exp``."""
AUGMENTATIONS = ("hflip", "affine", "crop")
"""The augmentations a recipe may name: horizontal flip, random affine, random crop."""
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
# precision of the training estimator's power iterations (``LipLTEstimator(iteration_dtype=...)``):
# float32 (the default, first) is the model's own, auto is bfloat16 on CPUs that compute it natively (float32 on CUDA)
POWER_ITERATION_DTYPES = ("float32", "bfloat16", "auto")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# -- small checkers (every message names the key, what was expected and what came) ----------------
def _fail(path: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"{path}: expected {expected}, got {got!r}.")


def _keys(d: Any, path: str, required: Sequence[str], optional: Sequence[str] = ()) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise _fail(path, "a mapping", d)
    unknown = sorted(set(d) - set(required) - set(optional), key=str)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed: {list(required) + list(optional)}.")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}.")
    return d


def _number(v: Any, path: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False, integer: bool = False) -> Any:
    kind = "an int" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        hint = " (PyYAML reads 1e-3 as a string; write 1.0e-3)" if isinstance(v, str) else ""
        raise ValueError(f"{path}: expected {kind}{hint}, got {v!r}.")
    if not math.isfinite(v):
        raise _fail(path, f"a finite {'int' if integer else 'number'}", v)
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


def _sha(v: Any, path: str) -> str:
    if not isinstance(v, str) or not _SHA256_RE.match(v):
        raise _fail(path, "64 lowercase hex digits (a sha256)", v)
    return v


def _json(v: Any, path: str) -> Any:
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: must be JSON-serializable (str, numbers, lists, mappings; finite floats): {err}. "
                         "Convert tensors with .tolist() and Fractions with str().") from err
    return v


def _accuracy(v: Any, path: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{path} must be an accuracy as a fraction in [0, 1], as lipzoo.certify reports it "
                         f"(0.6416, not 64.16); got {v!r}.")
    return float(v)


# -- eps ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Eps:
    """A certification radius (ℓ2, pixel units) kept exact, with the text it was written as.

    Two ``Eps`` are equal when their values are (``"1.58" == "79/50"``); ``str()`` gives the text.
    """

    value: Fraction
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text

    def __float__(self) -> float:
        return float(self.value)


def parse_eps(eps: Any, *, where: str = "eps", allow_zero: bool = False) -> Eps:
    """Parse a radius written exactly: ``"36/255"``, ``"1.58"``, ``Fraction(36, 255)``, ``2`` or an ``Eps``.

    Args:
        eps: the value; a ``float`` is refused because it is not exact (write ``"1.58"``).
        where: what the value is, for the error message (``"--eps"``, ``"certify.eps[0]"``).
        allow_zero: accept ``0`` (a clean-accuracy point), otherwise ``eps`` must be positive.

    Raises:
        TypeError: not a string, int, Fraction or Eps.
        ValueError: not a fraction, or not positive (non-negative with ``allow_zero``).
    """
    if isinstance(eps, Eps):
        value, text = eps.value, eps.text
    elif isinstance(eps, str):
        text = eps.strip()
        try:
            value = Fraction(text)
        except (ValueError, ZeroDivisionError) as err:
            raise ValueError(f"{where}: {eps!r} is not a fraction; write it like '36/255' or '1.58'.") from err
    elif isinstance(eps, (int, Fraction)) and not isinstance(eps, bool):
        value, text = Fraction(eps), str(eps)
    else:
        hint = f"; quote it: '{eps}'" if isinstance(eps, float) else ""
        raise TypeError(f"{where} must be an exact fraction string such as '36/255' or '1.58', got "
                        f"{type(eps).__name__} {eps!r}{hint}.")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{where} must be {'>= 0' if allow_zero else 'positive'}, got {text!r}.")
    return Eps(value, text)


# -- datasets ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetFacts:
    """What lipzoo knows about a dataset: classes, input shape and training-split statistics.

    ``mean`` / ``std`` are per channel, in pixel units, over all training pixels (population std).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


# The one table of dataset facts (lipzoo.data.dataset_info and the builders' default normalization
# read it). MNIST and CIFAR-10: measured on /work/shared/data. Tiny-ImageNet: per-pixel statistics of
# the training split as widely quoted; its also-quoted std 0.2302/0.2265/0.2262 is the std of
# per-image means, which is not what Normalize needs.
DATASETS: dict[str, DatasetFacts] = {
    "mnist": DatasetFacts("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), "measured, training split"),
    "cifar10": DatasetFacts("cifar10", 10, (3, 32, 32), (0.491400, 0.482158, 0.446531),
                            (0.247032, 0.243485, 0.261588), "measured, training split"),
    "tinyimagenet": DatasetFacts("tinyimagenet", 200, (3, 64, 64), (0.4802, 0.4481, 0.3975),
                                 (0.2770, 0.2691, 0.2821), "quoted per-pixel statistics, training split"),
}


def dataset_facts(name: str) -> DatasetFacts:
    """The :class:`DatasetFacts` of a known dataset.

    Raises:
        ValueError: unknown name (naming the known ones).
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known datasets are {list(DATASETS)} (pass your own data as "
                         "a .npz path where a command takes --data).")
    return DATASETS[name]


# -- recipe ------------------------------------------------------------------------------------------
def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class Optimizer:
    """``recipe.optimizer``: Adam / AdamW (``betas``, ``eps``) or SGD (``momentum``)."""

    name: str
    lr: float
    betas: tuple[float, float] | None = None
    eps: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None

    @classmethod
    def parse(cls, d: Any, path: str = "recipe.optimizer") -> "Optimizer":
        _keys(d, path, ("name", "lr"), ("betas", "eps", "weight_decay", "momentum"))
        name = _choice(d["name"], f"{path}.name", OPTIMIZERS)
        betas = d.get("betas")
        if betas is not None:
            if not isinstance(betas, (list, tuple)) or len(betas) != 2:
                raise _fail(f"{path}.betas", "[beta1, beta2]", betas)
            betas = tuple(float(_number(b, f"{path}.betas[{i}]", low=0, high=1, high_open=True))
                          for i, b in enumerate(betas))
        if name == "sgd" and (betas is not None or d.get("eps") is not None):
            raise ValueError(f"{path}: betas/eps apply to adam/adamw, not sgd; remove them.")
        if name != "sgd" and d.get("momentum") is not None:
            raise ValueError(f"{path}.momentum applies to sgd, not {name}; remove it or use betas.")
        opt = {k: float(_number(d[k], f"{path}.{k}", low=0, low_open=k in ("lr", "eps")))
               for k in ("lr", "eps", "weight_decay", "momentum") if d.get(k) is not None}
        return cls(name=name, betas=betas, **opt)

    def to_dict(self) -> dict[str, Any]:
        out = _drop_none(dataclasses.asdict(self))
        if self.betas is not None:
            out["betas"] = list(self.betas)
        return out


@dataclass(frozen=True)
class Scheduler:
    """``recipe.scheduler``: ``constant``, or ``exponential`` decay from ``start_epoch`` to ``final_lr``."""

    name: str
    start_epoch: int | None = None
    final_lr: float | None = None

    @classmethod
    def parse(cls, d: Any, epochs: int | None, path: str = "recipe.scheduler") -> "Scheduler":
        """``epochs``: the recipe's, to check ``start_epoch`` against (None: :meth:`Recipe.parse` checks it)."""
        if not isinstance(d, Mapping) or "name" not in d:
            raise _fail(path, "a mapping with a name", d)
        if _choice(d["name"], f"{path}.name", SCHEDULERS) == "constant":
            _keys(d, path, ("name",))
            return cls("constant")
        _keys(d, path, ("name", "start_epoch", "final_lr"))
        start = _number(d["start_epoch"], f"{path}.start_epoch", low=0, high=epochs, high_open=True, integer=True)
        return cls("exponential", start, float(_number(d["final_lr"], f"{path}.final_lr", low=0, low_open=True)))

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))


@dataclass(frozen=True)
class CRMSettings:
    """``recipe.crm``: the CRM loss (paper eqs. 5-6) and its cross-entropy warm-up."""

    t: float
    lam: float
    r0: float
    g: str
    warmup_epochs: int

    @classmethod
    def parse(cls, d: Any, epochs: int | None, path: str = "recipe.crm") -> "CRMSettings":
        """``epochs``: the recipe's, to check ``warmup_epochs`` against (None: :meth:`Recipe.parse` checks it)."""
        _keys(d, path, ("t", "lam", "r0", "g", "warmup_epochs"))
        return cls(t=float(_number(d["t"], f"{path}.t", low=0, low_open=True)),
                   lam=float(_number(d["lam"], f"{path}.lam", low=0)),
                   r0=float(_number(d["r0"], f"{path}.r0", low=0, low_open=True)),
                   g=_choice(d["g"], f"{path}.g", G_FUNCTIONS),
                   # == epochs: cross-entropy for the whole run (what a shortened recipe may come to)
                   warmup_epochs=_number(d["warmup_epochs"], f"{path}.warmup_epochs", low=0, high=epochs,
                                         integer=True))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Problems(ValueError):
    """A ``ValueError`` listing several problems of one block (``Recipe.parse`` lists them with its own)."""

    def __init__(self, path: str, problems: list[str]):
        self.problems = problems
        super().__init__(problems[0] if len(problems) == 1 else
                         f"{path}: {len(problems)} problems:\n  - " + "\n  - ".join(problems))


def _optional_block(d: Any, path: str, checks: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a block whose keys are all optional: ``checks`` maps each key to ``check(value, path)``.

    ``None`` is the empty block. Unknown keys and every bad value are reported together (:class:`_Problems`).
    """
    d = {} if d is None else d
    if not isinstance(d, Mapping):
        raise _fail(path, f"a mapping with keys among {list(checks)} (or null for the defaults)", d)
    problems = []
    unknown = sorted(set(d) - set(checks), key=str)
    if unknown:
        problems.append(f"{path}: unknown key(s) {unknown}; allowed: {list(checks)}.")
    values = {}
    for key, check in checks.items():
        if key in d:
            try:
                values[key] = check(d[key], f"{path}.{key}")
            except ValueError as err:
                problems.append(str(err))
    if problems:
        raise _Problems(path, problems)
    return values


def _radius_or_null(v: Any, path: str) -> float | None:
    """A training radius ``> 0``, or ``None``: the entry's first certification radius (``certify.eps[0]``)."""
    return None if v is None else float(_number(v, f"{path} (a radius, or null for certify.eps[0])", low=0,
                                                low_open=True))


def _share(v: Any, path: str) -> float:
    return float(_number(v, f"{path} (a share of recipe.epochs)", low=0, high=1))


@dataclass(frozen=True)
class GloRoSettings:
    """``recipe.gloro``: the GloRo loss (:mod:`lipzoo.losses.gloro`). Every key is optional.

    Attributes:
        eps: training radius; ``None`` (default): the entry's first certification radius.
        eps_ramp: share of ``recipe.epochs`` over which the radius ramps linearly up to ``eps``
            (default 0: ``eps`` from the first epoch).
        trades_lam: ``None`` (default): cross-entropy over the ``K + 1`` logits; a number ``>= 0``: the
            TRADES form ``CE + trades_lam · KL`` (the CRM reference code's GloRo baseline).
    """

    eps: float | None = None
    eps_ramp: float = 0.0
    trades_lam: float | None = None

    @classmethod
    def parse(cls, d: Any, path: str = "recipe.gloro") -> "GloRoSettings":
        return cls(**_optional_block(d, path, {
            "eps": _radius_or_null, "eps_ramp": _share,
            "trades_lam": lambda v, p: None if v is None else float(_number(v, f"{p} (or null)", low=0))}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EMMASettings:
    """``recipe.emma``: the EMMA loss (:mod:`lipzoo.losses.emma`). Every key is optional.

    Attributes:
        eps: training radius; ``None`` (default): the entry's first certification radius.
        eps_ramp: share of ``recipe.epochs`` over which the radius ramps linearly up to ``eps`` (default 0).
    """

    eps: float | None = None
    eps_ramp: float = 0.0

    @classmethod
    def parse(cls, d: Any, path: str = "recipe.emma") -> "EMMASettings":
        return cls(**_optional_block(d, path, {"eps": _radius_or_null, "eps_ramp": _share}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class HKRSettings:
    """``recipe.hkr``: the hinge-Kantorovich-Rubinstein loss on radius-unit margins (:mod:`lipzoo.losses.hkr`).

    Attributes:
        alpha: weight in [0, 1] of the hinge against the KR term (default 0.99, deel-torchlip's examples).
        min_margin: the hinge's margin, a radius; ``None`` (default): the entry's first certification radius.
    """

    alpha: float = 0.99
    min_margin: float | None = None

    @classmethod
    def parse(cls, d: Any, path: str = "recipe.hkr") -> "HKRSettings":
        return cls(**_optional_block(d, path, {
            "alpha": lambda v, p: float(_number(v, p, low=0, high=1)), "min_margin": _radius_or_null}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# recipe.loss -> the settings type of its block (the losses other than crm and ce, whose blocks are optional)
LOSS_SETTINGS: dict[str, Any] = {"gloro": GloRoSettings, "emma": EMMASettings, "hkr": HKRSettings}


_AUG_ARGS = {"hflip": ((), ("p",)), "affine": (("degrees", "translate"), ()), "crop": ((), ("size", "padding"))}


@dataclass(frozen=True)
class Augmentation:
    """One ``recipe.augmentation`` item: ``hflip``, ``{affine: {degrees, translate}}`` or ``{crop: {size, padding}}``."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, item: Any, path: str) -> "Augmentation":
        args: Any  # the kind's arguments, a mapping once checked
        if isinstance(item, str):
            name, args = item, {}
        elif isinstance(item, Mapping) and len(item) == 1:
            (name, args), = item.items()
            args = {} if args is None else args
        else:
            raise _fail(path, f"a name or a one-key mapping such as {{affine: {{degrees: 10, translate: 0.1}}}} "
                              f"(kinds {list(AUGMENTATIONS)})", item)
        _choice(name, f"{path} kind", AUGMENTATIONS)
        required, optional = _AUG_ARGS[name]
        _keys(args, f"{path}.{name}", required, optional)
        for key, value in args.items():
            if key == "degrees":
                _number(value, f"{path}.{name}.degrees", low=0, high=180)
            elif key in ("translate", "p"):
                _number(value, f"{path}.{name}.{key}", low=0, high=1)
            else:
                _number(value, f"{path}.{name}.{key}", low=0, integer=True)
        return cls(name, tuple(sorted(args.items())))

    def to_spec(self) -> str | dict[str, Any]:
        """The loader's spec (``lipzoo.data.build_augmentation``)."""
        return self.name if not self.args else {self.name: dict(self.args)}


@dataclass(frozen=True)
class Recipe:
    """``recipe``: how the weights are (to be) trained. ``name`` is set for a shared, named recipe.

    ``crm`` holds the CRM loss's settings (required key, ``null`` for other losses); ``gloro``, ``emma``
    and ``hkr`` the settings of those losses (optional keys, every setting defaulted: the block of
    ``loss`` is filled in with its defaults when the recipe leaves it out).
    """

    loss: str
    epochs: int
    batch_size: int
    optimizer: Optimizer
    scheduler: Scheduler
    augmentation: tuple[Augmentation, ...]
    crm: CRMSettings | None
    power_iterations: int
    validation_split: float
    name: str | None = None
    power_iteration_dtype: str = POWER_ITERATION_DTYPES[0]
    gloro: GloRoSettings | None = None
    emma: EMMASettings | None = None
    hkr: HKRSettings | None = None

    _KEYS = ("loss", "epochs", "batch_size", "optimizer", "scheduler", "augmentation", "crm", "power_iterations",
             "validation_split")
    DEFAULTED = ("power_iteration_dtype",)  # settings a recipe may leave out (default applies); overrides may set them
    # the blocks of the losses other than crm: optional, every key defaulted; the recipe of such a loss gets its
    # block with the defaults filled in, and an override may set one key of an absent block (recipe.gloro.eps=0.5)
    LOSS_BLOCKS = tuple(LOSS_SETTINGS)

    @classmethod
    def parse(cls, d: Any, path: str = "recipe") -> "Recipe":
        """The recipe, checked key by key; every problem is reported in one ``ValueError`` (never one at a time).

        The settings counted in epochs (``scheduler.start_epoch``, ``crm.warmup_epochs``) are checked
        against ``epochs`` with the fix spelled out (``lipzoo train`` scales them with an overridden
        ``recipe.epochs`` that comes alone).
        """
        if not isinstance(d, Mapping):
            raise _fail(path, "a mapping", d)
        problems: list[str] = []

        def check(key: str, parse):  # parse(value) for a present key; a problem is noted, None returned
            if key not in d:
                return None
            try:
                return parse(d[key])
            except ValueError as err:
                problems.extend(getattr(err, "problems", [str(err)]))
                return None

        try:
            _keys(d, path, cls._KEYS, ("name", *cls.DEFAULTED, *cls.LOSS_BLOCKS))
        except ValueError as err:
            problems.append(str(err))
        loss = check("loss", lambda v: _choice(v, f"{path}.loss", LOSSES))
        epochs = check("epochs", lambda v: _number(v, f"{path}.epochs", low=1, integer=True))
        problems += _epoch_conflicts(d, epochs, path)

        def augmentation(aug):
            if not isinstance(aug, (list, tuple)):
                raise _fail(f"{path}.augmentation", "a list such as [hflip, {affine: {degrees: 10, translate: 0.1}}]",
                            aug)
            return tuple(Augmentation.parse(a, f"{path}.augmentation[{i}]") for i, a in enumerate(aug))

        if loss == "crm" and "crm" in d and d["crm"] is None:
            problems.append(str(_fail(f"{path}.crm", "a mapping {t, lam, r0, g, warmup_epochs} when recipe.loss is "
                                                     "'crm'", None)))
        blocks = {key: check(key, lambda v, key=key: None if v is None and key != loss else
                             LOSS_SETTINGS[key].parse(v, f"{path}.{key}")) for key in cls.LOSS_BLOCKS}
        if loss in LOSS_SETTINGS and blocks[loss] is None:
            blocks[loss] = LOSS_SETTINGS[loss]()  # the loss's block left out (or null): its defaults
        fields = dict(
            **blocks, loss=loss, epochs=epochs,
            batch_size=check("batch_size", lambda v: _number(v, f"{path}.batch_size", low=1, integer=True)),
            optimizer=check("optimizer", lambda v: Optimizer.parse(v, f"{path}.optimizer")),
            scheduler=check("scheduler", lambda v: Scheduler.parse(v, None, f"{path}.scheduler")),
            augmentation=check("augmentation", augmentation),
            crm=check("crm", lambda v: None if v is None else CRMSettings.parse(v, None, f"{path}.crm")),
            power_iterations=check("power_iterations", lambda v: _number(v, f"{path}.power_iterations", low=1,
                                                                         integer=True)),
            validation_split=check("validation_split", lambda v: float(_number(
                v, f"{path}.validation_split", low=0, high=1, high_open=True))),
            name=check("name", lambda v: None if v is None else _string(v, f"{path}.name")),
            power_iteration_dtype=check("power_iteration_dtype", lambda v: _choice(
                v, f"{path}.power_iteration_dtype", POWER_ITERATION_DTYPES)) or POWER_ITERATION_DTYPES[0])
        if len(problems) == 1:
            raise ValueError(problems[0])
        if problems:
            raise ValueError(f"{path}: {len(problems)} problems:\n  - " + "\n  - ".join(problems))
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        out = {"loss": self.loss, "epochs": self.epochs, "batch_size": self.batch_size,
               "optimizer": self.optimizer.to_dict(), "scheduler": self.scheduler.to_dict(),
               "augmentation": [a.to_spec() for a in self.augmentation],
               "crm": None if self.crm is None else self.crm.to_dict(),
               "power_iterations": self.power_iterations, "validation_split": self.validation_split}
        if self.name is not None:
            out["name"] = self.name
        if self.power_iteration_dtype != POWER_ITERATION_DTYPES[0]:
            out["power_iteration_dtype"] = self.power_iteration_dtype
        for key in self.LOSS_BLOCKS:
            block = getattr(self, key)
            if block is not None:
                out[key] = block.to_dict()
        return out


def _epoch_conflicts(d: Mapping[str, Any], epochs: int | None, path: str) -> list[str]:
    """The settings counted in epochs that do not fit ``epochs``, each with its fix (all of them, at once)."""
    if epochs is None:
        return []
    out = []
    sched, crm = d.get("scheduler"), d.get("crm")
    start = sched.get("start_epoch") if isinstance(sched, Mapping) and sched.get("name") == "exponential" else None
    if isinstance(start, int) and not isinstance(start, bool) and start >= epochs:
        out.append(f"{path}.scheduler.start_epoch: expected an int < {epochs} (the decay starts within "
                   f"{path}.epochs={epochs}), got {start}; set it to at most {epochs - 1}, e.g. "
                   f"{path}.scheduler.start_epoch={epochs // 2}.")
    # the CE warm-up belongs to the CRM loss: another loss ignores the block (crm-mnist-4c3f recipe.loss=gloro)
    warmup = crm.get("warmup_epochs") if isinstance(crm, Mapping) and d.get("loss") == "crm" else None
    if isinstance(warmup, int) and not isinstance(warmup, bool) and warmup > epochs:
        out.append(f"{path}.crm.warmup_epochs: expected an int <= {epochs} (the warm-up fits in {path}.epochs="
                   f"{epochs}), got {warmup}; set it to at most {epochs}, e.g. {path}.crm.warmup_epochs="
                   f"{epochs // 10}.")
    return out


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
