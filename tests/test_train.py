"""``lipzoo train`` end to end on a tiny synthetic dataset: outputs, exact resume, NaN stop, errors, DDP.

Everything runs on an 8x8 one-channel dataset (96 train / 32 test images) with a two-convolution
architecture registered by the ``tiny_arch`` fixture in a scratch copy of the registry, so that the
rest of the test suite (which iterates over the registry) never sees it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import lipzoo
from lipzoo.cli import main
from conftest import interrupted_in_epoch, register_tiny, tiny_builder
from lipzoo.train import apply_overrides, exponential_decay, resolve_config
from lipzoo.train import budget
from lipzoo.train import trainer as trainer_mod

ARCH = "train-tiny"
METRIC_KEYS = {"epoch", "lr", "train_loss", "train_acc", "train_radius_est", "val_acc", "val_radius_est",
               "val_cert_est@1/255", "val_cert_est@0.5", "epoch_seconds", "steps"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_arch(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register ``train-tiny`` in a scratch registry (restored after the test; no timm hook)."""
    return register_tiny(monkeypatch, ARCH, 10)


def _entry(**recipe) -> dict:
    """A zoo entry for the tiny architecture; ``recipe`` keys replace the defaults."""
    base = {"loss": "crm", "epochs": 3, "batch_size": 24,
            "optimizer": {"name": "adam", "lr": 1.0e-2, "betas": [0.9, 0.999], "eps": 1.0e-7},
            "scheduler": {"name": "exponential", "start_epoch": 1, "final_lr": 1.0e-4},
            "augmentation": ["hflip"],
            "crm": {"t": 5.0, "lam": 1.0, "r0": 2.0, "g": "linear", "warmup_epochs": 1},
            "power_iterations": 2, "validation_split": 0.25}
    base.update(recipe)
    # dataset "mnist" resolves to <--data-root>/mnist.npz: the zoo schema only accepts dataset names.
    return {"name": "train-tiny-test", "architecture": ARCH, "model_args": {}, "num_classes": 10,
            "input_shape": [1, 8, 8], "dataset": "mnist", "normalization": {"mean": [0.5], "std": [0.25]},
            "recipe": base, "certify": {"eps": ["1/255", "0.5"]}, "weights": None, "metrics": None}


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A folder with a Keras-layout ``mnist.npz``: 96 train / 32 test random 8x8 images, 4 classes."""
    root = tmp_path / "data"
    root.mkdir()
    g = np.random.default_rng(0)
    np.savez(root / "mnist.npz",
             x_train=g.integers(0, 256, (96, 8, 8), dtype=np.uint8), y_train=g.integers(0, 4, 96).astype(np.uint8),
             x_test=g.integers(0, 256, (32, 8, 8), dtype=np.uint8), y_test=g.integers(0, 4, 32).astype(np.uint8))
    return root


@pytest.fixture
def recipe_file(tmp_path: Path, tiny_arch: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_entry(), sort_keys=False))
    return path


def _train(recipe: Path, out: Path, data_root: Path, *extra: str) -> int:
    return main(["train", str(recipe), *extra, "--out", str(out), "--data-root", str(data_root), "--device", "cpu",
                 "--seed", "0", "--threads", "1", "--no-progress"])


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _ckpt(run: Path) -> dict:
    # weights_only: the checkpoint holds tensors and plain containers only, never pickled objects
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)


def _assert_same(a, b, where: str = "state") -> None:
    """Exact (bitwise for tensors) equality of nested checkpoint state."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]


# -- a full run -----------------------------------------------------------------------------------
def test_train_writes_metrics_checkpoint_and_loadable_final(recipe_file, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(recipe_file, out, data_root, "recipe.epochs=2") == 0
    assert f"{out}/final" in capsys.readouterr().out

    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert set(r) == METRIC_KEYS
        assert all(math.isfinite(v) for v in r.values())
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1 and r["train_radius_est"] >= 0
    # the exponential schedule starts at epoch index 1 = the last of 2 epochs: no decay yet
    assert [r["lr"] for r in rows] == pytest.approx([1e-2, 1e-2])
    assert yaml.safe_load((out / "config.yaml").read_text())["recipe"]["epochs"] == 2
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the run's picture

    final = out / "final"
    assert {p.name for p in final.iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    config = json.loads((final / "config.json").read_text())
    assert config["architecture"] == ARCH and config["eps"] == ["1/255", "0.5"]
    assert config["training"]["epochs_trained"] == 2

    state = _ckpt(out)
    assert state["epoch"] == 2
    trained = tiny_builder(ARCH, 10)()
    trained.load_state_dict(state["model"])
    loaded = lipzoo.load(final)
    _assert_same(loaded.state_dict(), trained.state_dict())
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), trained.eval()(x))
    # training moved the weights away from the seed-0 initialisation
    torch.manual_seed(0)
    assert not torch.equal(tiny_builder(ARCH, 10)()[1].weight, trained[1].weight)


def test_recipe_power_iteration_dtype_reaches_the_estimator(recipe_file, data_root, tmp_path, monkeypatch):
    import lipzoo.train.trainer as trainer_module

    seen = []
    real = trainer_module.LipLTEstimator

    def spy(*args, **kwargs):
        seen.append(kwargs.get("iteration_dtype"))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "LipLTEstimator", spy)
    out = tmp_path / "bf16"
    assert _train(recipe_file, out, data_root, "recipe.epochs=2", "recipe.power_iteration_dtype=bfloat16") == 0
    assert seen == [torch.bfloat16]
    assert _rows(out)[-1]["epoch"] == 2
    assert json.loads((out / "final" / "config.json").read_text())["recipe"]["power_iteration_dtype"] == "bfloat16"
    assert _train(recipe_file, tmp_path / "default", data_root, "recipe.epochs=2") == 0
    assert seen[-1] is None  # the default: the model's own precision
    assert "power_iteration_dtype" not in json.loads((tmp_path / "default" / "final" / "config.json").read_text())["recipe"]


