"""CRM loss (eqs. 5-6) against scalar-loop references, Proposition 1, gradients, masks and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipzoo.losses import CRMLoss, crm_loss, soft_radius


def _random_problem(rng: np.random.Generator, n: int = 16, k: int = 5, scale: float = 3.0):
    logits = torch.tensor(rng.normal(size=(n, k)) * scale)
    labels = torch.tensor(rng.integers(0, k, size=n))
    a = rng.uniform(0.5, 3.0, size=(k, k))
    pairwise = torch.tensor((a + a.T) / 2 * (1 - np.eye(k)))
    return logits, labels, pairwise


def _loop_radii(z: list[float], y: int, L: np.ndarray) -> list[float]:
    return [(z[y] - z[i]) / L[y, i] for i in range(len(z)) if i != y]


def _loop_soft_radius(z, y, L, t):
    return -math.log(sum(math.exp(-t * r) for r in _loop_radii(z, y, L))) / t


def _loop_crm(logits, labels, L, t, lam, r0, g):
    z_all, L = logits.tolist(), L.numpy()
    ce, reg = 0.0, 0.0
    for z, y in zip(z_all, labels.tolist()):
        ce += -(z[y] - math.log(sum(math.exp(v) for v in z)))
        hard = min(_loop_radii(z, y, L))
        correct = max(range(len(z)), key=lambda i: z[i]) == y
        if correct and (r0 is None or hard < r0):
            reg += -_loop_soft_radius(z, y, L, t) if g == "linear" else math.exp(-t * hard) / t
    n = len(z_all)
    return ce / n + lam * reg / n, ce / n, reg / n


def test_soft_radius_matches_loop(rng, tol):
    logits, labels, L = _random_problem(rng)
    got = soft_radius(logits, labels, L, t=2.5)
    want = [_loop_soft_radius(z, y, L.numpy(), 2.5) for z, y in zip(logits.tolist(), labels.tolist())]
    np.testing.assert_allclose(got.numpy(), want, rtol=tol.FLOAT64_RTOL, atol=tol.FLOAT64_ATOL)


@pytest.mark.parametrize("g", ["linear", "exp"])
@pytest.mark.parametrize("r0", [None, 0.8])
def test_crm_loss_matches_loop(rng, tol, g, r0):
    logits, labels, L = _random_problem(rng, n=32)
    correct = logits.argmax(1) == labels
    assert 0 < correct.sum() < len(labels)  # the problem mixes both kinds of points
    loss, parts = crm_loss(logits, labels, L, t=3.0, lam=7.0, r0=r0, g=g, return_parts=True)
    want, want_ce, want_reg = _loop_crm(logits, labels, L, 3.0, 7.0, r0, g)
    assert loss.item() == pytest.approx(want, rel=tol.FLOAT64_RTOL)
    assert parts["ce"].item() == pytest.approx(want_ce, rel=tol.FLOAT64_RTOL)
    assert parts["reg"].item() == pytest.approx(want_reg, rel=tol.FLOAT64_RTOL, abs=tol.FLOAT64_ATOL)
    radii = [min(_loop_radii(z, y, L.numpy())) for z, y in zip(logits.tolist(), labels.tolist())]
    active = sum(1 for r, c in zip(radii, correct.tolist()) if c and (r0 is None or r < r0))
    assert int(parts["active"]) == active
    mean_radius = np.mean([r if c else 0.0 for r, c in zip(radii, correct.tolist())])
    assert parts["mean_radius"].item() == pytest.approx(mean_radius, rel=tol.FLOAT64_RTOL)


def test_default_float32_matches_loop(rng, tol):
    logits, labels, L = _random_problem(rng)
    got = crm_loss(logits.float(), labels, L.float())
    want, _, _ = _loop_crm(logits, labels, L, 5.0, 15.0, None, "linear")
    assert got.item() == pytest.approx(want, rel=tol.FLOAT32_RTOL)


@pytest.mark.parametrize("k", [2, 3, 10, 200])
@pytest.mark.parametrize("t", [0.5, 5.0, 50.0])
def test_proposition_1_bounds(rng, tol, k, t):
    logits, labels, L = _random_problem(rng, n=64, k=k)
    soft = soft_radius(logits, labels, L, t)
    radii = torch.stack([torch.tensor(min(_loop_radii(z, y, L.numpy())))
                         for z, y in zip(logits.tolist(), labels.tolist())]).double()
    assert (soft <= radii + tol.FLOAT64_ATOL).all()
    assert (radii <= soft + math.log(k - 1) / t + tol.FLOAT64_ATOL).all()
    if k == 2:  # a single competitor: the soft radius is exact
        torch.testing.assert_close(soft, radii, rtol=tol.FLOAT64_RTOL, atol=tol.FLOAT64_ATOL)


@pytest.mark.parametrize("g", ["linear", "exp"])
def test_gradients_reach_logits_and_pairwise_L(rng, g):
    logits, labels, L = _random_problem(rng)
    logits.requires_grad_(True)
    L.requires_grad_(True)
    crm_loss(logits, labels, L, g=g).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.isfinite(L.grad).all() and L.grad.abs().sum() > 0
    # A larger Lipschitz constant shrinks radii: the penalty can only grow with L.
    assert (L.grad >= 0).all()


def test_gradcheck_linear():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, dtype=torch.float64, generator=gen).requires_grad_(True)
    labels = logits.detach().argmax(1)  # all correct: every point is regularized
    L = (torch.rand(4, 4, dtype=torch.float64, generator=gen) + 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z, p: crm_loss(z, labels, (p + p.T) / 2, t=2.0), (logits, L))


def test_misclassified_and_large_radius_points_are_not_regularized():
    L = torch.ones(3, 3) - torch.eye(3)
    labels = torch.tensor([0, 0, 0])
    logits = torch.tensor([[1.0, 0.5, 0.0],    # correct, radius 0.5 < r0: regularized
                           [0.0, 2.0, 0.0],    # misclassified: not regularized
                           [9.0, 0.0, 0.0]], requires_grad=True)  # radius 9 > r0: not regularized
    loss, parts = crm_loss(logits, labels, L, t=4.0, lam=1.0, r0=2.0, return_parts=True)
    assert int(parts["active"]) == 1
    expected_reg = math.log(math.exp(-4 * 0.5) + math.exp(-4 * 1.0)) / 4 / 3
    assert parts["reg"].item() == pytest.approx(expected_reg, rel=1e-6)
    parts["reg"].backward()
    assert logits.grad[0].abs().sum() > 0
    assert (logits.grad[1:] == 0).all()


def test_everything_above_r0_gives_zero_penalty():
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    labels = torch.tensor([0, 1])
    L = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss, parts = crm_loss(logits, labels, L, r0=5.0, return_parts=True)
    assert parts["reg"].item() == 0.0 and int(parts["active"]) == 0
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_exp_penalty_stays_finite_with_badly_misclassified_points():
    logits = torch.tensor([[0.0, 1e4], [3.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    L = torch.tensor([[0.0, 0.01], [0.01, 0.0]])
    loss = crm_loss(logits, labels, L, t=50.0, g="exp")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_regularize_false_is_cross_entropy(rng):
    logits, labels, L = _random_problem(rng)
    loss, parts = crm_loss(logits, labels, L, regularize=False, return_parts=True)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-12)
    assert parts["reg"].item() == 0.0


def test_module_warmup_and_parity(rng):
    logits, labels, L = _random_problem(rng)
    module = CRMLoss(t=2.0, lam=3.0, r0=1.5, g="exp", warmup_epochs=2)
    assert "warmup_epochs=2" in repr(module)
    for epoch in (0, 1):
        module.set_epoch(epoch)
        assert not module.regularize
        assert module(logits, labels, L).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    module.set_epoch(2)
    full = crm_loss(logits, labels, L, t=2.0, lam=3.0, r0=1.5, g="exp")
    assert module(logits, labels, L).item() == pytest.approx(full.item(), rel=1e-12)
    loss, parts = module(logits, labels, L, return_parts=True)
    assert set(parts) == {"ce", "reg", "mean_radius", "active"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(t=0.0), "t must be"), (dict(t=float("inf")), "t must be"), (dict(lam=-1.0), "lam must be"),
    (dict(r0=0.0), "r0 must be"), (dict(r0=float("nan")), "r0 must be"), (dict(g="hinge"), "g must be one of"),
])
def test_crm_loss_rejects_bad_hyperparameters(kwargs, match):
    logits, labels, L = torch.zeros(2, 3), torch.tensor([0, 1]), torch.ones(3, 3)
    with pytest.raises(ValueError, match=match):
        crm_loss(logits, labels, L, **kwargs)
    with pytest.raises(ValueError, match=match):
        CRMLoss(**kwargs)


def test_soft_radius_rejects_bad_t():
    with pytest.raises(ValueError, match="t must be"):
        soft_radius(torch.zeros(1, 2), torch.tensor([0]), torch.ones(2, 2), t=-1.0)


def test_module_rejects_bad_epochs():
    with pytest.raises(ValueError, match="warmup_epochs must be"):
        CRMLoss(warmup_epochs=-1)
    with pytest.raises(ValueError, match="epoch must be"):
        CRMLoss().set_epoch(-3)


@pytest.mark.parametrize("logits, labels, L, match", [
    (torch.zeros(3), torch.tensor([0]), torch.ones(3, 3), "logits must be a"),
    (torch.zeros(2, 1), torch.tensor([0, 0]), torch.ones(1, 1), "K >= 2"),
    (torch.zeros(2, 3), torch.tensor([0]), torch.ones(3, 3), "labels must be a"),
    (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), torch.ones(3, 3), "integer tensor"),
    (torch.zeros(2, 3), torch.tensor([0, 3]), torch.ones(3, 3), r"labels must lie in \[0, 2\]"),
    (torch.zeros(2, 3), torch.tensor([0, 1]), torch.ones(2, 2), "pairwise_L must be a"),
    (torch.full((2, 3), float("nan")), torch.tensor([0, 1]), torch.ones(3, 3), "logits contain NaN"),
    (torch.zeros(2, 3), torch.tensor([0, 1]), torch.full((3, 3), float("nan")), "pairwise_L contains NaN"),
    (torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(3, 3), "positive off the diagonal"),
])
def test_invalid_inputs_name_the_argument(logits, labels, L, match):
    with pytest.raises(ValueError, match=match):
        crm_loss(logits, labels, L)


# -- GloRo, EMMA, hinge-KR: scalar-loop references, gradients, edge cases, errors ----------------------
from lipzoo.losses import EMMALoss, GloRoLoss, HKRLoss, emma_loss, gloro_loss, hkr_loss  # noqa: E402
from lipzoo.losses._margin import ramped_eps  # noqa: E402


def _logsumexp(values) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _loop_gloro(logits, labels, L, eps, trades_lam=None):
    """Leino et al.'s ⊥ logit and K+1 cross-entropy (or CE + λ KL(softmax(z)⊕0 ‖ softmax(z⊕⊥))), one point at a time."""
    L = L.numpy()
    total = 0.0
    for z, y in zip(logits.tolist(), labels.tolist()):
        bottom = max(z[j] + eps * L[y, j] for j in range(len(z)) if j != y)
        if trades_lam is None:
            total += _logsumexp(z + [bottom]) - z[y]
        else:
            lse, lse_hat = _logsumexp(z), _logsumexp(z + [bottom])
            p = [math.exp(v - lse) for v in z]
            kl = sum(pi * (math.log(pi) - (v - lse_hat)) for pi, v in zip(p, z))  # the ⊥ target is 0
            total += (lse - z[y]) + trades_lam * kl
    return total / len(labels)


