"""Datasets in pixel units [0, 1] (Keras-layout npz, torchvision, ImageFolder) and their loaders."""

from lipzoo.data.datasets import (DATASETS, ENV_VAR, ImageTensorDataset, data_facts, data_label, dataset_info,
                                  load_dataset)
from lipzoo.data.loaders import (AUGMENTATIONS, DeviceAugment, DeviceLoader, build_augmentation, make_device_loaders,
                                 make_loaders)

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DeviceAugment",
    "DeviceLoader",
    "ENV_VAR",
    "ImageTensorDataset",
    "build_augmentation",
    "data_facts",
    "data_label",
    "dataset_info",
    "load_dataset",
    "make_device_loaders",
    "make_loaders",
]
