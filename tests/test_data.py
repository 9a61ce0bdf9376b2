"""Datasets (npz, bundled MNIST, torchvision, Tiny-ImageNet folders) and loaders."""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA
from lipzoo.data import (ImageTensorDataset, build_augmentation, data_facts, dataset_info, load_dataset,
                         make_loaders)
from lipzoo.data import datasets as datasets_module


def _stack(ds, n=None):
    items = [ds[i] for i in range(len(ds) if n is None else n)]
    return torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])


# ---------------------------------------------------------------- bundled MNIST test split


def test_bundled_mnist_test_split(no_data_env):
    ds = load_dataset("mnist", split="test")
    assert len(ds) == 10000
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert [int(ds[i][1]) for i in range(10)] == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    counts = np.bincount(ds.labels.numpy(), minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    pixels = ds.images.double() / 255
    assert 0 <= pixels.min() and pixels.max() <= 1
    assert pixels.mean().item() == pytest.approx(0.132515, abs=1e-6)


@pytest.mark.skipif(not (SHARED_DATA / "mnist.npz").is_file(), reason="shared MNIST copy not present")
def test_bundled_split_equals_the_shared_copy(no_data_env):
    ds = load_dataset("mnist", split="test")
    with np.load(SHARED_DATA / "mnist.npz") as ref:
        np.testing.assert_array_equal(ds.images[:, 0].numpy(), ref["x_test"])
        np.testing.assert_array_equal(ds.labels.numpy(), ref["y_test"])


def test_bundled_sha256_is_documented_and_correct():
    path = Path(datasets_module.__file__).with_name("mnist_test.npz")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == datasets_module.BUNDLED_MNIST_TEST_SHA256
    readme = path.with_name("README.md").read_text()
    assert re.search(rf"`{digest}`", readme)


def test_bundled_file_with_wrong_sha256_is_rejected(no_data_env, monkeypatch, write_npz):
    fake = write_npz("mnist_test.npz", x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.zeros(2, np.uint8))
    monkeypatch.setattr(datasets_module, "BUNDLED_MNIST_TEST", fake)
    with pytest.raises(ValueError, match="corrupted install"):
        load_dataset("mnist", split="test")


# ---------------------------------------------------------------- npz archives


def test_root_env_and_direct_path_load_the_same_pixels(rng, write_npz, monkeypatch):
    x = rng.integers(0, 256, size=(5, 6, 7), dtype=np.uint8)
    y = rng.integers(0, 10, size=5).astype(np.uint8)
    path = write_npz("mnist.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    monkeypatch.delenv("LIPZOO_DATA", raising=False)
    by_root = load_dataset("mnist", root=path.parent)
    by_path = load_dataset(str(path))
    monkeypatch.setenv("LIPZOO_DATA", str(path.parent))
    by_env = load_dataset("mnist")
    by_env_test = load_dataset("mnist", split="test")  # the env var wins over the bundled file
    assert len(by_env_test) == 2
    for ds in (by_root, by_path, by_env):
        xs, ys = _stack(ds)
        assert xs.dtype == torch.float32 and xs.shape == (5, 1, 6, 7) and ys.dtype == torch.int64
        np.testing.assert_array_equal(xs[:, 0].numpy(), x.astype(np.float32) / 255)
        np.testing.assert_array_equal(ys.numpy(), y)


def test_cifar_hwc_becomes_chw_and_column_labels_are_flattened(rng, write_npz):
    x = rng.integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=(4, 1)).astype(np.uint8)
    path = write_npz("cifar10.npz", x_test=x, y_test=y)
    xs, ys = _stack(load_dataset("cifar10", split="test", root=path.parent))
    assert xs.shape == (4, 3, 5, 6)
    assert xs[2, 1, 3, 4].item() == pytest.approx(x[2, 3, 4, 1] / 255)  # channel c at (h, w) = x[n, h, w, c]
    np.testing.assert_array_equal(ys.numpy(), y[:, 0])


def test_float_npz_in_unit_range_is_kept(write_npz):
    x = np.linspace(0, 1, 2 * 3 * 4 * 4, dtype=np.float64).reshape(2, 3, 4, 4)
    ds = load_dataset(str(write_npz(x_train=x, y_train=np.array([0, 1]))))
    np.testing.assert_allclose(_stack(ds)[0].numpy(), x, rtol=1e-7)


@pytest.mark.parametrize("arrays, match", [
    (dict(x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.zeros(2)), "Key 'x_train' missing"),
    (dict(x_train=np.zeros((2, 4, 4), np.uint8)), "Key 'y_train' missing"),
    (dict(x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.zeros(3, np.int64)), "must hold 2 integer labels"),
    (dict(x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.zeros(2, np.float32)), "integer labels"),
    (dict(x_train=np.full((2, 4, 4), 2.0), y_train=np.zeros(2, np.int64)), "uint8 or float in"),
    (dict(x_train=np.zeros((2, 16), np.uint8), y_train=np.zeros(2, np.int64)), r"must be \(N, H, W\)"),
])
def test_bad_archives_name_the_key(write_npz, arrays, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(str(write_npz(**arrays)))


def test_corrupt_archive(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_dataset(str(path))


def test_corrupt_array_inside_a_valid_archive(write_npz):
    path = write_npz(x_train=np.arange(4000, dtype=np.uint8).reshape(10, 20, 20), y_train=np.zeros(10, np.int64))
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 64] = bytes(64)  # inside the compressed x_train member; the zip directory survives
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="Key 'x_train' of .* is corrupt"):
        load_dataset(str(path))


def test_image_tensor_dataset_checks_shapes():
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\)"):
        ImageTensorDataset(torch.zeros(2, 4, 4), torch.zeros(2))


