"""Layers, operators and activations: exact adjoints, proved norm bounds, Proposition 2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipzoo
from lipzoo.bounds.structure import materialize
from lipzoo.layers import (AvgPool2d, Flatten, LTConv2d, LTLinear, LTResidualConv, LTResidualLinear, Normalize,
                           get_activation, module_state, register_activation)
from lipzoo.layers.activations import _REGISTRY
from lipzoo.layers.lt import AvgPool2dOp
from lipzoo.layers.padding import PadOp
from lipzoo.layers.operators import (AdjointOp, ComposeOp, Conv2dOp, DenseOp, DiagonalOp, FlattenOp,
                                     ScaleOp, SumOp, conv2d_norm_bound)
from lipzoo.layers.residual import _SameConvTransposeOp

# <x, A^T y> = <A x, y> in float64: only summation order differs.
ADJOINT_RTOL = 1e-10
# Exact spectral norms agree to float64 rounding after an SVD.
SVD_RTOL = 1e-9

torch.manual_seed(0)


def _dot_test(op, in_shape):
    x = torch.randn(3, *in_shape, dtype=torch.float64)
    y = torch.randn(3, *op.out_shape(in_shape), dtype=torch.float64)
    ax = op.forward(x)
    assert ax.shape[1:] == op.out_shape(in_shape)
    aty = op.adjoint(y, in_shape)
    assert aty.shape == x.shape
    lhs, rhs = (ax * y).sum(), (x * aty).sum()
    assert torch.allclose(lhs, rhs, rtol=ADJOINT_RTOL, atol=1e-12)


CONV_CASES = [
    # (c_in, c_out, k, stride, padding, dilation, groups, H, W)
    (2, 3, 3, 1, 1, 1, 1, 7, 9),
    (2, 3, 4, 2, 1, 1, 1, 7, 7),  # (7 + 2 - 4) % 2 != 0: the reference's conv_transpose2d crashes here
    (3, 2, 2, 3, 0, 1, 1, 11, 8),
    (4, 4, 3, 2, 0, 2, 2, 9, 10),
    (2, 4, 5, 1, 2, 1, 2, 6, 5),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_adjoint_exact_for_every_size(case):
    cin, cout, k, s, p, d, g, h, w = case
    weight = torch.randn(cout, cin // g, k, k, dtype=torch.float64)
    _dot_test(Conv2dOp(weight, s, p, d, g), (cin, h, w))


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_norm_bound_is_upper_bound_and_tight_for_stride_one(case):
    cin, cout, k, s, p, d, g, h, w = case
    weight = torch.randn(cout, cin // g, k, k, dtype=torch.float64)
    op = Conv2dOp(weight, s, p, d, g)
    exact = torch.linalg.matrix_norm(materialize(op, (cin, h, w)), ord=2)
    bound = op.norm_bound((cin, h, w))
    assert bound >= exact * (1 - 1e-12)
    if s == 1:  # zero padding vs circular: the bound is close but not equal
        assert bound <= 2 * exact


def test_other_operators_adjoint_and_bounds():
    dense = DenseOp(torch.randn(5, 4, dtype=torch.float64))
    diag = DiagonalOp(torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64))
    cases = [
        (dense, (4,)),
        (diag, (3, 4, 5)),
        (ScaleOp(-1.5), (2, 3)),
        (FlattenOp(), (2, 3, 4)),
        (AvgPool2dOp(2, 2, 0), (3, 6, 7)),
        (AvgPool2dOp(3, 2, 1), (2, 7, 7)),
        (AdjointOp(dense, (4,)), (5,)),
        (ComposeOp([dense, FlattenOp()]), (2, 2)),
        (SumOp([ScaleOp(2.0), diag]), (3, 2, 2)),
        (_SameConvTransposeOp(torch.randn(4, 3, 3, 3, dtype=torch.float64), 1), (4, 5, 6)),
    ]
    for op, shape in cases:
        _dot_test(op, shape)
        exact = torch.linalg.matrix_norm(materialize(op, shape), ord=2)
        assert op.norm_bound(shape) >= exact * (1 - 1e-12), type(op).__name__


def test_dense_and_diagonal_bounds_are_exact():
    w = torch.randn(6, 4, dtype=torch.float64)
    assert torch.isclose(DenseOp(w).norm_bound((4,)), torch.linalg.matrix_norm(w, ord=2), rtol=SVD_RTOL)
    d = torch.tensor([0.1, -3.0], dtype=torch.float64)
    assert DiagonalOp(d).norm_bound((2, 3, 3)) == 3.0


def test_conv_norm_bound_matches_circular_convolution():
    # On circular padding the FFT formula is exact (Sedghi et al.): check it against a dense matrix.
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    n = 6

    def circ(x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w)

    eye = torch.eye(2 * n * n, dtype=torch.float64).reshape(-1, 2, n, n)
    dense = circ(eye).reshape(2 * n * n, -1)
    exact = torch.linalg.matrix_norm(dense, ord=2)
    # a circular convolution on an n x n grid: the bound formula with N = n
    spectrum = torch.fft.fft2(w, s=(n, n)).permute(2, 3, 0, 1)
    assert torch.isclose(torch.linalg.matrix_norm(spectrum, ord=2).max(), exact, rtol=SVD_RTOL)
    assert conv2d_norm_bound(w, (n, n), 1) >= torch.linalg.matrix_norm(
        materialize(Conv2dOp(w, 1, 1), (2, n, n)), ord=2)


# --- activations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["relu", "leaky_relu", "tanh", "sigmoid", "softplus", "elu", "gelu", "identity"])
def test_declared_slopes_contain_numerical_slopes(name):
    spec = get_activation(name)
    phi = spec.factory().double()
    x = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    slopes = (phi(x[1:]) - phi(x[:-1])) / (x[1:] - x[:-1])
    assert slopes.min() >= spec.alpha - 1e-9 and slopes.max() <= spec.beta + 1e-9
    # and the bounds are attained (tight) up to grid resolution, except for saturating tails
    assert slopes.max() >= spec.beta - 1e-3


def test_gelu_has_negative_alpha():
    spec = get_activation("gelu")
    # GELU'(x) + GELU'(-x) = 1, extremes at x = -+sqrt(2): alpha = Phi(-sqrt2) - sqrt2 phi(sqrt2)
    assert spec.alpha == pytest.approx(-0.128904, abs=1e-6)
    assert spec.beta == pytest.approx(1.128904, abs=1e-6)


def test_register_activation_and_errors():
    try:
        spec = register_activation("my_half_relu", lambda: nn.LeakyReLU(0.5), 0.5, 1.0)
        assert get_activation("my_half_relu") is spec
        layer = LTLinear(3, 2, activation="my_half_relu")
        assert layer.lipschitz_state().alpha == 0.5
        with pytest.raises(ValueError, match="already registered"):
            register_activation("my_half_relu", nn.ReLU, 0.0, 1.0)
    finally:
        _REGISTRY.pop("my_half_relu", None)
    with pytest.raises(ValueError, match="alpha <= beta"):
        register_activation("bad", nn.ReLU, 1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        register_activation("bad", nn.ReLU, 0.0, math.inf)
    with pytest.raises(ValueError, match="Did you mean 'relu'"):
        get_activation("rellu")


# --- layers --------------------------------------------------------------------------------------

def test_lt_layers_match_torch_and_declare_state():
    conv = LTConv2d(2, 3, 4, stride=2, padding=1)
    x = torch.randn(2, 2, 9, 9)
    ref = F.relu(F.conv2d(x, conv.weight, conv.bias, 2, 1))
    assert torch.allclose(conv(x), ref)
    st = conv.lipschitz_state()
    assert (st.alpha, st.beta, st.H, st.G) == (0.0, 1.0, None, None)
    lin = LTLinear(4, 2, activation=None)
    assert lin.lipschitz_state().is_linear
    assert torch.allclose(lin(torch.ones(1, 4)), F.linear(torch.ones(1, 4), lin.weight, lin.bias))


class _NegativeSlope(nn.Module):
    """phi(x) = -0.75 x: a decreasing activation (slopes in [-1, -0.5])."""

    def forward(self, x):
        return -0.75 * x


class _Doubled(nn.Module):
    def forward(self, x):
        return 2 * torch.tanh(x)


def test_layer_input_errors():
    with pytest.raises(ValueError, match="explicit integer padding"):
        LTConv2d(1, 1, 3, padding="same")
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="same length"):
        Normalize([0.5, 0.2], [0.1])
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 3"):
        Normalize([0.1, 0.2, 0.3], [1, 1, 1])(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="odd integer kernel_size"):
        LTResidualConv(2, 4, kernel_size=2)
    with pytest.raises(ValueError, match="rho must be a positive"):
        LTResidualLinear(3, 4, rho=0.0)
    with pytest.raises(ValueError, match=r"expects inputs \(B, 3, H, W\)"):
        LTResidualConv(3, 4)(torch.zeros(1, 2, 5, 5))
    with pytest.raises(ValueError, match=r"expects inputs \(B, 3\)"):
        LTResidualLinear(3, 4)(torch.zeros(1, 2))
    try:
        register_activation("negative_only", _NegativeSlope, -1.0, -0.5)
        with pytest.raises(ValueError, match="monotone activation"):
            LTResidualLinear(3, 4, activation="negative_only")
    finally:
        _REGISTRY.pop("negative_only", None)
    # GELU (alpha < 0) breaks Proposition 2: refused rather than silently unsound
    with pytest.raises(ValueError, match="monotone activation"):
        LTResidualConv(2, 3, activation="gelu")


def _jacobian_svals(f, shape):
    x = torch.randn(1, *shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: f(z.reshape(1, *shape)).reshape(-1), x.reshape(-1))
    return torch.linalg.svdvals(jac)


def _push_lipschitz_up(layer, shape, steps=60):
    """Adversarial training: maximize the layer's local gain to try to break Proposition 2."""
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(steps):
        x = torch.randn(16, *shape, dtype=torch.float64)
        v = torch.randn_like(x) * 1e-3
        gain = ((layer(x + v) - layer(x)).flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1)).mean()
        opt.zero_grad()
        (-gain).backward()
        opt.step()


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus", "leaky_relu"])
@pytest.mark.parametrize("rho", [1.0, 0.5, 2.0])
def test_residual_linear_is_sqrt_rho_lipschitz_even_after_adversarial_steps(activation, rho):
    torch.manual_seed(1)
    layer = LTResidualLinear(6, 9, activation=activation, rho=rho).double()
    _push_lipschitz_up(layer, (6,))
    sq = float(layer.rho.sqrt())
    for _ in range(5):
        assert _jacobian_svals(layer, (6,)).max() <= sq * (1 + 1e-9)


