"""Zoo entries: every YAML against the schema, the reference recipes, eps parsing, the docs table."""

from __future__ import annotations

import copy
import hashlib
import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml

import lipzoo.models as M
from lipzoo.meta import Metadata, Results, parse_eps
from lipzoo.models import zoo

ENTRIES = zoo.list_entries()
CONFIG_DIR = Path(zoo.__file__).resolve().parent.parent / "zoo_configs"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "models.md"


def test_the_zoo_has_the_reference_entries():
    assert set(ENTRIES) == {"crm-mnist-4c3f", "ce-mnist-4c3f", "crm-cifar10-6c2f", "crm-tinyimagenet-8c2f",
                            "crm-cifar10-lt-res-s", "crm-cifar10-lt-res-m", "crm-cifar10-lt-res-l",
                            "crm-mnist-sll-s", "hkr-mnist-aol-s"}
    assert ENTRIES == sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_is_valid_and_consistent(name):
    raw = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert zoo.validate_entry(raw) is raw
    entry = zoo.get_entry(name)
    assert entry["name"] == name
    assert entry["recipe"] == {**zoo.resolve_recipe(raw["recipe"])}  # a shared recipe is expanded, named
    assert {k: v for k, v in entry.items() if k != "recipe"} == {k: v for k, v in raw.items() if k != "recipe"}
    json.dumps(entry, allow_nan=False)  # config.json of the hub copies it
    # weights and metrics are filled in together once an entry is trained and certified, and the
    # numbers name the weights they were measured on
    assert (entry["weights"] is None) == (entry["metrics"] is None)
    if entry["weights"] is not None:
        assert entry["metrics"]["sha256"] == entry["weights"]["sha256"]
    if entry["weights"] is not None and entry["weights"]["local"] is not None:
        local = CONFIG_DIR.parent / entry["weights"]["local"] / entry["weights"]["filename"]
        assert hashlib.sha256(local.read_bytes()).hexdigest() == entry["weights"]["sha256"]
        assert 0 <= entry["metrics"]["clean"] <= 1  # fractions, not percent
    assert all(parse_eps(e).value > 0 for e in entry["certify"]["eps"])


def test_cifar10_entries_share_one_recipe():
    cifar = [n for n in ENTRIES if zoo.get_metadata(n).dataset == "cifar10"]
    assert len(cifar) > 1
    assert {zoo.get_metadata(n).recipe.name for n in cifar} == {"crm-cifar10"}
    assert "crm-cifar10" in zoo.list_recipes()
    for name in cifar:  # the YAML names the recipe; it is written once
        assert yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())["recipe"] == "crm-cifar10"


def test_recipe_reference_with_overrides_and_unknown_recipe():
    entry = zoo.get_entry("crm-cifar10-6c2f")
    entry["recipe"] = {"use": "crm-cifar10", "epochs": 300}
    meta = zoo.parse_entry(entry)
    assert meta.recipe.epochs == 300 and meta.recipe.name is None  # modified: no longer the shared recipe
    assert meta.recipe.optimizer == zoo.get_metadata("crm-cifar10-6c2f").recipe.optimizer
    entry["recipe"] = "crm-cifar100"
    with pytest.raises(ValueError, match=r"Unknown recipe 'crm-cifar100'; shared recipes are \['crm-cifar10'\]"):
        zoo.validate_entry(entry)


def test_metrics_must_belong_to_the_published_weights():
    entry = zoo.get_entry("crm-mnist-4c3f")
    entry["metrics"]["sha256"] = "b" * 64
    with pytest.raises(ValueError, match="metrics.sha256 is b{64}, but weights.sha256 is 5f1f"):
        zoo.validate_entry(entry)
    entry["weights"] = None
    with pytest.raises(ValueError, match="metrics: an entry without weights has nothing to measure"):
        zoo.validate_entry(entry)


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_builds_its_architecture(name):
    entry = zoo.get_entry(name)
    model = M.create_model(name)
    assert model.architecture == entry["architecture"]
    assert list(model.input_shape) == entry["input_shape"] and model.num_classes == entry["num_classes"]
    torch.testing.assert_close(model[0].mean, torch.tensor(entry["normalization"]["mean"]))
    torch.testing.assert_close(model[0].std, torch.tensor(entry["normalization"]["std"]))


