"""Datasets in pixel units [0, 1] (Keras-layout npz, torchvision, ImageFolder) and their loaders."""

from lipzoo.data.datasets import DATASETS, ENV_VAR, ImageTensorDataset, dataset_info, load_dataset
from lipzoo.data.loaders import AUGMENTATIONS, build_augmentation, make_loaders

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "ENV_VAR",
    "ImageTensorDataset",
    "build_augmentation",
    "dataset_info",
    "load_dataset",
    "make_loaders",
]
