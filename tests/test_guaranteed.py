"""The fast guaranteed path (lipzoo.bounds.proved) and the bound cache: every proved number is >= the
exact float64 norm, certified ones are tight, and the cache is keyed, reused and robust to corruption."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from lipzoo.bounds import build_structure, lipschitz_bound, lipschitz_bounds
from lipzoo.bounds import cache as bound_cache
from lipzoo.bounds.eigen import certified_lambda_max
from lipzoo.bounds.gram import certified_chain_norm
from lipzoo.bounds.planner import ChainPlanner
from lipzoo.bounds.proved import proved_inner_norms
from lipzoo.bounds.norms import EXACT_MARGIN
from lipzoo.bounds.structure import numel
from lipzoo.bounds.structure import materialize
from lipzoo.layers import LTLinear
from lipzoo.layers.operators import AdjointOp, Conv2dOp, DenseOp, DiagonalOp, FlattenOp, ScaleOp, SumOp, compose

from conftest import small_plain_cnn as _plain
from conftest import small_residual_cnn as _residual

# Certified exact norms may exceed the true norm by their rounding margins and the Cholesky shift
# (tau = lam (1 + 1e-7) on the first try): well below this.
CERT_RTOL = 1e-5


def _dense_norm(op, in_shape) -> float:
    return float(torch.linalg.matrix_norm(materialize(op, in_shape, dtype=torch.float64), ord=2))


def _random_ops(gen):
    """Random small operators: convolutions (stride, padding, dilation, groups), dense, compositions, sums."""
    def conv(co, ci, k, **kw):
        return Conv2dOp(torch.randn(co, ci // kw.get("groups", 1), k, k, generator=gen, dtype=torch.float64), **kw)

    yield conv(3, 2, 3, stride=1, padding=1), (2, 6, 6)
    yield conv(4, 2, 4, stride=2, padding=1), (2, 7, 7)
    yield conv(4, 4, 3, stride=2, padding=0, groups=2), (4, 8, 5)
    yield conv(2, 3, 3, stride=1, padding=2, dilation=2), (3, 5, 6)
    yield DenseOp(torch.randn(5, 9, generator=gen, dtype=torch.float64)), (9,)
    c1, c2 = conv(3, 2, 3, stride=1, padding=1), conv(3, 3, 4, stride=2, padding=1)
    yield compose(c2, ScaleOp(0.5), c1, DiagonalOp(torch.rand(2, generator=gen, dtype=torch.float64) + 0.5)), (2, 6, 6)
    d = DenseOp(torch.randn(4, 27, generator=gen, dtype=torch.float64))
    yield compose(d, FlattenOp(), c2, c1), (2, 6, 6)
    yield SumOp([ScaleOp(1.0), compose(ScaleOp(-0.5), conv(2, 2, 3, padding=1))]), (2, 5, 5)


def test_certified_lambda_max_bounds_and_is_tight(torch_gen):
    for n, kind in [(1, "rank1"), (7, "full"), (60, "cluster"), (200, "lowrank"), (300, "full")]:
        a = torch.randn(n, max(n // 3, 1) if kind == "lowrank" else n, generator=torch_gen, dtype=torch.float64)
        g = a @ a.T
        if kind == "cluster":  # top eigenvalue nearly repeated
            q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch_gen, dtype=torch.float64))
            g = q @ torch.diag(torch.linspace(0, 1, n, dtype=torch.float64).clamp_max(1 - 1e-9)) @ q.T
        true = float(torch.linalg.eigvalsh(g)[-1])
        got = certified_lambda_max(g, generator=torch_gen)
        assert got >= true, kind
        assert got <= true * (1 + CERT_RTOL) + 1e-300, (kind, got / true - 1)


def test_certified_lambda_max_falls_back_soundly_when_tau_never_works():
    g = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    got = certified_lambda_max(g, deltas=())  # no Cholesky shift allowed: Gershgorin fallback
    assert got >= 3.0


def test_certified_chain_norm_on_random_operators(torch_gen):
    for op, shape in _random_ops(torch_gen):
        true = _dense_norm(op, shape)
        factors = op.ops if hasattr(op, "ops") and not isinstance(op, SumOp) else [op]
        got = certified_chain_norm(list(factors), shape, chunk=7, generator=torch_gen)
        assert got >= true, type(op).__name__
        assert got <= true * (1 + CERT_RTOL), (type(op).__name__, got / true - 1)


def test_certified_chain_norm_refuses_a_side_above_max_side(torch_gen, monkeypatch):
    op, shape = next((o, s) for o, s in _random_ops(torch_gen) if not isinstance(o, SumOp))
    factors = op.ops if hasattr(op, "ops") else [op]
    n = min(numel(shape), numel(op.out_shape(shape)))
    allocated = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: allocated.append(a) or real_empty(*a, **k))
    # the dense path (local chains take the block-tridiagonal one, capped by local_max_bytes: test_banded.py)
    assert certified_chain_norm(list(factors), shape, chunk=7, max_side=n - 1, local=False) is None
    assert not any(a[:2] == (n, n) for a in allocated)  # refused before the n x n matrix
    assert certified_chain_norm(list(factors), shape, chunk=7, max_side=n, generator=torch_gen,
                                local=False) >= _dense_norm(op, shape)


def test_apply_by_gemm_equals_the_operators_own_methods(torch_gen):
    """The CUDA path's batched-GEMM convolutions (run here on the CPU): forward and adjoint, nested in
    compositions, sums and adjoints, with stride, padding, dilation and groups; dense ones fall back."""
    from lipzoo.layers.residual import _SameConvTransposeOp

    cases = list(_random_ops(torch_gen))
    c = Conv2dOp(torch.randn(2, 2, 3, 3, generator=torch_gen, dtype=torch.float64), padding=1)
    cases.append((SumOp([ScaleOp(0.5), compose(c, AdjointOp(c, (2, 7, 6)))]), (2, 7, 6)))
    # a residual block's transposed convolution: the adjoint of the convolution it names (canonical)
    t = _SameConvTransposeOp(torch.randn(4, 3, 3, 3, generator=torch_gen, dtype=torch.float64), 1)
    cases += [(t, (4, 6, 5)), (SumOp([ScaleOp(1.0), compose(ScaleOp(-0.5), t, Conv2dOp(t.weight, padding=1))]),
                               (3, 6, 5))]
    for op, shape in cases:
        x = torch.randn(4, *shape, generator=torch_gen, dtype=torch.float64)
        y = op.forward(x)
        torch.testing.assert_close(op.apply_gemm(x, shape), y, rtol=1e-12, atol=1e-12)
        u = torch.randn_like(y)
        torch.testing.assert_close(op.apply_gemm(u, shape, transpose=True), op.adjoint(u, shape),
                                   rtol=1e-12, atol=1e-12)


def test_abs_norm_and_rounding_model_dominate(torch_gen):
    from lipzoo.layers.residual import _SameConvTransposeOp

    transposed = _SameConvTransposeOp(torch.randn(4, 3, 3, 3, generator=torch_gen, dtype=torch.float64), 1)
    for op, shape in [*_random_ops(torch_gen), (transposed, (4, 6, 5))]:
        m = materialize(op, shape, dtype=torch.float64)
        assert op.abs_norm_bound(shape) >= float(torch.linalg.matrix_norm(m.abs(), ord=2)) * (1 - 1e-12)
        theta, a = op.rounding_model(shape)
        assert 0 <= theta < 1e-10 and a > 0
        # the float32 evaluation of the same operator obeys the same model with the float32 roundoff
        x = torch.randn(16, *shape, generator=torch_gen, dtype=torch.float64)
        op32 = op.to(torch.float32)  # every weight, nested operators included
        err = (op32.forward(x.float()).double() - op.forward(x)).flatten(1).norm(dim=1)
        scale = (2.0 ** -24) / (2.0 ** -53)
        # inputs rounded to float32 add u32 ||A|| ||x||
        assert (err <= (theta * scale * a + 2.0 ** -24 * a) * x.flatten(1).norm(dim=1) * 1.01).all()


@pytest.mark.parametrize("factory", [_plain, _residual])
@pytest.mark.parametrize("small,effort", [(0, 0.0), (40, 0.0), (0, "high"), (10**6, 0.0)])
def test_proved_inner_norms_dominate_exact_norms(factory, small, effort):
    for seed in range(2):
        net, shape = factory(seed)
        with torch.no_grad():
            s = build_structure(net, shape)
            keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
            got = proved_inner_norms(s, keys, objective=lambda inner: sum(inner.values()), small=small,
                                     effort=effort, chunk=16, progress=False)
            for k in keys:
                true = _dense_norm(compose(*s.chain(*k)), s.space_shape(*k)[0])
                assert got[k].value >= true, (k, got[k])
                assert got[k].estimate <= true * (1 + 1e-9)
                if got[k].guarantee == "exact":
                    assert got[k].value <= true * (1 + CERT_RTOL), (k, got[k].value / true - 1)
            if small >= 10**6:
                assert all(p.guarantee == "exact" for p in got.values())


def test_proved_inner_norms_with_blocks_factored_in_parts(caplog):
    """Little memory for a local chain's blocks: factored in parts (one sweep each), still tight and sound."""
    net, shape = _plain(0)  # its 4-block chains (the residual net's have at most 3: never in parts)
    with torch.no_grad(), caplog.at_level(logging.DEBUG, logger="lipzoo.bounds"):
        s = build_structure(net, shape)
        keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
        got = proved_inner_norms(s, keys, objective=lambda inner: sum(inner.values()), small=0, small_input=None,
                                 effort="high", chunk=16, progress=False, local_max_bytes=5e4)
        assert " parts certified" in caplog.text
        for k in keys:
            true = _dense_norm(compose(*s.chain(*k)), s.space_shape(*k)[0])
            assert got[k].value >= true, (k, got[k])
            if got[k].guarantee == "exact":
                assert got[k].value <= true * (1 + CERT_RTOL), (k, got[k].value / true - 1)