def test_missing_files_and_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.delenv("LIPZOO_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"mnist\.npz does not exist.*LIPZOO_DATA"):
        load_dataset("mnist", root=tmp_path)
    monkeypatch.setenv("LIPZOO_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="LIPZOO_DATA environment variable"):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.npz"))
    with pytest.raises(ValueError, match="Unknown dataset 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("mnist", split="val")


# ---------------------------------------------------------------- torchvision fallback


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    path.write_bytes(struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes())


def test_torchvision_path_reads_a_cached_mnist(tmp_path, rng, monkeypatch):
    monkeypatch.delenv("LIPZOO_DATA", raising=False)
    monkeypatch.setattr(datasets_module, "CACHE_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset("mnist", split="train")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    y = np.array([4, 0, 9], np.uint8)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
    xs, ys = _stack(load_dataset("mnist", split="train"))
    np.testing.assert_array_equal((xs[:, 0] * 255).round().numpy(), x)
    np.testing.assert_array_equal(ys.numpy(), y)


# ---------------------------------------------------------------- Tiny-ImageNet folders


def _tiny_folder(root: Path, rng, annotated: bool) -> dict[str, np.ndarray]:
    """Three classes, two training images each; val images in either layout. PNG bytes keep pixels exact."""
    base = root / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03"]
    val = {}
    for c in wnids:
        (base / "train" / c / "images").mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                base / "train" / c / "images" / f"{c}_{j}.JPEG", format="PNG")
    lines = []
    for j, c in enumerate(["n03", "n01"]):  # class n02 has no val image: indices must still match train
        pixels = rng.integers(0, 256, (64, 64), dtype=np.uint8)  # grayscale, converted to RGB
        folder = base / "val" / ("images" if annotated else f"{c}/images")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"val_{j}.JPEG", format="PNG")
        lines.append(f"val_{j}.JPEG\t{c}\t0\t0\t63\t63")
        val[c] = pixels
    if annotated:
        (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return val


@pytest.mark.parametrize("annotated", [True, False])
def test_tinyimagenet_layouts(tmp_path, rng, annotated, no_data_env):
    val = _tiny_folder(tmp_path, rng, annotated)
    train = load_dataset("tinyimagenet", split="train", root=tmp_path)
    xs, ys = _stack(train)
    assert xs.shape == (6, 3, 64, 64) and xs.dtype == torch.float32 and ys.dtype == torch.int64
    assert ys.tolist() == [0, 0, 1, 1, 2, 2]
    test = load_dataset("tinyimagenet", split="test", root=tmp_path)
    assert len(test) == 2
    index = {"n01": 0, "n02": 1, "n03": 2}
    for i in range(2):
        x, y = test[i]
        wnid = [c for c, k in index.items() if k == int(y)][0]
        assert y.dtype == torch.int64
        for channel in range(3):
            np.testing.assert_array_equal((x[channel] * 255).round().numpy(), val[wnid])
    assert pickle.loads(pickle.dumps(test))[0][0].shape == (3, 64, 64)  # worker processes need pickling


def test_tinyimagenet_missing(tmp_path, no_data_env):
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200"):
        load_dataset("tinyimagenet", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="LIPZOO_DATA"):
        load_dataset("tinyimagenet")
    (tmp_path / "tiny-imagenet-200" / "train" / "n01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="validation folder"):
        load_dataset("tinyimagenet", split="test", root=tmp_path)


@pytest.mark.parametrize("annotated", [True, False])
def test_tinyimagenet_val_class_not_in_train(tmp_path, rng, annotated, no_data_env):
    _tiny_folder(tmp_path, rng, annotated)
    base = tmp_path / "tiny-imagenet-200"
    shutil.rmtree(base / "train" / "n03")  # n03 still has validation images
    with pytest.raises(ValueError, match="n03"):
        load_dataset("tinyimagenet", split="test", root=tmp_path)


# ---------------------------------------------------------------- the user's own data (lipzoo train --data)


def _image_folder(root: Path, rng, sizes=None) -> dict[str, dict[str, list[np.ndarray]]]:
    """``root/{train,test}/<class>/*.png``: classes ``cat`` and ``ant`` (sorted: ant=0, cat=1), RGB 6x5."""
    pixels: dict[str, dict[str, list[np.ndarray]]] = {}
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("cat", "ant"):
            (root / split / cls).mkdir(parents=True)
            for j in range(n):
                x = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
                Image.fromarray(x).save(root / split / cls / f"{j}.png")
                pixels.setdefault(split, {}).setdefault(cls, []).append(x)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored
    return pixels


def test_image_folder_loads_both_splits_exactly(tmp_path, rng):
    pixels = _image_folder(tmp_path / "pets", rng)
    train = load_dataset(str(tmp_path / "pets"), split="train")
    assert train.images.dtype == torch.uint8 and tuple(train.images.shape) == (6, 3, 5, 6)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]  # ant, then cat (sorted class folders)
    np.testing.assert_array_equal(train.images[3].permute(1, 2, 0).numpy(), pixels["train"]["cat"][0])
    test = load_dataset(str(tmp_path / "pets"), split="test")
    assert test.labels.tolist() == [0, 1]
    facts = data_facts(str(tmp_path / "pets"))
    assert (facts.name, facts.num_classes, facts.input_shape) == ("pets", 2, (3, 5, 6))
    every = np.stack([x for cls in ("ant", "cat") for x in pixels["train"][cls]]).reshape(-1, 3) / 255
    np.testing.assert_allclose(facts.mean, every.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(facts.std, every.std(0), rtol=0, atol=1e-12)


def test_image_folder_errors(tmp_path, rng):
    _image_folder(tmp_path / "pets", rng)
    Image.fromarray(rng.integers(0, 256, (7, 6, 3), dtype=np.uint8)).save(tmp_path / "pets" / "train" / "ant" / "z.png")
    with pytest.raises(ValueError, match=r"Images must share one size: .*z.png is 6x7"):
        load_dataset(str(tmp_path / "pets"))
    (tmp_path / "only").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no train/ folder"):
        load_dataset(str(tmp_path / "only"))
    (tmp_path / "odd" / "train" / "a").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(tmp_path / "odd" / "train" / "a" / "0.png")
    (tmp_path / "odd" / "test" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"Class folders \['b'\] of .* are not training classes"):
        load_dataset(str(tmp_path / "odd"), split="test")
    gray = load_dataset(str(tmp_path / "odd"))  # a grayscale folder stays one channel
    assert tuple(gray.images.shape) == (1, 1, 4, 4)


def test_data_facts_of_an_npz_are_exact_and_checked(write_npz, rng):
    x = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    facts = data_facts(str(write_npz("mine.npz", x_train=x, y_train=y, x_test=x[:3], y_test=y[:3])))
    assert (facts.name, facts.num_classes, facts.input_shape) == ("mine.npz", 3, (3, 4, 4))
    ref = x.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(facts.mean, ref.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(facts.std, ref.std(0), rtol=0, atol=1e-12)
    assert data_facts("cifar10") == datasets_module.dataset_facts("cifar10")
    # a training split without a test split is fine (certify then needs other data)
    assert data_facts(str(write_npz("train_only.npz", x_train=x, y_train=y))).num_classes == 3
    with pytest.raises(ValueError, match=r"test images of other.npz are \(3, 2, 2\), the training images \(3, 4, 4\)"):
        data_facts(str(write_npz("other.npz", x_train=x, y_train=y, x_test=x[:3, :2, :2], y_test=y[:3])))
    with pytest.raises(ValueError, match=r"constant in a channel"):
        data_facts(str(write_npz("flat.npz", x_train=np.zeros_like(x), y_train=y)))


def test_nan_pixels_in_a_float_npz_are_refused(write_npz):
    x = np.full((3, 4, 4), 0.5, np.float32)
    x[2, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"'x_train' in .* holds 1 NaN/inf pixel values \(first image 2\)"):
        load_dataset(str(write_npz(x_train=x, y_train=np.zeros(3, np.int64))))


# ---------------------------------------------------------------- info


def test_dataset_info():
    assert dataset_info("mnist") == dict(num_classes=10, input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,))
    cifar = dataset_info("cifar10")
    assert cifar["mean"] == pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-4)
    assert cifar["std"] == pytest.approx((0.2470, 0.2435, 0.2616), abs=1e-4)
    assert dataset_info("tinyimagenet")["num_classes"] == 200
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        dataset_info("imagenet")


# ---------------------------------------------------------------- loaders


def _indexed_dataset(n=50):
    """x carries the sample index so that loaders can be traced back to the dataset."""
    return torch.utils.data.TensorDataset(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2),
                                          torch.arange(n))


