"""Interoperability with other 1-Lipschitz libraries (deel-torchlip, orthogonium).

* :func:`convert`: a copy of their network that lipzoo's accountant bounds (each layer recognised by what it
  computes, never by its name alone);
* :func:`one_lipschitz_rule`: their own certificate constant, ``sqrt(2)`` times the product of the layers'
  constants, claimed and proved;
* :func:`compare_certificates`: certified accuracy under their rule and under lipzoo's pairwise bound, side by side
  (``lipzoo interop`` on the command line).

See docs/interop.md. Neither library is imported here; both are optional (``pip install lipzoo[interop]``).
"""

from lipzoo.interop.compare import compare_certificates
from lipzoo.interop.conversion import Conversion, ConversionReport, convert
from lipzoo.interop.modules import Residual
from lipzoo.interop.rule import OneLipschitzRule, RuleLayer, one_lipschitz_rule

__all__ = ["Conversion", "ConversionReport", "OneLipschitzRule", "Residual", "RuleLayer", "compare_certificates",
           "convert", "one_lipschitz_rule"]
