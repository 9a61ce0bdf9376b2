"""lipzoo.interop: deel-torchlip and orthogonium networks, converted by what they compute, bounded and certified.

Each peer layer: the converted copy computes what the original computes (float64, random inputs) and its
equivalent passes check_lipschitz_state. Small random peer networks: the pairwise bound lies between
gradient-ascent lower bounds and the peer's rule with proved norms. A fake class with a peer's name is refused.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import lipzoo
from lipzoo.interop import Residual, compare_certificates, convert, one_lipschitz_rule
from lipzoo.interop.conversion import conversion_report
from lipzoo.layers import CReLU, GroupSort, L2NormPool2d, MaxMin, SLLLinear, UnsupportedModule, check_lipschitz_state

SLACK = 1e-6  # relative slack of a proved bound against an exact / sampled value (float64 rounding)


@pytest.fixture(scope="module")
def tl():
    return pytest.importorskip("deel.torchlip",
                               reason="deel-torchlip is in the interop extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def og():
    pytest.importorskip("orthogonium", reason="orthogonium is in the interop extra: pip install -e '.[test]'")
    import orthogonium.layers as layers
    from orthogonium.layers import residual
    from orthogonium.layers.conv import SLL
    from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d

    class NS:
        pass

    ns = NS()
    ns.layers, ns.residual, ns.SLL, ns.AOC = layers, residual, SLL, AdaptiveOrthoConv2d
    return ns


def _leaves(module):
    if type(module) is nn.Sequential:
        return [leaf for sub in module for leaf in _leaves(sub)]
    return [module]


def _same_function(original, converted, shape, exact=False, n=6):
    """The converted model computes what the original (in eval mode, float64) computes on random inputs, with its
    parametrized weights read once in their own dtype (float32: what the conversion holds)."""
    from lipzoo.interop.probe import freeze

    ref = freeze(original).double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, *shape, generator=gen, dtype=torch.float64) * torch.logspace(-2, 2, n, dtype=torch.float64
                                                                                     ).reshape(-1, *[1] * len(shape))
    with torch.no_grad():
        want, got = ref(x), converted(x)
    assert want.shape == got.shape
    if exact:
        assert torch.equal(want, got)
    else:
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11 * float(want.abs().max()))


def _check_equivalents(converted, shape):
    """check_lipschitz_state on every leaf of the converted model, at the shape it receives."""
    x = torch.zeros(1, *shape, dtype=torch.float64)
    for leaf in _leaves(converted):
        check_lipschitz_state(leaf, tuple(x.shape[1:]))
        with torch.no_grad():
            x = leaf(x)


# -- one layer at a time ------------------------------------------------------------------------------

def _deel_layers(tl):
    return [
        ("GroupSort2", lambda: tl.GroupSort2(), (4, 3, 3), GroupSort, True),
        ("GroupSort(4)", lambda: tl.GroupSort(4), (8, 2, 2), GroupSort, True),
        ("FullSort", lambda: tl.FullSort(), (6,), GroupSort, True),
        ("GroupSort2 k=0.5", lambda: tl.GroupSort2(k_coef_lip=0.5), (4, 2, 2), nn.Sequential, False),
        ("MaxMin", lambda: tl.MaxMin(), (3, 2, 2), CReLU, True),
        ("LPReLU", lambda: _set(tl.LPReLU(3, init=1.7)), (3, 2, 2), nn.PReLU, True),
        ("ScaledL2NormPool2d", lambda: tl.ScaledL2NormPool2d((2, 2)), (2, 4, 4), L2NormPool2d, True),
        ("ScaledL2NormPool2d k=0.5", lambda: tl.ScaledL2NormPool2d(2, k_coef_lip=0.5), (2, 4, 4), L2NormPool2d, True),
        ("ScaledAvgPool2d", lambda: tl.ScaledAvgPool2d(2), (2, 4, 4), nn.AvgPool2d, False),
        ("ScaledAvgPool2d (1, 2)", lambda: tl.ScaledAvgPool2d((1, 2)), (2, 3, 4), nn.Conv2d, False),
        ("ScaledAdaptiveAvgPool2d 4x4", lambda: tl.ScaledAdaptiveAvgPool2d((1, 1)), (2, 4, 4), nn.AvgPool2d, False),
        ("ScaledAdaptiveAvgPool2d 3x2", lambda: tl.ScaledAdaptiveAvgPool2d((1, 1)), (2, 3, 2), nn.Conv2d, False),
        ("ScaledAdaptativeL2NormPool2d", lambda: tl.ScaledAdaptativeL2NormPool2d((1, 1)), (2, 3, 3), L2NormPool2d,
         True),
        ("SpectralConv2d same 3x3", lambda: tl.SpectralConv2d(2, 3, 3, padding="same"), (2, 5, 5), nn.Conv2d, False),
        ("SpectralConv2d same 2x2", lambda: tl.SpectralConv2d(2, 3, 2, padding="same"), (2, 5, 5), nn.Conv2d, False),
        ("SpectralConv2d stride 2", lambda: tl.SpectralConv2d(2, 3, 3, stride=2, padding=1), (2, 6, 6), nn.Conv2d,
         False),
        ("exported conv 'same' 2x2", lambda: tl.SpectralConv2d(2, 3, 2, padding="same").vanilla_export(), (2, 4, 4),
         nn.Conv2d, False),
        ("SpectralLinear", lambda: tl.SpectralLinear(6, 4), (6,), nn.Linear, False),
        ("FrobeniusLinear", lambda: tl.FrobeniusLinear(6, 3), (6,), nn.Linear, False),
        ("ScaleBiasLayer", lambda: _set(tl.ScaleBiasLayer(0.7, 3)), (3, 2, 2), nn.Conv2d, False),
        ("BatchCentering", lambda: _trained(tl.BatchCentering(3), (3, 2, 2)), (3, 2, 2), nn.Conv2d, False),
        ("LayerCentering", lambda: _set(tl.LayerCentering(3)), (3, 3, 2), nn.Conv2d, False),
    ]


def _set(module):
    """Random parameters (a bias of zeros or a slope of 0.25 would hide a missing term)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 1.5)
    return module


