"""Group-wise 1-Lipschitz maps (sorts, max-min, CReLU, l2-norm pooling): states, bounds, refusals, rounding."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from lipzoo.bounds import lipschitz_bound
from lipzoo.certify.rounding import margin_error_bound
from lipzoo.layers import CReLU, FullSort, GroupSort, L2NormPool2d, MaxMin, check_lipschitz_state
from lipzoo.layers.state import LipschitzState, UnsupportedModule

LAYERS = [
    (GroupSort(2), (4, 3, 3)), (GroupSort(4), (8, 2, 2)), (GroupSort(3), (6,)), (FullSort(), (6,)),
    (GroupSort(None, dim=2), (2, 4, 3)), (MaxMin(), (4, 3, 3)), (MaxMin(), (6,)), (CReLU(), (3, 2, 2)), (CReLU(), (5,)),
    (L2NormPool2d(2), (2, 4, 4)), (L2NormPool2d(2), (2, 5, 5)), (L2NormPool2d((2, 3), (3, 4), scale=0.7), (2, 5, 9)),
    (nn.LPPool2d(2, 2), (2, 5, 5)), (nn.LPPool2d(2.0, (1, 3)), (1, 3, 6)),
]


@pytest.mark.parametrize("i", range(len(LAYERS)))
def test_states_conform_to_forward(i):
    layer, shape = LAYERS[i]
    report = check_lipschitz_state(layer, shape)
    assert report.ok
    lo, hi = report.sampled_slopes
    assert hi <= -report.alpha * (1 + 1e-9)  # the sampled quotients stay within the declared d


def test_the_reference_semantics():
    x = torch.tensor([[3.0, -1.0, 2.0, 5.0, 0.0, -4.0]])
    assert GroupSort(2)(x).tolist() == [[-1.0, 3.0, 2.0, 5.0, -4.0, 0.0]]
    assert GroupSort(3)(x).tolist() == [[-1.0, 2.0, 3.0, -4.0, 0.0, 5.0]]
    assert FullSort()(x).tolist() == [sorted(x[0].tolist())]
    assert MaxMin()(x).tolist() == [[5.0, 0.0, 2.0, 3.0, -1.0, -4.0]]
    assert CReLU()(x[:, :3]).tolist() == [[3.0, 0.0, 2.0, 0.0, 1.0, 0.0]]
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    expect = torch.tensor([[0.0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]).pow(2).sum(1).sqrt()
    assert torch.allclose(L2NormPool2d(2)(img).flatten(), expect)


class _DoubledSort(GroupSort):
    """A sort declared 1-Lipschitz that computes twice the sort: its lipschitz_state() is inherited, so refused."""

    def forward(self, x):
        return 2 * super().forward(x)


class _FalseClaim(nn.Module):
    """Declares 2 * sort as 1-Lipschitz in its own lipschitz_state(): the conformance check must catch it."""

    def forward(self, x):
        return 2 * x.sort(1)[0]

    def lipschitz_state(self):
        from lipzoo.layers.operators import ScaleOp
        return LipschitzState(W=ScaleOp(1.0), alpha=-1.0, beta=1.0, activation=self.forward, elementwise=False)


def test_false_claims_are_caught():
    with pytest.raises(UnsupportedModule, match="_DoubledSort redefines"):
        lipschitz_bound(nn.Sequential(nn.Linear(3, 4), _DoubledSort()), (3,))
    with pytest.raises(ValueError, match="moved by 2"):
        check_lipschitz_state(_FalseClaim(), (5,))
    # a sort declared coordinatewise: its Jacobian is a permutation, not diagonal
    class _Elementwise(_FalseClaim):
        def forward(self, x):
            return x.sort(1)[0]

        def lipschitz_state(self):
            return dataclasses.replace(super().lipschitz_state(), elementwise=True)
    with pytest.raises(ValueError, match="not elementwise"):
        check_lipschitz_state(_Elementwise(), (5,))


@pytest.mark.parametrize("module, why", [
    (lambda: nn.LPPool2d(2, 3, stride=2), "overlapping"), (lambda: nn.LPPool2d(1, 2), "norm_type=2"),
    (lambda: nn.LPPool2d(2, 2, ceil_mode=True), "ceil_mode"), (lambda: nn.LPPool2d(3.0, 2), "norm_type=2"),
])
def test_refused_pools(module, why):
    with pytest.raises(UnsupportedModule, match=why):
        lipschitz_bound(nn.Sequential(nn.Conv2d(1, 2, 3), module()), (1, 8, 8))


def test_l2_norm_pool_refuses_overlapping_windows_at_construction():
    with pytest.raises(UnsupportedModule, match="overlapping"):
        L2NormPool2d(3, 2)


def _dense(module: nn.Module, in_shape) -> torch.Tensor:
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        return (module(eye) - module(torch.zeros(1, *in_shape, dtype=torch.float64))).reshape(n, -1).T


def test_a_sort_between_two_layers_gives_the_exact_segment_product():
    """Linear -> GroupSort -> Linear: L_ij = ||(e_i - e_j)^T W2|| ||W1|| (both attained up to a permutation), and the
    1-Lipschitz rule's sqrt(2) ||W2|| ||W1|| is never below it and strictly above for a non-orthogonal W2."""
    torch.manual_seed(0)
    l1, l2 = nn.Linear(6, 8), nn.Linear(8, 4)
    net = nn.Sequential(l1, GroupSort(2), l2).double()
    b = lipschitz_bound(net, (6,), mode="pairwise")
    w1, w2 = l1.weight.double().detach(), l2.weight.double().detach()
    n1 = torch.linalg.matrix_norm(w1, 2)
    eye = torch.eye(4, dtype=torch.float64)
    expect = torch.stack([torch.stack([((eye[i] - eye[j]) @ w2).norm() * n1 for j in range(4)]) for i in range(4)])
    assert bool((b.value.double() >= expect * (1 - 1e-12)).all())  # a bound, proved with a small margin
    assert torch.allclose(b.value.double(), expect, rtol=2e-6, atol=1e-12)  # the exact norms carry a 1e-6 margin
    rule = math.sqrt(2) * float(torch.linalg.matrix_norm(w2, 2)) * float(n1)
    assert float(b.value.max()) < rule


