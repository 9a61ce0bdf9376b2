"""The proved rounding bound of :mod:`lipzoo.certify.rounding`, extended to :class:`~lipzoo.interop.Residual`.

``lipzoo.certify.rounding`` bounds the floating-point error of a chain of modules it knows, layer by layer, and
refuses a module that declares ``lipschitz_state()`` but is not one of lipzoo's own layers. A
:class:`~lipzoo.interop.Residual` is made of modules it knows (its skip and the branch's layers), combined by

    h = fl(fl(a * s) + fl(b * r)),     s = skip(x),  r = branch(fl(c * x)),

so its error is bounded from theirs: with ``D_s, D_r`` the errors of the computed ``s, r`` (each stage's steps
of ``lipzoo.certify.rounding``, on the same ball), ``|fl(fl(a s') + fl(b r')) - (a s' + b r')| <=
(2u + u^2) (|a| |s'| + |b| |r'|)`` elementwise (three roundings), so in l2

    D_h <= |a| D_s + |b| D_r + (2u + u^2) (|a| (||s|| + delta_s) + |b| (||r|| + delta_r)) + 3 sqrt(n) tiny,

``delta`` bounding how far the computed stage moves from its value at the centre over the ball, and the exact
stage moves by at most ``|a| P_s + |b| P_r``. The multiplication by ``c`` is an affine step of fan-in 1.
Everything else is ``lipzoo.certify.rounding``'s, with its assumptions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipzoo.certify.rounding import (_TINY64, _U64, RoundingPlan, _affine, _leaf_steps, _norm_up, _State)
from lipzoo.interop.modules import Residual, _leaves

__all__ = ["rounding_plan"]


def _steps(module: nn.Module, shape) -> tuple[list, tuple]:
    if isinstance(module, Residual):
        return [_residual_step(module, shape)], tuple(shape)
    if type(module) is nn.Sequential:
        steps: list = []
        for sub in _leaves(module):
            more, shape = _steps(sub, shape)
            steps += more
        return steps, tuple(shape)
    return _leaf_steps(module, shape)


def _residual_step(m: Residual, in_shape):
    from lipzoo.layers.torch_modules import module_state

    module_state(m)  # refuses what the bound refuses (hooks, a second non-linear layer, ...)
    skip_steps, skip_shape = ([], tuple(in_shape)) if m.skip is None else _steps(m.skip, in_shape)
    c = abs(m.pre_scale)
    branch_steps = [] if m.pre_scale == 1.0 else [
        _affine(lambda v: m.pre_scale * v, lambda v: c * v, 1, c, c)]
    more, out_shape = _steps(m.branch, in_shape)
    branch_steps += more
    if tuple(out_shape) != tuple(skip_shape):
        raise ValueError(f"Residual: the branch gives {out_shape}, the skip {skip_shape}")
    a, b = m.skip_scale, m.branch_scale

    def step(s: _State, ar) -> _State:
        sk = s
        for st in skip_steps:
            sk = st(sk, ar)
        r = s
        for st in branch_steps:
            r = st(r, ar)
        f = a * sk.f + b * r.f
        n = f[0].numel()
        ns, nr = _norm_up(sk.f), _norm_up(r.f)
        rho = (2 * ar.u + ar.u ** 2) * (abs(a) * (ns + sk.delta) + abs(b) * (nr + r.delta)) + 3 * math.sqrt(n) * ar.tiny
        rho64 = (2 * _U64 + _U64 ** 2) * (abs(a) * ns + abs(b) * nr) + 3 * math.sqrt(n) * _TINY64
        up = 1 + 8 * _U64  # this bound's own float64 arithmetic
        return _State(f, (abs(a) * sk.D + abs(b) * r.D + rho) * up, (abs(a) * sk.D64 + abs(b) * r.D64 + rho64) * up,
                      (abs(a) * sk.P + abs(b) * r.P) * up)

    return step


def rounding_plan(model: nn.Module, input_shape, *, dtype: torch.dtype | None = None,
                  accumulate: torch.dtype | None = None) -> RoundingPlan:
    """:func:`lipzoo.certify.rounding.rounding_plan` for a converted model (:class:`~lipzoo.interop.Residual` blocks
    included): ``plan(x, radius)`` is a proved bound on the floating-point error of every logit difference over the
    ball, per input."""
    if dtype is None:
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.get_default_dtype()
    return RoundingPlan(model, input_shape, dtype, accumulate, leaf_steps=_steps)