@pytest.mark.parametrize("activation", ["relu", "elu"])
def test_residual_conv_is_sqrt_rho_lipschitz_even_after_adversarial_steps(activation):
    torch.manual_seed(2)
    layer = LTResidualConv(2, 3, 3, activation=activation, rho=1.5).double()
    _push_lipschitz_up(layer, (2, 5, 6), steps=30)
    sq = float(layer.rho.sqrt())
    for _ in range(3):
        assert _jacobian_svals(layer, (2, 5, 6)).max() <= sq * (1 + 1e-9)


def test_residual_forward_matches_proposition_2_formula_and_state():
    torch.manual_seed(3)
    layer = LTResidualLinear(4, 5, rho=0.7).double()
    p = layer.effective_parameters()
    x = torch.randn(3, 4, dtype=torch.float64)
    W, b = p["weight"], p["bias"]
    # independent: T from the SLL diagonal with q = 1, h = sqrt(rho) x - (a+b)/sqrt(rho) W^T T phi(Wx+b)
    rho = float(layer.rho)
    D = (W @ W.T).abs().sum(1)
    T = 2 * rho / 1.0 ** 2 / D
    ref = math.sqrt(rho) * x - 1.0 / math.sqrt(rho) * (F.relu(x @ W.T + b) * T) @ W
    assert torch.allclose(layer(x), ref)
    # Prop. 2 condition: W W^T <= 2 rho / (a+b)^2 T^{-1}
    gap = 2 * rho * torch.diag(1 / T) - W @ W.T
    assert torch.linalg.eigvalsh(gap).min() >= -1e-10
    st = module_state(layer)
    y = torch.randn(3, 5, dtype=torch.float64)
    assert torch.allclose(st.G.forward(y), -(y * p["scale"]) @ W)
    assert torch.allclose(st.H.forward(x), math.sqrt(rho) * x)


