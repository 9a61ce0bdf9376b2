"""The options of a Lipschitz bound: one frozen object from the command line to the planner and the cache key.

A bound is a function of the model, its input shape and a :class:`BoundOptions` (and of the code): the same
options give the same value, bit for bit, on a machine whatever its load (no option is a time). The command line
and :func:`lipzoo.lipschitz_bound` build one at the edge; :meth:`BoundOptions.cache_request` is what the cache key
holds of it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lipzoo.bounds.cost import DEFAULT_EFFORT, resolve_effort

__all__ = ["BoundOptions", "METHODS", "NORMS", "SDP_T", "MODES", "LANCZOS_STEPS", "POWER_STEPS"]

METHODS = ("liplt", "naive", "lt_sdp", "eclipse", "best")
SDP_T = ("sn", "aol", "sll", "best")
NORMS = ("auto", "exact", "power", "lanczos")
MODES = ("global", "per_class", "pairwise")

LANCZOS_STEPS = 320
"""Default Lanczos steps of ``norm="lanczos"``: with ``failure_probability=1e-9`` over ~30 operators of up
to ~3e4 dimensions, each inner norm is inflated by at most ~0.1 % over its Ritz value (see
:func:`lipzoo.bounds.lanczos.lanczos_epsilon`), and the pairwise bound of 4C3F lands within 1 % of the
converged estimate."""

POWER_STEPS = 200
"""Default power iterations of ``norm="power"`` (an estimate)."""


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


@dataclass(frozen=True)
class BoundOptions:
    """How a Lipschitz bound is computed (see :func:`lipzoo.lipschitz_bound` for each field).

    Every field is checked when the object is made, ``n_iter=None`` becomes the default of the norm path and a
    named ``effort`` keeps its name (``effort_units`` is its value)."""

    method: str = "liplt"
    norm: str = "auto"
    max_dense: int | None = None
    n_iter: int | None = None
    dtype: torch.dtype = torch.float64
    seed: int | None = 0
    sdp_t: str = "best"
    effort: str | float = DEFAULT_EFFORT
    failure_probability: float = 1e-9

    def __post_init__(self):
        _check_choice("method", self.method, METHODS)
        _check_choice("sdp_t", self.sdp_t, SDP_T)
        _check_choice("norm", self.norm, NORMS)
        if self.max_dense is not None and (isinstance(self.max_dense, bool) or not isinstance(self.max_dense, int)
                                           or self.max_dense < 0):
            raise ValueError(f"max_dense must be a non-negative int or None, got {self.max_dense!r}.")
        resolve_effort(self.effort)  # raises with the accepted values
        if not isinstance(self.effort, str):
            object.__setattr__(self, "effort", float(self.effort))
        if not 0 < self.failure_probability < 1:
            raise ValueError(f"failure_probability must be in (0, 1), got {self.failure_probability!r}.")
        if self.norm == "lanczos" and self.method not in ("liplt", "best"):
            raise ValueError(f"norm='lanczos' bounds the LipLT operators: use method='liplt' or 'best', not "
                             f"{self.method!r}.")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {self.dtype!r}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {self.seed!r}.")
        if self.n_iter is None:
            object.__setattr__(self, "n_iter", LANCZOS_STEPS if self.norm == "lanczos" else POWER_STEPS)
        elif isinstance(self.n_iter, bool) or not isinstance(self.n_iter, int) or self.n_iter < 1:
            raise ValueError(f"n_iter must be a positive int or None, got {self.n_iter!r}.")

    @property
    def effort_units(self) -> float:
        """The refinement's effort in work units (:mod:`lipzoo.bounds.cost`)."""
        return resolve_effort(self.effort)

    def replace(self, **changes) -> "BoundOptions":
        return dataclasses.replace(self, **changes)

    def cache_request(self) -> dict:
        """What the cache key holds of these options: every field that can change the value (the effort only for
        the guaranteed path, the failure probability only for the probabilistic one)."""
        return {"method": self.method, "norm": self.norm, "max_dense": self.max_dense, "n_iter": self.n_iter,
                "dtype": str(self.dtype), "seed": "fresh" if self.seed is None else self.seed, "sdp_t": self.sdp_t,
                **({"effort": self.effort_units} if self.norm == "auto" else {}),
                **({"failure_probability": self.failure_probability} if self.norm == "lanczos" else {})}

    def to_dict(self) -> dict:
        """A JSON-ready record of the options (reports, cards, shipped certificates)."""
        return {**self.cache_request(), "effort": self.effort, "failure_probability": self.failure_probability}
