"""Export a lipzoo model to plain torch (a ``torch.fx.GraphModule`` that runs without lipzoo).

The exported graph is made of ``nn.Conv2d``, ``nn.Linear``, ``nn.ConvTranspose2d``, torch
activation modules, ``nn.Flatten``, ``nn.AvgPool2d`` and explicit arithmetic; no parametrizations
and no lipzoo classes. It computes the same function as the model at the time of export:

* ``Normalize`` -> ``(x - mean) / std`` with the statistics as buffers;
* ``LTConv2d`` / ``LTLinear`` -> ``nn.Conv2d`` / ``nn.Linear`` followed by their activation module;
* ``GroupSort`` / ``MaxMin`` / ``CReLU`` -> ``torch.sort`` of ``unflatten``-ed groups, ``maximum`` / ``minimum`` of
  the halves, ``cat(relu(x), relu(-x))``; ``L2NormPool2d`` -> ``nn.LPPool2d(2, ...)`` times its scale;
* residual blocks -> ``sqrt_rho * x - W^T (scale * phi(W x + b))`` from ``effective_parameters()``
  (``docs/architecture.md``), with ``scale`` folded into the transposed weight: a conv block's
  ``W^T`` is ``nn.ConvTranspose2d`` (stride 1, padding ``k // 2``), a dense block's is an
  ``nn.Linear`` without bias.

Metadata (architecture, classes, input shape, the certified bound when given) is kept as
``module.lipzoo_metadata`` (dict) and ``module.lipzoo_metadata_json`` (str). Both survive
``torch.save``/``torch.load``; the string also survives ``torch.jit.script`` and ``torch.jit.save``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import operator
from typing import Any, overload

import torch
import torch.fx as fx
from torch import nn

from lipzoo.layers import (AvgPool2d, CReLU, Flatten, GroupSort, L2NormPool2d, LTConv2d, LTLinear, LTResidualConv,
                           LTResidualLinear, MaxMin, Normalize)

__all__ = ["export", "bound_to_dict"]

logger = logging.getLogger(__name__)


class _Builder:
    """Accumulates submodules, buffers and graph nodes of the exported module."""

    def __init__(self, input_ndim: int) -> None:
        self.input_ndim = input_ndim  # dimensions of one input, without batch
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.count = 0

    def add(self, module: nn.Module, x: fx.Node) -> fx.Node:
        name = f"m{self.count}"
        self.count += 1
        self.root.add_module(name, module)
        return self.graph.call_module(name, (x,))

    def constant(self, tensor: torch.Tensor) -> fx.Node:
        name = f"c{self.count}"
        self.count += 1
        self.root.register_buffer(name, tensor)
        return self.graph.get_attr(name)


def _plain_activation(layer: nn.Module) -> nn.Module | None:
    """A copy of the layer's activation module (``None`` for the identity)."""
    act = getattr(layer, "act", None)
    if act is None or isinstance(act, nn.Identity):
        return None
    if type(act).__module__.startswith("lipzoo"):
        raise TypeError(f"export: the activation {type(act).__name__} of {type(layer).__name__} is a lipzoo "
                        "class; register the activation with a plain torch module factory to export it.")
    return copy.deepcopy(act)


@overload
def _copy_param(t: torch.Tensor) -> nn.Parameter: ...
@overload
def _copy_param(t: torch.Tensor | None) -> nn.Parameter | None: ...
def _copy_param(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.detach().clone())


def _conv(layer: nn.Conv2d) -> nn.Conv2d:
    # a Conv2d's kernel_size, stride, padding and dilation are pairs (typed as tuple[int, ...] in torch)
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,  # type: ignore[arg-type]
                     stride=layer.stride,  # type: ignore[arg-type]
                     padding=layer.padding, dilation=layer.dilation,  # type: ignore[arg-type]
                     groups=layer.groups,
                     bias=layer.bias is not None, padding_mode=layer.padding_mode,
                     device=layer.weight.device, dtype=layer.weight.dtype)
    conv.weight, conv.bias = _copy_param(layer.weight), _copy_param(layer.bias)
    return conv


