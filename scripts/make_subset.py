"""Write a K-class subset of a Keras-layout ``.npz`` (x_train, y_train, x_test, y_test) for fine-tuning.

The chosen classes are relabelled 0..K-1 in the order given, and each split can be capped to its
first N images per class (the source order is kept, so the subset is deterministic). Pixels are
copied as they are (uint8 stays uint8)::

    python scripts/make_subset.py $LIPZOO_DATA/cifar10.npz cifar10-5.npz --classes 0 1 2 3 4
    python scripts/make_subset.py $LIPZOO_DATA/cifar10.npz small.npz --classes 3 5 --train-per-class 500

Needs numpy only. ``make_subset`` is importable for tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

SPLITS = ("train", "test")


def make_subset(source: str | Path, out: str | Path, classes: Sequence[int], *, train_per_class: int | None = None,
                test_per_class: int | None = None) -> dict[str, list[int]]:
    """Write the subset; returns the images per new class of each split (``{"train": [...], "test": [...]}``).

    Raises:
        ValueError: no or repeated classes, a class absent from a split, a missing key, or a cap < 1.
    """
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"--classes must list distinct labels, got {classes}.")
    caps = {"train": train_per_class, "test": test_per_class}
    for split, cap in caps.items():
        if cap is not None and cap < 1:
            raise ValueError(f"--{split}-per-class must be >= 1, got {cap}.")
    arrays: dict[str, np.ndarray] = {}
    counts: dict[str, list[int]] = {}
    with np.load(source, allow_pickle=False) as data:
        missing = [k for s in SPLITS for k in (f"x_{s}", f"y_{s}") if k not in data.files]
        if missing:
            raise ValueError(f"{source} lacks {missing}; expected the Keras layout x_train, y_train, x_test, y_test.")
        for split in SPLITS:
            x, y = data[f"x_{split}"], data[f"y_{split}"].reshape(-1)
            keep, labels = [], []
            for new, old in enumerate(classes):
                idx = np.flatnonzero(y == old)[:caps[split]]
                if idx.size == 0:
                    raise ValueError(f"class {old} has no image in the {split} split of {source}.")
                keep.append(idx)
                labels.append(np.full(idx.size, new, dtype=np.uint8 if len(classes) <= 256 else np.int64))
            order = np.argsort(np.concatenate(keep), kind="stable")  # keep the source order
            arrays[f"x_{split}"] = x[np.concatenate(keep)[order]]
            arrays[f"y_{split}"] = np.concatenate(labels)[order]
            counts[split] = [int(i.size) for i in keep]
    np.savez(out, **arrays)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("source", help="Keras-layout .npz, e.g. $LIPZOO_DATA/cifar10.npz")
    p.add_argument("out", help="the subset .npz to write")
    p.add_argument("--classes", type=int, nargs="+", required=True, help="source labels to keep (new labels 0..K-1)")
    p.add_argument("--train-per-class", type=int, help="first N training images per class (default: all)")
    p.add_argument("--test-per-class", type=int, help="first N test images per class (default: all)")
    args = p.parse_args(argv)
    try:
        counts = make_subset(args.source, args.out, args.classes, train_per_class=args.train_per_class,
                             test_per_class=args.test_per_class)
    except (ValueError, OSError) as err:
        print(f"make_subset: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: classes {args.classes} -> 0..{len(args.classes) - 1}, "
          f"{sum(counts['train'])} train / {sum(counts['test'])} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
