"""Tightness and cost of the probabilistic (Lanczos) bound against converged estimates, per zoo model.

For every model (architectures at PyTorch's default random initialisation, seed ``--seed``, and shipped
weights), in one run:

* **power estimate**: mean pairwise LipLT from batched float64 power iteration run until every inner
  norm moves by less than ``--rtol`` (at most ``--max-iter`` iterations), output rows exact
  (``guarantee_paths.converged_estimate``);
* **Ritz estimate**: the same recursion with the Lanczos Ritz values (also from below);
* **Lanczos bound**: ``lipschitz_bound(norm="lanczos", n_iter=--steps, failure_probability=--delta)``
  (``guarantee="probabilistic"``), cache off, and its seconds;
* the ratio bound / max(estimates): both estimates are below the true value, so this ratio bounds from
  above how far the bound is from the exact LipLT value; and the largest ``eps`` of the failure bound.

    python bench/probabilistic.py --threads 2
    python bench/probabilistic.py --models 4c3f crm-mnist-4c3f --steps 160 320
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _common import add_timing_args, setup
from guarantee_paths import _model, converged_estimate

from lipzoo.bounds import build_structure, lipschitz_bound
from lipzoo.bounds.liplt import liplt_recursion, output_rows
from lipzoo.bounds.norms import output_norms

DEFAULT_MODELS = ["4c3f", "6c2f", "lt-res-s", "crm-mnist-4c3f", "crm-cifar10-6c2f", "crm-cifar10-lt-res-s", "8c2f"]


def _mean_offdiag(value: torch.Tensor) -> float:
    off = ~torch.eye(value.shape[0], dtype=torch.bool)
    return float(value[off].mean())


def ritz_estimate(model, shape, ritz: dict) -> float:
    """Mean pairwise LipLT with the Lanczos Ritz values as inner norms (exact output rows)."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        s = build_structure(net, shape)
        inner = {tuple(int(x) for x in k.split(",")): torch.tensor(v, dtype=torch.float64) for k, v in ritz.items()}
        final = {j: output_norms(r, "pairwise") for j, r in output_rows(s, range(-1, s.depth)).items()}
        value, _ = liplt_recursion(s, inner, final)
    return _mean_offdiag(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--steps", type=int, nargs="+", default=[320], help="Lanczos steps to compare")
    p.add_argument("--delta", type=float, default=1e-9, help="failure probability of the bound")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--max-iter", type=int, default=400)
    p.add_argument("--device", default="cpu")
    add_timing_args(p)
    args = p.parse_args(argv)
    args.repeats, args.warmup = max(args.repeats, 1), 0
    device, where = setup(p, args)
    print(f"# Probabilistic (Lanczos) LipLT bound vs converged estimates ({where}; torch {torch.__version__}; "
          f"failure probability {args.delta:g})\n")
    print("| model | weights | power estimate (iters) | steps | Ritz estimate | Lanczos bound | bound / max(estimates) | "
          "max eps | s Lanczos | s power estimate |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        model, shape, weights = _model(name, args.seed)
        model = model.eval()
        t0 = time.perf_counter()
        est, iters = converged_estimate(model, shape, args.rtol, args.max_iter, args.seed, args.device)
        t_est = time.perf_counter() - t0
        for steps in args.steps:
            t0 = time.perf_counter()
            b = lipschitz_bound(model, shape, norm="lanczos", n_iter=steps, failure_probability=args.delta,
                                seed=args.seed, cache=False, device=args.device)
            t_lz = time.perf_counter() - t0
            lz = b.details["lanczos"]
            ritz = ritz_estimate(model, shape, lz["ritz_norm"])
            bound = _mean_offdiag(b.value)
            print(f"| {name} | {weights} | {est:.5g} ({iters}) | {steps} | {ritz:.5g} | {bound:.5g} | "
                  f"{bound / max(est, ritz):.4f} | {max(lz['epsilon'].values()):.2e} | {t_lz:.1f} | {t_est:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