def test_training_curves_read_and_refuse(tmp_path):
    from lipzoo.train.curves import plot_training_curves, read_metrics

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_acc": 0.5, "val_acc": 0.4, "val_cert_est@0.5": 0.1}\n')
    assert read_metrics(run) == [{"epoch": 1, "train_acc": 0.5, "val_acc": 0.4, "val_cert_est@0.5": 0.1}]
    assert plot_training_curves({"a": run}, tmp_path / "c.png").stat().st_size > 1000
    (run / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON line"):
        read_metrics(run)
    (run / "metrics.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no epochs"):
        read_metrics(run / "metrics.jsonl")


def test_resume_is_bit_for_bit(recipe_file, data_root, tmp_path, monkeypatch):
    run_a, run_b, run_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _train(recipe_file, run_a, data_root) == 0
    # exponential decay from epoch index 1 reaches final_lr at the last epoch
    assert [r["lr"] for r in _rows(run_a)] == pytest.approx([1e-2, 1e-2, 1e-4])

    # Run B: interrupted in the middle of epoch 3 (after one optimizer step changed the weights,
    # the estimator vectors and the RNG), then resumed from the epoch-2 checkpoint.
    with interrupted_in_epoch(monkeypatch):
        _train(recipe_file, run_b, data_root)
    assert _ckpt(run_b)["epoch"] == 2 and len(_rows(run_b)) == 2
    assert not (run_b / "final").exists()
    shutil.copytree(run_b, run_c)

    assert _train(recipe_file, run_b, data_root, "--resume") == 0
    a, b = _ckpt(run_a), _ckpt(run_b)
    assert a["epoch"] == b["epoch"] == 3
    for key in ("model", "estimator", "optimizer", "scheduler", "rng", "loader_generator"):
        _assert_same(a[key], b[key], key)
    assert _without_time(_rows(run_a)) == _without_time(_rows(run_b))
    _assert_same(load_file(run_a / "final" / "model.safetensors"), load_file(run_b / "final" / "model.safetensors"))
    # the same bytes too, so the sha256 in config.json is reproducible
    sha = [json.loads((run / "final" / "config.json").read_text())["sha256"] for run in (run_a, run_b)]
    assert sha[0] == sha[1]

    # The test can fail: the same resume without restoring the loader's generators (shuffling and
    # the hflip draws on the device) diverges.
    monkeypatch.setattr(lipzoo.data.DeviceLoader, "load_state_dict", lambda self, state: None)
    assert _train(recipe_file, run_c, data_root, "--resume") == 0
    assert not torch.equal(_ckpt(run_c)["model"]["1.weight"], a["model"]["1.weight"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(recipe_file, data_root, tmp_path, monkeypatch, capsys):
    original_loss = trainer_mod._Run.loss
    saved = {}

    def nan_at_epoch_2(self, x, y, regularize):
        logits, pairwise, loss, parts = original_loss(self, x, y, regularize)
        return logits, pairwise, loss * float("nan") if self.epoch == 1 else loss, parts

    def spy_save(self):
        original_save(self)
        saved[self.epoch] = copy.deepcopy(self.model.state_dict())

    original_save = trainer_mod._Run.save
    monkeypatch.setattr(trainer_mod._Run, "loss", nan_at_epoch_2)
    monkeypatch.setattr(trainer_mod._Run, "save", spy_save)
    out = tmp_path / "run"
    assert _train(recipe_file, out, data_root) == 2
    err = capsys.readouterr().err
    assert "lipzoo train: error: Training stopped at epoch 2, step 1: the loss became nan" in err
    assert "checkpoint" in err

    assert list(saved) == [1] and len(_rows(out)) == 1
    state = _ckpt(out)
    assert state["epoch"] == 1
    _assert_same(state["model"], saved[1], "model")
    fresh = tiny_builder(ARCH, 10)()
    fresh.load_state_dict(state["model"])  # strict: the file is complete
    assert torch.isfinite(torch.cat([p.flatten() for p in fresh.parameters()])).all()

    # the library call raises the error itself
    config = resolve_config(str(recipe_file), [])
    opts = trainer_mod.TrainOptions(out_dir=str(tmp_path / "lib"), data_root=str(data_root), device="cpu",
                                    progress=False, max_steps_per_epoch=1)
    with pytest.raises(FloatingPointError, match="Training stopped at epoch 2, step 1: the loss became nan"):
        trainer_mod.train(config, opts)
    # non-finite logits stop the run before the loss is computed
    monkeypatch.setattr(trainer_mod._Run, "loss", original_loss)
    real_build = trainer_mod._build_model

    def nan_model(cfg):
        model = real_build(cfg)
        with torch.no_grad():
            model[-1].bias.fill_(float("nan"))
        return model

    monkeypatch.setattr(trainer_mod, "_build_model", nan_model)
    opts.out_dir = str(tmp_path / "lib1")
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1: the network produced non-finite logits"):
        trainer_mod.train(config, opts)
    monkeypatch.setattr(trainer_mod, "_build_model", real_build)
    # a non-finite validation metric stops the run too, before its checkpoint is written
    monkeypatch.setattr(trainer_mod._Run, "evaluate", lambda self: {"val_acc": float("nan")})
    opts.out_dir = str(tmp_path / "lib2")
    with pytest.raises(FloatingPointError, match=r"Non-finite metrics at epoch 1: .*'val_acc': nan"):
        trainer_mod.train(config, opts)
    assert not (tmp_path / "lib2" / "checkpoint.pt").exists()


# -- configuration and input errors -------------------------------------------------------------
def test_overrides_set_values_and_reject_unknown_keys(recipe_file):
    config = resolve_config(str(recipe_file), ["recipe.epochs=7", "recipe.crm.lam=0.5", "recipe.augmentation=[]"])
    assert config["recipe"]["epochs"] == 7 and config["recipe"]["crm"]["lam"] == 0.5
    assert config["recipe"]["augmentation"] == []
    base = _entry()
    assert apply_overrides(base, ["recipe.batch_size=8"])["recipe"]["batch_size"] == 8
    assert base["recipe"]["batch_size"] == 24  # the input is not modified
    with pytest.raises(ValueError, match=r"Unknown config key 'recipe.crm.lamda': 'lamda' is not in recipe.crm"):
        apply_overrides(base, ["recipe.crm.lamda=1"])
    with pytest.raises(ValueError, match=r"Unknown config key 'recipe.epochs.x'.*not in recipe.epochs"):
        apply_overrides(base, ["recipe.epochs.x=1"])
    with pytest.raises(ValueError, match=r"Override 'recipe.epochs' must look like key=value"):
        apply_overrides(base, ["recipe.epochs"])
    with pytest.raises(ValueError, match=r"recipe.epochs: expected an int"):
        resolve_config(str(recipe_file), ["recipe.epochs=two"])
    # plain YAML reads 1e-4 as a string; an override means the number
    lrs = apply_overrides(base, ["recipe.optimizer.lr=1e-4", "recipe.scheduler.final_lr=-2.5E+1", "name=1e-4x"])
    assert lrs["recipe"]["optimizer"]["lr"] == 1e-4 and lrs["recipe"]["scheduler"]["final_lr"] == -25.0
    assert lrs["name"] == "1e-4x"


def test_recipe_epochs_alone_implies_the_fields_counted_in_epochs(recipe_file, caplog):
    """The issue: `recipe.epochs=1` alone was rejected until two more overrides were added, one error at a time."""
    with caplog.at_level("INFO", logger="lipzoo.train"):
        one = resolve_config("crm-mnist-4c3f", ["recipe.epochs=1"])["recipe"]
    assert (one["epochs"], one["scheduler"]["start_epoch"], one["crm"]["warmup_epochs"]) == (1, 0, 0)
    assert "recipe.scheduler.start_epoch 25 -> 0, recipe.crm.warmup_epochs 10 -> 0, scaled with it" in caplog.text
    forty = resolve_config("crm-mnist-4c3f", ["recipe.epochs=40"])["recipe"]
    assert (forty["scheduler"]["start_epoch"], forty["crm"]["warmup_epochs"]) == (3, 1)  # 25/10, 10/10 rounded up
    # a field given too is kept: the other one still scales
    kept = resolve_config("crm-mnist-4c3f", ["recipe.crm.warmup_epochs=0", "recipe.epochs=40"])["recipe"]
    assert (kept["scheduler"]["start_epoch"], kept["crm"]["warmup_epochs"]) == (3, 0)
    longer = resolve_config(str(recipe_file), ["recipe.epochs=30"])["recipe"]  # 3 -> 30 epochs: start 1 -> 10
    assert (longer["scheduler"]["start_epoch"], longer["crm"]["warmup_epochs"]) == (10, 10)


def test_conflicting_overrides_are_listed_at_once(recipe_file):
    with pytest.raises(ValueError) as info:
        resolve_config("crm-mnist-4c3f", ["recipe.epochs=1", "recipe.scheduler.start_epoch=5",
                                          "recipe.crm.warmup_epochs=9", "recipe.batch_size=0"])
    text = str(info.value)
    assert text.startswith("recipe: 3 problems:")
    assert "recipe.scheduler.start_epoch: expected an int < 1 (the decay starts within recipe.epochs=1), got 5; " \
           "set it to at most 0, e.g. recipe.scheduler.start_epoch=0." in text
    assert "recipe.crm.warmup_epochs: expected an int <= 1 (the warm-up fits in recipe.epochs=1), got 9; set it to " \
           "at most 1, e.g. recipe.crm.warmup_epochs=0." in text
    assert "recipe.batch_size: expected an int >= 1, got 0" in text
    # every unknown key too, in one error
    with pytest.raises(ValueError, match=r"(?s)2 overrides are wrong:.*'recipe\.epoch'.*'recipe\.crm\.lamda'"):
        resolve_config(str(recipe_file), ["recipe.epoch=2", "recipe.crm.lamda=1"])
    with pytest.raises(ValueError, match=r"Override 'recipe.augmentation=\[hflip': the value is not valid YAML"):
        resolve_config(str(recipe_file), ["recipe.augmentation=[hflip"])


def test_overrides_after_options_reach_the_run(recipe_file, data_root, tmp_path):
    out = tmp_path / "run"  # `--max-steps 1 recipe.epochs=1`: the issue's order
    assert main(["train", str(recipe_file), "--max-steps", "1", "recipe.epochs=1", "--out", str(out), "--data-root",
                 str(data_root), "--device", "cpu", "--threads", "1", "--no-progress", "recipe.crm.lam=0.5"]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["recipe"]["epochs"] == 1 and config["recipe"]["crm"]["lam"] == 0.5
    assert [r["steps"] for r in _rows(out)] == [1]


def test_cli_reports_bad_overrides(recipe_file, data_root, tmp_path, capsys):
    assert _train(recipe_file, tmp_path / "r1", data_root, "recipe.epoch=2") == 2
    err = capsys.readouterr().err
    assert "Unknown config key 'recipe.epoch'" in err and "'epochs'" in err
    assert _train(recipe_file, tmp_path / "r2", data_root, "recipe.epochs") == 2
    assert "must look like key=value" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_config_file_errors(tmp_path, tiny_arch, capsys):
    with pytest.raises(FileNotFoundError, match=r"Config file '.*nope.yaml' does not exist"):
        resolve_config(str(tmp_path / "nope.yaml"))
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: [epochs: 3\n  loss: {crm\n")
    with pytest.raises(ValueError, match=r"bad.yaml' is not valid YAML"):
        resolve_config(str(bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"must hold a mapping, got list"):
        resolve_config(str(listed))
    typo = tmp_path / "typo.yaml"
    entry = _entry()
    entry["recipe"]["epoch"] = entry["recipe"].pop("epochs")
    typo.write_text(yaml.safe_dump(entry))
    with pytest.raises(ValueError, match=r"recipe: unknown key\(s\) \['epoch'\]"):
        resolve_config(str(typo))
    with pytest.raises(ValueError, match=r"Unknown zoo entry 'crm-mnist-4c3'. Did you mean 'crm-mnist-4c3f'"):
        resolve_config("crm-mnist-4c3")


def test_existing_checkpoint_needs_resume(recipe_file, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    config = resolve_config(str(recipe_file))
    opts = trainer_mod.TrainOptions(out_dir=str(out), data_root=str(data_root), device="cpu", progress=False)
    with pytest.raises(FileExistsError, match=r"checkpoint.pt' exists. Pass --resume"):
        trainer_mod.train(config, opts)
    assert _train(recipe_file, out, data_root) == 2
    assert "Pass --resume" in capsys.readouterr().err
    opts.resume = True
    with pytest.raises(ValueError, match=r"Cannot read checkpoint .*Delete it to start over"):
        trainer_mod.train(config, opts)
    torch.save({"config": {"architecture": "4c3f"}}, out / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"belongs to architecture '4c3f', not 'train-tiny'"):
        trainer_mod.train(config, opts)


def test_missing_data_names_path_and_env_var(recipe_file, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("LIPZOO_DATA", str(empty))
    rc = main(["train", str(recipe_file), "--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(empty / "mnist.npz") in err and "LIPZOO_DATA" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_data_that_does_not_fit_a_hand_made_config_is_refused(recipe_file, tmp_path):
    config = resolve_config(str(recipe_file))  # 10 classes, 1x8x8; the data below was not resolved with it
    g = np.random.default_rng(0)
    opts = trainer_mod.TrainOptions(out_dir=str(tmp_path / "run"), device="cpu", progress=False)
    for name, x, y, match in (("labels.npz", g.integers(0, 256, (8, 8, 8), dtype=np.uint8), np.arange(8) + 4,
                               r"'.*labels.npz' has label 11, the config 10 classes"),
                              ("shape.npz", g.integers(0, 256, (8, 6, 6), dtype=np.uint8), np.arange(8),
                               r"are \[1, 6, 6\], the config's input_shape is \[1, 8, 8\]")):
        np.savez(tmp_path / name, x_train=x, y_train=y)
        opts.data = str(tmp_path / name)
        with pytest.raises(ValueError, match=match):
            trainer_mod.train(config, opts)
    assert not (tmp_path / "run").exists()


# -- optimizer and schedule -----------------------------------------------------------------------
def test_optimizer_follows_the_recipe():
    params = [torch.nn.Parameter(torch.zeros(2))]
    model = torch.nn.ParameterList(params)
    make = trainer_mod._make_optimizer
    adam = make(model, {"optimizer": {"name": "adam", "lr": 0.01, "betas": [0.8, 0.9], "eps": 1e-6,
                                      "weight_decay": 0.1}})
    group = adam.param_groups[0]
    assert type(adam) is torch.optim.Adam and group["params"] == params
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.01, (0.8, 0.9), 1e-6, 0.1)
    adamw = make(model, {"optimizer": {"name": "adamw", "lr": 0.01}})
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 1e-2
    sgd = make(model, {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}})
    group = sgd.param_groups[0]
    assert type(sgd) is torch.optim.SGD and (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 5e-4)
    with pytest.raises(ValueError, match=r"momentum applies to sgd, not adam"):
        make(model, {"optimizer": {"name": "adam", "lr": 0.1, "momentum": 0.9}})
    with pytest.raises(ValueError, match=r"\['betas'\] apply to adam/adamw, not sgd"):
        make(model, {"optimizer": {"name": "sgd", "lr": 0.1, "betas": [0.9, 0.99]}})
    with pytest.raises(ValueError, match=r"must be 'adam', 'adamw' or 'sgd', got 'rmsprop'"):
        make(model, {"optimizer": {"name": "rmsprop", "lr": 0.1}})


def test_scheduler_steps_through_exponential_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    recipe = {"epochs": 5, "optimizer": {"lr": 1e-2}, "scheduler": {"name": "exponential", "start_epoch": 1,
                                                                    "final_lr": 1e-5}}
    sched = trainer_mod._make_scheduler(opt, recipe)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4, 1e-5], rel=1e-12)  # 10x per epoch after epoch 1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    constant = trainer_mod._make_scheduler(opt, {**recipe, "scheduler": {"name": "constant"}})
    for _ in range(3):
        opt.step()
        constant.step()
    assert opt.param_groups[0]["lr"] == 1e-2
    with pytest.raises(ValueError, match=r"recipe.scheduler.name must be 'exponential' or 'constant', got 'cosine'"):
        trainer_mod._make_scheduler(opt, {**recipe, "scheduler": {"name": "cosine"}})


def test_exponential_decay_matches_formula():
    lr, final, start, epochs = 1e-3, 1e-6, 2, 7
    # independent formula: lr_e = lr * (final / lr) ** ((e - start) / (epochs - 1 - start)) after start
    expected = [1.0, 1.0] + [10.0 ** (-3 * (e - 2) / 4) for e in range(2, 7)]
    got = [exponential_decay(e, epochs=epochs, start_epoch=start, lr=lr, final_lr=final) for e in range(epochs)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert lr * got[-1] == pytest.approx(final, rel=1e-12)
    # past the last epoch the rate stays at final_lr; a schedule starting after the end is constant
    assert exponential_decay(20, epochs=epochs, start_epoch=start, lr=lr, final_lr=final) == pytest.approx(1e-3)
    assert exponential_decay(3, epochs=3, start_epoch=5, lr=lr, final_lr=final) == 1.0


# -- time budgets: the arithmetic (lipzoo.train.budget), with made-up costs --------------------------
MNIST_RECIPE = {"loss": "crm", "epochs": 400, "batch_size": 512,
                "optimizer": {"name": "adam", "lr": 1.0e-3, "betas": [0.9, 0.999], "eps": 1.0e-7},
                "scheduler": {"name": "exponential", "start_epoch": 25, "final_lr": 1.0e-6}, "augmentation": [],
                "crm": {"t": 5.0, "lam": 30.0, "r0": 2.2, "g": "linear", "warmup_epochs": 10},
                "power_iterations": 10, "validation_split": 0.1}  # crm-mnist-4c3f's
# the issue's machine: 106 steps an epoch, 1.5 s a CRM step, 1.0 s a CE step, 5.5 s of validation
MNIST_COSTS = budget.StepCosts(warmup=1.0, crm=1.5, overhead=5.5)


def _lr_factor(recipe: dict, epoch: int) -> float:
    s = recipe["scheduler"]
    if s["name"] == "constant":
        return 1.0
    return exponential_decay(epoch, epochs=recipe["epochs"], start_epoch=s["start_epoch"],
                             lr=recipe["optimizer"]["lr"], final_lr=s["final_lr"])


@pytest.mark.parametrize("warmup,start", [(10, 25), (0, 200), (0, 0), (3, 3), (10, 5), (400, 399)])
def test_scaled_schedules_start_crm_at_the_full_learning_rate(warmup, start):
    recipe = {**MNIST_RECIPE, "crm": {**MNIST_RECIPE["crm"], "warmup_epochs": warmup},
              "scheduler": {**MNIST_RECIPE["scheduler"], "start_epoch": start}}
    for n in range(1, 401):
        r = budget.scale_schedule(recipe, n)
        w, d = r["crm"]["warmup_epochs"], r["scheduler"]["start_epoch"]
        assert 0 <= d <= n - 1 and 0 <= w <= n, (n, w, d)
        if warmup < 400:
            assert w < n, "a recipe with a CRM phase keeps one"
            if start >= warmup:
                assert d >= w and _lr_factor(r, w) == 1.0, "the first CRM epoch runs at the full learning rate"
        if warmup > 0:
            assert w >= 1 or n == 1 and warmup < 400, "a recipe with a warm-up keeps one epoch of it"
        # scaled, not cut: within one epoch (plus the rules' one) of the proportional value
        assert abs(d - start * n / 400) <= 2 and abs(w - warmup * n / 400) <= 1
    assert budget.scale_schedule(recipe, 400) == recipe
    assert budget.scale_schedule(MNIST_RECIPE, 10, keep=("crm.warmup_epochs",))["crm"]["warmup_epochs"] == 10
    with pytest.raises(ValueError, match=r"epochs must be an int >= 1, got 0"):
        budget.scale_schedule(MNIST_RECIPE, 0)


def test_the_issue_schedule_no_longer_starts_crm_at_a_decayed_rate():
    """The issue: 600 s fitted after two CE epochs left CRM starting at 6.3e-5. Now the fit comes first."""
    plan = budget.plan_budget(MNIST_RECIPE, 600, steps_per_epoch=106, costs=MNIST_COSTS)
    r = plan.recipe
    assert plan.fitted and plan.useful and plan.seconds <= 600
    # fewer than 10 whole epochs fit (3): 10 shorter ones; validating 10 times takes <= 10 % of the budget
    assert r["epochs"] == 10 and plan.steps_per_epoch < 106
    w = r["crm"]["warmup_epochs"]
    assert w == 1 and r["scheduler"]["start_epoch"] == 2
    assert _lr_factor(r, w) == 1.0  # CRM starts at 1e-3
    # the steps fill the budget: one more step an epoch would not fit
    assert MNIST_COSTS.epochs(r, plan.steps_per_epoch + 1) > 600 >= MNIST_COSTS.epochs(r, plan.steps_per_epoch)
    assert plan.crm_steps == 9 * plan.steps_per_epoch
    assert "10 epochs of" in plan.describe() and "CE warm-up 1 epoch," in plan.describe()


def test_plan_budget_keeps_fits_shortens_and_says_when_it_is_not_useful():
    costs = budget.StepCosts(warmup=1.0, crm=2.0, overhead=10.0)
    recipe = MNIST_RECIPE
    whole = costs.epochs(recipe, 106)
    same = budget.plan_budget(recipe, whole, steps_per_epoch=106, costs=costs)
    assert not same.fitted and same.recipe is recipe and same.steps_per_epoch == 106
    # whole epochs when at least 10 fit: the most that fit, an independent count
    plan = budget.plan_budget(recipe, 5000, steps_per_epoch=106, costs=costs)
    n = plan.recipe["epochs"]
    assert plan.steps_per_epoch == 106 and n >= 10
    assert costs.epochs(budget.scale_schedule(recipe, n), 106) <= 5000 < costs.epochs(budget.scale_schedule(recipe, n + 1), 106)
    assert "name" not in plan.recipe and plan.record(costs, 5100)["recipe_epochs"] == 400
    # a budget that holds less than one CRM pass is said to be not useful; useful_budget is the threshold
    small = budget.plan_budget(recipe, 90, steps_per_epoch=106, costs=costs)
    assert not small.useful and small.recipe["epochs"] >= 1 and small.seconds <= 90
    need = budget.useful_budget(recipe, steps_per_epoch=106, costs=costs)
    assert budget.plan_budget(recipe, need, steps_per_epoch=106, costs=costs).useful
    assert not budget.plan_budget(recipe, need * 0.98, steps_per_epoch=106, costs=costs).useful
    # validation may take at most 10 % of a short budget: fewer, longer epochs
    slow_eval = budget.plan_budget(recipe, 300, steps_per_epoch=106, costs=budget.StepCosts(1.0, 1.0, 10.0))
    assert slow_eval.recipe["epochs"] == 3
    # a cross-entropy recipe is always "useful"
    ce = {**recipe, "loss": "ce", "crm": None}
    assert budget.plan_budget(ce, 50, steps_per_epoch=106, costs=costs).useful
    with pytest.raises(ValueError, match=r"seconds must be a finite number >= 0, got -1"):
        budget.plan_budget(recipe, -1, steps_per_epoch=106, costs=costs)
    with pytest.raises(ValueError, match=r"steps_per_epoch must be >= 1, got 0"):
        budget.plan_budget(recipe, 10, steps_per_epoch=0, costs=costs)
    with pytest.raises(ValueError, match=r"StepCosts.crm must be a finite number of seconds >= 0, got nan"):
        budget.StepCosts(1.0, float("nan"), 1.0)


def test_allot_steps_only_shortens():
    r = budget.fit_recipe(MNIST_RECIPE, 10)
    costs = budget.StepCosts(warmup=1.0, crm=1.0, overhead=2.0)
    # 5 epochs left (5 to 9, all CRM): 5 * (k + 2) <= 60  ->  k = 10, capped at the plan's 8
    assert budget.allot_steps(r, epoch=5, seconds_left=60, planned=8, costs=costs) == 8
    assert budget.allot_steps(r, epoch=5, seconds_left=45, planned=8, costs=costs) == 7
    slower = budget.StepCosts(warmup=1.0, crm=3.0, overhead=2.0)
    assert budget.allot_steps(r, epoch=5, seconds_left=45, planned=8, costs=slower) == 2
    assert budget.allot_steps(r, epoch=5, seconds_left=12, planned=8, costs=slower) == 0
    assert budget.allot_steps(r, epoch=10, seconds_left=100, planned=8, costs=costs) == 0


def test_fit_recipe_scales_schedule_and_warmup():
    recipe = _entry(epochs=400, scheduler={"name": "exponential", "start_epoch": 200, "final_lr": 1e-6},
                    crm={"t": 5.0, "lam": 15.0, "r0": 0.2, "g": "linear", "warmup_epochs": 10})["recipe"]
    short = trainer_mod.fit_recipe(recipe, 95)
    assert short["epochs"] == 95 and short["scheduler"]["start_epoch"] == 48 and short["crm"]["warmup_epochs"] == 3
    assert recipe["epochs"] == 400  # the input is not changed
    assert trainer_mod.fit_recipe(recipe, 1)["scheduler"]["start_epoch"] == 0
    with pytest.raises(ValueError, match=r"epochs must be in \[1, 400\]"):
        trainer_mod.fit_recipe(recipe, 401)
    # the shortened recipe is checked at once (not in save_pretrained at the end of the run)
    with pytest.raises(ValueError, match=r"recipe \(shortened to 95 epochs\)\.batch_size"):
        trainer_mod.fit_recipe({**recipe, "batch_size": 0}, 95)
    assert "name" not in trainer_mod.fit_recipe({**recipe, "name": "crm-cifar10"}, 95)  # no longer that recipe


# -- time budgets in the trainer: injected costs and a fake clock (never the machine's speed) ---------
class _Clock:
    """A fake ``trainer._now``: time moves only when a training step runs (``per_step`` seconds, or
    ``per_step(epoch)``, each)."""

    def __init__(self):
        self.t, self.per_step = 1000.0, 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake_budget(monkeypatch):
    """Install a fake clock (advanced by every training step) and injected measured costs."""
    clock = _Clock()
    real_loss = trainer_mod._Run.loss

    def loss(self, x, y, regularize):
        clock.t += clock.per_step(self.epoch) if callable(clock.per_step) else clock.per_step
        return real_loss(self, x, y, regularize)

    def install(costs: budget.StepCosts | None, per_step=0.0):
        clock.per_step = per_step
        monkeypatch.setattr(trainer_mod, "_now", clock)
        monkeypatch.setattr(trainer_mod._Run, "loss", loss)
        if costs is not None:
            monkeypatch.setattr(trainer_mod._Run, "measure_costs", lambda self, repeats=2: costs)
        return clock

    return install


def _budget_recipe(tmp_path: Path, **recipe) -> Path:
    path = tmp_path / "budget.yaml"
    entry = _entry(**{"epochs": 20, "scheduler": {"name": "exponential", "start_epoch": 10, "final_lr": 1e-4},
                      "crm": {"t": 5.0, "lam": 1.0, "r0": 2.0, "g": "linear", "warmup_epochs": 4}, **recipe})
    path.write_text(yaml.safe_dump(entry, sort_keys=False))
    return path


def _library_train(recipe: Path, out: Path, data_root: Path, **opts):
    config = resolve_config(str(recipe), [])
    options = trainer_mod.TrainOptions(out_dir=str(out), data_root=str(data_root), device="cpu", progress=False,
                                       threads=1, **opts)
    return trainer_mod.train(config, options)


def test_time_budget_fits_whole_epochs_before_the_first(tiny_arch, data_root, tmp_path, fake_budget, caplog):
    fake_budget(budget.StepCosts(warmup=1.0, crm=1.0, overhead=1.0))
    recipe = _budget_recipe(tmp_path)  # 20 epochs of 3 steps (72 training images, batch 24): 80 s
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="lipzoo.train"):
        _library_train(recipe, out, data_root, time_budget=50)
    # 50 s less the 2 % margin: 12 epochs of 3 steps + 1 s of validation (48 s), decided before epoch 1
    assert "fitted: 12 epochs of 3 steps, CE warm-up 3 epochs, decay from epoch 6" in caplog.text
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == list(range(1, 13)) and {r["steps"] for r in rows} == {3}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["recipe"]["epochs"] == 12 and config["time_budget"]["recipe_epochs"] == 20
    assert config["time_budget"]["steps_per_epoch"] == 3 and config["time_budget"]["seconds"] == 50
    # the CE warm-up ends where the decay has not started: CRM's first epoch (index 3) has the full rate
    assert rows[3]["lr"] == pytest.approx(1e-2) and rows[-1]["lr"] == pytest.approx(1e-4)


def test_time_budget_short_epochs_warn_before_training(tiny_arch, data_root, tmp_path, fake_budget, caplog):
    fake_budget(budget.StepCosts(warmup=10.0, crm=10.0, overhead=1.0))
    recipe = _budget_recipe(tmp_path)
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="lipzoo.train"):
        _library_train(recipe, out, data_root, time_budget=40)
    # 39.2 s: one whole epoch (31 s); 3 epochs (validation <= 10 %) of 1 step, 1 of them CE
    assert "fitted: 3 epochs of 1 step (of 3), CE warm-up 1 epoch" in caplog.text
    assert "it holds 2 CRM steps, less than one pass over the training split (3 steps)" in caplog.text
    assert "fitted" in caplog.records[0].getMessage()  # said before the first epoch
    rows = _rows(out)
    assert len(rows) == 3 and all(r["steps"] == 1 for r in rows)
    # no budget at all: nothing fits, nothing is written
    with pytest.raises(ValueError, match=r"--time-budget 5: .* cannot hold one step and one validation .*nothing "
                                         r"was trained. A useful run of this recipe needs about --time-budget \d+"):
        _library_train(recipe, tmp_path / "none", data_root, time_budget=5)
    assert not (tmp_path / "none").exists()


def test_time_budget_rechecks_every_epoch_and_keeps_the_cap(tiny_arch, data_root, tmp_path, fake_budget, caplog):
    # measured 1 s a step; from the fourth epoch (index 3) on each step takes 3 s
    clock = fake_budget(budget.StepCosts(warmup=1.0, crm=1.0, overhead=0.0), per_step=lambda e: 1.0 if e < 3 else 3.0)
    recipe = _budget_recipe(tmp_path, epochs=12, scheduler={"name": "constant"})
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="lipzoo.train"):
        _library_train(recipe, out, data_root, time_budget=40)  # 36 s planned: the recipe fits as it is
    steps = [r["steps"] for r in _rows(out)]
    assert steps[:4] == [3, 3, 3, 3] and min(steps) < 3
    assert steps == sorted(steps, reverse=True)  # shortened, never lengthened
    assert clock.t - 1000.0 <= 40  # the cap holds
    assert "at the rates measured so far" in caplog.text and "stopping after epoch" in caplog.text


def test_time_budget_resume_keeps_the_plan_without_scheduler_warnings(tiny_arch, data_root, tmp_path, fake_budget,
                                                                        monkeypatch):
    fake_budget(budget.StepCosts(warmup=1.0, crm=1.0, overhead=1.0))
    recipe = _budget_recipe(tmp_path)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".*lr_scheduler\.step\(\)")  # the issue's torch warning
        _library_train(recipe, run_a, data_root, time_budget=50)
        with interrupted_in_epoch(monkeypatch, epoch=4):
            _library_train(recipe, run_b, data_root, time_budget=50)
        fake_budget(budget.StepCosts(warmup=1.0, crm=1.0, overhead=1.0))  # interrupted_in_epoch restored the loss
        assert _ckpt(run_b)["epoch"] == 4
        # resumed with another budget: the fitted recipe and steps come from the checkpoint
        _library_train(recipe, run_b, data_root, time_budget=500, resume=True)
    a, b = _ckpt(run_a), _ckpt(run_b)
    assert b["config"]["recipe"] == a["config"]["recipe"] and b["config"]["recipe"]["epochs"] == 12
    assert b["config"]["time_budget"] == a["config"]["time_budget"]
    for key in ("model", "optimizer", "scheduler", "estimator"):
        _assert_same(a[key], b[key], key)
    assert _without_time(_rows(run_a)) == _without_time(_rows(run_b))


def test_measuring_the_costs_changes_nothing(recipe_file, data_root, tmp_path, monkeypatch):
    """The real measurement, on a clock that never moves (every cost 0: the recipe fits), trains what an unbudgeted
    run trains, bit for bit: no optimizer step, and the weights, estimator vectors and RNGs are restored."""
    monkeypatch.setattr(trainer_mod, "_now", lambda: 1000.0)
    _library_train(recipe_file, tmp_path / "budget", data_root, time_budget=10)
    monkeypatch.setattr(trainer_mod, "_now", time.monotonic)
    _library_train(recipe_file, tmp_path / "plain", data_root)
    a, b = _ckpt(tmp_path / "budget"), _ckpt(tmp_path / "plain")
    for key in ("model", "optimizer", "scheduler", "estimator", "rng", "loader_generator"):
        _assert_same(a[key], b[key], key)
    assert a["config"]["recipe"] == b["config"]["recipe"] and a["config"]["time_budget"]["steps_per_epoch"] == 3
    run = trainer_mod._Run(resolve_config(str(recipe_file)), trainer_mod.TrainOptions(
        out_dir=str(tmp_path / "m"), data_root=str(data_root), device="cpu", progress=False))
    costs = run.measure_costs()  # the real clock: the warm-up and CRM modes, validation and checkpoint
    assert costs.warmup > 0 and costs.crm > 0 and costs.overhead > 0


# -- what a run shows -------------------------------------------------------------------------------
def test_no_progress_prints_one_line_per_epoch(recipe_file, data_root, tmp_path, capsys):
    assert _train(recipe_file, tmp_path / "run", data_root, "recipe.epochs=2") == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lipzoo train: epoch ")]
    assert len(lines) == 2, err
    assert re.fullmatch(r"lipzoo train: epoch 2/2: loss -?\d+\.\d+, accuracy \d+\.\d+ % \(validation \d+\.\d+ %\), "
                        r"certified \(estimated\) \d+\.\d+ % at 1/255, \d+\.\d+ % at 0\.5, lr 0\.01, 3 steps, "
                        r"\d+\.\d s", lines[1]), lines[1]


def test_curves_legend_names_the_data_of_a_data_run(recipe_file, data_root, tmp_path, monkeypatch):
    from lipzoo.train import curves

    labels = []
    real = curves.plot_training_curves
    monkeypatch.setattr(curves, "plot_training_curves", lambda runs, path, **kw: labels.extend(runs) or real(
        runs, path, **kw))
    mine = tmp_path / "my-digits.npz"
    shutil.copy(data_root / "mnist.npz", mine)
    assert _train(recipe_file, tmp_path / "run", data_root, "recipe.epochs=1", "--data", str(mine)) == 0
    assert _train(recipe_file, tmp_path / "run2", data_root, "recipe.epochs=1") == 0
    assert labels == ["my-digits", "train-tiny-test"]  # never "None"


# -- distributed ----------------------------------------------------------------------------------
def test_ddp_two_processes_on_cpu(tmp_path, data_root):
    """``torchrun --nproc_per_node 2`` with gloo: one epoch, one metrics row, a loadable final."""
    entry = _entry(epochs=1, scheduler={"name": "constant"}, augmentation=["hflip"],
                   crm={"t": 5.0, "lam": 1.0, "r0": 2.0, "g": "linear", "warmup_epochs": 0})
    # a registered architecture: the worker processes do not run this module's registration
    entry.update(architecture="4c3f", model_args={"img_size": 8})
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(entry))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(lipzoo.__file__).parents[1])}
    env.pop("LIPZOO_DATA", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "lipzoo.cli",
         "train", str(recipe), "recipe.epochs=1", "--out", str(out), "--data-root", str(data_root), "--device", "cpu",
         "--threads", "1", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out)
    assert len(rows) == 1 and rows[0]["epoch"] == 1 and set(rows[0]) == METRIC_KEYS
    model = lipzoo.load(out / "final")
    assert model.lipzoo_config["training"]["epochs_trained"] == 1
    _assert_same(model.state_dict(), _ckpt(out)["model"], "model")
    print(f"DDP run: {cpu:.1f} s CPU")  # shown with -s; decides whether this test needs @slow
    # with a time budget the ranks agree on rank 0's measurement, plan and steps (each on its own would wait forever)
    budgeted = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "lipzoo.cli",
         "train", str(recipe), "recipe.epochs=2", "--out", str(tmp_path / "budget"), "--data-root", str(data_root),
         "--device", "cpu", "--threads", "1", "--no-progress", "--time-budget", "3600"],
        capture_output=True, text=True, env=env, timeout=900)
    assert budgeted.returncode == 0, budgeted.stderr[-3000:]
    assert [r["epoch"] for r in _rows(tmp_path / "budget")] == [1, 2]
    assert "time_budget" in lipzoo.load(tmp_path / "budget" / "final").lipzoo_config