def _loop_emma(logits, labels, L, eps, floor=0.01):
    """LiResNet's EMMA: competitors moved up by clip(r_j / eps, floor, 1) · eps · L_yj, then cross-entropy."""
    L = L.numpy()
    total = 0.0
    for z, y in zip(logits.tolist(), labels.tolist()):
        moved = []
        for j, zj in enumerate(z):
            if j == y:
                moved.append(zj)
                continue
            share = min(1.0, max(floor, (z[y] - zj) / max(eps * L[y, j], 1e-8)))
            moved.append(zj + share * eps * L[y, j])
        total += _logsumexp(moved) - moved[y]
    return total / len(labels)


def _loop_hkr(logits, labels, L, alpha, min_margin):
    """Hinge and KR terms on the radius-unit margins r_j = (z_y - z_j) / L_yj, averaged over j != y and the batch."""
    hinge = kr = 0.0
    for z, y in zip(logits.tolist(), labels.tolist()):
        r = _loop_radii(z, y, L.numpy())
        hinge += sum(max(0.0, min_margin - v) for v in r) / len(r)
        kr += sum(r) / len(r)
    n = len(labels)
    return alpha * hinge / n - (1 - alpha) * kr / n, hinge / n, kr / n


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("trades_lam", [None, 0.0, 2.5])
def test_gloro_loss_matches_loop(rng, tol, k, trades_lam):
    logits, labels, L = _random_problem(rng, n=24, k=k)
    loss, parts = gloro_loss(logits, labels, L, eps=0.4, trades_lam=trades_lam, return_parts=True)
    assert loss.item() == pytest.approx(_loop_gloro(logits, labels, L, 0.4, trades_lam), rel=tol.FLOAT64_RTOL)
    assert parts["ce"].item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=tol.FLOAT64_RTOL)
    radii = [min(_loop_radii(z, y, L.numpy())) for z, y in zip(logits.tolist(), labels.tolist())]
    correct = (logits.argmax(1) == labels).tolist()
    assert parts["mean_radius"].item() == pytest.approx(np.mean([max(r, 0) if c else 0 for r, c in zip(radii, correct)]),
                                                        rel=tol.FLOAT64_RTOL)
    assert parts["certified"].item() == pytest.approx(np.mean([r > 0.4 for r in radii]))


