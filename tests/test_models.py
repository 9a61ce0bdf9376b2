"""Architectures, the registry and the timm bridge (parametrized over the registry)."""

from __future__ import annotations

import json
import logging
import re

import pytest
import timm
import torch
from timm.data import resolve_data_config
from torch import nn

import lipzoo.models as M
from lipzoo.layers import (AvgPool2d, Flatten, LTConv2d, LTLinear, LTResidualConv, LTResidualLinear,
                           Normalize)
from lipzoo.models import registry, zoo
from lipzoo.meta import DATASETS
from lipzoo.models.base import DATASET_STATS, LipschitzSequential
from lipzoo.models.residual import build_lt_res

ARCHITECTURES = M.list_architectures()

# Reference networks of the paper (o4lc/CRM-LipLT), as (in, out, kernel) conv and (in, out) dense layers,
# all with bias; the parameter count is computed here independently of the builders.
REFERENCE_LAYERS = {
    "4c3f": ([(1, 32, 3), (32, 32, 4), (32, 64, 3), (64, 64, 4)], [(3136, 512), (512, 512), (512, 10)]),
    "6c2f": ([(3, 32, 3), (32, 32, 4), (32, 64, 3), (64, 64, 4), (64, 64, 3), (64, 64, 4)],
             [(1024, 512), (512, 10)]),
    "8c2f": ([(3, 64, 3), (64, 64, 3), (64, 64, 4), (64, 128, 3), (128, 128, 3), (128, 128, 4),
              (128, 256, 3), (256, 256, 4)], [(9216, 256), (256, 200)]),
}
# Smaller inputs than the default keep exact-norm bounds cheap where a family allows them; any other
# architecture runs at its declared size.
SMALL_IMG = {"4c3f": 8, "6c2f": 8, "8c2f": 24, "lt-res-s": 8, "lt-res-m": 8, "lt-res-l": 8, "sll-s": 8,
             "sll-m": 8, "aol-s": 8, "aol-m": 8}


def _info(name):
    return M.get_architecture(name)


def _declared_params(name: str) -> float:
    """The size the builder's docstring states ("~1.97M parameters"): part of its metadata."""
    match = re.search(r"~([\d.]+)M parameters", _info(name).description)
    assert match, f"the docstring of {name!r} must state its size as '~<n>M parameters'"
    return float(match.group(1)) * 1e6


def _reference_params(name: str) -> int:
    convs, fcs = REFERENCE_LAYERS[name]
    return sum(k * k * i * o + o for i, o, k in convs) + sum(i * o + o for i, o in fcs)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_metadata_describes_the_default_build():
    assert ARCHITECTURES and M.REGISTRY.names() == ARCHITECTURES
    for name in ARCHITECTURES:
        info = _info(name)
        assert info.description and info.dataset in DATASETS
        facts = DATASETS[info.dataset]
        assert (info.num_classes, info.input_shape) == (facts.num_classes, facts.input_shape)