def _linear(layer: nn.Linear) -> nn.Linear:
    lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    lin.weight, lin.bias = _copy_param(layer.weight), _copy_param(layer.bias)  # type: ignore[assignment]  # bias: None
    return lin


def _residual(b: _Builder, layer: LTResidualConv | LTResidualLinear, x: fx.Node) -> fx.Node:
    p = layer.effective_parameters()
    weight, bias, scale = p["weight"], p["bias"], p["scale"]
    act = _plain_activation(layer)
    inner: nn.Conv2d | nn.Linear
    outer: nn.ConvTranspose2d | nn.Linear
    if isinstance(layer, LTResidualConv):
        k = weight.shape[-1]
        inner = nn.Conv2d(weight.shape[1], weight.shape[0], k, padding=k // 2, device=weight.device,
                          dtype=weight.dtype)
        outer = nn.ConvTranspose2d(weight.shape[0], weight.shape[1], k, padding=k // 2, bias=False,
                                   device=weight.device, dtype=weight.dtype)
        # ConvTranspose2d weight is (in = hidden, out = channels, k, k): W itself, rows scaled.
        outer.weight = nn.Parameter((weight * scale[:, None, None, None]).clone())
    else:
        inner = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
        outer = nn.Linear(weight.shape[0], weight.shape[1], bias=False, device=weight.device, dtype=weight.dtype)
        outer.weight = nn.Parameter((weight * scale[:, None]).T.contiguous())
    inner.weight, inner.bias = nn.Parameter(weight.clone()), nn.Parameter(bias.clone())
    z = b.add(inner, x)
    if act is not None:
        z = b.add(act, z)
    branch = b.add(outer, z)
    sqrt_rho = float(p["sqrt_rho"])
    skip = x if sqrt_rho == 1.0 else b.graph.call_function(operator.mul, (x, sqrt_rho))
    return b.graph.call_function(operator.sub, (skip, branch))


def _groupwise(b: _Builder, module: nn.Module, x: fx.Node) -> fx.Node:
    """The group-wise maps as torch calls that hold for any input size (sort of ``unflatten``-ed groups, ...)."""
    call = b.graph.call_function
    if isinstance(module, L2NormPool2d):
        x = b.add(nn.LPPool2d(2, module.kernel_size, module.stride), x)
        return x if module.scale == 1.0 else call(operator.mul, (x, module.scale))
    if isinstance(module, CReLU):
        return call(torch.cat, ([call(torch.relu, (x,)), call(torch.relu, (call(operator.neg, (x,)),))], module.dim))
    if isinstance(module, MaxMin):
        halves = call(torch.chunk, (x, 2, module.dim))
        a, c = call(operator.getitem, (halves, 0)), call(operator.getitem, (halves, 1))
        return call(torch.cat, ([call(torch.maximum, (a, c)), call(torch.minimum, (a, c))], module.dim))
    if not isinstance(module, GroupSort):
        raise TypeError(f"export: no plain-torch form of {type(module).__name__}")
    dim, g = module.dim, module.group_size
    if g is None:
        return call(operator.getitem, (call(torch.sort, (x, dim)), 0))
    # group_sort's size checks happen at export time on the model; here any size with whole groups
    grouped = call(torch.unflatten, (x, dim, (-1, g)))
    ordered = call(operator.getitem, (call(torch.sort, (grouped, dim + 1)), 0))
    return call(torch.flatten, (ordered, dim, dim + 1))


