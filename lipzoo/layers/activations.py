"""Activations with declared slope bounds ``[alpha, beta]``.

An activation ``phi`` is slope-restricted in ``[alpha, beta]`` when
``alpha <= (phi(a) - phi(b)) / (a - b) <= beta`` for all ``a != b``. For a continuous, piecewise
differentiable ``phi`` these are the infimum and supremum of ``phi'``. The loop transformation
(paper, Section 3) needs exactly these two numbers. ``alpha < 0`` is allowed (GELU; the paper's
footnote 3). A function with a jump has no such numbers and is refused.

Two ways an activation gets its slopes:

* a plain torch activation module (``nn.ReLU``, ``nn.ELU(alpha)``, ``nn.PReLU``, ...): the slopes are
  derived from the module's *current* attributes and parameters by :func:`activation_slopes`, every
  time the accountant runs (so ``act.negative_slope = -2`` after construction is seen);
* a module built by a registered factory of another type: the registered ``[alpha, beta]``.

Registering a factory that builds a known torch activation checks that the declared bounds contain
the derived ones.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from lipzoo.layers.state import UnsupportedModule

__all__ = ["ActivationSpec", "register_activation", "get_activation", "list_activations",
           "activation_bounds_of_module", "activation_slopes", "known_activation_types",
           "module_activation_slopes"]


@dataclass(frozen=True)
class ActivationSpec:
    """A named activation: a module factory and its slope bounds.

    ``module_type`` is the type of the module the factory builds (recorded at registration).
    """

    name: str
    factory: Callable[[], nn.Module]
    alpha: float
    beta: float
    module_type: type | None = None


_REGISTRY: dict[str, ActivationSpec] = {}

# Names whose definition in a subclass changes what a module computes. A subclass of a known class
# that defines one of them computes something the accountant does not model.
BEHAVIOUR_METHODS = ("forward", "__call__", "_call_impl", "_wrapped_call_impl", "_conv_forward", "__iter__")


def overriding_class(module: nn.Module, base: type) -> type | None:
    """The first class strictly below ``base`` in ``module``'s MRO that redefines a behaviour method."""
    for cls in type(module).__mro__:
        if cls is base:
            return None
        if any(name in cls.__dict__ for name in BEHAVIOUR_METHODS):
            return cls
    return None


def resolve_known_class(module: nn.Module, table) -> type | None:
    """The class of ``module``'s MRO found in ``table`` (``None`` if none).

    Raises :class:`UnsupportedModule` when a subclass below that class redefines ``forward`` (or
    another behaviour method): the accountant models the known class's ``forward`` only.
    """
    base = next((cls for cls in type(module).__mro__ if cls in table), None)
    if base is None:
        return None
    over = overriding_class(module, base)
    if over is not None:
        raise UnsupportedModule(
            f"{over.__qualname__} subclasses {base.__module__}.{base.__qualname__} but redefines "
            f"{[n for n in BEHAVIOUR_METHODS if n in over.__dict__]}; the accountant models "
            f"{base.__qualname__}.forward only. Declare lipschitz_state() on the subclass (and check it with "
            "lipzoo.layers.check_lipschitz_state) or use the base class")
    return base


# -- slope ranges of smooth activations -------------------------------------------------------------

def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _silu_slope(x: float) -> float:
    s = _sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _mish_slope(x: float) -> float:
    t = math.tanh(_softplus(x))
    return t + x * (1.0 - t * t) * _sigmoid(x)


_K_TANH = math.sqrt(2.0 / math.pi)


def _gelu_tanh_slope(x: float) -> float:
    u = _K_TANH * (x + 0.044715 * x ** 3)
    t = math.tanh(u)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _K_TANH * (1.0 + 3 * 0.044715 * x * x)


def _refine(f: Callable[[float], float], lo: float, hi: float, sign: float) -> float:
    """Extreme value of ``sign * f`` on ``[lo, hi]`` by golden-section search (unimodal there)."""
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    for _ in range(200):
        c, d = b - g * (b - a), a + g * (b - a)
        if sign * f(c) > sign * f(d):
            b = d
        else:
            a = c
        if b - a < 1e-14:
            break
    return f((a + b) / 2.0)


