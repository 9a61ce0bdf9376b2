"""The training recipe: optimizer, scheduler, loss settings (CRM, GloRo, EMMA, hinge-KR), augmentations,
:class:`Recipe` and its checks (every problem listed at once)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from lipzoo.meta._schema import (AUGMENTATIONS, G_FUNCTIONS, LOSSES, OPTIMIZERS, POWER_ITERATION_DTYPES, SCHEDULERS,
                                 _choice, _drop_none, _fail, _keys, _number, _optional_block, _radius_or_null, _share,
                                 _string)


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

