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
import resource
import shutil
import subprocess
import sys
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
from lipzoo.train import trainer as trainer_mod

ARCH = "train-tiny"
METRIC_KEYS = {"epoch", "lr", "train_loss", "train_acc", "train_radius_est", "val_acc", "val_radius_est",
               "val_cert_est@1/255", "val_cert_est@0.5", "epoch_seconds"}


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


def test_time_budget_shortens_the_run_and_resume_keeps_it(recipe_file, data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    # a budget far below one epoch: the run stops after the two epochs that measure it
    assert _train(recipe_file, out, data_root, "recipe.epochs=6", "--time-budget", "1e-6") == 0
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["recipe"]["epochs"] == 2 and config["time_budget"] == {"seconds": 1e-6, "recipe_epochs": 6}
    final = json.loads((out / "final" / "config.json").read_text())
    assert final["recipe"]["epochs"] == 2 and final["time_budget"]["recipe_epochs"] == 6
    # the schedule was scaled with it (decay start 1 of 6 epochs -> 0 of 2)
    assert config["recipe"]["scheduler"]["start_epoch"] == 0
    # a resumed budgeted run keeps its shortened recipe (the command line still says 6 epochs)
    assert _train(recipe_file, out, data_root, "recipe.epochs=6", "--resume") == 0
    assert len(_rows(out)) == 2


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