def test_crelu_block_is_bounded_by_one_not_sqrt2():
    b = lipschitz_bound(nn.Sequential(CReLU()), (5,), mode="global")
    assert 1.0 <= float(b.value) <= 1.0 + 3e-6
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    lin = nn.Linear(5, 5, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(q)
    b = lipschitz_bound(nn.Sequential(lin, CReLU(), nn.Flatten()), (5,), mode="global")
    assert float(b.value) <= 1.0 + 3e-6


def test_l2_pooling_after_a_conv_is_bounded_by_the_conv_norm():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    net = nn.Sequential(conv, nn.LPPool2d(2, 2), nn.Flatten())
    b = lipschitz_bound(net, (2, 6, 6), mode="global")
    exact = torch.linalg.matrix_norm(_dense(conv, (2, 6, 6)), 2)
    assert float(exact) <= float(b.value) <= float(exact) * (1 + 3e-6)


def test_methods_that_need_coordinatewise_slopes_refuse_or_skip():
    net = nn.Sequential(nn.Linear(4, 6), GroupSort(2), nn.Linear(6, 3))
    with pytest.raises(TypeError, match="coordinatewise"):
        lipschitz_bound(net, (4,), method="eclipse")
    best = lipschitz_bound(net, (4,), method="best", mode="pairwise")
    assert "not applicable" in best.details["eclipse"]
    liplt = lipschitz_bound(net, (4,), method="liplt", mode="pairwise")
    assert torch.equal(best.value, liplt.value)
    # lt_sdp's AOL / SLL diagonal T needs coordinatewise slopes: it falls back to T = ||G||^2 I (= naive here)
    sdp = lipschitz_bound(net, (4,), method="lt_sdp", sdp_t="aol", mode="global")
    naive = lipschitz_bound(net, (4,), method="naive", mode="global")
    assert float(sdp.value) == pytest.approx(float(naive.value), rel=1e-12)


def test_fingerprint_tells_a_sort_from_an_abs_with_the_same_weights():
    torch.manual_seed(2)
    lin = nn.Linear(4, 4)
    a = lipschitz_bound(nn.Sequential(lin, GroupSort(2)), (4,))
    b = lipschitz_bound(nn.Sequential(lin, nn.Hardtanh(-1.0, 1.0)), (4,))
    assert a.fingerprint != b.fingerprint


def test_rounding_bound_covers_float32_and_bfloat16_errors():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), GroupSort(2), nn.LPPool2d(2, 2), nn.Conv2d(4, 6, 3, padding=1),
                        CReLU(), L2NormPool2d(2, scale=0.9), nn.Flatten(), nn.Linear(48, 16), MaxMin(),
                        nn.Linear(16, 8), FullSort(), nn.Linear(8, 5)).eval()
    x = torch.rand(32, 1, 8, 8)
    ref = copy.deepcopy(net).double()(x.double())
    for dtype in (torch.float32, torch.bfloat16):
        low = copy.deepcopy(net).to(dtype)
        E = margin_error_bound(low, x.to(dtype), dtype=dtype)
        z = low(x.to(dtype)).double()
        err = ((z[:, :, None] - z[:, None, :]) - (ref[:, :, None] - ref[:, None, :])).abs().amax((1, 2))
        assert bool(torch.isfinite(E).all()) and bool((err <= E).all())


