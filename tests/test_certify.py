"""Certified radius (eq. 4), certified / PGD accuracy, the L2 PGD attack and the certified-accuracy plot."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import vouched
from lipzoo import LipschitzBound
from lipzoo.bounds.radius import certified_radius
from lipzoo.certify import (certified_accuracy, certified_curve, evaluate, margin_loss, pairwise_radii, parse_eps,
                            pgd_l2, plot_certified_curve)
from lipzoo.certify.metrics import UnsoundBoundError


def _exact_pairwise_L(weight: torch.Tensor) -> torch.Tensor:
    """For a linear model the Lipschitz constant of z_i - z_j is exactly ||w_i - w_j||."""
    return torch.cdist(weight, weight)


def _bound(L: torch.Tensor, guarantee: str = "exact", *, model) -> LipschitzBound:
    """A pairwise certificate record for a tensor the test knows to be exact (or deliberately wrong)."""
    return vouched(L, model, guarantee=guarantee)


# ---------------------------------------------------------------- radius


def test_pairwise_and_certified_radius_match_loop(rng, tol):
    logits = torch.tensor(rng.normal(size=(20, 4)) * 2)
    labels = torch.tensor(rng.integers(0, 4, size=20))
    a = rng.uniform(0.5, 2.0, size=(4, 4))
    L = torch.tensor(a + a.T)
    got = pairwise_radii(logits, labels, L)
    radius = certified_radius(logits, labels, L)
    for n, (z, y) in enumerate(zip(logits.tolist(), labels.tolist())):
        for i in range(4):
            if i == y:
                assert got[n, i] == float("inf")
            else:
                assert got[n, i].item() == pytest.approx((z[y] - z[i]) / L[y, i].item(), rel=tol.FLOAT64_RTOL)
        loop = min((z[y] - z[i]) / L[y, i].item() for i in range(4) if i != y)
        expected = loop if int(np.argmax(z)) == y else 0.0
        assert radius[n].item() == pytest.approx(expected, rel=tol.FLOAT64_RTOL, abs=tol.FLOAT64_ATOL)
    assert (radius == 0).any() and (radius > 0).any()


def test_certified_radius_is_the_exact_distance_for_a_linear_model(rng, tol):
    """For z = Wx + b the misclassified set is a union of half-spaces, so eq. 4 with exact L is exact."""
    W = torch.tensor(rng.normal(size=(3, 8)))
    x = torch.tensor(rng.normal(size=(8,)))
    z = W @ x
    y = int(z.argmax())
    radius = certified_radius(z[None], torch.tensor([y]), _exact_pairwise_L(W))[0]
    # Independent: distance from x to each half-space {x' : (w_i - w_y) x' >= 0}.
    distances = [float((z[y] - z[i]) / torch.linalg.norm(W[y] - W[i])) for i in range(3) if i != y]
    assert radius.item() == pytest.approx(min(distances), rel=tol.FLOAT64_RTOL)


def test_pairwise_radii_gradient_has_no_nan_from_the_diagonal():
    logits = torch.randn(4, 3, requires_grad=True)
    L = (torch.ones(3, 3) - torch.eye(3)).requires_grad_(True)  # zero diagonal
    pairwise_radii(logits, torch.tensor([0, 1, 2, 0]), L).clamp(max=1e3).sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(L.grad).all()


def test_certified_accuracy_is_strict():
    radii = torch.tensor([0.0, 0.5, 1.0, 2.0])
    assert certified_accuracy(radii, 1.0) == 0.25  # radius == eps is not certified
    assert certified_accuracy(radii, "1/2") == 0.5
    assert certified_accuracy(radii, 0) == 0.75


@pytest.mark.parametrize("radii, eps, match", [
    (torch.zeros(2, 2), 0.1, "1-D tensor"), (torch.zeros(0), 0.1, "non-empty"),
    (torch.tensor([float("nan")]), 0.1, "NaN"), (torch.ones(2), -1.0, "eps must be finite and >= 0"),
])
def test_certified_accuracy_errors(radii, eps, match):
    with pytest.raises(ValueError, match=match):
        certified_accuracy(radii, eps)


def test_parse_eps():
    assert parse_eps("36/255") == 36 / 255
    assert parse_eps("1.58") == 1.58 and parse_eps(2) == 2.0
    for bad in ("abc", "1/0", True, None):
        with pytest.raises(ValueError, match="fraction string"):
            parse_eps(bad)
    with pytest.raises(ValueError, match="finite and >= 0"):
        parse_eps(float("inf"))


# ---------------------------------------------------------------- PGD


def _binary_points(rng, linear_model, eps, n=40, dim=20):
    """A 2-class linear model and points at known distances d in [0.5, 2] * eps from its boundary."""
    W = torch.tensor(rng.normal(size=(2, dim)), dtype=torch.float32)
    w = W[0] - W[1]
    # z_0 - z_1 = w . (x - 0.5): the boundary passes through the centre of the pixel box.
    model = linear_model(W, torch.stack([-0.5 * w.sum(), torch.tensor(0.0)]))
    start = 0.5 + torch.tensor(rng.uniform(-0.1, 0.1, size=(n, dim)), dtype=torch.float32)
    distance = torch.tensor(rng.uniform(0.5, 2.0, size=n), dtype=torch.float32) * eps
    # Slide each point along w until (w . (x - 0.5)) / ||w|| = distance (class 0 wins).
    x = start + ((distance - (start - 0.5) @ w / w.norm()) / w.norm())[:, None] * w
    keep = (x >= eps).all(1) & (x <= 1 - eps).all(1)
    return model, x[keep], torch.zeros(int(keep.sum()), dtype=torch.long), distance[keep]


def test_pgd_breaks_exactly_the_points_inside_the_ball(rng, linear_model):
    eps = 0.1
    model, x, y, distance = _binary_points(rng, linear_model, eps)
    margin = (distance - eps).abs() / eps
    x, y, distance = x[margin > 0.05], y[margin > 0.05], distance[margin > 0.05]
    assert (distance < eps).sum() >= 5 and (distance > eps).sum() >= 5
    x_adv = pgd_l2(model, x, y, eps, steps=50, random_start=False)
    broken = model(x_adv).argmax(1) != y
    assert torch.equal(broken, distance < eps)


def test_pgd_reaches_the_analytic_minimal_perturbation_with_three_classes(linear_model):
    """w_0 = 0, w_1 = a e_1, w_2 = a e_2: equal-norm differences, so the top competitor is the nearest one."""
    dim, a = 10, 4.0
    W = torch.zeros(3, dim)
    W[1, 0] = W[2, 1] = a
    model = linear_model(W, torch.tensor([1.0, 0.0, 0.0]))
    x = torch.full((6, dim), 0.5)
    x[:, 0] = torch.tensor([0.05, 0.10, 0.16, 0.20, 0.08, 0.145])
    x[:, 1] = 0.1
    y = torch.zeros(6, dtype=torch.long)
    # distance to the class-i boundary: (z_0 - z_i) / a = (1 - a x_i) / a
    distance = torch.minimum((1 - a * x[:, 0]) / a, (1 - a * x[:, 1]) / a)
    eps = 0.12
    # From x itself the top competitor is the nearest class and stays on top along its own gradient;
    # a random start could hand the lead to the farther class (a local optimum of the margin loss).
    x_adv = pgd_l2(model, x, y, eps, steps=60, random_start=False)
    assert torch.equal(model(x_adv).argmax(1) != y, distance < eps)
    # Where broken, the attack went at least as far as the analytic boundary.
    gap = margin_loss(model(x_adv), y).detach()
    expected = (a * (eps - distance)).clamp(min=0)
    assert torch.all(gap[distance < eps] >= expected[distance < eps] * 0.95)


def test_pgd_stays_in_the_ball_and_the_pixel_box(tol, torch_gen):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(1),
                                torch.nn.Linear(4 * 14 * 14, 10))
    x = (torch.rand(8, 1, 16, 16, generator=torch_gen) > 0.7).float()  # all pixels on the box faces
    y = torch.randint(0, 10, (8,), generator=torch_gen)
    for eps in (0.05, 1.58, 5.0):
        x_adv = pgd_l2(model, x, y, eps, steps=10, restarts=2, generator=torch_gen)
        norms = (x_adv - x).flatten(1).norm(dim=1)
        assert torch.all(norms <= eps * (1 + tol.PERTURBATION_NORM_RTOL))
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert torch.all(margin_loss(model(x_adv), y) >= margin_loss(model(x), y) - 1e-6)


def test_pgd_norm_survives_float_rounding_at_tiny_eps(tol, torch_gen):
    """At eps ~ 1e-3 on 3072 pixels, rounding in x + delta alone can exceed the ball; the guard fixes it."""
    model = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(3 * 32 * 32, 10))
    x = torch.rand(64, 3, 32, 32, generator=torch_gen)
    y = torch.randint(0, 10, (64,), generator=torch_gen)
    for eps in (1e-2, 1e-3):
        x_adv = pgd_l2(model, x, y, eps, steps=3, generator=torch_gen)
        assert torch.all((x_adv - x).flatten(1).norm(dim=1) <= eps * (1 + tol.PERTURBATION_NORM_RTOL))


def test_pgd_keeps_the_best_restart_and_leaves_the_model_alone(torch_gen):
    model = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    model.train()
    x = torch.rand(32, 12, generator=torch_gen)
    y = torch.randint(0, 4, (32,), generator=torch_gen)
    one = pgd_l2(model, x, y, 0.3, steps=5, restarts=1, generator=torch.Generator().manual_seed(7))
    again = pgd_l2(model, x, y, 0.3, steps=5, restarts=1, generator=torch.Generator().manual_seed(7))
    three = pgd_l2(model, x, y, 0.3, steps=5, restarts=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(one, again)  # reproducible from the generator
    # The 3-restart run starts with the same restart as the 1-restart run, then can only improve.
    with torch.no_grad():
        assert torch.all(margin_loss(model(three), y) >= margin_loss(model(one), y))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(pgd_l2(model, x, y, 0.0), x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=-0.1), "eps must be"), (dict(eps=float("nan")), "eps must be"), (dict(steps=0), "steps must be"),
    (dict(restarts=0), "restarts must be"), (dict(step_size=-1.0), "step_size must be"),
])
def test_pgd_rejects_bad_arguments(kwargs, match):
    model = torch.nn.Linear(3, 2)
    args = dict(eps=0.1) | kwargs
    with pytest.raises(ValueError, match=match):
        pgd_l2(model, torch.rand(2, 3), torch.tensor([0, 1]), **args)


def test_pgd_rejects_bad_inputs():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        pgd_l2(model, torch.full((2, 3), 2.0), torch.tensor([0, 1]), 0.1)
    with pytest.raises(ValueError, match="x must be"):
        pgd_l2(model, torch.rand(2, 3), torch.tensor([0, 1, 1]), 0.1)


# ---------------------------------------------------------------- evaluate


def _eval_setup(rng, linear_model):
    W = torch.tensor(rng.normal(size=(3, 6)), dtype=torch.float32)
    model = linear_model(W, torch.tensor([0.1, -0.2, 0.0]))
    x = torch.tensor(rng.uniform(0.2, 0.8, size=(50, 6)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 3, size=50))
    return model, DataLoader(TensorDataset(x, y), batch_size=16), W, x, y


def test_evaluate_summary_matches_direct_computation(rng, linear_model):
    model, loader, W, x, y = _eval_setup(rng, linear_model)
    L = _exact_pairwise_L(W)
    model.train()
    out = evaluate(model, loader, _bound(L, model=model), [0.05, "1/10"], attack=dict(steps=20), progress=False)
    assert model.training  # mode restored
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(out["radii"], certified_radius(logits, y, L))
    assert torch.equal(out["labels"], y) and torch.equal(out["predictions"], logits.argmax(1))
    torch.testing.assert_close(out["margins"], -margin_loss(logits, y))
    s = out["summary"]
    assert s["num_samples"] == 50
    assert s["clean"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert s["certified@0.05"] == certified_accuracy(out["radii"], 0.05)
    assert s["certified@1/10"] == certified_accuracy(out["radii"], 0.1)
    for key in ("0.05", "1/10"):
        assert f"consistency_violations@{key}" not in s  # certified points are not attacked (proved robust)
        assert s[f"certified@{key}"] <= s[f"pgd@{key}"] <= s["clean"]
        assert out["attack_success"][key].dtype == torch.bool
        assert torch.all(out["attack_success"][key][out["predictions"] != out["labels"]])
    # A linear model with exact L: PGD finds every point that is not certified (at eps + slack).
    not_certified_correct = (out["radii"] < 0.1 * 0.95) & (out["predictions"] == out["labels"])
    assert torch.all(out["attack_success"]["1/10"][not_certified_correct])


def test_evaluate_flags_an_unsound_bound(rng, linear_model, caplog):
    model, loader, W, _, _ = _eval_setup(rng, linear_model)
    too_small = _exact_pairwise_L(W) * 0.2  # not an upper bound: radii are inflated 5x
    with caplog.at_level(logging.ERROR, logger="lipzoo.certify.metrics"), pytest.raises(UnsoundBoundError):
        evaluate(model, loader, _bound(too_small, model=model), [0.1], attack=dict(steps=20, seed=3, attack_all=True),
                 progress=False)
    assert "unsound" in caplog.text


def test_evaluate_without_attack(rng, linear_model):
    model, loader, W, _, _ = _eval_setup(rng, linear_model)
    out = evaluate(model, loader, _bound(_exact_pairwise_L(W), model=model), [0.1], progress=False)
    assert out["attack_success"] == {} and "pgd@0.1" not in out["summary"]


def test_evaluate_errors(rng, linear_model):
    model, loader, W, _, _ = _eval_setup(rng, linear_model)
    L = _bound(_exact_pairwise_L(W), model=model)
    with pytest.raises(ValueError, match="eps_list must hold"):
        evaluate(model, loader, L, [], progress=False)
    with pytest.raises(ValueError, match="unknown keys"):
        evaluate(model, loader, L, [0.1], attack=dict(iters=3), progress=False)
    with pytest.raises(ValueError, match="attack must be None or a dict"):
        evaluate(model, loader, L, [0.1], attack=[3], progress=False)
    with pytest.raises(ValueError, match="loader yielded no batches"):
        evaluate(model, [], L, [0.1], progress=False)


# ---------------------------------------------------------------- plots


def test_plot_certified_curve_writes_png_and_returns_the_drawn_curve(tmp_path):
    radii = {"a": torch.tensor([0.0, 0.2, 0.5, 1.0, 1.5]), "b": torch.tensor([0.0, 0.0, 3.0])}
    path = tmp_path / "curve.png"
    curves = plot_certified_curve(radii, path, eps_marks=("36/255", 1.58), title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grid, frac_a = curves["a"]
    assert grid[0] == 0.0 and grid[-1] == pytest.approx(3.0 * 1.05)
    for e, f in zip(grid, frac_a):
        assert f == certified_accuracy(radii["a"], float(e))
    assert frac_a[0] == 0.8  # starts at the fraction with radius > 0, i.e. the clean accuracy
    np.testing.assert_array_equal(curves["b"][1][grid < 3.0], 1 / 3)
    assert np.all(np.diff(frac_a) <= 0)


def test_certified_curve_handles_ties_strictly():
    np.testing.assert_array_equal(certified_curve(torch.tensor([1.0, 1.0, 2.0]), np.array([0.0, 1.0, 1.5, 2.0])),
                                  [1.0, 1 / 3, 1 / 3, 0.0])


@pytest.mark.parametrize("radii, name, match", [
    ({}, "x.png", "radii_by_model is empty"),
    ({"m": torch.tensor([-1.0])}, "x.png", "negative"),
    ({"m": torch.zeros(2, 2)}, "x.png", "1-D tensor"),
    ({"m": torch.ones(3)}, "x.pdf", "must end in .png"),
])
def test_plot_errors(tmp_path, radii, name, match):
    with pytest.raises(ValueError, match=match):
        plot_certified_curve(radii, tmp_path / name)


def test_plot_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_certified_curve({"m": torch.ones(3)}, tmp_path / "nope" / "x.png")