def _smooth_slope_range(slope: Callable[[float], float], limits: tuple[float, float],
                        span: float = 40.0, step: float = 1e-2) -> tuple[float, float]:
    """``[inf phi', sup phi']`` of a smooth activation whose slope tends to ``limits`` at -inf, +inf.

    ``phi'`` is evaluated in float64 on a grid of ``[-span, span]``; every grid extremum is refined
    by golden-section search on its two neighbouring cells (where ``phi'`` is unimodal, ``phi''``
    changing sign once). Outside ``[-span, span]`` ``phi'`` is within 1e-15 of its limits, which are
    included. The result is widened by 1e-9 so that rounding and the finite refinement can only
    loosen it (at an extremum ``phi'' = 0``, so a location error ``h`` moves the value by ``O(h^2)``).
    """
    n = int(2 * span / step)
    xs = [-span + i * step for i in range(n + 1)]
    vs = [slope(x) for x in xs]
    lo, hi = min(limits), max(limits)
    for i in range(1, n):
        # strict on the left: a flat stretch (phi' == its limit in float64) is not an extremum to refine
        if vs[i] < vs[i - 1] and vs[i] <= vs[i + 1]:
            lo = min(lo, _refine(slope, xs[i - 1], xs[i + 1], -1.0), vs[i])
        if vs[i] > vs[i - 1] and vs[i] >= vs[i + 1]:
            hi = max(hi, _refine(slope, xs[i - 1], xs[i + 1], 1.0), vs[i])
    return lo - 1e-9, hi + 1e-9


def _gelu_slope_range() -> tuple[float, float]:
    # GELU'(x) = Phi(x) + x phi(x); GELU''(x) = phi(x) (2 - x^2) vanishes at x = +-sqrt(2), where the
    # slope attains its minimum and maximum.
    r = math.sqrt(2.0)
    pdf = math.exp(-r * r / 2) / math.sqrt(2 * math.pi)
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    # Widen by 1e-12 so that rounding in these constants can only loosen the bound.
    return cdf(-r) - r * pdf - 1e-12, cdf(r) + r * pdf + 1e-12


def _silu_slope_range() -> tuple[float, float]:
    # SiLU''(x) = s (1 - s) (2 + x (1 - 2 s)) with s = sigmoid(x): zero where x tanh(x / 2) = 2 (x > 0,
    # the maximum) and at its mirror image (the minimum; SiLU'(x) + SiLU'(-x) = 1). Bisection on
    # [2, 3], where x tanh(x/2) - 2 changes sign once.
    a, b = 2.0, 3.0
    for _ in range(200):
        m = (a + b) / 2
        a, b = (m, b) if m * math.tanh(m / 2) < 2 else (a, m)
    top = _silu_slope((a + b) / 2)
    return 1.0 - top - 1e-12, top + 1e-12


_GELU = _gelu_slope_range()
_SILU = _silu_slope_range()
_GELU_TANH = _smooth_slope_range(_gelu_tanh_slope, (0.0, 1.0))
_MISH = _smooth_slope_range(_mish_slope, (0.0, 1.0))
# SELU = scale * (x for x > 0, alpha (e^x - 1) otherwise) with torch's constants.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_TOP = _SELU_SCALE * max(1.0, _SELU_ALPHA) * (1 + 1e-12)

# Softplus switches to the identity where beta x > threshold; its jump there, relative to the switch
# point, is log1p(exp(-threshold)) / threshold. Below 2**-60 (1/256 of float64's unit roundoff) the
# softplus branch already rounds to x near the switch, so the computed function has no jump; the
# threshold must also keep exp(beta x) finite in float32 before the switch.
_SOFTPLUS_MAX_RELATIVE_JUMP = 2.0 ** -60
_SOFTPLUS_MAX_THRESHOLD = 80.0
SOFTPLUS_THRESHOLD = 40.0  # the threshold of lipzoo's registered "softplus"


def softplus_jump(beta: float, threshold: float) -> tuple[float, float]:
    """``(x0, jump)``: where ``nn.Softplus(beta, threshold)`` switches to the identity and its jump there."""
    x0 = threshold / beta
    return x0, math.log1p(math.exp(-threshold)) / abs(beta) if threshold > -700 else math.inf


# -- plain torch activation modules -----------------------------------------------------------------

