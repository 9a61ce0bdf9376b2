"""What a module computes, observed: frozen copies, the input shapes a model feeds its modules, probe inputs
and the comparison of a candidate equivalent with the original.

A peer layer is never trusted by its name. :func:`compare` runs the original and the candidate, both as float64
copies on the CPU, on probe inputs of every shape the model feeds the module (:func:`probe_inputs`: random
normal at four scales, negative values, zeros, ties and repeated values, huge values) and accepts the candidate
only if the outputs match: bit for bit where the candidate computes the same operations (sorts, max-min,
permutations), to :data:`RTOL` of the outputs' scale otherwise.

Parametrized weights (``torch.nn.utils.parametrize``) are read **once** (:func:`freeze`): orthogonium's
``BatchedPowerIteration`` runs power iterations on every read of the weight, in eval mode too, so two reads
give two different weights (3.8e-7 apart on a fresh layer). The frozen copy holds the values of one read, in
the module's own dtype; its ``forward`` is the original class's, and the candidate is built from the same
values, so the probes compare what the module computes with that weight.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from lipzoo.layers.state import UnsupportedModule

__all__ = ["RTOL", "freeze", "record_input_shapes", "probe_inputs", "compare", "Shape"]

Shape = tuple[int, ...]

RTOL = 1e-12
"""Largest ``max |candidate - original| / scale`` accepted for an equivalent that is not computed by the same
operations (``scale``: the largest magnitude of the input and of the original's output). Float64 rounding of a
few dozen operations is ~1e-15; a wrong equivalent is off by far more."""


class _Frozen(nn.Module):
    """A parametrization that returns the value it holds, whatever the original tensor(s)."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, *originals):
        return self.value


def freeze(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (CPU, eval mode, its own dtype) whose parametrized tensors hold the values of one read
    (:mod:`torch.nn.utils.parametrize`), so that every later read gives the same values.

    Each parametrization list of the copy is replaced by one that returns the value read. (Removing the
    parametrizations instead would delete the property from the parametrized class, which ``copy.deepcopy``
    shares with the original module: the original would lose its weight.)"""
    ref = copy.deepcopy(module).cpu().eval()
    owners = [sub for name, sub in ref.named_modules()
              if parametrize.is_parametrized(sub) and "parametrizations" not in name.split(".")]
    with torch.no_grad(), parametrize.cached():
        values = [(sub, tname, getattr(sub, tname).detach().clone())
                  for sub in owners for tname in list(sub.parametrizations.keys())]
    for sub, tname, value in values:
        plist = sub.parametrizations[tname]
        for key in list(plist._modules):
            del plist._modules[key]
        plist.append(_Frozen(value))
    return ref


def record_input_shapes(model: nn.Module, input_shape: Shape) -> dict[str, list[Shape]]:
    """``{module path: [per-sample input shapes]}`` for every module ``model`` calls on an input of ``input_shape``
    (one entry per distinct shape; the root is ``""``). Runs a frozen copy on zeros; the model is not touched."""
    ref = freeze(model)
    shapes: dict[str, list[Shape]] = {}
    paths: dict[int, list[str]] = {}  # a module used at several places records its inputs under each of its paths
    for name, m in ref.named_modules(remove_duplicate=False):
        if "parametrizations" not in name.split("."):
            paths.setdefault(id(m), []).append(name)
    handles = []

    def hook(mod, args):
        if args and torch.is_tensor(args[0]):
            shape = tuple(args[0].shape[1:])
            for name in paths[id(mod)]:
                seen = shapes.setdefault(name, [])
                if shape not in seen:
                    seen.append(shape)

    for m in {id(m): m for m in ref.modules()}.values():
        if id(m) in paths:
            handles.append(m.register_forward_pre_hook(hook))
    try:
        dtype = next((p.dtype for p in ref.parameters() if p.is_floating_point()), torch.get_default_dtype())
        with torch.no_grad():
            ref(torch.zeros(1, *input_shape, dtype=dtype))
    except Exception as err:  # noqa: BLE001 - any failure of the user's model is reported with its cause
        raise ValueError(f"The model cannot take inputs of shape {tuple(input_shape)}: {type(err).__name__}: {err}. "
                         "Pass the per-sample input shape it was built for (e.g. 1 28 28 for MNIST).") from err
    finally:
        for h in handles:
            h.remove()
    return shapes


def probe_inputs(shape: Shape, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """Named float64 probe batches of per-sample ``shape``: normal at scales 1e-3, 1, 30 and 1e3, negative
    values, zeros, ties (integers in [-2, 2], so groups and pairs hold repeated values) and constant inputs."""
    gen = torch.Generator().manual_seed(seed)
    def normal() -> torch.Tensor:
        return torch.randn(3, *shape, generator=gen, dtype=torch.float64)

    ties = torch.randint(-2, 3, (3, *shape), generator=gen).to(torch.float64)
    return [("normal*1e-3", normal() * 1e-3), ("normal", normal()), ("normal*30", normal() * 30),
            ("normal*1e3", normal() * 1e3), ("negative", -normal().abs()), ("zeros", torch.zeros(1, *shape,
                                                                                               dtype=torch.float64)),
            ("ties", ties), ("constant", torch.full((2, *shape), 0.5, dtype=torch.float64).mul_(
                torch.tensor([1.0, -3.0], dtype=torch.float64).reshape(2, *[1] * len(shape))))]


def _run(module: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return module(x)


def compare(original: nn.Module, candidate: nn.Module, shapes: list[Shape], *, exact: bool,
            describe: Callable[[], str]) -> float:
    """The largest relative difference between ``candidate`` and ``original`` (frozen copies) over the probes.

    Raises :class:`~lipzoo.layers.UnsupportedModule` naming the module (``describe()``), the probe and the mismatch
    when the outputs differ (``exact``: any bit; else more than :data:`RTOL` of their scale), when their shapes
    differ or when the original fails on a probe its model feeds it.
    """
    ref = copy.deepcopy(original).to(torch.float64)
    cand = copy.deepcopy(candidate).cpu().to(torch.float64).eval()
    worst = 0.0
    if not shapes:
        raise UnsupportedModule(f"{describe()} is never called on an input of the given input_shape, so what it "
                                "computes cannot be observed")
    for shape in shapes:
        for name, x in probe_inputs(shape):
            try:
                want = _run(ref, x)
            except Exception as err:  # noqa: BLE001 - the peer module's own failure, reported
                raise UnsupportedModule(f"{describe()} fails on inputs of shape {shape} ({type(err).__name__}: "
                                        f"{err})") from None
            try:
                got = _run(cand, x)
            except Exception as err:  # noqa: BLE001
                raise UnsupportedModule(f"{describe()}: the candidate equivalent {type(candidate).__name__} fails on "
                                        f"inputs of shape {shape} ({type(err).__name__}: {err})") from None
            if not torch.is_tensor(want) or not torch.is_tensor(got) or want.shape != got.shape:
                ws = tuple(want.shape) if torch.is_tensor(want) else type(want).__name__
                gs = tuple(got.shape) if torch.is_tensor(got) else type(got).__name__
                raise UnsupportedModule(f"{describe()} gives outputs of shape {ws} on the probe {name!r} of shape "
                                        f"{shape}, the candidate {type(candidate).__name__} {gs}")
            if exact:
                same = torch.equal(want, got) or bool(((want == got) | (want.isnan() & got.isnan())).all())
                if not same:
                    diff = float((want - got).abs().nan_to_num(math.inf).max())
                    raise UnsupportedModule(f"{describe()} does not compute what the candidate "
                                            f"{type(candidate).__name__} computes: on the probe {name!r} of shape "
                                            f"{shape} the outputs differ by up to {diff:.3g} (an exact match was "
                                            "required)")
                continue
            scale = max(float(want.abs().max()) if want.numel() else 0.0, float(x.abs().max()), 1e-300)
            diff = float((want - got).abs().max()) if want.numel() else 0.0
            if not diff <= RTOL * scale:
                raise UnsupportedModule(f"{describe()} does not compute what the candidate {type(candidate).__name__} "
                                        f"computes: on the probe {name!r} of shape {shape} the outputs differ by "
                                        f"{diff:.3g}, {diff / scale:.3g} of their scale {scale:.3g} (at most "
                                        f"{RTOL:g} was allowed)")
            worst = max(worst, diff / scale)
    return worst
