"""The common model class of the zoo: a flat ``nn.Sequential`` with timm-style head helpers.

Every zoo architecture is one flat sequence ``Normalize, layer, layer, ..., LTLinear readout``. Flat
means fixed ``state_dict`` keys (``"1.weight"``, ..., ``"0.mean"``) that checkpoints rely on, and a
layer order the Lipschitz accountant (paper eq. 14) can read front to back without guessing.
Nonlinearities live inside the layers (``LTConv2d(..., activation="relu")``), so there are no
separate activation modules between them.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import nn

from lipzoo.layers import LTLinear, Normalize

__all__ = ["LipschitzSequential", "build_pretrained_cfg", "DATASET_STATS", "resolve_normalization",
           "resolve_img_size", "check_num_classes"]

logger = logging.getLogger(__name__)

# Default Normalize statistics (pixels in [0, 1]). MNIST and CIFAR-10: the training-split statistics
# of /work/shared/data (per channel, population std), rounded to 4 digits. Tiny-ImageNet: the
# commonly quoted training-set statistics of Tiny-ImageNet-200 (not measured here).
DATASET_STATS: dict[str, dict[str, tuple[float, ...]]] = {
    "mnist": {"mean": (0.1307,), "std": (0.3081,)},
    "cifar10": {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "tinyimagenet": {"mean": (0.4802, 0.4481, 0.3975), "std": (0.2302, 0.2265, 0.2262)},
}


def check_num_classes(num_classes: Any, where: str) -> int:
    """``num_classes`` as an int, or ``ValueError`` naming ``where``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{where}: num_classes must be a positive int, got {num_classes!r}.")
    return num_classes


def resolve_normalization(mean: Sequence[float] | float | None, std: Sequence[float] | float | None,
                          in_chans: int, dataset: str, where: str) -> tuple[list[float], list[float]]:
    """Normalize statistics with one value per input channel.

    ``None`` takes the ``dataset`` default; a single value is used for every channel. A default with
    a different channel count than ``in_chans`` is refused rather than guessed.
    """
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"{where}: in_chans must be a positive int, got {in_chans!r}.")
    out = []
    for key, given in (("mean", mean), ("std", std)):
        if given is None:
            values = list(DATASET_STATS[dataset][key])
            if len(values) != in_chans:
                raise ValueError(f"{where}: in_chans={in_chans} but the default {dataset} {key} has "
                                 f"{len(values)} channel(s); pass {key}=[...] with {in_chans} values.")
        else:
            values = [float(v) for v in (given if isinstance(given, (list, tuple)) else [given])]
            if len(values) == 1:
                values = values * in_chans
            if len(values) != in_chans:
                raise ValueError(f"{where}: {key} needs 1 or in_chans={in_chans} values, got {len(values)}.")
        out.append(values)
    return out[0], out[1]


def resolve_img_size(img_size: int | Sequence[int], where: str) -> tuple[int, int]:
    """``img_size`` (an int or ``(H, W)``) as a pair of positive ints."""
    pair = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{where}: img_size must be a positive int or a pair (H, W), got {img_size!r}.")
    return int(pair[0]), int(pair[1])


def build_pretrained_cfg(architecture: str, num_classes: int, input_shape: Sequence[int],
                         classifier: str, first_conv: str | None) -> dict[str, Any]:
    """The timm ``pretrained_cfg`` dict of a lipzoo model (only fields of ``timm.models.PretrainedCfg``).

    ``mean`` is 0 and ``std`` is 1 on purpose: the model standardises its own input with its
    ``Normalize`` layer, so a timm data pipeline must feed raw pixels in ``[0, 1]``; the dataset
    statistics would otherwise be applied twice.
    """
    channels = int(input_shape[0])
    return {
        "architecture": f"lipzoo_{architecture.replace('-', '_')}",
        "input_size": tuple(int(s) for s in input_shape),
        "fixed_input_size": True,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "mean": (0.0,) * channels,
        "std": (1.0,) * channels,
        "num_classes": int(num_classes),
        "first_conv": first_conv,
        "classifier": classifier,
        "license": "mit",
        "paper_ids": "arXiv:2310.00116",
        "notes": ("Input is pixels in [0, 1]; the model's Normalize layer (index 0) standardises it.",),
    }