def test_residual_rho_learnable_or_fixed():
    assert isinstance(LTResidualConv(2, 3, learn_rho=True).log_rho, nn.Parameter)
    fixed = LTResidualConv(2, 3, learn_rho=False, rho=0.25)
    assert not isinstance(fixed.log_rho, nn.Parameter)
    assert "log_rho" in fixed.state_dict()
    assert float(fixed.rho) == pytest.approx(0.25)


def test_avgpool_and_flatten_states():
    pool = AvgPool2d(2)
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(pool.lipschitz_state().W.forward(x), pool(x))
    assert torch.equal(Flatten()(x), x.flatten(1))


def test_top_level_imports():
    for name in ["LTLinear", "LTConv2d", "LTResidualLinear", "LTResidualConv", "Normalize"]:
        assert hasattr(lipzoo, name)


def test_strided_conv_bound_is_polyphase_tight():
    # stride 2, k 4: the polyphase FFT bound is within a few percent of the exact zero-padded norm,
    # where bounding "stride-1 conv then subsample" would lose up to a factor of 2.
    torch.manual_seed(8)
    w = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    op = Conv2dOp(w, 2, 1)
    exact = torch.linalg.matrix_norm(materialize(op, (3, 12, 12)), ord=2)
    bound = op.norm_bound((3, 12, 12))
    assert exact <= bound <= 1.25 * exact
    assert bound < conv2d_norm_bound(w, (12, 12), 1)  # the stride-1 bound of the same kernel