# -- every architecture ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_build_forward_backward(name):
    torch.manual_seed(0)
    model = M.create_model(name)
    assert isinstance(model, LipschitzSequential)
    assert model.input_shape == _info(name).input_shape and model.num_classes == _info(name).num_classes
    x = torch.rand(2, *model.input_shape)
    out = model(x)
    assert out.shape == (2, _info(name).num_classes)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_parameter_count_matches_the_declared_size(name):
    n = _n_params(M.create_model(name))
    assert abs(n - _declared_params(name)) <= 0.01 * _declared_params(name)
    if name in REFERENCE_LAYERS:
        assert n == _reference_params(name)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_flat_sequence_normalize_first_readout_last(name):
    model = M.create_model(name)
    assert all(not isinstance(m, nn.Sequential) for m in model)
    assert isinstance(model[0], Normalize)
    readout = model.get_classifier()
    assert readout is model[len(model) - 1]
    assert isinstance(readout, LTLinear) and readout.activation_name is None
    assert model.pretrained_cfg["classifier"] == str(len(model) - 1)
    assert model.default_cfg is model.pretrained_cfg


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_forward_features_then_head_equals_forward(name):
    model = M.create_model(name)
    x = torch.rand(1, *model.input_shape)
    feats = model.forward_features(x)
    assert feats.shape == (1, model.get_classifier().in_features)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True) is feats


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_reset_classifier_changes_only_the_readout(name):
    model = M.create_model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    readout_key = f"{len(model) - 1}.weight"
    model.reset_classifier(7)
    after = model.state_dict()
    assert list(after) == list(before)  # same keys, same order
    for key, value in before.items():
        if key.startswith(f"{len(model) - 1}."):
            continue
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)
    assert after[readout_key].shape == (7, before[readout_key].shape[1])
    assert model.num_classes == 7 and model.pretrained_cfg["num_classes"] == 7
    assert model(torch.rand(1, *model.input_shape)).shape == (1, 7)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_config_is_json_and_rebuilds_the_model(name):
    torch.manual_seed(1)
    model = M.create_model(name, num_classes=5, activation="tanh")
    config = json.loads(json.dumps(model.get_config()))
    assert config["architecture"] == name and config["num_classes"] == 5
    assert config["model_args"]["activation"] == "tanh"
    twin = M.create_model(config["architecture"], num_classes=config["num_classes"], **config["normalization"],
                          **config["model_args"])
    twin.load_state_dict(model.state_dict())  # strict: identical structure
    x = torch.rand(1, *model.input_shape)
    torch.testing.assert_close(twin(x), model(x))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_other_sizes_and_channels(name):
    model = M.create_model(name, in_chans=1, mean=0.5, std=0.25, img_size=SMALL_IMG.get(name, _info(name).input_shape[-1]) + 8, num_classes=3)
    size = SMALL_IMG.get(name, _info(name).input_shape[-1]) + 8
    assert model.input_shape == (1, size, size)
    assert model.normalization == {"mean": [0.5], "std": [0.25]}
    assert model(torch.rand(2, *model.input_shape)).shape == (2, 3)


# Guaranteed bounds of the wide / deep models take minutes on a 2-core CPU: opt-in with -m slow.
_HEAVY_BOUNDS = {"8c2f", "lt-res-m", "lt-res-l"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _HEAVY_BOUNDS else n
                                  for n in ARCHITECTURES])
def test_bound_liplt_pairwise_at_most_naive(name):
    bounds = pytest.importorskip("lipzoo.bounds")
    torch.manual_seed(0)
    model = M.create_model(name, img_size=SMALL_IMG.get(name, _info(name).input_shape[-1]))
    # proved (FFT / split) bounds for anything larger than 64 dims keep this registry-wide test fast;
    # exactness of the accountant is tested on small nets in test_bounds.py
    kw = {"mode": "pairwise", "norm": "auto", "max_dense": 64}
    liplt = bounds.lipschitz_bound(model, model.input_shape, method="liplt", **kw).value
    naive = bounds.lipschitz_bound(model, model.input_shape, method="naive", **kw).value
    k = model.num_classes
    assert liplt.shape == naive.shape == (k, k)
    assert torch.isfinite(liplt).all() and (liplt >= 0).all()
    assert (liplt <= naive * (1 + 1e-9)).all()


# -- the plain family in detail ----------------------------------------------------------------------
def test_4c3f_state_dict_keys_and_layer_order():
    model = M.create_model("4c3f")
    kinds = [type(m) for m in model]
    assert kinds == [Normalize, LTConv2d, LTConv2d, LTConv2d, LTConv2d, Flatten, LTLinear, LTLinear, LTLinear]
    expected = ["0.mean", "0.std"] + [f"{i}.{p}" for i in (1, 2, 3, 4, 6, 7, 8) for p in ("weight", "bias")]
    assert list(model.state_dict()) == expected
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]) for m in model[1:5]]
    assert convs == [(1, 32, 3, 1, 1), (32, 32, 4, 2, 1), (32, 64, 3, 1, 1), (64, 64, 4, 2, 1)]
    assert [m.activation_name for m in model if hasattr(m, "activation_name")] == ["relu"] * 6 + [None]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_default_normalization(name):
    dataset = _info(name).dataset
    model = M.create_model(name)
    torch.testing.assert_close(model[0].mean, torch.tensor(DATASET_STATS[dataset]["mean"]))
    torch.testing.assert_close(model[0].std, torch.tensor(DATASET_STATS[dataset]["std"]))


