"""What checking a cache entry costs: a cold guaranteed bound, a cache hit (with its checks), and the checks alone.

    python bench/cache_check.py [--models crm-mnist-4c3f crm-cifar10-6c2f] [--threads 2]

A cache hit is not trusted (docs/bounds.md, "The bound cache"): the file's HMAC is checked and the stored bound
is compared with the run's own floors (gradient norms at four points, the LipLT recursion at 20-step Lanczos
estimates of every inner norm). Prints one markdown row per model, all measured in one run on a fresh cache
folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

import lipzoo
from lipzoo.bounds.liplt import _floors, _prepare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["crm-mnist-4c3f", "crm-cifar10-6c2f"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["LIPZOO_CACHE"] = tempfile.mkdtemp(prefix="lipzoo-bench-cache-")
    print(f"CPU, {args.threads} threads\n")
    print("| model | cold bound (s) | cache hit with checks (s) | checks alone (s) | hit / cold | bound mean L_ij | floor mean |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        model = lipzoo.load(name)
        shape = tuple(model.lipzoo_config["input_shape"])
        t = time.perf_counter()
        cold = lipzoo.lipschitz_bound(model, shape, progress=False)
        t_cold = time.perf_counter() - t
        t = time.perf_counter()
        hit = lipzoo.lipschitz_bound(model, shape, progress=False)
        t_hit = time.perf_counter() - t
        assert torch.equal(hit.value, cold.value)
        net, structure = _prepare(model, shape, norm="auto", dtype=torch.float64, device=None, modes=("pairwise",))
        t = time.perf_counter()
        floor = _floors(net, structure, ["pairwise"], method="liplt", norm="auto", seed=0)["pairwise"]
        t_floor = time.perf_counter() - t
        k = cold.value.shape[0]
        off = ~torch.eye(k, dtype=torch.bool)
        print(f"| {name} | {t_cold:.1f} | {t_hit:.2f} | {t_floor:.2f} | {t_hit / t_cold:.4f} | "
              f"{float(cold.value[off].mean()):.4f} | {float(floor[off].mean()):.4f} |")


if __name__ == "__main__":
    main()
