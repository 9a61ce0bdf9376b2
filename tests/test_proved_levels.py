"""The Gram matrices of the guaranteed path formed at every level of a shared sweep (lipzoo.bounds.gram):
each certified norm is >= the exact float64 norm and within the certificate tolerance of it, whichever level
(own rows + GEMM, back to the small side without GEMM, or in between) the planner takes."""

from __future__ import annotations


import pytest
import torch

from lipzoo.bounds import build_structure
from lipzoo.bounds.eigen import certified_lambda_max, dense_norm_bound, upper_product
from lipzoo.bounds.gram import group_gram
from lipzoo.bounds.lanczos import lanczos_estimates
from lipzoo.bounds.planner import ChainPlanner
from lipzoo.bounds.proved import proved_inner_norms
from lipzoo.bounds.structure import materialize
from lipzoo.layers.operators import compose

from conftest import small_plain_cnn as _plain
from conftest import small_residual_cnn as _residual

CERT_RTOL = 1e-5


def _exact(s, key) -> float:
    m = materialize(compose(*s.chain(*key)), s.space_shape(*key)[0], dtype=torch.float64)
    return float(torch.linalg.matrix_norm(m, ord=2))


@pytest.mark.parametrize("factory", [_plain, _residual])
@pytest.mark.parametrize("level", ["own", 0, 1, 2, 3, 5, 100])
def test_every_level_certifies_every_group(factory, level, torch_gen):
    net, shape = factory(1)
    with torch.no_grad():
        s = build_structure(net, shape)
        keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
        plan = ChainPlanner(s)
        seen = set()
        for name, ks, steps, n, start in plan.groups(keys, 10**6):
            got = group_gram(steps, n, start, chunk=7, device=None, generator=torch_gen, force_level=level)
            assert set(got) == set(ks)
            for k, v in got.items():
                true = _exact(s, k)
                assert true <= v <= true * (1 + CERT_RTOL), (name, k, level, v / true - 1)
                seen.add(k)
        assert seen == set(keys)


def test_level_choice_with_little_memory_stays_sound(torch_gen):
    net, shape = _plain(2)
    with torch.no_grad():
        s = build_structure(net, shape)
        keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
        plan = ChainPlanner(s)
        for name, ks, steps, n, start in plan.groups(keys, 10**6):
            got = group_gram(steps, n, start, chunk=5, device=None, generator=torch_gen, max_bytes=0)
            for k, v in got.items():
                true = _exact(s, k)
                assert true <= v <= true * (1 + CERT_RTOL)


def test_upper_product_mirrors_and_matches(torch_gen):
    for n in (5, 40, 203):
        a = torch.randn(n, 30, generator=torch_gen, dtype=torch.float64)
        x, z = a, a @ (lambda q: q @ q.T)(torch.randn(30, 30, generator=torch_gen, dtype=torch.float64)).T
        g = upper_product(x, z)
        full = x @ z.T
        assert torch.equal(g, g.T)
        assert torch.allclose(torch.triu(g), torch.triu(full), rtol=0, atol=1e-10 * float(full.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lanczos_estimates_are_below_and_close(torch_gen, dtype):
    # float32 (the default) is lowered by ESTIMATE_MARGIN = 1e-4: still within 1e-3, still below
    for factory in (_plain, _residual):
        net, shape = factory(0)
        with torch.no_grad():
            s = build_structure(net, shape)
            keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
            est = lanczos_estimates(s, keys, 60, 0, None, dtype=dtype)
        for k in keys:
            true = _exact(s, k)
            assert est[k] <= true * (1 + 1e-9)
            assert est[k] >= true * (1 - 1e-3), (k, est[k] / true)


def test_certified_lambda_max_large_side_adaptive_shift(torch_gen):
    n = 1100  # above 1024: the first Cholesky shift follows the Lanczos progress
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch_gen, dtype=torch.float64))
    ev = torch.cat([1 - torch.rand(30, generator=torch_gen, dtype=torch.float64) * 1e-3,
                    torch.rand(n - 30, generator=torch_gen, dtype=torch.float64) * 0.9])
    g = (q * ev) @ q.T
    true = float(torch.linalg.eigvalsh(g)[-1])
    got = certified_lambda_max(g, generator=torch_gen)
    assert true <= got <= true * (1 + 1e-2)


def test_proved_inner_norms_refinement_within_its_effort_is_sound():
    net, shape = _plain(4)
    with torch.no_grad():
        s = build_structure(net, shape)
        keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
        got = proved_inner_norms(s, keys, objective=lambda inner: sum(inner.values()), small=0, small_input=0,
                                 effort="high", chunk=8, progress=False, max_side=64)
        for k in keys:
            true = _exact(s, k)
            assert got[k].value >= true
            assert got[k].estimate <= true * (1 + 1e-9)
            if got[k].guarantee == "exact":
                assert got[k].value <= true * (1 + CERT_RTOL)


def test_dense_norm_bound_by_gram_certificate(torch_gen):
    for shape in [(70, 1100), (1100, 70), (3, 5)]:
        w = torch.randn(*shape, generator=torch_gen, dtype=torch.float64)
        true = float(torch.linalg.matrix_norm(w, ord=2))
        got = dense_norm_bound(w)
        assert true <= got <= true * (1 + CERT_RTOL)



def test_an_overflowing_float32_estimate_is_zero_not_nan(torch_gen):
    import dataclasses
    import math

    from lipzoo.layers.operators import ScaleOp, compose

    net, shape = _plain(0)
    with torch.no_grad():
        s = build_structure(net, shape)
        huge = dataclasses.replace(s.blocks[1], W=compose(ScaleOp(1e25), s.blocks[1].W))  # ||S||^2 > float32 max
        s = dataclasses.replace(s, blocks=[s.blocks[0], huge] + s.blocks[2:])
        est32 = lanczos_estimates(s, [(1, 0), (0, -1)], 20, 0, None, dtype=torch.float32)
        est64 = lanczos_estimates(s, [(1, 0)], 20, 0, None, dtype=torch.float64)
    assert est32[(1, 0)] == 0.0 and est32[(0, -1)] > 0  # nothing estimated: the gains are over-stated, not NaN
    assert math.isfinite(est64[(1, 0)]) and est64[(1, 0)] > 1e24
