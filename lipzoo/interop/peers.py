"""The layers of deel-torchlip and orthogonium that :func:`lipzoo.interop.convert` recognises, and the
equivalent each one is offered.

A :class:`Recogniser` is picked by the *class name* of a module (the class before ``torch.nn.utils.parametrize``
wrapped it; a module path of a peer package only orders the candidates, and makes any ``nn.Conv2d`` /
``nn.Linear`` subclass of a peer a candidate of the weight-layer entries). Its ``build`` reads the parameters
from the attributes of a frozen copy (:func:`lipzoo.interop.probe.freeze`) and returns the equivalent; nothing
here is trusted: :func:`lipzoo.interop.probe.compare` then decides. Entries with a ``refuse`` reason name
containers lipzoo cannot express, so that the refusal says why.

Both libraries are optional: nothing here imports them, except the builder of orthogonium's
``SLLxAOCLipschitzResBlock``, which fuses its kernels with orthogonium's own ``fast_matrix_conv`` (only ever
called on such a block, so orthogonium is installed).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from lipzoo.interop import equivalents as eq
from lipzoo.interop.modules import Residual
from lipzoo.layers.groupwise import CReLU, GroupSort, L2NormPool2d, MaxMin
from lipzoo.layers.sll import SLLLinear
from lipzoo.layers.state import UnsupportedModule

__all__ = ["Recogniser", "Context", "RECOGNISERS", "LIBRARIES", "candidates", "library_of", "peer_class"]

LIBRARIES = {"deel.torchlip": "deel-torchlip", "orthogonium": "orthogonium"}
"""The peer packages (module path -> distribution name); lipzoo.layers.torch_modules.PEER_PACKAGES points users here."""
Shape = tuple[int, ...]
_F64 = torch.float64  # the frozen module is a float64 copy; every value derived from it is computed in float64


@dataclass
class Context:
    """What a builder may use besides the frozen module: the per-sample input shapes the model feeds it, its
    path, and (for containers) a function converting a child module."""

    path: str
    shapes: list[Shape]
    convert_child: Callable[[nn.Module, str], nn.Module]
    scaled: bool = False  # set by a builder that appends a multiplication (the probe then allows rounding)

    @property
    def shape(self) -> Shape:
        """The one input shape (a builder whose equivalent depends on it refuses a module called on several)."""
        if len(self.shapes) != 1:
            raise UnsupportedModule(f"its equivalent depends on the input shape, and the model feeds it "
                                    f"{len(self.shapes)} different shapes {self.shapes}")
        return self.shapes[0]


@dataclass(frozen=True)
class Recogniser:
    """A candidate equivalent for the classes named ``names``.

    Attributes:
        names: class names that make a module a candidate.
        what: the equivalent, in words (docs and messages).
        build: ``build(frozen_module, context) -> equivalent``.
        exact: the equivalent runs the same operations, so the probes require a bit-for-bit match.
        library: the peer whose class it models first (its modules try this entry before the others).
        bases: a peer module (class from a peer package) that subclasses one of these is a candidate too.
        refuse: a reason to refuse the module outright (containers lipzoo cannot express).
    """

    names: tuple[str, ...]
    what: str
    build: Callable[[nn.Module, Context], nn.Module] | None
    exact: bool = False
    library: str = ""
    bases: tuple[type, ...] = ()
    refuse: str = ""


def peer_class(module: nn.Module) -> type:
    """The module's class before ``torch.nn.utils.parametrize`` wrapped it."""
    return parametrize.type_before_parametrizations(module)


def library_of(cls: type) -> str:
    """The peer library a class comes from (``""`` for any other package)."""
    return next((lib for pkg, lib in LIBRARIES.items() if cls.__module__ == pkg or
                 cls.__module__.startswith(pkg + ".")), "")


def _coef(m: nn.Module) -> float:
    return float(getattr(m, "_coefficient_lip", 1.0))


def _finish(module: nn.Module, m: nn.Module, ctx: Context, out_shape: Shape) -> nn.Module:
    """``module`` followed by deel's ``k_coef_lip`` multiplication when it is not 1."""
    c = _coef(m)
    if c != 1.0:
        ctx.scaled = True
    return eq.then_scale(module, c, out_shape, _F64)


# -- activations ---------------------------------------------------------------------------------------

def _deel_group_sort(m, ctx):
    g = getattr(m, "group_size", None)
    return _finish(GroupSort(None if g is None else int(g), dim=1), m, ctx, ctx.shapes[0])


