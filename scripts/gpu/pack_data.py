"""Pack a Keras-layout ``.npz`` training split into small lossless parts for the GPU machine.

The GPU machines take at most 64 MiB of working tree per command, and the CIFAR-10 training
split is 147 MiB raw (about 111 MiB with plain ``xz``). Photographs compress much better after
the LOCO-I / JPEG-LS *median edge detector* predictor and a green-channel decorrelation of the
residuals (the PNG / JPEG-LS idea): each pixel is replaced by its difference to
``median(left, up, left + up - upleft)``, then ``R - G`` and ``B - G`` residuals. The result is
lossless (``unpack`` checks the sha256 of the decoded images) and about 56 % of the raw size on
CIFAR-10 with ``xz -9``, so the training split fits in two commands.

    python scripts/gpu/pack_data.py pack ../shared/data/cifar10.npz .gpu/cifar10 --parts 2 --first-mib 34
    python scripts/gpu/pack_data.py unpack .gpu/cifar10 data/cifar10.npz

Only ``x_train`` and ``y_train`` travel (the test split is certified on the CPU machine); the
unpacked ``.npz`` holds them in the Keras layout, so ``lipzoo train`` reads it unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
from pathlib import Path

import numpy as np


def _neighbours(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left, up and up-left neighbours of every pixel of ``(..., H, W)`` (0 outside the image)."""
    a, b, c = (np.zeros_like(x) for _ in range(3))
    a[..., 1:] = x[..., :-1]
    b[..., 1:, :] = x[..., :-1, :]
    c[..., 1:, 1:] = x[..., :-1, :-1]
    return a, b, c


def _med(a, b, c):
    """The median edge detector: ``median(a, b, a + b - c)``."""
    hi, lo = np.maximum(a, b), np.minimum(a, b)
    return np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))


def encode(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` -> uint8 residuals of the same shape (lossless)."""
    x = images.astype(np.int16)
    r = (x - _med(*_neighbours(x))) % 256
    if r.shape[1] == 3:  # decorrelate colour: R - G, B - G
        r[:, 0] -= r[:, 1]
        r[:, 2] -= r[:, 1]
        r %= 256
    return r.astype(np.uint8)


def decode(residuals: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode`: one vectorized step per pixel position (H * W steps)."""
    r = residuals.astype(np.int16)
    if r.shape[1] == 3:
        r[:, 0] += r[:, 1]
        r[:, 2] += r[:, 1]
        r %= 256
    x = np.zeros_like(r)
    H, W = r.shape[-2:]
    zero = np.zeros(r.shape[:2], np.int16)
    for i in range(H):
        for j in range(W):
            a = x[..., i, j - 1] if j else zero
            b = x[..., i - 1, j] if i else zero
            c = x[..., i - 1, j - 1] if i and j else zero
            x[..., i, j] = (r[..., i, j] + _med(a, b, c)) % 256
    return x.astype(np.uint8)


def _chw(x: np.ndarray) -> tuple[np.ndarray, bool]:
    if x.ndim == 3:
        return x[:, None], False
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), True


def _split(blob: bytes, parts: int, first_mib: float | None) -> list[bytes]:
    """``parts`` pieces; the first one ``first_mib`` MiB when given (it travels beside other data)."""
    if first_mib is None or parts == 1:
        size = -(-len(blob) // parts)
        return [blob[k * size:(k + 1) * size] for k in range(parts)]
    head = int(first_mib * 2**20)
    return [blob[:head]] + _split(blob[head:], parts - 1, None)


def pack(src: Path, dest: Path, parts: int, first_mib: float | None = None) -> None:
    data = np.load(src)
    x, y = data["x_train"], data["y_train"]
    chw, hwc = _chw(x)
    blob = lzma.compress(encode(chw).tobytes(), preset=9)
    dest.mkdir(parents=True, exist_ok=True)
    pieces = _split(blob, parts, first_mib)
    for k, piece in enumerate(pieces):
        (dest / f"part{k}.xz").write_bytes(piece)
    np.save(dest / "y_train.npy", y)
    meta = {"shape": list(chw.shape), "hwc": hwc, "parts": parts,
            "sha256_x_train": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()}
    (dest / "meta.json").write_text(json.dumps(meta))
    print(f"{src}: {x.nbytes / 2**20:.1f} MiB raw -> {len(blob) / 2**20:.1f} MiB in parts of "
          f"{', '.join(f'{len(p) / 2**20:.1f}' for p in pieces)} MiB")


def unpack(src: Path, out: Path) -> None:
    meta = json.loads((src / "meta.json").read_text())
    blob = b"".join((src / f"part{k}.xz").read_bytes() for k in range(meta["parts"]))
    chw = decode(np.frombuffer(lzma.decompress(blob), np.uint8).reshape(meta["shape"]))
    x = np.ascontiguousarray(chw.transpose(0, 2, 3, 1)) if meta["hwc"] else chw[:, 0]
    digest = hashlib.sha256(x.tobytes()).hexdigest()
    if digest != meta["sha256_x_train"]:
        raise SystemExit(f"unpacked x_train has sha256 {digest}, expected {meta['sha256_x_train']}")
    y = np.load(src / "y_train.npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    # An empty test split keeps the Keras layout; the GPU machine only trains.
    np.savez(out, x_train=x, y_train=y, x_test=x[:0], y_test=y[:0])
    print(f"{out}: x_train {x.shape} sha256 ok")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("src", type=Path)
    a.add_argument("dest", type=Path)
    a.add_argument("--parts", type=int, default=1)
    a.add_argument("--first-mib", type=float, help="size of the first part (the rest split evenly)")
    b = sub.add_parser("unpack")
    b.add_argument("src", type=Path)
    b.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.src, args.dest, args.parts, args.first_mib)
    else:
        unpack(args.src, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
