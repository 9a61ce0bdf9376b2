"""Train / validation loaders with a seeded split and per-sample augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lipzoo.meta import AUGMENTATIONS  # the recipe schema's names (one list)

__all__ = ["AUGMENTATIONS", "build_augmentation", "make_loaders", "DeviceAugment", "DeviceLoader",
           "make_device_loaders"]

def _spec_item(item: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``"hflip"`` or ``{"affine": {...}}`` -> ``(name, kwargs)`` (a fresh kwargs dict), checked."""
    kwargs: dict[str, Any]
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
    return name, kwargs


def _one_augmentation(item: str | dict[str, Any], image_size: tuple[int, int] | None) -> Any:
    from torchvision.transforms import v2

    name, kwargs = _spec_item(item)
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
    if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError("distributed=True needs an initialized process group; call "
                         "torch.distributed.init_process_group(...) first (e.g. launch with torchrun).")
    train_idx, val_idx = _split(len(train_dataset), batch_size, validation_split, seed)  # type: ignore[arg-type]
    image_size = tuple(train_dataset[0][0].shape[-2:]) if len(augmentation) else None
    train_part = _Part(train_dataset, train_idx, build_augmentation(augmentation, image_size))
    common: dict[str, Any] = dict(batch_size=batch_size, num_workers=num_workers,
                                  persistent_workers=False, pin_memory=torch.cuda.is_available())
    if distributed:
        sampler: DistributedSampler[Any] = DistributedSampler(train_part, shuffle=True, seed=seed)
        train = DataLoader(train_part, sampler=sampler, **common)
    else:
        train = DataLoader(train_part, shuffle=True, generator=torch.Generator().manual_seed(seed), **common)
    val = DataLoader(_Part(train_dataset, val_idx), shuffle=False, **common) if len(val_idx) else None
    return {"train": train, "val": val}


def _split(n: int, batch_size: int, validation_split: float, seed: int) -> tuple[Tensor, Tensor]:
    """Checked arguments and the seeded ``(train, validation)`` indices of ``n`` samples (both loader paths)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}.")
    if not isinstance(validation_split, (int, float)) or not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be a fraction in [0, 1); got {validation_split!r}.")
    n_val = int(round(n * validation_split))
    if n - n_val < 1 or (validation_split > 0 and n_val < 1):
        raise ValueError(f"validation_split={validation_split} of {n} samples leaves an empty part "
                         f"({n - n_val} train, {n_val} validation); change validation_split.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


# -- the device-resident path ---------------------------------------------------------------------


def _stack_images(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of a dataset: its own uint8 tensors when it has them, else stacked samples."""
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if isinstance(images, Tensor) and isinstance(labels, Tensor):
        return images, labels.long()
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))  # type: ignore[arg-type]
    return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys]).long()


def _uniform(generator: torch.Generator, n: int, low: float, high: float, device) -> Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _affine_params(spec: dict[str, Any]) -> tuple[float, tuple[float, float], tuple[float, float] | None]:
    unknown = sorted(set(spec) - {"degrees", "translate", "scale"})
    if unknown:
        raise ValueError(f"affine on the device supports degrees, translate and scale; got {unknown}.")
    degrees = float(spec.get("degrees", 0.0))
    if degrees < 0:
        raise ValueError(f"affine degrees must be >= 0; got {degrees}.")
    translate = spec.get("translate") or (0.0, 0.0)
    translate = (float(translate), float(translate)) if isinstance(translate, (int, float)) else tuple(map(float, translate))
    if len(translate) != 2 or not all(0.0 <= t <= 1.0 for t in translate):
        raise ValueError(f"affine translate must be a fraction in [0, 1] or a pair of them; got {spec.get('translate')!r}.")
    scale = spec.get("scale")
    if scale is not None:
        scale = tuple(map(float, scale))
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"affine scale must be a pair 0 < lo <= hi; got {spec.get('scale')!r}.")
    return degrees, translate, scale


