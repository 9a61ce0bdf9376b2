"""Datasets in pixel units: ``x`` float32 CHW in [0, 1], ``y`` int64.

Standardization is not done here: every lipzoo model starts with its own ``Normalize`` layer, so
that eps is measured in pixel units.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lipzoo.meta import DATASETS as _FACTS
from lipzoo.meta import DatasetFacts, dataset_facts, file_sha256

logger = logging.getLogger(__name__)

__all__ = ["ENV_VAR", "DATASETS", "ImageTensorDataset", "load_dataset", "dataset_info", "data_facts", "data_label"]

ENV_VAR = "LIPZOO_DATA"
"""The environment variable naming the folder with ``mnist.npz`` / ``cifar10.npz`` / ``tiny-imagenet-200``."""
DATASETS = tuple(_FACTS)  # the names of lipzoo.meta.DATASETS
"""The dataset names :func:`load_dataset` knows: ``mnist``, ``cifar10``, ``tinyimagenet``."""
CACHE_DIR = Path.home() / ".cache" / "lipzoo"
BUNDLED_MNIST_TEST = Path(__file__).with_name("mnist_test.npz")
BUNDLED_MNIST_TEST_SHA256 = "b8d30bd15bf8aec9eb69ca5b88ee72078b29f27777d7b2a2d53a588f90a19fec"

def dataset_info(name: str) -> dict[str, Any]:
    """``num_classes``, ``input_shape`` (C, H, W), ``mean`` and ``std`` (per channel, pixel units).

    A dict view of :data:`lipzoo.meta.DATASETS`, the one table of dataset facts.
    """
    facts = dataset_facts(name)
    return {"num_classes": facts.num_classes, "input_shape": facts.input_shape, "mean": facts.mean, "std": facts.std}


class ImageTensorDataset(Dataset):
    """In-memory images, stored as given (uint8 keeps CIFAR-10 at 150 MB instead of 600 MB).

    Args:
        images: ``(N, C, H, W)`` uint8 (scaled by 1/255 on access) or float in [0, 1].
        labels: ``(N,)`` integer labels.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dim() != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"images must be (N, C, H, W) and labels (N,); got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}.")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = self.images[index]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        return x, self.labels[index]