def _trained(module, shape):
    """A few training-mode batches (running statistics), then eval mode."""
    _set(module).train()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(8, *shape, generator=gen) + 2.0)
    return module.eval()


def test_deel_layers_one_by_one(tl):
    for name, make, shape, cls, exact in _deel_layers(tl):
        torch.manual_seed(0)
        original = make().eval()
        converted = convert(nn.Sequential(original), shape)
        assert isinstance(converted[0], cls), (name, converted)
        _same_function(nn.Sequential(original), converted, shape, exact=exact)
        _check_equivalents(converted, shape)
        assert len(conversion_report(converted).conversions) == 1, name


def _orthogonium_layers(og):
    L, R, S, AOC = og.layers, og.residual, og.SLL, og.AOC
    return [
        ("MaxMin", lambda: L.MaxMin(), (4, 2, 2), MaxMin, True),
        ("Abs", lambda: L.Abs(), (3, 2, 2), nn.LeakyReLU, True),
        ("ChannelShuffle", lambda: L.ChannelShuffle(2, 3), (6, 2, 2), nn.Conv2d, True),
        ("AOC RKO (k = s)", lambda: AOC(2, 4, 2, stride=2, padding=0, padding_mode="zeros"), (2, 4, 4), nn.Conv2d,
         False),
        ("AOC FastBlock same", lambda: AOC(2, 4, 3, padding="same", padding_mode="zeros"), (2, 4, 4), nn.Conv2d, False),
        ("AOC FastBlock circular", lambda: AOC(2, 2, 3), (2, 4, 4), nn.Conv2d, False),
        ("AOC BcopRko stride 2", lambda: AOC(2, 4, 3, stride=2, padding=1, padding_mode="zeros"), (2, 4, 4),
         nn.Conv2d, False),
        ("AOLConv2D", lambda: L.conv.AOL.AOLConv2D(2, 3, 3, padding=1), (2, 4, 4), nn.Conv2d, False),
        ("OrthoLinear", lambda: L.OrthoLinear(6, 4), (6,), nn.Linear, False),
        ("UnitNormLinear", lambda: L.UnitNormLinear(6, 4), (6,), nn.Linear, False),
        ("BatchCentering2D", lambda: _trained(L.BatchCentering2D(3), (3, 2, 2)), (3, 2, 2), nn.Conv2d, False),
        ("LayerCentering2D", lambda: _set(L.LayerCentering2D(3)), (3, 2, 3), nn.Conv2d, False),
        ("SDPBasedLipschitzDense", lambda: S.SDPBasedLipschitzDense(6, 6, 8), (6,), SLLLinear, False),
        ("SDPBasedLipschitzResBlock", lambda: S.SDPBasedLipschitzResBlock(3, 2, kernel_size=3), (3, 4, 4), Residual,
         False),
        ("SLLxAOCLipschitzResBlock", lambda: S.SLLxAOCLipschitzResBlock(2, 4, 1, kernel_size=3, stride=2), (2, 4, 4),
         Residual, False),
        ("PrescaledAdditiveResidual", lambda: _set_alpha(R.PrescaledAdditiveResidual(nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), L.MaxMin(), nn.Conv2d(4, 3, 1)))), (3, 3, 3), Residual, False),
        ("AdditiveResidual", lambda: _set_alpha(R.AdditiveResidual(nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)))), (3, 3, 3), Residual, False),
    ]