@pytest.mark.parametrize("seed", [0, 1])
@torch.no_grad()
def test_a_certified_chain_tightens_every_longer_chain_through_it(seed):
    """``Hhat_2 = c W_2`` in a plain network, so the certified ``||W_2 Hhat_1||`` bounds the segment
    ``Hhat_2 Hhat_1`` of ``S_{3,0}`` too (times ``|c|``); a residual block's ``Hhat`` gets no such alias."""
    net, shape = _plain(seed)
    s = build_structure(net, shape)
    plan = ChainPlanner(s)
    before, _ = plan.best_split(*plan.chain(3, 0))
    _, ops, ins, _ = plan.chain(2, 0)
    cert = certified_chain_norm(ops, ins[-1], chunk=16)
    plan.record((2, 0), cert)
    after, how = plan.best_split(*plan.chain(3, 0))
    true = _dense_norm(compose(*s.chain(3, 0)), s.space_shape(3, 0)[0])
    w3, _ = plan._own(("W", 3), s.blocks[3].W, s.blocks[3].x_shape)
    assert true <= after <= w3 * abs(s.blocks[2].c) * cert * (1 + 1e-12) and after < before, (true, after, before)
    assert "certified" in how

    res, res_shape = _residual(seed)
    r = build_structure(res, res_shape)
    rplan = ChainPlanner(r)
    rplan.record((2, 1), 1.0)
    assert len(rplan.exact) == 1  # H is present: Hhat_2 is not a multiple of W_2


