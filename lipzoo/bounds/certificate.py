"""The certificate type: a Lipschitz bound, the guarantee it carries, and the model it belongs to.

:class:`LipschitzBound` is immutable and records the fingerprint of the structure it bounds
(:mod:`lipzoo.bounds.fingerprint`). Only the accountant vouches for a bound (:func:`_vouch`, read as
:attr:`LipschitzBound.trusted`); :func:`check_bound_for` is the one gate every consumer of a certificate
goes through: the bound must be vouched for and be this model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import FrozenInstanceError, dataclass, field
from types import MappingProxyType

import torch
from torch import nn

from lipzoo.bounds.fingerprint import check_owner
from lipzoo.bounds.norms import GUARANTEE_ORDER

__all__ = ["LipschitzBound", "check_bound_for", "MODES", "PROVED"]

MODES = ("global", "per_class", "pairwise")
PROVED = ("exact", "proved")
"""The guarantees of a proved upper bound (``LipschitzBound.guaranteed``)."""


class _ReadOnlyTensor:
    """Field descriptor: stores a detached private copy, hands out a fresh clone on every read.

    Writing into ``bound.value`` (``bound.value[0, 1] = 0``) therefore changes nothing that the bound
    holds; assigning ``bound.value = ...`` raises like any other field of a frozen dataclass.
    """

    def __set_name__(self, owner, name):
        self._slot = "_" + name

    def __get__(self, obj, objtype=None):
        if obj is None:  # no class-level default: the dataclass field is required
            raise AttributeError(self._slot[1:])
        return obj.__dict__[self._slot].clone()

    def __set__(self, obj, value):
        if self._slot in obj.__dict__:
            raise FrozenInstanceError(f"cannot assign to field {self._slot[1:]!r}")
        tensor = torch.as_tensor(value).detach().clone()
        obj.__dict__[self._slot] = tensor


def _freeze(obj):
    """Immutable copy of nested dicts / lists (``MappingProxyType`` / tuples)."""
    if isinstance(obj, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return tuple(_freeze(v) for v in obj)
    if torch.is_tensor(obj):
        return obj.detach().cpu().tolist()
    return obj


def _thaw(obj):
    """Plain ``dict`` / ``list`` copy of :func:`_freeze` output (for JSON)."""
    if isinstance(obj, Mapping):
        return {k: _thaw(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_thaw(v) for v in obj]
    return obj


@dataclass(frozen=True, eq=False)
class LipschitzBound:
    """A Lipschitz bound and the guarantee it carries: the certificate type of lipzoo.

    Immutable: the dataclass is frozen, ``value`` is a private copy (each read returns a fresh
    clone, so writing into it changes nothing), ``layer_bounds`` is a tuple and ``details`` a
    read-only mapping. :func:`lipzoo.certify.evaluate` and :func:`lipzoo.certify.report.certify`
    take this type, never a raw tensor, and refuse ``guarantee="estimate"`` unless asked.

    Attributes:
        value: ``()`` for ``mode="global"``, ``(K,)`` for ``"per_class"``, ``(K, K)`` for
            ``"pairwise"`` (zero diagonal; entry ``(i, j)`` bounds the Lipschitz constant of
            ``z_i - z_j``).
        guaranteed: True only when every operator norm inside is a proved upper bound
            (``guarantee`` ``"exact"`` or ``"proved"``).
        guarantee: ``"exact"`` (all norms exact, computed in float64, with a rounding margin, see
            :data:`lipzoo.bounds.norms.EXACT_MARGIN`), ``"proved"`` (some norms are proved upper
            bounds, e.g. FFT bounds of convolutions), ``"probabilistic"`` (an upper bound except with
            probability at most ``failure_probability`` over random start vectors, see
            :mod:`lipzoo.bounds.lanczos`) or ``"estimate"`` (power iteration: may *under*-estimate;
            not a certificate).
        failure_probability: ``0`` for exact / proved bounds, the stated probability for a
            probabilistic one, ``1`` for an estimate (nothing is promised).
        method, mode, norm: how it was computed.
        layer_bounds: ``m_t`` for every block (global Lipschitz constant of ``x_0 -> y_t``).
        details: per-operator norms and their guarantees; with ``norm="auto"``, ``"liplt_at_estimates"``
            (per mode, shaped like ``value``): the recursion at every norm's estimate from below (Lanczos
            Ritz values), so the exact LipLT value lies between it and the bound (up to the estimates'
            rounding, ~1e-6 relative) -- how much tighter any computation of LipLT could get.
    """

    value: torch.Tensor = _ReadOnlyTensor()  # type: ignore[assignment]  # a descriptor: reads give a tensor
    guaranteed: bool = True
    guarantee: str = "exact"
    method: str = "liplt"
    mode: str = "pairwise"
    norm: str = "auto"
    layer_bounds: tuple = ()
    details: Mapping = field(default_factory=dict)
    failure_probability: float | None = None
    fingerprint: str | None = None
    model_summary: str | None = None

    def __post_init__(self):
        # Built through the constructor (by hand, from a stored record, by dataclasses.replace): not vouched
        # for. Only the accountant marks the bounds it computed or checked (_vouch); see `trusted`.
        object.__setattr__(self, "_vouched", False)
        if self.guarantee not in GUARANTEE_ORDER:
            raise ValueError(f"guarantee must be one of {tuple(GUARANTEE_ORDER)}, got {self.guarantee!r}.")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if bool(self.guaranteed) != (self.guarantee in PROVED):
            raise ValueError(f"guaranteed={self.guaranteed!r} contradicts guarantee={self.guarantee!r}.")
        object.__setattr__(self, "guaranteed", bool(self.guaranteed))
        p = {"exact": 0.0, "proved": 0.0, "estimate": 1.0}.get(self.guarantee, self.failure_probability)
        if self.failure_probability is not None and float(self.failure_probability) != p:
            raise ValueError(f"failure_probability={self.failure_probability!r} contradicts guarantee="
                             f"{self.guarantee!r}.")
        if p is None or not 0 <= float(p) <= 1 or (self.guarantee == "probabilistic" and not 0 < p < 1):
            raise ValueError(f"a {self.guarantee} bound needs a failure_probability in (0, 1), got {p!r}.")
        object.__setattr__(self, "failure_probability", float(p))
        object.__setattr__(self, "layer_bounds", tuple(float(x) for x in self.layer_bounds))
        object.__setattr__(self, "details", _freeze(self.details))

    @property
    def trusted(self) -> bool:
        """Whether lipzoo's accountant computed this bound in this process (:func:`lipschitz_bound`, or a cache
        entry it checked), for the model named by :attr:`fingerprint`. A bound built by hand or from a record
        (:meth:`from_dict`) is not: where a certificate is required it is refused, whatever its ``guarantee``
        says (:func:`lipzoo.certify.evaluate`, :func:`check_bound_for`)."""
        return self.__dict__.get("_vouched", False)

    @property
    def num_classes(self) -> int | None:
        """``K`` for per-class / pairwise bounds, None for a global one."""
        return None if self.mode == "global" else int(self.__dict__["_value"].shape[0])

    @property
    def liplt_at_estimates(self) -> torch.Tensor | None:
        """``details["liplt_at_estimates"]`` of this bound's mode as a float64 tensor shaped like ``value`` (the
        exact LipLT value lies between it and the bound), or None where it was not computed."""
        below = (self.details.get("liplt_at_estimates") or {}).get(self.mode)
        return None if below is None else torch.as_tensor(below, dtype=torch.float64)

    def to_dict(self) -> dict:
        return {"method": self.method, "mode": self.mode, "norm": self.norm,
                "guaranteed": self.guaranteed, "guarantee": self.guarantee,
                "failure_probability": self.failure_probability,
                "value": self.__dict__["_value"].tolist(), "layer_bounds": list(self.layer_bounds),
                "fingerprint": self.fingerprint, "model_summary": self.model_summary}

    @classmethod
    def from_dict(cls, record: Mapping) -> "LipschitzBound":
        """A bound from :meth:`to_dict` output (e.g. the ``bound`` stored with a checkpoint).

        The result is not :attr:`trusted`: a record is a claim, so consumers of certificates refuse it
        (use it with ``allow_estimate=True`` to get radii labelled ``estimated``). Recompute with
        :func:`lipschitz_bound` for a certificate.
        """
        return cls(value=torch.tensor(record["value"], dtype=torch.float64),
                   guaranteed=record.get("guaranteed", record.get("guarantee", "estimate") in PROVED),
                   failure_probability=record.get("failure_probability"),
                   guarantee=record.get("guarantee", "estimate"), method=record.get("method", "liplt"),
                   mode=record.get("mode", "pairwise"), norm=record.get("norm", "auto"),
                   layer_bounds=record.get("layer_bounds", ()), fingerprint=record.get("fingerprint"),
                   model_summary=record.get("model_summary"))


def _vouch(bound: LipschitzBound) -> LipschitzBound:
    """Mark a bound this accountant computed (or a cache entry it checked) as :attr:`LipschitzBound.trusted`."""
    object.__setattr__(bound, "_vouched", True)
    return bound


def check_bound_for(bound: LipschitzBound, model: nn.Module, input_shape, *, where: str = "certify",
                    allow_untrusted: bool = False) -> None:
    """Refuse ``bound`` for ``model`` on inputs of ``input_shape`` unless it is this model's certificate.

    Raises ``ValueError`` (one line naming both) when the bound records the fingerprint of another structure
    or weights, and, unless ``allow_untrusted``, when it is not :attr:`LipschitzBound.trusted` (built by
    hand or from a stored record). ``allow_untrusted`` is for consumers that label everything ``estimated``.
    """
    if not isinstance(bound, LipschitzBound):
        raise TypeError(f"{where}: bound must be a lipzoo.LipschitzBound, got {type(bound).__name__}.")
    if not bound.trusted and not allow_untrusted:
        raise ValueError(f"{where}: this {bound.guarantee} bound was not computed by lipzoo.lipschitz_bound (built by "
                         "hand or from a stored record), so it is not a certificate; compute the model's bound with "
                         "lipzoo.lipschitz_bound, or pass allow_estimate=True to get radii labelled 'estimated'.")
    if bound.fingerprint is None:
        if allow_untrusted:
            return
        raise ValueError(f"{where}: the bound names no model (no fingerprint); compute it with lipzoo.lipschitz_bound.")
    check_owner(bound.fingerprint, bound.model_summary, model, input_shape, where)