def test_get_entry_returns_a_copy():
    entry = zoo.get_entry("crm-mnist-4c3f")
    entry["recipe"]["epochs"] = 1
    assert zoo.get_entry("crm-mnist-4c3f")["recipe"]["epochs"] == 400


def test_reference_recipes():
    mnist = zoo.get_entry("crm-mnist-4c3f")["recipe"]
    assert (mnist["epochs"], mnist["batch_size"], mnist["power_iterations"]) == (400, 512, 10)
    assert mnist["optimizer"] == {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-7}
    assert mnist["scheduler"] == {"name": "exponential", "start_epoch": 25, "final_lr": 1e-6}
    assert mnist["crm"] == {"t": 5.0, "lam": 30.0, "r0": 2.2, "g": "linear", "warmup_epochs": 10}
    ce = zoo.get_entry("ce-mnist-4c3f")
    assert ce["recipe"]["loss"] == "ce" and ce["recipe"]["crm"] is None
    assert ce["certify"]["eps"] == ["1.58"] and ce["dataset"] == "mnist"
    cifar = zoo.get_entry("crm-cifar10-6c2f")
    assert cifar["recipe"]["scheduler"]["start_epoch"] == 200 and cifar["recipe"]["power_iterations"] == 5
    assert cifar["recipe"]["augmentation"] == ["hflip", {"affine": {"degrees": 10, "translate": 0.1}}]
    # the reference's CRM settings, without its 10 cross-entropy epochs (docs/training.md says why)
    assert cifar["recipe"]["crm"] == {"t": 5.0, "lam": 15.0, "r0": 0.2, "g": "linear", "warmup_epochs": 0}
    assert cifar["certify"]["eps"] == ["36/255", "18/255"]
    tiny = zoo.get_entry("crm-tinyimagenet-8c2f")["recipe"]
    assert (tiny["epochs"], tiny["batch_size"], tiny["optimizer"]["lr"]) == (300, 256, 1e-4)
    assert tiny["crm"]["t"] == 12.0 and tiny["crm"]["lam"] == 150.0


# -- eps ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [("36/255", Fraction(36, 255)), ("1.58", Fraction(79, 50)),
                                        (" 0.5 ", Fraction(1, 2)), ("2", Fraction(2)), (Fraction(2, 3), Fraction(2, 3)),
                                        (3, Fraction(3))])
def test_parse_eps_is_exact(text, value):
    eps = parse_eps(text)
    assert eps.value == value and float(eps) == float(value)
    assert str(eps) == str(text).strip()  # the text is kept as written
    assert parse_eps(eps) is not None and parse_eps(eps) == eps


def test_eps_equality_is_by_value_and_zero_needs_allow_zero():
    assert parse_eps("1.58") == parse_eps("79/50") and len({parse_eps("1.58"), parse_eps("79/50")}) == 1
    assert parse_eps("0", allow_zero=True).value == 0
    assert zoo.parse_eps is parse_eps  # one parser (lipzoo 0.1 import path kept)


@pytest.mark.parametrize("bad,error,match", [
    (1.58, TypeError, "eps must be an exact fraction string such as '36/255'.*got float 1.58; quote it"),
    (True, TypeError, "got bool True"),
    ("abc", ValueError, "eps: 'abc' is not a fraction"),
    ("1/0", ValueError, "eps: '1/0' is not a fraction"),
    ("0", ValueError, "eps must be positive, got '0'"),
    ("-36/255", ValueError, "eps must be positive"),
])
def test_parse_eps_errors(bad, error, match):
    with pytest.raises(error, match=match):
        parse_eps(bad)
    if error is ValueError and bad != "0":
        with pytest.raises(error, match="--eps"):
            parse_eps(bad, where="--eps", allow_zero=True)


# -- schema errors -----------------------------------------------------------------------------------
def _set(entry, path, value):
    *parents, last = path
    target = entry
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value


