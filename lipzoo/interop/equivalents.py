"""Plain-torch and lipzoo modules that compute what a peer layer computes, built from tensors and numbers.

Each builder takes the values read from a (frozen) peer module and returns a module the accountant accepts as
it is, and that :mod:`lipzoo.certify.rounding` knows (plain ``nn.Conv2d`` / ``nn.Linear`` / pools /
activations, lipzoo's group-wise maps), so the converted model can be certified in floating point too. Whether
it computes the same thing is not assumed here: :func:`lipzoo.interop.probe.compare` checks it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipzoo.layers.state import UnsupportedModule

__all__ = ["conv2d", "linear", "same_padding", "scale_module", "channel_affine", "depthwise_pool", "then_scale",
           "permutation", "mean_subtraction", "conv_transpose_as_conv"]

Shape = tuple[int, ...]


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_padding(weight: torch.Tensor, padding, stride, dilation) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(kernel, padding)`` of a convolution with explicit symmetric zero padding that computes what
    ``padding='same'`` (or ``'valid'``, or ints) computes; an even kernel (torch pads one more on the right and
    bottom) gets a zero row / column prepended, which shifts it by one tap (exact: the added products are 0)."""
    if not isinstance(padding, str):
        return weight, _pair(padding)
    if padding == "valid":
        return weight, (0, 0)
    if padding != "same":
        raise UnsupportedModule(f"padding={padding!r} is neither 'same', 'valid' nor ints")
    if _pair(stride) != (1, 1):
        raise UnsupportedModule("padding='same' with a stride above 1")
    kernel = weight
    pads = []
    for axis, (k, d) in enumerate(zip(weight.shape[-2:], _pair(dilation))):
        total = d * (k - 1)
        left = total // 2
        if total - left != left:  # torch puts the odd pixel on the right: prepend a zero tap on the left
            if d != 1:
                raise UnsupportedModule("padding='same' with an even kernel and a dilation above 1")
            shape = list(kernel.shape)
            shape[2 + axis] = 1
            kernel = torch.cat([kernel.new_zeros(shape), kernel], 2 + axis)
            left += 1
        pads.append(left)
    return kernel, (pads[0], pads[1])


def conv2d(weight: torch.Tensor, bias: torch.Tensor | None, *, stride=1, padding=0, dilation=1, groups: int = 1,
           padding_mode: str = "zeros") -> nn.Conv2d:
    """A plain ``nn.Conv2d`` holding ``weight`` / ``bias`` (copied), with explicit padding."""
    if padding_mode == "zeros":
        weight, padding = same_padding(weight, padding, stride, dilation)
    elif isinstance(padding, str):
        if padding != "same" or _pair(stride) != (1, 1):
            raise UnsupportedModule(f"padding={padding!r} with padding_mode={padding_mode!r}")
        # torch pads 'same' with the non-zero modes through _reversed_padding_repeated_twice: kept as 'same'
    c_out, c_in_g, kh, kw = weight.shape
    conv = nn.Conv2d(c_in_g * groups, c_out, (kh, kw), stride=_pair(stride), padding=padding,
                     dilation=_pair(dilation), groups=groups, bias=bias is not None,
                     padding_mode=padding_mode,  # type: ignore[arg-type]  # the peer module's own, a torch mode
                     dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias.reshape(-1))  # type: ignore[union-attr]  # bias=True above
    return conv.eval()


def linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A plain ``nn.Linear`` holding ``weight`` / ``bias`` (copied)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias.reshape(-1))
    return lin.eval()


def channel_affine(scale, bias: torch.Tensor | None, shape: Shape, dtype: torch.dtype) -> nn.Module:
    """``x * scale + bias[c]`` per channel ``c`` (dimension 1) for inputs of per-sample ``shape``: a depthwise 1x1
    ``nn.Conv2d`` for images ``(C, H, W)``, a diagonal ``nn.Linear`` for vectors ``(N,)``. ``scale``: a number or a
    per-channel tensor."""
    c = shape[0]
    s = torch.as_tensor(scale, dtype=dtype).reshape(-1).expand(c)
    b = None if bias is None else torch.as_tensor(bias, dtype=dtype).reshape(-1).expand(c)
    if len(shape) == 3:
        return conv2d(s.reshape(c, 1, 1, 1).clone(), None if b is None else b.clone(), groups=c)
    if len(shape) == 1:
        return linear(torch.diag(s), None if b is None else b.clone())
    raise UnsupportedModule(f"a per-channel scale on inputs of shape {shape} (only (C, H, W) and (N,) are modelled)")


