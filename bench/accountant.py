"""Cost of the batched pairwise-LipLT power iteration against the naive bound's per-layer iteration.

For each architecture, in one run and on one device:

(a) one batched LipLT power iteration over all inner operators ``S_{t,j}`` of eq. (16)
    (``lipzoo.bounds.sweep.power_iteration``: one forward and one adjoint sweep, O(L) layer calls);
(b) one power iteration of the naive bound: a forward and an adjoint call of each block's ``W``
    (the per-layer norms the product bound needs);
(c) the number of LipLT iterations from a random start until every estimate ``||S v||`` changes
    by less than ``--rtol`` (relative) between two iterations.

Times are medians over ``--repeats`` runs after ``--warmup`` runs. The output operator ``W_L``
(exact rows in both bounds) is left out of (a) and (b) alike.

    python bench/accountant.py --device cpu --repeats 20
    python bench/accountant.py --device cuda --models 6c2f 8c2f
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from _common import add_timing_args, setup, timed

import lipzoo
from lipzoo.bounds import build_structure
from lipzoo.bounds import sweep
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


def _unit(shape, gen, device):
    v = torch.randn(1, *shape, generator=gen).to(device)
    return v / v.norm()




def bench_model(name: str, device: torch.device, warmup: int, repeats: int, rtol: float, max_iter: int,
                seed: int) -> dict:
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
        t_liplt = timed(liplt_iteration, device, warmup, repeats)
        t_naive = timed(naive_iteration, device, warmup, repeats)
        # the same iteration with every adjoint through the operators' own ``adjoint`` (before the sweep
        # used conv_transpose2d for convolutions), timed in the same run
        fast = sweep.adjoint
        sweep.adjoint = lambda op, y, in_shape: op.adjoint(y, in_shape)
        try:
            t_before = timed(liplt_iteration, device, warmup, repeats)
        finally:
            sweep.adjoint = fast

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
            "ratio": t_liplt / t_naive, "before_ms": t_before, "before_ratio": t_before / t_naive, "iters": iters if iters is not None else f">{max_iter}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["4c3f", "6c2f", "8c2f"])
    p.add_argument("--device", default="cpu")
    add_timing_args(p)
    p.add_argument("--rtol", type=float, default=1e-3, help="convergence threshold of (c)")
    p.add_argument("--max-iter", type=int, default=1000, help="cap on the iterations of (c)")
    args = p.parse_args(argv)
    device, where = setup(p, args)
    print(f"# Accountant power iteration ({where}; torch {torch.__version__}; median of {args.repeats} after "
          f"{args.warmup} warm-up)\n")
    print("| model | input | blocks L | operators S_tj | layer calls / iter LipLT | layer calls / iter naive | "
          "LipLT iter (ms) | naive iter (ms) | ratio LipLT/naive | LipLT iter, op.adjoint (ms) | ratio before | "
          f"iters to rtol {args.rtol:g} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        r = bench_model(name, device, args.warmup, args.repeats, args.rtol, args.max_iter, args.seed)
        print(f"| {r['model']} | {r['input']} | {r['blocks']} | {r['operators']} | {r['liplt_calls']} | "
              f"{r['naive_calls']} | {r['liplt_ms']:.2f} | {r['naive_ms']:.2f} | {r['ratio']:.2f} | "
              f"{r['before_ms']:.2f} | {r['before_ratio']:.2f} | {r['iters']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
