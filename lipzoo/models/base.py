"""The common model class of the zoo: a flat ``nn.Sequential`` with timm-style head helpers.

Every zoo architecture is one flat sequence ``Normalize, layer, layer, ..., LTLinear readout``. Flat
means fixed ``state_dict`` keys (``"1.weight"``, ..., ``"0.mean"``) that checkpoints rely on, and a
layer order the Lipschitz accountant (paper eq. 14) can read front to back without guessing.
Nonlinearities live inside the layers (``LTConv2d(..., activation="relu")``), so there are no
separate activation modules between them.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lipzoo.layers import LTLinear, Normalize
from lipzoo.meta import DATASETS, Metadata

__all__ = ["LipschitzSequential", "build_pretrained_cfg", "DATASET_STATS", "resolve_normalization",
           "resolve_img_size", "check_num_classes"]

logger = logging.getLogger(__name__)

# Default Normalize statistics per dataset: a view of the one table, lipzoo.meta.DATASETS.
DATASET_STATS: dict[str, dict[str, tuple[float, ...]]] = {
    name: {"mean": facts.mean, "std": facts.std} for name, facts in DATASETS.items()}


def check_num_classes(num_classes: Any, where: str, *, allow_zero: bool = False) -> int:
    """``num_classes`` as an int, or ``ValueError`` naming ``where`` (0, no classifier, if ``allow_zero``)."""
    low = 0 if allow_zero else 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < low:
        what = "a non-negative int (0: no classifier, the model returns features)" if allow_zero else "a positive int"
        raise ValueError(f"{where}: num_classes must be {what}, got {num_classes!r}.")
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
            values = [float(v) for v in (given if isinstance(given, (list, tuple)) else [given])]  # type: ignore[arg-type]
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
                         classifier: str | None, first_conv: str | None) -> dict[str, Any]:
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
        num_classes: size of the readout (0 after ``reset_classifier(0)``: the model returns features).
        num_features: size of the readout's input.
        input_shape: shape of one input.
        architecture: registered architecture name.
        pretrained_cfg: timm metadata dict (alias ``default_cfg``).
        metadata: the :class:`lipzoo.meta.Metadata` of loaded weights (``None`` for a fresh model);
            ``lipzoo_config`` is its dict form.

    Hugging Face: :meth:`from_pretrained`, :meth:`save_pretrained` and :meth:`push_to_hub` take the
    arguments of ``huggingface_hub.ModelHubMixin`` and go through :mod:`lipzoo.hub` (checksums,
    strict loading, provenance rules).
    """

    def __init__(self, layers: Sequence[nn.Module], *, architecture: str, input_shape: Sequence[int],
                 model_args: dict[str, Any] | None = None):
        layers = list(layers)
        if not layers or not isinstance(layers[-1], LTLinear):
            last = type(layers[-1]).__name__ if layers else "nothing"
            raise TypeError(f"LipschitzSequential needs an LTLinear readout as its last layer, got {last}.")
        super().__init__(*layers)
        readout = layers[-1]
        self.architecture = architecture
        self.input_shape = tuple(int(s) for s in input_shape)
        self.model_args = dict(model_args or {})
        self.num_classes = int(readout.out_features)
        self.num_features = int(readout.in_features)
        self._readout_spec: dict[str, Any] = {"activation": readout.activation_name, "bias": readout.bias is not None}
        self.metadata: Metadata | None = None
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

    def get_classifier(self) -> nn.Module:
        """The readout layer (``LTLinear`` with ``activation=None``; ``nn.Identity`` with 0 classes)."""
        return self[self._classifier_index]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the readout by a freshly initialised ``LTLinear(num_features, num_classes)``.

        ``num_classes=0`` puts an ``nn.Identity`` there (the model returns features, timm's
        convention). Only the readout changes; every other parameter and ``state_dict`` key stays.
        The bound and measured numbers of loaded weights no longer apply: they are dropped from
        :attr:`metadata`, which records the checkpoint as the model's ``parent``.
        """
        check_num_classes(num_classes, "reset_classifier", allow_zero=True)
        ref = next(p for p in self.parameters())
        if num_classes == 0:
            new: nn.Module = nn.Identity()
        else:
            new = LTLinear(self.num_features, num_classes, activation=self._readout_spec["activation"],
                           bias=self._readout_spec["bias"], device=ref.device, dtype=ref.dtype)
        self[self._classifier_index] = new
        old_classes, self.num_classes = self.num_classes, num_classes
        self.pretrained_cfg = self._make_pretrained_cfg()
        if self.metadata is not None:
            meta = self.metadata
            if meta.results is not None or meta.name is not None or meta.weights is not None:
                source = meta.name or (meta.sha256 or "")[:12] or "the loaded checkpoint"
                logger.warning("Classifier of %s re-initialised (%d -> %d classes): the certificate and measured "
                               "numbers of %s no longer apply; train, then certify the new model.",
                               self.architecture, old_classes, num_classes, source)
            self.metadata = meta.with_new_head(num_classes)
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
    def lipzoo_config(self) -> dict[str, Any]:
        """The dict form of :attr:`metadata` (``AttributeError`` for a model without one)."""
        if self.metadata is None:
            raise AttributeError(f"This {self.architecture} has no lipzoo_config: it was not loaded from a "
                                 "checkpoint. get_config() describes its architecture.")
        return self.metadata.to_dict()

    @lipzoo_config.setter
    def lipzoo_config(self, value: Metadata | dict[str, Any] | None) -> None:
        self.metadata = None if value is None else value if isinstance(value, Metadata) else Metadata.from_dict(value)

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

    # -- Hugging Face Hub (the shape of huggingface_hub.ModelHubMixin) ------------------------------
    # These go through the factory's checkpoint functions (published as lipzoo.hub.load / save_pretrained
    # / push). The factory builds models of this class and never imports this module, so importing it when
    # a method runs is no cycle; at module level it would make every family import the factory.
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False, revision: str | None = None,
                        num_classes: int | None = None, map_location: Any = "cpu") -> "LipschitzSequential":
        """Load a checkpoint folder, zoo entry or Hub repo (``lipzoo.hub.load``); see ``create_model``
        for ``num_classes`` (a new classifier drops the certificate)."""
        from lipzoo.models.factory import load_checkpoint

        model = load_checkpoint(pretrained_model_name_or_path, revision=revision, map_location=map_location,
                                cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                                force_download=force_download)
        if not isinstance(model, cls):
            raise TypeError(f"{pretrained_model_name_or_path!r} holds a {type(model).__name__}, not a {cls.__name__}.")
        if num_classes is not None and num_classes != model.num_classes:
            model.reset_classifier(num_classes)
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, *, config: Any = None, push_to_hub: bool = False,
                        repo_id: str | None = None, card: dict[str, Any] | None = None,
                        storage_dtype: str = "float32", **push_to_hub_kwargs: Any) -> Any:
        """Write the checkpoint folder (``lipzoo.hub.save_pretrained``; ``config`` defaults to
        :attr:`metadata` or :meth:`get_config`); with ``push_to_hub=True`` upload it to ``repo_id``
        (default: the folder's name) with ``push_to_hub_kwargs`` (those of ``lipzoo.hub.push``:
        ``token``, ``revision``, ``private``, ``commit_message``) and return the commit info."""
        from lipzoo.models.factory import push_checkpoint, save_checkpoint

        if push_to_hub:  # checked before anything is written
            revision = _revision(push_to_hub_kwargs.pop("revision", None), push_to_hub_kwargs.pop("branch", None),
                                 "save_pretrained")
        directory = save_checkpoint(self, save_directory, config=config, card=card, storage_dtype=storage_dtype)
        if push_to_hub:
            return push_checkpoint(directory, repo_id or Path(save_directory).name, revision=revision,
                                   **push_to_hub_kwargs)
        return None

    def push_to_hub(self, repo_id: str, *, config: Any = None, commit_message: str = "Upload lipzoo checkpoint",
                    private: bool | None = None, token: str | None = None, revision: str | None = None,
                    card: dict[str, Any] | None = None, storage_dtype: str = "float32",
                    branch: str | None = None) -> Any:
        """Save to a temporary folder and upload it (``lipzoo.hub.push``); returns the commit info.

        ``revision`` is the branch to commit to (default ``main``), as in ``lipzoo.hub.push`` and
        ``lipzoo push --revision``; ``branch`` is its deprecated name (lipzoo 0.1), removed in 0.3.
        """
        import tempfile

        from lipzoo.models.factory import push_checkpoint

        revision = _revision(revision, branch, "push_to_hub")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "checkpoint"
            self.save_pretrained(folder, config=config, card=card, storage_dtype=storage_dtype)
            return push_checkpoint(folder, repo_id, token=token, revision=revision, private=bool(private),
                                   commit_message=commit_message)


def _revision(revision: str | None, branch: str | None, where: str) -> str | None:
    """``revision``, or the deprecated ``branch=`` (lipzoo 0.1) with a ``DeprecationWarning``."""
    if branch is None:
        return revision
    if revision is not None and revision != branch:
        raise TypeError(f"{where}: got revision={revision!r} and branch={branch!r}; pass revision= only (branch= is "
                        "its deprecated name).")
    warnings.warn(f"{where}(branch=...) is deprecated and will be removed in lipzoo 0.3; pass revision=... (the Hub "
                  "revision to commit to, as in lipzoo.hub.push and `lipzoo push --revision`).",
                  DeprecationWarning, stacklevel=3)
    return branch


def assemble(layers: list[nn.Module], *, architecture: str, activation, in_chans: int, height: int, width: int,
             num_classes: int) -> "LipschitzSequential":
    """The :class:`LipschitzSequential` of a family's layers, with the ``model_args`` that rebuild it; timm's
    ``num_classes=0`` drops the classifier (the model then returns features)."""
    model_args = {"activation": activation, "in_chans": in_chans, "img_size": [height, width]}
    model = LipschitzSequential(layers, architecture=architecture, input_shape=(in_chans, height, width),
                                model_args=model_args)
    if num_classes == 0:
        model.reset_classifier(0)
    return model