@torch.no_grad()
def test_hhat_reuses_the_memoized_bound_of_its_convolution(monkeypatch):
    """``Hhat_k = c W_k``: the scalar is kept out of the kernel, so each convolution's FFT bound is computed
    once (the first layer's twice: its normalisation is merged into the kernel, for ``W_0`` and ``Hhat_0``)."""
    net, shape = _plain(0)
    s = build_structure(net, shape)
    calls = []
    original = Conv2dOp.norm_bound
    monkeypatch.setattr(Conv2dOp, "norm_bound", lambda op, in_shape: calls.append(op) or original(op, in_shape))
    plan = ChainPlanner(s)
    for t in range(s.depth + 1):
        for j in range(-1, t):
            value, _ = plan.best_split(*plan.chain(t, j))
            assert value >= _dense_norm(compose(*s.chain(t, j)), s.space_shape(t, j)[0])
    assert len(calls) == 4, len(calls)  # three convolutions, the first one twice
    for k in (1, 2):
        w, _ = plan._own(("W", k), s.blocks[k].W, s.blocks[k].x_shape)
        h, _ = plan._own(("H", k), plan.H(k), s.blocks[k].x_shape)
        assert h == pytest.approx(abs(s.blocks[k].c) * w, rel=1e-8)


def test_auto_bound_dominates_exact_and_is_tight():
    net, shape = _plain(3)
    exact = lipschitz_bound(net, shape, norm="exact", cache=False).value
    auto = lipschitz_bound(net, shape, norm="auto", cache=False)
    # the "exact" path inflates every norm by EXACT_MARGIN (1e-6); the recursion is multilinear in them
    assert auto.guaranteed and (auto.value >= exact / (1 + EXACT_MARGIN) ** 8).all()
    off = ~torch.eye(exact.shape[0], dtype=torch.bool)
    assert (auto.value[off] <= exact[off] * (1 + 1e-4)).all()  # everything small: certified exactly
    assert "inner_proofs" in auto.details