def test_cifar10_stats_match_the_data_readme():
    # /work/shared/data/README.md, training split, per channel.
    mean, std = (0.491400, 0.482158, 0.446531), (0.247032, 0.243485, 0.261588)
    for got, want in zip(DATASET_STATS["cifar10"]["mean"] + DATASET_STATS["cifar10"]["std"], mean + std):
        assert abs(got - want) < 5e-5


def test_plain_forward_matches_independent_functional_network():
    torch.manual_seed(0)
    model = M.create_model("6c2f")
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(DATASET_STATS["cifar10"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(DATASET_STATS["cifar10"]["std"]).view(1, 3, 1, 1)
    h = (x - mean) / std
    for conv in model[1:7]:
        h = torch.relu(torch.nn.functional.conv2d(h, conv.weight, conv.bias, conv.stride, conv.padding))
    h = torch.relu(h.flatten(1) @ model[8].weight.T + model[8].bias)
    torch.testing.assert_close(model(x), h @ model[9].weight.T + model[9].bias)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "sigmoid", "softplus", "elu", "gelu"])
def test_every_activation_builds_and_is_used(activation):
    if activation == "gelu":  # non-monotone (alpha < 0): Proposition 2 does not hold, residual layers refuse it
        with pytest.raises(ValueError, match="monotone activation"):
            M.create_model("lt-res-s", activation=activation, img_size=16)
        model = M.create_model("6c2f", activation=activation, img_size=16)
        assert {type(m.act) for m in model if hasattr(m, "act") and m.activation_name is not None} == {nn.GELU}
        return
    model = M.create_model("lt-res-s", activation=activation, img_size=16)
    acts = {type(m.act) for m in model if hasattr(m, "act") and m.activation_name is not None}
    assert acts == {type(_torch_act(activation))}
    assert torch.isfinite(model(torch.rand(1, 3, 16, 16))).all()


def _torch_act(name):
    return {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(),
            "softplus": nn.Softplus(), "elu": nn.ELU(), "gelu": nn.GELU()}[name]


def test_residual_family_layout():
    model = M.create_model("lt-res-m")
    kinds = [type(m) for m in model]
    assert kinds.count(LTResidualConv) == 6 and kinds.count(LTResidualLinear) == 2
    assert kinds[:2] == [Normalize, LTConv2d] and kinds[-1] is LTLinear
    assert AvgPool2d in kinds and Flatten in kinds
    # every nonlinearity sits in a residual block
    linear_maps = [m for m in model if isinstance(m, (LTConv2d, LTLinear))]
    assert all(m.activation_name is None for m in linear_maps)


# -- builder errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,match", [
    ({"num_classes": -1}, ValueError, "num_classes must be a non-negative int"),
    ({"num_classes": 2.5}, ValueError, "num_classes must be a non-negative int"),
    ({"in_chans": 1}, ValueError, "in_chans=1 but the default cifar10 mean has 3"),
    ({"in_chans": 0}, ValueError, "in_chans must be a positive int"),
    ({"mean": [0.1, 0.2]}, ValueError, r"mean needs 1 or in_chans=3 values, got 2"),
    ({"img_size": 4}, ValueError, "img_size=4 is too small"),
    ({"img_size": (32, 32, 3)}, ValueError, "img_size must be a positive int or a pair"),
    ({"activation": "relux"}, ValueError, "Unknown activation 'relux'"),
    ({"dropout": 0.1}, TypeError, "dropout"),
])
def test_builder_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        M.create_model("6c2f", **kwargs)


