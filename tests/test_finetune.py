"""Fine-tuning from the command line: ``lipzoo train ENTRY --init SOURCE --data FILE``, then certify and the card.

The example of ``docs/finetune.md`` runs here on a synthetic 5-class 32x32x3 subset (written by
``scripts/make_subset.py`` from a 10-class archive): ``crm-cifar10-6c2f`` fine-tuned for two steps
from its own published weights, certified on 10 test images, its card checked to show the run's
own numbers and name its parent, never the parent's numbers. The same on the real CIFAR-10 is the
``slow`` test at the end (``$LIPZOO_DATA``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import lipzoo
from conftest import interrupted_in_epoch, register_tiny, tiny_builder
from lipzoo.cli import main
from lipzoo.models import build_model, zoo
from lipzoo.train import resolve_config
from lipzoo.train import trainer as trainer_mod
from lipzoo.train.config import resolve_metadata

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from make_subset import main as make_subset_main  # noqa: E402  (a script, importable for tests)

ENTRY = "crm-cifar10-6c2f"
CLASSES = ["2", "3", "5", "7", "9"]  # source labels of the subset, relabelled 0..4
# one short CRM epoch: the shared recipe's decay start and warm-up scaled down with it
SHORT = ["recipe.epochs=1", "recipe.scheduler.start_epoch=0", "recipe.crm.warmup_epochs=0", "recipe.batch_size=16"]
# Adam moves a weight by at most about lr per step (|m / sqrt(v)| <= 1 after bias correction)
ADAM_STEP_SLACK = 1.5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def bound_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guaranteed bounds of these throw-away weights are cached in the test's folder, not ~/.cache."""
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path / "bound-cache"))


def _ten_class_archive(path: Path, train_per_class: int = 8, test_per_class: int = 4) -> Path:
    """A CIFAR-10-shaped Keras archive (uint8 NHWC, labels (N, 1) as Keras writes them), classes interleaved."""
    g = np.random.default_rng(0)
    n_train, n_test = 10 * train_per_class, 10 * test_per_class
    np.savez(path, x_train=g.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
             y_train=(np.arange(n_train) % 10).astype(np.uint8)[:, None],
             x_test=g.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
             y_test=(np.arange(n_test) % 10).astype(np.uint8)[:, None])
    return path


@pytest.fixture
def subset(tmp_path: Path) -> Path:
    """``sub.npz``: 5 of the 10 classes (40 train / 20 test images), written by scripts/make_subset.py."""
    source = _ten_class_archive(tmp_path / "ten.npz")
    out = tmp_path / "sub.npz"
    assert make_subset_main([str(source), str(out), "--classes", *CLASSES]) == 0
    return out


def _finetune(data: Path, out: Path, *extra: str, init: str = ENTRY, overrides=SHORT) -> int:
    return main(["train", ENTRY, *overrides, "--init", init, "--data", str(data), "--max-steps", "2", "--out",
                 str(out), "--device", "cpu", "--seed", "0", "--threads", "1", "--no-progress", *extra])


# -- the tested example ---------------------------------------------------------------------------
def test_make_subset_relabels_and_keeps_the_order(tmp_path):
    source = _ten_class_archive(tmp_path / "ten.npz")
    out = tmp_path / "two.npz"
    assert make_subset_main([str(source), str(out), "--classes", "7", "3", "--train-per-class", "5"]) == 0
    with np.load(source) as src, np.load(out) as sub:
        y_src = src["y_train"].reshape(-1)
        keep = np.flatnonzero(np.isin(y_src, [7, 3]))
        keep = np.sort(np.concatenate([keep[y_src[keep] == 7][:5], keep[y_src[keep] == 3][:5]]))
        np.testing.assert_array_equal(sub["x_train"], src["x_train"][keep])
        np.testing.assert_array_equal(sub["y_train"], np.where(y_src[keep] == 7, 0, 1))  # 7 -> 0, 3 -> 1
        assert sub["x_test"].shape == (8, 32, 32, 3) and sorted(set(sub["y_test"].tolist())) == [0, 1]
        assert sub["x_train"].dtype == np.uint8
    assert make_subset_main([str(source), str(out), "--classes", "3", "3"]) == 2
    assert make_subset_main([str(source), str(out), "--classes", "11"]) == 2  # no image of class 11


