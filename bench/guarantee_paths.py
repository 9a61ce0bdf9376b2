"""Tightness and cost of the guaranteed bound against a converged power-iteration estimate, per zoo model.

For every model (architectures at PyTorch's default random initialisation, seed ``--seed``, and shipped
weights), in one run:

* **estimate**: mean pairwise LipLT bound from batched power iteration (float64) run until every
  inner norm moves by less than ``--rtol`` between iterations (at most ``--max-iter``); output rows exact.
  Power iteration under-estimates each norm, so this is (nearly) the smallest value any sound method can give.
* **guaranteed**: ``lipschitz_bound(norm="auto", budget=--budget)`` (exact or proved), cache off.
* ratio guaranteed / estimate and the seconds of each.

    python bench/guarantee_paths.py                       # every architecture and shipped model
    python bench/guarantee_paths.py --models 4c3f crm-mnist-4c3f --budget 10 30
    python bench/guarantee_paths.py --models 4c3f --max-dense 4096   # the old fixed-size path
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import lipzoo
from lipzoo.bounds import build_structure, lipschitz_bound
from lipzoo.bounds.liplt import liplt_recursion, output_norms, output_rows
from lipzoo.bounds.sweep import forward_sweep, power_iteration

DEFAULT_MODELS = ["4c3f", "6c2f", "8c2f", "lt-res-s", "lt-res-m", "lt-res-l", "crm-mnist-4c3f", "crm-cifar10-6c2f"]


def _model(name: str, seed: int):
    torch.manual_seed(seed)
    if name in lipzoo.list_pretrained():
        model = lipzoo.load(name)
        return model, tuple(model.lipzoo_config["input_shape"]), "shipped"
    model = lipzoo.create_model(name)
    return model, tuple(model.input_shape), f"random init (seed {seed})"


def converged_estimate(model, shape, rtol: float, max_iter: int, seed: int, device="cpu") -> tuple[float, int]:
    """Mean pairwise LipLT from power iteration run to convergence; returns (value, iterations)."""
    net = copy.deepcopy(model).double().eval().to(device)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        s = build_structure(net, shape)
        keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
        v = {}
        for k in keys:
            x = torch.randn(1, *s.space_shape(*k)[0], generator=gen, dtype=torch.float64).to(device)
            v[k] = x / x.norm()
        prev, it = None, max_iter
        for i in range(1, max_iter + 1):
            v = power_iteration(s, v, 1)
            out = forward_sweep(s, v)
            norms = torch.stack([out[k].norm() for k in keys])
            if prev is not None and bool(((norms - prev).abs() <= rtol * prev).all()):
                it = i
                break
            prev = norms
        inner = dict(zip(keys, norms))
        rows = output_rows(s, range(-1, s.depth))
        final = {j: output_norms(r, "pairwise") for j, r in rows.items()}
        value, _ = liplt_recursion(s, inner, final)
    value = value.cpu()
    off = ~torch.eye(value.shape[0], dtype=torch.bool)
    return float(value[off].mean()), it


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--budget", type=float, nargs="+", default=[10.0], help="refinement budgets (seconds) to compare")
    p.add_argument("--max-dense", type=int, help="also run the fixed-size path with this max_dense")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--max-iter", type=int, default=500)
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    where = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"# Guaranteed bound vs converged estimate ({where}, torch {torch.__version__})\n")
    print("| model | weights | estimate (mean L_ij) | iters | est. s | path | guaranteed | guarantee | ratio | s |")
    print("|---|---|---:|---:|---:|---|---:|---|---:|---:|")
    for name in args.models:
        model, shape, weights = _model(name, args.seed)
        t0 = time.perf_counter()
        est, iters = converged_estimate(model, shape, args.rtol, args.max_iter, args.seed, args.device)
        t_est = time.perf_counter() - t0
        runs = [(f"auto, budget {b:g}s", {"budget": b}) for b in args.budget]
        if args.max_dense:
            runs.append((f"auto, max_dense={args.max_dense}", {"max_dense": args.max_dense}))
        for label, kw in runs:
            t0 = time.perf_counter()
            b = lipschitz_bound(model, shape, norm="auto", cache=False, device=args.device, **kw)
            dt = time.perf_counter() - t0
            off = ~torch.eye(b.value.shape[0], dtype=torch.bool)
            val = float(b.value[off].mean())
            print(f"| {name} | {weights} | {est:.4f} | {iters} | {t_est:.1f} | {label} | {val:.4f} | {b.guarantee} "
                  f"| {val / est:.4f} | {dt:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
