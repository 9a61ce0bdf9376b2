"""Train one peer-library Lipschitz model on MNIST with that library's own documented recipe.

Two peers, each built and trained only through its own public API:

* ``torchlip``: deel-torchlip's multiclass HKR tutorial (docs/source/wasserstein_classification_fashionMNIST.rst,
  "Example 4: HKR multiclass and fooling"), applied to MNIST: a ``torchlip.Sequential`` of SpectralConv2d,
  GroupSort2, ScaledL2NormPool2d, Flatten, SpectralLinear, FrobeniusLinear(disjoint_neurons=True), trained with
  ``HKRMulticlassLoss`` ("robust" setting alpha=0.99, min_margin=0.25) and Adam(lr=1e-3), batch 100, no
  normalisation, no augmentation; at the end the model is ``vanilla_export()``-ed.
* ``orthogonium``: orthogonium's classification demo (scripts/demo_cifar.py and
  docs/notebooks/demo_cifar_classification.ipynb; the library ships no MNIST recipe), applied to MNIST:
  ``PatchBasedExapandedCNN`` from its model factory with AdaptiveOrthoConv2d convolutions, MaxMin, an
  AdaptiveOrthoConv2d "pooling" convolution whose kernel covers the whole feature map, OrthoLinear head,
  ``PrescaledAdditiveResidual`` skips; loss ``LossXent`` with temperature 0.25 and offset
  sqrt(2) * L * eps_target (the demo's formula, L = 1/std of the input normalisation); batch 256; lr 5e-3.
  The demo normalises inputs by mean/std: here that normalisation is the model's first layer (a frozen 1x1
  ``nn.Conv2d``), so the model takes [0, 1] pixels. The trained model is kept as trained, in eval mode, with
  each orthogonally parametrised conv/linear materialised as a plain ``nn.Conv2d``/``nn.Linear`` holding the
  weight it computes (torch cannot pickle parametrised modules; orthogonium's README advises exporting
  ``layer.weight`` to ``torch.nn.Conv2d`` to release a model).

Changes from the documented recipes, to fit a one-thread CPU (see scripts/interop/README.md): fewer epochs;
orthogonium's network is narrower/shallower (dim 32, depth 4, instead of 256, 12), its schedule-free AdamW
(the ``schedulefree`` package, not installed here) is replaced by AdamW with a linear decay of the learning
rate to 0, and its CIFAR augmentations (random resized crop, horizontal flip) are dropped.

Usage::

    OMP_NUM_THREADS=1 python scripts/interop/train_peers.py torchlip --data-root /work/shared/data \\
        --epochs 8 --out runs/peers/torchlip-mnist
    OMP_NUM_THREADS=1 python scripts/interop/train_peers.py orthogonium --data-root /work/shared/data \\
        --epochs 3 --out runs/peers/orthogonium-mnist

Writes to OUT: ``model.pt`` (the exported module, pickled; load with ``torch.load(..., weights_only=False)``),
``state_dict.pt`` (the state dict of that exported module; ``build(lib, exported=True)`` rebuilds a module it
loads into, without pickles), ``trained_state_dict.pt`` (the state dict of the trainable, parametrised
model, for ``build(lib, exported=False)``) and ``meta.json`` (architecture, recipe, wall clock, clean
accuracy, the peer's own certified accuracy).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

EPS_LIST = (0.5, 1.58)

# Defaults per library: the documented recipe's values, except where the module docstring says otherwise.
DEFAULTS = {
    "torchlip": {"batch_size": 100, "lr": 1e-3, "epochs": 8, "alpha": 0.99, "min_margin": 0.25},
    "orthogonium": {"batch_size": 256, "lr": 5e-3, "epochs": 3, "dim": 32, "depth": 4,
                    "target_eps": 1.58, "temperature": 0.25},
}


# --------------------------------------------------------------------------------------------- models
def build_torchlip(exported: bool = False) -> nn.Module:
    """The tutorial's network; ``exported=True`` gives the ``vanilla_export()``-ed module (plain torch
    Conv2d/Linear/LPPool2d/Flatten plus torchlip's GroupSort2), into which ``state_dict.pt`` loads."""
    from deel import torchlip

    model = torchlip.Sequential(
        torchlip.SpectralConv2d(in_channels=1, out_channels=16, kernel_size=(3, 3), padding="same"),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(kernel_size=(2, 2)),
        torchlip.SpectralConv2d(in_channels=16, out_channels=32, kernel_size=(3, 3), padding="same"),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(kernel_size=(2, 2)),
        nn.Flatten(),
        torchlip.SpectralLinear(1568, 64),
        torchlip.GroupSort2(),
        torchlip.FrobeniusLinear(64, 10, bias=True, disjoint_neurons=True),
        k_coef_lip=1.0,
    )
    if exported:
        model.eval()
        model = model.vanilla_export().eval()
    return model