def test_linear_model_without_inner_operators():
    torch.manual_seed(0)
    net = nn.Sequential(LTLinear(6, 3, activation=None)).double()
    b = lipschitz_bound(net, (6,), cache=False)
    assert b.guarantee == "exact" and b.value.shape == (3, 3)


def test_explicit_max_dense_is_a_hard_cap():
    net, shape = _plain(1)
    b = lipschitz_bound(net, shape, norm="auto", max_dense=8, cache=False)
    assert b.guarantee == "proved"


def test_bad_effort_and_max_dense_raise():
    net, shape = _plain(0)
    with pytest.raises(ValueError, match="effort"):
        lipschitz_bound(net, shape, effort=-1, cache=False)
    with pytest.raises(ValueError, match="effort"):
        lipschitz_bound(net, shape, effort="max", cache=False)
    with pytest.raises(TypeError, match="replaced by effort"):
        lipschitz_bound(net, shape, budget=30.0, cache=False)
    with pytest.raises(TypeError, match="unknown bound option"):
        lipschitz_bound(net, shape, bugdet=30.0, cache=False)
    with pytest.raises(ValueError, match="max_dense"):
        lipschitz_bound(net, shape, max_dense=-3, cache=False)


# --- cache --------------------------------------------------------------------------------------------

def test_cache_roundtrip_reuse_and_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    net, shape = _plain(2)
    first = lipschitz_bounds(net, shape, modes=("pairwise", "global"))
    assert len(list(tmp_path.glob("*.json"))) == 1
    import lipzoo.bounds.liplt as liplt

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(liplt, "_lipschitz_bounds", boom)
    again = lipschitz_bound(net, shape, mode="pairwise")  # certify after bounds: a cache hit
    assert torch.equal(again.value, first["pairwise"].value) and again.guarantee == first["pairwise"].guarantee
    # a different request or different weights is a different key
    with pytest.raises(AssertionError, match="recomputed"):
        lipschitz_bound(net, (2, 9, 9), mode="pairwise")
    with torch.no_grad():
        net[1].weight.mul_(1.0001)
    with pytest.raises(AssertionError, match="recomputed"):
        lipschitz_bound(net, shape, mode="pairwise")


def test_corrupt_cache_file_is_ignored_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    net, shape = _plain(2)
    ref = lipschitz_bound(net, shape)
    (path,) = tmp_path.glob("*.json")
    for garbage in ("{not json", json.dumps({"key": "other", "bounds": {}}),
                    json.dumps({"key": path.stem, "bounds": {"pairwise": {"value": 1}}})):
        path.write_text(garbage)
        with caplog.at_level(logging.WARNING):
            got = lipschitz_bound(net, shape)
        assert torch.equal(got.value, ref.value)
        assert "cache" in caplog.text.lower()
        caplog.clear()


def test_cache_off_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPZOO_CACHE", "off")
    assert bound_cache.cache_dir() is None
    net, shape = _plain(2)
    lipschitz_bound(net, shape, cache=True)  # asked for, but off: nothing written anywhere
    lipschitz_bound(net, shape)
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    lipschitz_bound(net, shape, cache=False)
    assert not list(tmp_path.glob("*.json"))
    lipschitz_bound(net, shape)  # the Python API caches by default, as the command line does
    assert len(list(tmp_path.glob("*.json"))) == 1
    monkeypatch.delenv("LIPZOO_CACHE")
    assert bound_cache.cache_dir() == Path.home() / ".cache" / "lipzoo" / "bounds"