def test_plain_gloro_is_trades_with_lambda_one(rng, tol):
    logits, labels, L = _random_problem(rng)
    plain, parts = gloro_loss(logits, labels, L, eps=0.7, return_parts=True)
    trades, trades_parts = gloro_loss(logits, labels, L, eps=0.7, trades_lam=1.0, return_parts=True)
    assert plain.item() == pytest.approx(trades.item(), rel=tol.FLOAT64_RTOL)
    assert parts["robust"].item() == pytest.approx(trades_parts["ce"].item() + trades_parts["robust"].item(),
                                                   rel=tol.FLOAT64_RTOL)


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("eps", [0.0, 0.3, 5.0])
def test_emma_loss_matches_loop(rng, tol, k, eps):
    logits, labels, L = _random_problem(rng, n=24, k=k)
    loss, parts = emma_loss(logits, labels, L, eps=eps, return_parts=True)
    assert loss.item() == pytest.approx(_loop_emma(logits, labels, L, eps), rel=tol.FLOAT64_RTOL)
    assert parts["robust"] is loss
    assert parts["ce"].item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=tol.FLOAT64_RTOL)
    if eps == 0.0:  # no margin: plain cross-entropy
        assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=tol.FLOAT64_RTOL)


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("alpha", [0.0, 0.99, 1.0])
def test_hkr_loss_matches_loop(rng, tol, k, alpha):
    logits, labels, L = _random_problem(rng, n=24, k=k)
    loss, parts = hkr_loss(logits, labels, L, alpha=alpha, min_margin=0.8, return_parts=True)
    want, hinge, kr = _loop_hkr(logits, labels, L, alpha, 0.8)
    assert loss.item() == pytest.approx(want, rel=tol.FLOAT64_RTOL, abs=tol.FLOAT64_ATOL)
    assert parts["hinge"].item() == pytest.approx(hinge, rel=tol.FLOAT64_RTOL)
    assert parts["kr"].item() == pytest.approx(kr, rel=tol.FLOAT64_RTOL, abs=tol.FLOAT64_ATOL)


