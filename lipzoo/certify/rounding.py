"""A proved bound on the floating-point error of a network's logit differences.

A certified radius ``(z_y - z_i) / L_yi`` is a statement about the *exact* function ``z``. The
network the user runs computes ``z`` in floating point: the computed margin ``m^(x')`` of a point
``x'`` differs from the exact ``m(x')``. With ``E`` a bound on ``|m^(x') - m(x')|`` valid for every
``x'`` in the ball ``||x' - x|| <= r``, every computed margin there satisfies

    m^_i(x') >= m_i(x') - E >= m_i(x) - L_i ||x' - x|| - E >= m^_i(x) - 2 E - L_i ||x' - x||,

so the radius ``(m^_i(x) - 2E) / L_i`` (at most ``r``) is certified for the arithmetic the user runs
*and* for the exact network. :func:`margin_error_bound` computes such an ``E`` per input.

The bound (compositional, after the standard a-priori analysis of Higham, *Accuracy and Stability
of Numerical Algorithms*, ch. 3; see Murray, arXiv 2603.13334, for floating-point margins of Lipschitz
certificates). The network is run leaf module by leaf module (:func:`lipzoo.bounds.structure.flatten_modules`).
For each stage ``k`` three per-input numbers are tracked, all in float64 and rounded up:

* ``D_k``: the l2 error ``||c_k(x') - e_k(x')||`` of the computed stage (arithmetic of unit
  roundoff ``u``) against the exact one, for every ``x'`` in the ball;
* ``P_k = Lip(0->k) r``: how far the exact stage moves over the ball;
* ``D64_k``: the error of the float64 forward pass ``f_k(x)`` run here at the centre (it gives the
  magnitudes).

An affine step ``y = W x + b`` of fan-in ``n`` (Linear, Conv2d, the affine part of LTLinear /
LTConv2d, AvgPool2d, Normalize, eval BatchNorm) computed by any order of rounded additions and
multiplications (FMA allowed) has ``|fl(Wx+b) - (Wx+b)| <= gamma_k (|W||x| + |b|)`` elementwise,
``gamma_k = k u / (1 - k u)``, ``k = n + 1`` (a few more for Normalize and BatchNorm, whose torch
kernels round intermediate scalars). Over the ball, ``|| |W||c_k| + |b| || <= || |W||f_k| + |b| || +
|| |W| ||_2 (D_k + P_k + D64_k)``, with ``|| |W| ||_2 <= sqrt(||W||_1 ||W||_inf)`` from the weights
(for a convolution, every tap of an output channel hits an input pixel at most once, whatever the
stride). So ``D_{k+1} = Lip_k D_k + gamma_k (...)`` with ``Lip_k`` the layer's proved spectral
norm (``norm_bound``). Elementwise activations: ReLU, ReLU6, Hardtanh, Hardshrink, Threshold and
Identity are exact; LeakyReLU, PReLU, RReLU (eval) and Softshrink round once (``u |phi(y)|``); the
transcendental ones (tanh, sigmoid, ELU, GELU, SiLU, softplus, ...) are *assumed* accurate to
``8 u (|phi(y)| + |y|)`` (a few ulps, as torch's vectorised libm kernels document); errors pass
through with the slope ``max(|alpha|, |beta|)``. Underflow adds at most ``k * tiny`` per entry
(also with flush-to-zero). The logits' error ``D_L`` gives ``E = sqrt(2) D_L`` for every difference
``z_i - z_j``.

Assumptions (stated, not checked): the kernels compute each output as a sum of products by
rounded floating-point operations in any order (blocked, pairwise or vectorised summation, FMA,
split-K with a rounded combine: all covered). *Not* covered: Winograd or FFT convolution algorithms
(their error bound carries transform-dependent constants; on CUDA set
``torch.backends.cudnn.deterministic = True`` and ``torch.backends.cudnn.benchmark = False`` or
bound them separately), and reduced-precision tensor-core modes: TF32 (``torch.backends.cuda.matmul.
allow_tf32`` / ``torch.backends.cudnn.allow_tf32`` on a CUDA input, or
``torch.get_float32_matmul_precision() != "highest"``) is accounted for by rounding each GEMM
operand to ``u = 2^-11`` (``2^-8`` for ``"medium"``). Parameters derived inside ``forward``
(the residual layers' scale, ``sqrt(rho)``) are taken as computed: they are the values the
Lipschitz bound was computed for. Integer-valued shapes, no NaN or overflow (a non-finite value
gives ``E = inf``, i.e. nothing certified).

Low precision: with ``dtype=torch.bfloat16`` (``u = 2^-8``) and no ``accumulate``, ``gamma_k`` is
infinite from fan-in 255 on, and ``E`` is ``inf``: a worst-case bf16 sum of 256 terms can lose
every digit. Kernels that accumulate in float32 and round once (torch's CPU and CUDA bf16 GEMMs
do) are covered by ``accumulate=torch.float32``: then ``|err| <= ((1 + gamma_k(2^-24))(1 + u) - 1)
(|W||x| + |b|)``, still about ``u = 0.4 %`` of the magnitudes per layer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from lipzoo.layers.groupwise import L2NormPool2d

__all__ = ["unit_roundoff", "gamma", "margin_error_bound", "RoundingPlan", "rounding_plan", "UnboundedRounding"]

_UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11,
                  torch.bfloat16: 2.0 ** -8}
_U64 = 2.0 ** -53
_TINY64 = torch.finfo(torch.float64).tiny
_SAFETY = 1 + 1e-6  # covers the float64 rounding of this bound's own few dozen operations per layer
_TRANSCENDENTAL_ULPS = 8.0


class UnboundedRounding(TypeError):
    """A module whose floating-point error :func:`margin_error_bound` cannot bound (the message names it)."""


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u`` of a floating dtype: float64 ``2^-53``, float32 ``2^-24``, float16 ``2^-11``, bfloat16 ``2^-8``."""
    if dtype not in _UNIT_ROUNDOFF:
        raise ValueError(f"no unit roundoff for dtype {dtype}; expected one of {list(_UNIT_ROUNDOFF)}.")
    return _UNIT_ROUNDOFF[dtype]


