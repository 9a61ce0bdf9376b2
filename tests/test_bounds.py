"""The LipLT accountant against dense eq. (16), adversarial lower bounds and the paper's inequalities."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipzoo.bounds import build_structure, lipschitz_bound, lipschitz_bounds
from lipzoo.bounds.estimator import LipLTEstimator
from lipzoo.bounds import sweep
from lipzoo.bounds.sweep import adjoint_sweep, forward_sweep
from lipzoo.layers import (AvgPool2d, Flatten, LTConv2d, LTLinear, LTResidualConv, LTResidualLinear, Normalize)
from lipzoo.layers.operators import compose

# LipLT from the matrix-free accountant vs eq. (16) on explicit dense matrices (float64).
DENSE_RTOL = 1e-4
# Relative slack for float32 vs float64 bounds.
FP32_RTOL = 1e-4


# --- small networks ------------------------------------------------------------------------------

def mlp():
    return nn.Sequential(Normalize([0.5] * 6, [0.3] * 6), LTLinear(6, 8), LTLinear(8, 7, activation="tanh"),
                         LTLinear(7, 5, activation=None))


def cnn():
    return nn.Sequential(Normalize([0.4, 0.5], [0.2, 0.3]), LTConv2d(2, 3, 3, 1, 1), LTConv2d(3, 4, 4, 2, 1),
                         LTConv2d(4, 3, 3, 2, 0, activation="leaky_relu"), Flatten(), LTLinear(3 * 1 * 1, 6),
                         LTLinear(6, 4, activation=None))


def resnet():
    return nn.Sequential(Normalize([0.5], [0.25]), LTConv2d(1, 3, 3, 2, 1), LTResidualConv(3, 4, 3, rho=1.2),
                         AvgPool2d(2), Flatten(), LTLinear(3 * 2 * 2, 6), LTResidualLinear(6, 5, activation="tanh"),
                         LTLinear(6, 5, activation=None))


def torch_cnn():
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
                      nn.LeakyReLU(0.1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(0.5, 2)
    m[1].weight.data.uniform_(0.5, 2)
    return m.eval()


NETS = {"mlp": (mlp, (6,)), "cnn": (cnn, (2, 7, 7)), "resnet": (resnet, (1, 7, 9)), "torch": (torch_cnn, (2, 7, 7))}


def _net(name, seed=0):
    torch.manual_seed(seed)
    factory, shape = NETS[name]
    return factory().double(), shape


# --- independent dense eq. (16) ------------------------------------------------------------------

def _jac(f, shape):
    x = torch.zeros(1, *shape, dtype=torch.float64)
    return torch.autograd.functional.jacobian(lambda z: f(z.reshape(1, *shape)).reshape(-1), x.reshape(-1))


def _dense_layers(model, shape):
    """(W, H, G, alpha, beta) dense per non-linear layer + the output matrix, built from torch ops only."""
    layers, pending, cur = [], None, shape

    def push_linear(mat, out_shape):
        nonlocal pending, cur
        pending = mat if pending is None else mat @ pending
        cur = out_shape

    for m in model:
        if isinstance(m, Normalize):
            scale = (1 / m.std).repeat_interleave(int(torch.tensor(cur).prod()) // m.std.numel())
            push_linear(torch.diag(scale), cur)
        elif isinstance(m, (Flatten, nn.Flatten)):
            push_linear(torch.eye(int(torch.tensor(cur).prod()), dtype=torch.float64), (int(torch.tensor(cur).prod()),))
        elif isinstance(m, (AvgPool2d, nn.AvgPool2d)):
            out = m(torch.zeros(1, *cur, dtype=torch.float64)).shape[1:]
            push_linear(_jac(lambda z: F.avg_pool2d(z, m.kernel_size, m.stride, m.padding), cur), tuple(out))
        elif isinstance(m, nn.BatchNorm2d):
            s = (m.weight / (m.running_var + m.eps).sqrt()).repeat_interleave(cur[1] * cur[2])
            push_linear(torch.diag(s.detach()), cur)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            if isinstance(m, nn.Conv2d):
                f = lambda z, m=m: F.conv2d(z, m.weight, None, m.stride, m.padding)  # noqa: E731
            else:
                f = lambda z, m=m: F.linear(z, m.weight)  # noqa: E731
            out = f(torch.zeros(1, *cur, dtype=torch.float64)).shape[1:]
            W = _jac(f, cur).detach()
            act = getattr(m, "act", None)
            if act is None or isinstance(act, nn.Identity):
                push_linear(W, tuple(out))
                continue
            a, b = m.lipschitz_state().alpha, m.lipschitz_state().beta
            W = W if pending is None else W @ pending
            layers.append((W, None, None, a, b))
            pending, cur = None, tuple(out)
        elif isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.Tanh)):
            a, b = {nn.ReLU: (0, 1), nn.Tanh: (0, 1)}.get(type(m), (m.negative_slope, 1.0) if isinstance(m, nn.LeakyReLU) else None)
            n = int(torch.tensor(cur).prod())
            W = pending if pending is not None else torch.eye(n, dtype=torch.float64)
            layers.append((W, None, None, float(a), float(b)))
            pending = None
        elif isinstance(m, (LTResidualConv, LTResidualLinear)):
            p = m.effective_parameters()
            if isinstance(m, LTResidualConv):
                f = lambda z, w=p["weight"], pad=m.padding: F.conv2d(z, w, None, 1, pad)  # noqa: E731
            else:
                f = lambda z, w=p["weight"]: F.linear(z, w)  # noqa: E731
            Wr = _jac(f, cur).detach()
            n_hidden = Wr.shape[0]
            scale = p["scale"].repeat_interleave(n_hidden // p["scale"].numel())
            G = -Wr.T @ torch.diag(scale)
            n = Wr.shape[1]
            H = p["sqrt_rho"] * torch.eye(n, dtype=torch.float64)
            if pending is not None:
                Wr, H = Wr @ pending, H @ pending
            a, b = m.lipschitz_state().alpha, m.lipschitz_state().beta
            layers.append((Wr, H, G, a, b))
            pending = None
        else:
            raise AssertionError(f"test helper does not know {m}")
    n_out = pending.shape[0] if pending is not None else None
    return layers, pending if pending is not None else torch.eye(n_out, dtype=torch.float64)


def _dense_liplt(layers, W_out):
    """Eq. (16) with dense matrices and torch.linalg.matrix_norm(ord=2)."""
    nrm = lambda A: torch.linalg.matrix_norm(A, ord=2) if A.shape[0] > 1 else A.norm()  # noqa: E731
    Hhat = [(H if H is not None else 0) + (a + b) / 2 * (G if G is not None else torch.eye(W.shape[0], dtype=W.dtype)) @ W
            for W, H, G, a, b in layers]

    def prod(t, j):  # Hhat_{t-1} ... Hhat_{j+1}
        n = layers[j][2].shape[0] if (j >= 0 and layers[j][2] is not None) else (
            layers[j][0].shape[0] if j >= 0 else layers[0][0].shape[1])
        P = torch.eye(n, dtype=torch.float64)
        for s in range(j + 1, t):
            P = Hhat[s] @ P
        return P

    def S(Wt, t, j):
        M = Wt @ prod(t, j)
        if j >= 0:
            W, H, G, a, b = layers[j]
            M = M @ (G if G is not None else torch.eye(W.shape[0], dtype=W.dtype))
        return M

    m = []
    for t, (Wt, *_rest) in enumerate(layers):
        mt = nrm(S(Wt, t, -1))
        for j in range(t):
            mt = mt + (layers[j][4] - layers[j][3]) / 2 * nrm(S(Wt, t, j)) * m[j]
        m.append(mt)

    def final(Wl):
        out = nrm(S(Wl, len(layers), -1))
        for j in range(len(layers)):
            out = out + (layers[j][4] - layers[j][3]) / 2 * nrm(S(Wl, len(layers), j)) * m[j]
        return out

    K = W_out.shape[0]
    pair = torch.zeros(K, K, dtype=torch.float64)
    for i, j in itertools.combinations(range(K), 2):
        pair[i, j] = pair[j, i] = final((W_out[i] - W_out[j])[None])
    per_class = torch.stack([final(W_out[i][None]) for i in range(K)])
    return {"global": final(W_out), "per_class": per_class, "pairwise": pair}


def _dense_naive(layers, W_out):
    total = 1.0
    for W, H, G, a, b in layers:
        g = torch.linalg.matrix_norm(G, ord=2) if G is not None else 1.0
        h = torch.linalg.matrix_norm(H, ord=2) if H is not None else 0.0
        total = total * (h + max(abs(a), abs(b)) * g * torch.linalg.matrix_norm(W, ord=2))
    return total * torch.linalg.matrix_norm(W_out, ord=2)


@pytest.mark.parametrize("name", list(NETS))
def test_liplt_equals_dense_eq16(name):
    net, shape = _net(name)
    layers, W_out = _dense_layers(net, shape)
    ref = _dense_liplt(layers, W_out)
    got = lipschitz_bounds(net, shape, method="liplt", norm="exact")
    for mode in ("global", "per_class", "pairwise"):
        assert got[mode].guarantee == "exact" and got[mode].guaranteed
        assert torch.allclose(got[mode].value, ref[mode], rtol=DENSE_RTOL, atol=1e-12), mode
    naive = lipschitz_bound(net, shape, method="naive", mode="global", norm="exact")
    assert torch.allclose(naive.value, _dense_naive(layers, W_out), rtol=DENSE_RTOL)


# --- soundness against gradient ascent -------------------------------------------------------------

def _max_gradient_norms(net, shape, K, starts=24, steps=40):
    """Largest ||grad_x (z_i - z_j)|| found by gradient ascent on it from many random starts."""
    best = torch.zeros(K, K, dtype=torch.float64)
    for i, j in itertools.combinations(range(K), 2):
        x = torch.rand(starts, *shape, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([x], lr=0.05)
        for _ in range(steps):
            z = net(x)
            g = torch.autograd.grad((z[:, i] - z[:, j]).sum(), x, create_graph=True)[0]
            gn = g.flatten(1).norm(dim=1)
            opt.zero_grad()
            (-gn.sum()).backward()
            opt.step()
        z = net(x)
        g = torch.autograd.grad((z[:, i] - z[:, j]).sum(), x)[0]
        best[i, j] = best[j, i] = g.flatten(1).norm(dim=1).max().detach()
    return best


def _briefly_train(net, shape, K, steps=30):
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    x = torch.rand(64, *shape, dtype=torch.float64)
    y = torch.randint(0, K, (64,))
    for _ in range(steps):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.mark.parametrize("name", ["cnn", "resnet", "torch"])
@pytest.mark.parametrize("trained", [False, True])
def test_bound_dominates_gradient_ascent(name, trained):
    net, shape = _net(name, seed=4)
    K = net(torch.zeros(1, *shape, dtype=torch.float64)).shape[1]
    if trained:
        net = _briefly_train(net.train(), shape, K)
    lower = _max_gradient_norms(net, shape, K)
    for norm in ("auto", "exact"):
        upper = lipschitz_bound(net, shape, norm=norm, max_dense=16).value
        assert (lower <= upper * (1 + 1e-9)).all(), (norm, (lower / upper).max())
    assert lower.max() > 0


def test_finite_differences_respect_pairwise_bound():
    net, shape = _net("resnet", seed=5)
    L = lipschitz_bound(net, shape).value
    x = torch.rand(256, *shape, dtype=torch.float64)
    x2 = x + 0.05 * torch.randn_like(x)
    dz = net(x) - net(x2)
    dist = (x - x2).flatten(1).norm(dim=1)
    for i, j in itertools.combinations(range(L.shape[0]), 2):
        assert ((dz[:, i] - dz[:, j]).abs() <= L[i, j] * dist * (1 + 1e-9)).all()


# --- the paper's inequalities ----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(NETS))
def test_liplt_below_naive_and_pairwise_below_crude_bounds(name):
    net, shape = _net(name, seed=6)
    lt = lipschitz_bounds(net, shape, method="liplt", norm="exact")
    nv = lipschitz_bounds(net, shape, method="naive", norm="exact")
    for mode in ("global", "per_class", "pairwise"):
        assert (lt[mode].value <= nv[mode].value * (1 + 1e-9)).all(), mode
    pair, pc, glob = lt["pairwise"].value, lt["per_class"].value, lt["global"].value
    off = ~torch.eye(pair.shape[0], dtype=torch.bool)
    assert (pair[off] <= (pc[:, None] + pc[None, :])[off] * (1 + 1e-9)).all()
    assert (pair[off] <= 2 ** 0.5 * glob * (1 + 1e-9)).all()
    assert torch.equal(pair.diagonal(), torch.zeros(pair.shape[0], dtype=pair.dtype))


def test_many_classes_pairwise_is_direct():
    torch.manual_seed(7)
    net = nn.Sequential(LTLinear(5, 16), LTLinear(16, 150, activation=None)).double()
    b = lipschitz_bound(net, (5,), norm="exact")
    assert b.value.shape == (150, 150)
    layers, W_out = _dense_layers(net, (5,))
    i, j = 3, 120
    row = (W_out[i] - W_out[j])[None]
    W0 = layers[0][0]
    ref = torch.linalg.matrix_norm(row @ (0.5 * W0), ord=2) + 0.5 * row.norm() * torch.linalg.matrix_norm(W0, ord=2)
    assert torch.isclose(b.value[i, j], ref, rtol=DENSE_RTOL)


# --- guarantees, paths, dtypes -----------------------------------------------------------------------

def test_guarantee_flags_per_norm_path():
    net, shape = _net("cnn")
    assert lipschitz_bound(net, shape, norm="exact").guarantee == "exact"
    proved = lipschitz_bound(net, shape, norm="auto", max_dense=8)
    assert proved.guaranteed and proved.guarantee == "proved"
    est = lipschitz_bound(net, shape, norm="power", n_iter=300)
    assert not est.guaranteed and est.guarantee == "estimate"
    exact = lipschitz_bound(net, shape, norm="exact").value
    assert (proved.value >= exact * (1 - 1e-12)).all()
    assert torch.allclose(est.value, exact, rtol=1e-3)  # power iteration converges on small operators


def test_float32_matches_float64():
    net, shape = _net("resnet")
    b64 = lipschitz_bound(net, shape, norm="exact", dtype=torch.float64).value
    b32 = lipschitz_bound(net.float(), shape, norm="exact", dtype=torch.float32).value
    assert b32.dtype == torch.float32
    assert torch.allclose(b32.double(), b64, rtol=FP32_RTOL, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    net, shape = _net("resnet")
    cpu = lipschitz_bound(net, shape, norm="exact").value
    gpu = lipschitz_bound(net, shape, norm="exact", device="cuda").value
    assert torch.allclose(cpu, gpu, rtol=1e-8)


def test_batched_sweeps_equal_per_operator_chains_and_are_adjoint():
    net, shape = _net("resnet")
    s = build_structure(net, shape)
    keys = [(t, j) for t in range(s.depth + 1) for j in range(-1, t)]
    v = {k: torch.randn(2, *s.space_shape(*k)[0], dtype=torch.float64) for k in keys}
    out = forward_sweep(s, v)
    for k in keys:
        assert torch.allclose(out[k], compose(*s.chain(*k)).forward(v[k]))
    u = {k: torch.randn_like(o) for k, o in out.items()}
    back = adjoint_sweep(s, u)
    for k in keys:
        assert torch.isclose((out[k] * u[k]).sum(), (v[k] * back[k]).sum(), rtol=1e-10)


def test_batched_sweep_calls_each_layer_once(monkeypatch):
    net, shape = _net("cnn")
    s = build_structure(net, shape)
    calls = []
    weights = {id(blk.W) for blk in s.blocks}
    original = sweep.forward
    def counted(op, x):
        if id(op) in weights:
            calls.append(1)
        return original(op, x)

    monkeypatch.setattr(sweep, "forward", counted)
    keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
    forward_sweep(s, {k: torch.randn(1, *s.space_shape(*k)[0], dtype=torch.float64) for k in keys})
    assert len(calls) == s.depth  # O(L) calls for O(L^2) operators


# --- the training estimator ---------------------------------------------------------------------------

def test_estimator_converges_to_power_bound_and_has_gradients():
    net, shape = _net("resnet")
    est = LipLTEstimator(net, shape, n_iter=5)
    for _ in range(40):
        val = est()
    ref = lipschitz_bound(net, shape, norm="exact").value
    assert torch.allclose(val.detach(), ref, rtol=1e-3)
    val.sum().backward()
    # biases do not enter the bound; every other parameter (weights, q, rho) does
    grads = [p.grad for n, p in net.named_parameters() if not n.endswith("bias")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_estimator_state_dict_resumes_exactly():
    net, shape = _net("cnn")
    a = LipLTEstimator(net, shape, n_iter=3, seed=1)
    a()
    b = LipLTEstimator(net, shape, n_iter=3, seed=2)
    assert any("v_" in k for k in a.state_dict())
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(), b())


# --- errors ----------------------------------------------------------------------------------------

def test_unsupported_module_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="MaxPool2d.*Supported"):
        lipschitz_bound(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)), (1, 6, 6))
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    bn.train()
    with pytest.raises(TypeError, match="eval mode"):
        build_structure(bn, (1, 6, 6))
    with pytest.raises(TypeError, match="pads unevenly"):
        build_structure(nn.Sequential(nn.Conv2d(1, 2, 4, padding="same")), (1, 6, 6))
    with pytest.raises(TypeError, match="Dropout in training mode"):
        build_structure(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)), (3,))
    with pytest.raises(TypeError, match="only Flatten"):
        build_structure(nn.Sequential(nn.Flatten(0)), (3,))
    with pytest.raises(TypeError, match="ceil_mode"):
        build_structure(nn.Sequential(nn.AvgPool2d(2, ceil_mode=True)), (1, 4, 4))
    with pytest.raises(TypeError, match="no layers"):
        build_structure(nn.Sequential(), (3,))


def test_bad_arguments_raise_value_errors():
    net, shape = _net("mlp")
    with pytest.raises(ValueError, match="method must be one of"):
        lipschitz_bound(net, shape, method="sdp")
    with pytest.raises(ValueError, match="mode must be one of"):
        lipschitz_bound(net, shape, mode="pair")
    with pytest.raises(ValueError, match="norm must be one of"):
        lipschitz_bound(net, shape, norm="svd")
    with pytest.raises(ValueError, match="input_shape must be"):
        lipschitz_bound(net, 6)
    with pytest.raises(ValueError, match="positive sizes"):
        lipschitz_bound(net, (0,))
    with pytest.raises(ValueError, match="cannot take inputs of shape"):
        lipschitz_bound(nn.Sequential(LTLinear(4, 3)), (5,))
    with pytest.raises(ValueError, match="need a model with \\(B, K\\) outputs"):
        lipschitz_bound(nn.Sequential(LTConv2d(1, 2, 3)), (1, 5, 5), mode="pairwise")
    with pytest.raises(ValueError, match="n_iter must be"):
        LipLTEstimator(net, shape, n_iter=-1)


@pytest.mark.parametrize("name", ["resnet", "mlp"])
def test_lt_sdp_theorem2_per_layer(name):
    net, shape = _net(name, seed=9)
    sn = lipschitz_bound(net, shape, method="lt_sdp", sdp_t="sn", mode="global", norm="exact").value
    best = lipschitz_bound(net, shape, method="lt_sdp", sdp_t="best", mode="global", norm="exact").value
    naive = lipschitz_bound(net, shape, method="naive", mode="global", norm="exact").value
    assert best <= sn * (1 + 1e-12) and sn <= naive * (1 + 1e-9)  # Prop. 3 per layer, then the T choice
    for t in ("aol", "sll"):
        b = lipschitz_bound(net, shape, method="lt_sdp", sdp_t=t, mode="global", norm="exact").value
        assert best <= b * (1 + 1e-12)
        # sound: never below the largest gradient norm gradient ascent finds
        lower = _max_gradient_norms(net, shape, 2, starts=8, steps=20)[0, 1] / 2 ** 0.5
        assert lower <= b
    with pytest.raises(ValueError, match="sdp_t must be one of"):
        lipschitz_bound(net, shape, method="lt_sdp", sdp_t="xyz")


def test_lt_sdp_aol_matches_dense_theorem2():
    torch.manual_seed(10)
    net = nn.Sequential(LTResidualLinear(4, 6, activation="leaky_relu"), LTLinear(4, 3, activation=None)).double()
    b = lipschitz_bound(net, (4,), method="lt_sdp", sdp_t="aol", mode="global", norm="exact").value
    (W, H, G, a, bb), = _dense_layers(net, (4,))[0]
    T = (G.T @ G).abs().sum(1)
    ref_layer = (torch.linalg.matrix_norm(H + (a + bb) / 2 * G @ W, ord=2)
                 + (bb - a) / 2 * torch.linalg.matrix_norm(W.T @ torch.diag(T) @ W, ord=2).sqrt())
    W_out = net[1].weight.detach()
    assert torch.isclose(b, ref_layer * torch.linalg.matrix_norm(W_out, ord=2), rtol=DENSE_RTOL)