def test_hkr_is_invariant_to_the_scale_of_the_network(rng, tol):
    """Radius units: logits and constants scaled together (a network scaled by c) leave the loss unchanged."""
    logits, labels, L = _random_problem(rng)
    base = hkr_loss(logits, labels, L, min_margin=0.5)
    assert hkr_loss(7.0 * logits, labels, 7.0 * L, min_margin=0.5).item() == pytest.approx(base.item(),
                                                                                         rel=tol.FLOAT64_RTOL)
    # and to a shift of every logit, as the classifier is
    assert hkr_loss(logits + 3.0, labels, L, min_margin=0.5).item() == pytest.approx(base.item(), rel=1e-9)


def test_default_float32_matches_loop_for_every_loss(rng, tol):
    logits, labels, L = _random_problem(rng)
    z, P = logits.float(), L.float()
    assert gloro_loss(z, labels, P, eps=0.3).item() == pytest.approx(_loop_gloro(logits, labels, L, 0.3),
                                                                     rel=tol.FLOAT32_RTOL)
    assert emma_loss(z, labels, P, eps=0.3).item() == pytest.approx(_loop_emma(logits, labels, L, 0.3),
                                                                    rel=tol.FLOAT32_RTOL)
    assert hkr_loss(z, labels, P, min_margin=0.5).item() == pytest.approx(
        _loop_hkr(logits, labels, L, 0.99, 0.5)[0], rel=tol.FLOAT32_RTOL, abs=tol.FLOAT32_ATOL)