def _finite(module: nn.Module, name: str) -> float:
    value = getattr(module, name)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UnsupportedModule(f"{name}={value!r} is not a number") from None
    if not math.isfinite(value):
        raise UnsupportedModule(f"{name}={value} is not finite")
    return value


def _around_one(a: float) -> tuple[float, float]:
    return min(a, 1.0), max(a, 1.0)


def _leaky_relu(m: nn.LeakyReLU):
    # phi'(x) = negative_slope for x < 0, 1 for x > 0 (any real negative_slope, also < 0 or > 1).
    return _around_one(_finite(m, "negative_slope"))


def _prelu(m: nn.PReLU):
    # Learned negative slopes, one per channel or shared: the slope set is the union over channels.
    w = m.weight.detach()
    if w.numel() == 0 or not bool(torch.isfinite(w).all()):
        raise UnsupportedModule("its weight (the negative slopes) is empty or not finite")
    return min(float(w.min()), 1.0), max(float(w.max()), 1.0)


def _rrelu(m: nn.RReLU):
    if m.training:
        raise UnsupportedModule("RReLU in training mode draws random slopes; call model.eval() first")
    # eval mode: a leaky ReLU with negative slope (lower + upper) / 2 (computed the same way as torch).
    return _around_one((_finite(m, "lower") + _finite(m, "upper")) / 2)


def _elu(m: nn.ELU):
    # phi'(x) = alpha e^x for x < 0 (between 0 and alpha, either sign of alpha), 1 for x > 0.
    a = _finite(m, "alpha")
    return min(0.0, a), max(1.0, a)


def _celu(m: nn.CELU):
    # phi(x) = alpha (exp(x / alpha) - 1) for x <= 0: slope exp(x / alpha) in (0, 1] for alpha > 0;
    # unbounded for alpha < 0 (x / alpha -> +inf), undefined for alpha = 0.
    a = _finite(m, "alpha")
    if a <= 0:
        raise UnsupportedModule(f"CELU(alpha={a}) has slope exp(x/alpha), unbounded for alpha <= 0 "
                                "(no finite Lipschitz constant)")
    return 0.0, 1.0


def _hardtanh(m: nn.Hardtanh):
    lo, hi = float(m.min_val), float(m.max_val)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise UnsupportedModule(f"min_val={lo} > max_val={hi} (F.hardtanh refuses it)")
    return 0.0, 1.0  # a clamp: slopes 0 and 1


def _softplus_slopes(m: nn.Softplus):
    beta, t = _finite(m, "beta"), _finite(m, "threshold")
    if beta == 0:
        raise UnsupportedModule("beta=0 divides by zero")
    x0, jump = softplus_jump(beta, t)
    relative = jump / abs(x0) if x0 != 0 else math.inf
    if not relative <= _SOFTPLUS_MAX_RELATIVE_JUMP or t > _SOFTPLUS_MAX_THRESHOLD:
        raise UnsupportedModule(
            f"Softplus(beta={beta}, threshold={t}) switches to the identity where beta*x > {t} and jumps by "
            f"{jump:.3g} at x={x0:.6g}: a discontinuous function has no finite Lipschitz constant. Use "
            f"threshold between {SOFTPLUS_THRESHOLD:g} and {_SOFTPLUS_MAX_THRESHOLD:g} (the jump is then below "
            "float64 rounding and exp(beta*x) stays finite), e.g. lipzoo's registered 'softplus'")
    # the softplus branch has slope sigmoid(beta x) in (0, 1) for either sign of beta; the identity 1.
    return 0.0, 1.0


def _threshold(m: nn.Threshold):
    t, v = _finite(m, "threshold"), _finite(m, "value")
    if t != v:
        raise UnsupportedModule(f"Threshold(threshold={t}, value={v}) jumps by {abs(t - v):.3g} at x={t} "
                                "(continuous only when value == threshold)")
    return 0.0, 1.0  # max(x, t)


def _softshrink(m: nn.Softshrink):
    lam = _finite(m, "lambd")
    if lam < 0:
        raise UnsupportedModule(f"Softshrink(lambd={lam}) with lambd < 0 jumps at x={lam}")
    return 0.0, 1.0