def gamma(k: int, u: float) -> float:
    """``gamma_k = k u / (1 - k u)`` (Higham's constant), rounded up; ``inf`` when ``k u >= 1``."""
    ku = k * u
    if ku >= 1:
        return math.inf
    return math.nextafter(ku / (1 - ku), math.inf) * (1 + 2 * _U64)


def _norm_up(t: Tensor) -> Tensor:
    """Per-sample l2 norm in float64, rounded up (relative error of a float64 norm of n terms <= (n + 2) u64)."""
    flat = t.reshape(t.shape[0], -1)
    return flat.norm(dim=1) * (1 + (flat.shape[1] + 4) * 2 * _U64) + _TINY64


@dataclass
class _State:
    f: Tensor  # float64 forward pass at the centres
    D: Tensor  # (N,) error of the computed stage, anywhere on the ball
    D64: Tensor  # (N,) error of f against the exact stage at the centre
    P: Tensor  # (N,) how far the exact stage moves over the ball

    @property
    def delta(self) -> Tensor:
        """Bound on ``||c_k(x') - f_k(x)||`` over the ball."""
        return self.D + self.P + self.D64


@dataclass
class _Arith:
    u: float  # unit roundoff of the stored results
    acc: float  # unit roundoff of the accumulation (<= u)
    gemm: float  # unit roundoff the GEMM operands are rounded to (u, or TF32 / bf16 modes)
    tiny: float  # smallest normal number of the dtype (underflow / flush-to-zero)

    def sum_gamma(self, k: int, *, gemm: bool = False) -> float:
        """Relative error factor of a k-term rounded sum of products, written back to the dtype."""
        acc, extra = self.acc, 0
        if gemm and self.gemm > max(acc, self.u):
            acc, extra = self.gemm, 2  # both operands rounded to the reduced precision first
        g = gamma(k + extra, acc)
        if self.acc < self.u:  # accumulated wider, then rounded once to the dtype
            g = (1 + g) * (1 + self.u) - 1
        return g * (1 + 4 * _U64)


