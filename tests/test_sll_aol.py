"""SLL blocks and AOL layers (issue 25, part 3): their states, their 1-Lipschitz guarantee, the ``sll-*`` /
``aol-*`` families (registry, timm, zoo entries, export, hub) and the rounding bound on them.

Every guarantee is checked against dense matrices built here from an identity basis (orthogonium's test):
``||H + G Lambda W||_2`` for random diagonals ``Lambda`` in ``[0, 1]``, after the parameters moved away from
their initial values (random ``q``, random weights, a few optimizer steps).
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

import lipzoo
import lipzoo.models as M
from lipzoo.certify import evaluate, margin_error_bound
from lipzoo.layers import (AOLConv2d, AOLLinear, LTConv2d, LTLinear, LTResidualConv, SLLConv2d, SLLLinear,
                           check_lipschitz_state, module_state)
from lipzoo.layers.aol import aol_scale_conv, aol_scale_dense
from lipzoo.layers.sll import sll_conv_gram
from lipzoo.models import zoo
from lipzoo.models.timm_bridge import timm_name

from conftest import FLOAT32_ATOL, FLOAT32_RTOL

pytestmark = pytest.mark.usefixtures("one_thread")

LIP_TOL = 1e-6  # exact Lipschitz constants of 1-Lipschitz layers, float64: rounding only
NEW_ARCHITECTURES = ["aol-m", "aol-s", "sll-m", "sll-s"]

# (factory, per-sample input shape): every new layer, in the configurations the families use and a few others
LAYERS = {
    "sll-linear": (lambda: SLLLinear(6, 4), (6,)),
    "sll-linear-wide-tanh": (lambda: SLLLinear(5, 9, activation="tanh"), (5,)),
    "sll-conv3": (lambda: SLLConv2d(3, 4, 3), (3, 5, 6)),
    "sll-conv5": (lambda: SLLConv2d(2, 3, 5), (2, 6, 5)),
    "aol-linear": (lambda: AOLLinear(6, 4), (6,)),
    "aol-linear-wide-none": (lambda: AOLLinear(4, 7, activation=None), (4,)),
    "aol-conv3": (lambda: AOLConv2d(3, 4, 3), (3, 6, 6)),
    "aol-conv3-square-none": (lambda: AOLConv2d(3, 3, 3, activation=None), (3, 5, 5)),
    "aol-down2x2": (lambda: AOLConv2d(3, 5, 2, stride=2, padding=0), (3, 6, 6)),
    "aol-conv4-stride2-tanh": (lambda: AOLConv2d(2, 3, 4, stride=2, padding=1, activation="tanh"), (2, 6, 6)),
}


# -- helpers -----------------------------------------------------------------------------------------

def _dense(op, in_shape) -> torch.Tensor:
    """The matrix of a lipzoo operator, column by column from an identity basis (float64)."""
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        return op.forward(eye).reshape(n, -1).T


def _perturb(layer: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Move every parameter far from its initial value (random weights of any size, random q and biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def _train_steps(layer: nn.Module, shape, steps: int = 5, seed: int = 0) -> nn.Module:
    """A few Adam steps on a loss that rewards growing outputs (what breaks a layer whose guarantee is loose)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(steps):
        x = torch.randn(8, *shape, generator=g, dtype=next(layer.parameters()).dtype)
        loss = -(layer(x) - layer(x.flip(0))).square().mean()  # maximise output differences
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer


def _states_dense(layer: nn.Module, shape):
    state = module_state(layer)
    y_shape = state.W.out_shape(shape)
    W = _dense(state.W, shape)
    H = None if state.H is None else _dense(state.H, shape)
    G = None if state.G is None else _dense(state.G, y_shape)
    return state, W, H, G


def _worst_jacobian_norm(layer: nn.Module, shape, n_diag: int = 60, seed: int = 0) -> float:
    """``max ||H + G diag(d) W||_2`` over random ``d`` in ``[0, 1]`` (binary and uniform) and the Jacobians of
    forward at random points: lower bounds of the exact Lipschitz constant over every slope the activation may take."""
    net = copy.deepcopy(layer).double()
    state, W, H, G = _states_dense(net, shape)
    assert (state.alpha, state.beta) in ((0.0, 1.0), (1.0, 1.0))
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for i in range(n_diag):
        d = torch.rand(W.shape[0], generator=g, dtype=torch.float64)
        d = (d > 0.5).double() if i % 2 else d
        if state.alpha == state.beta:
            d = torch.ones_like(d)
        main = d[:, None] * W
        main = main if G is None else G @ main
        worst = max(worst, float(torch.linalg.matrix_norm(main if H is None else H + main, ord=2)))
    for i in range(4):
        x = torch.randn(math.prod(shape), generator=g, dtype=torch.float64) * (0.5, 1.0, 3.0, 10.0)[i]
        jac = torch.autograd.functional.jacobian(lambda v: net(v.reshape(1, *shape)).reshape(-1), x)
        worst = max(worst, float(torch.linalg.matrix_norm(jac, ord=2)))
    return worst


