"""Activations with declared slope bounds ``[alpha, beta]``.

An activation ``phi`` is slope-restricted in ``[alpha, beta]`` when
``alpha <= (phi(a) - phi(b)) / (a - b) <= beta`` for all ``a != b``. The loop transformation (paper,
Section 3) needs exactly these two numbers. ``alpha < 0`` is allowed (GELU; the paper's footnote 3).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["ActivationSpec", "register_activation", "get_activation", "list_activations",
           "activation_bounds_of_module"]


@dataclass(frozen=True)
class ActivationSpec:
    """A named activation: a module factory and its slope bounds."""

    name: str
    factory: Callable[[], nn.Module]
    alpha: float
    beta: float


_REGISTRY: dict[str, ActivationSpec] = {}


def register_activation(name: str, factory: Callable[[], nn.Module], alpha: float, beta: float,
                        *, overwrite: bool = False) -> ActivationSpec:
    """Register an activation by name with its slope bounds ``[alpha, beta]``.

    Args:
        name: the name layers accept as ``activation=``.
        factory: builds the ``nn.Module`` (called once per layer).
        alpha, beta: slope bounds with ``alpha <= beta``; a wrong bound makes every certificate
            built on it false, so take them from a proof, not a plot.
        overwrite: allow replacing an existing name.
    """
    if not math.isfinite(alpha) or not math.isfinite(beta) or alpha > beta:
        raise ValueError(f"Slope bounds for activation {name!r} must be finite with alpha <= beta; "
                         f"got alpha={alpha}, beta={beta}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"Activation {name!r} is already registered; pass overwrite=True to replace it.")
    spec = ActivationSpec(name, factory, float(alpha), float(beta))
    _REGISTRY[name] = spec
    return spec


def get_activation(name: str | None) -> ActivationSpec:
    """Look up an activation by name (``None`` is the identity)."""
    key = "identity" if name is None else name
    if key not in _REGISTRY:
        close = difflib.get_close_matches(str(key), list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown activation {name!r}.{hint} Known: {sorted(_REGISTRY)}; add your own "
                         "with lipzoo.register_activation(name, factory, alpha, beta).")
    return _REGISTRY[key]


def list_activations() -> list[str]:
    return sorted(_REGISTRY)


def _gelu_slope_range() -> tuple[float, float]:
    # GELU'(x) = Phi(x) + x phi(x); GELU''(x) = phi(x) (2 - x^2) vanishes at x = +-sqrt(2), where the
    # slope attains its minimum and maximum.
    r = math.sqrt(2.0)
    pdf = math.exp(-r * r / 2) / math.sqrt(2 * math.pi)
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    # Widen by 1e-12 so that rounding in these constants can only loosen the bound.
    return cdf(-r) - r * pdf - 1e-12, cdf(r) + r * pdf + 1e-12


register_activation("identity", nn.Identity, 1.0, 1.0)
register_activation("relu", nn.ReLU, 0.0, 1.0)
register_activation("leaky_relu", nn.LeakyReLU, 0.01, 1.0)
register_activation("tanh", nn.Tanh, 0.0, 1.0)
register_activation("sigmoid", nn.Sigmoid, 0.0, 0.25)
register_activation("softplus", nn.Softplus, 0.0, 1.0)
register_activation("elu", nn.ELU, 0.0, 1.0)
register_activation("gelu", nn.GELU, *_gelu_slope_range())


def activation_bounds_of_module(module: nn.Module) -> tuple[float, float] | None:
    """Slope bounds of a plain torch activation module, or ``None`` if it is not one we can bound."""
    if isinstance(module, nn.Identity):
        return 1.0, 1.0
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return 0.0, 1.0
    if isinstance(module, nn.LeakyReLU):
        a = float(module.negative_slope)
        return min(a, 1.0), max(a, 1.0)
    if isinstance(module, (nn.Tanh, nn.Softplus, nn.Hardtanh)):
        return 0.0, 1.0
    if isinstance(module, nn.Sigmoid):
        return 0.0, 0.25
    if isinstance(module, nn.ELU):
        # phi'(x) = a e^x for x < 0, 1 for x > 0.
        return 0.0, max(1.0, float(module.alpha))
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            return None
        return _REGISTRY["gelu"].alpha, _REGISTRY["gelu"].beta
    if isinstance(module, nn.PReLU):
        a = module.weight.detach()
        return min(float(a.min()), 1.0), max(float(a.max()), 1.0)
    return None


def leaky_relu_spec(negative_slope: float) -> ActivationSpec:
    """Spec of ``LeakyReLU(negative_slope)`` (its bounds depend on the slope)."""
    a = float(negative_slope)
    return ActivationSpec(f"leaky_relu({a})", lambda: nn.LeakyReLU(a), min(a, 1.0), max(a, 1.0))