_DELETE = object()
_WEIGHTS = {"repo_id": "lipzoo/crm-mnist-4c3f", "revision": "abc", "sha256": "a" * 64,
            "filename": "model.safetensors", "local": None, "storage_dtype": "float32"}

BAD = [
    (("colour",), "red", r"entry: unknown key\(s\) \['colour'\]"),
    (("metrics",), _DELETE, r"entry: missing key\(s\) \['metrics'\]"),
    (("name",), "CRM MNIST", "name: expected lowercase letters"),
    (("architecture",), "5c3f", "architecture: expected a registered architecture"),
    (("model_args",), [], "model_args: expected a mapping"),
    (("model_args",), {"num_classes": 3}, r"model_args: \['num_classes'\] have their own keys"),
    (("model_args",), {"activation": {1, 2}}, "model_args: must be JSON-serializable"),
    (("dataset",), "imagenet", r"dataset: expected one of \['mnist', 'cifar10', 'tinyimagenet'\]"),
    (("num_classes",), 100, "num_classes: expected 10 for dataset 'mnist', got 100"),
    (("num_classes",), True, "num_classes: expected an int, got True"),
    (("input_shape",), [28, 28], r"input_shape: expected \[channels, height, width\]"),
    (("input_shape", 1), 0, r"input_shape\[1\]: expected an int >= 1, got 0"),
    (("normalization", "mean"), [0.1, 0.2], "normalization.mean: expected a list of 1 numbers"),
    (("normalization", "std"), [0.0], r"normalization.std\[0\]: expected a number > 0, got 0.0"),
    (("normalization", "median"), [0.0], r"normalization: unknown key\(s\) \['median'\]"),
    (("recipe", "loss"), "hinge", r"recipe.loss: expected one of \['crm', 'ce', 'gloro', 'emma', 'hkr'\]"),
    (("recipe", "epochs"), 0, "recipe.epochs: expected an int >= 1, got 0"),
    (("recipe", "batch_size"), 51.2, "recipe.batch_size: expected an int, got 51.2"),
    (("recipe", "power_iterations"), 0, "recipe.power_iterations: expected an int >= 1"),
    (("recipe", "validation_split"), 1.0, "recipe.validation_split: expected a number < 1"),
    (("recipe", "seed"), 0, r"recipe: unknown key\(s\) \['seed'\]"),
    (("recipe", "optimizer", "name"), "lion", "recipe.optimizer.name: expected one of"),
    (("recipe", "optimizer", "lr"), "1e-3", r"recipe.optimizer.lr: expected a number \(PyYAML reads 1e-3 as a "
                                            r"string; write 1.0e-3\)"),
    (("recipe", "optimizer", "lr"), 0.0, "recipe.optimizer.lr: expected a number > 0"),
    (("recipe", "optimizer", "lr"), float("nan"), "recipe.optimizer.lr: expected a finite number"),
    (("recipe", "optimizer", "betas"), [0.9], r"recipe.optimizer.betas: expected \[beta1, beta2\]"),
    (("recipe", "optimizer", "betas"), [0.9, 1.0], r"recipe.optimizer.betas\[1\]: expected a number < 1"),
    (("recipe", "optimizer", "eps"), -1.0, "recipe.optimizer.eps: expected a number > 0"),
    (("recipe", "optimizer", "weight_decay"), -1.0, "recipe.optimizer.weight_decay: expected a number >= 0"),
    (("recipe", "optimizer", "nesterov"), True, r"recipe.optimizer: unknown key\(s\) \['nesterov'\]"),
    (("recipe", "scheduler"), "cosine", "recipe.scheduler: expected a mapping with a name"),
    (("recipe", "scheduler", "name"), "step", "recipe.scheduler.name: expected one of"),
    (("recipe", "scheduler", "start_epoch"), 400, "recipe.scheduler.start_epoch: expected an int < 400"),
    (("recipe", "scheduler", "final_lr"), _DELETE, r"recipe.scheduler: missing key\(s\) \['final_lr'\]"),
    (("recipe", "scheduler"), {"name": "constant", "final_lr": 1.0e-6},
     r"recipe.scheduler: unknown key\(s\) \['final_lr'\]"),
    (("recipe", "augmentation"), "hflip", "recipe.augmentation: expected a list"),
    (("recipe", "augmentation"), ["vflip"], r"recipe.augmentation\[0\] kind: expected one of \['hflip', 'affine', 'crop'\]"),
    (("recipe", "augmentation"), [{"affine": {"degrees": 10}}],
     r"recipe.augmentation\[0\].affine: missing key\(s\) \['translate'\]"),
    (("recipe", "augmentation"), [{"rotate": {}}], r"recipe.augmentation\[0\] kind: expected one of"),
    (("recipe", "augmentation"), [{"crop": {"size": 28, "fill": 0}}], r"recipe.augmentation\[0\].crop: unknown key"),
    (("recipe", "augmentation"), [{"affine": {"degrees": 10, "translate": 0.1}, "x": 1}],
     r"recipe.augmentation\[0\]: expected a name or a one-key mapping"),
    (("recipe", "augmentation"), [{"affine": {"degrees": 500, "translate": 0.1}}],
     r"recipe.augmentation\[0\].affine.degrees: expected a number <= 180"),
    (("recipe", "crm"), None, "recipe.crm: expected a mapping {t, lam, r0, g, warmup_epochs} when recipe.loss is"),
    (("recipe", "crm", "t"), 0.0, "recipe.crm.t: expected a number > 0"),
    (("recipe", "crm", "lam"), -1.0, "recipe.crm.lam: expected a number >= 0"),
    (("recipe", "crm", "r0"), 0, "recipe.crm.r0: expected a number > 0"),
    (("recipe", "crm", "g"), "quadratic", r"recipe.crm.g: expected one of \['linear', 'exp'\]"),
    (("recipe", "crm", "warmup_epochs"), 401, "recipe.crm.warmup_epochs: expected an int <= 400"),
    (("certify",), {"eps": ["1.58"], "norm": 2}, r"certify: unknown key\(s\) \['norm'\]"),
    (("certify", "eps"), [], "certify.eps: expected a non-empty list"),
    (("certify", "eps"), [1.58], r"certify.eps\[0\] must be an exact fraction string"),
    (("certify", "eps"), ["1.58", "x"], r"certify.eps\[1\]: 'x' is not a fraction"),
    (("weights",), {**_WEIGHTS, "url": "x"}, r"weights: unknown key\(s\) \['url'\]"),
    (("weights",), {**_WEIGHTS, "repo_id": "crm"}, "weights.repo_id: expected a Hub repo id 'owner/name'"),
    (("weights",), {**_WEIGHTS, "revision": ""}, "weights.revision: expected a non-empty string"),
    (("weights",), {**_WEIGHTS, "sha256": "A" * 64}, "weights.sha256: expected 64 lowercase hex digits"),
    (("weights",), {**_WEIGHTS, "local": 3}, "weights.local: expected a non-empty string"),
    (("weights",), {**_WEIGHTS, "storage_dtype": "int8"}, "weights.storage_dtype: expected one of"),
    (("metrics",), {1: 2.0}, "metrics: expected null or a mapping with string keys"),
    (("metrics", "clean"), float("nan"), r"metrics.clean must be an accuracy as a fraction in \[0, 1\]"),
    (("metrics", "clean"), 93.45, r"metrics.clean must be an accuracy as a fraction in \[0, 1\].*not 64.16"),
    (("metrics", "eps"), {"1.58": {"robust": 0.5}}, r"metrics.eps\['1.58'\]: unknown key"),
    (("metrics", "eps"), {"abc": {"certified": 0.5}}, r"metrics.eps: 'abc' is not a fraction"),
    (("metrics", "colour"), 1, r"metrics: unknown key\(s\) \['colour'\]"),
]


