"""Certified radii in floating point: the bound E on the rounding of the logit differences (issue 22, item 4).

E (lipzoo.certify.rounding.margin_error_bound) must dominate every observed |m^32 - m64| on the ball, stay far
below the margins, and evaluate must refuse to certify a margin that rounding can flip.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lipzoo import lipschitz_bound
from lipzoo.certify import certified_radius, evaluate
from lipzoo.certify.report import certify, format_table
from lipzoo.certify.rounding import gamma, margin_error_bound, unit_roundoff

pytestmark = pytest.mark.usefixtures("one_thread")


def _he(net: nn.Module, seed: int) -> nn.Module:
    """Scaled orthogonal weights: activations and logits of order 1 and layer norms near their gains, as in the
    Lipschitz-trained networks lipzoo certifies (E multiplies the per-layer norms, which a random Gaussian
    matrix has ~3x above its typical gain)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = torch.empty(m.weight.shape[0], m.weight[0].numel())
            nn.init.orthogonal_(w, gain=2 ** 0.5, generator=g)
            with torch.no_grad():
                m.weight.copy_(w.reshape(m.weight.shape))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net.eval()


def _net(kind: str, act: type, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    if kind == "mlp2":
        return _he(nn.Sequential(nn.Flatten(), nn.Linear(24, 48), act(), nn.Linear(48, 5)), seed), (24,)
    if kind == "mlp4":
        return _he(nn.Sequential(nn.Linear(24, 64), act(), nn.Linear(64, 64), act(), nn.Linear(64, 32), act(),
                                 nn.Linear(32, 5)), seed), (24,)
    return _he(nn.Sequential(nn.Conv2d(2, 8, 3, stride=2, padding=1), act(), nn.Conv2d(8, 8, 3, padding=1), act(),
                             nn.Flatten(), nn.Linear(8 * 4 * 4, 5)), seed), (2, 8, 8)


def _observed(net: nn.Module, net64: nn.Module, x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """max over pairs of |m^ - m64| per input, the model run in ``dtype`` on inputs exactly representable in it."""
    with torch.no_grad():
        e = net(x.to(dtype)).double() - net64(x.to(dtype).double())
    return (e[:, :, None] - e[:, None, :]).abs().flatten(1).max(dim=1).values


def _ball(x: torch.Tensor, radius: float, g: torch.Generator) -> torch.Tensor:
    d = torch.randn(x.shape, generator=g)
    d = d / d.flatten(1).norm(dim=1).reshape(-1, *[1] * (x.dim() - 1))
    return x + d * radius * torch.rand(x.shape[0], *[1] * (x.dim() - 1), generator=g)


@pytest.mark.parametrize("kind", ["mlp2", "mlp4", "conv"])
@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
@pytest.mark.parametrize("seed", [0, 1])
def test_E_dominates_the_observed_float32_error_and_is_small(kind, act, seed):
    net, shape = _net(kind, act, seed)
    net64 = copy.deepcopy(net).double()
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(128, *shape, generator=g)
    radius = 0.5
    E = margin_error_bound(net, x, radius=radius)
    assert E.shape == (128,) and E.dtype == torch.float64 and torch.isfinite(E).all()
    worst = torch.zeros(128, dtype=torch.float64)
    for t in range(10):
        points = x if t == 0 else _ball(x, radius, g)
        for batch in (1, 7, 128):  # the summation order changes with the batch size
            obs = torch.cat([_observed(net, net64, points[i:i + batch]) for i in range(0, 128, batch)])
            worst = torch.maximum(worst, obs)
    assert (worst <= E).all(), (worst / E).max()
    assert worst.max() > 0  # the comparison saw real rounding
    with torch.no_grad():
        z = net64(x.double())
    margin = (z.max(1).values - z.topk(2, dim=1).values[:, 1])
    # a worst-case bound (gamma_n |W||x| per layer, errors carried by per-layer norms): measured 2e-4 .. 4.5e-3
    # of the median margin on these nets, while the observed errors are ~1e-3 of E
    assert E.median() < 1e-2 * margin.median(), (E.median(), margin.median())
    # the ball costs: E grows with the radius, and E at the centre alone is smaller
    assert (margin_error_bound(net, x) <= E).all()


def _boundary_setup(seed: int = 0):
    net, shape = _net("mlp2", nn.Tanh, seed)
    net64 = copy.deepcopy(net).double()
    g = torch.Generator().manual_seed(7)
    x = torch.rand(40, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        z = net64(x)
    y = z.argmax(1)
    other = z.clone().scatter(1, y[:, None], -torch.inf).argmax(1)
    return net, net64, x, y, other


def _push_to_boundary(net64, x, y, other, distance: float) -> torch.Tensor:
    """Move each x along the gradient of its margin until it is within ``distance`` of the boundary
    (bisection in float64 on the step; the point stays on its label's side)."""
    x = x.clone().requires_grad_(True)
    def margin(v):
        z = net64(v)
        return z.gather(1, y[:, None])[:, 0] - z.scatter(1, y[:, None], -torch.inf).max(dim=1).values

    m = net64(x).gather(1, y[:, None]) - net64(x).gather(1, other[:, None])
    (grad,) = torch.autograd.grad(m.sum(), x)
    direction = -grad / grad.norm(dim=1, keepdim=True)
    x = x.detach()
    lo = torch.zeros(x.shape[0], dtype=torch.float64)  # on y's side
    hi = torch.full_like(lo, 0.05)
    with torch.no_grad():
        while (margin(x + hi[:, None] * direction) > 0).any():
            hi = torch.where(margin(x + hi[:, None] * direction) > 0, hi * 2, hi)
        for _ in range(80):
            mid = (lo + hi) / 2
            inside = margin(x + mid[:, None] * direction) > 0
            lo, hi = torch.where(inside, mid, lo), torch.where(inside, hi, mid)
            if ((hi - lo) < distance).all():
                break
    return x + lo[:, None] * direction


def test_points_within_1e6_of_the_boundary_are_not_certified_and_the_others_keep_their_radius():
    net, net64, x, y, other = _boundary_setup()
    near = _push_to_boundary(net64, x[:20], y[:20], other[:20], 1e-6).float()
    points = torch.cat([near, x[20:].float()])
    labels = y
    bound = lipschitz_bound(net, (24,), mode="pairwise")
    assert bound.guaranteed
    loader = DataLoader(TensorDataset(points, labels), batch_size=16)
    out = evaluate(net, loader, bound, [1e-12, 0.01], progress=False)
    assert out["rounding"]["dtype"] == "float32" and out["rounding"]["source"] == "model"
    # float32 near points: radius 0 (a misclassified one too), i.e. certified at no eps > 0
    assert (out["radii"][:20] == 0).all(), out["radii"][:20]
    # comfortable margins (the upper half) lose (almost) nothing: 2E is ~5e-4 of the median margin here
    far_exact, far = out["radii_exact_arithmetic"][20:], out["radii"][20:]
    comfortable = far_exact >= far_exact.median()
    assert comfortable.sum() >= 10 and (far_exact[comfortable] > 0.01).all()
    assert ((far / far_exact)[comfortable] > 0.999).all(), (far / far_exact)[comfortable]
    assert (far < far_exact).all()  # the rounding term is subtracted everywhere
    # mutation check: without the rounding term (margin_error=0, exact arithmetic assumed) many near points
    # get a positive radius and count as certified, which the assertion above refuses
    naive = evaluate(net, loader, bound, [1e-12], progress=False, margin_error=0.0)
    assert (naive["radii"][:20] > 1e-12).sum() >= 5
    assert torch.equal(naive["radii"], out["radii_exact_arithmetic"])
    assert out["rounding"]["lost"]["1e-12"] == int((naive["radii"][:20] > 1e-12).sum())
    assert out["summary"]["certified@1e-12"] < naive["summary"]["certified@1e-12"]


def test_certified_radius_needs_an_explicit_margin_error():
    net, net64, x, y, _ = _boundary_setup()
    bound = lipschitz_bound(net, (24,), mode="pairwise")
    with torch.no_grad():
        logits = net(x.float())
    with pytest.raises(TypeError, match="margin_error"):
        certified_radius(logits, y, bound, model=net)  # no silent exact-arithmetic default
    exact = certified_radius(logits, y, bound, model=net, margin_error=0)
    E = margin_error_bound(net, x.float(), radius=exact.double())
    r = certified_radius(logits, y, bound, model=net, margin_error=E)
    big = exact >= exact.median()
    assert (r <= exact).all() and (r < exact).all() and (r[big] > 0.999 * exact[big]).all()
    with pytest.raises(ValueError, match="margin_error"):
        certified_radius(logits, y, bound, model=net, margin_error=torch.ones(3))


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
def test_bfloat16_E_dominates_the_observed_error(act):
    net, shape = _net("mlp4", act, 3)
    net16 = copy.deepcopy(net).to(torch.bfloat16)
    net64 = copy.deepcopy(net16).double()  # the exact network is the one with the bf16 weights
    g = torch.Generator().manual_seed(5)
    x = torch.rand(128, *shape, generator=g).to(torch.bfloat16).float()  # representable in bf16
    E = margin_error_bound(net16, x.to(torch.bfloat16), radius=0.25)
    assert torch.isfinite(E).all()
    worst = torch.zeros(128, dtype=torch.float64)
    for t in range(10):
        points = x if t == 0 else _ball(x, 0.25, g).to(torch.bfloat16).float()
        inside = (points - x).flatten(1).norm(dim=1) <= 0.25
        worst = torch.maximum(worst, torch.where(inside, _observed(net16, net64, points, torch.bfloat16), 0.0))
    assert (worst <= E).all() and worst.max() > 0
    # float32 accumulation (a stated property of the kernels) is tighter, u = 2^-8 still per layer
    E_acc = margin_error_bound(net16, x.to(torch.bfloat16), radius=0.25, accumulate=torch.float32)
    assert (E_acc < E).all()
    # worst case bf16 sums of >= 256 terms have no bound: nothing is certified
    wide = nn.Sequential(nn.Linear(300, 4)).to(torch.bfloat16)
    assert torch.isinf(margin_error_bound(wide, torch.rand(2, 300, dtype=torch.bfloat16))).all()
    assert gamma(256, unit_roundoff(torch.bfloat16)) == float("inf")


def test_unknown_modules_are_refused_by_name():
    with pytest.raises(TypeError, match="MaxPool2d"):
        margin_error_bound(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)), torch.rand(1, 1, 6, 6))


def test_lipzoo_layers_and_batch_norm_are_bounded():
    from lipzoo.layers import AvgPool2d, Flatten, LTConv2d, LTLinear, LTResidualConv, LTResidualLinear, Normalize

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    net = nn.Sequential(Normalize([0.5], [0.25]), LTConv2d(1, 4, 3, padding=1), bn, LTResidualConv(4, 6),
                        AvgPool2d(2), Flatten(), LTResidualLinear(64, 32, activation="tanh"),
                        LTLinear(64, 3, activation=None)).eval()
    net64 = copy.deepcopy(net).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 8, 8, generator=g)
    E = margin_error_bound(net, x, radius=0.3)
    worst = torch.zeros(32, dtype=torch.float64)
    for t in range(5):
        worst = torch.maximum(worst, _observed(net, net64, x if t == 0 else _ball(x, 0.3, g)))
    assert torch.isfinite(E).all() and (worst <= E).all() and worst.max() > 0