def _set_alpha(module):
    with torch.no_grad():
        module.alpha.fill_(-0.6)
    return module


def test_orthogonium_layers_one_by_one(og):
    for name, make, shape, cls, exact in _orthogonium_layers(og):
        torch.manual_seed(0)
        original = make().eval()
        with torch.no_grad():
            for _ in range(3):  # a few reads: the power iterations settle (each read moves the weight)
                original(torch.randn(2, *shape))
        converted = convert(nn.Sequential(original), shape)
        assert isinstance(converted[0], cls), (name, converted)
        _same_function(nn.Sequential(original), converted, shape, exact=exact)
        _check_equivalents(converted, shape)


def test_conversion_leaves_the_original_working(og):
    """The frozen copies must not touch the original: removing a parametrization would delete the weight property
    from the class the copy shares with it."""
    conv = og.AOC(2, 4, 3, padding=1, padding_mode="zeros").eval()
    convert(nn.Sequential(conv, nn.Flatten()), (2, 4, 4))
    assert conv.weight.shape == (4, 2, 3, 3)
    assert conv(torch.randn(1, 2, 4, 4)).shape == (1, 4, 4, 4)


# -- small networks: lower bounds <= L_ij <= the proved rule -------------------------------------------

def _attack(net, shape, k, seed=0, steps=25):
    """Largest |(z_a - z_b)(x') - (z_a - z_b)(x)| / ||x' - x|| found by gradient ascent, per pair a < b."""
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    gen = torch.Generator().manual_seed(seed)
    best = torch.zeros(len(pairs), dtype=torch.float64)
    for r, (a, b) in enumerate(pairs):
        x = (torch.randn(3, *shape, generator=gen, dtype=torch.float64) * 0.5).requires_grad_(True)
        dx = (torch.randn(3, *shape, generator=gen, dtype=torch.float64) * 0.3).requires_grad_(True)
        opt = torch.optim.Adam([x, dx], lr=0.05)
        for _ in range(steps):
            d = net(x + dx) - net(x)
            ratio = (d[:, a] - d[:, b]).abs() / dx.flatten(1).norm(dim=1).clamp_min(1e-12)
            best[r] = max(float(best[r]), float(ratio.detach().max()))
            opt.zero_grad()
            (-ratio.sum()).backward()
            opt.step()
    return pairs, best