def test_finetune_certify_attach_and_card(subset, tmp_path, capsys):
    run = tmp_path / "run"
    assert _finetune(subset, run) == 0
    printed = capsys.readouterr().out
    assert f"lipzoo certify {run}/final --data {subset} --attach" in printed
    final = run / "final"
    config = json.loads((final / "config.json").read_text())
    parent = zoo.get_metadata(ENTRY)
    # the data decides the head and the dataset; the parent is the --init checkpoint; nothing inherited
    assert config["num_classes"] == 5 and config["input_shape"] == [3, 32, 32] and config["dataset"] == "sub.npz"
    assert config["parent"] == {"name": ENTRY, "sha256": parent.weights.sha256}
    assert config["name"] is None and config["metrics"] is None and config["weights"] is None
    assert config["normalization"] == parent.arch.normalization.to_dict()  # the parent's Normalize is kept
    assert config["training"]["init"] == ENTRY and config["training"]["data"]["name"] == "sub.npz"
    assert config["training"]["epochs_trained"] == 1

    # every weight but the resized head starts from the parent: two Adam steps (lr 1e-3) away from it
    start, tuned = lipzoo.load(ENTRY).state_dict(), load_file(final / "model.safetensors")
    head = {k for k in tuned if tuned[k].shape != start[k].shape}
    assert head and all(tuned[k].shape[0] == 5 for k in head)
    lr = float(config["recipe"]["optimizer"]["lr"])
    moved = {k: float((tuned[k] - start[k]).abs().max()) for k in tuned if k not in head}
    assert max(moved.values()) <= 2 * lr * ADAM_STEP_SLACK, moved
    assert sum(v > 0 for v in moved.values()) >= 8  # and it did train (weights and biases moved)

    # certify on the test split of the same file; the numbers go into the card
    cert = tmp_path / "cert"
    # exact certificates only up to 256 dimensions (1 s instead of minutes): every value is proved
    # either way, larger operators keep their cheap proved bounds
    assert main(["certify", str(final), "--data", str(subset), "--attach", "--limit", "10", "--attack-steps", "2",
                 "--max-dense", "256", "--out", str(cert), "--no-progress"]) == 0
    report = json.loads((cert / "report.json").read_text())
    config = json.loads((final / "config.json").read_text())
    assert report["num_samples"] == 10 and report["sha256"] == config["sha256"] == config["metrics"]["sha256"]
    card = (final / "README.md").read_text()
    own = [report["metrics"]["clean"]] + [report["metrics"][f"{kind}@{eps}"] for eps in ("36/255", "18/255")
                                                   for kind in ("certified", "pgd")]
    for value in own:
        assert f"{100 * value:.2f}" in card
    assert "10 images of the test set" in card
    assert f"Derived from `{ENTRY}`" in card and parent.weights.sha256 in card
    # never the parent's numbers (when the entry has any: a newly shipped entry may not be certified yet)
    res = parent.results
    theirs = [] if res is None else [res.clean] + [v for e in parent.eps for v in (res.at(e).certified,
                                                                                  res.at(e).pgd)]
    assert not [f"{100 * v:.2f}" for v in theirs if f"{100 * v:.2f}" in card and v not in own]
    assert lipzoo.load(final).num_classes == 5

    # trained on the user's own data: certify without --data names the fix
    assert main(["certify", str(final), "--no-progress"]) == 2
    assert "pass its path: --data" in capsys.readouterr().err


def test_default_run_folder_names_the_data(subset, tmp_path, monkeypatch):
    import lipzoo.train as train_package

    seen = {}

    def fake_train(config, opts):
        seen.update(config=config, opts=opts)
        return Path(opts.out_dir)

    monkeypatch.setattr(train_package, "train", fake_train)
    monkeypatch.chdir(tmp_path)
    assert main(["train", ENTRY, "--init", ENTRY, "--data", str(subset), "--no-progress"]) == 0
    opts = seen["opts"]
    assert (opts.out_dir, opts.init, opts.data) == (f"runs/{ENTRY}-sub", ENTRY, str(subset))
    assert seen["config"]["num_classes"] == 5