class DeviceAugment:
    """Batched augmentation on the device, with the semantics of the torchvision transforms.

    ``hflip`` (probability ``p``, default 0.5), ``affine`` (``degrees``: angle uniform in
    ``[-degrees, degrees]``; ``translate``: integer shift uniform in ``±translate * size``;
    ``scale``: factor uniform in ``[lo, hi]``; nearest-neighbour sampling and zero fill, as
    ``RandomAffine``'s defaults) and ``crop`` (zero ``padding``, default 4, then a random crop of
    ``size``, default the image's own). All randomness comes from ``generator`` (on the data's
    device), so no host synchronization happens per batch.
    """

    def __init__(self, spec: Sequence[str | dict[str, Any]], image_size: tuple[int, int]):
        if isinstance(spec, (str, dict)):
            spec = [spec]
        self.ops: list[tuple[str, dict[str, Any]]] = []
        for item in spec:
            name, kwargs = _spec_item(item)
            if name == "hflip":
                p = float(kwargs.pop("p", 0.5))
                if kwargs or not 0.0 <= p <= 1.0:
                    raise ValueError(f"hflip takes only p in [0, 1]; got p={p}, {kwargs}.")
                self.ops.append(("hflip", {"p": p}))
            elif name == "affine":
                degrees, translate, scale = _affine_params(kwargs)
                self.ops.append(("affine", {"degrees": degrees, "translate": translate, "scale": scale}))
            else:
                padding = int(kwargs.pop("padding", 4))
                size = kwargs.pop("size", image_size)
                size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(map(int, size))
                if kwargs or padding < 0 or len(size) != 2:
                    raise ValueError(f"crop takes size and padding >= 0; got size={size}, padding={padding}, {kwargs}.")
                if size[0] > image_size[0] + 2 * padding or size[1] > image_size[1] + 2 * padding:
                    raise ValueError(f"crop size {size} is larger than the padded image {image_size} + 2*{padding}.")
                self.ops.append(("crop", {"padding": padding, "size": size}))

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        for name, kw in self.ops:
            x = getattr(self, f"_{name}")(x, generator, **kw)
        return x

    @staticmethod
    def _hflip(x: Tensor, gen: torch.Generator, p: float) -> Tensor:
        flip = torch.rand(x.shape[0], generator=gen, device=x.device) < p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    @staticmethod
    def _affine(x: Tensor, gen: torch.Generator, degrees: float, translate, scale) -> Tensor:
        n, (h, w), dev = x.shape[0], x.shape[-2:], x.device
        angle = torch.deg2rad(_uniform(gen, n, -degrees, degrees, dev))
        # torchvision draws integer pixel shifts: round(uniform(-t * size, t * size)).
        tx = torch.round(_uniform(gen, n, -translate[0] * w, translate[0] * w, dev))
        ty = torch.round(_uniform(gen, n, -translate[1] * h, translate[1] * h, dev))
        s = _uniform(gen, n, scale[0], scale[1], dev) if scale else torch.ones(n, device=dev)
        return DeviceAugment.warp(x, angle, tx, ty, s)

    @staticmethod
    def warp(x: Tensor, angle: Tensor, tx: Tensor, ty: Tensor, s: Tensor) -> Tensor:
        """Rotate each image by ``angle`` (radians) about its centre, scale by ``s``, shift by (tx, ty) pixels.

        Nearest-neighbour sampling and zero fill, as ``torchvision``'s ``RandomAffine`` defaults.
        """
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        # Output pixel p (centred pixel coordinates) samples input pixel R^-1 (p - t) / s; in the
        # normalized coordinates of affine_grid (x_pix = x_norm * w / 2) that is A x + b below.
        theta = torch.stack([
            torch.stack([cos, sin * h / w, -(cos * tx + sin * ty) * 2 / w], 1),
            torch.stack([-sin * w / h, cos, (sin * tx - cos * ty) * 2 / h], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    @staticmethod
    def _crop(x: Tensor, gen: torch.Generator, padding: int, size: tuple[int, int]) -> Tensor:
        import torch.nn.functional as F

        n, dev = x.shape[0], x.device
        xp = F.pad(x, (padding,) * 4)
        hp, wp = xp.shape[-2:]
        top = torch.randint(0, hp - size[0] + 1, (n,), generator=gen, device=dev)
        left = torch.randint(0, wp - size[1] + 1, (n,), generator=gen, device=dev)
        rows = (top[:, None] + torch.arange(size[0], device=dev))[:, :, None]
        cols = (left[:, None] + torch.arange(size[1], device=dev))[:, None, :]
        batch = torch.arange(n, device=dev)[:, None, None]
        return xp.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


class DeviceLoader:
    """Batches of a dataset held on ``device`` (uint8 stays uint8 until the batch is formed).

    The images live on the device once; every batch is indexed, scaled to [0, 1] and augmented
    there, so a training step issues no host-to-device copy and no host synchronization. The
    shuffling order comes from a CPU generator (one ``randperm`` per epoch), the augmentation from a
    generator on the device; :meth:`state_dict` / :meth:`load_state_dict` carry both for an exact
    resume. With ``world > 1`` each rank takes every ``world``-th index of the (wrapped) order,
    like ``DistributedSampler``.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, *, device, shuffle: bool = True,
                 augment: DeviceAugment | None = None, seed: int = 0, rank: int = 0, world: int = 1):
        self.device = torch.device(device)
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.rank, self.world, self.epoch = rank, world, 0
        self.generator = torch.Generator().manual_seed(seed)
        self.device_generator = torch.Generator(device=self.device).manual_seed(seed + 1)

    def __len__(self) -> int:
        n = -(-self.labels.shape[0] // self.world)
        return -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:  # the DistributedSampler interface the trainer calls
        self.epoch = epoch

    def _order(self) -> Tensor:
        n = self.labels.shape[0]
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.world > 1:
            total = -(-n // self.world) * self.world
            order = torch.cat([order, order[: total - n]])[self.rank::self.world]
        return order.to(self.device)

    def __iter__(self):
        order = self._order()
        for start in range(0, order.shape[0], self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images[idx]
            x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
            if self.augment:
                x = self.augment(x, self.device_generator)
            yield x, self.labels[idx]

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state(), "device_generator": self.device_generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"].cpu())
        self.device_generator.set_state(state["device_generator"].cpu())


def make_device_loaders(train_dataset: Dataset, batch_size: int, *, device, validation_split: float = 0.0,
                        augmentation: Sequence[str | dict[str, Any]] = (), seed: int = 0, rank: int = 0,
                        world: int = 1) -> dict[str, DeviceLoader | None]:
    """:func:`make_loaders`' split (same seed, same indices) as :class:`DeviceLoader` s on ``device``."""
    # checked before stacking
    train_idx, val_idx = _split(len(train_dataset), batch_size, validation_split, seed)  # type: ignore[arg-type]
    images, labels = _stack_images(train_dataset)
    augment = DeviceAugment(augmentation, cast(tuple[int, int], tuple(images.shape[-2:])))
    train = DeviceLoader(images[train_idx], labels[train_idx], batch_size, device=device, augment=augment or None,
                         seed=seed, rank=rank, world=world)
    val = (DeviceLoader(images[val_idx], labels[val_idx], batch_size, device=device, shuffle=False)
           if len(val_idx) else None)
    return {"train": train, "val": val}