def _bounded(model, shape):
    converted = convert(model, shape)
    bound = lipzoo.lipschitz_bound(converted, shape, mode="pairwise", cache=False)
    assert bound.guaranteed
    rule = one_lipschitz_rule(converted, shape)
    pairs, lower = _attack(converted, shape, bound.value.shape[0])
    for (a, b), lo in zip(pairs, lower):
        assert float(lo) <= float(bound.value[a, b]) * (1 + SLACK), (a, b, lo, bound.value)
        assert float(bound.value[a, b]) <= rule.proved * (1 + SLACK), (bound.value, rule.proved)
    return converted, bound, rule


def _deel_net(tl):
    torch.manual_seed(0)
    net = tl.Sequential(tl.SpectralConv2d(1, 4, 3, padding="same"), tl.GroupSort2(), tl.ScaledL2NormPool2d((2, 2)),
                        tl.SpectralConv2d(4, 6, 3, padding="same"), tl.GroupSort2(), tl.ScaledL2NormPool2d((2, 2)),
                        nn.Flatten(), tl.SpectralLinear(24, 8), tl.GroupSort2(),
                        tl.FrobeniusLinear(8, 4, disjoint_neurons=True))
    with torch.no_grad():  # off the orthogonal initialisation: rows of norm 1, not orthogonal
        net[-1].parametrizations.weight.original.add_(torch.randn(4, 8) * 0.5)
    return net.eval()


def test_deel_network(tl):
    net = _deel_net(tl)
    exported = net.vanilla_export().eval()
    for model in (net, exported):
        converted, bound, rule = _bounded(model, (1, 8, 8))
        _same_function(model, converted, (1, 8, 8))
    # the disjoint-neuron head is 1-Lipschitz per output only: its proved norm is above its claim of 1
    assert [layer.path for layer in rule.exceeding] == ["9"]
    assert rule.claimed == pytest.approx(math.sqrt(2))


def test_orthogonium_network(og):
    L, R, S, AOC = og.layers, og.residual, og.SLL, og.AOC
    torch.manual_seed(0)
    net = nn.Sequential(
        AOC(1, 4, 2, stride=2, padding=0, padding_mode="zeros"), L.MaxMin(),
        R.PrescaledAdditiveResidual(nn.Sequential(AOC(4, 8, 3, padding="same", padding_mode="zeros", groups=2,
                                                      bias=False), L.MaxMin(), AOC(8, 4, 1, bias=False))),
        S.SDPBasedLipschitzResBlock(4, 2, kernel_size=3), L.Abs(),
        AOC(4, 4, 4, stride=4, padding=0, padding_mode="zeros", groups=2, bias=False),
        nn.Flatten(), L.MaxMin(), S.SDPBasedLipschitzDense(4, 4, 6), L.OrthoLinear(4, 3)).eval()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(2, 1, 8, 8))
    converted, bound, rule = _bounded(net, (1, 8, 8))
    _same_function(net, converted, (1, 8, 8))
    assert sum(isinstance(m, Residual) for m in converted) == 2


# -- refusals -------------------------------------------------------------------------------------------

def test_fake_name_is_refused():
    class GroupSort2(nn.Module):
        """A fake: a peer's name, another function (a descending sort)."""

        def forward(self, x):
            return x.sort(dim=1, descending=True)[0]

    with pytest.raises(UnsupportedModule, match=r"module '1' \(.*GroupSort2\) does not compute what the candidate "
                                                r"GroupSort computes.*differ by"):
        convert(nn.Sequential(nn.Linear(4, 4), GroupSort2()), (4,))


def test_same_function_other_module_is_recognised():
    class MaxMin(nn.Module):
        """Not from a peer package: recognised by what it computes (deel-torchlip's MaxMin, relu(x), relu(-x))."""

        def forward(self, x):
            return torch.cat([torch.relu(x), torch.relu(-x)], 1)

    converted = convert(nn.Sequential(nn.Linear(4, 4), MaxMin(), nn.Linear(8, 2)), (4,))
    assert isinstance(converted[1], CReLU)


class _Named(nn.Module):
    """Base of the fakes below: a class made with a peer's name and a given forward."""


def _nonnegative(x):
    if bool((x < 0).any()):
        raise ValueError("negative")
    return x


def _fake(name, forward):
    return type(name, (_Named,), {"forward": lambda self, x: forward(x)})()


