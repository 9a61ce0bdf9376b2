"""Power iterations in low precision: cast operators, bfloat16 directions, full-precision estimates."""

from __future__ import annotations

import pytest
import torch
from test_bounds import NETS, _net

import lipzoo
from lipzoo.bounds import build_structure
from lipzoo.bounds.estimator import LipLTEstimator, native_bfloat16
from lipzoo.bounds.structure import materialize
from lipzoo.bounds.sweep import forward_sweep, power_iteration, row_norms
from lipzoo.layers.operators import LinearOperator, compose
from lipzoo.meta import Recipe
from lipzoo.train.config import apply_overrides


def _keys(s):
    return [(t, j) for t in range(s.depth) for j in range(-1, t)]


def _starts(s, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in _keys(s):
        x = torch.randn(1, *s.space_shape(*k)[0], generator=g, dtype=torch.float64)
        out[k] = (x / x.norm()).to(dtype)
    return out


def _tensors(op, seen=None):
    """Every tensor reachable from an operator's attributes (weights of nested operators included)."""
    out = []
    for value in vars(op).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if isinstance(v, LinearOperator):
                out += _tensors(v)
            elif torch.is_tensor(v):
                out.append(v)
    return out


def _ops(s):
    return [op for b in s.blocks for op in (b.W, b.H, b.G) if op is not None] + ([s.output] if s.output else [])


@pytest.mark.parametrize("name", list(NETS))
def test_structure_to_casts_every_weight_and_keeps_the_original(name):
    net, shape = _net(name)
    net = net.float()
    s = build_structure(net, shape)
    before = [t.clone() for op in _ops(s) for t in _tensors(op)]
    s64 = s.to(torch.float64)
    weights = [t for op in _ops(s64) for t in _tensors(op) if t.dim() > 0 and t.is_floating_point()]
    assert weights and all(t.dtype == torch.float64 for t in weights)
    after = [t for op in _ops(s) for t in _tensors(op)]
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(before, after))  # untouched
    v32 = _starts(s)
    got = forward_sweep(s64, {k: x.double() for k, x in v32.items()})
    ref = forward_sweep(s, v32)
    for k in got:
        assert got[k].dtype == torch.float64
        assert torch.allclose(got[k], ref[k].double(), rtol=1e-4, atol=1e-5), k


def _exact_norms(name):
    net, shape = _net(name)  # float64
    s = build_structure(net, shape)
    out = {}
    with torch.no_grad():
        for t, j in _keys(s):
            m = materialize(compose(*s.chain(t, j)), s.space_shape(t, j)[0])
            out[(t, j)] = float(torch.linalg.matrix_norm(m, ord=2))
    return out


@pytest.mark.parametrize("name", ["cnn", "resnet", "torch"])
def test_bfloat16_iterations_give_full_precision_estimates(name):
    """The directions are iterated in bfloat16; ||S v|| evaluated in float32 stays a lower estimate of the
    exact (dense, float64) norm and within 1e-2 of what float32 iterations give from the same start."""
    net, shape = _net(name)
    s = build_structure(net.float(), shape)
    exact = _exact_norms(name)
    v0 = _starts(s)
    with torch.no_grad():
        low = power_iteration(s, v0, 30, dtype=torch.bfloat16)
        full = power_iteration(s, v0, 30)
        e_low = {k: float(x[0]) for k, x in forward_sweep(s, low, finish=row_norms).items()}
        e_full = {k: float(x[0]) for k, x in forward_sweep(s, full, finish=row_norms).items()}
    assert any(not torch.equal(low[k], full[k]) for k in low)  # the iterations did run in bfloat16
    for k, x in low.items():
        assert x.dtype == torch.float32 and abs(float(x.norm()) - 1) < 1e-5
        assert e_low[k] <= exact[k] * (1 + 1e-5), k
        assert e_low[k] == pytest.approx(e_full[k], rel=1e-2), k


def test_power_iteration_without_a_different_dtype_is_unchanged():
    net, shape = _net("cnn")
    s = build_structure(net.float(), shape)
    v0 = _starts(s)
    a = power_iteration(s, v0, 3)
    b = power_iteration(s, v0, 3, dtype=torch.float32)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert power_iteration(s, v0, 0, dtype=torch.bfloat16) is v0


def test_estimator_with_bfloat16_iterations_matches_float32_and_trains():
    net, shape = _net("resnet")
    net = net.float()
    full = LipLTEstimator(net, shape, n_iter=5)
    low = LipLTEstimator(net, shape, n_iter=5, iteration_dtype=torch.bfloat16)
    for _ in range(20):
        a, b = full(), low()
    assert torch.allclose(b.detach(), a.detach(), rtol=2e-3)
    assert all(v.dtype == torch.float32 for v in low.vectors().values())  # state stays in the model's dtype
    b.sum().backward()
    grads = [p.grad for n, p in net.named_parameters() if not n.endswith("bias")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert "iteration_dtype=torch.bfloat16" in repr(low)


def test_estimator_auto_precision_and_bad_values():
    net, shape = _net("mlp")
    est = LipLTEstimator(net.float(), shape, n_iter=2, iteration_dtype="auto")
    native = native_bfloat16(torch.device("cpu"))
    assert est._iteration_dtype(next(net.parameters())) == (torch.bfloat16 if native else None)
    assert torch.isfinite(est()).all()
    for bad in ("bf16", torch.int8, 16):
        with pytest.raises(ValueError, match="iteration_dtype must be"):
            LipLTEstimator(net, shape, iteration_dtype=bad)


def test_recipe_key_power_iteration_dtype():
    base = lipzoo.models.get_entry("crm-mnist-4c3f")["recipe"]
    assert "power_iteration_dtype" not in Recipe.parse(base).to_dict()  # default left out: hashes unchanged
    low = Recipe.parse({**base, "power_iteration_dtype": "bfloat16"})
    assert low.power_iteration_dtype == "bfloat16" and low.to_dict()["power_iteration_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="power_iteration_dtype"):
        Recipe.parse({**base, "power_iteration_dtype": "half"})
    # an override may set it although the config leaves it out
    config = apply_overrides({"recipe": dict(base)}, ["recipe.power_iteration_dtype=auto"])
    assert config["recipe"]["power_iteration_dtype"] == "auto"
    with pytest.raises(ValueError, match="Unknown config key"):
        apply_overrides({"recipe": dict(base)}, ["recipe.power_iteration_dtypes=auto"])

