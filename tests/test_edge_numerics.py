"""Weights at the edges of float64: tiny ones are bounded soundly and tightly, bad ones are refused clearly.

Issue 22, item 4. Gram matrices of weights ~1e-82 per layer underflowed: a bound 24% below the true
constant labelled exact, and 0 from ``method="naive"`` / ``"lt_sdp"``; weights ~1e160 ended in a bare
``LinAlgError``; NaN weights and ``nn.Linear(4, 0)`` failed deep inside the norm computation.

References never run the code under test: every weight matrix is brought to unit scale by an exact
power of two (``V = W 2**k``), the constant is computed from ``V`` in float64 by SVD
(``torch.linalg.matrix_norm(ord=2)``, no Gram matrix) and scaled back with ``math.ldexp`` (each formula
is homogeneous of degree one in every layer's weights, so the scaling is exact).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipzoo import lipschitz_bound
from lipzoo.bounds import build_structure
from lipzoo.bounds.norms import EXACT_MARGIN, exact_norm, output_norms
from lipzoo.layers.operators import DenseOp, compose
from lipzoo.layers.state import LipschitzState
from lipzoo.layers.torch_modules import MAX_WEIGHT_MAGNITUDE

# the reference is float64 by SVD: a few ulps of its own rounding, in the direction that only loosens the check
SOUND_SLACK = 1e-9
# a bound is never above the true value by more than its rounding margins: EXACT_MARGIN on every exact norm
# (they add up through the recursion and the output norms) and an ulp per rounding up
TIGHT = 4 * EXACT_MARGIN


def _unit(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(w 2**k, k)`` with the largest entry of ``w 2**k`` in ``[0.5, 1)``: exact (a power of two)."""
    k = -math.frexp(float(w.abs().max()))[1]
    return w * 2.0 ** k if abs(k) < 1000 else w * 2.0 ** (k // 2) * 2.0 ** (k - k // 2), k


def _opnorm(m: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(m, ord=2))


def _mlp(scales, widths, seed=0) -> nn.Sequential:
    """Linear layers with weights ``randn * scale`` (zero bias), ReLU between them, float64."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, s in enumerate(scales):
        lin = nn.Linear(widths[i], widths[i + 1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(widths[i + 1], widths[i], generator=g, dtype=torch.float64) * s)
            lin.bias.zero_()
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _reference(net: nn.Sequential, method: str, mode: str) -> torch.Tensor:
    """The LipLT (eq. 16) or naive (eq. 11) value of a ReLU MLP (``c = d = 1/2``), at unit scale, scaled back.

    ``lt_sdp`` is the naive value here: with ``G = I``, ``||c W|| + d ||T^{1/2} W||`` is ``||W||`` for each ``T``."""
    pairs = [_unit(m.weight.detach()) for m in net if isinstance(m, nn.Linear)]
    mats, shift = [v for v, _ in pairs], sum(k for _, k in pairs)
    *hidden, out = mats
    k = out.shape[0]
    rows = [out] if mode == "global" else [out[i] - out[j] for i in range(k) for j in range(k) if i != j]

    def head(a: torch.Tensor, t: torch.Tensor) -> float:  # ||a t|| (a: output rows or a difference of two)
        return _opnorm(a @ t) if a.dim() == 2 else float((a @ t).norm())

    def chain(lo: int, hi: int) -> torch.Tensor:  # (c W_{hi-1}) ... (c W_lo)
        t = torch.eye(hidden[lo].shape[1] if lo < len(hidden) else out.shape[1], dtype=torch.float64)
        for s in range(lo, hi):
            t = 0.5 * hidden[s] @ t
        return t

    if method in ("naive", "lt_sdp"):
        total = math.prod(_opnorm(w) for w in hidden)
        vals = [head(a, torch.eye(out.shape[1], dtype=torch.float64)) * total for a in rows]
    else:
        m = []
        for t in range(len(hidden)):
            mt = _opnorm(hidden[t] @ chain(0, t))
            mt += sum(0.5 * _opnorm(hidden[t] @ chain(j + 1, t)) * m[j] for j in range(t))
            m.append(mt)
        L = len(hidden)
        vals = [head(a, chain(0, L)) + sum(0.5 * head(a, chain(j + 1, L)) * m[j] for j in range(L)) for a in rows]
    vals = [math.ldexp(v, -shift) for v in vals]
    if mode == "global":
        return torch.tensor(vals[0], dtype=torch.float64)
    full = torch.zeros(k, k, dtype=torch.float64)
    full[~torch.eye(k, dtype=torch.bool)] = torch.tensor(vals, dtype=torch.float64)
    return full


def _check(bound: torch.Tensor, ref: torch.Tensor) -> None:
    off = ~torch.eye(ref.shape[0], dtype=torch.bool) if ref.dim() == 2 else torch.ones((), dtype=torch.bool)
    b, r = bound[off], ref[off]
    assert bool((r > 0).all())
    assert bool((b > 0).all()), f"a bound of 0 for a non-constant network: {b.tolist()}"
    assert bool((b >= r * (1 - SOUND_SLACK)).all()), f"below the true value: {(b / r).tolist()}"
    assert bool((b <= r * (1 + TIGHT)).all()), f"inflated: {(b / r).tolist()}"


# per-layer weight scales: every product along the network stays a (possibly subnormal) float64, so the
# true constant is representable; unscaled Gram matrices underflow in each one
SCALES = {
    "1e-90 x3": ((1e-90,) * 3, (4, 5, 6, 3)),
    "1e-130 x2": ((1e-130,) * 2, (4, 5, 3)),
    "3e-155 x2": ((3e-155,) * 2, (4, 5, 3)),
    "3e-155 3e-155 1e18": ((3e-155, 3e-155, 1e18), (4, 5, 6, 3)),
}
METHODS = [("liplt", "exact"), ("liplt", "auto"), ("naive", "exact"), ("naive", "auto"),
           ("lt_sdp", "exact"), ("lt_sdp", "auto")]
# norm="auto" certifies multi-layer chains in lipzoo.bounds.proved, whose Gram matrices are not rescaled
# yet: where they underflow it falls back to products of per-factor bounds, sound but 13% loose
AUTO_CHAIN = pytest.mark.xfail(strict=True, reason="proved.py certifies chains from unscaled Gram matrices")


def _cases():
    for name, (scales, widths) in SCALES.items():
        for method, norm in METHODS:
            marks = [AUTO_CHAIN] if (method, norm) == ("liplt", "auto") and len(scales) > 2 else []
            yield pytest.param(scales, widths, method, norm, id=f"{name}-{method}-{norm}", marks=marks)


@pytest.mark.parametrize("scales, widths, method, norm", list(_cases()))
def test_tiny_weights_give_sound_tight_nonzero_bounds(scales, widths, method, norm):
    net = _mlp(scales, widths)
    for mode in ("global", "pairwise"):
        b = lipschitz_bound(net, (widths[0],), method=method, norm=norm, mode=mode, cache=False)
        assert b.guaranteed
        _check(b.value, _reference(net, method, mode))


def test_reference_agrees_with_the_library_at_unit_scale():
    """The reference computes what the library computes (so a failure above is the scale, not the formula)."""
    net = _mlp((1.0, 1.0, 1.0), (4, 5, 6, 3), seed=3)
    for method in ("liplt", "naive", "lt_sdp"):
        for mode in ("global", "pairwise"):
            b = lipschitz_bound(net, (4,), method=method, norm="exact", mode=mode, cache=False)
            _check(b.value, _reference(net, method, mode))


@pytest.mark.parametrize("scale", [1e-130, 3e-155, 1e-160])
def test_exact_norm_of_a_chain_whose_product_underflows(scale):
    """Three factors of ``scale``: the dense product (1e-390 ... 1e-480) is not even representable."""
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(n, m, generator=g, dtype=torch.float64) * scale for n, m in ((3, 6), (6, 5), (5, 4))]
    units = [_unit(w) for w in ws]
    prod = units[0][0] @ units[1][0] @ units[2][0]
    shift = sum(k for _, k in units)
    # the true norm as mantissa 2**-shift (it underflows float64): compare the bound scaled up exactly
    got = exact_norm(compose(*[DenseOp(w) for w in ws]), (4,))
    true = _opnorm(prod)
    if math.ldexp(true, -shift) < 1e-300:  # not representable: the bound must be the smallest float above 0 or more
        assert got > 0
        return
    ratio = float(got) / math.ldexp(true, -shift)
    assert 1 - SOUND_SLACK <= ratio <= 1 + TIGHT


def test_exact_norm_of_a_two_layer_chain_at_1e_minus_150():
    g = torch.Generator().manual_seed(2)
    a, b = (torch.randn(5, 7, generator=g, dtype=torch.float64) * 1e-150,
            torch.randn(7, 4, generator=g, dtype=torch.float64) * 1e-150)
    (ua, ka), (ub, kb) = _unit(a), _unit(b)
    true = math.ldexp(_opnorm(ua @ ub), -(ka + kb))  # ~1e-300: representable, its Gram is not
    got = float(exact_norm(compose(DenseOp(a), DenseOp(b)), (4,)))
    assert true * (1 - SOUND_SLACK) <= got <= true * (1 + TIGHT)


@pytest.mark.parametrize("scale", [1e-200, 3e-160, 1e150])
def test_output_norms_of_tiny_and_huge_rows(scale):
    g = torch.Generator().manual_seed(4)
    rows = torch.randn(4, 9, generator=g, dtype=torch.float64) * scale
    u, k = _unit(rows)
    want = {"global": torch.tensor(_opnorm(u), dtype=torch.float64),
            "per_class": u.norm(dim=1),
            "pairwise": torch.cdist(u, u, compute_mode="donot_use_mm_for_euclid_dist")}
    for mode, ref in want.items():
        got = output_norms(rows, mode)
        ref = ref * 2.0 ** -k if abs(k) < 1000 else ref * 2.0 ** (-k // 2) * 2.0 ** (-k + k // 2)
        _check(got, ref.to(torch.float64))


class _DenseBlock(nn.Module):
    """``x -> G relu(W x)`` with its own state (``G`` dense), so lt_sdp's AOL ``T >= G^T G`` is formed from ``G``."""

    def __init__(self, w: torch.Tensor, g: torch.Tensor):
        super().__init__()
        self.w, self.g = nn.Parameter(w), nn.Parameter(g)

    def forward(self, x):
        return torch.relu(x @ self.w.T) @ self.g.T

    def lipschitz_state(self) -> LipschitzState:
        return LipschitzState(W=DenseOp(self.w), G=DenseOp(self.g), alpha=0.0, beta=1.0, activation=torch.relu)


@pytest.mark.parametrize("g_scale", [1e-160, 1e-100])
def test_lt_sdp_aol_diagonal_of_a_tiny_g(g_scale):
    """``T_ii = sum_j |G^T G|_ij``: with G ~1e-160 the unscaled Gram was 0 and the bound far below the truth."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 6, generator=gen, dtype=torch.float64) * g_scale
    net = nn.Sequential(_DenseBlock(w, g))
    (uw, kw), (ug, kg) = _unit(w), _unit(g)
    t_sqrt = (ug.T @ ug).abs().sum(1).sqrt()  # sqrt(T) 2**kg, exactly the scaled diagonal
    unit = 0.5 * _opnorm(ug @ uw) + 0.5 * _opnorm(t_sqrt[:, None] * uw)
    ref = torch.tensor(math.ldexp(unit, -(kw + kg)), dtype=torch.float64)
    for norm in ("exact", "auto"):
        b = lipschitz_bound(net, (4,), method="lt_sdp", sdp_t="aol", norm=norm, mode="global", cache=False)
        _check(b.value, ref)


# ---------------------------------------------------------------- refused weights


def _poisoned_linear():
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        net[2].weight[1, 2] = float("nan")
    return net, (4,), r"module '2' \(Linear\(in_features=5, out_features=3"


def _poisoned_conv():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))
    with torch.no_grad():
        net[0].weight[1, 0, 2, 0] = float("inf")
    return net, (1, 5, 5), r"module '0' \(Conv2d\(1, 2"


def _poisoned_batch_norm():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3)).eval()
    net[1].running_var[1] = float("nan")
    return net, (1, 5, 5), r"module '1' \(BatchNorm2d\(2.*running_var"


def _nested_empty_linear():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "Initializing zero-element tensors is a no-op"
        net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 0)))
    return net, (4,), r"module '2\.0' \(Linear\(in_features=4, out_features=0.*empty"


def _huge_weights():
    net = _mlp((1e160, 1.0), (4, 5, 3))
    return net, (4,), r"module '0' \(Linear\(in_features=4, out_features=5.*MAX_WEIGHT_MAGNITUDE"


REFUSED = {"nan in a Linear": _poisoned_linear, "inf in a Conv2d": _poisoned_conv,
           "nan in a BatchNorm2d running_var": _poisoned_batch_norm, "nn.Linear(4, 0) nested": _nested_empty_linear,
           "weights of 1e160": _huge_weights}


@pytest.mark.parametrize("name", list(REFUSED))
@pytest.mark.parametrize("method", ["liplt", "naive", "lt_sdp"])
def test_bad_weights_are_refused_with_a_one_line_message_naming_the_module(name, method):
    net, shape, pattern = REFUSED[name]()
    with pytest.raises(ValueError, match=pattern) as err:
        lipschitz_bound(net, shape, method=method, mode="global", cache=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=pattern):  # before any norm: the structure refuses already
        build_structure(net, shape)


def test_inf_anywhere_in_a_nested_module_is_refused():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].bias[0] = -float("inf")
    with pytest.raises(ValueError, match=r"module '0'.*'bias' has 1 non-finite"):
        lipschitz_bound(net, (3,), mode="pairwise", cache=False)


def test_the_weight_limit_is_a_limit_not_a_guess():
    """Just below the limit a bound comes out, finite and sound; just above, the clear error."""
    below = _mlp((MAX_WEIGHT_MAGNITUDE / 4, 1.0), (4, 5, 3))
    b = lipschitz_bound(below, (4,), method="liplt", norm="exact", mode="global", cache=False)
    assert math.isfinite(float(b.value))
    _check(b.value, _reference(below, "liplt", "global"))
    above = _mlp((1.0, 1.0), (4, 5, 3))
    with torch.no_grad():
        above[2].weight[0, 0] = MAX_WEIGHT_MAGNITUDE * 2
    with pytest.raises(ValueError, match="module '2'.*above the limit"):
        lipschitz_bound(above, (4,), mode="global", cache=False)


def test_all_zero_weights_still_give_zero():
    """A bound of 0 is right for an exactly constant network (and only there)."""
    net = _mlp((0.0, 1.0), (4, 5, 3))
    b = lipschitz_bound(net, (4,), method="liplt", norm="exact", mode="global", cache=False)
    assert float(b.value) == 0


@pytest.mark.parametrize("method,norm", [("naive", "auto"), ("lt_sdp", "exact"), ("liplt", "exact")])
def test_a_constant_below_the_float64_range_is_never_a_bound_of_zero(method, norm):
    """Three layers of 1e-130: the true constant (~1e-390) is not representable. A bound is then a positive
    float (sound: above the true value) or a clear refusal, never 0 (which would claim a constant network)."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1e-130)
    try:
        b = lipschitz_bound(net, (4,), method=method, norm=norm, mode="global", cache=False)
    except ValueError as err:
        assert "underflowed to 0" in str(err) and "\n" not in str(err)
    else:
        assert float(b.value) > 0