def test_fast_adjoint_equals_operator_adjoint(torch_gen):
    from lipzoo.bounds.sweep import adjoint

    for op, shape in _random_ops(torch_gen):
        y = torch.randn(3, *op.out_shape(shape), generator=torch_gen, dtype=torch.float64)
        ref = op.adjoint(y, shape)
        got = adjoint(op, y, shape)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
    # odd sizes: every output_padding in [0, stride)
    for n in range(5, 10):
        op = Conv2dOp(torch.randn(3, 2, 3, 3, generator=torch_gen, dtype=torch.float64), stride=3, padding=1)
        y = torch.randn(2, *op.out_shape((2, n, n + 1)), generator=torch_gen, dtype=torch.float64)
        assert torch.allclose(adjoint(op, y, (2, n, n + 1)), op.adjoint(y, (2, n, n + 1)), rtol=1e-12, atol=1e-12)


def test_a_cached_bound_keeps_the_requested_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    first = lipschitz_bound(net, (6,), dtype=torch.float32)
    again = lipschitz_bound(net, (6,), dtype=torch.float32)  # served from the cache
    assert any(tmp_path.iterdir())
    assert first.value.dtype == again.value.dtype == torch.float32 and torch.equal(first.value, again.value)


def test_each_effort_has_its_own_cache_entry(tmp_path, monkeypatch):
    """The effort is part of the key: a bound computed with more effort never stands in for one with less (it
    would not be the bound a fresh run with that effort returns)."""
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    net, shape = _plain(2)
    import lipzoo.bounds.liplt as liplt

    real = liplt._lipschitz_bounds
    calls = []

    def counting(net, structure, opts, **k):
        calls.append(opts.effort)
        return real(net, structure, opts, **k)

    monkeypatch.setattr(liplt, "_lipschitz_bounds", counting)
    high = lipschitz_bound(net, shape, effort="high")
    none = lipschitz_bound(net, shape, effort="none")
    assert calls == ["high", "none"]
    assert torch.equal(lipschitz_bound(net, shape, effort="high").value, high.value) and len(calls) == 2
    assert float(high.value.mean()) <= float(none.value.mean())
    assert len(list(tmp_path.glob("*.json"))) == 2


def _no_certificates(*a, **k):
    raise AssertionError("a chain was certified again")


def test_known_certificates_are_taken_not_recomputed(monkeypatch):
    import lipzoo.bounds.proved as proved

    net, shape = _plain(0)
    with torch.no_grad():
        s = build_structure(net, shape)
        keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
        seen: dict = {}
        first = proved_inner_norms(s, keys, objective=lambda inner: sum(inner.values()), small=0, small_input=None,
                                   effort="high", chunk=16, progress=False,
                                   on_certified=lambda k, v, e: seen.__setitem__(k, (v, e)))
        assert len(seen) >= 2  # the refinement certified these one at a time, and reported each
        for k, (v, e) in seen.items():
            true = _dense_norm(compose(*s.chain(*k)), s.space_shape(*k)[0])
            assert first[k].guarantee == "exact" and first[k].value <= v and e <= true * (1 + 1e-9) <= v * (1 + 1e-9)
        monkeypatch.setattr(proved, "certified_chain_norm", _no_certificates)
        monkeypatch.setattr(proved, "group_gram", _no_certificates)
        again = proved_inner_norms(s, keys, objective=lambda inner: sum(inner.values()), small=0, small_input=None,
                                   effort="high", chunk=16, progress=False, known=seen, on_certified=_no_certificates)
        for k in keys:  # used where the first run computed them: the same result, bit for bit
            assert again[k] == first[k], (k, again[k], first[k])


