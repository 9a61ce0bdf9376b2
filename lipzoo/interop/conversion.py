"""``convert(model, input_shape)``: a copy of a peer library's network that the accountant accepts.

The walk (containers first, then every module in order):

1. ``nn.Sequential`` (and a subclass that keeps its ``forward``, such as deel-torchlip's ``Sequential``): its
   children are converted; a subclass becomes a plain ``nn.Sequential`` with the same children's names.
2. A module the accountant accepts as it is stays, unless it is a peer's weight layer (an ``nn.Conv2d`` /
   ``nn.Linear`` subclass of deel-torchlip or orthogonium): its ``torch.nn.utils.parametrize`` weight may change
   on every read (orthogonium's power iteration does, in eval mode too), so it becomes a plain layer holding one
   read, and the converted model needs neither the peer library nor parametrizations to load.
3. Otherwise its class name picks candidate equivalents (:mod:`lipzoo.interop.peers`), built from a frozen copy
   (:func:`lipzoo.interop.probe.freeze`) and compared with it on probe inputs of every shape the model feeds it
   (:func:`lipzoo.interop.probe.compare`); the first that matches replaces it. A candidate that mismatches
   (a fake class with a peer's name, a layer configured in a way the equivalent does not model) makes
   :class:`~lipzoo.layers.UnsupportedModule` name the module and the mismatch.
4. Anything else passes through untouched: the accountant refuses it with its own message.

With ``check=True`` every equivalent also passes :func:`lipzoo.layers.check_lipschitz_state` (on a small input
shape) and the converted model is compared with the original end to end.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from lipzoo.interop.modules import Residual
from lipzoo.interop.peers import Context, Recogniser, candidates, library_of, peer_class
from lipzoo.interop.probe import Shape, _Frozen, compare, freeze, probe_inputs, record_input_shapes
from lipzoo.layers.activations import resolve_known_class
from lipzoo.layers.conformance import check_lipschitz_state
from lipzoo.layers.state import UnsupportedModule
from lipzoo.layers.torch_modules import module_state

__all__ = ["convert", "conversion_report", "Conversion", "ConversionReport", "END_TO_END_RTOL"]

END_TO_END_RTOL = 1e-9
"""Largest relative difference accepted between the converted model and the original, end to end (float64):
each replaced layer matches to 1e-12; through a network the differences add up, scaled by the layers' norms."""

_CHECK_DIMS = (512, 4096)  # check_lipschitz_state on shapes of at most this many dimensions (a side), first try


