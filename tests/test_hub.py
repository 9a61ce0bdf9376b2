"""lipzoo.hub: save/load round trips, strict and checksum errors, zoo / Hub resolution, push, card.

Offline: the Hub is replaced by monkeypatched ``snapshot_download`` / ``HfApi`` methods, or by a
hand-built Hugging Face cache with ``HF_HUB_OFFLINE=1`` and sockets disabled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import filter_repo_objects
from safetensors import safe_open

import lipzoo
import lipzoo.models as M
import lipzoo.models.factory as factory
import lipzoo.models.zoo as zoo
from lipzoo.hub import attach_results, load, push, read_config, render_card, save_pretrained
from lipzoo.hub.card import certify_command, metric_table
from lipzoo.layers import LTLinear, Normalize
from lipzoo.meta import Metadata
from lipzoo.models import create_model
from lipzoo.models.base import LipschitzSequential

FP16_UNIT_ROUNDOFF = 2.0 ** -11  # relative rounding error of float16 (10 stored mantissa bits, normal range)
BF16_UNIT_ROUNDOFF = 2.0 ** -8  # bfloat16: 7 stored mantissa bits
FILES = ["README.md", "config.json", "model.safetensors"]


def tiny_net(num_classes: int = 3, hidden: int = 8, extra: bool = False, mean=(0.0,), std=(1.0,)):
    """A small registry model (normalization inside, like the zoo): 4 features in."""
    layers = [Normalize(list(mean), list(std)), LTLinear(4, hidden)]
    if extra:
        layers.append(LTLinear(hidden, hidden))
    layers.append(LTLinear(hidden, num_classes, activation=None))
    args = {"hidden": hidden, **({"extra": True} if extra else {})}
    return LipschitzSequential(layers, architecture="tiny", input_shape=(4,), model_args=args)


@pytest.fixture
def built(monkeypatch):
    """Register the architecture ``tiny`` (a scratch registry); records every build's kwargs."""
    calls = []
    monkeypatch.setattr(M.REGISTRY, "_archs", dict(M.REGISTRY._archs))
    monkeypatch.setattr(M.REGISTRY, "_listeners", [])

    def lipzoo_tiny(**kwargs):
        calls.append(kwargs)
        return tiny_net(**kwargs)

    M.register_model(lipzoo_tiny, num_classes=3, input_shape=(4,))
    return calls


def make_config(**overrides):
    config = {"architecture": "tiny", "model_args": {"hidden": 8}, "num_classes": 3, "input_shape": [4],
              "normalization": {"mean": [0.5], "std": [0.25]}, "dataset": "toy", "eps": ["36/255", "1.58"]}
    config.update(overrides)
    return config


def make_report(sha256=None, **metrics):
    """What `lipzoo certify` writes to report.json (the parts attach_results reads)."""
    report = {"model": "x", "num_samples": 100, "eps": ["36/255", "1.58"], "attack": {"steps": 20, "restarts": 1},
              "bound": {"method": "liplt", "mode": "pairwise", "guarantee": "exact", "guaranteed": True,
                        "pairwise_mean": 3.25, "seconds": 1.0},
              "metrics": {"clean": 0.9627, "certified@36/255": 0.6416, "certified@1.58": 0.6337,
                          "pgd@36/255": 0.7231, "pgd@1.58": 0.8804, "consistency_violations@36/255": 0, **metrics}}
    if sha256 is not None:
        report["sha256"] = sha256
    return report


def make_model(seed: int = 0, **kwargs) -> LipschitzSequential:
    torch.manual_seed(seed)
    return tiny_net(mean=[0.5], std=[0.25], **kwargs).eval()


@pytest.fixture
def saved(tmp_path, built):
    model = make_model()
    directory = save_pretrained(model, tmp_path / "ckpt", config=make_config())
    return model, directory


def edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_zoo(monkeypatch):
    """Add temporary zoo entries on top of the real ones; returns the dict to fill (entry dicts)."""
    entries: dict[str, dict] = {}
    real_meta, real_list = zoo.get_metadata, zoo.list_entries
    monkeypatch.setattr(zoo, "get_metadata",
                        lambda name: Metadata.from_dict(entries[name]) if name in entries else real_meta(name))
    monkeypatch.setattr(zoo, "list_entries", lambda: sorted({*real_list(), *entries}))
    return entries


def zoo_entry(name: str, weights) -> dict:
    return {"name": name, **make_config(), "certify": {"eps": ["36/255"]}, "weights": weights}


def weights_ref(sha256, *, repo_id="lipzoo/fake-tiny", revision=None, local=None, filename="model.safetensors"):
    return {"repo_id": repo_id, "revision": revision, "sha256": sha256, "filename": filename, "local": local,
            "storage_dtype": "float32"}


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"snapshot_download called with {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


# ---- save / load round trips -------------------------------------------------------------------