@pytest.mark.parametrize("path,value,match", BAD, ids=[".".join(map(str, b[0])) for b in BAD])
def test_validate_entry_names_the_bad_key(path, value, match):
    entry = copy.deepcopy(zoo.get_entry("crm-mnist-4c3f"))
    _set(entry, path, value)
    with pytest.raises(ValueError, match=match):
        zoo.validate_entry(entry)


def test_validate_entry_accepts_weights_metrics_and_ce_without_crm():
    entry = zoo.get_entry("crm-mnist-4c3f")
    entry["weights"] = dict(_WEIGHTS)
    entry["metrics"] = {"clean": 0.963, "certified@1.58": 0.634, "epochs_trained": 400}  # lipzoo 0.1 flat layout
    assert zoo.validate_entry(entry) is entry
    meta = zoo.parse_entry(entry)
    assert meta.results.sha256 == _WEIGHTS["sha256"] and meta.results.at("79/50").certified == 0.634
    entry["recipe"]["loss"] = "ce"
    entry["recipe"]["crm"] = None
    zoo.validate_entry(entry)


def test_validate_entry_rejects_non_mapping():
    with pytest.raises(ValueError, match="entry: expected a mapping, got"):
        zoo.validate_entry(["name"])


def test_get_entry_unknown_suggests():
    with pytest.raises(ValueError, match=r"Unknown zoo entry 'crm-mnist-4c3'\. Did you mean 'crm-mnist-4c3f'"):
        zoo.get_entry("crm-mnist-4c3")