# -- the field's losses through the same accountant (issue 25): GloRo, EMMA, hinge-KR ----------------------
_LOSS_MODULES = {"gloro": "GloRoLoss", "emma": "EMMALoss", "hkr": "HKRLoss"}


@pytest.mark.parametrize("loss, extra, block", [
    ("gloro", (), {"eps": None, "eps_ramp": 0.0, "trades_lam": None}),
    ("gloro", ("recipe.gloro.trades_lam=2.0", "recipe.gloro.eps=0.3"), {"eps": 0.3, "eps_ramp": 0.0, "trades_lam": 2.0}),
    ("emma", ("recipe.emma.eps_ramp=1.0",), {"eps": None, "eps_ramp": 1.0}),
    ("hkr", ("recipe.hkr.alpha=0.9",), {"alpha": 0.9, "min_margin": None}),
])
def test_margin_losses_train_through_the_cli(recipe_file, data_root, tmp_path, monkeypatch, loss, extra, block):
    from lipzoo import losses

    seen = []
    module = getattr(losses, _LOSS_MODULES[loss])
    real = module.forward

    def spy(self, logits, labels, pairwise_L, *args, **kwargs):
        value, parts = real(self, logits, labels, pairwise_L, *args, **kwargs)
        seen.append((self, pairwise_L.requires_grad, set(parts), value.requires_grad))
        return value, parts

    monkeypatch.setattr(module, "forward", spy)
    out = tmp_path / "run"
    assert _train(recipe_file, out, data_root, f"recipe.loss={loss}", "recipe.epochs=1", "--max-steps", "2", *extra) == 0
    rows = _rows(out)
    assert [r["steps"] for r in rows] == [2] and set(rows[0]) == METRIC_KEYS
    assert all(math.isfinite(v) for v in rows[0].values())
    assert len(seen) == 2
    criterion = seen[0][0]
    # null radii are the entry's first certification radius (1/255); the estimate stays in the graph
    radius = criterion.min_margin if loss == "hkr" else criterion.eps
    assert radius == pytest.approx(block.get("eps") or block.get("min_margin") or 1 / 255)
    assert all(requires_grad and value_grad and "mean_radius" in parts for _, requires_grad, parts, value_grad in seen)
    recipe = json.loads((out / "final" / "config.json").read_text())["recipe"]
    assert recipe["loss"] == loss and recipe[loss] == block  # the defaults are written out


