"""Numbers that cannot lie: rounding in the bound, the radius and the labels, and the certificate as a type.

References are exact (``fractions.Fraction`` of the very floats involved) or computed in a much
higher precision (``mpmath``, 50 digits), never the code path under test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from fractions import Fraction

import mpmath
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lipzoo import LipLTEstimator, LipschitzBound, lipschitz_bound
from lipzoo.bounds import BoundOptions
from lipzoo.bounds.liplt import output_norms
from lipzoo.bounds.norms import EXACT_MARGIN, exact_norm
from lipzoo.bounds.radius import certified_radius as radius_from_tensor
from lipzoo.bounds.radius import pairwise_radii
from lipzoo.certify import certified_radius, evaluate, pairwise_constants
from lipzoo.certify.report import certify, format_table
from lipzoo.layers.operators import DenseOp, compose


def _exact_sq(a: torch.Tensor, b: torch.Tensor) -> Fraction:
    """``||a - b||^2`` of two float vectors, exactly."""
    return sum((Fraction(x) - Fraction(y)) ** 2 for x, y in zip(a.tolist(), b.tolist()))


def _near_rows(scale=1e3, gap=1e-5, n=8, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, n, generator=g, dtype=torch.float64)
    w[0] = w[0] / w[0].norm() * scale
    d = torch.randn(n, generator=g, dtype=torch.float64)
    w[1] = w[0] + d / d.norm() * gap
    return w


def _linear(weight: torch.Tensor) -> nn.Sequential:
    lin = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.zero_()
    return nn.Sequential(lin)


# ---------------------------------------------------------------- 1. pairwise output norms


def test_rows_1e5_apart_at_scale_1e3_give_the_exact_pairwise_constant():
    """The Gram form gave L_01 = 1.5e-154 here (and a certified radius of 1e148)."""
    w = _near_rows()
    b = lipschitz_bound(_linear(w), (8,), mode="pairwise")
    exact = float(mpmath.sqrt(mpmath.mpf(_exact_sq(w[0], w[1]).numerator) / _exact_sq(w[0], w[1]).denominator))
    assert b.guaranteed and b.guarantee == "exact"
    assert b.value[0, 1] == pytest.approx(exact, rel=1e-3)
    assert b.value[0, 1] >= exact and b.value[1, 0] >= exact
    # and the radius it certifies is the true distance to the decision boundary, not 1e148
    z = torch.tensor([[1e-4, 0.0, -1e9]], dtype=torch.float64)
    r = certified_radius(z, torch.tensor([0]), b, model=_linear(w), margin_error=0)  # exact arithmetic assumed
    assert r.item() == pytest.approx(1e-4 / exact, rel=1e-3) and r.item() <= 1e-4 / exact


@pytest.mark.parametrize("gap", [1e-2, 1e-5, 1e-8, 1e-11, 0.0])
def test_pairwise_output_norms_are_never_below_the_exact_value(gap):
    """Against exact rational arithmetic, for every pair, including near-coincident and equal rows."""
    for seed in range(5):
        rows = _near_rows(scale=1e3, gap=gap, n=16, k=5, seed=seed)
        rows[3] = rows[2] * (1 + 1e-12)
        val = output_norms(rows, "pairwise")
        for i in range(5):
            for j in range(5):
                if i == j:
                    assert val[i, j] == 0
                    continue
                exact = _exact_sq(rows[i], rows[j])
                got = Fraction(val[i, j].item()) ** 2
                assert got >= exact, (gap, seed, i, j)
                if exact > 0:  # and tight: within 1e-6 relative
                    assert got <= exact * Fraction(1 + 1e-6) ** 2, (gap, seed, i, j)


def test_pairwise_output_norms_chunk_many_near_pairs():
    """Every pair nearly coincides: all of them take the direct path, computed in chunks."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 300, generator=g, dtype=torch.float64) * 1e3
    rows = base + torch.randn(40, 300, generator=g, dtype=torch.float64) * 1e-6
    got = output_norms(rows, "pairwise")
    ref = (rows[:, None] - rows[None]).norm(dim=-1)
    off = ~torch.eye(40, dtype=torch.bool)
    assert (got[off] >= ref[off]).all()
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=0)


