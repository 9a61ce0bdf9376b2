"""The chains of the LipLT recursion and their proved bounds from certified segments.

Eq. (16) needs ``||S_{t,j}||`` for every ``S_{t,j} = W_t Hhat_{t-1} ... Hhat_{j+1} G_j``. Each chain is a product
of factors; any split into consecutive segments gives ``||S|| <= prod ||segment||``. A segment is bounded by its
certified norm when one is known (:meth:`ChainPlanner.record`), a factor by its own proved bound (FFT/polyphase
bound of a convolution, with per-channel scalings merged into the kernel: :func:`fold_into_convs`; dense factors
by a Gram/Cholesky certificate; diagonal maps exactly). :meth:`ChainPlanner.best_split` takes the best split per
chain (a dynamic programme); :meth:`ChainPlanner.groups` lays out the shared sweeps that certify every chain
with a small side (:func:`lipzoo.bounds.gram.group_gram`).
"""

from __future__ import annotations

import math
from typing import cast

from lipzoo.bounds.steps import FactorBounds, Step, adjoint_steps, primitive_steps
from lipzoo.bounds.structure import Structure, numel
from lipzoo.layers.operators import ComposeOp, Conv2dOp, DiagonalOp, LinearOperator, ScaleOp

Shape = tuple[int, ...]

__all__ = ["ChainPlanner", "fold_into_convs"]


def fold_into_convs(parts: list[LinearOperator], in_shape: Shape) -> list[LinearOperator]:
    """The same operator with scalars moved to the front and per-input-channel scalings merged into the
    convolution they feed (one factor instead of two).

    Scalars commute with every linear map, and ``||c X|| = |c| ||X||``: moved out, they leave the convolution
    itself in place, so its memoized FFT bound serves ``Hhat_k = c W_k`` as well as ``W_k`` (merging ``c`` into
    the kernel made a new one, whose FFT bound was computed again: half of 8C2F's factor-bound time).
    ``conv_w(diag(s) x) = conv_{w s}(x)`` for a per-channel ``s``, so the FFT bound of the merged kernel bounds
    the product without the looseness of ``||conv|| ||diag||``. The merged kernel is rounded (relative ``u``
    per entry): the two operators differ by at most ``u || |M| ||_2 <= u ||M||_F <= u sqrt(min(m, n)) ||M||_2``
    for the merged matrix ``M``, i.e. a relative ``< 1.2e-10`` for any size below 1e12, inside
    :data:`FACTOR_MARGIN`."""
    scalars = [p for p in parts if isinstance(p, ScaleOp)]
    out = [p for p in parts if not isinstance(p, ScaleOp)]
    changed = True
    while changed:
        changed = False
        for i in range(len(out) - 1):
            a, b = out[i], out[i + 1]  # a acts after b
            if isinstance(a, Conv2dOp) and a.groups == 1 and isinstance(b, DiagonalOp) and b.scale.dim() == 1 \
                    and b.scale.numel() == a.weight.shape[1]:
                w = a.weight * b.scale.to(a.weight)[None, :, None, None]
                out[i:i + 2] = [Conv2dOp(w, a.stride, a.padding, a.dilation, a.groups)]
                changed = True
                break
    return scalars + out


