"""Certification radii kept exact: :class:`Eps` and :func:`parse_eps`, the one parser of an eps."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any



# -- eps ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Eps:
    """A certification radius (ℓ2, pixel units) kept exact, with the text it was written as.

    Two ``Eps`` are equal when their values are (``"1.58" == "79/50"``); ``str()`` gives the text.
    """

    value: Fraction
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text

    def __float__(self) -> float:
        return float(self.value)


def parse_eps(eps: Any, *, where: str = "eps", allow_zero: bool = False) -> Eps:
    """Parse a radius written exactly: ``"36/255"``, ``"1.58"``, ``Fraction(36, 255)``, ``2`` or an ``Eps``.

    Args:
        eps: the value; a ``float`` is refused because it is not exact (write ``"1.58"``).
        where: what the value is, for the error message (``"--eps"``, ``"certify.eps[0]"``).
        allow_zero: accept ``0`` (a clean-accuracy point), otherwise ``eps`` must be positive.

    Raises:
        TypeError: not a string, int, Fraction or Eps.
        ValueError: not a fraction, or not positive (non-negative with ``allow_zero``).
    """
    if isinstance(eps, Eps):
        value, text = eps.value, eps.text
    elif isinstance(eps, str):
        text = eps.strip()
        try:
            value = Fraction(text)
        except (ValueError, ZeroDivisionError) as err:
            raise ValueError(f"{where}: {eps!r} is not a fraction; write it like '36/255' or '1.58'.") from err
    elif isinstance(eps, (int, Fraction)) and not isinstance(eps, bool):
        value, text = Fraction(eps), str(eps)
    else:
        hint = f"; quote it: '{eps}'" if isinstance(eps, float) else ""
        raise TypeError(f"{where} must be an exact fraction string such as '36/255' or '1.58', got "
                        f"{type(eps).__name__} {eps!r}{hint}.")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{where} must be {'>= 0' if allow_zero else 'positive'}, got {text!r}.")
    return Eps(value, text)

