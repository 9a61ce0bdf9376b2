"""Randomized soundness suite: every network the accountant accepts gets a true bound; refusals are clear.

Random plain-torch and lipzoo networks are drawn from every module type and constructor option the
accountant accepts (seeded, deterministic). Each bound (``mode="global"`` and ``"pairwise"``, exact
and proved norm paths) is checked against

* the exact Jacobian at random points (``||J(x)|| <= L`` and ``||J_i(x) - J_j(x)|| <= L_ij``), and
* a gradient-ascent lower bound: ``|f(x) - f(x')| / ||x - x'||`` maximized over ``x, x'``.

The second half lists constructions that must be refused, each a reproduction of a false
certificate found in review (issue 8).
"""

from __future__ import annotations

import copy
import math
import random
import warnings

import pytest
import torch
from torch import nn

from lipzoo.bounds import build_structure, lipschitz_bound
from lipzoo.layers import (AvgPool2d, Flatten, LTConv2d, LTLinear, LTResidualConv, LTResidualLinear, Normalize,
                           list_activations)

# relative slack for float64 rounding in the Jacobian / attack side
SLACK = 1e-9

MONOTONE = ["relu", "tanh", "softplus", "leaky_relu", "elu", "sigmoid"]


def _activation_choices(rng: random.Random) -> list:
    """Every accepted torch activation, with random (also negative / unusual) constructor arguments."""
    return [
        lambda: nn.ReLU(), lambda: nn.ReLU6(), lambda: nn.Hardtanh(rng.uniform(-2, 0), rng.uniform(0.1, 2)),
        lambda: nn.LeakyReLU(rng.choice([0.01, -0.5, 2.5, -1.5])), lambda: nn.ELU(rng.choice([1.0, 2.0, -1.0, -0.5])),
        lambda: nn.CELU(rng.choice([0.5, 2.0])), lambda: nn.SELU(), lambda: nn.GELU(),
        lambda: nn.GELU(approximate="tanh"), lambda: nn.SiLU(), lambda: nn.Mish(), lambda: nn.Tanh(),
        lambda: nn.Sigmoid(), lambda: nn.Hardswish(), lambda: nn.Hardsigmoid(),
        lambda: nn.Softplus(beta=rng.choice([1.0, 2.0, -1.0]), threshold=40.0), lambda: nn.Softsign(),
        lambda: nn.Tanhshrink(), lambda: nn.LogSigmoid(), lambda: nn.Threshold(0.2, 0.2), lambda: nn.Softshrink(0.3),
        lambda: nn.Hardshrink(0.0), lambda: nn.RReLU(0.1, 0.4).eval(), lambda: nn.Identity(),
        lambda: nn.ELU(rng.uniform(-3, 3)), lambda: nn.LeakyReLU(rng.uniform(-3, 3)),
    ]


def _activation(rng: random.Random) -> nn.Module:
    return rng.choice(_activation_choices(rng))()


def _prelu(rng: random.Random, channels: int) -> nn.PReLU:
    m = nn.PReLU(rng.choice([1, channels]))
    with torch.no_grad():
        m.weight.copy_(torch.tensor([rng.uniform(-2.0, 2.5) for _ in range(m.weight.numel())]))
    return m


def _bn(cls, c: int, rng: random.Random) -> nn.Module:
    m = cls(c, affine=rng.random() < 0.7)
    with torch.no_grad():
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.1, 2)
        if m.weight is not None:
            m.weight.uniform_(-2, 2)
    return m.eval()


def _dense_block(rng: random.Random, d: int, kind: int) -> tuple[list[nn.Module], int]:
    """One random dense block of type ``kind`` on ``d`` features; returns the modules and the new width."""
    h = rng.choice([3, 5, 6])
    if kind == 0:
        return [nn.Linear(d, h, bias=rng.random() < 0.7), _activation(rng)], h
    if kind == 1:
        return [LTLinear(d, h, activation=rng.choice(list_activations()))], h
    if kind == 2:
        return [LTResidualLinear(d, h, activation=rng.choice(MONOTONE), rho=rng.uniform(0.5, 2.0))], d
    if kind == 3:
        return [nn.Linear(d, h), _bn(nn.BatchNorm1d, h, rng), _prelu(rng, h)], h
    if kind == 4:
        return [nn.Linear(d, h), nn.Dropout(0.3).eval(), _activation(rng)], h
    if kind == 5:
        lt = LTLinear(d, h, activation=rng.choice(["leaky_relu", "elu"]))
        # attributes changed after construction: the accountant must see them
        if lt.activation_name == "leaky_relu":
            lt.act.negative_slope = rng.choice([-2.0, 3.0])
        else:
            lt.act.alpha = rng.choice([-1.0, 2.0])
        return [lt], h
    return [nn.Identity(), nn.Linear(d, h), _activation(rng), nn.Sequential(nn.Linear(h, h), _activation(rng))], h


