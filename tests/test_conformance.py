"""check_lipschitz_state: every built-in layer conforms; wrong states are caught."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipzoo.layers import (AvgPool2d, Flatten, LinearOperator, LipschitzState, LTConv2d, LTLinear, LTResidualConv,
                           LTResidualLinear, Normalize, check_lipschitz_state, list_activations)
from lipzoo.layers.operators import DenseOp, ScaleOp


def _perturb(module: nn.Module, seed: int) -> nn.Module:
    """Move every parameter away from its initialisation (the state must hold for every value)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def _prelu(values):
    m = nn.PReLU(len(values))
    with torch.no_grad():
        m.weight.copy_(torch.tensor(values))
    return m


def _bn(cls, c):
    m = cls(c)
    with torch.no_grad():
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.2, 3)
        m.weight.uniform_(-2, 2)
    return m.eval()


def _lt_conv_padding_mode(mode):
    m = LTConv2d(2, 3, 3, padding=1, activation="tanh")
    m.padding_mode = mode  # after construction: forward pads with the construction-time pads
    return m


def _residual_conv_padding():
    m = LTResidualConv(2, 3, 3)
    m.padding = 0  # changed after construction: forward and state both follow it
    return m


BUILT_IN = [
    (lambda: LTLinear(5, 4), (5,)),
    (lambda: LTLinear(5, 3, activation=None, bias=False), (5,)),
    *[(lambda a=a: LTLinear(4, 3, activation=a), (4,)) for a in list_activations()],
    (lambda: LTConv2d(2, 3, 3, stride=2, padding=1, activation="gelu"), (2, 7, 7)),
    (lambda: LTConv2d(4, 4, 3, dilation=2, groups=2, padding=2, activation="elu"), (4, 6, 6)),
    (lambda: LTConv2d(2, 2, (2, 3), stride=(1, 2), padding=(1, 0), activation=None), (2, 5, 6)),
    *[(lambda m=m: _lt_conv_padding_mode(m), (2, 5, 5)) for m in ("reflect", "replicate", "circular")],
    *[(lambda a=a: LTResidualLinear(4, 6, activation=a, rho=0.7), (4,))
      for a in ["relu", "tanh", "softplus", "leaky_relu", "elu", "sigmoid"]],
    (lambda: LTResidualConv(2, 3, 3, activation="softplus"), (2, 5, 5)),
    (lambda: LTResidualConv(2, 4, 5, activation="tanh"), (2, 6, 5)),
    (_residual_conv_padding, (2, 6, 6)),
    (lambda: Normalize([0.1, 0.2], [0.3, 0.4]), (2, 4, 4)),
    (lambda: AvgPool2d(3, 2, 1), (2, 7, 7)),
    (lambda: AvgPool2d(2), (1, 6, 5)),
    (lambda: Flatten(), (2, 3, 3)),
]

TORCH_MODULES = [
    (lambda: nn.Linear(4, 3), (4,)),
    (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 6, 6)),
    (lambda: nn.Conv2d(2, 2, 3, padding="valid", groups=2, bias=False), (2, 5, 5)),
    (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="reflect"), (2, 6, 5)),
    (lambda: nn.Conv2d(2, 2, 3, padding=(2, 1), dilation=2, padding_mode="replicate"), (2, 5, 6)),
    (lambda: nn.Conv2d(1, 2, 4, padding="same", padding_mode="circular"), (1, 5, 5)),
    (lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True), (2, 5, 5)),
    (lambda: nn.AvgPool2d(2, count_include_pad=False), (1, 6, 6)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1, divisor_override=4), (2, 6, 6)),
    (lambda: nn.Flatten(), (2, 2, 3)),
    (lambda: _bn(nn.BatchNorm1d, 4), (4,)),
    (lambda: _bn(nn.BatchNorm1d, 3), (3, 5)),
    (lambda: _bn(nn.BatchNorm2d, 2), (2, 3, 3)),
    (lambda: nn.Dropout(0.5).eval(), (5,)),
    (lambda: nn.Dropout2d(0.3).eval(), (2, 3, 3)),
    (lambda: nn.Identity(), (4,)),
]

ACTIVATIONS = [
    nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-2.0, 0.5), nn.LeakyReLU(0.2), nn.LeakyReLU(-0.5), nn.LeakyReLU(3.0),
    nn.ELU(), nn.ELU(alpha=2.5), nn.ELU(alpha=-1.0), nn.ELU(alpha=0.0), nn.CELU(0.5), nn.CELU(3.0), nn.SELU(),
    nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish(), nn.Tanh(), nn.Sigmoid(), nn.Hardswish(),
    nn.Hardsigmoid(), nn.Softplus(beta=1.0, threshold=40.0), nn.Softplus(beta=3.0, threshold=50.0),
    nn.Softplus(beta=-2.0, threshold=45.0), nn.Softsign(), nn.Tanhshrink(), nn.LogSigmoid(),
    nn.Threshold(0.3, 0.3), nn.Softshrink(0.5), nn.Hardshrink(0.0), nn.Hardshrink(-1.0), nn.RReLU(0.1, 0.3).eval(),
    _prelu([0.25]), _prelu([-2.0, 0.5, 3.0]), nn.Identity(),
]


