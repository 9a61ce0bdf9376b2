"""Layers that declare their Lipschitz structure (paper eq. 14) through ``lipschitz_state()``."""

from lipzoo.layers.activations import ActivationSpec, get_activation, list_activations, register_activation
from lipzoo.layers.aol import AOLConv2d, AOLLinear
from lipzoo.layers.conformance import ConformanceReport, check_lipschitz_state
from lipzoo.layers.groupwise import CReLU, FullSort, GroupSort, L2NormPool2d, MaxMin
from lipzoo.layers.lt import AvgPool2d, Flatten, LTConv2d, LTLinear, Normalize
from lipzoo.layers.operators import LinearOperator
from lipzoo.layers.residual import LTResidualConv, LTResidualLinear
from lipzoo.layers.sll import SLLConv2d, SLLLinear
from lipzoo.layers.state import LipschitzState, UnsupportedModule
from lipzoo.layers.torch_modules import module_state

__all__ = [
    "AOLConv2d", "AOLLinear", "ActivationSpec", "AvgPool2d", "CReLU", "ConformanceReport", "Flatten", "FullSort",
    "GroupSort", "L2NormPool2d", "LTConv2d", "LTLinear", "LTResidualConv", "LTResidualLinear", "LinearOperator",
    "LipschitzState", "MaxMin", "Normalize", "SLLConv2d", "SLLLinear", "UnsupportedModule", "check_lipschitz_state",
    "get_activation", "list_activations", "module_state", "register_activation",
]
