"""Cost of a CRM training step against a plain cross-entropy step, measured in one run.

CRM step: forward, ``lipzoo.LipLTEstimator`` with the zoo recipe's power iterations (warm-started),
``lipzoo.crm_loss`` with the recipe's ``t``, ``lam``, ``r0``, ``g``, backward, Adam step.
Cross-entropy step: forward, ``F.cross_entropy``, backward, Adam step. With ``--low-dtype``
(default bfloat16) also the CRM step with the power iterations in that precision
(``LipLTEstimator(iteration_dtype=...)``); on CUDA also the CRM step with the power iterations
replayed from a CUDA graph (``cuda_graph=True``). Random data, batch 512 by default; the steps
interleaved round by round (each on its own copy of the same initial model), medians over
``--repeats`` rounds after ``--warmup`` rounds.

    python bench/train_step.py --device cpu --repeats 10
    python bench/train_step.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse

import torch
from _common import add_low_dtype_arg, add_timing_args, parse_low_dtype, setup, timed_together
import torch.nn.functional as F

import lipzoo
from lipzoo.models import get_entry

ENTRIES = {"4c3f": "crm-mnist-4c3f", "6c2f": "crm-cifar10-6c2f", "8c2f": "crm-tinyimagenet-8c2f"}


def bench_model(name: str, device: torch.device, batch_size: int, warmup: int, repeats: int, seed: int,
                low_dtype: torch.dtype | None = None) -> dict:
    recipe = get_entry(ENTRIES[name])["recipe"]
    crm, lr = recipe["crm"], float(recipe["optimizer"]["lr"])
    torch.manual_seed(seed)
    init = lipzoo.create_model(name)
    shape = tuple(init.input_shape)
    x = torch.rand(batch_size, *shape, device=device)
    y = torch.randint(0, init.num_classes, (batch_size,), device=device)
    n_iter = int(recipe["power_iterations"])

    def copy():
        model = lipzoo.create_model(name).to(device).train()
        model.load_state_dict(init.state_dict())
        return model, torch.optim.Adam(model.parameters(), lr=lr)

    def ce_step(model, opt):
        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def crm_step(dtype, cuda_graph=False):
        model, opt = copy()
        estimator = lipzoo.LipLTEstimator(model, shape, n_iter=n_iter, seed=seed, iteration_dtype=dtype,
                                          cuda_graph=cuda_graph)

        def step():
            loss = lipzoo.crm_loss(model(x), y, estimator(), t=float(crm["t"]), lam=float(crm["lam"]),
                                   r0=crm["r0"], g=crm["g"], regularize=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step, len(estimator.keys)

    fns = {"ce": ce_step(*copy())}
    fns["crm"], operators = crm_step(None)
    if low_dtype is not None:
        fns["low"], _ = crm_step(low_dtype)
    if device.type == "cuda":  # also with the power iterations replayed from a CUDA graph
        fns["graph"], _ = crm_step(None, cuda_graph=True)
    ms = timed_together(fns, device, warmup, repeats)
    return {"model": name, "input": "x".join(map(str, shape)), "power_iterations": n_iter, "operators": operators,
            "ce_ms": ms["ce"], "crm_ms": ms["crm"], "ratio": ms["crm"] / ms["ce"],
            **({"low_ms": ms["low"], "low_ratio": ms["low"] / ms["ce"]} if "low" in ms else {}),
            **({"graph_ms": ms["graph"]} if "graph" in ms else {})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["4c3f", "6c2f"], choices=sorted(ENTRIES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=512)
    add_low_dtype_arg(p, "the CRM step")
    add_timing_args(p)
    args = p.parse_args(argv)
    device, where = setup(p, args)
    print(f"# Training step, batch {args.batch_size} ({where}; torch {torch.__version__}; median of "
          f"{args.repeats} after {args.warmup} warm-up)\n")
    low = parse_low_dtype(args)
    extra = "" if low is None else f" CRM step, {args.low_dtype} iterations (ms) | ratio to CE |"
    print("| model | input | power iterations | operators S_tj | CE step (ms) | CRM step (ms) | ratio CRM/CE |" + extra)
    print("|---|---|---:|---:|---:|---:|---:|" + ("" if low is None else "---:|---:|"))
    for name in args.models:
        r = bench_model(name, device, args.batch_size, args.warmup, args.repeats, args.seed, low)
        tail = "" if low is None else f" {r['low_ms']:.1f} | {r['low_ratio']:.2f} |"
        print(f"| {r['model']} | {r['input']} | {r['power_iterations']} | {r['operators']} | {r['ce_ms']:.1f} | "
              f"{r['crm_ms']:.1f} | {r['ratio']:.2f} |" + tail, flush=True)
        if "graph_ms" in r:
            print(f"|   | CRM step with the power iterations from a CUDA graph (cuda_graph=True): {r['graph_ms']:.1f} ms, "
                  f"ratio to CE {r['graph_ms'] / r['ce_ms']:.2f}, {r['graph_ms'] / r['crm_ms']:.2f} of the eager CRM step |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
