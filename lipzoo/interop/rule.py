"""The peers' own certificate: "every layer is 1-Lipschitz, so two logits differ by at most sqrt(2) ||delta||".

A point is certified at ``eps`` when its logit margin exceeds ``sqrt(2) * eps * K`` (orthogonium's ``VRA``; the
rule of deel-torchlip's tutorials for a 1-Lipschitz network, which use 2 instead of sqrt(2) after a head with
disjoint neurons), ``K`` the product of the Lipschitz constants the layers are built to have: 1 each
(deel-torchlip's ``k_coef_lip`` otherwise), times the user's own constant for a normalisation.
:func:`one_lipschitz_rule` states that constant twice:

* **claimed**: ``sqrt(2) * prod_k c_k`` with ``c_k`` the constant each layer is built to have, which nobody
  proved for the trained weights (a Björck or power iteration that has not converged, a layer that is
  1-Lipschitz per output only such as ``FrobeniusLinear(disjoint_neurons=True)`` or ``UnitNormLinear``);
* **proved**: ``sqrt(2) * prod_k L_k`` with ``L_k`` a Lipschitz constant of layer ``k`` proved by lipzoo's
  accountant for that layer alone: the smaller of ``method="naive"`` (eq. 11: exact or proved operator norms)
  and ``method="lt_sdp"`` (Theorem 2, which a residual layer needs), rounded up. A layer above its claim is
  one whose claim lipzoo cannot prove (a residual SLL block, 1-Lipschitz by its construction, can get a proved
  constant above 1: the accountant does not use the block's own diagonal).

The proved rule is the peers' rule made sound. lipzoo's pairwise LipLT bound is usually well below it (LipLT
composes the layers more tightly than a product of their constants); :func:`lipzoo.interop.compare_certificates`
certifies with the smaller of the two for every pair, so lipzoo's certificates are never looser than the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from torch import nn

from lipzoo.interop.probe import record_input_shapes
from lipzoo.numerics import up

__all__ = ["RuleLayer", "OneLipschitzRule", "one_lipschitz_rule"]

CLAIM_RTOL = 1e-4
"""A layer's proved constant counts as above its claim when it exceeds it by more than this (relative): a proved
bound carries the accountant's safety margins (a few 1e-6 relative), so a 1-Lipschitz sort's is 1.000002."""

SQRT2_UP = up(math.sqrt(2.0))  # >= sqrt(2): the proved constant is rounded up throughout


@dataclass(frozen=True)
class RuleLayer:
    """One layer of the rule: its path in the converted model, its class, the constant claimed for it and the one
    proved (with the guarantee of the norms: ``exact`` or ``proved``)."""

    path: str
    kind: str
    claimed: float
    proved: float
    guarantee: str

    @property
    def exceeds_claim(self) -> bool:
        """The proved constant is above the claimed one by more than the proof's own margins (:data:`CLAIM_RTOL`)."""
        return self.proved > self.claimed * (1 + CLAIM_RTOL)


@dataclass(frozen=True)
class OneLipschitzRule:
    """The rule's constants for a logit pair: ``claimed = sqrt(2) prod c_k``, ``proved = sqrt(2) prod ||layer_k||``."""

    layers: tuple[RuleLayer, ...]
    claimed: float
    proved: float
    guarantee: str

    @property
    def exceeding(self) -> tuple[RuleLayer, ...]:
        """The layers whose proved constant is above their claimed one."""
        return tuple(layer for layer in self.layers if layer.exceeds_claim)

    def to_dict(self) -> dict:
        return {"claimed": self.claimed, "proved": self.proved, "guarantee": self.guarantee,
                "layers": [dict(layer.__dict__) for layer in self.layers]}

    def format(self) -> str:
        """A per-layer table and the two constants."""
        w = max([len(layer.path) for layer in self.layers] + [5])
        lines = [f"{'layer':<{w}}  {'class':<28} {'claimed':>9} {'proved':>11}"]
        for layer in self.layers:
            flag = "  <- above its claim" if layer.exceeds_claim else ""
            lines.append(f"{layer.path:<{w}}  {layer.kind[:28]:<28} {layer.claimed:9.4g} {layer.proved:11.6g}{flag}")
        lines.append(f"sqrt(2) x product: claimed {self.claimed:.6g}, proved {self.proved:.6g} ({self.guarantee})")
        return "\n".join(lines)


def _units(model: nn.Module, converted: set[str], path: str = "") -> list[tuple[str, nn.Module]]:
    """The layers of the rule: the modules of nested plain ``nn.Sequential`` containers, in order; the equivalent
    of a converted layer is one layer (a sort followed by deel-torchlip's ``k_coef_lip``, say)."""
    if type(model) is nn.Sequential and path not in converted:
        return [u for n, c in model.named_children() for u in _units(c, converted, f"{path}.{n}" if path else n)]
    return [(path, model)]