# -- the layers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(LAYERS))
def test_state_conforms_at_init_and_after_training(name):
    factory, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = factory()
    assert check_lipschitz_state(layer, shape).ok
    assert check_lipschitz_state(_perturb(layer, 1), shape).ok
    assert check_lipschitz_state(_train_steps(layer, shape), shape, seed=3).ok


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_lipschitz_constant_is_at_most_one(name, seed):
    factory, shape = LAYERS[name]
    torch.manual_seed(seed)
    layer = factory()
    assert _worst_jacobian_norm(layer, shape, seed=seed) <= 1 + LIP_TOL  # at initialisation
    for scale in (0.1, 1.0, 5.0):  # any parameter value, tiny to large
        assert _worst_jacobian_norm(_perturb(layer, seed, scale), shape, seed=seed) <= 1 + LIP_TOL
    assert _worst_jacobian_norm(_train_steps(layer.double(), shape, seed=seed), shape, seed=seed) <= 1 + LIP_TOL


@pytest.mark.parametrize("name", [n for n in LAYERS if n.startswith("aol")])
def test_aol_is_nearly_tight_at_initialisation(name):
    """AOL's initialisation is (semi-)orthogonal: the rescaled map is an isometry where it can be (not a
    contraction by a wide margin, which would throw the signal away)."""
    factory, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = factory().double()
    W = _dense(module_state(layer).W, shape)
    assert float(torch.linalg.matrix_norm(W, ord=2)) > 0.5


def test_aol_dense_rescaling_by_an_independent_formula():
    torch.manual_seed(0)
    layer = _perturb(AOLLinear(7, 5), 0).double()
    P = layer.parametrizations.weight.original.detach().numpy()
    d = np.abs(P.T @ P).sum(axis=1) ** -0.5
    np.testing.assert_allclose(layer.weight.detach().numpy(), P * d[None, :], rtol=1e-12)
    assert list(layer.state_dict()) == ["bias", "parametrizations.weight.original"]


def _autocorrelation(kernel: np.ndarray) -> np.ndarray:
    """``Q[i, j, s]`` = sum over output channels and taps ``u`` with ``u + s`` in range of
    ``K[o, i, u] K[o, j, u + s]``, shifts ``s`` in ``(-(k-1), k-1)`` (explicit loops)."""
    c_out, c_in, kh, kw = kernel.shape
    Q = np.zeros((c_in, c_in, 2 * kh - 1, 2 * kw - 1))
    for sh, sw in itertools.product(range(-kh + 1, kh), range(-kw + 1, kw)):
        for uh, uw in itertools.product(range(kh), range(kw)):
            vh, vw = uh + sh, uw + sw
            if 0 <= vh < kh and 0 <= vw < kw:
                Q[:, :, sh + kh - 1, sw + kw - 1] += kernel[:, :, uh, uw].T @ kernel[:, :, vh, vw]
    return Q


def test_aol_conv_rescaling_by_an_independent_formula():
    torch.manual_seed(0)
    K = torch.randn(4, 3, 3, 2, dtype=torch.float64)
    want = np.abs(_autocorrelation(K.numpy())).sum(axis=(1, 2, 3)) ** -0.5  # overlapping windows: per channel
    np.testing.assert_allclose(aol_scale_conv(K, 1).reshape(-1).numpy(), want, rtol=1e-12)
    dense = aol_scale_dense(K.reshape(4, -1)).reshape(1, 3, 3, 2)  # stride >= kernel: per channel and tap
    torch.testing.assert_close(aol_scale_conv(K, (3, 2)), dense, rtol=0, atol=0)
    # the per-tap rescaling is the tighter one where it applies, and both are 1-Lipschitz there
    assert (dense >= aol_scale_conv(K, 1) * (1 - 1e-12)).all()