class ChainPlanner:
    """The chains ``S_{t,j}`` of a structure, the certified norms known so far, and the best proved bound of every
    chain from them (:meth:`best_split`)."""

    def __init__(self, structure: Structure, bounds: FactorBounds | None = None):
        self.s = structure
        self.bounds = bounds if bounds is not None else FactorBounds()
        self.hhat: dict[int, LinearOperator] = {}
        self.exact: dict[tuple, float] = {}  # (labels, in_shape) -> certified norm of that segment
        self.own: dict[tuple, tuple[float, str]] = {}

    def H(self, k: int) -> LinearOperator:
        if k not in self.hhat:
            self.hhat[k] = self.s.blocks[k].H_hat()
        return self.hhat[k]

    def chain(self, t: int, j: int):
        """Labels, operators (leftmost first), the input shape of each, and the output shape of ``S_{t,j}``."""
        s = self.s
        labels = [("W", t)]
        ops: list[LinearOperator] = [cast(LinearOperator, s.output) if t == s.depth else s.blocks[t].W]  # W_L is set
        for k in range(t - 1, j, -1):
            labels.append(("H", k))
            ops.append(self.H(k))
        G = s.blocks[j].G if j >= 0 else None
        if G is not None:
            labels.append(("G", j))
            ops.append(G)
        ins = [tuple(s.space_shape(t, j)[0])]
        for op in reversed(ops[1:]):
            ins.append(op.out_shape(ins[-1]))
        ins = ins[::-1]  # ins[i]: input shape of ops[i]
        return labels, ops, ins, ops[0].out_shape(ins[0])

    def record(self, key, value: float) -> None:
        """Store the certified norm of ``S_key`` for every split that contains it as a segment.

        Besides the chain's own factors ``[W_t, Hhat_{t-1}, ..., G_j]``, a block without ``H`` and ``G`` has
        ``Hhat_t = c W_t`` exactly (``c = (alpha+beta)/2``, the stored number), so the segment
        ``[Hhat_t, Hhat_{t-1}, ..., G_j]`` of every longer chain ``S_{t',j}`` (``t' > t``) has norm
        ``|c| ||S_{t,j}||``: one certificate tightens every chain that passes through it."""
        labels, _, ins, _ = self.chain(*key)
        self.exact[(tuple(labels), ins[-1])] = value
        t = key[0]
        if t < self.s.depth:
            blk = self.s.blocks[t]
            if blk.H is None and blk.G is None:
                alias = (("H", t),) + tuple(labels[1:])
                self.exact[(alias, ins[-1])] = math.nextafter(abs(float(blk.c)) * value, math.inf)

    def _own(self, label, op, in_shape) -> tuple[float, str]:
        """A single factor's own proved bound; a composite factor is split into its parts."""
        key = (label, tuple(in_shape))
        if key not in self.own:
            if isinstance(op, ComposeOp):
                parts = fold_into_convs(list(op.ops), in_shape)
                ins = [tuple(in_shape)]
                for f in reversed(parts[1:]):
                    ins.append(f.out_shape(ins[-1]))
                v, how = self.best_split([(label, i) for i in range(len(parts))], parts, ins[::-1], None)
            else:
                v = self.bounds(op, in_shape)
                how = f"{type(op).__name__}.norm_bound"
            self.own[key] = (v, how)
        return self.own[key]

    def best_split(self, labels, ops, ins, out_shape=None) -> tuple[float, str]:
        """Smallest product of segment bounds over all splits into consecutive segments (dynamic programme).

        A segment is bounded by its certified norm when one is known, a single factor by its own bound."""
        r = len(ops)
        best: dict[tuple[int, int], tuple[float, str]] = {}
        for length in range(1, r + 1):
            for a in range(0, r - length + 1):
                b = a + length
                cands = []
                exact = self.exact.get((tuple(labels[a:b]), ins[b - 1]))
                if exact is not None:
                    cands.append((exact, "certified"))
                if length == 1:
                    cands.append(self._own(labels[a], ops[a], ins[a]))
                for m in range(a + 1, b):
                    (lv, lh), (rv, rh) = best[(a, m)], best[(m, b)]
                    cands.append((math.nextafter(lv * rv, math.inf), f"{lh} * {rh}"))
                best[(a, b)] = min(cands, key=lambda c: c[0])
        return best[(0, r)]

    def groups(self, keys, small: int, small_input: int | None = None) -> list:
        """Sweeps that certify every key with a side of at most ``small`` dimensions (``small_input`` for
        chains from the network's input), grouped by that side."""
        s = self.s
        by_side: dict = {}
        for (t, j) in keys:
            n_src, n_dst = (numel(x) for x in s.space_shape(t, j))
            if j < 0 and small_input is not None and n_src <= small_input:
                side = ("src", j)
            elif min(n_src, n_dst) > small:
                continue
            else:
                side = ("src", j) if n_src <= n_dst else ("dst", t)
            by_side.setdefault(side, []).append((t, j))
        out = []
        for (kind, idx), ks in sorted(by_side.items()):
            steps: list[Step] = []
            stops: dict = {}
            if kind == "src":
                j, targets = idx, {t for t, _ in ks}
                shape = tuple(s.space_shape(max(targets), j)[0])
                if j >= 0 and s.blocks[j].G is not None:
                    steps += primitive_steps([s.blocks[j].G], shape, self.bounds)
                    shape = s.blocks[j].G.out_shape(shape)
                for t in range(j + 1, max(targets) + 1):
                    if t in targets:
                        stops.setdefault(len(steps), []).append(((t, j), primitive_steps([s.blocks[t].W], shape, self.bounds)))
                    if t < max(targets):
                        steps += primitive_steps([self.H(t)], shape, self.bounds)
                        shape = self.H(t).out_shape(shape)
                n, start_shape = numel(s.space_shape(max(targets), j)[0]), tuple(s.space_shape(max(targets), j)[0])
            else:
                t, sources = idx, {j for _, j in ks}
                start_shape = tuple(s.blocks[t].y_shape)
                x_shape = tuple(s.blocks[t].x_shape)
                steps += adjoint_steps(primitive_steps([s.blocks[t].W], x_shape, self.bounds))
                for k in range(t - 1, max(min(sources), 0) - 1, -1):  # now in x_{k+1}
                    if k in sources:
                        blk = s.blocks[k]
                        extra = adjoint_steps(primitive_steps([blk.G], blk.y_shape, self.bounds)) if blk.G is not None else []
                        stops.setdefault(len(steps), []).append(((t, k), extra))
                    if k > min(sources):
                        steps += adjoint_steps(primitive_steps([self.H(k)], s.blocks[k].x_shape, self.bounds))
                if -1 in sources:
                    stops.setdefault(len(steps), []).append(((t, -1), []))
                n = numel(start_shape)
            out.append((f"{kind} {idx}", ks, (steps, stops), n, start_shape))
        return out
