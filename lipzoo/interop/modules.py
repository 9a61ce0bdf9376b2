"""The one module :mod:`lipzoo.interop` adds: a residual block whose branch has a single non-linear layer.

Peer libraries build skip connections as containers (orthogonium's ``PrescaledAdditiveResidual`` and
``AdditiveResidual``, its SLL blocks). :class:`Residual` computes

    h(x) = skip_scale * S x + branch_scale * f(pre_scale * x)

with ``S`` an affine map (the identity by default) and ``f`` a chain of accepted modules with exactly one
non-linear layer ``x' = H' u + G' phi(W' u + b')`` between affine maps ``u = A x + a`` (before) and
``B`` (after). It is one layer of the paper's eq. (14):

    W = W' A pre_scale,    G = branch_scale B G',    H = skip_scale S + branch_scale B H' A pre_scale,

with the non-linear layer's ``phi``, ``[alpha, beta]`` and ``elementwise`` (so a group-wise map such as
max-min keeps its exact constant 1). A branch with two non-linear layers is not one layer of eq. (14) and is
refused.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipzoo.layers.operators import LinearOperator, ScaleOp, SumOp, compose
from lipzoo.layers.state import LipschitzState, UnsupportedModule

__all__ = ["Residual"]


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The modules of a (nested) plain ``nn.Sequential`` in execution order."""
    if type(module) is nn.Sequential:
        return [m for sub in module for m in _leaves(sub)]
    return [module]


def _check_scale(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Residual: {name} must be a finite number, got {value!r}.")
    return value


class Residual(nn.Module):
    """``skip_scale * skip(x) + branch_scale * branch(pre_scale * x)`` (see the module docstring).

    Args:
        branch: an ``nn.Sequential`` of modules the accountant accepts, with one non-linear layer at most.
        skip: an affine module the accountant accepts (e.g. a strided ``nn.Conv2d``), an ``nn.Sequential`` of them, or
            ``None`` (the identity).
        skip_scale: the factor of the skip path.
        branch_scale: the factor of the branch.
        pre_scale: the factor of the branch's input.
        input_shape: the per-sample input shape the block was built for; used only for the state's ``bias`` (the
            pre-activation offset ``W' a + b'``, which :func:`lipzoo.layers.check_lipschitz_state` needs to check
            the Jacobian; the bound does not use it).
    """

    def __init__(self, branch: nn.Sequential, skip: nn.Module | None = None, *, skip_scale: float = 1.0,
                 branch_scale: float = 1.0, pre_scale: float = 1.0, input_shape=None):
        super().__init__()
        if type(branch) is not nn.Sequential:
            raise TypeError(f"Residual: branch must be an nn.Sequential, got {type(branch).__name__}.")
        self.branch = branch
        self.skip = skip
        self.skip_scale = _check_scale("skip_scale", skip_scale)
        self.branch_scale = _check_scale("branch_scale", branch_scale)
        self.pre_scale = _check_scale("pre_scale", pre_scale)
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.skip is None else self.skip(x)
        u = x if self.pre_scale == 1.0 else self.pre_scale * x
        return self.skip_scale * s + self.branch_scale * self.branch(u)

    def _parts(self):
        from lipzoo.layers.torch_modules import module_state

        mods = _leaves(self.branch)
        states = [module_state(m) for m in mods]
        k = [i for i, s in enumerate(states) if not s.is_linear]
        if len(k) > 1:
            names = ", ".join(type(mods[i]).__name__ for i in k)
            raise UnsupportedModule(f"its branch has {len(k)} non-linear layers ({names}); a residual block is one "
                                    "layer of eq. (14) only with a single one")
        return mods, states, (k[0] if k else None)

    def _skip_op(self) -> LinearOperator:
        if self.skip is None:
            return ScaleOp(self.skip_scale)
        from lipzoo.layers.torch_modules import module_state

        ops = []
        for m in _leaves(self.skip):
            state = module_state(m)
            if not state.is_linear:
                raise UnsupportedModule(f"its skip holds {type(m).__name__}, which is not an affine map")
            ops.append(state.as_linear())
        return compose(ScaleOp(self.skip_scale), *reversed(ops))

    def lipschitz_state(self) -> LipschitzState:
        mods, states, k = self._parts()
        linear = [s.as_linear() for s in states]
        pre_scale = None if self.pre_scale == 1.0 else ScaleOp(self.pre_scale)
        scale = ScaleOp(self.branch_scale)
        if k is None:  # an affine branch: the whole block is affine
            main = compose(scale, *reversed(linear), pre_scale) or scale
            return LipschitzState(W=SumOp([self._skip_op(), main]))
        s = states[k]
        pre = compose(*reversed(linear[:k]))
        post = compose(*reversed(linear[k + 1:]))
        W = compose(s.W, pre, pre_scale) or ScaleOp(1.0)
        G = compose(scale, post, s.G)
        H: LinearOperator = self._skip_op()
        if s.H is not None:
            H = SumOp([H, compose(scale, post, s.H, pre, pre_scale)])
        return LipschitzState(W=W, H=H, G=G, alpha=s.alpha, beta=s.beta, activation=s.activation,
                              bias=self._offset(mods[:k], s), elementwise=s.elementwise)

    def _offset(self, before: list[nn.Module], s: LipschitzState) -> torch.Tensor | None:
        """``W' a + b'``: the pre-activation at ``x = 0`` (``None`` without an input shape or when it is 0)."""
        if self.input_shape is None or (not before and s.bias is None):
            return s.bias
        ref = next(self.parameters(), None)
        u = torch.zeros(1, *self.input_shape, dtype=ref.dtype if ref is not None else torch.float64,
                        device=ref.device if ref is not None else None)
        with torch.no_grad():
            for m in before:
                u = m(u)
            y = s.W.forward(u)
        if s.bias is not None:
            y = y + s.bias
        return y[0]

    def extra_repr(self) -> str:
        return (f"skip_scale={self.skip_scale:.17g}, branch_scale={self.branch_scale:.17g}, "
                f"pre_scale={self.pre_scale:.17g}")
