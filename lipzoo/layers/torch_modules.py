"""Which modules the accountant accepts, and their Lipschitz states.

A module is accepted only when the state describes exactly what its ``forward`` computes:

* no forward hooks or forward pre-hooks on it or any of its submodules, and none registered
  globally (``torch.nn.modules.module.register_module_forward_hook``): a hook can change the output;
* a plain torch module is looked up by class; a subclass that redefines ``forward`` (or
  ``__call__``, ``_conv_forward``, ...) is refused, since the state models the known class's forward;
* a module that declares ``lipschitz_state()`` must not redefine ``forward`` below the class that
  declares it (a subclass of ``LTConv2d`` with its own ``forward`` is refused);
* every attribute the known ``forward`` reads is checked (``padding_mode``, ``ceil_mode``,
  ``training``, ...): modelled, or refused with the reason;
* modules that behave differently in training mode (batch norm, dropout, RReLU) are refused there.

Everything refused raises :class:`~lipzoo.layers.state.UnsupportedModule` (a ``TypeError``)
naming the module and the reason. See ``docs/bounds.md`` ("What the accountant accepts").
"""

from __future__ import annotations

import math
from typing import Any, Callable, cast

import torch
import torch.nn.modules.module as torch_module
import torch.nn.utils.parametrize as parametrize
from torch import nn
from torch.nn.utils.parametrizations import _SpectralNorm

from lipzoo.layers.activations import BEHAVIOUR_METHODS, activation_slopes, resolve_known_class
from lipzoo.layers.groupwise import l2_pool_state
from lipzoo.layers.lt import avg_pool2d_operator, conv2d_operator, flatten_operator, linear_operator
from lipzoo.layers.operators import DiagonalOp, ScaleOp
from lipzoo.layers.state import LipschitzState, UnsupportedModule

__all__ = ["module_state", "SUPPORTED_TORCH_MODULES", "check_hooks", "check_declared_forward",
           "check_sequential", "check_finite_weights", "check_state_weights", "MAX_WEIGHT_MAGNITUDE"]

MAX_WEIGHT_MAGNITUDE = 2.0 ** 64
"""Largest magnitude (~1.8e19) of an entry of the operators a module's state hands the accountant.

The rule: every weight the bound multiplies (the tensors and scalars of the state's ``W``, ``H``,
``G``: a Linear / Conv weight, a batch-norm scale ``weight / sqrt(running_var + eps)``, ...) must be
at most ``2**64`` in magnitude, else the module is refused before any norm is computed. Why this
limit: an operator with ``N <= 2**48`` entries of at most ``2**64`` has a norm of at most
``2**64 N <= 2**112`` (each entry adds at most its magnitude to ``||A||_2``), and its square (which
Gram-based computations form) at most ``2**224``, far from float64's ``2**1024``, so no single
operator norm, Gram matrix or per-layer product can overflow and come out ``inf``/NaN inside an
eigensolver; the bound multiplies one such norm per layer, so it stays finite for networks of up to
nine layers even at that extreme, which a trained network never is (float32/bfloat16 training
overflows on the squares of weights beyond ``2**64``; trained weights are below ``2**10``). A
deeper network at the extreme gets ``inf``, still a true upper bound. There is no lower limit: tiny
weights (1e-160) are bounded soundly, the norm computations rescale by powers of two.
"""

SUPPORTED_TORCH_MODULES = (
    "nn.Conv2d (any padding_mode; zero padding='same' with odd dilated kernels), nn.Linear, nn.Flatten(1), "
    "nn.AvgPool2d (no ceil_mode), nn.LPPool2d (norm_type 2, stride >= kernel_size), eval-mode nn.BatchNorm1d/2d, nn.Identity, nn.Dropout* (eval mode), "
    "activations nn.ReLU/ReLU6/LeakyReLU/PReLU/RReLU/ELU/CELU/SELU/GELU/SiLU/Mish/Tanh/Hardtanh/Sigmoid/"
    "Hardsigmoid/Hardswish/Softplus/Softsign/Tanhshrink/LogSigmoid/Threshold/Softshrink/Hardshrink, nested "
    "nn.Sequential, and any module with lipschitz_state(); see docs/bounds.md"
)