def test_per_class_and_global_output_norms_are_sound_against_50_digits():
    mpmath.mp.dps = 50
    for seed in range(4):
        rows = _near_rows(scale=1e3, gap=1e-7, n=12, k=4, seed=seed)
        pc = output_norms(rows, "per_class")
        for i in range(4):
            exact = sum(Fraction(x) ** 2 for x in rows[i].tolist())
            assert Fraction(pc[i].item()) ** 2 >= exact
        glob = output_norms(rows, "global")
        gram = mpmath.matrix([[mpmath.fsum(mpmath.mpf(a) * mpmath.mpf(b) for a, b in zip(ri, rj))
                               for rj in rows.tolist()] for ri in rows.tolist()])
        top = max(mpmath.eigsy(gram, eigvals_only=True))
        assert mpmath.mpf(glob.item()) >= mpmath.sqrt(top)
        assert mpmath.mpf(glob.item()) <= mpmath.sqrt(top) * (1 + mpmath.mpf("1e-9"))


def test_estimator_output_side_has_no_cancellation_and_finite_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        net[2].weight.copy_(_near_rows(n=8))
    est = LipLTEstimator(net, (6,), mode="pairwise", n_iter=200)
    val = est()
    # eq. (16) densely: ReLU has [alpha, beta] = [0, 1], so H_hat = W0 / 2 and d = 1/2
    w0, d = net[0].weight.detach(), net[2].weight.detach()[0] - net[2].weight.detach()[1]
    ref = 0.5 * (d @ w0).norm() + 0.5 * d.norm() * torch.linalg.matrix_norm(w0, ord=2)
    assert val[0, 1].item() == pytest.approx(ref.item(), rel=1e-3)
    val.sum().backward()
    assert torch.isfinite(net[0].weight.grad).all() and torch.isfinite(net[2].weight.grad).all()
    assert net[2].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- 2. radii