def _to_chw(x: np.ndarray, key: str, path: Path) -> Tensor:
    if x.ndim == 3:  # (N, H, W) grayscale
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # Keras NHWC
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise ValueError(f"Array {key!r} in {path} must be (N, H, W), (N, H, W, C) or (N, C, H, W); got {x.shape}.")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    if np.issubdtype(x.dtype, np.floating) and x.size and not np.isfinite(x).all():
        bad = ~np.isfinite(x)
        raise ValueError(f"Array {key!r} in {path} holds {int(bad.sum())} NaN/inf pixel values (first image "
                         f"{int(bad.reshape(len(x), -1).any(1).argmax())}); clean the data or store uint8 pixels.")
    if not np.issubdtype(x.dtype, np.floating) or x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"Array {key!r} in {path} must be uint8 or float in [0, 1]; got dtype {x.dtype} "
                         "with values outside [0, 1] or of a non-float type. Store raw uint8 pixels.")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _load_npz(path: Path, split: str) -> ImageTensorDataset:
    """Keras-layout archive: ``x_<split>`` images and ``y_<split>`` labels."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"Could not read {path} as an .npz archive ({err}); the file is corrupt, "
                         "re-create it.") from err
    with archive:
        arrays = {}
        for key in (f"x_{split}", f"y_{split}"):
            if key not in archive.files:
                raise ValueError(f"Key {key!r} missing from {path}; it holds {sorted(archive.files)}. "
                                 "Expected the Keras layout x_train, y_train, x_test, y_test.")
            try:
                arrays[key] = archive[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise ValueError(f"Key {key!r} of {path} is corrupt ({err}); re-create the file.") from err
    x = _to_chw(arrays[f"x_{split}"], f"x_{split}", path)
    y = arrays[f"y_{split}"].reshape(-1)
    if y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"Key 'y_{split}' of {path} must hold {x.shape[0]} integer labels; "
                         f"got shape {arrays[f'y_{split}'].shape}, dtype {y.dtype}.")
    return ImageTensorDataset(x, torch.from_numpy(y.astype(np.int64)))


def _torchvision(name: str, split: str, download: bool) -> ImageTensorDataset:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.CIFAR10
    try:
        ds = cls(str(CACHE_DIR), train=split == "train", download=download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"No {name} data found: no root argument, {ENV_VAR} is not set and {CACHE_DIR} holds no "
            f"torchvision copy ({err}). Fix: pass root=<folder with {name}.npz>, set {ENV_VAR}=<folder>, "
            "or call with download=True."
        ) from None
    data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()
    return ImageTensorDataset(_to_chw(data, "data", CACHE_DIR), torch.as_tensor(ds.targets, dtype=torch.int64))


def _pil_to_pixels(image: Any) -> Tensor:
    from torchvision.transforms.v2 import functional as TF

    return TF.pil_to_tensor(image).float().div_(255)


def _to_int64(label: int) -> Tensor:
    return torch.tensor(label, dtype=torch.int64)


class _AnnotatedImages(Dataset):
    """Tiny-ImageNet ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` (the original layout)."""

    def __init__(self, folder: Path, class_to_idx: dict[str, int]) -> None:
        self.classes, self.class_to_idx = sorted(class_to_idx, key=class_to_idx.__getitem__), class_to_idx
        self.samples: list[tuple[str, int]] = []
        for line in (folder / "val_annotations.txt").read_text().splitlines():
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            if fields[1] not in class_to_idx:
                raise ValueError(f"Class {fields[1]!r} in {folder / 'val_annotations.txt'} is not a training class.")
            self.samples.append((str(folder / "images" / fields[0]), class_to_idx[fields[1]]))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[index]
        return _pil_to_pixels(default_loader(path)), _to_int64(label)


def _tinyimagenet(root: Path, split: str) -> Dataset:
    from torchvision.datasets import ImageFolder

    base = root / "tiny-imagenet-200"
    train_dir = base / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(
            f"Tiny-ImageNet not found: {train_dir} does not exist (root from the argument or {ENV_VAR}). Fix: "
            f"unzip tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) into {root}; "
            "lipzoo cannot download it."
        )
    if split == "train":
        return ImageFolder(str(train_dir), transform=_pil_to_pixels, target_transform=_to_int64)
    # The test split of Tiny-ImageNet has no labels; its labelled val split is the test set.
    val_dir = base / "val"
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    class_to_idx = {c: i for i, c in enumerate(classes)}
    if (val_dir / "val_annotations.txt").is_file() and (val_dir / "images").is_dir():
        return _AnnotatedImages(val_dir, class_to_idx)
    if val_dir.is_dir():  # reorganised layout val/<wnid>/[images/]*.JPEG
        ds = ImageFolder(str(val_dir), transform=_pil_to_pixels, target_transform=_to_int64)
        unknown = sorted(set(ds.classes) - set(classes))
        if unknown:
            raise ValueError(f"Class folders {unknown[:3]} of {val_dir} are not training classes of {train_dir}.")
        # Index val labels like the training classes, even if a class folder is missing from val.
        ds.samples = [(p, class_to_idx[ds.classes[t]]) for p, t in ds.samples]
        ds.targets = [t for _, t in ds.samples]
        ds.imgs, ds.classes, ds.class_to_idx = ds.samples, classes, class_to_idx
        return ds
    raise FileNotFoundError(f"Tiny-ImageNet validation folder {val_dir} does not exist; re-extract the archive.")


def load_dataset(name_or_path: str | os.PathLike[str], split: str = "train", root: str | os.PathLike[str] | None = None,
                 download: bool = False) -> Dataset:
    """Load a dataset yielding ``(x, y)``: float32 CHW pixels in [0, 1] and int64 labels.

    ``name_or_path`` is ``"mnist"`` / ``"cifar10"`` (``<root>/<name>.npz`` in the Keras layout),
    ``"tinyimagenet"`` (``<root>/tiny-imagenet-200``, ImageFolder; its labelled val split is ``"test"``),
    a path to an ``.npz`` archive (Keras layout) or to an image folder ``DIR/train/<class>/*.png``
    and ``DIR/test/<class>/*.png`` (or ``DIR/val/...``; classes indexed in sorted order of the
    training folders, as torchvision's ``ImageFolder``). The folder is ``root``, else the ``LIPZOO_DATA`` environment
    variable. Without either, ``("mnist", "test")`` uses the bundled copy (``lipzoo/data/README.md``);
    other MNIST / CIFAR-10 splits use torchvision's copy in ``~/.cache/lipzoo`` (fetched when
    ``download=True``).

    Raises:
        ValueError: unknown name or split, a corrupt archive, a missing key, or a bundled file whose
            sha256 does not match (a corrupted install).
        FileNotFoundError: the data file or folder does not exist (the message names the fix).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    name = os.fspath(name_or_path)
    if name not in DATASETS:
        path = Path(name).expanduser()
        if path.is_dir():
            return _load_image_folder(path, split)
        if path.suffix == ".npz" or os.sep in name or path.exists():
            if not path.is_file():
                raise FileNotFoundError(f"Dataset file {path} does not exist; pass an existing .npz path "
                                        f"or one of {DATASETS}.")
            return _load_npz(path, split)
        raise ValueError(f"Unknown dataset {name!r}; use one of {DATASETS}, a path to an .npz file or an image "
                         "folder.")
    folder = root if root is not None else os.environ.get(ENV_VAR) or None
    if name == "tinyimagenet":
        if folder is None:
            raise FileNotFoundError(f"Tiny-ImageNet needs a folder: pass root=<folder holding tiny-imagenet-200> "
                                    f"or set {ENV_VAR}.")
        return _tinyimagenet(Path(folder).expanduser(), split)
    if folder is not None:
        path = Path(folder).expanduser() / f"{name}.npz"
        if not path.is_file():
            source = "root argument" if root is not None else f"{ENV_VAR} environment variable"
            raise FileNotFoundError(f"{path} does not exist (folder from the {source}). Fix: put {name}.npz "
                                    f"(Keras layout) there, point root / {ENV_VAR} elsewhere, or unset them "
                                    "and use download=True.")
        return _load_npz(path, split)
    if name == "mnist" and split == "test":
        digest = file_sha256(BUNDLED_MNIST_TEST)
        if digest != BUNDLED_MNIST_TEST_SHA256:
            raise ValueError(f"Bundled {BUNDLED_MNIST_TEST} has sha256 {digest}, expected "
                             f"{BUNDLED_MNIST_TEST_SHA256}: corrupted install; reinstall lipzoo.")
        logger.info("Using the bundled MNIST test split %s", BUNDLED_MNIST_TEST)
        return _load_npz(BUNDLED_MNIST_TEST, split)
    return _torchvision(name, split, download)


# -- the user's own data -----------------------------------------------------------------------------
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _split_folder(root: Path, split: str) -> Path:
    names = ("train",) if split == "train" else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"Image folder {root} has no {' or '.join(n + '/' for n in names)} folder: expected "
                            f"{root}/train/<class>/<image> and {root}/test/<class>/<image>.")


def _load_image_folder(root: Path, split: str) -> ImageTensorDataset:
    """``root/<split>/<class>/<image>`` read into one uint8 tensor (every image of one size)."""
    from PIL import Image

    classes = sorted(p.name for p in _split_folder(root, "train").iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"Image folder {root / 'train'} has no class folders; expected train/<class>/<image>.")
    folder = _split_folder(root, split)
    unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise ValueError(f"Class folders {unknown[:3]} of {folder} are not training classes (train/ has {classes[:5]}"
                         f"{'...' if len(classes) > 5 else ''}).")
    arrays, labels, first = [], [], None
    for index, cls in enumerate(classes):
        for file in sorted((folder / cls).iterdir()) if (folder / cls).is_dir() else []:
            if file.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as opened:
                    image = opened.convert("L" if opened.mode in ("1", "L", "I", "I;16", "F") else "RGB")
                    pixels = np.asarray(image, dtype=np.uint8)
            except OSError as err:
                raise ValueError(f"Cannot read image {file} ({err}); remove or re-save it.") from err
            pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
            if first is None:
                first = (file, pixels.shape[:2])
            elif pixels.shape[:2] != first[1]:
                raise ValueError(f"Images must share one size: {file} is {pixels.shape[1]}x{pixels.shape[0]}, "
                                 f"{first[0]} is {first[1][1]}x{first[1][0]}; resize them first.")
            arrays.append(pixels)
            labels.append(index)
    if not arrays:
        raise ValueError(f"Image folder {folder} holds no images ({', '.join(_IMAGE_SUFFIXES)}).")
    channels = max(a.shape[2] for a in arrays)  # grayscale images among colour ones become grey RGB
    x = np.stack([np.repeat(a, channels // a.shape[2], axis=2) for a in arrays]).transpose(0, 3, 1, 2)
    return ImageTensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.tensor(labels, dtype=torch.int64))


def data_label(name_or_path: str | os.PathLike[str]) -> str:
    """The name a model's ``dataset`` records: a known dataset's name, else the file or folder name."""
    name = os.fspath(name_or_path)
    return name if name in DATASETS else Path(name).expanduser().resolve().name


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std in pixel units, exact for uint8 (from 256-bin histograms)."""
    channels = images.shape[1]
    if images.dtype == torch.uint8:
        flat = images.transpose(0, 1).reshape(channels, -1).numpy()
        levels = np.arange(256, dtype=np.float64) / 255
        mean, std = [], []
        for c in range(channels):
            counts = np.bincount(flat[c], minlength=256).astype(np.float64)
            m = float(counts @ levels / counts.sum())
            mean.append(m)
            std.append(float(np.sqrt(counts @ (levels - m) ** 2 / counts.sum())))
        return tuple(mean), tuple(std)
    x = images.transpose(0, 1).reshape(channels, -1).double()
    return tuple(x.mean(1).tolist()), tuple(x.std(1, unbiased=False).tolist())


def _check_labels(labels: Tensor, split: str, where: str, num_classes: int | None) -> int:
    if labels.numel() == 0:
        raise ValueError(f"The {split} split of {where} is empty (0 images); it needs at least one labelled image.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"The {split} split of {where} has a negative label ({low}); labels must be 0..K-1.")
    if num_classes is not None and high >= num_classes:
        raise ValueError(f"The {split} split of {where} has label {high}, but the training split has "
                         f"{num_classes} classes (0..{num_classes - 1}).")
    return high + 1


def _has_test_split(path: Path) -> bool:
    if path.is_dir():
        return (path / "test").is_dir() or (path / "val").is_dir()
    with np.load(path, allow_pickle=False) as archive:  # readable: the training split was just read from it
        return "x_test" in archive.files or "y_test" in archive.files


def data_facts(name_or_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> DatasetFacts:
    """The :class:`lipzoo.meta.DatasetFacts` of a known dataset, or of the user's own data, checked.

    For an ``.npz`` file or an image folder, the training split is loaded and checked (not empty,
    labels ``0..K-1`` with every class present, finite pixels in [0, 1]) and so is the test split
    when there is one (same image shape, labels below ``K``); the class count, input shape and
    per-channel mean / std (population, pixel units) come from the training split.

    Raises:
        ValueError: the data breaks one of the rules above (one line naming the split and the fix).
        FileNotFoundError: no such file or folder.
    """
    name = os.fspath(name_or_path)
    if name in DATASETS:
        return dataset_facts(name)
    label = data_label(name)
    train = cast(ImageTensorDataset, load_dataset(name, split="train", root=root))  # a file or folder: images, labels
    num_classes = _check_labels(train.labels, "train", label, None)
    present = torch.bincount(train.labels, minlength=num_classes)
    empty = (present == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"The training split of {label} has no image of class(es) {empty[:10]} although its labels "
                         f"go up to {num_classes - 1}: relabel the classes to 0..K-1 (scripts/make_subset.py does).")
    shape = tuple(int(s) for s in train.images.shape[1:])
    test = (cast(ImageTensorDataset, load_dataset(name, split="test", root=root))
            if _has_test_split(Path(name).expanduser()) else None)
    if test is None:
        logger.warning("%s has no test split (x_test / y_test, or test/): lipzoo certify will need other data.", label)
    else:
        _check_labels(test.labels, "test", label, num_classes)
        if tuple(test.images.shape[1:]) != shape:
            raise ValueError(f"The test images of {label} are {tuple(test.images.shape[1:])}, the training images "
                             f"{shape}: both splits need one shape.")
    mean, std = _channel_stats(train.images)
    if min(std) <= 0:
        raise ValueError(f"The training images of {label} are constant in a channel (std {std}); nothing to learn.")
    return DatasetFacts(label, num_classes, cast(tuple[int, int, int], shape), mean, std,
                        f"computed from the training split of {label}")