def _hardshrink(m: nn.Hardshrink):
    lam = _finite(m, "lambd")
    if lam > 0:
        raise UnsupportedModule(f"Hardshrink(lambd={lam}) jumps by {lam:.3g} at x=+-{lam}")
    return 1.0, 1.0  # lambd <= 0: the identity


def _gelu(m: nn.GELU):
    if m.approximate == "none":
        return _GELU
    if m.approximate == "tanh":
        return _GELU_TANH
    raise UnsupportedModule(f"approximate={m.approximate!r} is neither 'none' nor 'tanh'")


def _constant(lo: float, hi: float):
    return lambda m: (lo, hi)


_TORCH_ACTIVATIONS: dict[type, Callable[[Any], tuple[float, float]]] = {  # each takes a module of its key type
    nn.Identity: _constant(1.0, 1.0),
    nn.ReLU: _constant(0.0, 1.0),
    nn.ReLU6: _hardtanh,
    nn.Hardtanh: _hardtanh,
    nn.LeakyReLU: _leaky_relu,
    nn.PReLU: _prelu,
    nn.RReLU: _rrelu,
    nn.ELU: _elu,
    nn.CELU: _celu,
    nn.SELU: _constant(0.0, _SELU_TOP),
    nn.GELU: _gelu,
    nn.SiLU: _constant(*_SILU),
    nn.Mish: _constant(*_MISH),
    nn.Tanh: _constant(0.0, 1.0),
    nn.Sigmoid: _constant(0.0, 0.25),  # sigma' = sigma (1 - sigma) <= 1/4
    nn.Softplus: _softplus_slopes,
    nn.Hardswish: _constant(-0.5, 1.5),  # x (x + 3) / 6 on [-3, 3]: slope (2x + 3) / 6
    nn.Hardsigmoid: _constant(0.0, math.nextafter(1.0 / 6.0, math.inf)),
    nn.Tanhshrink: _constant(0.0, 1.0),  # slope tanh(x)^2
    nn.Softsign: _constant(0.0, 1.0),  # slope 1 / (1 + |x|)^2
    nn.LogSigmoid: _constant(0.0, 1.0),  # slope sigmoid(-x)
    nn.Threshold: _threshold,
    nn.Softshrink: _softshrink,
    nn.Hardshrink: _hardshrink,
}


def known_activation_types() -> tuple[type, ...]:
    """The plain torch activation classes whose slopes lipzoo derives."""
    return tuple(_TORCH_ACTIVATIONS)


def activation_slopes(module: nn.Module) -> tuple[float, float] | None:
    """Slopes ``[alpha, beta]`` of a plain torch activation module from its current attributes.

    Returns ``None`` when ``module`` is not one of :func:`known_activation_types`; raises
    :class:`UnsupportedModule` (a ``TypeError``) with the reason when it is one but its configuration
    has no finite slope bounds (a jump, an unbounded slope, random slopes in training mode) or when
    a subclass redefines its ``forward``.
    """
    base = resolve_known_class(module, _TORCH_ACTIVATIONS)
    if base is None:
        return None
    lo, hi = _TORCH_ACTIVATIONS[base](module)
    return float(lo), float(hi)


def activation_bounds_of_module(module: nn.Module) -> tuple[float, float] | None:
    """Slope bounds of a plain torch activation module, or ``None`` if it is not one we can bound."""
    try:
        return activation_slopes(module)
    except UnsupportedModule:
        return None


def module_activation_slopes(act: nn.Module, name: str | None) -> tuple[float, float]:
    """Slopes of a layer's activation module ``act`` as it is now (the layer registered it as ``name``).

    Known torch activations get their slopes from their current attributes; any other module must
    still be of the type the registered factory of ``name`` builds, and gets the registered bounds.
    """
    slopes = activation_slopes(act)
    if slopes is not None:
        return slopes
    spec = _REGISTRY.get("identity" if name is None else name)
    if spec is not None and spec.module_type is type(act):
        return spec.alpha, spec.beta
    raise UnsupportedModule(
        f"its activation {act!r} is neither a torch activation lipzoo derives slopes for nor a module built by "
        f"the registered activation {name!r}")


# -- registry ---------------------------------------------------------------------------------------