@pytest.fixture
def fake_config_dir(tmp_path, monkeypatch):
    """Point the zoo at a temporary folder (caches cleared before and after)."""
    monkeypatch.setattr(zoo, "_config_dir", lambda: tmp_path)
    zoo._entry_files.cache_clear()
    zoo._load.cache_clear()
    yield tmp_path
    zoo._entry_files.cache_clear()
    zoo._load.cache_clear()


def test_file_name_must_equal_entry_name(fake_config_dir):
    source = (CONFIG_DIR / "crm-mnist-4c3f.yaml").read_text()
    (fake_config_dir / "other-name.yaml").write_text(source)
    zoo._entry_files.cache_clear()
    assert zoo.list_entries() == ["other-name"]
    with pytest.raises(ValueError, match="declares name 'crm-mnist-4c3f'; the name must equal the file name"):
        zoo.get_entry("other-name")


def test_invalid_file_is_reported_with_its_path(fake_config_dir):
    source = (CONFIG_DIR / "crm-mnist-4c3f.yaml").read_text().replace("epochs: 400", "epochs: -1")
    (fake_config_dir / "crm-mnist-4c3f.yaml").write_text(source)
    zoo._entry_files.cache_clear()
    with pytest.raises(ValueError, match=r"crm-mnist-4c3f.yaml is invalid: recipe.epochs: expected an int >= 1"):
        zoo.get_entry("crm-mnist-4c3f")


# -- docs --------------------------------------------------------------------------------------------
def test_markdown_table_lists_everything():
    text = zoo.markdown_table()
    for name in M.list_architectures():
        info = M.get_architecture(name)
        assert f"| `{name}` | {'x'.join(map(str, info.input_shape))} | {info.num_classes} |" in text
    for name in ENTRIES:
        arch = zoo.get_entry(name)["architecture"].replace("-", "_")
        assert f"| `{name}` | `lipzoo_{arch}.{zoo.pretrained_tag(name)}` |" in text
    assert "| `4c3f` | 1x28x28 | 10 | 1,974,762 |" in text
    assert "do not edit by hand" in text


def test_markdown_table_shows_metrics(monkeypatch):
    real = zoo.get_metadata

    def with_metrics(name):
        meta = real(name)
        if name == "crm-cifar10-6c2f":
            results = Results.parse({"clean": 0.74821, "certified@36/255": 0.6416, "pgd@36/255": 0.7231}, "c" * 64)
            meta = meta.replace(results=results)
        return meta

    monkeypatch.setattr(zoo, "get_metadata", with_metrics)
    row = next(line for line in zoo.markdown_table().splitlines() if line.startswith("| `crm-cifar10-6c2f`"))
    assert "| 74.82 | 64.16 / — | 72.31 / — |" in row


def test_docs_page_is_generated_from_the_entries():
    assert DOCS.read_text(encoding="utf-8") == zoo.markdown_table(), \
        "docs/models.md is stale: run `python -m lipzoo.models.zoo --markdown > docs/models.md`"


