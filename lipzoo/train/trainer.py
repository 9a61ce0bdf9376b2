"""``lipzoo train``: CRM (or cross-entropy, GloRo, EMMA, hinge-KR: ``recipe.loss``) training with exact resume.

One run directory holds ``metrics.jsonl`` (one JSON line per epoch), ``checkpoint.pt`` (the state
after the last *good* epoch: model, optimizer, scheduler, power-iteration vectors, RNG states, all
plain tensors and containers, so it loads with ``torch.load(..., weights_only=True)`` and never
unpickles code), ``config.yaml`` (the resolved recipe) and, at the end, ``final/`` (a Hub-format
checkpoint). Re-running the same command with ``resume=True`` continues bit-for-bit where it stopped.

Fine-tuning: ``TrainOptions.init`` names pretrained weights (a checkpoint folder, zoo entry, ``arch.tag``
or ``hf-hub:owner/name``) that a *fresh* run starts from: every weight except a classifier whose
class count differs and the ``Normalize`` statistics, which come from the config (see
:func:`lipzoo.train.config.resolve_metadata`). A resumed run never reads them: its checkpoint holds
the weights. ``TrainOptions.data`` trains on the user's own data (``.npz`` or image folder) instead
of the config's dataset; the config must already describe it (``resolve_config(..., data=...)``).

``TrainOptions.time_budget`` caps the run's wall clock: a few steps are timed before the first
epoch, the recipe is fitted to what is left (:mod:`lipzoo.train.budget`: the arithmetic, tested with
made-up costs; :class:`lipzoo.train.budget_clock.RunBudget`: the clock), and every epoch re-checks the rate. The plan is
stored in the checkpoint's config, so a resumed run keeps it.

The hot loop is built for accelerators: the training split lives on the device as uint8
(:class:`lipzoo.data.DeviceLoader`), augmentation runs there in batches, and a step never waits for
the device: losses, accuracy, radii and the finiteness checks accumulate in device tensors that are
read every ``sync_every`` steps and at the end of the epoch.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from lipzoo.bounds.estimator import LipLTEstimator
from lipzoo.bounds.radius import certified_radius
from lipzoo.losses import CRMLoss, EMMALoss, GloRoLoss, HKRLoss
from lipzoo.meta import EMMASettings, GloRoSettings, HKRSettings
from lipzoo.train.budget import BudgetPlan, StepCosts, fit_recipe, plural
from lipzoo.train.budget_clock import RunBudget
from lipzoo.train.finish import finish_run

logger = logging.getLogger(__name__)

__all__ = ["TrainOptions", "train", "exponential_decay", "fit_recipe"]

_now = time.monotonic  # the one clock of the loop (tests replace it)


@dataclass
class TrainOptions:
    """Runtime options that are not part of the recipe."""

    out_dir: str = "runs/default"
    data_root: str | None = None
    device: str | None = None  # default: cuda when available
    seed: int = 0
    resume: bool = False
    amp: bool = False
    num_workers: int = 0
    max_steps_per_epoch: int | None = None  # for smoke tests
    progress: bool = True
    threads: int | None = None
    time_budget: float | None = None  # seconds of wall clock for the whole run (the final save excepted): see budget.py
    started: float | None = None  # time.monotonic() when the budget's clock started (default: when train() is called)
    sync_every: int = 50  # steps between reads of the device-side running metrics
    compile: bool = False  # torch.compile the network's forward (the bound stays eager, float32)
    init: str | None = None  # pretrained weights a fresh run starts from (folder, entry, arch.tag, hf-hub:...)
    data: str | None = None  # the user's data (.npz, image folder or a dataset name) instead of config["dataset"]


def exponential_decay(epoch: int, *, epochs: int, start_epoch: int, lr: float, final_lr: float) -> float:
    """Learning-rate factor: constant until ``start_epoch``, then exponential down to ``final_lr``."""
    if epoch < start_epoch or epochs <= start_epoch:
        return 1.0
    frac = min(1.0, (epoch - start_epoch) / max(1, epochs - 1 - start_epoch))
    return (final_lr / lr) ** frac


def _rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain containers (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())  # legacy
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`_rng_state`; tensors may arrive on any device (they are moved to the CPU)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _make_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD with every key the zoo schema allows (none is silently dropped)."""
    opt = recipe["optimizer"]
    name = str(opt.get("name", "adam")).lower()
    kwargs: dict[str, Any] = {"lr": float(opt["lr"])}
    if "weight_decay" in opt:  # absent: the optimizer's own default (AdamW: 1e-2)
        kwargs["weight_decay"] = float(opt["weight_decay"])
    if name in ("adam", "adamw"):
        if "momentum" in opt:
            raise ValueError(f"recipe.optimizer.momentum applies to sgd, not {name}; remove it or use betas.")
        kwargs.update(betas=tuple(opt.get("betas", (0.9, 0.999))), eps=float(opt.get("eps", 1e-8)))
        return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(model.parameters(), **kwargs)
    if name == "sgd":
        extra = sorted(k for k in ("betas", "eps") if k in opt)
        if extra:
            raise ValueError(f"recipe.optimizer {extra} apply to adam/adamw, not sgd; remove them.")
        return torch.optim.SGD(model.parameters(), momentum=float(opt.get("momentum", 0.0)), **kwargs)
    raise ValueError(f"recipe.optimizer.name must be 'adam', 'adamw' or 'sgd', got {opt.get('name')!r}.")