def test_residual_too_small_and_bad_config():
    with pytest.raises(ValueError, match="needs at least 8 pixels"):
        M.create_model("lt-res-s", img_size=4)
    with pytest.raises(ValueError, match="widths and depths need the same non-zero length"):
        build_lt_res("x", (8, 16), (1,), 16, 1, num_classes=2, in_chans=3, img_size=16, mean=None, std=None,
                     activation="relu")


def test_lipschitz_sequential_needs_ltlinear_readout():
    with pytest.raises(TypeError, match="needs an LTLinear readout as its last layer, got Flatten"):
        LipschitzSequential([Normalize(0.5, 0.5), Flatten()], architecture="x", input_shape=(1, 2, 2))
    with pytest.raises(TypeError, match="got nothing"):
        LipschitzSequential([], architecture="x", input_shape=(1, 2, 2))


def test_reset_classifier_rejects_bad_num_classes():
    with pytest.raises(ValueError, match=r"reset_classifier: num_classes must be a non-negative int \(0: no classifier.*got -1"):
        M.create_model("6c2f").reset_classifier(-1)


# -- registry ----------------------------------------------------------------------------------------
@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry's state that the test may change (restored afterwards); no listeners (timm) attached."""
    monkeypatch.setattr(M.REGISTRY, "_archs", dict(M.REGISTRY._archs))
    monkeypatch.setattr(M.REGISTRY, "_listeners", [])
    return M.REGISTRY


def _small_6c2f(num_classes=None, **kwargs):
    return M.get_architecture("6c2f").builder(num_classes=num_classes or 3, img_size=8, **kwargs)


def test_register_model_names_duplicates_and_listeners(scratch_registry):
    def lipzoo_tiny_net_v2(num_classes=None, **kwargs):
        return _small_6c2f(num_classes, **kwargs)

    seen = []
    scratch_registry.add_listener(lambda info: seen.append(info.name))
    assert sorted(seen) == ARCHITECTURES  # replayed for the existing ones
    assert registry.register_model(lipzoo_tiny_net_v2) is lipzoo_tiny_net_v2
    assert seen[-1] == "tiny-net-v2" and "tiny-net-v2" in M.list_models()
    info = M.get_architecture("tiny-net-v2")  # bare decorator: metadata read from one probe build
    assert (info.num_classes, info.input_shape) == (3, (3, 8, 8))
    assert M.create_model("tiny-net-v2", num_classes=4).num_classes == 4
    with pytest.raises(ValueError, match="Architecture 'tiny-net-v2' is already registered"):
        registry.register_model(lipzoo_tiny_net_v2)


def test_register_model_is_all_or_nothing(scratch_registry):
    def lipzoo_plain_seq(num_classes=2):
        return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))

    with pytest.raises(TypeError, match=r"returned a Sequential without \['num_classes', 'input_shape'"):
        registry.register_model(lipzoo_plain_seq)
    assert "plain-seq" not in M.REGISTRY and "plain-seq" not in M.list_models()

    def lipzoo_declared_seq(num_classes=2):  # declared metadata: the check happens at the first build
        return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))

    registry.register_model(lipzoo_declared_seq, num_classes=2, input_shape=(4,))
    with pytest.raises(TypeError, match="registry builders must return a lipzoo.models.LipschitzSequential"):
        M.create_model("declared-seq")

    def refuse(info):
        raise RuntimeError(f"listener refuses {info.name}")

    scratch_registry._listeners.append(refuse)  # add_listener would replay (and refuse) the existing ones

    def lipzoo_refused(num_classes=None):
        return _small_6c2f(num_classes)

    with pytest.raises(RuntimeError, match="listener refuses refused"):
        registry.register_model(lipzoo_refused)
    assert "refused" not in M.REGISTRY  # a failing listener undoes the registration
    with pytest.raises(TypeError, match="register_model expects a builder function"):
        M.REGISTRY.register("6c2f")


