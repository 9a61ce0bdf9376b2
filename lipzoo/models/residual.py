"""``lt-res``: residual networks built from sqrt(rho)-Lipschitz blocks (paper, Proposition 2).

Layout (one flat sequence, like every zoo model)::

    Normalize
    stem        LTConv2d(in_chans, w1, 3, padding=1, activation=None)
    stage 1     LTResidualConv(w1, w1, 3) x d1
    downsample  LTConv2d(w1, w2, 2, stride=2, activation=None)
    stage 2     LTResidualConv(w2, w2, 3) x d2
    downsample  LTConv2d(w2, w3, 2, stride=2, activation=None)
    stage 3     LTResidualConv(w3, w3, 3) x d3
    pooling     AvgPool2d(2), Flatten
    projection  LTLinear(w3 * (H/8) * (W/8), f, activation=None)
    head        LTResidualLinear(f, f) x n
    readout     LTLinear(f, num_classes, activation=None)

Design choices:

* **Every nonlinearity sits in a residual block.** The stem, the downsampling convolutions and the
  projection are linear (``activation=None``); the accountant folds such affine states into their
  neighbours (eq. 14 with ``H`` and ``W`` absorbing them), so they cost no looseness of their own,
  while a ReLU on them would discard half the signal for no certified gain.
* **Downsampling by a learned 2x2, stride-2 convolution** (non-overlapping patches, as in
  patch-merging) rather than ``AvgPool2d``: it also changes the width, and it is cheap
  (``4 w_i w_{i+1}`` weights).
* **Hidden width = width** in every residual block (the SLL default); ``rho`` starts at 1 and is
  learned per block, so a block may grow (``rho > 1``) where the margin pays for it.
* **Pooling before the dense head**: a 2x2 average pooling halves the features to keep the
  projection small; its norm (1/2) is exact in the bound.

Sizes (3x32x32, 10 classes): ``lt-res-s`` ~0.51M, ``lt-res-m`` ~2.01M, ``lt-res-l`` ~6.05M parameters.
Any ``img_size`` divisible by 8 keeps every pixel; other sizes are floored by the pooling.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from lipzoo.layers import AvgPool2d, Flatten, LTConv2d, LTLinear, LTResidualConv, LTResidualLinear, Normalize
from lipzoo.models.base import (LipschitzSequential, assemble, check_num_classes, resolve_img_size,
                                resolve_normalization)
from lipzoo.models.registry import register_model

__all__ = ["RESIDUAL_CONFIGS", "build_lt_res"]

RESIDUAL_CONFIGS: dict[str, dict] = {
    "lt-res-s": {"widths": (16, 32, 64), "depths": (2, 2, 2), "features": 256, "head_depth": 2},
    "lt-res-m": {"widths": (32, 64, 128), "depths": (2, 2, 2), "features": 512, "head_depth": 2},
    "lt-res-l": {"widths": (64, 128, 256), "depths": (2, 2, 2), "features": 768, "head_depth": 2},
}


def build_lt_res(architecture: str, widths: Sequence[int], depths: Sequence[int], features: int,
                 head_depth: int, *, num_classes: int, in_chans: int, img_size, mean, std,
                 activation: str | None, kernel_size: int = 3, pool: int = 2,
                 dataset: str = "cifar10", conv_block: Callable[[int], nn.Module] | None = None,
                 dense_block: Callable[[int], nn.Module] | None = None) -> LipschitzSequential:
    """Build an ``lt-res`` network (see the module docstring for the layout).

    ``conv_block(channels)`` and ``dense_block(features)`` make the blocks of the stages and of the head
    (default: ``LTResidualConv(c, c, kernel_size)`` and ``LTResidualLinear(f, f)`` with ``activation``);
    other families of the same layout pass theirs (:mod:`lipzoo.models.sll`).
    """
    make_conv = conv_block or (lambda c: LTResidualConv(c, c, kernel_size, activation=activation))
    make_dense = dense_block or (lambda f: LTResidualLinear(f, f, activation=activation))
    check_num_classes(num_classes, architecture, allow_zero=True)
    if len(widths) != len(depths) or not widths:
        raise ValueError(f"{architecture}: widths and depths need the same non-zero length, got "
                         f"{list(widths)} and {list(depths)}.")
    height, width = resolve_img_size(img_size, architecture)
    mean, std = resolve_normalization(mean, std, in_chans, dataset, architecture)
    layers: list[nn.Module] = [Normalize(mean, std),
                               LTConv2d(in_chans, widths[0], kernel_size, padding=kernel_size // 2, activation=None)]
    h, w = height, width
    for stage, (channels, depth) in enumerate(zip(widths, depths)):
        if stage > 0:
            layers.append(LTConv2d(widths[stage - 1], channels, 2, stride=2, activation=None))
            h, w = h // 2, w // 2
        layers.extend(make_conv(channels) for _ in range(depth))
    h, w = h // pool, w // pool
    if h < 1 or w < 1:
        raise ValueError(f"{architecture}: img_size={img_size!r} is too small; it needs at least "
                         f"{pool * 2 ** (len(widths) - 1)} pixels per side.")
    layers += [AvgPool2d(pool), Flatten(), LTLinear(widths[-1] * h * w, features, activation=None)]
    layers.extend(make_dense(features) for _ in range(head_depth))
    layers.append(LTLinear(features, num_classes or 1, activation=None))
    return assemble(layers, architecture=architecture, activation=activation, in_chans=in_chans, height=height,
                    width=width, num_classes=num_classes)


def _build(name: str, num_classes, mean, std, activation, in_chans, img_size) -> LipschitzSequential:
    return build_lt_res(name, **RESIDUAL_CONFIGS[name], num_classes=10 if num_classes is None else num_classes,
                        in_chans=3 if in_chans is None else in_chans, img_size=32 if img_size is None else img_size,
                        mean=mean, std=std, activation=activation)


@register_model(num_classes=10, input_shape=(3, 32, 32), dataset="cifar10")
def lipzoo_lt_res_s(num_classes: int | None = None, *, mean=None, std=None, activation: str | None = "relu",
                    in_chans: int | None = None, img_size=None) -> LipschitzSequential:
    """LT-Res-S for CIFAR-10 (3x32x32): widths 16/32/64, 2+2+2 conv blocks, 2 dense blocks, ~0.51M parameters."""
    return _build("lt-res-s", num_classes, mean, std, activation, in_chans, img_size)


@register_model(num_classes=10, input_shape=(3, 32, 32), dataset="cifar10")
def lipzoo_lt_res_m(num_classes: int | None = None, *, mean=None, std=None, activation: str | None = "relu",
                    in_chans: int | None = None, img_size=None) -> LipschitzSequential:
    """LT-Res-M for CIFAR-10 (3x32x32): widths 32/64/128, 2+2+2 conv blocks, 2 dense blocks, ~2.01M parameters."""
    return _build("lt-res-m", num_classes, mean, std, activation, in_chans, img_size)


@register_model(num_classes=10, input_shape=(3, 32, 32), dataset="cifar10")
def lipzoo_lt_res_l(num_classes: int | None = None, *, mean=None, std=None, activation: str | None = "relu",
                    in_chans: int | None = None, img_size=None) -> LipschitzSequential:
    """LT-Res-L for CIFAR-10 (3x32x32): widths 64/128/256, 2+2+2 conv blocks, 2 dense blocks, ~6.05M parameters."""
    return _build("lt-res-l", num_classes, mean, std, activation, in_chans, img_size)
