"""Tightness and cost of the bound paths on one model: power estimate vs guaranteed 'auto' paths.

    python bench/guarantee_paths.py crm-mnist-4c3f [--max-dense 4096 8192] [--iters 300]

Prints the mean pairwise LipLT bound and the wall time of each path, measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch

import lipzoo
from lipzoo.bounds import lipschitz_bound


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="zoo entry, checkpoint folder or Hub repo id")
    ap.add_argument("--max-dense", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--iters", type=int, default=300)
    args = ap.parse_args()
    model = lipzoo.load(args.model)
    shape = model.lipzoo_config["input_shape"]
    rows = []
    runs = [("power", {"norm": "power", "n_iter": args.iters})]
    runs += [(f"auto, max_dense={m}", {"norm": "auto", "max_dense": m}) for m in args.max_dense]
    for label, kw in runs:
        t0 = time.perf_counter()
        b = lipschitz_bound(model, shape, **kw)
        dt = time.perf_counter() - t0
        off = ~torch.eye(b.value.shape[0], dtype=torch.bool)
        rows.append((label, float(b.value[off].mean()), b.guarantee, dt))
    print(f"model: {args.model}, torch threads: {torch.get_num_threads()}\n")
    print("| path | mean L_ij | guarantee | seconds |\n|---|---|---|---|")
    for label, val, g, dt in rows:
        print(f"| {label} | {val:.4f} | {g} | {dt:.1f} |")


if __name__ == "__main__":
    main()