def _deel_max_min(m, ctx):
    dim = getattr(m, "_dim", None)
    dim = 1 if dim is None else int(dim)
    shape = list(ctx.shapes[0])
    if dim - 1 < len(shape):
        shape[dim - 1] *= 2
    return _finish(CReLU(dim), m, ctx, tuple(shape))


def _lprelu(m, ctx):
    k = _coef(m)
    prelu = nn.PReLU(int(m.num_parameters), dtype=m.weight.dtype)
    with torch.no_grad():
        prelu.weight.copy_(torch.clamp(m.weight, -k, k))
    return prelu


def _orth_max_min(m, ctx):
    return MaxMin(int(getattr(m, "axis", 1)))


def _abs(m, ctx):
    return nn.LeakyReLU(-1.0)  # x for x > 0, -x otherwise: |x| exactly, slopes [-1, 1]


# -- pooling -------------------------------------------------------------------------------------------

def _scaled_l2_pool(m, ctx):
    stride = m.stride if m.stride is not None else m.kernel_size
    return L2NormPool2d(m.kernel_size, stride, scale=_coef(m))


def _adaptive_l2_pool(m, ctx):
    _, h, w = ctx.shape
    return L2NormPool2d((h, w), scale=_coef(m))


def _scaled_avg_pool(m, ctx):
    kh, kw = eq._pair(m.kernel_size)
    if getattr(m, "padding", 0) not in (0, (0, 0)):
        raise UnsupportedModule("ScaledAvgPool2d with padding")
    divisor = m.divisor_override or kh * kw
    factor = _coef(m) * float(getattr(m, "scalingFactor", math.sqrt(kh * kw))) / divisor
    stride = m.stride if m.stride is not None else m.kernel_size
    return eq.depthwise_pool((kh, kw), stride, factor, ctx.shape[0], _F64)


def _adaptive_avg_pool(m, ctx):
    c, h, w = ctx.shape
    factor = math.sqrt(h * w) * _coef(m) / (h * w)
    return eq.depthwise_pool((h, w), (h, w), factor, c, _F64)


# -- weight layers -------------------------------------------------------------------------------------

def _conv(m, ctx):
    if str(getattr(m, "old_padding_mode", "zeros")).lower() == "symmetric":
        raise UnsupportedModule("deel's symmetric padding wider than one pixel is not modelled")
    return eq.conv2d(m.weight.detach(), None if m.bias is None else m.bias.detach(), stride=m.stride,
                     padding=m.padding, dilation=m.dilation, groups=m.groups, padding_mode=m.padding_mode)


def _linear(m, ctx):
    return eq.linear(m.weight.detach(), None if m.bias is None else m.bias.detach())


# -- normalisation -------------------------------------------------------------------------------------

def _scale_bias(m, ctx):
    return eq.channel_affine(float(m.scalar), None if m.bias is None else m.bias.detach(), ctx.shape, _F64)


def _batch_lip_norm(m, ctx):
    exported = m.vanilla_export()  # eval: (x - running mean) * scale + bias as deel's ScaleBiasLayer
    return _scale_bias(exported, ctx)


def _layer_centering(m, ctx):
    dims = tuple(int(d) for d in getattr(m, "dim", (-2, -1)))
    if dims not in ((-2, -1), (2, 3)):
        raise UnsupportedModule(f"centering over dimensions {dims} (only the spatial ones, (-2, -1), are modelled)")
    bias = getattr(m, "bias", None)
    return eq.mean_subtraction(ctx.shape, None if bias is None else bias.detach(), _F64)


def _batch_centering(m, ctx):
    bias = m.bias.detach().reshape(-1) - m.running_mean.detach().reshape(-1)
    return eq.channel_affine(1.0, bias, ctx.shape, _F64)


def _channel_shuffle(m, ctx):
    if int(getattr(m, "dim", 1)) != 1:
        raise UnsupportedModule("ChannelShuffle along a dimension other than 1")
    n = ctx.shape[0]
    index = torch.cat([torch.arange(n)[i::int(m.group_out)] for i in range(int(m.group_out))])
    return eq.permutation(index, ctx.shape, _F64)


# -- residual blocks -----------------------------------------------------------------------------------

def _branch(module: nn.Module, ctx: Context, name: str) -> nn.Sequential:
    out = ctx.convert_child(module, f"{ctx.path}.{name}" if ctx.path else name)
    return out if type(out) is nn.Sequential else nn.Sequential(out)


def _prescaled_residual(m, ctx):
    alpha = float(m.alpha.detach())
    lip = 1.0 + abs(alpha)
    return Residual(_branch(m.fn, ctx, "fn"), skip_scale=1.0 / lip, branch_scale=1.0 / lip, pre_scale=alpha,
                    input_shape=ctx.shape)