def register_activation(name: str, factory: Callable[[], nn.Module], alpha: float, beta: float,
                        *, overwrite: bool = False) -> ActivationSpec:
    """Register an activation by name with its slope bounds ``[alpha, beta]``.

    Args:
        name: the name layers accept as ``activation=``.
        factory: builds the ``nn.Module`` (called once per layer); it must compute an elementwise,
            continuous function.
        alpha: the lower slope bound (``alpha <= beta``); a wrong bound makes every certificate
            built on it false, so take it from a proof, not a plot. When the factory builds a torch
            activation lipzoo knows (``nn.ELU(alpha=2)``, ...), ``[alpha, beta]`` must contain the
            derived bounds. Check others with :func:`lipzoo.layers.check_lipschitz_state`.
        beta: the upper slope bound, as ``alpha``.
        overwrite: allow replacing an existing name.
    """
    if not math.isfinite(alpha) or not math.isfinite(beta) or alpha > beta:
        raise ValueError(f"Slope bounds for activation {name!r} must be finite with alpha <= beta; "
                         f"got alpha={alpha}, beta={beta}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"Activation {name!r} is already registered; pass overwrite=True to replace it.")
    module = factory()
    try:
        derived = activation_slopes(module)
    except UnsupportedModule as err:
        raise ValueError(f"Activation {name!r}: the factory builds {module!r}, which lipzoo cannot bound: "
                         f"{err}.") from None
    if derived is not None and (alpha > derived[0] or beta < derived[1]):
        raise ValueError(f"Activation {name!r}: declared slopes [{alpha}, {beta}] do not contain the slopes "
                         f"[{derived[0]}, {derived[1]}] of {module!r}.")
    if derived is None:
        sampled = _sampled_slopes(module)
        if sampled is not None and (sampled[0] < alpha - 1e-6 or sampled[1] > beta + 1e-6):
            raise ValueError(f"Activation {name!r}: declared slopes [{alpha}, {beta}] do not contain the slopes "
                             f"[{sampled[0]:.6g}, {sampled[1]:.6g}] measured on {module!r} (difference quotients "
                             "on [-60, 60]); a jump shows up as a huge quotient.")
    spec = ActivationSpec(name, factory, float(alpha), float(beta), type(module))
    _REGISTRY[name] = spec
    return spec


def _sampled_slopes(module: nn.Module) -> tuple[float, float] | None:
    """Smallest and largest difference quotient of an elementwise module on a fine grid of [-60, 60].

    A necessary check of declared bounds for modules lipzoo cannot derive slopes for (``None`` when the
    module does not take a 1-D float64 tensor). Not a proof: the bounds themselves must come from one.
    """
    import copy

    t = torch.linspace(-60.0, 60.0, 24001, dtype=torch.float64)
    try:
        with torch.no_grad():
            phi = copy.deepcopy(module).to(torch.float64)(t)
    except Exception:  # noqa: BLE001 - any module that cannot take this input is simply not sampled
        return None
    if not torch.is_tensor(phi) or phi.shape != t.shape:
        return None
    q = (phi[1:] - phi[:-1]) / (t[1:] - t[:-1])
    return float(q.min()), float(q.max())


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
    """The registered activation names (what layers accept as ``activation=``), sorted."""
    return sorted(_REGISTRY)


def _continuous_softplus() -> nn.Softplus:
    # torch's default threshold (20) leaves a jump of 2e-9 where softplus switches to the identity.
    return nn.Softplus(beta=1.0, threshold=SOFTPLUS_THRESHOLD)


register_activation("identity", nn.Identity, 1.0, 1.0)
register_activation("relu", nn.ReLU, 0.0, 1.0)
register_activation("leaky_relu", nn.LeakyReLU, 0.01, 1.0)
register_activation("tanh", nn.Tanh, 0.0, 1.0)
register_activation("sigmoid", nn.Sigmoid, 0.0, 0.25)
register_activation("softplus", _continuous_softplus, 0.0, 1.0)
register_activation("elu", nn.ELU, 0.0, 1.0)
register_activation("gelu", nn.GELU, *_GELU)


def leaky_relu_spec(negative_slope: float) -> ActivationSpec:
    """Spec of ``LeakyReLU(negative_slope)`` (its bounds depend on the slope)."""
    a = float(negative_slope)
    return ActivationSpec(f"leaky_relu({a})", lambda: nn.LeakyReLU(a), min(a, 1.0), max(a, 1.0), nn.LeakyReLU)
