"""``sll``: residual networks of SLL blocks (Araujo et al., ICLR 2023), 1-Lipschitz blocks by construction.

Layout (one flat sequence, like every zoo model)::

    Normalize
    stem        LTConv2d(in_chans, w1, 3, padding=1, activation=None)
    stage 1     SLLConv2d(w1, w1, 3) x d1
    downsample  LTConv2d(w1, w2, 2, stride=2, activation=None)
    stage 2     SLLConv2d(w2, w2, 3) x d2
    ...
    pooling     AvgPool2d(2), Flatten
    projection  LTLinear(w_last * (H / 2^s) * (W / 2^s), f, activation=None)     (s = number of stages)
    head        SLLLinear(f, f) x n
    readout     LTLinear(f, num_classes, activation=None)

The design follows ``lt-res`` (:mod:`lipzoo.models.residual`, whose docstring gives the reasons): every
nonlinearity sits in a block, the stem, downsampling and projection are linear (the accountant folds
them into their neighbours), downsampling is a learned 2x2 stride-2 convolution. What differs: the blocks
are SLL blocks (``rho = 1`` fixed, the convolutional ``T`` from the kernel's autocorrelation, tighter than
``lt-res``'s), and the networks are smaller, sized to train on a CPU.

Default builds: ``sll-s`` for MNIST (1x28x28, ~0.244M parameters; zoo entry ``crm-mnist-sll-s``),
``sll-m`` for CIFAR-10 (3x32x32, ~1.09M). Either runs on the other dataset with ``in_chans``,
``img_size`` and that dataset's ``mean`` / ``std`` (``sll-s`` on CIFAR-10: ~0.306M parameters).
"""

from __future__ import annotations

from typing import Sequence

from lipzoo.layers import SLLConv2d, SLLLinear
from lipzoo.meta import DATASETS
from lipzoo.models.base import LipschitzSequential
from lipzoo.models.registry import register_model
from lipzoo.models.residual import build_lt_res

__all__ = ["SLL_CONFIGS", "build_sll"]

SLL_CONFIGS: dict[str, dict] = {
    "sll-s": {"widths": (16, 32), "depths": (2, 2), "features": 128, "head_depth": 1, "dataset": "mnist"},
    "sll-m": {"widths": (32, 64, 128), "depths": (2, 2, 2), "features": 256, "head_depth": 2, "dataset": "cifar10"},
}


def build_sll(architecture: str, widths: Sequence[int], depths: Sequence[int], features: int, head_depth: int,
              *, num_classes: int, in_chans: int, img_size, mean, std, activation: str | None,
              kernel_size: int = 3, pool: int = 2, dataset: str = "cifar10") -> LipschitzSequential:
    """Build an ``sll`` network (see the module docstring for the layout): the ``lt-res`` layout
    (:func:`lipzoo.models.residual.build_lt_res`) with SLL blocks."""
    return build_lt_res(architecture, widths, depths, features, head_depth, num_classes=num_classes,
                        in_chans=in_chans, img_size=img_size, mean=mean, std=std, activation=activation,
                        kernel_size=kernel_size, pool=pool, dataset=dataset,
                        conv_block=lambda c: SLLConv2d(c, c, kernel_size, activation=activation),
                        dense_block=lambda f: SLLLinear(f, f, activation=activation))


def _declared(name: str) -> dict:
    """What the default build of ``name`` is (the registry's metadata; nothing is built to learn it)."""
    facts = DATASETS[SLL_CONFIGS[name]["dataset"]]
    return {"num_classes": facts.num_classes, "input_shape": facts.input_shape, "dataset": facts.name}


def _build(name: str, num_classes, mean, std, activation, in_chans, img_size) -> LipschitzSequential:
    facts = DATASETS[SLL_CONFIGS[name]["dataset"]]
    return build_sll(name, **SLL_CONFIGS[name], num_classes=facts.num_classes if num_classes is None else num_classes,
                     in_chans=facts.input_shape[0] if in_chans is None else in_chans,
                     img_size=list(facts.input_shape[1:]) if img_size is None else img_size,
                     mean=mean, std=std, activation=activation)


@register_model(**_declared("sll-s"))
def lipzoo_sll_s(num_classes: int | None = None, *, mean=None, std=None, activation: str | None = "relu",
                 in_chans: int | None = None, img_size=None) -> LipschitzSequential:
    """SLL-S for MNIST (1x28x28): widths 16/32, 2+2 SLL conv blocks, 1 SLL dense block, ~0.244M parameters."""
    return _build("sll-s", num_classes, mean, std, activation, in_chans, img_size)


@register_model(**_declared("sll-m"))
def lipzoo_sll_m(num_classes: int | None = None, *, mean=None, std=None, activation: str | None = "relu",
                 in_chans: int | None = None, img_size=None) -> LipschitzSequential:
    """SLL-M for CIFAR-10 (3x32x32): widths 32/64/128, 2+2+2 SLL conv blocks, 2 SLL dense blocks, ~1.09M parameters."""
    return _build("sll-m", num_classes, mean, std, activation, in_chans, img_size)