def scale_module(c: float, shape: Shape, dtype: torch.dtype) -> nn.Module:
    """``x * c`` on inputs of per-sample ``shape`` (see :func:`channel_affine`)."""
    return channel_affine(float(c), None, shape, dtype)


def then_scale(module: nn.Module, c: float, shape: Shape, dtype: torch.dtype) -> nn.Module:
    """``module`` followed by a multiplication by ``c`` (``module`` itself when ``c == 1``); ``shape`` is the
    per-sample shape of ``module``'s output."""
    if float(c) == 1.0:
        return module
    return nn.Sequential(module, scale_module(c, shape, dtype))


def depthwise_pool(kernel, stride, factor: float, channels: int, dtype: torch.dtype) -> nn.Module:
    """``factor`` times the sum of each ``kernel`` window (taken every ``stride``): ``nn.AvgPool2d`` with
    ``divisor_override`` when ``1 / factor`` is an integer, else a depthwise ``nn.Conv2d`` with weights ``factor``."""
    k, s = _pair(kernel), _pair(stride)
    inv = 1.0 / factor if factor else math.inf
    if math.isfinite(inv) and inv == round(inv) and 1 <= inv < 2**31 and 1.0 / round(inv) == factor:
        return nn.AvgPool2d(k, s, divisor_override=int(round(inv))).eval()
    w = torch.full((channels, 1, *k), float(factor), dtype=dtype)
    return conv2d(w, None, stride=s, groups=channels)


def permutation(index: torch.Tensor, shape: Shape, dtype: torch.dtype) -> nn.Module:
    """``x[:, index]`` (a permutation of dimension 1) as a 1x1 ``nn.Conv2d`` (images) or an ``nn.Linear``."""
    n = shape[0]
    p = torch.zeros(n, n, dtype=dtype)
    p[torch.arange(n), index] = 1.0
    if len(shape) == 3:
        return conv2d(p.reshape(n, n, 1, 1), None)
    if len(shape) == 1:
        return linear(p, None)
    raise UnsupportedModule(f"a channel permutation on inputs of shape {shape} (only (C, H, W) and (N,) are modelled)")


def mean_subtraction(shape: Shape, bias: torch.Tensor | None, dtype: torch.dtype) -> nn.Conv2d:
    """``x - mean_{h, w}(x) + bias`` per channel on ``(C, H, W)`` inputs, as one depthwise ``nn.Conv2d`` whose
    ``(2H - 1) x (2W - 1)`` kernel (zero padding ``(H - 1, W - 1)``) reaches every pixel from every output:
    ``1 - 1/HW`` at the centre, ``-1/HW`` elsewhere."""
    if len(shape) != 3:
        raise UnsupportedModule(f"centering over the spatial dimensions of inputs of shape {shape}")
    c, h, w = shape
    k = torch.full((c, 1, 2 * h - 1, 2 * w - 1), -1.0 / (h * w), dtype=dtype)
    k[:, :, h - 1, w - 1] += 1.0
    return conv2d(k, None if bias is None else bias.reshape(-1).expand(c).clone(), padding=(h - 1, w - 1),
                  groups=c)


def conv_transpose_as_conv(weight: torch.Tensor, padding: int, groups: int = 1) -> tuple[torch.Tensor, int]:
    """``(kernel, padding)`` of the stride-1 ``conv2d`` equal to ``conv_transpose2d(., weight, padding=padding,
    groups=groups)``: the kernel with input and output channels swapped (per group) and flipped in space."""
    c_in, c_out_g, kh, kw = weight.shape  # conv_transpose weight: (in, out / groups, k, k)
    if kh != kw or not 0 <= padding <= kh - 1:
        raise UnsupportedModule(f"a transposed convolution with kernel {(kh, kw)} and padding {padding}")
    w = weight.reshape(groups, c_in // groups, c_out_g, kh, kw).transpose(1, 2)
    return w.reshape(groups * c_out_g, c_in // groups, kh, kw).flip(-1, -2).contiguous(), kh - 1 - padding