def random_mlp(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    d0 = rng.choice([3, 4, 5])
    layers: list[nn.Module] = [Normalize([0.1] * d0, [rng.uniform(0.3, 2.0)] * d0)] if rng.random() < 0.5 else []
    d = d0
    for i in range(rng.randint(1, 3)):
        block, d = _dense_block(rng, d, (seed + 3 * i) % 7)  # every kind appears over the seeds
        layers += block
    k = rng.choice([2, 3, 4])
    layers.append(LTLinear(d, k, activation=None) if rng.random() < 0.5 else nn.Linear(d, k))
    return nn.Sequential(*layers), (d0,)


def _conv_block(rng: random.Random, c: int, n: int, kind: int) -> tuple[list[nn.Module], int, int]:
    """One random block of type ``kind`` on ``(c, n, n)`` inputs; returns modules, channels and spatial size."""
    co = rng.choice([2, 3, 4])
    if kind == 0:  # nn.Conv2d with every option the accountant models
        k, s, d = rng.choice([1, 2, 3]), rng.choice([1, 2]), rng.choice([1, 2])
        p = rng.choice(["valid", 0, 1])
        g = rng.choice([g for g in (1, 2) if c % g == 0 and co % g == 0] or [1])
        mode = rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"]) if p == 1 else "zeros"
        conv = nn.Conv2d(c, co, k, stride=s, padding=p, dilation=d, groups=g, bias=rng.random() < 0.5,
                         padding_mode=mode)
        pp = 0 if p == "valid" else p
        n2 = (n + 2 * pp - d * (k - 1) - 1) // s + 1
        return [conv, _activation(rng)], co, n2
    if kind == 1:
        k, s, p = rng.choice([2, 3]), rng.choice([1, 2]), rng.choice([0, 1])
        act = rng.choice(list_activations())
        return [LTConv2d(c, co, k, stride=s, padding=p, activation=act)], co, (n + 2 * p - k) // s + 1
    if kind == 2:
        return [LTResidualConv(c, co, rng.choice([1, 3]), activation=rng.choice(MONOTONE),
                               rho=rng.uniform(0.5, 2.0))], c, n
    if kind == 3:  # pools: every accepted option
        which = (kind + n + c) % 4
        if which == 0:
            return [AvgPool2d(2)], c, n // 2
        if which == 1:
            return [nn.AvgPool2d(3, stride=1, padding=1)], c, n
        if which == 2:
            return [nn.AvgPool2d(2, stride=1, count_include_pad=False)], c, n - 1
        return [nn.AvgPool2d(3, stride=2, padding=1, divisor_override=rng.choice([2, 9, 12]))], c, (n - 1) // 2 + 1
    if kind == 4:
        return [nn.Conv2d(c, co, 3, padding=1), _bn(nn.BatchNorm2d, co, rng), _prelu(rng, co)], co, n
    if kind == 5:
        return [nn.Conv2d(c, co, 3, padding=1), nn.Dropout2d(0.2).eval(), _activation(rng)], co, n
    if kind == 6:  # attributes changed after construction (forward honours them)
        lt = LTConv2d(c, co, 3, padding=1, activation="relu")
        if (seed := rng.randrange(3)) == 0:
            lt.padding = (0, 0)
            return [lt], co, n - 2
        lt.padding_mode = ["replicate", "circular"][seed - 1]  # F.pad keeps the construction-time pads
        return [lt], co, n
    return [nn.Sequential(nn.Conv2d(c, co, 1), _activation(rng))], co, n


def random_cnn(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    rng = random.Random(1000 + seed)
    torch.manual_seed(1000 + seed)
    c0, n0 = rng.choice([1, 2]), rng.choice([6, 7])
    c, n = c0, n0
    layers: list[nn.Module] = [Normalize([0.5] * c0, [rng.uniform(0.2, 1.0) for _ in range(c0)])]
    for i in range(rng.randint(1, 3)):
        if n < 4:
            break
        block, c, n = _conv_block(rng, c, n, (seed + 3 * i) % 8)
        layers += block
    layers.append(Flatten() if rng.random() < 0.5 else nn.Flatten())
    d = c * n * n
    if rng.random() < 0.5:
        layers += [nn.Linear(d, 6), _activation(rng)]
        d = 6
    layers.append(nn.Linear(d, rng.choice([2, 3])))
    return nn.Sequential(*layers), (c0, n0, n0)


def _groupwise(rng: random.Random) -> tuple[nn.Module, int]:
    """A random group-wise 1-Lipschitz map and the factor it multiplies the channel count by."""
    from lipzoo.layers import CReLU, FullSort, GroupSort, MaxMin
    return rng.choice([(GroupSort(2), 1), (GroupSort(None), 1), (FullSort(), 1), (MaxMin(), 1), (CReLU(), 2)])


def random_groupwise_network(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """deel-torchlip / orthogonium style: convolutions with sorts, max-min, CReLU and l2-norm pooling between them
    (also next to LT residual, SLL and AOL layers), then dense layers with the same maps."""
    from lipzoo.layers import AOLConv2d, CReLU, L2NormPool2d, SLLConv2d
    rng = random.Random(5000 + seed)
    torch.manual_seed(5000 + seed)
    c, n = rng.choice([1, 2]), 8
    layers: list[nn.Module] = []
    for i in range(rng.randint(1, 2)):
        co = 2 * rng.choice([1, 2])
        act, mult = _groupwise(rng)
        layers += [nn.Conv2d(c, co, 3, padding=1), act]
        c = co * mult
        extra = rng.random()
        if extra < 0.25:
            layers.append(LTResidualConv(c, 2, 3, activation=rng.choice(MONOTONE), rho=rng.uniform(0.5, 2.0)))
        elif extra < 0.5:
            layers.append(SLLConv2d(c, rng.choice([2, 4]), 3, activation=rng.choice(["relu", "tanh"])))
        elif extra < 0.7:
            layers += [AOLConv2d(c, c, rng.choice([1, 3]), activation=None), _groupwise(rng)[0]]
            c *= 2 if isinstance(layers[-1], CReLU) else 1
        k = rng.choice([1, 2])
        stride = k + (rng.random() < 0.3)  # disjoint windows, sometimes with gaps
        if (n - k) // stride + 1 >= 2:
            layers.append(nn.LPPool2d(2, k, stride) if rng.random() < 0.5
                          else L2NormPool2d(k, stride, scale=rng.uniform(0.5, 2.0)))
            n = (n - k) // stride + 1
    layers.append(nn.Flatten())
    d = c * n * n
    for _ in range(rng.randint(0, 2)):
        act, mult = _groupwise(rng) if rng.random() < 0.7 else (_activation(rng), 1)
        h = rng.choice([4, 6])
        layers += [nn.Linear(d, h), act]
        d = h * mult
    layers.append(nn.Linear(d, rng.choice([2, 3, 4])))
    return nn.Sequential(*layers), (layers[0].in_channels, 8, 8)


def _jacobian(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    return torch.autograd.functional.jacobian(lambda z: net(z.reshape(1, *shape)).reshape(-1), x.reshape(-1))


def _attack(net: nn.Module, shape, directions: torch.Tensor, seed: int, steps: int = 25) -> torch.Tensor:
    """Largest ``|D (f(x) - f(x'))| / ||x - x'||`` found by gradient ascent, per row ``D`` of ``directions``."""
    gen = torch.Generator().manual_seed(seed)
    best = torch.zeros(directions.shape[0], dtype=torch.float64)
    for r in range(directions.shape[0]):
        x = (torch.randn(4, *shape, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
        dx = (torch.randn(4, *shape, generator=gen, dtype=torch.float64) * 0.3).requires_grad_(True)
        opt = torch.optim.Adam([x, dx], lr=0.05)
        for _ in range(steps):
            diff = (net(x + dx) - net(x)).flatten(1) @ directions[r]
            ratio = diff.abs() / dx.flatten(1).norm(dim=1).clamp_min(1e-12)
            best[r] = max(float(best[r]), float(ratio.detach().max()))
            opt.zero_grad()
            (-ratio.sum()).backward()
            opt.step()
    return best


def _check_network(net: nn.Module, shape, seed: int, max_dense: int) -> None:
    net = net.eval()
    g = lipschitz_bound(net, shape, mode="global", norm="auto", max_dense=max_dense)
    p = lipschitz_bound(net, shape, mode="pairwise", norm="auto", max_dense=max_dense)
    assert g.guaranteed and p.guaranteed
    L, Lp = float(g.value), p.value.to(torch.float64)
    ref = copy.deepcopy(net).double()
    gen = torch.Generator().manual_seed(seed)
    k = Lp.shape[0]
    for i in range(6):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64) * (0.5, 1.0, 3.0)[i % 3]
        J = _jacobian(ref, x)
        assert float(torch.linalg.matrix_norm(J, ord=2)) <= L * (1 + SLACK), (i, net)
        diff = (J[:, None, :] - J[None, :, :]).norm(dim=-1)  # (K, K): ||J_i - J_j||
        assert bool((diff <= Lp * (1 + SLACK) + 1e-12).all()), (diff, Lp, net)
    # gradient-ascent lower bounds: one global direction set (each class) and the pairs
    eye = torch.eye(k, dtype=torch.float64)
    rows = torch.cat([eye, (eye[:, None] - eye[None]).reshape(k * k, k)[[a * k + b for a in range(k)
                                                                          for b in range(a + 1, k)]]])
    lower = _attack(ref, shape, rows, seed)
    assert bool((lower[:k] <= L * (1 + SLACK)).all()), (lower, L, net)
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    for (a, b), lo in zip(pairs, lower[k:]):
        assert float(lo) <= float(Lp[a, b]) * (1 + SLACK), (a, b, float(lo), float(Lp[a, b]), net)


@pytest.mark.parametrize("seed", range(12))
def test_random_mlps_get_true_bounds(seed):
    net, shape = random_mlp(seed)
    _check_network(net, shape, seed, max_dense=4096 if seed % 2 else 2)


@pytest.mark.parametrize("seed", range(10))
def test_random_cnns_get_true_bounds(seed):
    net, shape = random_cnn(seed)
    _check_network(net, shape, seed, max_dense=4096 if seed % 2 else 8)


def test_negative_alpha_elu_gets_a_true_bound():
    # Issue 8: ELU(alpha < 0) was declared [0, max(1, alpha)] although its slope alpha e^x < 0 for x < 0.
    # z_0 - z_1 = phi(x) + phi(-x) has slope 1 + e^-x -> 2 at 0+; with slopes [0, 1] LipLT said 1.
    net = nn.Sequential(nn.Linear(1, 2, bias=False), nn.ELU(alpha=-1.0), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    L01 = float(lipschitz_bound(net, (1,), mode="pairwise").value[0, 1])
    assert L01 >= 2.0
    x = torch.tensor([[0.0]])
    z, z2 = net(x), net(x + 0.3)
    # a point 0.3 away moves z_0 - z_1 by more than 0.3 (so radius margin / 1.0 was false)
    with torch.no_grad():
        moved = float((z2[0, 0] - z2[0, 1]) - (z[0, 0] - z[0, 1]))
    assert moved > 0.3 * 1.5
    _check_network(net, (1,), 0, max_dense=4096)


@pytest.mark.parametrize("i", range(len(_activation_choices(random.Random(0)))))
def test_every_accepted_activation_inside_a_network(i):
    rng = random.Random(i)
    torch.manual_seed(i)
    act = _activation_choices(rng)[i]()
    net = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 4), _activation_choices(rng)[i](), nn.Linear(4, 3))
    _check_network(net, (3,), i, max_dense=4096)


@pytest.mark.parametrize("i", range(len(_activation_choices(random.Random(0)))))
def test_cancellation_probe_reaches_every_slope_extreme(i):
    # z_0 - z_1 = phi(x + u) + phi(v - x) has slope phi'(x + u) - phi'(v - x); with u at the largest and v at
    # the smallest slope of phi (found here on a grid, independently of lipzoo), it reaches beta - alpha at
    # x = 0, while LipLT gives (beta - alpha) exactly: a declared range narrower than the true one fails.
    act = _activation_choices(random.Random(i))[i]()
    t = torch.linspace(-8, 8, 16001, dtype=torch.float64)
    with torch.no_grad():
        q = (act(t[1:]) - act(t[:-1])) / (t[1:] - t[:-1])
    u, v = float(t[int(q.argmax())]), float(t[int(q.argmin())])
    net = nn.Sequential(nn.Linear(1, 2), act, nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[0].bias.copy_(torch.tensor([u, v]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    L01 = float(lipschitz_bound(net, (1,), mode="pairwise").value[0, 1])
    x = torch.linspace(-0.5, 0.5, 2001, dtype=torch.float64)[:, None]
    ref = copy.deepcopy(net).double()
    with torch.no_grad():
        z = ref(x)
        d = z[:, 0] - z[:, 1]
        steepest = float(((d[1:] - d[:-1]) / (x[1:, 0] - x[:-1, 0])).abs().max())
    assert steepest <= L01 * (1 + SLACK), (act, steepest, L01)


# -- constructions that must be refused ---------------------------------------------------------------------------

class _ResidualSequential(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


class _DoubledConv(nn.Conv2d):
    def forward(self, x):
        return 2 * super().forward(x)


class _DoubledLTConv(LTConv2d):
    def forward(self, x):
        return 2 * super().forward(x)


class _DoubledLinear(nn.Linear):
    def _conv_forward(self, x):  # harmless name, but __call__ below changes the output
        return x

    def __call__(self, x):
        return 2 * super().__call__(x)


class _ScaledReLU(nn.ReLU):
    def forward(self, x):
        return 5 * super().forward(x)


def _hooked(factor: float = 100.0) -> nn.Module:
    lin = nn.Linear(3, 3)
    lin.register_forward_hook(lambda m, i, o: o * factor)
    return nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 2))


def _pre_hooked() -> nn.Module:
    lt = LTLinear(3, 3)
    lt.act.register_forward_pre_hook(lambda m, i: (i[0] * 100,))
    return nn.Sequential(lt, nn.Linear(3, 2))


def test_padding_mode_changed_after_construction_gets_a_true_bound():
    # Issue 8: replicate / circular padding set after construction; forward honours it, the bound ignored
    # it (true 5.0, bound 2.0). It is now modelled (pad, then an unpadded convolution).
    for mode in ("replicate", "circular", "reflect"):
        conv = LTConv2d(1, 1, 3, padding=1, activation=None, bias=False)
        with torch.no_grad():
            conv.weight.fill_(0.0)
            conv.weight[0, 0, 0, 0] = 1.0
            conv.weight[0, 0, 2, 2] = 1.0
        conv.padding_mode = mode
        L = float(lipschitz_bound(nn.Sequential(conv), (1, 5, 5), mode="global").value)
        J = _jacobian(copy.deepcopy(conv).double(), torch.zeros(1, 5, 5, dtype=torch.float64))
        assert float(torch.linalg.matrix_norm(J, ord=2)) <= L * (1 + SLACK)
        if mode == "replicate":  # border pixels are copied: the zero-padded operator's norm was not a bound
            zero = copy.deepcopy(conv).double()
            zero.padding_mode = "zeros"
            J0 = _jacobian(zero, torch.zeros(1, 5, 5, dtype=torch.float64))
            assert float(torch.linalg.matrix_norm(J, ord=2)) > 1.1 * float(torch.linalg.matrix_norm(J0, ord=2))
        _check_network(nn.Sequential(conv, nn.Flatten(), nn.Linear(25, 2)), (1, 5, 5), 0, max_dense=8)


def _mutated(module: nn.Module, **attrs) -> nn.Module:
    for k, v in attrs.items():
        setattr(module, k, v)
    return module


def _instance_forward() -> nn.Module:
    lin = nn.Linear(3, 3)
    lin.forward = lambda x: 100 * nn.functional.linear(x, lin.weight, lin.bias)
    return nn.Sequential(lin)


def _old_weight_norm() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of the parametrization
        return nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(3, 3)))


def _spectral_norm_train() -> nn.Module:
    return nn.Sequential(torch.nn.utils.parametrizations.spectral_norm(nn.Linear(3, 3)), nn.ReLU()).train()


@pytest.mark.parametrize("seed", range(16))
def test_random_groupwise_networks_get_true_bounds(seed):
    net, shape = random_groupwise_network(seed)
    _check_network(net, shape, seed, max_dense=4096 if seed % 2 else 8)


def _ScaledSort() -> nn.Module:
    from lipzoo.layers import GroupSort

    class _ScaledSort(GroupSort):
        def forward(self, x):
            return 3 * super().forward(x)
    return _ScaledSort(2)


def _bn_train() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.ReLU()).train()


REFUSED = {
    "softplus threshold=1 (jump 0.31)": (lambda: nn.Sequential(nn.Linear(3, 3), nn.Softplus(threshold=1)), (3,),
                                         r"jumps by 0.313"),
    "softplus default threshold (jump 2e-9)": (lambda: nn.Sequential(nn.Linear(3, 3), nn.Softplus()), (3,),
                                               r"jumps by 2.06e-09"),
    "softplus beta=0": (lambda: nn.Sequential(nn.Softplus(beta=0.0, threshold=40.0)), (3,), "beta=0"),
    "celu alpha<0": (lambda: nn.Sequential(nn.CELU(-1.0)), (3,), "unbounded"),
    "threshold with jump": (lambda: nn.Sequential(nn.Threshold(0.1, 20.0)), (3,), "jumps by 19.9"),
    "hardshrink": (lambda: nn.Sequential(nn.Hardshrink(0.5)), (3,), "jumps by 0.5"),
    "softshrink lambd<0": (lambda: nn.Sequential(_mutated(nn.Softshrink(0.5), lambd=-0.5)), (3,), "jumps"),
    "hardtanh min>max": (lambda: nn.Sequential(_mutated(nn.Hardtanh(), min_val=2.0, max_val=1.0)), (3,),
                         "min_val=2.0 > max_val=1.0"),
    "leaky relu nan slope": (lambda: nn.Sequential(_mutated(nn.LeakyReLU(), negative_slope=math.nan)), (3,),
                             "not finite"),
    "gelu unknown approximation": (lambda: nn.Sequential(_mutated(nn.GELU(), approximate="erf")), (3,),
                                   "neither 'none' nor 'tanh'"),
    "rrelu in training mode": (lambda: nn.Sequential(nn.RReLU()).train(), (3,), "random slopes"),
    "sequential subclass with its own forward": (lambda: nn.Sequential(_ResidualSequential(nn.Linear(3, 3), nn.ReLU())),
                                                 (3,), r"_ResidualSequential subclasses .*Sequential but redefines"),
    "forward hook x100": (_hooked, (3,), "forward hook"),
    "forward pre-hook on an activation submodule": (_pre_hooked, (3,),
                                                    r"submodule '(0\.)?act' \(ReLU\) has forward pre"),
    "nn.Conv2d subclass overriding forward": (lambda: nn.Sequential(_DoubledConv(1, 2, 3)), (1, 5, 5),
                                              "_DoubledConv subclasses .*Conv2d but redefines"),
    "LTConv2d subclass overriding forward": (lambda: nn.Sequential(_DoubledLTConv(1, 2, 3)), (1, 5, 5),
                                             "_DoubledLTConv redefines .* inherits lipschitz_state"),
    "nn.Linear subclass overriding __call__": (lambda: nn.Sequential(_DoubledLinear(3, 3)), (3,),
                                               r"redefines \['__call__', '_conv_forward'\]"),
    "activation subclass overriding forward": (lambda: nn.Sequential(_ScaledReLU()), (3,),
                                               "_ScaledReLU subclasses .*ReLU"),
    "forward assigned on an instance": (_instance_forward, (3,), r"\['forward'\] replaced on the instance"),
    "LTConv2d padding_mode unknown": (lambda: nn.Sequential(_mutated(LTConv2d(1, 2, 3), padding_mode="mirror")),
                                      (1, 5, 5), "padding_mode='mirror' is not one torch knows"),
    "nn.Conv2d padding='same' with an even kernel": (lambda: nn.Sequential(nn.Conv2d(1, 2, 4, padding="same")),
                                                     (1, 5, 5), "pads unevenly"),
    "nn.AvgPool2d ceil_mode": (lambda: nn.Sequential(nn.AvgPool2d(2, ceil_mode=True)), (1, 5, 5), "ceil_mode"),
    "nn.AvgPool2d count_include_pad=False with padding": (
        lambda: nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False)), (1, 5, 5), "count_include_pad=False"),
    "lipzoo AvgPool2d ceil_mode set later": (lambda: nn.Sequential(_mutated(AvgPool2d(2), ceil_mode=True)), (1, 5, 5),
                                             "ceil_mode"),
    "lipzoo Flatten start_dim set later": (lambda: nn.Sequential(_mutated(Flatten(), start_dim=2)), (2, 3, 3),
                                           "only Flatten"),
    "nn.Flatten(0)": (lambda: nn.Sequential(nn.Flatten(0)), (3,), "only Flatten"),
    "Normalize std set to 0": (lambda: nn.Sequential(_mutated(Normalize([0.5], [1.0]), std=torch.zeros(1))), (1, 3, 3),
                               "std="),
    "BatchNorm in training mode": (_bn_train, (3,), "call model.eval"),
    "spectral_norm parametrization in training mode": (_spectral_norm_train, (3,),
                                                        "spectral_norm parametrization in training mode"),
    "old-style weight_norm (a forward pre-hook)": (_old_weight_norm, (3,), "forward pre hook"),
    "BatchNorm without running stats": (
        lambda: nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)).eval(), (3,), "batch statistics"),
    "Dropout in training mode": (lambda: nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train(), (3,),
                                 "Dropout in training mode"),
    "LTResidualConv padding set out of range": (lambda: nn.Sequential(_mutated(LTResidualConv(1, 2, 3), padding=3)),
                                                (1, 5, 5), r"padding=3 must be an int in \[0, kernel_size\)"),
    "MaxPool2d": (lambda: nn.Sequential(nn.MaxPool2d(2)), (1, 4, 4), "MaxPool2d has no declared Lipschitz"),
    "Softmax": (lambda: nn.Sequential(nn.Linear(3, 3), nn.Softmax(-1)), (3,), "Softmax has no declared"),
    "ConvTranspose2d": (lambda: nn.Sequential(nn.ConvTranspose2d(1, 1, 3)), (1, 4, 4), "ConvTranspose2d has no"),
    "LPPool2d with overlapping windows": (lambda: nn.Sequential(nn.LPPool2d(2, 3, stride=1)), (1, 5, 5), "overlapping"),
    "LPPool2d with p = 1": (lambda: nn.Sequential(nn.LPPool2d(1, 2)), (1, 4, 4), "norm_type=2"),
    "GroupSort subclass overriding forward": (lambda: nn.Sequential(_ScaledSort()), (4,),
                                              "_ScaledSort redefines .* inherits lipschitz_state"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_constructions_name_module_and_reason(name):
    make, shape, reason = REFUSED[name]
    net = make()
    with pytest.raises(TypeError, match=r"Cannot bound the Lipschitz constant of") as err:
        build_structure(net, shape)
    assert err.match(reason), str(err.value)


# lipschitz_bound deep-copies the model first (keeping its train/eval mode); torch cannot deep-copy an
# old-style weight_norm module at all.
@pytest.mark.parametrize("name", [n for n in REFUSED if "weight_norm" not in n])
def test_lipschitz_bound_refuses_too(name):
    make, shape, reason = REFUSED[name]
    with pytest.raises(TypeError, match=reason):
        lipschitz_bound(make(), shape, mode="global")


def test_lipschitz_bound_refuses_train_mode_batch_norm():
    with pytest.raises(TypeError, match="call model.eval"):
        lipschitz_bound(_bn_train(), (3,), mode="global")


def test_global_hooks_are_refused():
    handles = [torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: o * 100)]
    try:
        with pytest.raises(TypeError, match="global forward hook"):
            build_structure(nn.Sequential(nn.Linear(3, 2)), (3,))
    finally:
        handles.pop().remove()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, i: None)
    try:
        with pytest.raises(TypeError, match="global forward pre-hook"):
            build_structure(nn.Sequential(nn.Linear(3, 2)), (3,))
    finally:
        handle.remove()
    build_structure(nn.Sequential(nn.Linear(3, 2)), (3,))  # accepted again once removed


def test_parametrized_layers_are_bounded_from_their_parametrized_weight():
    torch.manual_seed(0)
    net = nn.Sequential(torch.nn.utils.parametrizations.spectral_norm(nn.Linear(4, 5)), nn.Tanh(),
                        torch.nn.utils.parametrizations.weight_norm(nn.Linear(5, 3)))
    for _ in range(3):
        net(torch.randn(2, 4))  # power-iteration steps in training mode
    _check_network(net.eval(), (4,), 0, max_dense=4096)


def test_train_mode_is_accepted_where_it_changes_nothing():
    net = nn.Sequential(Normalize([0.5], [0.5]), LTConv2d(1, 2, 3), LTResidualConv(2, 3), nn.Dropout(0.0),
                        Flatten(), LTLinear(18, 3, activation=None)).train()
    assert build_structure(net, (1, 5, 5)).depth == 2
