"""The device-resident loader and its batched augmentation, against exact references on the CPU."""

from __future__ import annotations

import pytest
import torch

from lipzoo.data import DeviceAugment, DeviceLoader, ImageTensorDataset, make_device_loaders, make_loaders

pytestmark = pytest.mark.usefixtures("one_thread")


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` (C, H, W) moved by whole pixels, zero fill: an independent reference for translations."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[:, max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = x[:, max(0, -dy):h - max(0, dy),
                                                                      max(0, -dx):w - max(0, dx)]
    return out


def test_affine_translation_is_a_whole_pixel_shift_with_zero_fill():
    x = torch.rand(32, 3, 10, 10)
    out = DeviceAugment([{"affine": {"degrees": 0, "translate": 0.2}}], (10, 10))(x, torch.Generator().manual_seed(0))
    shifts = set()
    for i in range(x.shape[0]):
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(out[i], _shifted(x[i], dy, dx))]
        assert hits, f"sample {i} is not a whole-pixel shift of its input"
        shifts.add(hits[0])
    assert len(shifts) > 5  # the shifts are drawn, not one fixed offset


def test_warp_quarter_turns_and_shifts_are_exact():
    x = torch.rand(4, 2, 8, 6)  # not square: the aspect correction is exercised by the shifts
    zero, one = torch.zeros(4), torch.ones(4)
    sq = torch.rand(4, 2, 8, 8)
    for sign in (1.0, -1.0):
        rot = DeviceAugment.warp(sq, torch.full((4,), sign * torch.pi / 2), zero, zero, one)
        assert all(any(torch.equal(rot[i], torch.rot90(sq[i], j, (1, 2))) for j in (1, 3)) for i in range(4))
    assert torch.equal(DeviceAugment.warp(x, zero, zero, zero, one), x)  # identity is exact
    moved = DeviceAugment.warp(x, zero, torch.full((4,), 2.0), torch.full((4,), -1.0), one)
    assert all(torch.equal(moved[i], _shifted(x[i], -1, 2)) for i in range(4))


def test_hflip_flips_about_half():
    x = torch.rand(400, 1, 4, 5)
    out = DeviceAugment(["hflip"], (4, 5))(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(-1)) for i in range(400)])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(400)])
    assert bool((flipped | kept).all()) and 150 < int(flipped.sum()) < 250
    assert torch.equal(DeviceAugment([{"hflip": {"p": 0.0}}], (4, 5))(x, torch.Generator()), x)


def test_crop_is_a_shift_of_the_padded_image():
    x = torch.rand(20, 3, 6, 6)
    out = DeviceAugment([{"crop": {"padding": 2}}], (6, 6))(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    for i in range(20):
        assert any(torch.equal(out[i], _shifted(x[i], dy, dx)) for dy in range(-2, 3) for dx in range(-2, 3))
    small = DeviceAugment([{"crop": {"size": 4, "padding": 0}}], (6, 6))(x, torch.Generator().manual_seed(3))
    assert small.shape == (20, 3, 4, 4)


@pytest.mark.parametrize("spec,match", [
    (["blur"], "Unknown augmentation 'blur'"),
    ([{"affine": {"shear": 3}}], "degrees, translate and scale"),
    ([{"affine": {"translate": 2}}], "fraction in \\[0, 1\\]"),
    ([{"hflip": {"p": 2}}], "p in \\[0, 1\\]"),
    ([{"crop": {"size": 40, "padding": 1}}], "larger than the padded image"),
    ([{"a": 1, "b": 2}], "one-key dict"),
])
def test_bad_specs_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        DeviceAugment(spec, (8, 8))


def test_split_matches_the_dataloader_path_and_batches_cover_the_set():
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(50) % 7
    ds = ImageTensorDataset(images, labels)
    dev = make_device_loaders(ds, 8, device="cpu", validation_split=0.2, seed=5)
    old = make_loaders(ds, 8, validation_split=0.2, seed=5)
    old_val = torch.cat([x for x, _ in old["val"]])
    new_val = torch.cat([x for x, _ in dev["val"]])
    assert torch.equal(old_val, new_val)  # the same held-out images, in the same order
    seen = torch.cat([y for _, y in dev["train"]])
    assert len(dev["train"]) == 5 and seen.numel() == 40
    assert sorted(seen.tolist()) == sorted(torch.cat([y for _, y in old["train"]]).tolist())


def test_state_dict_replays_order_and_augmentation():
    images = torch.randint(0, 256, (30, 3, 6, 6), dtype=torch.uint8)
    labels = torch.arange(30)
    aug = DeviceAugment(["hflip", {"affine": {"degrees": 10, "translate": 0.2}}], (6, 6))
    a = DeviceLoader(images, labels, 7, device="cpu", augment=aug, seed=1)
    list(a)  # one epoch
    state = {k: v.clone() for k, v in a.state_dict().items()}
    first = list(a)
    b = DeviceLoader(images, labels, 7, device="cpu", augment=aug, seed=99)
    b.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(first, list(b)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_ranks_share_the_epoch_without_overlap():
    images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    labels = torch.arange(10)
    parts = [torch.cat([y for _, y in DeviceLoader(images, labels, 4, device="cpu", seed=0, rank=r, world=3)])
             for r in range(3)]
    assert [p.numel() for p in parts] == [4, 4, 4]  # padded to a multiple of the world size
    assert set(torch.cat(parts).tolist()) == set(range(10))
