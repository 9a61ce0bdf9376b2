"""The checkpoints that ship with lipzoo: load by name offline, golden outputs, reproducible certificates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

import lipzoo
from lipzoo.certify import evaluate
from lipzoo.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "scripts"))
from make_golden import fixed_inputs  # noqa: E402
from conftest import vouched  # noqa: E402

# Golden logits were recorded on this machine type in float32; other BLAS builds may differ by rounding.
GOLDEN_ATOL = 1e-4

SHIPPED = lipzoo.list_pretrained()


def _golden(name):
    path = GOLDEN / f"{name}.json"
    if not path.exists():
        pytest.fail(f"{name} ships weights but has no golden file {path}; run scripts/make_golden.py")
    return json.loads(path.read_text())


def _data(dataset, split="test"):
    try:
        return load_dataset(dataset, split=split)
    except FileNotFoundError as err:
        pytest.skip(f"{dataset} data not available here: {err}")


def test_mnist_entry_ships():
    assert "crm-mnist-4c3f" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_loads_offline_by_name_with_metadata(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = lipzoo.load(name)
    assert not model.training
    cfg = model.lipzoo_config
    entry = lipzoo.models.get_entry(name)
    assert cfg["sha256"] == entry["weights"]["sha256"]
    assert cfg["bound"]["guaranteed"] is True
    assert entry["metrics"] is not None and 0 <= entry["metrics"]["clean"] <= 1


@pytest.mark.parametrize("name", SHIPPED)
def test_golden_outputs(name):
    g = _golden(name)
    model = lipzoo.load(name)
    assert model.lipzoo_config["sha256"] == g["sha256"]
    with torch.no_grad():
        out = model(fixed_inputs(model.lipzoo_config["input_shape"]))
    assert torch.allclose(out, torch.tensor(g["logits"]), atol=GOLDEN_ATOL)


@pytest.mark.parametrize("name", SHIPPED)
def test_recorded_first_500_certified_accuracy_is_reproduced(name):
    """Certified accuracy on the first 500 test images from the recorded guaranteed bound."""
    g = _golden(name)
    model = lipzoo.load(name)
    data = _data(model.lipzoo_config["dataset"])
    loader = DataLoader(Subset(data, range(g["first_n"])), batch_size=250)
    # the recorded bound, vouched for by this test (the public API mints no certificate), in the arithmetic
    # the golden radii hold for
    bound = vouched(torch.tensor(g["pairwise_bound"]), model, model.lipzoo_config["input_shape"], g["guarantee"])
    res = evaluate(model.to(getattr(torch, g["arithmetic"])), loader, bound, g["eps"], progress=False)
    for key, value in g["metrics"].items():
        assert res["summary"][key] == pytest.approx(value, abs=1e-12), key
    # the bound stored with the checkpoint is the one the golden numbers came from
    assert torch.allclose(torch.tensor(model.lipzoo_config["bound"]["value"]), torch.tensor(g["pairwise_bound"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_lipzoo_certify_reproduces_golden_numbers(name, tmp_path):
    """End to end: `lipzoo certify NAME --limit N --no-attack` recomputes the guaranteed bound."""
    g = _golden(name)
    env = dict(os.environ)
    out = tmp_path / "cert"
    subprocess.run([sys.executable, "-m", "lipzoo.cli", "certify", name, "--limit", str(g["first_n"]), "--no-attack",
                    "--out", str(out), "--no-progress"], check=True, env=env)
    report = json.loads((out / "report.json").read_text())
    assert report["bound"]["guaranteed"]
    for key, value in g["metrics"].items():
        assert report["metrics"][key] == pytest.approx(value, abs=1e-12), key
