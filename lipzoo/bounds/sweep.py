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

import functools
from typing import cast

import torch
import torch.nn.functional as F

from lipzoo.bounds.structure import Structure
from lipzoo.layers.operators import ComposeOp, Conv2dOp, LinearOperator, ScaleOp, SumOp

Key = tuple[int, int]

__all__ = ["forward_sweep", "adjoint_sweep", "power_iteration", "row_norms", "operator_keys", "forward", "adjoint"]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout for a CPU convolution in a low-precision float dtype.

    oneDNN's convolutions run natively in that layout: an NCHW input costs a conversion of the output
    (for ``conv_transpose2d`` a copy as long as the convolution itself), and the batched power iteration
    of 4C3F / 6C2F took 3-9 % less time with it (float32, 1 and 2 threads, interleaved A/B). float64 (the
    certificates) and CUDA keep their layout."""
    if x.dim() == 4 and x.shape[1] > 1 and x.device.type == "cpu" and x.dtype in (
            torch.float32, torch.bfloat16, torch.float16):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def forward(op: LinearOperator, x: torch.Tensor) -> torch.Tensor:
    """``op.forward(x)``, convolutions in the layout :func:`_channels_last` picks (compositions and sums recurse)."""
    if type(op) is Conv2dOp:  # the output too: a one-channel input leaves it NCHW, and a batch of mixed
        return _channels_last(op.forward(_channels_last(x)))  # layouts is slow to concatenate
    if type(op) is ComposeOp:
        for f in reversed(op.ops):
            x = forward(f, x)
        return x
    if type(op) is SumOp:
        return cast(torch.Tensor, sum(forward(f, x) for f in op.ops))  # ops is not empty
    return op.forward(x)


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
            return F.conv_transpose2d(_channels_last(y), op.weight, None, op.stride, op.padding, tuple(pad),
                                      op.groups, op.dilation)
        return op.adjoint(y, in_shape)
    if type(op) is ComposeOp:
        for f, shape in reversed(op.factors(in_shape)):
            y = adjoint(f, y, shape)
        return y
    if type(op) is SumOp:
        return cast(torch.Tensor, sum(adjoint(f, y, in_shape) for f in op.ops))
    if type(op) is ScaleOp:
        return op.c * y
    return op.adjoint(y, in_shape)


def operator_keys(structure: Structure, targets) -> list[Key]:
    """Keys ``(t, j)`` of the operators eq. (16) needs for the given targets."""
    return [(t, j) for t in targets for j in range(-1, t)]


class _Rows:
    """Vectors of several keys as one tensor, in a fixed key order (each key a block of rows).

    ``scale`` holds, per key, a scalar not yet multiplied into its rows: the ``(alpha + beta) / 2``
    factors of blocks without a skip branch, applied once where a vector leaves the sweep instead
    of at every block (one multiplication of the whole batch per block saved)."""

    __slots__ = ("_x", "parts", "keys", "sizes", "scale")

    def __init__(self, x, keys, sizes, scale, parts=None):
        self._x, self.keys, self.sizes, self.scale, self.parts = x, keys, sizes, scale, parts

    @classmethod
    def of(cls, parts: dict, keys: list) -> "_Rows":
        """The vectors of ``keys``, kept as separate tensors until a joined batch is needed (a merge
        then copies them once, straight into the merged batch)."""
        return cls(None, keys, [parts[k].shape[0] for k in keys], [1.0] * len(keys), [parts[k] for k in keys])

    @property
    def x(self) -> torch.Tensor:
        """The rows as one tensor (read only when there are keys: ``None`` without rows)."""
        if self._x is None and self.parts:
            self._x = _join(self.parts)
        return self._x

    def rows(self, lo: int, hi: int, i: int) -> torch.Tensor:
        """Rows ``lo:hi`` (of key ``i`` when kept separately)."""
        if self._x is None and self.parts:
            return self.parts[i]
        return self._x[lo:hi]

    def split_prefix(self, n_keys: int, finish=None, scaled: bool = True) -> tuple[dict, "_Rows"]:
        """The first ``n_keys`` keys as ``{key: finish(rows)}`` (their scales applied), and the rest.

        ``finish`` maps the block of those rows to a tensor with one entry (or row) per row, in one
        call for all the keys (e.g. row norms, normalized rows)."""
        if not n_keys:
            return {}, self
        r = sum(self.sizes[:n_keys])
        block = self.x[:r]
        if scaled or any(c <= 0 for c in self.scale[:n_keys]):
            block = _scaled(block, self.scale[:n_keys], self.sizes[:n_keys])
        head = (block if finish is None else finish(block)).split(self.sizes[:n_keys])
        return (dict(zip(self.keys[:n_keys], head)),
                _Rows(self.x[r:], self.keys[n_keys:], self.sizes[n_keys:], self.scale[n_keys:]))

    def with_x(self, x, factor: float = 1.0) -> "_Rows":
        scale = self.scale if factor == 1.0 else [c * factor for c in self.scale]
        return _Rows(x, self.keys, self.sizes, scale)


def _join(pieces: list[torch.Tensor]) -> torch.Tensor:
    """One tensor from row blocks: the block itself when there is one, one copy otherwise."""
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, 0)


def _scaled(x: torch.Tensor, scales: list[float], sizes: list[int]) -> torch.Tensor:
    """Rows of ``x`` (blocks of ``sizes``) times their deferred scalars (at most one multiplication)."""
    if all(c == 1.0 for c in scales):
        return x
    if len(set(scales)) == 1:
        return x * scales[0]
    if x.is_cuda and torch.cuda.is_current_stream_capturing():  # no host-to-device copy in a CUDA graph
        col = torch.cat([torch.full((n,), c, dtype=x.dtype, device=x.device) for c, n in zip(scales, sizes)])
    else:
        col = torch.tensor([c for c, n in zip(scales, sizes) for _ in range(n)], dtype=x.dtype, device=x.device)
    return x * col.reshape(-1, *([1] * (x.dim() - 1)))


def _merge(a: _Rows, b: _Rows, order) -> _Rows:
    """The keys of ``a`` and ``b`` (each sorted by ``order``, no key in both) in one ``order``-sorted
    batch: runs of consecutive rows are taken as views and joined with one copy."""
    if not b.keys:
        return a
    if not a.keys:
        return b
    runs, keys, sizes, where = _merge_plan(tuple(a.keys), tuple(a.sizes), tuple(b.keys), tuple(b.sizes), order,
                                           a.parts is not None and a._x is None, b.parts is not None and b._x is None)
    srcs = (a, b)
    x = torch.cat([srcs[which].rows(lo, hi, i) for which, lo, hi, i in runs], 0)
    return _Rows(x, list(keys), list(sizes), [srcs[which].scale[i] for which, i in where])


@functools.lru_cache(maxsize=4096)
def _merge_plan(a_keys, a_sizes, b_keys, b_sizes, order, a_parts=False, b_parts=False):
    """How :func:`_merge` joins two batches (memoised: a sweep merges the same layouts at every iteration).

    Returns the row runs ``(source, first row, end row, key index)`` to concatenate (a source kept as
    separate tensors, ``*_parts``, gives one run per key), the merged keys and sizes, and for each merged
    key where its deferred scale comes from ``(source, index)``."""
    merged = sorted([(order(k), 0, i) for i, k in enumerate(a_keys)] + [(order(k), 1, i) for i, k in enumerate(b_keys)])
    offsets = []
    for sizes in (a_sizes, b_sizes):
        acc = [0]
        for n in sizes:
            acc.append(acc[-1] + n)
        offsets.append(acc)
    runs, keys, sizes, where = [], [], [], []
    for _, which, i in merged:
        k, n = (a_keys, b_keys)[which][i], (a_sizes, b_sizes)[which][i]
        separate = (a_parts, b_parts)[which]
        if runs and not separate and runs[-1][0] == which and runs[-1][2] == offsets[which][i]:
            runs[-1] = (which, runs[-1][1], offsets[which][i + 1], i)
        else:
            runs.append((which, offsets[which][i], offsets[which][i + 1], i))
        keys.append(k)
        sizes.append(n)
        where.append((which, i))
    return tuple(runs), tuple(keys), tuple(sizes), tuple(where)


def _by_target(k: Key):
    return k  # (t, j)


def _by_source(k: Key):
    return (-k[1], k[0])


def forward_sweep(structure: Structure, v: dict[Key, torch.Tensor], *, finish=None,
                  scaled: bool = True) -> dict[Key, torch.Tensor]:
    """``{k: S_k v_k}`` for all keys in ``v`` with one call per layer operator.

    ``finish`` (optional) is applied to each block of finished rows before they are split by key,
    e.g. :func:`row_norms` to get ``{k: ||S_k v_k||}`` (one entry per vector) in O(L) operations.
    ``scaled=False`` leaves out positive scalar factors (each key's result is then ``S_k v_k`` times a
    positive number), for uses that do not depend on them, such as power iteration.

    The vectors in flight at ``x_s`` are one tensor ordered by ``(t, j)``, so those whose target is
    block ``s`` are a prefix (a view, no copy) and the others continue as one view; the vectors
    starting at block ``s`` are merged in with one copy per block."""
    blocks, L = structure.blocks, structure.depth
    out: dict[Key, torch.Tensor] = {}
    flight = _Rows.of(v, sorted(k for k in v if k[1] < 0))
    for s in range(L):
        blk = blocks[s]
        starters = _Rows.of(v, sorted(k for k in v if k[1] == s))
        cont = flight
        if flight.keys:
            wx = forward(blk.W, flight.x)
            ended, cont = flight.with_x(wx).split_prefix(sum(1 for k in flight.keys if k[0] == s), finish, scaled)
            out.update(ended)
            x_cont = flight.x[flight.x.shape[0] - cont.x.shape[0]:]
        if cont.keys and blk.H is not None:
            # x_{s+1} = H x + c G W x: the skip branch keeps the scales, the sum is one fused add
            g_in = _join([cont.x] + (starters.parts or []))
            g_out = g_in if blk.G is None else forward(blk.G, g_in)
            nc = cont.x.shape[0]
            cont = cont.with_x(torch.add(forward(blk.H, x_cont), g_out[:nc], alpha=blk.c))
            starters = starters.with_x(g_out[nc:])
            flight = _merge(cont, starters, _by_target)
        else:
            flight = _merge(cont.with_x(cont.x, blk.c) if cont.keys else cont, starters, _by_target)
            if blk.G is not None and flight.keys:
                flight = flight.with_x(forward(blk.G, flight.x))
    if flight.keys:
        z = flight.x if structure.output is None else forward(structure.output, flight.x)
        out.update(flight.with_x(z).split_prefix(len(flight.keys), finish, scaled)[0])
    return out


def adjoint_sweep(structure: Structure, u: dict[Key, torch.Tensor], *, finish=None,
                  scaled: bool = True) -> dict[Key, torch.Tensor]:
    """``{k: S_k^T u_k}``: the exact adjoint of :func:`forward_sweep`, again one call per operator
    (``finish`` and ``scaled`` as there).

    The vectors in flight at ``x_{s+1}`` are ordered by ``(-j, t)``, so those whose source is block
    ``s`` are a prefix; the ones arriving at block ``s`` (target ``t = s``) are merged in."""
    blocks, L = structure.blocks, structure.depth
    grads: dict[Key, torch.Tensor] = {}
    carry = _Rows.of(u, sorted((k for k in u if k[0] == L), key=_by_source))
    if carry.keys and structure.output is not None:
        shape = blocks[-1].next_shape if L else structure.input_shape
        carry = carry.with_x(adjoint(structure.output, carry.x, shape))
    for s in range(L - 1, -1, -1):
        blk = blocks[s]
        arrivals = _Rows.of(u, sorted((k for k in u if k[0] == s), key=_by_source))
        cont = carry
        if carry.keys:
            gt = carry.x if blk.G is None else adjoint(blk.G, carry.x, blk.y_shape)
            ended, cont = carry.with_x(gt).split_prefix(sum(1 for k in carry.keys if k[1] == s), finish, scaled)
            grads.update(ended)
            c_cont = carry.x[carry.x.shape[0] - cont.x.shape[0]:]
        if cont.keys and blk.H is not None:
            w_in = _join([cont.x] + (arrivals.parts or []))
            w_out = adjoint(blk.W, w_in, blk.x_shape)
            nc = cont.x.shape[0]
            cont = cont.with_x(torch.add(adjoint(blk.H, c_cont, blk.x_shape), w_out[:nc], alpha=blk.c))
            carry = _merge(cont, arrivals.with_x(w_out[nc:]), _by_source)
        else:
            carry = _merge(cont.with_x(cont.x, blk.c) if cont.keys else cont, arrivals, _by_source)
            if carry.keys:
                carry = carry.with_x(adjoint(blk.W, carry.x, blk.x_shape))
    if carry.keys:  # sources j = -1 arrive back at x_0
        grads.update(carry.split_prefix(len(carry.keys), finish, scaled)[0])
    return grads


def power_iteration(structure: Structure, v: dict[Key, torch.Tensor], n_iter: int, *,
                    dtype: torch.dtype | None = None) -> dict[Key, torch.Tensor]:
    """``n_iter`` batched power-iteration steps ``v <- S^T S v / ||S^T S v||`` for every key.

    The returned vectors are unit-norm per key (one vector per key). ``||S v||`` then *under*-
    estimates ``||S||``: an estimate for training, never a certificate on its own.

    ``dtype`` (e.g. ``torch.bfloat16``) runs the iterations in that precision, on a copy of the
    structure's weights cast to it; the vectors come back in their own dtype, normalised there. Only
    the direction is iterated, and an error ``delta`` in the direction of ``v`` moves ``||S v||`` by
    ``O(delta^2)`` relative: evaluate ``||S v||`` in full precision (as :class:`LipLTEstimator` does).
    """
    to_dtype = dtype is not None and n_iter > 0 and any(x.dtype != dtype for x in v.values())
    low, w = ((structure.to(dtype), {k: x.to(dtype) for k, x in v.items()})  # type: ignore[arg-type]  # not None
              if to_dtype else (structure, v))
    for _ in range(n_iter):
        # normalised at the end, so positive factors along the way do not matter
        w = adjoint_sweep(low, forward_sweep(low, w, scaled=False), finish=_normalize, scaled=False)
    return {k: _normalize(x.to(v[k].dtype)) for k, x in w.items()} if to_dtype else w


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """``||x_i||`` for every row ``x_i`` of a batch (a ``finish`` for :func:`forward_sweep`)."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    norms = torch.linalg.vector_norm(x.flatten(1), dim=1).clamp_min(torch.finfo(x.dtype).tiny)
    return x / norms.reshape(-1, *([1] * (x.dim() - 1)))