def test_report_states_the_arithmetic_and_the_points_lost(tmp_path):
    net, net64, x, y, other = _boundary_setup()
    near = _push_to_boundary(net64, x[:8], y[:8], other[:8], 1e-6).float()
    data = TensorDataset(torch.cat([near, x[8:].float()]), y)
    report = certify(net, data, ["1e-12"], input_shape=(24,), out_dir=tmp_path, progress=False)
    rounding = json.loads((tmp_path / "report.json").read_text())["rounding"]
    assert rounding["dtype"] == "float32" and rounding["radii_account_for_rounding"] is True
    assert rounding["lost"]["1e-12"] >= 1 and rounding["margin_error_max"] > 0
    table = format_table(report)
    assert "arithmetic: float32" in table and "lost to rounding" in table


def test_the_issue_scenario_on_the_shipped_mnist_model():
    """Issue 22 on `crm-mnist-4c3f`, other numbers: points moved to float64 margins between 1e-9 and 1e-3 of
    the decision boundary. Certified in float64, the radius is positive only above the rounding bound, and
    noise inside 0.999 of it, evaluated in float64 with three batch sizes, never changes a certified class;
    in float32 none of them is certified (E ~ 2.6 there), although the exact-arithmetic formula would certify
    some of them."""
    import lipzoo
    from lipzoo.data import load_dataset

    torch.manual_seed(0)
    model = lipzoo.load("crm-mnist-4c3f").eval()
    bound = lipschitz_bound(model, (1, 28, 28), progress=False, cache=False)
    data = load_dataset("mnist", split="test")
    x = torch.stack([data[i][0] for i in range(60)]).double()
    y = torch.tensor([int(data[i][1]) for i in range(60)])
    m64 = lipzoo.load("crm-mnist-4c3f").eval().double()

    def margin(v, labels):
        with torch.no_grad():
            out = m64(v)
        return out.gather(1, labels[:, None])[:, 0] - out.scatter(1, labels[:, None], -1e30).max(1).values

    ok = margin(x, y) > 0
    x, y = x[ok][:24], y[ok][:24]
    far = torch.rand(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    keep = margin(far, y) < 0
    x, y, far = x[keep], y[keep], far[keep]
    target = torch.logspace(-9, -3, len(x), dtype=torch.float64)
    lo, hi = torch.zeros(len(x), dtype=torch.float64), torch.ones(len(x), dtype=torch.float64)
    for _ in range(60):  # bisection on the segment to the other class: margin just above the target
        mid = (lo + hi) / 2
        above = margin(x + mid[:, None, None, None] * (far - x), y) > target
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    xb = x + lo[:, None, None, None] * (far - x)
    assert len(xb) >= 10
    out64 = evaluate(m64, DataLoader(TensorDataset(xb, y), batch_size=7), bound, [1e-9], progress=False)
    r = out64["radii"]
    certified = r > 0
    assert 0 < int(certified.sum()) < len(xb)  # the margins below ~2E (1e-8) are not certified
    assert bool((out64["margin_errors"] < 1e-7).all())
    gen = torch.Generator().manual_seed(5)
    for _ in range(10):
        d = torch.randn(xb.shape, dtype=torch.float64, generator=gen)
        xp = xb + 0.999 * r[:, None, None, None] * d / d.flatten(1).norm(dim=1)[:, None, None, None]
        for bs in (1, 5, len(xp)):
            with torch.no_grad():
                pred = torch.cat([m64(xp[i:i + bs]) for i in range(0, len(xp), bs)]).argmax(1)
            assert not bool(((pred != y) & certified).any())
    m32 = lipzoo.load("crm-mnist-4c3f").eval()
    out32 = evaluate(m32, DataLoader(TensorDataset(xb.float(), y), batch_size=7), bound, [1e-9], progress=False)
    assert not bool((out32["radii"] > 0).any()) and bool((out32["radii_exact_arithmetic"] > 0).any())
