"""The per-layer Lipschitz structure of the paper's eq. (14)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lipzoo.layers.operators import LinearOperator, ScaleOp, SumOp, compose

__all__ = ["LipschitzState", "UnsupportedModule"]


class UnsupportedModule(TypeError):
    """A module whose computation the accountant cannot model (the message says why)."""


@dataclass
class LipschitzState:
    """One layer of ``y = W x``, ``x' = H x + G phi(y)`` with ``phi`` slope-restricted in ``[alpha, beta]``.

    Attributes:
        W: the operator applied before the activation.
        H: the skip operator; ``None`` means zero (a plain feed-forward layer).
        G: the operator applied after the activation; ``None`` means the identity.
        alpha, beta: slope bounds of ``phi``. ``alpha == beta`` makes the layer affine: the
            accountant then folds it into its neighbours as the linear map ``H + alpha G W``.
        activation: the elementwise ``phi`` the layer applies (optional; the accountant only needs
            ``alpha, beta``, but :func:`lipzoo.layers.check_lipschitz_state` uses it to compare the
            layer's Jacobian with ``H + G diag(phi'(W x + bias)) W``).
        bias: the offset added to ``W x`` before ``phi`` (broadcastable to the shape of ``y``), for
            the same check.
        elementwise: ``True`` (default): ``phi`` acts coordinatewise with every slope in ``[alpha, beta]``.
            ``False``: ``phi`` maps the pre-activation space to itself as a whole (a sort, max-min pairs,
            window norms) and the only claim is that ``phi - (alpha+beta)/2 * id`` is ``(beta-alpha)/2``-Lipschitz
            in l2 on the range of ``W`` (plus ``bias``), where every ``y`` lies. That is all the LipLT and
            naive bounds use (Theorem 3's proof only needs it); the bounds that need coordinatewise slopes
            (ECLipsE, the AOL / SLL choices of ``lt_sdp``) refuse or skip such a block.
    """

    W: LinearOperator
    H: LinearOperator | None = None
    G: LinearOperator | None = None
    alpha: float = 1.0
    beta: float = 1.0
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None
    bias: torch.Tensor | None = None
    elementwise: bool = True

    @property
    def is_linear(self) -> bool:
        return self.alpha == self.beta

    def as_linear(self) -> LinearOperator:
        """The map ``x -> H x + alpha G W x`` (exact when ``alpha == beta``)."""
        main = compose(self.G, self.W)
        if self.alpha != 1.0:
            main = compose(ScaleOp(self.alpha), main)
        return main if self.H is None else SumOp([self.H, main])
