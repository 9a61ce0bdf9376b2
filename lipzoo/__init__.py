"""lipzoo: certifiably robust networks from Lipschitz layers."""

from lipzoo.layers import (AvgPool2d, Flatten, LTConv2d, LTLinear, LTResidualConv, LTResidualLinear,
                           Normalize, register_activation)

__version__ = "0.1.0"

__all__ = [
    "AvgPool2d", "Flatten", "LTConv2d", "LTLinear", "LTResidualConv", "LTResidualLinear", "Normalize",
    "register_activation", "__version__",
]