def _normalizer(mean: float, std: float) -> nn.Conv2d:
    """x -> (x - mean) / std as a frozen 1x1 convolution (a plain torch layer; Lipschitz constant 1/std)."""
    conv = nn.Conv2d(1, 1, kernel_size=1, bias=True)
    with torch.no_grad():
        conv.weight.fill_(1.0 / std)
        conv.bias.fill_(-mean / std)
    conv.requires_grad_(False)
    return conv


def build_orthogonium(exported: bool = False, dim: int = 32, depth: int = 4,
                      mean: float = 0.0, std: float = 1.0) -> nn.Module:
    """The demo's PatchBasedExapandedCNN, sized for 1x28x28 inputs, behind the input normalisation.
    ``exported=True`` gives the same network with plain nn.Conv2d/nn.Linear in place of the parametrised
    layers (the form of ``model.pt``), into which ``state_dict.pt`` loads."""
    from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d
    from orthogonium.layers.custom_activations import MaxMin
    from orthogonium.layers.linear import OrthoLinear
    from orthogonium.model_factory.classparam import ClassParam
    from orthogonium.model_factory.models_factory import PatchBasedExapandedCNN

    patch = 2
    side = 28 // patch
    net = PatchBasedExapandedCNN(
        img_shape=(1, 28, 28),
        dim=dim,
        depth=depth,
        kernel_size=3,
        patch_size=patch,
        expand_factor=2,
        groups=None,
        n_classes=10,
        skip=True,
        conv=ClassParam(AdaptiveOrthoConv2d, bias=False, padding="same", padding_mode="zeros"),
        act=ClassParam(MaxMin),
        pool=ClassParam(AdaptiveOrthoConv2d, in_channels=dim, out_channels=dim, groups=dim // 2,
                        bias=False, padding=0, kernel_size=side, stride=side),
        lin=ClassParam(OrthoLinear, bias=False),
        norm=None,
    )
    model = nn.Sequential(_normalizer(mean, std), *net.children())
    if exported:
        model.eval()
        materialize(model)
    return model


def build(lib: str, exported: bool = True, **kw) -> nn.Module:
    """Rebuild the architecture of ``lib`` ('torchlip' or 'orthogonium'); load ``state_dict.pt`` into
    ``build(lib, exported=True, **meta['build_kwargs'])`` and ``trained_state_dict.pt`` into
    ``build(lib, exported=False, **meta['build_kwargs'])``."""
    if lib == "torchlip":
        return build_torchlip(exported)
    if lib == "orthogonium":
        return build_orthogonium(exported, **kw)
    raise ValueError(lib)


def _plain(m: nn.Module) -> nn.Module:
    w = m.weight.detach().clone()
    if isinstance(m, nn.Conv2d):
        p = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                      dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                      padding_mode=m.padding_mode)
    else:
        p = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    with torch.no_grad():
        p.weight.copy_(w)
        if m.bias is not None:
            p.bias.copy_(m.bias.detach())
    return p.eval()


def materialize(module: nn.Module) -> nn.Module:
    """In place: every nn.Conv2d / nn.Linear (parametrised or not) becomes a plain one with its current
    weight (computed once, here, in the module's current mode)."""
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, _plain(child))
        else:
            materialize(child)
    return module


# ----------------------------------------------------------------------------------------------- data
def load_mnist(root: str):
    d = np.load(Path(root) / "mnist.npz")
    def x(a): return torch.from_numpy(a.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    def y(a): return torch.from_numpy(a.astype(np.int64))
    return x(d["x_train"]), y(d["y_train"]), x(d["x_test"]), y(d["y_test"])


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, bs: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + bs]).float() for i in range(0, len(x), bs)])


def certify(logits: torch.Tensor, y: torch.Tensor, factor: float, lip: float) -> dict:
    """Certified iff correctly classified and top - runner-up > factor * eps * lip (float32)."""
    top2 = logits.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    correct = logits.argmax(1) == y
    return {f"{eps:g}": float((correct & (margin > factor * eps * lip)).float().mean())
            for eps in EPS_LIST}