def test_round_trip_float32(saved, built):
    model, directory = saved
    assert sorted(p.name for p in directory.iterdir()) == FILES
    loaded = load(directory)
    x = torch.rand(5, 4)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not loaded.training
    assert built[-1] == {"num_classes": 3, "hidden": 8, "mean": [0.5], "std": [0.25]}
    config = json.loads((directory / "config.json").read_text())
    assert loaded.lipzoo_config == config
    assert config["sha256"] == file_sha256(directory / "model.safetensors")
    assert config["eps"] == ["36/255", "1.58"] and config["storage_dtype"] == "float32"
    assert config["metrics"] is None and "parent" not in config  # nothing measured yet, nothing inherited
    assert config["lipzoo_version"] == lipzoo.__version__
    with safe_open(directory / "model.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    # saving the same tensors again gives the same bytes, so a pinned sha256 survives a re-save
    again = save_pretrained(model, directory.parent / "again", config=make_config())
    assert file_sha256(again / "model.safetensors") == config["sha256"]


@pytest.mark.parametrize("storage_dtype, unit_roundoff", [("float16", FP16_UNIT_ROUNDOFF),
                                                          ("bfloat16", BF16_UNIT_ROUNDOFF)])
def test_round_trip_half_storage(tmp_path, built, storage_dtype, unit_roundoff):
    model = make_model()
    directory = save_pretrained(model, tmp_path / "half", config=make_config(), storage_dtype=storage_dtype)
    with safe_open(directory / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("1.weight").dtype == getattr(torch, storage_dtype)
    loaded = load(directory)
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == torch.float32
        assert torch.all((got - value).abs() <= unit_roundoff * value.abs()), key
        assert not torch.equal(got, value) or key in ("0.mean", "0.std")  # really rounded, not a copy
    assert json.loads((directory / "config.json").read_text())["storage_dtype"] == storage_dtype


def test_float16_overflow_is_refused(tmp_path, built):
    model = make_model()
    with torch.no_grad():
        model[1].weight[0, 0] = 1e6
    with pytest.raises(ValueError, match=r"state_dict\['1.weight'\] overflows float16"):
        save_pretrained(model, tmp_path / "x", config=make_config(), storage_dtype="float16")


def test_map_location_moves_model(saved):
    loaded = load(saved[1], map_location="meta")
    assert all(p.device.type == "meta" for p in loaded.parameters())


# ---- strict loading --------------------------------------------------------------------------------

def test_missing_keys_are_named(saved):
    edit_config(saved[1], model_args={"hidden": 8, "extra": True})
    with pytest.raises(ValueError, match=r"missing keys \['3.bias', '3.weight'\], unexpected keys \[\]"):
        load(saved[1])


def test_unexpected_keys_are_named(tmp_path, built):
    directory = save_pretrained(make_model(extra=True), tmp_path / "x",
                                config=make_config(model_args={"hidden": 8, "extra": True}))
    edit_config(directory, model_args={"hidden": 8})
    with pytest.raises(ValueError, match=r"missing keys \[\], unexpected keys \['3.bias', '3.weight'\]"):
        load(directory)


def test_shape_mismatch_is_named(saved):
    edit_config(saved[1], model_args={"hidden": 6})
    expected = (r"shape mismatch for '1.weight': file has \(8, 4\), the model expects \(6, 4\); "
                r"'1.bias': file has \(8,\), the model expects \(6,\); '2.weight'")
    with pytest.raises(ValueError, match=expected):
        load(saved[1])


# ---- damaged files -----------------------------------------------------------------------------------

def test_truncated_weights_fail_the_checksum(saved):
    weights = saved[1] / "model.safetensors"
    expected = file_sha256(weights)
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"sha256 is {file_sha256(weights)}, but .*config.json expects {expected}"):
        load(saved[1])


def test_truncated_weights_with_matching_hash_name_the_file(saved):
    weights = saved[1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    edit_config(saved[1], sha256=file_sha256(weights))  # a checkpoint saved from a truncated file
    with pytest.raises(ValueError, match=r"Cannot read .*model.safetensors: .*truncated"):
        load(saved[1])


def test_checksum_mismatch_names_both_hashes(saved):
    weights = saved[1] / "model.safetensors"
    expected = file_sha256(weights)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"Checksum mismatch .*sha256 is {file_sha256(weights)}.*{expected}"):
        load(saved[1])


@pytest.mark.parametrize("text, message", [
    ("{not json", r"Invalid .*config.json: not valid JSON"),
    ("[1, 2]", r"Invalid .*config.json: expected a JSON object, got list"),
    ('{"architecture": "tiny"}', r"Invalid .*config.json: missing key\(s\) \['num_classes', 'input_shape', 'sha256'\]"),
])
def test_invalid_config_json(saved, text, message):
    (saved[1] / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        load(saved[1])


def test_folder_without_files(tmp_path, saved):
    with pytest.raises(ValueError, match="No config.json in"):
        load(tmp_path)
    (saved[1] / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="No model.safetensors in"):
        load(saved[1])


def test_load_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="Checkpoint directory .*missing.* does not exist"):
        load(tmp_path / "missing")
    with pytest.raises(TypeError, match="name_or_path must be a str or path; got int"):
        load(3)


# ---- save_pretrained validation ------------------------------------------------------------------

@pytest.mark.parametrize("config, error, message", [
    ({"architecture": "tiny"}, ValueError, r"missing required key\(s\) \['num_classes', 'input_shape'\]"),
    (make_config(eps=[0.1411]), ValueError, r"certify.eps\[0\] must be an exact fraction string .*got float 0.1411"),
    (make_config(eps=["36/two"]), ValueError, "'36/two' is not a fraction"),
    (make_config(metrics={"clean": 0.9627}), ValueError, "metrics: measured numbers must name the sha256 .*--attach"),
    (make_config(metrics={"sha256": "a" * 64, "clean": 96.27}), ValueError,
     r"metrics.clean must be an accuracy as a fraction"),
    (make_config(metrics={"sha256": "a" * 64, "eps": {"1.58": {"certified": "63"}}}), ValueError,
     r"metrics\['1.58'\].certified must be an accuracy"),
    (make_config(metrics={"sha256": "a" * 64, "pgd@1/0": 0.5}), ValueError, "'1/0' is not a fraction"),
    (make_config(metrics=[1]), ValueError, "metrics: expected null or a mapping with string keys"),
    (make_config(num_classes=0), ValueError, "num_classes: expected an int >= 1, got 0"),
    (make_config(input_shape=[4, 0]), ValueError, r"input_shape\[1\]: expected an int >= 1, got 0"),
    (make_config(architecture=""), ValueError, "architecture: expected a non-empty string"),
    (make_config(architecture="nope"), ValueError,
     "the config does not rebuild a model: The config names architecture 'nope', which is not registered"),
    (make_config(num_classes=5), ValueError, r"builds a different model than the one given: .*'2.weight': model "
                                             r"\(3, 8\), config \(5, 8\)"),
    (make_config(model_args={"hidden": 8, "extra": True}), ValueError, r"missing keys \['3.bias', '3.weight'\]"),
    (make_config(normalization={"mean": [0.1], "std": [0.25]}), ValueError,
     "config normalization .* differs from the model's Normalize layer"),
    (make_config(normalization=[0.5]), ValueError, "normalization: expected a mapping"),
    (make_config(extra=torch.ones(2)), ValueError, "config: must be JSON-serializable"),
    ([("architecture", "tiny")], TypeError, "config must be a dict or a lipzoo.meta.Metadata; got list"),
])
def test_save_rejects_bad_config(tmp_path, built, config, error, message):
    with pytest.raises(error, match=message):
        save_pretrained(make_model(), tmp_path, config=config)
    assert not (tmp_path / "model.safetensors").exists()


def test_save_rejects_bad_arguments(tmp_path, built):
    with pytest.raises(ValueError, match=r"must be one of \['float32', 'float16', 'bfloat16'\]; got 'half'"):
        save_pretrained(make_model(), tmp_path, config=make_config(), storage_dtype="half")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module; got dict"):
        save_pretrained({}, tmp_path, config=make_config())


def test_resave_replaces_computed_fields(tmp_path, saved):
    model, directory = saved
    config = dict(load(directory).lipzoo_config, sha256="0" * 64, storage_dtype="float16")
    again = save_pretrained(model, tmp_path / "again", config=config)
    assert read_config(again)["sha256"] == file_sha256(again / "model.safetensors")
    assert read_config(again)["storage_dtype"] == "float32"


# ---- names: zoo entries, Hub repos ----------------------------------------------------------------

def test_zoo_entry_with_local_weights(tmp_path, monkeypatch, saved, fake_zoo, no_download):
    model, directory = saved
    shutil.copytree(directory, tmp_path / "pkg" / "weights" / "fake-tiny")
    monkeypatch.setattr(factory, "_PACKAGE_DIR", tmp_path / "pkg")
    sha = file_sha256(directory / "model.safetensors")
    fake_zoo["crm-fake-tiny"] = zoo_entry("crm-fake-tiny", weights_ref(sha, revision="v1", local="weights/fake-tiny"))
    x = torch.rand(3, 4)
    torch.testing.assert_close(load("crm-fake-tiny")(x), model(x), rtol=0, atol=0)


def test_zoo_entry_pin_is_checked(tmp_path, monkeypatch, saved, fake_zoo, no_download):
    monkeypatch.setattr(factory, "_PACKAGE_DIR", saved[1].parent)
    fake_zoo["crm-fake-tiny"] = zoo_entry("crm-fake-tiny", weights_ref("a" * 64, local="ckpt"))
    actual = file_sha256(saved[1] / "model.safetensors")
    with pytest.raises(ValueError, match=f"sha256 is {actual}, but the zoo entry expects {'a' * 64}"):
        load("crm-fake-tiny")


def test_zoo_entry_without_local_copy_downloads_from_its_repo(tmp_path, monkeypatch, fake_zoo, no_download):
    monkeypatch.setattr(factory, "_PACKAGE_DIR", tmp_path)
    fake_zoo["crm-fake-tiny"] = zoo_entry("crm-fake-tiny", weights_ref("a" * 64, local="weights/absent"))
    with pytest.raises(AssertionError, match=r"snapshot_download called with \('lipzoo/fake-tiny',\)"):
        load("crm-fake-tiny")


def test_zoo_entry_with_foreign_filename(fake_zoo, no_download):
    fake_zoo["crm-fake-tiny"] = zoo_entry("crm-fake-tiny", weights_ref("a" * 64, repo_id="o/r",
                                                                        filename="pytorch_model.bin"))
    with pytest.raises(ValueError, match="weights.filename is 'pytorch_model.bin', but lipzoo checkpoints store"):
        load("crm-fake-tiny")


def test_zoo_entry_downloads_pinned_revision(monkeypatch, saved, fake_zoo):
    seen = []

    def fake_snapshot_download(repo_id, **kwargs):
        seen.append((repo_id, kwargs["revision"], kwargs["local_files_only"]))
        assert kwargs["allow_patterns"] == ["model.safetensors", "config.json", "README.md", "certificate.json"]
        return str(saved[1])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    sha = file_sha256(saved[1] / "model.safetensors")
    fake_zoo["crm-fake-tiny"] = zoo_entry("crm-fake-tiny", weights_ref(sha, revision="3f2c"))
    load("crm-fake-tiny")
    load("crm-fake-tiny", revision="v2")  # an explicit revision wins over the pin
    load("someone/tiny-repo", revision="main")
    assert seen == [("lipzoo/fake-tiny", "3f2c", False), ("lipzoo/fake-tiny", "v2", False),
                    ("someone/tiny-repo", "main", False)]


def test_explicit_revision_skips_entry_pin(monkeypatch, saved, fake_zoo, caplog):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(saved[1]))
    fake_zoo["crm-fake-tiny"] = zoo_entry("crm-fake-tiny", weights_ref("b" * 64, revision="v1"))
    with pytest.raises(ValueError, match="the zoo entry expects"):
        load("crm-fake-tiny")
    load("crm-fake-tiny", revision="v2")  # a different revision cannot match the pin of v1
    assert "only the config.json checksum is verified" in caplog.text