_Step = Callable[[_State, _Arith], _State]


def _affine(fn: Callable[[Tensor], Tensor], absfn: Callable[[Tensor], Tensor], k: int, lip: float,
            abs_norm: float, *, gemm: bool = False) -> _Step:
    """``y = A x + b`` with ``|fl(y) - y| <= gamma_k (absfn(|x|))``, ``absfn(v) = |A| v + |b|`` (monotone in v)."""

    def step(s: _State, ar: _Arith) -> _State:
        f = fn(s.f)
        n_out = f[0].numel()
        absf = absfn(s.f.abs())
        A = _norm_up(absf) * (1 + 2 * gamma(k, _U64)) + math.sqrt(n_out) * k * _TINY64
        mag = A + abs_norm * s.delta
        rho = ar.sum_gamma(k, gemm=gemm) * mag + math.sqrt(n_out) * k * ar.tiny
        rho64 = gamma(k, _U64) * A + math.sqrt(n_out) * k * _TINY64
        return _State(f, lip * s.D + rho, lip * s.D64 + rho64, lip * s.P)

    return step


def _reshape_step(fn: Callable[[Tensor], Tensor]) -> _Step:
    return lambda s, ar: _State(fn(s.f), s.D, s.D64, s.P)


def _activation(act64: Callable[[Tensor], Tensor], slope: float, c_rel: float, c_abs: float) -> _Step:
    """Elementwise ``phi``: ``|fl(phi(y)) - phi(y)| <= u (c_rel |phi(y)| + c_abs |y|)``; ``slope`` its Lipschitz constant."""

    def step(s: _State, ar: _Arith) -> _State:
        f = act64(s.f)
        if c_rel == 0 and c_abs == 0:  # exact in every precision
            return _State(f, slope * s.D, slope * s.D64, slope * s.P)
        n_out = f[0].numel()
        y_norm = _norm_up(s.f)
        c = max(c_rel, c_abs)
        phi_norm = (_norm_up(f) + c * _U64 * y_norm + _TINY64) / (1 - 2 * c * _U64)  # ||phi(f)|| (exact phi)
        delta = s.delta
        rho = ar.u * (c_rel * (phi_norm + slope * delta) + c_abs * (y_norm + delta)) + math.sqrt(n_out) * ar.tiny
        rho64 = _U64 * (c_rel * phi_norm + c_abs * y_norm) + math.sqrt(n_out) * _TINY64
        return _State(f, slope * s.D + rho * (1 + 4 * _U64), slope * s.D64 + rho64, slope * s.P)

    return step


# -- norms of weights, float64, rounded up ---------------------------------------------------------

def _up(x: float, terms: int = 1) -> float:
    return math.nextafter(float(x) * (1 + (terms + 2) * 2 * _U64), math.inf)


def _abs_norm_dense(w: Tensor) -> float:
    """``|| |W| ||_2 <= sqrt(||W||_1 ||W||_inf)`` (Schur / Hoelder)."""
    a = w.detach().to(torch.float64).abs()
    row, col = float(a.sum(1).max()), float(a.sum(0).max())
    return _up(math.sqrt(_up(row, a.shape[1]) * _up(col, a.shape[0])), 4)