# -------------------------------------------------------------------------------------------- training
def train(args) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = load_mnist(args.data_root)
    if args.train_limit:
        xtr, ytr = xtr[:args.train_limit], ytr[:args.train_limit]
    d = DEFAULTS[args.lib]
    bs = args.batch_size or d["batch_size"]
    lr = args.lr or d["lr"]
    epochs = args.epochs or d["epochs"]
    steps_per_epoch = math.ceil(len(xtr) / bs)
    build_kwargs: dict = {}

    if args.lib == "torchlip":
        from deel import torchlip
        model = build_torchlip()
        hkr = torchlip.HKRMulticlassLoss(alpha=d["alpha"], min_margin=d["min_margin"])
        kr = torchlip.KRMulticlassLoss()
        def loss_fn(o, t): return hkr(o, nn.functional.one_hot(t, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        scheduler = None
        recipe = {
            "source": "deel-torchlip docs/source/wasserstein_classification_fashionMNIST.rst "
                      "(Example 4: HKR multiclass), applied to MNIST",
            "loss": "deel.torchlip.HKRMulticlassLoss (one-hot targets)",
            "loss_params": {"alpha": d["alpha"], "min_margin": d["min_margin"]},
            "optimizer": "torch.optim.Adam", "lr": lr, "lr_schedule": "constant",
            "epochs": epochs, "batch_size": bs, "input_normalization": None, "augmentation": None,
        }
        lip, their_factor = 1.0, 2.0
        rule = ("certified iff margin > 2 * eps * K, K = 1: the tutorial's certificate (top1 - top2) / 2, "
                "'The factor is 2.0 when using disjoint_neurons==True' (the head FrobeniusLinear normalises "
                "each output neuron separately, so each logit is 1-Lipschitz, not the logit vector)")
    else:
        from orthogonium.losses import LossXent
        mean, std = float(xtr.mean()), float(xtr.std())
        build_kwargs = {"dim": args.dim or d["dim"], "depth": args.depth or d["depth"],
                        "mean": mean, "std": std}
        model = build_orthogonium(**build_kwargs)
        lip = 1.0 / std
        target = args.target_eps or d["target_eps"]
        offset = math.sqrt(2) * lip * target
        loss_fn = LossXent(n_classes=10, offset=offset, temperature=d["temperature"])
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                      weight_decay=0.0)
        total = epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total))
        recipe = {
            "source": "orthogonium scripts/demo_cifar.py / docs/notebooks/demo_cifar_classification.ipynb "
                      "('robust' setting), applied to MNIST",
            "loss": "orthogonium.losses.LossXent",
            "loss_params": {"n_classes": 10, "offset": offset, "temperature": d["temperature"],
                            "offset_formula": "sqrt(2) * (1/std) * target_eps", "target_eps": target},
            "optimizer": "torch.optim.AdamW (replaces schedulefree.AdamWScheduleFree)", "lr": lr,
            "weight_decay": 0.0, "lr_schedule": "linear decay to 0 over all steps",
            "epochs": epochs, "batch_size": bs,
            "input_normalization": {"mean": mean, "std": std,
                                    "where": "first layer of the model (frozen 1x1 nn.Conv2d)"},
            "augmentation": None,
        }
        their_factor = math.sqrt(2)
        rule = ("certified iff margin > sqrt(2) * eps * K, K = 1/std (orthogonium.losses.VRA with "
                "last_layer_type='global' and L = 1/std of the input normalisation, as in the demo)")

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"[{args.lib}] {n_params} trainable parameters, {len(xtr)} train images, batch {bs}, "
          f"{steps_per_epoch} steps/epoch, {epochs} epochs, lr {lr}", flush=True)
    print(model, flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        te = time.perf_counter()
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tot_loss, tot_correct, seen = 0.0, 0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * bs:(s + 1) * bs]
            xb, yb = xtr[idx], ytr[idx]
            optimizer.zero_grad(set_to_none=True)
            out_b = model(xb)
            loss = loss_fn(out_b, yb)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            tot_loss += float(loss.detach()) * len(idx)
            tot_correct += int((out_b.detach().argmax(1) == yb).sum())
            seen += len(idx)
        train_time = time.perf_counter() - te
        test_logits = logits_of(model, xte)
        rec = {"epoch": epoch + 1, "loss": tot_loss / seen, "train_acc": tot_correct / seen,
               "test_acc": float((test_logits.argmax(1) == yte).float().mean()),
               "epoch_train_s": round(train_time, 1),
               "elapsed_s": round(time.perf_counter() - t0, 1)}
        if args.lib == "torchlip":
            rec["test_KR"] = float(kr(test_logits, nn.functional.one_hot(yte, 10)))
        history.append(rec)
        print(f"epoch {epoch + 1}/{epochs} " + " ".join(
            f"{k}={v:.4f}" if isinstance(v, float) and not k.endswith("_s") else f"{k}={v}"
            for k, v in rec.items() if k != "epoch"), flush=True)
    wall = time.perf_counter() - t0

    # ---------------------------------------------------------------------------------- export
    model.eval()
    trained_logits = logits_of(model, xte)
    torch.save(model.state_dict(), out / "trained_state_dict.pt")
    if args.lib == "torchlip":
        exported = model.vanilla_export().eval()
    else:
        exported = materialize(model).eval()
    logits = logits_of(exported, xte)
    export_diff = float((logits - trained_logits).abs().max())
    torch.save(exported, out / "model.pt")
    torch.save(exported.state_dict(), out / "state_dict.pt")

    # the rebuilt architecture must load state_dict.pt and give the same logits
    rebuilt = build(args.lib, exported=True, **build_kwargs)
    rebuilt.load_state_dict(torch.load(out / "state_dict.pt"))
    rebuild_diff = float((logits_of(rebuilt, xte) - logits).abs().max())
    reloaded = torch.load(out / "model.pt", weights_only=False)
    reload_diff = float((logits_of(reloaded, xte) - logits).abs().max())

    clean = float((logits.argmax(1) == yte).float().mean())
    their = certify(logits, yte, their_factor, lip)
    sqrt2 = certify(logits, yte, math.sqrt(2), lip)
    head = [m for m in exported.modules() if isinstance(m, nn.Linear)][-1].weight.detach().double()
    pair = torch.cdist(head, head)
    head_diag = {
        "head_spectral_norm": float(torch.linalg.matrix_norm(head, ord=2)),
        "head_row_norms_min_max": [float(head.norm(dim=1).min()), float(head.norm(dim=1).max())],
        "head_max_pairwise_row_distance": float(pair.max()),
    }

    def arch(m: nn.Module) -> list:
        rows = []
        for name, mod in m.named_modules():
            if name and not list(mod.children()):
                rows.append({"name": name, "class": f"{type(mod).__module__}.{type(mod).__qualname__}",
                             "repr": repr(mod)})
            elif name:
                rows.append({"name": name, "class": f"{type(mod).__module__}.{type(mod).__qualname__}",
                             "container": True})
        return rows

    meta = {
        "library": args.lib,
        "library_version": importlib.metadata.version("deel-torchlip" if args.lib == "torchlip"
                                                      else "orthogonium"),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "seed": args.seed,
        "data": str(Path(args.data_root) / "mnist.npz"),
        "input": "1x28x28, pixels in [0, 1] (uint8 / 255)",
        "build_kwargs": build_kwargs,
        "architecture": arch(exported),
        "architecture_repr": repr(exported),
        "trainable_parameters": n_params,
        "recipe": recipe,
        "history": history,
        "train_wall_clock_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "test_clean_accuracy": clean,
        "declared_lipschitz_constant_K": lip,
        "their_rule": rule,
        "their_certified_accuracy": their,
        "sqrt2_rule_certified_accuracy": sqrt2,
        "sqrt2_rule_note": ("certified iff margin > sqrt(2) * eps * K; for torchlip's disjoint-neuron head this "
                            "is sound only if every pair of head rows is within sqrt(2) (see head_diagnostics)"
                            if args.lib == "torchlip" else "same as their_rule"),
        "head_diagnostics": head_diag,
        "export_check": {"max_abs_logit_diff_trained_vs_exported": export_diff,
                         "max_abs_logit_diff_rebuilt_from_state_dict": rebuild_diff,
                         "max_abs_logit_diff_reloaded_model_pt": reload_diff},
        "eval": "float32, full MNIST test set (10000), batches of 1000",
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wall clock {wall:.1f}s  clean {clean:.4f}  their rule {their}  sqrt2 rule {sqrt2}  "
          f"head {head_diag}  export diff {export_diff:.2e} rebuild diff {rebuild_diff:.2e} "
          f"reload diff {reload_diff:.2e}", flush=True)
    print(repr(exported), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("lib", choices=sorted(DEFAULTS))
    p.add_argument("--data-root", required=True, help="folder holding mnist.npz (Keras layout)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--dim", type=int, default=None, help="orthogonium: width (default 32)")
    p.add_argument("--depth", type=int, default=None, help="orthogonium: residual blocks (default 4)")
    p.add_argument("--target-eps", type=float, default=None,
                   help="orthogonium: radius the LossXent offset aims for (default 1.58)")
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training images (smoke tests)")
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
