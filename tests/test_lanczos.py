"""The probabilistic (Lanczos) path: bounds above the exact norms, close to them, labelled as such."""

import math

import pytest
import torch
from torch import nn

import lipzoo
from conftest import vouched
from lipzoo import LipschitzBound, lipschitz_bound
from lipzoo.bounds import build_structure
from lipzoo.bounds.lanczos import KW_CONSTANT, lanczos_epsilon, lanczos_inner_norms
from lipzoo.bounds.structure import materialize
from lipzoo.layers.operators import compose


def _mlp(seed=0, widths=(20, 32, 32, 6), act=nn.ReLU):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1]).double()


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                         nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.Tanh(),
                         nn.Linear(16, 5)).double()


@torch.no_grad()
def _exact_inner(structure, keys):
    out = {}
    for k in keys:
        m = materialize(compose(*structure.chain(*k)), structure.space_shape(*k)[0])
        out[k] = float(torch.linalg.matrix_norm(m, 2))
    return out


def test_epsilon_solves_the_failure_bound():
    n, steps, p = 32768, 256, 1e-9 / 28
    eps = lanczos_epsilon(n, steps, p)
    k = steps - 1
    assert KW_CONSTANT * math.sqrt(n) * math.exp(-math.sqrt(eps) * (2 * k - 1)) == pytest.approx(p, rel=1e-9)
    assert 0 < eps < 4e-3
    assert lanczos_epsilon(n, 512, p) < eps < lanczos_epsilon(n, 128, p)  # more steps, smaller eps
    assert lanczos_epsilon(n, steps, 1e-12) > eps  # a smaller probability costs a larger eps
    assert lanczos_epsilon(n, 3, 1e-9) == math.inf  # too few steps for any eps < 1
    assert lanczos_epsilon(n, steps, 0.0) == math.inf


@pytest.mark.parametrize("net, shape", [(_mlp(), (20,)), (_cnn(), (1, 8, 8))])
def test_inner_norms_are_above_the_exact_norms_and_close(net, shape):
    s = build_structure(net, shape)
    keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
    exact = _exact_inner(s, keys)
    got = lanczos_inner_norms(s, keys, steps=96, seed=1)
    for k in keys:
        assert got[k].value >= exact[k], k
        assert got[k].estimate <= exact[k] * (1 + 1e-9), k  # a Ritz value never exceeds the top eigenvalue
        assert got[k].value <= exact[k] * (1 + 0.6 * got[k].epsilon + 1e-5), (k, got[k].value / exact[k] - 1)
        assert got[k].failure_probability == pytest.approx(1e-9 / len(keys))


def test_low_rank_operator_stops_early_and_stays_above():
    net = _mlp(widths=(30, 40, 8))
    with torch.no_grad():  # rank-2 first layer: its Krylov space is invariant after 2 steps
        u, v = torch.randn(40, 2, dtype=torch.float64), torch.randn(2, 30, dtype=torch.float64)
        net[0].weight.copy_(u @ v)
    s = build_structure(net, (30,))
    keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
    got = lanczos_inner_norms(s, keys, steps=64, seed=0)
    exact = _exact_inner(s, keys)
    assert got[(0, -1)].steps <= 3
    for k in keys:
        assert exact[k] <= got[k].value <= exact[k] * (1 + got[k].epsilon)


def test_too_few_steps_are_refused():
    s = build_structure(_mlp(), (20,))
    with pytest.raises(ValueError, match="more steps"):
        lanczos_inner_norms(s, [(0, -1)], steps=3, failure_probability=1e-12)
    with pytest.raises(ValueError, match="steps"):
        lanczos_inner_norms(s, [(0, -1)], steps=1)
    with pytest.raises(ValueError, match="failure_probability"):
        lipschitz_bound(_mlp(), (20,), norm="lanczos", failure_probability=0.0)


@pytest.mark.parametrize("mode", ["global", "per_class", "pairwise"])
def test_lipschitz_bound_lanczos_is_labelled_and_above_exact(mode):
    net, shape = _cnn(), (1, 8, 8)
    exact = lipschitz_bound(net, shape, mode=mode, norm="exact")
    lz = lipschitz_bound(net, shape, mode=mode, norm="lanczos", n_iter=200, seed=3)
    assert lz.guarantee == "probabilistic" and not lz.guaranteed
    assert lz.failure_probability == 1e-9
    assert lz.details["lanczos"]["seed"] == 3
    off = ~torch.eye(5, dtype=torch.bool) if mode == "pairwise" else torch.ones_like(exact.value, dtype=torch.bool)
    assert bool((lz.value[off] >= exact.value[off]).all())
    assert bool((lz.value[off] <= exact.value[off] * 1.01).all())  # within 1 % of the exact LipLT bound


def test_fresh_seed_is_recorded():
    net = _mlp()
    a = lipschitz_bound(net, (20,), norm="lanczos", n_iter=40, seed=None, cache=False)
    b = lipschitz_bound(net, (20,), norm="lanczos", n_iter=40, seed=None, cache=False)
    assert a.details["lanczos"]["seed"] != b.details["lanczos"]["seed"]