def test_guaranteed_norm_bounds_are_float64_and_never_rounded_down():
    # float32 rounds 0.7 and sqrt(0.4) *down*: a guaranteed norm must not
    b = ScaleOp(0.7).norm_bound((3,))
    assert b.dtype == torch.float64 and float(b) >= 0.7
    pool = AvgPool2dOp((3, 5), (2, 2), 0)
    b = pool.norm_bound((1, 9, 9))
    assert b.dtype == torch.float64 and float(b) >= math.sqrt((2 / 3) * (3 / 5))
    exact = torch.linalg.matrix_norm(materialize(pool, (1, 9, 9)), ord=2)
    assert float(b) >= float(exact)
    w32 = torch.randn(3, 2, 3, 3)
    for op, shape in [(Conv2dOp(w32, 2, 1), (2, 7, 7)), (DenseOp(w32.reshape(3, 18)), (18,)),
                      (DiagonalOp(w32[0, 0, 0]), (3,)), (FlattenOp(), (2, 3)),
                      (ComposeOp([DenseOp(w32.reshape(3, 18)), FlattenOp()]), (2, 3, 3)),
                      (SumOp([ScaleOp(torch.tensor(0.7)), ScaleOp(0.7)]), (4,))]:
        bound = op.norm_bound(shape)
        assert bound.dtype == torch.float64, type(op).__name__
        exact = torch.linalg.matrix_norm(materialize(_as64(op), shape), ord=2)
        assert float(bound) >= float(exact), type(op).__name__