def test_register_model_rejects_zoo_entry_names(scratch_registry):
    def lipzoo_crm_mnist_4c3f():
        return nn.Linear(1, 1)

    with pytest.raises(ValueError, match="clashes with the zoo entry"):
        registry.register_model(lipzoo_crm_mnist_4c3f)


def test_models_layering_has_no_cycle():
    """registry <- zoo <- factory: no module imports one after it (at module level or inside functions)."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    order = ["registry", "zoo", "factory"]
    for i, name in enumerate(order):
        tree = ast.parse(Path(M.__file__).with_name(f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        later = {f"lipzoo.models.{n}" for n in order[i + 1:]} | {"lipzoo.hub.checkpoint"}
        assert not (imported & later), (name, imported & later)
    # the models stand on the hub's file level only: neither its model level nor the Hub client is imported
    code = ("import sys, lipzoo.models; assert not {'lipzoo.hub.checkpoint', 'huggingface_hub', 'timm'} & "
            "set(sys.modules), sorted(m for m in sys.modules if m.startswith(('lipzoo.hub', 'huggingface', 'timm')))")
    subprocess.run([sys.executable, "-c", code], check=True)


_HUB_FILE_LEVEL = {"lipzoo.hub.files", "lipzoo.hub.card"}


def _lipzoo_imports(path) -> set[str]:
    """Every lipzoo module ``path`` imports, at module level or inside functions: ``import a.b`` -> a.b,
    ``from a import b`` -> a.b (a submodule or a name of a), and module names written as strings
    (``importlib.import_module("lipzoo.hub...")``)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("lipzoo."):
            found.add(node.value)
    return {m for m in found if m == "lipzoo" or m.startswith("lipzoo.")}