# -- resume, normalization, validation ------------------------------------------------------------
@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny 1x8x8 architecture, a 10-class checkpoint of it, its recipe and 3-class user data."""
    arch = register_tiny(monkeypatch, "ft-tiny", 10)
    torch.manual_seed(1)
    init = lipzoo.save_pretrained(tiny_builder(arch, 10)(mean=(0.4,), std=(0.3,)).eval(), tmp_path / "init", config={
        "architecture": arch, "num_classes": 10, "input_shape": [1, 8, 8],
        "normalization": {"mean": [0.4], "std": [0.3]}, "eps": ["1/255"]})
    recipe = {"name": "ft-tiny-recipe", "architecture": arch, "model_args": {}, "num_classes": 10,
              "input_shape": [1, 8, 8], "dataset": "mnist", "normalization": {"mean": [0.5], "std": [0.25]},
              "recipe": {"loss": "crm", "epochs": 3, "batch_size": 16,
                         "optimizer": {"name": "adam", "lr": 1.0e-2}, "scheduler": {"name": "constant"},
                         "augmentation": ["hflip"], "crm": {"t": 5.0, "lam": 1.0, "r0": 2.0, "g": "linear",
                                                            "warmup_epochs": 1},
                         "power_iterations": 2, "validation_split": 0.25},
              "certify": {"eps": ["1/255"]}, "weights": None, "metrics": None}
    yaml_path = tmp_path / "ft.yaml"
    yaml_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    g = np.random.default_rng(0)
    data = tmp_path / "three.npz"
    np.savez(data, x_train=g.integers(0, 256, (48, 8, 8), dtype=np.uint8), y_train=np.arange(48) % 3,
             x_test=g.integers(0, 256, (12, 8, 8), dtype=np.uint8), y_test=np.arange(12) % 3)
    return yaml_path, init, data


def _tiny_run(tiny, out: Path, *extra: str) -> int:
    yaml_path, init, data = tiny
    return main(["train", str(yaml_path), "--init", str(init), "--data", str(data), "--out", str(out),
                 "--device", "cpu", "--seed", "0", "--threads", "1", "--no-progress", *extra])


def _assert_same(a, b, where: str) -> None:
    """Exact equality of nested checkpoint state (bitwise for tensors)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resume_of_a_finetune_is_exact_and_never_reads_the_init_weights(tiny, tmp_path, monkeypatch, capsys):
    calls = []
    real_start = trainer_mod._Run.start_from

    def spy(self, source):
        calls.append(source)
        return real_start(self, source)

    monkeypatch.setattr(trainer_mod._Run, "start_from", spy)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert _tiny_run(tiny, run_a) == 0 and calls == [str(tiny[1])]

    with interrupted_in_epoch(monkeypatch):  # stop in the middle of epoch 3
        _tiny_run(tiny, run_b)
    calls.clear()
    assert _tiny_run(tiny, run_b, "--resume") == 0
    assert calls == []  # the checkpoint holds the weights: the init is not loaded again
    a = torch.load(run_a / "checkpoint.pt", map_location="cpu", weights_only=True)
    b = torch.load(run_b / "checkpoint.pt", map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "estimator", "rng", "loader_generator"):
        _assert_same(a[key], b[key], key)
    assert json.loads((run_a / "final" / "config.json").read_text())["sha256"] == \
        json.loads((run_b / "final" / "config.json").read_text())["sha256"]
    final = load_file(run_a / "final" / "model.safetensors")
    assert final["4.weight"].shape[0] == 3 and final["0.mean"].tolist() == pytest.approx([0.4])

    # resuming with data of another class count is refused in one line
    other = tmp_path / "four.npz"
    g = np.random.default_rng(1)
    np.savez(other, x_train=g.integers(0, 256, (16, 8, 8), dtype=np.uint8), y_train=np.arange(16) % 4,
             x_test=g.integers(0, 256, (4, 8, 8), dtype=np.uint8), y_test=np.arange(4))
    yaml_path, init, _ = tiny
    assert main(["train", str(yaml_path), "--init", str(init), "--data", str(other), "--out", str(run_a),
                 "--device", "cpu", "--no-progress", "--resume"]) == 2
    assert "has 3 classes, this run's data 4: resume with the same --data" in capsys.readouterr().err