PEER_PACKAGES = ("deel.", "orthogonium.")
"""Module paths of the 1-Lipschitz libraries whose layers :func:`lipzoo.interop.convert` recognises."""


def _unsupported(module: nn.Module, why: str) -> UnsupportedModule:
    peer = type(module).__module__.startswith(PEER_PACKAGES)
    hint = (" It comes from a 1-Lipschitz library: lipzoo.interop.convert(model, input_shape) replaces the layers "
            "it recognises (by what they compute) with equivalents the accountant accepts (docs/interop.md)."
            if peer else "")
    return UnsupportedModule(f"Cannot bound the Lipschitz constant of {module!r}: {why}.{hint} Supported: "
                             f"{SUPPORTED_TORCH_MODULES}.")


def _refused(module: nn.Module, why: str) -> UnsupportedModule:
    return UnsupportedModule(f"Cannot bound the Lipschitz constant of {_short(module)}: {why}.")


def _short(module: nn.Module) -> str:
    text = repr(module)
    return text if len(text) <= 300 else f"{text[:300]}...)"


# -- acceptance checks -------------------------------------------------------------------------------

def _one_line(module: nn.Module, name: str | None) -> str:
    """``module '0.1' (Linear(in_features=4, ...))``: the module's path (when known) and its repr on one line."""
    text = " ".join(repr(module).split())
    text = text if len(text) <= 200 else f"{text[:200]}...)"
    return f"module {name!r} ({text})" if name else text


def check_finite_weights(module, name=None) -> None:
    """Refuse a module with an empty parameter (a zero-width ``nn.Linear(4, 0)`` or ``Conv2d``) or a non-finite
    (NaN / inf) entry in any floating parameter or buffer, itself or of its submodules.

    Raises a one-line ``ValueError`` naming the module (``name``: its path in the model) and the tensor,
    before any state or norm is computed: a NaN weight makes every output NaN, and an empty layer maps
    everything to an empty vector (``max()`` of nothing failed deep inside the norm computation).
    ``module`` may be a list of modules (``name`` then a list of names): they are checked with one host
    sync in all (the training estimator builds the structure every step); the first bad one is named.
    """
    modules = list(module) if isinstance(module, (list, tuple)) else [module]
    names = list(name) if isinstance(name, (list, tuple)) else [name] * len(modules)
    floating = []
    for mod, mname in zip(modules, names):
        tensors = [("parameter", n, t) for n, t in mod.named_parameters()]
        tensors += [("buffer", n, t) for n, t in mod.named_buffers()]
        for kind, tname, t in tensors:
            if kind == "parameter" and t.numel() == 0:
                raise ValueError(f"Cannot bound the Lipschitz constant of {_one_line(mod, mname)}: its {kind} "
                                 f"{tname!r} is empty (shape {tuple(t.shape)}), a layer without inputs or outputs.")
        floating += [(mod, mname, kind, n, t) for kind, n, t in tensors
                     if (t.is_floating_point() or t.is_complex()) and t.numel()]
    if not floating:
        return
    dev = floating[0][-1].device
    flags = torch.stack([torch.isfinite(t.detach()).all().to(dev) for *_, t in floating]).cpu()
    if bool(flags.all()):
        return
    mod, mname, kind, tname, t = floating[int((~flags).nonzero()[0])]
    bad = int((~torch.isfinite(t.detach())).sum())
    raise ValueError(f"Cannot bound the Lipschitz constant of {_one_line(mod, mname)}: its {kind} {tname!r} has "
                     f"{bad} non-finite (NaN or inf) entr{'y' if bad == 1 else 'ies'} of {t.numel()}.")