def _labels(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_split_is_a_seeded_partition():
    ds = _indexed_dataset()
    a = make_loaders(ds, 8, validation_split=0.2, seed=1)
    b = make_loaders(ds, 8, validation_split=0.2, seed=1)
    c = make_loaders(ds, 8, validation_split=0.2, seed=2)
    train, val = _labels(a["train"]), _labels(a["val"])
    assert len(val) == 10 and sorted(train + val) == list(range(50))
    assert _labels(b["val"]) == val and _labels(b["train"]) == train  # same split and same shuffle
    assert set(_labels(c["val"])) != set(val)
    assert make_loaders(ds, 8)["val"] is None


def test_augmentation_is_applied_to_train_only():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3) / 20
    ds = torch.utils.data.TensorDataset(x, torch.arange(2))
    loaders = make_loaders(ds, 2, validation_split=0.5, augmentation=[{"hflip": {"p": 1.0}}])
    for xb, yb in loaders["train"]:
        torch.testing.assert_close(xb, x[yb].flip(-1))
    for xb, yb in loaders["val"]:
        torch.testing.assert_close(xb, x[yb])


def test_build_augmentation_spec():
    x = torch.rand(1, 8, 8)
    identity = build_augmentation([{"affine": {"degrees": 0, "translate": 0.0}}, {"crop": {"padding": 0}}], (8, 8))
    torch.testing.assert_close(identity(x), x)
    shifted = build_augmentation([{"affine": {"degrees": 10, "translate": 0.1}}, "hflip", "crop"], (8, 8))(x)
    assert shifted.shape == x.shape and 0 <= shifted.min() and shifted.max() <= 1
    assert build_augmentation([]) is None
    with pytest.raises(ValueError, match=r"Unknown augmentation 'mixup'.*hflip"):
        build_augmentation(["mixup"])
    with pytest.raises(ValueError, match="one-key dict"):
        build_augmentation([{"hflip": {}, "affine": {}}])
    with pytest.raises(ValueError, match="Invalid arguments"):
        build_augmentation([{"affine": {"degres": 3}}])
    with pytest.raises(ValueError, match="crop needs a size"):
        build_augmentation(["crop"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size must be"), (dict(validation_split=1.0), "validation_split must be"),
    (dict(validation_split=0.001), "empty part"), (dict(distributed=True), "initialized process group"),
])
def test_make_loaders_errors(kwargs, match):
    args = dict(batch_size=4) | kwargs
    with pytest.raises(ValueError, match=match):
        make_loaders(_indexed_dataset(), **args)


def test_distributed_sampler_shards_the_train_part(monkeypatch):
    """Two simulated ranks (a real gloo group leaves the interpreter hanging at exit on this machine)."""
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda group=None, rank=rank: rank)
        loaders = make_loaders(_indexed_dataset(), 8, validation_split=0.2, distributed=True, seed=3)
        sampler = loaders["train"].sampler
        assert isinstance(sampler, torch.utils.data.DistributedSampler) and sampler.rank == rank
        sampler.set_epoch(1)
        shards.append(_labels(loaders["train"]))
        assert len(_labels(loaders["val"])) == 10  # validation is not sharded
    train_part = sorted(set(range(50)) - set(_labels(loaders["val"])))
    assert len(shards[0]) == len(shards[1]) == 20
    assert sorted(shards[0] + shards[1]) == train_part