def test_zero_padding_same_with_an_odd_kernel_is_its_symmetric_padding():
    torch.manual_seed(3)
    same = nn.Conv2d(2, 3, 3, padding="same", dilation=2)
    explicit = nn.Conv2d(2, 3, 3, padding=2, dilation=2)
    explicit.load_state_dict(same.state_dict())
    x = torch.randn(2, 2, 7, 7)
    assert torch.equal(same(x), explicit(x))
    a = lipschitz_bound(nn.Sequential(same, nn.ReLU(), nn.Flatten()), (2, 7, 7), mode="global")
    b = lipschitz_bound(nn.Sequential(explicit, nn.ReLU(), nn.Flatten()), (2, 7, 7), mode="global")
    assert float(a.value) == float(b.value)
    check_lipschitz_state(same, (2, 7, 7))


def test_export_writes_the_group_wise_maps_as_plain_torch():
    from lipzoo.layers import Flatten, LTConv2d, LTLinear, Normalize
    from lipzoo.models import export
    torch.manual_seed(4)
    net = nn.Sequential(Normalize([0.5], [0.5]), LTConv2d(1, 6, 3, padding=1, activation=None), GroupSort(3), CReLU(),
                        L2NormPool2d(2, scale=0.5), MaxMin(), FullSort(), GroupSort(2), Flatten(),
                        LTLinear(12 * 7 * 7, 4, activation=None)).eval()
    graph = export(net)
    assert not [m for m in graph.modules() if type(m).__module__.startswith("lipzoo")]
    x = torch.rand(3, 1, 14, 14)
    assert torch.equal(graph(x), net(x))


def test_the_aol_entry_builds_its_maxmin_configuration_through_timm():
    timm = pytest.importorskip("timm")
    import lipzoo  # noqa: F401  (bridges lipzoo to timm)
    model = timm.create_model("lipzoo_aol_s.hkr_mnist")
    assert any(isinstance(m, MaxMin) for m in model.modules())
    assert not any(isinstance(m, MaxMin) for m in timm.create_model("lipzoo_aol_s").modules())  # the default: relu


class _Drifting(nn.Module):
    """A parametrization that moves the weight a little on every read (a power iteration run in eval mode)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("step", torch.zeros(()))

    def forward(self, w):
        self.step += 1
        return w * (1 + 1e-7 * self.step)


def test_a_parametrization_that_changes_the_weight_on_every_read_is_refused():
    import torch.nn.utils.parametrize as parametrize
    lin = nn.Linear(3, 3)
    parametrize.register_parametrization(lin, "weight", _Drifting())
    with pytest.raises(UnsupportedModule, match="another value on every read"):
        lipschitz_bound(nn.Sequential(lin, nn.ReLU()), (3,))
    steady = nn.Linear(3, 3)
    parametrize.register_parametrization(steady, "weight", nn.Identity())  # deterministic: accepted
    lipschitz_bound(nn.Sequential(steady, nn.ReLU()), (3,))
