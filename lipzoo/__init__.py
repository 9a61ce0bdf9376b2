"""lipzoo: certifiably robust networks from Lipschitz layers.

Reading order = import order: layers -> bounds -> losses -> certify -> data -> models -> hub -> train/cli.
"""

from lipzoo.bounds import LipschitzBound, lipschitz_bound, lipschitz_bounds
from lipzoo.bounds.estimator import LipLTEstimator
from lipzoo.layers import (AvgPool2d, Flatten, LTConv2d, LTLinear, LTResidualConv, LTResidualLinear,
                           Normalize, register_activation)
from lipzoo.losses import CRMLoss, crm_loss
from lipzoo.models import create_model, export, list_models, list_pretrained, register_model
from lipzoo.models import timm_bridge  # noqa: F401  (makes timm.create_model("lipzoo_6c2f") work)
from lipzoo.hub import load, push, save_pretrained  # noqa: E402  (installs the pretrained loader)

__version__ = "0.1.0"

__all__ = [
    "AvgPool2d", "CRMLoss", "Flatten", "LTConv2d", "LTLinear", "LTResidualConv", "LTResidualLinear",
    "LipLTEstimator", "LipschitzBound", "Normalize", "create_model", "crm_loss", "export", "lipschitz_bound",
    "lipschitz_bounds", "list_models", "list_pretrained", "load", "push", "register_activation",
    "register_model", "save_pretrained", "__version__",
]
