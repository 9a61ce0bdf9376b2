"""Export to plain torch: same outputs, no lipzoo classes, metadata that survives save and script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import lipzoo.models as M
from lipzoo.layers import Flatten, LTConv2d, LTLinear, LTResidualConv, LTResidualLinear, Normalize
from lipzoo.models.export import bound_to_dict

from conftest import FLOAT32_ATOL, FLOAT32_RTOL

ARCHITECTURES = M.list_architectures()
PLAIN_TORCH = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d, nn.Flatten, nn.AvgPool2d, nn.ReLU, nn.LeakyReLU, nn.Tanh,
               nn.Sigmoid, nn.Softplus, nn.ELU, nn.GELU)


def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every residual block away from its initial rho = 1, q = 1 so that scale and sqrt_rho matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (LTResidualConv, LTResidualLinear)):
                m.log_q.copy_(0.5 * torch.randn(m.log_q.shape, generator=gen))
                m.log_rho.fill_(0.3)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model


def _assert_plain(gm: nn.Module) -> None:
    for name, module in gm.named_modules():
        if module is gm:
            continue
        assert type(module).__module__.startswith("torch."), f"{name}: {type(module)}"
        assert isinstance(module, PLAIN_TORCH), f"{name}: {type(module)}"
        assert not parametrize.is_parametrized(module)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_export_equals_model(name):
    torch.manual_seed(0)
    model = _perturb(M.create_model(name))
    gm = M.export(model)
    _assert_plain(gm)
    x = torch.rand(2, *model.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=FLOAT32_ATOL, rtol=FLOAT32_RTOL)
    meta = gm.lipzoo_metadata
    assert meta["architecture"] == name and meta["num_classes"] == model.num_classes
    assert meta["input_shape"] == list(model.input_shape) and meta["bound"] is None
    assert json.loads(gm.lipzoo_metadata_json) == meta


def test_export_residual_blocks_by_an_independent_formula():
    """The exported residual path equals sqrt(rho) x - 2 sqrt(rho)/(a+b) W^T D^-1 relu(Wx+b) written out here."""
    torch.manual_seed(0)
    block = _perturb(nn.Sequential(LTResidualLinear(5, 4)))[0]
    W, b, q, rho = block.weight.detach(), block.bias.detach(), block.log_q.exp().detach(), block.rho.detach()
    d = (W @ W.T).abs() @ q / q  # SLL diagonal
    x = torch.randn(3, 5)
    want = rho.sqrt() * x - (torch.relu(x @ W.T + b) * (2 * rho.sqrt() / 1.0 / d)) @ W
    gm = M.export(nn.Sequential(block))
    torch.testing.assert_close(gm(x), want, atol=FLOAT32_ATOL, rtol=FLOAT32_RTOL)
    kinds = [type(m) for _, m in gm.named_children()]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear]


def test_export_conv_block_uses_conv_transpose():
    torch.manual_seed(0)
    model = _perturb(nn.Sequential(LTResidualConv(3, 5, 3, activation="tanh")))
    gm = M.export(model)
    assert [type(m) for _, m in gm.named_children()] == [nn.Conv2d, nn.Tanh, nn.ConvTranspose2d]
    x = torch.randn(2, 3, 6, 7)
    torch.testing.assert_close(gm(x), model(x), atol=FLOAT32_ATOL, rtol=FLOAT32_RTOL)


def test_export_keeps_parametrized_weights_as_values():
    torch.manual_seed(0)
    model = nn.Sequential(Normalize([0.5, 0.4], [0.2, 0.3]), LTConv2d(2, 3, 3, padding=1), Flatten(),
                          LTLinear(3 * 4 * 4, 2, activation=None))

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    parametrize.register_parametrization(model[3], "weight", Double())
    gm = M.export(model)
    _assert_plain(gm)
    x = torch.rand(2, 2, 4, 4)
    torch.testing.assert_close(gm(x), model(x), atol=FLOAT32_ATOL, rtol=FLOAT32_RTOL)
    assert gm.lipzoo_metadata["architecture"] is None  # plain Sequential: no config to record


def test_export_accepts_plain_torch_modules_and_nesting():
    model = nn.Sequential(nn.Sequential(Normalize(0.5, 0.5), Flatten()), nn.Linear(4, 3), nn.ReLU(),
                          LTLinear(3, 2, activation=None))
    gm = M.export(model)
    x = torch.rand(5, 1, 2, 2)
    torch.testing.assert_close(gm(x), model(x))


def test_export_preserves_training_mode():
    model = M.create_model("6c2f").eval()
    assert not M.export(model).training
    assert M.export(model.train()).training


def test_bound_is_recorded_from_a_dict_and_an_object():
    model = M.create_model("6c2f", img_size=8)
    value = torch.arange(4.0).reshape(2, 2)
    meta = M.export(model, bound={"method": "liplt", "value": value, "mode": "pairwise"}).lipzoo_metadata
    assert meta["bound"] == {"method": "liplt", "value": [[0.0, 1.0], [2.0, 3.0]], "mode": "pairwise"}

    class Result:
        def __init__(self):
            self.value = value
            self.method = "naive"
            self.guaranteed = True
            self._cache = object()

    assert bound_to_dict(Result()) == {"value": [[0.0, 1.0], [2.0, 3.0]], "method": "naive", "guaranteed": True}
    assert bound_to_dict({"inf": float("inf"), "nested": (1, {"a": torch.tensor(2.0)})}) == \
        {"inf": "inf", "nested": [1, {"a": 2.0}]}


def test_bound_from_lipschitz_bound_result():
    bounds = pytest.importorskip("lipzoo.bounds")
    model = M.create_model("lt-res-s", img_size=8)
    result = bounds.lipschitz_bound(model, model.input_shape, method="liplt", mode="pairwise", max_dense=64)
    meta = M.export(model, bound=result).lipzoo_metadata
    json.dumps(meta, allow_nan=False)
    torch.testing.assert_close(torch.tensor(meta["bound"]["value"], dtype=result.value.dtype), result.value.cpu())


def test_export_errors():
    with pytest.raises(TypeError, match="export expects an nn.Sequential such as a lipzoo model, got Linear"):
        M.export(nn.Linear(2, 2))

    class Strange(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match=r"export: cannot export .*Strange; supported are lipzoo layers"):
        M.export(nn.Sequential(Strange()))
    layer = LTLinear(2, 2)
    layer.act = Flatten()  # a lipzoo class posing as an activation
    with pytest.raises(TypeError, match="the activation Flatten of LTLinear is a lipzoo class"):
        M.export(nn.Sequential(layer))
    with pytest.raises(TypeError, match="bound must be a lipschitz_bound result"):
        M.export(nn.Sequential(LTLinear(2, 2)), bound=3.0)


@pytest.mark.filterwarnings("ignore::FutureWarning:torch.jit")  # TorchScript is deprecated, still shipped
@pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning")
def test_export_runs_without_lipzoo(tmp_path):
    """torch.save'd export and a TorchScript archive both load and run in a process that cannot import lipzoo."""
    torch.manual_seed(0)
    model = _perturb(M.create_model("lt-res-s", img_size=16)).eval()
    gm = M.export(model, bound={"method": "liplt", "value": [[0.0, 1.0], [1.0, 0.0]]})
    x = torch.rand(2, 3, 16, 16)
    torch.save({"x": x, "y": model(x).detach()}, tmp_path / "io.pt")
    torch.save(gm, tmp_path / "export.pt")
    scripted = torch.jit.script(gm)
    assert json.loads(scripted.lipzoo_metadata_json) == gm.lipzoo_metadata
    torch.jit.save(scripted, str(tmp_path / "export.ts"))
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["lipzoo"] = None  # any import of lipzoo now fails
        import torch
        io = torch.load({str(tmp_path / "io.pt")!r})
        gm = torch.load({str(tmp_path / "export.pt")!r}, weights_only=False)
        ts = torch.jit.load({str(tmp_path / "export.ts")!r})
        for m in (gm, ts):
            torch.testing.assert_close(m(io["x"]), io["y"], atol=1e-5, rtol=1e-5)
        assert gm.lipzoo_metadata["architecture"] == "lt-res-s"
        assert json.loads(ts.lipzoo_metadata_json)["bound"]["method"] == "liplt"
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
