"""Train / validation loaders with a seeded split and per-sample augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["AUGMENTATIONS", "build_augmentation", "make_loaders"]

#: Names accepted in an augmentation spec.
AUGMENTATIONS = ("hflip", "affine", "crop")


def _one_augmentation(item: str | dict[str, Any], image_size: tuple[int, int] | None) -> Any:
    from torchvision.transforms import v2

    if isinstance(item, str):
        name, kwargs = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, kwargs = next(iter(item.items()))
        kwargs = dict(kwargs or {})
    else:
        raise ValueError(f"Each augmentation must be a name or a one-key dict {{name: {{kwargs}}}}; got {item!r}. "
                         f"Supported: {AUGMENTATIONS}.")
    if name not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {name!r}; supported augmentations are {AUGMENTATIONS}.")
    try:
        if name == "hflip":
            return v2.RandomHorizontalFlip(**kwargs)
        if name == "affine":
            translate = kwargs.get("translate")
            if isinstance(translate, (int, float)):  # one fraction for both axes, as in the paper's recipe
                kwargs["translate"] = (float(translate), float(translate))
            elif translate is not None:
                kwargs["translate"] = tuple(translate)
            return v2.RandomAffine(**kwargs)
        kwargs.setdefault("padding", 4)
        size = kwargs.pop("size", image_size)
        if size is None:
            raise ValueError("crop needs a size; pass {'crop': {'size': 32, 'padding': 4}}.")
        return v2.RandomCrop(size, **kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Invalid arguments {kwargs} for augmentation {name!r}: {err}") from err


def build_augmentation(spec: Sequence[str | dict[str, Any]], image_size: tuple[int, int] | None = None) -> Any:
    """Turn ``["hflip", {"affine": {"degrees": 10, "translate": 0.1}}]`` into a torchvision v2 transform.

    Supported: ``hflip`` (``RandomHorizontalFlip``), ``affine`` (``RandomAffine``; a scalar
    ``translate`` applies to both axes) and ``crop`` (``RandomCrop``, default ``padding=4`` and the
    image's own size). Keyword arguments go to the torchvision class.

    Returns:
        A ``v2.Compose`` acting on one ``(C, H, W)`` tensor, or None for an empty spec.

    Raises:
        ValueError: on an unknown name or invalid arguments.
    """
    from torchvision.transforms import v2

    if isinstance(spec, (str, dict)):
        spec = [spec]
    transforms = [_one_augmentation(item, image_size) for item in spec]
    return v2.Compose(transforms) if transforms else None


class _Part(Dataset):
    """A subset of a dataset with an optional per-sample transform of ``x``."""

    def __init__(self, dataset: Dataset, indices: Tensor, transform: Any = None) -> None:
        self.dataset, self.indices, self.transform = dataset, indices.tolist(), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.dataset[self.indices[index]]
        return (self.transform(x) if self.transform is not None else x), y


def make_loaders(
    train_dataset: Dataset,
    batch_size: int,
    *,
    validation_split: float = 0.0,
    augmentation: Sequence[str | dict[str, Any]] = (),
    seed: int = 0,
    num_workers: int = 0,
    distributed: bool = False,
) -> dict[str, DataLoader | None]:
    """Split ``train_dataset`` into train / validation loaders.

    The split and the shuffling order are fixed by ``seed``. Augmentation applies to the training
    part only. With ``distributed=True`` the training loader uses a ``DistributedSampler`` (call
    ``loader.sampler.set_epoch(epoch)`` every epoch); the validation loader is not sharded, so every
    rank sees the full validation set and needs no reduction.

    Args:
        train_dataset: a map-style dataset of ``(x, y)``.
        batch_size: samples per batch (per process when distributed).
        validation_split: fraction in [0, 1) held out for validation.
        augmentation: spec for :func:`build_augmentation`.
        seed: seed of the split and of the shuffling.
        num_workers: DataLoader worker processes.
        distributed: shard the training set over an initialized ``torch.distributed`` group.

    Returns:
        ``{"train": DataLoader, "val": DataLoader or None}``.

    Raises:
        ValueError: on invalid sizes, an empty part, an invalid augmentation or ``distributed=True``
            without an initialized process group.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}.")
    if not isinstance(validation_split, (int, float)) or not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be a fraction in [0, 1); got {validation_split!r}.")
    if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError("distributed=True needs an initialized process group; call "
                         "torch.distributed.init_process_group(...) first (e.g. launch with torchrun).")
    n = len(train_dataset)
    n_val = int(round(n * validation_split))
    if n - n_val < 1 or (validation_split > 0 and n_val < 1):
        raise ValueError(f"validation_split={validation_split} of {n} samples leaves an empty part "
                         f"({n - n_val} train, {n_val} validation); change validation_split.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    image_size = tuple(train_dataset[0][0].shape[-2:]) if len(augmentation) else None
    train_part = _Part(train_dataset, order[n_val:], build_augmentation(augmentation, image_size))
    common: dict[str, Any] = dict(batch_size=batch_size, num_workers=num_workers,
                                  persistent_workers=False, pin_memory=torch.cuda.is_available())
    if distributed:
        sampler = DistributedSampler(train_part, shuffle=True, seed=seed)
        train = DataLoader(train_part, sampler=sampler, **common)
    else:
        train = DataLoader(train_part, shuffle=True, generator=torch.Generator().manual_seed(seed), **common)
    val = DataLoader(_Part(train_dataset, order[:n_val]), shuffle=False, **common) if n_val else None
    return {"train": train, "val": val}