def _emit(b: _Builder, module: nn.Module, x: fx.Node) -> fx.Node:
    if isinstance(module, nn.Sequential):
        for child in module:
            x = _emit(b, child, x)
        return x
    if isinstance(module, Normalize):
        shape = (-1,) + (1,) * (b.input_ndim - 1)  # per channel, like Normalize itself
        mean = b.constant(module.mean.detach().clone().reshape(shape))
        std = b.constant(module.std.detach().clone().reshape(shape))
        centered = b.graph.call_function(operator.sub, (x, mean))
        return b.graph.call_function(operator.truediv, (centered, std))
    if isinstance(module, (LTResidualConv, LTResidualLinear)):
        return _residual(b, module, x)
    if isinstance(module, (LTConv2d, LTLinear)):
        x = b.add(_conv(module) if isinstance(module, nn.Conv2d) else _linear(module), x)
        act = _plain_activation(module)
        return x if act is None else b.add(act, x)
    if isinstance(module, Flatten):
        return b.add(nn.Flatten(module.start_dim, module.end_dim), x)
    if isinstance(module, AvgPool2d):
        return b.add(nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode,
                                  module.count_include_pad, module.divisor_override), x)
    if isinstance(module, (GroupSort, MaxMin, CReLU, L2NormPool2d)):
        return _groupwise(b, module, x)
    if type(module).__module__.startswith("torch.nn"):
        return b.add(copy.deepcopy(module), x)
    raise TypeError(f"export: cannot export {type(module).__module__}.{type(module).__name__}; supported are "
                    "lipzoo layers (Normalize, LTConv2d, LTLinear, LTResidualConv, LTResidualLinear, Flatten, "
                    "AvgPool2d, GroupSort, MaxMin, CReLU, L2NormPool2d), plain torch.nn modules and nn.Sequential of them.")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return str(value)


def bound_to_dict(bound: Any) -> dict[str, Any]:
    """A JSON-serializable dict of a ``lipschitz_bound`` result (or of a dict describing a bound)."""
    if isinstance(bound, dict):
        raw = bound
    elif hasattr(bound, "to_dict") and callable(bound.to_dict):
        raw = bound.to_dict()
    elif dataclasses.is_dataclass(bound):
        raw = {f.name: getattr(bound, f.name) for f in dataclasses.fields(bound)}
    elif hasattr(bound, "value"):
        raw = {k: v for k, v in vars(bound).items() if not k.startswith("_")}
        raw.setdefault("value", bound.value)
    else:
        raise TypeError(f"export: bound must be a lipschitz_bound result (with .value) or a dict, got "
                        f"{type(bound).__name__}.")
    return _jsonable(raw)


def export(model: nn.Module, bound: Any = None) -> fx.GraphModule:
    """Convert a lipzoo model into a plain-torch ``GraphModule`` computing the same function.

    Args:
        model: a lipzoo model (``LipschitzSequential``) or any ``nn.Sequential`` of lipzoo layers and
            plain torch modules.
        bound: optional certificate stored in the metadata: a ``lipzoo.bounds.lipschitz_bound``
            result or a dict.

    Returns:
        A ``torch.fx.GraphModule`` in the model's training mode, with ``lipzoo_metadata`` (dict) and
        ``lipzoo_metadata_json`` (str) attributes.

    Raises:
        TypeError: ``model`` is not an ``nn.Sequential`` or contains a module export does not know.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"export expects an nn.Sequential such as a lipzoo model, got {type(model).__name__}.")
    b = _Builder(len(getattr(model, "input_shape", (3, 1, 1))))
    with torch.no_grad():
        x = b.graph.placeholder("x")
        b.graph.output(_emit(b, model, x))
    gm = fx.GraphModule(b.root, b.graph, class_name="LipzooExport")
    gm.train(model.training)
    config = model.get_config() if hasattr(model, "get_config") else {}  # type: ignore[operator]
    metadata = {
        "format": "lipzoo-export/1",
        "architecture": config.get("architecture"),
        "num_classes": config.get("num_classes"),
        "input_shape": config.get("input_shape"),
        "normalization": config.get("normalization"),
        "model_args": config.get("model_args"),
        "bound": None if bound is None else bound_to_dict(bound),
    }
    gm.lipzoo_metadata = metadata  # type: ignore[assignment]  # plain attributes of the GraphModule
    gm.lipzoo_metadata_json = json.dumps(metadata, sort_keys=True)  # type: ignore[assignment]
    logger.debug("Exported %s to a GraphModule with %d nodes.", metadata["architecture"], len(b.graph.nodes))
    return gm