def _make_scheduler(optimizer, recipe: dict):
    sched = recipe.get("scheduler") or {"name": "constant"}
    name = sched.get("name", "constant")
    epochs, lr = int(recipe["epochs"]), float(recipe["optimizer"]["lr"])
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    if name != "exponential":
        raise ValueError(f"recipe.scheduler.name must be 'exponential' or 'constant', got {name!r}.")
    start, final = int(sched["start_epoch"]), float(sched["final_lr"])
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: exponential_decay(e, epochs=epochs, start_epoch=start, lr=lr, final_lr=final))


def _loaders(config: dict, opts: TrainOptions, device: torch.device, rank: int, world: int):
    from lipzoo.data import load_dataset, make_device_loaders

    recipe = config["recipe"]
    train_set = load_dataset(opts.data or config["dataset"], split="train", root=opts.data_root)
    loaders = make_device_loaders(train_set, int(recipe["batch_size"]), device=device,
                                  validation_split=float(recipe.get("validation_split", 0)),
                                  augmentation=recipe.get("augmentation") or [], seed=opts.seed, rank=rank, world=world)
    _check_fits(config, opts.data or config["dataset"], [loaders["train"], loaders.get("val")])
    return loaders["train"], loaders.get("val")


def _check_fits(config: dict, data: str, loaders: list) -> None:
    """The data must fit the config (``resolve_config(..., data=...)`` makes it so; a hand-made config may not)."""
    want, classes = tuple(config["input_shape"]), int(config["num_classes"])
    for loader in (part for part in loaders if part is not None):
        shape = tuple(loader.images.shape[1:])
        if shape != want:
            raise ValueError(f"The images of {data!r} are {list(shape)}, the config's input_shape is {list(want)}; "
                             "resolve the config with the data (lipzoo train --data, resolve_config(..., data=...)).")
        high, low = int(loader.labels.max()), int(loader.labels.min())
        if low < 0 or high >= classes:
            raise ValueError(f"{data!r} has label {low if low < 0 else high}, the config {classes} classes; resolve "
                             "the config with the data (lipzoo train --data, resolve_config(..., data=...)).")