_MARGIN_LOSSES = {
    "gloro": lambda z, y, L: gloro_loss(z, y, L, eps=0.5),
    "gloro-trades": lambda z, y, L: gloro_loss(z, y, L, eps=0.5, trades_lam=3.0),
    "emma": lambda z, y, L: emma_loss(z, y, L, eps=0.5),
    "hkr": lambda z, y, L: hkr_loss(z, y, L, min_margin=0.5, alpha=0.9),
}


@pytest.mark.parametrize("name", sorted(_MARGIN_LOSSES))
def test_margin_loss_gradients_reach_logits_and_pairwise_L(rng, name):
    logits, labels, L = _random_problem(rng)
    logits.requires_grad_(True)
    L.requires_grad_(True)
    _MARGIN_LOSSES[name](logits, labels, L).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.isfinite(L.grad).all() and L.grad.abs().sum() > 0
    assert (L.grad.diagonal() == 0).all()  # the diagonal is never read
    if name != "hkr":  # a larger constant moves the competitors up: the loss can only grow with L
        assert (L.grad >= 0).all()


@pytest.mark.parametrize("name", ["gloro", "gloro-trades", "hkr"])
def test_gradcheck_gloro_and_hkr(name):
    gen = torch.Generator().manual_seed(2)
    logits = (3 * torch.randn(6, 4, dtype=torch.float64, generator=gen)).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    L = (torch.rand(4, 4, dtype=torch.float64, generator=gen) + 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z, p: _MARGIN_LOSSES[name](z, labels, (p + p.T) / 2), (logits, L))


def test_emma_share_is_detached_and_L_is_not(rng, tol):
    """The gradient is that of CE(z + s · eps · L) with the shares s held constant (LiResNet's .detach())."""
    logits, labels, L = _random_problem(rng)
    eps, k = 0.6, logits.shape[1]
    shares = torch.zeros_like(logits)
    for n, (z, y) in enumerate(zip(logits.tolist(), labels.tolist())):
        for j in range(k):
            if j != y:
                shares[n, j] = min(1.0, max(0.01, (z[y] - z[j]) / (eps * L[y, j].item())))
    z1, L1 = logits.clone().requires_grad_(True), L.clone().requires_grad_(True)
    emma_loss(z1, labels, L1, eps=eps).backward()
    z2, L2 = logits.clone().requires_grad_(True), L.clone().requires_grad_(True)
    F.cross_entropy(z2 + shares * eps * L2[labels], labels).backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=tol.FLOAT64_RTOL, atol=tol.FLOAT64_ATOL)
    torch.testing.assert_close(L1.grad, L2.grad, rtol=tol.FLOAT64_RTOL, atol=tol.FLOAT64_ATOL)