def test_entry_without_weights(fake_zoo, built):
    fake_zoo["crm-fake-tiny"] = zoo_entry("crm-fake-tiny", None)
    with pytest.raises(ValueError, match=r"'crm-fake-tiny' has no trained weights yet.*`lipzoo train crm-fake-tiny`"):
        load("crm-fake-tiny")


def test_unknown_name_suggests_entries(fake_zoo, built, no_download):
    fake_zoo["crm-fake-tiny"] = zoo_entry("crm-fake-tiny", None)
    with pytest.raises(ValueError, match=r"Unknown model 'crm-fak-tiny'.*Did you mean 'crm-fake-tiny'"):
        load("crm-fak-tiny")
    with pytest.raises(ValueError, match=r"Unknown model 'zzzzzzzz': .*Hub repo id \('owner/name' or 'hf-hub:owner/name'\)\..* See"):
        load("zzzzzzzz")


def _fake_hf_cache(cache: Path, repo_id: str, source: Path) -> str:
    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    shutil.copytree(source, storage / "snapshots" / commit)
    return commit


def test_offline_mode_uses_cache_without_network(tmp_path, monkeypatch, saved):
    cache = tmp_path / "hf-cache"
    _fake_hf_cache(cache, "owner/tiny", saved[1])
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: load must still honour it

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    x = torch.rand(2, 4)
    torch.testing.assert_close(load("owner/tiny")(x), saved[0](x), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match=r"'owner/absent' is not in the local Hugging Face cache and offline mode \(HF_HUB_OFFLINE\) prevents"):
        load("owner/absent")