def test_tiny_float64_constant_with_float32_logits_is_not_inf_or_nan():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float32)
    labels = torch.tensor([0, 1])
    for tiny in (1e-30, 1e-45, 1e-50, 1e-300):
        L = torch.tensor([[0.0, tiny], [tiny, 0.0]], dtype=torch.float64)
        r = radius_from_tensor(logits, labels, L)
        assert r.dtype == torch.float32 and torch.isfinite(r).all(), tiny
        assert all(Fraction(x) <= 1 / Fraction(tiny) for x in r.tolist()), tiny
    with pytest.raises(ValueError, match="positive"):
        radius_from_tensor(logits, labels, torch.zeros(2, 2, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_radii_are_rounded_down_in_the_logits_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    k = 6
    logits = (torch.randn(400, k, generator=g, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, k, (400,), generator=g)
    a = torch.rand(k, k, generator=g, dtype=torch.float64) * 3 + 1e-3
    L = a + a.T
    radii = pairwise_radii(logits, labels, L)
    assert radii.dtype == dtype
    exact_hits = 0
    for n in range(400):
        y = int(labels[n])
        for i in range(k):
            if i == y:
                continue
            exact = (Fraction(logits[n, y].item()) - Fraction(logits[n, i].item())) / Fraction(L[y, i].item())
            got = Fraction(radii[n, i].item())
            assert got <= exact, (n, i)
            exact_hits += got == exact
    # conservative, not sloppy: within a few ulps of the logits' dtype
    ref = (logits.double().gather(1, labels[:, None]) - logits.double()) / L[labels]
    fin = torch.isfinite(radii)
    rel = ((ref[fin] - radii.double()[fin]).abs() / ref[fin].abs().clamp_min(1e-30)).max()
    assert rel <= 8 * torch.finfo(dtype).eps


# ---------------------------------------------------------------- 3. labels that match the dtype


def test_float32_exact_norms_cover_their_rounding_on_many_random_ops():
    """float32 ``exact_norm`` (a dtype-sized margin) is never below the norm of the same float32 matrices."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for trial in range(60):
        m, n, p = (int(x) for x in torch.randint(2, 60, (3,), generator=g))
        a = torch.randn(m, n, generator=g) * 10 ** float(torch.randint(-3, 4, (1,), generator=g))
        b = torch.randn(n, p, generator=g)
        if trial % 3 == 0:  # nearly rank one with a cancelling second factor
            b = b[:, :1] @ torch.ones(1, p) + 1e-4 * b
        op = compose(DenseOp(a), DenseOp(b))
        got = exact_norm(op, (p,)).double()
        ref = torch.linalg.matrix_norm(a.double() @ b.double(), ord=2)
        assert got >= ref, trial
        worst = max(worst, float((got - ref) / ref))
    assert worst < 0.05  # sound, and still useful


def _cancelling_float32_net(seed, p=20, n=200, k=5, eps=1e-3):
    """Two linear layers whose product nearly vanishes: ``W2 W1 = eps D W1`` with ``||W2|| ||W1||`` large."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(n, p, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(w1)
    c = torch.randn(k, n, generator=g, dtype=torch.float64)
    w2 = c - (c @ q) @ q.T + eps * torch.randn(k, n, generator=g, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(p, n, bias=False), nn.Linear(n, k, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(w1)
        net[1].weight.copy_(w2)
    return net.float()


@pytest.mark.parametrize("seed", range(4))
def test_float32_request_is_labelled_exact_only_when_it_is(seed):
    """A float32 computation of this net came out 6e-5 *below* the truth while labelled ``exact``."""
    net = _cancelling_float32_net(seed)
    w = net[1].weight.double() @ net[0].weight.double()  # the float32 weights, exactly; product in float64
    ref = {"pairwise": torch.cdist(w, w), "per_class": w.norm(dim=1), "global": torch.linalg.matrix_norm(w, ord=2)}
    for mode, exact in ref.items():
        b = lipschitz_bound(net, (20,), mode=mode, dtype=torch.float32, norm="exact")
        assert b.value.dtype == torch.float32 and b.guarantee == "exact"
        assert (b.value.double() >= exact).all(), mode
        assert (b.value.double() <= exact * (1 + 1e-5) + 1e-30).all(), mode  # and rounded up, not loosened
    assert EXACT_MARGIN == 1e-6


# ---------------------------------------------------------------- 4. the certificate as a type


def test_lipschitz_bound_is_immutable():
    src = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    b = LipschitzBound(value=src, guaranteed=True, guarantee="exact", layer_bounds=[1.0, 2.0],
                       details={"inner": {"0,-1": 1.0}, "per_layer": [1.0]})
    src[0, 1] = 0.0  # the bound kept its own copy
    assert b.value[0, 1] == 2.0
    v = b.value
    v[0, 1] = 0.0  # reads are clones
    assert b.value[0, 1] == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.value = torch.zeros(2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.guarantee = "exact"
    with pytest.raises(TypeError):
        b.details["inner"]["0,-1"] = 0.0
    assert isinstance(b.layer_bounds, tuple) and isinstance(b.details["per_layer"], tuple)
    json.dumps(b.to_dict())
    with pytest.raises(ValueError, match="contradicts"):
        LipschitzBound(value=src, guaranteed=True, guarantee="estimate")
    computed = lipschitz_bound(_linear(torch.randn(3, 4, dtype=torch.float64)), (4,))
    with pytest.raises(TypeError):
        computed.details["inner"] = {}
    round_trip = LipschitzBound.from_dict(computed.to_dict())
    assert torch.equal(round_trip.value, computed.value) and round_trip.guarantee == computed.guarantee


def _eval_setup():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 6, generator=g)
    model = _linear(w)
    x = torch.rand(40, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, DataLoader(TensorDataset(x, y), batch_size=16), w, x, y


def test_evaluate_takes_a_bound_and_refuses_an_estimate_unless_asked(caplog):
    model, loader, w, x, y = _eval_setup()
    exact = lipschitz_bound(model, (6,))
    estimate = lipschitz_bound(model, (6,), norm="power", n_iter=50)
    with pytest.raises(TypeError, match="LipschitzBound"):
        evaluate(model, loader, exact.value, [0.1], progress=False)
    with pytest.raises(ValueError, match="estimate"):
        evaluate(model, loader, estimate, [0.1], progress=False)
    with pytest.raises(ValueError, match="estimate"):
        certified_radius(model(x), y, estimate, model=model, margin_error=0)
    out = evaluate(model, loader, exact, [0.1], progress=False)
    assert out["kind"] == "certified" and "certified@0.1" in out["summary"]
    with caplog.at_level(logging.WARNING):
        est = evaluate(model, loader, estimate, [0.1], attack=dict(steps=5), allow_estimate=True, progress=False)
    assert est["kind"] == "estimated" and est["guarantee"] == "estimate"
    assert not any("certified" in key for key in est["summary"]) and "estimated@0.1" in est["summary"]


def test_evaluate_checks_classes_and_values():
    model, loader, w, x, y = _eval_setup()
    with pytest.raises(ValueError, match="not computed by lipzoo.lipschitz_bound"):  # a bound built by hand
        evaluate(model, loader, LipschitzBound(value=torch.ones(4, 4)), [0.1], progress=False)
    with pytest.raises(ValueError, match="4 classes but the logits have 3"):
        evaluate(model, loader, LipschitzBound(value=torch.ones(4, 4)), [0.1], progress=False, allow_estimate=True)
    for bad in (float("inf"), -1.0):
        L = torch.cdist(w.double(), w.double())
        L[0, 1] = bad
        with pytest.raises(ValueError, match="finite and non-negative"):
            evaluate(model, loader, LipschitzBound(value=L), [0.1], progress=False, allow_estimate=True)


def test_per_class_and_global_bounds_are_converted_soundly():
    model, loader, w, x, y = _eval_setup()
    bounds = {m: lipschitz_bound(model, (6,), mode=m) for m in ("pairwise", "per_class", "global")}
    pc, glob = bounds["per_class"].value, bounds["global"].value
    off = ~torch.eye(3, dtype=torch.bool)
    assert (pairwise_constants(bounds["per_class"], 3)[off] >= (pc[:, None] + pc[None])[off]).all()
    assert (pairwise_constants(bounds["global"], 3)[off] >= glob * 2 ** 0.5).all()
    with pytest.raises(ValueError, match="num_classes is required"):
        pairwise_constants(bounds["global"])
    z = model(x).detach()
    radii = {m: certified_radius(z, y, b, model=model, margin_error=0) for m, b in bounds.items()}
    assert (radii["per_class"] <= radii["pairwise"]).all() and (radii["global"] <= radii["pairwise"]).all()
    assert (radii["global"] > 0).any()


def test_certify_labels_an_estimate_everywhere(tmp_path):
    model, loader, w, x, y = _eval_setup()
    data = TensorDataset(x, y)
    with pytest.raises(ValueError, match="estimate"):
        certify(model, data, ["0.1"], input_shape=(6,), options=BoundOptions(norm="power"), progress=False)
    rep = certify(model, data, ["0.1"], input_shape=(6,), options=BoundOptions(norm="power"), allow_estimate=True,
                  out_dir=tmp_path, progress=False)
    text = (tmp_path / "report.json").read_text()
    report = json.loads(text)
    assert report["kind"] == "estimated" and "estimated@0.1" in report["metrics"]
    assert "certified" not in text
    table = format_table(rep)
    assert "estimate" in table and "certified" not in table
    good = certify(model, data, ["0.1"], input_shape=(6,), progress=False)
    assert good["kind"] == "certified" and "certified@0.1" in good["metrics"]
    assert "certified" in format_table(good)