def operator_values(op, path: str = "") -> list:
    """``(where, tensor or number)`` for every weight an operator (tree) holds."""
    out: list[tuple[str, Any]] = []
    if op is None:
        return out
    for attr in ("weight", "scale", "c"):
        v = getattr(op, attr, None)
        if torch.is_tensor(v) or isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((f"{path}{type(op).__name__}.{attr}", v))
    for i, sub in enumerate(getattr(op, "ops", None) or []):
        out += operator_values(sub, f"{path}{type(op).__name__}[{i}].")
    if getattr(op, "op", None) is not None:
        out += operator_values(op.op, f"{path}{type(op).__name__}.")
    return out


def check_state_weights(state, module=None, name=None) -> None:
    """Refuse a state whose operators hold an empty, non-finite or absurdly large weight
    (magnitude above :data:`MAX_WEIGHT_MAGNITUDE`; the rule and its reason are documented there).

    Raises a one-line ``ValueError`` naming the module, before any norm is computed. ``state`` may be a list
    of ``(state, module, name)`` triples, checked with one host sync in all; the first bad one is named.
    """
    items = list(state) if isinstance(state, (list, tuple)) else [(state, module, name)]
    values = []  # (module, name, where, tensor or number)
    for st, mod, mname in items:
        for part in ("W", "H", "G"):
            values += [(mod, mname, f"{part}: {where}", v) for where, v in operator_values(getattr(st, part), "")]
    for mod, mname, where, v in values:
        if torch.is_tensor(v) and v.numel() == 0:
            raise ValueError(f"Cannot bound the Lipschitz constant of {_one_line(mod, mname)}: its state's "
                             f"{where} is empty (shape {tuple(v.shape)}), a layer without inputs or outputs.")
    tensors = [i for i, (*_, v) in enumerate(values) if torch.is_tensor(v)]
    tops = [None if torch.is_tensor(v) else abs(float(v)) for *_, v in values]
    if tensors:  # NaN-propagating maxima, one host sync
        dev = values[tensors[0]][-1].device
        found = torch.stack([values[i][-1].detach().abs().amax().to(dev, torch.float64) for i in tensors]).tolist()
        for i, m in zip(tensors, found):
            tops[i] = m
    for (mod, mname, where, _), m in zip(values, cast(list[float], tops)):  # every None filled in above
        if not math.isfinite(m):
            raise ValueError(f"Cannot bound the Lipschitz constant of {_one_line(mod, mname)}: its state's "
                             f"{where} has non-finite (NaN or inf) entries.")
        if m > MAX_WEIGHT_MAGNITUDE:
            raise ValueError(f"Cannot bound the Lipschitz constant of {_one_line(mod, mname)}: its state's "
                             f"{where} has an entry of magnitude {m:.3g}, above the limit MAX_WEIGHT_MAGNITUDE = "
                             f"2**64 ~ 1.8e19 (lipzoo.layers.torch_modules) that keeps every norm finite.")


def check_hooks(module: nn.Module, *, recurse: bool = True) -> None:
    """Refuse forward hooks / pre-hooks on ``module`` (and, with ``recurse``, any submodule), global ones,
    and a ``forward`` assigned on an instance (``m.forward = ...``)."""
    for name, hooks in (("forward hook", torch_module._global_forward_hooks),
                        ("forward pre-hook", torch_module._global_forward_pre_hooks)):
        if len(hooks):
            raise _refused(module, f"a global {name} is registered (torch.nn.modules.module.register_module_"
                                   f"{name.replace(' ', '_').replace('-', '_')}); hooks can change what every "
                                   "module computes, so the accountant refuses to run while one is registered")
    for name, sub in (module.named_modules() if recurse else [("", module)]):
        replaced = [n for n in BEHAVIOUR_METHODS if n in sub.__dict__]
        if replaced:
            where = "its" if sub is module else f"its submodule {name!r} ({type(sub).__name__}) has its"
            raise _refused(module, f"{where} {replaced} replaced on the instance; the accountant models the "
                                   "class's forward only")
        for kind in ("_forward_hooks", "_forward_pre_hooks"):
            if len(getattr(sub, kind, ())):
                where = "it" if sub is module else f"its submodule {name!r} ({type(sub).__name__})"
                raise _refused(module, f"{where} has {kind[1:].replace('_', ' ')[:-1]}(s); a hook can change the "
                                       "output, which the accountant cannot see. Remove the hook(s) first")