def _abs_norm_conv(w: Tensor, groups: int, copies: int = 1) -> float:
    """Row sums ``sum_{c,taps} |W[o]|``; column sums: each tap of each output channel hits an input pixel
    at most once (any stride, dilation), so ``sum_{o in group, taps} |W[o, c]|``, times the copies a
    non-zero padding makes of one pixel."""
    a = w.detach().to(torch.float64).abs()
    c_out, c_in_g = a.shape[:2]
    row = float(a.sum((1, 2, 3)).max())
    col = float(a.reshape(groups, c_out // groups, c_in_g, -1).sum((1, 3)).max())
    terms = a[0].numel() + c_out
    return _up(math.sqrt(_up(row, terms) * _up(col * copies, terms)), 4)


def _lip(op, in_shape, fallback: float) -> float:
    try:
        return min(fallback, float(op.norm_bound(tuple(in_shape)).detach()))
    except NotImplementedError:
        return fallback


# -- leaf modules -----------------------------------------------------------------------------------

def _linear_step(m: nn.Linear, in_shape) -> tuple[_Step, tuple]:
    from lipzoo.layers.lt import linear_operator

    w = m.weight.detach().to(torch.float64)
    b = None if m.bias is None else m.bias.detach().to(torch.float64)
    ab = None if b is None else b.abs()
    k = w.shape[1] + (b is not None)
    abs_norm = _abs_norm_dense(w)
    lip = _lip(linear_operator(m), in_shape, abs_norm)
    step = _affine(lambda v: F.linear(v, w, b), lambda v: F.linear(v, w.abs(), ab), k, lip, abs_norm, gemm=True)
    return step, (w.shape[0],)


def _conv_step(m: nn.Conv2d, in_shape) -> tuple[_Step, tuple]:
    from lipzoo.layers.lt import conv2d_operator
    from lipzoo.layers.operators import ComposeOp
    from lipzoo.layers.padding import PadOp

    w = m.weight.detach().to(torch.float64)
    b = None if m.bias is None else m.bias.detach().to(torch.float64)
    ab = None if b is None else b.abs()
    op = conv2d_operator(m)
    copies = 1
    if isinstance(op, ComposeOp):  # a non-zero padding mode: pad, then an unpadded convolution
        pad = next(o for o in op.ops if isinstance(o, PadOp))
        ih, iw = pad._maps(tuple(in_shape))
        copies = int(torch.bincount(ih).max()) * int(torch.bincount(iw).max())
    k = w[0].numel() + (b is not None)
    abs_norm = _abs_norm_conv(w, m.groups, copies)
    lip = _lip(op, in_shape, abs_norm)
    conv = nn.Conv2d._conv_forward
    step = _affine(lambda v: conv(m, v, w, b), lambda v: conv(m, v, w.abs(), ab), k, lip, abs_norm, gemm=True)
    return step, op.out_shape(tuple(in_shape))


def _avg_pool_step(m: nn.AvgPool2d, in_shape) -> tuple[_Step, tuple]:
    from lipzoo.layers.lt import avg_pool2d_operator

    op = avg_pool2d_operator(m)  # refuses what it cannot model
    kh, kw = (m.kernel_size, m.kernel_size) if isinstance(m.kernel_size, int) else tuple(m.kernel_size)
    norm = float(op.norm_bound(tuple(in_shape)).detach()) * (1 + 4 * _U64)
    pool = nn.AvgPool2d.forward
    # a sum of kh*kw terms and one division (or multiplication) by the divisor
    return _affine(lambda v: pool(m, v), lambda v: pool(m, v), kh * kw + 1, norm, norm), op.out_shape(tuple(in_shape))


def _normalize_step(m, in_shape) -> tuple[_Step, tuple]:
    mean, std = m.mean.detach().to(torch.float64), m.std.detach().to(torch.float64)
    view = (lambda t, v: t.reshape(-1, *([1] * (v.dim() - 2))))
    inv = _up(float((1 / std).max()), 2)
    # (x - mean) / std: two roundings, |err| <= gamma_2 (|x| + |mean|) / std
    return _affine(lambda v: (v - view(mean, v)) / view(std, v), lambda v: (v + view(mean.abs(), v)) / view(std, v),
                   2, inv, inv), tuple(in_shape)


def _batch_norm_step(m, in_shape) -> tuple[_Step, tuple]:
    mean, var = m.running_mean.detach().to(torch.float64), m.running_var.detach().to(torch.float64)
    alpha = (var + m.eps).rsqrt()
    if m.weight is not None:
        alpha = alpha * m.weight.detach().to(torch.float64)
    beta = torch.zeros_like(mean) if m.bias is None else m.bias.detach().to(torch.float64)
    view = (lambda t, v: t.reshape(-1, *([1] * (v.dim() - 2))))
    norm = _up(float(alpha.abs().max()), 8)
    # torch folds it into x * a + c with a = w / sqrt(var + eps), c = b - mean * a, each rounded: at most
    # ~8 roundings along any path; 12 leaves room for an rsqrt a few ulps off.
    return _affine(lambda v: (v - view(mean, v)) * view(alpha, v) + view(beta, v),
                   lambda v: (v + view(mean.abs(), v)) * view(alpha.abs(), v) + view(beta.abs(), v),
                   12, norm, norm), tuple(in_shape)


def _activation_step(act: nn.Module, alpha: float, beta: float, owner: nn.Module) -> _Step:
    slope = max(abs(alpha), abs(beta)) * (1 + 4 * _U64)
    exact = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardshrink, nn.Threshold, nn.Identity)
    one = (nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Softshrink)
    smooth = (nn.Tanh, nn.Sigmoid, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Softsign,
              nn.Tanhshrink, nn.LogSigmoid, nn.Hardsigmoid, nn.Hardswish)
    if isinstance(act, nn.RReLU) and act.training:
        raise UnboundedRounding(f"cannot bound the rounding of {owner!r}: RReLU in training mode is random.")
    act64 = copy.deepcopy(act).to(torch.float64)
    if isinstance(act, exact):
        return _activation(act64, slope, 0.0, 0.0)
    if isinstance(act, one):
        return _activation(act64, slope, 1.0, 0.0)
    if isinstance(act, smooth):
        return _activation(act64, slope, _TRANSCENDENTAL_ULPS, _TRANSCENDENTAL_ULPS)
    raise UnboundedRounding(
        f"cannot bound the floating-point error of the activation {act!r} in {owner!r}: its accuracy is unknown "
        "to lipzoo.certify.rounding (supported: torch's ReLU-family, LeakyReLU/PReLU/RReLU, and tanh, sigmoid, "
        "ELU, CELU, SELU, GELU, SiLU, Mish, softplus, softsign, ... assumed accurate to a few ulps).")


def _l2_pool_step(m: nn.LPPool2d | L2NormPool2d, in_shape, state) -> tuple[_Step, tuple]:
    """``scale * sqrt(sum of squares)`` per disjoint window, as ``F.lp_pool2d`` computes it: squares (one rounding),
    an average of ``n = k_h k_w`` terms and a division, a multiplication by ``n``, ``pow(1/2)`` (a few ulps, as for
    the transcendental activations), times ``scale``: the sum of squares is off by ``gamma_{n+3}`` relative,
    which its square root at most keeps, so ``|fl(phi) - phi| <= (n + 4 + 8 + 1) u |phi|``; squares below the
    smallest normal number add at most ``2 n tiny`` to a sum, ``sqrt(2 n tiny)`` to its root."""
    from lipzoo.layers.groupwise import L2NormPool2d

    kh, kw = (m.kernel_size, m.kernel_size) if isinstance(m.kernel_size, int) else tuple(m.kernel_size)  # type: ignore[arg-type]
    n = kh * kw
    scale = m.scale if isinstance(m, L2NormPool2d) else 1.0
    lip = _up(state.beta * float(state.G.norm_bound(tuple(state.W.out_shape(tuple(in_shape))))))  # G holds the scale
    m64 = copy.deepcopy(m).to(torch.float64)
    c_rel = n + 4 + _TRANSCENDENTAL_ULPS + 1
    relative = _activation(m64, lip, c_rel, 0.0)

    def step(s: _State, ar: _Arith) -> _State:
        out = relative(s, ar)
        floor = math.sqrt(out.f[0].numel()) * math.sqrt(2 * n * ar.tiny) * abs(scale) * 1.01
        floor64 = math.sqrt(out.f[0].numel()) * math.sqrt(2 * n * _TINY64) * abs(scale) * 1.01
        return _State(out.f, out.D + floor, out.D64 + floor64, out.P)

    return step, tuple(state.G.out_shape(tuple(in_shape)))


def _residual_step(m, in_shape) -> tuple[_Step, tuple]:
    from lipzoo.layers.residual import LTResidualConv

    w = m.weight.detach().to(torch.float64)
    b = m.bias.detach().to(torch.float64)
    scale = m._scale().detach().to(torch.float64)  # as forward computes it (the bound's value)
    sqrt_rho = float(m.rho.detach().sqrt())
    state = m.lipschitz_state()
    conv = isinstance(m, LTResidualConv)
    if conv:
        p = m.padding
        fwd = (lambda v: F.conv2d(v, w, b, 1, p))
        fwd_abs = (lambda v: F.conv2d(v, w.abs(), b.abs(), 1, p))
        back = (lambda v: F.conv_transpose2d(v, w, None, 1, p))
        back_abs = (lambda v: F.conv_transpose2d(v, w.abs(), None, 1, p))
        sc = (lambda v: v * scale[:, None, None])
        abs_w = _abs_norm_conv(w, 1)
        k1, k2 = w[0].numel() + 1, w.shape[0] * w.shape[2] * w.shape[3]
    else:
        fwd, fwd_abs = (lambda v: F.linear(v, w, b)), (lambda v: F.linear(v, w.abs(), b.abs()))
        back, back_abs = (lambda v: v @ w), (lambda v: v @ w.abs())
        sc = (lambda v: v * scale)
        abs_w = _abs_norm_dense(w)
        k1, k2 = w.shape[1] + 1, w.shape[0]
    # the transposed map has the same |.|-norm bound (rows and columns swap)
    lip_w = _lip(state.W, in_shape, abs_w)
    s_max = _up(float(scale.abs().max()))
    act = _activation_step(m.act, state.alpha, state.beta, m)
    branch = [_affine(fwd, fwd_abs, k1, lip_w, abs_w, gemm=True), act,
              _affine(sc, lambda v: v * sc(torch.ones_like(v)).abs(), 1, s_max, s_max),
              _affine(back, back_abs, k2, lip_w, abs_w, gemm=True)]

    def step(s: _State, ar: _Arith) -> _State:
        r = s
        for sub in branch:
            r = sub(r, ar)
        f = sqrt_rho * s.f - r.f
        # fl(fl(sqrt_rho x) - r): two roundings on top of the branches' errors
        mx, mr = _norm_up(s.f) + s.delta, _norm_up(r.f) + r.delta
        rho = (2 * ar.u + ar.u ** 2) * sqrt_rho * mx + ar.u * mr + 2 * math.sqrt(f[0].numel()) * ar.tiny
        rho64 = 3 * _U64 * (sqrt_rho * (mx - s.D - s.P) + (mr - r.D - r.P))
        return _State(f, sqrt_rho * s.D + r.D + rho, sqrt_rho * s.D64 + r.D64 + rho64, sqrt_rho * s.P + r.P)

    return step, tuple(in_shape)


def _leaf_steps(m: nn.Module, in_shape) -> tuple[list[_Step], tuple]:
    from lipzoo.layers.groupwise import CReLU, GroupSort, L2NormPool2d, MaxMin
    from lipzoo.layers.lt import AvgPool2d, Flatten, LTConv2d, LTLinear, Normalize
    from lipzoo.layers.residual import LTResidualConv, LTResidualLinear
    from lipzoo.layers.torch_modules import module_state

    state = module_state(m)  # refuses hooks, overridden forwards, training-mode layers (as the bound does)
    if isinstance(m, (LTLinear, LTConv2d)):
        step, shape = _linear_step(m, in_shape) if isinstance(m, LTLinear) else _conv_step(m, in_shape)
        return [step, _activation_step(m.act, state.alpha, state.beta, m)], shape
    if isinstance(m, (LTResidualLinear, LTResidualConv)):
        step, shape = _residual_step(m, in_shape)
        return [step], shape
    if isinstance(m, Normalize):
        step, shape = _normalize_step(m, in_shape)
        return [step], shape
    if isinstance(m, (GroupSort, MaxMin, CReLU)):  # sorts, max / min, negation, relu: exact, 1-Lipschitz
        out_shape = tuple(state.W.out_shape(tuple(in_shape)))
        return [_activation(copy.deepcopy(m).to(torch.float64), 1 + 4 * _U64, 0.0, 0.0)], out_shape
    if isinstance(m, (L2NormPool2d, nn.LPPool2d)):
        step, shape = _l2_pool_step(m, in_shape, state)
        return [step], shape
    lipzoo_declared = hasattr(m, "lipschitz_state") and not isinstance(m, (Flatten, AvgPool2d))
    if lipzoo_declared:
        raise UnboundedRounding(f"cannot bound the floating-point error of {m!r}: lipzoo.certify.rounding knows "
                                "LTLinear, LTConv2d, LTResidualLinear/Conv, Normalize, Flatten, AvgPool2d, GroupSort, "
                                "MaxMin, CReLU, L2NormPool2d and plain "
                                "torch layers only.")
    if isinstance(m, nn.Flatten):
        return [_reshape_step(lambda v: v.flatten(1))], (math.prod(in_shape),)
    if isinstance(m, nn.Linear):
        step, shape = _linear_step(m, in_shape)
        return [step], shape
    if isinstance(m, nn.Conv2d):
        step, shape = _conv_step(m, in_shape)
        return [step], shape
    if isinstance(m, nn.AvgPool2d):
        step, shape = _avg_pool_step(m, in_shape)
        return [step], shape
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        step, shape = _batch_norm_step(m, in_shape)
        return [step], shape
    if isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd)):  # eval mode (module_state checked)
        return [_reshape_step(lambda v: v)], tuple(in_shape)
    return [_activation_step(m, state.alpha, state.beta, m)], tuple(in_shape)  # raises unless a known activation