def _additive_residual(m, ctx):
    a = float(torch.sigmoid(m.alpha.detach().to(torch.float64)))
    return Residual(_branch(m.fn, ctx, "fn"), skip_scale=a, branch_scale=1.0 - a, input_shape=ctx.shape)


def _sdp_dense(m, ctx):
    inner, features = m.weight.shape
    act = getattr(m, "activation", None)
    if type(act) is not nn.ReLU:
        raise UnsupportedModule(f"its activation {act!r} is not nn.ReLU")
    sll = SLLLinear(features, inner, activation="relu").to(m.weight.dtype)
    with torch.no_grad():
        sll.weight.copy_(m.weight)
        sll.bias.copy_(m.bias.reshape(-1))
        sll.log_q.copy_(m.q.reshape(-1))
    return sll.eval()


def _sdp_conv(m, ctx):
    k = m.kernel.detach()  # (inner, cin / groups, k, k), already rescaled by its AOL parametrization (frozen)
    g, p = int(m.groups), int(m.padding)
    back, q = eq.conv_transpose_as_conv(k, p, g)
    branch = nn.Sequential(eq.conv2d(k, m.bias.detach(), padding=p, groups=g), copy.deepcopy(m.activation),
                           eq.conv2d(back, None, padding=q, groups=g))
    return Residual(branch, branch_scale=-2.0, input_shape=ctx.shape)