_DETERMINISTIC_PARAMETRIZATIONS = ("torch.nn.utils.parametrizations", "lipzoo.")


def check_parametrizations(module: nn.Module) -> None:
    """Refuse parametrizations that change the weight each time it is read (spectral norm in training mode; another
    library's parametrization whose two reads differ, e.g. a power iteration that runs in eval mode too).

    ``torch.nn.utils.parametrizations.spectral_norm`` runs a power-iteration step on every read of the
    weight in training mode, so the weight ``forward`` uses is not the one the state read.
    """
    for name, sub in module.named_modules():
        if not parametrize.is_parametrized(sub):
            continue
        where = "it" if sub is module else f"its submodule {name!r} ({type(sub).__name__})"
        for tensor_name, plist in sub.parametrizations.items():
            for p in plist:
                if isinstance(p, _SpectralNorm) and p.training:
                    raise _refused(module, f"{where} has a spectral_norm parametrization in training mode, which "
                                           "changes the weight on every read; call model.eval() first")
            if all(type(p).__module__.startswith(_DETERMINISTIC_PARAMETRIZATIONS) for p in plist):
                continue
            # another library's parametrization (a power iteration that runs on every read, ...): two reads
            # must give the same bits, or the weight the state reads is not the one forward will use
            plist_state = {k: v.clone() for k, v in plist.state_dict().items()}  # restored: no side effect
            try:
                with torch.no_grad():
                    first, second = getattr(sub, tensor_name), getattr(sub, tensor_name)
                    plist.load_state_dict(plist_state)
            except Exception as err:  # their code, in the float64 copy the accountant works on
                raise _refused(module, f"{where} has a parametrization of {tensor_name!r} that failed to compute it "
                                       f"({type(err).__name__}: {err}); freeze it first (lipzoo.interop.convert does, "
                                       "or torch.nn.utils.parametrize.remove_parametrizations)") from None
            if not torch.equal(first, second):
                raise _refused(module, f"{where} has a parametrization of {tensor_name!r} "
                                       f"({', '.join(type(p).__qualname__ for p in plist)}) that gives another value on "
                                       "every read (by up to "
                                       f"{float((first - second).abs().max()):.3g}), so the weight bounded is not the "
                                       "weight forward uses; freeze it first (lipzoo.interop.convert does, "
                                       "or torch.nn.utils.parametrize.remove_parametrizations)")


def _declaring_class(module: nn.Module, attr: str) -> type:
    return next(cls for cls in type(module).__mro__ if attr in cls.__dict__)


def check_declared_forward(module: nn.Module, attr: str = "lipschitz_state") -> None:
    """Refuse a module whose ``forward`` is redefined below the class that declares ``attr``."""
    owner = _declaring_class(module, attr)
    for cls in type(module).__mro__:
        if cls is owner:
            return
        over = [n for n in BEHAVIOUR_METHODS if n in cls.__dict__]
        if over:
            raise _refused(module, f"{cls.__qualname__} redefines {over} but inherits {attr}() from "
                                   f"{owner.__qualname__}, which describes {owner.__qualname__}'s computation. "
                                   f"Define {attr}() on {cls.__qualname__} too (and check it with "
                                   "lipzoo.layers.check_lipschitz_state)")


def check_sequential(module: nn.Sequential) -> None:
    """Refuse an ``nn.Sequential`` subclass whose forward is not the plain chain."""
    try:
        resolve_known_class(module, (nn.Sequential,))
    except UnsupportedModule as err:
        raise _refused(module, f"{err}; its children are not simply applied in order") from None


# -- states of plain torch modules -------------------------------------------------------------------