def test_aol_zero_columns_are_safe():
    layer = AOLLinear(4, 3, activation=None).double()
    conv = AOLConv2d(3, 2, 3, activation=None).double()
    with torch.no_grad():
        layer.parametrizations.weight.original[:, 1] = 0
        conv.parametrizations.weight.original[:, 0] = 0
    for m, shape in ((layer, (4,)), (conv, (3, 4, 4))):
        assert torch.isfinite(m.weight).all()
        assert float(torch.linalg.matrix_norm(_dense(module_state(m).W, shape), ord=2)) <= 1 + LIP_TOL
    assert (layer.weight[:, 1] == 0).all() and (conv.weight[:, 0] == 0).all()


def _conv_matrix(kernel: torch.Tensor, n: int) -> torch.Tensor:
    """Dense matrix of ``x -> conv2d(x, kernel, padding=k//2)`` on ``(c, n, n)`` inputs."""
    c = kernel.shape[1]
    eye = torch.eye(c * n * n, dtype=torch.float64).reshape(-1, c, n, n)
    return F.conv2d(eye, kernel, padding=kernel.shape[-1] // 2).reshape(c * n * n, -1).T


def test_sll_conv_gram_is_the_inner_space_gram_of_the_convolution():
    """Away from the border, ``C C^T`` (C: the block's convolution into the inner space) is ``K * K`` at each shift;
    with the border, ``T - C C^T`` is positive semi-definite (the bound holds at every input size)."""
    torch.manual_seed(0)
    K = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    Q = sll_conv_gram(K)  # (3, 3, 5, 5)
    n = 9
    C = _conv_matrix(K, n)
    gram = (C @ C.T).reshape(3, n, n, 3, n, n)
    p = 4  # the centre: every shift up to +-2 keeps both windows inside the image
    for dh, dw in itertools.product(range(-2, 3), range(-2, 3)):
        torch.testing.assert_close(gram[:, p, p, :, p + dh, p + dw], Q[:, :, 2 + dh, 2 + dw], rtol=1e-12, atol=1e-12)
    layer = _perturb(SLLConv2d(2, 3, 3), 5).double()
    for size in (1, 2, 4):
        C = _conv_matrix(layer.weight.detach(), size)
        q = layer.log_q.exp().detach()
        T = (sll_conv_gram(layer.weight.detach()).abs().sum((2, 3)) @ q / q).repeat_interleave(size * size)
        assert torch.linalg.eigvalsh(torch.diag(T) - C @ C.T).min() >= -1e-10


def test_sll_conv_is_tighter_than_the_residual_bound():
    torch.manual_seed(0)
    sll, res = SLLConv2d(6, 6, 3), LTResidualConv(6, 6, 3)
    res.load_state_dict(sll.state_dict())  # same weights, bias, q, rho = 1
    assert (sll._scale() >= res._scale()).all() and (sll._scale() > 1.5 * res._scale()).any()


def test_sll_rho_is_fixed_and_the_dense_block_is_the_paper_formula():
    torch.manual_seed(0)
    block = _perturb(SLLLinear(5, 4), 0).double()
    assert float(block.rho) == 1.0 and not any(n == "log_rho" for n, _ in block.named_parameters())
    W, b, q = block.weight.detach(), block.bias.detach(), block.log_q.exp().detach()
    T = (W @ W.T).abs() @ q / q
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x), x - (torch.relu(x @ W.T + b) * (2 / T)) @ W, rtol=1e-12, atol=1e-12)


def test_layer_errors():
    with pytest.raises(ValueError, match="SLLConv2d needs an odd integer kernel_size"):
        SLLConv2d(3, 3, 4)
    with pytest.raises(ValueError, match="Residual layers need a monotone activation"):
        SLLLinear(3, 3, activation="gelu")
    with pytest.raises(ValueError, match="LTConv2d needs an explicit integer padding"):
        AOLConv2d(3, 3, 3, padding="same")


# -- the bound on networks of them -------------------------------------------------------------------

def _layer_bound(state, in_shape) -> float:
    """A proved bound on one layer's Lipschitz constant from its state: ``||H|| + max|slope| ||G|| ||W||``."""
    y_shape = state.W.out_shape(in_shape)
    out = max(abs(state.alpha), abs(state.beta)) * float(state.W.norm_bound(in_shape).detach())
    if state.G is not None:
        out *= float(state.G.norm_bound(y_shape).detach())
    if state.H is not None:
        out += float(state.H.norm_bound(in_shape).detach())
    return out


