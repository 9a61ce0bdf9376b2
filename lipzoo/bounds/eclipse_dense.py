"""Dense float64 matrices of a structure's weights, with proved error bounds, and exact power-of-two scaling.

The floating-point groundwork of :mod:`lipzoo.bounds.eclipse`. :func:`_materialize` pushes the identity basis
through a weight's operator chain and returns the ``(n_out, n_in)`` float64 matrix ``W_hat`` with a proved bound
``||W - W_hat||_2 <= e``: ``e = 0`` when the chain is exact (one ``DenseOp`` with flattenings and unit scalings,
:func:`_is_exact_chain`), otherwise ``e = sqrt(n_in) theta A`` from the operator's
:meth:`~lipzoo.layers.operators.LinearOperator.rounding_model` (standard model, float64 operators required).
:func:`_pow2_normalize` scales a matrix by ``2^-e`` (max entry in [0.5, 1)), exact in the normal range, the bits
lost below it added to the error bound; :func:`_rescale` multiplies a certified value back by ``2^e``, rounded
up, so it stays an upper bound. :func:`_up` rounds a non-negative scalar up with a relative margin covering the
few float operations that produced it.
"""

from __future__ import annotations

import math
from typing import cast

import torch

from lipzoo.bounds.structure import numel
from lipzoo.layers.operators import ComposeOp, DenseOp, FlattenOp, LinearOperator, ScaleOp, compose

SCALAR_MARGIN = 1e-12
"""Relative margin of :func:`_up` for a few scalar float operations (>> their ``~10 u``)."""


def _up(x: float, rel: float = SCALAR_MARGIN) -> float:
    """``x (1 + rel)`` rounded up (``x >= 0``): covers a few float operations that produced ``x``."""
    return math.nextafter(x * (1 + rel), math.inf)


def _is_exact_chain(op) -> bool:
    """True when pushing one-hot vectors through ``op`` is exact: flattenings, scalings by powers of two
    (1.0 included; no under/overflow for one-hot inputs times entries of a normal matrix is assumed only
    for 1.0) and at most one dense map."""
    ops = op.ops if isinstance(op, ComposeOp) else [op]
    dense = 0
    for f in ops:
        if isinstance(f, DenseOp):
            dense += 1
        elif isinstance(f, FlattenOp):
            continue
        elif isinstance(f, ScaleOp):
            c = f.c.detach().item() if torch.is_tensor(f.c) else float(f.c)
            if c != 1.0:
                return False
        else:
            return False
    return dense <= 1


def _materialize(factors, in_shape, max_side: int, what: str) -> tuple[torch.Tensor, float]:
    """The ``(n_out, n_in)`` float64 matrix of the chain and a proved bound on its error (spectral norm)."""
    n_in = numel(in_shape)
    if not factors:
        return torch.eye(n_in, dtype=torch.float64), 0.0
    op = cast(LinearOperator, compose(*factors))  # factors is not empty
    out_shape = op.out_shape(tuple(in_shape))
    n_out = numel(out_shape)
    if max(n_in, n_out) > max_side:
        raise ValueError(f"eclipse_bound: {what} is a {n_out} x {n_in} map, larger than max_side={max_side} on a "
                         f"side; materializing it is too costly. Use method='liplt' for this network (or raise "
                         f"max_side).")
    exact = _is_exact_chain(op)
    ref = None
    for f in (op.ops if isinstance(op, ComposeOp) else [op]):
        for attr in ("weight", "scale", "c"):
            t = getattr(f, attr, None)
            if torch.is_tensor(t) and t.is_floating_point():
                ref = t
                break
        if ref is not None:
            break
    dtype = ref.dtype if ref is not None else torch.float64
    if not exact and dtype != torch.float64:
        raise ValueError(f"eclipse_bound: {what} is a composite operator in {dtype}; build the structure from a "
                         f"float64 copy of the model (its rounding is bounded for float64 only).")
    device = ref.device if ref is not None else None
    cols = []
    for start in range(0, n_in, 512):
        idx = torch.arange(start, min(start + 512, n_in))
        basis = torch.zeros(len(idx), n_in, dtype=dtype, device=device)
        basis[torch.arange(len(idx)), idx.to(basis.device)] = 1.0
        cols.append(op.forward(basis.reshape(len(idx), *in_shape)).reshape(len(idx), -1))
    mat = torch.cat(cols, 0).detach().T.to(torch.float64).cpu().contiguous()
    if not bool(torch.isfinite(mat).all()):
        raise ValueError(f"eclipse_bound: {what} has non-finite entries.")
    if exact:
        return mat, 0.0
    theta, a = op.rounding_model(tuple(in_shape))
    return mat, _up(math.sqrt(n_in) * theta * a, 1e-9)


def _ldexp(t: torch.Tensor, e: int) -> torch.Tensor:
    """``t 2^e`` by multiplications with powers of two of at most ``2^500`` (each exact in the normal range)."""
    while e:
        step = max(-500, min(500, e))
        t = t * 2.0 ** step
        e -= step
    return t


def _pow2_normalize(mat: torch.Tensor, err: float) -> tuple[torch.Tensor, float, int]:
    """``mat 2^-e`` with max entry in [0.5, 1), exact unless entries drop below the normal range (then the
    lost bits, at most ``2^-1075`` per entry, are added to the error). Returns (matrix, error, e)."""
    top = float(mat.abs().max())
    if top == 0.0:
        return mat, err, 0
    e = math.frexp(top)[1]
    out = _ldexp(mat, -e)
    err = math.ldexp(err, -e) if err else 0.0
    back = _ldexp(out, e)
    if not bool(torch.equal(back, mat)):
        err = _up(err + math.sqrt(mat.numel()) * 2.0 ** -1074, 1e-9)
    return out, err, e


def _rescale(val: torch.Tensor, e: int) -> torch.Tensor:
    """``val 2^e`` rounded up (exact in the normal range; overflow gives inf, underflow rounds up)."""
    out = _ldexp(val, e)
    back = _ldexp(out, -e)
    low = (back < val) & torch.isfinite(out)
    bumped = torch.nextafter(out, torch.full_like(out, math.inf))
    return torch.where(low, bumped, out)