def _conv2d(m: nn.Conv2d) -> LipschitzState:
    return LipschitzState(W=conv2d_operator(m))


def _linear(m: nn.Linear) -> LipschitzState:
    return LipschitzState(W=linear_operator(m))


def _flatten(m: nn.Flatten) -> LipschitzState:
    return LipschitzState(W=flatten_operator(m))


def _avg_pool2d(m: nn.AvgPool2d) -> LipschitzState:
    return LipschitzState(W=avg_pool2d_operator(m))


def _batch_norm(m: nn.modules.batchnorm._BatchNorm) -> LipschitzState:
    # _BatchNorm.forward normalises by the batch statistics when training, or in eval mode when it has
    # no running statistics; only eval mode with running statistics is a fixed affine map.
    if m.training:
        raise UnsupportedModule("BatchNorm is only an affine map in eval mode with running statistics; "
                                "in training mode it normalises by batch statistics: call model.eval() first")
    if m.running_mean is None or m.running_var is None:
        raise UnsupportedModule("BatchNorm is only an affine map in eval mode with running statistics; this one "
                                "has none (track_running_stats=False), so it normalises by batch statistics")
    scale = (m.running_var + m.eps).rsqrt()
    if m.weight is not None:
        scale = scale * m.weight
    if not bool(torch.isfinite(scale).all()):
        raise UnsupportedModule("its scale weight / sqrt(running_var + eps) is not finite")
    return LipschitzState(W=DiagonalOp(scale))


def _lp_pool2d(m: nn.LPPool2d) -> LipschitzState:
    if float(m.norm_type) != 2.0:
        raise UnsupportedModule(f"only norm_type=2 (l2-norm pooling) is modelled, got {m.norm_type!r}")
    if m.ceil_mode:
        raise UnsupportedModule("needs ceil_mode=False (windows over the border)")
    return l2_pool_state(m.kernel_size, m.stride)


def _dropout(m: nn.modules.dropout._DropoutNd) -> LipschitzState:
    if m.training and m.p > 0:
        raise UnsupportedModule(f"{type(m).__name__} in training mode is random (Dropout in training mode); "
                                "call model.eval() first")
    return LipschitzState(W=ScaleOp(1.0))  # eval mode (or p = 0): the identity


_TORCH_LAYERS: dict[type, Callable[[Any], LipschitzState]] = {  # each takes a module of its key type
    nn.Conv2d: _conv2d,
    nn.Linear: _linear,
    nn.Flatten: _flatten,
    nn.AvgPool2d: _avg_pool2d,
    nn.LPPool2d: _lp_pool2d,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.Dropout: _dropout,
    nn.Dropout1d: _dropout,
    nn.Dropout2d: _dropout,
    nn.Dropout3d: _dropout,
    nn.AlphaDropout: _dropout,
    nn.FeatureAlphaDropout: _dropout,
}


def accepted_torch_layer_types() -> tuple[type, ...]:
    """Plain torch (non-activation) module classes the accountant accepts."""
    return tuple(_TORCH_LAYERS)


def module_state(module: nn.Module) -> LipschitzState:
    """The eq. (14) state of one module; raises ``TypeError`` for anything we cannot bound."""
    check_hooks(module)
    check_parametrizations(module)
    try:
        if hasattr(module, "lipschitz_state"):
            check_declared_forward(module)
            return module.lipschitz_state()  # type: ignore[operator]
        base = resolve_known_class(module, _TORCH_LAYERS)
        if base is not None:
            return _TORCH_LAYERS[base](module)
        slopes = activation_slopes(module)
    except UnsupportedModule as err:
        if str(err).startswith("Cannot bound"):
            raise
        raise _unsupported(module, str(err)) from None
    if slopes is None:
        raise _unsupported(module, f"{type(module).__name__} has no declared Lipschitz structure")
    return LipschitzState(W=ScaleOp(1.0), alpha=slopes[0], beta=slopes[1], activation=module)