RULE_MAX_DENSE = 1024
"""Operators of a layer with a side of at most this many dimensions get exact norms in the rule, larger ones their
proved bounds (``norm_bound``: exact for pools, the FFT bound for convolutions); the rule is an upper bound either
way, and a 16 x 28 x 28 pooling would take 20 s exactly."""


def _layer_bound(unit: nn.Module, shape, max_dense: int = RULE_MAX_DENSE) -> tuple[float, str]:
    """A proved Lipschitz constant of one layer, from the accountant's per-layer bounds
    (:mod:`lipzoo.bounds.layerwise`): each block of eq. (14) gets the smaller of eq. (11) (``naive``) and Theorem 2
    (``lt_sdp``, the l2 refinement a residual layer needs), the affine rest its operator norm (exact when a side has
    at most ``max_dense`` dimensions, a proved bound otherwise); their product, rounded up."""
    import torch

    from lipzoo.bounds.layerwise import naive_layer, sdp_layer
    from lipzoo.bounds.norms import chain_norm, mul_up
    from lipzoo.bounds.structure import build_structure

    structure = build_structure(nn.Sequential(unit).to(torch.float64), shape)
    gen = torch.Generator().manual_seed(0)  # unused by the guaranteed norms (norm="auto")
    naive = naive_layer("auto", max_dense, 0, gen)
    sdp = sdp_layer("auto", max_dense, 0, gen, "best")
    total, kinds = torch.tensor(1.0, dtype=torch.float64), []
    for blk in structure.blocks:
        (a, ka), (b, kb) = naive(blk), sdp(blk)
        total = mul_up(total, torch.minimum(torch.as_tensor(a, dtype=torch.float64),
                                            torch.as_tensor(b, dtype=torch.float64)))
        kinds += list(ka) + list(kb)
    if structure.output is not None:
        last = structure.blocks[-1].next_shape if structure.blocks else structure.input_shape
        out = chain_norm([structure.output], last, max_dense=max_dense)
        total = mul_up(total, out.value)
        kinds.append(out.guarantee)
    return float(total.detach()), _weakest(kinds)


def _weakest(kinds) -> str:
    from lipzoo.bounds.norms import weakest_guarantee

    return weakest_guarantee(list(kinds) + ["exact"])


def one_lipschitz_rule(model: nn.Module, input_shape, *,
                       claimed: Mapping[str, float] | None = None) -> OneLipschitzRule:
    """The 1-Lipschitz rule's constant for a logit pair, claimed and proved (see the module docstring).

    Args:
        model: a peer network (converted first with :func:`lipzoo.interop.convert`) or a converted one.
        input_shape: the per-sample input shape.
        claimed: constants claimed for some layers, by path (e.g. ``{"0": 1 / 0.3081}`` for a normalisation
            the peer accounts for with ``1/std``); every other layer is claimed at deel-torchlip's ``k_coef_lip``
            where the conversion read one, else 1.

    Returns:
        A :class:`OneLipschitzRule`.

    Raises:
        ValueError: a path of ``claimed`` is not a layer of the model, or a claimed value is not a positive number.
        TypeError: a layer the accountant cannot bound (after conversion).
    """
    from lipzoo.bounds.norms import weakest_guarantee
    from lipzoo.bounds.structure import _check_input_shape
    from lipzoo.interop.conversion import conversion_report, convert

    shape = _check_input_shape(input_shape)
    report = conversion_report(model)
    if report is None:
        model = convert(model, shape, check=False)
        report = conversion_report(model)
    coefficients = {c.path: c.claimed for c in (report.conversions if report is not None else ())}
    units = _units(model, set(coefficients) - {""})
    paths = {p for p, _ in units}
    claims = dict(claimed or {})
    unknown = sorted(set(claims) - paths)
    if unknown:
        raise ValueError(f"claimed names layers {unknown} that the model does not have; its layers are "
                         f"{sorted(paths)}.")
    for p, v in claims.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"claimed[{p!r}] must be a positive number, got {v!r}.")
    shapes = record_input_shapes(model, shape)
    layers, kinds = [], []
    prod_claimed, prod_proved = math.sqrt(2.0), SQRT2_UP
    for path, unit in units:
        unit_shapes = shapes.get(path)
        if not unit_shapes:
            continue  # never called on such inputs
        proved, guarantee = 0.0, "exact"
        for unit_shape in unit_shapes:
            value, how = _layer_bound(unit, unit_shape)
            proved, guarantee = max(proved, value), weakest_guarantee([guarantee, how])
        c = float(claims.get(path, coefficients.get(path, 1.0)))
        layers.append(RuleLayer(path, type(unit).__name__, c, proved, guarantee))
        kinds.append(guarantee)
        prod_claimed *= c
        prod_proved = up(prod_proved * proved)
    return OneLipschitzRule(tuple(layers), prod_claimed, prod_proved, weakest_guarantee(kinds + ["exact"]))