@pytest.mark.parametrize("i", range(len(BUILT_IN)))
@pytest.mark.parametrize("seed", [None, 1])
def test_built_in_layers_conform(i, seed):
    make, shape = BUILT_IN[i]
    layer = make().double()
    if seed is not None:
        _perturb(layer, seed)
    report = check_lipschitz_state(layer, shape)
    assert report.ok and report.failures == []
    assert all(r >= 1 - 1e-12 for r in report.norm_ratios.values())


@pytest.mark.parametrize("i", range(len(TORCH_MODULES)))
def test_plain_torch_modules_conform(i):
    make, shape = TORCH_MODULES[i]
    assert check_lipschitz_state(_perturb(make().double(), i), shape).ok


@pytest.mark.parametrize("act", ACTIVATIONS, ids=repr)
def test_every_accepted_activation_conforms(act):
    report = check_lipschitz_state(act, (3, 4))
    assert report.ok
    lo, hi = report.sampled_slopes
    # the declared set is sound and not absurdly loose (the sampler gets close to the extremes)
    assert report.alpha - 1e-7 <= lo and hi <= report.beta + 1e-7
    assert hi - lo >= 0.9 * (report.beta - report.alpha) - 1e-12


def test_layer_with_changed_activation_attributes_conforms():
    layer = LTLinear(4, 4, activation="leaky_relu")
    layer.act.negative_slope = -3.0  # after construction: the state follows it
    report = check_lipschitz_state(layer, (4,))
    assert (report.alpha, report.beta) == (-3.0, 1.0)
    elu = LTConv2d(1, 2, 3, activation="elu")
    elu.act.alpha = -0.5
    assert check_lipschitz_state(elu, (1, 5, 5)).alpha == -0.5


# -- layers with wrong states are caught -------------------------------------------------------------------------

class _WrongSlopes(nn.Module):
    """Claims slopes [0, 1] for 2 tanh(x) (true: [0, 2])."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 3))

    def forward(self, x):
        return 2 * torch.tanh(x @ self.weight.T)

    def lipschitz_state(self):
        return LipschitzState(W=DenseOp(self.weight), alpha=0.0, beta=1.0, activation=lambda y: 2 * torch.tanh(y))


class _WrongOperator(_WrongSlopes):
    """Declares W but forward computes 3 W x."""

    def forward(self, x):
        return torch.relu(3 * x @ self.weight.T)

    def lipschitz_state(self):
        return LipschitzState(W=DenseOp(self.weight), alpha=0.0, beta=1.0, activation=torch.relu)


class _BadAdjointOp(LinearOperator):
    def __init__(self, weight):
        self.weight = weight

    def forward(self, x):
        return x @ self.weight.T

    def adjoint(self, y, in_shape):
        return y @ self.weight.T.T.T  # wrong (W^T y would be y @ W)

    def out_shape(self, in_shape):
        return (self.weight.shape[0],)

    def norm_bound(self, in_shape):
        return self.weight.abs().max()  # not an upper bound of ||W||_2 in general


class _BadOperator(_WrongSlopes):
    def forward(self, x):
        return torch.relu(x @ self.weight.T)

    def lipschitz_state(self):
        return LipschitzState(W=_BadAdjointOp(self.weight), alpha=0.0, beta=1.0, activation=torch.relu)


class _Jump(nn.Module):
    def forward(self, x):
        return x + (x > 0.5).to(x.dtype)


class _NoActivation(_WrongSlopes):
    def forward(self, x):
        return torch.relu(x @ self.weight.T)

    def lipschitz_state(self):
        return LipschitzState(W=DenseOp(self.weight), alpha=0.0, beta=1.0)


def test_wrong_slopes_are_caught():
    with pytest.raises(ValueError, match=r"sampled slopes .* outside the declared \[0, 1\]"):
        check_lipschitz_state(_WrongSlopes(), (3,))


def test_wrong_operator_is_caught():
    with pytest.raises(ValueError, match="Jacobian of forward differs"):
        check_lipschitz_state(_WrongOperator(), (3,))


def test_wrong_adjoint_and_norm_bound_are_caught():
    torch.manual_seed(3)
    report = check_lipschitz_state(_BadOperator(), (3,), raise_on_failure=False)
    assert not report.ok
    text = "\n".join(report.failures)
    assert "adjoint test" in text and "norm_bound" in text


def test_jump_is_caught_by_difference_quotients():
    class Layer(_WrongSlopes):
        def forward(self, x):
            return _Jump()(x @ self.weight.T)

        def lipschitz_state(self):
            return LipschitzState(W=DenseOp(self.weight), alpha=1.0 - 1e-9, beta=1.0, activation=_Jump())
    with pytest.raises(ValueError, match="sampled slopes"):
        check_lipschitz_state(Layer(), (3,))


def test_missing_activation_and_large_shapes_are_reported():
    with pytest.raises(ValueError, match="declares no activation"):
        check_lipschitz_state(_NoActivation(), (3,))
    with pytest.raises(ValueError, match="use a smaller input_shape"):
        check_lipschitz_state(LTConv2d(3, 3, 3, padding=1), (3, 64, 64))
    with pytest.raises(TypeError, match="MaxPool2d has no declared Lipschitz structure"):
        check_lipschitz_state(nn.MaxPool2d(2), (1, 4, 4))


def test_report_reads_well():
    report = check_lipschitz_state(LTLinear(3, 2), (3,))
    text = str(report)
    assert text.startswith("check_lipschitz_state(LTLinear(") and ": OK" in text
    assert "Jacobian of forward" in text and "adjoint test" in text
    assert ScaleOp(2.0).norm_bound((1,)).dtype == torch.float64