def test_not_cached_messages_name_the_cause_and_the_fix(monkeypatch):
    """huggingface_hub raises LocalEntryNotFoundError for three causes; each gets its own sentence and fix."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    def not_cached(repo_id, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub\n(more)")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    head = r"^Hub repo 'owner/tiny' is not in the local Hugging Face cache and "
    with pytest.raises(FileNotFoundError, match=head + r"the Hub cannot be reached to download it\. Fix: check the "
                       r"network and retry \(one download fills the cache\), or pass a local checkpoint directory\.$"
                       ) as err:
        load("owner/tiny")  # online, but the Hub did not answer: huggingface_hub fell back to the cache
    assert "\n" not in str(err.value) and "reached prevents" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=head + r"local_files_only=True forbids downloading it\. Fix: drop "
                       "local_files_only and retry"):
        load("owner/tiny", local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=head + r"offline mode \(HF_HUB_OFFLINE\) prevents the download\. "
                       "Fix: unset HF_HUB_OFFLINE and retry"):
        load("owner/tiny")

def test_hub_repo_not_found_is_a_value_error(monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    def missing(repo_id, **kwargs):
        raise RepositoryNotFoundError("404 Repository Not Found",
                                      response=SimpleNamespace(headers={}, request=None, status_code=404))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", missing)
    with pytest.raises(ValueError, match=r"^Hub repo 'owner/nope' not found \(or private: pass token=...\)"):
        load("owner/nope")


def test_network_errors_are_one_line_with_the_fix(monkeypatch):
    def unreachable(repo_id, **kwargs):
        raise ConnectionError("HTTPSConnectionPool(host='huggingface.co'): Max retries exceeded\n  (long trace)")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(FileNotFoundError, match="Downloading Hub repo 'owner/tiny' failed .*Fix: check the network"
                       ) as err:
        load("owner/tiny")
    assert "\n" not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__

    class ConnectError(Exception):  # what httpx (huggingface_hub >= 1.0) raises
        __module__ = "httpx"

    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: (_ for _ in ()).throw(ConnectError("[Errno -3] name resolution")))
    with pytest.raises(FileNotFoundError, match=r"failed \(ConnectError: \[Errno -3\] name resolution\)\. Fix:"):
        load("owner/tiny")


def test_hub_options_and_prefix_reach_snapshot_download(monkeypatch, saved):
    seen = []

    def fake(repo_id, **kwargs):
        seen.append((repo_id, {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only",
                                                       "force_download")}))
        return str(saved[1])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    load("hf-hub:owner/tiny", revision="v1", cache_dir="/c", token="hf_x", force_download=True)
    load("owner/tiny", local_files_only=True)
    assert seen == [("owner/tiny", {"revision": "v1", "cache_dir": "/c", "token": "hf_x", "local_files_only": False,
                                    "force_download": True}),
                    ("owner/tiny", {"revision": None, "cache_dir": None, "token": None, "local_files_only": True,
                                    "force_download": False})]
    assert create_model("hf-hub:owner/tiny").lipzoo_config["sha256"] == file_sha256(saved[1] / "model.safetensors")


@pytest.mark.parametrize("name", ["./runs/final", "runs/A/final", "~/ckpt", "model.safetensors"])
def test_a_local_path_is_never_taken_for_a_repo_id(name, no_download):
    with pytest.raises(ValueError, match="looks like a local path but is not a checkpoint directory"):
        load(name)


def test_create_model_pretrained_goes_through_load(tmp_path, monkeypatch, saved, fake_zoo, no_download, caplog):
    monkeypatch.setattr(factory, "_PACKAGE_DIR", saved[1].parent)
    sha = file_sha256(saved[1] / "model.safetensors")
    attach_results(saved[1], make_report())
    fake_zoo["crm-fake-tiny"] = zoo_entry("crm-fake-tiny", weights_ref(sha, local="ckpt"))
    model = create_model("crm-fake-tiny", pretrained=True)
    assert model.lipzoo_config["sha256"] == sha and model.lipzoo_config["metrics"]["sha256"] == sha
    assert create_model("crm-fake-tiny", pretrained=True, num_classes=3).lipzoo_config["metrics"] is not None
    assert create_model("tiny.crm_fake", pretrained=True).lipzoo_config["sha256"] == sha  # architecture.tag
    new = create_model("crm-fake-tiny", pretrained=True, num_classes=5)
    assert new.num_classes == 5 and new(torch.rand(2, 4)).shape == (2, 5)
    assert new.lipzoo_config["metrics"] is None and new.lipzoo_config["parent"]["sha256"] == sha
    assert "no longer apply" in caplog.text
    with pytest.raises(ValueError, match=r"got builder arguments \{'hidden': 6\} that differ"):
        create_model("crm-fake-tiny", pretrained=True, hidden=6)


@pytest.mark.parametrize("architecture", ["6c2f", "lt-res-s"])
def test_real_architecture_round_trip(tmp_path, architecture):
    """Registered lipzoo architectures through the real registry (no monkeypatching)."""
    torch.manual_seed(0)
    model = create_model(architecture, num_classes=7, mean=[0.25, 0.5, 0.75], std=[0.5, 0.25, 0.125]).eval()
    with torch.no_grad():  # move every parameter off its initial value, so a fresh build cannot pass
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    config = {"architecture": architecture, "num_classes": 7, "input_shape": list(model.input_shape),
              "model_args": model.model_args, "normalization": {"mean": [0.25, 0.5, 0.75], "std": [0.5, 0.25, 0.125]},
              "dataset": "cifar10", "eps": ["36/255"]}
    loaded = load(save_pretrained(model, tmp_path / architecture, config=config))
    x = torch.rand(2, *model.input_shape)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded[0].std, torch.tensor([0.5, 0.25, 0.125]), rtol=0, atol=0)


# ---- push ------------------------------------------------------------------------------------------

@pytest.fixture
def fake_hfapi(monkeypatch):
    calls = []

    def record(method):
        def fake(self, *args, **kwargs):
            calls.append((method, self.token, args, kwargs))
            return huggingface_hub.CommitInfo(commit_url="https://huggingface.co/o/r/commit/abc",
                                              commit_message="m", commit_description="", oid="abc") \
                if method == "upload_folder" else None
        return fake

    for method in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(huggingface_hub.HfApi, method, record(method))
    return calls


def test_push_uploads_exactly_the_checkpoint(saved, fake_hfapi):
    directory = saved[1]
    (directory / "train.log").write_text("not part of the checkpoint")
    info = push(directory, "owner/tiny", token="hf_x", revision="v1", private=True, commit_message="c")
    assert info.oid == "abc"
    assert [c[0] for c in fake_hfapi] == ["create_repo", "create_branch", "upload_folder"]
    assert all(c[1] == "hf_x" for c in fake_hfapi)
    assert fake_hfapi[0][2:] == (("owner/tiny",), {"exist_ok": True, "private": True})
    assert fake_hfapi[1][2:] == (("owner/tiny",), {"branch": "v1", "exist_ok": True})
    upload = fake_hfapi[2][3]
    assert (upload["repo_id"], upload["folder_path"], upload["revision"], upload["commit_message"]) == \
        ("owner/tiny", str(directory), "v1", "c")
    uploaded = list(filter_repo_objects(sorted(p.name for p in directory.iterdir()),
                                        allow_patterns=upload["allow_patterns"]))
    assert uploaded == FILES


def test_push_main_creates_no_branch(saved, fake_hfapi):
    push(saved[1], "owner/tiny")
    assert [c[0] for c in fake_hfapi] == ["create_repo", "upload_folder"]
    assert fake_hfapi[0][3] == {"exist_ok": True, "private": False} and fake_hfapi[1][3]["revision"] is None


def test_push_refuses_bad_folders(tmp_path, saved, fake_hfapi):
    with pytest.raises(ValueError, match="push: directory .*nowhere.* does not exist"):
        push(tmp_path / "nowhere", "owner/tiny")
    with pytest.raises(ValueError, match="push: repo_id must look like 'owner/name'; got 'tiny'"):
        push(saved[1], "tiny")
    weights = saved[1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"!")
    with pytest.raises(ValueError, match="Checksum mismatch"):
        push(saved[1], "owner/tiny")
    (saved[1] / "config.json").unlink()
    with pytest.raises(ValueError, match=r"lacks \['config.json'\]"):
        push(saved[1], "owner/tiny")
    assert fake_hfapi == []



def _http_error(cls, status: int, text: str = "Client Error"):
    """A huggingface_hub HTTP error as the Hub's answer ``status`` would raise it (no network)."""
    return cls(f"{status} {text}\n\n(long server message)",
               response=SimpleNamespace(status_code=status, headers={}, request=None))