@dataclass(frozen=True)
class Conversion:
    """One replaced module: its path, its class (``module.qualname``), the equivalent's ``repr`` (first line), how
    it was recognised, the largest relative probe difference and the Lipschitz constant its library claims."""

    path: str
    original: str
    equivalent: str
    how: str
    max_difference: float
    claimed: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert` did (``model.lipzoo_interop`` of the converted model)."""

    input_shape: Shape
    conversions: tuple[Conversion, ...]
    end_to_end_difference: float | None

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "conversions": [c.to_dict() for c in self.conversions],
                "end_to_end_difference": self.end_to_end_difference}


def conversion_report(model: nn.Module) -> ConversionReport | None:
    """What :func:`convert` replaced in ``model`` (``None`` for a model :func:`convert` did not return)."""
    report = getattr(model, "lipzoo_interop", None)
    return report if isinstance(report, ConversionReport) else None


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _one_line(module: nn.Module) -> str:
    text = " ".join(repr(module).split())
    return text if len(text) <= 160 else text[:160] + "...)"


def _accepted(module: nn.Module) -> bool:
    try:
        module_state(module)
    except (TypeError, ValueError):
        return False
    return True


def _forced(module: nn.Module, cls: type) -> bool:
    """A peer's weight layer, or one frozen inside a peer's container: replaced by a plain one even when accepted. A
    parametrized weight may change on every read (orthogonium's power iteration), and the converted model should
    neither need the peer library nor hold parametrizations (torch cannot pickle them)."""
    frozen = any(isinstance(p, _Frozen) for plist in getattr(module, "parametrizations", {}).values() for p in plist)
    return (bool(library_of(cls)) or frozen) and isinstance(module, (nn.Conv2d, nn.Linear))


def _plain_sequential(module: nn.Module) -> bool:
    if not isinstance(module, nn.Sequential):
        return False
    try:
        resolve_known_class(module, (nn.Sequential,))
    except UnsupportedModule:
        return False  # a Sequential subclass with its own forward: a module like any other
    return not (module._forward_hooks or module._forward_pre_hooks)


class _Walk:
    def __init__(self, shapes: dict[str, list[Shape]], check: bool):
        self.shapes = shapes
        self.check = check
        self.records: list[Conversion] = []

    def convert(self, module: nn.Module, path: str) -> nn.Module:
        if _plain_sequential(module):
            # _modules, not named_children(): a module placed twice is converted at both places
            children = OrderedDict((n, self.convert(c, f"{path}.{n}" if path else n))
                                   for n, c in module._modules.items() if c is not None)
            if type(module) is nn.Sequential:
                for n, c in children.items():
                    setattr(module, n, c)
                return module
            return nn.Sequential(children)
        cls = peer_class(module)
        if not _forced(module, cls) and _accepted(module):
            return module
        found = candidates(module)
        if not found:
            return module  # not recognised: the accountant refuses it with its own message
        return self._replace(module, path, cls, found)

    def _replace(self, module: nn.Module, path: str, cls: type, found: list[Recogniser]) -> nn.Module:
        where = f"{path!r} " if path else ""

        def describe() -> str:
            return f"module {where}({_qualname(cls)})"

        refusal = next((r for r in found if r.refuse), None)
        if refusal is not None and all(r.refuse for r in found):
            raise UnsupportedModule(f"Cannot convert {describe()}: {refusal.refuse}.")
        shapes = self.shapes.get(path, [])
        ref = freeze(module).to(torch.float64)  # read in the module's dtype, then every derived value in float64
        errors = []
        for rec in (r for r in found if not r.refuse):
            ctx = Context(path, shapes, self.convert)
            try:
                equivalent = rec.build(ref, ctx)  # type: ignore[misc]  # refusers are skipped above
                diff = compare(ref, equivalent, shapes, exact=rec.exact and not ctx.scaled, describe=describe)
            except UnsupportedModule as err:
                errors.append(f"as {rec.what.split(':')[0]}: {err}")
                continue
            except (AttributeError, TypeError, ValueError, RuntimeError) as err:  # attributes the entry reads
                errors.append(f"as {rec.what.split(':')[0]}: reading it failed ({type(err).__name__}: {err})")
                continue
            for leaf, _ in _leaves_with_shapes(equivalent, shapes[0]):
                try:
                    module_state(leaf)  # the accountant takes it (a residual branch with one non-linear layer, ...)
                except (TypeError, ValueError) as err:
                    raise UnsupportedModule(f"Cannot convert {describe()}: its equivalent is refused by the "
                                            f"accountant: {err}") from None
            if self.check:
                _check_states(equivalent, shapes, describe)
            self.records.append(Conversion(path, _qualname(cls), _one_line(equivalent), rec.what, diff,
                                           float(getattr(module, "_coefficient_lip", 1.0))))
            return equivalent
        raise UnsupportedModule(f"Cannot convert {describe()}: it has the name of a layer lipzoo.interop recognises, "
                                f"but no equivalent computes what it computes. " + " | ".join(errors))


def _leaves_with_shapes(module: nn.Module, shape: Shape) -> list[tuple[nn.Module, Shape]]:
    """The leaves of an equivalent (a module or a plain nn.Sequential of them) with their input shapes."""
    if type(module) is not nn.Sequential:
        return [(module, shape)]
    out = []
    x = torch.zeros(1, *shape, dtype=torch.float64)
    for sub in module:
        out += _leaves_with_shapes(sub, tuple(x.shape[1:]))
        with torch.no_grad():
            x = copy.deepcopy(sub).to(torch.float64)(x)
    return out


def _small_shape(leaf: nn.Module, shape: Shape, limit: int) -> Shape | None:
    """The largest shape ``(C, h, w)`` with ``h <= H`` (``w`` in proportion) on which ``leaf`` works and whose
    input and output have at most ``limit`` dimensions; vectors keep their shape."""
    tries = [shape] if len(shape) != 3 else [(shape[0], h, max(1, round(shape[2] * h / shape[1])))
                                              for h in range(shape[1], 0, -1)]
    ref = copy.deepcopy(leaf).to(torch.float64)
    for s in tries:
        if math.prod(s) > limit:
            continue
        if isinstance(leaf, Residual):
            setattr(ref, "input_shape", s)
        try:
            with torch.no_grad():
                out = ref(torch.zeros(1, *s, dtype=torch.float64))
        except Exception:  # noqa: BLE001 - a shape the leaf cannot take: try a smaller one
            continue
        if out[0].numel() <= limit:
            return s
    return None


def _check_states(equivalent: nn.Module, shapes: list[Shape], describe) -> None:
    """:func:`check_lipschitz_state` on every leaf of the equivalent, on a small input shape."""
    for shape in shapes[:1]:
        for leaf, leaf_shape in _leaves_with_shapes(equivalent, shape):
            small = next((s for s in (_small_shape(leaf, leaf_shape, n) for n in _CHECK_DIMS) if s), None)
            if small is None:
                raise UnsupportedModule(f"{describe()}: its equivalent {type(leaf).__name__} has no input shape small "
                                        f"enough for lipzoo.layers.check_lipschitz_state (from {leaf_shape})")
            target = leaf
            if isinstance(leaf, Residual):
                target = copy.copy(leaf)
                setattr(target, "input_shape", small)  # only the state's bias (the pre-activations) depends on it
            try:
                check_lipschitz_state(target, small, max_dense=max(_CHECK_DIMS))
            except ValueError as err:
                raise UnsupportedModule(f"{describe()}: its equivalent fails lipzoo.layers.check_lipschitz_state: "
                                        f"{err}") from None


def convert(model: nn.Module, input_shape, *, check: bool = True) -> nn.Module:
    """A copy of ``model`` in eval mode in which every module the accountant does not accept as it is, but
    :mod:`lipzoo.interop` recognises by what it computes, is replaced by an equivalent it accepts.

    Recognised: deel-torchlip's and orthogonium's 1-Lipschitz layers (docs/interop.md lists them), before
    ``vanilla_export()`` too; a peer layer's parametrized weight is read once. Everything else passes through
    untouched, so :func:`lipzoo.lipschitz_bound` still refuses what nobody models, with its own message.

    Args:
        model: the network (not changed; any device and dtype).
        input_shape: the per-sample input shape, e.g. ``(1, 28, 28)``: the probes use the shapes the model feeds
            each module on such inputs.
        check: also run :func:`lipzoo.layers.check_lipschitz_state` on every equivalent and compare the converted
            model with the original end to end (float64). The per-module probes always run: they are how a
            module is recognised.

    Returns:
        The converted copy, in float64 (the arithmetic lipzoo certifies in; a weight a peer layer derives in its
        ``forward``, such as orthogonium's fused SLL kernels, is computed in float64 as the original computes it in
        float64), on the model's device, in eval mode; ``converted.lipzoo_interop`` is a
        :class:`ConversionReport` of what was replaced and how closely it matched.

    Raises:
        UnsupportedModule: a module has a recognised name but computes something else (the message names it, the
            candidate and the mismatch), or is a container lipzoo cannot express (the reason).
        ValueError: the model cannot take inputs of ``input_shape``; the converted model differs from the original
            end to end by more than :data:`END_TO_END_RTOL`.
    """
    from lipzoo.bounds.structure import _check_input_shape

    shape = _check_input_shape(input_shape)
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    shapes = record_input_shapes(model, shape)
    walk = _Walk(shapes, check)
    converted = walk.convert(copy.deepcopy(model).cpu().eval(), "").to(torch.float64).eval()
    end_to_end = None
    if check and walk.records:  # nothing replaced: the copy is the model (a frozen copy of lipzoo's own
        end_to_end = _end_to_end(model, converted, shape)  # parametrized layers would only differ by precision)
    converted = converted.to(device=device, dtype=torch.float64)
    converted.lipzoo_interop = ConversionReport(shape, tuple(walk.records), end_to_end)  # type: ignore[assignment]
    return converted


def _end_to_end(model: nn.Module, converted: nn.Module, shape: Shape) -> float:
    ref = freeze(model).to(torch.float64)
    conv = copy.deepcopy(converted).to(torch.float64)
    worst = 0.0
    for name, x in probe_inputs(shape, seed=1)[:5]:
        with torch.no_grad():
            want, got = ref(x), conv(x)
        scale = max(float(want.abs().max()), 1e-300)
        diff = float((want - got).abs().max()) / scale
        if not diff <= END_TO_END_RTOL:
            raise ValueError(f"The converted model differs from the original by {diff:.3g} of its outputs' scale on "
                             f"the probe {name!r} (at most {END_TO_END_RTOL:g} is allowed); every replaced layer "
                             "matched on its own, so a module's behaviour depends on something the probes did not "
                             "see. Please report it with the model.")
        worst = max(worst, diff)
    return worst
