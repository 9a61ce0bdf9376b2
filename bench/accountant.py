"""Cost of the batched pairwise-LipLT power iteration against the naive bound's per-layer iteration.

For each architecture, in one run and on one device:

(a) one batched LipLT power iteration over all inner operators ``S_{t,j}`` of eq. (16)
    (``lipzoo.bounds.sweep.power_iteration``: one forward and one adjoint sweep, O(L) layer calls);
(b) one power iteration of the naive bound: a forward and an adjoint call of each block's ``W``
    (the per-layer norms the product bound needs);
(c) the number of LipLT iterations from a random start until every estimate ``||S v||`` changes
    by less than ``--rtol`` (relative) between two iterations;
(d) with ``--low-dtype`` (default bfloat16): (a) with the iteration run in that precision, per
    iteration of a call of ``--low-iters`` iterations (``power_iteration(..., n, dtype=...)``, the
    casts of weights and vectors at each call included, as the training estimator runs it with the
    recipes' 5-10 iterations per step), and the largest relative difference of the estimates
    ``||S v||`` (float32) after 10 iterations from the same start, low precision against float32;
(e) on CUDA: (a) captured once in a CUDA graph and replayed (what launch overhead costs (a)).

Times are medians over ``--repeats`` runs after ``--warmup`` runs. The output operator ``W_L``
(exact rows in both bounds) is left out of (a) and (b) alike.

    python bench/accountant.py --device cpu --repeats 20
    python bench/accountant.py --device cuda --models 6c2f 8c2f
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from _common import add_low_dtype_arg, add_timing_args, parse_low_dtype, setup, timed_together

import lipzoo
from lipzoo.bounds import build_structure
from lipzoo.bounds import sweep
from lipzoo.bounds.graphs import IterationGraph
from lipzoo.bounds.sweep import forward_sweep, power_iteration


class _Counted:
    """Wraps a linear operator and counts its forward / adjoint calls."""

    def __init__(self, op, counter: list[int]):
        self.op, self.counter = op, counter

    def forward(self, x):
        self.counter[0] += 1
        return self.op.forward(x)

    def adjoint(self, y, in_shape):
        self.counter[0] += 1
        return self.op.adjoint(y, in_shape)

    def out_shape(self, in_shape):
        return self.op.out_shape(in_shape)


def _counted_structure(structure, counter):
    def wrap(op):
        return None if op is None else _Counted(op, counter)

    blocks = [replace(b, W=wrap(b.W), H=wrap(b.H), G=wrap(b.G)) for b in structure.blocks]
    return replace(structure, blocks=blocks, output=wrap(structure.output))


class _ReferenceStyle:
    """The reference implementation's batched iteration (o4lc/CRM-LipLT), re-implemented over lipzoo's operators.

    For plain networks (every block ``H = 0``, ``G = I``), as the reference organises it: one tensor of
    start vectors per layer ``i`` (one row per target ``t >= i``); the forward pass stacks the rows carried
    from the previous layer on top of layer ``i``'s own rows, applies ``W_i`` and picks the finished and
    continuing rows with Python index lists; the backward pass mirrors it and normalises the finished rows.
    The operators are lipzoo's, with the reference's NCHW ``conv_transpose2d`` adjoints (lipzoo's sweep picks
    the channels-last layout on the CPU), so the comparison measures how the sweep is organised and laid out. Row bookkeeping is precomputed once, as the reference does in its constructor."""

    def __init__(self, structure, v0):
        if any(b.H is not None or b.G is not None for b in structure.blocks):
            raise ValueError("the reference's iteration handles plain networks only")
        self.s = structure
        L = structure.depth
        # layer i's rows are lipzoo's vectors of S_{t, i-1}, t = i .. L-1 (same start, same result)
        self.V = [torch.cat([v0[(t, i - 1)] for t in range(i, L)]) for i in range(L)]
        rows, self.fwd = [], []  # rows: (source i, target t) of each row in flight
        for i in range(L):
            rows = rows + [(i, t) for t in range(i, L)]
            fin = [r for r, (_, t) in enumerate(rows) if t == i]
            cont = [r for r, (_, t) in enumerate(rows) if t != i]
            self.fwd.append((fin, cont))
            rows = [rows[r] for r in cont]
        self.bwd, carried = [], []
        for i in reversed(range(L)):
            rows = [(src, i) for src in range(i + 1)] + carried  # ended at i (sources 0..i) on top
            fin = [r for r, (src, _) in enumerate(rows) if src == i]
            cont = [r for r, (src, _) in enumerate(rows) if src != i]
            self.bwd.append((fin, cont))
            carried = [rows[r] for r in cont]

    def iteration(self):
        layout = sweep._channels_last
        sweep._channels_last = lambda x: x  # the reference's NCHW conv_transpose2d, not lipzoo's layout choice
        try:
            self._iteration()
        finally:
            sweep._channels_last = layout

    def _iteration(self):
        blocks, ends, prev = self.s.blocks, [], None
        for i, blk in enumerate(blocks):
            x = self.V[i] if prev is None else torch.vstack([prev.reshape(-1, *blk.x_shape), self.V[i]])
            x = blk.W.forward(x)
            fin, cont = self.fwd[i]
            ends.append(x[fin])
            prev = x[cont]
        carry = None
        for n, i in enumerate(reversed(range(len(blocks)))):
            blk = blocks[i]
            x = ends[i] if carry is None else torch.vstack([ends[i], carry.reshape(-1, *blk.y_shape)])
            x = sweep.adjoint(blk.W, x, blk.x_shape)
            fin, cont = self.bwd[n]
            done = x[fin]
            self.V[i] = done / done.flatten(1).norm(dim=1).reshape(-1, *([1] * (done.dim() - 1)))
            carry = x[cont]


def _unit(shape, gen, device):
    v = torch.randn(1, *shape, generator=gen).to(device)
    return v / v.norm()




def _baseline_power_iteration(checkout: str):
    """``power_iteration`` of another checkout's ``lipzoo/bounds/sweep.py`` (e.g. ``git worktree add /tmp/old
    f78747f``), loaded beside this one, for an A/B of the sweep alone on the same structure."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("baseline_sweep", Path(checkout) / "lipzoo/bounds/sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.power_iteration