@pytest.mark.parametrize("name, forward, shape, message", [
    ("Abs", lambda x: x.clamp(min=0), (3,), r"does not compute what the candidate LeakyReLU computes.*exact match"),
    ("MaxMin", lambda x: x, (4,), r"gives outputs of shape \(3, 4\) on the probe 'normal\*1e-3' of shape \(4,\), "
                                  r"the candidate CReLU \(3, 8\) \| as lipzoo.layers.MaxMin: .*an exact match"),
    ("SpectralLinear", lambda x: x + 1e-6, (4,), r"reading it failed \(AttributeError"),
    ("Abs", lambda x: _nonnegative(x), (4,), r"module '0' \(test_interop.Abs\) fails on inputs of shape \(4,\) "
                                            r"\(ValueError: negative\)"),
    ("FullSort", lambda x: torch.ones(()) if bool((x < 0).any()) else x, (4,),
     r"gives outputs of shape \(\) on the probe"),
])
def test_fakes_are_refused(name, forward, shape, message):
    with pytest.raises(UnsupportedModule, match=message):
        convert(nn.Sequential(_fake(name, forward)), shape)


def test_probes_see_a_small_deviation():
    class SpectralLinear(nn.Linear):  # a peer's name, and a forward that is off by 1e-9
        def forward(self, x):
            return super().forward(x) * (1 + 1e-9)

    with pytest.raises(UnsupportedModule, match=r"differ by .* of their scale .* \(at most 1e-12 was allowed\)"):
        convert(nn.Sequential(SpectralLinear(4, 3)), (4,))


def test_a_layer_used_twice(tl):
    pool = tl.ScaledAdaptiveAvgPool2d((1, 1))
    net = nn.Sequential(pool, nn.Upsample(scale_factor=2), pool)
    with pytest.raises(UnsupportedModule, match=r"feeds it 2 different shapes \[\(2, 4, 4\), \(2, 2, 2\)\]"):
        convert(net, (2, 4, 4))
    sort = tl.GroupSort2()
    converted = convert(nn.Sequential(sort, nn.Linear(4, 4), sort), (4,))
    assert isinstance(converted[0], GroupSort) and isinstance(converted[2], GroupSort)


def test_refusals_of_configurations(tl, og):
    cases = [
        (tl.SpectralConv2d(2, 2, 5, padding=2, padding_mode="symmetric"), (2, 6, 6), "symmetric padding wider"),
        (nn.Conv2d(2, 2, 2, padding="same", dilation=2), (2, 6, 6), None),  # accepted as it is: even dilated 2
        (nn.Conv2d(2, 2, 2, padding="same", dilation=3), (2, 6, 6), "an even kernel and a dilation above 1"),
        (_lc(tl), (2, 3, 3), r"centering over dimensions \(1,\)"),
        (_sdp_tanh(og), (4,), "is not nn.ReLU"),
    ]
    for module, shape, message in cases:
        if message is None:
            convert(nn.Sequential(module), shape)
            continue
        with pytest.raises(UnsupportedModule, match=message):
            convert(nn.Sequential(module.eval()), shape)


def _lc(tl):
    return tl.LayerCentering(2, dim=(1,))


def _sdp_tanh(og):
    m = og.SLL.SDPBasedLipschitzDense(4, 4, 6)
    m.activation = nn.Tanh()
    return m


def test_end_to_end_check(monkeypatch, tl):
    import lipzoo.interop.conversion as module

    monkeypatch.setattr(module, "END_TO_END_RTOL", -1.0)
    with pytest.raises(ValueError, match="The converted model differs from the original by"):
        convert(nn.Sequential(tl.GroupSort2()), (4,))
    assert convert(nn.Sequential(tl.GroupSort2()), (4,), check=False) is not None


def test_residual_arguments():
    with pytest.raises(TypeError, match="branch must be an nn.Sequential, got ReLU"):
        Residual(nn.ReLU())
    with pytest.raises(ValueError, match="skip_scale must be a finite number, got inf"):
        Residual(nn.Sequential(nn.ReLU()), skip_scale=math.inf)
    block = Residual(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), nn.Sequential(nn.Linear(3, 3), nn.Tanh()))
    with pytest.raises(TypeError, match="its skip holds Tanh, which is not an affine map"):
        lipzoo.layers.module_state(block)