def _sll_x_aoc(m, ctx):
    from orthogonium.layers.conv.AOC.fast_block_ortho_conv import (  # type: ignore[import-untyped,import-not-found]
        fast_matrix_conv, transpose_kernel)

    g, p, s = int(m.groups), int(m.padding), int(m.stride)
    with torch.no_grad():
        k1a = fast_matrix_conv(m.pre_conv.weight, m.kernel, groups=g)
        k1b = fast_matrix_conv(transpose_kernel(m.kernel, groups=g), m.post_conv.weight, groups=g)
        k2 = fast_matrix_conv(m.pre_conv.weight, m.post_conv.weight, groups=g)
    branch = nn.Sequential(eq.conv2d(k1a, m.bias.detach(), padding=p, groups=g), copy.deepcopy(m.activation),
                           eq.conv2d(k1b, None, stride=s, padding=p, groups=g))
    skip = eq.conv2d(k2, None, stride=s, padding=int(m.skip_kernel_size) // 2, groups=g)
    return Residual(branch, skip, branch_scale=-2.0, input_shape=ctx.shape)


_CONV_NAMES = ("Conv2d", "PadConv2d", "SpectralConv2d", "FrobeniusConv2d", "FastBlockConv2d", "RKOConv2d",
               "BcopRkoConv2d", "AOLConv2D", "AdaptiveSOCConv2d", "SOCConv2d", "BCOPConv2d", "CayleyConv2d")
_LINEAR_NAMES = ("Linear", "SpectralLinear", "FrobeniusLinear", "OrthoLinear", "UnitNormLinear")

RECOGNISERS: tuple[Recogniser, ...] = (
    Recogniser(("GroupSort", "GroupSort2", "FullSort"), "lipzoo.layers.GroupSort (ascending sort of contiguous "
               "groups along dim 1; times k_coef_lip)", _deel_group_sort, exact=True, library="deel-torchlip"),
    Recogniser(("MaxMin",), "lipzoo.layers.CReLU: cat(relu(x), relu(-x)) (deel-torchlip's MaxMin)", _deel_max_min,
               exact=True, library="deel-torchlip"),
    Recogniser(("MaxMin",), "lipzoo.layers.MaxMin: cat(max(a, b), min(a, b)) of the two halves (orthogonium's)",
               _orth_max_min, exact=True, library="orthogonium"),
    Recogniser(("LPReLU",), "nn.PReLU with the weight clamped to [-k, k]", _lprelu, exact=True,
               library="deel-torchlip"),
    Recogniser(("Abs",), "nn.LeakyReLU(negative_slope=-1), which is |x|", _abs, exact=True, library="orthogonium"),
    Recogniser(("ScaledL2NormPool2d",), "lipzoo.layers.L2NormPool2d(kernel, stride, scale=k_coef_lip)",
               _scaled_l2_pool, exact=True, library="deel-torchlip"),
    Recogniser(("ScaledAdaptativeL2NormPool2d",), "lipzoo.layers.L2NormPool2d over the whole (H, W) input",
               _adaptive_l2_pool, exact=True, library="deel-torchlip"),
    Recogniser(("ScaledAvgPool2d",), "nn.AvgPool2d(divisor_override=k) when the scaled average is a sum over an "
               "integer, else a depthwise nn.Conv2d", _scaled_avg_pool, library="deel-torchlip"),
    Recogniser(("ScaledAdaptiveAvgPool2d",), "the sum of the (H, W) input over sqrt(H W): nn.AvgPool2d with "
               "divisor_override, or a depthwise nn.Conv2d", _adaptive_avg_pool, library="deel-torchlip"),
    Recogniser(_CONV_NAMES, "a plain nn.Conv2d holding the weight the layer computes (read once, in eval mode), "
               "'same' padding made explicit", _conv, bases=(nn.Conv2d,)),
    Recogniser(_LINEAR_NAMES, "a plain nn.Linear holding the weight the layer computes (read once, in eval mode)",
               _linear, bases=(nn.Linear,)),
    Recogniser(("ScaleBiasLayer",), "x * scalar + bias[c]: a depthwise 1x1 nn.Conv2d (or a diagonal nn.Linear)",
               _scale_bias, library="deel-torchlip"),
    Recogniser(("BatchCentering", "BatchLipNorm"), "its eval-mode map (x - running mean) * scale + bias, as a "
               "depthwise 1x1 nn.Conv2d (or a diagonal nn.Linear)", _batch_lip_norm, library="deel-torchlip"),
    Recogniser(("LayerCentering", "LayerCentering2D", "LayerCentering2d"), "x - spatial mean + bias: one depthwise "
               "nn.Conv2d with a (2H-1) x (2W-1) kernel", _layer_centering),
    Recogniser(("BatchCentering2D",), "its eval-mode map x - running_mean + bias: a depthwise 1x1 nn.Conv2d",
               _batch_centering, library="orthogonium"),
    Recogniser(("ChannelShuffle",), "the channel permutation as a 1x1 nn.Conv2d of zeros and ones",
               _channel_shuffle, exact=True, library="orthogonium"),
    Recogniser(("PrescaledAdditiveResidual",), "lipzoo.interop.Residual: (x + fn(alpha x)) / (1 + |alpha|)",
               _prescaled_residual, library="orthogonium"),
    Recogniser(("AdditiveResidual",), "lipzoo.interop.Residual: s x + (1 - s) fn(x), s = sigmoid(alpha)",
               _additive_residual, library="orthogonium"),
    Recogniser(("SDPBasedLipschitzDense",), "lipzoo.layers.SLLLinear with the same weight, bias and q", _sdp_dense,
               library="orthogonium"),
    Recogniser(("SDPBasedLipschitzResBlock",), "lipzoo.interop.Residual: x - 2 K^T relu(K x + b) (the transposed "
               "convolution as a flipped nn.Conv2d)", _sdp_conv, library="orthogonium"),
    Recogniser(("SLLxAOCLipschitzResBlock",), "lipzoo.interop.Residual: strided skip convolution minus 2 times "
               "the fused branch convolutions", _sll_x_aoc, library="orthogonium"),
    Recogniser(("ConcatResidual",), "", None, library="orthogonium",
               refuse="ConcatResidual applies its function to half of the channels and concatenates; lipzoo has no "
                      "operator that selects or embeds channel halves yet"),
    Recogniser(("L2NormResidual",), "", None, library="orthogonium",
               refuse="L2NormResidual combines x and fn(x) by sqrt(x^2/2 + fn(x)^2/2 + eps), which is not one layer of "
                      "eq. (14)"),
    Recogniser(("AOCLipschitzResBlock",), "", None, library="orthogonium",
               refuse="AOCLipschitzResBlock's forward pads (or not) differently from its convolutions' own padding; "
                      "in orthogonium 0.0.4 its output does not have its input's shape"),
    Recogniser(("LipResidual",), "", None, library="deel-torchlip",
               refuse="LipResidual takes two inputs (x, y); lipzoo bounds chains of one-input modules"),
    Recogniser(("HouseHolder", "HouseHolder_Order_2"), "", None,
               refuse="Householder activations are not modelled yet (a learned reflection chosen per pair)"),
)


def candidates(module: nn.Module) -> list[Recogniser]:
    """The entries whose names (or bases, for a peer class) match ``module``, those of its own library first."""
    cls = peer_class(module)
    lib = library_of(cls)
    found = [r for r in RECOGNISERS if cls.__name__ in r.names
             or (lib and r.bases and issubclass(cls, r.bases))]
    return sorted(found, key=lambda r: 0 if not r.library or r.library == lib else 1)