def _under(module: str, packages: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_models_import_only_the_file_level_of_the_hub():
    """Issue 24 (6): no lipzoo/models module imports the hub's model level (load / save_pretrained / push /
    attach_results, lipzoo.hub.checkpoint) or the lipzoo.hub package's names, even inside a function: the
    factory builds over lipzoo.hub.files and lipzoo.hub.card, as timm's _builder over its _hub leaf."""
    from pathlib import Path

    for path in sorted(Path(M.__file__).parent.glob("*.py")):
        hub = {m for m in _lipzoo_imports(path) if _under(m, {"lipzoo.hub"})}
        assert all(_under(m, _HUB_FILE_LEVEL) for m in hub), (path.name, sorted(hub))


def test_hub_file_level_imports_no_model_code():
    """lipzoo.hub.files and lipzoo.hub.card import nothing of the models (nor anything above them), in their
    source and in a fresh interpreter, so models -> hub.files is no cycle."""
    import subprocess
    import sys
    from pathlib import Path

    import lipzoo.hub

    hub_dir = Path(lipzoo.hub.__file__).parent
    for name in ("files", "card"):
        imported = _lipzoo_imports(hub_dir / f"{name}.py") - {"lipzoo"}  # the root: cheap, its names are lazy
        assert all(_under(m, {"lipzoo.meta", *_HUB_FILE_LEVEL}) for m in imported), (name, sorted(imported))
    code = ("import sys, lipzoo.hub.files, lipzoo.hub.card, lipzoo.hub; "
            "bad = sorted(m for m in sys.modules if m.startswith(('lipzoo.models', 'lipzoo.hub.checkpoint', "
            "'lipzoo.train', 'lipzoo.bounds', 'huggingface_hub'))); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_architecture_name():
    assert registry.architecture_name("lipzoo_4c3f") == "4c3f"
    assert registry.architecture_name("lipzoo_lt_res_s") == "lt-res-s"
    assert registry.architecture_name("my_net") == "my-net"


def test_list_models_and_patterns():
    names = M.list_models()
    assert names == sorted(names)
    assert set(ARCHITECTURES) <= set(names) and set(zoo.list_entries()) <= set(names)
    assert M.list_models("crm-cifar10-*") == ["crm-cifar10-6c2f", "crm-cifar10-lt-res-l", "crm-cifar10-lt-res-m",
                                               "crm-cifar10-lt-res-s"]
    assert M.list_models("*4c3f") == ["4c3f", "ce-mnist-4c3f", "crm-mnist-4c3f"]
    assert M.list_architectures("lt-res-*") == ["lt-res-l", "lt-res-m", "lt-res-s"]
    shipped = sorted(n for n in zoo.list_entries() if zoo.get_metadata(n).weights is not None)
    assert M.list_pretrained() == shipped and "crm-mnist-4c3f" in shipped  # the entries that ship weights
    assert M.is_model("6c2f") and M.is_model("crm-cifar10-6c2f") and not M.is_model("7c2f")
    with pytest.raises(TypeError, match="pattern must be an fnmatch string"):
        M.list_models(3)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match=r"Unknown model 'crm-cifar-6c2f'\. Did you mean 'crm-cifar10-6c2f'.*"
                                         r"See lipzoo\.list_models\(\)\."):
        M.create_model("crm-cifar-6c2f")
    with pytest.raises(ValueError, match=r"^Unknown model 'zzzz'\. See lipzoo\.list_models\(\)\.$"):
        M.create_model("zzzz")


@pytest.mark.parametrize("name", ["o4lc/crm-mnist", "./model.safetensors", "weights.pt"])
def test_hub_ids_and_paths_are_refused(name):
    with pytest.raises(ValueError, match="looks like a Hub repo id or a path; load a checkpoint with lipzoo.load"):
        M.create_model(name)


def test_create_model_name_type():
    with pytest.raises(TypeError, match="name must be a str"):
        M.create_model(None)


def test_create_model_zoo_entry_uses_its_config():
    entry = zoo.get_entry("crm-tinyimagenet-8c2f")
    model = M.create_model("crm-tinyimagenet-8c2f")
    assert model.architecture == "8c2f" and model.num_classes == 200
    for key in ("mean", "std"):  # float32 buffers
        assert model.normalization[key] == pytest.approx(entry["normalization"][key], rel=1e-6)
    assert list(model.input_shape) == entry["input_shape"]
    assert M.create_model("crm-mnist-4c3f", num_classes=4, mean=[0.5], std=[0.5]).normalization == \
        {"mean": [0.5], "std": [0.5]}
    assert M.create_model("crm-mnist-4c3f", num_classes=4).num_classes == 4


def test_build_entry_checks_input_shape():
    entry = zoo.get_entry("crm-cifar10-6c2f")
    entry["input_shape"] = [3, 64, 64]
    with pytest.raises(ValueError, match=r"declares input_shape \[3, 64, 64\] but architecture '6c2f'"):
        registry.build_entry(entry)
    entry["architecture"] = "nope"
    with pytest.raises(ValueError, match="names architecture 'nope', which is not registered"):
        registry.build_entry(entry)


def test_pretrained_architecture_loads_its_default_entry():
    model = M.create_model("6c2f", pretrained=True)
    assert model.lipzoo_config["name"] == "crm-cifar10-6c2f"  # the published CRM entry is the default tag
    assert model.pretrained_cfg["tag"] == "crm_cifar10" and model.pretrained_cfg["hf_hub_id"] == "lipzoo/crm-cifar10-6c2f"
    assert M.create_model("6c2f.crm_cifar10", pretrained=True).lipzoo_config["sha256"] == \
        model.lipzoo_config["sha256"]
    with pytest.raises(ValueError, match=r"Architecture '8c2f' has no pretrained weights yet"):
        M.create_model("8c2f", pretrained=True)
    with pytest.raises(ValueError, match=r"Architecture '6c2f' has no pretrained tag 'crm'; its tags are"):
        M.create_model("6c2f.crm", pretrained=True)


def test_pretrained_entry_without_weights_is_refused():
    with pytest.raises(ValueError,
                       match=r"Zoo entry 'crm-tinyimagenet-8c2f' has no published weights yet \(weights: null"):
        M.create_model("crm-tinyimagenet-8c2f", pretrained=True)


@pytest.mark.parametrize("name", M.list_pretrained())
def test_pretrained_with_new_num_classes_keeps_every_weight_but_the_classifier(name, caplog):
    import lipzoo.hub

    shipped = lipzoo.hub.load(name)
    head = f"{len(shipped) - 1}."
    with caplog.at_level(logging.WARNING, logger="lipzoo.models.base"):
        model = M.create_model(name, pretrained=True, num_classes=5)
    assert "certificate and measured numbers of " + name + " no longer apply" in caplog.text
    assert model.num_classes == 5 and model(torch.rand(1, *model.input_shape)).shape == (1, 5)
    new, old = model.state_dict(), shipped.state_dict()
    assert list(new) == list(old)
    for key in old:
        if key.startswith(head):
            assert new[key].shape[0] == 5
        else:
            torch.testing.assert_close(new[key], old[key], rtol=0, atol=0)
    config = model.lipzoo_config  # the parent's certificate is gone; the parent is named
    assert config["metrics"] is None and config["weights"] is None and config["name"] is None
    assert "bound" not in config and config["num_classes"] == 5
    assert config["parent"] == {"name": name, "sha256": shipped.lipzoo_config["sha256"]}
    same = M.create_model(name, pretrained=True, num_classes=shipped.num_classes)  # same size: as published
    assert same.lipzoo_config["metrics"] == shipped.lipzoo_config["metrics"]


def test_pretrained_refuses_builder_arguments_and_load_options_need_pretrained():
    with pytest.raises(ValueError, match=r"got builder arguments \{'activation': 'tanh'\} that differ"):
        M.create_model("crm-mnist-4c3f", pretrained=True, activation="tanh")
    with pytest.raises(ValueError, match=r"\['revision'\] apply to pretrained=True only"):
        M.create_model("crm-mnist-4c3f", revision="main")


def test_reset_classifier_zero_gives_features_and_back():
    model = M.create_model("6c2f")
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, model.num_features)
    model.reset_classifier(4)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert M.create_model("6c2f", num_classes=0)(torch.rand(1, 3, 32, 32)).shape == (1, model.num_features)


