"""The metadata model: what a zoo entry, a ``config.json`` or a command line says about a model.

Every value with rules is parsed **once**, where it enters (a zoo YAML, a checkpoint's
``config.json``, ``key=value`` overrides, ``--eps``), into the frozen types below, and passed on as
those types; :meth:`Metadata.to_dict` writes the one JSON/YAML layout back.

This module sits at the bottom of the import order (standard library only), so that every layer
can use :class:`Eps` and the dataset facts. Checks that need the model registry (is the
architecture registered, does it build with these arguments) live in :mod:`lipzoo.models.zoo`.

Provenance (issue 9): measured numbers are :class:`Results`, and a :class:`Results` carries the
sha256 of the ``model.safetensors`` it was measured on. :meth:`Metadata.for_weights` is the one
place that decides what survives when a config is written next to new weights: results and the
``weights`` reference only when their sha256 is the new one, and a zoo name that belongs to other
weights becomes the ``parent``.
"""

from lipzoo.meta._schema import (AUGMENTATIONS, G_FUNCTIONS, LOSSES, OPTIMIZERS, SCHEDULERS, STORAGE_DTYPES,
                                 file_sha256)
from lipzoo.meta.datasets import DATASETS, DatasetFacts, dataset_facts
from lipzoo.meta.eps import Eps, parse_eps
from lipzoo.meta.metadata import (ArchitectureConfig, Measured, Metadata, Normalization, Parent, Results,
                                  WeightsRef)
from lipzoo.meta.recipe import (Augmentation, CRMSettings, EMMASettings, GloRoSettings, HKRSettings, Optimizer, Recipe,
                                Scheduler)

__all__ = [
    "Eps", "parse_eps", "DatasetFacts", "DATASETS", "dataset_facts", "LOSSES", "OPTIMIZERS", "SCHEDULERS",
    "G_FUNCTIONS", "AUGMENTATIONS", "STORAGE_DTYPES", "Optimizer", "Scheduler", "CRMSettings", "GloRoSettings",
    "EMMASettings", "HKRSettings", "Augmentation",
    "Recipe", "Normalization", "ArchitectureConfig", "WeightsRef", "Measured", "Results", "Parent", "Metadata",
    "file_sha256",
]