def bench_model(name: str, device: torch.device, warmup: int, repeats: int, rtol: float, max_iter: int,
                seed: int, baseline=None, low_dtype: torch.dtype | None = None, low_iters: int = 5) -> dict:
    model = lipzoo.create_model(name).to(device).eval()
    shape = tuple(model.input_shape)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        structure = build_structure(model, shape)
        L = structure.depth
        keys = [(t, j) for t in range(L) for j in range(-1, t)]
        v0 = {k: _unit(structure.space_shape(*k)[0], gen, device) for k in keys}
        xs = [_unit(b.x_shape, gen, device) for b in structure.blocks]

        def liplt_iteration():
            return power_iteration(structure, v0, 1)

        def naive_iteration():
            return [b.W.adjoint(b.W.forward(x), b.x_shape) for b, x in zip(structure.blocks, xs)]

        counter = [0]
        power_iteration(_counted_structure(structure, counter), v0, 1)
        liplt_calls = counter[0]
        fns = {"liplt": liplt_iteration, "naive": naive_iteration}
        if baseline is not None:
            fns["baseline"] = lambda: baseline(structure, v0, 1)
        low = {}
        if low_dtype is not None:
            fns["low"] = lambda: power_iteration(structure, v0, low_iters, dtype=low_dtype)
            ten = [forward_sweep(structure, power_iteration(structure, v0, 10, dtype=d)) for d in (None, low_dtype)]
            low["low_diff"] = max(float(ten[1][k].norm() / ten[0][k].norm() - 1) for k in keys if ten[0][k].norm() > 0)
        try:
            ref = _ReferenceStyle(structure, v0)
        except ValueError:
            ref = None
        else:
            ours = power_iteration(structure, v0, 3)
            for _ in range(3):
                ref.iteration()
            for i in range(L):  # like for like: the same vectors after the same iterations
                mine = torch.cat([ours[(t, i - 1)] for t in range(i, L)])
                assert torch.allclose(mine, ref.V[i], atol=1e-4), f"reference-style iteration differs at layer {i}"
            fns["ref"] = ref.iteration
        graph_note = None
        if device.type == "cuda":
            try:
                # the replay alone (the estimator's copies in and out are not timed): what launches cost (a)
                fns["graph"] = IterationGraph(structure, v0, 1, None).graph.replay
            except Exception as err:  # noqa: BLE001 -- a measurement, reported, not a feature
                graph_note = f"capture failed: {type(err).__name__}: {err}"[:200]
        ms = timed_together(fns, device, warmup, repeats)  # interleaved: the ratios share the machine's load
        t_liplt, t_naive, t_ref = ms["liplt"], ms["naive"], ms.get("ref", float("nan"))
        ops_liplt = _count_ops(liplt_iteration)
        ops_ref = _count_ops(ref.iteration) if ref is not None else float("nan")

        # (c) cold start until every ||S v|| moves by < rtol
        v, previous, iters = dict(v0), None, None
        for i in range(1, max_iter + 1):
            v = power_iteration(structure, v, 1)
            out = forward_sweep(structure, v)
            norms = torch.stack([out[k].norm() for k in keys])
            if previous is not None and bool(((norms - previous).abs() <= rtol * previous.abs()).all()):
                iters = i
                break
            previous = norms
    return {"model": name, "input": "x".join(map(str, shape)), "blocks": L, "operators": len(keys),
            "liplt_calls": liplt_calls, "naive_calls": 2 * L, "liplt_ms": t_liplt, "naive_ms": t_naive,
            "ratio": t_liplt / t_naive, "ref_ms": t_ref, "ref_ratio": t_liplt / t_ref, "ops": ops_liplt,
            "ref_ops": ops_ref, "iters": iters if iters is not None else f">{max_iter}",
            **({"baseline_ms": ms["baseline"]} if "baseline" in ms else {}),
            **({"graph_ms": ms["graph"]} if "graph" in ms else {"graph_note": graph_note} if graph_note else {}),
            **({"low_ms": ms["low"] / low_iters, **low} if "low" in ms else {})}


