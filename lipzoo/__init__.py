"""lipzoo: certifiably robust networks from Lipschitz layers.

Reading order = import order: meta -> layers -> bounds -> losses -> certify -> data -> models -> hub
-> train/cli. ``import lipzoo`` is cheap: the names below are imported on first use, and timm is
never imported by lipzoo. When the caller imports timm (before or after lipzoo), the bridge
``lipzoo.models.timm_bridge`` registers the ``lipzoo_*`` models with it right after timm loads.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from lipzoo._lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> module that defines it (imported on first attribute access, PEP 562)
_EXPORTS = {
    "LipschitzBound": "lipzoo.bounds", "lipschitz_bound": "lipzoo.bounds", "lipschitz_bounds": "lipzoo.bounds",
    "BoundOptions": "lipzoo.bounds",
    "LipLTEstimator": "lipzoo.bounds.estimator",
    "AvgPool2d": "lipzoo.layers", "Flatten": "lipzoo.layers", "LTConv2d": "lipzoo.layers", "LTLinear": "lipzoo.layers",
    "LTResidualConv": "lipzoo.layers", "LTResidualLinear": "lipzoo.layers", "Normalize": "lipzoo.layers",
    "register_activation": "lipzoo.layers", "GroupSort": "lipzoo.layers", "FullSort": "lipzoo.layers",
    "MaxMin": "lipzoo.layers", "CReLU": "lipzoo.layers", "L2NormPool2d": "lipzoo.layers",
    "SLLConv2d": "lipzoo.layers", "SLLLinear": "lipzoo.layers", "AOLConv2d": "lipzoo.layers", "AOLLinear": "lipzoo.layers",
    "CRMLoss": "lipzoo.losses", "crm_loss": "lipzoo.losses",
    "create_model": "lipzoo.models", "export": "lipzoo.models", "list_models": "lipzoo.models",
    "list_pretrained": "lipzoo.models", "register_model": "lipzoo.models", "load_pretrained": "lipzoo.models",
    "load": "lipzoo.hub", "push": "lipzoo.hub", "save_pretrained": "lipzoo.hub", "attach_results": "lipzoo.hub",
    "Eps": "lipzoo.meta", "Metadata": "lipzoo.meta", "parse_eps": "lipzoo.meta", "dataset_facts": "lipzoo.meta",
}
_SUBPACKAGES = ("bounds", "certify", "cli", "data", "hub", "interop", "layers", "losses", "meta", "models", "train")

__all__ = sorted([*_EXPORTS, "__version__"])


__getattr__, __dir__ = lazy_attributes("lipzoo", globals(), _EXPORTS, _SUBPACKAGES)


class _BridgeAfterTimm(importlib.abc.MetaPathFinder):
    """Imports ``lipzoo.models.timm_bridge`` right after ``timm`` itself finishes importing (once)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from recursing here
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            importlib.import_module("lipzoo.models.timm_bridge")

        spec.loader.exec_module = exec_module
        return spec


def _bridge_timm_when_imported() -> None:
    if "timm" in sys.modules:
        if "lipzoo.models.timm_bridge" not in sys.modules and getattr(sys.modules["timm"], "models", None):
            importlib.import_module("lipzoo.models.timm_bridge")
    elif not any(isinstance(f, _BridgeAfterTimm) for f in sys.meta_path):
        sys.meta_path.insert(0, _BridgeAfterTimm())


_bridge_timm_when_imported()