def _gemm_roundoff(u: float, dtype: torch.dtype, device: torch.device) -> float:
    if dtype != torch.float32:
        return u
    precision = torch.get_float32_matmul_precision()
    mkldnn = {str(getattr(getattr(torch.backends.mkldnn, part, None), "fp32_precision", "none")).lower()
              for part in ("matmul", "conv")}
    if "bf16" in mkldnn:
        return 2.0 ** -8
    if "tf32" in mkldnn:
        precision = "high"
    if precision == "medium":
        return 2.0 ** -8
    tf32 = device.type == "cuda" and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    return 2.0 ** -11 if precision == "high" or tf32 else u


class RoundingPlan:
    """The per-layer steps of :func:`margin_error_bound` for one model, input shape and arithmetic (reusable).

    Build it once (:func:`rounding_plan`) and call it on batches: the weight norms are computed once.
    """

    def __init__(self, model: nn.Module, input_shape, dtype: torch.dtype, accumulate: torch.dtype | None = None,
                 leaf_steps: Callable[[nn.Module, tuple], tuple[list[_Step], tuple]] | None = None):
        """``leaf_steps(module, in_shape) -> (steps, out_shape)`` models one leaf module (default: the modules
        listed in :func:`margin_error_bound`); :mod:`lipzoo.interop` passes one that also knows its blocks."""
        from lipzoo.bounds.structure import flatten_modules

        self.dtype = dtype
        self.u = unit_roundoff(dtype)
        self.accumulate = accumulate
        acc = self.u if accumulate is None else unit_roundoff(accumulate)
        if acc > self.u:
            raise ValueError(f"accumulate={accumulate} is coarser than dtype={dtype}.")
        self.acc = acc
        self.input_shape = tuple(int(s) for s in input_shape)
        self.steps: list[_Step] = []
        shape = self.input_shape
        for m in flatten_modules(model):
            steps, shape = (leaf_steps or _leaf_steps)(m, shape)
            self.steps += steps
        self.output_shape = shape

    def describe(self) -> dict:
        return {"dtype": str(self.dtype).replace("torch.", ""), "unit_roundoff": self.u,
                "accumulate": None if self.accumulate is None else str(self.accumulate).replace("torch.", "")}

    @torch.no_grad()
    def __call__(self, x: Tensor, radius: Tensor | float = 0.0) -> Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"inputs of shape {tuple(x.shape[1:])}; the plan is for {self.input_shape}.")
        n = x.shape[0]
        f = x.detach().to(torch.float64)
        r = torch.as_tensor(radius, dtype=torch.float64, device=f.device).expand(n).clone()
        if (r < 0).any() or torch.isnan(r).any():
            raise ValueError("radius must be >= 0.")
        zero = torch.zeros(n, dtype=torch.float64, device=f.device)
        # an input wider than the dtype is rounded to it first: |x - fl(x)| <= u |x|
        D0 = (self.u * (_norm_up(f) + r)) if unit_roundoff(x.dtype) < self.u else zero
        ar = _Arith(self.u, self.acc, _gemm_roundoff(self.u, self.dtype, x.device), torch.finfo(self.dtype).tiny)
        s = _State(f, D0, zero, r)
        for step in self.steps:
            s = step(s, ar)
        E = math.sqrt(2) * s.D * _SAFETY  # |e_i - e_j| <= sqrt(2) ||e||_2
        finite = torch.isfinite(s.f.reshape(n, -1)).all(dim=1) & torch.isfinite(E)
        return torch.where(finite, E, torch.full_like(E, math.inf))