def _margin_recipe(tmp_path: Path, **recipe) -> Path:
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(_entry(**recipe), sort_keys=False))
    return path


def test_gloro_resume_is_bit_for_bit(tiny_arch, data_root, tmp_path, monkeypatch):
    # the radius ramps over the 3 epochs (1/6, 1/3, 1/2): a resumed run must train epoch 3 at 1/2
    recipe = _margin_recipe(tmp_path, loss="gloro", crm=None, gloro={"eps": 0.5, "eps_ramp": 1.0, "trades_lam": None})
    run_a, run_b, run_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _train(recipe, run_a, data_root) == 0
    with interrupted_in_epoch(monkeypatch):
        _train(recipe, run_b, data_root)
    assert _ckpt(run_b)["epoch"] == 2
    shutil.copytree(run_b, run_c)
    assert _train(recipe, run_b, data_root, "--resume") == 0
    a, b = _ckpt(run_a), _ckpt(run_b)
    for key in ("model", "estimator", "optimizer", "scheduler", "rng", "loader_generator"):
        _assert_same(a[key], b[key], key)
    assert _without_time(_rows(run_a)) == _without_time(_rows(run_b))
    # the test can fail: a resumed loss left at the first epoch's radius trains other weights
    from lipzoo.losses import GloRoLoss

    monkeypatch.setattr(GloRoLoss, "set_epoch", lambda self, epoch: None)
    assert _train(recipe, run_c, data_root, "--resume") == 0
    assert not torch.equal(_ckpt(run_c)["model"]["1.weight"], a["model"]["1.weight"])


