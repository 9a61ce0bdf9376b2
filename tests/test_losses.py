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