def rounding_plan(model: nn.Module, input_shape, *, dtype: torch.dtype | None = None,
                  accumulate: torch.dtype | None = None) -> RoundingPlan:
    """A reusable :class:`RoundingPlan` (see :func:`margin_error_bound`)."""
    if dtype is None:
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.get_default_dtype()
    return RoundingPlan(model, input_shape, dtype, accumulate)


def margin_error_bound(model: nn.Module, x: Tensor, *, dtype: torch.dtype | None = None,
                       radius: Tensor | float = 0.0, accumulate: torch.dtype | None = None) -> Tensor:
    """Per input, a proved bound ``E`` on ``|m^(x') - m(x')|`` for every logit difference ``m = z_i - z_j``.

    ``m^`` is what ``model`` computes in floating point of unit roundoff ``u`` (float32 ``2^-24``,
    bfloat16 ``2^-8``, float16 ``2^-11``, float64 ``2^-53``), ``m`` the exact value, for every
    ``x'`` with ``||x' - x||_2 <= radius``. The certified radius is then ``(m^_i(x) - 2E) / L_i``
    (when that is at most ``radius``). The bound, its assumptions (summation by rounded operations in
    any order, FMA allowed; no Winograd / FFT convolutions; TF32 accounted for) and the activations'
    accuracy model are in the module docstring.

    Args:
        model: a chain of modules lipzoo accepts (LTLinear, LTConv2d, LTResidualLinear/Conv, Normalize,
            Flatten, AvgPool2d; torch Linear, Conv2d, activations, Flatten, AvgPool2d, eval BatchNorm,
            Identity, eval Dropout).
        x: ``(N, *input_shape)`` centres.
        dtype: the arithmetic the model is run in (default: its parameters' dtype).
        radius: a float or an ``(N,)`` tensor, the ball ``E`` must hold on.
        accumulate: the dtype sums are accumulated in, when wider than ``dtype`` (e.g. ``torch.float32``
            for bf16 GEMMs that accumulate in float32); default ``dtype`` (the worst case).

    Returns:
        ``(N,)`` float64 tensor (``inf`` where the bound does not exist: a non-finite value, or
        ``k u >= 1`` for a sum of ``k`` terms).

    Raises:
        UnboundedRounding / TypeError: on a module whose arithmetic is not modelled (named in the message).
    """
    return rounding_plan(model, x.shape[1:], dtype=dtype, accumulate=accumulate)(x, radius)
