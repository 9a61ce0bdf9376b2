"""The floating-point rounding model every guaranteed computation in lipzoo uses (one home for its constants).

Standard model of float64 arithmetic (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
section 2.2 and 3.1): every operation is exact up to a relative ``u = 2**-53``; a sum of ``n`` products,
in any order, is within ``gamma_n sum |a_i b_i|`` of the exact one, ``gamma_n = n u / (1 - n u)``. The
proofs of :mod:`lipzoo.bounds` (rounding of Gram matrices, Cholesky certificates, ECLipsE) and of
:mod:`lipzoo.layers.operators` (rounding models of the primitive operators) are stated with these names.
"""

from __future__ import annotations

import math

__all__ = ["U", "FACTOR_MARGIN", "gamma", "up"]

U = 2.0 ** -53
"""Unit roundoff of float64."""

FACTOR_MARGIN = 1e-9
"""Relative margin on an operator's own ``norm_bound`` (FFT/polyphase bound of a convolution, dense norms).

The FFT of the kernel has absolute error ``<= log2(N^2) eta ||F||_F`` with ``eta ~ 5u`` (Higham, Thm 24.2),
``||F||_F = N ||w||_F`` (Parseval), while the bound itself is at least ``||w||_F / sqrt(min(c_in, c_out))``;
for grids up to ``N = 128`` and 512 channels that is a relative ``<= 14 * 5.6e-16 * 128 * 23 < 3e-11``; the
small SVDs add ``O(k u)``. ``1e-9`` covers both 30x over."""


def gamma(n: int) -> float:
    """``gamma_n = n u / (1 - n u)``: relative error bound of an ``n``-term float64 dot product."""
    return n * U / (1 - n * U)


def up(x: float, rel: float = 0.0) -> float:
    """``x (1 + rel)`` rounded up to the next float64 (``x >= 0``): covers the rounding of the few operations
    that produced ``x`` when ``rel`` bounds them."""
    return math.nextafter(x * (1 + rel), math.inf)
