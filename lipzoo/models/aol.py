"""``aol``: convolutional networks of almost-orthogonal layers (Prach & Lampert, ECCV 2022).

Layout (one flat sequence, like every zoo model)::

    Normalize
    AOLConv2d(in, out, k, stride=s, padding=p, activation) for each (out, k, s, p) of the config
    Flatten
    AOLLinear(in, out, activation) for each hidden size of the config (none in aol-s)
    readout     LTLinear(features, num_classes, activation=None)

Every AOL layer is 1-Lipschitz by construction, so with a 1-Lipschitz activation (ReLU, the default;
``activation`` takes any registered one, or ``"maxmin"``: a :class:`~lipzoo.layers.MaxMin` after each AOL layer, the
paper's choice) the network up to the readout is too; the readout is a plain
linear layer. The certificate never relies on the construction: the accountant bounds the layers as
computed, readout included. Downsampling is a 2x2 stride-2 AOL convolution: non-overlapping windows,
where AOL rescales each input channel *and* tap (tighter than the per-channel rescaling of overlapping
windows).

Default builds: ``aol-s`` for MNIST (1x28x28, ~0.088M parameters; zoo entry ``hkr-mnist-aol-s``),
``aol-m`` for CIFAR-10 (3x32x32, ~0.57M). Either runs on the other dataset with ``in_chans``,
``img_size`` and that dataset's ``mean`` / ``std``.
AOL's rescaling of a dense layer forms ``P^T P`` (``in x in``) at every call, so ``aol-m``'s dense layer
comes after enough downsampling to keep ``in`` near 1000.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from lipzoo.layers import AOLConv2d, AOLLinear, Flatten, LTLinear, MaxMin, Normalize
from lipzoo.meta import DATASETS
from lipzoo.models.base import (LipschitzSequential, assemble, check_num_classes, resolve_img_size,
                                resolve_normalization)
from lipzoo.models.registry import register_model

__all__ = ["AOL_CONFIGS", "build_aol"]

ConvSpec = tuple[int, int, int, int]  # out_channels, kernel_size, stride, padding

AOL_CONFIGS: dict[str, dict] = {
    "aol-s": {"convs": [(16, 3, 1, 1), (32, 2, 2, 0), (32, 3, 1, 1), (64, 2, 2, 0), (64, 3, 1, 1)], "fcs": [],
              "dataset": "mnist"},
    "aol-m": {"convs": [(32, 3, 1, 1), (32, 3, 1, 1), (64, 2, 2, 0), (64, 3, 1, 1), (64, 3, 1, 1), (128, 2, 2, 0),
                        (128, 3, 1, 1), (64, 2, 2, 0)], "fcs": [256], "dataset": "cifar10"},
}


def build_aol(architecture: str, convs: Sequence[ConvSpec], fcs: Sequence[int], *, num_classes: int,
              in_chans: int, img_size: int | Sequence[int], mean, std, activation: str | None,
              dataset: str = "cifar10") -> LipschitzSequential:
    """``Normalize, AOLConv2d x len(convs), Flatten, AOLLinear x len(fcs), LTLinear`` readout."""
    check_num_classes(num_classes, architecture, allow_zero=True)
    height, width = resolve_img_size(img_size, architecture)
    mean, std = resolve_normalization(mean, std, in_chans, dataset, architecture)
    layers: list[nn.Module] = [Normalize(mean, std)]
    channels, h, w = in_chans, height, width
    maxmin = activation == "maxmin"  # a group-wise map, not a registered (coordinatewise) activation
    act = None if maxmin else activation
    for out, k, s, p in convs:
        layers.append(AOLConv2d(channels, out, k, stride=s, padding=p, activation=act))
        if maxmin:
            layers.append(MaxMin())
        channels, h, w = out, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if h < 1 or w < 1:
            raise ValueError(f"{architecture}: img_size={img_size!r} is too small; the convolutions shrink it "
                             f"below 1 pixel (layer {len(layers) - 1}).")
    layers.append(Flatten())
    features = channels * h * w
    for out in fcs:
        layers.append(AOLLinear(features, out, activation=act))
        if maxmin:
            layers.append(MaxMin())
        features = out
    layers.append(LTLinear(features, num_classes or 1, activation=None))
    return assemble(layers, architecture=architecture, activation=activation, in_chans=in_chans, height=height,
                    width=width, num_classes=num_classes)


def _declared(name: str) -> dict:
    """What the default build of ``name`` is (the registry's metadata; nothing is built to learn it)."""
    facts = DATASETS[AOL_CONFIGS[name]["dataset"]]
    return {"num_classes": facts.num_classes, "input_shape": facts.input_shape, "dataset": facts.name}


def _build(name: str, num_classes, mean, std, activation, in_chans, img_size) -> LipschitzSequential:
    facts = DATASETS[AOL_CONFIGS[name]["dataset"]]
    return build_aol(name, **AOL_CONFIGS[name], num_classes=facts.num_classes if num_classes is None else num_classes,
                     in_chans=facts.input_shape[0] if in_chans is None else in_chans,
                     img_size=list(facts.input_shape[1:]) if img_size is None else img_size,
                     mean=mean, std=std, activation=activation)


@register_model(**_declared("aol-s"))
def lipzoo_aol_s(num_classes: int | None = None, *, mean=None, std=None, activation: str | None = "relu",
                 in_chans: int | None = None, img_size=None) -> LipschitzSequential:
    """AOL-S for MNIST (1x28x28): 5 AOL convolutions, a linear readout, ~0.088M parameters."""
    return _build("aol-s", num_classes, mean, std, activation, in_chans, img_size)


@register_model(**_declared("aol-m"))
def lipzoo_aol_m(num_classes: int | None = None, *, mean=None, std=None, activation: str | None = "relu",
                 in_chans: int | None = None, img_size=None) -> LipschitzSequential:
    """AOL-M for CIFAR-10 (3x32x32): 8 AOL convolutions, 1 AOL dense layer, a linear readout, ~0.57M parameters."""
    return _build("aol-m", num_classes, mean, std, activation, in_chans, img_size)