def _perturbed_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = M.create_model(name, img_size=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_((0.5 if n.endswith("log_q") else 0.05) * torch.randn(p.shape, generator=g))
    return model.eval()


# sll-m's guaranteed bound takes ~20 s on a 2-core CPU (its exact norms): opt-in with -m slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "sll-m" else n
                                  for n in NEW_ARCHITECTURES])
def test_liplt_bound_between_gradient_lower_bounds_and_the_product_of_norms(name):
    model = _perturbed_model(name)
    shape = model.input_shape
    bound = lipzoo.lipschitz_bound(model, input_shape=shape, method="liplt", mode="pairwise")
    assert bound.guaranteed
    L = bound.value.double()
    k = model.num_classes
    # lower bounds: ||grad (z_i - z_j)(x)|| at random points, for every pair
    net = copy.deepcopy(model).double()
    g = torch.Generator().manual_seed(1)
    lower = torch.zeros(k, k, dtype=torch.float64)
    for _ in range(12):
        x = torch.rand(math.prod(shape), generator=g, dtype=torch.float64)
        J = torch.autograd.functional.jacobian(lambda v: net(v.reshape(1, *shape))[0], x)  # (k, n)
        lower = torch.maximum(lower, torch.cdist(J, J))
    assert (lower <= L * (1 + 1e-9)).all(), (lower / L.clamp_min(1e-300)).max()
    assert lower.max() > 0
    # upper: sqrt(2) times the product of every layer's proved bound
    product, in_shape = 1.0, tuple(shape)
    for m in model:
        state = module_state(m)
        product *= _layer_bound(state, in_shape)
        y_shape = state.W.out_shape(in_shape)
        in_shape = tuple(y_shape if state.G is None else state.G.out_shape(y_shape))
    off = ~torch.eye(k, dtype=torch.bool)
    assert (L[off] <= math.sqrt(2) * product * (1 + 1e-9)).all()


# -- the families ------------------------------------------------------------------------------------

def test_the_families_are_registered():
    assert set(NEW_ARCHITECTURES) <= set(M.list_architectures())
    assert M.list_architectures("sll-*") == ["sll-m", "sll-s"] and M.list_architectures("aol-*") == ["aol-m", "aol-s"]
    kinds = {name: {type(m) for m in M.create_model(name)} for name in NEW_ARCHITECTURES}
    def has(name, cls):  # AOL layers are parametrized: their classes are torch's subclasses of ours
        return any(issubclass(t, cls) for t in kinds[name])

    assert has("sll-m", SLLConv2d) and has("sll-m", SLLLinear) and has("sll-s", SLLConv2d)
    assert has("aol-m", AOLLinear) and not has("aol-s", AOLLinear)
    assert has("aol-s", AOLConv2d) and has("aol-m", AOLConv2d)


@pytest.mark.parametrize("name,shape", [("sll-s", (1, 28, 28)), ("aol-s", (1, 28, 28)), ("sll-m", (3, 32, 32)),
                                        ("aol-m", (3, 32, 32))])
def test_forward_shapes_by_name_and_on_the_other_dataset(name, shape):
    model = M.create_model(name)
    assert model.input_shape == shape and model(torch.rand(2, *shape)).shape == (2, 10)
    other = (3, 32, 32) if shape[0] == 1 else (1, 28, 28)
    model = M.create_model(name, in_chans=other[0], img_size=other[1], mean=0.5, std=0.25, num_classes=4)
    assert model.input_shape == other and model(torch.rand(2, *other)).shape == (2, 4)


@pytest.mark.parametrize("name", NEW_ARCHITECTURES)
def test_timm_builds_the_same_model(name):
    torch.manual_seed(0)
    via_timm = timm.create_model(timm_name(name))
    torch.manual_seed(0)
    direct = M.create_model(name)
    x = torch.rand(2, *direct.input_shape)
    torch.testing.assert_close(via_timm(x), direct(x), rtol=0, atol=0)
    assert timm_name(name) in timm.list_models("lipzoo*")
    assert via_timm.pretrained_cfg["input_size"] == direct.input_shape


@pytest.mark.parametrize("entry,timm_tagged", [("crm-mnist-sll-s", "lipzoo_sll_s.crm_mnist"),
                                               ("hkr-mnist-aol-s", "lipzoo_aol_s.hkr_mnist")])
