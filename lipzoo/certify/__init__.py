"""Certification: certified radius (eq. 4), certified / PGD accuracy, attacks and plots.

The boundary takes a :class:`lipzoo.LipschitzBound`, never a raw tensor: :func:`evaluate`,
:func:`certified_radius` and :func:`lipzoo.certify.report.certify` refuse an estimate unless
``allow_estimate=True``, and then label everything ``estimated``. :func:`pairwise_radii` is the
low-level term of eq. (4) on a raw tensor (trusted as given).

Radii account for floating point: :func:`evaluate` subtracts ``2E`` from every margin, ``E`` a proved
bound on the rounding of the logit differences (:func:`margin_error_bound`, docs/bounds.md "What
certified means in floating point"); :func:`certified_radius` takes ``E`` as a required ``margin_error``.

PGD (:func:`evaluate` with ``attack``) runs on the correctly classified points that a guaranteed bound
does not certify at eps; ``attack_all=True`` also attacks the certified ones and raises
:class:`UnsoundBoundError` if one breaks.
"""

from lipzoo.certify.attacks import margin_loss, pgd_l2
from lipzoo.certify.metrics import (UnsoundBoundError, certified_accuracy, certified_radius, evaluate,
                                    pairwise_constants, pairwise_radii, parse_eps, radius_kind)
from lipzoo.certify.plots import certified_curve, plot_certified_curve
from lipzoo.certify.rounding import margin_error_bound, rounding_plan, unit_roundoff

__all__ = [
    "UnsoundBoundError",
    "certified_accuracy",
    "certified_curve",
    "certified_radius",
    "evaluate",
    "margin_error_bound",
    "margin_loss",
    "pairwise_constants",
    "pairwise_radii",
    "parse_eps",
    "pgd_l2",
    "plot_certified_curve",
    "radius_kind",
    "rounding_plan",
    "unit_roundoff",
]
