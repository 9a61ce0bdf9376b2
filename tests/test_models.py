"""Architectures, the registry and the timm bridge (parametrized over the registry)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.data import resolve_data_config
from torch import nn

import lipzoo.models as M
from lipzoo.layers import (AvgPool2d, Flatten, LTConv2d, LTLinear, LTResidualConv, LTResidualLinear,
                           Normalize)
from lipzoo.models import registry, zoo
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
# Sizes of the table (docs/models.md, module docstrings); +-1%.
TABLE_PARAMS = {"4c3f": 1.97e6, "6c2f": 0.73e6, "8c2f": 4.34e6, "lt-res-s": 0.51e6, "lt-res-m": 2.01e6,
                "lt-res-l": 6.05e6}
CLASSES = {"4c3f": 10, "6c2f": 10, "8c2f": 200, "lt-res-s": 10, "lt-res-m": 10, "lt-res-l": 10}
SHAPES = {"4c3f": (1, 28, 28), "6c2f": (3, 32, 32), "8c2f": (3, 64, 64), "lt-res-s": (3, 32, 32),
          "lt-res-m": (3, 32, 32), "lt-res-l": (3, 32, 32)}
# Smallest-ish inputs each family accepts: keeps exact-norm bounds cheap.
SMALL_IMG = {"4c3f": 8, "6c2f": 8, "8c2f": 24, "lt-res-s": 8, "lt-res-m": 8, "lt-res-l": 8}


def _reference_params(name: str) -> int:
    convs, fcs = REFERENCE_LAYERS[name]
    return sum(k * k * i * o + o for i, o, k in convs) + sum(i * o + o for i, o in fcs)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_covers_the_table():
    assert set(ARCHITECTURES) == set(TABLE_PARAMS)


# -- every architecture ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_build_forward_backward(name):
    torch.manual_seed(0)
    model = M.create_model(name)
    assert isinstance(model, LipschitzSequential)
    assert model.input_shape == SHAPES[name] and model.num_classes == CLASSES[name]
    x = torch.rand(2, *model.input_shape)
    out = model(x)
    assert out.shape == (2, CLASSES[name])
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_parameter_count_matches_table(name):
    n = _n_params(M.create_model(name))
    assert abs(n - TABLE_PARAMS[name]) <= 0.01 * TABLE_PARAMS[name]
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
    model = M.create_model(name, in_chans=1, mean=0.5, std=0.25, img_size=SMALL_IMG[name] + 8, num_classes=3)
    assert model.input_shape == (1, SMALL_IMG[name] + 8, SMALL_IMG[name] + 8)
    assert model.normalization == {"mean": [0.5], "std": [0.25]}
    assert model(torch.rand(2, *model.input_shape)).shape == (2, 3)


# Guaranteed bounds of the wide / deep models take minutes on a 2-core CPU: opt-in with -m slow.
_HEAVY_BOUNDS = {"8c2f", "lt-res-m", "lt-res-l"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _HEAVY_BOUNDS else n
                                  for n in ARCHITECTURES])
def test_bound_liplt_pairwise_at_most_naive(name):
    bounds = pytest.importorskip("lipzoo.bounds")
    torch.manual_seed(0)
    model = M.create_model(name, img_size=SMALL_IMG[name])
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


@pytest.mark.parametrize("name,dataset", [("4c3f", "mnist"), ("6c2f", "cifar10"), ("8c2f", "tinyimagenet"),
                                          ("lt-res-s", "cifar10")])
def test_default_normalization(name, dataset):
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
    ({"num_classes": 0}, ValueError, "num_classes must be a positive int"),
    ({"num_classes": 2.5}, ValueError, "num_classes must be a positive int"),
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
    with pytest.raises(ValueError, match="reset_classifier: num_classes must be a positive int, got -1"):
        M.create_model("6c2f").reset_classifier(-1)


# -- registry ----------------------------------------------------------------------------------------
@pytest.fixture
def scratch_registry(monkeypatch):
    """Registry state that the test may change (restored afterwards)."""
    monkeypatch.setattr(registry, "_ARCHITECTURES", dict(registry._ARCHITECTURES))
    monkeypatch.setattr(registry, "_REGISTER_HOOKS", [])
    monkeypatch.setattr(registry, "_PRETRAINED_LOADER", None)
    return registry


def test_register_model_names_and_duplicates(scratch_registry):
    def lipzoo_tiny_net_v2(num_classes=2):
        return nn.Linear(1, num_classes)

    seen = []
    scratch_registry.add_register_hook(lambda name, fn: seen.append(name))
    assert seen == list(scratch_registry._ARCHITECTURES)  # replayed for the existing ones
    assert scratch_registry.register_model(lipzoo_tiny_net_v2) is lipzoo_tiny_net_v2
    assert seen[-1] == "tiny-net-v2" and "tiny-net-v2" in M.list_models()
    assert M.create_model("tiny-net-v2", num_classes=4).out_features == 4
    with pytest.raises(ValueError, match="Architecture 'tiny-net-v2' is already registered"):
        scratch_registry.register_model(lipzoo_tiny_net_v2)


def test_register_model_rejects_zoo_entry_names(scratch_registry):
    def lipzoo_crm_mnist_4c3f():
        return nn.Linear(1, 1)

    with pytest.raises(ValueError, match="clashes with the zoo entry"):
        scratch_registry.register_model(lipzoo_crm_mnist_4c3f)


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
    assert M.list_pretrained() == ["ce-mnist-4c3f", "crm-cifar10-6c2f", "crm-mnist-4c3f"]  # shipped
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


def test_pretrained_architecture_is_refused():
    with pytest.raises(ValueError, match="Architecture '6c2f' has no weights of its own"):
        M.create_model("6c2f", pretrained=True)


def test_pretrained_entry_without_weights_is_refused():
    with pytest.raises(ValueError,
                       match=r"Zoo entry 'crm-tinyimagenet-8c2f' has no published weights yet \(weights: null"):
        M.create_model("crm-tinyimagenet-8c2f", pretrained=True)


@pytest.fixture
def entry_with_weights(monkeypatch):
    """Pretend crm-mnist-4c3f has published weights."""
    real = zoo.get_entry

    def fake(name):
        entry = real(name)
        if name == "crm-mnist-4c3f":
            entry["weights"] = {"repo_id": "lipzoo/crm-mnist-4c3f", "revision": None, "sha256": "0" * 64,
                                "filename": "model.safetensors", "local": None, "storage_dtype": "float32"}
        return entry

    monkeypatch.setattr(zoo, "get_entry", fake)


def test_pretrained_loader_hook(scratch_registry, entry_with_weights):
    assert "crm-mnist-4c3f" in M.list_pretrained()
    with pytest.raises(RuntimeError, match="No pretrained loader is installed"):
        M.create_model("crm-mnist-4c3f", pretrained=True)
    calls = []
    sentinel = nn.Identity()
    M.set_pretrained_loader(lambda name, **kw: calls.append((name, kw)) or sentinel)
    assert M.create_model("crm-mnist-4c3f", pretrained=True, num_classes=3, map_location="cpu") is sentinel
    assert calls == [("crm-mnist-4c3f", {"num_classes": 3, "map_location": "cpu"})]
    with pytest.raises(ValueError,
                       match=r"pretrained weights belong to the zoo entries \['ce-mnist-4c3f', 'crm-mnist-4c3f'\]"):
        M.create_model("4c3f", pretrained=True)
    with pytest.raises(TypeError, match="set_pretrained_loader expects a callable or None"):
        M.set_pretrained_loader("hub")
    M.set_pretrained_loader(None)
    with pytest.raises(RuntimeError, match="No pretrained loader"):
        M.create_model("crm-mnist-4c3f", pretrained=True)


# -- timm bridge -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bridge():
    import lipzoo.models.timm_bridge as bridge

    return bridge


def test_timm_lists_every_architecture(bridge):
    assert timm.list_models("lipzoo*") == sorted(bridge.timm_name(a) for a in ARCHITECTURES)
    assert "lipzoo_lt_res_s" in timm.list_models("lipzoo*") and "lipzoo_4c3f" in timm.list_models("lipzoo*")
    assert timm.list_pretrained("lipzoo*") == []


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


def test_timm_pretrained_points_to_lipzoo_load(bridge):
    with pytest.raises(ValueError, match=r"lipzoo\.load\('crm-mnist-4c3f'\)"):
        timm.create_model("lipzoo_4c3f", pretrained=True)


def test_timm_tags_are_refused(bridge):
    with pytest.raises(ValueError, match="has no pretrained tags in timm"):
        timm.create_model("lipzoo_4c3f.crm")


def test_timm_bridges_later_registrations(bridge, scratch_registry, monkeypatch):
    builder = scratch_registry._ARCHITECTURES["6c2f"]
    monkeypatch.setattr(scratch_registry, "_ARCHITECTURES", {})  # nothing to replay: timm keeps its entries
    scratch_registry.add_register_hook(bridge._bridge)

    def lipzoo_bridge_probe(num_classes=3):
        return builder(num_classes=num_classes, img_size=8)

    try:
        scratch_registry.register_model(lipzoo_bridge_probe)
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
