"""Dataset facts (classes, input shape, training-split statistics): :data:`DATASETS`, the one table."""

from __future__ import annotations

from dataclasses import dataclass



# -- datasets ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetFacts:
    """What lipzoo knows about a dataset: classes, input shape and training-split statistics.

    ``mean`` / ``std`` are per channel, in pixel units, over all training pixels (population std).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


# The one table of dataset facts (lipzoo.data.dataset_info and the builders' default normalization
# read it). MNIST and CIFAR-10: measured on /work/shared/data. Tiny-ImageNet: per-pixel statistics of
# the training split as widely quoted; its also-quoted std 0.2302/0.2265/0.2262 is the std of
# per-image means, which is not what Normalize needs.
DATASETS: dict[str, DatasetFacts] = {
    "mnist": DatasetFacts("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), "measured, training split"),
    "cifar10": DatasetFacts("cifar10", 10, (3, 32, 32), (0.491400, 0.482158, 0.446531),
                            (0.247032, 0.243485, 0.261588), "measured, training split"),
    "tinyimagenet": DatasetFacts("tinyimagenet", 200, (3, 64, 64), (0.4802, 0.4481, 0.3975),
                                 (0.2770, 0.2691, 0.2821), "quoted per-pixel statistics, training split"),
}


def dataset_facts(name: str) -> DatasetFacts:
    """The :class:`DatasetFacts` of a known dataset.

    Raises:
        ValueError: unknown name (naming the known ones).
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known datasets are {list(DATASETS)} (pass your own data as "
                         "a .npz path where a command takes --data).")
    return DATASETS[name]