class _Run:
    """All the state of one training run (what a checkpoint holds)."""

    def __init__(self, config: dict, opts: TrainOptions):
        self.config, self.opts = config, opts
        self.recipe = config["recipe"]
        self.rank, self.world = _distributed()
        if opts.threads:
            torch.set_num_threads(opts.threads)
        dev = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dev.startswith("cuda") and self.world > 1:
            dev = f"cuda:{self.rank % torch.cuda.device_count()}"
        self.device = torch.device(dev)
        torch.manual_seed(opts.seed)
        np.random.seed(opts.seed)
        random.seed(opts.seed)
        self.out = Path(opts.out_dir)
        self.ckpt = self.out / "checkpoint.pt"
        self.model = _build_model(config)
        if opts.init and not (opts.resume and self.ckpt.exists()):  # a resumed run has its own weights
            self.start_from(opts.init)
        self.model.to(self.device)
        self.input_shape = tuple(config["input_shape"])
        low = self.recipe.get("power_iteration_dtype", "float32")  # "float32": the model's own precision
        self.estimator = LipLTEstimator(self.model, self.input_shape, n_iter=int(self.recipe.get("power_iterations", 5)),
                                        seed=opts.seed, iteration_dtype=None if low == "float32" else
                                        low if low == "auto" else getattr(torch, low))
        self.optimizer = _make_optimizer(self.model, self.recipe)
        self.scheduler = _make_scheduler(self.optimizer, self.recipe)
        self.criterion = self._criterion()
        self.epoch = 0
        self.seconds = 0.0  # wall clock spent on the run up to its last checkpoint, all sessions
        self.net = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if opts.compile:
            self.net = torch.compile(self.net)  # type: ignore[assignment]  # of a module: a module
        self.train_loader, self.val_loader = _loaders(config, opts, self.device, self.rank, self.world)

    def start_from(self, source: str) -> None:
        """Load pretrained weights: all but the ``Normalize`` statistics (the config's) and a classifier
        of another class count (``load_pretrained`` re-initialises it)."""
        from lipzoo.layers import Normalize
        from lipzoo.models import load_pretrained

        init = load_pretrained(source, num_classes=int(self.config["num_classes"]))
        keep = {f"{name}.{buf}" for name, m in self.model.named_modules() if isinstance(m, Normalize)
                for buf in ("mean", "std")}
        state = {k: v for k, v in init.state_dict().items() if k not in keep}
        own = self.model.state_dict()
        odd = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
        missing, extra = sorted(set(own) - set(state) - keep), sorted(set(state) - set(own))
        if odd or missing or extra:
            raise ValueError(f"--init {source!r} does not fit the model of the config: "
                             + "; ".join(f"{what} {keys[:3]}" for what, keys in (("other shapes", odd), (
                                 "missing", missing), ("unexpected", extra)) if keys)
                             + ". Start from a checkpoint of the same architecture and model_args.")
        self.model.load_state_dict(state, strict=False)
        logger.info("Initialised from %s (%d tensors; Normalize from the config).", source, len(state))

    def _criterion(self) -> CRMLoss | GloRoLoss | EMMALoss | HKRLoss:
        """The loss of ``recipe.loss`` (``ce`` keeps a CRM module for its epoch bookkeeping; its loss is plain CE)."""
        loss, epochs = self.recipe.get("loss", "crm"), int(self.recipe["epochs"])
        if loss == "gloro":
            gloro = GloRoSettings.parse(self.recipe.get("gloro"))
            return GloRoLoss(eps=self._radius(gloro.eps, "recipe.gloro.eps"), eps_ramp=gloro.eps_ramp, epochs=epochs,
                             trades_lam=gloro.trades_lam)
        if loss == "emma":
            emma = EMMASettings.parse(self.recipe.get("emma"))
            return EMMALoss(eps=self._radius(emma.eps, "recipe.emma.eps"), eps_ramp=emma.eps_ramp, epochs=epochs)
        if loss == "hkr":
            hkr = HKRSettings.parse(self.recipe.get("hkr"))
            return HKRLoss(min_margin=self._radius(hkr.min_margin, "recipe.hkr.min_margin"), alpha=hkr.alpha)
        crm = self.recipe.get("crm") or {}
        return CRMLoss(t=float(crm.get("t", 5.0)), lam=float(crm.get("lam", 15.0)), r0=crm.get("r0"),
                       g=crm.get("g", "linear"), warmup_epochs=int(crm.get("warmup_epochs", 0)))

    def _radius(self, value: float | None, key: str) -> float:
        """A loss's radius setting; ``None`` is the config's first certification radius (``certify.eps[0]``)."""
        if value is not None:
            return value
        eps = (self.config.get("certify") or {}).get("eps") or []
        if not eps:
            raise ValueError(f"{key} is null, which means the first certification radius (certify.eps[0]), but the "
                             f"config certifies at none; set {key}=<radius>, e.g. {key}=0.5.")
        logger.info("%s: null, so the first certification radius %s.", key, eps[0])
        return _fraction(eps[0])

    # -- time budget (lipzoo.train.budget) ------------------------------------------------------------
    @property
    def full_steps(self) -> int:
        """Steps of one pass over the training split (``max_steps_per_epoch`` applied)."""
        steps = len(self.train_loader)
        return min(steps, self.opts.max_steps_per_epoch) if self.opts.max_steps_per_epoch else steps

    @property
    def planned_steps(self) -> int:
        """Steps of each epoch: the budget's plan when it shortened them, else one pass."""
        return int((self.config.get("time_budget") or {}).get("steps_per_epoch", self.full_steps))

    def measure_costs(self, repeats: int = 2) -> StepCosts:
        """Seconds per training step (in each mode the recipe uses) and per epoch's validation and checkpoint.

        Measured on the first batch of the training split, each mode once untimed (allocation,
        compilation) and then ``repeats`` times, without changing the run: no optimizer step, and
        the weights, the estimator's vectors and every RNG are restored, so a budgeted run trains
        what an unbudgeted run of the fitted recipe would.
        """
        saved = {"model": copy.deepcopy(self.model.state_dict()), "estimator": copy.deepcopy(self.estimator.state_dict()),
                 "rng": _rng_state()}
        loader = self.train_loader
        x, y = loader.images[:loader.batch_size], loader.labels[:loader.batch_size]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        gen = torch.Generator(device=self.device).manual_seed(0)  # not the loader's: its draws stay as they are
        crm = self.recipe.get("loss", "crm") == "crm"
        warmup = int((self.recipe.get("crm") or {}).get("warmup_epochs", 0)) if crm else int(self.recipe["epochs"])
        modes = ([False] if warmup > 0 else []) + ([True] if warmup < int(self.recipe["epochs"]) else [])
        seconds = {}
        try:
            self.net.train()
            for regularize in modes:
                times = []
                for _ in range(repeats + 1):
                    t0 = _now()
                    batch = loader.augment(x, gen) if loader.augment else x
                    loss = self.loss(batch, y, regularize)[2]
                    loss.backward()
                    self.optimizer.zero_grad(set_to_none=True)
                    self._sync()
                    times.append(_now() - t0)
                seconds[regularize] = sum(times[1:]) / repeats
            t0 = _now()
            self.evaluate(batches=1)
            val = self.val_loader
            overhead = (_now() - t0) * (len(val) if val is not None else 0)
            t0 = _now()
            torch.save(self.state(), io.BytesIO())
            overhead += _now() - t0
        finally:
            self.model.load_state_dict(saved["model"])
            self.estimator.load_state_dict(saved["estimator"])
            _set_rng_state(saved["rng"])
            self.optimizer.zero_grad(set_to_none=True)
        step = seconds.get(True, seconds.get(False, 0.0))
        return StepCosts(warmup=seconds.get(False, step), crm=step, overhead=overhead)

    def apply_plan(self, plan: BudgetPlan, costs: StepCosts) -> None:
        """Train ``plan``'s recipe and steps from here (epoch 0: nothing of the old schedule has run)."""
        budget = cast(float, self.opts.time_budget)  # a plan is made for a time budget only
        self.config = dict(self.config, recipe=plan.recipe, time_budget=plan.record(costs, budget))
        self.recipe = self.config["recipe"]
        self._rebuild_schedule()

    def _rebuild_schedule(self) -> None:
        """A scheduler and criterion for ``self.recipe``, at epoch 0; a resumed run then loads the scheduler's
        state (never steps it: a step before the optimizer's is the warning torch gives)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"])
        self.scheduler = _make_scheduler(self.optimizer, self.recipe)
        self.criterion = self._criterion()

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a plan measured by each rank would differ, and the ranks would wait)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- checkpoints -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "estimator": self.estimator.state_dict(),
                "rng": _rng_state(), "loader_generator": self.train_loader.state_dict(), "config": self.config,
                "seconds": float(self.seconds)}

    def save(self) -> None:
        if self.rank != 0:
            return
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, self.ckpt)  # atomic: a crash never leaves a half-written checkpoint

    def load(self) -> None:
        try:
            # weights_only: a run folder from someone else cannot run code. Loaded on the CPU (RNG
            # states must stay there), then moved by load_state_dict.
            state = torch.load(self.ckpt, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, foreign or pickled-object file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"Cannot read checkpoint {str(self.ckpt)!r} ({first}): it is truncated, not a "
                             f"lipzoo checkpoint, or holds pickled objects (only tensors and plain containers are "
                             f"read, never code). Delete it to start over.") from err
        if state.get("config", {}).get("architecture") != self.config["architecture"]:
            raise ValueError(f"Checkpoint {str(self.ckpt)!r} belongs to architecture "
                             f"{state.get('config', {}).get('architecture')!r}, not {self.config['architecture']!r}.")
        if state["config"].get("num_classes") != self.config["num_classes"]:
            raise ValueError(f"Checkpoint {str(self.ckpt)!r} has {state['config'].get('num_classes')} classes, this "
                             f"run's data {self.config['num_classes']}: resume with the same --data, or choose "
                             "another --out.")
        self.epoch = int(state["epoch"])
        self.seconds = float(state.get("seconds", 0.0))  # wall clock of the earlier sessions (what a budget counts)
        if "time_budget" in state["config"]:  # the run was fitted to a budget: keep its schedule and steps
            self.config = dict(self.config, recipe=state["config"]["recipe"], time_budget=state["config"]["time_budget"])
            self.recipe = self.config["recipe"]
            self._rebuild_schedule()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.estimator.load_state_dict(state["estimator"])
        _set_rng_state(state["rng"])
        self.train_loader.load_state_dict(state["loader_generator"])

    # -- one epoch -------------------------------------------------------------------------------
    def loss(self, x, y, regularize: bool):
        amp_dtype = torch.bfloat16  # bfloat16 has float32's range: no loss scaling, no host sync
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=self.opts.amp):
            logits = self.net(x)
        logits = logits.float()
        name = self.recipe.get("loss", "crm")
        if name == "crm":
            pairwise = self.estimator()  # the bound stays in float32, outside autocast
            loss, parts = self.criterion(logits, y, pairwise, regularize=regularize, return_parts=True,
                                          validate=False)  # parts["mean_radius"]: the radii it already formed
        elif name in ("gloro", "emma", "hkr"):
            # the same estimate, in float32 outside autocast; these losses have no CE warm-up (GloRo and EMMA
            # ramp their radius by the epoch instead), so `regularize` does not apply: each step costs the same
            pairwise = self.estimator()
            loss, parts = self.criterion(logits, y, pairwise, return_parts=True, validate=False)
        else:
            with torch.no_grad():
                pairwise = self.estimator()
                radius = certified_radius(logits, y, pairwise, validate=False).mean()
            loss = F.cross_entropy(logits, y)
            parts = {"ce": loss.detach(), "mean_radius": radius}
        return logits, pairwise.detach(), loss, parts

    def train_epoch(self, steps: int | None = None, *, stop_at: float | None = None,
                    step_seconds: float = 0.0) -> dict[str, float]:
        """One epoch of ``steps`` steps (default :attr:`planned_steps`); with ``stop_at`` (a :func:`_now` time) no
        step after the first starts unless it ends, at ``step_seconds`` a step, before ``stop_at``."""
        self.net.train()
        self.train_loader.set_epoch(self.epoch)
        self.criterion.set_epoch(self.epoch)
        regularize = self.criterion.regularize
        steps = self.planned_steps if steps is None else steps
        done = 0
        bar = tqdm(total=steps, desc=f"epoch {self.epoch + 1}/{self.recipe['epochs']}",
                   disable=not self.opts.progress or self.rank != 0, leave=False)
        # Running sums on the device: read every sync_every steps, never per step.
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, correct, radius, n
        first_bad = torch.full((2,), -1.0, dtype=torch.float64, device=self.device)  # step, loss value
        logits_bad = torch.zeros((), dtype=torch.bool, device=self.device)
        for step, (x, y) in enumerate(self.train_loader):
            if step >= steps or (stop_at is not None and step > 0 and _now() + step_seconds > stop_at):
                break
            done += 1
            logits, _, loss, parts = self.loss(x, y, regularize)
            logits_inf = ~torch.isfinite(logits).all()
            fresh = (logits_inf | ~torch.isfinite(loss)) & (first_bad[0] < 0)
            first_bad = torch.where(fresh, torch.stack([first_bad.new_tensor(step), loss.detach().double()]), first_bad)
            logits_bad = torch.where(fresh, logits_inf, logits_bad)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                n = y.shape[0]
                totals += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double(),
                                       parts["mean_radius"].double() * n, totals.new_tensor(n)])
            bar.update()
            if (step + 1) % self.opts.sync_every == 0 or step + 1 == steps:
                t = totals.tolist()  # the one host synchronization every sync_every steps
                self._check(first_bad, logits_bad, bar)
                bar.set_postfix(loss=f"{t[0] / t[3]:.3f}", acc=f"{t[1] / t[3]:.3f}", radius=f"{t[2] / t[3]:.3f}")
        self._check(first_bad, logits_bad, bar)
        bar.close()
        loss_sum, correct, radius_sum, n = totals.tolist()
        n = max(1.0, n)
        return {"train_loss": loss_sum / n, "train_acc": correct / n, "train_radius_est": radius_sum / n,
                "steps": done}

    def _check(self, first_bad: torch.Tensor, logits_bad: torch.Tensor, bar) -> None:
        step, value = first_bad.tolist()
        if step < 0:
            return
        bar.close()
        what = "the network produced non-finite logits" if bool(logits_bad) else f"the loss became {value}"
        raise FloatingPointError(
            f"Training stopped at epoch {self.epoch + 1}, step {int(step) + 1}: {what}. The last good "
            f"checkpoint ({self.ckpt}) is kept: lower the learning rate or lambda and resume.")

    @torch.no_grad()
    def evaluate(self, batches: int | None = None) -> dict[str, float]:
        """Validation accuracy and estimated radii (the first ``batches`` batches only: the budget's measurement)."""
        if self.val_loader is None:
            return {}
        self.model.eval()
        pairwise = self.estimator(n_iter=0)
        correct = n = 0
        radii = []
        for i, (x, y) in enumerate(self.val_loader):
            if batches is not None and i >= batches:
                break
            logits = self.model(x)
            correct += int((logits.argmax(1) == y).sum())
            n += y.shape[0]
            radii.append(certified_radius(logits, y, pairwise, validate=False).cpu())
        r = torch.cat(radii)
        out = {"val_acc": correct / max(1, n), "val_radius_est": float(r.mean())}
        for eps in (self.config.get("certify") or {}).get("eps", []):
            out[f"val_cert_est@{eps}"] = float((r > _fraction(eps)).float().mean())
        return out


def _fraction(eps: str) -> float:
    from lipzoo.meta import parse_eps

    return float(parse_eps(eps))


def _build_model(config: dict) -> nn.Module:
    from lipzoo.models import build_model

    return build_model(config)


def train(config: dict, opts: TrainOptions) -> Path:
    """Run (or resume) a training run; returns the run directory.

    Raises:
        FileExistsError: the run directory has a checkpoint and ``resume`` is False.
        FloatingPointError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    session = opts.started if opts.started is not None else _now()
    run = _Run(config, opts)
    out = run.out
    if run.ckpt.exists() and not opts.resume:
        raise FileExistsError(f"{str(run.ckpt)!r} exists. Pass --resume to continue it, or choose another --out.")
    if opts.resume and run.ckpt.exists():
        run.load()
        logger.info("Resumed %s at epoch %d.", out, run.epoch)
    before = run.seconds  # the earlier sessions' wall clock: a budget caps the whole run
    budget = RunBudget(run, opts.time_budget, session, _now) if opts.time_budget is not None else None
    if run.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(run.config, sort_keys=False))
    while run.epoch < int(run.recipe["epochs"]):
        steps, stop_at = run.planned_steps, None
        if budget is not None:
            steps, stop_at = budget.allot()
            if steps == 0:
                break
        t0 = _now()
        row = {"epoch": run.epoch + 1, "lr": run.optimizer.param_groups[0]["lr"]}
        step_seconds = budget.costs.step(run.recipe, run.epoch) if budget is not None else 0.0
        row.update(run.train_epoch(steps, stop_at=stop_at, step_seconds=step_seconds))
        train_seconds = _now() - t0
        run.scheduler.step()
        run.epoch += 1
        row.update(run.evaluate())
        if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
            raise FloatingPointError(f"Non-finite metrics at epoch {run.epoch}: {row}; last good checkpoint kept.")
        run.seconds = before + (_now() - session)
        run.save()
        row["epoch_seconds"] = _now() - t0
        if budget is not None:
            budget.observe(run.epoch - 1, row["steps"], train_seconds, row["epoch_seconds"])
        if run.rank == 0:
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
        logger.info("%s", _epoch_line(row, int(run.recipe["epochs"])))
    if run.rank == 0:
        finish_run(run, _now() - session)
    if run.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return out


def _epoch_line(row: dict, epochs: int) -> str:
    """One line per epoch: what a run without progress bars shows."""
    cert = [f"{100 * v:.2f} % at {k.split('@', 1)[1]}" for k, v in row.items() if k.startswith("val_cert_est@")]
    acc = f"{100 * row['train_acc']:.2f} %" + (f" (validation {100 * row['val_acc']:.2f} %)" if "val_acc" in row else "")
    return (f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}, accuracy {acc}"
            + (f", certified (estimated) {', '.join(cert)}" if cert else "")
            + f", lr {row['lr']:.3g}, {plural(row['steps'], 'step')}, {row['epoch_seconds']:.1f} s")
