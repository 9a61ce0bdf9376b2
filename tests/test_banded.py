"""Local chains: reach intervals, probing, block-tridiagonal certificates, against dense float64 matrices."""

import math

import pytest
import torch

from lipzoo.bounds.banded import certified_block_lambda_max, certified_local_norm, gram_reach, local_plan
from lipzoo.bounds.gram import certified_chain_norm
from lipzoo.bounds.steps import gram_steps
from lipzoo.layers.operators import (AdjointOp, ComposeOp, Conv2dOp, DenseOp, DiagonalOp, FlattenOp, ScaleOp,
                                     SumOp)


def _conv(c_out, c_in, k, stride=1, padding=0, dilation=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Conv2dOp(torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64) / (k * math.sqrt(c_in)),
                    stride, padding, dilation)


def _matrix(steps, shape):
    """Dense matrix of the Gram operator ``steps`` on ``shape`` (columns: identity basis)."""
    n = math.prod(shape)
    x = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    for st in steps:
        x = st(x)
    return x.reshape(n, n).T


def _exact_norm(factors, in_shape):
    n = math.prod(in_shape)
    x = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    for op in reversed(factors):
        x = op.forward(x)
    return float(torch.linalg.matrix_norm(x.reshape(n, -1), ord=2))


CHAINS = {
    # (factors leftmost first, input shape)
    "same 3x3 twice": ([_conv(4, 3, 3, padding=1, seed=1), _conv(3, 2, 3, padding=1, seed=2)], (2, 12, 11)),
    "strided valid": ([_conv(4, 3, 4, stride=2, seed=3), _conv(3, 2, 3, seed=4)], (2, 17, 15)),
    "dilated, scaled": ([ScaleOp(0.7), _conv(3, 3, 3, padding=2, dilation=2, seed=5),
                         DiagonalOp(torch.rand(3, dtype=torch.float64) + 0.5), _conv(3, 2, 3, padding=1, seed=6)],
                        (2, 14, 13)),
    "skip branch": ([SumOp([ScaleOp(0.5), ComposeOp([_conv(2, 2, 3, padding=1, seed=7),
                                                     AdjointOp(_conv(2, 2, 3, padding=1, seed=8), (2, 13, 12))])]),
                     _conv(2, 2, 3, stride=2, padding=1, seed=9)], (2, 25, 23)),
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_reach_contains_every_nonzero_of_the_dense_gram(name):
    factors, in_shape = CHAINS[name]
    steps, shape, n = gram_steps(factors, in_shape)
    (lo_h, hi_h), (lo_w, hi_w) = gram_reach(steps, shape)
    g = _matrix(steps, shape).reshape(*shape, *shape)  # g[rc, rh, rw, c, h, w]
    nz = g.abs() > 0
    rows, cols = torch.arange(shape[1]), torch.arange(shape[2])
    inside_h = (rows[:, None] >= lo_h[None, :]) & (rows[:, None] <= hi_h[None, :])  # [rh, h]
    inside_w = (cols[:, None] >= lo_w[None, :]) & (cols[:, None] <= hi_w[None, :])  # [rw, w]
    allowed = inside_h[None, :, None, None, :, None] & inside_w[None, None, :, None, None, :]
    assert not bool((nz & ~allowed).any())
    # and the intervals are not vacuous: some source reaches strictly less than the whole image
    assert bool(((hi_h - lo_h + 1) < shape[1]).any())


@pytest.mark.parametrize("name", list(CHAINS))
def test_local_norm_is_a_tight_upper_bound_of_the_exact_norm(name):
    factors, in_shape = CHAINS[name]
    steps, shape, n = gram_steps(factors, in_shape)
    plan = local_plan(steps, shape)
    assert plan.probes < n  # probing saves sweeps on every chain above
    exact = _exact_norm(factors, in_shape)
    got = certified_local_norm(steps, plan, chunk=7)
    assert exact <= got <= exact * (1 + 1e-6)


def test_several_blocks_and_fewer_probes_on_a_tall_image():
    factors, in_shape = [_conv(3, 3, 3, padding=1, seed=10), _conv(3, 2, 3, padding=1, seed=11)], (2, 30, 9)
    steps, shape, n = gram_steps(factors, in_shape)
    plan = local_plan(steps, shape)
    assert plan.block_rows == 4 and plan.blocks == 8  # two 3x3 convolutions: the Gram reaches 4 rows
    assert plan.periods == (9, 9)  # rows 9 apart never meet; the 9 columns all do
    exact = _exact_norm(factors, in_shape)
    got = certified_local_norm(steps, plan, chunk=64)
    assert exact <= got <= exact * (1 + 1e-6)


def test_chain_norm_takes_the_local_path_and_agrees_with_the_dense_one():
    factors, in_shape = [_conv(4, 3, 3, padding=1, seed=12), _conv(3, 2, 4, stride=2, padding=1, seed=13)], (2, 20, 20)
    exact = _exact_norm(factors, in_shape)
    local = certified_chain_norm(factors, in_shape)
    dense = certified_chain_norm(factors, in_shape, local=False)
    assert exact <= local <= exact * (1 + 1e-6)
    assert exact <= dense <= exact * (1 + 1e-6)


def test_non_local_operators_have_no_plan():
    dense = DenseOp(torch.randn(5, 2 * 6 * 6, dtype=torch.float64))
    steps, shape, _ = gram_steps([dense, FlattenOp(), _conv(2, 2, 3, padding=1)], (2, 6, 6))
    assert local_plan(steps, shape) is None  # the small side is the dense output, not an image
    steps, shape, _ = gram_steps([_conv(8, 2, 3, padding=1)], (2, 6, 6))
    assert local_plan(steps, shape) is not None


def test_block_certificate_matches_eigvalsh_on_a_random_banded_matrix():
    g = torch.Generator().manual_seed(0)
    nb, m = 5, 6
    a = torch.randn(nb * m, nb * m, dtype=torch.float64, generator=g)
    mask = torch.zeros(nb, nb, dtype=torch.bool)
    for k in range(nb):
        mask[k, max(k - 1, 0):k + 2] = True
    a = a * mask.repeat_interleave(m, 0).repeat_interleave(m, 1)
    a = (a + a.T) / 2
    diag = torch.stack([a[k * m:(k + 1) * m, k * m:(k + 1) * m] for k in range(nb)])
    low = torch.stack([a[(k + 1) * m:(k + 2) * m, k * m:(k + 1) * m] for k in range(nb - 1)])
    top = float(torch.linalg.eigvalsh(a)[-1])
    got = certified_block_lambda_max(diag, low, generator=g)
    assert top <= got <= top * (1 + 1e-6)


def test_block_certificate_rejects_non_finite_entries():
    diag = torch.eye(3, dtype=torch.float64)[None].clone()
    diag[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        certified_block_lambda_max(diag, torch.zeros(0, 3, 3, dtype=torch.float64))


def test_a_memory_limit_refuses_before_allocating(monkeypatch):
    factors, in_shape = [_conv(3, 3, 3, padding=1, seed=14), _conv(3, 2, 3, padding=1, seed=15)], (2, 30, 9)
    steps, shape, _ = gram_steps(factors, in_shape)
    plan = local_plan(steps, shape)
    one_part = 8.0 * 6 * plan.block_size ** 2  # a diagonal block, its coupling, the carried factor, work space
    assert plan.passes(plan.bytes()) == 1 and plan.passes(one_part) == plan.blocks and plan.passes(one_part - 1) == 0
    allocated = []
    real_zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: allocated.append(a) or real_zeros(*a, **k))
    assert certified_local_norm(steps, plan, max_bytes=one_part - 1) is None
    assert not [a for a in allocated if len(a) == 3 and a[1:] == (plan.block_size, plan.block_size)]


@pytest.mark.parametrize("parts", [2, 3, 8])
def test_a_factorization_in_parts_certifies_the_same_norm(parts, caplog):
    """Blocks that do not fit are factored in parts, one sweep of all probes each: the same certificate."""
    import logging

    factors, in_shape = [_conv(3, 3, 3, padding=1, seed=10), _conv(3, 2, 3, padding=1, seed=11)], (2, 30, 9)
    steps, shape, _ = gram_steps(factors, in_shape)
    plan = local_plan(steps, shape)
    per = math.ceil(plan.blocks / parts)
    memory = 8.0 * (2 * per + 4) * plan.block_size ** 2
    assert plan.passes(memory) == parts
    exact = _exact_norm(factors, in_shape)
    whole = certified_local_norm(steps, plan, chunk=64)
    with caplog.at_level(logging.DEBUG, logger="lipzoo.bounds.banded"):
        got = certified_local_norm(steps, plan, chunk=64, max_bytes=memory)
    assert f"in {parts} parts certified" in caplog.text
    assert exact <= got <= exact * (1 + 1e-6) and got == pytest.approx(whole, rel=1e-9)


def test_a_factorization_in_parts_refuses_a_sweep_that_differs(monkeypatch):
    """The certificate's diagonal comes from the first sweep: a later sweep that differs gives no certificate."""
    import lipzoo.bounds.banded as banded

    factors, in_shape = [_conv(3, 3, 3, padding=1, seed=10), _conv(3, 2, 3, padding=1, seed=11)], (2, 30, 9)
    steps, shape, _ = gram_steps(factors, in_shape)
    plan = local_plan(steps, shape)
    real, calls = banded._sweep_blocks, []

    def drifting(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        if len(calls) >= 2:  # every sweep after the first (each shift tried sweeps again)
            out[0].diagonal(dim1=1, dim2=2).mul_(1 + 1e-12)
        return out

    monkeypatch.setattr(banded, "_sweep_blocks", drifting)
    assert certified_local_norm(steps, plan, chunk=64, max_bytes=8.0 * 6 * plan.block_size ** 2) is None


def test_certificate_work_follows_the_path_taken():
    """The work of a certificate is counted from the shapes (never timed): a local chain costs its probes (and
    the Lanczos steps of its first shift) through the Gram operator (S^T S: each factor twice) and a block
    factorization, a dense one its smaller side's identity vectors and n^3/3; in parts, one sweep of the probes
    per part; nothing fits: infinite."""
    from lipzoo.bounds import cost
    from lipzoo.bounds.banded import LANCZOS_STEPS
    from lipzoo.bounds.gram import chain_work

    factors, in_shape = [_conv(3, 3, 3, padding=1, seed=10), _conv(3, 2, 3, padding=1, seed=11)], (2, 30, 9)
    steps, shape, n = gram_steps(factors, in_shape)
    plan = local_plan(steps, shape)
    per_vector = sum(st.flops() for st in steps)
    assert len(steps) == 4 and plan.probes < n
    assert per_vector == 2 * sum(2 * f.weight.numel() * 30 * 9 for f in factors)  # stride 1, same padding
    sweep = cost.W_APPLY * per_vector / cost.GIGA
    factor = cost.W_CHOLESKY * plan.factor_flops() / cost.GIGA
    assert chain_work(factors, in_shape) == pytest.approx((plan.probes + LANCZOS_STEPS) * sweep + factor, rel=1e-12)
    d = DenseOp(torch.randn(5, 7, dtype=torch.float64))
    assert chain_work([d], (7,)) == pytest.approx(
        cost.W_APPLY * 5 * 2 * (2 * 35) / cost.GIGA + cost.W_CHOLESKY * 5 ** 3 / 3 / cost.GIGA, rel=1e-12)
    one_part = 8.0 * 6 * plan.block_size ** 2
    assert chain_work(factors, in_shape, local_max_bytes=one_part) == pytest.approx(
        (plan.blocks * plan.probes + LANCZOS_STEPS) * sweep + factor, rel=1e-12)
    assert chain_work(factors, in_shape, local_max_bytes=one_part - 1) == math.inf
    assert chain_work([d], (7,), max_side=4) == math.inf


@pytest.mark.parametrize("adjoint", [False, True])
def test_a_step_on_one_channel_per_sample_equals_the_whole_convolution(adjoint):
    from lipzoo.bounds.steps import Step as _Step

    g = torch.Generator().manual_seed(3)
    for conv, in_shape in [(_conv(4, 3, 3, padding=1, seed=30), (3, 7, 6)),
                           (_conv(5, 2, 4, stride=2, padding=1, seed=31), (2, 9, 8)),
                           (_conv(3, 3, 3, padding=2, dilation=2, seed=32), (3, 6, 7))]:
        step = _Step(conv, in_shape, adjoint=adjoint)
        shape = conv.out_shape(in_shape) if adjoint else in_shape
        channels = torch.randint(0, shape[0], (9,), generator=g)
        x = torch.zeros(9, *shape, dtype=torch.float64)
        x[torch.arange(9), channels] = torch.randn(9, *shape[1:], generator=g, dtype=torch.float64)
        torch.testing.assert_close(step.one_channel(x, channels), step(x), rtol=1e-13, atol=1e-13)
    d = _Step(DenseOp(torch.randn(4, 6, generator=g, dtype=torch.float64)), (6,), adjoint=adjoint)
    v = torch.randn(3, 4 if adjoint else 6, generator=g, dtype=torch.float64)
    assert torch.equal(d.one_channel(v, torch.zeros(3, dtype=torch.long)), d(v))  # not a convolution: as is