def test_zoo_entries_are_tags_without_weights(entry, timm_tagged):
    meta = zoo.get_metadata(entry)
    assert meta.weights is None and meta.results is None and meta.dataset == "mnist"
    assert f"{timm_name(meta.architecture)}.{zoo.pretrained_tag(entry)}" == timm_tagged
    model = timm.create_model(timm_tagged)
    assert model.input_shape == (1, 28, 28) and model.pretrained_cfg["tag"] == zoo.pretrained_tag(entry)
    assert M.create_model(entry).input_shape == (1, 28, 28)
    assert entry not in M.list_pretrained()
    with pytest.raises(ValueError, match=f"no lipzoo zoo entry of '{meta.architecture}' has published weights"):
        timm.create_model(timm_name(meta.architecture), pretrained=True)


@pytest.mark.parametrize("name", NEW_ARCHITECTURES)
def test_export_round_trip(name):
    model = _perturbed_model(name, seed=2)
    gm = M.export(model)
    for sub_name, module in gm.named_modules():
        if module is not gm:
            assert type(module).__module__.startswith("torch.") and not parametrize.is_parametrized(module), sub_name
    x = torch.rand(3, *model.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=FLOAT32_ATOL, rtol=FLOAT32_RTOL)
    kinds = [type(m) for m in gm.children()]
    assert (nn.ConvTranspose2d in kinds) == name.startswith("sll")


@pytest.mark.parametrize("name", ["sll-s", "aol-m"])
def test_hub_round_trip(tmp_path, name):
    from lipzoo.hub import load, save_pretrained

    model = _perturbed_model(name, seed=3)
    config = {**model.get_config(), "dataset": M.get_architecture(name).dataset, "eps": ["1/2"]}
    loaded = load(save_pretrained(model, tmp_path / name, config=config))
    x = torch.rand(2, *model.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


# -- floating point: the rounding bound and certification -------------------------------------------

def _observed(net: nn.Module, net64: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """max over pairs of |m^32 - m64| per input."""
    with torch.no_grad():
        e = net(x).double() - net64(x.double())
    return (e[:, :, None] - e[:, None, :]).abs().flatten(1).max(dim=1).values


@pytest.mark.parametrize("name", NEW_ARCHITECTURES)
def test_rounding_bound_dominates_the_observed_float32_error(name):
    model = _perturbed_model(name, seed=4)
    model64 = copy.deepcopy(model).double()
    x = torch.rand(16, *model.input_shape, generator=torch.Generator().manual_seed(0))
    E = margin_error_bound(model, x, radius=0.5)
    assert E.shape == (16,) and torch.isfinite(E).all()
    observed = _observed(model, model64, x)
    assert (observed <= E).all() and observed.max() > 0  # the comparison saw real rounding
    E64 = margin_error_bound(model64, x.double(), radius=0.5)
    assert torch.isfinite(E64).all() and (E64 < 1e-6 * E).all()  # float64: ~2**-29 of the float32 bound


def test_certify_evaluate_runs_on_a_tiny_sll_model():
    torch.manual_seed(0)
    model = M.create_model("sll-s", img_size=8, num_classes=3).double().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right: radii are positive
    bound = lipzoo.lipschitz_bound(model, input_shape=(1, 8, 8), method="liplt", mode="pairwise")
    out = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=10), bound, ["1/100", "1/10"],
                   attack=dict(steps=3), progress=False)
    assert out["summary"]["clean"] == 1.0
    radii, exact = out["radii"], out["radii_exact_arithmetic"]
    assert (radii > 0).all() and (radii <= exact).all() and torch.isfinite(out["margin_errors"]).all()
    assert (out["margin_errors"] < 1e-9).all()
    assert out["summary"]["certified@1/100"] >= out["summary"]["certified@1/10"]


def test_aol_and_sll_layers_are_their_base_classes_to_the_accountant():
    """Rounding and export treat AOL layers as LTConv2d / LTLinear (whose weight is the rescaled one) and SLL
    blocks as LT residual blocks (H = I): no isinstance switch had to learn them."""
    assert issubclass(AOLConv2d, LTConv2d) and issubclass(AOLLinear, LTLinear)
    assert issubclass(SLLConv2d, LTResidualConv)
    layer = AOLConv2d(2, 3, 3)
    assert torch.equal(module_state(layer).W.weight, layer.weight)
    assert not torch.equal(layer.weight, layer.parametrizations.weight.original)