def test_equal_logits_and_an_ignored_diagonal():
    logits = torch.zeros(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    L = torch.full((3, 3), 2.0)
    L.fill_diagonal_(1e6)  # never read
    ce = math.log(3)
    gloro = gloro_loss(logits, labels, L, eps=0.5)  # ⊥ = 0 + 0.5 · 2 = 1
    assert gloro.item() == pytest.approx(math.log(3 + math.e), rel=1e-6)
    emma = emma_loss(logits, labels, L, eps=0.5)  # radius 0: the competitors move up by 0.01 · 0.5 · 2
    assert emma.item() == pytest.approx(math.log(1 + 2 * math.exp(0.01)), rel=1e-6)
    hkr, parts = hkr_loss(logits, labels, L, min_margin=0.3, alpha=0.9, return_parts=True)  # r = 0
    assert hkr.item() == pytest.approx(0.9 * 0.3, rel=1e-6) and parts["kr"].item() == 0.0
    for loss in (gloro, emma, hkr):
        grad, = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all()
    assert gloro_loss(logits, labels, L, eps=0.0).item() > ce  # ⊥ ties with every class


def test_zero_constants_are_refused_unless_the_caller_vouches_for_them():
    logits, labels = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([0])
    L = torch.ones(3, 3)
    L[0, 2] = L[2, 0] = 0.0
    for call in (lambda v: gloro_loss(logits, labels, L, eps=0.5, validate=v),
                 lambda v: emma_loss(logits, labels, L, eps=0.5, validate=v),
                 lambda v: hkr_loss(logits, labels, L, min_margin=0.5, validate=v)):
        with pytest.raises(ValueError, match="positive off the diagonal"):
            call(True)
    # unchecked (the trainer's estimate), GloRo and EMMA simply add no margin for the pair
    bottom = max(0.0 + 0.5, 1.0 + 0.0)
    assert gloro_loss(logits, labels, L, eps=0.5, validate=False).item() == pytest.approx(
        _logsumexp([2.0, 0.0, 1.0, bottom]) - 2.0, rel=1e-6)
    assert emma_loss(logits, labels, L, eps=0.5, validate=False).item() == pytest.approx(
        _logsumexp([2.0, 0.0 + 0.5, 1.0]) - 2.0, rel=1e-6)


def test_eps_ramp_and_modules(rng):
    assert [ramped_eps(1.0, 0.5, 4, e) for e in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert [ramped_eps(1.0, 1.0, 3, e) for e in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [ramped_eps(2.0, 0.0, 3, e) for e in range(3)] == [2.0, 2.0, 2.0]
    assert ramped_eps(1.0, 0.5, 1, 0) == 1.0  # a one-epoch run trains at eps
    logits, labels, L = _random_problem(rng)
    gloro = GloRoLoss(eps=0.8, eps_ramp=0.5, epochs=4, trades_lam=2.0)
    emma = EMMALoss(eps=0.8, eps_ramp=0.5, epochs=4)
    for epoch, eps in ((0, 0.4), (1, 0.8), (3, 0.8)):
        for module in (gloro, emma):
            module.set_epoch(epoch)
            assert module.regularize and module.current_eps == pytest.approx(eps)
        assert gloro(logits, labels, L).item() == gloro_loss(logits, labels, L, eps=eps, trades_lam=2.0).item()
        assert emma(logits, labels, L).item() == emma_loss(logits, labels, L, eps=eps).item()
    hkr = HKRLoss(min_margin=0.5, alpha=0.9)
    hkr.set_epoch(3)
    assert hkr.regularize and hkr(logits, labels, L).item() == hkr_loss(logits, labels, L, min_margin=0.5,
                                                                         alpha=0.9).item()
    _, parts = hkr(logits, labels, L, return_parts=True)
    assert set(parts) == {"hinge", "kr", "mean_radius"}
    assert set(gloro(logits, labels, L, return_parts=True)[1]) == {"ce", "robust", "mean_radius", "certified"}
    assert "eps_ramp=0.5" in repr(gloro) and "eps=0.8" in repr(emma) and "min_margin=0.5" in repr(hkr)


@pytest.mark.parametrize("call, match", [
    (lambda z, y, L: gloro_loss(z, y, L, eps=-0.1), r"eps must be a finite number >= 0 \(the GloRo radius\)"),
    (lambda z, y, L: gloro_loss(z, y, L, eps=float("inf")), "eps must be a finite number"),
    (lambda z, y, L: gloro_loss(z, y, L, eps=0.1, trades_lam=-1.0), "trades_lam must be a finite number >= 0"),
    (lambda z, y, L: emma_loss(z, y, L, eps=True), "eps must be a finite number >= 0 \\(the EMMA radius\\); got True"),
    (lambda z, y, L: hkr_loss(z, y, L, min_margin=0.0), "min_margin must be a finite number > 0"),
    (lambda z, y, L: hkr_loss(z, y, L, min_margin=1.0, alpha=1.5), "alpha must be a finite number >= 0 and <= 1"),
    (lambda z, y, L: GloRoLoss(eps=0.0), "eps must be a finite number > 0"),
    (lambda z, y, L: GloRoLoss(eps=1.0, eps_ramp=1.5), "eps_ramp must be a finite number >= 0 and <= 1"),
    (lambda z, y, L: EMMALoss(eps=1.0, epochs=0), "epochs must be an int >= 1"),
    (lambda z, y, L: GloRoLoss(eps=1.0, trades_lam=float("nan")), "trades_lam must be"),
    (lambda z, y, L: HKRLoss(min_margin=-1.0), "min_margin must be"),
    (lambda z, y, L: HKRLoss(min_margin=1.0).set_epoch(-1), "epoch must be an int >= 0"),
    (lambda z, y, L: gloro_loss(z, torch.tensor([0, 3]), L, eps=0.1), r"labels must lie in \[0, 2\]"),
    (lambda z, y, L: emma_loss(z, y, torch.ones(2, 2), eps=0.1), "pairwise_L must be a"),
])
def test_margin_losses_reject_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 3), torch.tensor([0, 1]), torch.ones(3, 3))
