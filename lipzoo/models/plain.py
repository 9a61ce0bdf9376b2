"""Plain convolutional networks of the CRM paper (Fazlyab et al., NeurIPS 2023, Table 1).

``4c3f`` (MNIST), ``6c2f`` (CIFAR-10) and ``8c2f`` (Tiny-ImageNet) follow the reference networks
of o4lc/CRM-LipLT layer for layer: convolutions and dense layers with bias, the activation after
every layer but the readout, PyTorch's default initialisation. lipzoo adds a leading ``Normalize``
so that the model takes pixels in ``[0, 1]`` and certificates are in pixel units.

Layer ``(out, k, s, p)`` is ``LTConv2d(in, out, kernel_size=k, stride=s, padding=p)``. The input
size of the first dense layer follows from ``img_size`` by convolution arithmetic, so the same
family runs on other image sizes (``img_size=64`` for a 6c2f on Tiny-ImageNet).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from lipzoo.layers import Flatten, LTConv2d, LTLinear, Normalize
from lipzoo.models.base import (LipschitzSequential, assemble, check_num_classes, resolve_img_size,
                                resolve_normalization)
from lipzoo.models.registry import register_model

__all__ = ["PLAIN_CONFIGS", "build_plain"]

ConvSpec = tuple[int, int, int, int]  # out_channels, kernel_size, stride, padding

PLAIN_CONFIGS: dict[str, dict] = {
    "4c3f": {"convs": [(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)],
             "fcs": [512, 512], "num_classes": 10, "in_chans": 1, "img_size": 28, "dataset": "mnist"},
    "6c2f": {"convs": [(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)],
             "fcs": [512], "num_classes": 10, "in_chans": 3, "img_size": 32, "dataset": "cifar10"},
    "8c2f": {"convs": [(64, 3, 1, 1), (64, 3, 1, 0), (64, 4, 2, 0), (128, 3, 1, 1), (128, 3, 1, 1),
                       (128, 4, 2, 0), (256, 3, 1, 1), (256, 4, 2, 0)],
             "fcs": [256], "num_classes": 200, "in_chans": 3, "img_size": 64, "dataset": "tinyimagenet"},
}


def build_plain(architecture: str, convs: Sequence[ConvSpec], fcs: Sequence[int], *, num_classes: int,
                in_chans: int, img_size: int | Sequence[int], mean, std, activation: str | None,
                dataset: str) -> LipschitzSequential:
    """``Normalize, LTConv2d x len(convs), Flatten, LTLinear x len(fcs), LTLinear readout``."""
    check_num_classes(num_classes, architecture, allow_zero=True)
    height, width = resolve_img_size(img_size, architecture)
    mean, std = resolve_normalization(mean, std, in_chans, dataset, architecture)
    layers: list[nn.Module] = [Normalize(mean, std)]
    channels, h, w = in_chans, height, width
    for out, k, s, p in convs:
        layers.append(LTConv2d(channels, out, k, stride=s, padding=p, activation=activation))
        channels, h, w = out, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if h < 1 or w < 1:
            raise ValueError(f"{architecture}: img_size={img_size!r} is too small; the convolutions shrink it "
                             f"below 1 pixel (layer {len(layers) - 1}).")
    layers.append(Flatten())
    features = channels * h * w
    for out in fcs:
        layers.append(LTLinear(features, out, activation=activation))
        features = out
    layers.append(LTLinear(features, num_classes or 1, activation=None))
    return assemble(layers, architecture=architecture, activation=activation, in_chans=in_chans, height=height,
                    width=width, num_classes=num_classes)


def _declared(name: str) -> dict:
    """What the default build of ``name`` is (the registry's metadata; nothing is built to learn it)."""
    cfg = PLAIN_CONFIGS[name]
    size = cfg["img_size"]
    return {"num_classes": cfg["num_classes"], "input_shape": (cfg["in_chans"], size, size), "dataset": cfg["dataset"]}


def _build(name: str, num_classes, mean, std, activation, in_chans, img_size) -> LipschitzSequential:
    cfg = PLAIN_CONFIGS[name]
    return build_plain(name, cfg["convs"], cfg["fcs"], dataset=cfg["dataset"],
                       num_classes=cfg["num_classes"] if num_classes is None else num_classes,
                       in_chans=cfg["in_chans"] if in_chans is None else in_chans,
                       img_size=cfg["img_size"] if img_size is None else img_size,
                       mean=mean, std=std, activation=activation)


@register_model(**_declared("4c3f"))
def lipzoo_4c3f(num_classes: int | None = None, *, mean=None, std=None, activation: str | None = "relu",
                in_chans: int | None = None, img_size=None) -> LipschitzSequential:
    """4C3F for MNIST (1x28x28): 4 convolutions, 3 dense layers, ~1.97M parameters."""
    return _build("4c3f", num_classes, mean, std, activation, in_chans, img_size)


@register_model(**_declared("6c2f"))
def lipzoo_6c2f(num_classes: int | None = None, *, mean=None, std=None, activation: str | None = "relu",
                in_chans: int | None = None, img_size=None) -> LipschitzSequential:
    """6C2F for CIFAR-10 (3x32x32): 6 convolutions, 2 dense layers, ~0.73M parameters."""
    return _build("6c2f", num_classes, mean, std, activation, in_chans, img_size)


@register_model(**_declared("8c2f"))
def lipzoo_8c2f(num_classes: int | None = None, *, mean=None, std=None, activation: str | None = "relu",
                in_chans: int | None = None, img_size=None) -> LipschitzSequential:
    """8C2F for Tiny-ImageNet (3x64x64): 8 convolutions, 2 dense layers, ~4.34M parameters."""
    return _build("8c2f", num_classes, mean, std, activation, in_chans, img_size)
