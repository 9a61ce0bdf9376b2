"""The fast certification path: which points PGD skips, early dropping and the ``attack_all`` audit."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import vouched
from lipzoo import LipschitzBound
from lipzoo.certify import evaluate, margin_loss, pgd_l2
from lipzoo.certify.metrics import UnsoundBoundError
from lipzoo.certify.rounding import margin_error_bound

pytestmark = pytest.mark.usefixtures("one_thread")


def _bound(L: torch.Tensor, guarantee: str = "exact", *, model) -> LipschitzBound:
    return vouched(L, model, guarantee=guarantee)


def _linear_setup(rng, linear_model, n=60, dim=6, classes=3):
    W = torch.tensor(rng.normal(size=(classes, dim)), dtype=torch.float32)
    model = linear_model(W, torch.tensor(rng.normal(size=classes) * 0.1, dtype=torch.float32))
    x = torch.tensor(rng.uniform(0.2, 0.8, size=(n, dim)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, classes, size=n))
    return model, x, y, torch.cdist(W, W).double()  # exact pairwise constants of a linear model


def test_attack_skips_exactly_the_certified_and_the_misclassified_points(rng, linear_model):
    model, x, y, L = _linear_setup(rng, linear_model)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    eps_list = [0.05, "1/10"]
    out = evaluate(model, loader, _bound(L, model=model), eps_list, attack=dict(steps=10, batch_size=7),
                   progress=False)
    correct = out["predictions"] == out["labels"]
    for key, eps in (("0.05", 0.05), ("1/10", 0.1)):
        attacked = out["attacked"][key]
        assert torch.equal(attacked, correct & ~(out["radii"] > eps))
        assert 0 < attacked.sum() < correct.sum()  # the test has both kinds
        broken = out["attack_success"][key]
        assert torch.all(broken[~correct]) and not broken[out["radii"] > eps].any()
        s = out["summary"]
        assert f"consistency_violations@{key}" not in s  # nothing certified was attacked: nothing to count
        assert s[f"certified@{key}"] <= s[f"pgd@{key}"] <= s["clean"]
    # An estimate proves nothing: every correctly classified point is attacked and violations are counted.
    est = evaluate(model, loader, _bound(L, "estimate", model=model), eps_list, allow_estimate=True, attack=dict(steps=10),
                   progress=False)
    assert all(torch.equal(m, correct) for m in est["attacked"].values())
    assert est["summary"]["consistency_violations@0.05"] == 0
    # The audit attacks every correctly classified point; with an exact L it breaks none of the certified ones.
    audit = evaluate(model, loader, _bound(L, model=model), eps_list, attack=dict(steps=10, attack_all=True), progress=False)
    assert all(torch.equal(m, correct) for m in audit["attacked"].values())
    assert audit["summary"]["consistency_violations@1/10"] == 0
    # Skipping changes no verdict: the audit and the default run agree point by point (linear model,
    # exact L: PGD breaks exactly the uncertified points whose boundary is inside the ball).
    for key in ("0.05", "1/10"):
        assert torch.equal(audit["attack_success"][key], out["attack_success"][key])


def test_attack_all_raises_on_a_bound_that_is_too_small(rng, linear_model):
    model, x, y, L = _linear_setup(rng, linear_model)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    too_small = _bound(L * 0.2, model=model)  # "exact", yet 5x too small: radii inflated 5x
    out = evaluate(model, loader, too_small, [0.1], attack=dict(steps=20), progress=False)
    assert "consistency_violations@0.1" not in out["summary"]  # the default run cannot see it ...
    with pytest.raises(UnsoundBoundError, match="unsound"):  # ... the audit does, loudly
        evaluate(model, loader, too_small, [0.1], attack=dict(steps=20, attack_all=True), progress=False)
    # The same wrong tensor labelled an estimate is attacked everywhere and only warned about.
    est = evaluate(model, loader, _bound(L * 0.2, "estimate", model=model), [0.1], allow_estimate=True, attack=dict(steps=20),
                   progress=False)
    assert est["summary"]["consistency_violations@0.1"] > 0


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
                               ).double().eval()


@pytest.mark.parametrize("random_start", [True, False])
def test_early_dropping_breaks_the_same_points_as_the_full_run(random_start):
    model = _mlp()
    x = torch.rand(64, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 4  # a few misclassified points: broken from the start
    for eps in (0.05, 0.2, 0.5):
        full = pgd_l2(model, x, y, eps, steps=15, restarts=2, random_start=random_start,
                      generator=torch.Generator().manual_seed(3))
        fast = pgd_l2(model, x, y, eps, steps=15, restarts=2, random_start=random_start,
                      generator=torch.Generator().manual_seed(3), stop_when_broken=True)
        with torch.no_grad():
            broken_full, broken_fast = model(full).argmax(1) != y, model(fast).argmax(1) != y
        assert torch.equal(broken_full, broken_fast)
        assert 5 < broken_fast.sum() < 64 or eps != 0.2  # the middle radius breaks some, not all
        assert torch.all((fast - x).flatten(1).norm(dim=1) <= eps) and fast.min() >= 0 and fast.max() <= 1
        # the survivors come back exactly as from the full run (same trajectories)
        assert torch.equal(fast[~broken_fast], full[~broken_full])


def test_the_attack_finds_a_tiny_margin(linear_model):
    """Two points whose boundary is just inside the ball are broken; their twins just outside are not."""
    W = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    model = linear_model(W, torch.tensor([-0.5, 0.0]))  # class 0 iff x_0 > 0.5: distance x_0 - 0.5
    eps = 0.1
    x = torch.full((4, 4), 0.5)
    x[:, 0] = torch.tensor([0.5 + 0.09, 0.5 + 0.095, 0.5 + 0.101, 0.5 + 0.12])
    y = torch.zeros(4, dtype=torch.long)
    L = _bound(torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64), model=model)
    out = evaluate(model, [(x, y)], L, [eps], attack=dict(steps=20), progress=False)
    assert out["attacked"]["0.1"].tolist() == [True, True, False, False]  # the last two are certified
    assert out["attack_success"]["0.1"].tolist() == [True, True, False, False]
    assert out["summary"]["pgd@0.1"] == 0.5 == out["summary"]["certified@0.1"]
    # From the clean point the gradient points straight at the boundary: 0.1 % inside the ball is found.
    x[:, 0] = torch.tensor([0.5 + 0.0999, 0.5 + 0.0995, 0.5 + 0.1001, 0.5 + 0.11])
    x_adv = pgd_l2(model, x, y, eps, steps=20, random_start=False, stop_when_broken=True)
    assert (margin_loss(model(x_adv), y) > 0).tolist() == [True, True, False, False]
    assert torch.all((x_adv - x).flatten(1).double().norm(dim=1) <= eps)


def test_attack_batches_do_not_change_the_verdicts(rng, linear_model):
    """Chunking the attack across loader batches (batch_size) gives the same broken points (linear model)."""
    model, x, y, L = _linear_setup(rng, linear_model, n=80)
    runs = [evaluate(model, DataLoader(TensorDataset(x, y), batch_size=b), _bound(L, model=model), [0.1],
                     attack=dict(steps=20, batch_size=a), progress=False) for b, a in ((80, 1000), (16, 5), (7, 32))]
    for other in runs[1:]:
        assert torch.equal(other["attack_success"]["0.1"], runs[0]["attack_success"]["0.1"])
        assert other["summary"] == runs[0]["summary"]


def test_workers_give_the_same_verdicts_and_restore_the_threads(monkeypatch):
    model = _mlp(1).float()
    x = torch.rand(90, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    L = _bound(torch.full((4, 4), 50.0, dtype=torch.float64).fill_diagonal_(0), model=model)  # loose but sound: few certified
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    torch.set_num_threads(2)  # restored by the one_thread fixture
    E = float(margin_error_bound(model, x, radius=1.0).max())  # radii here are < 1
    seen = []
    # observed inside F.linear, not by a hook: a hook would change the model (its bound would be refused)
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda *a, **k: (seen.append(torch.get_num_threads()), linear(*a, **k))[1])
    default, one, two = (evaluate(model, loader, L, [0.3], attack=dict(steps=10, batch_size=16, workers=w),
                                  progress=False, margin_error=E) for w in (None, 1, 2))
    assert torch.get_num_threads() == 2  # restored
    assert 2 in seen and 1 in seen  # torch's threads without workers, one thread per worker with them
    assert torch.equal(default["attack_success"]["0.3"], one["attack_success"]["0.3"])
    assert torch.equal(one["attack_success"]["0.3"], two["attack_success"]["0.3"]) and one["summary"] == two["summary"]
    assert 0 < one["attack_success"]["0.3"].sum() < one["attacked"]["0.3"].sum()  # some broken, some not
