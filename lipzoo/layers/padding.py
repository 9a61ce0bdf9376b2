"""Non-zero padding modes (reflect, replicate, circular) as a linear operator with an exact norm."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from lipzoo.layers.operators import LinearOperator

__all__ = ["PadOp"]


class PadOp(LinearOperator):
    """``F.pad(x, pads, mode)`` on ``(C, H, W)`` inputs for ``mode`` in ``reflect``, ``replicate``, ``circular``.

    Every padded pixel is a copy of an input pixel: ``P x = x[idx]`` for an index map ``idx``. The
    adjoint adds every output back onto its source; ``P^T P`` is diagonal with the number of copies
    of each input pixel, so ``||P|| = sqrt(max copies)`` exactly (a product over the two axes).
    """

    MODES = ("reflect", "replicate", "circular")

    def __init__(self, pads: Sequence[int], mode: str):
        pads = tuple(int(p) for p in pads)  # (left, right, top, bottom), F.pad's order
        if len(pads) != 4 or min(pads) < 0 or mode not in self.MODES:
            raise ValueError(f"PadOp needs 4 non-negative pads and a mode in {self.MODES}, got {pads}, {mode!r}")
        self.pads, self.mode = pads, mode

    def _index(self, n: int, before: int, after: int) -> torch.Tensor:
        # the source index of every padded position, by padding the positions themselves
        pos = torch.arange(n, dtype=torch.float64).reshape(1, 1, n)
        return F.pad(pos, (before, after), mode=self.mode).reshape(-1).round().long()

    def _maps(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"padding expects (C, H, W) inputs, got {tuple(in_shape)}")
        _, h, w = in_shape
        l, r, t, b = self.pads
        limit = {"reflect": lambda n, p: p < n, "circular": lambda n, p: p <= n, "replicate": lambda n, p: True}
        if not all(limit[self.mode](n, p) for n, p in ((h, t), (h, b), (w, l), (w, r))):
            raise ValueError(f"{self.mode} padding {self.pads} is too large for inputs {tuple(in_shape)}")
        return self._index(h, t, b), self._index(w, l, r)

    def forward(self, x):
        return F.pad(x, self.pads, mode=self.mode)

    def adjoint(self, y, in_shape):
        ih, iw = self._maps(in_shape)
        c, h, w = in_shape
        src = (ih[:, None] * w + iw[None, :]).reshape(-1).to(y.device)
        out = y.new_zeros(y.shape[0], c, h * w)
        return out.index_add_(2, src, y.reshape(y.shape[0], c, -1)).reshape(y.shape[0], c, h, w)

    def out_shape(self, in_shape):
        ih, iw = self._maps(in_shape)
        return (in_shape[0], len(ih), len(iw))

    def norm_bound(self, in_shape):
        ih, iw = self._maps(in_shape)
        copies = int(torch.bincount(ih).max()) * int(torch.bincount(iw).max())
        return torch.tensor(math.nextafter(math.sqrt(copies), math.inf), dtype=torch.float64)