class ConnectError(Exception):  # what httpx (huggingface_hub >= 1.0) raises without a network
    __module__ = "httpx"


def _push_failures():
    from huggingface_hub.errors import (HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    return [  # (what the Hub client raises, which method raises it, the one-line error push gives)
        (ConnectError("[Errno -3] Temporary failure in name resolution"), "create_repo", ConnectionError,
         r"^push: the Hub cannot be reached to upload to 'owner/tiny' \(ConnectError: \[Errno -3\] Temporary "
         r"failure in name resolution\)\. Fix: check the network and retry\.$"),
        (OSError("Network is unreachable"), "create_repo", ConnectionError, r"cannot be reached .*Fix: check the network"),
        (OfflineModeIsEnabled("offline"), "create_repo", ConnectionError,
         r"^push: cannot upload to 'owner/tiny': offline mode \(HF_HUB_OFFLINE\) is set\. Fix: unset HF_HUB_OFFLINE"),
        (LocalTokenNotFoundError("no token"), "create_repo", PermissionError,
         r"^push: no Hugging Face token to upload to 'owner/tiny'\. Fix: pass --token \(token=\.\.\.\), set "
         r"HF_TOKEN or run `hf auth login`"),
        (_http_error(HfHubHTTPError, 401, "Unauthorized"), "create_repo", PermissionError,
         r"^push: not allowed to upload to 'owner/tiny' \(401: the token was refused\)\. Fix: pass --token"),
        (_http_error(HfHubHTTPError, 403, "Forbidden"), "create_repo", PermissionError,
         r"\(403: this token may not write there\)\. Fix: pass --token"),
        (_http_error(RepositoryNotFoundError, 404), "upload_folder", ValueError,
         r"^push: Hub repo 'owner/tiny' not found, or not visible to this token\. Fix: check the repo id"),
        (_http_error(RevisionNotFoundError, 404), "upload_folder", ValueError,
         r"^push: revision 'v1' not found in 'owner/tiny'\. Fix: check --revision"),
        (_http_error(HfHubHTTPError, 500, "Server Error"), "upload_folder", ValueError,
         r"^push: the Hub refused the upload to 'owner/tiny': 500 Server Error\. Fix:"),
    ]


@pytest.mark.parametrize("case", range(len(_push_failures())))
def test_push_errors_are_one_line_with_the_fix(saved, fake_hfapi, monkeypatch, case):
    raised, method, error, message = _push_failures()[case]

    def fail(self, *args, **kwargs):
        raise raised

    monkeypatch.setattr(huggingface_hub.HfApi, method, fail)
    with pytest.raises(error, match=message) as err:
        push(saved[1], "owner/tiny", revision="v1")
    assert "\n" not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__


def test_push_lets_unknown_errors_through(saved, fake_hfapi, monkeypatch):
    def bug(self, *args, **kwargs):
        raise KeyError("a bug, not the network")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", bug)
    with pytest.raises(KeyError, match="a bug"):
        push(saved[1], "owner/tiny")


def test_one_name_for_the_revision(saved, fake_hfapi):
    """push(revision=), push_to_hub(revision=) and save_pretrained(push_to_hub=True, revision=): one name;
    push_to_hub's lipzoo 0.1 ``branch=`` still works, with a DeprecationWarning."""
    import warnings

    model = load(saved[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        model.push_to_hub("owner/tiny", revision="v1")
    assert [c[0] for c in fake_hfapi] == ["create_repo", "create_branch", "upload_folder"]
    assert fake_hfapi[1][3]["branch"] == "v1" and fake_hfapi[2][3]["revision"] == "v1"
    fake_hfapi.clear()
    with pytest.warns(DeprecationWarning, match=r"push_to_hub\(branch=\.\.\.\) is deprecated .*pass revision="):
        model.push_to_hub("owner/tiny", branch="v2")
    assert fake_hfapi[1][3]["branch"] == "v2" and fake_hfapi[2][3]["revision"] == "v2"
    with pytest.warns(DeprecationWarning, match=r"save_pretrained\(branch=\.\.\.\) is deprecated"):
        model.save_pretrained(saved[1].parent / "again", push_to_hub=True, repo_id="owner/tiny", branch="v3")
    assert fake_hfapi[-1][3]["revision"] == "v3"
    with pytest.raises(TypeError, match=r"push_to_hub: got revision='v1' and branch='v2'; pass revision= only"):
        model.push_to_hub("owner/tiny", revision="v1", branch="v2")
    import inspect

    from lipzoo.cli import build_parser

    for function in (push, LipschitzSequential.push_to_hub, load, LipschitzSequential.from_pretrained):
        assert "revision" in inspect.signature(function).parameters, function
    args = build_parser().parse_args(["push", "folder", "--repo-id", "o/r", "--revision", "v1"])
    assert args.revision == "v1"


# ---- model card ------------------------------------------------------------------------------------

def test_card_shows_numbers_only_once_attached(tmp_path, built):
    card = {"target": "owner/tiny", "paper_metrics": {"clean": 0.7482, "certified@36/255": 0.6416},
            "paper_source": "Table 1",
            "recipe": {"epochs": 10, "batch_size": 256}, "epochs": 7, "hardware": "1x H100",
            "training_time": 3725}
    directory = save_pretrained(make_model(), tmp_path / "c", config=make_config(), card=card)
    text = (directory / "README.md").read_text()
    # "toy" is no dataset lipzoo knows: the command names it (and the card says to give its path)
    assert "Not certified yet" in text and \
        "lipzoo certify owner/tiny --data toy --eps 36/255 --eps 1.58 --attach" in text and "`--data toy`" in text
    assert "74.82" not in text and "## Reproduce" not in text  # no paper table without our own numbers
    meta = attach_results(directory, make_report())
    assert meta.results.sha256 == read_config(directory)["sha256"] == file_sha256(directory / "model.safetensors")
    text = (directory / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "lipzoo" and front["datasets"] == ["toy"] and front["metrics"] == ["accuracy"]
    assert {"lipzoo", "certified-robustness", "tiny"} <= set(front["tags"])
    assert "| 36/255 | 96.27 | 72.31 | 64.16 | 74.82 | – | 64.16 |" in text
    assert "| 1.58 | 96.27 | 88.04 | 63.37 | 74.82 | – | – |" in text
    assert "on 100 images of the test set" in text
    assert "lipzoo certify owner/tiny --data toy --eps 36/255 --eps 1.58 --attack-steps 20 --restarts 1" in text
    assert "epochs actually trained: 7 (recipe: 10)" in text
    assert "training time: 1h 02m 05s" in text and "1x H100" in text
    assert "- guarantee: `exact`" in text
    loaded = load(directory)
    assert loaded.lipzoo_config["metrics"]["eps"]["36/255"]["certified"] == 0.6416
    assert loaded.lipzoo_config["bound"]["guarantee"] == "exact"


def test_attach_checks_the_weights(tmp_path, saved):
    with pytest.raises(ValueError, match="the report was measured on weights with sha256 b{64}"):
        attach_results(saved[1], make_report(sha256="b" * 64))
    attach_results(saved[1], make_report(sha256=file_sha256(saved[1] / "model.safetensors")))
    weights = saved[1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"!")
    with pytest.raises(ValueError, match="Checksum mismatch"):
        attach_results(saved[1], make_report())
    with pytest.raises(ValueError, match="No config.json in"):
        attach_results(tmp_path, make_report())


def test_card_without_extras_and_float16_note():
    config = dict(make_config(dataset="cifar10"), sha256="f" * 64, storage_dtype="float16", name="crm-x", metrics=None)
    text = render_card(config)  # a dataset lipzoo knows: `lipzoo certify` finds it without --data
    assert "Not certified yet" in text and "lipzoo certify crm-x --eps 36/255 --eps 1.58 --attach" in text
    assert "stored in float16" not in text and "--data" not in text
    config["metrics"] = {"sha256": "f" * 64, "clean": 0.5, "eps": {"36/255": {"certified": 0.25}}}
    text = render_card(config)
    assert "| 36/255 | 50.00 | – | 25.00 |" in text and "| 1.58 | 50.00 | – | – |" in text
    assert "lipzoo certify crm-x --eps 36/255 --eps 1.58" in text
    assert "stored in float16" in text


def test_metric_table_matches_eps_by_value():
    table = metric_table({"clean": 0.5, "certified@79/50": 0.25, "pgd@1.58": 0.4, "pgd@2": 0.1}, ["1.58"])
    assert table == {"1.58": {"clean": 0.5, "pgd": 0.4, "certified": 0.25},
                     "2": {"clean": 0.5, "pgd": 0.1, "certified": None}}
    assert certify_command({"eps": ["36/255"], "dataset": "mnist"}, "a b") == "lipzoo certify 'a b' --eps 36/255"


def test_certify_command_parses_with_the_cli():
    from lipzoo.cli import build_parser

    command = certify_command({"eps": ["36/255", "72/255"]}, "owner/crm-cifar10-6c2f")
    args = build_parser().parse_args(command.split()[1:])
    assert (args.command, args.model, args.eps) == ("certify", "owner/crm-cifar10-6c2f", ["36/255", "72/255"])



def _card_commands(text: str) -> list[list[str]]:
    """The ``lipzoo`` command lines in a card's bash blocks, split as a shell splits them."""
    blocks = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith("lipzoo ")]


def _parse_as_printed(command: list[str]):
    """The real command line's parse of a card's command: an unknown flag or an invalid value fails."""
    from lipzoo.cli import build_parser

    assert command[:2] == ["lipzoo", "certify"], command
    parser = build_parser()
    try:
        args = parser.parse_args(command[1:])
    except SystemExit:
        pytest.fail(f"the card's command does not parse: {shlex.join(command)}")
    # argparse takes an unambiguous prefix (--attack-step); the card must spell each flag in full
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    flags = {s for a in commands.choices["certify"]._actions for s in a.option_strings}
    assert {t for t in command if t.startswith("--")} <= flags, shlex.join(command)
    return args


def _card_radii(text: str) -> set:
    """The ε of the card's results table (first cell of each row that is a radius), by value."""
    from lipzoo.meta import parse_eps

    radii = set()
    for line in text.splitlines():
        cell = line.split("|")[1].strip() if line.startswith("| ") else ""
        try:
            radii.add(parse_eps(cell))
        except ValueError:
            continue
    return radii


def _radii(args) -> set:
    from lipzoo.meta import parse_eps

    return {parse_eps(e) for e in args.eps or []}


def test_card_commands_run_as_printed_for_a_derived_checkpoint_on_its_own_data(tmp_path, built):
    """A fine-tuned checkpoint trained on the user's file: both commands name that data and every radius."""
    from lipzoo.meta import parse_eps

    parent = {"name": "crm-mnist-4c3f", "sha256": "a" * 64}
    directory = save_pretrained(make_model(), tmp_path / "tuned",
                                config=make_config(dataset="my-digits.npz", parent=parent))
    text = (directory / "README.md").read_text()
    assert "Derived from `crm-mnist-4c3f`" in text and "Not certified yet" in text
    [command] = _card_commands(text)
    args = _parse_as_printed(command)
    assert (args.model, args.data, args.attach) == ("path/to/this/checkpoint", "my-digits.npz", True)
    assert _radii(args) == {parse_eps("36/255"), parse_eps("1.58")}  # the config's radii, each one
    assert "`--data my-digits.npz` is the data the run used" in text

    # certified on one more radius than the config names (`--eps 72/255` on the command line)
    attach_results(directory, make_report(**{"certified@72/255": 0.5, "pgd@72/255": 0.6}))
    text = (directory / "README.md").read_text()
    [command] = _card_commands(text)
    args = _parse_as_printed(command)
    assert _card_radii(text) == {parse_eps(e) for e in ("36/255", "1.58", "72/255")}
    assert _radii(args) == _card_radii(text)  # every radius of the table, none missing
    assert (args.model, args.data, args.attach) == ("path/to/this/checkpoint", "my-digits.npz", False)
    assert (args.attack_steps, args.restarts) == (20, 1)


def test_card_commands_name_the_data_the_numbers_were_measured_on():
    """A model of a known dataset certified on other data: Reproduce names that data; otherwise no --data."""
    from lipzoo.meta import parse_eps

    metrics = {"sha256": "f" * 64, "clean": 0.5, "eps": {"36/255": {"certified": 0.25}, "0.5": {"certified": 0.1}},
               "data": "cifar10-shifted.npz", "arithmetic": "float32"}
    config = dict(make_config(dataset="cifar10", eps=["36/255"]), sha256="f" * 64, name="crm-x", metrics=metrics)
    [command] = _card_commands(render_card(config))
    args = _parse_as_printed(command)
    assert (args.model, args.data, args.arithmetic) == ("crm-x", "cifar10-shifted.npz", "float32")
    assert _radii(args) == {parse_eps("36/255"), parse_eps("0.5")}
    [command] = _card_commands(render_card({**config, "metrics": {**metrics, "data": None}}))
    args = _parse_as_printed(command)
    assert args.data is None and _radii(args) == {parse_eps("36/255"), parse_eps("0.5")}
    # no dataset at all (a new head on an unnamed task): the command says --data must be given
    [command] = _card_commands(render_card({**config, "dataset": None, "metrics": None}))
    assert _parse_as_printed(command).data == "path/to/the/data"


# ---- provenance: a checkpoint shows only numbers measured on its own weights -----------------------

def _trainer_config(name="crm-mnist-4c3f"):
    """What lipzoo.train hands to save_pretrained: the resolved zoo entry plus its own training block."""
    from lipzoo.train import resolve_config

    config = resolve_config(name)
    config["training"] = {"epochs_trained": 3, "seconds_total": 61.0, "hardware": "CPU (x86_64, 2 threads)"}
    return config


def test_trained_checkpoint_carries_no_inherited_numbers_weights_or_name(tmp_path):
    config = _trainer_config()
    assert config["metrics"] is not None and config["weights"] is not None  # the entry's, as resolved
    torch.manual_seed(0)
    model = create_model("crm-mnist-4c3f").eval()
    directory = save_pretrained(model, tmp_path / "final", config=config)
    saved = read_config(directory)
    assert saved["metrics"] is None and saved["weights"] is None and "bound" not in saved
    assert saved["name"] is None and saved["parent"] == {"name": "crm-mnist-4c3f",
                                                         "sha256": config["weights"]["sha256"]}
    assert saved["training"] == config["training"] and saved["recipe"] == config["recipe"]
    loaded = load(directory)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    text = (directory / "README.md").read_text()
    assert "# lipzoo 4c3f" in text and "Derived from `crm-mnist-4c3f`" in text
    assert _parent_numbers_absent(text) and "Not certified yet" in text
    assert "lipzoo certify crm-mnist-4c3f" not in text  # the Reproduce line never points at the parent
    assert "epochs actually trained: 3 (recipe: 400)" in text
    assert "hardware: CPU (x86_64, 2 threads)" in text and "training time: 0h 01m 01s" in text


def test_resaving_the_same_weights_keeps_their_numbers_and_changed_weights_lose_them(tmp_path, saved):
    model, directory = saved
    attach_results(directory, make_report())
    loaded = load(directory)
    again = save_pretrained(loaded, tmp_path / "again")  # config=None: the model's own metadata
    assert read_config(again)["metrics"]["clean"] == 0.9627  # same bytes, same sha256: the numbers hold
    with torch.no_grad():
        loaded[1].weight.add_(0.01)
    changed = save_pretrained(loaded, tmp_path / "changed")
    config = read_config(changed)
    assert config["metrics"] is None and config["parent"] == {"sha256": read_config(directory)["sha256"]}
    assert "96.27" not in (changed / "README.md").read_text()


def test_reset_classifier_invalidates_bound_and_numbers(tmp_path, saved):
    _, directory = saved
    attach_results(directory, make_report())
    model = load(directory)
    model.reset_classifier(2)
    config = model.lipzoo_config
    assert config["num_classes"] == 2 and config["metrics"] is None and "bound" not in config
    out = save_pretrained(model, tmp_path / "head")  # loadable: the config describes the new head
    assert load(out)(torch.rand(1, 4)).shape == (1, 2)
    assert "96.27" not in (out / "README.md").read_text() and "Derived from" in (out / "README.md").read_text()


def test_push_of_a_run_folder_uploads_no_inherited_numbers(tmp_path, saved, fake_hfapi, monkeypatch):
    """A lipzoo 0.1 run folder (config copied from a zoo entry) is cleaned before the upload."""
    _, directory = saved
    entry = zoo.get_entry("crm-mnist-4c3f")
    legacy_metrics = {"clean": 0.9345, "certified@1.58": 0.4955}  # 0.1 flat layout, no owner
    edit_config(directory, name="crm-mnist-4c3f", weights=entry["weights"], metrics=legacy_metrics,
                bound={"guarantee": "proved"})
    (directory / "README.md").write_text("# crm-mnist-4c3f\n| 1.58 | 93.45 | 66.12 | 49.55 |\n")
    uploaded = {}
    real = huggingface_hub.HfApi.upload_folder

    def capture(self, *args, **kwargs):
        uploaded.update({n: (Path(kwargs["folder_path"]) / n).read_text() for n in ("config.json", "README.md")})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", capture)
    push(directory, "owner/tiny")
    config = json.loads(uploaded["config.json"])
    assert config["metrics"] is None and config["weights"] is None and config["name"] is None
    assert config["parent"]["name"] == "crm-mnist-4c3f"
    assert "49.55" not in uploaded["README.md"] and "93.45" not in uploaded["README.md"]


def test_hugging_face_mixin_shape(tmp_path, saved, fake_hfapi):
    model, directory = saved
    attach_results(directory, make_report())
    loaded = LipschitzSequential.from_pretrained(directory)
    assert loaded.lipzoo_config["metrics"]["clean"] == 0.9627
    tuned = LipschitzSequential.from_pretrained(str(directory), num_classes=2)
    assert tuned.num_classes == 2 and tuned.lipzoo_config["metrics"] is None
    assert tuned.save_pretrained(tmp_path / "tuned") is None
    assert sorted(p.name for p in (tmp_path / "tuned").iterdir()) == FILES
    info = loaded.push_to_hub("owner/tiny", token="hf_x")
    assert info.oid == "abc" and [c[0] for c in fake_hfapi] == ["create_repo", "upload_folder"]
    fresh = make_model()
    with pytest.raises(AttributeError, match="lipzoo_config"):
        fresh.lipzoo_config
    fresh.save_pretrained(tmp_path / "fresh")  # config from get_config()
    assert read_config(tmp_path / "fresh")["architecture"] == "tiny"


def test_fine_tuned_checkpoint_names_its_parent_never_its_numbers(tmp_path):
    """The fine-tuning path: pretrained weights, a new 5-class head, a training step, save, load."""
    model = lipzoo.load_pretrained("crm-mnist-4c3f", num_classes=5)
    parent_sha = zoo.get_entry("crm-mnist-4c3f")["weights"]["sha256"]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 1, 28, 28)), torch.tensor([0, 1, 2, 4]))
    loss.backward()
    optimizer.step()
    directory = model.eval().save_pretrained(tmp_path / "tuned") or tmp_path / "tuned"
    config = read_config(directory)
    assert config["num_classes"] == 5 and config["metrics"] is None and config["weights"] is None
    assert config["name"] is None and config["parent"] == {"name": "crm-mnist-4c3f", "sha256": parent_sha}
    assert config["dataset"] is None  # 5 classes: no longer the MNIST task the parent was certified on
    text = (directory / "README.md").read_text()
    assert _parent_numbers_absent(text) and "Derived from `crm-mnist-4c3f`" in text
    again = lipzoo.load_pretrained(directory)  # a folder path, as `lipzoo train --init runs/A/final` passes it
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert create_model(f"local-dir:{directory}", num_classes=2).num_classes == 2
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        create_model(f"local-dir:{tmp_path / 'nothing'}")