def test_an_interrupted_bound_resumes_from_its_certificates(tmp_path, monkeypatch):
    import lipzoo.bounds.proved as proved

    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    net, shape = _plain(1)
    real, calls = proved.group_gram, []
    monkeypatch.setattr(proved, "group_gram", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    ref = lipschitz_bound(net, shape, cache=False)
    sweeps = len(calls)
    assert sweeps >= 2
    calls.clear()

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(proved, "group_gram", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lipschitz_bound(net, shape)
    assert not list(tmp_path.glob("*.json"))  # no bound was finished
    (path,) = (tmp_path / "chains").glob("*.json")
    kept = json.loads(path.read_text())["chains"]
    assert kept
    calls.clear()
    monkeypatch.setattr(proved, "group_gram", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = lipschitz_bound(net, shape)
    assert len(calls) == sweeps - 1  # the first group's sweep is not run again
    # ... and the result is the one a run without any stored certificate returns, bit for bit
    assert torch.equal(resumed.value, ref.value) and resumed.guarantee == ref.guarantee
    # the certificates belong to these weights only
    calls.clear()
    with torch.no_grad():
        net[1].weight.mul_(1.0001)
    lipschitz_bound(net, shape, mode="global")
    assert len(calls) == sweeps


@pytest.mark.parametrize("garbage", ["{not json", json.dumps({"key": "other", "chains": {}}),
                                     "KEY {\"0,-1\": [-1.0, 0.5]}", "KEY {\"0,-1\": [NaN, 0.5]}",
                                     "KEY {\"zero\": [1.0, 0.5]}", "KEY {\"0,-1\": 1.0}"])
def test_corrupt_certificates_are_ignored_with_a_warning(garbage, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    net, shape = _plain(0)
    ref = lipschitz_bound(net, shape, mode="global")
    for path in tmp_path.glob("*.json"):
        path.unlink()  # only the certificates are left
    (path,) = (tmp_path / "chains").glob("*.json")
    if garbage.startswith("KEY"):
        garbage = '{"key": "%s", "chains": %s}' % (path.stem, garbage[4:])
    path.write_text(garbage)
    with caplog.at_level(logging.WARNING):
        got = lipschitz_bound(net, shape, mode="global")
    assert "cache" in caplog.text.lower()
    assert torch.equal(got.value, ref.value)


def test_cholesky_breakdown_needs_finite_positive_pivots(monkeypatch):
    """A solver that returns info == 0 with a NaN or non-positive pivot (LAPACK flags these, cuSOLVER and
    MAGMA need not) must not certify."""
    from lipzoo.bounds.eigen import cholesky

    a = torch.eye(3, dtype=torch.float64) * 2
    assert cholesky(a) is not None
    real = torch.linalg.cholesky_ex
    for bad in (float("nan"), 0.0, -1.0, float("inf")):
        def silent(x, bad=bad):
            r, info = real(x)
            r = r.clone()
            r[1, 1] = bad
            return r, torch.zeros_like(info)
        monkeypatch.setattr(torch.linalg, "cholesky_ex", silent)
        assert cholesky(a) is None, bad
        # the dense certificate then falls back (no shift certifies): Gershgorin, still an upper bound
        assert certified_lambda_max(a) >= 2.0


@pytest.mark.parametrize("max_dense", [8, None])
def test_the_recursion_at_the_estimates_brackets_the_exact_liplt_value(max_dense):
    """``details["liplt_at_estimates"]`` is the recursion at every norm's estimate from below: the exact
    LipLT value (dense float64 norms) lies between it and the guaranteed bound, and it is close to the exact
    value even where the bound is loose (``max_dense=8``: split bounds only)."""
    net, shape = _plain(2)
    exact = lipschitz_bound(net, shape, norm="exact", cache=False).value  # each norm raised by EXACT_MARGIN
    auto = lipschitz_bound(net, shape, norm="auto", max_dense=max_dense, cache=False)
    below = torch.tensor(auto.details["liplt_at_estimates"]["pairwise"], dtype=torch.float64)
    assert torch.equal(auto.liplt_at_estimates, below)  # the property reads the same entry
    off = ~torch.eye(exact.shape[0], dtype=torch.bool)
    assert (below[off] <= exact[off]).all() and (exact / (1 + EXACT_MARGIN) ** 8 <= auto.value).all()
    assert (below[off] >= exact[off] * (1 - 1e-3)).all(), (below[off] / exact[off]).min()
    if max_dense is not None:  # the split bounds are loose, and the bracket shows it
        assert (auto.value[off] / below[off]).max() > 1.01