def test_failure_probability_field_is_consistent_with_the_guarantee():
    v = torch.ones(3, 3)
    assert LipschitzBound(value=v, guarantee="exact").failure_probability == 0.0
    assert LipschitzBound(value=v, guaranteed=False, guarantee="estimate").failure_probability == 1.0
    with pytest.raises(ValueError, match="failure_probability"):
        LipschitzBound(value=v, guaranteed=False, guarantee="probabilistic")
    with pytest.raises(ValueError, match="failure_probability"):
        LipschitzBound(value=v, guarantee="exact", failure_probability=1e-3)
    with pytest.raises(ValueError, match="contradicts"):
        LipschitzBound(value=v, guaranteed=True, guarantee="probabilistic", failure_probability=1e-9)
    p = LipschitzBound(value=v, guaranteed=False, guarantee="probabilistic", failure_probability=1e-9)
    back = LipschitzBound.from_dict(p.to_dict())
    assert (back.guarantee, back.failure_probability, back.guaranteed) == ("probabilistic", 1e-9, False)


@pytest.mark.slow
def test_zoo_model_lanczos_within_one_percent_of_power_estimate():
    model = lipzoo.create_model("4c3f").eval()
    est = lipschitz_bound(model, (1, 28, 28), norm="power", n_iter=300)
    lz = lipschitz_bound(model, (1, 28, 28), norm="lanczos", seed=0)  # default steps
    off = ~torch.eye(10, dtype=torch.bool)
    ratio = (lz.value[off] / est.value[off])
    assert bool((ratio >= 1 - 1e-6).all())  # power iteration never exceeds the norms
    assert float(ratio.mean()) < 1.01


# --- certification with a probabilistic bound ---------------------------------------------------------------

def _prob(value, model):
    """A probabilistic bound the test vouches for (the public API mints none, issue 22)."""
    return vouched(value, model, (6,), "probabilistic", failure_probability=1e-9)


def test_certify_labels_probabilistic_radii_and_attacks_every_point(rng, linear_model):
    from torch.utils.data import DataLoader, TensorDataset

    from lipzoo.certify import evaluate
    from lipzoo.certify.report import certify, format_table

    W = torch.tensor(rng.normal(size=(3, 6)), dtype=torch.float32)
    model = linear_model(W, torch.zeros(3))
    x = torch.tensor(rng.uniform(0.2, 0.8, size=(40, 6)), dtype=torch.float32)
    y = model(x).argmax(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    exact = torch.cdist(W, W).double()
    out = evaluate(model, loader, _prob(exact, model), [0.05], attack=dict(steps=5), progress=False)
    assert out["kind"] == "probabilistic" and "probabilistic@0.05" in out["summary"]
    assert "certified@0.05" not in out["summary"]
    assert bool(out["attacked"]["0.05"].all())  # no proof: nothing skips the attack
    assert out["summary"]["consistency_violations@0.05"] == 0
    report = certify(model, TensorDataset(x, y), ["0.05"], input_shape=(6,), bound=_prob(exact, model), progress=False,
                     attack=dict(steps=5))
    assert report["kind"] == "probabilistic" and report["bound"]["failure_probability"] == 1e-9
    assert "PROBABILISTIC" in format_table(report)


def test_a_wrong_probabilistic_bound_is_caught_by_the_attack(rng, linear_model):
    from torch.utils.data import DataLoader, TensorDataset

    from lipzoo.certify import evaluate
    from lipzoo.certify.metrics import UnsoundBoundError

    W = torch.tensor(rng.normal(size=(3, 6)), dtype=torch.float32)
    model = linear_model(W, torch.zeros(3))
    x = torch.tensor(rng.uniform(0.2, 0.8, size=(40, 6)), dtype=torch.float32)
    loader = DataLoader(TensorDataset(x, model(x).argmax(1)), batch_size=16)
    with pytest.raises(UnsoundBoundError):
        evaluate(model, loader, _prob(torch.cdist(W, W).double() / 50, model), [0.1], attack=dict(steps=20),
                 progress=False)


def test_cli_refuses_to_attach_probabilistic_numbers_and_bad_probabilities(tmp_path, capsys):
    from lipzoo.cli import main

    with pytest.raises(SystemExit):
        main(["certify", "crm-mnist-4c3f", "--norm", "lanczos", "--failure-probability", "0"])
    assert "probability in (0, 1)" in capsys.readouterr().err
    (tmp_path / "ckpt").mkdir()
    assert main(["certify", str(tmp_path / "ckpt"), "--norm", "lanczos", "--attach"]) == 2
    assert "proved numbers" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(300, 120), (120, 300)])  # S^T S and S S^T sides
def test_bound_holds_on_a_hard_spectrum(shape):
    """One singular value 1, the rest spread below 0.98: the start vector's share of the top direction is
    ~1/sqrt(n), so few steps leave the Ritz value low; the failure bound must cover it at any step count."""
    torch.manual_seed(0)
    m, n = shape
    u, _ = torch.linalg.qr(torch.randn(m, m, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    k = min(m, n)
    sigma = torch.cat([torch.ones(1, dtype=torch.float64), torch.linspace(0.98, 0.0, k - 1, dtype=torch.float64)])
    layer = nn.Linear(n, m, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(u[:, :k] @ torch.diag(sigma) @ v[:, :k].T)
    net = nn.Sequential(layer, nn.ReLU(), nn.Linear(m, 3).double())
    s = build_structure(net, (n,))
    for steps in (12, 24, 48, 96):
        got = lanczos_inner_norms(s, [(0, -1)], steps=steps, failure_probability=1e-3, seed=steps)[(0, -1)]
        assert got.value >= 1.0, (steps, got)
        assert got.estimate <= 1.0 + 1e-12