def _as64(op):
    """The same operator with float64 tensors (its exact norm in float64)."""
    import copy
    op = copy.copy(op)
    for attr in ("weight", "scale", "c"):
        if torch.is_tensor(getattr(op, attr, None)):
            setattr(op, attr, getattr(op, attr).double())
    if hasattr(op, "ops"):
        op.ops = [_as64(o) for o in op.ops]
    return op


def test_lt_layer_state_follows_attributes_changed_after_construction():
    conv = LTConv2d(1, 2, 3, padding=1, activation="elu")
    conv.act.alpha = -2.0
    conv.padding = (0, 0)
    conv.stride = (2, 2)
    st = conv.lipschitz_state()
    assert (st.alpha, st.beta) == (-2.0, 1.0)
    assert st.W.out_shape((1, 7, 7)) == tuple(conv(torch.zeros(1, 1, 7, 7)).shape[1:]) == (2, 3, 3)
    conv.padding_mode = "replicate"  # F.pad then uses the construction-time pads (1, 1, 1, 1)
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    st = conv.double().lipschitz_state()
    assert torch.allclose(st.W.forward(x) + conv.bias.reshape(-1, 1, 1), F.conv2d(
        F.pad(x, (1, 1, 1, 1), mode="replicate"), conv.weight, conv.bias, 2))
    conv.padding_mode = "mirror"
    with pytest.raises(TypeError, match="padding_mode='mirror'"):
        conv.lipschitz_state()
    lin = LTLinear(3, 3, activation="relu")
    lin.act = nn.Sigmoid()  # a different module: its own slopes
    assert (lin.lipschitz_state().alpha, lin.lipschitz_state().beta) == (0.0, 0.25)
    lin.act = _NegativeSlope()  # neither a known torch activation nor the registered module type
    with pytest.raises(TypeError, match="neither a torch activation"):
        lin.lipschitz_state()


def test_register_activation_checks_declared_bounds_against_derived_ones():
    with pytest.raises(ValueError, match=r"do not contain the slopes \[-1.0, 1.0\]"):
        register_activation("neg_elu", lambda: nn.ELU(alpha=-1.0), 0.0, 1.0)
    with pytest.raises(ValueError, match="cannot bound: .*jumps"):
        register_activation("jumpy", lambda: nn.Softplus(threshold=1.0), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"measured on _Doubled"):
        register_activation("doubled_tanh", _Doubled, 0.0, 1.0)  # 2 tanh(x) has slopes up to 2
    assert "neg_elu" not in _REGISTRY and "jumpy" not in _REGISTRY and "doubled_tanh" not in _REGISTRY
    sp = get_activation("softplus").factory()
    assert isinstance(sp, nn.Softplus) and sp.threshold >= 38


@pytest.mark.parametrize("mode", PadOp.MODES)
@pytest.mark.parametrize("pads,shape", [((1, 1, 1, 1), (2, 4, 5)), ((2, 0, 1, 3), (1, 4, 4)),
                                        ((3, 3, 2, 2), (1, 4, 4))])
def test_pad_operator_adjoint_and_exact_norm(mode, pads, shape):
    op = PadOp(pads, mode)
    if mode == "reflect" and max(pads) >= min(shape[1:]):
        with pytest.raises(ValueError, match="too large"):
            op.out_shape(shape)
        return
    _dot_test(op, shape)
    dense = materialize(op, shape)
    exact = torch.linalg.matrix_norm(dense, ord=2)
    # a float64 SVD is off by a few ulps either way (BLAS-dependent): the bound must not be below it by more
    assert torch.isclose(op.norm_bound(shape), exact, rtol=SVD_RTOL) and op.norm_bound(shape) >= exact * (1 - 1e-12)
    x = torch.randn(2, *shape, dtype=torch.float64)
    assert torch.equal(op.forward(x), F.pad(x, pads, mode=mode))
