"""Certification: certified radius (eq. 4), certified / PGD accuracy, attacks and plots."""

from lipzoo.certify.attacks import margin_loss, pgd_l2
from lipzoo.certify.metrics import certified_accuracy, certified_radius, evaluate, pairwise_radii, parse_eps
from lipzoo.certify.plots import certified_curve, plot_certified_curve

__all__ = [
    "certified_accuracy",
    "certified_curve",
    "certified_radius",
    "evaluate",
    "margin_loss",
    "pairwise_radii",
    "parse_eps",
    "pgd_l2",
    "plot_certified_curve",
]
