"""Exact certificates of single inner operators: the dense Gram path against the local (probed,
block-tridiagonal) one, side by side in one run.

For each ``(t, j)`` of a zoo model (random initialisation, seed ``--seed``), the chain ``S_{t,j}`` is
certified by :func:`lipzoo.bounds.proved.certified_chain_norm` with ``local=False`` (identity basis of the
smaller side, ``n x n`` Gram matrix, dense Cholesky) and with ``local=True`` (:mod:`lipzoo.bounds.banded`),
alternating, and the script prints both proved values, their seconds and the ratio. A dense side above
``--max-side`` is not run (it would not fit in memory); the local path runs whatever the side.

    python bench/local_chains.py --threads 2 --model 6c2f --keys 2,0 2,1
    python bench/local_chains.py --threads 2 --model 8c2f --keys 1,-1 3,-1 7,5 5,3 --max-side 12288
"""

from __future__ import annotations

import argparse
import time

import torch

import lipzoo
from lipzoo.bounds import build_structure
from lipzoo.bounds.banded import local_plan
from lipzoo.bounds.proved import _Planner, certified_chain_norm, gram_steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="6c2f")
    p.add_argument("--keys", nargs="+", default=["2,0", "2,1"], help="inner operators t,j")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, default=16384, help="largest side run on the dense path")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = lipzoo.create_model(args.model).double().eval()
    print(f"# Exact certificates of single inner operators, {args.model} at random init (seed {args.seed}), "
          f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| S(t,j) | smaller side | probes | blocks | dense: proved | s | local: proved | s | local / dense s |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        s = build_structure(model, tuple(model.input_shape))
        planner = _Planner(s, 256, torch.Generator().manual_seed(args.seed), None)
        for key in args.keys:
            t, j = (int(v) for v in key.split(","))
            _, ops, ins, _ = planner.chain(t, j)
            steps, shape, n = gram_steps(ops, ins[-1])
            plan = local_plan(steps, shape)
            row = {}
            for local in (False, True):
                if not local and n > args.max_side:
                    row[local] = (None, None)
                    continue
                t0 = time.perf_counter()
                v = certified_chain_norm(ops, ins[-1], generator=torch.Generator().manual_seed(args.seed),
                                         local=local)
                row[local] = (v, time.perf_counter() - t0)
            (dv, ds), (lv, ls) = row[False], row[True]
            blocks = f"{plan.blocks} x {plan.block_size}" if plan else "-"
            print(f"| ({t},{j}) | {'x'.join(map(str, shape))} = {n} | {plan.probes if plan else '-'} | {blocks} | "
                  + (f"{dv:.9f} | {ds:.1f}" if dv is not None else "not run | -") + " | "
                  + (f"{lv:.9f} | {ls:.1f}" if lv is not None else "refused | -") + " | "
                  + (f"{ls / ds:.2f}" if dv is not None and lv is not None else "-") + " |", flush=True)


if __name__ == "__main__":
    main()