# -- timm bridge -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bridge():
    import lipzoo.models.timm_bridge as bridge

    return bridge


def test_timm_lists_every_architecture(bridge):
    assert timm.list_models("lipzoo*") == sorted(bridge.timm_name(a) for a in ARCHITECTURES)
    assert "lipzoo_lt_res_s" in timm.list_models("lipzoo*") and "lipzoo_4c3f" in timm.list_models("lipzoo*")
    expected = sorted(f"{bridge.timm_name(M.get_entry(e)['architecture'])}.{zoo.pretrained_tag(e)}"
                      for e in M.list_pretrained())
    assert timm.list_pretrained("lipzoo*") == expected and "lipzoo_6c2f.crm_cifar10" in expected


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_timm_round_trip(bridge, name):
    torch.manual_seed(0)
    via_timm = timm.create_model(bridge.timm_name(name))
    torch.manual_seed(0)
    direct = M.create_model(name)
    assert type(via_timm) is type(direct)
    x = torch.rand(1, *direct.input_shape)
    torch.testing.assert_close(via_timm(x), direct(x))
    cfg = resolve_data_config({}, model=via_timm)
    assert cfg["input_size"] == direct.input_shape
    assert cfg["mean"] == (0.0,) * direct.input_shape[0] and cfg["std"] == (1.0,) * direct.input_shape[0]


def test_timm_num_classes_changes_only_the_readout(bridge):
    torch.manual_seed(0)
    reference = timm.create_model("lipzoo_6c2f")
    torch.manual_seed(0)
    model = timm.create_model("lipzoo_6c2f", num_classes=100, pretrained_cfg_overlay={"license": "x"},
                              cache_dir="/nonexistent")
    assert model.num_classes == 100 and model.pretrained_cfg["num_classes"] == 100
    assert model.pretrained_cfg["license"] == "x"
    ref, new = reference.state_dict(), model.state_dict()
    assert list(ref) == list(new)
    for key in ref:
        if key.startswith("9."):
            assert new[key].shape[0] == 100
        else:
            torch.testing.assert_close(new[key], ref[key], rtol=0, atol=0)
    model.reset_classifier(10)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", M.list_pretrained())