def _parent_numbers_absent(text: str) -> bool:
    """None of crm-mnist-4c3f's measured percentages (clean, certified, PGD) appears in ``text``."""
    results = zoo.get_metadata("crm-mnist-4c3f").results
    numbers = [results.clean] + [v for r in results.per_eps.values() for v in (r.certified, r.pgd) if v is not None]
    return not any(f"{100 * v:.2f}" in text for v in numbers)


def test_results_whose_bound_names_another_model_are_refused(saved, tmp_path):
    """attach_results and save_pretrained refuse a bound of another model (issue 22): one line naming both."""
    from lipzoo.bounds import lipschitz_bound

    model, directory = saved
    own = lipschitz_bound(model, (4,), cache=False)
    twin = make_model()
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.01)  # a 100x smaller twin: same structure, other weights
    foreign = lipschitz_bound(twin, (4,), cache=False)
    assert own.fingerprint != foreign.fingerprint
    report = make_report()
    with pytest.raises(ValueError, match=r"another model \(.*fingerprint.*\), not to this one \(.*fingerprint"):
        attach_results(directory, {**report, "bound": {**report["bound"], **foreign.to_dict()}})
    meta = attach_results(directory, {**report, "bound": {**report["bound"], **own.to_dict()}})
    assert meta.results.bound["fingerprint"] == own.fingerprint
    config = read_config(directory)
    save_pretrained(model, tmp_path / "same", config=config)  # the same weights: the results stay
    assert read_config(tmp_path / "same")["metrics"]["bound"]["fingerprint"] == own.fingerprint
    forged = json.loads(json.dumps(config))
    forged["metrics"]["bound"]["fingerprint"] = foreign.fingerprint
    with pytest.raises(ValueError, match="save_pretrained: the bound belongs to another model"):
        save_pretrained(model, tmp_path / "forged", config=forged)
    assert not (tmp_path / "forged").exists()  # refused before anything is written
