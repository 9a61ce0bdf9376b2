"""``lipzoo certify / bounds / push`` through ``lipzoo.cli.main`` on a tiny saved checkpoint (offline)."""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lipzoo
from lipzoo.bounds.certificate import _vouch
from lipzoo.bounds import lipschitz_bounds
from lipzoo.certify.report import format_table
from lipzoo.cli import main
from conftest import register_tiny, tiny_builder

ARCH = "cli-tiny"
NUM_CLASSES = 4
# csv radii are written with 6 significant digits
CSV_RTOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_arch(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register ``cli-tiny`` in a scratch registry (restored after the test; no timm hook)."""
    return register_tiny(monkeypatch, ARCH, NUM_CLASSES)


@pytest.fixture
def checkpoint(tmp_path: Path, tiny_arch: str) -> SimpleNamespace:
    """A saved tiny model and a test set labelled by the model's own predictions (clean accuracy 1)."""
    torch.manual_seed(0)
    model = tiny_builder(ARCH, NUM_CLASSES)().eval()
    folder = lipzoo.save_pretrained(model, tmp_path / "ckpt", config={
        "architecture": ARCH, "num_classes": NUM_CLASSES, "input_shape": [1, 8, 8],
        "normalization": {"mean": [0.5], "std": [0.25]}, "eps": ["1/255"]})
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (24, 8, 8), dtype=np.uint8)
    with torch.no_grad():
        logits = model(torch.from_numpy(x).float().div_(255)[:, None])
    data = tmp_path / "tiny.npz"
    y = logits.argmax(1).numpy().astype(np.int64)
    np.savez(data, x_train=x, y_train=y, x_test=x, y_test=y)
    return SimpleNamespace(dir=folder, data=data, model=model, logits=logits, labels=torch.from_numpy(y))


def _certify(ck, out: Path, *extra: str) -> int:
    return main(["certify", str(ck.dir), "--data", str(ck.data), "--eps", "1/255", "--eps", "0.5", "--limit", "16",
                 "--attack-steps", "5", "--out", str(out), "--no-progress", *extra])


