"""A proved upper bound on the spectral norm of a zero-padded, strided 2-D convolution (FFT / polyphase)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["conv2d_norm_bound", "NORM_ROUNDING"]

NORM_ROUNDING = 1e-9
"""Relative margin on norms computed by an SVD or FFT in float64: their backward error is a few ``n * 2**-53``
relative, far below this."""


def conv2d_norm_bound(weight: torch.Tensor, spatial: Sequence[int], padding=0, dilation=1,
                      groups: int = 1, stride=1) -> torch.Tensor:
    """Proved upper bound on the spectral norm of a zero-padded, possibly strided 2-D convolution.

    A zero-padded convolution on an ``n x n`` input is a restriction of the circular convolution on
    an ``N x N`` grid with ``N >= n + 2p`` (embedding and cropping have norm <= 1). The circular
    convolution is block-diagonalised by the 2-D DFT (Sedghi, Gupta & Long, ICLR 2019): its norm is
    the largest singular value of the ``c_out x c_in`` kernel transforms over the ``N x N``
    frequencies. With stride ``s`` (``N`` a multiple of ``s``), the polyphase decomposition
    ``y[i] = sum_r sum_q w[s q + r] x[s (i + q) + r]`` turns the strided convolution into a stride-1
    convolution with ``c_in s^2`` input channels on an ``N/s`` grid, which the DFT diagonalises
    the same way, so strided layers get a bound as tight as stride-1 ones.
    """
    padding, dilation, stride = _pair(padding), _pair(dilation), _pair(stride)
    weight = weight.detach().to(torch.float64)  # a guaranteed bound: computed in float64, then rounded up
    c_out, c_in_g, kh, kw = weight.shape
    if dilation != (1, 1):
        dilated = weight.new_zeros(c_out, c_in_g, (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
        dilated[:, :, :: dilation[0], :: dilation[1]] = weight
        weight, kh, kw = dilated, dilated.shape[-2], dilated.shape[-1]
    sh, sw = stride
    # kernel padded to a multiple of the stride, then split into its s x s phases
    kh2, kw2 = -(-kh // sh) * sh, -(-kw // sw) * sw
    w = F.pad(weight, (0, kw2 - kw, 0, kh2 - kh))
    w = w.reshape(c_out, c_in_g, kh2 // sh, sh, kw2 // sw, sw).permute(0, 1, 3, 5, 2, 4)
    w = w.reshape(groups, c_out // groups, c_in_g * sh * sw, kh2 // sh, kw2 // sw)
    grid = [-(-(int(n) + 2 * p + k) // s) for n, p, k, s in zip(spatial, padding, (kh, kw), stride)]
    spectrum = torch.fft.fft2(w, s=grid)  # (g, co, ci*s*s, N1/s, N2/s)
    blocks = spectrum.permute(0, 3, 4, 1, 2)  # one small matrix per group and frequency
    # the thousands of small SVDs on the CPU: CUDA's batched SVD takes only matrices up to 32 x 32 and loops
    # over larger ones (the factor bounds of a random 8C2F took 77 s on an H100, ~10 s on 2 CPU cores)
    top = torch.linalg.matrix_norm(blocks.cpu(), ord=2).max().to(weight.device)
    # FFT rounding: every transform entry is a sum of the kernel's taps, off by at most
    # ~(taps + log2 N) 2**-53 sum|w|; a margin far above that, plus the SVD's relative one.
    taps = w.shape[-1] * w.shape[-2]
    slack = 64 * (taps + math.log2(grid[0] * grid[1]) + 1) * 2.0 ** -53 * weight.abs().sum()
    return top * (1 + NORM_ROUNDING) + slack


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)