_VIEWS = {"aten::slice", "aten::view", "aten::as_strided", "aten::split", "aten::split_with_sizes", "aten::reshape",
          "aten::narrow", "aten::select", "aten::unsqueeze", "aten::expand", "aten::alias", "aten::t",
          "aten::transpose", "aten::permute", "aten::flatten", "aten::_reshape_alias", "aten::unbind",
          "aten::detach", "aten::_unsafe_view", "aten::empty", "aten::lift_fresh"}


def _count_ops(fn) -> int:
    """Top-level ATen operations of one call that are not views (what a GPU launches kernels for)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(1 for e in prof.events() if e.cpu_parent is None and e.name not in _VIEWS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["4c3f", "6c2f", "8c2f"])
    p.add_argument("--device", default="cpu")
    add_timing_args(p)
    p.add_argument("--rtol", type=float, default=1e-3, help="convergence threshold of (c)")
    p.add_argument("--max-iter", type=int, default=1000, help="cap on the iterations of (c)")
    add_low_dtype_arg(p, "the iteration (d)")
    p.add_argument("--low-iters", type=int, default=5, help="iterations per call in (d)")
    p.add_argument("--baseline", metavar="CHECKOUT",
                   help="also time the power iteration of another checkout's sweep.py (ratio new/baseline)")
    args = p.parse_args(argv)
    device, where = setup(p, args)
    print(f"# Accountant power iteration ({where}; torch {torch.__version__}; median of {args.repeats} after "
          f"{args.warmup} warm-up)\n")
    print("| model | input | blocks L | operators S_tj | layer calls / iter | LipLT iter (ms) | reference-style iter (ms) | "
          "naive iter (ms) | ratio LipLT/reference | ratio LipLT/naive | ops / iter LipLT | ops / iter reference | "
          f"iters to rtol {args.rtol:g} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        r = bench_model(name, device, args.warmup, args.repeats, args.rtol, args.max_iter, args.seed,
                        _baseline_power_iteration(args.baseline) if args.baseline else None,
                        parse_low_dtype(args), args.low_iters)
        print(f"| {r['model']} | {r['input']} | {r['blocks']} | {r['operators']} | {r['liplt_calls']} | "
              f"{r['liplt_ms']:.2f} | {r['ref_ms']:.2f} | {r['naive_ms']:.2f} | {r['ref_ratio']:.2f} | {r['ratio']:.2f} | "
              f"{r['ops']} | {r['ref_ops']} | {r['iters']} |", flush=True)
        if "baseline_ms" in r:
            print(f"|   | baseline {args.baseline}: {r['baseline_ms']:.2f} ms, ratio LipLT/baseline "
                  f"{r['liplt_ms'] / r['baseline_ms']:.2f} |", flush=True)
        if "graph_ms" in r:
            print(f"|   | CUDA graph of one float32 iteration: {r['graph_ms']:.2f} ms, ratio to reference-style "
                  f"{r['graph_ms'] / r['ref_ms']:.2f}, to LipLT float32 {r['graph_ms'] / r['liplt_ms']:.2f} |", flush=True)
        elif "graph_note" in r:
            print(f"|   | CUDA graph: {r['graph_note']} |", flush=True)
        if "low_ms" in r:
            print(f"|   | {args.low_dtype} iteration (calls of {args.low_iters}): {r['low_ms']:.2f} ms, ratio to reference-style (float32) "
                  f"{r['low_ms'] / r['ref_ms']:.2f}, to LipLT float32 {r['low_ms'] / r['liplt_ms']:.2f}; "
                  f"estimates after 10 iterations within {abs(r['low_diff']):.1e} of float32's |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