def test_refused_containers(og):
    branch = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU())
    with pytest.raises(UnsupportedModule, match="ConcatResidual applies its function to half of the channels"):
        convert(nn.Sequential(og.residual.ConcatResidual(nn.Sequential(nn.Conv2d(1, 1, 1)))), (2, 3, 3))
    two = og.residual.PrescaledAdditiveResidual(nn.Sequential(*branch, nn.Conv2d(2, 2, 1), og.layers.MaxMin()))
    with pytest.raises(UnsupportedModule, match="its branch has 2 non-linear layers"):
        convert(nn.Sequential(two), (2, 3, 3))


def test_unknown_modules_pass_through():
    net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
    converted = convert(net, (4,))
    assert isinstance(converted[1], nn.Softmax)
    with pytest.raises(TypeError, match="Cannot bound the Lipschitz constant of Softmax"):
        lipzoo.lipschitz_bound(converted, (4,), mode="pairwise", cache=False)


def test_wrong_input_shape():
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(5,\)"):
        convert(nn.Sequential(nn.Linear(4, 3)), (5,))


# -- the rule -------------------------------------------------------------------------------------------

def test_rule_claims(tl):
    net = tl.Sequential(tl.SpectralLinear(4, 4), tl.GroupSort2(), tl.SpectralLinear(4, 3), k_coef_lip=4.0).eval()
    rule = one_lipschitz_rule(net, (4,))
    assert rule.claimed == pytest.approx(math.sqrt(2) * 4.0)  # 4^(1/3) per layer, deel's repartition
    rule = one_lipschitz_rule(net, (4,), claimed={"0": 3.0})
    assert rule.layers[0].claimed == 3.0
    with pytest.raises(ValueError, match=r"claimed names layers \['7'\] that the model does not have"):
        one_lipschitz_rule(net, (4,), claimed={"7": 1.0})
    with pytest.raises(ValueError, match=r"claimed\['0'\] must be a positive number"):
        one_lipschitz_rule(net, (4,), claimed={"0": -1.0})
    # exported: the linear layers are plain torch (claimed 1); the sort keeps its coefficient
    assert one_lipschitz_rule(net.vanilla_export(), (4,)).claimed == pytest.approx(math.sqrt(2) * 4 ** (1 / 3))


# -- rounding and certification -------------------------------------------------------------------------

def _residual_net():
    torch.manual_seed(0)
    branch = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), MaxMin(), nn.Conv2d(4, 2, 1))
    return nn.Sequential(nn.Conv2d(1, 2, 2, stride=2), Residual(branch, skip_scale=0.6, branch_scale=-0.4,
                                                                pre_scale=0.7, input_shape=(2, 2, 2)),
                         nn.Flatten(), nn.Linear(8, 3)).double().eval()


def test_residual_rounding_bound():
    from lipzoo.interop.rounding import rounding_plan

    net = convert(_residual_net(), (1, 4, 4))
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    net32 = copy.deepcopy(net).float()
    E = rounding_plan(net32, (1, 4, 4))(x.float(), 0.0)
    with torch.no_grad():
        d = net(x) - net32(x.float()).double()
    actual = (d[:, :, None] - d[:, None, :]).abs().amax((1, 2))
    assert bool((actual <= E).all()) and bool((E < 1e-3).all()), (actual, E)