def test_main_cli(capsys):
    assert zoo.main(["--validate"]) == 0
    assert capsys.readouterr().out.split() == ENTRIES
    assert zoo.main(["--markdown"]) == 0
    assert capsys.readouterr().out == zoo.markdown_table()
    with pytest.raises(SystemExit):
        zoo.main([])


def test_one_source_of_truth_for_vocabularies_and_dataset_facts():
    from lipzoo import meta
    from lipzoo.data import DATASETS, dataset_info
    from lipzoo.data.loaders import AUGMENTATIONS
    from lipzoo.losses import G_FUNCTIONS
    from lipzoo.models.base import DATASET_STATS

    assert tuple(AUGMENTATIONS) == meta.AUGMENTATIONS and tuple(G_FUNCTIONS) == meta.G_FUNCTIONS
    assert DATASETS == tuple(meta.DATASETS)
    for name, facts in meta.DATASETS.items():
        assert dataset_info(name)["std"] == facts.std == DATASET_STATS[name]["std"]
    for entry in ENTRIES:  # entries without weights use the dataset's own statistics
        e = zoo.get_entry(entry)
        if e["weights"] is None:
            facts = meta.DATASETS[e["dataset"]]
            assert e["normalization"]["std"] == pytest.approx(list(facts.std), abs=5e-5), entry


def test_resolve_config_is_the_metadata_dict_the_trainer_reads():
    from lipzoo.meta import Metadata
    from lipzoo.train.config import resolve_config, resolve_metadata

    config = resolve_config("crm-cifar10-6c2f", ["recipe.epochs=300", "recipe.crm.lam=10"])
    assert {"name", "architecture", "model_args", "num_classes", "input_shape", "dataset", "normalization", "recipe",
            "certify", "weights", "metrics"} <= set(config)
    assert config["recipe"]["epochs"] == 300 and config["recipe"]["crm"]["lam"] == 10
    assert "name" not in config["recipe"]  # overridden: no longer the shared recipe
    assert resolve_config("crm-cifar10-6c2f")["recipe"]["name"] == "crm-cifar10"
    assert config["certify"]["eps"] == ["36/255", "18/255"]
    assert Metadata.from_dict(config).to_dict() == config  # one layout, round trip
    meta = resolve_metadata("crm-mnist-4c3f", ["recipe.optimizer.lr=1e-4"])
    assert meta.recipe.optimizer.lr == 1e-4 and meta.eps[0].value == Fraction(79, 50)
    with pytest.raises(ValueError, match=r"recipe.crm.g: expected one of \['linear', 'exp'\]"):
        resolve_config("crm-cifar10-6c2f", ["recipe.crm.g=quadratic"])


def test_metadata_for_the_users_own_data():
    meta = zoo.get_metadata("crm-cifar10-6c2f").with_data("flowers5.npz", 5)
    assert (meta.dataset, meta.num_classes, meta.results, meta.weights, meta.name) == ("flowers5.npz", 5, None, None,
                                                                                      None)
    assert meta.parent.name == "crm-cifar10-6c2f" and meta.recipe.name == "crm-cifar10"
    assert Metadata.from_dict(meta.to_dict()) == meta  # a checkpoint config may name any data
    unshipped = next(n for n in zoo.list_entries() if zoo.get_metadata(n).weights is None
                     and zoo.get_metadata(n).input_shape == (3, 32, 32))
    other = zoo.get_metadata(unshipped).with_data("gray.npz", 3, input_shape=[1, 32, 32],
                                                  normalization={"mean": [0.5], "std": [0.2]},
                                                  model_args={"in_chans": 1})
    assert other.input_shape == (1, 32, 32) and other.name == unshipped  # no weights: keeps its name
    assert M.build_model(other).input_shape == (1, 32, 32)
    with pytest.raises(ValueError, match="normalization.mean: expected a list of 1 numbers"):
        zoo.get_metadata("crm-cifar10-6c2f").with_data("x", 2, input_shape=[1, 32, 32],
                                                       normalization={"mean": [0.5, 0.5], "std": [0.2, 0.2]})
