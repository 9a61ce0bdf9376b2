"""Batched application of all LipLT operators in O(L) sequential layer calls (paper, Appendix A.4).

Eq. (16) needs the norms of ``S_{t,j} = W_t Hhat_{t-1} ... Hhat_{j+1} G_j`` for every target
``t`` and source ``j < t`` (``j = -1``: straight from the input, no ``G``). Applying each of the
O(L^2) products separately costs O(L^3) layer calls. Here one forward sweep walks the blocks once:
at block ``s`` every vector in flight (whatever its ``(t, j)``) sits in the same space ``x_s``, so
one call of ``W_s``, one of ``H_s`` and one of ``G_s`` on the concatenated batch advances all of
them. The adjoint sweep walks back the same way. A power iteration is one of each.

Vectors are held in dicts ``{(t, j): tensor (n, *shape)}``; each key may carry any number ``n`` of
vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lipzoo.bounds.structure import Structure
from lipzoo.layers.operators import ComposeOp, Conv2dOp, LinearOperator, ScaleOp, SumOp

Key = tuple[int, int]

__all__ = ["forward_sweep", "adjoint_sweep", "power_iteration", "operator_keys", "adjoint"]


def adjoint(op: LinearOperator, y: torch.Tensor, in_shape) -> torch.Tensor:
    """``op.adjoint(y, in_shape)``, with convolutions through ``conv_transpose2d``.

    ``Conv2dOp.adjoint`` uses ``torch.nn.grad.conv2d_input`` (``convolution_backward``), which was 1.9x
    slower on CPU than ``conv_transpose2d`` with the ``output_padding`` that makes it the exact adjoint
    for this input size (``in - ((out - 1) s - 2p + d (k - 1) + 1)``, in ``[0, s)``); profiling the batched
    power iteration showed the adjoint convolutions as its largest cost. Compositions and sums recurse;
    anything else uses its own ``adjoint``. A test checks both agree to rounding on strided, padded,
    dilated and grouped convolutions.
    """
    if type(op) is Conv2dOp:
        size = in_shape[-2:]
        k = op.weight.shape[-2:]
        out = y.shape[-2:]
        pad = [n - ((o - 1) * s - 2 * p + d * (kk - 1) + 1)
               for n, o, s, p, d, kk in zip(size, out, op.stride, op.padding, op.dilation, k)]
        if all(0 <= q < max(s, d) for q, s, d in zip(pad, op.stride, op.dilation)):
            return F.conv_transpose2d(y, op.weight, None, op.stride, op.padding, tuple(pad), op.groups,
                                      op.dilation)
        return op.adjoint(y, in_shape)
    if type(op) is ComposeOp:
        shapes = op._shapes(in_shape)
        for i, f in enumerate(op.ops):
            y = adjoint(f, y, shapes[len(op.ops) - 1 - i])
        return y
    if type(op) is SumOp:
        return sum(adjoint(f, y, in_shape) for f in op.ops)
    if type(op) is ScaleOp:
        return op.c * y
    return op.adjoint(y, in_shape)


def operator_keys(structure: Structure, targets) -> list[Key]:
    """Keys ``(t, j)`` of the operators eq. (16) needs for the given targets."""
    return [(t, j) for t in targets for j in range(-1, t)]


def _cat(parts: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    return torch.cat(parts, 0), [p.shape[0] for p in parts]


def forward_sweep(structure: Structure, v: dict[Key, torch.Tensor]) -> dict[Key, torch.Tensor]:
    """``{k: S_k v_k}`` for all keys in ``v`` with one call per layer operator."""
    blocks, L = structure.blocks, structure.depth
    out: dict[Key, torch.Tensor] = {}
    flight = {k: x for k, x in v.items() if k[1] < 0}  # items in x_s, s = 0
    for s in range(L + 1):
        if s == L:
            for k, x in flight.items():
                out[k] = x if structure.output is None else structure.output.forward(x)
            break
        blk = blocks[s]
        starters = {k: x for k, x in v.items() if k[1] == s}
        keys = list(flight)
        nxt: dict[Key, torch.Tensor] = {}
        cont_keys = [k for k in keys if k[0] > s]
        if keys:
            xs, sizes = _cat([flight[k] for k in keys])
            wx = dict(zip(keys, blk.W.forward(xs).split(sizes)))
            for k in keys:
                if k[0] == s:
                    out[k] = wx[k]
            if cont_keys and blk.H is not None:
                hx, hs = _cat([flight[k] for k in cont_keys])
                nxt.update(zip(cont_keys, blk.H.forward(hx).split(hs)))
        g_keys = cont_keys + list(starters)
        if g_keys:
            g_in, gs = _cat([blk.c * wx[k] for k in cont_keys] + [starters[k] for k in starters])
            g_out = g_in if blk.G is None else blk.G.forward(g_in)
            for k, y in zip(g_keys, g_out.split(gs)):
                nxt[k] = nxt[k] + y if k in nxt else y
        flight = nxt
    return out


def adjoint_sweep(structure: Structure, u: dict[Key, torch.Tensor]) -> dict[Key, torch.Tensor]:
    """``{k: S_k^T u_k}``: the exact adjoint of :func:`forward_sweep`, again one call per operator."""
    blocks, L = structure.blocks, structure.depth
    grads: dict[Key, torch.Tensor] = {}
    last = [k for k in u if k[0] == L]
    carry: dict[Key, torch.Tensor] = {}
    if last:
        ys, sizes = _cat([u[k] for k in last])
        shape = blocks[-1].next_shape if L else structure.input_shape
        xs = ys if structure.output is None else adjoint(structure.output, ys, shape)
        carry = dict(zip(last, xs.split(sizes)))
    for s in range(L - 1, -1, -1):
        blk = blocks[s]
        keys = list(carry)  # j <= s < t, all in x_{s+1}
        new_carry: dict[Key, torch.Tensor] = {}
        wgrad: dict[Key, torch.Tensor] = {}
        if keys:
            cs, sizes = _cat([carry[k] for k in keys])
            gt = cs if blk.G is None else adjoint(blk.G, cs, blk.y_shape)
            for k, g in zip(keys, gt.split(sizes)):
                if k[1] == s:
                    grads[k] = g
                else:
                    wgrad[k] = blk.c * g
            cont = [k for k in keys if k[1] < s]
            if cont and blk.H is not None:
                hs, hsz = _cat([carry[k] for k in cont])
                new_carry.update(zip(cont, adjoint(blk.H, hs, blk.x_shape).split(hsz)))
        for k in u:
            if k[0] == s:
                wgrad[k] = u[k]
        if wgrad:
            wkeys = list(wgrad)
            ws, wsz = _cat([wgrad[k] for k in wkeys])
            for k, x in zip(wkeys, adjoint(blk.W, ws, blk.x_shape).split(wsz)):
                new_carry[k] = new_carry[k] + x if k in new_carry else x
        carry = new_carry
    for k, x in carry.items():  # sources j = -1 arrive back at x_0
        grads[k] = x
    return grads


def power_iteration(structure: Structure, v: dict[Key, torch.Tensor], n_iter: int) -> dict[Key, torch.Tensor]:
    """``n_iter`` batched power-iteration steps ``v <- S^T S v / ||S^T S v||`` for every key.

    The returned vectors are unit-norm per key (one vector per key). ``||S v||`` then *under*-
    estimates ``||S||``: an estimate for training, never a certificate on its own.
    """
    for _ in range(n_iter):
        w = adjoint_sweep(structure, forward_sweep(structure, v))
        v = {k: _normalize(w[k]) for k in v}
    return v


def _normalize(x: torch.Tensor) -> torch.Tensor:
    norms = x.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
    return x / norms.reshape(-1, *([1] * (x.dim() - 1)))