def test_init_weights_are_loaded_except_head_and_normalize(tiny, tmp_path, monkeypatch):
    yaml_path, init, data = tiny
    config = resolve_config(str(yaml_path), data=str(data), init=str(init))
    opts = trainer_mod.TrainOptions(out_dir=str(tmp_path / "r"), device="cpu", init=str(init), data=str(data),
                                    progress=False)
    run = trainer_mod._Run(config, opts)
    start = load_file(init / "model.safetensors")
    state = run.model.state_dict()
    for key in ("1.weight", "1.bias", "2.weight", "2.bias"):
        assert torch.equal(state[key], start[key]), key
    assert state["4.weight"].shape == (3, 16)
    assert state["0.mean"].tolist() == pytest.approx([0.4])  # auto: the init's Normalize
    # a Normalize the user asked for is the config's, not the init's
    config = resolve_config(str(yaml_path), ["normalization.mean=[0.25]"], data=str(data), init=str(init))
    run = trainer_mod._Run(config, opts)
    assert run.model.state_dict()["0.mean"].tolist() == [0.25] and run.model.state_dict()["0.std"].tolist() == [0.25]
    assert torch.equal(run.model.state_dict()["1.weight"], start["1.weight"])


def test_normalization_choices(subset):
    parent = zoo.get_metadata(ENTRY)
    with np.load(subset) as f:
        pixels = f["x_train"].reshape(-1, 3).astype(np.float64) / 255
    mean, std = pixels.mean(0), pixels.std(0)

    tuned = resolve_metadata(ENTRY, data=str(subset), init=ENTRY)  # auto with --init: the parent's
    assert tuned.arch.normalization == parent.arch.normalization and tuned.num_classes == 5
    assert tuned.parent.name == ENTRY and tuned.results is None and tuned.weights is None
    data = resolve_metadata(ENTRY, data=str(subset), init=ENTRY, normalization="data")
    np.testing.assert_allclose(data.arch.normalization.mean, mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(data.arch.normalization.std, std, rtol=0, atol=1e-12)
    scratch = resolve_metadata(ENTRY, data=str(subset))  # auto without --init: the data's own statistics
    np.testing.assert_allclose(scratch.arch.normalization.mean, mean, rtol=0, atol=1e-12)
    assert resolve_metadata(ENTRY, data=str(subset), normalization="keep").arch.normalization == \
        parent.arch.normalization
    told = resolve_metadata(ENTRY, ["normalization.mean=[0.5, 0.5, 0.5]"], data=str(subset), init=ENTRY)
    assert told.arch.normalization.mean == (0.5, 0.5, 0.5)
    assert told.arch.normalization.std == parent.arch.normalization.std
    same = resolve_metadata(ENTRY, init=ENTRY)  # --init alone: the recipe's dataset, the parent recorded
    assert (same.num_classes, same.dataset, same.parent.name, same.name) == (10, "cifar10", ENTRY, None)
    with pytest.raises(ValueError, match="normalization must be one of"):
        resolve_metadata(ENTRY, data=str(subset), normalization="mean")


def test_from_scratch_on_other_image_sizes_builds_for_the_data(tmp_path):
    g = np.random.default_rng(0)
    path = tmp_path / "gray24.npz"
    np.savez(path, x_train=g.integers(0, 256, (12, 24, 24), dtype=np.uint8), y_train=np.arange(12) % 4,
             x_test=g.integers(0, 256, (4, 24, 24), dtype=np.uint8), y_test=np.arange(4))
    meta = resolve_metadata(ENTRY, data=str(path))
    assert meta.input_shape == (1, 24, 24) and meta.num_classes == 4
    assert meta.arch.model_args == {"in_chans": 1, "img_size": [24, 24]}
    assert build_model(meta)(torch.rand(2, 1, 24, 24)).shape == (2, 4)


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _bad_data(tmp_path: Path, kind: str) -> Path:
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    y = np.arange(10) % 5
    base = {"x_train": x, "y_train": y, "x_test": x[:5], "y_test": y[:5]}
    if kind == "gray":
        base.update(x_train=x[..., 0], x_test=x[:5, ..., 0])
    elif kind == "size":
        base.update(x_train=x[:, :28, :28], x_test=x[:5, :28, :28])
    elif kind == "nan":
        bad = x.astype(np.float32) / 255
        bad[3, 1, 2, 0] = np.nan
        base.update(x_train=bad)
    elif kind == "gap":
        base.update(y_train=np.where(y == 1, 4, y))  # no image of class 1
    elif kind == "empty":
        base.update(x_train=x[:0], y_train=y[:0])
    elif kind == "test_label":
        base.update(y_test=np.array([0, 1, 2, 3, 7]))
    elif kind == "negative":
        base.update(y_train=y - 1)
    return _npz(tmp_path / f"{kind}.npz", **base)


@pytest.mark.parametrize("kind, match", [
    ("gray", r"does not fit --init 'crm-cifar10-6c2f' \(channels\): its images are \[1, 32, 32\]"),
    ("size", r"\(shape\): its images are \[3, 28, 28\], the model takes \[3, 32, 32\]"),
    ("nan", r"'x_train' in .*nan.npz holds 1 NaN/inf pixel values \(first image 3\)"),
    ("gap", r"no image of class\(es\) \[1\] .* relabel the classes to 0..K-1"),
    ("empty", r"The train split of empty.npz is empty \(0 images\)"),
    ("test_label", r"The test split of test_label.npz has label 7, but the training split has 5 classes"),
    ("negative", r"negative label \(-1\)"),
])
def test_bad_data_is_refused_in_one_line_before_training(kind, match, tmp_path, capsys):
    out = tmp_path / "run"
    assert _finetune(_bad_data(tmp_path, kind), out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert re.search(match, err), err
    assert not out.exists()  # nothing was trained or written


def test_init_of_another_architecture_is_refused(subset, tmp_path, capsys):
    assert _finetune(subset, tmp_path / "run", init="crm-mnist-4c3f") == 2
    err = capsys.readouterr().err
    assert "--init 'crm-mnist-4c3f' is a '4c3f' model" in err and "the recipe trains '6c2f'" in err


# -- the real data ------------------------------------------------------------------------------
@pytest.mark.slow
def test_finetune_on_a_cifar10_subset(tmp_path, capsys):
    """docs/finetune.md on the real CIFAR-10, for a few steps (needs $LIPZOO_DATA/cifar10.npz)."""
    root = os.environ.get("LIPZOO_DATA")
    if not root or not (Path(root) / "cifar10.npz").is_file():
        pytest.skip("set LIPZOO_DATA to a folder holding cifar10.npz")
    sub = tmp_path / "cifar10-5.npz"
    assert make_subset_main([str(Path(root) / "cifar10.npz"), str(sub), "--classes", "0", "1", "2", "3", "4"]) == 0
    with np.load(sub) as f:
        assert f["x_train"].shape == (25000, 32, 32, 3) and f["x_test"].shape == (5000, 32, 32, 3)
    run = tmp_path / "run"
    assert main(["train", ENTRY, "recipe.epochs=1", "recipe.scheduler.start_epoch=0", "recipe.crm.warmup_epochs=0",
                 "--init", ENTRY, "--data", str(sub), "--max-steps", "5", "--out", str(run), "--no-progress"]) == 0
    assert main(["certify", str(run / "final"), "--data", str(sub), "--attach", "--limit", "200",
                 "--attack-steps", "5", "--out", str(tmp_path / "cert"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "cert" / "report.json").read_text())
    card = (run / "final" / "README.md").read_text()
    assert f"{100 * report['metrics']['clean']:.2f}" in card and f"Derived from `{ENTRY}`" in card
    # started from a CIFAR-10 model, five steps on its first five classes beat chance (20 %) clearly
    assert report["metrics"]["clean"] > 0.3, report["metrics"]