def test_timm_pretrained_tags_load_lipzoo_weights(bridge, name):
    import lipzoo.hub

    entry = M.get_entry(name)
    timm_tagged = f"{bridge.timm_name(entry['architecture'])}.{zoo.pretrained_tag(name)}"
    model = timm.create_model(timm_tagged, pretrained=True, num_classes=5)
    shipped = lipzoo.hub.load(name)
    head = f"{len(shipped) - 1}."
    for key, value in shipped.state_dict().items():
        if not key.startswith(head):
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert model.num_classes == 5 and model.pretrained_cfg["tag"] == zoo.pretrained_tag(name)
    assert model.pretrained_cfg["hf_hub_id"] == entry["weights"]["repo_id"]
    assert model.lipzoo_config["metrics"] is None and model.lipzoo_config["parent"]["name"] == name


def test_timm_plain_name_picks_the_default_tag(bridge):
    model = timm.create_model("lipzoo_4c3f", pretrained=True)
    assert model.lipzoo_config["name"] == "crm-mnist-4c3f" and model.num_classes == 10
    assert model.lipzoo_config["metrics"]["sha256"] == model.lipzoo_config["sha256"]
    with pytest.raises(ValueError, match="no lipzoo zoo entry of '8c2f' has published weights"):
        timm.create_model("lipzoo_8c2f", pretrained=True)


def test_timm_unknown_tags_are_refused(bridge):
    with pytest.raises(ValueError, match=r"lipzoo_4c3f has no pretrained tag 'crm'; its tags are "
                                         r"\['lipzoo_4c3f.crm_mnist', 'lipzoo_4c3f.ce_mnist'\]"):
        timm.create_model("lipzoo_4c3f.crm")


def test_timm_features_model(bridge):
    model = timm.create_model("lipzoo_6c2f", num_classes=0)
    assert model.num_classes == 0 and model(torch.rand(1, 3, 32, 32)).shape == (1, model.num_features)


def test_timm_bridges_later_registrations(bridge, scratch_registry):
    scratch_registry.add_listener(bridge._bridge)  # replays nothing new: timm keeps its entries

    def lipzoo_bridge_probe(num_classes=None, **kwargs):
        return _small_6c2f(num_classes, **kwargs)

    try:
        registry.register_model(lipzoo_bridge_probe)
        assert "lipzoo_bridge_probe" in timm.list_models("lipzoo*")
        assert timm.create_model("lipzoo_bridge_probe", num_classes=2).num_classes == 2
    finally:
        from timm.models import _registry

        _registry._clear_model_entries("lipzoo_bridge_probe")
        _registry._model_entrypoints.pop("lipzoo_bridge_probe", None)
        bridge.default_cfgs.pop("lipzoo_bridge_probe", None)
        if "lipzoo_bridge_probe" in bridge.__all__:
            bridge.__all__.remove("lipzoo_bridge_probe")
        vars(bridge).pop("lipzoo_bridge_probe", None)


def test_importing_lipzoo_does_not_import_timm_but_bridges_it_later():
    import subprocess
    import sys

    code = ("import sys, lipzoo, lipzoo.layers, lipzoo.models; assert 'timm' not in sys.modules; "
            "import timm; assert 'lipzoo_6c2f' in timm.list_models('lipzoo*'); "
            "assert 'lipzoo_6c2f.crm_cifar10' in timm.list_pretrained('lipzoo*')")
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import timm, lipzoo; assert 'lipzoo_4c3f' in timm.list_models('lipzoo*')"  # timm first
    subprocess.run([sys.executable, "-c", code], check=True)