@pytest.mark.parametrize("loss", sorted(_LOSS_MODULES))
def test_margin_losses_with_amp_are_float32_outside_autocast(recipe_file, data_root, tmp_path, monkeypatch, loss):
    from lipzoo import losses

    seen = []
    module = getattr(losses, _LOSS_MODULES[loss])
    real = module.forward

    def spy(self, logits, labels, pairwise_L, *args, **kwargs):
        seen.append((logits.dtype, pairwise_L.dtype, torch.is_autocast_enabled("cpu")))
        return real(self, logits, labels, pairwise_L, *args, **kwargs)

    monkeypatch.setattr(module, "forward", spy)
    out = tmp_path / "amp"
    assert _train(recipe_file, out, data_root, f"recipe.loss={loss}", "recipe.epochs=1", "--max-steps", "2",
                  "--amp") == 0
    assert seen == [(torch.float32, torch.float32, False)] * 2
    assert all(math.isfinite(v) for v in _rows(out)[0].values())


def test_margin_loss_recipes_are_checked_at_the_edge(recipe_file, tmp_path, capsys):
    # a loss's block left out gets its documented defaults; one key of an absent block may be set
    assert resolve_config(str(recipe_file), ["recipe.loss=emma"])["recipe"]["emma"] == {"eps": None, "eps_ramp": 0.0}
    assert "gloro" not in resolve_config(str(recipe_file))["recipe"]  # a CRM recipe is written as before
    # the issue's command line: the CRM warm-up of crm-mnist-4c3f does not bind a GloRo run
    one = resolve_config("crm-mnist-4c3f", ["recipe.loss=gloro", "recipe.epochs=1", "recipe.gloro.eps=0.5"])["recipe"]
    assert one["epochs"] == 1 and one["gloro"] == {"eps": 0.5, "eps_ramp": 0.0, "trades_lam": None}
    # every problem at once, each naming its key
    with pytest.raises(ValueError) as info:
        resolve_config(str(recipe_file), ["recipe.loss=hkr", "recipe.hkr.alpha=1.5", "recipe.hkr.margin=1",
                                          "recipe.hkr.min_margin=abc", "recipe.gloro.eps_ramp=2", "recipe.batch_size=0"])
    text = str(info.value)
    assert text.startswith("recipe: 5 problems:"), text
    for part in ("recipe.hkr: unknown key(s) ['margin']; allowed: ['alpha', 'min_margin'].",
                 "recipe.hkr.alpha: expected a number <= 1, got 1.5.",
                 "recipe.hkr.min_margin (a radius, or null for certify.eps[0]): expected a number",
                 "recipe.gloro.eps_ramp (a share of recipe.epochs): expected a number <= 1, got 2.",
                 "recipe.batch_size: expected an int >= 1, got 0."):
        assert part in text
    with pytest.raises(ValueError, match=r"recipe.loss: expected one of \['crm', 'ce', 'gloro', 'emma', 'hkr'\], got "
                                         r"'lmt'"):
        resolve_config(str(recipe_file), ["recipe.loss=lmt"])
    with pytest.raises(ValueError, match=r"recipe.emma: expected a mapping with keys among \['eps', 'eps_ramp'\]"):
        resolve_config(str(recipe_file), ["recipe.loss=emma", "recipe.emma=[1]"])
    with pytest.raises(ValueError, match=r"recipe.gloro.eps \(a radius, or null for certify.eps\[0\]\): expected a "
                                         r"number > 0, got -1"):
        resolve_config(str(recipe_file), ["recipe.loss=gloro", "recipe.gloro.eps=-1"])
    with pytest.raises(ValueError, match=r"recipe.gloro.trades_lam \(or null\): expected a number >= 0"):
        resolve_config(str(recipe_file), ["recipe.gloro={trades_lam: -2}"])
    with pytest.raises(ValueError, match=r"Unknown config key 'recipe.emma.eps.x'"):
        resolve_config(str(recipe_file), ["recipe.emma.eps.x=1"])
    assert _train(recipe_file, tmp_path / "bad", Path("."), "recipe.loss=emma", "recipe.emma.eps_ramp=-1") == 2
    assert "recipe.emma.eps_ramp (a share of recipe.epochs): expected a number >= 0, got -1" in capsys.readouterr().err
    # a null radius needs a certification radius (an entry always has one; a hand-made config may not)
    from types import SimpleNamespace

    with pytest.raises(ValueError, match=r"recipe.hkr.min_margin is null, which means the first certification radius "
                                         r"\(certify.eps\[0\]\), but the config certifies at none"):
        trainer_mod._Run._radius(SimpleNamespace(config={"certify": {"eps": []}}), None, "recipe.hkr.min_margin")


def test_ddp_margin_loss_on_cpu(tmp_path, data_root):
    """``torchrun --nproc_per_node 2`` with gloo and ``recipe.loss=hkr``: each rank's loss is a plain batch mean."""
    entry = _entry(epochs=1, scheduler={"name": "constant"}, loss="hkr", crm=None, hkr={"alpha": 0.9, "min_margin": 0.5})
    entry.update(architecture="4c3f", model_args={"img_size": 8})  # registered: the workers do not run this module
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(entry))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(lipzoo.__file__).parents[1])}
    env.pop("LIPZOO_DATA", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "lipzoo.cli",
         "train", str(recipe), "--out", str(out), "--data-root", str(data_root), "--device", "cpu", "--threads", "1",
         "--no-progress"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out)
    assert len(rows) == 1 and set(rows[0]) == METRIC_KEYS and all(math.isfinite(v) for v in rows[0].values())
    model = lipzoo.load(out / "final")
    assert model.lipzoo_config["recipe"]["hkr"] == {"alpha": 0.9, "min_margin": 0.5}
    _assert_same(model.state_dict(), _ckpt(out)["model"], "model")
