"""``lipzoo train``: CRM (or plain cross-entropy) training with exact resume.

One run directory holds ``metrics.jsonl`` (one JSON line per epoch), ``checkpoint.pt`` (the state
after the last *good* epoch: model, optimizer, scheduler, power-iteration vectors, RNG states),
``config.yaml`` (the resolved recipe) and, at the end, ``final/`` (a Hub-format checkpoint).
Re-running the same command with ``resume=True`` continues bit-for-bit where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from lipzoo.bounds.estimator import LipLTEstimator
from lipzoo.bounds.radius import certified_radius
from lipzoo.losses import crm_loss

logger = logging.getLogger(__name__)

__all__ = ["TrainOptions", "train", "exponential_decay"]


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


def exponential_decay(epoch: int, *, epochs: int, start_epoch: int, lr: float, final_lr: float) -> float:
    """Learning-rate factor: constant until ``start_epoch``, then exponential down to ``final_lr``."""
    if epoch < start_epoch or epochs <= start_epoch:
        return 1.0
    frac = min(1.0, (epoch - start_epoch) / max(1, epochs - 1 - start_epoch))
    return (final_lr / lr) ** frac


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def _loaders(config: dict, opts: TrainOptions, distributed: bool):
    from lipzoo.data import load_dataset, make_loaders

    recipe = config["recipe"]
    train_set = load_dataset(config["dataset"], split="train", root=opts.data_root)
    loaders = make_loaders(train_set, int(recipe["batch_size"]), validation_split=float(recipe.get("validation_split", 0)),
                           augmentation=recipe.get("augmentation") or [], seed=opts.seed,
                           num_workers=opts.num_workers, distributed=distributed)
    return loaders["train"], loaders.get("val")


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
        self.model = _build_entry(config).to(self.device)
        self.input_shape = tuple(config["input_shape"])
        self.estimator = LipLTEstimator(self.model, self.input_shape, n_iter=int(self.recipe.get("power_iterations", 5)),
                                        seed=opts.seed)
        self.optimizer = _make_optimizer(self.model, self.recipe)
        self.scheduler = _make_scheduler(self.optimizer, self.recipe)
        self.epoch = 0
        self.net = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.train_loader, self.val_loader = _loaders(config, opts, self.world > 1)
        self.out = Path(opts.out_dir)
        self.ckpt = self.out / "checkpoint.pt"
        self.use_scaler = opts.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)

    # -- checkpoints -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        gen = getattr(self.train_loader, "generator", None)
        return {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "estimator": self.estimator.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": _rng_state(),
                "loader_generator": gen.get_state() if gen is not None else None, "config": self.config}

    def save(self) -> None:
        if self.rank != 0:
            return
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, self.ckpt)  # atomic: a crash never leaves a half-written checkpoint

    def load(self) -> None:
        try:
            state = torch.load(self.ckpt, map_location=self.device, weights_only=False)
        except Exception as err:  # truncated or foreign file
            raise ValueError(f"Cannot read checkpoint {str(self.ckpt)!r}: {err}. Delete it to start over.") from err
        if state.get("config", {}).get("architecture") != self.config["architecture"]:
            raise ValueError(f"Checkpoint {str(self.ckpt)!r} belongs to architecture "
                             f"{state.get('config', {}).get('architecture')!r}, not {self.config['architecture']!r}.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.estimator.load_state_dict(state["estimator"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        gen = getattr(self.train_loader, "generator", None)
        if gen is not None and state.get("loader_generator") is not None:
            gen.set_state(state["loader_generator"])
        self.epoch = int(state["epoch"])

    # -- one epoch -------------------------------------------------------------------------------
    def loss(self, x, y, regularize: bool):
        crm = self.recipe.get("crm") or {}
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=self.opts.amp):
            logits = self.net(x)
        logits = logits.float()
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError("the network produced non-finite logits")
        if self.recipe.get("loss", "crm") == "crm":
            pairwise = self.estimator()  # the bound stays in float32, outside autocast
            loss, parts = crm_loss(logits, y, pairwise, t=float(crm.get("t", 5.0)), lam=float(crm.get("lam", 15.0)),
                                   r0=crm.get("r0"), g=crm.get("g", "linear"), regularize=regularize,
                                   return_parts=True)
        else:
            with torch.no_grad():
                pairwise = self.estimator()
            loss = F.cross_entropy(logits, y)
            parts = {"ce": loss.detach()}
        return logits, pairwise.detach(), loss, parts

    def train_epoch(self) -> dict[str, float]:
        self.net.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        warmup = int((self.recipe.get("crm") or {}).get("warmup_epochs", 0))
        regularize = self.epoch >= warmup
        totals = {"loss": 0.0, "correct": 0, "n": 0, "radius": 0.0}
        steps = len(self.train_loader)
        if self.opts.max_steps_per_epoch:
            steps = min(steps, self.opts.max_steps_per_epoch)
        bar = tqdm(total=steps, desc=f"epoch {self.epoch + 1}/{self.recipe['epochs']}",
                   disable=not self.opts.progress or self.rank != 0, leave=False)
        for step, (x, y) in enumerate(self.train_loader):
            if step >= steps:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            try:
                logits, pairwise, loss, _ = self.loss(x, y, regularize)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the loss became {loss.item()}")
            except FloatingPointError as err:
                bar.close()
                raise FloatingPointError(
                    f"Training stopped at epoch {self.epoch + 1}, step {step + 1}: {err}. The last good "
                    f"checkpoint ({self.ckpt}) is kept: lower the learning rate or lambda and resume.") from err
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            with torch.no_grad():
                radius = certified_radius(logits.detach(), y, pairwise)
            n = y.shape[0]
            totals["loss"] += loss.item() * n
            totals["correct"] += int((logits.argmax(1) == y).sum())
            totals["radius"] += float(radius.sum())
            totals["n"] += n
            bar.set_postfix(loss=f"{totals['loss'] / totals['n']:.3f}", acc=f"{totals['correct'] / totals['n']:.3f}",
                            radius=f"{totals['radius'] / totals['n']:.3f}")
            bar.update()
        bar.close()
        n = max(1, totals["n"])
        return {"train_loss": totals["loss"] / n, "train_acc": totals["correct"] / n,
                "train_radius_est": totals["radius"] / n}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        self.model.eval()
        pairwise = self.estimator(n_iter=0)
        correct = n = 0
        radii = []
        for x, y in self.val_loader:
            x, y = x.to(self.device), y.to(self.device)
            logits = self.model(x)
            correct += int((logits.argmax(1) == y).sum())
            n += y.shape[0]
            radii.append(certified_radius(logits, y, pairwise).cpu())
        r = torch.cat(radii)
        out = {"val_acc": correct / max(1, n), "val_radius_est": float(r.mean())}
        for eps in (self.config.get("certify") or {}).get("eps", []):
            out[f"val_cert_est@{eps}"] = float((r > _fraction(eps)).float().mean())
        return out


def _fraction(eps: str) -> float:
    from lipzoo.models.zoo import parse_eps

    return float(parse_eps(eps))


def _build_entry(config: dict) -> nn.Module:
    from lipzoo.models.registry import build_entry

    return build_entry(config)


def train(config: dict, opts: TrainOptions) -> Path:
    """Run (or resume) a training run; returns the run directory.

    Raises:
        FileExistsError: the run directory has a checkpoint and ``resume`` is False.
        FloatingPointError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    run = _Run(config, opts)
    out = run.out
    if run.ckpt.exists() and not opts.resume:
        raise FileExistsError(f"{str(run.ckpt)!r} exists. Pass --resume to continue it, or choose another --out.")
    if opts.resume and run.ckpt.exists():
        run.load()
        logger.info("Resumed %s at epoch %d.", out, run.epoch)
    if run.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    epochs = int(config["recipe"]["epochs"])
    start = time.time()
    while run.epoch < epochs:
        t0 = time.time()
        row = {"epoch": run.epoch + 1, "lr": run.optimizer.param_groups[0]["lr"]}
        row.update(run.train_epoch())
        run.scheduler.step()
        run.epoch += 1
        row.update(run.evaluate())
        row["epoch_seconds"] = time.time() - t0
        if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
            raise FloatingPointError(f"Non-finite metrics at epoch {run.epoch}: {row}; last good checkpoint kept.")
        run.save()
        if run.rank == 0:
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            logger.info("epoch %d: %s", run.epoch, row)
    if run.rank == 0:
        _finish(run, time.time() - start)
    if run.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return out


def _finish(run: _Run, seconds: float) -> None:
    from lipzoo.hub import save_pretrained

    config = dict(run.config)
    history = [json.loads(line) for line in (run.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_info = {"epochs_trained": run.epoch, "seconds_this_session": round(seconds, 1),
                  "seconds_total": round(sum(r.get("epoch_seconds", 0) for r in history), 1),
                  "hardware": _hardware(run.device), "last_epoch": history[-1] if history else {}}
    config["training"] = train_info
    config["eps"] = list((config.get("certify") or {}).get("eps", []))
    save_pretrained(run.model.cpu(), run.out / "final", config=config)
    run.model.to(run.device)


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