def test_certify_report_files_and_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "cert"
    assert _certify(checkpoint, out) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"report.json", "radii.csv", "certified_curve.png", "certificate.json"}
    assert (out / "certified_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert report["num_samples"] == 16 and report["eps"] == ["1/255", "0.5"]
    # certified points are not attacked (proved robust), so there are no violations to count
    assert set(m) == {"clean"} | {f"{k}@{e}" for k in ("certified", "pgd") for e in ("1/255", "0.5")}
    assert m["clean"] == 1.0  # labels are the model's own predictions
    assert report["bound"]["guaranteed"] is True and report["bound"]["guarantee"] in ("exact", "proved")
    assert report["bound"]["method"] == "liplt" and report["bound"]["mode"] == "pairwise"

    # radii.csv against an independent eq. (4) computation from the reported bound
    with open(out / "radii.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16 and list(rows[0]) == ["index", "label", "prediction", "margin", "radius"]
    L = torch.tensor(report["bound"]["value"], dtype=torch.float32)
    z, y = checkpoint.logits[:16], checkpoint.labels[:16]
    expected = []
    for zi, yi in zip(z, y):
        expected.append(min(float((zi[yi] - zi[j]) / L[yi, j]) for j in range(NUM_CLASSES) if j != yi))
    radii = [float(r["radius"]) for r in rows]
    assert radii == pytest.approx(expected, rel=CSV_RTOL)
    assert [int(r["label"]) for r in rows] == y.tolist() == [int(r["prediction"]) for r in rows]
    for eps, value in (("1/255", 1 / 255), ("0.5", 0.5)):
        assert m[f"certified@{eps}"] == pytest.approx(np.mean([r > value for r in expected]))
        assert m[f"certified@{eps}"] <= m[f"pgd@{eps}"]  # certified points survive the attack
        # PGD ran on the correctly classified (here: all) points not certified at eps
        assert report["attack"]["attacked"][eps] == sum(r <= value for r in expected)
    assert m["certified@1/255"] > 0  # the radii are not all zero: the comparison above means something

    assert "clean accuracy: 100.00%" in printed and "guarantee=" + report["bound"]["guarantee"] in printed
    for eps in ("1/255", "0.5"):
        line = next(line for line in printed.splitlines() if line.strip().startswith(eps + " |"))
        assert f"{100 * m[f'certified@{eps}']:.2f}%" in line and f"{100 * m[f'pgd@{eps}']:.2f}%" in line
    assert str(out / "report.json") in printed


def test_certify_power_norm_is_an_estimate(checkpoint, tmp_path, capsys):
    out = tmp_path / "cert"
    assert _certify(checkpoint, out, "--norm", "power", "--no-attack", "--compare", str(checkpoint.dir)) == 0
    assert (out / "estimated_curve.png").stat().st_size > 0  # two curves: the model and --compare
    report = json.loads((out / "report.json").read_text())
    assert report["bound"]["guarantee"] == "estimate" and report["bound"]["guaranteed"] is False
    assert report["attack"] is None and not any(k.startswith("pgd@") for k in report["metrics"])
    assert "guarantee=estimate (guaranteed=False)" in capsys.readouterr().out


def test_certify_input_errors_exit_2(checkpoint, tmp_path, monkeypatch, capsys):
    import lipzoo.hub

    seen = []
    real_load = lipzoo.hub.load

    def spy_load(target, *args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return real_load(target, *args, **kwargs)

    monkeypatch.setattr(lipzoo.hub, "load", spy_load)
    base = ["certify", str(checkpoint.dir), "--out", str(tmp_path / "c"), "--no-progress", "--device", "cpu"]
    assert main(base) == 2  # the checkpoint names no dataset
    assert "No dataset: pass --data" in capsys.readouterr().err
    assert seen == ["cpu"]  # the model is loaded where it will be evaluated
    with pytest.raises(SystemExit) as info:  # refused by the parser, before anything is loaded
        main([*base, "--data", str(checkpoint.data), "--limit", "0"])
    assert info.value.code == 2 and "--limit: expected a positive integer, got 0" in capsys.readouterr().err
    no_eps = lipzoo.save_pretrained(checkpoint.model, tmp_path / "no-eps", config={
        "architecture": ARCH, "num_classes": NUM_CLASSES, "input_shape": [1, 8, 8],
        "normalization": {"mean": [0.5], "std": [0.25]}})
    assert main(["certify", str(no_eps), "--data", str(checkpoint.data), "--no-progress"]) == 2
    assert "No eps: pass --eps" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_certify_exit_code_3_on_consistency_violations(checkpoint, tmp_path, monkeypatch, capsys):
    import lipzoo.certify.report as report_mod

    fake = {"model": "m", "num_samples": 1, "eps": ["0.5"], "files": [],
            "metrics": {"clean": 1.0, "certified@0.5": 1.0, "pgd@0.5": 0.0, "consistency_violations@0.5": 1},
            "bound": {"guarantee": "exact", "guaranteed": True, "pairwise_mean": 1.0}}
    monkeypatch.setattr(report_mod, "certify", lambda *args, **kwargs: fake)
    assert _certify(checkpoint, tmp_path / "cert") == 3
    assert "0.5 |" in capsys.readouterr().out


def test_certify_attack_all_audits_the_certified_points(checkpoint, tmp_path, monkeypatch, capsys):
    import lipzoo.certify.report as report_mod

    threads = torch.get_num_threads()
    assert _certify(checkpoint, tmp_path / "audit", "--attack-all", "--threads", "1") == 0
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert report["metrics"]["consistency_violations@0.5"] == 0 == report["metrics"]["consistency_violations@1/255"]
    assert report["attack"]["attack_all"] is True and report["attack"]["attacked"] == {"1/255": 16, "0.5": 16}
    capsys.readouterr()

    real = report_mod.lipschitz_bound

    def too_small(*args, **kwargs):  # a "proved" bound 100x too small: certified radii 100x too large
        import dataclasses

        b = real(*args, **kwargs)
        return _vouch(dataclasses.replace(b, value=b.value / 100))  # an accountant with a bug

    monkeypatch.setattr(report_mod, "lipschitz_bound", too_small)
    assert _certify(checkpoint, tmp_path / "quiet") == 0  # the default run trusts the certificate ...
    capsys.readouterr()
    assert _certify(checkpoint, tmp_path / "loud", "--attack-all") == 3  # ... the audit catches the lie
    assert "UNSOUND BOUND" in capsys.readouterr().err


def test_the_command_line_caches_bounds_without_touching_the_environment(checkpoint, tmp_path, monkeypatch, capsys):
    import os

    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path / "cache"))
    assert main(["bounds", str(checkpoint.dir), "--json"]) == 0
    assert list((tmp_path / "cache").glob("*.json"))  # `certify` after `bounds` reads these
    assert list((tmp_path / "cache" / "chains").glob("*.json"))  # and a longer or resumed run starts from these
    capsys.readouterr()
    assert main(["bounds", str(checkpoint.dir), "--bound-effort", "high"]) == 0  # another effort: computed again
    assert len(list((tmp_path / "cache").glob("*.json"))) > 1
    with pytest.raises(SystemExit):
        main(["bounds", str(checkpoint.dir), "--bound-budget", "900"])
    assert "replaced by --bound-effort" in capsys.readouterr().err
    monkeypatch.delenv("LIPZOO_CACHE")
    monkeypatch.setattr("lipzoo.bounds.cache.cache_dir", lambda: tmp_path / "default")
    assert main(["bounds", str(checkpoint.dir), "--json"]) == 0
    assert list((tmp_path / "default").glob("*.json"))  # on by default, as for library calls ...
    assert "LIPZOO_CACHE" not in os.environ  # ... without touching the environment


def test_bounds_json_naive_is_never_tighter(checkpoint, capsys):
    assert main(["bounds", str(checkpoint.dir), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert set(table) == {"naive", "liplt", "best"}  # small layers: the ECLipsE-style bound applies
    for key in ("L_ij", "L_i+L_j", "sqrt2_L"):
        assert table["naive"][key] >= table["liplt"][key] >= table["best"][key] > 0
    for row in table.values():
        assert row["L_ij"] <= row["L_i+L_j"] and row["L_ij"] <= row["sqrt2_L"]
        assert row["guarantee"] in ("exact", "proved")
    # independent of the CLI's averaging: the library's bounds for the same model
    b = lipschitz_bounds(checkpoint.model, (1, 8, 8), method="liplt")
    off = ~torch.eye(NUM_CLASSES, dtype=torch.bool)
    assert table["liplt"]["L_ij"] == pytest.approx(float(b["pairwise"].value[off].mean()), rel=1e-12)
    assert table["liplt"]["sqrt2_L"] == pytest.approx(2 ** 0.5 * float(b["global"].value), rel=1e-12)

    assert main(["bounds", str(checkpoint.dir)]) == 0
    printed = capsys.readouterr().out
    assert "naive" in printed and "liplt" in printed and f"{table['liplt']['L_ij']:.4g}" in printed
    # the recursion at the norms' estimates from below: under the bound, and printed with it
    below = table["liplt"]["L_ij_at_estimates"]
    assert 0.9 * table["liplt"]["L_ij"] <= below <= table["liplt"]["L_ij"]
    assert f"mean L_ij {below:.4g}" in printed
    chains = table["liplt"]["chains"]  # how many inner norms are certified, and how many came from the cache
    proofs = b["pairwise"].details["inner_proofs"]
    assert chains["total"] == len(proofs) and chains["certified"] == sum(p["guarantee"] == "exact" for p in proofs.values())
    assert f"{chains['certified']} of {chains['total']} inner operators certified exactly" in printed


def test_push_uploads_the_checkpoint_without_network(checkpoint, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, exist_ok, private):
            calls.append(("create_repo", repo_id, exist_ok, private))

        def create_branch(self, repo_id, branch, exist_ok):
            calls.append(("create_branch", repo_id, branch))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return SimpleNamespace(commit_url="https://hub.invalid/commit/abc", oid="abc")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    rc = main(["push", str(checkpoint.dir), "--repo-id", "someone/tiny", "--token", "t0", "--revision", "v1",
               "--private"])
    assert rc == 0
    assert f"Pushed {checkpoint.dir} to someone/tiny" in capsys.readouterr().out
    assert calls[:3] == [("init", "t0"), ("create_repo", "someone/tiny", True, True),
                         ("create_branch", "someone/tiny", "v1")]
    upload = calls[3][1]
    assert upload["repo_id"] == "someone/tiny" and upload["revision"] == "v1"
    assert Path(upload["folder_path"]) == checkpoint.dir
    assert sorted(upload["allow_patterns"]) == ["README.md", "certificate.json", "config.json", "model.safetensors"]

    calls.clear()
    assert main(["push", str(checkpoint.dir), "--repo-id", "no-owner"]) == 2
    assert "repo_id must look like 'owner/name'" in capsys.readouterr().err and not calls


@pytest.mark.parametrize("failure, message", [
    ("network", r"lipzoo push: error: push: the Hub cannot be reached to upload to 'someone/tiny' \(ConnectError: "
                r"\[Errno 101\] Network is unreachable\)\. Fix: check the network and retry\."),
    ("token", r"lipzoo push: error: push: not allowed to upload to 'someone/tiny' \(401: the token was refused\)\. "
              r"Fix: pass --token"),
    ("repo", r"lipzoo push: error: push: Hub repo 'someone/tiny' not found, or not visible to this token\. Fix: check "
             r"the repo id"),
    ("folder", r"lipzoo push: error: push: directory '.*nowhere' does not exist\."),
])
def test_push_failures_are_one_line_with_the_fix(checkpoint, monkeypatch, capsys, failure, message):
    """Issue 24 (3): no network, a refused token, a missing repo or folder: exit 2 and one line, like `load`."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    class ConnectError(Exception):  # what huggingface_hub 2.x's HTTP client raises without a network
        __module__ = "httpx2"

    def answer(status):
        return SimpleNamespace(status_code=status, headers={}, request=None)

    raised = {"network": ConnectError("[Errno 101] Network is unreachable"),
              "token": HfHubHTTPError("401 Client Error: Unauthorized\n\nInvalid credentials", response=answer(401)),
              "repo": RepositoryNotFoundError("404 Client Error\n\nRepository Not Found", response=answer(404))}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, exist_ok, private):
            if failure in ("network", "token"):
                raise raised[failure]

        def create_branch(self, repo_id, branch, exist_ok):
            pass

        def upload_folder(self, **kwargs):
            raise raised[failure]

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    folder = checkpoint.dir if failure != "folder" else checkpoint.dir.parent / "nowhere"
    assert main(["push", str(folder), "--repo-id", "someone/tiny", "--revision", "v1"]) == 2
    out = capsys.readouterr()
    assert re.fullmatch(message + r".*\n", out.err) and out.err.count("\n") == 1 and out.out == "", out.err


def test_unknown_model_and_missing_data_exit_2(checkpoint, tmp_path, capsys):
    assert main(["certify", "crm-mnist-4c3ff", "--eps", "1/255", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lipzoo certify: error: Unknown model 'crm-mnist-4c3ff'") and "'crm-mnist-4c3f'" in err
    assert main(["bounds", "crm-cifar-6c2f"]) == 2
    assert "Did you mean 'crm-cifar10-6c2f'" in capsys.readouterr().err

    missing = tmp_path / "missing.npz"
    assert main(["certify", str(checkpoint.dir), "--data", str(missing), "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lipzoo certify: error: Dataset file" in err and str(missing) in err
    assert not (tmp_path / "c").exists()


def test_parser_requires_a_command(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2 and "required: command" in capsys.readouterr().err


# -- fail fast, before any model, data or bound -----------------------------------------------------------
@pytest.mark.parametrize("option,value,message", [
    ("--eps", "abc", "argument --eps: eps: 'abc' is not a fraction"),
    ("--eps", "0", "argument --eps: eps must be positive"),
    ("--attack-steps", "0", "argument --attack-steps: expected a positive integer, got 0"),
    ("--attack-steps", "x", "argument --attack-steps: expected a positive integer, got 'x'"),
    ("--batch-size", "-5", "argument --batch-size: expected a positive integer, got -5"),
    ("--restarts", "0", "argument --restarts: expected a positive integer"),
])
def test_bad_options_fail_at_parse_time(option, value, message, monkeypatch, capsys):
    import lipzoo.hub

    monkeypatch.setattr(lipzoo.hub, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as info:
        main(["certify", "crm-mnist-4c3f", option, value])
    assert info.value.code == 2 and message in capsys.readouterr().err


def _no_bound(monkeypatch):
    import lipzoo.certify.report as report_mod

    monkeypatch.setattr(report_mod, "certify", lambda *a, **k: pytest.fail("certify ran on bad data"))


def test_data_shape_channels_and_nan_are_refused_before_the_bound(checkpoint, tmp_path, monkeypatch, capsys):
    _no_bound(monkeypatch)
    g = np.random.default_rng(0)
    wrong = tmp_path / "rgb.npz"  # 3 channels for a 1-channel model
    x = g.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(wrong, x_test=x, y_test=np.zeros(4, np.int64))
    assert main(["certify", str(checkpoint.dir), "--data", str(wrong), "--eps", "0.5", "--no-progress"]) == 2
    assert "The data does not fit the model (channels): one image is (3, 8, 8), the model takes (1, 8, 8)" in \
        capsys.readouterr().err
    size = tmp_path / "big.npz"
    np.savez(size, x_test=g.integers(0, 256, (4, 9, 9), dtype=np.uint8), y_test=np.zeros(4, np.int64))
    assert main(["certify", str(checkpoint.dir), "--data", str(size), "--eps", "0.5", "--no-progress"]) == 2
    assert "The data does not fit the model (shape)" in capsys.readouterr().err
    nan = tmp_path / "nan.npz"
    pixels = g.random((4, 8, 8)).astype(np.float32)
    pixels[2, 3, 3] = np.nan
    np.savez(nan, x_test=pixels, y_test=np.zeros(4, np.int64))
    code = main(["certify", str(checkpoint.dir), "--data", str(nan), "--eps", "0.5", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "NaN/inf pixel values (first image 2)" in err
    labels = tmp_path / "ten.npz"  # a 4-class model on data with more classes
    np.savez(labels, x_test=g.integers(0, 256, (4, 8, 8), dtype=np.uint8), y_test=np.array([0, 1, 5, 2]))
    assert main(["certify", str(checkpoint.dir), "--data", str(labels), "--eps", "0.5", "--no-progress"]) == 2
    assert "The data has label 5, but the model has 4 classes (0..3)" in capsys.readouterr().err


# -- provenance through the command line ------------------------------------------------------------------
def test_certify_attach_puts_the_numbers_in_the_card(checkpoint, tmp_path, capsys):
    card = (checkpoint.dir / "README.md").read_text()
    assert "Not certified yet" in card
    assert _certify(checkpoint, tmp_path / "cert", "--attach") == 0
    assert "Attached the results" in capsys.readouterr().out
    report = json.loads((tmp_path / "cert" / "report.json").read_text())
    config = json.loads((checkpoint.dir / "config.json").read_text())
    assert config["metrics"]["sha256"] == config["sha256"] == report["sha256"]  # the report names its weights
    assert config["metrics"]["eps"]["0.5"]["certified"] == report["metrics"]["certified@0.5"]
    assert config["metrics"]["num_test_samples"] == 16
    # not the model's dataset: named in the card, by its file name (never this machine's path)
    assert config["metrics"]["data"] == checkpoint.data.name == "tiny.npz"
    assert "the test set of `tiny.npz`" in (checkpoint.dir / "README.md").read_text()
    card = (checkpoint.dir / "README.md").read_text()
    assert "Not certified yet" not in card and f"{100 * report['metrics']['clean']:.2f}" in card
    assert lipzoo.load(checkpoint.dir).lipzoo_config["metrics"]["clean"] == report["metrics"]["clean"]


def test_attach_ships_the_certificate_and_bounds_uses_it(checkpoint, tmp_path, capsys, monkeypatch):
    """`certify --attach` writes certificate.json (the bound the card's numbers come from); `bounds` and `certify`
    then check and use it, printing the same value as a computation from scratch (`--recompute`)."""
    import lipzoo.bounds.proved as proved

    monkeypatch.setenv("LIPZOO_CACHE", "off")
    assert _certify(checkpoint, tmp_path / "cert", "--attach", "--bound-effort", "low") == 0
    shipped = json.loads((checkpoint.dir / "certificate.json").read_text())
    config = json.loads((checkpoint.dir / "config.json").read_text())
    assert shipped["weights_sha256"] == config["sha256"] and shipped["chains"]
    assert shipped["options"]["effort"] == "low" == config["metrics"]["bound"]["effort"]
    assert "--bound-effort low" in (checkpoint.dir / "README.md").read_text()  # the card's Reproduce command
    assert lipzoo.load(checkpoint.dir).lipzoo_certificate == shipped
    capsys.readouterr()

    def boom(*a, **k):
        raise AssertionError("certified again although shipped")

    with monkeypatch.context() as m:
        m.setattr(proved, "group_gram", boom)
        m.setattr(proved, "certified_chain_norm", boom)
        assert main(["bounds", str(checkpoint.dir), "--json"]) == 0
        row = json.loads(capsys.readouterr().out)["liplt"]
        used = row["L_ij"]
        assert row["chains"]["work"]["effort"] == 2000.0  # the certificate's effort, without --bound-effort
        assert main(["bounds", str(checkpoint.dir)]) == 0
        assert "from the checkpoint's certificate.json" in capsys.readouterr().out
    assert used == shipped["bound"]["mean"]
    assert main(["bounds", str(checkpoint.dir), "--recompute"]) == 0
    assert "(identical)" in capsys.readouterr().out
    # a certificate of other weights is ignored (with a warning), never used
    shipped["weights_sha256"] = "0" * 64
    (checkpoint.dir / "certificate.json").write_text(json.dumps(shipped))
    assert lipzoo.load(checkpoint.dir).lipzoo_certificate is None


def test_certify_and_bounds_default_to_the_gpu_when_present(checkpoint, monkeypatch):
    import lipzoo.cli as cli

    seen = []

    def fake_load(target, device=None):
        seen.append(device)
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "_load_model", fake_load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main(["certify", str(checkpoint.dir), "--no-progress"]) == 2
    assert main(["bounds", str(checkpoint.dir)]) == 2
    assert main(["certify", str(checkpoint.dir), "--device", "cpu", "--no-progress"]) == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bounds", str(checkpoint.dir)]) == 2
    assert seen == ["cuda", "cuda", "cpu", "cpu"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_certify_on_the_gpu_matches_the_cpu(checkpoint, tmp_path):
    assert _certify(checkpoint, tmp_path / "gpu") == 0  # default device: cuda
    assert _certify(checkpoint, tmp_path / "cpu", "--device", "cpu") == 0
    gpu, cpu = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("gpu", "cpu"))
    assert gpu["metrics"]["clean"] == cpu["metrics"]["clean"]
    for eps in ("1/255", "0.5"):  # the bound is the same float64 computation; radii may differ in the last bits
        assert abs(gpu["metrics"][f"certified@{eps}"] - cpu["metrics"][f"certified@{eps}"]) <= 1 / 16


def test_attach_needs_a_folder_and_certified_numbers(checkpoint, tmp_path, capsys):
    assert main(["certify", "crm-mnist-4c3f", "--attach", "--limit", "2", "--no-progress"]) == 2
    assert "--attach writes the results into a checkpoint folder" in capsys.readouterr().err
    assert _certify(checkpoint, tmp_path / "c", "--attach", "--norm", "power") == 2
    assert "--attach records proved numbers" in capsys.readouterr().err
    assert _certify(checkpoint, tmp_path / "c", "--attach", "--split", "train") == 2
    assert "--attach records test-set numbers" in capsys.readouterr().err
    assert "Not certified yet" in (checkpoint.dir / "README.md").read_text()  # nothing was attached


# -- polish ----------------------------------------------------------------------------------------------
def test_version_list_and_verbose_after_the_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"lipzoo {lipzoo.__version__}"
    assert main(["list", "-v"]) == 0
    out = capsys.readouterr().out
    for arch in lipzoo.models.list_architectures():
        assert f"  {arch} " in out
    from lipzoo.models import zoo

    (eps, measured), = zoo.get_metadata("crm-mnist-4c3f").results.per_eps.items()
    assert "crm-mnist-4c3f" in out and f"certified {100 * measured.certified:.2f}% @ {eps}" in out
    assert "not trained yet" in out
    assert main(["-v", "list", "crm-c*"]) == 0
    assert "crm-mnist-4c3f" not in capsys.readouterr().out


def test_every_option_shows_its_default_in_help():
    from lipzoo.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.option_strings and action.dest not in ("help",):
                assert action.help, f"lipzoo {name} {action.option_strings[0]} has no help"
        text = " ".join(sub.format_help().split())
        assert "(default:" in text, name
        # a help that states its default is not followed by argparse's "(default: None)"
        assert re.search(r"default:[^()]*\) \(default:", text) is None, name


def test_help_is_fast_and_imports_no_torch():
    import subprocess
    import sys

    code = "import sys; from lipzoo.cli import build_parser; build_parser().format_help(); " \
           "assert 'torch' not in sys.modules and 'timm' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_output_folder_is_one_per_model(tmp_path, monkeypatch):
    from lipzoo.cli import _default_out

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "A" / "final").mkdir(parents=True)
    (tmp_path / "runs" / "B" / "final").mkdir(parents=True)
    assert _default_out("certify", "crm-mnist-4c3f") == "certify-crm-mnist-4c3f"
    assert _default_out("certify", "runs/A/final") != _default_out("certify", "runs/B/final")
    assert _default_out("certify", "owner/repo") == "certify-owner-repo"


def test_lipzoo_train_output_carries_no_inherited_numbers(tmp_path, tiny_arch, monkeypatch, capsys):
    """`lipzoo train <entry>` where the entry has published weights and numbers (the bug of issue 9)."""
    import yaml

    from lipzoo.models import zoo

    published = "a" * 64
    entry = {"name": "cli-tiny-pub", "architecture": ARCH, "model_args": {}, "num_classes": 10,
             "input_shape": [1, 8, 8], "dataset": "mnist", "normalization": {"mean": [0.5], "std": [0.25]},
             "recipe": {"loss": "crm", "epochs": 1, "batch_size": 16,
                        "optimizer": {"name": "adam", "lr": 1.0e-3}, "scheduler": {"name": "constant"},
                        "augmentation": [], "crm": {"t": 5.0, "lam": 1.0, "r0": 2.0, "g": "linear",
                                                    "warmup_epochs": 0},
                        "power_iterations": 1, "validation_split": 0.25},
             "certify": {"eps": ["1/255"]},
             "weights": {"repo_id": "lipzoo/cli-tiny-pub", "revision": None, "sha256": published,
                         "filename": "model.safetensors", "local": None, "storage_dtype": "float32"},
             "metrics": {"sha256": published, "clean": 0.9911, "eps": {"1/255": {"certified": 0.8877}}}}
    recipe = tmp_path / "pub.yaml"
    recipe.write_text(yaml.safe_dump(entry, sort_keys=False))
    monkeypatch.setattr(zoo, "published_sha256", lambda: {"cli-tiny-pub": published})
    root = tmp_path / "data"
    root.mkdir()
    g = np.random.default_rng(0)
    np.savez(root / "mnist.npz", x_train=g.integers(0, 256, (32, 8, 8), dtype=np.uint8),
             y_train=g.integers(0, 10, 32), x_test=g.integers(0, 256, (8, 8, 8), dtype=np.uint8),
             y_test=g.integers(0, 10, 8))
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out), "--data-root", str(root), "--device", "cpu",
                 "--threads", "1", "--no-progress"]) == 0
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["metrics"] is None and config["weights"] is None and config["name"] is None
    # trained from scratch with the entry's recipe: not derived from its weights, so no parent
    assert config.get("parent") is None and config["training"]["recipe_of"] == "cli-tiny-pub"
    assert config["training"]["epochs_trained"] == 1
    card = (out / "final" / "README.md").read_text()
    assert "99.11" not in card and "88.77" not in card and "Not certified yet" in card
    assert "lipzoo certify cli-tiny-pub" not in card


def test_attack_workers_follow_threads_and_the_idle_cores(monkeypatch):
    import builtins
    import os

    import lipzoo.cli as cli

    assert cli._attack_workers(3) == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    for idle, workers in ((3.9, 4), (1.2, 1), (0.0, 1)):  # a busy machine: still one
        monkeypatch.setattr(cli, "_idle_cores", lambda cores, idle=idle: idle)
        assert cli._attack_workers(None) == workers
    monkeypatch.undo()
    # the idle fraction from /proc/stat, within [0, cores]
    assert 0 <= cli._idle_cores(2, interval=0.05) <= 2
    # without /proc/stat: the 1-minute load average
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (_ for _ in ()).throw(OSError()) if f == "/proc/stat"
                        else real_open(f, *a, **k))
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert cli._idle_cores(4) == pytest.approx(1.4)


def test_certify_method_best_is_never_looser_and_says_so(checkpoint, tmp_path, capsys):
    assert _certify(checkpoint, tmp_path / "liplt") == 0
    assert _certify(checkpoint, tmp_path / "best", "--method", "best") == 0
    capsys.readouterr()
    liplt = json.loads((tmp_path / "liplt" / "report.json").read_text())
    best = json.loads((tmp_path / "best" / "report.json").read_text())
    assert (liplt["bound"]["method"], best["bound"]["method"]) == ("liplt", "best")
    assert best["bound"]["guaranteed"] and best["kind"] == "certified"
    assert best["bound"]["pairwise_mean"] <= liplt["bound"]["pairwise_mean"]
    # the exact LipLT value lies between the recursion at the estimates and the LipLT bound
    below = liplt["bound"]["pairwise_mean_at_estimates"]
    assert 0.9 * liplt["bound"]["pairwise_mean"] <= below <= liplt["bound"]["pairwise_mean"]
    assert f"estimates from below: {below:.4g}" in format_table(liplt)
    for key in liplt["metrics"]:
        if key.startswith("certified@"):
            assert best["metrics"][key] >= liplt["metrics"][key]


def test_cache_command_shows_and_clears(tmp_path, monkeypatch, capsys):
    from lipzoo.bounds import lipschitz_bound

    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path / "cache"))
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    lipschitz_bound(net, (4,), cache=True)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "cache") in out and "1 bound file(s), 1 certificate file(s)" in out
    assert main(["cache", "--clear"]) == 0
    out = capsys.readouterr().out
    assert "Removed 3 file(s)" in out and "0 bound file(s), 0 certificate file(s)" in out  # two entries, one lock
    monkeypatch.setenv("LIPZOO_CACHE", "off")
    assert main(["cache"]) == 0 and "off" in capsys.readouterr().out


# -- lipzoo train's command line (issue 24): overrides anywhere, options still checked -----------------------
@pytest.mark.parametrize("argv,overrides", [
    (["train", "T", "a.b=1", "--out", "x", "c=2"], ["a.b=1", "c=2"]),
    (["train", "T", "--max-steps", "1", "recipe.epochs=1"], ["recipe.epochs=1"]),  # the command
    (["train", "T", "--out", "x", "a=1", "--seed", "3", "b=[1, 2]"], ["a=1", "b=[1, 2]"]),
    (["train", "--out", "runs/lr=1e-3", "T", "x.y_z=3"], ["x.y_z=3"]),  # an option's value with '=' stays its value
    (["-v", "train", "T", "--no-progress"], []),
    # not key=value, before or after an option: an override that apply_overrides reports with the others
    (["train", "T", "stray", "--seed", "1", "other"], ["stray", "other"]),
])
def test_train_overrides_anywhere_on_the_line(argv, overrides):
    from lipzoo.cli import parse_args

    args = parse_args(argv)
    assert args.target == "T" and args.overrides == overrides
    assert args.out in (None, "x", "runs/lr=1e-3")


@pytest.mark.parametrize("argv,message", [
    (["train", "T", "--bogus", "3"], "lipzoo train: error: unrecognized arguments: --bogus"),
    (["train", "T", "--recipe.epochs=3"], "unrecognized arguments: --recipe.epochs=3 (overrides are written without "
                                          "dashes, e.g. recipe.epochs=5)"),
    (["train", "T", "--out", "x", "-q"], "lipzoo train: error: unrecognized arguments: -q"),
    (["certify", "m", "a=1"], "lipzoo certify: error: unrecognized arguments: a=1"),  # overrides are train's only
    (["train", "T", "--time-budget", "0"], "argument --time-budget: expected a number of seconds > 0, got '0'"),
    (["train", "T", "--time-budget", "nan"], "argument --time-budget: expected a number of seconds >= 0, got 'nan'"),
])
def test_train_unknown_options_still_fail(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_time_budget_help_and_docs_agree():
    """--time-budget's help and docs/training.md say the same thing (the issue found them disagreeing)."""
    from lipzoo.cli import build_parser

    train = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    help_text = " ".join(next(a.help for a in train._actions if "--time-budget" in a.option_strings).split()).lower()
    docs = (Path(lipzoo.__file__).parents[1] / "docs" / "training.md").read_text().replace("**", "")
    docs = " ".join(docs.split()).lower()
    for phrase in ("wall-clock cap on the whole run", "the final save excepted", "a resumed run counts its earlier "
                   "sessions", "a few steps are timed before the first epoch", "warm-up, constant phase and decay",
                   "scaled together", "shorter epochs when fewer than 10 fit", "re-checks the rate"):
        assert phrase in help_text and phrase in docs, phrase