def test_compare_certificates_columns():
    from torch.utils.data import TensorDataset

    net = convert(_residual_net(), (1, 4, 4))
    bound = lipzoo.lipschitz_bound(net, (1, 4, 4), mode="pairwise", cache=False)
    rule = one_lipschitz_rule(net, (1, 4, 4))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 4, 4, generator=gen)
    with torch.no_grad():
        y = net(x.double()).argmax(1)
    y[:5] = (y[:5] + 1) % 3  # a few wrong labels
    result = compare_certificates(net, TensorDataset(x, y), ["0", "0.05"], input_shape=(1, 4, 4), bound=bound,
                                  rule=rule, progress=False)
    s = result["summary"]
    assert s["clean"] == pytest.approx(35 / 40)
    assert s["lipzoo@0.05"] >= s["proved@0.05"]  # L_ij <= the proved rule everywhere
    assert s["lipzoo@0"] == pytest.approx(35 / 40)
    radii = result["per_point"]["radii"]
    margins = result["per_point"]["margins"]
    ok = margins > 0
    assert bool((radii["proved"][ok] <= margins[ok] / rule.proved).all())


def test_cli(tl, tmp_path, capsys):
    from lipzoo.cli import main

    torch.manual_seed(0)
    net = tl.Sequential(tl.SpectralConv2d(1, 2, 3, padding="same"), tl.GroupSort2(), tl.ScaledL2NormPool2d(2),
                        nn.Flatten(), tl.SpectralLinear(8, 3)).eval()
    path = tmp_path / "model.pt"
    torch.save(net.vanilla_export().eval(), path)
    g = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=g.integers(0, 256, (4, 4, 4), dtype=np.uint8), y_train=g.integers(0, 3, 4),
             x_test=g.integers(0, 256, (12, 4, 4), dtype=np.uint8), y_test=g.integers(0, 3, 12))
    out = tmp_path / "out"
    args = ["interop", str(path), "--input-shape", "1", "4", "4", "--data", str(data), "--eps", "0.01",
            "--eps", "1/255", "--out", str(out), "--no-progress"]
    assert main(args) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(args + ["--trust-pickle", "--claim", "0=2"]) == 0
    text = capsys.readouterr().out
    assert "peer rule, claimed" in text and "lipzoo LipLT pairwise" in text and "1/255" in text
    report = json.loads((out / "report.json").read_text())
    assert report["rule"]["layers"][0]["claimed"] == 2.0
    assert report["bound"]["max_L_ij"] <= report["rule"]["proved"] * (1 + SLACK)
    assert set(report["metrics"]) >= {"clean", "lipzoo@0.01", "proved@1/255", "claimed@0.01"}
    assert (out / "radii.csv").read_text().startswith("index,label,prediction,margin,radius_lipzoo")
    # a state dict with the function that builds the network
    sd = tmp_path / "sd.pt"
    torch.save(net.state_dict(), sd)
    builder = tmp_path / "build.py"
    builder.write_text("import torch\nfrom deel import torchlip as tl\nfrom torch import nn\n"
                       "def build():\n    return tl.Sequential(tl.SpectralConv2d(1, 2, 3, padding='same'), "
                       "tl.GroupSort2(), tl.ScaledL2NormPool2d(2), nn.Flatten(), tl.SpectralLinear(8, 3)).eval()\n")
    assert main(["interop", str(sd), "--input-shape", "1", "4", "4", "--builder", f"{builder}:build", "--out",
                 str(tmp_path / "o2"), "--no-progress"]) == 0
    assert "sqrt(2) x product" in capsys.readouterr().out
    assert main(["interop", str(sd), "--input-shape", "1", "4", "4", "--no-progress"]) == 2
    assert "holds a state dict, not a model: pass --builder" in capsys.readouterr().err
    assert main(["interop", str(path), "--input-shape", "1", "4", "4", "--trust-pickle", "--eps", "1"]) == 2
    assert "--eps needs --data" in capsys.readouterr().err


def test_torch_parametrization_inside_a_peer_container(og):
    """A torch-parametrized layer inside a converted container ends up a plain layer (picklable)."""
    import io

    from torch.nn.utils.parametrizations import orthogonal

    branch = nn.Sequential(orthogonal(nn.Linear(4, 4)), og.layers.MaxMin(), nn.Linear(4, 4))
    block = og.residual.PrescaledAdditiveResidual(branch).eval()
    converted = convert(nn.Sequential(block), (4,))
    assert type(converted[0].branch[0]) is nn.Linear
    torch.save(converted, io.BytesIO())