class LipschitzSequential(nn.Sequential):
    """A flat sequence of lipzoo layers ending with an ``LTLinear`` readout.

    Args:
        layers: the modules in order; the last one must be an ``LTLinear`` (the readout).
        architecture: registered architecture name (e.g. ``"4c3f"``).
        input_shape: ``(C, H, W)`` (or ``(F,)``) of one input, without batch dimension.
        model_args: builder keyword arguments (JSON-serializable) other than ``num_classes``,
            ``mean`` and ``std``; ``create_model(architecture, **get_config()...)`` rebuilds the model.

    Attributes:
        num_classes: size of the readout.
        input_shape: shape of one input.
        architecture: registered architecture name.
        pretrained_cfg: timm metadata dict (alias ``default_cfg``).
    """

    def __init__(self, layers: Sequence[nn.Module], *, architecture: str, input_shape: Sequence[int],
                 model_args: dict[str, Any] | None = None):
        layers = list(layers)
        if not layers or not isinstance(layers[-1], LTLinear):
            last = type(layers[-1]).__name__ if layers else "nothing"
            raise TypeError(f"LipschitzSequential needs an LTLinear readout as its last layer, got {last}.")
        super().__init__(*layers)
        self.architecture = architecture
        self.input_shape = tuple(int(s) for s in input_shape)
        self.model_args = dict(model_args or {})
        self.num_classes = int(layers[-1].out_features)
        self.pretrained_cfg = self._make_pretrained_cfg()

    def __getitem__(self, idx):
        # nn.Sequential rebuilds slices with self.__class__(OrderedDict), which a model with a required
        # readout and metadata cannot take: a slice is a plain nn.Sequential.
        if isinstance(idx, slice):
            return nn.Sequential(*list(self._modules.values())[idx])
        return super().__getitem__(idx)

    # -- timm-style helpers ---------------------------------------------------------------------
    @property
    def default_cfg(self) -> dict[str, Any]:
        """Alias of ``pretrained_cfg`` (older timm name)."""
        return self.pretrained_cfg

    @property
    def _classifier_index(self) -> int:
        return len(self) - 1

    def _make_pretrained_cfg(self) -> dict[str, Any]:
        first_conv = next((str(i) for i, m in enumerate(self) if isinstance(m, nn.Conv2d)), None)
        return build_pretrained_cfg(self.architecture, self.num_classes, self.input_shape,
                                    classifier=str(self._classifier_index), first_conv=first_conv)

    def get_classifier(self) -> LTLinear:
        """The readout layer (``LTLinear`` with ``activation=None``)."""
        return self[self._classifier_index]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the readout by a freshly initialised ``LTLinear(in_features, num_classes)``.

        Only the readout changes; every other parameter and every ``state_dict`` key stays.
        """
        check_num_classes(num_classes, "reset_classifier")
        old = self.get_classifier()
        ref = old.weight
        self[self._classifier_index] = LTLinear(old.in_features, num_classes, activation=old.activation_name,
                                                bias=old.bias is not None, device=ref.device, dtype=ref.dtype)
        self.num_classes = num_classes
        self.pretrained_cfg = self._make_pretrained_cfg()
        logger.debug("Readout of %s re-initialised with %d classes.", self.architecture, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the readout (the input to ``forward_head``)."""
        for module in list(self)[:self._classifier_index]:
            x = module(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The readout; ``pre_logits=True`` returns its input unchanged (timm convention)."""
        return x if pre_logits else self.get_classifier()(x)

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def normalization(self) -> dict[str, list[float]] | None:
        """``{"mean": [...], "std": [...]}`` of the leading ``Normalize`` layer, or ``None``."""
        first = self[0]
        if not isinstance(first, Normalize):
            return None
        return {"mean": [float(v) for v in first.mean.tolist()], "std": [float(v) for v in first.std.tolist()]}

    def get_config(self) -> dict[str, Any]:
        """JSON-serializable description that rebuilds this architecture.

        ``create_model(c["architecture"], num_classes=c["num_classes"], **c["normalization"],
        **c["model_args"])`` returns a model of the same structure (fresh weights).
        """
        return {
            "architecture": self.architecture,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "normalization": self.normalization,
            "model_args": dict(self.model_args),
        }
